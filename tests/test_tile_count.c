/* test_tile_count: the mask pass's structural counts (issue 16 item 5), from bench/tile_count.c's
 * run of the real tile walk (shaders/db_passes.h) in C: Philox blocks made against the distinct
 * blocks that hold candidates, work items and atomics, on the GPU tiling (tile_rows 8,
 * cand_budget 4096, item_cands 256) and the CPU one (whole planes). They document today's
 * algorithm: when the kernels make each word once (issue 16 item 1) or count without contention
 * (item 2), update the rows of `expect` to the new, lower numbers.
 *
 * How the expectations follow (canonical plans: candidates (i, j) in [0, H - b] x [0, W - b],
 * the block below and right of them, e = n C H W + c H W + i W + j in both layouts; a block is 4
 * words, e >> 2):
 *   - 14 x 14, block 7: candidates rows and columns 0..7. A plane is 196 = 49 blocks, so planes
 *     share none. Needed: row i holds e = 14 i .. 14 i + 7, blocks 2, 3, 2, 3, ... = 20 a plane.
 *     GPU NCHW: 8-row tiles [0, 8) and [8, 14); tile 0 looks at candidate rows 0..7, tile 1 at
 *     2..7 (rows h - 6 ..); each takes the run from its first candidate to its last (DB_TAKE_RUN):
 *     blocks 0..26 (27) and 7..26 (20), 47 a plane (../shared/gpu/path-review.md: 47 against 27
 *     once, 20 of which hold candidates). Items: a tile looks at 14 x 20 = 280 > 256 candidates,
 *     so one tile an item, 2 a plane. CPU: one tile a plane, the run 0..26: 27 a plane.
 *   - GPU NHWC, C small (3): the same 8-row tiles of all channels, each channel as in NCHW: 47
 *     blocks a plane, 2 items a sample (280 x 3 > 256).
 *   - GPU NHWC, C large (128, 1024): 4096 / C leaves less than one row of candidates a plane,
 *     so tiles are 1 row x 1 column x 83 channels (4096 / 49); the tile at (h, w) remakes, for
 *     each of its channels, the blocks of candidate rows h-6..h and columns w-6..w: summed over
 *     the 196 (h, w) that is 2000 blocks a plane (a separate script of the same rules gives
 *     2000; path-review.md: 131 M for 64x1024x14x14 = 65536 planes x 2000), 100 per needed one.
 *     Items: 196 columns x ceil(C / 83) channel tiles a sample.
 *   - 32x256x56x56, block 7: candidates 0..49; a row of them spans blocks 14 i .. 14 i + 12 (13),
 *     650 a plane needed (a plane is 784 blocks). GPU: 7 tiles of 8 rows; tile k looks at
 *     candidate rows 8k - 6 .. 8k + 7 (clipped to 0..49): 8, 14, 14, 14, 14, 14, 8 rows, each a
 *     run of 14 r - 1 blocks: 1197 a plane. CPU: the plane's run, 14 x 49 + 13 = 699.
 *   - 10 x 10, block 3: candidates 0..7, row i e = 10 i .. 10 i + 7: blocks 2, 3, 2, 3, ... = 20,
 *     all of 0..19. GPU tiles [0, 8) (run 0..19: 20) and [8, 10) (rows 6..7: blocks 15..19, 5):
 *     25 a plane; 10 x 12 = 120 candidates a tile, so 2 tiles an item.
 *   - Atomics (no candidate firing): one ATOMIC_ADD an item (two where an item's tiles belong
 *     to two samples: the first sample's count is flushed when the sample changes), and one
 *     ATOMIC_OR for each end of an item's bits that is not on a 32-bit word boundary (the word
 *     it shares with its neighbour). E.g. 14 x 14 NCHW GPU: tile ends at 196 p and 196 p + 112,
 *     aligned where p % 8 is 0 or 4 respectively: 3.5 ORs a plane, 229376 for 65536 planes,
 *     plus 131072 adds; 56 x 56: 8-row tiles are 448 = 14 x 32 bits, so no ORs at all; NHWC
 *     1024 channels: channel tiles start at 83 k (never aligned, 83 is odd), 12 inside each
 *     (h, w) column, each two ends: 24 ORs a column. Real fires add ANDs where a drop reaches a
 *     shared word. */
#include <stdio.h>

#include "../bench/tile_count.h"
#include "check.h"

static int passed, failed;

/* the structural counts (DB_TC_FIRE_NONE) of a job; cpu: the CPU tuning, else the GPU one */
struct expect {
    uint64_t n, c, h, w;
    int nhwc, block, cpu;
    uint64_t philox_blocks, candidate_blocks, items, atomics;
};

/* clang-format off */
static const struct expect expect[] = {
    /*  N     C   H   W  nhwc b cpu   philox     needed     items   atomics */
    {   2,    3, 14, 14, 0, 7, 0,        282,       120,       12,      33}, /* 47 / 20 a plane */
    {   2,    3, 14, 14, 1, 7, 0,        282,       120,        4,      11}, /* 8-row tiles, 3 channels */
    {  64, 1024, 14, 14, 0, 7, 0,    3080192,   1310720,   131072,  360448}, /* path-review: 3.08 M */
    {  64, 1024, 14, 14, 1, 7, 0,  131072000,   1310720,   163072,  464128}, /* path-review: 131 M */
    {   8,  128, 14, 14, 1, 7, 0,    2048000,     20480,     3136,    6272}, /* 1x1x83 tiles: 2000 a plane */
    {  32,  256, 56, 56, 0, 7, 0,    9805824,   5324800,    57344,   57344}, /* 1197 / 650 a plane */
    {   2,    2, 10, 10, 0, 3, 0,        100,        80,        4,      11}, /* 25 / 20 a plane */
    {   2,    2, 10, 10, 1, 3, 0,        100,        80,        4,       9},
    {   2,    3, 14, 14, 0, 7, 1,        162,       120,        1,       3}, /* 27 / 20 a plane */
    {   2,    3, 14, 14, 1, 7, 1,        162,       120,        1,       3},
    {  64, 1024, 14, 14, 0, 7, 1,    1769472,   1310720,     6554,   16435}, /* 10 planes an item */
    {  64, 1024, 14, 14, 1, 7, 1,    1769472,   1310720,       64,      64}, /* a sample a tile */
    {  32,  256, 56, 56, 0, 7, 1,    5726208,   5324800,     8192,    8192}, /* 699 / 650 a plane */
};
/* clang-format on */

static int plan_of(struct db_plan *pl, uint64_t n, uint64_t c, uint64_t h, uint64_t w, int nhwc, int block)
{
    char msg[256];
    dropblock_params p = tu_params(n, c, h, w, 0.1f, (uint64_t)block, (uint64_t)block);
    p.layout = nhwc ? DROPBLOCK_NHWC : DROPBLOCK_NCHW;
    int rc = dropblock_params_validate(&p, msg, sizeof msg);
    if (!rc) rc = db_plan_init(pl, &p, msg, sizeof msg);
    if (rc)
        printf("plan %llux%llux%llux%llu: %s\n", (unsigned long long)n, (unsigned long long)c, (unsigned long long)h,
               (unsigned long long)w, msg);
    return rc;
}

static void check_expect(const struct expect *e)
{
    struct db_plan pl;
    if (plan_of(&pl, e->n, e->c, e->h, e->w, e->nhwc, e->block)) {
        failed++;
        return;
    }
    const struct db_tuning tu = e->cpu ? db_tc_tuning_cpu(&pl) : db_tc_tuning_gpu(&pl);
    struct db_tile_counts c;
    char msg[256];
    int rc = db_tile_count(&pl, &tu, DB_TC_FIRE_NONE, &c, msg, sizeof msg);
    CHECK(rc == 0, "%s", msg);
    const char *name = e->nhwc ? "NHWC" : "NCHW", *t = e->cpu ? "cpu" : "gpu";
#define SHAPE_FMT "%llux%llux%llux%llu %s block %d %s: "
#define SHAPE_ARGS \
    (unsigned long long)e->n, (unsigned long long)e->c, (unsigned long long)e->h, (unsigned long long)e->w, name, \
        e->block, t
    CHECK(c.philox_blocks == e->philox_blocks, SHAPE_FMT "philox_blocks %llu, expected %llu", SHAPE_ARGS,
          (unsigned long long)c.philox_blocks, (unsigned long long)e->philox_blocks);
    CHECK(c.candidate_blocks == e->candidate_blocks, SHAPE_FMT "candidate_blocks %llu, expected %llu", SHAPE_ARGS,
          (unsigned long long)c.candidate_blocks, (unsigned long long)e->candidate_blocks);
    CHECK(c.items == e->items, SHAPE_FMT "items %llu, expected %llu", SHAPE_ARGS, (unsigned long long)c.items,
          (unsigned long long)e->items);
    CHECK(c.atomics == e->atomics, SHAPE_FMT "atomics %llu (adds %llu, ors %llu), expected %llu", SHAPE_ARGS,
          (unsigned long long)c.atomics, (unsigned long long)c.atomic_adds, (unsigned long long)c.atomic_ors,
          (unsigned long long)e->atomics);
    CHECK(c.atomic_ands == 0 && c.fired_words == 0, SHAPE_FMT "nothing fires, yet %llu ANDs", SHAPE_ARGS,
          (unsigned long long)c.atomic_ands);
}

/* Any shape: the pass makes every candidate's block at least once; firing for real changes
 * neither the blocks made nor the items, only adds the drops' atomics (ANDs); and the CPU tiling's
 * NCHW planes stay within their bound. */
static void check_shape(uint64_t n, uint64_t ch, uint64_t h, uint64_t w, int nhwc, int block, int cpu)
{
    struct db_plan pl;
    if (plan_of(&pl, n, ch, h, w, nhwc, block)) {
        failed++;
        return;
    }
    const struct db_tuning tu = cpu ? db_tc_tuning_cpu(&pl) : db_tc_tuning_gpu(&pl);
    struct db_tile_counts none, real;
    char msg[256];
    int rc = db_tile_count(&pl, &tu, DB_TC_FIRE_NONE, &none, msg, sizeof msg);
    if (!rc) rc = db_tile_count(&pl, &tu, DB_TC_FIRE_REAL, &real, msg, sizeof msg);
    CHECK(rc == 0, "%s", msg);
    if (rc) return;
    const uint64_t cands = pl.ihi < pl.ilo || pl.jhi < pl.jlo
                               ? 0
                               : n * ch * (uint64_t)(pl.ihi - pl.ilo + 1) * (uint64_t)(pl.jhi - pl.jlo + 1);
#define S_FMT "%llux%llux%llux%llu %s block %d %s: "
#define S_ARGS \
    (unsigned long long)n, (unsigned long long)ch, (unsigned long long)h, (unsigned long long)w, \
        nhwc ? "NHWC" : "NCHW", block, cpu ? "cpu" : "gpu"
    CHECK(real.philox_blocks >= real.candidate_blocks, S_FMT "%llu blocks made, %llu needed", S_ARGS,
          (unsigned long long)real.philox_blocks, (unsigned long long)real.candidate_blocks);
    CHECK(real.candidate_blocks >= (cands + 3) / 4 && real.candidate_blocks <= cands,
          S_FMT "%llu candidate blocks for %llu candidates", S_ARGS, (unsigned long long)real.candidate_blocks,
          (unsigned long long)cands);
    CHECK(real.philox_blocks == none.philox_blocks && real.items == none.items &&
              real.candidate_blocks == none.candidate_blocks,
          S_FMT "firing changed the walk: %llu/%llu blocks, %llu/%llu items", S_ARGS,
          (unsigned long long)real.philox_blocks, (unsigned long long)none.philox_blocks,
          (unsigned long long)real.items, (unsigned long long)none.items);
    /* a tile whose bits all drop adds nothing to its sample's count (db_add_kept skips 0) */
    CHECK(real.atomic_ors == none.atomic_ors && real.atomic_adds <= none.atomic_adds &&
              real.atomics == real.atomic_adds + none.atomic_ors + real.atomic_ands,
          S_FMT "firing should only add ANDs: %llu against %llu", S_ARGS, (unsigned long long)real.atomics,
          (unsigned long long)none.atomics);
    CHECK(none.items >= 1 && none.atomic_adds >= none.items, S_FMT "%llu items, %llu adds", S_ARGS,
          (unsigned long long)none.items, (unsigned long long)none.atomic_adds);
    if (cpu && !nhwc && cands) {
        /* a whole plane takes the run from its first candidate to its last only where that is at
         * most 1.5 x rows x (ceil(cols / 4) + 1) blocks (DB_TAKE_RUN), else each row's span once,
         * and every row needs at least ceil(cols / 4) blocks of its own unless rows share blocks
         * (W < 8): 1.5 x (q + 1) / q with q = ceil(cols / 4) */
        const uint64_t cols = (uint64_t)(pl.jhi - pl.jlo + 1), q = (cols + 3) / 4;
        const double bound = w >= 8 ? 1.5 * (double)(q + 1) / (double)q : 4.0;
        CHECK(real.philox_per_candidate <= bound, S_FMT "philox_per_candidate %.4f above %.4f", S_ARGS,
              real.philox_per_candidate, bound);
    }
}

/* The scatter pass (GPU tunings since issue 16 item 1: db_scatter_item): each candidate block's
 * words once, so Philox blocks = candidate blocks wherever a plane holds a multiple of 4
 * elements (no block spans two planes' candidates; a block two planes share is made once for
 * each), whatever the layout; real fires (their drops only add atomics). Work items: the
 * candidate rows over rows an item (16 blocks / the blocks of a row, at least 1), then the
 * count pass's 64 words an item. */
static void check_scatter(uint64_t n, uint64_t c, uint64_t h, uint64_t w, int nhwc, int block)
{
    struct db_plan pl;
    if (plan_of(&pl, n, c, h, w, nhwc, block)) {
        CHECK(0, "no plan");
        return;
    }
    struct db_tuning tu = db_tc_tuning_gpu(&pl);
    tu.scatter = 16;
    struct db_tile_counts k;
    char msg[256];
    CHECK(db_tile_count(&pl, &tu, DB_TC_FIRE_REAL, &k, msg, sizeof msg) == 0, "%s", msg);
    const uint64_t rows = n * c * (uint64_t)(pl.ihi - pl.ilo + 1), row_blocks = (uint64_t)(pl.jhi - pl.jlo + 4) / 4 + 1;
    const uint64_t per = 16 > row_blocks ? 16 / row_blocks : 1, words = (pl.numel + 31) / 32;
    const char *l = nhwc ? "NHWC" : "NCHW";
    if ((h * w) % 4 == 0)
        CHECK(k.philox_blocks == k.candidate_blocks,
              "scatter %llux%llux%llux%llu %s block %d: %llu Philox blocks, %llu "
              "candidate blocks",
              (unsigned long long)n, (unsigned long long)c, (unsigned long long)h, (unsigned long long)w, l, block,
              (unsigned long long)k.philox_blocks, (unsigned long long)k.candidate_blocks);
    CHECK(k.philox_blocks >= k.candidate_blocks && k.philox_blocks <= k.candidate_blocks + n * c,
          "scatter %s block %d: %llu Philox blocks for %llu candidate blocks", l, block,
          (unsigned long long)k.philox_blocks, (unsigned long long)k.candidate_blocks);
    CHECK(k.items == (rows + per - 1) / per + (words + 63) / 64, "scatter %s block %d: %llu items, expected %llu", l,
          block, (unsigned long long)k.items, (unsigned long long)((rows + per - 1) / per + (words + 63) / 64));
}

int main(void)
{
    for (size_t i = 0; i < sizeof expect / sizeof *expect; i++) check_expect(&expect[i]);
    static const uint64_t shapes[][4] = {{2, 3, 14, 14}, {2, 4, 9, 11},  {1, 128, 14, 14}, {3, 5, 7, 30},
                                         {1, 2, 5, 5},   {2, 40, 20, 3}, {1, 1, 64, 64}};
    static const int blocks[] = {7, 3};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int nhwc = 0; nhwc < 2; nhwc++)
            for (size_t b = 0; b < sizeof blocks / sizeof *blocks; b++)
                for (int cpu = 0; cpu < 2; cpu++)
                    check_shape(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], nhwc, blocks[b], cpu);
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int nhwc = 0; nhwc < 2; nhwc++)
            for (size_t b = 0; b < sizeof blocks / sizeof *blocks; b++)
                check_scatter(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], nhwc, blocks[b]);
    /* the JSON fragment of one job (the benchmark's) */
    struct db_plan pl;
    char msg[256];
    if (!plan_of(&pl, 2, 3, 14, 14, 0, 7)) {
        const struct db_tuning tu = db_tc_tuning_gpu(&pl);
        printf("2x3x14x14 NCHW block 7 gpu: ");
        CHECK(db_tc_json(stdout, &pl, &tu, msg, sizeof msg) == 0, "%s", msg);
        printf("\n");
    }
    printf("test_tile_count: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
