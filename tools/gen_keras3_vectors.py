#!/usr/bin/env python3
"""Vectors of keras-cv's DropBlock2D under Keras 3 with the TensorFlow backend (compat keras3), made
by running the real layer: each case builds keras_cv.layers.DropBlock2D(rate, block_size, seed) and
calls it several times (training=True) on inputs of possibly different sizes, recording every
call's input and output bits. tests/test_keras3_vectors.py checks every backend against them.

Needs TensorFlow and keras-cv >= 0.8 (Keras 3): run it with the Python that has them, e.g.
    python3 -m venv /opt/tfenv && /opt/tfenv/bin/pip install tensorflow-cpu keras-cv
    KERAS_BACKEND=tensorflow /opt/tfenv/bin/python tools/gen_keras3_vectors.py
It writes tests/vectors_keras/keras3-*.json (removing the old ones first)."""
import glob
import json
import os
import struct
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
import keras_cv  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "vectors_keras")

# (name, rate, block, seed, dtype, [NHWC shapes of the successive calls], subnormals in x)
CASES = [
    ("f32-three-calls", 0.1, 3, 1234, "float32", [(2, 8, 8, 3)] * 3, False),
    ("f32-sizes-change", 0.2, (3, 2), 7, "float32", [(1, 9, 7, 2), (2, 5, 6, 3), (1, 9, 7, 2)], False),
    ("f32-block7-on-14x14", 0.1, 7, 42, "float32", [(2, 14, 14, 4)] * 2, False),
    ("f32-H-gt-W", 0.15, 3, 5, "float32", [(1, 12, 6, 2)], False),
    ("f32-big-seed", 0.1, 5, 3000000000, "float32", [(1, 16, 16, 2)] * 2, False),
    ("f32-subnormals", 0.1, 3, 11, "float32", [(1, 8, 8, 2)], True),
    ("f16-two-calls", 0.1, 3, 99, "float16", [(2, 8, 8, 3)] * 2, False),
    ("bf16-two-calls", 0.1, 3, 98, "bfloat16", [(2, 8, 8, 3)] * 2, True),
    ("f16-subnormals", 0.1, 3, 97, "float16", [(1, 8, 8, 2)], True),
]
# the layer runs in the input's dtype (dtype=: its policy), as in a float16 or bfloat16 model; with
# the default float32 policy Keras casts such inputs to float32 first, which is the f32 case


def bits(a):
    a = np.ascontiguousarray(a)
    if a.dtype == np.float32:
        return ["0x%08x" % v for v in a.view(np.uint32).ravel()]
    return ["0x%04x" % v for v in a.view(np.uint16).ravel()]


def make_input(shape, dtype, subnormals, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, size=shape).astype(np.float32)
    if dtype == "bfloat16":  # bfloat16 as float32 with its low 16 bits cleared (truncation, exact)
        x = (x.view(np.uint32) & 0xFFFF0000).view(np.float32)
    elif dtype == "float16":
        x = x.astype(np.float16)
    if subnormals:
        flat = x.reshape(-1)
        for i, v in enumerate((1e-40, -1e-40, 1.4e-45, -3e-39, 1.1754942e-38)):
            w = np.float32(v)
            if dtype == "float16":  # f16 subnormals (normal as float32: never flushed)
                w = np.float16(v * 1e35 if abs(v) > 1e-44 else 6e-8)
            if dtype == "bfloat16":
                w = (np.array([w]).view(np.uint32) & 0xFFFF0000).view(np.float32)[0]
            flat[(7 * i + 3) % flat.size] = w
    return x


def bits_of(t, dtype):
    """the tensor's bits as its dtype (bfloat16 from the top half of its float32)"""
    if dtype == "bfloat16":
        a = np.asarray(tf.cast(t, tf.float32)).astype(np.float32)
        return ["0x%04x" % (v >> 16) for v in a.view(np.uint32).ravel()]
    return bits(np.asarray(t))


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in glob.glob(os.path.join(OUT, "keras3-*.json")):
        os.remove(f)
    for name, rate, block, seed, dtype, shapes, sub in CASES:
        layer = keras_cv.layers.DropBlock2D(rate=rate, block_size=block, seed=seed,
                                            **({} if dtype == "float32" else {"dtype": dtype}))
        calls = []
        for k, shape in enumerate(shapes):
            x = make_input(shape, dtype, sub, seed * 31 + k)
            xt = tf.cast(tf.constant(x), dtype)
            y = layer(xt, training=True)
            assert y.dtype == xt.dtype, (y.dtype, xt.dtype)
            calls.append({"call": k, "shape_nhwc": list(shape), "input": bits_of(xt, dtype),
                          "output": bits_of(y, dtype)})
        bh, bw = (block, block) if isinstance(block, int) else block
        v = {"name": "keras3-" + name, "rate": rate, "rate_bits": "0x%08x" % struct.unpack("<I", struct.pack("<f", rate))[0],
             "block": [bh, bw], "seed": str(seed), "dtype": {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[dtype],
             "layout": "NHWC", "compat": "keras3",
             "made_with": {"keras_cv": keras_cv.__version__, "keras": keras.__version__,
                           "tensorflow": tf.__version__, "backend": keras.backend.backend(),
                           "command": "KERAS_BACKEND=tensorflow python tools/gen_keras3_vectors.py"},
             "calls": calls}
        path = os.path.join(OUT, v["name"] + ".json")
        with open(path, "w") as f:
            json.dump(v, f, indent=1)
            f.write("\n")
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
