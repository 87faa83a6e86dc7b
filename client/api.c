/* api.c: the public handle calls of dropblock.h: the argument checks both kinds share, then
 * dispatch to the in-process engine (local.c) or the daemon connection (conn.c, remote.c). */
#include <dropblock/dropblock.h>
#include <string.h>
#include <unistd.h>

#include "handle.h"
#include "msg.h"
#include "plan.h"
#include "sysmem.h"

void dropblock_close(dropblock_t *h)
{
    if (!h) return;
    if (h->remote) remote_close(h);
    else local_close(h);
}

int dropblock_is_remote(const dropblock_t *h) { return h && h->remote; }

int dropblock_devices(dropblock_t *h, dropblock_device_info *infos, size_t cap, size_t *count)
{
    if (!h || !count || (!infos && cap)) return DROPBLOCK_EINVAL;
    return h->remote ? remote_devices(h, infos, cap, count) : local_devices(h, infos, cap, count);
}

int dropblock_alloc(dropblock_t *h, size_t bytes, void **ptr) { return dropblock_alloc_msg(h, bytes, ptr, NULL, 0); }

int dropblock_alloc_msg(dropblock_t *h, size_t bytes, void **ptr, char *msg, size_t msg_len)
{
    if (msg && msg_len) msg[0] = 0;
    if (ptr) *ptr = NULL;
    if (!h || !ptr || bytes == 0) {
        db_msg(msg, msg_len, "%s", !h ? "handle is NULL" : !ptr ? "ptr is NULL" : "bytes is 0");
        return DROPBLOCK_EINVAL;
    }
    return h->remote ? remote_alloc(h, bytes, ptr, msg, msg_len) : local_alloc(h, bytes, ptr, msg, msg_len);
}

int dropblock_get_limits(dropblock_t *h, dropblock_limits *out)
{
    if (!h || !out) return DROPBLOCK_EINVAL;
    if (h->remote) return remote_limits(h, out);
    out->max_region_bytes = out->max_client_bytes = out->max_client_jobs = UINT64_MAX;
    out->mem_available = db_mem_available();
    return DROPBLOCK_OK;
}

int dropblock_free(dropblock_t *h, void *ptr)
{
    if (!h) return DROPBLOCK_EINVAL;
    if (!ptr) return DROPBLOCK_OK; /* like free(NULL) */
    return h->remote ? remote_free(h, ptr) : local_free(h, ptr);
}

/* What run and submit check before either kind sees the job: the same messages everywhere. */
static int check_job(const dropblock_t *h, const dropblock_params *p, const dropblock_ref *input,
                     const dropblock_ref *output, char *msg, size_t len)
{
    if (!h || !p) {
        db_msg(msg, len, "%s is NULL", h ? "params" : "handle");
        return DROPBLOCK_EINVAL;
    }
    int rc = dropblock_params_validate(p, msg, len);
    if (rc) return rc;
    if ((!input->buffer && !input->ptr) || (!output->buffer && !output->ptr)) {
        db_msg(msg, len, "%s is NULL", input->buffer || input->ptr ? "output" : "input");
        return DROPBLOCK_EINVAL;
    }
    if (!input->buffer != !output->buffer) {
        db_msg(msg, len, "the %s is in a device buffer and the %s is not: both or neither",
               input->buffer ? "input" : "output", input->buffer ? "output" : "input");
        return DROPBLOCK_EINVAL;
    }
    const uint64_t tb = dropblock_tensor_bytes(p);
    const dropblock_ref *r[2] = {input, output};
    for (int i = 0; i < 2; i++)
        if (r[i]->buffer && (r[i]->offset > r[i]->buffer->size || tb > r[i]->buffer->size - r[i]->offset)) {
            db_msg(msg, len, "%s: offset %llu + %llu bytes exceeds the device buffer's %llu bytes",
                   i ? "output" : "input", (unsigned long long)r[i]->offset, (unsigned long long)tb,
                   (unsigned long long)r[i]->buffer->size);
            return DROPBLOCK_ERANGE;
        }
    return DROPBLOCK_OK;
}

static dropblock_ref host_ref(const void *p) { return (dropblock_ref){NULL, (void *)p, 0}; }

int dropblock_run(dropblock_t *h, const dropblock_params *p, const void *input, void *output, void *mask,
                  const char *device, dropblock_result *res)
{
    return dropblock_run_ref(h, p, host_ref(input), host_ref(output), mask, device, res);
}

int dropblock_run_ref(dropblock_t *h, const dropblock_params *p, dropblock_ref input, dropblock_ref output, void *mask,
                      const char *device, dropblock_result *res)
{
    return dropblock_run_sync(h, p, input, output, mask, device, NULL, res);
}

int dropblock_run_sync(dropblock_t *h, const dropblock_params *p, dropblock_ref input, dropblock_ref output, void *mask,
                       const char *device, const dropblock_sync *sync, dropblock_result *res)
{
    dropblock_result scratch;
    if (!res) res = &scratch;
    memset(res, 0, sizeof *res);
    int rc = check_job(h, p, &input, &output, res->message, sizeof res->message);
    if (rc) return rc;
    if (!h->remote) return local_run(h, p, &input, &output, mask, device, sync, res);
    dropblock_ticket *t = NULL;
    int timeout = remote_job_timeout(h);
    /* without a timeout the caller reads its own reply (the fast path); with one, the
     * receiver thread does, and the wait is bounded */
    rc = remote_submit(h, timeout < 0, p, &input, &output, mask, device, sync, &t, res->message, sizeof res->message);
    if (rc) return rc;
    rc = remote_wait(h, t, timeout, res);
    if (rc == DROPBLOCK_ETIMEDOUT) {
        remote_abandon(h, t);
        db_msg(res->message, sizeof res->message,
               "no reply to the job within %d ms (the connection's job_timeout_ms); "
               "the daemon may still write its output and mask",
               timeout);
        rc = DROPBLOCK_EUNAVAILABLE;
    }
    return rc;
}

int dropblock_submit(dropblock_t *h, const dropblock_params *p, const void *input, void *output, void *mask,
                     const char *device, dropblock_ticket **ticket)
{
    return dropblock_submit_ref(h, p, host_ref(input), host_ref(output), mask, device, ticket);
}

int dropblock_submit_ref(dropblock_t *h, const dropblock_params *p, dropblock_ref input, dropblock_ref output,
                         void *mask, const char *device, dropblock_ticket **ticket)
{
    return dropblock_submit_sync(h, p, input, output, mask, device, NULL, ticket);
}

int dropblock_submit_sync(dropblock_t *h, const dropblock_params *p, dropblock_ref input, dropblock_ref output,
                          void *mask, const char *device, const dropblock_sync *sync, dropblock_ticket **ticket)
{
    if (!ticket) return DROPBLOCK_EINVAL;
    *ticket = NULL;
    int rc = check_job(h, p, &input, &output, NULL, 0);
    if (rc) return rc;
    return h->remote ? remote_submit(h, 0, p, &input, &output, mask, device, sync, ticket, NULL, 0)
                     : local_submit(h, p, &input, &output, mask, device, sync, ticket);
}

int dropblock_semaphore_create(dropblock_t *h, const char *device, int exported, dropblock_semaphore *out, char *msg,
                               size_t msg_len)
{
    if (msg && msg_len) msg[0] = 0;
    if (!h || !out) {
        db_msg(msg, msg_len, "%s", !h ? "handle is NULL" : "out is NULL");
        return DROPBLOCK_EINVAL;
    }
    memset(out, 0, sizeof *out);
    out->fd = -1;
    if (!device) device = "auto";
    return h->remote ? remote_semaphore_create(h, device, exported != 0, out, msg, msg_len)
                     : local_semaphore_create(h, device, exported != 0, out, msg, msg_len);
}

static int semaphore_op(dropblock_t *h, const dropblock_semaphore *s, int signal, uint64_t *value, char *msg,
                        size_t msg_len)
{
    if (msg && msg_len) msg[0] = 0;
    if (!h || !s || !value) {
        db_msg(msg, msg_len, "%s", !h ? "handle is NULL" : !s ? "semaphore is NULL" : "value is NULL");
        return DROPBLOCK_EINVAL;
    }
    return h->remote ? remote_semaphore_op(h, s, signal, value, msg, msg_len)
                     : local_semaphore_op(h, s, signal, value, msg, msg_len);
}

int dropblock_semaphore_signal(dropblock_t *h, const dropblock_semaphore *s, uint64_t value, char *msg, size_t msg_len)
{
    return semaphore_op(h, s, 1, &value, msg, msg_len);
}

int dropblock_semaphore_value(dropblock_t *h, const dropblock_semaphore *s, uint64_t *value, char *msg, size_t msg_len)
{
    return semaphore_op(h, s, 0, value, msg, msg_len);
}

int dropblock_semaphore_free(dropblock_t *h, dropblock_semaphore *s)
{
    if (!h || !s) return DROPBLOCK_EINVAL;
    if (s->fd >= 0) close(s->fd); /* never imported */
    s->fd = -1;
    return h->remote ? remote_semaphore_free(h, s) : local_semaphore_free(h, s);
}

int dropblock_device_alloc(dropblock_t *h, const char *device, uint64_t bytes, dropblock_device_buffer *out, char *msg,
                           size_t msg_len)
{
    if (msg && msg_len) msg[0] = 0;
    if (!h || !out || bytes == 0) {
        db_msg(msg, msg_len, "%s", !h ? "handle is NULL" : !out ? "out is NULL" : "bytes is 0");
        return DROPBLOCK_EINVAL;
    }
    memset(out, 0, sizeof *out);
    out->fd = -1;
    if (!device) device = "auto";
    return h->remote ? remote_device_alloc(h, device, bytes, out, msg, msg_len)
                     : local_device_alloc(h, device, bytes, out, msg, msg_len);
}

int dropblock_device_free(dropblock_t *h, dropblock_device_buffer *buf)
{
    if (!h || !buf) return DROPBLOCK_EINVAL;
    if (buf->fd >= 0) close(buf->fd); /* never imported */
    buf->fd = -1;
    return h->remote ? remote_device_free(h, buf) : local_device_free(h, buf);
}

int dropblock_wait(dropblock_t *h, dropblock_ticket *ticket, int timeout_ms, dropblock_result *res)
{
    dropblock_result scratch;
    if (!res) res = &scratch;
    memset(res, 0, sizeof *res);
    if (!h || !ticket || ticket->owner != h) {
        db_msg(res->message, sizeof res->message, "%s",
               !h        ? "handle is NULL"
               : !ticket ? "ticket is NULL"
                         : "the ticket belongs to another handle");
        return DROPBLOCK_EINVAL;
    }
    return h->remote ? remote_wait(h, ticket, timeout_ms, res) : local_wait(h, ticket, res);
}

int dropblock_status(dropblock_t *h, char *json, size_t len)
{
    if (!h || !json || !len) return DROPBLOCK_EINVAL;
    return h->remote ? remote_status(h, json, len) : local_status(h, json, len);
}

int dropblock_shutdown(dropblock_t *h, char *msg, size_t msg_len)
{
    if (msg && msg_len) msg[0] = 0;
    if (!h) {
        db_msg(msg, msg_len, "handle is NULL");
        return DROPBLOCK_EINVAL;
    }
    if (!h->remote) {
        db_msg(msg, msg_len, "not a daemon connection (this handle is the in-process engine)");
        return DROPBLOCK_EINVAL;
    }
    return remote_shutdown(h, msg, msg_len);
}
