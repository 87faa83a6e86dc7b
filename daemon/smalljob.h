/* smalljob.h: the small-job threshold of dropblockd, measured at start-up: below it an "auto"
 * job runs on the built-in CPU backend (inline on the loop thread when it is idle), above it on
 * the default device. The timing runs on the engine (smalljob_measure.c); the choice from the
 * timings is a pure function (smalljob.c), so that it can be tested with made-up timings
 * (tests/test_smalljob.c). */
#ifndef DROPBLOCK_DAEMON_SMALLJOB_H
#define DROPBLOCK_DAEMON_SMALLJOB_H

#include <stdint.h>

/* One rung of the timing ladder: a job of `bytes` (tensor + mask bytes, as jobs_pick counts
 * them) timed on the built-in CPU backend and on the default device, median microseconds; a
 * timing below 0 means the rung could not be measured. */
struct sj_rung {
    uint64_t bytes;
    double cpu_us, dev_us;
};

/* The threshold from a ladder of n rungs in ascending size, of a full ladder of `full` rungs:
 * the crossover, where the CPU backend stops being at least as fast as the device, never below
 * the largest rung the CPU won.
 *   - the CPU loses every rung:                       0 (never the CPU)
 *   - the largest rung it wins is k, and it loses k+1: the size where the straight line between
 *     the two rungs' differences (device - CPU) crosses zero, in [bytes[k], bytes[k+1])
 *   - it wins the last rung of a full ladder:         that rung's bytes (never extrapolated)
 *   - it wins the last rung of a ladder cut short (fewer than `full` rungs, e.g. the time budget
 *     ran out, or a rung could not be measured) with no loss above: fallback, or that rung's
 *     bytes if larger (a ladder that stopped early says nothing about the sizes above it)
 * A rung the CPU loses below one it wins (noise, another process on the cores) does not pull the
 * threshold under the won rung. A rung that could not be measured (a timing below 0 or NaN)
 * ends the ladder there, as cut short; nothing measured at all gives fallback. */
uint64_t sj_choose(const struct sj_rung *r, int n, int full, uint64_t fallback);

/* The documented default threshold (docs/protocol.md, small_jobs): what a ladder cut short or
 * not measured at all falls back to; also the bound on the jobs run inline on the loop thread. */
#define SJ_DEFAULT_BYTES UINT64_C(65536)

/* A measurement's ladder and outcome (jobs_measure_small, jobs.h). */
#define JOBS_SMALL_RUNGS 8
struct jobs_small {
    int cpu, dev; /* the device indices compared (-1: none) */
    int n;        /* rungs measured */
    int reps;     /* timed rounds (the medians' sample size) */
    struct sj_rung ladder[JOBS_SMALL_RUNGS];
    uint64_t bytes; /* the threshold chosen */
    uint64_t elapsed_us;
    int why; /* JOBS_SMALL_*: measured, or why not */
};
enum { JOBS_SMALL_OK, JOBS_SMALL_NOTHING, JOBS_SMALL_FAILED, JOBS_SMALL_LATE };

struct db_engine;

/* Times the ladder on the engine's devices out->cpu (the built-in CPU backend) and out->dev,
 * on the calling thread: jobs of a growing size (JOBS_SMALL_RUNGS at most, 66 bytes to 4.3 MB,
 * each 4x the last). First 5 warm-up pairs per size, size after size, up to one size past the
 * first of the sizes the device wins from there on (and as far as the budget allows); then up
 * to 11 rounds, each running every size once on both (so that other load on the machine weighs
 * on all alike), while rounds fit in budget_us; medians; the threshold is sj_choose's
 * crossover, never below the largest size the CPU won, and at least SJ_DEFAULT_BYTES when the
 * ladder was cut short with the CPU still winning. The device's times are its engine calls,
 * without the hand-off to its worker thread and back that a queued job also pays, so the
 * threshold errs towards the device. 0 with the rest of out filled, or -1 with out->why
 * (JOBS_SMALL_FAILED or JOBS_SMALL_LATE). */
int sj_measure(struct db_engine *e, uint64_t budget_us, struct jobs_small *out);

#endif
