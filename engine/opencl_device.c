/* opencl_device.c: the OpenCL backend's devices (backend_opencl.h): error names and codes, device
 * queries and enumerate, the kernels' shape, build and work-group sizes, the buffers a device
 * keeps, launches (each recording its shape, see "warm-up"), the probes, the warm-up, teardown
 * and release. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_opencl.h"
#include "fp.h"
#include "msg.h"

#ifndef CL_PLATFORM_NOT_FOUND_KHR
#define CL_PLATFORM_NOT_FOUND_KHR -1001
#endif
#ifndef CL_DEVICE_UUID_KHR
#define CL_DEVICE_UUID_KHR 0x106A
#endif

/* fast apply kernels by [dtype][per-sample scale][fixup]; f16 needs no fixup */
static const char *const apply_names[3][2][2] = {
    {{"db_apply_f32", "db_apply_f32_x"}, {"db_apply_f32_s", "db_apply_f32_sx"}},
    {{"db_apply_f16", NULL}, {"db_apply_f16_s", NULL}},
    {{"db_apply_bf16", "db_apply_bf16_x"}, {"db_apply_bf16_s", "db_apply_bf16_sx"}},
};
/* f16 through the device's conversions, by [per-sample scale]: where probe_half passes they
 * take the place of k_apply[DROPBLOCK_F16][s][0] (the integer kernels move here) */
static const char *const apply_half_names[2] = {"db_apply_f16h", "db_apply_f16h_s"};
static const char *const kernel_names[K_N] = {"db_mask",  "db_scale",      "db_apply_exact", "db_fixup",
                                              "db_probe", "db_probe_half", "db_scatter",     "db_count"};

static const char *cl_err_name(cl_int e)
{
    switch (e) {
/* clang-format off */
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
            /* clang-format on */
            default : return "unknown OpenCL error";
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

int ocl_fail(char *msg, size_t len, const char *what, cl_int e)
{
    db_msg(msg, len, "%s: %s (%d)", what, cl_err_name(e), (int)e);
    return cl_code(e);
}

/* 0 when e is CL_SUCCESS, else ocl_fail's code with what and e in msg: the callers write
 * "if ((rc = ocl_check(clX(...), "clX", msg, len))) goto done;", their cleanup after done. */
int ocl_check(cl_int e, const char *what, char *msg, size_t len)
{
    return e == CL_SUCCESS ? DROPBLOCK_OK : ocl_fail(msg, len, what, e);
}

/* ---- device queries ------------------------------------------------------------------- */

/* A string property, malloc'd (NULL when the query fails or memory runs out). */
char *ocl_dev_str(cl_device_id d, cl_device_info what)
{
    size_t n = 0;
    if (clGetDeviceInfo(d, what, 0, NULL, &n) != CL_SUCCESS) return NULL;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (clGetDeviceInfo(d, what, n, s, NULL) != CL_SUCCESS) {
        free(s);
        return NULL;
    }
    s[n] = 0;
    return s;
}

char *ocl_plat_str(cl_platform_id p, cl_platform_info what)
{
    size_t n = 0;
    if (clGetPlatformInfo(p, what, 0, NULL, &n) != CL_SUCCESS) return NULL;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (clGetPlatformInfo(p, what, n, s, NULL) != CL_SUCCESS) {
        free(s);
        return NULL;
    }
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

static void fill_info(struct db_device *out, cl_device_id d, const struct db_knobs *knobs)
{
    dropblock_device_info *in = &out->info;
    snprintf(in->api, sizeof in->api, "opencl");
    char *s = ocl_dev_str(d, CL_DEVICE_VENDOR);
    copy_trimmed(in->vendor, sizeof in->vendor, s);
    free(s);
    s = ocl_dev_str(d, CL_DEVICE_NAME);
    copy_trimmed(in->name, sizeof in->name, s);
    free(s);
    s = ocl_dev_str(d, CL_DRIVER_VERSION);
    copy_trimmed(in->driver, sizeof in->driver, s);
    free(s);
    s = ocl_dev_str(d, CL_DEVICE_EXTENSIONS);
    unsigned char u[16];
    if (has_ext(s, "cl_khr_device_uuid") && clGetDeviceInfo(d, CL_DEVICE_UUID_KHR, sizeof u, u, NULL) == CL_SUCCESS)
        snprintf(in->uuid, sizeof in->uuid, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
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
    uint64_t cap = knobs->opencl_max_buffer;
    if (cap && cap < in->max_buffer) in->max_buffer = cap;
    v = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof v, &v, NULL) == CL_SUCCESS) in->global_mem = v;
}

/* Why a platform listed no device, where it can be told: PoCL lists none when it cannot write
 * its kernel cache ($POCL_CACHE_DIR, else $XDG_CACHE_HOME/pocl or ~/.cache/pocl), which a
 * read-only root or home gives; anything else, just that it is empty. */
static void empty_platform(cl_platform_id p, char *msg, size_t len)
{
    char name[128] = "";
    clGetPlatformInfo(p, CL_PLATFORM_NAME, sizeof name - 1, name, NULL);
    if (!strstr(name, "Portable Computing Language")) {
        db_msg(msg, len, "platform \"%s\" lists no device", name);
        return;
    }
    char dir[512];
    const char *env = getenv("POCL_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (env && *env) snprintf(dir, sizeof dir, "%s", env);
    else if (xdg && *xdg) snprintf(dir, sizeof dir, "%s/pocl", xdg);
    else snprintf(dir, sizeof dir, "%s/.cache/pocl", home ? home : "");
    /* the nearest folder that exists must be writable for PoCL to make (or use) it */
    char probe[512];
    snprintf(probe, sizeof probe, "%s", dir);
    while (access(probe, F_OK) != 0) {
        char *slash = strrchr(probe, '/');
        if (!slash || slash == probe) {
            snprintf(probe, sizeof probe, "/");
            break;
        }
        *slash = 0;
    }
    /* writable: a folder can be made in it (access(2) says yes to root even on /proc) */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s/.dropblock-probe-XXXXXX", strcmp(probe, "/") ? probe : "");
    const int writable = mkdtemp(tmp) != NULL;
    const int err = errno;
    if (writable) rmdir(tmp);
    char why[160];
    if (writable) snprintf(why, sizeof why, "%s is writable, so something else is wrong", probe);
    else snprintf(why, sizeof why, "no folder can be made in %s (%s)", probe, strerror(err));
    db_msg(msg, len,
           "PoCL lists no device: it needs a writable kernel cache, %s (%s), and %s; set POCL_CACHE_DIR to a "
           "writable folder",
           dir,
           env && *env   ? "POCL_CACHE_DIR"
           : xdg && *xdg ? "$XDG_CACHE_HOME/pocl"
                         : "~/.cache/pocl",
           why);
}

int ocl_enumerate(const struct db_backend_config *cfg, struct db_device *out, size_t cap, char *msg, size_t len)
{
    cl_uint np = 0;
    cl_int e = clGetPlatformIDs(0, NULL, &np);
    /* no ICD or no platform is "no devices", not a failure */
    if (e == CL_PLATFORM_NOT_FOUND_KHR || (e == CL_SUCCESS && np == 0)) return 0;
    if (e != CL_SUCCESS) return ocl_fail(msg, len, "clGetPlatformIDs", e);
    cl_platform_id *plats = calloc(np, sizeof *plats);
    if (!plats) {
        db_msg(msg, len, "out of memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    if ((e = clGetPlatformIDs(np, plats, NULL)) != CL_SUCCESS) {
        free(plats);
        return ocl_fail(msg, len, "clGetPlatformIDs", e);
    }
    size_t n = 0;
    int rc = 0;
    for (cl_uint p = 0; p < np && n < cap && !rc; p++) {
        cl_uint nd = 0;
        e = clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd);
        if (e != CL_SUCCESS || nd == 0) { /* CL_DEVICE_NOT_FOUND: an empty platform (said if none has any) */
            empty_platform(plats[p], msg, len);
            continue;
        }
        cl_device_id *devs = calloc(nd, sizeof *devs);
        if (!devs) {
            db_msg(msg, len, "out of memory");
            rc = DROPBLOCK_EEXHAUSTED;
            break;
        }
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, devs, NULL) != CL_SUCCESS) {
            free(devs);
            continue;
        }
        for (cl_uint i = 0; i < nd && n < cap; i++) {
            struct ocl_dev *od = calloc(1, sizeof *od);
            if (!od) {
                db_msg(msg, len, "out of memory");
                rc = DROPBLOCK_EEXHAUSTED;
                break;
            }
            memset(&out[n], 0, sizeof out[n]);
            od->platform = plats[p];
            od->device = devs[i];
            od->knobs = cfg->knobs;
            fill_info(&out[n], devs[i], cfg->knobs);
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

/* ---- prepare / release ------------------------------------------------------------------- */

void ocl_drop_program(struct ocl_dev *od)
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
void ocl_choose_shape(struct ocl_dev *od)
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
    if (od->knobs->opencl_shape_gpu) od->cpu = 0;
    od->zero_copy = od->cpu && !od->knobs->opencl_copy;
    if (od->cpu) {
        od->vw = nat >= 16 ? 16 : nat >= 8 ? 8 : 4;
        od->vpw = 32 / od->vw;
        od->tile_rows = UINT32_MAX;
        od->cand_budget = 0;
        od->item_cands = 4096;
        od->scatter = 0; /* whole planes already make each block about once, in CPU batches */
    } else {
        od->vw = 4;
        od->vpw = 1;
        od->tile_rows = 8;
        od->cand_budget = 4096;
        od->item_cands = 256;
        od->scatter = 16;
    }
    snprintf(od->build_options, sizeof od->build_options, "-DDB_LANG_CL -DDB_VW=%u -DDB_VPW=%u%s", od->vw, od->vpw,
             od->cpu ? " -DDB_VLOAD -DDB_CPU" : " -DDB_APPLY_ALL");
}

static void choose_work_groups(struct ocl_dev *od)
{
    size_t mult = 0;
    cl_kernel fast = od->k_apply[0][0][0];
    if (clGetKernelWorkGroupInfo(fast, od->device, CL_KERNEL_PREFERRED_WORK_GROUP_SIZE_MULTIPLE, sizeof mult, &mult,
                                 NULL) != CL_SUCCESS ||
        mult == 0)
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
int ocl_make_kernels(struct ocl_dev *od, char *msg, size_t len)
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
            int rc = ocl_fail(msg, len, what, e);
            ocl_drop_program(od);
            return rc;
        }
    }
    choose_work_groups(od);
    return DROPBLOCK_OK;
}

/* Builds src into *prog; on failure the build log goes into msg. */
int ocl_build_source(struct ocl_dev *od, const char *src, size_t slen, const char *name, cl_program *prog, char *msg,
                     size_t len)
{
    cl_int e;
    *prog = clCreateProgramWithSource(od->ctx, 1, &src, &slen, &e);
    if (e != CL_SUCCESS) {
        *prog = NULL;
        return ocl_fail(msg, len, "clCreateProgramWithSource", e);
    }
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

int ocl_build_from_source(struct ocl_dev *od, char *msg, size_t len)
{
    int rc = ocl_build_source(od, db_opencl_source, db_opencl_source_len, "dropblock.cl", &od->program, msg, len);
    return rc ? rc : ocl_make_kernels(od, msg, len);
}

void ocl_release_buf(struct ocl_buf *b)
{
    if (b->m) clReleaseMemObject(b->m);
    b->m = NULL;
    b->size = 0;
}

void ocl_teardown(struct ocl_dev *od)
{
    ocl_release_staging(od);
    ocl_drop_program(od);
    for (int i = 0; i < BK_N; i++)
        if (od->bk[i]) clReleaseKernel(od->bk[i]);
    if (od->bench_program) clReleaseProgram(od->bench_program);
    memset(od->bk, 0, sizeof od->bk);
    od->bench_program = NULL;
    struct ocl_buf *bufs[] = {&od->kept, &od->scales, &od->data, &od->fixup};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) ocl_release_buf(bufs[i]);
    for (uint64_t i = 0; i < od->nmasks; i++) ocl_release_buf(&od->masks[i]);
    free(od->masks);
    od->masks = NULL;
    od->nmasks = 0;
    for (uint64_t i = 0; i < od->nprms; i++) ocl_release_buf(&od->prms[i]);
    free(od->prms);
    od->prms = NULL;
    od->nprms = 0;
    if (od->queue) clReleaseCommandQueue(od->queue);
    if (od->ctx) clReleaseContext(od->ctx);
    od->queue = NULL;
    od->ctx = NULL;
}

/* A device buffer of at least bytes (rounded up to 64), kept from an earlier job when large enough. */
cl_int ocl_ensure_buf(struct ocl_dev *od, struct ocl_buf *b, uint64_t bytes)
{
    bytes = bytes < 64 ? 64 : (bytes + 63) & ~UINT64_C(63);
    if (b->m && b->size >= bytes) return CL_SUCCESS;
    ocl_release_buf(b);
    if (bytes > SIZE_MAX) return CL_INVALID_BUFFER_SIZE;
    cl_int e;
    b->m = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE, (size_t)bytes, NULL, &e);
    if (e != CL_SUCCESS) {
        b->m = NULL;
        return e;
    }
    b->size = bytes;
    return CL_SUCCESS;
}

cl_int ocl_set_args(cl_kernel k, int n, const cl_mem *args)
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
 * (ocl_warm_up), on scratch buffers; every launch goes through ocl_enqueue_nd, which records its shape,
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
cl_int ocl_enqueue_nd(struct ocl_dev *od, cl_kernel k, size_t off, size_t global, size_t local)
{
    note_shape(od, k, off, global, local);
    return clEnqueueNDRangeKernel(od->queue, k, 1, off ? &off : NULL, &global, &local, 0, NULL, NULL);
}

/* n work items of k (arguments set), in groups of wg with a rounded-up global size */
cl_int ocl_launch_round(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t n)
{
    if (n == 0) return CL_SUCCESS;
    return ocl_enqueue_nd(od, k, 0, (size_t)((n + wg - 1) / wg * wg), wg);
}

/* exactly n work items of k, for kernels without a bounds check: whole groups of wg, then the
 * rest at an offset in groups of one (a group of the rest's own size would make drivers that
 * specialise on the group size, PoCL among them, compile a kernel for every remainder) */
cl_int ocl_launch_exact(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t n)
{
    size_t whole = (size_t)(n / wg * wg), rest = (size_t)(n - whole);
    cl_int e = CL_SUCCESS;
    if (whole) e = ocl_enqueue_nd(od, k, 0, whole, wg);
    if (e == CL_SUCCESS && rest) e = ocl_enqueue_nd(od, k, whole, rest, 1);
    return e;
}

/* Whether the device's fast apply keeps subnormal f32 products exact: db_probe on
 * db_probe_subnormals' inputs, against core/fp.h. */
int ocl_probe_exact(struct ocl_dev *od)
{
    enum { NP = 256 };
    uint32_t x[NP], s[NP], y[NP];
    db_probe_subnormals(x, s, NP);
    cl_int e;
    cl_mem b[3];
    for (int i = 0; i < 3; i++) {
        b[i] = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE | (i < 2 ? CL_MEM_COPY_HOST_PTR : 0), sizeof x,
                              i == 0   ? (void *)x
                              : i == 1 ? (void *)s
                                       : NULL,
                              &e);
        if (e != CL_SUCCESS) {
            for (int j = 0; j < i; j++) clReleaseMemObject(b[j]);
            return 0;
        }
    }
    size_t global = NP / od->vw;
    int ok = ocl_set_args(od->k[K_PROBE], 3, b) == CL_SUCCESS &&
             clEnqueueNDRangeKernel(od->queue, od->k[K_PROBE], 1, NULL, &global, NULL, 0, NULL, NULL) == CL_SUCCESS &&
             clEnqueueReadBuffer(od->queue, b[2], CL_TRUE, 0, sizeof y, y, 0, NULL, NULL) == CL_SUCCESS;
    for (int i = 0; i < NP && ok; i++) ok = y[i] == db_mul32(x[i], s[i]);
    for (int i = 0; i < 3; i++) clReleaseMemObject(b[i]);
    return ok && !od->knobs->opencl_fixup;
}

/* Whether the fast f16 apply through the device's conversions (db_hwiden, db_happly,
 * db_hnarrow: vload_half, two IEEE products, vstore_half_rte) gives core/fp.h's bits on this
 * device: the widening of all 65536 f16 words, and the apply (scale 1) and narrowing of every
 * finite f16 value's float32, the midpoints to the next one (the rounding ties, up to the
 * overflow bound 0x477FF000) and their neighbours, with both signs, and of infinities, the
 * quiet NaN, huge values and tiny ones, kept and dropped. Every device runs it, CPUs and GPUs
 * alike (on both the integer conversions make the f16 apply ALU-bound); where it fails, or with
 * DROPBLOCK_OPENCL_FIXUP=1, the integer kernels stay. */
int ocl_probe_half(struct ocl_dev *od)
{
    enum { NH = 1 << 17, NF = 1 << 18 }; /* u32 words of halves, float32 values */
    if (od->knobs->opencl_fixup) return 0;
    uint32_t *h = malloc(NH * 4), *f = malloc(NF * 4), *keep = malloc(NF * 4), *fw = malloc(NF * 4),
             *hn = malloc(NH * 4);
    cl_mem b[5] = {NULL, NULL, NULL, NULL, NULL};
    int ok = h && f && keep && fw && hn;
    for (uint32_t i = 0; ok && i < NH; i++) h[i] = (2 * i) % 65536 | ((2 * i + 1) % 65536) << 16;
    if (ok) db_probe_half_cases(f, keep, NF);
    cl_int e = CL_SUCCESS;
    void *src[5] = {h, f, keep, NULL, NULL};
    size_t bytes[5] = {NH * 4, NF * 4, NF * 4, NF * 4, NH * 4};
    for (int i = 0; ok && i < 5; i++) {
        b[i] = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE | (src[i] ? CL_MEM_COPY_HOST_PTR : 0), bytes[i], src[i], &e);
        ok = e == CL_SUCCESS;
    }
    size_t global = NH / od->vw;
    ok = ok && ocl_set_args(od->k[K_PROBE_HALF], 5, b) == CL_SUCCESS &&
         clEnqueueNDRangeKernel(od->queue, od->k[K_PROBE_HALF], 1, NULL, &global, NULL, 0, NULL, NULL) == CL_SUCCESS &&
         clEnqueueReadBuffer(od->queue, b[3], CL_TRUE, 0, NF * 4, fw, 0, NULL, NULL) == CL_SUCCESS &&
         clEnqueueReadBuffer(od->queue, b[4], CL_TRUE, 0, NH * 4, hn, 0, NULL, NULL) == CL_SUCCESS;
    /* vector i of h holds halves 2 vw i ..; db_hwiden puts them in order into vectors 2i, 2i+1 */
    for (uint32_t i = 0; ok && i < NF; i++) ok = fw[i] == db_ref_f16_to_f32((uint16_t)(i % 65536));
    for (uint32_t i = 0; ok && i < NF; i++) {
        uint32_t y = db_mul32(f[i], 0x3F800000u);
        if (!keep[i]) y = db_mul32(y, 0);
        ok = (uint16_t)(hn[i / 2] >> (16 * (i % 2))) == db_ref_f32_to_f16(y);
    }
    for (int i = 0; i < 5; i++)
        if (b[i]) clReleaseMemObject(b[i]);
    free(h);
    free(f);
    free(keep);
    free(fw);
    free(hn);
    return ok && !od->knobs->opencl_fixup;
}

/* Launches every kernel a job can use, in every shape a job can launch it with (see
 * "warm-up"), on scratch buffers: with these parameter words the mask, scale, exact and fixup
 * kernels return at once, and the fast apply kernels run over a scratch tensor, one scale for
 * all (CPU builds: no bounds check; GPU builds, -DDB_APPLY_ALL: no groups and no elements, so
 * they return at once; a job launches them in ocl_launch_round's shapes, warmed below). Then
 * waits, so that the driver has built them all. 0, or an OpenCL error (the device is then not
 * used). */
cl_int ocl_warm_up(struct ocl_dev *od)
{
    const size_t wa = od->wg_apply, big_a = (SMALL_GRID + wa - 1) / wa * wa;
    const size_t item = (size_t)od->vw * od->vpw * 4; /* bytes a fast apply work item takes */
    uint32_t prm[DBP_COUNT];
    memset(prm, 0, sizeof prm);
    prm[DBP_TPW] = 1;                     /* no tiles: the mask pass does nothing */
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
    /* the mask pass and the scales: ocl_launch_round's shapes (the scales never pass SMALL_GRID:
     * DB_DEVICE_SCALE_MAX_SAMPLES) */
    cl_mem am[3] = {p, m, sc}, as[3] = {p, sc, sc};
    if (e == CL_SUCCESS) e = ocl_set_args(od->k[K_MASK], 3, am);
    if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, od->k[K_MASK], 0, od->wg_mask, od->wg_mask);
    if (e == CL_SUCCESS)
        e = ocl_enqueue_nd(od, od->k[K_MASK], 0, (SMALL_GRID + od->wg_mask - 1) / od->wg_mask * od->wg_mask,
                           od->wg_mask);
    if (e == CL_SUCCESS) e = ocl_set_args(od->k[K_SCALE], 3, as);
    if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, od->k[K_SCALE], 0, od->wg_small, od->wg_small);
    /* the scatter and count passes (GPU tunings): no candidate rows and no words, so they return */
    cl_mem ac[4] = {p, m, sc, sc};
    for (int k = K_SCATTER; k <= K_COUNT && od->scatter && e == CL_SUCCESS; k++) {
        e = ocl_set_args(od->k[k], k == K_SCATTER ? 2 : 4, ac);
        if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, od->k[k], 0, od->wg_mask, od->wg_mask);
        if (e == CL_SUCCESS)
            e = ocl_enqueue_nd(od, od->k[k], 0, (SMALL_GRID + od->wg_mask - 1) / od->wg_mask * od->wg_mask,
                               od->wg_mask);
    }
    /* the exact tail and the fixup: ocl_launch_round's shapes, and launch_range's where the staged
     * path may run */
    const size_t ws = od->wg_small, big_s = (SMALL_GRID + ws - 1) / ws * ws;
    for (int f = 0; f < 2 && e == CL_SUCCESS; f++) {
        cl_kernel k = f ? od->k[K_FIXUP] : od->k[K_EXACT];
        if (f && od->hwexact) break;
        cl_mem a[5] = {p, m, sc, x, f ? m : x};
        e = ocl_set_args(k, 5, a);
        if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, 0, ws, ws);
        if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, 0, big_s, ws);
        if (!od->zero_copy) {
            if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, ws, ws, ws);
            if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, ws, big_s, ws);
            if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, 0, 1, 1); /* a range's rest alone, from 0 or not */
            if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, 1, 1, 1);
        }
    }
    /* the fast apply of each dtype and scale kind, with or without the fixup as this device
     * runs it: ocl_launch_exact's shapes (whole groups, and the rest in groups of one at an offset
     * or alone), and launch_range's */
    for (int i = 0; i < 6 && e == CL_SUCCESS; i++) {
        int dt = i / 2, ps = i % 2, fix = !od->hwexact && dt != DROPBLOCK_F16;
        cl_kernel k = od->k_apply[dt][ps][fix];
        cl_mem a[6] = {p, m, sc, x, x, m};
        e = ocl_set_args(k, 6, a);
        if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, 0, wa, wa);
        if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, 0, big_a, wa);
        if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, 0, 1, 1);
        if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, 1, 1, 1);
        if (!od->zero_copy) {
            if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, wa, wa, wa);
            if (e == CL_SUCCESS) e = ocl_enqueue_nd(od, k, wa, big_a, wa);
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

void ocl_release(struct db_device *dev)
{
    struct ocl_dev *od = dev->priv;
    if (!od) return;
    if (od->queue) clFinish(od->queue);
    ocl_teardown(od);
    free(od);
    dev->priv = NULL;
}
