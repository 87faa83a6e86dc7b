/* vulkan_device.c: the Vulkan backend's devices (see backend_vulkan.c for the design): VkResult
 * names and codes, enumerate (the instance shared by its devices, each device's properties, its
 * compute queue and memory), pipelines and the work-group tuning, release, and what prepare
 * runs last: the subnormal and f16 probes and the warm-up. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_vulkan.h"
#include "fp.h"
#include "msg.h"

#include "spv_probe.h"
#include "spv_apply_half.h"
#include "spv_probe_half.h"

static const char *vk_result_name(VkResult r, char *buf, size_t len)
{
    switch (r) {
/* clang-format off */
#define NAME(x) case x: return #x;
    NAME(VK_SUCCESS) NAME(VK_NOT_READY) NAME(VK_TIMEOUT) NAME(VK_EVENT_SET) NAME(VK_EVENT_RESET)
    NAME(VK_INCOMPLETE) NAME(VK_ERROR_OUT_OF_HOST_MEMORY) NAME(VK_ERROR_OUT_OF_DEVICE_MEMORY)
    NAME(VK_ERROR_INITIALIZATION_FAILED) NAME(VK_ERROR_DEVICE_LOST) NAME(VK_ERROR_MEMORY_MAP_FAILED)
    NAME(VK_ERROR_LAYER_NOT_PRESENT) NAME(VK_ERROR_EXTENSION_NOT_PRESENT) NAME(VK_ERROR_FEATURE_NOT_PRESENT)
    NAME(VK_ERROR_INCOMPATIBLE_DRIVER) NAME(VK_ERROR_TOO_MANY_OBJECTS) NAME(VK_ERROR_FORMAT_NOT_SUPPORTED)
    NAME(VK_ERROR_FRAGMENTED_POOL) NAME(VK_ERROR_OUT_OF_POOL_MEMORY) NAME(VK_ERROR_INVALID_EXTERNAL_HANDLE)
#undef NAME
            /* clang-format on */
            default : snprintf(buf, len, "VkResult %d", (int)r);
        return buf;
    }
}

/* "what: VK_ERROR_..." into msg; the DROPBLOCK_E* code for r */
int vk_fail(char *msg, size_t len, VkResult r, const char *what)
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

/* a compute queue; one without graphics may run beside a display's work */
static void pick_queue(struct vk_dev *d)
{
    d->qfam = -1;
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(d->pd, &nq, NULL);
    VkQueueFamilyProperties *qf = nq ? calloc(nq, sizeof *qf) : NULL;
    if (!qf) return;
    vkGetPhysicalDeviceQueueFamilyProperties(d->pd, &nq, qf);
    for (uint32_t i = 0; i < nq; i++) {
        if (!(qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) || qf[i].queueCount == 0) continue;
        if (d->qfam < 0 || !(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) d->qfam = i;
        if (!(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) break;
    }
    free(qf);
}

/* info's api, vendor, name, kind and driver from the 1.0 properties */
static void describe_props(const VkPhysicalDeviceProperties *p, dropblock_device_info *info)
{
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
}

/* The 1.1 properties (the device must be 1.1): the subgroup size, the import alignment, the
 * driver's name, the UUID; *maxbuf lowered to the largest allocation */
static void describe_props11(struct vk_dev *d, dropblock_device_info *info, uint64_t *maxbuf)
{
    const VkPhysicalDeviceProperties *p = &d->props;
    VkPhysicalDeviceDriverProperties drv = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
    VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES};
    VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceExternalMemoryHostPropertiesEXT hp = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_MEMORY_HOST_PROPERTIES_EXT, .pNext = &sg};
    VkPhysicalDeviceIDProperties idp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES,
                                        .pNext = d->has_import ? (void *)&hp : (void *)&sg};
    m3.pNext = &idp;
    int have_drv = p->apiVersion >= VK_API_VERSION_1_2 || has_extension(d->pd, VK_KHR_DRIVER_PROPERTIES_EXTENSION_NAME);
    if (have_drv) drv.pNext = &m3;
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                      .pNext = have_drv ? (void *)&drv : (void *)&m3};
    vkGetPhysicalDeviceProperties2(d->pd, &p2);
    d->subgroup = sg.subgroupSize;
    d->import_align = hp.minImportedHostPointerAlignment;
    if (d->import_align == 0 || (d->import_align & (d->import_align - 1))) d->has_import = 0;
    if (have_drv && drv.driverName[0])
        snprintf(info->driver, sizeof info->driver, "%s%s%s", drv.driverName, drv.driverInfo[0] ? " " : "",
                 drv.driverInfo);
    memcpy(d->device_uuid, idp.deviceUUID, sizeof d->device_uuid);
    memcpy(d->driver_uuid, idp.driverUUID, sizeof d->driver_uuid);
    db_uuid_text(info->uuid, idp.deviceUUID); /* (info->uuid holds 40) */
    if (m3.maxMemoryAllocationSize < *maxbuf) *maxbuf = m3.maxMemoryAllocationSize;
}

static void describe(struct vk_dev *d, dropblock_device_info *info)
{
    VkPhysicalDevice pd = d->pd;
    vkGetPhysicalDeviceProperties(pd, &d->props);
    vkGetPhysicalDeviceMemoryProperties(pd, &d->mem);
    VkPhysicalDeviceFeatures feat;
    vkGetPhysicalDeviceFeatures(pd, &feat);
    d->has_int64 = feat.shaderInt64 == VK_TRUE;
    pick_queue(d);
    d->has_import = has_extension(pd, VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME);
    d->has_export = has_extension(pd, VK_KHR_EXTERNAL_MEMORY_FD_EXTENSION_NAME);
    d->has_timeline = has_extension(pd, VK_KHR_TIMELINE_SEMAPHORE_EXTENSION_NAME);
    d->has_sem_export = d->has_timeline && has_extension(pd, VK_KHR_EXTERNAL_SEMAPHORE_FD_EXTENSION_NAME);
    const VkPhysicalDeviceProperties *p = &d->props;
    describe_props(p, info);
    uint64_t maxbuf = p->limits.maxStorageBufferRange;
    info->uuid[0] = 0;
    /* the 1.1 property structures may only be asked of a 1.1 device */
    if (p->apiVersion >= VK_API_VERSION_1_1) describe_props11(d, info, &maxbuf);
    uint64_t cap = d->knobs->vulkan_max_buffer;
    if (cap && cap < maxbuf) maxbuf = cap;
    /* a multiple of 4, so that buffers rounded up to whole words stay within the limit */
    info->max_buffer = maxbuf & ~UINT64_C(3);
    info->global_mem = 0;
    for (uint32_t i = 0; i < d->mem.memoryHeapCount; i++)
        if ((d->mem.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) &&
            d->mem.memoryHeaps[i].size > info->global_mem)
            info->global_mem = d->mem.memoryHeaps[i].size;
}

int vk_enumerate(const struct db_backend_config *cfg, struct db_device *out, size_t cap, char *msg, size_t len)
{
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
            d->knobs = cfg->knobs;
            pthread_mutex_init(&d->export_lock, NULL);
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

/* ---- pipelines and tuning ---------------------------------------------------------- */

/* A compute pipeline of spv with the work-group size d->local (specialization constant 0) and
 * mask.comp's completion count where d->mask_done (constant 1; the other shaders have none). */
VkResult vk_make_pipeline(struct vk_dev *d, const struct spv *spv, VkPipeline *out)
{
    VkShaderModuleCreateInfo smi = {
        .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, .codeSize = spv->size, .pCode = spv->code};
    VkShaderModule sm;
    VkResult r = vkCreateShaderModule(d->dev, &smi, NULL, &sm);
    if (r) return r;
    const uint32_t spec[2] = {d->local, d->mask_done};
    const VkSpecializationMapEntry me[2] = {{.constantID = 0, .offset = 0, .size = sizeof(uint32_t)},
                                            {.constantID = 1, .offset = 4, .size = sizeof(uint32_t)}};
    VkSpecializationInfo si = {.mapEntryCount = 2, .pMapEntries = me, .dataSize = sizeof spec, .pData = spec};
    VkComputePipelineCreateInfo cpi = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
                  .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                  .module = sm,
                  .pName = "main",
                  .pSpecializationInfo = &si},
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
 * tiles several to an invocation; on GPUs the scatter pass (each candidate block's words once)
 * where a job allows it, about 16 blocks an invocation. */
static void vk_choose_tuning(struct vk_dev *d)
{
    uint32_t sg = d->subgroup ? d->subgroup : 32, local = 4 * sg;
    if (local < 64) local = 64;
    if (local > 256) local = 256;
    if (local > d->props.limits.maxComputeWorkGroupSize[0]) local = d->props.limits.maxComputeWorkGroupSize[0];
    if (local > d->props.limits.maxComputeWorkGroupInvocations) local = d->props.limits.maxComputeWorkGroupInvocations;
    d->local = local ? local : 1;
    /* mask.comp's completion count where loops may be cut: lavapipe, whatever its tuning */
    d->mask_done = d->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
    /* DROPBLOCK_VULKAN_SHAPE=gpu: a CPU device gets the GPU tuning (tests: the scatter pass on
     * lavapipe; vk_job_tuning still keeps its mask tiles within lavapipe's loop limit) */
    int cpu = d->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU && !d->knobs->vulkan_shape_gpu;
    d->tile_rows = cpu ? UINT32_MAX : 8;
    d->cand_budget = cpu ? 2048 : 4096;
    d->item_cands = cpu ? 2048 : 256;
    d->scatter = cpu ? 0 : 16; /* whole planes already make each block about once on CPUs */
}

/* ---- release ------------------------------------------------------------------------- */

void vk_release(struct db_device *dev)
{
    struct vk_dev *d = dev->priv;
    if (!d) return;
    if (d->dev) {
        vkDeviceWaitIdle(d->dev); /* nothing should run, but never free under the GPU */
        vk_drop_imports(d, 1);
        vk_export_release_all(d);
        vk_sem_release_all(d);
        for (int i = 0; i < B_N; i++)
            if (i != B_Y) vk_buf_free(d, &d->bufs[i]);
        vkDestroyFence(d->dev, d->fence, NULL);
        vkDestroyCommandPool(d->dev, d->cpool, NULL);    /* frees the command buffers */
        vkDestroyDescriptorPool(d->dev, d->dpool, NULL); /* frees the sets */
        for (int i = 0; i < PASS_N; i++) vkDestroyPipeline(d->dev, d->pipes[i], NULL);
        for (int i = 0; i < BS_N; i++) vkDestroyPipeline(d->dev, d->bench[i], NULL);
        vkDestroyPipelineCache(d->dev, d->cache, NULL);
        vkDestroyPipelineLayout(d->dev, d->layout, NULL);
        vkDestroyDescriptorSetLayout(d->dev, d->dsl, NULL);
        vkDestroyDevice(d->dev, NULL);
    }
    vk_record_release(d);
    pthread_mutex_destroy(&d->export_lock);
    inst_unref(d->vi);
    free(d);
    dev->priv = NULL;
}

/* Whether the device's fast apply keeps subnormal f32 products exact: apply.comp's probe
 * variant on db_probe_subnormals' inputs, against core/fp.h (as the OpenCL backend's
 * probe_exact). Any failure on the way: not exact. */
static int vk_probe_exact(struct vk_dev *d)
{
    enum { NP = 256 };
    static const struct spv probe = {db_spv_probe, sizeof db_spv_probe, "probe"};
    uint32_t x[NP], s[NP];
    db_probe_subnormals(x, s, NP);
    char msg[256];
    VkPipeline pipe = VK_NULL_HANDLE;
    struct vk_buf y = {0};
    int ok = vk_make_pipeline(d, &probe, &pipe) == VK_SUCCESS;
    /* every binding needs a buffer for the descriptor set; the jobs grow them later */
    for (int i = 0; ok && i < B_N; i++)
        if (i != B_Y) ok = !vk_buf_ensure(d, i, i == B_X || i == B_SCALES ? sizeof x : 64, msg, sizeof msg);
    ok = ok && !vk_buf_make(d, &y, sizeof x, "probe", d->staged, d->staged, msg, sizeof msg);
    if (ok) {
        memcpy(d->bufs[B_X].map, x, sizeof x);
        memcpy(d->bufs[B_SCALES].map, s, sizeof s);
        vk_bind_all(d, d->bufs[B_X].buf, y.buf);
        ok = !vk_begin(d, msg, sizeof msg);
    }
    if (ok) {
        vk_to_device(d, B_X, sizeof x);
        vk_to_device(d, B_SCALES, sizeof s);
        const uint32_t push[4] = {0, NP, 0, 0};
        vk_step_push(d, pipe, push, NP, 0);
        if (y.twin) vk_copy(d, y.buf, y.twin, sizeof x, 1);
        ok = !vk_submit(d, msg, sizeof msg);
    }
    for (int i = 0; ok && i < NP; i++) ok = ((const uint32_t *)y.map)[i] == db_mul32(x[i], s[i]);
    if (y.buf) vk_buf_free(d, &y);
    if (pipe) vkDestroyPipeline(d->dev, pipe, NULL);
    vk_forget_recordings(d); /* the probe's pipeline */
    return ok;
}

/* Whether apply.comp's hardware f16 (unpackHalf2x16, two IEEE products, packHalf2x16 and one
 * select for NaN) gives core/fp.h's bits on this device: its probe variant widens all 65536 f16
 * words, and applies (scale 1) and narrows db_probe_half_cases' values; against db_ref_f16_to_f32 and
 * db_ref_f32_to_f16 of db_mul32's products. Any failure on the way: not exact (the integer
 * conversions stay). */
static int vk_probe_half(struct vk_dev *d)
{
    enum { NH = 1 << 15, NF = 1 << 18 }; /* u32 words of halves (all 65536), float32 values */
    static const struct spv probe = {db_spv_probe_half, sizeof db_spv_probe_half, "probe half"};
    const uint64_t xbytes = (NH + 2 * (uint64_t)NF) * 4, ybytes = (2 * NH + NF / 2) * 4;
    char msg[256];
    VkPipeline pipe = VK_NULL_HANDLE;
    struct vk_buf x = {0}, y = {0};
    int ok = vk_make_pipeline(d, &probe, &pipe) == VK_SUCCESS;
    /* every binding needs a buffer for the descriptor set (vk_probe_exact made them); x and y
     * are the probe's own, freed after it */
    for (int i = 0; ok && i < B_N; i++)
        if (i != B_Y && i != B_X) ok = !vk_buf_ensure(d, i, 64, msg, sizeof msg);
    ok = ok && !vk_buf_make(d, &x, xbytes, "probe half", d->staged, d->staged, msg, sizeof msg);
    ok = ok && !vk_buf_make(d, &y, ybytes, "probe half", d->staged, d->staged, msg, sizeof msg);
    if (ok) {
        uint32_t *xw = x.map;
        for (uint32_t i = 0; i < NH; i++) xw[i] = 2 * i | (2 * i + 1) << 16;
        db_probe_half_cases(xw + NH, xw + NH + NF, NF);
        vk_bind_all(d, x.buf, y.buf);
        ok = !vk_begin(d, msg, sizeof msg);
    }
    if (ok) {
        if (x.twin) vk_copy(d, x.twin, x.buf, xbytes, 0);
        const uint32_t push[4] = {0, NF / 2, NH, 0};
        vk_step_push(d, pipe, push, NF / 2, 0);
        if (y.twin) vk_copy(d, y.buf, y.twin, ybytes, 1);
        ok = !vk_submit(d, msg, sizeof msg);
    }
    if (ok) {
        const uint32_t *f = (const uint32_t *)x.map + NH, *keep = f + NF, *yw = y.map;
        for (uint32_t i = 0; ok && i < 2 * NH; i++) ok = yw[i] == db_ref_f16_to_f32((uint16_t)i);
        for (uint32_t i = 0; ok && i < NF; i++) {
            uint32_t p = db_mul32(f[i], 0x3F800000u);
            if (!keep[i]) p = db_mul32(p, 0);
            ok = (uint16_t)(yw[2 * NH + i / 2] >> (16 * (i % 2))) == db_ref_f32_to_f16(p);
        }
    }
    vk_buf_free(d, &x);
    vk_buf_free(d, &y);
    if (pipe) vkDestroyPipeline(d->dev, pipe, NULL);
    vk_forget_recordings(d); /* the probe's pipeline */
    return ok;
}

/* Dispatches every pass made (the scatter and count passes on GPU tunings alone) once on an
 * empty chunk (no tiles, rows, samples or elements: each returns at once), in one submission.
 * Drivers may compile a pipeline at its first dispatch rather than at vkCreateComputePipelines:
 * lavapipe JITs each shader then, 0.2 to 1.5 s for the mask pass, which the first job would
 * otherwise pay. step counts a pass first dispatched after this as cold (describe: cold=N;
 * tests/test_warmup.c checks that jobs of every kind leave it 0). */
static int vk_warm_up(struct vk_dev *d, char *msg, size_t len)
{
    int rc = vk_buf_ensure(d, B_PRM, PRM_BYTES, msg, len);
    if (rc) return rc;
    uint32_t *prm = d->bufs[B_PRM].map;
    memset(prm, 0, d->bufs[B_PRM].size);
    prm[DBP_TPW] = prm[DBP_SKR] = prm[DBP_CKW] = 1; /* no tiles, rows or words, one a work item */
    vk_bind_all(d, d->bufs[B_X].buf, d->bufs[B_X].buf);
    if ((rc = vk_begin(d, msg, len))) return rc;
    int n = 0;
    for (int i = 0; i < PASS_N; i++)
        if (d->pipes[i]) vk_step(d, d->pipes[i], 1, n++ == 0); /* the scatter passes where made */
    if ((rc = vk_submit(d, msg, len))) return rc;
    d->warm = n;
    return DROPBLOCK_OK;
}

/* ---- prepare ---------------------------------------------------------------------------
 * backend_vulkan.c's vk_prepare: vk_prepare_device, the pipeline cache and the pipelines,
 * vk_prepare_submission. */

/* whether the device can run the passes at all */
static int check_device(const struct vk_dev *d, char *msg, size_t len)
{
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
    return DROPBLOCK_OK;
}

/* the logical device with one compute queue (and VK_EXT_external_memory_host where offered),
 * staged or not */
static int make_device(struct vk_dev *d, char *msg, size_t len)
{
    VkResult r;
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                   .queueFamilyIndex = (uint32_t)d->qfam,
                                   .queueCount = 1,
                                   .pQueuePriorities = &prio};
    VkPhysicalDeviceFeatures feat = {.shaderInt64 = VK_TRUE};
    /* VK_KHR_external_memory and _semaphore are core in 1.1: only the host and fd extensions,
     * and timeline semaphores (core in 1.2, an extension for the 1.1 instance) are named */
    const char *exts[4];
    uint32_t nexts = 0;
    if (d->has_import) exts[nexts++] = VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME;
    if (d->has_export) exts[nexts++] = VK_KHR_EXTERNAL_MEMORY_FD_EXTENSION_NAME;
    VkPhysicalDeviceTimelineSemaphoreFeatures tl = {.sType =
                                                        VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_TIMELINE_SEMAPHORE_FEATURES};
    if (d->has_timeline) {
        VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &tl};
        vkGetPhysicalDeviceFeatures2(d->pd, &f2);
        if (!tl.timelineSemaphore) d->has_timeline = d->has_sem_export = 0;
    }
    if (d->has_timeline) exts[nexts++] = VK_KHR_TIMELINE_SEMAPHORE_EXTENSION_NAME;
    if (d->has_sem_export) exts[nexts++] = VK_KHR_EXTERNAL_SEMAPHORE_FD_EXTENSION_NAME;
    tl.pNext = NULL;
    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                              .pNext = d->has_timeline ? &tl : NULL,
                              .queueCreateInfoCount = 1,
                              .pQueueCreateInfos = &qci,
                              .enabledExtensionCount = nexts,
                              .ppEnabledExtensionNames = nexts ? exts : NULL,
                              .pEnabledFeatures = &feat};
    if ((r = vkCreateDevice(d->pd, &dci, NULL, &d->dev))) {
        d->dev = VK_NULL_HANDLE;
        return vk_fail(msg, len, r, "vkCreateDevice");
    }
    vkGetDeviceQueue(d->dev, (uint32_t)d->qfam, 0, &d->queue);
    if (d->has_import)
        d->get_host_ptr_props =
            (PFN_vkGetMemoryHostPointerPropertiesEXT)vkGetDeviceProcAddr(d->dev, "vkGetMemoryHostPointerPropertiesEXT");
    if (!d->get_host_ptr_props) d->has_import = 0;
    if (d->has_export) d->get_memory_fd = (PFN_vkGetMemoryFdKHR)vkGetDeviceProcAddr(d->dev, "vkGetMemoryFdKHR");
    if (!d->get_memory_fd) d->has_export = 0;
    if (d->has_timeline) {
        d->sem_counter =
            (PFN_vkGetSemaphoreCounterValueKHR)vkGetDeviceProcAddr(d->dev, "vkGetSemaphoreCounterValueKHR");
        d->sem_wait = (PFN_vkWaitSemaphoresKHR)vkGetDeviceProcAddr(d->dev, "vkWaitSemaphoresKHR");
        d->sem_signal = (PFN_vkSignalSemaphoreKHR)vkGetDeviceProcAddr(d->dev, "vkSignalSemaphoreKHR");
        if (!d->sem_counter || !d->sem_wait || !d->sem_signal) d->has_timeline = d->has_sem_export = 0;
    }
    if (d->has_sem_export)
        d->get_semaphore_fd = (PFN_vkGetSemaphoreFdKHR)vkGetDeviceProcAddr(d->dev, "vkGetSemaphoreFdKHR");
    if (!d->get_semaphore_fd) d->has_sem_export = 0;
    /* staged where the device has memory the host cannot map (discrete GPUs) */
    for (uint32_t i = 0; i < d->mem.memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = d->mem.memoryTypes[i].propertyFlags;
        if ((f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) && !(f & VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT)) d->staged = 1;
    }
    if (d->knobs->vulkan_stage >= 0) d->staged = d->knobs->vulkan_stage;
    return DROPBLOCK_OK;
}

/* the descriptor set layout of the buffers the passes share, and the pipeline layout */
static int make_layouts(struct vk_dev *d, char *msg, size_t len)
{
    VkResult r;
    VkDescriptorSetLayoutBinding b[B_N];
    for (int i = 0; i < B_N; i++)
        b[i] = (VkDescriptorSetLayoutBinding){.binding = (uint32_t)i,
                                              .descriptorType = vk_binding_type(i),
                                              .descriptorCount = 1,
                                              .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
    VkDescriptorSetLayoutCreateInfo dli = {
        .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO, .bindingCount = B_N, .pBindings = b};
    if ((r = vkCreateDescriptorSetLayout(d->dev, &dli, NULL, &d->dsl)))
        return vk_fail(msg, len, r, "vkCreateDescriptorSetLayout");
    VkPushConstantRange pcr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0, .size = PUSH_BYTES};
    VkPipelineLayoutCreateInfo pli = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO,
                                      .setLayoutCount = 1,
                                      .pSetLayouts = &d->dsl,
                                      .pushConstantRangeCount = 1,
                                      .pPushConstantRanges = &pcr};
    if ((r = vkCreatePipelineLayout(d->dev, &pli, NULL, &d->layout)))
        return vk_fail(msg, len, r, "vkCreatePipelineLayout");
    return DROPBLOCK_OK;
}

/* What prepare needs before the pipelines: the checks, the tuning, the device and layouts. */
int vk_prepare_device(struct vk_dev *d, char *msg, size_t len)
{
    int rc = check_device(d, msg, len);
    if (rc) return rc;
    vk_choose_tuning(d);
    if ((rc = make_device(d, msg, len))) return rc;
    return make_layouts(d, msg, len);
}

/* What prepare does after the pipelines: the descriptor set, the command buffer and its fence,
 * then the subnormal probe and the warm-up. */
int vk_prepare_submission(struct vk_dev *d, char *msg, size_t len)
{
    VkResult r;
    /* a descriptor set for each kept command buffer (vk_record_prepare) */
    VkDescriptorPoolSize ps[2] = {{.type = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = (B_N - 1) * VK_SLOTS},
                                  {.type = VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER, .descriptorCount = VK_SLOTS}};
    VkDescriptorPoolCreateInfo dpi = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
                                      .maxSets = VK_SLOTS,
                                      .poolSizeCount = 2,
                                      .pPoolSizes = ps};
    if ((r = vkCreateDescriptorPool(d->dev, &dpi, NULL, &d->dpool)))
        return vk_fail(msg, len, r, "vkCreateDescriptorPool");

    VkCommandPoolCreateInfo cpci = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                    .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                    .queueFamilyIndex = (uint32_t)d->qfam};
    if ((r = vkCreateCommandPool(d->dev, &cpci, NULL, &d->cpool))) return vk_fail(msg, len, r, "vkCreateCommandPool");
    int rc = vk_record_prepare(d, msg, len);
    if (rc) return rc;
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    if ((r = vkCreateFence(d->dev, &fci, NULL, &d->fence))) return vk_fail(msg, len, r, "vkCreateFence");
    d->hwexact = vk_probe_exact(d) && !d->knobs->vulkan_fixup;
    /* f16 in hardware where the half probe passes (DROPBLOCK_VULKAN_FIXUP=1: the integer path,
     * unprobed): the apply pipeline made again from apply.comp's HWHALF=1 build, before the
     * warm-up dispatches it */
    d->half_probe = d->knobs->vulkan_fixup ? -1 : vk_probe_half(d);
    d->hwhalf = 0;
    if (d->half_probe == 1) {
        static const struct spv apply = {db_spv_apply_half, sizeof db_spv_apply_half, "apply half"};
        VkPipeline hw = VK_NULL_HANDLE;
        if (vk_make_pipeline(d, &apply, &hw) == VK_SUCCESS) {
            vkDestroyPipeline(d->dev, d->pipes[PASS_APPLY], NULL);
            vk_forget_recordings(d);
            d->pipes[PASS_APPLY] = hw;
            d->hwhalf = 1;
        }
    }
    return vk_warm_up(d, msg, len);
}
