/* jobs.h: a worker thread and a queue per device. The loop thread submits validated jobs;
 * workers run them on the engine and hand them back through a uv_async_t, so only the loop
 * thread ever touches clients and sockets. */
#ifndef DROPBLOCK_DAEMON_JOBS_H
#define DROPBLOCK_DAEMON_JOBS_H

#include <dropblock/dropblock.h>
#include <stdatomic.h>
#include <uv.h>

#include "engine.h"
#include "regions.h"
#include "smalljob.h"

struct client;

struct job {
    struct job *next;          /* queue links (worker side) */
    struct job *cprev, *cnext; /* the client's in-flight list (loop thread only) */
    struct client *client;     /* loop thread only */
    char *id_json;             /* the request's id, serialised, to echo */
    uint64_t seq;              /* daemon-wide job number, for logs */
    dropblock_params p;
    struct region *rin, *rout, *rmask; /* references held while the job lives */
    void *in, *out, *mask;
    uint64_t in_off, out_off; /* where in and out lie in device regions (rin->dev >= 0; in, out NULL) */
    struct db_job_sync sync;  /* its semaphores (references held while the job lives), if any */
    int dev;
    uint64_t bytes; /* counted against the in-flight limits */
    uint64_t t_submit, t_start;
    atomic_int cancelled; /* the client went away: skip if not started */
    int ran;
    int rc;
    dropblock_result res;
};

struct jobs;

typedef void (*jobs_done_fn)(struct job *j, void *ctx);

int jobs_start(struct jobs **out, struct db_engine *e, uv_loop_t *loop, jobs_done_fn done, void *ctx, char *msg,
               size_t len);
/* "auto"/NULL: the built-in CPU backend for jobs of at most the small-job size (moving them to
 * a device costs more than the work), else the best kind of device, then the shortest queue,
 * among the healthy devices only; or an id (healthy or not). The index, or with msg
 * DROPBLOCK_ENOTFOUND (unknown id) or DROPBLOCK_EUNAVAILABLE (no healthy device). */
int jobs_pick(struct jobs *js, const char *device, uint64_t bytes, char *msg, size_t len);
void jobs_set_small_job_bytes(struct jobs *js, uint64_t bytes);
/* The small-job threshold, measured (dropblockd --small-job-bytes auto) between the built-in
 * CPU backend and the device a large "auto" job goes to, on the calling thread: sj_measure
 * (smalljob.h) says how. Call it before any job is submitted.
 * 0 with out filled; -1 when there is nothing to compare (no built-in CPU backend, or the
 * default device is that backend: out->dev < 0) or not even the first size could be timed (a
 * job failed, or it took more than twice the budget, e.g. under valgrind): out->why says. The
 * probes are not counted as the devices' jobs (db_engine_run_probe). */
int jobs_measure_small(struct jobs *js, uint64_t budget_us, struct jobs_small *out);
/* Runs a small job on the calling (loop) thread when its device is the built-in CPU backend and
 * is idle: 1 if it ran (the caller completes it), 0 if it must be queued. Saves two thread
 * hand-offs on the latency of tiny jobs without ever making the loop wait for a device. */
int jobs_run_inline(struct jobs *js, struct job *j);
void jobs_submit(struct jobs *js, struct job *j);
/* As jobs_submit for a job that waits for a semaphore (j->sync.wait): a thread of its own waits
 * for the value (never the device's worker, which other clients' jobs need), then queues it.
 * Where the wait fails (it times out, the semaphore is freed, the client leaves, the daemon
 * stops) the job is handed back unrun, with its signal raised from the host. */
void jobs_submit_waiting(struct jobs *js, struct job *j);
/* Ends every such wait (shutdown): their jobs come back unrun within a slice (50 ms). */
void jobs_end_waits(struct jobs *js);
/* Removes every job still queued (not running) and returns them as a list (shutdown). */
struct job *jobs_take_queued(struct jobs *js);
/* Stops and joins the workers; jobs still queued are handed back through done first. */
void jobs_stop(struct jobs *js);

struct jobs_device_stats {
    uint64_t queued, running, completed, failed, busy_us, bytes;
};
void jobs_stats(struct jobs *js, int dev, struct jobs_device_stats *st);
int jobs_device_count(const struct jobs *js);

#endif
