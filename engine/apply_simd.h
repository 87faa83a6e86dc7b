/* apply_simd.h: the CPU backend's apply pass on its fast groups in AVX-512F or AVX2 vectors
 * (apply_simd.c), bit for bit db_apply_bits's result for compat none, the scale +0 or a
 * normal float >= 1 (db_math.h's fast apply).
 *
 * A group is 32 elements from k (a multiple of 32): element k + l is kept where bit l of
 * mask[k / 32] is set, and takes scales[0], or with per_sample the scale of its sample
 * (e0 + k) / chw, at scales[sample - n0]; samples hold at least 32 elements (db_fast_apply_ok).
 * Each call runs the groups [k, k1), on a thread whose MXCSR is the default (0x1F80: backend_cpu.c
 * sets it in its workers), subnormal inputs included. The path is philox_simd.h's
 * (DROPBLOCK_CPU_SIMD), chosen by backend_cpu.c. */
#ifndef DROPBLOCK_ENGINE_APPLY_SIMD_H
#define DROPBLOCK_ENGINE_APPLY_SIMD_H

#include <stdint.h>

struct db_apply_args {
    const char *in; /* the chunk's elements */
    char *out;
    const uint32_t *mask;   /* kept bits, element k at bit k % 32 of mask[k / 32] */
    const uint32_t *scales; /* float32 bits */
    uint32_t dtype;         /* DB_DTYPE_* */
    int per_sample;
    uint64_t e0, chw, n0; /* per_sample: the chunk's first element, a sample's elements, scales[0]'s sample */
};

/* the builds of apply_simd.c (x86-64 only) */
void db_apply_fast_avx512(const struct db_apply_args *a, uint64_t k, uint64_t k1);
void db_apply_fast_avx2(const struct db_apply_args *a, uint64_t k, uint64_t k1);

#endif
