/* testutil.c: shared helpers of the C tests that run dropblockd. */
#include "testutil.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

double tu_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

uint64_t tu_rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

int tu_test_start(const char *name, int *slow, char *tmpdir, size_t tmpdir_len, char *sock, size_t sock_len,
                  char *cache, size_t cache_len)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *wrapper = getenv("DROPBLOCK_DAEMON_WRAPPER");
    if (wrapper && *wrapper) *slow = 10;
    if (!getenv("POCL_CACHE_DIR")) {
        char pocl[64];
        snprintf(pocl, sizeof pocl, "/tmp/pocl-%s", name);
        mkdir(pocl, 0700);
        setenv("POCL_CACHE_DIR", pocl, 1);
    }
    snprintf(tmpdir, tmpdir_len, "/tmp/db%s-XXXXXX", name);
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return -1;
    }
    snprintf(sock, sock_len, "%s/d.sock", tmpdir);
    snprintf(cache, cache_len, "%s/cache", tmpdir);
    return 0;
}

pid_t tu_daemon_start(const char *who, const char *exe, const char *sock, const char *cache_dir,
                      const char *const *extra, double timeout_s)
{
    pid_t pid = fork();
    if (pid == 0) {
        const char *argv[96];
        int n = 0;
        static char wrapper[1024];
        const char *w = getenv("DROPBLOCK_DAEMON_WRAPPER");
        snprintf(wrapper, sizeof wrapper, "%s", w ? w : "");
        for (char *save = NULL, *t = strtok_r(wrapper, " ", &save); t && n < 48; t = strtok_r(NULL, " ", &save))
            argv[n++] = t;
        const char *base[] = {exe, "--socket", sock, "--log-level", "warn", "--cache-dir", cache_dir};
        for (size_t i = 0; i < sizeof base / sizeof *base; i++) argv[n++] = base[i];
        for (int i = 0; extra && extra[i] && n < 95; i++) argv[n++] = extra[i];
        argv[n] = NULL;
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "%s: cannot run %s: %s\n", who, argv[0], strerror(errno));
        _exit(127);
    }
    if (pid < 0) {
        printf("FAIL %s: fork: %s\n", who, strerror(errno));
        return -1;
    }
    /* listening: a plain connect succeeds (the daemon binds only once its devices are ready) */
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    for (double t0 = tu_now_s(); tu_now_s() - t0 < timeout_s;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            printf("FAIL %s: dropblockd exited at start (status 0x%x)\n", who, st);
            return -1;
        }
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
        if (fd >= 0) close(fd);
        if (ok) return pid;
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    printf("FAIL %s: dropblockd did not listen on %s within %.0f s\n", who, sock, timeout_s);
    return -1;
}
