"""Drop-in namesakes of flash-linear-attention's Gated DeltaNet entry points
(fla.ops.gated_delta_rule, 0.6 signatures and return conventions) on hops.

Layout as in FLA: q, k [B,T,H,K], v [B,T,HV,V], g, beta [B,T,HV]; states
[N,HV,K,V] float32. torch tensors go through hops.torch_ops, so that
chunk_gated_delta_rule is differentiable (as FLA's is) and torch.compile traces
both. Options FLA has and hops does not implement raise
HopsError("HOPS_ERR_UNSUPPORTED"), which hops.patch turns into a fallback.
"""

from ._dispatch import ops_for
from ._frameworks import as_float32, float32_copy, index_array, zeros
from .errors import unsupported


def _check_unsupported(**options) -> None:
    given = [name for name, value in options.items() if value is not None and value is not False]
    if given:
        raise unsupported(f"hops.fla: {', '.join(given)} not implemented")


def _fused_gate(use_gate_in_kernel, use_beta_sigmoid_in_kernel, A_log, dt_bias):
    """hops fuses the gate and the beta sigmoid together (A_log given) or neither."""
    if use_gate_in_kernel != use_beta_sigmoid_in_kernel:
        raise unsupported("hops.fla: use_gate_in_kernel and use_beta_sigmoid_in_kernel only together")
    if not use_gate_in_kernel:
        return None, None
    if A_log is None:
        raise unsupported("hops.fla: use_gate_in_kernel needs A_log")
    return A_log, dt_bias if dt_bias is not None else zeros(A_log, A_log.shape)


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False,
                           allow_neg_eigval=False, state_v_first=False, cu_seqlens=None,
                           cu_seqlens_cpu=None, chunk_indices=None, cp_context=None, **kwargs):
    """-> (o [B,T,HV,V] in q's dtype, final_state [N,HV,K,V] float32 or None)."""
    _check_unsupported(allow_neg_eigval=allow_neg_eigval, cp_context=cp_context,
                       transpose_state_layout=kwargs.get("transpose_state_layout"))
    A_log, dt_bias = _fused_gate(kwargs.get("use_gate_in_kernel", False), use_beta_sigmoid_in_kernel,
                                 kwargs.get("A_log"), kwargs.get("dt_bias"))
    # chunk_indices is FLA's precomputed tiling of cu_seqlens: hops needs only the offsets,
    # and reads them on the host (cu_seqlens_cpu when the caller has it).
    offsets = cu_seqlens_cpu if cu_seqlens_cpu is not None else cu_seqlens
    if initial_state is not None:
        initial_state = as_float32(initial_state)
    return ops_for(q).gdn_chunk_fwd(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                                    cu_seqlens=offsets, use_qk_l2norm=use_qk_l2norm_in_kernel,
                                    output_final_state=output_final_state, A_log=A_log, dt_bias=dt_bias,
                                    state_v_first=state_v_first)


def fused_recurrent_gated_delta_rule(q, k, v, g=None, gk=None, gv=None, beta=None, scale=None,
                                     initial_state=None, output_final_state=False,
                                     use_qk_l2norm_in_kernel=False, use_gate_in_kernel=False, A_log=None,
                                     dt_bias=None, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                                     state_v_first=False, cu_seqlens=None, **kwargs):
    """-> (o [B,T,HV,V] in q's dtype, final_state [N,HV,K,V] float32 or None).

    As in FLA, initial_state is not modified: the recurrence runs on a copy."""
    _check_unsupported(gk=gk, gv=gv, allow_neg_eigval=allow_neg_eigval,
                       transpose_state_layout=kwargs.get("transpose_state_layout"))
    A_log, dt_bias = _fused_gate(use_gate_in_kernel, use_beta_sigmoid_in_kernel, A_log, dt_bias)
    batch, tokens, _, key_dim = q.shape
    value_heads, value_dim = v.shape[2], v.shape[3]
    if g is None:  # FLA: no decay
        g = zeros(q, (batch, tokens, value_heads), "float32")
    if beta is None:  # FLA: beta = 1
        beta = zeros(q, (batch, tokens, value_heads)) + 1
    cu_seqlens = index_array(cu_seqlens, q)
    sequences = batch if cu_seqlens is None else int(cu_seqlens.shape[0]) - 1
    if initial_state is None:
        shape = (sequences, value_heads, value_dim, key_dim) if state_v_first else (
            sequences, value_heads, key_dim, value_dim)
        state = zeros(q, shape, "float32")
    else:
        state = float32_copy(initial_state)
    o = ops_for(q).gdn_recurrent(q, k, v, g, beta, state, cu_seqlens=cu_seqlens, scale=scale,
                                 use_qk_l2norm=use_qk_l2norm_in_kernel, A_log=A_log, dt_bias=dt_bias,
                                 state_v_first=state_v_first)
    return o, state if output_final_state else None
