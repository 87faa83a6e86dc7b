/* regions.h: shared-memory regions registered by clients (memfds, sealed against shrinking),
 * mapped once and reference-counted so that unregister or a disconnect never unmaps under a
 * running job. A region is what a job names; where its bytes live is this file's business. */
#ifndef DROPBLOCK_DAEMON_REGIONS_H
#define DROPBLOCK_DAEMON_REGIONS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

struct region {
    atomic_int refs;
    uint32_t id;
    uint8_t *base; /* the mapping (host regions); NULL for device memory */
    uint64_t size;
    int writable;
    /* device memory (region.alloc, device_regions.c): the engine's device, its export handle,
     * given back to the engine at the last reference; dev -1 for a mapped memfd */
    int dev;
    void *export;
    struct db_engine *engine;
    /* the region as the engine sees it (db_engine_run_shared): a device may keep its import
     * between jobs with a reference of its own; gone once unregistered (or its client gone), so
     * that the device drops it at its next job or sweep and the mapping ends with the last
     * reference */
    struct db_host_region host;
};

/* Validates fd (a memfd with F_SEAL_SHRINK, non-empty, at most max_bytes) and maps it. The fd
 * is closed in every case. NULL with *code and msg on failure. */
struct region *region_map(int fd, uint32_t id, uint64_t max_bytes, int *code, char *msg, size_t len);
/* A region over device memory the engine exported (handle on device dev, size bytes). NULL when
 * out of memory (the caller gives the handle back). */
struct region *region_device(struct db_engine *e, int dev, void *handle, uint32_t id, uint64_t size);
void region_ref(struct region *r);
void region_unref(struct region *r); /* unmaps (or gives the device memory back) at zero; any thread */

/* A client's regions, by id. Loop thread only. */
struct region_table {
    struct region **items;
    size_t count, cap;
    uint32_t next_id;
};

struct region *region_table_find(const struct region_table *t, uint32_t id);
int region_table_add(struct region_table *t, struct region *r); /* takes the reference */
/* Both drop the table's reference and mark the regions gone (struct region's host); the caller
 * then asks the engine to sweep (db_engine_sweep) so an idle device lets go of them at once. */
int region_table_remove(struct region_table *t, uint32_t id);
void region_table_clear(struct region_table *t);

/* The bytes [offset, offset + bytes) of r, if they lie inside it (checked without overflow). */
static inline int region_contains(const struct region *r, uint64_t offset, uint64_t bytes)
{
    return offset <= r->size && bytes <= r->size - offset;
}

#endif
