"""The Gated DeltaNet family of hops.ops: gdn_chunk_fwd, gdn_chunk_bwd, gdn_recurrent, gdn_gating."""

from .._frameworks import empty, empty_like, index_array
from ..opencl import device_option
from ._common import call, dims, sequence_count

OPS = ("gdn_chunk_fwd", "gdn_chunk_bwd", "gdn_recurrent", "gdn_gating")


def gdn_state_shape(n, hv, k, v, state_v_first) -> tuple[int, ...]:
    return (n, hv, v, k) if state_v_first else (n, hv, k, v)


def gdn_outputs(op, q, v, cu_seqlens=None, output_final_state=False, state_v_first=False):
    """(o, final_state or None) as the GDN forwards allocate them (shared with hops.torch_ops' fake kernels)."""
    batch, tokens, _, key_dim = dims(op, "q", q, 4)
    _, _, value_heads, value_dim = dims(op, "v", v, 4)
    o = empty(q, (batch, tokens, value_heads, value_dim))
    final_state = None
    if output_final_state:
        shape = gdn_state_shape(sequence_count(batch, cu_seqlens), value_heads, key_dim, value_dim,
                                state_v_first)
        final_state = empty(q, shape, "float32")
    return o, final_state


@device_option
def gdn_chunk_fwd(q, k, v, g, beta, *, scale=None, initial_state=None, cu_seqlens=None,
                  use_qk_l2norm=False, output_final_state=False, A_log=None, dt_bias=None,
                  state_v_first=False, beta_mode=-1):
    """Gated DeltaNet prefill -> (o [B,T,HV,V], final_state [N,HV,K,V] f32 or None).

    With A_log and dt_bias, g is the raw a and the gate is fused. beta_mode: -1 beta is
    the raw b through a sigmoid exactly when A_log is given, 0 beta as given, 1 sigmoid(beta),
    2 2*sigmoid(beta) (FLA's allow_neg_eigval)."""
    cu_seqlens = index_array(cu_seqlens, q)
    o, final_state = gdn_outputs("gdn_chunk_fwd", q, v, cu_seqlens, output_final_state, state_v_first)
    call("gdn_chunk_fwd",
         q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state, cu_seqlens=cu_seqlens, A_log=A_log,
         dt_bias=dt_bias, o=o, final_state=final_state, scale=scale or 0.0, use_qk_l2norm=use_qk_l2norm,
         state_v_first=state_v_first, beta_mode=beta_mode)
    return o, final_state


def gdn_chunk_bwd_outputs(q, k, v, g, beta, initial_state):
    """(dq, dk, dv, dg, dbeta, dh0 or None): each gradient like its input (dh0 float32)."""
    dh0 = None if initial_state is None else empty_like(initial_state, "float32")
    return (*(empty_like(x) for x in (q, k, v, g, beta)), dh0)


@device_option
def gdn_chunk_bwd(q, k, v, g, beta, do, *, scale=None, initial_state=None, cu_seqlens=None,
                  d_final_state=None, use_qk_l2norm=False, state_v_first=False):
    """Backward of gdn_chunk_fwd (no fused gate): from do (the gradient of o) and d_final_state
    (of the final state; None: zero) -> (dq, dk, dv, dg, dbeta, dh0 or None); dh0 [N,HV,K,V]
    f32 when initial_state is given. The forward's inputs and options, as they were."""
    cu_seqlens = index_array(cu_seqlens, q)
    dq, dk, dv, dg, dbeta, dh0 = gdn_chunk_bwd_outputs(q, k, v, g, beta, initial_state)
    call("gdn_chunk_bwd",
         q=q, k=k, v=v, g=g, beta=beta, initial_state=initial_state, cu_seqlens=cu_seqlens, do=do,
         d_final_state=d_final_state, dq=dq, dk=dk, dv=dv, dg=dg, dbeta=dbeta, dh0=dh0, scale=scale or 0.0,
         use_qk_l2norm=use_qk_l2norm, state_v_first=state_v_first)
    return dq, dk, dv, dg, dbeta, dh0


@device_option
def gdn_recurrent(q, k, v, g, beta, state, *, state_indices=None, cu_seqlens=None, scale=None,
                  use_qk_l2norm=False, A_log=None, dt_bias=None, state_v_first=False, beta_mode=-1):
    """Gated DeltaNet token by token on the state pool `state` [S,HV,K,V] (f32, updated in
    place; sequence n uses slot state_indices[n], -1 skips it) -> o [B,T,HV,V]. The gate
    options as in gdn_chunk_fwd."""
    o, _ = gdn_outputs("gdn_recurrent", q, v)
    call("gdn_recurrent",
         q=q, k=k, v=v, g=g, beta=beta, state=state, state_indices=index_array(state_indices, q),
         cu_seqlens=index_array(cu_seqlens, q), A_log=A_log, dt_bias=dt_bias, o=o, scale=scale or 0.0,
         use_qk_l2norm=use_qk_l2norm, state_v_first=state_v_first, beta_mode=beta_mode)
    return o


@device_option
def gdn_gating(A_log, a, b, dt_bias, *, softplus_beta=1.0, softplus_threshold=20.0):
    """The Qwen3.5 gate -> (g, beta) in a's shape: g = -exp(A_log) softplus(a + dt_bias) in
    float32 (log decays are summed over long sequences), beta = sigmoid(b) in b's dtype."""
    g = empty_like(a, "float32")
    beta = empty_like(b)
    call("gdn_gating",
         A_log=A_log, a=a, b=b, dt_bias=dt_bias, g=g, beta=beta, softplus_beta=softplus_beta,
         softplus_threshold=softplus_threshold)
    return g, beta
