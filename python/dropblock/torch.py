"""dropblock.torch: DropBlock2D as a PyTorch module, run by dropblockd (or the local engine).

    from dropblock.torch import DropBlock2d
    drop = DropBlock2d(0.1, 7, seed=1234)        # connects to the default socket on first use
    y = drop(x)                                  # training: a new mask per call; eval: y is x

Forward and backward both go through the engine: the backward pass regenerates the forward's
mask from (seed, stream) with mode "backward", so nothing but the stream number is kept for it.

Seeds: a DropBlock2d built without a seed draws one from torch's default generator, so
torch.manual_seed before building the model sets (and reproduces) every layer's masks, and two
layers of the same shape drop different masks; an explicit seed gives exactly the masks of
(seed, stream + k * stream_step) at the k-th call, whatever torch's generator holds.
torch.utils.checkpoint (use_reentrant True or False) runs a forward again during backward: each
training call draws a token from torch's generator, which checkpoint saves and restores, and a
call that draws the token of a recent call reuses that call's stream instead of taking the next,
so the recomputed forward has the first one's mask and the gradients are those of a run without
checkpointing.
Tensors must be on the CPU, float32, float16 or bfloat16; channels_last tensors in layout "NCHW"
run as NHWC without a copy. Needs NumPy as well.
"""
try:
    import torch as _torch
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError("dropblock.torch needs PyTorch (pip install torch); the rest of the dropblock package "
                      "works without it") from e

from ._core import Client, Error, _invalid, _numpy, _u64  # noqa: F401

__all__ = ["DropBlock2d", "dropblock2d"]

_DTYPES = {_torch.float32: "f32", _torch.float16: "f16", _torch.bfloat16: "bf16"}


def _as_numpy(t):
    """A NumPy view of a contiguous CPU tensor (bfloat16 bits as uint16)."""
    np = _numpy()
    if t.dtype == _torch.bfloat16:
        return t.view(_torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _apply(client, mode, t, kw):
    if t.device.type != "cpu":
        raise _invalid("tensor on %s: dropblock.torch takes CPU tensors (move it with .cpu())" % t.device)
    if t.dtype not in _DTYPES:
        raise _invalid("tensor dtype %s: must be float32, float16 or bfloat16" % t.dtype)
    if t.dim() != 4:
        raise _invalid("tensor of shape %s: must be 4-D" % (tuple(t.shape),))
    t = t.detach()
    layout = kw["layout"]
    if (layout == "NCHW" and not t.is_contiguous()
            and t.is_contiguous(memory_format=_torch.channels_last)):
        # channels_last: the NHWC bytes as they are
        y = _torch.empty_like(t, memory_format=_torch.channels_last)
        x_np, y_np, layout = _as_numpy(t.permute(0, 2, 3, 1)), _as_numpy(y.permute(0, 2, 3, 1)), "NHWC"
    else:
        t = t.contiguous()
        y = _torch.empty_like(t, memory_format=_torch.contiguous_format)
        x_np, y_np = _as_numpy(t), _as_numpy(y)
    args = dict(kw, layout=layout, out=y_np, dtype=_DTYPES[t.dtype])
    if mode == "forward":
        client.dropblock2d(x_np, **args)
    else:
        client.backward(x_np, **args)
    return y


class _DropBlockFunction(_torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, client, kw):
        ctx.client, ctx.kw = client, kw
        return _apply(client, "forward", x, kw)

    @staticmethod
    def backward(ctx, dy):
        return _Backward.apply(dy, ctx.client, ctx.kw), None, None


class _Backward(_torch.autograd.Function):
    """The backward pass as a function of dy (itself differentiable: the same mask and scale)."""

    @staticmethod
    def forward(ctx, dy, client, kw):
        ctx.client, ctx.kw = client, kw
        return _apply(client, "backward", dy, kw)

    @staticmethod
    def backward(ctx, ddy):
        return _Backward.apply(ddy, ctx.client, ctx.kw), None, None


def dropblock2d(x, rate, block_size, seed=0, stream=0, layout="NCHW", normalize="global", share=(),
                compat="none", training=True, client=None, device="auto"):
    """Functional form: DropBlock2D of the CPU tensor x with autograd support (the identity when
    training is False). client: a dropblock.Client (None: a connection to the default socket,
    opened once per process)."""
    if not training:
        return x
    kw = dict(rate=float(rate), block_size=block_size, seed=_u64(seed, "seed"), stream=_u64(stream, "stream"),
              layout=str(layout).upper(), normalize=normalize, share=tuple(share) if not isinstance(share, str)
              else share, compat=compat, device=device)
    return _DropBlockFunction.apply(x, client if client is not None else _default_client(), kw)


_DEFAULT = None
# training calls remembered per module for recomputation (torch.utils.checkpoint): tokens of the
# last this many calls, e.g. the micro-batches of one gradient-accumulation step
_REPLAY = 1024


def _draw_u64():
    """64 random bits from torch's default CPU generator (what torch.manual_seed sets and
    torch.utils.checkpoint saves and restores)."""
    hi, lo = _torch.randint(0, 1 << 32, (2,), dtype=_torch.int64).tolist()
    return (hi << 32) | lo


def _default_client():
    global _DEFAULT
    import os
    if _DEFAULT is None or _DEFAULT[0] != os.getpid() or _DEFAULT[1].closed:
        _DEFAULT = (os.getpid(), Client())
    return _DEFAULT[1]


class DropBlock2d(_torch.nn.Module):
    """DropBlock2D (Ghiasi et al. 2018) run by dropblockd, bit-exact with docs/semantics.md.

    rate, block_size (B or (BH, BW)), layout ("NCHW": (N, C, H, W) tensors, also channels_last
    ones; "NHWC": (N, H, W, C) tensors), normalize, share, compat: as in
    dropblock.Client.dropblock2d. client: a dropblock.Client to use; else one is opened on first
    use, to `socket` (None: the default socket), or to the in-process engine with local=True.

    seed: None (the default) draws a 64-bit seed from torch's default generator when the layer is
    built, so torch.manual_seed before building the model sets and reproduces it, and layers of
    the same shape drop different masks; the drawn seed is saved in the state dict. An explicit
    seed (0 ... 2^64-1) is used as given. `module.seed` is the seed in use.

    The k-th training-mode call (k = 0, 1, ...) uses stream `stream + k * stream_step`; with DDP or
    Horovod pass stream=rank, stream_step=world_size so every rank draws its own masks. The next
    stream is `module.stream`, saved in the state dict. eval(): the identity (the input itself).
    Under torch.utils.checkpoint the recomputed forward reuses its first run's stream (it draws
    the same token from torch's generator, which checkpoint restores), so it does not count as a
    call. Set `module.rate` to change the rate (e.g. from dropblock.schedule_rate)."""

    def __init__(self, rate, block_size, seed=None, layout="NCHW", normalize="global", share=(), compat="none",
                 client=None, socket=None, stream=0, stream_step=1, local=False, device="auto"):
        super().__init__()
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise _invalid("rate %r: must be in [0, 1]" % rate)
        if str(layout).upper() not in ("NCHW", "NHWC"):
            raise _invalid("layout %r: must be NCHW or NHWC" % (layout,))
        self.rate = rate
        self.block_size = tuple(block_size) if isinstance(block_size, (tuple, list)) else block_size
        self.seed_drawn = seed is None
        self.seed = _draw_u64() if seed is None else _u64(seed, "seed")
        self._replay = {}  # token -> stream of recent training calls (insertion-ordered)
        self.layout = str(layout).upper()
        self.normalize = normalize
        self.share = share if isinstance(share, str) else tuple(share)
        self.compat = compat
        self.stream = _u64(stream, "stream")
        self.stream_step = _u64(stream_step, "stream_step")
        self.device_id = device
        self.socket = socket
        self.local = local
        if client is not None:  # where a copy of the module connects to
            self.socket, self.local = client.socket, not client.is_remote
        self._client = client

    @property
    def client(self):
        """The dropblock.Client in use (opened on first use when none was given)."""
        if self._client is None or self._client.closed:
            self._client = Client(local=True) if self.local else Client(self.socket)
        return self._client

    def forward(self, x):
        if not self.training:
            return x
        token = _draw_u64()
        stream = self._replay.get(token)
        if stream is None:  # a new call, not a recomputation of a recent one
            stream = self.stream
            self.stream = (stream + self.stream_step) & ((1 << 64) - 1)
            self._replay[token] = stream
            if len(self._replay) > _REPLAY:
                del self._replay[next(iter(self._replay))]
        return dropblock2d(x, self.rate, self.block_size, seed=self.seed, stream=stream, layout=self.layout,
                           normalize=self.normalize, share=self.share, compat=self.compat, client=self.client,
                           device=self.device_id)

    def get_extra_state(self):
        state = {"stream": self.stream}
        if self.seed_drawn:
            state["seed"] = self.seed
        return state

    def set_extra_state(self, state):
        self.stream = _u64(state["stream"], "stream")
        if self.seed_drawn and "seed" in state:  # an explicit seed stays as given
            self.seed = _u64(state["seed"], "seed")
        self._replay = {}

    def __getstate__(self):
        # a connection cannot be copied or pickled: a copy opens its own on first use, to the same
        # socket (or a local engine)
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def __setstate__(self, state):
        # modules pickled before seeds were drawn and recomputations replayed
        state.setdefault("seed_drawn", False)
        state.setdefault("_replay", {})
        super().__setstate__(state)

    def extra_repr(self):
        return "rate=%g, block_size=%r, seed=%d, layout=%s, normalize=%s, stream=%d" % (
            self.rate, self.block_size, self.seed, self.layout, self.normalize, self.stream)

