"""The hops demo: a Qwen3.5-shaped model on the CPU, transformers' torch path
against hops.patch().

The model has random weights and the real Qwen3.5 linear-attention layout
(3 Gated DeltaNet layers : 1 full-attention layer; H=16 key heads, HV=32
value heads, K=V=128, conv width 4) and the rest of Qwen3.5-35B-A3B's widths
(hidden 2048, 16 query / 2 key-value heads of 256), with 4 layers instead of
40, a dense MLP of the width of the 35B-A3B's active experts (8 x 512 routed +
512 shared = 4608) instead of its mixture of experts, a 32768-word vocabulary,
and bfloat16 weights, as Qwen3.5 is served. docs/PERFORMANCE.md says why.

Both runs prefill the same prompt and decode greedily with the cache (the
hops run is fed the transformers run's tokens, so that each step's logits
compare like for like). The table compares time, tokens/s, the largest logit
difference and whether the greedy tokens agree; prefill times are medians of
--repeat runs, interleaved (transformers, hops, transformers, ...) so that
noise from other work on the machine falls on both. The demo also says how
long the prefill spends in the functions hops replaces, and so how much faster
any hops could make it, and how busy other processes kept the machine.

    python examples/python_demo.py [--prompt 4096] [--decode 64] [--repeat 3]
"""

import argparse
import os
import statistics
import time
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


def build_model(layers: int = 4, hidden: int = 2048, intermediate: int = 4608, vocab: int = 32768,
                dtype: torch.dtype = torch.bfloat16):
    """A random-weight Qwen3_5ForCausalLM with the real linear-attention layout."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig
    config = Qwen3_5TextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        layer_types=[("full_attention" if i % 4 == 3 else "linear_attention") for i in range(layers)],
        num_attention_heads=16, num_key_value_heads=2, head_dim=256,  # Qwen3.5-35B-A3B's attention
        linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
        linear_conv_kernel_dim=4, max_position_embeddings=32768, initializer_range=0.05)
    torch.manual_seed(0)
    return Qwen3_5ForCausalLM(config).to(dtype).eval()


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


REPLACED = ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn",
            "causal_conv1d_update")


@contextmanager
def time_replaced(model, into: list):
    """Appends the seconds spent in the functions hops.patch() replaces (the GatedDeltaNet's
    module-global kernels and the gated RMSNorm's forward; whatever is installed, so
    transformers' or hops') while the block runs."""
    import importlib
    modeling = importlib.import_module(type(model).__module__)
    norm_class = next(type(m) for m in model.modules() if type(m).__name__.endswith("RMSNormGated"))
    owners = [(modeling, name) for name in REPLACED if getattr(modeling, name, None) is not None]
    owners.append((norm_class, "forward"))
    seconds = [0.0]
    saved = []
    for owner, name in owners:
        function = vars(owner)[name]

        def timed(*args, _function=function, **kwargs):
            start = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                seconds[0] += time.perf_counter() - start
        saved.append((owner, name, function))
        setattr(owner, name, timed)
    try:
        yield
    finally:
        for owner, name, function in saved:
            setattr(owner, name, function)
        into.append(seconds[0])


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
    hidden, others, replaced = [], [], []
    with capture_final_hidden(model, hidden), layer_progress(model, f"{label}: prefill {prompt.shape[1]} tokens"):
        with other_load(others), time_replaced(model, replaced):
            start = time.perf_counter()
            out = model(prompt, use_cache=True, logits_to_keep=1)
            seconds = time.perf_counter() - start
    return dict(seconds=seconds, others=others[0], replaced=replaced[0], hidden=hidden[-1][0], logits=out.logits[0, -1],
                cache=out.past_key_values)


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
    torch_in, hops_in = statistics.median(torch_runs["replaced"]), statistics.median(hops_runs["replaced"])
    rest = statistics.median([t - r for runs in (torch_runs, hops_runs)
                              for t, r in zip(runs["prefill_all"], runs["replaced"])])
    lines += ["", f"prefill, inside the functions hops replaces (GDN core, causal conv1d, gated RMSNorm): "
              f"transformers {torch_in:.2f} s, hops {hops_in:.2f} s ({torch_in / hops_in:.1f}x); the rest of the "
              f"model (projections, MLP, attention, norms) {rest:.2f} s in both, so no hops kernel can make this "
              f"prefill more than {(torch_in + rest) / rest:.2f}x faster",
              f"prefill runs (s): {runs_s}",
              f"other processes kept {statistics.mean(others):.2f} cores busy on average during the timed parts "
              f"(at most {max(others):.2f})" + (" — a busy machine: these timings are unreliable"
                                                if max(others) >= 0.2 else ""),
              "tokens/s: prefill = prompt / median run; decode = 1 / median step; speedup = the ratio of those",
              f"max |logit difference|: prefill (all {args.prompt} positions) {check['prefill']:.2e}, "
              f"decode ({args.decode} steps) {check['decode']:.2e}  [{args.dtype}]",
              f"greedy tokens equal (hops fed transformers' tokens, so each step compares like for like): {equal}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=4096, help="prefill tokens")
    parser.add_argument("--decode", type=int, default=64, help="greedy decode steps")
    parser.add_argument("--repeat", type=int, default=3, help="prefills per path (the median is reported)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (every 4th is full attention)")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size")
    parser.add_argument("--intermediate", type=int, default=4608, help="MLP width")
    parser.add_argument("--vocab", type=int, default=32768, help="vocabulary size")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 where this CPU has fast bf16 "
                        "matmuls, else float32")
    args = parser.parse_args()

    quiet_transformers()
    print(hops.info(), "\n")
    why = args.dtype
    if args.dtype is None:
        args.dtype, why = default_dtype()
    model = build_model(args.layers, args.hidden, args.intermediate, args.vocab, DTYPES[args.dtype])
    print(f"model: Qwen3.5 layout, {args.layers} layers (3 Gated DeltaNet : 1 full attention), hidden "
          f"{args.hidden}, MLP {args.intermediate}, vocab {args.vocab}, GDN H=16 HV=32 K=V=128, attention 16/2 "
          f"heads of 256, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {why}, "
          f"{torch.get_num_threads()} torch threads")
    print("transformers path: its torch fallbacks (torch_chunk_gated_delta_rule, torch_recurrent_gated_delta_rule, "
          "F.conv1d causal conv, Qwen3_5RMSNormGated), as without fla and causal-conv1d\n")
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))

    torch_runs = {"prefill_all": [], "others": [], "replaced": []}
    hops_runs = {"prefill_all": [], "others": [], "replaced": []}
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
            runs["replaced"].append(runs["prefill"]["replaced"])
            if repeat == args.repeat - 1:
                forced = torch_runs["decode"]["tokens"] if patched else None
                runs["decode"] = decode(model, runs["prefill"], args.decode, label, forced)
            if patched:
                hops.unpatch()
    for runs in (torch_runs, hops_runs):
        runs["prefill_s"] = statistics.median(runs["prefill_all"])

    print(table(args, torch_runs, hops_runs, model))
    print("\nhops ran (last patched run): " + ", ".join(
        f"{label.split('.', 1)[1]} x{count}" for label, count in report.calls.items() if label.startswith("qwen3_5.")))
    fallbacks = sum(report.fallbacks.values())
    print(f"fallbacks to the original functions: {fallbacks}" + (f" ({report.fallback_reasons})" if fallbacks else ""))


if __name__ == "__main__":
    main()
