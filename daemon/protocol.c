/* protocol.c: parsing and building protocol v1 messages. */
#include "protocol.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    if (!id) { db_msg(msg, len, "id: missing (every request carries a client-chosen id)"); return DROPBLOCK_EINVAL; }
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
    if (!cJSON_IsString(o)) { db_msg(msg, len, "op: missing or not a string"); return DROPBLOCK_EINVAL; }
    *op = o->valuestring;
    return DROPBLOCK_OK;
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
static int parse_layout_exact(const char *s) { return !strcmp(s, "NCHW") ? 0 : !strcmp(s, "NHWC") ? 1 : -1; }

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
    if (!r) { db_msg(msg, len, "%s: missing", name); return DROPBLOCK_EINVAL; }
    if (proto_get_u64(r, name, &region, msg, len)) return DROPBLOCK_EINVAL;
    if (region > UINT32_MAX) { db_msg(msg, len, "%s %llu: no such region", name, (unsigned long long)region); return DROPBLOCK_ENOTFOUND; }
    snprintf(name, sizeof name, "%s.offset", field);
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(it, "offset");
    if (o && proto_get_u64(o, name, &offset, msg, len)) return DROPBLOCK_EINVAL;
    t->present = 1;
    t->region = (uint32_t)region;
    t->offset = offset;
    return DROPBLOCK_OK;
}

int proto_parse_job(const cJSON *req, struct proto_job *job, char *msg, size_t len)
{
    memset(job, 0, sizeof *job);
    dropblock_params *p = &job->p;
    dropblock_params_init(p);
    int rc;
    /* shape: 4 positive integers */
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(req, "shape");
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != 4) {
        db_msg(msg, len, "shape: must be an array of 4 integers (N, C, H, W)%s",
               cJSON_IsArray(shape) ? "; got another length" : "");
        return DROPBLOCK_EINVAL;
    }
    static const char *const dims[] = {"shape[0] (N)", "shape[1] (C)", "shape[2] (H)", "shape[3] (W)"};
    for (int i = 0; i < 4; i++) {
        const cJSON *d = cJSON_GetArrayItem(shape, i);
        if (cJSON_IsNumber(d) && d->valuedouble < 0) {
            db_msg(msg, len, "%s %g: must be >= 1", dims[i], d->valuedouble);
            return DROPBLOCK_EINVAL;
        }
        if ((rc = proto_get_u64(d, dims[i], &p->shape[i], msg, len))) return rc;
    }
    const cJSON *rate = cJSON_GetObjectItemCaseSensitive(req, "rate");
    if (!cJSON_IsNumber(rate)) { db_msg(msg, len, "rate: missing or not a number"); return DROPBLOCK_EINVAL; }
    if (!(rate->valuedouble >= 0.0 && rate->valuedouble <= 1.0)) {
        db_msg(msg, len, "rate %g: must be in [0, 1]", rate->valuedouble);
        return DROPBLOCK_EINVAL;
    }
    p->rate = (float)rate->valuedouble;
    const cJSON *block = cJSON_GetObjectItemCaseSensitive(req, "block");
    if (!block) { db_msg(msg, len, "block: missing (an integer or [bh, bw])"); return DROPBLOCK_EINVAL; }
    if (cJSON_IsArray(block)) {
        if (cJSON_GetArraySize(block) != 2) { db_msg(msg, len, "block: an array must hold [bh, bw]"); return DROPBLOCK_EINVAL; }
        if ((rc = proto_get_u64(cJSON_GetArrayItem(block, 0), "block[0] (height)", &p->block[0], msg, len))) return rc;
        if ((rc = proto_get_u64(cJSON_GetArrayItem(block, 1), "block[1] (width)", &p->block[1], msg, len))) return rc;
    } else {
        if ((rc = proto_get_u64(block, "block", &p->block[0], msg, len))) return rc;
        p->block[1] = p->block[0];
    }
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(req, "seed");
    if (!seed) { db_msg(msg, len, "seed: missing (an unsigned 64-bit integer)"); return DROPBLOCK_EINVAL; }
    if ((rc = proto_get_u64(seed, "seed", &p->seed, msg, len))) return rc;
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(req, "stream");
    if (stream && (rc = proto_get_u64(stream, "stream", &p->stream, msg, len))) return rc;
    int v;
    v = p->layout;
    if ((rc = get_string_enum(req, "layout", parse_layout_exact, "NCHW or NHWC", &v, msg, len))) return rc;
    p->layout = (dropblock_layout)v;
    v = p->dtype;
    if ((rc = get_string_enum(req, "dtype", dropblock_parse_dtype, "f32, f16 or bf16", &v, msg, len))) return rc;
    p->dtype = (dropblock_dtype)v;
    v = p->normalize;
    if ((rc = get_string_enum(req, "normalize", dropblock_parse_normalize, "global, sample or none", &v, msg, len))) return rc;
    p->normalize = (dropblock_normalize)v;
    v = p->mode;
    if ((rc = get_string_enum(req, "mode", parse_mode, "forward or backward", &v, msg, len))) return rc;
    p->mode = (dropblock_mode)v;
    v = p->compat;
    if ((rc = get_string_enum(req, "compat", dropblock_parse_compat, "none or keras_cv", &v, msg, len))) return rc;
    p->compat = (dropblock_compat)v;
    const cJSON *share = cJSON_GetObjectItemCaseSensitive(req, "share");
    if (share) {
        if (!cJSON_IsArray(share)) { db_msg(msg, len, "share: must be an array of \"channels\" and/or \"batch\""); return DROPBLOCK_EINVAL; }
        const cJSON *s;
        cJSON_ArrayForEach(s, share) {
            if (cJSON_IsString(s) && !strcmp(s->valuestring, "channels")) p->share |= DROPBLOCK_SHARE_CHANNELS;
            else if (cJSON_IsString(s) && !strcmp(s->valuestring, "batch")) p->share |= DROPBLOCK_SHARE_BATCH;
            else { db_msg(msg, len, "share: entries must be \"channels\" or \"batch\""); return DROPBLOCK_EINVAL; }
        }
    }
    const cJSON *training = cJSON_GetObjectItemCaseSensitive(req, "training");
    if (training) {
        if (!cJSON_IsBool(training)) { db_msg(msg, len, "training: must be true or false"); return DROPBLOCK_EINVAL; }
        p->training = cJSON_IsTrue(training);
    }
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
    if (!job->input.present) { db_msg(msg, len, "input: missing ({\"region\": R, \"offset\": O})"); return DROPBLOCK_EINVAL; }
    if ((rc = get_tensor(req, "output", &job->output, msg, len))) return rc;
    if (!job->output.present) job->output = job->input;
    if ((rc = get_tensor(req, "mask", &job->mask, msg, len))) return rc;
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
    cJSON_AddStringToObject(e, "message", message ? message : "");
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
        f[0] = (char)(n & 0xFF); f[1] = (char)((n >> 8) & 0xFF);
        f[2] = (char)((n >> 16) & 0xFF); f[3] = (char)((n >> 24) & 0xFF);
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
    return o;
}
