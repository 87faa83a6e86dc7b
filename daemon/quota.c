/* quota.c: caps on what clients hold, sized from the machine; per-uid accounting. */
#include "quota.h"

#include <dirent.h>
#include <dropblock/dropblock.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "msg.h"
#include "plan.h"
#include "sysmem.h"

static uint64_t count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 64; /* no /proc: a guess on the safe side */
    uint64_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n ? n - 1 : 0; /* opendir's own */
}

static uint64_t count_maps(void)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f) return 1024;
    uint64_t n = 0;
    int ch;
    while ((ch = getc(f)) != EOF)
        if (ch == '\n') n++;
    fclose(f);
    return n;
}

static uint64_t max_map_count(void)
{
    FILE *f = fopen("/proc/sys/vm/max_map_count", "re");
    unsigned long long v = 65530; /* the kernel's default */
    if (f) {
        if (fscanf(f, "%llu", &v) != 1) v = 65530;
        fclose(f);
    }
    return v;
}

void quota_probe(struct quota_machine *m, char *msg, size_t len)
{
    if (len) msg[0] = 0;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur < rl.rlim_max) {
            struct rlimit want = {rl.rlim_max, rl.rlim_max};
            /* select() users cap at FD_SETSIZE, but libuv polls with epoll: no such cap */
            if (setrlimit(RLIMIT_NOFILE, &want) == 0) rl = want;
            else
                db_msg(msg, len, "cannot raise the descriptor limit from %llu to %llu: %s",
                       (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max, strerror(errno));
        }
        m->nofile = rl.rlim_cur == RLIM_INFINITY ? UINT64_C(1) << 20 : (uint64_t)rl.rlim_cur;
        m->nofile_hard = rl.rlim_max == RLIM_INFINITY ? UINT64_C(1) << 20 : (uint64_t)rl.rlim_max;
    } else {
        m->nofile = m->nofile_hard = 1024;
    }
    m->fds_open = count_fds();
    m->max_map_count = max_map_count();
    m->maps = count_maps();
    m->mem_total = db_mem_total();
    if (m->mem_total == UINT64_MAX) m->mem_total = UINT64_C(1) << 40;
}

/* Appends "; " and a line to msg. */
static void note(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void note(char *msg, size_t len, const char *fmt, ...)
{
    size_t o = strlen(msg);
    if (o + 3 >= len) return;
    if (o) {
        memcpy(msg + o, "; ", 3);
        o += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + o, len - o, fmt, ap);
    va_end(ap);
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

void quota_derive(struct quota *l, const struct quota_machine *m, char *msg, size_t len)
{
    if (len) msg[0] = 0;
    /* connections: each may hold its socket and QUOTA_PENDING_FDS received descriptors */
    uint64_t used = m->fds_open + QUOTA_FD_RESERVE;
    uint64_t fit = m->nofile > used ? (m->nofile - used) / QUOTA_FDS_PER_CLIENT : 0;
    if (fit < 1) fit = 1;
    if (!l->max_clients) l->max_clients = min_u64(fit, 4096);
    else if (l->max_clients > fit) {
        note(msg, len,
             "--max-clients %llu lowered to %llu: %llu descriptors (RLIMIT_NOFILE) hold no more clients "
             "of %d descriptors each beside the %llu in use and %d reserved; raise LimitNOFILE",
             (unsigned long long)l->max_clients, (unsigned long long)fit, (unsigned long long)m->nofile,
             QUOTA_FDS_PER_CLIENT, (unsigned long long)m->fds_open, QUOTA_FD_RESERVE);
        l->max_clients = fit;
    }
    /* a quarter each, so that one uid leaves room for three; but at least 32 (a training job's
     * workers) where that still leaves half to the others */
    if (!l->max_uid_clients) {
        l->max_uid_clients = l->max_clients / 4;
        if (l->max_uid_clients < min_u64(32, l->max_clients / 2)) l->max_uid_clients = min_u64(32, l->max_clients / 2);
        if (!l->max_uid_clients) l->max_uid_clients = 1;
    }
    if (l->max_uid_clients > l->max_clients) l->max_uid_clients = l->max_clients;

    /* regions: one mapping each */
    used = m->maps + QUOTA_MAP_RESERVE;
    fit = m->max_map_count > used ? m->max_map_count - used : 1;
    if (!l->max_total_regions) l->max_total_regions = fit;
    else if (l->max_total_regions > fit) {
        note(msg, len,
             "--max-total-regions %llu lowered to %llu: vm.max_map_count %llu holds no more beside the "
             "%llu mappings in use and %d reserved",
             (unsigned long long)l->max_total_regions, (unsigned long long)fit, (unsigned long long)m->max_map_count,
             (unsigned long long)m->maps, QUOTA_MAP_RESERVE);
        l->max_total_regions = fit;
    }
    if (!l->max_uid_regions) l->max_uid_regions = l->max_total_regions / 4 ? l->max_total_regions / 4 : 1;
    if (l->max_uid_regions > l->max_total_regions) l->max_uid_regions = l->max_total_regions;

    /* bytes: a region's pages are the client's memory, but the daemon touches them (and a
     * memory cgroup charges the pages it faults in to the daemon): no more than the machine */
    if (!l->max_region_bytes) l->max_region_bytes = m->mem_total;
    if (!l->max_mapped_bytes) l->max_mapped_bytes = m->mem_total;
    if (!l->max_uid_mapped_bytes) l->max_uid_mapped_bytes = l->max_mapped_bytes / 2 ? l->max_mapped_bytes / 2 : 1;
    if (l->max_uid_mapped_bytes > l->max_mapped_bytes) l->max_uid_mapped_bytes = l->max_mapped_bytes;
}

struct uid_use *quota_uid(struct quota_use *u, uid_t uid)
{
    for (struct uid_use *e = u->uids; e; e = e->next)
        if (e->uid == uid) return e;
    struct uid_use *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->uid = uid;
    e->next = u->uids;
    u->uids = e;
    return e;
}

void quota_uid_release(struct quota_use *u, struct uid_use *e)
{
    if (!e || e->clients || e->regions || e->mapped) return;
    for (struct uid_use **p = &u->uids; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            free(e);
            return;
        }
}

void quota_use_clear(struct quota_use *u)
{
    while (u->uids) {
        struct uid_use *e = u->uids;
        u->uids = e->next;
        free(e);
    }
}

int quota_check_client(const struct quota *l, const struct quota_use *u, const struct uid_use *e, char *msg, size_t len)
{
    if (u->clients >= l->max_clients) {
        db_msg(msg, len, "dropblockd already serves %llu connections (--max-clients); try again when one closes",
               (unsigned long long)l->max_clients);
        return DROPBLOCK_EEXHAUSTED;
    }
    if (e->clients >= l->max_uid_clients) {
        db_msg(msg, len, "uid %u already has %llu connections to dropblockd (--max-uid-clients); close one first",
               (unsigned)e->uid, (unsigned long long)l->max_uid_clients);
        return DROPBLOCK_EEXHAUSTED;
    }
    return DROPBLOCK_OK;
}

int quota_check_region(const struct quota *l, const struct quota_use *u, const struct uid_use *e, uint64_t bytes,
                       char *msg, size_t len)
{
    char b[64], c[64];
    db_fmt_bytes(b, sizeof b, bytes);
    if (bytes > l->max_region_bytes) {
        db_fmt_bytes(c, sizeof c, l->max_region_bytes);
        db_msg(msg, len,
               "region.register: a region of %s is above the daemon's max_region_bytes, %s "
               "(--max-region-bytes)",
               b, c);
        return DROPBLOCK_EEXHAUSTED;
    }
    if (u->regions >= l->max_total_regions) {
        db_msg(msg, len,
               "region.register: the daemon holds %llu regions of all clients, its limit "
               "(--max-total-regions); free some (dropblock_free) and retry",
               (unsigned long long)u->regions);
        return DROPBLOCK_EEXHAUSTED;
    }
    if (e->regions >= l->max_uid_regions) {
        db_msg(msg, len,
               "region.register: uid %u holds %llu regions over all its connections, its limit "
               "(--max-uid-regions); free some (dropblock_free) and retry",
               (unsigned)e->uid, (unsigned long long)e->regions);
        return DROPBLOCK_EEXHAUSTED;
    }
    if (bytes > l->max_mapped_bytes - min_u64(u->mapped, l->max_mapped_bytes)) {
        db_fmt_bytes(c, sizeof c, l->max_mapped_bytes);
        db_msg(msg, len,
               "region.register: %s more would pass the daemon's limit of %s mapped for all clients "
               "(--max-mapped-bytes)",
               b, c);
        return DROPBLOCK_EEXHAUSTED;
    }
    if (bytes > l->max_uid_mapped_bytes - min_u64(e->mapped, l->max_uid_mapped_bytes)) {
        db_fmt_bytes(c, sizeof c, l->max_uid_mapped_bytes);
        db_msg(msg, len,
               "region.register: %s more would pass uid %u's limit of %s mapped over all its "
               "connections (--max-uid-mapped-bytes)",
               b, (unsigned)e->uid, c);
        return DROPBLOCK_EEXHAUSTED;
    }
    return DROPBLOCK_OK;
}
