/* db_baseline_params.h: parameter words of the benchmark's baseline kernels (db_baseline.h),
 * shared with the hosts that fill them. Plain defines: valid C, OpenCL C and GLSL. A 2-D map is
 * a volume of depth 1 with a block depth of 1 (no padding in depth). */
#ifndef DB_BASELINE_PARAMS_H
#define DB_BASELINE_PARAMS_H

#define BLP_PLANES 0 /* N * C */
#define BLP_H 1
#define BLP_W 2
#define BLP_BS 3 /* block rows and columns, odd, clamped to the map */
#define BLP_HN 4 /* noise rows H - bs + 1 */
#define BLP_WN 5
#define BLP_KEY 6   /* 2 words */
#define BLP_GAMMA 8 /* float32 bits */
#define BLP_NUMEL 9 /* elements (< 2^32) */
#define BLP_DTYPE 10
#define BLP_D 11      /* depth: 1 for drop_block2d */
#define BLP_BD 12     /* block depth: bs for drop_block3d, 1 for drop_block2d */
#define BLP_DN 13     /* noise slices D - bd + 1 */
#define BLP_NNOISE 14 /* noise elements planes * DN * HN * WN */
#define BLP_NPAD 15   /* padded elements planes * (DN + 2 (bd / 2)) * (HN + 2 (bs / 2)) * (WN + 2 (bs / 2)) */
#define BLP_COUNT 16
#define BL_SEG 1024u /* elements each partial sum reads */

#endif
