/* test_large_vulkan: tensors larger than one Vulkan buffer may be (lavapipe's
 * maxStorageBufferRange is 128 MiB) go through the vulkan backend in several chunks and equal
 * the CPU reference bit for bit: output, mask, K, S and scale. A missing Vulkan device fails the
 * test (CI has lavapipe). The buffer limit is pinned at 128 MiB (unless
 * DROPBLOCK_VULKAN_MAX_BUFFER is already set) so that every device takes the chunked path. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "clock.h"
#include "engine.h"
#include "reference.h"

static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    fprintf(stderr, "  note: %s\n", line);
}

/* one case: 1 if the device equals the reference; in_place runs the device with in == out */
static int check(struct db_engine *e, const char *name, const dropblock_params *p, int in_place)
{
    const uint64_t n = dropblock_numel(p), bytes = dropblock_tensor_bytes(p), mb = dropblock_mask_bytes(p);
    const size_t es = dropblock_dtype_size(p->dtype);
    if (bytes <= db_engine_device(e, 0)->max_buffer) {
        printf("FAIL %s: the tensor (%llu bytes) fits one buffer: nothing is chunked\n", name,
               (unsigned long long)bytes);
        return 0;
    }
    void *x = malloc(bytes), *want = malloc(bytes), *got = malloc(bytes);
    uint8_t *wmask = calloc(1, mb), *gmask = calloc(1, mb);
    dropblock_result wr, gr;
    memset(&wr, 0, sizeof wr);
    memset(&gr, 0, sizeof gr);
    int ok = 0;
    if (!x || !want || !got || !wmask || !gmask) {
        printf("FAIL %s: out of host memory\n", name);
        goto out;
    }
    db_fill_tf_uniform(p->dtype, 7, 11, n, x);
    if (in_place) memcpy(got, x, bytes);
    else memset(got, 0xA5, bytes); /* so that an element the device never writes shows */
    uint64_t t0 = db_now_us();
    int wrc = db_reference_run(p, x, want, wmask, NULL, &wr);
    uint64_t t1 = db_now_us();
    int grc = db_engine_run(e, 0, p, in_place ? got : x, got, gmask, &gr);
    uint64_t t2 = db_now_us();
    printf("%s: %llu bytes, reference %.2f s, %s %.2f s (mask %.2f, scale %.3f, apply %.2f)\n", name,
           (unsigned long long)bytes, (double)(t1 - t0) / 1e6, gr.device, (double)(t2 - t1) / 1e6,
           (double)gr.timing_us[0] / 1e6, (double)gr.timing_us[1] / 1e6, (double)gr.timing_us[2] / 1e6);
    if (wrc || grc) {
        printf("FAIL %s: reference rc %d (%s), vulkan rc %d (%s)\n", name, wrc, wr.message, grc, gr.message);
        goto out;
    }
    if (wr.kept != gr.kept || wr.total != gr.total || wr.scale_bits != gr.scale_bits) {
        printf("FAIL %s: K/S/scale: reference %llu/%llu/0x%08x, vulkan %llu/%llu/0x%08x\n", name,
               (unsigned long long)wr.kept, (unsigned long long)wr.total, wr.scale_bits, (unsigned long long)gr.kept,
               (unsigned long long)gr.total, gr.scale_bits);
        goto out;
    }
    for (uint64_t i = 0; i < mb; i++)
        if (wmask[i] != gmask[i]) {
            printf("FAIL %s: mask byte %llu: reference 0x%02x, vulkan 0x%02x\n", name, (unsigned long long)i, wmask[i],
                   gmask[i]);
            goto out;
        }
    if (memcmp(want, got, bytes)) {
        for (uint64_t i = 0; i < n; i++) {
            uint32_t a = 0, b = 0;
            memcpy(&a, (char *)want + i * es, es);
            memcpy(&b, (char *)got + i * es, es);
            if (a != b) {
                printf("FAIL %s: element %llu: reference 0x%08x, vulkan 0x%08x\n", name, (unsigned long long)i, a, b);
                break;
            }
        }
        goto out;
    }
    printf("ok %s: K %llu of %llu, scale 0x%08x\n", name, (unsigned long long)gr.kept, (unsigned long long)gr.total,
           gr.scale_bits);
    ok = 1;
out:
    free(x);
    free(want);
    free(got);
    free(wmask);
    free(gmask);
    return ok;
}

int main(void)
{
    setenv("DROPBLOCK_VULKAN_MAX_BUFFER", "134217728", 0);
    struct db_engine *e;
    char msg[512];
    if (db_engine_open(&e, "vulkan", NULL, "", log_line, NULL, msg, sizeof msg)) {
        printf("FAIL no Vulkan device: %s\n", msg);
        printf("test_large_vulkan: 0 passed, 1 failed\n");
        return 1;
    }
    const dropblock_device_info *info = db_engine_device(e, 0);
    printf("device %s: %s / %s / %s, max buffer %llu bytes\n", info->id, info->vendor, info->name, info->driver,
           (unsigned long long)info->max_buffer);

    /* 2x9x1450x1450 f32: 151 MB, two chunks, the boundary inside sample 1 */
    dropblock_params p = tu_params(2, 9, 1450, 1450, 0.1f, 7, 7);
    p.seed = UINT64_C(0x0123456789ABCDEF);
    p.stream = 5;
    int passed = 0, failed = 0;
    if (check(e, "NCHW f32 2x9x1450x1450 b7", &p, 0)) passed++;
    else failed++;

    /* 3x25x1000x999 f16 NHWC, per-sample scales, in place: 150 MB; rows of 24975 elements, so
     * the first chunk (2687 rows) has an odd number of 16-bit elements */
    p.shape[0] = 3;
    p.shape[1] = 25;
    p.shape[2] = 1000;
    p.shape[3] = 999;
    p.layout = DROPBLOCK_NHWC;
    p.dtype = DROPBLOCK_F16;
    p.normalize = DROPBLOCK_NORMALIZE_SAMPLE;
    p.rate = 0.25f;
    p.block[0] = 5;
    p.block[1] = 3;
    if (check(e, "NHWC f16 3x25x1000x999 b5x3 sample in-place", &p, 1)) passed++;
    else failed++;
    db_engine_close(e);
    printf("test_large_vulkan: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
