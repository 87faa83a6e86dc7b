/* fuzz_common.h: the daemon's request path without a socket: JSON, envelope, fields, replies. */
#ifndef DROPBLOCK_FUZZ_COMMON_H
#define DROPBLOCK_FUZZ_COMMON_H

#include <stdlib.h>
#include <string.h>

#include "protocol.h"

static void fuzz_request(const char *data, size_t len)
{
    char msg[256];
    cJSON *req = cJSON_ParseWithLength(data, len);
    if (!req) {
        size_t flen;
        free(proto_frame(proto_error(NULL, DROPBLOCK_EINVAL, "invalid JSON"), &flen));
        return;
    }
    const char *op = NULL;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(req, "id");
    int rc = proto_check_envelope(req, &op, msg, sizeof msg);
    if (!rc) {
        uint64_t v;
        const cJSON *fds = cJSON_GetObjectItemCaseSensitive(req, "fds");
        if (fds) proto_get_u64(fds, "fds", &v, msg, sizeof msg);
        if (!strcmp(op, "dropblock2d")) {
            struct proto_job job;
            rc = proto_parse_job(req, &job, msg, sizeof msg);
            if (!rc) {
                /* the sizes the daemon derives next must be consistent with validation */
                uint64_t n = dropblock_numel(&job.p);
                if (n == 0 || n > DROPBLOCK_MAX_ELEMENTS || dropblock_tensor_bytes(&job.p) < n) abort();
            }
        } else if (!strcmp(op, "region.unregister")) {
            const cJSON *r = cJSON_GetObjectItemCaseSensitive(req, "region");
            if (r) rc = proto_get_u64(r, "region", &v, msg, sizeof msg);
        }
    }
    size_t flen;
    cJSON *reply = rc ? proto_error(id, rc, msg) : proto_reply(id, 1);
    free(proto_frame(reply, &flen));
    cJSON_Delete(req);
}

#endif
