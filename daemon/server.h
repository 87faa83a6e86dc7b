/* server.h: what dropblockd's files share (private to daemon/): the server and its client
 * connections, and the calls between
 *   - server.c: start-up: options, the socket, the engine and workers, the loop (main)
 *   - conn.c:   client I/O: accepting, reading and framing, writing replies, closing; logging
 *   - ops.c:    the ops of protocol v1 (docs/protocol.md), job completions and shutdown */
#ifndef DROPBLOCK_DAEMON_SERVER_H
#define DROPBLOCK_DAEMON_SERVER_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <uv.h>

#include "engine.h"
#include "jobs.h"
#include "protocol.h"
#include "quota.h"
#include "regions.h"

#define MAX_PENDING_FDS QUOTA_PENDING_FDS
#define MAX_ALLOW 32

enum { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };
/* Where the small-job threshold came from (the status reply's small_jobs.source). */
enum { SMALL_MEASURED, SMALL_OPTION, SMALL_FALLBACK, SMALL_AUTO /* not yet measured */ };

struct client {
    struct client *prev, *next;
    struct server *srv;
    uv_poll_t poll;
    int fd;
    uint64_t id;
    uid_t uid;
    gid_t gid;
    pid_t pid;
    unsigned char *rbuf;
    size_t rlen;
    int fds[MAX_PENDING_FDS];
    int nfds;
    struct outbuf *wq_head, *wq_tail;
    size_t wq_bytes;
    int want_write; /* the uv_poll events now asked for */
    struct region_table regions;
    uint64_t mapped;                       /* bytes of its regions */
    uint64_t device_bytes, device_regions; /* its device memory (region.alloc) */
    struct client_sem *sems;               /* its semaphores (semaphore.create) */
    size_t nsems, cap_sems;
    uint32_t next_sem;
    struct uid_use *use; /* its uid's share of the daemon's limits */
    struct job *jobs;    /* in flight (queued or running), linked by cprev/cnext */
    uint64_t jobs_inflight, bytes_inflight;
    int closed;      /* no more reading or replying */
    int handle_open; /* the poll handle still needs its close callback */
};

struct server {
    uv_loop_t *loop;
    struct db_engine *engine;
    struct jobs *jobs;
    int listen_fd;
    uv_poll_t listen_poll;
    uv_timer_t accept_pause;
    uv_timer_t idle_trim;
    int listening;
    uv_signal_t sig_term, sig_int;
    char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int owns_socket;
    struct client *clients;
    uint64_t nclients;
    int shutting_down, finished;
    int log_level;
    uint64_t t_start;
    uint64_t next_client_id, next_job_seq;
    /* limits */
    uint64_t max_jobs, max_bytes, max_client_jobs, max_client_bytes, max_regions;
    uint64_t max_device_bytes, max_client_device_bytes; /* region.alloc's, all clients and each (0: derived) */
    uint64_t max_semaphores, max_semaphore_wait_ms;     /* semaphores a connection, a job's longest wait */
    struct quota lim; /* connections, regions and mapped bytes, in total and per uid */
    struct quota_machine machine;
    struct quota_use use;
    int reserve_fd; /* /dev/null, given up to accept and refuse when out of descriptors */
    uint64_t small_job_bytes;
    int small_source; /* SMALL_* */
    struct jobs_small small;
    uid_t allow_uid[MAX_ALLOW];
    gid_t allow_gid[MAX_ALLOW];
    int n_allow_uid, n_allow_gid;
    /* state and counters */
    uint64_t inflight_jobs, inflight_bytes;
    uint64_t submitted, completed, failed, rejected, nregions;
    uint64_t device_bytes; /* device memory of all clients' regions */
    uint64_t nsemaphores;  /* of all clients */
};

/* the names of the LOG_* levels (--log-level) */
extern const char *const level_names[4];

/* conn.c */
void logmsg(struct server *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Sends a frame, or queues what the socket does not take now (frame is copied). */
void client_send_frame(struct client *c, const char *frame, size_t len);
void client_send_frame_fd(struct client *c, const char *frame, size_t len, int fd);
/* Queues a reply (obj is consumed). */
void client_send(struct client *c, cJSON *obj);
void client_send_fd(struct client *c, cJSON *obj, int fd);
/* An error reply; the message goes to the log quoted. */
void send_error(struct client *c, const cJSON *id, int code, const char *message);
/* Writes what the socket takes of the queued replies: -1 when the peer is gone. */
int client_flush(struct client *c);
void client_close(struct client *c, const char *why);
/* Frees a closed client once its handle is closed and its jobs are done. */
void client_free_if_done(struct client *c);
/* The listening socket's poll callback: accepts, checks and refuses connections. */
void on_listen(uv_poll_t *h, int status, int events);

/* device_regions.c */
/* region.alloc: device memory on a device that exports it, its descriptor in the reply. */
void op_alloc(struct client *c, const cJSON *id, const cJSON *req);
/* The device memory caps, where the options left them 0: from the exporting devices' memory. */
void device_limits(struct server *s);
/* A device region leaving client c (unregistered, or c closing): its bytes no longer counted. */
void device_region_gone(struct client *c, const struct region *r);

/* semaphores.c */
struct client_sem {
    uint32_t id;
    struct db_semaphore *sem;
};
/* semaphore.create, .signal, .value and .free */
void op_semaphore(struct client *c, const char *op, const cJSON *id, const cJSON *req);
/* The client's semaphore id, or NULL. */
struct db_semaphore *client_semaphore(const struct client *c, uint32_t id);
/* A closing client's semaphores, freed (waits on them end; jobs hold their own references). */
void client_semaphores_clear(struct client *c);
/* A job's "wait" and "signal" resolved into sync (references held: job_sync_release), the job's
 * device checked or chosen (*dev: -1 for "auto" before, the semaphores' device after). */
int job_sync(struct client *c, const struct proto_job *pj, int *dev, struct db_job_sync *sync, char *msg, size_t len);
void job_sync_release(struct db_job_sync *sync);

/* ops.c */
/* One request frame's JSON, from client_read. */
void handle_frame(struct client *c, const char *data, size_t len);
/* jobs.c's completion callback (ctx: the server), on the loop thread. */
void on_job_done(struct job *j, void *ctx);
void begin_shutdown(struct server *s, const char *why);
void on_signal(uv_signal_t *h, int signum);

#endif
