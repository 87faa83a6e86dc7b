/* kernel_cache.c: checked load and atomic store of kernel cache entries (kernel_cache.h). */
#include "kernel_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HDR 40

uint64_t db_kcache_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

int db_kcache_mkdir_p(const char *dir)
{
    char p[1024];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof p) return -1;
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0700) && errno != EEXIST) return -1;
        p[i] = c;
    }
    struct stat st;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

/* Reads (wr 0) or writes (wr 1) all n bytes, through short counts and EINTR; 0 on success. */
static int io_full(int fd, void *buf, size_t n, int wr)
{
    char *b = buf;
    while (n) {
        ssize_t r = wr ? write(fd, b, n) : read(fd, b, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

void *db_kcache_load(const char *path, const char *magic, uint64_t key, size_t *len)
{
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    unsigned char *data = NULL;
    unsigned char h[HDR];
    struct stat st;
    uint32_t ver, zero;
    uint64_t k, l, sum;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || io_full(fd, h, sizeof h, 0)) goto bad;
    memcpy(&ver, h + 8, 4);
    memcpy(&zero, h + 12, 4);
    memcpy(&k, h + 16, 8);
    memcpy(&l, h + 24, 8);
    memcpy(&sum, h + 32, 8);
    if (memcmp(h, magic, 8) || ver != DB_KCACHE_VERSION || zero || k != key || l == 0 || l > DB_KCACHE_MAX_PAYLOAD ||
        (uint64_t)st.st_size != HDR + l)
        goto bad;
    if (!(data = malloc((size_t)l)) || io_full(fd, data, (size_t)l, 0) ||
        db_kcache_hash(DB_KCACHE_HASH_INIT, data, (size_t)l) != sum)
        goto bad;
    close(fd);
    *len = (size_t)l;
    return data;
bad:
    free(data);
    close(fd);
    return NULL;
}

void db_kcache_store(const char *dir, const char *path, const char *magic, uint64_t key, const void *data, size_t len)
{
    if (len == 0 || len > DB_KCACHE_MAX_PAYLOAD || db_kcache_mkdir_p(dir)) return;
    char tmp[1100];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/.kcache-XXXXXX", dir) >= sizeof tmp) return;
    int fd = mkstemp(tmp);
    if (fd < 0) return;
    unsigned char h[HDR] = {0};
    uint32_t ver = DB_KCACHE_VERSION;
    uint64_t l = len, sum = db_kcache_hash(DB_KCACHE_HASH_INIT, data, len);
    memcpy(h, magic, 8);
    memcpy(h + 8, &ver, 4);
    memcpy(h + 16, &key, 8);
    memcpy(h + 24, &l, 8);
    memcpy(h + 32, &sum, 8);
    int ok = !io_full(fd, h, sizeof h, 1) && !io_full(fd, (void *)data, len, 1) && !fsync(fd);
    if (close(fd)) ok = 0;
    if (!ok || rename(tmp, path)) unlink(tmp);
}
