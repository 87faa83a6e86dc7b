/* client.c: a connection to dropblockd (dropblock_connect): the Unix socket, protocol v1 framing
 * (docs/protocol.md), memfd regions for dropblock_alloc, and requests in flight.
 *
 * Every request is a ticket registered under a per-connection id before its frame is sent; one
 * receiver thread per connection reads the replies and completes the matching ticket (any order,
 * as the daemon answers). Sends are serialised by a mutex so frames never interleave. When the
 * connection breaks, every ticket in flight and every later call fails with the reason, so no
 * caller ever waits on a daemon that is gone. */
#include <dropblock/dropblock.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "handle.h"
#include "plan.h"
#include "protocol.h"

#define NBUCKETS 256 /* tickets by id */
#define HELLO_TIMEOUT_MS 120000

struct region {
    uint32_t id;
    uint8_t *base;
    size_t size;
};

struct db_conn {
    int fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    pthread_t rx;
    int rx_started;
    pthread_condattr_t condattr; /* CLOCK_MONOTONIC for dropblock_wait's timeout */

    pthread_mutex_t lock; /* the buckets, ticket completion and the broken state */
    dropblock_ticket *buckets[NBUCKETS];
    uint64_t next_id;
    int broken, err_code;
    char err_msg[256];    /* what every call fails with once broken */
    char daemon_msg[224]; /* the daemon's own words when it closed the connection with an error */

    pthread_mutex_t send_lock; /* one frame at a time */

    pthread_mutex_t region_lock;
    struct region *regions;
    size_t nregions, cap_regions;

    dropblock_device_info *devices; /* from hello; fixed after connect */
    size_t ndevices;
};

/* cJSON 1.7 resets a global error pointer on every parse: receivers of different connections
 * must not parse at the same time. */
static pthread_mutex_t parse_lock = PTHREAD_MUTEX_INITIALIZER;

static cJSON *parse_json(const char *data, size_t len)
{
    pthread_mutex_lock(&parse_lock);
    cJSON *r = cJSON_ParseWithLength(data, len);
    pthread_mutex_unlock(&parse_lock);
    return r;
}

/* ---------------------------------------------------------------- tickets (conn->lock held) */
static size_t bucket_of(uint64_t id) { return (size_t)(id % NBUCKETS); }

static void ticket_insert(struct db_conn *c, dropblock_ticket *t)
{
    dropblock_ticket **b = &c->buckets[bucket_of(t->id)];
    t->prev = NULL;
    t->next = *b;
    if (*b) (*b)->prev = t;
    *b = t;
}

static void ticket_remove(struct db_conn *c, dropblock_ticket *t)
{
    if (t->prev) t->prev->next = t->next;
    else if (c->buckets[bucket_of(t->id)] == t) c->buckets[bucket_of(t->id)] = t->next;
    if (t->next) t->next->prev = t->prev;
    t->prev = t->next = NULL;
}

static dropblock_ticket *ticket_find(struct db_conn *c, uint64_t id)
{
    for (dropblock_ticket *t = c->buckets[bucket_of(id)]; t; t = t->next)
        if (t->id == id) return t;
    return NULL;
}

static void ticket_complete(dropblock_ticket *t, int rc, const char *message)
{
    t->rc = rc;
    if (message) snprintf(t->res.message, sizeof t->res.message, "%s", message);
    t->done = 1;
    pthread_cond_signal(&t->cond);
}

static dropblock_ticket *ticket_new(dropblock_t *h, int is_job)
{
    dropblock_ticket *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    if (pthread_cond_init(&t->cond, &h->conn->condattr)) { free(t); return NULL; }
    t->owner = h;
    t->is_job = is_job;
    return t;
}

static void ticket_free(dropblock_ticket *t)
{
    pthread_cond_destroy(&t->cond);
    cJSON_Delete(t->reply);
    free(t);
}

/* Marks the connection broken (the first reason wins) and fails every ticket in flight. */
static void conn_break(struct db_conn *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void conn_break(struct db_conn *c, int code, const char *fmt, ...)
{
    if (!c->broken) {
        c->broken = 1;
        c->err_code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
        va_end(ap);
    }
    for (size_t i = 0; i < NBUCKETS; i++)
        for (dropblock_ticket *t = c->buckets[i]; t; t = t->next)
            if (!t->done) ticket_complete(t, c->err_code, c->err_msg);
}

/* ---------------------------------------------------------------- replies */
static const cJSON *field(const cJSON *o, const char *name) { return cJSON_GetObjectItemCaseSensitive(o, name); }

static void copy_string(char *dst, size_t cap, const cJSON *o, const char *name)
{
    const cJSON *s = field(o, name);
    snprintf(dst, cap, "%s", cJSON_IsString(s) ? s->valuestring : "");
}

static uint64_t u64_or_zero(const cJSON *o, const char *name)
{
    uint64_t v = 0;
    const cJSON *it = field(o, name);
    if (it && proto_get_u64(it, name, &v, NULL, 0)) v = 0;
    return v;
}

/* A dropblock2d success reply into a result. */
static int parse_result(const cJSON *r, dropblock_result *res)
{
    const char *missing = NULL;
    const cJSON *sb = field(r, "scale_bits");
    char *end = NULL;
    unsigned long bits = 0;
    if (cJSON_IsString(sb) && sb->valuestring[0] == '0' && (sb->valuestring[1] == 'x' || sb->valuestring[1] == 'X')) {
        errno = 0;
        bits = strtoul(sb->valuestring + 2, &end, 16);
    }
    if (proto_get_u64(field(r, "kept"), "kept", &res->kept, NULL, 0)) missing = "kept";
    else if (proto_get_u64(field(r, "total"), "total", &res->total, NULL, 0)) missing = "total";
    else if (!end || *end || end == sb->valuestring + 2 || errno || bits > 0xFFFFFFFFul) missing = "scale_bits";
    if (missing) {
        db_msg(res->message, sizeof res->message, "dropblockd's dropblock2d reply has no valid \"%s\"", missing);
        return DROPBLOCK_EINTERNAL;
    }
    res->scale_bits = (uint32_t)bits;
    copy_string(res->device, sizeof res->device, r, "device");
    const cJSON *tm = field(r, "timing_us");
    static const char *const names[4] = {"mask", "scale", "apply", "total"};
    for (int i = 0; i < 4; i++) res->timing_us[i] = cJSON_IsObject(tm) ? u64_or_zero(tm, names[i]) : 0;
    return DROPBLOCK_OK;
}

/* An error reply's code and message. */
static int parse_error(const cJSON *r, char *msg, size_t len)
{
    const cJSON *e = field(r, "error");
    const cJSON *code = cJSON_IsObject(e) ? field(e, "code") : NULL;
    const cJSON *m = cJSON_IsObject(e) ? field(e, "message") : NULL;
    int rc = dropblock_error_from_name(cJSON_IsString(code) ? code->valuestring : NULL);
    if (rc == DROPBLOCK_OK) rc = DROPBLOCK_EINTERNAL; /* "ok" is no error code */
    db_msg(msg, len, "%s", cJSON_IsString(m) && m->valuestring[0] ? m->valuestring : "dropblockd gave no message");
    return rc;
}

/* One reply frame; -1 when the connection cannot go on (the reason is set). */
static int handle_reply(struct db_conn *c, const char *data, size_t len, char *why, size_t why_len)
{
    cJSON *r = parse_json(data, len);
    if (!cJSON_IsObject(r)) {
        cJSON_Delete(r);
        db_msg(why, why_len, "dropblockd sent a frame that is not a JSON object");
        return -1;
    }
    const cJSON *id = field(r, "id");
    int ok = cJSON_IsTrue(field(r, "ok"));
    if (!id || cJSON_IsNull(id)) {
        /* an error about the connection itself (a peer not allowed, a broken frame): the daemon
         * closes it next */
        char m[sizeof c->daemon_msg];
        int code = ok ? DROPBLOCK_EINTERNAL : parse_error(r, m, sizeof m);
        if (ok) snprintf(m, sizeof m, "a reply without an id");
        pthread_mutex_lock(&c->lock);
        if (!c->broken) snprintf(c->daemon_msg, sizeof c->daemon_msg, "%s", m);
        conn_break(c, code, "dropblockd closed the connection: %s", m);
        pthread_mutex_unlock(&c->lock);
        cJSON_Delete(r);
        db_msg(why, why_len, "%s", m);
        return -1;
    }
    uint64_t idv;
    if (proto_get_u64(id, "id", &idv, NULL, 0)) { cJSON_Delete(r); return 0; } /* not an id we send */
    pthread_mutex_lock(&c->lock);
    dropblock_ticket *t = ticket_find(c, idv);
    if (t && !t->done) {
        if (!ok) {
            t->rc = parse_error(r, t->res.message, sizeof t->res.message);
        } else if (t->is_job) {
            t->rc = parse_result(r, &t->res);
        } else {
            t->reply = r;
            r = NULL;
            t->rc = DROPBLOCK_OK;
        }
        ticket_complete(t, t->rc, NULL);
    }
    pthread_mutex_unlock(&c->lock);
    cJSON_Delete(r);
    return 0;
}

static void *receiver_main(void *arg)
{
    struct db_conn *c = arg;
    const size_t cap = 4 + PROTO_MAX_FRAME;
    unsigned char *buf = malloc(cap);
    size_t have = 0;
    char why[200] = "out of memory for the receive buffer";
    while (buf) {
        ssize_t n = recv(c->fd, buf + have, cap - have, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { db_msg(why, sizeof why, "%s", strerror(errno)); break; }
        if (n == 0) { db_msg(why, sizeof why, "the daemon closed the connection (it stopped or was killed)"); break; }
        have += (size_t)n;
        size_t pos = 0;
        int fatal = 0;
        uint32_t flen = 0;
        int st;
        while (!fatal && (st = proto_frame_peek(buf + pos, have - pos, &flen)) != PROTO_FRAME_MORE) {
            if (st == PROTO_FRAME_BAD) {
                db_msg(why, sizeof why, "dropblockd sent a frame of %u bytes (the protocol allows 1 to %u)", flen,
                       PROTO_MAX_FRAME);
                fatal = 1;
                break;
            }
            if (handle_reply(c, (const char *)buf + pos + 4, flen, why, sizeof why)) fatal = 1;
            pos += 4 + (size_t)flen;
        }
        if (fatal) break;
        memmove(buf, buf + pos, have - pos);
        have -= pos;
    }
    free(buf);
    pthread_mutex_lock(&c->lock);
    conn_break(c, DROPBLOCK_EUNAVAILABLE, "connection to dropblockd lost: %s", why);
    pthread_mutex_unlock(&c->lock);
    /* a reply we could not follow ends the conversation for the daemon too */
    shutdown(c->fd, SHUT_RDWR);
    return NULL;
}

/* ---------------------------------------------------------------- requests */
static cJSON *new_request(const char *op)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "v", PROTO_VERSION);
    cJSON_AddStringToObject(o, "op", op);
    return o;
}

/* Writes a whole frame; fd (if >= 0) rides on its first byte. 0 or errno; *sent says how far. */
static int send_frame(int sock, const char *buf, size_t len, int fd, size_t *sent)
{
    *sent = 0;
    while (*sent < len) {
        struct iovec iov = {(void *)(buf + *sent), len - *sent};
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int))];
        } ctl;
        if (fd >= 0 && *sent == 0) {
            memset(&ctl, 0, sizeof ctl);
            mh.msg_control = ctl.b;
            mh.msg_controllen = sizeof ctl.b;
            struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(cm), &fd, sizeof fd);
        }
        ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        *sent += (size_t)n;
    }
    return 0;
}

/* Registers t under a fresh id and sends req (consumed) with that id. 0: t is in flight and will
 * be completed by its reply or by the connection breaking. Else the error, with msg, and t is
 * out of the table (the caller frees it). */
static int send_request(dropblock_t *h, dropblock_ticket *t, cJSON *req, int fd, char *msg, size_t len)
{
    struct db_conn *c = h->conn;
    if (!req) {
        db_msg(msg, len, "out of memory for a request");
        return DROPBLOCK_EEXHAUSTED;
    }
    pthread_mutex_lock(&c->lock);
    if (c->broken) {
        int rc = c->err_code;
        db_msg(msg, len, "%s", c->err_msg);
        pthread_mutex_unlock(&c->lock);
        cJSON_Delete(req);
        return rc;
    }
    t->id = ++c->next_id;
    ticket_insert(c, t);
    pthread_mutex_unlock(&c->lock);

    int rc = DROPBLOCK_OK;
    size_t flen = 0, sent = 0;
    char *frame = NULL;
    if (cJSON_AddNumberToObject(req, "id", (double)t->id)) frame = proto_frame(req, &flen); /* frees req */
    else cJSON_Delete(req);
    if (!frame) {
        rc = DROPBLOCK_EEXHAUSTED;
        db_msg(msg, len, "out of memory for a request");
    } else if (flen - 4 > PROTO_MAX_FRAME) {
        rc = DROPBLOCK_EINVAL;
        db_msg(msg, len, "the request is %zu bytes of JSON; a frame holds at most %u (is a name that long?)", flen - 4,
               PROTO_MAX_FRAME);
    } else {
        pthread_mutex_lock(&c->send_lock);
        int err = send_frame(c->fd, frame, flen, fd, &sent);
        pthread_mutex_unlock(&c->send_lock);
        if (err && sent > 0) {
            /* half a frame is on the wire: nothing after it can be understood */
            pthread_mutex_lock(&c->lock);
            ticket_remove(c, t);
            conn_break(c, DROPBLOCK_EUNAVAILABLE, "connection to dropblockd lost: a send failed midway: %s", strerror(err));
            db_msg(msg, len, "%s", c->err_msg);
            rc = c->err_code;
            pthread_mutex_unlock(&c->lock);
            shutdown(c->fd, SHUT_RDWR);
            free(frame);
            return rc;
        }
        /* EPIPE/ECONNRESET: the daemon is gone; the receiver still reads what it sent last (its
         * reason, if it gave one) and then fails every ticket, this one included */
        if (err && err != EPIPE && err != ECONNRESET) {
            rc = DROPBLOCK_EUNAVAILABLE;
            db_msg(msg, len, "cannot send a request to dropblockd: %s", strerror(err));
        }
    }
    free(frame);
    if (rc) {
        pthread_mutex_lock(&c->lock);
        ticket_remove(c, t);
        pthread_mutex_unlock(&c->lock);
    }
    return rc;
}

/* Waits for t; ETIMEDOUT leaves it in flight, anything else takes it out of the table. */
static int wait_ticket(struct db_conn *c, dropblock_ticket *t, int timeout_ms)
{
    pthread_mutex_lock(&c->lock);
    if (timeout_ms < 0) {
        while (!t->done) pthread_cond_wait(&t->cond, &c->lock);
    } else {
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) { dl.tv_sec++; dl.tv_nsec -= 1000000000L; }
        while (!t->done)
            if (pthread_cond_timedwait(&t->cond, &c->lock, &dl) == ETIMEDOUT) break;
    }
    int done = t->done;
    if (done) ticket_remove(c, t);
    pthread_mutex_unlock(&c->lock);
    return done ? DROPBLOCK_OK : DROPBLOCK_ETIMEDOUT;
}

/* One request, waited for up to timeout_ms (-1: as long as the connection lives): the reply
 * (caller deletes) or the error with msg. */
static int request(dropblock_t *h, cJSON *req, int fd, int timeout_ms, cJSON **reply, char *msg, size_t len)
{
    *reply = NULL;
    dropblock_ticket *t = ticket_new(h, 0);
    if (!t) {
        cJSON_Delete(req);
        db_msg(msg, len, "out of memory for a request");
        return DROPBLOCK_EEXHAUSTED;
    }
    int rc = send_request(h, t, req, fd, msg, len);
    if (!rc && wait_ticket(h->conn, t, timeout_ms) == DROPBLOCK_ETIMEDOUT) {
        pthread_mutex_lock(&h->conn->lock);
        ticket_remove(h->conn, t); /* a late reply finds no ticket and is dropped */
        pthread_mutex_unlock(&h->conn->lock);
        rc = DROPBLOCK_EUNAVAILABLE;
        db_msg(msg, len, "no reply within %d s", timeout_ms / 1000);
    } else if (!rc) {
        rc = t->rc;
        if (rc) db_msg(msg, len, "%s", t->res.message);
        *reply = t->reply;
        t->reply = NULL;
    }
    ticket_free(t);
    return rc;
}

/* ---------------------------------------------------------------- connect and close */
static dropblock_device_kind parse_kind(const char *s)
{
    for (int k = DROPBLOCK_DEVICE_CPU; k <= DROPBLOCK_DEVICE_OTHER; k++)
        if (!strcmp(s, dropblock_device_kind_name((dropblock_device_kind)k))) return (dropblock_device_kind)k;
    return DROPBLOCK_DEVICE_OTHER;
}

static int parse_devices(struct db_conn *c, const cJSON *reply)
{
    const cJSON *devs = field(reply, "devices");
    if (!cJSON_IsArray(devs)) return -1;
    int n = cJSON_GetArraySize(devs);
    c->devices = calloc(n > 0 ? (size_t)n : 1, sizeof *c->devices);
    if (!c->devices) return -1;
    const cJSON *d;
    cJSON_ArrayForEach(d, devs) {
        dropblock_device_info *info = &c->devices[c->ndevices++];
        copy_string(info->id, sizeof info->id, d, "id");
        copy_string(info->api, sizeof info->api, d, "api");
        copy_string(info->vendor, sizeof info->vendor, d, "vendor");
        copy_string(info->name, sizeof info->name, d, "name");
        copy_string(info->driver, sizeof info->driver, d, "driver");
        copy_string(info->uuid, sizeof info->uuid, d, "uuid");
        const cJSON *k = field(d, "kind");
        info->kind = cJSON_IsString(k) ? parse_kind(k->valuestring) : DROPBLOCK_DEVICE_OTHER;
        info->max_buffer = u64_or_zero(d, "max_buffer");
        info->global_mem = u64_or_zero(d, "global_mem");
    }
    return 0;
}

int dropblock_connect(dropblock_t **out, const char *socket_path, char *msg, size_t len)
{
    if (msg && len) msg[0] = 0;
    if (!out) return DROPBLOCK_EINVAL;
    *out = NULL;
    char path[4096];
    if (socket_path) snprintf(path, sizeof path, "%s", socket_path);
    else dropblock_default_socket(path, sizeof path);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (!path[0] || strlen(path) >= sizeof sa.sun_path) {
        db_msg(msg, len, "socket path \"%.200s\": must be 1 to %zu bytes", path, sizeof sa.sun_path - 1);
        return DROPBLOCK_EINVAL;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);

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
    snprintf(c->path, sizeof c->path, "%s", path);
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->send_lock, NULL);
    pthread_mutex_init(&c->region_lock, NULL);
    pthread_condattr_init(&c->condattr);
    pthread_condattr_setclock(&c->condattr, CLOCK_MONOTONIC);

    int rc;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        db_msg(msg, len, "cannot connect to dropblockd at %s: %s; start one with `dropblockd --socket %s` or run with --local",
               path, strerror(errno), path);
        rc = DROPBLOCK_EUNAVAILABLE;
        goto fail;
    }
    /* the receiver takes no signals: they belong to the application's threads */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&c->rx, NULL, receiver_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        db_msg(msg, len, "cannot start the receiver thread: %s", strerror(err));
        rc = DROPBLOCK_EEXHAUSTED;
        goto fail;
    }
    c->rx_started = 1;

    cJSON *reply = NULL;
    char why[256];
    /* bounded: a socket that is not dropblockd may never answer (the daemon itself answers once
     * its devices are ready, which can take seconds the first time kernels are built) */
    rc = request(h, new_request("hello"), -1, HELLO_TIMEOUT_MS, &reply, why, sizeof why);
    if (rc) {
        if (c->daemon_msg[0]) db_msg(msg, len, "dropblockd at %s refused the connection: %s", path, c->daemon_msg);
        else db_msg(msg, len, "dropblockd at %s: hello failed: %s", path, why);
        goto fail;
    }
    const cJSON *proto = field(reply, "protocol");
    if (!cJSON_IsNumber(proto) || proto->valuedouble != PROTO_VERSION) {
        db_msg(msg, len, "dropblockd at %s speaks protocol %g; this library speaks %d", path,
               cJSON_IsNumber(proto) ? proto->valuedouble : 0.0, PROTO_VERSION);
        rc = DROPBLOCK_EUNAVAILABLE;
    } else if (parse_devices(c, reply)) {
        db_msg(msg, len, "dropblockd at %s: the hello reply has no device list", path);
        rc = DROPBLOCK_EINTERNAL;
    }
    cJSON_Delete(reply);
    if (rc) goto fail;
    *out = h;
    return DROPBLOCK_OK;
fail:
    remote_close(h);
    return rc;
}

void remote_close(dropblock_t *h)
{
    struct db_conn *c = h->conn;
    if (c->rx_started) {
        /* wakes the receiver's recv with end of stream; the daemon drops our regions and jobs */
        shutdown(c->fd, SHUT_RDWR);
        pthread_join(c->rx, NULL);
    }
    if (c->fd >= 0) close(c->fd);
    for (size_t i = 0; i < NBUCKETS; i++)
        while (c->buckets[i]) {
            dropblock_ticket *t = c->buckets[i];
            c->buckets[i] = t->next;
            ticket_free(t);
        }
    for (size_t i = 0; i < c->nregions; i++) munmap(c->regions[i].base, c->regions[i].size);
    free(c->regions);
    free(c->devices);
    pthread_condattr_destroy(&c->condattr);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->send_lock);
    pthread_mutex_destroy(&c->region_lock);
    free(c);
    free(h);
}

/* The error a broken connection gives every call, or 0. */
static int broken_code(struct db_conn *c)
{
    pthread_mutex_lock(&c->lock);
    int rc = c->broken ? c->err_code : DROPBLOCK_OK;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int remote_devices(dropblock_t *h, dropblock_device_info *infos, size_t cap, size_t *count)
{
    struct db_conn *c = h->conn;
    int rc = broken_code(c);
    if (rc) return rc;
    for (size_t i = 0; i < c->ndevices && i < cap; i++) infos[i] = c->devices[i];
    *count = c->ndevices;
    return DROPBLOCK_OK;
}

/* ---------------------------------------------------------------- regions */
static int errno_code(int e)
{
    return e == ENOSPC || e == EFBIG || e == ENOMEM || e == EMFILE || e == ENFILE || e == EAGAIN
               ? DROPBLOCK_EEXHAUSTED
               : DROPBLOCK_EINTERNAL;
}

int remote_alloc(dropblock_t *h, size_t bytes, void **ptr)
{
    struct db_conn *c = h->conn;
    int rc = broken_code(c);
    if (rc) return rc;
    if (bytes > (size_t)INT64_MAX) return DROPBLOCK_EEXHAUSTED;
    int fd = memfd_create("dropblock", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return errno_code(errno);
    /* real pages now, so running out shows here and not as SIGBUS inside a job */
    int e;
    do e = posix_fallocate(fd, 0, (off_t)bytes); while (e == EINTR);
    /* the daemon needs F_SEAL_SHRINK so the region can never shrink under it */
    if (!e && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) e = errno;
    void *base = e ? MAP_FAILED : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (!e && base == MAP_FAILED) e = errno;
    if (e) {
        close(fd);
        return errno_code(e);
    }
    cJSON *req = new_request("region.register");
    if (req) cJSON_AddNumberToObject(req, "fds", 1);
    cJSON *reply = NULL;
    char msg[256];
    rc = request(h, req, fd, -1, &reply, msg, sizeof msg);
    close(fd); /* the daemon has its own reference now */
    uint64_t rid = 0, size = 0;
    if (!rc && (proto_get_u64(field(reply, "region"), "region", &rid, NULL, 0) || rid > UINT32_MAX ||
                proto_get_u64(field(reply, "size"), "size", &size, NULL, 0) || size != bytes))
        rc = DROPBLOCK_EINTERNAL; /* cannot happen with a v1 daemon */
    cJSON_Delete(reply);
    if (!rc) {
        pthread_mutex_lock(&c->region_lock);
        if (c->nregions == c->cap_regions) {
            size_t cap = c->cap_regions ? c->cap_regions * 2 : 16;
            struct region *n = realloc(c->regions, cap * sizeof *n);
            if (n) {
                c->regions = n;
                c->cap_regions = cap;
            }
        }
        if (c->nregions < c->cap_regions) {
            c->regions[c->nregions].id = (uint32_t)rid;
            c->regions[c->nregions].base = base;
            c->regions[c->nregions].size = bytes;
            c->nregions++;
        } else {
            rc = DROPBLOCK_EEXHAUSTED; /* the daemon keeps the region until we disconnect */
        }
        pthread_mutex_unlock(&c->region_lock);
    }
    if (rc) {
        munmap(base, bytes);
        return rc;
    }
    *ptr = base;
    return DROPBLOCK_OK;
}

int remote_free(dropblock_t *h, void *ptr)
{
    struct db_conn *c = h->conn;
    struct region r;
    int found = 0;
    pthread_mutex_lock(&c->region_lock);
    for (size_t i = 0; i < c->nregions; i++)
        if (c->regions[i].base == ptr) {
            r = c->regions[i];
            c->regions[i] = c->regions[--c->nregions];
            found = 1;
            break;
        }
    pthread_mutex_unlock(&c->region_lock);
    if (!found) return DROPBLOCK_EINVAL; /* not from dropblock_alloc on this handle, or freed already */
    cJSON *req = new_request("region.unregister");
    if (req) cJSON_AddNumberToObject(req, "region", r.id);
    cJSON *reply = NULL;
    char msg[256];
    int rc = request(h, req, -1, -1, &reply, msg, sizeof msg);
    cJSON_Delete(reply);
    munmap(r.base, r.size);
    /* a lost connection took the region with it on the daemon's side: the memory is released */
    if (rc && broken_code(c)) rc = DROPBLOCK_OK;
    return rc;
}

/* Where a tensor lies: the region that holds all of its bytes, and the offset there. */
static int locate(struct db_conn *c, const char *what, const void *ptr, uint64_t bytes, uint32_t *rid,
                  uint64_t *off, char *msg, size_t len)
{
    uintptr_t p = (uintptr_t)ptr;
    for (size_t i = 0; i < c->nregions; i++) {
        const struct region *r = &c->regions[i];
        uintptr_t b = (uintptr_t)r->base;
        if (p < b || p - b >= r->size) continue;
        uint64_t o = (uint64_t)(p - b);
        if (bytes > r->size - o) {
            db_msg(msg, len, "%s is not inside memory from dropblock_alloc (its %llu bytes start %llu bytes into a "
                   "%zu-byte allocation and run past its end)", what, (unsigned long long)bytes,
                   (unsigned long long)o, r->size);
            return DROPBLOCK_EINVAL;
        }
        *rid = r->id;
        *off = o;
        return DROPBLOCK_OK;
    }
    db_msg(msg, len, "%s is not inside memory from dropblock_alloc (%p is in none of this connection's %zu "
           "allocations; the daemon can only reach shared memory from dropblock_alloc)", what, ptr, c->nregions);
    return DROPBLOCK_EINVAL;
}

/* ---------------------------------------------------------------- jobs */
static cJSON *u64_item(uint64_t v)
{
    if (v < (UINT64_C(1) << 53)) return cJSON_CreateNumber((double)v);
    char s[24];
    snprintf(s, sizeof s, "%llu", (unsigned long long)v);
    return cJSON_CreateString(s);
}

static void add_tensor(cJSON *req, const char *name, uint32_t rid, uint64_t off)
{
    cJSON *t = cJSON_AddObjectToObject(req, name);
    if (!t) return;
    proto_add_u64(t, "region", rid);
    proto_add_u64(t, "offset", off);
}

/* The dropblock2d request of docs/protocol.md; NULL without memory. */
static cJSON *job_request(const dropblock_params *p, const uint32_t rid[3], const uint64_t off[3], int has_mask,
                          const char *device)
{
    cJSON *req = new_request("dropblock2d");
    if (!req) return NULL;
    add_tensor(req, "input", rid[0], off[0]);
    add_tensor(req, "output", rid[1], off[1]);
    if (has_mask) add_tensor(req, "mask", rid[2], off[2]);
    cJSON *shape = cJSON_AddArrayToObject(req, "shape");
    for (int i = 0; shape && i < 4; i++) cJSON_AddItemToArray(shape, u64_item(p->shape[i]));
    cJSON_AddStringToObject(req, "layout", dropblock_layout_name(p->layout));
    cJSON_AddStringToObject(req, "dtype", dropblock_dtype_name(p->dtype));
    /* a float widened to double prints exactly and narrows back to the same float */
    cJSON_AddNumberToObject(req, "rate", (double)p->rate);
    cJSON *block = cJSON_AddArrayToObject(req, "block");
    if (block) {
        cJSON_AddItemToArray(block, u64_item(p->block[0]));
        cJSON_AddItemToArray(block, u64_item(p->block[1]));
    }
    proto_add_u64(req, "seed", p->seed);
    proto_add_u64(req, "stream", p->stream);
    cJSON_AddStringToObject(req, "normalize", dropblock_normalize_name(p->normalize));
    cJSON *share = cJSON_AddArrayToObject(req, "share");
    if (share && (p->share & DROPBLOCK_SHARE_CHANNELS)) cJSON_AddItemToArray(share, cJSON_CreateString("channels"));
    if (share && (p->share & DROPBLOCK_SHARE_BATCH)) cJSON_AddItemToArray(share, cJSON_CreateString("batch"));
    cJSON_AddStringToObject(req, "mode", p->mode == DROPBLOCK_BACKWARD ? "backward" : "forward");
    cJSON_AddStringToObject(req, "compat", dropblock_compat_name(p->compat));
    cJSON_AddBoolToObject(req, "training", p->training != 0);
    cJSON_AddStringToObject(req, "device", device && *device ? device : "auto");
    return req;
}

int remote_submit(dropblock_t *h, const dropblock_params *p, const void *input, void *output, void *mask,
                  const char *device, dropblock_ticket **ticket, char *msg, size_t len)
{
    struct db_conn *c = h->conn;
    uint64_t tb = dropblock_tensor_bytes(p), mb = dropblock_mask_bytes(p);
    uint32_t rid[3] = {0, 0, 0};
    uint64_t off[3] = {0, 0, 0};
    pthread_mutex_lock(&c->region_lock);
    int rc = locate(c, "input", input, tb, &rid[0], &off[0], msg, len);
    if (!rc) rc = locate(c, "output", output, tb, &rid[1], &off[1], msg, len);
    if (!rc && mask) rc = locate(c, "mask", mask, mb, &rid[2], &off[2], msg, len);
    pthread_mutex_unlock(&c->region_lock);
    if (rc) return rc;
    dropblock_ticket *t = ticket_new(h, 1);
    if (!t) {
        db_msg(msg, len, "out of memory for a request");
        return DROPBLOCK_EEXHAUSTED;
    }
    rc = send_request(h, t, job_request(p, rid, off, mask != NULL, device), -1, msg, len);
    if (rc) {
        ticket_free(t);
        return rc;
    }
    *ticket = t;
    return DROPBLOCK_OK;
}

int remote_wait(dropblock_t *h, dropblock_ticket *t, int timeout_ms, dropblock_result *res)
{
    if (wait_ticket(h->conn, t, timeout_ms) == DROPBLOCK_ETIMEDOUT) {
        db_msg(res->message, sizeof res->message, "the job is still running after %d ms", timeout_ms);
        return DROPBLOCK_ETIMEDOUT;
    }
    *res = t->res;
    int rc = t->rc;
    ticket_free(t);
    return rc;
}

/* ---------------------------------------------------------------- status and shutdown */
int remote_status(dropblock_t *h, char *json, size_t len)
{
    cJSON *reply = NULL;
    int rc = request(h, new_request("status"), -1, -1, &reply, NULL, 0);
    if (rc) return rc;
    char *text = cJSON_PrintUnformatted(reply);
    cJSON_Delete(reply);
    if (!text) return DROPBLOCK_EEXHAUSTED;
    size_t n = strlen(text);
    if (n + 1 > len) rc = DROPBLOCK_ERANGE;
    else memcpy(json, text, n + 1);
    cJSON_free(text);
    return rc;
}

int remote_shutdown(dropblock_t *h, char *msg, size_t len)
{
    cJSON *reply = NULL;
    int rc = request(h, new_request("shutdown"), -1, -1, &reply, msg, len);
    cJSON_Delete(reply);
    return rc;
}
