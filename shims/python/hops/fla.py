"""Drop-in namesakes of flash-linear-attention's Gated DeltaNet entry points
(fla.ops.gated_delta_rule, 0.6 signatures and return conventions) on hops.

Layout as in FLA: q, k [B,T,H,K], v [B,T,HV,V], g, beta [B,T,HV]; states
[N,HV,K,V] float32. torch tensors go through hops.torch_ops, so that both entry
points are differentiable and torch.compile traces them. Options FLA has and
hops does not implement raise HopsError("HOPS_ERR_UNSUPPORTED"), which
hops.patch turns into a fallback; misuse FLA rejects (ValueError, assertions,
the deprecated transpose_state_layout's warning) is rejected the same way.
"""

import warnings

from ._dispatch import ops_for
from ._frameworks import as_float32, float32_copy, index_array, is_torch, zeros
from .errors import unsupported


def _check_unsupported(**options) -> None:
    given = [name for name, value in options.items() if value is not None and value is not False]
    if given:
        raise unsupported(f"hops.fla: {', '.join(given)} not implemented")


def _state_v_first(state_v_first, kwargs):
    """FLA's legacy name transpose_state_layout: accepted with a DeprecationWarning, not with state_v_first."""
    if "transpose_state_layout" not in kwargs:
        return state_v_first
    if state_v_first:
        raise ValueError("Cannot pass both `state_v_first` and the deprecated `transpose_state_layout`.")
    warnings.warn("`transpose_state_layout` is deprecated and renamed to `state_v_first`.", DeprecationWarning,
                  stacklevel=3)
    return kwargs.pop("transpose_state_layout")


def _beta_mode(use_beta_sigmoid_in_kernel, allow_neg_eigval) -> int:
    """The ops' beta_mode: 0 beta as given, 1 sigmoid(beta), 2 2*sigmoid(beta)."""
    if allow_neg_eigval and not use_beta_sigmoid_in_kernel:
        raise ValueError("`allow_neg_eigval=True` requires `use_beta_sigmoid_in_kernel=True`.")
    if not use_beta_sigmoid_in_kernel:
        return 0
    return 2 if allow_neg_eigval else 1


def _gate(use_gate_in_kernel, A_log, dt_bias):
    """(A_log, dt_bias) for the fused gate, (None, None) without it (FLA then ignores them)."""
    if not use_gate_in_kernel:
        return None, None
    return A_log, dt_bias if dt_bias is not None else zeros(A_log, A_log.shape)


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False,
                           allow_neg_eigval=False, state_v_first=False, cu_seqlens=None,
                           cu_seqlens_cpu=None, chunk_indices=None, cp_context=None, **kwargs):
    """-> (o [B,T,HV,V] in q's dtype, final_state [N,HV,K,V] float32 or None)."""
    state_v_first = _state_v_first(state_v_first, kwargs)
    _check_unsupported(cp_context=cp_context)
    if "head_first" in kwargs:
        raise DeprecationWarning("head_first has been removed. Inputs must be in `[B, T, H, ...]` format.")
    chunk_size = kwargs.get("chunk_size", 64)  # FLA's tiling; hops chunks by its own
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"`chunk_size` must be 16, 32, or 64 for Gated Delta Rule, got {chunk_size}.")
    use_gate_in_kernel = kwargs.get("use_gate_in_kernel", False)
    if use_gate_in_kernel:
        assert kwargs.get("A_log") is not None, "A_log must be provided when use_gate_in_kernel=True."
    beta_mode = _beta_mode(use_beta_sigmoid_in_kernel, allow_neg_eigval)
    A_log, dt_bias = _gate(use_gate_in_kernel, kwargs.get("A_log"), kwargs.get("dt_bias"))
    # chunk_indices is FLA's precomputed tiling of cu_seqlens: hops needs only the offsets,
    # and reads them on the host (cu_seqlens_cpu when the caller has it).
    offsets = cu_seqlens_cpu if cu_seqlens_cpu is not None else cu_seqlens
    if initial_state is not None:
        initial_state = as_float32(initial_state)
    return ops_for(q).gdn_chunk_fwd(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                    cu_seqlens=offsets, use_qk_l2norm=use_qk_l2norm_in_kernel,
                                    output_final_state=output_final_state, A_log=A_log, dt_bias=dt_bias,
                                    state_v_first=state_v_first, beta_mode=beta_mode)


def fused_recurrent_gated_delta_rule(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None,
                                     initial_state=None, output_final_state=False,
                                     use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, A_log=None,
                                     dt_bias=None, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                                     state_v_first=False, cu_seqlens=None, **kwargs):
    """-> (o [B,T,HV,V] in q's dtype, final_state [N,HV,K,V] float32 or None).

    As in FLA, initial_state is not modified: the recurrence runs on a float32 copy. On
    torch tensors it is differentiable: the gradients come from gdn_chunk_bwd, which
    differentiates the same recurrence (FLA's own fused_recurrent has no backward)."""
    state_v_first = _state_v_first(state_v_first, kwargs)
    _check_unsupported(gk=gk, gv=gv)
    if use_gate_in_kernel:
        if A_log is None:
            raise ValueError("`A_log` must be provided when `use_gate_in_kernel=True`.")
        if g is None:
            raise ValueError("`g` (raw pre-activation) must be provided when `use_gate_in_kernel=True`.")
    beta_mode = _beta_mode(use_beta_sigmoid_in_kernel, allow_neg_eigval)
    A_log, dt_bias = _gate(use_gate_in_kernel, A_log, dt_bias)
    batch, tokens, _, key_dim = q.shape
    value_heads, value_dim = v.shape[2], v.shape[3]
    if g is None:  # FLA: no decay
        g = zeros(q, (batch, tokens, value_heads), "float32")
    if beta is None:  # FLA: beta = 1 (then through the sigmoid if asked, as FLA does)
        beta = zeros(q, (batch, tokens, value_heads)) + 1
    cu_seqlens = index_array(cu_seqlens, q)
    options = dict(scale=scale, cu_seqlens=cu_seqlens, use_qk_l2norm=use_qk_l2norm_in_kernel, A_log=A_log,
                   dt_bias=dt_bias, state_v_first=state_v_first, beta_mode=beta_mode)
    if is_torch(q):  # differentiable through hops::gdn_recurrent_fn
        o, state = ops_for(q).gdn_recurrent_fwd(q, k, v, g, beta, initial_state=initial_state, **options)
        return o, state if output_final_state else None
    sequences = batch if cu_seqlens is None else int(cu_seqlens.shape[0]) - 1
    if initial_state is None:
        shape = (sequences, value_heads, value_dim, key_dim) if state_v_first else (
            sequences, value_heads, key_dim, value_dim)
        state = zeros(q, shape, "float32")
    else:
        state = float32_copy(initial_state)
    o = ops_for(q).gdn_recurrent(q, k, v, g, beta, state, **options)
    return o, state if output_final_state else None
