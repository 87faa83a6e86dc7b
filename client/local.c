/* local.c: the in-process engine behind the public API (dropblock_open_local): devices and jobs
 * of db_engine, plain aligned memory for dropblock_alloc, tickets that hold a finished result. */
#include <dropblock/dropblock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "handle.h"
#include "msg.h"
#include "plan.h"
#include "protocol.h"
#include "sysmem.h"

int dropblock_open_local(dropblock_t **out, const dropblock_local_options *opt, char *msg, size_t len)
{
    if (!out) return DROPBLOCK_EINVAL;
    *out = NULL;
    dropblock_t *h = calloc(1, sizeof *h);
    if (!h) {
        db_msg(msg, len, "out of memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    int rc =
        db_engine_open(&h->engine, opt ? opt->backends : NULL, NULL, opt ? opt->cache_dir : NULL, NULL, NULL, msg, len);
    if (rc) {
        free(h);
        return rc;
    }
    pthread_mutex_init(&h->lock, NULL);
    *out = h;
    return DROPBLOCK_OK;
}

void local_close(dropblock_t *h)
{
    /* memory and tickets belong to the handle: what the caller did not release goes with it */
    for (size_t i = 0; i < h->nallocs; i++) free(h->allocs[i].base);
    free(h->allocs);
    while (h->tickets) {
        dropblock_ticket *t = h->tickets;
        h->tickets = t->next;
        free(t);
    }
    db_engine_close(h->engine);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

int local_devices(dropblock_t *h, dropblock_device_info *infos, size_t cap, size_t *count)
{
    size_t n = db_engine_device_count(h->engine);
    for (size_t i = 0; i < n && i < cap; i++) db_engine_device_info(h->engine, i, &infos[i]);
    *count = n;
    return DROPBLOCK_OK;
}

int local_alloc(dropblock_t *h, size_t bytes, void **ptr, char *msg, size_t msg_len)
{
    void *p = NULL;
    /* refused before anything is touched: with overcommit the allocation itself may succeed
     * and the zero fill below then wake the OOM killer */
    int rc = db_mem_check(bytes, "engine memory", msg, msg_len);
    if (rc) return rc;
    /* 64 bytes: a cache line, and what the wide loads of every backend like */
    if (posix_memalign(&p, 64, bytes)) {
        char b[64];
        db_fmt_bytes(b, sizeof b, bytes);
        db_msg(msg, msg_len, "engine memory of %s: out of memory", b);
        return DROPBLOCK_EEXHAUSTED;
    }
    memset(p, 0, bytes);
    pthread_mutex_lock(&h->lock);
    if (h->nallocs == h->cap_allocs) {
        size_t cap = h->cap_allocs ? h->cap_allocs * 2 : 16;
        struct local_alloc *n = realloc(h->allocs, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&h->lock);
            free(p);
            db_msg(msg, msg_len, "out of memory for the allocation list");
            return DROPBLOCK_EEXHAUSTED;
        }
        h->allocs = n;
        h->cap_allocs = cap;
    }
    h->allocs[h->nallocs].base = p;
    h->allocs[h->nallocs].size = bytes;
    h->nallocs++;
    pthread_mutex_unlock(&h->lock);
    *ptr = p;
    return DROPBLOCK_OK;
}

static int local_run_host(dropblock_t *h, const dropblock_params *p, const void *input, void *output, void *mask,
                          const char *device, dropblock_result *res)
{
    int dev = db_engine_pick(h->engine, device, res->message, sizeof res->message);
    if (dev < 0) return dev;
    return db_engine_run(h->engine, dev, p, input, output, mask, res);
}

int local_free(dropblock_t *h, void *ptr)
{
    pthread_mutex_lock(&h->lock);
    for (size_t i = 0; i < h->nallocs; i++) {
        if (h->allocs[i].base != ptr) continue;
        h->allocs[i] = h->allocs[--h->nallocs];
        pthread_mutex_unlock(&h->lock);
        free(ptr);
        return DROPBLOCK_OK;
    }
    pthread_mutex_unlock(&h->lock);
    return DROPBLOCK_EINVAL; /* not from dropblock_alloc on this handle, or freed already */
}

/* sync's semaphores, for the engine (out: empty without), checked to be this engine's; *dev set
 * to their device where it is -1 (or checked against it) */
static int local_sync(const dropblock_sync *sync, struct db_job_sync *out, int *dev, struct db_engine *e,
                      dropblock_result *res)
{
    memset(out, 0, sizeof *out);
    if (!sync) return DROPBLOCK_OK;
    const dropblock_semaphore *s[2] = {sync->wait, sync->signal};
    for (int i = 0; i < 2; i++) {
        if (!s[i]) continue;
        if (!s[i]->local) {
            db_msg(res->message, sizeof res->message,
                   "%s: a semaphore of a connection to a daemon, not of this "
                   "in-process engine",
                   i ? "signal" : "wait");
            return DROPBLOCK_EINVAL;
        }
        const int sd = db_engine_semaphore_device(s[i]->local);
        if (*dev >= 0 && *dev != sd) {
            db_msg(res->message, sizeof res->message, "%s: the semaphore is of device %s and the job runs on %s",
                   i ? "signal" : "wait", db_engine_device(e, (size_t)sd)->id, db_engine_device(e, (size_t)*dev)->id);
            return DROPBLOCK_EINVAL;
        }
        *dev = sd;
    }
    out->wait = sync->wait ? sync->wait->local : NULL;
    out->wait_value = sync->wait_value;
    out->wait_timeout_ms = sync->wait_timeout_ms ? sync->wait_timeout_ms : 60000;
    out->signal = sync->signal ? sync->signal->local : NULL;
    out->signal_value = sync->signal_value;
    return DROPBLOCK_OK;
}

int local_run(dropblock_t *h, const dropblock_params *p, const dropblock_ref *input, const dropblock_ref *output,
              void *mask, const char *device, const dropblock_sync *sync, dropblock_result *res)
{
    if (sync && (sync->wait || sync->signal)) {
        /* ordered: on the semaphores' device (an id must be theirs), through the engine */
        int dev = input->buffer ? input->buffer->local_dev : -1;
        if (dev < 0 && device && strcmp(device, "auto")) {
            if ((dev = db_engine_pick(h->engine, device, res->message, sizeof res->message)) < 0) return dev;
        }
        struct db_job_sync js;
        int rc = local_sync(sync, &js, &dev, h->engine, res);
        if (rc) return rc;
        if (!input->buffer)
            return db_engine_run_sync(h->engine, dev, p, (const char *)input->ptr + input->offset,
                                      (char *)output->ptr + output->offset, mask, NULL, &js, res);
        const struct db_job_mem mem = {.dev_in = input->buffer->local,
                                       .dev_out = output->buffer ? output->buffer->local : NULL,
                                       .in_off = input->offset,
                                       .out_off = output->offset};
        return db_engine_run_sync(h->engine, dev, p, NULL, NULL, mask, &mem, &js, res);
    }
    if (!input->buffer)
        return local_run_host(h, p, (const char *)input->ptr + input->offset, (char *)output->ptr + output->offset,
                              mask, device, res);
    /* device buffers: the job runs on theirs */
    const int dev = input->buffer->local_dev;
    const char *id = db_engine_device(h->engine, (size_t)dev)->id;
    if (!input->buffer->local || !output->buffer->local || output->buffer->local_dev != dev) {
        db_msg(res->message, sizeof res->message, "%s",
               !input->buffer->local || !output->buffer->local
                   ? "a device buffer from a connection to a daemon, not from this in-process engine"
                   : "the input and output device buffers are on two devices: one device a job");
        return DROPBLOCK_EINVAL;
    }
    if (device && strcmp(device, "auto") && strcmp(device, id)) {
        db_msg(res->message, sizeof res->message, "device \"%.40s\": the tensors are in device memory on %s", device,
               id);
        return DROPBLOCK_EINVAL;
    }
    const struct db_job_mem mem = {.dev_in = input->buffer->local,
                                   .dev_out = output->buffer->local,
                                   .in_off = input->offset,
                                   .out_off = output->offset};
    return db_engine_run_shared(h->engine, dev, p, NULL, NULL, mask, &mem, res);
}

int local_device_alloc(dropblock_t *h, const char *device, uint64_t bytes, dropblock_device_buffer *out, char *msg,
                       size_t msg_len)
{
    const int dev = db_engine_pick_sharing(h->engine, device, DB_SHARE_MEMORY, msg, msg_len);
    if (dev < 0) return dev;
    void *handle = NULL;
    struct db_export_info xi;
    char m[384];
    int rc = db_engine_export_alloc(h->engine, dev, bytes, &handle, &xi, m, sizeof m);
    if (rc) {
        db_msg(msg, msg_len, "%s", m);
        return rc;
    }
    out->fd = xi.fd;
    out->size = xi.size;
    out->allocation_size = xi.allocation_size;
    out->memory_type_index = xi.memory_type_index;
    out->dedicated = xi.dedicated;
    out->host_mappable = xi.host_mappable;
    snprintf(out->handle_type, sizeof out->handle_type, "%s", xi.handle_type);
    snprintf(out->device, sizeof out->device, "%s", db_engine_device(h->engine, (size_t)dev)->id);
    memcpy(out->device_uuid, xi.device_uuid, sizeof out->device_uuid);
    memcpy(out->driver_uuid, xi.driver_uuid, sizeof out->driver_uuid);
    out->local = handle;
    out->local_dev = dev;
    return DROPBLOCK_OK;
}

int local_device_free(dropblock_t *h, dropblock_device_buffer *buf)
{
    if (!buf->local) return DROPBLOCK_EINVAL;
    db_engine_export_free(h->engine, buf->local_dev, buf->local);
    buf->local = NULL;
    return DROPBLOCK_OK;
}

int local_semaphore_create(dropblock_t *h, const char *device, int exported, dropblock_semaphore *out, char *msg,
                           size_t msg_len)
{
    const int dev = db_engine_pick_sharing(h->engine, device,
                                           exported ? DB_SHARE_SEMAPHORE_EXPORT : DB_SHARE_SEMAPHORES, msg, msg_len);
    if (dev < 0) return dev;
    struct db_semaphore *sem;
    struct db_semaphore_info si;
    char m[384];
    int rc = db_engine_semaphore_create(h->engine, dev, exported, &sem, &si, m, sizeof m);
    if (rc) {
        db_msg(msg, msg_len, "%s", m);
        return rc;
    }
    out->fd = si.fd;
    snprintf(out->handle_type, sizeof out->handle_type, "%s", si.handle_type);
    snprintf(out->device, sizeof out->device, "%s", db_engine_device(h->engine, (size_t)dev)->id);
    memcpy(out->device_uuid, si.device_uuid, sizeof out->device_uuid);
    memcpy(out->driver_uuid, si.driver_uuid, sizeof out->driver_uuid);
    out->local = sem;
    return DROPBLOCK_OK;
}

int local_semaphore_op(dropblock_t *h, const dropblock_semaphore *s, int signal, uint64_t *value, char *msg,
                       size_t msg_len)
{
    (void)h;
    if (!s->local) {
        db_msg(msg, msg_len, "a semaphore of a connection to a daemon, not of this in-process engine");
        return DROPBLOCK_EINVAL;
    }
    return signal ? db_engine_semaphore_signal(s->local, *value, msg, msg_len)
                  : db_engine_semaphore_value(s->local, value, msg, msg_len);
}

int local_semaphore_free(dropblock_t *h, dropblock_semaphore *s)
{
    (void)h;
    if (!s->local) return DROPBLOCK_EINVAL;
    db_engine_semaphore_free(s->local);
    s->local = NULL;
    return DROPBLOCK_OK;
}

int local_submit(dropblock_t *h, const dropblock_params *p, const dropblock_ref *input, const dropblock_ref *output,
                 void *mask, const char *device, const dropblock_sync *sync, dropblock_ticket **ticket)
{
    dropblock_ticket *t = calloc(1, sizeof *t);
    if (!t) return DROPBLOCK_EEXHAUSTED;
    t->owner = h;
    t->is_job = 1;
    /* the engine runs in the caller: the job is finished when submit returns */
    t->rc = local_run(h, p, input, output, mask, device, sync, &t->res);
    t->done = 1;
    pthread_mutex_lock(&h->lock);
    t->next = h->tickets;
    if (h->tickets) h->tickets->prev = t;
    h->tickets = t;
    pthread_mutex_unlock(&h->lock);
    *ticket = t;
    return DROPBLOCK_OK;
}

int local_wait(dropblock_t *h, dropblock_ticket *t, dropblock_result *res)
{
    pthread_mutex_lock(&h->lock);
    if (t->prev) t->prev->next = t->next;
    else h->tickets = t->next;
    if (t->next) t->next->prev = t->prev;
    pthread_mutex_unlock(&h->lock);
    *res = t->res;
    int rc = t->rc;
    free(t);
    return rc;
}

int local_status(dropblock_t *h, char *json, size_t len)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return DROPBLOCK_EEXHAUSTED;
    cJSON_AddStringToObject(o, "engine", "local");
    cJSON *devs = cJSON_AddArrayToObject(o, "devices");
    for (size_t i = 0; devs && i < db_engine_device_count(h->engine); i++) {
        dropblock_device_info info;
        db_engine_device_info(h->engine, i, &info);
        cJSON *d = proto_device_json(&info);
        char pass[64];
        db_engine_progress(h->engine, i, pass, sizeof pass);
        if (d && pass[0]) cJSON_AddStringToObject(d, "pass", pass); /* a job is running on it */
        cJSON_AddItemToArray(devs, d);
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) return DROPBLOCK_EEXHAUSTED;
    size_t n = strlen(text);
    int rc = DROPBLOCK_OK;
    if (n + 1 > len) rc = DROPBLOCK_ERANGE;
    else memcpy(json, text, n + 1);
    cJSON_free(text);
    return rc;
}
