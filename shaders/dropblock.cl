/* dropblock.cl: the three passes of DESIGN.md for OpenCL C 1.2. The pass bodies live in
 * db_passes.h (shared with the Vulkan shaders and checked in C by tests/test_passes.c); this
 * file only binds buffers and work items to them. One source serves f32, f16 and bf16: the
 * dtype is a parameter word, so one program is built per device.
 *
 * Launches use a global size rounded up to the work-group size, so every kernel bounds-checks
 * its id against the chunk's size from the parameter words. */
#ifndef DB_LANG_CL
#define DB_LANG_CL
#endif
#include "db_passes.h"

/* Pass 1: mask row k of the chunk -> its RW keep words and its kept count. */
__kernel void db_mask(__global const uint *prm, __global uint *mask, __global uint *counts)
{
    ulong k = (ulong)get_global_id(0);
    if (k >= DB_PRM64(DBP_NROWS)) return;
    counts[k] = db_mask_row(prm, mask, k);
}

/* Pass 2: kept count of sample n0 + s within the chunk, as two words (low first). */
__kernel void db_count(__global const uint *prm, __global const uint *counts, __global uint *kept)
{
    ulong s = (ulong)get_global_id(0);
    if (s >= (ulong)prm[DBP_NSAMP]) return;
    ulong v = db_count_sample(prm, counts, s);
    kept[2 * s] = (uint)v;
    kept[2 * s + 1] = (uint)(v >> 32);
}

/* Pass 3: element k of the chunk, in place: y = db_apply_bits(x, scale, keep). 16-bit dtypes
 * are addressed as ushort so that neighbouring elements are never rewritten. */
__kernel void db_apply(__global const uint *prm, __global const uint *mask, __global const uint *scales,
                       __global uint *data)
{
    ulong k = (ulong)get_global_id(0);
    if (k >= DB_PRM64(DBP_NELEM)) return;
    uint4 loc = db_apply_locate(prm, k);
    uint dtype = prm[DBP_DTYPE];
    uint keep = (mask[loc.x] >> loc.y) & 1u;
    if (dtype == DB_DTYPE_F32) {
        data[k] = db_apply_bits(data[k], scales[loc.z], keep, prm[DBP_KERAS], dtype);
    } else {
        __global ushort *h = (__global ushort *)data;
        h[k] = (ushort)db_apply_bits((uint)h[k], scales[loc.z], keep, prm[DBP_KERAS], dtype);
    }
}
