/* ops.c: the ops of dropblockd's protocol v1 (docs/protocol.md): hello, devices, status,
 * region.register and .unregister, dropblock2d and shutdown, from a request frame
 * (handle_frame) to its reply; a job's completion (on_job_done) and graceful shutdown. */
#include <dropblock/dropblock.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "clock.h"
#include "dropblock_version.h"
#include "msg.h"
#include "server.h"

/* Idle this long after its last job, the daemon gives free heap memory back to the kernel. */
#define IDLE_TRIM_MS 100
static const char *const small_sources[] = {"measured", "option", "fallback"};

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
        proto_add_u64(l, "max_device_bytes", s->max_device_bytes);
        proto_add_u64(l, "max_client_device_bytes", s->max_client_device_bytes);
        proto_add_u64(l, "max_semaphores", s->max_semaphores);
        proto_add_u64(l, "max_semaphore_wait_ms", s->max_semaphore_wait_ms);
    }
    cJSON *devs = cJSON_AddArrayToObject(r, "devices");
    for (size_t i = 0; i < db_engine_device_count(s->engine); i++) {
        dropblock_device_info info;
        db_engine_device_info(s->engine, i, &info);
        cJSON *d = proto_device_json(&info);
        /* region.alloc's handle types (export, semaphores, semaphore_export: proto_device_json) */
        cJSON *types = cJSON_AddArrayToObject(d, "export_types");
        if (info.can_export && types) cJSON_AddItemToArray(types, cJSON_CreateString("opaque_fd"));
        cJSON_AddItemToArray(devs, d);
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
    proto_add_u64(r, "device_bytes", s->device_bytes);
    proto_add_u64(r, "semaphores", s->nsemaphores);
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
    if (!r) {
        send_error(c, id, code, msg);
        return;
    }
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
    if (!it) {
        send_error(c, id, DROPBLOCK_EINVAL, "region: missing");
        return;
    }
    if (proto_get_u64(it, "region", &rid, msg, sizeof msg)) {
        send_error(c, id, DROPBLOCK_EINVAL, msg);
        return;
    }
    struct region *r = rid > UINT32_MAX ? NULL : region_table_find(&c->regions, (uint32_t)rid);
    uint64_t size = r ? r->size : 0;
    if (r && r->dev >= 0) device_region_gone(c, r); /* (r lives on while the table holds it) */
    const int device = r && r->dev >= 0;
    if (!r || region_table_remove(&c->regions, (uint32_t)rid)) {
        snprintf(msg, sizeof msg, "region %llu: not registered on this connection", (unsigned long long)rid);
        send_error(c, id, DROPBLOCK_ENOTFOUND, msg);
        return;
    }
    struct server *s = c->srv;
    s->nregions--;
    if (!device) {
        s->use.regions--;
        s->use.mapped -= size;
        c->use->regions--;
        c->use->mapped -= size;
        c->mapped -= size;
    }
    db_engine_sweep(s->engine); /* idle devices let go of its import now (never waits for a job) */
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
    *ptr = r->dev >= 0 ? NULL : r->base + t->offset; /* device memory: (region, offset) only */
    return DROPBLOCK_OK;
}

static int overlaps(const uint8_t *a, uint64_t na, const uint8_t *b, uint64_t nb) { return a < b + nb && b < a + na; }

/* Whether one more job of `bytes` would pass the jobs or bytes in flight, the client's or the
 * daemon's (msg says which). */
static int over_inflight(const struct client *c, uint64_t bytes, char *msg, size_t len)
{
    const struct server *s = c->srv;
    if (c->jobs_inflight >= s->max_client_jobs || s->inflight_jobs >= s->max_jobs) {
        snprintf(msg, len, "too many jobs in flight (%s limit %llu); wait for replies and retry",
                 c->jobs_inflight >= s->max_client_jobs ? "per-client" : "daemon",
                 (unsigned long long)(c->jobs_inflight >= s->max_client_jobs ? s->max_client_jobs : s->max_jobs));
        return 1;
    }
    if (c->bytes_inflight + bytes > s->max_client_bytes || s->inflight_bytes + bytes > s->max_bytes) {
        snprintf(
            msg, len, "%llu more bytes in flight would pass the %s limit of %llu bytes", (unsigned long long)bytes,
            c->bytes_inflight + bytes > s->max_client_bytes ? "per-client" : "daemon",
            (unsigned long long)(c->bytes_inflight + bytes > s->max_client_bytes ? s->max_client_bytes : s->max_bytes));
        return 1;
    }
    return 0;
}

/* Where a job's tensors and mask are: the client's regions, resolved and checked for overlaps
 * (device regions: in and out NULL, at in_off and out_off). */
struct job_memory {
    struct region *rin, *rout, *rmask;
    uint8_t *in, *out, *mask;
    uint64_t in_off, out_off;
};

/* A job on device memory (region.alloc): both tensors in device regions of one device, not
 * overlapping unless the same bytes; the mask, if any, in host memory. */
static int device_job_memory(struct client *c, const struct proto_job *pj, uint64_t tb, const struct job_memory *m,
                             char *msg, size_t len)
{
    const struct server *s = c->srv;
    if (m->rin->dev < 0 || m->rout->dev < 0) {
        db_msg(msg, len,
               "%s: region %u is host memory and %s region %u device memory (on %s): both tensors in device "
               "memory or neither",
               m->rin->dev < 0 ? "input" : "output", m->rin->dev < 0 ? pj->input.region : pj->output.region,
               m->rin->dev < 0 ? "the output's" : "the input's", m->rin->dev < 0 ? pj->output.region : pj->input.region,
               db_engine_device(s->engine, (size_t)(m->rin->dev < 0 ? m->rout->dev : m->rin->dev))->id);
        return DROPBLOCK_EINVAL;
    }
    if (m->rin->dev != m->rout->dev) {
        db_msg(msg, len, "output: region %u is on %s and the input's region %u on %s: one device a job",
               pj->output.region, db_engine_device(s->engine, (size_t)m->rout->dev)->id, pj->input.region,
               db_engine_device(s->engine, (size_t)m->rin->dev)->id);
        return DROPBLOCK_EINVAL;
    }
    if (m->rmask && m->rmask->dev >= 0) {
        db_msg(msg, len, "mask: region %u is device memory; the mask goes to host memory (a registered memfd region)",
               pj->mask.region);
        return DROPBLOCK_EINVAL;
    }
    if (m->rin == m->rout && m->in_off != m->out_off && m->in_off < m->out_off + tb && m->out_off < m->in_off + tb) {
        db_msg(msg, len, "output: overlaps the input without being the same bytes (in place needs output = input)");
        return DROPBLOCK_EINVAL;
    }
    return DROPBLOCK_OK;
}

/* 0, or an error code with msg naming the tensor at fault. */
static int job_memory(struct client *c, const struct proto_job *pj, uint64_t tb, uint64_t mb, struct job_memory *m,
                      char *msg, size_t len)
{
    int rc;
    m->rmask = NULL;
    m->mask = NULL;
    if ((rc = resolve(c, "input", &pj->input, tb, 0, &m->rin, &m->in, msg, len)) ||
        (rc = resolve(c, "output", &pj->output, tb, 1, &m->rout, &m->out, msg, len)) ||
        (pj->mask.present && (rc = resolve(c, "mask", &pj->mask, mb, 1, &m->rmask, &m->mask, msg, len))))
        return rc;
    m->in_off = pj->input.offset;
    m->out_off = pj->output.offset;
    if (m->rin->dev >= 0 || m->rout->dev >= 0) return device_job_memory(c, pj, tb, m, msg, len);
    /* the chunked backends read each piece of x before writing that piece of y: in place works,
     * a shifted overlap would read values already overwritten */
    if (m->in != m->out && overlaps(m->in, tb, m->out, tb)) {
        db_msg(msg, len, "output: overlaps the input without being the same bytes (in place needs output = input)");
        return DROPBLOCK_EINVAL;
    }
    if (m->mask && (overlaps(m->mask, mb, m->in, tb) || overlaps(m->mask, mb, m->out, tb))) {
        db_msg(msg, len, "mask: overlaps the input or output tensor");
        return DROPBLOCK_EINVAL;
    }
    return DROPBLOCK_OK;
}

/* The job, holding its regions, on the client's in-flight list and counted; NULL when out of
 * memory. */
static struct job *job_new(struct client *c, const cJSON *id, const struct proto_job *pj, const struct job_memory *m,
                           int dev, uint64_t bytes)
{
    struct server *s = c->srv;
    struct job *j = calloc(1, sizeof *j);
    char *idtext = cJSON_PrintUnformatted(id); /* the id alone (number or string), as JSON */
    if (!j || !idtext) {
        free(j);
        cJSON_free(idtext);
        return NULL;
    }
    j->client = c;
    j->id_json = idtext;
    j->seq = ++s->next_job_seq;
    j->p = pj->p;
    j->rin = m->rin;
    region_ref(m->rin);
    j->rout = m->rout;
    region_ref(m->rout);
    if (m->rmask) {
        j->rmask = m->rmask;
        region_ref(m->rmask);
    }
    j->in = m->in;
    j->out = m->out;
    j->in_off = m->in_off;
    j->out_off = m->out_off;
    j->mask = m->mask;
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
    return j;
}

/* A job on device memory runs on its region's device: "auto" resolves to it, another id is
 * refused naming both. */
static int job_device_of(struct client *c, const struct proto_job *pj, const struct region *r, char *msg, size_t len)
{
    const char *id = db_engine_device(c->srv->engine, (size_t)r->dev)->id;
    if (strcmp(pj->device, "auto") && strcmp(pj->device, id)) {
        db_msg(msg, len,
               "device \"%.40s\": the tensors are in device memory on %s (region %u); run it there or "
               "with \"auto\"",
               pj->device, id, pj->input.region);
        return DROPBLOCK_EINVAL;
    }
    return r->dev;
}

static void op_job(struct client *c, const cJSON *id, const cJSON *req)
{
    struct server *s = c->srv;
    char msg[256];
    struct proto_job pj;
    int rc = proto_parse_job(req, &pj, msg, sizeof msg);
    if (!rc && s->shutting_down) {
        rc = DROPBLOCK_EUNAVAILABLE;
        db_msg(msg, sizeof msg, "the daemon is shutting down");
    }
    uint64_t tb = 0, mb = 0, bytes = 0;
    int dev = -1;
    struct job_memory m = {0};
    if (!rc) {
        tb = dropblock_tensor_bytes(&pj.p);
        mb = dropblock_mask_bytes(&pj.p);
        dev = jobs_pick(s->jobs, pj.device, tb + mb, msg, sizeof msg);
        if (dev < 0) rc = dev;
    }
    if (!rc) rc = job_memory(c, &pj, tb, mb, &m, msg, sizeof msg);
    if (!rc && m.rin->dev >= 0) { /* device memory: its device */
        dev = job_device_of(c, &pj, m.rin, msg, sizeof msg);
        if (dev < 0) rc = dev;
    }
    struct db_job_sync sync = {0};
    if (!rc && (pj.wait.present || pj.signal.present)) {
        /* semaphores: the job runs on their device ("auto" on host memory goes there) */
        int sdev = strcmp(pj.device, "auto") || m.rin->dev >= 0 ? dev : -1;
        rc = job_sync(c, &pj, &sdev, &sync, msg, sizeof msg);
        if (!rc) dev = sdev;
    }
    if (!rc) {
        bytes = tb + (m.rout != m.rin || m.out_off != m.in_off ? tb : 0) + (m.mask ? mb : 0);
        if (over_inflight(c, bytes, msg, sizeof msg)) rc = DROPBLOCK_EEXHAUSTED;
    }
    if (rc) {
        s->rejected++;
        job_sync_release(&sync);
        /* a refused job raises its signal all the same: a stream waiting on it never hangs */
        struct db_semaphore *sig = pj.signal.present ? client_semaphore(c, pj.signal.semaphore) : NULL;
        if (sig) db_engine_semaphore_signal(sig, pj.signal.value, NULL, 0);
        send_error(c, id, rc, msg);
        return;
    }
    struct job *j = job_new(c, id, &pj, &m, dev, bytes);
    if (!j) {
        job_sync_release(&sync);
        send_error(c, id, DROPBLOCK_EEXHAUSTED, "out of memory for the job");
        return;
    }
    j->sync = sync;
    char qid[160];
    if (cJSON_IsString(id)) proto_quote(qid, sizeof qid, id->valuestring, strlen(id->valuestring));
    else snprintf(qid, sizeof qid, "%s", j->id_json);
    logmsg(s, LOG_DEBUG, "client=%llu job=%llu id=%s queued on %s", (unsigned long long)c->id,
           (unsigned long long)j->seq, qid, db_engine_device(s->engine, (size_t)dev)->id);
    if (j->sync.wait) jobs_submit_waiting(s->jobs, j);
    else if (jobs_run_inline(s->jobs, j)) on_job_done(j, s);
    else jobs_submit(s->jobs, j);
}

void handle_frame(struct client *c, const char *data, size_t len)
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
        if (nfds > MAX_PENDING_FDS)
            snprintf(msg, sizeof msg, "fds %llu: at most %d", (unsigned long long)nfds, MAX_PENDING_FDS);
        send_error(c, id, DROPBLOCK_EINVAL, msg);
        cJSON_Delete(req);
        return;
    }
    int taken[MAX_PENDING_FDS], ntaken = 0;
    if (nfds > (uint64_t)c->nfds) {
        snprintf(msg, sizeof msg,
                 "fds: %llu declared, %d received with the frame (send them as SCM_RIGHTS on its first byte)",
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
    else if (!strcmp(op, "region.alloc")) op_alloc(c, id, req);
    else if (!strncmp(op, "semaphore.", 10) && (!strcmp(op + 10, "create") || !strcmp(op + 10, "signal") ||
                                                !strcmp(op + 10, "value") || !strcmp(op + 10, "free")))
        op_semaphore(c, op, id, req);
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
        snprintf(msg, sizeof msg,
                 "op \"%.40s\": unknown (ops: hello, devices, status, region.register, "
                 "region.alloc, region.unregister, semaphore.create, semaphore.signal, semaphore.value, "
                 "semaphore.free, dropblock2d, shutdown)",
                 op);
        send_error(c, id, DROPBLOCK_ENOTFOUND, msg);
    }
    cJSON_Delete(req);
}

/* ---------------------------------------------------------------- completions and shutdown */
/* Once no job has been in flight for IDLE_TRIM_MS, free heap memory goes back to the kernel
 * (see also the fixed mmap threshold in main); under load nothing changes. */
static void on_idle_trim(uv_timer_t *t)
{
    struct server *s = t->data;
    if (s->inflight_jobs) return;
    db_engine_sweep(s->engine); /* the imports of regions gone while their devices were busy */
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

static void maybe_finish_shutdown(struct server *s);

void on_job_done(struct job *j, void *ctx)
{
    struct server *s = ctx;
    struct client *c = j->client;
    if (j->cprev) j->cprev->cnext = j->cnext;
    else c->jobs = j->cnext;
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
    job_sync_release(&j->sync);
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

void begin_shutdown(struct server *s, const char *why)
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
    /* queued jobs are answered `unavailable`, and those waiting for a semaphore; running ones
     * finish and reply */
    jobs_end_waits(s->jobs);
    struct job *q = jobs_take_queued(s->jobs);
    while (q) {
        struct job *next = q->next;
        q->ran = 0;
        on_job_done(q, s);
        q = next;
    }
    maybe_finish_shutdown(s);
}

void on_signal(uv_signal_t *h, int signum) { begin_shutdown(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT"); }
