/* test_knobs: the DROPBLOCK_* backend knobs read once into struct db_knobs (engine/knobs.c):
 * each knob's values, unset ones at their defaults, and every unreadable value reported through
 * the log callback by name and ignored. The expectations are the documented meanings
 * (knobs.h), written out by hand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knobs.h"

static int passed, failed;
static char logged[4096];

#define CHECK_EQ(got, want, what) \
    do { \
        unsigned long long g_ = (unsigned long long)(got), w_ = (unsigned long long)(want); \
        if (g_ == w_) passed++; \
        else { \
            failed++; \
            printf("FAIL %s: got %llu, want %llu\n", what, g_, w_); \
        } \
    } while (0)

static void log_line(void *ctx, const char *line)
{
    (void)ctx;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", line);
}

static const char *const names[] = {
    "DROPBLOCK_CPU_THREADS",  "DROPBLOCK_OPENCL_MAX_BUFFER",  "DROPBLOCK_OPENCL_SHAPE",      "DROPBLOCK_OPENCL_COPY",
    "DROPBLOCK_OPENCL_FIXUP", "DROPBLOCK_OPENCL_STAGE_BYTES", "DROPBLOCK_VULKAN_MAX_BUFFER", "DROPBLOCK_VULKAN_STAGE",
    "DROPBLOCK_VULKAN_COPY",  "DROPBLOCK_VULKAN_FIXUP",       "DROPBLOCK_VULKAN_MASK_FAULT", "DROPBLOCK_VULKAN_SHAPE",
};

static void clear(void)
{
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) unsetenv(names[i]);
    logged[0] = 0;
}

/* sets each name=value pair of a NULL-terminated list, after clearing every knob */
static void set_only(const char *const *pairs)
{
    clear();
    for (; *pairs; pairs += 2) setenv(pairs[0], pairs[1], 1);
}

static void expect_logged(const char *what)
{
    if (strstr(logged, what)) passed++;
    else {
        failed++;
        printf("FAIL the log lacks \"%s\"; it has:\n%s", what, logged);
    }
}

int main(void)
{
    struct db_knobs k;
    clear();
    db_knobs_read(&k, log_line, NULL);
    CHECK_EQ(k.cpu_threads, 0, "unset: CPU threads");
    CHECK_EQ(k.opencl_max_buffer, 0, "unset: OpenCL max buffer");
    CHECK_EQ(k.vulkan_max_buffer, 0, "unset: Vulkan max buffer");
    CHECK_EQ(k.vulkan_stage, -1, "unset: Vulkan staging is the device's choice");
    CHECK_EQ(k.opencl_copy + k.opencl_fixup + k.opencl_shape_gpu + k.vulkan_copy + k.vulkan_fixup + k.vulkan_shape_gpu,
             0, "unset flags");
    CHECK_EQ(k.opencl_stage_bytes + k.vulkan_mask_fault, 0, "unset counts");
    CHECK_EQ(strlen(logged), 0, "nothing logged when nothing is set");

    /* clang-format off */
    static const char *const readable[] = {
        "DROPBLOCK_CPU_THREADS", "3", "DROPBLOCK_OPENCL_MAX_BUFFER", "4096", "DROPBLOCK_OPENCL_SHAPE", "gpu",
        "DROPBLOCK_OPENCL_COPY", "1", "DROPBLOCK_OPENCL_FIXUP", "1", "DROPBLOCK_OPENCL_STAGE_BYTES", "300",
        "DROPBLOCK_VULKAN_MAX_BUFFER", "100", "DROPBLOCK_VULKAN_STAGE", "0", "DROPBLOCK_VULKAN_COPY", "1",
        "DROPBLOCK_VULKAN_FIXUP", "0", "DROPBLOCK_VULKAN_MASK_FAULT", "1000000", "DROPBLOCK_VULKAN_SHAPE", "gpu", NULL};
    /* clang-format on */
    set_only(readable);
    db_knobs_read(&k, log_line, NULL);
    CHECK_EQ(k.cpu_threads, 3, "CPU threads");
    CHECK_EQ(k.opencl_max_buffer, 4096, "OpenCL max buffer");
    CHECK_EQ(k.opencl_shape_gpu, 1, "OpenCL GPU shape");
    CHECK_EQ(k.opencl_copy, 1, "OpenCL copy");
    CHECK_EQ(k.opencl_fixup, 1, "OpenCL fixup");
    CHECK_EQ(k.opencl_stage_bytes, 300, "OpenCL slice");
    CHECK_EQ(k.vulkan_max_buffer, 512, "Vulkan max buffer: at least 512 bytes, room for the parameter words");
    CHECK_EQ(k.vulkan_stage, 0, "Vulkan staging off");
    CHECK_EQ(k.vulkan_copy, 1, "Vulkan copy");
    CHECK_EQ(k.vulkan_fixup, 0, "Vulkan fixup \"0\"");
    CHECK_EQ(k.vulkan_mask_fault, 1000000, "Vulkan mask fault");
    CHECK_EQ(k.vulkan_shape_gpu, 1, "Vulkan GPU shape");
    CHECK_EQ(strlen(logged), 0, "nothing logged for readable values");

    /* clang-format off */
    static const char *const unreadable[] = {
        "DROPBLOCK_CPU_THREADS", "-2", "DROPBLOCK_OPENCL_MAX_BUFFER", "4k", "DROPBLOCK_OPENCL_SHAPE", "cpu",
        "DROPBLOCK_OPENCL_STAGE_BYTES", "0", "DROPBLOCK_VULKAN_MAX_BUFFER", "99999999999999999999999",
        "DROPBLOCK_VULKAN_STAGE", "yes", "DROPBLOCK_VULKAN_MASK_FAULT", "4294967296", "DROPBLOCK_VULKAN_SHAPE", "cpu",
        NULL};
    /* clang-format on */
    set_only(unreadable);
    db_knobs_read(&k, log_line, NULL);
    CHECK_EQ(k.cpu_threads, 0, "negative CPU threads ignored");
    CHECK_EQ(k.opencl_max_buffer, 0, "\"4k\" ignored");
    CHECK_EQ(k.opencl_shape_gpu, 0, "shape other than gpu ignored");
    CHECK_EQ(k.opencl_stage_bytes, 0, "a zero slice ignored");
    CHECK_EQ(k.vulkan_max_buffer, 0, "an overflowing count ignored");
    CHECK_EQ(k.vulkan_stage, -1, "staging \"yes\" ignored");
    CHECK_EQ(k.vulkan_mask_fault, 0, "a mask fault past 32 bits ignored");
    CHECK_EQ(k.vulkan_shape_gpu, 0, "Vulkan shape other than gpu ignored");
    expect_logged("DROPBLOCK_CPU_THREADS=\"-2\": not a positive whole number in range; ignored");
    expect_logged("DROPBLOCK_OPENCL_MAX_BUFFER=\"4k\"");
    expect_logged("DROPBLOCK_OPENCL_SHAPE=\"cpu\": must be gpu or 0; ignored");
    expect_logged("DROPBLOCK_OPENCL_STAGE_BYTES=\"0\"");
    expect_logged("DROPBLOCK_VULKAN_MAX_BUFFER=\"99999999999999999999999\"");
    expect_logged("DROPBLOCK_VULKAN_STAGE=\"yes\": must be 0 or 1; ignored");
    expect_logged("DROPBLOCK_VULKAN_MASK_FAULT=\"4294967296\"");
    expect_logged("DROPBLOCK_VULKAN_SHAPE=\"cpu\": must be gpu or 0; ignored");

    static const char *const copy_true[] = {"DROPBLOCK_OPENCL_COPY", "true", NULL};
    set_only(copy_true);
    db_knobs_read(&k, NULL, NULL); /* no log callback: still ignored, nothing to call */
    CHECK_EQ(k.opencl_copy, 0, "copy \"true\" ignored without a log");

    printf("test_knobs: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
