"""The CUDA backend's attention kernels against float64 torch on the GPU:
attn_prefill, attn_prefill_bwd, attn_decode and kv_cache_write, through the
generic C-ABI binding (hops.ops.library().op). Every kernel path is covered:
tensor cores (f16/bf16, D in {64, 128, 256}, unit-stride aligned head rows) and
the general f32 kernels (f32 storage, other D, strided head dims); on the GPU
each tensor-core case runs twice, forward and backward on the sm_90a wgmma
kernels (HOPS_CUDA_ATTN_FWD=wgmma and HOPS_CUDA_ATTN_BWD=wgmma: a call they do
not take fails) and on the mma.sync kernels (=mma). Cases: dense
and varlen with empty and length-1 sequences, GQA 16/2 and 3/1, causal with
Lk > Lq and Lk < Lq (bottom-right), non-causal, the output gate, lse absent,
packed (strided) q/k/v views, device- and host-resident index tensors, a
block id outside the cache in a device-resident table (skipped), slots -1;
for the wgmma kernel also lengths off its tiles (128 queries, 80 or 128 keys),
T = 1, GQA 24/4, causal offsets at its mask boundaries, and NaN keys and values
(and, in the backward, queries and output gradients) in a later sequence (the
earlier sequences' outputs and gradients must stay finite); for the wgmma
backward lengths off its kernels' tiles (dK/dV: 64 queries a step, 64 keys a
CTA at D=256, 128 below; dQ: 128 queries a CTA, 64 keys a step) and the
key-block / query-block offset where the dK/dV mask shortcut turns off.
Fresh random inputs per case; outputs are poisoned with NaN first, so an
unwritten element fails. Tolerances (relative L2 against float64 of the same
rounded inputs): 1e-5 for f32, 1e-2 for f16/bf16. The backward also runs twice
and must agree bitwise (deterministic).

Usage: HOPS_LIBRARY=build/plugin/libhops.so PYTHONPATH=shims/python \
       python3 tests/bench/cuda_attn_check.py [--quick] [--device cpu]
Prints PASS/FAIL per case and exits 1 on any failure. --device cpu runs the
same cases on the CPU backend (a check of this script off the GPU; the cases
that need device-resident tables are left out there: on the host the op's
check rejects a bad block or slot)."""

import argparse
import math
import os
import sys

import torch

import hops.ops as hops_ops

dev = torch.device("cuda")
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
RESULTS = []


def op(name):
    return hops_ops.library().op(name)


def rel(got, want):
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return math.inf
    den = want.norm().item()
    num = (got - want).norm().item()
    return num / den if den > 0 else num


def report(name, errs, tol, extra=""):
    ok = all(e <= tol for e in errs.values())
    RESULTS.append(ok)
    parts = "  ".join(f"{k} {v:.1e}" for k, v in errs.items())
    print(f"{'PASS' if ok else 'FAIL'} {name:<78} {parts} {extra}", flush=True)


def poison(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=dev)


# ---- prefill: reference ------------------------------------------------------------------

def spans(B, Tq, Tk, cu_q, cu_k):
    if cu_q is None:
        return [(b, 0, Tq, 0, Tk) for b in range(B)]
    a, c = cu_q.tolist(), cu_k.tolist()
    return [(0, a[n], a[n + 1], c[n], c[n + 1]) for n in range(len(a) - 1)]


def ref_forward(q, k, v, gate, cu_q, cu_k, scale, causal):
    """float64 o (gated) and lse, differentiable in q, k, v, gate."""
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    G = Hq // Hkv
    lse = torch.full((B, Hq, Tq), -math.inf, dtype=torch.float64, device=dev)
    outs, lses = [], []
    for (b, q0, q1, k0, k1) in spans(B, Tq, Tk, cu_q, cu_k):
        Lq, Lk = q1 - q0, k1 - k0
        if Lq == 0:
            continue
        qs = q[b, q0:q1].transpose(0, 1)  # [Hq, Lq, D]
        ks = k[b, k0:k1].transpose(0, 1).repeat_interleave(G, 0)
        vs = v[b, k0:k1].transpose(0, 1).repeat_interleave(G, 0)
        s = scale * qs @ ks.transpose(1, 2)  # [Hq, Lq, Lk]
        i = torch.arange(Lq, device=dev)[:, None]
        j = torch.arange(Lk, device=dev)[None, :]
        mask = (j <= i + Lk - Lq) if causal else torch.ones(Lq, Lk, dtype=torch.bool, device=dev)
        mask = mask.expand(Hq, Lq, Lk)
        any_key = mask.any(-1)  # [Hq, Lq]
        s_m = s.masked_fill(~mask, -math.inf)
        safe = torch.where(any_key[..., None], s_m, torch.zeros_like(s_m))
        l_safe = torch.logsumexp(safe, -1)
        pr = torch.exp(s_m - l_safe[..., None])
        os_ = (pr @ vs).transpose(0, 1)  # [Lq, Hq, D]
        if gate is not None:
            os_ = os_ * torch.sigmoid(gate[b, q0:q1])
        outs.append((b, q0, q1, os_))
        lses.append((b, q0, q1, torch.where(any_key, l_safe, torch.full_like(l_safe, -math.inf))))
    rows = []  # o assembled by concatenation (no in-place writes into the autograd graph)
    for b in range(B):
        pieces = [x for (bb, q0, q1, x) in sorted(outs, key=lambda t: t[1]) if bb == b]
        covered = sum(x.shape[0] for x in pieces)
        pieces.append(torch.zeros(Tq - covered, Hq, D, dtype=torch.float64, device=dev))
        rows.append(torch.cat(pieces, 0))
    o = torch.stack(rows, 0)
    for (b, q0, q1, x) in lses:
        lse[b, :, q0:q1] = x.detach()
    return o, lse


def make_qkv(dtype, B, Tq, Tk, Hq, Hkv, D, packed=False, strided_d=False):
    if packed:  # one projection [B, T, (Hq + 2 Hkv) D] sliced (Tq == Tk)
        x = torch.randn(B, Tq, (Hq + 2 * Hkv) * D, device=dev).to(dtype)
        q = x[..., :Hq * D].unflatten(-1, (Hq, D))
        k = x[..., Hq * D:(Hq + Hkv) * D].unflatten(-1, (Hkv, D))
        v = x[..., (Hq + Hkv) * D:].unflatten(-1, (Hkv, D))
        return q, k, v
    if strided_d:  # every other element of the head dim: the general kernels
        q = torch.randn(B, Tq, Hq, 2 * D, device=dev).to(dtype)[..., ::2]
        k = torch.randn(B, Tk, Hkv, 2 * D, device=dev).to(dtype)[..., ::2]
        v = torch.randn(B, Tk, Hkv, 2 * D, device=dev).to(dtype)[..., ::2]
        return q, k, v
    q = torch.randn(B, Tq, Hq, D, device=dev).to(dtype)
    k = torch.randn(B, Tk, Hkv, D, device=dev).to(dtype)
    v = torch.randn(B, Tk, Hkv, D, device=dev).to(dtype)
    return q, k, v


def kernel_path(var, path):
    """Sets `var` (HOPS_CUDA_ATTN_FWD or _BWD) for the calls made until the returned undo runs."""
    before = os.environ.get(var)
    if path:
        os.environ[var] = path

    def undo():
        if before is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = before
    return undo


def prefill_case(dtype, label, B=1, Tq=100, Tk=None, Hq=16, Hkv=2, D=256, lens_q=None, lens_k=None,
                 causal=True, gate=False, lse=True, packed=False, strided_d=False, scale=None, bwd=True,
                 host_cu=False, head_major=False, nan_last=False, path=None):
    Tk = Tq if Tk is None else Tk
    cu_q = cu_k = None
    if lens_q is not None:
        cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0).tolist()), dtype=torch.int32)
        cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0).tolist()), dtype=torch.int32)
        Tq, Tk = int(cu_q[-1]), int(cu_k[-1])
        if not host_cu:
            cu_q, cu_k = cu_q.to(dev), cu_k.to(dev)
    if head_major:  # [B,H,T,D] memory viewed as [B,T,H,D] (SDPA's layout)
        q, k, v = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in make_qkv(dtype, B, Tq, Tk, Hq, Hkv, D))
    else:
        q, k, v = make_qkv(dtype, B, Tq, Tk, Hq, Hkv, D, packed, strided_d)
    kept = Tq  # query rows compared
    if nan_last:  # the last sequence's keys and values are NaN; only the earlier sequences are compared
        kept, k0 = int(cu_q[-2]), int(cu_k[-2])
        k[:, k0:] = float("nan")
        v[:, k0:] = float("nan")
    g = torch.randn(B, Tq, Hq, D, device=dev).to(dtype) if gate else None
    sc = scale if scale else D ** -0.5
    o = poison((B, Tq, Hq, D), dtype)
    l_out = poison((B, Hq, Tq), torch.float32) if lse else None
    undo = kernel_path("HOPS_CUDA_ATTN_FWD", path)
    try:
        op("attn_prefill")(q=q, k=k, v=v, gate=g, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, o=o, lse=l_out,
                           scale=scale or 0.0, causal=causal)
    finally:
        undo()
    q64, k64, v64 = (x.double().requires_grad_(True) for x in (q, k, v))
    g64 = g.double().requires_grad_(True) if gate else None
    want_o, want_lse = ref_forward(q64, k64, v64, g64, cu_q, cu_k, sc, causal)
    name = f"prefill {str(dtype)[6:]:<8} {'[' + path + '] ' if path else ''}{label}"
    errs = {"o": rel(o[:, :kept], want_o.detach()[:, :kept])}
    if lse:
        want_l, got_l = want_lse[..., :kept], l_out[..., :kept]
        fin = torch.isfinite(want_l)
        same_inf = bool((torch.isinf(got_l) == ~fin).all()) and bool((got_l[~fin] < 0).all())
        errs["lse"] = rel(got_l[fin], want_l[fin]) if same_inf else math.inf
    report(name, errs, TOL[dtype])
    if not bwd:
        return
    # backward from the reference's rounded o and f32 lse
    d_o = torch.randn(B, Tq, Hq, D, device=dev).to(dtype)
    o_in = want_o.detach().to(dtype)
    lse_in = want_lse.float()
    grads = torch.autograd.grad(want_o, [x for x in (q64, k64, v64, g64) if x is not None], d_o.double())
    q_in, k_kept = q, Tk
    if nan_last:  # the last sequence's queries and output gradients NaN too; earlier gradients compared
        k_kept = int(cu_k[-2])
        q_in = q.clone()
        q_in[:, kept:] = float("nan")
        d_o[:, kept:] = float("nan")
    outs = []
    undo = kernel_path("HOPS_CUDA_ATTN_BWD", path)
    try:
        for _ in range(2):
            dq, dk, dv = poison(q.shape, dtype), poison(k.shape, dtype), poison(v.shape, dtype)
            dg = poison(q.shape, dtype) if gate else None
            op("attn_prefill_bwd")(q=q_in, k=k, v=v, gate=g, o=o_in, lse=lse_in, cu_seqlens_q=cu_q,
                                   cu_seqlens_k=cu_k, dq=dq, dk=dk, dv=dv, dgate=dg, scale=scale or 0.0,
                                   causal=causal, **{"do": d_o})
            outs.append([x for x in (dq, dk, dv, dg) if x is not None])
    finally:
        undo()
    rows = {"dq": kept, "dk": k_kept, "dv": k_kept, "dgate": kept}
    errs = {n: rel(got[:, :rows[n]], want[:, :rows[n]])
            for n, got, want in zip(("dq", "dk", "dv", "dgate"), outs[0], grads)}
    same = all(torch.equal(a.view(torch.int16 if a.element_size() == 2 else torch.int32),
                           b.view(torch.int16 if b.element_size() == 2 else torch.int32))
               for a, b in zip(outs[0], outs[1]))
    report(f"bwd     {str(dtype)[6:]:<8} {'[' + path + '] ' if path else ''}{label}",
           errs if same else {**errs, "repeat": math.inf}, TOL[dtype],
           "" if same else "(two runs differ)")


# ---- decode ------------------------------------------------------------------------------

def decode_case(dtype, label, N=3, L=1, Hq=16, Hkv=2, D=256, lens=(0, 37, 1000), block_size=16,
                host_tables=False, bad_block=False, idx_dtype=torch.int32, scale=None):
    max_blocks = max((max(lens) + block_size - 1) // block_size, 1) + 1
    num_blocks = N * max_blocks + 5
    k_cache = torch.randn(num_blocks, block_size, Hkv, D, device=dev).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, Hkv, D, device=dev).to(dtype)
    table = torch.randperm(num_blocks, device=dev)[:N * max_blocks].view(N, max_blocks).to(idx_dtype)
    if bad_block:  # a block id outside the cache: its tokens contribute nothing
        table[N - 1, 1] = -7
        table[N - 1, 2] = num_blocks + 3
    seq_lens = torch.tensor(lens, dtype=idx_dtype, device=dev)
    q = torch.randn(N, L, Hq, D, device=dev).to(dtype)
    o = poison((N, L, Hq, D), dtype)
    sc = scale if scale else D ** -0.5
    t_arg, s_arg = (table.cpu().to(torch.int64), seq_lens.cpu().to(torch.int64)) if host_tables else (table, seq_lens)
    op("attn_decode")(q=q, k_cache=k_cache, v_cache=v_cache, block_table=t_arg, seq_lens=s_arg, o=o,
                      scale=scale or 0.0)
    G = Hq // Hkv
    want = torch.zeros(N, L, Hq, D, dtype=torch.float64, device=dev)
    tab = table.cpu().tolist()
    for n in range(N):
        length = lens[n]
        pos = torch.arange(length)
        blocks = torch.tensor([tab[n][p // block_size] for p in range(length)], dtype=torch.int64)
        ok = (blocks >= 0) & (blocks < num_blocks)
        pos, blocks = pos[ok], blocks[ok]
        if len(pos) == 0:
            continue
        rows = (pos % block_size).to(dev)
        ks = k_cache[blocks.to(dev), rows].double()  # [P, Hkv, D]
        vs = v_cache[blocks.to(dev), rows].double()
        for l in range(L):
            vis = pos <= length - L + l
            if not vis.any():
                continue
            kk = ks[vis.to(dev)].repeat_interleave(G, 1)  # [P, Hq, D]
            vv = vs[vis.to(dev)].repeat_interleave(G, 1)
            s = sc * torch.einsum("hd,phd->hp", q[n, l].double(), kk)
            pr = torch.softmax(s, -1)
            want[n, l] = torch.einsum("hp,phd->hd", pr, vv)
    report(f"decode  {str(dtype)[6:]:<8} {label}", {"o": rel(o, want)}, TOL[dtype])


def kv_write_case(dtype, label="", T=50, Hkv=2, D=256, num_blocks=9, block_size=16, host=False, bad_slot=False):
    k = torch.randn(T, Hkv, D, device=dev).to(dtype)
    v = torch.randn(T, Hkv, D, device=dev).to(dtype)
    k_cache = torch.randn(num_blocks, block_size, Hkv, D, device=dev).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, Hkv, D, device=dev).to(dtype)
    slots = torch.randperm(num_blocks * block_size)[:T]
    slots[::7] = -1
    if bad_slot:  # device-resident: out of range is skipped
        slots[3] = num_blocks * block_size + 5
    want_k, want_v = k_cache.clone(), v_cache.clone()
    for t, s in enumerate(slots.tolist()):
        if 0 <= s < num_blocks * block_size:
            want_k[s // block_size, s % block_size] = k[t]
            want_v[s // block_size, s % block_size] = v[t]
    slot_arg = slots.to(torch.int64) if host else slots.to(torch.int32).to(dev)
    op("kv_cache_write")(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_arg)
    exact = torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    report(f"kvwrite {str(dtype)[6:]:<8} {label}", {"mismatch": 0.0 if exact else math.inf}, 0.0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small cases only (for the sanitizers)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    global dev
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    torch.manual_seed(0)
    varlen = dict(lens_q=[0, 1, 130, 77, 0, 200], lens_k=[5, 1, 130, 300, 4, 200])
    prefill = [
        dict(label="dense B=2 T=150 16/2 D=256 causal gate", B=2, Tq=150, gate=True),
        dict(label="varlen (0,1,130,77,0,200) Lk>=Lq 16/2 D=256 causal gate", gate=True, **varlen),
        dict(label="varlen host cu 3/1 D=128 non-causal", Hq=3, Hkv=1, D=128, causal=False, host_cu=True, **varlen),
        dict(label="dense Tq=90 Tk=40 (Lk<Lq) 3/1 D=64 causal, no lse", Tq=90, Tk=40, Hq=3, Hkv=1, D=64, lse=False),
        dict(label="dense Tq=70 Tk=333 4/4 D=128 causal scale=0.3", Tq=70, Tk=333, Hq=4, Hkv=4, D=128, scale=0.3),
        dict(label="packed qkv B=2 T=129 8/2 D=128 causal", B=2, Tq=129, Hq=8, Hkv=2, D=128, packed=True),
        dict(label="strided D (general) T=65 6/3 D=64 causal gate", Tq=65, Hq=6, Hkv=3, D=64, strided_d=True, gate=True),
        dict(label="D=96 (general) T=50 2/1 non-causal", Tq=50, Hq=2, Hkv=1, D=96, causal=False),
        dict(label="dense Tk=0 2/1 D=64", Tq=9, Tk=0, Hq=2, Hkv=1, D=64),
    ]
    # Shapes aimed at the sm_90a kernel's tiles (128 query rows; 80 keys at D=256, 128 below).
    sm90 = [
        dict(label="dense B=1 T=1000 16/2 D=256 causal gate", Tq=1000, gate=True),
        dict(label="varlen (0,1,130,77,0,200,129,81) Lk>=Lq 16/2 D=256 causal gate", gate=True,
             lens_q=[0, 1, 130, 77, 0, 200, 129, 81], lens_k=[5, 1, 130, 300, 4, 200, 129, 400]),
        dict(label="varlen NaN k/v in the last sequence (100,50) 4/2 D=256 causal", Hq=4,
             lens_q=[100, 50], lens_k=[100, 50], nan_last=True),
    ]
    if not args.quick:
        prefill += [
            dict(label="dense B=1 T=600 16/2 D=256 causal gate", Tq=600, gate=True),
            dict(label="dense B=1 T=333 16/2 D=64 causal", Tq=333, D=64),
        ]
        sm90 += [
            dict(label="dense B=2 Tq=300 Tk=700 24/4 D=128 causal gate", B=2, Tq=300, Tk=700, Hq=24, Hkv=4,
                 D=128, gate=True),
            dict(label="dense B=1 T=333 24/4 D=64 causal, no lse", Tq=333, Hq=24, Hkv=4, D=64, lse=False),
            dict(label="varlen Lk<Lq (90,7,300)/(40,0,310) 16/2 D=256 causal", lens_q=[90, 7, 300],
                 lens_k=[40, 0, 310]),
            dict(label="varlen NaN k/v in the last sequence (129,200,60) 4/1 D=128 non-causal", Hq=4, Hkv=1,
                 D=128, causal=False, lens_q=[129, 200, 60], lens_k=[129, 201, 60], nan_last=True),
            dict(label="dense B=1 Tq=300 Tk=500 16/2 D=256 non-causal", Tq=300, Tk=500, causal=False),
            dict(label="dense Tq=150 Tk=164 (offset 14: mask boundary) 4/1 D=256", Tq=150, Tk=164, Hq=4, Hkv=1),
            dict(label="dense Tq=150 Tk=165 (offset 15) 4/1 D=256 gate", Tq=150, Tk=165, Hq=4, Hkv=1, gate=True),
            dict(label="dense Tq=300 Tk=362 (offset 62) 4/2 D=128", Tq=300, Tk=362, Hq=4, Hkv=2, D=128),
            dict(label="head-major memory [B,H,T,D] viewed as [B,T,H,D] 8/2 D=256", Tq=200, Hq=8,
                 head_major=True, paths=(None,)),
        ]
        for T in (1, 63, 64, 65, 80, 81, 128, 129):
            sm90.append(dict(label=f"dense T={T} 4/1 D=256 causal", Tq=T, Hq=4, Hkv=1))
        for T in (127, 128, 129):
            sm90.append(dict(label=f"dense T={T} 4/1 D=128 causal", Tq=T, Hq=4, Hkv=1, D=128))
        sm90 += [
            # key block 64-127 at D=256: its last key is first visible to query 0 + 1 (mask shortcut boundary)
            dict(label="dense Tq=64 Tk=190 (offset 126) 4/1 D=256 causal", Tq=64, Tk=190, Hq=4, Hkv=1),
            dict(label="varlen (64,1,0,65)/(190,64,3,65) 6/2 D=128 causal gate", Hq=6, D=128, gate=True,
                 lens_q=[64, 1, 0, 65], lens_k=[190, 64, 3, 65]),
        ]
    decode = [
        dict(label="N=3 L=1 16/2 D=256 lens (0,37,1000) bs=16"),
        dict(label="N=3 L=3 16/2 D=256 lens (2,37,700) host tables i64", L=3, lens=(2, 37, 700), host_tables=True),
        dict(label="N=2 L=4 3/1 D=128 lens (3,130) bs=32 bad block ids", N=2, L=4, Hq=3, Hkv=1, D=128,
             lens=(3, 130), block_size=32, bad_block=True),
        dict(label="N=4 L=2 8/8 D=64 lens (1,0,65,64) i64 scale=0.2", N=4, L=2, Hq=8, Hkv=8, D=64,
             lens=(1, 0, 65, 64), idx_dtype=torch.int64, scale=0.2),
        dict(label="N=2 L=1 4/2 D=80 (general) lens (5,300)", N=2, Hq=4, Hkv=2, D=80, lens=(5, 300)),
        dict(label="N=3 L=2 16/2 D=256 lens (1,100,777) bs=32", L=2, lens=(1, 100, 777), block_size=32),
        dict(label="N=2 L=3 8/2 D=256 lens (50,333) bs=48", N=2, L=3, Hq=8, lens=(50, 333), block_size=48),
        dict(label="N=2 L=1 16/2 D=256 lens (9,200) bs=8 (rows per lane) bad block ids", N=2, lens=(9, 200),
             block_size=8, bad_block=True),
        dict(label="N=3 L=2 4/1 D=64 lens (4,0,90) bs=5 i64", N=3, L=2, Hq=4, Hkv=1, D=64, lens=(4, 0, 90),
             block_size=5, idx_dtype=torch.int64),
        dict(label="N=2 L=4 16/2 D=128 lens (3,90) (two row tiles)", N=2, L=4, D=128, lens=(3, 90)),
    ]
    if not args.quick:
        decode += [
            dict(label="N=2 L=1 16/2 D=256 lens (8192,4000) bs=64", N=2, lens=(8192, 4000), block_size=64),
            dict(label="N=1 L=1 16/2 D=256 lens (8192) bs=16 (many pieces)", N=1, lens=(8192,)),
            dict(label="N=3 L=1 16/2 D=128 lens (15,64,3001) bs=64", D=128, lens=(15, 64, 3001), block_size=64),
            # 128 CTAs of one piece each on an H100: the kernel writes o itself
            dict(label="N=64 L=1 16/2 D=256 lens 0..900 bs=16 (one piece)", N=64,
                 lens=tuple((37 * i * i + 11 * i) % 901 for i in range(64))),
            dict(label="N=64 L=2 8/4 D=256 lens 1..500 bs=32 host tables", N=64, L=2, Hq=8, Hkv=4,
                 lens=tuple(1 + (53 * i) % 500 for i in range(64)), block_size=32, host_tables=True),
        ]
    def guarded(fn, dtype, **case):
        try:
            fn(dtype, **case)
        except Exception as e:  # noqa: BLE001  (a failed call is a failed case)
            RESULTS.append(False)
            print(f"FAIL {fn.__name__} {str(dtype)[6:]} {case.get('label', '')}: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:200]}", flush=True)

    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        guarded(kv_write_case, dtype, bad_slot=on_gpu,
                label="T=50 2x256 i32 slots, -1" + (" and out-of-range skipped" if on_gpu else ""))
        guarded(kv_write_case, dtype, label="T=20 3x40 host i64 slots", T=20, Hkv=3, D=40, host=True)
        for case in decode:
            if case.get("bad_block") and not on_gpu:
                case = {**case, "bad_block": False, "label": case["label"].replace(" bad block ids", "")}
            guarded(decode_case, dtype, **case)
        for case in prefill + [dict(c, only16=True) for c in sm90]:
            case = dict(case)
            if case.pop("only16", False) and dtype == torch.float32:
                continue
            tc = dtype != torch.float32 and case.get("D", 256) in (64, 128, 256) and not case.get("strided_d")
            paths = case.pop("paths", ("wgmma", "mma") if on_gpu and tc else (None,))
            for path in paths:  # forward and backward on the same kernel family
                guarded(prefill_case, dtype, path=path, **case)
    passed = sum(RESULTS)
    print(f"cuda_attn_check: {passed}/{len(RESULTS)} passed", "" if passed == len(RESULTS) else "FAILURES")
    sys.exit(0 if passed == len(RESULTS) else 1)


if __name__ == "__main__":
    main()
