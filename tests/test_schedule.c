/* test_schedule: the drop-rate schedules of dropblock.h.
 *
 * Known bit patterns, argument checks, and the linear ramp against an independent oracle: exact
 * 128-bit integer division scaled to a 24-bit quotient and rounded half to even by comparing the
 * remainder (the library instead divides bit by bit and lets a sticky bit decide one float
 * conversion). Prints "test_schedule: N passed, M failed". */
#include <dropblock/dropblock.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

static int passed, failed;

static uint32_t bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static float from_bits(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static uint32_t linear_bits(float t, uint64_t s, uint64_t n)
{
    float r = -1.0f;
    int rc = dropblock_schedule_linear(t, s, n, &r);
    return rc ? 0xdeadbeefu : bits(r);
}

static void test_linear_known_values(void)
{
    const float t = 0.1f; /* 0x3dcccccd */
    CHECK(linear_bits(t, 0, 100) == 0, "step 0: 0x%08x", linear_bits(t, 0, 100));
    CHECK(linear_bits(t, 100, 100) == 0x3dcccccdu, "step N: 0x%08x", linear_bits(t, 100, 100));
    CHECK(linear_bits(t, 101, 100) == 0x3dcccccdu, "past N: 0x%08x", linear_bits(t, 101, 100));
    CHECK(linear_bits(t, UINT64_MAX, 100) == 0x3dcccccdu, "step 2^64-1: 0x%08x", linear_bits(t, UINT64_MAX, 100));
    CHECK(linear_bits(t, 0, 0) == 0x3dcccccdu, "N = 0: the target at once: 0x%08x", linear_bits(t, 0, 0));
    CHECK(linear_bits(t, 7, 0) == 0x3dcccccdu, "N = 0, step 7: 0x%08x", linear_bits(t, 7, 0));
    /* halving is exact: the exponent drops by one */
    CHECK(linear_bits(t, 50, 100) == 0x3d4ccccdu, "half way: 0x%08x", linear_bits(t, 50, 100));
    CHECK(linear_bits(t, 25, 100) == 0x3ccccccdu, "a quarter: 0x%08x", linear_bits(t, 25, 100));
    /* 1/3 rounds up (0x3eaaaaab), 2/3 rounds up (0x3f2aaaab) */
    CHECK(linear_bits(1.0f, 1, 3) == 0x3eaaaaabu, "1/3: 0x%08x", linear_bits(1.0f, 1, 3));
    CHECK(linear_bits(1.0f, 2, 3) == 0x3f2aaaabu, "2/3: 0x%08x", linear_bits(1.0f, 2, 3));
    /* 0.1f * 1/10: the exact 0.01000000014901161... is nearer 0x3c23d70a than 0x3c23d70b */
    CHECK(linear_bits(t, 1, 10) == 0x3c23d70au, "0.1f/10: 0x%08x", linear_bits(t, 1, 10));
    CHECK(linear_bits(1.0f, 1, 10) == 0x3dcccccdu, "1/10: 0x%08x", linear_bits(1.0f, 1, 10));
    /* target 0 stays 0; target 1 ramps through k/N */
    CHECK(linear_bits(0.0f, 5, 10) == 0, "target 0: 0x%08x", linear_bits(0.0f, 5, 10));
    CHECK(linear_bits(1.0f, 5, 10) == 0x3f000000u, "1 * 5/10: 0x%08x", linear_bits(1.0f, 5, 10));
    /* 64-bit steps: 1/(2^64-1) is 2^-64 (1 + 2^-64 + ...), which rounds to 2^-64 */
    CHECK(linear_bits(1.0f, 1, UINT64_MAX) == 0x1f800000u, "1/(2^64-1): 0x%08x", linear_bits(1.0f, 1, UINT64_MAX));
    CHECK(linear_bits(t, UINT64_MAX - 1, UINT64_MAX) == 0x3dcccccdu, "(2^64-2)/(2^64-1): 0x%08x",
          linear_bits(t, UINT64_MAX - 1, UINT64_MAX));
    CHECK(linear_bits(t, UINT64_C(1) << 63, UINT64_MAX - 1) == 0x3d4ccccdu, "2^63/(2^64-2): 0x%08x",
          linear_bits(t, UINT64_C(1) << 63, UINT64_MAX - 1));
    /* subnormal results round once: 2^-149 * 1/2 is a tie, to even (0); * 3/4 rounds up to 2^-149 */
    const float tiny = from_bits(1); /* 2^-149 */
    CHECK(linear_bits(tiny, 1, 2) == 0, "2^-149 / 2: 0x%08x", linear_bits(tiny, 1, 2));
    CHECK(linear_bits(tiny, 3, 4) == 1, "2^-149 * 3/4: 0x%08x", linear_bits(tiny, 3, 4));
    CHECK(linear_bits(from_bits(3), 1, 2) == 2, "3 * 2^-150 (tie): 0x%08x", linear_bits(from_bits(3), 1, 2));
    CHECK(linear_bits(from_bits(0x00800000u), 1, 3) == 0x002aaaabu, "2^-126 / 3: 0x%08x",
          linear_bits(from_bits(0x00800000u), 1, 3));
    /* halving keeps every bit of the target */
    CHECK(linear_bits(from_bits(0x3f7fffffu), 1, 2) == 0x3effffffu, "(1-2^-24)/2: 0x%08x",
          linear_bits(from_bits(0x3f7fffffu), 1, 2));
}

/* Monotone in the step, never above the target, and exact at the steps where k/N is a dyadic
 * fraction. */
static void test_linear_monotone(void)
{
    const float targets[] = {0.1f, 0.25f, 0.3f, 1.0f, 1e-7f};
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        float prev = 0.0f;
        int bad = 0;
        for (uint64_t s = 0; s <= 1000; s++) {
            float r;
            if (dropblock_schedule_linear(targets[i], s, 1000, &r) || r < prev || r > targets[i]) bad++;
            prev = r;
        }
        CHECK(bad == 0, "target %g: %d steps out of order or above the target", (double)targets[i], bad);
        CHECK(prev == targets[i], "target %g: step N gives %g", (double)targets[i], (double)prev);
    }
}

#if defined(__SIZEOF_INT128__)
__extension__ typedef unsigned __int128 u128;

/* RN32(t * s / n) for a normal t, 0 < s < n < 2^40 and a normal result. */
static float oracle(float t, uint64_t s, uint64_t n)
{
    uint32_t b = bits(t);
    uint64_t m = (b & 0x7fffffu) | 0x800000u;
    int e = (int)((b >> 23) & 0xff) - 150;
    u128 a = (u128)m * s, d = n; /* a < 2^64 */
    int sh = 0;
    while (a < (d << 23)) {
        a <<= 1;
        sh++;
    }
    while (a >= (d << 24)) {
        d <<= 1;
        sh--;
    }
    u128 q = a / d, r = a % d;
    if (2 * r > d || (2 * r == d && (q & 1))) q++;
    return ldexpf((float)(uint64_t)q, e - sh);
}

static uint64_t rng = UINT64_C(0x9e3779b97f4a7c15);
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_linear_against_oracle(void)
{
    int bad = 0, n_cases = 0;
    for (int i = 0; i < 300000; i++) {
        /* targets in [2^-40, 1], step counts of 1 to 40 bits */
        float t = i % 3 == 0 ? (float)((double)(next() >> 40) / (double)(1 << 24))
                             : ldexpf(1.0f + (float)(next() >> 41) / (float)(1 << 23), -(int)(next() % 40));
        if (t > 1.0f) t = 1.0f;
        if (t < 0x1p-40f) continue;
        uint64_t n = (next() >> (24 + next() % 40)) + 2, s = next() % n;
        if (s == 0) s = 1;
        uint32_t got = linear_bits(t, s, n), want = bits(oracle(t, s, n));
        n_cases++;
        if (got != want && bad++ < 5)
            printf("  t 0x%08x s %llu n %llu: got 0x%08x, want 0x%08x\n", bits(t), (unsigned long long)s,
                   (unsigned long long)n, got, want);
    }
    CHECK(bad == 0, "%d of %d random ramps differ from the exact rounding", bad, n_cases);

    /* near-ties: s/n = (2k+1)/2^j makes exact ties for targets with few bits */
    bad = 0;
    for (uint64_t k = 1; k < 2000; k++) {
        float t = from_bits(0x3f000000u + (uint32_t)k * 977u); /* [0.5, 1) */
        for (int j = 1; j < 30; j++) {
            uint64_t n = UINT64_C(1) << j, s = (2 * k + 1) % n;
            if (s == 0) continue;
            if (linear_bits(t, s, n) != bits(oracle(t, s, n))) bad++;
            if (linear_bits(t, s, n + 1) != bits(oracle(t, s, n + 1))) bad++;
        }
    }
    CHECK(bad == 0, "%d dyadic ramps differ from the exact rounding", bad);
}
#endif

static void test_linear_rejects(void)
{
    float r = 0.0f;
    CHECK(dropblock_schedule_linear(-0.1f, 1, 10, &r) == DROPBLOCK_EINVAL && isnan(r), "rate -0.1");
    CHECK(dropblock_schedule_linear(1.5f, 1, 10, &r) == DROPBLOCK_EINVAL && isnan(r), "rate 1.5");
    CHECK(dropblock_schedule_linear(NAN, 1, 10, &r) == DROPBLOCK_EINVAL, "rate NaN");
    CHECK(dropblock_schedule_linear(INFINITY, 1, 10, &r) == DROPBLOCK_EINVAL, "rate inf");
    CHECK(dropblock_schedule_linear(0.1f, 1, 10, NULL) == DROPBLOCK_EINVAL, "NULL result");
    CHECK(dropblock_schedule_linear(1.0f, 1, 10, &r) == 0 && dropblock_schedule_linear(0.0f, 1, 10, &r) == 0,
          "the bounds 0 and 1 are valid");
    CHECK(dropblock_schedule_linear(-0.0f, 3, 10, &r) == 0 && r == 0.0f, "-0 is a valid rate");
}

static void test_group(void)
{
    float r;
    const float t = 0.1f;
    CHECK(dropblock_schedule_group(t, 4, &r) == 0 && bits(r) == 0x3dcccccdu, "group 4: full rate, 0x%08x", bits(r));
    CHECK(dropblock_schedule_group(t, 3, &r) == 0 && bits(r) == 0x3ccccccdu, "group 3: a quarter, 0x%08x", bits(r));
    CHECK(dropblock_schedule_group(t, 2, &r) == 0 && bits(r) == 0x3bcccccdu, "group 2: 1/16, 0x%08x", bits(r));
    CHECK(dropblock_schedule_group(t, 1, &r) == 0 && bits(r) == 0x3acccccdu, "group 1: 1/64, 0x%08x", bits(r));
    CHECK(dropblock_schedule_group(1.0f, 1, &r) == 0 && r == 0.015625f, "1/64: %g", (double)r);
    CHECK(dropblock_schedule_group(0.0f, 2, &r) == 0 && r == 0.0f, "0 stays 0");
    /* subnormal: 2^-149 * 3 / 4 = 0.75 * 2^-149 rounds to 2^-149 */
    CHECK(dropblock_schedule_group(from_bits(3), 3, &r) == 0 && bits(r) == 1, "subnormal: 0x%08x", bits(r));
    for (int g = -1; g <= 5; g += 1) {
        if (g >= 1 && g <= 4) continue;
        r = 0.0f;
        CHECK(dropblock_schedule_group(t, g, &r) == DROPBLOCK_EINVAL && isnan(r), "group %d accepted", g);
    }
    CHECK(dropblock_schedule_group(1.01f, 4, &r) == DROPBLOCK_EINVAL, "rate 1.01 accepted");
    CHECK(dropblock_schedule_group(-1e-30f, 4, &r) == DROPBLOCK_EINVAL, "rate -1e-30 accepted");
    CHECK(dropblock_schedule_group(NAN, 4, &r) == DROPBLOCK_EINVAL, "rate NaN accepted");
    CHECK(dropblock_schedule_group(t, 4, NULL) == DROPBLOCK_EINVAL, "NULL result accepted");
}

static void test_rate(void)
{
    /* the ramp, then the group: 0.1 at half way in group 3 is 0.1 / 2 / 4 */
    CHECK(bits(dropblock_schedule_rate(0.1f, 50, 100, 3)) == 0x3c4ccccdu, "0.1, 50/100, group 3: 0x%08x",
          bits(dropblock_schedule_rate(0.1f, 50, 100, 3)));
    CHECK(bits(dropblock_schedule_rate(0.1f, 1, 3, 0)) == linear_bits(0.1f, 1, 3), "group 0 is the ramp alone");
    CHECK(bits(dropblock_schedule_rate(0.1f, 0, 0, 4)) == 0x3dcccccdu, "no ramp, group 4");
    CHECK(dropblock_schedule_rate(0.1f, 0, 100, 1) == 0.0f, "step 0, group 1");
    CHECK(isnan(dropblock_schedule_rate(0.1f, 1, 10, 5)), "group 5 gives NaN");
    CHECK(isnan(dropblock_schedule_rate(0.1f, 1, 10, -1)), "group -1 gives NaN");
    CHECK(isnan(dropblock_schedule_rate(2.0f, 1, 10, 0)), "rate 2 gives NaN");
    /* every valid output is a valid request rate */
    dropblock_params p;
    dropblock_params_init(&p);
    p.shape[0] = p.shape[1] = 1;
    p.shape[2] = p.shape[3] = 8;
    p.rate = dropblock_schedule_rate(1.0f, 3, 7, 2);
    CHECK(dropblock_params_validate(&p, NULL, 0) == 0, "a schedule's rate fails validation");
    p.rate = dropblock_schedule_rate(1.0f, 3, 7, 9);
    CHECK(dropblock_params_validate(&p, NULL, 0) == DROPBLOCK_EINVAL, "the NaN of a bad schedule passes validation");
}

int main(void)
{
    test_linear_known_values();
    test_linear_monotone();
#if defined(__SIZEOF_INT128__)
    test_linear_against_oracle();
#else
    printf("note: no 128-bit integers in this compiler; the oracle comparison is skipped\n");
#endif
    test_linear_rejects();
    test_group();
    test_rate();
    printf("test_schedule: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
