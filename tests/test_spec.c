/* test_spec: properties docs/semantics.md states outright, checked on the CPU reference.
 * (The GPU backends are held to the reference bit for bit by test_backends.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp.h"
#include "plan.h"
#include "reference.h"
#include "check.h"

static int passed, failed;

/* docs/semantics.md, "Fixed test vectors": tf.random.stateless_uniform((1,4,4,1), seed=[0,1]) */
static void test_tf_uniform_matches_spec(void)
{
    static const double doc[16] = {0.08216608, 0.40928006, 0.39318466, 0.3162533,  0.34717774, 0.73199546,
                                   0.56369007, 0.9769211,  0.55243933, 0.13101244, 0.2941643,  0.5130266,
                                   0.38977218, 0.80855536, 0.6040567,  0.10502195};
    uint32_t got[16];
    db_tf_uniform(0, 1, 16, got);
    for (int i = 0; i < 16; i++)
        CHECK(fabs((double)db_f32(got[i]) - doc[i]) <= 1e-7, "value %d: %.9g, spec %.9g", i, (double)db_f32(got[i]),
              doc[i]);
}

/* docs/semantics.md, "Fixed test vectors": 1x1x7x7, rate 1, block 7 -> all zeros, K = 0, scale 0 */
static void test_full_block_rate_one_gives_zeros(void)
{
    dropblock_params p = tu_params(1, 1, 7, 7, 1.0f, 7, 7);
    float x[49], y[49];
    for (int i = 0; i < 49; i++) x[i] = 1.0f + (float)i;
    dropblock_result r;
    memset(&r, 0, sizeof r);
    int rc = db_reference_run(&p, x, y, NULL, NULL, &r);
    CHECK(rc == 0, "rc %d: %s", rc, r.message);
    CHECK(r.kept == 0 && r.total == 49 && r.scale_bits == 0, "K %llu S %llu scale 0x%08x", (unsigned long long)r.kept,
          (unsigned long long)r.total, r.scale_bits);
    int zeros = 0;
    for (int i = 0; i < 49; i++) zeros += db_bits(y[i]) == 0;
    CHECK(zeros == 49, "%d of 49 outputs are +0", zeros);
}

/* Drop fraction of 14x14 maps, block 7, rate 0.1 over many seeds: 0.093 +- 0.005 (the valid
 * region geometry of the paper and torchvision). */
static void test_drop_fraction_matches_valid_region_geometry(void)
{
    dropblock_params p = tu_params(8, 64, 14, 14, 0.1f, 7, 7);
    uint64_t n = dropblock_numel(&p), kept = 0, total = 0;
    float *x = malloc(n * 4);
    for (uint64_t i = 0; i < n; i++) x[i] = 1.0f;
    for (uint64_t seed = 0; seed < 16; seed++) {
        dropblock_result r;
        memset(&r, 0, sizeof r);
        p.seed = seed * 7919 + 1;
        if (db_reference_run(&p, x, x, NULL, NULL, &r)) {
            CHECK(0, "run failed: %s", r.message);
            break;
        }
        for (uint64_t i = 0; i < n; i++) x[i] = 1.0f;
        kept += r.kept;
        total += r.total;
    }
    double drop = 1.0 - (double)kept / (double)total;
    printf("drop fraction, 14x14 maps, block 7, rate 0.1: %.4f over %llu elements\n", drop, (unsigned long long)total);
    CHECK(fabs(drop - 0.093) <= 0.005, "drop fraction %.4f over %llu elements", drop, (unsigned long long)total);
    free(x);
}

/* Every dropped element lies in some whole bh' x bw' block inside the map that is entirely
 * dropped: dropped regions are unions of whole blocks. */
static void test_dropped_regions_are_unions_of_blocks(void)
{
    static const uint64_t shapes[][4] = {{14, 14, 7, 7}, {9, 13, 2, 5}, {10, 10, 4, 4}, {5, 6, 7, 9}, {1, 9, 1, 3}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const uint64_t H = shapes[s][0], W = shapes[s][1];
        dropblock_params p = tu_params(2, 8, H, W, 0.3f, shapes[s][2], shapes[s][3]);
        const uint64_t bh = p.block[0] < H ? p.block[0] : H, bw = p.block[1] < W ? p.block[1] : W;
        uint64_t n = dropblock_numel(&p);
        float *x = calloc(n, 4);
        uint8_t *mask = calloc((n + 7) / 8, 1);
        int bad = 0, dropped = 0;
        for (uint64_t seed = 0; seed < 8 && !bad; seed++) {
            dropblock_result r;
            memset(&r, 0, sizeof r);
            p.seed = seed;
            if (db_reference_run(&p, x, x, mask, NULL, &r)) {
                bad = 1;
                break;
            }
            for (uint64_t pl = 0; pl < 16 && !bad; pl++) {
#define KEPT(h, w) ((mask[(pl * H * W + (h)*W + (w)) >> 3] >> ((pl * H * W + (h)*W + (w)) & 7)) & 1)
                for (uint64_t h = 0; h < H; h++)
                    for (uint64_t w = 0; w < W; w++) {
                        if (KEPT(h, w)) continue;
                        dropped++;
                        int covered = 0;
                        for (uint64_t i = h + 1 >= bh ? h + 1 - bh : 0; i <= h && i + bh <= H && !covered; i++)
                            for (uint64_t j = w + 1 >= bw ? w + 1 - bw : 0; j <= w && j + bw <= W && !covered; j++) {
                                int all = 1;
                                for (uint64_t a = 0; a < bh && all; a++)
                                    for (uint64_t b = 0; b < bw && all; b++) all = !KEPT(i + a, j + b);
                                covered = all;
                            }
                        if (!covered) bad = 1;
                    }
#undef KEPT
            }
        }
        CHECK(!bad && dropped > 0, "map %llux%llu block %llux%llu: %s (%d dropped)", (unsigned long long)H,
              (unsigned long long)W, (unsigned long long)bh, (unsigned long long)bw,
              bad ? "a dropped element is in no whole dropped block" : "nothing dropped", dropped);
        free(x);
        free(mask);
    }
}

static uint64_t rnd(uint64_t *state, uint64_t m)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (*state >> 33) % m;
}

/* No NaN or Inf from finite input, whatever the valid fields (rate 1, block >= map, all
 * dropped, sample normalisation with empty samples, keras_cv...). */
static void test_no_nan_or_inf_from_finite_input(void)
{
    uint64_t state = 12345;
    int cases = 0, bad = 0;
    for (int t = 0; t < 400; t++) {
#define RND(m) rnd(&state, (m))
        uint64_t n_ = 1 + RND(3), c_ = 1 + RND(4), h_ = 1 + RND(12), w_ = 1 + RND(12), bh_ = 1 + RND(15),
                 bw_ = 1 + RND(15);
        dropblock_params p = tu_params(n_, c_, h_, w_, 0, bh_, bw_);
        static const float rates[] = {0.0f, 0.05f, 0.1f, 0.5f, 0.9f, 1.0f};
        p.rate = rates[RND(6)];
        p.layout = (dropblock_layout)RND(2);
        p.dtype = (dropblock_dtype)RND(3);
        p.normalize = (dropblock_normalize)RND(3);
        p.share = (unsigned)RND(4);
        p.seed = RND(1000000);
        if (RND(4) == 0) {
            p.compat = DROPBLOCK_COMPAT_KERAS_CV;
            p.normalize = DROPBLOCK_NORMALIZE_GLOBAL;
            p.share = 0;
        }
        if (dropblock_params_validate(&p, NULL, 0)) continue;
        uint64_t n = dropblock_numel(&p);
        size_t es = dropblock_dtype_size(p.dtype);
        void *x = malloc(n * es), *y = malloc(n * es);
        db_fill_tf_uniform(p.dtype, (uint64_t)t, 3, n, x);
        dropblock_result r;
        memset(&r, 0, sizeof r);
        int rc = db_reference_run(&p, x, y, NULL, NULL, &r);
        if (rc == 0) {
            cases++;
            for (uint64_t i = 0; i < n; i++) {
                uint32_t b = 0;
                memcpy(&b, (char *)y + i * es, es);
                if (p.dtype != DROPBLOCK_F32)
                    b = p.dtype == DROPBLOCK_F16 ? db_ref_f16_to_f32((uint16_t)b) : db_ref_bf16_to_f32((uint16_t)b);
                if ((b & 0x7F800000u) == 0x7F800000u) {
                    bad++;
                    printf("  non-finite output in trial %d\n", t);
                    break;
                }
            }
        } else if (p.compat != DROPBLOCK_COMPAT_KERAS_CV) {
            bad++;
            printf("  valid request failed: %s\n", r.message);
        }
        free(x);
        free(y);
#undef RND
    }
    CHECK(bad == 0 && cases > 200, "%d bad of %d valid cases", bad, cases);
}

static void expect_invalid(dropblock_params p, const char *field)
{
    char msg[256] = "";
    struct db_plan pl;
    int rc = dropblock_params_validate(&p, msg, sizeof msg);
    if (rc == 0) rc = db_plan_init(&pl, &p, msg, sizeof msg);
    CHECK(rc == DROPBLOCK_EINVAL && strstr(msg, field), "expected a rejection naming \"%s\", got rc %d \"%s\"", field,
          rc, msg);
}

static void test_every_invalid_field_is_rejected(void)
{
    dropblock_params p, ok = tu_params(2, 3, 8, 8, 0.1f, 3, 3);
    CHECK(dropblock_params_validate(&ok, NULL, 0) == 0, "a valid request was rejected");
    /* clang-format off */
    for (int d = 0; d < 4; d++) { p = ok; p.shape[d] = 0; expect_invalid(p, "shape"); }
    p = ok; p.shape[0] = 1u << 20; p.shape[1] = 1u << 20; p.shape[2] = 2; p.shape[3] = 1; expect_invalid(p, "2^40");
    p = ok; p.shape[0] = UINT64_MAX; expect_invalid(p, "2^40");
    p = ok; p.shape[2] = 1u << 16; p.shape[3] = (1u << 15) + 1; expect_invalid(p, "2^31");
    /* DropBlock3D: the volume's sizes, D in the message; no keras_cv mode */
    p = ok; p.depth = 1u << 20; p.shape[0] = 1u << 20; p.shape[2] = 1; p.shape[3] = 1; expect_invalid(p, "x 1048576 x");
    p = ok; p.depth = UINT64_MAX; expect_invalid(p, "2^40");
    p = ok; p.depth = 1u << 10; p.shape[2] = 1u << 11; p.shape[3] = (1u << 10) + 1; p.shape[0] = p.shape[1] = 1; expect_invalid(p, "volume D x H x W");
    p = ok; p.depth = 4; p.compat = DROPBLOCK_COMPAT_KERAS_CV; expect_invalid(p, "no 3-D layer");
    p = ok; p.depth = 4; p.compat = DROPBLOCK_COMPAT_KERAS3; expect_invalid(p, "no 3-D layer");
    p = ok; p.layout = (dropblock_layout)2; expect_invalid(p, "layout");
    p = ok; p.dtype = (dropblock_dtype)3; expect_invalid(p, "dtype");
    p = ok; p.rate = -0.1f; expect_invalid(p, "rate");
    p = ok; p.rate = 1.5f; expect_invalid(p, "rate");
    p = ok; p.rate = NAN; expect_invalid(p, "rate");
    p = ok; p.rate = INFINITY; expect_invalid(p, "rate");
    p = ok; p.block[0] = 0; expect_invalid(p, "block height");
    p = ok; p.block[1] = 0; expect_invalid(p, "block width");
    p = ok; p.normalize = (dropblock_normalize)3; expect_invalid(p, "normalize");
    p = ok; p.share = 4; expect_invalid(p, "share");
    p = ok; p.mode = (dropblock_mode)2; expect_invalid(p, "mode");
    p = ok; p.compat = (dropblock_compat)3; expect_invalid(p, "compat");
    p = ok; p.compat = DROPBLOCK_COMPAT_KERAS3; p.normalize = DROPBLOCK_NORMALIZE_SAMPLE; expect_invalid(p, "keras3");
    p = ok; p.compat = DROPBLOCK_COMPAT_KERAS3; p.block[0] = 9; expect_invalid(p, "compat keras3: block");
    p = ok; p.has_position = 1; expect_invalid(p, "position");
    p = ok; p.compat = DROPBLOCK_COMPAT_KERAS3; p.has_position = 1; expect_invalid(p, "counts calls");
    p = ok; p.compat = DROPBLOCK_COMPAT_KERAS_CV; p.has_position = 1; p.stream = 1; expect_invalid(p, "give one");
    p = ok; p.compat = DROPBLOCK_COMPAT_KERAS_CV; p.normalize = DROPBLOCK_NORMALIZE_SAMPLE; expect_invalid(p, "normalize");
    p = ok; p.compat = DROPBLOCK_COMPAT_KERAS_CV; p.share = DROPBLOCK_SHARE_CHANNELS; expect_invalid(p, "share");
    p = ok; p.compat = DROPBLOCK_COMPAT_KERAS_CV; p.block[0] = 9; expect_invalid(p, "divide by zero");
    /* clang-format on */
}

/* Exact S/K: the float32 nearest to the rational, ties to even. */
/* compat keras_cv's position: stream k is position k*N*H*W*C, and a position between (calls of
 * other sizes) gives another draw; compat keras3's stream is the call index whatever the size */
static void test_position_is_the_generator_state(void)
{
    static float x[2 * 3 * 9 * 9], a[2 * 3 * 9 * 9], b[2 * 3 * 9 * 9];
    for (int i = 0; i < 2 * 3 * 9 * 9; i++) x[i] = 1.0f + (float)i;
    dropblock_params p = tu_params(2, 3, 9, 9, 0.3f, 3, 3);
    p.layout = DROPBLOCK_NHWC;
    p.compat = DROPBLOCK_COMPAT_KERAS_CV;
    p.seed = 77;
    p.stream = 2;
    dropblock_result r;
    int rc = db_reference_run(&p, x, a, NULL, NULL, &r);
    p.stream = 0;
    p.has_position = 1;
    p.position = 2 * 2 * 3 * 9 * 9;
    rc |= db_reference_run(&p, x, b, NULL, NULL, &r);
    CHECK(!rc && !memcmp(a, b, sizeof a), "keras_cv: position 2*numel gives stream 2's output");
    p.position += 1;
    rc = db_reference_run(&p, x, b, NULL, NULL, &r);
    CHECK(!rc && memcmp(a, b, sizeof a), "keras_cv: another position gives another draw");
    p.has_position = 0;
    p.compat = DROPBLOCK_COMPAT_KERAS3;
    p.stream = 1;
    rc = db_reference_run(&p, x, a, NULL, NULL, &r);
    p.stream = 2;
    rc |= db_reference_run(&p, x, b, NULL, NULL, &r);
    CHECK(!rc && memcmp(a, b, sizeof a), "keras3: calls 1 and 2 draw differently");
}

static void test_scale_is_the_nearest_float32(void)
{
    CHECK(db_ratio_f32_bits(49, 49) == 0x3F800000u, "49/49");
    CHECK(db_ratio_f32_bits(3, 1) == 0x40400000u, "3/1");
    CHECK(db_ratio_f32_bits(10, 3) == db_bits(10.0f / 3.0f), "10/3");
    /* 2^24 + 1 is a tie between 2^24 and 2^24 + 2: even mantissa wins (2^24) */
    CHECK(db_ratio_f32_bits((UINT64_C(1) << 24) + 1, 1) == 0x4B800000u, "tie to even");
    CHECK(db_ratio_f32_bits((UINT64_C(1) << 24) + 3, 1) == 0x4B800002u, "tie to even (up)");
    uint64_t S = UINT64_C(1) << 40, K = 3;
    double q = (double)S / (double)K; /* S/K needs < 53 bits here: the double is within 1/2 ulp of float */
    CHECK(db_ratio_f32_bits(S, K) == db_bits((float)q), "2^40/3");
}

int main(void)
{
    test_tf_uniform_matches_spec();
    test_full_block_rate_one_gives_zeros();
    test_drop_fraction_matches_valid_region_geometry();
    test_dropped_regions_are_unions_of_blocks();
    test_no_nan_or_inf_from_finite_input();
    test_every_invalid_field_is_rejected();
    test_scale_is_the_nearest_float32();
    test_position_is_the_generator_state();
    printf("test_spec: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
