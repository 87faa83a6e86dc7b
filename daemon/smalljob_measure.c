/* smalljob_measure.c: the small-job ladder timed on two of the engine's devices (smalljob.h);
 * apart from smalljob.c so that sj_choose's test builds without the engine. */
#include "smalljob.h"

#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "engine.h"

enum { WARMUP = 5, REPS = 11 };

/* one measurement's state, from step to step */
struct sj_run {
    struct db_engine *e;
    struct jobs_small *out;
    uint64_t budget_us, t0;
    float *x, *y;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The ladder's jobs: f32 NCHW 1 x C x 32 x 32 (the first two rungs 1 x 1 x 4 x 4 and
 * 1 x 1 x 16 x 16), block 3, rate 0.1; each 4x the last. */
static void rung_params(int i, dropblock_params *p)
{
    dropblock_params_init(p);
    p->shape[0] = 1;
    if (i == 0) {
        p->shape[1] = 1;
        p->shape[2] = p->shape[3] = 4;
    } else if (i == 1) {
        p->shape[1] = 1;
        p->shape[2] = p->shape[3] = 16;
    } else {
        p->shape[1] = UINT64_C(1) << (2 * (i - 2));
        p->shape[2] = p->shape[3] = 32;
    }
    p->rate = 0.1f;
    p->block[0] = p->block[1] = 3;
    p->seed = 42;
}

/* One job of rung i on each device, CPU first: 0, or -1 if one failed. */
static int probe_pair(const struct sj_run *m, int i, uint64_t stream, double *cpu_us, double *dev_us)
{
    dropblock_params p;
    rung_params(i, &p);
    p.stream = stream; /* a new mask each time, as in training */
    dropblock_result res;
    uint64_t a = db_now_us();
    if (db_engine_run_probe(m->e, m->out->cpu, &p, m->x, m->y, &res)) return -1;
    uint64_t b = db_now_us();
    if (db_engine_run_probe(m->e, m->out->dev, &p, m->x, m->y, &res)) return -1;
    uint64_t c = db_now_us();
    *cpu_us = (double)(b - a);
    *dev_us = (double)(c - b);
    return 0;
}

/* One pair of buffers for every rung, page-aligned as memfd regions are (so the device takes
 * its zero-copy path if it has one): 0, or -1 with neither allocated. */
static int alloc_buffers(struct sj_run *m)
{
    dropblock_params big;
    rung_params(JOBS_SMALL_RUNGS - 1, &big);
    size_t alloc = (size_t)((dropblock_tensor_bytes(&big) + 4095) / 4096 * 4096);
    m->x = aligned_alloc(4096, alloc);
    m->y = aligned_alloc(4096, alloc);
    if (!m->x || !m->y) {
        free(m->x);
        free(m->y);
        m->x = m->y = NULL;
        return -1;
    }
    for (size_t k = 0; k < alloc / 4; k++) m->x[k] = (float)(k % 251) / 251.0f;
    memset(m->y, 0, alloc);
    return 0;
}

/* WARMUP pairs of rung i into c and d: 0, or -1 with out->why (a job failed, or the ladder ran
 * past twice its budget, e.g. under valgrind). */
static int warm_rung(struct sj_run *m, int i, double *c, double *d)
{
    for (int r = 0; r < WARMUP; r++) {
        if (probe_pair(m, i, (uint64_t)r, &c[r], &d[r])) {
            m->out->why = JOBS_SMALL_FAILED;
            return -1;
        }
        if (db_now_us() - m->t0 > 2 * m->budget_us) {
            m->out->why = JOBS_SMALL_LATE;
            return -1;
        }
    }
    return 0;
}

/* Warm-up, rung by rung: which rungs to time (up to one past the first of the rungs the device
 * wins from there on, to see the crossing from both sides), and what a round of them costs.
 * Returns the number of rungs to time, 0 when not even the first could be. */
static int warm_up(struct sj_run *m)
{
    double round_us = 0;
    int n = 0, won = -1;
    for (int i = 0; i < JOBS_SMALL_RUNGS && (won < 0 || i <= won + 1); i++) {
        uint64_t a = db_now_us();
        double c[WARMUP], d[WARMUP];
        if (warm_rung(m, i, c, d)) break;
        double pair_us = (double)(db_now_us() - a) / WARMUP;
        /* the rounds below must fit the budget with this rung in them */
        if (i > 0 && (double)(db_now_us() - m->t0) + (round_us + pair_us) * REPS > (double)m->budget_us) break;
        round_us += pair_us;
        n = i + 1;
        /* the device's win counts only while it keeps winning: a rung the CPU wins again
         * above it (noise, or load) sends the ladder on, since the threshold never ends below a
         * size the CPU won (sj_choose) */
        if (median(c, WARMUP) > median(d, WARMUP)) {
            if (won < 0) won = i;
        } else won = -1;
    }
    return n;
}

/* The timed rounds: every rung once per round, CPU and device alternating, so that other load
 * on the machine falls on all of them alike. Returns the rounds completed. */
static int time_rounds(struct sj_run *m, int n, double cpu[][REPS], double dev[][REPS])
{
    int reps = 0;
    for (int r = 0; r < REPS; r++) {
        uint64_t a = db_now_us();
        int ok = 1;
        for (int i = 0; ok && i < n; i++)
            ok = !probe_pair(m, i, (uint64_t)WARMUP + (uint64_t)r, &cpu[i][r], &dev[i][r]);
        if (!ok) break;
        reps++;
        uint64_t now = db_now_us();
        if (now - m->t0 + (now - a) > m->budget_us) break; /* no time for another round */
    }
    return reps;
}

static void fill_ladder(struct jobs_small *out, int n, int reps, double cpu[][REPS], double dev[][REPS])
{
    for (int i = 0; i < n; i++) {
        dropblock_params p;
        rung_params(i, &p);
        out->ladder[i].bytes = dropblock_tensor_bytes(&p) + dropblock_mask_bytes(&p);
        out->ladder[i].cpu_us = median(cpu[i], reps);
        out->ladder[i].dev_us = median(dev[i], reps);
    }
    out->n = n;
    out->reps = reps;
}

int sj_measure(struct db_engine *e, uint64_t budget_us, struct jobs_small *out)
{
    struct sj_run m = {.e = e, .out = out, .budget_us = budget_us, .t0 = db_now_us()};
    if (alloc_buffers(&m)) {
        out->why = JOBS_SMALL_FAILED;
        return -1;
    }
    out->why = JOBS_SMALL_OK;
    int n = warm_up(&m);
    if (n == 0) {
        free(m.x);
        free(m.y);
        if (out->why == JOBS_SMALL_OK) out->why = JOBS_SMALL_FAILED;
        return -1;
    }
    double cpu[JOBS_SMALL_RUNGS][REPS], dev[JOBS_SMALL_RUNGS][REPS];
    int reps = time_rounds(&m, n, cpu, dev);
    free(m.x);
    free(m.y);
    if (reps == 0) {
        out->why = JOBS_SMALL_FAILED;
        return -1;
    }
    fill_ladder(out, n, reps, cpu, dev);
    out->elapsed_us = db_now_us() - m.t0;
    out->bytes = sj_choose(out->ladder, out->n, JOBS_SMALL_RUNGS, SJ_DEFAULT_BYTES);
    out->why = JOBS_SMALL_OK;
    return 0;
}
