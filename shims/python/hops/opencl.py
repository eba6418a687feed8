"""numpy arrays through the OpenCL backend, for tests and quick checks.

`hops.ops.<op>(..., device="opencl")` copies the array arguments into cl_mem
buffers of a context of this module's own, runs the op there and copies the
outputs (and updated decode states) back: explicit copies in and out, so the
call is synchronous and returns numpy arrays like the CPU path. Index arrays
(cu_seqlens, state_indices) stay on the host, where the provider validates them.

The device is the one the plugin picks: HOPS_OPENCL_DEVICE="P:D", "P" or a
case-insensitive part of the platform's name, vendor or version or the
device's name; unset, the first GPU, else the first device (docs/OPENCL.md).
Only libOpenCL.so.1 (ocl-icd) is needed, through ctypes.
"""

import ctypes
import functools
import inspect
import os
import threading

import numpy as np

from ._abi import DL_OPENCL, DLDataType, DLDevice, DLManagedTensor, DLTensor, DL_FLOAT
from .errors import HopsError

_CL_SUCCESS = 0
_CL_DEVICE_TYPE_GPU, _CL_DEVICE_TYPE_ALL = 1 << 2, 0xFFFFFFFF
_CL_PLATFORM_NAME, _CL_PLATFORM_VENDOR, _CL_PLATFORM_VERSION = 0x0902, 0x0903, 0x0901
_CL_DEVICE_TYPE, _CL_DEVICE_NAME = 0x1000, 0x102B
_CL_MEM_READ_WRITE = 1 << 0

_DTYPES = {np.dtype(np.float32): DLDataType(DL_FLOAT, 32, 1), np.dtype(np.float16): DLDataType(DL_FLOAT, 16, 1)}

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

# DLManagedTensors handed out and not yet given back by their consumer's deleter call.
_exported: dict[int, tuple] = {}


@DLManagedTensor._fields_[2][1]
def _release_export(managed) -> None:
    _exported.pop(ctypes.addressof(managed.contents), None)


def _load():
    try:
        lib = ctypes.CDLL("libOpenCL.so.1")
    except OSError as error:
        raise HopsError("HOPS_ERR_UNSUPPORTED", f"device='opencl': no OpenCL ICD loader ({error})") from None
    p, u32, size = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t
    signatures = {
        "clGetPlatformIDs": [u32, ctypes.POINTER(p), ctypes.POINTER(u32)],
        "clGetPlatformInfo": [p, u32, size, p, ctypes.POINTER(size)],
        "clGetDeviceIDs": [p, ctypes.c_uint64, u32, ctypes.POINTER(p), ctypes.POINTER(u32)],
        "clGetDeviceInfo": [p, u32, size, p, ctypes.POINTER(size)],
        "clEnqueueWriteBuffer": [p, p, u32, size, size, p, u32, p, p],
        "clEnqueueReadBuffer": [p, p, u32, size, size, p, u32, p, p],
        "clReleaseMemObject": [p],
    }
    for name, argtypes in signatures.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = ctypes.c_int32
    errcode = ctypes.POINTER(ctypes.c_int32)
    for name, argtypes in {"clCreateContext": [p, u32, ctypes.POINTER(p), p, p, errcode],
                           "clCreateCommandQueue": [p, p, ctypes.c_uint64, errcode],
                           "clCreateBuffer": [p, ctypes.c_uint64, size, p, errcode]}.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = p
    return lib


def _check(status: int, what: str) -> None:
    if status != _CL_SUCCESS:
        raise HopsError("HOPS_ERR_BACKEND", f"device='opencl': {what} failed (OpenCL error {status})")


def _text(query, handle, what: int) -> str:
    buffer = ctypes.create_string_buffer(1024)
    _check(query(handle, what, len(buffer) - 1, buffer, None), query.__name__)
    return buffer.value.decode(errors="replace")


class _Device:
    """The context and in-order queue the shim's buffers live in."""

    def __init__(self):
        self.cl = cl = _load()
        count = ctypes.c_uint32()
        _check(cl.clGetPlatformIDs(0, None, ctypes.byref(count)), "clGetPlatformIDs")
        platforms = (ctypes.c_void_p * count.value)()
        _check(cl.clGetPlatformIDs(count.value, platforms, None), "clGetPlatformIDs")
        candidates = []  # (platform index, device index, handle, is GPU, words)
        for p, platform in enumerate(platforms):
            number = ctypes.c_uint32()
            if cl.clGetDeviceIDs(platform, _CL_DEVICE_TYPE_ALL, 0, None, ctypes.byref(number)) != _CL_SUCCESS:
                continue
            devices = (ctypes.c_void_p * number.value)()
            _check(cl.clGetDeviceIDs(platform, _CL_DEVICE_TYPE_ALL, number.value, devices, None), "clGetDeviceIDs")
            for d, device in enumerate(devices):
                kind = ctypes.c_uint64()
                _check(cl.clGetDeviceInfo(device, _CL_DEVICE_TYPE, 8, ctypes.byref(kind), None), "clGetDeviceInfo")
                words = "\n".join([_text(cl.clGetPlatformInfo, platform, what) for what in
                                   (_CL_PLATFORM_NAME, _CL_PLATFORM_VENDOR, _CL_PLATFORM_VERSION)] +
                                  [_text(cl.clGetDeviceInfo, device, _CL_DEVICE_NAME)])
                candidates.append((p, d, device, bool(kind.value & _CL_DEVICE_TYPE_GPU), words.lower()))
        self.device = self._choose(candidates, os.environ.get("HOPS_OPENCL_DEVICE", ""))
        status = ctypes.c_int32()
        device = ctypes.c_void_p(self.device)
        self.context = cl.clCreateContext(None, 1, ctypes.byref(device), None, None, ctypes.byref(status))
        _check(status.value, "clCreateContext")
        self.queue = cl.clCreateCommandQueue(self.context, self.device, 0, ctypes.byref(status))
        _check(status.value, "clCreateCommandQueue")

    @staticmethod
    def _choose(candidates, wanted: str):
        for p, d, device, gpu, words in candidates:
            if wanted == "":
                match = gpu
            elif all(c.isdigit() or c == ":" for c in wanted):
                match = wanted in (f"{p}:{d}", str(p) if d == 0 else None)
            else:
                match = wanted.lower() in words
            if match:
                return device
        if wanted == "" and candidates:
            return candidates[0][2]
        raise HopsError("HOPS_ERR_UNSUPPORTED",
                        f"device='opencl': no OpenCL device matches HOPS_OPENCL_DEVICE={wanted!r}")


_device: _Device | None = None
_lock = threading.Lock()


def _the_device() -> _Device:
    global _device
    with _lock:
        if _device is None:
            _device = _Device()
        return _device


class DeviceArray:
    """A contiguous cl_mem buffer with a shape and dtype, exported through DLPack
    (kDLOpenCL, data = the cl_mem). Made by to_device() and by the shim's output
    allocation when an op's inputs are DeviceArrays."""

    def __init__(self, shape, dtype):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DTYPES:
            raise HopsError("HOPS_ERR_UNSUPPORTED", f"device='opencl': dtype {self.dtype} (numpy has f32 and f16)")
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._device = device = _the_device()
        status = ctypes.c_int32()
        self.buffer = device.cl.clCreateBuffer(device.context, _CL_MEM_READ_WRITE, max(self.nbytes, 1), None,
                                               ctypes.byref(status))
        _check(status.value, "clCreateBuffer")

    def __del__(self):
        if getattr(self, "buffer", None):
            self._device.cl.clReleaseMemObject(self.buffer)

    def write(self, array: np.ndarray) -> None:
        data = np.ascontiguousarray(array, dtype=self.dtype)
        if self.nbytes:
            _check(self._device.cl.clEnqueueWriteBuffer(self._device.queue, self.buffer, 1, 0, self.nbytes,
                                                        data.ctypes.data, 0, None, None), "clEnqueueWriteBuffer")

    def numpy(self) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype)
        if self.nbytes:
            _check(self._device.cl.clEnqueueReadBuffer(self._device.queue, self.buffer, 1, 0, self.nbytes,
                                                       out.ctypes.data, 0, None, None), "clEnqueueReadBuffer")
        return out

    def __dlpack_device__(self):
        return (DL_OPENCL, 0)

    def __dlpack__(self, max_version=None, stream=None, dl_device=None, copy=None):
        """A legacy "dltensor" capsule of the buffer (compact: strides NULL). The
        consumer's deleter call drops the export; the buffer stays self's."""
        managed = DLManagedTensor()
        shape = (ctypes.c_int64 * max(len(self.shape), 1))(*self.shape)
        managed.dl_tensor = DLTensor(self.buffer, DLDevice(DL_OPENCL, 0), len(self.shape), _DTYPES[self.dtype],
                                     shape, None, 0)
        managed.deleter = _release_export
        _exported[ctypes.addressof(managed)] = (managed, shape, self)
        return _capsule_new(ctypes.addressof(managed), b"dltensor", None)

    def empty(self, shape, dtype=None) -> "DeviceArray":
        """An uninitialised DeviceArray on the same device (outputs of an op)."""
        return DeviceArray(shape, dtype or self.dtype)


def to_device(array) -> DeviceArray:
    array = np.asarray(array)
    out = DeviceArray(array.shape, array.dtype)
    out.write(array)
    return out


# Arguments that a device call leaves on the host, and those it updates in place.
_HOST_ARGUMENTS = {"cu_seqlens", "state_indices", "cu_seqlens_q", "cu_seqlens_k", "block_table", "seq_lens",
                   "slot_mapping", "seq_idx", "cache_seqlens"}
_IN_PLACE = {"state", "k_cache", "v_cache"}


def _to_host(result):
    if isinstance(result, DeviceArray):
        return result.numpy()
    if isinstance(result, tuple):
        return tuple(_to_host(r) for r in result)
    return result


def run(function, args, kwargs):
    """Runs a hops.ops wrapper with its array arguments copied to the device, then
    copies the outputs and the states it updated in place back."""
    bound = inspect.signature(function).bind(*args, **kwargs)
    copied = {}  # name -> (the caller's array, its device copy)
    for name, value in bound.arguments.items():
        if isinstance(value, np.ndarray) and name not in _HOST_ARGUMENTS:
            bound.arguments[name] = to_device(value)
            copied[name] = (value, bound.arguments[name])
    result = function(*bound.args, **bound.kwargs)
    for name in _IN_PLACE & copied.keys():
        original, on_device = copied[name]
        np.copyto(original, on_device.numpy())
    return _to_host(result)


def device_option(function):
    """Adds device=None|"cpu"|"opencl" to a hops.ops wrapper."""

    @functools.wraps(function)
    def call(*args, device=None, **kwargs):
        if device in (None, "cpu"):
            return function(*args, **kwargs)
        if device != "opencl":
            raise HopsError("HOPS_ERR_UNSUPPORTED", f"{function.__name__}: device={device!r}: 'cpu' or 'opencl'")
        return run(function, args, kwargs)

    return call
