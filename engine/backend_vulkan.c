/* backend_vulkan.c: the Vulkan backend; every Vulkan call of the project lives in this file.
 *
 * enumerate makes one VkInstance (Vulkan 1.1) and lists every physical device; the devices share
 * the instance through a reference count, so it lives while any of them does. prepare makes a
 * logical device with one compute queue (and VK_EXT_external_memory_host where offered), one
 * descriptor set layout whose eight storage buffers are shared by the passes (binding numbers
 * as in shaders/db_glsl.h), the compute pipelines from the SPIR-V compiled into the binary with
 * the work-group size as a specialization constant chosen from the subgroup size, and a
 * pipeline cache kept on disk under the cache directory. run follows tests/test_passes.c: a job
 * of one chunk is one submission (mask, total, scale, apply, barriers between) with no host
 * round trip; a larger one runs pass 1 chunk by chunk, the scales on the host, then pass 3.
 *
 * Buffers are kept by the device between jobs and grown when a job needs more. Where the device
 * has memory the host cannot map (a discrete GPU: "staged"), every buffer is DEVICE_LOCAL, so
 * that the passes run at the device's memory speed, and the ones the host reads or writes (the
 * parameter words, x, the mask, the counts, the scales) have a mapped HOST_VISIBLE twin that the
 * submission copies from before the passes and to after them. The copy of x onto the device is
 * recorded after the mask pass with no barrier between them (the mask pass does not read x),
 * so the device may overlap the two. Elsewhere (integrated GPUs, CPUs) buffers are HOST_VISIBLE |
 * HOST_COHERENT and mapped, and the passes use them directly. A one-chunk job whose tensors are
 * aligned to minImportedHostPointerAlignment uses them through VK_EXT_external_memory_host
 * instead of copying them on the host: the passes read and write them in place, or on a staged
 * device the copies onto and off the device take them as source and destination. With several
 * chunks the mask bits wait on the host between pass 1 and pass 3 (they are 1/32 of f32 data).
 *
 * Test/debug knobs: DROPBLOCK_VULKAN_MAX_BUFFER=<bytes> caps every device's max_buffer (at
 * least 256), so that small tensors take the chunked path; the tests run the matrix with 4096.
 * DROPBLOCK_VULKAN_COPY=1 never imports host memory. DROPBLOCK_VULKAN_STAGE=1 stages every device
 * (the tests check the staged path on lavapipe), =0 none. DROPBLOCK_VULKAN_FIXUP=1 takes the
 * subnormal fixup pass even where the probe found the device exact. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vulkan/vulkan.h>

#include "backend.h"
#include "clock.h"
#include "fp.h"
#include "kernel_cache.h"
#include "kernel_params.h"
#include "msg.h"

#include "spv_apply.h"
#include "spv_bench0.h"
#include "spv_bench1.h"
#include "spv_bench2.h"
#include "spv_bench3.h"
#include "spv_bench4.h"
#include "spv_bench5.h"
#include "spv_bench6.h"
#include "spv_bench7.h"
#include "spv_bench8.h"
#include "spv_bench9.h"
#include "spv_exact.h"
#include "spv_fixup.h"
#include "spv_mask.h"
#include "spv_probe.h"
#include "spv_scale.h"

#include "db_baseline_params.h"

enum { PASS_MASK, PASS_SCALE, PASS_APPLY, PASS_EXACT, PASS_FIXUP, PASS_N };
/* bench.comp's steps: the copy, torchvision's kernels, the copy's tail */
enum { BS_COPY, BS_BERNOULLI, BS_PAD, BS_POOL, BS_ONE_MINUS, BS_SUM_NOISE, BS_SUM_PART, BS_SCALE, BS_MUL, BS_COPY_TAIL, BS_N };
/* descriptor bindings: the shaders' numbers (db_params.h DBB_*); bench.comp reuses them, and
 * B_AUX is its alone */
enum { B_PRM = DBB_PRM, B_MASK = DBB_MASK, B_AUX = DBB_AUX, B_KEPT = DBB_KEPT, B_X = DBB_X, B_Y = DBB_Y,
       B_SCALES = DBB_SCALES, B_FIXUP = DBB_FIXUP, B_N = DBB_COUNT };
#define PUSH_BYTES 16u

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

struct vk_dev {
    struct vk_inst *vi;
    VkPhysicalDevice pd;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties mem;
    int has_int64;
    int64_t qfam; /* -1: no compute queue */
    uint32_t subgroup;      /* VkPhysicalDeviceSubgroupProperties::subgroupSize, 0 if unknown */
    int has_import;         /* VK_EXT_external_memory_host */
    uint64_t import_align;  /* minImportedHostPointerAlignment */
    int staged;             /* buffers DEVICE_LOCAL, copied to and from host-visible twins */
    int hwexact;            /* probe_exact found subnormal products exact: no fixup pass */

    VkDevice dev;
    VkQueue queue;
    VkDescriptorSetLayout dsl;
    VkPipelineLayout layout;
    VkPipeline pipes[PASS_N];
    VkPipeline bench[BS_N]; /* made on the first benchmark */
    VkPipelineCache cache;
    VkDescriptorPool dpool;
    VkDescriptorSet set;
    VkCommandPool cpool;
    VkCommandBuffer cmd;
    VkFence fence;
    PFN_vkGetMemoryHostPointerPropertiesEXT get_host_ptr_props;
    /* tuning (prepare) */
    uint32_t local;         /* work-group size of every pipeline */
    uint32_t tile_rows;     /* mask rows a tile */
    uint32_t cand_budget;   /* candidates a tile, about */
    uint32_t item_cands;    /* candidates an invocation of the mask pass, about */
    uint64_t mask_reruns;   /* mask passes rerun with the worst-case budget (mask_pass) */
    /* buffers kept between jobs, by binding (B_Y is B_X: the apply runs in place) */
    struct vk_buf bufs[B_N];
    /* warm-up (warm_up): passes dispatched at least once (bit 1 << PASS_*), and those a job
     * dispatched first, after the warm-up (each may have paid the driver's compile) */
    unsigned dispatched;
    int warm;
    uint64_t cold;
};

static const char *vk_result_name(VkResult r, char *buf, size_t len)
{
    switch (r) {
#define NAME(x) case x: return #x;
    NAME(VK_SUCCESS) NAME(VK_NOT_READY) NAME(VK_TIMEOUT) NAME(VK_EVENT_SET) NAME(VK_EVENT_RESET)
    NAME(VK_INCOMPLETE) NAME(VK_ERROR_OUT_OF_HOST_MEMORY) NAME(VK_ERROR_OUT_OF_DEVICE_MEMORY)
    NAME(VK_ERROR_INITIALIZATION_FAILED) NAME(VK_ERROR_DEVICE_LOST) NAME(VK_ERROR_MEMORY_MAP_FAILED)
    NAME(VK_ERROR_LAYER_NOT_PRESENT) NAME(VK_ERROR_EXTENSION_NOT_PRESENT) NAME(VK_ERROR_FEATURE_NOT_PRESENT)
    NAME(VK_ERROR_INCOMPATIBLE_DRIVER) NAME(VK_ERROR_TOO_MANY_OBJECTS) NAME(VK_ERROR_FORMAT_NOT_SUPPORTED)
    NAME(VK_ERROR_FRAGMENTED_POOL) NAME(VK_ERROR_OUT_OF_POOL_MEMORY) NAME(VK_ERROR_INVALID_EXTERNAL_HANDLE)
#undef NAME
    default:
        snprintf(buf, len, "VkResult %d", (int)r);
        return buf;
    }
}

/* "what: VK_ERROR_..." into msg; the DROPBLOCK_E* code for r */
static int vk_fail(char *msg, size_t len, VkResult r, const char *what)
{
    char tmp[32];
    db_msg(msg, len, "%s: %s", what, vk_result_name(r, tmp, sizeof tmp));
    if (r == VK_ERROR_OUT_OF_HOST_MEMORY || r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_TOO_MANY_OBJECTS)
        return DROPBLOCK_EEXHAUSTED;
    if (r == VK_ERROR_DEVICE_LOST) return DROPBLOCK_EUNAVAILABLE;
    return DROPBLOCK_EINTERNAL;
}

static void inst_unref(struct vk_inst *vi)
{
    if (vi && --vi->refs == 0) {
        vkDestroyInstance(vi->inst, NULL);
        free(vi);
    }
}

/* ---- enumerate ------------------------------------------------------------------------- */

static void vendor_name(uint32_t id, char *buf, size_t len)
{
    switch (id) {
    case 0x10DE: snprintf(buf, len, "NVIDIA"); break;
    case 0x1002: snprintf(buf, len, "AMD"); break;
    case 0x8086: snprintf(buf, len, "Intel"); break;
    case 0x10005: snprintf(buf, len, "Mesa"); break;
    default: snprintf(buf, len, "0x%04" PRIx32, id); break;
    }
}

static int has_extension(VkPhysicalDevice pd, const char *name)
{
    uint32_t n = 0;
    if (vkEnumerateDeviceExtensionProperties(pd, NULL, &n, NULL) != VK_SUCCESS || n == 0) return 0;
    VkExtensionProperties *e = calloc(n, sizeof *e);
    if (!e) return 0;
    int found = 0;
    VkResult r = vkEnumerateDeviceExtensionProperties(pd, NULL, &n, e);
    if (r == VK_SUCCESS || r == VK_INCOMPLETE)
        for (uint32_t i = 0; i < n && !found; i++) found = !strcmp(e[i].extensionName, name);
    free(e);
    return found;
}

/* DROPBLOCK_VULKAN_MAX_BUFFER, or UINT64_MAX when unset or unreadable */
static uint64_t env_max_buffer(void)
{
    const char *s = getenv("DROPBLOCK_VULKAN_MAX_BUFFER");
    if (!s || !*s) return UINT64_MAX;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s) return UINT64_MAX;
    return v < 256 ? 256 : (uint64_t)v; /* the parameter words alone take 184 bytes */
}

static void describe(struct vk_dev *d, dropblock_device_info *info)
{
    VkPhysicalDevice pd = d->pd;
    vkGetPhysicalDeviceProperties(pd, &d->props);
    vkGetPhysicalDeviceMemoryProperties(pd, &d->mem);
    VkPhysicalDeviceFeatures feat;
    vkGetPhysicalDeviceFeatures(pd, &feat);
    d->has_int64 = feat.shaderInt64 == VK_TRUE;

    /* a compute queue; one without graphics may run beside a display's work */
    d->qfam = -1;
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, NULL);
    VkQueueFamilyProperties *qf = nq ? calloc(nq, sizeof *qf) : NULL;
    if (qf) {
        vkGetPhysicalDeviceQueueFamilyProperties(pd, &nq, qf);
        for (uint32_t i = 0; i < nq; i++) {
            if (!(qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) || qf[i].queueCount == 0) continue;
            if (d->qfam < 0 || !(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) d->qfam = i;
            if (!(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) break;
        }
        free(qf);
    }

    d->has_import = has_extension(pd, VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME);
    const VkPhysicalDeviceProperties *p = &d->props;
    snprintf(info->api, sizeof info->api, "vulkan");
    vendor_name(p->vendorID, info->vendor, sizeof info->vendor);
    snprintf(info->name, sizeof info->name, "%s", p->deviceName);
    switch (p->deviceType) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: info->kind = DROPBLOCK_DEVICE_DISCRETE; break;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: info->kind = DROPBLOCK_DEVICE_INTEGRATED; break;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: info->kind = DROPBLOCK_DEVICE_CPU_API; break;
    default: info->kind = DROPBLOCK_DEVICE_OTHER; break;
    }
    if (p->vendorID == 0x10DE) /* NVIDIA packs 10.8.8.6 bits */
        snprintf(info->driver, sizeof info->driver, "%u.%u.%u", p->driverVersion >> 22,
                 (p->driverVersion >> 14) & 0xFFu, (p->driverVersion >> 6) & 0xFFu);
    else
        snprintf(info->driver, sizeof info->driver, "%u.%u.%u", VK_VERSION_MAJOR(p->driverVersion),
                 VK_VERSION_MINOR(p->driverVersion), VK_VERSION_PATCH(p->driverVersion));
    uint64_t maxbuf = p->limits.maxStorageBufferRange;
    info->uuid[0] = 0;

    /* the 1.1 property structures may only be asked of a 1.1 device */
    if (p->apiVersion >= VK_API_VERSION_1_1) {
        VkPhysicalDeviceDriverProperties drv = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
        VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
        VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
        VkPhysicalDeviceExternalMemoryHostPropertiesEXT hp = {
            .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_MEMORY_HOST_PROPERTIES_EXT, .pNext = &sg};
        VkPhysicalDeviceIDProperties idp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES,
                                            .pNext = d->has_import ? (void *)&hp : (void *)&sg};
        m3.pNext = &idp;
        int have_drv = p->apiVersion >= VK_API_VERSION_1_2 || has_extension(pd, VK_KHR_DRIVER_PROPERTIES_EXTENSION_NAME);
        if (have_drv) drv.pNext = &m3;
        VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                          .pNext = have_drv ? (void *)&drv : (void *)&m3};
        vkGetPhysicalDeviceProperties2(pd, &p2);
        d->subgroup = sg.subgroupSize;
        d->import_align = hp.minImportedHostPointerAlignment;
        if (d->import_align == 0 || (d->import_align & (d->import_align - 1))) d->has_import = 0;
        if (have_drv && drv.driverName[0])
            snprintf(info->driver, sizeof info->driver, "%s%s%s", drv.driverName, drv.driverInfo[0] ? " " : "",
                     drv.driverInfo);
        const uint8_t *u = idp.deviceUUID;
        snprintf(info->uuid, sizeof info->uuid,
                 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3],
                 u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
        if (m3.maxMemoryAllocationSize < maxbuf) maxbuf = m3.maxMemoryAllocationSize;
    }
    uint64_t cap = env_max_buffer();
    if (cap < maxbuf) maxbuf = cap;
    /* a multiple of 4, so that buffers rounded up to whole words stay within the limit */
    info->max_buffer = maxbuf & ~UINT64_C(3);
    info->global_mem = 0;
    for (uint32_t i = 0; i < d->mem.memoryHeapCount; i++)
        if ((d->mem.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) && d->mem.memoryHeaps[i].size > info->global_mem)
            info->global_mem = d->mem.memoryHeaps[i].size;
}

static int vk_enumerate(const struct db_backend_config *cfg, struct db_device *out, size_t cap, char *msg, size_t len)
{
    (void)cfg;
    VkApplicationInfo app = {
        .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
        .pApplicationName = "dropblockd",
        .applicationVersion = VK_MAKE_VERSION(DROPBLOCK_VERSION_MAJOR, DROPBLOCK_VERSION_MINOR, 0),
        .pEngineName = "dropblockd",
        .engineVersion = VK_MAKE_VERSION(DROPBLOCK_VERSION_MAJOR, DROPBLOCK_VERSION_MINOR, 0),
        .apiVersion = VK_API_VERSION_1_1,
    };
    VkInstanceCreateInfo ici = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    VkInstance inst;
    VkResult r = vkCreateInstance(&ici, NULL, &inst);
    if (r != VK_SUCCESS) {
        /* no driver is not an error: the machine simply has no Vulkan device */
        vk_fail(msg, len, r, "vkCreateInstance");
        return 0;
    }
    uint32_t n = 0;
    r = vkEnumeratePhysicalDevices(inst, &n, NULL);
    VkPhysicalDevice *pds = r == VK_SUCCESS && n ? calloc(n, sizeof *pds) : NULL;
    struct vk_inst *vi = pds ? calloc(1, sizeof *vi) : NULL;
    if (r != VK_SUCCESS || n == 0 || !vi) {
        if (r != VK_SUCCESS) vk_fail(msg, len, r, "vkEnumeratePhysicalDevices");
        else if (n == 0) db_msg(msg, len, "no Vulkan physical device");
        else db_msg(msg, len, "out of memory");
        free(pds);
        vkDestroyInstance(inst, NULL);
        return 0;
    }
    vi->inst = inst;
    r = vkEnumeratePhysicalDevices(inst, &n, pds);
    int k = 0;
    if (r == VK_SUCCESS || r == VK_INCOMPLETE) {
        for (uint32_t i = 0; i < n && (size_t)k < cap; i++) {
            struct vk_dev *d = calloc(1, sizeof *d);
            if (!d) break;
            d->vi = vi;
            vi->refs++;
            d->pd = pds[i];
            memset(&out[k], 0, sizeof out[k]);
            describe(d, &out[k].info);
            out[k].ops = &db_backend_vulkan;
            out[k].priv = d;
            k++;
        }
    } else {
        vk_fail(msg, len, r, "vkEnumeratePhysicalDevices");
    }
    free(pds);
    if (vi->refs == 0) {
        vkDestroyInstance(inst, NULL);
        free(vi);
    }
    return k;
}

/* ---- pipeline cache -------------------------------------------------------------------- */

/* FNV-1a of the embedded SPIR-V: a rebuilt shader starts a new file instead of piling its
 * pipelines onto the old ones in the same cache */
static const struct spv { const uint32_t *code; size_t size; const char *name; } pass_spv[PASS_N] = {
    {db_spv_mask, sizeof db_spv_mask, "mask"},    {db_spv_scale, sizeof db_spv_scale, "scale"},
    {db_spv_apply, sizeof db_spv_apply, "apply"},
    {db_spv_exact, sizeof db_spv_exact, "exact"}, {db_spv_fixup, sizeof db_spv_fixup, "fixup"},
};
static const struct spv bench_spv[BS_N] = {
    {db_spv_bench0, sizeof db_spv_bench0, "bench copy"},   {db_spv_bench1, sizeof db_spv_bench1, "bench bernoulli"},
    {db_spv_bench2, sizeof db_spv_bench2, "bench pad"},    {db_spv_bench3, sizeof db_spv_bench3, "bench pool"},
    {db_spv_bench4, sizeof db_spv_bench4, "bench 1-x"},    {db_spv_bench5, sizeof db_spv_bench5, "bench sum"},
    {db_spv_bench6, sizeof db_spv_bench6, "bench sum2"},   {db_spv_bench7, sizeof db_spv_bench7, "bench scale"},
    {db_spv_bench8, sizeof db_spv_bench8, "bench mul"},    {db_spv_bench9, sizeof db_spv_bench9, "bench copy tail"},
};

static uint64_t spirv_hash(void)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (int b = 0; b < PASS_N + BS_N; b++) {
        const struct spv *s = b < PASS_N ? &pass_spv[b] : &bench_spv[b - PASS_N];
        for (size_t i = 0; i < s->size; i++) h = (h ^ ((const uint8_t *)s->code)[i]) * UINT64_C(0x100000001b3);
    }
    return h;
}

#define CACHE_MAGIC "DBVKPIPE"

/* the entry's key: the shaders and everything that makes a driver reject a cache */
static uint64_t cache_key(const struct vk_dev *d)
{
    uint64_t spv = spirv_hash();
    uint64_t h = db_kcache_hash(DB_KCACHE_HASH_INIT, &spv, sizeof spv);
    h = db_kcache_hash(h, d->props.pipelineCacheUUID, VK_UUID_SIZE);
    h = db_kcache_hash(h, &d->props.vendorID, sizeof d->props.vendorID);
    h = db_kcache_hash(h, &d->props.deviceID, sizeof d->props.deviceID);
    return db_kcache_hash(h, &d->props.driverVersion, sizeof d->props.driverVersion);
}

/* cache file named by the parts of its key */
static void cache_path(const struct vk_dev *d, const char *dir, char *buf, size_t len)
{
    char uuid[33];
    for (unsigned i = 0; i < VK_UUID_SIZE; i++) snprintf(uuid + 2 * i, 3, "%02x", d->props.pipelineCacheUUID[i]);
    snprintf(buf, len, "%s/vulkan-%016" PRIx64 "-%s-%04" PRIx32 "-%04" PRIx32 "-%08" PRIx32 ".pipelinecache", dir,
             spirv_hash(), uuid, d->props.vendorID, d->props.deviceID, d->props.driverVersion);
}

/* The pipeline cache data of the entry at path (kernel_cache.c checks the entry) if the data's
 * own header matches this device (the driver checks again), else NULL. */
static void *cache_load(const struct vk_dev *d, const char *path, size_t *size)
{
    void *buf = db_kcache_load(path, CACHE_MAGIC, cache_key(d), size);
    uint32_t h[4];
    if (buf && *size >= 16 + VK_UUID_SIZE) {
        memcpy(h, buf, sizeof h);
        if (h[0] >= 16 + VK_UUID_SIZE && h[1] == VK_PIPELINE_CACHE_HEADER_VERSION_ONE && h[2] == d->props.vendorID &&
            h[3] == d->props.deviceID && !memcmp((char *)buf + 16, d->props.pipelineCacheUUID, VK_UUID_SIZE))
            return buf;
    }
    free(buf);
    *size = 0;
    return NULL;
}

/* Writes the cache's data as the entry at path when it differs from what was loaded (old).
 * Failure only costs the next start its compile time, so it is silent. */
static void cache_save(const struct vk_dev *d, const char *dir, const char *path, const void *old, size_t old_size)
{
    size_t size = 0;
    if (vkGetPipelineCacheData(d->dev, d->cache, &size, NULL) != VK_SUCCESS || size == 0) return;
    void *data = malloc(size);
    if (!data) return;
    VkResult r = vkGetPipelineCacheData(d->dev, d->cache, &size, data);
    if (r == VK_SUCCESS && !(old && old_size == size && !memcmp(old, data, size)))
        db_kcache_store(dir, path, CACHE_MAGIC, cache_key(d), data, size);
    free(data);
}

/* ---- prepare / release ----------------------------------------------------------------- */

/* A compute pipeline of spv with the work-group size d->local (specialization constant 0). */
static VkResult make_pipeline(struct vk_dev *d, const struct spv *spv, VkPipeline *out)
{
    VkShaderModuleCreateInfo smi = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, .codeSize = spv->size,
                                    .pCode = spv->code};
    VkShaderModule sm;
    VkResult r = vkCreateShaderModule(d->dev, &smi, NULL, &sm);
    if (r) return r;
    VkSpecializationMapEntry me = {.constantID = 0, .offset = 0, .size = sizeof(uint32_t)};
    VkSpecializationInfo si = {.mapEntryCount = 1, .pMapEntries = &me, .dataSize = sizeof d->local, .pData = &d->local};
    VkComputePipelineCreateInfo cpi = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                  .module = sm, .pName = "main", .pSpecializationInfo = &si},
        .layout = d->layout,
    };
    r = vkCreateComputePipelines(d->dev, d->cache, 1, &cpi, NULL, out);
    if (r) *out = VK_NULL_HANDLE;
    vkDestroyShaderModule(d->dev, sm, NULL);
    return r;
}

/* ---- tuning ----------------------------------------------------------------------------
 * Work groups of four subgroups (the queried subgroup size, 64 to 256 invocations); mask tiles
 * as tall as 2048 candidates allow on CPU devices (lavapipe runs invocations as SIMD lanes of a
 * few threads, so every Philox word is best made once, but it ends an invocation whose loops
 * pass 65535 iterations), of 8 rows and at most 4096 candidates on GPUs, for parallelism; small
 * tiles several to an invocation. */
static void choose_tuning(struct vk_dev *d)
{
    uint32_t sg = d->subgroup ? d->subgroup : 32, local = 4 * sg;
    if (local < 64) local = 64;
    if (local > 256) local = 256;
    if (local > d->props.limits.maxComputeWorkGroupSize[0]) local = d->props.limits.maxComputeWorkGroupSize[0];
    if (local > d->props.limits.maxComputeWorkGroupInvocations) local = d->props.limits.maxComputeWorkGroupInvocations;
    d->local = local ? local : 1;
    int cpu = d->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
    d->tile_rows = cpu ? UINT32_MAX : 8;
    d->cand_budget = cpu ? 2048 : 4096;
    d->item_cands = cpu ? 2048 : 256;
}

static int probe_exact(struct vk_dev *d);
static int warm_up(struct vk_dev *d, char *msg, size_t len);

static int vk_prepare(struct db_device *dev, const struct db_backend_config *cfg, char *msg, size_t len)
{
    struct vk_dev *d = dev->priv;
    VkResult r;
    if (d->props.apiVersion < VK_API_VERSION_1_1) {
        db_msg(msg, len, "Vulkan 1.1 required, device has %u.%u", VK_VERSION_MAJOR(d->props.apiVersion),
               VK_VERSION_MINOR(d->props.apiVersion));
        return DROPBLOCK_EUNAVAILABLE;
    }
    if (!d->has_int64) {
        db_msg(msg, len, "device lacks the shaderInt64 feature (the passes use 64-bit integers)");
        return DROPBLOCK_EUNAVAILABLE;
    }
    if (d->qfam < 0) {
        db_msg(msg, len, "device has no compute queue");
        return DROPBLOCK_EUNAVAILABLE;
    }
    choose_tuning(d);

    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                   .queueFamilyIndex = (uint32_t)d->qfam, .queueCount = 1, .pQueuePriorities = &prio};
    VkPhysicalDeviceFeatures feat = {.shaderInt64 = VK_TRUE};
    const char *exts[2] = {VK_KHR_EXTERNAL_MEMORY_EXTENSION_NAME, VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME};
    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .queueCreateInfoCount = 1,
                              .pQueueCreateInfos = &qci, .pEnabledFeatures = &feat};
    /* VK_KHR_external_memory is core in 1.1: only the host extension is named */
    if (d->has_import) {
        dci.enabledExtensionCount = 1;
        dci.ppEnabledExtensionNames = &exts[1];
    }
    if ((r = vkCreateDevice(d->pd, &dci, NULL, &d->dev))) {
        d->dev = VK_NULL_HANDLE;
        return vk_fail(msg, len, r, "vkCreateDevice");
    }
    vkGetDeviceQueue(d->dev, (uint32_t)d->qfam, 0, &d->queue);
    if (d->has_import)
        d->get_host_ptr_props =
            (PFN_vkGetMemoryHostPointerPropertiesEXT)vkGetDeviceProcAddr(d->dev, "vkGetMemoryHostPointerPropertiesEXT");
    if (!d->get_host_ptr_props) d->has_import = 0;
    /* staged where the device has memory the host cannot map (discrete GPUs) */
    const char *stage = getenv("DROPBLOCK_VULKAN_STAGE");
    for (uint32_t i = 0; i < d->mem.memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = d->mem.memoryTypes[i].propertyFlags;
        if ((f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) && !(f & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT)) d->staged = 1;
    }
    if (stage && (!strcmp(stage, "0") || !strcmp(stage, "1"))) d->staged = stage[0] == '1';

    VkDescriptorSetLayoutBinding b[B_N];
    for (int i = 0; i < B_N; i++)
        b[i] = (VkDescriptorSetLayoutBinding){.binding = (uint32_t)i, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                              .descriptorCount = 1, .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
    VkDescriptorSetLayoutCreateInfo dli = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                           .bindingCount = B_N, .pBindings = b};
    if ((r = vkCreateDescriptorSetLayout(d->dev, &dli, NULL, &d->dsl))) return vk_fail(msg, len, r, "vkCreateDescriptorSetLayout");
    VkPushConstantRange pcr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0, .size = PUSH_BYTES};
    VkPipelineLayoutCreateInfo pli = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, .setLayoutCount = 1,
                                      .pSetLayouts = &d->dsl, .pushConstantRangeCount = 1, .pPushConstantRanges = &pcr};
    if ((r = vkCreatePipelineLayout(d->dev, &pli, NULL, &d->layout))) return vk_fail(msg, len, r, "vkCreatePipelineLayout");

    /* the pipeline cache: any unreadable or foreign file just means starting empty */
    char dir[1024] = "", path[1100] = "";
    void *old = NULL;
    size_t old_size = 0;
    if (cfg && cfg->cache_dir && cfg->cache_dir[0] && strlen(cfg->cache_dir) < sizeof dir) {
        snprintf(dir, sizeof dir, "%s", cfg->cache_dir);
        cache_path(d, dir, path, sizeof path);
        old = cache_load(d, path, &old_size);
    }
    VkPipelineCacheCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO,
                                     .initialDataSize = old_size, .pInitialData = old};
    if (vkCreatePipelineCache(d->dev, &pci, NULL, &d->cache) != VK_SUCCESS) {
        pci.initialDataSize = 0;
        pci.pInitialData = NULL;
        if (vkCreatePipelineCache(d->dev, &pci, NULL, &d->cache) != VK_SUCCESS) d->cache = VK_NULL_HANDLE;
    }

    int rc = DROPBLOCK_OK;
    for (int i = 0; i < PASS_N && !rc; i++) {
        if ((r = make_pipeline(d, &pass_spv[i], &d->pipes[i]))) {
            char what[96];
            snprintf(what, sizeof what, "vkCreateComputePipelines(%s)", pass_spv[i].name);
            rc = vk_fail(msg, len, r, what);
        }
    }
    if (!rc && d->cache && path[0]) cache_save(d, dir, path, old, old_size);
    free(old);
    if (rc) return rc;

    VkDescriptorPoolSize ps = {.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = B_N};
    VkDescriptorPoolCreateInfo dpi = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, .maxSets = 1,
                                      .poolSizeCount = 1, .pPoolSizes = &ps};
    if ((r = vkCreateDescriptorPool(d->dev, &dpi, NULL, &d->dpool))) return vk_fail(msg, len, r, "vkCreateDescriptorPool");
    VkDescriptorSetAllocateInfo dai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO, .descriptorPool = d->dpool,
                                       .descriptorSetCount = 1, .pSetLayouts = &d->dsl};
    if ((r = vkAllocateDescriptorSets(d->dev, &dai, &d->set))) return vk_fail(msg, len, r, "vkAllocateDescriptorSets");

    VkCommandPoolCreateInfo cpci = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                    .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                    .queueFamilyIndex = (uint32_t)d->qfam};
    if ((r = vkCreateCommandPool(d->dev, &cpci, NULL, &d->cpool))) return vk_fail(msg, len, r, "vkCreateCommandPool");
    VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, .commandPool = d->cpool,
                                       .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY, .commandBufferCount = 1};
    if ((r = vkAllocateCommandBuffers(d->dev, &cai, &d->cmd))) return vk_fail(msg, len, r, "vkAllocateCommandBuffers");
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    if ((r = vkCreateFence(d->dev, &fci, NULL, &d->fence))) return vk_fail(msg, len, r, "vkCreateFence");
    const char *fixup = getenv("DROPBLOCK_VULKAN_FIXUP");
    d->hwexact = probe_exact(d) && !(fixup && !strcmp(fixup, "1"));
    return warm_up(d, msg, len);
}

static void buf_free(const struct vk_dev *d, struct vk_buf *b)
{
    if (b->map) vkUnmapMemory(d->dev, b->twin ? b->twin_mem : b->mem);
    vkDestroyBuffer(d->dev, b->buf, NULL);
    vkFreeMemory(d->dev, b->mem, NULL);
    vkDestroyBuffer(d->dev, b->twin, NULL);
    vkFreeMemory(d->dev, b->twin_mem, NULL);
    memset(b, 0, sizeof *b);
}

static void vk_release(struct db_device *dev)
{
    struct vk_dev *d = dev->priv;
    if (!d) return;
    if (d->dev) {
        vkDeviceWaitIdle(d->dev); /* nothing should run, but never free under the GPU */
        for (int i = 0; i < B_N; i++)
            if (i != B_Y) buf_free(d, &d->bufs[i]);
        vkDestroyFence(d->dev, d->fence, NULL);
        vkDestroyCommandPool(d->dev, d->cpool, NULL); /* frees the command buffer */
        vkDestroyDescriptorPool(d->dev, d->dpool, NULL); /* frees the set */
        for (int i = 0; i < PASS_N; i++) vkDestroyPipeline(d->dev, d->pipes[i], NULL);
        for (int i = 0; i < BS_N; i++) vkDestroyPipeline(d->dev, d->bench[i], NULL);
        vkDestroyPipelineCache(d->dev, d->cache, NULL);
        vkDestroyPipelineLayout(d->dev, d->layout, NULL);
        vkDestroyDescriptorSetLayout(d->dev, d->dsl, NULL);
        vkDestroyDevice(d->dev, NULL);
    }
    inst_unref(d->vi);
    free(d);
    dev->priv = NULL;
}

/* ---- buffers --------------------------------------------------------------------------- */

/* a host-visible coherent type among bits, cached if there is one (the host reads y back) */
static int64_t host_memory_type(const struct vk_dev *d, uint32_t bits)
{
    const VkMemoryPropertyFlags need = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    int64_t best = -1;
    for (uint32_t i = 0; i < d->mem.memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = d->mem.memoryTypes[i].propertyFlags;
        if (!(bits & (1u << i)) || (f & need) != need) continue;
        if (best < 0 || ((f & VK_MEMORY_PROPERTY_HOST_CACHED_BIT) &&
                         !(d->mem.memoryTypes[best].propertyFlags & VK_MEMORY_PROPERTY_HOST_CACHED_BIT)))
            best = i;
    }
    return best;
}

/* a DEVICE_LOCAL type among bits, one the host cannot map if there is one; else any */
static int64_t device_memory_type(const struct vk_dev *d, uint32_t bits)
{
    int64_t best = -1;
    int best_rank = -1;
    for (uint32_t i = 0; i < d->mem.memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = d->mem.memoryTypes[i].propertyFlags;
        int rank = !(f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) ? 0 : (f & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT) ? 1 : 2;
        if ((bits & (1u << i)) && rank > best_rank) {
            best = i;
            best_rank = rank;
        }
    }
    return best;
}

/* A buffer of size bytes with its memory, host-visible (mapped into *map) or DEVICE_LOCAL. */
static int buf_alloc(const struct vk_dev *d, VkBuffer *buf, VkDeviceMemory *mem, void **map, uint64_t size, int local,
                     const char *what, char *msg, size_t len)
{
    char call[128];
    VkResult r;
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = size,
                              .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                       VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                              .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    if ((r = vkCreateBuffer(d->dev, &bci, NULL, buf))) {
        *buf = VK_NULL_HANDLE;
        snprintf(call, sizeof call, "vkCreateBuffer(%s, %llu bytes)", what, (unsigned long long)size);
        return vk_fail(msg, len, r, call);
    }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, *buf, &req);
    int64_t type = local ? device_memory_type(d, req.memoryTypeBits) : host_memory_type(d, req.memoryTypeBits);
    if (type < 0) {
        db_msg(msg, len, "%s: no %s memory type for a storage buffer", what, local ? "device" : "host-visible coherent");
        return DROPBLOCK_EUNAVAILABLE;
    }
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = req.size,
                                .memoryTypeIndex = (uint32_t)type};
    if ((r = vkAllocateMemory(d->dev, &mai, NULL, mem))) {
        *mem = VK_NULL_HANDLE;
        snprintf(call, sizeof call, "vkAllocateMemory(%s%s, %llu bytes)", what, local ? ", device-local" : "",
                 (unsigned long long)req.size);
        return vk_fail(msg, len, r, call);
    }
    if ((r = vkBindBufferMemory(d->dev, *buf, *mem, 0))) {
        snprintf(call, sizeof call, "vkBindBufferMemory(%s)", what);
        return vk_fail(msg, len, r, call);
    }
    if (!local && (r = vkMapMemory(d->dev, *mem, 0, VK_WHOLE_SIZE, 0, map))) {
        *map = NULL;
        snprintf(call, sizeof call, "vkMapMemory(%s, %llu bytes)", what, (unsigned long long)req.size);
        return vk_fail(msg, len, r, call);
    }
    return DROPBLOCK_OK;
}

/* A storage buffer of at least size bytes (rounded up to 64): mapped, or where local DEVICE_LOCAL
 * with (twin) a mapped host-visible twin of the same size. */
static int buf_make(const struct vk_dev *d, struct vk_buf *b, uint64_t size, const char *what, int local, int twin,
                    char *msg, size_t len)
{
    memset(b, 0, sizeof *b);
    b->size = size < 64 ? 64 : (size + 63) & ~UINT64_C(63);
    void *unused = NULL;
    int rc = buf_alloc(d, &b->buf, &b->mem, local ? &unused : &b->map, b->size, local, what, msg, len);
    if (!rc && local && twin) rc = buf_alloc(d, &b->twin, &b->twin_mem, &b->map, b->size, 0, what, msg, len);
    if (rc) buf_free(d, b);
    return rc;
}

/* The device's buffer for binding i, kept from an earlier job when large enough. */
static int buf_ensure(struct vk_dev *d, int i, uint64_t size, char *msg, size_t len)
{
    static const char *const names[B_N] = {"params", "mask", "bench scratch", "kept", "x", "y", "scales", "fixup"};
    struct vk_buf *b = &d->bufs[i];
    if (b->buf && b->size >= size) return DROPBLOCK_OK;
    if (b->buf) buf_free(d, b);
    /* staged: all on the device (every invocation reads the parameter words: over PCIe that would
     * be a read of system memory each); the host reads or writes the parameters, x, the mask,
     * the counts and the scales through twins */
    const int local = d->staged;
    return buf_make(d, b, size, names[i], local,
                    local && (i == B_PRM || i == B_X || i == B_MASK || i == B_KEPT || i == B_SCALES), msg, len);
}

/* A buffer over the caller's memory (VK_EXT_external_memory_host), or 0 where the pointer, the
 * size or the driver does not allow one; the tensor is then copied. */
static int buf_import(const struct vk_dev *d, struct vk_buf *b, const void *p, uint64_t bytes)
{
    const char *copy = getenv("DROPBLOCK_VULKAN_COPY");
    memset(b, 0, sizeof *b);
    if (!d->has_import || (copy && !strcmp(copy, "1")) || ((uintptr_t)p & (d->import_align - 1)) || bytes % 4)
        return 0;
    uint64_t size = (bytes + d->import_align - 1) & ~(d->import_align - 1);
    VkMemoryHostPointerPropertiesEXT hp = {.sType = VK_STRUCTURE_TYPE_MEMORY_HOST_POINTER_PROPERTIES_EXT};
    if (d->get_host_ptr_props(d->dev, VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT, p, &hp) != VK_SUCCESS)
        return 0;
    VkExternalMemoryBufferCreateInfo ebi = {.sType = VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO,
                                            .handleTypes = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT};
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .pNext = &ebi, .size = size,
                              .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                       VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                              .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    if (vkCreateBuffer(d->dev, &bci, NULL, &b->buf) != VK_SUCCESS) { b->buf = VK_NULL_HANDLE; return 0; }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, b->buf, &req);
    int64_t type = host_memory_type(d, req.memoryTypeBits & hp.memoryTypeBits);
    VkImportMemoryHostPointerInfoEXT imp = {.sType = VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT,
                                            .handleType = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT,
                                            .pHostPointer = (void *)p};
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .pNext = &imp,
                                .allocationSize = size > req.size ? size : req.size, .memoryTypeIndex = (uint32_t)type};
    if (type < 0 || req.size > size || vkAllocateMemory(d->dev, &mai, NULL, &b->mem) != VK_SUCCESS) {
        b->mem = VK_NULL_HANDLE;
        buf_free(d, b);
        return 0;
    }
    if (vkBindBufferMemory(d->dev, b->buf, b->mem, 0) != VK_SUCCESS) {
        buf_free(d, b);
        return 0;
    }
    b->size = size;
    return 1;
}

/* Points the descriptor set at the device's buffers, x and y (maybe the same) at xb and yb. */
static void bind_all(struct vk_dev *d, VkBuffer xb, VkBuffer yb)
{
    VkDescriptorBufferInfo dbi[B_N];
    VkWriteDescriptorSet w[B_N];
    for (int i = 0; i < B_N; i++) {
        VkBuffer buf = i == B_X ? xb : i == B_Y ? yb : d->bufs[i].buf;
        dbi[i] = (VkDescriptorBufferInfo){.buffer = buf, .offset = 0, .range = VK_WHOLE_SIZE};
        w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstSet = d->set,
                                      .dstBinding = (uint32_t)i, .descriptorCount = 1,
                                      .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .pBufferInfo = &dbi[i]};
    }
    vkUpdateDescriptorSets(d->dev, B_N, w, 0, NULL);
}

/* ---- recording and submitting ---------------------------------------------------------- */

/* workgroups for n invocations; the shaders loop over the rest (grid stride) */
static uint32_t groups_for(const struct vk_dev *d, uint64_t n)
{
    uint64_t g = (n + d->local - 1) / d->local, cap = d->props.limits.maxComputeWorkGroupCount[0];
    if (g > cap) g = cap;
    return g ? (uint32_t)g : 1u;
}

static void barrier(VkCommandBuffer cmd, VkPipelineStageFlags src_stage, VkPipelineStageFlags dst_stage,
                    VkAccessFlags dst_access)
{
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = dst_access};
    vkCmdPipelineBarrier(cmd, src_stage, dst_stage, 0, 1, &mb, 0, NULL, 0, NULL);
}

/* Staged devices: records the copy of bytes from src to dst. The steps' barriers (step) order
 * a copy before the passes recorded after it; after_passes puts one after the passes before it. */
static void copy(struct vk_dev *d, VkBuffer src, VkBuffer dst, uint64_t bytes, int after_passes)
{
    if (!bytes) return;
    if (after_passes)
        barrier(d->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT);
    VkBufferCopy c = {.srcOffset = 0, .dstOffset = 0, .size = bytes};
    vkCmdCopyBuffer(d->cmd, src, dst, 1, &c);
}

/* the host's writes to binding i's twin (its first bytes) onto the device, before the passes */
static void to_device(struct vk_dev *d, int i, uint64_t bytes)
{
    if (d->bufs[i].twin) copy(d, d->bufs[i].twin, d->bufs[i].buf, bytes, 0);
}

/* binding i's first bytes into its twin for the host, after the passes */
static void to_host(struct vk_dev *d, int i, uint64_t bytes)
{
    if (d->bufs[i].twin) copy(d, d->bufs[i].buf, d->bufs[i].twin, bytes, 1);
}

static int begin(struct vk_dev *d, char *msg, size_t len)
{
    VkResult r;
    if ((r = vkResetCommandBuffer(d->cmd, 0))) return vk_fail(msg, len, r, "vkResetCommandBuffer");
    VkCommandBufferBeginInfo cbi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                    .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    if ((r = vkBeginCommandBuffer(d->cmd, &cbi))) return vk_fail(msg, len, r, "vkBeginCommandBuffer");
    vkCmdBindDescriptorSets(d->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, d->layout, 0, 1, &d->set, 0, NULL);
    /* staged: the parameter words the host has written, onto the device before any pass (a
     * benchmark step may come first with no barrier of its own) */
    if (d->bufs[B_PRM].twin) {
        to_device(d, B_PRM, d->bufs[B_PRM].size);
        barrier(d->cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT);
    }
    /* apply.comp's hwexact (the benchmark's steps push their own words) */
    const uint32_t push[4] = {(uint32_t)d->hwexact, 0, 0, 0};
    vkCmdPushConstants(d->cmd, d->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof push, push);
    return DROPBLOCK_OK;
}

/* Records pipe over n invocations after a barrier on the previous work (first: none). */
static void step(struct vk_dev *d, VkPipeline pipe, uint64_t n, int first)
{
    if (!first)
        barrier(d->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
    for (int i = 0; i < PASS_N; i++)
        if (pipe == d->pipes[i] && !(d->dispatched & 1u << i)) {
            d->dispatched |= 1u << i;
            if (d->warm) d->cold++;
        }
    vkCmdBindPipeline(d->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
    vkCmdDispatch(d->cmd, groups_for(d, n), 1, 1);
}

/* Ends the recording, submits it and waits; its writes are then visible to the host. */
static int submit(struct vk_dev *d, char *msg, size_t len)
{
    VkResult r;
    barrier(d->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT,
            VK_ACCESS_HOST_READ_BIT);
    if ((r = vkEndCommandBuffer(d->cmd))) return vk_fail(msg, len, r, "vkEndCommandBuffer");
    /* reset first: a failed wait of an earlier job may have left the fence in any state */
    if ((r = vkResetFences(d->dev, 1, &d->fence))) return vk_fail(msg, len, r, "vkResetFences");
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &d->cmd};
    if ((r = vkQueueSubmit(d->queue, 1, &si, d->fence))) return vk_fail(msg, len, r, "vkQueueSubmit");
    if ((r = vkWaitForFences(d->dev, 1, &d->fence, VK_TRUE, UINT64_MAX))) {
        int rc = vk_fail(msg, len, r, "vkWaitForFences");
        vkQueueWaitIdle(d->queue); /* the buffers are reused next: never under a running pass */
        return rc;
    }
    return DROPBLOCK_OK;
}

/* the bytes of the counts the host reads: per sample, K, the completion words (record_mask) */
static uint64_t kept_bytes(const uint32_t *prm)
{
    return (uint64_t)prm[DBP_NSAMP] * 8 + 16;
}

/* Records pass 1 of the chunk whose parameters are in the params buffer: the per-sample
 * counts zeroed, then the mask pass, which adds to them. */
static void record_mask(struct vk_dev *d, const uint32_t *prm)
{
    /* the counts, two spare words (K once) and mask.comp's two completion words */
    vkCmdFillBuffer(d->cmd, d->bufs[B_KEPT].buf, 0, ((uint64_t)prm[DBP_NSAMP] * 8 + 16 + 63) & ~UINT64_C(63), 0);
    step(d, d->pipes[PASS_MASK], db_mask_items(prm), 0);
}

/* Records pass 3 of the chunk (scales in place, after a barrier): fast, tail, fixup. */
static void record_apply(struct vk_dev *d, const struct db_plan *pl, const uint32_t *prm)
{
    uint64_t groups = prm[DBP_GROUPS], fast = groups * prm[DBP_EPW], nelem = (uint64_t)prm[DBP_NELEM];
    int fix = groups && pl->p.dtype != DROPBLOCK_F16 && !d->hwexact;
    uint64_t fwords = (fast + 31) / 32;
    if (fix) vkCmdFillBuffer(d->cmd, d->bufs[B_FIXUP].buf, 0, (fwords * 4 + 63) & ~UINT64_C(63), 0);
    if (groups) step(d, d->pipes[PASS_APPLY], groups, 0);
    if (fast < nelem) step(d, d->pipes[PASS_EXACT], pl->p.dtype == DROPBLOCK_F32 ? nelem - fast : (nelem - fast + 1) / 2, 0);
    if (fix) step(d, d->pipes[PASS_FIXUP], fwords, 0);
}

/* Whether the device's fast apply keeps subnormal f32 products exact: apply.comp's probe
 * variant on db_probe_subnormals' inputs, against core/fp.h (as the OpenCL backend's
 * probe_exact). Any failure on the way: not exact. */
static int probe_exact(struct vk_dev *d)
{
    enum { NP = 256 };
    static const struct spv probe = {db_spv_probe, sizeof db_spv_probe, "probe"};
    uint32_t x[NP], s[NP];
    db_probe_subnormals(x, s, NP);
    char msg[256];
    VkPipeline pipe = VK_NULL_HANDLE;
    struct vk_buf y = {0};
    int ok = make_pipeline(d, &probe, &pipe) == VK_SUCCESS;
    /* every binding needs a buffer for the descriptor set; the jobs grow them later */
    for (int i = 0; ok && i < B_N; i++)
        if (i != B_Y) ok = !buf_ensure(d, i, i == B_X || i == B_SCALES ? sizeof x : 64, msg, sizeof msg);
    ok = ok && !buf_make(d, &y, sizeof x, "probe", d->staged, d->staged, msg, sizeof msg);
    if (ok) {
        memcpy(d->bufs[B_X].map, x, sizeof x);
        memcpy(d->bufs[B_SCALES].map, s, sizeof s);
        bind_all(d, d->bufs[B_X].buf, y.buf);
        ok = !begin(d, msg, sizeof msg);
    }
    if (ok) {
        to_device(d, B_X, sizeof x);
        to_device(d, B_SCALES, sizeof s);
        const uint32_t push[4] = {0, NP, 0, 0};
        barrier(d->cmd, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT);
        vkCmdBindPipeline(d->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
        vkCmdPushConstants(d->cmd, d->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof push, push);
        vkCmdDispatch(d->cmd, groups_for(d, NP), 1, 1);
        if (y.twin) copy(d, y.buf, y.twin, sizeof x, 1);
        ok = !submit(d, msg, sizeof msg);
    }
    for (int i = 0; ok && i < NP; i++) ok = ((const uint32_t *)y.map)[i] == db_mul32(x[i], s[i]);
    if (y.buf) buf_free(d, &y);
    if (pipe) vkDestroyPipeline(d->dev, pipe, NULL);
    return ok;
}

/* Dispatches every pass once on an empty chunk (no tiles, samples or elements: each returns at
 * once), in one submission. Drivers may compile a pipeline at its first dispatch rather than at
 * vkCreateComputePipelines: lavapipe JITs each shader then, 0.2 to 1.5 s for the mask pass, which
 * the first job would otherwise pay. step counts a pass first dispatched after this as cold
 * (describe: cold=N; tests/test_warmup.c checks that jobs of every kind leave it 0). */
static int warm_up(struct vk_dev *d, char *msg, size_t len)
{
    int rc = buf_ensure(d, B_PRM, DBP_COUNT * 4, msg, len);
    if (rc) return rc;
    uint32_t *prm = d->bufs[B_PRM].map;
    memset(prm, 0, d->bufs[B_PRM].size);
    prm[DBP_TPW] = 1; /* no tiles, one a work item */
    bind_all(d, d->bufs[B_X].buf, d->bufs[B_X].buf);
    if ((rc = begin(d, msg, len))) return rc;
    for (int i = 0; i < PASS_N; i++) step(d, d->pipes[i], 1, i == 0);
    if ((rc = submit(d, msg, len))) return rc;
    d->warm = 1;
    return DROPBLOCK_OK;
}

/* ---- run ------------------------------------------------------------------------------- */

/* Units per chunk: db_chunk_units, also so that the 8-byte per-sample partials of a chunk fit
 * in one buffer (a chunk of L >= 2 rows touches at most (L-2)/CH + 2 samples). */
static uint64_t chunk_units(const struct db_plan *pl, uint64_t max_buffer, char *msg, size_t len)
{
    uint64_t per = db_chunk_units(pl, max_buffer, msg, len);
    if (!per) return 0;
    uint64_t smax = (max_buffer < (UINT64_C(1) << 30) ? max_buffer : (UINT64_C(1) << 30)) / 8;
    uint64_t CH = pl->C * pl->H, ur = db_unit_rows(pl);
    /* lim >= 1 whenever smax >= 2, since CH >= ur */
    uint64_t lim = smax < 2 ? 0 : (smax - 1 > UINT64_MAX / CH ? per : (smax - 1) * CH / ur);
    if (lim == 0) {
        db_msg(msg, len, "the device's %llu-byte buffer limit cannot hold a chunk's per-sample counts",
               (unsigned long long)max_buffer);
        return 0;
    }
    if (lim < per) per = lim;
    return per;
}

/* lavapipe ends every loop of an invocation once its loops have run 65535 iterations in all
 * (mask.comp): the mask pass plans for at most MASK_LOOP_BUDGET of them an invocation. A fired
 * candidate costs about rows x (3 columns + 1) + 16 iterations when dropping its block (NHWC
 * marks bit by bit), any candidate about MASK_CAND_COST (its word, its share of the tile's
 * rows and counts). */
#define MASK_LOOP_BUDGET 24000u
#define MASK_CAND_COST 4u

/* DROPBLOCK_VULKAN_MASK_FAULT (tests): on CPU devices the first try of every mask pass takes
 * that many candidates an invocation whatever the loop limit, and a job none of whose mask
 * passes then had to be rerun fails, so that a test proves the completion check; 0 when unset */
static uint32_t mask_fault(void)
{
    const char *s = getenv("DROPBLOCK_VULKAN_MASK_FAULT");
    char *end;
    unsigned long v = s && *s ? strtoul(s, &end, 10) : 0;
    return s && *s && !*end && v <= UINT32_MAX ? (uint32_t)v : 0;
}

/* The job's tuning. On CPU devices, safe: so few candidates an invocation that its loops stay
 * within the budget even if every candidate fires; else as many as the expected fires allow
 * (n p + 8 sqrt(n p) + 16 of them, p the firing probability T / (wmask + 1), T / 2^32 or for
 * keras_cv T / 2^23), which is the safe tuning at high rates; mask.comp's completion check and a
 * rerun with the safe tuning (mask_pass) cover the rare tail. */
static struct db_tuning job_tuning(const struct vk_dev *d, const struct db_plan *pl, int safe)
{
    /* apply.comp: one 16-byte vector an invocation */
    struct db_tuning tu = {d->tile_rows, pl->p.dtype == DROPBLOCK_F32 ? 4u : 8u, d->cand_budget, d->item_cands};
    if (d->props.deviceType != VK_PHYSICAL_DEVICE_TYPE_CPU) return tu;
    const uint32_t fault = safe ? 0 : mask_fault();
    if (fault) {
        tu.cand_budget = tu.item_cands = fault;
        return tu;
    }
    uint64_t rows = (uint64_t)pl->up + pl->down + 1, cols = (uint64_t)pl->left + pl->right + 1;
    uint64_t cost = rows * (3 * cols + 1) + 16, fit = MASK_LOOP_BUDGET / cost;
    if (fit < 1) fit = 1;
    if (!safe) {
        /* the most candidates n (up to the defaults) whose expected work fits: binary search */
        const double p = (double)pl->threshold / ((double)pl->wmask + 1); /* fires: (word & wmask) < T */
        uint64_t lo = fit, hi = tu.item_cands > tu.cand_budget ? tu.item_cands : tu.cand_budget;
        while (lo < hi) {
            uint64_t n = lo + (hi - lo + 1) / 2;
            double mu = (double)n * p, fires = mu + 8 * sqrt(mu) + 16;
            if ((double)n * MASK_CAND_COST + fires * (double)cost <= MASK_LOOP_BUDGET) lo = n;
            else hi = n - 1;
        }
        fit = lo;
    }
    if (fit < tu.cand_budget) tu.cand_budget = (uint32_t)fit;
    if (fit < tu.item_cands) tu.item_cands = (uint32_t)fit;
    return tu;
}

/* Whether every invocation of the mask pass just run (parameters prm) that took tiles ran to
 * its end (mask.comp's completion count). */
static int mask_done(const struct vk_dev *d, const uint32_t *prm)
{
    const uint64_t items = db_mask_items(prm), ran = (uint64_t)groups_for(d, items) * d->local;
    const uint32_t *k = d->bufs[B_KEPT].map;
    return k[2 * (uint64_t)prm[DBP_NSAMP] + 2] == (ran < items ? ran : items);
}

/* Pass 1 of chunk ch, submitted alone, with tuning tu; where an invocation was cut short, again
 * with the worst-case tuning safe (counted in *reruns and d->mask_reruns). Its parameters are
 * left in the parameter buffer, its counts and its first mask_bytes of mask bits for the host. */
static int mask_pass(struct vk_dev *d, const struct db_plan *pl, const struct db_chunk *ch,
                     const struct db_tuning *tu, const struct db_tuning *safe, uint64_t mask_bytes, uint64_t *reruns,
                     char *msg, size_t len)
{
    uint32_t *prm = d->bufs[B_PRM].map;
    int rc;
    for (int attempt = 0; attempt < 2; attempt++) {
        const struct db_tuning *t = attempt ? safe : tu;
        db_kernel_params(pl, ch, t, prm);
        if ((rc = begin(d, msg, len))) return rc;
        record_mask(d, prm);
        to_host(d, B_KEPT, kept_bytes(prm));
        to_host(d, B_MASK, mask_bytes);
        if ((rc = submit(d, msg, len))) return rc;
        if (mask_done(d, prm)) return DROPBLOCK_OK;
        if (!memcmp(t, safe, sizeof *t)) break;
        (*reruns)++;
        d->mask_reruns++;
    }
    db_msg(msg, len, "the mask pass was cut short (an invocation did not run to its end) with the worst-case budget");
    return DROPBLOCK_EINTERNAL;
}

/* The job from x to y: in/out in host memory, or (bench, resident) the device's x/y buffers
 * already hold x. */
static int vk_job(struct vk_dev *d, struct db_device *dev, const struct db_plan *pl, const void *in, void *out,
                  void *mask, int resident, dropblock_result *res, char *msg, size_t len)
{
    const uint64_t t0 = db_now_us();
    const size_t es = dropblock_dtype_size(pl->p.dtype);
    const uint64_t units = db_units(pl);
    const struct db_tuning tu = job_tuning(d, pl, 0), safe = job_tuning(d, pl, 1);
    const uint32_t fault = d->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU ? mask_fault() : 0;
    uint64_t reruns = 0;
    uint64_t per = chunk_units(pl, dev->info.max_buffer, msg, len);
    if (!per) return DROPBLOCK_EEXHAUSTED;
    const uint64_t nchunks = (units + per - 1) / per;
    if (resident && nchunks != 1) {
        db_msg(msg, len, "the tensor takes %llu chunks on this device; the benchmark takes one", (unsigned long long)nchunks);
        return DROPBLOCK_EINVAL;
    }

    /* every chunk fits buffers sized for the largest one */
    struct db_chunk ch;
    uint64_t max_elem = 0, max_samp = 0;
    for (uint64_t q = 0; q < nchunks; q++) {
        db_chunk_at(pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        if (ch.nelem > max_elem) max_elem = ch.nelem;
        if (ch.nsamp > max_samp) max_samp = ch.nsamp;
    }
    const uint64_t max_words = (max_elem + 31) / 32;
    const int fused = nchunks == 1 && !pl->keras && max_samp <= DB_DEVICE_SCALE_MAX_SAMPLES;

    int rc = DROPBLOCK_OK;
    struct vk_buf xi = {0}, yi = {0}; /* the caller's tensors, imported */
    uint64_t *kept = calloc(pl->N, sizeof *kept);
    uint32_t *scales = calloc(pl->N, sizeof *scales);
    uint32_t *hmask = NULL; /* the mask of every chunk, between the passes, when there are several */
    if (nchunks > 1 && units * db_unit_elems(pl) / 32 + nchunks < SIZE_MAX / 4)
        hmask = malloc((units * db_unit_elems(pl) / 32 + nchunks) * 4);
    if (!kept || !scales || (nchunks > 1 && !hmask)) {
        db_msg(msg, len, "out of host memory for the mask of %llu elements", (unsigned long long)pl->numel);
        rc = DROPBLOCK_EEXHAUSTED;
        goto done;
    }
    const uint64_t sizes[B_N] = {DBP_COUNT * 4, max_words * 4 + 64, 64, max_samp * 8 + 80,
                                 ((max_elem * es + 3) & ~UINT64_C(3)) + 64, 0, (fused ? pl->N : max_samp) * 4,
                                 max_words * 4 + 64};
    for (int i = 0; i < B_N && !rc; i++)
        if (i != B_Y && !(resident && i == B_X)) rc = buf_ensure(d, i, sizes[i], msg, len);
    if (rc) goto done;
    VkBuffer xb = d->bufs[B_X].buf, yb = xb;
    if (resident) {
        yb = d->bufs[B_Y].buf;
    } else if (nchunks == 1 && buf_import(d, &xi, in, pl->numel * es)) {
        if (in == out) yb = xb = xi.buf;
        else if (buf_import(d, &yi, out, pl->numel * es)) { xb = xi.buf; yb = yi.buf; }
        else buf_free(d, &xi);
    }
    const int copy_in = !resident && !xi.buf; /* x through the x buffer's mapped memory */
    /* staged: the passes run on the device's x buffer, x copied onto it from src (the imported
     * tensor or the twin) and y off it to dst */
    VkBuffer src = VK_NULL_HANDLE, dst = VK_NULL_HANDLE;
    if (d->staged && !resident) {
        src = xb == d->bufs[B_X].buf ? d->bufs[B_X].twin : xb;
        dst = yb == d->bufs[B_X].buf ? d->bufs[B_X].twin : yb;
        xb = yb = d->bufs[B_X].buf;
    }
    bind_all(d, xb, yb);
    uint32_t *prm = d->bufs[B_PRM].map;
    const uint32_t *partial = d->bufs[B_KEPT].map;

    if (fused) {
        db_chunk_at(pl, 0, units, &ch);
        if (copy_in) memcpy(d->bufs[B_X].map, in, ch.nelem * es);
        /* one submission, unless the mask pass may need a rerun (the apply may overwrite x) */
        const int alone = memcmp(&tu, &safe, sizeof tu) != 0;
        if (alone) {
            if ((rc = mask_pass(d, pl, &ch, &tu, &safe, 0, &reruns, msg, len))) goto done;
        } else {
            db_kernel_params(pl, &ch, &tu, prm);
        }
        if ((rc = begin(d, msg, len))) goto done;
        if (!alone) record_mask(d, prm);
        if (src) copy(d, src, xb, ch.nelem * es, 0); /* beside the mask pass, which does not read x */
        step(d, d->pipes[PASS_SCALE], ch.nsamp, 0); /* after a barrier, for the mask pass of either submission */
        record_apply(d, pl, prm);
        if (dst) copy(d, xb, dst, ch.nelem * es, 1);
        to_host(d, B_KEPT, kept_bytes(prm));
        to_host(d, B_SCALES, ch.nsamp * 4);
        if (mask) to_host(d, B_MASK, (ch.nelem + 31) / 32 * 4);
        if ((rc = submit(d, msg, len))) goto done;
        if (!alone && !mask_done(d, prm)) {
            db_msg(msg, len, "the mask pass was cut short (an invocation did not run to its end)");
            rc = DROPBLOCK_EINTERNAL;
            goto done;
        }
        for (uint64_t s = 0; s < ch.nsamp; s++) kept[ch.n0 + s] = (uint64_t)partial[2 * s] | ((uint64_t)partial[2 * s + 1] << 32);
        if (fault && !reruns) {
            db_msg(msg, len, "DROPBLOCK_VULKAN_MASK_FAULT=%u: no mask pass was rerun", (unsigned)fault);
            rc = DROPBLOCK_EINTERNAL;
            goto done;
        }
        if ((rc = db_plan_scales(pl, kept, scales, res))) goto done;
        if (memcmp(scales, d->bufs[B_SCALES].map, pl->N * 4)) {
            db_msg(msg, len, "the device's scale 0x%08x differs from the exact 0x%08x",
                   ((const uint32_t *)d->bufs[B_SCALES].map)[0], scales[0]);
            rc = DROPBLOCK_EINTERNAL;
            goto done;
        }
        if (copy_in) memcpy(out, d->bufs[B_X].map, ch.nelem * es);
        if (mask) db_mask_export_flat(pl, d->bufs[B_MASK].map, ch.e0, ch.nelem, mask);
        res->timing_us[0] = res->timing_us[1] = res->timing_us[2] = 0; /* one submission: not separable */
        goto done;
    }

    /* pass 1: mask bits and counts, chunk by chunk */
    uint64_t *mofs = hmask ? calloc(nchunks, sizeof *mofs) : NULL; /* each chunk's words in hmask */
    if (hmask && !mofs) {
        db_msg(msg, len, "out of host memory");
        rc = DROPBLOCK_EEXHAUSTED;
        goto done;
    }
    uint64_t at = 0;
    for (uint64_t q = 0; q < nchunks && !rc; q++) {
        db_progress(dev, DB_PASS_MASK, q + 1, nchunks);
        db_chunk_at(pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        if ((rc = mask_pass(d, pl, &ch, &tu, &safe, hmask || mask ? (ch.nelem + 31) / 32 * 4 : 0, &reruns, msg, len)))
            break;
        for (uint64_t s = 0; s < ch.nsamp; s++)
            kept[ch.n0 + s] += (uint64_t)partial[2 * s] | ((uint64_t)partial[2 * s + 1] << 32);
        if (hmask) {
            mofs[q] = at;
            memcpy(hmask + at, d->bufs[B_MASK].map, (ch.nelem + 31) / 32 * 4);
            at += (ch.nelem + 31) / 32;
        }
    }
    const uint64_t t1 = db_now_us();
    if (!rc && fault && !reruns) {
        db_msg(msg, len, "DROPBLOCK_VULKAN_MASK_FAULT=%u: no mask pass was rerun", (unsigned)fault);
        rc = DROPBLOCK_EINTERNAL;
    }
    db_progress(dev, DB_PASS_SCALES, 0, 0);
    if (!rc) rc = db_plan_scales(pl, kept, scales, res);
    const uint64_t t2 = db_now_us();

    /* pass 3: y = (x * scale) * keep, chunk by chunk */
    for (uint64_t q = 0; q < nchunks && !rc; q++) {
        db_progress(dev, DB_PASS_APPLY, q + 1, nchunks);
        db_chunk_at(pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        db_kernel_params(pl, &ch, &tu, prm);
        memcpy(d->bufs[B_SCALES].map, scales + ch.n0, ch.nsamp * 4);
        if (hmask) memcpy(d->bufs[B_MASK].map, hmask + mofs[q], (ch.nelem + 31) / 32 * 4);
        if (copy_in) memcpy(d->bufs[B_X].map, (const char *)in + ch.e0 * es, ch.nelem * es);
        if (!(rc = begin(d, msg, len))) {
            to_device(d, B_SCALES, ch.nsamp * 4);
            if (hmask) to_device(d, B_MASK, (ch.nelem + 31) / 32 * 4);
            if (src) copy(d, src, xb, ch.nelem * es, 0);
            record_apply(d, pl, prm);
            if (dst) copy(d, xb, dst, ch.nelem * es, 1);
            rc = submit(d, msg, len);
        }
        if (rc) break;
        if (copy_in) memcpy((char *)out + ch.e0 * es, d->bufs[B_X].map, ch.nelem * es);
        if (mask) db_mask_export_flat(pl, hmask ? hmask + mofs[q] : d->bufs[B_MASK].map, ch.e0, ch.nelem, mask);
    }
    free(mofs);
    res->timing_us[0] = t1 - t0; /* buffers, mask and count passes */
    res->timing_us[1] = t2 - t1;
    res->timing_us[2] = db_now_us() - t2;

done:
    if (reruns)
        db_dev_log(dev, "%llu mask pass(es) of a job cut short by the loop limit, rerun with the worst-case budget (%llu so far)",
                   (unsigned long long)reruns, (unsigned long long)d->mask_reruns);
    if (xi.buf) buf_free(d, &xi);
    if (yi.buf) buf_free(d, &yi);
    free(hmask);
    free(kept);
    free(scales);
    res->timing_us[3] = db_now_us() - t0;
    return rc;
}

static int vk_run(struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
                  dropblock_result *res)
{
    if (dev->inject_lost) /* DROPBLOCK_FAULTS "lost" (engine.h): what the driver answers for a device that is gone */
        return vk_fail(res->message, sizeof res->message, VK_ERROR_DEVICE_LOST, "vkQueueSubmit, injected fault");
    return vk_job(dev->priv, dev, pl, in, out, mask, 0, res, res->message, sizeof res->message);
}

/* ---- bench ----------------------------------------------------------------------------- */

/* Records bench step s over n invocations, push constants n, a, b, c. */
static void bench_step(struct vk_dev *d, int s, uint32_t n, uint32_t a, uint32_t b, uint32_t c, int first)
{
    uint32_t push[4] = {n, a, b, c};
    if (!first)
        barrier(d->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
    vkCmdBindPipeline(d->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, d->bench[s]);
    vkCmdPushConstants(d->cmd, d->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof push, push);
    vkCmdDispatch(d->cmd, groups_for(d, n), 1, 1);
}

/* One measure of vk_bench on the resident x (bufs[B_X]) and y (bufs[B_Y]). */
static int bench_one(struct vk_dev *d, struct db_device *dev, const struct db_plan *pl, int what, const uint32_t *blp,
                     const uint32_t *prm, const uint32_t *prm_safe, uint64_t nwords, char *msg, size_t len)
{
    if (what == DB_BENCH_OP || what == DB_BENCH_BACKWARD) {
        dropblock_result res;
        memset(&res, 0, sizeof res);
        struct db_plan bw = *pl; /* backward applies the same mask and scale to dy: the same passes */
        bw.p.mode = DROPBLOCK_BACKWARD;
        return vk_job(d, dev, what == DB_BENCH_OP ? pl : &bw, NULL, NULL, NULL, 1, &res, msg, len);
    }
    int rc;
    if (what == DB_BENCH_MASK) memcpy(d->bufs[B_PRM].map, prm, DBP_COUNT * 4);
    if (what == DB_BENCH_BASELINE) memcpy(d->bufs[B_PRM].map, blp, BLP_COUNT * 4);
    bind_all(d, d->bufs[B_X].buf, d->bufs[B_Y].buf);
    if ((rc = begin(d, msg, len))) return rc;
    if (what == DB_BENCH_COPY) {
        uint32_t nvec = (uint32_t)(nwords / 4);
        bench_step(d, BS_COPY, nvec, 0, 0, 0, 1);
        if (4 * (uint64_t)nvec < nwords) bench_step(d, BS_COPY_TAIL, (uint32_t)(nwords - 4 * nvec), 4 * nvec, 0, 0, 0);
    } else if (what == DB_BENCH_MASK) {
        record_mask(d, prm);
        to_host(d, B_KEPT, kept_bytes(prm));
        /* an invocation cut short: the measure includes the rerun with the worst-case budget */
        if ((rc = submit(d, msg, len)) || mask_done(d, prm)) return rc;
        d->mask_reruns++;
        memcpy(d->bufs[B_PRM].map, prm_safe, DBP_COUNT * 4);
        if ((rc = begin(d, msg, len))) return rc;
        record_mask(d, prm_safe);
        to_host(d, B_KEPT, kept_bytes(prm_safe));
        if ((rc = submit(d, msg, len))) return rc;
        if (mask_done(d, prm_safe)) return DROPBLOCK_OK;
        db_msg(msg, len, "the mask pass was cut short (an invocation did not run to its end) with the worst-case budget");
        return DROPBLOCK_EINTERNAL;
    } else {
        const uint32_t planes = blp[BLP_PLANES], n = blp[BLP_NUMEL], nnoise = planes * blp[BLP_HN] * blp[BLP_WN];
        const uint32_t npad = planes * (blp[BLP_HN] + blp[BLP_BS] - 1) * (blp[BLP_WN] + blp[BLP_BS] - 1);
        bench_step(d, BS_BERNOULLI, (nnoise + 3) / 4, 0, 0, 0, 1);
        bench_step(d, BS_PAD, npad, 0, 0, 0, 0);
        bench_step(d, BS_POOL, n, 0, 0, 0, 0);
        bench_step(d, BS_ONE_MINUS, n, 0, 0, 0, 0);
        uint32_t nin = (n + BL_SEG - 1) / BL_SEG, src = 1;
        bench_step(d, BS_SUM_NOISE, nin, 0, 0, 0, 0);
        while (nin > BL_SEG) {
            uint32_t nout = (nin + BL_SEG - 1) / BL_SEG;
            bench_step(d, BS_SUM_PART, nout, src, nin, src + nin, 0);
            src += nin;
            nin = nout;
        }
        bench_step(d, BS_SCALE, 1, src, nin, 0, 0);
        bench_step(d, BS_MUL, (uint32_t)nwords, 0, 0, 0, 0);
    }
    return submit(d, msg, len);
}

static int vk_bench(struct db_device *dev, const struct db_plan *pl, const void *xh, unsigned whats, int warmup,
                    int reps, double *us, char *msg, size_t len)
{
    struct vk_dev *d = dev->priv;
    const uint64_t bytes = pl->numel * dropblock_dtype_size(pl->p.dtype), nwords = (bytes + 3) / 4;
    int rc = DROPBLOCK_OK;
    VkResult r;
    for (int i = 0; i < BS_N && !rc; i++)
        if (!d->bench[i] && (r = make_pipeline(d, &bench_spv[i], &d->bench[i]))) rc = vk_fail(msg, len, r, bench_spv[i].name);
    if (rc) return rc;
    if (bytes > dev->info.max_buffer || pl->numel >= (UINT64_C(1) << 32)) {
        db_msg(msg, len, "the benchmark takes tensors of one device buffer (%llu bytes)",
               (unsigned long long)dev->info.max_buffer);
        return DROPBLOCK_EINVAL;
    }
    uint32_t blp[BLP_COUNT] = {0}, prm[DBP_COUNT], prm_safe[DBP_COUNT];
    uint64_t npad = 0, nparts = 0;
    if ((whats & (1u << DB_BENCH_BASELINE)) && db_baseline_params(pl, blp, &npad, &nparts, msg, len)) {
        whats &= ~(1u << DB_BENCH_BASELINE);
        for (int i = 0; i < reps; i++) us[DB_BENCH_BASELINE * reps + i] = -1;
    }
    const struct db_tuning tu = job_tuning(d, pl, 0), safe = job_tuning(d, pl, 1);
    const uint64_t reruns0 = d->mask_reruns;
    struct db_chunk ch;
    db_chunk_at(pl, 0, db_units(pl), &ch);
    db_kernel_params(pl, &ch, &tu, prm);
    db_kernel_params(pl, &ch, &safe, prm_safe);
    /* x and y resident in the device's x and y buffers (y owns its memory for the bench only);
     * the baseline's buffers on the pass bindings: noise on mask, padded on aux, pooled on kept,
     * part on scales */
    struct vk_buf y = {0};
    const int base = (whats & (1u << DB_BENCH_BASELINE)) != 0;
    const uint64_t words = (ch.nelem + 31) / 32 + 16;
    if ((rc = buf_ensure(d, B_X, nwords * 4 + 64, msg, len)) ||
        (rc = buf_make(d, &y, nwords * 4 + 64, "y", d->staged, 0, msg, len)))
        return rc;
    d->bufs[B_Y] = y;
    memcpy(d->bufs[B_X].map, xh, bytes);
    const uint64_t sizes[B_N] = {DBP_COUNT * 4 > BLP_COUNT * 4 ? DBP_COUNT * 4 : BLP_COUNT * 4,
                                 base && pl->numel > words ? pl->numel * 4 : words * 4, base ? npad * 4 : 64,
                                 base && pl->numel > ch.nsamp * 2 + 20 ? pl->numel * 4 : ch.nsamp * 8 + 80, 0, 0,
                                 base && nparts > pl->N ? nparts * 4 : pl->N * 4 + 64, words * 4};
    for (int i = 0; i < B_N && !rc; i++)
        if (i != B_X && i != B_Y) rc = buf_ensure(d, i, sizes[i], msg, len);
    /* staged: x onto the device once (and, for DB_BENCH_XFER, on and off it each time) */
    const uint64_t up = d->staged ? bytes : 0;
    if (!rc && up) {
        bind_all(d, d->bufs[B_X].buf, d->bufs[B_Y].buf);
        if (!(rc = begin(d, msg, len))) {
            to_device(d, B_X, up);
            rc = submit(d, msg, len);
        }
    }
    /* DB_BENCH_XFER: what vk_job does with host tensors it cannot import (one chunk): x copied
     * into the mapped x buffer, the result copied out of it, here into the host yh */
    void *yh = NULL;
    if (!rc && (whats & (1u << DB_BENCH_XFER)) && !(yh = malloc((size_t)bytes))) {
        db_msg(msg, len, "out of host memory");
        rc = DROPBLOCK_EEXHAUSTED;
    }
    for (int rep = -warmup; rep < reps && !rc; rep++)
        for (int w = 0; w < DB_BENCH_N && !rc; w++) {
            if (!(whats & (1u << w))) continue;
            double t0 = db_now_us_f();
            if (w == DB_BENCH_XFER) {
                memcpy(d->bufs[B_X].map, xh, bytes);
                if (up && !(rc = begin(d, msg, len))) {
                    to_device(d, B_X, up);
                    to_host(d, B_X, up);
                    rc = submit(d, msg, len);
                }
                memcpy(yh, d->bufs[B_X].map, bytes);
            } else
                rc = bench_one(d, dev, pl, w, blp, prm, prm_safe, nwords, msg, len);
            if (rep >= 0) us[w * reps + rep] = db_now_us_f() - t0;
        }
    free(yh);
    if (d->mask_reruns != reruns0)
        db_dev_log(dev, "%llu benchmark mask pass(es) cut short by the loop limit, rerun with the worst-case budget",
                   (unsigned long long)(d->mask_reruns - reruns0));
    vkQueueWaitIdle(d->queue);
    buf_free(d, &y);
    memset(&d->bufs[B_Y], 0, sizeof d->bufs[B_Y]);
    return rc;
}

static void vk_describe(const struct db_device *dev, char *buf, size_t len)
{
    const struct vk_dev *d = dev->priv;
    /* warmed: passes dispatched at setup; cold: passes a job dispatched first (warm_up) */
    snprintf(buf, len, "memory=%s import=%s subnormals=%s work-group=%u subgroup=%u warmed=%d cold=%llu",
             d->staged ? "staged" : "host-visible", d->has_import ? "yes" : "no", d->hwexact ? "hardware" : "fixup",
             d->local, d->subgroup, d->warm ? PASS_N : 0, (unsigned long long)d->cold);
}

const struct backend_ops db_backend_vulkan = {"vulkan", vk_enumerate, vk_prepare, vk_run, vk_bench, vk_release,
                                              vk_describe};
