#!/usr/bin/env python3
"""DropBlock3D bit vectors (issue 17, work in progress) from the executable spec's dropblock3d
(SPEC.md section 7): tests/vectors3d/*.json in tests/vectors' format, with a 5-element shape
(N, C, D, H, W) and a 3-element block (bd, bh, bw); "layout" NCHW/NHWC there means NCDHW/NDHWC
(as dropblock_ref.py's --layout does for 5-D shapes). Cases with D = 1 and bd = 1 are the
2-D op's bits (the spec says so; test vectors3d checks the C reference gives them).

    python3 tools/gen_vectors3d.py [--spec-dir ../shared/spec]"""
import argparse
import glob
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_ref(spec_dir):
    spec = importlib.util.spec_from_file_location("dropblock_ref", os.path.join(spec_dir, "dropblock_ref.py"))
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    return ref


CASES = []
for layout in ("NCHW", "NHWC"):
    for dtype in ("f32", "f16", "bf16"):
        L = dict(layout=layout, dtype=dtype)
        CASES += [
            dict(name="cube-3", shape=(2, 3, 5, 7, 6), rate="0.2", block=(3, 3, 3), seed=1, stream=2, **L),
            dict(name="box-2x3x1", shape=(1, 2, 6, 5, 7), rate="0.3", block=(2, 3, 1), seed=2, **L),
            dict(name="d1-is-2d", shape=(2, 3, 1, 9, 7), rate="0.2", block=(1, 3, 3), seed=1, stream=3, **L),
            dict(name="block-gt-volume", shape=(1, 2, 3, 4, 5), rate="0.5", block=(7, 7, 7), seed=3, **L),
            dict(name="normalize-sample", shape=(3, 2, 4, 5, 5), rate="0.4", block=(2, 2, 2), seed=4,
                 normalize="sample", **L),
            dict(name="share-both", shape=(2, 3, 4, 6, 6), rate="0.4", block=(2, 3, 2), seed=5,
                 share_channels=True, share_batch=True, **L),
            dict(name="eval", shape=(1, 2, 3, 4, 4), rate="0.4", block=(2, 2, 2), seed=6, training=False, **L),
            dict(name="u64-seed-stream", shape=(1, 2, 4, 5, 6), rate="0.3", block=(2, 2, 2),
                 seed=18446744073709551557, stream=(1 << 64) - 1, **L),
        ]


def run(ref, c):
    N, C, D, H, W = c["shape"]
    n = N * C * D * H * W
    dt = c["dtype"]
    enc = ref.ENC[dt][0]
    tfu = ((c["seed"] ^ 0x5EED) & ((1 << 64) - 1), 17)
    x = [enc(v) for v in ref.tf_stateless_uniform(n, tfu[0], tfu[1])]
    rate = ref.f32(float(c["rate"]))
    width = 8 if dt == "f32" else 4
    norm = c.get("normalize", "global")
    sc, sb, tr = c.get("share_channels", False), c.get("share_batch", False), c.get("training", True)
    layout3 = {"NCHW": "NCDHW", "NHWC": "NDHWC"}[c["layout"]]
    y, kept, total, scale = ref.dropblock3d(x, c["shape"], layout3, dt, rate, c["block"], c["seed"], c.get("stream", 0),
                                            norm, sc, sb, tr)
    req = dict(shape=list(c["shape"]), layout=c["layout"], layout_3d=layout3, dtype=dt, rate=c["rate"],
               rate_bits="0x%08x" % ref.f32_bits(rate), block=list(c["block"]), seed=str(c["seed"]),
               stream=str(c.get("stream", 0)), normalize=norm, share_channels=sc, share_batch=sb, compat="none",
               mode="forward", training=tr)
    return dict(name=c["name"], request=req, input_tf_uniform=None, ref_args=None,
                input=["0x%0*x" % (width, b) for b in x],
                expected=dict(kept=kept, total=total, scale_bits="0x%08x" % ref.f32_bits(scale),
                              values=["0x%0*x" % (width, b) for b in y], mask=None))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec-dir", default=os.environ.get("DROPBLOCK_SPEC_DIR") or os.path.join(ROOT, "..", "shared", "spec"))
    a = ap.parse_args()
    ref = load_ref(a.spec_dir)
    out = os.path.join(ROOT, "tests", "vectors3d")
    os.makedirs(out, exist_ok=True)
    for f in glob.glob(os.path.join(out, "*.json")):
        os.remove(f)
    for c in CASES:
        v = run(ref, c)
        with open(os.path.join(out, "%s-%s-%s.json" % (c["name"], v["request"]["layout_3d"], c["dtype"])), "w") as f:
            json.dump(v, f, indent=1)
            f.write("\n")
    print("gen_vectors3d: %d vectors in %s" % (len(CASES), out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
