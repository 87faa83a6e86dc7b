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

/* The threshold from a ladder of rungs in ascending size: the crossover, where the CPU backend
 * stops being at least as fast as the device.
 *   - the CPU loses at the first rung:              0 (never the CPU)
 *   - it wins at rungs 0..k-1 and loses at rung k:  the size where the straight line between the
 *     two rungs' differences (device - CPU) crosses zero, between bytes[k-1] and bytes[k]
 *   - it wins at every rung:                        the largest rung's bytes (never extrapolated)
 * The first crossing counts (a rung that the CPU wins again above it is noise or a cache
 * effect, not a reason to send larger jobs to the CPU). A rung that could not be measured ends
 * the ladder there; an empty ladder gives 0. */
uint64_t sj_choose(const struct sj_rung *r, int n);

#endif
