/* kernel_params.h: chunking and the parameter words of the GPU passes (shaders/db_passes.h). */
#ifndef DROPBLOCK_ENGINE_KERNEL_PARAMS_H
#define DROPBLOCK_ENGINE_KERNEL_PARAMS_H

#include "plan.h"

#include "../shaders/db_baseline_params.h"
#include "../shaders/db_params.h"

/* A chunk: units [u0, u1) of the tensor (a unit is one physical row: W elements for NCHW, W*C
 * for NHWC), so its elements and its mask rows are contiguous. */
struct db_chunk {
    uint64_t u0, u1;
    uint64_t r0, nrows;   /* mask rows */
    uint64_t e0, nelem;   /* elements (physical order) */
    uint64_t n0, nsamp;   /* samples touched */
};

/* Units per chunk so that the chunk's data, mask, count and partial-sum buffers each fit in max_bytes
 * (also capped at 1 GiB so indices stay 32-bit). 0 when a single unit does not fit: the
 * message then says why. */
uint64_t db_chunk_units(const struct db_plan *pl, uint64_t max_bytes, char *msg, size_t len);

void db_chunk_at(const struct db_plan *pl, uint64_t u0, uint64_t u1, struct db_chunk *ch);

/* Device choices that shape the passes' work, carried in the parameter words. */
struct db_tuning {
    uint32_t tile_rows;   /* mask rows per tile (>= 1; capped at H): CPUs take whole planes, GPUs few rows */
    uint32_t epw;         /* elements per fast-apply work item for the job's dtype, 0 where the fast
                           * apply is not used (see db_fast_apply_ok) */
    uint32_t cand_budget; /* at most about this many candidates a tile (fewer rows, then one row cut
                           * into columns, then for NHWC one column cut into channels), 0 for no
                           * limit */
    uint32_t item_cands;  /* tiles are grouped into work items of about this many candidates (at
                           * most cand_budget where there is one), 0: one tile an item */
};

/* The tile of the passes for a plan and a device: rows, columns (W unless rows is 1) and, for
 * NHWC, channels (C unless rows and columns are 1). */
struct db_tile {
    uint32_t rows, cols;
    uint64_t chans;
};
void db_tile_shape(const struct db_plan *pl, const struct db_tuning *tu, struct db_tile *t);

/* Jobs of one chunk in compat none take their scales on the device (no host round trip) up to
 * this many samples: one work item sums the per-sample counts into K. */
#define DB_DEVICE_SCALE_MAX_SAMPLES 16384

/* Whether the fast apply kernels (db_vapply) can take the job: compat none, and for per-sample
 * scales samples of at least epw elements (so a work item meets at most one sample boundary). */
int db_fast_apply_ok(const struct db_plan *pl, uint32_t epw);

/* The DBP_COUNT parameter words for a chunk. */
void db_kernel_params(const struct db_plan *pl, const struct db_chunk *ch, const struct db_tuning *tu,
                      uint32_t prm[DBP_COUNT]);

/* Mask tiles of a chunk, and the work items the mask pass is launched over (prm[DBP_TPW] tiles
 * each). */
uint64_t db_chunk_tiles(const struct db_plan *pl, const struct db_chunk *ch, const struct db_tuning *tu);
static inline uint64_t db_mask_items(const uint32_t *prm) { return ((uint64_t)prm[DBP_NTILES] + prm[DBP_TPW] - 1) / prm[DBP_TPW]; }

/* The benchmark's baseline (shaders/db_baseline.h) for a plan: its BLP_COUNT parameter words
 * and the sizes of its float32 intermediates (noise and pooled: numel; padded: npad; partial
 * sums: nparts words). DROPBLOCK_EINVAL with a message where torchvision would refuse the block
 * (even or not square) or the tensor has 2^32 elements or more. */
int db_baseline_params(const struct db_plan *pl, uint32_t blp[BLP_COUNT], uint64_t *npad, uint64_t *nparts, char *msg,
                       size_t len);

/* The subnormal probe both GPU backends run at device setup (their probe_exact): n subnormal
 * float32 inputs x of every magnitude class and both signs, with scales s from 1 to 2^40; the
 * device's fast-apply product of each must equal core/fp.h's db_mul32(x, s). */
void db_probe_subnormals(uint32_t *x, uint32_t *s, int n);

#endif
