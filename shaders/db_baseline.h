/* db_baseline.h: the multi-pass DropBlock of torchvision.ops.drop_block2d and drop_block3d, one
 * function per torch operation, for bench/dropblock-bench's baseline_us (written once, in
 * db_portable.h's subset, for OpenCL, Vulkan and the C backend). Not part of the op: its only
 * contract is to do the work torchvision does, the way it does it (3-D; 2-D is D = 1 with no
 * padding in depth, bd = 1):
 *
 *   noise = torch.empty(N, C, D - bs + 1, H - bs + 1, W - bs + 1).bernoulli_(gamma) bl_bernoulli
 *   noise = F.pad(noise, [bs // 2] * 6, value=0)                                    bl_pad
 *   noise = F.max_pool3d(noise, stride=(1, 1, 1), kernel_size=(bs, bs, bs),
 *                        padding=bs // 2)                                           bl_pool
 *   noise = 1 - noise                                                               bl_one_minus
 *   normalize_scale = noise.numel() / (eps + noise.sum())                           bl_sum*, bl_scale
 *   x = x * noise * normalize_scale                                                 bl_mul
 *
 * Every intermediate is a float32 tensor in memory (torchvision keeps x's dtype; for f16/bf16
 * inputs this baseline moves more bytes than torch would). Buffers: prm (BLP_* words), noise
 * (bernoulli, then 1 - pool), padded, pooled, part (partial sums; part[0] ends as the scale),
 * x and y (tensor words). Odd square (2-D) or cube (3-D) blocks only, as torchvision. part[0]
 * receives the scale, the partial sums follow it. NHWC and NDHWC tensors are taken as NCHW and
 * NCDHW (torchvision has no other layout; the work is the same). */
#ifndef DB_BASELINE_H
#define DB_BASELINE_H

#include "db_baseline_params.h"
#include "db_math.h"

#if defined(DB_LANG_GLSL)
#define BL_BUFS
#else
#if defined(DB_LANG_CL)
#define BL_GLOBAL __global
#else
#define BL_GLOBAL
#endif
#define BL_BUFS \
    BL_GLOBAL const u32 *prm, BL_GLOBAL u32 *noise, BL_GLOBAL u32 *padded, BL_GLOBAL u32 *pooled, BL_GLOBAL u32 *part, \
        BL_GLOBAL const u32 *x, BL_GLOBAL u32 *y,
#ifndef DB_P
#define DB_P(i) prm[i] /* GLSL: bench.comp's uniform block */
#endif
#endif

/* noise elements 4g .. 4g + 3: one Philox call, as curand's bernoulli makes four */
DBFN void bl_bernoulli(BL_BUFS u32 g)
{
    u32 n = DB_P(BLP_NNOISE);
    u32x4 w = db_philox(MAKE_U32X4(g, 0u, 0u, 0u), DB_P(BLP_KEY), DB_P(BLP_KEY + 1));
    float gamma = AS_F32(DB_P(BLP_GAMMA));
    for (u32 k = 0u; k < 4u && 4u * g + k < n; k++)
        noise[IX(4u * g + k)] = AS_U32(TO_F32(db_sel4(w, k) >> 8) * 5.9604644775390625e-8f < gamma ? 1.0f : 0.0f);
}

/* padded element i of (planes, DN + 2pd, HN + 2p, WN + 2p), p = bs / 2, pd = bd / 2 */
DBFN void bl_pad(BL_BUFS u32 i)
{
    u32 p = DB_P(BLP_BS) / 2u, hn = DB_P(BLP_HN), wn = DB_P(BLP_WN), hp = hn + 2u * p, wp = wn + 2u * p;
    u32 pd = DB_P(BLP_BD) / 2u, dn = DB_P(BLP_DN), dp = dn + 2u * pd;
    u32 s = i / (hp * wp), r = i - s * hp * wp, h = r / wp, w = r - h * wp; /* s: slice of all planes */
    u32 plane = s / dp, d = s - plane * dp;
    u32 v = 0u;
    if (d >= pd && d < pd + dn && h >= p && h < p + hn && w >= p && w < p + wn)
        v = noise[IX(((plane * dn + d - pd) * hn + h - p) * wn + w - p)];
    padded[IX(i)] = v;
}

/* pooled element i of (planes, D, H, W): the max of the bd x bs x bs window, outside the volume
 * ignored */
DBFN void bl_pool(BL_BUFS u32 i)
{
    u32 D = DB_P(BLP_D), H = DB_P(BLP_H), W = DB_P(BLP_W), p = DB_P(BLP_BS) / 2u, pd = DB_P(BLP_BD) / 2u;
    u32 s = i / (H * W), r = i - s * H * W, h = r / W, w = r - h * W; /* s: slice of all planes */
    u32 d = s - (s / D) * D, s0 = s - d;
    float m = 0.0f; /* the inputs are 0 or 1 */
    for (u32 c = d >= pd ? d - pd : 0u; c <= d + pd && c < D; c++)
        for (u32 a = h >= p ? h - p : 0u; a <= h + p && a < H; a++)
            for (u32 b = w >= p ? w - p : 0u; b <= w + p && b < W; b++)
                m = FMAX(m, AS_F32(padded[IX(((s0 + c) * H + a) * W + b)]));
    pooled[IX(i)] = AS_U32(m);
}

DBFN void bl_one_minus(BL_BUFS u32 i) { noise[IX(i)] = AS_U32(1.0f - AS_F32(pooled[IX(i)])); }

/* part[1 + g] = sum of noise[g * BL_SEG ..] (the first level of noise.sum()) */
DBFN void bl_sum_noise(BL_BUFS u32 g)
{
    u32 n = DB_P(BLP_NUMEL);
    float s = 0.0f;
    for (u32 i = g * BL_SEG; i < n && i < (g + 1u) * BL_SEG; i++) s += AS_F32(noise[IX(i)]);
    part[IX(1u + g)] = AS_U32(s);
}

/* part[dst + g] = sum of part[src + g * BL_SEG ..], nin values from src (further levels) */
DBFN void bl_sum_part(BL_BUFS u32 g, u32 src, u32 nin, u32 dst)
{
    float s = 0.0f;
    for (u32 i = g * BL_SEG; i < nin && i < (g + 1u) * BL_SEG; i++) s += AS_F32(part[IX(src + i)]);
    part[IX(dst + g)] = AS_U32(s);
}

/* part[0] = numel / (1e-6 + the nin partial sums from src), one work item */
DBFN void bl_scale(BL_BUFS u32 src, u32 nin)
{
    float s = 0.0f;
    for (u32 i = 0u; i < nin; i++) s += AS_F32(part[IX(src + i)]);
    part[IX(0u)] = AS_U32(TO_F32(DB_P(BLP_NUMEL)) / (1e-6f + s));
}

/* tensor word i: y = x * noise * scale (f16/bf16: the two elements of the word) */
DBFN void bl_mul(BL_BUFS u32 i)
{
    float sc = AS_F32(part[IX(0u)]);
    u32 dt = DB_P(BLP_DTYPE);
    if (dt == DB_DTYPE_F32) {
        y[IX(i)] = AS_U32(AS_F32(x[IX(i)]) * AS_F32(noise[IX(i)]) * sc);
        return;
    }
    u32 xw = x[IX(i)], yw = 0u;
    for (u32 h = 0u; h < 2u && 2u * i + h < DB_P(BLP_NUMEL); h++) {
        float v = AS_F32(db_widen((xw >> (16u * h)) & 0xFFFFu, dt)) * AS_F32(noise[IX(2u * i + h)]) * sc;
        yw |= db_narrow(AS_U32(v), dt) << (16u * h);
    }
    y[IX(i)] = yw;
}

#endif
