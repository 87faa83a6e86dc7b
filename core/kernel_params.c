/* kernel_params.c: chunks and kernel parameter words for the GPU backends. */
#include "kernel_params.h"

#define DB_CHUNK_CAP (UINT64_C(1) << 30)

uint64_t db_chunk_units(const struct db_plan *pl, uint64_t max_bytes, char *msg, size_t len)
{
    uint64_t cap = max_bytes < DB_CHUNK_CAP ? max_bytes : DB_CHUNK_CAP;
    uint64_t data = db_unit_elems(pl) * dropblock_dtype_size(pl->p.dtype);
    uint64_t maskb = db_unit_rows(pl) * db_row_words(pl) * 4;
    /* counts (4 bytes a row) and per-sample partial sums (8 bytes a sample, at most one a row) */
    uint64_t cnt = db_unit_rows(pl) * 8;
    uint64_t per = data > maskb ? data : maskb;
    if (cnt > per) per = cnt;
    if (per > cap) {
        db_msg(msg, len, "one %s row of %llu elements (%llu bytes) exceeds the device's %llu-byte buffer limit",
               dropblock_layout_name(pl->p.layout), (unsigned long long)db_unit_elems(pl),
               (unsigned long long)per, (unsigned long long)cap);
        return 0;
    }
    uint64_t units = cap / per, all = db_units(pl);
    return units < all ? units : all;
}

void db_chunk_at(const struct db_plan *pl, uint64_t u0, uint64_t u1, struct db_chunk *ch)
{
    const uint64_t ur = db_unit_rows(pl), ue = db_unit_elems(pl), CH = pl->C * pl->H;
    ch->u0 = u0; ch->u1 = u1;
    ch->r0 = u0 * ur; ch->nrows = (u1 - u0) * ur;
    ch->e0 = u0 * ue; ch->nelem = (u1 - u0) * ue;
    ch->n0 = ch->r0 / CH;
    ch->nsamp = (ch->r0 + ch->nrows - 1) / CH - ch->n0 + 1;
}

static void put64(uint32_t *prm, int i, uint64_t v)
{
    prm[i] = (uint32_t)v;
    prm[i + 1] = (uint32_t)(v >> 32);
}

static uint32_t clamp_end(int64_t hi_inclusive)
{
    return hi_inclusive < 0 ? 0u : (uint32_t)(hi_inclusive + 1);
}

void db_kernel_params(const struct db_plan *pl, const struct db_chunk *ch, uint32_t prm[DBP_COUNT])
{
    for (int i = 0; i < DBP_COUNT; i++) prm[i] = 0;
    put64(prm, DBP_C, pl->C);
    prm[DBP_H] = (uint32_t)pl->H;
    prm[DBP_W] = (uint32_t)pl->W;
    prm[DBP_RW] = (uint32_t)db_row_words(pl);
    prm[DBP_LAYOUT] = pl->p.layout == DROPBLOCK_NHWC;
    put64(prm, DBP_R0, ch->r0);
    put64(prm, DBP_NROWS, ch->nrows);
    prm[DBP_KEY] = pl->key[0];
    prm[DBP_KEY + 1] = pl->key[1];
    for (int i = 0; i < 4; i++) prm[DBP_BASE + i] = pl->base[i];
    put64(prm, DBP_SN, pl->sN);
    put64(prm, DBP_SC, pl->sC);
    put64(prm, DBP_SH, pl->sH);
    put64(prm, DBP_SW, pl->sW);
    prm[DBP_WMASK] = pl->wmask;
    put64(prm, DBP_THR, pl->threshold);
    prm[DBP_ILO] = pl->ilo < 0 ? 0u : (uint32_t)pl->ilo;
    prm[DBP_IEND] = clamp_end(pl->ihi);
    prm[DBP_JLO] = pl->jlo < 0 ? 0u : (uint32_t)pl->jlo;
    prm[DBP_JEND] = clamp_end(pl->jhi);
    prm[DBP_UP] = pl->up;
    prm[DBP_DOWN] = pl->down;
    prm[DBP_LEFT] = pl->left;
    prm[DBP_RIGHT] = pl->right;
    put64(prm, DBP_E0, ch->e0);
    put64(prm, DBP_NELEM, ch->nelem);
    put64(prm, DBP_N0, ch->n0);
    prm[DBP_NSAMP] = (uint32_t)ch->nsamp;
    prm[DBP_DTYPE] = (uint32_t)pl->p.dtype;
    prm[DBP_KERAS] = (uint32_t)pl->keras;
    put64(prm, DBP_CH, pl->C * pl->H);
}
