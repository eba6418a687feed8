"""Drop-in namesakes of Dao-AILab causal-conv1d's entry points on hops.

Layout as in causal-conv1d: x [B,D,T] (channels first; a transposed
channels-last tensor is the usual, zero-copy, case), weight [D,W], states
[B,D,state_len] with state_len >= W-1. torch tensors go through
hops.torch_ops (causal_conv1d_fn is differentiable; torch.compile traces both).
Options hops does not implement raise HopsError("HOPS_ERR_UNSUPPORTED"), which
hops.patch turns into a fallback.
"""

from ._dispatch import ops_for
from .errors import unsupported


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """-> out [B,D,T], or (out, final_states [B,D,W-1]) with return_final_states."""
    if seq_idx is not None:
        raise unsupported("hops.causal_conv1d: seq_idx not implemented (use hops.ops.conv1d_fwd with cu_seqlens)")
    out, final_states = ops_for(x).conv1d_fwd(x, weight, bias, activation=activation, initial_state=initial_states,
                                              output_final_state=return_final_states,
                                              state_len=weight.shape[-1] - 1, channels_first=True)
    if final_states_out is not None and return_final_states:
        final_states_out[...] = final_states
        final_states = final_states_out
    return (out, final_states) if return_final_states else out


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """x [B,D] or [B,D,L]; conv_state [S,D,state_len] updated in place -> out like x."""
    if cache_seqlens is not None:
        raise unsupported("hops.causal_conv1d: cache_seqlens (circular state buffers) not implemented")
    # hops takes tokens before channels: [B,D,L] is passed as its [B,L,D] view, no copy.
    tokens_first = x if x.ndim == 2 else x.swapaxes(1, 2)
    out = ops_for(x).conv1d_update(tokens_first, conv_state, weight, bias, activation=activation,
                                   state_indices=conv_state_indices)
    return out if x.ndim == 2 else out.swapaxes(1, 2)
