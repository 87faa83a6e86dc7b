/* test_vectors.c: the CPU reference (core/reference.c) against the bit vectors that
 * spec/dropblock_ref.py computed (the *.json files in tests/vectors, made by tools/gen_vectors.py).
 *
 *   test_vectors DIR
 *
 * For each vector: output bits, K, S, scale bits and (canonical mode) the packed mask must be
 * exactly the expected ones, also when run in place; a request the reference rejects must be
 * rejected with the same error code; a tf-uniform input must be what db_fill_tf_uniform makes. */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reference.h"

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1) break;
        char *nb = realloc(buf, cap *= 2);
        if (!nb) {
            free(buf);
            buf = NULL;
        } else buf = nb;
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    return buf;
}

static const char *str_of(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int u64_of(const cJSON *o, const char *key, uint64_t *out)
{
    const char *s = str_of(o, key);
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

static int bool_of(const cJSON *o, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsBool(v)) return -1;
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Fills p from the "request" object; names what is wrong in why. */
static int parse_request(const cJSON *r, dropblock_params *p, char *why, size_t len)
{
    dropblock_params_init(p);
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(r, "shape"),
                *block = cJSON_GetObjectItemCaseSensitive(r, "block");
    const int three = cJSON_GetArraySize(shape) == 5; /* DropBlock3D: N,C,D,H,W and bd,bh,bw */
    if (three && cJSON_GetArraySize(block) == 3) {
        p->depth = (uint64_t)cJSON_GetArrayItem(shape, 2)->valuedouble;
        p->block_depth = (uint64_t)cJSON_GetArrayItem(block, 0)->valuedouble;
        cJSON_DeleteItemFromArray((cJSON *)shape, 2);
        cJSON_DeleteItemFromArray((cJSON *)block, 0);
    }
    if (cJSON_GetArraySize(shape) != 4 || cJSON_GetArraySize(block) != 2) {
        snprintf(why, len, "request: shape needs 4 numbers and block 2 (or 5 and 3)");
        return -1;
    }
    for (int i = 0; i < 4; i++) p->shape[i] = (uint64_t)cJSON_GetArrayItem(shape, i)->valuedouble;
    for (int i = 0; i < 2; i++) p->block[i] = (uint64_t)cJSON_GetArrayItem(block, i)->valuedouble;
    int layout = dropblock_parse_layout(str_of(r, "layout")), dtype = dropblock_parse_dtype(str_of(r, "dtype"));
    int norm = dropblock_parse_normalize(str_of(r, "normalize")), compat = dropblock_parse_compat(str_of(r, "compat"));
    const char *mode = str_of(r, "mode"), *rate_text = str_of(r, "rate");
    uint64_t rate_bits;
    int sc, sb, training;
    if (layout < 0 || dtype < 0 || norm < 0 || compat < 0 || !mode || !rate_text ||
        u64_of(r, "rate_bits", &rate_bits) || u64_of(r, "seed", &p->seed) || u64_of(r, "stream", &p->stream) ||
        bool_of(r, "share_channels", &sc) || bool_of(r, "share_batch", &sb) || bool_of(r, "training", &training)) {
        snprintf(why, len, "request: a field is missing or malformed");
        return -1;
    }
    p->layout = (dropblock_layout)layout;
    p->dtype = (dropblock_dtype)dtype;
    p->normalize = (dropblock_normalize)norm;
    p->compat = (dropblock_compat)compat;
    p->mode = !strcmp(mode, "backward") ? DROPBLOCK_BACKWARD : DROPBLOCK_FORWARD;
    p->share = (sc ? DROPBLOCK_SHARE_CHANNELS : 0u) | (sb ? DROPBLOCK_SHARE_BATCH : 0u);
    p->training = training;
    uint32_t rb = (uint32_t)rate_bits;
    memcpy(&p->rate, &rb, 4);
    /* the rate text read as the CLI reads it (double, then float32) is the same float */
    float from_text = (float)strtod(rate_text, NULL);
    if (memcmp(&from_text, &p->rate, 4)) {
        snprintf(why, len, "request: rate \"%s\" does not read back as rate_bits 0x%08x", rate_text, rb);
        return -1;
    }
    return 0;
}

/* An array of "0x..." bit patterns into a buffer of n elements of es bytes. */
static int parse_hex_array(const cJSON *a, size_t es, uint64_t n, void *buf)
{
    if (!cJSON_IsArray(a) || (uint64_t)cJSON_GetArraySize(a) != n) return -1;
    uint64_t i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, a)
    {
        if (!cJSON_IsString(v)) return -1;
        char *end;
        unsigned long b = strtoul(v->valuestring, &end, 16);
        if (*end || (es == 2 && b > 0xFFFF) || b > 0xFFFFFFFFul) return -1;
        uint32_t b32 = (uint32_t)b;
        uint16_t b16 = (uint16_t)b;
        memcpy((char *)buf + i * es, es == 4 ? (void *)&b32 : (void *)&b16, es);
        i++;
    }
    return 0;
}

static int first_diff(const void *a, const void *b, size_t es, uint64_t n, char *why, size_t len, const char *what)
{
    for (uint64_t i = 0; i < n; i++) {
        uint32_t x = 0, y = 0;
        memcpy(&x, (const char *)a + i * es, es);
        memcpy(&y, (const char *)b + i * es, es);
        if (x != y) {
            snprintf(why, len, "%s element %llu of %llu: expected 0x%0*x, got 0x%0*x", what, (unsigned long long)i,
                     (unsigned long long)n, (int)es * 2, x, (int)es * 2, y);
            return 1;
        }
    }
    return 0;
}

static int check_vector(const cJSON *v, char *why, size_t len)
{
    dropblock_params p;
    if (parse_request(cJSON_GetObjectItemCaseSensitive(v, "request"), &p, why, len)) return 0;
    const uint64_t n = dropblock_numel(&p), mb = dropblock_mask_bytes(&p);
    const size_t es = dropblock_dtype_size(p.dtype);
    if (!n) {
        snprintf(why, len, "request: invalid shape");
        return 0;
    }
    void *x = calloc(n, es), *want = calloc(n, es), *y = calloc(n, es), *inplace = calloc(n, es);
    uint8_t *mask = calloc(mb, 1), *wmask = calloc(mb, 1);
    dropblock_result res;
    memset(&res, 0, sizeof res);
    int ok = 0;
    if (!x || !want || !y || !inplace || !mask || !wmask) {
        snprintf(why, len, "out of memory");
        goto out;
    }
    if (parse_hex_array(cJSON_GetObjectItemCaseSensitive(v, "input"), es, n, x)) {
        snprintf(why, len, "input: not %llu hex bit patterns", (unsigned long long)n);
        goto out;
    }
    const cJSON *tfu = cJSON_GetObjectItemCaseSensitive(v, "input_tf_uniform");
    if (cJSON_IsArray(tfu)) {
        uint64_t s[2];
        char *end;
        for (int i = 0; i < 2; i++) {
            const cJSON *e = cJSON_GetArrayItem(tfu, i);
            if (!cJSON_IsString(e) || (s[i] = strtoull(e->valuestring, &end, 10), *end)) {
                snprintf(why, len, "input_tf_uniform: needs two decimal strings");
                goto out;
            }
        }
        if (db_fill_tf_uniform(p.dtype, s[0], s[1], n, y)) {
            snprintf(why, len, "out of memory");
            goto out;
        }
        if (first_diff(x, y, es, n, why, len, "tf-uniform input")) goto out;
    }
    int rc = db_reference_run(&p, x, y, mask, NULL, &res);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(v, "error");
    if (err) {
        int code = dropblock_error_from_name(str_of(err, "code"));
        if (rc != code) {
            snprintf(why, len, "the reference rejects it (%s: %s), expected error %d, got %d (%s)", str_of(err, "code"),
                     str_of(err, "reference_message"), code, rc, rc ? res.message : "success");
            goto out;
        }
        ok = 1;
        goto out;
    }
    if (rc) {
        snprintf(why, len, "rc %d: %s", rc, res.message);
        goto out;
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(v, "expected");
    uint64_t scale_bits;
    const cJSON *kept = cJSON_GetObjectItemCaseSensitive(e, "kept"),
                *total = cJSON_GetObjectItemCaseSensitive(e, "total");
    if (!cJSON_IsNumber(kept) || !cJSON_IsNumber(total) || u64_of(e, "scale_bits", &scale_bits) ||
        parse_hex_array(cJSON_GetObjectItemCaseSensitive(e, "values"), es, n, want)) {
        snprintf(why, len, "expected: kept, total, scale_bits or values missing or malformed");
        goto out;
    }
    if (res.kept != (uint64_t)kept->valuedouble || res.total != (uint64_t)total->valuedouble ||
        res.scale_bits != scale_bits) {
        snprintf(why, len, "K/S/scale: expected %llu/%llu/0x%08llx, got %llu/%llu/0x%08x",
                 (unsigned long long)kept->valuedouble, (unsigned long long)total->valuedouble,
                 (unsigned long long)scale_bits, (unsigned long long)res.kept, (unsigned long long)res.total,
                 res.scale_bits);
        goto out;
    }
    if (first_diff(want, y, es, n, why, len, "output")) goto out;
    const char *mhex = str_of(e, "mask");
    if (mhex) {
        if (strlen(mhex) != 2 * mb) {
            snprintf(why, len, "expected mask: not %llu bytes", (unsigned long long)mb);
            goto out;
        }
        for (uint64_t i = 0; i < mb; i++) {
            char two[3] = {mhex[2 * i], mhex[2 * i + 1], 0};
            wmask[i] = (uint8_t)strtoul(two, NULL, 16);
            if (wmask[i] != mask[i]) {
                snprintf(why, len, "mask byte %llu: expected 0x%02x, got 0x%02x", (unsigned long long)i, wmask[i],
                         mask[i]);
                goto out;
            }
        }
    }
    /* in place (input and output the same buffer) must give the same bits */
    memcpy(inplace, x, n * es);
    if ((rc = db_reference_run(&p, inplace, inplace, NULL, NULL, &res))) {
        snprintf(why, len, "in place: rc %d: %s", rc, res.message);
        goto out;
    }
    if (first_diff(want, inplace, es, n, why, len, "in-place output")) goto out;
    ok = 1;
out:
    free(x);
    free(want);
    free(y);
    free(inplace);
    free(mask);
    free(wmask);
    return ok;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_vectors DIR (tests/vectors)\n");
        return 2;
    }
    DIR *d = opendir(argv[1]);
    if (!d) {
        fprintf(stderr, "test_vectors: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    char **names = NULL;
    size_t count = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".json")) continue;
        if (count == cap) {
            char **nn = realloc(names, (cap = cap ? 2 * cap : 256) * sizeof *names);
            if (!nn) {
                fprintf(stderr, "test_vectors: out of memory\n");
                return 1;
            }
            names = nn;
        }
        if (!(names[count++] = strdup(de->d_name))) {
            fprintf(stderr, "test_vectors: out of memory\n");
            return 1;
        }
    }
    closedir(d);
    if (count) qsort(names, count, sizeof *names, cmp_names);
    int passed = 0, failed = 0;
    for (size_t i = 0; i < count; i++) {
        char path[4096], why[512] = "";
        snprintf(path, sizeof path, "%s/%s", argv[1], names[i]);
        char *text = read_all(path);
        cJSON *v = text ? cJSON_Parse(text) : NULL;
        int ok = 0;
        if (!text) snprintf(why, sizeof why, "cannot read: %s", strerror(errno));
        else if (!v) snprintf(why, sizeof why, "not valid JSON");
        else ok = check_vector(v, why, sizeof why);
        if (ok) passed++;
        else {
            failed++;
            printf("FAIL %s: %s\n", names[i], why);
        }
        cJSON_Delete(v);
        free(text);
        free(names[i]);
    }
    free(names);
    if (!count) {
        printf("test_vectors: no *.json vectors in %s\n", argv[1]);
        failed = 1;
    }
    printf("test_vectors: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
