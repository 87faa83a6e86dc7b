/* engine.h: the devices of all backends behind one list, device choice, and the job entry
 * point shared by the daemon's workers and the in-process client (dropblock_open_local). */
#ifndef DROPBLOCK_ENGINE_ENGINE_H
#define DROPBLOCK_ENGINE_ENGINE_H

#include <dropblock/dropblock.h>

#include "backend.h"

struct db_engine;

/* backends: comma list of "cpu", "opencl", "vulkan" (NULL: all). A backend that fails to
 * enumerate or prepare is skipped (its reason goes to the log callback, if any); the CPU
 * backend always works. visible (comma list of ids such as "opencl:0" or API names; NULL:
 * $DROPBLOCK_VISIBLE_DEVICES, unset or empty: all) filters the devices.
 *
 * Fault injection (built with -Dfault_injection=true, the default; docs/reliability.md): open
 * reads $DROPBLOCK_FAULTS, a comma list of KIND:DEVICE:N, e.g.
 *     DROPBLOCK_FAULTS=fail:opencl:0:3,alloc:vulkan:0:2,vanish:opencl:0:5
 * DEVICE is a device id, N >= 1 the number of the job on that device, counting from 1 the jobs
 * that reach the device (valid, not the identity, in the order they take the device) since open.
 * At job N, instead of running it:
 *     fail    DROPBLOCK_EINTERNAL   "device opencl:0 failed the job: injected fault"
 *     alloc   DROPBLOCK_EEXHAUSTED  "device vulkan:0 could not allocate the job's buffers: injected fault"
 *     vanish  DROPBLOCK_EUNAVAILABLE, and the device is unhealthy from then on (as when its
 *             backend returns DROPBLOCK_EUNAVAILABLE: a lost device)
 *     lost    the job runs, but the backend's API answers as for a lost device (OpenCL:
 *             CL_DEVICE_NOT_AVAILABLE, Vulkan: VK_ERROR_DEVICE_LOST): the backend's own error
 *             mapping gives DROPBLOCK_EUNAVAILABLE and the device is unhealthy from then on;
 *             CPU devices have no API to lose (the entry is logged and ignored)
 * A malformed list fails open with DROPBLOCK_EINVAL; an entry naming a device this engine does
 * not have is logged and ignored. Without fault injection built in the variable is ignored. */
int db_engine_open(struct db_engine **out, const char *backends, const char *visible, const char *cache_dir,
                   void (*log)(void *ctx, const char *line), void *log_ctx, char *msg, size_t len);
void db_engine_close(struct db_engine *e);

/* The knobs the engine read at open (knobs.h), which its backends consult: a test may change
 * them between jobs, never while one runs. */
struct db_knobs *db_engine_knobs(struct db_engine *e);

size_t db_engine_device_count(const struct db_engine *e);
/* The device as found at open: its healthy field stays 1 (see db_engine_healthy). */
const dropblock_device_info *db_engine_device(const struct db_engine *e, size_t i);
/* A copy of the device's info with healthy as of now. */
void db_engine_device_info(const struct db_engine *e, size_t i, dropblock_device_info *out);
/* How the device runs jobs (its backend's describe: key=value words), "" for a bad index. */
void db_engine_device_paths(const struct db_engine *e, size_t i, char *buf, size_t len);

/* The tiling device i's jobs of plan pl use (backend_ops.tuning); -1 for no such device. */
int db_engine_device_tuning(const struct db_engine *e, size_t i, const struct db_plan *pl, struct db_tuning *out);

/* The counts of the last job device i ran (struct db_job_stats in backend.h: launches, transfers,
 * transfers between launches, fills, submissions, waits), read under the device's lock; all zero
 * before the first job and for the CPU backend. 0, or -1 for a bad index. */
int db_engine_last_job_stats(const struct db_engine *e, size_t i, struct db_job_stats *out);

/* What the device's running job is doing, for progress displays: "" when idle, else "running",
 * or where the backend says, e.g. "mask pass, chunk 2 of 3" or "apply pass". Any thread. */
void db_engine_progress(const struct db_engine *e, size_t i, char *buf, size_t len);

/* Health: 1 until the device fails for good (its backend returned DROPBLOCK_EUNAVAILABLE, or an
 * injected "vanish"); then 0 for the engine's life, and why (if not NULL) gets the reason. Any
 * thread. */
int db_engine_healthy(const struct db_engine *e, size_t i, char *why, size_t len);

/* Resolves "auto"/NULL (best kind, then least busy, among healthy devices) or an id (healthy or
 * not: a job sent to an unhealthy device gets DROPBLOCK_EUNAVAILABLE from db_engine_run). The
 * device index, or with msg DROPBLOCK_ENOTFOUND (unknown id) or DROPBLOCK_EUNAVAILABLE (no
 * healthy device left). */
int db_engine_pick(struct db_engine *e, const char *device, char *msg, size_t len);
/* The message of DROPBLOCK_EUNAVAILABLE when no device is healthy. */
void db_engine_no_healthy(const struct db_engine *e, char *msg, size_t len);

/* Validates and runs a job on device index dev (serialised per device). A device failure is
 * reported with a message naming the device; DROPBLOCK_EUNAVAILABLE from the backend marks the
 * device unhealthy. */
int db_engine_run(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                  dropblock_result *res);

/* As db_engine_run, with where the tensors lie (mem: host regions that outlive the job, see
 * struct db_host_region; a region that does not hold its tensor is ignored): a backend may keep
 * what it makes for a region between jobs (Vulkan: its import) until the region is gone. Or
 * both tensors in device memory of device dev (mem's dev_in, dev_out from
 * db_engine_export_alloc, at in_off, out_off; in and out NULL): no host copy. */
int db_engine_run_shared(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                         const struct db_job_mem *mem, dropblock_result *res);
/* Timeline semaphores (docs/protocol.md semaphore.create): a job may wait for one to reach a
 * value before it reads its input, and raise one to a value once its output is complete. Made
 * on a device (Vulkan with VK_KHR_timeline_semaphore; exported as an opaque fd where exported and
 * VK_KHR_external_semaphore_fd is offered), initial value 0. */
struct db_semaphore;
int db_engine_can_semaphore(const struct db_engine *e, size_t i, int exported, char *why, size_t len);
/* info: the fd (the caller's; -1 where not exported) and the device's UUIDs. DROPBLOCK_EINVAL
 * naming what is missing where the device cannot. */
int db_engine_semaphore_create(struct db_engine *e, int dev, int exported, struct db_semaphore **out,
                               struct db_semaphore_info *info, char *msg, size_t len);
int db_engine_semaphore_device(const struct db_semaphore *sem);
/* A reference for a job that names it (the owner's free does not destroy it under the job). */
void db_engine_semaphore_hold(struct db_semaphore *sem);
void db_engine_semaphore_release(struct db_semaphore *sem);
/* The owner gives it up: waits on it end (DROPBLOCK_EUNAVAILABLE), and it is destroyed once no
 * job uses it. */
void db_engine_semaphore_free(struct db_semaphore *sem);
int db_engine_semaphore_value(struct db_semaphore *sem, uint64_t *value, char *msg, size_t len);
/* From the host; DROPBLOCK_EINVAL unless value is above the current one. Any thread. */
int db_engine_semaphore_signal(struct db_semaphore *sem, uint64_t value, char *msg, size_t len);
/* The host waits up to timeout_ms for value: DROPBLOCK_OK, DROPBLOCK_ETIMEDOUT, or
 * DROPBLOCK_EUNAVAILABLE once the semaphore is freed; msg says which. Never holds the device. */
int db_engine_semaphore_wait(struct db_semaphore *sem, uint64_t value, uint32_t timeout_ms, char *msg, size_t len);

/* A job's ordering: wait (NULL: none) to reach wait_value, within wait_timeout_ms, before the job
 * reads its input (it does not run otherwise: DROPBLOCK_EUNAVAILABLE); signal (NULL: none) raised
 * to signal_value after the job, whatever its outcome. Both of the job's device. */
struct db_job_sync {
    struct db_semaphore *wait, *signal;
    uint64_t wait_value, signal_value;
    uint32_t wait_timeout_ms;
};
/* db_engine_run_shared with sync (NULL: none). */
int db_engine_run_sync(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                       const struct db_job_mem *mem, const struct db_job_sync *sync, dropblock_result *res);

/* Every idle device drops what it keeps for host regions now gone (a busy one does before its
 * next job). Any thread; never waits for a job. */
void db_engine_sweep(struct db_engine *e);

/* Device memory for a client to share (docs/protocol.md region.alloc): bytes on device dev,
 * exportable as a file descriptor (info: the fd, the caller's, and what an importer needs),
 * *handle naming it in struct db_job_mem. DROPBLOCK_EINVAL naming what is missing where the
 * device cannot export. Never waits for a running job. */
int db_engine_export_alloc(struct db_engine *e, int dev, uint64_t bytes, void **handle, struct db_export_info *info,
                           char *msg, size_t len);
/* Gives it back: freed before the device's next job, or at once where the device is idle. */
void db_engine_export_free(struct db_engine *e, int dev, void *handle);
/* Whether device i can export memory (why: what is missing, where not). */
int db_engine_can_export(const struct db_engine *e, size_t i, char *why, size_t len);

/* What a client shares with a device: exported memory, timeline semaphores, exported ones. */
enum db_sharing { DB_SHARE_MEMORY, DB_SHARE_SEMAPHORES, DB_SHARE_SEMAPHORE_EXPORT };
/* The device for region.alloc or semaphore.create: an id as db_engine_pick, or "auto": the
 * healthy device that can share what (a discrete GPU before others); DROPBLOCK_ENOTFOUND
 * naming what is missing where none can. */
int db_engine_pick_sharing(struct db_engine *e, const char *device, enum db_sharing what, char *msg, size_t len);

/* As db_engine_run, but returns DB_ENGINE_BUSY at once, running nothing, when the device is
 * running another job (the daemon's loop thread uses it for tiny jobs it may not wait on). */
#define DB_ENGINE_BUSY 1
int db_engine_try_run(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                      dropblock_result *res);

/* As db_engine_run, for the daemon's own measurements at start-up (the small-job threshold):
 * the job is not counted among the device's jobs, so injected faults (DROPBLOCK_FAULTS) keep
 * their numbering and never fire on it. */
int db_engine_run_probe(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out,
                        dropblock_result *res);

/* Benchmark support (bench/dropblock-bench): validates p and runs the device's bench op for the
 * measures whats (bits 1 << enum db_bench_what), serialised with the device's jobs. */
int db_engine_bench(struct db_engine *e, int dev, const dropblock_params *p, const void *x, unsigned whats, int warmup,
                    int reps, double *us, char *msg, size_t len);

/* The default cache directory ($XDG_CACHE_HOME/dropblock, else ~/.cache/dropblock). */
void db_default_cache_dir(char *buf, size_t len);

#endif
