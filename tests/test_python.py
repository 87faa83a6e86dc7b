#!/usr/bin/env python3
"""The Python package (python/dropblock) over libdropblock, against a dropblockd on a temporary
socket and the in-process engine.

Expected bits come from the executable spec, dropblock_ref.py, never from the daemon: committed
in tests/refvectors/python.json for the cases reference_requests() lists (tools/gen_refvectors.py),
and computed live too where the spec is found (--spec-dir, else $DROPBLOCK_SPEC_DIR, else
../shared/spec beside the source tree); schedules are checked against exact rational arithmetic; the ctypes structs against the
compiler's layout (py_abi). Needs NumPy for the array and job checks: without it those are
skipped (exit 77, meson's skip code) after the rest has passed. The PyTorch part runs only where
torch can be imported.

  DROPBLOCK_LIBRARY=build/client/libdropblock.so \
  test_python.py --daemon build/daemon/dropblockd --abi build/tests/py_abi --source-dir .
"""
import argparse
import ctypes
import gc
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from fractions import Fraction

import refvectors
import testlib

T = testlib.Tally()
check = T.check
NOTES = []


def raises(fn, code, contains=""):
    """Runs fn; returns the dropblock.Error it raised if its code is `code` and its message holds
    `contains`, else None."""
    import dropblock
    try:
        fn()
    except dropblock.Error as e:
        if e.code == code and contains in e.message:
            return e
        print("  got", repr(e))
        return None
    except Exception as e:  # noqa: BLE001
        print("  got", repr(e))
        return None
    print("  no error")
    return None


def section(name):
    print("==", name, flush=True)


# ---------------------------------------------------------------- the reference
class Case:
    """One request and its expected output bits (physical order), from dropblock_ref.py through
    ref, a refvectors.Reference (a refvectors.Recorder only collects the request)."""

    def __init__(self, ref, name, shape, layout="NCHW", dtype="f32", rate=0.1, block=7, seed=0, stream=0,
                 normalize="global", share=(), compat="none", training=True, input_seed=(0, 1), negate=False):
        self.name, self.shape, self.layout, self.dtype = name, shape, layout, dtype
        self.rate, self.block, self.seed, self.stream = rate, block, seed, stream
        self.normalize, self.share, self.compat, self.training = normalize, tuple(share), compat, training
        # the input: tf-uniform:S0,S1 (minus 0.5 where negate: signs, so that -0 for dropped
        # negatives is checked too); the packed keep mask where there is one
        self.request = refvectors.run_request(shape, layout, dtype, rate, block, seed, stream, normalize,
                                              "channels" in share, "batch" in share, compat, training, input_seed,
                                              negate, mask=compat == "none" and training and rate != 0)
        want = ref.ask(self.request)
        if want is None:
            return
        self.x_bits, self.y_bits, self.kept, self.total = want.x, want.y, want.kept, want.total
        self.scale_bits, self.keep = want.scale_bits, want.keep

    def physical_shape(self):
        N, C, H, W = self.shape
        return (N, C, H, W) if self.layout == "NCHW" else (N, H, W, C)

    def kwargs(self):
        return dict(seed=self.seed, stream=self.stream, layout=self.layout, normalize=self.normalize,
                    share=self.share, compat=self.compat, training=self.training)

    def x(self, np):
        """The input as a NumPy array of the request's dtype (bf16: uint16 bits)."""
        ut = np.uint32 if self.dtype == "f32" else np.uint16
        dt = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[self.dtype]
        return np.array(self.x_bits, dtype=ut).view(dt).reshape(self.physical_shape())


def bits_of(np, a):
    return a.reshape(-1).view(np.uint32 if a.dtype.itemsize == 4 else np.uint16).tolist()


def make_cases(ref):
    return [
        # the acceptance cases
        Case(ref, "f32 NHWC keras_cv", (2, 3, 9, 7), "NHWC", "f32", 0.2, 3, seed=1234, stream=3, compat="keras_cv"),
        Case(ref, "f16 NCHW canonical", (2, 3, 9, 7), "NCHW", "f16", 0.2, (3, 2), seed=42, stream=5),
        # and the rest of the request space
        Case(ref, "keras-cv doc example", (1, 1, 4, 4), "NHWC", "f32", 0.1, 2, seed=1234, compat="keras_cv"),
        Case(ref, "f16 NHWC keras_cv", (1, 2, 6, 6), "NHWC", "f16", 0.3, 3, seed=7, compat="keras_cv"),
        Case(ref, "bf16 NCHW sample share channels", (3, 2, 8, 5), "NCHW", "bf16", 0.3, 2, seed=9, stream=1,
             normalize="sample", share=("channels",), negate=True),
        Case(ref, "f32 NHWC share batch normalize none", (2, 3, 7, 7), "NHWC", "f32", 0.25, 3, seed=5,
             normalize="none", share=("batch",), negate=True),
        Case(ref, "f32 large seed and stream", (1, 2, 5, 6), "NCHW", "f32", 0.4, (2, 3),
             seed=(1 << 64) - 59, stream=(1 << 63) + 5),
        Case(ref, "f32 block larger than the map", (2, 1, 4, 3), "NCHW", "f32", 0.5, 9, seed=3),
        Case(ref, "f32 eval: identity", (1, 2, 3, 4), "NCHW", "f32", 0.5, 2, training=False),
    ]


# ---------------------------------------------------------------- checks without NumPy
def check_abi(abi_exe):
    from dropblock import _lib
    section("ctypes structs against the compiler's layout")
    layout = json.loads(subprocess.check_output([abi_exe]).decode())
    for name, st in _lib.STRUCTS.items():
        c = layout[name]
        check(ctypes.sizeof(st) == c["size"], "sizeof(%s): ctypes %d, C %d" % (name, ctypes.sizeof(st), c["size"]))
        for field, off in c["fields"].items():
            got = getattr(st, field).offset
            check(got == off, "%s.%s offset: ctypes %d, C %d" % (name, field, got, off))
        check(sorted(c["fields"]) == sorted(f for f, _ in st._fields_), "%s: the same fields" % name)
    check(ctypes.sizeof(_lib.c_enum) == layout["enum_size"], "enum size")


def check_schedules(ref):
    import dropblock
    section("schedules against exact rational arithmetic")
    f32, f32_bits = refvectors.f32, refvectors.f32_bits

    def rn32(q):
        return 0.0 if q == 0 else ref.rne_f32(q)

    targets = [0.0, 0.1, 0.25, 1.0, 0.3, 1e-45, 1.1754942e-38, 0.9999999, 0.07]
    pairs = [(0, 10), (1, 10), (3, 10), (9, 10), (10, 10), (11, 10), (5, 0), (0, 0), (1, 3), (2, 3),
             (12345, 100000), (1, (1 << 64) - 1), ((1 << 64) - 2, (1 << 64) - 1), (7, 1 << 40)]
    bad = 0
    for t in targets:
        t32 = f32(t)
        for s, n in pairs:
            want = t32 if n == 0 or s >= n else rn32(Fraction(t32) * s / n)
            got = dropblock.schedule_linear(t, s, n)
            if f32_bits(got) != f32_bits(want):
                bad += 1
                print("  linear(%r, %d, %d): got %r, want %r" % (t, s, n, got, want))
            for g in range(0, 5):
                w = want if g == 0 else rn32(Fraction(want) / 4 ** (4 - g))
                r = dropblock.schedule_rate(t, s, n, g)
                if f32_bits(r) != f32_bits(w):
                    bad += 1
                    print("  rate(%r, %d, %d, %d): got %r, want %r" % (t, s, n, g, r, w))
        for g in range(1, 5):
            w = rn32(Fraction(t32) / 4 ** (4 - g))
            if f32_bits(dropblock.schedule_group(t, g)) != f32_bits(w):
                bad += 1
                print("  group(%r, %d)" % (t, g))
    check(bad == 0, "every schedule value is the correctly rounded float32 (%d wrong)" % bad)
    check(dropblock.schedule_rate(0.1, 5, 10, 3) == f32(f32(0.05) / 4), "schedule_rate(0.1, 5, 10, 3)")
    for fn in (lambda: dropblock.schedule_linear(float("nan"), 1, 2), lambda: dropblock.schedule_linear(1.5, 1, 2),
               lambda: dropblock.schedule_group(0.1, 5), lambda: dropblock.schedule_group(0.1, 0),
               lambda: dropblock.schedule_rate(-0.1, 1, 2), lambda: dropblock.schedule_rate(0.1, 1, 2, 5),
               lambda: dropblock.schedule_linear(0.1, -1, 2), lambda: dropblock.schedule_linear(0.1, 1 << 64, 2)):
        check(raises(fn, "invalid_argument") is not None, "schedule with invalid arguments raises invalid_argument")


def check_imports(source_dir, env):
    section("imports: no torch or numpy for `import dropblock`; a clear error for dropblock.torch without torch")
    py = os.path.join(source_dir, "python")
    code = ("import sys; sys.path.insert(0, %r); import dropblock; dropblock.schedule_rate(0.1, 1, 2);"
            "print(json.dumps(['torch' in sys.modules, 'numpy' in sys.modules]))" % py)
    out = subprocess.run([sys.executable, "-c", "import json; " + code], env=env, capture_output=True, text=True)
    check(out.returncode == 0 and json.loads(out.stdout) == [False, False],
          "import dropblock imports neither torch nor numpy: %s %s" % (out.stdout, out.stderr[-500:]))
    code = ("import sys; sys.path.insert(0, %r); sys.modules['torch'] = None\n"
            "try:\n    import dropblock.torch\nexcept ImportError as e:\n    print('ImportError', e)\n" % py)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    check("ImportError" in out.stdout and "needs PyTorch" in out.stdout,
          "import dropblock.torch without torch: ImportError saying so: %s %s" % (out.stdout, out.stderr[-500:]))


def check_library_search(source_dir, env):
    section("library search: $DROPBLOCK_LIBRARY, then the build tree")
    lib = env["DROPBLOCK_LIBRARY"]
    tmp = tempfile.mkdtemp(prefix="dbpy-tree-")
    try:
        os.makedirs(os.path.join(tmp, "build", "client"))
        os.symlink(os.path.abspath(lib), os.path.join(tmp, "build", "client", "libdropblock.so"))
        shutil.copytree(os.path.join(source_dir, "python", "dropblock"), os.path.join(tmp, "python", "dropblock"))
        env2 = {k: v for k, v in env.items() if k != "DROPBLOCK_LIBRARY"}
        code = ("import sys; sys.path.insert(0, %r); import dropblock; print(dropblock.library_path())"
                % os.path.join(tmp, "python"))
        out = subprocess.run([sys.executable, "-c", code], env=env2, cwd="/", capture_output=True, text=True)
        check(out.returncode == 0 and out.stdout.strip() == os.path.join(tmp, "build", "client", "libdropblock.so"),
              "found build/client/libdropblock.so above the package: %s %s" % (out.stdout, out.stderr[-500:]))
        env3 = dict(env, DROPBLOCK_LIBRARY=os.path.join(tmp, "nope.so"))
        out = subprocess.run([sys.executable, "-c", code], env=env3, cwd="/", capture_output=True, text=True)
        check(out.returncode != 0 and "DROPBLOCK_LIBRARY" in out.stderr and "nope.so" in out.stderr,
              "a wrong $DROPBLOCK_LIBRARY is an error naming it: %s" % out.stderr[-500:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_pip_install(source_dir, env):
    section("pip install ./python")
    tmp = tempfile.mkdtemp(prefix="dbpy-pip-")
    try:
        src = os.path.join(tmp, "src")  # a copy: pip may write build/ and *.egg-info next to setup files
        shutil.copytree(os.path.join(source_dir, "python"), src,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        target = os.path.join(tmp, "site")
        # offline with the setuptools that is here (bdist_wheel: setuptools >= 70.1, or wheel)
        have_setuptools = importlib.util.find_spec("setuptools") is not None and (
            importlib.util.find_spec("wheel") is not None or
            importlib.util.find_spec("setuptools.command.bdist_wheel") is not None)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", target, src]
        if have_setuptools:
            cmd.insert(6, "--no-build-isolation")
        else:
            cmd.remove("--no-index")  # build isolation fetches setuptools
        try:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            err = out.stderr.strip()[-600:] if out.returncode != 0 else None
        except subprocess.TimeoutExpired:
            err = "pip took over 120 s (no network for build isolation?)"
        if err is not None:
            NOTES.append("pip install ./python could not run here (skipped): " + err[-300:])
            print("SKIP pip install:", err)
            return
        code = ("import dropblock, sys; assert dropblock.__file__.startswith(%r), dropblock.__file__;"
                "print(dropblock.schedule_rate(0.1, 5, 10, 3))" % target)
        out = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=target), cwd=tmp,
                             capture_output=True, text=True)
        check(out.returncode == 0 and out.stdout.strip() == repr(float(ctypes.c_float(0.0125).value)),
              "the installed package imports and runs: %s %s" % (out.stdout, out.stderr[-500:]))
        check(os.path.exists(os.path.join(target, "dropblock", "torch.py")), "dropblock/torch.py installed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- the daemon
def start_daemon(exe, cache_dir):
    """dropblockd on a temporary socket, ready once libdropblock connects to it."""
    import dropblock

    def connects(d):
        try:
            dropblock.Client(d.path).close()
            return True
        except dropblock.Error:
            return False

    return testlib.Daemon(exe, *(["--cache-dir", cache_dir] if cache_dir else []), ready=connects)


# ---------------------------------------------------------------- checks with NumPy
def check_cases(np, client, cases, label, devices):
    section("%s: exact bits against dropblock_ref.py (devices %s)" % (label, ", ".join(devices)))
    for case in cases:
        for dev in devices:
            what = "%s [%s on %s]" % (case.name, label, dev)
            x = case.x(np)
            y = client.dropblock2d(x, case.rate, case.block, device=dev, dtype=case.dtype, **case.kwargs())
            info = client.last_result
            check(y.dtype == x.dtype and y.shape == x.shape, what + ": dtype and shape of x")
            check(bits_of(np, y) == case.y_bits, what + ": output bits")
            check(bits_of(np, x) == case.x_bits, what + ": input untouched")
            check((info.kept, info.total, info.scale_bits) == (case.kept, case.total, case.scale_bits),
                  what + ": K, S, scale bits %r vs %r" % ((info.kept, info.total, info.scale_bits),
                                                         (case.kept, case.total, case.scale_bits)))
            if not case.training:
                continue
            check(info.device == dev, what + ": ran on the device asked for (%s)" % info.device)
            # backward: the same mask and scale on dy (the reference's forward of dy)
            if case.compat == "none":
                dx = client.backward(x, case.rate, case.block, device=dev, dtype=case.dtype, **case.kwargs())
                check(bits_of(np, dx) == case.y_bits, what + ": backward bits")
            # shared memory in, shared memory out, and in place there
            xs = client.array(x.shape, case.dtype)
            xs[...] = x
            ys = client.dropblock2d(xs, case.rate, case.block, device=dev, dtype=case.dtype, **case.kwargs())
            check(bits_of(np, ys) == case.y_bits, what + ": client.array input")
            if client.is_remote:
                check(client._h.contains(ys), what + ": the output of a client.array is one too")
            r = client.dropblock2d(xs, case.rate, case.block, device=dev, out=xs, dtype=case.dtype, **case.kwargs())
            check(r is xs and bits_of(np, xs) == case.y_bits, what + ": in place in a client.array")
            # in place on ordinary memory, and out= of either kind
            xp = x.copy()
            r = client.dropblock2d(xp, case.rate, case.block, device=dev, out=xp, dtype=case.dtype, **case.kwargs())
            check(r is xp and bits_of(np, xp) == case.y_bits, what + ": in place in an ordinary array")
            o = np.full_like(x, 7)
            r = client.dropblock2d(x, case.rate, case.block, device=dev, out=o, dtype=case.dtype, **case.kwargs())
            check(r is o and bits_of(np, o) == case.y_bits, what + ": out= an ordinary array")
            os_ = client.array(x.shape, case.dtype)
            client.dropblock2d(x, case.rate, case.block, device=dev, out=os_, dtype=case.dtype, **case.kwargs())
            check(bits_of(np, os_) == case.y_bits, what + ": out= a client.array")
            # the mask
            if case.keep is not None:
                y2, m = client.dropblock2d(x, case.rate, case.block, device=dev, mask=True, dtype=case.dtype,
                                           **case.kwargs())
                check(m.dtype == np.uint8 and m.tobytes() == case.keep and bits_of(np, y2) == case.y_bits,
                      what + ": mask=True gives the reference's keep bits")
                for mm in (np.zeros(len(case.keep), np.uint8), client.array(len(case.keep), np.uint8)):
                    _, m2 = client.dropblock2d(x, case.rate, case.block, device=dev, mask=mm, dtype=case.dtype,
                                               **case.kwargs())
                    check(m2 is mm and mm.tobytes() == case.keep, what + ": mask= an array")


def misc_case(ref):
    return Case(ref, "f32", (1, 2, 6, 5), "NCHW", "f32", 0.3, 2, seed=11, stream=4)


def check_misc(np, client, label, ref):
    section("%s: views, dtypes, errors" % label)
    case = misc_case(ref)
    x = case.x(np)
    # a non-contiguous input is copied, a view inside a client.array is used where it is
    big = client.array((2,) + x.shape[1:], "f32")
    big[1] = x[0]
    y = client.dropblock2d(big[1:], 0.3, 2, seed=11, stream=4)
    check(bits_of(np, y) == case.y_bits, label + ": a view into a client.array")
    xt = np.ascontiguousarray(np.transpose(x, (0, 1, 3, 2))).transpose(0, 1, 3, 2)
    check(not xt.flags.c_contiguous, "a transposed array")
    y = client.dropblock2d(xt, 0.3, 2, seed=11, stream=4)
    check(bits_of(np, y) == case.y_bits, label + ": a non-contiguous input")
    # dtypes of client.array
    for d, want in (("f32", np.float32), (np.float32, np.float32), ("f16", np.float16), (np.float16, np.float16),
                    ("bf16", np.uint16), ("float32", np.float32), (np.uint8, np.uint8)):
        a = client.array((2, 3), d)
        check(a.dtype == want and a.shape == (2, 3) and not a.any(), label + ": array dtype %r" % (d,))
    check(raises(lambda: client.array((2,), "f64"), "invalid_argument", "dtype") is not None, "array f64")
    # errors, with the daemon's or the library's code and message
    E = "invalid_argument"
    checks = [
        (lambda: client.dropblock2d(x, 1.5, 2), E, "rate"),
        (lambda: client.dropblock2d(x, float("nan"), 2), E, "rate"),
        (lambda: client.dropblock2d(x, 0.1, 0), E, "block"),
        (lambda: client.dropblock2d(x, 0.1, (2, 0)), E, "block width"),
        (lambda: client.dropblock2d(x, 0.1, 2, seed=-1), E, "seed"),
        (lambda: client.dropblock2d(x, 0.1, 2, stream=1 << 64), E, "stream"),
        (lambda: client.dropblock2d(x, 0.1, 2, layout="NCWH"), E, "layout"),
        (lambda: client.dropblock2d(x, 0.1, 2, normalize="batch"), E, "normalize"),
        (lambda: client.dropblock2d(x, 0.1, 2, share=("width",)), E, "share"),
        (lambda: client.dropblock2d(x, 0.1, 2, compat="timm"), E, "compat"),
        (lambda: client.dropblock2d(x, 0.1, 2, compat="keras_cv", normalize="sample"), E, ""),
        (lambda: client.dropblock2d(x, 0.1, 7, compat="keras_cv", layout="NHWC"), E, "keras_cv"),
        (lambda: client.dropblock2d(x.astype(np.float64), 0.1, 2), E, "float64"),
        (lambda: client.dropblock2d(x.view(np.uint16), 0.1, 2), E, "bf16"),
        (lambda: client.dropblock2d(x, 0.1, 2, dtype="f16"), E, "f16"),
        (lambda: client.dropblock2d(x[0], 0.1, 2), E, "4-D"),
        (lambda: client.dropblock2d(x, 0.1, 2, out=np.empty((1, 2, 6, 6), np.float32)), E, "out"),
        (lambda: client.dropblock2d(x, 0.1, 2, out=np.empty(x.shape, np.float16)), E, "out"),
        (lambda: client.dropblock2d(x, 0.1, 2, mask=np.empty(3, np.uint8)), E, "mask"),
        (lambda: client.dropblock2d(x, 0.1, 2, device="nope:7"), "not_found", "nope:7"),
    ]
    for fn, code, text in checks:
        e = raises(fn, code, text)
        check(e is not None and e.rc < 0, label + ": error %s containing %r" % (code, text))
    # keras_cv's own division by zero
    e = raises(lambda: client.dropblock2d(x, 0.1, 7, compat="keras_cv", layout="NCHW"), E)
    check(e is not None, label + ": keras_cv with block = map + 1 rejected")
    # devices and status
    devs = client.devices()
    check(len(devs) >= 1 and all(set(d) == {"id", "api", "vendor", "name", "driver", "uuid", "kind", "max_buffer",
                                            "global_mem", "healthy", "export", "semaphores", "semaphore_export"}
                                 for d in devs), label + ": devices() fields")
    # (lavapipe has both; only Vulkan devices can)
    check(not any(d["export"] or d["semaphores"] or d["semaphore_export"] for d in devs if d["api"] != "vulkan") and
          all(d["semaphores"] or not d["semaphore_export"] for d in devs),
          label + ": export and semaphores on Vulkan devices only: %s" % devs)
    check(all(d["healthy"] is True for d in devs), label + ": every device healthy")
    check(any(d["id"] == "cpu:0" and d["kind"] == "cpu" for d in devs), label + ": devices() lists cpu:0")
    check(all(d["kind"] in ("discrete-gpu", "integrated-gpu", "cpu-api", "cpu", "other") for d in devs),
          label + ": device kinds")
    st = client.status()
    check(isinstance(st, dict) and "devices" in st and "ok" not in st, label + ": status() is the status dict")
    if client.is_remote:
        check(st["jobs"]["completed"] > 0 and st["clients"] >= 1, label + ": status counters: %r" % st.get("jobs"))
    return devs


def check_lifecycle(np, dropblock, sock):
    section("client life cycle: arrays outlive close(), memory freed, the connection ends")
    watcher = dropblock.Client(sock)
    gc.collect()  # arrays of the tests before, held by reference cycles (tracebacks), go now
    for _ in range(100):
        base = watcher.status()
        if base["clients"] == 1:
            break
        time.sleep(0.02)
    check(base["clients"] == 1 and base["regions"] == 0, "every earlier client is gone: %r" % base)
    c = dropblock.Client(sock)
    check(watcher.status()["clients"] == base["clients"] + 1, "a second client is counted")
    a = c.array((1, 1, 4, 4), "f32")
    a[...] = 1.5
    b = c.array((3,), "f16")
    check(watcher.status()["regions"] == base["regions"] + 2, "two arrays: two regions")
    del b
    gc.collect()
    check(watcher.status()["regions"] == base["regions"] + 1, "a dropped array frees its region")
    v = a[0, 0]  # a view keeps the memory alive
    del a
    c.close()
    check(c.closed and float(v.sum()) == 24.0, "a view stays readable after close()")
    check(raises(lambda: c.array((1,), "f32"), "invalid_argument", "closed") is not None, "array() after close()")
    check(raises(lambda: c.dropblock2d(np.zeros((1, 1, 2, 2), np.float32), 0.1, 1), "invalid_argument", "closed")
          is not None, "dropblock2d after close()")
    check(watcher.status()["clients"] == base["clients"] + 1, "the connection waits for the last array")
    del v
    gc.collect()
    ok = False
    for _ in range(100):
        st = watcher.status()
        if st["clients"] == base["clients"] and st["regions"] == base["regions"]:
            ok = True
            break
        time.sleep(0.02)
    check(ok, "the connection ends with its last array")
    c.close()  # twice is fine
    with dropblock.Client(sock) as c2:
        c2.dropblock2d(np.ones((1, 1, 4, 4), np.float32), 0.5, 2)
    check(c2.closed, "with block closes")
    e = raises(lambda: dropblock.Client(os.path.join(os.path.dirname(sock), "none.sock")), "unavailable")
    check(e is not None, "connecting to a missing socket: unavailable")
    # the default socket comes from $DROPBLOCK_SOCKET
    old = os.environ.get("DROPBLOCK_SOCKET")
    os.environ["DROPBLOCK_SOCKET"] = sock
    try:
        check(dropblock.default_socket() == sock, "default_socket() reads $DROPBLOCK_SOCKET")
        with dropblock.Client() as c3:
            check(c3.is_remote and len(c3.devices()) >= 1, "Client() connects to $DROPBLOCK_SOCKET")
    finally:
        if old is None:
            del os.environ["DROPBLOCK_SOCKET"]
        else:
            os.environ["DROPBLOCK_SOCKET"] = old
    # many calls with ordinary arrays reuse scratch memory: no region per call
    with dropblock.Client(sock) as c4:
        x = np.ones((2, 3, 8, 8), np.float32)
        for i in range(20):
            c4.dropblock2d(x, 0.2, 3, stream=i)
        check(c4.status()["regions"] - base["regions"] <= 2, "scratch memory reused: %d regions"
              % (c4.status()["regions"] - base["regions"]))
        try:
            __import__("pickle").dumps(c4)
            check(False, "a client cannot be pickled")
        except TypeError:
            pass
    watcher.close()


def thread_cases(ref):
    return [Case(ref, "t%d" % i, (1, 2, 8, 8), "NCHW", "f32", 0.3, 3, seed=i, stream=i) for i in range(4)]


def check_threads(np, client, ref):
    section("threads share a client")
    import threading
    cases = thread_cases(ref)
    errors = []

    def work(case):
        try:
            x = case.x(np)
            for _ in range(10):
                y = client.dropblock2d(x, case.rate, case.block, **case.kwargs())
                if bits_of(np, y) != case.y_bits:
                    errors.append(case.name)
                if client.last_result.kept != case.kept:
                    errors.append(case.name + " last_result")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    ts = [threading.Thread(target=work, args=(c,)) for c in cases]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    check(not errors, "4 threads x 10 jobs, exact bits and per-thread last_result: %r" % errors[:3])


# ---------------------------------------------------------------- DropBlock3D (issue 17)
def load_vectors(source_dir, folder):
    """The committed expected-bit vectors of tests/<folder> (dropblock_ref.py's), canonical only."""
    import glob
    out = []
    for path in sorted(glob.glob(os.path.join(source_dir, "tests", folder, "*.json"))):
        with open(path) as f:
            v = json.load(f)
        if v["request"]["compat"] == "none" and "expected" in v and "error" not in v["expected"]:
            out.append(v)
    return out


def vector_args(r):
    """Client keyword arguments of a vector's request (compat none), rate as its float32 bits."""
    share = tuple(s for s, on in (("channels", r["share_channels"]), ("batch", r["share_batch"])) if on)
    return dict(rate=struct.unpack("<f", struct.pack("<I", int(r["rate_bits"], 16)))[0], seed=int(r["seed"]),
                stream=int(r["stream"]), normalize=r["normalize"], share=share, training=r["training"])


def vector_arrays(np, v, phys):
    """(x, expected y) of a vector as arrays of its dtype (bf16: uint16 bits) of physical shape phys."""
    dt = v["request"]["dtype"]
    ut = np.uint32 if dt == "f32" else np.uint16
    view = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[dt]
    x = np.array([int(b, 16) for b in v["input"]], ut).view(view).reshape(phys)
    y = np.array([int(b, 16) for b in v["expected"]["values"]], ut).view(view).reshape(phys)
    return x, y


def same_bits(np, a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def check_vectors3d(np, dropblock, source_dir, c, label):
    """tests/vectors3d through Client.dropblock3d and backward3d on every device of c (the local
    engine's, a daemon's); the 2-D vectors (tests/vectors) sent as 3-D with D = 1 give the 2-D
    bits and masks."""
    vs = load_vectors(source_dir, "vectors3d")
    v2 = load_vectors(source_dir, "vectors")
    check(len(vs) == 48 and len(v2) > 100, "%d DropBlock3D and %d canonical 2-D vectors found" % (len(vs), len(v2)))
    devices = [d["id"] for d in c.devices()]
    section("DropBlock3D: tests/vectors3d through Client.dropblock3d (%s: %s)" % (label, ", ".join(devices)))
    check("cpu:0" in devices, "the local engine has cpu:0 (%s)" % devices)
    for dev in devices:
        bad = {"forward": [], "backward": [], "mask": [], "memory": [], "error": []}
        for v in vs:
            r = v["request"]
            n, c_, d, h, w = r["shape"]
            lay = r["layout_3d"]
            phys = (n, c_, d, h, w) if lay == "NCDHW" else (n, d, h, w, c_)
            x, want = vector_arrays(np, v, phys)
            kw = dict(vector_args(r), layout=lay, device=dev, dtype=r["dtype"])
            label = "%s-%s-%s" % (v["name"], lay, r["dtype"])
            e = v["expected"]
            try:
                y, m = c.dropblock3d(x, block_size=tuple(r["block"]), mask=True, **kw)
                info = c.last_result
                if not (same_bits(np, y, want) and (info.kept, info.total, info.scale_bits) ==
                        (e["kept"], e["total"], int(e["scale_bits"], 16))
                        and (info.device == dev or not r["training"])):
                    bad["forward"].append(label)
                # backward: the same mask and scale on dy (here dy = x)
                if not same_bits(np, c.backward3d(x, block_size=tuple(r["block"]), **kw), want):
                    bad["backward"].append(label)
                if r["training"] and float(kw["rate"]) != 0:
                    # bit (((n*C+c)*D+d)*H+h)*W+w: 1 where y is not 0, wherever x is not 0
                    t = (lambda a: a) if lay == "NCDHW" else (lambda a: a.transpose(0, 4, 1, 2, 3))
                    zero = {"f32": np.uint32(0x7FFFFFFF), "f16": np.uint16(0x7FFF), "bf16": np.uint16(0x7FFF)}
                    ut = np.uint32 if r["dtype"] == "f32" else np.uint16
                    xl = (t(x).view(ut) & zero[r["dtype"]]).reshape(-1) != 0
                    yl = (t(y).view(ut) & zero[r["dtype"]]).reshape(-1) != 0
                    keep = np.unpackbits(m, count=x.size, bitorder="little").astype(bool)
                    if m.size != (x.size + 7) // 8 or not np.array_equal(keep[xl], yl[xl]) or yl[~xl].any():
                        bad["mask"].append(label)
                # in place, out=, a client.array
                xp = x.copy()
                o = np.full_like(x, 7)
                xs = c.array(x.shape, r["dtype"])
                xs[...] = x
                if not (c.dropblock3d(xp, block_size=tuple(r["block"]), out=xp, **kw) is xp
                        and same_bits(np, xp, want)
                        and c.dropblock3d(x, block_size=tuple(r["block"]), out=o, **kw) is o
                        and same_bits(np, o, want)
                        and same_bits(np, c.dropblock3d(xs, block_size=tuple(r["block"]), **kw), want)):
                    bad["memory"].append(label)
            except dropblock.Error as err:
                bad["error"].append("%s: %s" % (label, err))
        for what, text in (("forward", "output bits, K, S, scale bits, device"),
                           ("backward", "backward3d bits (the same mask and scale on dy)"),
                           ("mask", "mask=True: the keep bits of the output"),
                           ("memory", "in place, out= and a client.array input")):
            check(not bad[what] and not bad["error"], "%s %s: %d vectors3d, %s; wrong: %s %s"
                  % (label, dev, len(vs), text, bad[what][:6], bad["error"][:2]))
        # D = 1: the 2-D vectors as (N, C, 1, H, W) / (N, 1, H, W, C) with a block depth that
        # clamps to 1 give the 2-D bits, K, S, scale and mask
        bad = []
        for v in v2:
            r = v["request"]
            n, c_, h, w = r["shape"]
            nchw = r["layout"] == "NCHW"
            x, want = vector_arrays(np, v, (n, c_, 1, h, w) if nchw else (n, 1, h, w, c_))
            e = v["expected"]
            kw = dict(vector_args(r), layout="NCDHW" if nchw else "NDHWC", device=dev, dtype=r["dtype"])
            run = c.dropblock3d if r["mode"] == "forward" else c.backward3d
            try:
                y, m = run(x, block_size=(3,) + tuple(r["block"]), mask=True, **kw)
                info = c.last_result
                ok = (same_bits(np, y, want) and (info.kept, info.total, info.scale_bits) ==
                      (e["kept"], e["total"], int(e["scale_bits"], 16))
                      and (e.get("mask") is None or m.tobytes().hex() == e["mask"]))
            except dropblock.Error as err:
                ok = False
                print("  ", err)
            if not ok:
                bad.append("%s-%s-%s" % (v["name"], r["layout"], r["dtype"]))
        check(not bad, "%s %s: %d 2-D vectors sent as 3-D with D = 1 (block depth 3, clamped): the 2-D bits, "
              "K, S, scale and mask; wrong: %s" % (label, dev, len(v2), bad[:6]))
    # errors: ranks, block, layout
    x5 = np.ones((1, 2, 3, 4, 5), np.float32)
    E = "invalid_argument"
    for fn, text in ((lambda: c.dropblock3d(x5[0], 0.1, 2), "5-D"),
                     (lambda: c.dropblock2d(x5, 0.1, 2), "dropblock3d takes 5-D"),
                     (lambda: c.backward3d(x5[0], 0.1, 2), "backward takes 4-D"),
                     (lambda: c.dropblock3d(x5, 0.1, (2, 2)), "(BD, BH, BW)"),
                     (lambda: c.dropblock3d(x5, 0.1, (0, 2, 2)), "block depth"),
                     (lambda: c.dropblock3d(x5, 0.1, 2, layout="NCHW"), "NCDHW, NDHWC"),
                     (lambda: c.dropblock3d(x5, 0.1, 2, out=np.empty((1, 2, 3, 4, 4), np.float32)), "out"),
                     (lambda: c.dropblock3d(x5, 0.1, 2, mask=np.empty(3, np.uint8)), "mask")):
        e = raises(fn, E, text)
        check(e is not None, "%s dropblock3d: error %s containing %r" % (label, E, text))


def torch_cases(ref, dtype):
    """The torch part's forward case and the dy whose forward is its gradient."""
    return (Case(ref, "torch " + dtype, (2, 3, 8, 6), "NCHW", dtype, 0.25, 3, seed=77, stream=10, negate=True),
            Case(ref, "torch dy " + dtype, (2, 3, 8, 6), "NCHW", dtype, 0.25, 3, seed=77, stream=10,
                 input_seed=(5, 6)))


def reference_requests():
    """Every question this suite asks dropblock_ref.py (tools/gen_refvectors.py answers them)."""
    rec = refvectors.Recorder()
    make_cases(rec)
    misc_case(rec)
    thread_cases(rec)
    for dtype in ("f32", "f16", "bf16"):
        torch_cases(rec, dtype)
    return rec.requests


def check_torch(np, client, ref):
    try:
        import torch
    except ImportError:
        print("SKIP torch part: torch is not installed here (it runs where torch is)", flush=True)
        NOTES.append("torch part skipped: torch not installed")
        return
    import dropblock.torch as dbt
    section("dropblock.torch.DropBlock2d (torch %s) against the reference" % torch.__version__)
    for dtype, tdt in (("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)):
        case, dy_case = torch_cases(ref, dtype)
        m = dbt.DropBlock2d(0.25, 3, seed=77, stream=10, stream_step=2, client=client)
        x_np = case.x(np)
        x = torch.from_numpy(x_np.view(np.int16) if dtype == "bf16" else x_np.copy())
        if dtype == "bf16":
            x = x.view(torch.bfloat16)
        x = x.clone().requires_grad_(True)
        y = m(x)
        check(m.stream == 12, "torch %s: the stream advanced by stream_step" % dtype)
        yb = y.detach().contiguous().view(torch.int16 if dtype != "f32" else torch.int32).numpy()
        check(y.dtype == tdt and bits_of(np, yb.view(np.uint16 if dtype != "f32" else np.uint32)) == case.y_bits,
              "torch %s: forward bits" % dtype)
        dy_np = dy_case.x(np)
        dy = torch.from_numpy(dy_np.view(np.int16) if dtype == "bf16" else dy_np.copy())
        if dtype == "bf16":
            dy = dy.view(torch.bfloat16)
        y.backward(dy)
        # the gradient: the same mask and scale on dy, i.e. the reference's forward of dy
        gb = x.grad.contiguous().view(torch.int16 if dtype != "f32" else torch.int32).numpy()
        check(bits_of(np, gb.view(np.uint16 if dtype != "f32" else np.uint32)) == dy_case.y_bits,
              "torch %s: backward bits (same mask from seed and stream)" % dtype)
        # channels_last runs as NHWC with the same logical result
        xc = x.detach().to(memory_format=torch.channels_last)
        m2 = dbt.DropBlock2d(0.25, 3, seed=77, stream=10, client=client)
        yc = m2(xc)
        check(yc.is_contiguous(memory_format=torch.channels_last) and torch.equal(
            yc.contiguous().view(torch.int16 if dtype != "f32" else torch.int32),
            y.detach().contiguous().view(torch.int16 if dtype != "f32" else torch.int32)),
            "torch %s: channels_last input" % dtype)
        m.eval()
        check(m(x) is x and m.stream == 12, "torch %s: eval is the identity and keeps the stream" % dtype)
    # gradcheck-style: the gradient of sum(y * w) is the backward of w
    m = dbt.DropBlock2d(0.3, 2, seed=1, client=client)
    st = m.state_dict()
    check("_extra_state" in st and st["_extra_state"]["stream"] == 0, "the stream is in the state dict")
    m.load_state_dict({"_extra_state": {"stream": 41}})
    check(m.stream == 41, "the stream comes back from a state dict")
    import copy
    m3 = copy.deepcopy(m)
    check(m3.stream == 41 and m3._client is None, "a deep copy opens its own connection on first use")
    x = torch.rand(1, 2, 5, 5, dtype=torch.float32)
    y3 = m3(x)
    check(y3.shape == x.shape and m3.client.socket == client.socket, "the copy connects to the same socket")
    check(m(torch.zeros(1, 1, 4, 4, dtype=torch.float64)).dtype == torch.float64, "torch float64 accepted")
    dbt.close_shared()  # the deep copy used the process's shared connection


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--abi", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--cache-dir")
    ap.add_argument("--spec-dir", help="dropblock_ref.py's folder (default: $DROPBLOCK_SPEC_DIR, else "
                    "../shared/spec beside the source tree, where it exists)")
    a = ap.parse_args()
    if not os.environ.get("DROPBLOCK_LIBRARY"):
        print("set DROPBLOCK_LIBRARY to libdropblock's path")
        return 1
    sys.path.insert(0, os.path.join(a.source_dir, "python"))
    import dropblock
    ref = refvectors.Reference("python", a.spec_dir)
    print(ref.describe(), flush=True)
    env = dict(os.environ)
    t0 = time.time()
    check_abi(a.abi)
    check_schedules(ref)
    check_imports(a.source_dir, env)
    check_library_search(a.source_dir, env)
    check_pip_install(a.source_dir, env)
    try:
        import numpy as np
    except ImportError:
        for n in NOTES:
            print("NOTE", n)
        print("%d passed, %d failed (without NumPy)" % (T.passed, T.failed))
        if T.failed:
            return 1
        print("SKIP: NumPy is not installed for %s: the array and job tests need it "
              "(scripts/install-deps.sh installs it: python3 -m pip install numpy)" % sys.executable)
        return 77
    cases = make_cases(ref)
    print("reference cases computed in %.1f s" % (time.time() - t0), flush=True)
    d = start_daemon(a.daemon, a.cache_dir)
    try:
        with dropblock.Client(d.path) as client:
            devs = check_misc(np, client, "daemon", ref)
            check_cases(np, client, cases, "daemon", [x["id"] for x in devs])
            check_threads(np, client, ref)
            check_torch(np, client, ref)
            check_vectors3d(np, dropblock, a.source_dir, client, "daemon")
        check_lifecycle(np, dropblock, d.path)
        with dropblock.Client(local=True, backends="cpu", cache_dir="") as local:
            check(not local.is_remote, "local=True: the in-process engine")
            check_misc(np, local, "local", ref)
            check_cases(np, local, cases, "local", ["cpu:0"])
        with dropblock.Client(local=True) as local:  # every backend
            check_vectors3d(np, dropblock, a.source_dir, local, "local engine")
        check(raises(lambda: dropblock.Client(d.path, backends="cpu"), "invalid_argument", "local") is not None,
              "backends without local=True")
    except Exception:
        traceback.print_exc()
        check(False, "unexpected exception")
        print("daemon log:", d.logtext())
    finally:
        rc = d.stop(remove=True)
        check(rc == 0, "the daemon stopped cleanly (%r)" % rc)
    for n in NOTES:
        print("NOTE", n)
    print("%d passed, %d failed in %.1f s" % (T.passed, T.failed, time.time() - t0))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
