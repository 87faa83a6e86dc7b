/* db_baseline_params.h: parameter words of the benchmark's baseline kernels (db_baseline.h),
 * shared with the hosts that fill them. Plain defines: valid C, OpenCL C and GLSL. */
#ifndef DB_BASELINE_PARAMS_H
#define DB_BASELINE_PARAMS_H

#define BLP_PLANES 0 /* N * C */
#define BLP_H 1
#define BLP_W 2
#define BLP_BS 3 /* block, odd, clamped to the map */
#define BLP_HN 4 /* noise rows H - bs + 1 */
#define BLP_WN 5
#define BLP_KEY 6   /* 2 words */
#define BLP_GAMMA 8 /* float32 bits */
#define BLP_NUMEL 9 /* elements (< 2^32) */
#define BLP_DTYPE 10
#define BLP_COUNT 12
#define BL_SEG 1024u /* elements each partial sum reads */

#endif
