#!/usr/bin/env python3
"""The README's examples as whole programs (examples/): each run through a dropblockd the test
starts and in process (--local cpu), its job's K, S and scale equal to the committed vector
tests/vectors/block-7-on-14x14-NCHW-f32.json (the examples fill x with ones, so only the mask
counts), and the README's code block equal to the file.

  test_examples.py c EXAMPLE_EXE SOURCE --daemon DROPBLOCKD --source-dir DIR [--cache-dir DIR]
  test_examples.py python EXAMPLE_PY --daemon DROPBLOCKD --source-dir DIR [--cache-dir DIR]
The Python one exits 77 (skipped) without NumPy; it loads $DROPBLOCK_LIBRARY.
"""
import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Daemon, Tally  # noqa: E402

VECTOR = "block-7-on-14x14-NCHW-f32.json"
LINE = re.compile(r"^(\S+) kept (\d+) of (\d+), scale (0x[0-9a-f]{8})", re.M)


def readme_blocks(path, lang):
    """The fenced code blocks of README.md in language lang, each as its text."""
    with open(path) as f:
        text = f.read()
    return re.findall(r"^```%s\n(.*?)^```$" % re.escape(lang), text, re.M | re.S)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lang", choices=["c", "python"])
    ap.add_argument("example")
    ap.add_argument("source", nargs="?", help="the C example's source (c only)")
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--source-dir", required=True)
    ap.add_argument("--cache-dir")
    a = ap.parse_args()
    t = Tally()

    if a.lang == "python":
        try:
            import numpy  # noqa: F401
        except ImportError:
            print("SKIP: NumPy is not installed for %s: the Python example needs it" % sys.executable)
            return 77
        source = a.example
        env = dict(os.environ, PYTHONPATH=os.path.join(a.source_dir, "python"))
        cmd = [sys.executable, a.example]
    else:
        source = a.source
        env = dict(os.environ)
        cmd = [a.example]
    env.pop("DROPBLOCK_SOCKET", None)

    with open(os.path.join(a.source_dir, "tests", "vectors", VECTOR)) as f:
        exp = json.load(f)["expected"]
    want = (exp["kept"], exp["total"], exp["scale_bits"])

    # the README shows the file as it is
    with open(source) as f:
        text = f.read()
    blocks = readme_blocks(os.path.join(a.source_dir, "README.md"), a.lang)
    t.check(text in blocks, "README.md has no ```%s block equal to %s" % (a.lang, source))

    def run(args, what):
        p = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=120)
        print("%s: rc %d\n%s%s" % (what, p.returncode, p.stdout, p.stderr), end="", flush=True)
        m = LINE.search(p.stdout)
        t.check(p.returncode == 0 and m is not None, "%s: rc %d, no result line" % (what, p.returncode))
        if m:
            got = (int(m.group(2)), int(m.group(3)), m.group(4))
            t.check(got == want, "%s: K, S, scale %s, the vector says %s" % (what, got, want))
            if a.lang == "python":
                t.check("float16 kept %d of %d" % want[:2] in p.stdout, "%s: the f16 job's K, S" % what)
                if "torch kept" in p.stdout:
                    t.check("torch kept %d\n" % want[0] in p.stdout, "%s: DropBlock2d's K" % what)
        return m

    run(["--local", "cpu"], "--local cpu")
    dargs = ["--cache-dir", a.cache_dir] if a.cache_dir else []
    d = Daemon(a.daemon, *dargs)
    try:
        run([d.path], "daemon")
        # $DROPBLOCK_SOCKET when no socket is given
        env["DROPBLOCK_SOCKET"] = d.path
        run([], "daemon at $DROPBLOCK_SOCKET")
        del env["DROPBLOCK_SOCKET"]
        # no daemon: a message and exit status 1, nothing else
        p = subprocess.run(cmd + [os.path.join(d.dir, "none.sock")], env=env, capture_output=True,
                           text=True, timeout=60)
        t.check(p.returncode == 1 and p.stdout == "" and p.stderr.strip() != "",
                "no daemon: rc %d, stdout %r, stderr %r" % (p.returncode, p.stdout, p.stderr))
    finally:
        rc = d.stop(remove=True)
    t.check(rc == 0, "dropblockd exited with %s" % rc)
    print("%d passed, %d failed" % (t.passed, t.failed))
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
