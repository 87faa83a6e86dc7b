/* vulkan_semaphore.c: timeline semaphores a client orders its jobs with (docs/protocol.md
 * semaphore.create). A job may wait for one to reach a value before it reads its input and set
 * one to a value once its output is complete: exported as an opaque fd
 * (VK_KHR_external_semaphore_fd), a CUDA or HIP stream that imported it waits and signals on the
 * GPU. The wait is attached to the job's first submission (vk_submit), after the engine has seen
 * the value reached on the host, so that no batch ever waits in the queue for a value that may
 * never come; the signal is a batch of its own after the job's, so that it covers every command
 * of the job (a signal's first scope is all earlier submissions). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_vulkan.h"
#include "msg.h"

#define SEM_HANDLE VK_EXTERNAL_SEMAPHORE_HANDLE_TYPE_OPAQUE_FD_BIT

struct vk_sem {
    VkSemaphore sem;
    struct vk_sem *prev, *next; /* the device's live semaphores (destroyed at its release if not before) */
};

/* whether the driver exports timeline semaphores as opaque fds */
static int sem_exportable(const struct vk_dev *d)
{
    VkSemaphoreTypeCreateInfo ti = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO,
                                    .semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE};
    VkPhysicalDeviceExternalSemaphoreInfo si = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_SEMAPHORE_INFO, .pNext = &ti, .handleType = SEM_HANDLE};
    VkExternalSemaphoreProperties sp = {.sType = VK_STRUCTURE_TYPE_EXTERNAL_SEMAPHORE_PROPERTIES};
    vkGetPhysicalDeviceExternalSemaphoreProperties(d->pd, &si, &sp);
    return (sp.externalSemaphoreFeatures & VK_EXTERNAL_SEMAPHORE_FEATURE_EXPORTABLE_BIT) != 0;
}

int vk_can_semaphore(const struct db_device *dev, int exported, char *why, size_t len)
{
    const struct vk_dev *d = dev->priv;
    if (!d || !d->dev) {
        db_msg(why, len, "device %s is not prepared", dev->info.id);
        return 0;
    }
    if (!d->has_timeline) {
        db_msg(why, len, "device %s has no timeline semaphores: its driver lacks VK_KHR_timeline_semaphore",
               dev->info.id);
        return 0;
    }
    if (!exported) return 1;
    if (!d->has_sem_export) {
        db_msg(why, len, "device %s cannot export semaphores: its driver lacks VK_KHR_external_semaphore_fd",
               dev->info.id);
        return 0;
    }
    if (!sem_exportable(d)) {
        db_msg(why, len, "device %s cannot export semaphores: its driver exports no timeline semaphore as an opaque fd",
               dev->info.id);
        return 0;
    }
    return 1;
}

static void sem_link(struct vk_dev *d, struct vk_sem *s)
{
    pthread_mutex_lock(&d->export_lock);
    s->next = d->sems;
    if (d->sems) d->sems->prev = s;
    d->sems = s;
    pthread_mutex_unlock(&d->export_lock);
}

static void sem_unlink(struct vk_dev *d, struct vk_sem *s)
{
    pthread_mutex_lock(&d->export_lock);
    if (s->prev) s->prev->next = s->next;
    else d->sems = s->next;
    if (s->next) s->next->prev = s->prev;
    pthread_mutex_unlock(&d->export_lock);
}

int vk_sem_create(struct db_device *dev, int exported, void **handle, struct db_semaphore_info *info, char *msg,
                  size_t len)
{
    struct vk_dev *d = dev->priv;
    memset(info, 0, sizeof *info);
    info->fd = -1;
    if (!vk_can_semaphore(dev, exported, msg, len)) return DROPBLOCK_EINVAL;
    struct vk_sem *s = calloc(1, sizeof *s);
    if (!s) {
        db_msg(msg, len, "out of host memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    VkExportSemaphoreCreateInfo ei = {.sType = VK_STRUCTURE_TYPE_EXPORT_SEMAPHORE_CREATE_INFO,
                                      .handleTypes = SEM_HANDLE};
    VkSemaphoreTypeCreateInfo ti = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO,
                                    .pNext = exported ? &ei : NULL,
                                    .semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE,
                                    .initialValue = 0};
    VkSemaphoreCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO, .pNext = &ti};
    VkResult r = vkCreateSemaphore(d->dev, &ci, NULL, &s->sem);
    if (r) {
        free(s);
        return vk_fail(msg, len, r, "vkCreateSemaphore(timeline)");
    }
    if (exported) {
        VkSemaphoreGetFdInfoKHR gi = {
            .sType = VK_STRUCTURE_TYPE_SEMAPHORE_GET_FD_INFO_KHR, .semaphore = s->sem, .handleType = SEM_HANDLE};
        if ((r = d->get_semaphore_fd(d->dev, &gi, &info->fd))) {
            vkDestroySemaphore(d->dev, s->sem, NULL);
            free(s);
            info->fd = -1;
            return vk_fail(msg, len, r, "vkGetSemaphoreFdKHR");
        }
        snprintf(info->handle_type, sizeof info->handle_type, "opaque_fd");
    }
    memcpy(info->device_uuid, d->device_uuid, sizeof info->device_uuid);
    memcpy(info->driver_uuid, d->driver_uuid, sizeof info->driver_uuid);
    sem_link(d, s);
    *handle = s;
    return DROPBLOCK_OK;
}

/* No job of the device holds it (the engine's references): its last signal batch was waited for. */
void vk_sem_free(struct db_device *dev, void *handle)
{
    struct vk_dev *d = dev->priv;
    struct vk_sem *s = handle;
    if (!d || !s) return;
    sem_unlink(d, s);
    vkDestroySemaphore(d->dev, s->sem, NULL);
    free(s);
}

void vk_sem_release_all(struct vk_dev *d)
{
    while (d->sems) {
        struct vk_sem *s = d->sems;
        sem_unlink(d, s);
        vkDestroySemaphore(d->dev, s->sem, NULL);
        free(s);
    }
}

int vk_sem_value(struct db_device *dev, void *handle, uint64_t *value, char *msg, size_t len)
{
    struct vk_dev *d = dev->priv;
    const struct vk_sem *s = handle;
    VkResult r = d->sem_counter(d->dev, s->sem, value);
    return r ? vk_fail(msg, len, r, "vkGetSemaphoreCounterValueKHR") : DROPBLOCK_OK;
}

/* The host waits up to timeout_ns: DROPBLOCK_OK once reached, DROPBLOCK_ETIMEDOUT if not yet. */
int vk_sem_wait(struct db_device *dev, void *handle, uint64_t value, uint64_t timeout_ns, char *msg, size_t len)
{
    struct vk_dev *d = dev->priv;
    const struct vk_sem *s = handle;
    VkSemaphoreWaitInfo wi = {
        .sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO, .semaphoreCount = 1, .pSemaphores = &s->sem, .pValues = &value};
    VkResult r = d->sem_wait(d->dev, &wi, timeout_ns);
    if (r == VK_TIMEOUT) return DROPBLOCK_ETIMEDOUT;
    return r ? vk_fail(msg, len, r, "vkWaitSemaphoresKHR") : DROPBLOCK_OK;
}

/* Sets it to value: from the host, or (queued, under the device's lock) as a batch after every
 * submission so far, waited for so that nothing of it is pending when the semaphore is freed. */
int vk_sem_signal(struct db_device *dev, void *handle, uint64_t value, int queued, char *msg, size_t len)
{
    struct vk_dev *d = dev->priv;
    const struct vk_sem *s = handle;
    VkResult r;
    if (!queued) {
        VkSemaphoreSignalInfo si = {
            .sType = VK_STRUCTURE_TYPE_SEMAPHORE_SIGNAL_INFO, .semaphore = s->sem, .value = value};
        r = d->sem_signal(d->dev, &si);
        return r ? vk_fail(msg, len, r, "vkSignalSemaphoreKHR") : DROPBLOCK_OK;
    }
    VkTimelineSemaphoreSubmitInfo ts = {.sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
                                        .signalSemaphoreValueCount = 1,
                                        .pSignalSemaphoreValues = &value};
    VkSubmitInfo si = {
        .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .pNext = &ts, .signalSemaphoreCount = 1, .pSignalSemaphores = &s->sem};
    if ((r = vkResetFences(d->dev, 1, &d->fence))) return vk_fail(msg, len, r, "vkResetFences");
    if ((r = vkQueueSubmit(d->queue, 1, &si, d->fence))) return vk_fail(msg, len, r, "vkQueueSubmit(signal)");
    if ((r = vkWaitForFences(d->dev, 1, &d->fence, VK_TRUE, UINT64_MAX))) {
        vkQueueWaitIdle(d->queue);
        return vk_fail(msg, len, r, "vkWaitForFences(signal)");
    }
    /* and the value itself: a driver may raise it after the fence (lavapipe does) */
    return vk_sem_wait(dev, handle, value, UINT64_MAX, msg, len);
}

/* The job's wait (dev->job_mem), for its first submission: the engine has seen it reached. */
void vk_sem_job_begin(struct vk_dev *d, const struct db_job_mem *mem)
{
    const struct vk_sem *s = mem ? mem->wait_sem : NULL;
    d->wait_sem = s ? s->sem : VK_NULL_HANDLE;
    d->wait_value = s ? mem->wait_value : 0;
}
