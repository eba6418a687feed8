"""Where the demo's prefill (and a decode step) spends its time, by part of the model,
for transformers' torch path and for hops.patch().

Timers sit on every module (forward pre-hook and hook) and on functions: the
GatedDeltaNet's module globals (torch_chunk_gated_delta_rule, causal_conv1d_fn, ...: the
redirects when patched, so hops' time is inside), F.linear where a module that is no
Linear calls it (the router's linear; the expert GEMMs of transformers' eager loop), and
the expert GEMMs of the other paths (transformers' grouped_mm, hops' moe_expert_mlp with
its fused SwiGLU). Each part is charged its exclusive time (its own minus the timed parts
inside it), so the parts add up to the whole forward. Everything runs on the CPU
synchronously, so wall time is the time of the call. Runs are interleaved (torch, hops,
torch, ...) and each part's median over the runs is reported, with the share of each
path's prefill outside the dense GEMMs (the parts marked GEMM: projections, expert GEMMs,
lm_head; issue 15 asks at most 15% for hops').

    .venv/bin/python tests/bench/profile_demo.py [--prompt 4096] [--repeat 3] [--write docs/PERFORMANCE.md]

The model is the demo's (examples/python_demo.py build_moe_model; same options and
defaults: as many experts as fit, bfloat16 where bf16 matmuls are fast here).
"""

import argparse
import importlib.util
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

import hops
from hops import torch_ops

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def load_demo():
    spec = importlib.util.spec_from_file_location("python_demo", ROOT / "examples" / "python_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODELING = "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe"
# Parts in print order; True marks the dense GEMMs.
PARTS = {
    "GDN in_proj (qkv, z, a, b)": True,
    "GDN causal conv1d (+silu)": False,
    "GDN causal conv1d update (+silu)": False,
    "GDN core: chunk_gated_delta_rule": False,
    "GDN core: recurrent_gated_delta_rule": False,
    "GDN gated RMSNorm": False,
    "GDN out_proj": True,
    "GDN rest of forward (gate g/beta, splits, reshapes, cache)": False,
    "attention q/k/v/o projections": True,
    "attention rest (q/k norm, RoPE, attention, output gate)": False,
    "MoE router linear": True,
    "MoE router top-k (softmax, top-k, renormalise)": False,
    "MoE expert GEMMs (hops: moe_expert_mlp, SwiGLU fused)": True,
    "MoE dispatch + combine (torch: also its SwiGLU)": False,
    "MoE shared expert projections (gate, up, down, sigmoid gate)": True,
    "MoE rest (shared expert's SiLU x up, its gate, the sum)": False,
    "decoder RMSNorms (input, post-attention, final)": False,
    "embedding": False,
    "lm_head": True,
    "other (rotary tables, masks, residual adds, model glue)": False,
}
(GDN_IN, CONV, CONV_UPDATE, CHUNK, RECURRENT, GATED_NORM, GDN_OUT, GDN_REST, ATTN_PROJ, ATTN_REST, ROUTER_LINEAR,
 ROUTER, EXPERT_GEMMS, DISPATCH_COMBINE, SHARED_PROJ, MOE_REST, NORMS, EMBEDDING, LM_HEAD, OTHER) = PARTS
# The GatedDeltaNet's module globals, timed as parts of their own.
FUNCTIONS = {
    "torch_chunk_gated_delta_rule": CHUNK,
    "torch_recurrent_gated_delta_rule": RECURRENT,
    "causal_conv1d_fn": CONV,
    "causal_conv1d_update": CONV_UPDATE,
}


def part_of_module(name: str, module) -> str | None:
    """The part a module's exclusive time belongs to (None: not timed on its own)."""
    last = name.rsplit(".", 1)[-1]
    if ".linear_attn." in name:
        return {"norm": GATED_NORM, "out_proj": GDN_OUT}.get(last, GDN_IN if last.startswith("in_proj") else None)
    if name.endswith(".linear_attn"):
        return GDN_REST
    if ".self_attn." in name:
        return ATTN_PROJ if last in ("q_proj", "k_proj", "v_proj", "o_proj") else None
    if name.endswith(".self_attn"):
        return ATTN_REST
    if name.endswith(".mlp.gate"):
        return ROUTER
    if name.endswith(".mlp.experts"):
        return DISPATCH_COMBINE
    if name.endswith(".mlp.shared_expert_gate") or ".mlp.shared_expert." in name and last.endswith("_proj"):
        return SHARED_PROJ
    if name.endswith((".mlp", ".mlp.shared_expert")):
        return MOE_REST
    if last in ("input_layernorm", "post_attention_layernorm") or name == "model.norm":
        return NORMS
    return {"model.embed_tokens": EMBEDDING, "lm_head": LM_HEAD, "": OTHER}.get(name)


class PartTimer:
    """Exclusive wall time per part: a stack of open timed regions."""

    def __init__(self):
        self.totals = defaultdict(float)
        self.stack = []  # [part, start, time of timed regions inside]

    def enter(self, part):
        self.stack.append([part, time.perf_counter(), 0.0])

    def leave(self):
        part, start, inner = self.stack.pop()
        elapsed = time.perf_counter() - start
        self.totals[part] += elapsed - inner
        if self.stack:
            self.stack[-1][2] += elapsed

    def instrument(self, model):
        handles = []
        for name, module in model.named_modules():
            part = part_of_module(name, module)
            if part is None:
                continue
            handles.append(module.register_forward_pre_hook(lambda *_, p=part: self.enter(p)))
            handles.append(module.register_forward_hook(lambda *_: self.leave(), always_call=True))
        import transformers.integrations.moe as transformers_moe

        modeling = importlib.import_module(MODELING)
        functions = [(modeling, function, part) for function, part in FUNCTIONS.items()] + [
            (F, "linear", None), (transformers_moe, "_grouped_mm", EXPERT_GEMMS),
            (hops.ops, "moe_expert_mlp", EXPERT_GEMMS), (torch_ops, "moe_expert_mlp", EXPERT_GEMMS)]
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in functions if hasattr(owner, name)]
        for owner, name, part in functions:
            if hasattr(owner, name):
                setattr(owner, name, self.timed(getattr(owner, name), part))

        def remove():
            for handle in handles:
                handle.remove()
            for owner, name, original in originals:
                setattr(owner, name, original)
        return remove

    def timed(self, function, part):
        """`function` charged to `part`; F.linear (part None) only where a module that is no
        Linear calls it: the router's linear, the eager experts loop's GEMMs."""
        def run(*args, **kwargs):
            charged = part or {ROUTER: ROUTER_LINEAR, DISPATCH_COMBINE: EXPERT_GEMMS}.get(
                self.stack[-1][0] if self.stack else None)
            if charged is None:
                return function(*args, **kwargs)
            self.enter(charged)
            try:
                return function(*args, **kwargs)
            finally:
                self.leave()
        return run


@torch.inference_mode()
def profile_once(model, prompt, decode_steps):
    """Part times of one prefill and of the median decode step after it."""
    timer = PartTimer()
    remove = timer.instrument(model)
    try:
        start = time.perf_counter()
        out = model(prompt, use_cache=True, logits_to_keep=1)
        prefill_total = time.perf_counter() - start
        prefill = dict(timer.totals)
        steps, cache, token = [], out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(decode_steps):
            timer.totals.clear()
            start = time.perf_counter()
            out = model(token, past_key_values=cache, use_cache=True)
            steps.append((time.perf_counter() - start, dict(timer.totals)))
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    finally:
        remove()
    return prefill_total, prefill, steps


def medians(runs):
    """runs: [(total, {part: s})] -> (median total, {part: median s})."""
    parts = {part for _, times in runs for part in times}
    return (statistics.median(total for total, _ in runs),
            {part: statistics.median(times.get(part, 0.0) for _, times in runs) for part in parts})


def outside_gemms(result) -> float:
    """The share of a path's median total not in the dense GEMM parts."""
    total, parts = result
    return 1 - sum(seconds for part, seconds in parts.items() if PARTS.get(part)) / total


def table(title_unit, torch_result, hops_result, scale):
    torch_total, torch_parts = torch_result
    hops_total, hops_parts = hops_result
    lines = [f"| part | GEMM | torch {title_unit} | hops {title_unit} | hops share | torch / hops |",
             "|---|:-:|--:|--:|--:|--:|"]
    for part, gemm in PARTS.items():
        a, b = torch_parts.get(part, 0.0), hops_parts.get(part, 0.0)
        if a == 0.0 and b == 0.0:
            continue
        ratio = f"{a / b:.1f}x" if b > 0 else "-"
        lines.append(f"| {part} | {'yes' if gemm else ''} | {a * scale:.1f} | {b * scale:.1f} | "
                     f"{100 * b / hops_total:.1f}% | {ratio} |")
    lines.append(f"| **total** (sum of parts: torch {sum(torch_parts.values()) * scale:.1f}, "
                 f"hops {sum(hops_parts.values()) * scale:.1f}) | | **{torch_total * scale:.1f}** | "
                 f"**{hops_total * scale:.1f}** | 100% | **{torch_total / hops_total:.2f}x** |")
    lines.append(f"| outside the dense GEMMs (the parts not marked GEMM) | | "
                 f"{100 * outside_gemms(torch_result):.0f}% | **{100 * outside_gemms(hops_result):.0f}%** | | |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=4096)
    parser.add_argument("--decode", type=int, default=8, help="decode steps profiled after each prefill")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per path (medians reported)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--experts", type=int, help="routed experts (default: the demo's, as many as fit)")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--expert-width", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"),
                        help="default: the demo's (bfloat16 where bf16 matmuls are fast here, else float32)")
    parser.add_argument("--noisy", type=float, default=0.15,
                        help="a run during which other processes kept more cores than this busy is run again")
    parser.add_argument("--redo", type=int, default=6, help="runs thrown away and run again, at most")
    parser.add_argument("--patience", type=float, default=30.0, help="seconds to wait for a quiet machine")
    parser.add_argument("--write", metavar="MD", help="write the tables into this markdown file's section")
    args = parser.parse_args()

    demo = load_demo()
    demo.quiet_transformers()
    if args.dtype is None:
        args.dtype = demo.default_dtype()[0]
    fit = "given"
    if args.experts is None:
        args.experts, fit = demo.experts_that_fit(args.layers, args.hidden, args.expert_width, demo.DTYPES[args.dtype])
    model = demo.build_moe_model(args.layers, args.hidden, args.experts, args.top_k, args.expert_width, args.vocab,
                                 demo.DTYPES[args.dtype])
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    demo.warm_up(model)
    hops.patch()
    demo.warm_up(model)
    hops.unpatch()

    experts_implementation = model.config._experts_implementation
    results = {"torch": ([], []), "hops": ([], [])}
    others, redone = [], 0
    for repeat in range(args.repeat):
        for path in ("torch", "hops"):
            while True:
                benchlib.wait_for_quiet(patience=args.patience)
                if path == "hops":
                    report = hops.patch()
                try:
                    with benchlib.OtherLoad() as load:
                        total, parts, steps = profile_once(model, prompt, args.decode)
                finally:
                    if path == "hops":
                        hops.unpatch()
                kept = load.cores <= args.noisy or redone >= args.redo
                print(f"run {repeat + 1}/{args.repeat} {path}: prefill {total:.2f} s, decode step median "
                      f"{statistics.median(s for s, _ in steps) * 1e3:.1f} ms; other processes kept "
                      f"{load.cores:.2f} cores busy{'' if kept else ' — thrown away, run again'}", file=sys.stderr)
                if kept:
                    break
                redone += 1
            others.append(load.cores)
            results[path][0].append((total, parts))
            results[path][1].extend(steps)

    fallbacks = sum(report.fallbacks.values())
    prefill = table("ms", medians(results["torch"][0]), medians(results["hops"][0]), 1e3)
    decode = table("ms", medians(results["torch"][1]), medians(results["hops"][1]), 1e3)
    machine = benchlib.machine_line()
    text = (f"Command: `.venv/bin/python {' '.join(sys.argv)}`  \n{machine}  \n"
            f"Model: the demo's `build_moe_model(layers={args.layers}, hidden={args.hidden}, "
            f"experts={args.experts}, top_k={args.top_k}, expert_width={args.expert_width}, vocab={args.vocab}, "
            f"dtype={args.dtype})` ({fit}); transformers' experts implementation \"{experts_implementation}\"; "
            f"hops.patch() with {fallbacks} fallbacks in its last run. Prompt {args.prompt} tokens. Medians of "
            f"{args.repeat} "
            f"interleaved runs per path (decode: of {args.repeat * args.decode} steps, {args.decode} after each "
            f"prefill), each run started once the machine was quiet (or after {args.patience:g} s). A run during "
            f"which other processes kept more than {args.noisy:g} cores busy was thrown away and run again "
            f"({redone} were); over the kept runs other processes kept {statistics.mean(others):.2f} cores busy "
            f"on average, {max(others):.2f} at most.\n\n"
            f"**Prefill of {args.prompt} tokens** (exclusive ms per part, all layers together; GEMM: the dense "
            f"GEMMs, issue 15 asks hops' prefill to spend at most 15% outside them)\n\n{prefill}\n\n"
            f"**One decode step** (exclusive ms per part)\n\n{decode}\n")
    print(text)
    if args.write:
        benchlib.write(args.write, "profile_demo", text)


if __name__ == "__main__":
    main()
