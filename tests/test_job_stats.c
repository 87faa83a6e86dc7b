/* test_job_stats: the host-side structure of a one-chunk job (struct db_job_stats, counted by the
 * backends as they enqueue or record it; db_engine_last_job_stats), each job's output still the
 * CPU reference's bit for bit (tests/test_cases.c).
 *
 * OpenCL, in the CPU shape and in the GPU shape (DROPBLOCK_OPENCL_SHAPE=gpu, a second engine):
 * issue 16's target, no transfer and no fill between the job's first launch and its last, one
 * flush (after the mask pass) and one wait (at the end), and exactly the launches the plan takes:
 *     1 mask + 1 scale + the fast apply (1 for whole work-groups, 1 more for a rest of groups of
 *     one: groups % wg_apply != 0) + 1 exact tail (numel % EPW != 0) + 1 fixup (subnormals=fixup,
 *     f32 and bf16, when the fast apply runs)
 * i.e. 3 where groups are whole work-groups, the tail is empty and the device's multiply is
 * exact; EPW, wg_apply and subnormals are read from the device's describe words.
 * Vulkan: the counts are printed; what holds today is asserted (launches as the plan's
 * dispatches, one submission and one wait where the mask pass needs no separate submission).
 *   test_job_stats [--require opencl,vulkan] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "engine.h"
#include "test_cases.h"

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
};

static int cl_shape_of(const char *paths, struct cl_shape *s)
{
    const char *v = strstr(paths, "vector="), *w = strstr(paths, "work-groups="), *f = strstr(paths, "subnormals=");
    size_t wm, ws;
    if (!v || !w || !f || sscanf(v, "vector=%ux%u", &s->vw, &s->vpw) != 2 ||
        sscanf(w, "work-groups=%zu/%zu/%zu", &wm, &ws, &s->wg_apply) != 3 || !s->wg_apply)
        return 0;
    s->fixup = !strncmp(f, "subnormals=fixup", 16);
    return 1;
}

static uint32_t cl_expected_launches(const struct cl_shape *s, const dropblock_params *p)
{
    uint64_t numel = dropblock_numel(p), epw = (uint64_t)(p->dtype == DROPBLOCK_F32 ? s->vw : 2 * s->vw) * s->vpw;
    uint64_t groups = numel / epw;
    uint32_t n = 2; /* mask and scale, or on GPUs scatter and count (which makes the scales) */
    n += groups / s->wg_apply != 0;
    n += groups % s->wg_apply != 0;
    n += groups * epw < numel;
    n += s->fixup && groups && p->dtype != DROPBLOCK_F16;
    return n;
}

static void print_stats(const char *id, const char *name, const struct db_job_stats *st)
{
    printf("  %s %-28s launches=%u transfers=%u between=%u fills=%u fills_between=%u submits=%u waits=%u\n", id, name,
           st->launches, st->transfers, st->transfers_between, st->fills, st->fills_between, st->submits, st->waits);
}

/* every case on every OpenCL and Vulkan device of e; counts which APIs had a device */
static void run_engine(struct db_engine *e, const char *label, int *seen_cl, int *seen_vk)
{
    static struct test_case tc[16];
    int ncases = make_cases(tc);
    for (size_t d = 0; d < db_engine_device_count(e); d++) {
        const dropblock_device_info *info = db_engine_device(e, d);
        int cl = !strcmp(info->api, "opencl"), vk = !strcmp(info->api, "vulkan");
        if (!cl && !vk) continue;
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
        for (int i = 0; i < ncases; i++) {
            char why[512];
            int same = test_case_compare(&tc[i], run_on_device, &c, why, sizeof why);
            CHECK(same, "%s %s: %s", info->id, tc[i].name, why);
            CHECK(c.rc == DROPBLOCK_OK, "%s %s: job failed (%d)", info->id, tc[i].name, c.rc);
            const struct db_job_stats *st = &c.st;
            print_stats(info->id, tc[i].name, st);
            CHECK(st->launches >= 3, "%s %s: %u launches", info->id, tc[i].name, st->launches);
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
            if (vk) /* what holds on lavapipe today: a submission per wait, the mask pass's fill before it */
                CHECK(st->submits >= 1 && st->submits == st->waits && st->fills >= 1, "%s %s: %u submits, %u waits",
                      info->id, tc[i].name, st->submits, st->waits);
        }
    }
}

static struct db_engine *open_engine(void)
{
    struct db_engine *e;
    char msg[512];
    if (db_engine_open(&e, "opencl,vulkan", NULL, "", log_line, NULL, msg, sizeof msg)) {
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
    struct db_engine *e = open_engine();
    if (!e) return 1;
    run_engine(e, "default shape", &seen_cl, &seen_vk);
    db_engine_close(e);
    setenv("DROPBLOCK_OPENCL_SHAPE", "gpu", 1);
    if (!(e = open_engine())) return 1;
    run_engine(e, "DROPBLOCK_OPENCL_SHAPE=gpu", &seen_cl, &seen_vk);
    db_engine_close(e);
    if (require) {
        CHECK(!strstr(require, "opencl") || seen_cl, "required API opencl has no device");
        CHECK(!strstr(require, "vulkan") || seen_vk, "required API vulkan has no device");
    }
    printf("test_job_stats: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
