/* philox_simd.h: the CPU backend's candidate words (shaders/db_math.h, db_fire_batch as
 * philox_simd_batch.h provides it) in explicit SIMD: Philox4x32-10 on DB_SIMD_BATCH counters at
 * a time in AVX-512F or AVX2 vectors, or one block at a time where neither runs (or off x86-64).
 *
 * db_philox_fire runs the counters base + blk[l] for the n queued blocks (1 <= n <=
 * DB_SIMD_BATCH; or, where run is not DB_NO_RUN, base + run + l, blk unread) under key (k0, k1)
 * and sets fired[t / 32] bit t % 32 for t = 4 l + k where word k of block l fires: (word & wmask)
 * < thr, or always when all; the other bits (and blocks from n on) are 0. Queued blocks are
 * ascending. Bit for bit what the portable db_fire_batch gives, on every path.
 *
 * The path is chosen once a process, at its first use: DROPBLOCK_CPU_SIMD=avx512|avx2|scalar
 * forces one (the tests run each; a path the CPU lacks falls back to the next below it),
 * otherwise the best the CPU has (__builtin_cpu_supports; valgrind hides AVX-512). The AVX2 path
 * asks for F16C too (the CPU backend's apply, apply_simd.h, takes the same path). */
#ifndef DROPBLOCK_ENGINE_PHILOX_SIMD_H
#define DROPBLOCK_ENGINE_PHILOX_SIMD_H

#include <stdint.h>

#define DB_SIMD_BATCH 48

enum db_simd_path { DB_SIMD_SCALAR, DB_SIMD_AVX2, DB_SIMD_AVX512, DB_SIMD_PATHS };

void db_philox_fire(const uint64_t *blk, uint64_t run, uint32_t n, const uint32_t *base, uint32_t k0, uint32_t k1,
                    uint32_t wmask, uint32_t thr, uint32_t all, uint32_t *fired);

/* the same on a given path (the caller checks db_simd_supported) */
void db_philox_fire_on(enum db_simd_path path, const uint64_t *blk, uint64_t run, uint32_t n, const uint32_t *base,
                       uint32_t k0, uint32_t k1, uint32_t wmask, uint32_t thr, uint32_t all, uint32_t *fired);

/* 1 if this CPU (and build) runs the path */
int db_simd_supported(enum db_simd_path path);
/* the path for a DROPBLOCK_CPU_SIMD value (NULL, empty or unknown: the best supported) */
enum db_simd_path db_simd_choose(const char *want);
/* the path db_philox_fire takes in this process */
enum db_simd_path db_simd_path(void);
const char *db_simd_name(enum db_simd_path path);

#endif
