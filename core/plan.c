/* plan.c: gamma, thresholds, the generic mask rule and the exact scales (docs/semantics.md: "The
 * mask (canonical)", "Scale and output", "The exact keras_cv rules"). */
#include "plan.h"

#include <string.h>

#include "fp.h"
#include "fpenv.h"
#include "msg.h"
#include "philox.h"

typedef unsigned __int128 u128;

float db_gamma3d(float rate, uint64_t D, uint64_t H, uint64_t W, uint64_t bd, uint64_t bh, uint64_t bw)
{
    volatile float g = rate * (float)(D * H * W);
    g = g / (float)(bd * bh * bw);
    g = g / (float)((D - bd + 1) * (H - bh + 1) * (W - bw + 1));
    return g;
}

float db_gamma(float rate, uint64_t H, uint64_t W, uint64_t bh, uint64_t bw)
{
    return db_gamma3d(rate, 1, H, W, 1, bh, bw);
}

uint64_t db_threshold(float g)
{
    /* floor(g * 2^32) is exact in double: g has 24 significant bits */
    double t = (double)g * 4294967296.0;
    if (!(t > 0)) return 0;
    if (t >= 4294967296.0) return UINT64_C(1) << 32;
    return (uint64_t)t;
}

uint32_t db_ratio_f32_bits(uint64_t s, uint64_t k)
{
    if (s == 0 || k == 0) return 0;
    u128 num = s, den = k;
    int e = 0;
    while (num < (den << 23)) {
        num <<= 1;
        e--;
    }
    while (num >= (den << 24)) {
        den <<= 1;
        e++;
    }
    uint64_t m = (uint64_t)(num / den);
    u128 rem = num % den;
    if (2 * rem > den || (2 * rem == den && (m & 1))) m++;
    if (m == (UINT64_C(1) << 24)) {
        m >>= 1;
        e++;
    }
    return (uint32_t)((e + 23 + 127) << 23) | (uint32_t)(m & 0x7FFFFFu);
}

/* float32 of a signed 129-bit integer given as sign and magnitude, round to nearest even */
static float f32_of_signed(int neg, u128 mag)
{
    volatile float f = (float)mag; /* libgcc's __floatuntisf rounds correctly */
    return neg ? -f : f;
}

static void set_u128(uint32_t w[4], u128 v)
{
    for (int i = 0; i < 4; i++) w[i] = (uint32_t)(v >> (32 * i));
}

static uint32_t clip32(uint64_t v, uint64_t lim) { return (uint32_t)(v < lim ? v : lim); }

/* Our semantics (docs/semantics.md): Philox words against a threshold, blocks within the map. */
static void plan_ours(struct db_plan *pl, const dropblock_params *p)
{
    const uint64_t D = pl->D, H = pl->H, W = pl->W, C = pl->C;
    pl->gamma = db_gamma3d(p->rate, D, H, W, pl->bd, pl->bh, pl->bw);
    pl->threshold = db_threshold(pl->gamma);
    pl->wmask = 0xFFFFFFFFu;
    pl->key[0] = (uint32_t)p->seed;
    pl->key[1] = (uint32_t)(p->seed >> 32);
    pl->base[2] = (uint32_t)p->stream;
    pl->base[3] = (uint32_t)(p->stream >> 32);
    pl->sW = 1;
    pl->sH = W;
    pl->sD = H * W;
    pl->sC = (p->share & DROPBLOCK_SHARE_CHANNELS) ? 0 : D * H * W;
    pl->sN = (p->share & DROPBLOCK_SHARE_BATCH) ? 0 : C * D * H * W;
    pl->dlo = 0;
    pl->dhi = (int64_t)(D - pl->bd);
    pl->dup = (uint32_t)(pl->bd - 1);
    pl->ilo = 0;
    pl->ihi = (int64_t)(H - pl->bh);
    pl->jlo = 0;
    pl->jhi = (int64_t)(W - pl->bw);
    pl->up = (uint32_t)(pl->bh - 1);
    pl->down = 0;
    pl->left = (uint32_t)(pl->bw - 1);
    pl->right = 0;
}

void db_keras3_key_counter(uint64_t seed, uint64_t call, uint32_t key[2], uint32_t base[4])
{
    /* Keras 3's TensorFlow backend: SeedGenerator(seed) holds int64 [seed, call]; _cast_seed
     * takes each mod (2^31 - 1) - 1 (tf.math.floormod, then int32); stateless_uniform's Philox
     * mixes that pair with a fixed key (docs/semantics.md, "compat keras3") */
    const int64_t m = INT64_C(2147483646);
    const int64_t si = (int64_t)seed, ci = (int64_t)call;
    const uint64_t s0 = (uint64_t)(((si % m) + m) % m), s1 = (uint64_t)(((ci % m) + m) % m);
    const uint32_t mixkey[2] = {0x3EC8F720u, 0x02461E29u};
    const uint32_t seedctr[4] = {(uint32_t)s0, (uint32_t)(s0 >> 32), (uint32_t)s1, (uint32_t)(s1 >> 32)};
    uint32_t mix[4];
    db_philox4x32_10(seedctr, mixkey, mix);
    key[0] = mix[0];
    key[1] = mix[1];
    base[0] = base[1] = 0;
    base[2] = mix[2];
    base[3] = mix[3];
}

/* keras_cv compatibility: its gamma, its uniform floats, its centres and SAME-padded window. */
static int plan_keras(struct db_plan *pl, const dropblock_params *p, char *msg, size_t len)
{
    const uint64_t H = pl->H, W = pl->W, C = pl->C;
    /* keras_cv: gamma's area term uses the clamped block, the valid-count term the raw one */
    const uint64_t bh = p->block[0], bw = p->block[1];
    const uint64_t dh = H + 1, dw = W + 1; /* (W - bw + 1) may be negative or huge */
    const int neg_w = bw > dw, neg_h = bh > dh;
    const u128 mag_w = neg_w ? bw - dw : dw - bw, mag_h = neg_h ? bh - dh : dh - bh;
    if (!pl->identity && (mag_w == 0 || mag_h == 0)) {
        db_msg(msg, len,
               "compat %s: block %llux%llu on a %llux%llu map makes keras-cv divide by zero "
               "((W-bw+1)*(H-bh+1) = 0); use compat none, which drops the whole map",
               dropblock_compat_name(p->compat), (unsigned long long)bh, (unsigned long long)bw, (unsigned long long)H,
               (unsigned long long)W);
        return DROPBLOCK_EINVAL;
    }
    volatile float g = p->rate * (float)(W * H);
    g = g / (float)(pl->bh * pl->bw);
    g = g / f32_of_signed(neg_w != neg_h, mag_w * mag_h);
    volatile float keep = 1.0f - g;
    pl->gamma = g;
    pl->keras_keep = keep;
    /* fires iff f32(keep + m * 2^-23) < 1 with m = word & 0x7FFFFF; monotone in m */
    uint64_t lo = 0, hi = UINT64_C(1) << 23; /* answer in [lo, hi] */
    while (lo < hi) {
        uint64_t mid = (lo + hi) / 2;
        volatile float s = keep + (float)mid * 0x1p-23f;
        if (s < 1.0f) lo = mid + 1;
        else hi = mid;
    }
    pl->threshold = lo;
    pl->wmask = 0x7FFFFFu;
    if (p->compat == DROPBLOCK_COMPAT_KERAS3) {
        db_keras3_key_counter(p->seed, p->stream, pl->key, pl->base);
    } else {
        const u128 pos = p->has_position ? (u128)p->position : (u128)p->stream * pl->numel;
        set_u128(pl->base, (u128)p->seed + pos * 256u);
    }
    pl->sC = 1;
    pl->sW = C;
    pl->sH = W * C;
    pl->sN = H * W * C;
    /* keras-cv's valid centres, with its h < W comparison */
    pl->ilo = (int64_t)(pl->bh / 2);
    int64_t hend = (int64_t)W - (int64_t)((pl->bh - 1) / 2);
    if (hend > (int64_t)H) hend = (int64_t)H;
    pl->ihi = hend - 1;
    pl->jlo = (int64_t)(pl->bw / 2);
    pl->jhi = (int64_t)W - (int64_t)((pl->bw - 1) / 2) - 1;
    /* min-pool window of the raw block with SAME padding: rows h-ph .. h-ph+bh-1 */
    uint64_t ph = (bh - 1) / 2, pw = (bw - 1) / 2;
    pl->up = clip32(ph, H);
    pl->down = clip32(bh - 1 - ph, H);
    pl->left = clip32(pw, W);
    pl->right = clip32(bw - 1 - pw, W);
    return DROPBLOCK_OK;
}

static int plan_init(struct db_plan *pl, const dropblock_params *p, char *msg, size_t len)
{
    memset(pl, 0, sizeof *pl);
    pl->p = *p;
    pl->N = p->shape[0];
    pl->C = p->shape[1];
    pl->D = p->depth > 1 ? p->depth : 1;
    pl->H = p->shape[2];
    pl->W = p->shape[3];
    pl->numel = pl->N * pl->C * pl->D * pl->H * pl->W;
    pl->bd = p->block_depth > 1 ? (p->block_depth < pl->D ? p->block_depth : pl->D) : 1;
    pl->bh = p->block[0] < pl->H ? p->block[0] : pl->H;
    pl->bw = p->block[1] < pl->W ? p->block[1] : pl->W;
    pl->identity = !p->training || p->rate == 0.0f;
    pl->keras = p->compat != DROPBLOCK_COMPAT_NONE; /* keras3: the same rules, another noise */
    if (!pl->keras) {
        plan_ours(pl, p);
        return DROPBLOCK_OK;
    }
    return plan_keras(pl, p, msg, len);
}

static int plan_scales(const struct db_plan *pl, const uint64_t *kept, uint32_t *scale_bits, dropblock_result *res)
{
    const dropblock_params *p = &pl->p;
    uint64_t K = 0;
    for (uint64_t n = 0; n < pl->N; n++) K += kept[n];
    res->kept = K;
    res->total = pl->numel;
    if (pl->keras) {
        if (K == 0) {
            db_msg(res->message, sizeof res->message,
                   "compat %s: every unit was dropped, where keras-cv returns NaN; use compat none",
                   dropblock_compat_name(p->compat));
            return DROPBLOCK_EINVAL;
        }
        volatile float percent = (float)K / (float)pl->numel;
        uint32_t pb = db_bits(percent), d = pb;
        if (p->dtype == DROPBLOCK_F16) d = db_ref_f16_to_f32(db_ref_f32_to_f16(pb));
        if (p->dtype == DROPBLOCK_BF16) d = db_ref_bf16_to_f32(db_ref_f32_to_bf16(pb));
        if ((d & 0x7FFFFFFFu) == 0) {
            db_msg(res->message, sizeof res->message,
                   "compat %s: the kept fraction %g rounds to 0 in f16, where keras-cv divides by zero",
                   dropblock_compat_name(p->compat), (double)percent);
            return DROPBLOCK_EINVAL;
        }
        for (uint64_t n = 0; n < pl->N; n++) scale_bits[n] = d;
        res->scale_bits = pb;
        return DROPBLOCK_OK;
    }
    const uint64_t per = pl->C * pl->D * pl->H * pl->W;
    for (uint64_t n = 0; n < pl->N; n++) {
        uint32_t s;
        if (p->normalize == DROPBLOCK_NORMALIZE_NONE) s = 0x3F800000u;
        else if (p->normalize == DROPBLOCK_NORMALIZE_GLOBAL) s = db_ratio_f32_bits(pl->numel, K);
        else s = db_ratio_f32_bits(per, kept[n]);
        scale_bits[n] = s;
    }
    res->scale_bits = scale_bits[0];
    return DROPBLOCK_OK;
}

void db_mask_export_flat(const struct db_plan *pl, const uint32_t *words, uint64_t e0, uint64_t nelem, uint8_t *out)
{
    const uint64_t C = pl->C, D = pl->D, H = pl->H, W = pl->W;
    uint64_t k = 0;
    if (pl->p.layout == DROPBLOCK_NCHW && e0 % 8 == 0) {
        /* the physical order is the exported one: whole bytes, bit k of word k / 32 being bit
         * k % 8 of byte k / 8 of the word's little-endian bytes */
        for (; k + 32 <= nelem; k += 32)
            for (int b = 0; b < 4; b++) out[(e0 + k) / 8 + (uint64_t)b] = (uint8_t)(words[k >> 5] >> (8 * b));
    }
    for (; k < nelem; k++) {
        if (!((words[k >> 5] >> (k & 31)) & 1u)) continue;
        uint64_t p = e0 + k, bit = p; /* NCHW: the physical order is the exported one */
        if (pl->p.layout == DROPBLOCK_NHWC) {
            /* p = (((n D + d) H + h) W + w) C + c */
            uint64_t c = p % C, t = p / C, w = t % W, ndh = t / W, h = ndh % H, nd = ndh / H;
            bit = (((nd / D * C + c) * D + nd % D) * H + h) * W + w;
        }
        out[bit >> 3] |= (uint8_t)(1u << (bit & 7));
    }
}

void db_identity(const struct db_plan *pl, const void *in, void *out, void *mask, dropblock_result *res)
{
    uint64_t bytes = pl->numel * dropblock_dtype_size(pl->p.dtype);
    if (in != out) memmove(out, in, bytes);
    if (mask) {
        uint64_t full = pl->numel / 8;
        memset(mask, 0xFF, full);
        if (pl->numel % 8) ((uint8_t *)mask)[full] = (uint8_t)((1u << (pl->numel % 8)) - 1);
    }
    res->kept = res->total = pl->numel;
    res->scale_bits = 0x3F800000u;
}

int db_plan_init(struct db_plan *pl, const dropblock_params *p, char *msg, size_t len)
{
    db_fpenv fe;
    db_fpenv_enter(&fe);
    int rc = plan_init(pl, p, msg, len);
    db_fpenv_leave(&fe);
    return rc;
}

int db_plan_scales(const struct db_plan *pl, const uint64_t *kept, uint32_t *scale_bits, dropblock_result *res)
{
    db_fpenv fe;
    db_fpenv_enter(&fe);
    int rc = plan_scales(pl, kept, scale_bits, res);
    db_fpenv_leave(&fe);
    return rc;
}
