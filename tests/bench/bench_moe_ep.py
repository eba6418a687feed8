"""Expert parallelism on the CPU (issue 16): hops' moe_ep_dispatch + moe_ep_combine over MPI
(libhops_mpi.so) against the same exchange written with torch.distributed (gloo's
all_to_all_single plus the permutations a torch user writes: argsort, index_select,
index_add_), and against MPI_Alltoallv alone moving the same rows there and back (mpi4py,
preallocated buffers, a row datatype), in one run per rank count.

Every rank routes T tokens of width Hd (fp32) to k of E experts, uniformly at random and
distinct per token (about T*k rows arrive at each rank); the expert is the identity, so
each path is timed from x and topk_ids to y (dispatch + combine, outputs allocated as each
API does). hops' rows have capacity C = 1.25 T k (the usual MoE capacity factor; dispatch
zeroes the rows past those that arrived). torch's way counts per expert, exchanges the
counts (all_to_all_single), then the rows with uneven splits, regroups them by local expert,
and back: the inverse permutations and a weighted index_add_. One thread per rank for
every path (HOPS_NUM_THREADS, torch.set_num_threads, OMP_NUM_THREADS = 1).

    HOPS_LIBRARY=... .venv/bin/python tests/bench/bench_moe_ep.py [--ranks 2 4] [--tokens 4096]
        [--reps 10] [--write docs/PERFORMANCE.md]

Run as above it is the driver: it starts itself under `mpirun --oversubscribe -np W` for each
W; each worker pass times the three paths in turn (a barrier before each call, the slowest
rank's time counted), rank 0 writes the medians to a JSON file, and the driver prints (and
with --write writes) the table."""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAPACITY_FACTOR = 1.25


# ---- the worker (under mpirun) -------------------------------------------------------------

def torch_dispatch(x, ids, experts: int, ranks: int, group):
    """torch.distributed's exchange: rows grouped by expert, counts then rows all-to-all,
    regrouped by local expert. Returns (rows, counts per local expert, what combine needs)."""
    import torch
    import torch.distributed as dist

    tokens, slots = ids.shape
    local = experts // ranks
    flat = ids.reshape(-1)
    kept = flat >= 0
    order = torch.argsort(torch.where(kept, flat, experts), stable=True)[: int(kept.sum())]
    send = x.index_select(0, order // slots)
    counts = torch.bincount(flat[kept], minlength=experts)
    received_counts = torch.empty_like(counts)
    dist.all_to_all_single(received_counts, counts, group=group)  # [source, local expert]
    send_split = counts.view(ranks, local).sum(1).tolist()
    recv_split = received_counts.view(ranks, local).sum(1).tolist()
    received = x.new_empty(sum(recv_split), x.shape[1])
    dist.all_to_all_single(received, send, recv_split, send_split, group=group)
    expert_of_row = torch.arange(local).repeat(ranks).repeat_interleave(received_counts)
    by_expert = torch.argsort(expert_of_row, stable=True)
    rows = received.index_select(0, by_expert)
    return rows, received_counts.view(ranks, local).sum(0), (order, by_expert, send_split, recv_split)


def torch_combine(out, handle, weights, tokens: int, group):
    import torch
    import torch.distributed as dist

    order, by_expert, send_split, recv_split = handle
    source_major = torch.empty_like(out)
    source_major.index_copy_(0, by_expert, out)
    back = out.new_empty(len(order), out.shape[1])
    dist.all_to_all_single(back, source_major, send_split, recv_split, group=group)
    slots = weights.shape[1]
    y = out.new_zeros(tokens, out.shape[1])
    y.index_add_(0, order // slots, back * weights.reshape(-1)[order, None])
    return y


def worker(args) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    from mpi4py import MPI

    import hops.ops

    world = MPI.COMM_WORLD
    rank, ranks = world.Get_rank(), world.Get_size()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.rendezvous}", rank=rank, world_size=ranks)
    T, Hd, E, k = args.tokens, args.hidden, args.experts, args.top_k
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(T, Hd, generator=generator)
    ids = torch.rand(T, E, generator=generator).topk(k).indices
    weights = torch.rand(T, k, generator=generator)
    capacity = int(CAPACITY_FACTOR * T * k)

    def run_hops():
        rows, _, handle = hops.ops.moe_ep_dispatch(x, ids, E, world, capacity=capacity)
        return hops.ops.moe_ep_combine(rows, handle, weights, world)

    def run_torch():
        rows, _, handle = torch_dispatch(x, ids, E, ranks, None)
        return torch_combine(rows, handle, weights, T, None)

    # MPI_Alltoallv alone: this rank's rows to each owner and the same rows back.
    counts = torch.bincount(ids.reshape(-1), minlength=E).view(ranks, E // ranks).sum(1).numpy().astype(np.int64)
    received = np.empty(ranks, dtype=np.int64)
    world.Alltoall(counts, received)
    row = MPI.BYTE.Create_contiguous(Hd * 4).Commit()
    send, recv = np.zeros((int(counts.sum()), Hd), np.float32), np.zeros((int(received.sum()), Hd), np.float32)

    def first(c):
        return np.concatenate([[0], np.cumsum(c)[:-1]]).astype(np.int64)

    def run_alltoallv():
        world.Alltoallv([send, (counts, first(counts)), row], [recv, (received, first(received)), row])
        world.Alltoallv([recv, (received, first(received)), row], [send, (counts, first(counts)), row])

    y_hops, y_torch = run_hops(), run_torch()
    error = world.allreduce(float((y_hops - y_torch).abs().max() / y_torch.abs().max()), op=MPI.MAX)
    paths = {"hops": run_hops, "torch": run_torch, "alltoallv": run_alltoallv}
    times = {name: [] for name in paths}
    load = os.getloadavg()
    for rep in range(args.warmup + args.reps):
        names = list(paths)[rep % 3:] + list(paths)[: rep % 3]  # each path first in turn
        for name in names:
            world.Barrier()
            start = time.perf_counter()
            paths[name]()
            elapsed = world.allreduce(time.perf_counter() - start, op=MPI.MAX)
            if rep >= args.warmup:
                times[name].append(elapsed)
    moved = world.allreduce(int(counts.sum()), op=MPI.SUM) / ranks  # rows each rank sends, on average
    row.Free()
    if rank == 0:
        Path(args.output).write_text(json.dumps({
            "ranks": ranks, "tokens": T, "hidden": Hd, "experts": E, "top_k": k, "capacity": capacity,
            "medians": {name: statistics.median(t) for name, t in times.items()},
            "spread": {name: [min(t), max(t)] for name, t in times.items()}, "reps": args.reps,
            "rows_per_rank": moved, "max_rel_err": error, "load": [load, os.getloadavg()]}))
    dist.destroy_process_group()


# ---- the driver -------------------------------------------------------------------------

def table(results: list[dict], command: str, seconds: float) -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    import benchlib
    import torch

    first = results[0]
    lines = [
        f"Command: `{command}` ({seconds:.0f} s)  ",
        f"Machine: {benchlib.cpu_model()}, **{os.cpu_count()} cores: 2 ranks take one core each, 4 ranks "
        f"oversubscribe them (two ranks per core)**; Open MPI {mpi_version()} (shared memory: btl self,vader, no "
        f"CMA), torch {torch.__version__} (gloo); one thread per rank everywhere; load average "
        + "; ".join(f"{r['ranks']} ranks: {r['load'][0][0]:.2f} at the start, {r['load'][1][0]:.2f} at the end"
                    for r in results) + "  ",
        f"Layout: T = {first['tokens']} tokens per rank, Hd = {first['hidden']}, E = {first['experts']}, top-"
        f"{first['top_k']}, fp32, experts uniform at random (distinct per token), the identity as expert. hops' "
        f"capacity C = {CAPACITY_FACTOR} T k = {first['capacity']} rows. Times: medians of {first['reps']} "
        "calls after 2 warm-up calls (the slowest rank's time per call, a barrier before each; the three paths "
        "in turn). Bytes = the rows each rank sends, both ways (dispatch's out and combine's back), Hd x 4 "
        "each, counting the rows a rank keeps for itself. max rel err = max |hops - torch| / max |torch| of y.",
        "",
        "| ranks | hops dispatch + combine ms | torch.distributed (gloo) ms | MPI_Alltoallv alone ms | "
        "**torch / hops** | **hops / Alltoallv** | Alltoallv GB/s per rank | max rel err |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        m = {name: 1e3 * t for name, t in r["medians"].items()}
        gigabytes = 2 * r["rows_per_rank"] * r["hidden"] * 4 / 1e9
        lines.append(f"| {r['ranks']} | {m['hops']:.0f} | {m['torch']:.0f} | {m['alltoallv']:.0f} | "
                     f"**{m['torch'] / m['hops']:.2f}x** | **{m['hops'] / m['alltoallv']:.2f}x** | "
                     f"{gigabytes / (m['alltoallv'] / 1e3):.1f} | {r['max_rel_err']:.1e} |")
    return "\n".join(lines)


def mpi_version() -> str:
    out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return out.rsplit(" ", 1)[-1]


def driver(args) -> None:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        sys.exit("bench_moe_ep: mpirun not found (apt-get install openmpi-bin)")
    env = dict(os.environ, OMPI_MCA_btl="self,vader", OMPI_MCA_btl_vader_single_copy_mechanism="none",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               HOPS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    start, results = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as scratch:
        for ranks in args.ranks:
            output = Path(scratch) / f"{ranks}.json"
            worker_args = ["--worker", "--rendezvous", str(Path(scratch) / f"rendezvous{ranks}"), "--output",
                           str(output), "--tokens", str(args.tokens), "--hidden", str(args.hidden), "--experts",
                           str(args.experts), "--top-k", str(args.top_k), "--reps", str(args.reps), "--warmup",
                           str(args.warmup)]
            subprocess.run([mpirun, "--oversubscribe", "--allow-run-as-root", "-np", str(ranks), sys.executable,
                            __file__, *worker_args], env=env, check=True)
            results.append(json.loads(output.read_text()))
            print(json.dumps(results[-1]))
    command = " ".join(["HOPS_LIBRARY=" + os.environ.get("HOPS_LIBRARY", "..."), ".venv/bin/python",
                        "tests/bench/bench_moe_ep.py", *sys.argv[1:]])
    text = table(results, command, time.perf_counter() - start)
    print(text)
    if args.write:
        sys.path.insert(0, str(Path(__file__).parent))
        import benchlib
        benchlib.write(args.write, "bench_moe_ep", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--write", metavar="MD", help="write the table into this markdown file's section")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rendezvous", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    main()
