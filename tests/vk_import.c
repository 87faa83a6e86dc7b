/* vk_import.c: see vk_import.h. */
#include "vk_import.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vulkan/vulkan.h>

struct vki {
    VkInstance inst;
    VkPhysicalDevice pd;
    VkDevice dev;
};

struct vki_mem {
    VkBuffer buf; /* the dedicated allocation's buffer */
    VkDeviceMemory mem;
};

static VkPhysicalDevice find_device(VkInstance inst, const uint8_t uuid[16])
{
    uint32_t n = 0;
    if (vkEnumeratePhysicalDevices(inst, &n, NULL) != VK_SUCCESS || !n) return VK_NULL_HANDLE;
    VkPhysicalDevice *pds = calloc(n, sizeof *pds), found = VK_NULL_HANDLE;
    if (pds && vkEnumeratePhysicalDevices(inst, &n, pds) == VK_SUCCESS)
        for (uint32_t i = 0; i < n && !found; i++) {
            VkPhysicalDeviceIDProperties id = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_ID_PROPERTIES};
            VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &id};
            vkGetPhysicalDeviceProperties2(pds[i], &p2);
            if (!memcmp(id.deviceUUID, uuid, 16)) found = pds[i];
        }
    free(pds);
    return found;
}

struct vki *vki_open(const uint8_t uuid[16], char *msg, size_t len)
{
    struct vki *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .apiVersion = VK_API_VERSION_1_1};
    VkInstanceCreateInfo ici = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    if (vkCreateInstance(&ici, NULL, &v->inst) != VK_SUCCESS) {
        snprintf(msg, len, "vkCreateInstance failed");
        free(v);
        return NULL;
    }
    if (!(v->pd = find_device(v->inst, uuid))) {
        snprintf(msg, len, "no Vulkan device with the exporter's UUID");
        vki_close(v);
        return NULL;
    }
    float prio = 1.0f;
    uint32_t qn = 1;
    VkQueueFamilyProperties qf;
    vkGetPhysicalDeviceQueueFamilyProperties(v->pd, &qn, &qf);
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                   .queueFamilyIndex = 0,
                                   .queueCount = 1,
                                   .pQueuePriorities = &prio};
    const char *ext = VK_KHR_EXTERNAL_MEMORY_FD_EXTENSION_NAME;
    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                              .queueCreateInfoCount = 1,
                              .pQueueCreateInfos = &qci,
                              .enabledExtensionCount = 1,
                              .ppEnabledExtensionNames = &ext};
    if (vkCreateDevice(v->pd, &dci, NULL, &v->dev) != VK_SUCCESS) {
        snprintf(msg, len, "vkCreateDevice with VK_KHR_external_memory_fd failed");
        vki_close(v);
        return NULL;
    }
    return v;
}

void vki_close(struct vki *v)
{
    if (!v) return;
    if (v->dev) vkDestroyDevice(v->dev, NULL);
    if (v->inst) vkDestroyInstance(v->inst, NULL);
    free(v);
}

void *vki_import(struct vki *v, int fd, uint64_t allocation_size, uint32_t type, int dedicated, uint64_t size,
                 void **map, char *msg, size_t len)
{
    struct vki_mem *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    VkMemoryDedicatedAllocateInfo ded = {.sType = VK_STRUCTURE_TYPE_MEMORY_DEDICATED_ALLOCATE_INFO};
    if (dedicated) {
        VkExternalMemoryBufferCreateInfo ebi = {.sType = VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO,
                                                .handleTypes = VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT};
        VkBufferCreateInfo bci = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                                  .pNext = &ebi,
                                  .size = (size + 3) & ~UINT64_C(3),
                                  .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                           VK_BUFFER_USAGE_TRANSFER_DST_BIT,
                                  .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
        if (vkCreateBuffer(v->dev, &bci, NULL, &m->buf) != VK_SUCCESS) {
            snprintf(msg, len, "vkCreateBuffer for the dedicated import failed");
            free(m);
            return NULL;
        }
        ded.buffer = m->buf;
    }
    VkImportMemoryFdInfoKHR imp = {.sType = VK_STRUCTURE_TYPE_IMPORT_MEMORY_FD_INFO_KHR,
                                   .pNext = dedicated ? &ded : NULL,
                                   .handleType = VK_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD_BIT,
                                   .fd = fd};
    VkMemoryAllocateInfo mai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                                .pNext = &imp,
                                .allocationSize = allocation_size,
                                .memoryTypeIndex = type};
    VkResult r = vkAllocateMemory(v->dev, &mai, NULL, &m->mem);
    if (r != VK_SUCCESS) {
        snprintf(msg, len, "vkAllocateMemory importing the fd failed (VkResult %d)", (int)r);
        vki_release(v, m);
        return NULL;
    }
    if ((r = vkMapMemory(v->dev, m->mem, 0, VK_WHOLE_SIZE, 0, map)) != VK_SUCCESS) {
        snprintf(msg, len, "vkMapMemory of the imported memory failed (VkResult %d)", (int)r);
        vki_release(v, m);
        return NULL;
    }
    return m;
}

void vki_release(struct vki *v, void *imported)
{
    struct vki_mem *m = imported;
    if (!m) return;
    if (m->mem) vkFreeMemory(v->dev, m->mem, NULL); /* (unmaps it) */
    if (m->buf) vkDestroyBuffer(v->dev, m->buf, NULL);
    free(m);
}
