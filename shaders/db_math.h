/* db_math.h: Philox and exact float32/f16/bf16 arithmetic in integers, for the kernels.
 * Written in db_portable.h's subset. GPUs may flush subnormals and do not round division
 * correctly, so everything that could differ from IEEE float32 with the reference's NaN rules
 * (core/fp.h) is done with integers here. */
#ifndef DB_MATH_H
#define DB_MATH_H

#include "db_portable.h"

#define DB_DTYPE_F32 0u
#define DB_DTYPE_F16 1u
#define DB_DTYPE_BF16 2u
#define DB_DEFAULT_NAN 0xFFC00000u

DBFN u32 db_sel4(u32x4 v, u32 k) { return k == 0u ? v.x : (k == 1u ? v.y : (k == 2u ? v.z : v.w)); }

/* Philox4x32-10 on counter c, key (k0, k1) */
DBFN u32x4 db_philox(u32x4 c, u32 k0, u32 k1)
{
    for (int r = 0; r < 10; r++) {
        u64 p0 = U64(0xD2511F53u) * U64(c.x);
        u64 p1 = U64(0xCD9E8D57u) * U64(c.z);
        c = MAKE_U32X4(U32(p1 >> 32) ^ c.y ^ k0, U32(p1), U32(p0 >> 32) ^ c.w ^ k1, U32(p0));
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c;
}

/* base (128-bit, 4 words) + v */
DBFN u32x4 db_ctr_add(u32x4 base, u64 v)
{
    u64 s = U64(base.x) + (v & 0xFFFFFFFFul);
    u32 c0 = U32(s);
    s = (s >> 32) + U64(base.y) + (v >> 32);
    u32 c1 = U32(s);
    s = (s >> 32) + U64(base.z);
    u32 c2 = U32(s);
    s = (s >> 32) + U64(base.w);
    return MAKE_U32X4(c0, c1, c2, U32(s));
}

DBFN u32 db_is_nan(u32 b) { return (b & 0x7FFFFFFFu) > 0x7F800000u ? 1u : 0u; }

DBFN u32 db_f16_to_f32(u32 h)
{
    u32 sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0x1Fu) return sign | (m != 0u ? 0x7FC00000u : 0x7F800000u);
    if (e == 0u) {
        if (m == 0u) return sign;
        e = 113u;
        while ((m & 0x400u) == 0u) { m <<= 1; e -= 1u; }
        return sign | (e << 23) | ((m & 0x3FFu) << 13);
    }
    return sign | ((e + 112u) << 23) | (m << 13);
}

DBFN u32 db_f32_to_f16(u32 b)
{
    u32 sign = (b >> 16) & 0x8000u, a = b & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u;
    if (a >= 0x477FF000u) return sign | 0x7C00u;
    if (a < 0x38800000u) {
        if (a < 0x33000000u) return sign;
        u32 e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u;
        u32 shift = 126u - e;
        u32 q = m >> shift, rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (q & 1u) != 0u)) q += 1u;
        return sign | q;
    }
    u32 q = (a >> 13) - (112u << 10), rem = a & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u) != 0u)) q += 1u;
    return sign | q;
}

DBFN u32 db_f32_to_bf16(u32 b)
{
    if (db_is_nan(b) != 0u) return ((b >> 16) | 0x40u) & 0xFFFFu;
    return ((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16) & 0xFFFFu;
}

DBFN u32 db_widen(u32 h, u32 dtype)
{
    if (dtype == DB_DTYPE_F16) return db_f16_to_f32(h);
    if (dtype == DB_DTYPE_BF16) return h << 16;
    return h;
}

DBFN u32 db_narrow(u32 b, u32 dtype)
{
    if (dtype == DB_DTYPE_F16) return db_f32_to_f16(b);
    if (dtype == DB_DTYPE_BF16) return db_f32_to_bf16(b);
    return b;
}

/* Rounds sign * (m * 2^e + a sticky fraction below m's last bit) to float32, nearest even.
 * m > 0 has at most 63 significant bits. */
DBFN u32 db_round_f32(u32 sign, u64 m, i64 e, u32 sticky)
{
    /* normalise m to [2^26, 2^27) so that it has 24 bits plus guard, round and sticky */
    while (m >= (1ul << 27)) { sticky |= U32(m & 1ul); m >>= 1; e += I64(1); }
    while (m < (1ul << 26)) { m <<= 1; e -= I64(1); }
    /* value = m * 2^e, m has 27 bits: exponent of the leading bit is e + 26 */
    i64 ex = e + I64(26);
    if (ex > I64(127)) return sign | 0x7F800000u;
    i64 shift = I64(3); /* bits dropped below the 24-bit mantissa */
    if (ex < I64(-126)) shift += I64(-126) - ex; /* subnormal: fewer mantissa bits */
    if (shift > I64(40)) shift = I64(40);
    u64 kept = m >> U64(shift);
    u64 rest = m & ((1ul << U64(shift)) - 1ul);
    u64 halfway = 1ul << U64(shift - I64(1));
    if (rest > halfway || (rest == halfway && (sticky != 0u || (kept & 1ul) != 0ul))) kept += 1ul;
    if (ex < I64(-126)) return sign | U32(kept); /* subnormal, or the smallest normal on carry */
    /* normal: kept in [2^23, 2^24], carry may bump the exponent */
    if (kept == (1ul << 24)) { kept >>= 1; ex += I64(1); }
    if (ex > I64(127)) return sign | 0x7F800000u;
    return sign | (U32(ex + I64(127)) << 23) | (U32(kept) & 0x7FFFFFu);
}

/* mantissa and exponent of a finite nonzero float32: value = m * 2^e */
DBFN u64 db_mant(u32 b) { u32 ex = (b >> 23) & 0xFFu; return ex == 0u ? U64(b & 0x7FFFFFu) : U64((b & 0x7FFFFFu) | 0x800000u); }
DBFN i64 db_expo(u32 b) { u32 ex = (b >> 23) & 0xFFu; return ex == 0u ? I64(-149) : I64(ex) - I64(150); }

/* a * b, float32 round to nearest even with subnormals, NaN rules of core/fp.h */
DBFN u32 db_mul(u32 a, u32 b)
{
    if (db_is_nan(a) != 0u) return a | 0x00400000u;
    if (db_is_nan(b) != 0u) return b | 0x00400000u;
    u32 sign = (a ^ b) & 0x80000000u, aa = a & 0x7FFFFFFFu, ab = b & 0x7FFFFFFFu;
    if (aa == 0x7F800000u || ab == 0x7F800000u) return (aa == 0u || ab == 0u) ? DB_DEFAULT_NAN : (sign | 0x7F800000u);
    if (aa == 0u || ab == 0u) return sign;
    if (aa >= 0x00800000u && ab >= 0x00800000u) {
        /* both normal: the hardware product is exact-rounded unless it under- or overflows */
        PRECISE float r = AS_F32(aa) * AS_F32(ab);
        u32 rb = AS_U32(r);
        if (rb >= 0x00800000u && rb < 0x7F800000u) return sign | rb;
    }
    return db_round_f32(sign, db_mant(aa) * db_mant(ab), db_expo(aa) + db_expo(ab), 0u);
}

/* a / d for finite nonzero normal d > 0 (keras_cv's percent), correctly rounded */
DBFN u32 db_div(u32 a, u32 d)
{
    if (db_is_nan(a) != 0u) return a | 0x00400000u;
    u32 sign = (a ^ d) & 0x80000000u, aa = a & 0x7FFFFFFFu;
    if (aa == 0x7F800000u) return sign | 0x7F800000u;
    if (aa == 0u) return sign;
    u64 ma = db_mant(aa), md = db_mant(d & 0x7FFFFFFFu);
    i64 e = db_expo(aa) - db_expo(d & 0x7FFFFFFFu);
    /* q = (ma << 36) / md has >= 36 - 24 + 1 bits beyond a 24-bit mantissa */
    while (ma < md) { ma <<= 1; e -= I64(1); }
    u64 num = ma << 36;
    u64 q = num / md, r = num - q * md;
    return db_round_f32(sign, q, e - I64(36), r != 0ul ? 1u : 0u);
}

/* One element of the apply pass: x (dtype bits), the sample's scale bits (keras: divisor
 * bits), keep bit -> output dtype bits. */
DBFN u32 db_apply_bits(u32 x, u32 s, u32 keep, u32 keras, u32 dtype)
{
    u32 v = db_widen(x, dtype);
    if (keras != 0u) {
        v = db_div(v, s);
        if (dtype != DB_DTYPE_F32) v = db_widen(db_narrow(v, dtype), dtype);
    } else {
        v = db_mul(v, s);
    }
    if (keep == 0u) v = db_mul(v, 0u);
    return db_narrow(v, dtype);
}

#endif
