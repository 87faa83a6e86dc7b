/* backend_cpu.c: the built-in CPU backend, which is the reference implementation itself. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "kernel_params.h"
#include "reference.h"

/* the baseline's kernels take every buffer, as GLSL sees them all; each uses a few */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define DB_LANG_C
#include "db_baseline.h"
#pragma GCC diagnostic pop

uint64_t db_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

double db_now_us_f(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cpu_enumerate(const struct db_backend_config *cfg, struct db_device *out, size_t cap, char *msg, size_t len)
{
    (void)cfg; (void)msg; (void)len;
    if (cap < 1) return 0;
    memset(out, 0, sizeof *out);
    snprintf(out->info.api, sizeof out->info.api, "cpu");
    snprintf(out->info.vendor, sizeof out->info.vendor, "dropblockd");
    snprintf(out->info.name, sizeof out->info.name, "built-in CPU reference");
    snprintf(out->info.driver, sizeof out->info.driver, "%d.%d", DROPBLOCK_VERSION_MAJOR, DROPBLOCK_VERSION_MINOR);
    out->info.kind = DROPBLOCK_DEVICE_CPU;
    out->info.max_buffer = UINT64_MAX;
    out->ops = &db_backend_cpu;
    return 1;
}

static int cpu_prepare(struct db_device *dev, const struct db_backend_config *cfg, char *msg, size_t len)
{
    (void)dev; (void)cfg; (void)msg; (void)len;
    return DROPBLOCK_OK;
}

static int cpu_run(struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
                   dropblock_result *res)
{
    (void)dev;
    uint64_t t0 = db_now_us();
    int rc = db_reference_run(&pl->p, in, out, mask, NULL, res);
    res->timing_us[3] = db_now_us() - t0;
    return rc;
}

static void cpu_release(struct db_device *dev) { (void)dev; }

/* ---- bench: the baseline (db_baseline.h) in C ------------------------------------------ */

static void run_baseline(const uint32_t *prm, uint32_t *noise, uint32_t *padded, uint32_t *pooled, uint32_t *part,
                         const uint32_t *x, uint32_t *y, uint64_t nwords)
{
    const uint32_t planes = prm[BLP_PLANES], n = prm[BLP_NUMEL], nnoise = planes * prm[BLP_HN] * prm[BLP_WN];
    const uint32_t npad = planes * (prm[BLP_HN] + prm[BLP_BS] - 1) * (prm[BLP_WN] + prm[BLP_BS] - 1);
    for (uint32_t g = 0; g < (nnoise + 3) / 4; g++) bl_bernoulli(prm, noise, padded, pooled, part, x, y, g);
    for (uint32_t i = 0; i < npad; i++) bl_pad(prm, noise, padded, pooled, part, x, y, i);
    for (uint32_t i = 0; i < n; i++) bl_pool(prm, noise, padded, pooled, part, x, y, i);
    for (uint32_t i = 0; i < n; i++) bl_one_minus(prm, noise, padded, pooled, part, x, y, i);
    uint32_t nin = (n + BL_SEG - 1) / BL_SEG, src = 1;
    for (uint32_t g = 0; g < nin; g++) bl_sum_noise(prm, noise, padded, pooled, part, x, y, g);
    while (nin > BL_SEG) {
        uint32_t nout = (nin + BL_SEG - 1) / BL_SEG;
        for (uint32_t g = 0; g < nout; g++) bl_sum_part(prm, noise, padded, pooled, part, x, y, g, src, nin, src + nin);
        src += nin;
        nin = nout;
    }
    bl_scale(prm, noise, padded, pooled, part, x, y, src, nin);
    for (uint64_t i = 0; i < nwords; i++) bl_mul(prm, noise, padded, pooled, part, x, y, (uint32_t)i);
}

static int cpu_bench(struct db_device *dev, const struct db_plan *pl, const void *x, unsigned whats, int warmup,
                     int reps, double *us, char *msg, size_t len)
{
    const uint64_t bytes = pl->numel * dropblock_dtype_size(pl->p.dtype), nwords = (bytes + 3) / 4;
    uint32_t blp[BLP_COUNT] = {0};
    uint64_t npad = 0, nparts = 0;
    if (whats & (1u << DB_BENCH_MASK)) {
        db_msg(msg, len, "the CPU reference has no separate mask pass");
        whats &= ~(1u << DB_BENCH_MASK);
        for (int r = 0; r < reps; r++) us[DB_BENCH_MASK * reps + r] = -1;
    }
    if ((whats & (1u << DB_BENCH_BASELINE)) && db_baseline_params(pl, blp, &npad, &nparts, msg, len)) {
        whats &= ~(1u << DB_BENCH_BASELINE);
        for (int r = 0; r < reps; r++) us[DB_BENCH_BASELINE * reps + r] = -1;
    }
    const int base = (whats & (1u << DB_BENCH_BASELINE)) != 0;
    uint32_t *xw = malloc(nwords * 4 + 4), *y = malloc(nwords * 4 + 4);
    uint32_t *noise = base ? malloc(pl->numel * 4) : NULL, *padded = base ? malloc(npad * 4 + 4) : NULL;
    uint32_t *pooled = base ? malloc(pl->numel * 4) : NULL, *part = base ? malloc(nparts * 4) : NULL;
    int rc = DROPBLOCK_OK;
    if (!y || !xw || (base && (!noise || !padded || !pooled || !part))) {
        db_msg(msg, len, "out of host memory");
        rc = DROPBLOCK_EEXHAUSTED;
        goto done;
    }
    memcpy(xw, x, bytes);
    struct db_plan bw = *pl;
    bw.p.mode = DROPBLOCK_BACKWARD;
    for (int r = -warmup; r < reps && !rc; r++)
        for (int w = 0; w < DB_BENCH_N && !rc; w++) {
            if (!(whats & (1u << w))) continue;
            double t0 = db_now_us_f();
            dropblock_result res;
            memset(&res, 0, sizeof res);
            if (w == DB_BENCH_COPY) memcpy(y, xw, bytes);
            else if (w == DB_BENCH_OP || w == DB_BENCH_BACKWARD) rc = cpu_run(dev, w == DB_BENCH_OP ? pl : &bw, xw, y, NULL, &res);
            else run_baseline(blp, noise, padded, pooled, part, xw, y, nwords);
            if (rc) db_msg(msg, len, "%s", res.message);
            if (r >= 0) us[w * reps + r] = db_now_us_f() - t0;
        }
done:
    free(xw); free(y); free(noise); free(padded); free(pooled); free(part);
    return rc;
}

const struct backend_ops db_backend_cpu = {"cpu", cpu_enumerate, cpu_prepare, cpu_run, cpu_bench, cpu_release};
