/* semaphores.c: timeline semaphores a client orders its jobs with (docs/protocol.md,
 * "Ordering with semaphores"): semaphore.create makes one on a device (exported as a file
 * descriptor in the reply, for a CUDA or HIP stream to import, unless "export" is false),
 * .signal and .value set and read it from the host, .free gives it up; a job's "wait" and
 * "signal" name them. A connection holds at most --max-semaphores; they go with it. */
#include <dropblock/dropblock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msg.h"
#include "server.h"

struct db_semaphore *client_semaphore(const struct client *c, uint32_t id)
{
    for (size_t i = 0; i < c->nsems; i++)
        if (c->sems[i].id == id) return c->sems[i].sem;
    return NULL;
}

void client_semaphores_clear(struct client *c)
{
    c->srv->nsemaphores -= c->nsems;
    for (size_t i = 0; i < c->nsems; i++) db_engine_semaphore_free(c->sems[i].sem);
    free(c->sems);
    c->sems = NULL;
    c->nsems = c->cap_sems = 0;
}

static void op_create(struct client *c, const cJSON *id, const cJSON *req)
{
    struct server *s = c->srv;
    char msg[384], device[64];
    int exported = 1;
    int code = proto_parse_semaphore_create(req, device, sizeof device, &exported, msg, sizeof msg);
    if (!code && s->shutting_down) {
        code = DROPBLOCK_EUNAVAILABLE;
        db_msg(msg, sizeof msg, "the daemon is shutting down");
    }
    if (!code && c->nsems >= s->max_semaphores) {
        code = DROPBLOCK_EEXHAUSTED;
        db_msg(msg, sizeof msg,
               "semaphore.create: this connection already has %llu semaphores (the limit, --max-semaphores)",
               (unsigned long long)s->max_semaphores);
    }
    int dev = -1;
    if (!code &&
        (dev = db_engine_pick_sharing(s->engine, device, exported ? DB_SHARE_SEMAPHORE_EXPORT : DB_SHARE_SEMAPHORES,
                                      msg, sizeof msg)) < 0)
        code = dev;
    if (!code && c->nsems == c->cap_sems) {
        size_t cap = c->cap_sems ? 2 * c->cap_sems : 8;
        struct client_sem *n = realloc(c->sems, cap * sizeof *n);
        if (!n) {
            code = DROPBLOCK_EEXHAUSTED;
            db_msg(msg, sizeof msg, "semaphore.create: out of memory");
        } else {
            c->sems = n;
            c->cap_sems = cap;
        }
    }
    struct db_semaphore *sem = NULL;
    struct db_semaphore_info si;
    if (!code) code = db_engine_semaphore_create(s->engine, dev, exported, &sem, &si, msg, sizeof msg);
    if (code) {
        send_error(c, id, code, msg);
        return;
    }
    const uint32_t sid = ++c->next_sem;
    c->sems[c->nsems++] = (struct client_sem){sid, sem};
    s->nsemaphores++;
    const char *dev_id = db_engine_device(s->engine, (size_t)dev)->id;
    char du[37], dr[37];
    db_uuid_text(du, si.device_uuid);
    db_uuid_text(dr, si.driver_uuid);
    cJSON *o = proto_reply(id, 1);
    proto_add_u64(o, "semaphore", sid);
    cJSON_AddStringToObject(o, "device", dev_id);
    proto_add_u64(o, "value", 0);
    cJSON_AddNumberToObject(o, "fds", exported ? 1 : 0);
    cJSON_AddStringToObject(o, "handle_type", si.handle_type);
    cJSON_AddStringToObject(o, "device_uuid", du);
    cJSON_AddStringToObject(o, "driver_uuid", dr);
    logmsg(s, LOG_DEBUG, "client=%llu semaphore %u on %s%s", (unsigned long long)c->id, sid, dev_id,
           exported ? ", exported" : "");
    if (exported) client_send_fd(c, o, si.fd);
    else client_send(c, o);
}

void op_semaphore(struct client *c, const char *op, const cJSON *id, const cJSON *req)
{
    if (!strcmp(op, "semaphore.create")) {
        op_create(c, id, req);
        return;
    }
    char msg[300];
    uint32_t sid = 0;
    uint64_t value = 0;
    const int signal = !strcmp(op, "semaphore.signal");
    int code = proto_parse_semaphore_ref(req, &sid, signal ? &value : NULL, msg, sizeof msg);
    struct db_semaphore *sem = code ? NULL : client_semaphore(c, sid);
    if (!code && !sem) {
        code = DROPBLOCK_ENOTFOUND;
        db_msg(msg, sizeof msg, "semaphore %u: no such semaphore on this connection", sid);
    }
    if (!code && !strcmp(op, "semaphore.free")) {
        for (size_t i = 0; i < c->nsems; i++)
            if (c->sems[i].id == sid) c->sems[i] = c->sems[--c->nsems];
        c->srv->nsemaphores--;
        db_engine_semaphore_free(sem); /* a job waiting on it ends its wait; jobs hold references */
        client_send(c, proto_reply(id, 1));
        return;
    }
    char m2[256];
    if (!code && signal && (code = db_engine_semaphore_signal(sem, value, m2, sizeof m2)))
        db_msg(msg, sizeof msg, "semaphore %u: %s", sid, m2);
    if (!code && (code = db_engine_semaphore_value(sem, &value, m2, sizeof m2)))
        db_msg(msg, sizeof msg, "semaphore %u: %s", sid, m2);
    if (code) {
        send_error(c, id, code, msg);
        return;
    }
    cJSON *o = proto_reply(id, 1);
    proto_add_u64(o, "value", value);
    client_send(c, o);
}

int job_sync(struct client *c, const struct proto_job *pj, int *dev, struct db_job_sync *sync, char *msg, size_t len)
{
    struct server *s = c->srv;
    memset(sync, 0, sizeof *sync);
    const struct proto_sync *want[2] = {&pj->wait, &pj->signal};
    struct db_semaphore *got[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        if (!want[i]->present) continue;
        const char *field = i ? "signal" : "wait";
        if (!(got[i] = client_semaphore(c, want[i]->semaphore))) {
            db_msg(msg, len, "%s.semaphore %u: no such semaphore on this connection", field, want[i]->semaphore);
            return DROPBLOCK_ENOTFOUND;
        }
        const int sdev = db_engine_semaphore_device(got[i]);
        const char *sid = db_engine_device(s->engine, (size_t)sdev)->id;
        if (*dev >= 0 && *dev != sdev) {
            db_msg(msg, len, "%s.semaphore %u is of device %s and the job runs on %s: one device a job", field,
                   want[i]->semaphore, sid, db_engine_device(s->engine, (size_t)*dev)->id);
            return DROPBLOCK_EINVAL;
        }
        *dev = sdev;
    }
    if (pj->wait.present && pj->wait.has_timeout && pj->wait.timeout_ms > s->max_semaphore_wait_ms) {
        db_msg(msg, len, "wait.timeout_ms %llu: at most %llu (--max-semaphore-wait-ms)",
               (unsigned long long)pj->wait.timeout_ms, (unsigned long long)s->max_semaphore_wait_ms);
        return DROPBLOCK_EINVAL;
    }
    sync->wait = got[0];
    sync->wait_value = pj->wait.value;
    sync->wait_timeout_ms = (uint32_t)(pj->wait.has_timeout ? pj->wait.timeout_ms : s->max_semaphore_wait_ms);
    sync->signal = got[1];
    sync->signal_value = pj->signal.value;
    if (sync->wait) db_engine_semaphore_hold(sync->wait);
    if (sync->signal) db_engine_semaphore_hold(sync->signal);
    return DROPBLOCK_OK;
}

void job_sync_release(struct db_job_sync *sync)
{
    db_engine_semaphore_release(sync->wait);
    db_engine_semaphore_release(sync->signal);
    sync->wait = sync->signal = NULL;
}
