#!/usr/bin/env python3
"""A daemon whose PoCL cannot write its kernel cache says so (PoCL then lists no device: a
read-only root or home in a container did that silently): the log names the cache folder, where
it came from (POCL_CACHE_DIR) and why it cannot be written, and the daemon serves on with its
other devices. With a writable cache the line is absent and the PoCL device is there. Skips (77)
where no PoCL platform is installed.

  test_pocl_cache.py --daemon DROPBLOCKD
"""
import argparse
import json
import os
import socket
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Daemon, Tally  # noqa: E402

T = Tally()


def devices(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        b = json.dumps({"v": 1, "id": 1, "op": "devices"}).encode()
        s.sendall(struct.pack("<I", len(b)) + b)
        n = struct.unpack("<I", s.recv(4, socket.MSG_WAITALL))[0]
        return json.loads(s.recv(n, socket.MSG_WAITALL))["devices"]


def run(exe, cache):
    d = Daemon(exe, "--devices", "opencl,cpu", "--small-job-bytes", "0", "--cache-dir",
               tempfile.mkdtemp(prefix="dbpc-"), env={"POCL_CACHE_DIR": cache})
    try:
        return [x["name"] for x in devices(d.path) if x["api"] == "opencl"], d.logtext(tail=20000)
    finally:
        T.check(d.stop(remove=True) == 0, "dropblockd exit status")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    a = ap.parse_args()
    good, log = run(a.daemon, tempfile.mkdtemp(prefix="dbpc-pocl-"))
    if not any("pthread" in n or "cpu" in n.lower() for n in good):
        print("SKIP: no PoCL device here (%s)" % good)
        return 77
    T.check("PoCL lists no device" not in log, "a writable cache: no complaint")
    bad, log = run(a.daemon, "/proc/dropblock-no-such/pocl")
    T.check(not bad, "an unwritable cache: PoCL lists no device (%s)" % bad)
    line = [x for x in log.splitlines() if "PoCL lists no device" in x]
    T.check(line and "/proc/dropblock-no-such/pocl" in line[0] and "(POCL_CACHE_DIR)" in line[0] and
            "no folder can be made in /proc" in line[0], "the log says why: %s" % line)
    print("test_pocl_cache: %d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
