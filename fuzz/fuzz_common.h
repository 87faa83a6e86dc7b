/* fuzz_common.h: the daemon's request path without a socket: JSON, envelope, fields, replies.
 * Every reply the path builds must be strict JSON text (RFC 8259, valid UTF-8): checked here by
 * a validator of its own, not by the parser under test. */
#ifndef DROPBLOCK_FUZZ_COMMON_H
#define DROPBLOCK_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

/* ---- a strict RFC 8259 validator (no extensions, no duplicate-key check: replies have none) */
struct fz_json {
    const unsigned char *s, *end;
    int depth;
};

static void fz_ws(struct fz_json *j)
{
    while (j->s < j->end && (*j->s == ' ' || *j->s == '\t' || *j->s == '\n' || *j->s == '\r')) j->s++;
}

static int fz_lit(struct fz_json *j, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(j->end - j->s) < n || memcmp(j->s, w, n)) return 0;
    j->s += n;
    return 1;
}

static int fz_hex(unsigned c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static int fz_string(struct fz_json *j)
{
    if (j->s >= j->end || *j->s++ != '"') return 0;
    while (j->s < j->end) {
        unsigned c = *j->s++;
        if (c == '"') return 1;
        if (c < 0x20) return 0;
        if (c == '\\') {
            if (j->s >= j->end) return 0;
            c = *j->s++;
            if (c == 'u') {
                for (int i = 0; i < 4; i++)
                    if (j->s >= j->end || !fz_hex(*j->s++)) return 0;
            } else if (!strchr("\"\\/bfnrt", (int)c) || !c) {
                return 0;
            }
            continue;
        }
        if (c < 0x80) continue;
        /* UTF-8, RFC 3629 */
        unsigned lo = 0x80, hi = 0xBF, k;
        if (c >= 0xC2 && c <= 0xDF) k = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            k = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            k = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else return 0;
        if ((size_t)(j->end - j->s) < k || j->s[0] < lo || j->s[0] > hi) return 0;
        for (unsigned i = 1; i < k; i++)
            if ((j->s[i] & 0xC0) != 0x80) return 0;
        j->s += k;
    }
    return 0;
}

static int fz_digits(struct fz_json *j)
{
    const unsigned char *b = j->s;
    while (j->s < j->end && *j->s >= '0' && *j->s <= '9') j->s++;
    return j->s > b;
}

static int fz_number(struct fz_json *j)
{
    if (j->s < j->end && *j->s == '-') j->s++;
    if (j->s < j->end && *j->s == '0') j->s++;
    else if (!fz_digits(j)) return 0;
    if (j->s < j->end && *j->s == '.') {
        j->s++;
        if (!fz_digits(j)) return 0;
    }
    if (j->s < j->end && (*j->s == 'e' || *j->s == 'E')) {
        j->s++;
        if (j->s < j->end && (*j->s == '+' || *j->s == '-')) j->s++;
        if (!fz_digits(j)) return 0;
    }
    return 1;
}

static int fz_value(struct fz_json *j)
{
    fz_ws(j);
    if (j->s >= j->end || ++j->depth > 64) return 0;
    int ok = 0;
    unsigned c = *j->s;
    if (c == '{' || c == '[') {
        j->s++;
        fz_ws(j);
        if (j->s < j->end && *j->s == (c == '{' ? '}' : ']')) {
            j->s++;
            ok = 1;
        } else
            for (;;) {
                if (c == '{') {
                    fz_ws(j);
                    if (!fz_string(j)) break;
                    fz_ws(j);
                    if (j->s >= j->end || *j->s++ != ':') break;
                }
                if (!fz_value(j)) break;
                fz_ws(j);
                if (j->s < j->end && *j->s == ',') {
                    j->s++;
                    continue;
                }
                ok = j->s < j->end && *j->s++ == (c == '{' ? '}' : ']');
                break;
            }
    } else if (c == '"') ok = fz_string(j);
    else if (c == 't') ok = fz_lit(j, "true");
    else if (c == 'f') ok = fz_lit(j, "false");
    else if (c == 'n') ok = fz_lit(j, "null");
    else ok = fz_number(j);
    j->depth--;
    return ok;
}

/* Aborts unless the frame is a 4-byte length and exactly one strict JSON object. */
static void fz_check_reply(const char *frame, size_t flen)
{
    if (!frame) return; /* out of memory */
    const unsigned char *f = (const unsigned char *)frame;
    if (flen < 4) abort();
    size_t n = (size_t)f[0] | (size_t)f[1] << 8 | (size_t)f[2] << 16 | (size_t)f[3] << 24;
    if (n != flen - 4 || n > PROTO_MAX_FRAME) abort();
    struct fz_json j = {f + 4, f + flen, 0};
    fz_ws(&j);
    if (j.s >= j.end || *j.s != '{' || !fz_value(&j)) abort();
    fz_ws(&j);
    if (j.s != j.end) abort();
}

static void fuzz_reply(cJSON *reply)
{
    size_t flen = 0;
    char *f = proto_frame(reply, &flen);
    fz_check_reply(f, flen);
    free(f);
}

static void fuzz_request(const char *data, size_t len)
{
    char msg[256];
    cJSON *req = NULL;
    const cJSON *id = NULL;
    const char *op = NULL;
    /* the log's escaping of what a client sent: one line of valid UTF-8, quoted */
    char q[128];
    size_t ql = proto_quote(q, sizeof q, data, len);
    if (ql >= sizeof q || q[0] != '"' || q[ql - 1] != '"' || !proto_utf8_valid(q, ql, NULL)) abort();
    for (size_t i = 0; i < ql; i++)
        if ((unsigned char)q[i] < 0x20 || q[i] == 0x7F) abort();
    int rc = proto_open_request(data, len, &req, &id, &op, msg, sizeof msg);
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
                /* semaphores named: ids from 1, a signal above 0, a wait's timeout an int */
                if ((job.wait.present && !job.wait.semaphore) ||
                    (job.signal.present && (!job.signal.semaphore || !job.signal.value)) ||
                    (job.wait.has_timeout && job.wait.timeout_ms > INT32_MAX))
                    abort();
            }
        } else if (!strcmp(op, "region.alloc")) {
            char device[64];
            rc = proto_parse_alloc(req, device, sizeof device, &v, msg, sizeof msg);
            if (!rc && (v == 0 || strlen(device) >= sizeof device)) abort();
        } else if (!strcmp(op, "semaphore.create")) {
            char device[64];
            int exported = -1;
            rc = proto_parse_semaphore_create(req, device, sizeof device, &exported, msg, sizeof msg);
            if (!rc && (exported < 0 || exported > 1 || strlen(device) >= sizeof device)) abort();
        } else if (!strncmp(op, "semaphore.", 10)) {
            uint32_t sem = 0;
            rc = proto_parse_semaphore_ref(req, &sem, !strcmp(op, "semaphore.signal") ? &v : NULL, msg, sizeof msg);
            if (!rc && !sem) abort();
        } else if (!strcmp(op, "region.unregister")) {
            const cJSON *r = cJSON_GetObjectItemCaseSensitive(req, "region");
            if (r) rc = proto_get_u64(r, "region", &v, msg, sizeof msg);
        } else if (strcmp(op, "hello") && strcmp(op, "devices") && strcmp(op, "status") && strcmp(op, "shutdown") &&
                   strcmp(op, "region.register")) {
            /* the daemon's unknown-op message quotes the op, cut to 40 bytes */
            snprintf(msg, sizeof msg, "op \"%.40s\": unknown", op);
            rc = DROPBLOCK_ENOTFOUND;
        }
    }
    fuzz_reply(rc ? proto_error(id, rc, msg) : proto_reply(id, 1));
    cJSON_Delete(req);
}

#endif
