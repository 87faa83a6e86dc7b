"""testlib.py: what the Python test scripts share (they import it from their own folder).

  Tally        pass/fail counts; check(cond, what) prints each failure
  Daemon       a dropblockd on a socket, started, waited for and stopped
  daemon_cmd   its command line under $DROPBLOCK_DAEMON_WRAPPER (tests/valgrind.sh sets one)
  RawConn      raw protocol frames on a connection, replies by id, descriptors both ways
  error        whether a reply is an error of a code whose message holds some words
  memfd_region a sealed memfd registered on a RawConn (and its mapping)
  Vector3D     a DropBlock3D bit vector of tests/vectors3d (tools/gen_vectors3d.py) and what the
               wire and the CLI tests need of it: shapes, bits, the keep mask's consistency

Python standard library only.
"""
import array
import fcntl
import json
import mmap
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

WRAPPER = shlex.split(os.environ.get("DROPBLOCK_DAEMON_WRAPPER", ""))
# slower start-up and jobs under a wrapper such as valgrind
SLOW = 10 if WRAPPER else 1


def daemon_cmd(exe, *args):
    return [*WRAPPER, exe, *args]


class Tally:
    """A script's pass/fail counts."""

    def __init__(self):
        self.passed = self.failed = 0

    def check(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL", what, flush=True)
        return cond


class DaemonError(RuntimeError):
    pass


def accepts(path):
    """Whether something accepts connections on the Unix socket path."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
        return True
    except OSError:
        return False


class Daemon:
    """`exe --socket SOCK --log-level info ARGS...` (under the wrapper), its stderr in a log.

    SOCK defaults to d.sock in a new private temporary directory; dir is SOCK's directory, and the
    log is in a temporary directory of its own. Returns once ready(self) holds (default: the
    socket accepts a connection); raises DaemonError with the log's tail where the daemon exits
    first or is not ready within timeout seconds (ten times that under a wrapper)."""

    def __init__(self, exe, *args, sock=None, env=None, ready=None, timeout=120):
        self.own_dir = sock is None
        self.path = sock or os.path.join(tempfile.mkdtemp(prefix="dbd-"), "d.sock")
        self.dir = os.path.dirname(self.path)
        self.logdir = tempfile.mkdtemp(prefix="dbd-log-")
        self.log = open(os.path.join(self.logdir, "dropblockd.log"), "w+")
        self.proc = subprocess.Popen(daemon_cmd(exe, "--socket", self.path, "--log-level", "info", *args),
                                     stdout=subprocess.DEVNULL, stderr=self.log,
                                     env=None if env is None else {**os.environ, **env})
        ready = ready or (lambda d: accepts(d.path))
        end = time.time() + timeout * SLOW
        while time.time() < end:
            if self.proc.poll() is not None:
                raise DaemonError("dropblockd exited with %d: %s" % (self.proc.returncode, self.logtext()))
            if os.path.exists(self.path) and ready(self):
                return
            time.sleep(0.05)
        self.stop()
        raise DaemonError("dropblockd was not ready within %d s: %s" % (timeout * SLOW, self.logtext()))

    def logtext(self, tail=3000):
        if self.log.closed:  # removed by stop(remove=True), which kept its text
            return self.kept_log[-tail:]
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-tail:]

    def stop(self, timeout=30, remove=False):
        """SIGTERM (SIGKILL after timeout seconds); the exit status. remove: the log's directory
        and a socket directory of its own go too."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if remove:
            self.kept_log = self.logtext(tail=1 << 20)
            self.log.close()
            shutil.rmtree(self.logdir, ignore_errors=True)
            if self.own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode


class RawConn:
    """One connection speaking the protocol's frames itself: send() returns the request's id,
    reply(id) reads until that reply comes (keeping others: a job's reply comes when it is over),
    req() is both; descriptors go with a request (send_fd) and come back with a reply's frame."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(90)
        self.s.connect(path)
        self.n = 0
        self.kept = {}

    def send(self, o, send_fd=None):
        self.n += 1
        b = json.dumps({"v": 1, "id": self.n, **o}).encode()
        frame = struct.pack("<I", len(b)) + b
        if send_fd is None:
            self.s.sendall(frame)
        else:
            self.s.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [send_fd]))])
        return self.n

    def _read(self):
        fds = array.array("i")
        hdr, anc, _, _ = self.s.recvmsg(4, socket.CMSG_SPACE(16 * 4))
        for lvl, typ, data in anc:
            if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % 4])
        n = struct.unpack("<I", hdr)[0]
        body = b""
        while len(body) < n:
            body += self.s.recv(n - len(body))
        return json.loads(body), list(fds)

    def reply(self, rid):
        while rid not in self.kept:
            r, fds = self._read()
            self.kept[r.get("id")] = (r, fds)
        return self.kept.pop(rid)

    def req(self, o, send_fd=None):
        return self.reply(self.send(o, send_fd))

    def pending(self, rid, wait_s=0.0):
        """Whether rid's reply has not come within wait_s seconds."""
        if rid in self.kept:
            return False
        self.s.settimeout(wait_s if wait_s > 0 else 0.001)
        try:
            while rid not in self.kept:
                r, fds = self._read()
                self.kept[r.get("id")] = (r, fds)
        except (socket.timeout, BlockingIOError):
            pass
        finally:
            self.s.settimeout(90)
        return rid not in self.kept

    def close(self):
        self.s.close()


def error(r, code, *words):
    """(whether r is an error of code whose message holds every word, the message)"""
    e = r.get("error", {})
    return (not r.get("ok") and e.get("code") == code and all(w in e.get("message", "") for w in words),
            e.get("message"))


def memfd_region(c, size):
    """A sealed memfd of size bytes registered on RawConn c: (region id, its mapping)."""
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    r, _ = c.req({"op": "region.register", "fds": 1}, send_fd=fd)
    m = mmap.mmap(fd, size)
    os.close(fd)
    return r["region"], m


VECTORS3D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors3d")


class Vector3D:
    """tests/vectors3d/NAME.json: dropblock_ref.py's dropblock3d on an explicit input (the bits of
    tf-uniform:S0,17 with S0 = seed ^ 0x5EED, tools/gen_vectors3d.py). shape is the logical
    (N, C, D, H, W), layout NCDHW or NDHWC, layout2d its 4-D name (NCHW, NHWC), physical the
    shape in the layout's order, x and y the input and expected output bits (ints, physical
    order), block (bd, bh, bw)."""

    def __init__(self, name):
        with open(os.path.join(VECTORS3D, name + ".json")) as f:
            v = json.load(f)
        q, e = v["request"], v["expected"]
        self.name, self.req = name, q
        self.shape, self.block = tuple(q["shape"]), tuple(q["block"])
        self.layout, self.layout2d, self.dtype = q["layout_3d"], q["layout"], q["dtype"]
        self.rate, self.seed, self.stream = q["rate"], int(q["seed"]), int(q["stream"])
        self.x = [int(b, 16) for b in v["input"]]
        self.y = [int(b, 16) for b in e["values"]]
        self.kept, self.total, self.scale_bits = e["kept"], e["total"], e["scale_bits"]
        self.values = e["values"]
        self.width = 4 if self.dtype == "f32" else 2
        N, C, D, H, W = self.shape
        self.physical = (N, C, D, H, W) if self.layout == "NCDHW" else (N, D, H, W, C)
        self.tf_seeds = ((self.seed ^ 0x5EED) & ((1 << 64) - 1), 17)

    def pack(self, bits):
        return struct.pack("<%d%s" % (len(bits), "I" if self.width == 4 else "H"), *bits)

    def unpack(self, data):
        return list(struct.unpack("<%d%s" % (len(data) // self.width, "I" if self.width == 4 else "H"), data))

    def logical_index(self, i):
        """The mask bit (((n*C + c)*D + d)*H + h)*W + w of physical element i."""
        N, C, D, H, W = self.shape
        if self.layout == "NCDHW":
            return i
        c, t = i % C, i // C
        w, t = t % W, t // W
        h, t = t % H, t // H
        d, n = t % D, t // D
        return (((n * C + c) * D + d) * H + h) * W + w

    def mask_problem(self, mask):
        """Why the packed keep mask (bytes) does not fit the expected output, or None: its size,
        one bit a kept element, as many as kept, and where the input is not zero, a dropped
        element's output 0 and a kept one's not."""
        n = len(self.x)
        if len(mask) != (n + 7) // 8:
            return "the mask is %d bytes, not %d" % (len(mask), (n + 7) // 8)
        ones = sum(bin(b).count("1") for b in mask)
        if ones != self.kept:
            return "the mask has %d ones, kept is %d" % (ones, self.kept)
        zero = 0x7FFFFFFF if self.width == 4 else 0x7FFF
        for i in range(n):
            k = self.logical_index(i)
            bit = (mask[k >> 3] >> (k & 7)) & 1
            if self.x[i] & zero and bit != (self.y[i] & zero != 0):
                return "element %d (bit %d): mask %d, output 0x%x from input 0x%x" % (i, k, bit, self.y[i], self.x[i])
        return None
