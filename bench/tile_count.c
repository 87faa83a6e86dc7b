/* tile_count.c: the mask pass of shaders/db_passes.h as C, its hooks counting (tile_count.h).
 * The pass logic is db_passes.h's own, included as tests/test_passes.c includes it; only the
 * hooks the pass sources leave to their including file are ours: db_fire_batch (the batch of
 * Philox blocks, DB_BATCH 8 as the OpenCL GPU kernels take it; the total of blocks does not
 * depend on the batch) and the ATOMIC_* macros, each counting before it does what the
 * single-threaded C build of db_portable.h does. Not thread-safe (the counters are this file's). */
#include "tile_count.h"

#include <stdlib.h>
#include <string.h>

#define DB_LANG_C
#include "../shaders/db_math.h"

static uint64_t tc_philox, tc_fired, tc_adds, tc_ors, tc_ands, tc_loads;
static int tc_nofire;

static inline uint32_t tc_add(uint32_t *p, uint32_t v)
{
    uint32_t old = *p;
    tc_adds++;
    *p = old + v;
    return old;
}

/* db_portable.h's single-threaded C atomics, counted */
#undef ATOMIC_OR
#undef ATOMIC_AND
#undef ATOMIC_LOAD
#undef ATOMIC_ADD
#define ATOMIC_OR(arr, i, v) (tc_ors++, (arr)[i] |= (v))
#define ATOMIC_AND(arr, i, v) (tc_ands++, (arr)[i] &= (v))
#define ATOMIC_LOAD(arr, i) (tc_loads++, (arr)[i])
#define ATOMIC_ADD(arr, i, v) tc_add(&(arr)[i], (v))

/* db_passes.h's batch hook (its default one, counted): n Philox blocks, one fire bit a word */
#define DB_BATCH 8
#define DB_QUEUE DB_BATCH
#define DB_FIRED u32
#define db_fired_word(f, q) (f)
#define db_fired_any(f) (f)
DBFN u32 db_fire_batch(const u64 *blk, u64 run, u32 n, u32x4 base, u32 k0, u32 k1, u32 wmask, u32 thr, u32 all)
{
    tc_philox += n;
    if (tc_nofire) return 0u;
    u32 bits = 0u;
    for (u32 l = 0u; l < n; l++) {
        u32x4 w = db_philox(db_ctr_add(base, run != DB_NO_RUN ? run + U64(l) : blk[l]), k0, k1);
        u32 f = (all != 0u || (w.x & wmask) < thr ? 1u : 0u) | (all != 0u || (w.y & wmask) < thr ? 2u : 0u) |
                (all != 0u || (w.z & wmask) < thr ? 4u : 0u) | (all != 0u || (w.w & wmask) < thr ? 8u : 0u);
        bits |= f << (4u * l);
    }
    tc_fired += POPCOUNT(bits);
    return bits;
}

#include "../shaders/db_passes.h"

#include "msg.h"

struct db_tuning db_tc_tuning_gpu(const struct db_plan *pl)
{
    /* opencl_device.c: vw 4, vpw 1 (epw = 4 lanes of 32 bits: 4 f32 or 8 f16 elements) */
    struct db_tuning tu = {8u, pl->p.dtype == DROPBLOCK_F32 ? 4u : 8u, 4096u, 256u, 0u};
    return tu;
}

struct db_tuning db_tc_tuning_cpu(const struct db_plan *pl)
{
    (void)pl;
    struct db_tuning tu = {UINT32_MAX, 32u, 0u, 4096u, 0u};
    return tu;
}

uint64_t db_tc_candidate_blocks(const struct db_plan *pl)
{
    if (pl->identity || pl->dhi < pl->dlo || pl->ihi < pl->ilo || pl->jhi < pl->jlo) return 0;
    const uint64_t d0 = (uint64_t)pl->dlo, d1 = (uint64_t)pl->dhi, i0 = (uint64_t)pl->ilo, i1 = (uint64_t)pl->ihi;
    const uint64_t j0 = (uint64_t)pl->jlo, j1 = (uint64_t)pl->jhi;
    /* candidate e = n sN + c sC + d sD + i sH + j sW, strides >= 0: the largest at the far corner */
    const uint64_t emax = (pl->N - 1) * pl->sN + (pl->C - 1) * pl->sC + d1 * pl->sD + i1 * pl->sH + j1 * pl->sW;
    const uint64_t nb = (emax >> 2) + 1;
    uint64_t *seen = calloc((nb + 63) / 64, 8);
    if (!seen) return 0;
    uint64_t count = 0;
    for (uint64_t n = 0; n < pl->N; n++)
        for (uint64_t c = 0; c < pl->C; c++)
            for (uint64_t d = d0; d <= d1; d++)
                for (uint64_t i = i0; i <= i1; i++) {
                    const uint64_t row = n * pl->sN + c * pl->sC + d * pl->sD + i * pl->sH;
                    for (uint64_t j = j0; j <= j1; j++) {
                        const uint64_t b = (row + j * pl->sW) >> 2, bit = UINT64_C(1) << (b & 63);
                        if (!(seen[b >> 6] & bit)) {
                            seen[b >> 6] |= bit;
                            count++;
                        }
                    }
                }
    free(seen);
    return count;
}

int db_tile_count(const struct db_plan *pl, const struct db_tuning *tu, int fire, struct db_tile_counts *out, char *msg,
                  size_t len)
{
    memset(out, 0, sizeof *out);
    if (pl->identity) return DROPBLOCK_OK;
    struct db_chunking ck;
    int rc = db_job_chunks(pl, UINT64_MAX, 0, &ck, msg, len);
    if (rc) return rc;
    uint32_t *mask = malloc((ck.max_words + 1) * 4), *kept = calloc(ck.max_samp * 2 + 2, 4);
    if (!mask || !kept) {
        free(mask);
        free(kept);
        db_msg(msg, len, "out of memory for a chunk's mask (%llu words)", (unsigned long long)ck.max_words);
        return DROPBLOCK_EEXHAUSTED;
    }
    tc_philox = tc_fired = tc_adds = tc_ors = tc_ands = tc_loads = 0;
    tc_nofire = fire == DB_TC_FIRE_NONE;
    uint32_t prm[DBP_COUNT];
    struct db_chunk ch;
    for (uint64_t q = 0; q < ck.nchunks; q++) {
        db_job_chunk(pl, &ck, q, &ch);
        db_kernel_params(pl, &ch, tu, prm);
        memset(mask, 0, (ck.max_words + 1) * 4);
        memset(kept, 0, (ck.max_samp * 2 + 2) * 4);
        if (prm[DBP_SCATTER]) { /* the GPU flow: ones, scatter, count (its scales into a scratch) */
            memset(mask, 0xFF, (ck.max_words + 1) * 4);
            const uint64_t items = db_scatter_items(prm), counts = db_count_items(prm);
            uint32_t *scales = calloc(ch.nsamp + 1, 4);
            for (uint64_t w = 0; w < items; w++) db_scatter_item(prm, mask, w);
            for (uint64_t w = 0; w < counts && scales; w++) db_count_item(prm, mask, kept, scales, w);
            free(scales);
            out->items += items + counts;
            continue;
        }
        const uint64_t items = db_mask_items(prm);
        for (uint64_t w = 0; w < items; w++) db_mask_item(prm, mask, kept, w);
        out->items += items;
        out->tiles += prm[DBP_NTILES];
    }
    free(mask);
    free(kept);
    out->chunks = ck.nchunks;
    out->philox_blocks = tc_philox;
    out->fired_words = tc_fired;
    out->atomic_adds = tc_adds;
    out->atomic_ors = tc_ors;
    out->atomic_ands = tc_ands;
    out->atomic_loads = tc_loads;
    out->atomics = tc_adds + tc_ors + tc_ands;
    out->candidate_blocks = db_tc_candidate_blocks(pl);
    out->philox_per_candidate =
        out->candidate_blocks ? (double)out->philox_blocks / (double)out->candidate_blocks : 0.0;
    return DROPBLOCK_OK;
}

void db_tc_print_json(FILE *f, const struct db_tile_counts *c)
{
    fprintf(f,
            "\"philox_per_candidate\": %.4f, \"philox_blocks\": %llu, \"candidate_blocks\": %llu, "
            "\"mask_atomics\": %llu, \"mask_items\": %llu",
            c->philox_per_candidate, (unsigned long long)c->philox_blocks, (unsigned long long)c->candidate_blocks,
            (unsigned long long)c->atomics, (unsigned long long)c->items);
}

int db_tc_json(FILE *f, const struct db_plan *pl, const struct db_tuning *tu, char *msg, size_t len)
{
    struct db_tile_counts c;
    int rc = db_tile_count(pl, tu, DB_TC_FIRE_REAL, &c, msg, len);
    if (!rc) db_tc_print_json(f, &c);
    return rc;
}

#ifdef DB_TC_MAIN
/* dropblock-tile-count: one job's counts as a JSON line (bench/README.md) */
static int parse_list(const char *s, uint64_t *out, int n)
{
    int k = 0;
    while (k < n && *s) {
        char *end;
        unsigned long long v = strtoull(s, &end, 10);
        if (end == s) return -1;
        out[k++] = v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    return *s ? -1 : k;
}

int main(int argc, char **argv)
{
    dropblock_params p;
    dropblock_params_init(&p);
    p.rate = 0.1f;
    p.training = 1;
    int have_shape = 0, cpu = 0, fire = DB_TC_FIRE_REAL, bad = 0;
    unsigned long scatter = 0;
    for (int i = 1; i < argc && !bad; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--fire-none")) {
            fire = DB_TC_FIRE_NONE;
            continue;
        }
        if (!v) {
            bad = 1;
            break;
        }
        i++;
        if (!strcmp(a, "--shape")) have_shape = parse_list(v, p.shape, 4) == 4;
        else if (!strcmp(a, "--layout")) {
            int l = dropblock_parse_layout(v);
            bad = l < 0;
            p.layout = (dropblock_layout)(l < 0 ? 0 : l);
        } else if (!strcmp(a, "--dtype")) {
            int t = dropblock_parse_dtype(v);
            bad = t < 0;
            p.dtype = (dropblock_dtype)(t < 0 ? 0 : t);
        } else if (!strcmp(a, "--block")) {
            int k = parse_list(v, p.block, 2);
            bad = k < 1;
            if (k == 1) p.block[1] = p.block[0];
        } else if (!strcmp(a, "--rate")) p.rate = strtof(v, NULL);
        else if (!strcmp(a, "--seed")) p.seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--scatter")) scatter = strtoul(v, NULL, 10);
        else if (!strcmp(a, "--tuning")) {
            cpu = !strcmp(v, "cpu");
            bad = !cpu && strcmp(v, "gpu") != 0;
        } else bad = 1;
    }
    if (bad || !have_shape) {
        fprintf(stderr,
                "usage: %s --shape N,C,H,W --block B[,B] [--layout nchw|nhwc] [--dtype f32|f16|bf16] [--rate R]\n"
                "          [--seed S] [--tuning gpu|cpu] [--scatter BLOCKS] [--fire-none]\n"
                "prints one JSON line: the mask pass's Philox blocks, candidate blocks, atomics and work items,\n"
                "counted by running the pass's tile walk (shaders/db_passes.h) in C with the device's tuning\n",
                argv[0]);
        return 2;
    }
    char msg[256];
    struct db_plan pl;
    int rc = dropblock_params_validate(&p, msg, sizeof msg);
    if (!rc) rc = db_plan_init(&pl, &p, msg, sizeof msg);
    struct db_tuning tu = cpu ? db_tc_tuning_cpu(&pl) : db_tc_tuning_gpu(&pl);
    tu.scatter = (uint32_t)scatter; /* the scatter pass, about this many blocks an item (0: the tiles) */
    struct db_tile_counts c;
    if (!rc) rc = db_tile_count(&pl, &tu, fire, &c, msg, sizeof msg);
    if (rc) {
        fprintf(stderr, "%s: %s\n", argv[0], msg);
        return 1;
    }
    printf("{\"shape\": [%llu, %llu, %llu, %llu], \"layout\": \"%s\", \"dtype\": \"%s\", \"block\": [%llu, %llu], "
           "\"rate\": %g, \"tuning\": \"%s\", \"fire\": \"%s\", ",
           (unsigned long long)p.shape[0], (unsigned long long)p.shape[1], (unsigned long long)p.shape[2],
           (unsigned long long)p.shape[3], dropblock_layout_name(p.layout), dropblock_dtype_name(p.dtype),
           (unsigned long long)p.block[0], (unsigned long long)p.block[1], (double)p.rate, cpu ? "cpu" : "gpu",
           fire == DB_TC_FIRE_NONE ? "none" : "real");
    db_tc_print_json(stdout, &c);
    printf(", \"mask_atomic_adds\": %llu, \"mask_atomic_ors\": %llu, \"mask_atomic_ands\": %llu, "
           "\"mask_atomic_loads\": %llu, \"fired_words\": %llu, \"mask_tiles\": %llu, \"chunks\": %llu}\n",
           (unsigned long long)c.atomic_adds, (unsigned long long)c.atomic_ors, (unsigned long long)c.atomic_ands,
           (unsigned long long)c.atomic_loads, (unsigned long long)c.fired_words, (unsigned long long)c.tiles,
           (unsigned long long)c.chunks);
    return 0;
}
#endif
