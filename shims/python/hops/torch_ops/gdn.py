"""hops::gdn_chunk, hops::gdn_chunk_bwd and hops::gdn_recurrent."""

from .._frameworks import index_array
from ..errors import unsupported
from ..ops import gdn
from ._common import check, needs_grad, present, refuse_gradients, refuse_traced, restore
from ._registry import define

_chunk, _chunk_bwd, _recurrent = (gdn.gdn_chunk_fwd.__wrapped__, gdn.gdn_chunk_bwd.__wrapped__,
                                  gdn.gdn_recurrent.__wrapped__)  # without device=


# ---- hops::gdn_chunk (prefill) and its backward -------------------------------------

def _chunk_kernel(q, k, v, g, beta, initial_state, cu_seqlens, A_log, dt_bias, scale, use_qk_l2norm, state_v_first):
    return _chunk(q, k, v, g, beta, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                  use_qk_l2norm=use_qk_l2norm, output_final_state=True, A_log=A_log, dt_bias=dt_bias,
                  state_v_first=state_v_first)


def _chunk_fake(q, k, v, g, beta, initial_state, cu_seqlens, A_log, dt_bias, scale, use_qk_l2norm, state_v_first):
    return gdn.gdn_outputs("gdn_chunk_fwd", q, v, cu_seqlens, True, state_v_first)


def _chunk_setup_context(ctx, inputs, output):
    q, k, v, g, beta, initial_state, cu_seqlens, A_log, _, scale, use_qk_l2norm, state_v_first = inputs
    ctx.save_for_backward(q, k, v, g, beta, initial_state, cu_seqlens)
    ctx.fused_gate = A_log is not None
    ctx.options = scale, use_qk_l2norm, state_v_first


def _chunk_gradients(ctx, d_o, d_final_state):
    if ctx.fused_gate:  # gdn_chunk_fwd() refuses this; a direct torch.ops.hops caller gets told here
        raise unsupported("hops::gdn_chunk: gdn_chunk_bwd has no fused gate (A_log)")
    q, k, v, g, beta, initial_state, cu_seqlens = ctx.saved_tensors
    grads = gdn_chunk_bwd_op(q, k, v, g, beta, initial_state, cu_seqlens, d_o, d_final_state, *ctx.options)
    dq, dk, dv, dg, dbeta, dh0 = restore(grads, (True,) * 5 + (initial_state is not None,))
    return dq, dk, dv, dg, dbeta, dh0, None, None, None, None, None, None


def _chunk_bwd_kernel(q, k, v, g, beta, initial_state, cu_seqlens, do, d_final_state, scale, use_qk_l2norm,
                      state_v_first):
    """[dq, dk, dv, dg, dbeta] and dh0 when initial_state is given."""
    return present(_chunk_bwd(q, k, v, g, beta, do, scale=scale, initial_state=initial_state,
                               cu_seqlens=cu_seqlens, d_final_state=d_final_state, use_qk_l2norm=use_qk_l2norm,
                               state_v_first=state_v_first))


def _chunk_bwd_fake(q, k, v, g, beta, initial_state, cu_seqlens, do, d_final_state, scale, use_qk_l2norm,
                    state_v_first):
    return present(gdn.gdn_chunk_bwd_outputs(q, k, v, g, beta, initial_state))


gdn_chunk_op = define(
    "gdn_chunk(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? initial_state, Tensor? cu_seqlens, "
    "Tensor? A_log, Tensor? dt_bias, float scale, bool use_qk_l2norm, bool state_v_first) -> (Tensor, Tensor)",
    _chunk_kernel, _chunk_fake, backward=_chunk_gradients, setup_context=_chunk_setup_context)
gdn_chunk_bwd_op = define(
    "gdn_chunk_bwd(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? initial_state, "
    "Tensor? cu_seqlens, Tensor do, Tensor? d_final_state, float scale, bool use_qk_l2norm, bool state_v_first) "
    "-> Tensor[]", _chunk_bwd_kernel, _chunk_bwd_fake)


def gdn_chunk_fwd(q, k, v, g, beta, *, scale=None, initial_state=None, cu_seqlens=None, use_qk_l2norm=False,
                  output_final_state=False, A_log=None, dt_bias=None, state_v_first=False):
    """hops.ops.gdn_chunk_fwd through hops::gdn_chunk: differentiable (not with the fused gate)."""
    check("gdn_chunk_fwd", q)
    if needs_grad(q, k, v, g, beta, initial_state, A_log, dt_bias):
        if A_log is not None:
            raise unsupported("gdn_chunk_fwd: no backward kernel for the fused gate (A_log)")
        check("gdn_chunk_bwd", q)
    if cu_seqlens is None:
        refuse_traced("gdn_chunk_fwd", q, k, v, g, beta, scale=scale, initial_state=initial_state,
                      use_qk_l2norm=use_qk_l2norm, output_final_state=True, A_log=A_log, dt_bias=dt_bias,
                      state_v_first=state_v_first)
    o, final_state = gdn_chunk_op(q, k, v, g, beta, initial_state, index_array(cu_seqlens, q), A_log, dt_bias,
                                  scale or 0.0, use_qk_l2norm, state_v_first)
    return o, final_state if output_final_state else None


# ---- hops::gdn_recurrent (decode: in place on a state pool, no backward) ------------------

def _recurrent_kernel(q, k, v, g, beta, state, state_indices, cu_seqlens, A_log, dt_bias, scale, use_qk_l2norm,
                      state_v_first):
    return _recurrent(q, k, v, g, beta, state, state_indices=state_indices, cu_seqlens=cu_seqlens, scale=scale,
                      use_qk_l2norm=use_qk_l2norm, A_log=A_log, dt_bias=dt_bias, state_v_first=state_v_first)


def _recurrent_fake(q, k, v, g, beta, state, state_indices, cu_seqlens, A_log, dt_bias, scale, use_qk_l2norm,
                    state_v_first):
    return gdn.gdn_outputs("gdn_recurrent", q, v)[0]


gdn_recurrent_op = define(
    "gdn_recurrent(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor(a5!) state, Tensor? state_indices, "
    "Tensor? cu_seqlens, Tensor? A_log, Tensor? dt_bias, float scale, bool use_qk_l2norm, bool state_v_first) "
    "-> Tensor", _recurrent_kernel, _recurrent_fake, mutated=(5,))


def gdn_recurrent(q, k, v, g, beta, state, *, state_indices=None, cu_seqlens=None, scale=None,
                  use_qk_l2norm=False, A_log=None, dt_bias=None, state_v_first=False):
    """hops.ops.gdn_recurrent through hops::gdn_recurrent (state updated in place)."""
    check("gdn_recurrent", q)
    refuse_gradients("gdn_recurrent", q, k, v, g, beta, state, A_log, dt_bias)
    if state_indices is None and cu_seqlens is None:
        refuse_traced("gdn_recurrent", q, k, v, g, beta, state, scale=scale, use_qk_l2norm=use_qk_l2norm,
                      A_log=A_log, dt_bias=dt_bias, state_v_first=state_v_first)
    return gdn_recurrent_op(q, k, v, g, beta, state, index_array(state_indices, q), index_array(cu_seqlens, q),
                            A_log, dt_bias, scale or 0.0, use_qk_l2norm, state_v_first)


FUNCTIONS = (gdn_chunk_fwd, gdn_recurrent)  # what hops.torch_ops exports of this family
