/* test_smalljob: dropblockd's small-job threshold (daemon/smalljob.c) from made-up timing
 * ladders: the crossover where the built-in CPU backend stops being at least as fast as the
 * default device, never below the largest size the CPU won, and the documented default (65536)
 * for a ladder cut short. Each expectation is worked out by hand from the ladder beside it. */
#include <math.h>
#include <stdio.h>

#include "smalljob.h"

static int passed, failed;

#define CHECK_EQ(got, want, what) \
    do { \
        unsigned long long g_ = (got), w_ = (want); \
        if (g_ == w_) passed++; \
        else { \
            failed++; \
            printf("FAIL %s: %s: got %llu, want %llu\n", __func__, what, g_, w_); \
        } \
    } while (0)

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))
/* the daemon's full ladder (JOBS_SMALL_RUNGS) and documented default (docs/protocol.md) */
#define FULL 8
#define DEFAULT 65536
/* a complete ladder of the rungs given */
#define CHOOSE(a) sj_choose(a, N(a), N(a), DEFAULT)

static void test_the_cpu_losing_the_first_rung_gives_zero(void)
{
    struct sj_rung r[] = {{64, 30, 20}, {256, 40, 21}};
    CHECK_EQ(CHOOSE(r), 0, "device faster from the smallest job on");
}

static void test_the_cpu_winning_every_rung_gives_the_largest_rung(void)
{
    struct sj_rung r[] = {{64, 1, 40}, {1024, 2, 45}, {16384, 20, 60}};
    CHECK_EQ(CHOOSE(r), 16384, "no extrapolation past the ladder");
}

static void test_the_crossover_is_interpolated_between_the_rungs(void)
{
    /* differences (device - CPU): +100 at 1000 bytes, -100 at 3000: zero halfway, at 2000 */
    struct sj_rung r[] = {{100, 1, 50}, {1000, 100, 200}, {3000, 400, 300}};
    CHECK_EQ(CHOOSE(r), 2000, "halfway");
    /* +30 at 4096, -90 at 16384: a quarter of the way, 4096 + 3072 */
    struct sj_rung q[] = {{4096, 70, 100}, {16384, 290, 200}};
    CHECK_EQ(CHOOSE(q), 7168, "a quarter of the way");
}

static void test_a_tie_counts_for_the_cpu(void)
{
    /* equal at 1024 (difference 0): the crossover is right there */
    struct sj_rung r[] = {{256, 10, 10}, {1024, 50, 50}, {4096, 200, 100}};
    CHECK_EQ(CHOOSE(r), 1024, "tie at the rung below the loss");
}

static void test_the_threshold_stays_below_the_rung_the_cpu_loses(void)
{
    /* +1e-9 then -1e9: the line crosses a hair above 1000; never at or past 2000 */
    struct sj_rung r[] = {{1000, 10, 10.000000001}, {2000, 1e9, 1}};
    unsigned long long t = CHOOSE(r);
    CHECK_EQ(t >= 1000 && t < 2000, 1, "within [1000, 2000)");
}

static void test_the_threshold_is_never_below_the_largest_rung_the_cpu_won(void)
{
    /* the CPU loses 4096 (noise) but wins 16384 again: the crossing above 16384 counts;
     * +60 at 16384, -300 at 65536: a sixth of the way, 16384 + 8192 */
    struct sj_rung r[] = {{1024, 10, 100}, {4096, 140, 100}, {16384, 100, 160}, {65536, 460, 160}};
    CHECK_EQ(CHOOSE(r), 24576, "crossing between 16384 and 65536");
    /* winning the last rung of a full ladder after a loss: that rung */
    struct sj_rung q[] = {{1024, 10, 100}, {4096, 40, 100}, {16384, 160, 100}, {65536, 90, 100}};
    CHECK_EQ(CHOOSE(q), 65536, "the CPU won the largest rung");
}

static void test_a_cold_start_ladder_of_one_rung_falls_back_to_the_default(void)
{
    /* seen at a cold start: "66 B 2/60 us", the ladder cut short by the budget after its first
     * rung (the device's first jobs paid its kernels' compiles); the CPU won, so the line must
     * not be drawn at 66 bytes */
    struct sj_rung r[] = {{66, 2, 60}};
    CHECK_EQ(sj_choose(r, N(r), FULL, DEFAULT), DEFAULT, "cut short after one won rung");
    struct sj_rung q[] = {{66, 1, 40}, {1056, 2, 38}};
    CHECK_EQ(sj_choose(q, N(q), FULL, DEFAULT), DEFAULT, "cut short after two won rungs");
}

static void test_a_ladder_cut_short_keeps_a_larger_won_rung(void)
{
    /* cut short after the CPU won 270336 bytes: never below that */
    struct sj_rung r[] = {{66, 1, 60},     {1056, 2, 40},    {4224, 6, 51},
                          {16896, 24, 69}, {67584, 97, 184}, {270336, 300, 400}};
    CHECK_EQ(sj_choose(r, N(r), FULL, DEFAULT), 270336, "the largest rung the CPU won");
}

static void test_a_rung_lost_under_load_does_not_pull_the_threshold_down(void)
{
    /* seen under load: another process took the core during the CPU's 1056-byte jobs, so the
     * device "won" that rung; the first crossing gave a threshold between 66 and 1056 bytes.
     * The CPU won up to 67584 (+87); it loses 270336 (-327): 67584 + 87/414 of 202752 */
    struct sj_rung r[] = {{66, 2, 60},     {1056, 90, 40},   {4224, 6, 51},
                          {16896, 24, 69}, {67584, 97, 184}, {270336, 422, 95}};
    CHECK_EQ(sj_choose(r, N(r), FULL, DEFAULT), 110191, "crossing between 67584 and 270336");
}

static void test_a_device_faster_from_the_first_rung_gives_zero_even_cut_short(void)
{
    struct sj_rung r[] = {{66, 30, 20}};
    CHECK_EQ(sj_choose(r, N(r), FULL, DEFAULT), 0, "the device won the only rung measured");
}

static void test_an_unmeasured_rung_ends_the_ladder_as_cut_short(void)
{
    struct sj_rung r[] = {{64, 1, 40}, {1024, 2, 45}, {16384, -1, 60}, {65536, 500, 100}};
    CHECK_EQ(CHOOSE(r), DEFAULT, "won up to 1024, then not measured: the default");
    struct sj_rung q[] = {{64, 1, NAN}, {1024, 2, 45}};
    CHECK_EQ(CHOOSE(q), DEFAULT, "a NaN timing is not a measurement: nothing measured");
    /* +40 at 64, -160 at 1024: a fifth of the way, 64 + 192 */
    struct sj_rung u[] = {{64, 1, 41}, {1024, 200, 40}, {16384, NAN, 60}};
    CHECK_EQ(CHOOSE(u), 256, "a crossing found before the unmeasured rung still counts");
}

static void test_an_empty_ladder_gives_the_default(void)
{
    CHECK_EQ(sj_choose(NULL, 0, FULL, DEFAULT), DEFAULT, "nothing measured");
}

int main(void)
{
    test_the_cpu_losing_the_first_rung_gives_zero();
    test_the_cpu_winning_every_rung_gives_the_largest_rung();
    test_the_crossover_is_interpolated_between_the_rungs();
    test_a_tie_counts_for_the_cpu();
    test_the_threshold_stays_below_the_rung_the_cpu_loses();
    test_the_threshold_is_never_below_the_largest_rung_the_cpu_won();
    test_a_cold_start_ladder_of_one_rung_falls_back_to_the_default();
    test_a_ladder_cut_short_keeps_a_larger_won_rung();
    test_a_rung_lost_under_load_does_not_pull_the_threshold_down();
    test_a_device_faster_from_the_first_rung_gives_zero_even_cut_short();
    test_an_unmeasured_rung_ends_the_ladder_as_cut_short();
    test_an_empty_ladder_gives_the_default();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
