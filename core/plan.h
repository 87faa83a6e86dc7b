/* plan.h: everything derived from a request before any backend runs it.
 *
 * Both mask definitions of docs/semantics.md ("The mask (canonical)" and "The exact keras_cv
 * rules") reduce to one
 * generic rule, which every GPU kernel implements:
 *   - a candidate (n, c, d, i, j) exists for dlo <= d <= dhi, ilo <= i <= ihi and jlo <= j <= jhi
 *     (d = 0 only, for DropBlock2D: a 2-D map is a volume of depth 1);
 *   - its random word is Philox4x32-10(counter = base + (e >> 2), key)[e & 3] with
 *     e = n'*sN + c'*sC + d*sD + i*sH + j*sW (128-bit counter addition);
 *   - it fires iff (word & wmask) < threshold;
 *   - a fired candidate drops output slices [d - ddown, d + dup], rows h in [i - down, i + up]
 *     and columns w in [j - right, j + left] (clipped to the volume): equivalently output
 *     (d', h, w) looks at candidate slices [d' - dup, d' + ddown], rows [h - up, h + down] and
 *     columns [w - left, w + right].
 * The CPU reference (reference.c) does not use this: it follows docs/semantics.md literally, so that it
 * checks the plan as well as the kernels. */
#ifndef DROPBLOCK_CORE_PLAN_H
#define DROPBLOCK_CORE_PLAN_H

#include <dropblock/dropblock.h>
#include <stdint.h>

struct db_plan {
    dropblock_params p;
    uint64_t N, C, D, H, W, numel; /* D = 1 for DropBlock2D */
    uint64_t bd, bh, bw;           /* clamped block */
    int identity;                  /* training = false or rate = 0: output bits = input bits */
    int keras;                     /* compat = keras_cv or keras3 (the same rules, another noise) */

    /* the generic mask rule above */
    uint32_t key[2];
    uint32_t base[4]; /* 128-bit little-endian words */
    uint64_t sN, sC, sD, sH, sW;
    uint32_t wmask;
    uint64_t threshold;                         /* <= 2^32 */
    int64_t dlo, dhi, ilo, ihi, jlo, jhi;       /* inclusive; empty when hi < lo */
    uint32_t dup, ddown, up, down, left, right; /* clipped to D, H or W */

    /* gamma (canonical) or the keep rate (keras_cv), for reports */
    float gamma;
    float keras_keep;
};

/* Derives the plan; p must have passed dropblock_params_validate. Returns DROPBLOCK_EINVAL with
 * a message for requests that only the plan can reject (keras_cv's division by zero). */
int db_plan_init(struct db_plan *pl, const dropblock_params *p, char *msg, size_t msg_len);

/* compat keras3's Philox key and counter base for the generator's call (the layer's call index)
 * of a layer seeded with seed (docs/semantics.md, "compat keras3"). */
void db_keras3_key_counter(uint64_t seed, uint64_t call, uint32_t key[2], uint32_t base[4]);

/* gamma and threshold of docs/semantics.md, "The mask (canonical)" (exposed for tests); the
 * 2-D gamma is the 3-D one of a volume of depth 1 with bd = 1. */
float db_gamma(float rate, uint64_t H, uint64_t W, uint64_t bh, uint64_t bw);
float db_gamma3d(float rate, uint64_t D, uint64_t H, uint64_t W, uint64_t bd, uint64_t bh, uint64_t bw);
uint64_t db_threshold(float gamma);

/* float32 nearest to the rational s/k (k >= 1, s >= k or any s < 2^64), ties to even, as bits. */
uint32_t db_ratio_f32_bits(uint64_t s, uint64_t k);

/* Scales after the mask: kept[n] for each sample n in, scale_bits[n] out (the per-element
 * multiplier, or for keras_cv the divisor rounded to the dtype). Fills res->kept, total,
 * scale_bits. Returns DROPBLOCK_EINVAL with a message where keras_cv would give NaN or divide
 * by zero. */
int db_plan_scales(const struct db_plan *pl, const uint64_t *kept, uint32_t *scale_bits, dropblock_result *res);

/* Chunks, shared by the GPU backends: a contiguous range of whole physical rows of the tensor
 * (a "unit": W elements for NC(D)HW, W*C for N(D)HWC; a unit is one (d, h) row of a volume). A chunk's internal mask is
 * flat: bit k (LSB first in 32-bit words) keeps the chunk's element k in physical order. */
static inline uint64_t db_row_words(const struct db_plan *pl) { return (pl->W + 31) / 32; }
static inline uint64_t db_unit_rows(const struct db_plan *pl) { return pl->p.layout == DROPBLOCK_NHWC ? pl->C : 1; }
static inline uint64_t db_unit_elems(const struct db_plan *pl)
{
    return pl->p.layout == DROPBLOCK_NHWC ? pl->W * pl->C : pl->W;
}
static inline uint64_t db_units(const struct db_plan *pl) { return pl->numel / db_unit_elems(pl); }
/* A group is what the passes' tiles cover across rows (db_params.h): one (n, c, d) map for
 * NC(D)HW, one (n, d) slice of all channels for N(D)HWC; unit = group * H + h. */
static inline uint64_t db_groups_per_sample(const struct db_plan *pl)
{
    return pl->p.layout == DROPBLOCK_NHWC ? pl->D : pl->C * pl->D;
}

/* Converts a chunk's flat mask (elements [e0, e0 + nelem) in physical order) into the exported
 * packed mask (bit (((n*C + c)*D + d)*H + h)*W + w, LSB first). out must hold dropblock_mask_bytes and
 * be zeroed first. */
void db_mask_export_flat(const struct db_plan *pl, const uint32_t *words, uint64_t e0, uint64_t nelem, uint8_t *out);

/* Output for the identity (copies unless in place). */
void db_identity(const struct db_plan *pl, const void *in, void *out, void *mask, dropblock_result *res);

#endif
