#!/usr/bin/env python3
"""The dropblock command-line tool through dropblockd's socket.

  test_cli_daemon.py --cli build/client/dropblock --daemon build/daemon/dropblockd [--spec-dir DIR]
                     [--cache-dir DIR]

Starts the daemon on a socket in a temporary directory and waits for `dropblock --socket S
status` to answer (the readiness probe of deploy/). On every device the daemon lists, each case of
test_cli.py's matrix runs as `dropblock --socket S run --device ID ... --format hex|dec` and must
print dropblock_ref.py's line byte for byte (committed in tests/refvectors/cli.json, and computed
live too where the spec is found, as in test_cli.py); .npy round trips and the packed mask go through the
daemon's shared memory too, and so do test_cli.py's DropBlock3D vectors (5-element shapes on the
wire, from libdropblock's remote path). Then: device selection (--backend, --device N), the socket path rules
($DROPBLOCK_SOCKET, $XDG_RUNTIME_DIR), devices, status (text and --json), error exits, no daemon
(a missing socket, a stale socket file: exit 1 and how to start one), and finally `dropblock stop`:
the daemon exits 0 and removes its socket. Python standard library only.
"""
import concurrent.futures as cf
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refvectors  # noqa: E402
import test_cli as T  # noqa: E402  (the matrix, the .npy helpers and the comparisons)
import testlib  # noqa: E402


class D:
    sock = None     # the daemon's socket
    daemon = None   # testlib.Daemon
    devices = []    # (id, api, line) in the daemon's order


def run_env(args, env=None, timeout=300):
    e = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    p = subprocess.run([T.Ctx.cli] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, env=e)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def sock_cli(*args):
    return T.cli("--socket", D.sock, *args)


def engine(dev):
    return ["--socket", D.sock, "--device", dev]


def logtext():
    return D.daemon.logtext()


def start_daemon(exe, cache_dir, tmp):
    D.sock = os.path.join(tmp, "run", "dropblockd.sock")    # the daemon creates run/
    try:
        D.daemon = testlib.Daemon(exe, "--cache-dir", cache_dir, sock=D.sock, ready=lambda d: sock_cli("status")[0] == 0)
    except testlib.DaemonError as e:
        sys.exit("test_cli_daemon: %s" % e)


def stop_daemon():
    if D.daemon:
        D.daemon.stop(remove=True)


DEV_LINE = re.compile(r'^(\w+):(\d+) kind=(cpu|cpu-api|integrated-gpu|discrete-gpu|other) vendor="[^"]*" '
                      r'name="[^"]*" driver="[^"]*" uuid=\S+ max_buffer=\d+$')


def discover_devices():
    rc, out, err = sock_cli("devices")
    if rc:
        sys.exit("test_cli_daemon: dropblock devices failed (exit %d): %s" % (rc, err.strip()))
    devs = []
    for line in out.splitlines():
        m = DEV_LINE.match(line)
        if not m:
            sys.exit("test_cli_daemon: unexpected devices line %r" % line)
        devs.append(("%s:%s" % (m.group(1), m.group(2)), m.group(1), line))
    return devs, out


# ---------------------------------------------------------------- checks
def ok_if(cond, why):
    return (True, "") if cond else (False, why)


def summary_device(args, env=None):
    """The device a summary run (no --format) names on its first line."""
    rc, out, err = run_env(["run", "--shape", "2,3,9,9", "--block", "3", "--rate", "0.3"] + args, env)
    if rc:
        return None, "exit %d: %s" % (rc, err.strip())
    m = re.match(r"device (\S+) ", out)
    return (m.group(1) if m else None), out


def selection_checks():
    checks = []
    for i, (dev, api, _) in enumerate(D.devices):
        nth = sum(1 for d in D.devices[:i] if d[1] == api)

        def by_number(i=i, dev=dev):
            got, out = summary_device(["--socket", D.sock, "--device", str(i)])
            return ok_if(got == dev, "--device %d ran on %s, expected %s: %s" % (i, got, dev, out.strip()[:200]))

        def by_api(api=api, nth=nth, dev=dev):
            got, out = summary_device(["--socket", D.sock, "--backend", api, "--device", str(nth)])
            return ok_if(got == dev, "--backend %s --device %d ran on %s, expected %s: %s"
                         % (api, nth, got, dev, out.strip()[:200]))
        checks += [("select: --device %d is %s" % (i, dev), by_number),
                   ("select: --backend %s --device %d is %s" % (api, nth, dev), by_api)]
    for api in sorted({d[1] for d in D.devices}):
        def auto_in_api(api=api):
            got, out = summary_device(["--socket", D.sock, "--backend", api])
            return ok_if(got and got.startswith(api + ":"), "--backend %s alone ran on %s" % (api, got))
        checks.append(("select: --backend %s alone stays in %s" % (api, api), auto_in_api))
    ids = [d[0] for d in D.devices]

    def auto():
        got, out = summary_device(["--socket", D.sock])
        return ok_if(got in ids, "auto ran on %r, not a listed device: %s" % (got, out.strip()[:200]))
    checks.append(("select: auto", auto))
    n = len(D.devices)
    checks += [
        ("select: --device %d (past the list)" % n,
         lambda: T.expect_fail(["--socket", D.sock, "run", "--shape", "1,1,4,4", "--device", str(n)], 2,
                               ["only %d devices" % n, "dropblock devices"])),
        ("select: an unknown id", lambda: T.expect_fail(["--socket", D.sock, "run", "--shape", "1,1,4,4",
                                                         "--device", "vulkan:97"], 2, ["vulkan:97", "not found"])),
        ("select: --backend cpu --device 5",
         lambda: T.expect_fail(["run", "--socket", D.sock, "--shape", "1,1,4,4", "--backend", "cpu", "--device", "5"],
                               2, ["only", "cpu device"])),
        ("select: --backend and another API's id",
         lambda: T.expect_fail(["run", "--socket", D.sock, "--shape", "1,1,4,4", "--backend", "cpu", "--device",
                                "opencl:0"], 2, ["not a device of --backend cpu"])),
    ]
    return checks


SOCKET_RULE_FLAGS = ["--shape", "2,3,9,7", "--block", "3,2", "--rate", "0.2", "--seed", "42", "--stream", "5",
                     "--format", "hex"]


def reference_requests():
    """test_cli.py's questions to dropblock_ref.py and the socket rules' one."""
    return T.reference_requests() + [refvectors.cli_request(SOCKET_RULE_FLAGS)]


def socket_rule_checks(tmp):
    flags = SOCKET_RULE_FLAGS
    ref = T.ref_cli(flags)

    def env_socket():
        rc, out, err = run_env(["run"] + flags, {"DROPBLOCK_SOCKET": D.sock})
        return ok_if(rc == 0 and out == ref[1], "$DROPBLOCK_SOCKET: exit %d %s" % (rc, err.strip()))

    def xdg():
        # $XDG_RUNTIME_DIR/dropblock/dropblockd.sock, here a symlink to the daemon's socket
        xd = os.path.join(tmp, "xdg")
        os.makedirs(os.path.join(xd, "dropblock"), exist_ok=True)
        link = os.path.join(xd, "dropblock", "dropblockd.sock")
        if not os.path.lexists(link):
            os.symlink(D.sock, link)
        rc, out, err = run_env(["run"] + flags, {"DROPBLOCK_SOCKET": None, "XDG_RUNTIME_DIR": xd})
        if rc or out != ref[1]:
            return False, "$XDG_RUNTIME_DIR: exit %d %s" % (rc, err.strip())
        # $DROPBLOCK_SOCKET wins over it, --socket over both
        rc, out, err = run_env(["status"], {"DROPBLOCK_SOCKET": os.path.join(tmp, "nothing.sock"),
                                            "XDG_RUNTIME_DIR": xd})
        if rc != 1 or "nothing.sock" not in err:
            return False, "$DROPBLOCK_SOCKET over $XDG_RUNTIME_DIR: exit %d %s" % (rc, err.strip())
        rc, out, err = run_env(["--socket", D.sock, "status"], {"DROPBLOCK_SOCKET": os.path.join(tmp, "nothing.sock")})
        return ok_if(rc == 0, "--socket over $DROPBLOCK_SOCKET: exit %d %s" % (rc, err.strip()))

    def fallback():
        if os.path.exists("/run/dropblock/dropblockd.sock"):
            return True, ""       # a real daemon may be there: nothing to assert
        rc, out, err = run_env(["status"], {"DROPBLOCK_SOCKET": None, "XDG_RUNTIME_DIR": None})
        return ok_if(rc == 1 and "/run/dropblock/dropblockd.sock" in err,
                     "neither variable: exit %d %s" % (rc, err.strip()))
    return [("socket: $DROPBLOCK_SOCKET", env_socket), ("socket: $XDG_RUNTIME_DIR", xdg),
            ("socket: /run/dropblock fallback", fallback)]


def no_daemon_checks(tmp):
    missing = os.path.join(tmp, "missing", "d.sock")
    stale = os.path.join(tmp, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)       # a socket file nothing listens on (a daemon that died)
    s.close()
    run1 = ["run", "--shape", "1,1,4,4"]
    return [
        ("no daemon: run", lambda: T.expect_fail(["--socket", missing] + run1, 1,
                                                 ["no dropblockd is reachable at " + missing, "No such file",
                                                  "dropblockd --socket %s &" % missing, "--local"])),
        ("no daemon: devices", lambda: T.expect_fail(["--socket", missing, "devices"], 1,
                                                     ["no dropblockd is reachable", "--local"])),
        ("no daemon: status", lambda: T.expect_fail(["--socket", missing, "status"], 1,
                                                    ["no dropblockd is reachable", "dropblockd --socket"])),
        ("no daemon: stop", lambda: T.expect_fail(["stop", "--socket", missing], 1, ["no dropblockd is reachable"])),
        ("no daemon: stale socket file", lambda: T.expect_fail(["--socket", stale, "status"], 1,
                                                               ["no dropblockd is reachable", "refused",
                                                                "dropblockd --socket %s &" % stale])),
        # the request is checked before any connection: bad arguments stay exit 2
        ("no daemon: bad arguments first", lambda: T.expect_fail(["--socket", missing] + run1 + ["--rate", "2"], 2,
                                                                 ["rate"])),
        ("--local with --socket", lambda: T.expect_fail(["--local", "--socket", D.sock] + run1, 2,
                                                        ["--local", "--socket"])),
        ("status --local", lambda: T.expect_fail(["--local", "status"], 2, ["status asks the daemon"])),
        ("stop --timeout x", lambda: T.expect_fail(["stop", "--socket", D.sock, "--timeout", "x"], 2,
                                                   ["--timeout x"])),
        ("status extra argument", lambda: T.expect_fail(["status", "--socket", D.sock, "now"], 2,
                                                        ["unexpected argument"])),
    ]


def info_checks():
    ids = [d[0] for d in D.devices]

    def devices_filter():
        for api in sorted({d[1] for d in D.devices}):
            rc, out, err = sock_cli("devices", "--backend", api)
            want = "".join(d[2] + "\n" for d in D.devices if d[1] == api)
            if rc or out != want:
                return False, "devices --backend %s: exit %d, %r" % (api, rc, out)
        return True, ""

    def status_text():
        rc, out, err = sock_cli("status")
        if rc:
            return False, "exit %d: %s" % (rc, err.strip())
        first, rest = out.split("\n", 1)
        if not first.startswith("dropblockd at %s is up" % D.sock) or "%d devices" % len(ids) not in first:
            return False, "summary line %r" % first
        body = rest[rest.index("{"):]
        j = json.loads(body)
        got = [d["id"] for d in j.get("devices", [])]
        return ok_if(got == ids and "jobs" in j and "uptime_s" in j,
                     "status JSON devices %r, expected %r" % (got, ids))

    def status_json():
        rc, out, err = T.cli("status", "--json", "--socket", D.sock)
        if rc or out.count("\n") != 1:
            return False, "exit %d, %r" % (rc, out[:200])
        j = json.loads(out)
        return ok_if(j.get("ok") is True and [d["id"] for d in j["devices"]] == ids, "status --json: %r" % out[:200])

    def summary():
        rc, out, err = sock_cli("run", "--shape", "2,3,9,7", "--device", ids[0])
        return ok_if(rc == 0 and all(w in out for w in ("device " + ids[0], "kept K", "scale", "time", "wall")),
                     "exit %d, %r" % (rc, out[:300]))

    def helps():
        for args, words in ((["status", "--help"], ["usage: dropblock status", "--json", "readiness"]),
                            (["stop", "--help"], ["usage: dropblock stop", "--timeout", "SIGTERM"]),
                            (["help", "stop"], ["usage: dropblock stop"]),
                            (["run", "--help"], ["--socket", "--local", "dropblock_alloc"]),
                            (["--help"], ["status", "stop", "$DROPBLOCK_SOCKET", "$XDG_RUNTIME_DIR",
                                          "/run/dropblock/dropblockd.sock", "dropblockd --socket PATH &"])):
            rc, out, err = T.cli(*args)
            if rc or not all(w in out for w in words):
                return False, "%s: exit %d, %r" % (" ".join(args), rc, out[:200])
        return True, ""
    return [("devices --backend", devices_filter), ("status", status_text), ("status --json", status_json),
            ("run summary", summary), ("help texts", helps)]


def final_checks():
    """After everything else: the CLI left nothing behind in the daemon, then stop."""
    results = []
    end = time.time() + 10
    while True:
        rc, out, err = T.cli("status", "--json", "--socket", D.sock)
        j = json.loads(out) if rc == 0 else {}
        left = (j.get("clients"), j.get("regions"), j.get("inflight_bytes"))
        if left == (1, 0, 0) or time.time() > end:
            break
        time.sleep(0.1)
    results.append(("nothing left behind (clients, regions, bytes)", left == (1, 0, 0), "status says %r" % (left,)))
    j = j or {}
    jobs = j.get("jobs", {})
    results.append(("no job failed in the daemon", jobs.get("failed") == 0 and jobs.get("submitted", 0) > 0,
                    "jobs %r" % jobs))
    per_dev = {d.get("id"): d.get("completed", 0) for d in j.get("devices", [])}
    results.append(("every device ran jobs", all(per_dev.get(d[0], 0) > 0 for d in D.devices),
                    "completed per device %r" % per_dev))
    rc, out, err = T.cli("stop", "--socket", D.sock)
    results.append(("stop", rc == 0 and "is stopping" in out and "has stopped" in out,
                    "exit %d, %r %r" % (rc, out, err)))
    try:
        code = D.daemon.proc.wait(30)
    except subprocess.TimeoutExpired:
        code = None
    results.append(("dropblockd exits 0 after stop", code == 0, "exit %r:\n%s" % (code, logtext())))
    results.append(("the socket is gone", not os.path.exists(D.sock), D.sock + " still exists"))
    rc, out, err = T.cli("status", "--socket", D.sock)
    results.append(("status after stop exits 1", rc == 1 and "no dropblockd is reachable" in err,
                    "exit %d %r" % (rc, err)))
    return results


def main():
    ap = T.arg_parser(__doc__)
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--cache-dir", help="the daemon's kernel cache (default: a temporary directory)")
    a = ap.parse_args()
    T.setup(a, "test_cli_daemon")

    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="test_cli_daemon.") as tmp, cf.ThreadPoolExecutor(a.jobs) as pool:
        T.Ctx.tmp = tmp
        t0 = time.time()
        try:
            start_daemon(os.path.abspath(a.daemon), a.cache_dir or os.path.join(tmp, "kernel-cache"), tmp)
            D.devices, listing = discover_devices()
            print("test_cli_daemon: dropblockd answered after %.1f s; its devices:\n%s"
                  % (time.time() - t0, listing.rstrip()), flush=True)
            cases = T.matrix()
            refs = {(tuple(f), fmt): pool.submit(T.ref_cli, f + ["--format", fmt]) for _, f, fmt in cases}
            checks = []
            for dev, api, _ in D.devices:
                for name, flags, fmt in cases:
                    checks.append(("%s: %s" % (dev, name),
                                   lambda d=dev, f=flags, fmt=fmt: T.compare_case(None, f, fmt, refs[(tuple(f), fmt)]
                                                                                  .result(), engine(d))))
                for layout in ("NCHW", "NHWC"):
                    for dtype in ("f32", "f16", "bf16"):
                        checks.append(("%s: npy round trip %s %s" % (dev, layout, dtype),
                                       lambda d=dev, l=layout, t=dtype: T.npy_roundtrip("daemon-" + d, l, t, t == "bf16",
                                                                                        False, engine(d))))
                checks.append(("%s: --mask" % dev, lambda d=dev: T.mask_check("daemon-" + d, engine(d))))
                checks += T.vec3d_checks("daemon-" + dev, engine(dev))
            checks += selection_checks() + socket_rule_checks(tmp) + no_daemon_checks(tmp) + info_checks()
            results = list(T.run_checks(pool, checks))
            results += final_checks()
            passed, failed = T.tally(results)
        finally:
            stop_daemon()
    print("test_cli_daemon: %d passed, %d failed (%.1f s)" % (passed, failed, time.time() - t0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
