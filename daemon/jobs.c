/* jobs.c: per-device workers and queues; completions go back to the loop thread. */
#include "jobs.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "msg.h"
#include "smalljob.h"

struct worker {
    struct jobs *js;
    int dev;
    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct job *head, *tail; /* queued */
    int stop;
    struct jobs_device_stats st; /* under lock */
};

struct jobs {
    struct db_engine *engine;
    uv_async_t async;
    jobs_done_fn done;
    void *ctx;
    pthread_mutex_t done_lock;
    struct job *done_head, *done_tail;
    int n;
    struct worker *w;
    uint64_t small_bytes;
    /* jobs_submit_waiting's threads: how many, and the stop that ends their waits */
    pthread_mutex_t wait_lock;
    pthread_cond_t wait_cond;
    int waiting, stopping;
};

static void push_done(struct jobs *js, struct job *j)
{
    pthread_mutex_lock(&js->done_lock);
    j->next = NULL;
    if (js->done_tail) js->done_tail->next = j;
    else js->done_head = j;
    js->done_tail = j;
    pthread_mutex_unlock(&js->done_lock);
    uv_async_send(&js->async);
}

static void on_async(uv_async_t *a)
{
    struct jobs *js = a->data;
    pthread_mutex_lock(&js->done_lock);
    struct job *j = js->done_head;
    js->done_head = js->done_tail = NULL;
    pthread_mutex_unlock(&js->done_lock);
    while (j) {
        struct job *next = j->next;
        js->done(j, js->ctx);
        j = next;
    }
}

static void on_async_closed(uv_handle_t *h) { free(h->data); }

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->head && !w->stop) pthread_cond_wait(&w->cond, &w->lock);
        if (!w->head) break; /* stop with an empty queue */
        struct job *j = w->head;
        w->head = j->next;
        if (!w->head) w->tail = NULL;
        w->st.queued--;
        w->st.running++;
        pthread_mutex_unlock(&w->lock);

        j->t_start = db_now_us();
        if (!atomic_load(&j->cancelled)) {
            /* the regions, so that a device may keep their imports between jobs */
            struct db_job_mem mem = {.in = j->rin ? &j->rin->host : NULL, .out = j->rout ? &j->rout->host : NULL};
            if (j->rin && j->rin->dev >= 0) /* device memory (region.alloc): its export handles */
                mem = (struct db_job_mem){
                    .dev_in = j->rin->export, .dev_out = j->rout->export, .in_off = j->in_off, .out_off = j->out_off};
            j->rc = db_engine_run_sync(w->js->engine, w->dev, &j->p, j->in, j->out, j->mask, &mem, &j->sync, &j->res);
            j->ran = 1;
        }
        uint64_t busy = db_now_us() - j->t_start;

        pthread_mutex_lock(&w->lock);
        w->st.running--;
        if (j->ran) {
            if (j->rc) w->st.failed++;
            else w->st.completed++;
            w->st.busy_us += busy;
            w->st.bytes += j->bytes;
        }
        pthread_mutex_unlock(&w->lock);
        push_done(w->js, j);
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

int jobs_start(struct jobs **out, struct db_engine *e, uv_loop_t *loop, jobs_done_fn done, void *ctx, char *msg,
               size_t len)
{
    struct jobs *js = calloc(1, sizeof *js);
    if (!js) {
        db_msg(msg, len, "out of memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    js->engine = e;
    js->done = done;
    js->ctx = ctx;
    js->n = (int)db_engine_device_count(e);
    js->w = calloc((size_t)js->n, sizeof *js->w);
    pthread_mutex_init(&js->done_lock, NULL);
    if (!js->w || uv_async_init(loop, &js->async, on_async)) {
        db_msg(msg, len, "cannot set up the job queues");
        free(js->w);
        free(js);
        return DROPBLOCK_EINTERNAL;
    }
    js->async.data = js;
    pthread_mutex_init(&js->wait_lock, NULL);
    pthread_cond_init(&js->wait_cond, NULL);
    for (int i = 0; i < js->n; i++) {
        struct worker *w = &js->w[i];
        w->js = js;
        w->dev = i;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        if (pthread_create(&w->thread, NULL, worker_main, w)) {
            db_msg(msg, len, "cannot start the worker thread of device %s", db_engine_device(e, (size_t)i)->id);
            jobs_stop(js);
            return DROPBLOCK_EINTERNAL;
        }
        w->started = 1;
    }
    *out = js;
    return DROPBLOCK_OK;
}

int jobs_device_count(const struct jobs *js) { return js->n; }

void jobs_set_small_job_bytes(struct jobs *js, uint64_t bytes) { js->small_bytes = bytes; }

static int cpu_builtin(const struct jobs *js, int dev)
{
    return db_engine_device(js->engine, (size_t)dev)->kind == DROPBLOCK_DEVICE_CPU;
}

int jobs_pick(struct jobs *js, const char *device, uint64_t bytes, char *msg, size_t len)
{
    if (device && *device && strcmp(device, "auto")) return db_engine_pick(js->engine, device, msg, len);
    if (bytes <= js->small_bytes)
        for (int i = 0; i < js->n; i++)
            if (cpu_builtin(js, i) && db_engine_healthy(js->engine, (size_t)i, NULL, 0)) return i;
    int best = -1, best_kind = -1;
    uint64_t best_load = 0;
    for (int i = 0; i < js->n; i++) {
        if (!db_engine_healthy(js->engine, (size_t)i, NULL, 0)) continue; /* failed for good */
        dropblock_device_kind k = db_engine_device(js->engine, (size_t)i)->kind;
        int kind = k == DROPBLOCK_DEVICE_OTHER ? 0 : (int)k;
        pthread_mutex_lock(&js->w[i].lock);
        uint64_t load = js->w[i].st.queued + js->w[i].st.running;
        pthread_mutex_unlock(&js->w[i].lock);
        if (kind > best_kind || (kind == best_kind && load < best_load)) {
            best = i;
            best_kind = kind;
            best_load = load;
        }
    }
    if (best < 0) {
        db_engine_no_healthy(js->engine, msg, len);
        return DROPBLOCK_EUNAVAILABLE;
    }
    return best;
}

/* ---- the small-job threshold, measured ----------------------------------------------------- */
/* The pair to compare is the jobs' choice (jobs_pick); sj_measure times the ladder on it. */
int jobs_measure_small(struct jobs *js, uint64_t budget_us, struct jobs_small *out)
{
    memset(out, 0, sizeof *out);
    out->cpu = out->dev = -1;
    for (int i = 0; i < js->n; i++)
        if (cpu_builtin(js, i) && db_engine_healthy(js->engine, (size_t)i, NULL, 0)) {
            out->cpu = i;
            break;
        }
    uint64_t saved = js->small_bytes;
    js->small_bytes = 0;
    int dev = jobs_pick(js, "auto", UINT64_MAX, NULL, 0); /* where a large auto job goes */
    js->small_bytes = saved;
    if (out->cpu < 0 || dev < 0 || cpu_builtin(js, dev)) {
        out->why = JOBS_SMALL_NOTHING;
        return -1;
    }
    out->dev = dev;
    return sj_measure(js->engine, budget_us, out);
}

int jobs_run_inline(struct jobs *js, struct job *j)
{
    if (j->bytes > js->small_bytes || !cpu_builtin(js, j->dev) || j->sync.wait || j->sync.signal) return 0;
    struct worker *w = &js->w[j->dev];
    pthread_mutex_lock(&w->lock);
    int idle = !w->head && !w->st.running;
    pthread_mutex_unlock(&w->lock);
    if (!idle) return 0;
    j->t_start = db_now_us();
    int rc = db_engine_try_run(js->engine, j->dev, &j->p, j->in, j->out, j->mask, &j->res);
    if (rc == DB_ENGINE_BUSY) return 0;
    j->rc = rc;
    j->ran = 1;
    pthread_mutex_lock(&w->lock);
    if (rc) w->st.failed++;
    else w->st.completed++;
    w->st.busy_us += db_now_us() - j->t_start;
    w->st.bytes += j->bytes;
    pthread_mutex_unlock(&w->lock);
    return 1;
}

void jobs_submit(struct jobs *js, struct job *j)
{
    struct worker *w = &js->w[j->dev];
    j->next = NULL;
    pthread_mutex_lock(&w->lock);
    if (w->tail) w->tail->next = j;
    else w->head = j;
    w->tail = j;
    w->st.queued++;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

struct waiter {
    struct jobs *js;
    struct job *j;
};

/* Waits in slices (the job's client may leave, the daemon may stop meanwhile), then queues the
 * job, or hands it back unrun with its signal raised. */
static void *waiter_main(void *arg)
{
    struct waiter *wt = arg;
    struct jobs *js = wt->js;
    struct job *j = wt->j;
    free(wt);
    const uint64_t t_end = db_now_us() + (uint64_t)j->sync.wait_timeout_ms * 1000;
    char m[200] = "";
    int rc;
    for (;;) {
        pthread_mutex_lock(&js->wait_lock);
        const int stopping = js->stopping;
        pthread_mutex_unlock(&js->wait_lock);
        if (stopping || atomic_load(&j->cancelled)) {
            rc = DROPBLOCK_EUNAVAILABLE;
            snprintf(m, sizeof m, "%s", stopping ? "the daemon is stopping" : "its client left");
            break;
        }
        const uint64_t now = db_now_us();
        const uint64_t left_ms = now >= t_end ? 0 : (t_end - now + 999) / 1000;
        rc = db_engine_semaphore_wait(j->sync.wait, j->sync.wait_value, left_ms < 50 ? (uint32_t)left_ms : 50, m,
                                      sizeof m);
        if (rc != DROPBLOCK_ETIMEDOUT || now >= t_end) break;
    }
    if (rc == DROPBLOCK_OK) {
        jobs_submit(js, j);
    } else {
        if (rc == DROPBLOCK_ETIMEDOUT)
            snprintf(m, sizeof m, "the semaphore did not reach %llu within %u ms",
                     (unsigned long long)j->sync.wait_value, j->sync.wait_timeout_ms);
        db_msg(j->res.message, sizeof j->res.message, "wait: %s; the job did not run", m);
        j->rc = DROPBLOCK_EUNAVAILABLE;
        j->ran = 1; /* answered with its reason, not as a job the daemon never started */
        if (j->sync.signal) db_engine_semaphore_signal(j->sync.signal, j->sync.signal_value, NULL, 0);
        push_done(js, j);
    }
    pthread_mutex_lock(&js->wait_lock);
    if (--js->waiting == 0) pthread_cond_broadcast(&js->wait_cond);
    pthread_mutex_unlock(&js->wait_lock);
    return NULL;
}

void jobs_submit_waiting(struct jobs *js, struct job *j)
{
    struct waiter *wt = malloc(sizeof *wt);
    pthread_attr_t at;
    pthread_t t;
    int started = 0;
    if (wt && !pthread_attr_init(&at)) {
        *wt = (struct waiter){js, j};
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 256 * 1024);
        pthread_mutex_lock(&js->wait_lock);
        js->waiting++;
        started = !pthread_create(&t, &at, waiter_main, wt);
        if (!started) js->waiting--;
        pthread_mutex_unlock(&js->wait_lock);
        pthread_attr_destroy(&at);
    }
    if (started) return;
    free(wt);
    /* no thread for it: the device's worker waits (the job's order is kept) */
    jobs_submit(js, j);
}

struct job *jobs_take_queued(struct jobs *js)
{
    struct job *all = NULL, **tail = &all;
    for (int i = 0; i < js->n; i++) {
        struct worker *w = &js->w[i];
        pthread_mutex_lock(&w->lock);
        *tail = w->head;
        while (*tail) tail = &(*tail)->next;
        w->head = w->tail = NULL;
        w->st.queued = 0;
        pthread_mutex_unlock(&w->lock);
    }
    return all;
}

void jobs_stats(struct jobs *js, int dev, struct jobs_device_stats *st)
{
    pthread_mutex_lock(&js->w[dev].lock);
    *st = js->w[dev].st;
    pthread_mutex_unlock(&js->w[dev].lock);
}

void jobs_end_waits(struct jobs *js)
{
    pthread_mutex_lock(&js->wait_lock);
    js->stopping = 1;
    pthread_mutex_unlock(&js->wait_lock);
}

void jobs_stop(struct jobs *js)
{
    if (!js) return;
    /* the waiting threads end within a slice of their wait, handing their jobs back */
    jobs_end_waits(js);
    pthread_mutex_lock(&js->wait_lock);
    while (js->waiting) pthread_cond_wait(&js->wait_cond, &js->wait_lock);
    pthread_mutex_unlock(&js->wait_lock);
    for (int i = 0; i < js->n; i++) {
        struct worker *w = &js->w[i];
        pthread_mutex_lock(&w->lock);
        w->stop = 1;
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
    }
    for (int i = 0; i < js->n; i++)
        if (js->w[i].started) pthread_join(js->w[i].thread, NULL);
    on_async(&js->async); /* hand back what finished last */
    for (int i = 0; i < js->n; i++) {
        pthread_mutex_destroy(&js->w[i].lock);
        pthread_cond_destroy(&js->w[i].cond);
    }
    pthread_mutex_destroy(&js->done_lock);
    pthread_mutex_destroy(&js->wait_lock);
    pthread_cond_destroy(&js->wait_cond);
    free(js->w);
    js->w = NULL;
    /* js itself goes when the loop has closed the async handle */
    uv_close((uv_handle_t *)&js->async, on_async_closed);
}
