/* server.c: dropblockd: the libuv loop, the listening socket, client connections and framing,
 * the ops of protocol v1 (docs/protocol.md) and graceful shutdown. The loop thread only reads,
 * validates and replies; jobs run on per-device workers (jobs.c). */
#include <dropblock/dropblock.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "clock.h"
#include "dropblock_version.h"
#include "engine.h"
#include "jobs.h"
#include "msg.h"
#include "quota.h"
#include "protocol.h"
#include "regions.h"

#define MAX_PENDING_FDS QUOTA_PENDING_FDS
#define RBUF_CAP (4 + PROTO_MAX_FRAME)
#define MAX_ALLOW 32
/* Replies queued for a client that is not reading: past this, the daemon stops reading its
 * requests until they drain (backpressure instead of memory growth). */
#define MAX_QUEUED_REPLY_BYTES (1u << 20)
/* Idle this long after its last job, the daemon gives free heap memory back to the kernel. */
#define IDLE_TRIM_MS 100

enum { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };
/* Where the small-job threshold came from (the status reply's small_jobs.source). */
enum { SMALL_MEASURED, SMALL_OPTION, SMALL_FALLBACK, SMALL_AUTO /* not yet measured */ };
static const char *const small_sources[] = {"measured", "option", "fallback"};
/* --small-job-bytes auto: the ladder's time at start-up, and the threshold when there is
 * nothing to measure (the default device is the built-in CPU backend: the bound on the jobs run
 * inline on the loop thread). */
#define SMALL_BUDGET_US 1000000
#define SMALL_FALLBACK_BYTES SJ_DEFAULT_BYTES
static const char *const level_names[] = {"error", "warn", "info", "debug"};

struct outbuf {
    struct outbuf *next;
    size_t len, off;
    char data[];
};

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
    uint64_t mapped;      /* bytes of its regions */
    struct uid_use *use;  /* its uid's share of the daemon's limits */
    struct job *jobs; /* in flight (queued or running), linked by cprev/cnext */
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
    struct quota lim;           /* connections, regions and mapped bytes, in total and per uid */
    struct quota_machine machine;
    struct quota_use use;
    int reserve_fd;              /* /dev/null, given up to accept and refuse when out of descriptors */
    uint64_t small_job_bytes;
    int small_source; /* SMALL_* */
    struct jobs_small small;
    uid_t allow_uid[MAX_ALLOW];
    gid_t allow_gid[MAX_ALLOW];
    int n_allow_uid, n_allow_gid;
    /* state and counters */
    uint64_t inflight_jobs, inflight_bytes;
    uint64_t submitted, completed, failed, rejected, nregions;
};

/* ---------------------------------------------------------------- logging */
static void logmsg(struct server *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void logmsg(struct server *s, int level, const char *fmt, ...)
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

static void engine_log(void *ctx, const char *line) { logmsg(ctx, LOG_WARN, "engine %s", line); }

/* ---------------------------------------------------------------- clients: writing */
static void client_close(struct client *c, const char *why);
static void maybe_finish_shutdown(struct server *s);

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

static int client_flush(struct client *c)
{
    int rc = 0;
    while (c->wq_head) {
        struct outbuf *b = c->wq_head;
        ssize_t n = send(c->fd, b->data + b->off, b->len - b->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) rc = -1;
            break;
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
static void client_send_frame(struct client *c, const char *frame, size_t len)
{
    if (c->closed) return;
    if (!c->wq_head) {
        /* nothing queued: straight to the socket, no copy (the common case of a reply) */
        ssize_t n;
        do n = send(c->fd, frame, len, MSG_NOSIGNAL | MSG_DONTWAIT); while (n < 0 && errno == EINTR);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { client_close(c, "the peer stopped reading"); return; }
        if (n > 0) { frame += n; len -= (size_t)n; }
        if (!len) return;
    }
    struct outbuf *b = malloc(sizeof *b + len);
    if (!b) { client_close(c, "out of memory for a reply"); return; }
    memcpy(b->data, frame, len);
    b->len = len;
    b->off = 0;
    b->next = NULL;
    if (c->wq_tail) c->wq_tail->next = b; else c->wq_head = b;
    c->wq_tail = b;
    c->wq_bytes += len;
    if (client_flush(c) < 0) client_close(c, "the peer stopped reading");
}

/* Queues a reply (obj is consumed). */
static void client_send(struct client *c, cJSON *obj)
{
    size_t len = 0;
    char *frame = proto_frame(obj, &len);
    if (frame) client_send_frame(c, frame, len);
    free(frame);
}

/* Error messages name what the client sent (an op, a device id, a key): the log gets them
 * quoted and escaped (proto_quote), so no request can write a line of its own there. */
static void send_error(struct client *c, const cJSON *id, int code, const char *message)
{
    char q[700];
    proto_quote(q, sizeof q, message, strlen(message));
    logmsg(c->srv, LOG_INFO, "client=%llu error %s: %s", (unsigned long long)c->id, dropblock_error_name(code), q);
    client_send(c, proto_error(id, code, message));
}

/* ---------------------------------------------------------------- clients: lifecycle */
static void client_free_if_done(struct client *c)
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

static void client_close(struct client *c, const char *why)
{
    if (c->closed) return;
    struct server *s = c->srv;
    c->closed = 1;
    logmsg(s, LOG_INFO, "client=%llu disconnected (%s)", (unsigned long long)c->id, why);
    if (c->prev) c->prev->next = c->next; else s->clients = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nclients--;
    for (int i = 0; i < c->nfds; i++) close(c->fds[i]);
    c->nfds = 0;
    while (c->wq_head) {
        struct outbuf *b = c->wq_head;
        c->wq_head = b->next;
        free(b);
    }
    c->wq_tail = NULL;
    s->nregions -= c->regions.count;
    s->use.clients--;
    s->use.regions -= c->regions.count;
    s->use.mapped -= c->mapped;
    c->use->clients--;
    c->use->regions -= c->regions.count;
    c->use->mapped -= c->mapped;
    quota_uid_release(&s->use, c->use);
    c->use = NULL;
    region_table_clear(&c->regions); /* jobs still running hold their own references */
    for (struct job *j = c->jobs; j; j = j->cnext) atomic_store(&j->cancelled, 1);
    uv_poll_stop(&c->poll);
    uv_close((uv_handle_t *)&c->poll, on_client_closed);
}

static void on_job_done(struct job *j, void *ctx);

/* ---------------------------------------------------------------- ops */
static void op_hello(struct client *c, const cJSON *id, int with_limits)
{
    struct server *s = c->srv;
    cJSON *r = proto_reply(id, 1);
    if (with_limits) {
        cJSON_AddNumberToObject(r, "protocol", PROTO_VERSION);
        cJSON_AddStringToObject(r, "version", DROPBLOCK_VERSION_STRING);
        cJSON *l = cJSON_AddObjectToObject(r, "limits");
        proto_add_u64(l, "max_frame", PROTO_MAX_FRAME);
        proto_add_u64(l, "max_inflight_jobs", s->max_jobs);
        proto_add_u64(l, "max_client_jobs", s->max_client_jobs);
        proto_add_u64(l, "max_inflight_bytes", s->max_bytes);
        proto_add_u64(l, "max_client_bytes", s->max_client_bytes);
        proto_add_u64(l, "max_regions", s->max_regions);
        proto_add_u64(l, "max_region_bytes", s->lim.max_region_bytes);
        proto_add_u64(l, "max_clients", s->lim.max_clients);
        proto_add_u64(l, "max_uid_clients", s->lim.max_uid_clients);
        proto_add_u64(l, "max_total_regions", s->lim.max_total_regions);
        proto_add_u64(l, "max_uid_regions", s->lim.max_uid_regions);
        proto_add_u64(l, "max_mapped_bytes", s->lim.max_mapped_bytes);
        proto_add_u64(l, "max_uid_mapped_bytes", s->lim.max_uid_mapped_bytes);
    }
    cJSON *devs = cJSON_AddArrayToObject(r, "devices");
    for (size_t i = 0; i < db_engine_device_count(s->engine); i++) {
        dropblock_device_info info;
        db_engine_device_info(s->engine, i, &info);
        cJSON_AddItemToArray(devs, proto_device_json(&info));
    }
    client_send(c, r);
}

static void op_status(struct client *c, const cJSON *id)
{
    struct server *s = c->srv;
    cJSON *r = proto_reply(id, 1);
    cJSON_AddNumberToObject(r, "uptime_s", (double)(db_now_us() - s->t_start) / 1e6);
    proto_add_u64(r, "clients", s->nclients);
    proto_add_u64(r, "regions", s->nregions);
    proto_add_u64(r, "mapped_bytes", s->use.mapped);
    uint64_t nuids = 0;
    for (const struct uid_use *e = s->use.uids; e; e = e->next) nuids++;
    proto_add_u64(r, "uids", nuids);
    cJSON *jo = cJSON_AddObjectToObject(r, "jobs");
    uint64_t queued = 0, running = 0;
    cJSON *devs = cJSON_CreateArray();
    for (int i = 0; i < jobs_device_count(s->jobs); i++) {
        struct jobs_device_stats st;
        jobs_stats(s->jobs, i, &st);
        queued += st.queued;
        running += st.running;
        cJSON *d = cJSON_CreateObject();
        cJSON_AddStringToObject(d, "id", db_engine_device(s->engine, (size_t)i)->id);
        char why[256];
        int healthy = db_engine_healthy(s->engine, (size_t)i, why, sizeof why);
        cJSON_AddBoolToObject(d, "healthy", healthy);
        if (!healthy) cJSON_AddStringToObject(d, "unhealthy_reason", why);
        proto_add_u64(d, "queued", st.queued);
        proto_add_u64(d, "running", st.running);
        char pass[64];
        db_engine_progress(s->engine, (size_t)i, pass, sizeof pass);
        if (pass[0]) cJSON_AddStringToObject(d, "pass", pass); /* what its running job is doing */
        proto_add_u64(d, "completed", st.completed);
        proto_add_u64(d, "failed", st.failed);
        proto_add_u64(d, "busy_us", st.busy_us);
        proto_add_u64(d, "bytes", st.bytes);
        cJSON_AddNumberToObject(d, "throughput_gbps", st.busy_us ? (double)st.bytes / (double)st.busy_us / 1e3 : 0.0);
        cJSON_AddItemToArray(devs, d);
    }
    proto_add_u64(jo, "submitted", s->submitted);
    proto_add_u64(jo, "completed", s->completed);
    proto_add_u64(jo, "failed", s->failed);
    proto_add_u64(jo, "rejected", s->rejected);
    proto_add_u64(jo, "queued", queued);
    proto_add_u64(jo, "running", running);
    proto_add_u64(r, "inflight_bytes", s->inflight_bytes);
    cJSON *sj = cJSON_AddObjectToObject(r, "small_jobs");
    proto_add_u64(sj, "max_bytes", s->small_job_bytes);
    cJSON_AddStringToObject(sj, "source", small_sources[s->small_source]);
    if (s->small_source == SMALL_MEASURED) {
        cJSON_AddStringToObject(sj, "cpu", db_engine_device(s->engine, (size_t)s->small.cpu)->id);
        cJSON_AddStringToObject(sj, "device", db_engine_device(s->engine, (size_t)s->small.dev)->id);
        proto_add_u64(sj, "measure_us", s->small.elapsed_us);
        proto_add_u64(sj, "reps", (uint64_t)s->small.reps);
        cJSON *lad = cJSON_AddArrayToObject(sj, "ladder");
        for (int i = 0; lad && i < s->small.n; i++) {
            cJSON *g = cJSON_CreateObject();
            proto_add_u64(g, "bytes", s->small.ladder[i].bytes);
            cJSON_AddNumberToObject(g, "cpu_us", s->small.ladder[i].cpu_us);
            cJSON_AddNumberToObject(g, "device_us", s->small.ladder[i].dev_us);
            cJSON_AddItemToArray(lad, g);
        }
    }
    cJSON_AddItemToObject(r, "devices", devs);
    client_send(c, r);
}

static void op_register(struct client *c, const cJSON *id, int fd)
{
    struct server *s = c->srv;
    char msg[256];
    int code;
    if (c->regions.count >= s->max_regions) {
        close(fd);
        snprintf(msg, sizeof msg, "region.register: this connection already has %llu regions (the limit)",
                 (unsigned long long)s->max_regions);
        send_error(c, id, DROPBLOCK_EEXHAUSTED, msg);
        return;
    }
    /* the size first (region_map says what is wrong with a descriptor that has none) */
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
        (code = quota_check_region(&s->lim, &s->use, c->use, (uint64_t)st.st_size, msg, sizeof msg))) {
        close(fd);
        send_error(c, id, code, msg);
        return;
    }
    uint32_t rid = ++c->regions.next_id;
    struct region *r = region_map(fd, rid, s->lim.max_region_bytes, &code, msg, sizeof msg);
    if (!r) { send_error(c, id, code, msg); return; }
    if (region_table_add(&c->regions, r)) {
        region_unref(r);
        send_error(c, id, DROPBLOCK_EEXHAUSTED, "region.register: out of memory");
        return;
    }
    s->nregions++;
    s->use.regions++;
    s->use.mapped += r->size;
    c->use->regions++;
    c->use->mapped += r->size;
    c->mapped += r->size;
    logmsg(s, LOG_DEBUG, "client=%llu region %u registered (%llu bytes%s)", (unsigned long long)c->id, rid,
           (unsigned long long)r->size, r->writable ? "" : ", read-only");
    cJSON *o = proto_reply(id, 1);
    proto_add_u64(o, "region", rid);
    proto_add_u64(o, "size", r->size);
    client_send(c, o);
}

static void op_unregister(struct client *c, const cJSON *id, const cJSON *req)
{
    char msg[256];
    uint64_t rid;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(req, "region");
    if (!it) { send_error(c, id, DROPBLOCK_EINVAL, "region: missing"); return; }
    if (proto_get_u64(it, "region", &rid, msg, sizeof msg)) { send_error(c, id, DROPBLOCK_EINVAL, msg); return; }
    struct region *r = rid > UINT32_MAX ? NULL : region_table_find(&c->regions, (uint32_t)rid);
    uint64_t size = r ? r->size : 0;
    if (!r || region_table_remove(&c->regions, (uint32_t)rid)) {
        snprintf(msg, sizeof msg, "region %llu: not registered on this connection", (unsigned long long)rid);
        send_error(c, id, DROPBLOCK_ENOTFOUND, msg);
        return;
    }
    struct server *s = c->srv;
    s->nregions--;
    s->use.regions--;
    s->use.mapped -= size;
    c->use->regions--;
    c->use->mapped -= size;
    c->mapped -= size;
    client_send(c, proto_reply(id, 1));
}

/* Resolves a tensor reference to a pointer inside the client's region, checking bounds. */
static int resolve(struct client *c, const char *what, const struct proto_tensor *t, uint64_t bytes, int write,
                   struct region **out, uint8_t **ptr, char *msg, size_t len)
{
    struct region *r = region_table_find(&c->regions, t->region);
    if (!r) {
        db_msg(msg, len, "%s.region %u: not registered on this connection", what, t->region);
        return DROPBLOCK_ENOTFOUND;
    }
    if (!region_contains(r, t->offset, bytes)) {
        db_msg(msg, len, "%s: offset %llu + %llu bytes exceeds region %u's %llu bytes", what,
               (unsigned long long)t->offset, (unsigned long long)bytes, t->region, (unsigned long long)r->size);
        return DROPBLOCK_ERANGE;
    }
    if (write && !r->writable) {
        db_msg(msg, len, "%s.region %u is read-only (sealed against writes or registered read-only)", what, t->region);
        return DROPBLOCK_EINVAL;
    }
    *out = r;
    *ptr = r->base + t->offset;
    return DROPBLOCK_OK;
}

static int overlaps(const uint8_t *a, uint64_t na, const uint8_t *b, uint64_t nb)
{
    return a < b + nb && b < a + na;
}

static void op_job(struct client *c, const cJSON *id, const cJSON *req)
{
    struct server *s = c->srv;
    char msg[256];
    struct proto_job pj;
    int rc = proto_parse_job(req, &pj, msg, sizeof msg);
    if (rc) { s->rejected++; send_error(c, id, rc, msg); return; }
    if (s->shutting_down) {
        s->rejected++;
        send_error(c, id, DROPBLOCK_EUNAVAILABLE, "the daemon is shutting down");
        return;
    }
    uint64_t tb = dropblock_tensor_bytes(&pj.p), mb = dropblock_mask_bytes(&pj.p);
    int dev = jobs_pick(s->jobs, pj.device, tb + mb, msg, sizeof msg);
    if (dev < 0) { s->rejected++; send_error(c, id, dev, msg); return; }
    struct region *rin, *rout, *rmask = NULL;
    uint8_t *in, *out, *mask = NULL;
    if ((rc = resolve(c, "input", &pj.input, tb, 0, &rin, &in, msg, sizeof msg)) ||
        (rc = resolve(c, "output", &pj.output, tb, 1, &rout, &out, msg, sizeof msg)) ||
        (pj.mask.present && (rc = resolve(c, "mask", &pj.mask, mb, 1, &rmask, &mask, msg, sizeof msg)))) {
        s->rejected++;
        send_error(c, id, rc, msg);
        return;
    }
    /* the chunked backends read each piece of x before writing that piece of y: in place works,
     * a shifted overlap would read values already overwritten */
    if (in != out && overlaps(in, tb, out, tb)) {
        s->rejected++;
        send_error(c, id, DROPBLOCK_EINVAL, "output: overlaps the input without being the same bytes (in place needs output = input)");
        return;
    }
    if (mask && (overlaps(mask, mb, in, tb) || overlaps(mask, mb, out, tb))) {
        s->rejected++;
        send_error(c, id, DROPBLOCK_EINVAL, "mask: overlaps the input or output tensor");
        return;
    }
    uint64_t bytes = tb + (out != in ? tb : 0) + (mask ? mb : 0);
    if (c->jobs_inflight >= s->max_client_jobs || s->inflight_jobs >= s->max_jobs) {
        s->rejected++;
        snprintf(msg, sizeof msg, "too many jobs in flight (%s limit %llu); wait for replies and retry",
                 c->jobs_inflight >= s->max_client_jobs ? "per-client" : "daemon",
                 (unsigned long long)(c->jobs_inflight >= s->max_client_jobs ? s->max_client_jobs : s->max_jobs));
        send_error(c, id, DROPBLOCK_EEXHAUSTED, msg);
        return;
    }
    if (c->bytes_inflight + bytes > s->max_client_bytes || s->inflight_bytes + bytes > s->max_bytes) {
        s->rejected++;
        snprintf(msg, sizeof msg, "%llu more bytes in flight would pass the %s limit of %llu bytes",
                 (unsigned long long)bytes, c->bytes_inflight + bytes > s->max_client_bytes ? "per-client" : "daemon",
                 (unsigned long long)(c->bytes_inflight + bytes > s->max_client_bytes ? s->max_client_bytes : s->max_bytes));
        send_error(c, id, DROPBLOCK_EEXHAUSTED, msg);
        return;
    }
    struct job *j = calloc(1, sizeof *j);
    char *idtext = cJSON_PrintUnformatted(id); /* the id alone (number or string), as JSON */
    if (!j || !idtext) {
        free(j);
        cJSON_free(idtext);
        send_error(c, id, DROPBLOCK_EEXHAUSTED, "out of memory for the job");
        return;
    }
    j->client = c;
    j->id_json = idtext;
    j->seq = ++s->next_job_seq;
    j->p = pj.p;
    j->rin = rin; region_ref(rin);
    j->rout = rout; region_ref(rout);
    if (rmask) { j->rmask = rmask; region_ref(rmask); }
    j->in = in; j->out = out; j->mask = mask;
    j->dev = dev;
    j->bytes = bytes;
    j->t_submit = db_now_us();
    atomic_init(&j->cancelled, 0);
    /* the client's in-flight list has its own links: job->next belongs to the queues */
    j->cnext = c->jobs;
    if (c->jobs) c->jobs->cprev = j;
    c->jobs = j;
    c->jobs_inflight++;
    c->bytes_inflight += bytes;
    s->inflight_jobs++;
    s->inflight_bytes += bytes;
    s->submitted++;
    char qid[160];
    if (cJSON_IsString(id)) proto_quote(qid, sizeof qid, id->valuestring, strlen(id->valuestring));
    else snprintf(qid, sizeof qid, "%s", j->id_json);
    logmsg(s, LOG_DEBUG, "client=%llu job=%llu id=%s queued on %s", (unsigned long long)c->id,
           (unsigned long long)j->seq, qid, db_engine_device(s->engine, (size_t)dev)->id);
    if (jobs_run_inline(s->jobs, j)) on_job_done(j, s);
    else jobs_submit(s->jobs, j);
}

static void begin_shutdown(struct server *s, const char *why);

static void handle_frame(struct client *c, const char *data, size_t len)
{
    struct server *s = c->srv;
    char msg[256];
    /* one JSON object, strings valid UTF-8 without NUL, no duplicate keys, a valid envelope;
     * the error echoes the id only where it is an acceptable one and not itself the problem */
    cJSON *req = NULL;
    const cJSON *id = NULL;
    const char *op = NULL;
    int rc = proto_open_request(data, len, &req, &id, &op, msg, sizeof msg);
    if (rc) {
        send_error(c, id, rc, msg);
        cJSON_Delete(req);
        return;
    }
    /* descriptors: take what the request declares, before anything else can fail */
    uint64_t nfds = 0;
    const cJSON *fdsit = cJSON_GetObjectItemCaseSensitive(req, "fds");
    if (fdsit && (proto_get_u64(fdsit, "fds", &nfds, msg, sizeof msg) || nfds > MAX_PENDING_FDS)) {
        if (nfds > MAX_PENDING_FDS) snprintf(msg, sizeof msg, "fds %llu: at most %d", (unsigned long long)nfds, MAX_PENDING_FDS);
        send_error(c, id, DROPBLOCK_EINVAL, msg);
        cJSON_Delete(req);
        return;
    }
    int taken[MAX_PENDING_FDS], ntaken = 0;
    if (nfds > (uint64_t)c->nfds) {
        snprintf(msg, sizeof msg, "fds: %llu declared, %d received with the frame (send them as SCM_RIGHTS on its first byte)",
                 (unsigned long long)nfds, c->nfds);
        for (int i = 0; i < c->nfds; i++) close(c->fds[i]);
        c->nfds = 0;
        send_error(c, id, DROPBLOCK_EINVAL, msg);
        cJSON_Delete(req);
        return;
    }
    for (uint64_t i = 0; i < nfds; i++) taken[ntaken++] = c->fds[i];
    memmove(c->fds, c->fds + nfds, (size_t)(c->nfds - (int)nfds) * sizeof *c->fds);
    c->nfds -= (int)nfds;

    int expect_fds = !strcmp(op, "region.register") ? 1 : 0;
    if (ntaken != expect_fds) {
        for (int i = 0; i < ntaken; i++) close(taken[i]);
        snprintf(msg, sizeof msg, "%s takes %d descriptor%s (\"fds\": %d), the request declares %d", op, expect_fds,
                 expect_fds == 1 ? "" : "s", expect_fds, ntaken);
        send_error(c, id, DROPBLOCK_EINVAL, msg);
        cJSON_Delete(req);
        return;
    }
    if (!strcmp(op, "dropblock2d")) op_job(c, id, req);
    else if (!strcmp(op, "region.register")) op_register(c, id, taken[0]);
    else if (!strcmp(op, "region.unregister")) op_unregister(c, id, req);
    else if (!strcmp(op, "hello")) op_hello(c, id, 1);
    else if (!strcmp(op, "devices")) op_hello(c, id, 0);
    else if (!strcmp(op, "status")) op_status(c, id);
    else if (!strcmp(op, "shutdown")) {
        if (c->uid != getuid()) {
            snprintf(msg, sizeof msg, "shutdown: only uid %u (the daemon's) may stop it; you are uid %u",
                     (unsigned)getuid(), (unsigned)c->uid);
            send_error(c, id, DROPBLOCK_EPERM, msg);
        } else {
            client_send(c, proto_reply(id, 1));
            char why[64];
            snprintf(why, sizeof why, "shutdown requested by client %llu", (unsigned long long)c->id);
            begin_shutdown(s, why);
        }
    } else {
        snprintf(msg, sizeof msg, "op \"%.40s\": unknown (ops: hello, devices, status, region.register, "
                 "region.unregister, dropblock2d, shutdown)", op);
        send_error(c, id, DROPBLOCK_ENOTFOUND, msg);
    }
    cJSON_Delete(req);
}

/* A frame we cannot recover from: one error with id null, then the connection goes. */
static void protocol_fatal(struct client *c, const char *message)
{
    send_error(c, NULL, DROPBLOCK_EINVAL, message);
    client_flush(c);
    client_close(c, message);
}

/* ---------------------------------------------------------------- clients: reading */
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
        int overflow = 0, got = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
            int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            got += k;
            int *fds = (int *)CMSG_DATA(cm);
            for (int i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, &fds[i], sizeof fd);
                if (c->nfds < MAX_PENDING_FDS) c->fds[c->nfds++] = fd;
                else { close(fd); overflow = 1; }
            }
        }
        if (mh.msg_flags & MSG_CTRUNC) {
            /* room for MAX_PENDING_FDS and fewer came: the kernel could not install them here
             * (the daemon's descriptor table is full), which is not the peer's doing */
            if (got < MAX_PENDING_FDS) {
                logmsg(c->srv, LOG_ERROR, "client=%llu: descriptors sent with a frame were lost: the daemon is out of "
                       "file descriptors", (unsigned long long)c->id);
                send_error(c, NULL, DROPBLOCK_EEXHAUSTED, "dropblockd could not receive the descriptors sent with a "
                           "frame: it is out of file descriptors (its limits should prevent this; please report it)");
                client_flush(c);
                client_close(c, "descriptors lost: the daemon is out of file descriptors");
            } else {
                protocol_fatal(c, "ancillary data truncated: more than 16 descriptors sent with one frame");
            }
            return;
        }
        if (overflow) { protocol_fatal(c, "more than 16 descriptors waiting unclaimed"); return; }
        if (n == 0) { client_close(c, "end of stream"); return; }
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
    if (status < 0) { client_close(c, uv_strerror(status)); return; }
    if (events & UV_WRITABLE && client_flush(c) < 0) { client_close(c, "the peer stopped reading"); return; }
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
    if (f) { ssize_t w = send(fd, f, len, MSG_NOSIGNAL | MSG_DONTWAIT); (void)w; free(f); }
    close(fd);
    logmsg(s, LOG_WARN, "refused %s: %s", who, m);
}

static void on_listen(uv_poll_t *h, int status, int events)
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
            if (fd >= 0) refuse(s, fd, DROPBLOCK_EEXHAUSTED, "dropblockd is out of file descriptors; try again later",
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
        struct client *c = calloc(1, sizeof *c);
        unsigned char *rbuf = malloc(RBUF_CAP);
        if (!c || !rbuf || uv_poll_init(s->loop, &c->poll, fd)) {
            free(c); free(rbuf);
            refuse(s, fd, DROPBLOCK_EEXHAUSTED, "dropblockd is out of memory accepting a connection", who);
            quota_uid_release(&s->use, use);
            continue;
        }
        c->use = use;
        use->clients++;
        s->use.clients++;
        c->srv = s;
        c->fd = fd;
        c->rbuf = rbuf;
        c->id = ++s->next_client_id;
        c->uid = cr.uid;
        c->gid = cr.gid;
        c->pid = cr.pid;
        c->poll.data = c;
        c->handle_open = 1;
        c->next = s->clients;
        if (s->clients) s->clients->prev = c;
        s->clients = c;
        s->nclients++;
        c->want_write = UV_READABLE;
        uv_poll_start(&c->poll, UV_READABLE, on_client_io);
        logmsg(s, LOG_INFO, "client=%llu connected (pid %d, uid %u)", (unsigned long long)c->id, (int)cr.pid,
               (unsigned)cr.uid);
    }
}

static void on_accept_resume(uv_timer_t *t)
{
    struct server *s = t->data;
    if (!s->shutting_down) uv_poll_start(&s->listen_poll, UV_READABLE, on_listen);
}

/* ---------------------------------------------------------------- completions and shutdown */
/* Once no job has been in flight for IDLE_TRIM_MS, free heap memory goes back to the kernel
 * (see also the fixed mmap threshold in main); under load nothing changes. */
static void on_idle_trim(uv_timer_t *t)
{
    struct server *s = t->data;
    if (s->inflight_jobs) return;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

/* A job's success reply, written straight into its frame (proto_write_job_reply): no cJSON tree
 * built and printed on the loop thread for every job (the latency of small jobs). */
static void send_job_reply(struct client *c, const struct job *j, const char *dev)
{
    char frame[1024];
    size_t n = proto_write_job_reply(frame, sizeof frame, j->id_json, &j->res,
                                     j->t_start > j->t_submit ? j->t_start - j->t_submit : 0, dev);
    if (!n) {
        client_close(c, "a reply did not fit its buffer");
        return;
    }
    client_send_frame(c, frame, n);
}

static void on_job_done(struct job *j, void *ctx)
{
    struct server *s = ctx;
    struct client *c = j->client;
    if (j->cprev) j->cprev->cnext = j->cnext; else c->jobs = j->cnext;
    if (j->cnext) j->cnext->cprev = j->cprev;
    c->jobs_inflight--;
    c->bytes_inflight -= j->bytes;
    s->inflight_jobs--;
    s->inflight_bytes -= j->bytes;
    if (!s->inflight_jobs && !s->finished) uv_timer_start(&s->idle_trim, on_idle_trim, IDLE_TRIM_MS, 0);
    if (j->ran && !j->rc) s->completed++;
    else if (j->ran) s->failed++;
    const char *dev = db_engine_device(s->engine, (size_t)j->dev)->id;
    if (!c->closed) {
        cJSON *id = j->ran && !j->rc ? NULL : cJSON_Parse(j->id_json); /* errors only */
        if (!j->ran) {
            send_error(c, id, DROPBLOCK_EUNAVAILABLE, "the daemon is shutting down; the job was not started");
        } else if (j->rc) {
            send_error(c, id, j->rc, j->res.message);
        } else {
            send_job_reply(c, j, dev);
            logmsg(s, LOG_DEBUG, "client=%llu job=%llu done on %s in %llu us", (unsigned long long)c->id,
                   (unsigned long long)j->seq, dev, (unsigned long long)j->res.timing_us[3]);
        }
        cJSON_Delete(id);
    } else {
        logmsg(s, LOG_DEBUG, "client=%llu job=%llu %s; the reply is dropped (client gone)", (unsigned long long)c->id,
               (unsigned long long)j->seq, j->ran ? "finished" : "skipped");
    }
    region_unref(j->rin);
    region_unref(j->rout);
    region_unref(j->rmask);
    cJSON_free(j->id_json);
    free(j);
    client_free_if_done(c);
    if (s->shutting_down) maybe_finish_shutdown(s);
}

static void on_handle_closed(uv_handle_t *h) { (void)h; }

static void maybe_finish_shutdown(struct server *s)
{
    if (s->finished || s->inflight_jobs) return;
    s->finished = 1;
    while (s->clients) {
        client_flush(s->clients);
        client_close(s->clients, "daemon stopping");
    }
    jobs_stop(s->jobs);
    uv_close((uv_handle_t *)&s->sig_term, on_handle_closed);
    uv_close((uv_handle_t *)&s->sig_int, on_handle_closed);
    uv_close((uv_handle_t *)&s->accept_pause, on_handle_closed);
    uv_close((uv_handle_t *)&s->idle_trim, on_handle_closed);
    logmsg(s, LOG_INFO, "stopped");
}

static void begin_shutdown(struct server *s, const char *why)
{
    if (s->shutting_down) return;
    s->shutting_down = 1;
    logmsg(s, LOG_INFO, "shutting down (%s): no new connections; %llu jobs in flight", why,
           (unsigned long long)s->inflight_jobs);
    if (s->listening) {
        uv_poll_stop(&s->listen_poll);
        uv_close((uv_handle_t *)&s->listen_poll, on_handle_closed);
        s->listening = 0;
    }
    close(s->listen_fd);
    if (s->owns_socket) unlink(s->socket_path);
    uv_timer_stop(&s->accept_pause);
    uv_timer_stop(&s->idle_trim);
    /* queued jobs are answered `unavailable`; running ones finish and reply */
    struct job *q = jobs_take_queued(s->jobs);
    while (q) {
        struct job *next = q->next;
        q->ran = 0;
        on_job_done(q, s);
        q = next;
    }
    maybe_finish_shutdown(s);
}

static void on_signal(uv_signal_t *h, int signum)
{
    begin_shutdown(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---------------------------------------------------------------- socket setup */
static int mkdir_parents(const char *path, mode_t mode)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = 0;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(dir, mode) < 0 && errno != EEXIST) return -1;
    return 0;
}

/* The socket address of path; -1 (with a message) when it does not fit sun_path. */
static int socket_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path) {
        fprintf(stderr, "dropblockd: socket path too long (%zu bytes, at most %zu): %s\n", strlen(path),
                sizeof sa->sun_path - 1, path);
        return -1;
    }
    snprintf(sa->sun_path, sizeof sa->sun_path, "%s", path);
    return 0;
}

/* Checks the path before the (slow) engine start: refuses a live daemon or a non-socket. */
static int check_socket_path(const char *path)
{
    struct sockaddr_un sa;
    if (socket_addr(path, &sa) < 0) return -1;
    struct stat st;
    if (lstat(path, &st) < 0) return 0;
    if (!S_ISSOCK(st.st_mode)) {
        fprintf(stderr, "dropblockd: %s exists and is not a socket; not touching it\n", path);
        return -1;
    }
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (probe >= 0) close(probe);
    if (live) {
        fprintf(stderr, "dropblockd: another daemon is serving %s\n", path);
        return -1;
    }
    return 0;
}

/* Binds the socket once the daemon can serve, so a client never connects to a daemon that is
 * still starting its devices. */
static int listen_on(struct server *s, const char *path, int dir_private)
{
    struct sockaddr_un sa;
    if (socket_addr(path, &sa) < 0) return -1;
    if (mkdir_parents(path, dir_private ? 0700 : 0750) < 0) {
        fprintf(stderr, "dropblockd: cannot create the directory of %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (check_socket_path(path) < 0) return -1; /* again: the engine start took a while */
    unlink(path);                                /* a stale socket: nothing answers on it */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { perror("dropblockd: socket"); return -1; }
    mode_t old = umask(0117); /* the socket is born 0660: no window with looser modes */
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0 || listen(fd, 128) < 0) {
        fprintf(stderr, "dropblockd: cannot listen on %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    chmod(path, 0660);
    s->listen_fd = fd;
    s->owns_socket = 1;
    snprintf(s->socket_path, sizeof s->socket_path, "%s", path);
    return 0;
}

/* systemd socket activation: LISTEN_PID names us and fd 3 is a listening Unix socket */
static int activated_socket(struct server *s)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    if (!pid || !fds || atol(pid) != (long)getpid() || atoi(fds) < 1) return 0;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    struct stat st;
    int type = 0;
    socklen_t tl = sizeof type;
    if (fstat(3, &st) < 0 || !S_ISSOCK(st.st_mode) || getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
        type != SOCK_STREAM) {
        fprintf(stderr, "dropblockd: LISTEN_FDS names fd 3, but it is not a stream socket\n");
        return -1;
    }
    fcntl(3, F_SETFL, fcntl(3, F_GETFL) | O_NONBLOCK);
    fcntl(3, F_SETFD, FD_CLOEXEC);
    s->listen_fd = 3;
    s->owns_socket = 0;
    struct sockaddr_un sa;
    socklen_t sl = sizeof sa;
    if (getsockname(3, (struct sockaddr *)&sa, &sl) == 0 && sa.sun_family == AF_UNIX)
        snprintf(s->socket_path, sizeof s->socket_path, "%s", sa.sun_path);
    return 1;
}

/* ---------------------------------------------------------------- small jobs */
/* --small-job-bytes auto: times the ladder (jobs_measure_small) after the devices are up and
 * before the socket is bound, and logs what it found. */
static void measure_small_jobs(struct server *s)
{
    struct jobs_small *m = &s->small;
    if (jobs_measure_small(s->jobs, SMALL_BUDGET_US, m)) {
        s->small_source = SMALL_FALLBACK;
        s->small_job_bytes = SMALL_FALLBACK_BYTES;
        logmsg(s, LOG_INFO, "small jobs: auto jobs of at most %llu bytes run on the built-in CPU backend (%s)",
               (unsigned long long)s->small_job_bytes,
               m->why == JOBS_SMALL_NOTHING ? "not measured: the default device is the built-in CPU backend, or there is none"
               : m->why == JOBS_SMALL_LATE  ? "not measured: the ladder's first size took longer than its time budget"
                                            : "not measured: a job of the ladder's first size failed");
        return;
    }
    s->small_source = SMALL_MEASURED;
    s->small_job_bytes = m->bytes;
    char lad[512];
    size_t o = 0;
    for (int i = 0; i < m->n && o < sizeof lad; i++) {
        int k = snprintf(lad + o, sizeof lad - o, "%s%llu B %.0f/%.0f us", i ? ", " : "",
                         (unsigned long long)m->ladder[i].bytes, m->ladder[i].cpu_us, m->ladder[i].dev_us);
        if (k < 0) break;
        o += (size_t)k;
    }
    logmsg(s, LOG_INFO, "small jobs: auto jobs of at most %llu bytes run on %s, larger ones on %s (measured in %llu ms; "
           "bytes cpu/device median of %d: %s)", (unsigned long long)m->bytes,
           db_engine_device(s->engine, (size_t)m->cpu)->id, db_engine_device(s->engine, (size_t)m->dev)->id,
           (unsigned long long)(m->elapsed_us / 1000), m->reps, lad);
}

/* ---------------------------------------------------------------- options */
static void usage(FILE *f)
{
    fprintf(f,
            "usage: dropblockd [--socket PATH] [--devices LIST] [--allow-uid U,...] [--allow-gid G,...]\n"
            "                  [--max-inflight-jobs N] [--max-inflight-bytes B] [--max-client-jobs N]\n"
            "                  [--max-client-bytes B] [--max-regions N] [--max-clients N] [--max-uid-clients N]\n"
            "                  [--max-total-regions N] [--max-uid-regions N] [--max-mapped-bytes B]\n"
            "                  [--max-uid-mapped-bytes B] [--max-region-bytes B] [--small-job-bytes B|auto] [--cache-dir DIR]\n"
            "                  [--log-level L]\n"
            "Serves DropBlock2D jobs over a Unix socket (protocol: docs/protocol.md) until SIGTERM/SIGINT.\n"
            "  --socket PATH          default $DROPBLOCK_SOCKET, else $XDG_RUNTIME_DIR/dropblock/dropblockd.sock,\n"
            "                         else /run/dropblock/dropblockd.sock; systemd socket activation is honoured\n"
            "  --devices LIST         ids or APIs to use, e.g. opencl:0,vulkan,cpu (default: all; also\n"
            "                         $DROPBLOCK_VISIBLE_DEVICES)\n"
            "  --allow-uid/--allow-gid peers allowed besides the daemon's own uid and gid (numbers or names;\n"
            "                         a gid matches the peer's primary or supplementary groups)\n"
            "  --max-inflight-jobs N  jobs queued or running, all clients (default 256); --max-client-jobs (64)\n"
            "  --max-inflight-bytes B tensor bytes in flight, all clients (default 8 GiB); --max-client-bytes (4 GiB)\n"
            "  --max-regions N        regions per connection (default 256)\n"
            "  --max-clients N        connections at once, all uids (default: what the descriptor limit holds\n"
            "                         at 17 descriptors a connection, at most 4096; the soft RLIMIT_NOFILE is\n"
            "                         raised to the hard one at start); --max-uid-clients (a quarter of it,\n"
            "                         or up to 32 where that leaves half)\n"
            "  --max-total-regions N  regions of all clients (default: what vm.max_map_count leaves, less the\n"
            "                         daemon's own mappings and 8192 reserved); --max-uid-regions (a quarter)\n"
            "  --max-mapped-bytes B   bytes of all regions (default: physical memory, or the memory cgroup's\n"
            "                         limit); --max-uid-mapped-bytes (half of it)\n"
            "  --max-region-bytes B   one region (default: physical memory)\n"
            "                         A connection over a cap gets one resource_exhausted error naming it and\n"
            "                         is closed; a region over one is refused. Caps above what the machine\n"
            "                         holds are lowered at start, with a warning. (docs/security.md)\n"
            "  --small-job-bytes B|auto \"auto\" jobs of at most B bytes (tensors + mask) run on the built-in CPU\n"
            "                         backend, on the loop thread when it is idle; 0: never. auto (the default):\n"
            "                         B is measured at start-up (about 1 s at most), the size where the default\n"
            "                         device gets faster than the CPU backend\n"
            "  --cache-dir DIR        compiled kernels (default $XDG_CACHE_HOME/dropblock or ~/.cache/dropblock)\n"
            "  --log-level L          error, warn, info (default) or debug\n");
}

static int parse_u64_opt(const char *name, const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || x == 0) {
        fprintf(stderr, "dropblockd: %s %s: must be a positive integer\n", name, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_ids(const char *list, int gid, struct server *s)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        unsigned long v = strtoul(t, &end, 10);
        if (end == t || *end) {
            if (gid) { struct group *g = getgrnam(t); if (!g) goto bad; v = g->gr_gid; }
            else { struct passwd *p = getpwnam(t); if (!p) goto bad; v = p->pw_uid; }
        }
        if (gid && s->n_allow_gid < MAX_ALLOW) s->allow_gid[s->n_allow_gid++] = (gid_t)v;
        if (!gid && s->n_allow_uid < MAX_ALLOW) s->allow_uid[s->n_allow_uid++] = (uid_t)v;
        continue;
    bad:
        fprintf(stderr, "dropblockd: --allow-%s %s: no such %s\n", gid ? "gid" : "uid", t, gid ? "group" : "user");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct server srv;
    struct server *s = &srv;
    const char *socket_opt = NULL, *devices = NULL, *cache_dir = NULL;
    s->log_level = LOG_INFO;
    s->max_jobs = 256;
    s->max_client_jobs = 64;
    s->max_bytes = UINT64_C(8) << 30;
    s->max_client_bytes = UINT64_C(4) << 30;
    s->max_regions = 256;
    s->reserve_fd = -1;
    s->small_job_bytes = SMALL_FALLBACK_BYTES;
    s->small_source = SMALL_AUTO;
    s->allow_uid[s->n_allow_uid++] = getuid();
    s->allow_gid[s->n_allow_gid++] = getgid();
    static const struct option opts[] = {
        {"socket", required_argument, 0, 's'},          {"devices", required_argument, 0, 'd'},
        {"allow-uid", required_argument, 0, 'u'},       {"allow-gid", required_argument, 0, 'g'},
        {"max-inflight-jobs", required_argument, 0, 'j'}, {"max-inflight-bytes", required_argument, 0, 'b'},
        {"max-client-jobs", required_argument, 0, 'J'}, {"max-client-bytes", required_argument, 0, 'B'},
        {"max-regions", required_argument, 0, 'r'},     {"cache-dir", required_argument, 0, 'c'},
        {"log-level", required_argument, 0, 'l'},       {"help", no_argument, 0, 'h'},
        {"small-job-bytes", required_argument, 0, 'S'},
        {"max-clients", required_argument, 0, 256},     {"max-uid-clients", required_argument, 0, 257},
        {"max-total-regions", required_argument, 0, 258}, {"max-uid-regions", required_argument, 0, 259},
        {"max-mapped-bytes", required_argument, 0, 260}, {"max-uid-mapped-bytes", required_argument, 0, 261},
        {"max-region-bytes", required_argument, 0, 262},
        {"version", no_argument, 0, 'V'},               {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 's': socket_opt = optarg; break;
        case 'd': devices = optarg; break;
        case 'u': if (parse_ids(optarg, 0, s)) return 2; break;
        case 'g': if (parse_ids(optarg, 1, s)) return 2; break;
        case 'j': if (parse_u64_opt("--max-inflight-jobs", optarg, &s->max_jobs)) return 2; break;
        case 'b': if (parse_u64_opt("--max-inflight-bytes", optarg, &s->max_bytes)) return 2; break;
        case 'J': if (parse_u64_opt("--max-client-jobs", optarg, &s->max_client_jobs)) return 2; break;
        case 'B': if (parse_u64_opt("--max-client-bytes", optarg, &s->max_client_bytes)) return 2; break;
        case 'r': if (parse_u64_opt("--max-regions", optarg, &s->max_regions)) return 2; break;
        case 256: if (parse_u64_opt("--max-clients", optarg, &s->lim.max_clients)) return 2; break;
        case 257: if (parse_u64_opt("--max-uid-clients", optarg, &s->lim.max_uid_clients)) return 2; break;
        case 258: if (parse_u64_opt("--max-total-regions", optarg, &s->lim.max_total_regions)) return 2; break;
        case 259: if (parse_u64_opt("--max-uid-regions", optarg, &s->lim.max_uid_regions)) return 2; break;
        case 260: if (parse_u64_opt("--max-mapped-bytes", optarg, &s->lim.max_mapped_bytes)) return 2; break;
        case 261: if (parse_u64_opt("--max-uid-mapped-bytes", optarg, &s->lim.max_uid_mapped_bytes)) return 2; break;
        case 262: if (parse_u64_opt("--max-region-bytes", optarg, &s->lim.max_region_bytes)) return 2; break;
        case 'c': cache_dir = optarg; break;
        case 'S': {
            if (!strcmp(optarg, "auto")) { s->small_source = SMALL_AUTO; break; }
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-') {
                fprintf(stderr, "dropblockd: --small-job-bytes %s: must be auto or a byte count (0 disables)\n", optarg);
                return 2;
            }
            s->small_job_bytes = v;
            s->small_source = SMALL_OPTION;
            break;
        }
        case 'l': {
            int lv = -1;
            for (int i = 0; i < 4; i++)
                if (!strcmp(optarg, level_names[i])) lv = i;
            if (lv < 0) { fprintf(stderr, "dropblockd: --log-level %s: must be error, warn, info or debug\n", optarg); return 2; }
            s->log_level = lv;
            break;
        }
        case 'h': usage(stdout); return 0;
        case 'V': printf("dropblockd %s (protocol %d)\n", DROPBLOCK_VERSION_STRING, PROTO_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) { fprintf(stderr, "dropblockd: unexpected argument %s\n", argv[optind]); usage(stderr); return 2; }
    signal(SIGPIPE, SIG_IGN);
    /* descriptors: the soft limit up to the hard one before the drivers open theirs */
    char lim_msg[1024];
    quota_probe(&s->machine, lim_msg, sizeof lim_msg);
    if (lim_msg[0]) logmsg(s, LOG_WARN, "%s", lim_msg);
#ifdef __GLIBC__
    /* glibc raises its mmap threshold (and with it the trim threshold) to the largest block
     * freed, up to 32 MiB: the tensor-sized buffers of the backends and drivers then stay in the
     * worker threads' arenas, whose tops are never trimmed, and the daemon's RSS ratchets up to
     * its largest jobs' working set for good (+20% in tests/load). A fixed threshold keeps
     * blocks of 1 MiB and more in their own mappings, returned when freed (same throughput). */
    if (!getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
    s->loop = uv_default_loop();
    s->t_start = db_now_us();

    int act = activated_socket(s);
    if (act < 0) return 1;
    char path[PATH_MAX + 64];
    if (socket_opt) snprintf(path, sizeof path, "%s", socket_opt);
    else dropblock_default_socket(path, sizeof path);
    /* a path sun_path cannot hold is refused, never served truncated (as the client refuses it) */
    if (!act && (!path[0] || strlen(path) >= sizeof s->socket_path)) {
        fprintf(stderr, "dropblockd: %s \"%.200s%s\": a Unix socket path must be 1 to %zu bytes; this one has %zu\n",
                socket_opt ? "--socket" : "socket path", path, strlen(path) > 200 ? "..." : "",
                sizeof s->socket_path - 1, strlen(path));
        return 2;
    }
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int private_dir = socket_opt || (xdg && *xdg && !getenv("DROPBLOCK_SOCKET"));
    if (!act && check_socket_path(path) < 0) return 1;

    /* signals first: a SIGTERM during the device start-up stops the daemon cleanly */
    uv_signal_init(s->loop, &s->sig_term);
    uv_signal_init(s->loop, &s->sig_int);
    s->sig_term.data = s->sig_int.data = s;
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    char msg[512];
    if (db_engine_open(&s->engine, NULL, devices, cache_dir, engine_log, s, msg, sizeof msg)) {
        fprintf(stderr, "dropblockd: %s\n", msg);
        if (act) close(s->listen_fd);
        return 1;
    }
    for (size_t i = 0; i < db_engine_device_count(s->engine); i++) {
        const dropblock_device_info *d = db_engine_device(s->engine, i);
        char paths[256];
        db_engine_device_paths(s->engine, i, paths, sizeof paths);
        logmsg(s, LOG_INFO, "device %s: %s %s (%s, driver %s): %s", d->id, d->vendor, d->name,
               dropblock_device_kind_name(d->kind), d->driver, paths);
    }
    if (jobs_start(&s->jobs, s->engine, s->loop, on_job_done, s, msg, sizeof msg)) {
        fprintf(stderr, "dropblockd: %s\n", msg);
        db_engine_close(s->engine);
        return 1;
    }
    if (s->small_source == SMALL_AUTO) measure_small_jobs(s);
    jobs_set_small_job_bytes(s->jobs, s->small_job_bytes);
    /* the caps, from what the devices and drivers left of the descriptors and mappings */
    struct quota_machine now;
    quota_probe(&now, lim_msg, sizeof lim_msg);
    quota_derive(&s->lim, &now, lim_msg, sizeof lim_msg);
    if (lim_msg[0]) logmsg(s, LOG_WARN, "limits: %s", lim_msg);
    s->machine = now;
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    logmsg(s, LOG_INFO, "limits: %llu connections (%llu per uid; %llu descriptors, %llu open), %llu regions (%llu per "
           "uid, %llu per connection; vm.max_map_count %llu), %llu mapped bytes (%llu per uid), regions of at most "
           "%llu bytes", (unsigned long long)s->lim.max_clients, (unsigned long long)s->lim.max_uid_clients,
           (unsigned long long)now.nofile, (unsigned long long)now.fds_open,
           (unsigned long long)s->lim.max_total_regions, (unsigned long long)s->lim.max_uid_regions,
           (unsigned long long)s->max_regions, (unsigned long long)now.max_map_count,
           (unsigned long long)s->lim.max_mapped_bytes, (unsigned long long)s->lim.max_uid_mapped_bytes,
           (unsigned long long)s->lim.max_region_bytes);
    if (!act && listen_on(s, path, private_dir) < 0) {
        jobs_stop(s->jobs);
        uv_run(s->loop, UV_RUN_NOWAIT);
        db_engine_close(s->engine);
        return 1;
    }
    uv_poll_init(s->loop, &s->listen_poll, s->listen_fd);
    s->listen_poll.data = s;
    uv_poll_start(&s->listen_poll, UV_READABLE, on_listen);
    s->listening = 1;
    uv_timer_init(s->loop, &s->accept_pause);
    s->accept_pause.data = s;
    uv_timer_init(s->loop, &s->idle_trim);
    s->idle_trim.data = s;
    logmsg(s, LOG_INFO, "serving %s%s (pid %d)", s->socket_path, act ? " (socket activation)" : "", (int)getpid());

    uv_run(s->loop, UV_RUN_DEFAULT);

    db_engine_close(s->engine);
    uv_loop_close(s->loop);
    if (s->reserve_fd >= 0) close(s->reserve_fd);
    quota_use_clear(&s->use);
    return 0;
}
