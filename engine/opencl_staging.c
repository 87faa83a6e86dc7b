/* opencl_staging.c: the OpenCL backend's staged copies (backend_opencl.h; see "staged copies"
 * below): a job whose tensors cannot be used in place, larger than one slice, moves through
 * pinned host memory in slices overlapped on three queues. */
#include <stdlib.h>
#include <string.h>

#include "backend_opencl.h"
#include "clock.h"
#include "msg.h"

/* ---- staged copies ----------------------------------------------------------------------
 * Where the tensors cannot be used in place (a GPU, or DROPBLOCK_OPENCL_COPY=1), a job larger
 * than one slice moves through pinned host memory in slices, pipelined over three in-order
 * queues: q_up (host to device), queue (the passes) and q_down (device to host). Slots are
 * CL_MEM_ALLOC_HOST_PTR buffers mapped once (how NVIDIA's OpenCL hands out pinned memory, which
 * its DMA engines read and write without a bounce), three for uploads and three for downloads,
 * each of one slice.
 *
 *   queue:  mask passes of every chunk (never read x) | scales | apply s0 | apply s1 | apply s2 ...
 *   q_up:   x s0 | x s1 | x s2 | x s3 ...               (runs under the mask passes)
 *   q_down:                                     | y s0 | y s1 | ...
 *
 * The host copies slice k+1 of x into an upload slot while the device uploads slice k, applies
 * slice k-1 and downloads slice k-2; it copies a download slot out to y just before the slot is
 * reused. Events tie the queues: apply k waits for upload k, download k for apply k, and the
 * upload of a chunk's slice i for the download of the previous chunk's slice i (they share the
 * device buffer od->data). The engine's semantics hold: no apply is enqueued before the scales
 * of the whole tensor are known; for one fused chunk they come from the device in queue order,
 * otherwise the host polls the mask passes' marker between uploads and computes them when the
 * passes are done. A slice is a range of the chunk's elements, a multiple of 32 and of the fast
 * apply's elements a work item long, so each kernel of the apply takes it as a range of its own
 * work items (global offset) with the chunk's parameter words: the bits are the unstaged path's.
 * DROPBLOCK_OPENCL_STAGE_BYTES=<bytes> sets the slice (default 4 MiB; tests use a few hundred
 * bytes for many slices with remainders). */

#define STAGE_DEFAULT (UINT64_C(4) << 20)

/* The pinned slots, unmapped and released (q_up must still be there). */
static void release_slots(struct ocl_dev *od)
{
    for (int i = 0; i < 2 * STAGE_SLOTS; i++) {
        struct ocl_stage *s = i < STAGE_SLOTS ? &od->st_in[i] : &od->st_out[i - STAGE_SLOTS];
        if (s->m && s->p && od->q_up) clEnqueueUnmapMemObject(od->q_up, s->m, s->p, 0, NULL, NULL);
    }
    if (od->q_up) clFinish(od->q_up);
    for (int i = 0; i < 2 * STAGE_SLOTS; i++) {
        struct ocl_stage *s = i < STAGE_SLOTS ? &od->st_in[i] : &od->st_out[i - STAGE_SLOTS];
        if (s->m) clReleaseMemObject(s->m);
        s->m = NULL;
        s->p = NULL;
    }
    od->stage_size = 0;
}

/* The read-back buffer, unmapped (on queue, which must still be there) and released. */
static void release_readback(struct ocl_dev *od)
{
    if (od->rb.m && od->rb.p && od->queue) {
        clEnqueueUnmapMemObject(od->queue, od->rb.m, od->rb.p, 0, NULL, NULL);
        clFinish(od->queue);
    }
    if (od->rb.m) clReleaseMemObject(od->rb.m);
    od->rb.m = NULL;
    od->rb.p = NULL;
    od->rb_size = 0;
}

/* ---- pinned read-backs ------------------------------------------------------------------
 * A fused job's small read-backs (its per-sample counts and the device's scales, after the
 * apply) go into one CL_MEM_ALLOC_HOST_PTR buffer mapped once, kept by the device and grown
 * when needed, as the staging slots are: a DMA engine writes it without a bounce. The host
 * pointer of at least bytes, or NULL where it could not be made (the job reads into its own
 * memory then). Called with the passes' queue idle (its map blocks). */
void *ocl_readback(struct ocl_dev *od, uint64_t bytes)
{
    if (od->rb.m && od->rb_size >= bytes) return od->rb.p;
    release_readback(od);
    bytes = (bytes + 4095) & ~UINT64_C(4095);
    cl_int e;
    od->rb.m = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE | CL_MEM_ALLOC_HOST_PTR, (size_t)bytes, NULL, &e);
    if (e != CL_SUCCESS) {
        od->rb.m = NULL;
        return NULL;
    }
    od->rb.p = clEnqueueMapBuffer(od->queue, od->rb.m, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 0, (size_t)bytes, 0, NULL,
                                  NULL, &e);
    if (e != CL_SUCCESS) {
        od->rb.p = NULL;
        release_readback(od);
        return NULL;
    }
    od->rb_size = bytes;
    return od->rb.p;
}

void ocl_release_staging(struct ocl_dev *od)
{
    if (od->q_down) clFinish(od->q_down);
    release_readback(od);
    release_slots(od);
    if (od->q_down) clReleaseCommandQueue(od->q_down);
    if (od->q_up) clReleaseCommandQueue(od->q_up);
    od->q_up = od->q_down = NULL;
}

/* The queues and pinned slots of at least bytes each (kept by the device, grown when needed). */
static cl_int ensure_staging(struct ocl_dev *od, uint64_t bytes)
{
    cl_int e = CL_SUCCESS;
    if (!od->q_up) od->q_up = clCreateCommandQueue(od->ctx, od->device, 0, &e);
    if (e == CL_SUCCESS && !od->q_down) od->q_down = clCreateCommandQueue(od->ctx, od->device, 0, &e);
    if (e != CL_SUCCESS) return e;
    if (od->stage_size >= bytes) return CL_SUCCESS;
    release_slots(od);
    for (int i = 0; i < 2 * STAGE_SLOTS && e == CL_SUCCESS; i++) {
        struct ocl_stage *s = i < STAGE_SLOTS ? &od->st_in[i] : &od->st_out[i - STAGE_SLOTS];
        s->m = clCreateBuffer(od->ctx, CL_MEM_READ_WRITE | CL_MEM_ALLOC_HOST_PTR, (size_t)bytes, NULL, &e);
        if (e != CL_SUCCESS) {
            s->m = NULL;
            break;
        }
        s->p = clEnqueueMapBuffer(od->q_up, s->m, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 0, (size_t)bytes, 0, NULL, NULL,
                                  &e);
        if (e != CL_SUCCESS) s->p = NULL;
    }
    if (e != CL_SUCCESS) {
        release_slots(od);
        return e;
    }
    od->stage_size = bytes;
    return CL_SUCCESS;
}

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Elements a slice for the job, or 0 where it takes the unstaged path: the tensors are used in
 * place, the data is already on the device (bench), or the tensor fits in one slice. */
uint64_t ocl_stage_slice(const struct ocl_dev *od, const struct job *j, size_t es, int resident)
{
    if (od->zero_copy || resident) return 0;
    uint64_t want = od->knobs->opencl_stage_bytes ? od->knobs->opencl_stage_bytes : STAGE_DEFAULT;
    uint64_t epw = j->tu.epw ? j->tu.epw : 1, g = 32 / gcd64(32, epw) * epw; /* lcm(32, epw) */
    uint64_t n = want / es / g * g, chunk = (j->ck.max_elem + g - 1) / g * g;
    if (n < g) n = g;
    if (n > chunk) n = chunk; /* no slot larger than a chunk */
    return j->pl->numel > n ? n : 0;
}

/* Items [a, b) of a kernel without a bounds check beyond its own: whole groups of wg from a,
 * the rest in groups of one (ocl_launch_exact's rule, at a global offset). */
static cl_int launch_range(struct ocl_dev *od, cl_kernel k, size_t wg, uint64_t a, uint64_t b)
{
    size_t off = (size_t)a, whole = (size_t)((b - a) / wg * wg), rest = (size_t)(b - a) - whole;
    cl_int e = CL_SUCCESS;
    if (whole && (e = ocl_enqueue_nd(od, k, off, whole, wg)) == CL_SUCCESS) ocl_count_launches(od, 1);
    off += whole;
    if (e == CL_SUCCESS && rest && (e = ocl_enqueue_nd(od, k, off, rest, 1)) == CL_SUCCESS) ocl_count_launches(od, 1);
    return e;
}

/* Enqueues the apply pass of elements [s0, s1) of a chunk whose parameters are in prmbuf,
 * scales in od->scales and fixup words zeroed: the same kernels as enqueue_apply, each over its
 * work items of the range (on GPU builds too the fast kernel's items here are all below its
 * groups, and the tail is db_apply_exact's). */
static cl_int enqueue_apply_range(struct ocl_dev *od, const struct db_plan *pl, const uint32_t *prm, cl_mem prmbuf,
                                  cl_mem maskbuf, cl_mem xy, uint64_t s0, uint64_t s1)
{
    cl_int e = CL_SUCCESS;
    const uint64_t groups = prm[DBP_GROUPS], epw = prm[DBP_EPW], fast = groups * epw;
    const int fix = !od->hwexact && pl->p.dtype != DROPBLOCK_F16;
    if (groups && s0 < fast) {
        cl_kernel k = od->k_apply[pl->p.dtype][pl->p.normalize == DROPBLOCK_NORMALIZE_SAMPLE][fix];
        cl_mem a[6] = {prmbuf, maskbuf, od->scales.m, xy, xy, fix ? od->fixup.m : od->scales.m};
        e = ocl_set_args(k, 6, a);
        if (e == CL_SUCCESS) e = launch_range(od, k, od->wg_apply, s0 / epw, (s1 < fast ? s1 : fast) / epw);
    }
    if (e == CL_SUCCESS && s1 > fast) {
        cl_mem a[5] = {prmbuf, maskbuf, od->scales.m, xy, xy};
        e = ocl_set_args(od->k[K_EXACT], 5, a);
        if (e == CL_SUCCESS)
            e = launch_range(od, od->k[K_EXACT], od->wg_small, (s0 > fast ? s0 : fast) - fast, s1 - fast);
    }
    if (e == CL_SUCCESS && groups && fix && s0 < fast) {
        cl_mem a[5] = {prmbuf, maskbuf, od->scales.m, xy, od->fixup.m};
        e = ocl_set_args(od->k[K_FIXUP], 5, a);
        if (e == CL_SUCCESS)
            e = launch_range(od, od->k[K_FIXUP], od->wg_small, s0 / 32, ((s1 < fast ? s1 : fast) + 31) / 32);
    }
    return e;
}

/* The staged job's state: slices in order (chunk by chunk), their events, and how far the
 * host has got. */
struct staged {
    struct ocl_dev *od;
    const struct job *j;
    size_t es;
    const char *in;
    char *out;
    const uint32_t *prms;
    uint64_t L, spc, ns; /* elements a slice, slices a (full) chunk, slices in all */
    cl_event *up, *ap, *dn;
    uint64_t napplied, nconsumed;
    int scales_ready;
    const uint32_t *scales; /* host scales (unfused), valid once scales_ready */
};

static void slice_of(const struct staged *st, uint64_t k, struct db_chunk *ch, uint64_t *s0, uint64_t *s1)
{
    ocl_chunk_of(st->j, k / st->spc, ch);
    *s0 = k % st->spc * st->L;
    *s1 = *s0 + st->L < ch->nelem ? *s0 + st->L : ch->nelem;
}

/* Host x -> upload slot -> device (q_up), after the previous chunk's download of the region. */
static cl_int stage_upload(struct staged *st, uint64_t k)
{
    struct ocl_dev *od = st->od;
    struct db_chunk ch;
    uint64_t s0, s1;
    slice_of(st, k, &ch, &s0, &s1);
    cl_int e = CL_SUCCESS;
    if (k >= STAGE_SLOTS) {
        ocl_count_wait(od);
        if ((e = clWaitForEvents(1, &st->up[k - STAGE_SLOTS])) != CL_SUCCESS) return e;
    }
    const size_t bytes = (size_t)((s1 - s0) * st->es);
    memcpy(od->st_in[k % STAGE_SLOTS].p, st->in + (ch.e0 + s0) * st->es, bytes);
    const cl_event *war = k >= st->spc ? &st->dn[k - st->spc] : NULL;
    e = clEnqueueWriteBuffer(od->q_up, od->data.m, CL_FALSE, (size_t)(s0 * st->es), bytes, od->st_in[k % STAGE_SLOTS].p,
                             war ? 1 : 0, war, &st->up[k]);
    if (e != CL_SUCCESS) return e;
    ocl_count_transfer(od);
    ocl_count_submit(od, 0);
    return clFlush(od->q_up);
}

/* Download slot -> host y, once the download of slice k is done. */
static cl_int stage_consume(struct staged *st, uint64_t k)
{
    struct db_chunk ch;
    uint64_t s0, s1;
    slice_of(st, k, &ch, &s0, &s1);
    ocl_count_wait(st->od);
    cl_int e = clWaitForEvents(1, &st->dn[k]);
    if (e == CL_SUCCESS)
        memcpy(st->out + (ch.e0 + s0) * st->es, st->od->st_out[k % STAGE_SLOTS].p, (size_t)((s1 - s0) * st->es));
    return e;
}

/* Apply of slice k after its upload (queue), then its download into a free slot (q_down). A
 * chunk's first slice first loads the host scales and zeroes fixup; the chunk's parameters are in
 * od->prms[q] from its mask pass, the same words. */
static cl_int stage_apply(struct staged *st, uint64_t k)
{
    struct ocl_dev *od = st->od;
    const struct db_plan *pl = st->j->pl;
    struct db_chunk ch;
    uint64_t s0, s1, q = k / st->spc;
    slice_of(st, k, &ch, &s0, &s1);
    const uint32_t *prm = st->prms + q * DBP_COUNT;
    cl_int e = CL_SUCCESS;
    if (s0 == 0) {
        if (!st->j->ck.fused && (e = clEnqueueWriteBuffer(od->queue, od->scales.m, CL_FALSE, 0, (size_t)ch.nsamp * 4,
                                                          st->scales + ch.n0, 0, NULL, NULL)) == CL_SUCCESS)
            ocl_count_transfer(od);
        uint64_t fwords = ((uint64_t)prm[DBP_GROUPS] * prm[DBP_EPW] + 31) / 32;
        cl_uint zero = 0;
        if (e == CL_SUCCESS && fwords && !od->hwexact && pl->p.dtype != DROPBLOCK_F16 &&
            (e = clEnqueueFillBuffer(od->queue, od->fixup.m, &zero, sizeof zero, 0, (size_t)(fwords * 4), 0, NULL,
                                     NULL)) == CL_SUCCESS)
            ocl_count_fill(od);
    }
    if (e == CL_SUCCESS) e = clEnqueueBarrierWithWaitList(od->queue, 1, &st->up[k], NULL);
    if (e == CL_SUCCESS) e = enqueue_apply_range(od, pl, prm, od->prms[q].m, od->masks[q].m, od->data.m, s0, s1);
    if (e == CL_SUCCESS) e = clEnqueueMarkerWithWaitList(od->queue, 0, NULL, &st->ap[k]);
    if (e == CL_SUCCESS) {
        ocl_count_submit(od, 0);
        e = clFlush(od->queue);
    }
    while (e == CL_SUCCESS && st->nconsumed + STAGE_SLOTS <= k) e = stage_consume(st, st->nconsumed++);
    if (e == CL_SUCCESS &&
        (e = clEnqueueReadBuffer(od->q_down, od->data.m, CL_FALSE, (size_t)(s0 * st->es), (size_t)((s1 - s0) * st->es),
                                 od->st_out[k % STAGE_SLOTS].p, 1, &st->ap[k], &st->dn[k])) == CL_SUCCESS)
        ocl_count_transfer(od);
    if (e == CL_SUCCESS) {
        ocl_count_submit(od, 0);
        e = clFlush(od->q_down);
    }
    st->napplied = k + 1;
    return e;
}

/* Pass 3 of a staged job, pass 1 (and for a fused job the device's scales) already enqueued on
 * queue: slices of L elements from in to out, and the chunks' masks read into words where wanted.
 * t[0..2]: mask, scale (unfused only) and the start of the apply. */
/* The device buffers of the staged path: the pinned slots, the chunk's data and its fixup words. */
static int stage_buffers(struct ocl_dev *od, const struct job *j, size_t es, uint64_t L, char *msg, size_t len)
{
    int rc;
    if ((rc = ocl_check(ensure_staging(od, L * es), "clCreateBuffer(staging)", msg, len))) return rc;
    if ((rc = ocl_check(ocl_ensure_buf(od, &od->data, ((j->ck.max_elem * es + 3) & ~UINT64_C(3)) + 64),
                        "clCreateBuffer(data)", msg, len)))
        return rc;
    if (od->hwexact || j->pl->p.dtype == DROPBLOCK_F16) return DROPBLOCK_OK;
    return ocl_check(ocl_ensure_buf(od, &od->fixup, (j->ck.max_elem + 31) / 32 * 4), "clCreateBuffer(fixup)", msg, len);
}

/* Every chunk's mask words read back into words (max_words a chunk), after its mask pass. */
static int read_masks(struct ocl_dev *od, const struct job *j, uint32_t *words, char *msg, size_t len)
{
    struct db_chunk ch;
    for (uint64_t q = 0; q < j->ck.nchunks; q++) {
        ocl_chunk_of(j, q, &ch);
        int rc =
            ocl_check(clEnqueueReadBuffer(od->queue, od->masks[q].m, CL_FALSE, 0, (size_t)((ch.nelem + 31) / 32 * 4),
                                          words + q * j->ck.max_words, 0, NULL, NULL),
                      "clEnqueueReadBuffer(mask)", msg, len);
        if (rc) return rc;
        ocl_count_transfer(od);
    }
    return DROPBLOCK_OK;
}

int ocl_stage_run(struct ocl_dev *od, const struct job *j, size_t es, uint64_t L, const void *in, void *out,
                  const uint32_t *prms, const uint32_t *partial, uint64_t *kept, uint32_t *scales, uint32_t *words,
                  uint64_t t_start, uint64_t t[3], dropblock_result *res, char *msg, size_t len)
{
    int rc = DROPBLOCK_OK;
    struct db_chunk last;
    ocl_chunk_of(j, j->ck.nchunks - 1, &last);
    struct staged st = {.od = od,
                        .j = j,
                        .es = es,
                        .in = in,
                        .out = out,
                        .prms = prms,
                        .L = L,
                        .scales = scales,
                        .scales_ready = j->ck.fused};
    st.spc = (j->ck.max_elem + L - 1) / L; /* every chunk but the last is full */
    st.ns = (j->ck.nchunks - 1) * st.spc + (last.nelem + L - 1) / L;
    cl_event mask_ev = NULL;
    st.up = calloc(3 * st.ns, sizeof(cl_event));
    if (!st.up) {
        db_msg(msg, len, "out of host memory for %llu slices", (unsigned long long)st.ns);
        return DROPBLOCK_EEXHAUSTED;
    }
    st.ap = st.up + st.ns;
    st.dn = st.ap + st.ns;
    if ((rc = stage_buffers(od, j, es, L, msg, len))) goto done;
    if (!j->ck.fused && (rc = ocl_check(clEnqueueMarkerWithWaitList(od->queue, 0, NULL, &mask_ev),
                                        "clEnqueueMarkerWithWaitList(mask)", msg, len)))
        goto done;
    ocl_count_submit(od, 0);
    if ((rc = ocl_check(clFlush(od->queue), "clFlush(db_mask)", msg, len))) goto done;
    for (uint64_t k = 0; k <= st.ns; k++) {
        /* the scales, once the mask passes are done: at once when an apply must go before the
         * next upload (the previous chunk's slice in the device buffer), or at the end; else
         * when the marker shows them done */
        int need = k == st.ns || (k >= st.spc && st.napplied <= k - st.spc);
        if (!st.scales_ready && !need) {
            cl_int status = CL_QUEUED;
            cl_int e = clGetEventInfo(mask_ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL);
            if ((rc = ocl_check(e, "clGetEventInfo(mask)", msg, len))) goto done;
            need = status <= CL_COMPLETE;
        }
        if (!st.scales_ready && need) {
            ocl_count_wait(od);
            if ((rc = ocl_check(clWaitForEvents(1, &mask_ev), "clWaitForEvents(db_mask)", msg, len))) goto done;
            t[0] = db_now_us() - t_start;
            uint64_t t0 = db_now_us();
            if ((rc = ocl_host_scales(j, partial, kept, scales, res))) goto done;
            t[1] = db_now_us() - t0;
            st.scales_ready = 1;
        }
        if (st.scales_ready && !t[2]) t[2] = db_now_us();
        /* applies of the slices uploaded so far; at the end, all of them */
        while (st.scales_ready && st.napplied < k)
            if ((rc = ocl_check(stage_apply(&st, st.napplied), "enqueue(staged apply)", msg, len))) goto done;
        if (k < st.ns && (rc = ocl_check(stage_upload(&st, k), "enqueue(staged upload)", msg, len))) goto done;
    }
    if (words && (rc = read_masks(od, j, words, msg, len))) goto done;
    while (st.nconsumed < st.ns)
        if ((rc = ocl_check(stage_consume(&st, st.nconsumed++), "clWaitForEvents(staged download)", msg, len)))
            goto done;
done:
    clFinish(od->q_up);
    clFinish(od->queue);
    clFinish(od->q_down);
    for (int i = 0; i < 3; i++) ocl_count_submit(od, 1);
    for (uint64_t k = 0; k < 3 * st.ns; k++)
        if (st.up[k]) clReleaseEvent(st.up[k]);
    if (mask_ev) clReleaseEvent(mask_ev);
    free(st.up);
    return rc;
}
