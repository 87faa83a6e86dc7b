/* connect.c: opening a connection to dropblockd (the socket, hello: dropblock_connect), one more
 * attempt when it broke (reconnect, conn_ensure: the new connection set up privately, every
 * region registered anew, before it replaces the old one) and closing it (remote_close). The
 * design, the lock order included, is in conn.c's header comment; conn.h has what both share. */
#include <dropblock/dropblock.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "handle.h"
#include "msg.h"
#include "protocol.h"

/* Blocking I/O on a connection no other thread uses yet (setting one up): exactly len bytes
 * within the deadline (a CLOCK_MONOTONIC time in ms). 0, or -1 with why. */
static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* deadline < 0: none; *timed_out is set when it passed */
static int read_exact(int fd, void *buf, size_t len, int64_t deadline, int *timed_out, char *why, size_t wl)
{
    size_t have = 0;
    while (have < len) {
        int64_t left = deadline < 0 ? -1 : deadline - now_ms();
        if (deadline >= 0 && left <= 0) {
            *timed_out = 1;
            db_msg(why, wl, "no reply");
            return -1;
        }
        struct pollfd pfd = {fd, POLLIN, 0};
        int pr = poll(&pfd, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) {
            db_msg(why, wl, "poll: %s", strerror(errno));
            return -1;
        }
        if (pr == 0) continue;
        ssize_t n = recv(fd, (char *)buf + have, len - have, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            db_msg(why, wl, "%s", strerror(errno));
            return -1;
        }
        if (n == 0) {
            db_msg(why, wl, "the daemon closed the connection");
            return -1;
        }
        have += (size_t)n;
    }
    return 0;
}

/* One request and its reply on a private connection: the reply (caller deletes) or NULL with
 * *code and why. An error reply with a null id (the daemon refusing the peer) sets refused. */
static cJSON *private_call(int sock, cJSON *req, uint64_t id, int fd, int timeout_ms, int *code, int *refused,
                           char *why, size_t wl)
{
    *refused = 0;
    int timed_out = 0;
    *code = DROPBLOCK_EUNAVAILABLE;
    if (!req || !cJSON_AddNumberToObject(req, "id", (double)id)) {
        cJSON_Delete(req);
        *code = DROPBLOCK_EEXHAUSTED;
        db_msg(why, wl, "out of memory for a request");
        return NULL;
    }
    size_t flen = 0, sent = 0;
    char *frame = proto_frame(req, &flen);
    if (!frame) {
        *code = DROPBLOCK_EEXHAUSTED;
        db_msg(why, wl, "out of memory for a request");
        return NULL;
    }
    int err = conn_send_frame(sock, frame, flen, fd, &sent);
    free(frame);
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    unsigned char head[4];
    if (err && err != EPIPE && err != ECONNRESET) {
        db_msg(why, wl, "cannot send: %s", strerror(err));
        return NULL;
    }
    /* after EPIPE a refusal may still be there to read */
    for (;;) {
        if (read_exact(sock, head, 4, deadline, &timed_out, why, wl)) {
            if (timed_out) db_msg(why, wl, "no reply within %d ms (the timeout)", timeout_ms);
            return NULL;
        }
        uint32_t len = 0;
        if (proto_frame_peek(head, 4, &len) == PROTO_FRAME_BAD) {
            db_msg(why, wl, "dropblockd sent a frame of %u bytes (the protocol allows 1 to %u)", len, PROTO_MAX_FRAME);
            return NULL;
        }
        char *body = malloc(len);
        if (!body) {
            *code = DROPBLOCK_EEXHAUSTED;
            db_msg(why, wl, "out of memory for a reply");
            return NULL;
        }
        if (read_exact(sock, body, len, deadline, &timed_out, why, wl)) {
            if (timed_out) db_msg(why, wl, "half a reply within %d ms (the timeout)", timeout_ms);
            free(body);
            return NULL;
        }
        cJSON *r = conn_parse_json(body, len);
        free(body);
        if (!cJSON_IsObject(r)) {
            cJSON_Delete(r);
            db_msg(why, wl, "dropblockd sent a frame that is not a JSON object");
            return NULL;
        }
        const cJSON *rid = field(r, "id");
        uint64_t got = 0;
        if (!rid || cJSON_IsNull(rid)) {
            if (cJSON_IsTrue(field(r, "ok"))) db_msg(why, wl, "a reply without an id");
            else *code = conn_parse_error(r, why, wl);
            *refused = 1;
            cJSON_Delete(r);
            return NULL;
        }
        if (!proto_get_u64(rid, "id", &got, NULL, 0) && got == id) {
            if (!cJSON_IsTrue(field(r, "ok"))) {
                *code = conn_parse_error(r, why, wl);
                cJSON_Delete(r);
                return NULL;
            }
            *code = DROPBLOCK_OK;
            return r;
        }
        cJSON_Delete(r); /* not ours (cannot happen on a new connection) */
    }
}

/* open_socket's first step: a socket connected to c->path, blocking, with sends bounded by the
 * timeout; or -1 with code and msg. */
static int dial(struct db_conn *c, int *code, char *msg, size_t len)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
    /* non-blocking: a Unix socket's connect() blocks while the listener's backlog is full (a
     * daemon that accepts nobody); EAGAIN is retried until the timeout instead */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int64_t deadline = c->timeout_ms < 0 ? -1 : now_ms() + c->timeout_ms;
    int rc = fd < 0 ? -1 : 0;
    while (fd >= 0 && (rc = connect(fd, (struct sockaddr *)&sa, sizeof sa)) < 0 &&
           (errno == EINTR || errno == EAGAIN) && (deadline < 0 || now_ms() < deadline))
        if (errno == EAGAIN) poll(NULL, 0, 5);
    if (rc < 0) {
        if (fd >= 0 && errno == EAGAIN)
            db_msg(msg, len,
                   "cannot connect to dropblockd at %s: its listen backlog stayed full for %d ms (the "
                   "timeout): the daemon accepts no connections",
                   c->path, c->timeout_ms);
        else
            db_msg(msg, len,
                   "cannot connect to dropblockd at %s: %s; start one with `dropblockd --socket %s` or run "
                   "with --local",
                   c->path, strerror(errno), c->path);
        if (fd >= 0) close(fd);
        *code = DROPBLOCK_EUNAVAILABLE;
        return -1;
    }
    /* blocking again (the readers poll first); sends bounded by the timeout, so a daemon that
     * stops reading cannot hold a sender forever */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    if (c->timeout_ms > 0) {
        struct timeval tv = {c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    return fd;
}

/* The limits a hello reply gives, which this connection's allocations and jobs are checked
 * against first (a daemon that gives none: no client-side check). */
static void take_limits(struct db_conn *c, const cJSON *reply)
{
    const cJSON *lim = field(reply, "limits");
    uint64_t v[3] = {UINT64_MAX, UINT64_MAX, UINT64_MAX};
    static const char *const names[3] = {"max_region_bytes", "max_client_bytes", "max_client_jobs"};
    for (int i = 0; i < 3; i++)
        if (proto_get_u64(field(lim, names[i]), names[i], &v[i], NULL, 0)) v[i] = UINT64_MAX;
    pthread_mutex_lock(&c->lock);
    c->max_region_bytes = v[0];
    c->max_client_bytes = v[1];
    c->max_client_jobs = v[2];
    pthread_mutex_unlock(&c->lock);
}

/* Connects to c->path and says hello: the socket, or -1 with code and msg (the whole message a
 * caller of dropblock_connect gets). hello (if not NULL) receives the reply. */
static int open_socket(struct db_conn *c, cJSON **hello, int *code, char *msg, size_t len)
{
    if (hello) *hello = NULL;
    int fd = dial(c, code, msg, len);
    if (fd < 0) return -1;
    char why[224];
    int refused = 0;
    /* bounded: a socket that is not dropblockd, or a daemon that is stuck, may never answer */
    cJSON *reply = private_call(fd, conn_new_request("hello"), 1, -1, c->timeout_ms, code, &refused, why, sizeof why);
    if (!reply) {
        if (refused) db_msg(msg, len, "dropblockd at %s refused the connection: %s", c->path, why);
        else if (*code == DROPBLOCK_EUNAVAILABLE && !strncmp(why, "no reply within", 15))
            db_msg(msg, len,
                   "dropblockd at %s accepted the connection but sent %s to hello (a daemon still setting "
                   "up its devices, a stuck one, or not dropblockd)",
                   c->path, why);
        else db_msg(msg, len, "dropblockd at %s: hello failed: %s", c->path, why);
        close(fd);
        return -1;
    }
    const cJSON *proto = field(reply, "protocol");
    size_t ndev = 0;
    if (!cJSON_IsNumber(proto) || proto->valuedouble != PROTO_VERSION) {
        db_msg(msg, len, "dropblockd at %s speaks protocol %g; this library speaks %d", c->path,
               cJSON_IsNumber(proto) ? proto->valuedouble : 0.0, PROTO_VERSION);
        *code = DROPBLOCK_EUNAVAILABLE;
    } else if (conn_parse_devices(reply, NULL, 0, &ndev)) {
        db_msg(msg, len, "dropblockd at %s: the hello reply has no device list", c->path);
        *code = DROPBLOCK_EINTERNAL;
    } else {
        *code = DROPBLOCK_OK;
    }
    if (*code) {
        cJSON_Delete(reply);
        close(fd);
        return -1;
    }
    take_limits(c, reply);
    if (hello) *hello = reply;
    else cJSON_Delete(reply);
    return fd;
}

void dropblock_connect_options_init(dropblock_connect_options *opt)
{
    if (!opt) return;
    opt->socket_path = NULL;
    opt->timeout_ms = DROPBLOCK_DEFAULT_TIMEOUT_MS;
    opt->job_timeout_ms = -1;
}

int dropblock_connect(dropblock_t **out, const char *socket_path, char *msg, size_t len)
{
    dropblock_connect_options o;
    dropblock_connect_options_init(&o);
    o.socket_path = socket_path;
    return dropblock_connect_opts(out, &o, msg, len);
}

int dropblock_connect_opts(dropblock_t **out, const dropblock_connect_options *opt, char *msg, size_t len)
{
    if (msg && len) msg[0] = 0;
    if (!out || !opt) return DROPBLOCK_EINVAL;
    *out = NULL;
    if (opt->timeout_ms < -1 || opt->job_timeout_ms < -1) {
        db_msg(msg, len, "%s %d: must be -1 (no limit) or a number of milliseconds >= 0",
               opt->timeout_ms < -1 ? "timeout_ms" : "job_timeout_ms",
               opt->timeout_ms < -1 ? opt->timeout_ms : opt->job_timeout_ms);
        return DROPBLOCK_EINVAL;
    }
    const char *socket_path = opt->socket_path;
    char path[4096];
    if (socket_path) snprintf(path, sizeof path, "%s", socket_path);
    else dropblock_default_socket(path, sizeof path);
    if (!path[0] || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        db_msg(msg, len, "socket path \"%.200s\": must be 1 to %zu bytes", path,
               sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
        return DROPBLOCK_EINVAL;
    }

    dropblock_t *h = calloc(1, sizeof *h);
    struct db_conn *c = calloc(1, sizeof *c);
    if (!h || !c) {
        free(h);
        free(c);
        db_msg(msg, len, "out of memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    h->remote = 1;
    h->conn = c;
    c->fd = -1;
    c->gen = 1;
    c->timeout_ms = opt->timeout_ms;
    c->job_timeout_ms = opt->job_timeout_ms;
    snprintf(c->path, sizeof c->path, "%s", path);
    const char *spin = getenv("DROPBLOCK_SPIN_US");
    char *end = NULL;
    long sv = spin && *spin ? strtol(spin, &end, 10) : DEFAULT_SPIN_US;
    c->spin_us = end && *end ? DEFAULT_SPIN_US : sv < 0 ? 0 : sv > MAX_SPIN_US ? MAX_SPIN_US : sv;
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->send_lock, NULL);
    pthread_mutex_init(&c->region_lock, NULL);
    pthread_mutex_init(&c->reconnect_lock, NULL);
    pthread_condattr_init(&c->condattr);
    pthread_condattr_setclock(&c->condattr, CLOCK_MONOTONIC);
    pthread_cond_init(&c->rx_cond, NULL);
    pthread_cond_init(&c->idle_cond, NULL);

    int rc = DROPBLOCK_EEXHAUSTED;
    if (!(c->rbuf = malloc(RBUF_CAP))) {
        db_msg(msg, len, "out of memory");
        remote_close(h);
        return rc;
    }
    c->fd = open_socket(c, NULL, &rc, msg, len);
    if (c->fd < 0 || (rc = conn_start_receiver(c, msg, len))) {
        remote_close(h);
        return rc;
    }
    *out = h;
    return DROPBLOCK_OK;
}

void remote_close(dropblock_t *h)
{
    struct db_conn *c = h->conn;
    if (c->rx_started) {
        /* ends the receiver, waiting or reading (recv sees end of stream); the daemon drops our
         * regions and jobs */
        pthread_mutex_lock(&c->lock);
        c->closing = 1;
        pthread_cond_broadcast(&c->rx_cond);
        pthread_mutex_unlock(&c->lock);
        shutdown(c->fd, SHUT_RDWR);
        pthread_join(c->rx, NULL);
    }
    if (c->fd >= 0) close(c->fd);
    conn_drop_fds(c);
    free(c->rbuf);
    pthread_cond_destroy(&c->rx_cond);
    pthread_cond_destroy(&c->idle_cond);
    for (size_t i = 0; i < NBUCKETS; i++)
        while (c->buckets[i]) {
            dropblock_ticket *t = c->buckets[i];
            c->buckets[i] = t->next;
            conn_ticket_free(t);
        }
    for (size_t i = 0; i < c->nregions; i++) {
        munmap(c->regions[i].base, c->regions[i].size);
        close(c->regions[i].fd);
    }
    free(c->regions);
    pthread_condattr_destroy(&c->condattr);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->send_lock);
    pthread_mutex_destroy(&c->region_lock);
    pthread_mutex_destroy(&c->reconnect_lock);
    free(c);
    free(h);
}

/* reconnect's middle step (region_lock held): every region registered on the new connection fd,
 * its new id into ids; 0, or the error with why naming the region. */
static int register_regions(struct db_conn *c, int fd, uint32_t *ids, char *why, size_t wl)
{
    int rc = DROPBLOCK_OK;
    for (size_t i = 0; !rc && i < c->nregions; i++) {
        cJSON *req = conn_new_request("region.register");
        if (req) cJSON_AddNumberToObject(req, "fds", 1);
        int refused;
        cJSON *reply = private_call(fd, req, 2 + i, c->regions[i].fd, c->timeout_ms, &rc, &refused, why, wl);
        uint64_t rid = 0, size = 0;
        if (reply && (proto_get_u64(field(reply, "region"), "region", &rid, NULL, 0) || rid > UINT32_MAX ||
                      proto_get_u64(field(reply, "size"), "size", &size, NULL, 0) || size != c->regions[i].size)) {
            rc = DROPBLOCK_EINTERNAL;
            db_msg(why, wl, "the region.register reply does not match the region");
        }
        cJSON_Delete(reply);
        if (rc) {
            char w[256];
            snprintf(w, sizeof w, "%s", why);
            db_msg(why, wl, "registering again the %zu-byte region at %p: %s", c->regions[i].size,
                   (void *)c->regions[i].base, w);
        } else {
            ids[i] = (uint32_t)rid;
        }
    }
    return rc;
}

/* A new connection for a broken one (reconnect_lock held): hello, every region registered anew
 * on it, then it replaces the old one. rc with msg saying what was lost and why it stays so. */
static int reconnect(struct db_conn *c, char *msg, size_t len)
{
    char lost[256];
    pthread_mutex_lock(&c->lock);
    snprintf(lost, sizeof lost, "%s", c->err_msg);
    pthread_mutex_unlock(&c->lock);
    /* the receiver of the broken connection has stopped or is stopping: reap it; and a caller
     * still reading the old socket gets out of it */
    shutdown(c->fd, SHUT_RDWR);
    if (c->rx_started) {
        pthread_join(c->rx, NULL);
        c->rx_started = 0;
    }
    pthread_mutex_lock(&c->lock);
    while (c->reader != READER_NONE) pthread_cond_wait(&c->idle_cond, &c->lock);
    pthread_mutex_unlock(&c->lock);
    int rc;
    char why[256];
    int fd = open_socket(c, NULL, &rc, why, sizeof why);
    if (fd < 0) {
        db_msg(msg, len, "%s; reconnecting failed: %s", lost, why);
        return rc;
    }
    /* the regions, registered on the new connection while no other thread can change the list
     * or name a region in a request (submit finds region ids under region_lock) */
    pthread_mutex_lock(&c->region_lock);
    uint32_t *ids = calloc(c->nregions ? c->nregions : 1, sizeof *ids);
    rc = ids ? DROPBLOCK_OK : DROPBLOCK_EEXHAUSTED;
    if (!ids) db_msg(why, sizeof why, "out of memory");
    else rc = register_regions(c, fd, ids, why, sizeof why);
    if (rc) {
        pthread_mutex_unlock(&c->region_lock);
        free(ids);
        close(fd);
        db_msg(msg, len, "%s; reconnected to dropblockd at %s, but %s", lost, c->path, why);
        return rc;
    }
    pthread_mutex_lock(&c->send_lock);
    pthread_mutex_lock(&c->lock);
    int old = c->fd;
    c->fd = fd;
    c->rlen = 0; /* what the old connection left half-read */
    conn_drop_fds(c);
    c->gen++;
    c->broken = 0;
    c->err_code = 0;
    c->err_msg[0] = 0;
    c->daemon_msg[0] = 0;
    for (size_t i = 0; i < c->nregions; i++) c->regions[i].id = ids[i];
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_unlock(&c->send_lock);
    pthread_mutex_unlock(&c->region_lock);
    free(ids);
    close(old);
    if ((rc = conn_start_receiver(c, msg, len))) {
        pthread_mutex_lock(&c->lock);
        conn_break(c, rc, "connection to dropblockd lost: %s", msg);
        pthread_mutex_unlock(&c->lock);
    }
    return rc;
}

/* For every call that needs the daemon: 0 when the connection is up, or up again after one
 * attempt to reconnect; else the error with msg. */
int conn_ensure(dropblock_t *h, char *msg, size_t len)
{
    struct db_conn *c = h->conn;
    conn_check_idle(c);
    pthread_mutex_lock(&c->lock);
    int broken = c->broken;
    pthread_mutex_unlock(&c->lock);
    if (!broken) return DROPBLOCK_OK;
    pthread_mutex_lock(&c->reconnect_lock);
    pthread_mutex_lock(&c->lock);
    broken = c->broken;
    pthread_mutex_unlock(&c->lock);
    int rc = broken ? reconnect(c, msg, len) : DROPBLOCK_OK; /* another thread may have done it */
    pthread_mutex_unlock(&c->reconnect_lock);
    return rc;
}
