"""hops::moe_route, hops::moe_dispatch, hops::moe_expert_mlp, hops::moe_combine and the
backwards of the last three.

Autograd: moe_dispatch is differentiable in x (hops::moe_dispatch_bwd), moe_expert_mlp in
rows, gate_up_proj and down_proj (hops::moe_expert_mlp_bwd, weight gradients only where
asked for: frozen experts cost no weight-gradient GEMMs), moe_combine in rows and
topk_weights (hops::moe_combine_bwd). The router's top-k has no gradient; where logits
require grad, moe_route picks the experts with the hops kernel and computes their weights
with torch (softmax or sigmoid, gathered at the chosen ids, renormalised: the operations
transformers' routers run), so the weights stay differentiable in the logits."""

import torch

from .._frameworks import empty_like, index_array
from ..ops import moe
from ._common import check, needs_grad, present, refuse_traced, restore
from ._registry import define

_route, _dispatch, _expert_mlp, _combine = (moe.moe_route.__wrapped__, moe.moe_dispatch.__wrapped__,
                                            moe.moe_expert_mlp.__wrapped__, moe.moe_combine.__wrapped__)
_dispatch_bwd, _expert_mlp_bwd, _combine_bwd = (moe.moe_dispatch_bwd.__wrapped__, moe.moe_expert_mlp_bwd.__wrapped__,
                                                moe.moe_combine_bwd.__wrapped__)  # without device=


def _name(dtype) -> str | None:
    """A dtype as hops.ops names it ("float32"); None stays None."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


# ---- hops::moe_route (no backward: the top-k) ------------------------------------------------

moe_route_op = define(
    "moe_route(Tensor logits, int top_k, bool normalize, int scoring, ScalarType weights_dtype, "
    "ScalarType ids_dtype) -> (Tensor, Tensor)",
    lambda logits, top_k, normalize, scoring, weights_dtype, ids_dtype: _route(
        logits, top_k, normalize, ("softmax", "sigmoid")[scoring], weights_dtype=_name(weights_dtype),
        ids_dtype=_name(ids_dtype)),
    lambda logits, top_k, normalize, scoring, weights_dtype, ids_dtype: moe.moe_route_outputs(
        logits, top_k, _name(weights_dtype), _name(ids_dtype)))


def _torch_dtype(dtype, default: torch.dtype) -> torch.dtype:
    if dtype is None:
        return default
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def moe_route(logits, top_k, normalize=True, scoring="softmax", *, weights_dtype="float32", ids_dtype="int64"):
    """hops.ops.moe_route through hops::moe_route. Where logits require grad, the weights
    are torch's scores of the chosen experts (differentiable in logits); the ids have no
    gradient either way."""
    check("moe_route", logits)
    code = moe.scoring_code(scoring)
    weights_dtype, ids_dtype = _torch_dtype(weights_dtype, logits.dtype), _torch_dtype(ids_dtype, torch.int64)
    refuse_traced("moe_route", logits, top_k, normalize, scoring, weights_dtype=_name(weights_dtype),
                  ids_dtype=_name(ids_dtype))
    if not needs_grad(logits):
        return moe_route_op(logits, top_k, normalize, code, weights_dtype, ids_dtype)
    _, ids = moe_route_op(logits.detach(), top_k, normalize, code, weights_dtype, ids_dtype)
    scores = torch.softmax(logits, dim=-1, dtype=torch.float32) if code == 0 else torch.sigmoid(logits.float())
    weights = scores.gather(-1, ids.long())
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(weights_dtype), ids


# ---- hops::moe_dispatch and its backward -------------------------------------------------------

def _dispatch_setup_context(ctx, inputs, output):
    _, _, row_map = output
    ctx.save_for_backward(row_map)
    ctx.mark_non_differentiable(output[1], row_map)


def _dispatch_gradients(ctx, d_rows, d_counts, d_row_map):
    row_map, = ctx.saved_tensors
    return moe_dispatch_bwd_op(d_rows, row_map), None, None


moe_dispatch_op = define(
    "moe_dispatch(Tensor x, Tensor topk_ids, int num_experts) -> (Tensor, Tensor, Tensor)",
    lambda x, topk_ids, num_experts: _dispatch(x, topk_ids, num_experts),
    lambda x, topk_ids, num_experts: moe.moe_dispatch_outputs(x, topk_ids, num_experts),
    backward=_dispatch_gradients, setup_context=_dispatch_setup_context)
moe_dispatch_bwd_op = define(
    "moe_dispatch_bwd(Tensor d_rows, Tensor row_map) -> Tensor",
    lambda d_rows, row_map: _dispatch_bwd(d_rows, row_map),
    lambda d_rows, row_map: moe.moe_dispatch_bwd_output(d_rows, row_map))


def _refuse_traced_with_indices(function: str, indices, *arguments) -> None:
    """refuse_traced for calls with index tensors, asked only where those are on a device:
    the provider reads host-resident indices, which a trace does not have."""
    if not indices.is_cpu:
        refuse_traced(function, *arguments)


def moe_dispatch(x, topk_ids, num_experts):
    """hops.ops.moe_dispatch through hops::moe_dispatch: rows differentiable in x."""
    check("moe_dispatch", x)
    if needs_grad(x):
        check("moe_dispatch_bwd", x)
    topk_ids = index_array(topk_ids, x)
    _refuse_traced_with_indices("moe_dispatch", topk_ids, x, topk_ids, num_experts)
    return moe_dispatch_op(x, topk_ids, num_experts)


# ---- hops::moe_expert_mlp and its backward ------------------------------------------------------

def _expert_mlp_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _expert_mlp_gradients(ctx, d_out):
    rows, counts, gate_up_proj, down_proj = ctx.saved_tensors
    _, _, gate_up_grad, down_grad = ctx.needs_input_grad
    grads = moe_expert_mlp_bwd_op(rows, counts, gate_up_proj, down_proj, d_out, gate_up_grad, down_grad)
    d_rows, d_gate_up_proj, d_down_proj = restore(grads, (True, gate_up_grad, down_grad))
    return d_rows, None, d_gate_up_proj, d_down_proj


def _expert_mlp_bwd_kernel(rows, counts, gate_up_proj, down_proj, d_out, gate_up_grad, down_grad):
    """[d_rows], then d_gate_up_proj and d_down_proj where asked for."""
    return present(_expert_mlp_bwd(rows, counts, gate_up_proj, down_proj, d_out, gate_up_grad=gate_up_grad,
                                   down_grad=down_grad))


def _expert_mlp_bwd_fake(rows, counts, gate_up_proj, down_proj, d_out, gate_up_grad, down_grad):
    return present(moe.moe_expert_mlp_bwd_outputs(rows, gate_up_proj, down_proj, gate_up_grad, down_grad))


moe_expert_mlp_op = define(
    "moe_expert_mlp(Tensor rows, Tensor counts, Tensor gate_up_proj, Tensor down_proj) -> Tensor",
    lambda rows, counts, gate_up_proj, down_proj: _expert_mlp(rows, counts, gate_up_proj, down_proj),
    lambda rows, counts, gate_up_proj, down_proj: empty_like(rows),
    backward=_expert_mlp_gradients, setup_context=_expert_mlp_setup_context)
moe_expert_mlp_bwd_op = define(
    "moe_expert_mlp_bwd(Tensor rows, Tensor counts, Tensor gate_up_proj, Tensor down_proj, Tensor d_out, "
    "bool gate_up_grad, bool down_grad) -> Tensor[]",
    _expert_mlp_bwd_kernel, _expert_mlp_bwd_fake)


def moe_expert_mlp(rows, counts, gate_up_proj, down_proj):
    """hops.ops.moe_expert_mlp through hops::moe_expert_mlp: differentiable in rows,
    gate_up_proj and down_proj."""
    check("moe_expert_mlp", rows)
    if needs_grad(rows, gate_up_proj, down_proj):
        check("moe_expert_mlp_bwd", rows)
    counts = index_array(counts, rows)
    _refuse_traced_with_indices("moe_expert_mlp", counts, rows, counts, gate_up_proj, down_proj)
    return moe_expert_mlp_op(rows, counts, gate_up_proj, down_proj)


# ---- hops::moe_combine and its backward ---------------------------------------------------------

def _combine_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _combine_gradients(ctx, dy):
    rows, row_map, topk_weights = ctx.saved_tensors
    weights_grad = ctx.needs_input_grad[2]
    d_rows, d_topk_weights = restore(moe_combine_bwd_op(rows, row_map, topk_weights, dy, weights_grad),
                                     (True, weights_grad))
    return d_rows, None, d_topk_weights


def _combine_bwd_kernel(rows, row_map, topk_weights, dy, weights_grad):
    """[d_rows], then d_topk_weights where asked for."""
    return present(_combine_bwd(rows, row_map, topk_weights, dy, weights_grad=weights_grad))


def _combine_bwd_fake(rows, row_map, topk_weights, dy, weights_grad):
    return present(moe.moe_combine_bwd_outputs(rows, topk_weights, weights_grad))


moe_combine_op = define(
    "moe_combine(Tensor rows, Tensor row_map, Tensor topk_weights) -> Tensor",
    lambda rows, row_map, topk_weights: _combine(rows, row_map, topk_weights),
    lambda rows, row_map, topk_weights: moe.moe_combine_output(rows, row_map),
    backward=_combine_gradients, setup_context=_combine_setup_context)
moe_combine_bwd_op = define(
    "moe_combine_bwd(Tensor rows, Tensor row_map, Tensor topk_weights, Tensor dy, bool weights_grad) -> Tensor[]",
    _combine_bwd_kernel, _combine_bwd_fake)


def moe_combine(rows, row_map, topk_weights):
    """hops.ops.moe_combine through hops::moe_combine: differentiable in rows and topk_weights."""
    check("moe_combine", rows)
    if needs_grad(rows, topk_weights):
        check("moe_combine_bwd", rows)
    row_map = index_array(row_map, rows)
    _refuse_traced_with_indices("moe_combine", row_map, rows, row_map, topk_weights)
    return moe_combine_op(rows, row_map, topk_weights)


FUNCTIONS = (moe_route, moe_dispatch, moe_expert_mlp, moe_combine)  # what hops.torch_ops exports of this family
