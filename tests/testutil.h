/* testutil.h: what the C tests that drive a real dropblockd share: a clock, a small RNG, their
 * start (folders, socket path), and starting the daemon (behind $DROPBLOCK_DAEMON_WRAPPER, e.g.
 * valgrind) until it listens. */
#ifndef DROPBLOCK_TESTUTIL_H
#define DROPBLOCK_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

double tu_now_s(void);
uint64_t tu_rng_next(uint64_t *s); /* xorshift64; *s must not be 0 */

/* The start of a test that drives a daemon: stdout line-buffered; *slow 10 under
 * $DROPBLOCK_DAEMON_WRAPPER (valgrind: longer waits), else left as it is; POCL_CACHE_DIR, when
 * unset, /tmp/pocl-<name> (PoCL writes its kernel cache there; never into a home that may be
 * read-only); a fresh folder /tmp/db<name>-XXXXXX into tmpdir, the daemon's socket in it (d.sock)
 * into sock and a kernel cache folder in it (cache) into cache. 0, or -1 after perror. */
int tu_test_start(const char *name, int *slow, char *tmpdir, size_t tmpdir_len, char *sock, size_t sock_len,
                  char *cache, size_t cache_len);

/* Runs `[$DROPBLOCK_DAEMON_WRAPPER] exe --socket sock --log-level warn --cache-dir cache_dir
 * extra...` and waits up to timeout_s for a plain connect to succeed. The pid, or -1 after
 * printing "FAIL <who>: ..." (the daemon exited or never listened; it is killed then). */
pid_t tu_daemon_start(const char *who, const char *exe, const char *sock, const char *cache_dir,
                      const char *const *extra, double timeout_s);

#endif
