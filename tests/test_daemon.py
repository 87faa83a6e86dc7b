#!/usr/bin/env python3
"""Protocol and fault tests of dropblockd over its raw socket (docs/protocol.md).

Each bad input must get an error naming the problem (or its connection closed) while a second
client keeps getting exact results, and the daemon's descriptor count must come back to its
baseline. Expected bits come from the executable spec, dropblock_ref.py, never from the daemon:
committed in tests/refvectors/daemon.json for the jobs reference_requests() lists
(tools/gen_refvectors.py), and computed live too where the spec is found (--spec-dir, else
$DROPBLOCK_SPEC_DIR, else ../shared/spec beside the source tree).

  test_daemon.py --daemon build/daemon/dropblockd [--spec-dir ../shared/spec]

$DROPBLOCK_DAEMON_WRAPPER (e.g. "valgrind --error-exitcode=99 ...") is put before every daemon
command line; a daemon that exits non-zero (a valgrind error) fails the test.
"""
import argparse
import contextlib
import fcntl
import json
import mmap
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

from testlib import SLOW, WRAPPER, Tally, daemon_cmd
import refvectors
import testlib

T = Tally()
check = T.check


@contextlib.contextmanager
def guarded(d, what, log_tail=False):
    """A test's body on daemon d: a crash in it is a failed check ("<what> test crashed"); after it
    d gets SIGTERM and must exit 0 (log_tail: the failure shows the status and the daemon's log)."""
    try:
        yield
    except Exception:
        check(False, what + " test crashed: " + traceback.format_exc())
    finally:
        rc = d.stop()
        if log_tail:
            check(rc == 0, "SIGTERM exits 0 (got %s); log tail: %s" % (rc, d.logtext() if rc else ""))
        else:
            check(rc == 0, "SIGTERM exits 0")


class Daemon(testlib.Daemon):
    """dropblockd on sockdir/d.sock (a new temporary directory by default), ready once it
    answers hello."""

    def __init__(self, exe, extra=(), sockdir=None, env=None):
        super().__init__(exe, *extra, sock=os.path.join(sockdir, "d.sock") if sockdir else None, env=env,
                         ready=Daemon.answers, timeout=30)

    @staticmethod
    def answers(d):
        try:
            c = Client(d.path)
            ok = (c.call({"op": "hello"}) or {}).get("ok")
            c.close()
            return ok
        except OSError:
            return False

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def memfd_maps(self):
        """Mappings of client regions (memfds) in the daemon."""
        with open("/proc/%d/maps" % self.proc.pid) as f:
            return sum(1 for line in f if "/memfd:" in line)

    def wait_fds(self, baseline, timeout=10.0):
        end = time.time() + timeout * SLOW
        while time.time() < end:
            if self.fds() <= baseline:
                return True
            time.sleep(0.05)
        return self.fds() <= baseline



class Client:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(60 * SLOW)
        self.s.connect(path)
        self.next_id = 0

    def close(self):
        self.s.close()

    def send_raw(self, data, fds=()):
        if fds:
            self.s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))])
        else:
            self.s.sendall(data)

    def send(self, obj, fds=()):
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_raw(struct.pack("<I", len(body)) + body, fds)

    def recv(self):
        head = self._read(4)
        if head is None:
            return None
        n = struct.unpack("<I", head)[0]
        body = self._read(n)
        return None if body is None else json.loads(body)

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.s.recv(n - len(buf))
            except (ConnectionResetError, socket.timeout):
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def call(self, obj, fds=()):
        self.next_id += 1
        obj = dict(obj)
        obj.setdefault("v", 1)
        obj.setdefault("id", self.next_id)
        self.send(obj, fds)
        return self.recv()

    def region(self, size, seals=fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW):
        fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        if seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        m = mmap.mmap(fd, size)
        r = self.call({"op": "region.register", "fds": 1}, [fd])
        os.close(fd)
        return r, m


# ---------------------------------------------------------------- the reference's jobs
# Every job whose bits a test checks; the reference runs each on tf-uniform:0,1 input.
# exact_job's default job keeps every output bit; its sweeps of other seeds (a job after each bad
# input, one per fault step) keep a SHA-256 of the output: the tests compare whole outputs.
BAD_INPUT_SEEDS = range(1000, 1040)         # test_bad_inputs: one job after each of its 40 bad inputs
FAULT_SEEDS = range(101, 111)               # test_faults: the jobs sent to the victim and alloc devices
FAULT_OTHER_SEEDS = range(1101, 1111)       # test_faults: the other client's jobs meanwhile
FAULT_AUTO = [((2, 3, 9, 7), "NCHW", "f32"), ((1, 4, 16, 16), "NHWC", "f16"), ((3, 2, 8, 12), "NCHW", "bf16")]
FAULT_AUTO_SEEDS = range(200, 224)          # test_faults: 24 auto jobs after the vanish
MANY_CLIENTS = [("NCHW", "f32", "none"), ("NHWC", "f16", "none"), ("NCHW", "bf16", "none"), ("NHWC", "f32", "keras_cv")]
BIG_JOB = dict(shape=(8, 16, 64, 64), rate=0.2, block=(7, 7), seed=3, stream=0, tile=1024)   # 2 MiB


def exact_request(shape=(2, 3, 9, 7), layout="NCHW", dtype="f32", rate=0.2, block=(3, 2), seed=None, stream=5,
                  compat="none"):
    """exact_job's job: seed 42 with every output bit, another seed with the output's SHA-256."""
    return refvectors.run_request(shape, layout, dtype, rate, tuple(block), 42 if seed is None else seed, stream,
                                  compat=compat, digest=seed is not None)


def many_clients_request(i):
    layout, dtype, compat = MANY_CLIENTS[i]
    return refvectors.run_request((2, 3, 7 + i, 9), layout, dtype, 0.3, (3, 2), 11 + i, 2, compat=compat)


def reference_requests():
    """Every question this suite asks dropblock_ref.py (tools/gen_refvectors.py answers them)."""
    seeds = [None, 0, 1, 2, 7, 8, *BAD_INPUT_SEEDS, *FAULT_SEEDS, *FAULT_OTHER_SEEDS]
    reqs = [exact_request(seed=s) for s in seeds] + [exact_request(rate=0.0)]
    reqs += [exact_request(shape, layout, dtype, seed=s)
             for k, s in enumerate(FAULT_AUTO_SEEDS) for shape, layout, dtype in [FAULT_AUTO[k % 3]]]
    reqs += [many_clients_request(i) for i in range(len(MANY_CLIENTS))]
    reqs.append(refvectors.run_request(**BIG_JOB, digest=True))
    return reqs


def job(region, shape, offset=0, out_offset=None, **kw):
    req = {"op": "dropblock2d", "input": {"region": region, "offset": offset}, "shape": list(shape),
           "rate": kw.pop("rate", 0.1), "block": kw.pop("block", 3), "seed": kw.pop("seed", 0)}
    if out_offset is not None:
        req["output"] = {"region": region, "offset": out_offset}
    req.update(kw)
    return req


def exact_job(c, m, region, ref, device="auto", **kw):
    """Runs one job (exact_request(**kw)) out of place and compares every bit with the reference."""
    q = exact_request(**kw)
    want = ref.ask(q)
    x = want.x_bytes
    m[0:len(x)] = x
    out = 1 << 16
    r = c.call(job(region, q["shape"], 0, out, rate=q["rate"], block=q["block"], seed=q["seed"], stream=q["stream"],
                   layout=q["layout"], dtype=q["dtype"], compat=q["compat"], device=device))
    ok = (r is not None and r.get("ok") and r["kept"] == want.kept and r["total"] == want.total
          and r["scale_bits"] == want.scale_hex and want.y_matches(m[out:out + len(x)]))
    return ok, r


def expect_error(r, code, words, what):
    ok = r is not None and r.get("ok") is False and r["error"]["code"] == code and all(
        w in r["error"]["message"] for w in words)
    check(ok, "%s: expected %s naming %s, got %s" % (what, code, words, r))


def test_bad_inputs(exe, ref):
    d = Daemon(exe)
    with guarded(d, "bad-input", log_tail=True):
        good = Client(d.path)
        rg, gm = good.region(1 << 17)
        check(rg["ok"], "register a sealed memfd: %s" % rg)
        ok, r = exact_job(good, gm, rg["region"], ref)
        check(ok, "the second client's first job is exact: %s" % r)
        baseline = d.fds()
        seeds = iter(BAD_INPUT_SEEDS)

        def bad(send, code, words, what, closes=False):
            c = Client(d.path)
            try:
                r = send(c)
                if closes:
                    check(r is None or (r.get("ok") is False and r["error"]["code"] == code),
                          "%s: expected %s or a closed connection, got %s" % (what, code, r))
                    if r is not None:
                        check(c.recv() is None, "%s: the connection is closed after the error" % what)
                else:
                    expect_error(r, code, words, what)
            finally:
                c.close()
            ok, r2 = exact_job(good, gm, rg["region"], ref, seed=next(seeds))
            check(ok, "after %s the other client still gets exact results: %s" % (what, r2))

        bad(lambda c: (c.send_raw(struct.pack("<I", 0)), c.recv())[1], "invalid_argument", ["frame length 0"],
            "zero-length frame", closes=True)
        bad(lambda c: (c.send_raw(struct.pack("<I", 65537) + b"{" * 100), c.recv())[1], "invalid_argument",
            ["65537"], "over-64-KiB frame", closes=True)
        bad(lambda c: (c.send_raw(struct.pack("<I", 100) + b'{"v":1'), c.s.shutdown(socket.SHUT_WR), c.recv())[2],
            "invalid_argument", [], "truncated frame", closes=True)
        bad(lambda c: (c.send(b"{not json"), c.recv())[1], "invalid_argument", ["invalid JSON"], "invalid JSON")
        bad(lambda c: (c.send(b"[1,2,3]"), c.recv())[1], "invalid_argument", ["object"], "a non-object")
        bad(lambda c: c.call({"op": "frobnicate"}), "not_found", ["frobnicate"], "unknown op")
        bad(lambda c: c.call({"op": "hello", "v": 2}), "invalid_argument", ["v:"], "wrong version")
        bad(lambda c: (c.send({"v": 1, "op": "hello"}), c.recv())[1], "invalid_argument", ["id"], "missing id")
        bad(lambda c: c.call({"op": 5}), "invalid_argument", ["op"], "ill-typed op")
        region_job = lambda c, **kw: c.call(job(rg["region"], **kw))  # noqa: E731
        bad(lambda c: c.call({"op": "dropblock2d", "shape": [1, 1, 4, 4], "rate": 0.1, "block": 2, "seed": 0}),
            "invalid_argument", ["input"], "missing input")
        bad(lambda c: c.call({"op": "dropblock2d", "input": {"region": 1}, "rate": 0.1, "block": 2, "seed": 0}),
            "invalid_argument", ["shape"], "missing shape")
        bad(lambda c: c.call({"op": "dropblock2d", "input": {"region": 1}, "shape": [1, 1, 4, 4], "rate": "0.1",
                              "block": 2, "seed": 0}), "invalid_argument", ["rate"], "ill-typed rate")
        bad(lambda c: c.call({"op": "dropblock2d", "input": "r1", "shape": [1, 1, 4, 4], "rate": 0.1, "block": 2,
                              "seed": 0}), "invalid_argument", ["input"], "ill-typed input")
        bad(lambda c: region_job(c, shape=(1, 0, 4, 4)), "invalid_argument", ["shape", "C"], "zero dimension")
        bad(lambda c: region_job(c, shape=(1, -2, 4, 4)), "invalid_argument", ["shape", "C"], "negative dimension")
        bad(lambda c: region_job(c, shape=(1 << 20, 1 << 20, 2, 2)), "invalid_argument", ["2^40"],
            "overflowing shape")
        bad(lambda c: region_job(c, shape=("18446744073709551615", "18446744073709551615", 1, 1)),
            "invalid_argument", ["2^40"], "u64-overflowing shape")
        bad(lambda c: region_job(c, shape=(1, 4, 4)), "invalid_argument", ["shape", "4 integers"], "3-D shape")
        bad(lambda c: region_job(c, shape=(1, 1, 4, 4), seed="18446744073709551616"), "invalid_argument", ["seed"],
            "seed beyond 2^64")
        bad(lambda c: region_job(c, shape=(1, 1, 4, 4), seed=1.5), "invalid_argument", ["seed"], "fractional seed")
        bad(lambda c: region_job(c, shape=(1, 1, 4, 4), rate=1.5), "invalid_argument", ["rate"], "rate above 1")
        bad(lambda c: region_job(c, shape=(1, 1, 4, 4), rate=-0.1), "invalid_argument", ["rate"], "negative rate")
        bad(lambda c: (c.send(b'{"v":1,"id":1,"op":"dropblock2d","input":{"region":1},"shape":[1,1,4,4],'
                              b'"rate":NaN,"block":2,"seed":0}'), c.recv())[1], "invalid_argument", ["JSON"],
            "NaN rate")
        bad(lambda c: (c.send(b'{"v":1,"id":1,"op":"dropblock2d","input":{"region":1},"shape":[1,1,4,4],'
                              b'"rate":1e999,"block":2,"seed":0}'), c.recv())[1], "invalid_argument", ["rate"],
            "infinite rate")
        bad(lambda c: region_job(c, shape=(1, 1, 4, 4), block=0), "invalid_argument", ["block"], "block 0")
        bad(lambda c: region_job(c, shape=(1, 1, 4, 4), block=[2, 0]), "invalid_argument", ["block", "width"],
            "block width 0")
        bad(lambda c: region_job(c, shape=(1, 1, 4, 4), dtype="f64"), "invalid_argument", ["dtype", "f64"],
            "unknown dtype")
        bad(lambda c: region_job(c, shape=(1, 1, 4, 4), layout="HWCN"), "invalid_argument", ["layout", "HWCN"],
            "unknown layout")
        bad(lambda c: region_job(c, shape=(1, 1, 4, 4), device="tpu:7"), "not_found", ["tpu:7"], "unknown device")
        bad(lambda c: c.call({"op": "region.register"}), "invalid_argument", ["region.register", "1 descriptor"],
            "register without an fd")

        def unsealed(c):
            fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, 4096)
            r = c.call({"op": "region.register", "fds": 1}, [fd])
            os.close(fd)
            return r
        bad(unsealed, "invalid_argument", ["F_SEAL_SHRINK"], "an unsealed memfd")

        def pipe_fd(c):
            a, b = os.pipe()
            r = c.call({"op": "region.register", "fds": 1}, [a])
            os.close(a)
            os.close(b)
            return r
        bad(pipe_fd, "invalid_argument", ["pipe"], "a pipe fd")

        def socket_fd(c):
            a, b = socket.socketpair()
            r = c.call({"op": "region.register", "fds": 1}, [a.fileno()])
            a.close()
            b.close()
            return r
        bad(socket_fd, "invalid_argument", ["socket"], "a socket fd")
        bad(lambda c: c.call({"op": "region.register", "fds": 2}, [os.memfd_create("x")]), "invalid_argument",
            ["2 declared", "1 received"], "fewer fds than declared")

        def beyond(c):
            r, m = c.region(4096)
            return c.call(job(r["region"], (1, 1, 32, 32), offset=1))
        bad(beyond, "out_of_range", ["exceeds", "4096"], "offset + size beyond the region")
        bad(lambda c: c.call(job(2**31, (1, 1, 4, 4))), "not_found", ["not registered"], "an unknown region")
        bad(lambda c: c.call(job(rg["region"], (1, 1, 4, 4))), "not_found", ["not registered"],
            "another client's region")

        def overlap(c):
            r, m = c.region(8192)
            return c.call(job(r["region"], (1, 1, 16, 16), offset=0, out_offset=4))
        bad(overlap, "invalid_argument", ["overlaps"], "a shifted output overlap")

        def too_many_fds(c):
            fds = [os.memfd_create("x") for _ in range(17)]
            try:
                c.send({"v": 1, "id": 1, "op": "hello"}, fds)
                return c.recv()
            finally:
                for f in fds:
                    os.close(f)
        bad(too_many_fds, "invalid_argument", [], "17 descriptors at once", closes=True)

        def disconnect_in_flight(c):
            r, m = c.region(64 << 20)
            c.send({"v": 1, "id": 1, **job(r["region"], (16, 64, 64, 64), rate=0.2, block=7, device="cpu:0")})
            time.sleep(0.05)
            return None
        bad(disconnect_in_flight, "", [], "disconnect with a job in flight", closes=True)
        check(d.wait_fds(baseline, 30), "descriptor count back to baseline %d (now %d)" % (baseline, d.fds()))
        check(d.proc.poll() is None, "the daemon survived every bad input")
        good.close()
    check(not os.path.exists(d.path), "the socket is removed at exit")


def test_many_clients(exe, ref):
    """16 clients x 50 mixed jobs at once, pipelined, all exact, none lost."""
    d = Daemon(exe, ["--max-inflight-jobs", "1024"])
    with guarded(d, "many-clients"):
        cases = []
        for i, (layout, dtype, compat) in enumerate(MANY_CLIENTS):
            shape = (2, 3, 7 + i, 9)
            want = ref.ask(many_clients_request(i))
            cases.append((shape, layout, dtype, compat, want.x_bytes, want, want.kept, want.total, want.scale_hex,
                          11 + i))
        clients = [Client(d.path) for _ in range(16)]
        slot = 1 << 12
        regions = []
        for c in clients:
            r, m = c.region(slot * 2 * 50)
            regions.append((r["region"], m))
        for ci, c in enumerate(clients):  # send everything first: many requests in flight per connection
            reg, m = regions[ci]
            for k in range(50):
                shape, layout, dtype, compat, x, *_ , seed = cases[(ci + k) % 4]
                m[2 * slot * k:2 * slot * k + len(x)] = x
                c.send({"v": 1, "id": k, **job(reg, shape, 2 * slot * k, 2 * slot * k + slot, rate=0.3, block=[3, 2],
                                               seed=seed, stream=2, layout=layout, dtype=dtype, compat=compat)})
        exact = lost = busy = 0
        for ci, c in enumerate(clients):
            reg, m = regions[ci]
            seen = set()
            for _ in range(50):
                r = c.recv()
                if r is None:
                    break
                k = r["id"]
                seen.add(k)
                if not r["ok"]:
                    busy += r["error"]["code"] == "resource_exhausted"
                    print("  job error:", r)
                    continue
                shape, layout, dtype, compat, x, y, kept, total, scale, seed = cases[(ci + k) % 4]
                o = 2 * slot * k + slot
                exact += (r["kept"], r["total"], r["scale_bits"]) == (kept, total, scale) and y.y_matches(m[o:o + len(x)])
            lost += 50 - len(seen)
        check(exact == 800 and lost == 0, "16 x 50 jobs: %d exact, %d lost, %d refused as busy" % (exact, lost, busy))
        for c in clients:
            c.close()


def test_sigterm_with_queue(exe, ref):
    """SIGTERM with jobs queued: running ones reply, queued ones get `unavailable`, exit 0."""
    d = Daemon(exe, ["--devices", "cpu"])
    try:
        c = Client(d.path)
        r, m = c.region(8 << 20)
        n = 40
        for k in range(n):
            c.send({"v": 1, "id": k, **job(r["region"], (16, 32, 64, 64), rate=0.2, block=7, seed=k)})
        # the signal once a job has finished, not after a fixed time (which a fast device may
        # take to finish them all): the others are running or queued then
        first = c.recv()
        d.proc.send_signal(signal.SIGTERM)
        replies = [first] + [c.recv() for _ in range(n - 1)]
        done = sum(1 for x in replies if x and x["ok"])
        unavailable = sum(1 for x in replies if x and not x["ok"] and x["error"]["code"] == "unavailable")
        check(done + unavailable == n and unavailable > 0 and done > 0,
              "SIGTERM: %d finished, %d unavailable of %d" % (done, unavailable, n))
        check(d.proc.wait(60 * SLOW) == 0, "exit status 0 after SIGTERM")
        check(not os.path.exists(d.path), "socket removed after SIGTERM")
        c.close()
    except Exception:
        check(False, "sigterm test crashed: " + traceback.format_exc())
    finally:
        d.stop()


def test_limits_and_region_lifetime(exe, ref):
    """Past the per-client job or byte limit a job is refused at once; a region unregistered
    under a running job stays mapped until the job is done."""
    d = Daemon(exe, ["--devices", "cpu", "--max-client-jobs", "2", "--max-client-bytes", str(40 << 20),
                     "--small-job-bytes", "0"])
    with guarded(d, "limits"):
        c = Client(d.path)
        r, m = c.region(48 << 20)
        big = job(r["region"], (16, 64, 64, 64), rate=0.2, block=7)   # 16 MiB in place
        for k in range(3):
            c.send({"v": 1, "id": k, **big})
        replies = {x["id"]: x for x in (c.recv() for _ in range(3))}
        check(replies[2].get("ok") is False and replies[2]["error"]["code"] == "resource_exhausted"
              and "per-client" in replies[2]["error"]["message"],
              "a third job past --max-client-jobs 2 is refused at once: %s" % replies[2])
        check(replies[0]["ok"] and replies[1]["ok"], "the first two jobs ran")
        two = job(r["region"], (16, 64, 64, 64), out_offset=16 << 20, rate=0.2, block=7)  # 32 MiB in flight
        c.send({"v": 1, "id": 10, **two})
        c.send({"v": 1, "id": 11, **two})
        replies = {x["id"]: x for x in (c.recv() for _ in range(2))}
        check(replies[11].get("ok") is False and "bytes" in replies[11]["error"]["message"],
              "a job past --max-client-bytes is refused: %s" % replies[11])
        # unregister while the job runs: the job still completes with exact bits
        big = ref.ask(refvectors.run_request(**BIG_JOB, digest=True))
        x, kept = big.x_bytes, big.kept
        m[0:len(x)] = x
        c.send({"v": 1, "id": 20, **job(r["region"], (8, 16, 64, 64), out_offset=len(x), rate=0.2, block=7, seed=3)})
        c.send({"v": 1, "id": 21, "op": "region.unregister", "region": r["region"]})
        replies = {x["id"]: x for x in (c.recv() for _ in range(2))}
        check(replies[21]["ok"], "unregister answered while a job runs on the region")
        check(replies[20]["ok"] and replies[20]["kept"] == kept and big.y_matches(m[len(x):2 * len(x)]),
              "the job on the unregistered region finished exactly: %s" % {k: v for k, v in replies[20].items()
                                                                          if k != "timing_us"})
        r2 = c.call(job(r["region"], (1, 1, 4, 4)))
        expect_error(r2, "not_found", ["not registered"], "a job on the unregistered region")
        c.close()


def test_client_that_never_reads(exe, ref):
    """A client that floods requests and never reads its replies stops being read (backpressure):
    the daemon's memory stays bounded and other clients keep getting exact results."""
    d = Daemon(exe)
    with guarded(d, "flood"):
        good = Client(d.path)
        rg, gm = good.region(1 << 17)
        rss0 = int(open("/proc/%d/status" % d.proc.pid).read().split("VmRSS:")[1].split()[0])
        flood = Client(d.path)
        flood.s.setblocking(False)
        body = json.dumps({"v": 1, "id": 1, "op": "status"}).encode()
        frame = struct.pack("<I", len(body)) + body
        sent = 0
        t_end = time.time() + 5
        while time.time() < t_end:
            try:
                sent += flood.s.send(frame * 64)
            except BlockingIOError:
                break   # the daemon stopped reading us: the socket buffers are full
        rss = int(open("/proc/%d/status" % d.proc.pid).read().split("VmRSS:")[1].split()[0])
        check(sent < 64 << 20, "the flood was stopped by backpressure after %d bytes" % sent)
        # only the growth counts: sanitizers and valgrind make the baseline itself large
        check(rss - rss0 < 64 * 1024,
              "daemon RSS %d KiB (%d before) stays bounded under a flood of unread replies" % (rss, rss0))
        ok, r = exact_job(good, gm, rg["region"], ref)
        check(ok, "another client is served during the flood: %s" % r)
        flood.close()


def test_small_job_threshold(exe):
    """--small-job-bytes: auto (the default) measures the threshold at start-up, on a ladder of
    job sizes timed on the built-in CPU backend and on the default device, and the status reply
    and the start-up log report it; an explicit byte count (0 included) is taken as given; with
    nothing to compare (only the built-in CPU backend) a fixed bound is used and said so."""
    d = Daemon(exe)
    with guarded(d, "small-job threshold"):
        c = Client(d.path)
        st = c.call({"op": "status"})
        devs = [x["id"] for x in st["devices"]]
        c.close()
        sj = st.get("small_jobs")
        check(isinstance(sj, dict) and isinstance(sj.get("max_bytes"), int),
              "status reports small_jobs.max_bytes: %s" % sj)
        only_cpu = all(x.startswith("cpu") for x in devs)
        if sj and sj.get("source") == "measured":
            lad = sj.get("ladder") or []
            check(len(lad) >= 1 and all(isinstance(g.get(k), (int, float)) for g in lad
                                        for k in ("bytes", "cpu_us", "device_us")),
                  "a measured threshold comes with its ladder: %s" % sj)
            check(all(a["bytes"] < b["bytes"] for a, b in zip(lad, lad[1:])), "the ladder grows: %s" % lad)
            check(sj.get("cpu") in devs and sj.get("device") in devs and sj["device"] != sj["cpu"],
                  "the two devices compared are named: %s" % sj)
            # the crossover rule (daemon/smalljob.h): never below the largest rung the CPU won;
            # below the rung after it (which the CPU lost); that rung itself when it is the last
            # (or the documented 65536 where the ladder was cut short below that)
            wins = [i for i, g in enumerate(lad) if g["cpu_us"] <= g["device_us"]]
            check(sj["max_bytes"] <= max(lad[-1]["bytes"], 65536), "never past the ladder: %s" % sj)
            if not wins:
                check(sj["max_bytes"] == 0, "the device won every rung: never the CPU: %s" % sj)
            elif wins[-1] + 1 < len(lad):
                k = wins[-1]
                check(lad[k]["bytes"] <= sj["max_bytes"] < lad[k + 1]["bytes"],
                      "the threshold lies between the largest rung the CPU won and the next: %s" % sj)
            else:
                check(sj["max_bytes"] >= lad[-1]["bytes"], "the CPU won the last rung: at least that rung: %s" % sj)
            check(isinstance(sj.get("measure_us"), int) and sj["measure_us"] < 3_000_000 * SLOW,
                  "the measurement is bounded in time: %s" % sj.get("measure_us"))
            check("small jobs: auto jobs of at most %d bytes" % sj["max_bytes"] in d.logtext(),
                  "the start-up log states the measured threshold: %s" % d.logtext()[-800:])
        else:
            # (under valgrind the ladder's first size may take longer than its budget: said so)
            check(sj and sj.get("source") == "fallback" and sj.get("max_bytes") == 65536
                  and (only_cpu or "longer than its time budget" in d.logtext()),
                  "without a device to compare the threshold is the fixed fallback: %s (devices %s)" % (sj, devs))

    for arg, want in (("12345", 12345), ("0", 0)):
        d = Daemon(exe, ["--small-job-bytes", arg])
        with guarded(d, "small-job option"):
            c = Client(d.path)
            sj = c.call({"op": "status"}).get("small_jobs") or {}
            c.close()
            check(sj.get("max_bytes") == want and sj.get("source") == "option" and "ladder" not in sj,
                  "--small-job-bytes %s is taken as given, nothing measured: %s" % (arg, sj))

    d = Daemon(exe, ["--devices", "cpu", "--small-job-bytes", "auto"])
    with guarded(d, "small-job fallback"):
        c = Client(d.path)
        sj = c.call({"op": "status"}).get("small_jobs") or {}
        c.close()
        check(sj.get("source") == "fallback" and sj.get("max_bytes") == 65536,
              "only the built-in CPU backend: nothing to measure, the fixed bound: %s" % sj)
        check("not measured" in d.logtext(), "the log says it was not measured")

    for bad in ("-1", "12k", "automatic"):
        p = subprocess.run(daemon_cmd(exe, "--socket", "/nonexistent/x.sock", "--small-job-bytes", bad),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60 * SLOW)
        check(p.returncode == 2 and "--small-job-bytes" in p.stderr,
              "--small-job-bytes %s is refused with status 2: %d %s" % (bad, p.returncode, p.stderr))


def device_ids(exe):
    """The daemon's device ids, from a daemon started for the purpose."""
    d = Daemon(exe)
    try:
        c = Client(d.path)
        ids = [x["id"] for x in c.call({"op": "devices"})["devices"]]
        c.close()
        return ids
    finally:
        d.stop()


def test_faults(exe, ref):
    """DROPBLOCK_FAULTS (docs/reliability.md): a device fails one job (`internal` naming it), fails
    to allocate for one (`resource_exhausted` naming it), then vanishes (`unavailable` naming it,
    unhealthy in devices and status); meanwhile and afterwards other jobs are exact and `auto`
    never picks the vanished device. The daemon keeps serving."""
    ids = device_ids(exe)
    others = [i for i in ids if not i.startswith("cpu:")]
    victim = "opencl:0" if "opencl:0" in ids else (others[0] if others else "cpu:0")
    alloc_dev = "vulkan:0" if "vulkan:0" in ids and victim != "vulkan:0" else \
        next((i for i in ids if i != victim), victim)
    faults = "fail:%s:2,alloc:%s:2,vanish:%s:4" % (victim, alloc_dev, victim)
    print("fault test: devices %s, DROPBLOCK_FAULTS=%s" % (ids, faults))
    # no small-job shortcut: every auto job is chosen among all healthy devices
    d = Daemon(exe, ["--small-job-bytes", "0"], env={"DROPBLOCK_FAULTS": faults})
    with guarded(d, "fault", log_tail=True):
        log = d.logtext()
        check("DROPBLOCK_FAULTS: device %s: injected fault \"fail\" at its job 2" % victim in log,
              "the daemon logs the armed faults: %s" % log[-600:])
        good = Client(d.path)
        rg, gm = good.region(1 << 17)
        c = Client(d.path)
        r, m = c.region(1 << 17)
        seeds = iter(FAULT_SEEDS)
        seed = [None]

        def run(dev, **kw):
            seed[0] = kw.pop("seed", None) or next(seeds)
            return exact_job(c, m, r["region"], ref, device=dev, seed=seed[0], **kw)

        # the other client's jobs must not change the victim's job numbering: a third device
        # while the victim is healthy, auto (which must avoid it) once it vanished
        bystander = next((i for i in ids if i not in (victim, alloc_dev)), None)

        def other_client_ok(what, dev):
            if dev is None:
                return
            ok, rr = exact_job(good, gm, rg["region"], ref, seed=seed[0] + 1000, device=dev)
            check(ok and rr["device"] != victim, "%s: the other client's job on %s is exact: %s" % (what, dev, rr))

        ok, rr = run(victim)
        check(ok, "%s job 1 is exact: %s" % (victim, rr))
        ok, rr = run(victim)
        expect_error(rr, "internal", ["device %s failed the job" % victim, "injected fault"],
                     "%s job 2 (injected fail)" % victim)
        other_client_ok("after a failed job", bystander)
        ok, rr = run(victim)
        check(ok, "%s job 3 (after a failed job) is exact: %s" % (victim, rr))
        if alloc_dev != victim:
            ok, rr = run(alloc_dev)
            check(ok, "%s job 1 is exact: %s" % (alloc_dev, rr))
            ok, rr = run(alloc_dev)
            expect_error(rr, "resource_exhausted", ["device %s could not allocate" % alloc_dev, "injected fault"],
                         "%s job 2 (injected alloc)" % alloc_dev)
            ok, rr = run(alloc_dev)
            check(ok, "%s job 3 (after a failed allocation) is exact: %s" % (alloc_dev, rr))
        devs = {x["id"]: x for x in c.call({"op": "devices"})["devices"]}
        check(all(x["healthy"] is True for x in devs.values()), "every device is healthy before the vanish: %s" % devs)

        ok, rr = run(victim)
        expect_error(rr, "unavailable", ["device %s" % victim, "vanished", "injected fault"],
                     "%s job 4 (injected vanish)" % victim)
        other_client_ok("after the vanish", "auto")
        ok, rr = run(victim)
        expect_error(rr, "unavailable", ["device %s is unavailable" % victim, "unhealthy"],
                     "a job sent to %s after it vanished" % victim)
        devs = {x["id"]: x for x in c.call({"op": "devices"})["devices"]}
        check(devs[victim]["healthy"] is False and all(x["healthy"] for i, x in devs.items() if i != victim),
              "devices: only %s is unhealthy: %s" % (victim, {i: x["healthy"] for i, x in devs.items()}))
        hello = c.call({"op": "hello"})
        check([x["healthy"] for x in hello["devices"] if x["id"] == victim] == [False], "hello reports the health too")
        st = c.call({"op": "status"})
        sd = {x["id"]: x for x in st["devices"]}
        check(sd[victim]["healthy"] is False and "vanished at its job 4" in sd[victim].get("unhealthy_reason", ""),
              "status: %s unhealthy with its reason: %s" % (victim, sd[victim]))
        check(all(x["healthy"] and "unhealthy_reason" not in x for i, x in sd.items() if i != victim),
              "status: the others are healthy")
        check(sd[victim]["failed"] >= 3, "status counts the failed jobs of %s: %s" % (victim, sd[victim]))

        # auto goes to the others: sizes, dtypes and layouts vary; all exact, none on the victim
        used, exact = set(), 0
        for k in range(24):
            shape, layout, dtype = FAULT_AUTO[k % 3]
            ok, rr = run("auto", shape=shape, layout=layout, dtype=dtype, seed=FAULT_AUTO_SEEDS[k])
            exact += ok
            if rr and rr.get("ok"):
                used.add(rr["device"])
        print("fault test: after %s vanished, 24 auto jobs ran on %s" % (victim, sorted(used)))
        check(exact == 24 and victim not in used,
              "24 auto jobs after the vanish: %d exact, ran on %s (never %s)" % (exact, sorted(used), victim))
        check(d.proc.poll() is None, "the daemon keeps serving")
        c.close()
        good.close()
    # every device of a daemon vanished: auto says so
    d = Daemon(exe, ["--devices", "cpu"], env={"DROPBLOCK_FAULTS": "vanish:cpu:0:1"})
    with guarded(d, "all-vanished"):
        c = Client(d.path)
        r, m = c.region(1 << 17)
        ok, rr = exact_job(c, m, r["region"], ref)
        expect_error(rr, "unavailable", ["device cpu:0", "vanished"], "the only device vanishes")
        ok, rr = exact_job(c, m, r["region"], ref)
        expect_error(rr, "unavailable", ["no healthy device", "cpu:0"], "auto with no healthy device left")
        ok, rr = exact_job(c, m, r["region"], ref, rate=0.0)  # the identity: still refused for a device that is gone
        expect_error(rr, "unavailable", ["no healthy device"], "an identity job with no healthy device left")
        c.close()
    # "lost": the job runs and the device API answers as for a device that is gone; each backend's
    # own error mapping makes it unavailable and the engine marks the device unhealthy
    lost = [(g, code) for g, code in (("opencl:0", "CL_DEVICE_NOT_AVAILABLE"), ("vulkan:0", "VK_ERROR_DEVICE_LOST"))
            if g in ids]
    if lost:
        faults = ",".join("lost:%s:1" % g for g, _ in lost)
        print("lost-device test: DROPBLOCK_FAULTS=%s" % faults)
        d = Daemon(exe, ["--devices", ",".join(["cpu:0"] + [g for g, _ in lost])], env={"DROPBLOCK_FAULTS": faults})
        with guarded(d, "lost-device"):
            c = Client(d.path)
            r, m = c.region(1 << 17)
            for g, code in lost:
                ok, rr = exact_job(c, m, r["region"], ref, device=g)
                expect_error(rr, "unavailable", ["device %s" % g, code, "injected fault", "marked unhealthy"],
                             "%s job 1 (its API reports it lost)" % g)
                ok, rr = exact_job(c, m, r["region"], ref, device=g)
                expect_error(rr, "unavailable", ["device %s is unavailable" % g, "unhealthy", code],
                             "a job sent to %s after it was lost" % g)
            sd = {x["id"]: x for x in c.call({"op": "status"})["devices"]}
            for g, code in lost:
                check(sd[g]["healthy"] is False and code in sd[g].get("unhealthy_reason", ""),
                      "status: %s unhealthy, the reason naming %s: %s" % (g, code, sd[g]))
            ok, rr = exact_job(c, m, r["region"], ref)
            check(ok and rr["device"] == "cpu:0", "auto after the losses runs exact on cpu:0: %s" % rr)
            c.close()
    # a malformed list stops the daemon before it opens any device
    for bad in ("explode:cpu:0:1", "fail:cpu:0", "fail:cpu:0:0", "fail::3"):
        r = subprocess.run(daemon_cmd(exe, "--socket", os.path.join(tempfile.mkdtemp(prefix="dbd-"), "d.sock")),
                           capture_output=True, text=True, timeout=60 * SLOW, env={**os.environ, "DROPBLOCK_FAULTS": bad})
        check(r.returncode != 0 and "DROPBLOCK_FAULTS" in r.stderr and bad in r.stderr,
              "DROPBLOCK_FAULTS=%s is refused naming the entry: rc %s %s" % (bad, r.returncode, r.stderr.strip()[-300:]))


def test_faults_ignored(exe, ref):
    """Built with -Dfault_injection=false: DROPBLOCK_FAULTS is ignored, even a malformed one."""
    d = Daemon(exe, ["--devices", "cpu"], env={"DROPBLOCK_FAULTS": "fail:cpu:0:1,garbage"})
    try:
        c = Client(d.path)
        r, m = c.region(1 << 17)
        for k in range(3):
            ok, rr = exact_job(c, m, r["region"], ref, seed=k)
            check(ok, "job %d with DROPBLOCK_FAULTS set but not built in is exact: %s" % (k, rr))
        c.close()
    finally:
        check(d.stop() == 0, "SIGTERM exits 0")


KILLED_CLIENT = r"""
import fcntl, json, mmap, os, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
def send(obj, fds=()):
    b = json.dumps(obj).encode()
    data = struct.pack("<I", len(b)) + b
    if fds:
        s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))])
    else:
        s.sendall(data)
def recv():
    h = b""
    while len(h) < 4:
        h += s.recv(4 - len(h))
    n = struct.unpack("<I", h)[0]
    d = b""
    while len(d) < n:
        d += s.recv(n - len(d))
    return json.loads(d)
regions = []
for k in range(3):
    fd = os.memfd_create("killed", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 32 << 20)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    send({"v": 1, "id": k, "op": "region.register", "fds": 1}, [fd])
    regions.append(recv()["region"])
shape = json.loads(sys.argv[2])
devices = sys.argv[3:]
for k in range(8):   # big jobs on every device: some run, the rest wait in the queues
    send({"v": 1, "id": 100 + k, "op": "dropblock2d", "input": {"region": regions[k % 3], "offset": 0},
          "shape": shape, "rate": 0.2, "block": 7, "seed": k, "device": devices[k % len(devices)]})
print("submitted", flush=True)
time.sleep(60)
"""


def test_client_killed_mid_job(exe, ref):
    """A client SIGKILLed with big jobs running and queued on every device leaves nothing behind:
    descriptors, region mappings, regions and clients return to the baseline, and the other
    client's jobs stay exact."""
    d = Daemon(exe)
    with guarded(d, "killed-client"):
        good = Client(d.path)
        rg, gm = good.region(1 << 17)
        ok, r = exact_job(good, gm, rg["region"], ref)
        check(ok, "first job exact: %s" % r)
        devices = [x["id"] for x in good.call({"op": "devices"})["devices"]]
        base_fds, base_maps = d.fds(), d.memfd_maps()
        for round_ in range(2):
            # 16 MiB tensors; under valgrind (where such a job takes a minute) 1 MiB ones
            shape = [2, 32, 64, 64] if WRAPPER else [16, 64, 64, 64]
            p = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, d.path, json.dumps(shape), *devices],
                                 stdout=subprocess.PIPE, text=True)
            line = p.stdout.readline()
            check(line.strip() == "submitted", "the doomed client submitted its jobs: %r" % line)
            time.sleep(0.2)
            st = good.call({"op": "status"})
            check(st["clients"] == 2 and st["regions"] == 4 and st["jobs"]["running"] + st["jobs"]["queued"] > 0,
                  "jobs in flight when the client is killed: %s" % {k: st[k] for k in ("clients", "regions", "jobs")})
            p.kill()
            p.wait()
            p.stdout.close()
            ok, r = exact_job(good, gm, rg["region"], ref, seed=7 + round_)
            check(ok, "the other client's job right after the kill is exact: %s" % r)
            end = time.time() + 60 * SLOW
            while time.time() < end:
                st = good.call({"op": "status"})
                # (a job the worker finished is in flight until the loop thread takes its completion)
                if (st["clients"], st["regions"], st["jobs"]["running"] + st["jobs"]["queued"], st["inflight_bytes"]) \
                        == (1, 1, 0, 0) and d.fds() <= base_fds and d.memfd_maps() <= base_maps:
                    break
                time.sleep(0.05)
            check(st["clients"] == 1 and st["regions"] == 1 and st["jobs"]["running"] + st["jobs"]["queued"] == 0 and
                  st["inflight_bytes"] == 0,
                  "round %d: the killed client's connection, regions and jobs are gone: %s" % (round_, st))
            check(d.fds() == base_fds, "round %d: descriptors back to %d (now %d)" % (round_, base_fds, d.fds()))
            check(d.memfd_maps() == base_maps,
                  "round %d: region mappings back to %d (now %d)" % (round_, base_maps, d.memfd_maps()))
        good.close()


def test_stale_socket_and_second_daemon(exe):
    d = Daemon(exe)
    try:
        second = subprocess.run(daemon_cmd(exe, "--socket", d.path), capture_output=True, text=True, timeout=60 * SLOW)
        check(second.returncode != 0 and "another daemon" in second.stderr,
              "a second daemon on a live socket refuses: %s" % second.stderr.strip())
    finally:
        d.stop()
    # a stale socket file (nothing answers) is replaced
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(d.path)
    s.close()
    d2 = Daemon(exe, sockdir=d.dir)
    check(Client(d2.path).call({"op": "hello"})["ok"], "a stale socket is replaced")
    check(d2.stop() == 0, "exit 0")
    with open(d.path, "w") as f:
        f.write("not a socket")
    r = subprocess.run(daemon_cmd(exe, "--socket", d.path), capture_output=True, text=True, timeout=60 * SLOW)
    check(r.returncode != 0 and "not a socket" in r.stderr, "a regular file at the path is left alone")
    os.unlink(d.path)


def probe_as_nobody(path, op, groups=None):
    """Sends one request as uid/gid 65534 (setpriv), with the supplementary groups given (else
    none), and returns the reply's error code or 'ok'."""
    probe = ("import socket,struct,json\n"
             "s=socket.socket(socket.AF_UNIX);s.settimeout(20);s.connect(%r)\n"
             "b=json.dumps({'v':1,'id':1,'op':%r}).encode()\n"
             "try: s.sendall(struct.pack('<I',len(b))+b)\n"
             "except BrokenPipeError: pass  # a refused peer is answered and closed at once\n"
             "h=b''\n"
             "while len(h)<4: h+=s.recv(4-len(h))\n"
             "n=struct.unpack('<I',h)[0];d=b''\n"
             "while len(d)<n: d+=s.recv(n-len(d))\n"
             "r=json.loads(d);print(r['error']['code'] if not r['ok'] else 'ok')\n") % (path, op)
    gr = ["--groups=" + ",".join(map(str, groups))] if groups else ["--clear-groups"]
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534"] + gr + [SYSTEM_PYTHON, "-c", probe],
                       capture_output=True, text=True, timeout=60)
    return (r.stdout.strip() or r.stderr.strip()[-300:])


SYSTEM_PYTHON = "/usr/bin/python3"  # reachable by other users, unlike a python under /root


def test_peer_credentials(exe):
    """A uid not on the allow-list gets permission_denied (run as another user with setpriv)."""
    if os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON):
        print("skip peer-credential test: needs root and %s to act as another user" % SYSTEM_PYTHON)
        return
    d = Daemon(exe, sockdir=tempfile.mkdtemp(prefix="dbd-cred-"))
    try:
        os.chmod(d.dir, 0o755)
        os.chmod(d.path, 0o666)  # let the other user reach the socket: SO_PEERCRED must stop it
        got = probe_as_nobody(d.path, "hello")
        check(got == "permission_denied", "uid 65534 is refused with permission_denied: %s" % got)
        mode = os.stat(d.path).st_mode & 0o777
        check(mode == 0o666, "test setup changed the mode")  # the daemon itself creates 0660
    finally:
        d.stop()
    d = Daemon(exe)
    try:
        check(os.stat(d.path).st_mode & 0o777 == 0o660, "the socket is created with mode 0660")
        check(os.stat(d.dir).st_mode & 0o777 in (0o700,), "the socket directory is private (0700)")
        # allowed by --allow-uid
    finally:
        d.stop()
    d = Daemon(exe, ["--allow-uid", "65534"], sockdir=tempfile.mkdtemp(prefix="dbd-cred2-"))
    try:
        os.chmod(d.dir, 0o755)
        os.chmod(d.path, 0o666)
        got = probe_as_nobody(d.path, "shutdown")
        check(got == "permission_denied", "an allowed uid may connect but not stop the daemon: %s" % got)
        got = probe_as_nobody(d.path, "hello")
        check(got == "ok", "--allow-uid 65534 lets that user in: %s" % got)
    finally:
        d.stop()
    # --allow-gid matches a supplementary group too (SO_PEERGROUPS), not only the primary one
    d = Daemon(exe, ["--allow-gid", "4242"], sockdir=tempfile.mkdtemp(prefix="dbd-cred3-"))
    try:
        os.chmod(d.dir, 0o755)
        os.chmod(d.path, 0o666)
        got = probe_as_nobody(d.path, "hello", groups=[4241, 4242])
        check(got == "ok", "--allow-gid 4242 lets in a peer with 4242 as a supplementary group: %s" % got)
        got = probe_as_nobody(d.path, "hello", groups=[4241])
        check(got == "permission_denied", "a peer with other supplementary groups is refused: %s" % got)
        got = probe_as_nobody(d.path, "hello")
        check(got == "permission_denied", "a peer with no supplementary groups is refused: %s" % got)
    finally:
        d.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--spec-dir", help="dropblock_ref.py's folder (default: $DROPBLOCK_SPEC_DIR, else "
                    "../shared/spec beside the source tree, where it exists)")
    ap.add_argument("--fault-injection", choices=("on", "off"), default="on",
                    help="whether the daemon was built with -Dfault_injection=true")
    a = ap.parse_args()
    ref = refvectors.Reference("daemon", a.spec_dir)
    print("test_daemon: " + ref.describe(), flush=True)
    for t in (lambda: test_bad_inputs(a.daemon, ref), lambda: test_many_clients(a.daemon, ref),
              lambda: test_sigterm_with_queue(a.daemon, ref), lambda: test_limits_and_region_lifetime(a.daemon, ref),
              lambda: test_client_that_never_reads(a.daemon, ref), lambda: test_stale_socket_and_second_daemon(a.daemon),
              lambda: test_peer_credentials(a.daemon), lambda: test_small_job_threshold(a.daemon),
              lambda: test_faults(a.daemon, ref) if a.fault_injection == "on" else test_faults_ignored(a.daemon, ref),
              lambda: test_client_killed_mid_job(a.daemon, ref)):
        t()
    print("test_daemon: %d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
