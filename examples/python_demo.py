"""The hops demo: a Qwen3.5-shaped model on the CPU, transformers' torch path
against hops.patch().

The model has random weights and the real Qwen3.5 linear-attention layout
(3 Gated DeltaNet layers : 1 full-attention layer; H=16 key heads, HV=32
value heads, K=V=128, conv width 4), with fewer layers and a smaller hidden
size so that it fits a small machine. Both runs prefill the same prompt and
decode greedily with the cache; the table compares time, tokens/s, the
largest logit difference and whether the greedy tokens agree.

    python examples/python_demo.py [--prompt 4096] [--decode 64] [--layers 4]
"""

import argparse
import time
from contextlib import contextmanager

import torch
from tqdm import tqdm

import hops


def build_model(layers: int, hidden: int):
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig
    config = Qwen3_5TextConfig(
        vocab_size=8192, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        layer_types=[("full_attention" if i % 4 == 3 else "linear_attention") for i in range(layers)],
        num_attention_heads=8, num_key_value_heads=2, head_dim=256,  # Qwen3.5's head_dim, fewer heads
        linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128, linear_value_head_dim=128,
        linear_conv_kernel_dim=4, max_position_embeddings=8192, initializer_range=0.05)
    torch.manual_seed(0)
    return Qwen3_5ForCausalLM(config).eval()


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


@torch.inference_mode()
def run(model, prompt, decode_steps: int, label: str) -> dict:
    """Prefill, then greedy decode with the cache; times each part."""
    start = time.perf_counter()
    with layer_progress(model, f"{label}: prefill {prompt.shape[1]} tokens"):
        out = model(prompt, use_cache=True, logits_to_keep=0)
    prefill_s = time.perf_counter() - start
    logits = [out.logits[0, -1]]
    prefill_logits, cache = out.logits[0], out.past_key_values
    tokens = [int(logits[-1].argmax())]
    start = time.perf_counter()
    for _ in tqdm(range(decode_steps), desc=f"{label}: decode", unit="tok", leave=False):
        out = model(torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits.append(out.logits[0, -1])
        tokens.append(int(logits[-1].argmax()))
    decode_s = time.perf_counter() - start
    return dict(prefill_s=prefill_s, decode_s=decode_s, prefill_logits=prefill_logits,
                decode_logits=torch.stack(logits[1:]), tokens=tokens)


def table(prompt_tokens: int, decode_steps: int, torch_run: dict, hops_run: dict) -> str:
    diff = max((torch_run["prefill_logits"] - hops_run["prefill_logits"]).abs().max().item(),
               (torch_run["decode_logits"] - hops_run["decode_logits"]).abs().max().item())
    equal = torch_run["tokens"] == hops_run["tokens"]
    rows = [("", "time s", "tokens/s", "speedup")]
    for part, tokens in (("prefill", prompt_tokens), ("decode", decode_steps)):
        for name, result in (("transformers (torch)", torch_run), ("hops.patch()", hops_run)):
            seconds = result[f"{part}_s"]
            speedup = torch_run[f"{part}_s"] / seconds
            rows.append((f"{part:7s} {name}", f"{seconds:.2f}", f"{tokens / seconds:.1f}", f"{speedup:.2f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                       enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines += ["", f"max |logit difference| (prefill and decode): {diff:.2e}",
              f"greedy tokens equal ({decode_steps + 1} tokens): {'yes' if equal else 'NO'}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", type=int, default=4096, help="prefill tokens")
    parser.add_argument("--decode", type=int, default=64, help="greedy decode steps")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (every 4th is full attention)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size")
    args = parser.parse_args()

    print(hops.info(), "\n")
    model = build_model(args.layers, args.hidden)
    print(f"model: Qwen3.5 layout, {args.layers} layers, hidden {args.hidden}, GDN H=16 HV=32 K=V=128, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, float32, "
          f"{torch.get_num_threads()} threads\n")
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(1))

    torch_run = run(model, prompt, args.decode, "transformers")
    report = hops.patch()
    hops_run = run(model, prompt, args.decode, "hops")
    hops.unpatch()

    print(table(args.prompt, args.decode, torch_run, hops_run))
    print("\nhops ran: " + ", ".join(f"{label.split('.', 1)[1]} x{count}" for label, count in report.calls.items()
                                   if label.startswith("qwen3_5.")))
    fallbacks = sum(report.fallbacks.values())
    print(f"fallbacks to the original functions: {fallbacks}" + (f" ({report.fallback_reasons})" if fallbacks else ""))


if __name__ == "__main__":
    main()
