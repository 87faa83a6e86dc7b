#!/usr/bin/env python3
"""The dropblock command-line tool against the executable spec's command line.

  test_cli.py --cli build/client/dropblock [--spec-dir DIR] [--backends cpu,opencl,vulkan]

For every backend that `dropblock devices --local` lists (or --backends), each case runs as
`dropblock run --local --backend B ... --format hex|dec`, and its stdout must be byte-identical to
`dropblock_ref.py ... --format hex|dec` with the same flags: that output is committed in
tests/refvectors/cli.json (refvectors.py; tools/gen_refvectors.py makes it from the questions in
reference_requests()), and also computed live where the spec is found ($DROPBLOCK_SPEC_DIR or
--spec-dir, else ../shared/spec beside the source tree). Then the tool's own behaviour:
exit status 2 and a message for bad arguments, .npy input/output round trips (with a small .npy
writer and reader here, so numpy is not needed), the packed mask file, and malformed .npy files.
DropBlock3D: vectors of tests/vectors3d (dropblock_ref.py's dropblock3d) run from a 5-D .npy
input (--output's 5-D .npy and --mask checked too) and from --shape N,C,D,H,W with their
tf-uniform input, D = 1 also as the same 4-D request; the 5-D flags' refusals.
$DROPBLOCK_SOCKET points at a path where no daemon is, for the no-daemon messages; the same
comparisons through a running dropblockd are test_cli_daemon.py's (it imports this module).
Python standard library only.
"""
import argparse
import concurrent.futures as cf
import json
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refvectors  # noqa: E402
from testlib import Vector3D  # noqa: E402

U64_MAX = (1 << 64) - 1


class Ctx:
    cli = None
    ref = None          # refvectors.Reference("cli"): dropblock_ref.py's output, inputs and masks
    tmp = None


def run(cmd, timeout=300):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def cli(*args):
    return run([Ctx.cli] + [str(a) for a in args])


def ref_cli(args):
    """(rc, stdout, stderr) of `dropblock_ref.py ARGS`."""
    return Ctx.ref.cli(args)


# ---------------------------------------------------------------- reference comparisons
def matrix():
    """(name, flags) with flags valid for dropblock_ref.py; --format is added per case."""
    cases = []
    for layout in ("NCHW", "NHWC"):
        for dtype in ("f32", "f16", "bf16"):
            L = ["--layout", layout, "--dtype", dtype]
            cases += [
                ("odd block %s %s" % (layout, dtype),
                 L + ["--shape", "2,3,9,7", "--block", "3,2", "--rate", "0.2", "--seed", "42", "--stream", "5"]),
                ("keras_cv %s %s" % (layout, dtype),
                 L + ["--shape", "2,3,7,9", "--block", "3", "--rate", "0.5", "--seed", "7", "--compat", "keras_cv"]),
                ("share channels, sample %s %s" % (layout, dtype),
                 L + ["--shape", "3,2,6,6", "--block", "2", "--rate", "0.3", "--seed", "9", "--share-channels",
                      "--normalize", "sample", "--input", "tf-uniform:5,6"]),
            ]
    cases += [
        ("defaults", ["--shape", "1,2,8,8"]),
        ("share batch, none", ["--shape", "3,2,7,7", "--block", "3", "--rate", "0.4", "--share-batch",
                               "--normalize", "none"]),
        ("share both NHWC f16", ["--shape", "3,2,7,7", "--block", "2,3", "--rate", "0.4", "--share-batch",
                                 "--share-channels", "--layout", "NHWC", "--dtype", "f16"]),
        ("backward", ["--shape", "2,3,8,8", "--block", "3", "--rate", "0.3", "--seed", "11", "--backward"]),
        ("backward keras_cv NHWC bf16", ["--shape", "2,3,8,8", "--block", "3", "--rate", "0.3", "--seed", "11",
                                         "--backward", "--compat", "keras_cv", "--layout", "NHWC", "--dtype", "bf16"]),
        ("eval", ["--shape", "2,3,8,8", "--block", "3", "--rate", "0.3", "--eval", "--dtype", "f16"]),
        ("u64 seed and stream", ["--shape", "2,3,9,9", "--block", "3", "--rate", "0.3",
                                 "--seed", "18446744073709551557", "--stream", str(U64_MAX)]),
        ("keras_cv u64 seed, stream 7", ["--shape", "2,3,9,9", "--block", "3", "--rate", "0.3", "--compat",
                                         "keras_cv", "--seed", str(U64_MAX - 15), "--stream", "7"]),
        ("keras_cv H>W, block > map", ["--shape", "1,2,9,5", "--block", "9,3", "--rate", "0.5", "--compat",
                                       "keras_cv"]),
        ("u64 tf-uniform seed", ["--shape", "1,3,5,37", "--block", "3,2", "--rate", "0.2",
                                 "--input", "tf-uniform:%d,3" % U64_MAX]),
        ("SPEC 6: 1x1x7x7 rate 1 block 7", ["--shape", "1,1,7,7", "--rate", "1", "--block", "7"]),
        ("rate 0", ["--shape", "2,2,5,5", "--rate", "0", "--block", "2"]),
        ("rate 1 block 3", ["--shape", "2,2,8,8", "--rate", "1", "--block", "3", "--layout", "NHWC"]),
        ("block larger than map", ["--shape", "2,3,5,6", "--rate", "0.5", "--block", "7,9", "--dtype", "bf16"]),
        ("1x1 maps", ["--shape", "3,7,1,1", "--rate", "0.5", "--block", "3"]),
        ("width 100", ["--shape", "2,1,4,100", "--rate", "0.15", "--block", "1,33", "--layout", "NHWC"]),
        ("rate needing double rounding", ["--shape", "1,2,12,12", "--rate", "0.333333343267", "--block", "3"]),
        ("--flag=value syntax", ["--shape=2,2,6,6", "--rate=0.4", "--block=2", "--seed=3", "--layout=NHWC"]),
    ]
    out = [(n, f, "hex") for n, f in cases]
    dec = [c for c in cases if c[0].startswith(("odd block", "keras_cv N", "eval", "SPEC", "block larger"))]
    out += [(n + " (dec)", f, "dec") for n, f in dec]
    return out


def local_engine(backend):
    """The engine flags of a local run on one backend; test_cli_daemon.py passes the daemon's."""
    return ["--local", "--backend", backend]


def compare_case(backend, flags, fmt, ref_out, engine=None):
    rc, out, err = cli("run", *(engine or local_engine(backend)), *flags, "--format", fmt)
    if rc != 0:
        return False, "exit %d: %s" % (rc, err.strip())
    if ref_out[0] != 0:
        return False, "the reference failed: " + ref_out[2].strip()[-300:]
    if out != ref_out[1]:
        a, b = json.loads(out), json.loads(ref_out[1])
        for k in ("kept", "total", "scale_bits"):
            if a.get(k) != b.get(k):
                return False, "%s: dropblock %s, reference %s" % (k, a.get(k), b.get(k))
        va, vb = a.get("values", []), b.get("values", [])
        for i, (x, y) in enumerate(zip(va, vb)):
            if x != y:
                return False, "value %d: dropblock %s, reference %s" % (i, x, y)
        return False, "stdout differs (%d vs %d bytes)" % (len(out), len(ref_out[1]))
    return True, ""


# ---------------------------------------------------------------- tiny .npy writer and reader
def npy_bytes(descr, shape, data, version=(1, 0), fortran=False, quote="'", tight=False):
    """An .npy image as numpy writes it (or with other quoting/spacing, to test the parser)."""
    q = quote
    shp = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    if tight:
        d = "{%sdescr%s:%s%s%s,%sshape%s:%s,%sfortran_order%s:%s}" % (q, q, q, descr, q, q, q, shp, q, q,
                                                                      "True" if fortran else "False")
    else:
        d = "{%sdescr%s: %s%s%s, %sfortran_order%s: %s, %sshape%s: %s, }" % (
            q, q, q, descr, q, q, q, "True" if fortran else "False", q, q, shp)
    pre = 10 if version[0] == 1 else 12
    hlen = len(d) + 1
    pad = 64 - (pre + hlen) % 64
    h = (d + " " * pad + "\n").encode()
    size = struct.pack("<H", len(h)) if version[0] == 1 else struct.pack("<I", len(h))
    return b"\x93NUMPY" + bytes(version) + size + h + data


def npy_parse(b):
    """(descr, fortran, shape, header_total, data) of an .npy image written by the tool."""
    assert b[:6] == b"\x93NUMPY", "bad magic"
    assert b[6:8] == b"\x01\x00", "version %r" % b[6:8]
    hl = struct.unpack("<H", b[8:10])[0]
    h = b[10:10 + hl].decode()
    assert h.endswith("\n"), "header does not end with a newline"
    d = eval(h, {"__builtins__": {}}, {"True": True, "False": False})   # a dict literal, as numpy reads it
    return d["descr"], d["fortran_order"], tuple(d["shape"]), 10 + hl, b[10 + hl:]


def physical(shape, layout):
    N, C, H, W = shape
    return (N, C, H, W) if layout == "NCHW" else (N, H, W, C)


def size(shape):
    return shape[0] * shape[1] * shape[2] * shape[3]


def tf_input(shape, dtype, s0, s1):
    """The bits of `--input tf-uniform:s0,s1` (physical order), from the spec."""
    return Ctx.ref.tf_input(size(shape), dtype, s0, s1)


def pack(bits, dtype):
    return struct.pack("<%d%s" % (len(bits), "I" if dtype == "f32" else "H"), *bits)


DESCR = {"f32": "<f4", "f16": "<f2", "bf16": "<u2"}


NPY_SHAPE, NPY_SEEDS = (2, 3, 6, 5), (12, 34)


def npy_flags(layout):
    return ["--block", "3,2", "--rate", "0.3", "--seed", "99", "--layout", layout]


def npy_ref_args(layout, dtype):
    """The reference's run with the round trip's input given as tf-uniform."""
    return (npy_flags(layout) + ["--shape", ",".join(map(str, NPY_SHAPE))] +
            ["--dtype", dtype, "--input", "tf-uniform:%d,%d" % NPY_SEEDS])


def npy_roundtrip(backend, layout, dtype, give_dtype, give_shape, engine=None):
    shape, (s0, s1) = NPY_SHAPE, NPY_SEEDS
    flags = npy_flags(layout)
    sflag = ["--shape", ",".join(map(str, shape))]
    x = tf_input(shape, dtype, s0, s1)
    path = os.path.join(Ctx.tmp, "in-%s-%s-%s-%d%d.npy" % (backend, layout, dtype, give_dtype, give_shape))
    outp = path.replace("in-", "out-")
    with open(path, "wb") as f:
        f.write(npy_bytes(DESCR[dtype], physical(shape, layout), pack(x, dtype)))
    rrc, rout, rerr = ref_cli(npy_ref_args(layout, dtype))
    if rrc:
        return False, "reference failed: " + rerr[-300:]
    args = ["run"] + (engine or local_engine(backend)) + flags + ["--input", path, "--output", outp, "--format", "hex"]
    args += (["--dtype", dtype] if give_dtype else []) + (sflag if give_shape else [])
    rc, out, err = cli(*args)
    if rc:
        return False, "exit %d: %s" % (rc, err.strip())
    if out != rout:
        return False, "stdout with the .npy input differs from the reference with tf-uniform input"
    with open(outp, "rb") as f:
        descr, fortran, shp, htotal, data = npy_parse(f.read())
    if (descr, fortran, shp) != (DESCR[dtype], False, physical(shape, layout)):
        return False, "output header %r %r %r" % (descr, fortran, shp)
    if htotal % 64:
        return False, "data starts at %d, not a multiple of 64" % htotal
    want = json.loads(rout)["values"]
    width = 8 if dtype == "f32" else 4
    n = len(want)
    got = struct.unpack("<%d%s" % (n, "I" if dtype == "f32" else "H"), data) if len(data) == n * width // 2 else None
    if got is None:
        return False, "output data is %d bytes, expected %d" % (len(data), n * width // 2)
    if ["0x%0*x" % (width, b) for b in got] != want:
        return False, "output .npy values differ from --format hex"
    # --output alone prints nothing
    rc, out, err = cli(*[a for a in args if a not in ("--format", "hex")])
    if rc or out:
        return False, "--output without --format: exit %d, stdout %r" % (rc, out[:80])
    return True, ""


def expect_fail(args, code, words, name=None):
    rc, out, err = cli(*args)
    if rc != code:
        return False, "exit %d, expected %d (stderr: %s)" % (rc, code, err.strip()[:300])
    if not err.startswith("dropblock: "):
        return False, "stderr does not start with 'dropblock: ': %r" % err[:200]
    for w in words:
        if w.lower() not in err.lower():
            return False, "message %r does not mention %r" % (err.strip(), w)
    if out:
        return False, "stdout not empty: %r" % out[:100]
    return True, ""


def bad_arg_checks():
    base = ["run", "--local", "--backend", "cpu", "--shape", "1,2,5,5"]
    base5 = ["run", "--local", "--backend", "cpu", "--shape", "1,2,3,5,5"]
    two = [
        ("unknown flag", base + ["--frobnicate"], ["unknown option --frobnicate"]),
        ("--rate 2", base + ["--rate", "2"], ["rate", "[0, 1]"]),
        ("--rate nan", base + ["--rate", "nan"], ["rate", "nan"]),
        ("--rate -0.5", base + ["--rate", "-0.5"], ["rate"]),
        ("--rate abc", base + ["--rate", "abc"], ["--rate abc"]),
        ("--rate empty", base + ["--rate", ""], ["--rate"]),
        ("--block 0", base + ["--block", "0"], ["block", "0"]),
        ("--block 3,0", base + ["--block", "3,0"], ["block width"]),
        ("--block 1,2,3", base + ["--block", "1,2,3"], ["--block 1,2,3", "5-D shape", "B or BH,BW"]),
        ("--block 1,2,3,4", base + ["--block", "1,2,3,4"], ["--block 1,2,3,4", "BD,BH,BW"]),
        ("3-D: --block 3,2", base5 + ["--block", "3,2"], ["--block 3,2", "5-D shape", "BD,BH,BW"]),
        ("3-D: --block 0,2,2", base5 + ["--block", "0,2,2"], ["block depth 0"]),
        ("3-D: --block 2,0,2", base5 + ["--block", "2,0,2"], ["block height 0"]),
        ("3-D: --layout NCDHW, 4-D shape", base + ["--layout", "NCDHW"], ["--layout NCDHW", "5-D shape", "NCHW"]),
        ("3-D: --layout NDHWC, 4-D shape", base + ["--layout", "NDHWC"], ["--layout NDHWC", "5-D shape"]),
        ("3-D: --layout ncdhw", base5 + ["--layout", "ncdhw"], ["--layout ncdhw", "NCDHW or NDHWC"]),
        ("3-D: --shape D 0", ["run", "--local", "--shape", "1,2,0,4,5"], ["shape D is 0"]),
        ("3-D: --shape of 6", ["run", "--local", "--shape", "1,2,3,4,5,6"], ["--shape 1,2,3,4,5,6", "N,C,D,H,W"]),
        ("3-D: D x H x W over 2^31", ["run", "--local", "--shape", "1,1,2048,1024,1025"], ["D x H x W", "2^31"]),
        ("3-D: keras_cv", base5 + ["--compat", "keras_cv"], ["keras_cv", "3-D"]),
        ("--shape 1,2,3", ["run", "--local", "--shape", "1,2,3"], ["--shape 1,2,3", "N,C,H,W"]),
        ("--shape 0,1,1,1", ["run", "--local", "--shape", "0,1,1,1"], ["shape N is 0"]),
        ("--shape over 2^40", ["run", "--local", "--shape", "1024,1024,1024,1025"], ["2^40"]),
        ("--shape missing", ["run", "--local", "--rate", "0.5"], ["--shape is required"]),
        ("--seed -1", base + ["--seed", "-1"], ["--seed -1", "unsigned 64-bit"]),
        ("--seed 2^64", base + ["--seed", "18446744073709551616"], ["--seed 18446744073709551616"]),
        ("--seed 0x10", base + ["--seed", "0x10"], ["--seed 0x10"]),
        ("--stream abc", base + ["--stream", "abc"], ["--stream abc"]),
        ("--dtype f64", base + ["--dtype", "f64"], ["--dtype f64", "f32, f16 or bf16"]),
        ("--layout XYZ", base + ["--layout", "XYZ"], ["--layout XYZ", "NCHW or NHWC"]),
        ("--normalize batch", base + ["--normalize", "batch"], ["--normalize batch"]),
        ("--compat torch", base + ["--compat", "torch"], ["--compat torch"]),
        ("--format xml", base + ["--format", "xml"], ["--format xml"]),
        ("--backend metal", base + ["--backend", "metal"], ["--backend metal"]),
        ("missing value", base + ["--rate"], ["--rate needs a value"]),
        ("flag with a value", base + ["--eval=1"], ["--eval takes no value"]),
        ("positional argument", base + ["extra"], ["unexpected argument"]),
        ("--input tf-uniform:1", base + ["--input", "tf-uniform:1"], ["tf-uniform:S0,S1"]),
        ("--input tf-uniform:-1,2", base + ["--input", "tf-uniform:-1,2"], ["tf-uniform"]),
        ("keras_cv with sample", base + ["--compat", "keras_cv", "--normalize", "sample"], ["keras_cv"]),
        ("keras_cv with share", base + ["--compat", "keras_cv", "--share-channels"], ["keras_cv"]),
        ("keras_cv division by zero", base + ["--compat", "keras_cv", "--block", "6"], ["divide by zero"]),
        ("keras_cv all dropped", ["run", "--local", "--backend", "cpu", "--shape", "1,1,3,3", "--block", "3",
                                  "--rate", "1", "--compat", "keras_cv"], ["every unit was dropped"]),
        ("--device of another backend", base + ["--device", "opencl:0"], ["not a device of --backend cpu"]),
        ("--device 99", base + ["--device", "99"], ["cpu:99", "not found"]),
        ("--device 99 without backend", ["run", "--local", "--shape", "1,1,4,4", "--device", "99"], ["only"]),
        ("--device garbage", base + ["--device", "gpu"], ["--device gpu"]),
        ("unknown command", ["frob"], ["unknown command"]),
        ("no command", ["--local"], []),
        ("devices: unknown flag", ["devices", "--local", "--verbose"], ["unknown option --verbose"]),
    ]
    checks = []
    for name, args, words in two:
        if name == "no command":
            checks.append(("bad args: " + name, lambda a=args: usage_on_stderr(a)))
        else:
            checks.append(("bad args: " + name, lambda a=args, w=words: expect_fail(a, 2, w)))
    one = [
        # no daemon (main() points $DROPBLOCK_SOCKET at a path where none is): say so, and how to start one
        ("no --local", ["run", "--shape", "1,1,4,4"], ["no dropblockd is reachable", "no-daemon.sock",
                                                       "dropblockd --socket", "--local"]),
        ("no --local, --socket", ["--socket", "/tmp/x.sock", "run", "--shape", "1,1,4,4"], ["/tmp/x.sock"]),
        ("devices without --local", ["devices"], ["no dropblockd is reachable", "--local"]),
        ("missing .npy", base[:4] + ["--input", os.path.join(Ctx.tmp, "nonexistent.npy")], ["cannot open"]),
        ("unwritable --output", base + ["--output", os.path.join(Ctx.tmp, "no", "such", "dir.npy")],
         ["cannot create"]),
    ]
    for name, args, words in one:
        checks.append(("failure: " + name, lambda a=args, w=words: expect_fail(a, 1, w)))
    return checks


def usage_on_stderr(args):
    rc, out, err = cli(*args)
    return (rc == 2 and "usage:" in err and not out), "exit %d, stderr %r" % (rc, err[:100])


def help_checks():
    def h(args, words):
        rc, out, err = cli(*args)
        if rc or not all(w in out for w in words):
            return False, "exit %d, stdout %r" % (rc, out[:200])
        return True, ""
    return [
        ("--help", lambda: h(["--help"], ["usage: dropblock", "run", "devices", "status", "stop", "--socket",
                                          "--local"])),
        ("run --help", lambda: h(["run", "--help"], ["--shape", "--rate", "--input", "--output", "--mask",
                                                     "--format", "--device", "--backend"])),
        ("run --help: DropBlock3D", lambda: h(["run", "--help"], ["N,C,D,H,W", "NCDHW|NDHWC", "BD,BH,BW",
                                                                  "N,D,H,W,C", "(((n*C+c)*D+d)*H+h)*W+w"])),
        ("devices --help", lambda: h(["devices", "--help"], ["usage: dropblock devices"])),
        ("schedule in --help", lambda: h(["--help"], ["schedule", "--linear", "--group"])),
        ("schedule --help", lambda: h(["schedule", "--help"], ["--rate", "--linear", "--step", "--steps", "--group",
                                                               "4^(4-G)"])),
        ("help schedule", lambda: h(["help", "schedule"], ["usage: dropblock schedule"])),
        ("summary without --format", lambda: h(["run", "--local", "--backend", "cpu", "--shape", "2,3,9,7"],
                                               ["device cpu:0", "kept K", "scale", "time"])),
        ("summary of a 3-D job", lambda: h(["run", "--local", "--backend", "cpu", "--shape", "2,3,5,7,6", "--block",
                                            "3", "--layout", "NHWC", "--rate", "0.2", "--seed", "1", "--stream", "2"],
                                           ["request 2x3x5x7x6 NDHWC f32, rate 0.2, block 3x3x3, seed 1",
                                            "kept K 974 of S 1260"])),
        ("summary of a 3-D job with D = 1", lambda: h(["run", "--local", "--backend", "cpu", "--shape", "2,3,1,7,6",
                                                       "--block", "2,3,1"],
                                                      ["request 2x3x1x7x6 NCDHW f32", "block 2x3x1"])),
    ]


# the .npy checks' input is tf-uniform:1,2 of this shape; the reference's run of it
NPY_ERR_SHAPE = (1, 2, 4, 5)
NPY_ERR_REF = ["--shape", "1,2,4,5", "--rate", "0.3", "--block", "2", "--input", "tf-uniform:1,2"]


def npy_error_checks():
    shape, dtype = NPY_ERR_SHAPE, "f32"
    x = pack(tf_input(shape, dtype, 1, 2), dtype)
    good = npy_bytes("<f4", shape, x)

    def write(name, data):
        p = os.path.join(Ctx.tmp, name)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def ok_same(path, extra=()):
        rc, out, err = cli("run", "--local", "--backend", "cpu", "--input", path, "--rate", "0.3", "--block", "2",
                           "--format", "hex", *extra)
        rrc, rout, _ = ref_cli(NPY_ERR_REF)
        return (rc == 0 and out == rout), "exit %d %s" % (rc, err.strip())

    run_in = lambda p, *extra: ["run", "--local", "--backend", "cpu", "--input", p, *extra]
    bf = npy_bytes("<u2", shape, pack(tf_input(shape, "bf16", 1, 2), "bf16"))
    f16 = npy_bytes("<f2", shape, pack(tf_input(shape, "f16", 1, 2), "f16"))
    return [
        ("npy: version 2.0 header", lambda: ok_same(write("v2.npy", npy_bytes("<f4", shape, x, version=(2, 0))))),
        ("npy: version 3.0 header", lambda: ok_same(write("v3.npy", npy_bytes("<f4", shape, x, version=(3, 0))))),
        ("npy: double quotes, no spaces, other key order",
         lambda: ok_same(write("dq.npy", npy_bytes("<f4", shape, x, quote='"', tight=True)))),
        ("npy: --shape that matches", lambda: ok_same(write("good.npy", good), ["--shape", "1,2,4,5"])),
        ("npy: --shape that does not match",
         lambda: expect_fail(run_in(write("good2.npy", good), "--shape", "1,2,5,4"), 2, ["does not match"])),
        ("npy: NHWC reads the file as N,H,W,C",
         lambda: expect_fail(run_in(write("good3.npy", good), "--shape", "1,2,4,5", "--layout", "NHWC"), 2,
                             ["does not match", "N,H,W,C"])),
        ("npy: truncated data", lambda: expect_fail(run_in(write("trunc.npy", good[:-3])), 2,
                                                    ["truncated", "160", "157"])),
        ("npy: extra bytes", lambda: expect_fail(run_in(write("extra.npy", good + b"\0")), 2, ["extra bytes"])),
        ("npy: truncated header", lambda: expect_fail(run_in(write("th.npy", good[:40])), 2, ["truncated"])),
        ("npy: bad magic", lambda: expect_fail(run_in(write("magic.npy", b"PK" + good[2:])), 2, ["not an .npy"])),
        ("npy: version 4.0", lambda: expect_fail(run_in(write("v4.npy", good[:6] + b"\x04\x00" + good[8:])), 2,
                                                  ["version 4.0"])),
        ("npy: Fortran order", lambda: expect_fail(run_in(write("fortran.npy", npy_bytes("<f4", shape, x,
                                                                                           fortran=True))),
                                                   2, ["Fortran order"])),
        ("npy: big-endian", lambda: expect_fail(run_in(write("be.npy", npy_bytes(">f4", shape, x))), 2,
                                                ["big-endian"])),
        ("npy: float64", lambda: expect_fail(run_in(write("f8.npy", npy_bytes("<f8", shape, x + x))), 2,
                                             ["'<f8' is not supported"])),
        ("npy: negative dimension", lambda: expect_fail(run_in(write("neg.npy", npy_bytes("<f4", (1, -2, 4, 5),
                                                                                          x))), 2, ["negative"])),
        ("npy: 3 dimensions", lambda: expect_fail(run_in(write("3d.npy", npy_bytes("<f4", (2, 4, 5), x))), 2,
                                                  ["3 dimensions"])),
        ("npy: 6 dimensions", lambda: expect_fail(run_in(write("6d.npy", npy_bytes("<f4", (1, 2, 1, 4, 5, 1), x))), 2,
                                                  ["6 dimensions", "N,C,H,W", "N,C,D,H,W"])),
        ("npy: 5 dimensions with a 4-D --shape",
         lambda: expect_fail(run_in(write("5d.npy", npy_bytes("<f4", (1, 2, 1, 4, 5), x)), "--shape", "1,2,4,5"), 2,
                             ["--shape 1,2,4,5 does not match", "N,C,D,H,W"])),
        ("npy: 5 dimensions NDHWC with another --shape",
         lambda: expect_fail(run_in(write("5d2.npy", npy_bytes("<f4", (1, 2, 1, 4, 5), x)), "--shape", "1,2,1,4,5",
                                    "--layout", "NDHWC"), 2, ["does not match", "N,D,H,W,C", "1,5,2,1,4"])),
        ("npy: 4 dimensions with --layout NCDHW",
         lambda: expect_fail(run_in(write("4d3.npy", good), "--layout", "NCDHW"), 2, ["--layout NCDHW", "5-D"])),
        ("npy: 5 dimensions with --block BH,BW",
         lambda: expect_fail(run_in(write("5d3.npy", npy_bytes("<f4", (1, 2, 1, 4, 5), x)), "--block", "2,2"), 2,
                             ["--block 2,2", "BD,BH,BW"])),
        ("npy: huge shape in a small file",
         lambda: expect_fail(run_in(write("huge.npy", npy_bytes("<f4", (1 << 20, 1 << 20, 1 << 10, 1), x))),
                             2, ["truncated", str(1 << 52), "160"])),
        ("npy: shape whose size overflows 64 bits",
         lambda: expect_fail(run_in(write("ovf.npy", npy_bytes("<f4", (1 << 40, 1 << 40, 1, 1), x))), 2,
                             ["overflows"])),
        ("npy: bf16 as '<u2' needs --dtype bf16",
         lambda: expect_fail(run_in(write("bf.npy", bf)), 2, ["'<u2'", "--dtype bf16"])),
        ("npy: '<u2' with --dtype f16", lambda: expect_fail(run_in(write("bf2.npy", bf), "--dtype", "f16"), 2,
                                                            ["'<u2'", "f16"])),
        ("npy: f16 file with --dtype f32", lambda: expect_fail(run_in(write("h.npy", f16), "--dtype", "f32"), 2,
                                                               ["f16", "f32"])),
        ("npy: f32 file with --dtype bf16", lambda: expect_fail(run_in(write("g.npy", good), "--dtype", "bf16"), 2,
                                                                ["bf16"])),
    ]


# ---------------------------------------------------------------- dropblock schedule
def f32_bits(x):
    """float32 bits of a Python float (one rounding, to nearest even)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def rn32(q):
    """The float32 bits nearest the nonnegative Fraction q, ties to even: exact, no float math."""
    return f32_bits(refvectors.rne_f32(q))


def schedule_oracle(rate, step=None, steps=None, group=None):
    """Bits of the documented schedule, from exact rationals: the float32 target, ramped
    (rounded once), then divided by 4^(4-group) (rounded once)."""
    from fractions import Fraction

    def value(bits):
        return Fraction(struct.unpack("<f", struct.pack("<I", bits))[0])
    t = value(f32_bits(float(rate)))
    if step is not None and steps != 0 and step < steps:
        t = value(rn32(t * step / steps))
    if group is not None:
        t = t / 4 ** (4 - group)
    return rn32(t)


def schedule_case(rate, step=None, steps=None, group=None):
    args = ["schedule", "--rate", rate, "--format", "hex"]
    if step is not None:
        args += ["--linear", "--step", step, "--steps", steps]
    if group is not None:
        args += ["--group", group]
    rc, out, err = cli(*args)
    want = "0x%08x" % schedule_oracle(rate, step, steps, group)
    if rc or out != want + "\n":
        return False, "%s: exit %d, stdout %r, expected %s (stderr %r)" % (" ".join(map(str, args)), rc, out, want,
                                                                           err.strip())
    # the decimal form reads back as the same float32
    rc, out, err = cli(*[a for a in args if a not in ("--format", "hex")])
    if rc or "0x%08x" % f32_bits(float(out)) != want:
        return False, "%s without --format: exit %d, stdout %r, expected the float32 %s" % (" ".join(map(str, args)),
                                                                                        rc, out, want)
    return True, ""


def schedule_checks():
    import random
    rnd = random.Random(5)
    cases = [("0.1", 0, 100, None), ("0.1", 100, 100, None), ("0.1", 101, 100, None), ("0.1", 5, 0, None),
             ("0.1", 500, 1000, 3), ("0.1", 1, 3, None), ("1", 1, 3, None), ("1", 1, (1 << 64) - 1, None),
             ("0.1", (1 << 64) - 2, (1 << 64) - 1, None), ("0.1", 1 << 63, (1 << 64) - 2, 1),
             ("1e-45", 1, 2, None), ("1e-45", 3, 4, None), ("0", 3, 4, 2), ("1", 0, 0, 1)]
    cases += [("0.1", None, None, g) for g in (1, 2, 3, 4)] + [("1e-45", None, None, 3)]
    for _ in range(40):
        steps = rnd.choice([rnd.randrange(1, 1 << 12), rnd.randrange(1, 1 << 40), rnd.randrange(1, 1 << 64)])
        cases.append(("%.9g" % rnd.random(), rnd.randrange(0, steps + 2), steps, rnd.choice([None, 1, 2, 3, 4])))
    checks = [("schedule %s" % (c,), lambda c=c: schedule_case(*c)) for c in cases]
    bad = [
        ("rate 1.5", ["--rate", "1.5", "--group", "4"], ["--rate 1.5", "[0, 1]"]),
        ("rate -0.1", ["--rate", "-0.1", "--linear", "--step", "1", "--steps", "2"], ["--rate -0.1"]),
        ("rate nan", ["--rate", "nan", "--group", "4"], ["--rate nan"]),
        ("rate missing", ["--group", "4"], ["--rate is required"]),
        ("negative step", ["--rate", "0.1", "--linear", "--step", "-1", "--steps", "10"], ["--step -1", "unsigned"]),
        ("negative steps", ["--rate", "0.1", "--linear", "--step", "1", "--steps", "-10"], ["--steps -10"]),
        ("steps over 2^64", ["--rate", "0.1", "--linear", "--step", "1", "--steps", str(1 << 64)], ["--steps"]),
        ("group 0", ["--rate", "0.1", "--group", "0"], ["--group 0", "1, 2, 3 or 4"]),
        ("group 5", ["--rate", "0.1", "--group", "5"], ["--group 5"]),
        ("group -1", ["--rate", "0.1", "--group", "-1"], ["--group -1"]),
        ("linear without steps", ["--rate", "0.1", "--linear", "--step", "3"], ["--linear needs --step and --steps"]),
        ("step without linear", ["--rate", "0.1", "--step", "3", "--steps", "4"], ["--linear"]),
        ("nothing to do", ["--rate", "0.1"], ["--linear, --group"]),
        ("unknown flag", ["--rate", "0.1", "--group", "4", "--cosine"], ["unknown option --cosine"]),
        ("bad format", ["--rate", "0.1", "--group", "4", "--format", "bin"], ["--format bin"]),
    ]
    checks += [("schedule bad args: " + n, lambda a=a, w=w: expect_fail(["schedule"] + a, 2, w)) for n, a, w in bad]
    return checks


MASK_SHAPE = (2, 3, 7, 9)


def mask_check(backend, engine=None):
    shape, flags = MASK_SHAPE, ["--block", "3,2", "--rate", "0.3", "--seed", "5", "--stream", "6"]
    path = os.path.join(Ctx.tmp, "mask-%s.bin" % backend)
    rc, out, err = cli("run", *(engine or local_engine(backend)), "--shape", ",".join(map(str, shape)), *flags,
                       "--mask", path, "--format", "hex")
    if rc:
        return False, "exit %d: %s" % (rc, err.strip())
    want = Ctx.ref.keep_mask(shape, 0.3, (3, 2), 5, 6)     # packed: bit i of byte i/8
    with open(path, "rb") as f:
        got = f.read()
    if got != want:
        return False, "mask file (%d bytes) differs from the spec's keep mask (%d bytes)" % (len(got), len(want))
    if json.loads(out)["kept"] != sum(bin(b).count("1") for b in want):
        return False, "kept differs from the mask's ones"
    return True, ""


# ---------------------------------------------------------------- DropBlock3D (tests/vectors3d)
# how each vector runs: from a 5-D .npy (with --output and --mask), from --shape N,C,D,H,W and its
# tf-uniform input (the block as one integer where it is a cube, the layout by its 2-D name, which
# dropblock_ref.py takes too), and D = 1 as the 4-D request
VECTORS3D_NPY = ["cube-3-NDHWC-f32", "box-2x3x1-NCDHW-bf16", "share-both-NDHWC-f16", "u64-seed-stream-NCDHW-f32",
                 "d1-is-2d-NDHWC-f16"]
VECTORS3D_SHAPE = ["cube-3-NCDHW-f16", "normalize-sample-NDHWC-bf16", "block-gt-volume-NCDHW-f32", "eval-NDHWC-f32"]
VECTORS3D_AS_2D = ["d1-is-2d-NCDHW-f32", "d1-is-2d-NDHWC-bf16"]


def vec3d_flags(v, block):
    q = v.req
    return (["--block", block, "--rate", v.rate, "--seed", q["seed"], "--stream", q["stream"],
             "--normalize", q["normalize"]] + (["--share-channels"] if q["share_channels"] else []) +
            (["--share-batch"] if q["share_batch"] else []) + ([] if q["training"] else ["--eval"]))


def vec3d_stdout_problem(v, rc, out, err):
    if rc:
        return "exit %d: %s" % (rc, err.strip())
    a = json.loads(out)
    got = (a.get("kept"), a.get("total"), a.get("scale_bits"))
    if got != (v.kept, v.total, v.scale_bits):
        return "kept, total, scale_bits %r, expected %r" % (got, (v.kept, v.total, v.scale_bits))
    for i, (x, y) in enumerate(zip(a.get("values", []), v.values)):
        if x != y:
            return "value %d: dropblock %s, expected %s" % (i, x, y)
    if len(a.get("values", [])) != len(v.values):
        return "%d values, expected %d" % (len(a.get("values", [])), len(v.values))
    return None


def vec3d_case(backend, name, how, engine=None):
    """One vector through the tool; how: "npy" (a 5-D .npy input, --output, --mask), "shape"
    (--shape N,C,D,H,W with tf-uniform input) or "2d" (D = 1 as a 4-D .npy and a 4-D block)."""
    v = Vector3D(name)
    N, C, D, H, W = v.shape
    eng = engine or local_engine(backend)
    tag = "%s-%s-%s" % (backend, name, how)
    if how == "shape":
        cube = len(set(v.block)) == 1
        args = (["run"] + eng + ["--shape", ",".join(map(str, v.shape)), "--layout", v.layout2d, "--dtype", v.dtype,
                                 "--input", "tf-uniform:%d,%d" % v.tf_seeds] +
                vec3d_flags(v, str(v.block[0]) if cube else ",".join(map(str, v.block))) + ["--format", "hex"])
        why = vec3d_stdout_problem(v, *cli(*args))
        return why is None, why
    if how == "2d":
        physical, layout, block = ((N, C, H, W) if v.layout == "NCDHW" else (N, H, W, C)), v.layout2d, v.block[1:]
    else:
        physical, layout, block = v.physical, v.layout, v.block
    inp = os.path.join(Ctx.tmp, "v3d-in-%s.npy" % tag)
    outp, maskp = inp.replace("-in-", "-out-"), inp.replace("-in-", "-mask-").replace(".npy", ".bin")
    with open(inp, "wb") as f:
        f.write(npy_bytes(DESCR[v.dtype], physical, v.pack(v.x)))
    args = (["run"] + eng + ["--input", inp, "--layout", layout] + (["--dtype", "bf16"] if v.dtype == "bf16" else []) +
            vec3d_flags(v, ",".join(map(str, block))) + ["--output", outp, "--mask", maskp, "--format", "hex"])
    why = vec3d_stdout_problem(v, *cli(*args))
    if why:
        return False, why
    with open(outp, "rb") as f:
        descr, fortran, shp, _, data = npy_parse(f.read())
    if (descr, fortran, shp) != (DESCR[v.dtype], False, tuple(physical)):
        return False, "--output's header %r %r %r, expected %r of %r" % (descr, fortran, shp, DESCR[v.dtype], physical)
    if v.unpack(data) != v.y:
        return False, "--output's values differ from the expected ones"
    with open(maskp, "rb") as f:
        why = v.mask_problem(f.read())
    return why is None, "--mask: %s" % why


def vec3d_checks(backend, engine=None):
    """(name, fn) of every DropBlock3D case on one backend (or, with engine, one daemon device)."""
    cases = [(n, "npy") for n in VECTORS3D_NPY] + [(n, "shape") for n in VECTORS3D_SHAPE]
    cases += [(n, how) for n in VECTORS3D_AS_2D for how in ("npy", "2d")]
    return [("%s: vectors3d %s (%s)" % (backend, n, how), lambda n=n, how=how: vec3d_case(backend, n, how, engine))
            for n, how in cases]


def reference_requests():
    """Every question this suite asks dropblock_ref.py (tools/gen_refvectors.py answers them)."""
    R = refvectors
    reqs = [R.cli_request(f + ["--format", fmt]) for _, f, fmt in matrix()]
    for layout in ("NCHW", "NHWC"):
        for dtype in ("f32", "f16", "bf16"):
            reqs.append(R.cli_request(npy_ref_args(layout, dtype)))
            reqs.append(dict(R.input_request(dtype, *NPY_SEEDS), n=size(NPY_SHAPE)))
    for dtype in ("f32", "f16", "bf16"):
        reqs.append(dict(R.input_request(dtype, 1, 2), n=size(NPY_ERR_SHAPE)))
    reqs.append(R.cli_request(NPY_ERR_REF))
    reqs.append(R.mask_request(MASK_SHAPE, 0.3, (3, 2), 5, 6))
    return reqs


def discover_backends():
    rc, out, err = cli("devices", "--local")
    if rc:
        sys.exit("test_cli: dropblock devices --local failed (exit %d): %s" % (rc, err.strip()))
    found = []
    for line in out.splitlines():
        api = line.split(":", 1)[0]
        if api and api not in found:
            found.append(api)
    return found, out


def arg_parser(doc):
    """The arguments this test and test_cli_daemon.py both take (--cli, --spec-dir, -j); each adds
    its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--spec-dir", help="dropblock_ref.py's folder (default: $DROPBLOCK_SPEC_DIR, else "
                    "../shared/spec beside the source tree, where it exists)")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    return ap


def setup(a, name):
    """After the arguments: PoCL's cache (when not set), the tool and the reference (said by name)."""
    os.environ.setdefault("POCL_CACHE_DIR", os.path.join(tempfile.gettempdir(), "pocl-cli"))
    Ctx.cli = os.path.abspath(a.cli)
    Ctx.ref = refvectors.Reference("cli", a.spec_dir)
    print(name + ": " + Ctx.ref.describe(), flush=True)


def run_checks(pool, checks):
    """checks ((name, fn), fn giving (ok, why)) run on pool: (name, ok, why) in their order, each
    as it is done; a crash in a check is a failure of that check, not of the run."""
    futures = [(name, pool.submit(fn)) for name, fn in checks]
    for name, fut in futures:
        try:
            ok, why = fut.result()
        except Exception as e:     # a crash in a check is a failure of that check, not of the run
            ok, why = False, "%s: %s" % (type(e).__name__, e)
        yield name, ok, why


def tally(results):
    """(passed, failed) of (name, ok, why) results, each failure printed as it comes."""
    passed = failed = 0
    for name, ok, why in results:
        if ok:
            passed += 1
        else:
            failed += 1
            print("FAIL %s: %s" % (name, why))
    return passed, failed


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--backends", help="comma list; default: every backend `dropblock devices --local` lists")
    a = ap.parse_args()
    setup(a, "test_cli")

    listed, listing = discover_backends()
    backends = a.backends.split(",") if a.backends else listed
    print("test_cli: devices:\n" + listing.rstrip())
    print("test_cli: backends under test: " + ", ".join(backends))

    with tempfile.TemporaryDirectory(prefix="test_cli.") as tmp, cf.ThreadPoolExecutor(a.jobs) as pool:
        Ctx.tmp = tmp
        os.environ["DROPBLOCK_SOCKET"] = os.path.join(tmp, "no-daemon.sock")   # never a real daemon
        cases = matrix()
        refs = {(tuple(f), fmt): pool.submit(ref_cli, f + ["--format", fmt]) for _, f, fmt in cases}
        checks = []
        for b in backends:
            for name, flags, fmt in cases:
                checks.append(("%s: %s" % (b, name),
                               lambda b=b, f=flags, fmt=fmt: compare_case(b, f, fmt,
                                                                                  refs[(tuple(f), fmt)].result())))
            for layout in ("NCHW", "NHWC"):
                for dtype in ("f32", "f16", "bf16"):
                    checks.append(("%s: npy round trip %s %s" % (b, layout, dtype),
                                   lambda b=b, l=layout, d=dtype: npy_roundtrip(b, l, d, d == "bf16", False)))
            checks.append(("%s: npy round trip with --shape and --dtype" % b,
                           lambda b=b: npy_roundtrip(b, "NHWC", "f16", True, True)))
            checks.append(("%s: --mask" % b, lambda b=b: mask_check(b)))
            checks += vec3d_checks(b)
        checks += bad_arg_checks() + help_checks() + npy_error_checks() + schedule_checks()
        passed, failed = tally(run_checks(pool, checks))
    print("test_cli: %d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
