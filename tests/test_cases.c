/* test_cases.c: the cross-backend matrix (layouts, dtypes, blocks, rates, modes, sizes). */
#include "test_cases.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "reference.h"

static int add(struct test_case *out, int *n, int cap, const char *name, const dropblock_params *p, int specials)
{
    if (*n >= cap) return 0;
    struct test_case *t = &out[(*n)++];
    memset(t, 0, sizeof *t);
    char depth[48] = "";
    if (p->depth > 1 || p->block_depth > 1)
        snprintf(depth, sizeof depth, " D%llu bd%llu", (unsigned long long)p->depth,
                 (unsigned long long)p->block_depth);
    snprintf(t->name, sizeof t->name, "%s %s/%s %llux%llux%llux%llu%s r%g b%llux%llu %s%s%s%s%s%s", name,
             dropblock_layout_name(p->layout), dropblock_dtype_name(p->dtype), (unsigned long long)p->shape[0],
             (unsigned long long)p->shape[1], (unsigned long long)p->shape[2], (unsigned long long)p->shape[3], depth,
             (double)p->rate, (unsigned long long)p->block[0], (unsigned long long)p->block[1],
             dropblock_normalize_name(p->normalize), p->share & DROPBLOCK_SHARE_CHANNELS ? " share-c" : "",
             p->share & DROPBLOCK_SHARE_BATCH ? " share-n" : "", p->mode == DROPBLOCK_BACKWARD ? " backward" : "",
             p->training ? "" : " eval", p->compat == DROPBLOCK_COMPAT_KERAS_CV ? " keras_cv" : "");
    t->p = *p;
    t->s0 = p->seed ^ 0x5EEDu;
    t->s1 = 17;
    t->specials = specials;
    return 1;
}

static dropblock_params base(uint64_t n, uint64_t c, uint64_t h, uint64_t w, float rate, uint64_t bh, uint64_t bw)
{
    dropblock_params p = tu_params(n, c, h, w, rate, bh, bw);
    p.seed = 1000 + h * 31 + w;
    p.stream = 3;
    return p;
}

/* DropBlock3D: an (N, C, D, H, W) volume, block (bd, bh, bw) */
static dropblock_params base3(uint64_t n, uint64_t c, uint64_t d, uint64_t h, uint64_t w, float rate, uint64_t bd,
                              uint64_t bh, uint64_t bw)
{
    dropblock_params p = base(n, c, h, w, rate, bh, bw);
    p.depth = d;
    p.block_depth = bd;
    p.seed += d * 977 + bd;
    return p;
}

/* p with the first seed from p's on whose mask (the reference's) keeps want[n] whole maps of
 * sample n (p's block covers the map, so a map is kept or dropped as one): the scales of the
 * "every word" cases are then n / want[n] maps, e.g. 1.5, whose products of f16/bf16 inputs
 * hit the narrowing's rounding ties and overflow. */
static dropblock_params seed_keeping(dropblock_params p, const int *want)
{
    uint64_t n = dropblock_numel(&p), N = p.shape[0], C = p.shape[1], HW = p.shape[2] * p.shape[3];
    float *x = calloc(n, sizeof *x), *y = calloc(n, sizeof *y);
    uint8_t *mask = calloc(dropblock_mask_bytes(&p), 1);
    dropblock_result r;
    for (int tries = 0; x && y && mask && tries < 1000; tries++, p.seed++) {
        if (db_reference_run(&p, x, y, mask, NULL, &r)) break;
        int ok = 1;
        for (uint64_t i = 0; i < N && ok; i++) {
            int kept = 0;
            for (uint64_t c = 0; c < C; c++) {
                uint64_t e = (i * C + c) * HW;
                kept += (mask[e / 8] >> (e % 8)) & 1;
            }
            ok = kept == want[i];
        }
        if (ok) break;
    }
    free(x);
    free(y);
    free(mask);
    return p;
}

int test_cases_matrix(struct test_case *out, int cap)
{
    int n = 0;
    for (int layout = 0; layout < 2; layout++)
        for (int dtype = 0; dtype < 3; dtype++) {
            dropblock_params v[64];
            const char *names[64];
            int k = 0;
#define CASE(nm, expr) \
    do { \
        if (k == (int)(sizeof v / sizeof v[0])) { \
            fprintf(stderr, "test_cases: more cases than v[] holds\n"); \
            abort(); \
        } \
        v[k] = (expr); \
        names[k] = (nm); \
        k++; \
    } while (0)
            CASE("odd block", base(2, 3, 9, 7, 0.2f, 3, 3));
            CASE("even block", base(2, 3, 10, 12, 0.3f, 4, 4));
            CASE("non-square block", base(3, 5, 11, 13, 0.25f, 2, 5));
            CASE("block 7 on 14x14", base(2, 4, 14, 14, 0.1f, 7, 7));
            CASE("block >= map", base(2, 3, 5, 6, 0.5f, 7, 9));
            CASE("rate 1", base(2, 2, 8, 8, 1.0f, 3, 3));
            CASE("rate 0", base(2, 2, 8, 8, 0.0f, 3, 3));
            CASE("1x1 maps", base(3, 7, 1, 1, 0.5f, 3, 3));
            CASE("prime width > 32", base(1, 3, 5, 37, 0.2f, 3, 2));
            CASE("width 64", base(1, 2, 3, 64, 0.3f, 2, 7));
            CASE("wide row 100", base(2, 1, 4, 100, 0.15f, 1, 33));
            CASE("N*C odd", base(5, 7, 6, 5, 0.3f, 2, 3));
            /* planes of an odd size whose candidate blocks share Philox blocks with the next plane's */
            CASE("odd planes, block 1", base(2, 5, 5, 5, 0.5f, 1, 1));
            /* planes of more candidate blocks than two vector batches (CPU devices run them by
             * plane, not in one queue) */
            CASE("large planes", base(1, 2, 40, 41, 0.3f, 5, 4));
            dropblock_params p;
            /* clang-format off */
            p = base(3, 4, 9, 9, 0.4f, 3, 3); p.normalize = DROPBLOCK_NORMALIZE_SAMPLE; CASE("sample", p);
            p = base(3, 4, 9, 9, 0.4f, 3, 3); p.normalize = DROPBLOCK_NORMALIZE_NONE; CASE("none", p);
            p = base(3, 4, 9, 9, 0.4f, 3, 3); p.share = DROPBLOCK_SHARE_CHANNELS; CASE("share channels", p);
            p = base(3, 4, 9, 9, 0.4f, 3, 3); p.share = DROPBLOCK_SHARE_BATCH; CASE("share batch", p);
            p = base(3, 4, 9, 9, 0.4f, 2, 2); p.share = 3; p.normalize = DROPBLOCK_NORMALIZE_SAMPLE; CASE("share both", p);
            p = base(2, 3, 9, 9, 0.3f, 3, 3); p.mode = DROPBLOCK_BACKWARD; CASE("backward", p);
            p = base(2, 3, 9, 9, 0.3f, 3, 3); p.training = 0; CASE("eval", p);
            p = base(2, 3, 9, 9, 0.3f, 3, 3); p.seed = UINT64_C(18446744073709551557); p.stream = UINT64_C(0xFFFFFFFFFFFFFFFF); CASE("u64 seed/stream", p);
            p = base(2, 3, 9, 7, 0.5f, 3, 3); p.compat = DROPBLOCK_COMPAT_KERAS_CV; CASE("keras_cv", p);
            p = base(2, 3, 7, 9, 0.5f, 4, 2); p.compat = DROPBLOCK_COMPAT_KERAS_CV; CASE("keras_cv even, H<W", p);
            p = base(2, 3, 9, 6, 0.6f, 3, 5); p.compat = DROPBLOCK_COMPAT_KERAS_CV; CASE("keras_cv H>W", p);
            p = base(1, 2, 5, 5, 0.5f, 9, 3); p.compat = DROPBLOCK_COMPAT_KERAS_CV; CASE("keras_cv block > map", p);
            p = base(2, 3, 9, 9, 0.3f, 3, 3); p.compat = DROPBLOCK_COMPAT_KERAS_CV; p.stream = 7; p.seed = UINT64_C(0xFFFFFFFFFFFFFFF0); CASE("keras_cv stream", p);
            /* Philox counters whose upper words change inside a batch of blocks (a carry out of
             * the lowest word, and out of the lowest two): the vector batches' shortcut for
             * counters that agree there must not be taken */
            p = base(2, 3, 9, 9, 0.3f, 3, 3); p.compat = DROPBLOCK_COMPAT_KERAS_CV; p.stream = 0; p.seed = UINT64_C(0xFFFFFFF8); CASE("keras_cv counter carry", p);
            p = base(2, 3, 9, 9, 0.3f, 3, 3); p.compat = DROPBLOCK_COMPAT_KERAS_CV; p.stream = 0; p.seed = UINT64_C(0xFFFFFFFFFFFFFFFA); CASE("keras_cv counter carry 64", p);
            /* most candidates fire and each drops a tall thin block: lavapipe's per-invocation
             * loop limit once cut this short (found by the load test) */
            p = base(1, 8, 20, 30, 0.9f, 4, 1); p.compat = DROPBLOCK_COMPAT_KERAS_CV; CASE("keras_cv high rate thin block", p);
            p = base(1, 8, 20, 30, 0.9f, 2, 1); CASE("high rate thin block", p);
            p = base(1, 3, 8, 8, 0.3f, 3, 3); CASE("specials", p);
            p = base(1, 3, 8, 8, 0.3f, 3, 3); p.compat = DROPBLOCK_COMPAT_KERAS_CV; CASE("specials keras_cv", p);
            /* every 16-bit word (test_case_input) through each map: subnormals, NaN payloads,
             * infinities, overflow to infinity and rounding ties after scaling, in the fast
             * apply's vectors and in the tail after them (H*W = 65608, not a multiple of any
             * vector; rows short enough for the chunked tests' 4 KiB buffers) */
            static const int keep2[] = {2}, keep3[] = {3}, keep21[] = {2, 1};
            p = base(1, 3, 472, 139, 0.5f, 472, 139); CASE("every word scale 3/2", seed_keeping(p, keep2));
            p = base(1, 7, 472, 139, 0.5f, 472, 139); CASE("every word scale 7/3", seed_keeping(p, keep3));
            p = base(2, 3, 472, 139, 0.5f, 472, 139); p.normalize = DROPBLOCK_NORMALIZE_SAMPLE;
            CASE("every word sample scales 3/2 3", seed_keeping(p, keep21));
            p = base(1, 3, 472, 139, 0.5f, 472, 139); p.normalize = DROPBLOCK_NORMALIZE_NONE;
            CASE("every word scale 1", seed_keeping(p, keep2));
            /* DropBlock3D: every path above, with candidate slices and blocks across slices */
            CASE("3d cube", base3(2, 3, 5, 9, 7, 0.2f, 3, 3, 3));
            CASE("3d box 2x3x1", base3(2, 3, 4, 6, 5, 0.3f, 2, 3, 1));
            CASE("3d block >= volume", base3(2, 2, 2, 3, 4, 0.5f, 5, 7, 9));
            CASE("3d depth 1 block depth 3", base3(2, 3, 1, 9, 7, 0.3f, 3, 3, 3));
            CASE("3d block depth 1", base3(2, 2, 6, 8, 8, 0.3f, 1, 3, 3));
            CASE("3d deep thin", base3(1, 2, 17, 3, 4, 0.4f, 4, 2, 2));
            CASE("3d rate 1", base3(1, 2, 4, 5, 5, 1.0f, 2, 2, 2));
            CASE("3d large", base3(1, 2, 6, 24, 37, 0.2f, 3, 5, 3));
            p = base3(3, 4, 3, 5, 5, 0.4f, 2, 2, 2); p.normalize = DROPBLOCK_NORMALIZE_SAMPLE; p.share = 3; CASE("3d share both", p);
            p = base3(3, 4, 3, 5, 5, 0.4f, 2, 2, 2); p.share = DROPBLOCK_SHARE_CHANNELS; CASE("3d share channels", p);
            p = base3(3, 4, 3, 5, 5, 0.4f, 2, 2, 2); p.share = DROPBLOCK_SHARE_BATCH; CASE("3d share batch", p);
            p = base3(2, 3, 4, 5, 6, 0.3f, 2, 3, 3); p.mode = DROPBLOCK_BACKWARD; CASE("3d backward", p);
            p = base3(2, 3, 4, 5, 6, 0.3f, 2, 3, 3); p.training = 0; CASE("3d eval", p);
            p = base3(1, 3, 3, 8, 8, 0.3f, 3, 3, 3); CASE("specials 3d", p);
            /* clang-format on */
#undef CASE
            for (int i = 0; i < k; i++) {
                v[i].layout = (dropblock_layout)layout;
                v[i].dtype = (dropblock_dtype)dtype;
                int specials = !strncmp(names[i], "specials", 8) ? 1 : !strncmp(names[i], "every word", 10) ? 2 : 0;
                add(out, &n, cap, names[i], &v[i], specials);
            }
        }
    return n;
}

void *test_case_input(const struct test_case *tc)
{
    uint64_t n = dropblock_numel(&tc->p);
    size_t es = dropblock_dtype_size(tc->p.dtype);
    void *x = malloc(n * es + 4);
    if (!x) return NULL;
    db_fill_tf_uniform(tc->p.dtype, tc->s0, tc->s1, n, x);
    if (tc->specials == 2) { /* element i (physical order): word i mod 2^16 (f32: in its upper half) */
        for (uint64_t i = 0; i < n; i++) {
            uint32_t w = (uint32_t)(i % 65536);
            if (tc->p.dtype == DROPBLOCK_F32) {
                w = w << 16 | (uint32_t)(i * 0x9E3779B9u >> 16);
                memcpy((char *)x + 4 * i, &w, 4);
            } else {
                uint16_t h = (uint16_t)w;
                memcpy((char *)x + 2 * i, &h, 2);
            }
        }
    } else if (tc->specials) {
        static const uint32_t f32s[] = {0x7FC00000u, 0xFFC00001u, 0x7F800001u, 0x7F800000u, 0xFF800000u, 0x80000000u,
                                        0x00000001u, 0x807FFFFFu, 0x00400000u, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x00800000u};
        static const uint16_t f16s[] = {0x7E00u, 0xFE01u, 0x7C01u, 0x7C00u, 0xFC00u, 0x8000u,
                                        0x0001u, 0x83FFu, 0x0200u, 0x7BFFu, 0xFBFFu, 0x0400u};
        static const uint16_t bf16s[] = {0x7FC0u, 0xFFC1u, 0x7F81u, 0x7F80u, 0xFF80u, 0x8000u,
                                         0x0001u, 0x807Fu, 0x0040u, 0x7F7Fu, 0xFF7Fu, 0x0080u};
        for (uint64_t i = 0; i < 12 && i * 5 < n; i++) {
            uint64_t at = i * 5;
            if (tc->p.dtype == DROPBLOCK_F32) memcpy((char *)x + 4 * at, &f32s[i], 4);
            else memcpy((char *)x + 2 * at, tc->p.dtype == DROPBLOCK_F16 ? &f16s[i] : &bf16s[i], 2);
        }
    }
    return x;
}

int test_case_compare(const struct test_case *tc, test_runner runner, void *ctx, char *why, size_t len)
{
    const dropblock_params *p = &tc->p;
    uint64_t n = dropblock_numel(p), bytes = dropblock_tensor_bytes(p), mb = dropblock_mask_bytes(p);
    void *x = test_case_input(tc);
    void *want = calloc(1, bytes + 4), *got = calloc(1, bytes + 4);
    uint8_t *wmask = calloc(1, mb + 1), *gmask = calloc(1, mb + 1);
    dropblock_result wr, gr;
    memset(&wr, 0, sizeof wr);
    memset(&gr, 0, sizeof gr);
    int ok = 0;
    if (!x || !want || !got || !wmask || !gmask) {
        snprintf(why, len, "out of memory");
        goto out;
    }
    int wrc = db_reference_run(p, x, want, wmask, NULL, &wr);
    int grc = runner(ctx, p, x, got, gmask, &gr);
    if (wrc || grc) {
        ok = wrc == grc;
        if (!ok) snprintf(why, len, "reference rc %d (%s), backend rc %d (%s)", wrc, wr.message, grc, gr.message);
        goto out;
    }
    if (wr.kept != gr.kept || wr.total != gr.total || wr.scale_bits != gr.scale_bits) {
        snprintf(why, len, "K/S/scale: reference %llu/%llu/0x%08x, backend %llu/%llu/0x%08x",
                 (unsigned long long)wr.kept, (unsigned long long)wr.total, wr.scale_bits, (unsigned long long)gr.kept,
                 (unsigned long long)gr.total, gr.scale_bits);
        goto out;
    }
    if (memcmp(wmask, gmask, mb)) {
        for (uint64_t i = 0; i < mb; i++)
            if (wmask[i] != gmask[i]) {
                snprintf(why, len, "mask byte %llu: reference 0x%02x, backend 0x%02x", (unsigned long long)i, wmask[i],
                         gmask[i]);
                break;
            }
        goto out;
    }
    size_t es = dropblock_dtype_size(p->dtype);
    for (uint64_t i = 0; i < n; i++) {
        uint32_t a = 0, b = 0;
        memcpy(&a, (char *)want + i * es, es);
        memcpy(&b, (char *)got + i * es, es);
        if (a != b) {
            snprintf(why, len, "element %llu (of %llu): reference 0x%08x, backend 0x%08x", (unsigned long long)i,
                     (unsigned long long)n, a, b);
            goto out;
        }
    }
    ok = 1;
out:
    free(x);
    free(want);
    free(got);
    free(wmask);
    free(gmask);
    return ok;
}
