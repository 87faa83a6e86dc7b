/* conn.h: what the two halves of a connection to dropblockd share (private to client/):
 *   - conn.c:   the connection: tickets, reading and completing replies, sending requests
 *               (its header comment has the design)
 *   - connect.c: connecting (the socket, hello), reconnecting, closing
 *   - remote.c: the remote ops over it: devices, regions (alloc/free), jobs (submit/wait),
 *               limits, status, shutdown */
#ifndef DROPBLOCK_CLIENT_CONN_H
#define DROPBLOCK_CLIENT_CONN_H

#include <dropblock/dropblock.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "handle.h"
#include "protocol.h"

#define NBUCKETS 256 /* tickets by id */
#define RBUF_CAP (4 + PROTO_MAX_FRAME)
enum { READER_NONE, READER_RX, READER_CALLER };

struct region {
    uint32_t id; /* on the current connection */
    uint8_t *base;
    size_t size;
    int fd; /* the memfd, kept to register the region again after a reconnect */
};

#define RX_MAX_FDS 16 /* descriptors received and not yet claimed by a reply (as the daemon's limit) */

struct db_conn {
    int fd;       /* written under send_lock and lock (and region_lock) on a reconnect */
    uint64_t gen; /* the connection's generation: 1, then +1 per reconnect (same locks as fd) */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    pthread_t rx;
    int rx_started;              /* reconnect_lock or the only thread (connect, close) */
    pthread_condattr_t condattr; /* CLOCK_MONOTONIC for dropblock_wait's timeout */

    pthread_mutex_t reconnect_lock; /* one reconnect at a time */

    pthread_mutex_t lock; /* the buckets, ticket completion, the broken state and who reads */
    dropblock_ticket *buckets[NBUCKETS];
    uint64_t next_id;
    int broken, err_code;
    int closing;              /* remote_close: the receiver thread ends */
    int reader;               /* READER_*: who reads the socket (and owns rbuf) now */
    uint64_t nasync;          /* tickets in flight that no caller reads for (not sync) */
    uint64_t nlead_waiting;   /* sync callers waiting for the socket to be free */
    pthread_cond_t rx_cond;   /* the receiver: read, or end */
    pthread_cond_t idle_cond; /* broadcast when nobody reads any more (reconnect waits for it) */
    unsigned char *rbuf;      /* received bytes not yet a whole frame: the reader's */
    size_t rlen;
    int rx_fds[RX_MAX_FDS]; /* descriptors received with replies, not yet claimed by one: the reader's */
    int nrx_fds;
    char err_msg[256];    /* what calls fail with once broken */
    char daemon_msg[224]; /* the daemon's own words when it closed the connection with an error */

    pthread_mutex_t send_lock; /* one frame at a time */

    pthread_mutex_t region_lock;
    struct region *regions;
    size_t nregions, cap_regions;

    long spin_us;                   /* DROPBLOCK_SPIN_US at connect: how long a reader polls before it sleeps */
    int timeout_ms, job_timeout_ms; /* dropblock_connect_options; -1: none */
    /* the daemon's limits from its last hello (lock) */
    uint64_t max_region_bytes, max_client_bytes, max_client_jobs;
};

/* Default reader spin: a small job's reply comes back in tens of microseconds, and a thread that
 * sleeps for it waits for the kernel to wake its (often idle) CPU as well (measured on a 2-vCPU
 * VM, idle: p50 52 us round trip sleeping at once, 22 us spinning up to 50 us first). */
#define DEFAULT_SPIN_US 50L
#define MAX_SPIN_US 100000L

static inline const cJSON *field(const cJSON *o, const char *name) { return cJSON_GetObjectItemCaseSensitive(o, name); }

/* For every call that needs the daemon: 0 when the connection is up, or up again after one
 * attempt to reconnect; else the error with msg. */
int conn_ensure(dropblock_t *h, char *msg, size_t len);
/* A request object for op (NULL when out of memory; conn_request then fails). */
cJSON *conn_new_request(const char *op);
/* One request (req consumed; fd: a descriptor sent with it, or -1; gen: the connection it must
 * go on, or NULL), waited for up to timeout_ms (-1: as long as the connection lives): the reply
 * (caller deletes) or the error with msg. */
int conn_request(dropblock_t *h, cJSON *req, int fd, uint64_t *gen, int timeout_ms, cJSON **reply, char *msg,
                 size_t len);
/* conn_request, with the descriptor its reply carries in *rfd (-1: none; NULL: closed) */
int conn_request_fd(dropblock_t *h, cJSON *req, int fd, uint64_t *gen, int timeout_ms, cJSON **reply, int *rfd,
                    char *msg, size_t len);
/* Closes the descriptors received and not claimed (a reconnect: the old connection's). */
void conn_drop_fds(struct db_conn *c);
/* The device list of a hello or devices reply into infos (up to cap); -1 without one. */
int conn_parse_devices(const cJSON *reply, dropblock_device_info *infos, size_t cap, size_t *count);
/* Tickets: a new one (is_job: a dropblock2d request), freed, taken out of the table (lock held). */
dropblock_ticket *conn_ticket_new(dropblock_t *h, int is_job);
void conn_ticket_free(dropblock_ticket *t);
void conn_ticket_remove(struct db_conn *c, dropblock_ticket *t);
/* Sends a request given as text (body, consumed) under ticket t, on connection *gen. */
int conn_send_text(dropblock_t *h, dropblock_ticket *t, char *body, uint64_t *gen, char *msg, size_t len);
/* Waits for t; ETIMEDOUT leaves it in flight, anything else takes it out of the table. */
int conn_wait_ticket(struct db_conn *c, dropblock_ticket *t, int timeout_ms);

/* What connect.c uses of conn.c: */
/* One frame's JSON, parsed under the lock cJSON needs (NULL if it is not JSON). */
cJSON *conn_parse_json(const char *data, size_t len);
/* Writes a whole frame; fd (if >= 0) rides on its first byte. 0 or errno; *sent says how far. */
int conn_send_frame(int sock, const char *buf, size_t len, int fd, size_t *sent);
/* An error reply's code and message. */
int conn_parse_error(const cJSON *r, char *msg, size_t len);
/* Marks the connection broken (the first reason wins) and fails every ticket in flight (lock
 * held). */
void conn_break(struct db_conn *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Starts c->rx, the connection's receiver thread (connect, reconnect). */
int conn_start_receiver(struct db_conn *c, char *msg, size_t len);
/* Before a call sends anything (lock not held): reads what the daemon sent meanwhile, without
 * waiting, when nobody reads (conn.c has the details). */
void conn_check_idle(struct db_conn *c);

#endif
