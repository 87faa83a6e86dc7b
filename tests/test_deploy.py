#!/usr/bin/env python3
"""Checks the deployment files (deploy/, docs/deploy.md) against each other and the daemon.

  test_deploy.py --daemon build/daemon/dropblockd [--source-dir .]

systemd: the units are parsed (a small parser: repeated keys, continuation lines, resets by an
empty assignment) and checked for socket activation and the hardening docs/deploy.md promises;
every daemon option they use must be one `dropblockd --help` lists; `systemd-analyze verify` runs
on copies whose ExecStart names the build's dropblockd (it checks that the binary exists), and
must say nothing about them; `systemd-analyze security --offline` must rate the service well; the
daemon is started the way systemd starts it (systemd-socket-activate: fd 3 and LISTEN_FDS) and
must answer on the socket it was handed and leave that socket in place when it stops.
Kubernetes: the YAML is read with PyYAML when it is installed and always with a small parser
of the block subset the file uses (and the two must agree); each DaemonSet is checked (hostPath
directory, read-only root, capabilities dropped, non-root, probes through `dropblock status`,
arguments the daemon knows, group ids that fit together, volumes that exist) and the node
affinities are evaluated on sample nodes: every GPU node gets exactly one daemon.
A tool that is missing or cannot run here is skipped with a note. Standard library only.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import testlib

T = testlib.Tally()
check = T.check


def note(msg):
    print("note: " + msg, flush=True)


# ------------------------------------------------------------------------------------ systemd
def parse_unit(text):
    """{section: [(key, value), ...]} in file order; continuation lines joined, comments dropped."""
    sections, cur, pending = {}, None, ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = sections.setdefault(line[1:-1], [])
            continue
        if cur is None or "=" not in line:
            raise ValueError("not a unit file line: %r" % raw)
        k, v = line.split("=", 1)
        cur.append((k.strip(), v.strip()))
    return sections


def values(unit, section, key):
    """The effective list of values of a key: an empty assignment resets what came before."""
    out = []
    for k, v in unit.get(section, []):
        if k == key:
            out = [] if v == "" else out + [v]
    return out


def last(unit, section, key):
    v = [val for k, val in unit.get(section, []) if k == key]
    return v[-1] if v else None


def daemon_options(daemon):
    """The long options dropblockd --help lists."""
    r = subprocess.run([daemon, "--help"], capture_output=True, text=True, timeout=60)
    return set(re.findall(r"--[a-z][a-z-]+", r.stdout)), r.returncode


def split_args(args):
    """{option: value} of a --opt value list (flags map to None)."""
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a.split("=", 1)
                out[k] = v
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[a] = args[i + 1]
                i += 1
            else:
                out[a] = None
        i += 1
    return out


def test_systemd_units(src, daemon, known_opts):
    d = os.path.join(src, "deploy", "systemd")
    with open(os.path.join(d, "dropblockd.socket")) as f:
        sock = parse_unit(f.read())
    with open(os.path.join(d, "dropblockd.service")) as f:
        svc = parse_unit(f.read())

    # the socket: where training processes look by default (dropblock_default_socket)
    check(values(sock, "Socket", "ListenStream") == ["/run/dropblock/dropblockd.sock"],
          "socket: ListenStream=/run/dropblock/dropblockd.sock, got %s" % values(sock, "Socket", "ListenStream"))
    check(last(sock, "Socket", "SocketMode") == "0660", "socket: SocketMode=0660")
    group = last(sock, "Socket", "SocketGroup")
    check(group == "dropblock", "socket: SocketGroup=dropblock, got %s" % group)
    dmode = last(sock, "Socket", "DirectoryMode")
    check(dmode is not None and int(dmode, 8) & 0o001 and not int(dmode, 8) & 0o022,
          "socket: DirectoryMode searchable and not writable by others: %s" % dmode)
    check(last(sock, "Socket", "Accept") in (None, "no", "false"), "socket: Accept=no (one daemon serves all)")
    check("sockets.target" in values(sock, "Install", "WantedBy"), "socket: WantedBy=sockets.target")

    # the service
    check("dropblockd.socket" in " ".join(values(svc, "Unit", "Requires")), "service: Requires=dropblockd.socket")
    check("dropblockd.socket" in " ".join(values(svc, "Unit", "After")), "service: After=dropblockd.socket")
    execs = values(svc, "Service", "ExecStart")
    check(len(execs) == 1, "service: one ExecStart")
    argv = shlex.split(execs[0]) if execs else [""]
    check(argv[0] == "/usr/sbin/dropblockd", "service: ExecStart runs /usr/sbin/dropblockd: %s" % argv[0])
    opts = split_args(argv[1:])
    unknown = [o for o in opts if o not in known_opts]
    check(not unknown, "service: ExecStart options dropblockd does not know: %s" % unknown)
    check(opts.get("--allow-gid") == group, "service: --allow-gid %s matches SocketGroup=%s" % (opts.get("--allow-gid"),
                                                                                              group))
    check("--socket" not in opts, "service: no --socket (the socket comes from dropblockd.socket)")
    cache = values(svc, "Service", "CacheDirectory")
    check(cache == ["dropblock"] and opts.get("--cache-dir") == "/var/cache/dropblock",
          "service: CacheDirectory=dropblock and --cache-dir /var/cache/dropblock: %s, %s" % (cache,
                                                                                            opts.get("--cache-dir")))
    check(opts.get("--log-level") in ("error", "warn", "info", "debug"), "service: --log-level")
    check(last(svc, "Service", "DynamicUser") == "yes" or last(svc, "Service", "User") not in (None, "root", "0"),
          "service: DynamicUser=yes or a dedicated User=")
    for key, want in (("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                      ("NoNewPrivileges", "yes"), ("DevicePolicy", "closed"), ("RestrictSUIDSGID", "yes")):
        check(last(svc, "Service", key) == want, "service: %s=%s, got %s" % (key, want, last(svc, "Service", key)))
    check(any(k == "CapabilityBoundingSet" for k, _ in svc.get("Service", []))
          and values(svc, "Service", "CapabilityBoundingSet") == [], "service: CapabilityBoundingSet= (empty)")
    check(values(svc, "Service", "AmbientCapabilities") == [], "service: no ambient capabilities")
    nofile = last(svc, "Service", "LimitNOFILE") or "0"
    check(nofile.split(":")[0].isdigit() and int(nofile.split(":")[0]) >= 16384,
          "service: LimitNOFILE raises systemd's soft limit of 1024 (the daemon sizes --max-clients from it): %s"
          % nofile)
    fams = " ".join(values(svc, "Service", "RestrictAddressFamilies")).split()
    check(fams == ["AF_UNIX"], "service: RestrictAddressFamilies=AF_UNIX only, got %s" % fams)
    check(last(svc, "Service", "MemoryDenyWriteExecute") in (None, "no"),
          "service: MemoryDenyWriteExecute would break the drivers' kernel compilers")
    allow = {}
    for v in values(svc, "Service", "DeviceAllow"):
        spec, _, rights = v.partition(" ")
        allow[spec] = rights.strip()
    for dev, what in (("char-drm", "/dev/dri"), ("char-nvidia*", "/dev/nvidia*"), ("char-kfd", "/dev/kfd")):
        check(allow.get(dev) == "rw", "service: DeviceAllow=%s rw (%s), got %s" % (dev, what, allow))
    check(not any("m" in r for r in allow.values()), "service: no mknod rights")
    check(last(svc, "Service", "PrivateDevices") in (None, "no", "false"), "service: PrivateDevices would hide the GPUs")
    with open(os.path.join(d, "dropblockd.sysusers")) as f:
        sysusers = [l.split() for l in f if l.strip() and not l.startswith("#")]
    check(["g", group, "-"] in sysusers, "sysusers: declares group %s: %s" % (group, sysusers))
    return sock, svc


def analyze_copies(src, daemon, tmp):
    """Copies of the units whose ExecStart names the build's daemon (verify checks it exists)."""
    d = os.path.join(src, "deploy", "systemd")
    os.makedirs(tmp, exist_ok=True)
    for name in ("dropblockd.socket", "dropblockd.service"):
        with open(os.path.join(d, name)) as f:
            text = f.read()
        text = text.replace("ExecStart=/usr/sbin/dropblockd", "ExecStart=" + os.path.abspath(daemon))
        with open(os.path.join(tmp, name), "w") as f:
            f.write(text)
    return [os.path.join(tmp, n) for n in ("dropblockd.socket", "dropblockd.service")]


def verify(paths):
    r = subprocess.run(["systemd-analyze", "verify", "--man=no"] + paths, capture_output=True, text=True,
                       timeout=120)
    about = [l for l in (r.stdout + r.stderr).splitlines() if any(os.path.basename(p) in l for p in paths)]
    return r.returncode, about, (r.stdout + r.stderr).strip()


def test_systemd_analyze(src, daemon, tmp):
    if not shutil.which("systemd-analyze"):
        note("systemd-analyze is not installed: skipping systemd-analyze verify and security")
        return
    paths = analyze_copies(src, daemon, os.path.join(tmp, "units"))
    # a control: a unit with a bad key must draw a complaint, else verify cannot judge here
    bad_dir = os.path.join(tmp, "bad")
    bad = analyze_copies(src, daemon, bad_dir)
    with open(bad[1], "a") as f:
        f.write("\n[Service]\nFrobnicateDevices=yes\n")
    rc, about, out = verify(bad)
    if rc != 0 and not about:
        note("systemd-analyze verify cannot run in this container (%s): skipping it" % out[-300:])
        return
    check(any("Frobnicate" in l for l in about), "control: verify reports an unknown key (%s)" % out[-300:])
    rc, about, out = verify(paths)
    check(rc == 0 and not about, "systemd-analyze verify: exit %d, about the units: %s" % (rc, about or out[-500:]))
    # the same units naming a binary that does not exist must fail: verify really checks ExecStart
    missing = analyze_copies(src, "/nonexistent/dropblockd", os.path.join(tmp, "missing"))
    rc, about, out = verify(missing)
    check(rc != 0, "control: verify fails for a missing ExecStart binary (exit %d)" % rc)

    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", paths[1]], capture_output=True, text=True,
                       timeout=120)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    if not m:
        note("systemd-analyze security --offline is not available here: %s" % (r.stdout + r.stderr).strip()[-200:])
    else:
        check(float(m.group(1)) <= 2.5, "systemd-analyze security: exposure %s (at most 2.5)" % m.group(1))


class Conn:
    def __init__(self, path, timeout=60):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)

    def call(self, req):
        req = dict(req, v=1, id=1)
        b = json.dumps(req).encode()
        self.s.sendall(struct.pack("<I", len(b)) + b)
        h = b""
        while len(h) < 4:
            c = self.s.recv(4 - len(h))
            if not c:
                return None
            h += c
        n = struct.unpack("<I", h)[0]
        d = b""
        while len(d) < n:
            c = self.s.recv(n - len(d))
            if not c:
                return None
            d += c
        return json.loads(d)

    def close(self):
        self.s.close()


def test_socket_activation(daemon, tmp):
    """The daemon as dropblockd.socket starts it: a listening socket on fd 3 with LISTEN_FDS."""
    sa = shutil.which("systemd-socket-activate")
    if not sa:
        note("systemd-socket-activate is not installed: skipping the socket activation run")
        return
    path = os.path.join(tmp, "act", "dropblockd.sock")
    os.makedirs(os.path.dirname(path))
    log = open(os.path.join(tmp, "act", "log"), "w+")
    # the CPU device only: the test is about the socket, and it starts in milliseconds
    p = subprocess.Popen([sa, "-l", path, daemon, "--devices", "cpu", "--log-level", "info"],
                         stdout=subprocess.DEVNULL, stderr=log)
    try:
        for _ in range(200):
            if os.path.exists(path):
                break
            time.sleep(0.05)
        check(os.path.exists(path), "activation: systemd-socket-activate made the socket")
        c = Conn(path)
        r = c.call({"op": "hello"})
        check(bool(r and r.get("ok")), "activation: hello on the handed-over socket: %s" % r)
        c.close()
        c = Conn(path)
        r = c.call({"op": "status"})
        check(bool(r and r.get("ok")), "activation: status: %s" % (r and str(r)[:200]))
        c.close()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(60)
        check(rc == 0, "activation: exit status 0 after SIGTERM, got %s" % rc)
        log.seek(0)
        text = log.read()
        check("socket activation" in text, "activation: the daemon says it serves an activated socket: %s" % text[-300:])
        check(os.path.exists(path), "activation: the daemon leaves systemd's socket file in place")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()


# --------------------------------------------------------------------------------- Kubernetes
class MiniYAML:
    """The block subset of YAML the manifests use: mappings, sequences ("- "), one-line flow
    sequences of scalars, plain and quoted scalars, comments, "---" between documents."""

    def __init__(self, text):
        self.lines = []
        for n, raw in enumerate(text.splitlines(), 1):
            s = self.strip_comment(raw).rstrip()
            if s.strip():
                self.lines.append((n, len(s) - len(s.lstrip(" ")), s.strip()))

    @staticmethod
    def strip_comment(s):
        q = None
        for i, ch in enumerate(s):
            if q:
                if ch == q:
                    q = None
            elif ch in "\"'":
                q = ch
            elif ch == "#" and (i == 0 or s[i - 1] in " \t"):
                return s[:i]
        return s

    def documents(self):
        docs, cur = [], []
        for ln in self.lines:
            if ln[2] == "---" and ln[1] == 0:
                docs.append(cur)
                cur = []
            else:
                cur.append(ln)
        docs.append(cur)
        out = []
        for d in docs:
            if d:
                self.cur, self.i = d, 0
                v = self.block(d[0][1])
                if self.i != len(d):
                    raise ValueError("line %d: unexpected indentation" % d[self.i][0])
                out.append(v)
        return out

    def scalar(self, s, n):
        if s.startswith("["):
            if not s.endswith("]"):
                raise ValueError("line %d: only one-line flow sequences are supported" % n)
            inner = s[1:-1].strip()
            if not inner:
                return []
            items, buf, q = [], "", None
            for ch in inner:
                if q:
                    buf += ch
                    if ch == q:
                        q = None
                elif ch in "\"'":
                    q = ch
                    buf += ch
                elif ch == ",":
                    items.append(buf.strip())
                    buf = ""
                else:
                    buf += ch
            items.append(buf.strip())
            return [self.scalar(x, n) for x in items]
        if s.startswith("{"):
            raise ValueError("line %d: flow mappings are not supported" % n)
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
            return json.loads(s) if s[0] == '"' else s[1:-1].replace("''", "'")
        if s in ("true", "True", "TRUE"):
            return True
        if s in ("false", "False", "FALSE"):
            return False
        if s in ("null", "~", ""):
            return None
        if re.fullmatch(r"[-+]?[0-9]+", s):
            return int(s)
        if re.fullmatch(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", s):
            return float(s)
        if s[0] in "|>&*!%@`":
            raise ValueError("line %d: unsupported YAML: %s" % (n, s))
        return s

    @staticmethod
    def split_key(s):
        m = re.match(r'^("(?:[^"\\]|\\.)*"|\'[^\']*\'|[^\'"][^:]*?):(\s+(.*))?$', s)
        if not m or s.startswith("- "):
            return None
        k = m.group(1)
        if k[0] in "\"'":
            k = k[1:-1]
        return k, (m.group(3) or "")

    def block(self, indent):
        n, ind, s = self.cur[self.i]
        if ind != indent:
            raise ValueError("line %d: indentation %d, expected %d" % (n, ind, indent))
        if s == "-" or s.startswith("- "):
            return self.seq(indent)
        return self.mapping(indent)

    def mapping(self, indent, first=None):
        out = {}
        while self.i < len(self.cur):
            n, ind, s = self.cur[self.i]
            if first is not None:
                ind, s, first = indent, first, None
            elif ind < indent:
                break
            elif ind > indent:
                raise ValueError("line %d: unexpected indentation" % n)
            kv = self.split_key(s)
            if kv is None:
                if s.startswith("- "):
                    break
                raise ValueError("line %d: not a key: %s" % (n, s))
            k, rest = kv
            if k in out:
                raise ValueError("line %d: duplicate key %s" % (n, k))
            self.i += 1
            if rest:
                out[k] = self.scalar(rest, n)
            elif self.i < len(self.cur) and (self.cur[self.i][1] > ind or
                                             (self.cur[self.i][1] == ind and self.cur[self.i][2].startswith("- "))):
                out[k] = self.block(self.cur[self.i][1])
            else:
                out[k] = None
        return out

    def seq(self, indent):
        out = []
        while self.i < len(self.cur):
            n, ind, s = self.cur[self.i]
            if ind != indent or not (s == "-" or s.startswith("- ")):
                break
            rest = s[1:].strip()
            if not rest:
                self.i += 1
                out.append(self.block(self.cur[self.i][1]))
            elif self.split_key(rest) and not rest.startswith(("\"", "'", "[")):
                # "- key: value": a mapping whose keys sit two columns right of the dash
                out.append(self.mapping(indent + 2, first=rest))
            else:
                self.i += 1
                out.append(self.scalar(rest, n))
        return out


def load_yaml(path):
    with open(path) as f:
        text = f.read()
    mini = MiniYAML(text).documents()
    try:
        import yaml
    except ImportError:
        note("PyYAML is not installed: the manifests are read with the small parser only")
        return mini
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    check(docs == mini, "the small YAML parser reads %s as PyYAML does" % os.path.basename(path))
    return docs


def match_term(term, labels):
    for e in term.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and labels.get(k) in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def schedules_on(pod, labels):
    for k, v in (pod.get("nodeSelector") or {}).items():
        if labels.get(k) != v:
            return False
    req = (((pod.get("affinity") or {}).get("nodeAffinity") or {})
           .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = req.get("nodeSelectorTerms")
    return True if terms is None else any(match_term(t, labels) for t in terms)


def test_daemonset(ds, known_opts):
    name = ds.get("metadata", {}).get("name", "?")
    w = name + ": "
    check(ds.get("apiVersion") == "apps/v1", w + "apiVersion apps/v1")
    spec = ds.get("spec") or {}
    tmpl = spec.get("template") or {}
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    tl = (tmpl.get("metadata") or {}).get("labels") or {}
    check(sel and all(tl.get(k) == v for k, v in sel.items()), w + "selector matches the template's labels")
    pod = tmpl.get("spec") or {}
    psc = pod.get("securityContext") or {}
    check(pod.get("automountServiceAccountToken") is False, w + "no service account token")
    check(not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"),
          w + "no host network, PID or IPC namespace")
    check(bool(pod.get("affinity") or pod.get("nodeSelector")), w + "node affinity or selector")
    check(bool(pod.get("tolerations")), w + "tolerations for the GPU taints")

    vols = {v["name"]: v for v in pod.get("volumes") or []}
    host = [v for v in vols.values() if "hostPath" in v]
    check(len(host) == 1 and host[0]["hostPath"].get("path") == "/run/dropblock"
          and host[0]["hostPath"].get("type") in ("DirectoryOrCreate", "Directory"),
          w + "one hostPath volume: the directory /run/dropblock, got %s" % host)

    containers = pod.get("containers") or []
    check(len(containers) == 1, w + "one container")
    c = containers[0] if containers else {}
    sc = c.get("securityContext") or {}
    check(sc.get("readOnlyRootFilesystem") is True, w + "readOnlyRootFilesystem: true")
    check(sc.get("allowPrivilegeEscalation") is False, w + "allowPrivilegeEscalation: false")
    check(not sc.get("privileged"), w + "not privileged")
    caps = sc.get("capabilities") or {}
    check("ALL" in (caps.get("drop") or []) and not caps.get("add"), w + "capabilities: drop ALL, add none")
    run_as_non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    uid = sc.get("runAsUser", psc.get("runAsUser"))
    gid = sc.get("runAsGroup", psc.get("runAsGroup"))
    check(run_as_non_root is True and isinstance(uid, int) and uid > 0 and isinstance(gid, int) and gid > 0,
          w + "runAsNonRoot with a fixed uid and gid: %s %s %s" % (run_as_non_root, uid, gid))
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    check(seccomp in ("RuntimeDefault", "Localhost"), w + "a seccomp profile")

    args = [str(a) for a in c.get("args") or []]
    opts = split_args(args)
    unknown = [o for o in opts if o not in known_opts]
    check(not unknown, w + "arguments dropblockd does not know: %s" % unknown)
    sock = opts.get("--socket")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
    check(all(m["name"] in vols for m in mounts.values()), w + "every mount names a volume")
    check(sock == "/run/dropblock/dropblockd.sock", w + "--socket /run/dropblock/dropblockd.sock, got %s" % sock)
    hp = mounts.get("/run/dropblock")
    check(hp is not None and "hostPath" in vols.get(hp["name"], {}) and not hp.get("readOnly"),
          w + "the hostPath is mounted writable at /run/dropblock")
    cache = opts.get("--cache-dir")
    cm = mounts.get(cache)
    check(cm is not None and "emptyDir" in vols.get(cm["name"], {}) and not cm.get("readOnly"),
          w + "--cache-dir %s is a writable emptyDir" % cache)
    allow = (opts.get("--allow-gid") or "").split(",")
    check(str(gid) in allow or bool(psc.get("fsGroup") and str(psc["fsGroup"]) in allow),
          w + "--allow-gid %s names the pod's group %s (the socket's group)" % (allow, gid))

    res = c.get("resources") or {}
    check(bool((res.get("requests") or {}).get("memory")) and bool((res.get("limits") or {}).get("memory")),
          w + "memory requests and limits")
    check(not any(k == "nvidia.com/gpu" for k in (res.get("limits") or {})),
          w + "no nvidia.com/gpu limit (it would take whole GPUs from the training pods)")

    for kind in ("readinessProbe", "livenessProbe"):
        cmd = ((c.get(kind) or {}).get("exec") or {}).get("command") or []
        check(len(cmd) >= 2 and os.path.basename(cmd[0]) == "dropblock" and cmd[-1] == "status"
              and split_args(cmd[1:-1]).get("--socket") == sock,
              w + "%s runs dropblock --socket %s status: %s" % (kind, sock, cmd))

    for ic in pod.get("initContainers") or []:
        isc = ic.get("securityContext") or {}
        icaps = isc.get("capabilities") or {}
        check(isc.get("readOnlyRootFilesystem") is True and isc.get("allowPrivilegeEscalation") is False
              and "ALL" in (icaps.get("drop") or []) and set(icaps.get("add") or []) <= {"CHOWN"},
              w + "init container %s: read-only root, drop ALL, at most CHOWN" % ic.get("name"))
        check(all(m["name"] in vols for m in ic.get("volumeMounts") or []), w + "init mounts name volumes")
        script = " ".join(ic.get("command") or [])
        owner = re.search(r"chown (\d+):(\d+)", script)
        check(owner is not None and int(owner.group(1)) == uid and int(owner.group(2)) == gid,
              w + "init container hands the socket directory to uid %s gid %s: %s" % (uid, gid, script))
    return pod


def test_kubernetes(src, known_opts):
    path = os.path.join(src, "deploy", "kubernetes", "daemonset.yaml")
    docs = load_yaml(path)
    sets = [d for d in docs if isinstance(d, dict) and d.get("kind") == "DaemonSet"]
    check(len(sets) >= 1, "daemonset.yaml holds DaemonSets: %s" % [d.get("kind") for d in docs])
    check(all(isinstance(d, dict) and d.get("kind") in ("DaemonSet", "Namespace") for d in docs),
          "daemonset.yaml holds only a Namespace and DaemonSets")
    names = [d["metadata"]["name"] for d in sets]
    check(len(set(names)) == len(names), "DaemonSet names are distinct: %s" % names)
    pods = {d["metadata"]["name"]: test_daemonset(d, known_opts) for d in sets}
    ns = {d["metadata"].get("namespace") for d in sets}
    check(len(ns) == 1, "one namespace for all DaemonSets: %s" % ns)

    # one daemon per GPU node: the affinities are disjoint and cover NVIDIA, AMD and Intel nodes
    nv = {"nvidia.com/gpu.present": "true"}
    amd = {"feature.node.kubernetes.io/amd-gpu": "true"}
    amd_labeller = {"amd.com/gpu.family": "AI"}
    intel = {"intel.feature.node.kubernetes.io/gpu": "true"}
    nodes = {"nvidia": nv, "amd": amd, "amd (node labeller)": amd_labeller, "intel": intel,
             "nvidia+amd": dict(nv, **amd), "amd+intel": dict(amd, **intel), "nvidia+intel": dict(nv, **intel),
             "all three": dict(nv, **amd, **intel)}
    for node, labels in nodes.items():
        on = [n for n, p in pods.items() if schedules_on(p, labels)]
        check(len(on) == 1, "a %s node runs exactly one daemon: %s" % (node, on))
    on = [n for n, p in pods.items() if schedules_on(p, {"kubernetes.io/os": "linux"})]
    check(not on, "a node without GPU labels runs no daemon: %s" % on)


def test_docs(src):
    with open(os.path.join(src, "docs", "deploy.md")) as f:
        text = f.read()
    for w in ("dropblockd.socket", "systemctl enable --now dropblockd.socket", "DROPBLOCK_SOCKET", "/run/dropblock",
              "hostPath", "DistributedDataParallel", "Horovod", "rank", "--allow-gid", "supplementalGroups",
              "dropblock status"):
        check(w in text, "docs/deploy.md mentions %s" % w)
    # every deploy file it names exists
    for p in set(re.findall(r"deploy/[A-Za-z0-9_./-]+[A-Za-z0-9_]", text)):
        check(os.path.exists(os.path.join(src, p)), "docs/deploy.md names %s, which exists" % p)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--source-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    a = ap.parse_args()
    known, rc = daemon_options(a.daemon)
    check(rc == 0 and "--allow-gid" in known, "dropblockd --help lists its options: %s" % sorted(known))
    with tempfile.TemporaryDirectory(prefix="test_deploy.") as tmp:
        for name, fn in (("systemd units", lambda: test_systemd_units(a.source_dir, a.daemon, known)),
                         ("systemd-analyze", lambda: test_systemd_analyze(a.source_dir, a.daemon, tmp)),
                         ("socket activation", lambda: test_socket_activation(a.daemon, tmp)),
                         ("kubernetes", lambda: test_kubernetes(a.source_dir, known)),
                         ("docs", lambda: test_docs(a.source_dir))):
            try:
                fn()
            except Exception as e:  # a crash is one failure, and the other groups still run
                import traceback
                check(False, "%s crashed: %s\n%s" % (name, e, traceback.format_exc()))
    print("test_deploy: %d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
