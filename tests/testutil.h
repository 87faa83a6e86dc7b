/* testutil.h: what the C tests that drive a real dropblockd share: a clock, a small RNG, and
 * starting the daemon (behind $DROPBLOCK_DAEMON_WRAPPER, e.g. valgrind) until it listens. */
#ifndef DROPBLOCK_TESTUTIL_H
#define DROPBLOCK_TESTUTIL_H

#include <stdint.h>
#include <sys/types.h>

double tu_now_s(void);
uint64_t tu_rng_next(uint64_t *s); /* xorshift64; *s must not be 0 */

/* Runs `[$DROPBLOCK_DAEMON_WRAPPER] exe --socket sock --log-level warn --cache-dir cache_dir
 * extra...` and waits up to timeout_s for a plain connect to succeed. The pid, or -1 after
 * printing "FAIL <who>: ..." (the daemon exited or never listened; it is killed then). */
pid_t tu_daemon_start(const char *who, const char *exe, const char *sock, const char *cache_dir,
                      const char *const *extra, double timeout_s);

#endif
