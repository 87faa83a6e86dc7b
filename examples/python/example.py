"""One DropBlock2D job through dropblockd, or in process with --local [BACKENDS].
    PYTHONPATH=python python3 examples/python/example.py [SOCKET]    (default: $DROPBLOCK_SOCKET...)
    PYTHONPATH=python python3 examples/python/example.py --local [cpu,opencl,vulkan]"""
import sys

import numpy as np

import dropblock

args = sys.argv[1:]
local = args[:1] == ["--local"]
opts = dict(local=True, backends=args[1] if len(args) > 1 else None) if local else \
    dict(socket=args[0] if args else None, timeout=10)
with dropblock.Client(**opts) as client:
    x = client.array((1, 2, 14, 14), "f32")          # zero-copy shared memory
    x[...] = 1.0                                     # the activations
    y = client.dropblock2d(x, 0.1, 7, seed=4, stream=0)   # a new stream per training step
    r = client.last_result
    print("%s kept %d of %d, scale 0x%08x, y[0] %g" % (r.device, r.kept, r.total, r.scale_bits, y.flat[0]))
    y16 = client.dropblock2d(x.astype(np.float16), 0.1, 7, seed=4)   # any float32/float16 array
    print("%s kept %d of %d" % (y16.dtype, client.last_result.kept, client.last_result.total))
    print("rate at step 500 of 1000, group 4: %g" % dropblock.schedule_rate(0.1, 500, 1000, group=4))
    try:
        import torch
        from dropblock.torch import DropBlock2d      # needs PyTorch; CPU or CUDA tensors, autograd
    except ImportError:
        sys.exit(0)
    drop = DropBlock2d(0.1, 7, seed=4, client=client)   # a new stream every training step
    print("torch kept %d" % int((drop(torch.ones(1, 2, 14, 14)) != 0).sum()))
    drop = DropBlock2d(0.1, 7)      # no seed: drawn from torch's generator (torch.manual_seed sets it)
