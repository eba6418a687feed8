"""Zero-copy view of any `__dlpack__` object (numpy, torch, cupy ...) as a DLTensor.

The protocol: the producer hands out a capsule named "dltensor" (or
"dltensor_versioned" for DLPack 1.x) holding a managed tensor. A consumer
renames the capsule to "used_..." and from then on owns the managed tensor:
it keeps the producer's memory alive until the consumer calls its deleter.
`borrow()` does exactly that for the duration of one plugin call.
"""

import ctypes
from contextlib import contextmanager

from ._abi import (DLPACK_FLAG_READ_ONLY, DLManagedTensor, DLManagedTensorVersioned, DLTensor)

_capsule_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get_pointer.restype = ctypes.c_void_p
_capsule_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

_capsule_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_is_valid.restype = ctypes.c_int
_capsule_is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]

_capsule_set_name = ctypes.pythonapi.PyCapsule_SetName
_capsule_set_name.restype = ctypes.c_int
_capsule_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]

# PyCapsule_SetName keeps the pointer, so the names must outlive every capsule.
_LEGACY, _LEGACY_USED = b"dltensor", b"used_dltensor"
_VERSIONED, _VERSIONED_USED = b"dltensor_versioned", b"used_dltensor_versioned"

# DLPack's stream argument meaning "no synchronisation": a CUDA producer then records
# no event and makes no stream wait. (Older torch defaults to None: the legacy default
# stream waits for torch's current stream; newer torch defaults to -1.)
NO_SYNC = -1


class Borrowed:
    """A DLTensor owned until release(); `read_only` is known for DLPack 1.x producers."""

    __slots__ = ("tensor", "read_only", "_managed")

    def __init__(self, tensor: DLTensor, read_only: bool, managed):
        self.tensor = tensor
        self.read_only = read_only
        self._managed = managed

    def release(self) -> None:
        managed, self._managed = self._managed, None
        if managed and managed.contents.deleter:
            managed.contents.deleter(managed)


def _export(obj, stream):
    """The capsule of `obj`, preferring DLPack 1.x (it can say read-only, and
    numpy exports read-only arrays only that way)."""
    if getattr(obj, "requires_grad", False):  # torch exports no tensor that requires grad
        obj = obj.detach()
    options = {} if stream is None else {"stream": stream}
    try:
        return obj.__dlpack__(max_version=(1, 0), **options)
    except TypeError:  # a producer that predates the max_version keyword
        return obj.__dlpack__(**options)


def borrow(obj, stream=None) -> Borrowed:
    """Consume a fresh capsule of `obj`; the caller must release() the result.

    `stream` is DLPack's stream argument, given only when set: the stream the
    consumer will use (the producer orders it after its own work), or NO_SYNC
    when the consumer runs on the producer's current stream anyway."""
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(f"expected an array or tensor with __dlpack__, got {type(obj).__name__}")
    capsule = _export(obj, stream)
    if _capsule_is_valid(capsule, _VERSIONED):
        managed = ctypes.cast(_capsule_get_pointer(capsule, _VERSIONED),
                              ctypes.POINTER(DLManagedTensorVersioned))
        _capsule_set_name(capsule, _VERSIONED_USED)
        read_only = bool(managed.contents.flags & DLPACK_FLAG_READ_ONLY)
        return Borrowed(managed.contents.dl_tensor, read_only, managed)
    managed = ctypes.cast(_capsule_get_pointer(capsule, _LEGACY), ctypes.POINTER(DLManagedTensor))
    _capsule_set_name(capsule, _LEGACY_USED)
    return Borrowed(managed.contents.dl_tensor, False, managed)


@contextmanager
def borrowed(obj, stream=None):
    """`with borrowed(x) as b:` — the DLTensor of x, valid inside the block."""
    view = borrow(obj, stream)
    try:
        yield view
    finally:
        view.release()
