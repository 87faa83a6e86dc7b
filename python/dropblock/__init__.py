"""dropblock: Python bindings of dropblockd (bit-exact DropBlock2D and DropBlock3D on CPU, OpenCL
and Vulkan).

    import dropblock
    with dropblock.Client() as client:            # the node's daemon ($DROPBLOCK_SOCKET, ...)
        x = client.array((8, 64, 56, 56), "f32")  # NumPy array in shared memory: no copies
        x[...] = features
        y = client.dropblock2d(x, 0.1, 7, seed=1234, stream=step)
        v = client.dropblock3d(volume, 0.1, (3, 7, 7), seed=1234)   # (N, C, D, H, W)

Pure Python over libdropblock with ctypes. NumPy is needed for arrays and jobs only; the PyTorch
module lives in dropblock.torch and is imported only on request. See python/README.md.
"""
from ._core import (Client, DeviceBuffer, DeviceTensor, Error, Job, JobInfo, Semaphore,  # noqa: F401
                    default_socket, schedule_group, schedule_linear, schedule_rate)
from ._lib import LibraryNotFound  # noqa: F401

__version__ = "0.1.0"
__all__ = ["Client", "DeviceBuffer", "DeviceTensor", "Error", "Job", "JobInfo", "LibraryNotFound", "Semaphore",
           "default_socket", "schedule_linear",
           "schedule_group", "schedule_rate", "library_path"]


def library_path():
    """The path libdropblock was loaded from (loading it if it was not yet)."""
    from . import _lib
    _lib.lib()
    return _lib.LIBRARY_PATH
