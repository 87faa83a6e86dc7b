/* plan.h: everything derived from a request before any backend runs it.
 *
 * Both mask definitions of docs/semantics.md ("The mask (canonical)" and "The exact keras_cv
 * rules") reduce to one
 * generic rule, which every GPU kernel implements:
 *   - a candidate (n, c, i, j) exists for ilo <= i <= ihi and jlo <= j <= jhi;
 *   - its random word is Philox4x32-10(counter = base + (e >> 2), key)[e & 3] with
 *     e = n'*sN + c'*sC + i*sH + j*sW (128-bit counter addition);
 *   - it fires iff (word & wmask) < threshold;
 *   - a fired candidate drops output rows h in [i - down, i + up] and columns w in
 *     [j - right, j + left] (clipped to the map): equivalently output (h, w) looks at
 *     candidate rows [h - up, h + down] and columns [w - left, w + right].
 * The CPU reference (reference.c) does not use this: it follows docs/semantics.md literally, so that it
 * checks the plan as well as the kernels. */
#ifndef DROPBLOCK_CORE_PLAN_H
#define DROPBLOCK_CORE_PLAN_H

#include <dropblock/dropblock.h>
#include <stdint.h>

struct db_plan {
    dropblock_params p;
    uint64_t N, C, H, W, numel;
    uint64_t bh, bw; /* clamped block */
    int identity;    /* training = false or rate = 0: output bits = input bits */
    int keras;       /* compat = keras_cv or keras3 (the same rules, another noise) */

    /* the generic mask rule above */
    uint32_t key[2];
    uint32_t base[4]; /* 128-bit little-endian words */
    uint64_t sN, sC, sH, sW;
    uint32_t wmask;
    uint64_t threshold;             /* <= 2^32 */
    int64_t ilo, ihi, jlo, jhi;     /* inclusive; empty when hi < lo */
    uint32_t up, down, left, right; /* clipped to H or W */

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

/* gamma and threshold of docs/semantics.md, "The mask (canonical)" (exposed for tests). */
float db_gamma(float rate, uint64_t H, uint64_t W, uint64_t bh, uint64_t bw);
uint64_t db_threshold(float gamma);

/* float32 nearest to the rational s/k (k >= 1, s >= k or any s < 2^64), ties to even, as bits. */
uint32_t db_ratio_f32_bits(uint64_t s, uint64_t k);

/* Scales after the mask: kept[n] for each sample n in, scale_bits[n] out (the per-element
 * multiplier, or for keras_cv the divisor rounded to the dtype). Fills res->kept, total,
 * scale_bits. Returns DROPBLOCK_EINVAL with a message where keras_cv would give NaN or divide
 * by zero. */
int db_plan_scales(const struct db_plan *pl, const uint64_t *kept, uint32_t *scale_bits, dropblock_result *res);

/* Chunks, shared by the GPU backends: a contiguous range of whole physical rows of the tensor
 * (a "unit": W elements for NCHW, W*C for NHWC). A chunk's internal mask is flat: bit k (LSB
 * first in 32-bit words) keeps the chunk's element k in physical order. */
static inline uint64_t db_row_words(const struct db_plan *pl) { return (pl->W + 31) / 32; }
static inline uint64_t db_unit_rows(const struct db_plan *pl) { return pl->p.layout == DROPBLOCK_NHWC ? pl->C : 1; }
static inline uint64_t db_unit_elems(const struct db_plan *pl)
{
    return pl->p.layout == DROPBLOCK_NHWC ? pl->W * pl->C : pl->W;
}
static inline uint64_t db_units(const struct db_plan *pl) { return pl->numel / db_unit_elems(pl); }

/* Converts a chunk's flat mask (elements [e0, e0 + nelem) in physical order) into the exported
 * packed mask (bit ((n*C + c)*H + h)*W + w, LSB first). out must hold dropblock_mask_bytes and
 * be zeroed first. */
void db_mask_export_flat(const struct db_plan *pl, const uint32_t *words, uint64_t e0, uint64_t nelem, uint8_t *out);

/* Output for the identity (copies unless in place). */
void db_identity(const struct db_plan *pl, const void *in, void *out, void *mask, dropblock_result *res);

#endif
