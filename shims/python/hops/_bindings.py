"""Python callables generated from the provider's op descriptors.

Nothing here knows any op by name: each descriptor gives the argument names,
kinds, optionality, dtypes and defaults, and `OpBinding` turns them into a
function with a real signature that calls the generic `api->call`. Nothing here
knows a framework either: where a call runs (device, stream, allocator) and how
an array is described is the policy of the array's framework (_frameworks),
looked up per call. The per-op conveniences live in hops.ops.

A call is cheap (a few microseconds, docs/PERFORMANCE.md): each binding keeps,
per thread, one preallocated block holding its DLTensors and its hops_value
array (a call plan); arguments are matched to slots without inspect, and
torch/numpy arrays are packed straight from their pointer, shape and strides
(struct.pack_into), without a DLPack capsule; a slot whose previous call had the
same dtype, shape and strides gets only the new pointer. Other `__dlpack__`
producers are borrowed through the protocol for the call. api->call is called
without ctypes' per-argument checks.
"""

import contextlib
import ctypes
import inspect
import operator
import struct
import threading
from collections import Counter
from dataclasses import dataclass

from . import _abi, _torch_allocator
from ._dlpack import borrow, borrowed
from ._frameworks import DLPACK, Slot, device_scope, framework_of, frameworks_by_type
from ._library import Provider, discover
from .errors import HopsError

_MISSING = object()  # a required argument not given
_SLOT_BYTES = _abi.DLTENSOR_BLOCKS[_abi.MAX_DIMS].size  # a tensor of more dims is borrowed through __dlpack__
_VALUE_FORMATS = {"in": "Q", "out": "Q", "inout": "Q", "i64": "q", "f64": "d", "bool": "?7x"}


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


class _Plan:
    """One thread's preallocated argument block of a binding: a DLTensor slot per
    tensor argument (shape and strides at fixed places) and the hops_value array."""

    __slots__ = ("buffer", "values_offset", "values", "tensors", "busy")

    def __init__(self, num_args: int, tensors: tuple[tuple[int, bool], ...]):
        self.values_offset = len(tensors) * _SLOT_BYTES
        self.buffer = ctypes.create_string_buffer(self.values_offset + 8 * max(num_args, 1))
        self.values = ctypes.cast(ctypes.addressof(self.buffer) + self.values_offset, ctypes.POINTER(_abi.hops_value))
        # (argument index, written, its slot) for each tensor argument
        self.tensors = tuple((index, written, Slot(self.buffer, k * _SLOT_BYTES))
                             for k, (index, written) in enumerate(tensors))
        self.busy = False


class _Plans(threading.local):
    """A binding's call plan per thread (threading.local: made on each thread's first use)."""

    def __init__(self, num_args: int, tensors: tuple[tuple[int, bool], ...]):
        self.plan = _Plan(num_args, tensors)


_communicator = threading.local()


def communicator():
    """The hops_comm pointer the calls of this thread pass (hops.ops.moe_ep_*), or None."""
    return getattr(_communicator, "comm", None)


@contextlib.contextmanager
def communicating(comm):
    """Calls made inside pass `comm` (a ctypes hops_comm) in their hops_exec."""
    before = communicator()
    _communicator.comm = ctypes.pointer(comm)
    try:
        yield
    finally:
        _communicator.comm = before


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
        # The call plan's constants: slots by name, defaults, which slots hold what.
        self._index = {arg.name: i for i, arg in enumerate(self.args)}
        self._defaults = [_MISSING if self._default(arg) is inspect.Parameter.empty else self._default(arg)
                          for arg in self.args]
        self._required = tuple(i for i, value in enumerate(self._defaults) if value is _MISSING)
        # run(): a dict of arguments by name to descriptor order in C (a merge, a subset test, itemgetter).
        self._named_defaults = {arg.name: default for arg, default in zip(self.args, self._defaults)}
        self._required_names = frozenset(self.args[i].name for i in self._required)
        names = tuple(self._index)
        self._in_order = operator.itemgetter(*names) if len(names) > 1 else lambda named: tuple(map(named.get, names))
        self._tensors = tuple((i, arg.kind != "in") for i, arg in enumerate(self.args) if arg.is_tensor)
        self._scalars = tuple((i, {"i64": int, "f64": float, "bool": bool}[arg.kind])
                              for i, arg in enumerate(self.args) if arg.kind in ("i64", "f64", "bool"))
        self._values = struct.Struct("<" + "".join(_VALUE_FORMATS.get(arg.kind, "Q") for arg in self.args))
        self._plans = _Plans(len(self.args), self._tensors)

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
        """Run the op. Arrays of a framework that only describes (TensorSpec) are asked
        about instead (supports_call): HopsError when the provider would refuse them."""
        self._run(self._given(args, kwargs), False)

    def run(self, arguments: dict) -> None:
        """Run the op with its arguments by name (the hops.ops wrappers' way in)."""
        named = self._named_defaults | arguments
        if len(named) != len(self.args) or not arguments.keys() >= self._required_names:
            self._given((), arguments)  # unknown or missing names: raises, as a call would
        self._run(list(self._in_order(named)), False)

    def check(self, *args, **kwargs) -> bool:
        """Whether the provider would run this call, asked without running it
        (api->supports_call, ABI 1.1): True, or HopsError with the provider's reason.
        False when the provider has no supports_call (ABI 1.0)."""
        if not self._library.has_supports_call:
            return False
        self._run(self._given(args, kwargs), query=True)
        return True

    def prepare(self, *args, **kwargs) -> "PreparedCall":
        """The call packed once, to be issued many times with `PreparedCall(exec)` (a
        benchmark's loop, a CUDA graph capture): its arrays stay borrowed until it is dropped."""
        given = self._given(args, kwargs)
        plan = _Plan(len(self.args), self._tensors)
        views = []
        self._pack_tensors(plan, given, None, views)
        for index, convert in self._scalars:
            given[index] = convert(given[index])
        self._values.pack_into(plan.buffer, plan.values_offset, *given)
        return PreparedCall(self, plan, views, (args, kwargs))

    def _given(self, args: tuple, kwargs: dict) -> list:
        """The arguments in descriptor order, defaults filled (inspect.Signature.bind, fast)."""
        if len(args) > len(self._defaults):
            raise HopsError("HOPS_ERR_INVALID_ARGUMENT", f"{self.name}: too many positional arguments")
        given = [*args, *self._defaults[len(args):]]
        for key, value in kwargs.items():
            index = self._index.get(key)
            if index is None:
                raise HopsError("HOPS_ERR_INVALID_ARGUMENT",
                                f"{self.name}: got an unexpected keyword argument '{key}'")
            if index < len(args):
                raise HopsError("HOPS_ERR_INVALID_ARGUMENT", f"{self.name}: multiple values for argument '{key}'")
            given[index] = value
        for index in self._required:
            if given[index] is _MISSING:
                missing = [self.args[i].name for i in self._required if given[i] is _MISSING]
                raise HopsError("HOPS_ERR_INVALID_ARGUMENT", f"{self.name}: missing arguments {missing}")
        return given

    def _run(self, given: list, query: bool) -> None:
        library = self._library
        # The call's device and stream are those of the first tensor given (as with exec NULL),
        # by its framework's policy.
        for index, _ in self._tensors:
            first = given[index]
            if first is not None:
                framework = frameworks_by_type.get(type(first)) or framework_of(first)
                break
        else:
            first, framework = None, DLPACK
        placement = framework.placement(first)
        if query or not framework.runs:
            if not library.has_supports_call:
                return  # nothing to ask: the device/dtype-level `supports` is all an ABI 1.0 provider says
            query = True
        exec_ = None
        if placement is not None:
            if placement.allocator == "torch":
                library.use_torch_allocator()
            exec_ = ctypes.byref(_abi.hops_exec(ctypes.sizeof(_abi.hops_exec),
                                                _abi.DLDevice(placement.device_type, placement.device_id),
                                                placement.stream, 0, 0, communicator()))
        elif communicator() is not None:  # host arrays of an expert-parallel call: the CPU, with its ranks
            exec_ = ctypes.byref(_abi.hops_exec(ctypes.sizeof(_abi.hops_exec), _abi.DLDevice(1, 0), None, 0, 0,
                                                communicator()))
        plan = self._plans.plan
        if plan.busy:  # re-entered on this thread (a callback calling hops): a block of its own
            plan = _Plan(len(self.args), self._tensors)
        plan.busy = True
        views = []
        try:
            if placement is None:
                self._pack_tensors(plan, given, None, views)
            else:
                with device_scope(placement):
                    self._pack_tensors(plan, given, placement, views)
            for index, convert in self._scalars:
                given[index] = convert(given[index])
            self._values.pack_into(plan.buffer, plan.values_offset, *given)
            status = (library.api.supports_call if query else library.call)(self._desc, exec_, plan.values,
                                                                             len(given))
        finally:
            plan.busy = False
            for view in views:
                view.release()
        if status:
            raise library.error(status)
        if not query and library.counter is not None:
            library.counter[self.name] += 1

    def _pack_tensors(self, plan: _Plan, given: list, placement, views: list) -> None:
        """Each tensor argument's DLTensor address into `given` (0 for None: the provider
        says whether it may be absent): packed into the plan, or borrowed through DLPack."""
        known = frameworks_by_type
        for index, written, slot in plan.tensors:
            value = given[index]
            if value is None:
                given[index] = 0
                continue
            read_only = (known.get(type(value)) or framework_of(value)).pack(value, slot)
            if read_only is None:
                # Through the protocol. The stream argument is for arrays on the call's device, whose
                # stream the call runs on; host arrays (index tensors of a device call) get none.
                on_device = placement is not None and hasattr(value, "__dlpack_device__") and \
                    value.__dlpack_device__()[0] == placement.device_type
                view = borrow(value, placement.export_stream if on_device else None)
                views.append(view)
                given[index], read_only = ctypes.addressof(view.tensor), view.read_only
            else:
                given[index] = slot.address
            if written and read_only:
                raise HopsError("HOPS_ERR_INVALID_ARGUMENT", f"{self.name}: argument '{self.args[index].name}' "
                                "is written but the array is read-only")


class PreparedCall:
    """OpBinding.prepare's result: `call(exec_)` issues it through api->call (exec_ a
    hops_exec, by reference or None)."""

    def __init__(self, binding: OpBinding, plan: _Plan, views: list, arguments):
        self._binding, self._plan, self._views = binding, plan, views
        self._arguments = arguments  # the arrays stay alive as long as their DLTensors are used

    def __call__(self, exec_=None) -> None:
        binding = self._binding
        status = binding._library.call(binding._desc, exec_, self._plan.values, len(binding.args))
        if status:
            raise binding._library.error(status)

    def __del__(self):
        for view in self._views:
            view.release()


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


_UNCHECKED_CALL = ctypes.CFUNCTYPE(ctypes.c_int32)  # api->call's return type; arguments unchecked


def _unchecked(function):
    """`function` (a ctypes function pointer) without argtypes: ctypes passes pointer
    objects, None and ints as they are instead of checking each against the prototype
    (~0.4 us of a call). For the bindings' calls, whose arguments are the prototype's
    types already: POINTER(hops_op_desc), a hops_exec by reference or None,
    POINTER(hops_value) and an int."""
    unchecked = _UNCHECKED_CALL(ctypes.cast(function, ctypes.c_void_p).value)
    unchecked.argtypes = None
    return unchecked


class Library:
    """A loaded provider and the bindings of all its ops."""

    def __init__(self, provider: Provider):
        self.provider = provider
        self.api = provider.api
        self.ops: dict[str, OpBinding] = {}
        self.counter: Counter | None = None  # op -> successful calls, while hops.patch counts them
        self._torch_allocator = False  # installed (or declined) on the first torch CUDA call
        self.has_supports_call = _abi.has_field(self.api, "supports_call")  # ABI 1.1
        for index in range(self.api.op_count()):
            binding = OpBinding(self, self.api.op_at(index))
            self.ops[binding.name] = binding

    @property
    def api(self) -> _abi.hops_api:
        """The provider's table. `call` follows it when it is replaced (tests and the
        benchmark stand a wrapper in): api->call, without ctypes' argument checks."""
        return self._api

    @api.setter
    def api(self, api) -> None:
        self._api = api
        self.call = _unchecked(api.call) if isinstance(api, _abi.hops_api) else api.call

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
        framework = framework_of(tensor)
        described = framework.describe(tensor)
        if described is not None:
            device, dtype = _abi.DLDevice(*described[1:3]), _abi.DLDataType(*described[3:5], 1)
        else:
            placement = framework.placement(tensor)
            with device_scope(placement), borrowed(tensor, placement and placement.export_stream) as view:
                device, dtype = view.tensor.device, view.tensor.dtype
        return bool(self.api.supports(op.encode(), device, dtype))

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
    if _loaded is not None:  # every op call asks: no lock once loaded
        return _loaded
    with _lock:
        if _loaded is None:
            _loaded = Library(discover())
        return _loaded
