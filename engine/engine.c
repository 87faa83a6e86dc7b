/* engine.c: device list, choice and job dispatch over the backend vtable. */
#include "engine.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "msg.h"

#define DB_MAX_DEVICES 64
#define DB_MAX_FAULTS 32

enum { FAULT_FAIL, FAULT_ALLOC, FAULT_VANISH, FAULT_LOST, FAULT_N };
static const char *const fault_names[FAULT_N] = {"fail", "alloc", "vanish", "lost"};

struct db_fault {
    int kind;
    uint64_t at;  /* the device's job number, from 1 */
    char dev[32]; /* the device id it names */
};

struct db_slot {
    struct db_device dev;
    pthread_mutex_t lock;                  /* one job at a time per device */
    atomic_int busy;                       /* jobs running or waiting here */
    atomic_int healthy;                    /* 1 until the device fails for good */
    char why[200];                         /* why it is unhealthy: written once, before healthy drops to 0 */
    uint64_t njobs;                        /* jobs that reached the device (under lock) */
    struct db_fault faults[DB_MAX_FAULTS]; /* injected, for this device */
    int nfaults;
    /* exported memory given back (db_engine_export_free), freed under lock before the device's
     * next job or at a sweep: never while a job may use it, never waiting for one */
    pthread_mutex_t free_lock;
    void **to_free;
    size_t nfree, cap_free;
};

struct db_engine {
    struct db_slot slots[DB_MAX_DEVICES];
    size_t n;
    struct db_backend_config cfg;
    struct db_knobs knobs;
    char cache_dir[512];
    void (*log)(void *ctx, const char *line);
    void *log_ctx;
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

void db_dev_log(const struct db_device *dev, const char *fmt, ...)
{
    if (!dev || !dev->log) return;
    char line[768];
    int n = snprintf(line, sizeof line, "%s: ", dev->info.id);
    if (n < 0 || (size_t)n >= sizeof line) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    dev->log(dev->log_ctx, line);
}

/* Parses $DROPBLOCK_FAULTS (engine.h): KIND:DEVICE:N[,KIND:DEVICE:N...]. */
static int parse_faults(const char *spec, struct db_fault *out, int *n, char *msg, size_t len)
{
    *n = 0;
    for (const char *s = spec; s && *s;) {
        const char *end = strchr(s, ',');
        size_t l = end ? (size_t)(end - s) : strlen(s);
        char entry[96];
        if (l >= sizeof entry) {
            db_msg(msg, len, "DROPBLOCK_FAULTS: entry \"%.40s...\" is too long", s);
            return DROPBLOCK_EINVAL;
        }
        memcpy(entry, s, l);
        entry[l] = 0;
        char *first = strchr(entry, ':'), *last = strrchr(entry, ':');
        const char *why = NULL;
        int kind = -1;
        if (!first || first == last) why = "must be KIND:DEVICE:N, e.g. fail:opencl:0:3";
        if (!why) {
            *first = 0;
            *last = 0;
            for (int k = 0; k < FAULT_N; k++)
                if (!strcmp(entry, fault_names[k])) kind = k;
            if (kind < 0) why = "KIND must be fail, alloc, vanish or lost";
        }
        char *stop = NULL;
        unsigned long long at = 0;
        if (!why) {
            at = strtoull(last + 1, &stop, 10);
            if (!last[1] || *stop || last[1] == '-' || last[1] == '+' || at == 0) why = "N must be a job number >= 1";
            else if (!first[1] || strlen(first + 1) >= sizeof out->dev)
                why = "DEVICE must be a device id such as opencl:0";
            else if (*n >= DB_MAX_FAULTS) why = "at most 32 entries";
        }
        if (why) {
            db_msg(msg, len, "DROPBLOCK_FAULTS: entry \"%.*s\": %s", (int)l, s, why);
            return DROPBLOCK_EINVAL;
        }
        out[*n].kind = kind;
        out[*n].at = at;
        snprintf(out[*n].dev, sizeof out[*n].dev, "%s", first + 1);
        (*n)++;
        if (!end) break;
        s = end + 1;
    }
    return DROPBLOCK_OK;
}

/* Checks the backends list (NULL: all of them). */
static int check_backends(const char *backends, char *msg, size_t len)
{
    if (!backends) return DROPBLOCK_OK;
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
    return DROPBLOCK_OK;
}

/* Opens backend ops's devices, those visible, and adds those it prepares to e's slots. */
static void open_backend(struct db_engine *e, const struct backend_ops *ops, const char *visible)
{
    struct db_device found[DB_MAX_DEVICES];
    char why[512] = "";
    int k = ops->enumerate(&e->cfg, found, DB_MAX_DEVICES - e->n, why, sizeof why);
    if (k <= 0) {
        if (k < 0 || why[0]) logf_(e->log, e->log_ctx, "%s: no devices: %s", ops->name, why);
        return;
    }
    for (int i = 0; i < k; i++) {
        struct db_device *d = &found[i];
        snprintf(d->info.id, sizeof d->info.id, "%s:%d", ops->name, i);
        if (visible && !in_list(visible, d->info.id) && !in_list(visible, ops->name)) {
            ops->release(d);
            continue;
        }
        d->log = e->log;
        d->log_ctx = e->log_ctx;
        why[0] = 0;
        if (ops->prepare(d, &e->cfg, why, sizeof why)) {
            logf_(e->log, e->log_ctx, "%s: skipped: %s", d->info.id, why);
            ops->release(d);
            continue;
        }
        struct db_slot *s = &e->slots[e->n++];
        s->dev = *d;
        pthread_mutex_init(&s->lock, NULL);
        pthread_mutex_init(&s->free_lock, NULL);
        atomic_init(&s->busy, 0);
        atomic_init(&s->healthy, 1);
        s->dev.info.healthy = 1;
    }
}

/* Gives the open devices their DROPBLOCK_FAULTS entries; one naming no device here is logged. */
static void attach_faults(struct db_engine *e, const struct db_fault *faults, int nfaults)
{
    for (int f = 0; f < nfaults; f++) {
        struct db_slot *s = NULL;
        for (size_t i = 0; i < e->n && !s; i++)
            if (!strcmp(e->slots[i].dev.info.id, faults[f].dev)) s = &e->slots[i];
        char at[32];
        snprintf(at, sizeof at, "%llu", (unsigned long long)faults[f].at);
        if (!s) {
            logf_(e->log, e->log_ctx, "DROPBLOCK_FAULTS: no device %s here; its %s fault is ignored", faults[f].dev,
                  fault_names[faults[f].kind]);
            continue;
        }
        if (faults[f].kind == FAULT_LOST && !strcmp(s->dev.ops->name, "cpu")) {
            logf_(e->log, e->log_ctx, "DROPBLOCK_FAULTS: device %s has no device API to lose; its %s fault is ignored",
                  s->dev.info.id, fault_names[faults[f].kind]);
            continue;
        }
        s->faults[s->nfaults++] = faults[f];
        char what[64];
        snprintf(what, sizeof what, "\"%s\" at its job %s", fault_names[faults[f].kind], at);
        logf_(e->log, e->log_ctx, "DROPBLOCK_FAULTS: device %s: injected fault %s", s->dev.info.id, what);
    }
}

int db_engine_open(struct db_engine **out, const char *backends, const char *visible, const char *cache_dir,
                   void (*log)(void *ctx, const char *line), void *log_ctx, char *msg, size_t len)
{
    *out = NULL;
    int rc = check_backends(backends, msg, len);
    if (rc) return rc;
    /* checked before any device is opened: a typo fails fast */
    struct db_fault faults[DB_MAX_FAULTS];
    int nfaults = 0;
#if DB_FAULT_INJECTION
    int frc = parse_faults(getenv("DROPBLOCK_FAULTS"), faults, &nfaults, msg, len);
    if (frc) return frc;
#else
    (void)parse_faults;
#endif
    struct db_engine *e = calloc(1, sizeof *e);
    if (!e) {
        db_msg(msg, len, "out of memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    e->log = log;
    e->log_ctx = log_ctx;
    if (cache_dir) snprintf(e->cache_dir, sizeof e->cache_dir, "%s", cache_dir);
    else db_default_cache_dir(e->cache_dir, sizeof e->cache_dir);
    e->cfg.cache_dir = e->cache_dir[0] ? e->cache_dir : NULL;
    db_knobs_read(&e->knobs, log, log_ctx);
    e->cfg.knobs = &e->knobs;
    if (!visible) visible = getenv("DROPBLOCK_VISIBLE_DEVICES");
    if (visible && !*visible) visible = NULL;
    for (size_t b = 0; b < sizeof all_backends / sizeof *all_backends; b++)
        if (in_list(backends, all_backends[b]->name)) open_backend(e, all_backends[b], visible);
    if (e->n == 0) {
        db_msg(msg, len, "no usable device (backends %s%s%s)", backends ? backends : "all",
               visible ? ", DROPBLOCK_VISIBLE_DEVICES=" : "", visible ? visible : "");
        free(e);
        return DROPBLOCK_ENOTFOUND;
    }
    attach_faults(e, faults, nfaults);
    *out = e;
    return DROPBLOCK_OK;
}

struct db_knobs *db_engine_knobs(struct db_engine *e) { return &e->knobs; }

/* The exports given back on slot s, freed (s->lock held, or the engine closing). */
static void free_exports(struct db_slot *s)
{
    pthread_mutex_lock(&s->free_lock);
    for (size_t i = 0; i < s->nfree; i++) s->dev.ops->export_free(&s->dev, s->to_free[i]);
    s->nfree = 0;
    pthread_mutex_unlock(&s->free_lock);
}

void db_engine_close(struct db_engine *e)
{
    if (!e) return;
    for (size_t i = 0; i < e->n; i++) {
        free_exports(&e->slots[i]);
        e->slots[i].dev.ops->release(&e->slots[i].dev);
        pthread_mutex_destroy(&e->slots[i].lock);
        pthread_mutex_destroy(&e->slots[i].free_lock);
        free(e->slots[i].to_free);
    }
    free(e);
}

size_t db_engine_device_count(const struct db_engine *e) { return e->n; }

const dropblock_device_info *db_engine_device(const struct db_engine *e, size_t i)
{
    return i < e->n ? &e->slots[i].dev.info : NULL;
}

int db_engine_healthy(const struct db_engine *e, size_t i, char *why, size_t len)
{
    if (i >= e->n) return 0;
    /* acquire: pairs with the release in mark_unhealthy, so why is complete when read */
    int ok = atomic_load_explicit(&e->slots[i].healthy, memory_order_acquire);
    if (!ok) db_msg(why, len, "%s", e->slots[i].why);
    else db_msg(why, len, "%s", "");
    return ok;
}

void db_engine_device_info(const struct db_engine *e, size_t i, dropblock_device_info *out)
{
    memset(out, 0, sizeof *out);
    if (i >= e->n) return;
    *out = e->slots[i].dev.info;
    out->healthy = db_engine_healthy(e, i, NULL, 0);
    out->can_export = db_engine_can_export(e, i, NULL, 0);
    out->semaphores = db_engine_can_semaphore(e, i, 0, NULL, 0);
    out->semaphore_export = db_engine_can_semaphore(e, i, 1, NULL, 0);
}

void db_engine_progress(const struct db_engine *e, size_t i, char *buf, size_t len)
{
    static const char *const names[] = {"", "running", "mask pass", "scales", "apply pass"};
    if (!len) return;
    buf[0] = 0;
    if (i >= e->n) return;
    const struct db_device *d = &e->slots[i].dev;
    int pass = d->pass;
    unsigned long long chunk = d->chunk, n = d->nchunks;
    if (pass < 0 || pass > DB_PASS_APPLY) return;
    if (n > 1 && chunk) snprintf(buf, len, "%s, chunk %llu of %llu", names[pass], chunk, n);
    else snprintf(buf, len, "%s", names[pass]);
}

int db_engine_device_tuning(const struct db_engine *e, size_t i, const struct db_plan *pl, struct db_tuning *out)
{
    if (i >= e->n) return -1;
    e->slots[i].dev.ops->tuning(&e->slots[i].dev, pl, out);
    return 0;
}

int db_engine_last_job_stats(const struct db_engine *e, size_t i, struct db_job_stats *out)
{
    memset(out, 0, sizeof *out);
    if (i >= e->n) return -1;
    struct db_slot *s = (struct db_slot *)&e->slots[i]; /* the lock is the only thing changed */
    pthread_mutex_lock(&s->lock);
    *out = s->dev.last_job;
    pthread_mutex_unlock(&s->lock);
    return 0;
}

void db_engine_device_paths(const struct db_engine *e, size_t i, char *buf, size_t len)
{
    if (len) buf[0] = 0;
    if (i < e->n && len) e->slots[i].dev.ops->describe(&e->slots[i].dev, buf, len);
}

/* Marks a device unhealthy for good (s->lock held, so one writer). */
static void mark_unhealthy(struct db_engine *e, struct db_slot *s, const char *why)
{
    if (!atomic_load_explicit(&s->healthy, memory_order_relaxed)) return;
    snprintf(s->why, sizeof s->why, "%s", why);
    atomic_store_explicit(&s->healthy, 0, memory_order_release);
    logf_(e->log, e->log_ctx, "device %s is unhealthy from now on: %s", s->dev.info.id, why);
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
        return DROPBLOCK_ENOTFOUND;
    }
    int best = -1, best_kind = -1, best_busy = 0;
    for (size_t i = 0; i < e->n; i++) {
        if (!db_engine_healthy(e, i, NULL, 0)) continue;
        int kind = e->slots[i].dev.info.kind == DROPBLOCK_DEVICE_OTHER ? 0 : (int)e->slots[i].dev.info.kind;
        int busy = atomic_load(&e->slots[i].busy);
        if (kind > best_kind || (kind == best_kind && busy < best_busy)) {
            best = (int)i;
            best_kind = kind;
            best_busy = busy;
        }
    }
    if (best < 0) {
        db_engine_no_healthy(e, msg, len);
        return DROPBLOCK_EUNAVAILABLE;
    }
    return best;
}

void db_engine_no_healthy(const struct db_engine *e, char *msg, size_t len)
{
    char ids[256] = "";
    for (size_t i = 0; i < e->n; i++) {
        size_t l = strlen(ids);
        snprintf(ids + l, sizeof ids - l, "%s%s", i ? ", " : "", e->slots[i].dev.info.id);
    }
    db_msg(msg, len, "no healthy device: every device (%s) has failed and is marked unhealthy", ids);
}

/* The message of a job sent to an unhealthy device. */
static void unavailable_msg(const struct db_slot *s, char *msg, size_t len)
{
    db_msg(msg, len, "device %s is unavailable (unhealthy: %s); \"auto\" picks the healthy devices", s->dev.info.id,
           s->why);
}

/* An injected fault at the device's job number n, or -1. */
static int fault_at(const struct db_slot *s, uint64_t n)
{
    for (int i = 0; i < s->nfaults; i++)
        if (s->faults[i].at == n) return s->faults[i].kind;
    return -1;
}

/* The checks of a job before it waits for its device: into res, the device's id and what fails; pl, its plan. */
static int check_job(struct db_engine *e, int dev, const dropblock_params *p, const void *in, const void *out,
                     int on_device, struct db_plan *pl, dropblock_result *res)
{
    if (dev < 0 || (size_t)dev >= e->n) {
        db_msg(res->message, sizeof res->message, "device index %d out of range", dev);
        return DROPBLOCK_ENOTFOUND;
    }
    struct db_slot *s = &e->slots[dev];
    snprintf(res->device, sizeof res->device, "%s", s->dev.info.id);
    int rc = dropblock_params_validate(p, res->message, sizeof res->message);
    if (rc) return rc;
    if ((rc = db_plan_init(pl, p, res->message, sizeof res->message))) return rc;
    if (!on_device && (!in || !out)) {
        db_msg(res->message, sizeof res->message, "%s buffer is NULL", in ? "output" : "input");
        return DROPBLOCK_EINVAL;
    }
    if (!db_engine_healthy(e, (size_t)dev, NULL, 0)) {
        unavailable_msg(s, res->message, sizeof res->message);
        return DROPBLOCK_EUNAVAILABLE;
    }
    return DROPBLOCK_OK;
}

/* The backend's run of the device's job n; a failure names the device. */
static int run_backend(struct db_engine *e, struct db_slot *s, const struct db_plan *pl, const void *in, void *out,
                       void *mask, const struct db_job_mem *mem, dropblock_result *res, uint64_t n)
{
    const char *id = s->dev.info.id;
    db_progress(&s->dev, DB_PASS_RUNNING, 0, 0);
    s->dev.last_job = (struct db_job_stats){0}; /* the backend's run counts into it */
    s->dev.job_mem = mem;
    int rc = s->dev.ops->run(&s->dev, pl, in, out, mask, res);
    s->dev.job_mem = NULL;
    db_progress(&s->dev, DB_PASS_IDLE, 0, 0);
    s->dev.inject_lost = 0;
    if (rc == DROPBLOCK_EUNAVAILABLE) {
        /* the device is gone (lost by its driver): no job goes to it again */
        char why[200];
        snprintf(why, sizeof why, "its driver lost it at its job %llu: %s", (unsigned long long)n, res->message);
        mark_unhealthy(e, s, why);
    }
    /* a failure names the device whatever the backend wrote */
    if (rc && rc != DROPBLOCK_EINVAL && !strstr(res->message, id)) {
        char m[sizeof res->message];
        snprintf(m, sizeof m, "%s", res->message);
        db_msg(res->message, sizeof res->message, "device %s: %s%s", id, m[0] ? m : dropblock_strerror(rc),
               rc == DROPBLOCK_EUNAVAILABLE ? " (it is marked unhealthy)" : "");
    }
    return rc;
}

/* A job on its device, s->lock held: an injected fault, or the backend's run. */
static int run_locked(struct db_engine *e, struct db_slot *s, const struct db_plan *pl, const void *in, void *out,
                      void *mask, const struct db_job_mem *mem, dropblock_result *res, int probe)
{
    const char *id = s->dev.info.id;
    if (!atomic_load_explicit(&s->healthy, memory_order_relaxed)) {
        /* it failed while this job waited for it */
        unavailable_msg(s, res->message, sizeof res->message);
        return DROPBLOCK_EUNAVAILABLE;
    }
    uint64_t n = probe ? s->njobs : ++s->njobs;
    int fault = probe ? -1 : fault_at(s, n);
    s->dev.inject_lost = fault == FAULT_LOST; /* run below, its API failing as for a lost device */
    switch (fault) {
    case FAULT_FAIL:
        db_msg(res->message, sizeof res->message, "device %s failed the job: injected fault", id);
        return DROPBLOCK_EINTERNAL;
    case FAULT_ALLOC:
        db_msg(res->message, sizeof res->message, "device %s could not allocate the job's buffers: injected fault", id);
        return DROPBLOCK_EEXHAUSTED;
    case FAULT_VANISH: {
        char why[96];
        snprintf(why, sizeof why, "it vanished at its job %llu: injected fault", (unsigned long long)n);
        mark_unhealthy(e, s, why);
        db_msg(res->message, sizeof res->message, "device %s is unavailable: %s; it is marked unhealthy", id, why);
        return DROPBLOCK_EUNAVAILABLE;
    }
    default: return run_backend(e, s, pl, in, out, mask, mem, res, n);
    }
}

/* r, if the bytes [p, p + bytes) lie inside it; else NULL (a region that does not hold the
 * tensor is no hint at all) */
static struct db_host_region *holding(struct db_host_region *r, const void *p, uint64_t bytes)
{
    if (!r) return NULL;
    const uintptr_t b = (uintptr_t)r->base, a = (uintptr_t)p;
    return a >= b && a - b <= r->size && bytes <= r->size - (a - b) ? r : NULL;
}

static int engine_run(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                      const struct db_job_mem *mem, dropblock_result *res, int try_only, int probe)
{
    struct db_plan pl;
    /* device memory: both tensors in it, on this device (the caller's exports of it) */
    const int on_device = mem && (mem->dev_in || mem->dev_out);
    if (on_device && !(mem->dev_in && mem->dev_out)) {
        db_msg(res->message, sizeof res->message, "the %s is in device memory and the %s is not: both or neither",
               mem->dev_in ? "input" : "output", mem->dev_in ? "output" : "input");
        return DROPBLOCK_EINVAL;
    }
    int rc = check_job(e, dev, p, in, out, on_device, &pl, res);
    if (rc) return rc;
    struct db_slot *s = &e->slots[dev];
    if (mask) memset(mask, 0, dropblock_mask_bytes(p));
    if (pl.identity && !on_device) {
        uint64_t t0 = db_now_us();
        db_identity(&pl, in, out, mask, res);
        res->timing_us[3] = db_now_us() - t0;
        return DROPBLOCK_OK;
    }
    if (try_only) {
        if (pthread_mutex_trylock(&s->lock)) return DB_ENGINE_BUSY;
        atomic_fetch_add(&s->busy, 1);
    } else {
        atomic_fetch_add(&s->busy, 1);
        pthread_mutex_lock(&s->lock);
    }
    const uint64_t bytes = pl.numel * dropblock_dtype_size(p->dtype);
    struct db_job_mem m = {0};
    if (on_device) m = *mem;
    else if (mem) {
        m.in = holding(mem->in, in, bytes);
        m.out = holding(mem->out, out, bytes);
    }
    if (mem) {
        m.wait_sem = mem->wait_sem;
        m.wait_value = mem->wait_value;
    }
    if (s->dev.ops->sweep) s->dev.ops->sweep(&s->dev); /* what it kept for regions gone since */
    free_exports(s);
    rc = run_locked(e, s, &pl, in, out, mask, on_device || m.in || m.out || m.wait_sem ? &m : NULL, res, probe);
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_sub(&s->busy, 1);
    return rc;
}
int db_engine_run(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                  dropblock_result *res)
{
    memset(res, 0, sizeof *res);
    return engine_run(e, dev, p, in, out, mask, NULL, res, 0, 0);
}

int db_engine_run_shared(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                         const struct db_job_mem *mem, dropblock_result *res)
{
    return db_engine_run_sync(e, dev, p, in, out, mask, mem, NULL, res);
}

/* ---- timeline semaphores (docs/protocol.md semaphore.create) -------------------------- */

struct db_semaphore {
    struct db_engine *e;
    int dev;
    void *bk; /* the backend's handle */
    int exported;
    atomic_int refs;      /* the owner's, and each job's and wait's that uses it */
    atomic_int gone;      /* its owner freed it: waits on it end */
    pthread_mutex_t lock; /* signals one at a time, each raising the value */
};

int db_engine_can_semaphore(const struct db_engine *e, size_t i, int exported, char *why, size_t len)
{
    if (i >= e->n) return 0;
    const struct db_slot *s = &e->slots[i];
    if (!s->dev.ops->can_semaphore) {
        db_msg(why, len,
               "device %s (%s) has no timeline semaphores: only Vulkan devices with VK_KHR_timeline_semaphore do",
               s->dev.info.id, s->dev.info.api);
        return 0;
    }
    return s->dev.ops->can_semaphore(&s->dev, exported, why, len);
}

int db_engine_semaphore_create(struct db_engine *e, int dev, int exported, struct db_semaphore **out,
                               struct db_semaphore_info *info, char *msg, size_t len)
{
    memset(info, 0, sizeof *info);
    info->fd = -1;
    if (dev < 0 || (size_t)dev >= e->n) {
        db_msg(msg, len, "device index %d out of range", dev);
        return DROPBLOCK_ENOTFOUND;
    }
    struct db_slot *s = &e->slots[dev];
    if (!db_engine_can_semaphore(e, (size_t)dev, exported, msg, len)) return DROPBLOCK_EINVAL;
    if (!db_engine_healthy(e, (size_t)dev, NULL, 0)) {
        unavailable_msg(s, msg, len);
        return DROPBLOCK_EUNAVAILABLE;
    }
    struct db_semaphore *sem = calloc(1, sizeof *sem);
    if (!sem) {
        db_msg(msg, len, "out of host memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    int rc = s->dev.ops->sem_create(&s->dev, exported, &sem->bk, info, msg, len);
    if (rc) {
        free(sem);
        return rc;
    }
    sem->e = e;
    sem->dev = dev;
    sem->exported = exported;
    atomic_init(&sem->refs, 1);
    atomic_init(&sem->gone, 0);
    pthread_mutex_init(&sem->lock, NULL);
    *out = sem;
    return DROPBLOCK_OK;
}

int db_engine_semaphore_device(const struct db_semaphore *sem) { return sem->dev; }

static void sem_ref(struct db_semaphore *sem) { atomic_fetch_add(&sem->refs, 1); }

static void sem_unref(struct db_semaphore *sem)
{
    if (atomic_fetch_sub(&sem->refs, 1) != 1) return;
    struct db_slot *s = &sem->e->slots[sem->dev];
    s->dev.ops->sem_free(&s->dev, sem->bk);
    pthread_mutex_destroy(&sem->lock);
    free(sem);
}

void db_engine_semaphore_hold(struct db_semaphore *sem) { sem_ref(sem); }
void db_engine_semaphore_release(struct db_semaphore *sem)
{
    if (sem) sem_unref(sem);
}

void db_engine_semaphore_free(struct db_semaphore *sem)
{
    if (!sem) return;
    atomic_store(&sem->gone, 1);
    sem_unref(sem);
}

int db_engine_semaphore_value(struct db_semaphore *sem, uint64_t *value, char *msg, size_t len)
{
    struct db_slot *s = &sem->e->slots[sem->dev];
    return s->dev.ops->sem_value(&s->dev, sem->bk, value, msg, len);
}

/* Raises it to value (queued: after every submission of its device so far, its lock held). */
static int sem_signal(struct db_semaphore *sem, uint64_t value, int queued, char *msg, size_t len)
{
    struct db_slot *s = &sem->e->slots[sem->dev];
    pthread_mutex_lock(&sem->lock);
    uint64_t now = 0;
    int rc = s->dev.ops->sem_value(&s->dev, sem->bk, &now, msg, len);
    if (!rc && value <= now) {
        db_msg(msg, len, "the semaphore is at %llu already: a signal must raise it (value %llu)",
               (unsigned long long)now, (unsigned long long)value);
        rc = DROPBLOCK_EINVAL;
    }
    if (!rc) rc = s->dev.ops->sem_signal(&s->dev, sem->bk, value, queued, msg, len);
    pthread_mutex_unlock(&sem->lock);
    return rc;
}

int db_engine_semaphore_signal(struct db_semaphore *sem, uint64_t value, char *msg, size_t len)
{
    return sem_signal(sem, value, 0, msg, len);
}

int db_engine_semaphore_wait(struct db_semaphore *sem, uint64_t value, uint32_t timeout_ms, char *msg, size_t len)
{
    struct db_slot *s = &sem->e->slots[sem->dev];
    const uint64_t t_end = db_now_us() + (uint64_t)timeout_ms * 1000;
    sem_ref(sem);
    int rc;
    /* in slices, so that a semaphore freed by its owner (a client that left) ends the wait */
    for (;;) {
        if (atomic_load(&sem->gone)) {
            db_msg(msg, len, "the semaphore was freed while a job waited for it to reach %llu",
                   (unsigned long long)value);
            rc = DROPBLOCK_EUNAVAILABLE;
            break;
        }
        const uint64_t now = db_now_us();
        const uint64_t slice = now >= t_end ? 0 : t_end - now < 20000 ? t_end - now : 20000;
        rc = s->dev.ops->sem_wait(&s->dev, sem->bk, value, slice * 1000, msg, len);
        if (rc != DROPBLOCK_ETIMEDOUT || now >= t_end) break;
    }
    if (rc == DROPBLOCK_ETIMEDOUT) {
        uint64_t at = 0;
        s->dev.ops->sem_value(&s->dev, sem->bk, &at, NULL, 0);
        db_msg(msg, len, "the semaphore did not reach %llu within %u ms (it is at %llu)", (unsigned long long)value,
               timeout_ms, (unsigned long long)at);
    }
    sem_unref(sem);
    return rc;
}

/* The signal of a job that is over, whatever its outcome (so that a stream waiting on it never
 * hangs): queued after the job's submissions. A failure to signal fails a job that succeeded. */
static int signal_after(struct db_engine *e, const struct db_job_sync *sync, int rc, dropblock_result *res)
{
    struct db_semaphore *sem = sync->signal;
    struct db_slot *s = &e->slots[sem->dev];
    char m[200];
    pthread_mutex_lock(&s->lock);
    int src = sem_signal(sem, sync->signal_value, 1, m, sizeof m);
    pthread_mutex_unlock(&s->lock);
    /* a queue that cannot take it (a lost device): from the host, so that no waiter hangs */
    if (src && src != DROPBLOCK_EINVAL) src = sem_signal(sem, sync->signal_value, 0, m, sizeof m);
    if (src && !rc) {
        db_msg(res->message, sizeof res->message, "signal: %s", m);
        return src;
    }
    return rc;
}

int db_engine_run_sync(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                       const struct db_job_mem *mem, const struct db_job_sync *sync, dropblock_result *res)
{
    memset(res, 0, sizeof *res);
    if (!sync || (!sync->wait && !sync->signal)) return engine_run(e, dev, p, in, out, mask, mem, res, 0, 0);
    struct db_job_mem m = {0};
    if (mem) m = *mem;
    /* held for the whole job: the owner may free them meanwhile */
    if (sync->wait) sem_ref(sync->wait);
    if (sync->signal) sem_ref(sync->signal);
    int rc = DROPBLOCK_OK;
    for (int i = 0; i < 2 && !rc; i++) {
        const struct db_semaphore *sem = i ? sync->signal : sync->wait;
        if (sem && sem->dev != dev) {
            db_msg(res->message, sizeof res->message, "%s: the semaphore is of device %s and the job runs on %s",
                   i ? "signal" : "wait", e->slots[sem->dev].dev.info.id,
                   dev >= 0 && (size_t)dev < e->n ? e->slots[dev].dev.info.id : "no device");
            rc = DROPBLOCK_EINVAL;
        }
    }
    if (!rc && sync->wait) {
        char m2[200];
        rc = db_engine_semaphore_wait(sync->wait, sync->wait_value, sync->wait_timeout_ms, m2, sizeof m2);
        if (rc == DROPBLOCK_ETIMEDOUT) rc = DROPBLOCK_EUNAVAILABLE; /* nothing ran: retry once it is signalled */
        if (rc) db_msg(res->message, sizeof res->message, "wait: %s; the job did not run", m2);
        m.wait_sem = sync->wait->bk;
        m.wait_value = sync->wait_value;
    }
    if (!rc) rc = engine_run(e, dev, p, in, out, mask, &m, res, 0, 0);
    if (sync->signal && sync->signal->dev == dev) rc = signal_after(e, sync, rc, res);
    if (sync->wait) sem_unref(sync->wait);
    if (sync->signal) sem_unref(sync->signal);
    return rc;
}

void db_engine_sweep(struct db_engine *e)
{
    for (size_t i = 0; i < e->n; i++) {
        struct db_slot *s = &e->slots[i];
        if (!s->dev.ops->sweep && !s->dev.ops->export_free) continue;
        if (pthread_mutex_trylock(&s->lock)) continue; /* busy: at its next job */
        if (s->dev.ops->sweep) s->dev.ops->sweep(&s->dev);
        free_exports(s);
        pthread_mutex_unlock(&s->lock);
    }
}

int db_engine_can_export(const struct db_engine *e, size_t i, char *why, size_t len)
{
    if (i >= e->n) return 0;
    const struct db_slot *s = &e->slots[i];
    if (!s->dev.ops->export_alloc || !s->dev.ops->can_export) {
        db_msg(why, len, "device %s (%s) cannot export memory: only Vulkan devices with VK_KHR_external_memory_fd can",
               s->dev.info.id, s->dev.info.api);
        return 0;
    }
    return s->dev.ops->can_export(&s->dev, why, len);
}

static int can_share(const struct db_engine *e, size_t i, enum db_sharing what)
{
    return what == DB_SHARE_MEMORY ? db_engine_can_export(e, i, NULL, 0)
                                   : db_engine_can_semaphore(e, i, what == DB_SHARE_SEMAPHORE_EXPORT, NULL, 0);
}

int db_engine_pick_sharing(struct db_engine *e, const char *device, enum db_sharing what, char *msg, size_t len)
{
    if (device && strcmp(device, "auto")) return db_engine_pick(e, device, msg, len);
    int best = -1;
    for (size_t i = 0; i < e->n; i++) {
        if (!db_engine_healthy(e, i, NULL, 0) || !can_share(e, i, what)) continue;
        if (best < 0 || e->slots[i].dev.info.kind < e->slots[best].dev.info.kind) best = (int)i;
    }
    if (best >= 0) return best;
    const char *missing =
        what == DB_SHARE_MEMORY ? "can export memory (a Vulkan device whose driver has VK_KHR_external_memory_fd)"
        : what == DB_SHARE_SEMAPHORES
            ? "has timeline semaphores (a Vulkan device whose driver has VK_KHR_timeline_semaphore)"
            : "has timeline semaphores it can export (a Vulkan device whose driver has VK_KHR_timeline_semaphore "
              "and VK_KHR_external_semaphore_fd); \"export\": false needs only the first";
    db_msg(msg, len, "no device %s", missing);
    return DROPBLOCK_ENOTFOUND;
}

int db_engine_export_alloc(struct db_engine *e, int dev, uint64_t bytes, void **handle, struct db_export_info *info,
                           char *msg, size_t len)
{
    if (dev < 0 || (size_t)dev >= e->n) {
        db_msg(msg, len, "device index %d out of range", dev);
        return DROPBLOCK_ENOTFOUND;
    }
    struct db_slot *s = &e->slots[dev];
    if (!db_engine_can_export(e, (size_t)dev, msg, len)) return DROPBLOCK_EINVAL;
    if (!db_engine_healthy(e, (size_t)dev, NULL, 0)) {
        unavailable_msg(s, msg, len);
        return DROPBLOCK_EUNAVAILABLE;
    }
    if (bytes == 0) {
        db_msg(msg, len, "0 bytes of device memory: ask for at least 1");
        return DROPBLOCK_EINVAL;
    }
    /* (the backend's allocation is thread-safe against the device's running job: no lock) */
    return s->dev.ops->export_alloc(&s->dev, bytes, handle, info, msg, len);
}

void db_engine_export_free(struct db_engine *e, int dev, void *handle)
{
    if (dev < 0 || (size_t)dev >= e->n || !handle) return;
    struct db_slot *s = &e->slots[dev];
    pthread_mutex_lock(&s->free_lock);
    if (s->nfree == s->cap_free) {
        size_t cap = s->cap_free ? 2 * s->cap_free : 16;
        void **n = realloc(s->to_free, cap * sizeof *n);
        if (!n) { /* no room to defer: free it once the device is idle (waits for its job) */
            pthread_mutex_unlock(&s->free_lock);
            pthread_mutex_lock(&s->lock);
            s->dev.ops->export_free(&s->dev, handle);
            pthread_mutex_unlock(&s->lock);
            return;
        }
        s->to_free = n;
        s->cap_free = cap;
    }
    s->to_free[s->nfree++] = handle;
    pthread_mutex_unlock(&s->free_lock);
    db_engine_sweep(e); /* at once where the device is idle */
}

int db_engine_try_run(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out, void *mask,
                      dropblock_result *res)
{
    memset(res, 0, sizeof *res);
    return engine_run(e, dev, p, in, out, mask, NULL, res, 1, 0);
}

int db_engine_run_probe(struct db_engine *e, int dev, const dropblock_params *p, const void *in, void *out,
                        dropblock_result *res)
{
    memset(res, 0, sizeof *res);
    return engine_run(e, dev, p, in, out, NULL, NULL, res, 0, 1);
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
