/* backend_opencl.c: the OpenCL backend; every OpenCL call of the project lives in this file and
 * its opencl_device.c, opencl_staging.c and opencl_bench.c (backend_opencl.h says which holds what).
 *
 * enumerate lists every device of every platform; prepare picks the device's kernel shape (see
 * "tuning" in opencl_device.c), builds shaders/dropblock.cl once per device (through an on-disk binary cache, see
 * "program cache" below) and probes whether its multiply keeps subnormals and whether its f16
 * conversions (vload_half / vstore_half_rte) give the integer path's bits. run follows the host
 * flow of tests/test_passes.c: per chunk the mask pass (which counts); for a one-chunk job the
 * scales on the device and the apply pass in the same queue, with no host round trip; else the
 * scales on the host between the passes. Buffers are kept per device and reused; on CPU devices
 * the tensors are used in place (CL_MEM_USE_HOST_PTR), elsewhere copied in and out: per chunk
 * for a tensor of one slice, else staged through pinned memory in slices with the copies and the
 * applies overlapped on three queues (see "staged copies" in opencl_staging.c).
 *
 * Testing knobs: DROPBLOCK_OPENCL_MAX_BUFFER=<bytes> caps every device's max_buffer (reported
 * in the device info and used for chunking), so the chunked path can be exercised on small
 * tensors, e.g. DROPBLOCK_OPENCL_MAX_BUFFER=4096; DROPBLOCK_OPENCL_FIXUP=1 takes the paths of a
 * device whose probes failed (the fixup pass for subnormals, f16 in integers) even where they
 * passed, DROPBLOCK_OPENCL_COPY=1 copies the tensors even on CPU devices,
 * DROPBLOCK_OPENCL_STAGE_BYTES=<bytes> sets the staged path's slice (default 4 MiB), so that
 * small tensors take many slices, and DROPBLOCK_OPENCL_SHAPE=gpu gives a CPU device the GPU
 * configuration. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_opencl.h"
#include "clock.h"
#include "kernel_cache.h"
#include "msg.h"

/* ---- program cache ---------------------------------------------------------------------
 * One entry per (source, build options, platform, device, driver) under cfg->cache_dir, named by
 * the 64-bit hash of that key, in kernel_cache.c's checked format (magic "DBOCLBIN"): a load
 * that fails any check means a rebuild from source, whose binary then replaces the entry. */

#define CACHE_MAGIC "DBOCLBIN"

/* Hashes each part with its length so that no two different keys concatenate alike. */
static uint64_t fnv_part(uint64_t h, const char *s)
{
    uint64_t l = s ? strlen(s) : 0;
    h = db_kcache_hash(h, &l, sizeof l);
    return s ? db_kcache_hash(h, s, l) : h;
}

static uint64_t cache_key(struct ocl_dev *od)
{
    char *pv = ocl_plat_str(od->platform, CL_PLATFORM_VERSION);
    char *dn = ocl_dev_str(od->device, CL_DEVICE_NAME);
    char *dv = ocl_dev_str(od->device, CL_DEVICE_VERSION);
    char *drv = ocl_dev_str(od->device, CL_DRIVER_VERSION);
    uint64_t h = DB_KCACHE_HASH_INIT;
    h = db_kcache_hash(h, db_opencl_source, db_opencl_source_len);
    h = fnv_part(h, od->build_options);
    h = fnv_part(h, pv);
    h = fnv_part(h, dn);
    h = fnv_part(h, dv);
    h = fnv_part(h, drv);
    free(pv);
    free(dn);
    free(dv);
    free(drv);
    return h;
}

static void cache_path(char *buf, size_t len, const char *dir, uint64_t key)
{
    snprintf(buf, len, "%s/opencl-%016llx.bin", dir, (unsigned long long)key);
}

/* The device's program binary after a build, malloc'd. */
static unsigned char *program_binary(cl_program prog, size_t *blen)
{
    size_t n = 0;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof n, &n, NULL) != CL_SUCCESS || n == 0) return NULL;
    unsigned char *bin = malloc(n);
    if (!bin) return NULL;
    unsigned char *ptrs[1] = {bin};
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof ptrs, ptrs, NULL) != CL_SUCCESS) {
        free(bin);
        return NULL;
    }
    *blen = n;
    return bin;
}

/* Tries a cached binary; 1 when it gave a built program with its kernels. */
static int load_cached(struct ocl_dev *od, const char *path, uint64_t key)
{
    size_t blen = 0;
    unsigned char *bin = db_kcache_load(path, CACHE_MAGIC, key, &blen);
    if (!bin) return 0;
    cl_int e, st = CL_SUCCESS;
    const unsigned char *bins[1] = {bin};
    od->program = clCreateProgramWithBinary(od->ctx, 1, &od->device, &blen, bins, &st, &e);
    free(bin);
    if (e != CL_SUCCESS || st != CL_SUCCESS) {
        if (e == CL_SUCCESS) clReleaseProgram(od->program);
        od->program = NULL;
        return 0;
    }
    if (clBuildProgram(od->program, 1, &od->device, od->build_options, NULL, NULL) != CL_SUCCESS) {
        ocl_drop_program(od);
        return 0;
    }
    char ignored[8];
    return ocl_make_kernels(od, ignored, sizeof ignored) == DROPBLOCK_OK;
}

static int ocl_prepare(struct db_device *dev, const struct db_backend_config *cfg, char *msg, size_t len)
{
    struct ocl_dev *od = dev->priv;
    if (!od) {
        db_msg(msg, len, "device was not enumerated");
        return DROPBLOCK_EINTERNAL;
    }
    if (od->program) return DROPBLOCK_OK;
    ocl_choose_shape(od);
    cl_int e;
    cl_context_properties props[3] = {CL_CONTEXT_PLATFORM, (cl_context_properties)od->platform, 0};
    od->ctx = clCreateContext(props, 1, &od->device, NULL, NULL, &e);
    if (e != CL_SUCCESS) {
        od->ctx = NULL;
        return ocl_fail(msg, len, "clCreateContext", e);
    }
    od->queue = clCreateCommandQueue(od->ctx, od->device, 0, &e); /* in order: the passes rely on it */
    if (e != CL_SUCCESS) {
        od->queue = NULL;
        int rc = ocl_fail(msg, len, "clCreateCommandQueue", e);
        ocl_teardown(od);
        return rc;
    }
    const char *dir = cfg && cfg->cache_dir && *cfg->cache_dir ? cfg->cache_dir : NULL;
    char path[1024] = "";
    uint64_t key = 0;
    int cached = 0;
    if (dir) {
        key = cache_key(od);
        cache_path(path, sizeof path, dir, key);
        cached = load_cached(od, path, key);
    }
    if (!cached) {
        int rc = ocl_build_from_source(od, msg, len);
        if (rc) {
            ocl_teardown(od);
            return rc;
        }
        if (dir) { /* (re)write the entry: it was missing, stale or bad */
            size_t blen = 0;
            unsigned char *bin = program_binary(od->program, &blen);
            if (bin) db_kcache_store(dir, path, CACHE_MAGIC, key, bin, blen);
            free(bin);
        }
    }
    od->hwexact = ocl_probe_exact(od);
    od->hwhalf = ocl_probe_half(od);
    if (od->hwhalf)
        for (int s = 0; s < 2; s++) {
            cl_kernel t = od->k_apply[DROPBLOCK_F16][s][0];
            od->k_apply[DROPBLOCK_F16][s][0] = od->k_apply_half[s];
            od->k_apply_half[s] = t;
        }
    if ((e = ocl_warm_up(od)) != CL_SUCCESS) {
        int rc = ocl_fail(msg, len, "warming up the kernels", e);
        ocl_teardown(od);
        return rc;
    }
    return DROPBLOCK_OK;
}

/* ---- job counts ----------------------------------------------------------------------
 * struct db_job_stats (backend.h) for the device's last job, counted at each enqueue of the job
 * in this file and opencl_staging.c (not the warm-up's, the probes' or the benchmark's own
 * kernels): a transfer or fill is "between" when a launch came before it and another after. */

void ocl_count_launches(struct ocl_dev *od, uint32_t n)
{
    if (!n) return;
    if (od->js_launched) {
        od->js.transfers_between += od->js_pend_transfers;
        od->js.fills_between += od->js_pend_fills;
    }
    od->js_pend_transfers = od->js_pend_fills = 0;
    od->js_launched = 1;
    od->js.launches += n;
}

void ocl_count_transfer(struct ocl_dev *od)
{
    od->js.transfers++;
    od->js_pend_transfers++;
}

void ocl_count_fill(struct ocl_dev *od)
{
    od->js.fills++;
    od->js_pend_fills++;
}

/* a clFlush (waits 0) or clFinish (waits 1) */
void ocl_count_submit(struct ocl_dev *od, int waits)
{
    od->js.submits++;
    od->js.waits += waits != 0;
}

/* a clWaitForEvents */
void ocl_count_wait(struct ocl_dev *od) { od->js.waits++; }

static void count_reset(struct ocl_dev *od)
{
    memset(&od->js, 0, sizeof od->js);
    od->js_pend_transfers = od->js_pend_fills = 0;
    od->js_launched = 0;
}

/* ocl_launch_round and ocl_launch_exact, counted: one enqueue, or (exact) one for the whole
 * groups and one for the rest */
static cl_int launch_round(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t n)
{
    cl_int e = ocl_launch_round(od, k, wg, n);
    if (e == CL_SUCCESS) ocl_count_launches(od, n != 0);
    return e;
}

static cl_int launch_exact(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t n)
{
    cl_int e = ocl_launch_exact(od, k, wg, n);
    if (e == CL_SUCCESS) ocl_count_launches(od, (n / wg != 0) + (n % wg != 0));
    return e;
}

/* clEnqueueReadBuffer and clEnqueueWriteBuffer on the passes' queue, non-blocking, counted */
static cl_int read_buf(struct ocl_dev *od, cl_mem b, size_t off, size_t bytes, void *p)
{
    cl_int e = clEnqueueReadBuffer(od->queue, b, CL_FALSE, off, bytes, p, 0, NULL, NULL);
    if (e == CL_SUCCESS) ocl_count_transfer(od);
    return e;
}

static cl_int write_buf(struct ocl_dev *od, cl_mem b, size_t off, size_t bytes, const void *p)
{
    cl_int e = clEnqueueWriteBuffer(od->queue, b, CL_FALSE, off, bytes, p, 0, NULL, NULL);
    if (e == CL_SUCCESS) ocl_count_transfer(od);
    return e;
}

/* zeroes words 32-bit words of b on the passes' queue, counted */
static cl_int zero_buf(struct ocl_dev *od, cl_mem b, uint64_t words)
{
    cl_uint zero = 0;
    cl_int e = clEnqueueFillBuffer(od->queue, b, &zero, sizeof zero, 0, (size_t)(words * 4), 0, NULL, NULL);
    if (e == CL_SUCCESS) ocl_count_fill(od);
    return e;
}

static cl_int finish(struct ocl_dev *od)
{
    ocl_count_submit(od, 1);
    return clFinish(od->queue);
}

/* ---- run ------------------------------------------------------------------------------ */

static struct db_tuning job_tuning(const struct ocl_dev *od, const struct db_plan *pl)
{
    uint32_t epv = pl->p.dtype == DROPBLOCK_F32 ? od->vw : 2 * od->vw; /* elements a vector */
    struct db_tuning tu = {od->tile_rows, epv * od->vpw, od->cand_budget, od->item_cands, od->scatter};
    return tu;
}

int ocl_plan_job(struct ocl_dev *od, const struct db_plan *pl, struct job *j, char *msg, size_t len)
{
    memset(j, 0, sizeof *j);
    j->pl = pl;
    j->tu = job_tuning(od, pl);
    int rc = db_job_chunks(pl, od->max_buffer, 0, &j->ck, msg, len);
    if (rc) return rc;
    if (j->ck.nchunks > SIZE_MAX / sizeof(struct ocl_buf) || j->ck.nchunks > SIZE_MAX / (DBP_COUNT * 4) ||
        j->ck.max_samp > SIZE_MAX / 8 || j->ck.max_words > SIZE_MAX / 4) {
        db_msg(msg, len, "job too large for this host");
        return DROPBLOCK_EEXHAUSTED;
    }
    return DROPBLOCK_OK;
}

void ocl_chunk_of(const struct job *j, uint64_t q, struct db_chunk *ch) { db_job_chunk(j->pl, &j->ck, q, ch); }

/* n buffers of at least bytes each in *bufs (*nbufs of them), kept by the device (released in
 * ocl_teardown). */
cl_int ocl_ensure_bufs(struct ocl_dev *od, struct ocl_buf **bufs, uint64_t *nbufs, uint64_t n, uint64_t bytes)
{
    if (n > *nbufs) {
        struct ocl_buf *m = realloc(*bufs, n * sizeof *m);
        if (!m) return CL_OUT_OF_HOST_MEMORY;
        memset(m + *nbufs, 0, (n - *nbufs) * sizeof *m);
        *bufs = m;
        *nbufs = n;
    }
    cl_int e = CL_SUCCESS;
    for (uint64_t i = 0; i < n && e == CL_SUCCESS; i++) e = ocl_ensure_buf(od, &(*bufs)[i], bytes);
    return e;
}

/* One mask buffer per chunk, all of them holding max_words, kept by the device. */
cl_int ocl_ensure_masks(struct ocl_dev *od, uint64_t n, uint64_t words)
{
    return ocl_ensure_bufs(od, &od->masks, &od->nmasks, n, words * 4);
}

/* One parameter buffer per chunk (DBP_COUNT words), kept by the device. */
cl_int ocl_ensure_prms(struct ocl_dev *od, uint64_t n)
{
    return ocl_ensure_bufs(od, &od->prms, &od->nprms, n, DBP_COUNT * 4);
}

/* Enqueues the mask pass of chunk prm (written to its parameter buffer prmbuf first: the only
 * write of them in the job, the apply reads them there), the per-sample counts zeroed before it. */
cl_int ocl_enqueue_mask(struct ocl_dev *od, const uint32_t *prm, cl_mem prmbuf, cl_mem maskbuf)
{
    cl_int e = write_buf(od, prmbuf, 0, DBP_COUNT * 4, prm);
    if (prm[DBP_SCATTER]) { /* ones, the scatter pass, the count pass (and a fused job's scales) */
        const uint64_t words = (((uint64_t)prm[DBP_NELEM] | (uint64_t)prm[DBP_NELEM + 1] << 32) + 31) / 32;
        cl_uint ones = 0xFFFFFFFFu;
        if (e == CL_SUCCESS)
            e = clEnqueueFillBuffer(od->queue, maskbuf, &ones, sizeof ones, 0, (size_t)(words * 4), 0, NULL, NULL);
        if (e == CL_SUCCESS) ocl_count_fill(od);
        /* the counts and, after them, the count pass's ticket (db_count_item) */
        if (e == CL_SUCCESS) e = zero_buf(od, od->kept.m, (uint64_t)prm[DBP_NSAMP] * 2 + 1);
        cl_mem a[4] = {prmbuf, maskbuf, od->kept.m, od->scales.m};
        if (e == CL_SUCCESS) e = ocl_set_args(od->k[K_SCATTER], 2, a);
        if (e == CL_SUCCESS) e = launch_round(od, od->k[K_SCATTER], od->wg_mask, db_scatter_items(prm));
        if (e == CL_SUCCESS) e = ocl_set_args(od->k[K_COUNT], 4, a);
        if (e == CL_SUCCESS) e = launch_round(od, od->k[K_COUNT], od->wg_mask, db_count_items(prm));
        return e;
    }
    if (e == CL_SUCCESS) e = zero_buf(od, od->kept.m, (uint64_t)prm[DBP_NSAMP] * 2);
    cl_mem a[3] = {prmbuf, maskbuf, od->kept.m};
    if (e == CL_SUCCESS) e = ocl_set_args(od->k[K_MASK], 3, a);
    if (e == CL_SUCCESS) e = launch_round(od, od->k[K_MASK], od->wg_mask, db_mask_items(prm));
    return e;
}

/* Whether the apply of chunk prm runs the fixup pass, and its words (the fast apply's elements
 * over 32, rounded up). */
static uint64_t fixup_words(const struct ocl_dev *od, const struct db_plan *pl, const uint32_t *prm)
{
    uint64_t fast = (uint64_t)prm[DBP_GROUPS] * prm[DBP_EPW];
    return !od->hwexact && pl->p.dtype != DROPBLOCK_F16 ? (fast + 31) / 32 : 0;
}

/* The fixup words of chunk prm zeroed, where its apply takes the fixup pass. */
static cl_int zero_fixup(struct ocl_dev *od, const struct db_plan *pl, const uint32_t *prm)
{
    uint64_t fwords = fixup_words(od, pl, prm);
    if (!fwords) return CL_SUCCESS;
    cl_int e = ocl_ensure_buf(od, &od->fixup, fwords * 4);
    return e == CL_SUCCESS ? zero_buf(od, od->fixup.m, fwords) : e;
}

/* Enqueues the apply pass of a chunk from x to y (device buffers of the chunk, maybe the same)
 * with its parameters in prmbuf; the fixup words zeroed first unless zeroed (zero_fixup, before
 * the job's first launch). CPU devices: the fast kernel over exactly its groups (launch_exact:
 * whole work-groups, then the rest in groups of one), then db_apply_exact over the tail. GPU
 * builds (-DDB_APPLY_ALL, see dropblock.cl): one launch of the fast kernel, its groups and
 * one item more for a tail (with no groups, an item a tail element) rounded up to whole
 * work-groups, bounds-checked in the kernel, the items past the groups doing the tail. The
 * fixup pass, where the subnormal probe failed (or DROPBLOCK_OPENCL_FIXUP=1), stays a launch
 * of its own after it: the one-launch apply (issue 16's 3 launches a one-chunk job: scatter,
 * count, apply) is for devices whose probes pass. */
static cl_int enqueue_apply(struct ocl_dev *od, const struct db_plan *pl, const uint32_t *prm, cl_mem prmbuf,
                            cl_mem maskbuf, cl_mem x, cl_mem y, int zeroed)
{
    cl_int e = CL_SUCCESS;
    uint64_t groups = prm[DBP_GROUPS], fast = groups * prm[DBP_EPW],
             nelem = (uint64_t)prm[DBP_NELEM] | (uint64_t)prm[DBP_NELEM + 1] << 32;
    int fix = !od->hwexact && pl->p.dtype != DROPBLOCK_F16;
    uint64_t fwords = (fast + 31) / 32;
    cl_kernel k = od->k_apply[pl->p.dtype][pl->p.normalize == DROPBLOCK_NORMALIZE_SAMPLE][fix];
    if (groups && fix && !zeroed) e = zero_fixup(od, pl, prm);
    if (!od->cpu) { /* one launch: the fast items, then the tail's (fixup words only where groups) */
        const uint64_t tail_items = groups ? fast < nelem : nelem - fast;
        cl_mem a[6] = {prmbuf, maskbuf, od->scales.m, x, y, fix && groups ? od->fixup.m : od->scales.m};
        if (e == CL_SUCCESS) e = ocl_set_args(k, 6, a);
        if (e == CL_SUCCESS) e = launch_round(od, k, od->wg_apply, groups + tail_items);
    } else if (groups) {
        cl_mem a[6] = {prmbuf, maskbuf, od->scales.m, x, y, fix ? od->fixup.m : od->scales.m};
        if (e == CL_SUCCESS) e = ocl_set_args(k, 6, a);
        if (e == CL_SUCCESS) e = launch_exact(od, k, od->wg_apply, groups);
    }
    if (e == CL_SUCCESS && od->cpu && fast < nelem) {
        cl_mem a[5] = {prmbuf, maskbuf, od->scales.m, x, y};
        e = ocl_set_args(od->k[K_EXACT], 5, a);
        if (e == CL_SUCCESS) e = launch_round(od, od->k[K_EXACT], od->wg_small, nelem - fast);
    }
    if (e == CL_SUCCESS && groups && fix) {
        cl_mem a[5] = {prmbuf, maskbuf, od->scales.m, y, od->fixup.m};
        e = ocl_set_args(od->k[K_FIXUP], 5, a);
        if (e == CL_SUCCESS) e = launch_round(od, od->k[K_FIXUP], od->wg_small, fwords);
    }
    return e;
}

/* A buffer over the caller's memory at p (bytes), or NULL where it cannot be used in place:
 * the kernels need 4-byte alignment (vload/vstore); the rest PoCL takes as it is. */
static cl_mem wrap_host(struct ocl_dev *od, const void *p, uint64_t bytes, int readonly)
{
    if (!od->zero_copy || ((uintptr_t)p & 3) || bytes == 0 || bytes > SIZE_MAX) return NULL;
    cl_int e;
    cl_mem m = clCreateBuffer(od->ctx, CL_MEM_USE_HOST_PTR | (readonly ? CL_MEM_READ_ONLY : CL_MEM_READ_WRITE),
                              (size_t)bytes, (void *)p, &e);
    return e == CL_SUCCESS ? m : NULL;
}

/* K and the scales on the host from the chunks' per-sample counts (pass 1 done). */
int ocl_host_scales(const struct job *j, const uint32_t *partial, uint64_t *kept, uint32_t *scales,
                    dropblock_result *res)
{
    struct db_chunk ch;
    for (uint64_t q = 0; q < j->ck.nchunks; q++) {
        ocl_chunk_of(j, q, &ch);
        const uint32_t *pp = partial + q * j->ck.max_samp * 2;
        for (uint64_t s = 0; s < ch.nsamp; s++)
            kept[ch.n0 + s] += (uint64_t)pp[2 * s] | ((uint64_t)pp[2 * s + 1] << 32);
    }
    return db_plan_scales(j->pl, kept, scales, res);
}

/* A job's host memory: allocated for the job, freed by job_mem_free. */
struct job_mem {
    uint32_t *prms;             /* parameter words, DBP_COUNT a chunk */
    uint32_t *partial;          /* each chunk's per-sample kept counts as read back (two u32 a sample) */
    uint64_t *kept;             /* K per sample */
    uint32_t *scales, *dscales; /* the host's exact scales; the device's (fused) */
    uint32_t *words;            /* the chunks' mask words, where the mask is wanted */
    cl_mem *xs, *ys;            /* the caller's memory used in place, per chunk */
};

static int job_mem_alloc(struct job_mem *m, const struct job *j, int want_mask, char *msg, size_t len)
{
    const uint64_t N = j->pl->N;
    m->prms = malloc(j->ck.nchunks * DBP_COUNT * 4);
    m->partial = malloc(j->ck.nchunks * j->ck.max_samp * 8);
    m->kept = calloc(N, sizeof *m->kept);
    m->scales = calloc(N, sizeof *m->scales);
    m->dscales = calloc(N, sizeof *m->dscales);
    m->words = want_mask ? malloc(j->ck.max_words * 4 * j->ck.nchunks) : NULL;
    m->xs = calloc(j->ck.nchunks, sizeof *m->xs);
    m->ys = calloc(j->ck.nchunks, sizeof *m->ys);
    if (!m->prms || !m->partial || !m->kept || !m->scales || !m->dscales || (want_mask && !m->words) || !m->xs ||
        !m->ys) {
        db_msg(msg, len, "out of host memory for %llu chunks", (unsigned long long)j->ck.nchunks);
        return DROPBLOCK_EEXHAUSTED;
    }
    return DROPBLOCK_OK;
}

static void job_mem_free(struct ocl_dev *od, const struct job *j, struct job_mem *m)
{
    /* nothing may still use host memory we are about to free (non-blocking transfers) */
    clFinish(od->queue);
    if (od->q_up) clFinish(od->q_up);
    if (od->q_down) clFinish(od->q_down);
    for (uint64_t q = 0; m->xs && m->ys && q < j->ck.nchunks; q++) {
        if (m->xs[q]) clReleaseMemObject(m->xs[q]);
        if (m->ys[q]) clReleaseMemObject(m->ys[q]);
    }
    free(m->xs);
    free(m->ys);
    free(m->prms);
    free(m->partial);
    free(m->kept);
    free(m->scales);
    free(m->dscales);
    free(m->words);
}

/* The device buffers every job uses, kept by the device: parameters, counts, scales, masks. */
static int job_buffers(struct ocl_dev *od, const struct job *j, char *msg, size_t len)
{
    int rc;
    if ((rc = ocl_check(ocl_ensure_prms(od, j->ck.nchunks), "clCreateBuffer(params)", msg, len))) return rc;
    if ((rc = ocl_check(ocl_ensure_buf(od, &od->kept, j->ck.max_samp * 8 + 8), "clCreateBuffer(kept)", msg, len)))
        return rc;
    if ((rc = ocl_check(ocl_ensure_buf(od, &od->scales, (j->ck.fused ? j->pl->N : j->ck.max_samp) * 4),
                        "clCreateBuffer(scales)", msg, len)))
        return rc;
    return ocl_check(ocl_ensure_masks(od, j->ck.nchunks, j->ck.max_words), "clCreateBuffer(mask)", msg, len);
}

/* Pass 1 per chunk, enqueued with the read-back of its counts unless later (read_kept 0: a fused
 * job reads them after its apply); the host arrays written and read here live until
 * job_mem_free's clFinish, so every transfer can be non-blocking on the in-order queue. */
static int mask_passes(struct ocl_dev *od, const struct job *j, struct job_mem *m, int read_kept, char *msg, size_t len)
{
    int rc = DROPBLOCK_OK;
    struct db_chunk ch;
    for (uint64_t q = 0; q < j->ck.nchunks && !rc; q++) {
        ocl_chunk_of(j, q, &ch);
        uint32_t *prm = m->prms + q * DBP_COUNT;
        db_kernel_params(j->pl, &ch, &j->tu, prm);
        if ((rc = ocl_check(ocl_enqueue_mask(od, prm, od->prms[q].m, od->masks[q].m), "enqueue(db_mask)", msg, len)))
            break;
        if (read_kept)
            rc = ocl_check(read_buf(od, od->kept.m, 0, (size_t)ch.nsamp * 8, m->partial + q * j->ck.max_samp * 2),
                           "clEnqueueReadBuffer(kept)", msg, len);
    }
    return rc;
}

/* A fused job's scales on the device, after its mask pass in the same queue, read back into
 * dscales for the check of fused_check unless later (read 0: after the apply). */
static int device_scales(struct ocl_dev *od, const struct job *j, const uint32_t *prm, uint32_t *dscales, int read,
                         char *msg, size_t len)
{
    const uint64_t N = j->pl->N;
    cl_mem a[3] = {od->prms[0].m, od->kept.m, od->scales.m};
    int rc;
    /* the scatter flow's count pass made them already (db_count_item's last item) */
    if (!prm[DBP_SCATTER] &&
        ((rc = ocl_check(ocl_set_args(od->k[K_SCALE], 3, a), "clSetKernelArg(db_scale)", msg, len)) ||
         (rc = ocl_check(launch_round(od, od->k[K_SCALE], od->wg_small, N), "clEnqueueNDRangeKernel(db_scale)", msg,
                         len))))
        return rc;
    if (!read) return DROPBLOCK_OK;
    return ocl_check(read_buf(od, od->scales.m, 0, (size_t)N * 4, dscales), "clEnqueueReadBuffer(scales)", msg, len);
}

/* The buffers of chunk q's apply: the caller's memory in place where it can be used (xs/ys),
 * else od->data with x copied in (enqueued here); with xres/yres (bench) the resident buffers. */
static int chunk_buffers(struct ocl_dev *od, const struct job *j, uint64_t q, size_t es, const void *in, void *out,
                         cl_mem xres, cl_mem yres, struct job_mem *m, cl_mem *x, cl_mem *y, char *msg, size_t len)
{
    struct db_chunk ch;
    ocl_chunk_of(j, q, &ch);
    const uint64_t bytes = ch.nelem * es;
    *x = xres;
    *y = yres;
    if (xres) return DROPBLOCK_OK;
    const char *xin = (const char *)in + ch.e0 * es;
    char *yout = (char *)out + ch.e0 * es;
    m->xs[q] = wrap_host(od, xin, bytes, xin != yout);
    m->ys[q] = xin == yout ? NULL : wrap_host(od, yout, bytes, 0);
    if (m->xs[q] && (xin == yout || m->ys[q])) {
        *x = m->xs[q];
        *y = xin == yout ? m->xs[q] : m->ys[q];
        return DROPBLOCK_OK;
    }
    /* copy in, apply in place, copy out */
    int rc;
    if ((rc = ocl_check(ocl_ensure_buf(od, &od->data, ((j->ck.max_elem * es + 3) & ~UINT64_C(3)) + 64),
                        "clCreateBuffer(data)", msg, len)))
        return rc;
    if ((rc = ocl_check(write_buf(od, od->data.m, 0, (size_t)bytes, xin), "clEnqueueWriteBuffer(x)", msg, len)))
        return rc;
    *x = *y = od->data.m;
    return DROPBLOCK_OK;
}

/* Pass 3 of chunk q, unstaged, from x to y (chunk_buffers): its parameters as its mask pass
 * wrote them (od->prms[q]: the same words, not written again), the host's scales unless fused, the fixup words zeroed
 * unless zeroed already; then y copied out (or made visible in the caller's memory) and the chunk's mask words read
 * where wanted. */
static int apply_chunk(struct ocl_dev *od, const struct job *j, uint64_t q, size_t es, void *out, cl_mem xres, cl_mem x,
                       cl_mem y, int zeroed, struct job_mem *m, char *msg, size_t len)
{
    struct db_chunk ch;
    ocl_chunk_of(j, q, &ch);
    const uint32_t *prm = m->prms + q * DBP_COUNT;
    const uint64_t bytes = ch.nelem * es;
    char *yout = xres ? NULL : (char *)out + ch.e0 * es;
    int rc;
    if (!j->ck.fused && (rc = ocl_check(write_buf(od, od->scales.m, 0, (size_t)ch.nsamp * 4, m->scales + ch.n0),
                                        "clEnqueueWriteBuffer(scales)", msg, len)))
        return rc;
    if ((rc = ocl_check(enqueue_apply(od, j->pl, prm, od->prms[q].m, od->masks[q].m, x, y, zeroed), "enqueue(db_apply)",
                        msg, len)))
        return rc;
    if (!xres && y == od->data.m) {
        if ((rc = ocl_check(read_buf(od, y, 0, (size_t)bytes, yout), "clEnqueueReadBuffer(y)", msg, len))) return rc;
    } else if (!xres) { /* makes the device's writes visible in the caller's memory */
        void *p = clEnqueueMapBuffer(od->queue, y, CL_FALSE, CL_MAP_READ, 0, (size_t)bytes, 0, NULL, NULL, NULL);
        if (p) ocl_count_transfer(od);
        if (p && (rc = ocl_check(clEnqueueUnmapMemObject(od->queue, y, p, 0, NULL, NULL), "clEnqueueUnmapMemObject(y)",
                                 msg, len)))
            return rc;
        if (p) ocl_count_transfer(od);
    }
    if (!m->words) return DROPBLOCK_OK;
    return ocl_check(
        read_buf(od, od->masks[q].m, 0, (size_t)((ch.nelem + 31) / 32 * 4), m->words + q * j->ck.max_words),
        "clEnqueueReadBuffer(mask)", msg, len);
}

/* A one-chunk fused job, unstaged, enqueued with nothing between its kernels but what they
 * need: x copied in (where it is), the parameters written once (the mask, scale and apply
 * passes of one chunk take the same words), the counts and the fixup words zeroed, all before
 * the mask pass; a flush after it; the scales and the apply; then y copied out and the counts
 * and the device's scales read back into pinned memory (ocl_readback; they only feed the reply
 * and fused_check). */
static int fused_job(struct ocl_dev *od, const struct job *j, size_t es, const void *in, void *out, cl_mem xres,
                     cl_mem yres, struct job_mem *m, char *msg, size_t len)
{
    struct db_chunk ch;
    ocl_chunk_of(j, 0, &ch);
    const size_t kbytes = (size_t)ch.nsamp * 8, kspan = (kbytes + 63) & ~(size_t)63, sbytes = (size_t)j->pl->N * 4;
    char *rb = ocl_readback(od, kspan + sbytes); /* pinned; NULL: into the job's memory */
    uint32_t *partial = rb ? (uint32_t *)rb : m->partial, *dscales = rb ? (uint32_t *)(rb + kspan) : m->dscales;
    cl_mem x, y;
    int rc;
    if ((rc = chunk_buffers(od, j, 0, es, in, out, xres, yres, m, &x, &y, msg, len))) return rc;
    db_kernel_params(j->pl, &ch, &j->tu, m->prms);
    if ((rc = ocl_check(zero_fixup(od, j->pl, m->prms), "clEnqueueFillBuffer(fixup)", msg, len)) ||
        (rc = mask_passes(od, j, m, 0, msg, len)))
        return rc;
    ocl_count_submit(od, 0);
    if ((rc = ocl_check(clFlush(od->queue), "clFlush(db_mask)", msg, len)) ||
        (rc = device_scales(od, j, m->prms, m->dscales, 0, msg, len)) ||
        (rc = apply_chunk(od, j, 0, es, out, xres, x, y, 1, m, msg, len)))
        return rc;
    if ((rc = ocl_check(read_buf(od, od->kept.m, 0, kbytes, partial), "clEnqueueReadBuffer(kept)", msg, len)) ||
        (rc = ocl_check(read_buf(od, od->scales.m, 0, sbytes, dscales), "clEnqueueReadBuffer(scales)", msg, len)) ||
        (rc = ocl_check(finish(od), "clFinish(db_apply)", msg, len)))
        return rc;
    if (rb) {
        memcpy(m->partial, partial, kbytes);
        memcpy(m->dscales, dscales, sbytes);
    }
    return DROPBLOCK_OK;
}

/* A fused job, applied: K for the reply, and the host's exact scales as a check of the device's. */
static int fused_check(const struct job *j, struct job_mem *m, dropblock_result *res, char *msg, size_t len)
{
    struct db_chunk ch;
    ocl_chunk_of(j, 0, &ch);
    for (uint64_t s = 0; s < ch.nsamp; s++)
        m->kept[ch.n0 + s] = (uint64_t)m->partial[2 * s] | ((uint64_t)m->partial[2 * s + 1] << 32);
    int rc = db_plan_scales(j->pl, m->kept, m->scales, res);
    if (rc) return rc;
    if (memcmp(m->scales, m->dscales, j->pl->N * 4)) {
        db_msg(msg, len, "the device's scale 0x%08x differs from the exact 0x%08x", m->dscales[0], m->scales[0]);
        return DROPBLOCK_EINTERNAL;
    }
    return DROPBLOCK_OK;
}

/* The job from x to y: in/out in host memory, or (bench) xres/yres already on the device. A
 * fused job (one chunk, scales on the device) unstaged is fused_job; else pass 1 per chunk, the
 * scales on the device (fused, staged) or on the host, and pass 3 staged in slices
 * (opencl_staging.c) or per chunk. A job of several chunks makes a host round trip between its
 * passes (the scales need every chunk's counts); each chunk's parameters are written once, into
 * the chunk's own buffer (od->prms[q]) for its mask pass, and its apply reads them there. */
int ocl_job(struct ocl_dev *od, const struct db_plan *pl, const void *in, void *out, void *mask, cl_mem xres,
            cl_mem yres, dropblock_result *res, char *msg, size_t len)
{
    const uint64_t t_start = db_now_us();
    const size_t es = dropblock_dtype_size(pl->p.dtype);
    struct job j;
    count_reset(od);
    int rc = ocl_plan_job(od, pl, &j, msg, len);
    if (rc) return rc;
    if (xres && j.ck.nchunks != 1) {
        db_msg(msg, len, "the tensor takes %llu chunks on this device; the benchmark takes one",
               (unsigned long long)j.ck.nchunks);
        return DROPBLOCK_EINVAL;
    }
    struct job_mem m = {0};
    uint64_t t_mask = 0, t_scale = 0, t_apply = 0;
    const uint64_t L = ocl_stage_slice(od, &j, es, xres != NULL); /* 0: unstaged */
    if ((rc = job_mem_alloc(&m, &j, mask != NULL, msg, len)) || (rc = job_buffers(od, &j, msg, len))) goto done;
    if (j.ck.fused && !L) {
        if ((rc = fused_job(od, &j, es, in, out, xres, yres, &m, msg, len))) goto done;
    } else {
        if ((rc = mask_passes(od, &j, &m, 1, msg, len))) goto done;
        if (j.ck.fused) {
            if ((rc = device_scales(od, &j, m.prms, m.dscales, 1, msg, len))) goto done;
        } else if (!L) {
            if ((rc = ocl_check(finish(od), "clFinish(db_mask)", msg, len))) goto done;
            t_mask = db_now_us() - t_start;
            uint64_t t0 = db_now_us();
            rc = ocl_host_scales(&j, m.partial, m.kept, m.scales, res);
            t_scale = db_now_us() - t0;
            if (rc) goto done;
        }
        if (L) { /* pass 3 in slices through pinned memory, overlapped with the copies */
            uint64_t t[3] = {0, 0, 0};
            rc = ocl_stage_run(od, &j, es, L, in, out, m.prms, m.partial, m.kept, m.scales, m.words, t_start, t, res,
                               msg, len);
            if (rc) goto done;
            t_mask = t[0];
            t_scale = t[1];
            t_apply = t[2];
        } else { /* pass 3 per chunk */
            t_apply = db_now_us();
            for (uint64_t q = 0; q < j.ck.nchunks && !rc; q++) {
                cl_mem x, y;
                rc = chunk_buffers(od, &j, q, es, in, out, xres, yres, &m, &x, &y, msg, len);
                if (!rc) rc = apply_chunk(od, &j, q, es, out, xres, x, y, 0, &m, msg, len);
            }
            if (rc || (rc = ocl_check(finish(od), "clFinish(db_apply)", msg, len))) goto done;
        }
    }
    if (j.ck.fused && (rc = fused_check(&j, &m, res, msg, len))) goto done;
    struct db_chunk ch;
    for (uint64_t q = 0; q < j.ck.nchunks && mask; q++) {
        ocl_chunk_of(&j, q, &ch);
        db_mask_export_flat(pl, m.words + q * j.ck.max_words, ch.e0, ch.nelem, mask);
    }
    res->timing_us[0] = t_mask;
    res->timing_us[1] = t_scale;
    res->timing_us[2] = j.ck.fused ? 0 : db_now_us() - t_apply;
done:
    job_mem_free(od, &j, &m);
    res->timing_us[3] = db_now_us() - t_start;
    return rc;
}

static int ocl_run(struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
                   dropblock_result *res)
{
    struct ocl_dev *od = dev->priv;
    if (!od || !od->program) {
        db_msg(res->message, sizeof res->message, "OpenCL device not prepared");
        return DROPBLOCK_EINTERNAL;
    }
    if (dev->inject_lost) /* DROPBLOCK_FAULTS "lost" (engine.h): what the driver answers for a device that is gone */
        return ocl_fail(res->message, sizeof res->message, "clEnqueueNDRangeKernel(db_mask), injected fault",
                        CL_DEVICE_NOT_AVAILABLE);
    int rc = ocl_job(od, pl, in, out, mask, NULL, NULL, res, res->message, sizeof res->message);
    dev->last_job = od->js;
    return rc;
}

static void ocl_describe(const struct db_device *dev, char *buf, size_t len)
{
    const struct ocl_dev *od = dev->priv;
    /* staged: jobs over one slice go through the pinned slots overlapped, smaller ones by plain copies */
    /* warmed: launch shapes built at setup; cold: shapes a job launched first (see "warm-up") */
    snprintf(buf, len,
             "memory=%s f16=%s subnormals=%s mask=%s vector=%ux%u work-groups=%zu/%zu/%zu warmed=%d cold=%llu",
             od->zero_copy ? "zero-copy" : "staged", od->hwhalf ? "hardware" : "integer",
             od->hwexact ? "hardware" : "fixup", od->cpu ? "cpu-batches" : "gpu-blocks", od->vw, od->vpw, od->wg_mask,
             od->wg_small, od->wg_apply, od->warm ? od->nvariants : 0, (unsigned long long)od->cold);
}

static void ocl_tuning(const struct db_device *dev, const struct db_plan *pl, struct db_tuning *out)
{
    *out = job_tuning(dev->priv, pl);
}

const struct backend_ops db_backend_opencl = {.name = "opencl",
                                              .enumerate = ocl_enumerate,
                                              .prepare = ocl_prepare,
                                              .run = ocl_run,
                                              .bench = ocl_bench,
                                              .release = ocl_release,
                                              .describe = ocl_describe,
                                              .tuning = ocl_tuning};
