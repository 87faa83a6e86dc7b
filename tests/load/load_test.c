/* load_test: many clients at once through libdropblock against a dropblockd it starts itself.
 *
 *   load_test DROPBLOCKD [--clients N] [--jobs N] [--warmup N] [--long] [--cache-dir DIR]
 *
 * N clients (threads, one connection each; default 16) run a warm-up of --warmup jobs each
 * (default 10), then --jobs jobs each (default 40; --long: 150) of mixed shapes, dtypes, layouts,
 * modes and devices: mostly single calls, some batches of submits waited for in reverse order,
 * in place and not, with and without a mask, on a region kept for the phase and now and then on
 * a fresh one. Every result is compared bit for bit (output, mask, K, S, scale) with the CPU
 * reference computed here. Reported: exact/wrong/errors, jobs/s, round-trip latency p50/p99/max,
 * jobs per device, and the daemon's RSS and descriptor count (/proc/PID).
 *
 * Fails when a result differs, a job fails, the daemon's RSS grows by 10% or more between the
 * quiet point after the warm-up and the one at the end (every client has freed its memory at
 * both), or its descriptor count does not return to the baseline once the clients are gone.
 * $DROPBLOCK_DAEMON_WRAPPER is put before the daemon's command line (as in test_client).
 * $DROPBLOCK_LOAD_RSS_LIMIT: the growth allowed in percent (default 10), or "off" (AddressSanitizer
 * keeps freed memory in quarantine: the RSS means nothing there). */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <dropblock/dropblock.h>

#include "reference.h"
#include "testutil.h"

/* ---------------------------------------------------------------- the daemon */
static const char *daemon_exe, *cache_dir;
static char tmpdir[64], sock_path[128];
static int slow = 1;

static pid_t daemon_start(void)
{
    return tu_daemon_start("load_test", daemon_exe, sock_path, cache_dir, NULL, 120.0 * slow);
}

static int count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* VmRSS and its parts, KiB */
struct rss {
    long total, anon, file, shmem;
};

static struct rss read_rss(pid_t pid)
{
    struct rss r = {-1, -1, -1, -1};
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return r;
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "VmRSS: %ld", &r.total);
        sscanf(line, "RssAnon: %ld", &r.anon);
        sscanf(line, "RssFile: %ld", &r.file);
        sscanf(line, "RssShmem: %ld", &r.shmem);
    }
    fclose(f);
    return r;
}

/* $DROPBLOCK_LOAD_SMAPS=DIR: copies of the daemon's /proc/PID/smaps at both sample points
 * (DIR/warm.smaps, DIR/end.smaps), to see which mappings grew. */
static void save_smaps(pid_t pid, const char *name)
{
    const char *dir = getenv("DROPBLOCK_LOAD_SMAPS");
    if (!dir || !*dir) return;
    char src[64], dst[512], buf[65536];
    snprintf(src, sizeof src, "/proc/%d/smaps", (int)pid);
    snprintf(dst, sizeof dst, "%s/%s.smaps", dir, name);
    FILE *in = fopen(src, "r"), *out = fopen(dst, "w");
    size_t n;
    while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    if (in) fclose(in);
    if (out) fclose(out);
}

/* ---------------------------------------------------------------- jobs */
static dropblock_device_info devs[16];
static size_t ndevs;

/* Mixed shapes: 60% small (up to 16 Ki elements: the daemon's inline CPU path for auto), 30%
 * medium (up to 128 Ki), 8% large (up to 512 Ki), 2% huge (up to 4 Mi: 16 MiB in f32, many
 * chunks on lavapipe). */
#define HUGE_ELEMS (UINT64_C(4) << 20)
static dropblock_params random_params(uint64_t *s)
{
    dropblock_params p;
    dropblock_params_init(&p);
    uint64_t size = tu_rng_next(s) % 50;
    uint64_t cap = size < 30 ? 16384 : size < 45 ? 131072 : size < 49 ? 524288 : HUGE_ELEMS; /* elements */
    uint64_t mc = size < 30 ? 8 : size < 49 ? 32 : 128, mh = size < 30 ? 24 : size < 49 ? 64 : 128;
    do {
        p.shape[0] = 1 + tu_rng_next(s) % 4;
        p.shape[1] = 1 + tu_rng_next(s) % mc;
        p.shape[2] = 1 + tu_rng_next(s) % mh;
        p.shape[3] = 1 + tu_rng_next(s) % (mh + mh / 2);
    } while (dropblock_numel(&p) > cap || (size >= 30 && dropblock_numel(&p) <= cap / 8));
    p.layout = (dropblock_layout)(tu_rng_next(s) % 2);
    p.dtype = (dropblock_dtype)(tu_rng_next(s) % 3);
    static const float rates[] = {0.0f, 0.05f, 0.1f, 0.2f, 0.3f, 0.5f, 0.9f};
    p.rate = rates[tu_rng_next(s) % 7];
    p.block[0] = 1 + tu_rng_next(s) % 7;
    p.block[1] = 1 + tu_rng_next(s) % 7;
    p.seed = tu_rng_next(s);
    p.stream = tu_rng_next(s) % 4;
    p.mode = (dropblock_mode)(tu_rng_next(s) % 5 == 0);
    p.training = tu_rng_next(s) % 20 != 0;
    if (tu_rng_next(s) % 6 == 0) {
        p.compat = DROPBLOCK_COMPAT_KERAS_CV; /* some refused (a division by zero): by both sides */
        p.layout = DROPBLOCK_NHWC;
    } else {
        p.normalize = (dropblock_normalize)(tu_rng_next(s) % 3);
        p.share = (unsigned)(tu_rng_next(s) % 4);
    }
    return p;
}

static size_t align64(uint64_t n) { return (size_t)((n + 63) & ~UINT64_C(63)); }
#define MAX_ELEMS 524288u
#define REGION_BYTES (2 * align64(MAX_ELEMS * 4) + MAX_ELEMS / 8 + 64)

struct client {
    int index;
    int jobs, warmup;
    dropblock_t *h;
    uint64_t rng;
    /* results */
    int exact, wrong, errors;
    double *lat; /* measured phase, seconds */
    int nlat;
    int per_dev[17];
    char first_problem[512];
};

static pthread_barrier_t phase_barrier;

static void problem(struct client *c, const char *fmt, const char *a, const char *b)
{
    if (c->first_problem[0]) return;
    snprintf(c->first_problem, sizeof c->first_problem, fmt, a, b);
}

/* One job in memory base (tensors at offsets); expected results computed here. */
struct pending {
    dropblock_params p;
    uint8_t *in, *out, *mask;
    dropblock_ticket *t;
    double t0;
    void *want;
    uint8_t *wmask;
    dropblock_result wr;
    int wrc;
};

static void prepare(struct client *c, struct pending *j, const dropblock_params *p, uint8_t *base)
{
    j->p = *p;
    uint64_t n = dropblock_numel(&j->p), tb = dropblock_tensor_bytes(&j->p), mb = dropblock_mask_bytes(&j->p);
    int inplace = tu_rng_next(&c->rng) % 3 == 0, with_mask = tu_rng_next(&c->rng) % 2;
    j->in = base;
    j->out = inplace ? base : base + align64(tb);
    j->mask = with_mask ? base + 2 * align64(tb) : NULL;
    db_fill_tf_uniform(j->p.dtype, tu_rng_next(&c->rng), 7, n, j->in);
    j->want = malloc(tb);
    j->wmask = calloc(1, mb);
    j->wrc = db_reference_run(&j->p, j->in, j->want, j->mask ? j->wmask : NULL, NULL, &j->wr);
}

static const char *pick_device(struct client *c)
{
    uint64_t r = tu_rng_next(&c->rng) % 10;
    if (r < 7 || !ndevs) return r % 2 ? "auto" : NULL;
    return devs[tu_rng_next(&c->rng) % ndevs].id;
}

static void finish(struct client *c, struct pending *j, int rc, const dropblock_result *gr, int measured)
{
    double dt = tu_now_s() - j->t0;
    uint64_t tb = dropblock_tensor_bytes(&j->p), mb = dropblock_mask_bytes(&j->p);
    if (rc || j->wrc) {
        if (rc == j->wrc) c->exact++; /* both refuse it (none expected) */
        else {
            c->errors++;
            char m[64];
            snprintf(m, sizeof m, "rc %d (reference %d)", rc, j->wrc);
            problem(c, "job failed: %s: %s", m, gr->message);
        }
    } else if (gr->kept != j->wr.kept || gr->total != j->wr.total || gr->scale_bits != j->wr.scale_bits ||
               memcmp(j->out, j->want, tb) || (j->mask && memcmp(j->mask, j->wmask, mb))) {
        c->wrong++;
        char what[400];
        const dropblock_params *q = &j->p;
        const char *part = (gr->kept != j->wr.kept || gr->total != j->wr.total || gr->scale_bits != j->wr.scale_bits)
                               ? "K/S/scale"
                           : memcmp(j->out, j->want, tb) ? "output"
                                                         : "mask";
        snprintf(what, sizeof what,
                 " (%s differs): %llux%llux%llux%llu %s %s rate %g block %llux%llu seed %llu "
                 "stream %llu %s share %u %s %s%s%s",
                 part, (unsigned long long)q->shape[0], (unsigned long long)q->shape[1],
                 (unsigned long long)q->shape[2], (unsigned long long)q->shape[3], dropblock_layout_name(q->layout),
                 dropblock_dtype_name(q->dtype), (double)q->rate, (unsigned long long)q->block[0],
                 (unsigned long long)q->block[1], (unsigned long long)q->seed, (unsigned long long)q->stream,
                 dropblock_normalize_name(q->normalize), q->share, dropblock_compat_name(q->compat),
                 q->mode ? "backward" : "forward", q->training ? "" : " eval", j->out == j->in ? " in place" : "");
        problem(c, "result on %s differs from the reference%s", gr->device, what);
    } else {
        c->exact++;
    }
    for (size_t d = 0; d < ndevs; d++)
        if (!strcmp(gr->device, devs[d].id)) c->per_dev[d]++;
    if (measured) c->lat[c->nlat++] = dt;
    free(j->want);
    free(j->wmask);
    j->want = NULL;
    j->wmask = NULL;
}

static void run_phase(struct client *c, int njobs, int measured)
{
    uint8_t *region = NULL;
    int rc = dropblock_alloc(c->h, REGION_BYTES, (void **)&region);
    if (rc) {
        c->errors += njobs;
        problem(c, "alloc: %s%s", dropblock_strerror(rc), "");
        return;
    }
    int done = 0;
    if (!measured && (size_t)c->index < ndevs) {
        /* the largest job on each device during the warm-up: devices keep buffers sized for the
         * largest job they have seen, which is growth by design, not a leak */
        dropblock_params p;
        dropblock_params_init(&p);
        p.shape[0] = 4;
        p.shape[1] = 256;
        p.shape[2] = 64;
        p.shape[3] = 64; /* HUGE_ELEMS, f32 */
        uint8_t *big = NULL;
        uint64_t tb = dropblock_tensor_bytes(&p);
        if (!dropblock_alloc(c->h, 2 * align64(tb) + dropblock_mask_bytes(&p) + 128, (void **)&big)) {
            /* page-aligned (devices may import it) and 4 bytes off (they copy it) */
            for (int off = 0; off <= 4 && done < njobs; off += 4) {
                struct pending j;
                dropblock_result gr;
                prepare(c, &j, &p, big + off);
                j.t0 = tu_now_s();
                rc = dropblock_run(c->h, &j.p, j.in, j.out, j.mask, devs[c->index].id, &gr);
                finish(c, &j, rc, &gr, measured);
                done++;
            }
            dropblock_free(c->h, big);
        }
    }
    while (done < njobs) {
        uint64_t kind = tu_rng_next(&c->rng) % 20;
        if (kind == 0 && njobs - done >= 3) {
            /* a batch: three submits at once, waited for in reverse order, each in its own region */
            struct pending j[3];
            uint8_t *mem[3] = {0};
            for (int i = 0; i < 3; i++) {
                dropblock_params p;
                do p = random_params(&c->rng);
                while (dropblock_numel(&p) > MAX_ELEMS);
                if ((rc = dropblock_alloc(c->h, REGION_BYTES, (void **)&mem[i]))) break;
                prepare(c, &j[i], &p, mem[i]);
                j[i].t0 = tu_now_s();
                if ((rc = dropblock_submit(c->h, &j[i].p, j[i].in, j[i].out, j[i].mask, pick_device(c), &j[i].t))) {
                    dropblock_result gr;
                    memset(&gr, 0, sizeof gr);
                    finish(c, &j[i], rc, &gr, measured);
                    j[i].t = NULL;
                }
            }
            for (int i = 2; i >= 0; i--) {
                if (!mem[i] || !j[i].t) continue;
                dropblock_result gr;
                rc = dropblock_wait(c->h, j[i].t, -1, &gr);
                finish(c, &j[i], rc, &gr, measured);
            }
            for (int i = 0; i < 3; i++)
                if (mem[i]) dropblock_free(c->h, mem[i]);
                else {
                    c->errors++;
                    problem(c, "batch alloc failed%s%s", "", "");
                }
            done += 3;
            continue;
        }
        /* now and then a fresh region of the job's size: register/unregister churn */
        uint8_t *fresh = NULL;
        struct pending j;
        dropblock_params p = random_params(&c->rng);
        if (kind == 1 || dropblock_numel(&p) > MAX_ELEMS) {
            uint64_t tb = dropblock_tensor_bytes(&p);
            if (dropblock_alloc(c->h, 2 * align64(tb) + dropblock_mask_bytes(&p) + 64, (void **)&fresh)) fresh = NULL;
        }
        prepare(c, &j, &p, fresh ? fresh : region);
        dropblock_result gr;
        j.t0 = tu_now_s();
        rc = dropblock_run(c->h, &j.p, j.in, j.out, j.mask, pick_device(c), &gr);
        finish(c, &j, rc, &gr, measured);
        if (fresh) dropblock_free(c->h, fresh);
        done++;
    }
    if ((rc = dropblock_free(c->h, region))) problem(c, "free: %s%s", dropblock_strerror(rc), "");
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    char msg[512];
    int rc = dropblock_connect(&c->h, sock_path, msg, sizeof msg);
    if (rc) {
        problem(c, "connect: %s%s", msg, "");
        c->errors = c->jobs + c->warmup;
    }
    if (!rc) run_phase(c, c->warmup, 0);
    pthread_barrier_wait(&phase_barrier); /* warm-up done: the main thread samples */
    pthread_barrier_wait(&phase_barrier); /* sampled: go */
    if (!rc) run_phase(c, c->jobs, 1);
    pthread_barrier_wait(&phase_barrier); /* done: the main thread samples */
    pthread_barrier_wait(&phase_barrier);
    if (!rc) dropblock_close(c->h);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double quantile(const double *v, int n, double q)
{
    if (n <= 0) return 0;
    int i = (int)(q * (n - 1) + 0.5);
    return v[i];
}

int main(int argc, char **argv)
{
    int nclients = 16, jobs = 40, warmup = 10;
    if (argc < 2) {
        fprintf(stderr, "usage: %s DROPBLOCKD [--clients N] [--jobs N] [--warmup N] [--long] [--cache-dir DIR]\n",
                argv[0]);
        return 2;
    }
    daemon_exe = argv[1];
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--long")) jobs = 150;
        else if (!strcmp(argv[i], "--clients") && i + 1 < argc) nclients = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--jobs") && i + 1 < argc) jobs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--cache-dir") && i + 1 < argc) cache_dir = argv[++i];
        else {
            fprintf(stderr, "load_test: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (nclients < 1 || nclients > 256 || jobs < 1 || warmup < 0) {
        fprintf(stderr, "load_test: --clients 1..256, --jobs >= 1, --warmup >= 0\n");
        return 2;
    }
    char cache_buf[128];
    if (tu_test_start("load", &slow, tmpdir, sizeof tmpdir, sock_path, sizeof sock_path, cache_buf, sizeof cache_buf))
        return 1;
    if (!cache_dir) cache_dir = cache_buf;

    int failed = 0;
    pid_t d = daemon_start();
    if (d < 0) return 1;
    dropblock_t *h = NULL;
    char msg[512];
    if (dropblock_connect(&h, sock_path, msg, sizeof msg) || dropblock_devices(h, devs, 16, &ndevs)) {
        fprintf(stderr, "load_test: %s\n", msg);
        kill(d, SIGKILL);
        return 1;
    }
    if (ndevs > 16) ndevs = 16;
    dropblock_close(h);
    usleep(100000);
    int fds_base = count_fds(d);
    printf("load: %d clients x %d jobs (+%d warm-up each) on %zu devices:", nclients, jobs, warmup, ndevs);
    for (size_t i = 0; i < ndevs; i++) printf(" %s", devs[i].id);
    printf("\n");

    struct client *cs = calloc((size_t)nclients, sizeof *cs);
    pthread_t *th = calloc((size_t)nclients, sizeof *th);
    pthread_barrier_init(&phase_barrier, NULL, (unsigned)nclients + 1);
    for (int i = 0; i < nclients; i++) {
        cs[i].index = i;
        cs[i].jobs = jobs;
        cs[i].warmup = warmup;
        cs[i].rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1);
        cs[i].lat = calloc((size_t)jobs + 3, sizeof(double));
        pthread_create(&th[i], NULL, client_main, &cs[i]);
    }
    pthread_barrier_wait(&phase_barrier);
    usleep(500000); /* the last frees reach the daemon, which trims its heap once idle (100 ms) */
    struct rss warm = read_rss(d);
    save_smaps(d, "warm");
    int fds_warm = count_fds(d);
    double t0 = tu_now_s();
    pthread_barrier_wait(&phase_barrier);
    pthread_barrier_wait(&phase_barrier);
    double wall = tu_now_s() - t0;
    usleep(500000);
    struct rss end = read_rss(d);
    save_smaps(d, "end");
    pthread_barrier_wait(&phase_barrier);
    for (int i = 0; i < nclients; i++) pthread_join(th[i], NULL);

    int exact = 0, wrong = 0, errors = 0, nlat = 0, per_dev[17] = {0};
    double *lat = calloc((size_t)nclients * ((size_t)jobs + 3), sizeof *lat);
    for (int i = 0; i < nclients; i++) {
        exact += cs[i].exact;
        wrong += cs[i].wrong;
        errors += cs[i].errors;
        for (size_t k = 0; k < ndevs; k++) per_dev[k] += cs[i].per_dev[k];
        memcpy(lat + nlat, cs[i].lat, (size_t)cs[i].nlat * sizeof *lat);
        nlat += cs[i].nlat;
        if (cs[i].first_problem[0]) printf("FAIL client %d: %s\n", i, cs[i].first_problem);
    }
    qsort(lat, (size_t)nlat, sizeof *lat, cmp_double);
    int total = nclients * (jobs + warmup);
    printf("load: %d jobs: %d exact, %d wrong, %d errors\n", total, exact, wrong, errors);
    printf("load: measured phase %d jobs in %.2f s: %.1f jobs/s; round trip p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
           nlat, wall, nlat / wall, quantile(lat, nlat, 0.5) * 1e3, quantile(lat, nlat, 0.99) * 1e3,
           nlat ? lat[nlat - 1] * 1e3 : 0.0);
    printf("load: jobs per device:");
    for (size_t k = 0; k < ndevs; k++) printf(" %s %d", devs[k].id, per_dev[k]);
    printf("\n");
    if (exact != total || wrong || errors) failed = 1;

    double growth = warm.total > 0 ? 100.0 * (double)(end.total - warm.total) / (double)warm.total : 0;
    printf("load: daemon RSS after warm-up %.1f MiB (anon %.1f, file %.1f, shmem %.1f), at the end %.1f MiB "
           "(anon %.1f, file %.1f, shmem %.1f): %+.1f%%\n",
           warm.total / 1024.0, warm.anon / 1024.0, warm.file / 1024.0, warm.shmem / 1024.0, end.total / 1024.0,
           end.anon / 1024.0, end.file / 1024.0, end.shmem / 1024.0, growth);
    const char *lim = getenv("DROPBLOCK_LOAD_RSS_LIMIT");
    double limit = lim && *lim ? atof(lim) : 10.0;
    if (lim && !strcmp(lim, "off")) printf("load: RSS growth not checked (DROPBLOCK_LOAD_RSS_LIMIT=off)\n");
    else if (warm.total <= 0 || growth >= limit) {
        printf("FAIL the daemon's RSS grew by %.1f%% (limit %.0f%%)\n", growth, limit);
        failed = 1;
    }
    /* descriptors: back to the baseline once every client is gone */
    int fds_end = -1;
    for (double t = tu_now_s(); tu_now_s() - t < 10 * slow; usleep(50000))
        if ((fds_end = count_fds(d)) <= fds_base) break;
    printf("load: daemon descriptors %d before the clients, %d after the warm-up (16 connected), %d after they left\n",
           fds_base, fds_warm, fds_end);
    if (fds_end != fds_base) {
        printf("FAIL descriptors did not return to the baseline\n");
        failed = 1;
    }
    kill(d, SIGTERM);
    int st = -1;
    for (double t = tu_now_s(); tu_now_s() - t < 60 * slow; usleep(20000))
        if (waitpid(d, &st, WNOHANG) == d) break;
        else st = -1;
    if (st < 0) {
        kill(d, SIGKILL);
        waitpid(d, NULL, 0);
    }
    if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
        printf("FAIL the daemon did not exit 0 after SIGTERM (status 0x%x)\n", st);
        failed = 1;
    }
    pthread_barrier_destroy(&phase_barrier);
    for (int i = 0; i < nclients; i++) free(cs[i].lat);
    free(cs);
    free(th);
    free(lat);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", tmpdir);
    printf("load_test: %s\n", failed ? "FAILED" : "passed");
    return failed;
}
