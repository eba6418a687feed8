"""Expert parallelism in hops.ops: moe_ep_dispatch and moe_ep_combine across the ranks of
an mpi4py communicator, or of a torch.distributed process group whose processes mpirun
started (HOPS_COMM_MPI, through libhops_mpi.so).

Each of W ranks owns E/W consecutive experts. moe_ep_dispatch sends every kept (token, slot)
row to the rank owning its expert and returns this rank's rows grouped by local expert (then
source rank, token, slot), their counts per local expert, and the handle moe_ep_combine
needs; moe_ep_combine brings the expert outputs back and sums them with the weights in slot
order. Every rank calls both, in the same order. Concatenated over the ranks, the results
are moe_dispatch's and moe_combine's on the gathered problem, bit for bit in float32."""

import ctypes
import sys
from typing import NamedTuple

from .. import _abi
from .._bindings import communicating
from .._frameworks import empty
from ..errors import unsupported
from ._common import call, dims

OPS = ("moe_ep_dispatch", "moe_ep_combine")


class EpHandle(NamedTuple):
    """What moe_ep_combine needs of moe_ep_dispatch: row_map [T,k], send_counts [E],
    recv_counts [ranks, E/ranks]."""
    row_map: object
    send_counts: object
    recv_counts: object


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI


def is_process_group(comm) -> bool:
    """Whether comm is a torch.distributed process group (without importing torch)."""
    torch = sys.modules.get("torch")  # a process group exists only where torch is imported
    return (torch is not None and torch.distributed.is_available()
            and isinstance(comm, torch.distributed.ProcessGroup))


_GROUPS: dict[tuple[int, ...], object] = {}  # torch global ranks -> their MPI communicator


def mpi_of_process_group(group):
    """The MPI communicator of a torch.distributed process group's ranks: MPI_COMM_WORLD for the
    whole world, else a communicator of those ranks (MPI_Comm_create_group, collective over
    them, made on first use and kept). hops moves the rows with MPI, not with the group's
    backend (gloo has no hops module), so the processes must be MPI's too: started by mpirun,
    torch's global rank i being MPI_COMM_WORLD's rank i. Otherwise HOPS_ERR_UNSUPPORTED, on
    every rank that sees the mismatch, before any exchange."""
    import torch.distributed as dist

    MPI = _mpi()
    if MPI is None:
        raise unsupported("comm: a torch.distributed process group runs hops' expert-parallel ops over MPI, "
                          "which needs mpi4py (pip install mpi4py, against the system's Open MPI)")
    if not dist.is_initialized():
        raise unsupported("comm: torch.distributed is not initialized (init_process_group)")
    world = MPI.COMM_WORLD
    rank, size = dist.get_rank(), dist.get_world_size()
    if (world.Get_rank(), world.Get_size()) != (rank, size):
        raise unsupported(
            f"comm: this process is torch.distributed rank {rank} of {size} but MPI_COMM_WORLD rank "
            f"{world.Get_rank()} of {world.Get_size()}. hops exchanges over MPI: start the processes with "
            "mpirun and give init_process_group MPI's rank and size (e.g. from OMPI_COMM_WORLD_RANK / "
            "OMPI_COMM_WORLD_SIZE), or pass an mpi4py communicator")
    ranks = tuple(dist.get_process_group_ranks(group))
    if ranks == tuple(range(size)):
        return world
    if ranks not in _GROUPS:
        _GROUPS[ranks] = world.Create_group(world.Get_group().Incl(list(ranks)))
    return _GROUPS[ranks]


def describe(comm) -> _abi.hops_comm:
    """The hops_comm of an mpi4py communicator (the address of its MPI_Comm as the handle) or of
    a torch.distributed process group (mpi_of_process_group); a hops_comm passes as it is."""
    if isinstance(comm, _abi.hops_comm):
        return comm
    if is_process_group(comm):
        comm = mpi_of_process_group(comm)
    MPI = _mpi()
    if MPI is not None and isinstance(comm, MPI.Comm):
        return _abi.hops_comm(ctypes.sizeof(_abi.hops_comm), _abi.HOPS_COMM_MPI, comm.Get_rank(),
                              comm.Get_size(), MPI._addressof(comm))
    raise TypeError("comm: expected an mpi4py communicator, a torch.distributed process group or a hops_comm, "
                    f"got {type(comm).__name__}")


def moe_ep_dispatch_outputs(x, topk_ids, num_experts: int, ranks: int, capacity=None):
    """(rows [C,Hd] like x, counts [E/ranks], row_map [T,k], send_counts [E], recv_counts
    [ranks, E/ranks]); indices in topk_ids' dtype; C = capacity, by default T*k*ranks."""
    tokens, hidden = dims("moe_ep_dispatch", "x", x, 2)
    _, slots = dims("moe_ep_dispatch", "topk_ids", topk_ids, 2)
    local = num_experts // ranks
    index = str(topk_ids.dtype).removeprefix("torch.")
    rows = empty(x, (tokens * slots * ranks if capacity is None else capacity, hidden))
    return (rows, empty(x, (local,), index), empty(x, (tokens, slots), index), empty(x, (num_experts,), index),
            empty(x, (ranks, local), index))


def moe_ep_combine_output(expert_out, row_map):
    """y [T,Hd] like expert_out."""
    tokens, _ = dims("moe_ep_combine", "row_map", row_map, 2)
    return empty(expert_out, (tokens, dims("moe_ep_combine", "expert_out", expert_out, 2)[1]))


def moe_ep_dispatch(x, topk_ids, num_experts: int, comm, capacity=None):
    """x [T,Hd], topk_ids [T,k] (global expert ids, -1 dropped) -> (rows [C,Hd], counts
    [E/ranks], handle). C = capacity, by default T*k*ranks (enough when no rank has more
    tokens than this one); a rank receiving more than its C fails on every rank."""
    described = describe(comm)
    rows, counts, row_map, send_counts, recv_counts = moe_ep_dispatch_outputs(x, topk_ids, num_experts,
                                                                              described.size, capacity)
    with communicating(described):
        call("moe_ep_dispatch", x=x, topk_ids=topk_ids, rows=rows, counts=counts, row_map=row_map,
             send_counts=send_counts, recv_counts=recv_counts)
    return rows, counts, EpHandle(row_map, send_counts, recv_counts)


def moe_ep_combine(expert_out, handle: EpHandle, topk_weights, comm):
    """expert_out [C,Hd] (outputs for moe_ep_dispatch's rows) -> y [T,Hd] on the tokens'
    ranks: y[t] = sum over the kept slots j of topk_weights[t,j] * slot j's output."""
    y = moe_ep_combine_output(expert_out, handle.row_map)
    with communicating(describe(comm)):
        call("moe_ep_combine", expert_out=expert_out, row_map=handle.row_map, topk_weights=topk_weights,
             send_counts=handle.send_counts, recv_counts=handle.recv_counts, y=y)
    return y
