/* vk_import.h: a client's side of device memory shared by file descriptor (tests only): its own
 * Vulkan instance on the exporting device (matched by device UUID, as CUDA and HIP match it),
 * the descriptor imported (VkImportMemoryFdInfoKHR with the exporter's allocation size, memory
 * type and dedication) and mapped, so that a test writes x and reads y in the very memory the
 * daemon's passes run on. */
#ifndef DROPBLOCK_TESTS_VK_IMPORT_H
#define DROPBLOCK_TESTS_VK_IMPORT_H

#include <stddef.h>
#include <stdint.h>

struct vki;

/* The importer on the device whose VkPhysicalDeviceIDProperties::deviceUUID is uuid; NULL with
 * msg where there is none or it lacks VK_KHR_external_memory_fd. */
struct vki *vki_open(const uint8_t uuid[16], char *msg, size_t len);
void vki_close(struct vki *v);

/* Imports fd (taken, on success only: the caller closes it otherwise) as allocation_size bytes
 * of memory type type (dedicated: with a buffer of size bytes), maps it: *map. Returns a handle
 * for vki_release, NULL with msg on failure. */
void *vki_import(struct vki *v, int fd, uint64_t allocation_size, uint32_t type, int dedicated, uint64_t size,
                 void **map, char *msg, size_t len);
void vki_release(struct vki *v, void *imported);

#endif
