"""The checks hops.torch_ops makes before calling an op, where torch.compile sees
them: device/dtype support (a table made once), and, while compiling, the
provider's answer for this call's shapes (api->supports_call, ABI 1.1)."""

import torch
from torch import Tensor

from .. import ops
from .._abi import DL_CPU, DL_CUDA, DL_ROCM
from .._bindings import library
from .._frameworks import TensorSpec
from ..errors import HopsError, unsupported


def _support_table() -> tuple[dict, HopsError | None]:
    """(op, device type, torch dtype) -> whether the provider has the kernel, made once at import
    (traced code then only looks it up); without a provider, {} and the discovery error."""
    try:
        table = library().support_table()
    except HopsError as error:
        return {}, error
    return {(op, device, getattr(torch, dtype)): ok for (op, device, dtype), ok in table.items()}, None


_SUPPORTED, _NO_PROVIDER = _support_table()
_ASKS = _NO_PROVIDER is None and library().has_supports_call


def supports(op: str, x: Tensor) -> bool:
    """Whether the provider runs `op` with x as primary input (its device type and dtype)."""
    return _SUPPORTED.get((op, "cpu" if x.is_cpu else x.device.type, x.dtype), False)  # is_cpu: no device object


def check(op: str, x: Tensor) -> None:
    if _NO_PROVIDER is not None:
        raise HopsError(_NO_PROVIDER.status, _NO_PROVIDER.message)
    if not supports(op, x):
        raise unsupported(f"{op}: the hops provider has no kernel for {x.dtype} on {x.device.type}")


def check_conv(op: str, x: Tensor, weight: Tensor) -> None:
    if not 1 <= weight.shape[-1] <= 4:  # the provider's limit, checked where torch.compile sees it
        raise unsupported(f"{op}: conv width {weight.shape[-1]}; hops has kernels for widths 1 to 4")
    check(op, x)


def needs_grad(*tensors) -> bool:
    if torch.is_grad_enabled():
        for tensor in tensors:  # a loop, not any(generator): every op call asks
            if tensor is not None and tensor.requires_grad:
                return True
    return False


def refuse_gradients(op: str, *tensors) -> None:
    if needs_grad(*tensors):
        raise unsupported(f"{op}: no backward kernel (decode op)")


def present(values) -> list:
    """A backward op's outputs as its Tensor[] return: the optional ones only when computed."""
    return [value for value in values if value is not None]


def restore(values: list, computed: tuple[bool, ...]) -> list:
    """present() undone: None where `computed` says the output was not computed."""
    remaining = iter(values)
    return [next(remaining) if here else None for here in computed]


# ---- while torch.compile traces: the provider's answer for these shapes -------------------

def _static(value) -> bool:
    return not isinstance(value, Tensor) or all(isinstance(n, int) for n in (*value.shape, *value.stride()))


def _described(value):
    """A tensor as constants torch.compile can hand to _answer. Dynamo cannot trace
    storage_offset(): the spec's data is taken to start where its allocation does."""
    if not isinstance(value, Tensor):
        return value
    return "tensor", tuple(value.shape), tuple(value.stride()), str(value.dtype), value.device.type, value.device.index


_DEVICE_TYPES = {"cpu": DL_CPU, "cuda": DL_ROCM if torch.version.hip else DL_CUDA}


def _spec(value):
    if not (isinstance(value, tuple) and value and value[0] == "tensor"):
        return value
    _, shape, strides, dtype, device, index = value
    return TensorSpec(shape, strides, dtype.removeprefix("torch."), _DEVICE_TYPES.get(device, -1), index or 0)


@torch._dynamo.assume_constant_result
def _answer(function: str, arguments: tuple, options: tuple):
    """Runs while tracing, on constants: hops.ops.<function> on TensorSpecs of the
    call's tensors, which asks the provider instead of running. None, or the refusal."""
    try:
        getattr(ops, function).__wrapped__(*map(_spec, arguments), **{k: _spec(v) for k, v in options})
    except HopsError as error:
        return error.status, error.message
    return None


def refuse_traced(function: str, *arguments, **options) -> None:
    """While torch.compile traces, HopsError if the provider would refuse this call of
    hops.ops.<function> (its shapes, strides, options), so that the refusal happens at
    trace time and a redirect's fallback is traced instead. Asked only with static
    shapes and no index tensors (their values are not known while tracing); in eager
    mode the provider refuses the call itself, with the same error. The caller leaves
    out calls with index tensors."""
    if not _ASKS or not torch.compiler.is_compiling():
        return
    if not all(_static(value) for value in (*arguments, *options.values())):
        return
    answer = _answer(function, tuple(_described(value) for value in arguments),
                     tuple((key, _described(value)) for key, value in options.items()))
    if answer is not None:
        raise HopsError(*answer)
