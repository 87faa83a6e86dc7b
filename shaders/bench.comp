#version 450
/* bench.comp: what only bench/dropblock-bench runs, one pipeline per BENCH_STEP (-D at build
 * time): 0 the copy that is the roofline (one 16-byte vector an invocation, as apply.comp),
 * 1.. the kernels of torchvision's method (db_baseline.h). Push constants: n (invocations),
 * then src, nin, dst for the partial sums. Bindings: 0 params, 1 noise, 2 padded, 3 pooled,
 * 6 part, 4 x, 5 y. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#define DB_LANG_GLSL

layout(local_size_x_id = 0) in;
layout(push_constant) uniform Push { uint n, src, nin, dst; } pc;

layout(std430, set = 0, binding = 0) readonly buffer Prm { uint prm[]; };
layout(std430, set = 0, binding = 1) buffer Noise { uint noise[]; };
layout(std430, set = 0, binding = 2) buffer Padded { uint padded[]; };
layout(std430, set = 0, binding = 3) buffer Pooled { uint pooled[]; };
layout(std430, set = 0, binding = 6) buffer Part { uint part[]; };
layout(std430, set = 0, binding = 4) readonly buffer X { uint x[]; };
layout(std430, set = 0, binding = 5) writeonly buffer Y { uint y[]; };
layout(std430, set = 0, binding = 4) readonly buffer X4 { uvec4 x4[]; };
layout(std430, set = 0, binding = 5) writeonly buffer Y4 { uvec4 y4[]; };

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
