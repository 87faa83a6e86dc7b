#!/usr/bin/env python3
"""Issue 11's recipes, each a test that failed before its fix:

  huge       a 4 TB tensor through the CLI (daemon and --local), C (dropblock_alloc_msg) and
             Python (client.array) is refused with resource_exhausted naming the limit before
             anything is allocated. Guarded: every client runs under a 64 MiB file-size limit with
             SIGXFSZ ignored, so a regression (posix_fallocate of the memfd) fails with EFBIG
             instead of taking the machine down.
  fds        uid 65534 (setpriv, let in with --allow-uid) opens 88 connections holding 16
             unclaimed descriptors each against a daemon at RLIMIT_NOFILE 1024 while this uid
             runs jobs: the attacker's extra connections get one error naming --max-uid-clients,
             the victim's jobs (region.register included) stay bit-exact, never a misleading error.
  maps       uid 65534 tries 255 connections x 256 regions of 4 KiB (vm.max_map_count): its
             registrations stop at --max-uid-regions with an error naming it, the victim is served.
  timeouts   a socket that accepts and never answers, one whose backlog is full, and a fake daemon
             that never answers a job: connect/hello, the CLI --timeout and Python's timeout give
             unavailable naming the timeout; job_timeout bounds dropblock_run.

Expected bits come from tests/vectors (made by dropblock_ref.py), never from the daemon.

  test_limits.py --daemon D --cli C --client LIMITS_CLIENT --vectors DIR
"""
import argparse
import array
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Daemon, Tally  # noqa: E402

T = Tally()
check = T.check
FOUR_TB = 1000 * 1000 * 1000 * 1000 * 4
SYSTEM_PYTHON = "/usr/bin/python3"  # reachable by uid 65534, unlike a python under /root
SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def guard():
    """preexec_fn: a file (a memfd included) can grow to 64 MiB only, and passing that is an
    error (EFBIG), not a signal: a client that allocates before checking fails fast."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def run(cmd, timeout=30, env=None, **kw):
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=guard,
                       env=None if env is None else {**os.environ, **env}, **kw)
    r.seconds = time.time() - t0
    return r


def python_call(expr):
    """A script that evaluates expr with the package and prints "done", or "CODE | message" for
    the dropblock.Error it raises."""
    return ("import sys; sys.path.insert(0, %r)\n"
            "import dropblock\n"
            "try:\n"
            "    %s\n"
            "    print('done')\n"
            "except dropblock.Error as e:\n"
            "    print(e.code, '|', e)\n") % (os.path.join(SRC, "python"), expr)


def python_part(code, timeout=30):
    """Runs code in a Python with the package; None (and says why) where it cannot load here: no
    NumPy, or a sanitizer build of libdropblock that must come first in a process (ASan, TSan)."""
    if os.environ.get("TSAN_OPTIONS") or os.environ.get("ASAN_OPTIONS"):
        print("  skip the Python part: a sanitizer run (.ci/run), whose libdropblock Python cannot load")
        return None
    r = run([sys.executable, "-c", code], timeout=timeout)
    if "No module named 'numpy'" in r.stderr:
        print("  skip the Python part: no NumPy")
        return None
    if "runtime does not come first" in r.stderr or "ThreadSanitizer" in r.stderr:
        print("  skip the Python part: libdropblock is a sanitizer build, which Python cannot load")
        return None
    return r


def client_json(r):
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"rc": "no output", "message": r.stdout + r.stderr}


def section(name):
    print("==", name, flush=True)


# ---------------------------------------------------------------- the vector the victim runs
class Vector:
    def __init__(self, vdir):
        with open(os.path.join(vdir, "block-7-on-14x14-NCHW-f32.json")) as f:
            self.v = json.load(f)
        self.args = self.v["ref_args"].split()

    def check_run(self, a, sock, what):
        """One job through the daemon with the CLI; its result against the vector."""
        r = run([a.cli, "--socket", sock, "run", *self.args, "--format", "hex"], timeout=60)
        if not check(r.returncode == 0, "%s: exit 0, got %d: %s" % (what, r.returncode, r.stderr.strip()[-300:])):
            return False
        try:
            got = json.loads(r.stdout)
        except ValueError:
            return check(False, "%s: output is not JSON: %r" % (what, r.stdout[:200]))
        exp = self.v["expected"]
        return check(all(got[k] == exp[k] for k in ("kept", "total", "scale_bits", "values")),
                     "%s: bit-exact with the committed vector" % what)


# ---------------------------------------------------------------- 1. nothing allocated that cannot be used
def test_huge(a, vec):
    section("a 4 TB tensor is refused before anything is allocated")
    d = Daemon(a.daemon, "--small-job-bytes", "0")
    try:
        hello = raw_call(d.path, {"v": 1, "id": 1, "op": "hello"})
        lim = hello.get("limits", {})
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        check(0 < lim.get("max_region_bytes", 0) <= phys,
              "max_region_bytes comes from the machine (%s, physical memory %d), not 1 TiB" %
              (lim.get("max_region_bytes"), phys))
        shape = "1000,1000,1000,1000"
        r = run([a.cli, "--socket", d.path, "run", "--shape", shape])
        check(r.returncode == 1 and "resource_exhausted" in r.stderr and "max_client_bytes" in r.stderr,
              "CLI through the daemon: exit 1, resource_exhausted naming max_client_bytes: %d %s" %
              (r.returncode, r.stderr.strip()))
        print("  CLI (daemon) refused in %.3f s: %s" % (r.seconds, r.stderr.strip()))
        r = run([a.cli, "--socket", d.path, "--timeout", "5", "run", "--shape", "1,1,1024,1024"],
                env={"DROPBLOCK_MEM_AVAILABLE": "1000"})
        check(r.returncode == 1 and "available" in r.stderr, "CLI: a job above the memory available is refused: %s"
              % r.stderr.strip())
        r = run([a.cli, "--local", "run", "--backend", "cpu", "--shape", shape])
        check(r.returncode == 1 and "resource_exhausted" in r.stderr and "available" in r.stderr,
              "CLI --local: exit 1, resource_exhausted naming the memory available: %d %s" %
              (r.returncode, r.stderr.strip()))
        # C: dropblock_alloc_msg against the daemon's max_region_bytes, the memory available, locally
        j = client_json(run([a.client, "alloc", d.path, str(FOUR_TB)]))
        check(j["rc"] == "resource_exhausted" and "max_region_bytes" in j["message"] and "4.0 TB" in j["message"],
              "C, daemon: resource_exhausted naming max_region_bytes and the size: %s" % j)
        j = client_json(run([a.client, "alloc", d.path, str(2 << 20)], env={"DROPBLOCK_MEM_AVAILABLE": "1048576"}))
        check(j["rc"] == "resource_exhausted" and "available" in j["message"],
              "C, daemon: 2 MiB with 1 MiB available is refused naming it: %s" % j)
        j = client_json(run([a.client, "alloc", "local", str(FOUR_TB)]))
        check(j["rc"] == "resource_exhausted" and "available" in j["message"],
              "C, local engine: resource_exhausted naming the memory available: %s" % j)
        j = client_json(run([a.client, "alloc", d.path, str(1 << 20)]))
        check(j["rc"] == "ok", "C: an ordinary 1 MiB allocation still works: %s" % j)
        # Python: client.array
        r = python_part(python_call("dropblock.Client(%r).array((1000, 1000, 1000, 1000))" % d.path))
        if r is not None:
            check(r.stdout.startswith("resource_exhausted |") and "max_region_bytes" in r.stdout,
                  "Python client.array: dropblock.Error resource_exhausted naming the limit: %s %s" %
                  (r.stdout.strip(), r.stderr.strip()[-300:]))
        # the daemon's own check, for a client that skips the library's
        with tempfile.TemporaryDirectory() as t:
            d2 = Daemon(a.daemon, "--small-job-bytes", "0", "--max-region-bytes", "1048576",
                        sock=os.path.join(t, "d.sock"))
            try:
                rep = raw_register(d2.path, 2 << 20)
                check(not rep["ok"] and rep["error"]["code"] == "resource_exhausted" and
                      "--max-region-bytes" in rep["error"]["message"],
                      "the daemon refuses a region above --max-region-bytes naming it: %s" % rep)
            finally:
                d2.stop()
        vec.check_run(a, d.path, "after the refusals, a job")
    finally:
        d.stop()


# ---------------------------------------------------------------- raw protocol helpers
def send_frame(s, obj, fds=()):
    b = json.dumps(obj).encode()
    data = struct.pack("<I", len(b)) + b
    if fds:
        s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        s.sendall(data)


def recv_frame(s):
    h = b""
    while len(h) < 4:
        c = s.recv(4 - len(h))
        if not c:
            raise ConnectionError("closed")
        h += c
    n = struct.unpack("<I", h)[0]
    d = b""
    while len(d) < n:
        c = s.recv(n - len(d))
        if not c:
            raise ConnectionError("closed")
        d += c
    return json.loads(d.decode("utf-8"))


def raw_call(path, obj):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        send_frame(s, obj)
        return recv_frame(s)


def raw_register(path, size):
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        import fcntl
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(path)
            send_frame(s, {"v": 1, "id": 1, "op": "hello"})
            recv_frame(s)
            send_frame(s, {"v": 1, "id": 2, "op": "region.register", "fds": 1}, [fd])
            return recv_frame(s)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- 2. no client can lock out the others
# Run as uid 65534: the attack, then a line of JSON; holds everything until stdin closes.
ATTACK_FDS = r"""
import array, json, os, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
socks, refused, errors = [], [], []
r, w = os.pipe()
for i in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(path)
    except OSError as e:
        errors.append(str(e)); s.close(); continue
    try:
        # the first byte of a frame, with 16 descriptors the daemon must hold unclaimed
        s.sendmsg([b"\x10"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r] * 16))])
    except (BrokenPipeError, ConnectionResetError):
        pass  # a refused connection may be closed before this byte: its reply still waits to be read
    socks.append(s)
time.sleep(0.5)
for s in socks:
    s.setblocking(False)
    try:
        d = s.recv(65536)
        if d:
            refused.append(json.loads(d[4:].decode())["error"])
    except BlockingIOError:
        pass
    except OSError as e:
        errors.append(str(e))
print(json.dumps({"held": len(socks) - len(refused), "refused": refused, "errors": errors[:5]}), flush=True)
sys.stdin.read()
"""

ATTACK_MAPS = r"""
import array, fcntl, json, os, socket, struct, sys
path, nconn, nreg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def frame(o):
    b = json.dumps(o).encode(); return struct.pack("<I", len(b)) + b
def recv(s):
    h = b""
    while len(h) < 4:
        c = s.recv(4 - len(h))
        if not c: raise ConnectionError("closed")
        h += c
    n = struct.unpack("<I", h)[0]; d = b""
    while len(d) < n:
        c = s.recv(n - len(d))
        if not c: raise ConnectionError("closed")
        d += c
    return json.loads(d)
socks, ok, refusals, errors = [], 0, {}, []
for i in range(nconn):
    s = socket.socket(socket.AF_UNIX); s.settimeout(20)
    try:
        s.connect(path)
    except OSError as e:
        errors.append("connect: %s" % e); continue
    socks.append(s)
    for k in range(nreg):
        fd = os.memfd_create("a", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096); fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        try:
            s.sendmsg([frame({"v": 1, "id": k, "op": "region.register", "fds": 1})],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            rep = recv(s)
        except OSError as e:
            errors.append("register: %s" % e); os.close(fd); break
        os.close(fd)
        if rep["ok"]:
            ok += 1
        else:
            m = rep["error"]["message"]
            refusals[m] = refusals.get(m, 0) + 1
            break  # this connection is at a cap: the next one
print(json.dumps({"registered": ok, "connections": len(socks), "refusals": refusals, "errors": errors[:5]}),
      flush=True)
sys.stdin.read()
"""


def as_nobody(script, *args):
    return subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON, "-c",
                             script, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def nofile_wrapper(tmp, exe, n):
    """An executable that runs exe at RLIMIT_NOFILE n (soft and hard)."""
    w = os.path.join(tmp, "dropblockd-nofile")
    with open(w, "w") as f:
        f.write("#!/bin/sh\nulimit -n %d || exit 1\nexec %s \"$@\"\n" % (n, exe))
    os.chmod(w, 0o755)
    return w


def open_to_all(d):
    os.chmod(d.dir, 0o755)
    os.chmod(d.path, 0o666)  # uid 65534 reaches the socket; SO_PEERCRED and --allow-uid decide


def test_fds(a, vec):
    section("88 connections of one uid holding 16 descriptors each do not lock out another uid")
    with tempfile.TemporaryDirectory() as t:
        os.chmod(t, 0o755)
        d = Daemon(nofile_wrapper(t, a.daemon, 1024), "--small-job-bytes", "0", "--allow-uid", "65534",
                   sock=os.path.join(t, "s", "d.sock"))
        try:
            open_to_all(d)
            lim = raw_call(d.path, {"v": 1, "id": 1, "op": "hello"})["limits"]
            print("  limits at RLIMIT_NOFILE 1024:", {k: v for k, v in lim.items() if "clients" in k})
            vec.check_run(a, d.path, "before the attack")
            p = as_nobody(ATTACK_FDS, d.path, 88)
            line = p.stdout.readline()
            try:
                res = json.loads(line)
            except ValueError:
                res = {"held": -1, "refused": [], "errors": [line, p.stderr.read()[-500:]]}
            print("  attacker:", {"held": res["held"], "refused": len(res["refused"]), "errors": res["errors"]})
            msgs = {e["message"] for e in res["refused"]}
            check(res["held"] == lim.get("max_uid_clients", -1), "the attacker holds --max-uid-clients connections (%s): %s"
                  % (lim.get("max_uid_clients", -1), res["held"]))
            check(len(res["refused"]) == 88 - lim.get("max_uid_clients", -1) and
                  all(e["code"] == "resource_exhausted" for e in res["refused"]) and
                  all("--max-uid-clients" in m for m in msgs),
                  "every connection past the cap gets one resource_exhausted naming --max-uid-clients: %s" % msgs)
            # the victim, while the attacker holds its descriptors: jobs (each registers regions)
            for i in range(3):
                vec.check_run(a, d.path, "during the descriptor attack, job %d" % i)
            r = run([a.cli, "--socket", d.path, "status"], timeout=30)
            check(r.returncode == 0, "status answers during the attack: %s" % r.stderr.strip())
            p.stdin.close()
            p.wait(30)
            vec.check_run(a, d.path, "after the attack")
            log = d.logtext(1 << 20)
            check("ancillary data truncated" not in log and "out of file descriptors" not in log,
                  "no descriptor was lost or misattributed (log)")
        finally:
            d.stop()


def test_maps(a, vec):
    section("255 connections x 256 regions of one uid do not exhaust the map count for another uid")
    with tempfile.TemporaryDirectory() as t:
        os.chmod(t, 0o755)
        d = Daemon(a.daemon, "--small-job-bytes", "0", "--allow-uid", "65534", sock=os.path.join(t, "s", "d.sock"))
        try:
            open_to_all(d)
            lim = raw_call(d.path, {"v": 1, "id": 1, "op": "hello"})["limits"]
            print("  limits:", {k: v for k, v in lim.items() if "regions" in k or "clients" in k})
            p = as_nobody(ATTACK_MAPS, d.path, 255, 256)
            # the victim runs jobs while the attacker registers
            for i in range(3):
                vec.check_run(a, d.path, "during the map attack, job %d" % i)
            line = p.stdout.readline()
            try:
                res = json.loads(line)
            except ValueError:
                res = {"registered": -1, "connections": 0, "refusals": {}, "errors": [line, p.stderr.read()[-500:]]}
            print("  attacker:", res)
            cap = lim.get("max_uid_regions", -1)
            check(res["registered"] == min(cap, 255 * 256) or
                  (res["registered"] <= cap and res["connections"] < 255),
                  "the attacker's regions stop at its caps (%s per uid): %s" % (cap, res["registered"]))
            check(all("--max-uid-regions" in m or "--max-uid-clients" in m or "this connection already has" in m
                      for m in res["refusals"]) and res["refusals"],
                  "each refusal names its cap: %s" % list(res["refusals"]))
            check(not res["errors"] or all("connect" in e for e in res["errors"]),
                  "the attacker saw no other errors: %s" % res["errors"])
            # while it holds them all
            for i in range(3):
                vec.check_run(a, d.path, "while the attacker holds its regions, job %d" % i)
            st = json.loads(run([a.cli, "--socket", d.path, "status", "--json"]).stdout or "{}")
            check(st.get("regions", 0) >= min(res["registered"], cap), "status counts the regions: %s"
                  % st.get("regions"))
            p.stdin.close()
            p.wait(60)
            vec.check_run(a, d.path, "after the attack")
            log = d.logtext(1 << 20)
            check("out of memory accepting" not in log, "no client was turned away for memory (log)")
        finally:
            d.stop()


# ---------------------------------------------------------------- 3. clients never hang
class Silent:
    """A Unix socket that accepts connections and never answers (backlog > 0), or one that never
    accepts with a backlog of 0 held full by one connection."""

    def __init__(self, accept=True):
        self.dir = tempfile.mkdtemp(prefix="dbsilent-")
        self.path = os.path.join(self.dir, "s.sock")
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(self.path)
        self.sock.listen(16 if accept else 0)
        self.conns = []
        self.stop = False
        if accept:
            self.t = threading.Thread(target=self.loop, daemon=True)
            self.t.start()
        else:
            self.filler = socket.socket(socket.AF_UNIX)
            self.filler.setblocking(False)
            self.filler.connect(self.path)  # queued: the backlog of 0 is now full

    def loop(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except socket.timeout:
                pass
            except OSError:
                return

    def close(self):
        self.stop = True
        self.sock.close()
        for c in self.conns:
            c.close()


class FakeDaemon(Silent):
    """Answers hello and region.register as dropblockd would, never a dropblock2d job."""

    def loop(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        buf, regions = b"", 0
        try:
            while True:
                data, anc, _, _ = c.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
                for lvl, typ, d in anc:
                    if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                        for fd in array.array("i", d[:len(d) - len(d) % 4]):
                            os.close(fd)
                if not data:
                    return
                buf += data
                while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("<I", buf[:4])[0]:
                    n = struct.unpack("<I", buf[:4])[0]
                    req, buf = json.loads(buf[4:4 + n]), buf[4 + n:]
                    if req["op"] == "hello":
                        send_frame(c, {"id": req["id"], "ok": True, "protocol": 1, "version": "fake",
                                       "limits": {}, "devices": []})
                    elif req["op"] == "region.register":
                        regions += 1
                        send_frame(c, {"id": req["id"], "ok": True, "region": regions, "size": 64})
                    # dropblock2d: silence
        except OSError:
            return


def test_timeouts(a):
    section("clients never hang: connect, hello, requests and jobs are bounded")
    s = Silent()
    try:
        j = client_json(run([a.client, "connect", s.path, "500"], timeout=30))
        check(j["rc"] == "unavailable" and "500 ms" in j["message"] and "hello" in j["message"],
              "C: a daemon that accepts and never answers gives unavailable naming the timeout: %s" % j)
        print("  C connect against a silent socket: %.0f ms: %s" % (j.get("ms", -1), j["message"]))
        r = run([a.cli, "--socket", s.path, "--timeout", "0.5", "devices"], timeout=30)
        check(r.returncode == 1 and "500 ms" in r.stderr, "CLI --timeout 0.5: exit 1 naming the timeout: %d %s" %
              (r.returncode, r.stderr.strip()))
        r = run([a.cli, "--socket", s.path, "run", "--timeout", "0.5", "--shape", "1,1,4,4"], timeout=30)
        check(r.returncode == 1 and "500 ms" in r.stderr, "CLI run --timeout 0.5: exit 1 naming the timeout: %s" %
              r.stderr.strip())
        r = run([a.cli, "--socket", s.path, "--timeout", "0", "devices"], timeout=30)
        check(r.returncode == 2 and "--timeout" in r.stderr, "CLI --timeout 0 is bad usage: %d %s" %
              (r.returncode, r.stderr.strip()))
        r = python_part(python_call("dropblock.Client(%r, timeout=0.5)" % s.path))
        if r is not None:
            check(r.stdout.startswith("unavailable |") and "500 ms" in r.stdout,
                  "Python Client(timeout=0.5): dropblock.Error unavailable naming the timeout: %s %s" %
                  (r.stdout.strip(), r.stderr.strip()[-300:]))
    finally:
        s.close()
    full = Silent(accept=False)
    try:
        j = client_json(run([a.client, "connect", full.path, "300"], timeout=30))
        check(j["rc"] == "unavailable" and "backlog" in j["message"] and "300 ms" in j["message"],
              "C: a listen backlog that stays full gives unavailable naming the timeout: %s" % j)
    finally:
        full.close()
    fake = FakeDaemon()
    try:
        j = client_json(run([a.client, "run", fake.path, "2000", "500"], timeout=30))
        check(j["rc"] == "unavailable" and "job_timeout_ms" in j["message"] and "500 ms" in j["message"],
              "C: a job without a reply within job_timeout_ms gives unavailable naming it: %s" % j)
    finally:
        fake.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--client", required=True)
    ap.add_argument("--vectors", required=True)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    vec = Vector(a.vectors)
    only = set(filter(None, a.only.split(",")))
    test_huge(a, vec) if not only or "huge" in only else None
    test_timeouts(a) if not only or "timeouts" in only else None
    other_uid = os.geteuid() == 0 and os.path.exists(SYSTEM_PYTHON) and subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON, "-c", "pass"]).returncode == 0
    if not other_uid:
        print("skip the fds and maps recipes: they need root, setpriv and %s to act as uid 65534" % SYSTEM_PYTHON)
    else:
        test_fds(a, vec) if not only or "fds" in only else None
        test_maps(a, vec) if not only or "maps" in only else None
    print("%d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
