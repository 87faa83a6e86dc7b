/* smalljob.h: the small-job threshold of dropblockd, measured at start-up: below it an "auto"
 * job runs on the built-in CPU backend (inline on the loop thread when it is idle), above it on
 * the default device. The choice from the timings is a pure function, so that it can be tested
 * with made-up timings (tests/test_smalljob.c). */
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

#endif
