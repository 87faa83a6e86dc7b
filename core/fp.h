/* fp.h: docs/semantics.md's float formats ("Scale and output"), in integers so the result does not depend
 * on the host's floating-point environment: f16 (IEEE binary16) and bf16 to and from float32
 * bits, and float32 multiply/divide with the NaN rules of the reference (x86 SSE, which
 * dropblock_ref.py runs on): a NaN operand comes back quieted with its sign and payload, an
 * invalid operation (inf * 0) gives the default NaN 0xFFC00000. The conversions and the NaN
 * take a db_ref_/DB_REF_ prefix (as philox.h's db_ref_ctr_add): the plain names are the kernels'
 * (shaders/db_math.h, other signatures). */
#ifndef DROPBLOCK_CORE_FP_H
#define DROPBLOCK_CORE_FP_H

#include <stdint.h>
#include <string.h>

static inline float db_f32(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}
static inline uint32_t db_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}
static inline int db_is_nan32(uint32_t b) { return (b & 0x7FFFFFFFu) > 0x7F800000u; }
static inline int db_is_inf32(uint32_t b) { return (b & 0x7FFFFFFFu) == 0x7F800000u; }

#define DB_REF_DEFAULT_NAN 0xFFC00000u

/* binary16 -> float32, exact. A NaN widens to the quiet NaN of its sign (as Python's struct
 * does: the f16 payload is not kept). */
static inline uint32_t db_ref_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0x1F) return sign | (m ? 0x7FC00000u : 0x7F800000u);
    if (e == 0) {
        if (m == 0) return sign;
        e = 113; /* 127 - 15 + 1 */
        while (!(m & 0x400u)) {
            m <<= 1;
            e--;
        }
        return sign | (e << 23) | ((m & 0x3FFu) << 13);
    }
    return sign | ((e + 112) << 23) | (m << 13);
}

/* float32 -> binary16, round to nearest even; overflow gives infinity; NaN gives the quiet NaN
 * 0x7E00 with the sign. */
static inline uint16_t db_ref_f32_to_f16(uint32_t b)
{
    uint32_t sign = (b >> 16) & 0x8000u, a = b & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); /* >= 65520 rounds to inf */
    if (a < 0x38800000u) {                                   /* below 2^-14: subnormal half or zero */
        if (a < 0x33000000u) return (uint16_t)sign;          /* <= 2^-25 rounds to 0 (tie to even) */
        uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126 - e; /* value = m * 2^(e-150); half ulp = 2^-24 -> m >> (126-e) */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t q = ((a >> 13) - (112u << 10)), rem = a & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

static inline uint32_t db_ref_bf16_to_f32(uint16_t h) { return (uint32_t)h << 16; }

/* float32 -> bf16: upper half with round to nearest even; NaN stays NaN, quiet. */
static inline uint16_t db_ref_f32_to_bf16(uint32_t b)
{
    if (db_is_nan32(b)) return (uint16_t)((b >> 16) | 0x40u);
    return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

/* float32 multiply, correctly rounded (the host FPU does that for finite operands; subnormals
 * are not flushed in C on the platforms we build for), with the NaN rules above made explicit. */
static inline uint32_t db_mul32(uint32_t a, uint32_t b)
{
    if (db_is_nan32(a)) return a | 0x00400000u;
    if (db_is_nan32(b)) return b | 0x00400000u;
    if ((db_is_inf32(a) && (b & 0x7FFFFFFFu) == 0) || (db_is_inf32(b) && (a & 0x7FFFFFFFu) == 0))
        return DB_REF_DEFAULT_NAN;
    volatile float r = db_f32(a) * db_f32(b);
    return db_bits(r);
}

/* float32 divide, correctly rounded; d is finite and nonzero here (keras_cv's percent). */
static inline uint32_t db_div32(uint32_t a, uint32_t d)
{
    if (db_is_nan32(a)) return a | 0x00400000u;
    volatile float r = db_f32(a) / db_f32(d);
    return db_bits(r);
}

#endif
