"""Attention on the lent GPU (issue 14): hops' CUDA kernels against torch SDPA's
cuDNN and flash backends in the same run, causal GQA, D=256, Hq=16, Hkv=2, bf16.

- prefill forward and forward+backward at B=1 T=4096/8192/32768 and varlen 8
  sequences summing to 32768 (SDPA: one call per sequence, in one timed
  region). FLOPs: 4 D Hq (query-key pairs inside the causal mask) forward,
  2.5x that backward (issue 14's count). SDPA gets [B,H,T,D] views of the
  same [B,T,H,D] tensors and enable_gqa=True; where a backend refuses GQA, k/v
  are repeated per query head beforehand (outside the timed region).
- decode N=1/64/256 x 8192 cached tokens (paged bf16 cache, blocks of 16 in a
  random order, one new token): bytes = the cache read once, against a 1 GiB
  device copy (read + write) measured in the same run; hops calls replayed
  from a CUDA graph.
Medians of CUDA-event timings. Prints a table last; --write puts it into
docs/PERFORMANCE.md (section "Attention on Hopper (issue 14)"). hops' backward
is also timed alone (2.5x the forward's FLOPs). --compare also times hops'
forward on the mma.sync kernel (HOPS_CUDA_ATTN_FWD=mma) beside the default
choice (the sm_90a wgmma kernel where it applies), fwd and fwd+bwd, and the
backward on its mma.sync dQ and dK/dV kernels (HOPS_CUDA_ATTN_BWD=mma), bwd
and fwd+bwd with the default forward, in the same run, with the outputs'
differences. The backward's default is still mma.sync (the sm_90a kernels
have not run on a GPU yet): HOPS_CUDA_ATTN_BWD=auto in the environment times
them as "hops" (the --compare runs set =mma themselves and restore it).

Usage: HOPS_LIBRARY=build/plugin/libhops.so PYTHONPATH=shims/python \
       python3 tests/bench/cuda_attn_bench.py [--write] [--quick] [--compare]"""

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from prepared_call import Prepared  # noqa: E402

dev = torch.device("cuda")
bf = torch.bfloat16
Hq, Hkv, D = 16, 2, 256
PERFORMANCE_MD = Path(__file__).resolve().parents[2] / "docs" / "PERFORMANCE.md"
COMMAND = "HOPS_LIBRARY=build-dev/plugin/libhops.so PYTHONPATH=shims/python python3 tests/bench/cuda_attn_bench.py --write"


def median_ms(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def graph_us(fn, calls=20, replays=10):
    """Median microseconds per call from CUDA-graph replays of `calls` calls."""
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s):
        g.capture_begin()
        for _ in range(calls):
            fn(s)
        g.capture_end()
    return median_ms(g.replay, replays) * 1e3 / calls


# ---- prefill ---------------------------------------------------------------------------

class Sdpa:
    """torch SDPA with one backend on [B,T,H,D] tensors (views as [B,H,T,D])."""

    def __init__(self, backend, q, k, v, lengths):
        self.backend, self.lengths = backend, lengths
        self.q, self.k, self.v = q, k, v
        self.gqa = True
        try:
            self.forward()
        except RuntimeError:
            self.gqa = False  # repeat k/v per query head, outside the timed region
            self.k = k.repeat_interleave(Hq // Hkv, 2).detach().requires_grad_(k.requires_grad)
            self.v = v.repeat_interleave(Hq // Hkv, 2).detach().requires_grad_(v.requires_grad)
            self.forward()

    def pieces(self):
        if self.lengths is None:
            return [(slice(None),)]
        bounds = [0]
        for n in self.lengths:
            bounds.append(bounds[-1] + n)
        return [(slice(None), slice(a, b)) for a, b in zip(bounds, bounds[1:])]

    def forward(self):
        outs = []
        with sdpa_kernel(self.backend):
            for idx in self.pieces():
                q, k, v = (x[idx].transpose(1, 2) for x in (self.q, self.k, self.v))
                outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.gqa))
        return outs

    def train(self, grads):
        outs = self.forward()
        torch.autograd.backward(outs, grads)


def causal_pairs(lengths):
    return sum(n * (n + 1) // 2 for n in lengths)


ROWS = []


def with_path(var, path, fn):
    """fn() with var (HOPS_CUDA_ATTN_FWD or _BWD) = path (the host reads it per call)."""
    before = os.environ.get(var)
    os.environ[var] = path
    try:
        return fn()
    finally:
        if before is None:
            os.environ.pop(var)
        else:
            os.environ[var] = before


def with_forward(path, fn):
    return with_path("HOPS_CUDA_ATTN_FWD", path, fn)


def with_backward(path, fn):
    return with_path("HOPS_CUDA_ATTN_BWD", path, fn)


def rel_diff(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def prefill_case(label, T, lengths=None, compare=False):
    seqs = lengths or [T]
    q = torch.randn(1, T, Hq, D, device=dev, dtype=bf)
    k = torch.randn(1, T, Hkv, D, device=dev, dtype=bf)
    v = torch.randn(1, T, Hkv, D, device=dev, dtype=bf)
    d_o = torch.randn_like(q)
    cu = None
    if lengths:
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=dev)
    o, lse = torch.empty_like(q), torch.empty(1, Hq, T, device=dev, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    fwd = Prepared("attn_prefill", q=q, k=k, v=v, cu_seqlens_q=cu, cu_seqlens_k=cu, o=o, lse=lse, causal=True)
    bwd = Prepared("attn_prefill_bwd", q=q, k=k, v=v, o=o, lse=lse, cu_seqlens_q=cu, cu_seqlens_k=cu,
                   dq=dq, dk=dk, dv=dv, causal=True, **{"do": d_o})

    def train(stream=None):
        fwd(stream)
        bwd(stream)

    reps = 3 if T >= 32768 else 5
    flops = 4 * D * Hq * causal_pairs(seqs)
    res = {"label": label, "fwd": {}, "train": {}, "bwd": {}}
    res["fwd"]["hops"] = flops / (median_ms(fwd, reps) * 1e-3) / 1e12
    res["train"]["hops"] = 3.5 * flops / (median_ms(train, reps) * 1e-3) / 1e12
    res["bwd"]["hops"] = 2.5 * flops / (median_ms(bwd, reps) * 1e-3) / 1e12
    diffs = []
    if compare:  # the mma.sync backward in the same run, and how far its gradients are from the default's
        grads_default = [x.clone() for x in (dq, dk, dv)]
        res["bwd"]["hops mma"] = with_backward("mma", lambda: 2.5 * flops / (median_ms(bwd, reps) * 1e-3) / 1e12)
        res["train"]["hops bwd mma"] = with_backward(
            "mma", lambda: 3.5 * flops / (median_ms(train, reps) * 1e-3) / 1e12)
        diffs.append("bwd mma.sync " + " ".join(f"{n} {rel_diff(x, y):.1e}" for n, x, y in
                                                zip(("dq", "dk", "dv"), (dq, dk, dv), grads_default)))
        del grads_default
    if compare:  # the mma.sync forward in the same run, and how far its o is from the default's
        o_default = o.clone()
        res["fwd"]["hops mma"] = with_forward("mma", lambda: flops / (median_ms(fwd, reps) * 1e-3) / 1e12)
        res["train"]["hops mma"] = with_forward("mma", lambda: 3.5 * flops / (median_ms(train, reps) * 1e-3) / 1e12)
        diffs.append(f"mma.sync {rel_diff(o, o_default):.1e}")
        with_forward("wgmma", fwd)  # restore o of the default path for the SDPA comparison (forced: fails if not taken)
        del o_default
    for name, backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
            sd = Sdpa(backend, qg, kg, vg, lengths)
            with torch.no_grad():
                ref = torch.cat([x.transpose(1, 2) for x in sd.forward()], 1)
                diffs.append(f"{name} {((o.float() - ref.float()).norm() / ref.float().norm()).item():.1e}")
                res["fwd"][name] = flops / (median_ms(sd.forward, reps) * 1e-3) / 1e12
            grads = [d_o[idx].transpose(1, 2) for idx in sd.pieces()]
            res["train"][name] = 3.5 * flops / (median_ms(lambda: sd.train(grads), reps) * 1e-3) / 1e12
            if not sd.gqa:
                res.setdefault("notes", []).append(f"{name}: k/v repeated (no enable_gqa)")
            del sd, qg, kg, vg
        except Exception as e:  # noqa: BLE001
            print(f"  {label}: SDPA {name} failed: {str(e)[:200]}", flush=True)
    res["diff"] = ", ".join(diffs)
    ROWS.append(res)
    f, t, b = res["fwd"], res["train"], res["bwd"]
    old = ((f" (mma.sync {f['hops mma']:6.1f})", f" (mma.sync fwd {t['hops mma']:6.1f}, bwd {t['hops bwd mma']:6.1f})",
            f" (mma.sync {b['hops mma']:6.1f})") if compare else ("", "", ""))
    print(f"{label:<28} fwd hops {f['hops']:6.1f}{old[0]} cuDNN {f.get('cuDNN', 0):6.1f} flash {f.get('flash', 0):6.1f} | "
          f"fwd+bwd hops {t['hops']:6.1f}{old[1]} cuDNN {t.get('cuDNN', 0):6.1f} flash {t.get('flash', 0):6.1f} | "
          f"bwd hops {b['hops']:6.1f}{old[2]} TFLOP/s | vs {res['diff']}", flush=True)
    del q, k, v, d_o, o, lse, dq, dk, dv, fwd, bwd
    torch.cuda.empty_cache()


# ---- decode ----------------------------------------------------------------------------

DECODE = []


def decode_case(N, cached, copy_gbs, block_size=16):
    blocks_per = cached // block_size
    num_blocks = N * blocks_per
    k_cache = torch.randn(num_blocks, block_size, Hkv, D, device=dev, dtype=bf)
    v_cache = torch.randn(num_blocks, block_size, Hkv, D, device=dev, dtype=bf)
    table = torch.randperm(num_blocks, device=dev).view(N, blocks_per).to(torch.int32)
    seq_lens = torch.full((N,), cached, dtype=torch.int32, device=dev)
    q = torch.randn(N, 1, Hq, D, device=dev, dtype=bf)
    o = torch.empty_like(q)
    call = Prepared("attn_decode", q=q, k_cache=k_cache, v_cache=v_cache, block_table=table, seq_lens=seq_lens, o=o)
    us = graph_us(call, calls=10 if N > 1 else 50)
    nbytes = 2 * N * cached * Hkv * D * 2
    gbs = nbytes / (us * 1e-6) / 1e9
    # sanity against a dense float computation of the first sequence
    ks = k_cache[table[0].long()].flatten(0, 1).float().repeat_interleave(Hq // Hkv, 1)  # [cached, Hq, D]
    vs = v_cache[table[0].long()].flatten(0, 1).float().repeat_interleave(Hq // Hkv, 1)
    pr = torch.softmax(torch.einsum("hd,phd->hp", q[0, 0].float(), ks) * D ** -0.5, -1)
    want = torch.einsum("hp,phd->hd", pr, vs)
    err = ((o[0, 0].float() - want).norm() / want.norm()).item()
    DECODE.append((N, cached, us, gbs, 100 * gbs / copy_gbs, err))
    print(f"decode N={N:<4} x {cached} cached  {us:9.1f} us  {gbs:7.0f} GB/s  {100 * gbs / copy_gbs:5.1f}% of copy "
          f"(rel err seq 0 {err:.1e})", flush=True)
    del k_cache, v_cache, table, q, o, call
    torch.cuda.empty_cache()


def table_text(device, copy_gbs):
    compare = any("hops mma" in r["fwd"] for r in ROWS)
    lines = [f"Device: {device}; torch {torch.__version__}; "
             f"{datetime.date.today().isoformat()}; copy {copy_gbs:.0f} GB/s (1 GiB, read + write).", "",
             "Prefill, causal, Hq=16 Hkv=2 D=256 bf16, TFLOP/s (fwd: 4 D Hq pairs; bwd: 2.5x that; fwd+bwd: "
             "3.5x)" + ("; hops mma.sync: the forward forced onto the mma.sync kernel (HOPS_CUDA_ATTN_FWD=mma), "
                        "mma.sync bwd: the backward forced onto its mma.sync kernels (HOPS_CUDA_ATTN_BWD=mma):" if compare
                        else ":"), "",
             "| case | hops fwd | " + ("hops mma.sync fwd | " if compare else "") + "cuDNN fwd | flash fwd | "
             "hops/cuDNN | hops/flash | hops bwd | " + ("hops mma.sync bwd | " if compare else "")
             + "hops fwd+bwd | " + ("hops mma.sync fwd+bwd | hops fwd+bwd, mma.sync bwd | " if compare else "")
             + "cuDNN fwd+bwd | flash fwd+bwd | hops/cuDNN | hops/flash |",
             "|---|--:|" + ("--:|" if compare else "") + "--:|--:|--:|--:|--:|" + ("--:|" if compare else "")
             + "--:|" + ("--:|--:|" if compare else "") + "--:|--:|--:|--:|"]

    def ratio(a, b):
        return f"{a / b:.2f}" if b else "n/a"

    for r in ROWS:
        f, t, b = r["fwd"], r["train"], r["bwd"]
        old_f = f"{f['hops mma']:.0f} | " if compare else ""
        old_b = f"{b['hops mma']:.0f} | " if compare else ""
        old_t = f"{t['hops mma']:.0f} | {t['hops bwd mma']:.0f} | " if compare else ""
        lines.append(f"| {r['label']} | {f['hops']:.0f} | {old_f}{f.get('cuDNN', 0):.0f} | {f.get('flash', 0):.0f} | "
                     f"{ratio(f['hops'], f.get('cuDNN'))} | {ratio(f['hops'], f.get('flash'))} | "
                     f"{b['hops']:.0f} | {old_b}"
                     f"{t['hops']:.0f} | {old_t}{t.get('cuDNN', 0):.0f} | {t.get('flash', 0):.0f} | "
                     f"{ratio(t['hops'], t.get('cuDNN'))} | {ratio(t['hops'], t.get('flash'))} |")
    notes = sorted({n for r in ROWS for n in r.get("notes", [])})
    lines += ["", "hops o vs SDPA o" + (" and vs the mma.sync kernels' o and gradients" if compare else "")
              + " (relative L2): " + "; ".join(f"{r['label']}: {r['diff']}" for r in ROWS)]
    if notes:
        lines.append("Notes: " + "; ".join(notes))
    lines += ["", "Decode, one new token, Hq=16 Hkv=2 D=256 bf16, paged cache (blocks of 16, random order):", "",
              "| N x cached | us | GB/s (cache read once) | % of copy |", "|---|--:|--:|--:|"]
    for (N, cached, us, gbs, pct, _) in DECODE:
        lines.append(f"| {N} x {cached} | {us:.1f} | {gbs:.0f} | {pct:.1f}% |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--quick", action="store_true", help="T=4096 and decode N=64 only")
    parser.add_argument("--compare", action="store_true",
                        help="also time the forward and the backward on the mma.sync kernels "
                             "(HOPS_CUDA_ATTN_FWD=mma, HOPS_CUDA_ATTN_BWD=mma)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.cuda.get_device_name()
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() / (median_ms(lambda: dst.copy_(src), 20) * 1e-3) / 1e9
    del src, dst
    print(f"{device}: copy {copy_gbs:.0f} GB/s", flush=True)
    for N in ((64,) if args.quick else (1, 64, 256)):
        decode_case(N, 8192, copy_gbs)
    prefill_case("B=1 T=4096", 4096, compare=args.compare)
    if not args.quick:
        prefill_case("B=1 T=8192", 8192, compare=args.compare)
        prefill_case("B=1 T=32768", 32768, compare=args.compare)
        prefill_case("varlen 8 seqs, 32768", 32768, [1024, 7168, 3072, 5120, 2048, 6144, 4096, 4096],
                     compare=args.compare)
    text = table_text(device, copy_gbs)
    print(text)
    if args.write:
        heading = f"## Attention on Hopper (issue 14)\n\nCommand (on the lent GPU, built with HOPS_WITH_CUDA=ON):\n`{COMMAND}`"
        benchlib.write(PERFORMANCE_MD, "cuda_attn_bench", f"{heading}\n\n{text}")


if __name__ == "__main__":
    main()
