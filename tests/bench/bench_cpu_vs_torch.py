"""hops' CPU kernels against transformers' torch fallbacks, side by side in one run.

For each op, shape and dtype: hops through hops.ops on torch CPU tensors, and the
function transformers' Qwen3.5 GatedDeltaNet runs when fla and causal-conv1d are
absent (transformers.models.qwen3_5.modeling_qwen3_5):

  gdn_chunk_fwd   vs torch_chunk_gated_delta_rule       prefill, B=1, T tokens
  gdn_recurrent   vs torch_recurrent_gated_delta_rule   one decode step (T=1) on a state, B sequences
  conv1d_fwd      vs causal_conv1d_fn (F.conv1d + SiLU) prefill, x [B,T,D] as in_proj_qkv leaves it
  conv1d_update   vs causal_conv1d_update               one decode step on a conv state
  gated_rmsnorm   vs Qwen3_5RMSNormGated.forward        the layer's output norm, B*T*HV rows of V

The linear-attention layout is Qwen3.5's: H=16 key heads, HV=32 value heads,
K=V=128, conv width 4 over D = 2*H*K + HV*V = 8192 channels. Each case is timed
interleaved (hops call, torch call, hops call, ...) after a warm-up; the table gives
medians, their ratio, hops' achieved GFLOP/s and GB/s against the counted floor
(docs/PERFORMANCE.md has the formulas), and the largest error of hops' outputs
against torch's, relative to the largest |torch output| (checked once per case).

    .venv/bin/python tests/bench/bench_cpu_vs_torch.py [--write docs/PERFORMANCE.md]

With --gemm tiles xsmm the cases run once per implementation of the CPU backend's
small GEMMs (HOPS_CPU_GEMM: the hand-written tiles, libxsmm's JIT kernels), each in
a child process of its own (the library reads the variable once) with its own torch
side, and one table compares them (section bench_cpu_vs_torch_gemm).

The torch chunk fallback takes seconds per call at T=16384 on 2 cores (a minute
when another process competes for the cores): each torch side gets as many calls
as fit in --budget seconds, but at least --min-reps; the table says how many
calls each median has. Blocks of calls during which other processes were busy
are thrown away and run again (--noisy, --redo).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import hops
from hops._bindings import library
from hops._patch_transformers import own_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

from transformers.models.qwen3_5 import modeling_qwen3_5 as modeling  # noqa: E402

H, HV, K, V, W = 16, 32, 128, 128, 4
D = 2 * H * K + HV * V
CHUNK = 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SIZE = {torch.float32: 4, torch.bfloat16: 2}
# Largest error / largest |reference| that passes: fp32 is the same math in another
# order; bf16 outputs are rounded once (hops) or more (torch) to 8 mantissa bits.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def torch_function(name):
    """transformers' own torch implementation behind a modeling module global, beneath
    whatever wraps it (the routing wrapper would go to fla / causal-conv1d if they
    imported; transformers 5.25 also wraps it in kernels' Func module), found the way
    hops.patch() finds it."""
    function = own_function(modeling, name)
    if function is None:
        raise LookupError(f"{modeling.__name__}.{name}: transformers' torch function not found beneath its "
                          f"{type(getattr(modeling, name)).__qualname__} wrapper")
    return function


# ---- the floor: FLOPs and minimum bytes per op and shape ---------------------------------

def chunk_flop(b, t):
    # per key head and token: Q K^T and K K^T, lower triangles of C x C per chunk (2CK);
    # per value head and token: the UT solve applied to V and K (C(K+V)), W S, Q S and
    # K^T U (3 x 2KV), the intra-chunk (QK^T o D) U (CV)
    return b * t * (H * 2 * CHUNK * K + HV * (6 * K * V + CHUNK * (K + 2 * V)))


def chunk_bytes(b, t, s):
    # q, k, v, beta in the input dtype, g float32, o out, the final state float32
    return s * b * t * (2 * H * K + 2 * HV * V + HV) + 4 * b * t * HV + 4 * b * HV * K * V


def recurrent_flop(b):
    # per value head: decay the state (KV), S^T k (2KV), rank-1 update (2KV), S^T q (2KV)
    return b * HV * 7 * K * V


def recurrent_bytes(b, s, t=1):
    # per sequence the float32 state read and written once; per token q, k, v, beta, o in
    # the input dtype, g float32
    return b * (2 * 4 * HV * K * V + t * (s * (2 * H * K + 2 * HV * V + HV) + 4 * HV))


def conv_flop(b, t):
    return 2 * W * b * t * D  # multiply-adds; SiLU not counted


def conv_bytes(b, t, s):
    return s * (2 * b * t * D + D * W)


def conv_update_bytes(b, s):
    return s * (2 * b * D + 2 * b * D * W + D * W)  # x, y, the W-column state read and written, weight


def norm_flop(rows):
    return 6 * rows * V  # squares and sum, scale, weight, gate multiply; SiLU's exp not counted


def norm_bytes(rows, s):
    return s * (3 * rows * V + V)


# ---- cases ------------------------------------------------------------------------------

@dataclass
class Case:
    op: str
    peer: str
    shape: str
    dtype: torch.dtype
    flop: int
    bytes: int
    hops: object  # () -> outputs
    torch: object  # () -> outputs
    check: object  # () -> max relative error (runs both once on fresh copies)
    kernel: object = None  # () -> None: the raw binding on preallocated outputs (no allocation)
    result: dict = field(default_factory=dict)


def rel_err(ours, reference) -> float:
    ours, reference = ours.float(), reference.float()
    return ((ours - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def gdn_inputs(gen, b, t, dtype):
    """q, k, v, g, beta for b sequences of t tokens, with the layer's statistics where they
    matter: g = -exp(A_log) softplus(a + dt_bias) in float32, A ~ U(0.01, 16) as
    initialised (some heads decay almost completely within a token); beta = sigmoid(b)."""
    q = torch.randn(b, t, H, K, generator=gen).to(dtype)
    k = torch.randn(b, t, H, K, generator=gen).to(dtype)
    v = torch.randn(b, t, HV, V, generator=gen).to(dtype)
    a = torch.randn(b, t, HV, generator=gen)
    A_log = torch.empty(HV).uniform_(0.01, 16, generator=gen).log()
    g = -A_log.exp() * torch.nn.functional.softplus(a + 1.0)
    beta = torch.randn(b, t, HV, generator=gen).sigmoid().to(dtype)
    return q, k, v, g, beta


def chunk_case(t, dtype):
    gen = torch.Generator().manual_seed(t)
    q, k, v, g, beta = gdn_inputs(gen, 1, t, dtype)
    fallback = torch_function("torch_chunk_gated_delta_rule")

    def run_hops():
        return hops.ops.gdn_chunk_fwd(q, k, v, g, beta, use_qk_l2norm=True, output_final_state=True)

    def run_torch():
        return fallback(q, k, v, g, beta, use_qk_l2norm_in_kernel=True, output_final_state=True)

    def check(ours, reference):
        return max(rel_err(ours[0], reference[0]), rel_err(ours[1], reference[1]))

    o, final_state = torch.empty_like(v), torch.empty(1, HV, K, V)
    binding = library().op("gdn_chunk_fwd")

    def kernel():
        binding(q=q, k=k, v=v, g=g, beta=beta, o=o, final_state=final_state, use_qk_l2norm=True)

    s = SIZE[dtype]
    return Case("gdn_chunk_fwd", "torch_chunk_gated_delta_rule", f"B=1 T={t}", dtype, chunk_flop(1, t),
                chunk_bytes(1, t, s), run_hops, run_torch, check, kernel=kernel)


def rotating(tensor, total_bytes=64 << 20):
    """Copies of `tensor` to take in turn, at least 64 MiB in all (twice the L3): in a model
    a layer's state comes back to the core cold, after every other layer's weights."""
    count = max(2, -(-total_bytes // (tensor.numel() * tensor.element_size())))
    pool = [tensor.clone() for _ in range(count)]
    return lambda: pool.append(pool.pop(0)) or pool[-1]


def recurrent_case(b, dtype):
    gen = torch.Generator().manual_seed(100 + b)
    q, k, v, g, beta = gdn_inputs(gen, b, 1, dtype)
    start = torch.randn(b, HV, K, V, generator=gen) * 0.1
    hops_state, torch_state = rotating(start), rotating(start)
    fallback = torch_function("torch_recurrent_gated_delta_rule")

    def run_hops(state=None):
        state = hops_state() if state is None else state
        return hops.ops.gdn_recurrent(q, k, v, g, beta, state, use_qk_l2norm=True), state

    def run_torch(state=None):
        # the layer then copies the returned state into its cache buffer (not timed here)
        return fallback(q, k, v, g, beta, initial_state=torch_state() if state is None else state,
                        output_final_state=True, use_qk_l2norm_in_kernel=True)

    def check(_ours, _reference):
        ours = run_hops(start.clone())
        reference = run_torch(start.clone())
        return max(rel_err(ours[0], reference[0]), rel_err(ours[1], reference[1]))

    return Case("gdn_recurrent", "torch_recurrent_gated_delta_rule", f"decode B={b}", dtype,
                recurrent_flop(b), recurrent_bytes(b, SIZE[dtype]), run_hops, run_torch, check)


def recurrent_prefill_case(t, dtype):
    """The token-by-token op over a whole prompt (the path of a host without a chunked
    kernel, and transformers' own when it runs torch_recurrent_gated_delta_rule)."""
    gen = torch.Generator().manual_seed(500 + t)
    q, k, v, g, beta = gdn_inputs(gen, 1, t, dtype)
    fallback = torch_function("torch_recurrent_gated_delta_rule")

    def run_hops():
        state = torch.zeros(1, HV, K, V)
        return hops.ops.gdn_recurrent(q, k, v, g, beta, state, use_qk_l2norm=True), state

    def run_torch():
        return fallback(q, k, v, g, beta, initial_state=None, output_final_state=True,
                        use_qk_l2norm_in_kernel=True)

    def check(ours, reference):
        return max(rel_err(ours[0], reference[0]), rel_err(ours[1], reference[1]))

    return Case("gdn_recurrent", "torch_recurrent_gated_delta_rule", f"B=1 T={t}", dtype, recurrent_flop(t),
                recurrent_bytes(1, SIZE[dtype], t), run_hops, run_torch, check)


def conv_case(t, dtype):
    gen = torch.Generator().manual_seed(200 + t)
    x = torch.randn(1, t, D, generator=gen).to(dtype)  # in_proj_qkv's output, [B, T, D]
    weight = (torch.randn(D, W, generator=gen) * 0.5).to(dtype)  # conv1d.weight.squeeze(1)
    fallback = torch_function("causal_conv1d_fn")

    def run_hops():
        return hops.ops.conv1d_fwd(x, weight, None, activation="silu")[0]

    def run_torch():  # the layer passes the transposed view [B, D, T]
        return fallback(x.transpose(1, 2), weight, None, activation="silu")

    def check(ours, reference):
        return rel_err(ours, reference.transpose(1, 2))

    y, binding = torch.empty_like(x), library().op("conv1d_fwd")

    def kernel():
        binding(x=x, weight=weight, y=y, activation=hops.ops.activation_code("silu"))

    return Case("conv1d_fwd", "causal_conv1d_fn (F.conv1d + SiLU)", f"B=1 T={t} D={D}", dtype,
                conv_flop(1, t), conv_bytes(1, t, SIZE[dtype]), run_hops, run_torch, check, kernel=kernel)


def conv_update_case(b, dtype):
    gen = torch.Generator().manual_seed(300 + b)
    x = torch.randn(b, D, generator=gen).to(dtype)
    weight = (torch.randn(D, W, generator=gen) * 0.5).to(dtype)
    start = torch.randn(b, D, W, generator=gen).to(dtype)  # transformers keeps W columns
    state_hops, state_torch = start.clone(), start.clone()
    fallback = torch_function("causal_conv1d_update")

    def run_hops(state=state_hops):
        return hops.ops.conv1d_update(x, state, weight, None, activation="silu"), state

    def run_torch(state=state_torch):
        return fallback(x.unsqueeze(-1), state, weight, None, "silu").squeeze(-1), state

    def check(_ours, _reference):
        ours = run_hops(start.clone())
        reference = run_torch(start.clone())
        return max(rel_err(ours[0], reference[0]), rel_err(ours[1], reference[1]))

    return Case("conv1d_update", "causal_conv1d_update", f"decode B={b} D={D}", dtype, conv_flop(b, 1),
                conv_update_bytes(b, SIZE[dtype]), run_hops, run_torch, check)


def norm_case(rows, label, dtype):
    gen = torch.Generator().manual_seed(400 + rows)
    x = torch.randn(rows, V, generator=gen).to(dtype)
    z = torch.randn(rows, V, generator=gen).to(dtype)
    module = modeling.Qwen3_5RMSNormGated(V, eps=1e-6).to(dtype)
    with torch.no_grad():
        module.weight.copy_(1 + 0.1 * torch.randn(V, generator=gen))
    forward = modeling.Qwen3_5RMSNormGated.forward  # the class attribute hops.patch() replaces

    def run_hops():
        return hops.ops.gated_rmsnorm(x, z, module.weight, eps=1e-6)

    def run_torch():
        return forward(module, x, z)

    y, binding = torch.empty_like(x), library().op("gated_rmsnorm")

    def kernel():
        binding(x=x, z=z, weight=module.weight, y=y, eps=1e-6)

    return Case("gated_rmsnorm", "Qwen3_5RMSNormGated.forward", label, dtype, norm_flop(rows),
                norm_bytes(rows, SIZE[dtype]), run_hops, run_torch, lambda a, b: rel_err(a, b), kernel=kernel)


# ---- measurement -------------------------------------------------------------------------

def timed(function):
    start = time.perf_counter()
    out = function()
    return time.perf_counter() - start, out


class Sampler:
    """Per-call times of one side, taken in blocks of about `block` seconds; a block during
    which other processes kept more than `noisy` cores busy is thrown away and run again
    (at most `redo` times per case), so that a neighbour's build does not set the median."""

    def __init__(self, function, calls_wanted: int, first: float, block: float):
        self.function = function
        self.wanted = calls_wanted
        self.per_block = max(1, min(calls_wanted, round(block / max(first, 1e-9))))
        self.times, self.load_sum, self.load_wall = [], 0.0, 0.0

    def done(self) -> bool:
        return len(self.times) >= self.wanted

    def run_block(self, noisy: float, may_redo: bool) -> bool:
        """One block; False when it was thrown away."""
        times = []
        with benchlib.OtherLoad() as load:
            for _ in range(min(self.per_block, self.wanted - len(self.times))):
                times.append(timed(self.function)[0])
        if load.cores > noisy and may_redo:
            return False
        self.times += times
        self.load_sum += load.cores * load.wall
        self.load_wall += load.wall
        return True


@torch.inference_mode()
def measure(case: Case, args) -> None:
    """Warm-up, one correctness check, then blocks of timed calls taken in turn (hops.ops,
    the raw binding on preallocated outputs where there is one, torch); medians."""
    benchlib.wait_for_quiet(args.noisy, patience=args.patience)
    hops_first, ours = timed(case.hops)
    torch_first, reference = timed(case.torch)
    error = case.check(ours, reference)
    del ours, reference
    if case.kernel is not None:
        case.kernel()

    # about `target` seconds of calls per side, at least `reps`; torch within `budget`
    def calls(first):
        return max(args.reps, min(200, int(args.target / max(first, 1e-9))))
    torch_calls = max(args.min_reps, min(calls(torch_first), int(args.budget / max(torch_first, 1e-9))))
    samplers = [Sampler(case.hops, calls(hops_first), hops_first, args.block)]
    if case.kernel is not None:
        samplers.append(Sampler(case.kernel, calls(hops_first), hops_first, args.block))
    samplers.append(Sampler(case.torch, torch_calls, torch_first, args.block))
    redone = 0
    while not all(sampler.done() for sampler in samplers):
        for sampler in samplers:
            if not sampler.done():
                if not sampler.run_block(args.noisy, may_redo=redone < args.redo):
                    redone += 1
                    benchlib.wait_for_quiet(args.noisy, patience=args.patience)
    hops_s, *kernel_s, torch_s = samplers
    load = sum(s.load_sum for s in samplers) / max(1e-9, sum(s.load_wall for s in samplers))
    case.result = dict(hops=statistics.median(hops_s.times), hops_n=len(hops_s.times),
                       kernel=statistics.median(kernel_s[0].times) if kernel_s else None,
                       torch=statistics.median(torch_s.times), torch_n=len(torch_s.times), error=error,
                       others=load, redone=redone)


def measure_ceilings(reps: int) -> dict:
    """Memory bandwidth (a 256 MiB copy) and torch's fp32/bf16 GEMM rate (1024^3), here and now:
    the best of `reps` runs, after waiting for a quiet machine."""
    benchlib.wait_for_quiet(patience=30.0)
    out = {}
    src = torch.randn(64 * 1024 * 1024)
    dst = torch.empty_like(src)
    times = [timed(lambda: dst.copy_(src))[0] for _ in range(reps + 1)][1:]
    out["copy_GBps"] = 2 * src.numel() * 4 / min(times) / 1e9
    for name, dtype in DTYPES.items():  # 1024^3: bf16 runs at about 1 GFLOP/s on CPUs without AVX-512
        a, b = torch.randn(1024, 1024).to(dtype), torch.randn(1024, 1024).to(dtype)
        times = [timed(lambda: a @ b)[0] for _ in range(reps + 1)][1:]
        out[f"gemm_{name}_GFLOPs"] = 2 * 1024 ** 3 / min(times) / 1e9
    return out


def nominal_peak() -> tuple[float, str]:
    """fp32 FMA peak: cores x 2 FMA pipes x lanes x 2 FLOP x clock (lscpu's / cpuinfo's MHz)."""
    flags, mhz = "", 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = line
                if line.startswith("cpu MHz") and not mhz:
                    mhz = float(line.split(":")[1])
    except OSError:
        pass
    lanes = 16 if " avx512f" in flags else 8 if " avx2" in flags else 4
    cores = os.cpu_count() or 1
    peak = cores * 2 * lanes * 2 * mhz / 1e3
    return peak, f"{cores} cores x 2 FMA pipes x {lanes} fp32 lanes x 2 FLOP x {mhz / 1e3:.2f} GHz"


# ---- report ------------------------------------------------------------------------------

def fmt_ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_count(n):
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g} "


def report(cases, peak, bandwidth, dtype_names):
    """Two tables: hops against torch, and hops against the floor."""
    peers = ["| op | torch peer | shape | dtype | hops ms (n) | torch ms (n) | **torch / hops** | max rel err "
             "| others' cores (redone) |", "|---|---|---|---|--:|--:|--:|--:|--:|"]
    floors = ["| op | shape | dtype | FLOP | bytes | floor ms | hops ms | **hops / floor** | hops GFLOP/s "
              "| hops GB/s | hops on preallocated outputs: ms (/ floor) |",
              "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for c in cases:
        r = c.result
        compute, memory = c.flop / (peak * 1e9), c.bytes / (bandwidth * 1e9)
        floor = max(compute, memory)
        ok = r["error"] <= TOLERANCE[c.dtype]
        dtype = dtype_names[c.dtype]
        peers.append(f"| {c.op} | {c.peer} | {c.shape} | {dtype} | {fmt_ms(r['hops'])} ({r['hops_n']}) | "
                     f"{fmt_ms(r['torch'])} ({r['torch_n']}) | **{r['torch'] / r['hops']:.1f}x** | "
                     f"{r['error']:.1e}{'' if ok else ' **MISMATCH**'} | {r['others']:.2f} ({r['redone']}) |")
        kernel = "-" if r["kernel"] is None else f"{fmt_ms(r['kernel'])} ({r['kernel'] / floor:.1f}x)"
        floors.append(f"| {c.op} | {c.shape} | {dtype} | {fmt_count(c.flop)} | {fmt_count(c.bytes)}B | "
                      f"{fmt_ms(floor)} {'C' if compute >= memory else 'M'} | {fmt_ms(r['hops'])} | "
                      f"**{r['hops'] / floor:.1f}x** | {c.flop / r['hops'] / 1e9:.1f} | "
                      f"{c.bytes / r['hops'] / 1e9:.1f} | {kernel} |")
    return "\n".join(peers), "\n".join(floors)


def targets(cases, dtype_names) -> str:
    if not any(c.op == "gdn_chunk_fwd" for c in cases):
        return "gdn_chunk_fwd not measured in this run"
    ratios = [(f"{c.shape.split()[-1]} {dtype_names[c.dtype]}", c.result["torch"] / c.result["hops"])
              for c in cases if c.op == "gdn_chunk_fwd"]
    missed = [name for name, ratio in ratios if ratio < 10]
    return ("Target, gdn_chunk_fwd at least 10x the torch fallback: " +
            ", ".join(f"{name} {ratio:.1f}x" for name, ratio in ratios) +
            (f" — missed at {', '.join(missed)}" if missed else " — met in every case"))


def git_state() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                "backends/cpu", "plugin"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return f"commit {commit}" + (" with uncommitted changes in backends/cpu or plugin" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"


def compare_engines(args) -> None:
    """Runs this script once per --gemm engine (HOPS_CPU_GEMM) in a child process, then
    writes one table of both: hops' medians per engine, each against its own child's torch."""
    started = time.perf_counter()
    machine = benchlib.machine_line()
    peak, peak_how = nominal_peak()
    children = benchlib.child_args("--gemm", "--write")
    runs = {engine: benchlib.run_child(__file__, children, dict(os.environ, HOPS_CPU_GEMM=engine))
            for engine in args.gemm}
    first = args.gemm[0]
    header = ["op", "shape", "dtype"]
    for engine in args.gemm:
        header += [f"hops {engine} ms (n)", f"% of fp32 peak ({engine})", f"torch ms (n) [{engine} run]",
                   f"**torch / hops {engine}**", f"max rel err ({engine})", f"others' cores (redone) [{engine}]"]
    if len(args.gemm) == 2:
        header.append(f"{args.gemm[0]} / {args.gemm[1]}")
    rows = ["| " + " | ".join(header) + " |", "|---|---|---|" + "--:|" * (len(header) - 3)]
    lines = []
    for i, case in enumerate(runs[first]["cases"]):
        cells = [case["op"], case["shape"], case["dtype"]]
        for engine in args.gemm:
            r = runs[engine]["cases"][i]
            ok = r["error"] <= TOLERANCE[DTYPES[r["dtype"]]]
            cells += [f"{fmt_ms(r['hops'])} ({r['hops_n']})", f"{100 * r['flop'] / r['hops'] / 1e9 / peak:.0f}%",
                      f"{fmt_ms(r['torch'])} ({r['torch_n']})", f"**{r['torch'] / r['hops']:.1f}x**",
                      f"{r['error']:.1e}{'' if ok else ' **MISMATCH**'}", f"{r['others']:.2f} ({r['redone']})"]
        if len(args.gemm) == 2:
            a, b = (runs[e]["cases"][i]["hops"] for e in args.gemm)
            cells.append(f"{a / b:.2f}x")
        rows.append("| " + " | ".join(cells) + " |")
    for engine in args.gemm:
        lines.append(f"HOPS_CPU_GEMM={engine}: {runs[engine]['targets']}.")
    load_end = "load average %.2f %.2f %.2f at the end" % os.getloadavg()
    text = (f"Command: `.venv/bin/python {' '.join(sys.argv)}` ({time.perf_counter() - started:.0f} s)  \n"
            f"{machine.split('; hops CPU GEMM')[0]}; {load_end}  \nhops: {runs[first]['library']}, {git_state()}  \n"
            f"Nominal fp32 peak {peak:.0f} GFLOP/s ({peak_how}). Each engine's cases ran in a child process of "
            f"its own (HOPS_CPU_GEMM set), hops and torch interleaved there as in the table above; "
            f"% of fp32 peak = counted FLOP / hops time / nominal peak.\n\n" + "\n".join(rows) + "\n\n" +
            "  \n".join(lines) + "\n")
    print(text)
    if args.write:
        benchlib.write(args.write, "bench_cpu_vs_torch_gemm", text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384], help="prefill lengths T")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="decode batch sizes B")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--ops", nargs="+", choices=["gdn_chunk_fwd", "gdn_recurrent", "conv1d_fwd",
                                                     "conv1d_update", "gated_rmsnorm"], help="only these ops")
    parser.add_argument("--gemm", nargs="+", choices=["tiles", "xsmm"],
                        help="one run per CPU GEMM engine (HOPS_CPU_GEMM), each in a child process; one table")
    parser.add_argument("--json", help=argparse.SUPPRESS)  # a child's results, for --gemm
    benchlib.add_timing_arguments(parser, budget=40.0)
    args = parser.parse_args()

    benchlib.quiet_transformers()
    if args.gemm:
        return compare_engines(args)

    started = time.perf_counter()
    machine = benchlib.machine_line()
    print(machine, file=sys.stderr)
    ceilings = measure_ceilings(args.reps)
    peak, peak_how = nominal_peak()
    print(f"ceilings: {ceilings}, nominal fp32 peak {peak:.0f} GFLOP/s ({peak_how})", file=sys.stderr)

    cases = []
    for dtype in (DTYPES[name] for name in args.dtypes):
        for t in args.tokens:
            cases.append(chunk_case(t, dtype))
        for b in args.batches:
            cases.append(recurrent_case(b, dtype))
        for t in args.tokens:
            cases.append(recurrent_prefill_case(t, dtype))
        for t in args.tokens:
            cases.append(conv_case(t, dtype))
        for b in args.batches:
            cases.append(conv_update_case(b, dtype))
        cases.append(norm_case(args.tokens[0] * HV, f"rows=T*HV={args.tokens[0] * HV}", dtype))
        cases.append(norm_case(HV, "decode B=1: rows=HV=32", dtype))
    order = {"gdn_chunk_fwd": 0, "gdn_recurrent": 1, "conv1d_fwd": 2, "conv1d_update": 3, "gated_rmsnorm": 4}
    cases = sorted((c for c in cases if not args.ops or c.op in args.ops), key=lambda c: order[c.op])
    for case in cases:
        case_start = time.perf_counter()
        measure(case, args)
        r = case.result
        print(f"{case.op:14s} {case.shape:22s} {str(case.dtype)[6:]:9s} hops {fmt_ms(r['hops']):>8s} ms "
              f"({r['hops_n']:3d})  torch {fmt_ms(r['torch']):>8s} ms ({r['torch_n']})  "
              f"{r['torch'] / r['hops']:7.1f}x  err {r['error']:.1e}  others {r['others']:.2f} redone {r['redone']}  "
              f"[{time.perf_counter() - case_start:.0f} s]",
              file=sys.stderr)
    load_end = "load average %.2f %.2f %.2f at the end" % os.getloadavg()
    names = {dtype: name for name, dtype in DTYPES.items()}
    peers, floors = report(cases, peak, ceilings["copy_GBps"], names)
    method = benchlib.timing_note(args, "the outputs (and states)", TOLERANCE)
    text = (f"Command: `.venv/bin/python {' '.join(sys.argv)}` ({time.perf_counter() - started:.0f} s)  \n"
            f"{machine}; {load_end}  \nhops: {hops.info().path}, {git_state()}  \n"
            f"Ceilings measured in this run: copy {ceilings['copy_GBps']:.1f} GB/s (read + write); torch GEMM "
            f"1024^3 {ceilings['gemm_float32_GFLOPs']:.0f} GFLOP/s fp32, {ceilings['gemm_bfloat16_GFLOPs']:.3g} "
            f"GFLOP/s bf16. Nominal fp32 peak {peak:.0f} GFLOP/s ({peak_how}).  \n"
            f"{method}\n\n"
            f"**hops against transformers' torch fallbacks**\n\n{peers}\n\n{targets(cases, names)}.\n\n"
            f"**hops against the floor** (floor = max(FLOP / nominal peak, bytes / measured copy bandwidth); "
            f"C / M: which of the two sets it)\n\n{floors}\n")
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"library": str(hops.info().path), "targets": targets(cases, names), "cases": [
                dict(op=c.op, shape=c.shape, dtype=names[c.dtype], flop=c.flop, **c.result) for c in cases]}, out)
    if args.write:
        benchlib.write(args.write, "bench_cpu_vs_torch", text)


if __name__ == "__main__":
    main()
