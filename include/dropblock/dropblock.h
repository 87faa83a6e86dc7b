/* dropblock.h: the public C API of dropblockd.
 *
 * One API for two engines: an in-process engine (dropblock_open_local: the CPU, OpenCL and
 * Vulkan backends inside the caller) and the daemon over its Unix socket (dropblock_connect).
 * Every call returns 0 or a negative DROPBLOCK_E* code; nothing aborts or prints. The exact semantics of a
 * request are those of docs/semantics.md. */
#ifndef DROPBLOCK_DROPBLOCK_H
#define DROPBLOCK_DROPBLOCK_H

#include <stddef.h>
#include <stdint.h>

/* The library's exported functions: libdropblock is built with -fvisibility=hidden, so only what
 * is marked here leaves the shared object (tests/test_symbols.py). */
#if defined(__GNUC__) || defined(__clang__)
#define DROPBLOCK_API __attribute__((visibility("default")))
#else
#define DROPBLOCK_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define DROPBLOCK_VERSION_MAJOR 0
#define DROPBLOCK_VERSION_MINOR 1
#define DROPBLOCK_PROTOCOL_VERSION 1

/* Error codes: few and stable, mirrored by the wire protocol's "code" strings. */
enum dropblock_error {
    DROPBLOCK_OK = 0,
    DROPBLOCK_EINVAL = -1,       /* invalid_argument */
    DROPBLOCK_ENOTFOUND = -2,    /* not_found */
    DROPBLOCK_ERANGE = -3,       /* out_of_range */
    DROPBLOCK_EEXHAUSTED = -4,   /* resource_exhausted */
    DROPBLOCK_EUNAVAILABLE = -5, /* unavailable */
    DROPBLOCK_EPERM = -6,        /* permission_denied */
    DROPBLOCK_EINTERNAL = -7,    /* internal */
    DROPBLOCK_ETIMEDOUT = -8     /* dropblock_wait's timeout passed (client side only, never on the wire) */
};

/* A short fixed description of an error code ("invalid argument", ...). */
DROPBLOCK_API const char *dropblock_strerror(int code);
/* The wire name of an error code ("invalid_argument", ...); NULL for an unknown code. */
DROPBLOCK_API const char *dropblock_error_name(int code);
/* The code of a wire name; DROPBLOCK_EINTERNAL for an unknown one. */
DROPBLOCK_API int dropblock_error_from_name(const char *name);

typedef enum { DROPBLOCK_NCHW = 0, DROPBLOCK_NHWC = 1 } dropblock_layout;
typedef enum { DROPBLOCK_F32 = 0, DROPBLOCK_F16 = 1, DROPBLOCK_BF16 = 2 } dropblock_dtype;
typedef enum {
    DROPBLOCK_NORMALIZE_GLOBAL = 0, /* one scale for the tensor (keras-cv, torchvision) */
    DROPBLOCK_NORMALIZE_SAMPLE = 1, /* one scale per sample n */
    DROPBLOCK_NORMALIZE_NONE = 2    /* scale 1 */
} dropblock_normalize;
typedef enum { DROPBLOCK_FORWARD = 0, DROPBLOCK_BACKWARD = 1 } dropblock_mode;
/* keras_cv: keras-cv's first DropBlock2D (tf.random.Generator); keras3: keras-cv 0.8+ under Keras 3
 * with the TensorFlow backend (SeedGenerator, stateless uniform). docs/semantics.md. */
typedef enum { DROPBLOCK_COMPAT_NONE = 0, DROPBLOCK_COMPAT_KERAS_CV = 1, DROPBLOCK_COMPAT_KERAS3 = 2 } dropblock_compat;

#define DROPBLOCK_SHARE_CHANNELS 1u /* one mask for all channels of a sample */
#define DROPBLOCK_SHARE_BATCH 2u    /* one mask for all samples */

/* Limits of docs/semantics.md, "Request fields". */
#define DROPBLOCK_MAX_ELEMENTS (UINT64_C(1) << 40)
#define DROPBLOCK_MAX_PLANE (UINT64_C(1) << 31)

/* One DropBlock2D request. dropblock_params_init() fills in the defaults. */
typedef struct dropblock_params {
    uint64_t shape[4];       /* logical N, C, H, W whatever the layout; each >= 1 */
    dropblock_layout layout; /* physical order of the buffers */
    dropblock_dtype dtype;
    float rate;        /* 0 <= rate <= 1 */
    uint64_t block[2]; /* bh, bw, each >= 1; clamped to the map (docs/semantics.md) */
    uint64_t seed, stream;
    dropblock_normalize normalize;
    unsigned share;      /* DROPBLOCK_SHARE_* bits */
    dropblock_mode mode; /* backward applies the same mask and scale to dy */
    dropblock_compat compat;
    int training; /* 0: the identity */
    /* compat keras_cv only: the generator's position (the sum of N*H*W*C over the layer's earlier
     * calls, whatever their sizes) where has_position; stream k is shorthand for k*N*H*W*C */
    int has_position;
    uint64_t position;
    /* DropBlock3D (docs/semantics.md, "DropBlock3D"): the logical tensor is (N, C, D, H, W) with
     * D = depth and the block (block_depth, bh, bw); NCHW then means NCDHW and NHWC NDHWC. 0 or
     * 1: DropBlock2D (which is DropBlock3D with D = 1 and block_depth 1, bit for bit). block_depth
     * 0 means 1; like bh and bw it is clamped to the volume (min(bd, D)). */
    uint64_t depth, block_depth;
} dropblock_params;

DROPBLOCK_API void dropblock_params_init(dropblock_params *p);

/* Checks every rule of docs/semantics.md's "Request fields"; on error writes a message naming the field and the
 * allowed range into msg (if msg_len > 0) and returns DROPBLOCK_EINVAL. */
DROPBLOCK_API int dropblock_params_validate(const dropblock_params *p, char *msg, size_t msg_len);

/* Sizes of a request: elements, bytes of one tensor, bytes of the packed mask. 0 on overflow
 * (an invalid shape). */
DROPBLOCK_API uint64_t dropblock_numel(const dropblock_params *p);
DROPBLOCK_API uint64_t dropblock_tensor_bytes(const dropblock_params *p);
DROPBLOCK_API uint64_t dropblock_mask_bytes(const dropblock_params *p);
DROPBLOCK_API size_t dropblock_dtype_size(dropblock_dtype t);

/* Names used by the CLI, the wire protocol and error messages; parse returns -1 when unknown. */
DROPBLOCK_API const char *dropblock_layout_name(dropblock_layout l);
DROPBLOCK_API const char *dropblock_dtype_name(dropblock_dtype t);
DROPBLOCK_API const char *dropblock_normalize_name(dropblock_normalize n);
DROPBLOCK_API const char *dropblock_compat_name(dropblock_compat c);
DROPBLOCK_API int dropblock_parse_layout(const char *s);
DROPBLOCK_API int dropblock_parse_dtype(const char *s);
DROPBLOCK_API int dropblock_parse_normalize(const char *s);
DROPBLOCK_API int dropblock_parse_compat(const char *s);

/* ---- schedules ---------------------------------------------------------------------------
 * Drop rates that change during training; the result goes into dropblock_params.rate. Pure
 * functions of their arguments: every platform gets the same float32 bits.
 *
 * Linear ramp (the paper: the keep probability falls linearly from 1 to its target over
 * training): rate = target * min(step, N) / N, the exact rational value rounded once to float32
 * (round to nearest, ties to even; no intermediate rounding). step 0 gives +0 (also when
 * target is 0), step >= N the target itself; N = 0 means the target from step 0.
 *
 * Per-group scaling (tensorflow/tpu models/official/resnet/resnet_main.py): ResNet's block group
 * g (1..4) gets rate / 4^(4 - g): group 4 the full rate, group 3 a quarter, group 2 a sixteenth,
 * group 1 a sixty-fourth. The reference writes it on keep probabilities,
 * keep_g = 1 - (1 - keep) / 4.0**(4 - g), after ramping keep as 1 - (step / train_steps) *
 * (1 - keep) in float32; here the rate is ramped and scaled directly (an exact division by a
 * power of two), so a value can differ from the reference's 1 - keep_g in its last bits.
 *
 * Errors (DROPBLOCK_EINVAL, *rate set to NaN): target NaN or outside [0, 1], group outside 1..4,
 * rate NULL. */
DROPBLOCK_API int dropblock_schedule_linear(float target, uint64_t step, uint64_t total_steps, float *rate);
DROPBLOCK_API int dropblock_schedule_group(float target, int group, float *rate);
/* The ramp, then (group 1..4) the group scaling, as the reference orders them; group 0: the
 * ramp alone. NaN for invalid arguments (which dropblock_params_validate rejects). */
DROPBLOCK_API float dropblock_schedule_rate(float target, uint64_t step, uint64_t total_steps, int group);

/* What a job reports (docs/semantics.md, "Scale and output"). */
typedef struct dropblock_result {
    uint64_t kept, total;  /* K and S over the whole tensor */
    uint32_t scale_bits;   /* float32 bits of the scale (sample 0's for "sample"; keras_cv: percent) */
    char device[64];       /* the device that ran it, e.g. "opencl:0" */
    uint64_t timing_us[4]; /* mask, scale, apply, total (microseconds; 0 where not measured) */
    char message[256];     /* on failure: what went wrong, naming the field or resource */
} dropblock_result;

/* The daemon's socket path when none is given: $DROPBLOCK_SOCKET, else
 * $XDG_RUNTIME_DIR/dropblock/dropblockd.sock, else /run/dropblock/dropblockd.sock. */
DROPBLOCK_API void dropblock_default_socket(char *buf, size_t len);

/* ---- devices ---------------------------------------------------------------------------- */
typedef enum {
    DROPBLOCK_DEVICE_CPU = 0,     /* the built-in CPU backend */
    DROPBLOCK_DEVICE_CPU_API = 1, /* a CPU behind OpenCL or Vulkan (PoCL, lavapipe) */
    DROPBLOCK_DEVICE_INTEGRATED = 2,
    DROPBLOCK_DEVICE_DISCRETE = 3,
    DROPBLOCK_DEVICE_OTHER = 4
} dropblock_device_kind;

typedef struct dropblock_device_info {
    char id[32];  /* "cpu:0", "opencl:1", "vulkan:0" */
    char api[16]; /* "cpu", "opencl", "vulkan" */
    char vendor[64];
    char name[128];
    char driver[64];
    char uuid[40]; /* 32 hex digits with dashes where the API gives one, else "" */
    dropblock_device_kind kind;
    uint64_t max_buffer;  /* largest single buffer the device takes, bytes */
    uint64_t global_mem;  /* device memory, bytes (0 if unknown) */
    int healthy;          /* 1: usable; 0: the device failed (the driver lost it, or an injected
                           * "vanish" fault): jobs sent to it get DROPBLOCK_EUNAVAILABLE naming it
                           * and "auto" never picks it. Added last, after global_mem. */
    int can_export;       /* dropblock_device_alloc can allocate memory on it (an exportable fd) */
    int semaphores;       /* dropblock_semaphore_create can make timeline semaphores on it */
    int semaphore_export; /* and export them as descriptors (VK_KHR_external_semaphore_fd) */
} dropblock_device_info;

DROPBLOCK_API const char *dropblock_device_kind_name(dropblock_device_kind k);

/* ---- handles ----------------------------------------------------------------------------
 * A handle is either the in-process engine (dropblock_open_local) or a connection to the daemon
 * (dropblock_connect). Every call below works on both, and a handle may be used from many
 * threads at once. */
typedef struct dropblock dropblock_t;

typedef struct dropblock_local_options {
    const char *backends;  /* comma list of "cpu", "opencl", "vulkan"; NULL: all that work */
    const char *cache_dir; /* OpenCL binary cache; NULL: $XDG_CACHE_HOME/dropblock or ~/.cache/dropblock; "" disables */
} dropblock_local_options;

/* Opens the in-process engine: enumerates the devices of the chosen backends and prepares
 * their kernels. A backend that has no usable device is skipped; the CPU one always works. */
DROPBLOCK_API int dropblock_open_local(dropblock_t **out, const dropblock_local_options *opt, char *msg,
                                       size_t msg_len);

/* Connects to dropblockd at socket_path (NULL: dropblock_default_socket). DROPBLOCK_EUNAVAILABLE
 * with a message saying how to start one when nothing answers; a peer the daemon does not allow
 * gets DROPBLOCK_EPERM and the daemon's message. When the connection breaks (the daemon stopped
 * or was killed), every request in flight fails at once with DROPBLOCK_EUNAVAILABLE ("connection
 * to dropblockd lost: ..."); jobs are never resent. The next call that needs the daemon (devices,
 * alloc, run, submit, status, shutdown) tries once to reconnect to the same path: when a daemon
 * answers there again, every region from dropblock_alloc is registered with it anew (the same
 * memory: the caller's pointers stay valid) and the call goes on; when none answers, the call
 * returns DROPBLOCK_EUNAVAILABLE saying so, and the next call tries again. dropblock_wait and
 * dropblock_free never reconnect. */
DROPBLOCK_API int dropblock_connect(dropblock_t **out, const char *socket_path, char *msg, size_t msg_len);

/* How long a connection waits for the daemon. dropblock_connect uses the defaults. */
#define DROPBLOCK_DEFAULT_TIMEOUT_MS 10000
typedef struct dropblock_connect_options {
    const char *socket_path; /* NULL: dropblock_default_socket */
    int timeout_ms;          /* connect(), the first hello and every other request's reply (devices, status,
                              * alloc and free, shutdown): DROPBLOCK_DEFAULT_TIMEOUT_MS; -1: no limit */
    int job_timeout_ms;      /* dropblock_run's wait for its job: -1 (the default): no limit */
} dropblock_connect_options;

DROPBLOCK_API void dropblock_connect_options_init(dropblock_connect_options *opt);

/* dropblock_connect with options. A daemon that accepts the connection but does not answer
 * within timeout_ms gives DROPBLOCK_EUNAVAILABLE naming the timeout (so does a request later on);
 * a socket whose listen backlog stays full as long gives the same. A job of dropblock_run that
 * gets no reply within job_timeout_ms gives DROPBLOCK_EUNAVAILABLE too: its reply is dropped
 * when it comes, and until the daemon is done with the job it may still write the output and
 * mask (leave them alone, or close the handle, before reusing that memory). */
DROPBLOCK_API int dropblock_connect_opts(dropblock_t **out, const dropblock_connect_options *opt, char *msg,
                                         size_t msg_len);

/* Closes the handle: a connection's regions are unregistered (the daemon drops them with the
 * connection) and unmapped, the local engine's memory is freed, tickets not yet waited for are
 * dropped. */
DROPBLOCK_API void dropblock_close(dropblock_t *h);

/* 1 for a daemon connection, 0 for the in-process engine. */
DROPBLOCK_API int dropblock_is_remote(const dropblock_t *h);

/* Devices of the engine or daemon, in order, with their health as of now (a connection asks the
 * daemon each time); *count receives the number, infos up to cap. */
DROPBLOCK_API int dropblock_devices(dropblock_t *h, dropblock_device_info *infos, size_t cap, size_t *count);

/* Tensor memory the engine reads and writes without copies: for a connection a shared region
 * (a memfd sized with posix_fallocate, sealed F_SEAL_SHRINK|F_SEAL_GROW, mapped here and
 * registered with the daemon), for the local engine ordinary memory. Zero-filled. */
DROPBLOCK_API int dropblock_alloc(dropblock_t *h, size_t bytes, void **ptr);
/* dropblock_alloc with the reason for a failure in msg. Nothing is allocated for a size that
 * cannot be used: above the daemon's max_region_bytes (from its hello), or above the memory
 * this machine has available now (/proc/meminfo's MemAvailable, within the memory cgroup's limit), gives
 * DROPBLOCK_EEXHAUSTED naming the limit and the numbers. */
DROPBLOCK_API int dropblock_alloc_msg(dropblock_t *h, size_t bytes, void **ptr, char *msg, size_t msg_len);

/* What a handle can take, for checking a job's size before allocating anything. */
typedef struct dropblock_limits {
    uint64_t max_region_bytes; /* one dropblock_alloc (the daemon's limit; UINT64_MAX locally) */
    uint64_t max_client_bytes; /* tensor bytes this connection may have in flight: one job's
                                * input + output (when apart) + mask (UINT64_MAX locally) */
    uint64_t max_client_jobs;  /* jobs in flight on this connection (UINT64_MAX locally) */
    uint64_t mem_available;    /* memory available on this machine now (UINT64_MAX: unknown) */
} dropblock_limits;
DROPBLOCK_API int dropblock_get_limits(dropblock_t *h, dropblock_limits *out);
/* Releases memory from dropblock_alloc (unregisters the region; running jobs keep theirs).
 * DROPBLOCK_EINVAL for a pointer that is not the start of such memory. On a lost connection the
 * memory is still unmapped and free returns 0: the daemon dropped the region with it. */
DROPBLOCK_API int dropblock_free(dropblock_t *h, void *ptr);

/* Runs one job and waits for it. input and output hold tensor_bytes(p) bytes each and may be
 * the same (in place); mask, when not NULL, receives mask_bytes(p) bytes: bit
 * ((n*C+c)*H+h)*W+w (3-D: (((n*C+c)*D+d)*H+h)*W+w), least significant first, 1 = kept. On a
 * connection all three must lie in memory from dropblock_alloc (DROPBLOCK_EINVAL naming the one
 * that does not). device: "auto",
 * an id such as "opencl:0", or NULL for auto. res (may be NULL) receives K, S, the scale bits,
 * the device and timings, or the error message. */
DROPBLOCK_API int dropblock_run(dropblock_t *h, const dropblock_params *p, const void *input, void *output, void *mask,
                                const char *device, dropblock_result *res);

/* Asynchronous form: submit returns at once with a ticket (the local engine runs the job before
 * returning); wait blocks up to timeout_ms (-1: forever, 0: poll) for it. wait returns
 * DROPBLOCK_ETIMEDOUT while the job is still running (the ticket stays valid); any other return
 * frees the ticket. Errors found before a job is sent (invalid params, memory not from
 * dropblock_alloc, a lost connection) come from submit itself, with no ticket and no message:
 * dropblock_run gives the same errors with their message. */
typedef struct dropblock_ticket dropblock_ticket;
DROPBLOCK_API int dropblock_submit(dropblock_t *h, const dropblock_params *p, const void *input, void *output,
                                   void *mask, const char *device, dropblock_ticket **ticket);
DROPBLOCK_API int dropblock_wait(dropblock_t *h, dropblock_ticket *ticket, int timeout_ms, dropblock_result *res);

/* ---- Device memory shared by file descriptor (docs/protocol.md, region.alloc) ----
 * The daemon (or the in-process engine) allocates memory on a device that can export it (a
 * Vulkan device whose driver has VK_KHR_external_memory_fd: dropblock's `devices` says "export")
 * and hands over a descriptor the caller imports into its own API on the same device: Vulkan
 * (VkImportMemoryFdInfoKHR with allocation_size, memory_type_index, and a dedicated allocation
 * where dedicated), CUDA (cudaImportExternalMemory, cudaExternalMemoryHandleTypeOpaqueFd, size
 * allocation_size, cudaExternalMemoryDedicated where dedicated; match the device by
 * device_uuid), HIP (hipImportExternalMemory). Jobs then name places in it (dropblock_ref) and
 * run on its device with no host copy. Ordering is host-synchronous: finish writing x before the
 * job is submitted; the job's reply means y is complete and visible. */
typedef struct dropblock_device_buffer {
    int fd;                     /* the exported memory: an import takes it, else the caller closes it
                                 * (-1 once taken: dropblock_device_free never closes it) */
    uint64_t size;              /* the bytes asked for */
    uint64_t allocation_size;   /* the size an importer allocates */
    uint32_t memory_type_index; /* the exporting device's memory type (Vulkan importers) */
    int dedicated;              /* import it as a dedicated allocation */
    int host_mappable;          /* an importer may map it (HOST_VISIBLE) */
    char handle_type[16];       /* "opaque_fd" */
    char device[32];            /* the device it lives on, e.g. "vulkan:0" */
    uint8_t device_uuid[16];    /* VkPhysicalDeviceIDProperties (CUDA and HIP compare device UUIDs) */
    uint8_t driver_uuid[16];
    /* internal: the daemon's region and the connection it belongs to, or the engine's handle */
    uint32_t region;
    uint64_t conn_gen;
    void *local;
    int local_dev;
} dropblock_device_buffer;

/* Allocates bytes of device memory on device ("auto" or NULL: the first device that can export;
 * else an id). DROPBLOCK_EINVAL naming what is missing where the device cannot export,
 * DROPBLOCK_EEXHAUSTED past the daemon's device-memory caps (--max-client-device-bytes,
 * --max-device-bytes) or the device's memory. Freed by dropblock_device_free, or with the
 * connection (the caller's import keeps its own reference to the memory). */
DROPBLOCK_API int dropblock_device_alloc(dropblock_t *h, const char *device, uint64_t bytes,
                                         dropblock_device_buffer *out, char *msg, size_t msg_len);
DROPBLOCK_API int dropblock_device_free(dropblock_t *h, dropblock_device_buffer *buf);

/* Where a tensor lies: buffer NULL: host memory at ptr (+ offset), from dropblock_alloc on a
 * connection; else offset bytes into a device buffer. */
typedef struct dropblock_ref {
    const dropblock_device_buffer *buffer;
    void *ptr;
    uint64_t offset;
} dropblock_ref;

/* dropblock_run and dropblock_submit on references: input and output both in host memory or
 * both in device buffers of one device (the job runs there: device must be NULL, "auto" or that
 * device); mask, if any, in host memory. */
DROPBLOCK_API int dropblock_run_ref(dropblock_t *h, const dropblock_params *p, dropblock_ref input,
                                    dropblock_ref output, void *mask, const char *device, dropblock_result *res);
DROPBLOCK_API int dropblock_submit_ref(dropblock_t *h, const dropblock_params *p, dropblock_ref input,
                                       dropblock_ref output, void *mask, const char *device, dropblock_ticket **ticket);

/* A timeline semaphore (docs/protocol.md, "Ordering with semaphores"): a job may wait for it to
 * reach a value before it reads its input, and raise it to a value once its output is complete,
 * so that a GPU stream that imported it (CUDA cudaImportExternalSemaphore with
 * cudaExternalSemaphoreHandleTypeTimelineSemaphoreFd, HIP alike, Vulkan VkImportSemaphoreFdInfoKHR
 * on the device whose UUID is device_uuid) waits and signals on the GPU and the host never
 * blocks. Starts at 0. */
typedef struct dropblock_semaphore {
    int fd;                  /* exported: the descriptor (an import takes it, else the caller closes
                              * it; -1 once taken); -1 where not exported */
    char handle_type[16];    /* "opaque_fd", or "" where not exported */
    char device[32];         /* its device, e.g. "vulkan:0": jobs that name it run there */
    uint8_t device_uuid[16]; /* VkPhysicalDeviceIDProperties */
    uint8_t driver_uuid[16];
    /* internal: the daemon's id and the connection it belongs to, or the engine's handle */
    uint32_t id;
    uint64_t conn_gen;
    void *local;
} dropblock_semaphore;

/* Makes one on device ("auto" or NULL: the first device that can; else an id), exported as a
 * descriptor where exported (DROPBLOCK_EINVAL naming the missing extension where the driver
 * cannot; lavapipe cannot). Freed by dropblock_semaphore_free or with the connection. */
DROPBLOCK_API int dropblock_semaphore_create(dropblock_t *h, const char *device, int exported, dropblock_semaphore *out,
                                             char *msg, size_t msg_len);
/* Raises it to value from the host (DROPBLOCK_EINVAL unless above its value), reads its value. */
DROPBLOCK_API int dropblock_semaphore_signal(dropblock_t *h, const dropblock_semaphore *s, uint64_t value, char *msg,
                                             size_t msg_len);
DROPBLOCK_API int dropblock_semaphore_value(dropblock_t *h, const dropblock_semaphore *s, uint64_t *value, char *msg,
                                            size_t msg_len);
/* Jobs waiting on it end their wait (DROPBLOCK_EUNAVAILABLE); it goes once no job uses it. */
DROPBLOCK_API int dropblock_semaphore_free(dropblock_t *h, dropblock_semaphore *s);

/* A job's ordering: wait (NULL: none) for wait_value before it reads its input, within
 * wait_timeout_ms (0: the daemon's longest, max_semaphore_wait_ms; past it the job does not run:
 * DROPBLOCK_EUNAVAILABLE); signal (NULL: none) raised to signal_value once it is over, whatever
 * its outcome. The job runs on the semaphores' device. */
typedef struct dropblock_sync {
    const dropblock_semaphore *wait;
    uint64_t wait_value;
    uint32_t wait_timeout_ms;
    const dropblock_semaphore *signal;
    uint64_t signal_value;
} dropblock_sync;

/* dropblock_run_ref and dropblock_submit_ref with sync (NULL: none). On the in-process engine
 * the job runs in the caller, which waits for the semaphore itself. */
DROPBLOCK_API int dropblock_run_sync(dropblock_t *h, const dropblock_params *p, dropblock_ref input,
                                     dropblock_ref output, void *mask, const char *device, const dropblock_sync *sync,
                                     dropblock_result *res);
DROPBLOCK_API int dropblock_submit_sync(dropblock_t *h, const dropblock_params *p, dropblock_ref input,
                                        dropblock_ref output, void *mask, const char *device,
                                        const dropblock_sync *sync, dropblock_ticket **ticket);

/* The daemon's status op as JSON text (counters, queues, per-device throughput); the local
 * engine gives its device list. DROPBLOCK_ERANGE if len is too small. */
DROPBLOCK_API int dropblock_status(dropblock_t *h, char *json, size_t len);

/* Asks the daemon to stop as on SIGTERM (only the daemon's own uid may). */
DROPBLOCK_API int dropblock_shutdown(dropblock_t *h, char *msg, size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif
