/* test_job_stats: the host-side structure of a one-chunk job (struct db_job_stats, counted by the
 * backends as they enqueue or record it; db_engine_last_job_stats), each job's output still the
 * CPU reference's bit for bit (tests/test_cases.c).
 *
 * OpenCL, in the CPU shape and in the GPU shape (DROPBLOCK_OPENCL_SHAPE=gpu, a second engine):
 * issue 16's target, no transfer and no fill between the job's first launch and its last, one
 * flush (after the mask pass) and one wait (at the end), and exactly the launches the plan takes:
 *   CPU shape (mask=cpu-batches): 1 mask + 1 scale + the fast apply (1 for whole work-groups,
 *     1 more for a rest of groups of one: groups % wg_apply != 0) + 1 exact tail
 *     (numel % EPW != 0) + 1 fixup (subnormals=fixup, f32 and bf16, when the fast apply runs)
 *   GPU shape (mask=gpu-blocks): 1 scatter + 1 count (which makes the scales) + 1 apply (the
 *     fast kernel bounds-checked, its tail included) + the same 1 fixup
 * i.e. 3 on the GPU shape whatever the tail where the device's multiply is exact, and on the CPU
 * shape where groups are whole work-groups and the tail is empty; EPW, wg_apply, the mask
 * shape and subnormals are read from the device's describe words.
 * Then the same cases in several chunks (DROPBLOCK_OPENCL_MAX_BUFFER=4096, an engine per shape):
 * each chunk's parameters written once (for its mask pass; its apply reads them there), so that a
 * job's transfers are exactly 6 a chunk: the parameters, the counts read back, the host's scales
 * written, x in and y out (copies, or a map and an unmap where used in place) and the mask words
 * read (the chunk count from db_job_chunks, as the backend plans it; the apply rewriting the
 * parameters made 7).
 * Vulkan: the counts are printed; what holds today is asserted (launches as the plan's
 * dispatches, one submission and one wait where the mask pass needs no separate submission),
 * and that the same job run again records no command buffer (issue 16 item 3: each submission
 * takes the one kept from the first run, vulkan_record.c); and with the tensors in a host
 * region (db_engine_run_shared, as the daemon runs jobs), that the region's import is kept
 * between jobs (a reference held: the same job again records nothing) and let go once the
 * region is gone and the engine sweeps.
 *   test_job_stats [--require opencl,vulkan] */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "check.h"
#include "engine.h"
#include "kernel_params.h"
#include "plan.h"
#include "test_cases.h"

#define CHUNKED_MAX_BUFFER 4096 /* DROPBLOCK_OPENCL_MAX_BUFFER of the chunked engines */

static int passed, failed;

struct ctx {
    struct db_engine *e;
    int dev;
    struct db_job_stats st;
    int rc;
};

static int run_on_device(void *c, const dropblock_params *p, const void *in, void *out, uint8_t *mask,
                         dropblock_result *res)
{
    struct ctx *x = c;
    x->rc = db_engine_run(x->e, x->dev, p, in, out, mask, res);
    db_engine_last_job_stats(x->e, (size_t)x->dev, &x->st);
    return x->rc;
}

static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "  note: %s\n", line);
}

/* the one-chunk cases: every dtype, both layouts, tails and none, scale per sample */
static int make_cases(struct test_case *tc)
{
    static const struct {
        const char *name;
        uint64_t n, c, h, w;
        dropblock_dtype dt;
        dropblock_layout lay;
        int sample;
    } k[] = {
        {"f32 NCHW 14x14 block 7", 2, 64, 14, 14, DROPBLOCK_F32, DROPBLOCK_NCHW, 0},
        {"f32 NCHW 56x56", 2, 16, 56, 56, DROPBLOCK_F32, DROPBLOCK_NCHW, 0},
        {"f32 NCHW odd (tail)", 3, 5, 7, 9, DROPBLOCK_F32, DROPBLOCK_NCHW, 0},
        {"f32 NHWC 14x14", 2, 32, 14, 14, DROPBLOCK_F32, DROPBLOCK_NHWC, 0},
        {"f16 NCHW 14x14", 2, 64, 14, 14, DROPBLOCK_F16, DROPBLOCK_NCHW, 0},
        {"bf16 NHWC odd (tail)", 2, 3, 9, 11, DROPBLOCK_BF16, DROPBLOCK_NHWC, 0},
        {"f32 NCHW per-sample scales", 4, 8, 16, 16, DROPBLOCK_F32, DROPBLOCK_NCHW, 1},
    };
    int n = 0;
    for (size_t i = 0; i < sizeof k / sizeof *k; i++, n++) {
        memset(&tc[n], 0, sizeof tc[n]);
        snprintf(tc[n].name, sizeof tc[n].name, "%s", k[i].name);
        tc[n].p = tu_params(k[i].n, k[i].c, k[i].h, k[i].w, 0.1f, 7, 7);
        tc[n].p.dtype = k[i].dt;
        tc[n].p.layout = k[i].lay;
        tc[n].p.seed = 1234 + i;
        if (k[i].sample) tc[n].p.normalize = DROPBLOCK_NORMALIZE_SAMPLE;
        tc[n].s0 = 99 + i;
        tc[n].s1 = 7;
    }
    return n;
}

/* the OpenCL device's apply shape, from its describe words */
struct cl_shape {
    unsigned vw, vpw;
    size_t wg_apply;
    int fixup;
    int gpu; /* mask=gpu-blocks: the GPU shape */
};

static int cl_shape_of(const char *paths, struct cl_shape *s)
{
    const char *v = strstr(paths, "vector="), *w = strstr(paths, "work-groups="), *f = strstr(paths, "subnormals=");
    size_t wm, ws;
    if (!v || !w || !f || sscanf(v, "vector=%ux%u", &s->vw, &s->vpw) != 2 ||
        sscanf(w, "work-groups=%zu/%zu/%zu", &wm, &ws, &s->wg_apply) != 3 || !s->wg_apply)
        return 0;
    s->fixup = !strncmp(f, "subnormals=fixup", 16);
    s->gpu = strstr(paths, "mask=gpu-blocks") != NULL;
    return 1;
}

static uint32_t cl_expected_launches(const struct cl_shape *s, const dropblock_params *p)
{
    uint64_t numel = dropblock_numel(p), epw = (uint64_t)(p->dtype == DROPBLOCK_F32 ? s->vw : 2 * s->vw) * s->vpw;
    uint64_t groups = numel / epw;
    uint32_t n = 2; /* mask and scale, or on GPUs scatter and count (which makes the scales) */
    if (s->gpu)     /* the apply in one launch, its tail included; the fixup apart */
        return n + 1 + (s->fixup && groups && p->dtype != DROPBLOCK_F16);
    n += groups / s->wg_apply != 0;
    n += groups % s->wg_apply != 0;
    n += groups * epw < numel;
    n += s->fixup && groups && p->dtype != DROPBLOCK_F16;
    return n;
}

static void print_stats(const char *id, const char *name, const struct db_job_stats *st)
{
    printf("  %s %-28s launches=%u transfers=%u between=%u fills=%u fills_between=%u submits=%u waits=%u "
           "recordings=%u\n",
           id, name, st->launches, st->transfers, st->transfers_between, st->fills, st->fills_between, st->submits,
           st->waits, st->recordings);
}

/* A host region as the daemon's (struct db_host_region): an anonymous mapping, its references
 * counted, the tensors copied in and out at offsets inside it. */
struct region_ctx {
    struct db_engine *e;
    int dev;
    struct db_host_region r;
    atomic_int refs; /* the device's references (kept imports) */
    struct db_job_stats st;
    int rc;
};

static void region_ref(struct db_host_region *r)
{
    atomic_fetch_add(&((struct region_ctx *)((char *)r - offsetof(struct region_ctx, r)))->refs, 1);
}
static void region_unref(struct db_host_region *r)
{
    atomic_fetch_sub(&((struct region_ctx *)((char *)r - offsetof(struct region_ctx, r)))->refs, 1);
}

#define REGION_X_AT 256 /* x's offset in the region, y after it (both multiples of 256) */

static int run_in_region(void *c, const dropblock_params *p, const void *in, void *out, uint8_t *mask,
                         dropblock_result *res)
{
    struct region_ctx *x = c;
    const uint64_t bytes = dropblock_tensor_bytes(p), y_at = REGION_X_AT + ((bytes + 255) & ~UINT64_C(255));
    if (y_at + bytes > x->r.size) return DROPBLOCK_EEXHAUSTED;
    char *base = x->r.base;
    memcpy(base + REGION_X_AT, in, bytes);
    const struct db_job_mem mem = {.in = &x->r, .out = &x->r};
    x->rc = db_engine_run_shared(x->e, x->dev, p, base + REGION_X_AT, base + y_at, mask, &mem, res);
    db_engine_last_job_stats(x->e, (size_t)x->dev, &x->st);
    memcpy(out, base + y_at, bytes);
    return x->rc;
}

/* Vulkan, tensors in a host region (as the daemon runs its clients' jobs): one import of the
 * region kept for all its jobs (a reference held), so that the same job again records no command
 * buffer, and the import let go once the region is gone and the engine sweeps. */
static void run_regions(struct db_engine *e, size_t d, const struct test_case *tc, int ncases, int has_import)
{
    const dropblock_device_info *info = db_engine_device(e, d);
    struct region_ctx c = {.e = e, .dev = (int)d};
    c.r.size = 4u << 20;
    c.r.base = mmap(NULL, c.r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(c.r.base != MAP_FAILED, "mmap of %llu bytes", (unsigned long long)c.r.size);
    if (c.r.base == MAP_FAILED) return;
    c.r.ref = region_ref;
    c.r.unref = region_unref;
    atomic_init(&c.r.gone, 0);
    atomic_init(&c.refs, 0);
    for (int i = 0; i < ncases; i++) {
        char why[512];
        for (int round = 0; round < 2; round++) {
            int same = test_case_compare(&tc[i], run_in_region, &c, why, sizeof why);
            CHECK(same && c.rc == DROPBLOCK_OK, "%s %s in a region (round %d): %s", info->id, tc[i].name, round, why);
            print_stats(info->id, round ? "  in the region again" : "  in a host region", &c.st);
        }
        CHECK(c.st.recordings == 0, "%s %s in the region again: %u command buffers recorded, expected none", info->id,
              tc[i].name, c.st.recordings);
        CHECK(atomic_load(&c.refs) == has_import, "%s %s: %d references on the region (kept imports), expected %d",
              info->id, tc[i].name, atomic_load(&c.refs), has_import);
    }
    atomic_store(&c.r.gone, 1);
    db_engine_sweep(e);
    CHECK(atomic_load(&c.refs) == 0, "%s: %d references on the region after it is gone and swept", info->id,
          atomic_load(&c.refs));
    munmap(c.r.base, c.r.size);
}

/* the chunks of p's job on a device of max_buffer bytes, as the backend plans them; 0 on error */
static uint64_t chunks_of(const dropblock_params *p, uint64_t max_buffer)
{
    struct db_plan pl;
    struct db_chunking ck;
    char msg[256];
    if (db_plan_init(&pl, p, msg, sizeof msg) || db_job_chunks(&pl, max_buffer, 0, &ck, msg, sizeof msg)) return 0;
    return ck.nchunks;
}

/* every case on every OpenCL and Vulkan device of e (chunked: only OpenCL's, each job in several
 * chunks); counts which APIs had a device */
static void run_engine(struct db_engine *e, const char *label, int chunked, int *seen_cl, int *seen_vk)
{
    static struct test_case tc[16];
    int ncases = make_cases(tc);
    for (size_t d = 0; d < db_engine_device_count(e); d++) {
        const dropblock_device_info *info = db_engine_device(e, d);
        int cl = !strcmp(info->api, "opencl"), vk = !strcmp(info->api, "vulkan");
        if (!cl && !vk) continue;
        if (chunked && !cl) continue;
        char paths[512];
        db_engine_device_paths(e, d, paths, sizeof paths);
        printf("device %s (%s): %s\n", info->id, label, paths);
        struct cl_shape sh = {0};
        if (cl) {
            *seen_cl = 1;
            CHECK(cl_shape_of(paths, &sh), "%s: no vector/work-groups/subnormals in \"%s\"", info->id, paths);
        } else {
            *seen_vk = 1;
        }
        struct ctx c = {.e = e, .dev = (int)d};
        /* Vulkan: tensors copied through the device's buffers, never imported for one job (an
         * import freed after its job makes every kept command buffer stale, and whether malloc's
         * memory is aligned for one is chance); run_regions checks the imports kept for regions */
        const int saved_copy = db_engine_knobs(e)->vulkan_copy;
        if (vk) db_engine_knobs(e)->vulkan_copy = 1;
        int multi = 0; /* chunked: the cases that took several chunks */
        for (int i = 0; i < ncases; i++) {
            char why[512];
            int same = test_case_compare(&tc[i], run_on_device, &c, why, sizeof why);
            CHECK(same, "%s %s: %s", info->id, tc[i].name, why);
            CHECK(c.rc == DROPBLOCK_OK, "%s %s: job failed (%d)", info->id, tc[i].name, c.rc);
            const struct db_job_stats *st = &c.st;
            print_stats(info->id, tc[i].name, st);
            CHECK(st->launches >= 3, "%s %s: %u launches", info->id, tc[i].name, st->launches);
            if (chunked) {
                uint64_t nch = chunks_of(&tc[i].p, CHUNKED_MAX_BUFFER);
                printf("  %s %-28s chunks=%llu\n", info->id, tc[i].name, (unsigned long long)nch);
                if (nch < 2) continue; /* small enough for one chunk still: checked above */
                multi++;
                CHECK(st->transfers == 6 * nch, "%s %s: %u transfers for %llu chunks, expected %llu (6 a chunk)",
                      info->id, tc[i].name, st->transfers, (unsigned long long)nch, (unsigned long long)(6 * nch));
                if (sh.gpu && !sh.fixup) /* scatter, count and the one-launch apply a chunk */
                    CHECK(st->launches == 3 * nch, "%s %s: %u launches for %llu chunks, expected %llu", info->id,
                          tc[i].name, st->launches, (unsigned long long)nch, (unsigned long long)(3 * nch));
                continue;
            }
            if (cl && sh.wg_apply) {
                uint32_t want = cl_expected_launches(&sh, &tc[i].p);
                CHECK(st->launches == want, "%s %s: %u launches, expected %u", info->id, tc[i].name, st->launches,
                      want);
                CHECK(st->transfers_between == 0, "%s %s: %u transfers between launches", info->id, tc[i].name,
                      st->transfers_between);
                CHECK(st->fills_between == 0, "%s %s: %u fills between launches", info->id, tc[i].name,
                      st->fills_between);
                CHECK(st->submits == 2 && st->waits == 1, "%s %s: %u submits, %u waits (want a flush and a finish)",
                      info->id, tc[i].name, st->submits, st->waits);
            }
            if (vk) { /* what holds on lavapipe today: a submission per wait, the mask pass's fill before it */
                CHECK(st->submits >= 1 && st->submits == st->waits && st->fills >= 1, "%s %s: %u submits, %u waits",
                      info->id, tc[i].name, st->submits, st->waits);
                CHECK(st->recordings <= st->submits, "%s %s: %u recordings for %u submits", info->id, tc[i].name,
                      st->recordings, st->submits);
                /* the same job again (its tensors copied through the device's buffers: nothing imported
                 * per job): every submission takes a command buffer kept from the first */
                same = test_case_compare(&tc[i], run_on_device, &c, why, sizeof why);
                CHECK(same && c.rc == DROPBLOCK_OK, "%s %s again: %s", info->id, tc[i].name, why);
                print_stats(info->id, "  the same again", st);
                CHECK(st->recordings == 0, "%s %s again: %u command buffers recorded, expected none (reused)", info->id,
                      tc[i].name, st->recordings);
            }
        }
        if (vk) db_engine_knobs(e)->vulkan_copy = saved_copy;
        if (vk && !chunked) run_regions(e, d, tc, ncases, strstr(paths, "import=yes") != NULL);
        CHECK(!chunked || multi > 0, "%s (%s): no case took several chunks", info->id, label);
    }
}

static struct db_engine *open_engine(const char *apis)
{
    struct db_engine *e;
    char msg[512];
    if (db_engine_open(&e, apis, NULL, "", log_line, NULL, msg, sizeof msg)) {
        fprintf(stderr, "no engine: %s\n", msg);
        return NULL;
    }
    return e;
}

int main(int argc, char **argv)
{
    const char *require = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--require") && i + 1 < argc) require = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--require opencl,vulkan]\n", argv[0]);
            return 2;
        }
    }
    int seen_cl = 0, seen_vk = 0;
    /* the devices as the environment has them (the CPU shape on PoCL), then the GPU shape */
    struct db_engine *e = open_engine("opencl,vulkan");
    if (!e) return 1;
    run_engine(e, "default shape", 0, &seen_cl, &seen_vk);
    db_engine_close(e);
    /* several chunks a job (the cap is read at enumerate: set before the engine opens) */
    setenv("DROPBLOCK_OPENCL_MAX_BUFFER", "4096", 1);
    if (!(e = open_engine("opencl"))) return 1;
    run_engine(e, "DROPBLOCK_OPENCL_MAX_BUFFER=4096", 1, &seen_cl, &seen_vk);
    db_engine_close(e);
    setenv("DROPBLOCK_OPENCL_SHAPE", "gpu", 1);
    if (!(e = open_engine("opencl"))) return 1;
    run_engine(e, "DROPBLOCK_OPENCL_MAX_BUFFER=4096 DROPBLOCK_OPENCL_SHAPE=gpu", 1, &seen_cl, &seen_vk);
    db_engine_close(e);
    unsetenv("DROPBLOCK_OPENCL_MAX_BUFFER");
    if (!(e = open_engine("opencl,vulkan"))) return 1;
    run_engine(e, "DROPBLOCK_OPENCL_SHAPE=gpu", 0, &seen_cl, &seen_vk);
    db_engine_close(e);
    if (require) {
        CHECK(!strstr(require, "opencl") || seen_cl, "required API opencl has no device");
        CHECK(!strstr(require, "vulkan") || seen_vk, "required API vulkan has no device");
    }
    printf("test_job_stats: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
