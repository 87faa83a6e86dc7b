/* backend_cpu.c: the built-in CPU backend, which is the reference implementation itself. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "reference.h"

uint64_t db_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int cpu_enumerate(const struct db_backend_config *cfg, struct db_device *out, size_t cap, char *msg, size_t len)
{
    (void)cfg; (void)msg; (void)len;
    if (cap < 1) return 0;
    memset(out, 0, sizeof *out);
    snprintf(out->info.api, sizeof out->info.api, "cpu");
    snprintf(out->info.vendor, sizeof out->info.vendor, "dropblockd");
    snprintf(out->info.name, sizeof out->info.name, "built-in CPU reference");
    snprintf(out->info.driver, sizeof out->info.driver, "%d.%d", DROPBLOCK_VERSION_MAJOR, DROPBLOCK_VERSION_MINOR);
    out->info.kind = DROPBLOCK_DEVICE_CPU;
    out->info.max_buffer = UINT64_MAX;
    out->ops = &db_backend_cpu;
    return 1;
}

static int cpu_prepare(struct db_device *dev, const struct db_backend_config *cfg, char *msg, size_t len)
{
    (void)dev; (void)cfg; (void)msg; (void)len;
    return DROPBLOCK_OK;
}

static int cpu_run(struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
                   dropblock_result *res)
{
    (void)dev;
    uint64_t t0 = db_now_us();
    int rc = db_reference_run(&pl->p, in, out, mask, NULL, res);
    res->timing_us[3] = db_now_us() - t0;
    return rc;
}

static void cpu_release(struct db_device *dev) { (void)dev; }

const struct backend_ops db_backend_cpu = {"cpu", cpu_enumerate, cpu_prepare, cpu_run, cpu_release};
