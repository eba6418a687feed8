"""Drop-in namesakes of Dao-AILab causal-conv1d's entry points on hops
(causal_conv1d 1.6: causal_conv1d_fn, causal_conv1d_update, causal_conv1d_varlen_states).

Layout as in causal-conv1d: x [B,D,T] (channels first; a transposed
channels-last tensor is the usual, zero-copy, case), weight [D,W], states
[B,D,state_len] with state_len >= W-1. torch tensors go through
hops.torch_ops (causal_conv1d_fn is differentiable; torch.compile traces them).
Options hops does not implement raise HopsError("HOPS_ERR_UNSUPPORTED"), which
hops.patch turns into a fallback; misuse causal-conv1d rejects with an
assertion is rejected with the same assertion.
"""

from ._dispatch import ops_for
from ._frameworks import zeros


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """-> out [B,D,T], or (out, final_states [B,D,W-1]) with return_final_states.

    seq_idx [B,T] (int): the id of each token's sequence; taps read only tokens of the same
    id and a token with a negative id (padding) gets 0, as in causal-conv1d."""
    if seq_idx is not None:
        assert initial_states is None, "initial_states must be None if seq_idx is not None"
        assert not return_final_states, "If seq_idx is not None, we don't return final_states_out"
        if hasattr(seq_idx, "contiguous"):
            seq_idx = seq_idx.contiguous()  # as causal-conv1d does; hops reads it as one run
    out, final_states = ops_for(x).conv1d_fwd(x, weight, bias, activation=activation, initial_state=initial_states,
                                              output_final_state=return_final_states,
                                              state_len=weight.shape[-1] - 1, channels_first=True, seq_idx=seq_idx)
    if final_states_out is not None and return_final_states:
        final_states_out[...] = final_states
        final_states = final_states_out
    return (out, final_states) if return_final_states else out


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """x [B,D] or [B,D,L]; conv_state [S,D,state_len] updated in place -> out like x.

    cache_seqlens [B]: each state is a circular buffer, x written from column
    cache_seqlens % state_len on. conv_state_indices [B]: the state row of each sequence,
    -1 for padding rows, whose out is 0 and whose state is untouched."""
    # hops takes tokens before channels: [B,D,L] is passed as its [B,L,D] view, no copy.
    tokens_first = x if x.ndim == 2 else x.swapaxes(1, 2)
    out = ops_for(x).conv1d_update(tokens_first, conv_state, weight, bias, activation=activation,
                                   state_indices=conv_state_indices, cache_seqlens=cache_seqlens, zero_skipped=True)
    return out if x.ndim == 2 else out.swapaxes(1, 2)


def causal_conv1d_varlen_states(x, cu_seqlens, state_len):
    """x [total_tokens, D], cu_seqlens [N+1] -> states [N,D,state_len]: the last state_len
    tokens of each sequence, zeros where the sequence is shorter (no backward, as causal-conv1d).

    Runs hops' conv1d_fwd with cu_seqlens and a final state of state_len columns (its filter
    one zero tap, its output y a discarded buffer of x's size): the op that keeps those columns."""
    channels = x.shape[-1]
    if hasattr(x, "detach"):
        x = x.detach()  # forward only, as causal-conv1d's
    _, states = ops_for(x).conv1d_fwd(x[None], zeros(x, (channels, 1)), activation=None, cu_seqlens=cu_seqlens,
                                      output_final_state=True, state_len=state_len)
    return states
