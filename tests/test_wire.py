#!/usr/bin/env python3
"""Wire hygiene of dropblockd (docs/protocol.md, "Frames"; docs/security.md, "Log").

Raw frames over the socket: strings that are not valid UTF-8 or hold NUL, a frame with more than
one JSON value or bytes after it, duplicate keys at any depth. Each must get an invalid_argument
reply naming the problem (the key, the byte offset) that is itself strict JSON text (valid UTF-8,
one object, no duplicate keys, no NaN), echoing the id only where the id is acceptable and not
itself the problem, and the connection must keep serving `hello`. Client-supplied text must reach
the log quoted and escaped: no request can write a line of its own there. And `dropblockd
--socket PATH` with a PATH longer than sun_path holds is refused (exit 2), never served truncated.

DropBlock3D's fields (docs/protocol.md, `dropblock2d`): a 5-element shape with an integer (cube)
or [bd, bh, bw] block and the layouts NCDHW/NDHWC, each refusal of a mixed rank naming the right
form; jobs of tests/vectors3d sent raw through a memfd region give dropblock_ref.py's bits, the
keep mask agreeing with them; D = 1 gives the 2-D bits, sent as 5-D or as 4-D.

  test_wire.py --daemon build/daemon/dropblockd

Python standard library only.
"""
import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import SLOW, Daemon, RawConn, Tally, Vector3D, daemon_cmd, error, memfd_region  # noqa: E402

T = Tally()
check = T.check


def strict_json(body):
    """The reply body as RFC 8259 demands: valid UTF-8, one object, no duplicate key, no NaN."""
    def no_dups(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key in a reply: %r" % keys)
        return dict(pairs)

    def no_constants(name):
        raise ValueError("%s in a reply" % name)
    obj = json.loads(body.decode("utf-8"), object_pairs_hook=no_dups, parse_constant=no_constants)
    if not isinstance(obj, dict):
        raise ValueError("a reply that is not an object")
    return obj


class Conn:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(30 * SLOW)
        self.s.connect(path)

    def close(self):
        self.s.close()

    def send(self, body):
        self.s.sendall(struct.pack("<I", len(body)) + body)

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            buf += chunk
        return buf

    def recv_raw(self):
        n = struct.unpack("<I", self._read(4))[0]
        return self._read(n)

    def call(self, body):
        """(reply as strict JSON or None, raw bytes, why it is not strict JSON)."""
        self.send(body)
        raw = self.recv_raw()
        try:
            return strict_json(raw), raw, ""
        except ValueError as e:
            return None, raw, str(e)


def serves_hello(c, what):
    r, raw, why = c.call(b'{"v":1,"id":424242,"op":"hello"}')
    check(r is not None and r.get("ok") is True and r.get("id") == 424242,
          "%s: the connection still serves hello afterwards: %r %s" % (what, raw[:200], why))


def expect(d, body, what, words, id_=None, code="invalid_argument"):
    """body gets a strict-JSON error reply with code, id_ echoed and words in its message."""
    c = Conn(d.path)
    try:
        r, raw, why = c.call(body)
        if not check(r is not None, "%s: the reply is not strict JSON (%s): %r" % (what, why, raw[:300])):
            return
        err = r.get("error") or {}
        check(r.get("ok") is False and err.get("code") == code,
              "%s: expected %s, got %r" % (what, code, r))
        check(r.get("id") == id_ and "id" in r, "%s: expected id %r, got %r" % (what, id_, r.get("id")))
        msg = err.get("message", "")
        missing = [w for w in words if w not in msg]
        check(not missing, "%s: the message %r does not name %r" % (what, msg, missing))
        serves_hello(c, what)
    finally:
        c.close()


def test_strings_frames_and_keys(d):
    hello = b'{"v":1,"id":7,"op":"hello"}'
    # strings: valid UTF-8 without NUL
    expect(d, b'{"v":1,"id":"a\xffb","op":"hello"}', "invalid UTF-8 in a string id",
           ["id", "UTF-8", "byte 14"], id_=None)
    expect(d, b'{"v":1,"id":7,"op":"hel\xc0\xafo"}', "an overlong encoding in op", ["op", "UTF-8", "byte 23"], id_=7)
    expect(d, b'{"v":1,"id":7,"op":"\xed\xa0\x80"}', "a UTF-16 surrogate in op", ["op", "UTF-8"], id_=7)
    expect(d, b'{"v":1,"id":7,"op":"\xf5\x80\x80\x80"}', "a code point above U+10FFFF in op", ["op", "UTF-8"], id_=7)
    expect(d, b'{"v":1,"id":7,"op":"dropblock2d","input":{"region":1},"shape":[1,1,4,4],"rate":0.1,"block":2,'
              b'"seed":0,"device":"cpu:\xe2\x82"}', "a character cut short in device", ["device", "UTF-8"], id_=7)
    expect(d, b'{"v":1,"id":7,"op":"dropblock2d","input":{"reg\xffion":1},"shape":[1,1,4,4],"rate":0.1,'
              b'"block":2,"seed":0}', "invalid UTF-8 in a nested key", ["a key in input", "UTF-8", "byte 46"],
           id_=7)
    expect(d, b'{"v":1,"id":7,"op":"hel\x00lo"}', "a raw NUL in op", ["op", "NUL", "byte 23"], id_=7)
    expect(d, b'{"v":1,"id":7,"op":"hello\\u0000junk"}', "an escaped NUL in op (read as hello before)",
           ["op", "NUL", "byte 25"], id_=7)
    expect(d, b'{"v":1,"id":"ab\\u0000cd","op":"hello"}', "an escaped NUL in a string id", ["id", "NUL"], id_=None)
    expect(d, b'{"v":1,"id":7,"op":"x\ny"}', "a raw control byte in op", ["op", "control byte 0x0a"], id_=7)
    # exactly one JSON object per frame
    expect(d, hello + b" xyz", "text after the object", ["trailing", "byte 28", "one JSON object"], id_=7)
    expect(d, hello + b"\x00junk", "a NUL and junk after the object", ["trailing", "byte 27"], id_=7)
    expect(d, hello + hello, "two objects in one frame", ["trailing", "byte 27"], id_=7)
    expect(d, b"\x00" + hello, "a NUL before the object", ["NUL byte", "byte 0"], id_=7)
    c = Conn(d.path)
    try:
        r, raw, why = c.call(b" \r\n\t" + hello + b" \n")
        check(r is not None and r.get("ok") is True and r.get("id") == 7,
              "JSON whitespace around the object is fine: %r %s" % (raw[:200], why))
    finally:
        c.close()
    # duplicate keys, at any depth
    expect(d, b'{"v":1,"id":7,"op":"hello","op":"status"}', "a duplicate op", ["duplicate key", '"op"'], id_=7)
    expect(d, b'{"v":1,"id":7,"id":8,"op":"hello"}', "a duplicate id", ["duplicate key", '"id"'], id_=None)
    expect(d, b'{"v":1,"id":7,"op":"dropblock2d","input":{"region":1,"region":2},"shape":[1,1,4,4],"rate":0.1,'
              b'"block":2,"seed":0}', "a duplicate key in input", ['duplicate key "region" in input'], id_=7)
    expect(d, b'{"v":1,"id":7,"op":"hello","x":[{"a":1},{"b":1,"b":2}]}', "a duplicate key in an array's object",
           ['duplicate key "b" in x[1]'], id_=7)
    many = b",".join(b'"k%d":%d' % (i, i) for i in range(100))
    expect(d, b'{"v":1,"id":7,"op":"hello",' + many + b',"k57":0}', "a duplicate among 100 keys",
           ['duplicate key "k57"'], id_=7)
    # what the replies say stays valid UTF-8 where a message cuts what the client sent
    expect(d, ('{"v":1,"id":"\u00e9\u4e2d","op":"' + "a" * 39 + '\u00e9"}').encode(),
           "an unknown op cut in the middle of a character", ["unknown"], id_="\u00e9\u4e2d", code="not_found")


def test_log_escaping(d):
    forged = "2030-01-01T00:00:00.000Z info FORGED"
    bodies = [
        json.dumps({"v": 1, "id": 1, "op": "x\n" + forged}).encode(),
        json.dumps({"v": 1, "id": 2, "op": "dropblock2d", "input": {"region": 1}, "shape": [1, 1, 4, 4],
                    "rate": 0.1, "block": 2, "seed": 0, "device": "cpu:0\n" + forged + " by device"}).encode(),
        json.dumps({"v": 1, "id": 3, "op": "dropblock2d", "input": {"region": 1}, "shape": [1, 1, 4, 4],
                    "rate": 0.1, "block": 2, "seed": 0, "dtype": "f64\r\n" + forged}).encode(),
        b'{"v":1,"id":4,"op":"bad\xff\xfe\xc3"}',
        b'{"v":1,"id":5,"op":"x\\u2028' + forged.encode() + b' by U+2028"}',
    ]
    c = Conn(d.path)
    try:
        for b in bodies:
            r, raw, why = c.call(b)
            check(r is not None and r.get("ok") is False, "log probe %r: a strict JSON error: %r %s" % (b[:40], raw, why))
        serves_hello(c, "the log probes")
    finally:
        c.close()
    time.sleep(0.2)
    d.log.flush()
    with open(d.log.name, "rb") as f:
        log = f.read()
    try:
        text = log.decode("utf-8")
    except UnicodeDecodeError as e:
        check(False, "the log is not valid UTF-8 (%s): %r" % (e, log[-600:]))
        text = log.decode("utf-8", "replace")
    lines = text.split("\n")
    check(not any(line.startswith(forged[:11]) for line in lines),
          "no request writes a line of its own into the log: %s" % text[-1500:])
    check(not any(ch in text for ch in ("\r", "\u2028", "\u2029", "\x85")),
          "no other line breaks reach the log: %r" % text[-600:])
    # each probe's error line holds what it sent, quoted, the line breaks escaped
    for what, shown in (("op", "x\\n" + forged), ("device", "\\n" + forged + " by device"),
                        ("dtype", "f64\\r\\n" + forged[:11]), ("U+2028", "x\\u2028" + forged)):
        check(any(shown in line and " error " in line for line in lines),
              "the %s probe's error line shows %r: %s" % (what, shown, text[-1500:]))


def test_3d_fields(d):
    """5-element shapes: the block and layout forms that go with them, and the refusals."""
    c = RawConn(d.path)
    reg, _ = memfd_region(c, 1 << 16)

    def job(**kw):
        return c.req({"op": "dropblock2d", "input": {"region": reg}, "rate": 0.3, "block": 2, "seed": 1, **kw})[0]
    try:
        for what, kw in (("5-D shape, integer block (a cube), default layout", dict(shape=[1, 2, 3, 4, 5])),
                         ("[bd, bh, bw] block, NDHWC", dict(shape=[1, 2, 3, 4, 5], block=[2, 1, 3], layout="NDHWC")),
                         ("NCDHW named", dict(shape=[2, 1, 3, 4, 5], block=[1, 2, 2], layout="NCDHW")),
                         ("D = 1 with a deep block", dict(shape=[1, 2, 1, 4, 5], block=[9, 2, 2])),
                         ("a 4-D job as before", dict(shape=[1, 2, 4, 5], block=[2, 3], layout="NHWC"))):
            r = job(**kw)
            n = 1
            for k in kw["shape"]:
                n *= k
            check(r.get("ok") is True and r.get("total") == n, "%s: runs (total %d): %r" % (what, n, r))
        for what, kw, words in (
                ("a 3-element shape", dict(shape=[1, 4, 4]), ["shape", "4 integers", "5", "N, C, D, H, W", "got 3"]),
                ("a 6-element shape", dict(shape=[1, 1, 1, 4, 4, 1]), ["shape", "N, C, D, H, W", "got 6"]),
                ("D = 0", dict(shape=[1, 2, 0, 4, 5]), ["shape D is 0"]),
                ("a negative D", dict(shape=[1, 2, -3, 4, 5]), ["shape[2] (D)", "-3"]),
                ("a fractional W", dict(shape=[1, 2, 3, 4, 5.5]), ["shape[4] (W)"]),
                ("[bh, bw] with a 5-D shape", dict(shape=[1, 2, 3, 4, 5], block=[2, 2]),
                 ["block", "[bh, bw]", "5-element shape", "[bd, bh, bw]"]),
                ("[bd, bh, bw] with a 4-D shape", dict(shape=[1, 2, 4, 5], block=[1, 2, 2]),
                 ["block", "[bd, bh, bw]", "5-element shape", "4-element shape", "[bh, bw]"]),
                ("a 4-element block with a 5-D shape", dict(shape=[1, 2, 3, 4, 5], block=[1, 2, 2, 2]),
                 ["block", "[bd, bh, bw]", "4 elements"]),
                ("block depth 0", dict(shape=[1, 2, 3, 4, 5], block=[0, 2, 2]), ["block depth 0", ">= 1"]),
                ("block height 0 in 3-D", dict(shape=[1, 2, 3, 4, 5], block=[1, 0, 2]), ["block height 0"]),
                ("a cube of 0", dict(shape=[1, 2, 3, 4, 5], block=0), ["block", "0"]),
                ("a string block depth", dict(shape=[1, 2, 3, 4, 5], block=["x", 2, 2]), ["block[0] (depth)"]),
                ("NCHW with a 5-D shape", dict(shape=[1, 2, 3, 4, 5], layout="NCHW"),
                 ['layout "NCHW"', "5-element shape", "NCDHW"]),
                ("NHWC with a 5-D shape", dict(shape=[1, 2, 3, 4, 5], layout="NHWC"),
                 ['layout "NHWC"', "NDHWC"]),
                ("NCDHW with a 4-D shape", dict(shape=[1, 2, 4, 5], layout="NCDHW"),
                 ['layout "NCDHW"', "5-element shape", "4-element shape", "NCHW"]),
                ("NDHWC with a 4-D shape", dict(shape=[1, 2, 4, 5], layout="NDHWC"), ['layout "NDHWC"', "NHWC"]),
                ("an unknown layout with a 5-D shape", dict(shape=[1, 2, 3, 4, 5], layout="DHWNC"),
                 ['layout "DHWNC"', "NCDHW or NDHWC"]),
                ("lower-case ndhwc", dict(shape=[1, 2, 3, 4, 5], layout="ndhwc"), ['layout "ndhwc"']),
                ("compat keras_cv in 3-D", dict(shape=[1, 2, 3, 4, 5], compat="keras_cv"),
                 ["keras_cv", "3-D", "depth 3"]),
                ("D x H x W over 2^31", dict(shape=[1, 1, 2048, 1024, 1025]), ["D x H x W", "2^31"]),
                ("N x C x D x H x W over 2^40", dict(shape=[1024, 1024, 1024, 1024, 2]), ["2^40"])):
            ok, msg = error(job(**kw), "invalid_argument", *words)
            check(ok, "%s: invalid_argument naming %r, got %r" % (what, words, msg))
        r = job(shape=[1, 2, 3, 4, 5])
        check(r.get("ok") is True, "the connection still runs jobs after the refusals: %r" % r)
    finally:
        c.close()


# a few of tests/vectors3d: every field of the request in use, both layouts, every dtype
VECTORS3D_WIRE = ["cube-3-NCDHW-f32", "cube-3-NDHWC-bf16", "box-2x3x1-NDHWC-f16", "block-gt-volume-NCDHW-f32",
                  "normalize-sample-NDHWC-f32", "share-both-NCDHW-f16", "eval-NDHWC-f32", "u64-seed-stream-NDHWC-f16"]
D1_VECTORS = ["d1-is-2d-NCDHW-f32", "d1-is-2d-NDHWC-bf16"]


def vector_job(c, reg, m, v, shape, layout, block):
    """v's input through region reg (mapped as m), with this shape, layout and block: (reply,
    output bits, mask bytes)."""
    xb = v.pack(v.x)
    out, mask = 1 << 14, 1 << 15
    m[0:len(xb)] = xb
    m[out:out + len(xb)] = b"\xee" * len(xb)
    nm = (len(v.x) + 7) // 8
    m[mask:mask + nm] = b"\xee" * nm
    q = v.req
    share = (["channels"] if q["share_channels"] else []) + (["batch"] if q["share_batch"] else [])
    r, _ = c.req({"op": "dropblock2d", "input": {"region": reg, "offset": 0}, "output": {"region": reg, "offset": out},
                  "mask": {"region": reg, "offset": mask}, "shape": list(shape), "layout": layout,
                  "dtype": v.dtype, "rate": float(v.rate), "block": block, "seed": q["seed"], "stream": q["stream"],
                  "normalize": q["normalize"], "share": share, "training": q["training"], "device": "cpu:0"})
    return r, v.unpack(bytes(m[out:out + len(xb)])), bytes(m[mask:mask + nm])


def vector_problem(v, r, y, mask):
    """Why a job's reply, output and mask are not v's expected ones, or None."""
    if not r.get("ok"):
        # before the engine runs DropBlock3D its refusal names the depth the request carried
        return "refused: %r" % (r.get("error"),)
    got = (r.get("kept"), r.get("total"), r.get("scale_bits"))
    if got != (v.kept, v.total, v.scale_bits):
        return "kept, total, scale_bits %r, expected %r" % (got, (v.kept, v.total, v.scale_bits))
    if y != v.y:
        i = next(i for i in range(len(y)) if y[i] != v.y[i])
        return "output element %d: 0x%x, expected 0x%x" % (i, y[i], v.y[i])
    return v.mask_problem(mask)


def test_3d_vectors(d):
    c = RawConn(d.path)
    reg, m = memfd_region(c, 1 << 16)
    try:
        for name in VECTORS3D_WIRE:
            v = Vector3D(name)
            r, y, mask = vector_job(c, reg, m, v, v.shape, v.layout, list(v.block))
            why = vector_problem(v, r, y, mask)
            check(why is None, "vectors3d %s on the wire: %s" % (name, why))
            if len(set(v.block)) == 1:     # the same cube as one integer
                r, y, mask = vector_job(c, reg, m, v, v.shape, v.layout, v.block[0])
                why = vector_problem(v, r, y, mask)
                check(why is None, "vectors3d %s with block %d: %s" % (name, v.block[0], why))
        for name in D1_VECTORS:            # D = 1 is DropBlock2D: as 5-D, and as the same request in 4-D
            v = Vector3D(name)
            N, C, D, H, W = v.shape
            for what, shape, layout, block in (("5-D", v.shape, v.layout, list(v.block)),
                                               ("5-D, a deeper block", v.shape, v.layout, [5] + list(v.block[1:])),
                                               ("4-D", (N, C, H, W), v.layout2d, list(v.block[1:]))):
                r, y, mask = vector_job(c, reg, m, v, shape, layout, block)
                why = vector_problem(v, r, y, mask)
                check(why is None, "vectors3d %s sent %s: %s" % (name, what, why))
    finally:
        c.close()


def test_socket_path_too_long(exe):
    tmp = tempfile.mkdtemp(prefix="dbw-")
    path = os.path.join(tmp, "s" * (120 - len(tmp)) + ".sock")
    p = subprocess.Popen(daemon_cmd(exe, "--socket", path, "--devices", "cpu"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    try:
        _, err = p.communicate(timeout=30 * SLOW)
    except subprocess.TimeoutExpired:
        p.terminate()
        _, err = p.communicate()
        check(False, "--socket with a %d-byte path: dropblockd served (at a truncated path?) instead of refusing; "
              "files: %s" % (len(path), os.listdir(tmp)))
        return
    err = err.decode(errors="replace")
    check(p.returncode == 2, "--socket with a %d-byte path exits 2, got %s: %s" % (len(path), p.returncode, err))
    check("--socket" in err and "107" in err, "the message names --socket and the limit: %r" % err)
    check(os.listdir(tmp) == [], "nothing is created at a truncated path: %s" % os.listdir(tmp))
    os.rmdir(tmp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    a = ap.parse_args()
    d = Daemon(a.daemon, "--devices", "cpu")
    try:
        test_strings_frames_and_keys(d)
        test_log_escaping(d)
        test_3d_fields(d)
        test_3d_vectors(d)
        check(d.proc.poll() is None, "the daemon is still running")
    finally:
        rc = d.stop()  # not remove=True: testlib reads the log as text, and it may not be UTF-8
        check(rc == 0, "dropblockd exits 0 on SIGTERM (got %s)" % rc)
        d.log.close()
        shutil.rmtree(d.logdir, ignore_errors=True)
        shutil.rmtree(d.dir, ignore_errors=True)
    test_socket_path_too_long(a.daemon)
    print("test_wire: %d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
