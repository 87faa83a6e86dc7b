/* test_philox_simd: the CPU backend's candidate words in SIMD (engine/philox_simd.h) equal
 * core's Philox4x32-10 (core/philox.h) fire bit for fire bit on every path this CPU runs
 * (AVX-512F, AVX2, scalar): runs and queues of 1 to DB_SIMD_BATCH blocks, counters whose upper
 * words change inside a batch (carries out of each word) and ones that share them, thresholds
 * that fire nothing, some, or everything, the keras_cv word mask, and "all". Also how
 * DROPBLOCK_CPU_SIMD chooses the path. Prints "test_philox_simd: N passed, M failed". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "philox.h"
#include "philox_simd.h"
#include "check.h"

#define NO_RUN UINT64_MAX
#define NW (DB_SIMD_BATCH / 8)

static int passed, failed;

static uint64_t rng = 0x9E3779B97F4A7C15u;

static uint64_t next(void) /* splitmix64 */
{
    uint64_t z = (rng += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

/* the fire set from the reference: bit 4 l + k of word (4 l + k) / 32 */
static void expected(const uint64_t *blk, uint32_t n, const uint32_t base[4], const uint32_t key[2], uint32_t wmask,
                     uint32_t thr, int all, uint32_t want[NW])
{
    memset(want, 0, NW * 4);
    for (uint32_t l = 0; l < n; l++) {
        uint32_t ctr[4], w[4];
        db_ref_ctr_add(base, blk[l], ctr);
        db_philox4x32_10(ctr, key, w);
        for (uint32_t k = 0; k < 4; k++)
            if (all || (w[k] & wmask) < thr) want[(4 * l + k) / 32] |= 1u << ((4 * l + k) % 32);
    }
}

/* one batch on one path, as a run (if its blocks are consecutive) and as a queue */
static int one(enum db_simd_path path, const uint64_t *blk, uint32_t n, const uint32_t base[4], const uint32_t key[2],
               uint32_t wmask, uint32_t thr, int all, const char *what)
{
    uint32_t want[NW], got[NW];
    expected(blk, n, base, key, wmask, thr, all, want);
    int consecutive = 1, ok = 1;
    for (uint32_t l = 1; l < n; l++) consecutive &= blk[l] == blk[0] + l;
    for (int as_run = 0; as_run <= consecutive; as_run++) {
        /* a queue's entries past n hold garbage, as the mask pass leaves them */
        uint64_t q[DB_SIMD_BATCH];
        for (uint32_t l = 0; l < DB_SIMD_BATCH; l++) q[l] = l < n ? blk[l] : next();
        memset(got, 0xA5, sizeof got);
        db_philox_fire_on(path, q, as_run ? blk[0] : NO_RUN, n, base, key[0], key[1], wmask, thr, (uint32_t)all, got);
        if (memcmp(got, want, sizeof want)) {
            ok = 0;
            printf("  %s %s %s: n %u base %08x %08x %08x %08x key %08x %08x wmask %08x thr %08x all %d first %llu\n",
                   db_simd_name(path), what, as_run ? "run" : "queue", n, base[0], base[1], base[2], base[3], key[0],
                   key[1], wmask, thr, all, (unsigned long long)blk[0]);
            for (int i = 0; i < NW; i++) printf("    word %d: got %08x want %08x\n", i, got[i], want[i]);
        }
    }
    return ok;
}

static void test_path(enum db_simd_path path)
{
    static const uint32_t thrs[] = {0u, 1u, 0x00A00000u, 0x08000000u, 0x80000000u, 0xFFFFFFFFu};
    int bad = 0, runs = 0;
    for (int it = 0; it < 3000 && bad < 5; it++) {
        uint32_t n = it < DB_SIMD_BATCH ? (uint32_t)it + 1 : 1 + (uint32_t)(next() % DB_SIMD_BATCH);
        uint32_t base[4] = {(uint32_t)next(), (uint32_t)next(), (uint32_t)next(), (uint32_t)next()};
        uint32_t key[2] = {(uint32_t)next(), (uint32_t)next()};
        /* counters near a carry out of word 0, 1 or 2 (the shortcut's test), or not */
        switch (it % 4) {
        case 1: base[0] = 0xFFFFFFFFu - (uint32_t)(next() % 64); break;
        case 2:
            base[0] = 0xFFFFFFF0u;
            base[1] = 0xFFFFFFFFu;
            break;
        case 3:
            base[0] = 0xFFFFFFE0u;
            base[1] = 0xFFFFFFFFu;
            base[2] = 0xFFFFFFFFu;
            break;
        }
        uint64_t blk[DB_SIMD_BATCH], b = it % 8 == 7 ? UINT64_MAX - 1000 + next() % 100 : next() >> (next() % 64);
        int gaps = it % 3 == 2;
        for (uint32_t l = 0; l < n; l++) {
            blk[l] = b;
            b += gaps ? 1 + next() % 9 : 1;
        }
        uint32_t thr = thrs[it % 6], wmask = it % 5 == 4 ? 0x7FFFFFu : 0xFFFFFFFFu;
        if (it % 7 == 3) thr = (uint32_t)next();
        int all = it % 11 == 10;
        bad += !one(path, blk, n, base, key, wmask, thr, all, gaps ? "gaps" : "consecutive");
        runs++;
    }
    CHECK(bad == 0, "%s: %d of %d batches differ from core's Philox", db_simd_name(path), bad, runs);
}

static void test_choice(void)
{
    enum db_simd_path best = DB_SIMD_SCALAR;
    for (int p = 0; p < DB_SIMD_PATHS; p++)
        if (db_simd_supported((enum db_simd_path)p)) best = (enum db_simd_path)p;
    CHECK(db_simd_supported(DB_SIMD_SCALAR), "scalar is always supported");
    CHECK(db_simd_choose(NULL) == best, "no choice: the best supported (%s)", db_simd_name(best));
    CHECK(db_simd_choose("bogus") == best, "an unknown name: the best supported");
    CHECK(db_simd_choose("scalar") == DB_SIMD_SCALAR, "scalar forced");
    enum db_simd_path a2 = db_simd_choose("avx2"), a5 = db_simd_choose("avx512");
    CHECK(a2 == (db_simd_supported(DB_SIMD_AVX2) ? DB_SIMD_AVX2 : DB_SIMD_SCALAR), "avx2 forced: %s", db_simd_name(a2));
    CHECK(a5 == best, "avx512 forced: the best at or below it, %s", db_simd_name(a5));
    CHECK(db_simd_path() == db_simd_choose(getenv("DROPBLOCK_CPU_SIMD")),
          "the process's path follows DROPBLOCK_CPU_SIMD");
}

int main(void)
{
    for (int p = 0; p < DB_SIMD_PATHS; p++) {
        if (!db_simd_supported((enum db_simd_path)p)) {
            printf("path %s: not on this CPU (skipped)\n", db_simd_name((enum db_simd_path)p));
            continue;
        }
        printf("path %s\n", db_simd_name((enum db_simd_path)p));
        test_path((enum db_simd_path)p);
    }
    test_choice();
    printf("test_philox_simd: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
