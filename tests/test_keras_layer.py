#!/usr/bin/env python3
"""dropblock.keras.DropBlock2D (issue 14 item 4) on each Keras 3 backend that is installed
(tensorflow, jax, torch), each in a child process with KERAS_BACKEND set: over calls of changing
sizes the layer's outputs equal dropblockd's compat keras3 job with the generator's state (seed,
call k) bit for bit; training=False and rate 0 are the identity; the gradient of sum(y * w) is the
job in backward mode on w; it runs compiled (tf.function / jax.jit) and in model.fit; its config
round-trips and the generator state is a variable of the layer (saved with it); seed=None draws a
seed as Keras does. Where keras-cv (0.8+) is importable on the TensorFlow backend, the layer and
keras_cv.layers.DropBlock2D give the same bits call after call, and a model with one swapped for
the other gives the same outputs.

Each Python in $DROPBLOCK_TEST_PYTHONS (colon-separated, e.g. a venv with TensorFlow and keras-cv)
runs the same checks too. Skips (77) where no Python has Keras 3 and NumPy.

  test_keras_layer.py --library LIBDROPBLOCK
"""
import argparse
import os
import subprocess
import sys

CHILD = r'''
import os, sys, json
sys.path.insert(0, PYDIR)
import numpy as np
import keras
import dropblock
from dropblock.keras import DropBlock2D

fails, passes = [], [0]
def check(cond, what):
    if cond: passes[0] += 1
    else: fails.append(what)

backend = keras.backend.backend()
c = dropblock.Client(local=True, backends="cpu")
rng = np.random.default_rng(5)
def bits(a):
    return np.ascontiguousarray(keras.ops.convert_to_numpy(a)).view(np.uint32)

# calls of changing sizes: the job of (seed, k), k the call index
layer = DropBlock2D(0.2, (3, 2), seed=1234, client=c)
for k, shape in enumerate([(2, 8, 8, 3), (1, 9, 7, 2), (2, 8, 8, 3)]):
    x = rng.uniform(-2, 2, shape).astype(np.float32)
    y = layer(keras.ops.convert_to_tensor(x), training=True)
    want = c.dropblock2d(x, 0.2, (3, 2), seed=1234, stream=k, layout="NHWC", compat="keras3")
    check(np.array_equal(bits(y), want.view(np.uint32)), "%s call %d %s: the compat keras3 job" % (backend, k, shape))
st = keras.ops.convert_to_numpy(layer._random_generator.state.value)
check([int(v) for v in st] == [1234, 3], "%s: the generator state after 3 calls: %s" % (backend, st))
check(any("seed_generator_state" in v.path for v in layer.variables), "%s: the state is a layer variable: %s"
      % (backend, [v.path for v in layer.variables]))
x = rng.uniform(-2, 2, (2, 8, 8, 3)).astype(np.float32)
xt = keras.ops.convert_to_tensor(x)
check(np.array_equal(bits(layer(xt, training=False)), x.view(np.uint32)), "%s: training=False is the identity" % backend)
check(np.array_equal(bits(DropBlock2D(0.0, 3, seed=1, client=c)(xt, training=True)), x.view(np.uint32)),
      "%s: rate 0 is the identity" % backend)
st2 = keras.ops.convert_to_numpy(layer._random_generator.state.value)
check([int(v) for v in st2] == [1234, 3], "%s: identity calls leave the generator: %s" % (backend, st2))

# the gradient: sum(y * w) -> the backward job on w
w = rng.uniform(-1, 1, x.shape).astype(np.float32)
g_layer = DropBlock2D(0.25, 3, seed=99, client=c)
want_g = c.backward(w, 0.25, 3, seed=99, stream=0, layout="NHWC", compat="keras3")
if backend == "tensorflow":
    import tensorflow as tf
    xv = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xv)
        loss = tf.reduce_sum(g_layer(xv, training=True) * w)
    g = tape.gradient(loss, xv)
elif backend == "jax":
    import jax
    g = jax.grad(lambda v: (g_layer(v, training=True) * w).sum())(jax.numpy.asarray(x))
else:
    import torch
    xv = torch.tensor(x, requires_grad=True)
    (g_layer(xv, training=True) * torch.tensor(w)).sum().backward()
    g = xv.grad
check(np.array_equal(bits(g), want_g.view(np.uint32)), "%s: the gradient is the backward job" % backend)

# compiled
cl = DropBlock2D(0.2, 3, seed=7, client=c)
want0 = c.dropblock2d(x, 0.2, 3, seed=7, stream=0, layout="NHWC", compat="keras3")
want1 = c.dropblock2d(x, 0.2, 3, seed=7, stream=1, layout="NHWC", compat="keras3")
if backend == "tensorflow":
    import tensorflow as tf
    f = tf.function(lambda v: cl(v, training=True))
    got = [f(tf.constant(x)), f(tf.constant(x))]
elif backend == "jax":
    import jax
    # a stateless jit: the state passed in and out, as Keras' own JAX trainer does
    sv = cl._random_generator.state
    def step(state, v):
        with keras.StatelessScope(state_mapping=[(sv, state)]) as scope:
            y = cl(v, training=True)
        return y, scope.get_current_value(sv)
    jf = jax.jit(step)
    y0, s1 = jf(sv.value, jax.numpy.asarray(x))
    y1, _ = jf(s1, jax.numpy.asarray(x))
    got = [y0, y1]
else:
    got = [cl(keras.ops.convert_to_tensor(x), training=True) for _ in range(2)]
check(np.array_equal(bits(got[0]), want0.view(np.uint32)) and np.array_equal(bits(got[1]), want1.view(np.uint32)),
      "%s: compiled, two calls" % backend)

# model.fit runs a step through it
inp = keras.Input((8, 8, 3))
out = keras.layers.Conv2D(2, 1)(DropBlock2D(0.1, 3, seed=3, client=c)(inp))
model = keras.Model(inp, out)
model.compile(optimizer="sgd", loss="mse")
h = model.fit(x, np.zeros((2, 8, 8, 2), np.float32), epochs=1, verbose=0)
check(np.isfinite(h.history["loss"][0]), "%s: model.fit: %s" % (backend, h.history))

# config, serialization, seed=None
cfg = layer.get_config()
l2 = DropBlock2D.from_config(cfg)
check(l2.get_config() == cfg and cfg["seed"] == 1234 and tuple(cfg["block_size"]) == (3, 2), "%s: config %s" % (backend, cfg))
ser = keras.saving.serialize_keras_object(layer)
check(keras.saving.deserialize_keras_object(ser).get_config() == cfg, "%s: serialization" % backend)
ln = DropBlock2D(0.2, 3, client=c)
y = ln(xt, training=True)
s0 = int(keras.ops.convert_to_numpy(ln._random_generator.state.value)[0])
want = c.dropblock2d(x, 0.2, 3, seed=s0 & (2**64 - 1), stream=0, layout="NHWC", compat="keras3")
check(np.array_equal(bits(y), want.view(np.uint32)), "%s: seed=None uses the seed Keras drew (%d)" % (backend, s0))

# keras-cv itself, where it is here (TensorFlow backend)
try:
    import keras_cv
    have_kcv = backend == "tensorflow"
except Exception:
    have_kcv = False
if have_kcv:
    import tensorflow as tf
    ours, theirs = DropBlock2D(0.15, 5, seed=2024, client=c), keras_cv.layers.DropBlock2D(0.15, 5, seed=2024)
    for k, shape in enumerate([(2, 14, 14, 4), (1, 9, 11, 2), (2, 14, 14, 4)]):
        v = tf.constant(rng.uniform(-2, 2, shape).astype(np.float32))
        check(np.array_equal(bits(ours(v, training=True)), bits(theirs(v, training=True))),
              "keras-cv %s call %d %s: the same bits" % (keras_cv.__version__, k, shape))
    def model_with(layer_cls):
        keras.utils.set_random_seed(1)
        i = keras.Input((14, 14, 4))
        o = keras.layers.Conv2D(3, 3, padding="same")(layer_cls(0.1, 3, seed=5)(i))
        return keras.Model(i, o)
    m1 = model_with(keras_cv.layers.DropBlock2D)
    m2 = model_with(lambda *a, **k: DropBlock2D(*a, client=c, **k))
    v = rng.uniform(-1, 1, (2, 14, 14, 4)).astype(np.float32)
    check(all(np.array_equal(bits(m1(v, training=True)), bits(m2(v, training=True))) for _ in range(3)),
          "keras-cv %s: a model with the layer swapped in gives the same outputs" % keras_cv.__version__)
    print("keras-cv %s compared live" % keras_cv.__version__)
print(json.dumps({"backend": backend, "passed": passes[0], "failed": fails}))
'''


def run(python, backend, library, pydir):
    env = dict(os.environ, KERAS_BACKEND=backend, DROPBLOCK_LIBRARY=library, TF_CPP_MIN_LOG_LEVEL="2")
    code = "PYDIR = %r\n" % pydir + CHILD
    try:
        r = subprocess.run([python, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    last = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode or not last:
        return None, (r.stdout + r.stderr)[-3000:]
    import json
    return json.loads(last[-1]), r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--library", required=True)
    a = ap.parse_args()
    pydir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python")
    pythons = [sys.executable] + [p for p in os.environ.get("DROPBLOCK_TEST_PYTHONS", "").split(":") if p]
    passed = failed = ran = 0
    for py in pythons:
        for backend, module in (("tensorflow", "tensorflow"), ("jax", "jax"), ("torch", "torch")):
            probe = subprocess.run([py, "-c", "import keras, numpy, %s; assert keras.__version__[0] == '3'" % module],
                                   capture_output=True, text=True, timeout=300,
                                   env=dict(os.environ, KERAS_BACKEND=backend))
            if probe.returncode:
                print("%s: no Keras 3 with %s: skipped" % (py, backend))
                continue
            res, out = run(py, backend, a.library, pydir)
            ran += 1
            if res is None:
                print("FAIL %s %s: %s" % (py, backend, out))
                failed += 1
                continue
            for line in out.splitlines():
                if line.startswith("keras-cv"):
                    print(py, line)
            passed += res["passed"]
            failed += len(res["failed"])
            for f in res["failed"]:
                print("FAIL %s: %s" % (py, f))
            print("%s, backend %s: %d checks passed, %d failed" % (py, backend, res["passed"], len(res["failed"])))
    if not ran:
        print("SKIP: no Python here has Keras 3 with a backend")
        return 77
    print("test_keras_layer: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
