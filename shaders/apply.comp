#version 450
/* apply.comp: pass 3, fast: invocation q takes tensor words 4q .. 4q + 3 (four f32 elements or
 * eight f16/bf16 ones) of the first DBP_GROUPS * DBP_EPW elements, as one 16-byte vector, with
 * db_vapply. Unless the device was found to keep subnormal products exact (the push constant
 * hwexact, from the probe below), lanes db_vbad reports keep x and are marked in fixup for
 * fixup.comp (Vulkan does not promise to keep subnormals). x and y may be one buffer (in place).
 *
 * With -DPROBE=1 the probe instead: y[i] = db_vapply(x[i], scales[i], kept) for i < n (push
 * constant), which the host compares with core/fp.h's product at device setup.
 *
 * f16 in hardware: built with -DHWHALF=1 (spv_apply_half), f16 words are widened by
 * unpackHalf2x16, multiplied as IEEE floats and narrowed by packHalf2x16 (core GLSL, no optional
 * feature) instead of db_vapply's integers. packHalf2x16's rounding is the implementation's
 * choice, so the host uses that build only where the half probe (-DPROBE=2, engine/vulkan_device.c
 * vk_probe_half) found these functions to give core/fp.h's bits. */
#extension GL_EXT_shader_explicit_arithmetic_types_int64 : require
#extension GL_GOOGLE_include_directive : require
#include "db_glsl.h"

#ifndef HWHALF
#define HWHALF 0
#endif

/* f16 through the device's conversions: db_hwiden: the two halves of xw (low first) -> their
 * float32 bits, NaN quiet without payload as db_f16_to_f32 gives it */
uint db_hquiet(uint v)
{
    return (v & 0x7FFFFFFFu) > 0x7F800000u ? (v & 0x80000000u) | 0x7FC00000u : v;
}

void db_hwiden(uint xw, out uint a, out uint b)
{
    vec2 f = unpackHalf2x16(xw);
    a = db_hquiet(floatBitsToUint(f.x));
    b = db_hquiet(floatBitsToUint(f.y));
}

/* db_vapply(v, s, keep, DB_DTYPE_F32) for v from db_hwiden (never subnormal; NaN quiet without
 * payload) and s +0 or normal >= 1, in two IEEE products, (v * s) * m (precise: not reassociated):
 * only a NaN needs a select, since the hardware's NaN bits differ between devices */
uint db_happly(uint v, uint s, uint keep)
{
    precise float p = uintBitsToFloat(v) * uintBitsToFloat(s);
    precise float q = p * (keep != 0u ? 1.0 : 0.0);
    uint r = floatBitsToUint(q);
    uint made = (v & 0x7FFFFFFFu) > 0x7F800000u ? v : DB_DEFAULT_NAN; /* x NaN, or inf * 0 */
    return (r & 0x7FFFFFFFu) > 0x7F800000u ? made : r;
}

/* db_hnarrow: the float32 bits a (low half) and b -> their f16 words in one, a NaN made the
 * quiet NaN 0x7E00 of its sign without payload by one select */
uint db_hnarrow(uint a, uint b)
{
    uvec2 ab = uvec2(a, b);
    uint w = packHalf2x16(vec2(uintBitsToFloat(a), uintBitsToFloat(b)));
    uvec2 h = mix(uvec2(w & 0xFFFFu, w >> 16), ((ab >> 16) & 0x8000u) | 0x7E00u,
                  greaterThan(ab & 0x7FFFFFFFu, uvec2(0x7F800000u)));
    return h.x | (h.y << 16);
}

#if PROBE == 2
/* The half probe: x holds nh words of halves (2 nh of them), then 2 n float32 values, then their
 * 2 n keep flags; invocation i widens word i of the halves into y[2i], y[2i + 1] (i < nh) and
 * applies (scale 1) and narrows values 2i, 2i + 1 into y[2 nh + i] (i < n). The host compares
 * with core/fp.h. */
layout(push_constant) uniform Push { uint hwexact, n, nh; } pc;
layout(std430, set = 0, binding = DBB_X) readonly buffer X { uint x[]; };
layout(std430, set = 0, binding = DBB_Y) writeonly buffer Y { uint y[]; };

void main()
{
    uint nh = pc.nh, n = pc.n;
    for (u64 j = U64(gl_GlobalInvocationID.x); j < U64(n); j += DB_STRIDE) {
        uint i = uint(j), a, b;
        if (i < nh) {
            db_hwiden(x[i], a, b);
            y[2u * i] = a;
            y[2u * i + 1u] = b;
        }
        uint f = nh + 2u * i, k = nh + 2u * n + 2u * i;
        y[2u * nh + i] = db_hnarrow(db_happly(x[f], 0x3F800000u, x[k]), db_happly(x[f + 1u], 0x3F800000u, x[k + 1u]));
    }
}
#elif PROBE
layout(push_constant) uniform Push { uint hwexact, n; } pc;
layout(std430, set = 0, binding = DBB_X) readonly buffer X { uint x[]; };
layout(std430, set = 0, binding = DBB_Y) writeonly buffer Y { uint y[]; };

void main()
{
    for (u64 i = U64(gl_GlobalInvocationID.x); i < U64(pc.n); i += DB_STRIDE)
        y[IX(i)] = db_vapply(x[IX(i)], scales[IX(i)], 1u, DB_DTYPE_F32);
}
#else
layout(push_constant) uniform Push { uint hwexact, n; } pc;
layout(std430, set = 0, binding = DBB_X) readonly buffer X { uvec4 x[]; };
layout(std430, set = 0, binding = DBB_Y) writeonly buffer Y { uvec4 y[]; };

/* element k's scale: sample boundaries are found once per invocation (host: CHW >= EPW) */
uint scale_of(uint k, uint k0, uint s0, uint s1, u64 bnd)
{
    return U64(k - k0) >= bnd ? s1 : s0;
}

void main()
{
    uint groups = DB_P(DBP_GROUPS), dtype = DB_P(DBP_DTYPE);
    uint epv = dtype == DB_DTYPE_F32 ? 4u : 8u;
    for (u64 q64 = U64(gl_GlobalInvocationID.x); q64 < U64(groups); q64 += DB_STRIDE) {
        uint q = uint(q64), k0 = q * epv, sh = k0 & 31u;
        uint word = mask[k0 >> 5] >> sh;
        uint s0 = scales[0], s1 = s0;
        u64 bnd = 64ul;
        if (DB_P(DBP_NORM) == 1u) {
            u64 E0 = DB_PRM64(DBP_E0), CHW = DB_PRM64(DBP_CHW), N0 = DB_PRM64(DBP_N0);
            u64 si = (E0 + U64(k0)) / CHW;
            bnd = (si + 1ul) * CHW - E0 - U64(k0);
            s0 = scales[IX(si - N0)];
            s1 = si + 1ul - N0 < U64(DB_P(DBP_NSAMP)) ? scales[IX(si + 1ul - N0)] : s0;
        }
        uvec4 xv = x[q], yv;
        uint bad = 0u;
        for (uint l = 0u; l < 4u; l++) {
            uint xw = xv[l], yw;
            if (dtype == DB_DTYPE_F32) {
                uint k = k0 + l;
                yw = db_vapply(xw, scale_of(k, k0, s0, s1, bnd), (word >> l) & 1u, dtype);
                if (db_vbad(xw, dtype, pc.hwexact) != 0u) { yw = xw; bad |= 1u << l; }
            } else if (HWHALF != 0 && dtype == DB_DTYPE_F16) {
                uint k = k0 + 2u * l, a, b;
                db_hwiden(xw, a, b);
                yw = db_hnarrow(db_happly(a, scale_of(k, k0, s0, s1, bnd), (word >> (2u * l)) & 1u),
                                db_happly(b, scale_of(k + 1u, k0, s0, s1, bnd), (word >> (2u * l + 1u)) & 1u));
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
