/* fuzz_request: one frame body (JSON) through the daemon's parsing and validation. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t len);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t len)
{
    fuzz_request((const char *)data, len);
    return 0;
}
