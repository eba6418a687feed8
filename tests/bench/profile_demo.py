"""Where the demo's prefill (and a decode step) spends its time, by part of the model,
for transformers' torch path and for hops.patch().

Timers sit on every module (forward pre-hook and hook) and on the GatedDeltaNet's
module-global functions (torch_chunk_gated_delta_rule, causal_conv1d_fn, ...: the
redirects when patched, so hops' time is inside); each part is charged its
exclusive time (its own minus the timed parts inside it), so the parts add up to
the whole forward. Everything runs on the CPU synchronously, so wall time is the
time of the call. Runs are interleaved (torch, hops, torch, ...) and each part's
median over the runs is reported.

    .venv/bin/python tests/bench/profile_demo.py [--prompt 4096] [--repeat 3] [--write docs/PERFORMANCE.md]

The model is the demo's (examples/python_demo.py build_model; same options).
"""

import argparse
import importlib.util
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import hops

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def load_demo():
    spec = importlib.util.spec_from_file_location("python_demo", ROOT / "examples" / "python_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODELING = "transformers.models.qwen3_5.modeling_qwen3_5"
# The GatedDeltaNet's module globals, timed as parts of their own.
FUNCTIONS = {
    "torch_chunk_gated_delta_rule": "GDN core: chunk_gated_delta_rule",
    "torch_recurrent_gated_delta_rule": "GDN core: recurrent_gated_delta_rule",
    "causal_conv1d_fn": "GDN causal conv1d (+silu)",
    "causal_conv1d_update": "GDN causal conv1d update (+silu)",
}

# Parts in print order: (name, which module paths / functions it takes).
PARTS = [
    "GDN in_proj (qkv, z, a, b)",
    "GDN causal conv1d (+silu)",
    "GDN causal conv1d update (+silu)",
    "GDN core: chunk_gated_delta_rule",
    "GDN core: recurrent_gated_delta_rule",
    "GDN gated RMSNorm",
    "GDN out_proj",
    "GDN rest of forward (gate g/beta, splits, reshapes, cache)",
    "attention q/k/v/o projections",
    "attention rest (q/k norm, RoPE, SDPA, output gate)",
    "MLP (gate, up, down, SiLU)",
    "decoder RMSNorms (input, post-attention, final)",
    "embedding + lm_head",
    "other (rotary tables, masks, residual adds, model glue)",
]


def part_of_module(name: str, module) -> str | None:
    """The part a module's exclusive time belongs to (None: not timed on its own)."""
    last = name.rsplit(".", 1)[-1]
    if ".linear_attn." in name:
        if last.startswith("in_proj"):
            return PARTS[0]
        if last == "norm":
            return PARTS[5]
        if last == "out_proj":
            return PARTS[6]
        return None
    if name.endswith(".linear_attn"):
        return PARTS[7]
    if ".self_attn." in name:
        return PARTS[8] if last in ("q_proj", "k_proj", "v_proj", "o_proj") else None
    if name.endswith(".self_attn"):
        return PARTS[9]
    if name.endswith(".mlp"):
        return PARTS[10]
    if ".mlp." in name:
        return None  # inside the MLP part
    if last in ("input_layernorm", "post_attention_layernorm") or name == "model.norm":
        return PARTS[11]
    if name in ("model.embed_tokens", "lm_head"):
        return PARTS[12]
    if name == "":
        return PARTS[13]
    return None


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
        modeling = importlib.import_module(MODELING)
        originals = {}
        for function, part in FUNCTIONS.items():
            original = getattr(modeling, function, None)
            if original is None:
                continue
            originals[function] = original

            def timed(*args, _original=original, _part=part, **kwargs):
                self.enter(_part)
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.leave()
            setattr(modeling, function, timed)

        def remove():
            for handle in handles:
                handle.remove()
            for function, original in originals.items():
                setattr(modeling, function, original)
        return remove


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


def table(title_unit, torch_result, hops_result, scale):
    torch_total, torch_parts = torch_result
    hops_total, hops_parts = hops_result
    lines = [f"| part | torch {title_unit} | hops {title_unit} | hops share | torch / hops |",
             "|---|--:|--:|--:|--:|"]
    for part in PARTS:
        a, b = torch_parts.get(part, 0.0), hops_parts.get(part, 0.0)
        if a == 0.0 and b == 0.0:
            continue
        ratio = f"{a / b:.1f}x" if b > 0 else "-"
        lines.append(f"| {part} | {a * scale:.1f} | {b * scale:.1f} | {100 * b / hops_total:.1f}% | {ratio} |")
    lines.append(f"| **total** (sum of parts: torch {sum(torch_parts.values()) * scale:.1f}, "
                 f"hops {sum(hops_parts.values()) * scale:.1f}) | **{torch_total * scale:.1f}** | "
                 f"**{hops_total * scale:.1f}** | 100% | **{torch_total / hops_total:.2f}x** |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=4096)
    parser.add_argument("--decode", type=int, default=8, help="decode steps profiled after each prefill")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per path (medians reported)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=4608)
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
    model = demo.build_model(args.layers, args.hidden, args.intermediate, args.vocab, demo.DTYPES[args.dtype])
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    demo.warm_up(model)
    hops.patch()
    demo.warm_up(model)
    hops.unpatch()

    results = {"torch": ([], []), "hops": ([], [])}
    others, redone = [], 0
    for repeat in range(args.repeat):
        for path in ("torch", "hops"):
            while True:
                benchlib.wait_for_quiet(patience=args.patience)
                if path == "hops":
                    hops.patch()
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

    prefill = table("ms", medians(results["torch"][0]), medians(results["hops"][0]), 1e3)
    decode = table("ms", medians(results["torch"][1]), medians(results["hops"][1]), 1e3)
    machine = benchlib.machine_line()
    text = (f"Command: `.venv/bin/python {' '.join(sys.argv)}`  \n{machine}  \n"
            f"Model: `build_model(layers={args.layers}, hidden={args.hidden}, intermediate={args.intermediate}, "
            f"vocab={args.vocab}, dtype={args.dtype})`; prompt {args.prompt} tokens. Medians of {args.repeat} "
            f"interleaved runs per path (decode: of {args.repeat * args.decode} steps, {args.decode} after each "
            f"prefill), each run started once the machine was quiet (or after {args.patience:g} s). A run during "
            f"which other processes kept more than {args.noisy:g} cores busy was thrown away and run again "
            f"({redone} were); over the kept runs other processes kept {statistics.mean(others):.2f} cores busy "
            f"on average, {max(others):.2f} at most.\n\n"
            f"**Prefill of {args.prompt} tokens** (exclusive ms per part, all layers together)\n\n{prefill}\n\n"
            f"**One decode step** (exclusive ms per part)\n\n{decode}\n")
    print(text)
    if args.write:
        benchlib.write(args.write, "profile_demo", text)


if __name__ == "__main__":
    main()
