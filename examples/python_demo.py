"""The hops demo: a Qwen3.5-MoE-shaped model on the CPU, transformers' torch path
against hops.patch().

The model has random weights and Qwen3.5-35B-A3B's layout scaled to this machine:
4 layers (3 Gated DeltaNet : 1 gated full attention; GDN H=16 key heads, HV=32
value heads, K=V=128, conv width 4; attention 16 query / 2 key-value heads of
256), hidden 2048, in every layer a sparse MoE block (top-8 routing over as many
experts of width 512 as fit in a quarter of the available memory, at least 64;
the real model has 256) with its shared expert, a 32768-word vocabulary, and
bfloat16 weights where this CPU multiplies bf16 matrices fast, else float32.

transformers runs its own path (torch fallbacks for the GDN and conv, sdpa, its
router, and the experts implementation it picks on a CPU, which the demo names);
hops.patch() puts the GDN, conv1d, gated norm, attention, router and experts on
hops. Both runs prefill the same prompt and decode greedily with the cache (the
hops run is fed the transformers run's tokens, so that each step's logits compare
like for like). The table compares time, tokens/s, the largest logit difference
and whether the greedy tokens agree; prefill times are medians of --repeat runs,
interleaved (transformers, hops, transformers, ...) so that noise from other work
on the machine falls on both. The demo also says how much of each path's prefill
is in the dense projections that neither replaces (every F.linear outside the
experts: attention and GDN projections, the shared expert, the router's linear,
lm_head) and so, by Amdahl's law, how much faster any replacement of the rest
could make it; how much of each path's prefill is outside the dense GEMMs (those
projections and the expert GEMMs: issue 15 asks at most 15% for hops'); and how
busy other processes kept the machine.

    python examples/python_demo.py [--prompt 512] [--decode 32] [--repeat 3] [--experts N]
"""

import argparse
import os
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from tqdm import tqdm

import hops

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def default_dtype() -> tuple[str, str]:
    """bfloat16, as Qwen3.5 is served, where this CPU multiplies bf16 matrices at a
    useful rate (AVX-512 or AMX); else float32: without them torch's bf16 GEMM runs
    some 50x slower than fp32 and the projections would swamp everything."""
    def rate(dtype):
        a = torch.randn(256, 256).to(dtype)
        a @ a
        start = time.perf_counter()
        for _ in range(4):
            a @ a
        return 4 * 2 * 256 ** 3 / (time.perf_counter() - start) / 1e9
    bf16, fp32 = rate(torch.bfloat16), rate(torch.float32)
    name = "bfloat16" if bf16 > fp32 / 2 else "float32"
    return name, f"{name} (bf16 matmul here {bf16:.1f} GFLOP/s, fp32 {fp32:.1f})"


def available_memory() -> int:
    """Bytes the kernel says new allocations can take (MemAvailable), 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0


def experts_that_fit(layers: int, hidden: int, expert_width: int, dtype: torch.dtype) -> tuple[int, str]:
    """The most experts, in steps of 64 up to the real model's 256, whose weights take at most a
    quarter of the available memory (the machine is shared); at least 64."""
    per_expert = layers * 3 * expert_width * hidden * torch.finfo(dtype).bits // 8  # gate, up, down
    available = available_memory()
    experts = min(256, max(64, available // 4 // per_expert // 64 * 64))
    return experts, (f"{experts} experts: {experts * per_expert / 2 ** 30:.1f} GiB of expert weights "
                     f"({available / 2 ** 30:.1f} GiB available at start)")


def build_moe_model(layers: int = 4, hidden: int = 2048, experts: int = 64, top_k: int = 8, expert_width: int = 512,
                    vocab: int = 32768, dtype: torch.dtype = torch.bfloat16):
    """A random-weight Qwen3_5MoeForCausalLM with Qwen3.5-35B-A3B's layout (GDN H=16, HV=32,
    K=V=128, conv width 4; attention 16 query / 2 key-value heads of 256; experts of width 512
    and a shared expert of 512), `experts` experts routed top-`top_k`. Built in `dtype`
    directly (no float32 copy first). tests/bench/profile_demo.py profiles it too."""
    from transformers import Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig
    config = Qwen3_5MoeTextConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        layer_types=[("full_attention" if i % 4 == 3 else "linear_attention") for i in range(layers)],
        num_attention_heads=16, num_key_value_heads=2, head_dim=256,
        linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
        linear_conv_kernel_dim=4, num_experts=experts, num_experts_per_tok=top_k, moe_intermediate_size=expert_width,
        shared_expert_intermediate_size=expert_width, max_position_embeddings=32768, initializer_range=0.05)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return Qwen3_5MoeForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def quiet_transformers() -> None:
    """transformers warns once per fallback function (no fla, no causal-conv1d) while
    the first run is under way; those lines would break the progress bars. The
    fallbacks are the point of the comparison, so main() says so once instead."""
    from transformers.utils import logging
    logging.set_verbosity_error()


def busy_cpu_seconds() -> float:
    """CPU seconds every process (and the hypervisor's steal) used so far, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (
                [int(v) for v in f.readline().split()[1:]] + [0] * 8)[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return float("nan")


@contextmanager
def other_load(into: list):
    """Appends how many cores other processes kept busy meanwhile (on average): the
    machine may be shared, and torch's OpenMP parallel regions slow down far more than
    hops' thread pool when another process competes for the cores."""
    start = (time.perf_counter(), busy_cpu_seconds(), sum(os.times()[:2]))
    try:
        yield
    finally:
        wall, busy, own = (b - a for a, b in zip(start, (time.perf_counter(), busy_cpu_seconds(),
                                                         sum(os.times()[:2]))))
        into.append(max(0.0, busy - own) / wall)


@contextmanager
def layer_progress(model, description: str):
    """A progress bar that advances as each decoder layer finishes its forward."""
    layers = model.model.layers
    bar = tqdm(total=len(layers), desc=description, unit="layer", leave=False)

    def advance(*_):  # a forward hook that returned something would replace the layer's output
        bar.update(1)

    hooks = [layer.register_forward_hook(advance) for layer in layers]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        bar.close()


@contextmanager
def time_parts(model, into: list):
    """Appends {part: exclusive seconds} for the block: "dense" (every F.linear outside the
    experts: the projections neither path replaces), "expert_gemms" (the experts' GEMMs:
    transformers' eager loop's F.linear or its grouped_mm, hops' moe_expert_mlp with its
    fused SwiGLU), "experts" (the rest of the experts modules: sorting or dispatching the
    rows, the weighted sum, torch's SwiGLU between its GEMMs), "router" (its top-k, without
    its linear). Everything runs synchronously on the CPU, so wall time is the time of the call."""
    import torch.nn.functional as F
    import transformers.integrations.moe as transformers_moe

    from hops import torch_ops

    seconds, stack = defaultdict(float), []  # stack: [part, start, seconds of timed parts inside]

    def enter(part):
        stack.append([part, time.perf_counter(), 0.0])

    def leave():
        part, start, inner = stack.pop()
        elapsed = time.perf_counter() - start
        seconds[part] += elapsed - inner
        if stack:
            stack[-1][2] += elapsed

    def timed(function, part=None):
        def run(*args, **kwargs):  # F.linear inside the experts (transformers' eager loop): their GEMMs
            enter(part or ("expert_gemms" if stack and stack[-1][0] == "experts" else "dense"))
            try:
                return function(*args, **kwargs)
            finally:
                leave()
        return run

    wrapped = [(F, "linear", None), (transformers_moe, "_grouped_mm", "expert_gemms"),
               (hops.ops, "moe_expert_mlp", "expert_gemms"), (torch_ops, "moe_expert_mlp", "expert_gemms")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in wrapped]
    handles = []
    for module in model.modules():
        part = {"Experts": "experts", "TopKRouter": "router"}.get(next(
            (suffix for suffix in ("Experts", "TopKRouter") if type(module).__name__.endswith(suffix)), None))
        if part is not None:
            handles.append(module.register_forward_pre_hook(lambda *_, p=part: enter(p)))
            handles.append(module.register_forward_hook(lambda *_: leave(), always_call=True))
    for owner, name, part in wrapped:
        setattr(owner, name, timed(getattr(owner, name), part))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        for handle in handles:
            handle.remove()
        into.append(dict(seconds))


@contextmanager
def boundary_ties(model, into: list):
    """Appends the share of the routes (token, layer) whose k-th and (k+1)-th largest router
    logits are equal: there hops takes the lower expert id and torch.topk either one."""
    counts = [0, 0]

    def count(module, _inputs, output):
        top = output[0].topk(module.top_k + 1, dim=-1).values
        counts[0] += int((top[:, -1] == top[:, -2]).sum())
        counts[1] += top.shape[0]

    handles = [m.register_forward_hook(count) for m in model.modules() if type(m).__name__.endswith("TopKRouter")]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        into.append(counts[0] / max(counts[1], 1))


@contextmanager
def capture_final_hidden(model, into: list):
    """Keeps the final norm's output, so that the logits of every prompt position can be
    compared after the timed prefill without the timed run computing them."""
    hook = model.model.norm.register_forward_hook(lambda _m, _i, out: into.append(out.detach()))
    try:
        yield
    finally:
        hook.remove()


@torch.inference_mode()
def prefill(model, prompt, label: str) -> dict:
    """One timed prefill with a fresh cache; only the last position's logits are
    computed (as generation does), the final hidden states are kept."""
    hidden, others, parts, ties = [], [], [], []
    with capture_final_hidden(model, hidden), layer_progress(model, f"{label}: prefill {prompt.shape[1]} tokens"):
        with other_load(others), time_parts(model, parts), boundary_ties(model, ties):  # ties: after the timers
            start = time.perf_counter()
            out = model(prompt, use_cache=True, logits_to_keep=1)
            seconds = time.perf_counter() - start
    return dict(seconds=seconds, others=others[0], parts=parts[0], ties=ties[0], hidden=hidden[-1][0],
                logits=out.logits[0, -1], cache=out.past_key_values)


@torch.inference_mode()
def decode(model, first: dict, steps: int, label: str, tokens=None) -> dict:
    """Greedy decode from a prefill's cache, timing each step. With `tokens` (another
    run's greedy tokens) it feeds those instead of its own choices, so that both runs
    see the same inputs and their logits compare step by step."""
    cache, logits = first["cache"], [first["logits"]]
    chosen = [int(logits[-1].argmax())]
    step_seconds, others = [], []
    with other_load(others):
        for step in tqdm(range(steps), desc=f"{label}: decode", unit="tok", leave=False):
            token = chosen[-1] if tokens is None else tokens[step]
            start = time.perf_counter()
            out = model(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            step_seconds.append(time.perf_counter() - start)
            cache = out.past_key_values
            logits.append(out.logits[0, -1])
            chosen.append(int(logits[-1].argmax()))
    return dict(seconds=sum(step_seconds), step_median=statistics.median(step_seconds), others=others[0],
                logits=torch.stack(logits), tokens=chosen)


@torch.inference_mode()
def warm_up(model) -> None:
    """A short prefill and two decode steps: thread pools, oneDNN primitives, hops'
    library load and scratch, so that the timed runs do not pay for them."""
    out = model(torch.zeros(1, 64, dtype=torch.long), use_cache=True, logits_to_keep=1)
    for _ in range(2):
        out = model(torch.zeros(1, 1, dtype=torch.long), past_key_values=out.past_key_values, use_cache=True)


def compare(model, torch_runs: dict, hops_runs: dict) -> dict:
    """Largest |logit difference| over every prompt position (from the kept hidden states)
    and every decode step; the greedy tokens that differ, with the torch run's margin
    between its first and second choice there (a near-tie flips on rounding noise)."""
    with torch.inference_mode():
        prefill = 0.0
        for rows in torch.split(torch.arange(torch_runs["prefill"]["hidden"].shape[0]), 512):
            a = model.lm_head(torch_runs["prefill"]["hidden"][rows]).float()
            b = model.lm_head(hops_runs["prefill"]["hidden"][rows]).float()
            prefill = max(prefill, (a - b).abs().max().item())
    reference, ours = torch_runs["decode"]["logits"].float(), hops_runs["decode"]["logits"].float()
    top2 = reference.topk(2, dim=-1).values
    differ = [(i, (top2[i, 0] - top2[i, 1]).item(), (reference[i] - ours[i]).abs().max().item()) for i, (a, b) in
              enumerate(zip(torch_runs["decode"]["tokens"], hops_runs["decode"]["tokens"])) if a != b]
    return dict(prefill=prefill, decode=(reference[1:] - ours[1:]).abs().max().item(), differ=differ,
                tokens=len(torch_runs["decode"]["tokens"]))


OUTSIDE_TARGET = 0.15  # issue 15: the patched prefill spends at most 15% of its time outside the dense GEMMs


def where_prefill_goes(torch_runs: dict, hops_runs: dict) -> list[str]:
    """Each path's prefill split into time_parts' parts (medians over the runs, the rest being
    what is left of the median total), the share outside the dense GEMMs (projections, expert
    GEMMs, lm_head), and the bound that the dense projections neither path replaces put on the
    speedup (Amdahl: with a fraction f of transformers' time in them, no replacement of the
    rest beats 1/f)."""
    lines, dense_share, outside = ["prefill, where the time goes (medians):"], {}, {}
    for name, runs in (("transformers", torch_runs), ("hops.patch()", hops_runs)):
        total = runs["prefill_s"]
        dense, gemms, experts, router = (statistics.median(run.get(part, 0.0) for run in runs["parts"])
                                         for part in ("dense", "expert_gemms", "experts", "router"))
        dense_share[name], outside[name] = dense / total, 1 - (dense + gemms) / total
        lines.append(f"  {name:<12} {total:6.2f} s: dense projections {dense:.2f} s ({dense / total:.0%}), "
                     f"expert GEMMs {gemms:.2f} s ({gemms / total:.0%}), experts' dispatch/combine {experts:.2f} s "
                     f"({experts / total:.0%}), router top-k {router:.2f} s, the rest (GDN, conv1d, norms, "
                     f"attention, glue) {total - dense - gemms - experts - router:.2f} s; outside the dense GEMMs "
                     f"{outside[name]:.0%}")
    f = dense_share["transformers"]
    speedup = torch_runs["prefill_s"] / hops_runs["prefill_s"]
    lines.append(f"  dense projections: every F.linear outside the experts (attention and GDN projections, the shared "
                 f"expert, the router's linear, lm_head), the same torch GEMMs on both paths. With f = {f:.0%} of "
                 f"transformers' prefill in them, replacing all the rest bounds the speedup at 1/f = {1 / f:.2f}x "
                 f"(Amdahl); measured {speedup:.2f}x, {speedup * f:.0%} of that bound. hops' prefill spends "
                 f"{dense_share['hops.patch()']:.0%} of its time in them")
    share = outside["hops.patch()"]
    lines.append(f"  hops.patch()'s prefill outside the dense GEMMs (projections, expert GEMMs with hops' fused SwiGLU, "
                 f"lm_head): {share:.0%} (issue 15's target: at most {OUTSIDE_TARGET:.0%}: "
                 f"{'met' if share <= OUTSIDE_TARGET else 'missed'})")
    return lines


def table(args, torch_runs: dict, hops_runs: dict, model) -> str:
    check = compare(model, torch_runs, hops_runs)
    rows = [("", "time s", "tokens/s", "speedup", "runs")]
    for name, runs in (("transformers (torch)", torch_runs), ("hops.patch()", hops_runs)):
        seconds = runs["prefill_s"]
        rows.append((f"prefill {name}", f"{seconds:.2f}", f"{args.prompt / seconds:.0f}",
                     f"{torch_runs['prefill_s'] / seconds:.2f}x", f"median of {len(runs['prefill_all'])}"))
    for name, runs in (("transformers (torch)", torch_runs), ("hops.patch()", hops_runs)):
        step = runs["decode"]["step_median"]
        rows.append((f"decode  {name}", f"{runs['decode']['seconds']:.2f}", f"{1 / step:.1f}",
                     f"{torch_runs['decode']['step_median'] / step:.2f}x", f"median step of {args.decode}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(width) if 0 < i < 4 else cell.ljust(width)
                       for i, (cell, width) in enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    runs_s = "; ".join(f"{name} " + ", ".join(f"{s:.2f}" for s in runs["prefill_all"])
                       for name, runs in (("transformers", torch_runs), ("hops", hops_runs)))
    others = [o for runs in (torch_runs, hops_runs) for o in runs["others"] + [runs["decode"]["others"]]]
    if check["differ"]:
        where = ", ".join(f"token {i} (transformers' top-two margin {margin:.3f}, max |logit difference| "
                          f"{difference:.3f})" for i, margin, difference in check["differ"][:4])
        equal = (f"{check['tokens'] - len(check['differ'])} of {check['tokens']}; differ at {where}"
                 f"{', ...' if len(check['differ']) > 4 else ''}")
    else:
        equal = f"yes, all {check['tokens']}"
    lines += ["", *where_prefill_goes(torch_runs, hops_runs), f"prefill runs (s): {runs_s}",
              f"other processes kept {statistics.mean(others):.2f} cores busy on average during the timed parts "
              f"(at most {max(others):.2f})" + (" — a busy machine: these timings are unreliable"
                                                if max(others) >= 0.2 else ""),
              "tokens/s: prefill = prompt / median run; decode = 1 / median step; speedup = the ratio of those",
              f"max |logit difference|: prefill (all {args.prompt} positions) {check['prefill']:.2e}, "
              f"decode ({args.decode} steps) {check['decode']:.2e}  [{args.dtype}]",
              f"greedy tokens equal (hops fed transformers' tokens, so each step compares like for like): {equal}",
              f"router: in {torch_runs['prefill']['ties']:.1%} of transformers' prefill routes (token, layer) the "
              f"{args.top_k}th and {args.top_k + 1}th largest logits tie; hops takes the lower expert id there, "
              "torch.topk either, so such tokens may meet different experts"
              + (" (ties are common in bfloat16: --dtype float32 compares like for like)"
                 if args.dtype == "bfloat16" else "")]
    return "\n".join(lines)


EXPERTS_IMPLEMENTATIONS = {
    "grouped_mm": "torch's grouped GEMM over the slots sorted by expert, then a weighted sum",
    "eager": "a Python loop over the experts hit, index_add into the output",
    "batched_mm": "one GEMM per slot on gathered expert weights",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=512, help="prefill tokens (512: a few minutes on 2 cores)")
    parser.add_argument("--decode", type=int, default=32, help="greedy decode steps")
    parser.add_argument("--repeat", type=int, default=3, help="prefills per path (the median is reported)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (every 4th is full attention)")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size")
    parser.add_argument("--experts", type=int, help="routed experts (default: as many as fit, at least 64)")
    parser.add_argument("--top-k", type=int, default=8, help="experts per token")
    parser.add_argument("--expert-width", type=int, default=512, help="each expert's (and the shared expert's) width")
    parser.add_argument("--vocab", type=int, default=32768, help="vocabulary size")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 where this CPU has fast bf16 "
                        "matmuls, else float32")
    args = parser.parse_args()

    quiet_transformers()
    print(hops.info(), "\n")
    why = args.dtype
    if args.dtype is None:
        args.dtype, why = default_dtype()
    experts, fit = args.experts, "given"
    if experts is None:
        experts, fit = experts_that_fit(args.layers, args.hidden, args.expert_width, DTYPES[args.dtype])
    model = build_moe_model(args.layers, args.hidden, experts, args.top_k, args.expert_width, args.vocab,
                            DTYPES[args.dtype])
    parameters = sum(p.numel() for p in model.parameters())
    inactive = args.layers * (experts - args.top_k) * 3 * args.expert_width * args.hidden
    print(f"model: Qwen3.5-35B-A3B layout, {args.layers} layers (3 Gated DeltaNet : 1 gated full attention), hidden "
          f"{args.hidden}, GDN H=16 HV=32 K=V=128, attention 16/2 heads of 256; MoE: top-{args.top_k} of "
          f"{experts} experts ({fit}) of width {args.expert_width} plus a shared expert of {args.expert_width}; "
          f"vocab {args.vocab}; {parameters / 1e6:.0f}M parameters, {(parameters - inactive) / 1e6:.0f}M active "
          f"per token; {why}; {torch.get_num_threads()} torch threads")
    chosen = model.config._experts_implementation
    print(f"transformers path: experts implementation \"{chosen}\", what transformers picks on this CPU "
          f"({EXPERTS_IMPLEMENTATIONS.get(chosen, 'registered in its ExpertsInterface')}); its router (torch "
          f"softmax, topk); attention \"{model.config._attn_implementation}\"; the GDN and conv torch fallbacks "
          "(no fla, no causal-conv1d)")
    print(f"hops path: hops.patch(): GDN, conv1d, gated RMSNorm, attention, router and experts on hops; the dense "
          f"projections and the shared expert stay torch\n")
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))

    torch_runs = {"prefill_all": [], "others": [], "parts": []}
    hops_runs = {"prefill_all": [], "others": [], "parts": []}
    warm_up(model)
    report = hops.patch()
    warm_up(model)
    hops.unpatch()
    for repeat in range(args.repeat):  # interleaved, the last run of each path keeps its cache for decoding
        for runs, patched in ((torch_runs, False), (hops_runs, True)):
            label = "hops" if patched else "transformers"
            if patched:
                report = hops.patch()
            runs["prefill"] = prefill(model, prompt, f"{label} {repeat + 1}/{args.repeat}")
            runs["prefill_all"].append(runs["prefill"]["seconds"])
            runs["others"].append(runs["prefill"]["others"])
            runs["parts"].append(runs["prefill"]["parts"])
            if repeat == args.repeat - 1:
                forced = torch_runs["decode"]["tokens"] if patched else None
                runs["decode"] = decode(model, runs["prefill"], args.decode, label, forced)
            if patched:
                hops.unpatch()
    for runs in (torch_runs, hops_runs):
        runs["prefill_s"] = statistics.median(runs["prefill_all"])

    print(table(args, torch_runs, hops_runs, model))
    print("\nhops ran (last patched run): " + ", ".join(
        f"{label.removeprefix('qwen3_5_moe.')} x{count}" for label, count in report.calls.items() if count))
    fallbacks = sum(report.fallbacks.values())
    print(f"fallbacks to the original functions: {fallbacks}" + (f" ({report.fallback_reasons})" if fallbacks else ""))


if __name__ == "__main__":
    main()
