"""ctypes mirror of include/dropblock/dropblock.h and the loader of libdropblock.

The library is looked for, in order, at
  1. $DROPBLOCK_LIBRARY (a path to libdropblock.so),
  2. libdropblock.so beside this file (the package as `pip install .` at the repository root
     builds it: meson.build's python_package option puts the library inside),
  3. build/client/libdropblock.so in the build tree: in a folder above this file or above the
     current directory (a source checkout built with meson into "build"),
  4. the system's libraries (ctypes.util.find_library("dropblock"), then "libdropblock.so").
"""
import ctypes
import ctypes.util
import os
import threading

# ---- the C types (dropblock.h); tests/test_python.py checks sizes and offsets against the compiler

c_enum = ctypes.c_int  # every enum of dropblock.h fits an int, which is what C compilers give it


class Params(ctypes.Structure):
    """struct dropblock_params"""
    _fields_ = [
        ("shape", ctypes.c_uint64 * 4),
        ("layout", c_enum),
        ("dtype", c_enum),
        ("rate", ctypes.c_float),
        ("block", ctypes.c_uint64 * 2),
        ("seed", ctypes.c_uint64),
        ("stream", ctypes.c_uint64),
        ("normalize", c_enum),
        ("share", ctypes.c_uint),
        ("mode", c_enum),
        ("compat", c_enum),
        ("training", ctypes.c_int),
        ("has_position", ctypes.c_int),
        ("position", ctypes.c_uint64),
        ("depth", ctypes.c_uint64),
        ("block_depth", ctypes.c_uint64),
    ]


class Result(ctypes.Structure):
    """struct dropblock_result"""
    _fields_ = [
        ("kept", ctypes.c_uint64),
        ("total", ctypes.c_uint64),
        ("scale_bits", ctypes.c_uint32),
        ("device", ctypes.c_char * 64),
        ("timing_us", ctypes.c_uint64 * 4),
        ("message", ctypes.c_char * 256),
    ]


class DeviceInfo(ctypes.Structure):
    """struct dropblock_device_info"""
    _fields_ = [
        ("id", ctypes.c_char * 32),
        ("api", ctypes.c_char * 16),
        ("vendor", ctypes.c_char * 64),
        ("name", ctypes.c_char * 128),
        ("driver", ctypes.c_char * 64),
        ("uuid", ctypes.c_char * 40),
        ("kind", c_enum),
        ("max_buffer", ctypes.c_uint64),
        ("global_mem", ctypes.c_uint64),
        ("healthy", ctypes.c_int),
        ("can_export", ctypes.c_int),
        ("semaphores", ctypes.c_int),
        ("semaphore_export", ctypes.c_int),
    ]


class LocalOptions(ctypes.Structure):
    """struct dropblock_local_options"""
    _fields_ = [
        ("backends", ctypes.c_char_p),
        ("cache_dir", ctypes.c_char_p),
    ]


class ConnectOptions(ctypes.Structure):
    """struct dropblock_connect_options"""
    _fields_ = [
        ("socket_path", ctypes.c_char_p),
        ("timeout_ms", ctypes.c_int),
        ("job_timeout_ms", ctypes.c_int),
    ]


class Limits(ctypes.Structure):
    """struct dropblock_limits"""
    _fields_ = [
        ("max_region_bytes", ctypes.c_uint64),
        ("max_client_bytes", ctypes.c_uint64),
        ("max_client_jobs", ctypes.c_uint64),
        ("mem_available", ctypes.c_uint64),
    ]


class DeviceBuffer(ctypes.Structure):
    """struct dropblock_device_buffer"""
    _fields_ = [
        ("fd", ctypes.c_int),
        ("size", ctypes.c_uint64),
        ("allocation_size", ctypes.c_uint64),
        ("memory_type_index", ctypes.c_uint32),
        ("dedicated", ctypes.c_int),
        ("host_mappable", ctypes.c_int),
        ("handle_type", ctypes.c_char * 16),
        ("device", ctypes.c_char * 32),
        ("device_uuid", ctypes.c_uint8 * 16),
        ("driver_uuid", ctypes.c_uint8 * 16),
        ("region", ctypes.c_uint32),
        ("conn_gen", ctypes.c_uint64),
        ("local", ctypes.c_void_p),
        ("local_dev", ctypes.c_int),
    ]


class Ref(ctypes.Structure):
    """struct dropblock_ref"""
    _fields_ = [
        ("buffer", ctypes.POINTER(DeviceBuffer)),
        ("ptr", ctypes.c_void_p),
        ("offset", ctypes.c_uint64),
    ]


DEFAULT_TIMEOUT_MS = 10000  # DROPBLOCK_DEFAULT_TIMEOUT_MS

STRUCTS = {"dropblock_params": Params, "dropblock_result": Result,
           "dropblock_device_info": DeviceInfo, "dropblock_local_options": LocalOptions,
           "dropblock_connect_options": ConnectOptions, "dropblock_limits": Limits,
           "dropblock_device_buffer": DeviceBuffer, "dropblock_ref": Ref}

# enum values and names (dropblock.h)
LAYOUTS = {"NCHW": 0, "NHWC": 1}
DTYPES = {"f32": 0, "f16": 1, "bf16": 2}
NORMALIZE = {"global": 0, "sample": 1, "none": 2}
MODES = {"forward": 0, "backward": 1}
COMPAT = {"none": 0, "keras_cv": 1, "keras3": 2}
SHARE = {"channels": 1, "batch": 2}
EINVAL, ENOTFOUND, ERANGE, EEXHAUSTED, EUNAVAILABLE, EPERM, EINTERNAL, ETIMEDOUT = range(-1, -9, -1)

_handle_p = ctypes.c_void_p
_P = ctypes.POINTER

_PROTOTYPES = {
    # name: (restype, argtypes)
    "dropblock_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "dropblock_error_name": (ctypes.c_char_p, [ctypes.c_int]),
    "dropblock_params_init": (None, [_P(Params)]),
    "dropblock_params_validate": (ctypes.c_int, [_P(Params), ctypes.c_char_p, ctypes.c_size_t]),
    "dropblock_numel": (ctypes.c_uint64, [_P(Params)]),
    "dropblock_tensor_bytes": (ctypes.c_uint64, [_P(Params)]),
    "dropblock_mask_bytes": (ctypes.c_uint64, [_P(Params)]),
    "dropblock_schedule_linear": (ctypes.c_int, [ctypes.c_float, ctypes.c_uint64, ctypes.c_uint64,
                                                 _P(ctypes.c_float)]),
    "dropblock_schedule_group": (ctypes.c_int, [ctypes.c_float, ctypes.c_int, _P(ctypes.c_float)]),
    "dropblock_schedule_rate": (ctypes.c_float, [ctypes.c_float, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int]),
    "dropblock_default_socket": (None, [ctypes.c_char_p, ctypes.c_size_t]),
    "dropblock_device_kind_name": (ctypes.c_char_p, [c_enum]),
    "dropblock_open_local": (ctypes.c_int, [_P(_handle_p), _P(LocalOptions), ctypes.c_char_p, ctypes.c_size_t]),
    "dropblock_connect": (ctypes.c_int, [_P(_handle_p), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]),
    "dropblock_connect_opts": (ctypes.c_int, [_P(_handle_p), _P(ConnectOptions), ctypes.c_char_p, ctypes.c_size_t]),
    "dropblock_get_limits": (ctypes.c_int, [_handle_p, _P(Limits)]),
    "dropblock_close": (None, [_handle_p]),
    "dropblock_is_remote": (ctypes.c_int, [_handle_p]),
    "dropblock_devices": (ctypes.c_int, [_handle_p, _P(DeviceInfo), ctypes.c_size_t, _P(ctypes.c_size_t)]),
    "dropblock_alloc": (ctypes.c_int, [_handle_p, ctypes.c_size_t, _P(ctypes.c_void_p)]),
    "dropblock_alloc_msg": (ctypes.c_int, [_handle_p, ctypes.c_size_t, _P(ctypes.c_void_p), ctypes.c_char_p,
                                           ctypes.c_size_t]),
    "dropblock_free": (ctypes.c_int, [_handle_p, ctypes.c_void_p]),
    "dropblock_run": (ctypes.c_int, [_handle_p, _P(Params), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_char_p, _P(Result)]),
    "dropblock_device_alloc": (ctypes.c_int, [_handle_p, ctypes.c_char_p, ctypes.c_uint64, _P(DeviceBuffer),
                                              ctypes.c_char_p, ctypes.c_size_t]),
    "dropblock_device_free": (ctypes.c_int, [_handle_p, _P(DeviceBuffer)]),
    "dropblock_run_ref": (ctypes.c_int, [_handle_p, _P(Params), Ref, Ref, ctypes.c_void_p, ctypes.c_char_p,
                                         _P(Result)]),
    "dropblock_status": (ctypes.c_int, [_handle_p, ctypes.c_char_p, ctypes.c_size_t]),
    "dropblock_shutdown": (ctypes.c_int, [_handle_p, ctypes.c_char_p, ctypes.c_size_t]),
}

_LIB = None
_LIB_LOCK = threading.Lock()
LIBRARY_PATH = None  # where the loaded library came from


class LibraryNotFound(OSError):
    pass


def _candidates():
    env = os.environ.get("DROPBLOCK_LIBRARY")
    if env:
        yield env, "$DROPBLOCK_LIBRARY"
        return  # an explicit choice is never second-guessed
    here = os.path.dirname(os.path.abspath(__file__))
    bundled = os.path.join(here, "libdropblock.so")
    if os.path.exists(bundled):
        yield bundled, "the package"
    seen = set()
    for start in (here, os.getcwd()):
        d = start
        while d not in seen:
            seen.add(d)
            p = os.path.join(d, "build", "client", "libdropblock.so")
            if os.path.exists(p):
                yield p, "the build tree"
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
    name = ctypes.util.find_library("dropblock")
    if name:
        yield name, "the system"
    yield "libdropblock.so", "the dynamic loader's path"
    yield "libdropblock.so.0", "the dynamic loader's path"


def lib():
    """The loaded libdropblock (loaded on first use), with every prototype declared."""
    global _LIB, LIBRARY_PATH
    if _LIB is not None:
        return _LIB
    with _LIB_LOCK:
        if _LIB is not None:
            return _LIB
        tried = []
        for path, where in _candidates():
            try:
                handle = ctypes.CDLL(path)
            except OSError as e:
                tried.append("%s (%s): %s" % (path, where, e))
                continue
            for name, (restype, argtypes) in _PROTOTYPES.items():
                fn = getattr(handle, name)
                fn.restype, fn.argtypes = restype, argtypes
            LIBRARY_PATH = path
            _LIB = handle
            return handle
        raise LibraryNotFound(
            "libdropblock not found; set DROPBLOCK_LIBRARY to its path (e.g. build/client/libdropblock.so "
            "after `meson setup build && ninja -C build`) or install it (`pip install .` at the repository root "
            "puts it inside the package). Tried:\n  " + "\n  ".join(tried))
