#!/usr/bin/env python3
"""region.alloc on the wire (docs/protocol.md; issue 13): what a client that speaks the protocol
itself sees, and what the daemon keeps track of. Raw frames, the reply's descriptor received with
recvmsg (SCM_RIGHTS).

  - `devices` says per device whether it can export ("export", "export_types"); the reply of
    region.alloc carries exactly one descriptor and every field an importer needs.
  - refusals with their codes and words: no bytes, 0 bytes, bytes as a string of digits (taken),
    a device that cannot export, an unknown device, a descriptor sent with the request, past the
    connection's and the daemon's device-memory caps (--max-client-device-bytes,
    --max-device-bytes, both in hello's limits).
  - jobs: input in device memory and output in host memory (both ways), a mask in device
    memory, overlapping device ranges, another device id than the region's: invalid_argument
    naming the problem; a job on device memory runs on its device ("auto" resolves to it).
  - lifecycle: status' device_bytes counts the regions; unregister frees; a client that dies
    holding device regions (its socket closed, then SIGKILL of a child process) leaves nothing
    counted, and the daemon keeps serving.
Skips (77) without a device that can export (a Vulkan driver with VK_KHR_external_memory_fd).

  test_device_protocol.py --daemon DROPBLOCKD
"""
import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib  # noqa: E402
from testlib import Daemon, RawConn as Conn, Tally, error  # noqa: E402

T = Tally()
MIB = 1 << 20


def memfd_region(c, size):
    return testlib.memfd_region(c, size)[0]


def check_alloc_reply(c, dev):
    r, fds = c.req({"op": "region.alloc", "device": dev, "bytes": 3 * MIB})
    T.check(r.get("ok") and len(fds) == 1, "region.alloc on %s: %s, %d descriptors" % (dev, r, len(fds)))
    for f in ("region", "size", "device", "handle_type", "allocation_size", "memory_type_index", "dedicated",
              "host_mappable", "device_uuid", "driver_uuid"):
        T.check(f in r, "region.alloc's reply has %s" % f)
    T.check(r.get("size") == 3 * MIB and r.get("allocation_size", 0) >= 3 * MIB and r.get("device") == dev and
            r.get("handle_type") == "opaque_fd" and len(r.get("device_uuid", "")) == 36,
            "region.alloc's fields: %s" % r)
    for f in fds:
        os.close(f)
    return r


def refusals(c, dev):
    cases = [
        ({"op": "region.alloc", "device": dev}, "invalid_argument", ["bytes: missing"]),
        ({"op": "region.alloc", "device": dev, "bytes": 0}, "invalid_argument", ["bytes: 0"]),
        ({"op": "region.alloc", "device": "cpu:0", "bytes": 4096}, "invalid_argument", ["cpu:0", "cannot export"]),
        ({"op": "region.alloc", "device": "vulkan:7", "bytes": 4096}, "not_found", ["vulkan:7"]),
        ({"op": "region.alloc", "device": 3, "bytes": 4096}, "invalid_argument", ["device"]),
        ({"op": "region.alloc", "device": dev, "bytes": 200 * MIB}, "resource_exhausted",
         ["--max-client-device-bytes"]),
    ]
    for req, code, words in cases:
        r, fds = c.req(req)
        ok, m = error(r, code, *words)
        T.check(ok and not fds, "%s -> %s %s: %s" % (req, code, words, m or r))
    r, fds = c.req({"op": "region.alloc", "device": dev, "bytes": "4096"})
    T.check(r.get("ok") and r.get("size") == 4096 and len(fds) == 1, "bytes as a string of digits: %s" % r)
    for f in fds:
        os.close(f)
    c.req({"op": "region.unregister", "region": r.get("region")})
    fd = os.open("/dev/null", os.O_RDONLY)
    r, _ = c.req({"op": "region.alloc", "device": dev, "bytes": 4096, "fds": 1}, send_fd=fd)
    os.close(fd)
    ok, m = error(r, "invalid_argument", "region.alloc takes 0 descriptor")
    T.check(ok, "a descriptor sent with region.alloc: %s" % (m or r))


def jobs(c, dev):
    a = check_alloc_reply(c, dev)
    b, fds = c.req({"op": "region.alloc", "device": dev, "bytes": MIB})
    for f in fds:
        os.close(f)
    host = memfd_region(c, MIB)
    job = {"op": "dropblock2d", "shape": [1, 2, 16, 16], "rate": 0.2, "block": 3, "seed": 5}
    tb = 2 * 16 * 16 * 4
    cases = [
        ({"input": {"region": a["region"], "offset": 0}, "output": {"region": host, "offset": 0}},
         "invalid_argument", ["both tensors in device memory or neither"]),
        ({"input": {"region": host, "offset": 0}, "output": {"region": a["region"], "offset": 0}},
         "invalid_argument", ["both tensors in device memory or neither"]),
        ({"input": {"region": a["region"], "offset": 0}, "mask": {"region": b["region"], "offset": 0}},
         "invalid_argument", ["mask", "host memory"]),
        ({"input": {"region": a["region"], "offset": 0}, "output": {"region": a["region"], "offset": 64}},
         "invalid_argument", ["overlaps"]),
        ({"input": {"region": a["region"], "offset": 0}, "device": "opencl:0"}, "invalid_argument",
         ["opencl:0", dev]),
        ({"input": {"region": a["region"], "offset": 3 * MIB - 16}}, "out_of_range", ["exceeds"]),
    ]
    for extra, code, words in cases:
        r, _ = c.req({**job, **extra})
        ok, m = error(r, code, *words)
        T.check(ok, "job %s -> %s %s: %s" % (extra, code, words, m or r))
    for extra in ({"input": {"region": a["region"], "offset": 0}},
                  {"input": {"region": a["region"], "offset": 0}, "output": {"region": b["region"], "offset": 0},
                   "mask": {"region": host, "offset": 0}},
                  {"input": {"region": a["region"], "offset": 0}, "output": {"region": a["region"], "offset": tb},
                   "device": dev},
                  {**{"input": {"region": a["region"], "offset": 0}}, "training": False}):
        r, _ = c.req({**job, **extra})
        T.check(r.get("ok") and r.get("device") == dev, "job %s runs on %s: %s" % (extra, dev, r))
    return a


def status_bytes(path):
    c = Conn(path)
    r, _ = c.req({"op": "status"})
    c.close()
    return r.get("device_bytes")


def lifecycle(path, dev):
    c = Conn(path)
    a, fds = c.req({"op": "region.alloc", "device": dev, "bytes": 2 * MIB})
    for f in fds:
        os.close(f)
    T.check(status_bytes(path) == 2 * MIB, "status counts 2 MiB of device memory: %s" % status_bytes(path))
    r, _ = c.req({"op": "region.unregister", "region": a["region"]})
    T.check(r.get("ok") and status_bytes(path) == 0, "unregister frees it: %s" % status_bytes(path))
    r, _ = c.req({"op": "region.unregister", "region": a["region"]})
    T.check(error(r, "not_found")[0], "unregister twice: %s" % r)
    c.req({"op": "region.alloc", "device": dev, "bytes": MIB})
    c.close()  # gone, holding a region
    # a child process that allocates, keeps the descriptor and is killed
    code = ("import socket,struct,json,os,time,array\n"
            "s=socket.socket(socket.AF_UNIX);s.connect(%r)\n"
            "b=json.dumps({'v':1,'id':1,'op':'region.alloc','device':%r,'bytes':%d}).encode()\n"
            "s.sendall(struct.pack('<I',len(b))+b);s.recvmsg(4096,64);print('ready',flush=True);time.sleep(60)\n"
            % (path, dev, 3 * MIB))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    T.check(p.stdout.readline().strip() == "ready", "the child allocated")
    p.kill()
    p.wait()
    import time
    for _ in range(100):
        if status_bytes(path) == 0:
            break
        time.sleep(0.05)
    T.check(status_bytes(path) == 0, "clients gone: no device memory counted (%s)" % status_bytes(path))
    c = Conn(path)
    r, _ = c.req({"op": "status"})
    T.check(r.get("ok") and r.get("clients") == 1, "the daemon serves on: %s" % r.get("clients"))
    c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    a = ap.parse_args()
    env = {"VK_DRIVER_FILES": os.environ.get("VK_DRIVER_FILES", "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")}
    d = Daemon(a.daemon, "--max-client-device-bytes", str(64 * MIB), "--max-device-bytes", str(96 * MIB),
               "--cache-dir", tempfile.mkdtemp(prefix="dbdp-"), env=env)
    try:
        c = Conn(d.path)
        hello, _ = c.req({"op": "hello"})
        lim = hello.get("limits", {})
        T.check(lim.get("max_client_device_bytes") == 64 * MIB and lim.get("max_device_bytes") == 96 * MIB,
                "hello's device-memory limits: %s" % lim)
        devs = [x for x in hello.get("devices", []) if x.get("export")]
        for x in hello.get("devices", []):
            T.check(isinstance(x.get("export"), bool) and isinstance(x.get("export_types"), list),
                    "devices say export and export_types: %s" % x)
        if not devs:
            print("SKIP: no device that can export memory")
            return 77
        dev = devs[0]["id"]
        T.check(devs[0]["export_types"] == ["opaque_fd"], "export_types: %s" % devs[0])
        refusals(c, dev)
        jobs(c, dev)
        c.close()
        # the daemon's cap across connections: 60 MiB here, 60 MiB more from another
        c1, c2 = Conn(d.path), Conn(d.path)
        r1, f1 = c1.req({"op": "region.alloc", "device": dev, "bytes": 60 * MIB})
        r2, f2 = c2.req({"op": "region.alloc", "device": dev, "bytes": 60 * MIB})
        ok, m = error(r2, "resource_exhausted", "--max-device-bytes")
        T.check(r1.get("ok") and ok, "the daemon's device-memory cap: %s / %s" % (r1.get("ok"), m or r2))
        for f in f1 + f2:
            os.close(f)
        c1.close()
        c2.close()
        lifecycle(d.path, dev)
    finally:
        rc = d.stop(remove=True)
        T.check(rc == 0, "dropblockd exit status %s" % rc)
    print("test_device_protocol: %d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
