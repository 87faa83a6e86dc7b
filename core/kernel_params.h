/* kernel_params.h: chunking and the parameter words of the GPU passes (shaders/db_passes.h). */
#ifndef DROPBLOCK_CORE_KERNEL_PARAMS_H
#define DROPBLOCK_CORE_KERNEL_PARAMS_H

#include "plan.h"

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

/* The DBP_COUNT parameter words for a chunk. */
void db_kernel_params(const struct db_plan *pl, const struct db_chunk *ch, uint32_t prm[DBP_COUNT]);

#endif
