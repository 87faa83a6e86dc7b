/* philox_simd_batch.h: the CPU backend's batch of candidate words for the passes
 * (shaders/db_math.h, "candidate words in batches"): db_fire_batch on philox_simd.c's
 * db_philox_fire, and the queue helpers of db_mask_planes (db_philox_cl.h's in OpenCL) in plain
 * C. backend_cpu.c includes it with DB_LANG_C after db_math.h and before db_passes.h; the
 * kernels' sources never see it, so shaders/ declares nothing that engine/ defines. */
#ifndef DROPBLOCK_ENGINE_PHILOX_SIMD_BATCH_H
#define DROPBLOCK_ENGINE_PHILOX_SIMD_BATCH_H

#ifndef DB_LANG_C
#error "philox_simd_batch.h is for the passes as C (DB_LANG_C)"
#endif
#ifdef DB_PASSES_H
#error "philox_simd_batch.h comes before db_passes.h"
#endif

#include "db_math.h"
#include "philox_simd.h"

#define DB_CPU_BATCHES
#define DB_BATCH DB_SIMD_BATCH
#define DB_QUEUE DB_BATCH

DBFN void db_queue_clear(u64 *blk) { (void)blk; }
DBFN void db_queue_span(u64 *blk, u32 nb, u64 b0, u32 take)
{
    for (u32 l = 0u; l < take; l++) blk[nb + l] = b0 + U64(l);
}

typedef struct {
    u32 w[DB_BATCH / 8];
} db_fired_set;
#define DB_FIRED db_fired_set
#define db_fired_word(f, q) ((f).w[(q)])
DBFN u32 db_fired_any(db_fired_set f)
{
    u32 a = 0u;
    for (u32 q = 0u; q < U32(DB_BATCH / 8); q++) a |= f.w[q];
    return a;
}
DBFN db_fired_set db_fire_batch(const u64 *blk, u64 run, u32 n, u32x4 base, u32 k0, u32 k1, u32 wmask, u32 thr, u32 all)
{
    const u32 b[4] = {base.x, base.y, base.z, base.w};
    db_fired_set f;
    db_philox_fire(blk, run, n, b, k0, k1, wmask, thr, all, f.w);
    /* cppcheck-suppress uninitvar ; db_philox_fire wrote every word of f.w */
    return f;
}

#endif
