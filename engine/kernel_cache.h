/* kernel_cache.h: the on-disk kernel cache both GPU backends use (OpenCL program binaries,
 * Vulkan pipeline caches), one file an entry under the daemon's --cache-dir.
 *
 * An entry is a 40-byte header then the payload: magic (8 bytes, one per API), format version
 * u32 (DB_KCACHE_VERSION), u32 0, the caller's key u64, payload length u64, FNV-1a-64 of the
 * payload u64, in host byte order. A load checks every field and the file's size, and answers
 * NULL on any mismatch: the caller rebuilds, and its store replaces the entry. A store writes a
 * temporary file in the directory (mkstemp, so 0600), fsyncs it and renames it into place, so a
 * reader sees a whole entry or none. Directories are created 0700: cached kernels are code the
 * driver will run (docs/security.md). What goes into the key and the file name is each backend's
 * own. */
#ifndef DROPBLOCK_ENGINE_KERNEL_CACHE_H
#define DROPBLOCK_ENGINE_KERNEL_CACHE_H

#include <stddef.h>
#include <stdint.h>

/* 2: the one header for both APIs (OpenCL's entries were version 1, Vulkan's had none) */
#define DB_KCACHE_VERSION 2u
#define DB_KCACHE_MAX_PAYLOAD (UINT64_C(256) << 20)

/* FNV-1a-64, to chain over the parts of a key (start from DB_KCACHE_HASH_INIT) */
#define DB_KCACHE_HASH_INIT UINT64_C(0xcbf29ce484222325)
uint64_t db_kcache_hash(uint64_t h, const void *p, size_t n);

/* mkdir -p with mode 0700 for the parts it creates; 0 when dir is a directory afterwards */
int db_kcache_mkdir_p(const char *dir);

/* The payload of the entry at path, malloc'd with its length in *len, or NULL when the file is
 * missing, not a regular file, or not exactly an entry of magic (8 bytes) and key as written. */
void *db_kcache_load(const char *path, const char *magic, uint64_t key, size_t *len);

/* Best effort (a cache that cannot be written only costs a rebuild next time): creates dir if
 * needed and atomically replaces path, which lies in dir, with an entry of magic, key and data. */
void db_kcache_store(const char *dir, const char *path, const char *magic, uint64_t key, const void *data, size_t len);

#endif
