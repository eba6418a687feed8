"""hops::causal_conv1d, hops::causal_conv1d_bwd and hops::causal_conv1d_update."""

from .._frameworks import empty, empty_like, index_array
from ..ops import conv1d
from ..ops._common import activation_code
from ._common import check, check_conv, needs_grad, present, refuse_gradients, refuse_traced, restore
from ._registry import define

_fwd, _bwd, _update = (conv1d.conv1d_fwd.__wrapped__, conv1d.conv1d_bwd.__wrapped__,
                       conv1d.conv1d_update.__wrapped__)  # without device=


# ---- hops::causal_conv1d (prefill) and its backward ---------------------------------

# With seq_idx, which takes no states, the final state is an empty placeholder: the op
# keeps its fixed outputs, and the backward passes no d_final_state.
def _fwd_kernel(x, weight, bias, initial_state, cu_seqlens, activation, channels_first, state_len, seq_idx=None):
    y, final_state = _fwd(x, weight, bias, activation=activation, initial_state=initial_state,
                          cu_seqlens=cu_seqlens, output_final_state=seq_idx is None, state_len=state_len,
                          channels_first=channels_first, seq_idx=seq_idx)
    return y, empty(x, (0,)) if final_state is None else final_state


def _fwd_fake(x, weight, bias, initial_state, cu_seqlens, activation, channels_first, state_len, seq_idx=None):
    y, final_state = conv1d.conv1d_outputs(x, weight, initial_state, cu_seqlens, seq_idx is None, state_len)
    return y, empty(x, (0,)) if final_state is None else final_state


def _fwd_setup_context(ctx, inputs, output):
    x, weight, bias, initial_state, cu_seqlens, activation, channels_first, _, seq_idx = inputs
    ctx.save_for_backward(x, weight, bias, initial_state, cu_seqlens, seq_idx)
    ctx.options = activation, channels_first


def _fwd_gradients(ctx, dy, d_final_state):
    x, weight, bias, initial_state, cu_seqlens, seq_idx = ctx.saved_tensors
    if seq_idx is not None:
        d_final_state = None  # the placeholder's
    grads = causal_conv1d_bwd_op(x, weight, bias, initial_state, cu_seqlens, dy, d_final_state, *ctx.options,
                                 seq_idx)
    dx, dweight, dbias, d_initial_state = restore(grads, (True, True, bias is not None, initial_state is not None))
    return dx, dweight, dbias, d_initial_state, None, None, None, None, None


def _bwd_kernel(x, weight, bias, initial_state, cu_seqlens, dy, d_final_state, activation, channels_first,
                seq_idx=None):
    """[dx, dweight], then dbias when bias is given, then d_initial_state when initial_state is."""
    return present(_bwd(x, weight, dy, bias=bias, activation=activation, initial_state=initial_state,
                         cu_seqlens=cu_seqlens, d_final_state=d_final_state, channels_first=channels_first,
                         seq_idx=seq_idx))


def _bwd_fake(x, weight, bias, initial_state, cu_seqlens, dy, d_final_state, activation, channels_first,
              seq_idx=None):
    return present(conv1d.conv1d_bwd_outputs(x, weight, bias, initial_state))


causal_conv1d_op = define(
    "causal_conv1d(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_state, Tensor? cu_seqlens, str activation, "
    "bool channels_first, SymInt state_len, Tensor? seq_idx=None) -> (Tensor, Tensor)",
    _fwd_kernel, _fwd_fake, backward=_fwd_gradients, setup_context=_fwd_setup_context)
causal_conv1d_bwd_op = define(
    "causal_conv1d_bwd(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_state, Tensor? cu_seqlens, Tensor dy, "
    "Tensor? d_final_state, str activation, bool channels_first, Tensor? seq_idx=None) -> Tensor[]",
    _bwd_kernel, _bwd_fake)


def conv1d_fwd(x, weight, bias=None, *, activation="silu", initial_state=None, cu_seqlens=None,
               output_final_state=False, state_len=None, channels_first=False, seq_idx=None):
    """hops.ops.conv1d_fwd through hops::causal_conv1d: differentiable."""
    activation = "silu" if activation_code(activation) else "none"
    check_conv("conv1d_fwd", x, weight)
    if needs_grad(x, weight, bias, initial_state):
        check("conv1d_bwd", x)
    state_len = conv1d.conv1d_state_len(weight, initial_state, state_len)
    if cu_seqlens is None and seq_idx is None:
        refuse_traced("conv1d_fwd", x, weight, bias, activation=activation, initial_state=initial_state,
                      output_final_state=True, state_len=state_len, channels_first=channels_first)
    y, final_state = causal_conv1d_op(x, weight, bias, initial_state, index_array(cu_seqlens, x), activation,
                                      channels_first, state_len, index_array(seq_idx, x))
    return y, final_state if output_final_state and seq_idx is None else None


# ---- hops::causal_conv1d_update (decode: in place on a state pool, no backward) -----------

def _update_kernel(x, state, weight, bias, state_indices, activation, cache_seqlens=None, zero_skipped=False):
    return _update(x, state, weight, bias, activation=activation, state_indices=state_indices,
                   cache_seqlens=cache_seqlens, zero_skipped=zero_skipped)


def _update_fake(x, state, weight, bias, state_indices, activation, cache_seqlens=None, zero_skipped=False):
    return empty_like(x)


causal_conv1d_update_op = define(
    "causal_conv1d_update(Tensor x, Tensor(a1!) state, Tensor weight, Tensor? bias, Tensor? state_indices, "
    "str activation, Tensor? cache_seqlens=None, bool zero_skipped=False) -> Tensor", _update_kernel,
    _update_fake, mutated=(1,))


def conv1d_update(x, state, weight, bias=None, *, activation="silu", state_indices=None, cache_seqlens=None,
                  zero_skipped=False):
    """hops.ops.conv1d_update through hops::causal_conv1d_update (state updated in place).

    x, weight or bias that require grad get an output whose backward raises (there is no
    backward kernel), as causal-conv1d's own update does; a state that requires grad is refused."""
    activation = "silu" if activation_code(activation) else "none"
    check_conv("conv1d_update", x, weight)
    refuse_gradients("conv1d_update", state)
    if state_indices is None and cache_seqlens is None:
        refuse_traced("conv1d_update", x, state, weight, bias, activation=activation, zero_skipped=zero_skipped)
    return causal_conv1d_update_op(x, state, weight, bias, index_array(state_indices, x), activation,
                                   index_array(cache_seqlens, x), zero_skipped)


FUNCTIONS = (conv1d_fwd, conv1d_update)  # what hops.torch_ops exports of this family
