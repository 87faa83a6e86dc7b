/* server.c: dropblockd's start-up: options, the listening socket (or systemd's), the engine and
 * the device workers, the small-job threshold, the limits, and the libuv loop. The loop thread
 * only reads, validates and replies (conn.c, ops.c); jobs run on per-device workers (jobs.c). */
#include <dropblock/dropblock.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "clock.h"
#include "dropblock_version.h"
#include "msg.h"
#include "server.h"

/* --small-job-bytes auto: the ladder's time at start-up, and the threshold when there is
 * nothing to measure (the default device is the built-in CPU backend: the bound on the jobs run
 * inline on the loop thread). */
#define SMALL_BUDGET_US 1000000
#define SMALL_FALLBACK_BYTES SJ_DEFAULT_BYTES

static void engine_log(void *ctx, const char *line) { logmsg(ctx, LOG_WARN, "engine %s", line); }

/* ---------------------------------------------------------------- socket setup */
static int mkdir_parents(const char *path, mode_t mode)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = 0;
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(dir, mode) < 0 && errno != EEXIST) return -1;
    return 0;
}

/* The socket address of path; -1 (with a message) when it does not fit sun_path. */
static int socket_addr(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path) {
        fprintf(stderr, "dropblockd: socket path too long (%zu bytes, at most %zu): %s\n", strlen(path),
                sizeof sa->sun_path - 1, path);
        return -1;
    }
    snprintf(sa->sun_path, sizeof sa->sun_path, "%s", path);
    return 0;
}

/* Checks the path before the (slow) engine start: refuses a live daemon or a non-socket. */
static int check_socket_path(const char *path)
{
    struct sockaddr_un sa;
    if (socket_addr(path, &sa) < 0) return -1;
    struct stat st;
    if (lstat(path, &st) < 0) return 0;
    if (!S_ISSOCK(st.st_mode)) {
        fprintf(stderr, "dropblockd: %s exists and is not a socket; not touching it\n", path);
        return -1;
    }
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (probe >= 0) close(probe);
    if (live) {
        fprintf(stderr, "dropblockd: another daemon is serving %s\n", path);
        return -1;
    }
    return 0;
}

/* Binds the socket once the daemon can serve, so a client never connects to a daemon that is
 * still starting its devices. */
static int listen_on(struct server *s, const char *path, int dir_private)
{
    struct sockaddr_un sa;
    if (socket_addr(path, &sa) < 0) return -1;
    if (mkdir_parents(path, dir_private ? 0700 : 0750) < 0) {
        fprintf(stderr, "dropblockd: cannot create the directory of %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (check_socket_path(path) < 0) return -1; /* again: the engine start took a while */
    unlink(path);                               /* a stale socket: nothing answers on it */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("dropblockd: socket");
        return -1;
    }
    mode_t old = umask(0117); /* the socket is born 0660: no window with looser modes */
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0 || listen(fd, 128) < 0) {
        fprintf(stderr, "dropblockd: cannot listen on %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    chmod(path, 0660);
    s->listen_fd = fd;
    s->owns_socket = 1;
    snprintf(s->socket_path, sizeof s->socket_path, "%s", path);
    return 0;
}

/* systemd socket activation: LISTEN_PID names us and fd 3 is a listening Unix socket */
static int activated_socket(struct server *s)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    if (!pid || !fds || atol(pid) != (long)getpid() || atoi(fds) < 1) return 0;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    struct stat st;
    int type = 0;
    socklen_t tl = sizeof type;
    if (fstat(3, &st) < 0 || !S_ISSOCK(st.st_mode) || getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
        type != SOCK_STREAM) {
        fprintf(stderr, "dropblockd: LISTEN_FDS names fd 3, but it is not a stream socket\n");
        return -1;
    }
    fcntl(3, F_SETFL, fcntl(3, F_GETFL) | O_NONBLOCK);
    fcntl(3, F_SETFD, FD_CLOEXEC);
    s->listen_fd = 3;
    s->owns_socket = 0;
    struct sockaddr_un sa;
    socklen_t sl = sizeof sa;
    if (getsockname(3, (struct sockaddr *)&sa, &sl) == 0 && sa.sun_family == AF_UNIX)
        snprintf(s->socket_path, sizeof s->socket_path, "%s", sa.sun_path);
    return 1;
}

/* ---------------------------------------------------------------- small jobs */
/* --small-job-bytes auto: times the ladder (jobs_measure_small) after the devices are up and
 * before the socket is bound, and logs what it found. */
static void measure_small_jobs(struct server *s)
{
    struct jobs_small *m = &s->small;
    if (jobs_measure_small(s->jobs, SMALL_BUDGET_US, m)) {
        s->small_source = SMALL_FALLBACK;
        s->small_job_bytes = SMALL_FALLBACK_BYTES;
        logmsg(s, LOG_INFO, "small jobs: auto jobs of at most %llu bytes run on the built-in CPU backend (%s)",
               (unsigned long long)s->small_job_bytes,
               m->why == JOBS_SMALL_NOTHING
                   ? "not measured: the default device is the built-in CPU backend, or there is none"
               : m->why == JOBS_SMALL_LATE ? "not measured: the ladder's first size took longer than its time budget"
                                           : "not measured: a job of the ladder's first size failed");
        return;
    }
    s->small_source = SMALL_MEASURED;
    s->small_job_bytes = m->bytes;
    char lad[512];
    size_t o = 0;
    for (int i = 0; i < m->n && o < sizeof lad; i++) {
        int k = snprintf(lad + o, sizeof lad - o, "%s%llu B %.0f/%.0f us", i ? ", " : "",
                         (unsigned long long)m->ladder[i].bytes, m->ladder[i].cpu_us, m->ladder[i].dev_us);
        if (k < 0) break;
        o += (size_t)k;
    }
    logmsg(s, LOG_INFO,
           "small jobs: auto jobs of at most %llu bytes run on %s, larger ones on %s (measured in %llu ms; "
           "bytes cpu/device median of %d: %s)",
           (unsigned long long)m->bytes, db_engine_device(s->engine, (size_t)m->cpu)->id,
           db_engine_device(s->engine, (size_t)m->dev)->id, (unsigned long long)(m->elapsed_us / 1000), m->reps, lad);
}

/* ---------------------------------------------------------------- options */
static void usage(FILE *f)
{
    fprintf(f,
            "usage: dropblockd [--socket PATH] [--devices LIST] [--allow-uid U,...] [--allow-gid G,...]\n"
            "                  [--max-inflight-jobs N] [--max-inflight-bytes B] [--max-client-jobs N]\n"
            "                  [--max-client-bytes B] [--max-regions N] [--max-clients N] [--max-uid-clients N]\n"
            "                  [--max-total-regions N] [--max-uid-regions N] [--max-mapped-bytes B]\n"
            "                  [--max-uid-mapped-bytes B] [--max-region-bytes B] [--max-device-bytes B]\n"
            "                  [--max-client-device-bytes B] [--max-semaphores N] [--max-semaphore-wait-ms MS]\n"
            "                  [--small-job-bytes B|auto] [--cache-dir DIR] [--log-level L]\n"
            "Serves DropBlock2D jobs over a Unix socket (protocol: docs/protocol.md) until SIGTERM/SIGINT.\n"
            "  --socket PATH          default $DROPBLOCK_SOCKET, else $XDG_RUNTIME_DIR/dropblock/dropblockd.sock,\n"
            "                         else /run/dropblock/dropblockd.sock; systemd socket activation is honoured\n"
            "  --devices LIST         ids or APIs to use, e.g. opencl:0,vulkan,cpu (default: all; also\n"
            "                         $DROPBLOCK_VISIBLE_DEVICES)\n"
            "  --allow-uid/--allow-gid peers allowed besides the daemon's own uid and gid (numbers or names;\n"
            "                         a gid matches the peer's primary or supplementary groups)\n"
            "  --max-inflight-jobs N  jobs queued or running, all clients (default 256); --max-client-jobs (64)\n"
            "  --max-inflight-bytes B tensor bytes in flight, all clients (default 8 GiB); --max-client-bytes (4 GiB)\n"
            "  --max-regions N        regions per connection (default 256)\n"
            "  --max-clients N        connections at once, all uids (default: what the descriptor limit holds\n"
            "                         at 17 descriptors a connection, at most 4096; the soft RLIMIT_NOFILE is\n"
            "                         raised to the hard one at start); --max-uid-clients (a quarter of it,\n"
            "                         or up to 32 where that leaves half)\n"
            "  --max-total-regions N  regions of all clients (default: what vm.max_map_count leaves, less the\n"
            "                         daemon's own mappings and 8192 reserved); --max-uid-regions (a quarter)\n"
            "  --max-mapped-bytes B   bytes of all regions (default: physical memory, or the memory cgroup's\n"
            "                         limit); --max-uid-mapped-bytes (half of it)\n"
            "  --max-region-bytes B   one region (default: physical memory)\n"
            "  --max-device-bytes B   device memory of all clients' region.alloc regions (default: three quarters\n"
            "                         of the largest exporting device's memory); --max-client-device-bytes (half)\n"
            "                         A connection over a cap gets one resource_exhausted error naming it and\n"
            "                         is closed; a region over one is refused. Caps above what the machine\n"
            "                         holds are lowered at start, with a warning. (docs/security.md)\n"
            "  --max-semaphores N     timeline semaphores per connection (semaphore.create; default 16)\n"
            "  --max-semaphore-wait-ms MS  the longest a job may wait for a semaphore (its wait.timeout_ms, and\n"
            "                         the default; 60000)\n"
            "  --small-job-bytes B|auto \"auto\" jobs of at most B bytes (tensors + mask) run on the built-in CPU\n"
            "                         backend, on the loop thread when it is idle; 0: never. auto (the default):\n"
            "                         B is measured at start-up (about 1 s at most), the size where the default\n"
            "                         device gets faster than the CPU backend\n"
            "  --cache-dir DIR        compiled kernels (default $XDG_CACHE_HOME/dropblock or ~/.cache/dropblock)\n"
            "  --log-level L          error, warn, info (default) or debug\n");
}

static int parse_u64_opt(const char *name, const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-' || x == 0) {
        fprintf(stderr, "dropblockd: %s %s: must be a positive integer\n", name, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_ids(const char *list, int gid, struct server *s)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        char *end;
        unsigned long v = strtoul(t, &end, 10);
        if (end == t || *end) {
            if (gid) {
                struct group *g = getgrnam(t);
                if (!g) goto bad;
                v = g->gr_gid;
            } else {
                struct passwd *p = getpwnam(t);
                if (!p) goto bad;
                v = p->pw_uid;
            }
        }
        if (gid && s->n_allow_gid < MAX_ALLOW) s->allow_gid[s->n_allow_gid++] = (gid_t)v;
        if (!gid && s->n_allow_uid < MAX_ALLOW) s->allow_uid[s->n_allow_uid++] = (uid_t)v;
        continue;
    bad:
        fprintf(stderr, "dropblockd: --allow-%s %s: no such %s\n", gid ? "gid" : "uid", t, gid ? "group" : "user");
        return -1;
    }
    return 0;
}

/* The defaults of the options, before they are parsed. */
static void set_defaults(struct server *s)
{
    s->log_level = LOG_INFO;
    s->max_jobs = 256;
    s->max_client_jobs = 64;
    s->max_bytes = UINT64_C(8) << 30;
    s->max_client_bytes = UINT64_C(4) << 30;
    s->max_regions = 256;
    s->max_semaphores = 16;
    s->max_semaphore_wait_ms = 60000;
    s->reserve_fd = -1;
    s->small_job_bytes = SMALL_FALLBACK_BYTES;
    s->small_source = SMALL_AUTO;
    s->allow_uid[s->n_allow_uid++] = getuid();
    s->allow_gid[s->n_allow_gid++] = getgid();
}

/* --small-job-bytes B|auto */
static int parse_small_opt(const char *v, struct server *s)
{
    if (!strcmp(v, "auto")) {
        s->small_source = SMALL_AUTO;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v || *end || v[0] == '-') {
        fprintf(stderr, "dropblockd: --small-job-bytes %s: must be auto or a byte count (0 disables)\n", v);
        return -1;
    }
    s->small_job_bytes = x;
    s->small_source = SMALL_OPTION;
    return 0;
}

/* --log-level L */
static int parse_level_opt(const char *v, struct server *s)
{
    int lv = -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(v, level_names[i])) lv = i;
    if (lv < 0) {
        fprintf(stderr, "dropblockd: --log-level %s: must be error, warn, info or debug\n", v);
        return -1;
    }
    s->log_level = lv;
    return 0;
}

/* What main takes from the options besides the server's fields. */
struct start_opts {
    const char *socket, *devices, *cache_dir;
};

/* The options into s and so: -1 to go on, else the exit status (0 after --help or --version). */
static int parse_options(int argc, char **argv, struct server *s, struct start_opts *so)
{
    /* clang-format off */
    static const struct option opts[] = {
        {"socket", required_argument, 0, 's'},          {"devices", required_argument, 0, 'd'},
        {"allow-uid", required_argument, 0, 'u'},       {"allow-gid", required_argument, 0, 'g'},
        {"max-inflight-jobs", required_argument, 0, 'j'}, {"max-inflight-bytes", required_argument, 0, 'b'},
        {"max-client-jobs", required_argument, 0, 'J'}, {"max-client-bytes", required_argument, 0, 'B'},
        {"max-regions", required_argument, 0, 'r'},     {"cache-dir", required_argument, 0, 'c'},
        {"log-level", required_argument, 0, 'l'},       {"help", no_argument, 0, 'h'},
        {"small-job-bytes", required_argument, 0, 'S'},
        {"max-clients", required_argument, 0, 256},     {"max-uid-clients", required_argument, 0, 257},
        {"max-total-regions", required_argument, 0, 258}, {"max-uid-regions", required_argument, 0, 259},
        {"max-mapped-bytes", required_argument, 0, 260}, {"max-uid-mapped-bytes", required_argument, 0, 261},
        {"max-region-bytes", required_argument, 0, 262},
        {"max-device-bytes", required_argument, 0, 263}, {"max-client-device-bytes", required_argument, 0, 264},
        {"max-semaphores", required_argument, 0, 265}, {"max-semaphore-wait-ms", required_argument, 0, 266},
        {"version", no_argument, 0, 'V'},               {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 's': so->socket = optarg; break;
        case 'd': so->devices = optarg; break;
        case 'u': if (parse_ids(optarg, 0, s)) return 2; break;
        case 'g': if (parse_ids(optarg, 1, s)) return 2; break;
        case 'j': if (parse_u64_opt("--max-inflight-jobs", optarg, &s->max_jobs)) return 2; break;
        case 'b': if (parse_u64_opt("--max-inflight-bytes", optarg, &s->max_bytes)) return 2; break;
        case 'J': if (parse_u64_opt("--max-client-jobs", optarg, &s->max_client_jobs)) return 2; break;
        case 'B': if (parse_u64_opt("--max-client-bytes", optarg, &s->max_client_bytes)) return 2; break;
        case 'r': if (parse_u64_opt("--max-regions", optarg, &s->max_regions)) return 2; break;
        case 256: if (parse_u64_opt("--max-clients", optarg, &s->lim.max_clients)) return 2; break;
        case 257: if (parse_u64_opt("--max-uid-clients", optarg, &s->lim.max_uid_clients)) return 2; break;
        case 258: if (parse_u64_opt("--max-total-regions", optarg, &s->lim.max_total_regions)) return 2; break;
        case 259: if (parse_u64_opt("--max-uid-regions", optarg, &s->lim.max_uid_regions)) return 2; break;
        case 260: if (parse_u64_opt("--max-mapped-bytes", optarg, &s->lim.max_mapped_bytes)) return 2; break;
        case 261: if (parse_u64_opt("--max-uid-mapped-bytes", optarg, &s->lim.max_uid_mapped_bytes)) return 2; break;
        case 262: if (parse_u64_opt("--max-region-bytes", optarg, &s->lim.max_region_bytes)) return 2; break;
        case 263: if (parse_u64_opt("--max-device-bytes", optarg, &s->max_device_bytes)) return 2; break;
        case 264: if (parse_u64_opt("--max-client-device-bytes", optarg, &s->max_client_device_bytes)) return 2; break;
        case 265: if (parse_u64_opt("--max-semaphores", optarg, &s->max_semaphores)) return 2; break;
        case 266:
            if (parse_u64_opt("--max-semaphore-wait-ms", optarg, &s->max_semaphore_wait_ms)) return 2;
            if (s->max_semaphore_wait_ms > INT32_MAX) {
                fprintf(stderr, "dropblockd: --max-semaphore-wait-ms %s: at most %d\n", optarg, INT32_MAX);
                return 2;
            }
            break;
        case 'c': so->cache_dir = optarg; break;
        case 'S': if (parse_small_opt(optarg, s)) return 2; break;
        case 'l': if (parse_level_opt(optarg, s)) return 2; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("dropblockd %s (protocol %d)\n", DROPBLOCK_VERSION_STRING, PROTO_VERSION); return 0;
        default: usage(stderr); return 2;
            /* clang-format on */
        }
    }
    if (optind < argc) {
        fprintf(stderr, "dropblockd: unexpected argument %s\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    return -1;
}

/* The socket's path into path (--socket, else the default), refused if sun_path cannot hold it,
 * and checked unless systemd passed the socket (act); *private_dir: whether its folder is the
 * daemon's own. -1 to go on, else the exit status. */
static int socket_path_opt(struct server *s, const char *socket_opt, int act, char *path, size_t size, int *private_dir)
{
    if (socket_opt) snprintf(path, size, "%s", socket_opt);
    else dropblock_default_socket(path, size);
    /* a path sun_path cannot hold is refused, never served truncated (as the client refuses it) */
    if (!act && (!path[0] || strlen(path) >= sizeof s->socket_path)) {
        fprintf(stderr, "dropblockd: %s \"%.200s%s\": a Unix socket path must be 1 to %zu bytes; this one has %zu\n",
                socket_opt ? "--socket" : "socket path", path, strlen(path) > 200 ? "..." : "",
                sizeof s->socket_path - 1, strlen(path));
        return 2;
    }
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    *private_dir = socket_opt || (xdg && *xdg && !getenv("DROPBLOCK_SOCKET"));
    if (!act && check_socket_path(path) < 0) return 1;
    return -1;
}

/* Signals, the engine and its devices, the device workers and the small-job threshold; an
 * error is on stderr (0 or -1). */
static int start_engine(struct server *s, const struct start_opts *so, int act)
{
    /* signals first: a SIGTERM during the device start-up stops the daemon cleanly */
    uv_signal_init(s->loop, &s->sig_term);
    uv_signal_init(s->loop, &s->sig_int);
    s->sig_term.data = s->sig_int.data = s;
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    char msg[512];
    if (db_engine_open(&s->engine, NULL, so->devices, so->cache_dir, engine_log, s, msg, sizeof msg)) {
        fprintf(stderr, "dropblockd: %s\n", msg);
        if (act) close(s->listen_fd);
        return -1;
    }
    for (size_t i = 0; i < db_engine_device_count(s->engine); i++) {
        const dropblock_device_info *d = db_engine_device(s->engine, i);
        char paths[256];
        db_engine_device_paths(s->engine, i, paths, sizeof paths);
        logmsg(s, LOG_INFO, "device %s: %s %s (%s, driver %s): %s", d->id, d->vendor, d->name,
               dropblock_device_kind_name(d->kind), d->driver, paths);
    }
    if (jobs_start(&s->jobs, s->engine, s->loop, on_job_done, s, msg, sizeof msg)) {
        fprintf(stderr, "dropblockd: %s\n", msg);
        db_engine_close(s->engine);
        return -1;
    }
    if (s->small_source == SMALL_AUTO) measure_small_jobs(s);
    jobs_set_small_job_bytes(s->jobs, s->small_job_bytes);
    return 0;
}

/* The caps, from what the devices and drivers left of the descriptors and mappings. */
static void set_limits(struct server *s)
{
    char lim_msg[1024];
    struct quota_machine now;
    quota_probe(&now, lim_msg, sizeof lim_msg);
    quota_derive(&s->lim, &now, lim_msg, sizeof lim_msg);
    if (lim_msg[0]) logmsg(s, LOG_WARN, "limits: %s", lim_msg);
    s->machine = now;
    device_limits(s);
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    logmsg(s, LOG_INFO,
           "limits: %llu connections (%llu per uid; %llu descriptors, %llu open), %llu regions (%llu per "
           "uid, %llu per connection; vm.max_map_count %llu), %llu mapped bytes (%llu per uid), regions of at most "
           "%llu bytes",
           (unsigned long long)s->lim.max_clients, (unsigned long long)s->lim.max_uid_clients,
           (unsigned long long)now.nofile, (unsigned long long)now.fds_open,
           (unsigned long long)s->lim.max_total_regions, (unsigned long long)s->lim.max_uid_regions,
           (unsigned long long)s->max_regions, (unsigned long long)now.max_map_count,
           (unsigned long long)s->lim.max_mapped_bytes, (unsigned long long)s->lim.max_uid_mapped_bytes,
           (unsigned long long)s->lim.max_region_bytes);
}

/* Polls the listening socket and sets up the loop's timers. */
static void start_serving(struct server *s, int act)
{
    uv_poll_init(s->loop, &s->listen_poll, s->listen_fd);
    s->listen_poll.data = s;
    uv_poll_start(&s->listen_poll, UV_READABLE, on_listen);
    s->listening = 1;
    uv_timer_init(s->loop, &s->accept_pause);
    s->accept_pause.data = s;
    uv_timer_init(s->loop, &s->idle_trim);
    s->idle_trim.data = s;
    logmsg(s, LOG_INFO, "serving %s%s (pid %d)", s->socket_path, act ? " (socket activation)" : "", (int)getpid());
}

int main(int argc, char **argv)
{
    static struct server srv;
    struct server *s = &srv;
    struct start_opts so = {0};
    set_defaults(s);
    int rc = parse_options(argc, argv, s, &so);
    if (rc >= 0) return rc;
    signal(SIGPIPE, SIG_IGN);
    /* descriptors: the soft limit up to the hard one before the drivers open theirs */
    char lim_msg[1024];
    quota_probe(&s->machine, lim_msg, sizeof lim_msg);
    if (lim_msg[0]) logmsg(s, LOG_WARN, "%s", lim_msg);
#ifdef __GLIBC__
    /* glibc raises its mmap threshold (and with it the trim threshold) to the largest block
     * freed, up to 32 MiB: the tensor-sized buffers of the backends and drivers then stay in the
     * worker threads' arenas, whose tops are never trimmed, and the daemon's RSS ratchets up to
     * its largest jobs' working set for good (+20% in tests/load). A fixed threshold keeps
     * blocks of 1 MiB and more in their own mappings, returned when freed (same throughput). */
    if (!getenv("MALLOC_MMAP_THRESHOLD_")) mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
    s->loop = uv_default_loop();
    s->t_start = db_now_us();

    int act = activated_socket(s);
    if (act < 0) return 1;
    char path[PATH_MAX + 64];
    int private_dir = 0;
    rc = socket_path_opt(s, so.socket, act, path, sizeof path, &private_dir);
    if (rc >= 0) return rc;
    if (start_engine(s, &so, act)) return 1;
    set_limits(s);
    if (!act && listen_on(s, path, private_dir) < 0) {
        jobs_stop(s->jobs);
        uv_run(s->loop, UV_RUN_NOWAIT);
        db_engine_close(s->engine);
        return 1;
    }
    start_serving(s, act);

    uv_run(s->loop, UV_RUN_DEFAULT);

    db_engine_close(s->engine);
    uv_loop_close(s->loop);
    if (s->reserve_fd >= 0) close(s->reserve_fd);
    quota_use_clear(&s->use);
    return 0;
}
