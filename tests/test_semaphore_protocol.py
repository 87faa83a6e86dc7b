#!/usr/bin/env python3
"""Timeline semaphores on the wire (docs/protocol.md, "Ordering with semaphores"; issue 13): raw
frames, replies read by id (a job's reply comes when it is over, other replies meanwhile).

  - `devices` says `semaphores` and `semaphore_export`; hello's limits `max_semaphores` and
    `max_semaphore_wait_ms`. semaphore.create exported: one descriptor, or (lavapipe, without
    VK_KHR_external_semaphore_fd) invalid_argument naming the extension; "export": false: none.
  - semaphore.signal and .value from the host: values only rise; refusals with their codes.
  - a job with wait and signal on host regions, "device": "auto": it goes to the semaphore's
    device, writes nothing and signals nothing until the wait is signalled (meanwhile another
    connection's job on the same device completes: the device is not held), then its output
    equals the same job's on cpu:0 and its signal is raised.
  - a wait that times out, a timeout above --max-semaphore-wait-ms, another device, a signal of 0,
    an unknown semaphore, a job that fails: each answered, and the signal raised all the same.
  - semaphore.free under a waiting job ends its wait; --max-semaphores; a client that leaves with
    a waiting job and its semaphores: status counts none, the daemon serves on; SIGTERM with a job
    waiting stops the daemon at once (not after the wait's minute).
Skips (77) without a device with timeline semaphores.

  test_semaphore_protocol.py --daemon DROPBLOCKD
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Daemon, RawConn as Conn, Tally, error, memfd_region as host_region  # noqa: E402

T = Tally()
SHAPE = [2, 3, 16, 16]
NUMEL = 2 * 3 * 16 * 16
TB = NUMEL * 4
POISON = b"\xad\xde\xc0\x7f" * NUMEL


def value(c, sem):
    r, _ = c.req({"op": "semaphore.value", "semaphore": sem})
    return r.get("value")


def create(c, dev, **kw):
    r, fds = c.req({"op": "semaphore.create", "device": dev, "export": False, **kw})
    for f in fds:
        os.close(f)
    return r


def discovery(c, dev, can_export):
    r, fds = c.req({"op": "semaphore.create", "device": dev})
    if can_export:
        T.check(r.get("ok") and len(fds) == 1 and r.get("handle_type") == "opaque_fd" and r.get("fds") == 1,
                "exported semaphore: %s, %d descriptors" % (r, len(fds)))
        c.req({"op": "semaphore.free", "semaphore": r.get("semaphore")})
    else:
        ok, m = error(r, "invalid_argument", "cannot export semaphores", "VK_KHR_external_semaphore_fd")
        T.check(ok and not fds, "exported semaphore refused naming the extension: %s" % (m or r))
    for f in fds:
        os.close(f)
    r = create(c, dev)
    T.check(r.get("ok") and r.get("fds") == 0 and r.get("handle_type") == "" and r.get("value") == 0 and
            r.get("device") == dev and len(r.get("device_uuid", "")) == 36, "semaphore, not exported: %s" % r)
    s = r.get("semaphore")
    cases = [
        ({"op": "semaphore.create", "device": "cpu:0", "export": False}, "invalid_argument",
         ["cpu:0", "no timeline semaphores"]),
        ({"op": "semaphore.create", "device": "vulkan:9", "export": False}, "not_found", ["vulkan:9"]),
        ({"op": "semaphore.create", "device": dev, "export": "no"}, "invalid_argument", ["export"]),
        ({"op": "semaphore.signal", "semaphore": s}, "invalid_argument", ["value: missing"]),
        ({"op": "semaphore.value", "semaphore": 99}, "not_found", ["semaphore 99"]),
        ({"op": "semaphore.value"}, "invalid_argument", ["semaphore: missing"]),
        ({"op": "semaphore.free", "semaphore": 0}, "not_found", ["semaphore 0"]),
    ]
    for req, code, words in cases:
        r, fds = c.req(req)
        ok, m = error(r, code, *words)
        T.check(ok and not fds, "%s -> %s %s: %s" % (req, code, words, m or r))
    r, _ = c.req({"op": "semaphore.signal", "semaphore": s, "value": 3})
    T.check(r.get("ok") and r.get("value") == 3 and value(c, s) == 3, "signal 3: %s" % r)
    r, _ = c.req({"op": "semaphore.signal", "semaphore": s, "value": 3})
    ok, m = error(r, "invalid_argument", "at 3 already")
    T.check(ok and value(c, s) == 3, "signal 3 again: %s" % (m or r))
    r, _ = c.req({"op": "semaphore.free", "semaphore": s})
    T.check(r.get("ok"), "free: %s" % r)
    r, _ = c.req({"op": "semaphore.free", "semaphore": s})
    T.check(error(r, "not_found")[0], "free twice: %s" % r)


def ordered(path, c, dev):
    x, xm = host_region(c, TB)
    y, ym = host_region(c, TB)
    yc, ycm = host_region(c, TB)
    xm[:] = bytes((i * 37 + 11) % 251 for i in range(TB // 2)) * 2
    job = {"op": "dropblock2d", "shape": SHAPE, "rate": 0.25, "block": 3, "seed": 7,
           "input": {"region": x, "offset": 0}, "output": {"region": y, "offset": 0}}
    r, _ = c.req({**job, "output": {"region": yc, "offset": 0}, "device": "cpu:0"})
    T.check(r.get("ok"), "the job on cpu:0: %s" % r)
    a, b = create(c, dev)["semaphore"], create(c, dev)["semaphore"]
    ym[:] = POISON
    rid = c.send({**job, "wait": {"semaphore": a, "value": 1}, "signal": {"semaphore": b, "value": 1}})
    pending = c.pending(rid, 0.4)
    T.check(pending and ym[:] == POISON and value(c, b) == 0, "the job waits: nothing written, nothing signalled")
    # the device is not held: another connection's job on it completes meanwhile
    c2 = Conn(path)
    x2, _ = host_region(c2, TB)
    r2, _ = c2.req({**job, "input": {"region": x2, "offset": 0}, "output": {"region": x2, "offset": 0},
                    "device": dev})
    T.check(r2.get("ok") and r2.get("device") == dev and c.pending(rid), "another client's job runs: %s" % r2)
    c2.close()
    r, _ = c.req({"op": "semaphore.signal", "semaphore": a, "value": 1})
    r, _ = c.reply(rid)
    T.check(r.get("ok") and r.get("device") == dev, "the job ran on %s once signalled: %s" % (dev, r))
    T.check(ym[:] == ycm[:], "its output equals cpu:0's")
    T.check(value(c, b) == 1, "its signal: %s" % value(c, b))

    # a wait that times out: not run, signal raised
    ym[:] = POISON
    r, _ = c.req({**job, "wait": {"semaphore": a, "value": 5, "timeout_ms": 200}, "signal": {"semaphore": b, "value": 2}})
    ok, m = error(r, "unavailable", "did not reach 5 within 200 ms", "did not run")
    T.check(ok and ym[:] == POISON and value(c, b) == 2, "a wait that timed out: %s" % (m or r))
    # refused, each raising the signal all the same
    refused = [
        ({"wait": {"semaphore": a, "value": 5, "timeout_ms": 999999}}, "invalid_argument",
         ["--max-semaphore-wait-ms"]),
        ({"wait": {"semaphore": a, "value": 1}, "device": "cpu:0"}, "invalid_argument", ["is of device", "cpu:0"]),
        ({"wait": {"semaphore": 77, "value": 1}}, "not_found", ["wait.semaphore 77"]),
        ({"rate": 2}, "invalid_argument", ["rate"]),
    ]
    v = 2
    for extra, code, words in refused:
        v += 1
        r, _ = c.req({**job, **extra, "signal": {"semaphore": b, "value": v}})
        ok, m = error(r, code, *words)
        T.check(ok and value(c, b) == v, "%s -> %s %s, signal raised to %d: %s (at %s)" % (extra, code, words, v,
                                                                                          m or r, value(c, b)))
    for sig, words in (({"semaphore": b, "value": 0}, ["signal.value: 0"]), ({"semaphore": b}, ["signal.value"]),
                       ([1], ["signal: must be an object"])):
        r, _ = c.req({**job, "signal": sig})
        ok, m = error(r, "invalid_argument", *words)
        T.check(ok, "signal %s: %s" % (sig, m or r))
    # a signal not above the value: the job ran, and fails saying so
    r, _ = c.req({**job, "signal": {"semaphore": b, "value": 1}})
    ok, m = error(r, "invalid_argument", "signal: the semaphore is at %d already" % v)
    T.check(ok, "a signal below the value: %s" % (m or r))
    # freed under a waiting job
    rid = c.send({**job, "wait": {"semaphore": a, "value": 9}})
    T.check(c.pending(rid, 0.2), "waiting for 9")
    c.req({"op": "semaphore.free", "semaphore": a})
    r, _ = c.reply(rid)
    ok, m = error(r, "unavailable", "freed while a job waited")
    T.check(ok, "freed under the wait: %s" % (m or r))
    c.req({"op": "semaphore.free", "semaphore": b})


def limits_and_lifecycle(d, dev):
    c = Conn(d.path)
    made = [create(c, dev) for _ in range(4)]
    r, _ = c.req({"op": "semaphore.create", "device": dev, "export": False})
    ok, m = error(r, "resource_exhausted", "--max-semaphores")
    T.check(all(x.get("ok") for x in made) and ok, "--max-semaphores 4: %s" % (m or r))
    r, _ = c.req({"op": "status"})
    T.check(r.get("semaphores") == 4, "status counts 4 semaphores: %s" % r.get("semaphores"))
    x, _ = host_region(c, TB)
    c.send({"op": "dropblock2d", "shape": SHAPE, "rate": 0.25, "block": 3, "seed": 7,
            "input": {"region": x, "offset": 0}, "wait": {"semaphore": made[0]["semaphore"], "value": 1}})
    time.sleep(0.1)
    c.close()  # gone with a waiting job and its semaphores
    c = Conn(d.path)
    for _ in range(100):
        r, _ = c.req({"op": "status"})
        if r.get("semaphores") == 0 and r.get("jobs", {}).get("failed", -1) >= 0 and r.get("clients") == 1:
            break
        time.sleep(0.05)
    T.check(r.get("semaphores") == 0 and r.get("clients") == 1, "a client that left: nothing counted: %s" % r)
    # SIGTERM while a job waits (for a minute by default): the daemon stops at once
    s = create(c, dev)["semaphore"]
    x, _ = host_region(c, TB)
    rid = c.send({"op": "dropblock2d", "shape": SHAPE, "rate": 0.25, "block": 3, "seed": 7,
                  "input": {"region": x, "offset": 0}, "wait": {"semaphore": s, "value": 1}})
    T.check(c.pending(rid, 0.2), "a job waits")
    t0 = time.time()
    rc = d.stop()
    took = time.time() - t0
    r, _ = c.reply(rid)
    ok, m = error(r, "unavailable", "stopping")
    T.check(rc == 0 and took < 10 and ok, "SIGTERM with a job waiting: exit %s in %.1f s, %s" % (rc, took, m or r))
    c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    a = ap.parse_args()
    env = {"VK_DRIVER_FILES": os.environ.get("VK_DRIVER_FILES", "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")}
    d = Daemon(a.daemon, "--max-semaphores", "4", "--max-semaphore-wait-ms", "30000", "--cache-dir",
               tempfile.mkdtemp(prefix="dbsp-"), env=env)
    try:
        c = Conn(d.path)
        hello, _ = c.req({"op": "hello"})
        lim = hello.get("limits", {})
        T.check(lim.get("max_semaphores") == 4 and lim.get("max_semaphore_wait_ms") == 30000,
                "hello's semaphore limits: %s" % lim)
        for x in hello.get("devices", []):
            T.check(isinstance(x.get("semaphores"), bool) and isinstance(x.get("semaphore_export"), bool),
                    "devices say semaphores and semaphore_export: %s" % x)
        devs = [x for x in hello.get("devices", []) if x.get("semaphores")]
        if not devs:
            print("SKIP: no device with timeline semaphores")
            return 77
        dev = devs[0]["id"]
        discovery(c, dev, devs[0]["semaphore_export"])
        ordered(d.path, c, dev)
        c.close()
        limits_and_lifecycle(d, dev)
    finally:
        rc = d.stop(remove=True)
    print("test_semaphore_protocol: %d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed or rc else 0


if __name__ == "__main__":
    sys.exit(main())
