/* test_backends: every device of every backend equals the CPU reference bit for bit on the
 * case matrix (tests/test_cases.c): output, mask, K, S and scale bits.
 *   test_backends [--backend cpu|opencl|vulkan] [--require opencl,vulkan] [--filter TEXT]
 *                 [--aligned] [--in-place] [--hostile-fpu]
 * --require fails the test when a named API has no device (CI sets it for PoCL and lavapipe).
 * --aligned hands the device page-aligned tensors (the paths that use the caller's memory in
 * place: Vulkan host-pointer import); --in-place runs each job with input == output;
 * --hostile-fpu (x86-64) calls the engine with flush-to-zero, denormals-are-zero and rounding
 * upward set in MXCSR, as a caller's process may have them (the CPU backend runs in the caller's
 * threads and the threads they start). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "engine.h"
#include "test_cases.h"

struct ctx {
    struct db_engine *e;
    int dev;
    int aligned, in_place, hostile_fpu;
};

static int engine_run(struct ctx *x, const dropblock_params *p, const void *in, void *out, uint8_t *mask,
                      dropblock_result *res)
{
#if defined(__x86_64__)
    const unsigned csr = _mm_getcsr();
    if (x->hostile_fpu) _mm_setcsr((csr & ~0x6000u) | 0x8000u /* FTZ */ | 0x0040u /* DAZ */ | 0x4000u /* up */);
    int rc = db_engine_run(x->e, x->dev, p, in, out, mask, res);
    _mm_setcsr(csr);
    return rc;
#else
    return db_engine_run(x->e, x->dev, p, in, out, mask, res);
#endif
}

static int run_on_device(void *c, const dropblock_params *p, const void *in, void *out, uint8_t *mask,
                         dropblock_result *res)
{
    struct ctx *x = c;
    if (!x->aligned && !x->in_place) return engine_run(x, p, in, out, mask, res);
    const size_t bytes = dropblock_tensor_bytes(p), page = 4096, cap = (bytes + page - 1) / page * page;
    char *a = x->aligned ? aligned_alloc(page, cap) : malloc(bytes), *b = x->in_place  ? a
                                                                          : x->aligned ? aligned_alloc(page, cap)
                                                                                       : malloc(bytes);
    int rc = DROPBLOCK_EEXHAUSTED;
    if (a && b) {
        memcpy(a, in, bytes);
        rc = engine_run(x, p, a, b, mask, res);
        memcpy(out, b, bytes);
    }
    if (b != a) free(b);
    free(a);
    return rc;
}

static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "  note: %s\n", line);
}

int main(int argc, char **argv)
{
    const char *backend = NULL, *require = NULL, *filter = NULL;
    int aligned = 0, in_place = 0, hostile_fpu = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--aligned")) aligned = 1;
        else if (!strcmp(argv[i], "--in-place")) in_place = 1;
        else if (!strcmp(argv[i], "--hostile-fpu")) hostile_fpu = 1;
        else if (!strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
        else if (!strcmp(argv[i], "--require") && i + 1 < argc) require = argv[++i];
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc) filter = argv[++i];
        else {
            fprintf(
                stderr,
                "usage: %s [--backend B] [--require A,B] [--filter TEXT] [--aligned] [--in-place] [--hostile-fpu]\n",
                argv[0]);
            return 2;
        }
    }
    struct db_engine *e;
    char msg[512];
    if (db_engine_open(&e, backend, NULL, "", log_line, NULL, msg, sizeof msg)) {
        fprintf(stderr, "no engine: %s\n", msg);
        return 1;
    }
    static struct test_case cases[TEST_CASES_MAX];
    int ncases = test_cases_matrix(cases, TEST_CASES_MAX), passed = 0, failed = 0;
    size_t ndev = db_engine_device_count(e);
    for (size_t d = 0; d < ndev; d++) {
        const dropblock_device_info *info = db_engine_device(e, d);
        printf("device %s: %s / %s / %s\n", info->id, info->vendor, info->name, info->driver);
        fflush(stdout);
        struct ctx c = {e, (int)d, aligned, in_place, hostile_fpu};
        int dfail = 0;
        for (int i = 0; i < ncases; i++) {
            if (filter && !strstr(cases[i].name, filter)) continue;
            char why[512];
            if (test_case_compare(&cases[i], run_on_device, &c, why, sizeof why)) passed++;
            else {
                failed++;
                dfail++;
                printf("FAIL %s %s: %s\n", info->id, cases[i].name, why);
            }
        }
        printf("device %s: %s\n", info->id, dfail ? "FAILED" : "all cases equal the reference");
    }
    if (require) {
        char buf[128];
        snprintf(buf, sizeof buf, "%s", require);
        for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            int found = 0;
            for (size_t d = 0; d < ndev; d++) found |= !strcmp(db_engine_device(e, d)->api, tok);
            if (!found) {
                printf("FAIL required API %s has no device\n", tok);
                failed++;
            }
        }
    }
    db_engine_close(e);
    printf("test_backends: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
