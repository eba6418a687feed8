"""hops' CPU attention against the path transformers takes on the CPU, and against the floors.

Qwen3.5's full-attention layout (issue 14): Hq = 16 query heads, Hkv = 2 key-value heads,
head dim D = 256; prefill in fp32 and bf16 (which runs on bf16 dot products where the CPU has
them: AMX tiles or AVX512-BF16), decode in fp32.

  attn_prefill  causal, B = 1, T tokens (default 4096)
  attn_decode   one new token of one sequence over C cached tokens (default 4096), the
                cache paged in blocks of 16 rows scattered over the pool; warm (the same
                cache every call: 16.8 MB, which the L3 may hold) and cold (each call takes
                the next of 256 MiB of copies, as a model's layers would leave it)

The peer is transformers.integrations.sdpa_attention.sdpa_attention_forward, called as
the model calls it (attention_mask None; module.num_key_value_groups = 8): it decides
between torch SDPA with enable_gqa and repeat_kv (for this layout: enable_gqa) and
transposes the output back to [B, T, H, D]. Its q, k, v are [B, H, T, D] (k and v
contiguous, as transformers' cache holds them); hops' are [B, T, H, D] and the paged cache.

Floors: prefill FLOP = 4 D Hq (query-key pairs inside the causal mask) against the
nominal fp32 peak (cores x 2 FMA pipes x 8 AVX2 lanes x 2 FLOP x clock, as issue 14
counts it; the AVX-512 figure is printed beside it where the CPU has it); decode bytes =
the K and V rows of the sequence read once, against the bandwidth of a large copy_
measured in the same run (read + write counted). Timing as bench_cpu_vs_torch.py (whose
code it reuses): interleaved blocks, blocks during which other processes were busy thrown
away and run again, medians.

    .venv/bin/python tests/bench/bench_attn_cpu.py [--write docs/PERFORMANCE.md]
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

import hops

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import bench_cpu_vs_torch as cpu_bench  # noqa: E402

from transformers.integrations.sdpa_attention import sdpa_attention_forward, use_gqa_in_sdpa  # noqa: E402

HQ, HKV, D = 16, 2, 256
BLOCK_SIZE = 16
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # max |hops - torch| / max |torch|
PREFILL_TARGET = (1.2, 0.75)  # x SDPA, fraction of the nominal AVX2 fp32 peak
DECODE_TARGET = (4.0, 0.60)  # x SDPA, fraction of the copy bandwidth


COLD_BYTES = 256 << 20


class Rotation:
    """Items to take in turn (the check takes one too, whichever)."""

    def __init__(self, items):
        self.items, self.next = items, 0

    def __call__(self):
        item = self.items[self.next]
        self.next = (self.next + 1) % len(self.items)
        return item


class AttentionModule(torch.nn.Module):
    """What sdpa_attention_forward reads of the attention layer."""

    def __init__(self):
        super().__init__()
        self.num_key_value_groups = HQ // HKV
        self.is_causal = True


def prefill_case(t, dtype):
    gen = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(1, t, h, D, generator=gen).to(dtype) for h in (HQ, HKV, HKV))
    # transformers' layout: [B, H, T, D]
    q_t, k_t, v_t = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    module = AttentionModule()
    scale = D ** -0.5
    o, lse = torch.empty_like(q), torch.empty(1, HQ, t)
    binding = hops.library().op("attn_prefill")

    def run_hops():
        return hops.ops.attn_prefill(q, k, v, scale=scale, causal=True)[0]

    def run_torch():
        return sdpa_attention_forward(module, q_t, k_t, v_t, None, scaling=scale, is_causal=True)[0]

    def kernel():
        binding(q=q, k=k, v=v, o=o, lse=lse, scale=scale, causal=True)

    pairs = t * (t + 1) // 2
    flop = 4 * D * HQ * pairs
    size = q.element_size()
    return cpu_bench.Case("attn_prefill", "sdpa_attention_forward", f"B=1 T={t} causal", dtype, flop,
                          size * (2 * q.numel() + k.numel() + v.numel()) + 4 * lse.numel(), run_hops, run_torch,
                          lambda a, b: cpu_bench.rel_err(a, b), kernel=kernel)


def decode_case(context, dtype, cold):
    gen = torch.Generator().manual_seed(context + 1)
    blocks = -(-context // BLOCK_SIZE)
    pool = 2 * blocks  # the sequence's blocks scattered over a pool twice its size
    k_cache = torch.randn(pool, BLOCK_SIZE, HKV, D, generator=gen).to(dtype)
    v_cache = torch.randn(pool, BLOCK_SIZE, HKV, D, generator=gen).to(dtype)
    block_table = torch.randperm(pool, generator=gen)[:blocks].to(torch.int32)[None]
    seq_lens = torch.tensor([context], dtype=torch.int32)
    q = torch.randn(1, HQ, D, generator=gen).to(dtype)
    # transformers' cache: [B, Hkv, C, D] contiguous, the same rows in order
    rows = torch.arange(context)
    slots = block_table[0, rows // BLOCK_SIZE].long()
    k_t = k_cache[slots, rows % BLOCK_SIZE].transpose(0, 1).unsqueeze(0).contiguous()
    v_t = v_cache[slots, rows % BLOCK_SIZE].transpose(0, 1).unsqueeze(0).contiguous()
    q_t = q[:, :, None, :]  # [B, Hq, 1, D]
    module = AttentionModule()
    scale = D ** -0.5
    o = torch.empty(1, 1, HQ, D, dtype=dtype)
    binding = hops.library().op("attn_decode")
    # cold: each call reads its own copy of the caches, 256 MiB of copies in all per side (the
    # L3 holds one 4096-token cache; a model's other layers evict it between steps)
    copies = max(1, -(-COLD_BYTES // (2 * k_cache.numel() * k_cache.element_size()))) if cold else 1
    hops_caches = Rotation([(k_cache, v_cache)] + [(k_cache.clone(), v_cache.clone()) for _ in range(copies - 1)])
    torch_caches = Rotation([(k_t, v_t)] + [(k_t.clone(), v_t.clone()) for _ in range(copies - 1)])

    def run_hops():
        k_pool, v_pool = hops_caches()
        return hops.ops.attn_decode(q, k_pool, v_pool, block_table, seq_lens, scale=scale)

    def run_torch():
        k_seq, v_seq = torch_caches()
        return sdpa_attention_forward(module, q_t, k_seq, v_seq, None, scaling=scale)[0]

    def kernel():
        k_pool, v_pool = hops_caches()
        binding(q=q[:, None], k_cache=k_pool, v_cache=v_pool, block_table=block_table, seq_lens=seq_lens, o=o,
                scale=scale)

    size = q.element_size()
    label = f"N=1 L=1 C={context} bs={BLOCK_SIZE} {'cold' if cold else 'warm'}"
    return cpu_bench.Case("attn_decode", "sdpa_attention_forward", label, dtype,
                          4 * D * HQ * context, size * (2 * context * HKV * D + 2 * HQ * D), run_hops, run_torch,
                          lambda a, b: cpu_bench.rel_err(a, b[:, 0]), kernel=kernel)


@torch.inference_mode()
def measure_copy(args) -> dict:
    """The copy ceiling: a 256 MiB copy_ (read + write counted), timed in blocks like the cases
    (a block while other processes were busy is run again), the best call. A single burst at
    the start (bench_cpu_vs_torch.measure_ceilings) read 8-12 GB/s here while a neighbour ran,
    23-24 GB/s on a quiet machine."""
    src = torch.randn(64 * 1024 * 1024)
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731
    benchlib.wait_for_quiet(args.noisy, patience=args.patience)
    first, _ = cpu_bench.timed(copy)
    sampler = cpu_bench.Sampler(copy, max(10, args.reps), first, args.block)
    redone = 0
    while not sampler.done():
        if not sampler.run_block(args.noisy, may_redo=redone < args.redo):
            redone += 1
            benchlib.wait_for_quiet(args.noisy, patience=args.patience)
    return {"copy_GBps": 2 * src.numel() * 4 / min(sampler.times) / 1e9, "copy_others": sampler.load_sum /
            max(sampler.load_wall, 1e-9), "copy_redone": redone}


def nominal_peaks() -> tuple[float, float, str]:
    """(AVX2 FMA peak, the CPU's widest FMA peak, how): cores x 2 FMA pipes x lanes x 2 x clock."""
    peak, how = cpu_bench.nominal_peak()
    lanes = 16 if "16 fp32 lanes" in how else 8 if "8 fp32 lanes" in how else 4
    avx2 = peak * 8 / lanes
    return avx2, peak, how


def report(cases, ceilings, avx2_peak, widest_peak, names):
    copy = ceilings["copy_GBps"]
    rows = ["| op | shape | dtype | hops ms (n) | hops on preallocated outputs ms | transformers SDPA ms (n) | "
            "**SDPA / hops** | hops GFLOP/s | **% of AVX2 peak** | hops GB/s | **% of copy** | max rel err "
            "| others' cores (redone) |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    verdicts = []
    for c in cases:
        r = c.result
        ratio = r["torch"] / r["hops"]
        gflops = c.flop / r["hops"] / 1e9
        gbps = c.bytes / r["hops"] / 1e9
        ok = r["error"] <= TOLERANCE[c.dtype]
        kernel = "-" if r["kernel"] is None else cpu_bench.fmt_ms(r["kernel"])
        prefill = c.op == "attn_prefill"
        rows.append(f"| {c.op} | {c.shape} | {names[c.dtype]} | {cpu_bench.fmt_ms(r['hops'])} ({r['hops_n']}) | "
                    f"{kernel} | {cpu_bench.fmt_ms(r['torch'])} ({r['torch_n']}) | **{ratio:.2f}x** | "
                    f"{gflops:.1f} | {'**' if prefill else ''}{100 * gflops / avx2_peak:.0f}%{'**' if prefill else ''} | "
                    f"{gbps:.2f} | {'' if prefill else '**'}{100 * gbps / copy:.0f}%{'' if prefill else '**'} | "
                    f"{r['error']:.1e}{'' if ok else ' **MISMATCH**'} | {r['others']:.2f} ({r['redone']}) |")
        if prefill:
            want_ratio, want_peak = PREFILL_TARGET
            share = gflops / avx2_peak
            verdicts.append(f"prefill {c.shape} {names[c.dtype]}: {ratio:.2f}x SDPA (target {want_ratio}x: "
                            f"{'met' if ratio >= want_ratio else 'missed'}), {100 * share:.0f}% of the AVX2 peak "
                            f"(target {100 * want_peak:.0f}%: {'met' if share >= want_peak else 'missed'}; "
                            f"{100 * gflops / widest_peak:.0f}% of the CPU's widest-vector peak)")
        else:
            want_ratio, want_copy = DECODE_TARGET
            share = gbps / copy
            verdicts.append(f"decode {c.shape} {names[c.dtype]}: {ratio:.2f}x SDPA (target {want_ratio}x: "
                            f"{'met' if ratio >= want_ratio else 'missed'}), {100 * share:.0f}% of the copy "
                            f"bandwidth (target {100 * want_copy:.0f}%: {'met' if share >= want_copy else 'missed'})")
    return "\n".join(rows), verdicts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096], help="prefill lengths T")
    parser.add_argument("--context", type=int, nargs="+", default=[4096], help="decode: cached tokens")
    parser.add_argument("--dtypes", nargs="+", choices=cpu_bench.DTYPES, default=["float32", "bfloat16"],
                        help="prefill dtypes")
    parser.add_argument("--decode-dtypes", nargs="+", choices=cpu_bench.DTYPES, default=["float32"])
    parser.add_argument("--ops", nargs="+", choices=["attn_prefill", "attn_decode"], help="only these ops")
    benchlib.add_timing_arguments(parser, budget=20.0)
    args = parser.parse_args()
    benchlib.quiet_transformers()

    started = time.perf_counter()
    machine = benchlib.machine_line()
    print(machine, file=sys.stderr)
    ceilings = measure_copy(args)
    avx2_peak, widest_peak, how = nominal_peaks()
    print(f"ceilings: {ceilings}; nominal fp32 peak: AVX2 {avx2_peak:.0f} GFLOP/s, widest {widest_peak:.0f} "
          f"GFLOP/s ({how})", file=sys.stderr)

    cases = []
    if not args.ops or "attn_prefill" in args.ops:
        cases += [prefill_case(t, cpu_bench.DTYPES[name]) for name in args.dtypes for t in args.tokens]
    if not args.ops or "attn_decode" in args.ops:
        cases += [decode_case(c, cpu_bench.DTYPES[name], cold) for name in args.decode_dtypes
                  for c in args.context for cold in (False, True)]
    gqa = use_gqa_in_sdpa(None, torch.empty(1, 1, 1, D), torch.empty(1, 1, 1, D))
    for case in cases:
        case_start = time.perf_counter()
        cpu_bench.measure(case, args)
        r = case.result
        print(f"{case.op:13s} {case.shape:26s} hops {cpu_bench.fmt_ms(r['hops']):>8s} ms ({r['hops_n']:3d})  "
              f"SDPA {cpu_bench.fmt_ms(r['torch']):>8s} ms ({r['torch_n']})  {r['torch'] / r['hops']:6.2f}x  "
              f"err {r['error']:.1e}  others {r['others']:.2f} redone {r['redone']}  "
              f"[{time.perf_counter() - case_start:.0f} s]", file=sys.stderr)
    load_end = "load average %.2f %.2f %.2f at the end" % os.getloadavg()
    names = {dtype: name for name, dtype in cpu_bench.DTYPES.items()}
    table, verdicts = report(cases, ceilings, avx2_peak, widest_peak, names)
    method = benchlib.timing_note(args, "the output", TOLERANCE)
    text = (f"## Attention on the CPU (issue 14)\n\n"
            f"Command: `.venv/bin/python {' '.join(sys.argv)}` ({time.perf_counter() - started:.0f} s)  \n"
            f"{machine}; {load_end}  \nhops: {hops.info().path}, {cpu_bench.git_state()}  \n"
            f"Layout: Hq = {HQ}, Hkv = {HKV}, D = {D}. Peer: transformers' `sdpa_attention_forward` with "
            f"attention_mask None, as the model calls it ({'torch SDPA with enable_gqa' if gqa else 'repeat_kv'} "
            f"for this layout); its q, k, v [B, H, T, D] contiguous, hops' [B, T, H, D] and a paged cache of "
            f"{BLOCK_SIZE}-row blocks scattered over a pool twice the sequence's size. Decode warm: the "
            f"same cache every call; cold: each call (both sides) takes the next of {COLD_BYTES >> 20} MiB of "
            f"copies.  \n"
            f"Floors measured or computed in this run: copy {ceilings['copy_GBps']:.1f} GB/s (256 MiB copy_, read + "
            f"write, the best of calls timed like the cases; others' cores {ceilings['copy_others']:.2f}, "
            f"{ceilings['copy_redone']} blocks redone); "
            f"nominal fp32 peak {avx2_peak:.0f} GFLOP/s with AVX2 FMA as issue 14 counts it "
            f"({widest_peak:.0f} GFLOP/s with this CPU's widest vectors: {how}). Prefill FLOP = 4 D Hq "
            f"(query-key pairs inside the causal mask); decode bytes = the sequence's K and V rows read once "
            f"(plus q and o).  \n{method}\n\n{table}\n\n"
            + "".join(f"- {line}\n" for line in verdicts))
    print(text)
    if args.write:
        benchlib.write(args.write, "bench_attn_cpu", text)


if __name__ == "__main__":
    main()
