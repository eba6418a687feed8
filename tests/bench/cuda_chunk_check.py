"""gdn_chunk_fwd against a float64 recurrence, at the shapes that take the CUDA
backend's tensor-core path (K = 128, f16/bf16) and at its edges: T not a
multiple of 64, varlen with empty and length-1 sequences, GQA with G = 1..4,
strided (packed) inputs, both state layouts, fused gating, V = 32..256, both
CTA widths. Fresh random inputs per case; outputs are poisoned with NaN first,
so an unwritten element fails the check. The conformance runner covers the
general kernel; its only f16/bf16 case at K = 128 is a single chunk.

Usage: HOPS_LIBRARY=build/plugin/libhops.so PYTHONPATH=shims/python \
       python3 tests/bench/cuda_chunk_check.py [--device cuda] [--quick]
Prints one line per case and exits 1 if any relative L2 error exceeds 1e-2."""

import argparse
import sys

import torch
import torch.nn.functional as F

import hops.ops as hops_ops

TOLERANCE = 1e-2  # the conformance bound for 16-bit inputs (docs/OPS.md, DESIGN.md section 4)


def reference(q, k, v, g, beta, h0, cu, scale, l2norm, A_log, dt_bias, v_first):
    """o [B,T,HV,V] and the final states [N,HV,K,V] (v_first: [N,HV,V,K]) in float64."""
    q, k, v, g, beta = (x.double() for x in (q, k, v, g, beta))
    if A_log is not None:
        g = -A_log.double().exp() * F.softplus(g + dt_bias.double())
        beta = beta.sigmoid()
    if l2norm:
        q = q / (q.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
        k = k / (k.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
    G = v.shape[2] // q.shape[2]
    q, k = q.repeat_interleave(G, 2), k.repeat_interleave(G, 2)
    B, T, HV, K = q.shape
    V = v.shape[3]
    o = torch.zeros(B, T, HV, V, dtype=torch.float64, device=q.device)
    if cu is None:
        spans = [(slice(None), 0, T)]
        N = B
    else:
        bounds = cu.tolist()
        spans = [(slice(0, 1), bounds[n], bounds[n + 1]) for n in range(len(bounds) - 1)]
        N = len(spans)
    start = torch.zeros(N, HV, K, V, dtype=torch.float64, device=q.device)
    if h0 is not None:
        start = h0.double().transpose(-1, -2) if v_first else h0.double()
    final = torch.empty_like(start)
    for n, (rows, begin, end) in enumerate(spans):
        S = start if cu is None else start[n:n + 1]
        S = S.clone()
        for t in range(begin, end):
            S = S * g[rows, t].exp()[..., None, None]
            u = beta[rows, t][..., None] * (v[rows, t] - torch.einsum("nhk,nhkv->nhv", k[rows, t], S))
            S = S + k[rows, t][..., :, None] * u[..., None, :]
            o[rows, t] = scale * torch.einsum("nhk,nhkv->nhv", q[rows, t], S)
        if cu is None:
            final = S
        else:
            final[n] = S[0]
    return o, (final.transpose(-1, -2) if v_first else final)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def run_case(device, dtype, B, T, H, HV, V, *, K=128, cu=None, G_packed=False, l2norm=True,
             gating=False, h0=True, v_first=False, scale=None, label=""):
    gen = dict(device=device)
    N = B if cu is None else len(cu) - 1
    if G_packed:  # q, k, v sliced from one projection [B, T, 2HK + HV V] (Qwen3.5)
        P = 2 * H * K + HV * V
        qkv = torch.empty(B, T, P, dtype=dtype, **gen).uniform_(-1, 1)
        q = qkv[..., :H * K].unflatten(-1, (H, K))
        k = qkv[..., H * K:2 * H * K].unflatten(-1, (H, K))
        v = qkv[..., 2 * H * K:].unflatten(-1, (HV, V))
    else:
        q = torch.empty(B, T, H, K, dtype=dtype, **gen).uniform_(-1, 1)
        k = torch.empty(B, T, H, K, dtype=dtype, **gen).uniform_(-1, 1)
        v = torch.empty(B, T, HV, V, dtype=dtype, **gen).uniform_(-1, 1)
    if not l2norm:  # keep the delta rule stable: |k| <= 1
        k = k / K ** 0.5
    A_log = dt_bias = None
    if gating:
        g = torch.empty(B, T, HV, dtype=dtype, **gen).uniform_(-1, 1)
        beta = torch.empty(B, T, HV, dtype=dtype, **gen).uniform_(-2, 2)
        A_log = torch.empty(HV, dtype=dtype, **gen).uniform_(-1, 1)
        dt_bias = torch.empty(HV, dtype=dtype, **gen).uniform_(-1, 1)
    else:
        g = torch.nn.functional.logsigmoid(torch.randn(B, T, HV, **gen)) * 0.1
        beta = torch.rand(B, T, HV, dtype=dtype, **gen)
    state_shape = (N, HV, V, K) if v_first else (N, HV, K, V)
    initial = torch.empty(state_shape, **gen).uniform_(-1, 1) if h0 else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=device)
    o = torch.full((B, T, HV, V), float("nan"), dtype=dtype, **gen)
    final = torch.full(state_shape, float("nan"), **gen)
    hops_ops.library().op("gdn_chunk_fwd")(
        q=q, k=k, v=v, g=g, beta=beta, initial_state=initial, cu_seqlens=cu_t, A_log=A_log,
        dt_bias=dt_bias, o=o, final_state=final, scale=scale or 0.0, use_qk_l2norm=l2norm,
        state_v_first=v_first)
    want_o, want_final = reference(q, k, v, g, beta, initial, cu_t, scale or K ** -0.5, l2norm, A_log,
                                   dt_bias, v_first)
    if cu is not None:  # tokens of no sequence are not written: compare the covered ones
        covered = slice(cu[0], cu[-1])
        o, want_o = o[:, covered], want_o[:, covered]
    err_o, err_h = rel(o, want_o), rel(final, want_final)
    ok = err_o <= TOLERANCE and err_h <= TOLERANCE
    name = f"{str(dtype)[6:]:<8} B={B} T={T} H={H} HV={HV} K={K} V={V} {label}"
    print(f"{'PASS' if ok else 'FAIL'} {name:<72} o {err_o:.2e}  final_state {err_h:.2e}", flush=True)
    return ok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small cases only (for the sanitizers)")
    args = parser.parse_args()
    torch.manual_seed(1)
    dev = torch.device(args.device)
    cases = [
        dict(B=2, T=200, H=2, HV=4, V=128, label="dense G=2"),
        dict(B=1, T=300, H=4, HV=4, V=64, cu=[0, 0, 1, 64, 65, 300], v_first=True, gating=True,
             label="varlen (0,1,63,1,235) G=1 v_first gating"),
        dict(B=1, T=130, H=2, HV=6, V=128, G_packed=True, gating=True, l2norm=False, scale=0.3,
             label="packed G=3 gating no-l2norm"),
        dict(B=3, T=64, H=1, HV=4, V=32, h0=False, label="G=4 V=32 no h0"),
        dict(B=1, T=100, H=2, HV=2, V=256, label="V=256"),
    ]
    if not args.quick:
        cases += [
            dict(B=3, T=1024, H=16, HV=32, V=128, label="4-warp CTAs"),
            dict(B=1, T=2000, H=16, HV=32, V=128, G_packed=True, gating=True, label="packed gating"),
        ]
    ok = True
    for dtype in (torch.bfloat16, torch.float16):
        for case in cases:
            ok &= run_case(dev, dtype, **case)
    print("cuda_chunk_check:", "all passed" if ok else "FAILURES")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
