/* quota.h: what dropblockd lets its clients hold, so that no client can lock out the others:
 * connections, regions and mapped bytes, in total and per uid. The defaults come from the
 * machine at start-up: the descriptor limit (raised to its hard limit first), vm.max_map_count
 * and physical memory, less what the daemon itself and its drivers already use and a reserve
 * that keeps accepting, answering and refusing possible (docs/security.md). Loop thread only. */
#ifndef DROPBLOCK_DAEMON_QUOTA_H
#define DROPBLOCK_DAEMON_QUOTA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Descriptors a connection can hold at once: its socket and the descriptors received with
 * frames, not yet claimed by a request (at most QUOTA_PENDING_FDS, then the connection goes). */
#define QUOTA_PENDING_FDS 16
#define QUOTA_FDS_PER_CLIENT (1 + QUOTA_PENDING_FDS)
/* Descriptors kept free beyond the clients' worst case: refusals, the kernel cache, drivers. */
#define QUOTA_FD_RESERVE 64
/* Memory mappings kept free beyond the regions: heap arenas, thread stacks, driver buffers. */
#define QUOTA_MAP_RESERVE 8192

/* What the machine gives the daemon, measured once the devices are up. */
struct quota_machine {
    uint64_t nofile, nofile_hard; /* RLIMIT_NOFILE after raising the soft limit to the hard one */
    uint64_t fds_open;            /* descriptors open now (drivers, log, listening socket) */
    uint64_t max_map_count, maps; /* vm.max_map_count and the mappings there are now */
    uint64_t mem_total;           /* physical memory (or the memory cgroup's limit) */
};

/* The caps; 0 means "derive from the machine" until quota_derive fills it in. */
struct quota {
    uint64_t max_clients, max_uid_clients;
    uint64_t max_total_regions, max_uid_regions;
    uint64_t max_mapped_bytes, max_uid_mapped_bytes;
    uint64_t max_region_bytes;
};

/* Raises the soft descriptor limit to the hard one; fills m. A line for the log in msg when the
 * limit could not be raised (not an error). */
void quota_probe(struct quota_machine *m, char *msg, size_t len);

/* Fills every cap still 0 from m and lowers caps that the machine cannot honour (the
 * descriptors and mappings they would need): a line per lowered cap in msg, else "". */
void quota_derive(struct quota *l, const struct quota_machine *m, char *msg, size_t len);

/* Use of one uid. */
struct uid_use {
    struct uid_use *next;
    uid_t uid;
    uint64_t clients, regions, mapped;
};

struct quota_use {
    struct uid_use *uids;
    uint64_t clients, regions, mapped;
};

/* The uid's entry, created at zero (NULL without memory). */
struct uid_use *quota_uid(struct quota_use *u, uid_t uid);
/* Drops an entry that holds nothing any more. */
void quota_uid_release(struct quota_use *u, struct uid_use *e);
void quota_use_clear(struct quota_use *u);

/* Whether a new connection of uid e may be accepted: 0, or the error message naming the cap. */
int quota_check_client(const struct quota *l, const struct quota_use *u, const struct uid_use *e, char *msg,
                       size_t len);
/* Whether a region of bytes may be mapped for uid e: 0, or the error message naming the cap. */
int quota_check_region(const struct quota *l, const struct quota_use *u, const struct uid_use *e, uint64_t bytes,
                       char *msg, size_t len);

#endif
