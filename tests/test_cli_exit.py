#!/usr/bin/env python3
"""The exit statuses of the dropblock tool (dropblock --help, README's CLI section):

  0  done
  1  a failure at run time (no daemon, a job or device failure, a file that cannot be opened,
     read or written)
  2  bad usage or bad input: arguments, an invalid request, every problem with what an .npy
     --input holds (truncated, big-endian, a bad header, an unsupported or other dtype), a
     --device the daemon or engine does not have

  test_cli_exit.py --cli build/client/dropblock --daemon build/daemon/dropblockd

The .npy files are written here (no numpy); the runs use the built-in CPU backend (--local
--backend cpu) and a daemon with only cpu:0 (--devices cpu). Needs no spec.
Python standard library only.
"""
import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Daemon, Tally  # noqa: E402

T = Tally()
SHAPE = (1, 2, 4, 5)


def npy(descr, shape, data, fortran=False, magic=b"\x93NUMPY", version=b"\x01\x00", header=None):
    """An .npy file (format 1.0): magic, version, header length, the header dict padded to 64."""
    if header is None:
        dims = "".join("%d, " % s for s in shape) if len(shape) == 1 else ", ".join(str(s) for s in shape)
        header = "{'descr': '%s', 'fortran_order': %s, 'shape': (%s), }" % (descr, fortran, dims)
    h = header.encode("latin-1")
    pad = 64 - (10 + len(h) + 1) % 64
    h += b" " * (pad % 64) + b"\n"
    return magic + version + struct.pack("<H", len(h)) + h + data


def f32s(n):
    return struct.pack("<%df" % n, *[(i % 7) / 7.0 for i in range(n)])


class Ctx:
    cli = None
    tmp = None


def cli(*args):
    p = subprocess.run([Ctx.cli] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=120)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def write(name, data):
    p = os.path.join(Ctx.tmp, name)
    with open(p, "wb") as f:
        f.write(data)
    return p


def expect(what, args, code, words=()):
    rc, out, err = cli(*args)
    ok = T.check(rc == code, "%s: exit %d, expected %d (stderr: %s)" % (what, rc, code, err.strip()[:300]))
    if ok and code:
        T.check(err.startswith("dropblock: ") and all(w.lower() in err.lower() for w in words),
                "%s: the message %r names %r" % (what, err.strip()[:300], list(words)))
    if ok:
        print("ok   %s" % what, flush=True)


def test_npy():
    n = 1
    for s in SHAPE:
        n *= s
    good = npy("<f4", SHAPE, f32s(n))
    run = lambda path, *extra: ["run", "--local", "--backend", "cpu", "--input", path, "--rate", "0.3",  # noqa: E731
                                "--block", "2", *extra]
    expect("a good .npy input runs", run(write("good.npy", good)), 0)
    expect("a good .npy input, --output", run(write("good2.npy", good), "--output", os.path.join(Ctx.tmp, "o.npy")),
           0)
    two = [
        ("truncated data", good[:-3], ["truncated"]),
        ("extra bytes after the data", good + b"\0", ["extra bytes"]),
        ("truncated header", good[:40], ["truncated"]),
        ("a file shorter than the preamble", good[:5], []),
        ("an empty file", b"", []),
        ("bad magic", b"PK" + good[2:], ["not an .npy"]),
        ("version 4.0", npy("<f4", SHAPE, f32s(n), version=b"\x04\x00"), ["version 4.0"]),
        ("big-endian f32", npy(">f4", SHAPE, f32s(n)), ["big-endian"]),
        ("big-endian f16", npy(">f2", SHAPE, f32s(n)[:2 * n]), ["big-endian"]),
        ("float64", npy("<f8", SHAPE, f32s(n) * 2), ["'<f8' is not supported"]),
        ("int32", npy("<i4", SHAPE, f32s(n)), ["'<i4' is not supported"]),
        ("Fortran order", npy("<f4", SHAPE, f32s(n), fortran=True), ["Fortran order"]),
        ("a header that is not a dict", npy("", SHAPE, f32s(n), header="['descr']"), ["dict"]),
        ("an unknown header key", npy("", SHAPE, f32s(n), header="{'descr': '<f4', 'fortran_order': False, "
                                      "'shape': (1, 2, 4, 5), 'x': 1}"), ["unknown key"]),
        ("a header key missing", npy("", SHAPE, f32s(n), header="{'descr': '<f4', 'shape': (1, 2, 4, 5)}"),
         ["missing"]),
        ("a negative dimension", npy("<f4", (1, -2, 4, 5), f32s(n)), ["negative"]),
        ("a shape whose size overflows", npy("<f4", (1 << 40, 1 << 40, 1, 1), f32s(n)), ["overflows"]),
        ("3 dimensions", npy("<f4", (2, 4, 5), f32s(n)), ["3 dimensions"]),
    ]
    for i, (what, data, words) in enumerate(two):
        expect(".npy: " + what, run(write("bad%d.npy" % i, data)), 2, words)
    expect(".npy: an f32 file with --dtype f16", run(write("d.npy", good), "--dtype", "f16"), 2, ["f32", "f16"])
    # what is not about the file's content stays a failure at run time
    expect(".npy: a missing file", run(os.path.join(Ctx.tmp, "nonexistent.npy")), 1, ["cannot open"])
    expect("an --output that cannot be written", run(write("good3.npy", good), "--output",
                                                      os.path.join(Ctx.tmp, "no", "such", "o.npy")), 1,
           ["cannot create"])


def test_devices(daemon):
    base = ["run", "--local", "--backend", "cpu", "--shape", "1,1,4,4"]
    expect("--local: --device cpu:0 runs", base + ["--device", "cpu:0"], 0)
    expect("--local: --device 0 runs", base + ["--device", "0"], 0)
    expect("--local: --device cpu:7", base + ["--device", "cpu:7"], 2, ["cpu:7", "not found"])
    expect("--local: --device 7", base + ["--device", "7"], 2, ["cpu:7", "not found"])
    expect("--local: --device opencl:7 with --backend cpu", base + ["--device", "opencl:7"], 2,
           ["not a device of --backend cpu"])
    sock = ["--socket", daemon.path, "run", "--shape", "1,1,4,4"]
    expect("daemon: --device cpu:0 runs", sock + ["--device", "cpu:0"], 0)
    expect("daemon: --device opencl:7", sock + ["--device", "opencl:7"], 2, ["opencl:7", "not found", "cpu:0"])
    expect("daemon: --device vulkan:0 (not one of its devices)", sock + ["--device", "vulkan:0"], 2,
           ["vulkan:0", "not found"])
    expect("daemon: --device 7 (past its list)", sock + ["--device", "7"], 2, ["only 1 devices"])
    expect("daemon: --backend cpu --device 3", sock + ["--backend", "cpu", "--device", "3"], 2, ["only 1 cpu device"])
    # the daemon's configuration, not the request: a failure at run time
    expect("daemon: --backend opencl (it has none)", sock + ["--backend", "opencl"], 1, ["no opencl device"])
    expect("no daemon", ["--socket", os.path.join(Ctx.tmp, "none.sock"), "run", "--shape", "1,1,4,4"], 1,
           ["no dropblockd"])


def test_help():
    for args in (["--help"], ["run", "--help"]):
        rc, out, err = cli(*args)
        ok = T.check(rc == 0 and "exit status" in out and "  1  a failure at run time" in out
                     and "  2  bad usage or bad input" in out and ".npy" in out and "--device" in out,
                     "dropblock %s documents the exit statuses: %s" % (" ".join(args), out[-800:]))
        if ok:
            print("ok   dropblock %s documents the exit statuses" % " ".join(args))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--daemon", required=True)
    a = ap.parse_args()
    Ctx.cli = os.path.abspath(a.cli)
    Ctx.tmp = tempfile.mkdtemp(prefix="dbcli-exit-")
    try:
        test_help()
        test_npy()
        d = Daemon(a.daemon, "--devices", "cpu")
        try:
            test_devices(d)
        finally:
            d.stop(remove=True)
    finally:
        shutil.rmtree(Ctx.tmp, ignore_errors=True)
    print("test_cli_exit: %d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
