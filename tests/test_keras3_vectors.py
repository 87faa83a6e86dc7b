#!/usr/bin/env python3
"""compat keras3 (keras-cv 0.8+ under Keras 3, TensorFlow backend; docs/semantics.md) against the
outputs of the real layer: tests/vectors_keras/keras3-*.json, made by tools/gen_keras3_vectors.py
with TensorFlow and keras-cv (each file names their versions). Every call of every vector, on every
device of the in-process engine (cpu, opencl, vulkan) and through a daemon, must give the layer's
output bit for bit: the call index as `stream`, NHWC, the layer's dtype. Where TensorFlow and
keras-cv are importable here, the vectors are also checked against a live run of the layer.
Skips (77) without NumPy.

  test_keras3_vectors.py --vectors DIR [--daemon DROPBLOCKD]
"""
import argparse
import glob
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Daemon, Tally  # noqa: E402

T = Tally()


def arrays(np, v, call):
    n, h, w, c = call["shape_nhwc"]
    if v["dtype"] == "f32":
        x = np.array([int(b, 16) for b in call["input"]], np.uint32).view(np.float32)
        y = np.array([int(b, 16) for b in call["output"]], np.uint32)
    else:
        x = np.array([int(b, 16) for b in call["input"]], np.uint16)
        if v["dtype"] == "f16":
            x = x.view(np.float16)
        y = np.array([int(b, 16) for b in call["output"]], np.uint16)
    return x.reshape(n, h, w, c), y


def check(np, client, label, vectors):
    for v in vectors:
        for call in v["calls"]:
            x, want = arrays(np, v, call)
            got = client.dropblock2d(x, v["rate"], tuple(v["block"]), seed=int(v["seed"]), stream=call["call"],
                                     layout="NHWC", compat="keras3", dtype=v["dtype"])
            gb = np.ascontiguousarray(got).view(np.uint32 if v["dtype"] == "f32" else np.uint16).ravel()
            bad = np.flatnonzero(gb != want)
            T.check(bad.size == 0, "%s %s call %d on %s: %d elements differ, first %s: 0x%x, keras-cv 0x%x" % (
                label, v["name"], call["call"], client.last_result.device, bad.size,
                bad[:1], gb[bad[0]] if bad.size else 0, want[bad[0]] if bad.size else 0))


def live(np, vectors):
    """the vectors against the layer itself, where TensorFlow and keras-cv are installed"""
    try:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras_cv  # noqa: F401
        import tensorflow as tf
    except Exception:  # noqa: BLE001 - absent or broken: the committed vectors stand
        print("note: TensorFlow/keras-cv not importable here: the committed vectors are used alone")
        return
    print("live: keras-cv %s, TensorFlow %s" % (keras_cv.__version__, tf.__version__))
    for v in vectors:
        if v["dtype"] != "f32":
            continue
        layer = keras_cv.layers.DropBlock2D(rate=v["rate"], block_size=tuple(v["block"]), seed=int(v["seed"]))
        for call in v["calls"]:
            x, want = arrays(np, v, call)
            y = np.asarray(layer(tf.constant(x), training=True)).view(np.uint32).ravel()
            T.check(np.array_equal(y, want), "live %s call %d equals the committed vector" % (v["name"], call["call"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--daemon")
    a = ap.parse_args()
    try:
        import numpy as np
    except ImportError:
        print("SKIP: NumPy is not installed")
        return 77
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import dropblock
    vectors = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(a.vectors, "keras3-*.json")))]
    T.check(len(vectors) >= 8, "%d keras3 vectors" % len(vectors))
    print("vectors: %s" % ", ".join("%s (%d calls)" % (v["name"], len(v["calls"])) for v in vectors))
    os.environ.setdefault("VK_DRIVER_FILES", "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")
    for backend in ("cpu", "opencl", "vulkan"):
        try:
            c = dropblock.Client(local=True, backends=backend, cache_dir="")
        except dropblock.Error as e:
            print("no %s device: %s" % (backend, e))
            continue
        with c:
            devs = [d["id"] for d in c.devices()]
            if not any(d.startswith(backend) for d in devs):
                print("no %s device here" % backend)
                continue
            check(np, c, "in-process", vectors)
            print("in-process %s: done" % backend)
    if a.daemon:
        d = Daemon(a.daemon, "--cache-dir", tempfile.mkdtemp(prefix="dbk3-"))
        try:
            with dropblock.Client(socket=d.path) as c:
                for dev in [x["id"] for x in c.devices()]:
                    class On:  # the same checks, on one device of the daemon
                        last_result = None

                        @staticmethod
                        def dropblock2d(*args, **kw):
                            r = c.dropblock2d(*args, device=dev, **kw)
                            On.last_result = c.last_result
                            return r
                    check(np, On, "daemon", vectors)
                    print("daemon %s: done" % dev)
        finally:
            T.check(d.stop(remove=True) == 0, "dropblockd exit status")
    live(np, vectors)
    print("test_keras3_vectors: %d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
