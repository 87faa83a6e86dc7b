/* npy.c: .npy reading and writing (see npy.h). The header is a Python dict literal; it is parsed
 * as one (quotes of either kind, any spacing, a trailing comma) rather than matched against the
 * exact text numpy writes, since other writers (older numpy, Python 2, hand-made files) differ. */
#include "npy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "msg.h"
#include "plan.h"

static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* Bytes before the dict and the dict's length, from the first bytes of the file. */
static int npy_preamble(const unsigned char *b, size_t len, size_t *pre, size_t *hlen, char *msg, size_t ml)
{
    if (len < 6 || memcmp(b, npy_magic, 6)) {
        db_msg(msg, ml, "not an .npy file (it does not start with \\x93NUMPY)");
        return DROPBLOCK_EINVAL;
    }
    if (len < 10) {
        db_msg(msg, ml, "truncated .npy header: the file ends after %zu bytes", len);
        return DROPBLOCK_EINVAL;
    }
    if (b[6] < 1 || b[6] > 3 || b[7] != 0) {
        db_msg(msg, ml, ".npy format version %u.%u is not supported (1.0, 2.0 and 3.0 are)", b[6], b[7]);
        return DROPBLOCK_EINVAL;
    }
    if (b[6] == 1) {
        *pre = 10;
        *hlen = (size_t)b[8] | (size_t)b[9] << 8;
    } else {
        if (len < 12) {
            db_msg(msg, ml, "truncated .npy header: the file ends after %zu bytes", len);
            return DROPBLOCK_EINVAL;
        }
        *pre = 12;
        uint32_t h = (uint32_t)b[8] | (uint32_t)b[9] << 8 | (uint32_t)b[10] << 16 | (uint32_t)b[11] << 24;
        if (h > DB_NPY_MAX_HEADER) {
            db_msg(msg, ml, ".npy header length %u is over the limit of %u bytes", h, DB_NPY_MAX_HEADER);
            return DROPBLOCK_EINVAL;
        }
        *hlen = h;
    }
    if (*hlen < 2) {
        db_msg(msg, ml, ".npy header length %zu is too short for a dict", *hlen);
        return DROPBLOCK_EINVAL;
    }
    return DROPBLOCK_OK;
}

/* ---- a small parser for the dict literal ----------------------------------------------- */
struct cur {
    const char *s, *end;
    char *msg;
    size_t ml;
};

static void skip_ws(struct cur *c)
{
    while (c->s < c->end && (*c->s == ' ' || *c->s == '\t' || *c->s == '\n' || *c->s == '\r')) c->s++;
}

static int at(struct cur *c, char ch)
{
    skip_ws(c);
    if (c->s < c->end && *c->s == ch) {
        c->s++;
        return 1;
    }
    return 0;
}

static int bad(struct cur *c, const char *what)
{
    size_t left = (size_t)(c->end - c->s);
    db_msg(c->msg, c->ml, "malformed .npy header: %s at \"%.*s\"", what, (int)(left > 24 ? 24 : left), c->s);
    return DROPBLOCK_EINVAL;
}

/* A quoted string without escapes (no dtype or key needs one). */
static int parse_str(struct cur *c, char *out, size_t cap)
{
    skip_ws(c);
    if (c->s >= c->end || (*c->s != '\'' && *c->s != '"')) return bad(c, "expected a quoted string");
    char q = *c->s++;
    size_t n = 0;
    while (c->s < c->end && *c->s != q) {
        if (*c->s == '\\') return bad(c, "escape sequences are not supported");
        if (n + 1 >= cap) return bad(c, "string too long");
        out[n++] = *c->s++;
    }
    if (c->s >= c->end) return bad(c, "unterminated string");
    c->s++;
    out[n] = 0;
    return DROPBLOCK_OK;
}

static int parse_bool(struct cur *c, int *v)
{
    skip_ws(c);
    size_t left = (size_t)(c->end - c->s);
    if (left >= 4 && !memcmp(c->s, "True", 4)) {
        c->s += 4;
        *v = 1;
        return DROPBLOCK_OK;
    }
    if (left >= 5 && !memcmp(c->s, "False", 5)) {
        c->s += 5;
        *v = 0;
        return DROPBLOCK_OK;
    }
    return bad(c, "expected True or False");
}

/* A tuple of non-negative integers: "()", "(5,)", "(2, 3)", "(2, 3,)"; "(5)" is not a tuple. */
static int parse_shape(struct cur *c, uint64_t *shape, int *ndim)
{
    if (!at(c, '(')) return bad(c, "shape is not a tuple");
    int n = 0, comma = 0;
    for (;;) {
        if (at(c, ')')) break;
        if (n && !comma) return bad(c, "expected ',' or ')' in shape");
        skip_ws(c);
        if (c->s < c->end && *c->s == '-') {
            db_msg(c->msg, c->ml, "malformed .npy header: shape dimension %d is negative", n);
            return DROPBLOCK_EINVAL;
        }
        if (c->s >= c->end || *c->s < '0' || *c->s > '9') return bad(c, "expected an integer in shape");
        uint64_t v = 0;
        while (c->s < c->end && *c->s >= '0' && *c->s <= '9') {
            unsigned d = (unsigned)(*c->s++ - '0');
            if (v > (UINT64_MAX - d) / 10) return bad(c, "shape dimension overflows 64 bits");
            v = v * 10 + d;
        }
        if (c->s < c->end && (*c->s == 'L' || *c->s == 'l')) c->s++; /* Python 2 long */
        if (n >= DB_NPY_MAX_DIMS) {
            db_msg(c->msg, c->ml, ".npy array has more than %d dimensions", DB_NPY_MAX_DIMS);
            return DROPBLOCK_EINVAL;
        }
        shape[n++] = v;
        comma = at(c, ',');
    }
    if (n == 1 && !comma) return bad(c, "a one-element shape needs a trailing comma, as in (5,)");
    *ndim = n;
    return DROPBLOCK_OK;
}

/* The dtype of a descr string: 0/1/2 = f32/f16/bf16-as-u2 (2 means '<u2'), or an error. */
static int descr_dtype(const char *d, int want, int *dtype, char *msg, size_t ml)
{
    const char *kind = d[0] == '<' || d[0] == '>' || d[0] == '=' || d[0] == '|' ? d + 1 : d;
    int known = !strcmp(kind, "f4") || !strcmp(kind, "f2") || !strcmp(kind, "u2");
    if (known && d[0] == '>') {
        db_msg(msg, ml,
               "dtype '%s' is big-endian; only little-endian data is supported "
               "(convert with arr.astype(arr.dtype.newbyteorder('<')))",
               d);
        return DROPBLOCK_EINVAL;
    }
    if (!known || d[0] != '<') {
        db_msg(msg, ml, "dtype '%s' is not supported: use '<f4' (f32), '<f2' (f16) or '<u2' holding bf16", d);
        return DROPBLOCK_EINVAL;
    }
    int t = !strcmp(kind, "f4") ? DROPBLOCK_F32 : !strcmp(kind, "f2") ? DROPBLOCK_F16 : DROPBLOCK_BF16;
    if (t == DROPBLOCK_BF16 && want != DROPBLOCK_BF16) {
        if (want < 0)
            db_msg(msg, ml,
                   "dtype '<u2' (uint16) is read only as bf16, and only when bf16 is asked for "
                   "explicitly (--dtype bf16)");
        else
            db_msg(msg, ml, "dtype '<u2' holds bf16, but %s was asked for",
                   dropblock_dtype_name((dropblock_dtype)want));
        return DROPBLOCK_ERANGE;
    }
    if (want >= 0 && t != want) {
        db_msg(msg, ml, "dtype '%s' is %s, but %s was asked for%s", d, dropblock_dtype_name((dropblock_dtype)t),
               dropblock_dtype_name((dropblock_dtype)want),
               want == DROPBLOCK_BF16 ? " (bf16 is stored as '<u2')" : " (no conversion is done)");
        return DROPBLOCK_ERANGE;
    }
    *dtype = t;
    return DROPBLOCK_OK;
}

int db_npy_parse_header(const void *buf, size_t len, int want_dtype, int *dtype, uint64_t *shape, int *ndim,
                        uint64_t *data_offset, uint64_t *data_bytes, char *msg, size_t ml)
{
    const unsigned char *b = buf;
    size_t pre, hlen;
    int rc = npy_preamble(b, len, &pre, &hlen, msg, ml);
    if (rc) return rc;
    if (len < pre + hlen) {
        db_msg(msg, ml, "truncated .npy header: it needs %zu bytes, the file has %zu", pre + hlen, len);
        return DROPBLOCK_EINVAL;
    }
    struct cur c = {(const char *)b + pre, (const char *)b + pre + hlen, msg, ml};
    for (const char *p = c.s; p < c.end; p++)
        if (*p == 0) return bad(&c, "NUL byte in header");
    char descr[32] = "";
    int have_descr = 0, have_fortran = 0, have_shape = 0, fortran = 0, nd = 0;
    uint64_t sh[DB_NPY_MAX_DIMS];
    if (!at(&c, '{')) return bad(&c, "header is not a dict");
    for (;;) {
        if (at(&c, '}')) break;
        char key[32];
        if ((rc = parse_str(&c, key, sizeof key))) return rc;
        if (!at(&c, ':')) return bad(&c, "expected ':' after a key");
        if (!strcmp(key, "descr")) {
            skip_ws(&c);
            if (c.s < c.end && *c.s == '[') {
                db_msg(msg, ml, "structured dtypes are not supported: use '<f4', '<f2' or '<u2'");
                return DROPBLOCK_EINVAL;
            }
            if (have_descr++) return bad(&c, "duplicate key 'descr'");
            if ((rc = parse_str(&c, descr, sizeof descr))) return rc;
        } else if (!strcmp(key, "fortran_order")) {
            if (have_fortran++) return bad(&c, "duplicate key 'fortran_order'");
            if ((rc = parse_bool(&c, &fortran))) return rc;
        } else if (!strcmp(key, "shape")) {
            if (have_shape++) return bad(&c, "duplicate key 'shape'");
            if ((rc = parse_shape(&c, sh, &nd))) return rc;
        } else {
            db_msg(msg, ml, "malformed .npy header: unknown key '%s' (expected descr, fortran_order, shape)", key);
            return DROPBLOCK_EINVAL;
        }
        if (!at(&c, ',')) {
            if (at(&c, '}')) break;
            return bad(&c, "expected ',' or '}'");
        }
    }
    skip_ws(&c);
    if (c.s != c.end) return bad(&c, "text after the dict");
    if (!have_descr || !have_fortran || !have_shape) {
        db_msg(msg, ml, "malformed .npy header: key '%s' is missing",
               !have_descr     ? "descr"
               : !have_fortran ? "fortran_order"
                               : "shape");
        return DROPBLOCK_EINVAL;
    }
    if (fortran) {
        db_msg(msg, ml, "the array is in Fortran order; only C order is supported (save np.ascontiguousarray(a))");
        return DROPBLOCK_EINVAL;
    }
    int t;
    if ((rc = descr_dtype(descr, want_dtype, &t, msg, ml))) return rc;
    uint64_t bytes = dropblock_dtype_size((dropblock_dtype)t);
    for (int i = 0; i < nd; i++) {
        if (sh[i] && bytes > UINT64_MAX / sh[i]) {
            db_msg(msg, ml, "malformed .npy header: the shape's byte size overflows 64 bits");
            return DROPBLOCK_EINVAL;
        }
        bytes *= sh[i];
    }
    *dtype = t;
    *ndim = nd;
    memcpy(shape, sh, (size_t)nd * sizeof *sh);
    *data_offset = pre + hlen;
    *data_bytes = bytes;
    return DROPBLOCK_OK;
}

int db_npy_read(const char *path, int want_dtype, int *dtype, uint64_t *shape, int *ndim, void **data, uint64_t *nbytes,
                char *msg, size_t ml)
{
    *data = NULL;
    *nbytes = 0;
    char why[384];
    FILE *f = fopen(path, "rb");
    if (!f) {
        db_msg(msg, ml, "%s: cannot open: %s", path, strerror(errno));
        return DROPBLOCK_ENOTFOUND;
    }
    int rc = DROPBLOCK_OK;
    unsigned char pre_buf[12];
    unsigned char *hdr = NULL;
    void *buf = NULL;
    size_t got = fread(pre_buf, 1, sizeof pre_buf, f), pre, hlen;
    struct stat st;
    int regular = !fstat(fileno(f), &st) && S_ISREG(st.st_mode);
    /* The preamble is at most 12 bytes; a short read here only matters if the header needs them. */
    if ((rc = npy_preamble(pre_buf, got, &pre, &hlen, why, sizeof why))) goto fail;
    hdr = malloc(pre + hlen);
    if (!hdr) {
        db_msg(why, sizeof why, "out of memory for the header");
        rc = DROPBLOCK_EEXHAUSTED;
        goto fail;
    }
    memcpy(hdr, pre_buf, got);
    if (got < pre + hlen) got += fread(hdr + got, 1, pre + hlen - got, f);
    uint64_t off, bytes;
    if ((rc = db_npy_parse_header(hdr, got, want_dtype, dtype, shape, ndim, &off, &bytes, why, sizeof why))) goto fail;
    if (regular && (uint64_t)st.st_size != off + bytes) {
        /* checked before allocating, so a corrupt shape cannot ask for terabytes */
        uint64_t have = (uint64_t)st.st_size - off;
        db_msg(why, sizeof why, "%s: the shape needs %llu data bytes, the file has %llu",
               have < bytes ? "truncated file" : "extra bytes after the data", (unsigned long long)bytes,
               (unsigned long long)have);
        rc = DROPBLOCK_EINVAL;
        goto fail;
    }
    if (bytes > SIZE_MAX - 1 || !(buf = malloc(bytes ? (size_t)bytes : 1))) {
        db_msg(why, sizeof why, "out of memory for %llu data bytes", (unsigned long long)bytes);
        rc = DROPBLOCK_EEXHAUSTED;
        goto fail;
    }
    size_t n = fread(buf, 1, (size_t)bytes, f);
    if (ferror(f)) {
        db_msg(why, sizeof why, "read error: %s", strerror(errno));
        rc = DROPBLOCK_EINTERNAL;
        goto fail;
    }
    if (n != bytes) {
        db_msg(why, sizeof why, "truncated file: the shape needs %llu data bytes, the file has %zu",
               (unsigned long long)bytes, n);
        rc = DROPBLOCK_EINVAL;
        goto fail;
    }
    if (fgetc(f) != EOF) { /* only reachable for pipes and other non-regular files */
        db_msg(why, sizeof why, "extra bytes after the %llu data bytes", (unsigned long long)bytes);
        rc = DROPBLOCK_EINVAL;
        goto fail;
    }
    fclose(f);
    free(hdr);
    *data = buf;
    *nbytes = bytes;
    return DROPBLOCK_OK;
fail:
    db_msg(msg, ml, "%s: %s", path, why);
    fclose(f);
    free(hdr);
    free(buf);
    return rc;
}

size_t db_npy_header(char *buf, size_t cap, dropblock_dtype t, const uint64_t *shape, int ndim)
{
    if ((unsigned)t > DROPBLOCK_BF16 || ndim < 0 || ndim > DB_NPY_MAX_DIMS || cap < 10) return 0;
    static const char *const descr[] = {"<f4", "<f2", "<u2"};
    char dict[512], tup[256] = "";
    size_t tl = 0;
    for (int i = 0; i < ndim; i++)
        tl += (size_t)snprintf(tup + tl, sizeof tup - tl, "%s%llu", i ? ", " : "", (unsigned long long)shape[i]);
    int dl = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (%s%s), }", descr[t], tup,
                      ndim == 1 ? "," : "");
    /* numpy (>= 1.24) leaves room for the first axis to grow in place: 21 digits in all */
    if (ndim > 0) {
        char d0[24];
        int l0 = snprintf(d0, sizeof d0, "%llu", (unsigned long long)shape[0]);
        for (int i = l0; i < 21; i++) dict[dl++] = ' ';
        dict[dl] = 0;
    }
    /* numpy's _wrap_header: pad with 1..64 spaces plus '\n' so the data starts 64-aligned */
    size_t hlen = (size_t)dl + 1, pad = 64 - (10 + hlen) % 64, total = 10 + hlen + pad;
    if (total > cap || hlen + pad > 65535) return 0;
    memcpy(buf, npy_magic, 6);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (char)((hlen + pad) & 0xFF);
    buf[9] = (char)((hlen + pad) >> 8);
    memcpy(buf + 10, dict, (size_t)dl);
    memset(buf + 10 + dl, ' ', pad);
    buf[total - 1] = '\n';
    return total;
}

int db_npy_write(const char *path, dropblock_dtype t, const uint64_t *shape, int ndim, const void *data, char *msg,
                 size_t ml)
{
    char hdr[640];
    size_t hl = db_npy_header(hdr, sizeof hdr, t, shape, ndim);
    if (!hl) {
        db_msg(msg, ml, "%s: cannot describe dtype %d with %d dimensions in an .npy header", path, (int)t, ndim);
        return DROPBLOCK_EINVAL;
    }
    uint64_t bytes = dropblock_dtype_size(t);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] && bytes > UINT64_MAX / shape[i]) {
            db_msg(msg, ml, "%s: the shape's byte size overflows 64 bits", path);
            return DROPBLOCK_EINVAL;
        }
        bytes *= shape[i];
    }
    FILE *f = fopen(path, "wb");
    if (!f) {
        db_msg(msg, ml, "%s: cannot create: %s", path, strerror(errno));
        return DROPBLOCK_EINTERNAL;
    }
    int ok = fwrite(hdr, 1, hl, f) == hl && (bytes == 0 || fwrite(data, 1, (size_t)bytes, f) == bytes);
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (!ok) {
        remove(path);
        db_msg(msg, ml, "%s: write failed: %s", path, strerror(err));
        return DROPBLOCK_EINTERNAL;
    }
    return DROPBLOCK_OK;
}
