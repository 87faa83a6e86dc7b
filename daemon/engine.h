/* engine.h: the devices of all backends behind one list, device choice, and the job entry
 * point shared by the daemon's workers and the in-process client (dropblock_open_local). */
#ifndef DROPBLOCK_DAEMON_ENGINE_H
#define DROPBLOCK_DAEMON_ENGINE_H

#include <dropblock/dropblock.h>

#include "backend.h"

struct db_engine;

/* backends: comma list of "cpu", "opencl", "vulkan" (NULL: all). A backend that fails to
 * enumerate or prepare is skipped (its reason goes to the log callback, if any); the CPU
 * backend always works. visible (comma list of ids such as "opencl:0" or API names; NULL:
 * $DROPBLOCK_VISIBLE_DEVICES, unset or empty: all) filters the devices. */
int db_engine_open(struct db_engine **out, const char *backends, const char *visible, const char *cache_dir,
                   void (*log)(void *ctx, const char *line), void *log_ctx, char *msg, size_t len);
void db_engine_close(struct db_engine *e);

size_t db_engine_device_count(const struct db_engine *e);
const dropblock_device_info *db_engine_device(const struct db_engine *e, size_t i);

/* Resolves "auto"/NULL (best kind, then least busy) or an id; -1 with msg when unknown. */
int db_engine_pick(struct db_engine *e, const char *device, char *msg, size_t len);

/* Validates and runs a job on device index dev (serialised per device). */
int db_engine_run(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                  dropblock_result *res);

/* Benchmark support (bench/dropblock-bench): validates p and runs the device's bench op for the
 * measures whats (bits 1 << enum db_bench_what), serialised with the device's jobs. */
int db_engine_bench(struct db_engine *e, int dev, const dropblock_params *p, const void *x, unsigned whats, int warmup,
                    int reps, double *us, char *msg, size_t len);

/* The default cache directory ($XDG_CACHE_HOME/dropblock, else ~/.cache/dropblock). */
void db_default_cache_dir(char *buf, size_t len);

#endif
