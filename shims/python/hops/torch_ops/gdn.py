"""hops::gdn_chunk, hops::gdn_chunk_bwd, hops::gdn_recurrent and hops::gdn_recurrent_fn."""

import torch
import torch.nn.functional as F

from .._frameworks import as_float32, float32_copy, index_array, zeros
from ..errors import unsupported
from ..ops import gdn
from ..ops._common import sequence_count
from ._common import check, needs_grad, present, refuse_gradients, refuse_traced, restore
from ._registry import define

_chunk, _chunk_bwd, _recurrent = (gdn.gdn_chunk_fwd.__wrapped__, gdn.gdn_chunk_bwd.__wrapped__,
                                  gdn.gdn_recurrent.__wrapped__)  # without device=


# ---- hops::gdn_chunk (prefill) and its backward -------------------------------------

def _chunk_kernel(q, k, v, g, beta, initial_state, cu_seqlens, A_log, dt_bias, scale, use_qk_l2norm, state_v_first,
                  beta_mode=-1):
    return _chunk(q, k, v, g, beta, scale=scale, initial_state=initial_state, cu_seqlens=cu_seqlens,
                  use_qk_l2norm=use_qk_l2norm, output_final_state=True, A_log=A_log, dt_bias=dt_bias,
                  state_v_first=state_v_first, beta_mode=beta_mode)


def _chunk_fake(q, k, v, g, beta, initial_state, cu_seqlens, A_log, dt_bias, scale, use_qk_l2norm, state_v_first,
                beta_mode=-1):
    return gdn.gdn_outputs("gdn_chunk_fwd", q, v, cu_seqlens, True, state_v_first)


def _chunk_setup_context(ctx, inputs, output):
    q, k, v, g, beta, initial_state, cu_seqlens, A_log, _, scale, use_qk_l2norm, state_v_first, beta_mode = inputs
    ctx.save_for_backward(q, k, v, g, beta, initial_state, cu_seqlens)
    ctx.fused_gate = A_log is not None or beta_mode > 0
    ctx.options = scale, use_qk_l2norm, state_v_first


def _gradients(ctx, d_o, d_final_state):
    """dq, dk, dv, dg, dbeta, dh0 (None without an initial state) through hops::gdn_chunk_bwd."""
    if ctx.fused_gate:  # the wrappers gate in torch instead; a direct torch.ops.hops caller gets told here
        raise unsupported("hops: gdn_chunk_bwd has no fused gate (A_log) or beta_mode")
    q, k, v, g, beta, initial_state, cu_seqlens = ctx.saved_tensors
    grads = gdn_chunk_bwd_op(q, k, v, g, beta, initial_state, cu_seqlens, d_o, d_final_state, *ctx.options)
    return restore(grads, (True,) * 5 + (initial_state is not None,))


def _chunk_gradients(ctx, d_o, d_final_state):
    return *_gradients(ctx, d_o, d_final_state), None, None, None, None, None, None, None


def gates_in_torch(g, beta, A_log, dt_bias, beta_mode):
    """(g, beta) as the kernels' fused gate and beta_mode make them, computed with differentiable
    torch ops in float32 (gdn_chunk_bwd has no fused gate): autograd then differentiates the gate."""
    if A_log is not None:
        bias = 0 if dt_bias is None else dt_bias.float()
        g = -A_log.float().exp() * F.softplus(g.float() + bias)
    mode = beta_mode if beta_mode >= 0 else (1 if A_log is not None else 0)
    if mode:
        beta = mode * torch.sigmoid(beta.float())
    return g, beta


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
    "Tensor? A_log, Tensor? dt_bias, float scale, bool use_qk_l2norm, bool state_v_first, int beta_mode=-1) "
    "-> (Tensor, Tensor)",
    _chunk_kernel, _chunk_fake, backward=_chunk_gradients, setup_context=_chunk_setup_context)
gdn_chunk_bwd_op = define(
    "gdn_chunk_bwd(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? initial_state, "
    "Tensor? cu_seqlens, Tensor do, Tensor? d_final_state, float scale, bool use_qk_l2norm, bool state_v_first) "
    "-> Tensor[]", _chunk_bwd_kernel, _chunk_bwd_fake)


def gdn_chunk_fwd(q, k, v, g, beta, *, scale=None, initial_state=None, cu_seqlens=None, use_qk_l2norm=False,
                  output_final_state=False, A_log=None, dt_bias=None, state_v_first=False, beta_mode=-1):
    """hops.ops.gdn_chunk_fwd through hops::gdn_chunk: differentiable (with gradients, the fused
    gate and beta_mode are computed by torch before the kernel: gates_in_torch)."""
    check("gdn_chunk_fwd", q)
    if needs_grad(q, k, v, g, beta, initial_state, A_log, dt_bias):
        check("gdn_chunk_bwd", q)
        if A_log is not None or beta_mode > 0:
            g, beta = gates_in_torch(g, beta, A_log, dt_bias, beta_mode)
            A_log = dt_bias = None
            beta_mode = 0
    if cu_seqlens is None:
        refuse_traced("gdn_chunk_fwd", q, k, v, g, beta, scale=scale, initial_state=initial_state,
                      use_qk_l2norm=use_qk_l2norm, output_final_state=True, A_log=A_log, dt_bias=dt_bias,
                      state_v_first=state_v_first, beta_mode=beta_mode)
    o, final_state = gdn_chunk_op(q, k, v, g, beta, initial_state, index_array(cu_seqlens, q), A_log, dt_bias,
                                  scale or 0.0, use_qk_l2norm, state_v_first, beta_mode)
    return o, final_state if output_final_state else None


# ---- hops::gdn_recurrent (decode: in place on a state pool, no backward) ------------------

def _recurrent_kernel(q, k, v, g, beta, state, state_indices, cu_seqlens, A_log, dt_bias, scale, use_qk_l2norm,
                      state_v_first, beta_mode=-1):
    return _recurrent(q, k, v, g, beta, state, state_indices=state_indices, cu_seqlens=cu_seqlens, scale=scale,
                      use_qk_l2norm=use_qk_l2norm, A_log=A_log, dt_bias=dt_bias, state_v_first=state_v_first,
                      beta_mode=beta_mode)


def _recurrent_fake(q, k, v, g, beta, state, state_indices, cu_seqlens, A_log, dt_bias, scale, use_qk_l2norm,
                    state_v_first, beta_mode=-1):
    return gdn.gdn_outputs("gdn_recurrent", q, v)[0]


gdn_recurrent_op = define(
    "gdn_recurrent(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor(a5!) state, Tensor? state_indices, "
    "Tensor? cu_seqlens, Tensor? A_log, Tensor? dt_bias, float scale, bool use_qk_l2norm, bool state_v_first, "
    "int beta_mode=-1) -> Tensor", _recurrent_kernel, _recurrent_fake, mutated=(5,))


def gdn_recurrent(q, k, v, g, beta, state, *, state_indices=None, cu_seqlens=None, scale=None,
                  use_qk_l2norm=False, A_log=None, dt_bias=None, state_v_first=False, beta_mode=-1):
    """hops.ops.gdn_recurrent through hops::gdn_recurrent (state updated in place)."""
    check("gdn_recurrent", q)
    refuse_gradients("gdn_recurrent", q, k, v, g, beta, state, A_log, dt_bias)
    if state_indices is None and cu_seqlens is None:
        refuse_traced("gdn_recurrent", q, k, v, g, beta, state, scale=scale, use_qk_l2norm=use_qk_l2norm,
                      A_log=A_log, dt_bias=dt_bias, state_v_first=state_v_first, beta_mode=beta_mode)
    return gdn_recurrent_op(q, k, v, g, beta, state, index_array(state_indices, q), index_array(cu_seqlens, q),
                            A_log, dt_bias, scale or 0.0, use_qk_l2norm, state_v_first, beta_mode)


# ---- hops::gdn_recurrent_fn: the recurrence on a copy of the state, differentiable --------
# FLA's fused_recurrent convention (initial_state untouched, the final state returned). Its
# forward is gdn_recurrent's kernel; its backward is gdn_chunk_bwd, which differentiates the
# same recurrence (gdn_recurrent and gdn_chunk_fwd compute one function, docs/OPS.md).

def _state_copy(q, v, initial_state, cu_seqlens, state_v_first):
    """A float32 copy of initial_state, or zeros of the final state's shape."""
    if initial_state is not None:
        return float32_copy(initial_state)
    shape = gdn.gdn_state_shape(sequence_count(q.shape[0], cu_seqlens), v.shape[2], q.shape[3], v.shape[3],
                                state_v_first)
    return zeros(q, shape, "float32")


def _recurrent_fn_kernel(q, k, v, g, beta, initial_state, cu_seqlens, scale, use_qk_l2norm, state_v_first):
    state = _state_copy(q, v, initial_state, cu_seqlens, state_v_first)
    o = _recurrent(q, k, v, g, beta, state, cu_seqlens=cu_seqlens, scale=scale, use_qk_l2norm=use_qk_l2norm,
                   state_v_first=state_v_first)
    return o, state


def _recurrent_fn_fake(q, k, v, g, beta, initial_state, cu_seqlens, scale, use_qk_l2norm, state_v_first):
    return gdn.gdn_outputs("gdn_recurrent", q, v, cu_seqlens, True, state_v_first)


def _recurrent_fn_setup_context(ctx, inputs, output):
    q, k, v, g, beta, initial_state, cu_seqlens, scale, use_qk_l2norm, state_v_first = inputs
    ctx.save_for_backward(q, k, v, g, beta, initial_state, cu_seqlens)
    ctx.fused_gate = False
    ctx.options = scale, use_qk_l2norm, state_v_first


def _recurrent_fn_gradients(ctx, d_o, d_final_state):
    return *_gradients(ctx, d_o, d_final_state), None, None, None, None


gdn_recurrent_fn_op = define(
    "gdn_recurrent_fn(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor? initial_state, "
    "Tensor? cu_seqlens, float scale, bool use_qk_l2norm, bool state_v_first) -> (Tensor, Tensor)",
    _recurrent_fn_kernel, _recurrent_fn_fake, backward=_recurrent_fn_gradients,
    setup_context=_recurrent_fn_setup_context)


def gdn_recurrent_fwd(q, k, v, g, beta, *, scale=None, initial_state=None, cu_seqlens=None, use_qk_l2norm=False,
                      A_log=None, dt_bias=None, state_v_first=False, beta_mode=-1):
    """The recurrence (gdn_recurrent's kernel) on a float32 copy of initial_state (zeros when
    None) -> (o, final_state), initial_state untouched: FLA's fused_recurrent convention.
    Differentiable through hops::gdn_recurrent_fn (gradients from gdn_chunk_bwd; the gate and
    beta_mode then computed by torch, gates_in_torch)."""
    check("gdn_recurrent", q)
    cu_seqlens = index_array(cu_seqlens, q)
    if needs_grad(q, k, v, g, beta, initial_state, A_log, dt_bias):
        check("gdn_chunk_bwd", q)
        g, beta = gates_in_torch(g, beta, A_log, dt_bias, beta_mode)
        if initial_state is not None:
            initial_state = as_float32(initial_state)  # .to: keeps the gradient
        return gdn_recurrent_fn_op(q, k, v, g, beta, initial_state, cu_seqlens, scale or 0.0, use_qk_l2norm,
                                   state_v_first)
    state = _state_copy(q, v, initial_state, cu_seqlens, state_v_first)
    o = gdn_recurrent(q, k, v, g, beta, state, cu_seqlens=cu_seqlens, scale=scale, use_qk_l2norm=use_qk_l2norm,
                      A_log=A_log, dt_bias=dt_bias, state_v_first=state_v_first, beta_mode=beta_mode)
    return o, state


FUNCTIONS = (gdn_chunk_fwd, gdn_recurrent, gdn_recurrent_fwd)  # what hops.torch_ops exports of this family
