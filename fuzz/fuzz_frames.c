/* fuzz_frames: a byte stream cut into frames as the daemon's reader does, each body through the
 * request path; the reader must never read past the bytes it has. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t len);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t len)
{
    size_t pos = 0;
    uint32_t flen = 0;
    int st;
    while ((st = proto_frame_peek(data + pos, len - pos, &flen)) == PROTO_FRAME_OK) {
        if (flen > len - pos - 4) abort();
        fuzz_request((const char *)data + pos + 4, flen);
        pos += 4 + (size_t)flen;
    }
    if (st == PROTO_FRAME_BAD && (flen != 0 && flen <= PROTO_MAX_FRAME)) abort();
    return 0;
}
