"""Run under mpirun by test_moe_ep_mpi.py: hops.ops.moe_ep_dispatch / moe_ep_combine with an
mpi4py communicator against hops.ops.moe_dispatch / moe_combine on the gathered problem
(every rank builds the whole problem from one seed), bitwise in float32."""

import sys

import numpy as np
from mpi4py import MPI

import hops.ops as ops


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, ranks = comm.Get_rank(), comm.Get_size()
    failures = 0
    for seed, (experts_per_rank, k, hidden, drop) in enumerate([(2, 2, 16, 0.2), (4, 3, 33, 0.0), (1, 1, 8, 0.5)]):
        experts = experts_per_rank * ranks
        rng = np.random.default_rng(seed)
        tokens = [3 + 5 * r for r in range(ranks)]
        first = np.cumsum([0, *tokens])
        x = rng.standard_normal((first[-1], hidden), dtype=np.float32)
        ids = np.stack([rng.permutation(experts)[:k] for _ in range(first[-1])]).astype(np.int64)
        ids[rng.random(ids.shape) < drop] = -1
        weights = rng.random(ids.shape, dtype=np.float32)
        rows_all, counts_all, map_all = ops.moe_dispatch(x, ids, experts)
        scale = np.repeat(1 + np.arange(experts, dtype=np.float32) / 64, counts_all)
        out_all = rows_all.copy()
        out_all[: len(scale)] *= scale[:, None]
        y_all = ops.moe_combine(out_all, map_all, weights)

        mine = slice(first[rank], first[rank + 1])
        rows, counts, handle = ops.moe_ep_dispatch(x[mine], ids[mine], experts, comm, capacity=int(counts_all.sum()))
        local = slice(rank * experts_per_rank, (rank + 1) * experts_per_rank)
        start = int(counts_all[: local.start].sum())
        arrived = int(counts.sum())
        failures += not np.array_equal(counts, counts_all[local])
        failures += not np.array_equal(rows[:arrived], rows_all[start : start + arrived])
        out = rows.copy()
        out[:arrived] *= np.repeat(1 + np.arange(local.start, local.stop, dtype=np.float32) / 64, counts)[:, None]
        y = ops.moe_ep_combine(out, handle, weights[mine], comm)
        failures += not np.array_equal(y, y_all[mine])
    total = comm.allreduce(failures)
    if rank == 0:
        print(f"moe_ep over {ranks} ranks through hops.ops and mpi4py: {'FAILED' if total else 'equal'}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
