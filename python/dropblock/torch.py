"""dropblock.torch: DropBlock2D and DropBlock3D for PyTorch, as torch.library custom ops run by
dropblockd (or the local engine).

    from dropblock.torch import DropBlock2d, DropBlock3d
    drop = DropBlock2d(0.1, 7, seed=1234)        # the process's connection to the default socket
    y = drop(x)                                  # training: a new mask per call; eval: y is x
    y5 = DropBlock3d(0.1, (3, 5, 5))(video)      # (N, C, D, H, W); torchvision's DropBlock3d arguments

DropBlock3D is the same op on a 5-D x (block [BD, BH, BW], layout NCDHW or NDHWC; channels_last_3d
tensors run as NDHWC like channels_last ones as NHWC): DropBlock3d, dropblock3d and drop_block3d
(torchvision's functional signature) share DropBlock2d's code, so everything below holds for it.

The ops (torch.ops.dropblock.*), with fake implementations and autograd formulas, so that
torch.compile (one graph, no recompilation from step to step), torch.fx and torch.export see
through the module:
  dropblock2d(x, rate, seed, stream, block, layout, normalize, share, compat, target, device)
  dropblock2d_backward(dy, ...same...)   the same mask and scale on dy (its own gradient)
  next_stream(state, token)              the module's stream counter (state mutated in place)
rate (float64), seed and stream (int64 holding the u64's bits) are one-element tensors, so their
values are data, not constants a compiled graph guards on; target names the connection ("" the
default socket, a socket path, "local", or a caller's Client: dropblock._shm).

Forward and backward both go through the engine: the backward regenerates the forward's mask from
(seed, stream) with mode "backward", so nothing but three scalars is saved for it.

Memory: y is allocated in the connection's shared memory (a pool, recycled when the tensor dies);
x is read where it is when it lies in that memory already (a client.array, a shared_empty
tensor, or another layer's output), else copied once into y and the job runs in place. float64
runs through the engine's mask and multiplies in float64 (docs/semantics.md, "float64").

Seeds: a DropBlock2d built without a seed draws one from torch's default generator, so
torch.manual_seed before building the model sets (and reproduces) every layer's masks; an
explicit seed gives exactly the masks of (seed, stream + k * stream_step) at the k-th call.
torch.utils.checkpoint (use_reentrant True or False) runs a forward again during backward: each
training call draws a token from torch's generator, which checkpoint saves and restores, and a
call that draws the token of a recent call reuses that call's stream (next_stream), so the
recomputed forward has the first one's mask and the gradients are those of a run without it;
under torch.compile the draw is a random op of the graph, which the partitioner replays for a
checkpointed region.
Tensors on the CPU or a CUDA (or ROCm) GPU: float32, float16, bfloat16 or float64;
channels_last tensors in layout "NCHW" run as NHWC without a copy (channels_last_3d in "NCDHW"
as NDHWC). Needs NumPy as well.

CUDA tensors (dropblock._cuda_pool): the job runs on the daemon's device with the GPU's UUID, in a
pool of its memory imported into CUDA: x is copied into a pool block on the tensor's current
stream (device to device), the job runs in place there, and y is a tensor over the block (given
back to the pool when y dies); no host copy. The stream and the job are ordered by an exported
timeline semaphore (the host does not wait), or host-synchronously where the device exports
none. Where no daemon device matches the GPU, or the memory cannot be imported, calls go through
pinned shared host memory instead (x to the host, the CPU path, y back), with one
FallbackWarning per process saying why. float64 GPU tensors take the engine's mask from host
memory (one byte per element up) and multiply on the GPU.
"""
try:
    import torch as _torch
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError("dropblock.torch needs PyTorch (pip install torch); the rest of the dropblock package "
                      "works without it") from e

import inspect
import struct
from typing import List

if not hasattr(_torch.library, "custom_op") or not hasattr(_torch.compiler, "assume_constant_result"):
    raise ImportError("dropblock.torch needs PyTorch 2.4 or later (torch.library.custom_op); this is torch %s"
                      % _torch.__version__)

from . import _cuda_pool, _shm
from ._core import _METHODS, Client, Error, _invalid, _numpy, _u64  # noqa: F401
from ._cuda_pool import FallbackWarning  # noqa: F401

__all__ = ["DropBlock2d", "DropBlock3d", "FallbackWarning", "close_shared", "cuda_route", "cuda_synchronize",
           "drop_block3d", "dropblock2d", "dropblock3d", "shared_client", "shared_empty"]

_DTYPES = {_torch.float32: "f32", _torch.float16: "f16", _torch.bfloat16: "bf16"}
# by rank: the layouts (channels first, channels last) and the channels-last memory format
_LAYOUTS = {4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}
_CL_FORMAT = {4: _torch.channels_last, 5: _torch.channels_last_3d}
_M64 = (1 << 64) - 1
# training calls remembered per module for recomputation (torch.utils.checkpoint): tokens of the
# last this many calls, e.g. the micro-batches of one gradient-accumulation step
_REPLAY = 1024
# DropBlock2d's counter (int64): next stream, stream_step, ring head, ring fill, then the ring's
# tokens and their streams
_NEXT, _STEP, _HEAD, _FILL, _RING = 0, 1, 2, 3, 4
_STATE_LEN = _RING + 2 * _REPLAY


def _i64(v):
    """The int64 with the bits of the u64 v (tensors hold seeds and streams so)."""
    v &= _M64
    return v - (1 << 64) if v >> 63 else v


@_torch.compiler.assume_constant_result
def _key_for(client):
    # run, not traced, under torch.compile (key_for takes a lock): its string is a constant
    return _shm.key_for(client)


def _target_of(client=None, socket=None, local=False):
    if client is not None:
        return _key_for(client)
    return "local" if local else (socket or "")


def shared_client(socket=None, local=False):
    """This process's connection to `socket` (None: the default socket), or its local engine:
    the one every DropBlock2d and dropblock2d call without a client of its own uses."""
    return _shm.client_for(_target_of(socket=None if socket is None else str(socket), local=local))


def close_shared():
    """Closes the process's shared connections and gives back the free memory of every pool,
    those of clients given to modules included (a client's close() completes once no memory of
    it is held: its pool's free blocks are); the next call opens a new connection. CUDA: waits
    for the submitted jobs and gives back the device memory, semaphores and pinned memory."""
    try:
        _cuda_pool.close_all()
    finally:
        _shm.close_shared()


def cuda_synchronize():
    """Waits for every DropBlock job submitted for CUDA tensors (they run ordered by semaphores,
    the host does not wait for them) and raises the first that failed. A failure is raised by
    the next call on its route otherwise."""
    _cuda_pool.synchronize()


def cuda_route(x, client=None, socket=None, local=False, device="auto"):
    """How CUDA tensors on x's GPU reach the connection (client, else the shared one for socket
    or local): a dict with "path" ("device": the daemon's device with the GPU's UUID, its
    "device" id and "ordering", "semaphore" or "synchronous"; "host": the fallback, and its
    "reason") and the pool's counters."""
    if x.device.type != "cuda":
        raise _invalid("cuda_route: a CUDA (or ROCm) tensor, not one on %s" % x.device)
    c = client if client is not None else shared_client(socket, local)
    env = _cuda_pool.default_env()
    return _cuda_pool.route_for(c, env.device_index(x), device, env).describe()


def _pool_tensor(client, size, dtype, channels_last=False):
    """A tensor of `size` in client's pooled memory (size is logical NC... when channels_last:
    stored N...C, i.e. channels_last or channels_last_3d)."""
    size = tuple(int(s) for s in size)
    phys = (size[0],) + size[2:] + (size[1],) if channels_last else size
    numel = 1
    for s in size:
        numel *= s
    raw = _shm.pool_for(client).take(numel * _torch.empty((), dtype=dtype).element_size())
    t = _torch.from_numpy(raw).view(dtype).view(phys)
    return _from_nhwc(t, channels_last)


def shared_empty(size, dtype=_torch.float32, memory_format=_torch.contiguous_format, client=None):
    """An uninitialized CPU tensor in shared memory the daemon reads in place (from the client's
    pool; the process's default connection when client is None), so a DropBlock2d or DropBlock3d
    call on it makes no copy. memory_format: contiguous_format, channels_last (4-D) or
    channels_last_3d (5-D). The memory goes back to the pool when the tensor and its views are
    gone."""
    c = client if client is not None else shared_client()
    cl = memory_format in (_torch.channels_last, _torch.channels_last_3d)
    if cl and _CL_FORMAT.get(len(size)) != memory_format:
        raise _invalid("%s needs a %d-D size, not %r" % (str(memory_format).replace("torch.", ""),
                                                         4 if memory_format == _torch.channels_last else 5,
                                                         tuple(size)))
    if not c.is_remote:  # the local engine reads any memory
        return _torch.empty(tuple(size), dtype=dtype, memory_format=memory_format)
    return _pool_tensor(c, size, dtype, cl)


# ---- the ops ------------------------------------------------------------------------------

def _check(x, compat, layout=None):
    """x's dtype and rank (4-D: DropBlock2D, 5-D: DropBlock3D), and the layout for that rank."""
    if x.dtype not in _DTYPES and x.dtype != _torch.float64:
        raise _invalid("tensor dtype %s: must be float32, float16, bfloat16 or float64" % x.dtype)
    if x.dim() not in _LAYOUTS:
        raise _invalid("tensor of shape %s: must be 4-D (DropBlock2D) or 5-D (DropBlock3D)" % (tuple(x.shape),))
    if layout is not None and layout.upper() not in _LAYOUTS[x.dim()]:
        raise _invalid("layout %r for a %d-D tensor: must be %s" % (layout, x.dim(), " or ".join(_LAYOUTS[x.dim()])))
    if x.dim() == 5 and compat != "none":
        raise _invalid("compat %r: DropBlock3D has none (keras-cv has no 3-D layer)" % compat)
    if x.dtype == _torch.float64 and compat != "none":
        raise _invalid("float64 with compat %r: float64 follows the canonical semantics only (compat none)" % compat)


def _channels_last(x, layout):
    """Whether y is made channels_last: a channels-first request (NCHW, NCDHW) on a channels_last
    (channels_last_3d) tensor, run on its N...C bytes as they are. The fake and the real
    implementations agree through this."""
    fmt = _CL_FORMAT.get(x.dim())
    return (fmt is not None and layout.upper() == _LAYOUTS[x.dim()][0] and not x.is_contiguous()
            and x.is_contiguous(memory_format=fmt))


def _np(t):
    """A NumPy view of a contiguous CPU tensor (bfloat16 bits as uint16)."""
    t = t.detach()
    if t.dtype == _torch.bfloat16:
        return t.view(_torch.int16).numpy().view(_numpy().uint16)
    return t.numpy()


def _in_shared(client, t):
    """Whether t's bytes lie in memory of this connection (the daemon reads them in place)."""
    contains = getattr(getattr(client, "_h", None), "contains", None)
    return contains is not None and contains(_np(t))


def _nhwc(t, cl):
    """The channels-last tensor t (logical N, C, ...) as its physical N, ..., C view."""
    return t.permute(0, *range(2, t.dim()), 1) if cl else t


def _from_nhwc(t, cl):
    """The inverse of _nhwc."""
    return t.permute(0, t.dim() - 1, *range(1, t.dim() - 1)) if cl else t


def _kw(x, rate, seed, stream, block, normalize, share, compat, device):
    kw = dict(rate=float(rate.item()), block_size=tuple(int(b) for b in block), seed=int(seed.item()) & _M64,
              stream=int(stream.item()) & _M64, normalize=normalize, share=share, device=device)
    if x.dim() == 4:  # DropBlock3D has no compat (_check refused one)
        kw["compat"] = compat
    return kw


def _job(client, mode, x):
    """The client's method for mode and x's rank: dropblock2d, backward, dropblock3d, backward3d."""
    return getattr(client, _METHODS[mode, x.dim()])


def _run(mode, x, rate, seed, stream, block, layout, normalize, share, compat, target, device):
    _check(x, compat, layout)
    if x.device.type == "cuda":  # the dispatcher sends CUDA tensors to _run_cuda; a direct call too
        return _run_cuda(mode, x, rate, seed, stream, block, layout, normalize, share, compat, target, device)
    if x.device.type != "cpu":
        raise _invalid("tensor on %s: dropblock.torch takes CPU and CUDA (or ROCm) tensors (move it with .cpu())"
                       % x.device)
    client = _shm.client_for(target)
    kw = _kw(x, rate, seed, stream, block, normalize, share, compat, device)
    if x.dtype == _torch.float64:
        return _run_f64(client, x, layout.upper(), kw)
    cl = _channels_last(x, layout)
    fmt = _CL_FORMAT[x.dim()] if cl else _torch.contiguous_format
    if client.is_remote:
        y = _pool_tensor(client, x.shape, x.dtype, cl)
    else:
        y = _torch.empty_like(x, memory_format=fmt)
    xp, yp = _nhwc(x, cl), _nhwc(y, cl)
    src = xp
    if not xp.is_contiguous() or (client.is_remote and not _in_shared(client, xp)):
        # the one copy, into y's shared memory; the job runs in place. NumPy's copy runs on this
        # thread: torch's copy_ left its intra-op threads spinning, which took the cores from
        # the daemon's job that follows (copy + job 27 ms with copy_, 15 ms with NumPy's, at
        # 16x256x56x56 f32 on 2 cores)
        _numpy().copyto(_np(yp), _np(xp))
        src = yp
    _job(client, mode, x)(_np(src), out=_np(yp), layout=_LAYOUTS[x.dim()][1] if cl else layout.upper(),
                          dtype=_DTYPES[x.dtype], **kw)
    return y


def _run_cuda(mode, x, rate, seed, stream, block, layout, normalize, share, compat, target, device, env=None):
    """The ops' CUDA (and ROCm) kernel: dropblock._cuda_pool's device path or its fallback;
    float64 through _run_f64 (the mask from the engine, the product on the GPU)."""
    _check(x, compat, layout)
    client = _shm.client_for(target)
    kw = _kw(x, rate, seed, stream, block, normalize, share, compat, device)
    if x.dtype == _torch.float64:
        return _run_f64(client, x, layout.upper(), kw)
    return _cuda_pool.run(mode, x, kw, client, layout.upper(), _channels_last(x, layout), env)


def _run_f64(client, x, layout, kw):
    """docs/semantics.md, "float64": the engine's mask (a bf16 job in place on scratch memory:
    the mask does not depend on x), scale = S/K rounded once to float64, y = (x * scale) * m.
    On a GPU the mask goes up as one byte per element and the product runs there. 4-D and 5-D."""
    np = _numpy()
    rank = x.dim()
    first, last = _LAYOUTS[rank]
    cl = layout == last  # the tensor is N...C
    n, c = x.shape[0], x.shape[-1] if cl else x.shape[1]
    logical = (n, c) + tuple(x.shape[1:-1] if cl else x.shape[2:])  # N, C, (D,) H, W
    numel = 1
    for s in logical:
        numel *= s
    if client.is_remote:
        scratch = _shm.pool_for(client).take(2 * numel).view(np.uint16).reshape(logical)
    else:
        scratch = np.empty(logical, np.uint16)
    # validates the request as for every dtype, and exports the mask
    _, mask = _job(client, "forward", x)(scratch, out=scratch, layout=first, dtype="bf16", mask=True, **kw)
    del scratch
    y = _torch.empty_like(x, memory_format=_CL_FORMAT[rank] if _channels_last(x, layout)
                          else _torch.contiguous_format)
    if struct.unpack("<f", struct.pack("<f", kw["rate"]))[0] == 0.0:
        y.copy_(x)  # rate 0 (as float32) is the identity, bits and all, as for the other dtypes
        return y
    keep = _torch.from_numpy(np.unpackbits(mask, count=numel, bitorder="little")).view(logical)
    kept = keep.view(n, -1).sum(1, dtype=_torch.int64).tolist()
    if kw["normalize"] == "none":
        scales = [1.0] * n
    elif kw["normalize"] == "global":
        k = sum(kept)
        scales = [0.0 if k == 0 else numel / k] * n  # int / int: correctly rounded
    else:
        scales = [0.0 if k == 0 else (numel // n) / k for k in kept]
    m = _nhwc(keep.to(x.device).to(_torch.float64), cl)
    _torch.mul(x, _torch.tensor(scales, dtype=_torch.float64).view((n,) + (1,) * (rank - 1)).to(x.device), out=y)
    y.mul_(m)
    return y


def _fake(x, rate, seed, stream, block, layout, normalize, share, compat, target, device):
    _check(x, compat, layout)
    fmt = _CL_FORMAT[x.dim()] if _channels_last(x, layout) else _torch.contiguous_format
    return _torch.empty_like(x, memory_format=fmt)


# the ops call the daemon from the host: a CUDA graph must not capture them (inductor's
# cudagraph trees run them outside the graphs)
_TAGS = {"tags": (_torch.Tag.cudagraph_unsafe,)} if hasattr(_torch.Tag, "cudagraph_unsafe") and \
    "tags" in inspect.signature(_torch.library.custom_op).parameters else {}


@_torch.library.custom_op("dropblock::dropblock2d", mutates_args=(), **_TAGS)
def _op_forward(x: _torch.Tensor, rate: _torch.Tensor, seed: _torch.Tensor, stream: _torch.Tensor,
                block: List[int], layout: str, normalize: str, share: str, compat: str, target: str,
                device: str) -> _torch.Tensor:
    """DropBlock2D of x (docs/semantics.md); rate float64, seed and stream int64 (the u64's bits)
    one-element tensors. A 5-D x is DropBlock3D: block [BD, BH, BW], layout NCDHW or NDHWC."""
    return _run("forward", x, rate, seed, stream, block, layout, normalize, share, compat, target, device)


@_torch.library.custom_op("dropblock::dropblock2d_backward", mutates_args=(), **_TAGS)
def _op_backward(dy: _torch.Tensor, rate: _torch.Tensor, seed: _torch.Tensor, stream: _torch.Tensor,
                 block: List[int], layout: str, normalize: str, share: str, compat: str, target: str,
                 device: str) -> _torch.Tensor:
    """The forward's mask and scale applied to dy."""
    return _run("backward", dy, rate, seed, stream, block, layout, normalize, share, compat, target, device)


_op_forward.register_fake(_fake)
_op_backward.register_fake(_fake)


@_op_forward.register_kernel("cuda")
def _(x, rate, seed, stream, block, layout, normalize, share, compat, target, device):
    return _run_cuda("forward", x, rate, seed, stream, block, layout, normalize, share, compat, target, device)


@_op_backward.register_kernel("cuda")
def _(dy, rate, seed, stream, block, layout, normalize, share, compat, target, device):
    return _run_cuda("backward", dy, rate, seed, stream, block, layout, normalize, share, compat, target, device)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:4])
    ctx.args = inputs[4:]


def _grad(ctx, g):
    # y = x * scale * m is linear: both ops' gradient is the backward op on the incoming gradient
    rate, seed, stream = ctx.saved_tensors
    return (_torch.ops.dropblock.dropblock2d_backward(g, rate, seed, stream, *ctx.args),) + (None,) * 10


_op_forward.register_autograd(_grad, setup_context=_setup)
_op_backward.register_autograd(_grad, setup_context=_setup)


@_torch.library.custom_op("dropblock::next_stream", mutates_args=("state",), **_TAGS)
def _op_next_stream(state: _torch.Tensor, token: _torch.Tensor) -> _torch.Tensor:
    """The stream of this training call (int64 0-d) from a DropBlock2d's counter: the next one,
    which advances the counter, unless token (two int64 words from torch's generator) is a
    recent call's: then that call's stream. A recomputation under torch.utils.checkpoint draws
    the same token (checkpoint restores the generator in eager mode, and the compiled graph's
    partitioner replays the random op's state), so it gets its first run's stream."""
    if state.dtype != _torch.int64 or state.shape != (_STATE_LEN,):
        raise _invalid("next_stream: state must be int64 of shape (%d,)" % _STATE_LEN)
    np = _numpy()
    hi, lo = token.tolist()
    tok = _i64((hi << 32) | lo)
    host = state if state.device.type == "cpu" else state.cpu()
    s = host.numpy()
    fill = int(s[_FILL])
    hits = np.flatnonzero(s[_RING:_RING + fill] == tok)
    if hits.size:
        stream = int(s[_RING + _REPLAY + hits[-1]])
    else:
        stream = int(s[_NEXT])
        s[_NEXT] = _i64(stream + int(s[_STEP]))
        head = int(s[_HEAD])
        s[_RING + head], s[_RING + _REPLAY + head] = tok, stream
        s[_HEAD], s[_FILL] = (head + 1) % _REPLAY, min(fill + 1, _REPLAY)
    if host is not state:
        state.copy_(host)
    return _torch.tensor(stream, dtype=_torch.int64, device=state.device)


@_op_next_stream.register_fake
def _(state, token):
    return state.new_empty(())


def _scalar(v, dtype, what):
    if isinstance(v, _torch.Tensor):
        return v
    if dtype == _torch.float64:
        return _torch.tensor([float(v)], dtype=dtype)
    return _torch.tensor([_i64(_u64(v, what))], dtype=dtype)


def _block_list(block_size, rank=4):
    """[BH, BW] (rank 4) or [BD, BH, BW] (rank 5) from B or a tuple."""
    n = rank - 2
    if isinstance(block_size, (tuple, list)):
        if len(block_size) != n:
            raise _invalid("block_size %r: must be B or %s" % (block_size, "(BH, BW)" if n == 2 else "(BD, BH, BW)"))
        return [int(b) for b in block_size]
    return [int(block_size)] * n


def _share_text(share):
    return share if isinstance(share, str) else ",".join(share)


def _rank_check(x, rank, name):
    # torch.fx traces with Proxies, whose dim() is a node, not a number: the op checks them at run time
    if isinstance(x, _torch.Tensor) and x.dim() != rank:
        other = {4: "dropblock3d/DropBlock3d takes 5-D ones", 5: "dropblock2d/DropBlock2d takes 4-D ones"}[rank]
        raise _invalid("%s takes %d-D tensors, not one of shape %s (%s)" % (name, rank, tuple(x.shape), other))


def _functional(name, rank, x, rate, block_size, seed, stream, layout, normalize, share, compat, client, device):
    """dropblock2d, dropblock3d and drop_block3d: the one op for both ranks."""
    _rank_check(x, rank, name)
    return _torch.ops.dropblock.dropblock2d(
        x, _scalar(rate, _torch.float64, "rate"), _scalar(seed, _torch.int64, "seed"),
        _scalar(stream, _torch.int64, "stream"), _block_list(block_size, rank), str(layout).upper(), normalize,
        _share_text(share), compat, _target_of(client), device)


def dropblock2d(x, rate, block_size, seed=0, stream=0, layout="NCHW", normalize="global", share=(),
                compat="none", training=True, client=None, device="auto"):
    """Functional form: DropBlock2D of x (CPU or CUDA) with autograd support (the identity when
    training is False). rate, seed and stream: numbers, or one-element tensors (float64 rate,
    int64 seed and stream holding the u64's bits), which a compiled graph takes as data instead
    of guarding on their values (shape (1,): Dynamo re-analyses 0-d tensor inputs as scalars).
    client: a dropblock.Client (None: the process's shared connection to the default socket).
    5-D tensors: dropblock3d."""
    if not training:
        return x
    return _functional("dropblock2d", 4, x, rate, block_size, seed, stream, layout, normalize, share, compat,
                       client, device)


def dropblock3d(x, rate, block_size, seed=0, stream=0, layout="NCDHW", normalize="global", share=(),
                training=True, client=None, device="auto"):
    """Functional form: DropBlock3D of the 5-D x, (N, C, D, H, W) for layout "NCDHW" (also a
    channels_last_3d tensor, run on its NDHWC bytes) or (N, D, H, W, C) for "NDHWC", with autograd
    support; block_size B (a cube) or (BD, BH, BW). The other arguments as for dropblock2d (no
    compat: keras-cv has no 3-D layer). Same op as dropblock2d (torch.ops.dropblock.dropblock2d
    on a 5-D tensor), and its D = 1 case bit for bit. drop_block3d takes torchvision's arguments."""
    if not training:
        return x
    return _functional("dropblock3d", 5, x, rate, block_size, seed, stream, layout, normalize, share, "none",
                       client, device)


def drop_block3d(input, p, block_size, inplace=False, eps=1e-06, training=True, *, seed=None, stream=0,
                 layout="NCDHW", normalize="global", share=(), client=None, device="auto"):
    """torchvision.ops.drop_block3d's arguments on dropblock3d: p is the rate, block_size B or
    (BD, BH, BW) (any size: even ones and ones larger than the volume are taken, clamped, where
    torchvision raises or clips), training False (or p = 0) the identity. inplace=True writes
    the result into input and returns it. eps is accepted for torchvision's signature and has
    no effect: the scale is the exact S/K (0 where everything is dropped, as torchvision's
    numel/(0 + eps) * 0 gives), not numel/(K + eps). seed None (the default) draws a new 64-bit seed from
    torch's default generator at each call, like torchvision's global RNG (torch.manual_seed
    reproduces it; a compiled graph draws it as a random op); a seed given is used with
    stream as in dropblock3d."""
    _inplace_check(inplace)
    _eps_check(eps)
    if not training:
        return input
    if seed is None:  # drawn from input (like_) so that torch.fx records the draw
        seed = _torch.randint_like(input.new_empty((1,), dtype=_torch.int64), -(1 << 63), (1 << 63) - 1)
    y = _functional("drop_block3d", 5, input, p, block_size, seed, stream, layout, normalize, share, "none",
                    client, device)
    return input.copy_(y) if inplace else y


def _inplace_check(inplace):
    # a bool only: DropBlock3d(0.1, 3, 1234) meaning a seed must not silently run in place
    if not isinstance(inplace, bool):
        raise _invalid("inplace %r: must be True or False (torchvision's third argument; seed= is a keyword)"
                       % (inplace,))


def _eps_check(eps):
    if isinstance(eps, bool):
        eps = None
    try:
        ok = float(eps) >= 0.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise _invalid("eps %r: must be a number >= 0 (torchvision's; it has no effect here)" % (eps,))


class _DropBlockNd(_torch.nn.Module):
    """What DropBlock2d and DropBlock3d share: everything but the rank (_RANK) and its layouts."""

    _RANK = 4
    inplace = False  # class defaults for modules pickled before these existed
    eps = 1e-06

    def _init(self, rate, block_size, seed, layout, normalize, share, compat, client, socket, stream, stream_step,
              local, device, p, inplace, eps):
        if p is not None:  # torchvision's name for the rate
            if rate is not None:
                raise _invalid("rate %r and p %r: give one (p is torchvision's name for the rate)" % (rate, p))
            rate = p
        if rate is None or block_size is None:
            raise _invalid("%s needs a rate (or p) and a block_size" % type(self).__name__)
        layouts = _LAYOUTS[self._RANK]
        if str(layout).upper() not in layouts:
            raise _invalid("layout %r: must be %s" % (layout, " or ".join(layouts)))
        _inplace_check(inplace)
        _eps_check(eps)
        _block_list(block_size, self._RANK)  # its form, checked now
        self._make_buffers()
        self.rate = rate
        self.block_size = tuple(block_size) if isinstance(block_size, (tuple, list)) else block_size
        self.seed_drawn = seed is None
        self.seed = _draw_u64() if seed is None else seed
        self.layout = str(layout).upper()
        self.normalize = normalize
        self.share = share if isinstance(share, str) else tuple(share)
        self.compat = compat
        self.stream = stream
        self.stream_step = stream_step
        self.device_id = device
        self.socket = socket
        self.local = local
        self.inplace = inplace
        self.eps = float(eps)
        if client is not None:  # where a copy of the module connects to
            self.socket, self.local = client.socket, not client.is_remote
        self._client = client
        self._target = _target_of(client, self.socket, self.local)

    def _make_buffers(self):
        # tensors, not Python numbers, so compiled graphs take them as data (no recompilation
        # when they change); of shape (1,): Dynamo reads 0-d buffers as Python scalars and
        # restarts its analysis to specialize them
        self.register_buffer("_rate", _torch.zeros(1, dtype=_torch.float64), persistent=False)
        self.register_buffer("_seed", _torch.zeros(1, dtype=_torch.int64), persistent=False)  # u64 bits
        self.register_buffer("_streams", _torch.zeros(_STATE_LEN, dtype=_torch.int64), persistent=False)

    def _apply(self, fn, *args, **kwargs):
        # model.half() or .to(dtype) convert floating buffers: the rate stays float64, unrounded
        rate = self.rate
        out = super()._apply(fn, *args, **kwargs)
        if self._rate.dtype != _torch.float64:
            self._rate = _torch.tensor([rate], dtype=_torch.float64, device=self._rate.device)
        return out

    @property
    def rate(self):
        return self._rate.item()

    @rate.setter
    def rate(self, value):
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise _invalid("rate %r: must be in [0, 1]" % value)
        self._rate.fill_(value)

    @property
    def seed(self):
        return int(self._seed.item()) & _M64

    @seed.setter
    def seed(self, value):
        self._seed.fill_(_i64(_u64(value, "seed")))

    @property
    def stream(self):
        """The stream of the next training call."""
        return int(self._streams[_NEXT].item()) & _M64

    @stream.setter
    def stream(self, value):
        self._streams[_NEXT] = _i64(_u64(value, "stream"))

    @property
    def stream_step(self):
        return int(self._streams[_STEP].item()) & _M64

    @stream_step.setter
    def stream_step(self, value):
        self._streams[_STEP] = _i64(_u64(value, "stream_step"))

    @property
    def client(self):
        """The dropblock.Client in use (the process's shared one unless one was given)."""
        if self._client is not None and not self._client.closed:
            return self._client
        return _shm.client_for(_target_of(None, self.socket, self.local))

    def forward(self, x):
        if not self.training:
            return x
        _rank_check(x, self._RANK, type(self).__name__)
        # the token is drawn from x (new_empty) so that torch.fx records the draw: buffers are
        # not traced values there, and a draw on constants would be made once at trace time
        token = _torch.randint_like(x.new_empty((2,), dtype=_torch.int64), 0, 1 << 32)
        stream = _torch.ops.dropblock.next_stream(self._streams, token)
        y = _torch.ops.dropblock.dropblock2d(
            x, self._rate, self._seed, stream, _block_list(self.block_size, self._RANK), self.layout,
            self.normalize, _share_text(self.share), self.compat, self._target, self.device_id)
        return x.copy_(y) if self.inplace else y

    def get_extra_state(self):
        state = {"stream": self.stream}
        if self.seed_drawn:
            state["seed"] = self.seed
        return state

    def set_extra_state(self, state):
        self.stream = state["stream"]
        if self.seed_drawn and "seed" in state:  # an explicit seed stays as given
            self.seed = state["seed"]
        self._streams[_HEAD] = self._streams[_FILL] = 0  # forget the replay tokens

    def __getstate__(self):
        # a connection cannot be copied or pickled: a copy uses its process's shared connection
        # to the same socket (or local engine)
        state = self.__dict__.copy()
        state["_client"] = None
        state["_target"] = _target_of(None, self.socket, self.local)
        return state

    def __setstate__(self, state):
        # modules pickled before the counters were tensors kept them as attributes
        old = {k: state.pop(k) for k in ("rate", "seed", "stream", "stream_step") if k in state}
        state.pop("_replay", None)
        state.setdefault("seed_drawn", False)
        state.setdefault("_target", _target_of(None, state.get("socket"), state.get("local", False)))
        super().__setstate__(state)
        if "_streams" not in self._buffers:
            self._make_buffers()
            self.stream_step = 1
            for k, v in old.items():
                setattr(self, k, v)

    def extra_repr(self):
        return "rate=%g, block_size=%r, seed=%d, layout=%s, normalize=%s, stream=%d%s" % (
            self.rate, self.block_size, self.seed, self.layout, self.normalize, self.stream,
            ", inplace=True" if self.inplace else "")


class DropBlock2d(_DropBlockNd):
    """DropBlock2D (Ghiasi et al. 2018) run by dropblockd, bit-exact with docs/semantics.md.

    rate, block_size (B or (BH, BW)), layout ("NCHW": (N, C, H, W) tensors, also channels_last
    ones; "NHWC": (N, H, W, C) tensors), normalize, share, compat: as in
    dropblock.Client.dropblock2d. client: a dropblock.Client to use; else the process's shared
    connection to `socket` (None: the default socket), or its local engine with local=True.

    seed: None (the default) draws a 64-bit seed from torch's default generator when the layer is
    built, so torch.manual_seed before building the model sets and reproduces it, and layers of
    the same shape drop different masks; the drawn seed is saved in the state dict. An explicit
    seed (0 ... 2^64-1) is used as given. `module.seed` is the seed in use.

    The k-th training-mode call (k = 0, 1, ...) uses stream `stream + k * stream_step`; with DDP or
    Horovod pass stream=rank, stream_step=world_size so every rank draws its own masks. The next
    stream is `module.stream`, saved in the state dict. eval(): the identity (the input itself).
    Under torch.utils.checkpoint the recomputed forward reuses its first run's stream (it draws
    the same token from torch's generator, which checkpoint restores), so it does not count as a
    call. Set `module.rate` to change the rate (e.g. from dropblock.schedule_rate): rate, seed and
    the counter are tensors (non-persistent buffers), so a compiled model is not recompiled.

    torchvision's keywords: p (the rate), inplace (True: the result is written into x, which is
    returned), eps (accepted, no effect: the scale is the exact S/K)."""

    _RANK = 4

    def __init__(self, rate=None, block_size=None, seed=None, layout="NCHW", normalize="global", share=(),
                 compat="none", client=None, socket=None, stream=0, stream_step=1, local=False, device="auto", *,
                 p=None, inplace=False, eps=1e-06):
        super().__init__()
        self._init(rate, block_size, seed, layout, normalize, share, compat, client, socket, stream, stream_step,
                   local, device, p, inplace, eps)


class DropBlock3d(_DropBlockNd):
    """DropBlock3D run by dropblockd (torchvision's DropBlock3d; docs/semantics.md), DropBlock2d on
    5-D tensors, with DropBlock2d as its D = 1 case bit for bit.

    DropBlock3d(p, block_size) as torchvision's (rate may be given as p; block_size B, a cube, or
    (BD, BH, BW), each clamped to the volume: no odd-size rule). layout "NCDHW": (N, C, D, H, W)
    tensors, also channels_last_3d ones (run on their NDHWC bytes, y channels_last_3d); "NDHWC":
    (N, D, H, W, C) tensors. inplace=True writes the result into x and returns x. eps is taken for
    torchvision's signature and has no effect (the scale is the exact S/K). Seeds, streams,
    eval(), checkpoint, torch.compile, state dicts, client/socket/local and device: as for
    DropBlock2d, on the same op (torch.ops.dropblock.dropblock2d with a 5-D x). No compat mode."""

    _RANK = 5

    def __init__(self, rate=None, block_size=None, inplace=False, eps=1e-06, *, p=None, seed=None,
                 layout="NCDHW", normalize="global", share=(), client=None, socket=None, stream=0, stream_step=1,
                 local=False, device="auto"):
        super().__init__()
        self._init(rate, block_size, seed, layout, normalize, share, "none", client, socket, stream, stream_step,
                   local, device, p, inplace, eps)


def _draw_u64():
    """64 random bits from torch's default CPU generator (what torch.manual_seed sets)."""
    hi, lo = _torch.randint(0, 1 << 32, (2,), dtype=_torch.int64).tolist()
    return (hi << 32) | lo
