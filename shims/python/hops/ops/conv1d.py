"""The causal conv1d family of hops.ops: conv1d_fwd, conv1d_bwd, conv1d_update."""

from .._frameworks import empty, empty_like, index_array
from ..opencl import device_option
from ._common import activation_code, call, dims, sequence_count

OPS = ("conv1d_fwd", "conv1d_bwd", "conv1d_update")


def conv1d_state_len(weight, initial_state, state_len):
    """conv1d_fwd's final-state length: as asked, else the initial state's, else W-1."""
    if state_len is not None:
        return state_len
    return initial_state.shape[-1] if initial_state is not None else weight.shape[-1] - 1


def conv1d_outputs(x, weight, initial_state, cu_seqlens, output_final_state, state_len):
    """(y, final_state or None) as conv1d_fwd allocates them (shared with hops.torch_ops' fake kernels)."""
    batch, _, _ = dims("conv1d_fwd", "x", x, 3)
    channels, _ = dims("conv1d_fwd", "weight", weight, 2)
    y = empty_like(x)
    final_state = None
    if output_final_state:
        final_state = empty(x, (sequence_count(batch, cu_seqlens), channels,
                               conv1d_state_len(weight, initial_state, state_len)))
    return y, final_state


@device_option
def conv1d_fwd(x, weight, bias=None, *, activation="silu", initial_state=None, cu_seqlens=None,
               output_final_state=False, state_len=None, channels_first=False, seq_idx=None):
    """Depthwise causal conv1d over x [B,T,D] ([B,D,T] if channels_first), weight [D,W]
    -> (y like x, final_state [N,D,state_len] or None).

    state_len defaults to the initial state's length, else W-1. seq_idx [B,T] (contiguous,
    no states, no cu_seqlens): taps read only tokens of the same id, a negative id gives y = 0."""
    cu_seqlens = index_array(cu_seqlens, x)
    y, final_state = conv1d_outputs(x, weight, initial_state, cu_seqlens, output_final_state, state_len)
    call("conv1d_fwd",
         x=x, weight=weight, bias=bias, initial_state=initial_state, cu_seqlens=cu_seqlens, y=y,
         final_state=final_state, activation=activation_code(activation), channels_first=channels_first,
         seq_idx=index_array(seq_idx, x))
    return y, final_state


def conv1d_bwd_outputs(x, weight, bias, initial_state):
    """(dx, dweight, dbias or None, d_initial_state or None), each like its input."""
    return (empty_like(x), empty_like(weight), None if bias is None else empty_like(bias),
            None if initial_state is None else empty_like(initial_state))


@device_option
def conv1d_bwd(x, weight, dy, *, bias=None, activation="silu", initial_state=None, cu_seqlens=None,
               d_final_state=None, channels_first=False, seq_idx=None):
    """Backward of conv1d_fwd: from dy (the gradient of y) and d_final_state (of the final
    state, its length L1; None: no gradient) -> (dx, dweight, dbias or None, d_initial_state
    or None), each like its input. The forward's inputs and options, as they were."""
    cu_seqlens = index_array(cu_seqlens, x)
    dx, dweight, dbias, d_initial_state = conv1d_bwd_outputs(x, weight, bias, initial_state)
    call("conv1d_bwd",
         x=x, weight=weight, bias=bias, initial_state=initial_state, cu_seqlens=cu_seqlens, dy=dy,
         d_final_state=d_final_state, dx=dx, dweight=dweight, dbias=dbias, d_initial_state=d_initial_state,
         activation=activation_code(activation), channels_first=channels_first,
         seq_idx=index_array(seq_idx, x))
    return dx, dweight, dbias, d_initial_state


@device_option
def conv1d_update(x, state, weight, bias=None, *, activation="silu", state_indices=None, cache_seqlens=None,
                  zero_skipped=False):
    """Causal conv1d decode: x [N,D] or [N,L,D], state pool [S,D,state_len] updated in place
    (sequence n uses slot state_indices[n], -1 skips it: its y rows are left, or 0 with
    zero_skipped) -> y like x. With cache_seqlens [N] each slot is a circular buffer: the
    tokens go to columns cache_seqlens[n] % state_len onwards."""
    y = empty_like(x)
    call("conv1d_update",
         x=x, state=state, weight=weight, bias=bias, state_indices=index_array(state_indices, x), y=y,
         activation=activation_code(activation), cache_seqlens=index_array(cache_seqlens, x),
         zero_skipped=zero_skipped)
    return y
