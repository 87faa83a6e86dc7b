/* backend_opencl.c: the OpenCL backend. Every OpenCL call of the project lives in this file.
 *
 * enumerate lists every device of every platform; prepare builds shaders/dropblock.cl once per
 * device (through an on-disk binary cache, see "program cache" below); run follows the host flow
 * of tests/test_passes.c: per chunk the mask and count passes, then the scales on the host, then
 * per chunk the apply pass, with each chunk's mask kept on the device in between.
 *
 * Testing knob: DROPBLOCK_OPENCL_MAX_BUFFER=<bytes> caps every device's max_buffer (reported
 * in the device info and used for chunking), so the chunked path can be exercised on small
 * tensors, e.g. DROPBLOCK_OPENCL_MAX_BUFFER=4096. */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <CL/cl_ext.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "kernel_params.h"

#ifndef CL_PLATFORM_NOT_FOUND_KHR
#define CL_PLATFORM_NOT_FOUND_KHR -1001
#endif
#ifndef CL_DEVICE_UUID_KHR
#define CL_DEVICE_UUID_KHR 0x106A
#endif

extern const char db_opencl_source[];
extern const size_t db_opencl_source_len;

/* Never fast-math: the kernels rely on IEEE float32 multiplication (db_math.h). */
static const char build_options[] = "-DDB_LANG_CL";

#define WG_MASK 64   /* mask rows are heavy work items: small groups spread them out */
#define WG_APPLY 256

struct ocl_dev {
    cl_platform_id platform;
    cl_device_id device;
    uint64_t max_buffer; /* after the DROPBLOCK_OPENCL_MAX_BUFFER cap */
    cl_context ctx;
    cl_command_queue queue;
    cl_program program;
    cl_kernel k_mask, k_count, k_apply;
    size_t wg_mask, wg_count, wg_apply;
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

/* Out-of-memory style failures are the caller's resource problem, the rest are ours. */
static int cl_code(cl_int e)
{
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
 * One file per (source, build options, platform, device, driver) under cfg->cache_dir, named by
 * the 64-bit hash of that key. Layout: a 40-byte header (magic "DBOCLBIN", format version u32,
 * u32 0, key hash u64, binary length u64, FNV-1a-64 of the binary u64, host byte order), then
 * the binary. Written to a temporary file and renamed into place, so readers see a whole file
 * or none; on load everything is checked, and any failure means a rebuild from source. */

#define CACHE_MAGIC "DBOCLBIN"
#define CACHE_VERSION 1u
#define CACHE_HDR 40
#define CACHE_MAX_BINARY (UINT64_C(256) << 20)

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= UINT64_C(0x100000001b3); }
    return h;
}
#define FNV_INIT UINT64_C(0xcbf29ce484222325)

/* Hashes each part with its length so that no two different keys concatenate alike. */
static uint64_t fnv_part(uint64_t h, const char *s)
{
    uint64_t l = s ? strlen(s) : 0;
    h = fnv1a(h, &l, sizeof l);
    return s ? fnv1a(h, s, l) : h;
}

static uint64_t cache_key(struct ocl_dev *od)
{
    char *pv = plat_str(od->platform, CL_PLATFORM_VERSION);
    char *dn = dev_str(od->device, CL_DEVICE_NAME);
    char *dv = dev_str(od->device, CL_DEVICE_VERSION);
    char *drv = dev_str(od->device, CL_DRIVER_VERSION);
    uint64_t h = FNV_INIT;
    h = fnv1a(h, db_opencl_source, db_opencl_source_len);
    h = fnv_part(h, build_options);
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

/* mkdir -p with mode 0700 for the parts it creates. */
static int mkdir_p(const char *dir)
{
    char p[1024];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof p) return -1;
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] == '/' || p[i] == 0) {
            char c = p[i];
            p[i] = 0;
            if (mkdir(p, 0700) && errno != EEXIST) return -1;
            p[i] = c;
        }
    }
    struct stat st;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

static int read_full(int fd, void *buf, size_t n)
{
    char *b = buf;
    while (n) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        b += r; n -= (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
    const char *b = buf;
    while (n) {
        ssize_t r = write(fd, b, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        b += r; n -= (size_t)r;
    }
    return 0;
}

/* The cached binary for key, malloc'd, or NULL when missing or not exactly as written. */
static unsigned char *cache_load(const char *path, uint64_t key, size_t *blen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    unsigned char *bin = NULL;
    unsigned char h[CACHE_HDR];
    struct stat st;
    uint32_t ver;
    uint64_t k, l, sum;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || read_full(fd, h, sizeof h)) goto bad;
    memcpy(&ver, h + 8, 4);
    memcpy(&k, h + 16, 8);
    memcpy(&l, h + 24, 8);
    memcpy(&sum, h + 32, 8);
    if (memcmp(h, CACHE_MAGIC, 8) || ver != CACHE_VERSION || k != key || l == 0 || l > CACHE_MAX_BINARY ||
        (uint64_t)st.st_size != CACHE_HDR + l)
        goto bad;
    if (!(bin = malloc((size_t)l)) || read_full(fd, bin, (size_t)l) || fnv1a(FNV_INIT, bin, (size_t)l) != sum) goto bad;
    close(fd);
    *blen = (size_t)l;
    return bin;
bad:
    free(bin);
    close(fd);
    return NULL;
}

/* Best effort: a cache that cannot be written only costs a rebuild next time. */
static void cache_store(const char *dir, const char *path, uint64_t key, const unsigned char *bin, size_t blen)
{
    if (blen == 0 || blen > CACHE_MAX_BINARY || mkdir_p(dir)) return;
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s/.opencl-XXXXXX", dir);
    int fd = mkstemp(tmp);
    if (fd < 0) return;
    unsigned char h[CACHE_HDR] = {0};
    uint32_t ver = CACHE_VERSION;
    uint64_t l = blen, sum = fnv1a(FNV_INIT, bin, blen);
    memcpy(h, CACHE_MAGIC, 8);
    memcpy(h + 8, &ver, 4);
    memcpy(h + 16, &key, 8);
    memcpy(h + 24, &l, 8);
    memcpy(h + 32, &sum, 8);
    int ok = !write_full(fd, h, sizeof h) && !write_full(fd, bin, blen) && !fsync(fd);
    if (close(fd)) ok = 0;
    if (!ok || rename(tmp, path)) unlink(tmp);
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
    if (od->k_mask) clReleaseKernel(od->k_mask);
    if (od->k_count) clReleaseKernel(od->k_count);
    if (od->k_apply) clReleaseKernel(od->k_apply);
    if (od->program) clReleaseProgram(od->program);
    od->k_mask = od->k_count = od->k_apply = NULL;
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

/* Creates the kernels of od->program (built); on failure drops the program. */
static int make_kernels(struct ocl_dev *od, char *msg, size_t len)
{
    static const char *names[3] = {"db_mask", "db_count", "db_apply"};
    cl_kernel *ks[3] = {&od->k_mask, &od->k_count, &od->k_apply};
    for (int i = 0; i < 3; i++) {
        cl_int e;
        *ks[i] = clCreateKernel(od->program, names[i], &e);
        if (e != CL_SUCCESS) {
            *ks[i] = NULL;
            char what[64];
            snprintf(what, sizeof what, "clCreateKernel(%s)", names[i]);
            int rc = cl_fail(msg, len, what, e);
            drop_program(od);
            return rc;
        }
    }
    od->wg_mask = kernel_wg(od, od->k_mask, WG_MASK);
    od->wg_count = kernel_wg(od, od->k_count, WG_MASK);
    od->wg_apply = kernel_wg(od, od->k_apply, WG_APPLY);
    return DROPBLOCK_OK;
}

/* Tries a cached binary; 1 when it gave a built program with its kernels. */
static int load_cached(struct ocl_dev *od, const char *path, uint64_t key)
{
    size_t blen = 0;
    unsigned char *bin = cache_load(path, key, &blen);
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
    if (clBuildProgram(od->program, 1, &od->device, build_options, NULL, NULL) != CL_SUCCESS) {
        drop_program(od);
        return 0;
    }
    char ignored[8];
    return make_kernels(od, ignored, sizeof ignored) == DROPBLOCK_OK;
}

static int build_from_source(struct ocl_dev *od, char *msg, size_t len)
{
    cl_int e;
    const char *src = db_opencl_source;
    size_t slen = db_opencl_source_len;
    od->program = clCreateProgramWithSource(od->ctx, 1, &src, &slen, &e);
    if (e != CL_SUCCESS) { od->program = NULL; return cl_fail(msg, len, "clCreateProgramWithSource", e); }
    e = clBuildProgram(od->program, 1, &od->device, build_options, NULL, NULL);
    if (e != CL_SUCCESS) {
        size_t ln = 0;
        char *log = NULL;
        if (clGetProgramBuildInfo(od->program, od->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &ln) == CL_SUCCESS &&
            (log = malloc(ln + 1)) &&
            clGetProgramBuildInfo(od->program, od->device, CL_PROGRAM_BUILD_LOG, ln, log, NULL) == CL_SUCCESS)
            log[ln] = 0;
        else if (log) log[0] = 0;
        db_msg(msg, len, "clBuildProgram(dropblock.cl): %s (%d): %s", cl_err_name(e), (int)e,
               log && *log ? log : "(no build log)");
        free(log);
        drop_program(od);
        return cl_code(e);
    }
    return make_kernels(od, msg, len);
}

static void teardown(struct ocl_dev *od)
{
    drop_program(od);
    if (od->queue) clReleaseCommandQueue(od->queue);
    if (od->ctx) clReleaseContext(od->ctx);
    od->queue = NULL;
    od->ctx = NULL;
}

static int ocl_prepare(struct db_device *dev, const struct db_backend_config *cfg, char *msg, size_t len)
{
    struct ocl_dev *od = dev->priv;
    if (!od) { db_msg(msg, len, "device was not enumerated"); return DROPBLOCK_EINTERNAL; }
    if (od->program) return DROPBLOCK_OK;
    cl_int e;
    cl_context_properties props[3] = {CL_CONTEXT_PLATFORM, (cl_context_properties)od->platform, 0};
    od->ctx = clCreateContext(props, 1, &od->device, NULL, NULL, &e);
    if (e != CL_SUCCESS) { od->ctx = NULL; return cl_fail(msg, len, "clCreateContext", e); }
    od->queue = clCreateCommandQueue(od->ctx, od->device, 0, &e); /* in order: chunks rely on it */
    if (e != CL_SUCCESS) {
        od->queue = NULL;
        int rc = cl_fail(msg, len, "clCreateCommandQueue", e);
        teardown(od);
        return rc;
    }
    const char *dir = cfg && cfg->cache_dir && *cfg->cache_dir ? cfg->cache_dir : NULL;
    char path[1024] = "";
    uint64_t key = 0;
    if (dir) {
        key = cache_key(od);
        cache_path(path, sizeof path, dir, key);
        if (load_cached(od, path, key)) return DROPBLOCK_OK;
    }
    int rc = build_from_source(od, msg, len);
    if (rc) { teardown(od); return rc; }
    if (dir) { /* (re)write the entry: it was missing, stale or bad */
        size_t blen = 0;
        unsigned char *bin = program_binary(od->program, &blen);
        if (bin) cache_store(dir, path, key, bin, blen);
        free(bin);
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

struct run_state {
    cl_mem d_prm, d_counts, d_kept, d_scales, d_data;
    cl_mem *masks;      /* one per chunk, kept from pass 1 to pass 3 */
    uint64_t nchunks;
    uint32_t *kept_host; /* a chunk's partial counts, two words per sample */
    uint64_t *kept;      /* per sample, whole tensor */
    uint32_t *scales;
    uint32_t *words;     /* a chunk's mask words, for export */
};

static void free_state(struct run_state *st)
{
    cl_mem *m[] = {&st->d_prm, &st->d_counts, &st->d_kept, &st->d_scales, &st->d_data};
    for (size_t i = 0; i < sizeof m / sizeof *m; i++)
        if (*m[i]) clReleaseMemObject(*m[i]);
    for (uint64_t q = 0; st->masks && q < st->nchunks; q++)
        if (st->masks[q]) clReleaseMemObject(st->masks[q]);
    free(st->masks);
    free(st->kept_host);
    free(st->kept);
    free(st->scales);
    free(st->words);
}

static cl_int make_buffer(struct ocl_dev *od, uint64_t bytes, cl_mem *out)
{
    cl_int e;
    if (bytes < 4) bytes = 4; /* zero-size buffers are invalid */
    bytes = (bytes + 3) & ~UINT64_C(3);
    if (bytes > SIZE_MAX) return CL_INVALID_BUFFER_SIZE;
    *out = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE, (size_t)bytes, NULL, &e);
    if (e != CL_SUCCESS) *out = NULL;
    return e;
}

static cl_int launch(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t n, cl_mem a, cl_mem b, cl_mem c, cl_mem d)
{
    cl_mem args[4] = {a, b, c, d};
    cl_int e = CL_SUCCESS;
    for (cl_uint i = 0; i < 4 && args[i] && e == CL_SUCCESS; i++) e = clSetKernelArg(k, i, sizeof(cl_mem), &args[i]);
    if (e != CL_SUCCESS) return e;
    size_t global = (size_t)((n + wg - 1) / wg * wg);
    return clEnqueueNDRangeKernel(od->queue, k, 1, NULL, &global, &wg, 0, NULL, NULL);
}

/* Samples a chunk of per units can touch, at most. */
static uint64_t samples_bound(const struct db_plan *pl, uint64_t per)
{
    uint64_t CH = pl->C * pl->H, rows = per * db_unit_rows(pl);
    uint64_t b = (rows + CH - 1) / CH + 1;
    return b < pl->N ? b : pl->N;
}

#define CK(call, what)                                                     \
    do {                                                                   \
        cl_int e_ = (call);                                                \
        if (e_ != CL_SUCCESS) { rc = cl_fail(res->message, sizeof res->message, what, e_); goto done; } \
    } while (0)

static int ocl_run(struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
                   dropblock_result *res)
{
    struct ocl_dev *od = dev->priv;
    uint64_t t_start = db_now_us();
    if (!od || !od->program) { db_msg(res->message, sizeof res->message, "OpenCL device not prepared"); return DROPBLOCK_EINTERNAL; }
    struct run_state st;
    memset(&st, 0, sizeof st);
    int rc = DROPBLOCK_OK;
    const size_t es = dropblock_dtype_size(pl->p.dtype);
    const uint64_t RW = db_row_words(pl), units = db_units(pl);
    uint64_t per = db_chunk_units(pl, od->max_buffer, res->message, sizeof res->message);
    if (!per) return DROPBLOCK_EEXHAUSTED;
    /* the per-sample partial counts (8 bytes a sample) must fit in a buffer too */
    while (per > 1 && samples_bound(pl, per) * 8 > od->max_buffer) per /= 2;
    st.nchunks = (units + per - 1) / per;
    uint64_t max_rows = 0, max_elem = 0, max_samp = 0;
    struct db_chunk ch;
    for (uint64_t q = 0; q < st.nchunks; q++) {
        db_chunk_at(pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        if (ch.nrows > max_rows) max_rows = ch.nrows;
        if (ch.nelem > max_elem) max_elem = ch.nelem;
        if (ch.nsamp > max_samp) max_samp = ch.nsamp;
    }
    if (st.nchunks > SIZE_MAX / sizeof(cl_mem) || max_samp > SIZE_MAX / 8 || max_rows * RW > SIZE_MAX / 4 ||
        !(st.masks = calloc((size_t)st.nchunks, sizeof(cl_mem))) ||
        !(st.kept_host = malloc((size_t)max_samp * 8)) || !(st.kept = calloc((size_t)pl->N, sizeof(uint64_t))) ||
        !(st.scales = calloc((size_t)pl->N, sizeof(uint32_t))) ||
        (mask && !(st.words = malloc((size_t)(max_rows * RW * 4))))) {
        db_msg(res->message, sizeof res->message, "out of host memory for %llu chunks",
               (unsigned long long)st.nchunks);
        rc = DROPBLOCK_EEXHAUSTED;
        goto done;
    }
    CK(make_buffer(od, DBP_COUNT * 4, &st.d_prm), "clCreateBuffer(params)");
    CK(make_buffer(od, max_rows * 4, &st.d_counts), "clCreateBuffer(counts)");
    CK(make_buffer(od, max_samp * 8, &st.d_kept), "clCreateBuffer(kept)");
    uint32_t prm[DBP_COUNT];
    uint64_t t_mask = 0, t_count = 0, t0;

    /* passes 1 and 2, per chunk; host writes may be non-blocking because every chunk ends with
     * a blocking read on the in-order queue before prm is reused */
    for (uint64_t q = 0; q < st.nchunks; q++) {
        db_chunk_at(pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        db_kernel_params(pl, &ch, prm);
        t0 = db_now_us();
        CK(make_buffer(od, ch.nrows * RW * 4, &st.masks[q]), "clCreateBuffer(mask)");
        CK(clEnqueueWriteBuffer(od->queue, st.d_prm, CL_FALSE, 0, sizeof prm, prm, 0, NULL, NULL),
           "clEnqueueWriteBuffer(params)");
        CK(launch(od, od->k_mask, od->wg_mask, ch.nrows, st.d_prm, st.masks[q], st.d_counts, NULL),
           "clEnqueueNDRangeKernel(db_mask)");
        CK(clFinish(od->queue), "clFinish(db_mask)");
        uint64_t t1 = db_now_us();
        t_mask += t1 - t0;
        CK(launch(od, od->k_count, od->wg_count, ch.nsamp, st.d_prm, st.d_counts, st.d_kept, NULL),
           "clEnqueueNDRangeKernel(db_count)");
        CK(clEnqueueReadBuffer(od->queue, st.d_kept, CL_TRUE, 0, (size_t)ch.nsamp * 8, st.kept_host, 0, NULL, NULL),
           "clEnqueueReadBuffer(kept)");
        for (uint64_t s = 0; s < ch.nsamp; s++)
            st.kept[ch.n0 + s] += (uint64_t)st.kept_host[2 * s] | ((uint64_t)st.kept_host[2 * s + 1] << 32);
        t_count += db_now_us() - t1;
    }
    /* the count-sized buffers are done: free them before the data buffer needs room */
    clReleaseMemObject(st.d_counts);
    clReleaseMemObject(st.d_kept);
    st.d_counts = st.d_kept = NULL;
    t0 = db_now_us();
    rc = db_plan_scales(pl, st.kept, st.scales, res);
    t_count += db_now_us() - t0;
    res->timing_us[0] = t_mask;
    res->timing_us[1] = t_count;
    if (rc) goto done;

    /* pass 3, per chunk: upload x, apply in place, read y back (in may equal out: each chunk is
     * uploaded before it is downloaded, and chunks do not overlap) */
    t0 = db_now_us();
    CK(make_buffer(od, max_samp * 4, &st.d_scales), "clCreateBuffer(scales)");
    CK(make_buffer(od, max_elem * es, &st.d_data), "clCreateBuffer(data)");
    for (uint64_t q = 0; q < st.nchunks; q++) {
        db_chunk_at(pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        db_kernel_params(pl, &ch, prm);
        CK(clEnqueueWriteBuffer(od->queue, st.d_prm, CL_FALSE, 0, sizeof prm, prm, 0, NULL, NULL),
           "clEnqueueWriteBuffer(params)");
        CK(clEnqueueWriteBuffer(od->queue, st.d_scales, CL_FALSE, 0, (size_t)ch.nsamp * 4, st.scales + ch.n0, 0, NULL,
                                NULL),
           "clEnqueueWriteBuffer(scales)");
        CK(clEnqueueWriteBuffer(od->queue, st.d_data, CL_FALSE, 0, (size_t)(ch.nelem * es),
                                (const char *)in + ch.e0 * es, 0, NULL, NULL),
           "clEnqueueWriteBuffer(x)");
        CK(launch(od, od->k_apply, od->wg_apply, ch.nelem, st.d_prm, st.masks[q], st.d_scales, st.d_data),
           "clEnqueueNDRangeKernel(db_apply)");
        CK(clEnqueueReadBuffer(od->queue, st.d_data, CL_TRUE, 0, (size_t)(ch.nelem * es), (char *)out + ch.e0 * es, 0,
                               NULL, NULL),
           "clEnqueueReadBuffer(y)");
        if (mask) {
            CK(clEnqueueReadBuffer(od->queue, st.masks[q], CL_TRUE, 0, (size_t)(ch.nrows * RW * 4), st.words, 0, NULL,
                                   NULL),
               "clEnqueueReadBuffer(mask)");
            db_mask_export_rows(pl, st.words, ch.r0, ch.nrows, mask);
        }
        /* this chunk's mask is no longer needed */
        clReleaseMemObject(st.masks[q]);
        st.masks[q] = NULL;
    }
    res->timing_us[2] = db_now_us() - t0;
done:
    /* nothing may still read host memory we are about to free (non-blocking writes) */
    clFinish(od->queue);
    free_state(&st);
    res->timing_us[3] = db_now_us() - t_start;
    return rc;
}

const struct backend_ops db_backend_opencl = {"opencl", ocl_enumerate, ocl_prepare, ocl_run, ocl_release};
