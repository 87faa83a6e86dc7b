/* knobs.c: reading the DROPBLOCK_* knobs once (knobs.h). */
#include "knobs.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db_params.h"

/* DROPBLOCK_VULKAN_MAX_BUFFER's least: a buffer must hold the parameter words */
_Static_assert(DBP_COUNT * 4 <= 512, "the parameter words outgrew DROPBLOCK_VULKAN_MAX_BUFFER's least, 512");

struct reader {
    void (*log)(void *ctx, const char *line);
    void *ctx;
};

static void ignored(const struct reader *r, const char *name, const char *value, const char *want)
{
    if (!r->log) return;
    char line[256];
    snprintf(line, sizeof line, "%s=\"%.80s\": %s; ignored", name, value, want);
    r->log(r->ctx, line);
}

/* a positive decimal count no larger than max, or 0 (unset, or reported and ignored) */
static uint64_t count(const struct reader *r, const char *name, uint64_t max)
{
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-' || v == 0 || v > max) {
        ignored(r, name, s, "not a positive whole number in range");
        return 0;
    }
    return (uint64_t)v;
}

/* 1 where the knob is "1" (or the word on), 0 where unset or "0"; anything else is reported */
static int flag(const struct reader *r, const char *name, const char *on)
{
    const char *s = getenv(name);
    if (!s || !*s || !strcmp(s, "0")) return 0;
    if (!strcmp(s, on)) return 1;
    char want[64];
    snprintf(want, sizeof want, "must be %s or 0", on);
    ignored(r, name, s, want);
    return 0;
}

void db_knobs_read(struct db_knobs *k, void (*log)(void *ctx, const char *line), void *log_ctx)
{
    const struct reader r = {log, log_ctx};
    memset(k, 0, sizeof *k);
    k->cpu_threads = (int)count(&r, "DROPBLOCK_CPU_THREADS", 1u << 20);
    k->opencl_max_buffer = count(&r, "DROPBLOCK_OPENCL_MAX_BUFFER", UINT64_MAX);
    k->opencl_shape_gpu = flag(&r, "DROPBLOCK_OPENCL_SHAPE", "gpu");
    k->opencl_copy = flag(&r, "DROPBLOCK_OPENCL_COPY", "1");
    k->opencl_fixup = flag(&r, "DROPBLOCK_OPENCL_FIXUP", "1");
    k->opencl_stage_bytes = count(&r, "DROPBLOCK_OPENCL_STAGE_BYTES", UINT64_MAX);
    k->vulkan_max_buffer = count(&r, "DROPBLOCK_VULKAN_MAX_BUFFER", UINT64_MAX);
    if (k->vulkan_max_buffer && k->vulkan_max_buffer < 512)
        k->vulkan_max_buffer = 512; /* the parameter words take DBP_COUNT * 4 = 264 */
    const char *stage = getenv("DROPBLOCK_VULKAN_STAGE");
    k->vulkan_stage = -1;
    if (stage && (!strcmp(stage, "0") || !strcmp(stage, "1"))) k->vulkan_stage = stage[0] == '1';
    else if (stage && *stage) ignored(&r, "DROPBLOCK_VULKAN_STAGE", stage, "must be 0 or 1");
    k->vulkan_copy = flag(&r, "DROPBLOCK_VULKAN_COPY", "1");
    k->vulkan_fixup = flag(&r, "DROPBLOCK_VULKAN_FIXUP", "1");
    k->vulkan_shape_gpu = flag(&r, "DROPBLOCK_VULKAN_SHAPE", "gpu");
    k->vulkan_mask_fault = (uint32_t)count(&r, "DROPBLOCK_VULKAN_MASK_FAULT", UINT32_MAX);
}
