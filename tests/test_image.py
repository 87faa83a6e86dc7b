#!/usr/bin/env python3
"""Checks the container image (deploy/container/) against the manifests that run it.

  test_image.py --source-dir . --version 0.1.0 [--cli build/client/dropblock] [--no-build]

Builds dropblockd:VERSION with deploy/container/build-image.sh (minutes: a Debian base from the
mirror, then the multi-stage build; --no-build or DROPBLOCK_IMAGE_NO_BUILD=1 checks the image that
is there), then:
- the image's configuration (`podman image inspect`): user, entry point, default arguments,
  volume, health check, HOME, labels and creation date (the last commit's: reproducible builds);
- deploy/kubernetes/daemonset.yaml against it: the image name, runAsUser/runAsGroup, args, the
  socket directory, the cache, the mount points, the probes' and the init container's commands;
- its files (`podman image mount`, else `podman export`): the two programs and nothing to build
  with, the user and group, the ICD loaders' directories and the drivers their files name;
- the programs run: in a container when `podman run` can start one here (with runc and limits no
  higher than this machine's where crun or the defaults are refused), as the manifests run them: the
  init container's command, then the daemon with the manifests' arguments, probed with
  `dropblock status`, serving a job to a client of group 2000 outside the container and refusing
  one without it, and stopping cleanly; where no container can start, `--version` in a chroot.
Skipped (77) where podman is not installed. Standard library only (PyYAML cross-checks the
manifests' reading where it is installed, as in test_deploy.py).
"""
import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import testlib
from test_deploy import MiniYAML, split_args

T = testlib.Tally()
check = T.check


def note(msg):
    print("note: " + msg, flush=True)


def sh(cmd, timeout=120, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def load_manifests(src):
    with open(os.path.join(src, "deploy", "kubernetes", "daemonset.yaml")) as f:
        text = f.read()
    docs = MiniYAML(text).documents()
    try:
        import yaml
        check([d for d in yaml.safe_load_all(text) if d is not None] == docs,
              "the small YAML parser reads daemonset.yaml as PyYAML does")
    except ImportError:
        note("PyYAML is not installed: the manifests are read with the small parser only")
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == "DaemonSet"]


# ------------------------------------------------------------------------------- the image's files
class Rootfs:
    """The image's files: `podman image mount` (root), else an unpacked `podman export`."""

    def __init__(self, image, tmp):
        self.image, self.unpacked, self.path = image, None, None
        r = sh(["podman", "image", "mount", image])
        if r.returncode == 0 and os.path.isdir(r.stdout.strip()):
            self.path = r.stdout.strip()
            return
        note("podman image mount failed (%s): reading an export" % r.stderr.strip()[-200:])
        name = "dropblockd-test-export-%d" % os.getpid()
        r = sh(["podman", "create", "--name", name, image])
        if r.returncode != 0:
            raise RuntimeError("podman create: " + r.stderr[-300:])
        try:
            self.unpacked = os.path.join(tmp, "rootfs")
            os.makedirs(self.unpacked)
            with subprocess.Popen(["podman", "export", name], stdout=subprocess.PIPE) as p:
                subprocess.run(["tar", "-x", "-C", self.unpacked, "--no-same-owner"], stdin=p.stdout, check=True)
            self.path = self.unpacked
        finally:
            sh(["podman", "rm", "-f", name])

    def __call__(self, p):
        return os.path.join(self.path, p.lstrip("/"))

    def close(self):
        if self.unpacked is None and self.path:
            sh(["podman", "image", "unmount", self.image])


def table(path):
    with open(path) as f:
        return [line.rstrip("\n").split(":") for line in f if line.strip()]


def on_path(rootfs, name, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"):
    if name.startswith("/"):
        return os.access(rootfs(name), os.X_OK) or os.path.islink(rootfs(name))
    return any(os.access(rootfs(os.path.join(d, name)), os.X_OK) or os.path.islink(rootfs(os.path.join(d, name)))
               for d in path.split(":"))


def lib_in_image(rootfs, lib):
    """Whether a library an ICD file names (absolute, or a bare name for the dynamic loader) is there."""
    if lib.startswith("/"):
        return os.path.exists(rootfs(lib))
    return any(os.path.exists(rootfs(os.path.join(d, lib)))
               for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib", "/lib",
                         "/usr/lib/aarch64-linux-gnu"))


def test_files(rootfs, uid, gid, home):
    for p in ("/usr/sbin/dropblockd", "/usr/bin/dropblock"):
        st = os.stat(rootfs(p)) if os.path.exists(rootfs(p)) else None
        check(st is not None and stat.S_ISREG(st.st_mode) and st.st_mode & 0o111 and st.st_uid == 0,
              "image: %s is an executable file owned by root" % p)
    for p in ("/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/meson", "/usr/bin/ninja", "/usr/include/CL",
              "/usr/include/vulkan", "/src", "/build", "/stage"):
        check(not os.path.lexists(rootfs(p)), "image: nothing of the build stage: no %s" % p)

    passwd = {int(e[2]): e for e in table(rootfs("/etc/passwd")) if len(e) >= 7}
    group = {int(e[2]): e for e in table(rootfs("/etc/group")) if len(e) >= 3}
    u = passwd.get(uid)
    check(u is not None and int(u[3]) == gid, "image: /etc/passwd has uid %d with primary group %d: %s" % (uid, gid, u))
    check(u is not None and u[5] == home and u[6].endswith("nologin"),
          "image: uid %d's home is %s, no login shell: %s" % (uid, home, u))
    check(gid in group, "image: /etc/group has gid %d: %s" % (gid, group.get(gid)))

    # the ICD loaders and where drivers (the image's and the NVIDIA toolkit's) put their files
    vendors = rootfs("/etc/OpenCL/vendors")
    check(os.path.isdir(vendors), "image: /etc/OpenCL/vendors")
    icds = sorted(os.listdir(vendors)) if os.path.isdir(vendors) else []
    nv = os.path.join(vendors, "nvidia.icd")
    check(os.path.isfile(nv) and open(nv).read().strip() == "libnvidia-opencl.so.1",
          "image: /etc/OpenCL/vendors/nvidia.icd names libnvidia-opencl.so.1 (the toolkit mounts the library only)")
    for icd in icds:
        if icd == "nvidia.icd":
            continue
        lib = open(os.path.join(vendors, icd)).read().strip()
        check(lib_in_image(rootfs, lib), "image: OpenCL ICD %s names %s, which the image holds" % (icd, lib))
    check(os.path.isdir(rootfs("/etc/vulkan/icd.d")) and os.path.isdir(rootfs("/usr/share/vulkan/icd.d")),
          "image: /etc/vulkan/icd.d and /usr/share/vulkan/icd.d (the toolkit mounts nvidia_icd.json in one)")
    vkdir = rootfs("/usr/share/vulkan/icd.d")
    vk = sorted(os.listdir(vkdir)) if os.path.isdir(vkdir) else []
    for j in vk:
        with open(os.path.join(vkdir, j)) as f:
            lib = (json.load(f).get("ICD") or {}).get("library_path", "")
        check(lib_in_image(rootfs, lib), "image: Vulkan ICD %s names %s, which the image holds" % (j, lib))
    for lib in ("libOpenCL.so.1", "libvulkan.so.1", "libuv.so.1", "libcjson.so.1"):
        check(lib_in_image(rootfs, lib), "image: %s" % lib)
    note("OpenCL ICDs: %s; Vulkan ICDs: %s" % (icds, vk))
    return icds, vk


# ---------------------------------------------------------------------- the manifests against it
def test_manifests(sets, inspect, rootfs, version):
    cfg = inspect.get("Config") or {}
    user = cfg.get("User", "")
    check(re.fullmatch(r"\d+:\d+", user) is not None,
          "image: USER is numeric uid:gid (runAsNonRoot can check it): %s" % user)
    uid, gid = (int(x) for x in user.split(":")) if re.fullmatch(r"\d+:\d+", user) else (-1, -1)
    env = dict(e.split("=", 1) for e in cfg.get("Env") or [])
    entry = cfg.get("Entrypoint") or []
    cmd = cfg.get("Cmd") or []
    check(entry == ["/usr/sbin/dropblockd"], "image: ENTRYPOINT /usr/sbin/dropblockd: %s" % entry)
    hc = (inspect.get("Healthcheck") or {}).get("Test") or []
    check(hc[:1] == ["CMD"] and hc[-1:] == ["status"] and os.path.basename(hc[1] if len(hc) > 1 else "") == "dropblock",
          "image: HEALTHCHECK runs dropblock ... status: %s" % hc)
    volumes = set((cfg.get("Volumes") or {}).keys())
    labels = cfg.get("Labels") or {}
    check(labels.get("org.opencontainers.image.version") == version, "image: version label %s" % version)

    check(len(sets) == 3, "three DaemonSets: %s" % [s["metadata"]["name"] for s in sets])
    for ds in sets:
        w = ds["metadata"]["name"] + ": "
        check((ds["metadata"].get("labels") or {}).get("app.kubernetes.io/version") == version,
              w + "app.kubernetes.io/version is meson.build's %s" % version)
        pod = ds["spec"]["template"]["spec"]
        psc = pod.get("securityContext") or {}
        c = pod["containers"][0]
        csc = c.get("securityContext") or {}
        for k in pod.get("initContainers", []) + pod["containers"]:
            check(k.get("image") == "dropblockd:" + version,
                  w + "%s runs dropblockd:%s, got %s" % (k["name"], version, k.get("image")))
        check(csc.get("runAsUser", psc.get("runAsUser")) == uid and csc.get("runAsGroup", psc.get("runAsGroup")) == gid,
              w + "runAsUser/runAsGroup are the image's USER %s" % user)
        check("command" not in c, w + "no command: the image's ENTRYPOINT runs")
        args = [str(a) for a in c.get("args") or []]
        check(args == cmd, w + "args are the image's default arguments (CMD): %s vs %s" % (args, cmd))
        opts = split_args(args)
        sock = opts.get("--socket", "")
        check(os.path.dirname(sock) in volumes, w + "the socket directory %s is a VOLUME of the image: %s"
              % (os.path.dirname(sock), volumes))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            pc = ((c.get(probe) or {}).get("exec") or {}).get("command") or []
            check(pc == hc[1:], w + "%s is the image's HEALTHCHECK: %s vs %s" % (probe, pc, hc[1:]))
            check(bool(pc) and on_path(rootfs, pc[0], env.get("PATH", "/usr/bin")),
                  w + "%s: %s is in the image" % (probe, pc[:1]))
        cenv = {e["name"]: str(e.get("value")) for e in c.get("env") or []}
        check(cenv.get("HOME") == env.get("HOME"),
              w + "HOME %s is the image's %s" % (cenv.get("HOME"), env.get("HOME")))
        cache = opts.get("--cache-dir", "")
        for k in ("HOME", "XDG_CACHE_HOME", "CUDA_CACHE_PATH"):
            if k in cenv:
                check(cenv[k] == cache or cenv[k].startswith(cache + "/"),
                      w + "%s=%s under --cache-dir %s" % (k, cenv[k], cache))
        for m in c.get("volumeMounts") or []:
            check(os.path.isdir(rootfs(m["mountPath"])), w + "mount point %s exists in the image (read-only root)"
                  % m["mountPath"])
        for d in (os.path.dirname(sock), cache):
            st = os.stat(rootfs(d)) if os.path.isdir(rootfs(d)) else None
            check(st is not None and st.st_uid == uid and st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o750,
                  w + "%s is 0750 %d:%d in the image (what a fresh volume starts as)" % (d, uid, gid))
        for ic in pod.get("initContainers") or []:
            icmd = ic.get("command") or []
            check(bool(icmd) and on_path(rootfs, icmd[0]), w + "init %s: %s is in the image" % (ic["name"], icmd[:1]))
            for tool in re.findall(r"\b(chmod|chown)\b", " ".join(icmd)):
                check(on_path(rootfs, tool), w + "init %s: %s is in the image" % (ic["name"], tool))
        if ds["metadata"]["name"].endswith("nvidia"):
            caps = cenv.get("NVIDIA_DRIVER_CAPABILITIES", "")
            check("compute" in caps and "graphics" in caps,
                  w + "NVIDIA_DRIVER_CAPABILITIES brings OpenCL (compute) and Vulkan (graphics): %s" % caps)
    return uid, gid, env, sets[0]["spec"]["template"]["spec"] if sets else {}


# -------------------------------------------------------------------------------- running it
def run_options(image):
    """The `podman run` options that start a container here, or None. crun refuses hybrid
    cgroups, and podman's default limits (nofile 1048576, ...) above the hard ones of a sandbox
    fail with EPERM: runc with limits no higher than this machine's gets through."""
    import resource
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else nofile
    nproc = 16384 if nproc == resource.RLIM_INFINITY else min(nproc, 16384)
    limits = ["--ulimit", "nofile=%d:%d" % (nofile, nofile), "--ulimit", "nproc=%d:%d" % (nproc, nproc)]
    tries = [[], limits]
    if shutil.which("runc"):
        tries += [["--runtime", "runc"], ["--runtime", "runc"] + limits]
    for opts in tries:
        r = sh(["podman", "run", "--rm", "--network", "none", "--no-healthcheck", *opts,
                "--entrypoint", "/bin/true", image], timeout=120)
        if r.returncode == 0:
            note("podman run works here with %s" % (" ".join(opts) or "no extra options"))
            return opts
        why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "exit %d" % r.returncode
        note("podman run %s: %s" % (" ".join(opts) or "(defaults)", why))
    return None


def test_versions_in_container(image, opts, uid, gid, version):
    base = ["podman", "run", "--rm", "--network", "none", "--no-healthcheck", *opts, "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--user", "%d:%d" % (uid, gid)]
    for prog, name in (("/usr/sbin/dropblockd", "dropblockd"), ("/usr/bin/dropblock", "dropblock")):
        r = sh(base + ["--entrypoint", prog, image, "--version"])
        check(r.returncode == 0 and r.stdout.startswith("%s %s" % (name, version)),
              "container: %s --version: %s %s" % (prog, r.stdout.strip(), r.stderr.strip()[-300:]))


def test_versions_in_chroot(rootfs, uid, gid, version):
    if os.geteuid() != 0:
        note("not root: no chroot; the programs run with the image's dynamic loader instead")
    for prog, name in (("/usr/sbin/dropblockd", "dropblockd"), ("/usr/bin/dropblock", "dropblock")):
        if os.geteuid() == 0:
            cmd = ["chroot", "--userspec=%d:%d" % (uid, gid), rootfs.path, prog, "--version"]
        else:
            libs = ":".join(rootfs(d) for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"))
            cmd = [rootfs("/lib64/ld-linux-x86-64.so.2"), "--library-path", libs, rootfs(prog), "--version"]
        r = sh(cmd)
        check(r.returncode == 0 and r.stdout.startswith("%s %s" % (name, version)),
              "chroot: %s --version: %s %s" % (prog, r.stdout.strip(), r.stderr.strip()[-300:]))


def test_libraries(rootfs):
    if os.geteuid() != 0:
        note("not root: ldd does not run in a chroot of the image")
        return
    for prog in ("/usr/sbin/dropblockd", "/usr/bin/dropblock"):
        r = sh(["chroot", rootfs.path, "ldd", prog])
        check(r.returncode == 0 and "not found" not in r.stdout, "chroot: ldd %s finds every library: %s"
              % (prog, r.stdout.strip() if "not found" in r.stdout else r.stderr.strip()[-200:]))


def test_daemon_in_container(image, opts, pod, uid, gid, cli, tmp, icds, vk):
    """The init container's command, then the daemon as the manifests run it."""
    sock_dir = os.path.join(tmp, "run-dropblock")
    cache = os.path.join(tmp, "cache")
    os.makedirs(sock_dir)
    os.makedirs(cache)
    os.chmod(tmp, 0o755)
    # the init container, as the manifest has it: root with CAP_CHOWN only, on a root-owned 0755 directory
    ic = (pod.get("initContainers") or [{}])[0]
    icaps = ((ic.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
    r = sh(["podman", "run", "--rm", "--network", "none", "--no-healthcheck", *opts, "--read-only", "--user", "0:0",
            "--cap-drop", "ALL", *sum((["--cap-add", c] for c in icaps), []), "--security-opt", "no-new-privileges",
            "-v", "%s:/run/dropblock" % sock_dir, "--entrypoint", ic["command"][0], image, *ic["command"][1:]])
    st = os.stat(sock_dir)
    check(r.returncode == 0 and st.st_uid == uid and st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o750,
          "container: the init container's command makes the socket directory 0750 %d:%d: %s, %o %d:%d"
          % (uid, gid, r.stderr.strip()[-300:], stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
    os.chown(cache, uid, gid)  # an emptyDir with fsGroup
    os.chmod(cache, 0o770)

    name = "dropblockd-test-%d" % os.getpid()
    args = [str(a) for a in (pod["containers"][0].get("args") or [])]
    r = sh(["podman", "run", "-d", "--name", name, "--network", "none", "--health-interval", "disable", *opts,
            "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "%d:%d" % (uid, gid),
            "-v", "%s:/run/dropblock" % sock_dir, "-v", "%s:/var/cache/dropblock" % cache, image, *args])
    if not check(r.returncode == 0, "container: the daemon starts: %s" % r.stderr.strip()[-300:]):
        return
    try:
        sock = split_args(args)["--socket"]
        host_sock = os.path.join(sock_dir, os.path.basename(sock))
        t0, ok = time.time(), False
        while time.time() - t0 < 300:
            r = sh(["podman", "exec", name, "dropblock", "--socket", sock, "status"])
            if r.returncode == 0:
                ok = True
                break
            if sh(["podman", "container", "exists", name]).returncode != 0 or \
               sh(["podman", "inspect", "--format", "{{.State.Running}}", name]).stdout.strip() != "true":
                break
            time.sleep(1)
        logs = sh(["podman", "logs", name]).stderr
        if not check(ok, "container: `dropblock status` answers within 300 s: %s" % logs[-1500:]):
            return
        note("the daemon in the container answered after %.1f s" % (time.time() - t0))
        r = sh(["podman", "healthcheck", "run", name])
        check(r.returncode == 0, "container: podman healthcheck run (the image's HEALTHCHECK): %s %s"
              % (r.stdout.strip(), r.stderr.strip()[-300:]))
        st = os.stat(host_sock)
        check(stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid,
              "container: the socket in the host directory is 0660, group %d: %o %d" % (gid, stat.S_IMODE(st.st_mode),
                                                                                       st.st_gid))
        r = sh(["podman", "exec", name, "dropblock", "devices"])
        apis = set(re.findall(r"^(opencl|vulkan|cpu):", r.stdout, re.M))
        want = {"cpu"} | ({"opencl"} if any(i != "nvidia.icd" for i in icds) else set()) | ({"vulkan"} if vk else set())
        check(r.returncode == 0 and want <= apis, "container: the daemon's devices cover %s (the image's drivers): %s"
              % (sorted(want), r.stdout.strip()))
        if cli and shutil.which("setpriv") and os.geteuid() == 0:
            # a training pod: another uid, group 2000, across the container boundary (memfds)
            job = ["run", "--shape", "1,1,4,4", "--layout", "NHWC", "--compat", "keras_cv", "--rate", "0.1",
                   "--block", "2", "--seed", "1234", "--input", "tf-uniform:0,1"]
            r = sh(["setpriv", "--reuid", "1000", "--regid", str(gid), "--clear-groups", cli, "--socket", host_sock,
                    *job])
            check(r.returncode == 0 and "kept K 12 of S 16" in r.stdout,
                  "container: a client of group %d outside runs a job: %s %s" % (gid, r.stdout[-300:], r.stderr[-300:]))
            r = sh(["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups", cli, "--socket", host_sock,
                    "status"])
            check(r.returncode == 1, "container: a client without group %d is refused: %d %s" % (gid, r.returncode,
                                                                                            r.stderr[-300:]))
        else:
            note("no --cli, setpriv or root: no client outside the container")
        r = sh(["podman", "stop", "-t", "60", name], timeout=120)
        code = sh(["podman", "inspect", "--format", "{{.State.ExitCode}}", name]).stdout.strip()
        logs = sh(["podman", "logs", name]).stderr
        check(r.returncode == 0 and code == "0", "container: SIGTERM stops the daemon with status 0: %s %s" % (code,
                                                                                                          logs[-500:]))
        check(not os.path.exists(host_sock), "container: the daemon removes its socket when it stops")
    finally:
        sh(["podman", "rm", "-f", name], timeout=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap.add_argument("--version", required=True, help="meson.build's version: the image is dropblockd:VERSION")
    ap.add_argument("--cli", help="a dropblock tool on this machine, for the client outside the container")
    ap.add_argument("--no-build", action="store_true", default=os.environ.get("DROPBLOCK_IMAGE_NO_BUILD") == "1")
    a = ap.parse_args()
    if not shutil.which("podman"):
        print("SKIP: podman is not installed (`make image` or deploy/container/build-image.sh --tools installs it)")
        return 77
    src = os.path.abspath(a.source_dir)
    image = "dropblockd:" + a.version

    git = os.path.isdir(os.path.join(src, ".git")) or os.path.isfile(os.path.join(src, ".git"))
    head = sh(["git", "-C", src, "rev-parse", "HEAD"]).stdout.strip() if git else ""
    if not a.no_build:
        t0 = time.time()
        r = subprocess.run(["bash", os.path.join(src, "deploy", "container", "build-image.sh")], cwd=src, timeout=1700)
        if not check(r.returncode == 0, "deploy/container/build-image.sh builds %s (exit %d)" % (image, r.returncode)):
            print("test_image: %d passed, %d failed" % (T.passed, T.failed))
            return 1
        note("the image was built in %.0f s" % (time.time() - t0))
    r = sh(["podman", "image", "inspect", image])
    if not check(r.returncode == 0, "podman image inspect %s: %s" % (image, r.stderr.strip()[-300:])):
        return 1
    inspect = json.loads(r.stdout)[0]
    if not a.no_build and head:
        # the commit the script built (HEAD then: others may have committed since), and its date
        rev = (inspect["Config"].get("Labels") or {}).get("org.opencontainers.image.revision", "")
        check(rev == head or sh(["git", "-C", src, "merge-base", "--is-ancestor", head, rev]).returncode == 0,
              "image: revision label %s is HEAD %s, or a commit made since" % (rev, head))
        r = sh(["git", "-C", src, "log", "-1", "--format=%ct", rev or "HEAD"])
        epoch = int(r.stdout.strip() or 0)
        created = inspect.get("Created", "")
        want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
        check(created.startswith(want), "image: created at its commit's time %s (SOURCE_DATE_EPOCH): %s"
              % (want, created))

    sets = load_manifests(src)
    with tempfile.TemporaryDirectory(prefix="test_image.") as tmp:
        rootfs = Rootfs(image, tmp)
        try:
            uid, gid, env, pod = test_manifests(sets, inspect, rootfs, a.version)
            icds, vk = test_files(rootfs, uid, gid, env.get("HOME"))
            test_libraries(rootfs)
            opts = run_options(image)
            if opts is None:
                note("no container starts here (`podman run` refused with every option tried): the programs run "
                     "in a chroot of the image's files instead")
                test_versions_in_chroot(rootfs, uid, gid, a.version)
            else:
                test_versions_in_container(image, opts, uid, gid, a.version)
                test_daemon_in_container(image, opts, pod, uid, gid, a.cli, tmp, icds, vk)
        except Exception as e:  # one failure, and the image is still unmounted
            import traceback
            check(False, "crashed: %s\n%s" % (e, traceback.format_exc()))
        finally:
            rootfs.close()
    print("test_image: %d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
