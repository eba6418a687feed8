"""Expert parallelism in hops.ops: moe_ep_dispatch and moe_ep_combine across the ranks of
an mpi4py communicator (HOPS_COMM_MPI, through libhops_mpi.so).

Each of W ranks owns E/W consecutive experts. moe_ep_dispatch sends every kept (token, slot)
row to the rank owning its expert and returns this rank's rows grouped by local expert (then
source rank, token, slot), their counts per local expert, and the handle moe_ep_combine
needs; moe_ep_combine brings the expert outputs back and sums them with the weights in slot
order. Every rank calls both, in the same order. Concatenated over the ranks, the results
are moe_dispatch's and moe_combine's on the gathered problem, bit for bit in float32."""

import ctypes
from typing import NamedTuple

from .. import _abi
from .._bindings import communicating
from .._frameworks import empty
from ._common import call, dims

OPS = ("moe_ep_dispatch", "moe_ep_combine")


class EpHandle(NamedTuple):
    """What moe_ep_combine needs of moe_ep_dispatch: row_map [T,k], send_counts [E],
    recv_counts [ranks, E/ranks]."""
    row_map: object
    send_counts: object
    recv_counts: object


def describe(comm) -> _abi.hops_comm:
    """The hops_comm of an mpi4py communicator (the address of its MPI_Comm as the handle)."""
    try:
        from mpi4py import MPI
    except ImportError:
        MPI = None
    if MPI is not None and isinstance(comm, MPI.Comm):
        return _abi.hops_comm(ctypes.sizeof(_abi.hops_comm), _abi.HOPS_COMM_MPI, comm.Get_rank(),
                              comm.Get_size(), MPI._addressof(comm))
    if isinstance(comm, _abi.hops_comm):
        return comm
    raise TypeError(f"comm: expected an mpi4py communicator or a hops_comm, got {type(comm).__name__}")


def moe_ep_dispatch(x, topk_ids, num_experts: int, comm, capacity=None):
    """x [T,Hd], topk_ids [T,k] (global expert ids, -1 dropped) -> (rows [C,Hd], counts
    [E/ranks], handle). C = capacity, by default T*k*ranks (enough when no rank has more
    tokens than this one); a rank receiving more than its C fails on every rank."""
    described = describe(comm)
    tokens, hidden = dims("moe_ep_dispatch", "x", x, 2)
    _, slots = dims("moe_ep_dispatch", "topk_ids", topk_ids, 2)
    ranks = described.size
    local = num_experts // ranks
    index = str(topk_ids.dtype).removeprefix("torch.")
    rows = empty(x, (tokens * slots * ranks if capacity is None else capacity, hidden))
    counts = empty(x, (local,), index)
    row_map = empty(x, (tokens, slots), index)
    send_counts = empty(x, (num_experts,), index)
    recv_counts = empty(x, (ranks, local), index)
    with communicating(described):
        call("moe_ep_dispatch", x=x, topk_ids=topk_ids, rows=rows, counts=counts, row_map=row_map,
             send_counts=send_counts, recv_counts=recv_counts)
    return rows, counts, EpHandle(row_map, send_counts, recv_counts)


def moe_ep_combine(expert_out, handle: EpHandle, topk_weights, comm):
    """expert_out [C,Hd] (outputs for moe_ep_dispatch's rows) -> y [T,Hd] on the tokens'
    ranks: y[t] = sum over the kept slots j of topk_weights[t,j] * slot j's output."""
    tokens, _ = dims("moe_ep_combine", "row_map", handle.row_map, 2)
    y = empty(expert_out, (tokens, dims("moe_ep_combine", "expert_out", expert_out, 2)[1]))
    with communicating(describe(comm)):
        call("moe_ep_combine", expert_out=expert_out, row_map=handle.row_map, topk_weights=topk_weights,
             send_counts=handle.send_counts, recv_counts=handle.recv_counts, y=y)
    return y
