/* backend_vulkan.c: the Vulkan backend; every Vulkan call of the project lives in this file
 * and its vulkan_device.c, vulkan_memory.c and vulkan_bench.c (backend_vulkan.h says which holds what).
 *
 * enumerate makes one VkInstance (Vulkan 1.1) and lists every physical device; the devices share
 * the instance through a reference count, so it lives while any of them does. prepare makes a
 * logical device with one compute queue (and VK_EXT_external_memory_host where offered), one
 * descriptor set layout shared by the passes (binding numbers as in shaders/db_glsl.h: the
 * parameter words a uniform buffer, the rest storage buffers), the compute pipelines from the
 * SPIR-V compiled into the binary with the work-group size as a specialization constant chosen
 * from the subgroup size, and a pipeline cache kept on disk under the cache directory. run
 * follows tests/test_passes.c: a job of one chunk is one submission (mask, total, scale, apply,
 * barriers between) with no host round trip; a larger one runs pass 1 chunk by chunk, the scales
 * on the host, then pass 3. A submission's commands are logged and a command buffer recorded
 * from them only when none kept from an earlier job holds the same (vulkan_record.c): a job of a
 * shape seen before, on the same buffers, submits the kept one.
 *
 * Buffers are kept by the device between jobs and grown when a job needs more. Where the device
 * has memory the host cannot map (a discrete GPU: "staged"), every buffer is DEVICE_LOCAL, so
 * that the passes run at the device's memory speed, and the ones the host reads or writes (the
 * parameter words, x, the mask, the counts, the scales) have a mapped HOST_VISIBLE twin that the
 * submission copies from before the passes and to after them. The copy of x onto the device is
 * recorded after the mask pass with no barrier between them (the mask pass does not read x),
 * so the device may overlap the two. Elsewhere (integrated GPUs, CPUs) buffers are HOST_VISIBLE |
 * HOST_COHERENT and mapped, and the passes use them directly. A one-chunk job whose tensors are
 * aligned to minImportedHostPointerAlignment uses them through VK_EXT_external_memory_host
 * instead of copying them on the host: the passes read and write them in place, or on a staged
 * device the copies onto and off the device take them as source and destination. Tensors in a
 * host region (the daemon's, struct db_host_region) use the region's import, made on its first
 * job and kept (VK_KEPT_IMPORTS a device, with a reference on the region) until the region is
 * gone, bound at the tensor's offset; others are imported for their job alone. With several
 * chunks the mask bits wait on the host between pass 1 and pass 3 (they are 1/32 of f32 data).
 *
 * On GPU tunings the mask of a job that allows it (compat none, unshared masks) is made by the
 * scatter flow instead of the tiles: the chunk's mask words filled with ones, scatter.comp (each
 * candidate block's Philox words once, fired blocks cleared with atomics), count.comp (the kept
 * bits counted; in a fused job its last invocation makes the scales, so no scale pass runs).
 *
 * Test/debug knobs: DROPBLOCK_VULKAN_MAX_BUFFER=<bytes> caps every device's max_buffer (at
 * least 512), so that small tensors take the chunked path; the tests run the matrix with 4096.
 * DROPBLOCK_VULKAN_SHAPE=gpu gives a CPU device (lavapipe) the GPU tuning: the scatter flow and
 * the GPU tiles, these still bounded by lavapipe's loop limit (vk_job_tuning).
 * DROPBLOCK_VULKAN_COPY=1 never imports host memory. DROPBLOCK_VULKAN_STAGE=1 stages every device
 * (the tests check the staged path on lavapipe), =0 none. DROPBLOCK_VULKAN_FIXUP=1 takes the
 * subnormal fixup pass even where the probe found the device exact. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vulkan/vulkan.h>

#include "backend.h"
#include "backend_vulkan.h"
#include "clock.h"
#include "fp.h"
#include "kernel_cache.h"
#include "kernel_params.h"
#include "msg.h"

#include "spv_apply.h"
#include "spv_count.h"
#include "spv_exact.h"
#include "spv_fixup.h"
#include "spv_mask.h"
#include "spv_scale.h"
#include "spv_scatter.h"

/* ---- pipeline cache -------------------------------------------------------------------- */

/* FNV-1a of the embedded SPIR-V: a rebuilt shader starts a new file instead of piling its
 * pipelines onto the old ones in the same cache */
static const struct spv pass_spv[PASS_N] = {
    {db_spv_mask, sizeof db_spv_mask, "mask"},    {db_spv_scale, sizeof db_spv_scale, "scale"},
    {db_spv_apply, sizeof db_spv_apply, "apply"}, {db_spv_exact, sizeof db_spv_exact, "exact"},
    {db_spv_fixup, sizeof db_spv_fixup, "fixup"}, {db_spv_scatter, sizeof db_spv_scatter, "scatter"},
    {db_spv_count, sizeof db_spv_count, "count"},
};

static uint64_t spirv_hash(void)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (int b = 0; b < PASS_N + BS_N; b++) {
        const struct spv *s = b < PASS_N ? &pass_spv[b] : &vk_bench_spv[b - PASS_N];
        for (size_t i = 0; i < s->size; i++) h = (h ^ ((const uint8_t *)s->code)[i]) * UINT64_C(0x100000001b3);
    }
    return h;
}

#define CACHE_MAGIC "DBVKPIPE"

/* the entry's key: the shaders and everything that makes a driver reject a cache */
static uint64_t cache_key(const struct vk_dev *d)
{
    uint64_t spv = spirv_hash();
    uint64_t h = db_kcache_hash(DB_KCACHE_HASH_INIT, &spv, sizeof spv);
    h = db_kcache_hash(h, d->props.pipelineCacheUUID, VK_UUID_SIZE);
    h = db_kcache_hash(h, &d->props.vendorID, sizeof d->props.vendorID);
    h = db_kcache_hash(h, &d->props.deviceID, sizeof d->props.deviceID);
    return db_kcache_hash(h, &d->props.driverVersion, sizeof d->props.driverVersion);
}

/* cache file named by the parts of its key */
static void cache_path(const struct vk_dev *d, const char *dir, char *buf, size_t len)
{
    char uuid[33];
    for (unsigned i = 0; i < VK_UUID_SIZE; i++) snprintf(uuid + 2 * i, 3, "%02x", d->props.pipelineCacheUUID[i]);
    snprintf(buf, len, "%s/vulkan-%016" PRIx64 "-%s-%04" PRIx32 "-%04" PRIx32 "-%08" PRIx32 ".pipelinecache", dir,
             spirv_hash(), uuid, d->props.vendorID, d->props.deviceID, d->props.driverVersion);
}

/* The pipeline cache data of the entry at path (kernel_cache.c checks the entry) if the data's
 * own header matches this device (the driver checks again), else NULL. */
static void *cache_load(const struct vk_dev *d, const char *path, size_t *size)
{
    void *buf = db_kcache_load(path, CACHE_MAGIC, cache_key(d), size);
    uint32_t h[4];
    if (buf && *size >= 16 + VK_UUID_SIZE) {
        memcpy(h, buf, sizeof h);
        if (h[0] >= 16 + VK_UUID_SIZE && h[1] == VK_PIPELINE_CACHE_HEADER_VERSION_ONE && h[2] == d->props.vendorID &&
            h[3] == d->props.deviceID && !memcmp((char *)buf + 16, d->props.pipelineCacheUUID, VK_UUID_SIZE))
            return buf;
    }
    free(buf);
    *size = 0;
    return NULL;
}

/* Writes the cache's data as the entry at path when it differs from what was loaded (old).
 * Failure only costs the next start its compile time, so it is silent. */
static void cache_save(const struct vk_dev *d, const char *dir, const char *path, const void *old, size_t old_size)
{
    size_t size = 0;
    if (vkGetPipelineCacheData(d->dev, d->cache, &size, NULL) != VK_SUCCESS || size == 0) return;
    void *data = malloc(size);
    if (!data) return;
    VkResult r = vkGetPipelineCacheData(d->dev, d->cache, &size, data);
    if (r == VK_SUCCESS && !(old && old_size == size && !memcmp(old, data, size)))
        db_kcache_store(dir, path, CACHE_MAGIC, cache_key(d), data, size);
    free(data);
}

/* ---- prepare --------------------------------------------------------------------------- */

static int vk_prepare(struct db_device *dev, const struct db_backend_config *cfg, char *msg, size_t len)
{
    struct vk_dev *d = dev->priv;
    VkResult r;
    int ready = vk_prepare_device(d, msg, len);
    if (ready) return ready;

    /* the pipeline cache: any unreadable or foreign file just means starting empty */
    char dir[1024] = "", path[1100] = "";
    void *old = NULL;
    size_t old_size = 0;
    if (cfg && cfg->cache_dir && cfg->cache_dir[0] && strlen(cfg->cache_dir) < sizeof dir) {
        snprintf(dir, sizeof dir, "%s", cfg->cache_dir);
        cache_path(d, dir, path, sizeof path);
        old = cache_load(d, path, &old_size);
    }
    VkPipelineCacheCreateInfo pci = {
        .sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO, .initialDataSize = old_size, .pInitialData = old};
    if (vkCreatePipelineCache(d->dev, &pci, NULL, &d->cache) != VK_SUCCESS) {
        pci.initialDataSize = 0;
        pci.pInitialData = NULL;
        if (vkCreatePipelineCache(d->dev, &pci, NULL, &d->cache) != VK_SUCCESS) d->cache = VK_NULL_HANDLE;
    }

    int rc = DROPBLOCK_OK;
    for (int i = 0; i < PASS_N && !rc; i++) {
        if ((i == PASS_SCATTER || i == PASS_COUNT) && !d->scatter) continue; /* GPU tunings' alone */
        if ((r = vk_make_pipeline(d, &pass_spv[i], &d->pipes[i]))) {
            char what[96];
            snprintf(what, sizeof what, "vkCreateComputePipelines(%s)", pass_spv[i].name);
            rc = vk_fail(msg, len, r, what);
        }
    }
    /* the submission set-up makes the probes' and the hardware-f16 apply's pipelines: the cache
     * is saved after it, so that they are kept too */
    if (!rc) rc = vk_prepare_submission(d, msg, len);
    if (!rc && d->cache && path[0]) cache_save(d, dir, path, old, old_size);
    free(old);
    return rc;
}

/* the bytes of the counts the host reads: per sample, K, the completion words (vk_record_mask) */
/* ---- job counts -----------------------------------------------------------------------
 * struct db_job_stats (backend.h) of the job vk_run runs, counted here as the job records its
 * dispatches (vk_step), copies (vk_copy, vk_to_host, vk_to_device) and fills, and submits
 * (vk_submit: one vkQueueSubmit and one vkWaitForFences), in recording order across the job's
 * submissions; with js NULL (the benchmark's jobs) nothing is counted. */
static _Thread_local struct {
    struct db_job_stats *js;
    uint32_t pend_transfers, pend_fills;
    int launched;
} jc;

static void count_launch(void)
{
    if (!jc.js) return;
    if (jc.launched) {
        jc.js->transfers_between += jc.pend_transfers;
        jc.js->fills_between += jc.pend_fills;
    }
    jc.pend_transfers = jc.pend_fills = 0;
    jc.launched = 1;
    jc.js->launches++;
}

static void count_transfer(void)
{
    if (!jc.js) return;
    jc.js->transfers++;
    jc.pend_transfers++;
}

static void step(struct vk_dev *d, VkPipeline pipe, uint64_t n, int first)
{
    vk_step(d, pipe, n, first);
    count_launch();
}

static void fill(struct vk_dev *d, VkBuffer b, uint64_t bytes, uint32_t value)
{
    vk_fill(d, b, bytes, value);
    if (!jc.js) return;
    jc.js->fills++;
    jc.pend_fills++;
}

static void copy(struct vk_dev *d, VkBuffer src, uint64_t src_off, VkBuffer dst, uint64_t dst_off, uint64_t bytes,
                 int after_passes)
{
    vk_copy_at(d, src, src_off, dst, dst_off, bytes, after_passes);
    if (bytes) count_transfer();
}

static void to_device(struct vk_dev *d, int i, uint64_t bytes)
{
    vk_to_device(d, i, bytes);
    if (bytes && d->bufs[i].twin) count_transfer(); /* no twin: the host's memory is the device's */
}

static void to_host(struct vk_dev *d, int i, uint64_t bytes)
{
    vk_to_host(d, i, bytes);
    if (bytes && d->bufs[i].twin) count_transfer();
}

static int submit(struct vk_dev *d, char *msg, size_t len)
{
    int rc = vk_submit(d, msg, len);
    if (jc.js) {
        jc.js->submits++;
        jc.js->waits++;
        jc.js->recordings += !rc && d->recorded;
    }
    return rc;
}

uint64_t vk_kept_bytes(const uint32_t *prm) { return (uint64_t)prm[DBP_NSAMP] * 8 + 16; }

/* Records pass 1 of the chunk whose parameters are in the params buffer: the per-sample
 * counts zeroed, then the mask pass, which adds to them; where prm[DBP_SCATTER] (GPU tunings),
 * the chunk's mask words filled with ones, the scatter pass, which clears the fired blocks' bits,
 * and the count pass, which adds the kept bits to the counts (and in a fused job, DBP_FUSED,
 * makes the scales: no scale pass follows). */
void vk_record_mask(struct vk_dev *d, const uint32_t *prm)
{
    /* the counts, two spare words (K once; the count pass's ticket, the first) and mask.comp's
     * two completion words */
    fill(d, d->bufs[B_KEPT].buf, ((uint64_t)prm[DBP_NSAMP] * 8 + 16 + 63) & ~UINT64_C(63), 0);
    if (!prm[DBP_SCATTER]) {
        step(d, d->pipes[PASS_MASK], db_mask_items(prm), 0);
        return;
    }
    const uint64_t words = (((uint64_t)prm[DBP_NELEM] | (uint64_t)prm[DBP_NELEM + 1] << 32) + 31) / 32;
    if (words) fill(d, d->bufs[B_MASK].buf, words * 4, 0xFFFFFFFFu);
    step(d, d->pipes[PASS_SCATTER], db_scatter_items(prm), 0);
    step(d, d->pipes[PASS_COUNT], db_count_items(prm), 0);
}

/* Records pass 3 of the chunk (scales in place, after a barrier): fast, tail, fixup. */
static void record_apply(struct vk_dev *d, const struct db_plan *pl, const uint32_t *prm)
{
    uint64_t groups = prm[DBP_GROUPS], fast = groups * prm[DBP_EPW], nelem = (uint64_t)prm[DBP_NELEM];
    int fix = groups && pl->p.dtype != DROPBLOCK_F16 && !d->hwexact;
    uint64_t fwords = (fast + 31) / 32;
    if (fix) fill(d, d->bufs[B_FIXUP].buf, (fwords * 4 + 63) & ~UINT64_C(63), 0);
    if (groups) step(d, d->pipes[PASS_APPLY], groups, 0);
    /* the tail beside the fast pass (their elements and words are apart): after its barrier */
    if (fast < nelem)
        step(d, d->pipes[PASS_EXACT], pl->p.dtype == DROPBLOCK_F32 ? nelem - fast : (nelem - fast + 1) / 2,
             groups != 0);
    if (fix) step(d, d->pipes[PASS_FIXUP], fwords, 0);
}

/* ---- run ------------------------------------------------------------------------------- */

/* lavapipe ends every loop of an invocation once its loops have run 65535 iterations in all
 * (mask.comp): the mask pass plans for at most MASK_LOOP_BUDGET of them an invocation. A fired
 * candidate costs about rows x (3 columns + 1) + 16 iterations when dropping its block (NHWC
 * marks bit by bit), any candidate about MASK_CAND_COST (its word, its share of the tile's
 * rows and counts). */
#define MASK_LOOP_BUDGET 24000u
#define MASK_CAND_COST 4u

/* The job's tuning. On CPU devices, safe: so few candidates an invocation that its loops stay
 * within the budget even if every candidate fires; else as many as the expected fires allow
 * (n p + 8 sqrt(n p) + 16 of them, p the firing probability T / (wmask + 1), T / 2^32 or for
 * keras_cv T / 2^23), which is the safe tuning at high rates; mask.comp's completion check and a
 * rerun with the safe tuning (mask_pass) cover the rare tail. */
struct db_tuning vk_job_tuning(const struct vk_dev *d, const struct db_plan *pl, int safe)
{
    /* apply.comp: one 16-byte vector an invocation */
    struct db_tuning tu = {d->tile_rows, pl->p.dtype == DROPBLOCK_F32 ? 4u : 8u, d->cand_budget, d->item_cands,
                           d->scatter};
    if (d->props.deviceType != VK_PHYSICAL_DEVICE_TYPE_CPU) return tu;
    /* a CPU device: lavapipe's loop limit bounds the tiles, and the scatter flow of the GPU
     * shape (DROPBLOCK_VULKAN_SHAPE=gpu) where its worst case fits (below) */
    const uint32_t fault = safe ? 0 : d->knobs->vulkan_mask_fault;
    if (fault) {
        tu.cand_budget = tu.item_cands = fault;
        tu.scatter = 0; /* the fault is the tiles' (their completion check): the first try takes them */
        return tu;
    }
    uint64_t rows = (uint64_t)pl->up + pl->down + 1, cols = (uint64_t)pl->left + pl->right + 1;
    uint64_t cost = rows * (3 * cols + 1) + 16, fit = MASK_LOOP_BUDGET / cost;
    /* the scatter flow has no completion check: on a CPU device it takes only jobs whose
     * invocations stay within the budget even if every candidate fires: at most 4 candidates a
     * block, the larger of tu.scatter and a row's blocks (db_kernel_params' DBP_SKR), each
     * clearing its block in every slice it reaches (3-D) */
    const uint64_t row_blocks = ((uint64_t)pl->W + 3) / 4 + 1, slices = 1 + (uint64_t)pl->dup + pl->ddown;
    if (4 * (tu.scatter > row_blocks ? tu.scatter : row_blocks) * (MASK_CAND_COST + cost * slices) > MASK_LOOP_BUDGET)
        tu.scatter = 0;
    if (fit < 1) fit = 1;
    if (!safe) {
        /* the most candidates n (up to the defaults) whose expected work fits: binary search */
        const double p = (double)pl->threshold / ((double)pl->wmask + 1); /* fires: (word & wmask) < T */
        uint64_t lo = fit, hi = tu.item_cands > tu.cand_budget ? tu.item_cands : tu.cand_budget;
        while (lo < hi) {
            uint64_t n = lo + (hi - lo + 1) / 2;
            double mu = (double)n * p, fires = mu + 8 * sqrt(mu) + 16;
            if ((double)n * MASK_CAND_COST + fires * (double)cost <= MASK_LOOP_BUDGET) lo = n;
            else hi = n - 1;
        }
        fit = lo;
    }
    if (fit < tu.cand_budget) tu.cand_budget = (uint32_t)fit;
    if (fit < tu.item_cands) tu.item_cands = (uint32_t)fit;
    return tu;
}

/* Whether every invocation of the mask pass just run (parameters prm) that took tiles ran to
 * its end (mask.comp's completion count); the scatter flow always (its invocations' work is
 * bounded: about DBP_SKR rows' blocks and the drops of the fired ones), and the tiles on devices
 * that do not cut loops (GPUs: mask.comp made without the count, d->mask_done 0). */
int vk_mask_done(const struct vk_dev *d, const uint32_t *prm)
{
    if (prm[DBP_SCATTER] || !d->mask_done) return 1;
    const uint64_t items = db_mask_items(prm), ran = (uint64_t)vk_groups_for(d, items) * d->local;
    const uint32_t *k = d->bufs[B_KEPT].map;
    return k[2 * (uint64_t)prm[DBP_NSAMP] + 2] == (ran < items ? ran : items);
}

/* Pass 1 of chunk ch, submitted alone, with tuning tu; where an invocation was cut short, again
 * with the worst-case tuning safe (counted in *reruns and d->mask_reruns). Its parameters are
 * left in the parameter buffer, its counts and its first mask_bytes of mask bits for the host. */
static int mask_pass(struct vk_dev *d, const struct db_plan *pl, const struct db_chunk *ch, const struct db_tuning *tu,
                     const struct db_tuning *safe, uint64_t mask_bytes, uint64_t *reruns, char *msg, size_t len)
{
    uint32_t *prm = d->bufs[B_PRM].map;
    int rc;
    for (int attempt = 0; attempt < 2; attempt++) {
        const struct db_tuning *t = attempt ? safe : tu;
        db_kernel_params(pl, ch, t, prm);
        if ((rc = vk_begin(d, msg, len))) return rc;
        vk_record_mask(d, prm);
        to_host(d, B_KEPT, vk_kept_bytes(prm));
        to_host(d, B_MASK, mask_bytes);
        if ((rc = submit(d, msg, len))) return rc;
        if (vk_mask_done(d, prm)) return DROPBLOCK_OK;
        if (!memcmp(t, safe, sizeof *t)) break;
        (*reruns)++;
        d->mask_reruns++;
    }
    db_msg(msg, len, "the mask pass was cut short (an invocation did not run to its end) with the worst-case budget");
    return DROPBLOCK_EINTERNAL;
}

/* A job's state between its parts (vk_job): the plan's chunks, the tunings, the tensors'
 * buffers and the host's counts, scales and mask bits. */
struct job {
    struct vk_dev *d;
    struct db_device *dev;
    const struct db_plan *pl;
    const void *in;
    void *out, *mask;
    dropblock_result *res;
    size_t es;
    struct db_chunking ck; /* the plan's chunks (db_job_chunks) */
    struct db_tuning tu, safe;
    uint32_t fault;            /* DROPBLOCK_VULKAN_MASK_FAULT on a CPU device, else 0 */
    uint64_t reruns;           /* mask passes of this job rerun with the worst-case budget */
    int copy_in;               /* x through the x buffer's mapped memory */
    VkBuffer xb;               /* the buffer the passes run on */
    VkBuffer src, dst;         /* staged: x copied onto xb from src, y off it to dst (else VK_NULL_HANDLE) */
    uint64_t src_off, dst_off; /* where x lies in src, y in dst */
    struct vk_buf xi, yi;      /* the caller's tensors, imported for this job */
    uint64_t *kept;
    uint32_t *scales;
    uint32_t *hmask; /* the mask of every chunk, between the passes, when there are several */
};

/* x and y through the kept imports of the host regions that hold them (the daemon's regions:
 * one import a region for all its jobs, vk_region_import), at offsets the device can bind; 0
 * where either cannot be (no region, an unaligned offset or size, no import). */
static int job_regions(struct job *j, VkBuffer *xb, uint64_t *xoff, VkBuffer *yb, uint64_t *yoff)
{
    struct vk_dev *d = j->d;
    const struct db_job_mem *mem = j->dev ? j->dev->job_mem : NULL;
    const uint64_t bytes = j->pl->numel * j->es, align = d->props.limits.minStorageBufferOffsetAlignment;
    if (!mem || !mem->in || !mem->out || !d->has_import || d->knobs->vulkan_copy || bytes % 4) return 0;
    const struct vk_buf *bx = vk_region_import(d, mem->in);
    const struct vk_buf *by = mem->out == mem->in ? bx : bx ? vk_region_import(d, mem->out) : NULL;
    /* (the second import may have taken the first's place: look it up again) */
    if (by && mem->out != mem->in) bx = vk_region_import(d, mem->in);
    if (!bx || !by) return 0;
    const uint64_t xo = (uint64_t)((const char *)j->in - (const char *)mem->in->base);
    const uint64_t yo = (uint64_t)((const char *)j->out - (const char *)mem->out->base);
    if ((align && (xo % align || yo % align)) || xo + bytes > bx->size || yo + bytes > by->size) return 0;
    *xb = bx->buf;
    *yb = by->buf;
    *xoff = xo;
    *yoff = yo;
    return 1;
}

/* x and y in exported device memory (region.alloc): bound in place for one chunk at offsets the
 * device can bind; else copied on the device, chunk by chunk, onto the x buffer and off it (as
 * a staged device's twins are). Nothing goes through the host. */
static int job_device_memory(struct job *j)
{
    struct vk_dev *d = j->d;
    const struct db_job_mem *mem = j->dev->job_mem;
    const struct vk_export *xe = mem->dev_in, *ye = mem->dev_out;
    const uint64_t bytes = j->pl->numel * j->es, align = d->props.limits.minStorageBufferOffsetAlignment;
    j->copy_in = 0;
    j->src = j->dst = VK_NULL_HANDLE;
    j->src_off = j->dst_off = 0;
    if (j->ck.nchunks == 1 && bytes % 4 == 0 && (!align || (mem->in_off % align == 0 && mem->out_off % align == 0))) {
        vk_bind_at(d, xe->buf, mem->in_off, ye->buf, mem->out_off, bytes);
        j->xb = xe->buf;
        return DROPBLOCK_OK;
    }
    j->src = xe->buf;
    j->src_off = mem->in_off;
    j->dst = ye->buf;
    j->dst_off = mem->out_off;
    j->xb = d->bufs[B_X].buf;
    vk_bind_all(d, j->xb, j->xb);
    return DROPBLOCK_OK;
}

/* The job's host arrays and device buffers, every chunk fitting buffers sized for the largest
 * one; x and y imported where they can be (kept between jobs where they lie in host regions),
 * or in device memory; the descriptor set bound. */
static int job_setup(struct job *j, int resident, char *msg, size_t len)
{
    struct vk_dev *d = j->d;
    const struct db_plan *pl = j->pl;
    const uint64_t units = j->ck.units, nchunks = j->ck.nchunks;
    const size_t es = j->es;
    const uint64_t max_elem = j->ck.max_elem, max_samp = j->ck.max_samp, max_words = j->ck.max_words;
    const int fused = j->ck.fused;

    int rc = DROPBLOCK_OK;
    j->kept = calloc(pl->N, sizeof *j->kept);
    j->scales = calloc(pl->N, sizeof *j->scales);
    if (nchunks > 1 && units * db_unit_elems(pl) / 32 + nchunks < SIZE_MAX / 4)
        j->hmask = malloc((units * db_unit_elems(pl) / 32 + nchunks) * 4);
    if (!j->kept || !j->scales || (nchunks > 1 && !j->hmask)) {
        db_msg(msg, len, "out of host memory for the mask of %llu elements", (unsigned long long)pl->numel);
        return DROPBLOCK_EEXHAUSTED;
    }
    const uint64_t sizes[B_N] = {DBP_COUNT * 4,
                                 max_words * 4 + 64,
                                 64,
                                 max_samp * 8 + 80,
                                 ((max_elem * es + 3) & ~UINT64_C(3)) + 64,
                                 0,
                                 (fused ? pl->N : max_samp) * 4,
                                 max_words * 4 + 64};
    for (int i = 0; i < B_N && !rc; i++)
        if (i != B_Y && !(resident && i == B_X)) rc = vk_buf_ensure(d, i, sizes[i], msg, len);
    if (rc) return rc;
    VkBuffer xb = d->bufs[B_X].buf, yb = xb;
    uint64_t xoff = 0, yoff = 0, range = VK_WHOLE_SIZE;
    int imported = 0;
    if (j->dev && j->dev->job_mem && j->dev->job_mem->dev_in) return job_device_memory(j);
    if (resident) {
        yb = d->bufs[B_Y].buf;
    } else if (nchunks == 1 && (imported = job_regions(j, &xb, &xoff, &yb, &yoff))) {
        range = (pl->numel * es + 3) & ~UINT64_C(3);
    } else if (nchunks == 1 && vk_buf_import(d, &j->xi, j->in, pl->numel * es)) {
        imported = 1;
        if (j->in == j->out) yb = xb = j->xi.buf;
        else if (vk_buf_import(d, &j->yi, j->out, pl->numel * es)) {
            xb = j->xi.buf;
            yb = j->yi.buf;
        } else {
            vk_buf_free(d, &j->xi);
            imported = 0;
        }
    }
    j->copy_in = !resident && !imported;
    /* staged: the passes run on the device's x buffer, x copied onto it from src (the imported
     * tensor or the twin) and y off it to dst */
    j->src = j->dst = VK_NULL_HANDLE;
    j->src_off = j->dst_off = 0;
    if (d->staged && !resident) {
        j->src = xb == d->bufs[B_X].buf ? d->bufs[B_X].twin : xb;
        j->dst = yb == d->bufs[B_X].buf ? d->bufs[B_X].twin : yb;
        j->src_off = xoff;
        j->dst_off = yoff;
        xb = yb = d->bufs[B_X].buf;
        xoff = yoff = 0;
        range = VK_WHOLE_SIZE;
    }
    vk_bind_at(d, xb, xoff, yb, yoff, range);
    j->xb = xb;
    return DROPBLOCK_OK;
}

/* One chunk that the device's scale pass takes: mask, scales and apply in one submission (two
 * where the mask pass may need a rerun), the scales checked against the host's exact ones. */
static int job_fused(struct job *j, char *msg, size_t len)
{
    struct vk_dev *d = j->d;
    const struct db_plan *pl = j->pl;
    const size_t es = j->es;
    const VkBuffer xb = j->xb, src = j->src, dst = j->dst;
    uint32_t *prm = d->bufs[B_PRM].map;
    const uint32_t *partial = d->bufs[B_KEPT].map;
    struct db_chunk ch;
    int rc;
    db_job_chunk(pl, &j->ck, 0, &ch);
    if (j->copy_in) memcpy(d->bufs[B_X].map, j->in, ch.nelem * es);
    /* one submission, unless the mask pass may need a rerun (the apply may overwrite x): the
     * tiles' with a tuning other than the worst case's; never the scatter flow's */
    db_kernel_params(pl, &ch, &j->tu, prm);
    const int alone = !prm[DBP_SCATTER] && memcmp(&j->tu, &j->safe, sizeof j->tu) != 0;
    if (alone && (rc = mask_pass(d, pl, &ch, &j->tu, &j->safe, 0, &j->reruns, msg, len))) return rc;
    if ((rc = vk_begin(d, msg, len))) return rc;
    if (!alone) vk_record_mask(d, prm);
    if (src) copy(d, src, j->src_off, xb, 0, ch.nelem * es, 0); /* beside the mask pass, which does not read x */
    /* after a barrier, for the mask pass of either submission; the scatter flow's count pass made
     * the scales (prm: the parameters the mask pass last ran with) */
    if (!prm[DBP_SCATTER]) step(d, d->pipes[PASS_SCALE], ch.nsamp, 0);
    record_apply(d, pl, prm);
    if (dst) copy(d, xb, 0, dst, j->dst_off, ch.nelem * es, 1);
    to_host(d, B_KEPT, vk_kept_bytes(prm));
    to_host(d, B_SCALES, ch.nsamp * 4);
    if (j->mask) to_host(d, B_MASK, (ch.nelem + 31) / 32 * 4);
    if ((rc = submit(d, msg, len))) return rc;
    if (!alone && !vk_mask_done(d, prm)) {
        db_msg(msg, len, "the mask pass was cut short (an invocation did not run to its end)");
        return DROPBLOCK_EINTERNAL;
    }
    for (uint64_t s = 0; s < ch.nsamp; s++)
        j->kept[ch.n0 + s] = (uint64_t)partial[2 * s] | ((uint64_t)partial[2 * s + 1] << 32);
    if (j->fault && !j->reruns) {
        db_msg(msg, len, "DROPBLOCK_VULKAN_MASK_FAULT=%u: no mask pass was rerun", (unsigned)j->fault);
        return DROPBLOCK_EINTERNAL;
    }
    if ((rc = db_plan_scales(pl, j->kept, j->scales, j->res))) return rc;
    if (memcmp(j->scales, d->bufs[B_SCALES].map, pl->N * 4)) {
        db_msg(msg, len, "the device's scale 0x%08x differs from the exact 0x%08x",
               ((const uint32_t *)d->bufs[B_SCALES].map)[0], j->scales[0]);
        return DROPBLOCK_EINTERNAL;
    }
    if (j->copy_in) memcpy(j->out, d->bufs[B_X].map, ch.nelem * es);
    if (j->mask) db_mask_export_flat(pl, d->bufs[B_MASK].map, ch.e0, ch.nelem, j->mask);
    j->res->timing_us[0] = j->res->timing_us[1] = j->res->timing_us[2] = 0; /* one submission: not separable */
    return DROPBLOCK_OK;
}

/* pass 1 of a chunked job: mask bits and counts, chunk by chunk; each chunk's mask bits kept in
 * hmask at mofs[q] when there is an hmask */
static int job_masks(struct job *j, uint64_t *mofs, char *msg, size_t len)
{
    struct vk_dev *d = j->d;
    const struct db_plan *pl = j->pl;
    const uint64_t nchunks = j->ck.nchunks;
    const uint32_t *partial = d->bufs[B_KEPT].map;
    struct db_chunk ch;
    int rc = DROPBLOCK_OK;
    uint64_t at = 0;
    for (uint64_t q = 0; q < nchunks && !rc; q++) {
        db_progress(j->dev, DB_PASS_MASK, q + 1, nchunks);
        db_job_chunk(pl, &j->ck, q, &ch);
        if ((rc = mask_pass(d, pl, &ch, &j->tu, &j->safe, j->hmask || j->mask ? (ch.nelem + 31) / 32 * 4 : 0,
                            &j->reruns, msg, len)))
            break;
        for (uint64_t s = 0; s < ch.nsamp; s++)
            j->kept[ch.n0 + s] += (uint64_t)partial[2 * s] | ((uint64_t)partial[2 * s + 1] << 32);
        if (j->hmask) {
            mofs[q] = at;
            memcpy(j->hmask + at, d->bufs[B_MASK].map, (ch.nelem + 31) / 32 * 4);
            at += (ch.nelem + 31) / 32;
        }
    }
    return rc;
}

/* pass 3 of a chunked job: y = (x * scale) * keep, chunk by chunk */
static int job_applies(struct job *j, const uint64_t *mofs, char *msg, size_t len)
{
    struct vk_dev *d = j->d;
    const struct db_plan *pl = j->pl;
    const uint64_t nchunks = j->ck.nchunks;
    const size_t es = j->es;
    const VkBuffer xb = j->xb, src = j->src, dst = j->dst;
    uint32_t *prm = d->bufs[B_PRM].map;
    const uint32_t *hmask = j->hmask;
    struct db_chunk ch;
    int rc = DROPBLOCK_OK;
    for (uint64_t q = 0; q < nchunks && !rc; q++) {
        db_progress(j->dev, DB_PASS_APPLY, q + 1, nchunks);
        db_job_chunk(pl, &j->ck, q, &ch);
        db_kernel_params(pl, &ch, &j->tu, prm);
        memcpy(d->bufs[B_SCALES].map, j->scales + ch.n0, ch.nsamp * 4);
        if (hmask) memcpy(d->bufs[B_MASK].map, hmask + mofs[q], (ch.nelem + 31) / 32 * 4);
        if (j->copy_in) memcpy(d->bufs[B_X].map, (const char *)j->in + ch.e0 * es, ch.nelem * es);
        if (!(rc = vk_begin(d, msg, len))) {
            to_device(d, B_SCALES, ch.nsamp * 4);
            if (hmask) to_device(d, B_MASK, (ch.nelem + 31) / 32 * 4);
            /* (through the twin, a chunk at a time from its start; else the chunk's place) */
            const uint64_t at = j->copy_in ? 0 : ch.e0 * es;
            if (src) copy(d, src, j->src_off + at, xb, 0, ch.nelem * es, 0);
            record_apply(d, pl, prm);
            if (dst) copy(d, xb, 0, dst, j->dst_off + at, ch.nelem * es, 1);
            rc = submit(d, msg, len);
        }
        if (rc) break;
        if (j->copy_in) memcpy((char *)j->out + ch.e0 * es, d->bufs[B_X].map, ch.nelem * es);
        if (j->mask) db_mask_export_flat(pl, hmask ? hmask + mofs[q] : d->bufs[B_MASK].map, ch.e0, ch.nelem, j->mask);
    }
    return rc;
}

/* A job of several chunks (or one the device's scale pass does not take): pass 1 chunk by
 * chunk, the scales on the host, then pass 3 chunk by chunk; timings of the three from t0. */
static int job_chunked(struct job *j, uint64_t t0, char *msg, size_t len)
{
    uint64_t *mofs = j->hmask ? calloc(j->ck.nchunks, sizeof *mofs) : NULL; /* each chunk's words in hmask */
    if (j->hmask && !mofs) {
        db_msg(msg, len, "out of host memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    int rc = job_masks(j, mofs, msg, len);
    const uint64_t t1 = db_now_us();
    if (!rc && j->fault && !j->reruns) {
        db_msg(msg, len, "DROPBLOCK_VULKAN_MASK_FAULT=%u: no mask pass was rerun", (unsigned)j->fault);
        rc = DROPBLOCK_EINTERNAL;
    }
    db_progress(j->dev, DB_PASS_SCALES, 0, 0);
    if (!rc) rc = db_plan_scales(j->pl, j->kept, j->scales, j->res);
    const uint64_t t2 = db_now_us();
    if (!rc) rc = job_applies(j, mofs, msg, len);
    free(mofs);
    j->res->timing_us[0] = t1 - t0; /* buffers, mask and count passes */
    j->res->timing_us[1] = t2 - t1;
    j->res->timing_us[2] = db_now_us() - t2;
    return rc;
}

/* The job from x to y: in/out in host memory, or (bench, resident) the device's x/y buffers
 * already hold x. */
int vk_job(struct vk_dev *d, struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
           int resident, dropblock_result *res, char *msg, size_t len)
{
    const uint64_t t0 = db_now_us();
    struct job j = {.d = d,
                    .dev = dev,
                    .pl = pl,
                    .in = in,
                    .out = out,
                    .mask = mask,
                    .res = res,
                    .es = dropblock_dtype_size(pl->p.dtype)};
    j.tu = vk_job_tuning(d, pl, 0);
    j.safe = vk_job_tuning(d, pl, 1);
    j.fault = d->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU ? d->knobs->vulkan_mask_fault : 0;
    int rc = db_job_chunks(pl, dev->info.max_buffer, 0, &j.ck, msg, len);
    if (rc) return rc;
    if (resident && j.ck.nchunks != 1) {
        db_msg(msg, len, "the tensor takes %llu chunks on this device; the benchmark takes one",
               (unsigned long long)j.ck.nchunks);
        return DROPBLOCK_EINVAL;
    }
    rc = job_setup(&j, resident, msg, len);
    if (!rc) rc = j.ck.fused ? job_fused(&j, msg, len) : job_chunked(&j, t0, msg, len);
    if (j.reruns)
        db_dev_log(
            dev,
            "%llu mask pass(es) of a job cut short by the loop limit, rerun with the worst-case budget (%llu so far)",
            (unsigned long long)j.reruns, (unsigned long long)d->mask_reruns);
    if (j.xi.buf) vk_buf_free(d, &j.xi);
    if (j.yi.buf) vk_buf_free(d, &j.yi);
    free(j.hmask);
    free(j.kept);
    free(j.scales);
    res->timing_us[3] = db_now_us() - t0;
    return rc;
}

/* The identity (rate 0, eval) of a job in device memory (the engine does the rest on the host):
 * y = x by a copy on the device, unless in place. */
static int identity_on_device(struct vk_dev *d, const struct db_job_mem *mem, const struct db_plan *pl, void *mask,
                              dropblock_result *res)
{
    const uint64_t t0 = db_now_us(), bytes = pl->numel * dropblock_dtype_size(pl->p.dtype);
    const struct vk_export *xe = mem ? mem->dev_in : NULL, *ye = mem ? mem->dev_out : NULL;
    if (!xe || !ye) {
        db_msg(res->message, sizeof res->message, "the identity of a job on host memory reached the device");
        return DROPBLOCK_EINTERNAL;
    }
    int rc = DROPBLOCK_OK;
    if (xe != ye || mem->in_off != mem->out_off) {
        vk_bind_all(d, d->bufs[B_X].buf, d->bufs[B_X].buf);
        if (!(rc = vk_begin(d, res->message, sizeof res->message))) {
            copy(d, xe->buf, mem->in_off, ye->buf, mem->out_off, bytes, 0);
            rc = submit(d, res->message, sizeof res->message);
        }
    }
    if (!rc) db_identity(pl, NULL, NULL, mask, res); /* the mask and the counts */
    res->timing_us[3] = db_now_us() - t0;
    return rc;
}

static int vk_run(struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
                  dropblock_result *res)
{
    if (dev->inject_lost) /* DROPBLOCK_FAULTS "lost" (engine.h): what the driver answers for a device that is gone */
        return vk_fail(res->message, sizeof res->message, VK_ERROR_DEVICE_LOST, "vkQueueSubmit, injected fault");
    jc.js = &dev->last_job;
    jc.pend_transfers = jc.pend_fills = 0;
    jc.launched = 0;
    vk_sem_job_begin(dev->priv, dev->job_mem);
    int rc = pl->identity ? identity_on_device(dev->priv, dev->job_mem, pl, mask, res)
                          : vk_job(dev->priv, dev, pl, in, out, mask, 0, res, res->message, sizeof res->message);
    jc.js = NULL;
    ((struct vk_dev *)dev->priv)->wait_sem = VK_NULL_HANDLE; /* a job that failed before submitting */
    return rc;
}

static void vk_sweep(struct db_device *dev)
{
    struct vk_dev *d = dev->priv;
    if (d && d->dev) vk_drop_imports(d, 0);
}

static void vk_describe(const struct db_device *dev, char *buf, size_t len)
{
    const struct vk_dev *d = dev->priv;
    /* warmed: passes dispatched at setup; cold: passes a job dispatched first (vk_warm_up) */
    /* f16: hardware where the probe passed (vk_probe_half); integer where it failed or was
     * skipped (DROPBLOCK_VULKAN_FIXUP=1) */
    snprintf(buf, len, "memory=%s import=%s f16=%s subnormals=%s work-group=%u subgroup=%u warmed=%d cold=%llu",
             d->staged ? "staged" : "host-visible", d->has_import ? "yes" : "no",
             d->hwhalf            ? "hardware"
             : d->half_probe == 0 ? "integer-probe-failed"
                                  : "integer",
             d->hwexact ? "hardware" : "fixup", d->local, d->subgroup, d->warm, (unsigned long long)d->cold);
}

static void vk_tuning(const struct db_device *dev, const struct db_plan *pl, struct db_tuning *out)
{
    *out = vk_job_tuning(dev->priv, pl, 0);
}

const struct backend_ops db_backend_vulkan = {.name = "vulkan",
                                              .enumerate = vk_enumerate,
                                              .prepare = vk_prepare,
                                              .run = vk_run,
                                              .bench = vk_bench,
                                              .release = vk_release,
                                              .describe = vk_describe,
                                              .tuning = vk_tuning,
                                              .sweep = vk_sweep,
                                              .export_alloc = vk_export_alloc,
                                              .export_free = vk_export_free,
                                              .can_export = vk_can_export,
                                              .can_semaphore = vk_can_semaphore,
                                              .sem_create = vk_sem_create,
                                              .sem_free = vk_sem_free,
                                              .sem_value = vk_sem_value,
                                              .sem_wait = vk_sem_wait,
                                              .sem_signal = vk_sem_signal};
