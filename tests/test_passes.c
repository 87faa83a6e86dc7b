/* test_passes: the portable pass sources (shaders/db_passes.h), compiled as C, give the
 * reference's bits on a matrix of cases. This checks the GPU algorithm apart from any API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DB_LANG_C
#include "../shaders/db_passes.h"

#include "kernel_params.h"
#include "reference.h"
#include "test_cases.h"

static int run_passes(void *ctx, const dropblock_params *p, const void *in, void *out, uint8_t *maskout,
                      dropblock_result *res)
{
    const int tiny = *(const int *)ctx;
    struct db_plan pl;
    int rc = db_plan_init(&pl, p, res->message, sizeof res->message);
    if (rc) return rc;
    if (pl.identity) { db_identity(&pl, in, out, maskout, res); return 0; }
    /* tiny: chunks of two units, to check the chunked path on small tensors */
    uint64_t unit = db_unit_elems(&pl) * dropblock_dtype_size(p->dtype);
    uint64_t mrow = db_unit_rows(&pl) * db_row_words(&pl) * 4;
    if (mrow > unit) unit = mrow;
    uint64_t per = db_chunk_units(&pl, tiny ? 2 * unit : (UINT64_C(1) << 30), res->message, sizeof res->message);
    if (!per) return DROPBLOCK_EEXHAUSTED;
    uint64_t units = db_units(&pl), nchunks = (units + per - 1) / per;
    uint32_t **masks = calloc(nchunks, sizeof *masks);
    uint64_t *kept = calloc(pl.N, sizeof *kept);
    uint32_t *scales = calloc(pl.N, sizeof *scales);
    uint32_t prm[DBP_COUNT];
    struct db_chunk ch;
    size_t es = dropblock_dtype_size(p->dtype);
    for (uint64_t q = 0; q < nchunks; q++) {
        db_chunk_at(&pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        db_kernel_params(&pl, &ch, prm);
        masks[q] = malloc(ch.nrows * db_row_words(&pl) * 4);
        uint32_t *counts = malloc(ch.nrows * 4);
        for (uint64_t k = 0; k < ch.nrows; k++) counts[k] = db_mask_row(prm, masks[q], k);
        for (uint64_t s = 0; s < ch.nsamp; s++) kept[ch.n0 + s] += db_count_sample(prm, counts, s);
        free(counts);
    }
    rc = db_plan_scales(&pl, kept, scales, res);
    for (uint64_t q = 0; q < nchunks && !rc; q++) {
        db_chunk_at(&pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        db_kernel_params(&pl, &ch, prm);
        for (uint64_t k = 0; k < ch.nelem; k++) {
            db_u32x4 loc = db_apply_locate(prm, k);
            uint64_t at = ch.e0 + k;
            uint32_t x = 0;
            memcpy(&x, (const char *)in + at * es, es);
            uint32_t keep = (masks[q][loc.x] >> loc.y) & 1u;
            uint32_t y = db_apply_bits(x, scales[ch.n0 + loc.z], keep, pl.keras, (uint32_t)p->dtype);
            memcpy((char *)out + at * es, &y, es);
        }
        if (maskout) db_mask_export_rows(&pl, masks[q], ch.r0, ch.nrows, maskout);
    }
    for (uint64_t q = 0; q < nchunks; q++) free(masks[q]);
    free(masks); free(kept); free(scales);
    return rc;
}

int main(void)
{
    int fails = 0, n = 0;
    struct test_case cases[TEST_CASES_MAX];
    int count = test_cases_matrix(cases, TEST_CASES_MAX);
    for (int i = 0; i < count; i++) {
        for (int tiny = 0; tiny < 2; tiny++) {
            char why[512];
            /* tiny: force many chunks (one unit each) to check the chunked path */
            int ok = test_case_compare(&cases[i], run_passes, &tiny, why, sizeof why);
            n++;
            if (!ok) { fails++; printf("FAIL %s%s: %s\n", cases[i].name, tiny ? " (chunked)" : "", why); }
        }
    }
    printf("test_passes: %d passed, %d failed\n", n - fails, fails);
    return fails ? 1 : 0;
}
