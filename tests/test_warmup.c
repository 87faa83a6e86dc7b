/* test_warmup: no job pays a kernel compile. Drivers may build a kernel at its first launch (PoCL
 * per launch shape, lavapipe per pipeline), so the OpenCL and Vulkan backends launch every kernel
 * in every shape a job can use when they set a device up. Checked two ways, neither timed:
 *   - each device's describe words (db_engine_device_paths) report the shapes warmed at setup
 *     (warmed=N, N > 0) and the shapes a job launched first (cold=N): after jobs of every kind
 *     (each dtype, normalization, keras_cv, backward, shared masks, in place, sizes that take
 *     the rest-of-a-group launches and grids past PoCL's small-grid bound) cold stays 0;
 *   - independently of the backend's own bookkeeping, on PoCL: the work-group functions PoCL
 *     compiled go to POCL_CACHE_DIR, one directory per kernel and shape; the test points it at
 *     an empty directory of its own, and the directories there after the jobs are those there
 *     after setup.
 * It also prints the setup time and the first and a later 64x1024x14x14 job's times.
 * Usage: test_warmup [--backend cpu|opencl|vulkan] [--require] (--require: fail without a
 * device of that backend, else skip with 77). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "engine.h"
#include "reference.h"

static int failed;

static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "  note: %s\n", line);
}

/* The value of word key=N in a describe string, or -1 where it is missing. */
static long long word(const char *paths, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = paths; (p = strstr(p, key)) != NULL; p += n)
        if ((p == paths || p[-1] == ' ') && p[n] == '=') return atoll(p + n + 1);
    return -1;
}

/* PoCL's cache: DIR/XX/PROGRAM/KERNEL/SHAPE, listed as "PROGRAM/KERNEL/SHAPE" lines into buf
 * (sorted by the walk's order, which is the same for the same tree). Returns the count. */
static int list_shapes(const char *dir, char *buf, size_t cap)
{
    int n = 0;
    size_t o = 0;
    buf[0] = 0;
    char path[4096];
    DIR *d0 = opendir(dir);
    if (!d0) return 0;
    struct dirent *a, *b, *c, *e;
    while ((a = readdir(d0)) != NULL) {
        if (a->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, a->d_name);
        DIR *d1 = opendir(path);
        if (!d1) continue;
        while ((b = readdir(d1)) != NULL) {
            if (b->d_name[0] == '.') continue;
            snprintf(path, sizeof path, "%s/%s/%s", dir, a->d_name, b->d_name);
            DIR *d2 = opendir(path);
            if (!d2) continue;
            while ((c = readdir(d2)) != NULL) {
                if (c->d_name[0] == '.') continue;
                snprintf(path, sizeof path, "%s/%s/%s/%s", dir, a->d_name, b->d_name, c->d_name);
                DIR *d3 = opendir(path);
                if (!d3) continue; /* program.bc, last_accessed */
                while ((e = readdir(d3)) != NULL) {
                    if (e->d_name[0] == '.') continue;
                    int k = snprintf(buf + o, cap - o, "%s/%s/%s\n", b->d_name, c->d_name, e->d_name);
                    if (k > 0 && (size_t)k < cap - o) o += (size_t)k;
                    n++;
                }
                closedir(d3);
            }
            closedir(d2);
        }
        closedir(d1);
    }
    closedir(d0);
    return n;
}

/* The lines of now that are not in before, printed. */
static int print_new(const char *before, const char *now)
{
    int n = 0;
    char line[512];
    for (const char *p = now; *p;) {
        const char *nl = strchr(p, '\n');
        size_t k = nl ? (size_t)(nl - p) : strlen(p);
        if (k < sizeof line) {
            memcpy(line, p, k);
            line[k] = 0;
            char pat[520];
            snprintf(pat, sizeof pat, "%s\n", line);
            if (!strstr(before, pat)) {
                printf("    built by a job: %s\n", line);
                n++;
            }
        }
        p += k + (nl ? 1 : 0);
    }
    return n;
}

/* One job on device dev: 1 if it ran (its bits are the other tests' business). */
static int job(struct db_engine *e, int dev, const dropblock_params *p, int in_place, uint64_t *us)
{
    uint64_t bytes = dropblock_tensor_bytes(p), n = dropblock_numel(p);
    size_t alloc = (bytes + 4095) / 4096 * 4096;
    void *x = aligned_alloc(4096, alloc);
    void *y = x;
    if (!in_place) y = aligned_alloc(4096, alloc);
    uint8_t *mask = calloc(1, dropblock_mask_bytes(p) + 1);
    int ok = x && y && mask;
    dropblock_result r;
    memset(&r, 0, sizeof r);
    if (ok) {
        db_fill_tf_uniform(p->dtype, 1, 2, n, x);
        uint64_t t0 = db_now_us();
        int rc = db_engine_run(e, dev, p, x, y, mask, &r);
        if (us) *us = db_now_us() - t0;
        if (rc) {
            printf("  FAIL job: %s: %s\n", dropblock_strerror(rc), r.message);
            ok = 0;
        }
    }
    free(mask);
    if (y != x) free(y);
    free(x);
    return ok;
}

static void shape(dropblock_params *p, uint64_t n, uint64_t c, uint64_t h, uint64_t w)
{
    p->shape[0] = n;
    p->shape[1] = c;
    p->shape[2] = h;
    p->shape[3] = w;
}

/* Jobs of every kind the backends tell apart in their launches. */
static int run_jobs(struct db_engine *e, int dev)
{
    static const uint64_t sizes[][4] = {
        {1, 1, 4, 4},      /* fewer elements than one fast-apply group: the exact tail alone */
        {2, 3, 17, 19},    /* whole groups, a rest of groups of one, a tail */
        {1, 64, 256, 256}, /* 4 Mi elements: past PoCL's small grid (65535 work items) */
    };
    int ok = 1;
    for (int dt = 0; dt < 3; dt++)
        for (int norm = 0; norm < 3; norm++)
            for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
                for (int variant = 0; variant < (s == 1 ? 5 : 1); variant++) {
                    dropblock_params p;
                    dropblock_params_init(&p);
                    shape(&p, sizes[s][0], sizes[s][1], sizes[s][2], sizes[s][3]);
                    p.dtype = (dropblock_dtype)dt;
                    p.normalize = (dropblock_normalize)norm;
                    p.block[0] = p.block[1] = 3;
                    p.seed = 9;
                    if (variant == 1) p.layout = DROPBLOCK_NHWC;
                    if (variant == 2) {
                        p.compat = DROPBLOCK_COMPAT_KERAS_CV;
                        p.layout = DROPBLOCK_NHWC;
                        p.normalize = DROPBLOCK_NORMALIZE_GLOBAL;
                    }
                    if (variant == 3) p.mode = DROPBLOCK_BACKWARD;
                    if (variant == 4) p.share = DROPBLOCK_SHARE_CHANNELS | DROPBLOCK_SHARE_BATCH;
                    ok &= job(e, dev, &p, variant == 0 && s == 1, NULL);
                }
    return ok;
}

int main(int argc, char **argv)
{
    const char *backend = NULL;
    int require = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
        else if (!strcmp(argv[i], "--require")) require = 1;
        else {
            fprintf(stderr, "usage: test_warmup [--backend cpu|opencl|vulkan] [--require]\n");
            return 2;
        }
    }
    /* an empty PoCL cache of our own, so that a shape compiled by a job shows as a new directory */
    char pocl[] = "/tmp/test_warmup.XXXXXX", kcache[] = "/tmp/test_warmup_kc.XXXXXX";
    if (!mkdtemp(pocl) || !mkdtemp(kcache)) {
        perror("mkdtemp");
        return 1;
    }
    setenv("POCL_CACHE_DIR", pocl, 1);

    struct db_engine *e;
    char msg[512];
    uint64_t t0 = db_now_us();
    if (db_engine_open(&e, backend, NULL, kcache, log_line, NULL, msg, sizeof msg)) {
        printf("FAIL open: %s\n", msg);
        return 1;
    }
    uint64_t t1 = db_now_us();
    printf("setup of every device (cold caches): %.2f s\n", (double)(t1 - t0) / 1e6);
    int tested = 0;
    for (size_t i = 0; i < db_engine_device_count(e); i++) {
        const dropblock_device_info *info = db_engine_device(e, i);
        if (!strncmp(info->id, "cpu:", 4)) continue; /* nothing compiled */
        if (backend && strncmp(info->id, backend, strlen(backend))) continue;
        tested++;
        char paths[512], before[1 << 16], after[1 << 16];
        db_engine_device_paths(e, i, paths, sizeof paths);
        printf("%s: %s\n", info->id, paths);
        int nb = list_shapes(pocl, before, sizeof before);
        int pocl_dev = !strncmp(info->id, "opencl:", 7) && nb > 0; /* PoCL: it filled its cache at setup */
        if (word(paths, "warmed") <= 0) {
            printf("  FAIL %s: no warmed=N word with N > 0: nothing warmed at setup\n", info->id);
            failed++;
        }
        if (word(paths, "cold") != 0) {
            printf("  FAIL %s: cold=%lld right after setup\n", info->id, word(paths, "cold"));
            failed++;
        }

        /* the demo's job, first and again: printed, not asserted */
        dropblock_params p;
        dropblock_params_init(&p);
        shape(&p, 64, 1024, 14, 14);
        p.seed = 42;
        uint64_t first = 0, later = 0;
        if (!job(e, (int)i, &p, 0, &first) || !job(e, (int)i, &p, 0, &later)) failed++;
        printf("  64x1024x14x14 f32: first job %.1f ms, later %.1f ms\n", (double)first / 1e3, (double)later / 1e3);
        if (!run_jobs(e, (int)i)) failed++;

        db_engine_device_paths(e, i, paths, sizeof paths);
        long long cold = word(paths, "cold");
        printf("  after the jobs: %s\n", paths);
        if (cold != 0) {
            printf("  FAIL %s: cold=%lld: jobs launched shapes the setup did not build\n", info->id, cold);
            failed++;
        }
        int na = list_shapes(pocl, after, sizeof after);
        if (pocl_dev) {
            printf("  PoCL's cache: %d work-group functions after setup, %d after the jobs\n", nb, na);
            if (print_new(before, after)) {
                printf("  FAIL %s: PoCL compiled work-group functions for jobs (above)\n", info->id);
                failed++;
            }
        }
    }
    db_engine_close(e);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", pocl, kcache);
    if (system(cmd) != 0) fprintf(stderr, "note: could not remove %s, %s\n", pocl, kcache);
    if (!tested) {
        printf("no %s device%s\n", backend ? backend : "non-CPU", require ? ": FAIL (--require)" : ": skipped");
        return require ? 1 : 77;
    }
    printf("%s\n", failed ? "FAIL" : "ok");
    return failed ? 1 : 0;
}
