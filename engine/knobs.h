/* knobs.h: the DROPBLOCK_* tuning and test knobs of the backends, read from the environment
 * once, at db_engine_open, into one struct the backends share through their config.
 *
 * A backend never calls getenv: what it may be told is listed here, with what each value
 * means, and a value that cannot be read is reported through the engine's log and ignored.
 * Tests that run one engine under several settings change the struct through db_engine_knobs
 * between jobs (test_staging's slices). DROPBLOCK_CPU_SIMD is not here: the SIMD path is a
 * process-wide choice the passes make at their first call (philox_simd.c). */
#ifndef DROPBLOCK_ENGINE_KNOBS_H
#define DROPBLOCK_ENGINE_KNOBS_H

#include <stddef.h>
#include <stdint.h>

struct db_knobs {
    int cpu_threads;             /* DROPBLOCK_CPU_THREADS: every CPU job on exactly that many; 0 unset */
    uint64_t opencl_max_buffer;  /* DROPBLOCK_OPENCL_MAX_BUFFER: a smaller largest buffer (bytes); 0 unset */
    int opencl_shape_gpu;        /* DROPBLOCK_OPENCL_SHAPE=gpu: a CPU device gets the GPU kernels' shape */
    int opencl_copy;             /* DROPBLOCK_OPENCL_COPY=1: copy tensors even where they could be used in place */
    int opencl_fixup;            /* DROPBLOCK_OPENCL_FIXUP=1: the exact apply's fix-up path, whatever the probes say */
    uint64_t opencl_stage_bytes; /* DROPBLOCK_OPENCL_STAGE_BYTES: the staging slice (bytes); 0 the default */
    uint64_t vulkan_max_buffer;  /* DROPBLOCK_VULKAN_MAX_BUFFER: a smaller largest buffer (bytes, at least 512);
                                  * 0 unset */
    int vulkan_stage;            /* DROPBLOCK_VULKAN_STAGE: 1 staged through device-local memory, 0 not;
                                  * -1 unset (staged where the host cannot map device memory) */
    int vulkan_copy;             /* DROPBLOCK_VULKAN_COPY=1: never import the caller's memory */
    int vulkan_fixup;            /* DROPBLOCK_VULKAN_FIXUP=1: the exact apply's fix-up path */
    int vulkan_shape_gpu;        /* DROPBLOCK_VULKAN_SHAPE=gpu: a CPU device gets the GPU tuning (scatter pass) */
    uint32_t vulkan_mask_fault;  /* DROPBLOCK_VULKAN_MASK_FAULT: candidates an invocation in the first try of
                                  * every mask pass on CPU devices, a job none of whose passes was rerun
                                  * failing (tests of the completion check); 0 unset */
};

/* Fills k from the environment. A value that cannot be read is left unset and described by a
 * call to log (when not NULL). */
void db_knobs_read(struct db_knobs *k, void (*log)(void *ctx, const char *line), void *log_ctx);

#endif
