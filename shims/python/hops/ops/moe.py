"""The mixture-of-experts family of hops.ops: moe_route, moe_dispatch, moe_expert_mlp,
moe_combine and the backwards of the last three.

T tokens of width Hd, E experts of width I, k slots per token, R = T*k rows. The index
outputs (counts, row_map) take topk_ids' dtype (int32 or int64); -1 marks a dropped slot."""

from .._frameworks import empty, empty_like, index_array
from ..errors import unsupported
from ..opencl import device_option
from ._common import call, dims

OPS = ("moe_route", "moe_dispatch", "moe_expert_mlp", "moe_combine", "moe_dispatch_bwd", "moe_expert_mlp_bwd",
       "moe_combine_bwd")

_SCORINGS = {"softmax": 0, "sigmoid": 1}


def _indices(values, like):
    """Index lists and tuples as arrays of like's framework; arrays (and the TensorSpecs of
    a torch.compile trace, which have no __dlpack__) pass as they are."""
    return index_array(values, like) if isinstance(values, (list, tuple)) else values


def scoring_code(scoring) -> int:
    """moe_route scoring name -> the op's code (0 softmax, 1 sigmoid)."""
    try:
        return _SCORINGS[scoring]
    except (KeyError, TypeError):
        raise unsupported(f"moe_route scoring {scoring!r}: hops implements 'softmax' and 'sigmoid'") from None


def moe_route_outputs(logits, top_k: int, weights_dtype, ids_dtype):
    """(topk_weights [T,k], topk_ids [T,k]) for logits [T,E]."""
    tokens, _ = dims("moe_route", "logits", logits, 2)
    return empty(logits, (tokens, top_k), weights_dtype), empty(logits, (tokens, top_k), ids_dtype)


@device_option
def moe_route(logits, top_k, normalize=True, scoring="softmax", *, weights_dtype="float32", ids_dtype="int64"):
    """The router after its linear: logits [T,E] -> (topk_weights [T,k], topk_ids [T,k]).

    scores = softmax over the experts ("softmax") or sigmoid per expert ("sigmoid"); the
    top_k best experts per token, best first, ties to the lower id; weights = their
    scores, divided by their sum when normalize. weights_dtype (float32 unless given:
    transformers' routers compute them in float32) and ids_dtype (int64, as torch.topk;
    or int32) name the outputs' dtypes; None means logits' dtype for the weights."""
    weights, ids = moe_route_outputs(logits, top_k, weights_dtype, ids_dtype)
    call("moe_route", logits=logits, topk_weights=weights, topk_ids=ids, normalize=normalize,
         scoring=scoring_code(scoring))
    return weights, ids


def moe_dispatch_outputs(x, topk_ids, num_experts: int, rows=None):
    """(rows [T*k,Hd] like x (`rows` where given), counts [E], row_map [T,k]); indices in
    topk_ids' dtype."""
    tokens, width = dims("moe_dispatch", "x", x, 2)
    _, slots = dims("moe_dispatch", "topk_ids", topk_ids, 2)
    rows = empty(x, (tokens * slots, width)) if rows is None else rows
    return rows, empty(topk_ids, (num_experts,)), empty(topk_ids, (tokens, slots))


@device_option
def moe_dispatch(x, topk_ids, num_experts, *, rows=None):
    """Copies each token's row to its experts -> (rows [T*k,Hd], counts [E], row_map [T,k]).

    x [T,Hd]; topk_ids [T,k] (int32/int64, -1 drops the slot). rows holds, expert by expert
    in ascending order and within one in (token, slot) order, a copy of x[t] for each kept
    slot; rows past sum(counts) are zero. row_map[t,j] is the row of slot (t, j), -1 when
    dropped. An id outside [-1, E) is an error naming topk_ids. rows= takes a preallocated
    [T*k,Hd] array like x to write (every row is written), else a new one is allocated."""
    topk_ids = _indices(topk_ids, x)
    rows, counts, row_map = moe_dispatch_outputs(x, topk_ids, num_experts, rows)
    call("moe_dispatch", x=x, topk_ids=topk_ids, rows=rows, counts=counts, row_map=row_map)
    return rows, counts, row_map


@device_option
def moe_expert_mlp(rows, counts, gate_up_proj, down_proj, *, out=None):
    """The grouped SwiGLU expert MLP -> out [R,Hd] like rows.

    For expert e and its counts[e] rows r (from row sum(counts[:e])): out = (silu(r Wg^T) *
    (r Wu^T)) Wd^T with gate_up_proj[e] = [Wg; Wu] [2I,Hd] (gate rows first) and down_proj[e]
    = Wd [Hd,I], transformers' stacked layouts. Rows past sum(counts) give 0. out= takes a
    preallocated [R,Hd] array like rows to write (every row is written), else a new one."""
    out = empty_like(rows) if out is None else out
    call("moe_expert_mlp", rows=rows, counts=_indices(counts, rows), gate_up_proj=gate_up_proj,
         down_proj=down_proj, out=out)
    return out


def moe_combine_output(rows, row_map):
    tokens, _ = dims("moe_combine", "row_map", row_map, 2)
    return empty(rows, (tokens, dims("moe_combine", "rows", rows, 2)[1]))


@device_option
def moe_combine(rows, row_map, topk_weights):
    """y[t] = sum over the kept slots j (ascending) of topk_weights[t,j] * rows[row_map[t,j]]
    -> y [T,Hd] in rows' dtype; topk_weights [T,k] may be any float dtype."""
    row_map = _indices(row_map, rows)
    y = moe_combine_output(rows, row_map)
    call("moe_combine", rows=rows, row_map=row_map, topk_weights=topk_weights, y=y)
    return y


def moe_dispatch_bwd_output(d_rows, row_map):
    tokens, _ = dims("moe_dispatch_bwd", "row_map", row_map, 2)
    return empty(d_rows, (tokens, dims("moe_dispatch_bwd", "d_rows", d_rows, 2)[1]))


@device_option
def moe_dispatch_bwd(d_rows, row_map):
    """Backward of moe_dispatch: dx[t] = sum over the kept slots j (ascending) of
    d_rows[row_map[t,j]] -> dx [T,Hd] in d_rows' dtype."""
    row_map = _indices(row_map, d_rows)
    dx = moe_dispatch_bwd_output(d_rows, row_map)
    call("moe_dispatch_bwd", d_rows=d_rows, row_map=row_map, dx=dx)
    return dx


def moe_expert_mlp_bwd_outputs(rows, gate_up_proj, down_proj, gate_up_grad: bool, down_grad: bool):
    """(d_rows, d_gate_up_proj or None, d_down_proj or None), each like its input."""
    return (empty_like(rows), empty_like(gate_up_proj) if gate_up_grad else None,
            empty_like(down_proj) if down_grad else None)


@device_option
def moe_expert_mlp_bwd(rows, counts, gate_up_proj, down_proj, d_out, *, gate_up_grad=True, down_grad=True):
    """Backward of moe_expert_mlp: d_out [R,Hd] -> (d_rows, d_gate_up_proj or None,
    d_down_proj or None). The weight gradients (asked for with gate_up_grad / down_grad)
    sum each expert's rows in row order and are zero for experts without rows; d_rows is
    zero past sum(counts)."""
    d_rows, d_gate_up_proj, d_down_proj = moe_expert_mlp_bwd_outputs(rows, gate_up_proj, down_proj, gate_up_grad,
                                                                      down_grad)
    call("moe_expert_mlp_bwd", rows=rows, counts=_indices(counts, rows), gate_up_proj=gate_up_proj,
         down_proj=down_proj, d_out=d_out, d_rows=d_rows, d_gate_up_proj=d_gate_up_proj, d_down_proj=d_down_proj)
    return d_rows, d_gate_up_proj, d_down_proj


def moe_combine_bwd_outputs(rows, topk_weights, weights_grad: bool):
    """(d_rows like rows, d_topk_weights like topk_weights or None)."""
    return empty_like(rows), empty_like(topk_weights) if weights_grad else None


@device_option
def moe_combine_bwd(rows, row_map, topk_weights, dy, *, weights_grad=True):
    """Backward of moe_combine: dy [T,Hd] -> (d_rows [R,Hd], d_topk_weights [T,k] or None):
    d_rows[row_map[t,j]] = topk_weights[t,j] * dy[t] (zero for rows no slot reads) and
    d_topk_weights[t,j] = <dy[t], rows[row_map[t,j]]> (0 for dropped slots). No row may be
    named by two slots (moe_dispatch's row maps never do)."""
    row_map = _indices(row_map, rows)
    d_rows, d_topk_weights = moe_combine_bwd_outputs(rows, topk_weights, weights_grad)
    call("moe_combine_bwd", rows=rows, row_map=row_map, topk_weights=topk_weights, dy=dy, d_rows=d_rows,
         d_topk_weights=d_topk_weights)
    return d_rows, d_topk_weights
