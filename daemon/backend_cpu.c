/* backend_cpu.c: the built-in CPU backend, which is the reference implementation itself. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
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

static int cpu_bench(struct db_device *dev, const struct db_plan *pl, const void *x, int what, int warmup, int reps,
                     double *us, char *msg, size_t len)
{
    (void)dev;
    const uint64_t bytes = pl->numel * dropblock_dtype_size(pl->p.dtype), nwords = (bytes + 3) / 4;
    if (what == DB_BENCH_MASK) {
        db_msg(msg, len, "the CPU reference has no separate mask pass");
        return DROPBLOCK_EINVAL;
    }
    if (pl->numel >= (UINT64_C(1) << 32)) {
        db_msg(msg, len, "the benchmark takes tensors of fewer than 2^32 elements");
        return DROPBLOCK_EINVAL;
    }
    const uint64_t b = pl->bh;
    if (what == DB_BENCH_BASELINE && (pl->bh != pl->bw || b % 2 == 0)) {
        db_msg(msg, len, "the baseline (torchvision) takes odd square blocks only");
        return DROPBLOCK_EINVAL;
    }
    uint32_t blp[BLP_COUNT] = {0};
    const uint64_t npad = pl->N * pl->C * (pl->H - b + 1 + 2 * (b / 2)) * (pl->W - b + 1 + 2 * (b / 2));
    uint32_t *y = malloc(nwords * 4 + 4), *noise = NULL, *padded = NULL, *pooled = NULL, *part = NULL;
    int rc = DROPBLOCK_OK;
    if (what == DB_BENCH_BASELINE) {
        noise = malloc(pl->numel * 4);
        padded = malloc(npad * 4 + 4);
        pooled = malloc(pl->numel * 4);
        part = malloc((pl->numel / BL_SEG + 64) * 8);
        blp[BLP_PLANES] = (uint32_t)(pl->N * pl->C);
        blp[BLP_H] = (uint32_t)pl->H;
        blp[BLP_W] = (uint32_t)pl->W;
        blp[BLP_BS] = (uint32_t)b;
        blp[BLP_HN] = (uint32_t)(pl->H - b + 1);
        blp[BLP_WN] = (uint32_t)(pl->W - b + 1);
        blp[BLP_KEY] = pl->key[0];
        blp[BLP_KEY + 1] = pl->key[1];
        memcpy(&blp[BLP_GAMMA], &pl->gamma, 4);
        blp[BLP_NUMEL] = (uint32_t)pl->numel;
        blp[BLP_DTYPE] = (uint32_t)pl->p.dtype;
    }
    uint32_t *xw = malloc(nwords * 4 + 4);
    if (!y || !xw || (what == DB_BENCH_BASELINE && (!noise || !padded || !pooled || !part))) {
        db_msg(msg, len, "out of host memory");
        rc = DROPBLOCK_EEXHAUSTED;
        goto done;
    }
    memcpy(xw, x, bytes);
    for (int r = -warmup; r < reps && !rc; r++) {
        double t0 = db_now_us_f();
        dropblock_result res;
        memset(&res, 0, sizeof res);
        if (what == DB_BENCH_COPY) memcpy(y, xw, bytes);
        else if (what == DB_BENCH_OP) rc = cpu_run(dev, pl, xw, y, NULL, &res);
        else run_baseline(blp, noise, padded, pooled, part, xw, y, nwords);
        if (rc) db_msg(msg, len, "%s", res.message);
        if (r >= 0) us[r] = db_now_us_f() - t0;
    }
done:
    free(xw); free(y); free(noise); free(padded); free(pooled); free(part);
    return rc;
}

const struct backend_ops db_backend_cpu = {"cpu", cpu_enumerate, cpu_prepare, cpu_run, cpu_bench, cpu_release};
