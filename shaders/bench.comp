#version 450
/* bench.comp: what only bench/dropblock-bench runs, one pipeline per BENCH_STEP (-D at build
 * time): 0 the copy that is the roofline (one 16-byte vector an invocation, as apply.comp),
 * 1.. the kernels of torchvision's method (db_baseline.h). Push constants: n (invocations),
 * then src, nin, dst for the partial sums. Bindings (db_params.h): params on DBB_PRM, noise on
 * DBB_MASK, padded on DBB_AUX, pooled on DBB_KEPT, part on DBB_SCALES, x and y on DBB_X, DBB_Y. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#define DB_LANG_GLSL
#include "db_params.h"
#include "db_baseline_params.h"

layout(local_size_x_id = 0) in;
layout(push_constant) uniform Push { uint n, src, nin, dst; } pc;

/* the parameter words (BLP_*) in a uniform block, as the passes' (db_glsl.h) */
layout(std140, set = 0, binding = DBB_PRM) uniform Prm { uvec4 prm4[(BLP_COUNT + 3) / 4]; };
#define DB_P(i) prm4[(i) >> 2][(i) & 3]
layout(std430, set = 0, binding = DBB_MASK) buffer Noise { uint noise[]; };
layout(std430, set = 0, binding = DBB_AUX) buffer Padded { uint padded[]; };
layout(std430, set = 0, binding = DBB_KEPT) buffer Pooled { uint pooled[]; };
layout(std430, set = 0, binding = DBB_SCALES) buffer Part { uint part[]; };
layout(std430, set = 0, binding = DBB_X) readonly buffer X { uint x[]; };
layout(std430, set = 0, binding = DBB_Y) writeonly buffer Y { uint y[]; };
layout(std430, set = 0, binding = DBB_X) readonly buffer X4 { uvec4 x4[]; };
layout(std430, set = 0, binding = DBB_Y) writeonly buffer Y4 { uvec4 y4[]; };

#include "db_baseline.h"

void main()
{
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint i = gl_GlobalInvocationID.x; i < pc.n; i += stride) {
#if BENCH_STEP == 0
        y4[i] = x4[i];
#elif BENCH_STEP == 1
        bl_bernoulli(i);
#elif BENCH_STEP == 2
        bl_pad(i);
#elif BENCH_STEP == 3
        bl_pool(i);
#elif BENCH_STEP == 4
        bl_one_minus(i);
#elif BENCH_STEP == 5
        bl_sum_noise(i);
#elif BENCH_STEP == 6
        bl_sum_part(i, pc.src, pc.nin, pc.dst);
#elif BENCH_STEP == 7
        if (i == 0u) bl_scale(pc.src, pc.nin);
#elif BENCH_STEP == 8
        bl_mul(i);
#elif BENCH_STEP == 9
        y[pc.src + i] = x[pc.src + i]; /* the copy's words after the last whole vector */
#endif
    }
}
