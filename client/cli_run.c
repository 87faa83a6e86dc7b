/* cli_run.c: `dropblock run`, one DropBlock2D or DropBlock3D job (cli.c has the tool's overview): its options
 * (parse_run), the input (random, or an .npy file: load_input), the job with progress on a
 * terminal (run_with_progress), and the output (the JSON line of dropblock_ref.py, --output and
 * --mask files). */
#include <dropblock/dropblock.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "format.h"
#include "npy.h"
#include "reference.h"
#include "sysmem.h"

const char usage_run[] =
    "usage: dropblock run [--socket PATH | --local] [options]\n"
    "\n"
    "Runs DropBlock2D once, or DropBlock3D with a 5-D shape; flags and defaults are those of\n"
    "spec/dropblock_ref.py. The tensors live in memory from dropblock_alloc: shared with the daemon, or\n"
    "the engine's own with --local.\n"
    "\n"
    "engine:\n"
    "  --socket PATH            the daemon's socket (default: see dropblock --help)\n"
    "  --local                  run in this process instead of through the daemon\n"
    "  --timeout S, --job-timeout S  as in dropblock --help (default 10 s; none)\n"
    "  --backend B              cpu, opencl or vulkan: only that API's devices (default: all); without\n"
    "                           --device the best device of that API, ranked as auto ranks them\n"
    "  --device N|ID            an id such as opencl:0, or a number: with --backend the N-th device of\n"
    "                           that API (with --local the id B:N), without it the N-th device of the\n"
    "                           list that dropblock devices prints (default: auto)\n"
    "request:\n"
    "  --shape N,C,H,W          logical shape, whatever the layout (optional with an .npy input);\n"
    "  --shape N,C,D,H,W        five dimensions: DropBlock3D over D x H x W volumes\n"
    "  --layout NCHW|NHWC       physical order of the tensors (default NCHW); for DropBlock3D NCDHW or\n"
    "  --layout NCDHW|NDHWC     NDHWC, where NCHW and NHWC (as in dropblock_ref.py) mean the same\n"
    "  --dtype f32|f16|bf16     element type (default f32; with an .npy input: the file's)\n"
    "  --rate R                 drop rate in [0, 1], as float32 (default 0.1)\n"
    "  --block B|BH,BW          block size (default 7); DropBlock3D: B (a cube) or BD,BH,BW\n"
    "  --seed S                 unsigned 64-bit seed (default 0)\n"
    "  --stream T               unsigned 64-bit stream (default 0); keras_cv: T earlier calls of this\n"
    "                           size; keras3: the layer's call index\n"
    "  --position P             compat keras_cv: the generator's position, the sum of N*H*W*C over the\n"
    "                           layer's earlier calls (of any sizes); instead of --stream\n"
    "  --normalize global|sample|none   scale scope (default global)\n"
    "  --share-channels         one mask for all channels of a sample\n"
    "  --share-batch            one mask for all samples\n"
    "  --compat none|keras_cv|keras3   bit-exact with keras_cv.layers.DropBlock2D: keras_cv as first\n"
    "                           published (tf.random.Generator), keras3: keras-cv 0.8+ on Keras 3's\n"
    "                           TensorFlow backend (default none)\n"
    "  --backward               the input is the output gradient dy (same mask and scale)\n"
    "  --eval                   training = false: the identity\n"
    "data:\n"
    "  --input tf-uniform:S0,S1|FILE.npy\n"
    "                           tf.random.stateless_uniform values in physical order (default\n"
    "                           tf-uniform:0,1), or an .npy file of the physical shape (N,C,H,W or\n"
    "                           N,H,W,C; 5 dimensions, N,C,D,H,W or N,D,H,W,C: DropBlock3D) and dtype\n"
    "                           '<f4', '<f2', or '<u2' with --dtype bf16\n"
    "  --output FILE.npy        write the result, physical shape (bf16 as '<u2')\n"
    "  --mask FILE.bin          write the packed keep mask: bit ((n*C+c)*H+h)*W+w, LSB first, 1 = kept;\n"
    "                           DropBlock3D: bit (((n*C+c)*D+d)*H+h)*W+w\n"
    "  --format hex|dec         print dropblock_ref.py's JSON line (values as bit patterns or decimals);\n"
    "                           without --format and --output a short summary is printed\n"
    "\n" EXIT_STATUS_HELP;

/* ---- dropblock run ------------------------------------------------------------------------ */
struct run_args {
    struct engine_opts eo;
    dropblock_params p;
    const char *device, *input, *output, *mask;
    int have_shape, dtype_given, format; /* format: -1 none, 0 dec, 1 hex */
    int rank;                            /* 4, or 5 for DropBlock3D: --shape's, else the .npy input's */
    uint64_t shape[5];                   /* --shape as given (N,C,H,W or N,C,D,H,W) */
    const char *shape_arg, *block_arg, *layout_arg;
    uint64_t block[3]; /* --block as given: block_n (0: the default 7) of B, BH,BW or BD,BH,BW */
    int block_n;
    int layout_3d;  /* --layout named NCDHW or NDHWC */
    int tf_uniform; /* --input tf-uniform:S0,S1, with its seeds: */
    uint64_t tf_seed[2];
};

/* clang-format off */
enum {
    O_LOCAL, O_SOCKET, O_BACKEND, O_DEVICE, O_SHAPE, O_LAYOUT, O_DTYPE, O_RATE, O_BLOCK, O_SEED, O_STREAM,
    O_POSITION, O_NORMALIZE, O_SHARE_C, O_SHARE_N, O_COMPAT, O_BACKWARD, O_EVAL, O_INPUT, O_OUTPUT, O_MASK, O_FORMAT, O_HELP,
    O_TIMEOUT, O_JOB_TIMEOUT
};
static const struct opt run_table[] = {
    [O_LOCAL] = {"--local", 0}, [O_SOCKET] = {"--socket", 1}, [O_BACKEND] = {"--backend", 1},
    [O_DEVICE] = {"--device", 1}, [O_SHAPE] = {"--shape", 1}, [O_LAYOUT] = {"--layout", 1},
    [O_DTYPE] = {"--dtype", 1}, [O_RATE] = {"--rate", 1}, [O_BLOCK] = {"--block", 1}, [O_SEED] = {"--seed", 1},
    [O_STREAM] = {"--stream", 1}, [O_POSITION] = {"--position", 1}, [O_NORMALIZE] = {"--normalize", 1}, [O_SHARE_C] = {"--share-channels", 0},
    [O_SHARE_N] = {"--share-batch", 0}, [O_COMPAT] = {"--compat", 1}, [O_BACKWARD] = {"--backward", 0},
    [O_EVAL] = {"--eval", 0}, [O_INPUT] = {"--input", 1}, [O_OUTPUT] = {"--output", 1}, [O_MASK] = {"--mask", 1},
    [O_FORMAT] = {"--format", 1}, [O_HELP] = {"--help", 0}, [O_TIMEOUT] = {"--timeout", 1},
    [O_JOB_TIMEOUT] = {"--job-timeout", 1}, {NULL, 0}};
/* clang-format on */

/* An option of the job's parameters (k from --shape to --eval): 0, or EXIT_USAGE for a bad value. */
static int parse_param(int k, const char *v, struct run_args *a)
{
    dropblock_params *p = &a->p;
    int x;
    switch (k) {
    case O_SHAPE:
        if ((x = parse_u64_list(v, a->shape, 4, 5)) < 0) {
            err("--shape %s: must be four unsigned integers N,C,H,W, or five N,C,D,H,W for DropBlock3D", v);
            return EXIT_USAGE;
        }
        a->rank = x;
        a->have_shape = 1;
        a->shape_arg = v;
        break;
    case O_LAYOUT:
        /* exact names, as dropblock_ref.py's choices (the API's parser also takes lower case) */
        if (!strcmp(v, "NCHW") || !strcmp(v, "NCDHW")) p->layout = DROPBLOCK_NCHW;
        else if (!strcmp(v, "NHWC") || !strcmp(v, "NDHWC")) p->layout = DROPBLOCK_NHWC;
        else {
            err("--layout %s: must be NCHW or NHWC, or for DropBlock3D NCDHW or NDHWC", v);
            return EXIT_USAGE;
        }
        a->layout_3d = strlen(v) == 5;
        a->layout_arg = v;
        break;
    case O_DTYPE:
        if ((x = dropblock_parse_dtype(v)) < 0) {
            err("--dtype %s: must be f32, f16 or bf16", v);
            return EXIT_USAGE;
        }
        p->dtype = (dropblock_dtype)x;
        a->dtype_given = 1;
        break;
    case O_RATE:
        if (parse_rate(v, &p->rate)) {
            err("--rate %s: not a decimal number", v);
            return EXIT_USAGE;
        }
        break;
    case O_BLOCK: /* B, BH,BW or BD,BH,BW: set_rank checks it against the shape's rank */
        if ((a->block_n = parse_u64_list(v, a->block, 1, 3)) < 0) {
            err("--block %s: must be B or BH,BW, or for DropBlock3D B (a cube) or BD,BH,BW (unsigned integers)", v);
            return EXIT_USAGE;
        }
        a->block_arg = v;
        break;
    case O_SEED:
        if (parse_u64_opt("--seed", v, &p->seed)) return EXIT_USAGE;
        break;
    case O_STREAM:
        if (parse_u64_opt("--stream", v, &p->stream)) return EXIT_USAGE;
        break;
    case O_POSITION:
        if (parse_u64_opt("--position", v, &p->position)) return EXIT_USAGE;
        p->has_position = 1;
        break;
    case O_NORMALIZE:
        if ((x = dropblock_parse_normalize(v)) < 0) {
            err("--normalize %s: must be global, sample or none", v);
            return EXIT_USAGE;
        }
        p->normalize = (dropblock_normalize)x;
        break;
    case O_SHARE_C: p->share |= DROPBLOCK_SHARE_CHANNELS; break;
    case O_SHARE_N: p->share |= DROPBLOCK_SHARE_BATCH; break;
    case O_COMPAT:
        if ((x = dropblock_parse_compat(v)) < 0) {
            err("--compat %s: must be none, keras_cv or keras3", v);
            return EXIT_USAGE;
        }
        p->compat = (dropblock_compat)x;
        break;
    case O_BACKWARD: p->mode = DROPBLOCK_BACKWARD; break;
    case O_EVAL: p->training = 0; break;
    }
    return 0;
}

/* Returns -1 to go on, else an exit status (0 after --help). */
static int parse_run(int argc, char **argv, struct run_args *a)
{
    for (int i = 0; i < argc; i++) {
        const char *v;
        int k = next_opt(run_table, argc, argv, &i, &v);
        if (k == -2) {
            err("run: unexpected argument \"%s\" (see dropblock run --help)", argv[i]);
            return EXIT_USAGE;
        }
        if (k < 0) return EXIT_USAGE;
        switch (k) {
        case O_LOCAL: a->eo.local = 1; break;
        case O_SOCKET: a->eo.socket = v; break;
        case O_BACKEND: a->eo.backend = v; break;
        case O_DEVICE: a->device = v; break;
        case O_INPUT: a->input = v; break;
        case O_OUTPUT: a->output = v; break;
        case O_MASK: a->mask = v; break;
        case O_FORMAT:
            if (strcmp(v, "hex") && strcmp(v, "dec")) {
                err("--format %s: must be hex or dec", v);
                return EXIT_USAGE;
            }
            a->format = !strcmp(v, "hex");
            break;
        case O_HELP: fputs(usage_run, stdout); return 0;
        case O_TIMEOUT:
            if (parse_timeout("--timeout", v, &a->eo.timeout_ms)) return EXIT_USAGE;
            break;
        case O_JOB_TIMEOUT:
            if (parse_timeout("--job-timeout", v, &a->eo.job_timeout_ms)) return EXIT_USAGE;
            break;
        default:
            if (parse_param(k, v, a)) return EXIT_USAGE;
            break;
        }
    }
    if (check_backend(a->eo.backend) || check_engine(&a->eo)) return EXIT_USAGE;
    return -1;
}

/* The order of the layout's physical dimensions, as --shape and the messages write it. */
static const char *physical_order(dropblock_layout l, int rank)
{
    if (rank == 5) return l == DROPBLOCK_NHWC ? "N,D,H,W,C" : "N,C,D,H,W";
    return l == DROPBLOCK_NHWC ? "N,H,W,C" : "N,C,H,W";
}

/* The logical dims (N,C,H,W or N,C,D,H,W) of a request of that rank, from p. */
static void logical_shape(const dropblock_params *p, int rank, uint64_t d[5])
{
    const uint64_t l[5] = {p->shape[0], p->shape[1], p->depth, p->shape[2], p->shape[3]};
    for (int i = 0, k = 0; i < 5; i++)
        if (i != 2 || rank == 5) d[k++] = l[i];
}

/* Physical dims of the logical shape in the layout's order (rank of them). */
static void physical_shape(const dropblock_params *p, int rank, uint64_t d[5])
{
    uint64_t s[5];
    logical_shape(p, rank, s);
    memcpy(d, s, sizeof s);
    if (p->layout == DROPBLOCK_NHWC) { /* C goes last */
        for (int i = 1; i < rank - 1; i++) d[i] = s[i + 1];
        d[rank - 1] = s[1];
    }
}

/* "AxBxC..." of n dims into buf. */
static const char *dims_text(char *buf, size_t len, const uint64_t *d, int n, const char *sep)
{
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < n && o < len; i++) {
        int k = snprintf(buf + o, len - o, "%s%llu", i ? sep : "", (unsigned long long)d[i]);
        if (k < 0) break;
        o += (size_t)k;
    }
    return buf;
}

/* Once the rank of the request is known (--shape's, or the .npy input's): the logical shape
 * (N,C,H,W or N,C,D,H,W) into p, the block (B a square or a cube, BH,BW or BD,BH,BW) and the
 * layout's name checked against it. Returns -1 to go on, else an exit status. */
static int set_rank(struct run_args *a, int rank, const uint64_t logical[5])
{
    dropblock_params *p = &a->p;
    a->rank = rank;
    if (a->layout_3d && rank == 4) {
        err("--layout %s goes with a 5-D shape N,C,D,H,W (DropBlock3D); a 4-D shape takes NCHW or NHWC", a->layout_arg);
        return EXIT_USAGE;
    }
    if (rank == 5 && a->block_n == 2) {
        err("--block %s: BH,BW goes with a 4-D shape; a 5-D shape N,C,D,H,W takes B (a cube) or BD,BH,BW",
            a->block_arg);
        return EXIT_USAGE;
    }
    if (rank == 4 && a->block_n == 3) {
        err("--block %s: BD,BH,BW goes with a 5-D shape N,C,D,H,W (DropBlock3D); a 4-D shape takes B or BH,BW",
            a->block_arg);
        return EXIT_USAGE;
    }
    if (rank == 5 && logical[2] == 0) {
        err("shape D is 0: each dimension must be >= 1");
        return EXIT_USAGE;
    }
    if (rank == 5 && a->block_n == 3 && a->block[0] == 0) {
        err("block depth 0: must be >= 1");
        return EXIT_USAGE;
    }
    p->shape[0] = logical[0];
    p->shape[1] = logical[1];
    p->depth = rank == 5 ? logical[2] : 0;
    p->shape[2] = logical[rank - 2];
    p->shape[3] = logical[rank - 1];
    const uint64_t b = a->block_n ? a->block[0] : p->block[0]; /* the default: 7 */
    if (a->block_n == 3) {
        p->block_depth = a->block[0];
        p->block[0] = a->block[1];
        p->block[1] = a->block[2];
    } else if (a->block_n == 2) {
        p->block[0] = a->block[0];
        p->block[1] = a->block[1];
    } else {
        p->block[0] = p->block[1] = b;
        p->block_depth = rank == 5 ? b : 0;
    }
    return -1;
}

/* Reads --input and completes the request: a tf-uniform input is only checked here (its values
 * are generated into the engine's memory later, fill_input), an .npy file is read into *x
 * (malloc'ed, tensor_bytes of the final request) and gives the shape and dtype. Returns -1 to go
 * on, else an exit status. */
static int load_input(struct run_args *a, void **x)
{
    dropblock_params *p = &a->p;
    static const char tfu[] = "tf-uniform:";
    *x = NULL;
    if (!strncmp(a->input, tfu, sizeof tfu - 1)) {
        if (parse_u64_list(a->input + sizeof tfu - 1, a->tf_seed, 2, 2) < 0) {
            err("--input %s: must be tf-uniform:S0,S1 with two unsigned 64-bit integers, or an .npy file", a->input);
            return EXIT_USAGE;
        }
        if (!a->have_shape) {
            err("--shape is required unless --input is an .npy file");
            return EXIT_USAGE;
        }
        uint64_t logical[5];
        memcpy(logical, a->shape, sizeof logical);
        int st = set_rank(a, a->rank, logical);
        if (st >= 0) return st;
        char msg[256];
        if (dropblock_params_validate(p, msg, sizeof msg)) {
            err("%s", msg);
            return EXIT_USAGE;
        }
        if (dropblock_tensor_bytes(p) > SIZE_MAX) {
            err("out of memory for a %llu-byte input", (unsigned long long)dropblock_tensor_bytes(p));
            return EXIT_FAIL;
        }
        a->tf_uniform = 1;
        return -1;
    }
    int dtype, nd;
    uint64_t dims[DB_NPY_MAX_DIMS], nbytes;
    char msg[512];
    int rc = db_npy_read(a->input, a->dtype_given ? (int)p->dtype : -1, &dtype, dims, &nd, x, &nbytes, msg, sizeof msg);
    if (rc) {
        err("--input %s", msg);
        /* what is in the file (truncated, big-endian, a bad header, a dtype other than the one
         * asked for) is bad input; a file that cannot be opened or read, or memory, a failure */
        return rc == DROPBLOCK_EINVAL || rc == DROPBLOCK_ERANGE ? EXIT_USAGE : EXIT_FAIL;
    }
    if (nd != 4 && nd != 5) {
        err("--input %s: the array has %d dimensions; a %s tensor needs 4 (%s), or 5 (%s) for DropBlock3D", a->input,
            nd, dropblock_layout_name(p->layout), physical_order(p->layout, 4), physical_order(p->layout, 5));
        goto usage;
    }
    const char *order = physical_order(p->layout, nd);
    uint64_t logical[5] = {dims[0], dims[1], dims[2], dims[3], nd == 5 ? dims[4] : 0};
    if (p->layout == DROPBLOCK_NHWC) { /* C is last */
        logical[1] = dims[nd - 1];
        for (int i = 2; i < nd; i++) logical[i] = dims[i - 1];
    }
    if (a->have_shape && (a->rank != nd || memcmp(logical, a->shape, (size_t)nd * sizeof *logical))) {
        char phys[128], logi[128];
        err("--shape %s does not match %s: its %s shape (%s) is %s = %s", a->shape_arg, a->input, order,
            dims_text(phys, sizeof phys, dims, nd, ", "), physical_order(DROPBLOCK_NCHW, nd),
            dims_text(logi, sizeof logi, logical, nd, ","));
        goto usage;
    }
    if (set_rank(a, nd, logical) >= 0) goto usage;
    p->dtype = (dropblock_dtype)dtype;
    if (dropblock_params_validate(p, msg, sizeof msg)) {
        err("--input %s: %s", a->input, msg);
        goto usage;
    }
    return -1;
usage:
    free(*x);
    *x = NULL;
    return EXIT_USAGE;
}

static int write_file(const char *path, const void *buf, uint64_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        err("%s: cannot create: %s", path, strerror(errno));
        return -1;
    }
    int ok = fwrite(buf, 1, (size_t)n, f) == n;
    int e = errno;
    if (fclose(f) && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        err("%s: write failed: %s", path, strerror(e));
        remove(path);
        return -1;
    }
    return 0;
}

static void print_summary(const struct run_args *a, const dropblock_result *r, const dropblock_device_info *dev,
                          double wall)
{
    const dropblock_params *p = &a->p;
    uint64_t shape[5];
    const uint64_t block[3] = {p->block_depth ? p->block_depth : 1, p->block[0], p->block[1]};
    char st[128], bt[96];
    logical_shape(p, a->rank, shape);
    printf("device %s", r->device);
    if (dev) printf(" (%s: %s)", dropblock_device_kind_name(dev->kind), dev->name);
    printf("\nrequest %s %s %s, rate %g, block %s, seed %llu, stream %llu, normalize %s%s%s%s%s%s\n",
           dims_text(st, sizeof st, shape, a->rank, "x"), db_layout_name(p->layout, a->rank == 5),
           dropblock_dtype_name(p->dtype), (double)p->rate,
           dims_text(bt, sizeof bt, a->rank == 5 ? block : block + 1, a->rank == 5 ? 3 : 2, "x"),
           (unsigned long long)p->seed, (unsigned long long)p->stream, dropblock_normalize_name(p->normalize),
           p->share & DROPBLOCK_SHARE_CHANNELS ? ", share channels" : "",
           p->share & DROPBLOCK_SHARE_BATCH ? ", share batch" : "",
           p->compat == DROPBLOCK_COMPAT_KERAS_CV ? ", compat keras_cv"
           : p->compat == DROPBLOCK_COMPAT_KERAS3 ? ", compat keras3"
                                                  : "",
           p->mode == DROPBLOCK_BACKWARD ? ", backward" : "", p->training ? "" : ", eval");
    float scale;
    memcpy(&scale, &r->scale_bits, 4);
    printf("kept K %llu of S %llu (%.4f%%), %s %.9g (0x%08x)\n", (unsigned long long)r->kept,
           (unsigned long long)r->total, r->total ? 100.0 * (double)r->kept / (double)r->total : 0.0,
           p->compat == DROPBLOCK_COMPAT_KERAS_CV ? "percent (divisor)" : "scale", (double)scale, r->scale_bits);
    if (r->timing_us[0] || r->timing_us[1] || r->timing_us[2])
        printf("time mask %llu us, scale %llu us, apply %llu us, job %llu us; wall %.0f us\n",
               (unsigned long long)r->timing_us[0], (unsigned long long)r->timing_us[1],
               (unsigned long long)r->timing_us[2], (unsigned long long)r->timing_us[3], wall * 1e6);
    else /* one chunk with the scales on the device: the passes run back to back, timed as one */
        printf("time job %llu us (passes queued back to back on the device); wall %.0f us\n",
               (unsigned long long)r->timing_us[3], wall * 1e6);
}

/* Rank of a device kind for auto, as the engine and the daemon rank them: a discrete GPU over an
 * integrated one over a CPU driver over the built-in CPU. */
static int kind_rank(dropblock_device_kind k) { return k == DROPBLOCK_DEVICE_OTHER ? 0 : (int)k; }

/* An id the daemon or engine does not have is bad input (exit 2), as any other bad argument. */
static int known_device(const char *arg, const char *id, const dropblock_device_info *d, size_t n, const char *list)
{
    char ids[256] = "";
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(d[i].id, id)) return 0;
        size_t l = strlen(ids);
        snprintf(ids + l, sizeof ids - l, "%s%s", i ? ", " : "", d[i].id);
    }
    err("--device %s: %s%snot found (devices: %s; %s lists them)", arg, strcmp(arg, id) ? id : "",
        strcmp(arg, id) ? " " : "", n ? ids : "none", list);
    return EXIT_USAGE;
}

/* --device: "auto", an id, or a number (with --backend the N-th device of that API, else of the
 * list). With --local, --backend opened only that API, so auto stays auto and N is the id B:N;
 * the daemon has all of its devices, so --backend picks among those of its API here. */
static int resolve_device(const struct run_args *a, const dropblock_device_info *d, size_t n, char *id, size_t len)
{
    const char *b = a->eo.backend, *list = a->eo.local ? "dropblock --local devices" : "dropblock devices";
    int remote = !a->eo.local;
    size_t nb = 0, best = 0;
    uint64_t k;
    for (size_t i = 0; i < n; i++) {
        if (!b || strcmp(d[i].api, b)) continue;
        if (!nb++ || kind_rank(d[i].kind) > kind_rank(d[best].kind)) best = i;
    }
    if (remote && b && !nb) {
        err("--backend %s: the daemon has no %s device (%s lists them)", b, b, list);
        return EXIT_FAIL;
    }
    if (!a->device || !strcmp(a->device, "auto")) {
        if (remote && b) snprintf(id, len, "%s", d[best].id);
        else id[0] = 0;
        return 0;
    }
    if (!parse_u64(a->device, &k)) {
        if (b && !remote) {
            snprintf(id, len, "%s:%llu", b, (unsigned long long)k);
            return known_device(a->device, id, d, n, list);
        }
        if (b) {
            if (k >= nb) {
                err("--device %s: the daemon has only %zu %s device%s (%s)", a->device, nb, b, nb == 1 ? "" : "s",
                    list);
                return EXIT_USAGE;
            }
            for (size_t i = 0; i < n; i++)
                if (!strcmp(d[i].api, b) && !k--) {
                    snprintf(id, len, "%s", d[i].id);
                    break;
                }
            return 0;
        }
        if (k >= n) {
            err("--device %s: there are only %zu devices (%s)", a->device, n, list);
            return EXIT_USAGE;
        }
        snprintf(id, len, "%s", d[k].id);
        return 0;
    }
    const char *colon = strchr(a->device, ':');
    if (!colon) {
        err("--device %s: must be a number or an id such as cpu:0, opencl:0, vulkan:0", a->device);
        return EXIT_USAGE;
    }
    if (b && (strlen(b) != (size_t)(colon - a->device) || strncmp(b, a->device, (size_t)(colon - a->device)))) {
        err("--device %s is not a device of --backend %s", a->device, b);
        return EXIT_USAGE;
    }
    snprintf(id, len, "%s", a->device);
    return known_device(a->device, id, d, n, list);
}

/* Engine memory for a tensor (shared with the daemon on a connection). */
static int engine_alloc(dropblock_t *h, uint64_t bytes, const char *what, void **p)
{
    char msg[512] = "";
    int rc = bytes > SIZE_MAX ? DROPBLOCK_EEXHAUSTED : dropblock_alloc_msg(h, (size_t)bytes, p, msg, sizeof msg);
    if (rc) {
        err("cannot allocate the %s: %s (%s)", what, msg[0] ? msg : dropblock_strerror(rc), dropblock_error_name(rc));
        *p = NULL;
    }
    return rc;
}

/* The whole job's memory against the daemon's limits and the machine before any of it is
 * allocated: input and output apart, and the mask. 0, or -1 having said why. */
static int check_job_memory(dropblock_t *h, uint64_t bytes, uint64_t mbytes)
{
    dropblock_limits l;
    if (dropblock_get_limits(h, &l)) return 0;
    uint64_t total = bytes > (UINT64_MAX - mbytes) / 2 ? UINT64_MAX : 2 * bytes + mbytes;
    char t[64], m[64];
    db_fmt_bytes(t, sizeof t, total);
    if (total > l.max_client_bytes) {
        db_fmt_bytes(m, sizeof m, l.max_client_bytes);
        err("the job needs %s in flight (input, output%s): above the daemon's max_client_bytes, %s "
            "(dropblockd --max-client-bytes) (resource_exhausted)",
            t, mbytes ? " and mask" : "", m);
        return -1;
    }
    if (total > l.mem_available) {
        db_fmt_bytes(m, sizeof m, l.mem_available);
        err("the job needs %s of %s memory (input, output%s): more than this machine has available, %s "
            "(resource_exhausted)",
            t, dropblock_is_remote(h) ? "shared" : "engine", mbytes ? " and mask" : "", m);
        return -1;
    }
    return 0;
}

/* ---- progress on a terminal -------------------------------------------------------------
 * A job that takes longer than PROGRESS_AFTER_S shows one line on stderr, rewritten in place
 * while it runs and cleared when it ends: the elapsed time, the device and the pass its job is
 * in, as dropblock_status tells them (the daemon's status op or the local engine's device list:
 * a device running a job has "pass"; the daemon also counts "running" jobs). Only when stderr
 * is a terminal: piped or redirected, nothing extra is printed. The job runs on a thread of its
 * own so that the line moves while it waits. */
#define PROGRESS_AFTER_S 1.0
#define PROGRESS_EVERY_MS 250

struct bg_job {
    dropblock_t *h;
    const dropblock_params *p;
    const void *x;
    void *y, *mask;
    const char *device;
    dropblock_result *res;
    int rc, done;
    pthread_mutex_t lock;
    pthread_cond_t cond;
};

static void *bg_job_main(void *arg)
{
    struct bg_job *b = arg;
    int rc = dropblock_run(b->h, b->p, b->x, b->y, b->mask, b->device, b->res);
    pthread_mutex_lock(&b->lock);
    b->rc = rc;
    b->done = 1;
    pthread_cond_signal(&b->cond);
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

/* "ID (PASS)" of the devices running a job (device: only that id), joined, into buf; "" if none
 * is known. */
static void running_devices(dropblock_t *h, const char *device, char *buf, size_t len)
{
    char json[1 << 14];
    size_t o = 0;
    buf[0] = 0;
    if (dropblock_status(h, json, sizeof json)) return;
    cJSON *j = cJSON_Parse(json);
    const cJSON *d, *devs = cJSON_GetObjectItemCaseSensitive(j, "devices");
    cJSON_ArrayForEach(d, devs)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(d, "id");
        const cJSON *pass = cJSON_GetObjectItemCaseSensitive(d, "pass");
        if (!cJSON_IsString(id) || (device && strcmp(device, id->valuestring))) continue;
        if (!cJSON_IsString(pass) && json_num(d, "running") < 1) continue;
        int k =
            snprintf(buf + o, len - o, "%s%s%s%s%s", o ? ", " : "", id->valuestring, cJSON_IsString(pass) ? " (" : "",
                     cJSON_IsString(pass) ? pass->valuestring : "", cJSON_IsString(pass) ? ")" : "");
        if (k < 0 || (size_t)k >= len - o) break;
        o += (size_t)k;
    }
    cJSON_Delete(j);
}

/* dropblock_run, with the progress line on a terminal (see above). */
static int run_with_progress(dropblock_t *h, const dropblock_params *p, const void *x, void *y, void *mask,
                             const char *device, dropblock_result *res)
{
    if (!isatty(STDERR_FILENO)) return dropblock_run(h, p, x, y, mask, device, res);
    struct bg_job b = {h, p, x, y, mask, device, res, 0, 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};
    pthread_t t;
    if (pthread_create(&t, NULL, bg_job_main, &b)) return dropblock_run(h, p, x, y, mask, device, res);
    const double t0 = now_s();
    int shown = 0;
    pthread_mutex_lock(&b.lock);
    while (!b.done) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += PROGRESS_EVERY_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&b.cond, &b.lock, &until);
        double el = now_s() - t0;
        if (b.done || el < PROGRESS_AFTER_S) continue;
        pthread_mutex_unlock(&b.lock);
        char where[256];
        running_devices(h, device, where, sizeof where);
        fprintf(stderr, "\rdropblock: running %.1f s%s%s\033[K", el, where[0] ? " on " : "",
                where[0] ? where
                : device ? device
                         : "");
        fflush(stderr);
        shown = 1;
        pthread_mutex_lock(&b.lock);
    }
    pthread_mutex_unlock(&b.lock);
    pthread_join(t, NULL);
    if (shown) {
        fputs("\r\033[K", stderr); /* the line goes: the summary follows on stdout */
        fflush(stderr);
    }
    return b.rc;
}

/* x from the tf-uniform generator, or from the file load_input read (freed here); -1 on failure. */
static int fill_input(const struct run_args *a, void **file, void *x)
{
    const dropblock_params *p = &a->p;
    if (a->tf_uniform) {
        if (db_fill_tf_uniform(p->dtype, a->tf_seed[0], a->tf_seed[1], dropblock_numel(p), x)) {
            err("out of memory generating the tf-uniform input");
            return -1;
        }
    } else {
        memcpy(x, *file, (size_t)dropblock_tensor_bytes(p));
        free(*file);
        *file = NULL;
    }
    return 0;
}

/* The job's outputs: --output, --mask, then --format's listing or the summary; an exit status. */
static int write_results(const struct run_args *a, const dropblock_result *res, const void *y, const void *mask,
                         const dropblock_device_info *devs, size_t ndev, double wall)
{
    const dropblock_params *p = &a->p;
    if (a->output) {
        uint64_t phys[5];
        char msg[512];
        physical_shape(p, a->rank, phys);
        if (db_npy_write(a->output, p->dtype, phys, a->rank, y, msg, sizeof msg)) {
            err("--output %s", msg);
            return EXIT_FAIL;
        }
    }
    if (a->mask && write_file(a->mask, mask, dropblock_mask_bytes(p))) return EXIT_FAIL;
    if (a->format >= 0) {
        if (db_print_result(stdout, res, p->dtype, y, dropblock_numel(p), a->format)) {
            err("write error on stdout");
            return EXIT_FAIL;
        }
    } else if (!a->output) {
        const dropblock_device_info *dev = NULL;
        for (size_t i = 0; i < ndev; i++)
            if (!strcmp(devs[i].id, res->device)) dev = &devs[i];
        print_summary(a, res, dev, wall);
    }
    return fflush(stdout) ? (err("write error on stdout: %s", strerror(errno)), EXIT_FAIL) : 0;
}

int cmd_run(int argc, char **argv, struct engine_opts eo)
{
    struct run_args a;
    memset(&a, 0, sizeof a);
    a.eo = eo;
    dropblock_params_init(&a.p);
    a.input = "tf-uniform:0,1";
    a.format = -1;
    int st = parse_run(argc, argv, &a);
    if (st >= 0) return st;

    void *file = NULL, *x = NULL, *y = NULL, *mask = NULL;
    dropblock_t *h = NULL;
    dropblock_device_info *devs = NULL;
    /* the request is complete and valid before any engine is opened: bad arguments are exit 2,
     * with or without a daemon */
    if ((st = load_input(&a, &file)) >= 0) return st;
    dropblock_params *p = &a.p;
    uint64_t bytes = dropblock_tensor_bytes(p), mbytes = dropblock_mask_bytes(p);
    if ((st = open_engine(&a.eo, &h, 1))) goto out;
    size_t ndev;
    char id[64];
    st = EXIT_FAIL;
    if (!(devs = list_devices(h, &ndev))) {
        err("cannot list the devices: out of memory");
        goto out;
    }
    if ((st = resolve_device(&a, devs, ndev, id, sizeof id))) goto out;
    st = EXIT_FAIL;
    if (check_job_memory(h, bytes, a.mask ? mbytes : 0)) goto out;
    /* distinct input and output buffers: the input stays intact, whatever a backend does in place */
    if (engine_alloc(h, bytes, "input", &x) || engine_alloc(h, bytes, "output", &y) ||
        (a.mask && engine_alloc(h, mbytes, "mask", &mask)))
        goto out;
    if (fill_input(&a, &file, x)) goto out;
    dropblock_result res;
    double t0 = now_s();
    int rc = run_with_progress(h, p, x, y, mask, id[0] ? id : NULL, &res);
    double wall = now_s() - t0;
    if (rc) {
        err("run failed%s%s: %s", res.device[0] ? " on " : "", res.device,
            res.message[0] ? res.message : dropblock_strerror(rc));
        /* invalid_argument: the request itself (e.g. keras_cv's division by zero), not the machine */
        st = rc == DROPBLOCK_EINVAL ? EXIT_USAGE : EXIT_FAIL;
        goto out;
    }
    st = write_results(&a, &res, y, mask, devs, ndev, wall);
out:
    free(devs);
    if (h) {
        dropblock_free(h, x);
        dropblock_free(h, y);
        dropblock_free(h, mask);
        dropblock_close(h);
    }
    free(file);
    return st;
}
