"""dropblock.keras: DropBlock2D as a Keras 3 layer, a drop-in for keras_cv.layers.DropBlock2D.

    from dropblock.keras import DropBlock2D
    x = DropBlock2D(rate=0.1, block_size=7, seed=1234)(x, training=True)   # (N, H, W, C) tensors

The layer keeps keras-cv's generator exactly: a keras.random.SeedGenerator(seed) whose state
[seed, k] moves by [0, 1] with every call in training (a variable of the layer, saved with it), so
swapping it into a model that used keras_cv.layers.DropBlock2D (keras-cv 0.8 and later, Keras 3)
gives the same outputs bit for bit on the TensorFlow backend: each call is dropblockd's
compat "keras3" job with seed and stream = the state's two numbers (docs/semantics.md,
"compat keras3"). On the JAX and PyTorch backends keras-cv draws its noise from those backends'
generators, which this layer does not imitate: it gives the TensorFlow backend's bits there too
(the same on every backend). The gradient is the same mask and divisor applied to dy (the job in
backward mode) on each backend.

Tensors go to the engine through host memory: the process's shared connection to the default
socket (dropblock.torch's), or client=, a dropblock.Client (Client(local=True): the in-process
engine, no daemon). The layer runs inside compiled graphs (tf.function through
tf.numpy_function, jax.jit through jax.pure_callback, torch through dropblock.torch's custom op)
but not on accelerators' memory directly. keras, and the backend's framework, are needed only
when this module is imported."""
import keras

from . import _shm
from ._core import Client, _invalid

__all__ = ["DropBlock2D"]

_M64 = (1 << 64) - 1
_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def _engine(client, x, state, rate, block, mode):
    """The compat keras3 job on NumPy x (N, H, W, C) for the generator state [seed, call]."""
    np = __import__("numpy")
    dt = _DTYPES.get(str(x.dtype))
    if dt is None:
        raise _invalid("DropBlock2D: dtype %s; float32, float16 or bfloat16" % x.dtype)
    state = np.asarray(state).reshape(-1)
    seed, call = int(state[0]) & _M64, int(state[1]) & _M64
    xin = np.ascontiguousarray(x)
    if dt == "bf16":
        xin = xin.view(np.uint16)
    run = client.dropblock2d if mode == "forward" else client.backward
    y = run(xin, rate, block, seed=seed, stream=call, layout="NHWC", compat="keras3", dtype=dt)
    return np.asarray(y).view(x.dtype) if dt == "bf16" else np.asarray(y)


def _tensorflow_op(layer, x, state):
    import tensorflow as tf

    def run(mode):
        def f(v, s):
            return _engine(layer._client(), v, s, layer.rate, layer.block_size, mode)
        return f

    @tf.custom_gradient
    def op(v):
        y = tf.numpy_function(run("forward"), [v, state], v.dtype, stateful=False)
        y.set_shape(v.shape)

        def grad(dy):
            g = tf.numpy_function(run("backward"), [dy, state], dy.dtype, stateful=False)
            g.set_shape(dy.shape)
            return g
        return y, grad
    return op(x)


def _jax_op(layer, x, state):
    import jax

    def call(mode, v, s):
        out = jax.ShapeDtypeStruct(v.shape, v.dtype)
        return jax.pure_callback(
            lambda a, b: _engine(layer._client(), a, b, layer.rate, layer.block_size, mode), out, v, s)

    @jax.custom_vjp
    def op(v, s):
        return call("forward", v, s)

    def fwd(v, s):
        return call("forward", v, s), s

    def bwd(s, dy):
        return call("backward", dy, s), None

    op.defvjp(fwd, bwd)
    return op(x, state)


def _torch_op(layer, x, state):
    import torch

    from . import torch as dbt
    s = state.to(torch.int64).reshape(-1)
    return dbt.dropblock2d(x, float(layer.rate), layer.block_size, seed=s[:1], stream=s[1:2], layout="NHWC",
                           compat="keras3", client=layer._client())


_OPS = {"tensorflow": _tensorflow_op, "jax": _jax_op, "torch": _torch_op}


@keras.saving.register_keras_serializable(package="dropblock")
class DropBlock2D(keras.layers.Layer):
    """DropBlock2D(rate, block_size, seed=None): keras_cv.layers.DropBlock2D's arguments and
    generator (see the module's doc). rate in [0, 1]; block_size B or (BH, BW); seed: an int
    (None: Keras draws one, as keras-cv does). Inputs (N, H, W, C). client: a dropblock.Client
    (not saved with the layer; None: the shared connection to the default socket)."""

    def __init__(self, rate, block_size, seed=None, client=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be a number between 0 and 1. Received: %s" % (rate,))
        if isinstance(block_size, int):
            block_size = (block_size, block_size)
        block_size = tuple(int(b) for b in block_size)
        if len(block_size) != 2 or min(block_size) < 1:
            raise ValueError("block_size: B or (BH, BW), each >= 1. Received: %s" % (block_size,))
        if client is not None and not isinstance(client, Client):
            raise _invalid("client: a dropblock.Client or None")
        self.rate, self.block_size, self.seed = float(rate), block_size, seed
        self._db_client = client
        self._random_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def _client(self):
        c = self._db_client
        return c if c is not None and not c.closed else _shm.client_for("")

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        if len(x.shape) != 4:
            raise ValueError("DropBlock2D takes (N, H, W, C) inputs; got shape %s" % (x.shape,))
        state = self._random_generator.next()  # [seed, call], then [seed, call + 1], as keras-cv
        backend = keras.backend.backend()
        if backend not in _OPS:
            raise _invalid("DropBlock2D: Keras backend %r; tensorflow, jax or torch" % backend)
        return _OPS[backend](self, x, state)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "block_size": self.block_size, "seed": self.seed})
        return config

