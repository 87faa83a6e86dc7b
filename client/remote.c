/* remote.c: libdropblock's calls on a connection to dropblockd (conn.c has the connection):
 * devices, memfd regions for dropblock_alloc and dropblock_free, jobs (submit, wait, abandon),
 * the daemon's limits, status and shutdown. */
#include <dropblock/dropblock.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "conn.h"
#include "handle.h"
#include "msg.h"
#include "protocol.h"
#include "sysmem.h"

int remote_devices(dropblock_t *h, dropblock_device_info *infos, size_t cap, size_t *count)
{
    int rc = conn_ensure(h, NULL, 0);
    if (rc) return rc;
    cJSON *reply = NULL;
    rc = conn_request(h, conn_new_request("devices"), -1, NULL, h->conn->timeout_ms, &reply, NULL, 0);
    if (!rc && conn_parse_devices(reply, infos, cap, count)) rc = DROPBLOCK_EINTERNAL;
    cJSON_Delete(reply);
    return rc;
}

/* ---------------------------------------------------------------- regions */
static int errno_code(int e)
{
    return e == ENOSPC || e == EFBIG || e == ENOMEM || e == EMFILE || e == ENFILE || e == EAGAIN ? DROPBLOCK_EEXHAUSTED
                                                                                                 : DROPBLOCK_EINTERNAL;
}

/* A region registered on connection gen into the handle's list (region_lock taken here). */
static int add_region(struct db_conn *c, uint64_t gen, uint32_t rid, void *base, size_t bytes, int fd, char *msg,
                      size_t msg_len)
{
    int rc = DROPBLOCK_OK;
    pthread_mutex_lock(&c->region_lock);
    if (c->nregions == c->cap_regions) {
        size_t cap = c->cap_regions ? c->cap_regions * 2 : 16;
        struct region *n = realloc(c->regions, cap * sizeof *n);
        if (n) {
            c->regions = n;
            c->cap_regions = cap;
        }
    }
    if (c->gen != gen) {
        /* the connection it was registered on broke and was replaced meanwhile */
        rc = DROPBLOCK_EUNAVAILABLE;
        db_msg(msg, msg_len, "connection to dropblockd lost and re-established during the allocation");
    } else if (c->nregions < c->cap_regions) {
        c->regions[c->nregions].id = rid;
        c->regions[c->nregions].base = base;
        c->regions[c->nregions].size = bytes;
        c->regions[c->nregions].fd = fd;
        c->nregions++;
    } else {
        rc = DROPBLOCK_EEXHAUSTED; /* the daemon keeps the region until we disconnect */
        db_msg(msg, msg_len, "out of memory for the region list");
    }
    pthread_mutex_unlock(&c->region_lock);
    return rc;
}

int remote_alloc(dropblock_t *h, size_t bytes, void **ptr, char *msg, size_t msg_len)
{
    struct db_conn *c = h->conn;
    int rc = conn_ensure(h, msg, msg_len);
    if (rc) return rc;
    /* nothing is allocated that the daemon would refuse or the machine cannot hold: memfd pages
     * are not counted in anyone's RSS, so an oversized one makes the OOM killer pick others */
    pthread_mutex_lock(&c->lock);
    uint64_t max_region = c->max_region_bytes;
    pthread_mutex_unlock(&c->lock);
    char b[64], l[64];
    if ((uint64_t)bytes > max_region) {
        db_fmt_bytes(b, sizeof b, bytes);
        db_fmt_bytes(l, sizeof l, max_region);
        db_msg(msg, msg_len,
               "shared memory of %s: above the daemon's max_region_bytes, %s (dropblockd "
               "--max-region-bytes)",
               b, l);
        return DROPBLOCK_EEXHAUSTED;
    }
    if ((rc = db_mem_check(bytes, "shared memory", msg, msg_len))) return rc;
    if (bytes > (size_t)INT64_MAX) return DROPBLOCK_EEXHAUSTED;
    int fd = memfd_create("dropblock", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        db_msg(msg, msg_len, "memfd_create: %s", strerror(errno));
        return errno_code(errno);
    }
    /* real pages now, so running out shows here and not as SIGBUS inside a job */
    int e;
    do e = posix_fallocate(fd, 0, (off_t)bytes);
    while (e == EINTR);
    /* the daemon needs F_SEAL_SHRINK so the region can never shrink under it */
    if (!e && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) e = errno;
    void *base = e ? MAP_FAILED : mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (!e && base == MAP_FAILED) e = errno;
    if (e) {
        close(fd);
        db_fmt_bytes(b, sizeof b, bytes);
        db_msg(msg, msg_len, "shared memory of %s: %s", b, strerror(e));
        return errno_code(e);
    }
    cJSON *req = conn_new_request("region.register");
    if (req) cJSON_AddNumberToObject(req, "fds", 1);
    cJSON *reply = NULL;
    uint64_t gen = 0;
    rc = conn_request(h, req, fd, &gen, c->timeout_ms, &reply, msg, msg_len);
    uint64_t rid = 0, size = 0;
    if (!rc && (proto_get_u64(field(reply, "region"), "region", &rid, NULL, 0) || rid > UINT32_MAX ||
                proto_get_u64(field(reply, "size"), "size", &size, NULL, 0) || size != bytes)) {
        rc = DROPBLOCK_EINTERNAL; /* cannot happen with a v1 daemon */
        db_msg(msg, msg_len, "the region.register reply does not match the region");
    }
    cJSON_Delete(reply);
    if (!rc) rc = add_region(c, gen, (uint32_t)rid, base, bytes, fd, msg, msg_len);
    if (rc) {
        munmap(base, bytes);
        close(fd);
        return rc;
    }
    *ptr = base;
    return DROPBLOCK_OK;
}

int remote_free(dropblock_t *h, void *ptr)
{
    struct db_conn *c = h->conn;
    struct region r;
    uint64_t gen = 0;
    int found = 0;
    pthread_mutex_lock(&c->region_lock);
    for (size_t i = 0; i < c->nregions; i++)
        if (c->regions[i].base == ptr) {
            r = c->regions[i];
            c->regions[i] = c->regions[--c->nregions];
            gen = c->gen;
            found = 1;
            break;
        }
    pthread_mutex_unlock(&c->region_lock);
    if (!found) return DROPBLOCK_EINVAL; /* not from dropblock_alloc on this handle, or freed already */
    cJSON *req = conn_new_request("region.unregister");
    if (req) cJSON_AddNumberToObject(req, "region", r.id);
    cJSON *reply = NULL;
    char msg[256];
    /* only on the connection that knows the id; never reconnects (a new one does not have it) */
    int rc = conn_request(h, req, -1, &gen, c->timeout_ms, &reply, msg, sizeof msg);
    cJSON_Delete(reply);
    munmap(r.base, r.size);
    close(r.fd);
    if (rc) {
        /* a lost connection took the region with it on the daemon's side: the memory is released */
        pthread_mutex_lock(&c->lock);
        if (c->broken || c->gen != gen) rc = DROPBLOCK_OK;
        pthread_mutex_unlock(&c->lock);
    }
    return rc;
}

/* Where a tensor lies: the region that holds all of its bytes, and the offset there. */
static int locate(struct db_conn *c, const char *what, const void *ptr, uint64_t bytes, uint32_t *rid, uint64_t *off,
                  char *msg, size_t len)
{
    uintptr_t p = (uintptr_t)ptr;
    for (size_t i = 0; i < c->nregions; i++) {
        const struct region *r = &c->regions[i];
        uintptr_t b = (uintptr_t)r->base;
        if (p < b || p - b >= r->size) continue;
        uint64_t o = (uint64_t)(p - b);
        if (bytes > r->size - o) {
            db_msg(msg, len,
                   "%s is not inside memory from dropblock_alloc (its %llu bytes start %llu bytes into a "
                   "%zu-byte allocation and run past its end)",
                   what, (unsigned long long)bytes, (unsigned long long)o, r->size);
            return DROPBLOCK_EINVAL;
        }
        *rid = r->id;
        *off = o;
        return DROPBLOCK_OK;
    }
    db_msg(msg, len,
           "%s is not inside memory from dropblock_alloc (%p is in none of this connection's %zu "
           "allocations; the daemon can only reach shared memory from dropblock_alloc)",
           what, ptr, c->nregions);
    return DROPBLOCK_EINVAL;
}

/* ---------------------------------------------------------------- jobs */
/* A reference's region and offset on connection generation gen: host memory located among the
 * regions, a device buffer checked to belong to this connection. */
static int place_of(struct db_conn *c, const char *what, const dropblock_ref *r, uint64_t bytes, uint64_t gen,
                    uint32_t *rid, uint64_t *off, char *msg, size_t len)
{
    if (!r->buffer) return locate(c, what, (const char *)r->ptr + r->offset, bytes, rid, off, msg, len);
    if (r->buffer->local || !r->buffer->region || r->buffer->conn_gen != gen) {
        db_msg(msg, len, "%s: %s", what,
               r->buffer->local ? "a device buffer of the in-process engine, not of this connection"
                                : "a device buffer of a connection that was lost (the daemon freed it with the "
                                  "connection): allocate it again");
        return DROPBLOCK_EINVAL;
    }
    *rid = r->buffer->region;
    *off = r->offset;
    return DROPBLOCK_OK;
}

/* the semaphore of a job's wait or signal, on this connection */
static int semaphore_of(const char *what, const dropblock_semaphore *s, uint64_t gen, char *msg, size_t len)
{
    if (s->local || !s->id || s->conn_gen != gen) {
        db_msg(msg, len, "%s: %s", what,
               s->local ? "a semaphore of the in-process engine, not of this connection"
                        : "a semaphore of a connection that was lost (the daemon freed it with the connection): "
                          "create it again");
        return DROPBLOCK_EINVAL;
    }
    return DROPBLOCK_OK;
}

/* body (a job request without its closing brace, malloc'd) with the job's "wait" and "signal" */
static char *with_sync(char *body, const dropblock_sync *o)
{
    if (!body || !o || (!o->wait && !o->signal)) return body;
    char extra[256];
    int n = 0;
    if (o->wait)
        n += snprintf(extra + n, sizeof extra - (size_t)n, ",\"wait\":{\"semaphore\":%u,\"value\":\"%llu\"",
                      o->wait->id, (unsigned long long)o->wait_value);
    if (o->wait && o->wait_timeout_ms)
        n += snprintf(extra + n, sizeof extra - (size_t)n, ",\"timeout_ms\":%u", o->wait_timeout_ms);
    if (o->wait) n += snprintf(extra + n, sizeof extra - (size_t)n, "}");
    if (o->signal)
        snprintf(extra + n, sizeof extra - (size_t)n, ",\"signal\":{\"semaphore\":%u,\"value\":\"%llu\"}",
                 o->signal->id, (unsigned long long)o->signal_value);
    size_t a = strlen(body), b = strlen(extra);
    char *r = realloc(body, a + b + 1);
    if (!r) {
        free(body);
        return NULL;
    }
    memcpy(r + a, extra, b + 1);
    return r;
}

int remote_submit(dropblock_t *h, int sync, const dropblock_params *p, const dropblock_ref *input,
                  const dropblock_ref *output, void *mask, const char *device, const dropblock_sync *order,
                  dropblock_ticket **ticket, char *msg, size_t len)
{
    struct db_conn *c = h->conn;
    uint64_t tb = dropblock_tensor_bytes(p), mb = dropblock_mask_bytes(p);
    uint32_t rid[3] = {0, 0, 0};
    uint64_t off[3] = {0, 0, 0};
    int rc = conn_ensure(h, msg, len);
    if (rc) return rc;
    /* the region ids belong to one connection: the request goes on that one or nowhere */
    pthread_mutex_lock(&c->region_lock);
    uint64_t gen = c->gen;
    rc = place_of(c, "input", input, tb, gen, &rid[0], &off[0], msg, len);
    if (!rc) rc = place_of(c, "output", output, tb, gen, &rid[1], &off[1], msg, len);
    if (!rc && mask) rc = locate(c, "mask", mask, mb, &rid[2], &off[2], msg, len);
    if (!rc && order && order->wait) rc = semaphore_of("wait", order->wait, gen, msg, len);
    if (!rc && order && order->signal) rc = semaphore_of("signal", order->signal, gen, msg, len);
    pthread_mutex_unlock(&c->region_lock);
    if (rc) return rc;
    dropblock_ticket *t = conn_ticket_new(h, 1);
    if (!t) {
        db_msg(msg, len, "out of memory for a request");
        return DROPBLOCK_EEXHAUSTED;
    }
    t->sync = sync;
    rc = conn_send_text(h, t, with_sync(proto_write_job_request(p, rid, off, mask != NULL, device), order), &gen, msg,
                        len);
    if (rc) {
        conn_ticket_free(t);
        return rc;
    }
    *ticket = t;
    return DROPBLOCK_OK;
}

/* ---------------------------------------------------------------- device memory */
/* the 16 bytes of "8-4-4-4-12" hex; 0 if it is not one */
static int parse_uuid(const char *s, uint8_t out[16])
{
    int n = 0;
    for (; *s && n < 32; s++) {
        if (*s == '-') continue;
        int v = *s >= '0' && *s <= '9' ? *s - '0' : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10 : -1;
        if (v < 0) return 0;
        if (n % 2 == 0) out[n / 2] = (uint8_t)(v << 4);
        else out[n / 2] |= (uint8_t)v;
        n++;
    }
    return n == 32 && !*s;
}

/* the reply's fields into out; 0, or -1 where one is missing or malformed */
static int parse_alloc_reply(const cJSON *r, dropblock_device_buffer *out)
{
    uint64_t region, size, asize, type;
    const cJSON *ht = cJSON_GetObjectItemCaseSensitive(r, "handle_type"),
                *dev = cJSON_GetObjectItemCaseSensitive(r, "device"),
                *du = cJSON_GetObjectItemCaseSensitive(r, "device_uuid"),
                *dr = cJSON_GetObjectItemCaseSensitive(r, "driver_uuid");
    if (proto_get_u64(cJSON_GetObjectItemCaseSensitive(r, "region"), "region", &region, NULL, 0) ||
        proto_get_u64(cJSON_GetObjectItemCaseSensitive(r, "size"), "size", &size, NULL, 0) ||
        proto_get_u64(cJSON_GetObjectItemCaseSensitive(r, "allocation_size"), "allocation_size", &asize, NULL, 0) ||
        proto_get_u64(cJSON_GetObjectItemCaseSensitive(r, "memory_type_index"), "memory_type_index", &type, NULL, 0) ||
        !cJSON_IsString(ht) || !cJSON_IsString(dev) || !cJSON_IsString(du) || !cJSON_IsString(dr) || region == 0 ||
        region > UINT32_MAX || type > UINT32_MAX || !parse_uuid(du->valuestring, out->device_uuid) ||
        !parse_uuid(dr->valuestring, out->driver_uuid))
        return -1;
    out->region = (uint32_t)region;
    out->size = size;
    out->allocation_size = asize;
    out->memory_type_index = (uint32_t)type;
    out->dedicated = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "dedicated"));
    out->host_mappable = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "host_mappable"));
    snprintf(out->handle_type, sizeof out->handle_type, "%s", ht->valuestring);
    snprintf(out->device, sizeof out->device, "%s", dev->valuestring);
    return 0;
}

int remote_device_alloc(dropblock_t *h, const char *device, uint64_t bytes, dropblock_device_buffer *out, char *msg,
                        size_t len)
{
    int rc = conn_ensure(h, msg, len);
    if (rc) return rc;
    cJSON *req = conn_new_request("region.alloc");
    if (!req || !cJSON_AddStringToObject(req, "device", device)) {
        cJSON_Delete(req);
        db_msg(msg, len, "out of memory for a request");
        return DROPBLOCK_EEXHAUSTED;
    }
    proto_add_u64(req, "bytes", bytes);
    cJSON *reply = NULL;
    uint64_t gen = 0;
    int fd = -1;
    rc = conn_request_fd(h, req, -1, &gen, h->conn->timeout_ms, &reply, &fd, msg, len);
    if (!rc && (fd < 0 || parse_alloc_reply(reply, out) || out->size != bytes)) {
        db_msg(msg, len, "dropblockd's region.alloc reply %s",
               fd < 0 ? "came without its descriptor" : "does not describe the memory asked for");
        rc = DROPBLOCK_EINTERNAL;
        if (fd >= 0) close(fd);
        fd = -1;
    }
    cJSON_Delete(reply);
    if (rc) return rc;
    out->fd = fd;
    out->conn_gen = gen;
    return DROPBLOCK_OK;
}

/* Gives back what the daemon made for this connection (op with {field: id}); nothing to do
 * where the connection of gen was lost: the daemon freed it with the connection. */
static int give_back(dropblock_t *h, const char *op, const char *field, uint32_t id, uint64_t gen)
{
    struct db_conn *c = h->conn;
    pthread_mutex_lock(&c->lock);
    const int lost = c->broken || c->gen != gen;
    pthread_mutex_unlock(&c->lock);
    if (lost) return DROPBLOCK_OK;
    cJSON *req = conn_new_request(op), *reply = NULL;
    if (!req) return DROPBLOCK_EEXHAUSTED;
    proto_add_u64(req, field, id);
    int rc = conn_request(h, req, -1, &gen, c->timeout_ms, &reply, NULL, 0);
    cJSON_Delete(reply);
    return rc;
}

int remote_device_free(dropblock_t *h, dropblock_device_buffer *buf)
{
    if (!buf->region || buf->local) return DROPBLOCK_EINVAL;
    int rc = give_back(h, "region.unregister", "region", buf->region, buf->conn_gen);
    buf->region = 0;
    return rc;
}

/* ---------------------------------------------------------------- semaphores */
int remote_semaphore_create(dropblock_t *h, const char *device, int exported, dropblock_semaphore *out, char *msg,
                            size_t len)
{
    int rc = conn_ensure(h, msg, len);
    if (rc) return rc;
    cJSON *req = conn_new_request("semaphore.create");
    if (!req || !cJSON_AddStringToObject(req, "device", device) || !cJSON_AddBoolToObject(req, "export", exported)) {
        cJSON_Delete(req);
        db_msg(msg, len, "out of memory for a request");
        return DROPBLOCK_EEXHAUSTED;
    }
    cJSON *reply = NULL;
    uint64_t gen = 0, sid = 0;
    int fd = -1;
    rc = conn_request_fd(h, req, -1, &gen, h->conn->timeout_ms, &reply, &fd, msg, len);
    if (!rc) {
        const cJSON *ht = cJSON_GetObjectItemCaseSensitive(reply, "handle_type"),
                    *dev = cJSON_GetObjectItemCaseSensitive(reply, "device"),
                    *du = cJSON_GetObjectItemCaseSensitive(reply, "device_uuid"),
                    *dr = cJSON_GetObjectItemCaseSensitive(reply, "driver_uuid");
        if (proto_get_u64(cJSON_GetObjectItemCaseSensitive(reply, "semaphore"), "semaphore", &sid, NULL, 0) ||
            sid == 0 || sid > UINT32_MAX || !cJSON_IsString(ht) || !cJSON_IsString(dev) || !cJSON_IsString(du) ||
            !cJSON_IsString(dr) || !parse_uuid(du->valuestring, out->device_uuid) ||
            !parse_uuid(dr->valuestring, out->driver_uuid) || (exported && fd < 0)) {
            db_msg(msg, len, "dropblockd's semaphore.create reply %s",
                   exported && fd < 0 ? "came without its descriptor" : "is malformed");
            rc = DROPBLOCK_EINTERNAL;
        } else {
            snprintf(out->handle_type, sizeof out->handle_type, "%s", ht->valuestring);
            snprintf(out->device, sizeof out->device, "%s", dev->valuestring);
        }
    }
    cJSON_Delete(reply);
    if (rc) {
        if (fd >= 0) close(fd);
        return rc;
    }
    out->fd = fd;
    out->id = (uint32_t)sid;
    out->conn_gen = gen;
    return DROPBLOCK_OK;
}

int remote_semaphore_op(dropblock_t *h, const dropblock_semaphore *s, int signal, uint64_t *value, char *msg,
                        size_t len)
{
    struct db_conn *c = h->conn;
    pthread_mutex_lock(&c->lock);
    const uint64_t gen = c->gen;
    pthread_mutex_unlock(&c->lock);
    int rc = semaphore_of("semaphore", s, gen, msg, len);
    if (rc) return rc;
    cJSON *req = conn_new_request(signal ? "semaphore.signal" : "semaphore.value"), *reply = NULL;
    if (!req) return DROPBLOCK_EEXHAUSTED;
    proto_add_u64(req, "semaphore", s->id);
    if (signal) proto_add_u64(req, "value", *value);
    uint64_t g = s->conn_gen;
    rc = conn_request(h, req, -1, &g, c->timeout_ms, &reply, msg, len);
    if (!rc && proto_get_u64(cJSON_GetObjectItemCaseSensitive(reply, "value"), "value", value, NULL, 0)) {
        db_msg(msg, len, "dropblockd's %s reply has no value", signal ? "semaphore.signal" : "semaphore.value");
        rc = DROPBLOCK_EINTERNAL;
    }
    cJSON_Delete(reply);
    return rc;
}

int remote_semaphore_free(dropblock_t *h, dropblock_semaphore *s)
{
    if (!s->id || s->local) return DROPBLOCK_EINVAL;
    int rc = give_back(h, "semaphore.free", "semaphore", s->id, s->conn_gen);
    s->id = 0;
    return rc;
}

int remote_wait(dropblock_t *h, dropblock_ticket *t, int timeout_ms, dropblock_result *res)
{
    if (conn_wait_ticket(h->conn, t, timeout_ms) == DROPBLOCK_ETIMEDOUT) {
        db_msg(res->message, sizeof res->message, "the job is still running after %d ms", timeout_ms);
        return DROPBLOCK_ETIMEDOUT;
    }
    *res = t->res;
    int rc = t->rc;
    conn_ticket_free(t);
    return rc;
}

void remote_abandon(dropblock_t *h, dropblock_ticket *t)
{
    pthread_mutex_lock(&h->conn->lock);
    conn_ticket_remove(h->conn, t); /* a late reply finds no ticket and is dropped */
    pthread_mutex_unlock(&h->conn->lock);
    conn_ticket_free(t);
}

int remote_limits(dropblock_t *h, dropblock_limits *out)
{
    struct db_conn *c = h->conn;
    pthread_mutex_lock(&c->lock);
    out->max_region_bytes = c->max_region_bytes;
    out->max_client_bytes = c->max_client_bytes;
    out->max_client_jobs = c->max_client_jobs;
    pthread_mutex_unlock(&c->lock);
    out->mem_available = db_mem_available();
    return DROPBLOCK_OK;
}

int remote_job_timeout(const dropblock_t *h) { return h->conn->job_timeout_ms; }

/* ---------------------------------------------------------------- status and shutdown */
int remote_status(dropblock_t *h, char *json, size_t len)
{
    cJSON *reply = NULL;
    int rc = conn_ensure(h, NULL, 0);
    if (!rc) rc = conn_request(h, conn_new_request("status"), -1, NULL, h->conn->timeout_ms, &reply, NULL, 0);
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
    int rc = conn_ensure(h, msg, len);
    if (!rc) rc = conn_request(h, conn_new_request("shutdown"), -1, NULL, h->conn->timeout_ms, &reply, msg, len);
    cJSON_Delete(reply);
    return rc;
}
