"""refvectors.py: the executable spec's answers for the Python suites, from committed vectors.

The suites never load dropblock_ref.py themselves; they ask a Reference:

  Reference(name)                  tests/refvectors/NAME.json, the answers one suite needs
    .cli(args)                     (rc, stdout, stderr) of `dropblock_ref.py ARGS`
    .run(shape, layout, ...)       a DropBlock2D request on a tf-uniform input: a Run (input bits,
                                   output bits or their SHA-256, kept, total, scale, keep mask)
    .tf_input(n, dtype, s0, s1)    the bits of `--input tf-uniform:S0,S1` (physical order)
    .keep_mask(shape, ...)         the packed keep mask, bit i of byte i/8
                                   (docs/semantics.md, "Scale and output")
    .ask(request)                  the answer to one of the *_request dicts below
    .rne_f32(q)                    the float32 nearest a nonnegative Fraction, ties to even
  *_request(...)                   the same questions as plain dicts: each suite lists every one it
                                   asks in reference_requests(), which tools/gen_refvectors.py answers

Where the spec is found at run time ($DROPBLOCK_SPEC_DIR, else ../shared/spec beside the source
tree), every answer is also computed live with dropblock_ref.py, and one that differs from the
committed vector raises Stale. A question that is not in the vectors raises Missing, which names the
command that regenerates them. Either way the vectors never go stale or short silently.

Python standard library only.
"""
import base64
import hashlib
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import threading
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "refvectors")
REGENERATE = "python3 tools/gen_refvectors.py --spec-dir ../shared/spec   (from the repository root)"
BIG = 4096          # outputs of more bytes are kept as their SHA-256 only


class Missing(LookupError):
    pass


class Stale(AssertionError):
    pass


# ---------------------------------------------------------------- the spec, found at run time
def spec_dir():
    """(folder of dropblock_ref.py or None, a line saying which): $DROPBLOCK_SPEC_DIR, else
    ../shared/spec beside the source tree."""
    env = os.environ.get("DROPBLOCK_SPEC_DIR")
    d = env or os.path.join(ROOT, "..", "shared", "spec")
    d = os.path.abspath(d)
    if os.path.isfile(os.path.join(d, "dropblock_ref.py")):
        return d, "checked live against %s/dropblock_ref.py too" % d
    where = "$DROPBLOCK_SPEC_DIR=%s" % env if env else d
    return None, "committed vectors only (no dropblock_ref.py in %s)" % where


def load_spec(d):
    spec = importlib.util.spec_from_file_location("dropblock_ref", os.path.join(d, "dropblock_ref.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- exact float helpers
def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def rne_f32(q):
    """The float32 nearest the nonnegative Fraction q, ties to even, in integers only."""
    q = Fraction(q)
    if q == 0:
        return 0.0
    e = q.numerator.bit_length() - q.denominator.bit_length()
    while Fraction(2) ** e > q:
        e -= 1
    while Fraction(2) ** (e + 1) <= q:
        e += 1
    e = max(e, -126)                       # subnormals share the smallest normal's ulp
    a = q / Fraction(2) ** (e - 23)
    n, r = divmod(a.numerator, a.denominator)
    if 2 * r > a.denominator or (2 * r == a.denominator and n % 2):
        n += 1
    return float(n * Fraction(2) ** (e - 23))


# ---------------------------------------------------------------- the questions
def cli_request(args):
    return {"kind": "cli", "args": [str(a) for a in args]}


def run_request(shape, layout="NCHW", dtype="f32", rate=0.1, block=(7, 7), seed=0, stream=0, normalize="global",
                share_channels=False, share_batch=False, compat="none", training=True, input=(0, 1), negate=False,
                tile=0, mask=False, digest=False):
    """dropblock2d (or keras_cv_dropblock2d) on tf-uniform:S0,S1 (each value minus 0.5 where
    negate; the first `tile` values repeated where tile); mask: the packed keep mask too; digest:
    the output's SHA-256 only (the suite only compares whole outputs)."""
    block = (block, block) if isinstance(block, int) else block
    return {"kind": "run", "shape": [int(d) for d in shape], "layout": layout, "dtype": dtype, "rate": float(rate),
            "block": [int(b) for b in block], "seed": int(seed), "stream": int(stream), "normalize": normalize,
            "share_channels": bool(share_channels), "share_batch": bool(share_batch), "compat": compat,
            "training": bool(training), "input": [int(s) for s in input], "negate": bool(negate), "tile": int(tile),
            "mask": bool(mask), "digest": bool(digest)}


def input_request(dtype, s0, s1, negate=False):
    """tf-uniform:S0,S1 encoded as dtype; the vectors hold the longest prefix any request needs."""
    return {"kind": "input", "dtype": dtype, "input": [int(s0), int(s1)], "negate": bool(negate)}


def mask_request(shape, rate, block, seed, stream, share_channels=False, share_batch=False):
    block = (block, block) if isinstance(block, int) else block
    return {"kind": "mask", "shape": [int(d) for d in shape], "rate": float(rate), "block": [int(b) for b in block],
            "seed": int(seed), "stream": int(stream), "share_channels": bool(share_channels),
            "share_batch": bool(share_batch)}


def key(req):
    return json.dumps(req, sort_keys=True)


# ---------------------------------------------------------------- encodings
WIDTH = {"f32": 4, "f16": 2, "bf16": 2}


def pack(bits, width):
    return struct.pack("<%d%s" % (len(bits), "I" if width == 4 else "H"), *bits)


def unpack(data, width):
    return list(struct.unpack("<%d%s" % (len(data) // width, "I" if width == 4 else "H"), data))


def b64(data):
    return base64.b64encode(data).decode()


def unb64(text):
    return base64.b64decode(text)


def pack_mask(bits):
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def encode_cli(rc, stdout, stderr):
    """A CLI answer as stored: kept, total, scale_bits and the values (hex ones as base64 bytes),
    where json.dumps of them gives stdout back byte for byte; the raw text otherwise."""
    if rc != 0:
        return {"rc": rc, "stdout": stdout, "stderr": stderr}
    try:
        o = json.loads(stdout)
        vals = o["values"]
        if list(o) != ["kept", "total", "scale_bits", "values"]:
            raise ValueError
        w = len(vals[0]) - 2 if vals else 0
        if w in (4, 8) and all(re.fullmatch("0x[0-9a-f]{%d}" % w, v) for v in vals):
            e = {"rc": 0, "kept": o["kept"], "total": o["total"], "scale_bits": o["scale_bits"], "hex": w,
                 "values": b64(pack([int(v, 16) for v in vals], w // 2))}
        else:
            e = {"rc": 0, "kept": o["kept"], "total": o["total"], "scale_bits": o["scale_bits"], "values": vals}
        if decode_cli(e)[1] == stdout:
            return e
    except (ValueError, KeyError, TypeError, IndexError):
        pass
    return {"rc": 0, "stdout": stdout}


def decode_cli(e):
    if "stdout" in e:
        return e["rc"], e["stdout"], e.get("stderr", "")
    vals = e["values"]
    if "hex" in e:
        w = e["hex"]
        vals = ["0x%0*x" % (w, b) for b in unpack(unb64(vals), w // 2)]
    o = {"kept": e["kept"], "total": e["total"], "scale_bits": e["scale_bits"], "values": vals}
    return 0, json.dumps(o) + "\n", ""


# ---------------------------------------------------------------- answers computed with the spec
def spec_input(ref, dtype, seeds, negate, n):
    enc = ref.ENC[dtype][0]
    vals = ref.tf_stateless_uniform(n, seeds[0], seeds[1])
    if negate:  # signs, so that -0 for dropped negatives is checked too
        vals = [v - 0.5 for v in vals]
    return [enc(v) for v in vals]


def run_input_count(req):
    N, C, H, W = req["shape"]
    return req["tile"] or N * C * H * W


def tiled(bits, n):
    return (bits * (n // len(bits) + 1))[:n]


def compute(ref, req, n=None):
    """The stored answer to req, computed with the spec module ref (n: an input's length)."""
    kind = req["kind"]
    if kind == "cli":
        p = subprocess.run([sys.executable, ref.__file__] + req["args"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=600)
        return encode_cli(p.returncode, p.stdout.decode(), p.stderr.decode())
    if kind == "input":
        return {"n": n, "bits": b64(pack(spec_input(ref, req["dtype"], req["input"], req["negate"], n),
                                         WIDTH[req["dtype"]]))}
    if kind == "mask":
        N, C, H, W = req["shape"]
        keep = ref.keep_mask(N, C, H, W, req["rate"], tuple(req["block"]), req["seed"], req["stream"],
                             req["share_channels"], req["share_batch"])
        return {"keep": b64(pack_mask([b for a in keep for c in a for row in c for b in row]))}
    if kind == "run":
        shape, dt = tuple(req["shape"]), req["dtype"]
        N, C, H, W = shape
        x = tiled(spec_input(ref, dt, req["input"], req["negate"], run_input_count(req)), N * C * H * W)
        blk = tuple(req["block"])
        try:
            if req["compat"] == "keras_cv":
                y, kept, total, scale = ref.keras_cv_dropblock2d(x, shape, req["layout"], dt, req["rate"], blk,
                                                                 req["seed"], req["stream"], req["training"])
            else:
                y, kept, total, scale = ref.dropblock2d(x, shape, req["layout"], dt, req["rate"], blk, req["seed"],
                                                        req["stream"], req["normalize"], req["share_channels"],
                                                        req["share_batch"], req["training"])
        except ValueError as e:
            return {"error": str(e)}
        out = {"kept": kept, "total": total, "scale_bits": "0x%08x" % ref.f32_bits(scale)}
        y = pack(y, WIDTH[dt])
        if req["digest"] or len(y) > BIG:
            out["y_sha256"] = hashlib.sha256(y).hexdigest()
        else:
            out["y"] = b64(y)
        if req["mask"]:
            out["keep"] = compute(ref, mask_request(shape, req["rate"], blk, req["seed"], req["stream"],
                                                    req["share_channels"], req["share_batch"]))["keep"]
        return out
    raise ValueError("unknown request kind %r" % kind)


def needed_inputs(reqs):
    """{key of an input request: (request, length)}: the inputs the runs and tf_inputs need."""
    out = {}
    for r in reqs:
        if r["kind"] == "run":
            i, n = input_request(r["dtype"], *r["input"], negate=r["negate"]), run_input_count(r)
        elif r["kind"] == "input":
            i, n = {k: v for k, v in r.items() if k != "n"}, r["n"]
        else:
            continue
        k = key(i)
        out[k] = (i, max(n, out.get(k, (None, 0))[1]))
    return out


# ---------------------------------------------------------------- what the suites ask
class Run:
    """One request's input and expected output (bits in physical order)."""

    def __init__(self, req, x, e):
        self.request, self.x = req, x
        self.error = e.get("error")
        w = WIDTH[req["dtype"]]
        self.x_bytes = pack(x, w)
        if self.error is None:
            self.kept, self.total, self.scale_hex = e["kept"], e["total"], e["scale_bits"]
            self.scale_bits = int(e["scale_bits"], 16)
            self.y_bytes = unb64(e["y"]) if "y" in e else None
            self.y = unpack(self.y_bytes, w) if "y" in e else None
            self.y_sha256 = e.get("y_sha256") or hashlib.sha256(self.y_bytes).hexdigest()
            self.keep = unb64(e["keep"]) if "keep" in e else None

    def y_matches(self, data):
        """Whether data (bytes) is the expected output, bit for bit."""
        data = bytes(data)
        if self.y_bytes is not None:
            return data == self.y_bytes
        return len(data) == len(self.x_bytes) and hashlib.sha256(data).hexdigest() == self.y_sha256


class Reference:
    """The committed answers of one suite (tests/refvectors/NAME.json), checked live against
    dropblock_ref.py where it is found (spec: a folder overriding the run-time search)."""

    def __init__(self, name, spec=None):
        self.path = os.path.join(DATA, name + ".json")
        with open(self.path) as f:
            data = json.load(f)
        self.answers = {key(a["request"]): a["answer"] for a in data["answers"]}
        if spec:
            d = os.path.abspath(spec) if os.path.isfile(os.path.join(spec, "dropblock_ref.py")) else None
            self.mode = ("checked live against %s/dropblock_ref.py too" % d if d else
                         "committed vectors only (no dropblock_ref.py in %s)" % spec)
        else:
            d, self.mode = spec_dir()
        self.spec = load_spec(d) if d else None
        self.lock = threading.Lock()
        self.checked = set()

    def describe(self):
        return "reference answers: %s, %s" % (os.path.relpath(self.path, ROOT), self.mode)

    def _answer(self, req, n=None):
        k = key(req)
        e = self.answers.get(k)
        if e is None or (n is not None and e["n"] < n):
            raise Missing("%s has no answer to %s%s: list it in the suite's reference_requests() and "
                          "regenerate: %s" % (os.path.relpath(self.path, ROOT), k,
                                              "" if e is None else " for %d elements (it has %d)" % (n, e["n"]),
                                              REGENERATE))
        if self.spec is not None:
            with self.lock:
                done = k in self.checked
            if not done:
                live = compute(self.spec, req, e["n"] if n is not None else None)
                if live != e:
                    raise Stale("%s is stale: dropblock_ref.py answers %s with %s, the vector says %s; regenerate: %s"
                                % (os.path.relpath(self.path, ROOT), k, json.dumps(live)[:300],
                                   json.dumps(e)[:300], REGENERATE))
                with self.lock:
                    self.checked.add(k)
        return e

    def cli(self, args):
        return decode_cli(self._answer(cli_request(args)))

    def tf_input(self, n, dtype, s0, s1, negate=False):
        e = self._answer(input_request(dtype, s0, s1, negate), n)
        return unpack(unb64(e["bits"]), WIDTH[dtype])[:n]

    def run(self, *args, **kw):
        return self.ask(run_request(*args, **kw))

    def ask(self, req):
        """The answer to a request dict (a *_request's), as cli, run, tf_input or keep_mask give it."""
        if req["kind"] == "cli":
            return decode_cli(self._answer(req))
        if req["kind"] == "mask":
            return unb64(self._answer(req)["keep"])
        if req["kind"] == "input":
            return self.tf_input(req["n"], req["dtype"], *req["input"], negate=req["negate"])
        e = self._answer(req)
        N, C, H, W = req["shape"]
        x = self.tf_input(run_input_count(req), req["dtype"], *req["input"], negate=req["negate"])
        return Run(req, tiled(x, N * C * H * W), e)

    def keep_mask(self, *args, **kw):
        return unb64(self._answer(mask_request(*args, **kw))["keep"])

    def rne_f32(self, q):
        got = rne_f32(q)
        if self.spec is not None and q != 0 and f32_bits(self.spec.rne_f32_of_fraction(Fraction(q))) != f32_bits(got):
            raise Stale("rne_f32(%s): dropblock_ref.py's rne_f32_of_fraction gives %r, refvectors.py %r"
                        % (q, self.spec.rne_f32_of_fraction(Fraction(q)), got))
        return got


class Recorder:
    """Stands in for a Reference where a suite builds its cases only to list their requests
    (reference_requests()): ask() records the request and answers None."""

    def __init__(self):
        self.requests = []

    def ask(self, req):
        self.requests.append(req)
        return None
