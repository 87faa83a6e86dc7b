#!/usr/bin/env python3
"""bench/torch_cuda.py: dropblock.torch on CUDA tensors (issue 14 item 2), on a GPU.

One run, through one daemon connection, on a CUDA tensor (default 64x1024x14x14 float32,
block 7, rate 0.1):

  route         how the GPU reaches the daemon (dropblock.torch.cuda_route): "device" (the
                daemon's device with the GPU's UUID, its memory pooled and imported into CUDA;
                ordering "semaphore" or "synchronous") or "host" (the fallback, and why), and
                how many FallbackWarnings the run gave
  exact         the module's output on the GPU, bit for bit, against the CPU path (the same seed
                and stream on the CPU copy of x, through the same connection): f32, and also
                f16, bf16, channels_last and the backward; the same after many calls (pool
                blocks reused)
  in_pool       y's storage lies in a pool block (no host copy), and calls reuse blocks
  times (ms, medians of --reps rounds, each round running every case once, interleaved,
        torch.cuda.synchronize() before and after each):
    module          DropBlock2d(x) on the GPU (its rate/seed/counter buffers on the GPU too)
    functional      dropblock.torch.dropblock2d(x, ...) with Python numbers (no buffer reads)
    module_train    forward + backward of sum(DropBlock2d(x) * w)
    copy            x.clone(): the one device-to-device copy the path makes
    timm_fast       timm's drop_block_fast_2d written here in pure torch (a per-element
                    Bernoulli mask, max-pool, 1 - mask, x * mask * numel / float32 sum)
    timm_like       timm >= 1.0.23's structure (one mask per sample shared by the channels,
                    bench/torch_cpu.py's), timm_like_train with backward
    timm            timm.layers.DropBlock2d itself, where timm is installed

Prints a short table and one JSON line (--json: the JSON line only). Needs torch with CUDA
(torch.cuda.is_available()); elsewhere it says so in its JSON line and exits 77. Usage:

  python3 bench/torch_cuda.py --socket SOCK        # a running dropblockd (bench/gpu-check.sh's)
  python3 bench/torch_cuda.py --daemon build/daemon/dropblockd [--devices vulkan,cpu]
  python3 bench/torch_cuda.py --daemon ... --device cpu    # the same on CPU tensors: a smoke test
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import dropblock  # noqa: E402


def drop_block_fast_2d(x, drop_prob=0.1, block_size=7):
    """timm's drop_block_fast_2d (before 1.0.23), without noise: a Bernoulli(gamma) mask per
    element, max-pooled to blocks, kept = 1 - mask, scaled by numel / float32 sum."""
    _, _, h, w = x.shape
    b = min(block_size, h, w)
    gamma = drop_prob * h * w / b ** 2 / ((w - block_size + 1) * (h - block_size + 1))
    mask = torch.empty_like(x).bernoulli_(gamma)
    mask = F.max_pool2d(mask, kernel_size=b, stride=1, padding=b // 2)
    keep = 1 - mask
    scale = (keep.numel() / keep.to(torch.float32).sum().add(1e-7)).to(x.dtype)
    return x * keep * scale


def timm_like(x, rate, block):
    """timm >= 1.0.23's structure (../shared/PEERS.md, bench/torch_cpu.py): one mask per sample
    shared by its channels, seeds anywhere, max-pooled, scaled by numel / float32 sum."""
    n, _, h, w = x.shape
    b = min(block, h, w)
    gamma = rate * h * w / b ** 2 / ((w - block + 1) * (h - block + 1))
    seeds = (torch.rand((n, 1, h, w), dtype=torch.float32, device=x.device) < gamma).to(x.dtype)
    keep = 1 - F.max_pool2d(seeds, kernel_size=b, stride=1, padding=b // 2)
    return x * (keep * (keep.numel() / keep.sum(dtype=torch.float32).add(1e-6)))


def start_daemon(exe, devices):
    d = tempfile.mkdtemp(prefix="dbt-")
    sock = os.path.join(d, "d.sock")
    log = open(os.path.join(d, "dropblockd.log"), "w")
    args = [exe, "--socket", sock, "--cache-dir", os.path.join(d, "cache")] + (["--devices", devices] if devices
                                                                             else [])
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
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
    ap.add_argument("--devices", default="vulkan,cpu", help="the started daemon's --devices")
    ap.add_argument("--shape", default="64,1024,14,14")
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--block", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cuda", help="cuda; cpu runs the script on CPU tensors (a smoke test)")
    a = ap.parse_args()
    if a.device != "cpu" and not torch.cuda.is_available():
        print(json.dumps({"bench": "torch_cuda", "skipped": "torch.cuda.is_available() is False here (torch %s)"
                          % torch.__version__}))
        sys.exit(77)
    proc = None
    sock = a.socket
    if a.daemon:
        proc, sock = start_daemon(a.daemon, a.devices)
    try:
        run(a, sock)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


def bits(t):
    t = t.detach().contiguous()
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16).cpu()


def run(a, sock):
    import dropblock.torch as dbt
    from dropblock.torch import DropBlock2d, dropblock2d

    shape = tuple(int(s) for s in a.shape.split(","))
    dev = torch.device(a.device)
    on_gpu = dev.type == "cuda"

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    client = dbt.shared_client(sock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", dbt.FallbackWarning)
        gen = torch.Generator(device=dev).manual_seed(0)
        x = torch.rand(shape, device=dev, generator=gen) + 0.25
        w = torch.rand(shape, device=dev, generator=gen)
        seed = 42
        route = dbt.cuda_route(x, client=client) if on_gpu else {"path": "cpu"}

        # exactness: the GPU's bits against the CPU path's, same (seed, stream)
        def exact(xg, stream, mode="forward", **kw):
            ref_in = xg.detach().cpu()
            if mode == "forward":
                y = dropblock2d(xg, a.rate, a.block, seed=seed, stream=stream, client=client, **kw)
                want = dropblock2d(ref_in, a.rate, a.block, seed=seed, stream=stream, client=client, **kw)
            else:
                xr = xg.detach().clone().requires_grad_(True)
                dropblock2d(xr, a.rate, a.block, seed=seed, stream=stream, client=client, **kw).backward(w)
                y = xr.grad
                xc = ref_in.clone().requires_grad_(True)
                dropblock2d(xc, a.rate, a.block, seed=seed, stream=stream, client=client, **kw).backward(w.cpu())
                want = xc.grad
            sync()
            return bool(y.device.type == dev.type and y.stride() == want.stride() and torch.equal(bits(y), bits(want)))

        checks = {
            "f32": exact(x, 3),
            "f16": exact(x.half(), 4),
            "bf16": exact(x.bfloat16(), 5),
            "channels_last": exact(x.to(memory_format=torch.channels_last), 6),
            "NHWC": exact(x.permute(0, 2, 3, 1).contiguous(), 7, layout="NHWC"),
            "backward": exact(x, 8, mode="backward"),
            "float64": exact(x[:4].double(), 9),
        }

        drop = DropBlock2d(a.rate, a.block, seed=seed, client=client).to(dev)
        drop.stream = 0

        def module_train():
            xg = x.clone().requires_grad_(True)
            (drop(xg) * w).sum().backward()

        def timm_like_train():
            xg = x.clone().requires_grad_(True)
            (timm_like(xg, a.rate, a.block) * w).sum().backward()

        cases = {
            "module": lambda: drop(x),
            "functional": lambda: dropblock2d(x, a.rate, a.block, seed=seed, stream=1, client=client),
            "module_train": module_train,
            "copy": lambda: x.clone(),
            "timm_fast": lambda: drop_block_fast_2d(x, a.rate, a.block),
            "timm_like": lambda: timm_like(x, a.rate, a.block),
            "timm_like_train": timm_like_train,
        }
        timm_version = None
        try:
            import timm
            from timm.layers import DropBlock2d as TimmDropBlock2d
            tm = TimmDropBlock2d(drop_prob=a.rate, block_size=a.block).train()
            cases["timm"] = lambda: tm(x)
            timm_version = timm.__version__
        except Exception as e:  # noqa: BLE001 - timm is optional
            timm_version = "unavailable: %s" % e
        times = {k: [] for k in cases}
        for r in range(a.reps + 1):  # round 0 warms up (pool blocks, kernels, semaphores)
            for k, f in cases.items():
                sync()
                t = time.perf_counter()
                f()
                sync()
                if r:
                    times[k].append((time.perf_counter() - t) * 1e3)
        med = {k: round(statistics.median(v), 4) for k, v in times.items()}

        # after all those calls: still exact (reused blocks), y in a pool block
        drop.stream = 11
        y = drop(x)
        sync()
        want = dropblock2d(x.cpu(), a.rate, a.block, seed=seed, stream=11, client=client)
        checks["f32_after_reuse"] = bool(torch.equal(bits(y), bits(want)))
        route = dbt.cuda_route(x, client=client) if on_gpu else route
        in_pool = None
        if route["path"] == "device":
            from dropblock import _cuda_pool
            r = _cuda_pool.route_for(client, x.device.index, "auto", _cuda_pool.default_env())
            in_pool = r.contains(y.untyped_storage().data_ptr())
        del y
        if on_gpu:
            dbt.cuda_synchronize()
    fallback_warnings = [str(c.message) for c in caught if issubclass(c.category, dbt.FallbackWarning)]
    exact_all = all(checks.values())
    out = {"bench": "torch_cuda", "gpu": torch.cuda.get_device_name(0) if on_gpu else "none (cpu)",
           "torch": torch.__version__, "timm": timm_version, "shape": list(shape), "dtype": "f32", "block": a.block, "rate": a.rate,
           "reps": a.reps, "route": route, "fallback_warnings": len(fallback_warnings),
           "fallback_warning": fallback_warnings[0] if fallback_warnings else None,
           "exact": checks, "exact_all": exact_all, "y_in_pool": in_pool, "ms": med,
           "module_over_timm_like": round(med["module"] / med["timm_like"], 3),
           "module_over_copy": round(med["module"] / med["copy"], 3)}
    if not a.json:
        print("%s, torch %s, %s, block %d, rate %g: route %s; exact: %s"
              % (out["gpu"], torch.__version__, "x".join(map(str, shape)), a.block, a.rate,
                 json.dumps(route), "all" if exact_all else json.dumps(checks)))
        for k in cases:
            print("  %-16s %9.3f ms" % (k, med[k]))
    print(json.dumps(out))
    dbt.close_shared()


if __name__ == "__main__":
    main()
