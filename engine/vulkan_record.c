/* vulkan_record.c: the Vulkan backend's recordings (see backend_vulkan.c for the design): the
 * commands of a submission, its barriers, and the command buffers kept between jobs.
 *
 * vk_begin .. vk_submit does not record into a command buffer as it goes: each command is
 * logged (struct vk_op: the pipeline, the push words, the groups, the barrier's scopes, the
 * buffers and byte counts), and vk_submit looks for a kept command buffer recorded from the same
 * log and the same descriptor bindings. A job of a shape seen before (the same passes, groups,
 * buffers and sizes: its parameters are in the uniform buffer, not in the commands) submits the
 * kept one as it is; only a new log is replayed into a command buffer, the least recently used
 * of VK_SLOTS, whose own descriptor set is written with the submission's bindings then. A kept
 * command buffer is valid while everything it names is: vk_forget_recordings (any buffer or
 * pipeline destroyed) bumps d->epoch, and a slot of an older epoch is never reused. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend_vulkan.h"
#include "msg.h"

/* ---- the log --------------------------------------------------------------------------- */

static struct vk_op *op_add(struct vk_dev *d, enum vk_op_kind kind)
{
    if (d->nops == d->cap_ops) {
        uint32_t cap = d->cap_ops ? 2 * d->cap_ops : 64;
        struct vk_op *n = realloc(d->ops, cap * sizeof *n);
        if (!n) {
            d->ops_failed = 1; /* vk_submit reports it */
            d->nops = 0;
            return NULL;
        }
        d->ops = n;
        d->cap_ops = cap;
    }
    struct vk_op *op = &d->ops[d->nops++];
    memset(op, 0, sizeof *op); /* the log is compared with memcmp: no stray padding bytes */
    op->kind = kind;
    return op;
}

/* Every kept command buffer is stale: a buffer or pipeline it may name was destroyed. */
void vk_forget_recordings(struct vk_dev *d) { d->epoch++; }

/* ---- barriers -------------------------------------------------------------------------- */

/* workgroups for n invocations; the shaders loop over the rest (grid stride) */
uint32_t vk_groups_for(const struct vk_dev *d, uint64_t n)
{
    uint64_t g = (n + d->local - 1) / d->local, cap = d->props.limits.maxComputeWorkGroupCount[0];
    if (g > cap) g = cap;
    return g ? (uint32_t)g : 1u;
}

/* Barriers: a command that must wait for the work recorded before it asks for one (vk_sync:
 * the stages that wait and their accesses) and every command says what it is (vk_record: its
 * stage and its writes). The barrier is recorded only before the next command of a stage that
 * waits, so requests with nothing between them make one barrier, and commands that wait for
 * nothing (fills, copies onto the device) may be recorded before it; its source scope is the
 * stages of the commands since the last barrier with that barrier's destination stages (the
 * chain to the work before it), its source accesses their writes. */
void vk_sync(struct vk_dev *d, VkPipelineStageFlags dst_stage, VkAccessFlags dst_access)
{
    d->bar_dst |= dst_stage;
    d->bar_dst_access |= dst_access;
}

static void barrier(struct vk_dev *d, VkPipelineStageFlags dst_stage, VkAccessFlags src_access,
                    VkAccessFlags dst_access)
{
    struct vk_op *op = op_add(d, OP_BARRIER);
    if (!op) return;
    op->w[0] = d->bar_src;
    op->w[1] = dst_stage;
    op->w[2] = src_access;
    op->w[3] = dst_access;
}

/* Before a command of stage (writes: its access flags that write; for_host: a copy for the
 * host after the passes, which a later copy for the host need not wait for): the barrier
 * requested for that stage, if any. */
void vk_record(struct vk_dev *d, VkPipelineStageFlags stage, VkAccessFlags writes, int for_host)
{
    if (d->bar_dst & stage) {
        if (d->bar_src) { /* else nothing of this submission to wait for */
            barrier(d, d->bar_dst, d->bar_wr, d->bar_dst_access);
            d->bar_src = d->bar_dst;
        }
        d->bar_wr = d->bar_dst = d->bar_dst_access = 0;
        d->bar_passes = 0;
    }
    d->bar_src |= stage;
    d->bar_wr |= writes;
    d->sub_wr |= writes;
    d->bar_passes |= !for_host;
}

/* A new recording: no work yet to wait for. */
static void sync_begin(struct vk_dev *d)
{
    d->bar_src = d->bar_dst = 0;
    d->bar_wr = d->bar_dst_access = d->sub_wr = 0;
    d->bar_passes = 0;
}

/* The end of the recording: every write of the submission made visible to the host (after the
 * fence). */
static void sync_host(struct vk_dev *d)
{
    if (!d->bar_src) return;
    d->bar_src |= VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    barrier(d, VK_PIPELINE_STAGE_HOST_BIT, d->sub_wr, VK_ACCESS_HOST_READ_BIT);
    sync_begin(d);
}

/* ---- commands -------------------------------------------------------------------------- */

/* Staged devices: the copy of bytes from src to dst. Copies onto the device wait for nothing
 * (the passes that read their buffers wait for them: vk_step); after_passes: a copy for the
 * host, after the passes before it (one barrier before a group of them). */
void vk_copy(struct vk_dev *d, VkBuffer src, VkBuffer dst, uint64_t bytes, int after_passes)
{
    vk_copy_at(d, src, 0, dst, 0, bytes, after_passes);
}

/* vk_copy from src_off in src to dst_off in dst */
void vk_copy_at(struct vk_dev *d, VkBuffer src, uint64_t src_off, VkBuffer dst, uint64_t dst_off, uint64_t bytes,
                int after_passes)
{
    if (!bytes) return;
    if (after_passes && d->bar_passes) vk_sync(d, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_READ_BIT);
    vk_record(d, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT, after_passes);
    struct vk_op *op = op_add(d, OP_COPY);
    if (!op) return;
    op->a = src;
    op->b = dst;
    op->a_off = src_off;
    op->b_off = dst_off;
    op->bytes = bytes;
}

/* the host's writes to binding i's twin (its first bytes) onto the device, before the passes */
void vk_to_device(struct vk_dev *d, int i, uint64_t bytes)
{
    if (d->bufs[i].twin) vk_copy(d, d->bufs[i].twin, d->bufs[i].buf, bytes, 0);
}

/* binding i's first bytes into its twin for the host, after the passes */
void vk_to_host(struct vk_dev *d, int i, uint64_t bytes)
{
    if (d->bufs[i].twin) vk_copy(d, d->bufs[i].buf, d->bufs[i].twin, bytes, 1);
}

/* The first bytes of b set to value (a device-side fill: waits for nothing before it). */
void vk_fill(struct vk_dev *d, VkBuffer b, uint64_t bytes, uint32_t value)
{
    vk_record(d, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT, 0);
    struct vk_op *op = op_add(d, OP_FILL);
    if (!op) return;
    op->b = b;
    op->bytes = bytes;
    op->w[0] = value;
}

static void push(struct vk_dev *d, const uint32_t words[4])
{
    struct vk_op *op = op_add(d, OP_PUSH);
    if (op) memcpy(op->w, words, sizeof op->w);
}

/* pipe over n invocations (its work groups), after a barrier on the work before it unless
 * first (the parameter words' copy onto a staged device still comes before it) */
static void dispatch(struct vk_dev *d, VkPipeline pipe, uint64_t n, int first)
{
    if (!first)
        vk_sync(d, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
    vk_record(d, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT, 0);
    struct vk_op *op = op_add(d, OP_DISPATCH);
    if (!op) return;
    op->pipe = pipe;
    op->w[0] = vk_groups_for(d, n);
}

/* A pass's pipe over n invocations (the passes' push words, vk_begin's). */
void vk_step(struct vk_dev *d, VkPipeline pipe, uint64_t n, int first)
{
    if (d->pushed_own) {
        const uint32_t words[4] = {(uint32_t)d->hwexact, 0, 0, 0};
        push(d, words);
        d->pushed_own = 0;
    }
    for (int i = 0; i < PASS_N; i++)
        if (pipe == d->pipes[i] && !(d->dispatched & 1u << i)) {
            d->dispatched |= 1u << i;
            if (d->warm) d->cold++;
        }
    dispatch(d, pipe, n, first);
}

/* pipe over n invocations with its own push words (the probes, the benchmark's steps); the
 * passes' words are pushed again before the next vk_step */
void vk_step_push(struct vk_dev *d, VkPipeline pipe, const uint32_t words[4], uint64_t n, int first)
{
    push(d, words);
    dispatch(d, pipe, n, first);
    d->pushed_own = 1;
}

/* ---- submitting ------------------------------------------------------------------------ */

/* A new submission's log: its descriptor set, on a staged device the parameter words onto the
 * device before any pass (the barrier is recorded before the first dispatch, even a benchmark
 * step's with none of its own, merged with the fills' before it), apply.comp's push word. */
int vk_begin(struct vk_dev *d, char *msg, size_t len)
{
    (void)msg;
    (void)len;
    d->nops = 0;
    d->ops_failed = 0;
    d->pushed_own = 0;
    sync_begin(d);
    if (d->bufs[B_PRM].twin) {
        vk_to_device(d, B_PRM, d->bufs[B_PRM].size);
        vk_sync(d, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT);
    }
    const uint32_t words[4] = {(uint32_t)d->hwexact, 0, 0, 0};
    push(d, words);
    return DROPBLOCK_OK;
}

/* the log into cmd, from its beginning, with set (written with the bindings) */
static int replay(struct vk_dev *d, VkCommandBuffer cmd, VkDescriptorSet set, char *msg, size_t len)
{
    VkResult r;
    if ((r = vkResetCommandBuffer(cmd, 0))) return vk_fail(msg, len, r, "vkResetCommandBuffer");
    vk_write_set(d, set, &d->bind); /* (no submission is pending: each is waited for) */
    VkCommandBufferBeginInfo cbi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
    if ((r = vkBeginCommandBuffer(cmd, &cbi))) return vk_fail(msg, len, r, "vkBeginCommandBuffer");
    vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, d->layout, 0, 1, &set, 0, NULL);
    VkPipeline bound = VK_NULL_HANDLE;
    for (uint32_t i = 0; i < d->nops; i++) {
        const struct vk_op *op = &d->ops[i];
        switch (op->kind) {
        case OP_PUSH: vkCmdPushConstants(cmd, d->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof op->w, op->w); break;
        case OP_DISPATCH:
            if (op->pipe != bound) vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, op->pipe);
            bound = op->pipe;
            vkCmdDispatch(cmd, op->w[0], 1, 1);
            break;
        case OP_BARRIER: {
            VkMemoryBarrier mb = {
                .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER, .srcAccessMask = op->w[2], .dstAccessMask = op->w[3]};
            vkCmdPipelineBarrier(cmd, op->w[0], op->w[1], 0, 1, &mb, 0, NULL, 0, NULL);
            break;
        }
        case OP_FILL: vkCmdFillBuffer(cmd, op->b, 0, op->bytes, op->w[0]); break;
        case OP_COPY: {
            VkBufferCopy c = {.srcOffset = op->a_off, .dstOffset = op->b_off, .size = op->bytes};
            vkCmdCopyBuffer(cmd, op->a, op->b, 1, &c);
            break;
        }
        }
    }
    if ((r = vkEndCommandBuffer(cmd))) return vk_fail(msg, len, r, "vkEndCommandBuffer");
    return DROPBLOCK_OK;
}

/* The kept command buffer of this log, or the least recently used one recorded from it. */
static int slot_for_log(struct vk_dev *d, struct vk_slot **out, char *msg, size_t len)
{
    struct vk_slot *lru = &d->slots[0];
    for (int i = 0; i < VK_SLOTS; i++) {
        struct vk_slot *s = &d->slots[i];
        if (s->epoch == d->epoch && s->nops == d->nops && !memcmp(&s->bind, &d->bind, sizeof s->bind) &&
            !memcmp(s->ops, d->ops, d->nops * sizeof *d->ops)) {
            d->recorded = 0;
            *out = s;
            return DROPBLOCK_OK;
        }
        if (s->last_use < lru->last_use) lru = s;
    }
    lru->epoch = 0; /* matches nothing until recorded whole */
    if (lru->cap < d->nops) {
        struct vk_op *n = realloc(lru->ops, d->nops * sizeof *n);
        if (!n) {
            db_msg(msg, len, "out of host memory for a command buffer's log");
            return DROPBLOCK_EEXHAUSTED;
        }
        lru->ops = n;
        lru->cap = d->nops;
    }
    int rc = replay(d, lru->cmd, lru->set, msg, len);
    if (rc) return rc;
    lru->bind = d->bind;
    memcpy(lru->ops, d->ops, d->nops * sizeof *d->ops);
    lru->nops = d->nops;
    lru->epoch = d->epoch;
    d->recorded = 1;
    *out = lru;
    return DROPBLOCK_OK;
}

/* Ends the log, submits its command buffer (kept or recorded now) and waits; the submission's
 * writes are then visible to the host. */
int vk_submit(struct vk_dev *d, char *msg, size_t len)
{
    VkResult r;
    sync_host(d);
    if (d->ops_failed) {
        db_msg(msg, len, "out of host memory for the commands of a submission");
        return DROPBLOCK_EEXHAUSTED;
    }
    struct vk_slot *s;
    int rc = slot_for_log(d, &s, msg, len);
    if (rc) return rc;
    s->last_use = ++d->uses;
    /* reset first: a failed wait of an earlier job may have left the fence in any state */
    if ((r = vkResetFences(d->dev, 1, &d->fence))) return vk_fail(msg, len, r, "vkResetFences");
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &s->cmd};
    /* the job's wait (vulkan_semaphore.c) on its first submission: the value is already reached,
     * the wait orders the importer's writes before the job's reads */
    const VkPipelineStageFlags wait_stage = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
    VkTimelineSemaphoreSubmitInfo ts = {.sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
                                        .waitSemaphoreValueCount = 1,
                                        .pWaitSemaphoreValues = &d->wait_value};
    if (d->wait_sem) {
        si.pNext = &ts;
        si.waitSemaphoreCount = 1;
        si.pWaitSemaphores = &d->wait_sem;
        si.pWaitDstStageMask = &wait_stage;
    }
    r = vkQueueSubmit(d->queue, 1, &si, d->fence);
    d->wait_sem = VK_NULL_HANDLE;
    if (r) return vk_fail(msg, len, r, "vkQueueSubmit");
    if ((r = vkWaitForFences(d->dev, 1, &d->fence, VK_TRUE, UINT64_MAX))) {
        rc = vk_fail(msg, len, r, "vkWaitForFences");
        vkQueueWaitIdle(d->queue); /* the buffers are reused next: never under a running pass */
        return rc;
    }
    return DROPBLOCK_OK;
}

/* The kept command buffers and their descriptor sets (from the pools: destroying the pools frees
 * them). */
int vk_record_prepare(struct vk_dev *d, char *msg, size_t len)
{
    VkDescriptorSetLayout layouts[VK_SLOTS];
    VkDescriptorSet sets[VK_SLOTS];
    for (int i = 0; i < VK_SLOTS; i++) layouts[i] = d->dsl;
    VkDescriptorSetAllocateInfo dai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                       .descriptorPool = d->dpool,
                                       .descriptorSetCount = VK_SLOTS,
                                       .pSetLayouts = layouts};
    VkResult r = vkAllocateDescriptorSets(d->dev, &dai, sets);
    if (r) return vk_fail(msg, len, r, "vkAllocateDescriptorSets");
    VkCommandBuffer cmds[VK_SLOTS];
    VkCommandBufferAllocateInfo cai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                       .commandPool = d->cpool,
                                       .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                       .commandBufferCount = VK_SLOTS};
    if ((r = vkAllocateCommandBuffers(d->dev, &cai, cmds))) return vk_fail(msg, len, r, "vkAllocateCommandBuffers");
    for (int i = 0; i < VK_SLOTS; i++) {
        d->slots[i].cmd = cmds[i];
        d->slots[i].set = sets[i];
    }
    d->epoch = 1; /* a slot's 0 matches nothing */
    return DROPBLOCK_OK;
}

void vk_record_release(struct vk_dev *d)
{
    for (int i = 0; i < VK_SLOTS; i++) free(d->slots[i].ops);
    free(d->ops);
}
