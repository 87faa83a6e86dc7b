/* engine.c: device list, choice and job dispatch over the backend vtable. */
#include "engine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DB_MAX_DEVICES 64

struct db_slot {
    struct db_device dev;
    pthread_mutex_t lock; /* one job at a time per device */
    atomic_int busy;      /* jobs running or waiting here */
};

struct db_engine {
    struct db_slot slots[DB_MAX_DEVICES];
    size_t n;
    struct db_backend_config cfg;
    char cache_dir[512];
};

static const struct backend_ops *const all_backends[] = {&db_backend_opencl, &db_backend_vulkan, &db_backend_cpu};

void db_default_cache_dir(char *buf, size_t len)
{
    const char *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    if (x && *x) snprintf(buf, len, "%s/dropblock", x);
    else if (h && *h) snprintf(buf, len, "%s/.cache/dropblock", h);
    else snprintf(buf, len, "/tmp/dropblock-cache");
}

static int in_list(const char *list, const char *word)
{
    if (!list) return 1;
    size_t wl = strlen(word);
    for (const char *s = list; *s;) {
        const char *end = strchr(s, ',');
        size_t l = end ? (size_t)(end - s) : strlen(s);
        if (l == wl && !strncmp(s, word, l)) return 1;
        if (!end) break;
        s = end + 1;
    }
    return 0;
}

static void logf_(void (*log)(void *, const char *), void *ctx, const char *fmt, const char *a, const char *b)
{
    if (!log) return;
    char line[768];
    snprintf(line, sizeof line, fmt, a, b);
    log(ctx, line);
}

int db_engine_open(struct db_engine **out, const char *backends, const char *visible, const char *cache_dir,
                   void (*log)(void *ctx, const char *line), void *log_ctx, char *msg, size_t len)
{
    *out = NULL;
    if (backends) {
        for (const char *s = backends; *s;) {
            const char *end = strchr(s, ',');
            size_t l = end ? (size_t)(end - s) : strlen(s);
            if (!((l == 3 && !strncmp(s, "cpu", 3)) || (l == 6 && !strncmp(s, "opencl", 6)) ||
                  (l == 6 && !strncmp(s, "vulkan", 6)))) {
                db_msg(msg, len, "backend \"%.*s\": must be cpu, opencl or vulkan", (int)l, s);
                return DROPBLOCK_EINVAL;
            }
            if (!end) break;
            s = end + 1;
        }
    }
    struct db_engine *e = calloc(1, sizeof *e);
    if (!e) { db_msg(msg, len, "out of memory"); return DROPBLOCK_EEXHAUSTED; }
    if (cache_dir) snprintf(e->cache_dir, sizeof e->cache_dir, "%s", cache_dir);
    else db_default_cache_dir(e->cache_dir, sizeof e->cache_dir);
    e->cfg.cache_dir = e->cache_dir[0] ? e->cache_dir : NULL;
    if (!visible) visible = getenv("DROPBLOCK_VISIBLE_DEVICES");
    if (visible && !*visible) visible = NULL;
    for (size_t b = 0; b < sizeof all_backends / sizeof *all_backends; b++) {
        const struct backend_ops *ops = all_backends[b];
        if (!in_list(backends, ops->name)) continue;
        struct db_device found[DB_MAX_DEVICES];
        char why[512] = "";
        int k = ops->enumerate(&e->cfg, found, DB_MAX_DEVICES - e->n, why, sizeof why);
        if (k < 0) { logf_(log, log_ctx, "%s: no devices: %s", ops->name, why); continue; }
        for (int i = 0; i < k; i++) {
            struct db_device *d = &found[i];
            snprintf(d->info.id, sizeof d->info.id, "%s:%d", ops->name, i);
            if (visible && !in_list(visible, d->info.id) && !in_list(visible, ops->name)) {
                ops->release(d);
                continue;
            }
            why[0] = 0;
            if (ops->prepare(d, &e->cfg, why, sizeof why)) {
                logf_(log, log_ctx, "%s: skipped: %s", d->info.id, why);
                ops->release(d);
                continue;
            }
            struct db_slot *s = &e->slots[e->n++];
            s->dev = *d;
            pthread_mutex_init(&s->lock, NULL);
            atomic_init(&s->busy, 0);
        }
    }
    if (e->n == 0) {
        db_msg(msg, len, "no usable device (backends %s%s%s)", backends ? backends : "all",
               visible ? ", DROPBLOCK_VISIBLE_DEVICES=" : "", visible ? visible : "");
        free(e);
        return DROPBLOCK_ENOTFOUND;
    }
    *out = e;
    return DROPBLOCK_OK;
}

void db_engine_close(struct db_engine *e)
{
    if (!e) return;
    for (size_t i = 0; i < e->n; i++) {
        e->slots[i].dev.ops->release(&e->slots[i].dev);
        pthread_mutex_destroy(&e->slots[i].lock);
    }
    free(e);
}

size_t db_engine_device_count(const struct db_engine *e) { return e->n; }

const dropblock_device_info *db_engine_device(const struct db_engine *e, size_t i)
{
    return i < e->n ? &e->slots[i].dev.info : NULL;
}

int db_engine_pick(struct db_engine *e, const char *device, char *msg, size_t len)
{
    if (device && *device && strcmp(device, "auto")) {
        for (size_t i = 0; i < e->n; i++)
            if (!strcmp(e->slots[i].dev.info.id, device)) return (int)i;
        char ids[256] = "";
        for (size_t i = 0; i < e->n; i++) {
            size_t l = strlen(ids);
            snprintf(ids + l, sizeof ids - l, "%s%s", i ? ", " : "", e->slots[i].dev.info.id);
        }
        db_msg(msg, len, "device \"%s\" not found (devices: %s)", device, ids);
        return -1;
    }
    int best = -1, best_kind = -1, best_busy = 0;
    for (size_t i = 0; i < e->n; i++) {
        int kind = e->slots[i].dev.info.kind == DROPBLOCK_DEVICE_OTHER ? 0 : (int)e->slots[i].dev.info.kind;
        int busy = atomic_load(&e->slots[i].busy);
        if (kind > best_kind || (kind == best_kind && busy < best_busy)) {
            best = (int)i; best_kind = kind; best_busy = busy;
        }
    }
    return best;
}

int db_engine_run(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                  dropblock_result *res)
{
    memset(res, 0, sizeof *res);
    if (dev < 0 || (size_t)dev >= e->n) {
        db_msg(res->message, sizeof res->message, "device index %d out of range", dev);
        return DROPBLOCK_ENOTFOUND;
    }
    struct db_slot *s = &e->slots[dev];
    snprintf(res->device, sizeof res->device, "%s", s->dev.info.id);
    int rc = dropblock_params_validate(p, res->message, sizeof res->message);
    if (rc) return rc;
    struct db_plan pl;
    if ((rc = db_plan_init(&pl, p, res->message, sizeof res->message))) return rc;
    if (!in || !out) {
        db_msg(res->message, sizeof res->message, "%s buffer is NULL", in ? "output" : "input");
        return DROPBLOCK_EINVAL;
    }
    if (mask) memset(mask, 0, dropblock_mask_bytes(p));
    if (pl.identity) {
        uint64_t t0 = db_now_us();
        db_identity(&pl, in, out, mask, res);
        res->timing_us[3] = db_now_us() - t0;
        return DROPBLOCK_OK;
    }
    atomic_fetch_add(&s->busy, 1);
    pthread_mutex_lock(&s->lock);
    rc = s->dev.ops->run(&s->dev, &pl, in, out, mask, res);
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_sub(&s->busy, 1);
    return rc;
}

int db_engine_bench(struct db_engine *e, int dev, const dropblock_params *p, const void *x, unsigned whats, int warmup,
                    int reps, double *us, char *msg, size_t len)
{
    if (dev < 0 || (size_t)dev >= e->n) {
        db_msg(msg, len, "device index %d out of range", dev);
        return DROPBLOCK_ENOTFOUND;
    }
    int rc = dropblock_params_validate(p, msg, len);
    if (rc) return rc;
    struct db_plan pl;
    if ((rc = db_plan_init(&pl, p, msg, len))) return rc;
    if (pl.identity) {
        db_msg(msg, len, "rate 0 or eval is the identity: nothing to benchmark");
        return DROPBLOCK_EINVAL;
    }
    if (whats == 0 || whats >= (1u << DB_BENCH_N) || reps < 1 || warmup < 0) {
        db_msg(msg, len, "bench: bad request");
        return DROPBLOCK_EINVAL;
    }
    struct db_slot *s = &e->slots[dev];
    pthread_mutex_lock(&s->lock);
    rc = s->dev.ops->bench(&s->dev, &pl, x, whats, warmup, reps, us, msg, len);
    pthread_mutex_unlock(&s->lock);
    return rc;
}
