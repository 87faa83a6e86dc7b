/* db_params.h: indices of the parameter words of the GPU passes (db_passes.h), shared by the
 * kernels and the host (core/kernel_params.c). Plain defines: valid C, OpenCL C and GLSL. */
#ifndef DB_PARAMS_H
#define DB_PARAMS_H

/* Parameter words (core/kernel_params.c fills them); 64-bit values take two words, low first. */
#define DBP_C 0       /* u64 */
#define DBP_H 2
#define DBP_W 3
#define DBP_RW 4      /* mask words per row */
#define DBP_LAYOUT 5  /* 0 NCHW, 1 NHWC */
#define DBP_R0 6      /* u64: first mask row of the chunk */
#define DBP_NROWS 8   /* u64: mask rows in the chunk */
#define DBP_KEY 10    /* 2 words */
#define DBP_BASE 12   /* 4 words */
#define DBP_SN 16     /* u64 strides of the candidate index e */
#define DBP_SC 18
#define DBP_SH 20
#define DBP_SW 22
#define DBP_WMASK 24
#define DBP_THR 25    /* u64 */
#define DBP_ILO 27    /* candidate rows [ilo, iend), columns [jlo, jend) */
#define DBP_IEND 28
#define DBP_JLO 29
#define DBP_JEND 30
#define DBP_UP 31     /* output (h, w) looks at candidate rows [h-up, h+down], columns [w-left, w+right] */
#define DBP_DOWN 32
#define DBP_LEFT 33
#define DBP_RIGHT 34
#define DBP_E0 35     /* u64: first element (physical index) of the chunk */
#define DBP_NELEM 37  /* u64: elements in the chunk */
#define DBP_N0 39     /* u64: first sample the chunk touches */
#define DBP_NSAMP 41  /* samples the chunk touches */
#define DBP_DTYPE 42
#define DBP_KERAS 43
#define DBP_CH 44     /* u64: mask rows per sample, C*H */
#define DBP_COUNT 46

#endif
