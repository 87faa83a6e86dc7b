/* backend_opencl.h: what the OpenCL backend's files share (private to engine/backend_opencl.c,
 * opencl_device.c, opencl_staging.c and opencl_bench.c): the kernel numbers, the device's state,
 * the job's shape, and the functions one file calls in another.
 *
 *   opencl_device.c   errors, device queries and enumerate, the kernels (tuning, build), kept
 *                     buffers, launches, the probes, the warm-up, teardown and release
 *   opencl_staging.c  the staged copies: pinned slots, three queues, slices overlapped
 *   opencl_bench.c    the benchmark: bench.cl's program and measures
 *   backend_opencl.c  the program cache, prepare, the job (run) and the vtable */
#ifndef DROPBLOCK_ENGINE_BACKEND_OPENCL_H
#define DROPBLOCK_ENGINE_BACKEND_OPENCL_H

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <CL/cl_ext.h>

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "kernel_params.h"

extern const char db_opencl_source[];
extern const size_t db_opencl_source_len;
extern const char db_opencl_bench_source[];
extern const size_t db_opencl_bench_source_len;

/* A buffer kept by the device between jobs, grown when a job needs more. */
struct ocl_buf {
    cl_mem m;
    uint64_t size;
};

/* the passes' kernels (opencl_device.c names them), the fast apply ones apart in k_apply */
enum { K_MASK, K_SCALE, K_EXACT, K_FIXUP, K_PROBE, K_PROBE_HALF, K_SCATTER, K_COUNT, K_N };
/* bench.cl's kernels (opencl_bench.c names them) */
/* clang-format off */
enum { BK_COPY, BK_COPY_TAIL, BK_BERNOULLI, BK_PAD, BK_POOL, BK_ONE_MINUS, BK_SUM_NOISE, BK_SUM_PART, BK_SCALE, BK_MUL, BK_N };
/* clang-format on */

#define STAGE_SLOTS 3   /* pinned slots each way, for the staged copies */
#define VARIANTS_MAX 96 /* launch shapes recorded (see "warm-up" in opencl_device.c); more are counted as cold */
/* PoCL compiles a kernel anew for a grid of this many work items or more (its "small grid"
 * specialization covers fewer) */
#define SMALL_GRID 65535

struct ocl_dev {
    cl_platform_id platform;
    cl_device_id device;
    uint64_t max_buffer;          /* after the DROPBLOCK_OPENCL_MAX_BUFFER cap */
    const struct db_knobs *knobs; /* the engine's (knobs.h) */
    cl_context ctx;
    cl_command_queue queue;
    cl_program program;
    cl_kernel k[K_N];
    cl_kernel k_apply[3][2][2];
    cl_kernel k_apply_half[2];
    /* tuning (prepare): kernel shape and work-group sizes */
    char build_options[128];
    int cpu;              /* a CPU device: host memory is its memory */
    int zero_copy;        /* tensors used in place with CL_MEM_USE_HOST_PTR */
    int hwexact;          /* db_probe found subnormal products exact: no fixup pass */
    int hwhalf;           /* db_probe_half found the f16 conversions exact: f16 kernels swapped */
    uint32_t vw, vpw;     /* fast apply: lanes a vector, vectors a work item */
    uint32_t tile_rows;   /* mask rows a tile */
    uint32_t cand_budget; /* candidates a tile, about (0: no limit) */
    uint32_t item_cands;  /* candidates a mask work item, about (small tiles go several to an item) */
    uint32_t scatter;     /* GPUs: the scatter and count passes, about this many candidate blocks an
                           * item (db_scatter_item); 0: the tiles */
    size_t wg_mask, wg_small, wg_apply;
    uint64_t mem_align; /* CL_DEVICE_MEM_BASE_ADDR_ALIGN, bytes */
    /* buffers kept between jobs */
    struct ocl_buf kept, scales, data, fixup;
    struct ocl_buf *masks; /* one per chunk of the largest job so far */
    uint64_t nmasks;
    /* the parameter words, one buffer per chunk of the largest job so far: each chunk's are
     * written once a job, before its mask pass, and its apply takes them from there */
    struct ocl_buf *prms;
    uint64_t nprms;
    /* the benchmark's program, built on its first use */
    cl_program bench_program;
    cl_kernel bk[BK_N];
    /* launch shapes seen (see "warm-up" in opencl_device.c): what the driver may compile per kernel */
    struct ocl_variant {
        cl_kernel k;
        size_t local;
        unsigned char goffs0, small;
    } variants[VARIANTS_MAX];
    int nvariants;
    int warm;      /* the warm-up is done: a shape first launched from now on is "cold" */
    uint64_t cold; /* shapes first launched by a job, after the warm-up (each may have paid a compile) */
    /* the staged copy path (see "staged copies" in opencl_staging.c), set up on its first use */
    cl_command_queue q_up, q_down; /* uploads and downloads; the passes stay on queue */
    struct ocl_stage {
        cl_mem m;
        void *p;
    } st_in[STAGE_SLOTS], st_out[STAGE_SLOTS]; /* pinned, mapped once */
    uint64_t stage_size;                       /* bytes a slot */
    /* a fused job's counts and scales read back into pinned memory (CL_MEM_ALLOC_HOST_PTR, mapped
     * once on queue; see ocl_readback in opencl_staging.c), released with the staging slots */
    struct ocl_stage rb;
    uint64_t rb_size;
    /* the running job's counts (backend.h), reset by ocl_job and counted at each enqueue of the
     * job (ocl_count_*), copied to the device's last_job by run; transfers and fills enqueued
     * since the last launch wait in pend_* until the next launch shows them to be between two */
    struct db_job_stats js;
    uint32_t js_pend_transfers, js_pend_fills;
    int js_launched;
};

/* The job as a sequence of chunks, and what it needs (ocl_plan_job). */
struct job {
    const struct db_plan *pl;
    struct db_tuning tu;
    struct db_chunking ck; /* the plan's chunks (db_job_chunks); ck.fused: scales on the device, no host round trip */
};

/* opencl_device.c */
int ocl_fail(char *msg, size_t len, const char *what, cl_int e);
int ocl_check(cl_int e, const char *what, char *msg, size_t len);
char *ocl_dev_str(cl_device_id d, cl_device_info what);
char *ocl_plat_str(cl_platform_id p, cl_platform_info what);
int ocl_enumerate(const struct db_backend_config *cfg, struct db_device *out, size_t cap, char *msg, size_t len);
void ocl_choose_shape(struct ocl_dev *od);
int ocl_make_kernels(struct ocl_dev *od, char *msg, size_t len);
void ocl_drop_program(struct ocl_dev *od);
int ocl_build_source(struct ocl_dev *od, const char *src, size_t slen, const char *name, cl_program *prog, char *msg,
                     size_t len);
int ocl_build_from_source(struct ocl_dev *od, char *msg, size_t len);
void ocl_release_buf(struct ocl_buf *b);
cl_int ocl_ensure_buf(struct ocl_dev *od, struct ocl_buf *b, uint64_t bytes);
cl_int ocl_set_args(cl_kernel k, int n, const cl_mem *args);
cl_int ocl_enqueue_nd(struct ocl_dev *od, cl_kernel k, size_t off, size_t global, size_t local);
cl_int ocl_launch_round(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t n);
cl_int ocl_launch_exact(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t n);
int ocl_probe_exact(struct ocl_dev *od);
int ocl_probe_half(struct ocl_dev *od);
cl_int ocl_warm_up(struct ocl_dev *od);
void ocl_teardown(struct ocl_dev *od);
void ocl_release(struct db_device *dev);

/* opencl_staging.c */
void ocl_release_staging(struct ocl_dev *od);
void *ocl_readback(struct ocl_dev *od, uint64_t bytes);
uint64_t ocl_stage_slice(const struct ocl_dev *od, const struct job *j, size_t es, int resident);
int ocl_stage_run(struct ocl_dev *od, const struct job *j, size_t es, uint64_t L, const void *in, void *out,
                  const uint32_t *prms, const uint32_t *partial, uint64_t *kept, uint32_t *scales, uint32_t *words,
                  uint64_t t_start, uint64_t t[3], dropblock_result *res, char *msg, size_t len);

/* opencl_bench.c */
int ocl_bench(struct db_device *dev, const struct db_plan *pl, const void *xh, unsigned whats, int warmup, int reps,
              double *us, char *msg, size_t len);

/* backend_opencl.c */
int ocl_plan_job(struct ocl_dev *od, const struct db_plan *pl, struct job *j, char *msg, size_t len);
void ocl_chunk_of(const struct job *j, uint64_t q, struct db_chunk *ch);
cl_int ocl_ensure_bufs(struct ocl_dev *od, struct ocl_buf **bufs, uint64_t *nbufs, uint64_t n, uint64_t bytes);
cl_int ocl_ensure_masks(struct ocl_dev *od, uint64_t n, uint64_t words);
cl_int ocl_ensure_prms(struct ocl_dev *od, uint64_t n);
cl_int ocl_enqueue_mask(struct ocl_dev *od, const uint32_t *prm, cl_mem prmbuf, cl_mem maskbuf);
int ocl_host_scales(const struct job *j, const uint32_t *partial, uint64_t *kept, uint32_t *scales,
                    dropblock_result *res);
int ocl_job(struct ocl_dev *od, const struct db_plan *pl, const void *in, void *out, void *mask, cl_mem xres,
            cl_mem yres, dropblock_result *res, char *msg, size_t len);
void ocl_count_launches(struct ocl_dev *od, uint32_t n);
void ocl_count_transfer(struct ocl_dev *od);
void ocl_count_fill(struct ocl_dev *od);
void ocl_count_submit(struct ocl_dev *od, int waits);
void ocl_count_wait(struct ocl_dev *od);

#endif
