"""hops' CPU MoE layer against transformers' experts paths on the CPU, and against the floors.

Qwen3.5-35B-A3B's expert layout scaled to the demo (issue 15): hidden Hd = 2048, E = 64
experts, top-k = 8, expert width I = 512, fp32 (--dtype: bfloat16, or both, one table each:
bf16 is what the models run in, and where hops' expert MLP takes AMX tiles on CPUs that have
AMX-BF16; HOPS_CPU_GEMM=tiles forces its fp32 GEMM instead), T tokens (default 2048 and 4096).

  layer          route + dispatch + expert MLP + combine from the router logits [T, E], as
                 hops.patch() runs it (the path users take): the patched router's moe_route,
                 then the Qwen3_5MoeExperts module, whose patched forward is transformers'
                 ExpertsInterface "hops" (moe_dispatch, moe_expert_mlp, moe_combine; under
                 inference_mode its two [T*k, Hd] intermediates come from the workspace pool),
                 against Qwen3_5MoeTopKRouter's softmax / top-k / renormalisation on the same
                 logits followed by Qwen3_5MoeExperts' own forward with each of transformers'
                 experts implementations that run on a CPU: "eager" (the model's own loop over
                 the experts hit) and "grouped_mm" (sort, torch's grouped_mm, inverse
                 permutation, sum). "batched_mm" gathers a [2I, Hd] weight copy per slot
                 (137 GB here) and is not run. Beside it the same four ops through hops.ops
                 (fresh intermediates every call, as without the pool) and on preallocated
                 outputs (the raw bindings).
  moe_route      alone, against the router's softmax / top-k / renormalisation
  moe_dispatch   alone, against the copy bandwidth: bytes = x read once + T*k rows written
  moe_expert_mlp alone, against the fp32 peak: FLOP = 6 Hd I per kept slot
  moe_combine    alone, against the copy bandwidth: bytes = T*k rows read + y written
  copy_          torch's copy of a [T*k, Hd] fp32 tensor, timed among the ops: the bandwidth

The ops alone run on preallocated outputs (the raw binding: a fresh 256 MiB output costs
its page faults, which are the allocator's, not the kernel's). Floors: the nominal fp32 peak as issue 15 counts it
(cores x 2 FMA pipes x 8 AVX2 lanes x 2 FLOP x clock; the AVX-512 figure beside it where
the CPU has it) and the bandwidth of a copy_ of the rows' size timed among the ops (read +
write counted). Timing as bench_cpu_vs_torch.py (whose code it reuses): interleaved blocks,
blocks during which other processes were busy thrown away and run again (up to --redo),
medians; the others' load is reported with each row.

    HOPS_LIBRARY=... .venv/bin/python tests/bench/bench_moe_cpu.py [--tokens 2048 4096]
        [--dtype float32 bfloat16] [--write docs/PERFORMANCE.md]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import hops

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import bench_cpu_vs_torch as cpu_bench  # noqa: E402
from bench_attn_cpu import nominal_peaks  # noqa: E402

from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeTextConfig  # noqa: E402
from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeExperts  # noqa: E402

EXPERTS_FORWARD = Qwen3_5MoeExperts.forward  # transformers' own, taken before hops.patch() replaces it

HD, E, K, I = 2048, 64, 8, 512
PEERS = ("eager", "grouped_mm")
# max |hops - torch| / max |torch|. fp32: the same sums in another order. bf16: both round the
# inputs' products differently (torch rounds g, u and h to bf16, hops only h), each within
# about 1e-2 of the float64 result (the conformance runner's bf16 tolerance).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
TARGETS = dict(ratio=1.1, peak=0.80, copy=0.50)  # issue 15, CPU


def router(logits):
    """Qwen3_5MoeTopKRouter.forward after its linear (F.linear of the hidden states)."""
    probs = torch.nn.functional.softmax(logits, dtype=torch.float, dim=-1)
    top_value, top_index = torch.topk(probs, K, dim=-1)
    top_value /= top_value.sum(dim=-1, keepdim=True)
    return top_value.to(logits.dtype), top_index


class Layer:
    """One T and dtype: the inputs, transformers' experts module and preallocated hops outputs."""

    def __init__(self, t, dtype):
        gen = torch.Generator().manual_seed(t)
        self.t, self.dtype = t, dtype
        self.x = torch.randn(t, HD, generator=gen).to(dtype)
        if dtype == torch.float32:
            self.logits = torch.randn(t, E, generator=gen)
        else:  # bf16 rounds standard normal logits into ties, which torch.topk breaks its own way
            grid = torch.linspace(-3, 3, E).to(dtype)  # distinct in bf16 (steps of 0.095 > its ulp)
            self.logits = grid[torch.rand(t, E, generator=gen).argsort(dim=-1)]
        config = Qwen3_5MoeTextConfig(hidden_size=HD, num_experts=E, num_experts_per_tok=K,
                                      moe_intermediate_size=I, hidden_act="silu")
        self.experts = Qwen3_5MoeExperts(config).requires_grad_(False).to(dtype)
        with torch.no_grad():
            self.experts.gate_up_proj.copy_(torch.randn(E, 2 * I, HD, generator=gen) * HD ** -0.5)
            self.experts.down_proj.copy_(torch.randn(E, HD, I, generator=gen) * I ** -0.5)
        self.gate_up, self.down = self.experts.gate_up_proj.data, self.experts.down_proj.data
        # The ops alone, on preallocated outputs, chained as in the layer.
        self.weights, self.ids = torch.empty(t, K, dtype=dtype), torch.empty(t, K, dtype=torch.int64)
        self.rows, self.out = torch.empty(t * K, HD, dtype=dtype), torch.empty(t * K, HD, dtype=dtype)
        self.counts, self.row_map = torch.empty(E, dtype=torch.int64), torch.empty(t, K, dtype=torch.int64)
        self.y = torch.empty(t, HD, dtype=dtype)
        self.copy_src = torch.randn(t * K, HD, generator=gen).to(dtype)
        self.copy_dst = torch.empty(t * K, HD, dtype=dtype)
        lib = hops.library()
        self.bind = {name: lib.op(name) for name in ("moe_route", "moe_dispatch", "moe_expert_mlp", "moe_combine")}
        for run in (self.route, self.dispatch, self.mlp, self.combine):
            run()

    def hops_layer(self):
        weights, ids = hops.ops.moe_route(self.logits, K, weights_dtype=str(self.logits.dtype).split(".")[-1])
        rows, counts, row_map = hops.ops.moe_dispatch(self.x, ids, E)
        out = hops.ops.moe_expert_mlp(rows, counts, self.gate_up, self.down)
        return hops.ops.moe_combine(out, row_map, weights)

    def patched_layer(self):
        """hops.patch()'s MoE from the logits: the patched router's moe_route (router_forward after
        its linear), then the experts module, whose patched forward runs ExpertsInterface "hops"."""
        weights, ids = hops.torch_ops.moe_route(self.logits, K, weights_dtype=self.logits.dtype)
        return self.experts(self.x, ids, weights)

    def torch_layer(self, implementation):
        self.experts.config._experts_implementation = implementation
        weights, ids = router(self.logits)
        return EXPERTS_FORWARD(self.experts, self.x, ids, weights)

    def chained(self):
        """The four ops in turn on the preallocated outputs."""
        self.route()
        self.dispatch()
        self.mlp()
        self.combine()

    def route(self):
        self.bind["moe_route"](logits=self.logits, topk_weights=self.weights, topk_ids=self.ids)

    def dispatch(self):
        self.bind["moe_dispatch"](x=self.x, topk_ids=self.ids, rows=self.rows, counts=self.counts,
                                  row_map=self.row_map)

    def mlp(self):
        self.bind["moe_expert_mlp"](rows=self.rows, counts=self.counts, gate_up_proj=self.gate_up,
                                    down_proj=self.down, out=self.out)

    def combine(self):
        self.bind["moe_combine"](rows=self.out, row_map=self.row_map, topk_weights=self.weights, y=self.y)

    def release(self):
        """Drops the tensors (1.3 GB at T=4096); the report needs only t."""
        for name in ("x", "logits", "experts", "gate_up", "down", "weights", "ids", "rows", "out", "counts",
                     "row_map", "y", "copy_src", "copy_dst"):
            delattr(self, name)

    def copy(self):
        self.copy_dst.copy_(self.copy_src)

    def copy_bandwidth(self, seconds):
        """GB/s of the rows-sized copy_, read + write counted."""
        return 2 * self.t * K * HD * self.dtype.itemsize / seconds / 1e9

    def flop(self):
        return 6 * HD * I * self.t * K

    def rows_bytes(self):
        return (self.t * K + self.t) * HD * self.dtype.itemsize


def sample(functions: dict, args) -> dict:
    """Interleaved blocks of each function (bench_cpu_vs_torch.Sampler): medians, counts,
    the others' average load and the blocks redone."""
    firsts = {name: cpu_bench.timed(f)[0] for name, f in functions.items()}

    def calls(first):
        return max(args.reps, min(200, int(args.target / max(first, 1e-9))))
    samplers = {name: cpu_bench.Sampler(f, calls(firsts[name]), firsts[name], args.block)
                for name, f in functions.items()}
    redone = 0
    while not all(s.done() for s in samplers.values()):
        for s in samplers.values():
            if not s.done() and not s.run_block(args.noisy, may_redo=redone < args.redo):
                redone += 1
                benchlib.wait_for_quiet(args.noisy, patience=args.patience)
    load = sum(s.load_sum for s in samplers.values()) / max(1e-9, sum(s.load_wall for s in samplers.values()))
    return dict(times={name: statistics.median(s.times) for name, s in samplers.items()},
                n={name: len(s.times) for name, s in samplers.items()}, others=load, redone=redone)


@torch.inference_mode()
def measure(layer: Layer, args) -> dict:
    benchlib.wait_for_quiet(args.noisy, patience=args.patience)
    ours = layer.patched_layer()
    errors = {peer: cpu_bench.rel_err(ours, layer.torch_layer(peer)) for peer in PEERS}
    bitwise = torch.equal(ours, layer.hops_layer())  # the pool changes no bit
    hops_route, torch_route = hops.ops.moe_route(layer.logits, K), router(layer.logits)
    route_ok = torch.equal(hops_route[1], torch_route[1])
    errors["route"] = cpu_bench.rel_err(hops_route[0], torch_route[0]) if route_ok else float("inf")
    result = dict(errors=errors, bitwise=bitwise, mlp_cpu=[])

    def mlp():  # also its CPU time (all of the process's threads): what the load takes is not in it
        start = time.process_time()
        layer.mlp()
        result["mlp_cpu"].append(time.process_time() - start)
    result["layer"] = sample({"patched": layer.patched_layer, "hops": layer.hops_layer,
                              "hops_preallocated": layer.chained,
                              **{peer: (lambda p=peer: layer.torch_layer(p)) for peer in PEERS}}, args)
    result["ops"] = sample({"moe_route": layer.route, "router": lambda: router(layer.logits),
                            "moe_dispatch": layer.dispatch, "moe_expert_mlp": mlp,
                            "moe_combine": layer.combine, "copy_": layer.copy}, args)
    return result


def tabulate(layers, results, avx2_peak, widest_peak):
    fmt = cpu_bench.fmt_ms
    rows = ["| T | path | hops ms (n) | eager ms (n) | grouped_mm ms (n) | **faster peer / hops** | "
            "hops GFLOP/s | **% of AVX2 peak** | hops GB/s | **% of copy** | max rel err | others' cores (redone) |",
            "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    verdicts = []
    for layer, r in zip(layers, results):
        lt, ln = r["layer"]["times"], r["layer"]["n"]
        best = min(lt[peer] for peer in PEERS)
        err = max(r["errors"][p] for p in PEERS)
        for path, what, error in (
                ("patched", "**hops.patch() layer**: moe_route + ExpertsInterface \"hops\" (workspace pool)",
                 f"{err:.1e}{'' if err <= TOLERANCE[layer.dtype] else ' **MISMATCH**'}"),
                ("hops", "the same four ops through hops.ops (fresh intermediates per call)",
                 "bitwise = hops.patch()" if r["bitwise"] else "**differs from hops.patch()**")):
            gflops = layer.flop() / lt[path] / 1e9
            rows.append(f"| {layer.t} | {what} | {fmt(lt[path])} ({ln[path]}) | {fmt(lt['eager'])} ({ln['eager']}) | "
                        f"{fmt(lt['grouped_mm'])} ({ln['grouped_mm']}) | **{best / lt[path]:.2f}x** | {gflops:.1f} | "
                        f"{100 * gflops / avx2_peak:.0f}% | - | - | {error} | {r['layer']['others']:.2f} "
                        f"({r['layer']['redone']}) |")
        pre = lt["hops_preallocated"]
        rows.append(f"| {layer.t} | the same four ops on preallocated outputs (raw bindings) | {fmt(pre)} "
                    f"({ln['hops_preallocated']}) | - | - | **{best / pre:.2f}x** | {layer.flop() / pre / 1e9:.1f} | "
                    f"{100 * layer.flop() / pre / 1e9 / avx2_peak:.0f}% | - | - | - | {r['layer']['others']:.2f} "
                    f"({r['layer']['redone']}) |")
        ot, on = r["ops"]["times"], r["ops"]["n"]
        route_err = r["errors"]["route"]
        rows.append(f"| {layer.t} | moe_route (router: softmax, top-k, renormalise) | {fmt(ot['moe_route'])} "
                    f"({on['moe_route']}) | {fmt(ot['router'])} ({on['router']}) | - | "
                    f"{ot['router'] / ot['moe_route']:.2f}x | - | - | - | - | "
                    f"{'ids differ' if route_err == float('inf') else f'{route_err:.1e}'} | "
                    f"{r['ops']['others']:.2f} ({r['ops']['redone']}) |")
        mlp_gflops = layer.flop() / ot["moe_expert_mlp"] / 1e9
        per_cpu_second = layer.flop() / statistics.median(r["mlp_cpu"]) / 1e9
        rows.append(f"| {layer.t} | moe_expert_mlp | {fmt(ot['moe_expert_mlp'])} ({on['moe_expert_mlp']}) | - | - | "
                    f"- | {mlp_gflops:.1f} | **{100 * mlp_gflops / avx2_peak:.0f}%** | - | - | - | "
                    f"{r['ops']['others']:.2f} ({r['ops']['redone']}) |")
        shares = {}
        copy = layer.copy_bandwidth(ot["copy_"])
        rows.append(f"| {layer.t} | copy_ of the rows' size (torch) | {fmt(ot['copy_'])} ({on['copy_']}) | - | - | - | - "
                    f"| - | {copy:.1f} | 100% | - | {r['ops']['others']:.2f} ({r['ops']['redone']}) |")
        for op in ("moe_dispatch", "moe_combine"):
            gbps = layer.rows_bytes() / ot[op] / 1e9
            shares[op] = gbps / copy
            rows.append(f"| {layer.t} | {op} | {fmt(ot[op])} ({on[op]}) | - | - | - | - | - | {gbps:.1f} | "
                        f"**{100 * gbps / copy:.0f}%** | - | {r['ops']['others']:.2f} ({r['ops']['redone']}) |")
        ratio, ratio_ops, ratio_pre = best / lt["patched"], best / lt["hops"], best / pre
        faster = min(PEERS, key=lambda peer: lt[peer])
        verdicts.append(
            f"T={layer.t}: the hops.patch() layer {ratio:.2f}x the faster of transformers' paths ({faster}; target "
            f"{TARGETS['ratio']}x: {'met' if ratio >= TARGETS['ratio'] else 'missed'}), {ratio_ops:.2f}x through "
            f"hops.ops with fresh intermediates, {ratio_pre:.2f}x on preallocated outputs; expert MLP {mlp_gflops:.0f} GFLOP/s = "
            f"{100 * mlp_gflops / avx2_peak:.0f}% of the AVX2 peak (target {100 * TARGETS['peak']:.0f}%: "
            f"{'met' if mlp_gflops >= TARGETS['peak'] * avx2_peak else 'missed'}; "
            f"{100 * mlp_gflops / widest_peak:.0f}% of the AVX-512 peak; per CPU-second of the process "
            f"{per_cpu_second:.0f} GFLOP, {100 * per_cpu_second / (avx2_peak / os.cpu_count()):.0f}% of one core's "
            f"AVX2 peak); dispatch "
            f"{100 * shares['moe_dispatch']:.0f}% and combine {100 * shares['moe_combine']:.0f}% of the copy "
            f"bandwidth (target {100 * TARGETS['copy']:.0f}%: "
            f"{'met' if min(shares.values()) >= TARGETS['copy'] else 'missed'})")
    return "\n".join(rows), verdicts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096], help="tokens T")
    parser.add_argument("--dtype", nargs="+", choices=("float32", "bfloat16"), default=["float32"],
                        help="dtype of the inputs, weights and outputs; one table each")
    benchlib.add_timing_arguments(parser, budget=60.0)
    args = parser.parse_args()
    benchlib.quiet_transformers()

    started = time.perf_counter()
    machine = benchlib.machine_line()
    print(machine, file=sys.stderr)
    ceilings = cpu_bench.measure_ceilings(args.reps)
    avx2_peak, widest_peak, how = nominal_peaks()
    print(f"ceilings: {ceilings}; nominal fp32 peak: AVX2 {avx2_peak:.0f} GFLOP/s, widest {widest_peak:.0f} "
          f"GFLOP/s ({how})", file=sys.stderr)
    report = hops.patch()  # for the whole run: the peers call transformers' own forward (EXPERTS_FORWARD)
    tables = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        layers, results = [], []
        for t in args.tokens:
            case_start = time.perf_counter()
            layer = Layer(t, dtype)
            result = measure(layer, args)
            layers.append(layer)
            results.append(result)
            lt, ot = result["layer"]["times"], result["ops"]["times"]
            print(f"{dtype_name} T={t}: layer hops.patch() {cpu_bench.fmt_ms(lt['patched'])} ms, hops.ops "
                  f"{cpu_bench.fmt_ms(lt['hops'])} ms, eager {cpu_bench.fmt_ms(lt['eager'])} ms, "
                  f"grouped_mm {cpu_bench.fmt_ms(lt['grouped_mm'])} ms; ops "
                  + ", ".join(f"{name} {cpu_bench.fmt_ms(v)} ms" for name, v in ot.items())
                  + f"; errors {result['errors']}; others {result['layer']['others']:.2f}/"
                  f"{result['ops']['others']:.2f} [{time.perf_counter() - case_start:.0f} s]", file=sys.stderr)
            layer.release()
            hops.release_moe_workspace()  # the pool of this T (it would grow to the next anyway)
        table, verdicts = tabulate(layers, results, avx2_peak, widest_peak)
        tables.append((dtype_name, table, verdicts))
    hops.unpatch()
    load_end = "load average %.2f %.2f %.2f at the end" % os.getloadavg()
    method = benchlib.timing_note(args, "y of the layer (topk_weights for the router)", TOLERANCE)
    names = " and ".join(args.dtype)
    item = "/".join(str(getattr(torch, name).itemsize) for name in args.dtype)
    text = (f"## MoE on the CPU (issue 15)\n\n"
            f"Command: `{'HOPS_LIBRARY=' + os.environ['HOPS_LIBRARY'] + ' ' if 'HOPS_LIBRARY' in os.environ else ''}"
            f"{'HOPS_CPU_GEMM=' + os.environ['HOPS_CPU_GEMM'] + ' ' if 'HOPS_CPU_GEMM' in os.environ else ''}"
            f".venv/bin/python {' '.join(sys.argv)}` ({time.perf_counter() - started:.0f} s)  \n"
            f"{machine}; {load_end}  \nhops: {hops.info().path}, {cpu_bench.git_state()}  \n"
            f"Layout: Hd = {HD}, E = {E} experts, top-{K}, expert width I = {I}, {names} (inputs, weights and "
            f"outputs; one table each), router logits "
            f"standard normal (bf16: each token a permutation of {E} evenly spaced values in [-3, 3], which bf16 "
            f"keeps distinct: no ties for the routers to break differently; about T*k/E rows per expert). Peers: Qwen3_5MoeTopKRouter's softmax / top-k / "
            f"renormalisation on the same logits, then Qwen3_5MoeExperts with experts_implementation "
            f"\"eager\" (the model's loop over the experts hit) and \"grouped_mm\" (torch {torch.__version__}'s "
            f"grouped_mm on the CPU); \"batched_mm\" would gather a weight copy per slot (137 GB) and is not run. "
            f"The ops alone run on preallocated outputs (the raw binding); the layer as hops.patch() runs it "
            f"(patched: {report.calls.get('ExpertsInterface.hops', 0)} experts calls, "
            f"{sum(report.fallbacks.values())} fallbacks), under inference_mode, so the experts' two [T*k, Hd] "
            f"intermediates come from the workspace pool (HOPS_MOE_WORKSPACE="
            f"{os.environ.get('HOPS_MOE_WORKSPACE', '1')}), and through hops.ops. hops' expert MLP: the fp32 "
            f"GEMM, bf16 weights converted as they are packed; on AMX tiles for bf16 where the CPU has "
            f"AMX-BF16 and HOPS_CPU_GEMM is not tiles.  \n"
            f"Floors measured or computed in this run: the median of a copy_ of the rows' size (T*k x Hd, read "
            f"+ write counted) timed among the ops (its row in the table; a 256 MiB fp32 copy_ before the cases, "
            f"best of {args.reps}: {ceilings['copy_GBps']:.1f} GB/s); "
            f"nominal fp32 peak {avx2_peak:.0f} GFLOP/s with AVX2 FMA as issue 15 counts it ({widest_peak:.0f} "
            f"GFLOP/s with this CPU's widest vectors: {how}); torch's 1024^3 fp32 GEMM "
            f"{ceilings['gemm_float32_GFLOPs']:.0f} GFLOP/s. FLOP = 6 Hd I per kept slot; dispatch and "
            f"combine bytes = (T*k + T) Hd x {item} (the dtype's size).  \n{method}\n\n"
            + "\n\n".join((f"### {name}\n\n" if len(tables) > 1 else "") + table + "\n\n"
                            + "".join(f"- {line}\n" for line in verdicts)
                            for name, table, verdicts in tables))
    print(text)
    if args.write:
        benchlib.write(args.write, "bench_moe_cpu", text)


if __name__ == "__main__":
    main()
