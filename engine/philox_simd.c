/* philox_simd.c: db_philox_fire (philox_simd.h) on AVX-512F, AVX2 or one block at a time.
 *
 * The vector paths follow db_math.h's OpenCL CPU branch. AVX-512F: a block per 64-bit lane
 * holding a 32-bit word in its low half, so that each product is one vpmuludq with both halves
 * in place (the multiply reads the low halves; XORs and adds never carry an upper half into a
 * lower one). AVX2, with half the registers: a block per 32-bit lane, two vpmuludq a product
 * (even and odd lanes) and blends. Independent chains of vectors hide the multiplies' latency
 * (no spills in the rounds: check with objdump -d); when the first and the last
 * counter of the batch share their three upper words, so do all (the blocks ascend) and round
 * 1's second product and round 2's first are made once, in scalar; and one test of the least
 * word against thr (the common batch where nothing fires) comes before the exact bits.
 * Written in intrinsics: GCC's generic vectors make vpmullq and scalar inserts of this. */
#include "philox_simd.h"

#include <stdlib.h>
#include <string.h>

#define DB_LANG_C
#include "db_math.h"

#define NW (DB_SIMD_BATCH / 8) /* fire words */
#define MA 0xD2511F53u
#define MB 0xCD9E8D57u
#define WA 0x9E3779B9u
#define WB 0xBB67AE85u

/* one block at a time: the portable db_fire_batch's loop */
static void fire_scalar(const uint64_t *blk, uint64_t run, uint32_t n, const uint32_t *base, uint32_t k0, uint32_t k1,
                        uint32_t wmask, uint32_t thr, uint32_t all, uint32_t *fired)
{
    u32x4 b = MAKE_U32X4(base[0], base[1], base[2], base[3]);
    memset(fired, 0, NW * 4);
    for (uint32_t l = 0; l < n; l++) {
        u32x4 w = db_philox(db_ctr_add(b, run != DB_NO_RUN ? run + l : blk[l]), k0, k1);
        uint32_t f = (all || (w.x & wmask) < thr ? 1u : 0u) | (all || (w.y & wmask) < thr ? 2u : 0u) |
                     (all || (w.z & wmask) < thr ? 4u : 0u) | (all || (w.w & wmask) < thr ? 8u : 0u);
        fired[l / 8] |= f << (4u * (l % 8));
    }
}

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

/* the shared-prefix shortcut's scalar part: counters cf (first) .. cl (last) agree in their
 * upper three words; t[0..3] as db_math.h's CL branch names them */
static int shared_upper(const uint64_t *blk, uint64_t run, uint32_t n, const uint32_t *base, uint32_t ka, uint32_t kb,
                        uint32_t t[4])
{
    u32x4 b = MAKE_U32X4(base[0], base[1], base[2], base[3]);
    u32x4 cf = db_ctr_add(b, run != DB_NO_RUN ? run : blk[0]);
    u32x4 cl = db_ctr_add(b, run != DB_NO_RUN ? run + (n - 1u) : blk[n - 1u]);
    if (cf.y != cl.y || cf.z != cl.z || cf.w != cl.w) return 0;
    uint64_t q1 = (uint64_t)MB * cf.z;
    uint32_t u0 = (uint32_t)(q1 >> 32) ^ cf.y ^ ka; /* round 1: c0 (c1 is lo(q1)) */
    uint64_t q0 = (uint64_t)MA * u0;                /* round 2's first product */
    t[0] = cf.w ^ kb;
    t[1] = (uint32_t)q1 ^ (ka + WA);
    t[2] = (uint32_t)(q0 >> 32) ^ (kb + WB);
    t[3] = (uint32_t)q0;
    return 1;
}

/* lanes [8 q, 8 q + 8) of the n live ones, as 8 bits */
static inline uint32_t live8(uint32_t n, uint32_t q)
{
    return n >= 8u * q + 8u ? 0xFFu : n > 8u * q ? (1u << (n - 8u * q)) - 1u : 0u;
}

/* 8 bits to bits 0, 4, ..., 28 */
static inline uint32_t spread8(uint32_t x)
{
    x = (x | (x << 12)) & 0x000F000Fu;
    x = (x | (x << 6)) & 0x03030303u;
    return (x | (x << 3)) & 0x11111111u;
}

#define AVX512 __attribute__((target("avx512f")))
#define AVX2 __attribute__((target("avx2")))

/* the batch's counters as 64-bit words: padded with the last queued block past n, so that no
 * lane reads an unset queue entry and the shortcut's test holds for every lane */
static const uint64_t *batch_blocks(const uint64_t *blk, uint64_t run, uint32_t n, uint64_t *pad)
{
    if (run != DB_NO_RUN || n == DB_SIMD_BATCH) return blk;
    memcpy(pad, blk, n * sizeof *blk);
    for (uint32_t l = n; l < DB_SIMD_BATCH; l++) pad[l] = blk[n - 1u];
    return pad;
}

/* ---- AVX-512F: six chains of 8 lanes, their 24 words and the constants in 32 registers */
#define C5 6

#define CTR512(b, c0, c1, c2, c3) \
    { \
        __m512i s_ = _mm512_add_epi64(bx, _mm512_and_si512(b, l32)); \
        c0 = s_; \
        s_ = _mm512_add_epi64(_mm512_add_epi64(_mm512_srli_epi64(s_, 32), by), _mm512_srli_epi64(b, 32)); \
        c1 = s_; \
        s_ = _mm512_add_epi64(_mm512_srli_epi64(s_, 32), bz); \
        c2 = s_; \
        c3 = _mm512_add_epi64(_mm512_srli_epi64(s_, 32), bw); \
    }

/* a round: c0 = hi(p1) ^ c1 ^ k0, c1 = p1, c2 = hi(p0) ^ c3 ^ k1, c3 = p0 (one vpternlogq each) */
#define ROUND512(c0, c1, c2, c3, k0, k1) \
    { \
        __m512i p0_ = _mm512_mul_epu32(c0, ma), p1_ = _mm512_mul_epu32(c2, mb); \
        c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1_, 32), c1, k0, 0x96); \
        c1 = p1_; \
        c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0_, 32), c3, k1, 0x96); \
        c3 = p0_; \
    }

AVX512 static void fire_avx512(const uint64_t *blk, uint64_t run, uint32_t n, const uint32_t *base, uint32_t k0,
                               uint32_t k1, uint32_t wmask, uint32_t thr, uint32_t all, uint32_t *fired)
{
    uint64_t pad[DB_SIMD_BATCH];
    const uint64_t *src = batch_blocks(blk, run, n, pad);
    const __m512i l32 = _mm512_set1_epi64(0xFFFFFFFF), ma = _mm512_set1_epi64(MA), mb = _mm512_set1_epi64(MB);
    const __m512i bx = _mm512_set1_epi64(base[0]), by = _mm512_set1_epi64(base[1]);
    const __m512i bz = _mm512_set1_epi64(base[2]), bw = _mm512_set1_epi64(base[3]);
    const __m512i iota = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    uint32_t t[4], ka = k0, kb = k1;
    const int shared = shared_upper(blk, run, n, base, ka, kb, t); /* a call: before the vectors */
    __m512i c0[C5], c1[C5], c2[C5], c3[C5];
#pragma GCC unroll 8
    for (int q = 0; q < C5; q++) {
        __m512i b = run != DB_NO_RUN ? _mm512_add_epi64(_mm512_set1_epi64((long long)(run + 8u * (unsigned)q)), iota)
                                     : _mm512_loadu_si512(src + 8 * q);
        CTR512(b, c0[q], c1[q], c2[q], c3[q])
    }
    if (shared) {
        const __m512i t0 = _mm512_set1_epi64(t[0]), t1 = _mm512_set1_epi64(t[1]);
        const __m512i t2 = _mm512_set1_epi64(t[2]), t3 = _mm512_set1_epi64(t[3]);
#pragma GCC unroll 8
        for (int q = 0; q < C5; q++) {
            __m512i p0 = _mm512_mul_epu32(c0[q], ma); /* round 1: c2 = hi ^ c3 ^ k1, c3 = lo */
            __m512i p1 = _mm512_mul_epu32(_mm512_xor_si512(_mm512_srli_epi64(p0, 32), t0), mb); /* round 2 */
            c0[q] = _mm512_xor_si512(_mm512_srli_epi64(p1, 32), t1);
            c1[q] = p1;
            c2[q] = _mm512_xor_si512(p0, t2);
            c3[q] = t3;
        }
    } else {
#pragma GCC unroll 2
        for (int r = 0; r < 2; r++) {
            const __m512i a = _mm512_set1_epi64(ka + (uint32_t)r * WA), b = _mm512_set1_epi64(kb + (uint32_t)r * WB);
#pragma GCC unroll 8
            for (int q = 0; q < C5; q++) ROUND512(c0[q], c1[q], c2[q], c3[q], a, b)
        }
    }
#pragma GCC unroll 8
    for (int r = 2; r < 10; r++) {
        const __m512i a = _mm512_set1_epi64(ka + (uint32_t)r * WA), b = _mm512_set1_epi64(kb + (uint32_t)r * WB);
#pragma GCC unroll 8
        for (int q = 0; q < C5; q++) ROUND512(c0[q], c1[q], c2[q], c3[q], a, b)
    }
    if (!all && wmask == 0xFFFFFFFFu) {
        /* mostly nothing fires: the least word (the even 32-bit lanes; lanes past n may only
         * make a false alarm) against thr */
        __m512i m = _mm512_min_epu32(_mm512_min_epu32(c0[0], c1[0]), _mm512_min_epu32(c2[0], c3[0]));
#pragma GCC unroll 8
        for (int q = 1; q < C5; q++)
            m = _mm512_min_epu32(m, _mm512_min_epu32(_mm512_min_epu32(c0[q], c1[q]), _mm512_min_epu32(c2[q], c3[q])));
        if (!_mm512_mask_cmplt_epu32_mask(0x5555, m, _mm512_set1_epi32((int)thr))) {
            memset(fired, 0, NW * 4);
            return;
        }
    }
    const __m512i wm = _mm512_set1_epi64(wmask), th = _mm512_set1_epi64(thr);
#pragma GCC unroll 8
    for (int q = 0; q < C5; q++) {
        __mmask8 live = (__mmask8)live8(n, (uint32_t)q);
        uint32_t f0 = live, f1 = live, f2 = live, f3 = live;
        if (!all) {
            f0 = _mm512_mask_cmplt_epu64_mask(live, _mm512_and_si512(c0[q], wm), th);
            f1 = _mm512_mask_cmplt_epu64_mask(live, _mm512_and_si512(c1[q], wm), th);
            f2 = _mm512_mask_cmplt_epu64_mask(live, _mm512_and_si512(c2[q], wm), th);
            f3 = _mm512_mask_cmplt_epu64_mask(live, _mm512_and_si512(c3[q], wm), th);
        }
        fired[q] = spread8(f0) | spread8(f1) << 1 | spread8(f2) << 2 | spread8(f3) << 3;
    }
}

/* ---- AVX2: 8 blocks a vector of 32-bit words (the 8 lanes of 64 bits of AVX-512 do not fit
 * 16 registers): products of the even lanes and of the odd ones (shifted down), their halves
 * put back in place by blends; CP chains of 8 blocks at a time. Lane order in a vector of
 * blocks 8 v .. 8 v + 7: 0, 4, 1, 5, 2, 6, 3, 7 (the packing of two 4-block halves). */
#define CP 3
#define GP (DB_SIMD_BATCH / 8 / CP) /* groups of chains a batch */

/* hi and lo of the 32 x 32-bit products x * m, lane by lane */
#define MUL256(x, m, hi, lo) \
    { \
        __m256i e_ = _mm256_mul_epu32(x, m), o_ = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m); \
        hi = _mm256_blend_epi32(_mm256_srli_epi64(e_, 32), o_, 0xAA); \
        lo = _mm256_blend_epi32(e_, _mm256_slli_epi64(o_, 32), 0xAA); \
    }

#define ROUND256(c0, c1, c2, c3, k0, k1) \
    { \
        __m256i h0_, l0_, h1_, l1_; \
        MUL256(c0, ma, h0_, l0_) \
        MUL256(c2, mb, h1_, l1_) \
        c0 = _mm256_xor_si256(_mm256_xor_si256(h1_, c1), k0); \
        c1 = l1_; \
        c2 = _mm256_xor_si256(_mm256_xor_si256(h0_, c3), k1); \
        c3 = l0_; \
    }

/* 4 blocks' counters base + b, in the low halves of 64-bit lanes */
#define CTR256(b, c0, c1, c2, c3) \
    { \
        __m256i s_ = _mm256_add_epi64(bx, _mm256_and_si256(b, l32)); \
        c0 = s_; \
        s_ = _mm256_add_epi64(_mm256_add_epi64(_mm256_srli_epi64(s_, 32), by), _mm256_srli_epi64(b, 32)); \
        c1 = s_; \
        s_ = _mm256_add_epi64(_mm256_srli_epi64(s_, 32), bz); \
        c2 = s_; \
        c3 = _mm256_add_epi64(_mm256_srli_epi64(s_, 32), bw); \
    }

#define PACK256(a, b) _mm256_blend_epi32(a, _mm256_slli_epi64(b, 32), 0xAA)

/* the 8 lane bits of a vector of blocks (lane order above) in block order */
static inline uint32_t unpack8(uint32_t m)
{
    uint32_t r = 0;
    for (uint32_t i = 0; i < 4; i++) r |= ((m >> (2 * i)) & 1u) << i | ((m >> (2 * i + 1)) & 1u) << (i + 4);
    return r;
}

/* fire_avx2's parts: always inlined, with its target, so GCC makes the one function's code (objdump -d) */
#define AVX2_INLINE AVX2 static inline __attribute__((always_inline))

/* Philox's ten rounds on CP chains; when shared, rounds 1 and 2 from shared_upper's t */
AVX2_INLINE void rounds256(__m256i *c0, __m256i *c1, __m256i *c2, __m256i *c3, int shared, const uint32_t *t,
                           uint32_t ka, uint32_t kb, __m256i ma, __m256i mb)
{
    if (shared) {
        const __m256i t0 = _mm256_set1_epi32((int)t[0]), t1 = _mm256_set1_epi32((int)t[1]);
        const __m256i t2 = _mm256_set1_epi32((int)t[2]), t3 = _mm256_set1_epi32((int)t[3]);
#pragma GCC unroll 4
        for (int q = 0; q < CP; q++) {
            __m256i h0, l0, h1, l1;
            MUL256(c0[q], ma, h0, l0)                    /* round 1: c2 = hi ^ c3 ^ k1, c3 = lo */
            MUL256(_mm256_xor_si256(h0, t0), mb, h1, l1) /* round 2 */
            c0[q] = _mm256_xor_si256(h1, t1);
            c1[q] = l1;
            c2[q] = _mm256_xor_si256(l0, t2);
            c3[q] = t3;
        }
    } else {
#pragma GCC unroll 2
        for (int r = 0; r < 2; r++) {
            const __m256i a = _mm256_set1_epi32((int)(ka + (uint32_t)r * WA));
            const __m256i b = _mm256_set1_epi32((int)(kb + (uint32_t)r * WB));
#pragma GCC unroll 4
            for (int q = 0; q < CP; q++) ROUND256(c0[q], c1[q], c2[q], c3[q], a, b)
        }
    }
#pragma GCC unroll 8
    for (int r = 2; r < 10; r++) {
        const __m256i a = _mm256_set1_epi32((int)(ka + (uint32_t)r * WA));
        const __m256i b = _mm256_set1_epi32((int)(kb + (uint32_t)r * WB));
#pragma GCC unroll 4
        for (int q = 0; q < CP; q++) ROUND256(c0[q], c1[q], c2[q], c3[q], a, b)
    }
}

/* group g's words into w; m, the least word lane by lane so far, and theirs */
AVX2_INLINE __m256i keep256(__m256i (*w)[4], int g, __m256i m, const __m256i *c0, const __m256i *c1, const __m256i *c2,
                            const __m256i *c3)
{
#pragma GCC unroll 4
    for (int q = 0; q < CP; q++) {
        const int v = g * CP + q;
        m = _mm256_min_epu32(m, _mm256_min_epu32(_mm256_min_epu32(c0[q], c1[q]), _mm256_min_epu32(c2[q], c3[q])));
        w[v][0] = c0[q];
        w[v][1] = c1[q];
        w[v][2] = c2[q];
        w[v][3] = c3[q];
    }
    return m;
}

AVX2 static void fire_avx2(const uint64_t *blk, uint64_t run, uint32_t n, const uint32_t *base, uint32_t k0,
                           uint32_t k1, uint32_t wmask, uint32_t thr, uint32_t all, uint32_t *fired)
{
    uint64_t pad[DB_SIMD_BATCH];
    uint32_t t[4], ka = k0, kb = k1;
    const int shared = shared_upper(blk, run, n, base, ka, kb, t); /* a call: before the vectors */
    const uint64_t *src = batch_blocks(blk, run, n, pad);
    const __m256i l32 = _mm256_set1_epi64x(0xFFFFFFFF), ma = _mm256_set1_epi64x(MA), mb = _mm256_set1_epi64x(MB);
    const __m256i bx = _mm256_set1_epi64x(base[0]), by = _mm256_set1_epi64x(base[1]);
    const __m256i bz = _mm256_set1_epi64x(base[2]), bw = _mm256_set1_epi64x(base[3]);
    const __m256i iota = _mm256_set_epi64x(3, 2, 1, 0);
    __m256i w[DB_SIMD_BATCH / 8][4]; /* the words, vector v of blocks 8 v .. 8 v + 7 */
    __m256i m = _mm256_set1_epi32(-1);
    for (int g = 0; g < GP; g++) {
        __m256i c0[CP], c1[CP], c2[CP], c3[CP];
#pragma GCC unroll 4
        for (int q = 0; q < CP; q++) {
            const int v = g * CP + q;
            __m256i ba, bb, a0, a1, a2, a3, b0, b1, b2, b3;
            if (run != DB_NO_RUN) {
                ba = _mm256_add_epi64(_mm256_set1_epi64x((long long)(run + 8u * (unsigned)v)), iota);
                bb = _mm256_add_epi64(ba, _mm256_set1_epi64x(4));
            } else {
                ba = _mm256_loadu_si256((const __m256i *)(src + 8 * v));
                bb = _mm256_loadu_si256((const __m256i *)(src + 8 * v + 4));
            }
            CTR256(ba, a0, a1, a2, a3)
            CTR256(bb, b0, b1, b2, b3)
            c0[q] = PACK256(a0, b0);
            c1[q] = PACK256(a1, b1);
            c2[q] = PACK256(a2, b2);
            c3[q] = PACK256(a3, b3);
        }
        rounds256(c0, c1, c2, c3, shared, t, ka, kb, ma, mb);
        m = keep256(w, g, m, c0, c1, c2, c3);
    }
    memset(fired, 0, NW * 4);
    const __m256i th = _mm256_set1_epi32((int)thr);
    if (!all && wmask == 0xFFFFFFFFu) {
        /* the least word below thr, unsigned: thr > m iff max(m, thr) != m (lanes past n may only
         * make a false alarm) */
        if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32(m, th), m)) == -1) return;
    }
    /* x < thr unsigned, as signed with the sign bits flipped */
    const __m256i wm = _mm256_set1_epi32((int)wmask), sb = _mm256_set1_epi32((int)0x80000000u);
    const __m256i ths = _mm256_xor_si256(th, sb);
    for (uint32_t v = 0; v < DB_SIMD_BATCH / 8 && 8u * v < n; v++) {
        uint32_t live = live8(n, v), f = 0;
        for (int k = 0; k < 4; k++) {
            __m256i x = _mm256_xor_si256(_mm256_and_si256(w[v][k], wm), sb);
            uint32_t fk =
                all ? live
                    : live & unpack8((uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(ths, x))));
            f |= spread8(fk) << k;
        }
        fired[v] = f;
    }
}
#endif

static int supported(enum db_simd_path p)
{
    if (p == DB_SIMD_SCALAR) return 1;
#if defined(__x86_64__)
    __builtin_cpu_init();
    /* AVX2 with F16C (every such CPU has it; the apply's f16 conversions use it) */
    unsigned a, b, c, d;
    if (p == DB_SIMD_AVX2) return __builtin_cpu_supports("avx2") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    if (p == DB_SIMD_AVX512) return __builtin_cpu_supports("avx512f");
#endif
    return 0;
}

int db_simd_supported(enum db_simd_path path) { return path < DB_SIMD_PATHS && supported(path); }

const char *db_simd_name(enum db_simd_path path)
{
    return path == DB_SIMD_AVX512 ? "avx512" : path == DB_SIMD_AVX2 ? "avx2" : "scalar";
}

enum db_simd_path db_simd_choose(const char *want)
{
    enum db_simd_path p = DB_SIMD_AVX512;
    for (int i = 0; want && i < DB_SIMD_PATHS; i++)
        if (!strcmp(want, db_simd_name((enum db_simd_path)i))) p = (enum db_simd_path)i;
    while (p > DB_SIMD_SCALAR && !supported(p)) p--;
    return p;
}

void db_philox_fire_on(enum db_simd_path path, const uint64_t *blk, uint64_t run, uint32_t n, const uint32_t *base,
                       uint32_t k0, uint32_t k1, uint32_t wmask, uint32_t thr, uint32_t all, uint32_t *fired)
{
    if (n == 0u) {
        memset(fired, 0, NW * 4);
        return;
    }
#if defined(__x86_64__)
    if (path == DB_SIMD_AVX512) {
        fire_avx512(blk, run, n, base, k0, k1, wmask, thr, all, fired);
        return;
    }
    if (path == DB_SIMD_AVX2) {
        fire_avx2(blk, run, n, base, k0, k1, wmask, thr, all, fired);
        return;
    }
#else
    (void)path;
#endif
    fire_scalar(blk, run, n, base, k0, k1, wmask, thr, all, fired);
}

/* the process's path, DB_SIMD_PATHS until the first call chooses it (every thread that races
 * there chooses the same) */
static enum db_simd_path chosen = DB_SIMD_PATHS;

enum db_simd_path db_simd_path(void)
{
    enum db_simd_path p = __atomic_load_n(&chosen, __ATOMIC_RELAXED);
    if (p == DB_SIMD_PATHS) {
        p = db_simd_choose(getenv("DROPBLOCK_CPU_SIMD"));
        __atomic_store_n(&chosen, p, __ATOMIC_RELAXED);
    }
    return p;
}

void db_philox_fire(const uint64_t *blk, uint64_t run, uint32_t n, const uint32_t *base, uint32_t k0, uint32_t k1,
                    uint32_t wmask, uint32_t thr, uint32_t all, uint32_t *fired)
{
    db_philox_fire_on(db_simd_path(), blk, run, n, base, k0, k1, wmask, thr, all, fired);
}
