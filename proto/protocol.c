/* protocol.c: parsing and building protocol v1 messages. */
#include "protocol.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "msg.h"
#include "plan.h"

int proto_frame_peek(const unsigned char *buf, size_t len, uint32_t *flen)
{
    if (len < 4) return PROTO_FRAME_MORE;
    *flen = (uint32_t)buf[0] | (uint32_t)buf[1] << 8 | (uint32_t)buf[2] << 16 | (uint32_t)buf[3] << 24;
    if (*flen == 0 || *flen > PROTO_MAX_FRAME) return PROTO_FRAME_BAD;
    return len - 4 < *flen ? PROTO_FRAME_MORE : PROTO_FRAME_OK;
}

int proto_get_u64(const cJSON *it, const char *field, uint64_t *out, char *msg, size_t len)
{
    if (cJSON_IsNumber(it)) {
        double d = it->valuedouble;
        if (!(d >= 0) || d >= 9007199254740992.0 || d != floor(d)) {
            db_msg(msg, len, "%s: %g is not an unsigned integer below 2^53 (send larger values as decimal strings)",
                   field, d);
            return DROPBLOCK_EINVAL;
        }
        *out = (uint64_t)d;
        return DROPBLOCK_OK;
    }
    if (cJSON_IsString(it)) {
        const char *s = it->valuestring;
        uint64_t v = 0;
        size_t n = strlen(s);
        if (n == 0 || n > 20) goto bad_string;
        for (size_t i = 0; i < n; i++) {
            if (s[i] < '0' || s[i] > '9') goto bad_string;
            uint64_t d = (uint64_t)(s[i] - '0');
            if (v > (UINT64_MAX - d) / 10) {
                db_msg(msg, len, "%s: \"%s\" exceeds 2^64 - 1", field, s);
                return DROPBLOCK_EINVAL;
            }
            v = v * 10 + d;
        }
        *out = v;
        return DROPBLOCK_OK;
    bad_string:
        db_msg(msg, len, "%s: \"%.40s\" is not a decimal unsigned integer", field, s);
        return DROPBLOCK_EINVAL;
    }
    db_msg(msg, len, "%s: must be an unsigned integer (a number below 2^53 or a decimal string)", field);
    return DROPBLOCK_EINVAL;
}

int proto_check_envelope(const cJSON *req, const char **op, char *msg, size_t len)
{
    if (!cJSON_IsObject(req)) {
        db_msg(msg, len, "a request must be a JSON object");
        return DROPBLOCK_EINVAL;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(req, "id");
    if (!id) {
        db_msg(msg, len, "id: missing (every request carries a client-chosen id)");
        return DROPBLOCK_EINVAL;
    }
    if (cJSON_IsNumber(id)) {
        double d = id->valuedouble;
        if (!(d >= 0) || d >= 9007199254740992.0 || d != floor(d)) {
            db_msg(msg, len, "id: must be an integer in [0, 2^53) or a string");
            return DROPBLOCK_EINVAL;
        }
    } else if (cJSON_IsString(id)) {
        if (strlen(id->valuestring) > PROTO_MAX_ID) {
            db_msg(msg, len, "id: a string id is at most %d bytes", PROTO_MAX_ID);
            return DROPBLOCK_EINVAL;
        }
    } else {
        db_msg(msg, len, "id: must be an integer in [0, 2^53) or a string");
        return DROPBLOCK_EINVAL;
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, "v");
    if (!cJSON_IsNumber(v) || v->valuedouble != PROTO_VERSION) {
        db_msg(msg, len, "v: protocol version %s is not supported (this daemon speaks v1)",
               cJSON_IsNumber(v) ? "other than 1" : "missing or not a number,");
        return DROPBLOCK_EINVAL;
    }
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(req, "op");
    if (!cJSON_IsString(o)) {
        db_msg(msg, len, "op: missing or not a string");
        return DROPBLOCK_EINVAL;
    }
    *op = o->valuestring;
    return DROPBLOCK_OK;
}

/* ---------------------------------------------------------------- wire hygiene */
/* The length of the UTF-8 sequence at s (n bytes left): 1 to 4, or 0 when it is not valid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    size_t k;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) k = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80;
        hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF;
    } else return 0;
    if (n < k || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < k; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return k;
}

int proto_utf8_valid(const char *s, size_t n, size_t *bad)
{
    const unsigned char *b = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(b + i, n - i);
        if (!k) {
            if (bad) *bad = i;
            return 0;
        }
        i += k;
    }
    return 1;
}

/* The longest prefix of s, at most max bytes, that does not cut a UTF-8 sequence. */
static int utf8_cut(const char *s, size_t max)
{
    const unsigned char *b = (const unsigned char *)s;
    size_t n = strlen(s), i = 0;
    while (i < n) {
        size_t k = utf8_seq(b + i, n - i);
        if (!k) k = 1;
        if (i + k > max) break;
        i += k;
    }
    return (int)i;
}

size_t proto_quote(char *out, size_t cap, const char *s, size_t n)
{
    const unsigned char *b = (const unsigned char *)s;
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < n;) {
        char piece[16];
        size_t k = utf8_seq(b + i, n - i), pl;
        /* clang-format off */
        unsigned cp = k == 2 ? (unsigned)(b[i] & 0x1F) << 6 | (b[i + 1] & 0x3F)
                    : k == 3 ? (unsigned)(b[i] & 0x0F) << 12 | (unsigned)(b[i + 1] & 0x3F) << 6 | (b[i + 2] & 0x3F)
                             : b[i];
        if (!k) { pl = (size_t)snprintf(piece, sizeof piece, "\\x%02x", b[i]); k = 1; }
        else if (cp == '"' || cp == '\\') { piece[0] = '\\'; piece[1] = (char)cp; pl = 2; }
        else if (cp == '\n') { memcpy(piece, "\\n", 2); pl = 2; }
        else if (cp == '\r') { memcpy(piece, "\\r", 2); pl = 2; }
        else if (cp == '\t') { memcpy(piece, "\\t", 2); pl = 2; }
        else if (cp < 0x20 || cp == 0x7F || (k == 2 && cp < 0xA0) || (k == 3 && (cp == 0x2028 || cp == 0x2029)))
            pl = (size_t)snprintf(piece, sizeof piece, "\\u%04x", cp);
        else { memcpy(piece, b + i, k); pl = k; }
        /* clang-format on */
        if (o + pl + 5 > cap) { /* room for ..." and the NUL */
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(out + o, piece, pl);
        o += pl;
        i += k;
    }
    out[o++] = '"';
    out[o] = 0;
    return o;
}

const cJSON *proto_echo_id(const cJSON *req)
{
    const cJSON *id = cJSON_IsObject(req) ? cJSON_GetObjectItemCaseSensitive(req, "id") : NULL;
    if (cJSON_IsNumber(id) && id->valuedouble >= 0 && id->valuedouble < 9007199254740992.0 &&
        id->valuedouble == floor(id->valuedouble))
        return id;
    if (cJSON_IsString(id) && strlen(id->valuestring) <= PROTO_MAX_ID) return id;
    return NULL;
}

static int json_ws(unsigned c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Levels of nesting whose keys a message names (deeper ones are elided). */
#define SCAN_DEPTH 16

/* Appends key (raw JSON text, n bytes) to the path in p (cap bytes). */
static void path_add(char *p, size_t cap, const char *key, size_t n)
{
    size_t l = strlen(p);
    if (n > 40) n = 40;
    char k[48];
    memcpy(k, key, n);
    k[n] = 0;
    snprintf(p + l, cap - l, "%s%.*s", l ? "." : "", utf8_cut(k, n), k);
}

/* The strings and the bytes between the tokens of b[start, end), the JSON text cJSON parsed
 * into req (so its tokens are well formed, though cJSON lets through what RFC 8259 forbids):
 * each string valid UTF-8 without NUL or raw control bytes, only JSON whitespace outside
 * strings. The whole text is scanned; the message names the first problem, and *id_bad is set
 * where any bad string is a key of the top-level object or the value of its "id" (the
 * top-level members are followed in req, whose order is the text's, so an "id" key spelled
 * with escapes counts too). */
static int scan_text(const unsigned char *b, size_t start, size_t end, const cJSON *req, int *id_bad, char *msg,
                     size_t len)
{
    size_t key_s[SCAN_DEPTH], key_n[SCAN_DEPTH]; /* the last key seen at each level (0: none) */
    const cJSON *member = NULL;                  /* the top-level member being scanned */
    int depth = 0, rc = DROPBLOCK_OK;
    for (size_t i = start; i < end; i++) {
        unsigned c = b[i];
        if (c == '{' || c == '[') {
            if (depth < SCAN_DEPTH) key_n[depth] = 0;
            depth++;
            continue;
        }
        if (c == '}' || c == ']') {
            depth--;
            continue;
        }
        if (c != '"') {
            if (c < 0x20 && !json_ws(c) && !rc) {
                db_msg(msg, len,
                       "%s 0x%02x outside a string at byte %zu (JSON allows only space, tab, CR and LF "
                       "between tokens)",
                       c ? "a control byte" : "a NUL byte", c, i);
                rc = DROPBLOCK_EINVAL;
            }
            continue;
        }
        const char *problem = NULL;
        char ctl[48];
        size_t j = i + 1, at = 0;
        while (j < end && b[j] != '"') {
            if (b[j] == '\\') {
                if (!problem && j + 5 < end && b[j + 1] == 'u' && !memcmp(b + j + 2, "0000", 4)) {
                    problem = "a NUL character (\\u0000)";
                    at = j;
                }
                j += 2;
                continue;
            }
            size_t k = b[j] < 0x20 ? 0 : utf8_seq(b + j, end - j);
            if (!k && !problem) {
                snprintf(ctl, sizeof ctl, "a raw control byte 0x%02x (escape it as \\u%04x)", b[j], b[j]);
                problem = !b[j] ? "a NUL byte" : b[j] < 0x20 ? ctl : "invalid UTF-8";
                at = j;
            }
            j += k ? k : 1;
        }
        size_t q = j + 1;
        while (q < end && b[q] <= 0x20) q++; /* what cJSON skips between tokens */
        int is_key = q < end && b[q] == ':';
        if (is_key && depth == 1 && cJSON_IsObject(req)) member = member ? member->next : req->child;
        if (problem) {
            if (depth <= 0 || (depth == 1 && (is_key || (member && member->string && !strcmp(member->string, "id")))))
                *id_bad = 1;
            if (!rc) {
                char path[160] = "";
                int levels = is_key ? depth - 1 : depth;
                for (int d = 0; d < levels && d < SCAN_DEPTH; d++)
                    if (key_n[d]) path_add(path, sizeof path, (const char *)b + key_s[d], key_n[d]);
                if (levels > SCAN_DEPTH) path_add(path, sizeof path, "...", 3);
                if (is_key)
                    db_msg(msg, len, "a key %s%s: %s at byte %zu (strings must be valid UTF-8 without NUL)",
                           path[0] ? "in " : "at the top level", path, problem, at);
                else
                    db_msg(msg, len, "%s: %s at byte %zu (strings must be valid UTF-8 without NUL)",
                           path[0] ? path : "a string", problem, at);
                rc = DROPBLOCK_EINVAL;
            }
        }
        if (is_key && depth >= 1 && depth <= SCAN_DEPTH) {
            key_s[depth - 1] = i + 1;
            key_n[depth - 1] = j - i - 1;
        }
        i = j; /* the closing quote */
    }
    return rc;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* The first key that appears twice in one object at or below it: 1 with *dup the key and path
 * the object's place, 0 when none, -1 out of memory. */
static int find_duplicate(const cJSON *it, char *path, size_t cap, const char **dup)
{
    if (!cJSON_IsObject(it) && !cJSON_IsArray(it)) return 0;
    size_t n = 0, plen = strlen(path);
    for (const cJSON *c = it->child; c; c = c->next) n++;
    if (cJSON_IsObject(it) && n > 1) {
        if (n <= 32) {
            for (const cJSON *a = it->child; a; a = a->next)
                for (const cJSON *c = a->next; c; c = c->next)
                    if (!strcmp(a->string, c->string)) {
                        *dup = a->string;
                        return 1;
                    }
        } else {
            const cJSON **keys = malloc(n * sizeof *keys);
            if (!keys) return -1;
            size_t i = 0;
            for (const cJSON *c = it->child; c; c = c->next) keys[i++] = c;
            qsort(keys, n, sizeof *keys, cmp_key);
            for (i = 1; i < n && strcmp(keys[i - 1]->string, keys[i]->string); i++) {}
            *dup = i < n ? keys[i]->string : NULL;
            free(keys);
            if (*dup) return 1;
        }
    }
    size_t idx = 0;
    for (const cJSON *c = it->child; c; c = c->next, idx++) {
        if (!cJSON_IsObject(c) && !cJSON_IsArray(c)) continue;
        if (cJSON_IsObject(it)) {
            path[plen] = 0;
            path_add(path, cap, c->string, strlen(c->string));
        } else {
            snprintf(path + plen, cap - plen, "[%zu]", idx);
        }
        int rc = find_duplicate(c, path, cap, dup);
        if (rc) return rc;
    }
    path[plen] = 0;
    return 0;
}

int proto_open_request(const char *data, size_t len, cJSON **req_out, const cJSON **id, const char **op, char *msg,
                       size_t mlen)
{
    *req_out = NULL;
    *id = NULL;
    *op = NULL;
    const char *end = NULL;
    cJSON *req = cJSON_ParseWithLengthOpts(data, len, &end, 0);
    if (!req) {
        const char *at = cJSON_GetErrorPtr();
        if (at && at >= data && at <= data + len) db_msg(msg, mlen, "invalid JSON near byte %zu", (size_t)(at - data));
        else db_msg(msg, mlen, "invalid JSON");
        return DROPBLOCK_EINVAL;
    }
    *req_out = req;
    const unsigned char *b = (const unsigned char *)data;
    size_t stop = (size_t)(end - data),
           start = len >= 3 && !memcmp(b, "\xEF\xBB\xBF", 3) ? 3 : 0; /* cJSON skips a BOM */
    int id_bad = 0, rc = scan_text(b, start, stop, req, &id_bad, msg, mlen);
    /* an id given twice is not echoed, whatever else is wrong */
    int nid = 0;
    for (const cJSON *c = cJSON_IsObject(req) ? req->child : NULL; c; c = c->next)
        nid += c->string && !strcmp(c->string, "id");
    if (nid > 1) id_bad = 1;
    if (!rc) {
        while (stop < len && json_ws(b[stop])) stop++;
        if (stop < len) {
            db_msg(msg, mlen, "trailing bytes after the JSON value at byte %zu (a frame holds exactly one JSON object)",
                   stop);
            rc = DROPBLOCK_EINVAL;
        }
    }
    if (!rc) {
        char path[160] = "";
        const char *dup = NULL;
        int found = find_duplicate(req, path, sizeof path, &dup);
        if (found < 0) {
            db_msg(msg, mlen, "out of memory checking the request's keys");
            rc = DROPBLOCK_EEXHAUSTED;
        } else if (found) {
            char q[64];
            proto_quote(q, sizeof q, dup, strlen(dup));
            db_msg(msg, mlen, "duplicate key %s %s%s (a key may appear once per object)", q,
                   path[0] ? "in " : "at the top level", path);
            rc = DROPBLOCK_EINVAL;
        }
    }
    if (!rc) rc = proto_check_envelope(req, op, msg, mlen);
    if (!id_bad) *id = proto_echo_id(req);
    return rc;
}

static int get_string_enum(const cJSON *req, const char *field, int (*parse)(const char *), const char *allowed,
                           int *out, char *msg, size_t len)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(req, field);
    if (!it) return DROPBLOCK_OK; /* default stays */
    int v = cJSON_IsString(it) ? parse(it->valuestring) : -1;
    if (v < 0) {
        if (cJSON_IsString(it)) db_msg(msg, len, "%s \"%.32s\": must be %s", field, it->valuestring, allowed);
        else db_msg(msg, len, "%s: must be a string, one of %s", field, allowed);
        return DROPBLOCK_EINVAL;
    }
    *out = v;
    return DROPBLOCK_OK;
}

static int parse_mode(const char *s) { return !strcmp(s, "forward") ? 0 : !strcmp(s, "backward") ? 1 : -1; }

static int get_tensor(const cJSON *req, const char *field, struct proto_tensor *t, char *msg, size_t len)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(req, field);
    t->present = 0;
    if (!it) return DROPBLOCK_OK;
    if (!cJSON_IsObject(it)) {
        db_msg(msg, len, "%s: must be an object {\"region\": R, \"offset\": O}", field);
        return DROPBLOCK_EINVAL;
    }
    char name[64];
    uint64_t region, offset = 0;
    snprintf(name, sizeof name, "%s.region", field);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(it, "region");
    if (!r) {
        db_msg(msg, len, "%s: missing", name);
        return DROPBLOCK_EINVAL;
    }
    if (proto_get_u64(r, name, &region, msg, len)) return DROPBLOCK_EINVAL;
    if (region > UINT32_MAX) {
        db_msg(msg, len, "%s %llu: no such region", name, (unsigned long long)region);
        return DROPBLOCK_ENOTFOUND;
    }
    snprintf(name, sizeof name, "%s.offset", field);
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(it, "offset");
    if (o && proto_get_u64(o, name, &offset, msg, len)) return DROPBLOCK_EINVAL;
    t->present = 1;
    t->region = (uint32_t)region;
    t->offset = offset;
    return DROPBLOCK_OK;
}

/* shape: 4 positive integers (N, C, H, W), or 5 (N, C, D, H, W): DropBlock3D, with p->depth = D
 * (at least 1 here, so that from now on p->depth != 0 says the request is 5-D) */
static int get_shape(const cJSON *req, dropblock_params *p, char *msg, size_t len)
{
    int rc;
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(req, "shape");
    const int n = cJSON_IsArray(shape) ? cJSON_GetArraySize(shape) : 0;
    if (n != 4 && n != 5) {
        if (cJSON_IsArray(shape))
            db_msg(msg, len,
                   "shape: must be an array of 4 integers (N, C, H, W), or of 5 (N, C, D, H, W) for DropBlock3D; "
                   "got %d",
                   n);
        else
            db_msg(msg, len,
                   "shape: must be an array of 4 integers (N, C, H, W), or of 5 (N, C, D, H, W) for DropBlock3D");
        return DROPBLOCK_EINVAL;
    }
    static const char *const dims4[] = {"shape[0] (N)", "shape[1] (C)", "shape[2] (H)", "shape[3] (W)"};
    static const char *const dims5[] = {"shape[0] (N)", "shape[1] (C)", "shape[2] (D)", "shape[3] (H)", "shape[4] (W)"};
    uint64_t *const to4[] = {&p->shape[0], &p->shape[1], &p->shape[2], &p->shape[3]};
    uint64_t *const to5[] = {&p->shape[0], &p->shape[1], &p->depth, &p->shape[2], &p->shape[3]};
    for (int i = 0; i < n; i++) {
        const cJSON *d = cJSON_GetArrayItem(shape, i);
        const char *name = n == 5 ? dims5[i] : dims4[i];
        if (cJSON_IsNumber(d) && d->valuedouble < 0) {
            db_msg(msg, len, "%s %g: must be >= 1", name, d->valuedouble);
            return DROPBLOCK_EINVAL;
        }
        if ((rc = proto_get_u64(d, name, n == 5 ? to5[i] : to4[i], msg, len))) return rc;
    }
    if (n == 5 && p->depth == 0) { /* the other dimensions are validate's: the same words */
        db_msg(msg, len, "shape D is 0: each dimension must be >= 1");
        return DROPBLOCK_EINVAL;
    }
    return DROPBLOCK_OK;
}

/* block: an integer (a square, or a cube with a 5-D shape), [bh, bw], or with a 5-D shape
 * [bd, bh, bw]; get_shape has run */
static int get_block(const cJSON *req, dropblock_params *p, char *msg, size_t len)
{
    int rc;
    const int three = p->depth != 0;
    const cJSON *block = cJSON_GetObjectItemCaseSensitive(req, "block");
    if (!block) {
        db_msg(msg, len, "block: missing (%s)",
               three ? "an integer (a cube) or [bd, bh, bw] with a 5-element shape" : "an integer or [bh, bw]");
        return DROPBLOCK_EINVAL;
    }
    if (!cJSON_IsArray(block)) {
        if ((rc = proto_get_u64(block, "block", &p->block[0], msg, len))) return rc;
        p->block[1] = p->block[0];
        if (three) p->block_depth = p->block[0];
        return DROPBLOCK_OK;
    }
    const int n = cJSON_GetArraySize(block);
    if (three && n == 2) {
        db_msg(msg, len,
               "block: [bh, bw] goes with a 4-element shape; a 5-element shape (N, C, D, H, W) takes an integer "
               "(a cube) or [bd, bh, bw]");
        return DROPBLOCK_EINVAL;
    }
    if (!three && n == 3) {
        db_msg(msg, len,
               "block: [bd, bh, bw] goes with a 5-element shape (N, C, D, H, W); a 4-element shape takes an "
               "integer or [bh, bw]");
        return DROPBLOCK_EINVAL;
    }
    if (n != (three ? 3 : 2)) {
        db_msg(msg, len, "block: an array must hold %s (got %d elements)", three ? "[bd, bh, bw]" : "[bh, bw]", n);
        return DROPBLOCK_EINVAL;
    }
    int k = 0;
    if (three) {
        if ((rc = proto_get_u64(cJSON_GetArrayItem(block, k++), "block[0] (depth)", &p->block_depth, msg, len)))
            return rc;
        if (p->block_depth == 0) { /* 0 means 1 in dropblock_params: refused here as 0 is anywhere */
            db_msg(msg, len, "block depth 0: must be >= 1");
            return DROPBLOCK_EINVAL;
        }
    }
    if ((rc = proto_get_u64(cJSON_GetArrayItem(block, k), three ? "block[1] (height)" : "block[0] (height)",
                            &p->block[0], msg, len)))
        return rc;
    return proto_get_u64(cJSON_GetArrayItem(block, k + 1), three ? "block[2] (width)" : "block[1] (width)",
                         &p->block[1], msg, len);
}

/* rate, block, seed and stream */
static int get_rate_block_seed(const cJSON *req, dropblock_params *p, char *msg, size_t len)
{
    int rc;
    const cJSON *rate = cJSON_GetObjectItemCaseSensitive(req, "rate");
    if (!cJSON_IsNumber(rate)) {
        db_msg(msg, len, "rate: missing or not a number");
        return DROPBLOCK_EINVAL;
    }
    if (!(rate->valuedouble >= 0.0 && rate->valuedouble <= 1.0)) {
        db_msg(msg, len, "rate %g: must be in [0, 1]", rate->valuedouble);
        return DROPBLOCK_EINVAL;
    }
    p->rate = (float)rate->valuedouble;
    if ((rc = get_block(req, p, msg, len))) return rc;
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(req, "seed");
    if (!seed) {
        db_msg(msg, len, "seed: missing (an unsigned 64-bit integer)");
        return DROPBLOCK_EINVAL;
    }
    if ((rc = proto_get_u64(seed, "seed", &p->seed, msg, len))) return rc;
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(req, "stream");
    if (stream && (rc = proto_get_u64(stream, "stream", &p->stream, msg, len))) return rc;
    const cJSON *position = cJSON_GetObjectItemCaseSensitive(req, "position");
    if (position && (rc = proto_get_u64(position, "position", &p->position, msg, len))) return rc;
    p->has_position = position != NULL;
    return DROPBLOCK_OK;
}

/* layout: NCHW or NHWC with a 4-element shape, NCDHW or NDHWC (the same two orders with D before
 * H) with a 5-element one; the other rank's names are refused naming the right one. get_shape
 * has run. */
static int get_layout(const cJSON *req, dropblock_params *p, char *msg, size_t len)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(req, "layout");
    const int three = p->depth != 0;
    if (!it) return DROPBLOCK_OK; /* NCHW, which is NCDHW for a 5-element shape */
    if (!cJSON_IsString(it)) {
        db_msg(msg, len, "layout: must be a string, %s", three ? "NCDHW or NDHWC" : "NCHW or NHWC");
        return DROPBLOCK_EINVAL;
    }
    const char *s = it->valuestring;
    for (int l = 0; l < 2; l++) {
        const dropblock_layout lo = (dropblock_layout)l;
        if (!strcmp(s, db_layout_name(lo, three))) {
            p->layout = (dropblock_layout)l;
            return DROPBLOCK_OK;
        }
        if (!strcmp(s, db_layout_name(lo, !three))) {
            if (three)
                db_msg(msg, len,
                       "layout \"%s\" goes with a 4-element shape; a 5-element shape (N, C, D, H, W) takes NCDHW "
                       "or NDHWC (%s's order with D before H is %s)",
                       s, s, db_layout_name(lo, 1));
            else
                db_msg(msg, len,
                       "layout \"%s\" goes with a 5-element shape (N, C, D, H, W); a 4-element shape takes NCHW "
                       "or NHWC (%s without D is %s)",
                       s, s, db_layout_name(lo, 0));
            return DROPBLOCK_EINVAL;
        }
    }
    db_msg(msg, len, "layout \"%.32s\": must be %s", s,
           three ? "NCDHW or NDHWC (a 5-element shape)" : "NCHW or NHWC (NCDHW or NDHWC with a 5-element shape)");
    return DROPBLOCK_EINVAL;
}

/* layout, dtype, normalize, mode and compat: optional names, absent ones keep the defaults */
static int get_enums(const cJSON *req, dropblock_params *p, char *msg, size_t len)
{
    int rc, v;
    if ((rc = get_layout(req, p, msg, len))) return rc;
    v = p->dtype;
    if ((rc = get_string_enum(req, "dtype", dropblock_parse_dtype, "f32, f16 or bf16", &v, msg, len))) return rc;
    p->dtype = (dropblock_dtype)v;
    v = p->normalize;
    if ((rc = get_string_enum(req, "normalize", dropblock_parse_normalize, "global, sample or none", &v, msg, len)))
        return rc;
    p->normalize = (dropblock_normalize)v;
    v = p->mode;
    if ((rc = get_string_enum(req, "mode", parse_mode, "forward or backward", &v, msg, len))) return rc;
    p->mode = (dropblock_mode)v;
    v = p->compat;
    if ((rc = get_string_enum(req, "compat", dropblock_parse_compat, "none, keras_cv or keras3", &v, msg, len)))
        return rc;
    p->compat = (dropblock_compat)v;
    return DROPBLOCK_OK;
}

/* share and training: optional */
static int get_share_training(const cJSON *req, dropblock_params *p, char *msg, size_t len)
{
    const cJSON *share = cJSON_GetObjectItemCaseSensitive(req, "share");
    if (share) {
        if (!cJSON_IsArray(share)) {
            db_msg(msg, len, "share: must be an array of \"channels\" and/or \"batch\"");
            return DROPBLOCK_EINVAL;
        }
        const cJSON *s;
        cJSON_ArrayForEach(s, share)
        {
            if (cJSON_IsString(s) && !strcmp(s->valuestring, "channels")) p->share |= DROPBLOCK_SHARE_CHANNELS;
            else if (cJSON_IsString(s) && !strcmp(s->valuestring, "batch")) p->share |= DROPBLOCK_SHARE_BATCH;
            else {
                db_msg(msg, len, "share: entries must be \"channels\" or \"batch\"");
                return DROPBLOCK_EINVAL;
            }
        }
    }
    const cJSON *training = cJSON_GetObjectItemCaseSensitive(req, "training");
    if (training) {
        if (!cJSON_IsBool(training)) {
            db_msg(msg, len, "training: must be true or false");
            return DROPBLOCK_EINVAL;
        }
        p->training = cJSON_IsTrue(training);
    }
    return DROPBLOCK_OK;
}

/* device ("auto" when absent), then the tensors: input required, output defaults to it (in place) */
static int get_device_tensors(const cJSON *req, struct proto_job *job, char *msg, size_t len)
{
    int rc;
    const cJSON *device = cJSON_GetObjectItemCaseSensitive(req, "device");
    snprintf(job->device, sizeof job->device, "auto");
    if (device) {
        if (!cJSON_IsString(device) || strlen(device->valuestring) >= sizeof job->device) {
            db_msg(msg, len, "device: must be \"auto\" or a device id such as \"opencl:0\"");
            return DROPBLOCK_EINVAL;
        }
        snprintf(job->device, sizeof job->device, "%s", device->valuestring);
    }
    if ((rc = get_tensor(req, "input", &job->input, msg, len))) return rc;
    if (!job->input.present) {
        db_msg(msg, len, "input: missing ({\"region\": R, \"offset\": O})");
        return DROPBLOCK_EINVAL;
    }
    if ((rc = get_tensor(req, "output", &job->output, msg, len))) return rc;
    if (!job->output.present) job->output = job->input;
    return get_tensor(req, "mask", &job->mask, msg, len);
}

/* a semaphore id field (1 .. 2^32 - 1) */
static int get_semaphore_id(const cJSON *it, const char *name, uint32_t *out, char *msg, size_t len)
{
    uint64_t v;
    if (!it) {
        db_msg(msg, len, "%s: missing (a semaphore from semaphore.create)", name);
        return DROPBLOCK_EINVAL;
    }
    if (proto_get_u64(it, name, &v, msg, len)) return DROPBLOCK_EINVAL;
    if (v == 0 || v > UINT32_MAX) {
        db_msg(msg, len, "%s %llu: no such semaphore", name, (unsigned long long)v);
        return DROPBLOCK_ENOTFOUND;
    }
    *out = (uint32_t)v;
    return DROPBLOCK_OK;
}

/* "wait" or "signal" of a job (docs/protocol.md, "Ordering with semaphores") */
static int get_sync(const cJSON *req, const char *field, struct proto_sync *out, char *msg, size_t len)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(req, field);
    const int wait = !strcmp(field, "wait");
    out->present = 0;
    if (!it) return DROPBLOCK_OK;
    if (!cJSON_IsObject(it)) {
        db_msg(msg, len, "%s: must be an object {\"semaphore\": S, \"value\": V%s}", field,
               wait ? ", \"timeout_ms\": T" : "");
        return DROPBLOCK_EINVAL;
    }
    char name[32];
    snprintf(name, sizeof name, "%s.semaphore", field);
    int rc = get_semaphore_id(cJSON_GetObjectItemCaseSensitive(it, "semaphore"), name, &out->semaphore, msg, len);
    if (rc) return rc;
    snprintf(name, sizeof name, "%s.value", field);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(it, "value");
    if (!v) {
        db_msg(msg, len, "%s: missing (the value to %s)", name, wait ? "wait for" : "raise the semaphore to");
        return DROPBLOCK_EINVAL;
    }
    if (proto_get_u64(v, name, &out->value, msg, len)) return DROPBLOCK_EINVAL;
    if (!wait && out->value == 0) {
        db_msg(msg, len, "%s: 0; a signal raises the semaphore (which starts at 0) to at least 1", name);
        return DROPBLOCK_EINVAL;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(it, "timeout_ms");
    if (t && !wait) {
        db_msg(msg, len, "signal.timeout_ms: a signal does not wait (timeout_ms belongs to wait)");
        return DROPBLOCK_EINVAL;
    }
    if (t) {
        if (proto_get_u64(t, "wait.timeout_ms", &out->timeout_ms, msg, len)) return DROPBLOCK_EINVAL;
        if (out->timeout_ms > INT32_MAX) {
            db_msg(msg, len, "wait.timeout_ms %llu: at most %d", (unsigned long long)out->timeout_ms, INT32_MAX);
            return DROPBLOCK_EINVAL;
        }
        out->has_timeout = 1;
    }
    out->present = 1;
    return DROPBLOCK_OK;
}

int proto_parse_semaphore_create(const cJSON *req, char *device, size_t dlen, int *exported, char *msg, size_t len)
{
    const cJSON *dv = cJSON_GetObjectItemCaseSensitive(req, "device");
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(req, "export");
    if (dv && (!cJSON_IsString(dv) || strlen(dv->valuestring) >= dlen)) {
        db_msg(msg, len, "device: a device id string (\"vulkan:0\") or \"auto\"");
        return DROPBLOCK_EINVAL;
    }
    snprintf(device, dlen, "%s", dv ? dv->valuestring : "auto");
    if (ex && !cJSON_IsBool(ex)) {
        db_msg(msg, len, "export: must be true (a file descriptor in the reply, the default) or false");
        return DROPBLOCK_EINVAL;
    }
    *exported = !ex || cJSON_IsTrue(ex);
    return DROPBLOCK_OK;
}

int proto_parse_semaphore_ref(const cJSON *req, uint32_t *sem, uint64_t *value, char *msg, size_t len)
{
    int rc = get_semaphore_id(cJSON_GetObjectItemCaseSensitive(req, "semaphore"), "semaphore", sem, msg, len);
    if (rc || !value) return rc;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, "value");
    if (!v) {
        db_msg(msg, len, "value: missing (the value to raise the semaphore to)");
        return DROPBLOCK_EINVAL;
    }
    return proto_get_u64(v, "value", value, msg, len) ? DROPBLOCK_EINVAL : DROPBLOCK_OK;
}

/* the field groups in a fixed order: a request with several errors gets the first one's message */
int proto_parse_job(const cJSON *req, struct proto_job *job, char *msg, size_t len)
{
    memset(job, 0, sizeof *job);
    dropblock_params *p = &job->p;
    dropblock_params_init(p);
    int rc;
    /* the signal first: a request refused for any other field still raises it (the daemon) */
    if ((rc = get_sync(req, "signal", &job->signal, msg, len))) return rc;
    if ((rc = get_sync(req, "wait", &job->wait, msg, len))) return rc;
    if ((rc = get_shape(req, p, msg, len))) return rc;
    if ((rc = get_rate_block_seed(req, p, msg, len))) return rc;
    if ((rc = get_enums(req, p, msg, len))) return rc;
    if ((rc = get_share_training(req, p, msg, len))) return rc;
    if ((rc = get_device_tensors(req, job, msg, len))) return rc;
    if ((rc = dropblock_params_validate(p, msg, len))) return rc;
    struct db_plan pl;
    return db_plan_init(&pl, p, msg, len);
}

cJSON *proto_reply(const cJSON *id, int ok)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "v", PROTO_VERSION);
    cJSON_AddItemToObject(o, "id", id ? cJSON_Duplicate(id, 1) : cJSON_CreateNull());
    cJSON_AddBoolToObject(o, "ok", ok);
    return o;
}

cJSON *proto_error(const cJSON *id, int code, const char *message)
{
    cJSON *o = proto_reply(id, 0);
    if (!o) return NULL;
    cJSON *e = cJSON_AddObjectToObject(o, "error");
    const char *name = dropblock_error_name(code);
    cJSON_AddStringToObject(e, "code", name && code ? name : "internal");
    char *m = strdup(message ? message : "");
    size_t n = m ? strlen(m) : 0, bad;
    while (m && !proto_utf8_valid(m, n, &bad)) m[bad] = '?'; /* a message cut in the middle of a character */
    cJSON_AddStringToObject(e, "message", m ? m : "out of memory");
    free(m);
    return o;
}

void proto_add_u64(cJSON *obj, const char *name, uint64_t v)
{
    if (v < (UINT64_C(1) << 53)) {
        cJSON_AddNumberToObject(obj, name, (double)v);
    } else {
        char s[24];
        snprintf(s, sizeof s, "%llu", (unsigned long long)v);
        cJSON_AddStringToObject(obj, name, s);
    }
}

char *proto_frame(cJSON *obj, size_t *len)
{
    char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!text) return NULL;
    size_t n = strlen(text);
    char *f = malloc(n + 4);
    if (f) {
        f[0] = (char)(n & 0xFF);
        f[1] = (char)((n >> 8) & 0xFF);
        f[2] = (char)((n >> 16) & 0xFF);
        f[3] = (char)((n >> 24) & 0xFF);
        memcpy(f + 4, text, n);
        *len = n + 4;
    }
    cJSON_free(text);
    return f;
}

cJSON *proto_device_json(const dropblock_device_info *d)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", d->id);
    cJSON_AddStringToObject(o, "api", d->api);
    cJSON_AddStringToObject(o, "vendor", d->vendor);
    cJSON_AddStringToObject(o, "name", d->name);
    cJSON_AddStringToObject(o, "driver", d->driver);
    cJSON_AddStringToObject(o, "uuid", d->uuid);
    cJSON_AddStringToObject(o, "kind", dropblock_device_kind_name(d->kind));
    proto_add_u64(o, "max_buffer", d->max_buffer);
    proto_add_u64(o, "global_mem", d->global_mem);
    cJSON_AddBoolToObject(o, "healthy", d->healthy != 0);
    cJSON_AddBoolToObject(o, "export", d->can_export != 0);
    cJSON_AddBoolToObject(o, "semaphores", d->semaphores != 0);
    cJSON_AddBoolToObject(o, "semaphore_export", d->semaphore_export != 0);
    return o;
}

/* ---------------------------------------------------------------- job request and reply */
/* Text being built: appends stop (and bad is set) when it would not fit. */
struct text {
    char *buf;
    size_t len, cap;
    int bad;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct text *t, const char *fmt, ...)
{
    if (t->bad) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= t->cap - t->len) t->bad = 1;
    else t->len += (size_t)k;
}

/* A u64 as protocol v1 writes it: a number below 2^53, else a decimal string. */
static void put_u64(struct text *t, uint64_t v)
{
    put(t, v < (UINT64_C(1) << 53) ? "%llu" : "\"%llu\"", (unsigned long long)v);
}

/* A JSON string (quotes, backslashes and control characters escaped). */
static void put_string(struct text *t, const char *s)
{
    put(t, "\"");
    for (; *s && !t->bad; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') put(t, "\\%c", ch);
        else if (ch < 0x20) put(t, "\\u%04x", ch);
        else if (t->len + 1 < t->cap) t->buf[t->len++] = (char)ch, t->buf[t->len] = 0;
        else t->bad = 1;
    }
    put(t, "\"");
}

static void put_tensor(struct text *t, const char *name, uint32_t rid, uint64_t off)
{
    put(t, ",\"%s\":{\"region\":%u,\"offset\":", name, rid);
    put_u64(t, off);
    put(t, "}");
}

char *proto_write_job_request(const dropblock_params *p, const uint32_t rid[3], const uint64_t off[3], int has_mask,
                              const char *device)
{
    const char *dev = device && *device ? device : "auto";
    struct text t = {NULL, 0, 1024 + 6 * strlen(dev), 0};
    if (!(t.buf = malloc(t.cap))) return NULL;
    t.buf[0] = 0;
    put(&t, "{\"v\":%d,\"op\":\"dropblock2d\"", PROTO_VERSION);
    put_tensor(&t, "input", rid[0], off[0]);
    put_tensor(&t, "output", rid[1], off[1]);
    if (has_mask) put_tensor(&t, "mask", rid[2], off[2]);
    /* DropBlock3D (depth > 1): a 5-element shape, NCDHW or NDHWC and [bd, bh, bw]; a depth of 0 or 1
     * is DropBlock2D and goes as a 4-element request, which any protocol v1 daemon reads */
    const int three = p->depth > 1;
    const uint64_t dims[5] = {p->shape[0], p->shape[1], p->depth, p->shape[2], p->shape[3]};
    put(&t, ",\"shape\":[");
    for (int i = 0, k = 0; i < 5; i++) {
        if (i == 2 && !three) continue;
        if (k++) put(&t, ",");
        put_u64(&t, dims[i]);
    }
    put(&t, "],\"layout\":\"%s\",\"dtype\":\"%s\"", db_layout_name(p->layout, p->depth > 1),
        dropblock_dtype_name(p->dtype));
    /* a float widened to double prints exactly in 17 digits and narrows back to the same float */
    put(&t, ",\"rate\":%.17g,\"block\":[", (double)p->rate);
    if (three) {
        put_u64(&t, p->block_depth ? p->block_depth : 1);
        put(&t, ",");
    }
    put_u64(&t, p->block[0]);
    put(&t, ",");
    put_u64(&t, p->block[1]);
    put(&t, "],\"seed\":");
    put_u64(&t, p->seed);
    put(&t, ",\"stream\":");
    put_u64(&t, p->stream);
    if (p->has_position) { /* compat keras_cv after calls of other sizes */
        put(&t, ",\"position\":");
        put_u64(&t, p->position);
    }
    put(&t, ",\"normalize\":\"%s\",\"share\":[%s%s%s]", dropblock_normalize_name(p->normalize),
        (p->share & DROPBLOCK_SHARE_CHANNELS) ? "\"channels\"" : "",
        (p->share & DROPBLOCK_SHARE_CHANNELS) && (p->share & DROPBLOCK_SHARE_BATCH) ? "," : "",
        (p->share & DROPBLOCK_SHARE_BATCH) ? "\"batch\"" : "");
    put(&t, ",\"mode\":\"%s\",\"compat\":\"%s\",\"training\":%s,\"device\":",
        p->mode == DROPBLOCK_BACKWARD ? "backward" : "forward", dropblock_compat_name(p->compat),
        p->training ? "true" : "false");
    put_string(&t, dev);
    if (t.bad) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}

size_t proto_write_job_reply(char *frame, size_t cap, const char *id_json, const dropblock_result *res,
                             uint64_t queue_us, const char *device)
{
    if (cap < 4) return 0;
    struct text t = {frame + 4, 0, cap - 4, 0};
    const uint64_t v[7] = {res->kept,         res->total,        queue_us,         res->timing_us[0],
                           res->timing_us[1], res->timing_us[2], res->timing_us[3]};
    put(&t, "{\"v\":%d,\"id\":%s,\"ok\":true,\"kept\":", PROTO_VERSION, id_json);
    put_u64(&t, v[0]);
    put(&t, ",\"total\":");
    put_u64(&t, v[1]);
    /* device ids are the engine's own ("opencl:0"): nothing in them needs escaping */
    put(&t, ",\"scale_bits\":\"0x%08x\",\"device\":\"%s\",\"timing_us\":{\"queue\":", res->scale_bits, device);
    put_u64(&t, v[2]);
    static const char *const names[4] = {"mask", "scale", "apply", "total"};
    for (int i = 0; i < 4; i++) {
        put(&t, ",\"%s\":", names[i]);
        put_u64(&t, v[3 + i]);
    }
    put(&t, "}}");
    if (t.bad) return 0;
    const uint32_t len = (uint32_t)t.len;
    frame[0] = (char)(len & 0xFF);
    frame[1] = (char)((len >> 8) & 0xFF);
    frame[2] = (char)((len >> 16) & 0xFF);
    frame[3] = (char)((len >> 24) & 0xFF);
    return t.len + 4;
}

int proto_parse_alloc(const cJSON *req, char *device, size_t dlen, uint64_t *bytes, char *msg, size_t len)
{
    const cJSON *dv = cJSON_GetObjectItemCaseSensitive(req, "device");
    const cJSON *by = cJSON_GetObjectItemCaseSensitive(req, "bytes");
    if (dv && (!cJSON_IsString(dv) || strlen(dv->valuestring) >= dlen)) {
        db_msg(msg, len, "device: a device id string (\"vulkan:0\") or \"auto\"");
        return DROPBLOCK_EINVAL;
    }
    snprintf(device, dlen, "%s", dv ? dv->valuestring : "auto");
    if (!by) {
        db_msg(msg, len, "bytes: missing (the size of the device memory to allocate)");
        return DROPBLOCK_EINVAL;
    }
    if (proto_get_u64(by, "bytes", bytes, msg, len)) return DROPBLOCK_EINVAL;
    if (*bytes == 0) {
        db_msg(msg, len, "bytes: 0; allocate at least 1 byte");
        return DROPBLOCK_EINVAL;
    }
    return DROPBLOCK_OK;
}
