"""test_torch_op.py: dropblock.torch as torch.library ops (issue 14 items 1 and 3).

  - bits: torch.ops.dropblock.dropblock2d (through dropblock.torch.dropblock2d) and its backward
    (through autograd) give the committed spec vectors (tests/vectors, from dropblock_ref.py)
    for every canonical case: f32, f16, bf16, NCHW, NHWC, channels_last; float64 gives what
    docs/semantics.md "float64" defines, computed here from the vector's mask with exact
    fractions and Python's float64 products;
  - what torchvision's and timm's own DropBlock tests check, in our words: the shape is kept,
    eval() is the identity, rate 0 is the identity, p = 1 with a block as large as the map gives
    zeros (and no NaN), a map is dropped whole or not at all when the block covers it, the drop
    fraction of many samples matches the exact expectation of the spec's gamma, shared channels
    share the mask, kept values are x times the scale; gradcheck in float64;
  - torch.compile: one graph, no graph break (torch._dynamo.explain, fullgraph=True), no
    recompilation over steps whose rate, stream and input change (recompile limit 1, stance
    fail_on_recompile), outputs and gradients bit-equal to eager, under torch.utils.checkpoint
    too; inductor where a C++ compiler exists, aot_eager always;
  - torch.fx.symbolic_trace of a model holding the module (torchvision's get_graph_node_names
    too where torchvision is installed), torch.export.export: the traced programs draw the same
    masks as the module, step after step;
  - through a daemon (--daemon): one connection for every module and call of the process, y in
    the connection's shared memory from a pool (recycled), x read in place when it lies there
    (no copy) and copied once otherwise, the same bits as the spec.
Runs the in-process engine's CPU backend ($DROPBLOCK_LIBRARY: meson sets it) and a dropblockd
with --devices cpu. Exit 77 (skipped) when torch or NumPy cannot be imported.
"""
import argparse
import copy
import gc
import glob
import json
import os
import pickle
import shutil
import struct
import sys
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

from testlib import Daemon, Tally  # noqa: E402

try:
    import numpy as np
    import torch
    import torch.utils.checkpoint as tcp
except ImportError as e:
    print("SKIP: %s" % e)
    sys.exit(77)

import dropblock  # noqa: E402
import dropblock.torch as dbt  # noqa: E402
from dropblock.torch import DropBlock2d, DropBlock3d, drop_block3d, dropblock2d, dropblock3d  # noqa: E402

T = Tally()
check = T.check
TORCH_INT = {"f32": torch.int32, "f16": torch.int16, "bf16": torch.int16}
TORCH_FLOAT = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def section(name):
    print("--", name, flush=True)


def ibits(t):
    """The bit patterns of a float tensor, in its logical order, as a NumPy integer array."""
    t = t.detach().contiguous()
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()]).numpy().copy()


def f32(v):
    return struct.unpack("<f", struct.pack("<f", v))[0]


# ---- the spec vectors ----------------------------------------------------------------------

def vectors():
    out = []
    for path in sorted(glob.glob(os.path.join(HERE, "vectors", "*.json"))):
        with open(path) as f:
            v = json.load(f)
        r = v["request"]
        if r["compat"] == "none" and "error" not in v["expected"]:
            out.append(v)
    return out


def request_args(r):
    share = tuple(s for s, on in (("channels", r["share_channels"]), ("batch", r["share_batch"])) if on)
    rate = struct.unpack("<f", struct.pack("<I", int(r["rate_bits"], 16)))[0]
    return dict(rate=rate, block_size=tuple(r["block"]), seed=int(r["seed"]), stream=int(r["stream"]),
                layout=r["layout"], normalize=r["normalize"], share=share, training=r["training"])


def phys_shape(r):
    n, c, h, w = r["shape"]
    return (n, c, h, w) if r["layout"] == "NCHW" else (n, h, w, c)


def input_tensor(v):
    """The vector's input in its dtype, physical order, shaped by its layout."""
    r = v["request"]
    bits = [int(b, 16) for b in v["input"]]
    if r["dtype"] == "f32":
        raw = torch.tensor(np.array(bits, np.uint32).view(np.int32))
    else:
        raw = torch.tensor(np.array(bits, np.uint16).view(np.int16))
    return raw.view(TORCH_FLOAT[r["dtype"]]).view(phys_shape(r))


def run_vector(v, x, client, **extra):
    """The op's (forward) or autograd's (backward) output for the vector's request on x."""
    r = v["request"]
    kw = request_args(r)
    kw.update(extra)
    if r["mode"] == "forward":
        return dropblock2d(x, client=client, **kw)
    xs = torch.zeros_like(x).requires_grad_(True)
    dropblock2d(xs, client=client, **kw).backward(x)
    return xs.grad


def want_bits(v):
    r = v["request"]
    vals = [int(b, 16) for b in v["expected"]["values"]]
    return np.array(vals, np.uint32 if r["dtype"] == "f32" else np.uint16).view(
        np.int32 if r["dtype"] == "f32" else np.int16).reshape(phys_shape(r))


def vector_cases(client, label, vs, shared=False):
    """Every vector's bits: as given, and (NCHW) as a channels_last tensor; shared: x in the
    connection's shared memory."""
    bad = []
    for v in vs:
        r = v["request"]
        x = input_tensor(v)
        if shared:
            xs = dbt.shared_empty(x.shape, x.dtype, client=client)
            xs.copy_(x)
            x = xs
        y = run_vector(v, x, client)
        ok = tuple(y.shape) == tuple(x.shape) and np.array_equal(ibits(y), want_bits(v))
        if ok and r["layout"] == "NCHW" and r["shape"][1] > 1 and r["shape"][2] * r["shape"][3] > 1:
            xc = x.contiguous(memory_format=torch.channels_last)
            yc = run_vector(v, xc, client)
            ok = (yc.is_contiguous(memory_format=torch.channels_last) and not yc.is_contiguous()
                  and np.array_equal(ibits(yc), want_bits(v)))
        if not ok:
            bad.append(v["name"] + "-" + r["layout"] + "-" + r["dtype"])
    check(not bad, "%s: %d spec vectors bit-exact through the op (forward) and autograd (backward); wrong: %s"
          % (label, len(vs), bad[:8]))


# ---- float64: docs/semantics.md "float64", computed from the vector's mask --------------------

def decode(dtype, b):
    if dtype == "f32":
        return struct.unpack("<f", struct.pack("<I", b))[0]
    if dtype == "f16":
        return float(np.array([b], np.uint16).view(np.float16)[0])
    return struct.unpack("<f", struct.pack("<I", b << 16))[0]


def f64_expected(v):
    """(x as float64, the float64 output bits) for the vector's request: the spec's mask,
    scale = S/K rounded once to float64 (Fraction), y = (x * scale) * m in Python floats."""
    r = v["request"]
    n, c, h, w = r["shape"]
    xs = [decode(r["dtype"], int(b, 16)) for b in v["input"]]
    x64 = torch.tensor(xs, dtype=torch.float64).view(phys_shape(r))
    if not r["training"] or f32(request_args(r)["rate"]) == 0.0:
        return x64, ibits(x64)
    mb = bytes.fromhex(v["expected"]["mask"])
    keep = [(mb[i >> 3] >> (i & 7)) & 1 for i in range(n * c * h * w)]
    kept = [sum(keep[k * c * h * w:(k + 1) * c * h * w]) for k in range(n)]
    if r["normalize"] == "none":
        scales = [1.0] * n
    elif r["normalize"] == "global":
        scales = [0.0 if sum(kept) == 0 else float(Fraction(n * c * h * w, sum(kept)))] * n
    else:
        scales = [0.0 if k == 0 else float(Fraction(c * h * w, k)) for k in kept]
    flat = x64.reshape(-1).tolist()
    out = []
    for p, xv in enumerate(flat):
        if r["layout"] == "NCHW":
            logical, nn = p, p // (c * h * w)
        else:
            ch, rest = p % c, p // c
            ww, rest = rest % w, rest // w
            hh, nn = rest % h, rest // h
            logical = ((nn * c + ch) * h + hh) * w + ww
        out.append(struct.unpack("<q", struct.pack("<d", (xv * scales[nn]) * keep[logical]))[0])
    return x64, np.array(out, np.int64).reshape(phys_shape(r))


def float64_cases(client, vs):
    section("float64")
    bad = []
    for v in vs:
        r = v["request"]
        x64, want = f64_expected(v)
        if r["mode"] == "forward":
            y = dropblock2d(x64, client=client, **request_args(r))
        else:
            xs = torch.zeros_like(x64).requires_grad_(True)
            dropblock2d(xs, client=client, **request_args(r)).backward(x64)
            y = xs.grad
        if not (y.dtype == torch.float64 and np.array_equal(ibits(y), want)):
            bad.append("%s-%s-%s" % (v["name"], r["layout"], r["dtype"]))
    check(not bad, "float64: %d vectors' inputs give the float64 bits of docs/semantics.md (mask of the spec, "
          "S/K in float64, (x*scale)*m); wrong: %s" % (len(vs), bad[:8]))
    x = torch.rand(2, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    check(torch.autograd.gradcheck(lambda t: dropblock2d(t, 0.3, 3, seed=9, stream=4, client=client), (x,)),
          "float64: torch.autograd.gradcheck of the op (forward and backward agree with finite differences)")
    check(torch.autograd.gradgradcheck(lambda t: dropblock2d(t, 0.3, 3, seed=9, stream=4, client=client), (x,)),
          "float64: gradgradcheck (the backward op's own gradient)")
    try:
        dropblock2d(x.detach(), 0.1, 3, compat="keras_cv", layout="NHWC", client=client)
        check(False, "float64 with compat keras_cv is refused")
    except dropblock.Error as e:
        check(e.code == "invalid_argument" and "float64" in e.message,
              "float64 with compat keras_cv is refused, saying why (%s)" % e.message)


# ---- what torchvision's and timm's tests check --------------------------------------------

def gamma_threshold(rate, h, w, b):
    g = f32(f32(rate) * f32(h * w))
    g = f32(g / f32(b * b))
    g = f32(g / f32((h - b + 1) * (w - b + 1)))
    return min(int(Fraction(g) * (1 << 32)), 1 << 32)


def peer_cases(client):
    section("torchvision's and timm's checks")
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for layout, shape in (("NCHW", (3, 5, 11, 13)), ("NHWC", (3, 11, 13, 5))):
            m = DropBlock2d(0.2, 5, seed=1, layout=layout, client=client)
            x = torch.rand(shape, dtype=dtype) + 1
            y = m(x)
            check(y.shape == x.shape and y.dtype == dtype, "%s %s: the shape and dtype are kept" % (dtype, layout))
            m.eval()
            check(m(x) is x, "%s %s: eval() returns the input itself" % (dtype, layout))
            z = DropBlock2d(0.0, 5, seed=1, layout=layout, client=client)(x)
            check(np.array_equal(ibits(z), ibits(x)), "%s %s: rate 0 is the identity, bit for bit" % (dtype, layout))
            ones = torch.ones(shape, dtype=dtype)
            full = DropBlock2d(1.0, (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2]),
                               seed=2, layout=layout, client=client)(ones)
            check(bool((full == 0).all()) and not bool(full.isnan().any()),
                  "%s %s: p = 1 with a block as large as the map: all zeros, no NaN (torchvision and timm "
                  "give 0; keras-cv NaN)" % (dtype, layout))
    # torchvision test_drop_block: with the block as large as the map each map is all or nothing
    x = torch.ones(5, 3, 11, 11)
    y = DropBlock2d(0.5, 11, seed=3, client=client)(x)
    counts = [int(y[b, c].count_nonzero()) for b in range(5) for c in range(3)]
    check(all(k in (0, 121) for k in counts) and 0 < counts.count(0) < 15,
          "block = map: every map dropped whole or kept whole (%d of 15 dropped)" % counts.count(0))
    # torchvision test_drop_block_random: the drop fraction of 1024 samples matches the expectation
    h = w = 11
    b = 3
    for p in (0.1, 0.2):
        y = DropBlock2d(p, b, seed=4, client=client)(torch.ones(1024, 1, h, w))
        got = float((y == 0).float().mean())
        g = Fraction(gamma_threshold(p, h, w, b), 1 << 32)
        exp = 0.0
        for i in range(h):
            for j in range(w):
                k = (min(i, h - b) - max(0, i - b + 1) + 1) * (min(j, w - b) - max(0, j - b + 1) + 1)
                exp += 1 - float((1 - g) ** k)
        exp /= h * w
        check(abs(got - exp) < 0.015 and abs(got - p) < 0.35 * p,
              "p %g, 11x11, block 3, 1024 samples: drop fraction %.4f, expected %.4f from the spec's gamma"
              % (p, got, exp))
    # timm: one mask for all channels (share channels); kept values are x * scale
    x = torch.rand(4, 6, 14, 14) + 0.5
    y = dropblock2d(x, 0.2, 3, seed=5, share=("channels",), client=client)
    kept = y != 0
    check(all(torch.equal(kept[:, 0], kept[:, c]) for c in range(6)) and not bool(kept.all()),
          "share channels: every channel of a sample has the sample's mask (timm's coupled channels)")
    info_k = int(kept.sum())
    scale = f32(float(Fraction(x.numel(), info_k)))
    check(torch.equal(y[kept], x[kept] * torch.tensor(scale, dtype=torch.float32)),
          "kept values are x times the float32 nearest S/K (%g)" % scale)
    try:
        dropblock2d(torch.ones(2, 2, 4, 4, dtype=torch.int32), 0.1, 3, client=client)
        check(False, "an int32 tensor is refused")
    except dropblock.Error as e:
        check(e.code == "invalid_argument" and "dtype" in e.message, "an int32 tensor is refused (%s)" % e.message)
    try:
        dropblock2d(torch.ones(2, 4, 4), 0.1, 3, client=client)
        check(False, "a 3-D tensor is refused")
    except dropblock.Error as e:
        check(e.code == "invalid_argument", "a 3-D tensor is refused (%s)" % e.message)
    # gradients: the mask and scale of the forward, twice differentiable
    x = (torch.rand(2, 3, 9, 9) + 0.5).requires_grad_(True)
    (g,) = torch.autograd.grad(dropblock2d(x, 0.3, 3, seed=6, stream=2, client=client).sum(), x)
    ones = dropblock2d(torch.ones(2, 3, 9, 9), 0.3, 3, seed=6, stream=2, client=client)
    check(torch.equal(g, ones), "the gradient of sum(y) is the forward applied to ones (mask times scale)")
    dy = torch.rand(2, 3, 9, 9, requires_grad=True)
    (gx,) = torch.autograd.grad(dropblock2d(x, 0.3, 3, seed=6, stream=2, client=client), x, dy, create_graph=True)
    (gdy,) = torch.autograd.grad(gx, dy, torch.ones(2, 3, 9, 9))
    check(torch.equal(gdy, ones), "the backward's own gradient (double backward) is the same mask and scale")
    # model.half() converts floating buffers: the rate must stay as set
    m = DropBlock2d(0.1, 3, seed=1, client=client).half()
    check(m.rate == 0.1 and m._rate.dtype == torch.float64, "model.half() keeps the rate (0.1) in float64")
    m.double()
    check(m.rate == 0.1, "model.double() keeps the rate")


# ---- DropBlock3D (issue 17): the same op on 5-D tensors ------------------------------------------

def vectors3d():
    out = []
    for path in sorted(glob.glob(os.path.join(HERE, "vectors3d", "*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def phys3(r):
    n, c, d, h, w = r["shape"]
    return (n, c, d, h, w) if r["layout_3d"] == "NCDHW" else (n, d, h, w, c)


def tensor_of(bits, dtype, shape):
    ints = [int(b, 16) for b in bits]
    if dtype == "f32":
        raw = torch.tensor(np.array(ints, np.uint32).view(np.int32))
    else:
        raw = torch.tensor(np.array(ints, np.uint16).view(np.int16))
    return raw.view(TORCH_FLOAT[dtype]).view(shape)


def args3(r):
    kw = request_args(r)
    kw.update(block_size=tuple(r["block"]), layout=r["layout_3d"])
    return kw


def keep3(v, x, y):
    """The keep mask (logical NCDHW, 0/1 int64) of a 3-D vector from its input and output: kept
    where y is not 0 (x is never 0 in the vectors: checked)."""
    r = v["request"]
    t = (lambda a: a) if r["layout_3d"] == "NCDHW" else (lambda a: a.permute(0, 4, 1, 2, 3))
    check_nz = bool((t(x).double() != 0).all())
    return check_nz, (t(y).double() != 0).to(torch.int64).contiguous()


def vectors3d_cases(client):
    section("DropBlock3D: tests/vectors3d through the op")
    vs = vectors3d()
    check(len(vs) == 48, "%d DropBlock3D vectors found in tests/vectors3d" % len(vs))
    bad = {"forward": [], "backward": [], "channels_last_3d": [], "float64": [], "module": []}
    for v in vs:
        r = v["request"]
        label = "%s-%s-%s" % (v["name"], r["layout_3d"], r["dtype"])
        x = tensor_of(v["input"], r["dtype"], phys3(r))
        want = tensor_of(v["expected"]["values"], r["dtype"], phys3(r))
        kw = args3(r)
        try:
            y = dropblock3d(x, client=client, **kw)
            if not (y.shape == x.shape and np.array_equal(ibits(y), ibits(want))):
                bad["forward"].append(label)
            xs = torch.zeros_like(x).requires_grad_(True)
            dropblock3d(xs, client=client, **kw).backward(x)
            if not np.array_equal(ibits(xs.grad), ibits(want)):
                bad["backward"].append(label)
            if r["layout_3d"] == "NCDHW" and r["shape"][1] > 1:
                xc = x.contiguous(memory_format=torch.channels_last_3d)
                yc = dropblock3d(xc, client=client, **kw)
                if not (yc.is_contiguous(memory_format=torch.channels_last_3d) and not yc.is_contiguous()
                        and np.array_equal(ibits(yc), ibits(want))):
                    bad["channels_last_3d"].append(label)
            # the module: the vector's seed and stream, training as the vector's
            m = DropBlock3d(kw["rate"], kw["block_size"], seed=kw["seed"], stream=kw["stream"], layout=r["layout_3d"],
                            normalize=kw["normalize"], share=kw["share"], client=client)
            m.train(kw["training"])
            if not np.array_equal(ibits(m(x)), ibits(want)):
                bad["module"].append(label)
            # float64: the vector's mask (from its output), S/K in float64, (x * scale) * m
            x64 = x.double()
            nz, keep = keep3(v, x, want)
            n = r["shape"][0]
            if not r["training"] or f32(kw["rate"]) == 0.0:
                want64 = x64
            else:
                kept = keep.view(n, -1).sum(1).tolist()
                numel = keep.numel()
                if r["normalize"] == "global":
                    scales = [0.0 if sum(kept) == 0 else float(Fraction(numel, sum(kept)))] * n
                elif r["normalize"] == "sample":
                    scales = [0.0 if k == 0 else float(Fraction(numel // n, k)) for k in kept]
                else:
                    scales = [1.0] * n
                mk = keep.double() if r["layout_3d"] == "NCDHW" else keep.double().permute(0, 2, 3, 4, 1)
                want64 = (x64 * torch.tensor(scales, dtype=torch.float64).view(n, 1, 1, 1, 1)) * mk
            y64 = dropblock3d(x64, client=client, **kw)
            if not (nz and y64.dtype == torch.float64 and np.array_equal(ibits(y64), ibits(want64))):
                bad["float64"].append(label)
        except dropblock.Error as e:
            for k in bad:
                bad[k].append("%s: %s" % (label, e))
    for what, text in (("forward", "dropblock3d's output bits"), ("backward", "autograd's gradient bits (backward op)"),
                       ("channels_last_3d", "a channels_last_3d tensor (NCDHW) runs on its NDHWC bytes, y "
                                            "channels_last_3d"),
                       ("module", "DropBlock3d with the vector's seed and stream"),
                       ("float64", "float64: the vector's mask, S/K in float64, (x*scale)*m")):
        check(not bad[what], "vectors3d: %s; wrong: %s" % (text, bad[what][:4]))
    # D = 1: the 2-D vectors as 5-D tensors with a depth-1 volume give the 2-D bits
    bad = []
    for v in vectors():
        r = v["request"]
        x = input_tensor(v)
        x5 = x.unsqueeze(2) if r["layout"] == "NCHW" else x.unsqueeze(1)
        kw = request_args(r)
        kw.update(block_size=(5,) + kw["block_size"], layout="NCDHW" if r["layout"] == "NCHW" else "NDHWC")
        if r["mode"] == "forward":
            y = dropblock3d(x5, client=client, **kw)
        else:
            xs = torch.zeros_like(x5).requires_grad_(True)
            dropblock3d(xs, client=client, **kw).backward(x5)
            y = xs.grad
        if not (y.shape == x5.shape and np.array_equal(ibits(y).reshape(want_bits(v).shape), want_bits(v))):
            bad.append("%s-%s-%s" % (v["name"], r["layout"], r["dtype"]))
    check(not bad, "D = 1: the 2-D vectors as 5-D tensors (block depth 5, clamped to 1) give the 2-D bits "
          "through the op and autograd; wrong: %s" % bad[:6])


def gamma_threshold3(rate, dims, blocks):
    d, h, w = dims
    bd, bh, bw = blocks
    g = f32(f32(rate) * f32(d * h * w))
    g = f32(g / f32(bd * bh * bw))
    g = f32(g / f32((d - bd + 1) * (h - bh + 1) * (w - bw + 1)))
    return min(int(Fraction(g) * (1 << 32)), 1 << 32)


def peer3d_cases(client):
    section("torchvision's DropBlock3d checks, in our words")
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for layout, shape in (("NCDHW", (2, 3, 5, 6, 7)), ("NDHWC", (2, 5, 6, 7, 3))):
            m = DropBlock3d(0.2, 3, seed=1, layout=layout, client=client)
            x = torch.rand(shape, dtype=dtype) + 1
            y = m(x)
            check(y.shape == x.shape and y.dtype == dtype and bool((y == 0).any()) and bool((y != 0).any()),
                  "DropBlock3d %s %s: the shape and dtype are kept, some dropped" % (dtype, layout))
            m.eval()
            check(m(x) is x, "DropBlock3d %s %s: eval() returns the input itself" % (dtype, layout))
            z = DropBlock3d(0.0, 3, seed=1, layout=layout, client=client)(x)
            check(np.array_equal(ibits(z), ibits(x)), "DropBlock3d %s %s: p = 0 is the identity, bit for bit"
                  % (dtype, layout))
            vol = shape[2:] if layout == "NCDHW" else shape[1:4]
            for block in (vol, 9):
                full = DropBlock3d(1.0, block, seed=2, layout=layout, client=client)(torch.ones(shape, dtype=dtype))
                check(bool((full == 0).all()) and not bool(full.isnan().any()),
                      "DropBlock3d %s %s: p = 1 with block %r >= the volume: all zeros, no NaN"
                      % (dtype, layout, block))
    # block = volume: each (n, c) volume dropped whole or kept whole
    y = DropBlock3d(0.5, (3, 4, 5), seed=3, client=client)(torch.ones(6, 4, 3, 4, 5))
    counts = [int(y[b, c].count_nonzero()) for b in range(6) for c in range(4)]
    check(all(k in (0, 60) for k in counts) and 0 < counts.count(0) < 24,
          "block = volume: every volume dropped whole or kept whole (%d of 24 dropped)" % counts.count(0))
    # the drop fraction of many samples against the exact expectation of the spec's gamma
    dims, b = (6, 7, 7), (2, 3, 3)
    for p in (0.1, 0.25):
        y = DropBlock3d(p, b, seed=4, client=client)(torch.ones(512, 1, *dims))
        got = float((y == 0).float().mean())
        g = Fraction(gamma_threshold3(p, dims, b), 1 << 32)
        exp = 0.0
        for i in range(dims[0]):
            for j in range(dims[1]):
                for k in range(dims[2]):
                    cover = 1
                    for pos, size, blk in ((i, dims[0], b[0]), (j, dims[1], b[1]), (k, dims[2], b[2])):
                        cover *= min(pos, size - blk) - max(0, pos - blk + 1) + 1
                    exp += 1 - float((1 - g) ** cover)
        exp /= dims[0] * dims[1] * dims[2]
        check(abs(got - exp) < 0.015 and abs(got - p) < 0.35 * p,
              "p %g, 6x7x7, block 2x3x3, 512 samples: drop fraction %.4f, expected %.4f from the spec's gamma"
              % (p, got, exp))
    # kept values are x * scale (the float32 nearest S/K); shared channels share the mask
    x = torch.rand(3, 4, 5, 8, 8) + 0.5
    y = dropblock3d(x, 0.2, 3, seed=5, share=("channels",), client=client)
    kept = y != 0
    check(all(torch.equal(kept[:, 0], kept[:, c]) for c in range(4)) and not bool(kept.all()),
          "share channels: every channel of a sample has the sample's 3-D mask")
    scale = f32(float(Fraction(x.numel(), int(kept.sum()))))
    check(torch.equal(y[kept], x[kept] * torch.tensor(scale, dtype=torch.float32)),
          "kept values are x times the float32 nearest S/K (%g)" % scale)
    # gradients
    x = (torch.rand(2, 3, 4, 6, 6) + 0.5).requires_grad_(True)
    (g,) = torch.autograd.grad(dropblock3d(x, 0.3, 2, seed=6, stream=2, client=client).sum(), x)
    ones = dropblock3d(torch.ones(2, 3, 4, 6, 6), 0.3, 2, seed=6, stream=2, client=client)
    check(torch.equal(g, ones), "3-D: the gradient of sum(y) is the forward applied to ones")
    x64 = torch.rand(1, 2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    check(torch.autograd.gradcheck(lambda t: dropblock3d(t, 0.3, 2, seed=9, stream=4, client=client), (x64,)),
          "3-D float64: torch.autograd.gradcheck")
    # torchvision's argument names: drop_block3d(input, p, block_size, inplace, eps, training), DropBlock3d(p, ...)
    x = torch.rand(2, 3, 4, 6, 6) + 0.5
    y1 = drop_block3d(x, 0.2, 3, seed=7, client=client)
    y2 = dropblock3d(x, 0.2, 3, seed=7, client=client)
    check(torch.equal(y1, y2), "drop_block3d with a seed: dropblock3d's bits")
    torch.manual_seed(5)
    a = drop_block3d(x, 0.2, 3, client=client)
    b = drop_block3d(x, 0.2, 3, client=client)
    torch.manual_seed(5)
    a2 = drop_block3d(x, p=0.2, block_size=3, client=client)
    check(not torch.equal(a, b) and torch.equal(a, a2),
          "drop_block3d without a seed: a new mask each call, drawn from torch's generator (manual_seed repeats it)")
    check(drop_block3d(x, 0.2, 3, training=False, client=client) is x, "drop_block3d training=False: the input")
    xi = x.clone()
    r = drop_block3d(xi, 0.2, 3, inplace=True, eps=1e-6, seed=7, client=client)
    check(r is xi and torch.equal(xi, y1), "drop_block3d inplace=True writes the result into the input")
    m = DropBlock3d(p=0.2, block_size=3, inplace=True, eps=1e-6, seed=7, client=client)
    xi = x.clone()
    check(m(xi) is xi and torch.equal(xi, y1) and "inplace=True" in repr(m),
          "DropBlock3d(p=, block_size=, inplace=True, eps=): torchvision's names")
    m = DropBlock2d(p=0.2, block_size=3, seed=7, client=client)
    check(torch.equal(m(x[:, :, 0]), dropblock2d(x[:, :, 0], 0.2, 3, seed=7, client=client)),
          "DropBlock2d takes p= too (the same base)")
    for fn, text in ((lambda: DropBlock3d(0.1, 3, 1234), "inplace"),
                     (lambda: DropBlock3d(0.1, 3, layout="NCHW"), "NCDHW"),
                     (lambda: DropBlock3d(0.1, (3, 3)), "(BD, BH, BW)"),
                     (lambda: DropBlock3d(0.1, 3, rate=0.2, p=0.1), ""),
                     (lambda: DropBlock3d(0.1, 3, eps=-1), "eps"),
                     (lambda: DropBlock3d(0.1, 3, client=client)(torch.ones(2, 3, 4, 4)), "5-D"),
                     (lambda: DropBlock2d(0.1, 3, client=client)(torch.ones(2, 3, 4, 4, 4)), "4-D"),
                     (lambda: dropblock2d(torch.ones(2, 3, 4, 4, 4), 0.1, 3, client=client), "dropblock3d"),
                     (lambda: dropblock3d(torch.ones(2, 3, 4, 4, 4), 0.1, 3, layout="NHWC", client=client), "NDHWC"),
                     (lambda: torch.ops.dropblock.dropblock2d(
                         torch.ones(2, 3, 4, 4, 4), torch.tensor([0.1], dtype=torch.float64), torch.tensor([1]),
                         torch.tensor([0]), [3, 3, 3], "NCDHW", "global", "", "keras_cv", "local", "auto"), "keras")):
        try:
            fn()
            check(False, "refused: %s" % text)
        except TypeError as e:  # the duplicated rate
            check(text == "", "refused: %s (%s)" % (text, e))
        except dropblock.Error as e:
            check(e.code == "invalid_argument" and text in e.message, "refused, naming %r: %s" % (text, e.message))
    # shared_empty in channels_last_3d
    t = dbt.shared_empty((2, 3, 4, 5, 6), memory_format=torch.channels_last_3d, client=client)
    check(t.is_contiguous(memory_format=torch.channels_last_3d) and t.shape == (2, 3, 4, 5, 6),
          "shared_empty(memory_format=channels_last_3d)")


class Net3(torch.nn.Module):
    def __init__(self, client, seed=None):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 3, 3, padding=1)
        self.drop = DropBlock3d(0.2, (2, 3, 3), seed=seed, client=client)

    def forward(self, x):
        return torch.relu(self.drop(self.conv(x))) + x


def compile3d_cases(client):
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend
    section("torch.compile of DropBlock3d")
    gen = torch.Generator().manual_seed(4)
    xs = [torch.rand(2, 3, 4, 7, 7, generator=gen) for _ in range(3)]
    ex = torch._dynamo.explain(Net3(client, seed=1))(xs[0])
    check(ex.graph_count == 1 and ex.graph_break_count == 0,
          "DropBlock3d: torch._dynamo.explain: %d graph(s), %d break(s) %s"
          % (ex.graph_count, ex.graph_break_count, [str(b.reason)[:80] for b in ex.break_reasons]))
    torch._dynamo.reset()
    torch.manual_seed(2)
    model = Net3(client)
    torch.manual_seed(2)
    ref = Net3(client)
    cnt = CompileCounterWithBackend("aot_eager")
    try:
        with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
            cm = torch.compile(model, backend=cnt, fullgraph=True)
            got = []
            for k, x in enumerate(xs):
                model.drop.rate = 0.1 * (k + 1)
                xg = x.clone().requires_grad_(True)
                y = cm(xg)
                y.sum().backward()
                got.append((ibits(y), ibits(xg.grad)))
        err = None
    except Exception as e:
        got, err = [], e
    want = []
    for k, x in enumerate(xs):
        ref.drop.rate = 0.1 * (k + 1)
        xg = x.clone().requires_grad_(True)
        y = ref(xg)
        y.sum().backward()
        want.append((ibits(y), ibits(xg.grad)))
    check(err is None and cnt.frame_count == 1 and len(got) == 3
          and all(np.array_equal(g[0], w[0]) and np.array_equal(g[1], w[1]) for g, w in zip(got, want)),
          "DropBlock3d under torch.compile (aot_eager, fullgraph): 3 steps compiled once (frames %d, %r), outputs "
          "and gradients bit-equal to eager" % (cnt.frame_count, err))
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")
    cf = torch.compile(lambda x: drop_block3d(x, 0.2, 3, client=client), backend=cnt, fullgraph=True)
    try:
        a, b = cf(xs[0]), cf(xs[0])
        ok = a.shape == xs[0].shape and not torch.equal(a, b) and cnt.frame_count == 1
    except Exception as e:
        ok = False
        print("  got", repr(e))
    check(ok, "drop_block3d (seed drawn per call) compiles in one graph, a new mask per call")
    torch._dynamo.reset()


# ---- torch.compile, torch.fx, torch.export --------------------------------------------------

class Net(torch.nn.Module):
    """Work around the layer, as in a network; ck: the layer inside torch.utils.checkpoint."""

    def __init__(self, client, ck=False, seed=None):
        super().__init__()
        self.drop = DropBlock2d(0.2, 3, seed=seed, client=client)
        self.ck = ck

    def inner(self, x):
        return torch.relu(self.drop(x * 2.0)) + x

    def forward(self, x):
        return tcp.checkpoint(self.inner, x, use_reentrant=False) if self.ck else self.inner(x)


def steps(model, xs, ws, rates):
    """Outputs and input gradients of sum(model(x) * w), the layer's rate set before each step."""
    out = []
    for x, w, r in zip(xs, ws, rates):
        model.drop.rate = r
        x = x.clone().requires_grad_(True)
        y = model(x)
        (y * w).sum().backward()
        out.append((ibits(y), ibits(x.grad)))
    return out


def compile_cases(client):
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend
    section("torch.compile")
    gen = torch.Generator().manual_seed(3)
    xs = [torch.rand(2, 3, 9, 9, generator=gen) for _ in range(4)]
    ws = [torch.rand(2, 3, 9, 9, generator=gen) for _ in range(4)]
    rates = [float(dropblock.schedule_linear(0.3, k + 1, 4)) for k in range(4)]
    ex = torch._dynamo.explain(Net(client, seed=1))(xs[0])
    check(ex.graph_count == 1 and ex.graph_break_count == 0,
          "torch._dynamo.explain: %d graph(s), %d break(s) %s" % (ex.graph_count, ex.graph_break_count,
                                                                   [str(b.reason)[:80] for b in ex.break_reasons]))
    have_cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    backends = ["aot_eager"] + (["inductor"] if have_cxx else [])
    if not have_cxx:
        print("note: no C++ compiler: inductor not tried (aot_eager only)")
    for backend in backends:
        for ck in (False, True):
            torch._dynamo.reset()
            torch.manual_seed(11)
            model = Net(client, ck=ck)
            torch.manual_seed(11)
            ref = Net(client)  # eager, no checkpoint: the gradients checkpoint must reproduce
            cnt = CompileCounterWithBackend(backend)
            what = "%s%s" % (backend, ", checkpointed" if ck else "")
            try:
                with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
                    cm = torch.compile(model, backend=cnt, fullgraph=True)
                    got = steps(cm, xs[:1], ws[:1], rates[:1])
                    with torch.compiler.set_stance("fail_on_recompile"):
                        got += steps(cm, xs[1:], ws[1:], rates[1:])
                err = None
            except Exception as e:  # a graph break (fullgraph) or a recompilation raises
                got, err = [], e
            want = steps(ref, xs, ws, rates)
            check(err is None and cnt.frame_count == 1,
                  "%s: 4 steps (rate, stream and x changing) compiled once, fullgraph (frames %d, %r)"
                  % (what, cnt.frame_count, err))
            check(len(got) == 4 and all(np.array_equal(g[0], w[0]) for g, w in zip(got, want)),
                  "%s: outputs bit-equal to eager, step after step" % what)
            check(len(got) == 4 and all(np.array_equal(g[1], w[1]) for g, w in zip(got, want)),
                  "%s: input gradients bit-equal to eager without checkpoint" % what)
            check(model.drop.stream == 4, "%s: the stream advanced once a step (%d)" % (what, model.drop.stream))
    # the functional form with tensor arguments: new values, no recompilation
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")

    def f(x, rate, stream):
        return dropblock2d(x, rate, 3, seed=7, stream=stream, client=client) * 2

    cf = torch.compile(f, backend=cnt, fullgraph=True)
    ok = True
    for k in range(3):
        r = torch.tensor([0.1 + 0.1 * k], dtype=torch.float64)
        s = torch.tensor([k], dtype=torch.int64)
        ok &= np.array_equal(ibits(cf(xs[k], r, s)), ibits(f(xs[k], 0.1 + 0.1 * k, k)))
    check(ok and cnt.frame_count == 1, "functional dropblock2d with tensor rate and stream: compiled once "
          "(frames %d), the eager bits" % cnt.frame_count)
    torch._dynamo.reset()


def trace_cases(client):
    section("torch.fx and torch.export")
    x = torch.rand(2, 3, 9, 9)

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.drop = DropBlock2d(0.25, 3, seed=21, client=client)

        def forward(self, x):
            return torch.relu(self.drop(self.conv(x)))

    torch.manual_seed(0)
    model = Holder()
    torch.manual_seed(0)
    ref = Holder()
    try:
        gm = torch.fx.symbolic_trace(model)
        targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        err = None
    except Exception as e:
        gm, targets, err = None, [], e
    check(err is None and "dropblock.dropblock2d" in " ".join(targets) and "next_stream" in " ".join(targets),
          "torch.fx.symbolic_trace of a model holding the module: the ops are nodes (%r)" % (err or targets))
    if gm is not None:
        same = all(torch.equal(gm(x), ref(x)) for _ in range(3))
        check(same and model.drop.stream == 3,
              "the traced GraphModule draws the module's masks, a new stream each call (stream %d)"
              % model.drop.stream)
    try:
        from torchvision.models.feature_extraction import get_graph_node_names
    except ImportError:
        print("note: torchvision not installed: get_graph_node_names not tried (torch.fx above is its tracer)")
    else:
        names = get_graph_node_names(Holder())
        check(any("drop" in n for n in names[0]), "torchvision get_graph_node_names lists the layer's nodes")
    torch.manual_seed(0)
    model = Holder()
    torch.manual_seed(0)
    ref = Holder()
    try:
        ep = torch.export.export(model, (x,))
        err = None
    except Exception as e:
        ep, err = None, e
    check(ep is not None, "torch.export.export of the model (%r)" % err)
    if ep is not None:
        mod = ep.module()
        check(all(torch.equal(mod(x), ref(x)) for _ in range(3)),
              "the exported program draws the module's masks, a new stream each call")
        dec = ep.run_decompositions({})
        kinds = [str(s.kind) for s in dec.graph_signature.output_specs]
        check(any("BUFFER_MUTATION" in k for k in kinds),
              "the functionalized export records the counter as a buffer mutation (%s)" % kinds)


# ---- module state -----------------------------------------------------------------------------

def state_cases(client):
    section("module state")
    x = torch.rand(2, 3, 9, 9) + 0.5
    m = DropBlock2d(0.3, 3, seed=(1 << 64) - 5, stream=(1 << 64) - 2, stream_step=3, client=client)
    got = [ibits(m(x)) for _ in range(2)]
    xn = x.numpy()
    want = [client.dropblock2d(xn, 0.3, 3, seed=(1 << 64) - 5, stream=s).view(np.int32)
            for s in ((1 << 64) - 2, 1)]
    check(all(np.array_equal(g, w) for g, w in zip(got, want)) and m.stream == 4,
          "u64 seed and stream (tensors hold their bits): call 1 after 2^64 - 2 wraps to stream 1")
    c = copy.deepcopy(m)
    check(c.seed == m.seed and c.stream == m.stream and np.array_equal(ibits(c(x)), ibits(m(x))),
          "deepcopy: the same seed and stream, the same masks")
    p = pickle.loads(pickle.dumps(DropBlock2d(0.3, 3, seed=8, local=True)))
    check(p.seed == 8 and p.rate == 0.3, "pickle round trip of a module")
    # a module pickled before the counters were tensors (attributes rate, seed, stream, ...)
    old = DropBlock2d.__new__(DropBlock2d)
    st = DropBlock2d(0.3, 3, seed=1, client=client).__dict__.copy()
    st["_buffers"] = {}
    st.update(rate=0.25, seed=77, stream=5, stream_step=2, _replay={})
    old.__setstate__(st)
    check(old.rate == 0.25 and old.seed == 77 and old.stream == 5 and old.stream_step == 2,
          "a module pickled with the old attributes loads (rate, seed, stream, stream_step)")


# ---- through a daemon: one connection, pooled shared memory, copies ---------------------------

def daemon_cases(exe, vs):
    section("through dropblockd")
    d = Daemon(exe, "--devices", "cpu")
    os.environ["DROPBLOCK_SOCKET"] = d.path
    try:
        mods = [DropBlock2d(0.2, 3) for _ in range(3)] + [DropBlock2d(0.2, 3, socket=d.path)]
        x = torch.rand(4, 8, 16, 16) + 0.5
        for mod in mods:
            mod(x)
        dropblock2d(x, 0.2, 3, seed=1)
        client = dbt.shared_client()
        check(all(mod.client is client for mod in mods), "every module's client is the process's shared one")
        st = client.status()
        check(st.get("clients") == 1, "the daemon serves one connection for 4 modules and a call (clients %s)"
              % st.get("clients"))
        vector_cases(client, "daemon, x in ordinary memory", vs)
        vector_cases(client, "daemon, x in shared memory", [v for v in vs if v["request"]["dtype"] == "f32"],
                     shared=True)
        vectors3d_cases(client)  # DropBlock3D through the daemon: the wire's 5-D shape
        copy_cases(client, d.path)
        # a caller's own client: its close() ends its connection (the pool holds no memory of it)
        with dropblock.Client(d.path) as own:
            m = DropBlock2d(0.2, 3, seed=3, client=own)
            for _ in range(3):
                (m(x.clone().requires_grad_(True)) * 2).sum().backward()
            check(client.status()["clients"] == 2, "a module given its own client uses it (2 connections)")
        gc.collect()
        check(client.status()["clients"] == 1, "closing a client given to a module ends its connection")
        dbt.close_shared()
        watcher = dropblock.Client(d.path)
        check(watcher.status()["clients"] == 1 and watcher.status()["regions"] == 0,
              "close_shared() ends the shared connection and its pooled memory")
        watcher.close()
        check(dbt.shared_client() is not client and mods[0](x).shape == x.shape,
              "after close_shared() the next call opens a new shared connection")
        dbt.close_shared()
    finally:
        os.environ.pop("DROPBLOCK_SOCKET", None)
        rc = d.stop(remove=True)
        check(rc == 0, "dropblockd exits 0 (%s)" % rc)


def copy_cases(client, sock):
    """Counts the copies: NumPy copyto calls (the module's one copy) and the client's scratch
    regions (the copies _core makes for memory outside the connection's)."""
    counts = {"copyto": 0, "scratch": 0}
    real_copyto, real_scratch = np.copyto, client._scratch

    def copyto(*a, **k):
        counts["copyto"] += 1
        return real_copyto(*a, **k)

    def scratch(*a, **k):
        counts["scratch"] += 1
        return real_scratch(*a, **k)

    np.copyto, client._scratch = copyto, scratch
    try:
        m = DropBlock2d(0.2, 3, seed=12, socket=sock)
        shape = (4, 8, 16, 16)
        plain = torch.rand(shape) + 0.5
        shm = dbt.shared_empty(shape)
        shm.copy_(plain)
        arr = client.array(shape)
        arr[...] = plain.numpy()
        from_array = torch.from_numpy(arr)
        cl = dbt.shared_empty(shape, memory_format=torch.channels_last)
        cl.copy_(plain)
        want = dropblock2d(plain, 0.2, 3, seed=12, stream=0)
        for name, x, copies in (("a shared_empty tensor", shm, 0), ("a tensor over client.array", from_array, 0),
                                ("a channels_last shared_empty tensor", cl, 0), ("an ordinary tensor", plain, 1)):
            m.stream = 0
            counts.update(copyto=0, scratch=0)
            y = m(x)
            in_shm = client._h.contains(y.detach().numpy() if y.is_contiguous() else y.permute(0, 2, 3, 1).numpy())
            check(counts == {"copyto": copies, "scratch": 0} and in_shm and torch.equal(y, want),
                  "x %s: %d copy (counted %r), y in shared memory (%s), the same bits" % (name, copies, counts, in_shm))
        # the pool: a dead y's memory is the next y's
        y = m(plain)
        ptr = y.data_ptr()
        del y
        y2 = m(plain)
        check(y2.data_ptr() == ptr, "the pool gives a dead output's memory to the next call")
        y3 = m(plain)
        check(y3.data_ptr() != y2.data_ptr(), "never the memory of an output still alive")
        # backward: dy from autograd is copied once into the gradient's shared memory
        xg = plain.clone().requires_grad_(True)
        m.stream = 0
        counts.update(copyto=0, scratch=0)
        m(xg).backward(torch.ones(shape))
        grad_counts = dict(counts)
        check(grad_counts == {"copyto": 2, "scratch": 0}
              and torch.equal(xg.grad, dropblock2d(torch.ones(shape), 0.2, 3, seed=12, stream=0)),
              "forward + backward of an ordinary tensor: one copy each (%r), the gradient's bits" % grad_counts)
    finally:
        np.copyto, client._scratch = real_copyto, real_scratch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", help="dropblockd, for the connection and shared-memory cases")
    a = ap.parse_args()
    vs = vectors()
    check(len(vs) > 100, "%d canonical spec vectors found in tests/vectors" % len(vs))
    with dropblock.Client(local=True, backends="cpu") as client:
        section("spec vectors, local engine")
        vector_cases(client, "local engine", vs)
        float64_cases(client, vs)
        peer_cases(client)
        state_cases(client)
        trace_cases(client)
        compile_cases(client)
    with dropblock.Client(local=True, backends="cpu") as client:  # test_python: every device
        for cases in (vectors3d_cases, peer3d_cases, compile3d_cases):
            try:
                cases(client)
            except Exception as e:  # noqa: BLE001 - one failed section must not hide the rest
                check(False, "%s raised %r" % (cases.__name__, e))
    if a.daemon:
        daemon_cases(a.daemon, vs)
    else:
        print("note: no --daemon: the connection and shared-memory cases were not run")
    print("%d passed, %d failed" % (T.passed, T.failed), flush=True)
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
