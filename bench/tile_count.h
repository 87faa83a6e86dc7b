/* tile_count.h: the mask pass's structural counts (issue 16 item 5), found by running the real
 * tile walk of shaders/db_passes.h (db_mask_item -> db_mask_tile -> db_flush -> db_fire_batch)
 * in C over every tile of a job, with counting hooks in place of the Philox batch and of the
 * ATOMIC_* macros: how many Philox blocks (4-word calls) the pass makes, how many distinct
 * blocks hold a candidate (counted apart from the walk, from the plan's candidate ranges and
 * strides), the atomic operations and the work items. These are facts of the algorithm, not
 * timings: the same on PoCL as on an H100 for a given tuning. */
#ifndef DROPBLOCK_BENCH_TILE_COUNT_H
#define DROPBLOCK_BENCH_TILE_COUNT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kernel_params.h"
#include "plan.h"

struct db_tile_counts {
    uint64_t philox_blocks;      /* calls of the 4-word generator: the sum of n over db_fire_batch */
    uint64_t candidate_blocks;   /* distinct blocks (e >> 2) holding at least one candidate e */
    double philox_per_candidate; /* philox_blocks / candidate_blocks (0 where there are none) */
    uint64_t atomics;            /* read-modify-write atomics: adds + ors + ands */
    uint64_t atomic_adds;        /* ATOMIC_ADD: the per-sample kept counts (db_add_kept) */
    uint64_t atomic_ors;         /* ATOMIC_OR: bits set in words shared with a neighbouring item */
    uint64_t atomic_ands;        /* ATOMIC_AND: bits dropped in shared words */
    uint64_t atomic_loads;       /* ATOMIC_LOAD: shared words read back (GLSL: atomicOr(0), OpenCL: volatile) */
    uint64_t fired_words;        /* candidate words that fired (0 with DB_TC_FIRE_NONE) */
    uint64_t items, tiles, chunks;
};

/* What db_fire_batch answers: the real Philox words against the plan's threshold (the counts of
 * the job as it runs; the atomics then include the drops' edge words), or no candidate firing
 * (the structural counts alone, without computing a word: fast; philox_blocks, items and
 * candidate_blocks are the same either way). */
enum { DB_TC_FIRE_REAL = 0, DB_TC_FIRE_NONE = 1 };

/* The tunings as the devices set them today: a GPU (engine/opencl_device.c's non-CPU shape,
 * vw 4, vpw 1, tile_rows 8, cand_budget 4096, item_cands 256; vulkan_device.c's GPU values
 * are the same) and the CPU backend (backend_cpu.c: whole planes, no budget, 4096 candidates
 * an item). epw does not shape the mask pass. */
struct db_tuning db_tc_tuning_gpu(const struct db_plan *pl);
struct db_tuning db_tc_tuning_cpu(const struct db_plan *pl);

/* Runs the mask pass of the plan's job (its chunks as db_job_chunks plans them on a device with
 * no buffer limit: one chunk up to 1 GiB) under tuning tu, counting. An identity plan counts
 * nothing. DROPBLOCK_EEXHAUSTED with a message when memory runs out. */
int db_tile_count(const struct db_plan *pl, const struct db_tuning *tu, int fire, struct db_tile_counts *out, char *msg,
                  size_t len);

/* The distinct candidate blocks of a plan (db_tile_count's candidate_blocks). */
uint64_t db_tc_candidate_blocks(const struct db_plan *pl);

/* Prints the JSON fragment (no braces, no newline)
 *   "philox_per_candidate": X, "philox_blocks": N, "candidate_blocks": M, "mask_atomics": A, "mask_items": I
 * of counts c. */
void db_tc_print_json(FILE *f, const struct db_tile_counts *c);

/* Counts the plan's job under tu (real fires) and prints its JSON fragment; returns
 * db_tile_count's code (nothing printed on error). */
int db_tc_json(FILE *f, const struct db_plan *pl, const struct db_tuning *tu, char *msg, size_t len);

#endif
