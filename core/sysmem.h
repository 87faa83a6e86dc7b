/* sysmem.h: what this machine can give a tensor: memory available now and physical memory, read
 * from the kernel (and the memory cgroup a container runs in), and byte counts written for the
 * messages that refuse a size. */
#ifndef DROPBLOCK_CORE_SYSMEM_H
#define DROPBLOCK_CORE_SYSMEM_H

#include <stddef.h>
#include <stdint.h>

/* Bytes that can be allocated now without swapping or the OOM killer: /proc/meminfo's
 * MemAvailable, lowered to the memory cgroup's headroom (limit - usage, cgroup v2 or v1) where a
 * limit is set. $DROPBLOCK_MEM_AVAILABLE (bytes) overrides it, for tests. UINT64_MAX when
 * nothing can be read (no /proc: no check). */
uint64_t db_mem_available(void);

/* Physical memory (MemTotal), lowered to the memory cgroup's limit; UINT64_MAX when unknown. */
uint64_t db_mem_total(void);

/* "4.0 TB (4000000000000 bytes)": decimal units beside the exact count, for error messages. */
void db_fmt_bytes(char *buf, size_t len, uint64_t bytes);

/* The refusal of a size that cannot fit: 0 when bytes fit in what is available now, else
 * DROPBLOCK_EEXHAUSTED with msg "<what>: <size> needs more memory than this machine has
 * available (<avail> of <total>)". */
int db_mem_check(uint64_t bytes, const char *what, char *msg, size_t len);

#endif
