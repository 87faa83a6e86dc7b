/* conn.c: a connection to dropblockd (dropblock_connect): protocol v1 framing (docs/protocol.md),
 * requests in flight, reading and completing replies; opening the socket, hello, reconnecting and
 * closing are connect.c's, the ops over it (devices, memfd regions for dropblock_alloc, jobs,
 * status, shutdown) remote.c's (conn.h).
 *
 * Every request is a ticket registered under a per-connection id before its frame is sent; the
 * thread reading the socket completes the matching ticket (any order, as the daemon answers).
 * Sends are serialised by a mutex so frames never interleave. When the connection breaks, every
 * ticket in flight fails with the reason at once, so no caller ever waits on a daemon that is
 * gone, and no job is ever sent twice.
 *
 * Who reads: one thread at a time (c->reader), with the frame buffer of the connection. A caller
 * that waits for its own reply at once and without a timeout (dropblock_run, the requests behind
 * alloc, devices, status: a "sync" ticket) reads the socket itself when nobody else does, and
 * completes every reply it meets on the way; when its own is done it hands the socket on. The
 * connection's receiver thread reads only while tickets that nobody waits on in that way are in
 * flight (dropblock_submit's; c->nasync) and no caller reads; otherwise it sleeps on rx_cond,
 * not on the socket. A small job's round trip then wakes one thread, not the receiver and then
 * the caller. While nothing is in flight nobody reads: every call first looks (poll, no wait)
 * whether the daemon has closed the connection or said something, so that a daemon that went
 * away is still noticed before the next request (and reconnected to).
 *
 * Reconnecting: the next call that needs the daemon (devices, alloc, submit/run, status,
 * shutdown) makes one attempt to connect to the same path again. The new connection is set up
 * privately (hello, then every region's memfd, which the handle keeps open for this, registered
 * anew) before it replaces the old one, so no other thread ever sends on it with stale region
 * ids. Each connection has a generation number: a request prepared for one generation is never
 * sent on another.
 *
 * Lock order: reconnect_lock, region_lock, send_lock, lock. */
#include <dropblock/dropblock.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "handle.h"
#include "msg.h"
#include "protocol.h"

/* cJSON 1.7 resets a global error pointer on every parse: receivers of different connections
 * must not parse at the same time. */
static pthread_mutex_t parse_lock = PTHREAD_MUTEX_INITIALIZER;

cJSON *conn_parse_json(const char *data, size_t len)
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
    if (!t->sync) {
        t->counted = 1;
        /* someone must read for it: the receiver, unless a caller reads already */
        if (c->nasync++ == 0 && c->reader == READER_NONE) pthread_cond_signal(&c->rx_cond);
    }
    dropblock_ticket **b = &c->buckets[bucket_of(t->id)];
    t->prev = NULL;
    t->next = *b;
    if (*b) (*b)->prev = t;
    *b = t;
}

static void ticket_uncount(struct db_conn *c, dropblock_ticket *t)
{
    if (t->counted) {
        t->counted = 0;
        c->nasync--;
    }
}

void conn_ticket_remove(struct db_conn *c, dropblock_ticket *t)
{
    ticket_uncount(c, t);
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

static void ticket_complete(struct db_conn *c, dropblock_ticket *t, int rc, const char *message)
{
    ticket_uncount(c, t);
    t->rc = rc;
    if (message) snprintf(t->res.message, sizeof t->res.message, "%s", message);
    t->done = 1;
    pthread_cond_signal(&t->cond);
}

dropblock_ticket *conn_ticket_new(dropblock_t *h, int is_job)
{
    dropblock_ticket *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    if (pthread_cond_init(&t->cond, &h->conn->condattr)) {
        free(t);
        return NULL;
    }
    t->owner = h;
    t->is_job = is_job;
    t->fd = -1;
    return t;
}

void conn_ticket_free(dropblock_ticket *t)
{
    pthread_cond_destroy(&t->cond);
    cJSON_Delete(t->reply);
    if (t->fd >= 0) close(t->fd);
    free(t);
}

/* The reply's descriptors ("fds": n, received with its frame, first in, first claimed): the
 * first into *fd (NULL: closed too), the rest closed. -1 when fewer came than it says. */
static int claim_fds(struct db_conn *c, const cJSON *r, int *fd)
{
    const cJSON *n = field(r, "fds");
    int want = cJSON_IsNumber(n) && n->valuedouble >= 1 && n->valuedouble <= RX_MAX_FDS ? (int)n->valuedouble : 0;
    if (want > c->nrx_fds) return -1;
    for (int i = 0; i < want; i++) {
        if (i == 0 && fd) *fd = c->rx_fds[0];
        else close(c->rx_fds[i]);
    }
    memmove(c->rx_fds, c->rx_fds + want, (size_t)(c->nrx_fds - want) * sizeof *c->rx_fds);
    c->nrx_fds -= want;
    return 0;
}

void conn_drop_fds(struct db_conn *c)
{
    for (int i = 0; i < c->nrx_fds; i++) close(c->rx_fds[i]);
    c->nrx_fds = 0;
}

/* Marks the connection broken (the first reason wins) and fails every ticket in flight. */
void conn_break(struct db_conn *c, int code, const char *fmt, ...)
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
            if (!t->done) ticket_complete(c, t, c->err_code, c->err_msg);
    pthread_cond_broadcast(&c->rx_cond); /* the receiver ends */
}

/* ---------------------------------------------------------------- replies */

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
int conn_parse_error(const cJSON *r, char *msg, size_t len)
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
    cJSON *r = conn_parse_json(data, len);
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
        int code = ok ? DROPBLOCK_EINTERNAL : conn_parse_error(r, m, sizeof m);
        if (ok) snprintf(m, sizeof m, "a reply without an id");
        pthread_mutex_lock(&c->lock);
        if (!c->broken) snprintf(c->daemon_msg, sizeof c->daemon_msg, "%s", m);
        conn_break(c, code, "dropblockd closed the connection: %s", m);
        pthread_mutex_unlock(&c->lock);
        cJSON_Delete(r);
        db_msg(why, why_len, "%s", m);
        return -1;
    }
    int fd = -1;
    if (claim_fds(c, r, &fd)) {
        cJSON_Delete(r);
        db_msg(why, why_len, "dropblockd sent a reply whose descriptors did not come with it");
        return -1;
    }
    uint64_t idv;
    if (proto_get_u64(id, "id", &idv, NULL, 0)) {
        if (fd >= 0) close(fd);
        cJSON_Delete(r);
        return 0;
    } /* not an id we send */
    pthread_mutex_lock(&c->lock);
    dropblock_ticket *t = ticket_find(c, idv);
    if (t && !t->done) {
        if (!ok) {
            t->rc = conn_parse_error(r, t->res.message, sizeof t->res.message);
        } else if (t->is_job) {
            t->rc = parse_result(r, &t->res);
        } else {
            t->reply = r;
            r = NULL;
            t->rc = DROPBLOCK_OK;
        }
        t->fd = fd;
        fd = -1;
        ticket_complete(c, t, t->rc, NULL);
    }
    if (fd >= 0) close(fd); /* a reply nobody waits for any more */
    pthread_mutex_unlock(&c->lock);
    cJSON_Delete(r);
    return 0;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* recv(2) into rbuf, without waiting; the descriptors that come with the bytes (SCM_RIGHTS: a
 * region.alloc reply's) queued in rx_fds, or closed where more than it holds came. */
static ssize_t recv_with_fds(struct db_conn *c, int fd)
{
    struct iovec iov = {.iov_base = c->rbuf + c->rlen, .iov_len = RBUF_CAP - c->rlen};
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(RX_MAX_FDS * sizeof(int))];
    } ctl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
    ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) return n;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < k; i++) {
            int rfd;
            memcpy(&rfd, CMSG_DATA(cm) + i * sizeof(int), sizeof rfd);
            if (c->nrx_fds < RX_MAX_FDS) c->rx_fds[c->nrx_fds++] = rfd;
            else close(rfd);
        }
    }
    return n;
}

/* One read from the socket (waiting for it) into rbuf, and every whole frame in it handled. The
 * caller is the reader (c->reader, without the lock). 0, or -1 when the connection cannot go on
 * (why says why; the caller breaks it). */
static int read_some(struct db_conn *c, int fd, char *why, size_t why_len)
{
    ssize_t n;
    if (c->spin_us > 0) { /* a short busy wait first: see DEFAULT_SPIN_US */
        int64_t t0 = now_us();
        do {
            n = recv_with_fds(c, fd);
            if (n >= 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) goto got;
        } while (now_us() - t0 < c->spin_us);
    }
    for (;;) {
        /* wait in poll, not in recv: a thread asleep in recv is woken (for nothing) each time
         * the daemon reads a request and frees room in our send queue, poll only by replies
         * (measured: 16.6 against 19.0 us p50 per round trip, both on one CPU; 37 against 44-52 us
         * on two) */
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR) {
            db_msg(why, why_len, "poll: %s", strerror(errno));
            return -1;
        }
        n = recv_with_fds(c, fd);
        if (n >= 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) break;
    }
got:
    if (n < 0) {
        db_msg(why, why_len, "%s", strerror(errno));
        return -1;
    }
    if (n == 0) {
        db_msg(why, why_len, "the daemon closed the connection (it stopped or was killed)");
        return -1;
    }
    c->rlen += (size_t)n;
    size_t pos = 0;
    uint32_t flen = 0;
    int st, rc = 0;
    while (!rc && (st = proto_frame_peek(c->rbuf + pos, c->rlen - pos, &flen)) != PROTO_FRAME_MORE) {
        if (st == PROTO_FRAME_BAD) {
            db_msg(why, why_len, "dropblockd sent a frame of %u bytes (the protocol allows 1 to %u)", flen,
                   PROTO_MAX_FRAME);
            return -1;
        }
        if (handle_reply(c, (const char *)c->rbuf + pos + 4, flen, why, why_len)) rc = -1;
        pos += 4 + (size_t)flen;
    }
    memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
    c->rlen -= pos;
    return rc;
}

/* The reader gives the socket up (lock held): to a sync caller waiting for it, else to the
 * receiver if tickets nobody else reads for are in flight. */
static void release_reader(struct db_conn *c)
{
    c->reader = READER_NONE;
    pthread_cond_broadcast(&c->idle_cond);
    if (c->nlead_waiting) {
        for (size_t i = 0; i < NBUCKETS; i++)
            for (dropblock_ticket *t = c->buckets[i]; t; t = t->next)
                if (t->lead_waiting && !t->done) {
                    pthread_cond_signal(&t->cond);
                    return;
                }
    }
    if (c->nasync) pthread_cond_signal(&c->rx_cond);
}

/* A read by the reader that failed: the connection is broken for everyone (lock held). */
static void read_failed(struct db_conn *c, int fd, const char *why)
{
    conn_break(c, DROPBLOCK_EUNAVAILABLE, "connection to dropblockd lost: %s", why);
    /* a reply we could not follow ends the conversation for the daemon too */
    shutdown(fd, SHUT_RDWR);
}

static void *receiver_main(void *arg)
{
    struct db_conn *c = arg;
    char why[200];
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (!c->broken && !c->closing && (c->reader != READER_NONE || !c->nasync)) {
            pthread_cond_wait(&c->rx_cond, &c->lock);
        }
        if (c->broken || c->closing) break;
        c->reader = READER_RX;
        int fd = c->fd;
        pthread_mutex_unlock(&c->lock);
        int rc = read_some(c, fd, why, sizeof why);
        pthread_mutex_lock(&c->lock);
        if (rc) read_failed(c, fd, why);
        release_reader(c);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

int conn_start_receiver(struct db_conn *c, char *msg, size_t len)
{
    /* the receiver takes no signals: they belong to the application's threads */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&c->rx, NULL, receiver_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        db_msg(msg, len, "cannot start the receiver thread: %s", strerror(err));
        return DROPBLOCK_EEXHAUSTED;
    }
    c->rx_started = 1;
    return DROPBLOCK_OK;
}

/* Before a call sends anything (lock not held): when nobody reads, whether the daemon closed the
 * connection or sent something meanwhile (a late reply; its reason before closing), without
 * waiting; what is there is read, so a daemon that went away is noticed now. */
void conn_check_idle(struct db_conn *c)
{
    pthread_mutex_lock(&c->lock);
    if (c->broken || c->reader != READER_NONE) {
        pthread_mutex_unlock(&c->lock);
        return;
    }
    c->reader = READER_CALLER;
    int fd = c->fd;
    pthread_mutex_unlock(&c->lock);
    char why[200];
    int rc = 0;
    for (int k = 0; k < 16 && !rc; k++) {
        struct pollfd pfd = {fd, POLLIN | POLLRDHUP, 0};
        int pr = poll(&pfd, 1, 0);
        if (pr <= 0) break;                     /* nothing there (or EINTR: look next time) */
        rc = read_some(c, fd, why, sizeof why); /* readable: recv does not block */
    }
    pthread_mutex_lock(&c->lock);
    if (rc) read_failed(c, fd, why);
    release_reader(c);
    pthread_mutex_unlock(&c->lock);
}

/* ---------------------------------------------------------------- requests */
cJSON *conn_new_request(const char *op)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "v", PROTO_VERSION);
    cJSON_AddStringToObject(o, "op", op);
    return o;
}

/* Writes a whole frame; fd (if >= 0) rides on its first byte. 0 or errno; *sent says how far. */
int conn_send_frame(int sock, const char *buf, size_t len, int fd, size_t *sent)
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

/* The frame of a request whose JSON is body (an object without its closing brace) plus the id;
 * NULL without memory. */
static char *frame_with_id(const char *body, uint64_t id, size_t *flen)
{
    size_t n = strlen(body);
    char *f = malloc(4 + n + 32);
    if (!f) return NULL;
    memcpy(f + 4, body, n);
    int k = snprintf(f + 4 + n, 32, ",\"id\":%llu}", (unsigned long long)id);
    n += (size_t)k;
    f[0] = (char)(n & 0xFF);
    f[1] = (char)((n >> 8) & 0xFF);
    f[2] = (char)((n >> 16) & 0xFF);
    f[3] = (char)((n >> 24) & 0xFF);
    *flen = n + 4;
    return f;
}

/* Registers t under a fresh id and sends req (consumed) with that id, on the connection of
 * generation *gen (0: the current one; *gen receives the generation used). 0: t is in flight and
 * will be completed by its reply or by the connection breaking. Else the error, with msg, and t
 * is out of the table (the caller frees it). Never reconnects: the caller did that first. */
static int send_request_any(dropblock_t *h, dropblock_ticket *t, cJSON *req, char *body, int fd, uint64_t *gen,
                            char *msg, size_t len);

static int send_request(dropblock_t *h, dropblock_ticket *t, cJSON *req, int fd, uint64_t *gen, char *msg, size_t len)
{
    if (!req) {
        db_msg(msg, len, "out of memory for a request");
        return DROPBLOCK_EEXHAUSTED;
    }
    return send_request_any(h, t, req, NULL, fd, gen, msg, len);
}

/* send_request for a request given as text (body, consumed: see frame_with_id). */
int conn_send_text(dropblock_t *h, dropblock_ticket *t, char *body, uint64_t *gen, char *msg, size_t len)
{
    if (!body) {
        db_msg(msg, len, "out of memory for a request");
        return DROPBLOCK_EEXHAUSTED;
    }
    return send_request_any(h, t, NULL, body, -1, gen, msg, len);
}

/* send_request_any's first step: t registered under a fresh id on the current connection (of
 * generation *gen, when given and not 0), or the error with msg when the connection is broken or
 * was replaced (a broken connection's err_code is never 0). */
static int ticket_admit(struct db_conn *c, dropblock_ticket *t, uint64_t *gen, char *msg, size_t len)
{
    pthread_mutex_lock(&c->lock);
    if (c->broken || (gen && *gen && *gen != c->gen)) {
        int rc = c->broken ? c->err_code : DROPBLOCK_EUNAVAILABLE;
        if (c->broken) db_msg(msg, len, "%s", c->err_msg);
        else
            db_msg(msg, len,
                   "connection to dropblockd lost and re-established while this request was prepared; "
                   "nothing was sent");
        pthread_mutex_unlock(&c->lock);
        return rc;
    }
    t->id = ++c->next_id;
    t->gen = c->gen;
    if (gen) *gen = c->gen;
    ticket_insert(c, t);
    pthread_mutex_unlock(&c->lock);
    return DROPBLOCK_OK;
}

/* The frame of a request, given as req or as body (both consumed), with id; NULL without memory. */
static char *request_frame(cJSON *req, char *body, uint64_t id, size_t *flen)
{
    char *frame = NULL;
    if (body) {
        frame = frame_with_id(body, id, flen);
        free(body);
    } else if (cJSON_AddNumberToObject(req, "id", (double)id)) {
        frame = proto_frame(req, flen); /* frees req */
    } else {
        cJSON_Delete(req);
    }
    return frame;
}

static int send_request_any(dropblock_t *h, dropblock_ticket *t, cJSON *req, char *body, int fd, uint64_t *gen,
                            char *msg, size_t len)
{
    struct db_conn *c = h->conn;
    int rc = ticket_admit(c, t, gen, msg, len);
    if (rc) {
        cJSON_Delete(req);
        free(body);
        return rc;
    }
    size_t flen = 0, sent = 0;
    char *frame = request_frame(req, body, t->id, &flen);
    if (!frame) {
        rc = DROPBLOCK_EEXHAUSTED;
        db_msg(msg, len, "out of memory for a request");
    } else if (flen - 4 > PROTO_MAX_FRAME) {
        rc = DROPBLOCK_EINVAL;
        db_msg(msg, len, "the request is %zu bytes of JSON; a frame holds at most %u (is a name that long?)", flen - 4,
               PROTO_MAX_FRAME);
    } else {
        pthread_mutex_lock(&c->send_lock);
        int err = 0, stale = c->gen != t->gen;
        int sock = c->fd;
        /* a request of a connection that broke (and was replaced) meanwhile is never sent on the
         * new one: its ticket was failed with the connection */
        if (!stale) err = conn_send_frame(sock, frame, flen, fd, &sent);
        pthread_mutex_unlock(&c->send_lock);
        if (stale) {
            pthread_mutex_lock(&c->lock);
            conn_ticket_remove(c, t);
            rc = t->done && t->rc ? t->rc : DROPBLOCK_EUNAVAILABLE;
            db_msg(msg, len, "%s", t->done && t->res.message[0] ? t->res.message : "connection to dropblockd lost");
            pthread_mutex_unlock(&c->lock);
            free(frame);
            return rc;
        }
        if (err && sent > 0) {
            /* half a frame is on the wire: nothing after it can be understood */
            pthread_mutex_lock(&c->lock);
            conn_ticket_remove(c, t);
            conn_break(c, DROPBLOCK_EUNAVAILABLE, "connection to dropblockd lost: a send failed midway: %s",
                       strerror(err));
            db_msg(msg, len, "%s", c->err_msg);
            rc = c->err_code;
            pthread_mutex_unlock(&c->lock);
            shutdown(sock, SHUT_RDWR);
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
        conn_ticket_remove(c, t);
        pthread_mutex_unlock(&c->lock);
    }
    return rc;
}

/* Waits for t; ETIMEDOUT leaves it in flight, anything else takes it out of the table. */
int conn_wait_ticket(struct db_conn *c, dropblock_ticket *t, int timeout_ms)
{
    pthread_mutex_lock(&c->lock);
    if (t->sync && timeout_ms < 0) {
        /* read the socket ourselves when nobody does; else wait for the reply or for the socket */
        while (!t->done) {
            if (c->reader == READER_NONE && !c->broken) {
                c->reader = READER_CALLER;
                int fd = c->fd;
                pthread_mutex_unlock(&c->lock);
                char why[200];
                int rc = read_some(c, fd, why, sizeof why);
                pthread_mutex_lock(&c->lock);
                if (rc) read_failed(c, fd, why);
                c->reader = READER_NONE;
                if (t->done) release_reader(c);
                continue;
            }
            t->lead_waiting = 1;
            c->nlead_waiting++;
            pthread_cond_wait(&t->cond, &c->lock);
            c->nlead_waiting--;
            t->lead_waiting = 0;
        }
    } else if (timeout_ms < 0) {
        while (!t->done) pthread_cond_wait(&t->cond, &c->lock);
    } else {
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        while (!t->done)
            if (pthread_cond_timedwait(&t->cond, &c->lock, &dl) == ETIMEDOUT) break;
    }
    int done = t->done;
    if (done) conn_ticket_remove(c, t);
    pthread_mutex_unlock(&c->lock);
    return done ? DROPBLOCK_OK : DROPBLOCK_ETIMEDOUT;
}

/* One request, waited for up to timeout_ms (-1: as long as the connection lives): the reply
 * (caller deletes) or the error with msg. */
int conn_request(dropblock_t *h, cJSON *req, int fd, uint64_t *gen, int timeout_ms, cJSON **reply, char *msg,
                 size_t len)
{
    return conn_request_fd(h, req, fd, gen, timeout_ms, reply, NULL, msg, len);
}

/* conn_request, with the descriptor its reply carries in *rfd (-1: none; NULL: closed) */
int conn_request_fd(dropblock_t *h, cJSON *req, int fd, uint64_t *gen, int timeout_ms, cJSON **reply, int *rfd,
                    char *msg, size_t len)
{
    if (rfd) *rfd = -1;
    *reply = NULL;
    dropblock_ticket *t = conn_ticket_new(h, 0);
    if (!t) {
        cJSON_Delete(req);
        db_msg(msg, len, "out of memory for a request");
        return DROPBLOCK_EEXHAUSTED;
    }
    t->sync = timeout_ms < 0;
    int rc = send_request(h, t, req, fd, gen, msg, len);
    if (!rc && conn_wait_ticket(h->conn, t, timeout_ms) == DROPBLOCK_ETIMEDOUT) {
        pthread_mutex_lock(&h->conn->lock);
        conn_ticket_remove(h->conn, t); /* a late reply finds no ticket and is dropped */
        pthread_mutex_unlock(&h->conn->lock);
        rc = DROPBLOCK_EUNAVAILABLE;
        db_msg(msg, len, "dropblockd at %s sent no reply within %d ms (the connection's timeout_ms)", h->conn->path,
               timeout_ms);
    } else if (!rc) {
        rc = t->rc;
        if (rc) db_msg(msg, len, "%s", t->res.message);
        *reply = t->reply;
        t->reply = NULL;
        if (!rc && rfd) {
            *rfd = t->fd;
            t->fd = -1;
        }
    }
    conn_ticket_free(t);
    return rc;
}

/* ---------------------------------------------------------------- device lists (hello, devices) */
static dropblock_device_kind parse_kind(const char *s)
{
    for (int k = DROPBLOCK_DEVICE_CPU; k <= DROPBLOCK_DEVICE_OTHER; k++)
        if (!strcmp(s, dropblock_device_kind_name((dropblock_device_kind)k))) return (dropblock_device_kind)k;
    return DROPBLOCK_DEVICE_OTHER;
}

/* The device list of a hello or devices reply into infos (up to cap); -1 without one. */
int conn_parse_devices(const cJSON *reply, dropblock_device_info *infos, size_t cap, size_t *count)
{
    const cJSON *devs = field(reply, "devices");
    if (!cJSON_IsArray(devs)) return -1;
    size_t n = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, devs)
    {
        if (n < cap) {
            dropblock_device_info *info = &infos[n];
            memset(info, 0, sizeof *info);
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
            /* a daemon from before health reports gives no field: healthy */
            info->healthy = !cJSON_IsFalse(field(d, "healthy"));
            info->can_export = cJSON_IsTrue(field(d, "export"));
            info->semaphores = cJSON_IsTrue(field(d, "semaphores"));
            info->semaphore_export = cJSON_IsTrue(field(d, "semaphore_export"));
        }
        n++;
    }
    *count = n;
    return 0;
}
