/* conn.c: dropblockd's client I/O: accepting connections (peer checks, connection quotas,
 * refusals), reading requests and the descriptors sent with them, framing, queueing and writing
 * replies with backpressure, closing; and the log. The requests themselves are ops.c's. */
#include <dropblock/dropblock.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "server.h"

#define RBUF_CAP (4 + PROTO_MAX_FRAME)
/* Replies queued for a client that is not reading: past this, the daemon stops reading its
 * requests until they drain (backpressure instead of memory growth). */
#define MAX_QUEUED_REPLY_BYTES (1u << 20)

const char *const level_names[4] = {"error", "warn", "info", "debug"};

struct outbuf {
    struct outbuf *next;
    size_t len, off;
    int fd; /* sent (SCM_RIGHTS) with the frame's first byte, then closed; -1: none */
    char data[];
};

/* send(2) of buf, with fd (>= 0) attached as SCM_RIGHTS */
static ssize_t send_with_fd(int sock, const char *buf, size_t len, int fd)
{
    if (fd < 0) return send(sock, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    return sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* ---------------------------------------------------------------- logging */
void logmsg(struct server *s, int level, const char *fmt, ...)
{
    if (level > s->log_level) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[1024];
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}

/* ---------------------------------------------------------------- clients: writing */

static void on_client_io(uv_poll_t *h, int status, int events);

/* Polls for what the client's state needs: writable while replies wait, readable unless too
 * many replies wait (a client that does not read its replies gets no more requests read). */
static void update_poll(struct client *c)
{
    if (c->closed) return;
    int events = (c->wq_head ? UV_WRITABLE : 0) | (c->wq_bytes <= MAX_QUEUED_REPLY_BYTES ? UV_READABLE : 0);
    if (events == c->want_write) return;
    c->want_write = events;
    uv_poll_start(&c->poll, events, on_client_io);
}

int client_flush(struct client *c)
{
    int rc = 0;
    while (c->wq_head) {
        struct outbuf *b = c->wq_head;
        ssize_t n = send_with_fd(c->fd, b->data + b->off, b->len - b->off, b->off ? -1 : b->fd);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) rc = -1;
            break;
        }
        if (n > 0 && b->fd >= 0) { /* the peer has its copy */
            close(b->fd);
            b->fd = -1;
        }
        b->off += (size_t)n;
        c->wq_bytes -= (size_t)n;
        if (b->off == b->len) {
            c->wq_head = b->next;
            if (!c->wq_head) c->wq_tail = NULL;
            free(b);
        }
    }
    update_poll(c);
    return rc;
}

/* Sends a frame, or queues what the socket does not take now (frame is copied). */
void client_send_frame(struct client *c, const char *frame, size_t len) { client_send_frame_fd(c, frame, len, -1); }

/* client_send_frame with fd (>= 0; the daemon's copy, closed once sent or the client gone)
 * attached to the frame's first byte. */
void client_send_frame_fd(struct client *c, const char *frame, size_t len, int fd)
{
    if (c->closed) {
        if (fd >= 0) close(fd);
        return;
    }
    if (!c->wq_head) {
        /* nothing queued: straight to the socket, no copy (the common case of a reply) */
        ssize_t n;
        do n = send_with_fd(c->fd, frame, len, fd);
        while (n < 0 && errno == EINTR);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            if (fd >= 0) close(fd);
            client_close(c, "the peer stopped reading");
            return;
        }
        if (n > 0) {
            frame += n;
            len -= (size_t)n;
            if (fd >= 0) close(fd);
            fd = -1;
        }
        if (!len) return;
    }
    struct outbuf *b = malloc(sizeof *b + len);
    if (!b) {
        if (fd >= 0) close(fd);
        client_close(c, "out of memory for a reply");
        return;
    }
    memcpy(b->data, frame, len);
    b->len = len;
    b->off = 0;
    b->fd = fd;
    b->next = NULL;
    if (c->wq_tail) c->wq_tail->next = b;
    else c->wq_head = b;
    c->wq_tail = b;
    c->wq_bytes += len;
    if (client_flush(c) < 0) client_close(c, "the peer stopped reading");
}

/* Queues a reply (obj is consumed). */
void client_send(struct client *c, cJSON *obj) { client_send_fd(c, obj, -1); }

/* Queues a reply with fd attached (obj consumed, fd the daemon's copy: closed once sent). */
void client_send_fd(struct client *c, cJSON *obj, int fd)
{
    size_t len = 0;
    char *frame = proto_frame(obj, &len);
    if (frame) client_send_frame_fd(c, frame, len, fd);
    else if (fd >= 0) close(fd);
    free(frame);
}

/* Error messages name what the client sent (an op, a device id, a key): the log gets them
 * quoted and escaped (proto_quote), so no request can write a line of its own there. */
void send_error(struct client *c, const cJSON *id, int code, const char *message)
{
    char q[700];
    proto_quote(q, sizeof q, message, strlen(message));
    logmsg(c->srv, LOG_INFO, "client=%llu error %s: %s", (unsigned long long)c->id, dropblock_error_name(code), q);
    client_send(c, proto_error(id, code, message));
}

/* ---------------------------------------------------------------- clients: lifecycle */
void client_free_if_done(struct client *c)
{
    if (!c->closed || c->handle_open || c->jobs_inflight) return;
    free(c->rbuf);
    free(c);
}

static void on_client_closed(uv_handle_t *h)
{
    struct client *c = h->data;
    close(c->fd);
    c->handle_open = 0;
    client_free_if_done(c);
}

void client_close(struct client *c, const char *why)
{
    if (c->closed) return;
    struct server *s = c->srv;
    c->closed = 1;
    logmsg(s, LOG_INFO, "client=%llu disconnected (%s)", (unsigned long long)c->id, why);
    if (c->prev) c->prev->next = c->next;
    else s->clients = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nclients--;
    for (int i = 0; i < c->nfds; i++) close(c->fds[i]);
    c->nfds = 0;
    while (c->wq_head) {
        struct outbuf *b = c->wq_head;
        c->wq_head = b->next;
        if (b->fd >= 0) close(b->fd);
        free(b);
    }
    c->wq_tail = NULL;
    s->nregions -= c->regions.count;
    s->use.clients--;
    s->use.regions -= c->regions.count - c->device_regions; /* (device regions map nothing) */
    s->use.mapped -= c->mapped;
    s->device_bytes -= c->device_bytes;
    c->use->clients--;
    c->use->regions -= c->regions.count - c->device_regions;
    c->use->mapped -= c->mapped;
    quota_uid_release(&s->use, c->use);
    c->use = NULL;
    region_table_clear(&c->regions); /* jobs still running hold their own references */
    client_semaphores_clear(c);      /* (and of these) */
    db_engine_sweep(s->engine);      /* idle devices let go of the regions' imports now */
    for (struct job *j = c->jobs; j; j = j->cnext) atomic_store(&j->cancelled, 1);
    uv_poll_stop(&c->poll);
    uv_close((uv_handle_t *)&c->poll, on_client_closed);
}

/* A frame we cannot recover from: one error with id null, then the connection goes. */
static void protocol_fatal(struct client *c, const char *message)
{
    send_error(c, NULL, DROPBLOCK_EINVAL, message);
    client_flush(c);
    client_close(c, message);
}

/* ---------------------------------------------------------------- clients: reading */
/* The descriptors that came with a read, onto c's pending ones; -1 when the connection went. */
static int take_fds(struct client *c, struct msghdr *mh)
{
    int overflow = 0, got = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        got += k;
        int *fds = (int *)CMSG_DATA(cm);
        for (int i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, &fds[i], sizeof fd);
            if (c->nfds < MAX_PENDING_FDS) c->fds[c->nfds++] = fd;
            else {
                close(fd);
                overflow = 1;
            }
        }
    }
    if (mh->msg_flags & MSG_CTRUNC) {
        /* room for MAX_PENDING_FDS and fewer came: the kernel could not install them here
         * (the daemon's descriptor table is full), which is not the peer's doing */
        if (got < MAX_PENDING_FDS) {
            logmsg(c->srv, LOG_ERROR,
                   "client=%llu: descriptors sent with a frame were lost: the daemon is out of "
                   "file descriptors",
                   (unsigned long long)c->id);
            send_error(c, NULL, DROPBLOCK_EEXHAUSTED,
                       "dropblockd could not receive the descriptors sent with a "
                       "frame: it is out of file descriptors (its limits should prevent this; please report it)");
            client_flush(c);
            client_close(c, "descriptors lost: the daemon is out of file descriptors");
        } else {
            protocol_fatal(c, "ancillary data truncated: more than 16 descriptors sent with one frame");
        }
        return -1;
    }
    if (overflow) {
        protocol_fatal(c, "more than 16 descriptors waiting unclaimed");
        return -1;
    }
    return 0;
}

static void client_read(struct client *c)
{
    while (!c->closed && c->wq_bytes <= MAX_QUEUED_REPLY_BYTES) {
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int) * MAX_PENDING_FDS)];
        } ctl;
        struct iovec iov = {c->rbuf + c->rlen, RBUF_CAP - c->rlen};
        struct msghdr mh = {0};
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof ctl.buf;
        ssize_t n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            client_close(c, strerror(errno));
            return;
        }
        /* collect descriptors first, so every path below can close them */
        if (take_fds(c, &mh)) return;
        if (n == 0) {
            client_close(c, "end of stream");
            return;
        }
        c->rlen += (size_t)n;
        size_t pos = 0;
        uint32_t flen = 0;
        int st;
        while (!c->closed && (st = proto_frame_peek(c->rbuf + pos, c->rlen - pos, &flen)) != PROTO_FRAME_MORE) {
            if (st == PROTO_FRAME_BAD) {
                char m[128];
                snprintf(m, sizeof m, "frame length %u: must be 1 to %u bytes", flen, PROTO_MAX_FRAME);
                protocol_fatal(c, m);
                return;
            }
            handle_frame(c, (const char *)c->rbuf + pos + 4, flen);
            pos += 4 + (size_t)flen;
        }
        if (c->closed) return;
        memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
        c->rlen -= pos;
        /* a read that did not fill the buffer took all there was: the poll is level-triggered
         * and reports the socket again when more comes, so no second recvmsg just to see
         * EAGAIN (one syscall fewer per request) */
        if ((size_t)n < iov.iov_len) return;
    }
}

static void on_client_io(uv_poll_t *h, int status, int events)
{
    struct client *c = h->data;
    if (status < 0) {
        client_close(c, uv_strerror(status));
        return;
    }
    if (events & UV_WRITABLE && client_flush(c) < 0) {
        client_close(c, "the peer stopped reading");
        return;
    }
    if (events & UV_READABLE) client_read(c);
}

/* ---------------------------------------------------------------- accepting */
static int gid_allowed(const struct server *s, gid_t gid)
{
    for (int i = 0; i < s->n_allow_gid; i++)
        if (s->allow_gid[i] == gid) return 1;
    return 0;
}

/* The peer's uid, its primary gid, or (Linux >= 4.13, SO_PEERGROUPS) any of its supplementary
 * groups as they were at connect(): a member of an --allow-gid group is let in whatever its
 * primary group, as the socket file's group permission lets it reach the socket. */
static int allowed(struct server *s, int fd, uid_t uid, gid_t gid)
{
    for (int i = 0; i < s->n_allow_uid; i++)
        if (s->allow_uid[i] == uid) return 1;
    if (gid_allowed(s, gid)) return 1;
#ifdef SO_PEERGROUPS
    gid_t small[64], *g = small;
    socklen_t len = sizeof small;
    int rc = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len);
    if (rc < 0 && errno == ERANGE && len > sizeof small && (g = malloc(len)) != NULL)
        rc = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len);
    int ok = 0;
    if (rc == 0 && g)
        for (size_t i = 0; i < len / sizeof *g && !ok; i++) ok = gid_allowed(s, g[i]);
    if (g != small) free(g);
    return ok;
#else
    (void)fd;
    return 0;
#endif
}

static void on_accept_resume(uv_timer_t *t);

/* One error frame to a connection the daemon will not serve, then it is closed. */
static void refuse(struct server *s, int fd, int code, const char *m, const char *who)
{
    size_t len = 0;
    char *f = proto_frame(proto_error(NULL, code, m), &len);
    if (f) {
        ssize_t w = send(fd, f, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
        free(f);
    }
    close(fd);
    logmsg(s, LOG_WARN, "refused %s: %s", who, m);
}

/* A client for the accepted, admitted connection fd, polled for reading; refused when out of memory. */
static void add_client(struct server *s, int fd, const struct ucred *cr, struct uid_use *use, const char *who)
{
    struct client *c = calloc(1, sizeof *c);
    unsigned char *rbuf = malloc(RBUF_CAP);
    if (!c || !rbuf || uv_poll_init(s->loop, &c->poll, fd)) {
        free(c);
        free(rbuf);
        refuse(s, fd, DROPBLOCK_EEXHAUSTED, "dropblockd is out of memory accepting a connection", who);
        quota_uid_release(&s->use, use);
        return;
    }
    c->use = use;
    use->clients++;
    s->use.clients++;
    c->srv = s;
    c->fd = fd;
    c->rbuf = rbuf;
    c->id = ++s->next_client_id;
    c->uid = cr->uid;
    c->gid = cr->gid;
    c->pid = cr->pid;
    c->poll.data = c;
    c->handle_open = 1;
    c->next = s->clients;
    if (s->clients) s->clients->prev = c;
    s->clients = c;
    s->nclients++;
    c->want_write = UV_READABLE;
    uv_poll_start(&c->poll, UV_READABLE, on_client_io);
    logmsg(s, LOG_INFO, "client=%llu connected (pid %d, uid %u)", (unsigned long long)c->id, (int)cr->pid,
           (unsigned)cr->uid);
}

void on_listen(uv_poll_t *h, int status, int events)
{
    struct server *s = h->data;
    (void)events;
    if (status < 0 || s->shutting_down) return;
    for (;;) {
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && errno == EMFILE && s->reserve_fd >= 0) {
            /* the limits leave descriptors free, but should something else have taken them, the
             * reserve lets the daemon still tell the peer why instead of leaving it waiting */
            close(s->reserve_fd);
            fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0)
                refuse(s, fd, DROPBLOCK_EEXHAUSTED, "dropblockd is out of file descriptors; try again later",
                       "a connection");
            s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (fd >= 0) continue;
            errno = EMFILE;
        }
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* out of descriptors: pause accepting instead of spinning on a readable socket */
                logmsg(s, LOG_WARN, "accept: %s; pausing new connections for 200 ms", strerror(errno));
                uv_poll_stop(&s->listen_poll);
                uv_timer_start(&s->accept_pause, on_accept_resume, 200, 0);
            }
            return;
        }
        struct ucred cr;
        socklen_t cl = sizeof cr;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0) {
            close(fd);
            continue;
        }
        char who[64], m[200];
        snprintf(who, sizeof who, "peer pid %d uid %u", (int)cr.pid, (unsigned)cr.uid);
        if (!allowed(s, fd, cr.uid, cr.gid)) {
            snprintf(m, sizeof m, "uid %u / gid %u is not allowed to use this daemon (see --allow-uid, --allow-gid)",
                     (unsigned)cr.uid, (unsigned)cr.gid);
            refuse(s, fd, DROPBLOCK_EPERM, m, who);
            continue;
        }
        struct uid_use *use = quota_uid(&s->use, cr.uid);
        int code = use ? quota_check_client(&s->lim, &s->use, use, m, sizeof m) : DROPBLOCK_EEXHAUSTED;
        if (code) {
            if (!use) snprintf(m, sizeof m, "dropblockd is out of memory accepting a connection");
            refuse(s, fd, code, m, who);
            quota_uid_release(&s->use, use);
            continue;
        }
        add_client(s, fd, &cr, use, who);
    }
}

static void on_accept_resume(uv_timer_t *t)
{
    struct server *s = t->data;
    if (!s->shutting_down) uv_poll_start(&s->listen_poll, UV_READABLE, on_listen);
}
