"""hops.ops: every op of the provider as a framework-neutral function.

Inputs are numpy arrays or torch tensors (anything with __dlpack__, strided
views included); outputs are allocated in the framework and on the device of
the op's primary input and returned. This layer only maps keywords onto the
descriptor's arguments and allocates outputs with the shapes of docs/OPS.md;
validation is the provider's (its errors arrive as hops.HopsError).

Each op family has its file here (gdn.py, conv1d.py, norm.py, attn.py, moe.py); FAMILIES lists
them, and this module re-exports their functions. Ops the provider lists that
have no wrapper here are still attributes of this module: the generated binding
itself, called with caller-allocated outputs.

Every wrapper also takes device="opencl": numpy arrays then run on the OpenCL
backend, copied in and out (hops.opencl).
"""

from .._bindings import OpBinding, library
from ..errors import HopsError
from . import attn, conv1d, gdn, moe, moe_ep, norm
from ._common import activation_code

FAMILIES = (gdn, conv1d, norm, attn, moe, moe_ep)  # one line per family: a family is a module with OPS and their wrappers

for _family in FAMILIES:
    globals().update({_op: getattr(_family, _op) for _op in _family.OPS})
del _family

__all__ = ["activation_code", *(op for family in FAMILIES for op in family.OPS)]


def __getattr__(name: str) -> OpBinding:
    """Ops without a wrapper: the generated binding (outputs passed by the caller)."""
    if name.startswith("_") or name not in library().ops:
        raise AttributeError(f"module 'hops.ops' has no attribute '{name}'")
    return library().ops[name]


def __dir__() -> list[str]:
    try:
        provided = set(library().ops)
    except HopsError:  # no provider: list what this module defines
        provided = set()
    return sorted(set(globals()) | provided)
