/* vulkan_memory.c: the Vulkan backend's memory (see backend_vulkan.c for the design): memory
 * types, the device's buffers kept between jobs (DEVICE_LOCAL with host-visible twins on staged
 * devices, else mapped), the caller's tensors imported through VK_EXT_external_memory_host and
 * the descriptor bindings. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_vulkan.h"
#include "msg.h"

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
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                              .size = size,
                              .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_UNIFORM_BUFFER_BIT |
                                       VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT,
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
        db_msg(msg, len, "%s: no %s memory type for a storage buffer", what,
               local ? "device" : "host-visible coherent");
        return DROPBLOCK_EUNAVAILABLE;
    }
    VkMemoryAllocateInfo mai = {
        .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .allocationSize = req.size, .memoryTypeIndex = (uint32_t)type};
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
int vk_buf_make(struct vk_dev *d, struct vk_buf *b, uint64_t size, const char *what, int local, int twin, char *msg,
                size_t len)
{
    memset(b, 0, sizeof *b);
    b->size = size < 64 ? 64 : (size + 63) & ~UINT64_C(63);
    void *unused = NULL;
    int rc = buf_alloc(d, &b->buf, &b->mem, local ? &unused : &b->map, b->size, local, what, msg, len);
    if (!rc && local && twin) rc = buf_alloc(d, &b->twin, &b->twin_mem, &b->map, b->size, 0, what, msg, len);
    if (rc) vk_buf_free(d, b);
    return rc;
}

/* The device's buffer for binding i, kept from an earlier job when large enough. */
int vk_buf_ensure(struct vk_dev *d, int i, uint64_t size, char *msg, size_t len)
{
    static const char *const names[B_N] = {"params", "mask", "bench scratch", "kept", "x", "y", "scales", "fixup"};
    struct vk_buf *b = &d->bufs[i];
    if (i == B_PRM && size < PRM_BYTES) size = PRM_BYTES; /* the uniform block's whole size, always */
    if (b->buf && b->size >= size) return DROPBLOCK_OK;
    if (b->buf) vk_buf_free(d, b);
    /* staged: all on the device (every invocation reads the parameter words: over PCIe that would
     * be a read of system memory each); the host reads or writes the parameters, x, the mask,
     * the counts and the scales through twins */
    const int local = d->staged;
    return vk_buf_make(d, b, size, names[i], local,
                       local && (i == B_PRM || i == B_X || i == B_MASK || i == B_KEPT || i == B_SCALES), msg, len);
}

/* A buffer over the caller's memory (VK_EXT_external_memory_host), or 0 where the pointer, the
 * size or the driver does not allow one; the tensor is then copied. */
int vk_buf_import(struct vk_dev *d, struct vk_buf *b, const void *p, uint64_t bytes)
{
    memset(b, 0, sizeof *b);
    if (!d->has_import || d->knobs->vulkan_copy || ((uintptr_t)p & (d->import_align - 1)) || bytes % 4) return 0;
    uint64_t size = (bytes + d->import_align - 1) & ~(d->import_align - 1);
    VkMemoryHostPointerPropertiesEXT hp = {.sType = VK_STRUCTURE_TYPE_MEMORY_HOST_POINTER_PROPERTIES_EXT};
    if (d->get_host_ptr_props(d->dev, VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT, p, &hp) != VK_SUCCESS)
        return 0;
    VkExternalMemoryBufferCreateInfo ebi = {.sType = VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO,
                                            .handleTypes = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT};
    VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                              .pNext = &ebi,
                              .size = size,
                              .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                       VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                              .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    if (vkCreateBuffer(d->dev, &bci, NULL, &b->buf) != VK_SUCCESS) {
        b->buf = VK_NULL_HANDLE;
        return 0;
    }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, b->buf, &req);
    int64_t type = host_memory_type(d, req.memoryTypeBits & hp.memoryTypeBits);
    VkImportMemoryHostPointerInfoEXT imp = {.sType = VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT,
                                            .handleType = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT,
                                            .pHostPointer = (void *)p};
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                                .pNext = &imp,
                                .allocationSize = size > req.size ? size : req.size,
                                .memoryTypeIndex = (uint32_t)type};
    if (type < 0 || req.size > size || vkAllocateMemory(d->dev, &mai, NULL, &b->mem) != VK_SUCCESS) {
        b->mem = VK_NULL_HANDLE;
        vk_buf_free(d, b);
        return 0;
    }
    if (vkBindBufferMemory(d->dev, b->buf, b->mem, 0) != VK_SUCCESS) {
        vk_buf_free(d, b);
        return 0;
    }
    b->size = size;
    return 1;
}

/* The bindings of the submissions that follow: the device's buffers, x and y (maybe the same)
 * at xb and yb. */
void vk_bind_all(struct vk_dev *d, VkBuffer xb, VkBuffer yb) { vk_bind_at(d, xb, 0, yb, 0, VK_WHOLE_SIZE); }

/* vk_bind_all with x at xoff in xb and y at yoff in yb, range bytes each (VK_WHOLE_SIZE: to the
 * buffer's end). A kept command buffer has its own descriptor set, written when it is recorded
 * (vulkan_record.c): the bindings are part of what a submission must match to reuse it. */
void vk_bind_at(struct vk_dev *d, VkBuffer xb, uint64_t xoff, VkBuffer yb, uint64_t yoff, uint64_t range)
{
    memset(&d->bind, 0, sizeof d->bind); /* compared with memcmp */
    for (int i = 0; i < B_N; i++) d->bind.bufs[i] = i == B_X ? xb : i == B_Y ? yb : d->bufs[i].buf;
    d->bind.xoff = xoff;
    d->bind.yoff = yoff;
    d->bind.range = range;
}

/* Writes set with the bindings b. */
void vk_write_set(struct vk_dev *d, VkDescriptorSet set, const struct vk_binding *b)
{
    VkDescriptorBufferInfo dbi[B_N];
    VkWriteDescriptorSet w[B_N];
    for (int i = 0; i < B_N; i++) {
        dbi[i] = (VkDescriptorBufferInfo){.buffer = b->bufs[i],
                                          .offset = i == B_X   ? b->xoff
                                                    : i == B_Y ? b->yoff
                                                               : 0,
                                          .range = i == B_X || i == B_Y ? b->range : VK_WHOLE_SIZE};
        w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
                                      .dstSet = set,
                                      .dstBinding = (uint32_t)i,
                                      .descriptorCount = 1,
                                      .descriptorType = vk_binding_type(i),
                                      .pBufferInfo = &dbi[i]};
    }
    vkUpdateDescriptorSets(d->dev, B_N, w, 0, NULL);
}

/* (any kept command buffer may name b, and a buffer made later may get its handle: they are
 * forgotten) */
void vk_buf_free(struct vk_dev *d, struct vk_buf *b)
{
    if (!b->buf && !b->twin && !b->mem && !b->twin_mem) return;
    vk_forget_recordings(d);
    if (b->map) vkUnmapMemory(d->dev, b->twin ? b->twin_mem : b->mem);
    vkDestroyBuffer(d->dev, b->buf, NULL);
    vkFreeMemory(d->dev, b->mem, NULL);
    vkDestroyBuffer(d->dev, b->twin, NULL);
    vkFreeMemory(d->dev, b->twin_mem, NULL);
    memset(b, 0, sizeof *b);
}

/* ---- host regions' imports kept between jobs ------------------------------------------- */

/* The import of region r (the whole range: the daemon's regions are page-aligned mappings)
 * kept from an earlier job, or made now, taking a reference on r and the least recently used
 * entry's place when all are taken; NULL where the range cannot be imported. */
const struct vk_buf *vk_region_import(struct vk_dev *d, struct db_host_region *r)
{
    struct vk_kept_import *lru = &d->kept[0];
    for (int i = 0; i < VK_KEPT_IMPORTS; i++) {
        struct vk_kept_import *k = &d->kept[i];
        if (k->r == r && !atomic_load(&r->gone)) {
            k->last_use = ++d->kept_uses;
            return &k->b;
        }
        if (lru->r && (!k->r || k->last_use < lru->last_use)) lru = k;
    }
    struct vk_buf b;
    if (d->import_align > (uint64_t)sysconf(_SC_PAGESIZE)) return NULL; /* past the mapping's last page */
    /* the size rounded up to the import alignment stays inside the mapping's last page where the
     * alignment is at most a page; vk_buf_import refuses a range it cannot take */
    if (atomic_load(&r->gone) || !vk_buf_import(d, &b, r->base, r->size & ~UINT64_C(3))) return NULL;
    if (lru->r) {
        vk_buf_free(d, &lru->b);
        lru->r->unref(lru->r);
    }
    r->ref(r);
    lru->r = r;
    lru->b = b;
    lru->last_use = ++d->kept_uses;
    return &lru->b;
}

/* Drops the kept imports of regions now gone (all: every one, the device's release). */
void vk_drop_imports(struct vk_dev *d, int all)
{
    for (int i = 0; i < VK_KEPT_IMPORTS; i++) {
        struct vk_kept_import *k = &d->kept[i];
        if (!k->r || (!all && !atomic_load(&k->r->gone))) continue;
        vk_buf_free(d, &k->b);
        k->r->unref(k->r);
        k->r = NULL;
    }
}
