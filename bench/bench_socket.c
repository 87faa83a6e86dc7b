/* bench_socket.c: what a training process sees of the daemon: client call to reply.
 *   --latency:    a 1x1x4x4 f32 job, many round trips, p50/p99/mean in microseconds
 *   --throughput: a large job end to end (shared memory in, device, shared memory out), GB/s
 * Medians over warmed-up repetitions; these machines are noisy, so no single timing counts. */
#include "bench_socket.h"

#include "reference.h"

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
                  (unsigned long long *)&shape[2], (unsigned long long *)&shape[3]) == 4 ? 0 : -1;
}

int bench_socket(int argc, char **argv)
{
    const char *path = NULL, *device = "auto", *dtype = "f32";
    int latency = 0, throughput = 0, json = 0, reps = 0;
    uint64_t shape[4] = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--socket") && v) { path = v; i++; }
        else if (!strcmp(a, "--latency")) latency = 1;
        else if (!strcmp(a, "--throughput")) throughput = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--device") && v) { device = v; i++; }
        else if (!strcmp(a, "--dtype") && v) { dtype = v; i++; }
        else if (!strcmp(a, "--reps") && v) { reps = atoi(v); i++; }
        else if (!strcmp(a, "--shape") && v) {
            if (parse_shape(v, shape)) { fprintf(stderr, "dropblock-bench: --shape %s: want N,C,H,W\n", v); return 2; }
            i++;
        } else {
            fprintf(stderr, "dropblock-bench: unknown argument %s\n"
                    "usage: dropblock-bench --socket PATH --latency|--throughput [--device ID] [--reps N]"
                    " [--shape N,C,H,W] [--dtype f32|f16|bf16] [--json]\n", a);
            return 2;
        }
    }
    if (latency == throughput) {
        fprintf(stderr, "dropblock-bench: give one of --latency or --throughput with --socket\n");
        return 2;
    }
    dropblock_params p;
    dropblock_params_init(&p);
    if (latency) { p.shape[0] = 1; p.shape[1] = 1; p.shape[2] = 4; p.shape[3] = 4; p.block[0] = p.block[1] = 2; }
    else { p.shape[0] = 64; p.shape[1] = 1024; p.shape[2] = 14; p.shape[3] = 14; }
    if (shape[0]) memcpy(p.shape, shape, sizeof shape);
    int dt = dropblock_parse_dtype(dtype);
    if (dt < 0) { fprintf(stderr, "dropblock-bench: --dtype %s: must be f32, f16 or bf16\n", dtype); return 2; }
    p.dtype = (dropblock_dtype)dt;
    char msg[512];
    if (dropblock_params_validate(&p, msg, sizeof msg)) { fprintf(stderr, "dropblock-bench: %s\n", msg); return 2; }
    if (reps <= 0) reps = latency ? 5000 : 20;

    dropblock_t *h;
    int rc = dropblock_connect(&h, path, msg, sizeof msg);
    if (rc) { fprintf(stderr, "dropblock-bench: %s\n", msg); return 1; }
    uint64_t bytes = dropblock_tensor_bytes(&p);
    void *x, *y;
    if (dropblock_alloc(h, bytes, &x) || dropblock_alloc(h, bytes, &y)) {
        fprintf(stderr, "dropblock-bench: cannot allocate %llu bytes of shared memory twice\n", (unsigned long long)bytes);
        dropblock_close(h);
        return 1;
    }
    db_fill_tf_uniform(p.dtype, 0, 1, dropblock_numel(&p), x);
    double *t = calloc((size_t)reps, sizeof *t);
    dropblock_result res;
    int warm = latency ? 500 : 3;
    for (int i = 0; i < warm + reps; i++) {
        p.stream = (uint64_t)i; /* a new mask every call, as in training */
        double t0 = now_us();
        rc = dropblock_run(h, &p, x, y, NULL, device, &res);
        double dt_us = now_us() - t0;
        if (rc) {
            fprintf(stderr, "dropblock-bench: job failed: %s: %s\n", dropblock_strerror(rc), res.message);
            free(t);
            dropblock_close(h);
            return 1;
        }
        if (i >= warm) t[i - warm] = dt_us;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    double mean = 0;
    for (int i = 0; i < reps; i++) mean += t[i];
    mean /= reps;
    double p50 = pct(t, reps, 0.5), p99 = pct(t, reps, 0.99);
    if (latency) {
        printf("latency %llux%llux%llux%llu %s on %s: p50 %.1f us, p99 %.1f us, mean %.1f us over %d round trips\n",
               (unsigned long long)p.shape[0], (unsigned long long)p.shape[1], (unsigned long long)p.shape[2],
               (unsigned long long)p.shape[3], dtype, res.device, p50, p99, mean, reps);
        if (json)
            printf("{\"mode\":\"latency\",\"device\":\"%s\",\"shape\":[%llu,%llu,%llu,%llu],\"dtype\":\"%s\",\"reps\":%d,"
                   "\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%.1f}\n", res.device,
                   (unsigned long long)p.shape[0], (unsigned long long)p.shape[1], (unsigned long long)p.shape[2],
                   (unsigned long long)p.shape[3], dtype, reps, p50, p99, mean);
    } else {
        double gbps = 2.0 * (double)bytes / p50 / 1e3; /* read x + write y */
        printf("throughput %llux%llux%llux%llu %s on %s: median %.0f us end to end, %.2f GB/s (x read + y written); "
               "device time %llu us\n", (unsigned long long)p.shape[0], (unsigned long long)p.shape[1],
               (unsigned long long)p.shape[2], (unsigned long long)p.shape[3], dtype, res.device, p50, gbps,
               (unsigned long long)res.timing_us[3]);
        if (json)
            printf("{\"mode\":\"throughput\",\"device\":\"%s\",\"shape\":[%llu,%llu,%llu,%llu],\"dtype\":\"%s\",\"reps\":%d,"
                   "\"median_us\":%.0f,\"gbps\":%.3f,\"device_us\":%llu}\n", res.device,
                   (unsigned long long)p.shape[0], (unsigned long long)p.shape[1], (unsigned long long)p.shape[2],
                   (unsigned long long)p.shape[3], dtype, reps, p50, gbps, (unsigned long long)res.timing_us[3]);
    }
    free(t);
    dropblock_free(h, x);
    dropblock_free(h, y);
    dropblock_close(h);
    return 0;
}
