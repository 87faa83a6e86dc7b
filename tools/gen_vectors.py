#!/usr/bin/env python3
"""Generates tests/vectors/*.json: bit-exact DropBlock2D vectors computed by the executable spec
(spec/dropblock_ref.py), which tests/test_vectors.c checks the C reference against.

  python3 tools/gen_vectors.py [--spec-dir DIR] [--out DIR]

DIR defaults: $DROPBLOCK_SPEC_DIR, else ../shared/spec beside the repository; the output goes to
tests/vectors/ (old *.json there are removed first, so a case dropped here disappears there).

One vector per file:
  name, request {shape, layout, dtype, rate (text), rate_bits, block, seed, stream (decimal
  strings: cJSON keeps numbers as doubles), normalize, share_channels, share_batch, compat, mode,
  training}, input_tf_uniform ([S0, S1] as strings, when the input is that; null otherwise),
  ref_args (dropblock_ref.py flags that give the same result, when there are such), input (hex
  bit patterns in physical order), and either expected {kept, total, scale_bits, values, mask}
  (mask: the packed keep mask of docs/semantics.md, "Scale and output", as hex bytes, canonical
  mode only, else null) or
  error {code, reference_message} for a request the reference rejects.
"""
import argparse
import glob
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
U64_MAX = (1 << 64) - 1


def load_ref(spec_dir):
    path = os.path.join(spec_dir, "dropblock_ref.py")
    if not os.path.exists(path):
        sys.exit("gen_vectors: %s not found (pass --spec-dir or set DROPBLOCK_SPEC_DIR)" % path)
    spec = importlib.util.spec_from_file_location("dropblock_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Special values per dtype: NaN with payload, -NaN, signalling NaN, +-inf, -0, subnormals (min and
# max), the smallest normal, and big finite values. Max finite goes only where the scale is 1:
# dropblock_ref.py's f32() raises OverflowError where float32 would round to inf.
SPECIALS = {
    "f32": [0x7FC12345, 0xFFC00000, 0xFFC00001, 0x7F800001, 0x7FA00000, 0x7F800000, 0xFF800000, 0x80000000,
            0x00000001, 0x807FFFFF, 0x00400000, 0x00800000, 0x7F000000, 0xFF000000],
    "f16": [0x7E01, 0xFE00, 0xFE01, 0x7C01, 0x7D00, 0x7C00, 0xFC00, 0x8000,
            0x0001, 0x83FF, 0x0200, 0x0400, 0x7800, 0xF800],
    "bf16": [0x7FC1, 0xFFC0, 0xFFC1, 0x7F81, 0x7FA0, 0x7F80, 0xFF80, 0x8000,
             0x0001, 0x807F, 0x0040, 0x0080, 0x7F00, 0xFF00],
}
MAX_FINITE = {"f32": [0x7F7FFFFF, 0xFF7FFFFF], "f16": [0x7BFF, 0xFBFF], "bf16": [0x7F7F, 0xFF7F]}


def case(name, shape, layout="NCHW", dtype="f32", rate="0.1", block=(7, 7), seed=0, stream=0, normalize="global",
         share_channels=False, share_batch=False, compat="none", backward=False, training=True, tfu=None,
         specials=None, x=None):
    """A request; tfu=(s0, s1) for a tf-uniform input, specials: list of bit patterns written every
    5th element over that input, x: the whole input as bit patterns instead."""
    if isinstance(block, int):
        block = (block, block)
    if tfu is None:
        tfu = ((seed ^ 0x5EED) & U64_MAX, 17)
    return dict(name=name, shape=tuple(shape), layout=layout, dtype=dtype, rate=rate, block=tuple(block), seed=seed,
                stream=stream, normalize=normalize, share_channels=share_channels, share_batch=share_batch,
                compat=compat, backward=backward, training=training, tfu=tfu, specials=specials, x=x)


def matrix():
    cases = []
    for layout in ("NCHW", "NHWC"):
        for dtype in ("f32", "f16", "bf16"):
            L = dict(layout=layout, dtype=dtype)
            cases += [
                case("odd-block", (2, 3, 9, 7), rate="0.2", block=3, seed=1, stream=3, **L),
                case("even-block", (2, 2, 10, 12), rate="0.3", block=4, seed=2, stream=3, **L),
                case("non-square-block", (2, 3, 11, 13), rate="0.25", block=(2, 5), seed=3, **L),
                case("block-7-on-14x14", (1, 2, 14, 14), rate="0.1", block=7, seed=4, **L),
                case("block-equals-map", (1, 2, 6, 6), rate="0.5", block=6, seed=5, **L),
                case("block-larger-than-map", (2, 3, 5, 6), rate="0.5", block=(7, 9), seed=6, **L),
                case("rate-0", (2, 2, 8, 8), rate="0", block=3, seed=7, **L),
                case("rate-1", (2, 2, 8, 8), rate="1", block=3, seed=8, **L),
                case("normalize-sample", (3, 4, 9, 9), rate="0.4", block=3, seed=9, normalize="sample", **L),
                case("normalize-none", (3, 4, 9, 9), rate="0.4", block=3, seed=10, normalize="none", **L),
                case("share-channels", (3, 4, 9, 9), rate="0.4", block=3, seed=11, share_channels=True, **L),
                case("share-batch", (3, 4, 9, 9), rate="0.4", block=3, seed=12, share_batch=True, **L),
                case("share-both-sample", (3, 4, 9, 9), rate="0.4", block=2, seed=13, share_channels=True,
                     share_batch=True, normalize="sample", **L),
                case("backward", (2, 3, 9, 9), rate="0.3", block=3, seed=14, backward=True, **L),
                case("eval", (2, 3, 9, 9), rate="0.3", block=3, seed=15, training=False, **L),
                case("u64-seed-stream", (2, 3, 9, 9), rate="0.3", block=3, seed=18446744073709551557,
                     stream=U64_MAX, **L),
                case("keras_cv", (2, 3, 9, 7), rate="0.5", block=3, seed=16, compat="keras_cv", **L),
                case("keras_cv-even-block-H-lt-W", (2, 3, 7, 9), rate="0.5", block=(4, 2), seed=17,
                     compat="keras_cv", **L),
                case("keras_cv-H-gt-W", (2, 3, 9, 6), rate="0.6", block=(3, 5), seed=18, compat="keras_cv", **L),
                case("keras_cv-block-gt-map", (1, 2, 5, 5), rate="0.5", block=(9, 3), seed=19, compat="keras_cv", **L),
                case("keras_cv-u64-seed-stream", (2, 3, 9, 9), rate="0.3", block=3, seed=0xFFFFFFFFFFFFFFF0,
                     stream=7, compat="keras_cv", **L),
                case("keras_cv-backward", (2, 2, 8, 8), rate="0.3", block=3, seed=20, compat="keras_cv",
                     backward=True, **L),
                case("keras_cv-eval", (2, 2, 8, 8), rate="0.3", block=3, seed=21, compat="keras_cv",
                     training=False, **L),
                case("specials", (1, 3, 8, 8), rate="0.3", block=3, seed=22, specials=SPECIALS[dtype], **L),
                case("specials-max-finite-scale-1", (1, 3, 8, 8), rate="0.3", block=3, seed=23, normalize="none",
                     specials=SPECIALS[dtype] + MAX_FINITE[dtype], **L),
                case("specials-eval", (1, 3, 8, 8), rate="0.3", block=3, seed=24, training=False,
                     specials=SPECIALS[dtype] + MAX_FINITE[dtype], **L),
                case("specials-keras_cv", (1, 3, 8, 8), rate="0.3", block=3, seed=25, compat="keras_cv",
                     specials=SPECIALS[dtype], **L),
                case("specials-rate-1-scale-1", (1, 2, 6, 6), rate="1", block=2, seed=26, normalize="none",
                     specials=SPECIALS[dtype] + MAX_FINITE[dtype], **L),
                case("specials-all-dropped-scale-0", (1, 2, 6, 6), rate="1", block=7, seed=27,
                     specials=SPECIALS[dtype] + MAX_FINITE[dtype], **L),
            ]
    # odd sizes, on a few dtype/layout pairs each
    for layout, dtype in (("NCHW", "f32"), ("NHWC", "f16"), ("NHWC", "bf16")):
        L = dict(layout=layout, dtype=dtype)
        cases += [
            case("1x1-maps", (3, 7, 1, 1), rate="0.5", block=3, seed=30, **L),
            case("1x1-maps-rate-1", (2, 3, 1, 1), rate="1", block=1, seed=31, **L),
            case("single-row", (2, 2, 1, 40), rate="0.3", block=3, seed=32, **L),
            case("single-column", (2, 2, 23, 1), rate="0.3", block=(4, 2), seed=33, **L),
            case("prime-width-37", (1, 3, 5, 37), rate="0.2", block=(3, 2), seed=34, **L),
            case("width-64", (1, 2, 3, 64), rate="0.3", block=(2, 7), seed=35, **L),
            case("width-100", (2, 1, 4, 100), rate="0.15", block=(1, 33), seed=36, **L),
            case("NC-odd", (5, 7, 6, 5), rate="0.3", block=(2, 3), seed=37, **L),
            case("plane-32x33", (1, 1, 32, 33), rate="0.1", block=5, seed=38, **L),
            case("tiny-rate", (1, 2, 16, 16), rate="1e-6", block=3, seed=39, **L),
            case("keras_cv-1x1-maps", (2, 3, 1, 1), rate="0.5", block=1, seed=40, compat="keras_cv", **L),
            case("keras_cv-prime-width", (1, 2, 5, 37), rate="0.3", block=(3, 4), seed=41, compat="keras_cv", **L),
        ]
    # docs/semantics.md, "Fixed test vectors": the documented uniform values, and a fully dropped 7x7 map
    cases += [
        case("spec6-tf-uniform-0-1", (1, 1, 4, 4), layout="NHWC", rate="0", block=1, tfu=(0, 1)),
        case("spec6-1x1x7x7-rate-1-block-7", (1, 1, 7, 7), rate="1", block=7, x=[0x3F800000] * 49),
        case("spec6-1x1x7x7-rate-1-block-7-tfu", (1, 1, 7, 7), rate="1", block=7, tfu=(0, 1)),
        case("spec-usage-example", (2, 3, 9, 7), layout="NHWC", dtype="f16", rate="0.2", block=(3, 2), seed=42,
             stream=5, tfu=(0, 1)),
    ]
    # requests the reference rejects (keras-cv would divide by zero or return NaN)
    cases += [
        case("reject-keras_cv-block-map-plus-1", (1, 1, 5, 5), rate="0.5", block=6, compat="keras_cv"),
        case("reject-keras_cv-block-map-plus-1-height", (1, 2, 4, 7), layout="NHWC", dtype="f16", rate="0.5",
             block=(5, 3), compat="keras_cv"),
        case("reject-keras_cv-all-dropped", (1, 1, 3, 3), rate="1", block=3, compat="keras_cv"),
        case("reject-keras_cv-all-dropped-bf16", (2, 2, 3, 3), layout="NHWC", dtype="bf16", rate="1", block=3,
             compat="keras_cv"),
    ]
    return cases


def run_case(ref, c):
    N, C, H, W = c["shape"]
    n = N * C * H * W
    dt = c["dtype"]
    enc = ref.ENC[dt][0]
    tfu = c["tfu"]
    if c["x"] is not None:
        x, tfu = list(c["x"]), None
    else:
        x = [enc(v) for v in ref.tf_stateless_uniform(n, tfu[0], tfu[1])]
        if c["specials"]:
            for i, b in enumerate(c["specials"]):
                if i * 5 < n:
                    x[i * 5] = b
            tfu = None
    rate = ref.f32(float(c["rate"]))                  # as dropblock_ref.py's f32(rate) and the C float
    width = 8 if dt == "f32" else 4
    hexs = lambda bits: ["0x%0*x" % (width, b) for b in bits]
    req = dict(shape=list(c["shape"]), layout=c["layout"], dtype=dt, rate=c["rate"],
               rate_bits="0x%08x" % ref.f32_bits(rate), block=list(c["block"]), seed=str(c["seed"]),
               stream=str(c["stream"]), normalize=c["normalize"], share_channels=c["share_channels"],
               share_batch=c["share_batch"], compat=c["compat"], mode="backward" if c["backward"] else "forward",
               training=c["training"])
    out = dict(name=c["name"], request=req, input_tf_uniform=[str(tfu[0]), str(tfu[1])] if tfu else None)
    if tfu:
        args = ["--shape", ",".join(map(str, c["shape"])), "--layout", c["layout"], "--dtype", dt, "--rate", c["rate"],
                "--block", "%d,%d" % c["block"], "--seed", str(c["seed"]), "--stream", str(c["stream"]),
                "--normalize", c["normalize"], "--compat", c["compat"], "--input", "tf-uniform:%d,%d" % tfu]
        args += ["--share-channels"] * c["share_channels"] + ["--share-batch"] * c["share_batch"]
        args += ["--backward"] * c["backward"] + ["--eval"] * (not c["training"])
        out["ref_args"] = " ".join(args)
    else:
        out["ref_args"] = None
    out["input"] = hexs(x)
    try:
        if c["compat"] == "keras_cv":
            y, kept, total, scale = ref.keras_cv_dropblock2d(x, c["shape"], c["layout"], dt, rate, c["block"],
                                                             c["seed"], c["stream"], c["training"])
            mask = None
        else:
            y, kept, total, scale = ref.dropblock2d(x, c["shape"], c["layout"], dt, rate, c["block"], c["seed"],
                                                    c["stream"], c["normalize"], c["share_channels"],
                                                    c["share_batch"], c["training"])
            mask = export_mask(ref, c, rate)
    except ValueError as e:
        out["error"] = dict(code="invalid_argument", reference_message=str(e))
        return out
    out["expected"] = dict(kept=kept, total=total, scale_bits="0x%08x" % ref.f32_bits(scale), values=hexs(y),
                           mask=mask)
    return out


def export_mask(ref, c, rate):
    """The packed mask of docs/semantics.md, "Scale and output": bit ((n*C+c)*H+h)*W+w, LSB first,
    1 = kept; all ones for the identity."""
    N, C, H, W = c["shape"]
    n = N * C * H * W
    if not c["training"] or rate == 0:
        bits = [1] * n
    else:
        keep = ref.keep_mask(N, C, H, W, rate, c["block"], c["seed"], c["stream"], c["share_channels"],
                             c["share_batch"])
        bits = [keep[a][b][h][w] for a in range(N) for b in range(C) for h in range(H) for w in range(W)]
    out = bytearray((n + 7) // 8)
    for i, b in enumerate(bits):
        out[i >> 3] |= b << (i & 7)
    return out.hex()


def file_name(c):
    parts = [c["name"], c["layout"], c["dtype"]]
    if c["name"].startswith(("spec6", "spec-", "reject")):
        parts = [c["name"]]
    return "-".join(parts) + ".json"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec-dir", default=os.environ.get("DROPBLOCK_SPEC_DIR") or
                    os.path.join(ROOT, "..", "shared", "spec"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "vectors"))
    a = ap.parse_args()
    ref = load_ref(a.spec_dir)
    os.makedirs(a.out, exist_ok=True)
    for old in glob.glob(os.path.join(a.out, "*.json")):
        os.remove(old)
    names = set()
    total_bytes = 0
    cases = matrix()
    for c in cases:
        fn = file_name(c)
        if fn in names:
            sys.exit("gen_vectors: duplicate vector name " + fn)
        names.add(fn)
        v = run_case(ref, c)
        if ("error" in v) != c["name"].startswith("reject"):   # a case meant to run must run, and vice versa
            sys.exit("gen_vectors: %s: the reference %s" % (fn, "rejected it: " + v["error"]["reference_message"]
                                                            if "error" in v else "accepted a reject- case"))
        text = json.dumps(v, separators=(",", ":")) + "\n"
        total_bytes += len(text)
        with open(os.path.join(a.out, fn), "w") as f:
            f.write(text)
    print("gen_vectors: %d vectors, %d bytes in %s" % (len(cases), total_bytes, os.path.relpath(a.out)))


if __name__ == "__main__":
    main()
