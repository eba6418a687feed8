"""What the shim knows of each array library (numpy, torch, cupy, any other
`__dlpack__` producer), as one policy object per library, `Framework`:

- `placement(x)`: where a call whose first tensor is x runs — the DLPack device,
  the stream (the library's *current* stream, so hops is ordered like the
  library's own kernels), the DLPack stream argument for exporting its arrays,
  and whether scratch should come from the library's allocator. None: exec NULL,
  the plugin's default (host memory, and device arrays of libraries without a
  stream policy, which the protocol's default export orders).
- `describe(x)`: the DLTensor fields of x read straight from the library
  (pointer, shape, strides), or None to go through `__dlpack__`.
- allocating outputs, float32 conversions and index arrays in x's library.

The bindings are handed the policy (`framework_of`) and hard-code no library.
This module is a leaf: it imports torch and cupy only when the caller already
has (sys.modules), and no hops module above _abi.
"""

import contextlib
import ctypes
import math
import sys
import threading
from typing import NamedTuple

import numpy as np

from . import _abi
from ._dlpack import NO_SYNC
from ._host_memory import huge_page_bytes


class Placement(NamedTuple):
    device_type: int  # DLDeviceType of the call
    device_id: int
    stream: int  # the library's current stream on that device (0: the default stream)
    export_stream: object  # DLPack `stream` argument for this library's arrays on the device
    scope: object  # callable -> context manager making the device current (for exports), or None
    allocator: str | None  # "torch": device scratch through torch's caching allocator


# describe() returns a plain tuple (a NamedTuple would cost more than the rest of it):
# (data, device_type, device_id, dtype code, dtype bits, shape, strides in elements, read_only)
Described = tuple


class Slot:
    """Where a call plan packs one tensor argument: a DLTensor at `offset` in `buffer`
    (_abi.DLTENSOR_BLOCKS: its shape and strides at fixed addresses after it).

    `layout` is a framework's key for everything the last write put there but the data
    pointer (dtype, shape, strides; None: nothing to reuse): a call whose tensor has
    the layout of the previous call's on this slot rewrites the pointer alone, which
    is most calls (a decode step repeats its shapes)."""

    __slots__ = ("buffer", "offset", "address", "shape_at", "strides_at", "data", "layout")

    def __init__(self, buffer, offset: int):
        self.buffer, self.offset = buffer, offset
        self.address = ctypes.addressof(buffer) + offset
        self.shape_at = self.address + _abi.DLTENSOR_HEAD_BYTES
        self.strides_at = self.shape_at + 8 * _abi.MAX_DIMS
        self.data = ctypes.c_uint64.from_buffer(buffer, offset)  # the DLTensor's data field
        self.layout = None

    def write(self, data, device_type, device_id, code, bits, shape, strides, layout) -> None:
        """The whole DLTensor (at most MAX_DIMS dims), `layout` its key for reuse."""
        _abi.DLTENSOR_BLOCKS[len(shape)].pack_into(self.buffer, self.offset, data, device_type, device_id,
                                                   len(shape), code, bits, 1, self.shape_at, self.strides_at, 0,
                                                   *shape, *strides)
        self.layout = layout


class Framework:
    """Any `__dlpack__` producer: exec NULL and the protocol's default export."""

    name = "dlpack"
    runs = True  # False: arrays that calls are only asked about (supports_call), never run on

    def placement(self, x) -> Placement | None:
        return None

    def describe(self, x) -> Described | None:
        return None

    def pack(self, x, slot: Slot) -> bool | None:
        """Writes x's DLTensor into `slot`; returns whether x is read-only, or None when
        x must go through __dlpack__ instead."""
        return self._pack_described(x, slot, None)

    def _pack_described(self, x, slot: Slot, layout) -> bool | None:
        """pack() through describe(); `layout`: the key under which a later call may reuse the slot."""
        described = self.describe(x)
        if described is None or len(described[5]) > _abi.MAX_DIMS:
            return None
        data, device_type, device_id, code, bits, shape, strides, read_only = described
        slot.write(data, device_type, device_id, code, bits, shape, strides, layout)
        return read_only

    def empty(self, like, shape, dtype):
        if hasattr(like, "empty"):
            return like.empty(shape, dtype)  # hops.opencl.DeviceArray
        return numpy_empty(shape, dtype or like.dtype)

    def empty_like(self, x, dtype):
        if hasattr(x, "empty"):
            return x.empty(x.shape, dtype)
        return np.empty_like(x, dtype=dtype)


class Numpy(Framework):
    name = "numpy"
    _DTYPES = {np.dtype(name): bits for name, bits in _abi.FLOAT_DTYPES.items() if name != "bfloat16"}
    _DTYPES.update({np.dtype(np.int32): (_abi.DL_INT, 32), np.dtype(np.int64): (_abi.DL_INT, 64)})

    def describe(self, x) -> Described | None:
        dtype = self._DTYPES.get(x.dtype)
        if dtype is None:
            return None
        interface = x.__array_interface__  # data: (pointer, read_only); strides None when C-contiguous
        shape, itemsize, byte_strides = x.shape, x.itemsize, interface["strides"]
        if byte_strides is None:
            strides, step = [], 1
            for extent in reversed(shape):
                strides.append(step)
                step *= extent
            strides.reverse()
        elif any(stride % itemsize for stride in byte_strides):
            return None  # not expressible in elements: __dlpack__ refuses it as it always did
        else:
            strides = [stride // itemsize for stride in byte_strides]
        pointer, read_only = interface["data"]
        return (pointer, _abi.DL_CPU, 0, *dtype, shape, tuple(strides), read_only)

    def pack(self, x, slot: Slot) -> bool | None:
        layout = (self, x.dtype, x.shape, x.strides)  # byte strides: the element strides follow from them
        if layout != slot.layout:
            return self._pack_described(x, slot, layout)
        data, read_only = x.__array_interface__["data"]
        slot.data.value = data
        return read_only

    def empty(self, like, shape, dtype):
        return numpy_empty(shape, dtype or like.dtype)

    def empty_like(self, x, dtype):
        if x.flags.c_contiguous:
            return numpy_empty(x.shape, dtype or x.dtype)
        return np.empty_like(x, dtype=dtype)  # keeps x's memory order


class Torch(Framework):
    """torch tensors. CUDA tensors run on torch's current stream of their device; a
    ROCm build's tensors (device.type 'cuda', torch.version.hip set) are kDLROCM."""

    name = "torch"

    def __init__(self, torch):
        self.torch = torch
        self._dtypes = {getattr(torch, name): bits for name, bits in _abi.FLOAT_DTYPES.items()}
        self._dtypes.update({torch.int32: (_abi.DL_INT, 32), torch.int64: (_abi.DL_INT, 64)})
        self._strided = torch.strided
        self._empty_like = torch.empty_like

    def device_type(self, device) -> int | None:
        """DLDeviceType of a torch device (None: none hops names)."""
        if device.type == "cuda":
            return _abi.DL_ROCM if self.torch.version.hip else _abi.DL_CUDA
        return {"cpu": _abi.DL_CPU}.get(device.type)

    def placement(self, x) -> Placement | None:
        if x.is_cpu:
            return None
        device = x.device
        device_type = self.device_type(device)
        if device_type is None:
            return None  # meta, mps, ...: the export says what is wrong
        index, cuda = device.index, self.torch.cuda
        # hops runs on torch's current stream: after the kernels that produced its inputs and
        # before those that read its outputs, with no synchronisation (DLPack stream -1).
        return Placement(device_type, index, cuda.current_stream(index).cuda_stream, NO_SYNC,
                         lambda: cuda.device(index), "torch")

    def describe(self, x) -> Described | None:
        dtype = self._dtypes.get(x.dtype)
        if dtype is None or x.layout is not self._strided:
            return None
        if x.is_cpu:
            device_type, device_id = _abi.DL_CPU, 0
        else:
            device = x.device
            device_type = self.device_type(device)
            if device_type is None:
                return None
            device_id = device.index
        # DLPack's export of a torch tensor: data_ptr() (storage offset included), byte_offset 0,
        # strides in elements as torch keeps them; torch has no read-only tensors.
        return (x.data_ptr(), device_type, device_id, *dtype, x.shape, x.stride(), False)

    def pack(self, x, slot: Slot) -> bool | None:
        if not x.is_cpu:
            return super().pack(x, slot)  # devices: describe() says
        try:  # the hot path (CPU tensors), describe() inlined
            layout, data = (self, x.dtype, x.shape, x.stride()), x.data_ptr()
        except RuntimeError:  # sparse and other layouts have no strides or no data pointer
            return None
        if layout == slot.layout:
            slot.data.value = data
            return False
        dtype = self._dtypes.get(layout[1])
        if dtype is None or len(layout[2]) > _abi.MAX_DIMS:
            return None
        slot.write(data, _abi.DL_CPU, 0, *dtype, layout[2], layout[3], layout)
        return False

    def empty(self, like, shape, dtype):
        torch = self.torch
        dtype = getattr(torch, dtype) if dtype else like.dtype
        out = self._on_huge_pages(like, shape, dtype)
        return out if out is not None else torch.empty(tuple(shape), dtype=dtype, device=like.device)

    def empty_like(self, x, dtype):
        if x.is_contiguous():
            out = self._on_huge_pages(x, x.shape, getattr(self.torch, dtype) if dtype else x.dtype)
            if out is not None:
                return out
        return self._empty_like(x, dtype=getattr(self.torch, dtype)) if dtype else self._empty_like(x)

    def _on_huge_pages(self, like, shape, dtype):
        """A large CPU tensor on huge pages (hops._host_memory), None for any other: plain
        tensors only, so fake and functional tensors of a trace keep torch's allocation."""
        if type(like) is not self.torch.Tensor or like.device.type != "cpu":
            return None
        raw = huge_page_bytes(math.prod(shape) * dtype.itemsize)
        return None if raw is None else self.torch.from_numpy(raw).view(dtype).view(tuple(shape))


class Cupy(Framework):
    """cupy arrays run on cupy's current stream of their device (cupy.cuda.get_current_stream)."""

    name = "cupy"

    def __init__(self, cupy):
        self.cupy = cupy

    def placement(self, x) -> Placement | None:
        device_type, device_id = x.__dlpack_device__()
        if device_type not in (_abi.DL_CUDA, _abi.DL_ROCM):
            return None
        cuda = self.cupy.cuda
        with cuda.Device(device_id):  # the current stream is per device
            stream = cuda.get_current_stream().ptr
        return Placement(int(device_type), int(device_id), stream, NO_SYNC, lambda: cuda.Device(device_id), None)

    def empty(self, like, shape, dtype):
        with self.cupy.cuda.Device(like.device.id):
            return self.cupy.empty(tuple(shape), dtype=dtype or like.dtype)

    def empty_like(self, x, dtype):
        return self.cupy.empty_like(x, dtype=dtype)


class TensorSpec:
    """A tensor known only by its metadata (a torch.compile trace has no data): what a
    call would be given, for asking the provider (supports_call) without running."""

    __slots__ = ("shape", "strides", "dtype", "device_type", "device_id", "byte_offset", "address")

    def __init__(self, shape, strides, dtype: str, device_type: int, device_id: int = 0, byte_offset: int = 0):
        self.shape, self.strides, self.dtype = tuple(shape), tuple(strides), dtype
        self.device_type, self.device_id, self.byte_offset = device_type, device_id, byte_offset
        bits = (_abi.FLOAT_DTYPES.get(dtype) or (0, int(dtype.removeprefix("int"))))[1]
        last = sum((extent - 1) * abs(stride) for extent, stride in zip(self.shape, self.strides) if extent > 0)
        self.address = _addresses.reserve(byte_offset + (last + 1) * bits // 8)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def empty(self, shape, dtype=None) -> "TensorSpec":
        return TensorSpec(shape, contiguous_strides(shape), dtype or self.dtype, self.device_type, self.device_id)

    def empty_like(self, dtype=None) -> "TensorSpec":
        """As torch.empty_like: x's strides when x is dense, else contiguous."""
        strides = self.strides if _dense(self.shape, self.strides) else contiguous_strides(self.shape)
        return TensorSpec(self.shape, strides, dtype or self.dtype, self.device_type, self.device_id)


class _Addresses:
    """Made-up, never dereferenced addresses for TensorSpecs: each spec its own range
    (as separate allocations have), aligned as a fresh allocation is, so that the
    provider's aliasing checks see distinct tensors."""

    _START, _END, _ALIGN = 1 << 40, 1 << 58, 1 << 12

    def __init__(self):
        self._next, self._lock = self._START, threading.Lock()

    def reserve(self, size: int) -> int:
        with self._lock:
            if self._next + size >= self._END:
                self._next = self._START  # long after the specs of one query are gone
            address = self._next
            self._next += (size + self._ALIGN) // self._ALIGN * self._ALIGN
            return address


_addresses = _Addresses()


def contiguous_strides(shape) -> tuple:
    strides, step = [], 1
    for extent in reversed(tuple(shape)):
        strides.append(step)
        step *= max(int(extent), 1)
    return tuple(reversed(strides))


def _dense(shape, strides) -> bool:
    """Whether the elements fill a block with no gaps or overlaps, in some dim order."""
    step = 1
    for extent, stride in sorted(zip(shape, strides), key=lambda dim: dim[1]):
        if extent != 1 and stride != step:
            return False
        step *= extent
    return True


class Specs(Framework):
    """TensorSpecs: described with a made-up address (aligned as a fresh allocation is),
    never run: calls on them are only asked about."""

    name = "spec"
    runs = False

    def placement(self, x) -> Placement | None:
        if x.device_type == _abi.DL_CPU:
            return None
        return Placement(x.device_type, x.device_id, 0, None, None, None)

    def describe(self, x) -> Described | None:
        code, bits = _abi.FLOAT_DTYPES.get(x.dtype) or (_abi.DL_INT, int(x.dtype.removeprefix("int")))
        return (x.address + x.byte_offset, x.device_type, x.device_id, code, bits, x.shape, x.strides, False)

    def empty(self, like, shape, dtype):
        return like.empty(shape, dtype)

    def empty_like(self, x, dtype):
        return x.empty_like(dtype)


NUMPY = Numpy()
DLPACK = Framework()
frameworks_by_type: dict[type, Framework] = {np.ndarray: NUMPY, TensorSpec: Specs()}  # cache of framework_of


def framework_of(x) -> Framework:
    """The policy of x's library (looked up by type, cached)."""
    kind = type(x)
    framework = frameworks_by_type.get(kind)
    if framework is None:
        framework = frameworks_by_type[kind] = _classify(kind)
    return framework


def _classify(kind: type) -> Framework:
    torch, cupy = sys.modules.get("torch"), sys.modules.get("cupy")
    if torch is not None and issubclass(kind, torch.Tensor):
        return Torch(torch)
    if cupy is not None and issubclass(kind, cupy.ndarray):
        return Cupy(cupy)
    if issubclass(kind, np.ndarray):
        return NUMPY
    return DLPACK


def device_scope(placement: Placement | None):
    """The context manager in which arrays of a placed call are exported."""
    return placement.scope() if placement is not None and placement.scope else contextlib.nullcontext()


# ---- allocation and conversions in the caller's library -------------------------------

def is_torch(x) -> bool:
    return framework_of(x).name == "torch"


def numpy_empty(shape, dtype):
    """np.empty(shape, dtype), large arrays on huge pages (hops._host_memory)."""
    dtype = np.dtype(dtype)
    raw = huge_page_bytes(math.prod(shape) * dtype.itemsize)
    return np.empty(tuple(shape), dtype=dtype) if raw is None else raw.view(dtype).reshape(tuple(shape))


def empty(like, shape, dtype: str | None = None):
    """An uninitialised array of `like`'s framework and device; dtype defaults to like's."""
    return (frameworks_by_type.get(type(like)) or framework_of(like)).empty(like, shape, dtype)


def empty_like(x, dtype: str | None = None):
    """An uninitialised array with x's shape, device and memory order (a transposed
    view gets a transposed output, so kernels write it as they read x)."""
    return (frameworks_by_type.get(type(x)) or framework_of(x)).empty_like(x, dtype)


def zeros(like, shape, dtype: str | None = None):
    out = empty(like, shape, dtype)
    out[...] = 0
    return out


def as_float32(x):
    """x in float32: x itself when it is (a torch conversion stays differentiable)."""
    if is_torch(x):
        return x.to(sys.modules["torch"].float32)
    return np.asarray(x, dtype=np.float32)


def float32_copy(x):
    """A fresh contiguous float32 copy (a state the caller may keep using)."""
    if is_torch(x):
        torch = sys.modules["torch"]
        return x.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    return np.array(x, dtype=np.float32, order="C", copy=True)


def index_array(values, like):
    """Lists and tuples of indices become an int64 array on the host, in like's framework."""
    if values is None or hasattr(values, "__dlpack__"):
        return values
    if is_torch(like):
        torch = sys.modules["torch"]
        return torch.tensor(list(values), dtype=torch.int64)
    return np.asarray(values, dtype=np.int64)
