"""The client: a handle of libdropblock (a daemon connection or the in-process engine), NumPy
arrays in memory the engine sees, and DropBlock2D and DropBlock3D jobs. See python/README.md."""
import collections
import ctypes
import json
import operator
import os
import struct
import threading
import weakref

from . import _lib
from ._lib import lib

U64_MAX = (1 << 64) - 1


class Error(Exception):
    """A failed request. `code` is the wire name of the error ("invalid_argument", "not_found",
    "out_of_range", "resource_exhausted", "unavailable", "permission_denied", "internal"),
    `message` says what went wrong, `rc` is the C library's negative DROPBLOCK_E* value."""

    def __init__(self, code, message, rc=None):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message
        self.rc = rc if rc is not None else {
            "invalid_argument": _lib.EINVAL, "not_found": _lib.ENOTFOUND, "out_of_range": _lib.ERANGE,
            "resource_exhausted": _lib.EEXHAUSTED, "unavailable": _lib.EUNAVAILABLE,
            "permission_denied": _lib.EPERM, "timeout": _lib.ETIMEDOUT}.get(code, _lib.EINTERNAL)


def _error(rc, message=b""):
    L = lib()
    name = L.dropblock_error_name(rc)
    code = name.decode() if name else "internal"
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    if not message:
        message = L.dropblock_strerror(rc).decode()
    return Error(code, message, rc)


def _invalid(message):
    return Error("invalid_argument", message, _lib.EINVAL)


def _numpy():
    try:
        import numpy
    except ImportError:
        raise ImportError("dropblock: this needs NumPy (pip install numpy); the schedules, devices() and "
                          "status() work without it") from None
    return numpy


def _f32_of_bits(bits):
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def _u64(value, what):
    try:
        v = operator.index(value)
    except TypeError:
        raise _invalid("%s %r: must be an integer" % (what, value)) from None
    if v < 0 or v > U64_MAX:
        raise _invalid("%s %d: must be in [0, 2^64 - 1]" % (what, v))
    return v


def _name(table, value, what):
    if isinstance(value, str) and value in table:
        return table[value]
    if what == "layout" and isinstance(value, str) and value.upper() in table:
        return table[value.upper()]
    raise _invalid("%s %r: must be one of %s" % (what, value, ", ".join(table)))


# ---- schedules --------------------------------------------------------------------------------

def schedule_linear(target, step, total_steps):
    """The paper's linear ramp: target * min(step, N) / N rounded once to float32 (N = 0: the
    target from step 0). Returns that float32 as a Python float (dropblock_schedule_linear)."""
    out = ctypes.c_float()
    rc = lib().dropblock_schedule_linear(float(target), _u64(step, "step"), _u64(total_steps, "total_steps"),
                                         ctypes.byref(out))
    if rc:
        raise _invalid("target %r: must be in [0, 1]" % (target,))
    return out.value


def schedule_group(target, group):
    """The TF-TPU reference's per-group scaling: target / 4^(4 - group), group 1..4
    (dropblock_schedule_group)."""
    g = operator.index(group)
    out = ctypes.c_float()
    rc = lib().dropblock_schedule_group(float(target), g if -2**31 <= g < 2**31 else -1, ctypes.byref(out))
    if rc:
        raise _invalid("target %r, group %r: the target must be in [0, 1] and the group in 1..4" % (target, group))
    return out.value


def schedule_rate(target, step, total_steps, group=0):
    """The ramp, then (group 1..4) the group scaling; group 0: the ramp alone
    (dropblock_schedule_rate)."""
    g = operator.index(group)
    if not 0 <= g <= 4:
        raise _invalid("group %d: must be in 0..4" % g)
    r = lib().dropblock_schedule_rate(float(target), _u64(step, "step"), _u64(total_steps, "total_steps"), g)
    if r != r:
        raise _invalid("target %r: must be in [0, 1]" % (target,))
    return r


def default_socket():
    """The socket path a Client() connects to: $DROPBLOCK_SOCKET, else
    $XDG_RUNTIME_DIR/dropblock/dropblockd.sock, else /run/dropblock/dropblockd.sock."""
    buf = ctypes.create_string_buffer(4096)
    lib().dropblock_default_socket(buf, len(buf))
    return os.fsdecode(buf.value)


# ---- the handle and its memory --------------------------------------------------------------

class _Handle:
    """Owns the C handle. It is closed when close() was asked for and nothing uses it any more:
    no call in progress and no memory from dropblock_alloc still referenced from Python."""

    def __init__(self, ptr, remote):
        self.ptr = ptr
        self.remote = remote
        # reentrant: a _Memory's finalizer (free) runs whenever the garbage collector does,
        # which can be on this very thread while it holds the lock (an allocation in contains
        # or alloc); a plain Lock deadlocked there (seen in test_python's threads section)
        self.lock = threading.RLock()
        self.allocs = {}  # base address -> size of the live allocations
        self.users = 0    # calls in progress
        self.closing = False
        self.closed = False

    def acquire(self):
        with self.lock:
            if self.closing:
                raise _invalid("the client is closed")
            self.users += 1

    def release(self):
        with self.lock:
            self.users -= 1
            last = self._last()
        if last:
            self._close()

    def _last(self):  # under the lock: whether the C handle may go now (and claims it)
        if self.closing and not self.closed and self.users == 0 and not self.allocs:
            self.closed = True
            return True
        return False

    def _close(self):
        lib().dropblock_close(self.ptr)
        self.ptr = None

    def request_close(self):
        with self.lock:
            self.closing = True
            last = self._last()
        if last:
            self._close()

    def alloc(self, nbytes):
        self.acquire()
        try:
            p = ctypes.c_void_p()
            msg = ctypes.create_string_buffer(512)
            # refused before anything is allocated when the daemon's limits or the machine's
            # available memory cannot take it (resource_exhausted, naming the limit)
            rc = lib().dropblock_alloc_msg(self.ptr, nbytes, ctypes.byref(p), msg, len(msg))
            if rc:
                raise _error(rc, msg.value or ("dropblock_alloc of %d bytes failed" % nbytes))
            with self.lock:
                self.allocs[p.value] = nbytes
            return _Memory(self, p.value, nbytes)
        finally:
            self.release()

    def free(self, base):  # the finalizer of a _Memory
        with self.lock:
            self.users += 1  # keeps the handle open across the call even when closing
        try:
            lib().dropblock_free(self.ptr, ctypes.c_void_p(base))
        finally:
            with self.lock:
                self.allocs.pop(base, None)
                self.users -= 1
                last = self._last()
            if last:
                self._close()

    def contains(self, arr):
        """Whether all of arr's bytes lie in one live allocation."""
        start, n = arr.ctypes.data, arr.nbytes
        with self.lock:
            allocs = dict(self.allocs)  # a finalizer may free one meanwhile, on this thread
        for base, size in allocs.items():
            if base <= start and start + n <= base + size:
                return True
        return False


class _Memory:
    """One allocation of dropblock_alloc. NumPy arrays over it keep it alive (it is their base);
    when the last is gone it is released with dropblock_free."""

    __slots__ = ("handle", "base", "size", "_finalizer", "__weakref__")

    def __init__(self, handle, base, size):
        self.handle, self.base, self.size = handle, base, size
        self._finalizer = weakref.finalize(self, handle.free, base)

    @property
    def __array_interface__(self):
        return {"shape": (self.size,), "typestr": "|u1", "data": (self.base, False), "version": 3}


# ---- device memory (region.alloc) ---------------------------------------------------------

class _Shared:
    """What DeviceBuffer and Semaphore share: the C struct the handle filled, a descriptor for an
    importer (fd; take_fd() when an import takes it), the device and its UUIDs, and one free
    (free(), `with`, or the garbage collector) that keeps the handle open until then."""
    _free_fn = None  # the C function that gives it back

    def __init__(self, handle, c):
        self._h, self._c = handle, c
        self._finalizer = weakref.finalize(self, _Shared._release, self._free_fn, handle, c)

    @staticmethod
    def _release(fn, handle, c):
        try:
            getattr(_sem_lib(), fn)(handle.ptr, ctypes.byref(c))
        finally:
            handle.release()

    def free(self):
        """Gives it back (running jobs keep theirs). Safe to call twice."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    @property
    def fd(self):
        return self._c.fd

    def take_fd(self):
        """The descriptor, now the caller's (an import takes it): free() no longer closes it."""
        fd, self._c.fd = self._c.fd, -1
        return fd

    handle_type = property(lambda self: self._c.handle_type.decode())
    device = property(lambda self: self._c.device.decode())
    device_uuid = property(lambda self: bytes(self._c.device_uuid))
    driver_uuid = property(lambda self: bytes(self._c.driver_uuid))


class DeviceBuffer(_Shared):
    """Device memory shared by file descriptor (Client.device_buffer; docs/protocol.md
    region.alloc): it lives on `device` (e.g. "vulkan:0"), and `fd` is for this process to import
    into its own API on that device (dropblock.cuda.import_buffer for CUDA and HIP, or Vulkan's
    VkImportMemoryFdInfoKHR with allocation_size, memory_type_index and dedicated), matched by
    device_uuid. A successful import takes the descriptor (take_fd); an untaken one is closed by
    free(). Jobs name places in it with tensor(); ordering is host-synchronous (finish writing
    x before the job; the job's return means y is there). free() (or `with`, or the garbage
    collector) gives the memory back; an import keeps its own reference."""

    _free_fn = "dropblock_device_free"
    _buf = property(lambda self: self._c)
    size = property(lambda self: self._c.size)
    allocation_size = property(lambda self: self._c.allocation_size)
    memory_type_index = property(lambda self: self._c.memory_type_index)
    dedicated = property(lambda self: bool(self._c.dedicated))
    host_mappable = property(lambda self: bool(self._c.host_mappable))

    def tensor(self, shape, dtype="f32", offset=0):
        """A tensor of shape (4 integers, in the layout's order; 5 for dropblock3d) and dtype ("f32",
        "f16", "bf16") at offset bytes into the buffer, for Client.dropblock2d/backward (dropblock3d/
        backward3d)."""
        return DeviceTensor(self, offset, shape, dtype)

    def __repr__(self):
        return "DeviceBuffer(%d bytes on %s, %s, fd %d)" % (self.size, self.device, self.handle_type, self.fd)


class DeviceTensor(collections.namedtuple("DeviceTensor", "buffer offset shape dtype")):
    """A place in a DeviceBuffer (DeviceBuffer.tensor): what dropblock2d runs on, in place of an
    array. Its bytes are read and written on the device only."""

    @property
    def nbytes(self):
        n = 1
        for d in self.shape:
            n *= int(d)
        return n * (4 if self.dtype == "f32" else 2)


# ---- timeline semaphores (semaphore.create) -------------------------------------------------

class _SemaphoreC(ctypes.Structure):
    """struct dropblock_semaphore"""
    _fields_ = [("fd", ctypes.c_int), ("handle_type", ctypes.c_char * 16), ("device", ctypes.c_char * 32),
                ("device_uuid", ctypes.c_uint8 * 16), ("driver_uuid", ctypes.c_uint8 * 16),
                ("id", ctypes.c_uint32), ("conn_gen", ctypes.c_uint64), ("local", ctypes.c_void_p)]


class _SyncC(ctypes.Structure):
    """struct dropblock_sync"""
    _fields_ = [("wait", ctypes.POINTER(_SemaphoreC)), ("wait_value", ctypes.c_uint64),
                ("wait_timeout_ms", ctypes.c_uint32), ("signal", ctypes.POINTER(_SemaphoreC)),
                ("signal_value", ctypes.c_uint64)]


_SEM_PROTOS = {
    "dropblock_semaphore_create": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                                  ctypes.POINTER(_SemaphoreC), ctypes.c_char_p, ctypes.c_size_t]),
    "dropblock_semaphore_signal": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(_SemaphoreC), ctypes.c_uint64,
                                                  ctypes.c_char_p, ctypes.c_size_t]),
    "dropblock_semaphore_value": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(_SemaphoreC),
                                                 ctypes.POINTER(ctypes.c_uint64), ctypes.c_char_p, ctypes.c_size_t]),
    "dropblock_semaphore_free": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(_SemaphoreC)]),
    "dropblock_submit_sync": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(_lib.Params), _lib.Ref, _lib.Ref,
                                             ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(_SyncC),
                                             ctypes.POINTER(ctypes.c_void_p)]),
    "dropblock_wait": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(_lib.Result)]),
}


def _sem_lib():
    L = lib()
    for name, (res, args) in _SEM_PROTOS.items():
        f = getattr(L, name)
        f.restype, f.argtypes = res, args
    return L


class Semaphore(_Shared):
    """A timeline semaphore on `device` (Client.semaphore; docs/protocol.md "Ordering with
    semaphores"), starting at 0: a job may wait for it to reach a value and raise it to a value
    once over (Client.submit/dropblock2d's wait= and signal=). Exported, `fd` is for this process
    to import on the device with device_uuid (dropblock.cuda.import_semaphore for CUDA and HIP);
    an import takes it (take_fd). signal() and value from the host; free() (or `with`, or the
    garbage collector) gives it up."""

    _free_fn = "dropblock_semaphore_free"
    _s = property(lambda self: self._c)

    def signal(self, value):
        """Raises it to value from the host (an error unless above its value)."""
        msg = ctypes.create_string_buffer(256)
        rc = _sem_lib().dropblock_semaphore_signal(self._h.ptr, ctypes.byref(self._s), _u64(value, "value"), msg,
                                                   len(msg))
        if rc:
            raise _error(rc, msg.value)

    @property
    def value(self):
        v = ctypes.c_uint64()
        msg = ctypes.create_string_buffer(256)
        rc = _sem_lib().dropblock_semaphore_value(self._h.ptr, ctypes.byref(self._s), ctypes.byref(v), msg, len(msg))
        if rc:
            raise _error(rc, msg.value)
        return v.value

    def __repr__(self):
        return "Semaphore(on %s, %s, fd %d)" % (self.device, self.handle_type or "not exported", self.fd)


def _sync(wait, signal):
    """wait=(Semaphore, value[, timeout_s]) and signal=(Semaphore, value) as a struct dropblock_sync
    (and the structs it points at, kept alive with it); None without either."""
    if wait is None and signal is None:
        return None
    s = _SyncC()
    for what, arg in (("wait", wait), ("signal", signal)):
        if arg is None:
            continue
        if not isinstance(arg, (tuple, list)) or len(arg) not in ((2, 3) if what == "wait" else (2,)) or \
                not isinstance(arg[0], Semaphore):
            raise _invalid("%s: (Semaphore, value%s)" % (what, ", timeout_s" if what == "wait" else ""))
        setattr(s, what, ctypes.pointer(arg[0]._s))
        setattr(s, what + "_value", _u64(arg[1], what + " value"))
        if what == "wait" and len(arg) == 3:
            s.wait_timeout_ms = max(1, _timeout_ms("wait timeout", arg[2]))
    return s


class Job:
    """A job submitted with Client.submit: wait() returns its JobInfo once it is over (raising its
    error), or raises TimeoutError while it runs (wait again)."""

    def __init__(self, client, ticket, out, params=None):
        self._c, self._t, self.out, self._p = client, ticket, out, params

    def wait(self, timeout=None):
        if self._t is None:
            raise _invalid("wait: the job was waited for already")
        res = _lib.Result()
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        rc = _sem_lib().dropblock_wait(self._c._h.ptr, self._t, ms, ctypes.byref(res))
        if rc == _lib.ETIMEDOUT:
            raise TimeoutError("the job is still running after %s s" % timeout)
        self._t = None
        self._c._h.release()
        if rc:
            raise _error(rc, res.message)
        if self._p is not None:
            _check_total(self._p, res)
        return _job_info(res)


# ---- results ------------------------------------------------------------------------------

class JobInfo(collections.namedtuple("JobInfo", "kept total scale scale_bits device timing_us")):
    """What a job reported: kept (K) and total (S) elements over the tensor, the scale as a float
    and its float32 bits (sample 0's for normalize="sample"; the divisor `percent` for
    compat="keras_cv"), the device that ran it, and timing_us: a dict of microseconds for "mask",
    "scale", "apply" and "total" (0 where not measured)."""
    __slots__ = ()


def _job_info(res):
    t = list(res.timing_us)
    return JobInfo(res.kept, res.total, _f32_of_bits(res.scale_bits), res.scale_bits,
                   res.device.decode("utf-8", "replace"),
                   {"mask": t[0], "scale": t[1], "apply": t[2], "total": t[3]})


# ---- dtypes -------------------------------------------------------------------------------

_DTYPE_NAMES = {"f32": "f32", "float32": "f32", "f16": "f16", "float16": "f16", "half": "f16", "bf16": "bf16",
                "bfloat16": "bf16"}


def _dtype_name(dtype):
    """"f32", "f16" or "bf16" for a dtype argument: those names, NumPy dtypes and their names."""
    if isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower()]
    np = _numpy()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is not None:
        if dt == np.float32:
            return "f32"
        if dt == np.float16:
            return "f16"
        if dt.name == "bfloat16" or dt == np.uint16:
            return "bf16"
    raise _invalid("dtype %r: must be f32 (float32), f16 (float16) or bf16 (stored as uint16)" % (dtype,))


def _np_dtype(name):
    np = _numpy()
    return {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": np.dtype(np.uint16)}[name]


def _dtype_of_array(x, dtype):
    """The request dtype for array x: its own, or `dtype` if given (which must fit x)."""
    np = _numpy()
    dt = x.dtype
    is_bf16_like = dt.itemsize == 2 and (dt.kind in "ui" or dt.name == "bfloat16")
    if dtype is None:
        if dt == np.float32:
            return "f32"
        if dt == np.float16:
            return "f16"
        if dt.name == "bfloat16":
            return "bf16"
        if is_bf16_like:
            raise _invalid("array dtype %s: pass dtype=\"bf16\" for bfloat16 bits stored as 16-bit integers" % dt)
        raise _invalid("array dtype %s: must be float32, float16, or bfloat16 bits (uint16) with "
                       "dtype=\"bf16\"" % dt)
    name = _dtype_name(dtype)
    ok = {"f32": dt == np.float32, "f16": dt == np.float16, "bf16": is_bf16_like}[name]
    if not ok:
        raise _invalid("dtype %s does not fit an array of %s" % (name, dt))
    return name


# ---- the client ---------------------------------------------------------------------------

def _timeout_ms(name, seconds):
    """A timeout in seconds (None: no limit) as dropblock_connect_options takes it."""
    if seconds is None:
        return -1
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        raise _invalid("%s %r: must be a number of seconds or None" % (name, seconds)) from None
    if not (0 < s <= 86400):
        raise _invalid("%s %r: must be more than 0 and at most 86400 seconds, or None (no limit)" % (name, seconds))
    return max(1, int(round(s * 1000)))


class _Position(collections.namedtuple("_Position", "value")):
    """compat keras_cv's generator position, carried where a stream goes (dropblock2d's position=)."""
    __slots__ = ()


def _stream_or_position(stream, position):
    if position is None:
        return stream
    if stream:
        raise _invalid("position and stream: give one (stream k is position k*N*H*W*C)")
    return _Position(position)


# DropBlock3D's layouts: the C API's NCHW and NHWC mean NCDHW and NDHWC once depth is set
_LAYOUTS3 = {"NCDHW": _lib.LAYOUTS["NCHW"], "NDHWC": _lib.LAYOUTS["NHWC"]}
_METHODS = {("forward", 4): "dropblock2d", ("backward", 4): "backward", ("forward", 5): "dropblock3d",
            ("backward", 5): "backward3d"}
_FORMS = {4: "4-D, (N, C, H, W) or (N, H, W, C) by layout", 5: "5-D, (N, C, D, H, W) or (N, D, H, W, C) by layout"}


def _rank_of(method, shape, ranks, what="tensor"):
    """len(shape) if it is one of ranks, else the error naming the method that takes it."""
    try:
        rank = len(shape)
    except TypeError:
        rank = -1
    if rank in ranks:
        return rank
    hint = ""
    modes = [m for (m, _), name in _METHODS.items() if name == method]
    if rank in _FORMS and modes:  # the other method takes it
        hint = " (%s takes %d-D %ss)" % (_METHODS[modes[0], rank], rank, what)
    raise _invalid("%s: %s of shape %r: must be %s%s" % (method, what, tuple(shape), " or ".join(
        _FORMS[r] for r in ranks), hint))


def _check_total(p, res):
    """A 3-D job must report S = N*C*D*H*W: a daemon (or libdropblock) whose wire has no depth runs
    the first D-th of the tensor as a 2-D job, which this turns into an error instead of wrong bits."""
    if p.depth > 1 and res.total != lib().dropblock_numel(ctypes.byref(p)):
        raise Error("internal", "a DropBlock3D job reported %d elements, not the tensor's %d: the daemon (or "
                    "libdropblock) does not carry the depth; update both" % (res.total,
                                                                           lib().dropblock_numel(ctypes.byref(p))),
                    _lib.EINTERNAL)


class Client:
    """A connection to dropblockd, or the in-process engine.

    Client()                   connects to the default socket ($DROPBLOCK_SOCKET, ...)
    Client("/path/d.sock")     connects to that socket
    Client(local=True)         opens the in-process engine (backends="cpu,opencl,vulkan" or a part)

    timeout (seconds, default 10; None: no limit) bounds connecting, the first hello and every
    reply but a job's: a daemon that accepts and never answers raises DropblockError
    (unavailable) naming it. job_timeout (default None: no limit) bounds each job's wait; after it
    the daemon may still write the job's output.

    Use it from one process (not across fork) and from any number of threads. close(), or a
    `with` block, ends it: at once when no client.array is alive any more, otherwise when the last
    one is garbage collected (arrays never dangle); no new job or array is accepted after close.
    """

    def __init__(self, socket=None, local=False, backends=None, cache_dir=None, timeout=10.0, job_timeout=None):
        L = lib()
        h = ctypes.c_void_p()
        msg = ctypes.create_string_buffer(512)
        if local:
            if socket is not None:
                raise _invalid("socket and local=True exclude each other")
            opt = _lib.LocalOptions(None if backends is None else str(backends).encode(),
                                    None if cache_dir is None else os.fsencode(cache_dir))
            rc = L.dropblock_open_local(ctypes.byref(h), ctypes.byref(opt), msg, len(msg))
        else:
            if backends is not None or cache_dir is not None:
                raise _invalid("backends and cache_dir are options of the local engine (local=True); "
                               "the daemon's devices are chosen with dropblockd --devices")
            opt = _lib.ConnectOptions(None if socket is None else os.fsencode(socket),
                                      _timeout_ms("timeout", timeout), _timeout_ms("job_timeout", job_timeout))
            rc = L.dropblock_connect_opts(ctypes.byref(h), ctypes.byref(opt), msg, len(msg))
        if rc:
            raise _error(rc, msg.value)
        self.socket = None if socket is None else os.fsdecode(socket)
        self._h = _Handle(h.value, bool(L.dropblock_is_remote(h)))
        self._finalizer = weakref.finalize(self, self._h.request_close)
        self._tls = threading.local()
        self._pool = []            # free scratch allocations (daemon connections only)
        self._pool_lock = threading.Lock()

    # -- life cycle
    def close(self):
        """Ends the client (see the class doc). Safe to call twice."""
        with self._pool_lock:
            self._pool = []
        self._finalizer()

    def __copy__(self):  # one connection per process: copies share it
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        raise TypeError("a dropblock.Client cannot be pickled (it is a connection); open one in each process")

    @property
    def closed(self):
        return self._h.closing

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        kind = "daemon connection" if self._h.remote else "local engine"
        return "<dropblock.Client %s%s>" % (kind, ", closed" if self._h.closing else "")

    @property
    def is_remote(self):
        """True for a daemon connection, False for the in-process engine."""
        return self._h.remote

    @property
    def last_result(self):
        """JobInfo of this thread's last successful job (dropblock2d/3d, backward/backward3d) on this
        client, or None."""
        return getattr(self._tls, "result", None)

    # -- queries
    def devices(self):
        """The engine's or daemon's devices, in order: a list of dicts with id, api, vendor, name,
        driver, uuid, kind ("discrete-gpu", "integrated-gpu", "cpu-api", "cpu", "other"),
        max_buffer and global_mem (bytes), healthy (False once the device failed), export (device
        memory for device_buffer), semaphores and semaphore_export (Client.semaphore, exported or
        not)."""
        L = lib()
        cap = 16
        while True:
            infos = (_lib.DeviceInfo * cap)()
            count = ctypes.c_size_t()
            self._h.acquire()
            try:
                rc = L.dropblock_devices(self._h.ptr, infos, cap, ctypes.byref(count))
            finally:
                self._h.release()
            if rc:
                raise _error(rc)
            if count.value <= cap:
                break
            cap = count.value
        out = []
        for d in infos[:count.value]:
            text = {f: getattr(d, f).decode("utf-8", "replace")
                    for f in ("id", "api", "vendor", "name", "driver", "uuid")}
            text.update(kind=L.dropblock_device_kind_name(d.kind).decode(), max_buffer=d.max_buffer,
                        global_mem=d.global_mem, healthy=bool(d.healthy), export=bool(d.can_export),
                        semaphores=bool(d.semaphores), semaphore_export=bool(d.semaphore_export))
            out.append(text)
        return out

    def status(self):
        """The daemon's status op (counters, queues, per-device throughput; docs/protocol.md) as a
        dict; the local engine gives {"engine": "local", "devices": [...]}."""
        L = lib()
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            self._h.acquire()
            try:
                rc = L.dropblock_status(self._h.ptr, buf, size)
            finally:
                self._h.release()
            if rc == _lib.ERANGE and size < (1 << 26):
                size *= 4
                continue
            if rc:
                raise _error(rc)
            st = json.loads(buf.value.decode("utf-8"))
            for k in ("v", "id", "ok"):  # the reply's envelope
                st.pop(k, None)
            return st

    def shutdown(self):
        """Asks the daemon to stop as on SIGTERM (only the daemon's own uid may)."""
        msg = ctypes.create_string_buffer(512)
        self._h.acquire()
        try:
            rc = lib().dropblock_shutdown(self._h.ptr, msg, len(msg))
        finally:
            self._h.release()
        if rc:
            raise _error(rc, msg.value)

    # -- memory
    def array(self, shape, dtype="f32"):
        """A zero-filled NumPy array in memory the engine reads and writes without copies (for a
        daemon connection a shared memfd region registered with the daemon). dtype: "f32"
        (float32), "f16" (float16), "bf16" (bfloat16 bits as uint16), or any NumPy dtype (uint8
        for a mask buffer, say).
        The memory is released when the array and every view of it are gone."""
        np = _numpy()
        if isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
            dt = _np_dtype(_DTYPE_NAMES[dtype.lower()])
        else:
            try:
                dt = np.dtype(dtype)
            except TypeError:
                raise _invalid("dtype %r: must be f32, f16, bf16 or a NumPy dtype" % (dtype,)) from None
        return self._array(shape, dt)

    def _array(self, shape, dt):
        np = _numpy()
        shape = (operator.index(shape),) if not isinstance(shape, (tuple, list)) else tuple(map(operator.index, shape))
        if any(s < 0 for s in shape):
            raise _invalid("shape %r: negative dimension" % (shape,))
        nbytes = dt.itemsize
        for s in shape:
            nbytes *= s
        raw = np.asarray(self._h.alloc(max(nbytes, 1)))
        return raw[:nbytes].view(dt).reshape(shape)

    def _scratch(self, nbytes):
        with self._pool_lock:
            best = None
            for i, m in enumerate(self._pool):
                if m.size >= nbytes and (best is None or m.size < self._pool[best].size):
                    best = i
            if best is not None:
                return self._pool.pop(best)
        return self._h.alloc(max(nbytes, 4096))

    def _unscratch(self, mem):
        with self._pool_lock:
            if self._h.closing:
                return
            self._pool.append(mem)
            if len(self._pool) > 4:  # keep the four largest
                self._pool.sort(key=lambda m: m.size)
                del self._pool[0]

    # -- jobs
    def dropblock2d(self, x, rate, block_size, seed=0, stream=0, layout="NCHW", normalize="global", share=(),
                    compat="none", training=True, out=None, device="auto", mask=False, dtype=None, position=None):
        """DropBlock2D of x (docs/semantics.md). x: a 4-D array, (N, C, H, W) for layout "NCHW",
        (N, H, W, C) for "NHWC"; float32, float16, or bfloat16 bits as uint16 with dtype="bf16".
        block_size: B or (BH, BW). share: names among "channels", "batch". compat: "none",
        "keras_cv" (keras-cv's first layer, tf.random.Generator) or "keras3" (keras-cv 0.8+ on
        Keras 3's TensorFlow backend; stream is the layer's call index). position (compat
        keras_cv, instead of stream): the generator's position, the sum of N*H*W*C over the
        layer's earlier calls of any sizes. out: an array of x's shape and dtype to write (may be x: in place); None: a new
        array (a client.array when x is one). mask=True also returns the packed keep mask
        (uint8, bit ((n*C+c)*H+h)*W+w, least significant first, 1 = kept); an uint8 array of
        the right size is filled instead. Returns out, or (out, mask). last_result has K, S, the
        scale, the device and timings. x may be a DeviceTensor (DeviceBuffer.tensor) of 4
        dimensions: the job runs on its device. 5-D tensors: dropblock3d."""
        return self._run("forward", 4, x, rate, block_size, seed, _stream_or_position(stream, position), layout,
                         normalize, share, compat, training, out, device, mask, dtype)

    def backward(self, dy, rate, block_size, seed=0, stream=0, layout="NCHW", normalize="global", share=(),
                 compat="none", training=True, out=None, device="auto", mask=False, dtype=None, position=None):
        """The gradient of dropblock2d with the same arguments: the same mask (from seed and
        stream or position) and scale applied to dy."""
        return self._run("backward", 4, dy, rate, block_size, seed, _stream_or_position(stream, position), layout,
                         normalize, share, compat, training, out, device, mask, dtype)

    def dropblock3d(self, x, rate, block_size, seed=0, stream=0, layout="NCDHW", normalize="global", share=(),
                    training=True, out=None, device="auto", mask=False, dtype=None):
        """DropBlock3D of x (docs/semantics.md; torchvision's drop_block3d): dropblock2d on a
        volume, with DropBlock2D its D = 1 case bit for bit. x: a 5-D array, (N, C, D, H, W) for
        layout "NCDHW", (N, D, H, W, C) for "NDHWC" (or a DeviceTensor of 5 dimensions), of the
        dtypes dropblock2d takes. block_size: B (a cube) or (BD, BH, BW), each clamped to the
        volume. seed, stream, normalize, share, training, out, device, mask and dtype as for
        dropblock2d; the mask's bit of (n, c, d, h, w) is (((n*C+c)*D+d)*H+h)*W+w. There is no
        compat mode (keras-cv has no 3-D layer). Returns out, or (out, mask)."""
        return self._run("forward", 5, x, rate, block_size, seed, stream, layout, normalize, share, "none",
                         training, out, device, mask, dtype)

    def backward3d(self, dy, rate, block_size, seed=0, stream=0, layout="NCDHW", normalize="global", share=(),
                   training=True, out=None, device="auto", mask=False, dtype=None):
        """The gradient of dropblock3d with the same arguments: the same mask (from seed and
        stream) and scale applied to dy."""
        return self._run("backward", 5, dy, rate, block_size, seed, stream, layout, normalize, share, "none",
                         training, out, device, mask, dtype)

    def device_buffer(self, nbytes, device="auto"):
        """nbytes of device memory on device ("auto": the first that can export) shared by file
        descriptor: a DeviceBuffer (docs/protocol.md region.alloc)."""
        h = self._h
        h.acquire()  # released by the buffer's free: the handle stays open while it lives
        buf = _lib.DeviceBuffer()
        msg = ctypes.create_string_buffer(512)
        try:
            rc = lib().dropblock_device_alloc(h.ptr, str(device or "auto").encode(), _u64(nbytes, "nbytes"),
                                              ctypes.byref(buf), msg, len(msg))
        except BaseException:
            h.release()
            raise
        if rc:
            h.release()
            raise _error(rc, msg.value or b"dropblock_device_alloc failed")
        return DeviceBuffer(h, buf)

    def semaphore(self, device="auto", export=True):
        """A timeline semaphore on device ("auto": the first that can), exported as a descriptor
        unless export is False (lavapipe cannot export; a host that signals needs no export)."""
        h = self._h
        h.acquire()  # released by the semaphore's free
        sem = _SemaphoreC()
        msg = ctypes.create_string_buffer(512)
        try:
            rc = _sem_lib().dropblock_semaphore_create(h.ptr, str(device or "auto").encode(), 1 if export else 0,
                                                       ctypes.byref(sem), msg, len(msg))
        except BaseException:
            h.release()
            raise
        if rc:
            h.release()
            raise _error(rc, msg.value or b"dropblock_semaphore_create failed")
        return Semaphore(h, sem)

    def submit(self, x, rate, block_size, seed=0, stream=0, layout=None, normalize="global", share=(),
               compat="none", training=True, out=None, device="auto", mode="forward", wait=None, signal=None):
        """dropblock2d (mode "backward": its gradient) on DeviceTensors, returning at once: a Job
        whose wait() gives its JobInfo; dropblock3d where x has 5 dimensions (layout None: "NCHW",
        or "NCDHW" for 5 dimensions). wait=(Semaphore, value[, timeout_s]): the job reads x once
        the semaphore reaches value; signal=(Semaphore, value): raised once the job is over (so a
        GPU stream that imported it waits instead of this process)."""
        if not isinstance(x, DeviceTensor):
            raise _invalid("submit: x must be a DeviceTensor (Client.device_buffer(...).tensor(...))")
        rank = _rank_of("submit", x.shape, (4, 5))
        out = x if out is None else out
        if not isinstance(out, DeviceTensor) or tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype:
            raise _invalid("out: a DeviceTensor of x's shape %r and dtype %s (None: in place)" % (x.shape, x.dtype))
        if layout is None:
            layout = "NCHW" if rank == 4 else "NCDHW"
        p = self._params(mode, tuple(x.shape), x.dtype, rate, block_size, seed, stream, layout, normalize, share,
                         compat, training)
        sync = _sync(wait, signal)
        refs = [_lib.Ref(ctypes.pointer(t.buffer._buf), None, _u64(t.offset, "offset")) for t in (x, out)]
        t = ctypes.c_void_p()
        h = self._h
        h.acquire()  # released by the job's wait
        try:
            rc = _sem_lib().dropblock_submit_sync(h.ptr, ctypes.byref(p), refs[0], refs[1], None,
                                                  b"auto" if device is None else str(device).encode(),
                                                  None if sync is None else ctypes.byref(sync), ctypes.byref(t))
        except BaseException:
            h.release()
            raise
        if rc:
            h.release()
            raise _error(rc, b"submit failed before the job was sent (dropblock2d gives the reason)")
        return Job(self, t, out, p)

    def _run_device(self, mode, rank, x, rate, block_size, seed, stream, layout, normalize, share, compat, training,
                    out, device, mask):
        """dropblock2d/3d and their backward on DeviceTensors: the job runs on their device, no host copy."""
        _rank_of(_METHODS[mode, rank], x.shape, (rank,))
        np = _numpy() if mask is not None and mask is not False else None
        out = x if out is None else out
        if not isinstance(out, DeviceTensor) or tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype:
            raise _invalid("out: a DeviceTensor of x's shape %r and dtype %s (None: in place)" % (x.shape, x.dtype))
        if x.dtype not in _lib.DTYPES:
            raise _invalid("dtype %r: one of f32, f16, bf16" % (x.dtype,))
        p = self._params(mode, tuple(x.shape), x.dtype, rate, block_size, seed, stream, layout, normalize, share,
                         compat, training)
        L = lib()
        mask_arr = scratch = None
        if np is not None:  # the mask goes to host memory the daemon reaches
            mbytes = L.dropblock_mask_bytes(ctypes.byref(p))
            scratch = self._scratch(mbytes) if self._h.remote else None
            mask_arr = np.asarray(scratch)[:mbytes] if scratch is not None else np.empty(mbytes, np.uint8)
        res = _lib.Result()
        refs = [_lib.Ref(ctypes.pointer(t.buffer._buf), None, _u64(t.offset, "offset")) for t in (x, out)]
        h = self._h
        try:
            h.acquire()
            try:
                rc = L.dropblock_run_ref(h.ptr, ctypes.byref(p), refs[0], refs[1],
                                         None if mask_arr is None else ctypes.c_void_p(mask_arr.ctypes.data),
                                         b"auto" if device is None else str(device).encode(), ctypes.byref(res))
            finally:
                h.release()
            if rc:
                raise _error(rc, res.message)
            _check_total(p, res)
            if mask_arr is not None and scratch is not None:
                mask_arr = mask_arr.copy()
        finally:
            if scratch is not None:
                self._unscratch(scratch)
        self._tls.result = _job_info(res)
        return (out, mask_arr) if mask_arr is not None else out

    def _params(self, mode, shape, dtype, rate, block_size, seed, stream, layout, normalize, share, compat, training):
        L = lib()
        p = _lib.Params()
        L.dropblock_params_init(ctypes.byref(p))
        if len(shape) == 5:  # DropBlock3D: the C struct's shape stays N, C, H, W, plus depth
            lay = _name(_LAYOUTS3, layout, "layout")
            if lay == _lib.LAYOUTS["NCHW"]:
                n, c, d, h, w = shape
            else:
                n, d, h, w, c = shape
            blocks, form = 3, "B or (BD, BH, BW)"
        else:
            lay = _name(_lib.LAYOUTS, layout, "layout")
            if lay == _lib.LAYOUTS["NCHW"]:
                n, c, h, w = shape
            else:
                n, h, w, c = shape
            d, blocks, form = 1, 2, "B or (BH, BW)"
        p.shape[:] = [n, c, h, w]
        p.depth = d
        p.layout = lay
        p.dtype = _lib.DTYPES[dtype]
        try:
            p.rate = float(rate)
        except (TypeError, ValueError):
            raise _invalid("rate %r: must be a number in [0, 1]" % (rate,)) from None
        if isinstance(block_size, (tuple, list)):
            if len(block_size) != blocks:
                raise _invalid("block_size %r: must be %s" % (block_size, form))
            b = tuple(block_size)
        else:
            b = (block_size,) * blocks
        if blocks == 3:  # the C struct's 0 means 1 there; a caller's 0 is an error as for bh and bw
            p.block_depth = _u64(b[0], "block depth")
            if p.block_depth == 0:
                raise _invalid("block depth 0: must be >= 1")
            b = b[1:]
        p.block[:] = [_u64(b[0], "block height"), _u64(b[1], "block width")]
        p.seed = _u64(seed, "seed")
        if isinstance(stream, _Position):
            p.has_position, p.position = 1, _u64(stream.value, "position")
        else:
            p.stream = _u64(stream, "stream")
        p.normalize = _name(_lib.NORMALIZE, normalize, "normalize")
        if isinstance(share, str):
            share = [s for s in share.replace(",", " ").split() if s]
        bits = 0
        for s in share or ():
            bits |= _name(_lib.SHARE, s, "share")
        p.share = bits
        p.mode = _lib.MODES[mode]
        p.compat = _name(_lib.COMPAT, compat, "compat")
        p.training = 1 if training else 0
        msg = ctypes.create_string_buffer(256)
        rc = L.dropblock_params_validate(ctypes.byref(p), msg, len(msg))
        if rc:
            raise _error(rc, msg.value)
        return p

    def _run(self, mode, rank, x, rate, block_size, seed, stream, layout, normalize, share, compat, training, out,
             device, mask, dtype):
        """The one implementation of dropblock2d, dropblock3d (rank 5) and their backward."""
        if isinstance(x, DeviceTensor):
            return self._run_device(mode, rank, x, rate, block_size, seed, stream, layout, normalize, share, compat,
                                    training, out, device, mask)
        np = _numpy()
        L = lib()
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        _rank_of(_METHODS[mode, rank], x.shape, (rank,), "array")
        dt = _dtype_of_array(x, dtype)
        if not x.dtype.isnative:
            raise _invalid("array byte order %r: must be the machine's" % x.dtype.byteorder)
        p = self._params(mode, x.shape, dt, rate, block_size, seed, stream, layout, normalize, share, compat,
                         training)
        dev = b"auto" if device is None else str(device).encode()
        xc = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        h = self._h
        if out is None:
            out = self._array(x.shape, x.dtype) if h.contains(xc) else np.empty(x.shape, x.dtype)
        else:
            if not isinstance(out, np.ndarray) or out.shape != x.shape or out.dtype != x.dtype:
                raise _invalid("out: must be an array of x's shape %r and dtype %s" % (x.shape, x.dtype))
            if not out.flags.c_contiguous or not out.flags.writeable:
                raise _invalid("out: must be C-contiguous and writeable")
        mbytes = L.dropblock_mask_bytes(ctypes.byref(p))
        mask_arr = None
        if mask is True:
            mask_arr = np.empty(mbytes, np.uint8)
        elif mask is not None and mask is not False:
            mask_arr = mask
            if (not isinstance(mask_arr, np.ndarray) or mask_arr.dtype != np.uint8 or mask_arr.size != mbytes
                    or not mask_arr.flags.c_contiguous or not mask_arr.flags.writeable):
                raise _invalid("mask: must be True or a writeable C-contiguous uint8 array of %d bytes" % mbytes)
        res = _lib.Result()
        scratch = None
        copies = []  # (from, to) after the run
        if not h.remote:  # the local engine works on any memory
            src, dst, mdst = xc, out, mask_arr
        else:
            in_place = out.ctypes.data == xc.ctypes.data
            need = []  # (name, nbytes) to place in one scratch region
            if not h.contains(xc):
                need.append(("in", xc.nbytes))
            if not in_place and not h.contains(out):
                need.append(("out", out.nbytes))
            if mask_arr is not None and not h.contains(mask_arr):
                need.append(("mask", mask_arr.nbytes))
            places, total = {}, 0
            for name, nb in need:
                places[name] = total
                total += (nb + 63) // 64 * 64
            if need:
                scratch = self._scratch(total)
                raw = np.asarray(scratch)

                def at(name, like):
                    return raw[places[name]:places[name] + like.nbytes].view(like.dtype).reshape(like.shape)
            src = xc
            if "in" in places:
                src = at("in", xc)
                src[...] = xc
            if in_place:
                dst = src
                if "in" in places:
                    copies.append((dst, out))
            elif "out" in places:
                dst = at("out", out)
                copies.append((dst, out))
            else:
                dst = out
            mdst = mask_arr
            if "mask" in places:
                mdst = at("mask", mask_arr)
                copies.append((mdst, mask_arr))
        try:
            h.acquire()
            try:
                rc = L.dropblock_run(h.ptr, ctypes.byref(p), ctypes.c_void_p(src.ctypes.data),
                                     ctypes.c_void_p(dst.ctypes.data),
                                     None if mdst is None else ctypes.c_void_p(mdst.ctypes.data), dev,
                                     ctypes.byref(res))
            finally:
                h.release()
            if rc:
                raise _error(rc, res.message)
            _check_total(p, res)
            for a, b in copies:
                b[...] = a
        finally:
            if scratch is not None:
                self._unscratch(scratch)
        self._tls.result = _job_info(res)
        return (out, mask_arr) if mask_arr is not None else out
