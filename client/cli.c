/* cli.c: the dropblock command-line tool.
 *
 *   dropblock [--socket PATH | --local] run [options]      one DropBlock2D job
 *   dropblock [--socket PATH | --local] devices [options]  the devices of the daemon or engine
 *   dropblock [--socket PATH] status [--json]              the daemon's status (a readiness probe)
 *   dropblock [--socket PATH] stop [--timeout S]           asks the daemon to stop
 *   dropblock schedule [options]                           a scheduled drop rate (no engine)
 *
 * Without --local, run and devices talk to dropblockd over its socket (--socket, else
 * dropblock_default_socket()); with it, they open the in-process engine. Both are the same
 * dropblock_t handle of dropblock.h, opened in one place (open_engine), and the run path is written
 * once for both: its tensors come from dropblock_alloc (shared memfd regions on a connection).
 * Flags and defaults are those of spec/dropblock_ref.py, and --format prints its JSON line byte
 * for byte, so `dropblock run ... --format hex` and `dropblock_ref.py ... --format hex` compare
 * with a string equality. Exit status (EXIT_STATUS_HELP): 0 done, 1 a failure at run time (no
 * daemon, device, job or I/O error), 2 bad usage or bad input (arguments, an invalid request, a
 * bad .npy input, an unknown device); messages go to stderr, prefixed "dropblock: ". */
#include <dropblock/dropblock.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dropblock_version.h"
#include "format.h"
#include "npy.h"
#include "reference.h"
#include "sysmem.h"

enum { EXIT_FAIL = 1, EXIT_USAGE = 2 };

/* the exit statuses, in dropblock --help and dropblock run --help (and README's CLI section) */
#define EXIT_STATUS_HELP \
    "exit status:\n" \
    "  0  done\n" \
    "  1  a failure at run time: no daemon reachable, no device of the API asked for, a job or\n" \
    "     device failure, an I/O error (an --input that cannot be opened or read, an --output or\n" \
    "     --mask that cannot be written)\n" \
    "  2  bad usage or bad input: an unknown command or option, a bad value, an invalid request,\n" \
    "     an .npy --input that is not usable (truncated, big-endian, a bad header, a dtype other\n" \
    "     than f32, f16 or bf16 or than --dtype), a --device the daemon or engine does not have\n"

static const char usage_main[] =
    "usage: dropblock [--socket PATH | --local] COMMAND [options]\n"
    "\n"
    "DropBlock2D (docs/semantics.md) on the CPU, OpenCL and Vulkan devices of this machine, through the\n"
    "dropblockd daemon (default) or in this process (--local).\n"
    "\n"
    "commands:\n"
    "  run       run one DropBlock2D job (dropblock run --help)\n"
    "  devices   list the devices (dropblock devices --help)\n"
    "  status    the daemon's status; exit 0 when it answers, 1 when none does (dropblock status --help)\n"
    "  stop      ask the daemon to stop, as SIGTERM does (dropblock stop --help)\n"
    "  schedule  a scheduled drop rate, the paper's linear ramp and/or the TF-TPU reference's per-group\n"
    "            scaling: dropblock schedule --rate R [--linear --step S --steps N] [--group 1..4]\n"
    "            (dropblock schedule --help)\n"
    "\n"
    "global options:\n"
    "  --socket PATH  the daemon's socket (default $DROPBLOCK_SOCKET, else\n"
    "                 $XDG_RUNTIME_DIR/dropblock/dropblockd.sock, else /run/dropblock/dropblockd.sock)\n"
    "  --local        run and devices: the engine inside this process, no daemon\n"
    "  --timeout S    seconds to wait for connecting, the daemon's hello and each reply but a job's\n"
    "                 (default 10; \"none\": no limit); past it: exit 1 naming the timeout\n"
    "  --job-timeout S  seconds to wait for a job's reply (default none: jobs may run long)\n"
    "  --help         this text\n"
    "  --version      the tool's version\n"
    "\n"
    "Start a daemon with `dropblockd --socket PATH &` (dropblockd --help; docs/deploy.md for systemd\n"
    "and Kubernetes).\n"
    EXIT_STATUS_HELP;

static const char usage_run[] =
    "usage: dropblock run [--socket PATH | --local] [options]\n"
    "\n"
    "Runs DropBlock2D once; flags and defaults are those of spec/dropblock_ref.py. The tensors live\n"
    "in memory from dropblock_alloc: shared with the daemon, or the engine's own with --local.\n"
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
    "  --shape N,C,H,W          logical shape, whatever the layout (optional with an .npy input)\n"
    "  --layout NCHW|NHWC       physical order of the tensors (default NCHW)\n"
    "  --dtype f32|f16|bf16     element type (default f32; with an .npy input: the file's)\n"
    "  --rate R                 drop rate in [0, 1], as float32 (default 0.1)\n"
    "  --block B|BH,BW          block size (default 7)\n"
    "  --seed S                 unsigned 64-bit seed (default 0)\n"
    "  --stream T               unsigned 64-bit stream (default 0)\n"
    "  --normalize global|sample|none   scale scope (default global)\n"
    "  --share-channels         one mask for all channels of a sample\n"
    "  --share-batch            one mask for all samples\n"
    "  --compat none|keras_cv   keras_cv: bit-exact with keras_cv.layers.DropBlock2D (default none)\n"
    "  --backward               the input is the output gradient dy (same mask and scale)\n"
    "  --eval                   training = false: the identity\n"
    "data:\n"
    "  --input tf-uniform:S0,S1|FILE.npy\n"
    "                           tf.random.stateless_uniform values in physical order (default\n"
    "                           tf-uniform:0,1), or an .npy file of the physical shape (N,C,H,W or\n"
    "                           N,H,W,C) and dtype '<f4', '<f2', or '<u2' with --dtype bf16\n"
    "  --output FILE.npy        write the result, physical shape (bf16 as '<u2')\n"
    "  --mask FILE.bin          write the packed keep mask: bit ((n*C+c)*H+h)*W+w, LSB first, 1 = kept\n"
    "  --format hex|dec         print dropblock_ref.py's JSON line (values as bit patterns or decimals);\n"
    "                           without --format and --output a short summary is printed\n"
    "\n"
    EXIT_STATUS_HELP;

static const char usage_devices[] =
    "usage: dropblock devices [--socket PATH | --local] [--backend cpu|opencl|vulkan]\n"
    "\n"
    "Lists the devices of the daemon (or with --local of the engine in this process), one per line:\n"
    "  ID kind=KIND vendor=\"...\" name=\"...\" driver=\"...\" uuid=UUID|- max_buffer=BYTES\n"
    "--backend keeps that API's devices only.\n";

static const char usage_status[] =
    "usage: dropblock status [--socket PATH] [--json]\n"
    "\n"
    "Asks the daemon for its status: a summary line, then the status JSON (docs/protocol.md, op\n"
    "status: uptime, clients, regions, jobs, bytes in flight, per-device counters and throughput).\n"
    "  --json   only the daemon's reply, as one line of JSON\n"
    "Exit status 0 when the daemon answers, 1 when none is reachable or it refuses us: usable as a\n"
    "readiness or liveness probe (deploy/kubernetes/daemonset.yaml).\n";

static const char usage_stop[] =
    "usage: dropblock stop [--socket PATH] [--timeout SECONDS]\n"
    "\n"
    "Asks the daemon to stop as on SIGTERM: it takes no new connections, answers queued jobs\n"
    "`unavailable`, lets running jobs finish and exits 0. Only the daemon's own uid may. Then waits\n"
    "until the daemon has closed our connection, at most --timeout seconds (default 60; 0: do not\n"
    "wait). Exit status 0 when the daemon accepted, 1 when none is reachable or it refused.\n";

static const char usage_schedule[] =
    "usage: dropblock schedule --rate R [--linear --step S --steps N] [--group G] [--format dec|hex]\n"
    "\n"
    "Prints the drop rate a schedule gives (float32; dropblock.h, \"schedules\"), for --rate of\n"
    "dropblock run. Needs no engine and no daemon.\n"
    "  --rate R          the target drop rate in [0, 1] (read as float32, as dropblock run reads it)\n"
    "  --linear          the paper's linear ramp from 0 at step 0 to R at step N and after:\n"
    "                    R * min(S, N) / N, the exact value rounded once to float32; N = 0: R at once\n"
    "  --step S          the training step (unsigned 64-bit integer)\n"
    "  --steps N         the length of the ramp in steps (unsigned 64-bit integer)\n"
    "  --group G         the TF-TPU reference's scaling for ResNet block group G (1..4): the rate\n"
    "                    divided by 4^(4-G), group 4 the full rate; applied after --linear\n"
    "  --format dec|hex  dec (default): the shortest decimal that reads back as the float32;\n"
    "                    hex: its bit pattern, 0x followed by 8 digits\n"
    "example: dropblock schedule --rate 0.1 --linear --step 500 --steps 1000 --group 3   prints 0.0125\n";

static void err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("dropblock: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- argument scanning ------------------------------------------------------------------ */
struct opt {
    const char *name;
    int takes_value;
};

/* The option at argv[*i]: its table index, its value (NULL for flags). -1: not an option of the
 * table (reported), -2: the caller's positional argument. Accepts "--name value" and "--name=value". */
static int next_opt(const struct opt *table, int argc, char **argv, int *i, const char **value)
{
    const char *a = argv[*i];
    *value = NULL;
    if (strncmp(a, "--", 2) || !a[2]) return -2;
    const char *eq = strchr(a, '=');
    size_t nl = eq ? (size_t)(eq - a) : strlen(a);
    for (int k = 0; table[k].name; k++) {
        if (strlen(table[k].name) != nl || strncmp(table[k].name, a, nl)) continue;
        if (!table[k].takes_value) {
            if (eq) { err("%s takes no value (got \"%s\")", table[k].name, eq + 1); return -1; }
            return k;
        }
        if (eq) *value = eq + 1;
        else if (*i + 1 < argc) *value = argv[++*i];
        else { err("%s needs a value", table[k].name); return -1; }
        return k;
    }
    err("unknown option %.*s (see --help)", (int)nl, a);
    return -1;
}

/* A decimal unsigned 64-bit integer, nothing else (no sign, spaces, hex or overflow). */
static int parse_u64(const char *s, uint64_t *v)
{
    if (!s || *s < '0' || *s > '9') return -1;
    errno = 0;
    char *end;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *v = x;
    return 0;
}

static int parse_u64_opt(const char *flag, const char *s, uint64_t *v)
{
    if (parse_u64(s, v)) {
        err("%s %s: must be an unsigned 64-bit integer (0 to 18446744073709551615)", flag, s);
        return -1;
    }
    return 0;
}

/* "a,b,c": between min_n and max_n unsigned integers; returns their count or -1. */
static int parse_u64_list(const char *s, uint64_t *out, int min_n, int max_n)
{
    int n = 0;
    char item[32];
    for (const char *p = s;;) {
        const char *comma = strchr(p, ',');
        size_t l = comma ? (size_t)(comma - p) : strlen(p);
        if (n >= max_n || l == 0 || l >= sizeof item) return -1;
        memcpy(item, p, l);
        item[l] = 0;
        if (parse_u64(item, &out[n++])) return -1;
        if (!comma) break;
        p = comma + 1;
    }
    return n >= min_n ? n : -1;
}

/* The rate as dropblock_ref.py reads it: a double rounded to float32 (not strtof, whose single
 * rounding can differ from the reference's double rounding). Range checks are validate's. */
static int parse_rate(const char *s, float *r)
{
    if (!*s || strpbrk(s, "xX")) return -1; /* Python's float() takes no hex floats */
    char *end;
    double d = strtod(s, &end);
    if (*end) return -1;
    *r = (float)d;
    return 0;
}

/* ---- the engine --------------------------------------------------------------------------- */
struct engine_opts {
    int local;
    const char *socket;  /* NULL: dropblock_default_socket() */
    const char *backend; /* NULL: all */
    int timeout_ms;      /* --timeout: connect, hello and every reply but a job's (-1: none) */
    int job_timeout_ms;  /* --job-timeout: a job's reply (-1, the default: none) */
};

/* --timeout/--job-timeout S: seconds (a decimal number, at most a day) or "none". */
static int parse_timeout(const char *name, const char *v, int *ms)
{
    if (!strcmp(v, "none")) { *ms = -1; return 0; }
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !(x > 0) || x > 86400) {
        err("%s %s: must be a number of seconds (0 < S <= 86400) or none", name, v);
        return -1;
    }
    *ms = (int)(x * 1000 + 0.5);
    if (*ms < 1) *ms = 1;
    return 0;
}

static int check_backend(const char *b)
{
    if (b && strcmp(b, "cpu") && strcmp(b, "opencl") && strcmp(b, "vulkan")) {
        err("--backend %s: must be cpu, opencl or vulkan", b);
        return -1;
    }
    return 0;
}

/* --local and --socket name two different engines. */
static int check_engine(const struct engine_opts *o)
{
    if (o->local && o->socket) {
        err("--local runs in this process and --socket %s names a daemon: give one of them", o->socket);
        return -1;
    }
    return 0;
}

/* The daemon's socket path: --socket, else the default rules of dropblock.h. */
static const char *socket_path(const struct engine_opts *o, char *buf, size_t len)
{
    if (o->socket) return o->socket;
    dropblock_default_socket(buf, len);
    return buf;
}

/* How to start the daemon from here: dropblockd next to this tool (the build tree's
 * build/daemon/dropblockd for build/client/dropblock, or an installed ../sbin/dropblockd), else
 * the bare name. */
static void daemon_command(char *buf, size_t len)
{
    static const char *const rel[] = {"/../daemon/dropblockd", "/dropblockd", "/../sbin/dropblockd"};
    char self[PATH_MAX], cand[PATH_MAX + 32], real[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    snprintf(buf, len, "dropblockd");
    if (n <= 0) return;
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (!slash) return;
    *slash = 0;
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        snprintf(cand, sizeof cand, "%s%s", self, rel[i]);
        if (!access(cand, X_OK) && realpath(cand, real)) {
            snprintf(buf, len, "%s", real);
            return;
        }
    }
}

/* The one place that picks in-process or daemon. Returns an exit status (0 when *h is open).
 * hint_local: the no-daemon message also suggests --local (run, devices). */
static int open_engine(const struct engine_opts *o, dropblock_t **h, int hint_local)
{
    char msg[1024] = "";
    if (o->local) {
        dropblock_local_options lo = {o->backend, NULL};
        int rc = dropblock_open_local(h, &lo, msg, sizeof msg);
        if (rc) {
            err("cannot open the engine: %s", msg[0] ? msg : dropblock_strerror(rc));
            return rc == DROPBLOCK_EINVAL ? EXIT_USAGE : EXIT_FAIL;
        }
        return 0;
    }
    char buf[4096];
    const char *path = socket_path(o, buf, sizeof buf);
    dropblock_connect_options co;
    dropblock_connect_options_init(&co);
    co.socket_path = path;
    co.timeout_ms = o->timeout_ms;
    co.job_timeout_ms = o->job_timeout_ms;
    int rc = dropblock_connect_opts(h, &co, msg, sizeof msg);
    if (!rc) return 0;
    *h = NULL;
    /* nothing listens there: say so, and how to start a daemon (the library's message is
     * "cannot connect to dropblockd at PATH: REASON; start one ...") */
    static const char cc[] = "cannot connect to dropblockd at ";
    if (rc == DROPBLOCK_EUNAVAILABLE && !strncmp(msg, cc, sizeof cc - 1)) {
        const char *reason = msg + sizeof cc - 1;
        size_t pl = strlen(path);
        if (!strncmp(reason, path, pl) && !strncmp(reason + pl, ": ", 2)) reason += pl + 2;
        else reason = NULL;
        int rl = reason ? (int)(strstr(reason, "; ") ? (size_t)(strstr(reason, "; ") - reason) : strlen(reason)) : 0;
        char dcmd[PATH_MAX + 16];
        daemon_command(dcmd, sizeof dcmd);
        err("no dropblockd is reachable at %s%s%.*s%s", path, reason ? " (" : "", rl, reason ? reason : "",
            reason ? ")" : "");
        err("start one with `%s --socket %s &`%s", dcmd, path,
            hint_local ? ", or run in this process with --local" : "");
        return EXIT_FAIL;
    }
    err("%s", msg[0] ? msg : dropblock_strerror(rc));
    return rc == DROPBLOCK_EINVAL ? EXIT_USAGE : EXIT_FAIL;
}

/* Reads the device list into a malloc'ed array. */
static dropblock_device_info *list_devices(dropblock_t *h, size_t *count)
{
    size_t n = 0;
    if (dropblock_devices(h, NULL, 0, &n)) return NULL;
    dropblock_device_info *d = calloc(n ? n : 1, sizeof *d);
    if (d && dropblock_devices(h, d, n, &n)) { free(d); d = NULL; }
    *count = n;
    return d;
}

/* ---- dropblock devices -------------------------------------------------------------------- */
static int cmd_devices(int argc, char **argv, struct engine_opts eo)
{
    static const struct opt table[] = {{"--local", 0}, {"--socket", 1}, {"--backend", 1}, {"--help", 0}, {NULL, 0}};
    for (int i = 0; i < argc; i++) {
        const char *v;
        int k = next_opt(table, argc, argv, &i, &v);
        if (k == -2) { err("devices: unexpected argument \"%s\"", argv[i]); return EXIT_USAGE; }
        if (k < 0) return EXIT_USAGE;
        switch (k) {
        case 0: eo.local = 1; break;
        case 1: eo.socket = v; break;
        case 2: eo.backend = v; break;
        case 3: fputs(usage_devices, stdout); return 0;
        }
    }
    if (check_backend(eo.backend) || check_engine(&eo)) return EXIT_USAGE;
    dropblock_t *h;
    int st = open_engine(&eo, &h, 1);
    if (st) return st;
    size_t n;
    dropblock_device_info *d = list_devices(h, &n);
    if (!d) { err("cannot list the devices: out of memory"); dropblock_close(h); return EXIT_FAIL; }
    for (size_t i = 0; i < n; i++) {
        /* the local engine was opened with --backend's API only; the daemon has all of its own */
        if (eo.backend && strcmp(d[i].api, eo.backend)) continue;
        printf("%s kind=%s vendor=\"%s\" name=\"%s\" driver=\"%s\" uuid=%s max_buffer=%llu\n", d[i].id,
               dropblock_device_kind_name(d[i].kind), d[i].vendor, d[i].name, d[i].driver,
               d[i].uuid[0] ? d[i].uuid : "-", (unsigned long long)d[i].max_buffer);
    }
    free(d);
    dropblock_close(h);
    if (fflush(stdout)) { err("write error on stdout: %s", strerror(errno)); return EXIT_FAIL; }
    return 0;
}

/* ---- dropblock status and stop ------------------------------------------------------------ */
static double json_num(const cJSON *o, const char *name)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(it) ? it->valuedouble : 0.0;
}

/* Options of status and stop: --socket, --help, and one more (--json or --timeout). Returns -1
 * to go on, else an exit status. */
static int daemon_cmd_args(const char *cmd, const char *usage, const struct opt *extra, int argc, char **argv,
                           struct engine_opts *eo, const char **extra_value, int *extra_given)
{
    struct opt table[] = {{"--socket", 1}, {"--help", 0}, {"--local", 0}, {extra->name, extra->takes_value}, {NULL, 0}};
    for (int i = 0; i < argc; i++) {
        const char *v;
        int k = next_opt(table, argc, argv, &i, &v);
        if (k == -2) { err("%s: unexpected argument \"%s\" (see dropblock %s --help)", cmd, argv[i], cmd); return EXIT_USAGE; }
        if (k < 0) return EXIT_USAGE;
        if (k == 0) eo->socket = v;
        else if (k == 1) { fputs(usage, stdout); return 0; }
        else if (k == 2) eo->local = 1;
        else { *extra_value = v; *extra_given = 1; }
    }
    if (eo->local) {
        err("%s asks the daemon; --local has none (dropblock --local devices lists this process's devices)", cmd);
        return EXIT_USAGE;
    }
    return -1;
}

static int cmd_status(int argc, char **argv, struct engine_opts eo)
{
    static const struct opt json_opt = {"--json", 0};
    const char *unused = NULL;
    int json_only = 0;
    int st = daemon_cmd_args("status", usage_status, &json_opt, argc, argv, &eo, &unused, &json_only);
    if (st >= 0) return st;
    char buf[4096];
    const char *path = socket_path(&eo, buf, sizeof buf);
    dropblock_t *h;
    if ((st = open_engine(&eo, &h, 0))) return st;
    size_t len = 64 * 1024; /* a reply frame is at most 64 KiB */
    char *text = malloc(len);
    int rc = text ? dropblock_status(h, text, len) : DROPBLOCK_EEXHAUSTED;
    size_t ndev = 0;
    dropblock_device_info *devs = rc ? NULL : list_devices(h, &ndev);
    dropblock_close(h);
    if (rc) {
        err("dropblockd at %s did not answer the status request: %s", path, dropblock_strerror(rc));
        free(text);
        return EXIT_FAIL;
    }
    cJSON *j = cJSON_Parse(text);
    if (!j) { err("dropblockd at %s: the status reply is not JSON", path); free(text); free(devs); return EXIT_FAIL; }
    if (json_only) {
        printf("%s\n", text);
    } else {
        const cJSON *jobs = cJSON_GetObjectItemCaseSensitive(j, "jobs");
        const cJSON *dl = cJSON_GetObjectItemCaseSensitive(j, "devices");
        printf("dropblockd at %s is up %.1f s: %d device%s, %.0f client%s (this one included), %.0f region%s; "
               "jobs %.0f submitted, %.0f completed, %.0f failed, %.0f rejected, %.0f queued, %.0f running; "
               "%.0f bytes in flight\n",
               path, json_num(j, "uptime_s"), cJSON_GetArraySize(dl), cJSON_GetArraySize(dl) == 1 ? "" : "s",
               json_num(j, "clients"), json_num(j, "clients") == 1 ? "" : "s", json_num(j, "regions"),
               json_num(j, "regions") == 1 ? "" : "s", json_num(jobs, "submitted"), json_num(jobs, "completed"),
               json_num(jobs, "failed"), json_num(jobs, "rejected"), json_num(jobs, "queued"),
               json_num(jobs, "running"), json_num(j, "inflight_bytes"));
        const cJSON *d;
        cJSON_ArrayForEach(d, dl) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(d, "id");
            const char *name = "";
            for (size_t i = 0; i < ndev && cJSON_IsString(id); i++)
                if (!strcmp(devs[i].id, id->valuestring)) name = devs[i].name;
            printf("  %-10s %.0f completed, %.0f failed, %.0f queued, %.0f running, busy %.0f us, %.3f GB/s  %s\n",
                   cJSON_IsString(id) ? id->valuestring : "?", json_num(d, "completed"), json_num(d, "failed"),
                   json_num(d, "queued"), json_num(d, "running"), json_num(d, "busy_us"),
                   json_num(d, "throughput_gbps"), name);
        }
        /* the reply without its envelope (v, id, ok) */
        cJSON_DeleteItemFromObjectCaseSensitive(j, "v");
        cJSON_DeleteItemFromObjectCaseSensitive(j, "id");
        cJSON_DeleteItemFromObjectCaseSensitive(j, "ok");
        char *pretty = cJSON_Print(j);
        if (pretty) {
            /* cJSON indents with tabs and puts one after each colon (strings hold none: they are
             * escaped); two spaces and one read better in a terminal */
            for (const char *c = pretty; *c; c++) {
                if (*c != '\t') putchar(*c);
                else fputs(c > pretty && c[-1] == ':' ? " " : "  ", stdout);
            }
            putchar('\n');
        }
        cJSON_free(pretty);
    }
    cJSON_Delete(j);
    free(text);
    free(devs);
    if (fflush(stdout)) { err("write error on stdout: %s", strerror(errno)); return EXIT_FAIL; }
    return 0;
}

static int cmd_stop(int argc, char **argv, struct engine_opts eo)
{
    static const struct opt timeout_opt = {"--timeout", 1};
    const char *tv = NULL;
    int given = 0;
    int st = daemon_cmd_args("stop", usage_stop, &timeout_opt, argc, argv, &eo, &tv, &given);
    if (st >= 0) return st;
    uint64_t timeout_s = 60;
    if (given && (parse_u64(tv, &timeout_s) || timeout_s > 86400)) {
        err("--timeout %s: must be a whole number of seconds, 0 to 86400", tv);
        return EXIT_USAGE;
    }
    char buf[4096];
    const char *path = socket_path(&eo, buf, sizeof buf);
    dropblock_t *h;
    if ((st = open_engine(&eo, &h, 0))) return st;
    char msg[512] = "";
    double t0 = now_s();
    int rc = dropblock_shutdown(h, msg, sizeof msg);
    if (rc) {
        err("dropblockd at %s refused to stop: %s", path, msg[0] ? msg : dropblock_strerror(rc));
        dropblock_close(h);
        return EXIT_FAIL;
    }
    printf("dropblockd at %s is stopping: no new connections, queued jobs answered unavailable, running jobs "
           "finish\n", path);
    fflush(stdout);
    /* the daemon closes every connection once its running jobs are done, just before it exits:
     * a status request on ours fails from then on */
    int closed = 0;
    char tmp[16384];
    while (timeout_s && now_s() - t0 < (double)timeout_s) {
        if (dropblock_status(h, tmp, sizeof tmp) == DROPBLOCK_EUNAVAILABLE) { closed = 1; break; }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    dropblock_close(h);
    if (closed) printf("dropblockd at %s has stopped: it closed its connections after %.0f ms\n", path,
                       (now_s() - t0) * 1e3);
    else if (timeout_s) printf("dropblockd at %s is still finishing its running jobs after %llu s; it exits when "
                               "they are done\n", path, (unsigned long long)timeout_s);
    if (fflush(stdout)) { err("write error on stdout: %s", strerror(errno)); return EXIT_FAIL; }
    return 0;
}

/* ---- dropblock schedule ------------------------------------------------------------------- */
static int cmd_schedule(int argc, char **argv)
{
    enum { S_RATE, S_LINEAR, S_STEP, S_STEPS, S_GROUP, S_FORMAT, S_HELP };
    static const struct opt table[] = {
        [S_RATE] = {"--rate", 1}, [S_LINEAR] = {"--linear", 0}, [S_STEP] = {"--step", 1}, [S_STEPS] = {"--steps", 1},
        [S_GROUP] = {"--group", 1}, [S_FORMAT] = {"--format", 1}, [S_HELP] = {"--help", 0}, {NULL, 0}};
    const char *rate_s = NULL;
    float rate = 0.0f;
    int linear = 0, have_step = 0, have_steps = 0, group = 0, hex = 0;
    uint64_t step = 0, steps = 0, g;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int k = next_opt(table, argc, argv, &i, &v);
        if (k == -2) { err("schedule: unexpected argument \"%s\" (see dropblock schedule --help)", argv[i]); return EXIT_USAGE; }
        if (k < 0) return EXIT_USAGE;
        switch (k) {
        case S_RATE:
            if (parse_rate(v, &rate)) { err("--rate %s: not a decimal number", v); return EXIT_USAGE; }
            rate_s = v;
            break;
        case S_LINEAR: linear = 1; break;
        case S_STEP: if (parse_u64_opt("--step", v, &step)) return EXIT_USAGE; have_step = 1; break;
        case S_STEPS: if (parse_u64_opt("--steps", v, &steps)) return EXIT_USAGE; have_steps = 1; break;
        case S_GROUP:
            if (parse_u64(v, &g) || g < 1 || g > 4) { err("--group %s: must be 1, 2, 3 or 4", v); return EXIT_USAGE; }
            group = (int)g;
            break;
        case S_FORMAT:
            if (strcmp(v, "hex") && strcmp(v, "dec")) { err("--format %s: must be hex or dec", v); return EXIT_USAGE; }
            hex = !strcmp(v, "hex");
            break;
        case S_HELP: fputs(usage_schedule, stdout); return 0;
        }
    }
    if (!rate_s) { err("schedule: --rate is required (see dropblock schedule --help)"); return EXIT_USAGE; }
    if (!linear && !group) { err("schedule: give --linear, --group or both (see dropblock schedule --help)"); return EXIT_USAGE; }
    if (linear && (!have_step || !have_steps)) { err("schedule: --linear needs --step and --steps"); return EXIT_USAGE; }
    if (!linear && (have_step || have_steps)) { err("schedule: --step and --steps go with --linear"); return EXIT_USAGE; }
    float r = rate;
    if ((linear && dropblock_schedule_linear(r, step, steps, &r)) || (group && dropblock_schedule_group(r, group, &r))) {
        err("--rate %s: must be in [0, 1]", rate_s);
        return EXIT_USAGE;
    }
    uint32_t bits;
    memcpy(&bits, &r, 4);
    char buf[64];
    if (hex) snprintf(buf, sizeof buf, "0x%08x", bits);
    else db_format_f32(buf, sizeof buf, bits);
    printf("%s\n", buf);
    if (fflush(stdout)) { err("write error on stdout: %s", strerror(errno)); return EXIT_FAIL; }
    return 0;
}

/* ---- dropblock run ------------------------------------------------------------------------ */
struct run_args {
    struct engine_opts eo;
    dropblock_params p;
    const char *device, *input, *output, *mask;
    int have_shape, dtype_given, format; /* format: -1 none, 0 dec, 1 hex */
    int tf_uniform;                      /* --input tf-uniform:S0,S1, with its seeds: */
    uint64_t tf_seed[2];
};

enum {
    O_LOCAL, O_SOCKET, O_BACKEND, O_DEVICE, O_SHAPE, O_LAYOUT, O_DTYPE, O_RATE, O_BLOCK, O_SEED, O_STREAM,
    O_NORMALIZE, O_SHARE_C, O_SHARE_N, O_COMPAT, O_BACKWARD, O_EVAL, O_INPUT, O_OUTPUT, O_MASK, O_FORMAT, O_HELP,
    O_TIMEOUT, O_JOB_TIMEOUT
};
static const struct opt run_table[] = {
    [O_LOCAL] = {"--local", 0}, [O_SOCKET] = {"--socket", 1}, [O_BACKEND] = {"--backend", 1},
    [O_DEVICE] = {"--device", 1}, [O_SHAPE] = {"--shape", 1}, [O_LAYOUT] = {"--layout", 1},
    [O_DTYPE] = {"--dtype", 1}, [O_RATE] = {"--rate", 1}, [O_BLOCK] = {"--block", 1}, [O_SEED] = {"--seed", 1},
    [O_STREAM] = {"--stream", 1}, [O_NORMALIZE] = {"--normalize", 1}, [O_SHARE_C] = {"--share-channels", 0},
    [O_SHARE_N] = {"--share-batch", 0}, [O_COMPAT] = {"--compat", 1}, [O_BACKWARD] = {"--backward", 0},
    [O_EVAL] = {"--eval", 0}, [O_INPUT] = {"--input", 1}, [O_OUTPUT] = {"--output", 1}, [O_MASK] = {"--mask", 1},
    [O_FORMAT] = {"--format", 1}, [O_HELP] = {"--help", 0}, [O_TIMEOUT] = {"--timeout", 1},
    [O_JOB_TIMEOUT] = {"--job-timeout", 1}, {NULL, 0}};

/* Returns -1 to go on, else an exit status (0 after --help). */
static int parse_run(int argc, char **argv, struct run_args *a)
{
    dropblock_params *p = &a->p;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int k = next_opt(run_table, argc, argv, &i, &v), x;
        if (k == -2) { err("run: unexpected argument \"%s\" (see dropblock run --help)", argv[i]); return EXIT_USAGE; }
        if (k < 0) return EXIT_USAGE;
        switch (k) {
        case O_LOCAL: a->eo.local = 1; break;
        case O_SOCKET: a->eo.socket = v; break;
        case O_BACKEND: a->eo.backend = v; break;
        case O_DEVICE: a->device = v; break;
        case O_SHAPE:
            if (parse_u64_list(v, p->shape, 4, 4) < 0) {
                err("--shape %s: must be four unsigned integers N,C,H,W", v);
                return EXIT_USAGE;
            }
            a->have_shape = 1;
            break;
        case O_LAYOUT:
            /* exact names, as dropblock_ref.py's choices (the API's parser also takes lower case) */
            if (strcmp(v, "NCHW") && strcmp(v, "NHWC")) { err("--layout %s: must be NCHW or NHWC", v); return EXIT_USAGE; }
            p->layout = (dropblock_layout)dropblock_parse_layout(v);
            break;
        case O_DTYPE:
            if ((x = dropblock_parse_dtype(v)) < 0) { err("--dtype %s: must be f32, f16 or bf16", v); return EXIT_USAGE; }
            p->dtype = (dropblock_dtype)x;
            a->dtype_given = 1;
            break;
        case O_RATE:
            if (parse_rate(v, &p->rate)) { err("--rate %s: not a decimal number", v); return EXIT_USAGE; }
            break;
        case O_BLOCK:
            if ((x = parse_u64_list(v, p->block, 1, 2)) < 0) {
                err("--block %s: must be B or BH,BW (unsigned integers)", v);
                return EXIT_USAGE;
            }
            if (x == 1) p->block[1] = p->block[0];
            break;
        case O_SEED: if (parse_u64_opt("--seed", v, &p->seed)) return EXIT_USAGE; break;
        case O_STREAM: if (parse_u64_opt("--stream", v, &p->stream)) return EXIT_USAGE; break;
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
            if ((x = dropblock_parse_compat(v)) < 0) { err("--compat %s: must be none or keras_cv", v); return EXIT_USAGE; }
            p->compat = (dropblock_compat)x;
            break;
        case O_BACKWARD: p->mode = DROPBLOCK_BACKWARD; break;
        case O_EVAL: p->training = 0; break;
        case O_INPUT: a->input = v; break;
        case O_OUTPUT: a->output = v; break;
        case O_MASK: a->mask = v; break;
        case O_FORMAT:
            if (strcmp(v, "hex") && strcmp(v, "dec")) { err("--format %s: must be hex or dec", v); return EXIT_USAGE; }
            a->format = !strcmp(v, "hex");
            break;
        case O_HELP: fputs(usage_run, stdout); return 0;
        case O_TIMEOUT: if (parse_timeout("--timeout", v, &a->eo.timeout_ms)) return EXIT_USAGE; break;
        case O_JOB_TIMEOUT: if (parse_timeout("--job-timeout", v, &a->eo.job_timeout_ms)) return EXIT_USAGE; break;
        }
    }
    if (check_backend(a->eo.backend) || check_engine(&a->eo)) return EXIT_USAGE;
    return -1;
}

/* Physical dims of the logical shape in the layout's order. */
static void physical_shape(const dropblock_params *p, uint64_t d[4])
{
    const uint64_t *s = p->shape;
    if (p->layout == DROPBLOCK_NCHW) { d[0] = s[0]; d[1] = s[1]; d[2] = s[2]; d[3] = s[3]; }
    else { d[0] = s[0]; d[1] = s[2]; d[2] = s[3]; d[3] = s[1]; }
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
        if (!a->have_shape) { err("--shape is required unless --input is an .npy file"); return EXIT_USAGE; }
        char msg[256];
        if (dropblock_params_validate(p, msg, sizeof msg)) { err("%s", msg); return EXIT_USAGE; }
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
    const char *order = p->layout == DROPBLOCK_NCHW ? "N,C,H,W" : "N,H,W,C";
    if (nd != 4) {
        err("--input %s: the array has %d dimensions; a %s tensor needs 4 (%s)", a->input, nd,
            dropblock_layout_name(p->layout), order);
        goto usage;
    }
    uint64_t logical[4] = {dims[0], dims[1], dims[2], dims[3]};
    if (p->layout == DROPBLOCK_NHWC) { logical[1] = dims[3]; logical[2] = dims[1]; logical[3] = dims[2]; }
    if (a->have_shape && memcmp(logical, p->shape, sizeof logical)) {
        err("--shape %llu,%llu,%llu,%llu does not match %s: its %s shape (%llu, %llu, %llu, %llu) is N,C,H,W = "
            "%llu,%llu,%llu,%llu", (unsigned long long)p->shape[0], (unsigned long long)p->shape[1],
            (unsigned long long)p->shape[2], (unsigned long long)p->shape[3], a->input, order,
            (unsigned long long)dims[0], (unsigned long long)dims[1], (unsigned long long)dims[2],
            (unsigned long long)dims[3], (unsigned long long)logical[0], (unsigned long long)logical[1],
            (unsigned long long)logical[2], (unsigned long long)logical[3]);
        goto usage;
    }
    memcpy(p->shape, logical, sizeof logical);
    p->dtype = (dropblock_dtype)dtype;
    if (dropblock_params_validate(p, msg, sizeof msg)) { err("--input %s: %s", a->input, msg); goto usage; }
    return -1;
usage:
    free(*x);
    *x = NULL;
    return EXIT_USAGE;
}

static int write_file(const char *path, const void *buf, uint64_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) { err("%s: cannot create: %s", path, strerror(errno)); return -1; }
    int ok = fwrite(buf, 1, (size_t)n, f) == n;
    int e = errno;
    if (fclose(f) && ok) { ok = 0; e = errno; }
    if (!ok) { err("%s: write failed: %s", path, strerror(e)); remove(path); return -1; }
    return 0;
}

static void print_summary(const struct run_args *a, const dropblock_result *r, const dropblock_device_info *dev,
                          double wall)
{
    const dropblock_params *p = &a->p;
    printf("device %s", r->device);
    if (dev) printf(" (%s: %s)", dropblock_device_kind_name(dev->kind), dev->name);
    printf("\nrequest %llux%llux%llux%llu %s %s, rate %g, block %llux%llu, seed %llu, stream %llu, normalize %s%s%s%s%s%s\n",
           (unsigned long long)p->shape[0], (unsigned long long)p->shape[1], (unsigned long long)p->shape[2],
           (unsigned long long)p->shape[3], dropblock_layout_name(p->layout), dropblock_dtype_name(p->dtype),
           (double)p->rate, (unsigned long long)p->block[0], (unsigned long long)p->block[1],
           (unsigned long long)p->seed, (unsigned long long)p->stream, dropblock_normalize_name(p->normalize),
           p->share & DROPBLOCK_SHARE_CHANNELS ? ", share channels" : "",
           p->share & DROPBLOCK_SHARE_BATCH ? ", share batch" : "",
           p->compat == DROPBLOCK_COMPAT_KERAS_CV ? ", compat keras_cv" : "",
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
                err("--device %s: the daemon has only %zu %s device%s (%s)", a->device, nb, b, nb == 1 ? "" : "s", list);
                return EXIT_USAGE;
            }
            for (size_t i = 0; i < n; i++)
                if (!strcmp(d[i].api, b) && !k--) { snprintf(id, len, "%s", d[i].id); break; }
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
            "(dropblockd --max-client-bytes) (resource_exhausted)", t, mbytes ? " and mask" : "", m);
        return -1;
    }
    if (total > l.mem_available) {
        db_fmt_bytes(m, sizeof m, l.mem_available);
        err("the job needs %s of %s memory (input, output%s): more than this machine has available, %s "
            "(resource_exhausted)", t, dropblock_is_remote(h) ? "shared" : "engine", mbytes ? " and mask" : "", m);
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
    cJSON_ArrayForEach(d, devs) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(d, "id");
        const cJSON *pass = cJSON_GetObjectItemCaseSensitive(d, "pass");
        if (!cJSON_IsString(id) || (device && strcmp(device, id->valuestring))) continue;
        if (!cJSON_IsString(pass) && json_num(d, "running") < 1) continue;
        int k = snprintf(buf + o, len - o, "%s%s%s%s%s", o ? ", " : "", id->valuestring,
                         cJSON_IsString(pass) ? " (" : "", cJSON_IsString(pass) ? pass->valuestring : "",
                         cJSON_IsString(pass) ? ")" : "");
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
        if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&b.cond, &b.lock, &until);
        double el = now_s() - t0;
        if (b.done || el < PROGRESS_AFTER_S) continue;
        pthread_mutex_unlock(&b.lock);
        char where[256];
        running_devices(h, device, where, sizeof where);
        fprintf(stderr, "\rdropblock: running %.1f s%s%s\033[K", el, where[0] ? " on " : "",
                where[0] ? where : device ? device : "");
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

static int cmd_run(int argc, char **argv, struct engine_opts eo)
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
    uint64_t bytes = dropblock_tensor_bytes(p), n = dropblock_numel(p), mbytes = dropblock_mask_bytes(p);
    if ((st = open_engine(&a.eo, &h, 1))) goto out;
    size_t ndev;
    char id[64];
    st = EXIT_FAIL;
    if (!(devs = list_devices(h, &ndev))) { err("cannot list the devices: out of memory"); goto out; }
    if ((st = resolve_device(&a, devs, ndev, id, sizeof id))) goto out;
    st = EXIT_FAIL;
    if (check_job_memory(h, bytes, a.mask ? mbytes : 0)) goto out;
    /* distinct input and output buffers: the input stays intact, whatever a backend does in place */
    if (engine_alloc(h, bytes, "input", &x) || engine_alloc(h, bytes, "output", &y) ||
        (a.mask && engine_alloc(h, mbytes, "mask", &mask)))
        goto out;
    if (a.tf_uniform) {
        if (db_fill_tf_uniform(p->dtype, a.tf_seed[0], a.tf_seed[1], n, x)) {
            err("out of memory generating the tf-uniform input");
            goto out;
        }
    } else {
        memcpy(x, file, (size_t)bytes);
        free(file);
        file = NULL;
    }
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
    if (a.output) {
        uint64_t phys[4];
        char msg[512];
        physical_shape(p, phys);
        if (db_npy_write(a.output, p->dtype, phys, 4, y, msg, sizeof msg)) { err("--output %s", msg); goto out; }
    }
    if (a.mask && write_file(a.mask, mask, mbytes)) goto out;
    if (a.format >= 0) {
        if (db_print_result(stdout, &res, p->dtype, y, n, a.format)) { err("write error on stdout"); goto out; }
    } else if (!a.output) {
        const dropblock_device_info *dev = NULL;
        for (size_t i = 0; i < ndev; i++)
            if (!strcmp(devs[i].id, res.device)) dev = &devs[i];
        print_summary(&a, &res, dev, wall);
    }
    st = fflush(stdout) ? (err("write error on stdout: %s", strerror(errno)), EXIT_FAIL) : 0;
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

int main(int argc, char **argv)
{
    static const struct opt table[] = {{"--local", 0},   {"--socket", 1},      {"--help", 0},
                                       {"--version", 0}, {"--timeout", 1},     {"--job-timeout", 1},
                                       {NULL, 0}};
    struct engine_opts eo = {0, NULL, NULL, DROPBLOCK_DEFAULT_TIMEOUT_MS, -1};
    int i = 1;
    for (; i < argc; i++) {
        const char *v;
        int k = next_opt(table, argc, argv, &i, &v);
        if (k == -2) break;
        if (k < 0) return EXIT_USAGE;
        if (k == 0) eo.local = 1;
        else if (k == 1) eo.socket = v;
        else if (k == 2) { fputs(usage_main, stdout); return 0; }
        else if (k == 4) { if (parse_timeout("--timeout", v, &eo.timeout_ms)) return EXIT_USAGE; }
        else if (k == 5) { if (parse_timeout("--job-timeout", v, &eo.job_timeout_ms)) return EXIT_USAGE; }
        else { printf("dropblock %s (protocol %d)\n", DROPBLOCK_VERSION_STRING, DROPBLOCK_PROTOCOL_VERSION); return 0; }
    }
    if (i >= argc) { fputs(usage_main, stderr); return EXIT_USAGE; }
    const char *cmd = argv[i++];
    if (!strcmp(cmd, "run")) return cmd_run(argc - i, argv + i, eo);
    if (!strcmp(cmd, "devices")) return cmd_devices(argc - i, argv + i, eo);
    if (!strcmp(cmd, "status")) return cmd_status(argc - i, argv + i, eo);
    if (!strcmp(cmd, "stop")) return cmd_stop(argc - i, argv + i, eo);
    if (!strcmp(cmd, "schedule")) return cmd_schedule(argc - i, argv + i);
    if (!strcmp(cmd, "help")) {
        const char *what = i < argc ? argv[i] : "";
        fputs(!strcmp(what, "run") ? usage_run : !strcmp(what, "devices") ? usage_devices
              : !strcmp(what, "status") ? usage_status : !strcmp(what, "stop") ? usage_stop
              : !strcmp(what, "schedule") ? usage_schedule : usage_main, stdout);
        return 0;
    }
    err("unknown command \"%s\" (commands: run, devices, status, stop, schedule; see dropblock --help)", cmd);
    return EXIT_USAGE;
}
