/* db_passes.h: the passes of docs/design.md as functions in db_portable.h's subset, shared by the
 * OpenCL kernels (dropblock.cl), the Vulkan shaders (*.comp) and the C test of the algorithm.
 * Buffers are named prm (parameter words), mask (the chunk's keep bits), kept (the chunk's
 * kept count per sample, two words each, zeroed before the mask pass) and scales (per-sample
 * scale bits), so the API files only declare them: GLSL as storage blocks with these member
 * names, OpenCL/C as pointer parameters (DB_*_BUFS, passed on with DB_*_ARGS).
 *
 * The mask of a chunk is flat: bit k (word k / 32, bit k % 32) keeps the chunk's element k in
 * physical order, so the apply pass reads one bit per element with no index arithmetic. The
 * mask pass works in tiles of up to DBP_TILE rows of one group (db_params.h): a tile owns the
 * contiguous bits of its rows, and only the words it shares with its neighbours at its two
 * ends are written with atomics. */
#ifndef DB_PASSES_H
#define DB_PASSES_H

#include "db_math.h"

#include "db_params.h"

#ifndef DB_BATCH
/* no batch provided (db_math.h, "candidate words in batches"): one block at a time, at most 8
 * a batch (the test of the passes), 1 in GLSL */
#if defined(DB_LANG_GLSL)
#define DB_BATCH 1
#define DB_BLK_ARR u64 blk[DB_BATCH]
#else
#define DB_BATCH 8
#define DB_BLK_ARR const u64 *blk
#endif
#define DB_QUEUE DB_BATCH
#define DB_FIRED u32
#define db_fired_word(f, q) (f)
#define db_fired_any(f) (f)
DBFN u32 db_fire_batch(DB_BLK_ARR, u64 run, u32 n, u32x4 base, u32 k0, u32 k1, u32 wmask, u32 thr, u32 all)
{
    u32 bits = 0u; /* DB_BATCH <= 8: one word */
    for (u32 l = 0u; l < n; l++) {
        u32x4 w = db_philox(db_ctr_add(base, run != DB_NO_RUN ? run + U64(l) : blk[l]), k0, k1);
        u32 f = (all != 0u || (w.x & wmask) < thr ? 1u : 0u) | (all != 0u || (w.y & wmask) < thr ? 2u : 0u) |
                (all != 0u || (w.z & wmask) < thr ? 4u : 0u) | (all != 0u || (w.w & wmask) < thr ? 8u : 0u);
        bits |= f << (4u * l);
    }
    return bits;
}
#endif

#if defined(DB_LANG_GLSL)
#define DB_MASK_BUFS
#define DB_MASK_ARGS
#define DB_PRM_BUFS
#define DB_PRM_ARGS
#define DB_DROP_BUFS
#define DB_DROP_ARGS
#define DB_BITS_BUFS
#define DB_BITS_ARGS
#define DB_TOTAL_BUFS
#define DB_TOTAL_ARGS
#define DB_SCALE_BUFS
#define DB_COUNT_BUFS
#define DB_APPLY_BUFS
#define DB_BLK_PARAM(name) u64 name[DB_BATCH]
#else
#if defined(DB_LANG_CL)
#define DB_GLOBAL __global
/* the parameter words in constant memory: read by every work item, never written, so the
 * compiler may keep them in registers or a constant cache instead of reloading them */
#define DB_PRM_SPACE __constant
#else
#define DB_GLOBAL
#define DB_PRM_SPACE
#endif
#define DB_MASK_BUFS DB_PRM_SPACE const u32 *prm, DB_GLOBAL u32 *mask, DB_GLOBAL u32 *kept,
#define DB_MASK_ARGS prm, mask, kept,
#define DB_PRM_BUFS DB_PRM_SPACE const u32 *prm,
#define DB_PRM_ARGS prm,
#define DB_DROP_BUFS DB_PRM_SPACE const u32 *prm, DB_GLOBAL u32 *mask,
#define DB_DROP_ARGS prm, mask,
#define DB_BITS_BUFS DB_GLOBAL u32 *mask,
#define DB_BITS_ARGS mask,
#define DB_TOTAL_BUFS DB_GLOBAL u32 *kept,
#define DB_TOTAL_ARGS kept,
#define DB_SCALE_BUFS DB_PRM_SPACE const u32 *prm, DB_GLOBAL const u32 *kept, DB_GLOBAL u32 *scales,
#define DB_COUNT_BUFS \
    DB_PRM_SPACE const u32 *prm, DB_GLOBAL const u32 *mask, DB_GLOBAL u32 *kept, DB_GLOBAL u32 *scales,
#define DB_APPLY_BUFS DB_PRM_SPACE const u32 *prm, DB_GLOBAL const u32 *mask, DB_GLOBAL const u32 *scales,
#define DB_BLK_PARAM(name) const u64 *name
/* parameter word i (GLSL: db_glsl.h's uniform block) */
#define DB_P(i) prm[i]
#endif

#define DB_PRM64(i) (U64(DB_P((i))) | (U64(DB_P((i) + 1)) << 32))

/* ---- pass 1: mask ------------------------------------------------------------------------ */

/* a / b, in 32 bits where both fit (a 64-bit division costs several times more) */
DBFN u64 db_udiv(u64 a, u64 b)
{
    if (b == 1ul) return a;
    return (a >> 32) == 0ul && (b >> 32) == 0ul ? U64(U32(a) / U32(b)) : a / b;
}

/* Sets (set = 1) or clears the chunk's mask bits lo..hi (inclusive) for a work item owning the
 * words [wa, wb) (those wholly inside its tiles' bits): the rest are shared with the
 * neighbouring work items and take atomics. */
DBFN void db_mark_word(DB_BITS_BUFS u64 wi, u32 m, u64 wa, u64 wb, u32 set)
{
    if (wi >= wa && wi < wb) {
        if (set != 0u) mask[IX(wi)] = m == 0xFFFFFFFFu ? m : (mask[IX(wi)] | m);
        else mask[IX(wi)] &= ~m;
    } else if (set != 0u) {
        ATOMIC_OR(mask, wi, m);
    } else {
        ATOMIC_AND(mask, wi, ~m);
    }
}

DBFN void db_mark_bits(DB_BITS_BUFS u64 lo, u64 hi, u64 wa, u64 wb, u32 set)
{
    u64 w0 = lo >> 5, w1 = hi >> 5;
    u32 m0 = 0xFFFFFFFFu << U32(lo & 31ul), m1 = 0xFFFFFFFFu >> (31u - U32(hi & 31ul));
    if (w0 == w1) {
        db_mark_word(DB_BITS_ARGS w0, m0 & m1, wa, wb, set);
        return;
    }
    db_mark_word(DB_BITS_ARGS w0, m0, wa, wb, set);
    u64 i = w0 + 1ul;
    if (i >= wa && w1 <= wb) { /* whole own words between: plain stores */
        for (; i < w1; i++) mask[IX(i)] = set != 0u ? 0xFFFFFFFFu : 0u;
    }
    for (; i < w1; i++) db_mark_word(DB_BITS_ARGS i, 0xFFFFFFFFu, wa, wb, set);
    db_mark_word(DB_BITS_ARGS w1, m1, wa, wb, set);
}

/* The set bits among lo..hi (inclusive), for a work item owning the words [wa, wb). */
DBFN u32 db_count_word(DB_BITS_BUFS u64 wi, u32 m, u64 wa, u64 wb)
{
    return POPCOUNT((wi >= wa && wi < wb ? mask[IX(wi)] : ATOMIC_LOAD(mask, wi)) & m);
}

DBFN u32 db_count_bits(DB_BITS_BUFS u64 lo, u64 hi, u64 wa, u64 wb)
{
    u64 w0 = lo >> 5, w1 = hi >> 5;
    u32 m0 = 0xFFFFFFFFu << U32(lo & 31ul), m1 = 0xFFFFFFFFu >> (31u - U32(hi & 31ul));
    if (w0 == w1) return db_count_word(DB_BITS_ARGS w0, m0 & m1, wa, wb);
    u32 n = db_count_word(DB_BITS_ARGS w0, m0, wa, wb) + db_count_word(DB_BITS_ARGS w1, m1, wa, wb);
    u64 i = w0 + 1ul;
    if (i >= wa && w1 <= wb) { /* whole own words between */
        for (; i < w1; i++) n += POPCOUNT(mask[IX(i)]);
    }
    for (; i < w1; i++) n += db_count_word(DB_BITS_ARGS i, 0xFFFFFFFFu, wa, wb);
    return n;
}

/* Clears the n < 32 bits from lo on: the one or two words they touch, plainly where both are
 * the tile's own (the common case of a fired block's row), else by db_mark_bits. */
DBFN void db_clear_short(DB_BITS_BUFS u64 lo, u32 n, u64 wa, u64 wb)
{
    u64 wi = lo >> 5;
    u32 sh = U32(lo & 31ul);
    u64 m = ((1ul << n) - 1ul) << sh;
    if (wi >= wa && wi + 1ul < wb) {
        mask[IX(wi)] &= ~U32(m);
        if ((m >> 32) != 0ul) mask[IX(wi + 1ul)] &= ~U32(m >> 32);
    } else {
        db_mark_bits(DB_BITS_ARGS lo, lo + U64(n) - 1ul, wa, wb, 0u);
    }
}

/* What a tile needs to drop a fired candidate's block (see db_mask_tile): the first unit gh of
 * the first of nsl slices (groups) it drops into, H units apart (one but in db_mask_volumes). */
#define DB_TILE_ARGS u64 gh, u32 nsl, u32 h0, u32 h1, u32 w0, u32 w1, u64 ue, u64 cbit, u64 wa, u64 wb
#define DB_TILE_PASS gh, nsl, h0, h1, w0, w1, ue, cbit, wa, wb

/* Clears the outputs of fired candidate (i, j) within the tile's rows [h0, h1) and columns
 * [w0, w1), in each of its nsl slices. */
DBFN void db_drop(DB_DROP_BUFS DB_TILE_ARGS, u32 i, u32 j)
{
    u32 up = DB_P(DBP_UP), down = DB_P(DBP_DOWN);
    u32 r0 = i >= down ? i - down : 0u;
    if (r0 < h0) r0 = h0;
    u64 r1 = U64(i) + U64(up) + 1ul;
    if (r1 > U64(h1)) r1 = U64(h1);
    u32 wlo = j >= DB_P(DBP_RIGHT) ? j - DB_P(DBP_RIGHT) : 0u;
    if (wlo < w0) wlo = w0;
    u64 whi = U64(j) + U64(DB_P(DBP_LEFT));
    if (whi >= U64(w1)) whi = U64(w1) - 1ul;
    if (U64(wlo) > whi) return;
    u64 E0 = DB_PRM64(DBP_E0);
    u32 span = U32(whi - U64(wlo)) + 1u;
    u64 U0 = DB_PRM64(DBP_U0), U1 = DB_PRM64(DBP_U1);
    for (u32 sl = 0u; sl < nsl; sl++) {
        u64 gs = gh + U64(sl) * U64(DB_P(DBP_H)), hs = U64(r0), he = r1;
        if (nsl > 1u) { /* several slices: each one's rows in the chunk (the scatter's chunk ends) */
            if (U0 > gs + hs) hs = U0 - gs;
            if (U1 < gs + he) he = U1 > gs ? U1 - gs : 0ul;
        }
        for (u64 h = hs; h < he; h++) {
            u64 row = (gs + h) * ue - E0 + cbit;
            if (DB_P(DBP_LAYOUT) == 0u) {
                if (span < 32u) db_clear_short(DB_BITS_ARGS row + U64(wlo), span, wa, wb);
                else db_mark_bits(DB_BITS_ARGS row + U64(wlo), row + whi, wa, wb, 0u);
            } else { /* NHWC: one bit a column, C apart (the word's own test inline: drops are hot there) */
                u64 C = DB_PRM64(DBP_C), bit = row + U64(wlo) * C;
                for (u64 w = U64(wlo); w <= whi; w++, bit += C)
                    db_mark_word(DB_BITS_ARGS bit >> 5, 1u << U32(bit & 31ul), wa, wb, 0u);
            }
        }
    }
}

/* db_mask_tile takes the run of blocks from a plane's first candidate to its last (blocks
 * between rows included: their words are no candidates and drop nothing, and a run needs no
 * queue) where that makes at most half again the blocks of the rows' own spans: queueing a
 * block costs about half as much as making its words (on PoCL: 56 columns and a block of 7
 * make 14 blocks a row where 13 hold candidates, and the run is the faster by 5%). */
#define DB_TAKE_RUN(blocks, rows, cols) (2ul * (blocks) <= 3ul * (rows) * (((cols) + 3ul) / 4ul + 1ul))

/* Runs the queued candidate blocks blk[0..n) (or the run of n blocks from run, db_fire_batch) of
 * plane (n, c) (candidate index base ebase) and drops every fired candidate of rows
 * [ci0, ci1), columns [cj0, cj1) among them. */
DBFN void db_flush(DB_DROP_BUFS DB_TILE_ARGS, DB_BLK_PARAM(blk), u64 run, u32 n, u64 ebase, u32 ci0, u32 ci1, u32 cj0,
                   u32 cj1)
{
    u64 thr = DB_PRM64(DBP_THR);
    u32x4 base = MAKE_U32X4(DB_P(DBP_BASE), DB_P(DBP_BASE + 1), DB_P(DBP_BASE + 2), DB_P(DBP_BASE + 3));
    DB_FIRED fired = db_fire_batch(blk, run, n, base, DB_P(DBP_KEY), DB_P(DBP_KEY + 1), DB_P(DBP_WMASK), U32(thr),
                                   thr > 0xFFFFFFFFul ? 1u : 0u);
    if (db_fired_any(fired) == 0u) return; /* mostly */
    u64 sH = DB_PRM64(DBP_SH), sW = DB_PRM64(DBP_SW);
    for (u32 q = 0u; q < (U32(DB_BATCH) + 7u) / 8u; q++) {
        for (u32 bits = db_fired_word(fired, q); bits != 0u;) {
            u32 t = MSB32(bits);
            bits ^= 1u << t;
            t += 32u * q;
            /* the word's candidate, if it is one of this tile's (blocks may hold others) */
            u64 off = 4ul * (run != DB_NO_RUN ? run + U64(t >> 2) : blk[t >> 2]) + U64(t & 3u) - ebase;
            u64 i = db_udiv(off, sH), rem = off - i * sH, j = db_udiv(rem, sW);
            if (rem == j * sW && i >= U64(ci0) && i < U64(ci1) && j >= U64(cj0) && j < U64(cj1))
                db_drop(DB_DROP_ARGS DB_TILE_PASS, U32(i), U32(j));
        }
    }
}

/* kept[2 s .. 2 s + 1] += v as one 64-bit count from 32-bit atomics: the carry of the low
 * word's addition goes to the high word (an add of a 32-bit value wraps at most once). */
DBFN void db_add_kept(DB_TOTAL_BUFS u64 s, u64 v)
{
    if (v == 0ul) return;
    u32 lo = U32(v), old = ATOMIC_ADD(kept, 2ul * s, lo);
    u32 hi = U32(v >> 32) + (old + lo < old ? 1u : 0u);
    if (hi != 0u) ATOMIC_ADD(kept, 2ul * s + 1ul, hi);
}

/* Tile g's group (n C + c in NCHW, n in NHWC): tiles go NT row tiles a group, NS column tiles a
 * row tile, NC channel tiles a column tile. */
DBFN u64 db_tile_group(DB_PRM_BUFS u64 g)
{
    return db_udiv(DB_PRM64(DBP_TA0) + g, U64(DB_P(DBP_NT)) * U64(DB_P(DBP_NS)) * U64(DB_P(DBP_NC)));
}

/* Tile g of group grp: its rows [h0, h1) and columns [w0, w1) of the map, and its channel tile
 * (MAKE_U32X4(h0, h1, w0, w1), channel tile from db_tile_chan). Whole planes, the CPU shape,
 * take no division. */
DBFN u32x4 db_tile_box(DB_PRM_BUFS u64 g, u64 grp)
{
    u32 H = DB_P(DBP_H), W = DB_P(DBP_W);
    u64 NC = U64(DB_P(DBP_NC)), NSC = U64(DB_P(DBP_NS)) * NC;
    u64 rt = DB_PRM64(DBP_TA0) + g - grp * (U64(DB_P(DBP_NT)) * NSC);
    if (rt == 0ul)
        return MAKE_U32X4(0u, H > DB_P(DBP_TILE) ? DB_P(DBP_TILE) : H, 0u, W > DB_P(DBP_TILEW) ? DB_P(DBP_TILEW) : W);
    u64 t = db_udiv(rt, NSC), st = db_udiv(rt - t * NSC, NC);
    u32 h0 = U32(t) * DB_P(DBP_TILE), w0 = U32(st) * DB_P(DBP_TILEW);
    return MAKE_U32X4(h0, H - h0 > DB_P(DBP_TILE) ? h0 + DB_P(DBP_TILE) : H, w0,
                      W - w0 > DB_P(DBP_TILEW) ? w0 + DB_P(DBP_TILEW) : W);
}

/* Tile g's channel tile (NHWC): its first channel */
DBFN u64 db_tile_chan(DB_PRM_BUFS u64 g, u64 grp)
{
    u64 NC = U64(DB_P(DBP_NC));
    if (NC == 1ul) return 0ul;
    u64 rt = DB_PRM64(DBP_TA0) + g - grp * (U64(DB_P(DBP_NT)) * U64(DB_P(DBP_NS)) * NC);
    return (rt - db_udiv(rt, NC) * NC) * U64(DB_P(DBP_TILEC));
}

/* Tile g of group grp as the chunk has it: db_tile_box's rows clipped to the chunk's units
 * [U0, U1) (h1 = h0 when none is left; the tiles of a chunk each keep at least one), its
 * columns as they are. */
DBFN u32x4 db_tile_rows(DB_PRM_BUFS u64 g, u64 grp)
{
    u32x4 box = db_tile_box(DB_PRM_ARGS g, grp);
    u32 h0 = box.x, h1 = box.y;
    u64 gh = grp * U64(DB_P(DBP_H)), u0 = DB_PRM64(DBP_U0), u1 = DB_PRM64(DBP_U1);
    if (u0 > gh + U64(h0)) h0 = U32(u0 - gh);
    if (u1 < gh + U64(h1)) h1 = u1 > gh + U64(h0) ? U32(u1 - gh) : h0;
    return MAKE_U32X4(h0, h1, box.z, box.w);
}

/* The first bit (end 0) or the end bit (end 1), in the chunk, of the tile of group grp with
 * rows and columns box (db_tile_rows) and, for NHWC channel tiles (NC > 1), first channel c0:
 * its bits are contiguous (whole rows, or the columns of its one row, or the channels of its
 * one row and column). */
DBFN u64 db_tile_bit(DB_PRM_BUFS u64 grp, u32x4 box, u64 c0, u32 end)
{
    u64 C = DB_PRM64(DBP_C), W = U64(DB_P(DBP_W)), gh = grp * U64(DB_P(DBP_H)), E0 = DB_PRM64(DBP_E0);
    u64 ue = DB_P(DBP_LAYOUT) != 0u ? W * C : W, cw = DB_P(DBP_LAYOUT) != 0u ? C : 1ul;
    u64 a = (gh + U64(box.x)) * ue + U64(box.z) * cw - E0;
    if (U64(DB_P(DBP_NC)) > 1ul) /* channels c0 .. the channel tile's end */
        return end != 0u ? a + (C - c0 <= U64(DB_P(DBP_TILEC)) ? C : c0 + U64(DB_P(DBP_TILEC))) : a + c0;
    return end != 0u ? (gh + U64(box.y - 1u)) * ue + U64(box.w) * cw - E0 : a;
}

/* The sample (from the chunk's first) that tile g belongs to. */
DBFN u64 db_tile_sample(DB_PRM_BUFS u64 g)
{
    u64 grp = db_tile_group(DB_PRM_ARGS g);
    return db_udiv(grp, DB_PRM64(DBP_GPS)) - DB_PRM64(DBP_N0);
}

/* Mask pass for tile g of the chunk: writes the keep bits of its rows (or of its columns of
 * its one row, or of its channels of one row and column); returns how many it keeps. Random words are made only for
 * candidate blocks, DB_BATCH at a time (db_fire_batch). With vol (db_mask_volumes: the tile is a
 * whole slice, its bits set already, every slice of its volume the work item's) it only drops
 * the blocks of its own slice's candidates, in every slice they reach, and returns 0. */
DBFN u32 db_mask_tile(DB_DROP_BUFS u64 g, u64 wa, u64 wb, u32 vol)
{
    u64 C = DB_PRM64(DBP_C);
    u32 H = DB_P(DBP_H), W = DB_P(DBP_W), nhwc = DB_P(DBP_LAYOUT);
    u64 NC = U64(DB_P(DBP_NC));
    u64 grp = db_tile_group(DB_PRM_ARGS g);
    u32x4 box = db_tile_rows(DB_PRM_ARGS g, grp);
    u32 h0 = box.x, h1 = box.y, w0 = box.z, w1 = box.w;
    if (h0 >= h1) return 0u;
    u64 gh = grp * U64(H), ue = nhwc != 0u ? U64(W) * C : U64(W);
    /* the group's sample n, slice d and (NCDHW) channel */
    u32 D = DB_P(DBP_D);
    u64 n = db_udiv(grp, DB_PRM64(DBP_GPS)), rest = grp - n * DB_PRM64(DBP_GPS), cd = db_udiv(rest, U64(D));
    u32 d = U32(rest - cd * U64(D));
    u64 c0 = nhwc != 0u ? db_tile_chan(DB_PRM_ARGS g, grp) : cd, c1 = c0 + 1ul;
    if (nhwc != 0u) c1 = NC == 1ul || C - c0 <= U64(DB_P(DBP_TILEC)) ? C : c0 + U64(DB_P(DBP_TILEC));
    /* the tile's bits, all kept to start with */
    u64 a = db_tile_bit(DB_PRM_ARGS grp, box, c0, 0u), b = db_tile_bit(DB_PRM_ARGS grp, box, c0, 1u);
    if (vol == 0u) db_mark_bits(DB_BITS_ARGS a, b - 1ul, wa, wb, 1u);

    /* candidates whose block reaches rows [h0, h1), columns [w0, w1) */
    u32 up = DB_P(DBP_UP), left = DB_P(DBP_LEFT);
    u32 ci0 = h0 >= up ? h0 - up : 0u;
    if (ci0 < DB_P(DBP_ILO)) ci0 = DB_P(DBP_ILO);
    u64 ci1_64 = U64(h1) + U64(DB_P(DBP_DOWN));
    u32 ci1 = ci1_64 < U64(DB_P(DBP_IEND)) ? U32(ci1_64) : DB_P(DBP_IEND);
    u32 cj0 = w0 >= left ? w0 - left : 0u;
    if (cj0 < DB_P(DBP_JLO)) cj0 = DB_P(DBP_JLO);
    u64 cj1_64 = U64(w1) + U64(DB_P(DBP_RIGHT));
    u32 cj1 = cj1_64 < U64(DB_P(DBP_JEND)) ? U32(cj1_64) : DB_P(DBP_JEND);
    /* and slices: a tile lies in one slice d, and candidates of slices [d - up, d + down] reach it */
    u32 dup = DB_P(DBP_DUP), ddown = DB_P(DBP_DDOWN), dc0 = d >= dup ? d - dup : 0u;
    if (dc0 < DB_P(DBP_DLO)) dc0 = DB_P(DBP_DLO);
    u64 dc1_64 = U64(d) + U64(ddown) + 1ul;
    u32 dc1 = dc1_64 < U64(DB_P(DBP_DEND)) ? U32(dc1_64) : DB_P(DBP_DEND), nsl = 1u;
    if (vol != 0u) { /* candidate slice d alone, its blocks in slices [d - ddown, d + dup] */
        dc0 = d;
        dc1 = d >= DB_P(DBP_DLO) && d < DB_P(DBP_DEND) ? d + 1u : d;
        u32 s0 = d >= ddown ? d - ddown : 0u, s1 = D - 1u - d > dup ? d + dup : D - 1u;
        gh -= U64(d - s0) * U64(H);
        nsl = s1 - s0 + 1u;
    }
    u64 sN = DB_PRM64(DBP_SN), sC = DB_PRM64(DBP_SC), sD = DB_PRM64(DBP_SD), sH = DB_PRM64(DBP_SH),
        sW = DB_PRM64(DBP_SW);
    for (u32 dc = dc0; dc < dc1 && ci0 < ci1 && cj0 < cj1; dc++)
        for (u64 c = c0; c < c1; c++) {
            u64 ebase = n * sN + c * sC + U64(dc) * sD, cbit = nhwc != 0u ? c : 0ul;
            u64 blk[DB_QUEUE];
#if defined(DB_LANG_CL) && defined(DB_CPU)
            db_queue_clear(blk);
#endif
            u32 nb = 0u;
            u64 last = 0xFFFFFFFFFFFFFFFFul;
            /* unit stride: the run of blocks from the first candidate to the last (DB_TAKE_RUN) */
            u64 run = (ebase + U64(ci0) * sH + U64(cj0)) >> 2,
                end = ((ebase + U64(ci1 - 1u) * sH + U64(cj1 - 1u)) >> 2) + 1ul;
            if (sW == 1ul && DB_TAKE_RUN(end - run, U64(ci1 - ci0), U64(cj1 - cj0))) {
                for (; run < end; run += U64(DB_BATCH)) {
                    u32 take = end - run < U64(DB_BATCH) ? U32(end - run) : U32(DB_BATCH);
                    db_flush(DB_DROP_ARGS DB_TILE_PASS, blk, run, take, ebase, ci0, ci1, cj0, cj1);
                }
                continue;
            }
            for (u32 i = ci0; i < ci1; i++) {
                u64 erow = ebase + U64(i) * sH, efirst = erow + U64(cj0) * sW, elast = erow + U64(cj1 - 1u) * sW;
                if (sW == 1ul) { /* unit stride: the row's span of blocks, queued as a range */
                    u64 b0 = efirst >> 2, b1 = elast >> 2;
                    if (b0 == last) b0++;
                    last = b1;
                    while (b0 <= b1) {
                        u32 take = U32(DB_BATCH) - nb;
                        if (U64(take) > b1 - b0 + 1ul) take = U32(b1 - b0 + 1ul);
#if defined(DB_LANG_CL) && defined(DB_CPU)
                        db_queue_span(blk, nb, b0, take);
#else
                        for (u32 l = 0u; l < take; l++) blk[nb + l] = b0 + U64(l);
#endif
                        nb += take;
                        b0 += U64(take);
                        if (nb == U32(DB_BATCH)) {
                            db_flush(DB_DROP_ARGS DB_TILE_PASS, blk, DB_NO_RUN, nb, ebase, ci0, ci1, cj0, cj1);
                            nb = 0u;
                        }
                    }
                    continue;
                }
                for (u64 e = efirst; e <= elast; e += sW) { /* one block per candidate */
                    if ((e >> 2) == last) continue;
                    last = e >> 2;
                    blk[nb] = last;
                    nb++;
                    if (nb == U32(DB_BATCH)) {
                        db_flush(DB_DROP_ARGS DB_TILE_PASS, blk, DB_NO_RUN, nb, ebase, ci0, ci1, cj0, cj1);
                        nb = 0u;
                    }
                }
            }
            if (nb > 0u) db_flush(DB_DROP_ARGS DB_TILE_PASS, blk, DB_NO_RUN, nb, ebase, ci0, ci1, cj0, cj1);
        }

    return vol != 0u ? 0u : db_count_bits(DB_BITS_ARGS a, b - 1ul, wa, wb);
}

/* The first bit (end 0) or the end bit (end 1) of tile g in the chunk (db_mask_tile's a, b). */
DBFN u64 db_tile_edge(DB_PRM_BUFS u64 g, u32 end)
{
    u64 grp = db_tile_group(DB_PRM_ARGS g);
    return db_tile_bit(DB_PRM_ARGS grp, db_tile_rows(DB_PRM_ARGS g, grp), db_tile_chan(DB_PRM_ARGS g, grp), end);
}

#ifdef DB_CPU_BATCHES
/* ---- CPU devices: the planes of a work item in one queue ----------------------------------
 * In the CPU shape (whole planes as tiles) a plane of a 14 x 14 map with a block of 7 holds 27
 * candidate blocks, and a batch per plane would leave 21 of its 48 lanes empty. For NCHW
 * masks that no planes share, db_mask_planes queues the blocks of all of a work item's planes
 * together, and a fired word finds its plane, row and column from its candidate index alone. */

/* Runs the n queued blocks of whole planes of map W x H (HW = H W elements) and drops every
 * fired candidate among them. */
DBFN void db_flush_planes(DB_DROP_BUFS const u64 *blk, u32 n, u64 HW, u32 H, u32 W, u64 wa, u64 wb)
{
    u64 thr = DB_PRM64(DBP_THR);
    u32x4 base = MAKE_U32X4(DB_P(DBP_BASE), DB_P(DBP_BASE + 1), DB_P(DBP_BASE + 2), DB_P(DBP_BASE + 3));
    DB_FIRED fired = db_fire_batch(blk, DB_NO_RUN, n, base, DB_P(DBP_KEY), DB_P(DBP_KEY + 1), DB_P(DBP_WMASK), U32(thr),
                                   thr > 0xFFFFFFFFul ? 1u : 0u);
    if (db_fired_any(fired) == 0u) return; /* mostly */
    for (u32 q = 0u; q < (U32(DB_BATCH) + 7u) / 8u; q++) {
        for (u32 bits = db_fired_word(fired, q); bits != 0u;) {
            u32 t = MSB32(bits);
            bits ^= 1u << t;
            t += 32u * q;
            u64 e = 4ul * blk[t >> 2] + U64(t & 3u), g = db_udiv(e, HW), off = e - g * HW;
            u32 i = U32(off) / W, j = U32(off) - i * W;
            if (i >= DB_P(DBP_ILO) && i < DB_P(DBP_IEND) && j >= DB_P(DBP_JLO) && j < DB_P(DBP_JEND))
                db_drop(DB_DROP_ARGS g * U64(H), 1u, 0u, H, 0u, W, U64(W), 0ul, wa, wb, i, j);
        }
    }
}

/* Queues blocks b0 .. b1 (inclusive), running each batch that fills. */
DBFN void db_queue_planes(DB_DROP_BUFS u64 *blk, u32 *nb, u64 b0, u64 b1, u64 HW, u32 H, u32 W, u64 wa, u64 wb)
{
    while (b0 <= b1) {
        u32 take = U32(DB_BATCH) - *nb;
        if (U64(take) > b1 - b0 + 1ul) take = U32(b1 - b0 + 1ul);
        db_queue_span(blk, *nb, b0, take);
        *nb += take;
        b0 += U64(take);
        if (*nb == U32(DB_BATCH)) {
            db_flush_planes(DB_DROP_ARGS blk, *nb, HW, H, W, wa, wb);
            *nb = 0u;
        }
    }
}

/* The mask pass of work item w's tiles t0 .. t1 - 1 when they are whole NCHW planes inside the
 * chunk with unshared masks (then returns 1; else 0, and does nothing). */
DBFN u32 db_mask_planes(DB_MASK_BUFS u64 t0, u64 t1, u64 wa, u64 wb)
{
    u64 C = DB_PRM64(DBP_C);
    u32 H = DB_P(DBP_H), W = DB_P(DBP_W);
    u64 HW = U64(H) * U64(W);
    if (DB_P(DBP_LAYOUT) != 0u || DB_P(DBP_D) != 1u || U64(DB_P(DBP_NT)) * U64(DB_P(DBP_NS)) * U64(DB_P(DBP_NC)) != 1ul)
        return 0u;
    if (DB_PRM64(DBP_SW) != 1ul || DB_PRM64(DBP_SH) != U64(W) || DB_PRM64(DBP_SC) != HW || DB_PRM64(DBP_SN) != C * HW)
        return 0u;
    u64 g0 = DB_PRM64(DBP_TA0) + t0, g1 = DB_PRM64(DBP_TA0) + t1; /* planes n C + c */
    if (DB_PRM64(DBP_U0) > g0 * U64(H) || DB_PRM64(DBP_U1) < g1 * U64(H)) return 0u;
    u32 ci0 = DB_P(DBP_ILO), ci1 = DB_P(DBP_IEND), cj0 = DB_P(DBP_JLO), cj1 = DB_P(DBP_JEND);
    /* a plane's run of blocks, about; from two batches on, the tile path's runs (no queue) win */
    u64 span = ci0 < ci1 && cj0 < cj1
                   ? ((U64(ci1 - 1u) * U64(W) + U64(cj1 - 1u)) >> 2) - ((U64(ci0) * U64(W) + U64(cj0)) >> 2) + 2ul
                   : 0ul;
    if (span >= 2ul * U64(DB_BATCH)) return 0u;
    u64 E0 = DB_PRM64(DBP_E0);
    db_mark_bits(DB_BITS_ARGS g0 * HW - E0, g1 * HW - E0 - 1ul, wa, wb, 1u);
    if (span != 0ul) {
        u64 blk[DB_QUEUE];
        db_queue_clear(blk);
        u32 nb = 0u;
        u64 last = 0xFFFFFFFFFFFFFFFFul; /* a block two planes share is queued once */
        int run = DB_TAKE_RUN(span, U64(ci1 - ci0), U64(cj1 - cj0));
        for (u64 g = g0; g < g1; g++) {
            u64 eb = g * HW;
            for (u32 i = ci0; i < ci1; i++) {
                u64 b0 = (eb + U64(i) * U64(W) + U64(cj0)) >> 2, b1 = (eb + U64(i) * U64(W) + U64(cj1 - 1u)) >> 2;
                if (run) { /* the plane's run of blocks, rows between included */
                    b1 = (eb + U64(ci1 - 1u) * U64(W) + U64(cj1 - 1u)) >> 2;
                    i = ci1;
                }
                if (b0 == last) b0++;
                if (b0 > b1) continue;
                last = b1;
                db_queue_planes(DB_DROP_ARGS blk, &nb, b0, b1, HW, H, W, wa, wb);
            }
        }
        if (nb > 0u) db_flush_planes(DB_DROP_ARGS blk, nb, HW, H, W, wa, wb);
    }
    /* kept bits, counted per plane and added per sample */
    u64 cur = db_udiv(g0, C) - DB_PRM64(DBP_N0), acc = 0ul;
    for (u64 g = g0; g < g1; g++) {
        u64 s = db_udiv(g, C) - DB_PRM64(DBP_N0);
        if (s != cur) {
            db_add_kept(DB_TOTAL_ARGS cur, acc);
            cur = s;
            acc = 0ul;
        }
        acc += U64(db_count_bits(DB_BITS_ARGS g * HW - E0, (g + 1ul) * HW - E0 - 1ul, wa, wb));
    }
    db_add_kept(DB_TOTAL_ARGS cur, acc);
    return 1u;
}
#endif

/* ---- DropBlock3D: whole volumes a work item ----------------------------------------------
 * A tile lies in one slice, and a 3-D block reaches bd slices: tile by tile, a candidate's
 * words would be made once for every slice its block reaches. Where a work item's tiles are
 * whole slices making whole volumes (kernel_params.c rounds DBP_TPW to a multiple of D when
 * tiles are whole slices), db_mask_volumes sets every slice's bits first, then makes each
 * candidate's words once and drops its block in all the slices it reaches (all the item's);
 * db_mask_item counts them. Returns 0 (and does nothing) where the item's tiles are not such. */
DBFN u32 db_mask_volumes(DB_DROP_BUFS u64 t0, u64 t1, u64 wa, u64 wb)
{
    u64 D = U64(DB_P(DBP_D)), H = U64(DB_P(DBP_H)), g0 = DB_PRM64(DBP_TA0) + t0, g1 = DB_PRM64(DBP_TA0) + t1;
    if (D == 1ul || U64(DB_P(DBP_NT)) * U64(DB_P(DBP_NS)) * U64(DB_P(DBP_NC)) != 1ul) return 0u;
    if (g0 != db_udiv(g0, D) * D || g1 != db_udiv(g1, D) * D) return 0u;
    if (DB_PRM64(DBP_U0) > g0 * H || DB_PRM64(DBP_U1) < g1 * H) return 0u;
    for (u64 t = t0; t < t1; t++)
        db_mark_bits(DB_BITS_ARGS db_tile_edge(DB_PRM_ARGS t, 0u), db_tile_edge(DB_PRM_ARGS t, 1u) - 1ul, wa, wb, 1u);
    for (u64 t = t0; t < t1; t++) db_mask_tile(DB_DROP_ARGS t, wa, wb, 1u);
    return 1u;
}

/* Mask pass, work item w: tiles w * TPW .. of the chunk one after another, their kept bits
 * added to their samples' counts once per run of tiles of one sample (db_add_kept): small
 * tiles go in numbers, so that neither the work items nor the atomics outnumber the work (the
 * words between an item's tiles are its own; only those at its two ends are shared). */
DBFN void db_mask_item(DB_MASK_BUFS u64 w)
{
    u64 t0 = w * U64(DB_P(DBP_TPW)), t1 = t0 + U64(DB_P(DBP_TPW));
    if (t1 > U64(DB_P(DBP_NTILES))) t1 = U64(DB_P(DBP_NTILES));
    u64 wa = (db_tile_edge(DB_PRM_ARGS t0, 0u) + 31ul) >> 5, wb = db_tile_edge(DB_PRM_ARGS t1 - 1ul, 1u) >> 5;
    if (wb < wa) wb = wa; /* inside one shared word: none its own */
#ifdef DB_CPU_BATCHES
    if (db_mask_planes(DB_MASK_ARGS t0, t1, wa, wb) != 0u) return;
#endif
    u32 vol = db_mask_volumes(DB_DROP_ARGS t0, t1, wa, wb); /* 1: the tiles' bits made, to count */
    u64 cur = 0ul, acc = 0ul;
    for (u64 t = t0; t < t1; t++) {
        u64 s = db_tile_sample(DB_PRM_ARGS t);
        if (s != cur) {
            db_add_kept(DB_TOTAL_ARGS cur, acc);
            cur = s;
            acc = 0ul;
        }
        acc += vol != 0u ? U64(db_count_bits(DB_BITS_ARGS db_tile_edge(DB_PRM_ARGS t, 0u),
                                             db_tile_edge(DB_PRM_ARGS t, 1u) - 1ul, wa, wb))
                         : U64(db_mask_tile(DB_DROP_ARGS t, wa, wb, 0u));
    }
    db_add_kept(DB_TOTAL_ARGS cur, acc);
}

/* ---- pass 1, GPUs: scatter, then count --------------------------------------------------
 * The tiles above make a candidate's words once for every tile its block reaches (on a GPU's
 * few-row tiles 2.35 times the candidate blocks at 14 x 14 with a block of 7, NHWC's one-column
 * tiles 100 times). The scatter pass makes each candidate block's words once: the candidate
 * rows of the chunk's planes are numbered (plane-major, rows ILO .. IEND), a work item takes
 * DBP_SKR of them, and a row's blocks are made by its item alone (a block the previous row of
 * the plane ends in, by that row's). A fired candidate's block is cleared wherever it lands
 * in the chunk, with atomics (the mask was filled with ones before the pass), so no item
 * owns words and none waits for another. The kept bits are counted after it, by the count
 * pass. Compat none and unshared masks only (the words of a shared mask serve several planes):
 * the tiles take the rest. In 3-D the candidate rows are those of the candidate slices whose
 * blocks reach the chunk's (DBP_SG0 on), and a block is cleared in each slice it reaches. */

/* Scatter pass, work item w: candidate rows w SKR .. of the chunk (db_scatter_items). */
DBFN void db_scatter_item(DB_DROP_BUFS u64 w)
{
    u64 C = DB_PRM64(DBP_C), U0 = DB_PRM64(DBP_U0), U1 = DB_PRM64(DBP_U1);
    u64 sN = DB_PRM64(DBP_SN), sC = DB_PRM64(DBP_SC), sH = DB_PRM64(DBP_SH);
    u32 H = DB_P(DBP_H), W = DB_P(DBP_W), nhwc = DB_P(DBP_LAYOUT);
    u32 ilo = DB_P(DBP_ILO), iend = DB_P(DBP_IEND), jlo = DB_P(DBP_JLO), jend = DB_P(DBP_JEND);
    u32 up = DB_P(DBP_UP), down = DB_P(DBP_DOWN), D = DB_P(DBP_D), dup = DB_P(DBP_DUP), ddown = DB_P(DBP_DDOWN);
    u64 NI = U64(iend - ilo), R = DB_PRM64(DBP_SROWS), sg0 = DB_PRM64(DBP_SG0), GPS = DB_PRM64(DBP_GPS);
    u64 ga = db_udiv(U0, U64(H)), gb = db_udiv(U1 - 1ul, U64(H)); /* the chunk's groups, inclusive */
    u64 r0 = w * U64(DB_P(DBP_SKR)), r1 = r0 + U64(DB_P(DBP_SKR));
    if (r1 > R) r1 = R;
    u64 blk[DB_QUEUE]; /* unused: the blocks go as runs */
#if defined(DB_LANG_CL) && defined(DB_CPU)
    db_queue_clear(blk);
#endif
    for (u64 r = r0; r < r1; r++) {
        u64 p = db_udiv(r, NI), grp, c = 0ul, ue = U64(W), cbit = 0ul;
        u32 i = ilo + U32(r - p * NI);
        if (nhwc != 0u) { /* plane p: group sg0 + p / C (a sample's slice), channel p % C */
            u64 q = db_udiv(p, C);
            grp = sg0 + q;
            c = p - q * C;
            ue = U64(W) * C;
            cbit = c;
        } else {
            grp = sg0 + p;
        }
        u64 n = db_udiv(grp, GPS), rest = grp - n * GPS, cd = db_udiv(rest, U64(D));
        u32 dc = U32(rest - cd * U64(D));
        if (nhwc == 0u) c = cd;
        if (dc < DB_P(DBP_DLO) || dc >= DB_P(DBP_DEND)) continue;
        /* the slices its blocks reach [ta, tb] (groups) within the chunk's */
        u32 s0 = dc >= ddown ? dc - ddown : 0u, s1 = D - 1u - dc > dup ? dc + dup : D - 1u;
        u64 ta = grp - U64(dc - s0), tb = grp + U64(s1 - dc);
        if (ta < ga) ta = ga;
        if (tb > gb) tb = gb;
        if (ta > tb) continue;
        /* their rows in the chunk (all of them across several slices: db_drop clips to the
         * chunk), and the candidate rows whose blocks reach them */
        u64 gh = ta * U64(H), gl = tb * U64(H);
        u32 hs = U0 > gh && ta == tb ? U32(U0 - gh) : 0u, he = U1 - gl < U64(H) && ta == tb ? U32(U1 - gl) : H;
        u32 rlo = hs > up ? hs - up : 0u;
        if (rlo < ilo) rlo = ilo;
        u64 rhi64 = U64(he) + U64(down);
        u32 rhi = rhi64 < U64(iend) ? U32(rhi64) : iend;
        if (i < rlo || i >= rhi) continue;
        u64 ebase = n * sN + c * sC + U64(dc) * DB_PRM64(DBP_SD), erow = ebase + U64(i) * sH;
        u64 b0 = (erow + U64(jlo)) >> 2, b1 = (erow + U64(jend - 1u)) >> 2;
        if (i > rlo && b0 == ((erow - sH + U64(jend - 1u)) >> 2)) b0++; /* the previous row's */
        for (; b0 <= b1; b0 += U64(DB_BATCH)) {
            u32 take = b1 - b0 < U64(DB_BATCH) ? U32(b1 - b0) + 1u : U32(DB_BATCH);
            db_flush(DB_DROP_ARGS gh, U32(tb - ta) + 1u, hs, he, 0u, W, ue, cbit, 0ul, 0ul, blk, b0, take, ebase, rlo,
                     rhi, jlo, jend);
        }
    }
}

/* Sample s's count as the other work items' atomics left it (an atomic read of both words). */
DBFN u64 db_kept_fresh(DB_TOTAL_BUFS u32 s)
{
    return U64(ATOMIC_ADD(kept, 2ul * U64(s), 0u)) | (U64(ATOMIC_ADD(kept, 2ul * U64(s) + 1ul, 0u)) << 32);
}

/* Count pass, work item w: the kept bits of mask words w CKW .. (those of the chunk's
 * elements), added to their samples' counts once per sample; in a fused job (DBP_FUSED) the
 * last item to finish then makes the scales, as db_scale_item would in a launch of its own. */
DBFN void db_count_item(DB_COUNT_BUFS u64 w)
{
    u64 nelem = DB_PRM64(DBP_NELEM), nw = (nelem + 31ul) >> 5, E0 = DB_PRM64(DBP_E0), CHW = DB_PRM64(DBP_CHW);
    u64 N0 = DB_PRM64(DBP_N0), w0 = w * U64(DB_P(DBP_CKW)), w1 = w0 + U64(DB_P(DBP_CKW));
    if (w1 > nw) w1 = nw;
    if (w0 < w1) {
        u64 cur = db_udiv(E0 + (w0 << 5), CHW), acc = 0ul;
        u64 next = (cur + 1ul) * CHW - E0; /* the chunk's first bit of the next sample */
        cur -= N0;
        for (u64 wi = w0; wi < w1; wi++) {
            u32 word = mask[IX(wi)];
            u64 lo = wi << 5, hi = lo + 32ul < nelem ? lo + 32ul : nelem;
            while (lo < hi) {
                u64 end = next < hi ? next : hi;
                u32 nb = U32(end - lo), m = nb == 32u ? 0xFFFFFFFFu : ((1u << nb) - 1u) << U32(lo & 31ul);
                acc += U64(POPCOUNT(word & m));
                lo = end;
                if (lo == next) {
                    db_add_kept(DB_TOTAL_ARGS cur, acc);
                    cur++;
                    acc = 0ul;
                    next += CHW;
                }
            }
        }
        db_add_kept(DB_TOTAL_ARGS cur, acc);
    }
    if (DB_P(DBP_FUSED) == 0u) return;
    /* the last item: every other's counts are in (each fenced its adds before its ticket) */
    u32 ns = DB_P(DBP_NSAMP);
    DB_FENCE_GLOBAL();
    u32 ticket = ATOMIC_ADD(kept, 2ul * U64(ns), 1u);
    if (U64(ticket) + 1ul != (nw + U64(DB_P(DBP_CKW)) - 1ul) / U64(DB_P(DBP_CKW))) return;
    DB_FENCE_GLOBAL();
    u64 K = 0ul;
    for (u32 s = 0u; s < ns && DB_P(DBP_NORM) == 0u; s++) K += db_kept_fresh(DB_TOTAL_ARGS s);
    u32 v = DB_P(DBP_NORM) == 0u ? db_ratio(DB_PRM64(DBP_NUMEL), K) : 0x3F800000u; /* global, or none */
    for (u32 s = 0u; s < ns; s++) {
        if (DB_P(DBP_NORM) == 1u) v = db_ratio(CHW, db_kept_fresh(DB_TOTAL_ARGS s));
        scales[IX(s)] = v;
    }
}

/* ---- pass 2: scales ---------------------------------------------------------------------- */

/* Total pass, one work item, for a chunk that is the whole tensor: K, the sum of the
 * ns = DB_P(DBP_NSAMP) per-sample counts, into kept[2 ns] (low) and kept[2 ns + 1]. */
/* Scale pass, work item s of a chunk that is the whole tensor, compat none: the samples' scale
 * bits as db_plan_scales computes them, so that the apply pass needs no trip to the host, in
 * one launch: global, item 0 sums K over the samples' counts and writes every sample's scale
 * (the other items do nothing); sample, item s its own; none, 1. */
DBFN void db_scale_item(DB_SCALE_BUFS u32 s)
{
    u32 ns = DB_P(DBP_NSAMP);
    if (DB_P(DBP_NORM) == 0u) {
        if (s != 0u) return;
        u64 K = 0ul;
        for (u32 t = 0u; t < ns; t++) K += U64(kept[IX(2u * t)]) | (U64(kept[IX(2u * t + 1u)]) << 32);
        u32 v = db_ratio(DB_PRM64(DBP_NUMEL), K);
        for (u32 t = 0u; t < ns; t++) scales[IX(t)] = v;
        return;
    }
    u32 v = 0x3F800000u; /* DROPBLOCK_NORMALIZE_NONE */
    if (DB_P(DBP_NORM) == 1u)
        v = db_ratio(DB_PRM64(DBP_CHW), U64(kept[IX(2u * s)]) | (U64(kept[IX(2u * s + 1u)]) << 32));
    scales[IX(s)] = v;
}

/* ---- pass 3: apply ----------------------------------------------------------------------- */

/* Element k of the chunk, exactly: its keep bit and its sample's scale applied to input bits x
 * (dtype-wide) with db_apply_bits. The fast kernels leave this to the tail of a chunk, to
 * compat keras_cv, and to the lanes db_vbad reports. */
DBFN u32 db_apply_elem(DB_APPLY_BUFS u64 k, u32 x)
{
    u32 keep = (mask[IX(k >> 5)] >> U32(k & 31ul)) & 1u;
    u64 si = (DB_PRM64(DBP_E0) + k) / DB_PRM64(DBP_CHW) - DB_PRM64(DBP_N0);
    return db_apply_bits(x, scales[IX(si)], keep, DB_P(DBP_KERAS), DB_P(DBP_DTYPE));
}

#endif
