/* test_client: libdropblock against a real dropblockd on a temporary socket.
 *   test_client DROPBLOCKD [KERNEL_CACHE_DIR]
 * $DROPBLOCK_DAEMON_WRAPPER (words split at spaces, e.g. "valgrind --error-exitcode=99 ...") is
 * put before the daemon's command line; the daemon must exit 0 at the end.
 * Every result is compared bit for bit with core's CPU reference computed here, never with
 * anything the daemon or the library says about itself. */
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dropblock/dropblock.h>

#include "check.h"
#include "reference.h"
#include "testutil.h"
#include "test_cases.h"

static atomic_int passed, failed;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...)
{
    if (ok) {
        atomic_fetch_add(&passed, 1);
        return;
    }
    atomic_fetch_add(&failed, 1);
    pthread_mutex_lock(&out_lock);
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    pthread_mutex_unlock(&out_lock);
}

/* ---------------------------------------------------------------- the daemon under test */
static const char *daemon_exe, *cache_dir;
static char tmpdir[64], sock_path[128];

static int slow = 1; /* 10 under a wrapper (valgrind): longer waits */

static pid_t daemon_start(const char *const *extra)
{
    return tu_daemon_start("test_client", daemon_exe, sock_path, cache_dir, extra, 120.0 * slow);
}

/* Waits up to secs for the daemon to exit; its wait status or -1. */
static int daemon_reap(pid_t pid, double secs)
{
    for (double t0 = tu_now_s(); tu_now_s() - t0 < secs;) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return st;
        usleep(10000);
    }
    return -1;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* ---------------------------------------------------------------- one job, checked */
static size_t align64(uint64_t n) { return (size_t)((n + 63) & ~UINT64_C(63)); }

/* Runs p on h (run or submit+wait) with tensors inside one dropblock_alloc region at non-zero
 * offsets, and compares output, mask, K, S, scale bits and the untouched input with the
 * reference. 1 when all agree (or both reject the request with the same code). */
static int job_check(dropblock_t *h, const dropblock_params *p, const char *device, int inplace, int with_mask,
                     int async, uint64_t s0, char *why, size_t wl)
{
    uint64_t n = dropblock_numel(p), tb = dropblock_tensor_bytes(p), mb = dropblock_mask_bytes(p);
    size_t off_out = inplace ? 0 : align64(tb), off_mask = off_out + align64(tb);
    size_t size = off_mask + (with_mask ? (size_t)mb : 0);
    uint8_t *base = NULL;
    int ok = 0, rc;
    void *x = malloc(tb), *want = malloc(tb);
    uint8_t *wmask = calloc(1, mb);
    if (!x || !want || !wmask) {
        snprintf(why, wl, "out of memory");
        goto out;
    }
    if ((rc = dropblock_alloc(h, size, (void **)&base))) {
        snprintf(why, wl, "alloc of %zu bytes: %d", size, rc);
        goto out;
    }
    uint8_t *in = base, *outp = base + off_out, *mask = with_mask ? base + off_mask : NULL;
    db_fill_tf_uniform(p->dtype, s0, 17, n, in);
    memcpy(x, in, tb);
    dropblock_result wr, gr;
    int wrc = db_reference_run(p, x, want, with_mask ? wmask : NULL, NULL, &wr);
    int grc;
    if (async) {
        dropblock_ticket *t = NULL;
        grc = dropblock_submit(h, p, in, outp, mask, device, &t);
        memset(&gr, 0, sizeof gr);
        if (!grc) grc = dropblock_wait(h, t, -1, &gr);
    } else {
        grc = dropblock_run(h, p, in, outp, mask, device, &gr);
    }
    if (wrc || grc) {
        ok = wrc == grc && (!grc || gr.message[0] || async);
        if (!ok) snprintf(why, wl, "reference rc %d (%s), daemon rc %d (%s)", wrc, wr.message, grc, gr.message);
    } else if (wr.kept != gr.kept || wr.total != gr.total || wr.scale_bits != gr.scale_bits) {
        snprintf(why, wl, "K/S/scale: reference %llu/%llu/0x%08x, daemon %llu/%llu/0x%08x", (unsigned long long)wr.kept,
                 (unsigned long long)wr.total, wr.scale_bits, (unsigned long long)gr.kept, (unsigned long long)gr.total,
                 gr.scale_bits);
    } else if (memcmp(outp, want, tb)) {
        snprintf(why, wl, "output bytes differ from the reference");
    } else if (with_mask && memcmp(mask, wmask, mb)) {
        snprintf(why, wl, "mask bytes differ from the reference");
    } else if (!inplace && memcmp(in, x, tb)) {
        snprintf(why, wl, "the input changed in an out-of-place job");
    } else if (!gr.device[0] || (device && strcmp(device, "auto") && strcmp(device, gr.device))) {
        snprintf(why, wl, "ran on \"%s\", asked for %s", gr.device, device ? device : "auto");
    } else {
        ok = 1;
    }
    if ((rc = dropblock_free(h, base))) {
        ok = 0;
        snprintf(why, wl, "free: %d", rc);
    }
out:
    free(x);
    free(want);
    free(wmask);
    return ok;
}

static dropblock_params small_params(void)
{
    dropblock_params p = tu_params(2, 3, 9, 11, 0.3f, 3, 2);
    p.seed = 42;
    return p;
}

/* ---------------------------------------------------------------- sections */
static dropblock_device_info devs[16];
static size_t ndevs;

static void test_connect_refused(void)
{
    dropblock_t *h = NULL;
    char msg[512], path[160];
    snprintf(path, sizeof path, "%s/nobody-here.sock", tmpdir);
    int rc = dropblock_connect(&h, path, msg, sizeof msg);
    check(rc == DROPBLOCK_EUNAVAILABLE && !h, "connect to a missing socket: rc %d, want EUNAVAILABLE", rc);
    check(strstr(msg, "cannot connect to dropblockd at") && strstr(msg, path) && strstr(msg, "No such file") &&
              strstr(msg, "dropblockd --socket"),
          "connect message says where and how to start one: \"%s\"", msg);
}

/* As root: a uid the daemon does not allow is refused with the daemon's message; an allowed
 * uid other than the daemon's may not shut it down. Children, before this process has threads. */
static void test_permissions(void)
{
    if (geteuid() != 0) {
        printf("skip: permission checks need root (to switch uid)\n");
        return;
    }
    /* once hello answers, the daemon has long set the socket's own mode: ours stays */
    dropblock_t *h = NULL;
    char msg[512];
    if (dropblock_connect(&h, sock_path, msg, sizeof msg)) {
        check(0, "connect: %s", msg);
        return;
    }
    dropblock_close(h);
    chmod(tmpdir, 0755);
    chmod(sock_path, 0666);
    for (int allowed = 0; allowed < 2; allowed++) {
        pid_t pid = fork();
        if (pid == 0) {
            uid_t uid = allowed ? 65534 : 65533;
            if (setgroups(0, NULL) || setgid(65533) || setuid(uid)) _exit(10);
            dropblock_t *h = NULL;
            char msg[512];
            int rc = dropblock_connect(&h, sock_path, msg, sizeof msg);
            if (!allowed) _exit(rc == DROPBLOCK_EPERM && !h && strstr(msg, "is not allowed") ? 0 : 11);
            if (rc) _exit(12);
            rc = dropblock_shutdown(h, msg, sizeof msg);
            dropblock_close(h);
            _exit(rc == DROPBLOCK_EPERM && strstr(msg, "only uid") ? 0 : 13);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s (child status 0x%x)",
              allowed ? "shutdown from an allowed other uid gives EPERM with the daemon's message"
                      : "connect from a uid not allowed gives EPERM with the daemon's message",
              st);
    }
    chmod(sock_path, 0660);
    chmod(tmpdir, 0700);
}

static void test_basics(dropblock_t *h)
{
    check(dropblock_is_remote(h) == 1, "is_remote of a connection is 1");
    size_t n = 0;
    int rc = dropblock_devices(h, devs, 16, &ndevs);
    check(rc == 0 && ndevs > 0, "devices: rc %d, %zu devices", rc, ndevs);
    for (size_t i = 0; i < ndevs && i < 16; i++)
        printf("device %s: %s / %s / %s (%s)\n", devs[i].id, devs[i].vendor, devs[i].name, devs[i].driver,
               dropblock_device_kind_name(devs[i].kind));
    rc = dropblock_devices(h, NULL, 0, &n);
    check(rc == 0 && n == ndevs, "devices with no room still counts: %zu", n);
    char json[8192];
    rc = dropblock_status(h, json, sizeof json);
    check(rc == 0 && strstr(json, "\"uptime_s\"") && strstr(json, "\"jobs\"") && !strchr(json, '\n'),
          "status gives the daemon's counters as unformatted JSON: rc %d", rc);
    rc = dropblock_status(h, json, 8);
    check(rc == DROPBLOCK_ERANGE, "status into 8 bytes: rc %d, want ERANGE", rc);

    void *p = NULL;
    rc = dropblock_alloc(h, 10000, &p);
    int zero = 1;
    for (size_t i = 0; rc == 0 && i < 10000; i++) zero &= ((uint8_t *)p)[i] == 0;
    check(rc == 0 && p && zero, "alloc gives zeroed memory: rc %d", rc);
    if (p) {
        memset(p, 0xAB, 10000);
        check(dropblock_free(h, (char *)p + 1) == DROPBLOCK_EINVAL, "free of a pointer inside an allocation is EINVAL");
    }
    check(dropblock_free(h, p) == 0, "free");
    check(dropblock_free(h, p) == DROPBLOCK_EINVAL, "free twice is EINVAL");
    check(dropblock_alloc(h, 0, &p) == DROPBLOCK_EINVAL && !p, "alloc of 0 bytes is EINVAL");
    check(dropblock_shutdown(NULL, NULL, 0) == DROPBLOCK_EINVAL, "shutdown of NULL is EINVAL");

    /* no descriptor or mapping outlives its handle */
    int before = count_fds();
    for (int i = 0; i < 5; i++) {
        dropblock_t *c = NULL;
        char msg[256];
        if (dropblock_connect(&c, sock_path, msg, sizeof msg)) {
            check(0, "connect: %s", msg);
            break;
        }
        void *a = NULL, *b = NULL;
        dropblock_alloc(c, 4096, &a);
        dropblock_alloc(c, 1 << 20, &b);
        dropblock_free(c, a);
        dropblock_close(c); /* b goes with the handle */
    }
    int after = count_fds();
    check(before == after, "descriptors before %d, after 5 connect/alloc/close cycles %d", before, after);
}

static void test_every_device(dropblock_t *h)
{
    static struct test_case cases[TEST_CASES_MAX];
    int ncases = test_cases_matrix(cases, TEST_CASES_MAX);
    /* a daemon under a wrapper (valgrind: tests/valgrind.sh) takes the matrix's small cases only:
     * its large ones (the every-word maps, 0.5-3 M elements) would take minutes each there, and
     * test_backends runs them all on every device without one */
    const char *wrapper = getenv("DROPBLOCK_DAEMON_WRAPPER");
    const uint64_t max_numel = wrapper && *wrapper ? UINT64_C(1) << 16 : UINT64_MAX;
    for (size_t d = 0; d <= ndevs; d++) {
        const char *dev = d < ndevs ? devs[d].id : "auto";
        int ok = 0, bad = 0;
        for (int i = (int)d; i < ncases; i += 7) {
            if (dropblock_numel(&cases[i].p) > max_numel) continue;
            for (int variant = 0; variant < 3; variant++) {
                /* out of place with mask, in place, in place with mask through submit */
                char why[512];
                int good = job_check(h, &cases[i].p, dev, variant > 0, variant != 1, variant == 2, cases[i].s0, why,
                                     sizeof why);
                if (good) ok++;
                else {
                    bad++;
                    check(0, "%s %s (variant %d): %s", dev, cases[i].name, variant, why);
                }
            }
        }
        check(ok > 0, "device %s ran jobs", dev);
        printf("device %s: %d jobs equal the reference, %d differ\n", dev, ok, bad);
    }
}

static void test_errors(dropblock_t *h)
{
    dropblock_params p = small_params();
    uint64_t tb = dropblock_tensor_bytes(&p), mb = dropblock_mask_bytes(&p);
    uint8_t *r = NULL;
    if (dropblock_alloc(h, 2 * tb + mb, (void **)&r)) {
        check(0, "alloc for the error checks");
        return;
    }
    dropblock_result res;
    int rc;

    p.rate = 2.0f;
    rc = dropblock_run(h, &p, r, r, NULL, NULL, &res);
    check(rc == DROPBLOCK_EINVAL && strstr(res.message, "rate"), "rate 2: rc %d \"%s\"", rc, res.message);
    dropblock_ticket *t = (dropblock_ticket *)1;
    rc = dropblock_submit(h, &p, r, r, NULL, NULL, &t);
    check(rc == DROPBLOCK_EINVAL && !t, "submit rate 2: rc %d, no ticket", rc);
    p = small_params();

    void *outside = calloc(1, tb);
    rc = dropblock_run(h, &p, outside, r, NULL, NULL, &res);
    check(rc == DROPBLOCK_EINVAL && strstr(res.message, "input is not inside memory from dropblock_alloc"),
          "input outside any region: rc %d \"%s\"", rc, res.message);
    rc = dropblock_run(h, &p, r, outside, NULL, NULL, &res);
    check(rc == DROPBLOCK_EINVAL && strstr(res.message, "output is not inside"), "output outside: rc %d \"%s\"", rc,
          res.message);
    rc = dropblock_run(h, &p, r, r, r + 2 * tb + 1, NULL, &res);
    check(rc == DROPBLOCK_EINVAL && strstr(res.message, "mask is not inside") && strstr(res.message, "run past"),
          "mask running past its region: rc %d \"%s\"", rc, res.message);
    rc = dropblock_run(h, &p, r + 1, r + 1, NULL, NULL, &res);
    check(rc == 0, "in place at an unaligned offset: rc %d \"%s\"", rc, res.message);
    free(outside);

    /* errors only the daemon finds come back with its code and words */
    rc = dropblock_run(h, &p, r, r, NULL, "opencl:99", &res);
    check(rc == DROPBLOCK_ENOTFOUND && strstr(res.message, "opencl:99"), "unknown device: rc %d \"%s\"", rc,
          res.message);
    rc = dropblock_run(h, &p, r, r + 4, NULL, NULL, &res);
    check(rc == DROPBLOCK_EINVAL && strstr(res.message, "overlaps"), "shifted overlap: rc %d \"%s\"", rc, res.message);
    dropblock_params k = small_params();
    k.compat = DROPBLOCK_COMPAT_KERAS_CV;
    k.shape[2] = 3;
    k.block[0] = 4;
    rc = dropblock_run(h, &k, r, r, NULL, NULL, &res);
    check(rc == DROPBLOCK_EINVAL && strstr(res.message, "divide by zero"), "keras_cv division by zero: rc %d \"%s\"",
          rc, res.message);
    /* the connection stays usable after errors */
    rc = dropblock_run(h, &p, r, r, NULL, NULL, &res);
    check(rc == 0, "a job after errors: rc %d \"%s\"", rc, res.message);
    rc = dropblock_wait(h, NULL, 0, &res);
    check(rc == DROPBLOCK_EINVAL, "wait on no ticket: rc %d", rc);
    dropblock_free(h, r);
}

/* wait with a timeout while the daemon is stopped: ETIMEDOUT keeps the ticket, then the result */
static void test_timeout(dropblock_t *h, pid_t daemon)
{
    dropblock_params p = small_params();
    p.dtype = DROPBLOCK_BF16;
    p.layout = DROPBLOCK_NHWC;
    uint64_t tb = dropblock_tensor_bytes(&p), mb = dropblock_mask_bytes(&p);
    uint8_t *r = NULL;
    if (dropblock_alloc(h, 2 * tb + mb, (void **)&r)) {
        check(0, "alloc for the timeout check");
        return;
    }
    db_fill_tf_uniform(p.dtype, 9, 17, dropblock_numel(&p), r);
    void *want = malloc(tb);
    uint8_t *wmask = calloc(1, mb);
    dropblock_result wr, gr;
    db_reference_run(&p, r, want, wmask, NULL, &wr);

    kill(daemon, SIGSTOP);
    dropblock_ticket *t = NULL;
    int rc = dropblock_submit(h, &p, r, r + tb, r + 2 * tb, "cpu:0", &t);
    check(rc == 0 && t, "submit to a stopped daemon returns at once: rc %d", rc);
    rc = dropblock_wait(h, t, 0, &gr);
    check(rc == DROPBLOCK_ETIMEDOUT, "wait 0 on a running job: rc %d, want ETIMEDOUT", rc);
    double t0 = tu_now_s();
    rc = dropblock_wait(h, t, 80, &gr);
    double dt = tu_now_s() - t0;
    check(rc == DROPBLOCK_ETIMEDOUT && dt >= 0.075 && dt < 2, "wait 80 ms: rc %d after %.3f s", rc, dt);
    kill(daemon, SIGCONT);
    rc = dropblock_wait(h, t, -1, &gr);
    check(rc == 0 && gr.kept == wr.kept && gr.total == wr.total && gr.scale_bits == wr.scale_bits &&
              !memcmp(r + tb, want, tb) && !memcmp(r + 2 * tb, wmask, mb) && !strcmp(gr.device, "cpu:0"),
          "after ETIMEDOUT the ticket gives the exact result: rc %d \"%s\"", rc, gr.message);
    /* a ticket not waited for goes with its handle; an ETIMEDOUT one too (valgrind sees both) */
    dropblock_t *c = NULL;
    char msg[256];
    if (!dropblock_connect(&c, sock_path, msg, sizeof msg)) {
        uint8_t *q = NULL;
        if (!dropblock_alloc(c, tb, (void **)&q)) {
            dropblock_ticket *t1 = NULL, *t2 = NULL;
            dropblock_submit(c, &p, q, q, NULL, NULL, &t1);
            dropblock_submit(c, &p, q, q, NULL, NULL, &t2);
            dropblock_wait(c, t2, 0, &gr);
        }
        dropblock_close(c);
    }
    free(want);
    free(wmask);
    dropblock_free(h, r);
}

/* ---------------------------------------------------------------- many threads */
#define THREADS 16
#define JOBS 50

struct worker {
    dropblock_t *shared; /* NULL: the worker opens its own connection */
    int index;
    int ok, bad;
};

static dropblock_params random_params(uint64_t *s)
{
    dropblock_params p;
    dropblock_params_init(&p);
    p.shape[0] = 1 + tu_rng_next(s) % 3;
    p.shape[1] = 1 + tu_rng_next(s) % 8;
    p.shape[2] = 1 + tu_rng_next(s) % 32;
    p.shape[3] = 1 + tu_rng_next(s) % 64;
    p.layout = (dropblock_layout)(tu_rng_next(s) % 2);
    p.dtype = (dropblock_dtype)(tu_rng_next(s) % 3);
    static const float rates[] = {0.0f, 0.05f, 0.1f, 0.25f, 0.5f, 0.9f, 1.0f};
    p.rate = rates[tu_rng_next(s) % 7];
    p.block[0] = 1 + tu_rng_next(s) % 7;
    p.block[1] = 1 + tu_rng_next(s) % 7;
    p.seed = tu_rng_next(s) % 3 ? tu_rng_next(s) % 100000 : tu_rng_next(s); /* some above 2^53: decimal strings */
    p.stream = tu_rng_next(s) % 2 ? tu_rng_next(s) : 0;
    p.mode = (dropblock_mode)(tu_rng_next(s) % 4 == 0);
    p.training = tu_rng_next(s) % 10 != 0;
    if (tu_rng_next(s) % 4 == 0) {
        p.compat = DROPBLOCK_COMPAT_KERAS_CV;
    } else {
        p.normalize = (dropblock_normalize)(tu_rng_next(s) % 3);
        p.share = (unsigned)(tu_rng_next(s) % 4);
    }
    return p;
}

/* Several jobs in flight on one handle, waited for in reverse order of submission. */
#define BATCH 4
static int batch_check(dropblock_t *h, uint64_t *s, char *why, size_t wl)
{
    dropblock_params p[BATCH];
    uint8_t *r[BATCH] = {0};
    void *want[BATCH] = {0};
    dropblock_ticket *t[BATCH] = {0};
    int ok = 1;
    for (int i = 0; i < BATCH && ok; i++) {
        do p[i] = random_params(s);
        while (p[i].compat == DROPBLOCK_COMPAT_KERAS_CV); /* no expected errors */
        uint64_t tb = dropblock_tensor_bytes(&p[i]);
        want[i] = malloc(tb);
        dropblock_result wr;
        if (!want[i] || dropblock_alloc(h, 2 * tb, (void **)&r[i])) {
            ok = 0;
            snprintf(why, wl, "alloc");
            break;
        }
        db_fill_tf_uniform(p[i].dtype, tu_rng_next(s), 3, dropblock_numel(&p[i]), r[i]);
        db_reference_run(&p[i], r[i], want[i], NULL, NULL, &wr);
        int rc = dropblock_submit(h, &p[i], r[i], r[i] + tb, NULL, i % 2 ? "auto" : NULL, &t[i]);
        if (rc) {
            ok = 0;
            snprintf(why, wl, "submit %d: rc %d", i, rc);
        }
    }
    for (int i = BATCH - 1; i >= 0; i--) {
        dropblock_result gr;
        if (!t[i]) continue;
        int rc = dropblock_wait(h, t[i], -1, &gr);
        if (ok && rc) {
            ok = 0;
            snprintf(why, wl, "batch job %d: rc %d %s", i, rc, gr.message);
        }
        if (ok && memcmp(r[i] + dropblock_tensor_bytes(&p[i]), want[i], dropblock_tensor_bytes(&p[i]))) {
            ok = 0;
            snprintf(why, wl, "batch job %d: output differs from the reference", i);
        }
    }
    for (int i = 0; i < BATCH; i++) {
        if (r[i]) dropblock_free(h, r[i]);
        free(want[i]);
    }
    return ok;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    dropblock_t *h = w->shared;
    char msg[512];
    if (!h && dropblock_connect(&h, sock_path, msg, sizeof msg)) {
        check(0, "worker %d: connect: %s", w->index, msg);
        w->bad = JOBS;
        return NULL;
    }
    uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(w->index + 1) + (w->shared ? 1 : 2);
    for (int j = 0; j < JOBS; j++) {
        dropblock_params p = random_params(&s);
        size_t d = tu_rng_next(&s) % (ndevs + 1);
        const char *dev = d < ndevs ? devs[d].id : (tu_rng_next(&s) % 2 ? "auto" : NULL);
        char why[512];
        if (j % 10 == 9 ? batch_check(h, &s, why, sizeof why)
                        : job_check(h, &p, dev, (int)(tu_rng_next(&s) % 2), (int)(tu_rng_next(&s) % 2),
                                    (int)(tu_rng_next(&s) % 2), tu_rng_next(&s), why, sizeof why))
            w->ok++;
        else {
            w->bad++;
            check(0, "worker %d%s job %d on %s: %s", w->index, w->shared ? " (shared handle)" : "", j,
                  dev ? dev : "NULL", why);
        }
    }
    if (!w->shared) dropblock_close(h);
    return NULL;
}

static void test_threads(dropblock_t *h)
{
    static struct worker ws[2 * THREADS];
    pthread_t th[2 * THREADS];
    double t0 = tu_now_s();
    for (int i = 0; i < 2 * THREADS; i++) {
        ws[i].shared = i < THREADS ? h : NULL;
        ws[i].index = i % THREADS;
        pthread_create(&th[i], NULL, worker_main, &ws[i]);
    }
    int ok[2] = {0, 0}, bad[2] = {0, 0};
    for (int i = 0; i < 2 * THREADS; i++) {
        pthread_join(th[i], NULL);
        ok[i >= THREADS] += ws[i].ok;
        bad[i >= THREADS] += ws[i].bad;
    }
    check(ok[0] == THREADS * JOBS && !bad[0], "%d threads x %d jobs on one handle: %d exact, %d not", THREADS, JOBS,
          ok[0], bad[0]);
    check(ok[1] == THREADS * JOBS && !bad[1], "%d connections x %d jobs: %d exact, %d not", THREADS, JOBS, ok[1],
          bad[1]);
    printf("threads: %d + %d jobs exact in %.1f s\n", ok[0], ok[1], tu_now_s() - t0);
    char json[8192];
    if (!dropblock_status(h, json, sizeof json)) printf("status: %s\n", json);
}

static void test_local(void)
{
    dropblock_t *h = NULL;
    char msg[512];
    dropblock_local_options opt = {"cpu", ""};
    int rc = dropblock_open_local(&h, &opt, msg, sizeof msg);
    check(rc == 0 && h && dropblock_is_remote(h) == 0, "open_local cpu: rc %d %s", rc, msg);
    if (rc) return;
    char why[512];
    dropblock_params p = small_params();
    check(job_check(h, &p, NULL, 0, 1, 0, 5, why, sizeof why), "local run: %s", why);
    check(job_check(h, &p, "cpu:0", 1, 1, 1, 6, why, sizeof why), "local submit/wait in place: %s", why);
    dropblock_ticket *t = NULL;
    uint8_t *r = NULL;
    dropblock_result res;
    dropblock_alloc(h, dropblock_tensor_bytes(&p), (void **)&r);
    rc = dropblock_submit(h, &p, r, r, NULL, NULL, &t);
    check(rc == 0 && dropblock_wait(h, t, 0, &res) == 0, "local submit is finished at once: rc %d", rc);
    dropblock_submit(h, &p, r, r, NULL, NULL, &t); /* left for close */
    char json[4096];
    rc = dropblock_status(h, json, sizeof json);
    check(rc == 0 && strstr(json, "\"devices\"") && strstr(json, "cpu:0"), "local status lists devices: %d %s", rc,
          json);
    check(dropblock_status(h, json, 4) == DROPBLOCK_ERANGE, "local status into 4 bytes is ERANGE");
    rc = dropblock_shutdown(h, msg, sizeof msg);
    check(rc == DROPBLOCK_EINVAL && strstr(msg, "not a daemon connection"), "local shutdown: rc %d \"%s\"", rc, msg);
    check(dropblock_free(h, r + 1) == DROPBLOCK_EINVAL, "local free of a foreign pointer is EINVAL");
    void *leftover = NULL;
    dropblock_alloc(h, 100, &leftover); /* released by close */
    check(dropblock_free(h, r) == 0, "local free");
    dropblock_close(h);
}

/* 1 when the daemon was reaped here */
static int test_shutdown(dropblock_t *h, pid_t daemon)
{
    char msg[256];
    int rc = dropblock_shutdown(h, msg, sizeof msg);
    check(rc == 0, "shutdown: rc %d \"%s\"", rc, msg);
    int st = daemon_reap(daemon, 30 * slow);
    check(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the daemon exits 0 after shutdown (status 0x%x)", st);
    struct stat sb;
    check(lstat(sock_path, &sb) < 0 && errno == ENOENT, "the socket file is removed");
    void *q = NULL;
    double t0 = tu_now_s();
    rc = dropblock_alloc(h, 4096, &q);
    check(rc == DROPBLOCK_EUNAVAILABLE && tu_now_s() - t0 < 5, "alloc after shutdown: rc %d", rc);
    char json[1024];
    rc = dropblock_status(h, json, sizeof json);
    check(rc == DROPBLOCK_EUNAVAILABLE, "status after shutdown: rc %d", rc);
    return st >= 0;
}

/* SIGKILL with a job in flight: the waiting thread and every later call fail promptly */
struct waiter {
    dropblock_t *h;
    dropblock_ticket *t;
    int rc;
    double t_done;
    dropblock_result res;
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    w->rc = dropblock_wait(w->h, w->t, -1, &w->res);
    w->t_done = tu_now_s();
    return NULL;
}

/* Jobs through a shared handle from several threads, as the first calls after a daemon restart:
 * one of them reconnects, the others wait for it and go on. */
struct rerun {
    dropblock_t *h;
    uint8_t *mem; /* allocated before the kill */
    dropblock_params p;
    const char *device;
    int ok;
    char why[512];
};

static void *rerun_main(void *arg)
{
    struct rerun *r = arg;
    uint64_t n = dropblock_numel(&r->p), tb = dropblock_tensor_bytes(&r->p), mb = dropblock_mask_bytes(&r->p);
    void *x = malloc(tb), *want = malloc(tb);
    uint8_t *wmask = calloc(1, mb);
    r->ok = 1;
    for (int k = 0; k < 8 && r->ok; k++) {
        r->p.seed = 1000 + (uint64_t)k;
        db_fill_tf_uniform(r->p.dtype, (uint64_t)k + 3, 17, n, r->mem);
        memcpy(x, r->mem, tb);
        dropblock_result wr, gr;
        db_reference_run(&r->p, x, want, wmask, NULL, &wr);
        int rc = dropblock_run(r->h, &r->p, r->mem, r->mem + align64(tb), r->mem + 2 * align64(tb), r->device, &gr);
        if (rc || gr.kept != wr.kept || gr.scale_bits != wr.scale_bits || memcmp(r->mem + align64(tb), want, tb) ||
            memcmp(r->mem + 2 * align64(tb), wmask, mb)) {
            r->ok = 0;
            snprintf(r->why, sizeof r->why, "job %d on %s: rc %d \"%s\"%s", k, r->device ? r->device : "auto", rc,
                     gr.message, rc ? "" : " (bits differ from the reference)");
        }
    }
    free(x);
    free(want);
    free(wmask);
    return NULL;
}

/* SIGKILL with a job in flight: the waiting thread and every later call fail promptly; then a
 * daemon restarted on the same socket serves the same handle again, on memory allocated before
 * the kill, without the caller doing anything. */
static void test_killed(void)
{
    static const char *const cpu_only[] = {"--devices", "cpu", NULL};
    pid_t d = daemon_start(cpu_only);
    if (d < 0) {
        check(0, "second daemon");
        return;
    }
    int fds_before = count_fds();
    dropblock_t *h = NULL;
    char msg[512];
    if (dropblock_connect(&h, sock_path, msg, sizeof msg)) {
        check(0, "connect to the second daemon: %s", msg);
        kill(d, SIGKILL);
        waitpid(d, NULL, 0);
        return;
    }
    dropblock_params p = small_params();
    uint64_t tb = dropblock_tensor_bytes(&p), mb = dropblock_mask_bytes(&p);
    uint8_t *r = NULL, *gone = NULL;
    int rc = dropblock_alloc(h, tb, (void **)&r);
    check(rc == 0, "alloc on the second daemon: %d", rc);
    check(dropblock_alloc(h, 8192, (void **)&gone) == 0, "a second alloc");
    /* regions for the threads after the restart: output and mask beside the input */
    enum { NRERUN = 4 };
    static struct rerun rr[NRERUN];
    for (int i = 0; i < NRERUN; i++) {
        rr[i].h = h;
        rr[i].p = small_params();
        rr[i].p.dtype = (dropblock_dtype)(i % 3);
        rr[i].p.layout = (dropblock_layout)(i % 2);
        uint64_t b = dropblock_tensor_bytes(&rr[i].p);
        rc = dropblock_alloc(h, 2 * align64(b) + dropblock_mask_bytes(&rr[i].p), (void **)&rr[i].mem);
        check(rc == 0, "alloc %d before the kill: %d", i, rc);
    }
    rc = dropblock_run(h, &p, r, r, NULL, NULL, NULL);
    check(rc == 0, "a job before the kill: %d", rc);
    kill(d, SIGSTOP); /* the job cannot finish before the kill */
    struct waiter w = {h, NULL, 0, 0, {0}};
    rc = dropblock_submit(h, &p, r, r, NULL, NULL, &w.t);
    check(rc == 0, "submit before the kill: %d", rc);
    pthread_t th;
    pthread_create(&th, NULL, waiter_main, &w);
    usleep(100000);
    double t_kill = tu_now_s();
    kill(d, SIGKILL);
    pthread_join(th, NULL);
    check(w.rc == DROPBLOCK_EUNAVAILABLE && strstr(w.res.message, "connection to dropblockd lost") &&
              w.t_done - t_kill < 2,
          "pending wait after SIGKILL: rc %d after %.3f s \"%s\"", w.rc, w.t_done - t_kill, w.res.message);
    waitpid(d, NULL, 0);
    /* nothing answers: each call tries once to reconnect, fails at once and says so */
    dropblock_result res;
    double t0 = tu_now_s();
    rc = dropblock_run(h, &p, r, r, NULL, NULL, &res);
    check(rc == DROPBLOCK_EUNAVAILABLE && strstr(res.message, "connection to dropblockd lost") &&
              strstr(res.message, "reconnecting failed") && strstr(res.message, sock_path),
          "run after SIGKILL: rc %d \"%s\"", rc, res.message);
    printf("run while the daemon is down: %s\n", res.message);
    dropblock_ticket *t = NULL;
    check(dropblock_submit(h, &p, r, r, NULL, NULL, &t) == DROPBLOCK_EUNAVAILABLE && !t, "submit after SIGKILL");
    void *q = NULL;
    check(dropblock_alloc(h, 4096, &q) == DROPBLOCK_EUNAVAILABLE && !q, "alloc after SIGKILL");
    char json[8192];
    check(dropblock_status(h, json, sizeof json) == DROPBLOCK_EUNAVAILABLE, "status after SIGKILL");
    size_t n;
    check(dropblock_devices(h, devs, 16, &n) == DROPBLOCK_EUNAVAILABLE, "devices after SIGKILL");
    check(dropblock_shutdown(h, msg, sizeof msg) == DROPBLOCK_EUNAVAILABLE && strstr(msg, "reconnecting failed"),
          "shutdown after SIGKILL: \"%s\"", msg);
    check(dropblock_free(h, gone) == 0, "free after SIGKILL releases the memory");
    check(tu_now_s() - t0 < 2, "calls after SIGKILL return promptly (%.3f s)", tu_now_s() - t0);

    /* a new daemon on the same path (all its devices): the handle reconnects on its next call */
    d = daemon_start(NULL);
    if (d < 0) {
        check(0, "restarted daemon");
        dropblock_close(h);
        return;
    }
    pthread_t ths[NRERUN];
    for (int i = 0; i < NRERUN; i++) {
        rr[i].device = i == 0 ? NULL : i == 1 ? "cpu:0" : "auto";
        pthread_create(&ths[i], NULL, rerun_main, &rr[i]);
    }
    for (int i = 0; i < NRERUN; i++) {
        pthread_join(ths[i], NULL);
        check(rr[i].ok, "after the restart, thread %d's jobs on memory from before the kill are exact: %s", i,
              rr[i].why);
    }
    rc = dropblock_devices(h, devs, 16, &n);
    check(rc == 0 && n > 0, "devices after the restart: rc %d, %zu", rc, n);
    for (size_t i = 0; i < n && i < 16; i++) {
        check(devs[i].healthy == 1, "%s is healthy", devs[i].id);
        char why[512];
        check(job_check(h, &p, devs[i].id, 0, 1, (int)(i % 2), 77 + i, why, sizeof why),
              "after the restart, a job on %s is exact: %s", devs[i].id, why);
    }
    /* the first region: in place, on memory from before the kill */
    db_fill_tf_uniform(p.dtype, 5, 17, dropblock_numel(&p), r);
    void *want = malloc(tb);
    uint8_t *wmask = calloc(1, mb);
    dropblock_result wr;
    db_reference_run(&p, r, want, NULL, NULL, &wr);
    rc = dropblock_run(h, &p, r, r, NULL, NULL, &res);
    check(rc == 0 && res.kept == wr.kept && res.scale_bits == wr.scale_bits && !memcmp(r, want, tb),
          "after the restart, an in-place job on the first region is exact: rc %d \"%s\"", rc, res.message);
    free(want);
    free(wmask);
    rc = dropblock_status(h, json, sizeof json);
    check(rc == 0 && strstr(json, "\"regions\":5"),
          "status after the restart counts the 5 regions registered again: %s", json);
    check(dropblock_free(h, r) == 0, "free after the restart");
    for (int i = 0; i < NRERUN; i++) check(dropblock_free(h, rr[i].mem) == 0, "free %d after the restart", i);
    check(dropblock_free(h, r) == DROPBLOCK_EINVAL, "free twice is still EINVAL");
    dropblock_close(h);
    check(count_fds() == fds_before,
          "descriptors back to %d after close (now %d): the memfds kept for reconnects "
          "are closed",
          fds_before, count_fds());
    kill(d, SIGTERM);
    int st = daemon_reap(d, 30 * slow);
    check(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "the restarted daemon exits 0 on SIGTERM (0x%x)", st);
    if (st < 0) {
        kill(d, SIGKILL);
        waitpid(d, NULL, 0);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DROPBLOCKD [KERNEL_CACHE_DIR]\n", argv[0]);
        return 2;
    }
    daemon_exe = argv[1];
    char cache_buf[256];
    if (tu_test_start("client", &slow, tmpdir, sizeof tmpdir, sock_path, sizeof sock_path, cache_buf, sizeof cache_buf))
        return 1;
    cache_dir = argc > 2 ? argv[2] : cache_buf;
    double t0 = tu_now_s();

    test_connect_refused();
    /* 65534 may connect (for the shutdown permission check), 65533 may not */
    static const char *const allow[] = {"--allow-uid", "65534", NULL};
    pid_t d = daemon_start(allow);
    if (d > 0) {
        test_permissions();
        dropblock_t *h = NULL;
        char msg[512];
        int rc = dropblock_connect(&h, sock_path, msg, sizeof msg);
        check(rc == 0 && h, "connect: rc %d %s", rc, msg);
        int reaped = 0;
        if (h) {
            test_basics(h);
            test_every_device(h);
            test_errors(h);
            test_timeout(h, d);
            test_threads(h);
            reaped = test_shutdown(h, d);
            dropblock_close(h);
        }
        if (!reaped) { /* still running after a failure above */
            kill(d, SIGKILL);
            waitpid(d, NULL, 0);
            unlink(sock_path);
        }
    }
    test_killed();
    test_local();

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    printf("test_client: %d passed, %d failed (%.1f s)\n", atomic_load(&passed), atomic_load(&failed), tu_now_s() - t0);
    return atomic_load(&failed) ? 1 : 0;
}
