/* fuzz_npy: .npy images through the header parser and the whole-file reader (via a memfd). */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <stdio.h>

#include "npy.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t len);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t len)
{
    char msg[256];
    int dtype, ndim;
    uint64_t shape[DB_NPY_MAX_DIMS], off, bytes;
    for (int want = -1; want <= DROPBLOCK_BF16; want++)
        if (db_npy_parse_header(data, len, want, &dtype, shape, &ndim, &off, &bytes, msg, sizeof msg) == DROPBLOCK_OK &&
            (off > len || ndim > DB_NPY_MAX_DIMS))
            abort();
    int fd = memfd_create("npy", MFD_CLOEXEC);
    if (fd < 0) return 0;
    if (write(fd, data, len) == (ssize_t)len) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        void *buf = NULL;
        uint64_t nbytes = 0;
        if (db_npy_read(path, -1, &dtype, shape, &ndim, &buf, &nbytes, msg, sizeof msg) == DROPBLOCK_OK &&
            nbytes != len - (size_t)off)
            abort();
        free(buf);
    }
    close(fd);
    return 0;
}
