/* backend_cpu.c: the built-in CPU backend: the portable passes (shaders/db_passes.h, the ones
 * the GPU backends run) compiled as C and spread over the host's cores with threads. It is a
 * second implementation, not the reference: core/reference.c stays the oracle, and
 * tests/test_backends checks this backend against it bit for bit like any other device.
 *
 * A job goes in chunks of at most 1 GiB (the passes index a chunk with 32-bit counts): per
 * chunk the mask pass over its tiles (whole planes: each candidate's Philox word made once),
 * then the exact scales on the host, then the apply pass over 32-element groups, each thread
 * taking a contiguous share: in AVX-512F or AVX2 vectors (apply_simd.h), or else as C over
 * db_vapply with subnormal inputs on the exact integer path (db_vbad with hwexact 0). Every
 * worker runs in the default floating-point environment (fpenv.h), whatever its caller set.
 *
 * A job takes a thread per 64 Ki elements, up to the online cores. DROPBLOCK_CPU_THREADS=<n>
 * runs every job on exactly n threads (the tests use it to take the threaded path on small
 * tensors). The mask pass's Philox runs in AVX-512F or AVX2 where the CPU has them
 * (philox_simd.h; DROPBLOCK_CPU_SIMD=avx512|avx2|scalar forces a path, for the apply pass too);
 * the device's name says which. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "apply_simd.h"
#include "backend.h"
#include "clock.h"
#include "fpenv.h"
#include "kernel_params.h"
#include "msg.h"
#include "philox_simd.h"
#include "reference.h"

/* the passes and the baseline's kernels, as C; the baseline's take every buffer, as GLSL sees
 * them all, and each uses a few */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define DB_LANG_C
#define DB_C_THREADS
#include "philox_simd_batch.h" /* db_fire_batch in vectors (philox_simd.c), before the passes */
#include "db_baseline.h"
#include "db_passes.h"
#pragma GCC diagnostic pop

#define CPU_MAX_THREADS 64
#define CPU_EPW 32 /* elements of a fast-apply group: one mask word */
/* whole planes a tile, no candidate budget: the CPU needs no bound on a work item's loops */
static const struct db_tuning cpu_job_tuning = {UINT32_MAX, CPU_EPW, 0, 4096, 0};
#define CPU_PER_THREAD (UINT64_C(1) << 16) /* elements worth a thread's start (tens of microseconds) */

struct cpu_dev {
    int threads; /* at most */
    int forced;  /* DROPBLOCK_CPU_THREADS: every job on exactly that many */
};

static int cpu_enumerate(const struct db_backend_config *cfg, struct db_device *out, size_t cap, char *msg, size_t len)
{
    if (cap < 1) return 0;
    struct cpu_dev *cd = calloc(1, sizeof *cd);
    if (!cd) {
        db_msg(msg, len, "out of memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (cfg->knobs->cpu_threads) n = cfg->knobs->cpu_threads;
    cd->threads = n < 1 ? 1 : n > CPU_MAX_THREADS ? CPU_MAX_THREADS : (int)n;
    cd->forced = cfg->knobs->cpu_threads > 0;
    memset(out, 0, sizeof *out);
    snprintf(out->info.api, sizeof out->info.api, "cpu");
    snprintf(out->info.vendor, sizeof out->info.vendor, "dropblockd");
    snprintf(out->info.name, sizeof out->info.name, "built-in CPU, %d threads, %s", cd->threads,
             db_simd_name(db_simd_path()));
    snprintf(out->info.driver, sizeof out->info.driver, "%d.%d", DROPBLOCK_VERSION_MAJOR, DROPBLOCK_VERSION_MINOR);
    out->info.kind = DROPBLOCK_DEVICE_CPU;
    out->info.max_buffer = UINT64_MAX;
    out->ops = &db_backend_cpu;
    out->priv = cd;
    return 1;
}

static int cpu_prepare(struct db_device *dev, const struct db_backend_config *cfg, char *msg, size_t len)
{
    (void)dev;
    (void)cfg;
    (void)msg;
    (void)len;
    return DROPBLOCK_OK;
}

/* ---- the passes, threaded ---------------------------------------------------------------- */

enum { PH_MASK, PH_APPLY, PH_COPY };

struct cpu_work {
    int phase, nthreads;
    const struct db_plan *pl;
    const uint32_t *prm;    /* the chunk's parameter words */
    uint32_t *mask;         /* the chunk's keep bits */
    uint32_t *kept;         /* two words a sample of the chunk */
    const uint32_t *scales; /* the chunk's first sample on */
    const char *in;         /* the chunk's elements (or, PH_COPY, bytes) */
    char *out;
    uint64_t n; /* mask work items, elements (apply) or bytes (copy) */
};

struct cpu_thread {
    const struct cpu_work *w;
    int t;
};

static uint32_t load_elem(const char *p, size_t es, uint64_t i)
{
    uint32_t v = 0;
    memcpy(&v, p + i * es, es);
    return v;
}

static void store_elem(char *p, size_t es, uint64_t i, uint32_t v) { memcpy(p + i * es, &v, es); }

/* One group of CPU_EPW elements from k, kept bits word, scales s (s1 from element bnd on):
 * dtype a constant where inlined, so that each loop is straight-line code the compiler can
 * vectorize. Lanes db_vbad reports are left as x and returned as bits for the exact path. */
static inline uint32_t apply_group(const char *in, char *out, uint64_t k, uint32_t word, uint32_t s, uint32_t s1,
                                   uint64_t bnd, const uint32_t dtype)
{
    const size_t es = dtype == DB_DTYPE_F32 ? 4 : 2;
    uint32_t x[CPU_EPW], y[CPU_EPW], bad = 0;
    if (es == 4) {
        memcpy(x, in + k * 4, sizeof x);
    } else {
        uint16_t h[CPU_EPW];
        memcpy(h, in + k * 2, sizeof h);
        for (int l = 0; l < CPU_EPW; l++) x[l] = h[l];
    }
    for (int l = 0; l < CPU_EPW; l++) {
        uint32_t b = db_vbad(x[l], dtype, 0);
        y[l] = b ? x[l] : db_vapply(x[l], k + (uint64_t)l >= bnd ? s1 : s, (word >> l) & 1u, dtype);
        bad |= b << l;
    }
    if (es == 4) {
        memcpy(out + k * 4, y, sizeof y);
    } else {
        uint16_t h[CPU_EPW];
        for (int l = 0; l < CPU_EPW; l++) h[l] = (uint16_t)y[l];
        memcpy(out + k * 2, h, sizeof h);
    }
    return bad;
}

/* the fast groups [k, k1) in vectors where the CPU has them: 1 if it ran them */
static int apply_fast(const struct cpu_work *w, uint64_t k, uint64_t k1)
{
#if defined(DB_APPLY_SIMD) && defined(__x86_64__)
    const uint32_t *prm = w->prm;
    const struct db_apply_args a = {w->in,
                                    w->out,
                                    w->mask,
                                    w->scales,
                                    prm[DBP_DTYPE],
                                    prm[DBP_NORM] == DROPBLOCK_NORMALIZE_SAMPLE,
                                    DB_PRM64(DBP_E0),
                                    DB_PRM64(DBP_CHW),
                                    DB_PRM64(DBP_N0)};
    enum db_simd_path p = db_simd_path();
    if (p == DB_SIMD_AVX512) {
        db_apply_fast_avx512(&a, k, k1);
        return 1;
    }
    if (p == DB_SIMD_AVX2) {
        db_apply_fast_avx2(&a, k, k1);
        return 1;
    }
#else
    (void)w;
    (void)k;
    (void)k1;
#endif
    return 0;
}

/* the apply pass on elements [k0, k1) of the chunk, k0 a multiple of CPU_EPW */
static void apply_range(const struct cpu_work *w, uint64_t k0, uint64_t k1)
{
    const uint32_t *prm = w->prm;
    const uint32_t dtype = prm[DBP_DTYPE];
    const size_t es = dtype == DB_DTYPE_F32 ? 4 : 2;
    const uint64_t fast = (uint64_t)prm[DBP_GROUPS] * prm[DBP_EPW];
    const uint64_t chw = DB_PRM64(DBP_CHW), e0 = DB_PRM64(DBP_E0), n0 = DB_PRM64(DBP_N0);
    const int per_sample = prm[DBP_NORM] == DROPBLOCK_NORMALIZE_SAMPLE;
    uint64_t k = k0;
    if (k < fast && apply_fast(w, k, k1 < fast ? k1 : fast)) k = k1 < fast ? k1 : fast;
    for (; k < k1 && k < fast; k += CPU_EPW) {
        uint32_t word = w->mask[k >> 5], s = w->scales[per_sample ? (e0 + k) / chw - n0 : 0], s1 = s;
        uint64_t bnd = UINT64_MAX;
        if (per_sample) { /* at most one sample boundary in a group (db_fast_apply_ok) */
            bnd = ((e0 + k) / chw + 1) * chw - e0;
            if (bnd < k + CPU_EPW) s1 = w->scales[(e0 + k) / chw + 1 - n0];
        }
        uint32_t bad = dtype == DB_DTYPE_F32   ? apply_group(w->in, w->out, k, word, s, s1, bnd, DB_DTYPE_F32)
                       : dtype == DB_DTYPE_F16 ? apply_group(w->in, w->out, k, word, s, s1, bnd, DB_DTYPE_F16)
                                               : apply_group(w->in, w->out, k, word, s, s1, bnd, DB_DTYPE_BF16);
        for (uint32_t l = 0; bad && l < CPU_EPW; l++) /* out holds x there, in place or not */
            if ((bad >> l) & 1u)
                store_elem(w->out, es, k + l,
                           db_apply_elem(prm, w->mask, w->scales, k + l, load_elem(w->out, es, k + l)));
    }
    for (; k < k1; k++) store_elem(w->out, es, k, db_apply_elem(prm, w->mask, w->scales, k, load_elem(w->in, es, k)));
}

static void *cpu_worker(void *arg)
{
    /* IEEE products whatever the caller's rounding or flush-to-zero (apply_simd.h relies on it) */
    db_fpenv fe;
    db_fpenv_enter(&fe);
    const struct cpu_thread *ct = arg;
    const struct cpu_work *w = ct->w;
    const uint64_t T = (uint64_t)w->nthreads, t = (uint64_t)ct->t;
    if (w->phase == PH_MASK) {
        for (uint64_t i = w->n * t / T; i < w->n * (t + 1) / T; i++) db_mask_item(w->prm, w->mask, w->kept, i);
    } else {
        /* contiguous shares on group (or cache line) boundaries */
        uint64_t q = w->phase == PH_APPLY ? CPU_EPW : 64, units = (w->n + q - 1) / q;
        uint64_t a = units * t / T * q, b = units * (t + 1) / T * q;
        if (b > w->n) b = w->n;
        if (a < b && w->phase == PH_APPLY) apply_range(w, a, b);
        if (a < b && w->phase == PH_COPY) memcpy(w->out + a, w->in + a, b - a);
    }
    db_fpenv_leave(&fe);
    return NULL;
}

/* Runs w on its threads (the caller's is one of them). */
static void run_threads(const struct cpu_work *w)
{
    pthread_t th[CPU_MAX_THREADS];
    struct cpu_thread ct[CPU_MAX_THREADS];
    int started = 0;
    for (int t = 0; t < w->nthreads; t++) ct[t] = (struct cpu_thread){w, t};
    for (int t = 1; t < w->nthreads; t++) {
        if (pthread_create(&th[t], NULL, cpu_worker, &ct[t])) break;
        started = t;
    }
    /* shares no thread could take run here */
    for (int t = started + 1; t < w->nthreads; t++) cpu_worker(&ct[t]);
    cpu_worker(&ct[0]);
    for (int t = 1; t <= started; t++) pthread_join(th[t], NULL);
}

static int threads_for(const struct cpu_dev *cd, uint64_t numel)
{
    if (cd->forced || numel / CPU_PER_THREAD >= (uint64_t)cd->threads) return cd->threads;
    return (int)(numel / CPU_PER_THREAD) + 1;
}

/* The job (or, mask_only, its mask pass) from in to out in host memory. */
static int cpu_job(const struct cpu_dev *cd, const struct db_plan *pl, const void *in, void *out, void *mask,
                   int mask_only, dropblock_result *res)
{
    const uint64_t t0 = db_now_us();
    const size_t es = dropblock_dtype_size(pl->p.dtype);
    const struct db_tuning tu = cpu_job_tuning;
    /* the plan's chunks of at most 1 GiB; ck.fused is for the GPU backends' device scale pass */
    struct db_chunking ck;
    int rc = db_job_chunks(pl, UINT64_C(1) << 30, 0, &ck, res->message, sizeof res->message);
    if (rc) return rc;
    const uint64_t nchunks = ck.nchunks;
    const int threads = threads_for(cd, pl->numel);
    uint32_t *prms = malloc(nchunks * DBP_COUNT * 4);
    uint32_t **masks = calloc(nchunks, sizeof *masks);
    uint64_t *kept = calloc(pl->N, sizeof *kept);
    uint32_t *scales = calloc(pl->N, sizeof *scales), *partial = NULL;
    struct db_chunk ch;
    if (!prms || !masks || !kept || !scales) goto oom;
    for (uint64_t q = 0; q < nchunks; q++) {
        db_job_chunk(pl, &ck, q, &ch);
        uint32_t *prm = prms + q * DBP_COUNT;
        db_kernel_params(pl, &ch, &tu, prm);
        free(partial);
        if (!(masks[q] = malloc((ch.nelem + 31) / 32 * 4)) || !(partial = calloc(ch.nsamp * 2, 4))) goto oom;
        struct cpu_work w = {PH_MASK, threads, pl, prm, masks[q], partial, NULL, NULL, NULL, db_mask_items(prm)};
        if ((uint64_t)w.nthreads > w.n) w.nthreads = (int)w.n;
        run_threads(&w);
        for (uint64_t s = 0; s < ch.nsamp; s++)
            kept[ch.n0 + s] += partial[2 * s] | ((uint64_t)partial[2 * s + 1] << 32);
    }
    const uint64_t t1 = db_now_us();
    if (mask_only) goto done;
    if ((rc = db_plan_scales(pl, kept, scales, res))) goto done;
    const uint64_t t2 = db_now_us();
    for (uint64_t q = 0; q < nchunks; q++) {
        db_job_chunk(pl, &ck, q, &ch);
        struct cpu_work w = {PH_APPLY,
                             threads,
                             pl,
                             prms + q * DBP_COUNT,
                             masks[q],
                             NULL,
                             scales + ch.n0,
                             (const char *)in + ch.e0 * es,
                             (char *)out + ch.e0 * es,
                             ch.nelem};
        if ((uint64_t)w.nthreads * CPU_EPW > w.n) w.nthreads = 1;
        run_threads(&w);
        if (mask) db_mask_export_flat(pl, masks[q], ch.e0, ch.nelem, mask);
    }
    res->timing_us[0] = t1 - t0;
    res->timing_us[1] = t2 - t1;
    res->timing_us[2] = db_now_us() - t2;
    goto done;
oom:
    db_msg(res->message, sizeof res->message, "out of host memory for a %llu-element job",
           (unsigned long long)pl->numel);
    rc = DROPBLOCK_EEXHAUSTED;
done:
    for (uint64_t q = 0; masks && q < nchunks; q++) free(masks[q]);
    free(masks);
    free(prms);
    free(kept);
    free(scales);
    free(partial);
    res->timing_us[3] = db_now_us() - t0;
    return rc;
}

static int cpu_run(struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
                   dropblock_result *res)
{
    return cpu_job(dev->priv, pl, in, out, mask, 0, res);
}

static void cpu_release(struct db_device *dev)
{
    free(dev->priv);
    dev->priv = NULL;
}

/* ---- bench: the baseline (db_baseline.h) in C ------------------------------------------ */

static void run_baseline(const uint32_t *prm, uint32_t *noise, uint32_t *padded, uint32_t *pooled, uint32_t *part,
                         const uint32_t *x, uint32_t *y, uint64_t nwords)
{
    const uint32_t n = prm[BLP_NUMEL], nnoise = prm[BLP_NNOISE], npad = prm[BLP_NPAD];
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

/* The copy is threaded like the passes; the baseline runs on one thread (torchvision's
 * kernels would be spread over the cores by torch: this figure is the single-core cost). */
static int cpu_bench(struct db_device *dev, const struct db_plan *pl, const void *x, unsigned whats, int warmup,
                     int reps, double *us, char *msg, size_t len)
{
    const struct cpu_dev *cd = dev->priv;
    const uint64_t bytes = pl->numel * dropblock_dtype_size(pl->p.dtype), nwords = (bytes + 3) / 4;
    uint32_t blp[BLP_COUNT] = {0};
    uint64_t npad = 0, nparts = 0;
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
            if (w == DB_BENCH_COPY) {
                struct cpu_work cw = {PH_COPY, threads_for(cd, pl->numel), pl,        NULL, NULL, NULL,
                                      NULL,    (const char *)xw,           (char *)y, bytes};
                run_threads(&cw);
            } else if (w == DB_BENCH_OP || w == DB_BENCH_BACKWARD) {
                rc = cpu_run(dev, w == DB_BENCH_OP ? pl : &bw, xw, y, NULL, &res);
            } else if (w == DB_BENCH_MASK) {
                rc = cpu_job(cd, pl, xw, y, NULL, 1, &res);
            } else if (w == DB_BENCH_XFER) {
                /* no device: the two copies a job would make if it copied, one thread (its jobs never do) */
                memcpy(xw, x, bytes);
                memcpy(y, xw, bytes);
            } else {
                run_baseline(blp, noise, padded, pooled, part, xw, y, nwords);
            }
            if (rc) db_msg(msg, len, "%s", res.message);
            if (r >= 0) us[w * reps + r] = db_now_us_f() - t0;
        }
done:
    free(xw);
    free(y);
    free(noise);
    free(padded);
    free(pooled);
    free(part);
    return rc;
}

static void cpu_describe(const struct db_device *dev, char *buf, size_t len)
{
    const struct cpu_dev *cd = dev->priv;
    enum db_simd_path p = db_simd_path();
#if defined(DB_APPLY_SIMD) && defined(__x86_64__)
    const char *apply = p == DB_SIMD_SCALAR ? "scalar" : db_simd_name(p);
#else
    const char *apply = "scalar";
#endif
    snprintf(buf, len, "memory=host mask=%s apply=%s threads=%d", db_simd_name(p), apply, cd->threads);
}

static void cpu_tuning(const struct db_device *dev, const struct db_plan *pl, struct db_tuning *out)
{
    (void)dev;
    (void)pl;
    *out = cpu_job_tuning;
}

const struct backend_ops db_backend_cpu = {.name = "cpu",
                                           .enumerate = cpu_enumerate,
                                           .prepare = cpu_prepare,
                                           .run = cpu_run,
                                           .bench = cpu_bench,
                                           .release = cpu_release,
                                           .describe = cpu_describe,
                                           .tuning = cpu_tuning};
