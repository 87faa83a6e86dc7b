#!/bin/bash
# gpu-check.sh: issue 4's GPU verification in one call on a lent GPU machine (../shared/gpu/README.md):
# the cross-backend matrix on every device, then dropblock-bench on each GPU device (OpenCL and
# Vulkan; f32 and f16; 64x1024x14x14, 32x256x56x56, 256x1024x14x14; block 7; DropBlock3D
# 8x64x16x56x56 block 3 next to 2-D 128x64x56x56 block 3, the same bytes, and NDHWC f32) next to the
# PyTorch peers (torchvision's drop_block3d and x*2 at the 3-D shape too), then jobs on device memory imported into CUDA (issue 13) and dropblock.torch on CUDA
# tensors against timm (issue 14, bench/torch_cuda.py), every output under $OUT. Run
# from the repository root after `source .gpu/setup.sh`, with build/ (a release build from the
# development machine, configured where the CUDA toolkit is, so examples/cuda is built) and .gpu/ carried:
#   source .gpu/setup.sh && bash bench/gpu-check.sh
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu-check.txt") 2>&1
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
for b in opencl vulkan; do
    echo "== test_backends --backend $b"
    timeout 240 build/tests/test_backends --backend "$b" 2>&1 | tail -4
done
bench() { # backend device dtype shape [block [layout]]
    timeout 120 build/bench/dropblock-bench --backend "$1" --device "$2" --dtype "$3" --shape "$4" --block "${5:-7}" \
        --layout "${6:-nchw}" --reps 20 --check --json 2>&1 | tail -1 | tee -a "$OUT/bench.jsonl"
}
for b in opencl vulkan; do
    for d in 0 1 2 3; do # the backend's NVIDIA devices (a tiny job tells a device's name)
        name=$(build/bench/dropblock-bench --backend "$b" --device "$d" --shape 1,1,8,8 --block 3 --reps 1 --json \
               2>/dev/null | tail -1)
        case "$name" in *NVIDIA*|*nvidia*) ;; *) continue ;; esac
        for t in f32 f16; do
            for s in 64,1024,14,14 32,256,56,56 256,1024,14,14; do bench "$b" "$d" "$t" "$s"; done
            # DropBlock3D (issue 17), block 3 (a cube), and the 2-D shape of the same bytes
            for s in 8,64,16,56,56 128,64,56,56; do bench "$b" "$d" "$t" "$s" 3; done
        done
        bench "$b" "$d" f32 8,64,16,56,56 3 nhwc
    done
done
echo "== torch peers"
timeout 300 python3 .gpu/torch_peers.py 2>&1 | tee "$OUT/torch_peers.txt"
echo "== torch peers, DropBlock3D (torchvision drop_block3d, block 3)"
timeout 300 python3 - <<'PY' 2>&1 | tee -a "$OUT/torch_peers.txt"
import statistics, torch, torchvision.ops as tvo
def med(fn, x, iters=30):
    for _ in range(3): fn(x)
    torch.cuda.synchronize(); ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(x); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return statistics.median(ts)
for shape in ((8, 64, 16, 56, 56), (128, 64, 56, 56)):
    for dt in (torch.float32, torch.float16):
        x = torch.rand(shape, device="cuda", dtype=dt)
        op = tvo.drop_block3d if len(shape) == 5 else tvo.drop_block2d
        for name, fn in (("roofline x*2", lambda t: t * 2.0), (op.__name__, lambda t: op(t, 0.1, 3, training=True))):
            ms = med(fn, x)
            print(f"{str(shape):22s} {str(dt):14s} bs=3 {name:26s} {ms*1e3:10.1f} us "
                  f"{2 * x.numel() * x.element_size() / ms / 1e6:9.1f} GB/s")
        del x; torch.cuda.empty_cache()
PY
# issue 13: device regions on the GPU. A daemon on the release build; its Vulkan device's memory
# exported (region.alloc), imported into CUDA (examples/cuda/dropblock_cuda: cuImportExternalMemory
# on the GPU with the same UUID), x written by CUDA, the job on it, y checked bit for bit against
# the CPU reference, the job's time against a device-to-device copy of the same bytes; then the
# step ordered by an exported timeline semaphore on a CUDA stream (ordered_us, ordered_exact).
# issue 14 item 2: the same daemon serves dropblock.torch on CUDA tensors (bench/torch_cuda.py):
# a 64x1024x14x14 f32 tensor through DropBlock2d (pool of imported device memory, semaphores),
# its route, its bits against the CPU path (f32, f16, bf16, channels_last, NHWC, backward,
# float64), its time against timm's drop_block_fast_2d and timm >= 1.0.23's structure in pure
# torch (and timm's own module where installed), one JSON line in torch-cuda.jsonl
echo "== daemon for the device-region checks"
sock=$(mktemp -d)/d.sock
build/daemon/dropblockd --socket "$sock" --devices vulkan,cpu --log-level warn 2>"$OUT/dropblockd.log" &
dpid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
if [ -x build/examples/dropblock_cuda ]; then
    echo "== device regions: CUDA import, job on device memory (dropblock_cuda)"
    for t in f32 f16; do
        for s in 64,1024,14,14 32,256,56,56; do
            timeout 120 build/examples/dropblock_cuda --socket "$sock" --shape "$s" --dtype "$t" --reps 20 2>&1 |
                tail -1 | tee -a "$OUT/device-regions.jsonl"
        done
    done
fi
echo "== dropblock.torch on CUDA tensors (bench/torch_cuda.py)"
DROPBLOCK_LIBRARY=$PWD/build/client/libdropblock.so timeout 300 python3 bench/torch_cuda.py --socket "$sock" \
    --shape 64,1024,14,14 --reps 20 2>&1 | tee "$OUT/torch-cuda.txt" | tail -1 | tee -a "$OUT/torch-cuda.jsonl"
kill "$dpid"; wait "$dpid"
