/* dropblock.cl: the passes of docs/design.md for OpenCL C 1.2. The pass bodies live in db_passes.h
 * (shared with the Vulkan shaders and checked in C by tests/test_passes.c); this file binds
 * buffers and work items to them and moves the data of the fast apply in vectors.
 *
 * The host builds it per device with -DDB_VW=<lanes> -DDB_VPW=<vectors per work item>: CPU
 * devices take the device's native int vector width in lanes (16 with AVX-512) and enough
 * vectors that a work item covers one mask word of f32, plus -DDB_VLOAD (db_portable.h) and
 * -DDB_CPU (the mask pass's vector batches, db_philox_cl.h); GPUs take 4 lanes and one vector
 * (16-byte loads). The dtype, the per-sample scale, the fixup and f16's conversions (integers,
 * or the device's where a probe found them exact) are separate kernels, not run-time branches,
 * so that CPU compilers vectorize the work-item loop of each.
 *
 * Kernels whose global size is rounded up to the work-group size bounds-check their id. The
 * fast apply kernels are launched on exact sizes and do not, except with -DDB_APPLY_ALL (GPUs):
 * there one launch over the groups and the tail, rounded up to whole work-groups, does the
 * whole apply (the work items past the groups take the tail's elements, exactly). */
#ifndef DB_LANG_CL
#define DB_LANG_CL
#endif
#ifndef DB_VPW
#define DB_VPW 1
#endif
/* db_math.h first and unconditionally: tools/embed_source.py inlines each header once, where
 * it is first included */
#include "db_math.h"
#ifdef DB_CPU
#include "db_philox_cl.h"
#endif
#include "db_passes.h"

#if DB_VW == 4
#define DB_LANES ((uint4)(0, 1, 2, 3))
#elif DB_VW == 8
#define DB_LANES ((uint8)(0, 1, 2, 3, 4, 5, 6, 7))
#elif DB_VW == 16
#define DB_LANES ((uint16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))
#else
#error "DB_VW must be 4, 8 or 16"
#endif

/* Pass 1: work item w's tiles -> their keep bits, their kept bits added to their samples'
 * counts. */
__kernel void db_mask(__constant uint *prm, __global uint *mask, __global uint *kept)
{
    ulong w = (ulong)get_global_id(0);
    if (w * prm[DBP_TPW] < (ulong)prm[DBP_NTILES]) db_mask_item(prm, mask, kept, w);
}

/* Pass 1 on GPUs, where prm[DBP_SCATTER]: each candidate block's words once (db_scatter_item),
 * on a mask filled with ones; then the kept bits counted, and in a fused job the scales made
 * by the last work item (db_count_item). */
__kernel void db_scatter(__constant uint *prm, __global uint *mask)
{
    ulong w = (ulong)get_global_id(0);
    if (w * prm[DBP_SKR] < (ulong)prm[DBP_SROWS] + ((ulong)prm[DBP_SROWS + 1] << 32)) db_scatter_item(prm, mask, w);
}

__kernel void db_count(__constant uint *prm, __global const uint *mask, __global uint *kept, __global uint *scales)
{
    ulong w = (ulong)get_global_id(0), nelem = (ulong)prm[DBP_NELEM] + ((ulong)prm[DBP_NELEM + 1] << 32);
    if (w * prm[DBP_CKW] < (nelem + 31ul) / 32ul) db_count_item(prm, mask, kept, scales, w);
}

/* Pass 2b, the scales on the device (whole tensor in one chunk, compat none): db_scale_item. */
__kernel void db_scale(__constant uint *prm, __global const uint *kept, __global uint *scales)
{
    uint s = (uint)get_global_id(0);
    if (s < prm[DBP_NSAMP]) db_scale_item(prm, kept, scales, s);
}

/* Lanes bad != 0 as bits, lane l at bit l * stride + offset (rare: fixup kernels only). */
inline uint db_lane_bits(DBV_T bad, uint stride, uint offset)
{
    uint b[DB_VW], bits = 0u;
    DB_CAT(vstore, DB_VW)(bad, 0, b);
    for (uint l = 0u; l < DB_VW; l++)
        if (b[l] != 0u) bits |= 1u << (l * stride + offset);
    return bits;
}

/* f16 through the device's own conversions: vload_half and vstore_half_rte (core OpenCL 1.2,
 * storage only, no cl_khr_fp16; F16C's vcvtph2ps / vcvtps2ph on x86), used where db_probe_half
 * found them to give db_vwiden_f16's and db_f32_to_f16's bits. The words go through a private
 * array, which the compiler keeps in registers, so that the tensors' alignment stays that of
 * DB_LOADV. db_hwiden: the 2 DB_VW halves of xv -> the float32 bits of elements 0 .. DB_VW-1
 * (*a) and DB_VW .. 2 DB_VW-1 (*b), NaN quiet without payload as db_f16_to_f32 gives it. */
inline DBV_T db_hquiet(DBV_T v) { return DBV_SEL((v & 0x7FFFFFFFu) > 0x7F800000u, (v & 0x80000000u) | 0x7FC00000u, v); }

inline void db_hwiden(DBV_T xv, DBV_T *a, DBV_T *b)
{
    uint w[DB_VW] __attribute__((aligned(4 * DB_VW)));
    DB_CAT(vstore, DB_VW)(xv, 0, w);
    *a = db_hquiet(DBV_AS_U(DB_CAT(vload_half, DB_VW)(0, (const half *)w)));
    *b = db_hquiet(DBV_AS_U(DB_CAT(vload_half, DB_VW)(1, (const half *)w)));
}

/* db_hnarrow: float32 bits of elements 0 .. DB_VW-1 (a) and DB_VW .. 2 DB_VW-1 (b), NaN only
 * as db_vapply gives it from db_hwiden's input (quiet, no payload) -> their f16 words */
inline DBV_T db_hnarrow(DBV_T a, DBV_T b)
{
    uint w[DB_VW] __attribute__((aligned(4 * DB_VW)));
    DB_CAT(DB_CAT(vstore_half, DB_VW), _rte)(DBV_AS_F(a), 0, (half *)w);
    DB_CAT(DB_CAT(vstore_half, DB_VW), _rte)(DBV_AS_F(b), 1, (half *)w);
    return DB_CAT(vload, DB_VW)(0, w);
}

/* db_vapply(v, s, keep, DB_DTYPE_F32) for v from db_hwiden (never subnormal; NaN quiet without
 * payload) and s +0 or normal >= 1, in two IEEE products, (v * s) * m: only a NaN needs a
 * select, since the hardware's NaN bits differ between devices (and operand orders) */
inline DBV_T db_happly(DBV_T v, DBV_T s, DBV_T keep)
{
    DBV_FLOAT m = DBV_AS_F(DBV_SEL(keep != 0u, DBV(0x3F800000u), DBV(0u)));
    DBV_T r = DBV_AS_U((DBV_AS_F(v) * DBV_AS_F(s)) * m);
    DBV_T made = DBV_SEL((v & 0x7FFFFFFFu) > 0x7F800000u, v, DBV(DB_DEFAULT_NAN)); /* x NaN, or inf * 0 */
    return DBV_SEL((r & 0x7FFFFFFFu) > 0x7F800000u, made, r);
}

/* Pass 3, fast: work item g takes DB_VPW vectors of DB_VW words of x (f32: one element a lane,
 * f16/bf16: two) from vector g * DB_VPW on. Element a of a lane is its low half (f16/bf16) and
 * b its high half; with hw (f16 only) a vector's halves are widened in order instead, a taking
 * elements 0 .. DB_VW-1 and b the rest. fix: lanes db_vbad reports keep x and are marked in
 * fixup, one bit per element, for db_fixup. */
inline void db_apply_fast(__constant uint *prm, __global const uint *mask, __global const uint *scales,
                          __global const uint *x, __global uint *y, __global uint *fixup, uint g, const uint dtype,
                          const uint per_sample, const uint fix, const uint hw)
{
    const uint epv = dtype == DB_DTYPE_F32 ? DB_VW : 2u * DB_VW; /* elements a vector */
    const uint inorder = dtype == DB_DTYPE_F16 && hw;
    /* element offsets in the vector of each lane's a and b */
    const DBV_T pos = dtype == DB_DTYPE_F32 || inorder ? DB_LANES : 2u * DB_LANES;
    const DBV_T pos_b = inorder ? DB_LANES + DB_VW : pos + 1u;
    DBV_T s = DBV(scales[0]), s_b = s;
    for (uint v = 0u; v < DB_VPW; v++) {
        uint q = g * DB_VPW + v, k0 = q * epv, sh = k0 & 31u;
        uint word = mask[k0 >> 5] >> sh;
        DBV_T xv = DB_LOADV(x, q);
        if (per_sample) { /* at most one sample boundary in a vector: the host checks CHW >= EPW */
            ulong E0 = DB_PRM64(DBP_E0), CHW = DB_PRM64(DBP_CHW), N0 = DB_PRM64(DBP_N0);
            ulong si = (E0 + k0) / CHW, bnd = (si + 1ul) * CHW - E0 - k0;
            ulong s1 = si + 1ul - N0 < (ulong)prm[DBP_NSAMP] ? si + 1ul - N0 : si - N0;
            DBV_T first = (DBV_T)((uint)min(bnd, (ulong)epv)); /* first element of sample s1 */
            s = DBV_SEL(pos >= first, DBV(scales[s1]), DBV(scales[si - N0]));
            s_b = DBV_SEL(pos_b >= first, DBV(scales[s1]), DBV(scales[si - N0]));
        }
        DBV_T keep = (DBV(word) >> pos) & 1u, keep_b = (DBV(word) >> pos_b) & 1u;
        if (inorder) {
            DBV_T xa, xb;
            db_hwiden(xv, &xa, &xb);
            DB_STOREV(y, q, db_hnarrow(db_happly(xa, s, keep), db_happly(xb, s_b, keep_b)));
        } else if (dtype == DB_DTYPE_F32) {
            DBV_T yv = db_vapply(xv, s, keep, dtype);
            if (fix) {
                DBV_T bad = db_vbad(xv, dtype, 0u);
                yv = DBV_SEL(bad != 0u, xv, yv);
                if (any(bad != 0u)) atomic_or(&fixup[k0 >> 5], db_lane_bits(bad, 1u, sh));
            }
            DB_STOREV(y, q, yv);
        } else {
            DBV_T lo = xv & 0xFFFFu, hi = xv >> 16;
            DBV_T ylo = db_vapply(lo, s, keep, dtype);
            DBV_T yhi = db_vapply(hi, s_b, keep_b, dtype);
            if (fix) {
                DBV_T blo = db_vbad(lo, dtype, 0u), bhi = db_vbad(hi, dtype, 0u);
                ylo = DBV_SEL(blo != 0u, lo, ylo);
                yhi = DBV_SEL(bhi != 0u, hi, yhi);
                if (any((blo | bhi) != 0u))
                    atomic_or(&fixup[k0 >> 5], db_lane_bits(blo, 2u, sh) | db_lane_bits(bhi, 2u, sh + 1u));
            }
            DB_STOREV(y, q, ylo | (yhi << 16));
        }
    }
}

/* Pass 3, exact: element k of the chunk (nothing past its end), db_apply_elem's bits. 16-bit
 * dtypes are addressed as ushort so that neighbouring elements are never rewritten. */
inline void db_apply_at(__constant uint *prm, __global const uint *mask, __global const uint *scales,
                        __global const uint *x, __global uint *y, ulong k)
{
    if (k >= DB_PRM64(DBP_NELEM)) return;
    if (prm[DBP_DTYPE] == DB_DTYPE_F32) {
        y[k] = db_apply_elem(prm, mask, scales, k, x[k]);
    } else {
        __global const ushort *xh = (__global const ushort *)x;
        __global ushort *yh = (__global ushort *)y;
        yh[k] = (ushort)db_apply_elem(prm, mask, scales, k, (uint)xh[k]);
    }
}

#ifdef DB_APPLY_ALL
/* GPUs: the whole chunk's apply in one launch of at least groups + 1 work items where there is
 * a tail (nelem > groups * EPW; the host launches one item more, or with no groups one a tail
 * element), rounded up to the work-group size: work item g < groups as below (the uniform bounds
 * check), the items past the groups the tail's elements from groups * EPW + (g - groups) on,
 * striding by their number, through db_apply_at (exact: db_apply_elem's bits). The tail is
 * under EPW elements where there are groups, and starts on a 32-bit word (EPW is even), so it
 * never shares a word with the fast part. (A loop rather than an early return for the tail:
 * PoCL's work-item loops keep the fast part's speed so.) */
#define DB_APPLY_KERNEL(name, dtype, per_sample, fix, hw) \
    __kernel void name(__constant uint *prm, __global const uint *mask, __global const uint *scales, \
                       __global const uint *x, __global uint *y, __global uint *fixup) \
    { \
        ulong g = (ulong)get_global_id(0), groups = (ulong)prm[DBP_GROUPS]; \
        if (g < groups) db_apply_fast(prm, mask, scales, x, y, fixup, (uint)g, dtype, per_sample, fix, hw); \
        else \
            for (ulong k = groups * prm[DBP_EPW] + (g - groups), n = DB_PRM64(DBP_NELEM); k < n; \
                 k += (ulong)get_global_size(0) - groups) \
                db_apply_at(prm, mask, scales, x, y, k); \
    }
#else
#define DB_APPLY_KERNEL(name, dtype, per_sample, fix, hw) \
    __kernel void name(__constant uint *prm, __global const uint *mask, __global const uint *scales, \
                       __global const uint *x, __global uint *y, __global uint *fixup) \
    { \
        db_apply_fast(prm, mask, scales, x, y, fixup, (uint)get_global_id(0), dtype, per_sample, fix, hw); \
    }
#endif
DB_APPLY_KERNEL(db_apply_f32, DB_DTYPE_F32, 0u, 0u, 0u)
DB_APPLY_KERNEL(db_apply_f16, DB_DTYPE_F16, 0u, 0u, 0u)
DB_APPLY_KERNEL(db_apply_bf16, DB_DTYPE_BF16, 0u, 0u, 0u)
DB_APPLY_KERNEL(db_apply_f32_s, DB_DTYPE_F32, 1u, 0u, 0u)
DB_APPLY_KERNEL(db_apply_f16_s, DB_DTYPE_F16, 1u, 0u, 0u)
DB_APPLY_KERNEL(db_apply_bf16_s, DB_DTYPE_BF16, 1u, 0u, 0u)
DB_APPLY_KERNEL(db_apply_f32_x, DB_DTYPE_F32, 0u, 1u, 0u)
DB_APPLY_KERNEL(db_apply_bf16_x, DB_DTYPE_BF16, 0u, 1u, 0u)
DB_APPLY_KERNEL(db_apply_f32_sx, DB_DTYPE_F32, 1u, 1u, 0u)
DB_APPLY_KERNEL(db_apply_bf16_sx, DB_DTYPE_BF16, 1u, 1u, 0u)
DB_APPLY_KERNEL(db_apply_f16h, DB_DTYPE_F16, 0u, 0u, 1u)
DB_APPLY_KERNEL(db_apply_f16h_s, DB_DTYPE_F16, 1u, 0u, 1u)

/* Pass 3, exact: elements GROUPS * EPW + id of the chunk (the tail of the fast kernels, or the
 * whole chunk when they do not apply), db_apply_at. */
__kernel void db_apply_exact(__constant uint *prm, __global const uint *mask, __global const uint *scales,
                             __global const uint *x, __global uint *y)
{
    db_apply_at(prm, mask, scales, x, y, (ulong)prm[DBP_GROUPS] * prm[DBP_EPW] + get_global_id(0));
}

/* Pass 3, fixup: the elements of fixup word f that the fast kernel left as x in y, exactly. */
__kernel void db_fixup(__constant uint *prm, __global const uint *mask, __global const uint *scales, __global uint *y,
                       __global const uint *fixup)
{
    uint f = (uint)get_global_id(0);
    if ((ulong)f * 32ul >= (ulong)prm[DBP_GROUPS] * prm[DBP_EPW]) return;
    uint bits = fixup[f];
    for (uint b = 0u; bits != 0u; b++, bits >>= 1) {
        if ((bits & 1u) == 0u) continue;
        ulong k = 32ul * f + b;
        if (prm[DBP_DTYPE] == DB_DTYPE_F32) {
            y[k] = db_apply_elem(prm, mask, scales, k, y[k]);
        } else {
            __global ushort *yh = (__global ushort *)y;
            yh[k] = (ushort)db_apply_elem(prm, mask, scales, k, (uint)yh[k]);
        }
    }
}

/* Whether this device's db_vapply is exact for subnormal f32 inputs: lane i of vector i / DB_VW
 * multiplies x[i] by s[i] (keep 1); the host compares with db_apply_bits. */
__kernel void db_probe(__global const uint *x, __global const uint *s, __global uint *y)
{
    uint i = (uint)get_global_id(0);
    DB_STOREV(y, i, db_vapply(DB_LOADV(x, i), DB_LOADV(s, i), DBV(1u), DB_DTYPE_F32));
}

/* Whether db_hwiden, db_happly and db_hnarrow are exact on this device: work item i widens
 * vector i of h (2 DB_VW halves) into vectors 2i, 2i+1 of fw, and takes vectors 2i, 2i+1 of f
 * (float32 bits) with keep bits from k, times scale 1, to f16 in vector i of hn; the host
 * compares with core/fp.h. */
__kernel void db_probe_half(__global const uint *h, __global const uint *f, __global const uint *k, __global uint *fw,
                            __global uint *hn)
{
    uint i = (uint)get_global_id(0);
    DBV_T a, b;
    db_hwiden(DB_LOADV(h, i), &a, &b);
    DB_STOREV(fw, 2u * i, a);
    DB_STOREV(fw, 2u * i + 1u, b);
    a = db_happly(DB_LOADV(f, 2u * i), DBV(0x3F800000u), DB_LOADV(k, 2u * i));
    b = db_happly(DB_LOADV(f, 2u * i + 1u), DBV(0x3F800000u), DB_LOADV(k, 2u * i + 1u));
    DB_STOREV(hn, i, db_hnarrow(a, b));
}
