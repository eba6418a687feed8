"""Causal conv1d: transformers' causal_conv1d_fn and causal_conv1d_update."""

from .. import causal_conv1d

NAME, SWITCH = "conv", "HOPS_PATCH_CONV"


def conv_fn(hidden_states, weight, bias=None, activation=None, seq_idx=None, **_):
    return causal_conv1d.causal_conv1d_fn(hidden_states, weight, bias, seq_idx=seq_idx, activation=activation)


def conv_update(hidden_states, conv_state, weight, bias=None, activation=None, **_):
    return causal_conv1d.causal_conv1d_update(hidden_states, conv_state, weight, bias, activation)


TRANSFORMERS_FUNCTIONS = {
    "causal_conv1d_fn": conv_fn,
    "causal_conv1d_update": conv_update,
    "torch_causal_conv1d_update": conv_update,
}
TRANSFORMERS_METHODS = {}
FLA_ENTRY_POINTS = {}
