"""The few framework-specific steps of the shim: allocating outputs in the
caller's framework (numpy or torch) and naming dtypes. torch is imported only
when the caller already uses it."""

import sys

import numpy as np


def _torch():
    return sys.modules.get("torch")


def is_torch(x) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def dtype_name(x) -> str:
    """'float32', 'bfloat16', ... for numpy arrays and torch tensors alike."""
    return str(x.dtype).removeprefix("torch.")


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


def float32_copy(x):
    """A fresh contiguous float32 copy (a state the caller may keep using)."""
    if is_torch(x):
        return x.detach().to(_torch().float32, memory_format=_torch().contiguous_format, copy=True)
    return np.array(x, dtype=np.float32, order="C", copy=True)


def index_array(values, like):
    """Lists and tuples of indices become an int64 array on the host, in like's framework."""
    if values is None or hasattr(values, "__dlpack__"):
        return values
    if is_torch(like):
        return _torch().tensor(list(values), dtype=_torch().int64)
    return np.asarray(values, dtype=np.int64)
