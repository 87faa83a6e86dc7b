"""test_torch_cuda.py: dropblock.torch's CUDA path (issue 14 item 2) without a GPU.

dropblock._cuda_pool does everything that touches CUDA through an environment object; here a
fake one stands for torch.cuda and dropblock.cuda, with CPU tensors in the GPU's place and fake
daemon devices whose "device memory" is host memory, so that the logic runs for real:

  - UUIDs: parsing the daemon's and torch's forms, matching the GPU to the daemon's devices
    (healthy, the requested id, exporting and Vulkan ones first);
  - the pool: blocks handed out, rounded to the grain, reused (the smallest that fits, never
    one still in use), grown, trimmed past the kept bytes after a device synchronize, released
    at close; y's block goes back when y and its views die (what torch holds of a
    __cuda_array_interface__ object is mimicked: the tensor keeps the wrapped object), and a
    block reused on another stream waits for the stream of its last use;
  - per device: two GPUs with two daemon devices get their own routes and pools;
  - the choice of path: the device path ordered by exported semaphores (the job is submitted
    waiting for n, the stream signals n after the copy and waits for n + 1, values rising per
    stream, one semaphore per stream, host-synchronous past the cap), host-synchronous where
    the device exports no semaphore (the stream is synchronized before the job), and the
    fallback through host memory where there is no driver, no daemon device with the GPU's
    UUID, the requested device is another, the device does not export, the import fails, torch
    does not wrap the memory in place, or a later allocation is refused; one FallbackWarning per process, naming why and the cost;
  - bits: every path gives the CPU op's output (f32, f16, bf16; NCHW, NHWC, channels_last;
    forward and backward), also through torch.py's CUDA kernel (dropblock.torch._run_cuda);
  - a job that fails after it was submitted is raised by the next call (and by synchronize);
    with a GPU behind the host, the calls return before their jobs run, at most MAX_PENDING
    jobs run ahead, and every y has its bits once the GPU catches up;
  - the real environment (TorchEnv) has every method the fake stands for, and says here that
    interop is missing;
  - through a dropblockd (--daemon) on lavapipe: a real region.alloc on the device whose UUID
    the fake GPU has (path "device"), lavapipe's refusal to export semaphores (ordering
    "synchronous"), a real job on that device memory, and the fallback's host job in the
    connection's shared memory with the CPU op's bits.
The CUDA kernel is registered for the ops (dispatch key CUDA). Nothing here runs on a GPU:
bench/gpu-check.sh (bench/torch_cuda.py) does, on a lent one. Exit 77 (skipped) without torch
or NumPy.
"""
import argparse
import gc
import os
import sys
import warnings
import weakref

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

from testlib import Daemon, Tally  # noqa: E402

try:
    import numpy as np
    import torch
except ImportError as e:
    print("SKIP: %s" % e)
    sys.exit(77)

import dropblock  # noqa: E402
import dropblock.torch as dbt  # noqa: E402
from dropblock import _cuda_pool as cp  # noqa: E402
from dropblock._core import _METHODS, DeviceTensor, Error  # noqa: E402

T = Tally()
check = T.check
U0 = bytes(range(16))
U1 = bytes(range(16, 32))
NP = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}


def section(name):
    print("--", name, flush=True)


def uuid_text(b):
    return cp.uuid_text(b)


# ---- fakes ----------------------------------------------------------------------------------

class FakeBuffer:
    """A DeviceBuffer whose device memory is host memory."""

    def __init__(self, nbytes, device, uuid):
        self.mem = np.zeros(nbytes, np.uint8)
        self.size, self.device, self.device_uuid, self.freed = nbytes, device, uuid, False

    def tensor(self, shape, dtype="f32", offset=0):
        return DeviceTensor(self, offset, tuple(shape), dtype)

    def free(self):
        self.freed = True


class FakeMemory:
    """An ExternalMemory over a FakeBuffer; over a real DeviceBuffer (the daemon cases), a host
    mirror of its size: jobs run on the device memory, which the test does not see."""

    def __init__(self, buf):
        self.mirror = getattr(buf, "mem", None)
        if self.mirror is None:
            self.mirror = np.zeros(buf.size, np.uint8)
        self.buffer, self.ptr, self.closed = buf, self.mirror.ctypes.data, False

    def close(self):
        self.closed = True


class FakeSemaphore:
    def __init__(self, world, device):
        self.world, self.device, self.value, self.freed = world, device, 0, False
        self.waiting = []

    def raise_to(self, v, who):
        if v <= self.value:
            self.world.violations.append("%s signalled %d, not above %d" % (who, v, self.value))
        self.value = v
        for job in [j for j in self.waiting if j.wait_value <= v]:
            self.waiting.remove(job)
            job.run()

    def signal(self, v):  # from the host
        self.raise_to(v, "the host")

    def free(self):
        self.freed = True


class FakeExtSemaphore:
    def __init__(self, sem):
        self.sem, self.closed = sem, False

    def close(self):
        self.closed = True


class FakeJob:
    def __init__(self, world, fn, sem, wait_value, signal_value):
        self.world, self.fn, self.sem = world, fn, sem
        self.wait_value, self.signal_value = wait_value, signal_value
        self.done, self.error = False, None

    def run(self):
        self.world.log.append(("job", self.wait_value))
        try:
            if self.world.fail_next_job:
                self.world.fail_next_job = False
                raise Error("internal", "injected failure")
            self.fn()
        except Error as e:
            self.error = e
        self.done = True
        self.sem.raise_to(self.signal_value, "the job")  # whatever its outcome

    def wait(self, timeout=None):
        if not self.done and timeout != 0:
            self.world.drain()  # the host waits: the GPU catches up
        if not self.done:
            if timeout == 0:
                raise TimeoutError("running")
            raise AssertionError("a job waited for that can never run (its semaphore stays at %d, it waits for %d)"
                                 % (self.sem.value, self.wait_value))
        if self.error:
            raise self.error


class FakeClient:
    """A connection: devices() as given, device memory from FakeBuffers (refused where a device
    does not export, or past alloc_limit buffers), jobs on DeviceTensors run by the real client
    on the buffers' bytes, submit() queued until the semaphore reaches its wait value; host
    arrays go to the real client."""

    def __init__(self, world, real, devices, semaphores=True, alloc_limit=None):
        self.world, self.real, self._devices = world, real, devices
        self.semaphores_ok, self.alloc_limit = semaphores, alloc_limit
        self.buffers, self.sems, self.closed, self.is_remote, self.socket = [], [], False, False, None

    def devices(self):
        return [dict(d) for d in self._devices]

    def device_buffer(self, nbytes, device="auto"):
        d = next((d for d in self._devices if d["id"] == device), None)
        if d is None:
            raise Error("not_found", "no device %s" % device)
        if not d.get("exports", True):
            raise Error("invalid_argument", "%s cannot export memory (fake)" % device)
        if self.alloc_limit is not None and sum(not b.freed for b in self.buffers) >= self.alloc_limit:
            raise Error("resource_exhausted", "past --max-client-device-bytes (fake)")
        b = FakeBuffer(nbytes, device, cp.parse_uuid(d["uuid"]))
        self.buffers.append(b)
        return b

    def semaphore(self, device="auto", export=True):
        if not self.semaphores_ok:
            raise Error("invalid_argument", "%s has no VK_KHR_external_semaphore_fd (fake)" % device)
        s = FakeSemaphore(self.world, device)
        self.sems.append(s)
        return s

    def _view(self, t):
        a = t.buffer.mem[t.offset:t.offset + t.nbytes].view(NP[t.dtype]).reshape(t.shape)
        return a

    def _job(self, mode, x, out, layout, kw):
        self.world.log.append(("device job", kw.get("device"), x.buffer.device))
        self.world.job_devices.append(kw.get("device"))
        kw = dict(kw, device="auto")
        run = getattr(self.real, _METHODS[mode, len(x.shape)])
        a, o = self._view(x), self._view(out)
        run(a, out=o, layout=layout, dtype=x.dtype, **kw)

    def dropblock2d(self, x, *a, out=None, layout="NCHW", **kw):
        if isinstance(x, DeviceTensor):
            return self._job("forward", x, out or x, layout, kw)
        self.world.log.append(("host job", kw.get("device")))
        return self.real.dropblock2d(x, *a, out=out, layout=layout, **dict(kw, device="auto"))

    def backward(self, x, *a, out=None, layout="NCHW", **kw):
        if isinstance(x, DeviceTensor):
            return self._job("backward", x, out or x, layout, kw)
        self.world.log.append(("host job", kw.get("device")))
        return self.real.backward(x, *a, out=out, layout=layout, **dict(kw, device="auto"))

    def dropblock3d(self, x, *a, out=None, layout="NCDHW", **kw):
        if isinstance(x, DeviceTensor):
            return self._job("forward", x, out or x, layout, kw)
        self.world.log.append(("host job", kw.get("device")))
        return self.real.dropblock3d(x, *a, out=out, layout=layout, **dict(kw, device="auto"))

    def backward3d(self, x, *a, out=None, layout="NCDHW", **kw):
        if isinstance(x, DeviceTensor):
            return self._job("backward", x, out or x, layout, kw)
        self.world.log.append(("host job", kw.get("device")))
        return self.real.backward3d(x, *a, out=out, layout=layout, **dict(kw, device="auto"))

    def submit(self, x, out=None, layout="NCHW", mode="forward", wait=None, signal=None, **kw):
        sem, n = wait
        check(signal[0] is sem and signal[1] == n + 1, "the job signals n + 1 on the semaphore it waits on")
        job = FakeJob(self.world, lambda: self._job(mode, x, out or x, layout, kw), sem, n, signal[1])
        self.world.log.append(("submit", n))
        if sem.value >= n:
            self.world.violations.append("the semaphore was at %d before the stream signalled %d" % (sem.value, n))
            job.run()
        else:
            sem.waiting.append(job)
        self.world.jobs.append(job)
        return job


class World:
    """What the fakes share: a log of events in order, misuses seen, and (lazy) the GPU's queue:
    stream signals run only when the host waits (drain), as a busy GPU would."""

    def __init__(self, lazy=False):
        self.log, self.violations, self.jobs, self.job_devices = [], [], [], []
        self.fail_next_job, self.lazy, self.queue = False, lazy, []

    def drain(self):
        while self.queue:
            self.queue.pop(0)()


class _Hold:
    """What the fake torch wraps: like torch.as_tensor on a __cuda_array_interface__ object, the
    tensor keeps the object it wrapped (NumPy's base here)."""

    def __init__(self, lease):
        iface = lease.__cuda_array_interface__
        self.lease = lease
        self.__array_interface__ = {"shape": iface["shape"], "typestr": iface["typestr"], "data": iface["data"],
                                    "version": 3}


class FakeEnv:
    """torch.cuda and dropblock.cuda, faked on CPU tensors: GPU index -> UUID, streams as ints."""
    api = "FAKECUDA"

    def __init__(self, world, uuids=None, interop=True, import_fails=False, wrap_fails=False):
        self.world = world
        self.uuids = {0: U0} if uuids is None else uuids
        self.interop, self.import_fails, self.wrap_fails = interop, import_fails, wrap_fails
        self.index, self.stream = 0, 0
        self.host_allocs = 0

    def interop_missing(self):
        return None if self.interop else "no libcuda.so.1 (fake)"

    def device_index(self, x):
        return self.index

    def device_label(self, index):
        return "fake:%d" % index

    def device_uuid(self, index):
        return self.uuids[index]

    def import_buffer(self, buf, index):
        if self.import_fails:
            raise RuntimeError("cuImportExternalMemory failed with error 1 (fake)")
        return FakeMemory(buf)

    def import_semaphore(self, sem, index):
        return FakeExtSemaphore(sem)

    def close_memory(self, mem, index):
        self.world.log.append(("close_memory", index))
        mem.close()

    def close_semaphore(self, ext, index):
        ext.close()

    def current_stream(self, x):
        return self.stream

    def stream_key(self, stream):
        return stream

    def wait_stream(self, stream, other):
        self.world.log.append(("wait_stream", stream, other))

    def synchronize(self, stream):
        self.world.log.append(("synchronize", stream))

    def synchronize_device(self, index):
        self.world.log.append(("synchronize_device", index))

    def signal(self, ext, value, stream):
        self.world.log.append(("stream signal", value, stream))
        op = lambda: ext.sem.raise_to(value, "stream %s" % stream)  # noqa: E731
        if self.world.lazy:
            self.world.queue.append(op)
        else:
            op()

    def wait(self, ext, value, stream):
        self.world.log.append(("stream wait", value, stream))

        def op():
            if ext.sem.value < value:
                self.world.violations.append("stream %s would wait for %d forever (at %d)"
                                             % (stream, value, ext.sem.value))
        if self.world.lazy:
            self.world.queue.append(op)
        else:
            op()

    def wrap(self, lease, index):
        if self.wrap_fails:
            raise cp.Unavailable("torch copied the imported memory instead of wrapping it (fake)")
        return torch.from_numpy(np.asarray(_Hold(lease)))

    def record_event(self, x):
        self.world.log.append(("record_event",))
        return object()

    def event_synchronize(self, event):
        self.world.log.append(("event_synchronize",))

    def host_alloc(self, client, need):
        self.host_allocs += 1
        if client.is_remote:
            return cp.HostMemory(client.array((need,), np.uint8), True)
        return cp.HostMemory(np.zeros(need, np.uint8), True)

    def host_free(self, mem):
        pass


def vk(i, uuid, **extra):
    return dict({"id": "vulkan:%d" % i, "api": "vulkan", "uuid": uuid_text(uuid), "healthy": True}, **extra)


CPU = {"id": "cpu:0", "api": "cpu", "uuid": "", "healthy": True}


def setup(real, devices=None, uuids=None, semaphores=True, **envkw):
    world = World()
    env = FakeEnv(world, uuids, **envkw)
    client = FakeClient(world, real, [vk(0, U0), CPU] if devices is None else devices, semaphores)
    return world, env, client


KW = dict(rate=0.3, block_size=(3, 3), seed=7, stream=0, normalize="global", share="", compat="none", device="auto")


def reference(real, mode, x, layout="NCHW", **kw):
    """The CPU op's output for x (the same tensor on the CPU path, the local engine)."""
    k = dict(KW, **kw)
    fn = torch.ops.dropblock.dropblock2d if mode == "forward" else torch.ops.dropblock.dropblock2d_backward
    return fn(x, torch.tensor([k["rate"]], dtype=torch.float64), torch.tensor([k["seed"]]),
              torch.tensor([k["stream"]]), list(k["block_size"]), layout, k["normalize"], k["share"], k["compat"],
              dbt._target_of(real), "auto")


def same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride() and torch.equal(
        a.contiguous().view(torch.uint8) if a.dtype != torch.float32 else a.contiguous().view(torch.int32),
        b.contiguous().view(torch.uint8) if b.dtype != torch.float32 else b.contiguous().view(torch.int32))


def call(env, client, x, mode="forward", layout="NCHW", **kw):
    cl = dbt._channels_last(x, layout)
    kw = dict(KW, **kw)
    if x.dim() == 5:  # DropBlock3D: no compat
        kw.pop("compat")
    return cp.run(mode, x, kw, client, layout, cl, env)


# ---- cases ----------------------------------------------------------------------------------

def uuid_cases():
    section("UUIDs")
    check(cp.parse_uuid("00010203-0405-0607-0809-0a0b0c0d0e0f") == U0, "the daemon's 8-4-4-4-12 form")
    check(cp.parse_uuid("GPU-00010203-0405-0607-0809-0a0b0c0d0e0f") == U0, "nvidia-smi's GPU- form")
    check(cp.parse_uuid("000102030405060708090A0B0C0D0E0F") == U0, "bare hex, upper case")
    check(cp.parse_uuid("") is None and cp.parse_uuid("xyz") is None and cp.parse_uuid("00" * 15) is None,
          "no UUID: empty, not hex, too short")
    devs = [CPU, {"id": "opencl:0", "api": "opencl", "uuid": uuid_text(U0), "healthy": True},
            vk(1, U1), vk(0, U0), dict(vk(2, U0), healthy=False)]
    m = cp.matching_devices(U0, devs)
    check([d["id"] for d in m] == ["vulkan:0", "opencl:0"], "U0 matches vulkan:0 first, then opencl:0, not the "
          "unhealthy vulkan:2 (%s)" % [d["id"] for d in m])
    check([d["id"] for d in cp.matching_devices(U0, devs, "opencl:0")] == ["opencl:0"], "a requested id only")
    check(cp.matching_devices(U0, devs, "vulkan:1") == [], "a requested device of another GPU: none")
    check(cp.matching_devices(bytes(16), devs) == [], "an unknown UUID: none")
    e = [dict(vk(0, U0), export=False), dict(vk(3, U0), export=True)]
    check([d["id"] for d in cp.matching_devices(U0, e)] == ["vulkan:3", "vulkan:0"],
          "a device whose list says export true comes first")


def pool_cases():
    section("the block pool")
    made, released, before = [], [], []
    fail = {"n": 0}

    def alloc(need):
        if fail["n"]:
            fail["n"] -= 1
            raise cp.Unavailable("refused (fake)")
        made.append(need)
        return "res%d" % len(made)

    g = 1 << 20
    p = cp.BlockPool(alloc, released.append, 4 * g, g, lambda: before.append(len(released)))
    a = p.take(1)
    check(a.size == g and made == [g] and p.in_use == 1, "a take is rounded up to the grain and allocated")
    p.give(a)
    b = p.take(g)
    check(b is a and len(made) == 1, "a given-back block serves the next take of its size")
    c = p.take(3 * g - 5)
    check(c is not a and c.size == 3 * g and len(made) == 2, "a larger take allocates a new block (growth)")
    p.give(b)
    p.give(c)
    d = p.take(2 * g)
    check(d is c, "the smallest free block of at least the size and at most twice it (3 MiB for 2 MiB)")
    e = p.take(g)
    check(e is a, "the 1 MiB block for 1 MiB")
    f = p.take(8 * g)
    check(f.size == 8 * g and len(made) == 3, "no free block up to twice the size: a new one")
    h1 = p.take(g)
    check(h1 is not e and len(made) == 4 and p.in_use == 4, "never a block still in use")
    p.give(d)
    p.give(e)
    check(released == [] and p.free_bytes == 4 * g, "free blocks up to the kept bytes (4 MiB) stay")
    p.give(h1)
    check(released == ["res2"] and before == [0] and p.free_bytes == 2 * g,
          "past the kept bytes the oldest free block is released, after before_release (%r, %r)" % (released, before))
    p.give(f)
    check(released == ["res2", "res1", "res4", "res3"] and p.free == [],
          "an 8 MiB block given back: released, with the older ones, oldest first (%r)" % released)
    k = p.take(g)
    p.give(k)
    fail["n"] = 1
    h = p.take(5 * g)
    check(h.size == 5 * g and k.resource in released and p.free == [],
          "an allocation refused while blocks are free: they are released and it is tried again")
    p.close()
    p.give(h)
    check(h.resource in released and p.free == [] and p.in_use == 0, "after close a block given back is released")
    p3 = cp.BlockPool(alloc, released.append, 64 * g, g)
    big = p3.take(8 * g)
    p3.give(big)
    small = p3.take(g)
    check(small is not big and small.size == g, "a block over twice the size is not used for a small take")
    fail["n"] = 1
    p2 = cp.BlockPool(alloc, released.append, g, g)
    try:
        p2.take(1)
        check(False, "a refused allocation with nothing free raises Unavailable")
    except cp.Unavailable:
        check(True, "")


def path_cases(real):
    section("the choice of path")
    x = torch.rand(2, 3, 8, 8) + 0.5
    want = reference(real, "forward", x)

    # semaphores: the device path, ordered on the GPU
    world, env, client = setup(real)
    y = call(env, client, x)
    r = cp.route_for(client, 0, "auto", env)
    check(r.path == "device" and r.device_id == "vulkan:0" and r.ordering == "semaphore",
          "a daemon device with the GPU's UUID that exports memory and semaphores: path device, ordering semaphore "
          "(%r)" % r.describe())
    check(same(y, want), "the device path gives the CPU op's bits")
    order = [e for e in world.log if e[0] in ("submit", "stream signal", "stream wait", "job", "synchronize")]
    check(order == [("submit", 1), ("stream signal", 1, 0), ("job", 1), ("stream wait", 2, 0)],
          "submitted waiting for 1, the stream signals 1 after the copy, the job runs, the stream waits for 2 "
          "(%r)" % order)
    check(not any(e[0] == "synchronize" for e in world.log), "the host never synchronizes the stream")
    world.log.clear()
    call(env, client, x)
    order = [e for e in world.log if e[0] in ("submit", "stream signal", "stream wait")]
    check(order == [("submit", 3), ("stream signal", 3, 0), ("stream wait", 4, 0)], "the next call: 3 and 4 (%r)"
          % order)
    env.stream = 5
    world.log.clear()
    call(env, client, x)
    order = [e for e in world.log if e[0] in ("submit", "stream signal", "stream wait")]
    check(order == [("submit", 1), ("stream signal", 1, 5), ("stream wait", 2, 5)] and len(client.sems) == 2,
          "another stream has a semaphore of its own, from 1 (%r)" % order)
    for s in range(6, 6 + cp.SEMAPHORES_PER_ROUTE):
        env.stream = s
        world.log.clear()
        call(env, client, x)
    check(len(client.sems) == cp.SEMAPHORES_PER_ROUTE and ("synchronize", env.stream) in world.log
          and r.ordering == "synchronous" and "streams" in (r.sync_reason or ""),
          "streams past %d run host-synchronous (%r)" % (cp.SEMAPHORES_PER_ROUTE, r.sync_reason))
    check(world.violations == [], "no semaphore misuse: %r" % world.violations)
    check(set(world.job_devices) == {"vulkan:0"}, "every job names the route's device")
    cp._warned.clear()

    # no exported semaphores: host-synchronous
    world, env, client = setup(real, semaphores=False)
    y = call(env, client, x)
    r = cp.route_for(client, 0, "auto", env)
    i_sync = world.log.index(("synchronize", 0)) if ("synchronize", 0) in world.log else 99
    i_job = next((i for i, e in enumerate(world.log) if e[0] == "device job"), -1)
    check(r.path == "device" and r.ordering == "synchronous" and "semaphore" in r.sync_reason,
          "a device that exports no semaphore: ordering synchronous (%r)" % r.describe())
    check(0 <= i_sync < i_job, "the stream is synchronized before the job (%r)" % world.log)
    check(same(y, want), "host-synchronous: the CPU op's bits")

    # the fallbacks, each with its reason; one warning for the process
    cp._warned.clear()
    cases = [
        ("no driver", dict(interop=False), None, "no libcuda.so.1"),
        ("no daemon device with the GPU's UUID", dict(uuids={0: U1}), [vk(0, U0), CPU],
         "no device of the daemon has the UUID"),
        ("the requested device is another GPU's", dict(), "vulkan:1", "among those named"),
        ("the device does not export", dict(), [dict(vk(0, U0), exports=False), CPU], "cannot give memory"),
        ("the device list says no export", dict(), [dict(vk(0, U0), export=False), CPU], "does not export memory"),
        ("the import fails", dict(import_fails=True), None, "could not import"),
        ("torch does not wrap the memory", dict(wrap_fails=True), None, "instead of wrapping"),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, envkw, extra, why in cases:
            devices = extra if isinstance(extra, list) else [vk(0, U0), vk(1, U1), CPU]
            world, env, client = setup(real, devices=devices, **envkw)
            kw = {"device": extra} if isinstance(extra, str) else {}
            y = call(env, client, x, **kw)
            r = cp.route_for(client, 0, kw.get("device", "auto"), env)
            check(r.path == "host" and why in (r.reason or ""), "%s: the fallback, saying so (%r)" % (name, r.reason))
            check(same(y, want), "%s: the fallback gives the CPU op's bits" % name)
            check(any(e[0] == "host job" for e in world.log) and not any(e[0] == "device job" for e in world.log),
                  "%s: the job runs on host memory" % name)
    fw = [w for w in caught if issubclass(w.category, dbt.FallbackWarning)]
    check(len(fw) == 1, "one FallbackWarning for the process, not one per call or reason (%d)" % len(fw))
    if fw:
        msg = str(fw[0].message)
        check("no libcuda.so.1" in msg and "two PCIe crossings" in msg and "1536 bytes" in msg
              and "fake:0" in msg, "the warning says why, where, and what it costs: %s" % msg)

    # a later allocation refused (the daemon's caps): that call falls back, the route stays
    world, env, client = setup(real)
    client.alloc_limit = 1
    keep = call(env, client, x)
    r = cp.route_for(client, 0, "auto", env)
    y2 = call(env, client, x)
    check(r.path == "device" and same(y2, want) and any(e[0] == "host job" for e in world.log),
          "an allocation past the daemon's caps: that call goes through host memory, the CPU op's bits")
    del keep, y2
    gc.collect()
    world.log.clear()
    call(env, client, x)
    check(not any(e[0] == "host job" for e in world.log), "once memory is free again the device path serves")

    # a job that fails after it was submitted: the next call raises it, and so does synchronize
    world, env, client = setup(real)
    call(env, client, x)
    world.fail_next_job = True
    call(env, client, x)
    try:
        call(env, client, x)
        check(False, "a submitted job's failure is raised by the next call")
    except Error as e:
        check("earlier" in str(e) and "injected failure" in str(e), "the next call raises the failed job: %s" % e)
    world.fail_next_job = True
    call(env, client, x)
    try:
        cp.synchronize()
        check(False, "synchronize raises a failed job")
    except Error as e:
        check("injected failure" in str(e), "synchronize() raises it too")
    cp.synchronize()

    # a GPU behind the host: jobs wait in the daemon for their stream's signal; at most
    # MAX_PENDING run ahead, then the host waits for the oldest
    world, env, client = setup(real)
    world.lazy = True
    saved, cp.MAX_PENDING = cp.MAX_PENDING, 3
    try:
        ys, most = [], 0
        for k in range(7):
            ys.append(call(env, client, x, stream=k))
            most = max(most, len(cp.route_for(client, 0, "auto", env).pending))
        check(most == 3, "at most MAX_PENDING (3) submitted jobs run ahead of the host (%d)" % most)
        check(not world.jobs[-1].done, "the last call returned before its job ran (the host did not wait)")
        world.drain()
        cp.synchronize()
        check(all(same(y, reference(real, "forward", x, stream=k)) for k, y in enumerate(ys))
              and world.violations == [], "once the GPU catches up every y has its bits (%r)" % world.violations)
    finally:
        cp.MAX_PENDING = saved


def lifetime_cases(real):
    section("pool blocks and tensor lifetimes")
    world, env, client = setup(real)
    x = torch.rand(2, 3, 8, 8) + 0.5
    y = call(env, client, x)
    r = cp.route_for(client, 0, "auto", env)
    p = r.pool
    check(p.in_use == 1 and p.allocated == 1, "the first call's y holds the probe's block (%d in use, %d made)"
          % (p.in_use, p.allocated))
    buf = y.untyped_storage().data_ptr()
    v = y[1]
    del y
    gc.collect()
    check(p.in_use == 1, "a view of y keeps its block")
    check(r.contains(v.data_ptr()) and not r.contains(x.data_ptr()), "Route.contains: y's memory, not x's")
    del v
    gc.collect()
    check(p.in_use == 0 and len(p.free) == 1, "when y and its views are gone the block is free again")
    y = call(env, client, x)
    check(y.untyped_storage().data_ptr() == buf and p.allocated == 1, "the next call reuses it (no new buffer)")
    y2 = call(env, client, x)
    check(y2.data_ptr() != y.data_ptr() and p.allocated == 2 and p.in_use == 2, "a second live y: a second block")
    big = call(env, client, torch.rand(4, 64, 64, 64))
    check(p.allocated == 3 and big.untyped_storage().nbytes() == 4 * 64 * 64 * 64 * 4,
          "a larger tensor: a larger block, y's storage exactly its bytes")
    del y, y2, big
    gc.collect()
    check(p.in_use == 0 and len(p.free) == 3, "all three back")
    env.stream = 9
    world.log.clear()
    y = call(env, client, x)
    check(("wait_stream", 9, 0) in world.log, "a block last used on stream 0, taken on stream 9: 9 waits for 0")
    del y
    gc.collect()
    world.log.clear()
    y = call(env, client, x)
    check(not any(e[0] == "wait_stream" for e in world.log), "taken again on its own stream: no wait")
    del y
    # two GPUs: their own routes, daemon devices and pools
    world = World()
    env = FakeEnv(world, {0: U0, 1: U1})
    client = FakeClient(world, real, [vk(0, U0), vk(1, U1), CPU])
    y0 = call(env, client, x)
    env.index = 1
    y1 = call(env, client, x)
    r0, r1 = cp.route_for(client, 0, "auto", env), cp.route_for(client, 1, "auto", env)
    check(r0.device_id == "vulkan:0" and r1.device_id == "vulkan:1" and r0.pool is not r1.pool,
          "GPU 0 -> vulkan:0, GPU 1 -> vulkan:1, a pool each")
    check({b.device for b in client.buffers} == {"vulkan:0", "vulkan:1"} and world.job_devices == ["vulkan:0",
                                                                                                   "vulkan:1"],
          "each GPU's memory and jobs on its own device (%r)" % world.job_devices)
    del y0, y1
    gc.collect()
    check(r0.pool.in_use == 0 and r1.pool.in_use == 0 and len(r0.pool.free) == 1 and len(r1.pool.free) == 1,
          "each block goes back to its own device's pool")
    # close_all: every block released (after a device synchronize), semaphores freed
    world.log.clear()
    keep = call(env, client, x)
    cp.close_all()
    live = [b for b in client.buffers if not b.freed]
    closed = sum(1 for e in world.log if e[0] == "close_memory")
    check(len(live) == 1 and ("synchronize_device", 0) in world.log and all(s.freed for s in client.sems)
          and closed == len(client.buffers) - 1,
          "close_all releases the free blocks and the semaphores; a live y keeps its block (%d left)" % len(live))
    del keep
    gc.collect()
    check(all(b.freed for b in client.buffers), "and that block is released when y dies")


def dropped_client_cases(real):
    section("a client dropped by its owner")
    world, env, client = setup(real, semaphores=False)
    y = call(env, client, torch.rand(2, 3, 8, 8))
    del y
    ref = weakref.ref(client)
    del client, world, env
    gc.collect()
    check(ref() is None, "its CUDA route and pools do not keep it alive (routes are per client, weakly)")


def bits_cases(real):
    section("bits on every path")
    gen = torch.Generator().manual_seed(3)
    for sems, interop, label in ((True, True, "semaphores"), (False, True, "host-synchronous"),
                                 (True, False, "fallback")):
        world, env, client = setup(real, semaphores=sems, interop=interop)
        bad = []
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            for layout, make in (("NCHW", lambda: torch.rand(2, 5, 9, 11, generator=gen)),
                                 ("NHWC", lambda: torch.rand(2, 9, 11, 5, generator=gen)),
                                 ("NCHW", lambda: torch.rand(2, 5, 9, 11, generator=gen).to(
                                     memory_format=torch.channels_last))):
                x = (make() + 0.25).to(dt)
                for mode in ("forward", "backward"):
                    for kw in ({}, {"normalize": "sample", "stream": 5}, {"share": "channels", "rate": 0.5}):
                        y = call(env, client, x, mode=mode, layout=layout, **kw)
                        want = reference(real, mode, x, layout, **kw)
                        if not same(y, want):
                            bad.append((str(dt), layout, x.is_contiguous(), mode, kw))
        check(bad == [] and world.violations == [], "%s: 54 cases bit-equal to the CPU op, strides included %r %r"
              % (label, bad[:3], world.violations))
        # DropBlock3D: 5-D tensors, NCDHW, NDHWC and channels_last_3d, on the same route
        bad = []
        for dt in (torch.float32, torch.bfloat16):
            for layout, make in (("NCDHW", lambda: torch.rand(2, 3, 4, 6, 5, generator=gen)),
                                 ("NDHWC", lambda: torch.rand(2, 4, 6, 5, 3, generator=gen)),
                                 ("NCDHW", lambda: torch.rand(2, 3, 4, 6, 5, generator=gen).to(
                                     memory_format=torch.channels_last_3d))):
                x = (make() + 0.25).to(dt)
                for mode in ("forward", "backward"):
                    kw = {"block_size": (2, 3, 3), "stream": 3}
                    try:
                        y = call(env, client, x, mode=mode, layout=layout, **kw)
                        ok = same(y, reference(real, mode, x, layout, **kw))
                    except Error as e:
                        ok = False
                        print("  ", e)
                    if not ok:
                        bad.append((str(dt), layout, x.is_contiguous(), mode))
        check(bad == [] and world.violations == [], "%s: 12 DropBlock3D cases (NCDHW, NDHWC, channels_last_3d) "
              "bit-equal to the CPU op, strides included %r %r" % (label, bad[:3], world.violations))
    # through torch.py's CUDA kernel: the arguments as the op passes them
    world, env, client = setup(real)
    x = torch.rand(3, 4, 10, 10, generator=gen) + 0.5
    y = dbt._run_cuda("forward", x, torch.tensor([0.25], dtype=torch.float64), torch.tensor([-3]),
                      torch.tensor([2]), [3, 3], "NCHW", "global", "", "none", dbt._target_of(client), "auto", env=env)
    want = dbt.dropblock2d(x, 0.25, 3, seed=(1 << 64) - 3, stream=2, client=real)
    check(same(y, want) and world.job_devices == ["vulkan:0"], "dropblock.torch._run_cuda: the op's arguments "
          "(a u64 seed as int64 bits) reach the device job")
    y = dbt._run_cuda("forward", x.double(), torch.tensor([0.25], dtype=torch.float64), torch.tensor([5]),
                      torch.tensor([2]), [3, 3], "NCHW", "global", "", "none", dbt._target_of(client), "auto", env=env)
    want = dbt.dropblock2d(x.double(), 0.25, 3, seed=5, stream=2, client=real)
    check(torch.equal(y, want) and y.dtype == torch.float64, "float64: the mask from the engine, the product where "
          "x is (here the CPU), as on the CPU")


def registration_cases():
    section("registration")
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    check(has("dropblock::dropblock2d", "CUDA") and has("dropblock::dropblock2d_backward", "CUDA"),
          "the ops have a CUDA kernel (ROCm tensors dispatch to it too)")
    if hasattr(torch.Tag, "cudagraph_unsafe"):
        check(torch.Tag.cudagraph_unsafe in torch.ops.dropblock.dropblock2d.default.tags,
              "the ops are tagged cudagraph_unsafe (CUDA graphs must not capture their daemon calls)")
    check(issubclass(dbt.FallbackWarning, UserWarning), "FallbackWarning is a UserWarning")
    want = {n for n in vars(FakeEnv) if not n.startswith("_")} - {"api"}
    missing = sorted(n for n in want if not callable(getattr(cp.TorchEnv, n, None)))
    check(missing == [], "the real environment (TorchEnv) has every method the fake stands for (%r)" % missing)
    if not torch.cuda.is_available():
        why = cp.TorchEnv().interop_missing() or ""
        check("cannot import device memory" in why, "without CUDA here the real environment says interop is "
              "missing: %s" % why)


def daemon_cases(exe):
    section("through dropblockd (lavapipe's Vulkan device as the GPU)")
    d = Daemon(exe, "--devices", "vulkan,cpu")
    try:
        client = dropblock.Client(d.path)
        vkd = [v for v in client.devices() if v["api"] == "vulkan" and cp.parse_uuid(v["uuid"])]
        if not vkd:
            print("note: the daemon has no Vulkan device with a UUID here: the real region.alloc cases were not run")
            return
        uuid = cp.parse_uuid(vkd[0]["uuid"])
        world = World()
        env = FakeEnv(world, {0: uuid})
        x = torch.rand(2, 3, 8, 8) + 0.5
        r = cp.route_for(client, 0, "auto", env)
        if r.path == "host" and "cannot give memory" in (r.reason or ""):
            print("note: %s exports no memory here (%s): the real region.alloc cases were not run"
                  % (vkd[0]["id"], r.reason))
            client.close()
            return
        check(r.path == "device" and r.device_id == vkd[0]["id"] and r.pool.allocated == 1,
              "the GPU's UUID is the daemon's %s: path device, its memory allocated (region.alloc) (%r)"
              % (vkd[0]["id"], r.describe()))
        st = client.status()
        check(st.get("device_bytes", 0) >= cp.GRAIN, "the daemon holds the pool's first block (%s bytes)"
              % st.get("device_bytes"))
        y = cp.run("forward", x, dict(KW), client, "NCHW", False, env)
        check(r.ordering == "synchronous" and "semaphore" in (r.sync_reason or ""),
              "lavapipe exports no semaphore: host-synchronous (%r)" % r.sync_reason)
        check(y.shape == x.shape and client.last_result is not None and client.last_result.device == vkd[0]["id"],
              "the job ran on the device memory, on %s" % (client.last_result and client.last_result.device))
        # the fallback through the connection's shared memory
        cp._warned.clear()
        env2 = FakeEnv(World(), {0: bytes(16)})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = cp.run("forward", x, dict(KW), client, "NCHW", False, env2)
        r2 = cp.route_for(client, 0, "auto", env2)
        want = dbt.dropblock2d(x, KW["rate"], 3, seed=KW["seed"], stream=0, client=client)
        check(r2.path == "host" and vkd[0]["id"] in r2.reason and same(y, want) and len(caught) == 1,
              "no device with the GPU's UUID: host memory, the reason lists the daemon's devices, the CPU op's bits, "
              "one warning (%r)" % r2.reason)
        del y
        cp.close_all()
        gc.collect()
        st = client.status()
        check(st.get("device_bytes", 1) == 0, "close_all gives the device memory back (%s bytes)"
              % st.get("device_bytes"))
        client.close()
    finally:
        rc = d.stop(remove=True)
        check(rc == 0, "dropblockd exits 0 (%s)" % rc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", help="dropblockd, for the real region.alloc cases")
    a = ap.parse_args()
    registration_cases()
    uuid_cases()
    pool_cases()
    with dropblock.Client(local=True, backends="cpu") as real:
        path_cases(real)
        lifetime_cases(real)
        dropped_client_cases(real)
        bits_cases(real)
        cp.close_all()
    if a.daemon:
        daemon_cases(a.daemon)
    else:
        print("note: no --daemon: the real region.alloc cases were not run")
    print("%d passed, %d failed" % (T.passed, T.failed), flush=True)
    return 1 if T.failed else 0


if __name__ == "__main__":
    sys.exit(main())
