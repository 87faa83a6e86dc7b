/* local.c: the in-process engine behind the public API (dropblock_open_local). */
#include <dropblock/dropblock.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

struct dropblock {
    struct db_engine *engine;
};

int dropblock_open_local(dropblock_t **out, const dropblock_local_options *opt, char *msg, size_t len)
{
    if (!out) return DROPBLOCK_EINVAL;
    *out = NULL;
    dropblock_t *h = calloc(1, sizeof *h);
    if (!h) { db_msg(msg, len, "out of memory"); return DROPBLOCK_EEXHAUSTED; }
    int rc = db_engine_open(&h->engine, opt ? opt->backends : NULL, NULL, opt ? opt->cache_dir : NULL, NULL, NULL, msg, len);
    if (rc) { free(h); return rc; }
    *out = h;
    return DROPBLOCK_OK;
}

void dropblock_close(dropblock_t *h)
{
    if (!h) return;
    db_engine_close(h->engine);
    free(h);
}

int dropblock_devices(dropblock_t *h, dropblock_device_info *infos, size_t cap, size_t *count)
{
    if (!h || !count) return DROPBLOCK_EINVAL;
    size_t n = db_engine_device_count(h->engine);
    for (size_t i = 0; i < n && i < cap; i++) infos[i] = *db_engine_device(h->engine, i);
    *count = n;
    return DROPBLOCK_OK;
}

int dropblock_run(dropblock_t *h, const dropblock_params *p, const void *input, void *output, void *mask,
                  const char *device, dropblock_result *res)
{
    dropblock_result scratch;
    if (!res) res = &scratch;
    memset(res, 0, sizeof *res);
    if (!h || !p) {
        db_msg(res->message, sizeof res->message, "%s is NULL", h ? "params" : "handle");
        return DROPBLOCK_EINVAL;
    }
    int dev = db_engine_pick(h->engine, device, res->message, sizeof res->message);
    if (dev < 0) return DROPBLOCK_ENOTFOUND;
    return db_engine_run(h->engine, dev, p, input, output, mask, res);
}
