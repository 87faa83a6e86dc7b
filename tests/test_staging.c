/* test_staging: OpenCL's staged copy path (engine/opencl_staging.c, "staged copies") gives the
 * CPU reference's bits, whatever the slice: x moved through pinned slots in slices, the applies
 * and the copies overlapped on three queues.
 *   test_staging [--require]
 * The copy path is forced on the CPU device (DROPBLOCK_OPENCL_COPY=1). Each case runs at several
 * slice sizes (DROPBLOCK_OPENCL_STAGE_BYTES: the smallest slice, odd sizes that leave a short
 * last slice, one that leaves the small tensors on the unstaged path), with distinct buffers and
 * in place, on three devices set up differently: one chunk per tensor (the device computes the
 * scales), many chunks (DROPBLOCK_OPENCL_MAX_BUFFER: the host computes them, and a chunk's
 * uploads wait for the previous chunk's downloads), and many chunks with the subnormal fixup
 * pass forced on (DROPBLOCK_OPENCL_FIXUP=1). --require fails the test without an OpenCL device,
 * else it is skipped (77). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "test_cases.h"

struct ctx {
    struct db_engine *e;
    int dev;
    int in_place;
};

static int run_on_device(void *c, const dropblock_params *p, const void *in, void *out, uint8_t *mask,
                         dropblock_result *res)
{
    struct ctx *x = c;
    if (!x->in_place) return db_engine_run(x->e, x->dev, p, in, out, mask, res);
    const size_t bytes = dropblock_tensor_bytes(p);
    void *a = malloc(bytes);
    if (!a) return DROPBLOCK_EEXHAUSTED;
    memcpy(a, in, bytes);
    int rc = db_engine_run(x->e, x->dev, p, a, a, mask, res);
    memcpy(out, a, bytes);
    free(a);
    return rc;
}

static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "  note: %s\n", line);
}

static struct test_case make(const char *name, uint64_t n, uint64_t c, uint64_t h, uint64_t w, float rate, uint64_t bh,
                             uint64_t bw, dropblock_dtype dtype, dropblock_layout layout)
{
    struct test_case t;
    memset(&t, 0, sizeof t);
    dropblock_params_init(&t.p);
    t.p.shape[0] = n;
    t.p.shape[1] = c;
    t.p.shape[2] = h;
    t.p.shape[3] = w;
    t.p.rate = rate;
    t.p.block[0] = bh;
    t.p.block[1] = bw;
    t.p.dtype = dtype;
    t.p.layout = layout;
    t.p.seed = 77 + h * 131 + w;
    t.p.stream = 5;
    t.s0 = t.p.seed ^ 0x5EEDu;
    t.s1 = 23;
    snprintf(t.name, sizeof t.name, "%s %s/%s %llux%llux%llux%llu", name, dropblock_layout_name(layout),
             dropblock_dtype_name(dtype), (unsigned long long)n, (unsigned long long)c, (unsigned long long)h,
             (unsigned long long)w);
    return t;
}

static int cases(struct test_case *t)
{
    int k = 0;
    t[k++] = make("odd sizes", 3, 5, 37, 41, 0.2f, 5, 5, DROPBLOCK_F32, DROPBLOCK_NCHW);
    t[k++] = make("odd sizes", 2, 7, 33, 29, 0.3f, 3, 3, DROPBLOCK_F16, DROPBLOCK_NCHW);
    t[k++] = make("odd sizes", 3, 3, 31, 27, 0.25f, 4, 3, DROPBLOCK_BF16, DROPBLOCK_NCHW);
    t[k++] = make("nhwc", 3, 6, 19, 23, 0.25f, 4, 3, DROPBLOCK_F32, DROPBLOCK_NHWC);
    t[k++] = make("nhwc", 2, 9, 21, 17, 0.3f, 3, 3, DROPBLOCK_F16, DROPBLOCK_NHWC);
    t[k++] = make("nhwc", 2, 5, 23, 19, 0.2f, 5, 2, DROPBLOCK_BF16, DROPBLOCK_NHWC);
    t[k] = make("per-sample", 5, 3, 17, 31, 0.4f, 3, 3, DROPBLOCK_F32, DROPBLOCK_NCHW);
    t[k++].p.normalize = DROPBLOCK_NORMALIZE_SAMPLE;
    t[k] = make("per-sample", 4, 5, 13, 11, 0.4f, 3, 5, DROPBLOCK_F16, DROPBLOCK_NHWC);
    t[k++].p.normalize = DROPBLOCK_NORMALIZE_SAMPLE;
    t[k] = make("per-sample", 7, 2, 9, 13, 0.4f, 2, 2, DROPBLOCK_BF16, DROPBLOCK_NCHW);
    t[k++].p.normalize = DROPBLOCK_NORMALIZE_SAMPLE;
    t[k] = make("backward", 3, 4, 29, 25, 0.3f, 3, 3, DROPBLOCK_F32, DROPBLOCK_NCHW);
    t[k++].p.mode = DROPBLOCK_BACKWARD;
    t[k] = make("backward", 2, 6, 15, 35, 0.3f, 4, 4, DROPBLOCK_BF16, DROPBLOCK_NHWC);
    t[k++].p.mode = DROPBLOCK_BACKWARD;
    t[k] = make("backward per-sample", 3, 3, 25, 19, 0.3f, 3, 3, DROPBLOCK_F16, DROPBLOCK_NCHW);
    t[k].p.mode = DROPBLOCK_BACKWARD;
    t[k++].p.normalize = DROPBLOCK_NORMALIZE_SAMPLE;
    t[k] = make("keras_cv", 2, 3, 27, 23, 0.5f, 3, 3, DROPBLOCK_F32, DROPBLOCK_NCHW); /* the exact kernel only */
    t[k++].p.compat = DROPBLOCK_COMPAT_KERAS_CV;
    t[k] = make("specials", 2, 3, 21, 22, 0.3f, 3, 3, DROPBLOCK_F32, DROPBLOCK_NCHW); /* subnormals: the fixup */
    t[k++].specials = 1;
    t[k] = make("specials", 2, 3, 21, 22, 0.3f, 3, 3, DROPBLOCK_BF16, DROPBLOCK_NHWC);
    t[k++].specials = 1;
    t[k++] = make("small", 1, 2, 5, 7, 0.3f, 3, 3, DROPBLOCK_F32, DROPBLOCK_NCHW);
    return k;
}

struct setup {
    const char *name, *max_buffer, *fixup;
};

int main(int argc, char **argv)
{
    int require = argc > 1 && !strcmp(argv[1], "--require");
    if (argc > 2 || (argc == 2 && !require)) {
        fprintf(stderr, "usage: %s [--require]\n", argv[0]);
        return 2;
    }
    static const struct setup setups[] = {
        {"one chunk", NULL, NULL},
        {"chunks of 4 KiB", "4096", NULL},
        {"chunks of 3000 bytes, fixup", "3000", "1"},
    };
    /* 1: the smallest slice (lcm(32, the fast apply's elements an item)); odd byte counts
     * round down to it; 1 MiB: these tensors fit one slice, the unstaged path */
    static const char *const slices[] = {"1", "300", "1000", "4100", "1048576"};
    struct test_case tc[32];
    int ncases = cases(tc), passed = 0, failed = 0;
    setenv("DROPBLOCK_OPENCL_COPY", "1", 1);
    for (size_t s = 0; s < sizeof setups / sizeof *setups; s++) {
        if (setups[s].max_buffer) setenv("DROPBLOCK_OPENCL_MAX_BUFFER", setups[s].max_buffer, 1);
        else unsetenv("DROPBLOCK_OPENCL_MAX_BUFFER");
        if (setups[s].fixup) setenv("DROPBLOCK_OPENCL_FIXUP", setups[s].fixup, 1);
        else unsetenv("DROPBLOCK_OPENCL_FIXUP");
        struct db_engine *e;
        char msg[512];
        if (db_engine_open(&e, "opencl", NULL, "", log_line, NULL, msg, sizeof msg)) {
            printf("%s: no OpenCL device: %s\n", require ? "FAIL" : "SKIP", msg);
            return require ? 1 : 77;
        }
        for (size_t d = 0; d < db_engine_device_count(e); d++) {
            printf("device %s, %s\n", db_engine_device(e, d)->id, setups[s].name);
            fflush(stdout);
            for (size_t sl = 0; sl < sizeof slices / sizeof *slices; sl++) {
                db_engine_knobs(e)->opencl_stage_bytes = strtoull(slices[sl], NULL, 10);
                for (int i = 0; i < ncases; i++)
                    for (int ip = 0; ip < 2; ip++) {
                        struct ctx c = {e, (int)d, ip};
                        char why[512];
                        if (test_case_compare(&tc[i], run_on_device, &c, why, sizeof why)) passed++;
                        else {
                            failed++;
                            printf("FAIL %s, %s, slice %s bytes%s: %s: %s\n", db_engine_device(e, d)->id,
                                   setups[s].name, slices[sl], ip ? ", in place" : "", tc[i].name, why);
                        }
                    }
            }
        }
        db_engine_close(e);
    }
    printf("test_staging: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
