/* test_semaphore_client: the C API of timeline semaphores (dropblock_semaphore_*, dropblock_submit_sync,
 * dropblock_run_sync; issue 13), on the in-process engine and through a daemon. On host memory
 * from dropblock_alloc: a job submitted with a wait and a signal has not run while its wait is
 * unsignalled (dropblock_wait times out, the output untouched, the signal at 0); once the host
 * signals, it completes bit for bit as the CPU reference and its signal is raised. Then: a wait
 * that times out (DROPBLOCK_EUNAVAILABLE, the signal raised all the same), a semaphore of the
 * other handle, an exported semaphore (a descriptor, or DROPBLOCK_EINVAL naming
 * VK_KHR_external_semaphore_fd where the driver has none), signals that do not rise.
 *   test_semaphore_client DROPBLOCKD CACHE_DIR */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "reference.h"
#include "testutil.h"

static int passed, failed;

#define NUMEL (2 * 3 * 16 * 16)
#define POISON 0x7fc0deadu

static int poisoned(const float *y)
{
    for (int i = 0; i < NUMEL; i++) {
        uint32_t b;
        memcpy(&b, &y[i], 4);
        if (b != POISON) return 0;
    }
    return 1;
}

static void poison(float *y)
{
    const uint32_t b = POISON;
    for (int i = 0; i < NUMEL; i++) memcpy(&y[i], &b, 4);
}

static uint64_t value_of(dropblock_t *h, const dropblock_semaphore *s)
{
    uint64_t v = 0;
    char msg[256];
    if (dropblock_semaphore_value(h, s, &v, msg, sizeof msg)) printf("value: %s\n", msg);
    return v;
}

/* 1 where the handle has a device with timeline semaphores */
static int run(dropblock_t *h, const char *label, int remote)
{
    char msg[512];
    dropblock_semaphore a, b;
    if (dropblock_semaphore_create(h, "auto", 0, &a, msg, sizeof msg)) {
        printf("%s: no semaphore (%s)\n", label, msg);
        return 0;
    }
    int rc = dropblock_semaphore_create(h, a.device, 0, &b, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_OK && a.fd == -1 && !a.handle_type[0], "%s: create: %d %s", label, rc, msg);
    float *x = NULL, *y = NULL;
    if (dropblock_alloc(h, NUMEL * 4, (void **)&x) || dropblock_alloc(h, NUMEL * 4, (void **)&y)) {
        CHECK(0, "%s: dropblock_alloc failed", label);
        return 1;
    }
    uint64_t r = 77;
    for (int i = 0; i < NUMEL; i++) x[i] = (float)(tu_rng_next(&r) >> 40) / (float)(1u << 24) - 0.5f;
    dropblock_params p = tu_params(2, 3, 16, 16, 0.25f, 3, 3);
    p.seed = 11;
    const dropblock_ref in = {.ptr = x}, out = {.ptr = y};
    dropblock_sync sync = {.wait = &a, .wait_value = 1, .signal = &b, .signal_value = 1};
    poison(y);
    dropblock_result res;
    if (remote) {
        /* submitted, it waits in the daemon: nothing written, nothing signalled, until signalled */
        dropblock_ticket *t = NULL;
        rc = dropblock_submit_sync(h, &p, in, out, NULL, "auto", &sync, &t);
        CHECK(rc == DROPBLOCK_OK, "%s: submit: %d", label, rc);
        if (rc) return 1;
        rc = dropblock_wait(h, t, 300, &res);
        CHECK(rc == DROPBLOCK_ETIMEDOUT && poisoned(y) && value_of(h, &b) == 0, "%s: the job ran before its wait: %d",
              label, rc);
        rc = dropblock_semaphore_signal(h, &a, 1, msg, sizeof msg);
        CHECK(rc == DROPBLOCK_OK, "%s: signal: %s", label, msg);
        rc = dropblock_wait(h, t, -1, &res);
    } else {
        /* in process the caller waits: signalled first */
        rc = dropblock_semaphore_signal(h, &a, 1, msg, sizeof msg);
        CHECK(rc == DROPBLOCK_OK, "%s: signal: %s", label, msg);
        rc = dropblock_run_sync(h, &p, in, out, NULL, NULL, &sync, &res);
    }
    static float want[NUMEL];
    dropblock_result wr;
    int wrc = db_reference_run(&p, x, want, NULL, NULL, &wr);
    CHECK(rc == DROPBLOCK_OK && !wrc && !memcmp(want, y, sizeof want) && res.kept == wr.kept &&
              !strcmp(res.device, a.device),
          "%s: the ordered job on %s: %d %s, equal to the reference: %d", label, res.device, rc, res.message,
          !memcmp(want, y, sizeof want));
    CHECK(value_of(h, &b) == 1, "%s: its signal", label);
    printf("%s: a job waited for its semaphore on %s, ran exact, signalled\n", label, a.device);
    /* a wait that times out: not run, the signal raised */
    sync = (dropblock_sync){.wait = &a, .wait_value = 5, .wait_timeout_ms = 100, .signal = &b, .signal_value = 2};
    poison(y);
    rc = dropblock_run_sync(h, &p, in, out, NULL, NULL, &sync, &res);
    CHECK(rc == DROPBLOCK_EUNAVAILABLE && strstr(res.message, "did not reach 5 within 100 ms") && poisoned(y) &&
              value_of(h, &b) == 2,
          "%s: a wait that timed out: %d %s", label, rc, res.message);
    /* signals that do not rise */
    rc = dropblock_semaphore_signal(h, &b, 2, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_EINVAL && strstr(msg, "at 2 already"), "%s: signal 2 at 2: %d %s", label, rc, msg);
    sync = (dropblock_sync){.signal = &b, .signal_value = 1};
    rc = dropblock_run_sync(h, &p, in, out, NULL, NULL, &sync, &res);
    CHECK(rc == DROPBLOCK_EINVAL && strstr(res.message, "signal: the semaphore is at 2 already"),
          "%s: a job's signal below: %d %s", label, rc, res.message);
    /* exported */
    dropblock_semaphore e;
    rc = dropblock_semaphore_create(h, a.device, 1, &e, msg, sizeof msg);
    if (rc == DROPBLOCK_OK) {
        CHECK(e.fd >= 0 && !strcmp(e.handle_type, "opaque_fd"), "%s: exported: fd %d %s", label, e.fd, e.handle_type);
        dropblock_semaphore_free(h, &e);
    } else {
        CHECK(rc == DROPBLOCK_EINVAL && strstr(msg, "VK_KHR_external_semaphore_fd"), "%s: export refused: %d %s", label,
              rc, msg);
    }
    dropblock_free(h, x);
    dropblock_free(h, y);
    CHECK(dropblock_semaphore_free(h, &a) == DROPBLOCK_OK && dropblock_semaphore_free(h, &b) == DROPBLOCK_OK,
          "%s: free", label);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s DROPBLOCKD CACHE_DIR\n", argv[0]);
        return 2;
    }
    int slow = 1;
    char dir[256], sock[300], cache[300], msg[512];
    if (tu_test_start("semclient", &slow, dir, sizeof dir, sock, sizeof sock, cache, sizeof cache)) return 1;
    dropblock_t *h = NULL;
    dropblock_local_options lo = {0};
    int seen = 0;
    if (dropblock_open_local(&h, &lo, msg, sizeof msg) == DROPBLOCK_OK) {
        seen = run(h, "in-process engine", 0);
        dropblock_close(h);
    }
    if (!seen) {
        printf("SKIP: no device with timeline semaphores\n");
        return 77;
    }
    const char *const extra[] = {NULL};
    pid_t pid = tu_daemon_start("test_semaphore_client", argv[1], sock, argv[2], extra, 120.0 * slow);
    if (pid < 0) return 1;
    if (dropblock_connect(&h, sock, msg, sizeof msg)) {
        printf("FAIL connect: %s\n", msg);
        kill(pid, SIGTERM);
        return 1;
    }
    CHECK(run(h, "daemon", 1), "the daemon has a device with semaphores");
    dropblock_close(h);
    kill(pid, SIGTERM);
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the daemon exited with status 0x%x", st);
    printf("test_semaphore_client: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
