/* test_passes: the portable pass sources (shaders/db_passes.h), compiled as C, give the
 * reference's bits on a matrix of cases, run the way the backends run them: mask tiles of
 * several shapes, the scale passes, the fast apply with its exact tail and fixup,
 * whole and chunked. Also the branch-free pieces against the exact ones they stand in for, and
 * the device's S/K against core/plan.c. This checks the GPU algorithm apart from any API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DB_LANG_C
#include "../shaders/db_passes.h"

#include "kernel_params.h"
#include "reference.h"
#include "test_cases.h"

struct variant {
    const char *name;
    uint32_t tile_rows, epw; /* epw 0: no fast apply */
    uint32_t budget;         /* candidates a tile, 0: no limit */
    uint32_t item;           /* candidates a mask work item, 0: a tile each */
    int hwexact;             /* 0: every subnormal lane goes through the fixup */
    int per;                 /* units per chunk, 0: one chunk */
    uint32_t scatter;        /* candidate blocks a scatter work item (db_scatter_item), 0: the tiles */
};

static const struct variant variants[] = {
    {"planes, fast 32", 1u << 30, 32, 0, 0, 1, 0, 0},
    {"tiles of 1, fast 4, fixup, 3 a work item", 1, 4, 0, 60, 0, 0, 0},
    {"tiles of 3, exact apply, many a work item", 3, 0, 0, 100000, 1, 0, 0},
    {"tiles of 2, fast 8, chunks of 1 unit", 2, 8, 0, 0, 0, 1, 0},
    {"planes, fast 16, chunks of 3 units, 2 a work item", 1u << 30, 16, 0, 300, 1, 3, 0},
    {"budget 40: one-row tiles of columns, chunks of 2 units", 1u << 30, 8, 40, 40, 0, 2, 0},
    {"budget 200, fast 4", 8, 4, 200, 0, 1, 0, 0},
    {"budget 5: one-column tiles, NHWC cut into channels", 1u << 30, 8, 5, 5, 1, 0, 0},
    {"scatter 16 blocks an item, count, fast 4", 8, 4, 4096, 256, 1, 0, 16},
    {"scatter 1 row an item, exact apply, fixup", 8, 0, 4096, 256, 0, 0, 1},
    {"scatter 40, chunks of 1 unit", 8, 8, 4096, 256, 1, 1, 40},
    {"scatter 3, chunks of 3 units", 8, 4, 4096, 256, 1, 3, 3},
};

static uint32_t load_elem(const void *buf, size_t es, uint64_t i)
{
    uint32_t v = 0;
    memcpy(&v, (const char *)buf + i * es, es);
    return v;
}

static void store_elem(void *buf, size_t es, uint64_t i, uint32_t v) { memcpy((char *)buf + i * es, &v, es); }

static int run_passes(void *ctx, const dropblock_params *p, const void *in, void *out, uint8_t *maskout,
                      dropblock_result *res)
{
    const struct variant *v = ctx;
    struct db_plan pl;
    int rc = db_plan_init(&pl, p, res->message, sizeof res->message);
    if (rc) return rc;
    if (pl.identity) {
        db_identity(&pl, in, out, maskout, res);
        return 0;
    }
    const size_t es = dropblock_dtype_size(p->dtype);
    const struct db_tuning tu = {v->tile_rows, v->epw * (p->dtype == DROPBLOCK_F32 ? 1u : 2u), v->budget, v->item,
                                 v->scatter};
    /* the backends' plan of the chunks (a host buffer has no limit), the variant's size forced */
    struct db_chunking ck;
    if ((rc = db_job_chunks(&pl, UINT64_MAX, (uint64_t)v->per, &ck, res->message, sizeof res->message))) return rc;
    const uint64_t nchunks = ck.nchunks;
    uint32_t **masks = calloc(nchunks, sizeof *masks);
    uint64_t *kept = calloc(pl.N, sizeof *kept);
    uint32_t *scales = calloc(pl.N, sizeof *scales), *dscales = calloc(pl.N, sizeof *dscales);
    uint32_t prm[DBP_COUNT];
    struct db_chunk ch;
    const int on_device = ck.fused; /* the backends' fused path */
    for (uint64_t q = 0; q < nchunks; q++) {
        db_job_chunk(&pl, &ck, q, &ch);
        db_kernel_params(&pl, &ch, &tu, prm);
        /* mask words start as garbage, as reused device buffers do */
        uint64_t words = (ch.nelem + 31) / 32;
        masks[q] = malloc(words * 4);
        memset(masks[q], 0x5A, words * 4);
        uint32_t *partial = calloc(ch.nsamp * 2 + 2, 4);
        if (prm[DBP_SCATTER]) { /* the GPU flow: ones, scatter, count (and in a fused job the scales) */
            memset(masks[q], 0xFF, words * 4);
            for (uint64_t w = 0; w < db_scatter_items(prm); w++) db_scatter_item(prm, masks[q], w);
            for (uint64_t w = 0; w < db_count_items(prm); w++) db_count_item(prm, masks[q], partial, dscales, w);
        } else {
            for (uint64_t w = 0; w < db_mask_items(prm); w++) db_mask_item(prm, masks[q], partial, w);
        }
        for (uint64_t s = 0; s < ch.nsamp; s++)
            kept[ch.n0 + s] += partial[2 * s] | ((uint64_t)partial[2 * s + 1] << 32);
        if (on_device && !prm[DBP_SCATTER]) {
            for (uint32_t s = 0; s < prm[DBP_NSAMP]; s++) db_scale_item(prm, partial, dscales, s);
        }
        free(partial);
    }
    rc = db_plan_scales(&pl, kept, scales, res);
    if (!rc && on_device && memcmp(scales, dscales, pl.N * 4)) {
        snprintf(res->message, sizeof res->message, "device scale 0x%08x, host 0x%08x", dscales[0], scales[0]);
        rc = DROPBLOCK_EINTERNAL;
    }
    for (uint64_t q = 0; q < nchunks && !rc; q++) {
        db_job_chunk(&pl, &ck, q, &ch);
        db_kernel_params(&pl, &ch, &tu, prm);
        const uint32_t *sc = scales + ch.n0;
        uint64_t fast = (uint64_t)prm[DBP_GROUPS] * prm[DBP_EPW];
        uint32_t *fix = calloc((fast + 31) / 32 + 1, 4);
        /* the fast kernels, one lane at a time: the sample of each element as the OpenCL kernel
         * finds it (one boundary a work item at most) */
        for (uint64_t k = 0; k < fast; k++) {
            uint64_t si = (ch.e0 + k) / (pl.C * pl.D * pl.H * pl.W) - ch.n0;
            uint32_t s = p->normalize == DROPBLOCK_NORMALIZE_SAMPLE ? sc[si] : sc[0];
            uint32_t x = load_elem(in, es, ch.e0 + k), keep = (masks[q][k >> 5] >> (k & 31)) & 1u;
            uint32_t y = db_vapply(x, s, keep, (uint32_t)p->dtype);
            if (db_vbad(x, (uint32_t)p->dtype, (uint32_t)v->hwexact)) {
                y = x;
                fix[k >> 5] |= 1u << (k & 31);
            }
            store_elem(out, es, ch.e0 + k, y);
        }
        for (uint64_t k = fast; k < ch.nelem; k++)
            store_elem(out, es, ch.e0 + k, db_apply_elem(prm, masks[q], sc, k, load_elem(in, es, ch.e0 + k)));
        for (uint64_t k = 0; k < fast; k++)
            if ((fix[k >> 5] >> (k & 31)) & 1u)
                store_elem(out, es, ch.e0 + k, db_apply_elem(prm, masks[q], sc, k, load_elem(out, es, ch.e0 + k)));
        free(fix);
        if (maskout) db_mask_export_flat(&pl, masks[q], ch.e0, ch.nelem, maskout);
    }
    for (uint64_t q = 0; q < nchunks; q++) free(masks[q]);
    free(masks);
    free(kept);
    free(scales);
    free(dscales);
    return rc;
}

static uint64_t rng = 0x9E3779B97F4A7C15u;
static uint64_t next64(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* db_ratio (device) against db_ratio_f32_bits (host, 128-bit) */
static int check_ratio(void)
{
    int fails = 0;
    for (int i = 0; i < 200000 && fails < 5; i++) {
        uint64_t k = 1 + next64() % (i % 3 == 0 ? 100 : (UINT64_C(1) << (i % 41))),
                 s = k + next64() % ((UINT64_C(1) << 40) - k);
        if (i % 5 == 0) s = k * (1 + next64() % 64);
        if (db_ratio(s, k) != db_ratio_f32_bits(s, k)) {
            printf("FAIL ratio %llu/%llu: device 0x%08x, host 0x%08x\n", (unsigned long long)s, (unsigned long long)k,
                   db_ratio(s, k), db_ratio_f32_bits(s, k));
            fails++;
        }
    }
    return fails;
}

/* the 64-bit count from 32-bit adds with carry */
static int check_add_kept(void)
{
    uint32_t kept[4] = {0xFFFFFFF0u, 7, 5, 0};
    db_add_kept(kept, 0, 0x20);
    db_add_kept(kept, 1, 0xFFFFFFFFu);
    db_add_kept(kept, 1, 0);
    db_add_kept(kept, 0, UINT64_C(0x300000000));
    int ok = kept[0] == 0x10 && kept[1] == 11 && kept[2] == 4 && kept[3] == 1;
    if (!ok) printf("FAIL add_kept: %08x %08x %08x %08x\n", kept[0], kept[1], kept[2], kept[3]);
    return !ok;
}

/* the branch-free conversions against db_math.h's exact ones */
static int check_conversions(void)
{
    int fails = 0;
    for (uint32_t h = 0; h < 65536; h++)
        if (db_vwiden_f16(h) != db_f16_to_f32(h) && fails++ < 5) printf("FAIL widen f16 0x%04x\n", h);
    for (int i = 0; i < 2000000; i++) {
        uint32_t b = (uint32_t)next64();
        if (i < 65536) b = ((uint32_t)i << 16) | (uint32_t)(next64() & 0xFFFF); /* every exponent */
        if (db_vnarrow_f16(b) != db_f32_to_f16(b) && fails++ < 10) printf("FAIL narrow f16 0x%08x\n", b);
        if (db_vnarrow_bf16(b) != db_f32_to_bf16(b) && fails++ < 15) printf("FAIL narrow bf16 0x%08x\n", b);
    }
    return fails;
}

/* db_job_chunks, the one plan of a job's chunks every backend takes, on random shapes and
 * buffer limits: the chunks cover the tensor, each fits the limit (data, mask words, the 8-byte
 * per-sample counts), max_elem/max_samp are the largest chunk's, and fused is one chunk of
 * compat none within DB_DEVICE_SCALE_MAX_SAMPLES. */
static int check_job_chunks(void)
{
    int fails = 0;
    for (int i = 0; i < 3000 && fails < 5; i++) {
        struct db_plan pl;
        memset(&pl, 0, sizeof pl);
        pl.N = 1 + next64() % (i % 4 == 0 ? 20000 : 8);
        pl.C = 1 + next64() % 16;
        pl.H = 1 + next64() % 16;
        pl.W = 1 + next64() % 100;
        pl.D = i % 3 == 0 ? 1 + next64() % 9 : 1; /* DropBlock3D: (d, h) rows */
        if (pl.N * pl.C * pl.D * pl.H * pl.W > 400000) pl.N = 1 + 400000 / (pl.C * pl.D * pl.H * pl.W);
        pl.numel = pl.N * pl.C * pl.D * pl.H * pl.W;
        pl.p.layout = next64() % 2 ? DROPBLOCK_NHWC : DROPBLOCK_NCHW;
        pl.p.dtype = (dropblock_dtype)(next64() % 3);
        pl.keras = next64() % 4 == 0;
        const uint64_t maxbuf = i % 10 == 0 ? UINT64_MAX : 16 + next64() % (i % 3 ? 4096 : 1 << 20);
        const uint64_t max_units = i % 5 == 0 ? 1 + next64() % 7 : 0;
        const uint64_t limit = maxbuf < (UINT64_C(1) << 30) ? maxbuf : UINT64_C(1) << 30;
        const size_t es = dropblock_dtype_size(pl.p.dtype);
        struct db_chunking ck;
        char msg[256];
        if (db_job_chunks(&pl, maxbuf, max_units, &ck, msg, sizeof msg)) {
            /* only where one unit's data (or its mask, or its per-sample counts) cannot fit */
            if (maxbuf == UINT64_MAX || db_unit_elems(&pl) * es + 64 <= limit / 2) {
                printf("FAIL job_chunks %llux%llux%llux%llux%llu limit %llu: %s\n", (unsigned long long)pl.N,
                       (unsigned long long)pl.C, (unsigned long long)pl.D, (unsigned long long)pl.H,
                       (unsigned long long)pl.W, (unsigned long long)maxbuf, msg);
                fails++;
            }
            continue;
        }
        uint64_t me = 0, ms = 0, covered = 0;
        int bad = ck.units != db_units(&pl) || ck.per == 0 || (max_units && ck.per > max_units) ||
                  ck.nchunks != (ck.units + ck.per - 1) / ck.per;
        for (uint64_t q = 0; q < ck.nchunks && !bad; q++) {
            struct db_chunk ch;
            db_job_chunk(&pl, &ck, q, &ch);
            bad = ch.u0 != covered || ch.nelem * es > limit || (ch.nelem + 31) / 32 * 4 > limit ||
                  ch.nsamp * 8 > limit || ch.nsamp > UINT32_MAX;
            covered = ch.u1;
            if (ch.nelem > me) me = ch.nelem;
            if (ch.nsamp > ms) ms = ch.nsamp;
        }
        bad = bad || covered != ck.units || me != ck.max_elem || ms != ck.max_samp || ck.max_words != (me + 31) / 32 ||
              ck.fused != (ck.nchunks == 1 && !pl.keras && ms <= DB_DEVICE_SCALE_MAX_SAMPLES);
        if (bad) {
            printf("FAIL job_chunks %llux%llux%llux%llu limit %llu: per %llu, %llu chunks\n", (unsigned long long)pl.N,
                   (unsigned long long)pl.C, (unsigned long long)pl.H, (unsigned long long)pl.W,
                   (unsigned long long)maxbuf, (unsigned long long)ck.per, (unsigned long long)ck.nchunks);
            fails++;
        }
    }
    return fails;
}

/* db_vapply against db_apply_bits for the scales it takes (0, 1 and normal >= 1), inputs of
 * every class, both keep bits and every dtype */
static int check_vapply(void)
{
    static const uint32_t scales[] = {0, 0x3F800000u, 0x3F8CCCCDu, 0x40400000u, 0x4B000001u, 0x53800000u, 0x7F7FFFFFu};
    int fails = 0;
    for (int dt = 0; dt < 3; dt++)
        for (size_t si = 0; si < sizeof scales / sizeof *scales; si++)
            for (int i = 0; i < 300000; i++) {
                uint32_t x = (uint32_t)next64();
                if (i % 4 == 0) x &= 0x807FFFFFu; /* zeros, subnormals */
                if (i % 4 == 1) x |= 0x7F800000u; /* infinities, NaNs */
                if (dt != 0) x = i < 65536 ? (uint32_t)i : x & 0xFFFFu;
                uint32_t keep = (uint32_t)i & 1u;
                uint32_t want = db_apply_bits(x, scales[si], keep, 0, (uint32_t)dt);
                uint32_t got = db_vapply(x, scales[si], keep, (uint32_t)dt);
                if (db_vbad(x, (uint32_t)dt, 0)) continue; /* left to the fixup */
                if (got != want && fails++ < 20)
                    printf("FAIL vapply dtype %d x 0x%08x s 0x%08x keep %u: 0x%08x, want 0x%08x\n", dt, x, scales[si],
                           keep, got, want);
            }
    return fails;
}

int main(void)
{
    int fails = 0, n = 0;
    static struct test_case cases[TEST_CASES_MAX];
    int count = test_cases_matrix(cases, TEST_CASES_MAX);
    for (int i = 0; i < count; i++) {
        for (size_t v = 0; v < sizeof variants / sizeof *variants; v++) {
            char why[512];
            int ok = test_case_compare(&cases[i], run_passes, (void *)&variants[v], why, sizeof why);
            n++;
            if (!ok) {
                fails++;
                printf("FAIL %s (%s): %s\n", cases[i].name, variants[v].name, why);
            }
        }
    }
    int f;
    n++;
    if ((f = check_ratio())) fails++;
    n++;
    if ((f = check_add_kept())) fails++;
    n++;
    if ((f = check_conversions())) fails++;
    n++;
    if ((f = check_vapply())) fails++;
    n++;
    if ((f = check_job_chunks())) fails++;
    printf("test_passes: %d passed, %d failed\n", n - fails, fails);
    return fails ? 1 : 0;
}
