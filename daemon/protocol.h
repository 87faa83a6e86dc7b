/* protocol.h: wire protocol v1 (docs/protocol.md): frames, field parsing with errors that
 * name the field, and replies. Pure functions over cJSON: no sockets here. */
#ifndef DROPBLOCK_DAEMON_PROTOCOL_H
#define DROPBLOCK_DAEMON_PROTOCOL_H

#include <cjson/cJSON.h>
#include <dropblock/dropblock.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_VERSION 1
#define PROTO_MAX_FRAME 65536u
#define PROTO_MAX_ID 64

struct proto_tensor {
    int present;
    uint32_t region;
    uint64_t offset;
};

struct proto_job {
    dropblock_params p;
    struct proto_tensor input, output, mask;
    char device[64];
};

/* Frames: a u32 little-endian length, then that many bytes of JSON. */
enum { PROTO_FRAME_OK, PROTO_FRAME_MORE, PROTO_FRAME_BAD };
/* Looks at the len bytes at buf: PROTO_FRAME_MORE when they do not hold a whole frame yet,
 * PROTO_FRAME_BAD when the length prefix is 0 or above PROTO_MAX_FRAME (it cannot be skipped:
 * the stream is lost), else PROTO_FRAME_OK with the body at buf + 4. *flen gets the length
 * prefix whenever 4 bytes are there. */
int proto_frame_peek(const unsigned char *buf, size_t len, uint32_t *flen);

/* An unsigned integer field: a JSON number that is an integer below 2^53, or a decimal string
 * up to 2^64 - 1. */
int proto_get_u64(const cJSON *it, const char *field, uint64_t *out, char *msg, size_t len);

/* Checks v, op and id of a request. *op receives the op name. */
int proto_check_envelope(const cJSON *req, const char **op, char *msg, size_t len);

/* Parses a dropblock2d request into params, tensor references and the device. */
int proto_parse_job(const cJSON *req, struct proto_job *job, char *msg, size_t len);

/* Replies: a new object {"v":1,"id":id}, the caller adds fields; id may be NULL (null). */
cJSON *proto_reply(const cJSON *id, int ok);
cJSON *proto_error(const cJSON *id, int code, const char *message);
void proto_add_u64(cJSON *obj, const char *name, uint64_t v);

/* Serialises obj (and frees it) into a frame: 4-byte little-endian length + JSON. */
char *proto_frame(cJSON *obj, size_t *len);

cJSON *proto_device_json(const dropblock_device_info *d);

#endif
