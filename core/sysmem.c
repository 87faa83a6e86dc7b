/* sysmem.c: memory available to this process, from /proc/meminfo and the memory cgroup. */
#include "sysmem.h"

#include <dropblock/dropblock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "plan.h"

/* One "Key: N kB" line of /proc/meminfo in bytes; UINT64_MAX when absent. */
static uint64_t meminfo(const char *key)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f) return UINT64_MAX;
    char line[256];
    size_t kl = strlen(key);
    uint64_t v = UINT64_MAX;
    while (fgets(line, sizeof line, f)) {
        unsigned long long kb;
        if (!strncmp(line, key, kl) && line[kl] == ':' && sscanf(line + kl + 1, "%llu", &kb) == 1) {
            v = (uint64_t)kb * 1024;
            break;
        }
    }
    fclose(f);
    return v;
}

/* A file holding one number ("max" or absent: UINT64_MAX). */
static uint64_t read_u64_file(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f) return UINT64_MAX;
    unsigned long long v;
    int ok = fscanf(f, "%llu", &v) == 1;
    fclose(f);
    return ok ? (uint64_t)v : UINT64_MAX;
}

/* The memory cgroup's limit and usage (the mount's root: a container's own cgroup under a
 * cgroup namespace). Limits at or above 2^62 mean "none" (v1 writes 2^63 - 4096). */
static void cgroup_memory(uint64_t *limit, uint64_t *usage)
{
    *limit = read_u64_file("/sys/fs/cgroup/memory.max");
    *usage = read_u64_file("/sys/fs/cgroup/memory.current");
    if (*limit == UINT64_MAX) {
        *limit = read_u64_file("/sys/fs/cgroup/memory/memory.limit_in_bytes");
        *usage = read_u64_file("/sys/fs/cgroup/memory/memory.usage_in_bytes");
    }
    if (*limit >= (UINT64_C(1) << 62)) *limit = UINT64_MAX;
    if (*usage == UINT64_MAX) *usage = 0;
}

uint64_t db_mem_available(void)
{
    const char *o = getenv("DROPBLOCK_MEM_AVAILABLE");
    if (o && *o) {
        char *end;
        unsigned long long v = strtoull(o, &end, 10);
        if (!*end) return (uint64_t)v;
    }
    uint64_t avail = meminfo("MemAvailable"), limit, usage;
    cgroup_memory(&limit, &usage);
    if (limit != UINT64_MAX) {
        uint64_t head = limit > usage ? limit - usage : 0;
        if (head < avail) avail = head;
    }
    return avail;
}

uint64_t db_mem_total(void)
{
    uint64_t total = meminfo("MemTotal"), limit, usage;
    cgroup_memory(&limit, &usage);
    return limit < total ? limit : total;
}

void db_fmt_bytes(char *buf, size_t len, uint64_t bytes)
{
    static const char *const units[] = {"B", "kB", "MB", "GB", "TB", "PB", "EB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1000.0 && u < 6) {
        v /= 1000.0;
        u++;
    }
    if (u == 0) snprintf(buf, len, "%llu bytes", (unsigned long long)bytes);
    else snprintf(buf, len, "%.1f %s (%llu bytes)", v, units[u], (unsigned long long)bytes);
}

int db_mem_check(uint64_t bytes, const char *what, char *msg, size_t len)
{
    uint64_t avail = db_mem_available();
    if (avail == UINT64_MAX || bytes <= avail) return DROPBLOCK_OK;
    char b[64], a[64], t[64];
    uint64_t total = db_mem_total();
    db_fmt_bytes(b, sizeof b, bytes);
    db_fmt_bytes(a, sizeof a, avail);
    if (total == UINT64_MAX) snprintf(t, sizeof t, "an unknown total");
    else db_fmt_bytes(t, sizeof t, total);
    db_msg(msg, len, "%s: %s needs more memory than this machine has available (%s available of %s)", what, b, a, t);
    return DROPBLOCK_EEXHAUSTED;
}
