/* backend_opencl.c: the OpenCL backend. Every OpenCL call of the project lives in this file.
 *
 * enumerate lists every device of every platform; prepare picks the device's kernel shape (see
 * "tuning"), builds shaders/dropblock.cl once per device (through an on-disk binary cache, see
 * "program cache" below) and probes whether its multiply keeps subnormals and whether its f16
 * conversions (vload_half / vstore_half_rte) give the integer path's bits. run follows the host
 * flow of tests/test_passes.c: per chunk the mask pass (which counts); for a one-chunk job the
 * scales on the device and the apply pass in the same queue, with no host round trip; else the
 * scales on the host between the passes. Buffers are kept per device and reused; on CPU devices
 * the tensors are used in place (CL_MEM_USE_HOST_PTR), elsewhere copied in and out: per chunk
 * for a tensor of one slice, else staged through pinned memory in slices with the copies and the
 * applies overlapped on three queues (see "staged copies").
 *
 * Testing knobs: DROPBLOCK_OPENCL_MAX_BUFFER=<bytes> caps every device's max_buffer (reported
 * in the device info and used for chunking), so the chunked path can be exercised on small
 * tensors, e.g. DROPBLOCK_OPENCL_MAX_BUFFER=4096; DROPBLOCK_OPENCL_FIXUP=1 takes the paths of a
 * device whose probes failed (the fixup pass for subnormals, f16 in integers) even where they
 * passed, DROPBLOCK_OPENCL_COPY=1 copies the tensors even on CPU devices,
 * DROPBLOCK_OPENCL_STAGE_BYTES=<bytes> sets the staged path's slice (default 4 MiB), so that
 * small tensors take many slices, and DROPBLOCK_OPENCL_SHAPE=gpu gives a CPU device the GPU
 * configuration. */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <CL/cl_ext.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "clock.h"
#include "db_baseline_params.h"
#include "fp.h"
#include "kernel_cache.h"
#include "kernel_params.h"
#include "msg.h"

#ifndef CL_PLATFORM_NOT_FOUND_KHR
#define CL_PLATFORM_NOT_FOUND_KHR -1001
#endif
#ifndef CL_DEVICE_UUID_KHR
#define CL_DEVICE_UUID_KHR 0x106A
#endif

extern const char db_opencl_source[];
extern const size_t db_opencl_source_len;
extern const char db_opencl_bench_source[];
extern const size_t db_opencl_bench_source_len;

/* A buffer kept by the device between jobs, grown when a job needs more. */
struct ocl_buf {
    cl_mem m;
    uint64_t size;
};

enum { K_MASK, K_SCALE, K_EXACT, K_FIXUP, K_PROBE, K_PROBE_HALF, K_N };
/* fast apply kernels by [dtype][per-sample scale][fixup]; f16 needs no fixup */
static const char *const apply_names[3][2][2] = {
    {{"db_apply_f32", "db_apply_f32_x"}, {"db_apply_f32_s", "db_apply_f32_sx"}},
    {{"db_apply_f16", NULL}, {"db_apply_f16_s", NULL}},
    {{"db_apply_bf16", "db_apply_bf16_x"}, {"db_apply_bf16_s", "db_apply_bf16_sx"}},
};
/* f16 through the device's conversions, by [per-sample scale]: where probe_half passes they
 * take the place of k_apply[DROPBLOCK_F16][s][0] (the integer kernels move here) */
static const char *const apply_half_names[2] = {"db_apply_f16h", "db_apply_f16h_s"};
static const char *const kernel_names[K_N] = {"db_mask", "db_scale", "db_apply_exact",
                                              "db_fixup", "db_probe", "db_probe_half"};

enum { BK_COPY, BK_COPY_TAIL, BK_BERNOULLI, BK_PAD, BK_POOL, BK_ONE_MINUS, BK_SUM_NOISE, BK_SUM_PART, BK_SCALE, BK_MUL, BK_N };
static const char *const bench_names[BK_N] = {"bl_copy", "bl_copy_tail", "k_bl_bernoulli", "k_bl_pad", "k_bl_pool",
                                              "k_bl_one_minus", "k_bl_sum_noise", "k_bl_sum_part", "k_bl_scale", "k_bl_mul"};

#define STAGE_SLOTS 3 /* pinned slots each way, for the staged copies */
#define VARIANTS_MAX 96 /* launch shapes recorded (see "warm-up"); more are counted as cold */
/* PoCL compiles a kernel anew for a grid of this many work items or more (its "small grid"
 * specialization covers fewer) */
#define SMALL_GRID 65535

struct ocl_dev {
    cl_platform_id platform;
    cl_device_id device;
    uint64_t max_buffer; /* after the DROPBLOCK_OPENCL_MAX_BUFFER cap */
    cl_context ctx;
    cl_command_queue queue;
    cl_program program;
    cl_kernel k[K_N];
    cl_kernel k_apply[3][2][2];
    cl_kernel k_apply_half[2];
    /* tuning (prepare): kernel shape and work-group sizes */
    char build_options[128];
    int cpu;               /* a CPU device: host memory is its memory */
    int zero_copy;         /* tensors used in place with CL_MEM_USE_HOST_PTR */
    int hwexact;           /* db_probe found subnormal products exact: no fixup pass */
    int hwhalf;            /* db_probe_half found the f16 conversions exact: f16 kernels swapped */
    uint32_t vw, vpw;      /* fast apply: lanes a vector, vectors a work item */
    uint32_t tile_rows;    /* mask rows a tile */
    uint32_t cand_budget;  /* candidates a tile, about (0: no limit) */
    uint32_t item_cands;   /* candidates a mask work item, about (small tiles go several to an item) */
    size_t wg_mask, wg_small, wg_apply;
    uint64_t mem_align;    /* CL_DEVICE_MEM_BASE_ADDR_ALIGN, bytes */
    /* buffers kept between jobs */
    struct ocl_buf prm, kept, scales, data, fixup;
    struct ocl_buf *masks; /* one per chunk of the largest job so far */
    uint64_t nmasks;
    /* the benchmark's program, built on its first use */
    cl_program bench_program;
    cl_kernel bk[BK_N];
    /* launch shapes seen (see "warm-up"): what the driver may compile per kernel */
    struct ocl_variant { cl_kernel k; size_t local; unsigned char goffs0, small; } variants[VARIANTS_MAX];
    int nvariants;
    int warm;              /* the warm-up is done: a shape first launched from now on is "cold" */
    uint64_t cold;         /* shapes first launched by a job, after the warm-up (each may have paid a compile) */
    /* the staged copy path (see "staged copies"), set up on its first use */
    cl_command_queue q_up, q_down; /* uploads and downloads; the passes stay on queue */
    struct ocl_stage { cl_mem m; void *p; } st_in[STAGE_SLOTS], st_out[STAGE_SLOTS]; /* pinned, mapped once */
    uint64_t stage_size;           /* bytes a slot */
};

static const char *cl_err_name(cl_int e)
{
    switch (e) {
#define E(x) case x: return #x;
    E(CL_SUCCESS) E(CL_DEVICE_NOT_FOUND) E(CL_DEVICE_NOT_AVAILABLE) E(CL_COMPILER_NOT_AVAILABLE)
    E(CL_MEM_OBJECT_ALLOCATION_FAILURE) E(CL_OUT_OF_RESOURCES) E(CL_OUT_OF_HOST_MEMORY)
    E(CL_PROFILING_INFO_NOT_AVAILABLE) E(CL_MEM_COPY_OVERLAP) E(CL_IMAGE_FORMAT_MISMATCH)
    E(CL_IMAGE_FORMAT_NOT_SUPPORTED) E(CL_BUILD_PROGRAM_FAILURE) E(CL_MAP_FAILURE)
    E(CL_MISALIGNED_SUB_BUFFER_OFFSET) E(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)
    E(CL_COMPILE_PROGRAM_FAILURE) E(CL_LINKER_NOT_AVAILABLE) E(CL_LINK_PROGRAM_FAILURE)
    E(CL_DEVICE_PARTITION_FAILED) E(CL_KERNEL_ARG_INFO_NOT_AVAILABLE)
    E(CL_INVALID_VALUE) E(CL_INVALID_DEVICE_TYPE) E(CL_INVALID_PLATFORM) E(CL_INVALID_DEVICE)
    E(CL_INVALID_CONTEXT) E(CL_INVALID_QUEUE_PROPERTIES) E(CL_INVALID_COMMAND_QUEUE)
    E(CL_INVALID_HOST_PTR) E(CL_INVALID_MEM_OBJECT) E(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)
    E(CL_INVALID_IMAGE_SIZE) E(CL_INVALID_SAMPLER) E(CL_INVALID_BINARY) E(CL_INVALID_BUILD_OPTIONS)
    E(CL_INVALID_PROGRAM) E(CL_INVALID_PROGRAM_EXECUTABLE) E(CL_INVALID_KERNEL_NAME)
    E(CL_INVALID_KERNEL_DEFINITION) E(CL_INVALID_KERNEL) E(CL_INVALID_ARG_INDEX)
    E(CL_INVALID_ARG_VALUE) E(CL_INVALID_ARG_SIZE) E(CL_INVALID_KERNEL_ARGS)
    E(CL_INVALID_WORK_DIMENSION) E(CL_INVALID_WORK_GROUP_SIZE) E(CL_INVALID_WORK_ITEM_SIZE)
    E(CL_INVALID_GLOBAL_OFFSET) E(CL_INVALID_EVENT_WAIT_LIST) E(CL_INVALID_EVENT)
    E(CL_INVALID_OPERATION) E(CL_INVALID_GL_OBJECT) E(CL_INVALID_BUFFER_SIZE) E(CL_INVALID_MIP_LEVEL)
    E(CL_INVALID_GLOBAL_WORK_SIZE) E(CL_INVALID_PROPERTY) E(CL_INVALID_IMAGE_DESCRIPTOR)
    E(CL_INVALID_COMPILER_OPTIONS) E(CL_INVALID_LINKER_OPTIONS) E(CL_INVALID_DEVICE_PARTITION_COUNT)
    E(CL_PLATFORM_NOT_FOUND_KHR)
#undef E
    default: return "unknown OpenCL error";
    }
}

/* Out-of-memory style failures are the caller's resource problem; a device that is gone is
 * DROPBLOCK_EUNAVAILABLE, which makes the engine mark it unhealthy for good (docs/reliability.md),
 * as VK_ERROR_DEVICE_LOST does on Vulkan; the rest are ours. Gone: CL_DEVICE_NOT_AVAILABLE, and
 * CL_INVALID_CONTEXT / CL_INVALID_COMMAND_QUEUE, since the context and queues are this backend's
 * own, created at prepare and held until release: from a job they mean the driver tore them down
 * (a reset, a context lost). CL_OUT_OF_RESOURCES stays resource_exhausted: NVIDIA's driver also
 * answers it after a context loss (a faulting kernel), but foremost it is a shortage that passes,
 * and unhealthy is for the rest of the engine's life, so the ambiguous code retires no device
 * (a device that is really gone then fails each job, with the driver's code in the message). */
static int cl_code(cl_int e)
{
    if (e == CL_DEVICE_NOT_AVAILABLE || e == CL_INVALID_CONTEXT || e == CL_INVALID_COMMAND_QUEUE)
        return DROPBLOCK_EUNAVAILABLE;
    return (e == CL_MEM_OBJECT_ALLOCATION_FAILURE || e == CL_OUT_OF_RESOURCES || e == CL_OUT_OF_HOST_MEMORY ||
            e == CL_INVALID_BUFFER_SIZE)
               ? DROPBLOCK_EEXHAUSTED
               : DROPBLOCK_EINTERNAL;
}

static int cl_fail(char *msg, size_t len, const char *what, cl_int e)
{
    db_msg(msg, len, "%s: %s (%d)", what, cl_err_name(e), (int)e);
    return cl_code(e);
}

/* 0 when e is CL_SUCCESS, else cl_fail's code with what and e in msg: the callers write
 * "if ((rc = cl_check(clX(...), "clX", msg, len))) goto done;", their cleanup after done. */
static int cl_check(cl_int e, const char *what, char *msg, size_t len)
{
    return e == CL_SUCCESS ? DROPBLOCK_OK : cl_fail(msg, len, what, e);
}

/* ---- device queries ------------------------------------------------------------------- */

/* A string property, malloc'd (NULL when the query fails or memory runs out). */
static char *dev_str(cl_device_id d, cl_device_info what)
{
    size_t n = 0;
    if (clGetDeviceInfo(d, what, 0, NULL, &n) != CL_SUCCESS) return NULL;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (clGetDeviceInfo(d, what, n, s, NULL) != CL_SUCCESS) { free(s); return NULL; }
    s[n] = 0;
    return s;
}

static char *plat_str(cl_platform_id p, cl_platform_info what)
{
    size_t n = 0;
    if (clGetPlatformInfo(p, what, 0, NULL, &n) != CL_SUCCESS) return NULL;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (clGetPlatformInfo(p, what, n, s, NULL) != CL_SUCCESS) { free(s); return NULL; }
    s[n] = 0;
    return s;
}

/* Copies s into dst without the padding spaces some drivers put around names. */
static void copy_trimmed(char *dst, size_t cap, const char *s)
{
    if (!s) s = "";
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n')) n--;
    snprintf(dst, cap, "%.*s", (int)n, s);
}

/* Whether the space-separated extension list has ext as a whole word. */
static int has_ext(const char *list, const char *ext)
{
    size_t l = strlen(ext);
    for (const char *s = list; s && (s = strstr(s, ext)); s += l)
        if ((s == list || s[-1] == ' ') && (s[l] == ' ' || s[l] == 0)) return 1;
    return 0;
}

static uint64_t env_max_buffer(void)
{
    const char *v = getenv("DROPBLOCK_OPENCL_MAX_BUFFER");
    if (!v || !*v) return 0;
    char *end;
    errno = 0;
    unsigned long long b = strtoull(v, &end, 10);
    if (errno || *end || b == 0) return 0; /* ignored unless a positive byte count */
    return (uint64_t)b;
}

static void fill_info(struct db_device *out, cl_device_id d)
{
    dropblock_device_info *in = &out->info;
    snprintf(in->api, sizeof in->api, "opencl");
    char *s = dev_str(d, CL_DEVICE_VENDOR);
    copy_trimmed(in->vendor, sizeof in->vendor, s);
    free(s);
    s = dev_str(d, CL_DEVICE_NAME);
    copy_trimmed(in->name, sizeof in->name, s);
    free(s);
    s = dev_str(d, CL_DRIVER_VERSION);
    copy_trimmed(in->driver, sizeof in->driver, s);
    free(s);
    s = dev_str(d, CL_DEVICE_EXTENSIONS);
    unsigned char u[16];
    if (has_ext(s, "cl_khr_device_uuid") && clGetDeviceInfo(d, CL_DEVICE_UUID_KHR, sizeof u, u, NULL) == CL_SUCCESS)
        snprintf(in->uuid, sizeof in->uuid,
                 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3],
                 u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
    free(s);
    cl_device_type type = 0;
    cl_bool unified = CL_FALSE;
    clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    if (type & CL_DEVICE_TYPE_GPU) {
        clGetDeviceInfo(d, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL);
        in->kind = unified ? DROPBLOCK_DEVICE_INTEGRATED : DROPBLOCK_DEVICE_DISCRETE;
    } else if (type & CL_DEVICE_TYPE_CPU) {
        in->kind = DROPBLOCK_DEVICE_CPU_API;
    } else {
        in->kind = DROPBLOCK_DEVICE_OTHER;
    }
    cl_ulong v = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof v, &v, NULL) == CL_SUCCESS) in->max_buffer = v;
    uint64_t cap = env_max_buffer();
    if (cap && cap < in->max_buffer) in->max_buffer = cap;
    v = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof v, &v, NULL) == CL_SUCCESS) in->global_mem = v;
}

static void ocl_release(struct db_device *dev);

static int ocl_enumerate(const struct db_backend_config *cfg, struct db_device *out, size_t cap, char *msg,
                         size_t len)
{
    (void)cfg;
    cl_uint np = 0;
    cl_int e = clGetPlatformIDs(0, NULL, &np);
    /* no ICD or no platform is "no devices", not a failure */
    if (e == CL_PLATFORM_NOT_FOUND_KHR || (e == CL_SUCCESS && np == 0)) return 0;
    if (e != CL_SUCCESS) return cl_fail(msg, len, "clGetPlatformIDs", e);
    cl_platform_id *plats = calloc(np, sizeof *plats);
    if (!plats) { db_msg(msg, len, "out of memory"); return DROPBLOCK_EEXHAUSTED; }
    if ((e = clGetPlatformIDs(np, plats, NULL)) != CL_SUCCESS) {
        free(plats);
        return cl_fail(msg, len, "clGetPlatformIDs", e);
    }
    size_t n = 0;
    int rc = 0;
    for (cl_uint p = 0; p < np && n < cap && !rc; p++) {
        cl_uint nd = 0;
        e = clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd);
        if (e != CL_SUCCESS || nd == 0) continue; /* CL_DEVICE_NOT_FOUND: an empty platform */
        cl_device_id *devs = calloc(nd, sizeof *devs);
        if (!devs) { db_msg(msg, len, "out of memory"); rc = DROPBLOCK_EEXHAUSTED; break; }
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, devs, NULL) != CL_SUCCESS) { free(devs); continue; }
        for (cl_uint i = 0; i < nd && n < cap; i++) {
            struct ocl_dev *od = calloc(1, sizeof *od);
            if (!od) { db_msg(msg, len, "out of memory"); rc = DROPBLOCK_EEXHAUSTED; break; }
            memset(&out[n], 0, sizeof out[n]);
            od->platform = plats[p];
            od->device = devs[i];
            fill_info(&out[n], devs[i]);
            od->max_buffer = out[n].info.max_buffer;
            out[n].ops = &db_backend_opencl;
            out[n].priv = od;
            n++;
        }
        free(devs);
    }
    free(plats);
    if (rc) {
        for (size_t i = 0; i < n; i++) ocl_release(&out[i]);
        return rc;
    }
    return (int)n;
}

/* ---- program cache ---------------------------------------------------------------------
 * One entry per (source, build options, platform, device, driver) under cfg->cache_dir, named by
 * the 64-bit hash of that key, in kernel_cache.c's checked format (magic "DBOCLBIN"): a load
 * that fails any check means a rebuild from source, whose binary then replaces the entry. */

#define CACHE_MAGIC "DBOCLBIN"

/* Hashes each part with its length so that no two different keys concatenate alike. */
static uint64_t fnv_part(uint64_t h, const char *s)
{
    uint64_t l = s ? strlen(s) : 0;
    h = db_kcache_hash(h, &l, sizeof l);
    return s ? db_kcache_hash(h, s, l) : h;
}

static uint64_t cache_key(struct ocl_dev *od)
{
    char *pv = plat_str(od->platform, CL_PLATFORM_VERSION);
    char *dn = dev_str(od->device, CL_DEVICE_NAME);
    char *dv = dev_str(od->device, CL_DEVICE_VERSION);
    char *drv = dev_str(od->device, CL_DRIVER_VERSION);
    uint64_t h = DB_KCACHE_HASH_INIT;
    h = db_kcache_hash(h, db_opencl_source, db_opencl_source_len);
    h = fnv_part(h, od->build_options);
    h = fnv_part(h, pv);
    h = fnv_part(h, dn);
    h = fnv_part(h, dv);
    h = fnv_part(h, drv);
    free(pv); free(dn); free(dv); free(drv);
    return h;
}

static void cache_path(char *buf, size_t len, const char *dir, uint64_t key)
{
    snprintf(buf, len, "%s/opencl-%016llx.bin", dir, (unsigned long long)key);
}

/* The device's program binary after a build, malloc'd. */
static unsigned char *program_binary(cl_program prog, size_t *blen)
{
    size_t n = 0;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof n, &n, NULL) != CL_SUCCESS || n == 0) return NULL;
    unsigned char *bin = malloc(n);
    if (!bin) return NULL;
    unsigned char *ptrs[1] = {bin};
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof ptrs, ptrs, NULL) != CL_SUCCESS) { free(bin); return NULL; }
    *blen = n;
    return bin;
}

/* ---- prepare / release ------------------------------------------------------------------- */

static void drop_program(struct ocl_dev *od)
{
    for (int i = 0; i < K_N; i++)
        if (od->k[i]) clReleaseKernel(od->k[i]);
    for (int i = 0; i < 12; i++) {
        cl_kernel *k = &od->k_apply[i / 4][(i / 2) % 2][i % 2];
        if (*k) clReleaseKernel(*k);
    }
    for (int i = 0; i < 2; i++)
        if (od->k_apply_half[i]) clReleaseKernel(od->k_apply_half[i]);
    if (od->program) clReleaseProgram(od->program);
    memset(od->k, 0, sizeof od->k);
    memset(od->k_apply, 0, sizeof od->k_apply);
    memset(od->k_apply_half, 0, sizeof od->k_apply_half);
    od->hwhalf = 0;
    od->program = NULL;
}

/* The work-group size for k: want, or less where the kernel or the device's first dimension
 * allows less. */
static size_t kernel_wg(struct ocl_dev *od, cl_kernel k, size_t want)
{
    size_t max = 0, items[3] = {0, 0, 0};
    if (clGetKernelWorkGroupInfo(k, od->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof max, &max, NULL) != CL_SUCCESS ||
        max == 0)
        return 1;
    if (clGetDeviceInfo(od->device, CL_DEVICE_MAX_WORK_ITEM_SIZES, sizeof items, items, NULL) == CL_SUCCESS &&
        items[0] && items[0] < max)
        max = items[0];
    return max < want ? max : want;
}

/* ---- tuning ----------------------------------------------------------------------------
 * CPU devices (PoCL): a work item is ordinary loop code, vectorized by the compiler only where
 * the source says vectors, so the fast apply works on whole SIMD registers (the device's native
 * int vector width) covering one mask word per work item, and the mask pass on whole planes
 * (every candidate's Philox word made once; small planes several to a work item) in small
 * groups spread over the cores. GPUs: one
 * 16-byte vector per work item, mask tiles of a few rows (and a bounded number of candidates)
 * for parallelism, groups of a few subgroups (CL_KERNEL_PREFERRED_WORK_GROUP_SIZE_MULTIPLE,
 * the warp or wavefront). */
static void choose_shape(struct ocl_dev *od)
{
    cl_device_type type = 0;
    cl_uint nat = 4;
    cl_uint align_bits = 0;
    clGetDeviceInfo(od->device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    clGetDeviceInfo(od->device, CL_DEVICE_NATIVE_VECTOR_WIDTH_INT, sizeof nat, &nat, NULL);
    clGetDeviceInfo(od->device, CL_DEVICE_MEM_BASE_ADDR_ALIGN, sizeof align_bits, &align_bits, NULL);
    od->mem_align = align_bits >= 8 ? align_bits / 8 : 4;
    od->cpu = (type & CL_DEVICE_TYPE_CPU) != 0;
    /* DROPBLOCK_OPENCL_SHAPE=gpu gives a CPU device the GPU shape (tests: the GPU kernels'
     * configuration compiled and checked on PoCL) */
    const char *shape = getenv("DROPBLOCK_OPENCL_SHAPE");
    if (shape && !strcmp(shape, "gpu")) od->cpu = 0;
    const char *copy = getenv("DROPBLOCK_OPENCL_COPY");
    od->zero_copy = od->cpu && !(copy && !strcmp(copy, "1"));
    if (od->cpu) {
        od->vw = nat >= 16 ? 16 : nat >= 8 ? 8 : 4;
        od->vpw = 32 / od->vw;
        od->tile_rows = UINT32_MAX;
        od->cand_budget = 0;
        od->item_cands = 4096;
    } else {
        od->vw = 4;
        od->vpw = 1;
        od->tile_rows = 8;
        od->cand_budget = 4096;
        od->item_cands = 256;
    }
    snprintf(od->build_options, sizeof od->build_options, "-DDB_LANG_CL -DDB_VW=%u -DDB_VPW=%u%s", od->vw, od->vpw,
             od->cpu ? " -DDB_VLOAD -DDB_CPU" : "");
}

static void choose_work_groups(struct ocl_dev *od)
{
    size_t mult = 0;
    cl_kernel fast = od->k_apply[0][0][0];
    if (clGetKernelWorkGroupInfo(fast, od->device, CL_KERNEL_PREFERRED_WORK_GROUP_SIZE_MULTIPLE, sizeof mult, &mult,
                                 NULL) != CL_SUCCESS || mult == 0)
        mult = 1;
    if (od->cpu) {
        /* PoCL runs a group on one core: groups of a few work items balance the cores */
        od->wg_mask = kernel_wg(od, od->k[K_MASK], 4);
        od->wg_apply = kernel_wg(od, fast, 16 > mult ? 16 : mult);
    } else {
        od->wg_mask = kernel_wg(od, od->k[K_MASK], 2 * mult);
        od->wg_apply = kernel_wg(od, fast, 8 * mult > 256 ? 8 * mult : 256);
    }
    od->wg_small = kernel_wg(od, od->k[K_SCALE], mult > 64 ? mult : 64);
}

/* Creates the kernels of od->program (built); on failure drops the program. */
static int make_kernels(struct ocl_dev *od, char *msg, size_t len)
{
    for (int i = 0; i < K_N + 14; i++) {
        const char *name = i < K_N        ? kernel_names[i]
                           : i < K_N + 12 ? apply_names[(i - K_N) / 4][((i - K_N) / 2) % 2][(i - K_N) % 2]
                                          : apply_half_names[i - K_N - 12];
        cl_kernel *k = i < K_N        ? &od->k[i]
                       : i < K_N + 12 ? &od->k_apply[(i - K_N) / 4][((i - K_N) / 2) % 2][(i - K_N) % 2]
                                      : &od->k_apply_half[i - K_N - 12];
        if (!name) continue;
        cl_int e;
        *k = clCreateKernel(od->program, name, &e);
        if (e != CL_SUCCESS) {
            *k = NULL;
            char what[64];
            snprintf(what, sizeof what, "clCreateKernel(%s)", name);
            int rc = cl_fail(msg, len, what, e);
            drop_program(od);
            return rc;
        }
    }
    choose_work_groups(od);
    return DROPBLOCK_OK;
}

/* Tries a cached binary; 1 when it gave a built program with its kernels. */
static int load_cached(struct ocl_dev *od, const char *path, uint64_t key)
{
    size_t blen = 0;
    unsigned char *bin = db_kcache_load(path, CACHE_MAGIC, key, &blen);
    if (!bin) return 0;
    cl_int e, st = CL_SUCCESS;
    const unsigned char *bins[1] = {bin};
    od->program = clCreateProgramWithBinary(od->ctx, 1, &od->device, &blen, bins, &st, &e);
    free(bin);
    if (e != CL_SUCCESS || st != CL_SUCCESS) {
        if (e == CL_SUCCESS) clReleaseProgram(od->program);
        od->program = NULL;
        return 0;
    }
    if (clBuildProgram(od->program, 1, &od->device, od->build_options, NULL, NULL) != CL_SUCCESS) {
        drop_program(od);
        return 0;
    }
    char ignored[8];
    return make_kernels(od, ignored, sizeof ignored) == DROPBLOCK_OK;
}

/* Builds src into *prog; on failure the build log goes into msg. */
static int build_source(struct ocl_dev *od, const char *src, size_t slen, const char *name, cl_program *prog,
                        char *msg, size_t len)
{
    cl_int e;
    *prog = clCreateProgramWithSource(od->ctx, 1, &src, &slen, &e);
    if (e != CL_SUCCESS) { *prog = NULL; return cl_fail(msg, len, "clCreateProgramWithSource", e); }
    e = clBuildProgram(*prog, 1, &od->device, od->build_options, NULL, NULL);
    if (e != CL_SUCCESS) {
        size_t ln = 0;
        char *log = NULL;
        if (clGetProgramBuildInfo(*prog, od->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &ln) == CL_SUCCESS &&
            (log = malloc(ln + 1)) &&
            clGetProgramBuildInfo(*prog, od->device, CL_PROGRAM_BUILD_LOG, ln, log, NULL) == CL_SUCCESS)
            log[ln] = 0;
        else if (log) log[0] = 0;
        db_msg(msg, len, "clBuildProgram(%s): %s (%d): %s", name, cl_err_name(e), (int)e,
               log && *log ? log : "(no build log)");
        free(log);
        clReleaseProgram(*prog);
        *prog = NULL;
        return cl_code(e);
    }
    return DROPBLOCK_OK;
}

static int build_from_source(struct ocl_dev *od, char *msg, size_t len)
{
    int rc = build_source(od, db_opencl_source, db_opencl_source_len, "dropblock.cl", &od->program, msg, len);
    return rc ? rc : make_kernels(od, msg, len);
}

static void release_buf(struct ocl_buf *b)
{
    if (b->m) clReleaseMemObject(b->m);
    b->m = NULL;
    b->size = 0;
}

static void release_staging(struct ocl_dev *od);

static void teardown(struct ocl_dev *od)
{
    release_staging(od);
    drop_program(od);
    for (int i = 0; i < BK_N; i++)
        if (od->bk[i]) clReleaseKernel(od->bk[i]);
    if (od->bench_program) clReleaseProgram(od->bench_program);
    memset(od->bk, 0, sizeof od->bk);
    od->bench_program = NULL;
    struct ocl_buf *bufs[] = {&od->prm, &od->kept, &od->scales, &od->data, &od->fixup};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) release_buf(bufs[i]);
    for (uint64_t i = 0; i < od->nmasks; i++) release_buf(&od->masks[i]);
    free(od->masks);
    od->masks = NULL;
    od->nmasks = 0;
    if (od->queue) clReleaseCommandQueue(od->queue);
    if (od->ctx) clReleaseContext(od->ctx);
    od->queue = NULL;
    od->ctx = NULL;
}

/* A device buffer of at least bytes (rounded up to 64), kept from an earlier job when large enough. */
static cl_int ensure_buf(struct ocl_dev *od, struct ocl_buf *b, uint64_t bytes)
{
    bytes = bytes < 64 ? 64 : (bytes + 63) & ~UINT64_C(63);
    if (b->m && b->size >= bytes) return CL_SUCCESS;
    release_buf(b);
    if (bytes > SIZE_MAX) return CL_INVALID_BUFFER_SIZE;
    cl_int e;
    b->m = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE, (size_t)bytes, NULL, &e);
    if (e != CL_SUCCESS) { b->m = NULL; return e; }
    b->size = bytes;
    return CL_SUCCESS;
}

static cl_int set_args(cl_kernel k, int n, const cl_mem *args)
{
    cl_int e = CL_SUCCESS;
    for (int i = 0; i < n && e == CL_SUCCESS; i++) e = clSetKernelArg(k, (cl_uint)i, sizeof(cl_mem), &args[i]);
    return e;
}

/* ---- warm-up ------------------------------------------------------------------------------
 * Drivers may compile a kernel lazily at its first launch, and again for each launch shape they
 * specialize on: PoCL (CPU) builds a work-group function per (kernel, work-group size, global
 * offset zero or not, grid under SMALL_GRID work items or not) at the first launch of that
 * shape, from 0.1 to 0.3 s each (then kept in its own cache, POCL_CACHE_DIR). So that no job pays
 * that, prepare launches every kernel a job can use in every shape a job can launch it with
 * (warm_up), on scratch buffers; every launch goes through enqueue_nd, which records its shape,
 * and a shape first seen after the warm-up counts as cold (describe: cold=N; tests/test_warmup.c
 * runs jobs of every kind and checks that it stays 0). */
static void note_shape(struct ocl_dev *od, cl_kernel k, size_t off, size_t global, size_t local)
{
    unsigned char goffs0 = off == 0, small = global < SMALL_GRID;
    for (int i = 0; i < BK_N; i++)
        if (od->bk[i] == k) return; /* the benchmark's kernels are not a job's */
    for (int i = 0; i < od->nvariants; i++) {
        const struct ocl_variant *v = &od->variants[i];
        if (v->k == k && v->local == local && v->goffs0 == goffs0 && v->small == small) return;
    }
    if (od->warm) od->cold++;
    if (od->nvariants < VARIANTS_MAX) od->variants[od->nvariants++] = (struct ocl_variant){k, local, goffs0, small};
}

/* clEnqueueNDRangeKernel on the passes' queue, one dimension, the shape noted */
static cl_int enqueue_nd(struct ocl_dev *od, cl_kernel k, size_t off, size_t global, size_t local)
{
    note_shape(od, k, off, global, local);
    return clEnqueueNDRangeKernel(od->queue, k, 1, off ? &off : NULL, &global, &local, 0, NULL, NULL);
}

/* n work items of k (arguments set), in groups of wg with a rounded-up global size */
static cl_int launch_round(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t n)
{
    if (n == 0) return CL_SUCCESS;
    return enqueue_nd(od, k, 0, (size_t)((n + wg - 1) / wg * wg), wg);
}

/* exactly n work items of k, for kernels without a bounds check: whole groups of wg, then the
 * rest at an offset in groups of one (a group of the rest's own size would make drivers that
 * specialise on the group size, PoCL among them, compile a kernel for every remainder) */
static cl_int launch_exact(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t n)
{
    size_t whole = (size_t)(n / wg * wg), rest = (size_t)(n - whole);
    cl_int e = CL_SUCCESS;
    if (whole) e = enqueue_nd(od, k, 0, whole, wg);
    if (e == CL_SUCCESS && rest) e = enqueue_nd(od, k, whole, rest, 1);
    return e;
}

/* Whether the device's fast apply keeps subnormal f32 products exact: db_probe on
 * db_probe_subnormals' inputs, against core/fp.h. */
static int probe_exact(struct ocl_dev *od)
{
    enum { NP = 256 };
    uint32_t x[NP], s[NP], y[NP];
    db_probe_subnormals(x, s, NP);
    cl_int e;
    cl_mem b[3];
    for (int i = 0; i < 3; i++) {
        b[i] = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE | (i < 2 ? CL_MEM_COPY_HOST_PTR : 0), sizeof x,
                              i == 0 ? (void *)x : i == 1 ? (void *)s : NULL, &e);
        if (e != CL_SUCCESS) {
            for (int j = 0; j < i; j++) clReleaseMemObject(b[j]);
            return 0;
        }
    }
    size_t global = NP / od->vw;
    int ok = set_args(od->k[K_PROBE], 3, b) == CL_SUCCESS &&
             clEnqueueNDRangeKernel(od->queue, od->k[K_PROBE], 1, NULL, &global, NULL, 0, NULL, NULL) == CL_SUCCESS &&
             clEnqueueReadBuffer(od->queue, b[2], CL_TRUE, 0, sizeof y, y, 0, NULL, NULL) == CL_SUCCESS;
    for (int i = 0; i < NP && ok; i++) ok = y[i] == db_mul32(x[i], s[i]);
    for (int i = 0; i < 3; i++) clReleaseMemObject(b[i]);
    const char *force = getenv("DROPBLOCK_OPENCL_FIXUP");
    return ok && !(force && !strcmp(force, "1"));
}

/* Whether the fast f16 apply through the device's conversions (db_hwiden, db_happly,
 * db_hnarrow: vload_half, two IEEE products, vstore_half_rte) gives core/fp.h's bits on this
 * device: the widening of all 65536 f16 words, and the apply (scale 1) and narrowing of every
 * finite f16 value's float32, the midpoints to the next one (the rounding ties, up to the
 * overflow bound 0x477FF000) and their neighbours, with both signs, and of infinities, the
 * quiet NaN, huge values and tiny ones, kept and dropped. Only CPU devices use it (there the
 * integer conversions are the apply pass's bottleneck; on GPUs the pass is memory-bound either
 * way). */
static int probe_half(struct ocl_dev *od)
{
    enum { NH = 1 << 17, NF = 1 << 18 }; /* u32 words of halves, float32 values */
    if (!od->cpu) return 0;
    uint32_t *h = malloc(NH * 4), *f = malloc(NF * 4), *keep = malloc(NF * 4), *fw = malloc(NF * 4),
             *hn = malloc(NH * 4);
    cl_mem b[5] = {NULL, NULL, NULL, NULL, NULL};
    int ok = h && f && keep && fw && hn;
    for (uint32_t i = 0; ok && i < NH; i++) h[i] = (2 * i) % 65536 | ((2 * i + 1) % 65536) << 16;
    for (uint32_t i = 0; ok && i < NF; i++) {
        uint32_t sign = (i & 1) << 31, k = (i >> 3) & 0x7FFF, c = (i >> 1) & 3, v;
        keep[i] = 1;
        if (k == 0) { /* 0, and below, at and above 2^-25, halfway to the least subnormal */
            v = c == 0 ? 0 : 0x33000000u - 2 + c;
        } else if (k < 0x7C00) { /* k, and below, at and above halfway to k + 1 (65536 past the largest) */
            uint32_t lo = db_f16_to_f32((uint16_t)k), hi = k == 0x7BFF ? 0x47800000u : db_f16_to_f32((uint16_t)(k + 1));
            v = c == 0 ? lo : (lo + hi) / 2 - 2 + c;
        } else { /* half of them dropped */
            uint32_t j = k - 0x7C00;
            v = c == 0 ? (j & 1 ? 0x7FC00000u : 0x7F800000u) : c == 1 ? 0x477FF000u + j * 0x3FFFFu : 0x33800000u + j * 0x13579u;
            keep[i] = (j >> 1) & 1;
        }
        f[i] = sign | v;
    }
    cl_int e = CL_SUCCESS;
    void *src[5] = {h, f, keep, NULL, NULL};
    size_t bytes[5] = {NH * 4, NF * 4, NF * 4, NF * 4, NH * 4};
    for (int i = 0; ok && i < 5; i++) {
        b[i] = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE | (src[i] ? CL_MEM_COPY_HOST_PTR : 0), bytes[i], src[i], &e);
        ok = e == CL_SUCCESS;
    }
    size_t global = NH / od->vw;
    ok = ok && set_args(od->k[K_PROBE_HALF], 5, b) == CL_SUCCESS &&
         clEnqueueNDRangeKernel(od->queue, od->k[K_PROBE_HALF], 1, NULL, &global, NULL, 0, NULL, NULL) == CL_SUCCESS &&
         clEnqueueReadBuffer(od->queue, b[3], CL_TRUE, 0, NF * 4, fw, 0, NULL, NULL) == CL_SUCCESS &&
         clEnqueueReadBuffer(od->queue, b[4], CL_TRUE, 0, NH * 4, hn, 0, NULL, NULL) == CL_SUCCESS;
    /* vector i of h holds halves 2 vw i ..; db_hwiden puts them in order into vectors 2i, 2i+1 */
    for (uint32_t i = 0; ok && i < NF; i++) ok = fw[i] == db_f16_to_f32((uint16_t)(i % 65536));
    for (uint32_t i = 0; ok && i < NF; i++) {
        uint32_t y = db_mul32(f[i], 0x3F800000u);
        if (!keep[i]) y = db_mul32(y, 0);
        ok = (uint16_t)(hn[i / 2] >> (16 * (i % 2))) == db_f32_to_f16(y);
    }
    for (int i = 0; i < 5; i++)
        if (b[i]) clReleaseMemObject(b[i]);
    free(h); free(f); free(keep); free(fw); free(hn);
    const char *force = getenv("DROPBLOCK_OPENCL_FIXUP");
    return ok && !(force && !strcmp(force, "1"));
}

/* Launches every kernel a job can use, in every shape a job can launch it with (see
 * "warm-up"), on scratch buffers: with these parameter words the mask, scale, exact and fixup
 * kernels return at once, and the fast apply kernels (no bounds check) run over a scratch
 * tensor, one scale for all. Then waits, so that the driver has built them all. 0, or an
 * OpenCL error (the device is then not used). */
static cl_int warm_up(struct ocl_dev *od)
{
    const size_t wa = od->wg_apply, big_a = (SMALL_GRID + wa - 1) / wa * wa;
    const size_t item = (size_t)od->vw * od->vpw * 4; /* bytes a fast apply work item takes */
    uint32_t prm[DBP_COUNT];
    memset(prm, 0, sizeof prm);
    prm[DBP_TPW] = 1;                /* no tiles: the mask pass does nothing */
    prm[DBP_CHW + 1] = UINT32_C(1) << 30; /* one sample (2^62 elements): every element takes scale 0 */
    cl_int e = CL_SUCCESS;
    cl_mem p = clCreateBuffer(od->ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof prm, prm, &e);
    if (e != CL_SUCCESS) return e;
    cl_mem x = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE, (big_a + wa + 1) * item, NULL, &e);
    cl_mem m = e == CL_SUCCESS ? clCreateBuffer(od->ctx, CL_MEM_READ_WRITE, (big_a + wa + 1) * item, NULL, &e) : NULL;
    cl_mem sc = e == CL_SUCCESS ? clCreateBuffer(od->ctx, CL_MEM_READ_WRITE, 64, NULL, &e) : NULL;
    if (e == CL_SUCCESS) {
        uint32_t one = 0x3F800000u;
        e = clEnqueueFillBuffer(od->queue, sc, &one, sizeof one, 0, 64, 0, NULL, NULL);
    }
    /* the mask pass and the scales: launch_round's shapes (the scales never pass SMALL_GRID:
     * DB_DEVICE_SCALE_MAX_SAMPLES) */
    cl_mem am[3] = {p, m, sc}, as[3] = {p, sc, sc};
    if (e == CL_SUCCESS) e = set_args(od->k[K_MASK], 3, am);
    if (e == CL_SUCCESS) e = enqueue_nd(od, od->k[K_MASK], 0, od->wg_mask, od->wg_mask);
    if (e == CL_SUCCESS) e = enqueue_nd(od, od->k[K_MASK], 0, (SMALL_GRID + od->wg_mask - 1) / od->wg_mask * od->wg_mask,
                                        od->wg_mask);
    if (e == CL_SUCCESS) e = set_args(od->k[K_SCALE], 3, as);
    if (e == CL_SUCCESS) e = enqueue_nd(od, od->k[K_SCALE], 0, od->wg_small, od->wg_small);
    /* the exact tail and the fixup: launch_round's shapes, and launch_range's where the staged
     * path may run */
    const size_t ws = od->wg_small, big_s = (SMALL_GRID + ws - 1) / ws * ws;
    for (int f = 0; f < 2 && e == CL_SUCCESS; f++) {
        cl_kernel k = f ? od->k[K_FIXUP] : od->k[K_EXACT];
        if (f && od->hwexact) break;
        cl_mem a[5] = {p, m, sc, x, f ? m : x};
        e = set_args(k, 5, a);
        if (e == CL_SUCCESS) e = enqueue_nd(od, k, 0, ws, ws);
        if (e == CL_SUCCESS) e = enqueue_nd(od, k, 0, big_s, ws);
        if (!od->zero_copy) {
            if (e == CL_SUCCESS) e = enqueue_nd(od, k, ws, ws, ws);
            if (e == CL_SUCCESS) e = enqueue_nd(od, k, ws, big_s, ws);
            if (e == CL_SUCCESS) e = enqueue_nd(od, k, 0, 1, 1); /* a range's rest alone, from 0 or not */
            if (e == CL_SUCCESS) e = enqueue_nd(od, k, 1, 1, 1);
        }
    }
    /* the fast apply of each dtype and scale kind, with or without the fixup as this device
     * runs it: launch_exact's shapes (whole groups, and the rest in groups of one at an offset
     * or alone), and launch_range's */
    for (int i = 0; i < 6 && e == CL_SUCCESS; i++) {
        int dt = i / 2, ps = i % 2, fix = !od->hwexact && dt != DROPBLOCK_F16;
        cl_kernel k = od->k_apply[dt][ps][fix];
        cl_mem a[6] = {p, m, sc, x, x, m};
        e = set_args(k, 6, a);
        if (e == CL_SUCCESS) e = enqueue_nd(od, k, 0, wa, wa);
        if (e == CL_SUCCESS) e = enqueue_nd(od, k, 0, big_a, wa);
        if (e == CL_SUCCESS) e = enqueue_nd(od, k, 0, 1, 1);
        if (e == CL_SUCCESS) e = enqueue_nd(od, k, 1, 1, 1);
        if (!od->zero_copy) {
            if (e == CL_SUCCESS) e = enqueue_nd(od, k, wa, wa, wa);
            if (e == CL_SUCCESS) e = enqueue_nd(od, k, wa, big_a, wa);
        }
    }
    if (e == CL_SUCCESS) e = clFinish(od->queue);
    if (sc) clReleaseMemObject(sc);
    if (m) clReleaseMemObject(m);
    if (x) clReleaseMemObject(x);
    clReleaseMemObject(p);
    od->warm = 1;
    return e;
}

static int ocl_prepare(struct db_device *dev, const struct db_backend_config *cfg, char *msg, size_t len)
{
    struct ocl_dev *od = dev->priv;
    if (!od) { db_msg(msg, len, "device was not enumerated"); return DROPBLOCK_EINTERNAL; }
    if (od->program) return DROPBLOCK_OK;
    choose_shape(od);
    cl_int e;
    cl_context_properties props[3] = {CL_CONTEXT_PLATFORM, (cl_context_properties)od->platform, 0};
    od->ctx = clCreateContext(props, 1, &od->device, NULL, NULL, &e);
    if (e != CL_SUCCESS) { od->ctx = NULL; return cl_fail(msg, len, "clCreateContext", e); }
    od->queue = clCreateCommandQueue(od->ctx, od->device, 0, &e); /* in order: the passes rely on it */
    if (e != CL_SUCCESS) {
        od->queue = NULL;
        int rc = cl_fail(msg, len, "clCreateCommandQueue", e);
        teardown(od);
        return rc;
    }
    const char *dir = cfg && cfg->cache_dir && *cfg->cache_dir ? cfg->cache_dir : NULL;
    char path[1024] = "";
    uint64_t key = 0;
    int cached = 0;
    if (dir) {
        key = cache_key(od);
        cache_path(path, sizeof path, dir, key);
        cached = load_cached(od, path, key);
    }
    if (!cached) {
        int rc = build_from_source(od, msg, len);
        if (rc) { teardown(od); return rc; }
        if (dir) { /* (re)write the entry: it was missing, stale or bad */
            size_t blen = 0;
            unsigned char *bin = program_binary(od->program, &blen);
            if (bin) db_kcache_store(dir, path, CACHE_MAGIC, key, bin, blen);
            free(bin);
        }
    }
    od->hwexact = probe_exact(od);
    od->hwhalf = probe_half(od);
    if (od->hwhalf)
        for (int s = 0; s < 2; s++) {
            cl_kernel t = od->k_apply[DROPBLOCK_F16][s][0];
            od->k_apply[DROPBLOCK_F16][s][0] = od->k_apply_half[s];
            od->k_apply_half[s] = t;
        }
    if ((e = warm_up(od)) != CL_SUCCESS) {
        int rc = cl_fail(msg, len, "warming up the kernels", e);
        teardown(od);
        return rc;
    }
    return DROPBLOCK_OK;
}

static void ocl_release(struct db_device *dev)
{
    struct ocl_dev *od = dev->priv;
    if (!od) return;
    if (od->queue) clFinish(od->queue);
    teardown(od);
    free(od);
    dev->priv = NULL;
}

/* ---- run ------------------------------------------------------------------------------ */

/* Samples a chunk of per units can touch, at most. */
static uint64_t samples_bound(const struct db_plan *pl, uint64_t per)
{
    uint64_t CH = pl->C * pl->H, rows = per * db_unit_rows(pl);
    uint64_t b = (rows + CH - 1) / CH + 1;
    return b < pl->N ? b : pl->N;
}

static struct db_tuning job_tuning(const struct ocl_dev *od, const struct db_plan *pl)
{
    uint32_t epv = pl->p.dtype == DROPBLOCK_F32 ? od->vw : 2 * od->vw; /* elements a vector */
    struct db_tuning tu = {od->tile_rows, epv * od->vpw, od->cand_budget, od->item_cands};
    return tu;
}

/* The job as a sequence of chunks, and what it needs. */
struct job {
    const struct db_plan *pl;
    struct db_tuning tu;
    uint64_t per, nchunks, units;
    uint64_t max_elem, max_samp, max_words;
    int fused; /* one chunk, compat none, not too many samples: scales on the device, no host round trip */
};

static int plan_job(struct ocl_dev *od, const struct db_plan *pl, struct job *j, char *msg, size_t len)
{
    memset(j, 0, sizeof *j);
    j->pl = pl;
    j->tu = job_tuning(od, pl);
    j->units = db_units(pl);
    j->per = db_chunk_units(pl, od->max_buffer, msg, len);
    if (!j->per) return DROPBLOCK_EEXHAUSTED;
    /* the per-sample partial counts (8 bytes a sample) must fit in a buffer too */
    while (j->per > 1 && samples_bound(pl, j->per) * 8 > od->max_buffer) j->per /= 2;
    j->nchunks = (j->units + j->per - 1) / j->per;
    struct db_chunk ch;
    for (uint64_t q = 0; q < j->nchunks; q++) {
        db_chunk_at(pl, q * j->per, (q + 1) * j->per < j->units ? (q + 1) * j->per : j->units, &ch);
        if (ch.nelem > j->max_elem) j->max_elem = ch.nelem;
        if (ch.nsamp > j->max_samp) j->max_samp = ch.nsamp;
    }
    j->max_words = (j->max_elem + 31) / 32;
    j->fused = j->nchunks == 1 && !pl->keras && j->max_samp <= DB_DEVICE_SCALE_MAX_SAMPLES;
    if (j->nchunks > SIZE_MAX / sizeof(struct ocl_buf) || j->nchunks > SIZE_MAX / (DBP_COUNT * 4) ||
        j->max_samp > SIZE_MAX / 8 || j->max_words > SIZE_MAX / 4) {
        db_msg(msg, len, "job too large for this host");
        return DROPBLOCK_EEXHAUSTED;
    }
    return DROPBLOCK_OK;
}

static void chunk_of(const struct job *j, uint64_t q, struct db_chunk *ch)
{
    db_chunk_at(j->pl, q * j->per, (q + 1) * j->per < j->units ? (q + 1) * j->per : j->units, ch);
}

/* One mask buffer per chunk, all of them holding max_words, kept by the device. */
static cl_int ensure_masks(struct ocl_dev *od, uint64_t n, uint64_t words)
{
    if (n > od->nmasks) {
        struct ocl_buf *m = realloc(od->masks, n * sizeof *m);
        if (!m) return CL_OUT_OF_HOST_MEMORY;
        memset(m + od->nmasks, 0, (n - od->nmasks) * sizeof *m);
        od->masks = m;
        od->nmasks = n;
    }
    cl_int e = CL_SUCCESS;
    for (uint64_t i = 0; i < n && e == CL_SUCCESS; i++) e = ensure_buf(od, &od->masks[i], words * 4);
    return e;
}

/* Enqueues the mask pass of chunk prm (written to od->prm first), the per-sample counts
 * zeroed before it. */
static cl_int enqueue_mask(struct ocl_dev *od, const uint32_t *prm, cl_mem maskbuf)
{
    cl_uint zero = 0;
    cl_int e = clEnqueueWriteBuffer(od->queue, od->prm.m, CL_FALSE, 0, DBP_COUNT * 4, prm, 0, NULL, NULL);
    if (e == CL_SUCCESS)
        e = clEnqueueFillBuffer(od->queue, od->kept.m, &zero, sizeof zero, 0, (size_t)prm[DBP_NSAMP] * 8, 0, NULL, NULL);
    cl_mem a[3] = {od->prm.m, maskbuf, od->kept.m};
    if (e == CL_SUCCESS) e = set_args(od->k[K_MASK], 3, a);
    if (e == CL_SUCCESS) e = launch_round(od, od->k[K_MASK], od->wg_mask, db_mask_items(prm));
    return e;
}

/* Enqueues the apply pass of a chunk from x to y (device buffers of the chunk, maybe the same). */
static cl_int enqueue_apply(struct ocl_dev *od, const struct db_plan *pl, const uint32_t *prm, cl_mem maskbuf,
                            cl_mem x, cl_mem y)
{
    cl_int e = CL_SUCCESS;
    uint64_t groups = prm[DBP_GROUPS], fast = groups * prm[DBP_EPW], nelem = (uint64_t)prm[DBP_NELEM];
    int fix = !od->hwexact && pl->p.dtype != DROPBLOCK_F16;
    uint64_t fwords = (fast + 31) / 32;
    if (groups) {
        if (fix) {
            if ((e = ensure_buf(od, &od->fixup, fwords * 4)) != CL_SUCCESS) return e;
            cl_uint zero = 0;
            e = clEnqueueFillBuffer(od->queue, od->fixup.m, &zero, sizeof zero, 0, (size_t)(fwords * 4), 0, NULL, NULL);
        }
        cl_kernel k = od->k_apply[pl->p.dtype][pl->p.normalize == DROPBLOCK_NORMALIZE_SAMPLE][fix];
        cl_mem a[6] = {od->prm.m, maskbuf, od->scales.m, x, y, fix ? od->fixup.m : od->scales.m};
        if (e == CL_SUCCESS) e = set_args(k, 6, a);
        if (e == CL_SUCCESS) e = launch_exact(od, k, od->wg_apply, groups);
    }
    if (e == CL_SUCCESS && fast < nelem) {
        cl_mem a[5] = {od->prm.m, maskbuf, od->scales.m, x, y};
        e = set_args(od->k[K_EXACT], 5, a);
        if (e == CL_SUCCESS) e = launch_round(od, od->k[K_EXACT], od->wg_small, nelem - fast);
    }
    if (e == CL_SUCCESS && groups && fix) {
        cl_mem a[5] = {od->prm.m, maskbuf, od->scales.m, y, od->fixup.m};
        e = set_args(od->k[K_FIXUP], 5, a);
        if (e == CL_SUCCESS) e = launch_round(od, od->k[K_FIXUP], od->wg_small, fwords);
    }
    return e;
}

/* A buffer over the caller's memory at p (bytes), or NULL where it cannot be used in place:
 * the kernels need 4-byte alignment (vload/vstore); the rest PoCL takes as it is. */
static cl_mem wrap_host(struct ocl_dev *od, const void *p, uint64_t bytes, int readonly)
{
    if (!od->zero_copy || ((uintptr_t)p & 3) || bytes == 0 || bytes > SIZE_MAX) return NULL;
    cl_int e;
    cl_mem m = clCreateBuffer(od->ctx, CL_MEM_USE_HOST_PTR | (readonly ? CL_MEM_READ_ONLY : CL_MEM_READ_WRITE),
                              (size_t)bytes, (void *)p, &e);
    return e == CL_SUCCESS ? m : NULL;
}

/* ---- staged copies ----------------------------------------------------------------------
 * Where the tensors cannot be used in place (a GPU, or DROPBLOCK_OPENCL_COPY=1), a job larger
 * than one slice moves through pinned host memory in slices, pipelined over three in-order
 * queues: q_up (host to device), queue (the passes) and q_down (device to host). Slots are
 * CL_MEM_ALLOC_HOST_PTR buffers mapped once (how NVIDIA's OpenCL hands out pinned memory, which
 * its DMA engines read and write without a bounce), three for uploads and three for downloads,
 * each of one slice.
 *
 *   queue:  mask passes of every chunk (never read x) | scales | apply s0 | apply s1 | apply s2 ...
 *   q_up:   x s0 | x s1 | x s2 | x s3 ...               (runs under the mask passes)
 *   q_down:                                     | y s0 | y s1 | ...
 *
 * The host copies slice k+1 of x into an upload slot while the device uploads slice k, applies
 * slice k-1 and downloads slice k-2; it copies a download slot out to y just before the slot is
 * reused. Events tie the queues: apply k waits for upload k, download k for apply k, and the
 * upload of a chunk's slice i for the download of the previous chunk's slice i (they share the
 * device buffer od->data). The engine's semantics hold: no apply is enqueued before the scales
 * of the whole tensor are known; for one fused chunk they come from the device in queue order,
 * otherwise the host polls the mask passes' marker between uploads and computes them when the
 * passes are done. A slice is a range of the chunk's elements, a multiple of 32 and of the fast
 * apply's elements a work item long, so each kernel of the apply takes it as a range of its own
 * work items (global offset) with the chunk's parameter words: the bits are the unstaged path's.
 * DROPBLOCK_OPENCL_STAGE_BYTES=<bytes> sets the slice (default 4 MiB; tests use a few hundred
 * bytes for many slices with remainders). */

#define STAGE_DEFAULT (UINT64_C(4) << 20)

/* The pinned slots, unmapped and released (q_up must still be there). */
static void release_slots(struct ocl_dev *od)
{
    for (int i = 0; i < 2 * STAGE_SLOTS; i++) {
        struct ocl_stage *s = i < STAGE_SLOTS ? &od->st_in[i] : &od->st_out[i - STAGE_SLOTS];
        if (s->m && s->p && od->q_up) clEnqueueUnmapMemObject(od->q_up, s->m, s->p, 0, NULL, NULL);
    }
    if (od->q_up) clFinish(od->q_up);
    for (int i = 0; i < 2 * STAGE_SLOTS; i++) {
        struct ocl_stage *s = i < STAGE_SLOTS ? &od->st_in[i] : &od->st_out[i - STAGE_SLOTS];
        if (s->m) clReleaseMemObject(s->m);
        s->m = NULL;
        s->p = NULL;
    }
    od->stage_size = 0;
}

static void release_staging(struct ocl_dev *od)
{
    if (od->q_down) clFinish(od->q_down);
    release_slots(od);
    if (od->q_down) clReleaseCommandQueue(od->q_down);
    if (od->q_up) clReleaseCommandQueue(od->q_up);
    od->q_up = od->q_down = NULL;
}

/* The queues and pinned slots of at least bytes each (kept by the device, grown when needed). */
static cl_int ensure_staging(struct ocl_dev *od, uint64_t bytes)
{
    cl_int e = CL_SUCCESS;
    if (!od->q_up) od->q_up = clCreateCommandQueue(od->ctx, od->device, 0, &e);
    if (e == CL_SUCCESS && !od->q_down) od->q_down = clCreateCommandQueue(od->ctx, od->device, 0, &e);
    if (e != CL_SUCCESS) return e;
    if (od->stage_size >= bytes) return CL_SUCCESS;
    release_slots(od);
    for (int i = 0; i < 2 * STAGE_SLOTS && e == CL_SUCCESS; i++) {
        struct ocl_stage *s = i < STAGE_SLOTS ? &od->st_in[i] : &od->st_out[i - STAGE_SLOTS];
        s->m = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE | CL_MEM_ALLOC_HOST_PTR, (size_t)bytes, NULL, &e);
        if (e != CL_SUCCESS) { s->m = NULL; break; }
        s->p = clEnqueueMapBuffer(od->q_up, s->m, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 0, (size_t)bytes, 0, NULL,
                                  NULL, &e);
        if (e != CL_SUCCESS) s->p = NULL;
    }
    if (e != CL_SUCCESS) {
        release_slots(od);
        return e;
    }
    od->stage_size = bytes;
    return CL_SUCCESS;
}

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b) { uint64_t t = a % b; a = b; b = t; }
    return a;
}

/* Elements a slice for the job, or 0 where it takes the unstaged path: the tensors are used in
 * place, the data is already on the device (bench), or the tensor fits in one slice. */
static uint64_t stage_slice(const struct ocl_dev *od, const struct job *j, size_t es, int resident)
{
    if (od->zero_copy || resident) return 0;
    uint64_t want = STAGE_DEFAULT;
    const char *env = getenv("DROPBLOCK_OPENCL_STAGE_BYTES");
    if (env && *env) {
        char *end = NULL;
        unsigned long long v = strtoull(env, &end, 10);
        if (end && !*end && v > 0) want = v;
    }
    uint64_t epw = j->tu.epw ? j->tu.epw : 1, g = 32 / gcd64(32, epw) * epw; /* lcm(32, epw) */
    uint64_t n = want / es / g * g, chunk = (j->max_elem + g - 1) / g * g;
    if (n < g) n = g;
    if (n > chunk) n = chunk; /* no slot larger than a chunk */
    return j->pl->numel > n ? n : 0;
}

/* Items [a, b) of a kernel without a bounds check beyond its own: whole groups of wg from a,
 * the rest in groups of one (launch_exact's rule, at a global offset). */
static cl_int launch_range(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t a, uint64_t b)
{
    size_t off = (size_t)a, whole = (size_t)((b - a) / wg * wg), rest = (size_t)(b - a) - whole;
    cl_int e = CL_SUCCESS;
    if (whole) e = enqueue_nd(od, k, off, whole, wg);
    off += whole;
    if (e == CL_SUCCESS && rest) e = enqueue_nd(od, k, off, rest, 1);
    return e;
}

/* Enqueues the apply pass of elements [s0, s1) of a chunk whose parameters are in od->prm,
 * scales in od->scales and fixup words zeroed: the same kernels as enqueue_apply, each over its
 * work items of the range. */
static cl_int enqueue_apply_range(struct ocl_dev *od, const struct db_plan *pl, const uint32_t *prm, cl_mem maskbuf,
                                  cl_mem xy, uint64_t s0, uint64_t s1)
{
    cl_int e = CL_SUCCESS;
    const uint64_t groups = prm[DBP_GROUPS], epw = prm[DBP_EPW], fast = groups * epw;
    const int fix = !od->hwexact && pl->p.dtype != DROPBLOCK_F16;
    if (groups && s0 < fast) {
        cl_kernel k = od->k_apply[pl->p.dtype][pl->p.normalize == DROPBLOCK_NORMALIZE_SAMPLE][fix];
        cl_mem a[6] = {od->prm.m, maskbuf, od->scales.m, xy, xy, fix ? od->fixup.m : od->scales.m};
        e = set_args(k, 6, a);
        if (e == CL_SUCCESS) e = launch_range(od, k, od->wg_apply, s0 / epw, (s1 < fast ? s1 : fast) / epw);
    }
    if (e == CL_SUCCESS && s1 > fast) {
        cl_mem a[5] = {od->prm.m, maskbuf, od->scales.m, xy, xy};
        e = set_args(od->k[K_EXACT], 5, a);
        if (e == CL_SUCCESS) e = launch_range(od, od->k[K_EXACT], od->wg_small, (s0 > fast ? s0 : fast) - fast, s1 - fast);
    }
    if (e == CL_SUCCESS && groups && fix && s0 < fast) {
        cl_mem a[5] = {od->prm.m, maskbuf, od->scales.m, xy, od->fixup.m};
        e = set_args(od->k[K_FIXUP], 5, a);
        if (e == CL_SUCCESS) e = launch_range(od, od->k[K_FIXUP], od->wg_small, s0 / 32, ((s1 < fast ? s1 : fast) + 31) / 32);
    }
    return e;
}

/* The staged job's state: slices in order (chunk by chunk), their events, and how far the
 * host has got. */
struct staged {
    struct ocl_dev *od;
    const struct job *j;
    size_t es;
    const char *in;
    char *out;
    const uint32_t *prms;
    uint64_t L, spc, ns;   /* elements a slice, slices a (full) chunk, slices in all */
    cl_event *up, *ap, *dn;
    uint64_t napplied, nconsumed;
    int scales_ready;
    const uint32_t *scales; /* host scales (unfused), valid once scales_ready */
};

static void slice_of(const struct staged *st, uint64_t k, struct db_chunk *ch, uint64_t *s0, uint64_t *s1)
{
    chunk_of(st->j, k / st->spc, ch);
    *s0 = k % st->spc * st->L;
    *s1 = *s0 + st->L < ch->nelem ? *s0 + st->L : ch->nelem;
}

/* Host x -> upload slot -> device (q_up), after the previous chunk's download of the region. */
static cl_int stage_upload(struct staged *st, uint64_t k)
{
    struct ocl_dev *od = st->od;
    struct db_chunk ch;
    uint64_t s0, s1;
    slice_of(st, k, &ch, &s0, &s1);
    cl_int e = CL_SUCCESS;
    if (k >= STAGE_SLOTS && (e = clWaitForEvents(1, &st->up[k - STAGE_SLOTS])) != CL_SUCCESS) return e;
    const size_t bytes = (size_t)((s1 - s0) * st->es);
    memcpy(od->st_in[k % STAGE_SLOTS].p, st->in + (ch.e0 + s0) * st->es, bytes);
    const cl_event *war = k >= st->spc ? &st->dn[k - st->spc] : NULL;
    e = clEnqueueWriteBuffer(od->q_up, od->data.m, CL_FALSE, (size_t)(s0 * st->es), bytes, od->st_in[k % STAGE_SLOTS].p,
                             war ? 1 : 0, war, &st->up[k]);
    return e == CL_SUCCESS ? clFlush(od->q_up) : e;
}

/* Download slot -> host y, once the download of slice k is done. */
static cl_int stage_consume(struct staged *st, uint64_t k)
{
    struct db_chunk ch;
    uint64_t s0, s1;
    slice_of(st, k, &ch, &s0, &s1);
    cl_int e = clWaitForEvents(1, &st->dn[k]);
    if (e == CL_SUCCESS) memcpy(st->out + (ch.e0 + s0) * st->es, st->od->st_out[k % STAGE_SLOTS].p, (size_t)((s1 - s0) * st->es));
    return e;
}

/* Apply of slice k after its upload (queue), then its download into a free slot (q_down). A
 * chunk's first slice first loads the chunk's parameters (and host scales) and zeroes fixup. */
static cl_int stage_apply(struct staged *st, uint64_t k)
{
    struct ocl_dev *od = st->od;
    const struct db_plan *pl = st->j->pl;
    struct db_chunk ch;
    uint64_t s0, s1, q = k / st->spc;
    slice_of(st, k, &ch, &s0, &s1);
    const uint32_t *prm = st->prms + q * DBP_COUNT;
    cl_int e = CL_SUCCESS;
    if (s0 == 0) {
        e = clEnqueueWriteBuffer(od->queue, od->prm.m, CL_FALSE, 0, DBP_COUNT * 4, prm, 0, NULL, NULL);
        if (e == CL_SUCCESS && !st->j->fused)
            e = clEnqueueWriteBuffer(od->queue, od->scales.m, CL_FALSE, 0, (size_t)ch.nsamp * 4, st->scales + ch.n0, 0,
                                     NULL, NULL);
        uint64_t fwords = ((uint64_t)prm[DBP_GROUPS] * prm[DBP_EPW] + 31) / 32;
        cl_uint zero = 0;
        if (e == CL_SUCCESS && fwords && !od->hwexact && pl->p.dtype != DROPBLOCK_F16)
            e = clEnqueueFillBuffer(od->queue, od->fixup.m, &zero, sizeof zero, 0, (size_t)(fwords * 4), 0, NULL, NULL);
    }
    if (e == CL_SUCCESS) e = clEnqueueBarrierWithWaitList(od->queue, 1, &st->up[k], NULL);
    if (e == CL_SUCCESS) e = enqueue_apply_range(od, pl, prm, od->masks[q].m, od->data.m, s0, s1);
    if (e == CL_SUCCESS) e = clEnqueueMarkerWithWaitList(od->queue, 0, NULL, &st->ap[k]);
    if (e == CL_SUCCESS) e = clFlush(od->queue);
    while (e == CL_SUCCESS && st->nconsumed + STAGE_SLOTS <= k) e = stage_consume(st, st->nconsumed++);
    if (e == CL_SUCCESS)
        e = clEnqueueReadBuffer(od->q_down, od->data.m, CL_FALSE, (size_t)(s0 * st->es), (size_t)((s1 - s0) * st->es),
                                od->st_out[k % STAGE_SLOTS].p, 1, &st->ap[k], &st->dn[k]);
    if (e == CL_SUCCESS) e = clFlush(od->q_down);
    st->napplied = k + 1;
    return e;
}

/* K and the scales on the host from the chunks' per-sample counts (pass 1 done). */
static int host_scales(const struct job *j, const uint32_t *partial, uint64_t *kept, uint32_t *scales,
                       dropblock_result *res)
{
    struct db_chunk ch;
    for (uint64_t q = 0; q < j->nchunks; q++) {
        chunk_of(j, q, &ch);
        const uint32_t *pp = partial + q * j->max_samp * 2;
        for (uint64_t s = 0; s < ch.nsamp; s++) kept[ch.n0 + s] += (uint64_t)pp[2 * s] | ((uint64_t)pp[2 * s + 1] << 32);
    }
    return db_plan_scales(j->pl, kept, scales, res);
}

/* Pass 3 of a staged job, pass 1 (and for a fused job the device's scales) already enqueued on
 * queue: slices of L elements from in to out, and the chunks' masks read into words where wanted.
 * t[0..2]: mask, scale (unfused only) and the start of the apply. */
static int stage_run(struct ocl_dev *od, const struct job *j, size_t es, uint64_t L, const void *in, void *out,
                     const uint32_t *prms, const uint32_t *partial, uint64_t *kept, uint32_t *scales, uint32_t *words,
                     uint64_t t_start, uint64_t t[3], dropblock_result *res, char *msg, size_t len)
{
    int rc = DROPBLOCK_OK;
    struct db_chunk last;
    chunk_of(j, j->nchunks - 1, &last);
    struct staged st = {.od = od, .j = j, .es = es, .in = in, .out = out, .prms = prms, .L = L, .scales = scales,
                        .scales_ready = j->fused};
    st.spc = (j->max_elem + L - 1) / L; /* every chunk but the last is full */
    st.ns = (j->nchunks - 1) * st.spc + (last.nelem + L - 1) / L;
    cl_event mask_ev = NULL;
    st.up = calloc(3 * st.ns, sizeof(cl_event));
    if (!st.up) {
        db_msg(msg, len, "out of host memory for %llu slices", (unsigned long long)st.ns);
        return DROPBLOCK_EEXHAUSTED;
    }
    st.ap = st.up + st.ns;
    st.dn = st.ap + st.ns;
    if ((rc = cl_check(ensure_staging(od, L * es), "clCreateBuffer(staging)", msg, len))) goto done;
    if ((rc = cl_check(ensure_buf(od, &od->data, ((j->max_elem * es + 3) & ~UINT64_C(3)) + 64), "clCreateBuffer(data)",
                       msg, len)))
        goto done;
    if (!od->hwexact && j->pl->p.dtype != DROPBLOCK_F16 &&
        (rc = cl_check(ensure_buf(od, &od->fixup, (j->max_elem + 31) / 32 * 4), "clCreateBuffer(fixup)", msg, len)))
        goto done;
    if (!j->fused && (rc = cl_check(clEnqueueMarkerWithWaitList(od->queue, 0, NULL, &mask_ev),
                                    "clEnqueueMarkerWithWaitList(mask)", msg, len)))
        goto done;
    if ((rc = cl_check(clFlush(od->queue), "clFlush(db_mask)", msg, len))) goto done;
    for (uint64_t k = 0; k <= st.ns; k++) {
        /* the scales, once the mask passes are done: at once when an apply must go before the
         * next upload (the previous chunk's slice in the device buffer), or at the end; else
         * when the marker shows them done */
        int need = k == st.ns || (k >= st.spc && st.napplied <= k - st.spc);
        if (!st.scales_ready && !need) {
            cl_int status = CL_QUEUED;
            if ((rc = cl_check(clGetEventInfo(mask_ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL),
                               "clGetEventInfo(mask)", msg, len)))
                goto done;
            need = status <= CL_COMPLETE;
        }
        if (!st.scales_ready && need) {
            if ((rc = cl_check(clWaitForEvents(1, &mask_ev), "clWaitForEvents(db_mask)", msg, len))) goto done;
            t[0] = db_now_us() - t_start;
            uint64_t t0 = db_now_us();
            if ((rc = host_scales(j, partial, kept, scales, res))) goto done;
            t[1] = db_now_us() - t0;
            st.scales_ready = 1;
        }
        if (st.scales_ready && !t[2]) t[2] = db_now_us();
        /* applies of the slices uploaded so far; at the end, all of them */
        while (st.scales_ready && st.napplied < k)
            if ((rc = cl_check(stage_apply(&st, st.napplied), "enqueue(staged apply)", msg, len))) goto done;
        if (k < st.ns && (rc = cl_check(stage_upload(&st, k), "enqueue(staged upload)", msg, len))) goto done;
    }
    for (uint64_t q = 0; q < j->nchunks && words; q++) {
        chunk_of(j, q, &last);
        if ((rc = cl_check(clEnqueueReadBuffer(od->queue, od->masks[q].m, CL_FALSE, 0,
                                               (size_t)((last.nelem + 31) / 32 * 4), words + q * j->max_words, 0, NULL,
                                               NULL),
                           "clEnqueueReadBuffer(mask)", msg, len)))
            goto done;
    }
    while (st.nconsumed < st.ns)
        if ((rc = cl_check(stage_consume(&st, st.nconsumed++), "clWaitForEvents(staged download)", msg, len)))
            goto done;
done:
    clFinish(od->q_up);
    clFinish(od->queue);
    clFinish(od->q_down);
    for (uint64_t k = 0; k < 3 * st.ns; k++)
        if (st.up[k]) clReleaseEvent(st.up[k]);
    if (mask_ev) clReleaseEvent(mask_ev);
    free(st.up);
    return rc;
}

/* The job from x to y: in/out in host memory, or (bench) xres/yres already on the device. */
static int ocl_job(struct ocl_dev *od, const struct db_plan *pl, const void *in, void *out, void *mask,
                   cl_mem xres, cl_mem yres, dropblock_result *res, char *msg, size_t len)
{
    const uint64_t t_start = db_now_us();
    const size_t es = dropblock_dtype_size(pl->p.dtype);
    struct job j;
    int rc = plan_job(od, pl, &j, msg, len);
    if (rc) return rc;
    if (xres && j.nchunks != 1) {
        db_msg(msg, len, "the tensor takes %llu chunks on this device; the benchmark takes one",
               (unsigned long long)j.nchunks);
        return DROPBLOCK_EINVAL;
    }
    uint32_t *prms = malloc(j.nchunks * DBP_COUNT * 4);
    uint32_t *partial = malloc(j.nchunks * j.max_samp * 8);
    uint64_t *kept = calloc(pl->N, sizeof *kept);
    uint32_t *scales = calloc(pl->N, sizeof *scales), *dscales = calloc(pl->N, sizeof *scales);
    uint32_t *words = mask ? malloc(j.max_words * 4 * j.nchunks) : NULL;
    cl_mem *xs = calloc(j.nchunks, sizeof *xs), *ys = calloc(j.nchunks, sizeof *ys);
    uint64_t t_mask = 0, t_scale = 0, t_apply = 0;
    const uint64_t L = stage_slice(od, &j, es, xres != NULL); /* 0: unstaged */
    if (!prms || !partial || !kept || !scales || !dscales || (mask && !words) || !xs || !ys) {
        db_msg(msg, len, "out of host memory for %llu chunks", (unsigned long long)j.nchunks);
        rc = DROPBLOCK_EEXHAUSTED;
        goto done;
    }
    if ((rc = cl_check(ensure_buf(od, &od->prm, DBP_COUNT * 4), "clCreateBuffer(params)", msg, len))) goto done;
    if ((rc = cl_check(ensure_buf(od, &od->kept, j.max_samp * 8 + 8), "clCreateBuffer(kept)", msg, len))) goto done;
    if ((rc = cl_check(ensure_buf(od, &od->scales, (j.fused ? pl->N : j.max_samp) * 4), "clCreateBuffer(scales)", msg,
                       len)))
        goto done;
    if ((rc = cl_check(ensure_masks(od, j.nchunks, j.max_words), "clCreateBuffer(mask)", msg, len))) goto done;

    /* pass 1 per chunk; the host arrays written and read here live until the final
     * clFinish, so every transfer can be non-blocking on the in-order queue */
    struct db_chunk ch;
    for (uint64_t q = 0; q < j.nchunks; q++) {
        chunk_of(&j, q, &ch);
        uint32_t *prm = prms + q * DBP_COUNT;
        db_kernel_params(pl, &ch, &j.tu, prm);
        if ((rc = cl_check(enqueue_mask(od, prm, od->masks[q].m), "enqueue(db_mask)", msg, len))) goto done;
        if ((rc = cl_check(clEnqueueReadBuffer(od->queue, od->kept.m, CL_FALSE, 0, (size_t)ch.nsamp * 8,
                                               partial + q * j.max_samp * 2, 0, NULL, NULL),
                           "clEnqueueReadBuffer(kept)", msg, len)))
            goto done;
    }
    if (j.fused) {
        cl_mem a[3] = {od->prm.m, od->kept.m, od->scales.m};
        if ((rc = cl_check(set_args(od->k[K_SCALE], 3, a), "clSetKernelArg(db_scale)", msg, len))) goto done;
        if ((rc = cl_check(launch_round(od, od->k[K_SCALE], od->wg_small, pl->N), "clEnqueueNDRangeKernel(db_scale)",
                           msg, len)))
            goto done;
        if ((rc = cl_check(
                 clEnqueueReadBuffer(od->queue, od->scales.m, CL_FALSE, 0, (size_t)pl->N * 4, dscales, 0, NULL, NULL),
                 "clEnqueueReadBuffer(scales)", msg, len)))
            goto done;
    } else if (!L) {
        if ((rc = cl_check(clFinish(od->queue), "clFinish(db_mask)", msg, len))) goto done;
        t_mask = db_now_us() - t_start;
        uint64_t t0 = db_now_us();
        rc = host_scales(&j, partial, kept, scales, res);
        t_scale = db_now_us() - t0;
        if (rc) goto done;
    }
    if (L) { /* pass 3 in slices through pinned memory, overlapped with the copies */
        uint64_t t[3] = {0, 0, 0};
        rc = stage_run(od, &j, es, L, in, out, prms, partial, kept, scales, words, t_start, t, res, msg, len);
        if (rc) goto done;
        t_mask = t[0];
        t_scale = t[1];
        t_apply = t[2];
        goto applied;
    }

    /* pass 3 per chunk */
    t_apply = db_now_us();
    for (uint64_t q = 0; q < j.nchunks; q++) {
        chunk_of(&j, q, &ch);
        const uint32_t *prm = prms + q * DBP_COUNT;
        const uint64_t bytes = ch.nelem * es;
        const char *xin = xres ? NULL : (const char *)in + ch.e0 * es;
        char *yout = xres ? NULL : (char *)out + ch.e0 * es;
        cl_mem x = xres, y = yres;
        if (!xres) {
            xs[q] = wrap_host(od, xin, bytes, xin != yout);
            ys[q] = xin == yout ? NULL : wrap_host(od, yout, bytes, 0);
            if (xs[q] && (xin == yout || ys[q])) {
                x = xs[q];
                y = xin == yout ? xs[q] : ys[q];
            } else { /* copy in, apply in place, copy out */
                if ((rc = cl_check(ensure_buf(od, &od->data, ((j.max_elem * es + 3) & ~UINT64_C(3)) + 64),
                                   "clCreateBuffer(data)", msg, len)))
                    goto done;
                if ((rc = cl_check(
                         clEnqueueWriteBuffer(od->queue, od->data.m, CL_FALSE, 0, (size_t)bytes, xin, 0, NULL, NULL),
                         "clEnqueueWriteBuffer(x)", msg, len)))
                    goto done;
                x = y = od->data.m;
            }
        }
        if ((rc = cl_check(clEnqueueWriteBuffer(od->queue, od->prm.m, CL_FALSE, 0, DBP_COUNT * 4, prm, 0, NULL, NULL),
                           "clEnqueueWriteBuffer(params)", msg, len)))
            goto done;
        if (!j.fused && (rc = cl_check(clEnqueueWriteBuffer(od->queue, od->scales.m, CL_FALSE, 0, (size_t)ch.nsamp * 4,
                                                            scales + ch.n0, 0, NULL, NULL),
                                       "clEnqueueWriteBuffer(scales)", msg, len)))
            goto done;
        if ((rc = cl_check(enqueue_apply(od, pl, prm, od->masks[q].m, x, y), "enqueue(db_apply)", msg, len))) goto done;
        if (!xres && y == od->data.m) {
            if ((rc = cl_check(clEnqueueReadBuffer(od->queue, y, CL_FALSE, 0, (size_t)bytes, yout, 0, NULL, NULL),
                               "clEnqueueReadBuffer(y)", msg, len)))
                goto done;
        } else if (!xres) { /* makes the device's writes visible in the caller's memory */
            void *p = clEnqueueMapBuffer(od->queue, y, CL_FALSE, CL_MAP_READ, 0, (size_t)bytes, 0, NULL, NULL, NULL);
            if (p && (rc = cl_check(clEnqueueUnmapMemObject(od->queue, y, p, 0, NULL, NULL),
                                    "clEnqueueUnmapMemObject(y)", msg, len)))
                goto done;
        }
        if (mask && (rc = cl_check(clEnqueueReadBuffer(od->queue, od->masks[q].m, CL_FALSE, 0,
                                                       (size_t)((ch.nelem + 31) / 32 * 4), words + q * j.max_words, 0,
                                                       NULL, NULL),
                                   "clEnqueueReadBuffer(mask)", msg, len)))
            goto done;
    }
    if ((rc = cl_check(clFinish(od->queue), "clFinish(db_apply)", msg, len))) goto done;
applied:
    if (j.fused) {
        /* K for the reply, and the host's exact scales as a check of the device's */
        chunk_of(&j, 0, &ch);
        for (uint64_t s = 0; s < ch.nsamp; s++) kept[ch.n0 + s] = (uint64_t)partial[2 * s] | ((uint64_t)partial[2 * s + 1] << 32);
        if ((rc = db_plan_scales(pl, kept, scales, res))) goto done;
        if (memcmp(scales, dscales, pl->N * 4)) {
            db_msg(msg, len, "the device's scale 0x%08x differs from the exact 0x%08x", dscales[0], scales[0]);
            rc = DROPBLOCK_EINTERNAL;
            goto done;
        }
    }
    for (uint64_t q = 0; q < j.nchunks && mask; q++) {
        chunk_of(&j, q, &ch);
        db_mask_export_flat(pl, words + q * j.max_words, ch.e0, ch.nelem, mask);
    }
    res->timing_us[0] = t_mask;
    res->timing_us[1] = t_scale;
    res->timing_us[2] = j.fused ? 0 : db_now_us() - t_apply;
done:
    /* nothing may still use host memory we are about to free (non-blocking transfers) */
    clFinish(od->queue);
    if (od->q_up) clFinish(od->q_up);
    if (od->q_down) clFinish(od->q_down);
    for (uint64_t q = 0; xs && ys && q < j.nchunks; q++) {
        if (xs[q]) clReleaseMemObject(xs[q]);
        if (ys[q]) clReleaseMemObject(ys[q]);
    }
    free(xs); free(ys);
    free(prms); free(partial); free(kept); free(scales); free(dscales); free(words);
    res->timing_us[3] = db_now_us() - t_start;
    return rc;
}

static int ocl_run(struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
                   dropblock_result *res)
{
    struct ocl_dev *od = dev->priv;
    if (!od || !od->program) { db_msg(res->message, sizeof res->message, "OpenCL device not prepared"); return DROPBLOCK_EINTERNAL; }
    if (dev->inject_lost) /* DROPBLOCK_FAULTS "lost" (engine.h): what the driver answers for a device that is gone */
        return cl_fail(res->message, sizeof res->message, "clEnqueueNDRangeKernel(db_mask), injected fault",
                       CL_DEVICE_NOT_AVAILABLE);
    return ocl_job(od, pl, in, out, mask, NULL, NULL, res, res->message, sizeof res->message);
}

/* ---- bench ---------------------------------------------------------------------------- */

static int bench_program(struct ocl_dev *od, char *msg, size_t len)
{
    if (od->bench_program) return DROPBLOCK_OK;
    int rc = build_source(od, db_opencl_bench_source, db_opencl_bench_source_len, "bench.cl", &od->bench_program, msg,
                          len);
    for (int i = 0; i < BK_N && !rc; i++) {
        cl_int e;
        od->bk[i] = clCreateKernel(od->bench_program, bench_names[i], &e);
        if (e != CL_SUCCESS) { od->bk[i] = NULL; rc = cl_fail(msg, len, bench_names[i], e); }
    }
    return rc;
}

/* torchvision's method, kernel by kernel (shaders/db_baseline.h); bufs: prm, noise, padded,
 * pooled, part, x, y */
static cl_int enqueue_baseline(struct ocl_dev *od, const cl_mem *bufs, const uint32_t *blp, uint64_t nwords)
{
    const cl_uint planes = blp[BLP_PLANES], n = blp[BLP_NUMEL], nnoise = planes * blp[BLP_HN] * blp[BLP_WN];
    const cl_uint npad = planes * (blp[BLP_HN] + blp[BLP_BS] - 1) * (blp[BLP_WN] + blp[BLP_BS] - 1);
    const cl_uint counts[] = {(nnoise + 3) / 4, npad, n, n};
    const int ks[] = {BK_BERNOULLI, BK_PAD, BK_POOL, BK_ONE_MINUS};
    const size_t wg = od->wg_small;
    cl_int e = CL_SUCCESS;
    for (int i = 0; i < 4 && e == CL_SUCCESS; i++) {
        e = set_args(od->bk[ks[i]], 7, bufs);
        if (e == CL_SUCCESS) e = clSetKernelArg(od->bk[ks[i]], 7, sizeof(cl_uint), &counts[i]);
        if (e == CL_SUCCESS) e = launch_round(od, od->bk[ks[i]], wg, counts[i]);
    }
    /* noise.sum() in levels of BL_SEG, then the scale */
    cl_uint nin = (n + BL_SEG - 1) / BL_SEG, src = 1, dst;
    if (e == CL_SUCCESS) e = set_args(od->bk[BK_SUM_NOISE], 7, bufs);
    if (e == CL_SUCCESS) e = clSetKernelArg(od->bk[BK_SUM_NOISE], 7, sizeof nin, &nin);
    /* level one writes part[1 ..] (part[0] is the scale) */
    if (e == CL_SUCCESS) e = launch_round(od, od->bk[BK_SUM_NOISE], wg, nin);
    while (e == CL_SUCCESS && nin > BL_SEG) {
        cl_uint nout = (nin + BL_SEG - 1) / BL_SEG;
        dst = src + nin;
        e = set_args(od->bk[BK_SUM_PART], 7, bufs);
        cl_uint a[4] = {nout, src, nin, dst};
        for (int i = 0; i < 4 && e == CL_SUCCESS; i++) e = clSetKernelArg(od->bk[BK_SUM_PART], 7 + i, sizeof(cl_uint), &a[i]);
        if (e == CL_SUCCESS) e = launch_round(od, od->bk[BK_SUM_PART], wg, nout);
        src = dst;
        nin = nout;
    }
    if (e == CL_SUCCESS) e = set_args(od->bk[BK_SCALE], 7, bufs);
    if (e == CL_SUCCESS) e = clSetKernelArg(od->bk[BK_SCALE], 7, sizeof src, &src);
    if (e == CL_SUCCESS) e = clSetKernelArg(od->bk[BK_SCALE], 8, sizeof nin, &nin);
    size_t one = 1;
    if (e == CL_SUCCESS) e = clEnqueueNDRangeKernel(od->queue, od->bk[BK_SCALE], 1, NULL, &one, &one, 0, NULL, NULL);
    cl_uint nw = (cl_uint)nwords;
    if (e == CL_SUCCESS) e = set_args(od->bk[BK_MUL], 7, bufs);
    if (e == CL_SUCCESS) e = clSetKernelArg(od->bk[BK_MUL], 7, sizeof nw, &nw);
    if (e == CL_SUCCESS) e = launch_round(od, od->bk[BK_MUL], wg, nw);
    return e;
}

/* One measure of ocl_bench on the resident x and y. */
static int bench_one(struct ocl_dev *od, const struct db_plan *pl, int what, cl_mem x, cl_mem y, const cl_mem *bl,
                     const uint32_t *blp, const uint32_t *prm, uint64_t nwords, char *msg, size_t len)
{
    int rc = DROPBLOCK_OK;
    if (what == DB_BENCH_OP || what == DB_BENCH_BACKWARD) {
        dropblock_result res;
        memset(&res, 0, sizeof res);
        struct db_plan bw = *pl; /* backward applies the same mask and scale to dy: the same passes */
        bw.p.mode = DROPBLOCK_BACKWARD;
        return ocl_job(od, what == DB_BENCH_OP ? pl : &bw, NULL, NULL, NULL, x, y, &res, msg, len);
    }
    if (what == DB_BENCH_COPY) {
        uint64_t vwords = (uint64_t)od->vw * od->vpw, groups = nwords / vwords;
        cl_mem a[2] = {x, y};
        if ((rc = cl_check(set_args(od->bk[BK_COPY], 2, a), "clSetKernelArg(bl_copy)", msg, len))) goto done;
        if ((rc = cl_check(launch_exact(od, od->bk[BK_COPY], od->wg_apply, groups), "clEnqueueNDRangeKernel(bl_copy)",
                           msg, len)))
            goto done;
        if (groups * vwords < nwords) {
            cl_uint first = (cl_uint)(groups * vwords), n = (cl_uint)nwords;
            if ((rc = cl_check(set_args(od->bk[BK_COPY_TAIL], 2, a), "clSetKernelArg(bl_copy_tail)", msg, len)))
                goto done;
            if ((rc = cl_check(clSetKernelArg(od->bk[BK_COPY_TAIL], 2, sizeof first, &first),
                               "clSetKernelArg(bl_copy_tail)", msg, len)))
                goto done;
            if ((rc = cl_check(clSetKernelArg(od->bk[BK_COPY_TAIL], 3, sizeof n, &n), "clSetKernelArg(bl_copy_tail)",
                               msg, len)))
                goto done;
            if ((rc = cl_check(launch_round(od, od->bk[BK_COPY_TAIL], od->wg_small, n - first),
                               "clEnqueueNDRangeKernel(bl_copy_tail)", msg, len)))
                goto done;
        }
    } else if (what == DB_BENCH_MASK) {
        if ((rc = cl_check(enqueue_mask(od, prm, od->masks[0].m), "enqueue(db_mask)", msg, len))) goto done;
    } else {
        cl_mem bufs[7] = {bl[0], bl[1], bl[2], bl[3], bl[4], x, y};
        if ((rc = cl_check(enqueue_baseline(od, bufs, blp, nwords), "enqueue(baseline)", msg, len))) goto done;
    }
    if ((rc = cl_check(clFinish(od->queue), "clFinish", msg, len))) goto done;
done:
    return rc;
}

/* DB_BENCH_XFER: the host x to the device buffer x and the same bytes back to the host yh, as a
 * job from ordinary (unpinned) host memory that cannot be used in place copies them; blocking. */
static int bench_xfer(struct ocl_dev *od, cl_mem x, const void *xh, void *yh, uint64_t bytes, char *msg, size_t len)
{
    int rc = DROPBLOCK_OK;
    if ((rc = cl_check(clEnqueueWriteBuffer(od->queue, x, CL_FALSE, 0, (size_t)bytes, xh, 0, NULL, NULL),
                       "clEnqueueWriteBuffer(xfer)", msg, len)))
        goto done;
    if ((rc = cl_check(clEnqueueReadBuffer(od->queue, x, CL_TRUE, 0, (size_t)bytes, yh, 0, NULL, NULL),
                       "clEnqueueReadBuffer(xfer)", msg, len)))
        goto done;
done:
    return rc;
}

static int ocl_bench(struct db_device *dev, const struct db_plan *pl, const void *xh, unsigned whats, int warmup,
                     int reps, double *us, char *msg, size_t len)
{
    struct ocl_dev *od = dev->priv;
    const uint64_t bytes = pl->numel * dropblock_dtype_size(pl->p.dtype), nwords = (bytes + 3) / 4;
    int rc = bench_program(od, msg, len);
    if (rc) return rc;
    if (bytes > od->max_buffer || pl->numel >= (UINT64_C(1) << 32)) {
        db_msg(msg, len, "the benchmark takes tensors of one device buffer (%llu bytes)", (unsigned long long)od->max_buffer);
        return DROPBLOCK_EINVAL;
    }
    struct ocl_buf x = {0}, y = {0}, bl[5] = {{0}};
    cl_mem blm[5] = {NULL};
    void *yh = NULL; /* DB_BENCH_XFER's host y */
    if ((whats & (1u << DB_BENCH_XFER)) && !(yh = malloc((size_t)bytes))) {
        db_msg(msg, len, "out of host memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    uint32_t blp[BLP_COUNT] = {0}, prm[DBP_COUNT];
    struct job j;
    struct db_chunk ch;
    if ((rc = cl_check(ensure_buf(od, &x, nwords * 4 + 64), "clCreateBuffer(x)", msg, len))) goto done;
    if ((rc = cl_check(ensure_buf(od, &y, nwords * 4 + 64), "clCreateBuffer(y)", msg, len))) goto done;
    if ((rc = cl_check(clEnqueueWriteBuffer(od->queue, x.m, CL_TRUE, 0, (size_t)bytes, xh, 0, NULL, NULL),
                       "clEnqueueWriteBuffer(x)", msg, len)))
        goto done;
    if ((rc = plan_job(od, pl, &j, msg, len))) goto done;
    chunk_of(&j, 0, &ch);
    db_kernel_params(pl, &ch, &j.tu, prm);
    if ((rc = cl_check(ensure_buf(od, &od->prm, DBP_COUNT * 4), "clCreateBuffer(params)", msg, len))) goto done;
    if ((rc = cl_check(ensure_buf(od, &od->kept, j.max_samp * 8 + 8), "clCreateBuffer(kept)", msg, len))) goto done;
    if ((rc = cl_check(ensure_masks(od, 1, j.max_words), "clCreateBuffer(mask)", msg, len))) goto done;
    if (whats & (1u << DB_BENCH_BASELINE)) {
        uint64_t npad, nparts;
        if (db_baseline_params(pl, blp, &npad, &nparts, msg, len)) {
            whats &= ~(1u << DB_BENCH_BASELINE);
            for (int r = 0; r < reps; r++) us[DB_BENCH_BASELINE * reps + r] = -1;
        } else {
            const uint64_t sizes[5] = {BLP_COUNT * 4, pl->numel * 4, npad * 4, pl->numel * 4, nparts * 4};
            for (int i = 0; i < 5; i++) {
                if ((rc = cl_check(ensure_buf(od, &bl[i], sizes[i]), "clCreateBuffer(baseline)", msg, len))) goto done;
                blm[i] = bl[i].m;
            }
            if ((rc = cl_check(clEnqueueWriteBuffer(od->queue, bl[0].m, CL_TRUE, 0, sizeof blp, blp, 0, NULL, NULL),
                               "clEnqueueWriteBuffer(baseline params)", msg, len)))
                goto done;
        }
    }
    for (int r = -warmup; r < reps && !rc; r++)
        for (int w = 0; w < DB_BENCH_N && !rc; w++) {
            if (!(whats & (1u << w))) continue;
            double t0 = db_now_us_f();
            rc = w == DB_BENCH_XFER ? bench_xfer(od, x.m, xh, yh, bytes, msg, len)
                                    : bench_one(od, pl, w, x.m, y.m, blm, blp, prm, nwords, msg, len);
            if (r >= 0) us[w * reps + r] = db_now_us_f() - t0;
        }
done:
    clFinish(od->queue);
    free(yh);
    release_buf(&x);
    release_buf(&y);
    for (int i = 0; i < 5; i++) release_buf(&bl[i]);
    return rc;
}

static void ocl_describe(const struct db_device *dev, char *buf, size_t len)
{
    const struct ocl_dev *od = dev->priv;
    /* staged: jobs over one slice go through the pinned slots overlapped, smaller ones by plain copies */
    /* warmed: launch shapes built at setup; cold: shapes a job launched first (see "warm-up") */
    snprintf(buf, len, "memory=%s f16=%s subnormals=%s mask=%s vector=%ux%u work-groups=%zu/%zu/%zu warmed=%d cold=%llu",
             od->zero_copy ? "zero-copy" : "staged", od->hwhalf ? "hardware" : "integer",
             od->hwexact ? "hardware" : "fixup", od->cpu ? "cpu-batches" : "gpu-blocks", od->vw, od->vpw, od->wg_mask,
             od->wg_small, od->wg_apply, od->warm ? od->nvariants : 0, (unsigned long long)od->cold);
}

const struct backend_ops db_backend_opencl = {"opencl", ocl_enumerate, ocl_prepare, ocl_run, ocl_bench, ocl_release,
                                              ocl_describe};
