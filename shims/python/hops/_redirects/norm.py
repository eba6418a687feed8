"""Gated RMSNorm: the forward of transformers' *RMSNormGated classes."""

from .._dispatch import ops_for
from ..errors import unsupported

NAME, SWITCH = "norm", "HOPS_PATCH_NORM"


def gated_norm_forward(self, hidden_states, gate=None):
    if gate is None or getattr(self, "activation", "silu") not in ("silu", "swish"):
        raise unsupported("RMSNormGated without a silu gate")
    return ops_for(hidden_states).gated_rmsnorm(hidden_states, gate, self.weight, eps=self.variance_epsilon)


TRANSFORMERS_FUNCTIONS = {}
TRANSFORMERS_METHODS = {"RMSNormGated": {"forward": gated_norm_forward}}
FLA_ENTRY_POINTS = {}
