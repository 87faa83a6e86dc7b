/* reference.c: DropBlock2D on the CPU, literally as docs/semantics.md says it. */
#include "reference.h"

#include <stdlib.h>
#include <string.h>

#include "fp.h"
#include "fpenv.h"
#include "msg.h"
#include "philox.h"
#include "plan.h"

/* Philox words with the last block cached: consecutive candidates share a call. */
struct word_source {
    uint32_t key[2], base[4];
    uint64_t blk;
    uint32_t out[4];
    int have;
};

static uint32_t word_at(struct word_source *s, uint64_t e)
{
    uint64_t blk = e >> 2;
    if (!s->have || blk != s->blk) {
        uint32_t ctr[4];
        db_ref_ctr_add(s->base, blk, ctr);
        db_philox4x32_10(ctr, s->key, s->out);
        s->blk = blk;
        s->have = 1;
    }
    return s->out[e & 3];
}

/* Summed-area table of fired candidates of one plane: sat[(i+1)*(W+1) + j+1] = fired in [0..i]x[0..j]. */
static uint32_t rect_sum(const uint32_t *sat, uint64_t W, int64_t i0, int64_t i1, int64_t j0, int64_t j1)
{
    if (i1 < i0 || j1 < j0) return 0;
    const uint64_t s = W + 1;
    return sat[(i1 + 1) * s + j1 + 1] - sat[i0 * s + j1 + 1] - sat[(i1 + 1) * s + j0] + sat[i0 * s + j0];
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Fills keep bits (export layout) for every plane; returns kept per sample. */
static void reference_mask(const struct db_plan *pl, uint8_t *keep, uint64_t *kept_n, uint32_t *sat)
{
    const dropblock_params *p = &pl->p;
    const uint64_t N = pl->N, C = pl->C, H = pl->H, W = pl->W, S = W + 1;
    const uint64_t bh = pl->bh, bw = pl->bw;
    struct word_source src;
    memset(&src, 0, sizeof src);
    float keep_rate = 0;
    uint64_t T = 0;
    if (pl->keras && p->compat == DROPBLOCK_COMPAT_KERAS3) {
        /* docs/semantics.md, "compat keras3": tf.random.stateless_uniform with seed
         * [seed, call] each mod 2147483646 */
        db_keras3_key_counter(p->seed, p->stream, src.key, src.base);
        keep_rate = pl->keras_keep;
    } else if (pl->keras) {
        /* docs/semantics.md, "The exact keras_cv rules":
         * counter = seed + 256 * position + f/4 (128-bit), key 0; position = stream * numel */
        unsigned __int128 pos =
            p->has_position ? (unsigned __int128)p->position : (unsigned __int128)p->stream * pl->numel;
        unsigned __int128 base = (unsigned __int128)p->seed + pos * 256u;
        for (int i = 0; i < 4; i++) src.base[i] = (uint32_t)(base >> (32 * i));
        keep_rate = pl->keras_keep;
    } else {
        src.key[0] = (uint32_t)p->seed;
        src.key[1] = (uint32_t)(p->seed >> 32);
        src.base[2] = (uint32_t)p->stream;
        src.base[3] = (uint32_t)(p->stream >> 32);
        T = db_threshold(db_gamma(p->rate, H, W, bh, bw));
    }
    /* keras-cv's SAME min-pool over the raw block: rows h-ph .. h-ph+bh-1, clipped to the map */
    const uint64_t ph = (p->block[0] - 1) / 2, pw = (p->block[1] - 1) / 2;
    const int64_t kup = (int64_t)(ph < H ? ph : H),
                  kdown = (int64_t)(p->block[0] - 1 - ph < H ? p->block[0] - 1 - ph : H);
    const int64_t kleft = (int64_t)(pw < W ? pw : W),
                  kright = (int64_t)(p->block[1] - 1 - pw < W ? p->block[1] - 1 - pw : W);
    for (uint64_t n = 0; n < N; n++) {
        kept_n[n] = 0;
        for (uint64_t c = 0; c < C; c++) {
            memset(sat, 0, S * sizeof *sat); /* row 0 */
            for (uint64_t i = 0; i < H; i++) {
                uint32_t run = 0;
                sat[(i + 1) * S] = 0;
                for (uint64_t j = 0; j < W; j++) {
                    int fired = 0;
                    if (pl->keras) {
                        int valid = bw / 2 <= j && j < W - (bw - 1) / 2 && bh / 2 <= i &&
                                    (int64_t)i < (int64_t)W - (int64_t)((bh - 1) / 2);
                        uint64_t f = ((n * H + i) * W + j) * C + c;
                        uint32_t m = word_at(&src, f) & 0x7FFFFFu; /* Uint32ToFloat(w) = m * 2^-23 */
                        volatile float a = (valid ? 0.0f : 1.0f) + keep_rate;
                        volatile float s = a + (float)m * 0x1p-23f;
                        fired = !(s >= 1.0f);
                    } else if (i <= H - bh && j <= W - bw) {
                        uint64_t nn = (p->share & DROPBLOCK_SHARE_BATCH) ? 0 : n;
                        uint64_t cc = (p->share & DROPBLOCK_SHARE_CHANNELS) ? 0 : c;
                        uint64_t e = ((nn * C + cc) * H + i) * W + j;
                        fired = (uint64_t)word_at(&src, e) < T;
                    }
                    run += (uint32_t)fired;
                    sat[(i + 1) * S + j + 1] = sat[i * S + j + 1] + run;
                }
            }
            uint64_t bit = (n * C + c) * H * W, kept = 0;
            for (uint64_t h = 0; h < H; h++)
                for (uint64_t w = 0; w < W; w++, bit++) {
                    uint32_t hits;
                    if (pl->keras) /* pooled(h,w) = min of the pattern over rows h-ph .. h-ph+bh-1 */
                        hits = rect_sum(sat, W, max64((int64_t)h - kup, 0), min64((int64_t)h + kdown, (int64_t)H - 1),
                                        max64((int64_t)w - kleft, 0), min64((int64_t)w + kright, (int64_t)W - 1));
                    else /* dropped by a fired corner (i, j) with i <= h < i + bh, j <= w < j + bw */
                        hits = rect_sum(sat, W, max64((int64_t)h - (int64_t)bh + 1, 0), (int64_t)h,
                                        max64((int64_t)w - (int64_t)bw + 1, 0), (int64_t)w);
                    if (!hits) {
                        keep[bit >> 3] |= (uint8_t)(1u << (bit & 7));
                        kept++;
                    }
                }
            kept_n[n] += kept;
        }
    }
}

static uint32_t load_x(const void *buf, dropblock_dtype t, uint64_t i)
{
    if (t == DROPBLOCK_F32) {
        uint32_t b;
        memcpy(&b, (const char *)buf + 4 * i, 4);
        return b;
    }
    uint16_t h;
    memcpy(&h, (const char *)buf + 2 * i, 2);
    return t == DROPBLOCK_F16 ? db_ref_f16_to_f32(h) : db_ref_bf16_to_f32(h);
}

static uint32_t round_to(dropblock_dtype t, uint32_t b)
{
    if (t == DROPBLOCK_F16) return db_ref_f16_to_f32(db_ref_f32_to_f16(b));
    if (t == DROPBLOCK_BF16) return db_ref_bf16_to_f32(db_ref_f32_to_bf16(b));
    return b;
}

static void store_y(void *buf, dropblock_dtype t, uint64_t i, uint32_t b)
{
    if (t == DROPBLOCK_F32) {
        memcpy((char *)buf + 4 * i, &b, 4);
        return;
    }
    uint16_t h = t == DROPBLOCK_F16 ? db_ref_f32_to_f16(b) : db_ref_f32_to_bf16(b);
    memcpy((char *)buf + 2 * i, &h, 2);
}

static int reference_run(const dropblock_params *p, const void *in, void *out, void *mask, uint32_t *scales,
                         dropblock_result *res)
{
    struct db_plan pl;
    int rc = dropblock_params_validate(p, res->message, sizeof res->message);
    if (rc) return rc;
    if ((rc = db_plan_init(&pl, p, res->message, sizeof res->message))) return rc;
    if (pl.identity) {
        db_identity(&pl, in, out, mask, res);
        if (scales)
            for (uint64_t n = 0; n < pl.N; n++) scales[n] = 0x3F800000u;
        return DROPBLOCK_OK;
    }
    const uint64_t mbytes = dropblock_mask_bytes(p);
    uint8_t *keep = calloc(mbytes ? mbytes : 1, 1);
    uint64_t *kept_n = calloc(pl.N, sizeof *kept_n);
    uint32_t *scale = calloc(pl.N, sizeof *scale);
    uint32_t *sat = malloc((pl.H + 1) * (pl.W + 1) * sizeof *sat);
    if (!keep || !kept_n || !scale || !sat) {
        free(keep);
        free(kept_n);
        free(scale);
        free(sat);
        db_msg(res->message, sizeof res->message, "out of host memory for a %llu-element job",
               (unsigned long long)pl.numel);
        return DROPBLOCK_EEXHAUSTED;
    }
    reference_mask(&pl, keep, kept_n, sat);
    rc = db_plan_scales(&pl, kept_n, scale, res);
    if (!rc) {
        const uint64_t N = pl.N, C = pl.C, H = pl.H, W = pl.W;
        const dropblock_dtype t = p->dtype;
        for (uint64_t n = 0; n < N; n++)
            for (uint64_t c = 0; c < C; c++)
                for (uint64_t h = 0; h < H; h++)
                    for (uint64_t w = 0; w < W; w++) {
                        uint64_t lbit = ((n * C + c) * H + h) * W + w;
                        uint64_t at = p->layout == DROPBLOCK_NCHW ? lbit : ((n * H + h) * W + w) * C + c;
                        uint32_t m = ((keep[lbit >> 3] >> (lbit & 7)) & 1u) ? 0x3F800000u : 0u;
                        uint32_t x = load_x(in, t, at), v;
                        if (pl.keras && (x & 0x7F800000u) == 0u) x &= 0x80000000u; /* TF's DAZ */
                        if (pl.keras) v = round_to(t, db_div32(x, scale[n]));
                        else v = db_mul32(x, scale[n]);
                        store_y(out, t, at, db_mul32(v, m));
                    }
        if (mask) memcpy(mask, keep, mbytes);
        if (scales) memcpy(scales, scale, pl.N * sizeof *scale);
    }
    free(keep);
    free(kept_n);
    free(scale);
    free(sat);
    return rc;
}

/* DropBlock3D (docs/semantics.md, "DropBlock3D"), literally: boxes of fired corners cleared from
 * an all-kept mask, then the scales and y = (x * scale) * m. WORK IN PROGRESS (issue 17): the
 * oracle the backends' 3-D passes will be checked against. */
static int reference_run3d(const dropblock_params *p, const void *in, void *out, void *mask, uint32_t *scales,
                           dropblock_result *res)
{
    int rc = dropblock_params_validate(p, res->message, sizeof res->message);
    if (rc) return rc;
    const uint64_t N = p->shape[0], C = p->shape[1], D = p->depth, H = p->shape[2], W = p->shape[3];
    const uint64_t total = N * C * D * H * W, per = C * D * H * W, mbytes = dropblock_mask_bytes(p);
    const uint64_t bd = (p->block_depth ? p->block_depth : 1) < D ? (p->block_depth ? p->block_depth : 1) : D;
    const uint64_t bh = p->block[0] < H ? p->block[0] : H, bw = p->block[1] < W ? p->block[1] : W;
    const dropblock_dtype t = p->dtype;
    uint8_t *keep = malloc(mbytes);
    uint64_t *kept_n = calloc(N, sizeof *kept_n);
    uint32_t *scale = calloc(N, sizeof *scale);
    if (!keep || !kept_n || !scale) {
        free(keep);
        free(kept_n);
        free(scale);
        db_msg(res->message, sizeof res->message, "out of host memory for the reference");
        return DROPBLOCK_EEXHAUSTED;
    }
    memset(keep, 0xFF, mbytes);
    if (total % 8) keep[mbytes - 1] = (uint8_t)((1u << (total % 8)) - 1);
    if (p->training && p->rate != 0.0f) {
        volatile float g = p->rate * (float)(D * H * W);
        g = g / (float)(bd * bh * bw);
        g = g / (float)((D - bd + 1) * (H - bh + 1) * (W - bw + 1));
        const uint64_t T = db_threshold(g);
        struct word_source src;
        memset(&src, 0, sizeof src);
        src.key[0] = (uint32_t)p->seed;
        src.key[1] = (uint32_t)(p->seed >> 32);
        src.base[2] = (uint32_t)p->stream;
        src.base[3] = (uint32_t)(p->stream >> 32);
        for (uint64_t n = 0; n < N; n++)
            for (uint64_t c = 0; c < C; c++) {
                const uint64_t nn = (p->share & DROPBLOCK_SHARE_BATCH) ? 0 : n;
                const uint64_t cc = (p->share & DROPBLOCK_SHARE_CHANNELS) ? 0 : c;
                for (uint64_t d0 = 0; d0 + bd <= D; d0++)
                    for (uint64_t i = 0; i + bh <= H; i++)
                        for (uint64_t j = 0; j + bw <= W; j++) {
                            const uint64_t e = (((nn * C + cc) * D + d0) * H + i) * W + j;
                            if ((uint64_t)word_at(&src, e) >= T) continue;
                            for (uint64_t d = d0; d < d0 + bd; d++)
                                for (uint64_t h = i; h < i + bh; h++)
                                    for (uint64_t w = j; w < j + bw; w++) {
                                        const uint64_t bit = (((n * C + c) * D + d) * H + h) * W + w;
                                        keep[bit >> 3] &= (uint8_t) ~(1u << (bit & 7));
                                    }
                        }
            }
    }
    for (uint64_t bit = 0; bit < total; bit++)
        if ((keep[bit >> 3] >> (bit & 7)) & 1u) kept_n[bit / per]++;
    uint64_t K = 0;
    for (uint64_t n = 0; n < N; n++) K += kept_n[n];
    const int identity = !p->training || p->rate == 0.0f;
    for (uint64_t n = 0; n < N; n++)
        scale[n] = identity || p->normalize == DROPBLOCK_NORMALIZE_NONE ? 0x3F800000u
                   : p->normalize == DROPBLOCK_NORMALIZE_GLOBAL         ? db_ratio_f32_bits(total, K)
                                                                        : db_ratio_f32_bits(per, kept_n[n]);
    for (uint64_t n = 0; n < N; n++)
        for (uint64_t c = 0; c < C; c++)
            for (uint64_t d = 0; d < D; d++)
                for (uint64_t h = 0; h < H; h++)
                    for (uint64_t w = 0; w < W; w++) {
                        const uint64_t lbit = (((n * C + c) * D + d) * H + h) * W + w;
                        const uint64_t at =
                            p->layout == DROPBLOCK_NCHW ? lbit : (((n * D + d) * H + h) * W + w) * C + c;
                        if (identity) continue; /* copied whole below */
                        const uint32_t m = ((keep[lbit >> 3] >> (lbit & 7)) & 1u) ? 0x3F800000u : 0u;
                        store_y(out, t, at, db_mul32(db_mul32(load_x(in, t, at), scale[n]), m));
                    }
    if (identity && out != in) memmove(out, in, total * dropblock_dtype_size(t)); /* the bits, NaN payloads too */
    res->kept = K;
    res->total = total;
    res->scale_bits = scale[0];
    if (mask) memcpy(mask, keep, mbytes);
    if (scales) memcpy(scales, scale, N * sizeof *scale);
    free(keep);
    free(kept_n);
    free(scale);
    return DROPBLOCK_OK;
}

int db_reference_run(const dropblock_params *p, const void *in, void *out, void *mask, uint32_t *scales,
                     dropblock_result *res)
{
    db_fpenv fe;
    db_fpenv_enter(&fe);
    int rc =
        p->depth > 1 ? reference_run3d(p, in, out, mask, scales, res) : reference_run(p, in, out, mask, scales, res);
    db_fpenv_leave(&fe);
    return rc;
}

/* TensorFlow's Uint32ToFloat: the low 23 bits as the mantissa of [1, 2), minus 1 (exact). */
static uint32_t uint32_to_float_bits(uint32_t u)
{
    volatile float f = db_f32(0x3F800000u | (u & 0x7FFFFFu)) - 1.0f;
    return db_bits(f);
}

void db_tf_uniform(uint64_t s0, uint64_t s1, uint64_t n, uint32_t *out)
{
    const uint32_t mixkey[2] = {0x3EC8F720u, 0x02461E29u};
    const uint32_t seedctr[4] = {(uint32_t)s0, (uint32_t)(s0 >> 32), (uint32_t)s1, (uint32_t)(s1 >> 32)};
    uint32_t mix[4];
    db_philox4x32_10(seedctr, mixkey, mix);
    const uint32_t key[2] = {mix[0], mix[1]}, base[4] = {0, 0, mix[2], mix[3]};
    for (uint64_t blk = 0; blk * 4 < n; blk++) {
        uint32_t ctr[4], w[4];
        db_ref_ctr_add(base, blk, ctr);
        db_philox4x32_10(ctr, key, w);
        for (int k = 0; k < 4 && blk * 4 + k < n; k++) out[blk * 4 + k] = uint32_to_float_bits(w[k]);
    }
}

int db_fill_tf_uniform(dropblock_dtype t, uint64_t s0, uint64_t s1, uint64_t n, void *buf)
{
    if (t == DROPBLOCK_F32) {
        db_tf_uniform(s0, s1, n, buf);
        return DROPBLOCK_OK;
    }
    uint32_t *all = malloc(n ? n * 4 : 4);
    if (!all) return DROPBLOCK_EEXHAUSTED;
    db_tf_uniform(s0, s1, n, all);
    for (uint64_t i = 0; i < n; i++) store_y(buf, t, i, all[i]);
    free(all);
    return DROPBLOCK_OK;
}
