/* protocol.h: wire protocol v1 (docs/protocol.md): frames, field parsing with errors that
 * name the field, and replies. Pure functions over cJSON: no sockets here. */
#ifndef DROPBLOCK_PROTO_PROTOCOL_H
#define DROPBLOCK_PROTO_PROTOCOL_H

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

/* a job's "wait" or "signal": {"semaphore": S, "value": V} (wait: and "timeout_ms") */
struct proto_sync {
    int present;
    uint32_t semaphore;
    uint64_t value;
    int has_timeout;
    uint64_t timeout_ms;
};

struct proto_job {
    dropblock_params p;
    struct proto_tensor input, output, mask;
    char device[64];
    struct proto_sync wait, signal;
};

/* region.alloc's request: "device" (an id or "auto", the default) into device, "bytes" (at least
 * 1) into *bytes; 0, or DROPBLOCK_EINVAL with msg naming the field. */
int proto_parse_alloc(const cJSON *req, char *device, size_t dlen, uint64_t *bytes, char *msg, size_t len);

/* semaphore.create's request: "device" (an id or "auto", the default), "export" (a boolean, true
 * when absent); 0, or DROPBLOCK_EINVAL with msg naming the field. */
int proto_parse_semaphore_create(const cJSON *req, char *device, size_t dlen, int *exported, char *msg, size_t len);
/* The "semaphore" field of semaphore.signal, .value and .free (and "value", where value is not
 * NULL: semaphore.signal's, at least 1). */
int proto_parse_semaphore_ref(const cJSON *req, uint32_t *sem, uint64_t *value, char *msg, size_t len);

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

/* The first steps of every request (docs/protocol.md, "Frames"): the len bytes at data must be
 * exactly one JSON value (nothing but whitespace after it), every string in it (keys too) valid
 * UTF-8 without NUL (raw or \u0000) or raw control bytes, no key twice in one object (at any
 * depth), and the value a request envelope (proto_check_envelope). Returns DROPBLOCK_OK with
 * *req the request and *op its op, or an error code with a message naming the problem (the byte
 * offset, the key). Either way *id is the id to echo in the reply (NULL: null, when there is no
 * acceptable id or the problem may lie in the id itself), and *req, where not NULL, is the
 * caller's to free (*id and *op point into it). */
int proto_open_request(const char *data, size_t len, cJSON **req, const cJSON **id, const char **op, char *msg,
                       size_t mlen);

/* The request's id when it is one protocol v1 accepts (an integer in [0, 2^53) or a string of
 * at most PROTO_MAX_ID bytes), else NULL. */
const cJSON *proto_echo_id(const cJSON *req);

/* Whether the n bytes at s are valid UTF-8 (RFC 3629: no overlong forms, surrogates or code
 * points above U+10FFFF); where not, *bad (if not NULL) gets the offset of the first bad byte. */
int proto_utf8_valid(const char *s, size_t n, size_t *bad);

/* The one escaping helper for client-supplied text in the log: s (n bytes) as a double-quoted
 * JSON-style string in out (cap >= 8 bytes, NUL-terminated): '"' and '\' escaped, control bytes
 * (C0, DEL, C1, U+2028, U+2029) as \n, \t, \uXXXX..., a byte that is not valid UTF-8 as \xNN;
 * text that does not fit ends in ..." . The result is one line of valid UTF-8. Returns its length. */
size_t proto_quote(char *out, size_t cap, const char *s, size_t n);

/* Parses a dropblock2d request into params, tensor references and the device: a 4-element shape
 * (N, C, H, W) is DropBlock2D, a 5-element one (N, C, D, H, W) DropBlock3D (p.depth = D, the block
 * an integer cube or [bd, bh, bw], the layout NCDHW or NDHWC); docs/protocol.md. */
int proto_parse_job(const cJSON *req, struct proto_job *job, char *msg, size_t len);

/* Replies: a new object {"v":1,"id":id}, the caller adds fields; id may be NULL (null). The
 * message of proto_error is made valid UTF-8 (a byte that is not becomes '?': a message cut in
 * the middle of a character), so every reply is valid JSON text. */
cJSON *proto_reply(const cJSON *id, int ok);
cJSON *proto_error(const cJSON *id, int code, const char *message);
void proto_add_u64(cJSON *obj, const char *name, uint64_t v);

/* Serialises obj (and frees it) into a frame: 4-byte little-endian length + JSON. */
char *proto_frame(cJSON *obj, size_t *len);

cJSON *proto_device_json(const dropblock_device_info *d);

/* Every job's path, written directly instead of through a cJSON tree (the same fields, in the
 * same order and the same bytes as cJSON would print them): */
/* The dropblock2d request of docs/protocol.md for the tensors at (rid[i], off[i]) (input,
 * output, then the mask where has_mask), as JSON text without its closing brace: the sender
 * appends ",\"id\":N}". A malloc'd string; NULL without memory. */
char *proto_write_job_request(const dropblock_params *p, const uint32_t rid[3], const uint64_t off[3], int has_mask,
                              const char *device);
/* A job's success reply, as a frame (4-byte little-endian length + JSON) in frame (cap bytes):
 * the JSON proto_reply and proto_add_u64 would give for id_json (the request's id as JSON text),
 * res's kept, total, scale_bits and timings, queue_us and the device id (the engine's own: not
 * escaped). Returns the frame's length, or 0 when it does not fit in cap. */
size_t proto_write_job_reply(char *frame, size_t cap, const char *id_json, const dropblock_result *res,
                             uint64_t queue_us, const char *device);

#endif
