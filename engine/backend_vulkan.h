/* backend_vulkan.h: what the Vulkan backend's files share (private to engine/backend_vulkan.c,
 * vulkan_device.c, vulkan_memory.c and vulkan_bench.c): the pass, benchmark-step and binding
 * numbers, the device's state, and the functions one file calls in another.
 *
 *   vulkan_device.c  errors, enumerate, pipelines, tuning, release, prepare's device and its submission objects, the
 * subnormal and f16 probes and the warm-up vulkan_memory.c  memory types, buffers (kept, twins, imports), bindings
 *   vulkan_record.c  the commands of a submission (logged, then replayed into a command buffer
 *                    unless a kept one holds the same), barriers, staged copies, submitting
 *   vulkan_export.c  device memory exported as file descriptors (region.alloc) and jobs on it
 *   vulkan_bench.c   the benchmark: bench.comp's pipelines and measures
 *   backend_vulkan.c the pipeline cache, prepare, the job (run) and the vtable */
#ifndef DROPBLOCK_ENGINE_BACKEND_VULKAN_H
#define DROPBLOCK_ENGINE_BACKEND_VULKAN_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <vulkan/vulkan.h>

#include "backend.h"
#include "kernel_params.h"

/* the passes' pipelines; PASS_SCATTER and PASS_COUNT (scatter.comp, count.comp) are made and
 * warmed only on GPU tunings (d->scatter) */
enum { PASS_MASK, PASS_SCALE, PASS_APPLY, PASS_EXACT, PASS_FIXUP, PASS_SCATTER, PASS_COUNT, PASS_N };
/* bench.comp's steps: the copy, torchvision's kernels, the copy's tail */
/* clang-format off */
enum { BS_COPY, BS_BERNOULLI, BS_PAD, BS_POOL, BS_ONE_MINUS, BS_SUM_NOISE, BS_SUM_PART, BS_SCALE, BS_MUL, BS_COPY_TAIL, BS_N };
/* clang-format on */
/* descriptor bindings: the shaders' numbers (db_params.h DBB_*); bench.comp reuses them, and
 * B_AUX is its alone */
enum {
    B_PRM = DBB_PRM,
    B_MASK = DBB_MASK,
    B_AUX = DBB_AUX,
    B_KEPT = DBB_KEPT,
    B_X = DBB_X,
    B_Y = DBB_Y,
    B_SCALES = DBB_SCALES,
    B_FIXUP = DBB_FIXUP,
    B_N = DBB_COUNT
};
#define PUSH_BYTES 16u
/* the parameter words are a uniform buffer (resident: read through the constant path, never
 * copied per pass), every other binding a storage buffer */
#define vk_binding_type(i) ((i) == B_PRM ? VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER)
#define PRM_BYTES (DB_PRM_VEC4S * 16u) /* the uniform block's size (db_glsl.h) */

/* a command of a submission's log (vulkan_record.c); compared whole with memcmp */
enum vk_op_kind { OP_PUSH, OP_DISPATCH, OP_BARRIER, OP_FILL, OP_COPY };
struct vk_op {
    uint32_t kind;
    uint32_t w[4];   /* push: the words; dispatch: groups; barrier: src and dst stages and accesses; fill: value */
    VkPipeline pipe; /* dispatch */
    VkBuffer a, b;   /* copy: source, destination; fill: b */
    uint64_t bytes;  /* copy, fill */
    uint64_t a_off, b_off; /* copy: where in a and b */
};

/* a submission's descriptor bindings: the buffers, x's and y's offsets and their range */
struct vk_binding {
    VkBuffer bufs[B_N];
    VkDeviceSize xoff, yoff, range;
};

/* a kept command buffer, its descriptor set, and the bindings and log it was recorded from
 * (valid while epoch is the device's) */
#define VK_SLOTS 8
struct vk_slot {
    VkCommandBuffer cmd;
    VkDescriptorSet set;
    struct vk_binding bind;
    struct vk_op *ops;
    uint32_t nops, cap;
    uint64_t epoch, last_use;
};

struct vk_inst {
    VkInstance inst;
    int refs; /* devices alive from this instance; enumerate and release run on the engine's thread */
};

struct vk_buf {
    VkBuffer buf;
    VkDeviceMemory mem;
    void *map; /* the mapped memory: buf's, or on a staged device its twin's (NULL: none) */
    VkDeviceSize size;
    VkBuffer twin; /* staged devices: the host-visible copy of a DEVICE_LOCAL buffer the host uses */
    VkDeviceMemory twin_mem;
};

/* a host region's import kept between jobs (vk_region_import), with a reference on the region */
#define VK_KEPT_IMPORTS 8
struct vk_kept_import {
    struct db_host_region *r; /* NULL: a free entry */
    struct vk_buf b;
    uint64_t last_use;
};

struct vk_dev {
    struct vk_inst *vi;
    VkPhysicalDevice pd;
    const struct db_knobs *knobs; /* the engine's (knobs.h) */
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties mem;
    int has_int64;
    int64_t qfam;          /* -1: no compute queue */
    uint32_t subgroup;     /* VkPhysicalDeviceSubgroupProperties::subgroupSize, 0 if unknown */
    int has_import;        /* VK_EXT_external_memory_host */
    uint64_t import_align; /* minImportedHostPointerAlignment */
    int staged;            /* buffers DEVICE_LOCAL, copied to and from host-visible twins */
    int hwexact;           /* probe_exact found subnormal products exact: no fixup pass */
    int hwhalf;            /* probe_half found unpackHalf2x16/packHalf2x16 exact: apply.comp's HWHALF=1 build applies */
    int half_probe;        /* the half probe: 1 passed, 0 failed, -1 not run (DROPBLOCK_VULKAN_FIXUP=1) */

    VkDevice dev;
    VkQueue queue;
    VkDescriptorSetLayout dsl;
    VkPipelineLayout layout;
    VkPipeline pipes[PASS_N];
    VkPipeline bench[BS_N]; /* made on the first benchmark */
    VkPipelineCache cache;
    VkDescriptorPool dpool; /* the kept command buffers' sets */
    VkCommandPool cpool;
    VkFence fence;
    /* the submission being logged and the kept command buffers (vulkan_record.c) */
    struct vk_op *ops;
    uint32_t nops, cap_ops;
    int ops_failed; /* the log could not grow: vk_submit fails */
    int pushed_own; /* a step pushed its own words: the passes' are pushed again */
    struct vk_slot slots[VK_SLOTS];
    uint64_t epoch;         /* bumped by vk_forget_recordings: older slots are stale */
    uint64_t uses;          /* submissions (the slots' least recent use) */
    int recorded;           /* the last submission recorded its command buffer (0: reused a kept one) */
    struct vk_binding bind; /* the bindings of the submissions that follow (vk_bind_all) */
    struct vk_kept_import kept[VK_KEPT_IMPORTS];
    uint64_t kept_uses;
    /* the recording's barriers (vulkan_record.c, vk_sync and vk_record) */
    VkPipelineStageFlags bar_src; /* stages since the last barrier, with its destination stages */
    VkAccessFlags bar_wr;         /* writes since the last barrier */
    VkPipelineStageFlags bar_dst; /* requested: the stages that wait, and their accesses */
    VkAccessFlags bar_dst_access;
    VkAccessFlags sub_wr; /* writes of the submission (the host's barrier at its end) */
    int bar_passes;       /* a command other than a copy for the host since the last barrier */
    PFN_vkGetMemoryHostPointerPropertiesEXT get_host_ptr_props;
    int has_export; /* VK_KHR_external_memory_fd: region.alloc's memory (vulkan_export.c) */
    PFN_vkGetMemoryFdKHR get_memory_fd;
    pthread_mutex_t export_lock; /* the live exports and semaphores (made on any thread) */
    struct vk_export *exports;
    /* timeline semaphores (vulkan_semaphore.c): VK_KHR_timeline_semaphore, and exported as fds
     * where VK_KHR_external_semaphore_fd is offered */
    int has_timeline, has_sem_export;
    PFN_vkGetSemaphoreFdKHR get_semaphore_fd;
    PFN_vkGetSemaphoreCounterValueKHR sem_counter;
    PFN_vkWaitSemaphoresKHR sem_wait;
    PFN_vkSignalSemaphoreKHR sem_signal;
    struct vk_sem *sems;
    VkSemaphore wait_sem; /* the running job's wait, attached to its next submission (then cleared) */
    uint64_t wait_value;
    uint8_t device_uuid[16], driver_uuid[16];
    /* tuning (prepare) */
    uint32_t local;       /* work-group size of every pipeline */
    uint32_t mask_done;   /* mask.comp's completion count (CPU devices, which cut loops); 0: none (GPUs) */
    uint32_t tile_rows;   /* mask rows a tile */
    uint32_t cand_budget; /* candidates a tile, about */
    uint32_t item_cands;  /* candidates an invocation of the mask pass, about */
    uint32_t scatter;     /* candidate blocks an invocation of the scatter pass, about (struct db_tuning's
                           * scatter); 0: the tiles always (CPU devices) */
    uint64_t mask_reruns; /* mask passes rerun with the worst-case budget (mask_pass) */
    /* buffers kept between jobs, by binding (B_Y is B_X: the apply runs in place) */
    struct vk_buf bufs[B_N];
    /* warm-up (warm_up): passes dispatched at least once (bit 1 << PASS_*), and those a job
     * dispatched first, after the warm-up (each may have paid the driver's compile) */
    unsigned dispatched;
    int warm; /* the passes the warm-up dispatched (0: none yet) */
    uint64_t cold;
};

/* SPIR-V compiled into the binary */
struct spv {
    const uint32_t *code;
    size_t size;
    const char *name;
};
extern const struct spv vk_bench_spv[BS_N]; /* vulkan_bench.c */

/* vulkan_device.c */
int vk_fail(char *msg, size_t len, VkResult r, const char *what);
int vk_enumerate(const struct db_backend_config *cfg, struct db_device *out, size_t cap, char *msg, size_t len);
VkResult vk_make_pipeline(struct vk_dev *d, const struct spv *spv, VkPipeline *out);
void vk_release(struct db_device *dev);
int vk_prepare_device(struct vk_dev *d, char *msg, size_t len);
int vk_prepare_submission(struct vk_dev *d, char *msg, size_t len);

/* vulkan_memory.c */
int vk_buf_make(struct vk_dev *d, struct vk_buf *b, uint64_t size, const char *what, int local, int twin, char *msg,
                size_t len);
int vk_buf_ensure(struct vk_dev *d, int i, uint64_t size, char *msg, size_t len);
int vk_buf_import(struct vk_dev *d, struct vk_buf *b, const void *p, uint64_t bytes);
void vk_bind_all(struct vk_dev *d, VkBuffer xb, VkBuffer yb);
void vk_bind_at(struct vk_dev *d, VkBuffer xb, uint64_t xoff, VkBuffer yb, uint64_t yoff, uint64_t range);
void vk_write_set(struct vk_dev *d, VkDescriptorSet set, const struct vk_binding *b);
void vk_buf_free(struct vk_dev *d, struct vk_buf *b);
const struct vk_buf *vk_region_import(struct vk_dev *d, struct db_host_region *r);
void vk_drop_imports(struct vk_dev *d, int all);

/* vulkan_record.c */
int vk_record_prepare(struct vk_dev *d, char *msg, size_t len);
void vk_record_release(struct vk_dev *d);
void vk_forget_recordings(struct vk_dev *d);
uint32_t vk_groups_for(const struct vk_dev *d, uint64_t n);
int vk_begin(struct vk_dev *d, char *msg, size_t len);
void vk_sync(struct vk_dev *d, VkPipelineStageFlags dst_stage, VkAccessFlags dst_access);
void vk_record(struct vk_dev *d, VkPipelineStageFlags stage, VkAccessFlags writes, int for_host);
void vk_step(struct vk_dev *d, VkPipeline pipe, uint64_t n, int first);
void vk_step_push(struct vk_dev *d, VkPipeline pipe, const uint32_t words[4], uint64_t n, int first);
void vk_fill(struct vk_dev *d, VkBuffer b, uint64_t bytes, uint32_t value);
void vk_copy(struct vk_dev *d, VkBuffer src, VkBuffer dst, uint64_t bytes, int after_passes);
void vk_copy_at(struct vk_dev *d, VkBuffer src, uint64_t src_off, VkBuffer dst, uint64_t dst_off, uint64_t bytes,
                int after_passes);
void vk_to_device(struct vk_dev *d, int i, uint64_t bytes);
void vk_to_host(struct vk_dev *d, int i, uint64_t bytes);
int vk_submit(struct vk_dev *d, char *msg, size_t len);

/* vulkan_export.c */
struct vk_export {
    VkDeviceMemory mem;
    VkBuffer buf;
    uint64_t size;                 /* the bytes asked for */
    struct vk_export *prev, *next; /* the device's live exports (freed at its release if not before) */
};
void vk_export_release_all(struct vk_dev *d);
int vk_export_alloc(struct db_device *dev, uint64_t bytes, void **handle, struct db_export_info *info, char *msg,
                    size_t len);
void vk_export_free(struct db_device *dev, void *handle);
int vk_can_export(const struct db_device *dev, char *why, size_t len);

/* vulkan_semaphore.c */
struct vk_sem;
int vk_can_semaphore(const struct db_device *dev, int exported, char *why, size_t len);
int vk_sem_create(struct db_device *dev, int exported, void **handle, struct db_semaphore_info *info, char *msg,
                  size_t len);
void vk_sem_free(struct db_device *dev, void *handle);
void vk_sem_release_all(struct vk_dev *d);
int vk_sem_value(struct db_device *dev, void *handle, uint64_t *value, char *msg, size_t len);
int vk_sem_wait(struct db_device *dev, void *handle, uint64_t value, uint64_t timeout_ns, char *msg, size_t len);
int vk_sem_signal(struct db_device *dev, void *handle, uint64_t value, int queued, char *msg, size_t len);
void vk_sem_job_begin(struct vk_dev *d, const struct db_job_mem *mem);

/* vulkan_bench.c */
int vk_bench(struct db_device *dev, const struct db_plan *pl, const void *xh, unsigned whats, int warmup, int reps,
             double *us, char *msg, size_t len);

/* backend_vulkan.c: the job and what the benchmark's mask measure shares with it */
uint64_t vk_kept_bytes(const uint32_t *prm);
void vk_record_mask(struct vk_dev *d, const uint32_t *prm);
struct db_tuning vk_job_tuning(const struct vk_dev *d, const struct db_plan *pl, int safe);
int vk_mask_done(const struct vk_dev *d, const uint32_t *prm);
int vk_job(struct vk_dev *d, struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
           int resident, dropblock_result *res, char *msg, size_t len);

#endif
