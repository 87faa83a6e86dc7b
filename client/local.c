/* local.c: the in-process engine behind the public API (dropblock_open_local): devices and jobs
 * of db_engine, plain aligned memory for dropblock_alloc, tickets that hold a finished result. */
#include <dropblock/dropblock.h>
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

int local_run(dropblock_t *h, const dropblock_params *p, const void *input, void *output, void *mask,
              const char *device, dropblock_result *res)
{
    int dev = db_engine_pick(h->engine, device, res->message, sizeof res->message);
    if (dev < 0) return dev;
    return db_engine_run(h->engine, dev, p, input, output, mask, res);
}

int local_submit(dropblock_t *h, const dropblock_params *p, const void *input, void *output, void *mask,
                 const char *device, dropblock_ticket **ticket)
{
    dropblock_ticket *t = calloc(1, sizeof *t);
    if (!t) return DROPBLOCK_EEXHAUSTED;
    t->owner = h;
    t->is_job = 1;
    /* the engine runs in the caller: the job is finished when submit returns */
    t->rc = local_run(h, p, input, output, mask, device, &t->res);
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
