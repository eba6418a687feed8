"""The few framework-specific steps of the shim: allocating outputs in the
caller's framework (numpy or torch), converting to float32 and picking the op layer
(hops.torch_ops for torch tensors). torch is imported only when the caller
already uses it."""

import sys

import numpy as np


def _torch():
    return sys.modules.get("torch")


def is_torch(x) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def torch_cuda_device(x) -> int | None:
    """x's device index when x is a torch CUDA tensor, else None."""
    return x.device.index if is_torch(x) and x.device.type == "cuda" else None


def current_stream(device: int) -> int:
    """The handle of torch's current stream on a CUDA device (0: the legacy default stream).
    hops runs there: after the kernels that produced its inputs and before those that
    will read its outputs, as a torch kernel would, with no synchronisation."""
    return _torch().cuda.current_stream(device).cuda_stream


def cuda_device_scope(device: int):
    """Makes `device` current: torch exports only CUDA tensors of the current device."""
    return _torch().cuda.device(device)


def empty(like, shape, dtype: str | None = None):
    """An uninitialised array of `like`'s framework and device; dtype defaults to like's."""
    if hasattr(like, "empty") and hasattr(like, "__dlpack_device__") and not is_torch(like):
        return like.empty(shape, dtype)  # hops.opencl.DeviceArray
    if is_torch(like):
        torch = _torch()
        return torch.empty(tuple(shape), dtype=getattr(torch, dtype) if dtype else like.dtype,
                           device=like.device)
    return np.empty(tuple(shape), dtype=dtype or like.dtype)


def empty_like(x, dtype: str | None = None):
    """An uninitialised array with x's shape, device and memory order (a transposed
    view gets a transposed output, so kernels write it as they read x)."""
    if is_torch(x):
        return _torch().empty_like(x, dtype=getattr(_torch(), dtype) if dtype else None)
    if not isinstance(x, np.ndarray) and hasattr(x, "empty"):
        return x.empty(x.shape, dtype)  # hops.opencl.DeviceArray
    return np.empty_like(x, dtype=dtype)


def zeros(like, shape, dtype: str | None = None):
    out = empty(like, shape, dtype)
    out[...] = 0
    return out


def as_float32(x):
    """x in float32: x itself when it is (a torch conversion stays differentiable)."""
    if is_torch(x):
        return x.to(_torch().float32)
    return np.asarray(x, dtype=np.float32)


def float32_copy(x):
    """A fresh contiguous float32 copy (a state the caller may keep using)."""
    if is_torch(x):
        return x.detach().to(_torch().float32, memory_format=_torch().contiguous_format, copy=True)
    return np.array(x, dtype=np.float32, order="C", copy=True)


def ops_for(x):
    """The op layer for x: hops.torch_ops for torch tensors (autograd, torch.compile), else hops.ops."""
    if is_torch(x):
        from . import torch_ops
        return torch_ops
    from . import ops
    return ops


def index_array(values, like):
    """Lists and tuples of indices become an int64 array on the host, in like's framework."""
    if values is None or hasattr(values, "__dlpack__"):
        return values
    if is_torch(like):
        return _torch().tensor(list(values), dtype=_torch().int64)
    return np.asarray(values, dtype=np.int64)
