/* kernel_params.c: chunks and kernel parameter words for the GPU backends. */
#include "kernel_params.h"

#include <string.h>

#include "fp.h"
#include "msg.h"

#define DB_CHUNK_CAP (UINT64_C(1) << 30)
/* room for what does not grow with the units of a chunk (a mask word, two tiles, a sample) */
#define DB_CHUNK_SLACK 64

uint64_t db_chunk_units(const struct db_plan *pl, uint64_t max_bytes, char *msg, size_t len)
{
    const uint64_t limit = max_bytes < DB_CHUNK_CAP ? max_bytes : DB_CHUNK_CAP;
    const uint64_t cap = limit > 2 * DB_CHUNK_SLACK ? limit - DB_CHUNK_SLACK : limit / 2;
    uint64_t data = db_unit_elems(pl) * dropblock_dtype_size(pl->p.dtype);
    uint64_t maskb = db_unit_rows(pl) * db_row_words(pl) * 4;
    /* tile counts (4 bytes, at most one a unit) and per-sample partial sums (8 bytes a sample,
     * at most one a row) */
    uint64_t cnt = db_unit_rows(pl) * 8;
    uint64_t per = data > maskb ? data : maskb;
    if (cnt > per) per = cnt;
    if (per > cap) {
        db_msg(msg, len, "one %s row of %llu elements (%llu bytes) exceeds the device's %llu-byte buffer limit",
               dropblock_layout_name(pl->p.layout), (unsigned long long)db_unit_elems(pl),
               (unsigned long long)(per + (limit - cap)), (unsigned long long)limit);
        return 0;
    }
    uint64_t units = cap / per, all = db_units(pl);
    return units < all ? units : all;
}

/* Whether a chunk that is the whole tensor can have its scales made on the device: compat none
 * (keras_cv's scale is the host's), and few enough samples for one pass over them. */
static int scales_on_device(const struct db_plan *pl, const struct db_chunk *ch)
{
    return !pl->keras && ch->nsamp <= DB_DEVICE_SCALE_MAX_SAMPLES;
}

int db_job_chunks(const struct db_plan *pl, uint64_t max_buffer, uint64_t max_units, struct db_chunking *ck, char *msg,
                  size_t len)
{
    memset(ck, 0, sizeof *ck);
    ck->units = db_units(pl);
    uint64_t per = db_chunk_units(pl, max_buffer, msg, len);
    if (!per) return DROPBLOCK_EEXHAUSTED;
    /* the 8-byte per-sample partials of a chunk in one buffer too: a chunk of L >= 2 rows
     * touches at most (L-2)/CH + 2 samples, so L <= (smax - 1) CH rows do */
    const uint64_t smax = (max_buffer < DB_CHUNK_CAP ? max_buffer : DB_CHUNK_CAP) / 8;
    const uint64_t CH = pl->C * pl->D * pl->H, ur = db_unit_rows(pl); /* rows a sample */
    /* lim >= 1 whenever smax >= 2, since CH >= ur */
    const uint64_t lim = smax < 2 ? 0 : (smax - 1 > UINT64_MAX / CH ? per : (smax - 1) * CH / ur);
    if (lim == 0) {
        db_msg(msg, len, "the device's %llu-byte buffer limit cannot hold a chunk's per-sample counts",
               (unsigned long long)max_buffer);
        return DROPBLOCK_EEXHAUSTED;
    }
    if (lim < per) per = lim;
    if (max_units && max_units < per) per = max_units;
    ck->per = per;
    ck->nchunks = (ck->units + per - 1) / per;
    struct db_chunk ch;
    for (uint64_t q = 0; q < ck->nchunks; q++) {
        db_job_chunk(pl, ck, q, &ch);
        if (ch.nelem > ck->max_elem) ck->max_elem = ch.nelem;
        if (ch.nsamp > ck->max_samp) ck->max_samp = ch.nsamp;
    }
    ck->max_words = (ck->max_elem + 31) / 32;
    db_job_chunk(pl, ck, 0, &ch);
    ck->fused = ck->nchunks == 1 && scales_on_device(pl, &ch);
    return DROPBLOCK_OK;
}

void db_chunk_at(const struct db_plan *pl, uint64_t u0, uint64_t u1, struct db_chunk *ch)
{
    const uint64_t ur = db_unit_rows(pl), ue = db_unit_elems(pl), CH = pl->C * pl->D * pl->H;
    ch->u0 = u0;
    ch->u1 = u1;
    ch->r0 = u0 * ur;
    ch->nrows = (u1 - u0) * ur;
    ch->e0 = u0 * ue;
    ch->nelem = (u1 - u0) * ue;
    ch->n0 = ch->r0 / CH;
    ch->nsamp = (ch->r0 + ch->nrows - 1) / CH - ch->n0 + 1;
}

static void put64(uint32_t *prm, int i, uint64_t v)
{
    prm[i] = (uint32_t)v;
    prm[i + 1] = (uint32_t)(v >> 32);
}

static uint32_t clamp_end(int64_t hi_inclusive) { return hi_inclusive < 0 ? 0u : (uint32_t)(hi_inclusive + 1); }

void db_tile_shape(const struct db_plan *pl, const struct db_tuning *tu, struct db_tile *tile)
{
    uint64_t t = tu->tile_rows ? tu->tile_rows : 1, tw = pl->W, tc = pl->p.layout == DROPBLOCK_NHWC ? pl->C : 1;
    if (t > pl->H) t = pl->H;
    if (tu->cand_budget) {
        /* a tile of t rows, tw columns and tc planes looks at tc (t + up + down) (tw + left + right)
         * candidates: cut rows, then columns, then channels */
        const uint64_t b = tu->cand_budget, rx = (uint64_t)pl->up + pl->down, cx = (uint64_t)pl->left + pl->right;
        const uint64_t sl = 1 + (uint64_t)pl->dup + pl->ddown; /* candidate slices a tile's slice sees */
        const uint64_t bp = b / (tc * sl) ? b / (tc * sl) : 1; /* a plane's share */
        if ((t + rx) * (tw + cx) > bp) t = bp / (tw + cx) > rx + 1 ? bp / (tw + cx) - rx : 1;
        if (t == 1 && (1 + rx) * (tw + cx) > bp) tw = bp / (1 + rx) > cx + 1 ? bp / (1 + rx) - cx : 1;
        if (tw > pl->W) tw = pl->W;
        if (t == 1 && tw == 1 && tc * sl * (1 + rx) * (1 + cx) > b)
            tc = b / (sl * (1 + rx) * (1 + cx)) ? b / (sl * (1 + rx) * (1 + cx)) : 1;
    }
    tile->rows = (uint32_t)t;
    tile->cols = (uint32_t)tw;
    tile->chans = pl->p.layout == DROPBLOCK_NHWC ? tc : pl->C;
}

/* tile counts per row tile (column and channel tiles) and per group */
static void tile_counts(const struct db_plan *pl, const struct db_tile *t, uint64_t *nt, uint64_t *nsc)
{
    uint64_t nc = pl->p.layout == DROPBLOCK_NHWC ? (pl->C + t->chans - 1) / t->chans : 1;
    *nt = (pl->H + t->rows - 1) / t->rows;
    *nsc = (pl->W + t->cols - 1) / t->cols * nc;
}

/* index of unit u's first tile: group u / H, row u % H (unit = group * H + h in both layouts) */
static uint64_t tile_at(const struct db_plan *pl, uint64_t u, const struct db_tile *t, uint64_t nt, uint64_t nsc)
{
    return (u / pl->H * nt + (u % pl->H) / t->rows) * nsc;
}

uint64_t db_chunk_tiles(const struct db_plan *pl, const struct db_chunk *ch, const struct db_tuning *tu)
{
    struct db_tile t;
    uint64_t nt, nsc;
    db_tile_shape(pl, tu, &t);
    tile_counts(pl, &t, &nt, &nsc);
    return tile_at(pl, ch->u1 - 1, &t, nt, nsc) + nsc - tile_at(pl, ch->u0, &t, nt, nsc);
}

int db_fast_apply_ok(const struct db_plan *pl, uint32_t epw)
{
    if (pl->keras || epw == 0) return 0;
    return pl->p.normalize != DROPBLOCK_NORMALIZE_SAMPLE || pl->C * pl->D * pl->H * pl->W >= epw;
}

/* mask words a count work item takes: 2048 bits, a few hundred bytes of reads an item */
#define DB_COUNT_WORDS 64

/* The scatter pass's words (db_params.h DBP_SCATTER ..), where the tuning asks for it and the
 * job allows it: compat none (keras_cv's candidates are strided by C), unshared masks (a shared
 * mask's words serve several planes, which the tiles handle), and some candidates. */
static void scatter_params(const struct db_plan *pl, const struct db_chunk *ch, const struct db_tuning *tu,
                           uint32_t prm[DBP_COUNT])
{
    if (!tu->scatter || pl->keras || !pl->sN || !pl->sC || pl->sW != 1 || prm[DBP_IEND] <= prm[DBP_ILO] ||
        prm[DBP_JEND] <= prm[DBP_JLO])
        return;
    /* the chunk's groups (slices) [g0, g1), and the candidate slices whose blocks reach them */
    const uint64_t g0 = ch->u0 / pl->H, g1 = (ch->u1 + pl->H - 1) / pl->H, groups = pl->N * db_groups_per_sample(pl);
    const uint64_t sg0 = g0 > pl->dup ? g0 - pl->dup : 0, sg1 = g1 + pl->ddown < groups ? g1 + pl->ddown : groups;
    const uint64_t planes = (sg1 - sg0) * (pl->p.layout == DROPBLOCK_NHWC ? pl->C : 1);
    const uint64_t rows = prm[DBP_IEND] - prm[DBP_ILO], row_blocks = (prm[DBP_JEND] - prm[DBP_JLO] + 3) / 4 + 1;
    prm[DBP_SCATTER] = 1;
    put64(prm, DBP_SROWS, planes * rows);
    put64(prm, DBP_SG0, sg0);
    prm[DBP_SKR] = tu->scatter > row_blocks ? (uint32_t)(tu->scatter / row_blocks) : 1;
    prm[DBP_CKW] = DB_COUNT_WORDS;
}

void db_kernel_params(const struct db_plan *pl, const struct db_chunk *ch, const struct db_tuning *tu,
                      uint32_t prm[DBP_COUNT])
{
    for (int i = 0; i < DBP_COUNT; i++) prm[i] = 0;
    struct db_tile t;
    uint64_t nt, nsc;
    db_tile_shape(pl, tu, &t);
    tile_counts(pl, &t, &nt, &nsc);
    put64(prm, DBP_C, pl->C);
    prm[DBP_H] = (uint32_t)pl->H;
    prm[DBP_W] = (uint32_t)pl->W;
    prm[DBP_LAYOUT] = pl->p.layout == DROPBLOCK_NHWC;
    prm[DBP_DTYPE] = (uint32_t)pl->p.dtype;
    prm[DBP_KERAS] = (uint32_t)pl->keras;
    prm[DBP_NORM] = (uint32_t)pl->p.normalize;
    put64(prm, DBP_U0, ch->u0);
    put64(prm, DBP_U1, ch->u1);
    put64(prm, DBP_E0, ch->e0);
    put64(prm, DBP_NELEM, ch->nelem);
    put64(prm, DBP_N0, ch->n0);
    prm[DBP_NSAMP] = (uint32_t)ch->nsamp;
    put64(prm, DBP_CHW, pl->C * pl->D * pl->H * pl->W);
    put64(prm, DBP_NUMEL, pl->numel);
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
    prm[DBP_D] = (uint32_t)pl->D;
    put64(prm, DBP_GPS, db_groups_per_sample(pl));
    put64(prm, DBP_SD, pl->sD);
    prm[DBP_DLO] = pl->dlo < 0 ? 0u : (uint32_t)pl->dlo;
    prm[DBP_DEND] = clamp_end(pl->dhi);
    prm[DBP_DUP] = pl->dup;
    prm[DBP_DDOWN] = pl->ddown;
    prm[DBP_TILE] = t.rows;
    prm[DBP_NT] = (uint32_t)nt;
    prm[DBP_TILEW] = t.cols;
    prm[DBP_NS] = (uint32_t)((pl->W + t.cols - 1) / t.cols);
    prm[DBP_TILEC] = (uint32_t)(pl->p.layout == DROPBLOCK_NHWC ? t.chans : 1);
    prm[DBP_NC] = (uint32_t)(nsc / prm[DBP_NS]);
    put64(prm, DBP_TA0, tile_at(pl, ch->u0, &t, nt, nsc));
    prm[DBP_NTILES] = (uint32_t)db_chunk_tiles(pl, ch, tu);
    /* tiles an item: as many as make item_cands candidates (and keep within cand_budget) */
    uint64_t cands = (t.rows + (uint64_t)pl->up + pl->down) * (t.cols + (uint64_t)pl->left + pl->right) *
                     (pl->p.layout == DROPBLOCK_NHWC ? t.chans : 1) * (1 + (uint64_t)pl->dup + pl->ddown);
    uint64_t want = tu->item_cands, tpw = want > cands ? want / cands : 1;
    if (tu->cand_budget && tpw * cands > tu->cand_budget) tpw = tu->cand_budget / cands ? tu->cand_budget / cands : 1;
    /* 3-D, tiles of whole slices: whole volumes a work item, so that db_mask_volumes makes each
     * candidate's words once */
    if (pl->D > 1 && nt * nsc == 1 && !tu->cand_budget) tpw = (tpw + pl->D - 1) / pl->D * pl->D;
    prm[DBP_TPW] = (uint32_t)(tpw < prm[DBP_NTILES] ? tpw : (prm[DBP_NTILES] ? prm[DBP_NTILES] : 1));
    uint32_t epw = db_fast_apply_ok(pl, tu->epw) ? tu->epw : 0;
    prm[DBP_EPW] = epw;
    prm[DBP_GROUPS] = epw ? (uint32_t)(ch->nelem / epw) : 0;
    prm[DBP_FUSED] = ch->u0 == 0 && ch->u1 == db_units(pl) && scales_on_device(pl, ch);
    scatter_params(pl, ch, tu, prm);
}

int db_baseline_params(const struct db_plan *pl, uint32_t blp[BLP_COUNT], uint64_t *npad, uint64_t *nparts, char *msg,
                       size_t len)
{
    /* drop_block2d: a volume of depth 1, no padding in depth; drop_block3d: a cube */
    const uint64_t b = pl->bh, bd = pl->D > 1 ? b : 1, pd = bd / 2, p = b / 2;
    if (pl->D > 1 && (pl->bd != b || pl->bw != b || b % 2 == 0)) {
        db_msg(msg, len, "the baseline (torchvision's drop_block3d) takes odd cube blocks only");
        return DROPBLOCK_EINVAL;
    }
    if (pl->bh != pl->bw || b % 2 == 0) {
        db_msg(msg, len, "the baseline (torchvision) takes odd square blocks only");
        return DROPBLOCK_EINVAL;
    }
    if (pl->numel >= (UINT64_C(1) << 32)) {
        db_msg(msg, len, "the baseline takes tensors of fewer than 2^32 elements");
        return DROPBLOCK_EINVAL;
    }
    const uint64_t planes = pl->N * pl->C, dn = pl->D - bd + 1, hn = pl->H - b + 1, wn = pl->W - b + 1;
    memset(blp, 0, BLP_COUNT * sizeof *blp);
    blp[BLP_PLANES] = (uint32_t)planes;
    blp[BLP_D] = (uint32_t)pl->D;
    blp[BLP_H] = (uint32_t)pl->H;
    blp[BLP_W] = (uint32_t)pl->W;
    blp[BLP_BD] = (uint32_t)bd;
    blp[BLP_BS] = (uint32_t)b;
    blp[BLP_DN] = (uint32_t)dn;
    blp[BLP_HN] = (uint32_t)hn;
    blp[BLP_WN] = (uint32_t)wn;
    blp[BLP_KEY] = pl->key[0];
    blp[BLP_KEY + 1] = pl->key[1];
    memcpy(&blp[BLP_GAMMA], &pl->gamma, 4);
    blp[BLP_NUMEL] = (uint32_t)pl->numel;
    blp[BLP_DTYPE] = (uint32_t)pl->p.dtype;
    blp[BLP_NNOISE] = (uint32_t)(planes * dn * hn * wn);
    *npad = planes * (dn + 2 * pd) * (hn + 2 * p) * (wn + 2 * p); /* numel: the blocks are odd */
    blp[BLP_NPAD] = (uint32_t)*npad;
    *nparts = 2 * (pl->numel / BL_SEG) + 64; /* part[0], then every level of partial sums */
    return DROPBLOCK_OK;
}

void db_probe_subnormals(uint32_t *x, uint32_t *s, int n)
{
    static const uint32_t sc[8] = {0x3F800000u, 0x3F8CCCCDu, 0x3FC00000u, 0x40400000u,
                                   0x41A00001u, 0x4B7FFFFFu, 0x53800000u, 0x3F800001u};
    for (int i = 0; i < n; i++) {
        uint32_t m = (UINT32_C(0x7FFFFF) >> (i % 23)) ^ (uint32_t)((uint32_t)i * 2654435761u >> 9);
        x[i] = ((uint32_t)(i & 64) << 25) | (m & 0x7FFFFFu ? m & 0x7FFFFFu : 1u);
        s[i] = sc[i % 8];
    }
}

/* The f16 probe's cases, both GPU backends' (ocl_probe_half, vk_probe_half): f[i] and keep[i]
 * for i < nf (2^18 there): every finite f16 value's float32, the midpoints to the next one (the rounding ties, up
 * to the overflow bound 0x477FF000) and their neighbours, with both signs, and infinities, the
 * quiet NaN, huge values and tiny ones, kept and dropped. */
void db_probe_half_cases(uint32_t *f, uint32_t *keep, uint32_t nf)
{
    for (uint32_t i = 0; i < nf; i++) {
        uint32_t sign = (i & 1) << 31, k = (i >> 3) & 0x7FFF, c = (i >> 1) & 3, v;
        keep[i] = 1;
        if (k == 0) { /* 0, and below, at and above 2^-25, halfway to the least subnormal */
            v = c == 0 ? 0 : 0x33000000u - 2 + c;
        } else if (k < 0x7C00) { /* k, and below, at and above halfway to k + 1 (65536 past the largest) */
            uint32_t lo = db_ref_f16_to_f32((uint16_t)k);
            uint32_t hi = k == 0x7BFF ? 0x47800000u : db_ref_f16_to_f32((uint16_t)(k + 1));
            v = c == 0 ? lo : (lo + hi) / 2 - 2 + c;
        } else { /* half of them dropped */
            uint32_t j = k - 0x7C00;
            v = c == 0   ? (j & 1 ? 0x7FC00000u : 0x7F800000u)
                : c == 1 ? 0x477FF000u + j * 0x3FFFFu
                         : 0x33800000u + j * 0x13579u;
            keep[i] = (j >> 1) & 1;
        }
        f[i] = sign | v;
    }
}
