"""CUDA (and HIP) views of device memory from Client.device_buffer, with no copy.

    buf = client.device_buffer(nbytes)              # region.alloc: an opaque fd on e.g. vulkan:0
    mem = dropblock.cuda.import_buffer(buf)         # cuImportExternalMemory on the GPU with its UUID
    x = torch.as_tensor(mem.array((64, 1024, 14, 14), "f32"), device="cuda")   # or torch.from_dlpack
    ... write x with CUDA work, torch.cuda.synchronize() ...
    client.dropblock2d(buf.tensor(x.shape), 0.1, 7, seed=1)                    # in place, on the device

The CUDA driver library (libcuda.so.1) or HIP's (libamdhip64.so) is found at run time through
ctypes and never required by the rest of the package. The device is matched by UUID
(cuDeviceGetUuid / hipDeviceGetUuid against DeviceBuffer.device_uuid). Arrays expose
__cuda_array_interface__ (version 3) and DLPack (__dlpack__, __dlpack_device__); they keep the
import alive. Ordering is host-synchronous: synchronize the stream that wrote x before the job;
the job's return means y is complete. Written against NVIDIA's and AMD's documented APIs;
this module has not run on a GPU yet (none was lent: bench/gpu-check.sh runs it when one is).
"""
import ctypes
import ctypes.util
import threading

from ._core import _invalid

__all__ = ["import_buffer", "import_semaphore", "ExternalMemory", "ExternalSemaphore", "CudaArray",
           "driver_available"]

_DTYPES = {"f32": ("<f4", 4, (2, 32)), "f16": ("<f2", 2, (2, 16)), "bf16": ("<u2", 2, (4, 16))}
# (typestr, bytes, (DLPack type code, bits)): kDLFloat 2, kDLBfloat 4


# cuda.h: CUDA_EXTERNAL_MEMORY_HANDLE_DESC and CUDA_EXTERNAL_MEMORY_BUFFER_DESC (the layout is
# checked against the toolkit's header by tests/test_python_device.py where tests/cuda_abi is built)
class _HandleUnion(ctypes.Union):
    _fields_ = [("fd", ctypes.c_int), ("win32", ctypes.c_void_p * 2), ("nvSciBufObject", ctypes.c_void_p)]


class MemoryHandleDesc(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("handle", _HandleUnion), ("size", ctypes.c_ulonglong),
                ("flags", ctypes.c_uint), ("reserved", ctypes.c_uint * 16)]


class BufferDesc(ctypes.Structure):
    _fields_ = [("offset", ctypes.c_ulonglong), ("size", ctypes.c_ulonglong), ("flags", ctypes.c_uint),
                ("reserved", ctypes.c_uint * 16)]


# cuda.h: CUDA_EXTERNAL_SEMAPHORE_HANDLE_DESC, _SIGNAL_PARAMS and _WAIT_PARAMS (HIP's
# hipExternalSemaphore* structs are laid out alike)
class _SemHandleUnion(ctypes.Union):
    _fields_ = [("fd", ctypes.c_int), ("win32", ctypes.c_void_p * 2), ("nvSciSyncObj", ctypes.c_void_p)]


class SemaphoreHandleDesc(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("handle", _SemHandleUnion), ("flags", ctypes.c_uint),
                ("reserved", ctypes.c_uint * 16)]


class _SignalInner(ctypes.Structure):
    _fields_ = [("fence_value", ctypes.c_ulonglong), ("nvSciSync", ctypes.c_ulonglong),
                ("keyedMutex_key", ctypes.c_ulonglong), ("reserved", ctypes.c_uint * 12)]


class SignalParams(ctypes.Structure):
    _fields_ = [("params", _SignalInner), ("flags", ctypes.c_uint), ("reserved", ctypes.c_uint * 16)]


class _WaitInner(ctypes.Structure):
    _fields_ = [("fence_value", ctypes.c_ulonglong), ("nvSciSync", ctypes.c_ulonglong),
                ("keyedMutex_key", ctypes.c_ulonglong), ("keyedMutex_timeoutMs", ctypes.c_uint),
                ("reserved", ctypes.c_uint * 10)]


class WaitParams(ctypes.Structure):
    _fields_ = [("params", _WaitInner), ("flags", ctypes.c_uint), ("reserved", ctypes.c_uint * 16)]


TIMELINE_FD = 9  # CU_EXTERNAL_SEMAPHORE_HANDLE_TYPE_TIMELINE_SEMAPHORE_FD, hipExternalSemaphoreHandleTypeTimelineSemaphoreFd
OPAQUE_FD = 1           # CU_EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD, hipExternalMemoryHandleTypeOpaqueFd
DEDICATED = 1           # CUDA_EXTERNAL_MEMORY_DEDICATED, hipExternalMemoryDedicated

_API = {
    # name: (the CUDA driver's symbol, HIP's)
    "init": ("cuInit", "hipInit"),
    "count": ("cuDeviceGetCount", "hipGetDeviceCount"),
    "get": ("cuDeviceGet", "hipDeviceGet"),
    "uuid": ("cuDeviceGetUuid", "hipDeviceGetUuid"),
    "import": ("cuImportExternalMemory", "hipImportExternalMemory"),
    "mapped": ("cuExternalMemoryGetMappedBuffer", "hipExternalMemoryGetMappedBuffer"),
    "free": ("cuMemFree_v2", "hipFree"),
    "destroy": ("cuDestroyExternalMemory", "hipDestroyExternalMemory"),
    "retain": ("cuDevicePrimaryCtxRetain", None),
    "push": ("cuCtxPushCurrent_v2", None),
    "pop": ("cuCtxPopCurrent_v2", None),
    "set": (None, "hipSetDevice"),
    "sem_import": ("cuImportExternalSemaphore", "hipImportExternalSemaphore"),
    "sem_signal": ("cuSignalExternalSemaphoresAsync", "hipSignalExternalSemaphoresAsync"),
    "sem_wait": ("cuWaitExternalSemaphoresAsync", "hipWaitExternalSemaphoresAsync"),
    "sem_destroy": ("cuDestroyExternalSemaphore", "hipDestroyExternalSemaphore"),
}


class _Driver:
    def __init__(self, name, handle):
        self.name, self.lib = name, handle
        k = 0 if name == "cuda" else 1
        self.fn = {}
        for what, names in _API.items():
            if names[k]:
                self.fn[what] = getattr(handle, names[k])

    def check(self, rc, what):
        if rc != 0:
            raise _invalid("%s: %s failed with error %d" % (self.name, what, rc))


_DRIVER = None
_LOCK = threading.Lock()


def _load():
    global _DRIVER
    with _LOCK:
        if _DRIVER is not None:
            return _DRIVER
        tried = []
        for name, libs in (("cuda", ("libcuda.so.1", ctypes.util.find_library("cuda"))),
                           ("hip", ("libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5"))):
            for path in libs:
                if not path:
                    continue
                try:
                    drv = _Driver(name, ctypes.CDLL(path))
                except (OSError, AttributeError) as e:
                    tried.append("%s: %s" % (path, e))
                    continue
                drv.check(drv.fn["init"](0), "init")
                _DRIVER = drv
                return drv
        raise _invalid("no CUDA driver (libcuda.so.1) or HIP runtime (libamdhip64.so) here: " + "; ".join(tried))


def driver_available():
    """Whether a CUDA driver or HIP runtime can be loaded (and initialised) here."""
    try:
        _load()
        return True
    except Exception:  # noqa: BLE001 - any failure means no
        return False


class ExternalMemory:
    """A DeviceBuffer's memory imported into CUDA (or HIP) on the GPU with its UUID: ptr (a device
    pointer over the whole buffer), ordinal (the CUDA/HIP device index). Freed by close() or when
    the last array over it is gone."""

    def __init__(self, buf, drv, ordinal, ptr, ext, ctx):
        self.buffer, self.driver, self.ordinal, self.ptr = buf, drv, ordinal, ptr
        self._ext, self._ctx, self._closed = ext, ctx, False
        self.size = buf.size

    def array(self, shape, dtype="f32", offset=0):
        """A CudaArray of shape and dtype at offset bytes (what buf.tensor(shape, dtype, offset) names)."""
        if dtype not in _DTYPES:
            raise _invalid("dtype %r: one of f32, f16, bf16" % (dtype,))
        n = 1
        for d in shape:
            n *= int(d)
        if offset < 0 or offset + n * _DTYPES[dtype][1] > self.size:
            raise _invalid("an array of %d bytes at offset %d passes the buffer's %d" % (n * _DTYPES[dtype][1],
                                                                                         offset, self.size))
        return CudaArray(self, tuple(int(d) for d in shape), dtype, offset)

    def close(self):
        if self._closed:
            return
        self._closed = True
        f = self.driver.fn
        with _current(self.driver, self._ctx):
            f["free"](ctypes.c_void_p(self.ptr))
            f["destroy"](self._ext)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _device_of(drv, obj):
    """The ordinal and device handle of the CUDA/HIP device whose UUID is obj.device_uuid."""
    f = drv.fn
    count = ctypes.c_int()
    drv.check(f["count"](ctypes.byref(count)), "device count")
    ordinal = dev = None
    for i in range(count.value):
        d = ctypes.c_int()
        drv.check(f["get"](ctypes.byref(d), i), "device %d" % i)
        u = (ctypes.c_ubyte * 16)()
        drv.check(f["uuid"](u, d), "device %d's UUID" % i)
        if bytes(u) == obj.device_uuid:
            ordinal, dev = i, d
            break
    if ordinal is None:
        raise _invalid("no %s device has %s's UUID %s" % (drv.name, obj.device, obj.device_uuid.hex()))
    return ordinal, dev


def import_buffer(buf):
    """buf (a DeviceBuffer) imported into CUDA or HIP: an ExternalMemory. Takes buf's descriptor."""
    drv = _load()
    f = drv.fn
    ordinal, dev = _device_of(drv, buf)
    ctx = ctypes.c_void_p()
    if drv.name == "cuda":
        drv.check(f["retain"](ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        drv.check(f["push"](ctx), "cuCtxPushCurrent")
    else:
        drv.check(f["set"](ordinal), "hipSetDevice")
    try:
        hd = MemoryHandleDesc()
        hd.type = OPAQUE_FD
        hd.handle.fd = buf.fd
        hd.size = buf.allocation_size
        hd.flags = DEDICATED if buf.dedicated else 0
        ext = ctypes.c_void_p()
        drv.check(f["import"](ctypes.byref(ext), ctypes.byref(hd)), "import of the descriptor")
        buf.take_fd()  # the driver owns it now
        bd = BufferDesc()
        bd.offset, bd.size = 0, buf.size
        ptr = ctypes.c_uint64()
        drv.check(f["mapped"](ctypes.byref(ptr), ext, ctypes.byref(bd)), "mapped buffer")
    finally:
        if drv.name == "cuda":
            f["pop"](ctypes.byref(ctypes.c_void_p()))
    return ExternalMemory(buf, drv, ordinal, ptr.value, ext, ctx)


class _current:
    """CUDA: ctx made current around driver calls that need one (cuImportExternalSemaphore,
    frees and destroys); HIP: nothing (its runtime keeps a current device)."""

    def __init__(self, drv, ctx):
        self.drv, self.ctx = drv, ctx

    def __enter__(self):
        if self.drv.name == "cuda" and self.ctx is not None:
            self.drv.check(self.drv.fn["push"](self.ctx), "cuCtxPushCurrent")

    def __exit__(self, *exc):
        if self.drv.name == "cuda" and self.ctx is not None:
            self.drv.fn["pop"](ctypes.byref(ctypes.c_void_p()))


class ExternalSemaphore:
    """A Semaphore (Client.semaphore, exported) imported into CUDA (or HIP): signal(value, stream)
    and wait(value, stream) enqueue on a stream (a CUstream/hipStream_t handle as an int, 0: the
    default; torch: torch.cuda.current_stream().cuda_stream), so that the stream, not the host,
    waits for a job's signal and the job for the stream's writes."""

    def __init__(self, sem, drv, ext, ctx=None):
        self.semaphore, self.driver, self._ext, self._ctx, self._closed = sem, drv, ext, ctx, False

    def signal(self, value, stream=0):
        p = SignalParams()
        p.params.fence_value = int(value)
        with _current(self.driver, self._ctx):
            self.driver.check(self.driver.fn["sem_signal"](ctypes.byref(self._ext), ctypes.byref(p), 1,
                                                           ctypes.c_void_p(stream)), "signal of the semaphore")

    def wait(self, value, stream=0):
        p = WaitParams()
        p.params.fence_value = int(value)
        with _current(self.driver, self._ctx):
            self.driver.check(self.driver.fn["sem_wait"](ctypes.byref(self._ext), ctypes.byref(p), 1,
                                                         ctypes.c_void_p(stream)), "wait for the semaphore")

    def close(self):
        if not self._closed:
            self._closed = True
            with _current(self.driver, self._ctx):
                self.driver.fn["sem_destroy"](self._ext)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def import_semaphore(sem):
    """sem (an exported Semaphore) imported into CUDA or HIP on the device with its UUID: an
    ExternalSemaphore. Takes sem's descriptor."""
    if sem.fd < 0:
        raise _invalid("the semaphore was not exported (Client.semaphore(export=True)), or its descriptor was taken")
    drv = _load()
    ordinal, dev = _device_of(drv, sem)
    ctx = None
    if drv.name == "cuda":
        ctx = ctypes.c_void_p()
        drv.check(drv.fn["retain"](ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    else:
        drv.check(drv.fn["set"](ordinal), "hipSetDevice")
    hd = SemaphoreHandleDesc()
    hd.type = TIMELINE_FD
    hd.handle.fd = sem.fd
    ext = ctypes.c_void_p()
    with _current(drv, ctx):
        drv.check(drv.fn["sem_import"](ctypes.byref(ext), ctypes.byref(hd)), "import of the semaphore's descriptor")
    sem.take_fd()  # the driver owns it now
    return ExternalSemaphore(sem, drv, ext, ctx)


# ---- DLPack (dlpack.h, version 0.8 ABI: DLManagedTensor) -----------------------------------------

class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]
_KDL_CUDA, _KDL_ROCM = 2, 10
_LIVE = {}  # manager_ctx id -> what a consumer's tensor keeps alive until its deleter runs


@_DELETER
def _dl_deleter(managed):
    _LIVE.pop(managed.contents.manager_ctx, None)


class CudaArray:
    """A view of imported device memory: __cuda_array_interface__ (torch.as_tensor, CuPy, Numba)
    and DLPack (torch.from_dlpack). Keeps its ExternalMemory alive."""

    def __init__(self, mem, shape, dtype, offset):
        self.memory, self.shape, self.dtype, self.offset = mem, shape, dtype, offset

    @property
    def ptr(self):
        return self.memory.ptr + self.offset

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": _DTYPES[self.dtype][0], "data": (self.ptr, False),
                "version": 3, "strides": None, "stream": None}  # None: synchronized by the caller

    def __dlpack_device__(self):
        return (_KDL_CUDA if self.memory.driver.name == "cuda" else _KDL_ROCM, self.memory.ordinal)

    def __dlpack__(self, stream=None):
        code, bits = _DTYPES[self.dtype][2]
        shape = (ctypes.c_int64 * len(self.shape))(*self.shape)
        m = _DLManagedTensor()
        m.dl_tensor = _DLTensor(ctypes.c_void_p(self.ptr), _DLDevice(*self.__dlpack_device__()), len(self.shape),
                                _DLDataType(code, bits, 1), ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64)),
                                None, 0)
        key = id(m)
        m.manager_ctx = key
        m.deleter = _dl_deleter
        _LIVE[key] = (m, shape, self)  # alive until the consumer's deleter
        pycapsule_new = ctypes.pythonapi.PyCapsule_New
        pycapsule_new.restype = ctypes.py_object
        pycapsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return pycapsule_new(ctypes.addressof(m), b"dltensor", None)
