/* vulkan_export.c: device memory a client shares with the daemon (docs/protocol.md region.alloc;
 * see backend_vulkan.c for the design). The memory is allocated exportable as an opaque file
 * descriptor (VK_KHR_external_memory_fd), with a storage buffer over it that the passes bind at
 * a tensor's offset, so that a job on it reads and writes the very bytes the client's importer
 * (its own Vulkan instance, CUDA's cudaImportExternalMemory, HIP's) sees: nothing is copied
 * through the host. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_vulkan.h"
#include "msg.h"

#define EXPORT_HANDLE VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT
#define EXPORT_USAGE \
    (VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT)

/* What the driver says of storage buffers exported as opaque fds: exportable, and whether only
 * as dedicated allocations. */
static VkExternalMemoryFeatureFlags export_features(const struct vk_dev *d)
{
    VkPhysicalDeviceExternalBufferInfo bi = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_BUFFER_INFO,
                                             .usage = EXPORT_USAGE,
                                             .handleType = EXPORT_HANDLE};
    VkExternalBufferProperties bp = {.sType = VK_STRUCTURE_TYPE_EXTERNAL_BUFFER_PROPERTIES};
    vkGetPhysicalDeviceExternalBufferProperties(d->pd, &bi, &bp);
    return bp.externalMemoryProperties.externalMemoryFeatures;
}

int vk_can_export(const struct db_device *dev, char *why, size_t len)
{
    const struct vk_dev *d = dev->priv;
    if (!d || !d->dev) {
        db_msg(why, len, "device %s is not prepared", dev->info.id);
        return 0;
    }
    if (!d->has_export) {
        db_msg(why, len, "device %s cannot export memory: its driver lacks VK_KHR_external_memory_fd", dev->info.id);
        return 0;
    }
    if (!(export_features(d) & VK_EXTERNAL_MEMORY_FEATURE_EXPORTABLE_BIT)) {
        db_msg(why, len, "device %s cannot export memory: its driver exports no storage buffer as an opaque fd",
               dev->info.id);
        return 0;
    }
    return 1;
}

/* the memory type of an exported allocation among bits: device-local where the device has
 * memory the host cannot map (the passes' speed; importers on the GPU), else host-visible and
 * coherent (an importer may map it: lavapipe, integrated GPUs) */
static int64_t export_memory_type(const struct vk_dev *d, uint32_t bits)
{
    const VkMemoryPropertyFlags host = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    int64_t best = -1;
    int best_rank = -1;
    for (uint32_t i = 0; i < d->mem.memoryTypeCount; i++) {
        if (!(bits & (1u << i))) continue;
        VkMemoryPropertyFlags f = d->mem.memoryTypes[i].propertyFlags;
        int local = (f & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) != 0, mappable = (f & host) == host;
        int rank = d->staged ? 2 * local + mappable : 2 * mappable + local;
        if (rank > best_rank) {
            best = i;
            best_rank = rank;
        }
    }
    return best;
}

static void export_release(struct vk_dev *d, struct vk_export *x)
{
    vkDestroyBuffer(d->dev, x->buf, NULL);
    vkFreeMemory(d->dev, x->mem, NULL);
    free(x);
}

static void export_link(struct vk_dev *d, struct vk_export *x)
{
    pthread_mutex_lock(&d->export_lock);
    x->next = d->exports;
    if (d->exports) d->exports->prev = x;
    d->exports = x;
    pthread_mutex_unlock(&d->export_lock);
}

static void export_unlink(struct vk_dev *d, struct vk_export *x)
{
    pthread_mutex_lock(&d->export_lock);
    if (x->prev) x->prev->next = x->next;
    else d->exports = x->next;
    if (x->next) x->next->prev = x->prev;
    pthread_mutex_unlock(&d->export_lock);
}

/* at the device's release: the exports nobody gave back (an in-process caller's) */
void vk_export_release_all(struct vk_dev *d)
{
    while (d->exports) {
        struct vk_export *x = d->exports;
        export_unlink(d, x);
        export_release(d, x);
    }
}

/* The buffer over the allocation, the memory (dedicated where the driver asks), bound. */
static int export_make(struct vk_dev *d, struct vk_export *x, int dedicated, VkMemoryRequirements *req, uint32_t *type,
                       char *msg, size_t len)
{
    VkResult r;
    VkExternalMemoryBufferCreateInfo ebi = {.sType = VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO,
                                            .handleTypes = EXPORT_HANDLE};
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                              .pNext = &ebi,
                              .size = (x->size + 3) & ~UINT64_C(3),
                              .usage = EXPORT_USAGE,
                              .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    if ((r = vkCreateBuffer(d->dev, &bci, NULL, &x->buf))) return vk_fail(msg, len, r, "vkCreateBuffer(exported)");
    vkGetBufferMemoryRequirements(d->dev, x->buf, req);
    int64_t t = export_memory_type(d, req->memoryTypeBits);
    if (t < 0) {
        db_msg(msg, len, "no memory type for an exported storage buffer");
        return DROPBLOCK_EINVAL;
    }
    *type = (uint32_t)t;
    VkMemoryDedicatedAllocateInfo ded = {.sType = VK_STRUCTURE_TYPE_MEMORY_DEDICATED_ALLOCATE_INFO, .buffer = x->buf};
    VkExportMemoryAllocateInfo exi = {.sType = VK_STRUCTURE_TYPE_EXPORT_MEMORY_ALLOCATE_INFO,
                                      .pNext = dedicated ? &ded : NULL,
                                      .handleTypes = EXPORT_HANDLE};
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                                .pNext = &exi,
                                .allocationSize = req->size,
                                .memoryTypeIndex = *type};
    if ((r = vkAllocateMemory(d->dev, &mai, NULL, &x->mem))) {
        char call[96];
        snprintf(call, sizeof call, "vkAllocateMemory(exported, %llu bytes)", (unsigned long long)req->size);
        return vk_fail(msg, len, r, call);
    }
    if ((r = vkBindBufferMemory(d->dev, x->buf, x->mem, 0)))
        return vk_fail(msg, len, r, "vkBindBufferMemory(exported)");
    return DROPBLOCK_OK;
}

int vk_export_alloc(struct db_device *dev, uint64_t bytes, void **handle, struct db_export_info *info, char *msg,
                    size_t len)
{
    struct vk_dev *d = dev->priv;
    memset(info, 0, sizeof *info);
    info->fd = -1;
    if (!vk_can_export(dev, msg, len)) return DROPBLOCK_EINVAL;
    if (dev->info.global_mem && bytes > dev->info.global_mem) {
        db_msg(msg, len, "%llu bytes of device memory: more than device %s has (%llu bytes)", (unsigned long long)bytes,
               dev->info.id, (unsigned long long)dev->info.global_mem);
        return DROPBLOCK_EEXHAUSTED;
    }
    struct vk_export *x = calloc(1, sizeof *x);
    if (!x) {
        db_msg(msg, len, "out of host memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    x->size = bytes;
    const int dedicated = (export_features(d) & VK_EXTERNAL_MEMORY_FEATURE_DEDICATED_ONLY_BIT) != 0;
    VkMemoryRequirements req;
    uint32_t type = 0;
    int rc = export_make(d, x, dedicated, &req, &type, msg, len);
    int fd = -1;
    if (!rc) {
        VkMemoryGetFdInfoKHR gi = {
            .sType = VK_STRUCTURE_TYPE_MEMORY_GET_FD_INFO_KHR, .memory = x->mem, .handleType = EXPORT_HANDLE};
        VkResult r = d->get_memory_fd(d->dev, &gi, &fd);
        if (r) rc = vk_fail(msg, len, r, "vkGetMemoryFdKHR");
    }
    if (rc) {
        export_release(d, x);
        return rc;
    }
    info->fd = fd;
    info->size = bytes;
    info->allocation_size = req.size;
    info->memory_type_index = type;
    info->dedicated = dedicated;
    const VkMemoryPropertyFlags host = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    info->host_mappable = (d->mem.memoryTypes[type].propertyFlags & host) == host;
    snprintf(info->handle_type, sizeof info->handle_type, "opaque_fd");
    memcpy(info->device_uuid, d->device_uuid, sizeof info->device_uuid);
    memcpy(info->driver_uuid, d->driver_uuid, sizeof info->driver_uuid);
    export_link(d, x);
    *handle = x;
    return DROPBLOCK_OK;
}

void vk_export_free(struct db_device *dev, void *handle)
{
    struct vk_dev *d = dev->priv;
    if (!d || !handle) return;
    vk_forget_recordings(d); /* kept command buffers may name its buffer */
    export_unlink(d, handle);
    export_release(d, handle);
}
