#version 450
/* scatter.comp: pass 1 on GPU tunings where DB_P(DBP_SCATTER) (compat none, unshared masks):
 * invocation w takes DBP_SKR candidate rows of the chunk and makes each of their blocks' Philox
 * words once, clearing every fired block's bits with atomics on a mask the host filled with
 * ones (db_scatter_item, db_passes.h); count.comp counts the kept bits after it. An
 * invocation's work is bounded (about 16 blocks and the drops of the fired ones), so it has no
 * completion word; on CPU devices, whose loops lavapipe cuts after 65535 iterations (mask.comp),
 * vk_job_tuning takes this flow only where every candidate of an invocation firing fits the
 * loop budget, and the tiles with their completion check otherwise. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

void main()
{
    u64 rows = U64(DB_P(DBP_SROWS)) | (U64(DB_P(DBP_SROWS + 1)) << 32);
    for (u64 w = U64(gl_GlobalInvocationID.x); w * U64(DB_P(DBP_SKR)) < rows; w += DB_STRIDE) db_scatter_item(w);
}
