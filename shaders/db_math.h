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

/* one Philox round; written out ten times below, not looped: llvmpipe (lavapipe) ends any
 * invocation whose loops run more than 65535 iterations in all, and a candidate block must not
 * spend ten of them */
#define DB_PHILOX_ROUND(c, k0, k1) \
    { \
        u64 p0_ = U64(0xD2511F53u) * U64(c.x); \
        u64 p1_ = U64(0xCD9E8D57u) * U64(c.z); \
        c = MAKE_U32X4(U32(p1_ >> 32) ^ c.y ^ k0, U32(p1_), U32(p0_ >> 32) ^ c.w ^ k1, U32(p0_)); \
        k0 += 0x9E3779B9u; \
        k1 += 0xBB67AE85u; \
    }

/* Philox4x32-10 on counter c, key (k0, k1) */
DBFN u32x4 db_philox(u32x4 c, u32 k0, u32 k1)
{
    /* clang-format off */
    DB_PHILOX_ROUND(c, k0, k1) DB_PHILOX_ROUND(c, k0, k1) DB_PHILOX_ROUND(c, k0, k1) DB_PHILOX_ROUND(c, k0, k1)
    DB_PHILOX_ROUND(c, k0, k1) DB_PHILOX_ROUND(c, k0, k1) DB_PHILOX_ROUND(c, k0, k1) DB_PHILOX_ROUND(c, k0, k1)
    DB_PHILOX_ROUND(c, k0, k1) DB_PHILOX_ROUND(c, k0, k1)
        /* clang-format on */
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
        while ((m & 0x400u) == 0u) {
            m <<= 1;
            e -= 1u;
        }
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
    while (m >= (1ul << 27)) {
        sticky |= U32(m & 1ul);
        m >>= 1;
        e += I64(1);
    }
    while (m < (1ul << 26)) {
        m <<= 1;
        e -= I64(1);
    }
    /* value = m * 2^e, m has 27 bits: exponent of the leading bit is e + 26 */
    i64 ex = e + I64(26);
    if (ex > I64(127)) return sign | 0x7F800000u;
    i64 shift = I64(3);                          /* bits dropped below the 24-bit mantissa */
    if (ex < I64(-126)) shift += I64(-126) - ex; /* subnormal: fewer mantissa bits */
    if (shift > I64(40)) shift = I64(40);
    u64 kept = m >> U64(shift);
    u64 rest = m & ((1ul << U64(shift)) - 1ul);
    u64 halfway = 1ul << U64(shift - I64(1));
    if (rest > halfway || (rest == halfway && (sticky != 0u || (kept & 1ul) != 0ul))) kept += 1ul;
    if (ex < I64(-126)) return sign | U32(kept); /* subnormal, or the smallest normal on carry */
    /* normal: kept in [2^23, 2^24], carry may bump the exponent */
    if (kept == (1ul << 24)) {
        kept >>= 1;
        ex += I64(1);
    }
    if (ex > I64(127)) return sign | 0x7F800000u;
    return sign | (U32(ex + I64(127)) << 23) | (U32(kept) & 0x7FFFFFu);
}

/* mantissa and exponent of a finite nonzero float32: value = m * 2^e */
DBFN u64 db_mant(u32 b)
{
    u32 ex = (b >> 23) & 0xFFu;
    return ex == 0u ? U64(b & 0x7FFFFFu) : U64((b & 0x7FFFFFu) | 0x800000u);
}
DBFN i64 db_expo(u32 b)
{
    u32 ex = (b >> 23) & 0xFFu;
    return ex == 0u ? I64(-149) : I64(ex) - I64(150);
}

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
    while (ma < md) {
        ma <<= 1;
        e -= I64(1);
    }
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
        /* TensorFlow's CPU kernels (denormals-are-zero): a float32 subnormal is read as a zero of
         * its sign (docs/semantics.md, "The exact keras_cv rules") */
        if ((v & 0x7F800000u) == 0u) v &= 0x80000000u;
        v = db_div(v, s);
        if (dtype != DB_DTYPE_F32) v = db_widen(db_narrow(v, dtype), dtype);
    } else {
        v = db_mul(v, s);
    }
    if (keep == 0u) v = db_mul(v, 0u);
    return db_narrow(v, dtype);
}

/* float32 nearest to s/k (k >= 1), ties to even, as bits: the device's form of core/plan.c
 * db_ratio_f32_bits (exact for s, k < 2^62), so that the scale needs no trip to the host.
 * Long division gives at least 27 quotient bits; the remainder is the sticky bit. */
DBFN u32 db_ratio(u64 s, u64 k)
{
    if (s == 0ul || k == 0ul) return 0u;
    u64 m = s / k, r = s - m * k;
    i64 e = I64(0);
    while (m < (1ul << 26)) {
        r <<= 1;
        m <<= 1;
        if (r >= k) {
            m |= 1ul;
            r -= k;
        }
        e -= I64(1);
    }
    return db_round_f32(0u, m, e, r != 0ul ? 1u : 0u);
}

/* ---- candidate words in batches -----------------------------------------------------------
 * db_fire_batch runs Philox on counters base + blk[l] for the n <= DB_BATCH queued blocks (or,
 * where run is not DB_NO_RUN, on the n blocks run, run + 1, ..., with blk unread) and
 * returns the set DB_FIRED of t = 4 l + k (word t / 32, bit t % 32; db_fired_word) where word
 * k of block l fires: (word & wmask) < thr, or always when all. A CPU build may provide the
 * batch (DB_BATCH, DB_QUEUE, DB_FIRED, db_fired_word, db_fired_any, db_fire_batch, and for the
 * queues of whole planes DB_CPU_BATCHES, db_queue_clear, db_queue_span) after this header and
 * before db_passes.h: CPU devices under OpenCL in vectors (db_philox_cl.h, included by
 * dropblock.cl with -DDB_CPU), the CPU backend in intrinsics (engine/philox_simd_batch.h,
 * included by backend_cpu.c); where none is provided (GPUs, the test of the passes)
 * db_passes.h goes one block at a time. Nothing here is defined outside shaders/. */
#define DB_NO_RUN 0xFFFFFFFFFFFFFFFFul

/* ---- the fast apply --------------------------------------------------------------------
 * Branch-free forms over DBV_T lanes (db_portable.h: a vector in OpenCL, a scalar elsewhere),
 * so that CPU compilers vectorize them. They give db_apply_bits's bits for compat none, where
 * the scale s is +0 or a normal float >= 1: NaN, infinity and zero are chosen by integer
 * selects, and the one hardware product is of normal operands with a normal or infinite result
 * (correctly rounded on every OpenCL and Vulkan device), except for subnormal f32/bf16 inputs,
 * which db_vbad reports unless the device was found to keep subnormals (hwexact). */

/* f16 bits -> f32 bits, exact; a subnormal is m * 2^-24, a normal float32 product of normals */
DBFN DBV_T db_vwiden_f16(DBV_T h)
{
    DBV_T sign = (h & DBV(0x8000u)) << 16, e = (h >> 10) & DBV(0x1Fu), m = h & DBV(0x3FFu);
    DBV_T normal = sign | ((e + DBV(112u)) << 23) | (m << 13);
    VPRECISE DBV_FLOAT f = DBV_TO_F(m) * 5.9604644775390625e-8f;
    DBV_T sub = sign | DBV_AS_U(f);
    DBV_T special = sign | DBV_SEL(m != DBV(0u), DBV(0x7FC00000u), DBV(0x7F800000u));
    return DBV_SEL(e == DBV(0x1Fu), special, DBV_SEL(e == DBV(0u), sub, normal));
}

/* f32 bits -> f16 bits, db_f32_to_f16 without branches */
DBFN DBV_T db_vnarrow_f16(DBV_T b)
{
    DBV_T sign = (b >> 16) & DBV(0x8000u), a = b & DBV(0x7FFFFFFFu);
    DBV_T q = (a >> 13) - DBV(112u << 10), rem = a & DBV(0x1FFFu);
    q = q +
        DBV_SEL(DBV_OR(rem > DBV(0x1000u), DBV_AND(rem == DBV(0x1000u), (q & DBV(1u)) != DBV(0u))), DBV(1u), DBV(0u));
    /* subnormal results: shift 126 - e is 14..24 there; clamped so other lanes shift safely */
    DBV_T sh = DBV(126u) - DBV_MIN(DBV_MAX(a >> 23, DBV(102u)), DBV(112u));
    DBV_T mm = (a & DBV(0x7FFFFFu)) | DBV(0x800000u);
    DBV_T sq = mm >> sh, srem = mm & ((DBV(1u) << sh) - DBV(1u)), halfway = DBV(1u) << (sh - DBV(1u));
    sq = sq + DBV_SEL(DBV_OR(srem > halfway, DBV_AND(srem == halfway, (sq & DBV(1u)) != DBV(0u))), DBV(1u), DBV(0u));
    DBV_T r = DBV_SEL(a < DBV(0x33000000u), DBV(0u), DBV_SEL(a < DBV(0x38800000u), sq, q));
    r = DBV_SEL(a >= DBV(0x477FF000u), DBV(0x7C00u), r);
    r = DBV_SEL(a > DBV(0x7F800000u), DBV(0x7E00u), r);
    return sign | r;
}

/* f32 bits -> bf16 bits, db_f32_to_bf16 without branches */
DBFN DBV_T db_vnarrow_bf16(DBV_T b)
{
    DBV_T nan = ((b >> 16) | DBV(0x40u)) & DBV(0xFFFFu);
    DBV_T rounded = ((b + DBV(0x7FFFu) + ((b >> 16) & DBV(1u))) >> 16) & DBV(0xFFFFu);
    return DBV_SEL((b & DBV(0x7FFFFFFFu)) > DBV(0x7F800000u), nan, rounded);
}

/* y (dtype bits) = db_apply_bits(x, s, keep, 0, dtype) for s = +0 or normal >= 1; lanes that
 * db_vbad reports come out wrong and are redone by the caller */
DBFN DBV_T db_vapply(DBV_T x, DBV_T s, DBV_T keep, u32 dtype)
{
    DBV_T v = x;
    if (dtype == DB_DTYPE_F16) v = db_vwiden_f16(x);
    if (dtype == DB_DTYPE_BF16) v = x << 16;
    DBV_T av = v & DBV(0x7FFFFFFFu);
    VPRECISE DBV_FLOAT p = DBV_AS_F(v) * DBV_AS_F(s);
    DBV_T r = DBV_AS_U(p);
    DBV_T qnan = v | DBV(0x00400000u);
    /* kept: x * s; an infinite x stays infinite unless s is 0 */
    DBV_T yk = DBV_SEL(av == DBV(0x7F800000u), DBV_SEL(s == DBV(0u), DBV(DB_DEFAULT_NAN), v), r);
    /* dropped: (x * s) * 0, the signed zero of a finite product, NaN for an infinite one */
    DBV_T yd = DBV_SEL(DBV_OR(av == DBV(0x7F800000u), (r & DBV(0x7FFFFFFFu)) == DBV(0x7F800000u)), DBV(DB_DEFAULT_NAN),
                       r & DBV(0x80000000u));
    DBV_T y = DBV_SEL(av > DBV(0x7F800000u), qnan, DBV_SEL(keep != DBV(0u), yk, yd));
    if (dtype == DB_DTYPE_F16) y = db_vnarrow_f16(y);
    if (dtype == DB_DTYPE_BF16) y = db_vnarrow_bf16(y);
    return y;
}

/* 1 in the lanes db_vapply may get wrong on this device: a subnormal f32 (or bf16) input where
 * the device is not known to keep subnormals (f16 inputs widen to normal floats) */
DBFN DBV_T db_vbad(DBV_T x, u32 dtype, u32 hwexact)
{
    if (hwexact != 0u || dtype == DB_DTYPE_F16) return DBV(0u);
    DBV_T a = x & DBV(0x7FFFFFFFu);
    if (dtype == DB_DTYPE_BF16) a = (x << 16) & DBV(0x7FFFFFFFu);
    return DBV_SEL(DBV_AND(a != DBV(0u), a < DBV(0x00800000u)), DBV(1u), DBV(0u));
}

#endif
