/* db_passes.h: the three passes of DESIGN.md as functions in db_portable.h's subset, shared by
 * the OpenCL kernels (dropblock.cl), the Vulkan shaders (*.comp) and the C test of the
 * algorithm. Buffers are named prm (parameter words), mask (mask rows of the chunk), counts
 * (kept bits per mask row), so the API files only declare them: GLSL as anonymous storage
 * blocks with these member names, OpenCL/C as pointer parameters (DB_*_BUFS). */
#ifndef DB_PASSES_H
#define DB_PASSES_H

#include "db_math.h"

#include "db_params.h"

#if defined(DB_LANG_GLSL)
#define DB_MASK_BUFS
#define DB_COUNT_BUFS
#define DB_PRM_BUFS
#else
#if defined(DB_LANG_CL)
#define DB_GLOBAL __global
#else
#define DB_GLOBAL
#endif
#define DB_MASK_BUFS DB_GLOBAL const u32 *prm, DB_GLOBAL u32 *mask,
#define DB_COUNT_BUFS DB_GLOBAL const u32 *prm, DB_GLOBAL const u32 *counts,
#define DB_PRM_BUFS DB_GLOBAL const u32 *prm,
#endif

#define DB_PRM64(i) (U64(prm[(i)]) | (U64(prm[(i) + 1]) << 32))

/* Clears keep bits lo..hi (inclusive) of the row starting at word wbase. */
#define DB_CLEAR_BITS(wbase, lo, hi)                                                   \
    for (u32 wi_ = (lo) >> 5; wi_ <= ((hi) >> 5); wi_++) {                              \
        u32 m_ = 0xFFFFFFFFu;                                                           \
        if (wi_ == ((lo) >> 5)) m_ &= 0xFFFFFFFFu << ((lo) & 31u);                      \
        if (wi_ == ((hi) >> 5)) m_ &= 0xFFFFFFFFu >> (31u - ((hi) & 31u));              \
        mask[IX((wbase) + U64(wi_))] &= ~m_;                                            \
    }

/* Mask pass for mask row k of the chunk: writes its RW keep words, returns its kept count.
 * Each fired candidate clears its whole span of the row once (covered tracks the end). */
DBFN u32 db_mask_row(DB_MASK_BUFS u64 k)
{
    u64 C = DB_PRM64(DBP_C);
    u32 H = prm[DBP_H], W = prm[DBP_W], RW = prm[DBP_RW];
    u64 r = DB_PRM64(DBP_R0) + k;
    u64 n, c;
    u32 h;
    if (prm[DBP_LAYOUT] == 1u) { c = r % C; u64 t = r / C; h = U32(t % U64(H)); n = t / U64(H); }
    else { h = U32(r % U64(H)); u64 t = r / U64(H); c = t % C; n = t / C; }
    u64 wbase = k * U64(RW);
    for (u32 wi = 0u; wi < RW; wi++) {
        u32 rest = W - wi * 32u;
        mask[IX(wbase + U64(wi))] = rest >= 32u ? 0xFFFFFFFFu : ((1u << rest) - 1u);
    }
    u32 up = prm[DBP_UP], down = prm[DBP_DOWN], left = prm[DBP_LEFT], right = prm[DBP_RIGHT];
    u32 i0 = h >= up ? h - up : 0u;
    if (i0 < prm[DBP_ILO]) i0 = prm[DBP_ILO];
    u64 i1 = U64(h) + U64(down) + 1ul;
    if (i1 > U64(prm[DBP_IEND])) i1 = U64(prm[DBP_IEND]);
    u32 jlo = prm[DBP_JLO], jend = prm[DBP_JEND], wmask = prm[DBP_WMASK];
    u64 thr = DB_PRM64(DBP_THR), sH = DB_PRM64(DBP_SH), sW = DB_PRM64(DBP_SW);
    u64 ebase = n * DB_PRM64(DBP_SN) + c * DB_PRM64(DBP_SC);
    u32x4 base = MAKE_U32X4(prm[DBP_BASE], prm[DBP_BASE + 1], prm[DBP_BASE + 2], prm[DBP_BASE + 3]);
    u32 k0 = prm[DBP_KEY], k1 = prm[DBP_KEY + 1];
    u32x4 words = MAKE_U32X4(0u, 0u, 0u, 0u);
    u64 blk = 0ul;
    u32 have = 0u;
    for (u64 i = U64(i0); i < i1; i++) {
        u64 erow = ebase + i * sH;
        u32 covered = 0u; /* bits below this are already cleared for row i */
        for (u32 j = jlo; j < jend; j++) {
            u64 e = erow + U64(j) * sW;
            if (have == 0u || (e >> 2) != blk) {
                blk = e >> 2;
                words = db_philox(db_ctr_add(base, blk), k0, k1);
                have = 1u;
            }
            if (U64(db_sel4(words, U32(e & 3ul)) & wmask) < thr) {
                u32 lo = j >= right ? j - right : 0u;
                u64 hi64 = U64(j) + U64(left);
                u32 hi = hi64 >= U64(W) ? W - 1u : U32(hi64);
                if (lo < covered) lo = covered;
                if (lo <= hi) {
                    DB_CLEAR_BITS(wbase, lo, hi)
                    covered = hi + 1u;
                }
            }
        }
    }
    u32 kept = 0u;
    for (u32 wi = 0u; wi < RW; wi++) kept += POPCOUNT(mask[IX(wbase + U64(wi))]);
    return kept;
}

/* Count pass: the kept bits of sample n0 + s within the chunk (64-bit). */
DBFN u64 db_count_sample(DB_COUNT_BUFS u64 s)
{
    u64 CH = DB_PRM64(DBP_CH), r0 = DB_PRM64(DBP_R0), r1 = r0 + DB_PRM64(DBP_NROWS);
    u64 n = DB_PRM64(DBP_N0) + s;
    u64 a = n * CH, b = a + CH;
    if (a < r0) a = r0;
    if (b > r1) b = r1;
    u64 sum = 0ul;
    for (u64 r = a; r < b; r++) sum += U64(counts[IX(r - r0)]);
    return sum;
}

/* Apply pass, element k of the chunk: x = (mask word index in the chunk, bit, sample index in
 * the chunk's scales). The caller loads x, the word and the scale, and stores
 * db_apply_bits(x, scale, bit of word, prm[DBP_KERAS], prm[DBP_DTYPE]). */
DBFN u32x4 db_apply_locate(DB_PRM_BUFS u64 k)
{
    u64 C = DB_PRM64(DBP_C), W = U64(prm[DBP_W]);
    u64 p = DB_PRM64(DBP_E0) + k;
    u64 r, w;
    if (prm[DBP_LAYOUT] == 1u) {
        u64 c = p % C, t = p / C;
        w = t % W;
        r = (t / W) * C + c;
    } else {
        r = p / W;
        w = p % W;
    }
    u64 wi = (r - DB_PRM64(DBP_R0)) * U64(prm[DBP_RW]) + (w >> 5);
    u64 si = r / DB_PRM64(DBP_CH) - DB_PRM64(DBP_N0);
    return MAKE_U32X4(U32(wi), U32(w & 31ul), U32(si), 0u);
}

#endif
