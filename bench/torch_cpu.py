#!/usr/bin/env python3
"""bench/torch_cpu.py: dropblock.torch's CPU module against the bare engine job (issue 14 item 3).

Through one daemon connection, on one shape, medians of --reps rounds (each round runs every
case once, interleaved, so that other load on the machine weighs on all alike):

  engine        client.dropblock2d on x and y that are client.array memory: the job alone
  module_shm    DropBlock2d(x) with x in shared memory (shared_empty): no copy
  module        DropBlock2d(x) with x an ordinary torch tensor: x copied once into y's
                shared memory, the job in place
  copy          that one copy alone (NumPy's copyto of x into a shared tensor, as the module)
  two_copies    client.dropblock2d on ordinary arrays: x copied into scratch, y copied out
                (what the module did before: 51 ms against 10 ms in the issue)
  module_train  forward + backward of sum(DropBlock2d(x) * w)
  timm_like     timm (>= 1.0.23)'s structure in pure torch: one mask per sample shared by the
                channels, seeds anywhere, max-pool, x * mask * numel / sum; forward only;
                timm_train with backward

The criterion is module <= engine + copy ("within one copy of the engine's time"); the verdict
line says by how much. Usage (a daemon of its own, or a running one):

  python3 bench/torch_cpu.py --daemon build/daemon/dropblockd [--shape 16,256,56,56] [--reps 7]
  python3 bench/torch_cpu.py --socket PATH [--device auto] [--json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dropblock  # noqa: E402
from dropblock.torch import DropBlock2d, shared_client, shared_empty  # noqa: E402


def timm_like(x, rate, block):
    """timm >= 1.0.23's structure (../shared/PEERS.md): one mask per sample shared by its
    channels, seeds anywhere with the paper's gamma, max-pooled, scaled by numel / float32 sum."""
    n, _, h, w = x.shape
    b = min(block, h, w)
    gamma = rate * h * w / b ** 2 / ((w - block + 1) * (h - block + 1))
    seeds = (torch.rand((n, 1, h, w), dtype=torch.float32) < gamma).to(x.dtype)
    keep = 1 - F.max_pool2d(seeds, kernel_size=b, stride=1, padding=b // 2)
    return x * (keep * (keep.numel() / keep.sum(dtype=torch.float32).add(1e-6)))


def start_daemon(exe):
    d = tempfile.mkdtemp(prefix="dbt-")
    sock = os.path.join(d, "d.sock")
    log = open(os.path.join(d, "dropblockd.log"), "w")
    proc = subprocess.Popen([exe, "--socket", sock, "--cache-dir", os.path.join(d, "cache")],
                            stdout=subprocess.DEVNULL, stderr=log)
    end = time.time() + 120
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit("dropblockd exited: see %s" % log.name)
        try:
            dropblock.Client(sock).close()
            return proc, sock
        except dropblock.Error:
            time.sleep(0.1)
    proc.kill()
    sys.exit("dropblockd did not answer within 120 s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--socket")
    ap.add_argument("--daemon", help="start this dropblockd on a private socket")
    ap.add_argument("--shape", default="16,256,56,56")
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--block", type=int, default=7)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    proc = None
    sock = a.socket
    if a.daemon:
        proc, sock = start_daemon(a.daemon)
    try:
        run(a, sock)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


def run(a, sock):
    shape = tuple(int(s) for s in a.shape.split(","))
    client = shared_client(sock)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen)
    w = torch.rand(shape, generator=gen)
    xs_np, ys_np = client.array(shape), client.array(shape)
    xs_np[...] = x.numpy()
    x_shm = shared_empty(shape, client=client)
    x_shm.copy_(x)
    y_copy = shared_empty(shape, client=client)
    y_plain = np.empty(shape, np.float32)
    drop = DropBlock2d(a.rate, a.block, seed=42, client=client, device=a.device)
    kw = dict(seed=42, device=a.device)

    def engine():
        client.dropblock2d(xs_np, a.rate, a.block, out=ys_np, **kw)

    def module_train():
        xg = x.clone().requires_grad_(True)
        (drop(xg) * w).sum().backward()

    def timm_train():
        xg = x.clone().requires_grad_(True)
        (timm_like(xg, a.rate, a.block) * w).sum().backward()

    cases = {
        "engine": engine,
        "module_shm": lambda: drop(x_shm),
        "module": lambda: drop(x),
        "copy": lambda: np.copyto(y_copy.numpy(), x.numpy()),
        "two_copies": lambda: client.dropblock2d(x.numpy(), a.rate, a.block, out=y_plain, **kw),
        "module_train": module_train,
        "timm_like": lambda: timm_like(x, a.rate, a.block),
        "timm_train": timm_train,
    }
    times = {k: [] for k in cases}
    for r in range(a.reps + 1):  # round 0 warms up (pool, page faults, kernels)
        for k, f in cases.items():
            t = time.perf_counter()
            f()
            if r:
                times[k].append((time.perf_counter() - t) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    # the module's output against the engine's on the same stream: the same bits
    drop.stream = 0
    same = bool(np.array_equal(drop(x).numpy(), client.dropblock2d(xs_np, a.rate, a.block, **kw)))
    info = client.last_result
    print("shape %s f32, block %d, rate %g, device %s, %d threads, medians of %d rounds (ms):"
          % ("x".join(map(str, shape)), a.block, a.rate, info.device, torch.get_num_threads(), a.reps))
    for k in cases:
        print("  %-13s %8.2f" % (k, med[k]))
    over = med["module"] - med["engine"]
    verdict = over <= med["copy"]
    print("module - engine = %.2f ms, one copy = %.2f ms: %s; module/engine %.2f, module_shm/engine %.2f, "
          "module/timm_like %.2f, module_train/timm_train %.2f; module output = engine output: %s"
          % (over, med["copy"], "within one copy" if verdict else "MORE than one copy",
             med["module"] / med["engine"], med["module_shm"] / med["engine"], med["module"] / med["timm_like"],
             med["module_train"] / med["timm_train"], same))
    if a.json:
        print(json.dumps(dict(med, shape=list(shape), device=info.device, within_one_copy=verdict, same_bits=same)))


if __name__ == "__main__":
    main()
