"""dropblock._cuda_pool: CUDA (and ROCm) tensors through the daemon's device memory, for
dropblock.torch (issue 14 item 2).

A route joins one connection (Client) to one torch GPU: the daemon's device whose UUID is the
GPU's, found once per route, and either

  "device"  a pool of that device's memory (Client.device_buffer, region.alloc) imported into
            CUDA or HIP once per block (dropblock.cuda.import_buffer); a call takes a block, copies
            x into it on the tensor's current stream (device to device), runs the job in place
            there and returns y as a torch tensor over the block: torch keeps the object it
            wrapped (__cuda_array_interface__) until the tensor's storage dies, and that object's
            death gives the block back. Ordering, per stream: an exported timeline semaphore
            (the stream signals n after the copy, the job waits for n and signals n + 1, the
            stream waits for n + 1: the host never blocks) where the device can export one,
            else host-synchronous (the stream is synchronized, then the job runs);
  "host"    the fallback where no daemon device has the GPU's UUID, no driver can import the
            memory, or the daemon cannot export it: x copied into pinned shared host memory, the
            CPU path in place there, y copied back to the GPU. The first fallback of the process
            warns once (FallbackWarning), saying why and what it costs.

Everything that touches CUDA goes through an environment object (TorchEnv here), so that the
routes, the pools and the choice of path run under tests with a fake one on CPU tensors
(tests/test_torch_cuda.py).
"""
import os
import threading
import warnings
import weakref

import torch

from ._core import _METHODS, Error, _numpy

__all__ = ["FallbackWarning", "Route", "BlockPool", "TorchEnv", "parse_uuid", "matching_devices", "route_for",
           "run", "synchronize", "close_all", "default_env"]

GRAIN = 2 << 20  # device blocks are whole multiples of this (2 MiB)
HOST_GRAIN = 4096
# free memory each pool keeps for later calls; blocks past it are released, oldest first
DEVICE_POOL_BYTES = int(os.environ.get("DROPBLOCK_DEVICE_POOL_BYTES", 1 << 30))
HOST_POOL_BYTES = int(os.environ.get("DROPBLOCK_PINNED_POOL_BYTES", 256 << 20))
# exported semaphores a route makes (one per CUDA stream that calls it); streams past these run
# host-synchronous. A connection has --max-semaphores (16 by default) in all
SEMAPHORES_PER_ROUTE = 4
# submitted jobs a route lets run ahead of the host before it waits for the oldest (a connection
# may have max_client_jobs, 64 by default, in flight)
MAX_PENDING = 32

_DT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


class FallbackWarning(UserWarning):
    """CUDA tensors go through host memory (two PCIe crossings per call): see the message."""


class Unavailable(Exception):
    """The device path cannot serve this call; the message says why (the call falls back)."""


# ---- UUIDs --------------------------------------------------------------------------------

def parse_uuid(text):
    """The 16 bytes of a UUID written as hex ("6d657361-3232-...", "GPU-...", with or without
    dashes); None for anything else (an empty uuid: the device has none)."""
    s = str(text or "").strip().lower()
    if s.startswith("gpu-"):
        s = s[4:]
    s = s.replace("-", "")
    if len(s) != 32:
        return None
    try:
        return bytes.fromhex(s)
    except ValueError:
        return None


def uuid_text(b):
    h = bytes(b).hex()
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def matching_devices(uuid, devices, requested="auto"):
    """The daemon's devices (Client.devices() dicts) that are the GPU with this UUID and healthy:
    those that export first (an "export" key, where the list has one), then Vulkan ones (the
    API that exports), in the daemon's order. requested: a device id ("auto": any)."""
    out = []
    for d in devices:
        if requested not in (None, "", "auto") and d.get("id") != requested:
            continue
        if d.get("healthy", True) and uuid is not None and parse_uuid(d.get("uuid")) == bytes(uuid):
            out.append(d)
    return sorted(out, key=lambda d: (not d.get("export", False), d.get("api") != "vulkan"))


# ---- pools --------------------------------------------------------------------------------

class Block:
    """A stretch of pooled memory: resource is what the pool's alloc made (device: (DeviceBuffer,
    ExternalMemory); host: a HostMemory), stream the stream of its last use (device blocks),
    event the copy that still reads it (host blocks)."""

    __slots__ = ("size", "resource", "stream", "event")

    def __init__(self, size, resource):
        self.size, self.resource, self.stream, self.event = size, resource, None, None


class BlockPool:
    """Blocks of alloc(size) memory, recycled: take(n) gives the smallest free block of at least
    n rounded up to the grain (and at most twice that), the most recently given back among
    equals, or a new one; give(block) returns it. Free blocks past keep_bytes are released
    (release(resource)), oldest first, after before_release() (a device synchronize: the GPU
    may still read a block whose tensor died). An alloc that fails (Unavailable) while blocks
    are free is tried again once they are released. Thread-safe; give may run in a finalizer."""

    def __init__(self, alloc, release, keep_bytes, grain=GRAIN, before_release=None):
        self._alloc, self._release, self._before = alloc, release, before_release
        self.keep_bytes, self.grain = keep_bytes, grain
        self.free = []  # the most recently given back last
        self.free_bytes = 0
        self.in_use = self.allocated = self.released = 0
        self.closed = False
        self.lock = threading.RLock()  # a finalizer's give may run inside take on this thread

    def take(self, nbytes):
        need = max(1, -(-int(nbytes) // self.grain)) * self.grain
        with self.lock:
            best = None
            for i, b in enumerate(self.free):
                if need <= b.size <= 2 * need and (best is None or b.size <= self.free[best].size):
                    best = i
            if best is not None:
                b = self.free.pop(best)
                self.free_bytes -= b.size
                self.in_use += 1
                return b
        try:
            res = self._alloc(need)
        except Unavailable:
            if not self.free:
                raise
            self.release_free()
            res = self._alloc(need)
        with self.lock:
            self.allocated += 1
            self.in_use += 1
        return Block(need, res)

    def give(self, block):
        drop = []
        with self.lock:
            self.in_use -= 1
            if self.closed:
                drop.append(block)
            else:
                self.free.append(block)
                self.free_bytes += block.size
                while self.free_bytes > self.keep_bytes and self.free:
                    b = self.free.pop(0)
                    self.free_bytes -= b.size
                    drop.append(b)
        self._drop(drop)

    def _drop(self, blocks):
        if not blocks:
            return
        if self._before is not None:
            self._before()
        for b in blocks:
            try:
                self._release(b.resource)
            finally:
                with self.lock:
                    self.released += 1

    def release_free(self):
        with self.lock:
            drop, self.free, self.free_bytes = self.free, [], 0
        self._drop(drop)

    def close(self):
        """Releases the free blocks; blocks in use are released when given back."""
        with self.lock:
            self.closed = True
        self.release_free()


class _Lease:
    """What a pool tensor wraps: torch.as_tensor holds this object (its
    __cuda_array_interface__'s owner) until the tensor's storage is freed, and its death gives
    the block back (a weakref.finalize). It keeps the imported memory alive."""

    __slots__ = ("_iface", "memory", "__weakref__")

    def __init__(self, ptr, nbytes, memory):
        self.memory = memory
        self._iface = {"shape": (int(nbytes),), "typestr": "|u1", "data": (int(ptr), False), "version": 3,
                       "strides": None, "stream": None}  # None: the caller orders (it copies on the stream)

    @property
    def __cuda_array_interface__(self):
        return self._iface

    @property
    def ptr(self):
        return self._iface["data"][0]


class _StreamSemaphore:
    __slots__ = ("sem", "ext", "value", "lock")

    def __init__(self, sem, ext):
        self.sem, self.ext, self.value, self.lock = sem, ext, 0, threading.Lock()


# ---- routes -------------------------------------------------------------------------------

class Route:
    """How CUDA tensors of torch device `index` reach `client`: path "device" (device_id, a pool
    of its memory, ordering "semaphore" or "synchronous" per stream) or "host" (reason). Made
    once per (client, index, requested device) by route_for."""

    def __init__(self, client, index, requested, env):
        # weakly: routes are kept per client in a WeakKeyDictionary, which a strong reference
        # from its value would never let go
        self._client = weakref.ref(client)
        self.index, self.requested, self.env = index, requested, env
        self.path, self.reason, self.device_id, self.pool = "host", None, None, None
        self.uuid = None
        self.semaphores = {}  # stream key -> _StreamSemaphore
        self.semaphores_ok = True
        self.sync_reason = None  # why calls are host-synchronous, where they are
        self.pending = []  # submitted jobs not yet waited for
        self.live = {}  # imported pointer -> bytes, of every block not released
        self.lock = threading.RLock()
        self._resolve()

    @property
    def client(self):
        c = self._client()
        if c is None:
            raise Error("unavailable", "the route's dropblock.Client is gone")
        return c

    def _resolve(self):
        env = self.env
        missing = env.interop_missing()
        if missing:
            self.reason = missing
            return
        try:
            self.uuid = env.device_uuid(self.index)
        except Exception as e:  # noqa: BLE001 - any failure is a reason to fall back
            self.reason = "torch gave no UUID for %s (%s)" % (env.device_label(self.index), e)
            return
        try:
            devices = self.client.devices()
        except Error as e:
            self.reason = "the daemon's device list failed (%s)" % e
            return
        cands = matching_devices(self.uuid, devices, self.requested)
        if not cands:
            listed = ", ".join("%s %s" % (d.get("id"), d.get("uuid") or "(no UUID)") for d in devices) or "none"
            self.reason = ("no device of the daemon has the UUID %s of %s%s (its devices: %s)"
                           % (uuid_text(self.uuid) if self.uuid else "?", env.device_label(self.index),
                              "" if self.requested in (None, "", "auto") else " among those named %r"
                              % self.requested, listed))
            return
        errors = ["%s has the GPU's UUID but does not export memory" % d["id"] for d in cands
                  if d.get("export") is False]
        for d in (d for d in cands if d.get("export") is not False):
            pool = BlockPool(lambda need, dev=d["id"]: self._alloc(dev, need), self._release, DEVICE_POOL_BYTES,
                             GRAIN, lambda: env.synchronize_device(self.index))
            try:
                blk = pool.take(GRAIN)  # the first block proves export and import; it stays free
            except Unavailable as e:
                errors.append(str(e))
                continue
            try:  # and that torch wraps the imported memory without a copy
                mem = blk.resource[1]
                t = env.wrap(_Lease(mem.ptr, 16, mem), self.index)
                del t
            except Exception as e:  # noqa: BLE001 - whatever torch raised
                pool.give(blk)
                pool.close()
                errors.append(str(e) if isinstance(e, Unavailable) else "torch cannot wrap the imported memory (%s)"
                              % e)
                continue
            pool.give(blk)
            self.path, self.device_id, self.pool = "device", d["id"], pool
            return
        self.reason = "; ".join(errors)

    def _alloc(self, device_id, need):
        try:
            buf = self.client.device_buffer(need, device_id)
        except Error as e:
            raise Unavailable("the daemon cannot give memory on %s that %s imports (%s)"
                              % (device_id, self.env.api, e)) from None
        if bytes(buf.device_uuid) != bytes(self.uuid):
            buf.free()
            raise Unavailable("%s's memory lies on the device with UUID %s, not %s's"
                              % (device_id, uuid_text(buf.device_uuid), self.env.device_label(self.index)))
        try:
            mem = self.env.import_buffer(buf, self.index)
        except Exception as e:  # noqa: BLE001 - the driver's refusal, whatever its form
            buf.free()
            raise Unavailable("%s could not import %s's memory (%s)" % (self.env.api, device_id, e)) from None
        with self.lock:
            self.live[mem.ptr] = need
        return (buf, mem)

    def _release(self, res):
        buf, mem = res
        with self.lock:
            self.live.pop(mem.ptr, None)
        try:
            self.env.close_memory(mem, self.index)
        finally:
            buf.free()

    def contains(self, ptr):
        """Whether the device pointer ptr lies in a block of this route's pool."""
        with self.lock:
            return any(base <= ptr < base + size for base, size in self.live.items())

    def semaphore_for(self, key):
        """The exported semaphore of the stream with this key, made on first use; None where
        calls on it are host-synchronous (sync_reason says why)."""
        with self.lock:
            s = self.semaphores.get(key)
            if s is not None or not self.semaphores_ok:
                return s
            if len(self.semaphores) >= SEMAPHORES_PER_ROUTE:
                self.sync_reason = "more than %d streams" % SEMAPHORES_PER_ROUTE
                return None
            try:
                sem = self.client.semaphore(self.device_id, export=True)
            except Error as e:
                self.semaphores_ok = False
                self.sync_reason = "%s exports no semaphore (%s)" % (self.device_id, e)
                return None
            try:
                ext = self.env.import_semaphore(sem, self.index)
            except Exception as e:  # noqa: BLE001
                sem.free()
                self.semaphores_ok = False
                self.sync_reason = "%s could not import %s's semaphore (%s)" % (self.env.api, self.device_id, e)
                return None
            s = self.semaphores[key] = _StreamSemaphore(sem, ext)
            return s

    @property
    def ordering(self):
        """"semaphore" while every stream so far has had its semaphore, "synchronous" once one
        has not (sync_reason says why), "untried" before the first call; None for path "host"."""
        if self.path != "device":
            return None
        if self.sync_reason is not None:
            return "synchronous"
        return "semaphore" if self.semaphores else "untried"

    def reap(self, wait=False):
        """Waits for (wait=True) or collects the submitted jobs that are over; raises the first
        failure among them (its y was wrong: the job's semaphore was raised all the same)."""
        with self.lock:
            jobs = list(self.pending)
        done, failure = [], None
        for j in jobs:
            try:
                j.wait(None if wait else 0)
            except TimeoutError:
                continue
            except Error as e:
                failure = failure or e
            done.append(j)
        with self.lock:
            self.pending = [j for j in self.pending if j not in done]
        if failure is not None:
            raise Error(failure.code, "an earlier DropBlock job on a CUDA tensor (%s) failed after it was submitted, "
                        "so that call's output is wrong: %s" % (self.device_id, failure.message), failure.rc)

    def throttle(self, limit):
        """Waits for the oldest submitted jobs while limit or more are not over."""
        self.reap()
        while True:
            with self.lock:
                if len(self.pending) < limit:
                    return
                job = self.pending.pop(0)
            try:
                job.wait()
            except Error as e:
                raise Error(e.code, "an earlier DropBlock job on a CUDA tensor (%s) failed after it was submitted, "
                            "so that call's output is wrong: %s" % (self.device_id, e.message), e.rc)

    def close(self):
        try:
            self.reap(wait=True)
        finally:
            with self.lock:
                sems, self.semaphores = list(self.semaphores.values()), {}
            if self.pool is not None:
                self.pool.close()
            if sems:
                self.env.synchronize_device(self.index)  # the streams' last waits
            for s in sems:
                try:
                    self.env.close_semaphore(s.ext, self.index)
                finally:
                    s.sem.free()

    def describe(self):
        """A dict for logs and benches: path, device, ordering, reason, pool counters."""
        d = {"path": self.path, "torch_device": self.env.device_label(self.index)}
        if self.path == "device":
            d.update(device=self.device_id, ordering=self.ordering, blocks_allocated=self.pool.allocated,
                     blocks_free=len(self.pool.free), blocks_in_use=self.pool.in_use)
            if self.sync_reason:
                d["sync_reason"] = self.sync_reason
        else:
            d["reason"] = self.reason
        return d


_lock = threading.RLock()
_routes = weakref.WeakKeyDictionary()  # Client -> {(index, requested): Route}
_host_pools = weakref.WeakKeyDictionary()  # Client -> BlockPool of pinned host memory
_warned = []  # the one fallback warning of the process (its text, once given)


def _drop_closed():  # under _lock
    for c in [c for c in _routes if c.closed]:
        for r in _routes.pop(c).values():
            try:
                r.close()
            except Error:
                pass
    for c in [c for c in _host_pools if c.closed]:
        _host_pools.pop(c).close()


def route_for(client, index, requested="auto", env=None):
    """The Route of (client, torch device index, requested daemon device), made on first use."""
    env = env or default_env()
    key = (index, requested or "auto", id(env))
    with _lock:
        _drop_closed()
        routes = _routes.setdefault(client, {})
        r = routes.get(key)
        if r is None:
            r = routes[key] = Route(client, index, requested or "auto", env)
        return r


def host_pool_for(client, env):
    with _lock:
        p = _host_pools.get(client)
        if p is None:
            cref = weakref.ref(client)  # the pool must not keep its key alive

            def alloc(need):
                c = cref()
                if c is None:
                    raise Error("unavailable", "the pool's dropblock.Client is gone")
                return env.host_alloc(c, need)
            p = _host_pools[client] = BlockPool(alloc, env.host_free, HOST_POOL_BYTES, HOST_GRAIN)
        return p


def synchronize():
    """Waits for every submitted job of the process's routes; raises the first failure."""
    with _lock:
        routes = [r for rs in _routes.values() for r in rs.values()]
    for r in routes:
        r.reap(wait=True)


def close_all():
    """Waits for the submitted jobs and gives back every route's device memory, semaphores and
    pinned host memory (tensors still alive give theirs back when they die)."""
    with _lock:
        routes = [r for rs in _routes.values() for r in rs.values()]
        pools = list(_host_pools.values())
        _routes.clear()
        _host_pools.clear()
    failure = None
    for r in routes:
        try:
            r.close()
        except Error as e:
            failure = failure or e
    for p in pools:
        p.close()
    if failure is not None:
        raise failure


def _warn_once(route, x, reason, env):
    with _lock:
        if _warned:
            return
        nbytes = x.numel() * x.element_size()
        text = ("dropblock.torch: CUDA tensors on %s go through pinned host memory, not the GPU, because %s. "
                "Each call copies x to the host and y back (two PCIe crossings, %d bytes each way for this %s "
                "%s tensor) and waits for the stream; to keep them on the GPU, run dropblockd with a Vulkan device "
                "on this GPU that exports memory (devices' \"export\", docs/protocol.md region.alloc). "
                "This warning is given once per process."
                % (env.device_label(route.index), reason, nbytes, "x".join(str(s) for s in x.shape),
                   str(x.dtype).replace("torch.", "")))
        _warned.append(text)
    warnings.warn(text, FallbackWarning, stacklevel=3)


# ---- the calls ----------------------------------------------------------------------------

def _phys(x, cl):
    """x's physical shape: N, ..., C for a channels-last x (4-D or 5-D)."""
    s = tuple(x.shape)
    return (s[0],) + s[2:] + (s[1],) if cl else s


def _nhwc(t, cl):
    return t.permute(0, *range(2, t.dim()), 1) if cl else t


def _from_nhwc(t, cl):
    return t.permute(0, t.dim() - 1, *range(1, t.dim() - 1)) if cl else t


def _cl_layout(x, cl, layout):
    """The request's layout: the channels-last one for x's rank where x is channels_last."""
    return ("NHWC" if x.dim() == 4 else "NDHWC") if cl else layout


def _method(client, mode, x):
    """dropblock2d, backward, dropblock3d or backward3d by mode and x's rank."""
    return getattr(client, _METHODS[mode, x.dim()])


def run(mode, x, kw, client, layout, cl, env=None):
    """DropBlock2D (mode "forward") or its backward of the GPU tensor x (float32, float16,
    bfloat16; checked by the caller); DropBlock3D for a 5-D x. kw: rate, block_size, seed, stream,
    normalize, share, compat (4-D only), device (the requested daemon device) as
    Client.dropblock2d/3d take them; layout the request's; cl: x is channels_last under an NCHW
    request, or channels_last_3d under NCDHW (it runs as NHWC/NDHWC, y in x's format)."""
    env = env or default_env()
    route = route_for(client, env.device_index(x), kw.get("device", "auto"), env)
    route.reap()
    if route.path == "device":
        try:
            return _run_device(route, mode, x, kw, layout, cl, env)
        except Unavailable as e:  # the pool could not grow (the daemon's caps): this call only
            reason = str(e)
    else:
        reason = route.reason
    _warn_once(route, x, reason, env)
    return _run_host(route, mode, x, kw, layout, cl, env)


def _run_device(route, mode, x, kw, layout, cl, env):
    client = route.client
    shape = _phys(x, cl)
    nbytes = x.numel() * x.element_size()
    stream = env.current_stream(x)
    block = route.pool.take(nbytes)
    try:
        if block.stream is not None and block.stream != stream:
            env.wait_stream(stream, block.stream)  # its last readers ran on another stream
        block.stream = stream
        buf, mem = block.resource
        lease = _Lease(mem.ptr, nbytes, mem)
        weakref.finalize(lease, route.pool.give, block).atexit = False
    except BaseException:
        route.pool.give(block)
        raise
    y = env.wrap(lease, route.index).view(x.dtype).view(shape)
    y.copy_(_nhwc(x, cl))  # device to device, on the current stream
    dt = buf.tensor(shape, _DT[x.dtype])
    params = dict(kw, device=route.device_id)
    lay = _cl_layout(x, cl, layout)
    sem = route.semaphore_for(env.stream_key(stream))
    if sem is None:
        env.synchronize(stream)  # the copy is complete before the daemon reads
        _method(client, mode, x)(dt, out=dt, layout=lay, **params)
    else:
        route.throttle(MAX_PENDING)
        with sem.lock:
            n = sem.value + 1
            job = client.submit(dt, out=dt, layout=lay, mode=mode, wait=(sem.sem, n), signal=(sem.sem, n + 1),
                                **params)
            sem.value = n + 1
            try:
                env.signal(sem.ext, n, stream)  # after the copy: the job may read x
                env.wait(sem.ext, n + 1, stream)  # the stream's next work waits for y
            except BaseException:
                route.semaphores_ok = False
                route.sync_reason = "a stream could not signal or wait for its semaphore"
                try:
                    sem.sem.signal(n)  # the job must not wait for a signal that never comes
                except Error:
                    pass
                job.wait()
                raise
        with route.lock:
            route.pending.append(job)
    return _from_nhwc(y, cl)


def _np(t):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(_numpy().uint16)
    return t.numpy()


def _run_host(route, mode, x, kw, layout, cl, env):
    client = route.client
    shape = _phys(x, cl)
    nbytes = x.numel() * x.element_size()
    pool = host_pool_for(client, env)
    block = pool.take(nbytes)
    try:
        if block.event is not None:
            env.event_synchronize(block.event)  # the last call's copy to the GPU is over
            block.event = None
        h = torch.from_numpy(block.resource.array[:nbytes]).view(x.dtype).view(shape)
        h.copy_(_nhwc(x, cl))  # device to host (waits for the stream)
        _method(client, mode, x)(_np(h), out=_np(h), layout=_cl_layout(x, cl, layout), dtype=_DT[x.dtype], **kw)
        fmt = (torch.channels_last if x.dim() == 4 else torch.channels_last_3d) if cl else torch.contiguous_format
        y = torch.empty_like(x, memory_format=fmt)
        _nhwc(y, cl).copy_(h, non_blocking=block.resource.pinned)
        block.event = env.record_event(x)
    finally:
        pool.give(block)
    return y


# ---- torch's CUDA -------------------------------------------------------------------------

class HostMemory:
    """Host memory of the fallback: array (uint8) the daemon reads (a client.array for a daemon
    connection), pinned where the runtime registered it."""

    __slots__ = ("array", "pinned", "keep")

    def __init__(self, array, pinned, keep=None):
        self.array, self.pinned, self.keep = array, pinned, keep


class TorchEnv:
    """torch.cuda and dropblock.cuda: what the routes do on a GPU."""

    def __init__(self):
        self.api = "HIP" if getattr(torch.version, "hip", None) else "CUDA"

    def interop_missing(self):
        from . import cuda as _cuda
        try:
            _cuda._load()
        except Exception as e:  # noqa: BLE001 - any failure means no interop
            return "dropblock.cuda cannot import device memory here (%s)" % e
        return None

    def device_index(self, x):
        return x.device.index if x.device.index is not None else torch.cuda.current_device()

    def device_label(self, index):
        try:
            return "cuda:%d (%s)" % (index, torch.cuda.get_device_name(index))
        except Exception:  # noqa: BLE001
            return "cuda:%d" % index

    def device_uuid(self, index):
        u = torch.cuda.get_device_properties(index).uuid
        raw = getattr(u, "bytes", None)
        if raw is not None and len(raw) == 16:
            return bytes(bytearray(raw))
        b = parse_uuid(str(u))
        if b is None:
            raise ValueError("UUID %r" % str(u))
        return b

    def import_buffer(self, buf, index):
        from . import cuda as _cuda
        with torch.cuda.device(index):
            mem = _cuda.import_buffer(buf)
        if mem.ordinal != index:
            mem.close()
            raise ValueError("the driver's device %d has the UUID, torch's is cuda:%d" % (mem.ordinal, index))
        return mem

    def _context(self, index):
        """The driver's current context made GPU index's primary one (torch's) for the calls
        that take it from the thread: cuImportExternalSemaphore, and signals and waits on the
        legacy default stream (handle 0)."""
        return _DriverContext(index)

    def import_semaphore(self, sem, index):
        from . import cuda as _cuda
        with self._context(index):
            return _cuda.import_semaphore(sem)

    def current_stream(self, x):
        return torch.cuda.current_stream(x.device)

    def stream_key(self, stream):
        return stream.cuda_stream

    def wait_stream(self, stream, other):
        stream.wait_stream(other)

    def synchronize(self, stream):
        stream.synchronize()

    def synchronize_device(self, index):
        torch.cuda.synchronize(index)

    def close_memory(self, mem, index):
        with self._context(index):  # cuMemFree and cuDestroyExternalMemory, from any thread
            mem.close()

    def close_semaphore(self, ext, index):
        with self._context(index):
            ext.close()

    def signal(self, ext, value, stream):
        with self._context(stream.device.index):
            ext.signal(value, stream.cuda_stream)

    def wait(self, ext, value, stream):
        with self._context(stream.device.index):
            ext.wait(value, stream.cuda_stream)

    def wrap(self, lease, index):
        """A uint8 tensor over the lease's memory on GPU index, holding the lease (torch keeps
        the object whose __cuda_array_interface__ it wraps until the storage is freed)."""
        dev = torch.device("cuda", index)
        try:
            t = torch.as_tensor(lease, device=dev)
        except Exception as e:  # noqa: BLE001
            raise Unavailable("torch cannot wrap the imported memory (%s)" % e) from None
        if t.data_ptr() != lease.ptr or t.device != dev:
            raise Unavailable("torch copied the imported memory instead of wrapping it (%s at %#x, not %s at %#x)"
                              % (t.device, t.data_ptr(), dev, lease.ptr))
        return t

    def record_event(self, x):
        e = torch.cuda.Event()
        e.record(torch.cuda.current_stream(x.device))
        return e

    def event_synchronize(self, event):
        event.synchronize()

    def host_alloc(self, client, need):
        np = _numpy()
        if client.is_remote:
            arr = client.array((need,), np.uint8)  # shared memory the daemon maps
            keep = None
        else:
            keep = torch.empty(need, dtype=torch.uint8, pin_memory=True)
            return HostMemory(keep.numpy(), True, keep)
        try:
            pinned = int(torch.cuda.cudart().cudaHostRegister(arr.ctypes.data, arr.nbytes, 0)) == 0
        except Exception:  # noqa: BLE001 - unpinned memory works, slower
            pinned = False
        return HostMemory(arr, pinned, keep)

    def host_free(self, mem):
        if mem.pinned and mem.keep is None:
            torch.cuda.cudart().cudaHostUnregister(mem.array.ctypes.data)


class _DriverContext:
    """with: GPU index's primary context current on this thread (CUDA: cuCtxPushCurrent of the
    retained primary context, popped after; HIP: hipSetDevice)."""
    _primary = {}  # index -> retained CUcontext

    def __init__(self, index):
        self.index, self.pushed = index, False

    def __enter__(self):
        import ctypes

        from . import cuda as _cuda
        drv = _cuda._load()
        f = drv.fn
        if drv.name != "cuda":
            drv.check(f["set"](self.index), "hipSetDevice")
            return self
        ctx = self._primary.get(self.index)
        if ctx is None:
            dev = ctypes.c_int()
            drv.check(f["get"](ctypes.byref(dev), self.index), "cuDeviceGet")
            ctx = ctypes.c_void_p()
            drv.check(f["retain"](ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
            self._primary[self.index] = ctx
        drv.check(f["push"](ctx), "cuCtxPushCurrent")
        self.pushed, self.drv = True, drv
        return self

    def __exit__(self, *exc):
        if self.pushed:
            import ctypes
            self.drv.fn["pop"](ctypes.byref(ctypes.c_void_p()))


_env = []


def default_env():
    with _lock:
        if not _env:
            _env.append(TorchEnv())
        return _env[0]
