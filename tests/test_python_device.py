#!/usr/bin/env python3
"""The Python package's device memory (issue 13): Client.device_buffer on the in-process engine and
through a daemon, its fields, jobs on DeviceTensors (dropblock_run_ref underneath) whose K, S,
scale and mask bits equal the reference's (they depend on the parameters only, not on x, so this
holds whatever the device memory holds: writing x needs an importer, which tests/
test_device_regions.c is), in place and into another place, forward and backward; the refusals;
and the handle kept open while a buffer lives. Skips (77) without NumPy or a device that can
export.

  test_python_device.py --daemon DROPBLOCKD
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Daemon, Tally  # noqa: E402

T = Tally()


def check_client(dropblock, np, client, label):
    try:
        buf = client.device_buffer(1 << 20)
    except dropblock.Error as e:
        if e.code in ("invalid_argument", "not_found") and "export" in str(e):
            return False
        raise
    T.check(buf.size == 1 << 20 and buf.allocation_size >= buf.size and buf.handle_type == "opaque_fd" and
            buf.device.startswith("vulkan:") and len(buf.device_uuid) == 16 and buf.fd >= 0,
            "%s: %r fields" % (label, buf))
    shape = (2, 8, 14, 14)
    x = buf.tensor(shape, "f32", 0)
    y = buf.tensor(shape, "f32", 64 * 1024)
    ref = dropblock.Client(local=True, backends="cpu")
    host = np.ones(shape, np.float32)
    for mode in ("forward", "backward"):
        run = client.dropblock2d if mode == "forward" else client.backward
        rrun = ref.dropblock2d if mode == "forward" else ref.backward
        for out in (None, y):
            got, gmask = run(x, 0.2, 3, seed=11, stream=4, out=out, mask=True)
            gi = client.last_result
            _, wmask = rrun(host, 0.2, 3, seed=11, stream=4, mask=True)
            wi = ref.last_result
            T.check(got is (x if out is None else y), "%s %s: returns out" % (label, mode))
            T.check((gi.kept, gi.total, gi.scale_bits) == (wi.kept, wi.total, wi.scale_bits) and
                    np.array_equal(gmask, wmask) and gi.device == buf.device,
                    "%s %s out=%s: K/S/scale/mask %s against %s on %s" % (label, mode, out is not None, gi, wi,
                                                                           gi.device))
    for bad, words in ((lambda: client.dropblock2d(x, 0.2, 3, out=buf.tensor(shape, "f16", 0)), "out"),
                       (lambda: client.dropblock2d(buf.tensor(shape, "f32", (1 << 20) - 16), 0.2, 3), "exceeds"),
                       (lambda: client.dropblock2d(x, 0.2, 3, device="cpu:0"), "cpu:0")):
        try:
            bad()
            T.check(False, "%s: refused (%s)" % (label, words))
        except dropblock.Error as e:
            T.check(words in str(e), "%s: refused naming %s: %s" % (label, words, e))
    fd = buf.take_fd()
    T.check(fd >= 0 and buf.fd == -1, "%s: take_fd" % label)
    os.close(fd)
    with client.device_buffer(4096) as b2:
        T.check(b2.size == 4096, "%s: a second buffer" % label)
    buf.free()
    buf.free()
    ref.close()
    return True


def check_device3d(dropblock, np, client, label):
    """DropBlock3D on 5-D DeviceTensors (issue 17): dropblock3d, backward3d and submit; K, S,
    scale and mask as the CPU's on ones; a 4-D method refuses a 5-D tensor."""
    shape = (2, 3, 4, 6, 6)
    with client.device_buffer(1 << 20) as buf:
        x = buf.tensor(shape, "f32", 0)
        y = buf.tensor(shape, "f32", 64 * 1024)
        ref = dropblock.Client(local=True, backends="cpu")
        host = np.ones(shape, np.float32)
        for mode in ("forward", "backward"):
            run = client.dropblock3d if mode == "forward" else client.backward3d
            rrun = ref.dropblock3d if mode == "forward" else ref.backward3d
            for layout in ("NCDHW", "NDHWC"):
                try:
                    got, gmask = run(x, 0.2, (2, 3, 3), seed=11, stream=4, out=y, mask=True, layout=layout)
                    gi = client.last_result
                    _, wmask = rrun(host, 0.2, (2, 3, 3), seed=11, stream=4, mask=True, layout=layout)
                    wi = ref.last_result
                    ok = (got is y and (gi.kept, gi.total, gi.scale_bits) == (wi.kept, wi.total, wi.scale_bits)
                          and np.array_equal(gmask, wmask) and gi.device == buf.device)
                except dropblock.Error as e:
                    ok, gi, wi = False, e, None
                T.check(ok, "%s 3-D %s %s: K/S/scale/mask %s against %s" % (label, mode, layout, gi, wi))
        try:
            info = client.submit(x, 0.2, 2, seed=3, out=y).wait()
            ref.dropblock3d(host, 0.2, 2, seed=3)
            wi = ref.last_result
            ok = (info.kept, info.total, info.scale_bits) == (wi.kept, wi.total, wi.scale_bits)
        except dropblock.Error as e:
            ok, info = False, e
        T.check(ok, "%s: submit of a 5-D DeviceTensor runs DropBlock3D (%s)" % (label, info))
        try:
            client.dropblock2d(x, 0.2, 3)
            T.check(False, "%s: dropblock2d refuses a 5-D DeviceTensor" % label)
        except dropblock.Error as e:
            T.check("dropblock3d" in str(e), "%s: dropblock2d refuses a 5-D DeviceTensor: %s" % (label, e))
        ref.close()


def check_semaphores(dropblock, np, client, label, remote):
    """Client.semaphore and Client.submit's wait= and signal= (docs/protocol.md "Ordering with
    semaphores"): through a daemon the submitted job waits until the host signals; its K/S/mask
    equal the CPU reference's; a wait that times out; export where the driver can."""
    try:
        exp = client.semaphore()
        T.check(exp.fd >= 0 and exp.handle_type == "opaque_fd", "%s: exported %r" % (label, exp))
        exp.free()
    except dropblock.Error as e:
        T.check(e.code in ("invalid_argument", "not_found") and "export" in str(e),
                "%s: an exported semaphore refused saying why: %s" % (label, e))
    a, b = client.semaphore(export=False), client.semaphore(export=False)
    T.check(a.fd == -1 and a.value == 0 and a.device.startswith("vulkan:"), "%s: %r" % (label, a))
    shape = (2, 8, 14, 14)
    buf = client.device_buffer(1 << 20)
    x, y = buf.tensor(shape, "f32", 0), buf.tensor(shape, "f32", 64 * 1024)
    client.dropblock2d(x, 0.0, 3, seed=1, training=False)  # (any bytes: the reference sees ones below)
    if not remote:
        a.signal(1)  # in process the job runs in submit, which waits itself
    job = client.submit(x, 0.2, 3, seed=11, stream=4, out=y, wait=(a, 1), signal=(b, 1))
    if remote:
        try:
            job.wait(0.3)
            T.check(False, "%s: the job ran before its wait was signalled" % label)
        except TimeoutError:
            T.check(b.value == 0, "%s: waiting, its signal not raised" % label)
        a.signal(1)
    info = job.wait()
    ref = dropblock.Client(local=True, backends="cpu")
    ref.dropblock2d(np.ones(shape, np.float32), 0.2, 3, seed=11, stream=4)
    wi = ref.last_result
    T.check((info.kept, info.total, info.scale_bits) == (wi.kept, wi.total, wi.scale_bits) and b.value == 1 and
            info.device == a.device, "%s: the ordered job %s against %s, signal %d" % (label, info, wi, b.value))
    try:
        client.submit(x, 0.2, 3, seed=1, wait=(a, 9, 0.1), signal=(b, 2)).wait()
        T.check(False, "%s: a wait that times out" % label)
    except dropblock.Error as e:
        T.check(e.code == "unavailable" and "did not reach 9" in str(e) and b.value == 2,
                "%s: a wait that timed out: %s" % (label, e))
    for bad, words in ((lambda: client.submit(x, 0.2, 3, wait=(b,)), "wait"),
                       (lambda: a.signal(1), "already")):
        try:
            bad()
            T.check(False, "%s: refused (%s)" % (label, words))
        except dropblock.Error as e:
            T.check(words in str(e), "%s: refused naming %s: %s" % (label, words, e))
    a.free()
    b.free()
    buf.free()
    ref.close()


def check_cuda_module(dropblock, cuda_abi):
    """dropblock.cuda without a GPU: its ctypes structs against the toolkit's cuda.h (where
    tests/cuda_abi is built), the views' __cuda_array_interface__ and DLPack capsule over a stand-in
    import, and a clear error where no driver is."""
    import ctypes
    import json
    import subprocess
    from dropblock import cuda
    if cuda_abi:
        abi = json.loads(subprocess.run([cuda_abi], capture_output=True, text=True, check=True).stdout)
        H, B = cuda.MemoryHandleDesc, cuda.BufferDesc
        mine = {"handle_desc": {"size": ctypes.sizeof(H), "type": H.type.offset, "handle": H.handle.offset,
                                "size_field": H.size.offset, "flags": H.flags.offset},
                "buffer_desc": {"size": ctypes.sizeof(B), "offset": B.offset.offset, "size_field": B.size.offset,
                                "flags": B.flags.offset},
                "opaque_fd": cuda.OPAQUE_FD, "dedicated": cuda.DEDICATED, "timeline_fd": cuda.TIMELINE_FD}
        S, SP, WP = cuda.SemaphoreHandleDesc, cuda.SignalParams, cuda.WaitParams
        mine["sem_desc"] = {"size": ctypes.sizeof(S), "type": S.type.offset, "handle": S.handle.offset,
                            "flags": S.flags.offset}
        mine["signal_params"] = {"size": ctypes.sizeof(SP), "fence": SP.params.offset, "flags": SP.flags.offset}
        mine["wait_params"] = {"size": ctypes.sizeof(WP), "fence": WP.params.offset, "flags": WP.flags.offset}
        T.check(mine == abi, "dropblock.cuda's structs as cuda.h lays them out: %s against %s" % (mine, abi))
    else:
        print("note: no CUDA toolkit in the build: dropblock.cuda's structs not checked against cuda.h")

    class Drv:
        name = "cuda"

    class Mem(cuda.ExternalMemory):
        def __init__(self):
            self.driver, self.ordinal, self.ptr, self.size, self._closed = Drv(), 0, 0x7f0000000000, 1 << 20, True

    arr = Mem().array((2, 3, 4, 5), "f16", 256)
    cai = arr.__cuda_array_interface__
    T.check(cai["shape"] == (2, 3, 4, 5) and cai["typestr"] == "<f2" and cai["data"] == (0x7f0000000000 + 256, False)
            and cai["version"] == 3, "__cuda_array_interface__: %s" % cai)
    T.check(arr.__dlpack_device__() == (2, 0), "__dlpack_device__: %s" % (arr.__dlpack_device__(),))
    cap = arr.__dlpack__()
    T.check(type(cap).__name__ == "PyCapsule", "__dlpack__ gives a capsule: %r" % cap)
    try:
        Mem().array((1 << 20,), "f32")
        T.check(False, "an array past the buffer is refused")
    except dropblock.Error as e:
        T.check("passes the buffer" in str(e), "an array past the buffer is refused: %s" % e)
    if not cuda.driver_available():
        try:
            cuda.import_buffer(None)
            T.check(False, "import_buffer without a driver fails")
        except dropblock.Error as e:
            T.check("libcuda.so.1" in str(e), "import_buffer without a driver says what is missing: %s" % e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--cuda-abi")
    a = ap.parse_args()
    try:
        import numpy as np
    except ImportError:
        print("SKIP: NumPy is not installed")
        return 77
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import dropblock
    os.environ.setdefault("VK_DRIVER_FILES", "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")
    check_cuda_module(dropblock, a.cuda_abi)
    with dropblock.Client(local=True, backends="vulkan,cpu", cache_dir="") as c:
        if not check_client(dropblock, np, c, "in-process"):
            print("SKIP: no device that can export memory")
            return 77
        check_semaphores(dropblock, np, c, "in-process", False)
        check_device3d(dropblock, np, c, "in-process")
    d = Daemon(a.daemon, "--cache-dir", tempfile.mkdtemp(prefix="dbpd-"))
    try:
        c = dropblock.Client(socket=d.path)
        check_client(dropblock, np, c, "daemon")
        check_semaphores(dropblock, np, c, "daemon", True)
        check_device3d(dropblock, np, c, "daemon")
        keep = c.device_buffer(4096)
        c.close()  # the buffer keeps the connection until it is freed
        T.check(c.closed and keep.size == 4096, "close with a live buffer")
        keep.free()
    finally:
        T.check(d.stop(remove=True) == 0, "dropblockd exit status")
    print("test_python_device: %d passed, %d failed" % (T.passed, T.failed))
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
