/* vulkan_bench.c: the Vulkan backend's benchmark (engine.h's DB_BENCH_*): bench.comp's steps
 * (the copy, torchvision's kernels as the baseline) on tensors resident on the device, the mask
 * pass alone, and whole jobs (vk_job) on the resident x. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend_vulkan.h"
#include "clock.h"
#include "msg.h"

#include "spv_bench0.h"
#include "spv_bench1.h"
#include "spv_bench2.h"
#include "spv_bench3.h"
#include "spv_bench4.h"
#include "spv_bench5.h"
#include "spv_bench6.h"
#include "spv_bench7.h"
#include "spv_bench8.h"
#include "spv_bench9.h"

#include "db_baseline_params.h"

/* bench.comp's steps' pipelines, made on the first benchmark; backend_vulkan.c's spirv_hash
 * hashes them with the passes */
const struct spv vk_bench_spv[BS_N] = {
    {db_spv_bench0, sizeof db_spv_bench0, "bench copy"}, {db_spv_bench1, sizeof db_spv_bench1, "bench bernoulli"},
    {db_spv_bench2, sizeof db_spv_bench2, "bench pad"},  {db_spv_bench3, sizeof db_spv_bench3, "bench pool"},
    {db_spv_bench4, sizeof db_spv_bench4, "bench 1-x"},  {db_spv_bench5, sizeof db_spv_bench5, "bench sum"},
    {db_spv_bench6, sizeof db_spv_bench6, "bench sum2"}, {db_spv_bench7, sizeof db_spv_bench7, "bench scale"},
    {db_spv_bench8, sizeof db_spv_bench8, "bench mul"},  {db_spv_bench9, sizeof db_spv_bench9, "bench copy tail"},
};

/* ---- bench ----------------------------------------------------------------------------- */

/* Records bench step s over n invocations, push constants n, a, b, c. */
static void bench_step(struct vk_dev *d, int s, uint32_t n, uint32_t a, uint32_t b, uint32_t c, int first)
{
    const uint32_t push[4] = {n, a, b, c};
    vk_step_push(d, d->bench[s], push, n, first);
}

/* One measure of vk_bench on the resident x (bufs[B_X]) and y (bufs[B_Y]). */
static int bench_one(struct vk_dev *d, struct db_device *dev, const struct db_plan *pl, int what, const uint32_t *blp,
                     const uint32_t *prm, const uint32_t *prm_safe, uint64_t nwords, char *msg, size_t len)
{
    if (what == DB_BENCH_OP || what == DB_BENCH_BACKWARD) {
        dropblock_result res;
        memset(&res, 0, sizeof res);
        struct db_plan bw = *pl; /* backward applies the same mask and scale to dy: the same passes */
        bw.p.mode = DROPBLOCK_BACKWARD;
        return vk_job(d, dev, what == DB_BENCH_OP ? pl : &bw, NULL, NULL, NULL, 1, &res, msg, len);
    }
    int rc;
    if (what == DB_BENCH_MASK) memcpy(d->bufs[B_PRM].map, prm, DBP_COUNT * 4);
    if (what == DB_BENCH_BASELINE) memcpy(d->bufs[B_PRM].map, blp, BLP_COUNT * 4);
    vk_bind_all(d, d->bufs[B_X].buf, d->bufs[B_Y].buf);
    if ((rc = vk_begin(d, msg, len))) return rc;
    if (what == DB_BENCH_COPY) {
        uint32_t nvec = (uint32_t)(nwords / 4);
        bench_step(d, BS_COPY, nvec, 0, 0, 0, 1);
        if (4 * (uint64_t)nvec < nwords) bench_step(d, BS_COPY_TAIL, (uint32_t)(nwords - 4 * nvec), 4 * nvec, 0, 0, 0);
    } else if (what == DB_BENCH_MASK) {
        vk_record_mask(d, prm);
        vk_to_host(d, B_KEPT, vk_kept_bytes(prm));
        /* an invocation cut short: the measure includes the rerun with the worst-case budget */
        if ((rc = vk_submit(d, msg, len)) || vk_mask_done(d, prm)) return rc;
        d->mask_reruns++;
        memcpy(d->bufs[B_PRM].map, prm_safe, DBP_COUNT * 4);
        if ((rc = vk_begin(d, msg, len))) return rc;
        vk_record_mask(d, prm_safe);
        vk_to_host(d, B_KEPT, vk_kept_bytes(prm_safe));
        if ((rc = vk_submit(d, msg, len))) return rc;
        if (vk_mask_done(d, prm_safe)) return DROPBLOCK_OK;
        db_msg(msg, len,
               "the mask pass was cut short (an invocation did not run to its end) with the worst-case budget");
        return DROPBLOCK_EINTERNAL;
    } else {
        const uint32_t n = blp[BLP_NUMEL], nnoise = blp[BLP_NNOISE], npad = blp[BLP_NPAD];
        bench_step(d, BS_BERNOULLI, (nnoise + 3) / 4, 0, 0, 0, 1);
        bench_step(d, BS_PAD, npad, 0, 0, 0, 0);
        bench_step(d, BS_POOL, n, 0, 0, 0, 0);
        bench_step(d, BS_ONE_MINUS, n, 0, 0, 0, 0);
        uint32_t nin = (n + BL_SEG - 1) / BL_SEG, src = 1;
        bench_step(d, BS_SUM_NOISE, nin, 0, 0, 0, 0);
        while (nin > BL_SEG) {
            uint32_t nout = (nin + BL_SEG - 1) / BL_SEG;
            bench_step(d, BS_SUM_PART, nout, src, nin, src + nin, 0);
            src += nin;
            nin = nout;
        }
        bench_step(d, BS_SCALE, 1, src, nin, 0, 0);
        bench_step(d, BS_MUL, (uint32_t)nwords, 0, 0, 0, 0);
    }
    return vk_submit(d, msg, len);
}

/* bench.comp's steps' pipelines, made on the first benchmark */
static int bench_pipelines(struct vk_dev *d, char *msg, size_t len)
{
    int rc = DROPBLOCK_OK;
    VkResult r;
    for (int i = 0; i < BS_N && !rc; i++)
        if (!d->bench[i] && (r = vk_make_pipeline(d, &vk_bench_spv[i], &d->bench[i])))
            rc = vk_fail(msg, len, r, vk_bench_spv[i].name);
    return rc;
}

/* The pass bindings' buffers for vk_bench (chunk ch), x (bytes) and y already resident: the
 * baseline's, when whats has it, with noise on mask, padded on aux, pooled on kept, part on scales */
static int bench_buffers(struct vk_dev *d, const struct db_plan *pl, const struct db_chunk *ch, unsigned whats,
                         uint64_t npad, uint64_t nparts, uint64_t bytes, char *msg, size_t len)
{
    const int base = (whats & (1u << DB_BENCH_BASELINE)) != 0;
    const uint64_t words = (ch->nelem + 31) / 32 + 16;
    const uint64_t sizes[B_N] = {DBP_COUNT * 4 > BLP_COUNT * 4 ? DBP_COUNT * 4 : BLP_COUNT * 4,
                                 base && pl->numel > words ? pl->numel * 4 : words * 4,
                                 base ? npad * 4 : 64,
                                 base && pl->numel > ch->nsamp * 2 + 20 ? pl->numel * 4 : ch->nsamp * 8 + 80,
                                 0,
                                 0,
                                 base && nparts > pl->N ? nparts * 4 : pl->N * 4 + 64,
                                 words * 4};
    int rc = DROPBLOCK_OK;
    for (int i = 0; i < B_N && !rc; i++)
        if (i != B_X && i != B_Y) rc = vk_buf_ensure(d, i, sizes[i], msg, len);
    /* staged: x onto the device once (and, for DB_BENCH_XFER, on and off it each time) */
    const uint64_t up = d->staged ? bytes : 0;
    if (!rc && up) {
        vk_bind_all(d, d->bufs[B_X].buf, d->bufs[B_Y].buf);
        if (!(rc = vk_begin(d, msg, len))) {
            vk_to_device(d, B_X, up);
            rc = vk_submit(d, msg, len);
        }
    }
    return rc;
}

/* One DB_BENCH_XFER measure: what vk_job does with host tensors it cannot import (one chunk): x
 * copied into the mapped x buffer, the result copied out of it, here into the host yh */
static int bench_xfer(struct vk_dev *d, const void *xh, void *yh, uint64_t bytes, char *msg, size_t len)
{
    const uint64_t up = d->staged ? bytes : 0;
    int rc = DROPBLOCK_OK;
    memcpy(d->bufs[B_X].map, xh, bytes);
    if (up && !(rc = vk_begin(d, msg, len))) {
        vk_to_device(d, B_X, up);
        vk_to_host(d, B_X, up);
        rc = vk_submit(d, msg, len);
    }
    memcpy(yh, d->bufs[B_X].map, bytes);
    return rc;
}

/* The benchmark (engine.h's DB_BENCH_*) of pl on x = xh: each measure in whats warmup times
 * unrecorded, then reps times into us. x and y are resident for its loop (y owns its memory for
 * the bench only) and given back at its end. */
int vk_bench(struct db_device *dev, const struct db_plan *pl, const void *xh, unsigned whats, int warmup, int reps,
             double *us, char *msg, size_t len)
{
    struct vk_dev *d = dev->priv;
    const uint64_t bytes = pl->numel * dropblock_dtype_size(pl->p.dtype), nwords = (bytes + 3) / 4;
    int rc = bench_pipelines(d, msg, len);
    if (rc) return rc;
    if (bytes > dev->info.max_buffer || pl->numel >= (UINT64_C(1) << 32)) {
        db_msg(msg, len, "the benchmark takes tensors of one device buffer (%llu bytes)",
               (unsigned long long)dev->info.max_buffer);
        return DROPBLOCK_EINVAL;
    }
    uint32_t blp[BLP_COUNT] = {0}, prm[DBP_COUNT], prm_safe[DBP_COUNT];
    uint64_t npad = 0, nparts = 0;
    if ((whats & (1u << DB_BENCH_BASELINE)) && db_baseline_params(pl, blp, &npad, &nparts, msg, len)) {
        whats &= ~(1u << DB_BENCH_BASELINE);
        for (int i = 0; i < reps; i++) us[DB_BENCH_BASELINE * reps + i] = -1;
    }
    const struct db_tuning tu = vk_job_tuning(d, pl, 0), safe = vk_job_tuning(d, pl, 1);
    const uint64_t reruns0 = d->mask_reruns;
    struct db_chunk ch;
    db_chunk_at(pl, 0, db_units(pl), &ch);
    db_kernel_params(pl, &ch, &tu, prm);
    db_kernel_params(pl, &ch, &safe, prm_safe);
    /* x and y resident in the device's x and y buffers */
    struct vk_buf y = {0};
    if ((rc = vk_buf_ensure(d, B_X, nwords * 4 + 64, msg, len)) ||
        (rc = vk_buf_make(d, &y, nwords * 4 + 64, "y", d->staged, 0, msg, len)))
        return rc;
    d->bufs[B_Y] = y;
    memcpy(d->bufs[B_X].map, xh, bytes);
    rc = bench_buffers(d, pl, &ch, whats, npad, nparts, bytes, msg, len);
    void *yh = NULL;
    if (!rc && (whats & (1u << DB_BENCH_XFER)) && !(yh = malloc((size_t)bytes))) {
        db_msg(msg, len, "out of host memory");
        rc = DROPBLOCK_EEXHAUSTED;
    }
    for (int rep = -warmup; rep < reps && !rc; rep++)
        for (int w = 0; w < DB_BENCH_N && !rc; w++) {
            if (!(whats & (1u << w))) continue;
            double t0 = db_now_us_f();
            if (w == DB_BENCH_XFER) rc = bench_xfer(d, xh, yh, bytes, msg, len);
            else rc = bench_one(d, dev, pl, w, blp, prm, prm_safe, nwords, msg, len);
            if (rep >= 0) us[w * reps + rep] = db_now_us_f() - t0;
        }
    free(yh);
    if (d->mask_reruns != reruns0)
        db_dev_log(dev, "%llu benchmark mask pass(es) cut short by the loop limit, rerun with the worst-case budget",
                   (unsigned long long)(d->mask_reruns - reruns0));
    vkQueueWaitIdle(d->queue);
    vk_buf_free(d, &y);
    memset(&d->bufs[B_Y], 0, sizeof d->bufs[B_Y]);
    return rc;
}
