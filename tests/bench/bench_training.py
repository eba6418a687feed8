"""hops' autograd path against transformers' torch fallbacks with autograd: forward and
backward of the linear-attention layer's ops, side by side in one run (issue 4).

For each op and dtype, the function hops.patch() puts in the layer's place (custom ops of
hops.torch_ops, whose backward runs the plugin's backward kernels) and the torch function
transformers' Qwen3.5 GatedDeltaNet runs without fla and causal-conv1d, both with autograd:

  gdn_chunk       hops.fla.chunk_gated_delta_rule      vs torch_chunk_gated_delta_rule
  conv1d          hops.causal_conv1d.causal_conv1d_fn  vs causal_conv1d_fn (F.conv1d + SiLU)
  gated_rmsnorm   hops.torch_ops.gated_rmsnorm         vs Qwen3_5RMSNormGated.forward

Each is timed twice: forward + backward (the forward recording the graph, then
torch.autograd.grad of a random output gradient with respect to every input), and the
forward alone (recording the graph, as in training); the backward row is the difference
of the two medians. Shapes are Qwen3.5's (H=16, HV=32, K=V=128, W=4, D=8192), B=1 and T
tokens; inputs as in bench_cpu_vs_torch.py, whose timing (interleaved blocks, noisy
blocks redone, medians) and floors this reuses. Counted FLOPs of forward + backward are
3x the forward's (each product of the forward has two products in its gradient); hops'
GDN backward also recomputes the forward's chunk states, which the count leaves out.

    .venv/bin/python tests/bench/bench_training.py [--write docs/PERFORMANCE.md] [--patience 600]

With --gemm tiles xsmm each implementation of the CPU backend's small GEMMs
(HOPS_CPU_GEMM) runs in a child process of its own, with its own torch side, and one
table compares them (section bench_training_gemm), with each pass's share of the
nominal fp32 peak (the backward: 2x the forward's FLOPs over the difference of medians).

The torch chunk fallback takes seconds per forward + backward at T=4096 on 2 cores (much
longer when another process competes for them): each torch side gets as many calls as
fit in --budget seconds, but at least --min-reps.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

import hops
import hops.torch_ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cpu_vs_torch as peers  # noqa: E402
import benchlib  # noqa: E402
from bench_cpu_vs_torch import D, DTYPES, H, HV, K, SIZE, TOLERANCE, V, W, fmt_count, fmt_ms  # noqa: E402

FWD_BWD, FWD = "fwd+bwd", "fwd"


def training_cases(op, peer, shape, dtype, flop, nbytes, inputs, hops_forward, torch_forward, grad_output):
    """Two peers.Case of one op: forward + backward, and forward alone. Each call returns
    the output (and the gradients of every input)."""
    def runner(forward, backward: bool):
        def call():
            # peers.measure runs under inference_mode; training needs autograd
            with torch.inference_mode(False), torch.enable_grad():
                out = forward(*inputs)
                return (out, *torch.autograd.grad(out, inputs, grad_output)) if backward else (out.detach(),)
        return call

    def check(ours, reference):
        return max(peers.rel_err(a, b) for a, b in zip(ours, reference))

    return [peers.Case(f"{op} {name}", peer, shape, dtype, count, size, runner(hops_forward, backward),
                       runner(torch_forward, backward), check)
            for name, backward, count, size in ((FWD_BWD, True, 3 * flop, nbytes), (FWD, False, flop, None))]


def leaves(*tensors):
    return [t.requires_grad_() for t in tensors]


def gdn_cases(t, dtype):
    gen = torch.Generator().manual_seed(t)
    inputs = leaves(*peers.gdn_inputs(gen, 1, t, dtype))  # g float32, as the layer computes it
    d_o = torch.randn(1, t, HV, V, generator=gen).to(dtype)
    fallback = peers.torch_function("torch_chunk_gated_delta_rule")
    s = SIZE[dtype]
    # forward: q, k, v, beta in, o out, g; backward: those and do in, dq, dk, dv, dbeta out, dg
    nbytes = s * t * (6 * H * K + 5 * HV * V + 3 * HV) + 12 * t * HV
    return training_cases(
        "gdn_chunk", "torch_chunk_gated_delta_rule", f"B=1 T={t}", dtype, peers.chunk_flop(1, t), nbytes, inputs,
        lambda *x: hops.fla.chunk_gated_delta_rule(*x, use_qk_l2norm_in_kernel=True)[0],
        lambda *x: fallback(*x, use_qk_l2norm_in_kernel=True)[0], d_o)


def conv_cases(t, dtype):
    gen = torch.Generator().manual_seed(200 + t)
    x = torch.randn(1, t, D, generator=gen).to(dtype)  # in_proj_qkv's output, [B, T, D]
    weight = (torch.randn(D, W, generator=gen) * 0.5).to(dtype)
    inputs = leaves(x, weight)
    dy = torch.randn(1, t, D, generator=gen).to(dtype).transpose(1, 2)  # as the layer's backward hands it
    fallback = peers.torch_function("causal_conv1d_fn")
    # the layer passes the transposed view [B, D, T]
    return training_cases(
        "conv1d", "causal_conv1d_fn (F.conv1d + SiLU)", f"B=1 T={t} D={D}", dtype, peers.conv_flop(1, t),
        SIZE[dtype] * (5 * t * D + 2 * D * W), inputs,
        lambda x, w: hops.causal_conv1d.causal_conv1d_fn(x.transpose(1, 2), w, activation="silu"),
        lambda x, w: fallback(x.transpose(1, 2), w, None, activation="silu"), dy)


def norm_cases(rows, dtype):
    gen = torch.Generator().manual_seed(400 + rows)
    x, z = (torch.randn(rows, V, generator=gen).to(dtype) for _ in range(2))
    weight = (1 + 0.1 * torch.randn(V, generator=gen)).to(dtype)
    inputs = leaves(x, z, weight)
    dy = torch.randn(rows, V, generator=gen).to(dtype)
    forward = peers.modeling.Qwen3_5RMSNormGated.forward  # the class attribute hops.patch() replaces
    # what forward reads of its module, with the weight as a plain leaf (its gradient is returned)
    norm = types.SimpleNamespace(weight=inputs[2], variance_epsilon=1e-6, activation="silu")
    return training_cases(
        "gated_rmsnorm", "Qwen3_5RMSNormGated.forward", f"rows=T*HV={rows}", dtype, peers.norm_flop(rows),
        SIZE[dtype] * (8 * rows * V + 2 * V), inputs,
        lambda x, z, weight: hops.torch_ops.gated_rmsnorm(x, z, weight, eps=1e-6),
        lambda x, z, _: forward(norm, x, z), dy)


def copy_bandwidth(reps: int) -> float:
    """GB/s of a 256 MiB copy (read + write), the best of `reps`, after waiting for a quiet
    machine: bench_cpu_vs_torch's memory ceiling, without its GEMM ceilings (bf16 GEMMs
    take minutes on a CPU without bf16 instructions, and no floor here needs them)."""
    benchlib.wait_for_quiet(patience=30.0)
    src = torch.randn(64 * 1024 * 1024)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / min(peers.timed(lambda: dst.copy_(src))[0] for _ in range(reps)) / 1e9


# ---- report ------------------------------------------------------------------------------

def report(pairs, peak, bandwidth, dtype_names):
    """The peer table (fwd+bwd, fwd, and bwd as their difference) and the floor table."""
    rows = ["| op | torch peer | shape | dtype | pass | hops ms (n) | torch ms (n) | **torch / hops** | max rel err "
            "| others' cores (redone) |", "|---|---|---|---|---|--:|--:|--:|--:|--:|"]
    floors = ["| op | shape | dtype | pass | FLOP | bytes | floor ms | hops ms | **hops / floor** | hops GFLOP/s "
              "| hops GB/s |", "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for both, forward in pairs:
        op, dtype = both.op.split()[0], dtype_names[both.dtype]
        for case, name in ((both, FWD_BWD), (forward, FWD)):
            r = case.result
            ok = r["error"] <= TOLERANCE[case.dtype]
            rows.append(f"| {op} | {case.peer} | {case.shape} | {dtype} | {name} | {fmt_ms(r['hops'])} ({r['hops_n']}) "
                        f"| {fmt_ms(r['torch'])} ({r['torch_n']}) | **{r['torch'] / r['hops']:.1f}x** | "
                        f"{r['error']:.1e}{'' if ok else ' **MISMATCH**'} | {r['others']:.2f} ({r['redone']}) |")
        hops_bwd = both.result["hops"] - forward.result["hops"]
        torch_bwd = both.result["torch"] - forward.result["torch"]
        rows.append(f"| {op} | {both.peer} | {both.shape} | {dtype} | bwd (difference) | {fmt_ms(hops_bwd)} | "
                    f"{fmt_ms(torch_bwd)} | **{torch_bwd / hops_bwd:.1f}x** | | |")
        if both.bytes is not None:
            compute, memory = both.flop / (peak * 1e9), both.bytes / (bandwidth * 1e9)
            floor, seconds = max(compute, memory), both.result["hops"]
            floors.append(f"| {op} | {both.shape} | {dtype} | {FWD_BWD} | {fmt_count(both.flop)} | "
                          f"{fmt_count(both.bytes)}B | {fmt_ms(floor)} {'C' if compute >= memory else 'M'} | "
                          f"{fmt_ms(seconds)} | **{seconds / floor:.1f}x** | {both.flop / seconds / 1e9:.1f} | "
                          f"{both.bytes / seconds / 1e9:.1f} |")
    return "\n".join(rows), "\n".join(floors)


def targets(pairs, dtype_names) -> str:
    ratios = [(f"{both.shape.split()[-1]} {dtype_names[both.dtype]}", both.result["torch"] / both.result["hops"])
              for both, _ in pairs if both.op.startswith("gdn_chunk")]
    if not ratios:
        return "gdn_chunk not measured in this run"
    missed = [name for name, ratio in ratios if ratio < 10]
    return ("Target, GDN forward + backward at least 10x the torch fallback: " +
            ", ".join(f"{name} {ratio:.1f}x" for name, ratio in ratios) +
            (f" — missed at {', '.join(missed)}" if missed else " — met in every case"))


def compare_engines(args) -> None:
    """This script once per --gemm engine (HOPS_CPU_GEMM) in a child process; one table of
    the passes of each, hops' medians against the child's own torch side."""
    started = time.perf_counter()
    machine = benchlib.machine_line()
    peak, peak_how = peers.nominal_peak()
    children = list(sys.argv[1:])
    for option in ("--gemm", "--write"):
        if option in children:
            i = j = children.index(option)
            j += 1
            while j < len(children) and not children[j].startswith("--"):
                j += 1
            del children[i:j]
    runs = {}
    for engine in args.gemm:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run([sys.executable, __file__, *children, "--json", out.name],
                           env=dict(os.environ, HOPS_CPU_GEMM=engine), check=True, stdout=subprocess.DEVNULL)
            runs[engine] = json.load(open(out.name))
    header = ["op", "shape", "dtype", "pass"]
    for engine in args.gemm:
        header += [f"hops {engine} ms", f"% of fp32 peak ({engine})", f"torch ms [{engine} run]",
                   f"**torch / hops {engine}**", f"others' cores (redone) [{engine}]"]
    if len(args.gemm) == 2:
        header.append(f"{args.gemm[0]} / {args.gemm[1]}")
    rows = ["| " + " | ".join(header) + " |", "|---|---|---|---|" + "--:|" * (len(header) - 4)]
    for i, row in enumerate(runs[args.gemm[0]]["rows"]):
        cells = [row["op"], row["shape"], row["dtype"], row["pass"]]
        for engine in args.gemm:
            r = runs[engine]["rows"][i]
            cells += [f"{fmt_ms(r['hops'])}" + (f" ({r['hops_n']})" if "hops_n" in r else ""),
                      f"{100 * r['flop'] / r['hops'] / 1e9 / peak:.0f}%",
                      f"{fmt_ms(r['torch'])}" + (f" ({r['torch_n']})" if "torch_n" in r else ""),
                      f"**{r['torch'] / r['hops']:.1f}x**",
                      f"{r['others']:.2f} ({r['redone']})" if "others" in r else ""]
        if len(args.gemm) == 2:
            a, b = (runs[e]["rows"][i]["hops"] for e in args.gemm)
            cells.append(f"{a / b:.2f}x")
        rows.append("| " + " | ".join(cells) + " |")
    targets_lines = "  \n".join(f"HOPS_CPU_GEMM={engine}: {runs[engine]['targets']}." for engine in args.gemm)
    errors = "; ".join(f"{engine}: {runs[engine]['max_error']}" for engine in args.gemm)
    load_end = "load average %.2f %.2f %.2f at the end" % os.getloadavg()
    text = (f"Command: `.venv/bin/python {' '.join(sys.argv)}` ({time.perf_counter() - started:.0f} s)  \n"
            f"{machine.split('; hops CPU GEMM')[0]}; {load_end}  \n"
            f"hops: {runs[args.gemm[0]]['library']}, {peers.git_state()}  \n"
            f"Nominal fp32 peak {peak:.0f} GFLOP/s ({peak_how}). Each engine ran in a child process of its own "
            f"(HOPS_CPU_GEMM set), hops and torch interleaved there; % of fp32 peak = counted FLOP (fwd: the "
            f"forward's, bwd: 2x that, fwd+bwd: 3x) / hops time / nominal peak. Largest error against torch "
            f"(output and every gradient): {errors}.\n\n" + "\n".join(rows) + "\n\n" + targets_lines + "\n")
    print(text)
    if args.write:
        benchlib.write(args.write, "bench_training_gemm", text)


def result_rows(pairs, dtype_names):
    """Every pass of every pair as a dict (fwd+bwd, fwd, bwd as their difference), for --json."""
    rows = []
    for both, forward in pairs:
        op, dtype = both.op.split()[0], dtype_names[both.dtype]
        common = dict(op=op, shape=both.shape, dtype=dtype)
        for case, name, flop in ((both, FWD_BWD, both.flop), (forward, FWD, forward.flop)):
            r = case.result
            rows.append(dict(common, **{"pass": name}, flop=flop, hops=r["hops"], hops_n=r["hops_n"],
                             torch=r["torch"], torch_n=r["torch_n"], others=r["others"], redone=r["redone"]))
        rows.append(dict(common, **{"pass": "bwd (difference)"}, flop=both.flop - forward.flop,
                         hops=both.result["hops"] - forward.result["hops"],
                         torch=both.result["torch"] - forward.result["torch"]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096, help="sequence length T")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--ops", nargs="+", choices=["gdn_chunk", "conv1d", "gated_rmsnorm"], help="only these ops")
    parser.add_argument("--gemm", nargs="+", choices=["tiles", "xsmm"],
                        help="one run per CPU GEMM engine (HOPS_CPU_GEMM), each in a child process; one table")
    parser.add_argument("--json", help=argparse.SUPPRESS)  # a child's results, for --gemm
    benchlib.add_timing_arguments(parser, budget=60.0)
    args = parser.parse_args()

    benchlib.quiet_transformers()
    if args.gemm:
        return compare_engines(args)

    started = time.perf_counter()
    machine = benchlib.machine_line()
    print(machine, file=sys.stderr)
    bandwidth = copy_bandwidth(args.reps)
    peak, peak_how = peers.nominal_peak()
    print(f"copy {bandwidth:.1f} GB/s, nominal fp32 peak {peak:.0f} GFLOP/s ({peak_how})", file=sys.stderr)

    makers = {"gdn_chunk": lambda dtype: gdn_cases(args.tokens, dtype),
              "conv1d": lambda dtype: conv_cases(args.tokens, dtype),
              "gated_rmsnorm": lambda dtype: norm_cases(args.tokens * HV, dtype)}
    pairs = [make(DTYPES[name]) for op, make in makers.items() if not args.ops or op in args.ops
             for name in args.dtypes]
    for pair in pairs:
        for case in pair:
            case_start = time.perf_counter()
            peers.measure(case, args)
            r = case.result
            print(f"{case.op:22s} {case.shape:20s} {str(case.dtype)[6:]:9s} hops {fmt_ms(r['hops']):>8s} ms "
                  f"({r['hops_n']:3d})  torch {fmt_ms(r['torch']):>8s} ms ({r['torch_n']})  "
                  f"{r['torch'] / r['hops']:7.1f}x  err {r['error']:.1e}  others {r['others']:.2f} "
                  f"redone {r['redone']}  [{time.perf_counter() - case_start:.0f} s]", file=sys.stderr)
    load_end = "load average %.2f %.2f %.2f at the end" % os.getloadavg()
    names = {dtype: name for name, dtype in DTYPES.items()}
    table, floors = report(pairs, peak, bandwidth, names)
    method = benchlib.timing_note(args, "the output and every input's gradient", TOLERANCE)
    text = (f"Command: `.venv/bin/python {' '.join(sys.argv)}` ({time.perf_counter() - started:.0f} s)  \n"
            f"{machine}; {load_end}  \nhops: {hops.info().path}, {peers.git_state()}  \n"
            f"Copy bandwidth measured in this run: {bandwidth:.1f} GB/s (read + write); nominal fp32 peak "
            f"{peak:.0f} GFLOP/s ({peak_how}).  \n"
            f"{method}\n\n"
            f"**hops' autograd path against transformers' torch fallbacks with autograd**\n\n{table}\n\n"
            f"{targets(pairs, names)}.\n\n"
            f"**hops forward + backward against the floor** (floor = max(FLOP / nominal peak, bytes / measured "
            f"copy bandwidth); C / M: which of the two sets it)\n\n{floors}\n")
    print(text)
    if args.json:
        worst = max(case.result["error"] for pair in pairs for case in pair)
        with open(args.json, "w") as out:
            json.dump({"library": str(hops.info().path), "targets": targets(pairs, names),
                       "max_error": f"{worst:.1e}", "rows": result_rows(pairs, names)}, out)
    if args.write:
        benchlib.write(args.write, "bench_training", text)


if __name__ == "__main__":
    main()
