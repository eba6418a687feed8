"""hops::moe_ep_dispatch and hops::moe_ep_combine: expert parallelism as torch operators.

A communicator is no torch type: the wrappers put it in a table (COMMS, kept alive) and pass
its index as an int, which fake kernels read for the number of ranks. The ops run on every
rank of the communicator, in the same order; so do their backwards, each one exchange the
other way:
- moe_ep_dispatch's backward is a combine with unit weights: each slot's row gradient goes
  back to its token's rank and dx[t] sums them in slot order (moe_dispatch_bwd's sum);
- moe_ep_combine's backward dispatches one row per slot, w[t,j] * dy[t], as tokens of one
  slot each (the experts recovered from row_map and send_counts), which puts them where the
  forward's rows were: that is d_expert_out. For d_topk_weights the same one-slot handle
  brings each slot's expert output back (a combine with unit weights, no sum), then
  <dy[t], out>."""

import torch

from ..ops import moe_ep
from ..ops.moe_ep import EpHandle
from ._common import check, needs_grad
from ._registry import define

_dispatch, _combine = moe_ep.moe_ep_dispatch, moe_ep.moe_ep_combine

COMMS: list = []  # index -> (communicator, its hops_comm); communicators stay alive, so ids stay unique
_INDICES: dict[int, int] = {}  # id(communicator) -> index


def comm_index(comm) -> int:
    """The index of `comm` in COMMS (added on first use)."""
    index = _INDICES.get(id(comm))
    if index is None or COMMS[index][0] is not comm:
        COMMS.append((comm, moe_ep.describe(comm)))
        index = _INDICES[id(comm)] = len(COMMS) - 1
    return index


def _described(index: int):
    return COMMS[index][1]


def _unit_weights(row_map: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.ones(row_map.shape, dtype=like.dtype, device=like.device)


def _slot_experts(row_map: torch.Tensor, send_counts: torch.Tensor) -> torch.Tensor:
    """The global expert of each slot: row_map points into the sender's rows grouped by expert,
    send_counts [E] long; -1 where dropped."""
    ends = torch.cumsum(send_counts, 0).to(row_map.dtype)
    experts = torch.searchsorted(ends, row_map, right=True).to(row_map.dtype)
    return torch.where(row_map < 0, torch.full_like(row_map, -1), experts)


# ---- hops::moe_ep_dispatch ------------------------------------------------------------------

def _dispatch_kernel(x, topk_ids, num_experts, comm, capacity):
    rows, counts, handle = _dispatch(x, topk_ids, num_experts, _described(comm), capacity)
    return rows, counts, *handle


def _dispatch_fake(x, topk_ids, num_experts, comm, capacity):
    return moe_ep.moe_ep_dispatch_outputs(x, topk_ids, num_experts, _described(comm).size, capacity)


def _dispatch_setup_context(ctx, inputs, output):
    _, _, row_map, send_counts, recv_counts = output
    ctx.save_for_backward(row_map, send_counts, recv_counts)
    ctx.comm = inputs[3]
    ctx.mark_non_differentiable(*output[1:])


def _dispatch_gradients(ctx, d_rows, *_):
    row_map, send_counts, recv_counts = ctx.saved_tensors
    dx = moe_ep_combine_op(d_rows.contiguous(), row_map, _unit_weights(row_map, d_rows), send_counts, recv_counts,
                           ctx.comm)
    return dx, None, None, None, None


moe_ep_dispatch_op = define(
    "moe_ep_dispatch(Tensor x, Tensor topk_ids, int num_experts, int comm, int capacity) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    _dispatch_kernel, _dispatch_fake, backward=_dispatch_gradients, setup_context=_dispatch_setup_context)


# ---- hops::moe_ep_combine -------------------------------------------------------------------

def _combine_kernel(expert_out, row_map, topk_weights, send_counts, recv_counts, comm):
    return _combine(expert_out, EpHandle(row_map, send_counts, recv_counts), topk_weights, _described(comm))


def _combine_fake(expert_out, row_map, topk_weights, send_counts, recv_counts, comm):
    return moe_ep.moe_ep_combine_output(expert_out, row_map)


def _combine_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.comm = inputs[5]


def _combine_gradients(ctx, dy):
    expert_out, row_map, weights, send_counts, recv_counts = ctx.saved_tensors
    (tokens, slots), hidden = row_map.shape, dy.shape[-1]
    experts = _slot_experts(row_map, send_counts).reshape(tokens * slots, 1)
    # w[t,j] * dy[t] as moe_combine_bwd forms it (float32 products, rounded to dy's dtype)
    per_slot = (weights.float().unsqueeze(-1) * dy.float().unsqueeze(1)).to(dy.dtype).reshape(tokens * slots, hidden)
    d_out, _, slot_map, slot_sent, slot_received = moe_ep_dispatch_op(
        per_slot, experts, send_counts.shape[0], ctx.comm, expert_out.shape[0])
    d_weights = None
    if ctx.needs_input_grad[2]:
        outputs = moe_ep_combine_op(expert_out, slot_map, _unit_weights(slot_map, expert_out), slot_sent,
                                    slot_received, ctx.comm)
        d_weights = (outputs.float().view(tokens, slots, hidden) * dy.float().unsqueeze(1)).sum(-1).to(weights.dtype)
    return d_out if ctx.needs_input_grad[0] else None, None, d_weights, None, None, None


moe_ep_combine_op = define(
    "moe_ep_combine(Tensor expert_out, Tensor row_map, Tensor topk_weights, Tensor send_counts, "
    "Tensor recv_counts, int comm) -> Tensor",
    _combine_kernel, _combine_fake, backward=_combine_gradients, setup_context=_combine_setup_context)


# ---- the wrappers: hops.ops' signatures --------------------------------------------------------

def moe_ep_dispatch(x, topk_ids, num_experts, comm, capacity=None):
    """hops.ops.moe_ep_dispatch through hops::moe_ep_dispatch: rows differentiable in x.
    (rows, counts, EpHandle); C = capacity, by default T*k*ranks."""
    check("moe_ep_dispatch", x)
    index = comm_index(comm)
    if capacity is None:
        capacity = topk_ids.shape[0] * topk_ids.shape[1] * _described(index).size
    rows, counts, row_map, send_counts, recv_counts = moe_ep_dispatch_op(x, topk_ids, num_experts, index, capacity)
    return rows, counts, EpHandle(row_map, send_counts, recv_counts)


def moe_ep_combine(expert_out, handle, topk_weights, comm):
    """hops.ops.moe_ep_combine through hops::moe_ep_combine: differentiable in expert_out
    and topk_weights."""
    check("moe_ep_combine", expert_out)
    if needs_grad(expert_out, topk_weights):
        check("moe_ep_dispatch", expert_out)
    return moe_ep_combine_op(expert_out, handle.row_map, topk_weights, handle.send_counts, handle.recv_counts,
                             comm_index(comm))


FUNCTIONS = (moe_ep_dispatch, moe_ep_combine)  # what hops.torch_ops exports of this family
