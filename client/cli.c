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
 * bad .npy input, an unknown device); messages go to stderr, prefixed "dropblock: ".
 *
 * The run command is cli_run.c; the helpers both files use are declared in cli.h. */
#include <dropblock/dropblock.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "dropblock_version.h"
#include "format.h"

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
    "and Kubernetes).\n" EXIT_STATUS_HELP;

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

void err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("dropblock: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- argument scanning ------------------------------------------------------------------ */

/* The option at argv[*i]: its table index, its value (NULL for flags). -1: not an option of the
 * table (reported), -2: the caller's positional argument. Accepts "--name value" and "--name=value". */
int next_opt(const struct opt *table, int argc, char **argv, int *i, const char **value)
{
    const char *a = argv[*i];
    *value = NULL;
    if (strncmp(a, "--", 2) || !a[2]) return -2;
    const char *eq = strchr(a, '=');
    size_t nl = eq ? (size_t)(eq - a) : strlen(a);
    for (int k = 0; table[k].name; k++) {
        if (strlen(table[k].name) != nl || strncmp(table[k].name, a, nl)) continue;
        if (!table[k].takes_value) {
            if (eq) {
                err("%s takes no value (got \"%s\")", table[k].name, eq + 1);
                return -1;
            }
            return k;
        }
        if (eq) *value = eq + 1;
        else if (*i + 1 < argc) *value = argv[++*i];
        else {
            err("%s needs a value", table[k].name);
            return -1;
        }
        return k;
    }
    err("unknown option %.*s (see --help)", (int)nl, a);
    return -1;
}

/* A decimal unsigned 64-bit integer, nothing else (no sign, spaces, hex or overflow). */
int parse_u64(const char *s, uint64_t *v)
{
    if (!s || *s < '0' || *s > '9') return -1;
    errno = 0;
    char *end;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *v = x;
    return 0;
}

int parse_u64_opt(const char *flag, const char *s, uint64_t *v)
{
    if (parse_u64(s, v)) {
        err("%s %s: must be an unsigned 64-bit integer (0 to 18446744073709551615)", flag, s);
        return -1;
    }
    return 0;
}

/* "a,b,c": between min_n and max_n unsigned integers; returns their count or -1. */
int parse_u64_list(const char *s, uint64_t *out, int min_n, int max_n)
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
int parse_rate(const char *s, float *r)
{
    if (!*s || strpbrk(s, "xX")) return -1; /* Python's float() takes no hex floats */
    char *end;
    double d = strtod(s, &end);
    if (*end) return -1;
    *r = (float)d;
    return 0;
}

/* ---- the engine --------------------------------------------------------------------------- */

/* --timeout/--job-timeout S: seconds (a decimal number, at most a day) or "none". */
int parse_timeout(const char *name, const char *v, int *ms)
{
    if (!strcmp(v, "none")) {
        *ms = -1;
        return 0;
    }
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

int check_backend(const char *b)
{
    if (b && strcmp(b, "cpu") && strcmp(b, "opencl") && strcmp(b, "vulkan")) {
        err("--backend %s: must be cpu, opencl or vulkan", b);
        return -1;
    }
    return 0;
}

/* --local and --socket name two different engines. */
int check_engine(const struct engine_opts *o)
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
int open_engine(const struct engine_opts *o, dropblock_t **h, int hint_local)
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
dropblock_device_info *list_devices(dropblock_t *h, size_t *count)
{
    size_t n = 0;
    if (dropblock_devices(h, NULL, 0, &n)) return NULL;
    dropblock_device_info *d = calloc(n ? n : 1, sizeof *d);
    if (d && dropblock_devices(h, d, n, &n)) {
        free(d);
        d = NULL;
    }
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
        if (k == -2) {
            err("devices: unexpected argument \"%s\"", argv[i]);
            return EXIT_USAGE;
        }
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
    if (!d) {
        err("cannot list the devices: out of memory");
        dropblock_close(h);
        return EXIT_FAIL;
    }
    for (size_t i = 0; i < n; i++) {
        /* the local engine was opened with --backend's API only; the daemon has all of its own */
        if (eo.backend && strcmp(d[i].api, eo.backend)) continue;
        printf("%s kind=%s vendor=\"%s\" name=\"%s\" driver=\"%s\" uuid=%s max_buffer=%llu\n", d[i].id,
               dropblock_device_kind_name(d[i].kind), d[i].vendor, d[i].name, d[i].driver,
               d[i].uuid[0] ? d[i].uuid : "-", (unsigned long long)d[i].max_buffer);
    }
    free(d);
    dropblock_close(h);
    if (fflush(stdout)) {
        err("write error on stdout: %s", strerror(errno));
        return EXIT_FAIL;
    }
    return 0;
}

/* ---- dropblock status and stop ------------------------------------------------------------ */
double json_num(const cJSON *o, const char *name)
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
        if (k == -2) {
            err("%s: unexpected argument \"%s\" (see dropblock %s --help)", cmd, argv[i], cmd);
            return EXIT_USAGE;
        }
        if (k < 0) return EXIT_USAGE;
        if (k == 0) eo->socket = v;
        else if (k == 1) {
            fputs(usage, stdout);
            return 0;
        } else if (k == 2) eo->local = 1;
        else {
            *extra_value = v;
            *extra_given = 1;
        }
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
    if (!j) {
        err("dropblockd at %s: the status reply is not JSON", path);
        free(text);
        free(devs);
        return EXIT_FAIL;
    }
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
        cJSON_ArrayForEach(d, dl)
        {
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
    if (fflush(stdout)) {
        err("write error on stdout: %s", strerror(errno));
        return EXIT_FAIL;
    }
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
           "finish\n",
           path);
    fflush(stdout);
    /* the daemon closes every connection once its running jobs are done, just before it exits:
     * a status request on ours fails from then on */
    int closed = 0;
    char tmp[16384];
    while (timeout_s && now_s() - t0 < (double)timeout_s) {
        if (dropblock_status(h, tmp, sizeof tmp) == DROPBLOCK_EUNAVAILABLE) {
            closed = 1;
            break;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    dropblock_close(h);
    if (closed)
        printf("dropblockd at %s has stopped: it closed its connections after %.0f ms\n", path, (now_s() - t0) * 1e3);
    else if (timeout_s)
        printf("dropblockd at %s is still finishing its running jobs after %llu s; it exits when "
               "they are done\n",
               path, (unsigned long long)timeout_s);
    if (fflush(stdout)) {
        err("write error on stdout: %s", strerror(errno));
        return EXIT_FAIL;
    }
    return 0;
}

/* ---- dropblock schedule ------------------------------------------------------------------- */
static int cmd_schedule(int argc, char **argv)
{
    enum { S_RATE, S_LINEAR, S_STEP, S_STEPS, S_GROUP, S_FORMAT, S_HELP };
    static const struct opt table[] = {
        [S_RATE] = {"--rate", 1},   [S_LINEAR] = {"--linear", 0}, [S_STEP] = {"--step", 1}, [S_STEPS] = {"--steps", 1},
        [S_GROUP] = {"--group", 1}, [S_FORMAT] = {"--format", 1}, [S_HELP] = {"--help", 0}, {NULL, 0}};
    const char *rate_s = NULL;
    float rate = 0.0f;
    int linear = 0, have_step = 0, have_steps = 0, group = 0, hex = 0;
    uint64_t step = 0, steps = 0, g;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int k = next_opt(table, argc, argv, &i, &v);
        if (k == -2) {
            err("schedule: unexpected argument \"%s\" (see dropblock schedule --help)", argv[i]);
            return EXIT_USAGE;
        }
        if (k < 0) return EXIT_USAGE;
        switch (k) {
        case S_RATE:
            if (parse_rate(v, &rate)) {
                err("--rate %s: not a decimal number", v);
                return EXIT_USAGE;
            }
            rate_s = v;
            break;
        case S_LINEAR: linear = 1; break;
        case S_STEP:
            if (parse_u64_opt("--step", v, &step)) return EXIT_USAGE;
            have_step = 1;
            break;
        case S_STEPS:
            if (parse_u64_opt("--steps", v, &steps)) return EXIT_USAGE;
            have_steps = 1;
            break;
        case S_GROUP:
            if (parse_u64(v, &g) || g < 1 || g > 4) {
                err("--group %s: must be 1, 2, 3 or 4", v);
                return EXIT_USAGE;
            }
            group = (int)g;
            break;
        case S_FORMAT:
            if (strcmp(v, "hex") && strcmp(v, "dec")) {
                err("--format %s: must be hex or dec", v);
                return EXIT_USAGE;
            }
            hex = !strcmp(v, "hex");
            break;
        case S_HELP: fputs(usage_schedule, stdout); return 0;
        }
    }
    /* clang-format off */
    if (!rate_s) { err("schedule: --rate is required (see dropblock schedule --help)"); return EXIT_USAGE; }
    if (!linear && !group) { err("schedule: give --linear, --group or both (see dropblock schedule --help)"); return EXIT_USAGE; }
    if (linear && (!have_step || !have_steps)) { err("schedule: --linear needs --step and --steps"); return EXIT_USAGE; }
    if (!linear && (have_step || have_steps)) { err("schedule: --step and --steps go with --linear"); return EXIT_USAGE; }
    /* clang-format on */
    float r = rate;
    if ((linear && dropblock_schedule_linear(r, step, steps, &r)) ||
        (group && dropblock_schedule_group(r, group, &r))) {
        err("--rate %s: must be in [0, 1]", rate_s);
        return EXIT_USAGE;
    }
    uint32_t bits;
    memcpy(&bits, &r, 4);
    char buf[64];
    if (hex) snprintf(buf, sizeof buf, "0x%08x", bits);
    else db_format_f32(buf, sizeof buf, bits);
    printf("%s\n", buf);
    if (fflush(stdout)) {
        err("write error on stdout: %s", strerror(errno));
        return EXIT_FAIL;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct opt table[] = {{"--local", 0},   {"--socket", 1},      {"--help", 0}, {"--version", 0},
                                       {"--timeout", 1}, {"--job-timeout", 1}, {NULL, 0}};
    struct engine_opts eo = {0, NULL, NULL, DROPBLOCK_DEFAULT_TIMEOUT_MS, -1};
    int i = 1;
    for (; i < argc; i++) {
        const char *v;
        int k = next_opt(table, argc, argv, &i, &v);
        if (k == -2) break;
        if (k < 0) return EXIT_USAGE;
        /* clang-format off */
        if (k == 0) eo.local = 1;
        else if (k == 1) eo.socket = v;
        else if (k == 2) { fputs(usage_main, stdout); return 0; }
        else if (k == 4) { if (parse_timeout("--timeout", v, &eo.timeout_ms)) return EXIT_USAGE; }
        else if (k == 5) { if (parse_timeout("--job-timeout", v, &eo.job_timeout_ms)) return EXIT_USAGE; }
        else { printf("dropblock %s (protocol %d)\n", DROPBLOCK_VERSION_STRING, DROPBLOCK_PROTOCOL_VERSION); return 0; }
        /* clang-format on */
    }
    if (i >= argc) {
        fputs(usage_main, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[i++];
    if (!strcmp(cmd, "run")) return cmd_run(argc - i, argv + i, eo);
    if (!strcmp(cmd, "devices")) return cmd_devices(argc - i, argv + i, eo);
    if (!strcmp(cmd, "status")) return cmd_status(argc - i, argv + i, eo);
    if (!strcmp(cmd, "stop")) return cmd_stop(argc - i, argv + i, eo);
    if (!strcmp(cmd, "schedule")) return cmd_schedule(argc - i, argv + i);
    if (!strcmp(cmd, "help")) {
        const char *what = i < argc ? argv[i] : "";
        fputs(!strcmp(what, "run")        ? usage_run
              : !strcmp(what, "devices")  ? usage_devices
              : !strcmp(what, "status")   ? usage_status
              : !strcmp(what, "stop")     ? usage_stop
              : !strcmp(what, "schedule") ? usage_schedule
                                          : usage_main,
              stdout);
        return 0;
    }
    err("unknown command \"%s\" (commands: run, devices, status, stop, schedule; see dropblock --help)", cmd);
    return EXIT_USAGE;
}
