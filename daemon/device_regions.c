/* device_regions.c: region.alloc (docs/protocol.md): device memory the daemon allocates on a
 * device that can export it, handed to the client as a file descriptor with everything an
 * importer needs, then named in jobs like any region. Its bytes count against the device-memory
 * caps (per client and in total) until the region is unregistered or its client leaves; the
 * engine frees the memory once no job holds it (regions.c, region_unref). */
#include <dropblock/dropblock.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sysmem.h"
#include "msg.h"
#include "server.h"

void device_limits(struct server *s)
{
    uint64_t largest = 0;
    for (size_t i = 0; i < db_engine_device_count(s->engine); i++) {
        const dropblock_device_info *info = db_engine_device(s->engine, i);
        if (db_engine_can_export(s->engine, i, NULL, 0) && info->global_mem > largest) largest = info->global_mem;
    }
    if (!s->max_device_bytes) s->max_device_bytes = largest / 4 * 3;
    if (!s->max_client_device_bytes) s->max_client_device_bytes = s->max_device_bytes / 2;
    if (s->max_client_device_bytes > s->max_device_bytes) s->max_client_device_bytes = s->max_device_bytes;
}

void device_region_gone(struct client *c, const struct region *r)
{
    struct server *s = c->srv;
    s->device_bytes -= r->size;
    c->device_bytes -= r->size;
    c->device_regions--;
}

/* whether bytes more stay within the client's and the daemon's device-memory caps (msg: which not) */
static int within_caps(const struct client *c, uint64_t bytes, char *msg, size_t len)
{
    const struct server *s = c->srv;
    char a[32], b[32];
    db_fmt_bytes(a, sizeof a, bytes);
    if (bytes > s->max_client_device_bytes -
                    (c->device_bytes < s->max_client_device_bytes ? c->device_bytes : s->max_client_device_bytes)) {
        db_fmt_bytes(b, sizeof b, s->max_client_device_bytes);
        db_msg(msg, len,
               "region.alloc: %s more would pass this connection's device memory limit of %s "
               "(--max-client-device-bytes)",
               a, b);
        return 0;
    }
    if (bytes > s->max_device_bytes - (s->device_bytes < s->max_device_bytes ? s->device_bytes : s->max_device_bytes)) {
        db_fmt_bytes(b, sizeof b, s->max_device_bytes);
        db_msg(msg, len, "region.alloc: %s more would pass the daemon's device memory limit of %s (--max-device-bytes)",
               a, b);
        return 0;
    }
    return 1;
}

/* The reply: the region and what an importer needs (docs/protocol.md), the fd attached. */
static cJSON *alloc_reply(const cJSON *id, const struct region *r, const char *dev, const struct db_export_info *xi)
{
    char du[37], dr[37];
    db_uuid_text(du, xi->device_uuid);
    db_uuid_text(dr, xi->driver_uuid);
    cJSON *o = proto_reply(id, 1);
    proto_add_u64(o, "region", r->id);
    proto_add_u64(o, "size", r->size);
    cJSON_AddStringToObject(o, "device", dev);
    cJSON_AddNumberToObject(o, "fds", 1);
    cJSON_AddStringToObject(o, "handle_type", xi->handle_type);
    proto_add_u64(o, "allocation_size", xi->allocation_size);
    proto_add_u64(o, "memory_type_index", xi->memory_type_index);
    cJSON_AddBoolToObject(o, "dedicated", xi->dedicated);
    cJSON_AddBoolToObject(o, "host_mappable", xi->host_mappable);
    cJSON_AddStringToObject(o, "device_uuid", du);
    cJSON_AddStringToObject(o, "driver_uuid", dr);
    return o;
}

void op_alloc(struct client *c, const cJSON *id, const cJSON *req)
{
    struct server *s = c->srv;
    char msg[384], device[64];
    uint64_t bytes = 0;
    int code = proto_parse_alloc(req, device, sizeof device, &bytes, msg, sizeof msg);
    if (!code && s->shutting_down) {
        code = DROPBLOCK_EUNAVAILABLE;
        db_msg(msg, sizeof msg, "the daemon is shutting down");
    }
    if (!code && c->regions.count >= s->max_regions) {
        code = DROPBLOCK_EEXHAUSTED;
        db_msg(msg, sizeof msg, "region.alloc: this connection already has %llu regions (the limit, --max-regions)",
               (unsigned long long)s->max_regions);
    }
    int dev = -1;
    if (!code && (dev = db_engine_pick_sharing(s->engine, device, DB_SHARE_MEMORY, msg, sizeof msg)) < 0) code = dev;
    if (!code && !within_caps(c, bytes, msg, sizeof msg)) code = DROPBLOCK_EEXHAUSTED;
    void *handle = NULL;
    struct db_export_info xi;
    if (!code) code = db_engine_export_alloc(s->engine, dev, bytes, &handle, &xi, msg, sizeof msg);
    if (code) {
        send_error(c, id, code, msg);
        return;
    }
    const char *dev_id = db_engine_device(s->engine, (size_t)dev)->id;
    struct region *r = region_device(s->engine, dev, handle, c->regions.next_id + 1, bytes);
    if (!r || region_table_add(&c->regions, r)) {
        close(xi.fd);
        if (r) region_unref(r); /* gives the memory back */
        else db_engine_export_free(s->engine, dev, handle);
        send_error(c, id, DROPBLOCK_EEXHAUSTED, "region.alloc: out of memory");
        return;
    }
    c->regions.next_id++;
    s->nregions++;
    s->device_bytes += bytes;
    c->device_bytes += bytes;
    c->device_regions++;
    logmsg(s, LOG_DEBUG, "client=%llu region %u: %llu bytes of device memory on %s", (unsigned long long)c->id, r->id,
           (unsigned long long)bytes, dev_id);
    client_send_fd(c, alloc_reply(id, r, dev_id, &xi), xi.fd);
}
