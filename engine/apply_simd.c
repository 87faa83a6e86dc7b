/* apply_simd.c: the CPU backend's apply pass (apply_simd.h) on whole vector registers.
 *
 * y = (x * scale) * m (docs/semantics.md, "Scale and output") as two hardware products, lane by
 * lane, in DB_C_VLANES-lane
 * generic vectors (db_portable.h's C vector mode). That is bit for bit db_apply_bits on x86-64
 * in the default MXCSR (the caller's threads run here with it: backend_cpu.c): the reference's
 * float32 rules are SSE's (core/fp.h: a NaN operand comes back quieted with its sign and
 * payload, inf * 0 gives 0xFFC00000), products of subnormals are exact, and rounding is to
 * nearest even; so no lane needs db_vapply's integer selects. f16 converts in hardware
 * (vcvtph2ps exact, vcvtps2ph to nearest even) with NaN made the spec's quiet NaN first; bf16
 * narrows with db_math.h's db_vnarrow_bf16.
 *
 * meson builds this file once per path: -mavx512f with 16 lanes (db_apply_fast_avx512),
 * -mavx2 -mf16c with 8 (db_apply_fast_avx2); the name comes in as DB_APPLY_FN. A group is 32
 * elements (one mask word), 32 / DB_C_VLANES vectors. */
#include "apply_simd.h"

#include <immintrin.h>
#include <string.h>

#define DB_LANG_C
#include "db_math.h"

#define NV (32 / DB_C_VLANES)
/* one straight-line body per dtype: nothing here is worth a call */
#define INLINE static inline __attribute__((always_inline))

/* each lane's index in the group, vector v */
INLINE DBV_T lanes(int v)
{
    DBV_T lane = {0}; /* every lane is set below; the compiler drops the zeroing */
    for (int l = 0; l < DB_C_VLANES; l++) lane[l] = (uint32_t)(v * DB_C_VLANES + l);
    return lane;
}

/* the 32 lanes' m (1.0f kept, +0 dropped) from the mask word, per vector */
INLINE void keep_lanes(uint32_t word, DBV_T m[NV])
{
    for (int v = 0; v < NV; v++) m[v] = (DBV(0u) - ((DBV(word) >> lanes(v)) & DBV(1u))) & DBV(0x3F800000u);
}

/* (x * s) * m on float32 bits */
INLINE DBV_T apply(DBV_T x, DBV_T s, DBV_T m) { return DBV_AS_U((DBV_AS_F(x) * DBV_AS_F(s)) * DBV_AS_F(m)); }

/* scale lanes: s, and s1 from lane bnd of the group on (bnd >= 32: s everywhere) */
INLINE void scale_lanes(uint32_t s, uint32_t s1, uint32_t bnd, DBV_T sc[NV])
{
    for (int v = 0; v < NV; v++) sc[v] = DBV_SEL(lanes(v) >= DBV(bnd), DBV(s1), DBV(s));
}

typedef uint16_t db_vu16 __attribute__((vector_size(2 * DB_C_VLANES)));

INLINE DBV_T widen_f16(db_vu16 h)
{
#if DB_C_VLANES == 16
    return (DBV_T)_mm512_cvtph_ps((__m256i)h);
#else
    return (DBV_T)_mm256_cvtph_ps((__m128i)h);
#endif
}

/* f32 bits to f16 bits; NaN becomes the sign and 0x7E00 (db_vnarrow_f16) */
INLINE db_vu16 narrow_f16(DBV_T y)
{
    y = DBV_SEL((y & DBV(0x7FFFFFFFu)) > DBV(0x7F800000u), (y & DBV(0x80000000u)) | DBV(0x7FC00000u), y);
#if DB_C_VLANES == 16
    return (db_vu16)_mm512_cvtps_ph((__m512)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    return (db_vu16)_mm256_cvtps_ph((__m256)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#endif
}

/* one group at k */
INLINE void group(const struct db_apply_args *a, uint64_t k, const DBV_T sc[NV], const uint32_t dtype)
{
    DBV_T x[NV], keep[NV];
    keep_lanes(a->mask[k >> 5], keep);
    if (dtype == DB_DTYPE_F32) {
        for (int v = 0; v < NV; v++) {
            memcpy(&x[v], a->in + (k + (uint64_t)v * DB_C_VLANES) * 4, sizeof x[v]);
            x[v] = apply(x[v], sc[v], keep[v]);
            memcpy(a->out + (k + (uint64_t)v * DB_C_VLANES) * 4, &x[v], sizeof x[v]);
        }
        return;
    }
    /* vector by vector: a whole group stored from a stack copy would stall on store forwarding */
    for (int v = 0; v < NV; v++) {
        db_vu16 h;
        memcpy(&h, a->in + (k + (uint64_t)v * DB_C_VLANES) * 2, sizeof h);
        if (dtype == DB_DTYPE_F16) {
            h = narrow_f16(apply(widen_f16(h), sc[v], keep[v]));
        } else {
            x[v] = apply(__builtin_convertvector(h, DBV_T) << 16, sc[v], keep[v]);
            h = __builtin_convertvector(db_vnarrow_bf16(x[v]), db_vu16);
        }
        memcpy(a->out + (k + (uint64_t)v * DB_C_VLANES) * 2, &h, sizeof h);
    }
}

/* the groups [k, k1) in one dtype (a constant where inlined) */
INLINE void run(const struct db_apply_args *a, uint64_t k, uint64_t k1, const uint32_t dtype)
{
    DBV_T sc[NV];
    if (!a->per_sample) {
        scale_lanes(a->scales[0], a->scales[0], 32u, sc);
        for (; k < k1; k += 32) group(a, k, sc, dtype);
        return;
    }
    /* one scale a sample: the sample of element k and where the next begins (chunk-relative) */
    uint64_t si = (a->e0 + k) / a->chw, next = (si + 1) * a->chw - a->e0;
    for (; k < k1; k += 32) {
        while (next <= k) {
            si++;
            next += a->chw;
        }
        uint32_t s = a->scales[si - a->n0];
        if (next < k + 32) scale_lanes(s, a->scales[si + 1 - a->n0], (uint32_t)(next - k), sc);
        else scale_lanes(s, s, 32u, sc);
        group(a, k, sc, dtype);
    }
}

void DB_APPLY_FN(const struct db_apply_args *a, uint64_t k, uint64_t k1)
{
    if (a->dtype == DB_DTYPE_F32) run(a, k, k1, DB_DTYPE_F32);
    else if (a->dtype == DB_DTYPE_F16) run(a, k, k1, DB_DTYPE_F16);
    else run(a, k, k1, DB_DTYPE_BF16);
}
