#!/usr/bin/env python3
"""`pip install .` at the repository root (pyproject.toml, meson-python) into a fresh venv, offline:
  python3 -m venv --system-site-packages VENV   (numpy and meson-python come from this python's
                                                 packages: nothing may be downloaded)
  VENV/bin/python -m pip install --no-build-isolation --no-index --no-deps SOURCE
with meson-python's build directory (-Cbuilddir; its default is .mesonpy-* in the source tree)
and TMPDIR in the test's own folder: the log's `meson setup` line must say so, and nothing in the
source tree is written. Then, with
$DROPBLOCK_LIBRARY and $PYTHONPATH unset and the current directory outside the source tree:
  files    the package has every python/dropblock/*.py as it is in the tree and libdropblock.so;
           VENV/bin has dropblockd and dropblock; nothing else (no header, static library or
           pkg-config file)
  local    `import dropblock` from the venv, libdropblock.so loaded from inside the package, and a
           job on the in-process CPU engine: output bits, K, S, scale and the packed mask equal to
           tests/vectors/block-7-on-14x14-NCHW-f32.json's
  daemon   the venv's dropblockd on a temporary socket: the same job through it on every device it
           lists (and auto), the same bits; the venv's `dropblock run --format hex` through it
           too, then `dropblock stop`, and the daemon exits 0
  override $DROPBLOCK_LIBRARY still wins: a copy of the library elsewhere is what loads, and a
           path that does not exist is an error naming the variable and the path

  test_pip_root.py --source-dir DIR --version V [--sanitize S] [--cache-dir DIR] [--jobs N]
Exits 77 (skipped) without venv/ensurepip, meson-python 0.14 or newer (pyproject.toml's install
tags), numpy, meson or ninja (or a meson older than meson-python asks for), or in a sanitizer
build (the programs would need the sanitizer runtime).
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Daemon, Tally  # noqa: E402

VECTOR = "block-7-on-14x14-NCHW-f32.json"

# run by the venv's python: the vector's job in process (argv[2] == "local") or through the
# daemon at the socket argv[2], on auto and on every device listed; prints one JSON object
JOB = r"""
import json, sys
import numpy as np
import dropblock
vec = json.load(open(sys.argv[1]))
req = vec["request"]
x = np.array([int(b, 16) for b in vec["input"]], dtype=np.uint32).view(np.float32).reshape(req["shape"])
out = {"file": dropblock.__file__, "lib": dropblock.library_path(), "jobs": {}}
local = sys.argv[2] == "local"
with (dropblock.Client(local=True, backends="cpu") if local else dropblock.Client(sys.argv[2])) as client:
    for dev in ["auto"] + [d["id"] for d in client.devices()]:
        y, mask = client.dropblock2d(x, float(req["rate"]), tuple(req["block"]), seed=int(req["seed"]),
                                     stream=int(req["stream"]), layout=req["layout"],
                                     normalize=req["normalize"], device=dev, mask=True)
        r = client.last_result
        out["jobs"][dev] = {"device": r.device, "kept": r.kept, "total": r.total,
                            "scale_bits": "0x%08x" % r.scale_bits,
                            "values": ["0x%08x" % v for v in y.view(np.uint32).ravel().tolist()],
                            "mask": mask.tobytes().hex()}
print(json.dumps(out))
"""


def run(cmd, timeout, **kw):
    """cmd in a session of its own, killed with everything it started (pip's meson, ninja and
    compilers) when it runs past timeout seconds"""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          **kw) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--sanitize", default="none")
    ap.add_argument("--cache-dir", help="the daemon's kernel cache (default: one in the test's folder)")
    ap.add_argument("--jobs", type=int, default=2, help="ninja's parallel jobs for the wheel build")
    a = ap.parse_args()
    source = os.path.abspath(a.source_dir)
    if a.sanitize not in ("", "none"):
        print("SKIP: a -Db_sanitize=%s build: the wheel's programs would need the sanitizer runtime" % a.sanitize)
        return 77
    for tool in ("meson", "ninja"):
        if not shutil.which(tool):
            print("SKIP: %s is not on PATH (scripts/install-deps.sh installs it)" % tool)
            return 77
    t = Tally()
    with open(os.path.join(source, "tests", "vectors", VECTOR)) as f:
        vec = json.load(f)
    exp = vec["expected"]
    tmp = tempfile.mkdtemp(prefix="dropblock-pip-root-")
    try:
        venv = os.path.join(tmp, "venv")
        vpy, vbin = os.path.join(venv, "bin", "python"), os.path.join(venv, "bin")
        # the environment of everything run in the venv: no library, package path or socket from
        # outside, temporary files in the test's folder
        env = {k: v for k, v in os.environ.items()
               if k not in ("DROPBLOCK_LIBRARY", "PYTHONPATH", "DROPBLOCK_SOCKET", "VIRTUAL_ENV")
               and not k.startswith("PIP_")}
        env.update(TMPDIR=os.path.join(tmp, "tmp"), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1",
                   PIP_CONFIG_FILE=os.devnull, PATH=vbin + os.pathsep + env.get("PATH", ""))
        os.mkdir(env["TMPDIR"])
        p = run([sys.executable, "-m", "venv", "--system-site-packages", venv], 300, env=env, cwd=tmp)
        if p.returncode != 0:
            print("SKIP: %s -m venv failed (Debian: apt-get install python3-venv):\n%s"
                  % (sys.executable, p.stderr[-800:]))
            return 77
        p = run([vpy, "-c", "import mesonpy, numpy, sys; "
                 "sys.exit(tuple(map(int, mesonpy.__version__.split('.')[:2])) < (0, 14))"], 60, env=env, cwd=tmp)
        if p.returncode != 0:
            print("SKIP: no meson-python 0.14 or newer, or no numpy, for %s (scripts/install-deps.sh installs "
                  "them)\n%s" % (sys.executable, p.stderr[-400:]))
            return 77

        # not "build": _lib.py looks for build/client/libdropblock.so above the current directory
        build = os.path.join(tmp, "wheel-build")
        start = time.monotonic()
        p = run([vpy, "-m", "pip", "install", "-v", "--no-build-isolation", "--no-index", "--no-deps",
                 "--config-settings=builddir=" + build, "--config-settings=compile-args=-j%d" % a.jobs, source],
                700, env=env, cwd=tmp)
        took = time.monotonic() - start
        m = re.search(r"Could not find (meson|ninja) version \S+ or newer[^\n]*", p.stdout + p.stderr)
        if p.returncode != 0 and m:
            print("SKIP: meson-python: " + m.group(0))
            return 77
        if not t.check(p.returncode == 0, "pip install %s: exit %d\n%s%s" % (source, p.returncode,
                                                                            p.stdout[-4000:], p.stderr[-2000:])):
            return 1
        print("pip install --no-build-isolation --no-index %s into a fresh venv: %.1f s" % (source, took), flush=True)
        m = re.search(r"meson setup (\S+) (\S+)", p.stdout + p.stderr)
        t.check(m is not None and m.group(1) == source and m.group(2) == build,
                "meson-python did not set up %s from %s: %s" % (build, source, m and m.group(0)))

        # what was installed: the RECORD of the venv's dropblock, less dist-info and bytecode
        site = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))
        records = glob.glob(os.path.join(site[0], "dropblock-*.dist-info", "RECORD")) if site else []
        if not t.check(len(records) == 1, "no single dropblock dist-info in the venv: %s" % records):
            return 1
        with open(records[0]) as f:
            installed = {row.split(",")[0] for row in f if row.strip()}
        installed = {p for p in installed if ".dist-info/" not in p and "__pycache__" not in p}
        modules = sorted(os.path.basename(m) for m in glob.glob(os.path.join(source, "python", "dropblock", "*.py")))
        want = {"dropblock/" + m for m in modules} | {"dropblock/libdropblock.so", "../../../bin/dropblockd",
                                                      "../../../bin/dropblock"}
        t.check(installed == want, "installed files: %s missing, %s unexpected" % (sorted(want - installed),
                                                                                   sorted(installed - want)))
        pkg = os.path.join(site[0], "dropblock")
        for m in modules:
            with open(os.path.join(source, "python", "dropblock", m), "rb") as f1:
                ours = f1.read()
            try:
                with open(os.path.join(pkg, m), "rb") as f2:
                    same = f2.read() == ours
            except OSError:
                same = False
            t.check(same, "dropblock/%s in the venv differs from python/dropblock/%s" % (m, m))
        for exe in ("dropblockd", "dropblock"):
            t.check(os.access(os.path.join(vbin, exe), os.X_OK), "%s is not an executable in %s" % (exe, vbin))
        p = run([os.path.join(vbin, "dropblock"), "--version"], 30, env=env, cwd=tmp)
        t.check(p.returncode == 0 and p.stdout.startswith("dropblock %s " % a.version),
                "the venv's dropblock --version: %r %s" % (p.stdout, p.stderr[-300:]))

        vector = os.path.join(source, "tests", "vectors", VECTOR)

        def check_jobs(where, what):
            p = run([vpy, "-c", JOB, vector, where], 300, env=env, cwd=tmp)
            if not t.check(p.returncode == 0, "%s: exit %d\n%s" % (what, p.returncode, p.stderr[-2000:])):
                return
            out = json.loads(p.stdout)
            t.check(out["file"] == os.path.join(pkg, "__init__.py"),
                    "%s: dropblock imported from %s" % (what, out["file"]))
            t.check(out["lib"] == os.path.join(pkg, "libdropblock.so"), "%s: libdropblock from %s" % (what, out["lib"]))
            for dev, job in out["jobs"].items():
                print("%s, device %s (%s): kept %d of %d, scale %s" % (what, dev, job["device"], job["kept"],
                                                                      job["total"], job["scale_bits"]))
                got = (job["kept"], job["total"], job["scale_bits"], job["values"], job["mask"])
                t.check(got == (exp["kept"], exp["total"], exp["scale_bits"], exp["values"], exp["mask"]),
                        "%s, device %s: K %d, S %d, scale %s, values or mask differ from %s"
                        % (what, dev, job["kept"], job["total"], job["scale_bits"], VECTOR))
            return out

        out = check_jobs("local", "the in-process CPU engine")
        t.check(out is not None and "cpu:0" in out["jobs"], "the local engine listed no cpu:0")

        d = Daemon(os.path.join(vbin, "dropblockd"), "--cache-dir", a.cache_dir or os.path.join(tmp, "kernel-cache"),
                   env=env)
        try:
            out = check_jobs(d.path, "the venv's dropblockd")
            if out is not None:
                print("the daemon's devices:", ", ".join(k for k in out["jobs"] if k != "auto"))
            cli = os.path.join(vbin, "dropblock")
            args = ["--shape", ",".join(map(str, vec["request"]["shape"])), "--rate", vec["request"]["rate"],
                    "--block", ",".join(map(str, vec["request"]["block"])), "--seed", vec["request"]["seed"],
                    "--input", "tf-uniform:" + ",".join(vec["input_tf_uniform"]), "--format", "hex"]
            p = run([cli, "--socket", d.path, "run"] + args, 120, env=env, cwd=tmp)
            ok = p.returncode == 0
            if ok:
                got = json.loads(p.stdout)
                ok = (got["kept"], got["total"], got["scale_bits"], got["values"]) == \
                    (exp["kept"], exp["total"], exp["scale_bits"], exp["values"])
            t.check(ok, "the venv's dropblock run through the daemon: exit %d, not the vector's\n%s%s"
                    % (p.returncode, p.stdout[:300], p.stderr[-500:]))
            p = run([cli, "--socket", d.path, "stop"], 60, env=env, cwd=tmp)
            t.check(p.returncode == 0, "dropblock stop: exit %d %s" % (p.returncode, p.stderr[-300:]))
            try:
                d.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        finally:
            rc = d.stop(remove=True)
        t.check(rc == 0, "the venv's dropblockd exited with %s:\n%s" % (rc, d.logtext()))

        # $DROPBLOCK_LIBRARY before the bundled library: a copy elsewhere, then a path that is not there
        other = os.path.join(tmp, "other", "libdropblock.so")
        os.mkdir(os.path.dirname(other))
        shutil.copy2(os.path.join(pkg, "libdropblock.so"), other)
        code = "import dropblock; print(dropblock.library_path())"
        p = run([vpy, "-c", code], 60, env=dict(env, DROPBLOCK_LIBRARY=other), cwd=tmp)
        t.check(p.returncode == 0 and p.stdout.strip() == other,
                "DROPBLOCK_LIBRARY=%s: loaded %r %s" % (other, p.stdout, p.stderr[-500:]))
        nope = os.path.join(tmp, "nope.so")
        p = run([vpy, "-c", code], 60, env=dict(env, DROPBLOCK_LIBRARY=nope), cwd=tmp)
        t.check(p.returncode != 0 and "LibraryNotFound" in p.stderr and "DROPBLOCK_LIBRARY" in p.stderr
                and nope in p.stderr, "DROPBLOCK_LIBRARY=%s: no clear error: rc %d %s" % (nope, p.returncode,
                                                                                         p.stderr[-500:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (t.passed, t.failed))
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
