/* regions.c: memfd regions: validation, mapping, reference counts, per-client tables. */
#include "regions.h"

#include <dropblock/dropblock.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "msg.h"
#include "engine.h"
#include "plan.h"

static const char *kind_of(mode_t m)
{
    if (S_ISFIFO(m)) return "a pipe";
    if (S_ISSOCK(m)) return "a socket";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISDIR(m)) return "a directory";
    return "not a regular file";
}

static struct region *of_host(struct db_host_region *h)
{
    return (struct region *)((char *)h - offsetof(struct region, host));
}
static void host_ref(struct db_host_region *h) { region_ref(of_host(h)); }
static void host_unref(struct db_host_region *h) { region_unref(of_host(h)); }

struct region *region_map(int fd, uint32_t id, uint64_t max_bytes, int *code, char *msg, size_t len)
{
    struct stat st;
    struct region *r = NULL;
    *code = DROPBLOCK_EINVAL;
    if (fstat(fd, &st) < 0) {
        db_msg(msg, len, "region.register: fstat of the descriptor failed: %s", strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        db_msg(msg, len, "region.register: the descriptor is %s; send a memfd (memfd_create with MFD_ALLOW_SEALING)",
               kind_of(st.st_mode));
        goto out;
    }
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) {
        db_msg(msg, len,
               "region.register: the descriptor cannot be sealed (not a memfd created with "
               "MFD_ALLOW_SEALING): %s",
               strerror(errno));
        goto out;
    }
    if (!(seals & F_SEAL_SHRINK)) {
        db_msg(msg, len,
               "region.register: the memfd is not sealed with F_SEAL_SHRINK; add the seal "
               "(fcntl F_ADD_SEALS) so it can never shrink under the daemon");
        goto out;
    }
    if (st.st_size <= 0) {
        db_msg(msg, len, "region.register: the memfd is empty; size it (ftruncate/posix_fallocate) before sealing");
        goto out;
    }
    if ((uint64_t)st.st_size > max_bytes) {
        *code = DROPBLOCK_EEXHAUSTED;
        db_msg(msg, len, "region.register: %lld bytes exceeds the daemon's region limit of %llu bytes",
               (long long)st.st_size, (unsigned long long)max_bytes);
        goto out;
    }
    int flags = fcntl(fd, F_GETFL);
    int writable = (flags & O_ACCMODE) == O_RDWR && !(seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE));
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        *code = DROPBLOCK_EEXHAUSTED;
        db_msg(msg, len, "region.register: mmap of %lld bytes failed: %s", (long long)st.st_size, strerror(errno));
        goto out;
    }
    r = calloc(1, sizeof *r);
    if (!r) {
        munmap(base, (size_t)st.st_size);
        *code = DROPBLOCK_EEXHAUSTED;
        db_msg(msg, len, "region.register: out of memory");
        goto out;
    }
    atomic_init(&r->refs, 1);
    r->id = id;
    r->base = base;
    r->size = (uint64_t)st.st_size;
    r->writable = writable;
    r->dev = -1;
    r->host.base = base;
    r->host.size = r->size;
    atomic_init(&r->host.gone, 0);
    r->host.ref = host_ref;
    r->host.unref = host_unref;
    *code = DROPBLOCK_OK;
out:
    close(fd);
    return r;
}

struct region *region_device(struct db_engine *e, int dev, void *handle, uint32_t id, uint64_t size)
{
    struct region *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    atomic_init(&r->refs, 1);
    r->id = id;
    r->size = size;
    r->writable = 1;
    r->dev = dev;
    r->export = handle;
    r->engine = e;
    atomic_init(&r->host.gone, 0);
    return r;
}

void region_ref(struct region *r) { atomic_fetch_add(&r->refs, 1); }

void region_unref(struct region *r)
{
    if (r && atomic_fetch_sub(&r->refs, 1) == 1) {
        if (r->dev >= 0) db_engine_export_free(r->engine, r->dev, r->export); /* never waits for a job */
        else munmap(r->base, (size_t)r->size);
        free(r);
    }
}

struct region *region_table_find(const struct region_table *t, uint32_t id)
{
    for (size_t i = 0; i < t->count; i++)
        if (t->items[i]->id == id) return t->items[i];
    return NULL;
}

int region_table_add(struct region_table *t, struct region *r)
{
    if (t->count == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        struct region **n = realloc(t->items, cap * sizeof *n);
        if (!n) return DROPBLOCK_EEXHAUSTED;
        t->items = n;
        t->cap = cap;
    }
    t->items[t->count++] = r;
    return DROPBLOCK_OK;
}

int region_table_remove(struct region_table *t, uint32_t id)
{
    for (size_t i = 0; i < t->count; i++)
        if (t->items[i]->id == id) {
            atomic_store(&t->items[i]->host.gone, 1);
            region_unref(t->items[i]);
            t->items[i] = t->items[--t->count];
            return DROPBLOCK_OK;
        }
    return DROPBLOCK_ENOTFOUND;
}

void region_table_clear(struct region_table *t)
{
    for (size_t i = 0; i < t->count; i++) {
        atomic_store(&t->items[i]->host.gone, 1);
        region_unref(t->items[i]);
    }
    free(t->items);
    memset(t, 0, sizeof *t);
}
