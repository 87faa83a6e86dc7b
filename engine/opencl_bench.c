/* opencl_bench.c: the OpenCL backend's benchmark (backend_opencl.h): bench.cl, built on its first
 * use, and each measure of ocl_bench (the op and backward as jobs on resident buffers, the plain
 * copy, the mask pass alone, torchvision's kernels, the host transfers). */
#include <stdlib.h>
#include <string.h>

#include "backend_opencl.h"
#include "clock.h"
#include "db_baseline_params.h"
#include "msg.h"

static const char *const bench_names[BK_N] = {"bl_copy",    "bl_copy_tail",   "k_bl_bernoulli", "k_bl_pad",
                                              "k_bl_pool",  "k_bl_one_minus", "k_bl_sum_noise", "k_bl_sum_part",
                                              "k_bl_scale", "k_bl_mul"};

/* ---- bench ---------------------------------------------------------------------------- */

static int bench_program(struct ocl_dev *od, char *msg, size_t len)
{
    if (od->bench_program) return DROPBLOCK_OK;
    int rc = ocl_build_source(od, db_opencl_bench_source, db_opencl_bench_source_len, "bench.cl", &od->bench_program,
                              msg, len);
    for (int i = 0; i < BK_N && !rc; i++) {
        cl_int e;
        od->bk[i] = clCreateKernel(od->bench_program, bench_names[i], &e);
        if (e != CL_SUCCESS) {
            od->bk[i] = NULL;
            rc = ocl_fail(msg, len, bench_names[i], e);
        }
    }
    return rc;
}

/* torchvision's drop_block2d or drop_block3d, kernel by kernel (shaders/db_baseline.h); bufs: prm, noise, padded,
 * pooled, part, x, y */
static cl_int enqueue_baseline(struct ocl_dev *od, const cl_mem *bufs, const uint32_t *blp, uint64_t nwords)
{
    const cl_uint n = blp[BLP_NUMEL], nnoise = blp[BLP_NNOISE], npad = blp[BLP_NPAD];
    const cl_uint counts[] = {(nnoise + 3) / 4, npad, n, n};
    const int ks[] = {BK_BERNOULLI, BK_PAD, BK_POOL, BK_ONE_MINUS};
    const size_t wg = od->wg_small;
    cl_int e = CL_SUCCESS;
    for (int i = 0; i < 4 && e == CL_SUCCESS; i++) {
        e = ocl_set_args(od->bk[ks[i]], 7, bufs);
        if (e == CL_SUCCESS) e = clSetKernelArg(od->bk[ks[i]], 7, sizeof(cl_uint), &counts[i]);
        if (e == CL_SUCCESS) e = ocl_launch_round(od, od->bk[ks[i]], wg, counts[i]);
    }
    /* noise.sum() in levels of BL_SEG, then the scale */
    cl_uint nin = (n + BL_SEG - 1) / BL_SEG, src = 1, dst;
    if (e == CL_SUCCESS) e = ocl_set_args(od->bk[BK_SUM_NOISE], 7, bufs);
    if (e == CL_SUCCESS) e = clSetKernelArg(od->bk[BK_SUM_NOISE], 7, sizeof nin, &nin);
    /* level one writes part[1 ..] (part[0] is the scale) */
    if (e == CL_SUCCESS) e = ocl_launch_round(od, od->bk[BK_SUM_NOISE], wg, nin);
    while (e == CL_SUCCESS && nin > BL_SEG) {
        cl_uint nout = (nin + BL_SEG - 1) / BL_SEG;
        dst = src + nin;
        e = ocl_set_args(od->bk[BK_SUM_PART], 7, bufs);
        cl_uint a[4] = {nout, src, nin, dst};
        for (int i = 0; i < 4 && e == CL_SUCCESS; i++)
            e = clSetKernelArg(od->bk[BK_SUM_PART], 7 + i, sizeof(cl_uint), &a[i]);
        if (e == CL_SUCCESS) e = ocl_launch_round(od, od->bk[BK_SUM_PART], wg, nout);
        src = dst;
        nin = nout;
    }
    if (e == CL_SUCCESS) e = ocl_set_args(od->bk[BK_SCALE], 7, bufs);
    if (e == CL_SUCCESS) e = clSetKernelArg(od->bk[BK_SCALE], 7, sizeof src, &src);
    if (e == CL_SUCCESS) e = clSetKernelArg(od->bk[BK_SCALE], 8, sizeof nin, &nin);
    size_t one = 1;
    if (e == CL_SUCCESS) e = clEnqueueNDRangeKernel(od->queue, od->bk[BK_SCALE], 1, NULL, &one, &one, 0, NULL, NULL);
    cl_uint nw = (cl_uint)nwords;
    if (e == CL_SUCCESS) e = ocl_set_args(od->bk[BK_MUL], 7, bufs);
    if (e == CL_SUCCESS) e = clSetKernelArg(od->bk[BK_MUL], 7, sizeof nw, &nw);
    if (e == CL_SUCCESS) e = ocl_launch_round(od, od->bk[BK_MUL], wg, nw);
    return e;
}

/* One measure of ocl_bench on the resident x and y. */
static int bench_one(struct ocl_dev *od, const struct db_plan *pl, int what, cl_mem x, cl_mem y, const cl_mem *bl,
                     const uint32_t *blp, const uint32_t *prm, uint64_t nwords, char *msg, size_t len)
{
    int rc = DROPBLOCK_OK;
    if (what == DB_BENCH_OP || what == DB_BENCH_BACKWARD) {
        dropblock_result res;
        memset(&res, 0, sizeof res);
        struct db_plan bw = *pl; /* backward applies the same mask and scale to dy: the same passes */
        bw.p.mode = DROPBLOCK_BACKWARD;
        return ocl_job(od, what == DB_BENCH_OP ? pl : &bw, NULL, NULL, NULL, x, y, &res, msg, len);
    }
    if (what == DB_BENCH_COPY) {
        uint64_t vwords = (uint64_t)od->vw * od->vpw, groups = nwords / vwords;
        cl_mem a[2] = {x, y};
        if ((rc = ocl_check(ocl_set_args(od->bk[BK_COPY], 2, a), "clSetKernelArg(bl_copy)", msg, len))) goto done;
        if ((rc = ocl_check(ocl_launch_exact(od, od->bk[BK_COPY], od->wg_apply, groups),
                            "clEnqueueNDRangeKernel(bl_copy)", msg, len)))
            goto done;
        if (groups * vwords < nwords) {
            cl_uint first = (cl_uint)(groups * vwords), n = (cl_uint)nwords;
            if ((rc = ocl_check(ocl_set_args(od->bk[BK_COPY_TAIL], 2, a), "clSetKernelArg(bl_copy_tail)", msg, len)))
                goto done;
            if ((rc = ocl_check(clSetKernelArg(od->bk[BK_COPY_TAIL], 2, sizeof first, &first),
                                "clSetKernelArg(bl_copy_tail)", msg, len)))
                goto done;
            if ((rc = ocl_check(clSetKernelArg(od->bk[BK_COPY_TAIL], 3, sizeof n, &n), "clSetKernelArg(bl_copy_tail)",
                                msg, len)))
                goto done;
            if ((rc = ocl_check(ocl_launch_round(od, od->bk[BK_COPY_TAIL], od->wg_small, n - first),
                                "clEnqueueNDRangeKernel(bl_copy_tail)", msg, len)))
                goto done;
        }
    } else if (what == DB_BENCH_MASK) {
        if ((rc = ocl_check(ocl_enqueue_mask(od, prm, od->prms[0].m, od->masks[0].m), "enqueue(db_mask)", msg, len)))
            goto done;
    } else {
        cl_mem bufs[7] = {bl[0], bl[1], bl[2], bl[3], bl[4], x, y};
        if ((rc = ocl_check(enqueue_baseline(od, bufs, blp, nwords), "enqueue(baseline)", msg, len))) goto done;
    }
    if ((rc = ocl_check(clFinish(od->queue), "clFinish", msg, len))) goto done;
done:
    return rc;
}

/* DB_BENCH_XFER: the host x to the device buffer x and the same bytes back to the host yh, as a
 * job from ordinary (unpinned) host memory that cannot be used in place copies them; blocking. */
static int bench_xfer(struct ocl_dev *od, cl_mem x, const void *xh, void *yh, uint64_t bytes, char *msg, size_t len)
{
    int rc = DROPBLOCK_OK;
    if ((rc = ocl_check(clEnqueueWriteBuffer(od->queue, x, CL_FALSE, 0, (size_t)bytes, xh, 0, NULL, NULL),
                        "clEnqueueWriteBuffer(xfer)", msg, len)))
        goto done;
    if ((rc = ocl_check(clEnqueueReadBuffer(od->queue, x, CL_TRUE, 0, (size_t)bytes, yh, 0, NULL, NULL),
                        "clEnqueueReadBuffer(xfer)", msg, len)))
        goto done;
done:
    return rc;
}

int ocl_bench(struct db_device *dev, const struct db_plan *pl, const void *xh, unsigned whats, int warmup, int reps,
              double *us, char *msg, size_t len)
{
    struct ocl_dev *od = dev->priv;
    const uint64_t bytes = pl->numel * dropblock_dtype_size(pl->p.dtype), nwords = (bytes + 3) / 4;
    int rc = bench_program(od, msg, len);
    if (rc) return rc;
    if (bytes > od->max_buffer || pl->numel >= (UINT64_C(1) << 32)) {
        db_msg(msg, len, "the benchmark takes tensors of one device buffer (%llu bytes)",
               (unsigned long long)od->max_buffer);
        return DROPBLOCK_EINVAL;
    }
    struct ocl_buf x = {0}, y = {0}, bl[5] = {{0}};
    cl_mem blm[5] = {NULL};
    void *yh = NULL; /* DB_BENCH_XFER's host y */
    if ((whats & (1u << DB_BENCH_XFER)) && !(yh = malloc((size_t)bytes))) {
        db_msg(msg, len, "out of host memory");
        return DROPBLOCK_EEXHAUSTED;
    }
    uint32_t blp[BLP_COUNT] = {0}, prm[DBP_COUNT];
    struct job j;
    struct db_chunk ch;
    if ((rc = ocl_check(ocl_ensure_buf(od, &x, nwords * 4 + 64), "clCreateBuffer(x)", msg, len))) goto done;
    if ((rc = ocl_check(ocl_ensure_buf(od, &y, nwords * 4 + 64), "clCreateBuffer(y)", msg, len))) goto done;
    if ((rc = ocl_check(clEnqueueWriteBuffer(od->queue, x.m, CL_TRUE, 0, (size_t)bytes, xh, 0, NULL, NULL),
                        "clEnqueueWriteBuffer(x)", msg, len)))
        goto done;
    if ((rc = ocl_plan_job(od, pl, &j, msg, len))) goto done;
    ocl_chunk_of(&j, 0, &ch);
    db_kernel_params(pl, &ch, &j.tu, prm);
    if ((rc = ocl_check(ocl_ensure_prms(od, 1), "clCreateBuffer(params)", msg, len))) goto done;
    if ((rc = ocl_check(ocl_ensure_buf(od, &od->kept, j.ck.max_samp * 8 + 8), "clCreateBuffer(kept)", msg, len)))
        goto done;
    if ((rc = ocl_check(ocl_ensure_masks(od, 1, j.ck.max_words), "clCreateBuffer(mask)", msg, len))) goto done;
    if (whats & (1u << DB_BENCH_BASELINE)) {
        uint64_t npad, nparts;
        if (db_baseline_params(pl, blp, &npad, &nparts, msg, len)) {
            whats &= ~(1u << DB_BENCH_BASELINE);
            for (int r = 0; r < reps; r++) us[DB_BENCH_BASELINE * reps + r] = -1;
        } else {
            const uint64_t sizes[5] = {BLP_COUNT * 4, pl->numel * 4, npad * 4, pl->numel * 4, nparts * 4};
            for (int i = 0; i < 5; i++) {
                if ((rc = ocl_check(ocl_ensure_buf(od, &bl[i], sizes[i]), "clCreateBuffer(baseline)", msg, len)))
                    goto done;
                blm[i] = bl[i].m;
            }
            if ((rc = ocl_check(clEnqueueWriteBuffer(od->queue, bl[0].m, CL_TRUE, 0, sizeof blp, blp, 0, NULL, NULL),
                                "clEnqueueWriteBuffer(baseline params)", msg, len)))
                goto done;
        }
    }
    for (int r = -warmup; r < reps && !rc; r++)
        for (int w = 0; w < DB_BENCH_N && !rc; w++) {
            if (!(whats & (1u << w))) continue;
            double t0 = db_now_us_f();
            rc = w == DB_BENCH_XFER ? bench_xfer(od, x.m, xh, yh, bytes, msg, len)
                                    : bench_one(od, pl, w, x.m, y.m, blm, blp, prm, nwords, msg, len);
            if (r >= 0) us[w * reps + r] = db_now_us_f() - t0;
        }
done:
    clFinish(od->queue);
    free(yh);
    ocl_release_buf(&x);
    ocl_release_buf(&y);
    for (int i = 0; i < 5; i++) ocl_release_buf(&bl[i]);
    return rc;
}
