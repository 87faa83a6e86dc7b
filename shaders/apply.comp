#version 450
/* apply.comp: pass 3, fast: invocation q takes tensor words 4q .. 4q + 3 (four f32 elements or
 * eight f16/bf16 ones) of the first DBP_GROUPS * DBP_EPW elements, as one 16-byte vector, with
 * db_vapply. Unless the device was found to keep subnormal products exact (the push constant
 * hwexact, from the probe below), lanes db_vbad reports keep x and are marked in fixup for
 * fixup.comp (Vulkan does not promise to keep subnormals). x and y may be one buffer (in place).
 *
 * With -DPROBE=1 the probe instead: y[i] = db_vapply(x[i], scales[i], kept) for i < n (push
 * constant), which the host compares with core/fp.h's product at device setup. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

layout(push_constant) uniform Push { uint hwexact, n; } pc;

#if PROBE
layout(std430, set = 0, binding = DBB_X) readonly buffer X { uint x[]; };
layout(std430, set = 0, binding = DBB_Y) writeonly buffer Y { uint y[]; };

void main()
{
    for (u64 i = U64(gl_GlobalInvocationID.x); i < U64(pc.n); i += DB_STRIDE)
        y[IX(i)] = db_vapply(x[IX(i)], scales[IX(i)], 1u, DB_DTYPE_F32);
}
#else
layout(std430, set = 0, binding = DBB_X) readonly buffer X { uvec4 x[]; };
layout(std430, set = 0, binding = DBB_Y) writeonly buffer Y { uvec4 y[]; };

/* element k's scale: sample boundaries are found once per invocation (host: CHW >= EPW) */
uint scale_of(uint k, uint k0, uint s0, uint s1, u64 bnd)
{
    return U64(k - k0) >= bnd ? s1 : s0;
}

void main()
{
    uint groups = prm[DBP_GROUPS], dtype = prm[DBP_DTYPE];
    uint epv = dtype == DB_DTYPE_F32 ? 4u : 8u;
    for (u64 q64 = U64(gl_GlobalInvocationID.x); q64 < U64(groups); q64 += DB_STRIDE) {
        uint q = uint(q64), k0 = q * epv, sh = k0 & 31u;
        uint word = mask[k0 >> 5] >> sh;
        uint s0 = scales[0], s1 = s0;
        u64 bnd = 64ul;
        if (prm[DBP_NORM] == 1u) {
            u64 E0 = DB_PRM64(DBP_E0), CHW = DB_PRM64(DBP_CHW), N0 = DB_PRM64(DBP_N0);
            u64 si = (E0 + U64(k0)) / CHW;
            bnd = (si + 1ul) * CHW - E0 - U64(k0);
            s0 = scales[IX(si - N0)];
            s1 = si + 1ul - N0 < U64(prm[DBP_NSAMP]) ? scales[IX(si + 1ul - N0)] : s0;
        }
        uvec4 xv = x[q], yv;
        uint bad = 0u;
        for (uint l = 0u; l < 4u; l++) {
            uint xw = xv[l], yw;
            if (dtype == DB_DTYPE_F32) {
                uint k = k0 + l;
                yw = db_vapply(xw, scale_of(k, k0, s0, s1, bnd), (word >> l) & 1u, dtype);
                if (db_vbad(xw, dtype, pc.hwexact) != 0u) { yw = xw; bad |= 1u << l; }
            } else {
                uint lo = xw & 0xFFFFu, hi = xw >> 16, k = k0 + 2u * l;
                uint ylo = db_vapply(lo, scale_of(k, k0, s0, s1, bnd), (word >> (2u * l)) & 1u, dtype);
                uint yhi = db_vapply(hi, scale_of(k + 1u, k0, s0, s1, bnd), (word >> (2u * l + 1u)) & 1u, dtype);
                if (db_vbad(lo, dtype, pc.hwexact) != 0u) { ylo = lo; bad |= 1u << (2u * l); }
                if (db_vbad(hi, dtype, pc.hwexact) != 0u) { yhi = hi; bad |= 2u << (2u * l); }
                yw = ylo | (yhi << 16);
            }
            yv[l] = yw;
        }
        y[q] = yv;
        if (bad != 0u) atomicOr(fixup[k0 >> 5], bad << sh);
    }
}
#endif
