"""Device scratch through torch's caching allocator (hops_api::set_allocator).

The CUDA backend takes each call's scratch from the host's allocator on the
call's stream and frees it there once the call's work is queued (docs/ABI.md,
section 6). With torch's caching allocator behind it, the backward's large
scratch is torch's to reuse or release (torch.cuda.empty_cache), as a torch
kernel's would be, and torch's memory statistics see it. The allocator is
global to the provider: other devices get plain aligned host memory here,
which the plugin pools as it always does.

Installed by the bindings before the first op on a torch CUDA tensor;
HOPS_TORCH_ALLOCATOR=0 keeps hops' own CUDA pool.
"""

import atexit
import ctypes
import os
import sys

from . import _abi

_ALIGNMENT = 64  # the plugin's own host blocks are cache-line aligned too
_libc = ctypes.CDLL(None)
_libc.aligned_alloc.restype = ctypes.c_void_p
_libc.aligned_alloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]


def _alloc(_ctx, device, size, stream):
    # A callback must not raise into C: NULL tells the plugin "out of memory".
    try:
        if device.device_type == _abi.DL_CUDA:
            return sys.modules["torch"].cuda.caching_allocator_alloc(size, device.device_id, stream or 0)
        return _libc.aligned_alloc(_ALIGNMENT, (size + _ALIGNMENT - 1) // _ALIGNMENT * _ALIGNMENT)
    except Exception:  # noqa: BLE001 (any failure is an allocation failure)
        return None


def _free(_ctx, device, pointer, _size, _stream):
    if device.device_type == _abi.DL_CUDA:
        sys.modules["torch"].cuda.caching_allocator_delete(pointer)
    else:
        _libc.free(pointer)


# Module-level: ctypes callbacks must outlive every call that may use them.
_ALLOCATOR = _abi.hops_allocator(ctypes.sizeof(_abi.hops_allocator), None, _abi.ALLOC_FN(_alloc),
                                 _abi.FREE_FN(_free))


def enabled() -> bool:
    return os.environ.get("HOPS_TORCH_ALLOCATOR", "1") != "0"


def install(api) -> None:
    """Routes the provider's scratch through torch's caching allocator until exit."""
    status = api.set_allocator(ctypes.addressof(_ALLOCATOR))
    if status != _abi.HOPS_OK:
        raise RuntimeError(f"set_allocator failed: {_abi.text(api.last_error())}")
    # The plugin's pools outlive the interpreter: hand them back to the system
    # allocator (freeing what this one made) while Python can still run _free.
    atexit.register(api.set_allocator, None)
