/* db_philox_cl.h: the mask pass's candidate words in batches on CPU devices under OpenCL
 * (-DDB_CPU), db_math.h's batch interface (DB_BATCH, DB_QUEUE, DB_FIRED, db_fired_word,
 * db_fired_any, db_fire_batch, db_queue_clear, db_queue_span): the ten rounds of 48 blocks in
 * six independent chains of 8-lane vectors, the shape in which CPU OpenCL compilers run them on
 * SIMD units with each multiply's latency hidden by the other chains (six was the fastest on
 * AVX-512, four and eight slower). OpenCL C only: dropblock.cl includes it after db_math.h and
 * before db_passes.h. */
#ifndef DB_PHILOX_CL_H
#define DB_PHILOX_CL_H

#include "db_math.h"

#define DB_CPU_BATCHES
#define DB_CHAINS 6
#define DB_BATCH 48
#define DB_FIRED uint8
/* a queue of blocks has room for one 8-lane store past its end (db_queue_span) */
#define DB_QUEUE (DB_BATCH + 8)
DBFN u32 db_fired_word(uint8 f, u32 q)
{
    uint4 h = q < 4u ? f.lo : f.hi;
    return db_sel4(h, q & 3u);
}
DBFN u32 db_fired_any(uint8 f) { return any(f != (uint8)(0u)) ? 1u : 0u; }

/* Eight blocks a vector of 64-bit lanes holding 32-bit words: a lane's product of two words is
 * one vpmuludq-style multiply with both halves in place, and whatever the upper halves hold
 * never reaches a lower half (multiplies read the low 32 bits, XORs and adds keep them apart). */
#define DB_L32 0xFFFFFFFFul
#define DB_PHILOX8(c0, c1, c2, c3, k0, k1) \
    { \
        ulong8 p0_ = (c0 & DB_L32) * 0xD2511F53ul, p1_ = (c2 & DB_L32) * 0xCD9E8D57ul; \
        c0 = (p1_ >> 32) ^ c1 ^ k0; \
        c1 = p1_; \
        c2 = (p0_ >> 32) ^ c3 ^ k1; \
        c3 = p0_; \
    }

/* counters base + b for 8 blocks, words in the low halves */
inline void db_ctr8(ulong8 b, u32x4 base, ulong8 *c0, ulong8 *c1, ulong8 *c2, ulong8 *c3)
{
    ulong8 s = (ulong8)(base.x) + (b & DB_L32);
    *c0 = s;
    s = (s >> 32) + (ulong8)(base.y) + (b >> 32);
    *c1 = s;
    s = (s >> 32) + (ulong8)(base.z);
    *c2 = s;
    *c3 = (s >> 32) + (ulong8)(base.w);
}

/* the 4 x 8 words' fire bits, lane l's at bits 4 l .. 4 l + 3 */
inline uint db_bits8(ulong8 c0, ulong8 c1, ulong8 c2, ulong8 c3, long8 live, long8 fa, ulong wm, ulong th)
{
    long8 f0 = (((c0 & wm) < th) | fa) & live, f1 = (((c1 & wm) < th) | fa) & live;
    long8 f2 = (((c2 & wm) < th) | fa) & live, f3 = (((c3 & wm) < th) | fa) & live;
    ulong8 sh = (ulong8)(0, 4, 8, 12, 16, 20, 24, 28);
    ulong8 v = ((as_ulong8(f0) & 1ul) << sh) | ((as_ulong8(f1) & 2ul) << sh) | ((as_ulong8(f2) & 4ul) << sh) |
               ((as_ulong8(f3) & 8ul) << sh);
    ulong4 v4 = v.lo | v.hi;
    ulong2 v2 = v4.lo | v4.hi;
    return (uint)(v2.lo | v2.hi);
}

DBFN uint8 db_fire_batch(const u64 *blk, u64 run, u32 n, u32x4 base, u32 k0, u32 k1, u32 wmask, u32 thr, u32 all)
{
    ulong8 c0[DB_CHAINS], c1[DB_CHAINS], c2[DB_CHAINS], c3[DB_CHAINS];
    ulong8 iota = (ulong8)(0, 1, 2, 3, 4, 5, 6, 7);
    int r8 = run != DB_NO_RUN;
#pragma unroll
    for (int q = 0; q < DB_CHAINS; q++)
        db_ctr8(r8 ? run + 8ul * (ulong)q + iota : vload8(q, blk), base, &c0[q], &c1[q], &c2[q], &c3[q]);
    /* The blocks are ascending, so when the first and the last counter agree in their three
     * upper words, all do: then round 1's second product and round 2's first are the same for
     * every block, two multiplies of twenty made once. */
    u32x4 cf = db_ctr_add(base, r8 ? run : blk[0]), cl = db_ctr_add(base, r8 ? run + U64(n - 1u) : blk[n - 1u]);
    u32 ka = k0, kb = k1;
    if (cf.y == cl.y && cf.z == cl.z && cf.w == cl.w) {
        u64 q1 = U64(0xCD9E8D57u) * U64(cf.z);
        u32 u0 = U32(q1 >> 32) ^ cf.y ^ ka; /* round 1: c0 and c1 */
        ulong t0 = U64(cf.w ^ kb), t1 = U64(U32(q1) ^ (ka + 0x9E3779B9u));
        u64 q0 = U64(0xD2511F53u) * U64(u0); /* round 2's first product */
        ulong t2 = U64(U32(q0 >> 32) ^ (kb + 0xBB67AE85u)), t3 = q0 & DB_L32;
#pragma unroll
        for (int q = 0; q < DB_CHAINS; q++) {
            ulong8 p0 = (c0[q] & DB_L32) * 0xD2511F53ul;             /* round 1: c2 = hi ^ c3 ^ k1, c3 = lo */
            ulong8 p1 = (((p0 >> 32) ^ t0) & DB_L32) * 0xCD9E8D57ul; /* round 2 */
            c0[q] = (p1 >> 32) ^ t1;
            c1[q] = p1;
            c2[q] = p0 ^ t2;
            c3[q] = (ulong8)(t3);
        }
    } else {
        ulong8 a = (ulong8)(ka), b = (ulong8)(kb);
#pragma unroll
        for (int q = 0; q < DB_CHAINS; q++) DB_PHILOX8(c0[q], c1[q], c2[q], c3[q], a, b)
        a += 0x9E3779B9ul;
        b += 0xBB67AE85ul;
#pragma unroll
        for (int q = 0; q < DB_CHAINS; q++) DB_PHILOX8(c0[q], c1[q], c2[q], c3[q], a, b)
    }
    ulong8 ka8 = (ulong8)(ka + 2u * 0x9E3779B9u), kb8 = (ulong8)(kb + 2u * 0xBB67AE85u);
#pragma unroll
    for (int r = 2; r < 10; r++) {
#pragma unroll
        for (int q = 0; q < DB_CHAINS; q++) DB_PHILOX8(c0[q], c1[q], c2[q], c3[q], ka8, kb8)
        ka8 += 0x9E3779B9ul;
        kb8 += 0xBB67AE85ul;
    }
    if (all == 0u && wmask == 0xFFFFFFFFu) {
        /* mostly nothing fires: the least of the 192 words (the low halves, the even 32-bit
         * lanes; blocks past n may only make a false alarm) against thr, before the exact bits */
        uint16 m = (uint16)(0xFFFFFFFFu);
#pragma unroll
        for (int q = 0; q < DB_CHAINS; q++)
            m = min(m, min(min(as_uint16(c0[q]), as_uint16(c1[q])), min(as_uint16(c2[q]), as_uint16(c3[q]))));
        int16 even = (int16)(-1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0);
        if (!any((m < (uint16)(thr)) & even)) return (uint8)(0u);
    }
    ulong8 nn = (ulong8)(n);
    long8 fa = (long8)(all != 0u ? -1 : 0);
    uint w[8] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u};
#pragma unroll
    for (int q = 0; q < DB_CHAINS; q++)
        w[q] = db_bits8(c0[q], c1[q], c2[q], c3[q], iota + 8ul * (ulong)q < nn, fa, wmask, thr);
    return vload8(0, w);
}

/* An empty queue, all of it defined: db_fire_batch reads its eight-lane vectors whole, and the
 * lanes past n, masked out of the result, still take part in the early test (valgrind checks
 * that no branch depends on undefined memory). */
DBFN void db_queue_clear(u64 *blk)
{
    for (u32 l = 0u; l < U32(DB_QUEUE); l += 8u) vstore8((ulong8)(0ul), 0, blk + l);
}

/* blk[nb ..] = b0, b0 + 1, ... (take of them), eight lanes a store (the queue has room) */
DBFN void db_queue_span(u64 *blk, u32 nb, u64 b0, u32 take)
{
    ulong8 v = (ulong8)(b0) + (ulong8)(0, 1, 2, 3, 4, 5, 6, 7);
    for (u32 l = 0u; l < take; l += 8u, v += 8ul) vstore8(v, 0, blk + nb + l);
}

#endif
