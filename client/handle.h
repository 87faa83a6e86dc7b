/* handle.h: libdropblock's internals: one handle type with two kinds, the in-process engine
 * (local.c) and a connection to dropblockd (conn.c, remote.c). api.c checks the arguments every
 * kind shares and dispatches each public call by kind. */
#ifndef DROPBLOCK_CLIENT_HANDLE_H
#define DROPBLOCK_CLIENT_HANDLE_H

#include <cjson/cJSON.h>
#include <dropblock/dropblock.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct db_engine;
struct db_conn;

/* Memory handed out by dropblock_alloc on the local engine. */
struct local_alloc {
    void *base;
    size_t size;
};

struct dropblock {
    int remote;
    /* local */
    struct db_engine *engine;
    pthread_mutex_t lock; /* allocs and tickets below */
    struct local_alloc *allocs;
    size_t nallocs, cap_allocs;
    struct dropblock_ticket *tickets; /* not yet waited for, freed by close */
    /* remote */
    struct db_conn *conn;
};

/* A request in flight. On a connection every request (jobs from dropblock_submit and the
 * internal ops alike) is one of these, found by id when its reply comes; on the local engine a
 * ticket only holds a finished job's result. */
struct dropblock_ticket {
    struct dropblock_ticket *prev, *next; /* a connection's id bucket, or the local handle's list */
    dropblock_t *owner;
    uint64_t id;
    uint64_t gen;     /* remote: the connection generation it was sent on */
    int is_job;       /* the reply fills res; otherwise it is kept whole in reply */
    int sync;         /* remote: its caller waits for it at once, without a timeout, reading the socket itself */
    int counted;      /* remote: counted in the connection's nasync (not sync, not done) */
    int lead_waiting; /* remote: its caller waits for its reply or for the socket to read */
    int done, rc;
    dropblock_result res;
    cJSON *reply;
    int fd;              /* remote: the descriptor its reply carried (region.alloc), -1: none */
    pthread_cond_t cond; /* remote: signalled when done */
};

/* local.c */
void local_close(dropblock_t *h);
int local_devices(dropblock_t *h, dropblock_device_info *infos, size_t cap, size_t *count);
int local_alloc(dropblock_t *h, size_t bytes, void **ptr, char *msg, size_t msg_len);
int local_free(dropblock_t *h, void *ptr);
int local_run(dropblock_t *h, const dropblock_params *p, const dropblock_ref *input, const dropblock_ref *output,
              void *mask, const char *device, const dropblock_sync *sync, dropblock_result *res);
int local_submit(dropblock_t *h, const dropblock_params *p, const dropblock_ref *input, const dropblock_ref *output,
                 void *mask, const char *device, const dropblock_sync *sync, dropblock_ticket **ticket);
int local_semaphore_create(dropblock_t *h, const char *device, int exported, dropblock_semaphore *out, char *msg,
                           size_t msg_len);
int local_semaphore_op(dropblock_t *h, const dropblock_semaphore *s, int signal, uint64_t *value, char *msg,
                       size_t msg_len);
int local_semaphore_free(dropblock_t *h, dropblock_semaphore *s);
int local_device_alloc(dropblock_t *h, const char *device, uint64_t bytes, dropblock_device_buffer *out, char *msg,
                       size_t msg_len);
int local_device_free(dropblock_t *h, dropblock_device_buffer *buf);
int local_wait(dropblock_t *h, dropblock_ticket *t, dropblock_result *res);
int local_status(dropblock_t *h, char *json, size_t len);

/* connect.c (remote_close) and remote.c (the rest) */
void remote_close(dropblock_t *h);
int remote_devices(dropblock_t *h, dropblock_device_info *infos, size_t cap, size_t *count);
int remote_alloc(dropblock_t *h, size_t bytes, void **ptr, char *msg, size_t msg_len);
int remote_limits(dropblock_t *h, dropblock_limits *out);
int remote_job_timeout(const dropblock_t *h); /* dropblock_connect_options.job_timeout_ms */
int remote_free(dropblock_t *h, void *ptr);
/* submit with a message for the errors found before anything is sent */
/* sync: the caller calls remote_wait(h, t, -1, ...) at once (dropblock_run) */
int remote_submit(dropblock_t *h, int sync, const dropblock_params *p, const dropblock_ref *input,
                  const dropblock_ref *output, void *mask, const char *device, const dropblock_sync *order,
                  dropblock_ticket **ticket, char *msg, size_t msg_len);
int remote_semaphore_create(dropblock_t *h, const char *device, int exported, dropblock_semaphore *out, char *msg,
                            size_t msg_len);
/* semaphore.signal (signal: *value in) or semaphore.value (*value out) */
int remote_semaphore_op(dropblock_t *h, const dropblock_semaphore *s, int signal, uint64_t *value, char *msg,
                        size_t msg_len);
int remote_semaphore_free(dropblock_t *h, dropblock_semaphore *s);
int remote_device_alloc(dropblock_t *h, const char *device, uint64_t bytes, dropblock_device_buffer *out, char *msg,
                        size_t msg_len);
int remote_device_free(dropblock_t *h, dropblock_device_buffer *buf);
int remote_wait(dropblock_t *h, dropblock_ticket *t, int timeout_ms, dropblock_result *res);
void remote_abandon(dropblock_t *h, dropblock_ticket *t); /* a ticket nobody waits for any more */
int remote_status(dropblock_t *h, char *json, size_t len);
int remote_shutdown(dropblock_t *h, char *msg, size_t msg_len);

#endif
