"""dropblock.torch: DropBlock2D as a PyTorch module, run by dropblockd (or the local engine).

    from dropblock.torch import DropBlock2d
    drop = DropBlock2d(0.1, 7, seed=1234)        # connects to the default socket on first use
    y = drop(x)                                  # training: a new mask per call; eval: y is x

Forward and backward both go through the engine: the backward pass regenerates the forward's
mask from (seed, stream) with mode "backward", so nothing but the stream number is kept for it.
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


def _default_client():
    global _DEFAULT
    import os
    if _DEFAULT is None or _DEFAULT[0] != os.getpid() or _DEFAULT[1].closed:
        _DEFAULT = (os.getpid(), Client())
    return _DEFAULT[1]


class DropBlock2d(_torch.nn.Module):
    """DropBlock2D (Ghiasi et al. 2018) run by dropblockd, bit-exact with docs/semantics.md.

    rate, block_size (B or (BH, BW)), seed, layout ("NCHW": (N, C, H, W) tensors, also
    channels_last ones; "NHWC": (N, H, W, C) tensors), normalize, share, compat: as in
    dropblock.Client.dropblock2d. client: a dropblock.Client to use; else one is opened on first
    use, to `socket` (None: the default socket), or to the in-process engine with local=True.

    The k-th training-mode call (k = 0, 1, ...) uses stream `stream + k * stream_step`; with DDP or
    Horovod pass stream=rank, stream_step=world_size so every rank draws its own masks. The next
    stream is `module.stream`, saved in the state dict. eval(): the identity (the input itself).
    Set `module.rate` to change the rate (e.g. from dropblock.schedule_rate)."""

    def __init__(self, rate, block_size, seed=0, layout="NCHW", normalize="global", share=(), compat="none",
                 client=None, socket=None, stream=0, stream_step=1, local=False, device="auto"):
        super().__init__()
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise _invalid("rate %r: must be in [0, 1]" % rate)
        if str(layout).upper() not in ("NCHW", "NHWC"):
            raise _invalid("layout %r: must be NCHW or NHWC" % (layout,))
        self.rate = rate
        self.block_size = tuple(block_size) if isinstance(block_size, (tuple, list)) else block_size
        self.seed = _u64(seed, "seed")
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
        stream = self.stream
        self.stream = (stream + self.stream_step) & ((1 << 64) - 1)
        return dropblock2d(x, self.rate, self.block_size, seed=self.seed, stream=stream, layout=self.layout,
                           normalize=self.normalize, share=self.share, compat=self.compat, client=self.client,
                           device=self.device_id)

    def get_extra_state(self):
        return {"stream": self.stream}

    def set_extra_state(self, state):
        self.stream = _u64(state["stream"], "stream")

    def __getstate__(self):
        # a connection cannot be copied or pickled: a copy opens its own on first use, to the same
        # socket (or a local engine)
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def extra_repr(self):
        return "rate=%g, block_size=%r, seed=%d, layout=%s, normalize=%s, stream=%d" % (
            self.rate, self.block_size, self.seed, self.layout, self.normalize, self.stream)

