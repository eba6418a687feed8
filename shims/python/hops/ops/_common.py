"""What the op families of hops.ops share: shape checks against the descriptors,
and calling an op's binding."""

from .._bindings import library
from ..errors import HopsError, unsupported

_ACTIVATIONS = {None: 0, False: 0, "none": 0, "identity": 0, True: 1, "silu": 1, "swish": 1}


def activation_code(activation) -> int:
    """conv1d activation name -> the ABI's code (HOPS_ACTIVATION_*)."""
    try:
        return _ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise unsupported(f"conv1d activation {activation!r}: hops implements none and silu") from None


def dims(op: str, arg: str, x, rank: int) -> tuple[int, ...]:
    """x's shape, after checking its rank against the descriptor's symbolic shape."""
    if x is None or len(x.shape) != rank:
        spec = next(a for a in library().op(op).args if a.name == arg)
        got = "nothing" if x is None else f"shape {tuple(x.shape)}"
        raise HopsError("HOPS_ERR_INVALID_ARGUMENT", f"{op}: argument '{arg}': expected {spec.shape}, got {got}")
    return tuple(x.shape)


def sequence_count(batch: int, cu_seqlens) -> int:
    return batch if cu_seqlens is None else max(int(cu_seqlens.shape[0]) - 1, 0)


def call(op: str, **arguments) -> None:
    """Run `op` (its generated binding) with the descriptor's argument names."""
    library().ops[op].run(arguments)
