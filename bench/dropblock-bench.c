/* dropblock-bench: how close DropBlock runs to the memory roofline, on one device.
 *
 *   dropblock-bench --backend cpu|opencl|vulkan [--device N] --shape N,C,H,W|N,C,D,H,W
 *                   [--dtype f32|f16|bf16] --block B|BH,BW|BD,BH,BW [--rate R] [--reps K]
 *                   [--warmup W] [--layout nchw|nhwc] [--check] [--json]
 *
 * A 5-D shape is DropBlock3D (layout nchw then means NCDHW, nhwc NDHWC), its block B (a cube) or
 * BD,BH,BW; a 4-D shape takes B (a square) or BH,BW.
 *
 * Device mode (the one mode so far) times, on the chosen device, in one run and on data
 * resident on the device: copy_us (a copy kernel of the tensor's bytes with the apply pass's
 * loads and stores: the roofline), op_us (the forward job: mask, counts, scales, apply, K read
 * back), backward_us (the same in backward mode), mask_us (the mask pass alone) and baseline_us
 * (torchvision's multi-pass drop_block2d, or drop_block3d for a 5-D shape, written with the same
 * API, shaders/db_baseline.h), xfer_us
 * (the tensor's bytes host to device and back through the API, as a job from host memory that
 * cannot be used in place copies them: OpenCL write/read buffer, Vulkan the mapped buffer's
 * copies, CPU two memcpys); also run_us, the whole in-process job from host memory to host
 * memory (dropblock_run's path).
 * Each figure is the median of --reps timed runs after --warmup untimed ones (PoCL compiles a
 * kernel on its first launch); the device measures run interleaved, one of each per round, so
 * that other load on the machine weighs on all of them alike. GB/s counts one read of x and one write of y. --check
 * compares one run_us output with the CPU reference bit for bit. With --json the last line is one JSON object with
 * every figure (null where a backend cannot time one).
 *
 * The daemon modes (--socket PATH --latency / --throughput / --crossover) time round trips and
 * shared-memory jobs through a running dropblockd with libdropblock (bench_socket.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_socket.h"

#include "clock.h"
#include "engine.h"
#include "format.h"
#include "reference.h"
#include "tile_count.h"

enum mode { MODE_DEVICE, MODE_LATENCY, MODE_THROUGHPUT, MODE_CROSSOVER };

struct opts {
    enum mode mode;
    const char *backend, *socket;
    int device, reps, warmup, json, check;
    int rank; /* of --shape: 4 (DropBlock2D) or 5 (DropBlock3D) */
    dropblock_params p;
};

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s --backend cpu|opencl|vulkan [--device N] --shape N,C,H,W|N,C,D,H,W [--dtype f32|f16|bf16]\n"
            "          --block B|BH,BW|BD,BH,BW [--rate R] [--reps K] [--warmup W] [--layout nchw|nhwc] [--check]\n"
            "          [--json]\n"
            "       %s --socket PATH --latency|--throughput|--crossover [--device ID] [--reps K] [--json]\n",
            argv0, argv0);
    return 2;
}

static int parse_u64_list(const char *s, uint64_t *out, int n)
{
    char *end;
    for (int i = 0; i < n; i++) {
        unsigned long long v = strtoull(s, &end, 10);
        if (end == s) return i;
        out[i] = v;
        if (*end != ',') return *end ? -1 : i + 1;
        s = end + 1;
    }
    return -1;
}

static int parse(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof *o);
    o->reps = 10;
    o->warmup = 3;
    dropblock_params_init(&o->p);
    o->p.rate = 0.1f;
    o->p.training = 1;
    o->p.seed = 42;
    uint64_t shape[5], block[3];
    int nshape = 0, nblock = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        /* clang-format off */
        if (!strcmp(a, "--json")) { o->json = 1; continue; }
        if (!strcmp(a, "--check")) { o->check = 1; continue; }
        if (!strcmp(a, "--latency")) { o->mode = MODE_LATENCY; continue; }
        if (!strcmp(a, "--throughput")) { o->mode = MODE_THROUGHPUT; continue; }
        if (!strcmp(a, "--crossover")) { o->mode = MODE_CROSSOVER; continue; }
        /* clang-format on */
        if (!v) return -1;
        i++;
        if (!strcmp(a, "--backend")) o->backend = v;
        else if (!strcmp(a, "--socket")) o->socket = v;
        else if (!strcmp(a, "--device")) o->device = atoi(v);
        else if (!strcmp(a, "--reps")) o->reps = atoi(v);
        else if (!strcmp(a, "--warmup")) o->warmup = atoi(v);
        else if (!strcmp(a, "--rate")) o->p.rate = strtof(v, NULL);
        else if (!strcmp(a, "--shape")) nshape = parse_u64_list(v, shape, 5);
        else if (!strcmp(a, "--dtype")) {
            int t = dropblock_parse_dtype(v);
            if (t < 0) return -1;
            o->p.dtype = (dropblock_dtype)t;
        } else if (!strcmp(a, "--layout")) {
            int l = dropblock_parse_layout(v);
            if (l < 0) return -1;
            o->p.layout = (dropblock_layout)l;
        } else if (!strcmp(a, "--block")) nblock = parse_u64_list(v, block, 3);
        else return -1;
    }
    if (o->mode != MODE_DEVICE || o->socket) return o->socket ? 1 : -1;
    if (!o->backend || o->reps < 1 || o->warmup < 0) return -1;
    /* N,C,H,W with B or BH,BW; N,C,D,H,W with B (a cube) or BD,BH,BW */
    o->rank = nshape;
    if (nshape == 4) memcpy(o->p.shape, shape, sizeof o->p.shape);
    else if (nshape == 5) {
        const uint64_t nchw[4] = {shape[0], shape[1], shape[3], shape[4]};
        memcpy(o->p.shape, nchw, sizeof nchw);
        o->p.depth = shape[2];
    } else return -1;
    if (nblock == 1) block[2] = block[1] = block[0];
    else if (nblock == 2 && nshape == 4) block[2] = block[1], block[1] = block[0], block[0] = 1;
    else if (nblock != 3 || nshape != 5) return -1;
    o->p.block_depth = nshape == 5 ? block[0] : 0;
    o->p.block[0] = block[1];
    o->p.block[1] = block[2];
    return 0;
}

/* the shape N,C,H,W or N,C,D,H,W (block 0), or the block BH,BW or BD,BH,BW (block 1), sep between */
static void print_dims(const struct opts *o, int block, const char *sep)
{
    const dropblock_params *p = &o->p;
    uint64_t v[5];
    int n = 0;
    if (block) {
        if (o->rank == 5) v[n++] = p->block_depth ? p->block_depth : 1;
        v[n++] = p->block[0];
        v[n++] = p->block[1];
    } else {
        v[n++] = p->shape[0];
        v[n++] = p->shape[1];
        if (o->rank == 5) v[n++] = p->depth;
        v[n++] = p->shape[2];
        v[n++] = p->shape[3];
    }
    for (int i = 0; i < n; i++) printf("%s%llu", i ? sep : "", (unsigned long long)v[i]);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The device index of the --device'th device of the chosen API. */
static int find_device(struct db_engine *e, const char *api, int nth)
{
    for (size_t i = 0, k = 0; i < db_engine_device_count(e); i++)
        if (!strcmp(db_engine_device(e, i)->api, api) && (int)k++ == nth) return (int)i;
    return -1;
}

enum { F_COPY, F_OP, F_BACKWARD, F_MASK, F_BASELINE, F_XFER, F_RUN, F_N };
static const char *const fig_names[F_N] = {"copy_us",     "op_us",   "backward_us", "mask_us",
                                           "baseline_us", "xfer_us", "run_us"};

static void print_num(double v, int digits)
{
    if (v < 0) printf("null");
    else printf("%.*f", digits, v);
}

/* The engine of --backend and its --device'th device; 0 or an exit status. */
static int open_device(const struct opts *o, struct db_engine **e, int *dev)
{
    char msg[512];
    if (db_engine_open(e, o->backend, NULL, NULL, NULL, NULL, msg, sizeof msg)) {
        fprintf(stderr, "dropblock-bench: %s\n", msg);
        return 1;
    }
    *dev = find_device(*e, o->backend, o->device);
    if (*dev < 0) {
        fprintf(stderr, "dropblock-bench: no %s device %d\n", o->backend, o->device);
        db_engine_close(*e);
        return 1;
    }
    return 0;
}

static void print_header(const dropblock_device_info *info, const char *paths, const struct opts *o, uint64_t bytes)
{
    printf("device %s: %s / %s / %s\npaths %s\nshape ", info->id, info->vendor, info->name, info->driver, paths);
    print_dims(o, 0, "x");
    printf(" %s %s, block ", db_layout_name(o->p.layout, o->rank == 5), dropblock_dtype_name(o->p.dtype));
    print_dims(o, 1, "x");
    printf(", rate %g: %llu bytes\n", (double)o->p.rate, (unsigned long long)bytes);
}

/* fig[F_COPY .. F_XFER]: the device measures in one call, interleaved round by round. */
static void device_figures(struct db_engine *e, int dev, const struct opts *o, const void *x, double fig[F_N])
{
    char msg[512];
    double *all = calloc((size_t)DB_BENCH_N * (size_t)o->reps, sizeof *all);
    static const int what_of[F_RUN] = {DB_BENCH_COPY, DB_BENCH_OP,       DB_BENCH_BACKWARD,
                                       DB_BENCH_MASK, DB_BENCH_BASELINE, DB_BENCH_XFER};
    msg[0] = 0;
    int r = all ? db_engine_bench(e, dev, &o->p, x, (1u << DB_BENCH_N) - 1, o->warmup, o->reps, all, msg, sizeof msg)
                : DROPBLOCK_EEXHAUSTED;
    if (r) fprintf(stderr, "dropblock-bench: %s\n", all ? msg : "out of memory");
    else if (msg[0]) fprintf(stderr, "dropblock-bench: %s\n", msg);
    for (int f = 0; f < F_RUN; f++)
        fig[f] = r || all[what_of[f] * o->reps] < 0 ? -1 : median(all + what_of[f] * o->reps, o->reps);
    free(all);
}

/* fig[F_RUN]: the whole job from host memory to host memory, t holding --reps timings. */
static void run_figure(struct db_engine *e, int dev, const struct opts *o, const void *x, void *y, double *t,
                       double fig[F_N])
{
    dropblock_result res;
    int r = 0;
    for (int i = -o->warmup; i < o->reps && !r; i++) {
        double t0 = db_now_us_f();
        r = db_engine_run(e, dev, &o->p, x, y, NULL, &res);
        if (i >= 0) t[i] = db_now_us_f() - t0;
    }
    if (r) fprintf(stderr, "dropblock-bench: run_us: %s\n", res.message);
    fig[F_RUN] = r ? -1 : median(t, o->reps);
}

/* --check: 1 when one more run matches the CPU reference bit for bit, 0 when not. */
static int check_run(struct db_engine *e, int dev, const dropblock_params *p, const void *x, void *y, uint64_t bytes)
{
    dropblock_result want, got;
    void *ref = malloc(bytes);
    int check = ref && !db_reference_run(p, x, ref, NULL, NULL, &want) && !db_engine_run(e, dev, p, x, y, NULL, &got) &&
                !memcmp(ref, y, bytes) && want.kept == got.kept && want.scale_bits == got.scale_bits;
    free(ref);
    return check;
}

/* The job's structure on this device: the last run's launches and transfers (db_job_stats),
 * and the mask pass's Philox blocks, candidate blocks, atomics and items for the device's
 * tiling, counted by replaying its tile walk in C with no candidate firing (bench/tile_count.c;
 * the structural counts: a firing candidate adds only its drops' edge-word atomics). */
struct structure {
    struct db_job_stats js;
    struct db_tile_counts tc;
    int have_tc;
};

static void job_structure(struct db_engine *e, int dev, const dropblock_params *p, struct structure *s)
{
    memset(s, 0, sizeof *s);
    db_engine_last_job_stats(e, (size_t)dev, &s->js);
    struct db_plan pl;
    struct db_tuning tu;
    char msg[256];
    if (db_plan_init(&pl, p, msg, sizeof msg) || pl.identity) return;
    db_engine_device_tuning(e, (size_t)dev, &pl, &tu);
    s->have_tc = !db_tile_count(&pl, &tu, DB_TC_FIRE_NONE, &s->tc, msg, sizeof msg);
    if (!s->have_tc) fprintf(stderr, "dropblock-bench: tile count: %s\n", msg);
}

static void print_structure(const struct structure *s)
{
    printf("launches     %12u  (transfers %u, %u of them between launches; fills %u, %u between; submits %u, "
           "waits %u; command buffers recorded %u)\n",
           s->js.launches, s->js.transfers, s->js.transfers_between, s->js.fills, s->js.fills_between, s->js.submits,
           s->js.waits, s->js.recordings);
    if (s->have_tc)
        printf("philox/cand  %12.3f  (%llu Philox blocks for %llu candidate blocks; %llu atomics; %llu items)\n",
               s->tc.philox_per_candidate, (unsigned long long)s->tc.philox_blocks,
               (unsigned long long)s->tc.candidate_blocks, (unsigned long long)s->tc.atomics,
               (unsigned long long)s->tc.items);
}

static void print_structure_json(const struct structure *s)
{
    printf(", \"launches\": %u, \"transfers\": %u, \"transfers_between\": %u, \"fills\": %u, "
           "\"fills_between\": %u, \"submits\": %u, \"waits\": %u, \"recordings\": %u",
           s->js.launches, s->js.transfers, s->js.transfers_between, s->js.fills, s->js.fills_between, s->js.submits,
           s->js.waits, s->js.recordings);
    if (s->have_tc) {
        printf(", ");
        db_tc_print_json(stdout, &s->tc);
    }
}

static void print_figures(const double fig[F_N], int check, double gb)
{
    for (int f = 0; f < F_N; f++) {
        printf("%-12s ", fig_names[f]);
        if (fig[f] < 0) printf("%12s\n", "-");
        else if (f == F_MASK) printf("%12.1f\n", fig[f]);
        else printf("%12.1f  %7.2f GB/s\n", fig[f], gb / fig[f]);
    }
    if (fig[F_COPY] > 0 && fig[F_OP] > 0) printf("copy/op      %12.3f\n", fig[F_COPY] / fig[F_OP]);
    if (fig[F_BASELINE] > 0 && fig[F_OP] > 0) printf("baseline/op  %12.3f\n", fig[F_BASELINE] / fig[F_OP]);
    if (check >= 0) printf("check        %12s\n", check ? "bit-exact" : "MISMATCH");
}

static void print_json(const struct opts *o, const dropblock_device_info *info, const char *paths, uint64_t bytes,
                       const double fig[F_N], int check, double gb, const struct structure *st)
{
    const dropblock_params *p = &o->p;
    printf("{\"backend\": \"%s\", \"device\": \"%s\", \"name\": \"%s\", \"paths\": \"%s\", \"shape\": [", o->backend,
           info->id, info->name, paths);
    print_dims(o, 0, ", ");
    printf("], \"layout\": \"%s\", \"dtype\": \"%s\", \"block\": [", db_layout_name(o->p.layout, o->rank == 5),
           dropblock_dtype_name(p->dtype));
    print_dims(o, 1, ", ");
    printf("], \"rate\": %g, \"reps\": %d, \"bytes\": %llu", (double)p->rate, o->reps, (unsigned long long)bytes);
    for (int f = 0; f < F_N; f++) {
        printf(", \"%s\": ", fig_names[f]);
        print_num(fig[f], 1);
        if (f != F_MASK) {
            printf(", \"%.*s_gbs\": ", (int)(strlen(fig_names[f]) - 3), fig_names[f]);
            print_num(fig[f] > 0 ? gb / fig[f] : -1, 2);
        }
    }
    printf(", \"copy_over_op\": ");
    print_num(fig[F_COPY] > 0 && fig[F_OP] > 0 ? fig[F_COPY] / fig[F_OP] : -1, 3);
    printf(", \"baseline_over_op\": ");
    print_num(fig[F_BASELINE] > 0 && fig[F_OP] > 0 ? fig[F_BASELINE] / fig[F_OP] : -1, 2);
    if (check >= 0) printf(", \"check\": %s", check ? "true" : "false");
    print_structure_json(st);
    printf("}\n");
}

static int device_mode(const struct opts *o)
{
    struct db_engine *e;
    int dev;
    if (open_device(o, &e, &dev)) return 1;
    const dropblock_device_info *info = db_engine_device(e, (size_t)dev);
    const dropblock_params *p = &o->p;
    const uint64_t n = dropblock_numel(p), bytes = dropblock_tensor_bytes(p);
    void *x = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096), *y = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    double *t = calloc((size_t)o->reps, sizeof *t), fig[F_N];
    int rc = 0;
    if (!x || !y || !t) {
        fprintf(stderr, "dropblock-bench: out of memory for a %llu-byte tensor\n", (unsigned long long)bytes);
        rc = 1;
        goto out;
    }
    db_fill_tf_uniform(p->dtype, 1, 2, n, x);
    char paths[256];
    db_engine_device_paths(e, (size_t)dev, paths, sizeof paths);
    if (!o->json) print_header(info, paths, o, bytes);
    /* the device measures in one call, interleaved round by round; then the whole job */
    device_figures(e, dev, o, x, fig);
    run_figure(e, dev, o, x, y, t, fig);
    struct structure st;
    job_structure(e, dev, p, &st); /* of run_us's last job, before --check runs another */
    int check = o->check ? check_run(e, dev, p, x, y, bytes) : -1;
    const double gb = 2.0 * (double)bytes / 1e3; /* GB/s = gb / microseconds */
    if (!o->json) {
        print_figures(fig, check, gb);
        print_structure(&st);
    } else {
        print_json(o, info, paths, bytes, fig, check, gb, &st);
    }
    if (check == 0) rc = 1;
out:
    free(x);
    free(y);
    free(t);
    db_engine_close(e);
    return rc;
}

int main(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o);
    if (r > 0) return bench_socket(argc, argv);
    if (r < 0) return usage(argv[0]);
    static int (*const modes[])(const struct opts *) = {[MODE_DEVICE] = device_mode};
    return modes[o.mode](&o);
}
