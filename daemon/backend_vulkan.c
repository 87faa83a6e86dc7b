/* backend_vulkan.c: the Vulkan backend; every Vulkan call of the project lives in this file.
 *
 * enumerate makes one VkInstance (Vulkan 1.1) and lists every physical device; the devices share
 * the instance through a reference count, so it lives while any of them does. prepare makes a
 * logical device with one compute queue, one descriptor set layout whose seven storage buffers
 * are shared by the three passes (binding numbers as in the .comp shaders), the three compute
 * pipelines from the SPIR-V compiled into the binary, and a pipeline cache kept on disk under
 * the cache directory. run follows tests/test_passes.c: pass 1 (mask, then count) chunk by
 * chunk, the scales on the host, pass 3 (apply) chunk by chunk.
 *
 * Memory is HOST_VISIBLE | HOST_COHERENT, mapped for the whole run: correct on every device
 * (on discrete GPUs the passes then read system memory; staging is a later speed issue). A run
 * allocates a fixed set of buffers sized for its largest chunk, whatever the number of chunks,
 * so that it stays far below maxMemoryAllocationCount; with several chunks the mask rows wait
 * on the host between pass 1 and pass 3 (they are 1/32 of f32 data).
 *
 * Test/debug knob: DROPBLOCK_VULKAN_MAX_BUFFER=<bytes> caps every device's max_buffer (at least
 * 256), so that small tensors take the chunked path; the tests run the matrix with 4096. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <vulkan/vulkan.h>

#include "backend.h"
#include "kernel_params.h"

#include "spv_apply.h"
#include "spv_count.h"
#include "spv_mask.h"

enum { PASS_MASK, PASS_COUNT, PASS_APPLY, PASS_N };
/* descriptor bindings, as declared in the shaders */
enum { B_PRM, B_MASK, B_COUNTS, B_KEPT, B_X, B_Y, B_SCALES, B_N };
#define LOCAL_SIZE 64u
#define CACHE_FILE_MAX (UINT64_C(256) << 20)

struct vk_inst {
    VkInstance inst;
    int refs; /* devices alive from this instance; enumerate and release run on the engine's thread */
};

struct vk_dev {
    struct vk_inst *vi;
    VkPhysicalDevice pd;
    VkPhysicalDeviceProperties props;
    VkPhysicalDeviceMemoryProperties mem;
    int has_int64;
    int64_t qfam; /* -1: no compute queue */

    VkDevice dev;
    VkQueue queue;
    VkDescriptorSetLayout dsl;
    VkPipelineLayout layout;
    VkPipeline pipes[PASS_N];
    VkPipelineCache cache;
    VkDescriptorPool dpool;
    VkDescriptorSet set;
    VkCommandPool cpool;
    VkCommandBuffer cmd;
    VkFence fence;
};

struct vk_buf {
    VkBuffer buf;
    VkDeviceMemory mem;
    void *map;
    VkDeviceSize size;
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
        VkPhysicalDeviceIDProperties idp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES, .pNext = &m3};
        int have_drv = p->apiVersion >= VK_API_VERSION_1_2 || has_extension(pd, VK_KHR_DRIVER_PROPERTIES_EXTENSION_NAME);
        if (have_drv) m3.pNext = &drv;
        VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &idp};
        vkGetPhysicalDeviceProperties2(pd, &p2);
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
static uint64_t spirv_hash(void)
{
    const struct { const void *p; size_t n; } blobs[PASS_N] = {
        {db_spv_mask, sizeof db_spv_mask}, {db_spv_count, sizeof db_spv_count}, {db_spv_apply, sizeof db_spv_apply}};
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (int b = 0; b < PASS_N; b++)
        for (size_t i = 0; i < blobs[b].n; i++) h = (h ^ ((const uint8_t *)blobs[b].p)[i]) * UINT64_C(0x100000001b3);
    return h;
}

/* cache file keyed by the shaders and by everything that makes a driver reject a cache */
static void cache_path(const struct vk_dev *d, const char *dir, char *buf, size_t len)
{
    char uuid[33];
    for (unsigned i = 0; i < VK_UUID_SIZE; i++) snprintf(uuid + 2 * i, 3, "%02x", d->props.pipelineCacheUUID[i]);
    snprintf(buf, len, "%s/vulkan-%016" PRIx64 "-%s-%04" PRIx32 "-%04" PRIx32 "-%08" PRIx32 ".pipelinecache", dir,
             spirv_hash(), uuid, d->props.vendorID, d->props.deviceID, d->props.driverVersion);
}

static int mkdir_p(const char *dir)
{
    char p[1024];
    size_t l = strlen(dir);
    if (l == 0 || l >= sizeof p) return -1;
    memcpy(p, dir, l + 1);
    for (size_t i = 1; i <= l; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        /* private: cached pipelines are code the driver will run */
        if (mkdir(p, 0700) && errno != EEXIST) return -1;
        p[i] = c;
    }
    return 0;
}

/* The file's bytes if its header matches this device (the driver checks again), else NULL. */
static void *cache_load(const struct vk_dev *d, const char *path, size_t *size)
{
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    void *buf = NULL;
    long l = fseek(f, 0, SEEK_END) ? -1 : ftell(f);
    if (l >= 16 + VK_UUID_SIZE && (uint64_t)l <= CACHE_FILE_MAX && !fseek(f, 0, SEEK_SET) && (buf = malloc((size_t)l)) &&
        fread(buf, 1, (size_t)l, f) == (size_t)l) {
        uint32_t h[4];
        memcpy(h, buf, sizeof h);
        if (h[0] >= 16 + VK_UUID_SIZE && h[1] == VK_PIPELINE_CACHE_HEADER_VERSION_ONE && h[2] == d->props.vendorID &&
            h[3] == d->props.deviceID && !memcmp((char *)buf + 16, d->props.pipelineCacheUUID, VK_UUID_SIZE)) {
            *size = (size_t)l;
            fclose(f);
            return buf;
        }
    }
    free(buf);
    fclose(f);
    return NULL;
}

/* Writes the cache through a temporary file and a rename, so readers never see half a file.
 * Failure only costs the next start its compile time, so it is silent. */
static void cache_save(const struct vk_dev *d, const char *dir, const char *path, const void *old, size_t old_size)
{
    size_t size = 0;
    if (vkGetPipelineCacheData(d->dev, d->cache, &size, NULL) != VK_SUCCESS || size == 0) return;
    void *data = malloc(size);
    if (!data) return;
    VkResult r = vkGetPipelineCacheData(d->dev, d->cache, &size, data);
    if (r != VK_SUCCESS || (old && old_size == size && !memcmp(old, data, size)) || mkdir_p(dir)) {
        free(data);
        return;
    }
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
        size_t done = 0;
        while (done < size) {
            ssize_t w = write(fd, (char *)data + done, size - done);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) break;
            done += (size_t)w;
        }
        if (close(fd) || done != size || rename(tmp, path)) unlink(tmp);
    }
    free(data);
}

/* ---- prepare / release ----------------------------------------------------------------- */

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

    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                   .queueFamilyIndex = (uint32_t)d->qfam, .queueCount = 1, .pQueuePriorities = &prio};
    VkPhysicalDeviceFeatures feat = {.shaderInt64 = VK_TRUE};
    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .queueCreateInfoCount = 1,
                              .pQueueCreateInfos = &qci, .pEnabledFeatures = &feat};
    if ((r = vkCreateDevice(d->pd, &dci, NULL, &d->dev))) {
        d->dev = VK_NULL_HANDLE;
        return vk_fail(msg, len, r, "vkCreateDevice");
    }
    vkGetDeviceQueue(d->dev, (uint32_t)d->qfam, 0, &d->queue);

    VkDescriptorSetLayoutBinding b[B_N];
    for (int i = 0; i < B_N; i++)
        b[i] = (VkDescriptorSetLayoutBinding){.binding = (uint32_t)i, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                              .descriptorCount = 1, .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
    VkDescriptorSetLayoutCreateInfo dli = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                           .bindingCount = B_N, .pBindings = b};
    if ((r = vkCreateDescriptorSetLayout(d->dev, &dli, NULL, &d->dsl))) return vk_fail(msg, len, r, "vkCreateDescriptorSetLayout");
    VkPipelineLayoutCreateInfo pli = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, .setLayoutCount = 1,
                                      .pSetLayouts = &d->dsl};
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

    static const struct { const uint32_t *code; size_t size; const char *name; } spv[PASS_N] = {
        {db_spv_mask, sizeof db_spv_mask, "mask"},
        {db_spv_count, sizeof db_spv_count, "count"},
        {db_spv_apply, sizeof db_spv_apply, "apply"},
    };
    int rc = DROPBLOCK_OK;
    for (int i = 0; i < PASS_N && !rc; i++) {
        char what[96];
        VkShaderModuleCreateInfo smi = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, .codeSize = spv[i].size,
                                        .pCode = spv[i].code};
        VkShaderModule sm;
        if ((r = vkCreateShaderModule(d->dev, &smi, NULL, &sm))) {
            snprintf(what, sizeof what, "vkCreateShaderModule(%s)", spv[i].name);
            rc = vk_fail(msg, len, r, what);
            break;
        }
        VkComputePipelineCreateInfo cpi = {
            .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
            .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                      .module = sm, .pName = "main"},
            .layout = d->layout,
        };
        if ((r = vkCreateComputePipelines(d->dev, d->cache, 1, &cpi, NULL, &d->pipes[i]))) {
            d->pipes[i] = VK_NULL_HANDLE;
            snprintf(what, sizeof what, "vkCreateComputePipelines(%s)", spv[i].name);
            rc = vk_fail(msg, len, r, what);
        }
        vkDestroyShaderModule(d->dev, sm, NULL);
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
    return DROPBLOCK_OK;
}

static void vk_release(struct db_device *dev)
{
    struct vk_dev *d = dev->priv;
    if (!d) return;
    if (d->dev) {
        vkDeviceWaitIdle(d->dev); /* nothing should run, but never free under the GPU */
        vkDestroyFence(d->dev, d->fence, NULL);
        vkDestroyCommandPool(d->dev, d->cpool, NULL); /* frees the command buffer */
        vkDestroyDescriptorPool(d->dev, d->dpool, NULL); /* frees the set */
        for (int i = 0; i < PASS_N; i++) vkDestroyPipeline(d->dev, d->pipes[i], NULL);
        vkDestroyPipelineCache(d->dev, d->cache, NULL);
        vkDestroyPipelineLayout(d->dev, d->layout, NULL);
        vkDestroyDescriptorSetLayout(d->dev, d->dsl, NULL);
        vkDestroyDevice(d->dev, NULL);
    }
    inst_unref(d->vi);
    free(d);
    dev->priv = NULL;
}

/* ---- run ------------------------------------------------------------------------------- */

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

static void buf_free(const struct vk_dev *d, struct vk_buf *b)
{
    if (b->map) vkUnmapMemory(d->dev, b->mem);
    vkDestroyBuffer(d->dev, b->buf, NULL);
    vkFreeMemory(d->dev, b->mem, NULL);
    memset(b, 0, sizeof *b);
}

/* A mapped storage buffer of at least size bytes (rounded up to whole words). */
static int buf_make(const struct vk_dev *d, struct vk_buf *b, uint64_t size, const char *what, char *msg, size_t len)
{
    char call[128];
    VkResult r;
    memset(b, 0, sizeof *b);
    b->size = (size + 3) & ~UINT64_C(3);
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = b->size,
                              .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT, .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    if ((r = vkCreateBuffer(d->dev, &bci, NULL, &b->buf))) {
        b->buf = VK_NULL_HANDLE;
        snprintf(call, sizeof call, "vkCreateBuffer(%s, %llu bytes)", what, (unsigned long long)b->size);
        return vk_fail(msg, len, r, call);
    }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, b->buf, &req);
    int64_t type = host_memory_type(d, req.memoryTypeBits);
    if (type < 0) {
        db_msg(msg, len, "%s: no host-visible coherent memory type for a storage buffer", what);
        buf_free(d, b);
        return DROPBLOCK_EUNAVAILABLE;
    }
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = req.size,
                                .memoryTypeIndex = (uint32_t)type};
    if ((r = vkAllocateMemory(d->dev, &mai, NULL, &b->mem))) {
        b->mem = VK_NULL_HANDLE;
        snprintf(call, sizeof call, "vkAllocateMemory(%s, %llu bytes)", what, (unsigned long long)req.size);
        buf_free(d, b);
        return vk_fail(msg, len, r, call);
    }
    if ((r = vkBindBufferMemory(d->dev, b->buf, b->mem, 0))) {
        snprintf(call, sizeof call, "vkBindBufferMemory(%s)", what);
        buf_free(d, b);
        return vk_fail(msg, len, r, call);
    }
    if ((r = vkMapMemory(d->dev, b->mem, 0, VK_WHOLE_SIZE, 0, &b->map))) {
        b->map = NULL;
        snprintf(call, sizeof call, "vkMapMemory(%s, %llu bytes)", what, (unsigned long long)req.size);
        buf_free(d, b);
        return vk_fail(msg, len, r, call);
    }
    return DROPBLOCK_OK;
}

/* workgroups for n invocations; the shaders loop over the rest (grid stride) */
static uint32_t groups_for(const struct vk_dev *d, uint64_t n)
{
    uint64_t g = (n + LOCAL_SIZE - 1) / LOCAL_SIZE, cap = d->props.limits.maxComputeWorkGroupCount[0];
    if (g > cap) g = cap;
    return g ? (uint32_t)g : 1u;
}

static void barrier(VkCommandBuffer cmd, VkPipelineStageFlags dst_stage, VkAccessFlags dst_access)
{
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER, .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT,
                          .dstAccessMask = dst_access};
    vkCmdPipelineBarrier(cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, dst_stage, 0, 1, &mb, 0, NULL, 0, NULL);
}

/* Records passes first..last (groups[i] workgroups each, a barrier between), submits them and
 * waits; their writes are then visible to the host. */
static int dispatch(struct vk_dev *d, int first, int last, const uint32_t *groups, char *msg, size_t len)
{
    VkResult r;
    if ((r = vkResetCommandBuffer(d->cmd, 0))) return vk_fail(msg, len, r, "vkResetCommandBuffer");
    VkCommandBufferBeginInfo cbi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                    .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    if ((r = vkBeginCommandBuffer(d->cmd, &cbi))) return vk_fail(msg, len, r, "vkBeginCommandBuffer");
    vkCmdBindDescriptorSets(d->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, d->layout, 0, 1, &d->set, 0, NULL);
    for (int p = first; p <= last; p++) {
        if (p > first)
            barrier(d->cmd, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
        vkCmdBindPipeline(d->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, d->pipes[p]);
        vkCmdDispatch(d->cmd, groups[p], 1, 1);
    }
    barrier(d->cmd, VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
    if ((r = vkEndCommandBuffer(d->cmd))) return vk_fail(msg, len, r, "vkEndCommandBuffer");
    /* reset first: a failed wait of an earlier job may have left the fence in any state */
    if ((r = vkResetFences(d->dev, 1, &d->fence))) return vk_fail(msg, len, r, "vkResetFences");
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &d->cmd};
    if ((r = vkQueueSubmit(d->queue, 1, &si, d->fence))) return vk_fail(msg, len, r, "vkQueueSubmit");
    if ((r = vkWaitForFences(d->dev, 1, &d->fence, VK_TRUE, UINT64_MAX))) {
        int rc = vk_fail(msg, len, r, "vkWaitForFences");
        vkQueueWaitIdle(d->queue); /* the buffers are freed next: never under a running pass */
        return rc;
    }
    return DROPBLOCK_OK;
}

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

static int vk_run(struct db_device *dev, const struct db_plan *pl, const void *in, void *out, void *mask,
                  dropblock_result *res)
{
    struct vk_dev *d = dev->priv;
    char *msg = res->message;
    const size_t len = sizeof res->message;
    const uint64_t t0 = db_now_us();
    const size_t es = dropblock_dtype_size(pl->p.dtype);
    const uint64_t RW = db_row_words(pl), units = db_units(pl);
    uint64_t per = chunk_units(pl, dev->info.max_buffer, msg, len);
    if (!per) return DROPBLOCK_EEXHAUSTED;
    const uint64_t nchunks = (units + per - 1) / per;

    /* every chunk fits buffers sized for the largest one */
    struct db_chunk ch;
    uint64_t max_rows = 0, max_elem = 0, max_samp = 0;
    for (uint64_t q = 0; q < nchunks; q++) {
        db_chunk_at(pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        if (ch.nrows > max_rows) max_rows = ch.nrows;
        if (ch.nelem > max_elem) max_elem = ch.nelem;
        if (ch.nsamp > max_samp) max_samp = ch.nsamp;
    }

    int rc = DROPBLOCK_OK;
    struct vk_buf bufs[B_N];
    memset(bufs, 0, sizeof bufs);
    uint64_t *kept = calloc(pl->N, sizeof *kept);
    uint32_t *scales = calloc(pl->N, sizeof *scales);
    const uint64_t total_rows = pl->numel / pl->W;
    uint32_t *hmask = NULL; /* all mask rows, between the passes, when there are several chunks */
    if (nchunks > 1 && total_rows <= SIZE_MAX / 4 / RW) hmask = malloc(total_rows * RW * 4);
    if (!kept || !scales || (nchunks > 1 && !hmask)) {
        db_msg(msg, len, "out of host memory for the mask of %llu rows", (unsigned long long)total_rows);
        rc = DROPBLOCK_EEXHAUSTED;
        goto done;
    }

    static const char *const names[B_N] = {"params", "mask chunk", "counts chunk", "kept partials", "x chunk", "", "scales"};
    const uint64_t sizes[B_N] = {DBP_COUNT * 4, max_rows * RW * 4, max_rows * 4, max_samp * 8,
                                 /* 16-bit pairs: an odd chunk's last word is whole */
                                 ((max_elem + 1) & ~UINT64_C(1)) * es, 0, max_samp * 4};
    for (int i = 0; i < B_N && !rc; i++)
        if (i != B_Y) rc = buf_make(d, &bufs[i], sizes[i], names[i], msg, len);
    if (rc) goto done;
    bufs[B_Y] = bufs[B_X]; /* in place on the device: each invocation reads its word, then writes it */

    VkDescriptorBufferInfo dbi[B_N];
    VkWriteDescriptorSet w[B_N];
    for (int i = 0; i < B_N; i++) {
        dbi[i] = (VkDescriptorBufferInfo){.buffer = bufs[i].buf, .offset = 0, .range = VK_WHOLE_SIZE};
        w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstSet = d->set,
                                      .dstBinding = (uint32_t)i, .descriptorCount = 1,
                                      .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .pBufferInfo = &dbi[i]};
    }
    vkUpdateDescriptorSets(d->dev, B_N, w, 0, NULL);

    uint32_t *prm = bufs[B_PRM].map, *mwords = bufs[B_MASK].map;
    const uint32_t *partial = bufs[B_KEPT].map;

    /* pass 1: mask rows and their counts, then each sample's kept bits in the chunk */
    for (uint64_t q = 0; q < nchunks && !rc; q++) {
        db_chunk_at(pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        db_kernel_params(pl, &ch, prm);
        uint32_t groups[PASS_N] = {groups_for(d, ch.nrows), groups_for(d, ch.nsamp), 0};
        if ((rc = dispatch(d, PASS_MASK, PASS_COUNT, groups, msg, len))) break;
        for (uint64_t s = 0; s < ch.nsamp; s++)
            kept[ch.n0 + s] += (uint64_t)partial[2 * s] | ((uint64_t)partial[2 * s + 1] << 32);
        if (hmask) memcpy(hmask + ch.r0 * RW, mwords, ch.nrows * RW * 4);
    }
    if (rc) goto done;
    const uint64_t t1 = db_now_us();

    if ((rc = db_plan_scales(pl, kept, scales, res))) goto done;
    const uint64_t t2 = db_now_us();

    /* pass 3: y = (x * scale) * keep */
    for (uint64_t q = 0; q < nchunks && !rc; q++) {
        db_chunk_at(pl, q * per, (q + 1) * per < units ? (q + 1) * per : units, &ch);
        db_kernel_params(pl, &ch, prm);
        memcpy(bufs[B_SCALES].map, scales + ch.n0, ch.nsamp * 4);
        if (hmask) memcpy(mwords, hmask + ch.r0 * RW, ch.nrows * RW * 4);
        memcpy(bufs[B_X].map, (const char *)in + ch.e0 * es, ch.nelem * es);
        uint64_t inv = pl->p.dtype == DROPBLOCK_F32 ? ch.nelem : (ch.nelem + 1) / 2;
        uint32_t groups[PASS_N] = {0, 0, groups_for(d, inv)};
        if ((rc = dispatch(d, PASS_APPLY, PASS_APPLY, groups, msg, len))) break;
        memcpy((char *)out + ch.e0 * es, bufs[B_Y].map, ch.nelem * es);
    }
    if (rc) goto done;
    if (mask) db_mask_export_rows(pl, hmask ? hmask : mwords, 0, total_rows, mask);
    const uint64_t t3 = db_now_us();
    res->timing_us[0] = t1 - t0; /* buffers, mask and count passes */
    res->timing_us[1] = t2 - t1;
    res->timing_us[2] = t3 - t2;
    res->timing_us[3] = t3 - t0;

done:
    for (int i = 0; i < B_N; i++)
        if (i != B_Y) buf_free(d, &bufs[i]);
    free(hmask);
    free(kept);
    free(scales);
    return rc;
}

const struct backend_ops db_backend_vulkan = {"vulkan", vk_enumerate, vk_prepare, vk_run, vk_release};
