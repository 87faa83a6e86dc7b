/* backend.h: the one vtable every device API implements (CPU, OpenCL, Vulkan).
 *
 * A backend enumerates its devices, prepares its kernels once per device, runs jobs and
 * releases everything. The engine (engine.c) owns the device list, serialises jobs per
 * device, and handles validation and the identity before a backend sees a job. All OpenCL
 * calls live in backend_opencl.c and its opencl_*.c, all Vulkan calls in backend_vulkan.c and
 * its vulkan_*.c. */
#ifndef DROPBLOCK_ENGINE_BACKEND_H
#define DROPBLOCK_ENGINE_BACKEND_H

#include <dropblock/dropblock.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "kernel_params.h"
#include "knobs.h"
#include "plan.h"

struct db_backend_config {
    const char *cache_dir; /* where compiled kernels are kept; NULL or "" disables the cache */
    /* the engine's knobs (knobs.h), read at open; a backend keeps the pointer (the engine
     * outlives its devices) and reads it when it needs a value, never the environment */
    const struct db_knobs *knobs;
};

struct backend_ops;

/* What bench/dropblock-bench times with a backend's bench op, on data resident on the device. */
enum db_bench_what {
    DB_BENCH_COPY,     /* a copy kernel of the tensor's bytes, loads and stores as the apply's: the roofline */
    DB_BENCH_OP,       /* the forward job from x to y, scales and K included */
    DB_BENCH_BACKWARD, /* the same job in backward mode (dy to dx) */
    DB_BENCH_MASK,     /* the mask pass alone */
    DB_BENCH_BASELINE, /* torchvision's multi-pass method, one kernel a torch op (shaders/db_baseline.h) */
    DB_BENCH_XFER,     /* the tensor's bytes host to device then device to host through the API, as a job from host
                        * memory that cannot be used in place moves them (no kernel) */
    DB_BENCH_N
};

/* What a device's last job asked of its API, counted by the backend as it enqueues (OpenCL) or
 * records (Vulkan) the job: the host-side structure of a job, a fact of the code rather than a
 * timing (tests/test_job_stats.c asserts it; issue 16 wants a one-chunk job at <= 3 launches and
 * no transfer between them). */
struct db_job_stats {
    uint32_t launches;          /* kernels enqueued (OpenCL clEnqueueNDRangeKernel) or dispatches recorded (Vulkan) */
    uint32_t transfers;         /* host<->device buffer writes, reads, copies, maps and unmaps of the job */
    uint32_t transfers_between; /* those of them enqueued after the job's first launch and before its last */
    uint32_t fills;             /* buffer fills (device-side zeroing: clEnqueueFillBuffer, vkCmdFillBuffer) */
    uint32_t fills_between;     /* those of them after the first launch and before the last */
    uint32_t submits;           /* queue submissions: clFlush and clFinish, vkQueueSubmit */
    uint32_t waits;             /* host waits for the device: clFinish, clWaitForEvents, vkWaitForFences */
    uint32_t recordings;        /* Vulkan: command buffers recorded (a submission of a kept one: none); OpenCL: 0 */
};

/* Host memory that outlives a job (the daemon's regions; db_engine_run_shared): a backend may
 * keep what it made for it between jobs (Vulkan: one import of the whole range), holding a
 * reference (ref, unref: any thread) for as long; once the owner sets gone, the backend drops it
 * at its device's next job or sweep (db_engine_sweep), and the owner's unref that comes last
 * unmaps it. */
struct db_host_region {
    void *base;
    uint64_t size;
    atomic_int gone;
    void (*ref)(struct db_host_region *r);
    void (*unref)(struct db_host_region *r);
};

/* Device memory a backend allocated exportable (db_engine_export_alloc), as an importer needs it:
 * Vulkan's VK_KHR_external_memory_fd (CUDA's cudaImportExternalMemory and HIP's take the same
 * fields). */
struct db_export_info {
    int fd;                     /* the exported descriptor (the caller's to close) */
    uint64_t size;              /* the bytes asked for */
    uint64_t allocation_size;   /* the allocation's size: an importer allocates exactly this */
    uint32_t memory_type_index; /* the exporting device's memory type (Vulkan importers on it use it) */
    int dedicated;              /* made with VkMemoryDedicatedAllocateInfo: import it dedicated */
    int host_mappable;          /* the memory type is HOST_VISIBLE: an importer may map it */
    char handle_type[16];       /* "opaque_fd" */
    uint8_t device_uuid[16], driver_uuid[16];
};

/* A timeline semaphore a backend made (sem_create), as an importer needs it: Vulkan's
 * VK_KHR_external_semaphore_fd (CUDA's cudaImportExternalSemaphore and HIP's take the same). */
struct db_semaphore_info {
    int fd;               /* the exported descriptor (the caller's to close); -1: not exported */
    char handle_type[16]; /* "opaque_fd", or "" where not exported */
    uint8_t device_uuid[16], driver_uuid[16];
};

/* Where a job's tensors lie: the host regions holding the input and the output (each NULL:
 * memory of this job only), or device memory of the job's device (dev_in, dev_out: handles from
 * its backend's export_alloc, at in_off and out_off; then the job's in and out pointers are
 * NULL). */
struct db_job_mem {
    struct db_host_region *in, *out;
    void *dev_in, *dev_out;
    uint64_t in_off, out_off;
    /* the job's wait (reached before run: the backend orders its first submission after it) and
     * signal (set by the engine after run): the backend's semaphore handles, or NULL */
    void *wait_sem, *signal_sem;
    uint64_t wait_value, signal_value;
};

/* What a device's running job is doing, for progress displays (db_engine_progress). */
enum db_pass { DB_PASS_IDLE, DB_PASS_RUNNING, DB_PASS_MASK, DB_PASS_SCALES, DB_PASS_APPLY };

struct db_device {
    dropblock_device_info info; /* id is set by the engine */
    const struct backend_ops *ops;
    void *priv; /* the backend's state for this device */
    /* the running job's pass (enum db_pass) and, in a pass over several chunks, the chunk
     * (1-based) of nchunks: the engine sets RUNNING and IDLE around a job, a backend's run may
     * say more with db_progress; any thread reads them */
    _Atomic int pass;
    _Atomic unsigned long long chunk, nchunks;
    /* db_engine_open's log callback (NULL: none), set by the engine before prepare: a backend
     * reports through db_dev_log, never on stderr (the library promises to print nothing) */
    void (*log)(void *ctx, const char *line);
    void *log_ctx;
    /* DROPBLOCK_FAULTS "lost" at this job (engine.h; set by the engine around run): the OpenCL and
     * Vulkan backends fail the job as their API does for a device that is gone
     * (CL_DEVICE_NOT_AVAILABLE, VK_ERROR_DEVICE_LOST), through their usual error mapping */
    int inject_lost;
    /* the last job's counts (struct db_job_stats): zeroed by the engine before run, written by
     * the backend's run under the device's lock; db_engine_last_job_stats reads them */
    struct db_job_stats last_job;
    /* the running job's regions (set by the engine around run, under the device's lock; NULL:
     * none) */
    const struct db_job_mem *job_mem;
};

/* One line to the device's log callback, prefixed with the device's id; nothing without one. */
void db_dev_log(const struct db_device *dev, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static inline void db_progress(struct db_device *dev, enum db_pass pass, uint64_t chunk, uint64_t nchunks)
{
    if (!dev) return;
    dev->chunk = chunk;
    dev->nchunks = nchunks;
    dev->pass = pass;
}

struct backend_ops {
    const char *name; /* "cpu", "opencl", "vulkan" */
    /* Appends up to cap devices (info filled except id, ops and priv set); returns how many,
     * 0 when the API has none, or a negative DROPBLOCK_E* code with msg. */
    int (*enumerate)(const struct db_backend_config *cfg, struct db_device *out, size_t cap, char *msg, size_t len);
    /* Builds the device's kernels; called once before the first job. */
    int (*prepare)(struct db_device *dev, const struct db_backend_config *cfg, char *msg, size_t len);
    /* Runs one validated, non-identity job: in and out are host buffers of the plan's tensor
     * (they may be the same), mask (optional) receives the exported mask, zeroed by the caller.
     * Fills res->kept, total, scale_bits and timing_us; on failure res->message. */
    int (*run)(struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
               dropblock_result *res);
    /* Times the measures in whats (bits 1 << enum db_bench_what) on the device: x (the plan's
     * tensor) is put on the device once, then warmup untimed rounds, then reps rounds, each
     * running every measure once (so that a changing load on the machine falls on all alike);
     * the wall times (microseconds, submission to completion) go to us[what * reps + r]. A
     * measure the device cannot take gets -1 and its reason in msg; the rest still run. The
     * tensor must fit in one chunk. */
    int (*bench)(struct db_device *dev, const struct db_plan *pl, const void *x, unsigned whats, int warmup, int reps,
                 double *us, char *msg, size_t len);
    /* Frees the device's state (prepared or not). */
    void (*release)(struct db_device *dev);
    /* How the prepared device runs jobs, as space-separated key=value words (memory=zero-copy,
     * f16=hardware, ...): the daemon logs it at start, the benchmark prints it, the tests check
     * that the fast paths expected on PoCL, lavapipe and the CPU backend are the ones taken. */
    void (*describe)(const struct db_device *dev, char *buf, size_t len);
    /* The tiling the device's jobs of plan pl use (tile rows, elements a work item, candidate
     * budget, candidates an item): the benchmark replays it in C to count the mask pass's
     * Philox words and atomics (bench/tile_count.c). */
    void (*tuning)(const struct db_device *dev, const struct db_plan *pl, struct db_tuning *out);
    /* Drops what the device keeps for host regions now gone (under the device's lock); NULL for
     * a backend that keeps nothing. */
    void (*sweep)(struct db_device *dev);
    /* Device memory of at least bytes, exportable as a file descriptor (*handle: the backend's;
     * info: for the importer); NULL for a backend that cannot export (then the engine says so).
     * export_free frees it (under the device's lock, no job of the device running). */
    int (*export_alloc)(struct db_device *dev, uint64_t bytes, void **handle, struct db_export_info *info, char *msg,
                        size_t len);
    void (*export_free)(struct db_device *dev, void *handle);
    /* Whether the prepared device can export (export_alloc would not refuse for want of support),
     * and why not into why; NULL: never. */
    int (*can_export)(const struct db_device *dev, char *why, size_t len);
    /* Timeline semaphores (initial value 0), exported as a file descriptor where exported
     * (info: for the importer); NULL for a backend without. can_semaphore: whether the prepared
     * device could make one (why not into why). sem_free: no job holds it. sem_wait (host, up to
     * timeout_ns): DROPBLOCK_OK once the value is reached, DROPBLOCK_ETIMEDOUT if not yet.
     * sem_signal: from the host, or queued (under the device's lock) after every submission so
     * far. Any thread but queued signals. */
    int (*can_semaphore)(const struct db_device *dev, int exported, char *why, size_t len);
    int (*sem_create)(struct db_device *dev, int exported, void **handle, struct db_semaphore_info *info, char *msg,
                      size_t len);
    void (*sem_free)(struct db_device *dev, void *handle);
    int (*sem_value)(struct db_device *dev, void *handle, uint64_t *value, char *msg, size_t len);
    int (*sem_wait)(struct db_device *dev, void *handle, uint64_t value, uint64_t timeout_ns, char *msg, size_t len);
    int (*sem_signal)(struct db_device *dev, void *handle, uint64_t value, int queued, char *msg, size_t len);
};

extern const struct backend_ops db_backend_cpu;
extern const struct backend_ops db_backend_opencl;
extern const struct backend_ops db_backend_vulkan;

#endif
