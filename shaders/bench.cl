/* bench.cl: kernels that only bench/dropblock-bench runs, built on the first benchmark of a
 * device with the same -D options as dropblock.cl: the copy that is the roofline, and
 * torchvision's multi-pass method (db_baseline.h). */
#ifndef DB_LANG_CL
#define DB_LANG_CL
#endif
#ifndef DB_VPW
#define DB_VPW 1
#endif
#include "db_baseline.h"

/* y = x, DB_VPW vectors of DB_VW words a work item: the apply pass's loads and stores and
 * nothing else. Launched on exact sizes, like the fast apply. */
__kernel void bl_copy(__global const uint *x, __global uint *y)
{
    uint g = (uint)get_global_id(0);
    for (uint v = 0u; v < DB_VPW; v++) DB_STOREV(y, g * DB_VPW + v, DB_LOADV(x, g * DB_VPW + v));
}

/* the words after the whole work items of bl_copy */
__kernel void bl_copy_tail(__global const uint *x, __global uint *y, uint first, uint n)
{
    uint i = first + (uint)get_global_id(0);
    if (i < n) y[i] = x[i];
}

#define BL_ARGS prm, noise, padded, pooled, part, x, y
#define BL_PARAMS \
    __global const uint *prm, __global uint *noise, __global uint *padded, __global uint *pooled, __global uint *part, \
        __global const uint *x, __global uint *y
#define BL_KERNEL(name) \
    __kernel void k_##name(BL_PARAMS, uint n) \
    { \
        uint i = (uint)get_global_id(0); \
        if (i < n) name(BL_ARGS, i); \
    }
BL_KERNEL(bl_bernoulli)
BL_KERNEL(bl_pad)
BL_KERNEL(bl_pool)
BL_KERNEL(bl_one_minus)
BL_KERNEL(bl_sum_noise)
BL_KERNEL(bl_mul)

__kernel void k_bl_sum_part(BL_PARAMS, uint n, uint src, uint nin, uint dst)
{
    uint i = (uint)get_global_id(0);
    if (i < n) bl_sum_part(BL_ARGS, i, src, nin, dst);
}

__kernel void k_bl_scale(BL_PARAMS, uint src, uint nin)
{
    if (get_global_id(0) == 0) bl_scale(BL_ARGS, src, nin);
}
