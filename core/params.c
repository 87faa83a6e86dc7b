/* params.c: request defaults, names, sizes and validation (docs/semantics.md, "Request fields"). */
#include <dropblock/dropblock.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "msg.h"
#include "plan.h"

static const char *const error_names[] = {
    "ok",          "invalid_argument",  "not_found", "out_of_range", "resource_exhausted",
    "unavailable", "permission_denied", "internal",  "timeout"};
static const char *const error_texts[] = {"success",           "invalid argument",   "not found",
                                          "out of range",      "resource exhausted", "unavailable",
                                          "permission denied", "internal error",     "timed out"};

const char *dropblock_error_name(int code)
{
    return (code <= 0 && code >= DROPBLOCK_ETIMEDOUT) ? error_names[-code] : NULL;
}

const char *dropblock_strerror(int code)
{
    return (code <= 0 && code >= DROPBLOCK_ETIMEDOUT) ? error_texts[-code] : "unknown error";
}

int dropblock_error_from_name(const char *name)
{
    for (int i = 0; name && i <= -DROPBLOCK_EINTERNAL; i++)
        if (!strcmp(name, error_names[i])) return -i;
    return DROPBLOCK_EINTERNAL;
}

void dropblock_default_socket(char *buf, size_t len)
{
    const char *env = getenv("DROPBLOCK_SOCKET"), *xdg = getenv("XDG_RUNTIME_DIR");
    if (env && *env) snprintf(buf, len, "%s", env);
    else if (xdg && *xdg) snprintf(buf, len, "%s/dropblock/dropblockd.sock", xdg);
    else snprintf(buf, len, "/run/dropblock/dropblockd.sock");
}

void dropblock_params_init(dropblock_params *p)
{
    memset(p, 0, sizeof *p);
    p->shape[0] = p->shape[1] = p->shape[2] = p->shape[3] = 1;
    p->layout = DROPBLOCK_NCHW;
    p->dtype = DROPBLOCK_F32;
    p->rate = 0.1f;
    p->block[0] = p->block[1] = 7;
    p->normalize = DROPBLOCK_NORMALIZE_GLOBAL;
    p->mode = DROPBLOCK_FORWARD;
    p->compat = DROPBLOCK_COMPAT_NONE;
    p->training = 1;
}

static const char *const layout_names[] = {"NCHW", "NHWC"};
static const char *const dtype_names[] = {"f32", "f16", "bf16"};
static const char *const normalize_names[] = {"global", "sample", "none"};
static const char *const compat_names[] = {"none", "keras_cv", "keras3"};
static const char *const kind_names[] = {"cpu", "cpu-api", "integrated-gpu", "discrete-gpu", "other"};

#define NAME_OF(table, v) (((unsigned)(v) < sizeof table / sizeof *table) ? table[v] : "?")
const char *dropblock_layout_name(dropblock_layout l) { return NAME_OF(layout_names, l); }
const char *dropblock_dtype_name(dropblock_dtype t) { return NAME_OF(dtype_names, t); }
const char *dropblock_normalize_name(dropblock_normalize n) { return NAME_OF(normalize_names, n); }
const char *dropblock_compat_name(dropblock_compat c) { return NAME_OF(compat_names, c); }
const char *dropblock_device_kind_name(dropblock_device_kind k) { return NAME_OF(kind_names, k); }

static int parse_in(const char *const *table, int n, const char *s, int fold)
{
    for (int i = 0; s && i < n; i++)
        if (fold ? !strcasecmp(s, table[i]) : !strcmp(s, table[i])) return i;
    return -1;
}
int dropblock_parse_layout(const char *s) { return parse_in(layout_names, 2, s, 1); }
int dropblock_parse_dtype(const char *s) { return parse_in(dtype_names, 3, s, 0); }
int dropblock_parse_normalize(const char *s) { return parse_in(normalize_names, 3, s, 0); }
int dropblock_parse_compat(const char *s) { return parse_in(compat_names, 3, s, 0); }

size_t dropblock_dtype_size(dropblock_dtype t) { return t == DROPBLOCK_F32 ? 4 : 2; }

uint64_t dropblock_numel(const dropblock_params *p)
{
    uint64_t n = 1;
    const uint64_t dims[5] = {p->shape[0], p->shape[1], p->depth ? p->depth : 1, p->shape[2], p->shape[3]};
    for (int i = 0; i < 5; i++) {
        if (dims[i] == 0 || dims[i] > DROPBLOCK_MAX_ELEMENTS) return 0;
        n *= dims[i];
        if (n > DROPBLOCK_MAX_ELEMENTS) return 0;
    }
    return n;
}

uint64_t dropblock_tensor_bytes(const dropblock_params *p)
{
    return dropblock_numel(p) * ((unsigned)p->dtype <= DROPBLOCK_BF16 ? dropblock_dtype_size(p->dtype) : 0);
}

uint64_t dropblock_mask_bytes(const dropblock_params *p) { return (dropblock_numel(p) + 7) / 8; }

int dropblock_params_validate(const dropblock_params *p, char *msg, size_t len)
{
    static const char *const dims = "NCHW";
    for (int i = 0; i < 4; i++)
        if (p->shape[i] == 0) {
            db_msg(msg, len, "shape %c is 0: each dimension must be >= 1", dims[i]);
            return DROPBLOCK_EINVAL;
        }
    if (!dropblock_numel(p)) {
        char depth[32] = "";
        if (p->depth > 1) snprintf(depth, sizeof depth, " x %llu", (unsigned long long)p->depth);
        db_msg(msg, len, "shape %llu x %llu%s x %llu x %llu has more than 2^40 elements",
               (unsigned long long)p->shape[0], (unsigned long long)p->shape[1], depth, (unsigned long long)p->shape[2],
               (unsigned long long)p->shape[3]);
        return DROPBLOCK_EINVAL;
    }
    if (p->shape[2] * p->shape[3] > DROPBLOCK_MAX_PLANE) {
        db_msg(msg, len, "map H x W = %llu x %llu has more than 2^31 elements", (unsigned long long)p->shape[2],
               (unsigned long long)p->shape[3]);
        return DROPBLOCK_EINVAL;
    }
    if (p->depth > 1 && p->depth * p->shape[2] * p->shape[3] > DROPBLOCK_MAX_PLANE) {
        db_msg(msg, len, "volume D x H x W = %llu x %llu x %llu has more than 2^31 elements",
               (unsigned long long)p->depth, (unsigned long long)p->shape[2], (unsigned long long)p->shape[3]);
        return DROPBLOCK_EINVAL;
    }
    if (p->depth > 1 && p->compat != DROPBLOCK_COMPAT_NONE) {
        db_msg(msg, len, "compat %s: keras-cv has no 3-D layer (depth %llu)", dropblock_compat_name(p->compat),
               (unsigned long long)p->depth);
        return DROPBLOCK_EINVAL;
    }
    if ((unsigned)p->layout > DROPBLOCK_NHWC) {
        db_msg(msg, len, "layout %d: must be NCHW or NHWC", (int)p->layout);
        return DROPBLOCK_EINVAL;
    }
    if ((unsigned)p->dtype > DROPBLOCK_BF16) {
        db_msg(msg, len, "dtype %d: must be f32, f16 or bf16", (int)p->dtype);
        return DROPBLOCK_EINVAL;
    }
    if (isnan(p->rate) || !(p->rate >= 0.0f && p->rate <= 1.0f)) {
        db_msg(msg, len, "rate %g: must be in [0, 1]", (double)p->rate);
        return DROPBLOCK_EINVAL;
    }
    if (p->block[0] == 0 || p->block[1] == 0) {
        db_msg(msg, len, "block %s 0: must be >= 1", p->block[0] == 0 ? "height" : "width");
        return DROPBLOCK_EINVAL;
    }
    if ((unsigned)p->normalize > DROPBLOCK_NORMALIZE_NONE) {
        db_msg(msg, len, "normalize %d: must be global, sample or none", (int)p->normalize);
        return DROPBLOCK_EINVAL;
    }
    if (p->share & ~(DROPBLOCK_SHARE_CHANNELS | DROPBLOCK_SHARE_BATCH)) {
        db_msg(msg, len, "share flags 0x%x: only channels (1) and batch (2) exist", p->share);
        return DROPBLOCK_EINVAL;
    }
    if ((unsigned)p->mode > DROPBLOCK_BACKWARD) {
        db_msg(msg, len, "mode %d: must be forward or backward", (int)p->mode);
        return DROPBLOCK_EINVAL;
    }
    if ((unsigned)p->compat > DROPBLOCK_COMPAT_KERAS3) {
        db_msg(msg, len, "compat %d: must be none, keras_cv or keras3", (int)p->compat);
        return DROPBLOCK_EINVAL;
    }
    if (p->compat != DROPBLOCK_COMPAT_NONE) {
        const char *name = dropblock_compat_name(p->compat);
        if (p->normalize != DROPBLOCK_NORMALIZE_GLOBAL) {
            db_msg(msg, len, "compat %s supports only normalize global (got %s)", name,
                   dropblock_normalize_name(p->normalize));
            return DROPBLOCK_EINVAL;
        }
        if (p->share) {
            db_msg(msg, len, "compat %s supports no share (keras-cv masks each sample and channel)", name);
            return DROPBLOCK_EINVAL;
        }
    }
    if (p->has_position && p->compat != DROPBLOCK_COMPAT_KERAS_CV) {
        db_msg(msg, len, "position: only compat keras_cv's generator has a position%s",
               p->compat == DROPBLOCK_COMPAT_KERAS3 ? " (keras3's counts calls: give stream)" : "");
        return DROPBLOCK_EINVAL;
    }
    if (p->has_position && p->stream) {
        db_msg(msg, len, "position and stream: give one (stream k is position k*N*H*W*C)");
        return DROPBLOCK_EINVAL;
    }
    return DROPBLOCK_OK;
}
