/* db_params.h: indices of the parameter words of the GPU passes (db_passes.h), shared by the
 * kernels and the host (engine/kernel_params.c), and the Vulkan binding numbers. Plain defines:
 * valid C, OpenCL C and GLSL. */
#ifndef DB_PARAMS_H
#define DB_PARAMS_H

/* Parameter words (engine/kernel_params.c fills them); 64-bit values take two words, low first.
 * A unit is one physical row of the tensor (W elements for NCHW, W*C for NHWC); a group is
 * what one mask tile covers across its rows: one (n, c) plane for NCHW, one sample n (all
 * channels) for NHWC, so unit = group * H + h in both layouts. DropBlock3D (DBP_D > 1) is the
 * same with a group per depth slice: (n, c, d) for NCDHW, (n, d) for NDHWC; a 2-D map is a
 * volume of depth 1. */
#define DBP_C 0 /* u64 */
#define DBP_H 2
#define DBP_W 3
#define DBP_LAYOUT 4 /* 0 NCHW, 1 NHWC */
#define DBP_DTYPE 5
#define DBP_KERAS 6
#define DBP_NORM 7   /* dropblock_normalize */
#define DBP_U0 8     /* u64: units [U0, U1) form the chunk */
#define DBP_U1 10    /* u64 */
#define DBP_E0 12    /* u64: first element (physical index) of the chunk */
#define DBP_NELEM 14 /* u64: elements in the chunk */
#define DBP_N0 16    /* u64: first sample the chunk touches */
#define DBP_NSAMP 18 /* samples the chunk touches */
#define DBP_CHW 19   /* u64: elements per sample */
#define DBP_NUMEL 21 /* u64: elements of the tensor */
#define DBP_KEY 23   /* 2 words */
#define DBP_BASE 25  /* 4 words */
#define DBP_SN 29    /* u64 strides of the candidate index e */
#define DBP_SC 31
#define DBP_SH 33
#define DBP_SW 35
#define DBP_WMASK 37
#define DBP_THR 38 /* u64 */
#define DBP_ILO 40 /* candidate rows [ilo, iend), columns [jlo, jend) */
#define DBP_IEND 41
#define DBP_JLO 42
#define DBP_JEND 43
#define DBP_UP 44 /* output (h, w) looks at candidate rows [h-up, h+down], columns [w-left, w+right] */
#define DBP_DOWN 45
#define DBP_LEFT 46
#define DBP_RIGHT 47
#define DBP_TILE 48   /* mask rows per tile (a device choice) */
#define DBP_NT 49     /* row tiles per group: ceil(H / TILE) */
#define DBP_TA0 50    /* u64: first tile of the chunk (tile = ((group * NT + t) * NS + s) * NC + cc) */
#define DBP_NTILES 52 /* tiles of the chunk */
#define DBP_GROUPS 53 /* whole groups of DBP_EPW elements the fast apply kernel takes */
#define DBP_EPW 54    /* elements per fast-apply work item (a device choice) */
#define DBP_TILEW 55  /* columns per tile: W, or less for tiles of one row (TILE = 1) */
#define DBP_NS 56     /* column tiles per row: ceil(W / TILEW) */
#define DBP_TILEC 57  /* NHWC: channels per tile, C or less for tiles of one row and one column */
#define DBP_NC 58     /* channel tiles: ceil(C / TILEC) (1 for NCHW, whose groups are planes) */
#define DBP_TPW 59    /* mask tiles a work item takes, one after another (a device choice) */
/* The scatter mask pass (GPU tunings, compat none, unshared masks; db_scatter_item): each
 * candidate block's Philox words made once, by the work item of its candidate row, fired blocks
 * cleared with atomics wherever they land; then the count pass (db_count_item). */
#define DBP_SCATTER 60 /* 1: the scatter and count passes make the mask; 0: the tiles (db_mask_item) */
#define DBP_SROWS 61   /* u64: candidate rows the chunk enumerates (planes from DBP_SG0 on x [ILO, IEND)) */
#define DBP_SKR 63     /* candidate rows a scatter work item takes */
#define DBP_CKW 64     /* mask words a count work item takes */
#define DBP_FUSED 65   /* 1: one chunk with device scales: the count pass's last item makes them */
/* depth (DropBlock3D; 1 for 2-D): candidate slices [DLO, DEND); output slice d looks at
 * candidate slices [d - DUP, d + DDOWN] */
#define DBP_D 66
#define DBP_GPS 67 /* u64: groups a sample (C D for NCDHW, D for NDHWC) */
#define DBP_SD 69  /* u64: stride of the candidate index e over slices */
#define DBP_DLO 71
#define DBP_DEND 72
#define DBP_DUP 73
#define DBP_DDOWN 74
#define DBP_SG0 75 /* u64: the scatter's first candidate group (slice), its candidate rows' planes on */
#define DBP_COUNT 77
#define DB_PRM_VEC4S ((DBP_COUNT + 3) / 4) /* the words as GLSL's uniform block holds them (db_glsl.h) */

/* Vulkan descriptor bindings (set 0) of the passes' storage buffers: the numbers the shaders
 * declare (db_glsl.h, apply.comp, exact.comp, fixup.comp, bench.comp) and vulkan_device.c's
 * descriptor set layout uses. AUX is bench.comp's alone; bench.comp puts its other buffers on
 * the pass bindings (noise on MASK, pooled on KEPT, partial sums on SCALES). */
#define DBB_PRM 0
#define DBB_MASK 1
#define DBB_AUX 2
#define DBB_KEPT 3
#define DBB_X 4
#define DBB_Y 5
#define DBB_SCALES 6
#define DBB_FIXUP 7
#define DBB_COUNT 8

#endif
