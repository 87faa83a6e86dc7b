/* bench_socket.c: what a training process sees of the daemon: client call to reply.
 *   --latency:    a 1x1x4x4 f32 job, many round trips, p50/p99/mean in microseconds
 *   --throughput: a large job end to end (shared memory in, device, shared memory out), GB/s, next
 *                 to the host<->device copy bandwidth of the same device through the same API,
 *                 measured in-process with the engine afterwards (DB_BENCH_XFER), and their ratio
 *   --crossover:  round-trip p50 by job size on the built-in CPU backend (cpu:0) and on a device,
 *                 the daemon's small-job ladder (daemon/smalljob_measure.c) seen from a client, and where
 *                 the device gets faster (daemon/smalljob.h's rule)
 * Medians over warmed-up repetitions; these machines are noisy, so no single timing counts. */
#include "bench_socket.h"

#include "engine.h"
#include "reference.h"
#include "smalljob.h"

#include <dropblock/dropblock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *sorted, int n, double p)
{
    int i = (int)(p * (n - 1) + 0.5);
    return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static int parse_shape(const char *s, uint64_t shape[4])
{
    return sscanf(s, "%llu,%llu,%llu,%llu", (unsigned long long *)&shape[0], (unsigned long long *)&shape[1],
                  (unsigned long long *)&shape[2], (unsigned long long *)&shape[3]) == 4
               ? 0
               : -1;
}

/* The p50 of reps round trips of p on each of two devices, alternating (warm first). */
static int time_pair(dropblock_t *h, dropblock_params *p, void *x, void *y, const char *dev[2], int reps, double p50[2])
{
    double *t = calloc((size_t)reps * 2, sizeof *t);
    if (!t) return -1;
    dropblock_result res;
    for (int i = 0; i < 3 + reps; i++)
        for (int d = 0; d < 2; d++) {
            p->stream = (uint64_t)i;
            double t0 = now_us();
            int rc = dropblock_run(h, p, x, y, NULL, dev[d], &res);
            double dt = now_us() - t0;
            if (rc) {
                fprintf(stderr, "dropblock-bench: job on %s failed: %s: %s\n", dev[d], dropblock_strerror(rc),
                        res.message);
                free(t);
                return -1;
            }
            if (i >= 3) t[d * reps + i - 3] = dt;
        }
    for (int d = 0; d < 2; d++) {
        qsort(t + d * reps, (size_t)reps, sizeof *t, cmp_double);
        p50[d] = pct(t + d * reps, reps, 0.5);
    }
    free(t);
    return 0;
}

/* The median host<->device copy time (DB_BENCH_XFER) of x, a tensor of p, on the device whose
 * id the daemon reported (e.g. "opencl:0"), opened in-process with the same backend; -1 with
 * the reason in msg where it cannot be timed. */
static double xfer_median(const char *id, const dropblock_params *p, const void *x, int reps, char *msg, size_t len)
{
    char api[32];
    size_t n = strcspn(id, ":");
    if (n == 0 || n >= sizeof api || !id[n]) {
        snprintf(msg, len, "device id %s: want API:N", id);
        return -1;
    }
    memcpy(api, id, n);
    api[n] = 0;
    struct db_engine *e;
    char why[512];
    if (db_engine_open(&e, api, id, NULL, NULL, NULL, why, sizeof why)) {
        snprintf(msg, len, "cannot open %s in-process: %s", id, why);
        return -1;
    }
    double *us = calloc((size_t)DB_BENCH_N * (size_t)reps, sizeof *us), med = -1;
    int dev = db_engine_pick(e, id, why, sizeof why);
    if (dev >= 0) why[0] = 0;
    if (dev < 0) snprintf(msg, len, "cannot open %s in-process: %s", id, why);
    else if (!us) snprintf(msg, len, "out of memory");
    else if (db_engine_bench(e, dev, p, x, 1u << DB_BENCH_XFER, 3, reps, us, why, sizeof why))
        snprintf(msg, len, "%s in-process: %s", id, why);
    else if (us[DB_BENCH_XFER * reps] < 0) snprintf(msg, len, "%s cannot time it: %s", id, why);
    else {
        qsort(us + DB_BENCH_XFER * reps, (size_t)reps, sizeof *us, cmp_double);
        med = pct(us + DB_BENCH_XFER * reps, reps, 0.5);
    }
    free(us);
    db_engine_close(e);
    return med;
}

/* --crossover: the ladder of daemon/smalljob_measure.c (f32 1x1x4x4, 1x1x16x16, then 1xCx32x32 with C = 1, 4,
 * ... 1024), each size's round trip on cpu:0 and on the device, up to the first size the device
 * wins and one more. */
static int bench_crossover(dropblock_t *h, const char *device, int reps, int json)
{
    char devbuf[sizeof((dropblock_device_info *)0)->id];
    if (!strcmp(device, "auto")) {
        /* the device a large auto job goes to: the best kind other than the built-in CPU */
        dropblock_device_info infos[32];
        size_t n = 0;
        if (dropblock_devices(h, infos, 32, &n)) {
            fprintf(stderr, "dropblock-bench: cannot list devices\n");
            return 1;
        }
        int best = -1;
        for (size_t i = 0; i < n && i < 32; i++)
            if (infos[i].healthy && infos[i].kind != DROPBLOCK_DEVICE_CPU &&
                (best < 0 || (infos[i].kind != DROPBLOCK_DEVICE_OTHER &&
                              (infos[best].kind == DROPBLOCK_DEVICE_OTHER || infos[i].kind > infos[best].kind))))
                best = (int)i;
        if (best < 0) {
            fprintf(stderr, "dropblock-bench: no device besides the built-in CPU to compare\n");
            return 1;
        }
        snprintf(devbuf, sizeof devbuf, "%s", infos[best].id);
        device = devbuf;
    }
    const char *dev[2] = {"cpu:0", device};
    struct sj_rung r[8];
    int n = 0, lost_at = -1;
    size_t cap = (size_t)1024 * 32 * 32 * 4;
    void *x, *y;
    if (dropblock_alloc(h, cap, &x) || dropblock_alloc(h, cap, &y)) {
        fprintf(stderr, "dropblock-bench: cannot allocate %zu bytes of shared memory twice\n", cap);
        return 1;
    }
    db_fill_tf_uniform(DROPBLOCK_F32, 0, 1, cap / 4, x);
    if (!json) printf("%10s %12s %12s   (round trip p50, us; %d each)\n", "bytes", dev[0], dev[1], reps);
    for (int i = 0; i < 8 && (lost_at < 0 || i <= lost_at + 1); i++) {
        dropblock_params p;
        dropblock_params_init(&p);
        p.shape[0] = 1;
        if (i == 0) {
            p.shape[1] = 1;
            p.shape[2] = p.shape[3] = 4;
        } else if (i == 1) {
            p.shape[1] = 1;
            p.shape[2] = p.shape[3] = 16;
        } else {
            p.shape[1] = UINT64_C(1) << (2 * (i - 2));
            p.shape[2] = p.shape[3] = 32;
        }
        p.rate = 0.1f;
        p.block[0] = p.block[1] = 3;
        p.seed = 42;
        double p50[2];
        /* fewer round trips for the larger jobs */
        int rr = reps >> (i > 3 ? i - 3 : 0);
        if (time_pair(h, &p, x, y, dev, rr < 5 ? 5 : rr, p50)) return 1;
        r[n].bytes = dropblock_tensor_bytes(&p) + dropblock_mask_bytes(&p);
        r[n].cpu_us = p50[0];
        r[n].dev_us = p50[1];
        if (!json) printf("%10llu %12.1f %12.1f\n", (unsigned long long)r[n].bytes, p50[0], p50[1]);
        if (p50[0] > p50[1]) {
            if (lost_at < 0) lost_at = n;
        } else lost_at = -1; /* the CPU won again: go on, as the daemon's ladder does */
        n++;
    }
    /* the daemon's rule: the crossing above the largest size the CPU won */
    uint64_t thr = sj_choose(r, n, 8, SJ_DEFAULT_BYTES);
    printf("crossover cpu:0 vs %s: auto jobs of at most %llu bytes are faster on cpu:0 (round trips through the "
           "daemon)\n",
           device, (unsigned long long)thr);
    if (json) {
        printf("{\"mode\":\"crossover\",\"cpu\":\"cpu:0\",\"device\":\"%s\",\"threshold_bytes\":%llu,\"ladder\":[",
               device, (unsigned long long)thr);
        for (int i = 0; i < n; i++)
            printf("%s{\"bytes\":%llu,\"cpu_p50_us\":%.1f,\"device_p50_us\":%.1f}", i ? "," : "",
                   (unsigned long long)r[i].bytes, r[i].cpu_us, r[i].dev_us);
        printf("]}\n");
    }
    dropblock_free(h, x);
    dropblock_free(h, y);
    return 0;
}

/* What the daemon modes were asked for on the command line. */
struct sock_args {
    const char *path, *device, *dtype;
    int latency, throughput, crossover, json, reps;
    uint64_t shape[4];
};

/* Returns -1 to go on, else an exit status. */
static int parse_sock_args(int argc, char **argv, struct sock_args *a)
{
    memset(a, 0, sizeof *a);
    a->device = "auto";
    a->dtype = "f32";
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(s, "--socket") && v) {
            a->path = v;
            i++;
        } else if (!strcmp(s, "--latency")) a->latency = 1;
        else if (!strcmp(s, "--throughput")) a->throughput = 1;
        else if (!strcmp(s, "--crossover")) a->crossover = 1;
        else if (!strcmp(s, "--json")) a->json = 1;
        else if (!strcmp(s, "--device") && v) {
            a->device = v;
            i++;
        } else if (!strcmp(s, "--dtype") && v) {
            a->dtype = v;
            i++;
        } else if (!strcmp(s, "--reps") && v) {
            a->reps = atoi(v);
            i++;
        } else if (!strcmp(s, "--shape") && v) {
            if (parse_shape(v, a->shape)) {
                fprintf(stderr, "dropblock-bench: --shape %s: want N,C,H,W\n", v);
                return 2;
            }
            i++;
        } else {
            fprintf(stderr,
                    "dropblock-bench: unknown argument %s\n"
                    "usage: dropblock-bench --socket PATH --latency|--throughput|--crossover [--device ID] [--reps N]"
                    " [--shape N,C,H,W] [--dtype f32|f16|bf16] [--json]\n",
                    s);
            return 2;
        }
    }
    if (a->latency + a->throughput + a->crossover != 1) {
        fprintf(stderr, "dropblock-bench: give one of --latency, --throughput or --crossover with --socket\n");
        return 2;
    }
    return -1;
}

/* The job of --latency or --throughput, checked before any connection; 0 or an exit status. */
static int sock_params(struct sock_args *a, dropblock_params *p)
{
    char msg[512];
    dropblock_params_init(p);
    if (a->latency) {
        p->shape[0] = 1;
        p->shape[1] = 1;
        p->shape[2] = 4;
        p->shape[3] = 4;
        p->block[0] = p->block[1] = 2;
    } else {
        p->shape[0] = 64;
        p->shape[1] = 1024;
        p->shape[2] = 14;
        p->shape[3] = 14;
    }
    if (a->shape[0]) memcpy(p->shape, a->shape, sizeof a->shape);
    int dt = dropblock_parse_dtype(a->dtype);
    if (dt < 0) {
        fprintf(stderr, "dropblock-bench: --dtype %s: must be f32, f16 or bf16\n", a->dtype);
        return 2;
    }
    p->dtype = (dropblock_dtype)dt;
    if (dropblock_params_validate(p, msg, sizeof msg)) {
        fprintf(stderr, "dropblock-bench: %s\n", msg);
        return 2;
    }
    if (a->reps <= 0) a->reps = a->latency ? 5000 : 20;
    return 0;
}

/* reps timed round trips of p after warm untimed ones, into t; res is the last job's. */
static int time_jobs(dropblock_t *h, dropblock_params *p, void *x, void *y, const char *device, int warm, int reps,
                     double *t, dropblock_result *res)
{
    for (int i = 0; i < warm + reps; i++) {
        p->stream = (uint64_t)i; /* a new mask every call, as in training */
        double t0 = now_us();
        int rc = dropblock_run(h, p, x, y, NULL, device, res);
        double dt_us = now_us() - t0;
        if (rc) {
            fprintf(stderr, "dropblock-bench: job failed: %s: %s\n", dropblock_strerror(rc), res->message);
            return 1;
        }
        if (i >= warm) t[i - warm] = dt_us;
    }
    return 0;
}

static void print_latency(const struct sock_args *a, const dropblock_params *p, const dropblock_result *res, double p50,
                          double p99, double mean)
{
    printf("latency %llux%llux%llux%llu %s on %s: p50 %.1f us, p99 %.1f us, mean %.1f us over %d round trips\n",
           (unsigned long long)p->shape[0], (unsigned long long)p->shape[1], (unsigned long long)p->shape[2],
           (unsigned long long)p->shape[3], a->dtype, res->device, p50, p99, mean, a->reps);
    if (a->json)
        printf("{\"mode\":\"latency\",\"device\":\"%s\",\"shape\":[%llu,%llu,%llu,%llu],\"dtype\":\"%s\",\"reps\":%d,"
               "\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%.1f}\n",
               res->device, (unsigned long long)p->shape[0], (unsigned long long)p->shape[1],
               (unsigned long long)p->shape[2], (unsigned long long)p->shape[3], a->dtype, a->reps, p50, p99, mean);
}

/* The end-to-end figure, then the same bytes host to device and back through the same API, in
 * this process, and their ratio. */
static void print_throughput(const struct sock_args *a, const dropblock_params *p, const void *x,
                             const dropblock_result *res, double p50)
{
    uint64_t bytes = dropblock_tensor_bytes(p);
    double gbps = 2.0 * (double)bytes / p50 / 1e3; /* read x + write y */
    printf("throughput %llux%llux%llux%llu %s on %s: median %.0f us end to end, %.2f GB/s (x read + y written); "
           "device time %llu us\n",
           (unsigned long long)p->shape[0], (unsigned long long)p->shape[1], (unsigned long long)p->shape[2],
           (unsigned long long)p->shape[3], a->dtype, res->device, p50, gbps, (unsigned long long)res->timing_us[3]);
    char why[640];
    double xus = xfer_median(res->device, p, x, a->reps, why, sizeof why);
    double xgbps = xus > 0 ? 2.0 * (double)bytes / xus / 1e3 : -1, ratio = xgbps > 0 ? gbps / xgbps : -1;
    if (xus < 0) printf("host<->device copy on %s: not timed: %s\n", res->device, why);
    else
        printf("host<->device copy on %s (in-process, the same API, host to device then back): median %.1f us, "
               "%.2f GB/s; end to end / copy %.3f\n",
               res->device, xus, xgbps, ratio);
    if (a->json) {
        printf(
            "{\"mode\":\"throughput\",\"device\":\"%s\",\"shape\":[%llu,%llu,%llu,%llu],\"dtype\":\"%s\",\"reps\":%d,"
            "\"median_us\":%.0f,\"gbps\":%.3f,\"device_us\":%llu",
            res->device, (unsigned long long)p->shape[0], (unsigned long long)p->shape[1],
            (unsigned long long)p->shape[2], (unsigned long long)p->shape[3], a->dtype, a->reps, p50, gbps,
            (unsigned long long)res->timing_us[3]);
        if (xus < 0) printf(",\"xfer_us\":null,\"xfer_gbs\":null,\"e2e_over_xfer\":null}\n");
        else printf(",\"xfer_us\":%.1f,\"xfer_gbs\":%.3f,\"e2e_over_xfer\":%.3f}\n", xus, xgbps, ratio);
    }
}

/* --latency or --throughput on the connected daemon h. */
static int bench_jobs(dropblock_t *h, const struct sock_args *a, dropblock_params *p)
{
    int reps = a->reps;
    uint64_t bytes = dropblock_tensor_bytes(p);
    void *x, *y;
    if (dropblock_alloc(h, bytes, &x) || dropblock_alloc(h, bytes, &y)) {
        fprintf(stderr, "dropblock-bench: cannot allocate %llu bytes of shared memory twice\n",
                (unsigned long long)bytes);
        return 1;
    }
    db_fill_tf_uniform(p->dtype, 0, 1, dropblock_numel(p), x);
    double *t = calloc((size_t)reps, sizeof *t);
    dropblock_result res;
    if (time_jobs(h, p, x, y, a->device, a->latency ? 500 : 3, reps, t, &res)) {
        free(t);
        return 1;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double mean = 0;
    for (int i = 0; i < reps; i++) mean += t[i];
    mean /= reps;
    double p50 = pct(t, reps, 0.5), p99 = pct(t, reps, 0.99);
    if (a->latency) print_latency(a, p, &res, p50, p99, mean);
    else print_throughput(a, p, x, &res, p50);
    free(t);
    dropblock_free(h, x);
    dropblock_free(h, y);
    return 0;
}

int bench_socket(int argc, char **argv)
{
    struct sock_args a;
    int rc = parse_sock_args(argc, argv, &a);
    if (rc >= 0) return rc;
    char msg[512];
    dropblock_t *h;
    if (a.crossover) {
        rc = dropblock_connect(&h, a.path, msg, sizeof msg);
        if (rc) {
            fprintf(stderr, "dropblock-bench: %s\n", msg);
            return 1;
        }
        rc = bench_crossover(h, a.device, a.reps > 0 ? a.reps : 400, a.json);
        dropblock_close(h);
        return rc;
    }
    dropblock_params p;
    if ((rc = sock_params(&a, &p))) return rc;
    rc = dropblock_connect(&h, a.path, msg, sizeof msg);
    if (rc) {
        fprintf(stderr, "dropblock-bench: %s\n", msg);
        return 1;
    }
    rc = bench_jobs(h, &a, &p);
    dropblock_close(h);
    return rc;
}
