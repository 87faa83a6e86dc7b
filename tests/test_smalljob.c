/* test_smalljob: dropblockd's small-job threshold (daemon/smalljob.c) from made-up timing
 * ladders: the crossover where the built-in CPU backend stops being at least as fast as the
 * default device. Each expectation is worked out by hand from the ladder beside it. */
#include <math.h>
#include <stdio.h>

#include "smalljob.h"

static int passed, failed;

#define CHECK_EQ(got, want, what) do { \
        unsigned long long g_ = (got), w_ = (want); \
        if (g_ == w_) passed++; \
        else { failed++; printf("FAIL %s: %s: got %llu, want %llu\n", __func__, what, g_, w_); } \
    } while (0)

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

static void test_the_cpu_losing_the_first_rung_gives_zero(void)
{
    struct sj_rung r[] = {{64, 30, 20}, {256, 40, 21}};
    CHECK_EQ(sj_choose(r, N(r)), 0, "device faster from the smallest job on");
}

static void test_the_cpu_winning_every_rung_gives_the_largest_rung(void)
{
    struct sj_rung r[] = {{64, 1, 40}, {1024, 2, 45}, {16384, 20, 60}};
    CHECK_EQ(sj_choose(r, N(r)), 16384, "no extrapolation past the ladder");
}

static void test_the_crossover_is_interpolated_between_the_rungs(void)
{
    /* differences (device - CPU): +100 at 1000 bytes, -100 at 3000: zero halfway, at 2000 */
    struct sj_rung r[] = {{100, 1, 50}, {1000, 100, 200}, {3000, 400, 300}};
    CHECK_EQ(sj_choose(r, N(r)), 2000, "halfway");
    /* +30 at 4096, -90 at 16384: a quarter of the way, 4096 + 3072 */
    struct sj_rung q[] = {{4096, 70, 100}, {16384, 290, 200}};
    CHECK_EQ(sj_choose(q, N(q)), 7168, "a quarter of the way");
}

static void test_a_tie_counts_for_the_cpu(void)
{
    /* equal at 1024 (difference 0): the crossover is right there */
    struct sj_rung r[] = {{256, 10, 10}, {1024, 50, 50}, {4096, 200, 100}};
    CHECK_EQ(sj_choose(r, N(r)), 1024, "tie at the rung below the loss");
}

static void test_the_threshold_stays_below_the_rung_the_cpu_loses(void)
{
    /* +1e-9 then -1e9: the line crosses a hair above 1000; never at or past 2000 */
    struct sj_rung r[] = {{1000, 10, 10.000000001}, {2000, 1e9, 1}};
    unsigned long long t = sj_choose(r, N(r));
    CHECK_EQ(t >= 1000 && t < 2000, 1, "within [1000, 2000)");
}

static void test_the_first_crossing_counts(void)
{
    /* the CPU wins again at 65536 (noise): larger jobs still go to the device from 8192 */
    struct sj_rung r[] = {{1024, 10, 100}, {4096, 40, 100}, {16384, 160, 100}, {65536, 90, 100}};
    /* +60 at 4096, -60 at 16384: 4096 + 6144 */
    CHECK_EQ(sj_choose(r, N(r)), 10240, "crossing between 4096 and 16384");
}

static void test_an_unmeasured_rung_ends_the_ladder(void)
{
    struct sj_rung r[] = {{64, 1, 40}, {1024, 2, 45}, {16384, -1, 60}, {65536, 500, 100}};
    CHECK_EQ(sj_choose(r, N(r)), 1024, "the last rung measured that the CPU won");
    struct sj_rung q[] = {{64, 1, NAN}, {1024, 2, 45}};
    CHECK_EQ(sj_choose(q, N(q)), 0, "a NaN timing is not a measurement");
}

static void test_an_empty_ladder_gives_zero(void)
{
    CHECK_EQ(sj_choose(NULL, 0), 0, "nothing measured");
}

int main(void)
{
    test_the_cpu_losing_the_first_rung_gives_zero();
    test_the_cpu_winning_every_rung_gives_the_largest_rung();
    test_the_crossover_is_interpolated_between_the_rungs();
    test_a_tie_counts_for_the_cpu();
    test_the_threshold_stays_below_the_rung_the_cpu_loses();
    test_the_first_crossing_counts();
    test_an_unmeasured_rung_ends_the_ladder();
    test_an_empty_ladder_gives_zero();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
