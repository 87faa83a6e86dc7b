#!/usr/bin/env python3
"""dropblock-bench's host<->device copy figure, in device mode and through a daemon, and the
paths each device reports taking.

  test_bench.py --bench build/bench/dropblock-bench --daemon build/daemon/dropblockd --cache-dir DIR

Device mode on PoCL and on the built-in CPU backend, a tiny shape: the --json line has xfer_us
(the tensor host to device and back through the API) and xfer_gbs, positive numbers, next to the
other figures. Then a daemon on a socket in a temporary directory: `--socket S --throughput` on
opencl:0 and on cpu:0 (a tiny shape) reports, besides the end-to-end figures, the same device's copy
bandwidth measured in-process (xfer_us, xfer_gbs) and e2e_over_xfer = gbps / xfer_gbs. Timings
are not checked, only that they are there and consistent.

The `paths` words (the backend's describe) must name the fast paths expected here, so that a
fast path silently turned off fails a test even though the bits stay right: PoCL zero-copy with
hardware f16 conversions, subnormal products and the CPU mask batches (staged under
DROPBLOCK_OPENCL_COPY=1, the GPU kernel shape under DROPBLOCK_OPENCL_SHAPE=gpu, the fixup pass
under DROPBLOCK_OPENCL_FIXUP=1), lavapipe host-visible with import and subnormal products
(staged under DROPBLOCK_VULKAN_STAGE=1, the fixup pass under DROPBLOCK_VULKAN_FIXUP=1), the CPU backend's mask and apply on one SIMD path (the forced one
where the CPU has it); hardware f16 on the GPU shape and on lavapipe too (issue 16's probes).

The job's structure (issue 16) is in the JSON of every backend, both layouts: launches and
transfers of the last job (a one-chunk OpenCL job: 3-5 launches, nothing between them) and the
mask pass's Philox blocks per candidate block on the device's tiling.

DropBlock3D (a 5-D --shape N,C,D,H,W): the JSON has a 5-element shape and a 3-element block (a
2-D run keeps 4 and 2), --check passes against the CPU reference on every backend and both
layouts, and the baseline (torchvision's drop_block3d) is timed for a cube block and null for
another block. Python standard library only.
"""
import argparse
import json
import os
import subprocess
import sys

import testlib


def run(args, timeout=120, env=None):
    p = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       env=None if env is None else {**os.environ, **env})
    if p.returncode != 0:
        sys.exit("test_bench: %s exited %d:\n%s%s" % (" ".join(map(str, args)), p.returncode, p.stdout.decode(),
                                                      p.stderr.decode()))
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def positive(j, key, what):
    v = j.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
        sys.exit("test_bench: %s: %s is %r, want a positive number:\n%s" % (what, key, v, json.dumps(j)))
    return v


def device_mode_has_xfer(bench, backend):
    j = run([bench, "--backend", backend, "--shape", "2,3,16,16", "--block", "3", "--reps", "2", "--json"])
    us = positive(j, "xfer_us", backend)
    gbs = positive(j, "xfer_gbs", backend)
    # xfer_us is printed to 0.1 us, xfer_gbs to 0.01 GB/s
    lo, hi = 2 * j["bytes"] / (us + 0.05) / 1e3 - 0.006, 2 * j["bytes"] / max(us - 0.05, 1e-3) / 1e3 + 0.006
    if not lo <= gbs <= hi:
        sys.exit("test_bench: %s: xfer_gbs %g is not 2 x bytes / xfer_us (%g to %g)" % (backend, gbs, lo, hi))
    for k in ("copy_us", "op_us", "run_us"):
        positive(j, k, backend)
    print("ok device mode %s: xfer_us %g, xfer_gbs %g" % (backend, us, gbs))


def structure(bench, backend, layout, env=None):
    """The job's structure in the JSON (issue 16): launches and transfers of the run's last job,
    and the mask pass's Philox blocks per candidate block on the device's tiling."""
    j = run([bench, "--backend", backend, "--shape", "2,40,14,14", "--layout", layout, "--block", "7", "--reps", "1",
             "--json"], env=env)
    what = "%s %s%s" % (backend, layout, " " + str(env) if env else "")
    for k in ("launches", "transfers", "transfers_between", "fills", "submits", "philox_per_candidate",
              "philox_blocks", "candidate_blocks", "mask_atomics", "mask_items"):
        if not isinstance(j.get(k), (int, float)):
            sys.exit("test_bench: %s: no %s in %s" % (what, k, json.dumps(j)))
    if j["philox_blocks"] < j["candidate_blocks"] or j["candidate_blocks"] <= 0:
        sys.exit("test_bench: %s: %d Philox blocks for %d candidate blocks" % (what, j["philox_blocks"],
                                                                               j["candidate_blocks"]))
    if backend == "opencl" and (j["transfers_between"] != 0 or j["fills_between"] != 0 or not 3 <= j["launches"] <= 5):
        sys.exit("test_bench: %s: a one-chunk OpenCL job takes 3-5 launches and nothing between them: %s"
                 % (what, json.dumps(j)))
    print("ok structure %s: %d launches, %d transfers (%d between), Philox/candidate %.3f"
          % (what, j["launches"], j["transfers"], j["transfers_between"], j["philox_per_candidate"]))
    return j


def paths(bench, backend, env=None):
    j = run([bench, "--backend", backend, "--shape", "1,2,8,8", "--block", "3", "--reps", "1", "--json"], env=env)
    words = dict(w.split("=", 1) for w in j.get("paths", "").split() if "=" in w)
    if not words:
        sys.exit("test_bench: %s: no paths in %s" % (backend, json.dumps(j)))
    return words


def expect_paths(bench, backend, want, env=None):
    got = paths(bench, backend, env)
    bad = {k: v for k, v in want.items() if got.get(k) not in (v if isinstance(v, tuple) else (v,))}
    if bad:
        sys.exit("test_bench: %s%s: paths %s, want %s" % (backend, " " + str(env) if env else "", got, want))
    print("ok paths %s%s: %s" % (backend, " " + str(env) if env else "", " ".join("%s=%s" % kv for kv in got.items())))


def paths_as_expected(bench):
    expect_paths(bench, "opencl", {"memory": "zero-copy", "f16": "hardware", "subnormals": "hardware",
                                   "mask": "cpu-batches"})
    expect_paths(bench, "opencl", {"subnormals": "fixup"}, {"DROPBLOCK_OPENCL_FIXUP": "1"})
    expect_paths(bench, "opencl", {"memory": "staged"}, {"DROPBLOCK_OPENCL_COPY": "1"})
    expect_paths(bench, "vulkan", {"memory": "host-visible", "import": "yes", "f16": "hardware", "subnormals": "hardware"})
    expect_paths(bench, "vulkan", {"subnormals": "fixup", "f16": "integer"}, {"DROPBLOCK_VULKAN_FIXUP": "1"})
    expect_paths(bench, "opencl", {"mask": "gpu-blocks", "f16": "hardware"}, {"DROPBLOCK_OPENCL_SHAPE": "gpu"})
    expect_paths(bench, "vulkan", {"memory": "staged"}, {"DROPBLOCK_VULKAN_STAGE": "1"})
    simd = ("avx512", "avx2", "scalar")
    best = paths(bench, "cpu")
    if best.get("mask") not in simd or best.get("apply") != best.get("mask"):
        sys.exit("test_bench: cpu: mask and apply on one SIMD path: %s" % best)
    for forced in simd[simd.index(best["mask"]):]:  # the paths this CPU has
        expect_paths(bench, "cpu", {"mask": forced, "apply": forced}, {"DROPBLOCK_CPU_SIMD": forced})


def dropblock3d(bench, backend, layout, block, want_block):
    """A 5-D shape: the JSON's shape and block, --check against the CPU reference, the baseline
    timed for an odd cube block (torchvision's drop_block3d) and null for another."""
    j = run([bench, "--backend", backend, "--shape", "2,3,5,12,10", "--layout", layout, "--block", block, "--reps", "2",
             "--check", "--json"])
    what = "3-D %s %s block %s" % (backend, layout, block)
    want = {"shape": [2, 3, 5, 12, 10], "block": want_block, "layout": {"nchw": "NCDHW", "nhwc": "NDHWC"}[layout],
            "bytes": 2 * 3 * 5 * 12 * 10 * 4, "check": True}
    bad = {k: j.get(k) for k, v in want.items() if j.get(k) != v}
    if bad:
        sys.exit("test_bench: %s: %s, want %s:\n%s" % (what, bad, want, json.dumps(j)))
    for k in ("copy_us", "op_us", "backward_us", "mask_us", "run_us"):
        positive(j, k, what)
    cube = len(set(want_block)) == 1 and want_block[0] % 2 == 1
    if cube:
        positive(j, "baseline_us", what)
        positive(j, "baseline_over_op", what)
    elif j.get("baseline_us") is not None:
        sys.exit("test_bench: %s: baseline_us %r, want null (torchvision takes odd cubes only)" % (what,
                                                                                                   j["baseline_us"]))
    print("ok %s: check bit-exact, op_us %g, baseline_us %s" % (what, j["op_us"], j["baseline_us"]))


def dropblock2d_json(bench):
    """A 4-D shape keeps its 4-element shape and 2-element block."""
    j = run([bench, "--backend", "cpu", "--shape", "2,3,12,10", "--block", "3,5", "--reps", "1", "--check", "--json"])
    want = {"shape": [2, 3, 12, 10], "block": [3, 5], "layout": "NCHW", "check": True}
    bad = {k: j.get(k) for k, v in want.items() if j.get(k) != v}
    if bad:
        sys.exit("test_bench: 2-D: %s, want %s:\n%s" % (bad, want, json.dumps(j)))
    print("ok 2-D JSON: shape %s block %s" % (j["shape"], j["block"]))


def throughput_has_xfer(bench, sock, device):
    j = run([bench, "--socket", sock, "--throughput", "--device", device, "--shape", "2,16,16,16", "--reps", "3",
             "--json"])
    if j.get("mode") != "throughput" or j.get("device") != device:
        sys.exit("test_bench: --throughput on %s: %s" % (device, json.dumps(j)))
    positive(j, "xfer_us", device)
    xg = positive(j, "xfer_gbs", device)
    ratio = positive(j, "e2e_over_xfer", device)
    g = positive(j, "gbps", device)
    if abs(ratio - g / xg) > 0.0011 + 0.01 * ratio:
        sys.exit("test_bench: %s: e2e_over_xfer %g is not gbps / xfer_gbs (%g)" % (device, ratio, g / xg))
    print("ok --socket --throughput %s: %g GB/s end to end, copy %g GB/s, ratio %g" % (device, g, xg, ratio))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--cache-dir", required=True)
    a = ap.parse_args()

    for backend in ("opencl", "cpu"):
        device_mode_has_xfer(a.bench, backend)
    paths_as_expected(a.bench)
    for layout in ("nchw", "nhwc"):
        for backend, env in (("opencl", None), ("opencl", {"DROPBLOCK_OPENCL_SHAPE": "gpu"}), ("vulkan", None),
                             ("cpu", None)):
            structure(a.bench, backend, layout, env)
    for backend in ("opencl", "cpu", "vulkan"):
        for layout in ("nchw", "nhwc"):
            dropblock3d(a.bench, backend, layout, "3", [3, 3, 3])
    dropblock3d(a.bench, "opencl", "nchw", "5,3,3", [5, 3, 3])
    dropblock3d(a.bench, "cpu", "nchw", "3,5,3", [3, 5, 3])
    dropblock2d_json(a.bench)

    try:
        d = testlib.Daemon(a.daemon, "--cache-dir", a.cache_dir)
    except testlib.DaemonError as e:
        sys.exit("test_bench: %s" % e)
    try:
        for device in ("opencl:0", "cpu:0"):
            throughput_has_xfer(a.bench, d.path, device)
    finally:
        rc = d.stop(timeout=60, remove=True)
    if rc != 0:
        sys.exit("test_bench: dropblockd exited with %d after SIGTERM:\n%s" % (rc, d.logtext()))
    print("test_bench: all passed")


if __name__ == "__main__":
    main()
