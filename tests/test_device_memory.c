/* test_device_memory: jobs on device memory shared by file descriptor (issue 13), at the engine.
 * On every Vulkan device that can export: memory from db_engine_export_alloc imported by this
 * test's own Vulkan instance (tests/vk_import.c: the device matched by UUID, the descriptor
 * imported and mapped, as a client process does), x written there, the job run on it
 * (db_engine_run_shared with dev_in and dev_out, no host pointer), y and the mask read back: the
 * whole case matrix (tests/test_cases.c) bit for bit against the CPU reference, with x and y
 * bound in place (aligned offsets), at unaligned offsets (copied on the device), in place (input
 * = output), and in several chunks (a second engine, DROPBLOCK_VULKAN_MAX_BUFFER=4096). Then the
 * refusals: a device that cannot export (the CPU backend), 0 bytes, an input in device memory
 * with an output that is not.
 *   test_device_memory [--require vulkan] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "engine.h"
#include "test_cases.h"
#include "vk_import.h"

static int passed, failed;

enum { AT_ALIGNED, AT_UNALIGNED, IN_PLACE, N_PLACES };
static const char *const place_names[N_PLACES] = {"aligned offsets (bound in place)",
                                                  "unaligned offsets (copied on the device)", "in place"};

struct ctx {
    struct db_engine *e;
    int dev;
    void *handle; /* the engine's export */
    char *map;    /* this test's mapping of it */
    uint64_t size;
    int place;
};

static int run_on_device_memory(void *c, const dropblock_params *p, const void *in, void *out, uint8_t *mask,
                                dropblock_result *res)
{
    struct ctx *x = c;
    const uint64_t bytes = dropblock_tensor_bytes(p);
    const uint64_t xoff = x->place == AT_UNALIGNED ? 4 : 0;
    const uint64_t yoff = x->place == IN_PLACE ? xoff : xoff + ((bytes + 255) & ~UINT64_C(255)) + xoff;
    if (yoff + bytes > x->size) return DROPBLOCK_EEXHAUSTED;
    memcpy(x->map + xoff, in, bytes);
    const struct db_job_mem mem = {.dev_in = x->handle, .dev_out = x->handle, .in_off = xoff, .out_off = yoff};
    int rc = db_engine_run_shared(x->e, x->dev, p, NULL, NULL, mask, &mem, res);
    memcpy(out, x->map + yoff, bytes);
    return rc;
}

/* the bytes the matrix's largest case needs at the test's offsets */
static uint64_t matrix_bytes(const struct test_case *tc, int n)
{
    uint64_t most = 0;
    for (int i = 0; i < n; i++) {
        uint64_t b = dropblock_tensor_bytes(&tc[i].p);
        if (b > most) most = b;
    }
    return 2 * ((most + 255) & ~UINT64_C(255)) + 4096;
}

/* Every case at every place on device d of e; 1 if the device can export. */
static int run_device(struct db_engine *e, size_t d, const struct test_case *tc, int ncases, const char *label)
{
    const dropblock_device_info *info = db_engine_device(e, d);
    char why[512];
    if (!db_engine_can_export(e, d, why, sizeof why)) {
        printf("device %s: cannot export (%s)\n", info->id, why);
        return 0;
    }
    struct ctx c = {.e = e, .dev = (int)d, .size = matrix_bytes(tc, ncases)};
    struct db_export_info xi;
    int rc = db_engine_export_alloc(e, (int)d, c.size, &c.handle, &xi, why, sizeof why);
    CHECK(rc == DROPBLOCK_OK, "%s: export of %llu bytes: %s", info->id, (unsigned long long)c.size, why);
    if (rc) return 1;
    printf("device %s (%s): %llu bytes exported as %s, allocation %llu, memory type %u%s%s\n", info->id, label,
           (unsigned long long)xi.size, xi.handle_type, (unsigned long long)xi.allocation_size, xi.memory_type_index,
           xi.dedicated ? ", dedicated" : "", xi.host_mappable ? ", host-mappable" : "");
    CHECK(xi.fd >= 0 && xi.allocation_size >= c.size && !strcmp(xi.handle_type, "opaque_fd"), "%s: export info",
          info->id);
    struct vki *v = vki_open(xi.device_uuid, why, sizeof why);
    CHECK(v != NULL, "%s: the importer: %s", info->id, why);
    void *imp = v ? vki_import(v, xi.fd, xi.allocation_size, xi.memory_type_index, xi.dedicated, xi.size,
                               (void **)&c.map, why, sizeof why)
                  : NULL;
    CHECK(imp != NULL, "%s: import: %s", info->id, why);
    if (!imp) close(xi.fd);
    for (int place = 0; imp && place < N_PLACES; place++) {
        c.place = place;
        int bad = 0;
        for (int i = 0; i < ncases; i++) {
            if (!test_case_compare(&tc[i], run_on_device_memory, &c, why, sizeof why)) {
                if (bad++ < 5) printf("FAIL %s %s, %s: %s\n", info->id, tc[i].name, place_names[place], why);
                failed++;
            } else passed++;
        }
        printf("device %s (%s), %s: %d of %d cases equal the reference\n", info->id, label, place_names[place],
               ncases - bad, ncases);
    }
    vki_release(v, imp);
    vki_close(v);
    db_engine_export_free(e, (int)d, c.handle);
    return 1;
}

/* what is refused, and how it is said */
static void refusals(struct db_engine *e)
{
    char msg[512];
    void *h = NULL;
    struct db_export_info xi;
    for (size_t d = 0; d < db_engine_device_count(e); d++) {
        const dropblock_device_info *info = db_engine_device(e, d);
        if (!strcmp(info->api, "cpu")) {
            int rc = db_engine_export_alloc(e, (int)d, 4096, &h, &xi, msg, sizeof msg);
            CHECK(rc == DROPBLOCK_EINVAL && strstr(msg, "cannot export"), "%s: export on the CPU backend: %d %s",
                  info->id, rc, msg);
            continue;
        }
        if (strcmp(info->api, "vulkan") || !db_engine_can_export(e, d, msg, sizeof msg)) continue;
        int rc = db_engine_export_alloc(e, (int)d, 0, &h, &xi, msg, sizeof msg);
        CHECK(rc == DROPBLOCK_EINVAL && strstr(msg, "0 bytes"), "%s: 0 bytes: %d %s", info->id, rc, msg);
        if ((rc = db_engine_export_alloc(e, (int)d, 4096, &h, &xi, msg, sizeof msg))) continue;
        close(xi.fd);
        dropblock_params p = tu_params(1, 1, 8, 8, 0.2f, 3, 3);
        float y[64];
        dropblock_result res;
        const struct db_job_mem mem = {.dev_in = h};
        rc = db_engine_run_shared(e, (int)d, &p, NULL, y, NULL, &mem, &res);
        CHECK(rc == DROPBLOCK_EINVAL && strstr(res.message, "both or neither"), "%s: input on the device only: %d %s",
              info->id, rc, res.message);
        db_engine_export_free(e, (int)d, h);
    }
}

static struct db_engine *open_engine(void)
{
    struct db_engine *e;
    char msg[512];
    if (db_engine_open(&e, "cpu,vulkan", NULL, "", NULL, NULL, msg, sizeof msg)) {
        fprintf(stderr, "no engine: %s\n", msg);
        return NULL;
    }
    return e;
}

int main(int argc, char **argv)
{
    int require = argc == 3 && !strcmp(argv[1], "--require") && strstr(argv[2], "vulkan");
    static struct test_case tc[TEST_CASES_MAX];
    int ncases = test_cases_matrix(tc, TEST_CASES_MAX), seen = 0;
    struct db_engine *e = open_engine();
    if (!e) return 1;
    for (size_t d = 0; d < db_engine_device_count(e); d++)
        if (!strcmp(db_engine_device(e, d)->api, "vulkan")) seen += run_device(e, d, tc, ncases, "one chunk");
    refusals(e);
    db_engine_close(e);
    /* several chunks a job: the copies on the device, a chunk at a time (the cap is read at open) */
    setenv("DROPBLOCK_VULKAN_MAX_BUFFER", "4096", 1);
    if (!(e = open_engine())) return 1;
    for (size_t d = 0; d < db_engine_device_count(e); d++)
        if (!strcmp(db_engine_device(e, d)->api, "vulkan")) run_device(e, d, tc, ncases, "4 KiB buffers");
    db_engine_close(e);
    if (!seen) {
        printf("no Vulkan device that can export%s\n", require ? "" : ": skipped");
        if (!require) return 77;
        failed++;
    }
    printf("test_device_memory: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
