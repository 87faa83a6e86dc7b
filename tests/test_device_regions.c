/* test_device_regions: a training process's view of device memory shared by file descriptor
 * (issue 13), through a real dropblockd. This process allocates device memory from the daemon
 * (dropblock_device_alloc: region.alloc, the descriptor in the reply), imports it into its own
 * Vulkan instance on lavapipe (tests/vk_import.c, the device matched by UUID) and maps it, writes
 * x there, runs jobs on it (dropblock_run_ref, no host copy: forward and backward, every dtype and
 * layout of the case matrix, chunked sizes on a daemon whose Vulkan buffers are cut to 4 KiB),
 * reads y there and the mask from host memory, each bit for bit against the CPU reference; in
 * place and at unaligned offsets too. Then the lifecycle through the library: a device that
 * cannot export, the connection's device-memory cap, free and use again, and the in-process
 * engine's device buffers (dropblock_open_local) on the same cases.
 *   test_device_regions DROPBLOCKD CACHE_DIR */
#include <dropblock/dropblock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "test_cases.h"
#include "testutil.h"
#include "vk_import.h"

static int passed, failed;

enum { AT_ALIGNED, AT_UNALIGNED, IN_PLACE, N_PLACES };
static const char *const place_names[N_PLACES] = {"aligned offsets", "unaligned offsets", "in place"};

struct ctx {
    dropblock_t *h;
    dropblock_device_buffer buf;
    char *map;  /* this process's mapping of the imported memory */
    void *mask; /* host memory for the mask (dropblock_alloc) */
    uint64_t mask_cap;
    int place;
};

static int run_ref(void *c, const dropblock_params *p, const void *in, void *out, uint8_t *mask, dropblock_result *res)
{
    struct ctx *x = c;
    const uint64_t bytes = dropblock_tensor_bytes(p), mb = dropblock_mask_bytes(p);
    const uint64_t xoff = x->place == AT_UNALIGNED ? 4 : 0;
    const uint64_t yoff = x->place == IN_PLACE ? xoff : xoff + ((bytes + 255) & ~UINT64_C(255)) + xoff;
    if (yoff + bytes > x->buf.size || mb > x->mask_cap) return DROPBLOCK_EEXHAUSTED;
    memcpy(x->map + xoff, in, bytes);
    dropblock_ref xi = {&x->buf, NULL, xoff}, yo = {&x->buf, NULL, yoff};
    int rc = dropblock_run_ref(x->h, p, xi, yo, mask ? x->mask : NULL, NULL, res);
    memcpy(out, x->map + yoff, bytes);
    if (mask) memcpy(mask, x->mask, mb);
    return rc;
}

static uint64_t most_bytes(const struct test_case *tc, int n, int mask)
{
    uint64_t most = 0;
    for (int i = 0; i < n; i++) {
        uint64_t b = mask ? dropblock_mask_bytes(&tc[i].p) : dropblock_tensor_bytes(&tc[i].p);
        if (b > most) most = b;
    }
    return most;
}

/* every case of the matrix at every place, on a device buffer of h imported here; 0 when h has
 * no device that can export */
static int run_matrix(dropblock_t *h, const char *label, const struct test_case *tc, int ncases)
{
    struct ctx c = {.h = h};
    char msg[512];
    const uint64_t size = 2 * ((most_bytes(tc, ncases, 0) + 255) & ~UINT64_C(255)) + 4096;
    int rc = dropblock_device_alloc(h, NULL, size, &c.buf, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_OK, "%s: dropblock_device_alloc(%llu): %s", label, (unsigned long long)size, msg);
    if (rc) return 0;
    printf("%s: %llu bytes on %s as %s (allocation %llu, memory type %u%s%s)\n", label, (unsigned long long)c.buf.size,
           c.buf.device, c.buf.handle_type, (unsigned long long)c.buf.allocation_size, c.buf.memory_type_index,
           c.buf.dedicated ? ", dedicated" : "", c.buf.host_mappable ? ", host-mappable" : "");
    struct vki *v = vki_open(c.buf.device_uuid, msg, sizeof msg);
    CHECK(v != NULL, "%s: importer: %s", label, msg);
    void *imp = v ? vki_import(v, c.buf.fd, c.buf.allocation_size, c.buf.memory_type_index, c.buf.dedicated, c.buf.size,
                               (void **)&c.map, msg, sizeof msg)
                  : NULL;
    CHECK(imp != NULL, "%s: import: %s", label, msg);
    if (imp) c.buf.fd = -1; /* the import took it */
    c.mask_cap = most_bytes(tc, ncases, 1) + 64;
    rc = dropblock_alloc(h, c.mask_cap, &c.mask);
    CHECK(rc == DROPBLOCK_OK, "%s: dropblock_alloc for the mask", label);
    for (int place = 0; imp && c.mask && place < N_PLACES; place++) {
        c.place = place;
        int bad = 0;
        for (int i = 0; i < ncases; i++) {
            if (test_case_compare(&tc[i], run_ref, &c, msg, sizeof msg)) {
                passed++;
                continue;
            }
            failed++;
            if (bad++ < 5) printf("FAIL %s %s, %s: %s\n", label, tc[i].name, place_names[place], msg);
        }
        printf("%s, %s: %d of %d cases equal the reference\n", label, place_names[place], ncases - bad, ncases);
    }
    dropblock_free(h, c.mask);
    vki_release(v, imp);
    vki_close(v);
    CHECK(dropblock_device_free(h, &c.buf) == DROPBLOCK_OK, "%s: dropblock_device_free", label);
    return 1;
}

/* what the library and the daemon refuse, and how they say it */
static void refusals(dropblock_t *h)
{
    char msg[512];
    dropblock_device_buffer b, b2;
    int rc = dropblock_device_alloc(h, "cpu:0", 4096, &b, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_EINVAL && strstr(msg, "cannot export"), "alloc on cpu:0: %d %s", rc, msg);
    rc = dropblock_device_alloc(h, "vulkan:9", 4096, &b, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_ENOTFOUND, "alloc on vulkan:9: %d %s", rc, msg);
    /* the daemon runs with --max-client-device-bytes 64 MiB */
    rc = dropblock_device_alloc(h, "vulkan:0", UINT64_C(1) << 40, &b, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_EEXHAUSTED && strstr(msg, "--max-client-device-bytes"), "1 TiB: %d %s", rc, msg);
    rc = dropblock_device_alloc(h, "vulkan:0", 40u << 20, &b, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_OK, "40 MiB: %s", msg);
    rc = dropblock_device_alloc(h, "vulkan:0", 40u << 20, &b2, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_EEXHAUSTED, "another 40 MiB over the 64 MiB cap: %d %s", rc, msg);
    if (rc == DROPBLOCK_OK) dropblock_device_free(h, &b2);
    /* host input, device output; the wrong device; past the buffer's end */
    dropblock_params p = tu_params(1, 2, 8, 8, 0.2f, 3, 3);
    void *x = NULL;
    dropblock_result res;
    dropblock_alloc(h, 4096, &x);
    dropblock_ref host = {NULL, x, 0}, dev = {&b, NULL, 0}, far = {&b, NULL, (40u << 20) - 16};
    rc = dropblock_run_ref(h, &p, host, dev, NULL, NULL, &res);
    CHECK(rc == DROPBLOCK_EINVAL && strstr(res.message, "both or neither"), "host in, device out: %d %s", rc,
          res.message);
    rc = dropblock_run_ref(h, &p, dev, dev, NULL, "opencl:0", &res);
    CHECK(rc == DROPBLOCK_EINVAL && strstr(res.message, "vulkan:0"), "device opencl:0: %d %s", rc, res.message);
    rc = dropblock_run_ref(h, &p, far, far, NULL, NULL, &res);
    CHECK(rc == DROPBLOCK_ERANGE, "past the end: %d %s", rc, res.message);
    rc = dropblock_run_ref(h, &p, dev, dev, NULL, NULL, &res);
    CHECK(rc == DROPBLOCK_OK, "a job on the 40 MiB buffer: %d %s", rc, res.message);
    /* freed, then named again: the daemon no longer knows the region */
    dropblock_device_buffer stale = b;
    CHECK(dropblock_device_free(h, &b) == DROPBLOCK_OK, "free");
    rc = dropblock_run_ref(h, &p, (dropblock_ref){&stale, NULL, 0}, (dropblock_ref){&stale, NULL, 0}, NULL, NULL, &res);
    CHECK(rc == DROPBLOCK_ENOTFOUND, "a freed buffer: %d %s", rc, res.message);
    rc = dropblock_device_alloc(h, "vulkan:0", 40u << 20, &b, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_OK, "40 MiB again once freed: %s", msg);
    if (!rc) dropblock_device_free(h, &b);
    dropblock_free(h, x);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s DROPBLOCKD CACHE_DIR\n", argv[0]);
        return 2;
    }
    int slow = 1;
    char dir[256], sock[300], cache[300];
    if (tu_test_start("devregions", &slow, dir, sizeof dir, sock, sizeof sock, cache, sizeof cache)) return 1;
    static struct test_case tc[TEST_CASES_MAX];
    const int ncases = test_cases_matrix(tc, TEST_CASES_MAX);
    char msg[512];
    int seen = 0;
    /* the in-process engine first: it says whether this machine has a device that can export */
    dropblock_t *h = NULL;
    dropblock_local_options lo = {0};
    if (dropblock_open_local(&h, &lo, msg, sizeof msg) == DROPBLOCK_OK) {
        seen = run_matrix(h, "in-process engine", tc, ncases);
        dropblock_close(h);
    }
    if (!seen) {
        printf("SKIP: no device that can export memory (a Vulkan device with VK_KHR_external_memory_fd)\n");
        return 77;
    }
    const char *const runs[2][5] = {{"--max-client-device-bytes", "67108864", NULL},
                                    {"--max-client-device-bytes", "67108864", NULL}};
    const char *labels[2] = {"daemon", "daemon, 4 KiB Vulkan buffers (chunks)"};
    for (int r = 0; r < 2; r++) {
        if (r == 1) setenv("DROPBLOCK_VULKAN_MAX_BUFFER", "4096", 1);
        pid_t pid = tu_daemon_start("test_device_regions", argv[1], sock, argv[2], runs[r], 120.0 * slow);
        if (pid < 0) return 1;
        if (dropblock_connect(&h, sock, msg, sizeof msg)) {
            printf("FAIL connect: %s\n", msg);
            kill(pid, SIGTERM);
            return 1;
        }
        run_matrix(h, labels[r], tc, ncases);
        if (r == 0) refusals(h);
        dropblock_close(h);
        kill(pid, SIGTERM);
        int st = 0;
        waitpid(pid, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s exited with status 0x%x", labels[r], st);
    }
    printf("test_device_regions: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
