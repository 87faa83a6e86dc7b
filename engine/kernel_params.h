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
    uint64_t r0, nrows; /* mask rows */
    uint64_t e0, nelem; /* elements (physical order) */
    uint64_t n0, nsamp; /* samples touched */
};

/* Units per chunk so that the chunk's data, mask, count and partial-sum buffers each fit in max_bytes
 * (also capped at 1 GiB so indices stay 32-bit). 0 when a single unit does not fit: the
 * message then says why. */
uint64_t db_chunk_units(const struct db_plan *pl, uint64_t max_bytes, char *msg, size_t len);

void db_chunk_at(const struct db_plan *pl, uint64_t u0, uint64_t u1, struct db_chunk *ch);

/* Jobs of one chunk in compat none take their scales on the device (no host round trip) up to
 * this many samples: one work item sums the per-sample counts into K. */
#define DB_DEVICE_SCALE_MAX_SAMPLES 16384

/* The one plan of a job's chunks (db_job_chunks), used by every backend's job and by the tests'
 * host flow (tests/test_passes.c), so that they cannot drift apart. Until issue 12 item 2 there
 * were four copies:
 *   - cpu_job (backend_cpu.c): per = db_chunk_units(1 GiB); no partial-count limit (host
 *     memory) and no fused path (the scales always on the host);
 *   - ocl_plan_job (backend_opencl.c): per = db_chunk_units(max_buffer), then halved while a
 *     chunk's 8-byte per-sample partials (samples_bound) exceeded max_buffer; fused = one chunk,
 *     compat none, at most DB_DEVICE_SCALE_MAX_SAMPLES samples;
 *   - vk_job/chunk_units (backend_vulkan.c): per = db_chunk_units(max_buffer), capped by a
 *     closed formula (a chunk of L rows touches at most (L-2)/CH + 2 samples) so the partials
 *     fit min(max_buffer, 1 GiB); the fused decision as OpenCL's, in job_setup;
 *   - run_passes (tests/test_passes.c): per from the variant or the whole tensor, and a fused
 *     check without the DB_DEVICE_SCALE_MAX_SAMPLES limit.
 * Now: per = db_chunk_units(max_buffer) capped by Vulkan's closed formula (which also meets
 * OpenCL's condition, and without halving below what is needed) and by max_units (the tests'
 * forced chunk sizes; 0: no cap); fused as OpenCL's and Vulkan's. The CPU backend passes 1 GiB
 * and ignores fused (it has no device scale pass). The cut never changes the output's bits. */
struct db_chunking {
    uint64_t units; /* the tensor's units (db_units) */
    uint64_t per;   /* units a chunk (the last may have fewer) */
    uint64_t nchunks;
    uint64_t max_elem, max_samp, max_words; /* the largest chunk's elements, samples and mask words */
    int fused;                              /* one chunk, compat none, at most DB_DEVICE_SCALE_MAX_SAMPLES samples: the
                                             * scales on the device, checked against the host's */
};

/* Plans the chunks of a job on a device of max_buffer bytes a buffer, at most max_units units a
 * chunk (0: no cap). DROPBLOCK_EEXHAUSTED with a message when a unit, or a chunk's per-sample
 * counts, cannot fit. */
int db_job_chunks(const struct db_plan *pl, uint64_t max_buffer, uint64_t max_units, struct db_chunking *ck, char *msg,
                  size_t len);

/* Chunk q of a planned job. */
static inline void db_job_chunk(const struct db_plan *pl, const struct db_chunking *ck, uint64_t q, struct db_chunk *ch)
{
    db_chunk_at(pl, q * ck->per, (q + 1) * ck->per < ck->units ? (q + 1) * ck->per : ck->units, ch);
}

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
    uint32_t scatter;     /* the scatter and count passes where they apply (db_scatter_item: compat
                           * none, unshared masks), about this many candidate blocks a work item;
                           * 0: the tiles always */
};

/* The tile of the passes for a plan and a device: rows, columns (W unless rows is 1) and, for
 * NHWC, channels (C unless rows and columns are 1). */
struct db_tile {
    uint32_t rows, cols;
    uint64_t chans;
};
void db_tile_shape(const struct db_plan *pl, const struct db_tuning *tu, struct db_tile *t);

/* Whether the fast apply kernels (db_vapply) can take the job: compat none, and for per-sample
 * scales samples of at least epw elements (so a work item meets at most one sample boundary). */
int db_fast_apply_ok(const struct db_plan *pl, uint32_t epw);

/* The DBP_COUNT parameter words for a chunk. */
void db_kernel_params(const struct db_plan *pl, const struct db_chunk *ch, const struct db_tuning *tu,
                      uint32_t prm[DBP_COUNT]);

/* Mask tiles of a chunk, and the work items the mask pass is launched over (prm[DBP_TPW] tiles
 * each). */
uint64_t db_chunk_tiles(const struct db_plan *pl, const struct db_chunk *ch, const struct db_tuning *tu);
static inline uint64_t db_mask_items(const uint32_t *prm)
{
    return ((uint64_t)prm[DBP_NTILES] + prm[DBP_TPW] - 1) / prm[DBP_TPW];
}

/* Where prm[DBP_SCATTER]: the work items of the scatter pass (DBP_SKR candidate rows each) and
 * of the count pass (DBP_CKW mask words each); at least one each. */
static inline uint64_t db_scatter_items(const uint32_t *prm)
{
    uint64_t rows = (uint64_t)prm[DBP_SROWS] | (uint64_t)prm[DBP_SROWS + 1] << 32;
    return (rows + prm[DBP_SKR] - 1) / prm[DBP_SKR];
}
static inline uint64_t db_count_items(const uint32_t *prm)
{
    uint64_t nelem = (uint64_t)prm[DBP_NELEM] | (uint64_t)prm[DBP_NELEM + 1] << 32;
    return ((nelem + 31) / 32 + prm[DBP_CKW] - 1) / prm[DBP_CKW];
}

/* The benchmark's baseline (shaders/db_baseline.h) for a plan: its BLP_COUNT parameter words
 * and the sizes of its float32 intermediates (noise and pooled: numel; padded: npad; partial
 * sums: nparts words). DROPBLOCK_EINVAL with a message where torchvision would refuse the block
 * (even, not square, or in 3-D not a cube) or the tensor has 2^32 elements or more. */
int db_baseline_params(const struct db_plan *pl, uint32_t blp[BLP_COUNT], uint64_t *npad, uint64_t *nparts, char *msg,
                       size_t len);

/* The subnormal probe both GPU backends run at device setup (their probe_exact): n subnormal
 * float32 inputs x of every magnitude class and both signs, with scales s from 1 to 2^40; the
 * device's fast-apply product of each must equal core/fp.h's db_mul32(x, s). */
void db_probe_subnormals(uint32_t *x, uint32_t *s, int n);

/* The f16 probe's cases both GPU backends run (their probe_half): float32 values f[i] with keep
 * bits keep[i], i < nf: every finite f16 value's float32, the rounding ties and their
 * neighbours with both signs, infinities, the quiet NaN, huge and tiny values, kept and dropped;
 * the device's apply (scale 1) and narrowing must give core/fp.h's db_ref_f32_to_f16. */
void db_probe_half_cases(uint32_t *f, uint32_t *keep, uint32_t nf);

#endif
