/* dropblock_cuda: a tensor in CUDA memory through dropblockd with no host copy (docs/protocol.md,
 * region.alloc), end to end. Device memory from the daemon (dropblock_device_alloc: an opaque
 * file descriptor) is imported into CUDA on the GPU whose UUID it names (cuImportExternalMemory,
 * cuExternalMemoryGetMappedBuffer); x is written by CUDA (cuMemcpyHtoD, where a training
 * process's own kernels would write it); the job runs on it (dropblock_run_ref); y is read back
 * by CUDA and compared bit for bit with the CPU reference (the in-process engine's built-in CPU
 * backend on the same x). Then timings: the job (submission to reply) against a device-to-device
 * copy of the same bytes (cuMemcpyDtoD), medians of --reps, as one JSON line.
 * Then, where the daemon's device exports timeline semaphores (docs/protocol.md "Ordering with
 * semaphores"), the ordering a training step uses, with no host wait in the step: on a CUDA
 * stream, x copied in from another CUDA buffer, the imported semaphore signalled to n; the job
 * submitted with wait n and signal n + 1; the stream waits for n + 1 and copies y out. The step's
 * time (enqueue to the stream's completion) is ordered_us, y checked bit for bit again.
 *
 * Built where the CUDA toolkit is (meson option cuda, auto); it runs only where an NVIDIA driver
 * and GPU are (bench/gpu-check.sh), and says so and exits 77 elsewhere.
 *   dropblock_cuda [--socket PATH] [--shape N,C,H,W] [--dtype f32|f16] [--reps K] */
#include <cuda.h>
#include <dropblock/dropblock.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const char *cu_err(CUresult r)
{
    const char *s = NULL;
    cuGetErrorName(r, &s);
    return s ? s : "CUDA error";
}

#define CU(call) \
    do { \
        CUresult r_ = (call); \
        if (r_ != CUDA_SUCCESS) { \
            fprintf(stderr, "dropblock_cuda: %s: %s\n", #call, cu_err(r_)); \
            return 1; \
        } \
    } while (0)

/* the CUDA device whose UUID is uuid (the exporting device), or -1 */
static int cuda_device_of(const uint8_t uuid[16], CUdevice *out)
{
    int n = 0;
    if (cuDeviceGetCount(&n) != CUDA_SUCCESS) return -1;
    for (int i = 0; i < n; i++) {
        CUdevice d;
        CUuuid u;
        if (cuDeviceGet(&d, i) != CUDA_SUCCESS || cuDeviceGetUuid(&u, d) != CUDA_SUCCESS) continue;
        if (!memcmp(u.bytes, uuid, 16)) {
            *out = d;
            return i;
        }
    }
    return -1;
}

/* buf's memory imported into the current context: *ptr, *ext (to destroy) */
static int import_buffer(dropblock_device_buffer *buf, CUdeviceptr *ptr, CUexternalMemory *ext)
{
    CUDA_EXTERNAL_MEMORY_HANDLE_DESC hd;
    memset(&hd, 0, sizeof hd);
    hd.type = CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD;
    hd.handle.fd = buf->fd;
    hd.size = buf->allocation_size;
    hd.flags = buf->dedicated ? CUDA_EXTERNAL_MEMORY_DEDICATED : 0;
    CU(cuImportExternalMemory(ext, &hd));
    buf->fd = -1; /* CUDA owns the descriptor now */
    CUDA_EXTERNAL_MEMORY_BUFFER_DESC bd;
    memset(&bd, 0, sizeof bd);
    bd.offset = 0;
    bd.size = buf->size;
    CU(cuExternalMemoryGetMappedBuffer(ptr, *ext, &bd));
    return 0;
}

/* the semaphore's descriptor imported into the current context: *ext (to destroy) */
static int import_semaphore(dropblock_semaphore *sem, CUexternalSemaphore *ext)
{
    CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC hd;
    memset(&hd, 0, sizeof hd);
    hd.type = CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD;
    hd.handle.fd = sem->fd;
    CU(cuImportExternalSemaphore(ext, &hd));
    sem->fd = -1; /* CUDA owns the descriptor now */
    return 0;
}

static int stream_signal(CUexternalSemaphore ext, uint64_t value, CUstream st)
{
    CUDA_EXTERNAL_SEMAPHORE_SIGNAL_PARAMS sp;
    memset(&sp, 0, sizeof sp);
    sp.params.fence.value = value;
    CU(cuSignalExternalSemaphoresAsync(&ext, &sp, 1, st));
    return 0;
}

static int stream_wait(CUexternalSemaphore ext, uint64_t value, CUstream st)
{
    CUDA_EXTERNAL_SEMAPHORE_WAIT_PARAMS wp;
    memset(&wp, 0, sizeof wp);
    wp.params.fence.value = value;
    CU(cuWaitExternalSemaphoresAsync(&ext, &wp, 1, st));
    return 0;
}

/* The steps ordered by semaphores: *us the median step, *exact y's bits after the last; 77 where
 * the device cannot export semaphores (*why). */
static int ordered_steps(dropblock_t *db, const dropblock_params *p, dropblock_device_buffer *buf, CUdeviceptr base,
                         const unsigned char *want, const dropblock_result *rr, int reps, double *us, int *exact,
                         char *why, size_t len)
{
    const uint64_t tb = dropblock_tensor_bytes(p);
    dropblock_semaphore sem;
    if (dropblock_semaphore_create(db, buf->device, 1, &sem, why, len)) return 77;
    CUexternalSemaphore ext;
    if (import_semaphore(&sem, &ext)) return 1;
    CUstream st;
    CUdeviceptr src, dst;
    CU(cuStreamCreate(&st, CU_STREAM_NON_BLOCKING));
    CU(cuMemAlloc(&src, tb));
    CU(cuMemAlloc(&dst, tb));
    CU(cuMemcpyDtoD(src, base, tb)); /* x, as the training process's own buffer */
    CU(cuCtxSynchronize());
    double *t = calloc((size_t)reps, sizeof *t);
    uint64_t n = 0;
    dropblock_result res;
    int rc = 0;
    const dropblock_ref xi = {buf, NULL, 0}, yo = {buf, NULL, tb};
    for (int r = -2; r < reps && !rc; r++) {
        double t0 = now_us();
        CU(cuMemcpyDtoDAsync(base, src, tb, st));
        if (stream_signal(ext, ++n, st)) return 1;
        dropblock_sync sync = {.wait = &sem, .wait_value = n, .signal = &sem, .signal_value = n + 1};
        dropblock_ticket *tk = NULL;
        if ((rc = dropblock_submit_sync(db, p, xi, yo, NULL, NULL, &sync, &tk))) break;
        ++n;
        if (stream_wait(ext, n, st)) return 1;
        CU(cuMemcpyDtoDAsync(dst, base + tb, tb, st));
        CU(cuStreamSynchronize(st));
        double t1 = now_us();
        rc = dropblock_wait(db, tk, -1, &res); /* the reply came meanwhile */
        if (r >= 0) t[r] = t1 - t0;
    }
    if (rc) {
        snprintf(why, len, "ordered job: %s", res.message);
        return 1;
    }
    unsigned char *got = malloc(tb);
    CU(cuMemcpyDtoH(got, dst, tb));
    *exact = !memcmp(got, want, tb) && res.kept == rr->kept && res.scale_bits == rr->scale_bits;
    qsort(t, (size_t)reps, sizeof *t, cmp_double);
    *us = t[reps / 2];
    free(got);
    free(t);
    CU(cuMemFree(src));
    CU(cuMemFree(dst));
    CU(cuStreamDestroy(st));
    CU(cuDestroyExternalSemaphore(ext));
    dropblock_semaphore_free(db, &sem);
    return 0;
}

struct opts {
    const char *socket;
    dropblock_params p;
    int reps;
};

static int parse(int argc, char **argv, struct opts *o)
{
    dropblock_params_init(&o->p);
    uint64_t s[4] = {64, 1024, 14, 14};
    o->reps = 20;
    o->socket = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--socket") && i + 1 < argc) o->socket = argv[++i];
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
            if (sscanf(argv[++i], "%" SCNu64 ",%" SCNu64 ",%" SCNu64 ",%" SCNu64, &s[0], &s[1], &s[2], &s[3]) != 4)
                return -1;
        } else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            int d = dropblock_parse_dtype(argv[++i]);
            if (d < 0) return -1;
            o->p.dtype = (dropblock_dtype)d;
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) o->reps = atoi(argv[++i]);
        else return -1;
    }
    memcpy(o->p.shape, s, sizeof s);
    o->p.seed = 1234;
    return o->reps > 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    struct opts o;
    if (parse(argc, argv, &o)) {
        fprintf(stderr, "usage: %s [--socket PATH] [--shape N,C,H,W] [--dtype f32|f16] [--reps K]\n", argv[0]);
        return 2;
    }
    if (cuInit(0) != CUDA_SUCCESS) {
        printf("SKIP: no CUDA driver or GPU here\n");
        return 77;
    }
    char err[512];
    dropblock_t *db, *ref;
    dropblock_local_options lo = {"cpu", ""};
    if (dropblock_connect(&db, o.socket, err, sizeof err) || dropblock_open_local(&ref, &lo, err, sizeof err)) {
        fprintf(stderr, "dropblock_cuda: %s\n", err);
        return 1;
    }
    const uint64_t tb = dropblock_tensor_bytes(&o.p), n = dropblock_numel(&o.p);
    dropblock_device_buffer buf;
    if (dropblock_device_alloc(db, "auto", 2 * tb, &buf, err, sizeof err)) {
        fprintf(stderr, "dropblock_cuda: %s\n", err);
        return 1;
    }
    CUdevice dev;
    if (cuda_device_of(buf.device_uuid, &dev) < 0) {
        fprintf(stderr, "dropblock_cuda: no CUDA device has %s's UUID\n", buf.device);
        return 1;
    }
    CUcontext ctx;
    CU(cuDevicePrimaryCtxRetain(&ctx, dev));
    CU(cuCtxPushCurrent(ctx));
    CUdeviceptr base;
    CUexternalMemory ext;
    if (import_buffer(&buf, &base, &ext)) return 1;
    /* x: a pattern with every sign, the reference's result on the CPU */
    unsigned char *x = malloc(tb), *want = malloc(tb), *got = malloc(tb);
    if (!x || !want || !got) return 1;
    for (uint64_t i = 0; i < tb; i++) x[i] = (unsigned char)(i * 2654435761u >> 13);
    if (o.p.dtype == DROPBLOCK_F32) /* values of every sign and size, written as bytes */
        for (uint64_t i = 0; i < n; i++) {
            const float v = (float)((int64_t)(i % 2001) - 1000) / 97.0f;
            memcpy(x + 4 * i, &v, sizeof v);
        }
    dropblock_result rr, gr;
    if (dropblock_run(ref, &o.p, x, want, NULL, NULL, &rr)) {
        fprintf(stderr, "dropblock_cuda: reference: %s\n", rr.message);
        return 1;
    }
    CU(cuMemcpyHtoD(base, x, tb));
    CU(cuCtxSynchronize()); /* host-synchronous ordering: x complete before the job */
    dropblock_ref xi = {&buf, NULL, 0}, yo = {&buf, NULL, tb};
    double *t_job = calloc((size_t)o.reps, sizeof *t_job), *t_copy = calloc((size_t)o.reps, sizeof *t_copy);
    int rc = 0;
    for (int r = -2; r < o.reps && !rc; r++) { /* two untimed */
        double t0 = now_us();
        rc = dropblock_run_ref(db, &o.p, xi, yo, NULL, NULL, &gr);
        double t1 = now_us();
        CU(cuMemcpyDtoD(base + tb, base, tb));
        CU(cuCtxSynchronize());
        double t2 = now_us();
        if (r >= 0) {
            t_job[r] = t1 - t0;
            t_copy[r] = t2 - t1;
        }
    }
    if (rc) {
        fprintf(stderr, "dropblock_cuda: job: %s\n", gr.message);
        return 1;
    }
    rc = dropblock_run_ref(db, &o.p, xi, yo, NULL, NULL, &gr); /* the copies above overwrote y */
    CU(cuMemcpyDtoH(got, base + tb, tb));
    int exact = !rc && !memcmp(got, want, tb) && gr.kept == rr.kept && gr.scale_bits == rr.scale_bits;
    qsort(t_job, (size_t)o.reps, sizeof *t_job, cmp_double);
    qsort(t_copy, (size_t)o.reps, sizeof *t_copy, cmp_double);
    double ordered_us = -1;
    int ordered_exact = 0;
    char why[384] = "";
    int orc = ordered_steps(db, &o.p, &buf, base, want, &rr, o.reps, &ordered_us, &ordered_exact, why, sizeof why);
    if (orc == 1) {
        fprintf(stderr, "dropblock_cuda: %s\n", why);
        return 1;
    }
    char ordered[512];
    if (orc == 77) {
        for (char *q = why; *q; q++)
            if (*q == '"' || *q == '\\') *q = '\'';
        snprintf(ordered, sizeof ordered, "\"ordered\":\"not run: %s\"", why);
    } else {
        snprintf(ordered, sizeof ordered, "\"ordered_us\":%.1f,\"ordered_exact\":%s", ordered_us,
                 ordered_exact ? "true" : "false");
    }
    printf("{\"device\":\"%s\",\"shape\":[%llu,%llu,%llu,%llu],\"dtype\":\"%s\",\"bytes\":%llu,\"job_us\":%.1f,"
           "\"copy_us\":%.1f,\"copy_over_job\":%.3f,\"exact\":%s,%s}\n",
           buf.device, (unsigned long long)o.p.shape[0], (unsigned long long)o.p.shape[1],
           (unsigned long long)o.p.shape[2], (unsigned long long)o.p.shape[3], dropblock_dtype_name(o.p.dtype),
           (unsigned long long)tb, t_job[o.reps / 2], t_copy[o.reps / 2], t_copy[o.reps / 2] / t_job[o.reps / 2],
           exact ? "true" : "false", ordered);
    exact = exact && (orc == 77 || ordered_exact);
    CU(cuMemFree(base));
    CU(cuDestroyExternalMemory(ext));
    CU(cuCtxPopCurrent(NULL));
    CU(cuDevicePrimaryCtxRelease(dev));
    dropblock_device_free(db, &buf);
    dropblock_close(db);
    dropblock_close(ref);
    free(x);
    free(want);
    free(got);
    free(t_job);
    free(t_copy);
    return exact ? 0 : 1;
}
