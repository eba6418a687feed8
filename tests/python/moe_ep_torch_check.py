"""Run under mpirun by test_moe_ep_mpi.py (argv: a file for torch.distributed's rendezvous,
then "permuted" or nothing). Against the gathered single-device problem (every rank builds it
from one seed), over an mpi4py communicator and a gloo process group of the same processes:
- hops.torch_ops.moe_ep_dispatch / moe_ep_combine, forward and backward: y and dx bitwise,
  d_topk_weights within float32 rounding (a dot in another order), fake kernels' shapes;
- the tiny Qwen3.5-MoE sparse block under hops.patch(expert_parallel=...) with shard_experts
  (each rank keeps E / ranks experts) against the unsharded block: output, input gradient and
  this rank's expert weight gradients.
"permuted": torch ranks that are not MPI's, which every rank must refuse with
HOPS_ERR_UNSUPPORTED before any exchange."""

import sys

import torch
import torch.distributed as dist
from mpi4py import MPI

import hops
from hops import torch_ops
from hops.errors import HopsError

F32_TOLERANCE = 1e-5


def relative_l2(actual, expected) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check(failures: list, what: str, ok: bool) -> None:
    if not ok:
        failures.append(what)


def expert_scale(counts, first_expert: int, rows: int):
    """A differentiable stand-in for the experts: rows of expert e times 1 + e/64, zero past them."""
    scale = torch.repeat_interleave(1 + torch.arange(first_expert, first_expert + len(counts)) / 64, counts)
    return torch.cat([scale, torch.zeros(rows - len(scale))])[:, None]


def ops_against_gathered(comm, rank: int, ranks: int, failures: list) -> None:
    for seed, (per_rank, k, hidden, drop) in enumerate([(2, 2, 16, 0.2), (4, 3, 33, 0.0), (1, 1, 8, 0.5)]):
        experts = per_rank * ranks
        generator = torch.Generator().manual_seed(seed)
        tokens = [3 + 5 * r for r in range(ranks)]
        tokens[-1] = 0 if seed == 2 else tokens[-1]  # a rank without tokens
        first = [sum(tokens[:r]) for r in range(ranks + 1)]
        x_all = torch.randn(first[-1], hidden, generator=generator)
        ids_all = torch.stack([torch.randperm(experts, generator=generator)[:k] for _ in range(first[-1])])
        ids_all[torch.rand(ids_all.shape, generator=generator) < drop] = -1
        w_all = torch.rand(ids_all.shape, generator=generator)
        dy_all = torch.randn(first[-1], hidden, generator=generator)

        x_ref, w_ref = x_all.clone().requires_grad_(), w_all.clone().requires_grad_()
        rows, counts, row_map = torch_ops.moe_dispatch(x_ref, ids_all, experts)
        y_ref = torch_ops.moe_combine(rows * expert_scale(counts, 0, len(rows)), row_map, w_ref)
        y_ref.backward(dy_all)

        mine = slice(first[rank], first[rank + 1])
        x, w = x_all[mine].clone().requires_grad_(), w_all[mine].clone().requires_grad_()
        rows, counts, handle = torch_ops.moe_ep_dispatch(x, ids_all[mine], experts, comm, capacity=first[-1] * k)
        y = torch_ops.moe_ep_combine(rows * expert_scale(counts, rank * per_rank, len(rows)), handle, w, comm)
        y.backward(dy_all[mine])
        case = f"{type(comm).__name__} case {seed}"
        check(failures, f"{case}: y", torch.equal(y, y_ref[mine]))
        check(failures, f"{case}: dx", torch.equal(x.grad, x_ref.grad[mine]))
        check(failures, f"{case}: d_topk_weights",
              torch.allclose(w.grad, w_ref.grad[mine], rtol=F32_TOLERANCE, atol=F32_TOLERANCE))

        ids = ids_all[mine]
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = torch.ops.hops.moe_ep_dispatch.default(mode.from_tensor(x), mode.from_tensor(ids), experts,
                                                          torch_ops.moe_ep.comm_index(comm), 40)
        shapes = [tuple(t.shape) for t in fake]
        expected = [(40, hidden), (per_rank,), (tokens[rank], k), (experts,), (ranks, per_rank)]
        check(failures, f"{case}: fake shapes {shapes}", shapes == expected)


def block_against_unsharded(comm, rank: int, ranks: int, failures: list) -> None:
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from models import build

    model = build("qwen3_5_moe", num_hidden_layers=1, layer_types=["full_attention"])
    block = model.model.layers[0].mlp
    tokens = [4 + 6 * r for r in range(ranks)]
    first = [sum(tokens[:r]) for r in range(ranks + 1)]
    hidden_all = randn(1, first[-1], 64, seed=11)
    hidden_ref = hidden_all.clone().requires_grad_()
    expected = block(hidden_ref)  # transformers' own experts loop, every expert here
    expected.backward(torch.ones_like(expected))
    local = block.experts.num_experts // ranks
    mine, experts = slice(first[rank], first[rank + 1]), slice(rank * local, (rank + 1) * local)
    gate_up_grad = block.experts.gate_up_proj.grad[experts].clone()
    down_grad = block.experts.down_proj.grad[experts].clone()
    model.zero_grad()

    report = hops.patch(["qwen3_5_moe"], expert_parallel=comm)
    check(failures, "shard_experts", hops.shard_experts(model, comm) == 1)
    check(failures, "sharded weights", tuple(block.experts.gate_up_proj.shape)[0] == local)
    hidden = hidden_all[:, mine].clone().requires_grad_()
    got = block(hidden)
    got.backward(torch.ones_like(got))
    label = next(label for label in report.patched if "expert parallel" in label)
    name = type(comm).__name__
    check(failures, f"{name} block: calls {report.calls[label]}", report.calls[label] == 1)
    check(failures, f"{name} block: output {relative_l2(got, expected[:, mine])}",
          relative_l2(got, expected[:, mine]) <= F32_TOLERANCE)
    check(failures, f"{name} block: d_hidden", relative_l2(hidden.grad, hidden_ref.grad[:, mine]) <= F32_TOLERANCE)
    check(failures, f"{name} block: d_gate_up_proj",
          relative_l2(block.experts.gate_up_proj.grad, gate_up_grad) <= F32_TOLERANCE)
    check(failures, f"{name} block: d_down_proj", relative_l2(block.experts.down_proj.grad, down_grad) <= F32_TOLERANCE)
    hops.unpatch()


def main() -> int:
    world = MPI.COMM_WORLD
    rank, ranks = world.Get_rank(), world.Get_size()
    permuted = sys.argv[2:] == ["permuted"]
    dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}",
                            rank=ranks - 1 - rank if permuted else rank, world_size=ranks)
    failures: list[str] = []
    if permuted:
        try:
            torch_ops.moe_ep_dispatch(torch.zeros(2, 4), torch.zeros(2, 1, dtype=torch.int64), ranks, dist.group.WORLD)
            failures.append("a permuted process group was accepted")
        except HopsError as error:
            check(failures, f"refusal: {error}", error.status == "HOPS_ERR_UNSUPPORTED" and "mpirun" in error.message)
    else:
        for comm in (world, dist.group.WORLD):
            ops_against_gathered(comm, rank, ranks, failures)
            block_against_unsharded(comm, rank, ranks, failures)
    for failure in failures:
        print(f"rank {rank}: FAILED {failure}", flush=True)
    total = world.allreduce(len(failures))
    if rank == 0:
        print(f"torch_ops.moe_ep and the expert-parallel block over {ranks} ranks{' (permuted)' * permuted}: "
              f"{'FAILED' if total else 'equal'}")
    dist.destroy_process_group()
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
