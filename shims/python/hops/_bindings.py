"""Python callables generated from the provider's op descriptors.

Nothing here knows any op by name: each descriptor gives the argument names,
kinds, optionality, dtypes and defaults, and `OpBinding` turns them into a
function with a real signature that borrows tensors through DLPack and calls
the generic `api->call`. The per-op conveniences live in hops.ops.
"""

import contextlib
import ctypes
import inspect
import threading
from collections import Counter
from dataclasses import dataclass

from . import _abi, _torch_allocator
from ._dlpack import NO_SYNC, borrow, borrowed
from ._frameworks import cuda_device_scope, current_stream, torch_cuda_device
from ._library import Provider, discover
from .errors import HopsError


@dataclass(frozen=True)
class ArgSpec:
    name: str
    kind: str  # "in", "out", "inout", "i64", "f64", "bool"
    optional: bool
    dtypes: tuple[str, ...]  # tensors: accepted dtypes
    default: object  # scalars: the descriptor's default
    shape: str
    doc: str

    @property
    def is_tensor(self) -> bool:
        return self.kind in ("in", "out", "inout")

    @classmethod
    def from_desc(cls, arg: _abi.hops_arg_desc) -> "ArgSpec":
        kind = _abi.KIND_NAMES.get(arg.kind, f"unknown({arg.kind})")
        default = {"i64": arg.default_i64, "f64": arg.default_f64, "bool": bool(arg.default_i64)}.get(kind)
        dtypes = tuple(name for name, bit in _abi.DTYPE_BITS.items() if arg.dtypes & bit)
        return cls(_abi.text(arg.name), kind, bool(arg.optional), dtypes, default,
                   _abi.text(arg.shape), _abi.text(arg.doc))


class OpBinding:
    """One op of the provider: call it with the descriptor's argument names, in
    descriptor order or as keywords; outputs are passed in (caller-allocated)."""

    def __init__(self, library: "Library", desc: "ctypes._Pointer[_abi.hops_op_desc]"):
        op = desc.contents
        self._library = library
        self._desc = desc
        self.name = _abi.text(op.name)
        self.doc = _abi.text(op.doc)
        self.since = (op.since_major, op.since_minor)
        self.args = tuple(ArgSpec.from_desc(_abi.op_arg(op, i)) for i in range(op.num_args))
        self.__signature__ = self._signature()
        self.__doc__ = self._docstring()

    def _signature(self) -> inspect.Signature:
        """Descriptor order; defaults shown where Python allows them (the trailing run).
        Optional tensors (None) and scalars (their default) may be left out anywhere."""
        parameters, trailing = [], True
        for arg in reversed(self.args):
            default = self._default(arg)
            trailing = trailing and default is not inspect.Parameter.empty
            parameters.append(inspect.Parameter(arg.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                default=default if trailing else inspect.Parameter.empty))
        return inspect.Signature(parameters[::-1])

    @staticmethod
    def _default(arg: ArgSpec):
        if arg.optional:
            return None
        return inspect.Parameter.empty if arg.is_tensor else arg.default

    def _docstring(self) -> str:
        lines = [f"{self.name}: {self.doc}", ""]
        for arg in self.args:
            detail = f"{arg.shape} {'|'.join(arg.dtypes)}" if arg.is_tensor else f"default {arg.default}"
            optional = "?" if arg.optional else ""
            lines.append(f"  {arg.name}{optional} ({arg.kind}, {detail}): {arg.doc}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<hops op {self.name}{self.__signature__}>"

    def __call__(self, *args, **kwargs) -> None:
        try:
            given = self.__signature__.bind_partial(*args, **kwargs).arguments
        except TypeError as error:
            raise HopsError("HOPS_ERR_INVALID_ARGUMENT", f"{self.name}: {error}") from None
        missing = [arg.name for arg in self.args
                   if arg.name not in given and self._default(arg) is inspect.Parameter.empty]
        if missing:
            raise HopsError("HOPS_ERR_INVALID_ARGUMENT", f"{self.name}: missing arguments {missing}")
        # The plugin's call device is that of the first tensor given (as with exec NULL).
        first = next((given[arg.name] for arg in self.args if arg.is_tensor and given.get(arg.name) is not None),
                     None)
        device = torch_cuda_device(first)
        if device is None:  # CPU, numpy, OpenCL arrays: exec NULL, as the plugin's default
            self._run(given, None, None)
            return
        # torch CUDA: torch's current stream, so the exported tensors need no synchronisation;
        # scratch from torch's caching allocator.
        self._library.use_torch_allocator()
        exec_ = _abi.hops_exec(ctypes.sizeof(_abi.hops_exec), _abi.DLDevice(_abi.DL_CUDA, device),
                               current_stream(device), 0, 0)
        with cuda_device_scope(device):
            self._run(given, ctypes.byref(exec_), NO_SYNC)

    def _run(self, given: dict, exec_, stream) -> None:
        values = (_abi.hops_value * len(self.args))()
        views = []
        try:
            for slot, arg in zip(values, self.args):
                self._set(slot, arg, given.get(arg.name, self._default(arg)), views, stream)
            status = self._library.api.call(self._desc, exec_, values, len(self.args))
        finally:
            for view in views:
                view.release()
        if status != _abi.HOPS_OK:
            raise self._library.error(status)
        if self._library.counter is not None:
            self._library.counter[self.name] += 1

    def _set(self, slot: _abi.hops_value, arg: ArgSpec, value, views: list, stream) -> None:
        if arg.kind == "i64":
            slot.i64 = int(value)
        elif arg.kind == "f64":
            slot.f64 = float(value)
        elif arg.kind == "bool":
            slot.boolean = bool(value)
        elif value is None:
            slot.tensor = None  # NULL: the provider says whether the argument may be absent
        else:
            # The stream argument is for the torch CUDA tensors, whose current stream the call
            # runs on; host index tensors of a CUDA call are exported as usual.
            view = borrow(value, stream if torch_cuda_device(value) is not None else None)
            views.append(view)
            if arg.kind != "in" and view.read_only:
                raise HopsError("HOPS_ERR_INVALID_ARGUMENT",
                                f"{self.name}: argument '{arg.name}' is written but the array is read-only")
            slot.tensor = ctypes.pointer(view.tensor)


@dataclass(frozen=True)
class BackendInfo:
    name: str
    device: str
    available: bool
    detail: str


@dataclass(frozen=True)
class ProviderInfo:
    path: str
    source: str  # how discovery found it
    version: str
    abi: str
    backends: tuple[BackendInfo, ...]
    ops: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"hops provider {self.path}", f"  found by: {self.source}",
                 f"  version {self.version}, ABI {self.abi}", "  backends:"]
        for backend in self.backends:
            state = "available" if backend.available else "unavailable"
            lines.append(f"    {backend.name} ({backend.device}): {state} — {backend.detail}")
        lines.append("  ops: " + ", ".join(self.ops))
        return "\n".join(lines)


class Library:
    """A loaded provider and the bindings of all its ops."""

    def __init__(self, provider: Provider):
        self.provider = provider
        self.api = provider.api
        self.ops: dict[str, OpBinding] = {}
        self.counter: Counter | None = None  # op -> successful calls, while hops.patch counts them
        self._torch_allocator = False  # installed (or declined) on the first torch CUDA call
        for index in range(self.api.op_count()):
            binding = OpBinding(self, self.api.op_at(index))
            self.ops[binding.name] = binding

    def op(self, name: str) -> OpBinding:
        try:
            return self.ops[name]
        except KeyError:
            raise HopsError("HOPS_ERR_NOT_FOUND", f"the provider {self.provider.path} has no op '{name}' "
                            f"(it has: {', '.join(self.ops)})") from None

    def use_torch_allocator(self) -> None:
        """Before the first op on a torch CUDA tensor: scratch from torch's caching allocator."""
        if self._torch_allocator:
            return
        with _lock:
            if not self._torch_allocator and _torch_allocator.enabled():
                _torch_allocator.install(self.api)
            self._torch_allocator = True

    def error(self, status: int) -> HopsError:
        return HopsError(_abi.text(self.api.status_name(status)), _abi.text(self.api.last_error()))

    def supports(self, op: str, tensor) -> bool:
        """Whether `op` runs on the device and dtype of `tensor` (its primary input)."""
        if op not in self.ops:
            return False
        device = torch_cuda_device(tensor)
        # torch exports only CUDA tensors of the current device.
        scope = cuda_device_scope(device) if device is not None else contextlib.nullcontext()
        with scope, borrowed(tensor, NO_SYNC if device is not None else None) as view:
            return bool(self.api.supports(op.encode(), view.tensor.device, view.tensor.dtype))

    def support_table(self) -> dict[tuple[str, str, str], bool]:
        """(op, device name, float dtype name) -> `supports` for every op, device type and
        float dtype: answers that need no tensor, and no ctypes call once made (code that
        torch.compile traces looks them up)."""
        return {(op, device, dtype): bool(self.api.supports(op.encode(), _abi.DLDevice(code, 0),
                                                            _abi.DLDataType(*bits, 1)))
                for op in self.ops for code, device in _abi.DL_DEVICE_NAMES.items()
                for dtype, bits in _abi.FLOAT_DTYPES.items()}

    def info(self) -> ProviderInfo:
        backends = []
        for index in range(self.api.backend_count()):
            backend = self.api.backend_at(index).contents
            device = _abi.DL_DEVICE_NAMES.get(backend.device_type, f"device type {backend.device_type}")
            backends.append(BackendInfo(_abi.text(backend.name), device, bool(backend.available),
                                        _abi.text(backend.detail)))
        return ProviderInfo(str(self.provider.path), self.provider.source, _abi.text(self.api.version),
                            f"{self.api.abi_major}.{self.api.abi_minor}", tuple(backends), tuple(self.ops))


_loaded: Library | None = None
_lock = threading.Lock()


def library() -> Library:
    """The process-wide provider, discovered on first use."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = Library(discover())
        return _loaded
