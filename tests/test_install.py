#!/usr/bin/env python3
"""libdropblock as an installed library: `meson install --destdir TMP` of the build directory
(--no-rebuild: meson test built it; nothing in the build directory changes but its install log),
then examples/c/dropblock_example.c built out of tree with pkg-config alone (PKG_CONFIG_PATH at
the installed dropblock.pc, PKG_CONFIG_SYSROOT_DIR=TMP so its paths land under TMP):
  shared  cc ex.c $(pkg-config --cflags --libs dropblock), run with LD_LIBRARY_PATH=LIBDIR
  rpath   the same with -Wl,-rpath,LIBDIR, run without LD_LIBRARY_PATH
  static  cc ex.c $(pkg-config --static --cflags --libs dropblock) with -l:libdropblock.a: no
          libdropblock.so needed, OpenCL/Vulkan/cJSON/libm/threads from Libs.private/Requires.private
Each program runs in process (--local cpu) and through the installed dropblockd, its K, S and
scale equal to tests/vectors/block-7-on-14x14-NCHW-f32.json's.

  test_install.py --build-dir DIR --source-dir DIR --cc "CC ARGS" --version V [--sanitize S]
                  [--cache-dir DIR]
Exits 77 (skipped) without pkg-config or meson, or in a sanitizer build (an out-of-tree program
would need the sanitizer runtime too).
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Daemon, Tally  # noqa: E402

VECTOR = "block-7-on-14x14-NCHW-f32.json"
LINE = re.compile(r"^(\S+) kept (\d+) of (\d+), scale (0x[0-9a-f]{8})", re.M)


def sh(cmd, env=None, check=True):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise RuntimeError("%s: exit %d\n%s%s" % (shlex.join(cmd), p.returncode, p.stdout, p.stderr))
    return p


def find(root, name):
    for d, _, files in os.walk(root):
        if name in files:
            return os.path.join(d, name)
    return None


def needed(exe):
    """The DT_NEEDED entries of an ELF file (readelf -d), or None without readelf."""
    if not shutil.which("readelf"):
        return None
    return re.findall(r"\(NEEDED\).*\[(.*)\]", sh(["readelf", "-d", exe]).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--cc", required=True, help="the C compiler command (shell words)")
    ap.add_argument("--version", required=True)
    ap.add_argument("--sanitize", default="none")
    ap.add_argument("--cache-dir", help="the daemon's kernel cache (default: one in the test's folder)")
    a = ap.parse_args()
    for tool in ("pkg-config", "meson"):
        if not shutil.which(tool):
            print("SKIP: %s is not installed (scripts/install-deps.sh installs it)" % tool)
            return 77
    if a.sanitize not in ("", "none"):
        print("SKIP: a -Db_sanitize=%s build: its libdropblock needs the sanitizer runtime" % a.sanitize)
        return 77
    t = Tally()
    with open(os.path.join(a.source_dir, "tests", "vectors", VECTOR)) as f:
        exp = json.load(f)["expected"]
    want = (exp["kept"], exp["total"], exp["scale_bits"])
    example = os.path.join(a.source_dir, "examples", "c", "dropblock_example.c")
    cc = shlex.split(a.cc)
    tmp = tempfile.mkdtemp(prefix="dropblock-install-")
    try:
        dest = os.path.join(tmp, "dest")
        env = dict(os.environ)
        env.pop("DESTDIR", None)
        sh(["meson", "install", "-C", a.build_dir, "--no-rebuild", "--quiet", "--destdir", dest], env=env)
        pc = find(dest, "dropblock.pc")
        daemon = find(dest, "dropblockd")
        if not t.check(pc is not None and daemon is not None, "no dropblock.pc or dropblockd under %s" % dest):
            return 1
        env["PKG_CONFIG_PATH"] = os.path.dirname(pc)
        env["PKG_CONFIG_SYSROOT_DIR"] = dest
        env.pop("PKG_CONFIG_LIBDIR", None)

        def pkg(*args):
            return shlex.split(sh(["pkg-config", *args, "dropblock"], env=env).stdout)

        t.check(pkg("--modversion") == [a.version], "pkg-config --modversion: %s, not %s" % (pkg("--modversion"), a.version))
        # pkgconf puts the sysroot in front of variables too, pkg-config 0.29 does not
        libdir = os.path.normpath(sh(["pkg-config", "--variable=libdir", "dropblock"], env=env).stdout.strip())
        if not libdir.startswith(dest + os.sep):
            libdir = os.path.join(dest, libdir.lstrip("/"))
        for name in ("libdropblock.so", "libdropblock.a"):
            t.check(os.path.exists(os.path.join(libdir, name)), "%s not in the pc file's libdir %s" % (name, libdir))
        t.check(find(dest, "dropblock.h") is not None and os.path.join("include", "dropblock", "dropblock.h")
                in find(dest, "dropblock.h"), "dropblock.h not installed as include/dropblock/dropblock.h")
        shared_flags = pkg("--cflags", "--libs")
        static_flags = pkg("--static", "--cflags", "--libs")
        print("pkg-config --cflags --libs dropblock:", shlex.join(shared_flags))
        print("pkg-config --static --cflags --libs dropblock:", shlex.join(static_flags))
        t.check("-lOpenCL" not in shared_flags, "the shared link lists -lOpenCL (it belongs in Libs.private)")
        for flag in ("-ldropblock", "-lOpenCL", "-lvulkan", "-lcjson", "-lm"):
            t.check(flag in static_flags, "pkg-config --static lacks %s" % flag)
        t.check("-pthread" in static_flags or "-lpthread" in static_flags, "pkg-config --static lacks threads")

        builds = {
            "shared": (shared_flags, {"LD_LIBRARY_PATH": libdir}),
            "rpath": (shared_flags + ["-Wl,-rpath," + libdir], {}),
            "static": (["-l:libdropblock.a" if f == "-ldropblock" else f for f in static_flags], {}),
        }
        cflags = ["-std=c11", "-Wall", "-Wextra", "-Werror"]
        exes = {}
        for kind, (flags, _) in builds.items():
            exe = os.path.join(tmp, "example-" + kind)
            p = sh(cc + cflags + [example, "-o", exe] + flags, env=env, check=False)
            if t.check(p.returncode == 0, "%s link: %s\n%s" % (kind, shlex.join(cc + cflags + [example] + flags), p.stderr)):
                exes[kind] = exe
        if "static" in exes and needed(exes["static"]) is not None:
            t.check(not any(n.startswith("libdropblock") for n in needed(exes["static"])),
                    "the static program needs %s" % needed(exes["static"]))
        if "shared" in exes and needed(exes["shared"]) is not None:
            t.check("libdropblock.so.0" in needed(exes["shared"]), "the shared program does not need libdropblock.so.0")
        if "rpath" in exes and shutil.which("ldd"):
            out = sh(["ldd", exes["rpath"]], env={k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}).stdout
            m = re.search(r"libdropblock\.so\.0 => (\S+)", out)
            t.check(m is not None and m.group(1).startswith(libdir), "rpath: libdropblock from %s" % (m and m.group(1)))

        run_env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "DROPBLOCK_SOCKET")}

        def run(kind, args, what):
            e = dict(run_env, **builds[kind][1])
            p = subprocess.run([exes[kind]] + args, env=e, capture_output=True, text=True, timeout=120)
            print("%s %s: rc %d\n%s%s" % (kind, what, p.returncode, p.stdout, p.stderr), end="", flush=True)
            m = LINE.search(p.stdout)
            if t.check(p.returncode == 0 and m is not None, "%s %s: rc %d, no result line" % (kind, what, p.returncode)):
                got = (int(m.group(2)), int(m.group(3)), m.group(4))
                t.check(got == want, "%s %s: K, S, scale %s, the vector says %s" % (kind, what, got, want))

        for kind in exes:
            run(kind, ["--local", "cpu"], "--local cpu")
        d = Daemon(daemon, "--cache-dir", a.cache_dir or os.path.join(tmp, "kernel-cache"))
        try:
            for kind in exes:
                run(kind, [d.path], "through the installed dropblockd")
        finally:
            rc = d.stop(remove=True)
        t.check(rc == 0, "the installed dropblockd exited with %s" % rc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (t.passed, t.failed))
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
