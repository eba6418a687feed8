"""gdn_chunk_bwd against float64 autograd through the recurrence, at the shapes
that take the CUDA backend's tensor-core sweeps (f16/bf16, K <= 128, K and V
multiples of 4) with several chunks: K = V = 128 with GQA, varlen with empty
and length-1 sequences, V not a multiple of the 32-column CTA width, packed
(strided) inputs, both state layouts, with and without h0 / d_final_state.
The conformance runner's only 16-bit K = 128 backward case is one 16-token
chunk. Fresh random inputs per case; every gradient is poisoned with NaN
first, so an unwritten element fails the check.

With HOPS_CUDA_GDN_BWD=v4 the cases v4 takes (f16/bf16, K = V = 128,
unit-stride aligned rows: the "v4" labels, "dense G=2", the 11-chunk and the
Qwen3.5-heads cases) run the v4 backward; the others run v3 as before.

Usage: [HOPS_CUDA_GDN_BWD=v4] HOPS_LIBRARY=build/plugin/libhops.so PYTHONPATH=shims/python \
       python3 tests/bench/cuda_bwd_check.py [--quick] [--no-reference]
Prints one line per case and exits 1 if any relative L2 error exceeds 1e-2."""

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hops.ops as hops_ops  # noqa: E402
from cuda_chunk_check import TOLERANCE, reference, rel  # noqa: E402


def run_case(dtype, B, T, H, HV, K, V, *, reference_too=True, cu=None, packed=False, l2norm=True, h0=True,
             d_final=True, v_first=False, scale=None, label=""):
    dev = torch.device("cuda")
    N = B if cu is None else len(cu) - 1
    if packed:  # q, k, v sliced from one projection [B, T, 2HK + HV V] (Qwen3.5)
        P = 2 * H * K + HV * V
        qkv = torch.empty(B, T, P, dtype=dtype, device=dev).uniform_(-1, 1)
        q = qkv[..., :H * K].unflatten(-1, (H, K))
        k = qkv[..., H * K:2 * H * K].unflatten(-1, (H, K))
        v = qkv[..., 2 * H * K:].unflatten(-1, (HV, V))
    else:
        q, k = (torch.empty(B, T, H, K, dtype=dtype, device=dev).uniform_(-1, 1) for _ in range(2))
        v = torch.empty(B, T, HV, V, dtype=dtype, device=dev).uniform_(-1, 1)
    if not l2norm:  # keep the delta rule stable: |k| <= 1
        k = (k / K ** 0.5).to(dtype)
    g = (torch.nn.functional.logsigmoid(torch.randn(B, T, HV, device=dev)) * 0.1).to(dtype)
    beta = torch.rand(B, T, HV, device=dev).to(dtype)
    state_shape = (N, HV, V, K) if v_first else (N, HV, K, V)
    initial = torch.empty(state_shape, device=dev).uniform_(-1, 1) if h0 else None
    dht = torch.empty(state_shape, device=dev).uniform_(-1, 1) if d_final else None
    d_o = torch.empty(B, T, HV, V, dtype=dtype, device=dev).uniform_(-1, 1)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=dev)
    grads = {name: torch.full(x.shape, float("nan"), dtype=dtype, device=dev)
             for name, x in (("dq", q), ("dk", k), ("dv", v), ("dg", g), ("dbeta", beta))}
    if h0:
        grads["dh0"] = torch.full(state_shape, float("nan"), device=dev)
    hops_ops.library().op("gdn_chunk_bwd")(
        q=q, k=k, v=v, g=g, beta=beta, initial_state=initial, cu_seqlens=cu_t, d_final_state=dht,
        scale=scale or 0.0, use_qk_l2norm=l2norm, state_v_first=v_first, **{"do": d_o}, **grads)
    name = f"{str(dtype)[6:]:<8} B={B} T={T} H={H} HV={HV} K={K} V={V} {label}"
    if not reference_too:
        torch.cuda.synchronize()
        print(f"RAN  {name}", flush=True)
        return True

    leaves = [x.detach().double().requires_grad_() for x in (q, k, v, g, beta)]
    h0_leaf = initial.double().requires_grad_() if h0 else None
    o, final = reference(*leaves, h0_leaf, cu_t, scale or K ** -0.5, l2norm, None, None, v_first)
    loss = (o * d_o.double()).sum()
    if d_final:
        loss = loss + (final * dht.double()).sum()
    loss.backward()
    want = dict(zip(("dq", "dk", "dv", "dg", "dbeta"), (x.grad for x in leaves)))
    if h0:
        want["dh0"] = h0_leaf.grad
    errors = {name: rel(grads[name], want[name]) for name in grads}
    ok = all(e <= TOLERANCE for e in errors.values())  # NaN compares false: fails
    print(f"{'PASS' if ok else 'FAIL'} {name:<66} " + " ".join(f"{n} {e:.1e}" for n, e in errors.items()),
          flush=True)
    return ok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small cases only (for the sanitizers)")
    parser.add_argument("--no-reference", action="store_true",
                        help="only the hops calls (under compute-sanitizer, which would slow the float64 "
                             "autograd's thousands of kernels down)")
    args = parser.parse_args()
    torch.manual_seed(2)
    cases = [
        dict(B=2, T=200, H=2, HV=4, K=128, V=128, label="dense G=2"),
        dict(B=1, T=300, H=4, HV=4, K=128, V=64, cu=[0, 0, 1, 64, 65, 300], v_first=True,
             label="varlen (0,1,63,1,235) v_first"),
        dict(B=1, T=130, H=2, HV=6, K=128, V=48, packed=True, l2norm=False, scale=0.3,
             label="packed G=3 V=48 no-l2norm"),
        dict(B=2, T=129, H=1, HV=2, K=36, V=20, h0=False, label="K=36 V=20 no h0"),
        dict(B=1, T=400, H=2, HV=4, K=128, V=128, cu=[0, 0, 1, 64, 65, 129, 130, 400],
             label="v4 varlen (0,1,63,1,64,1,270)"),
        # (V / 64) HV N >= the SM count: the sweeps' 64-column CTAs (v4: 2-stage reverse sweep)
        dict(B=2, T=70, H=8, HV=48, K=128, V=128, label="64-column sweeps"),
    ]
    if not args.quick:
        cases += [
            dict(B=1, T=700, H=2, HV=4, K=128, V=128, d_final=False, label="11 chunks, no d_final"),
            dict(B=1, T=256, H=16, HV=32, K=128, V=128, packed=True, label="Qwen3.5 heads, packed"),
            dict(B=1, T=192, H=1, HV=3, K=128, V=128, l2norm=False, scale=0.3, h0=False, d_final=False,
                 label="v4 G=3 no-l2norm no h0/d_final"),
            dict(B=2, T=64, H=2, HV=2, K=128, V=128, v_first=True, label="v4 T=64 v_first"),
        ]
    ok = True
    for dtype in (torch.bfloat16, torch.float16):
        for case in cases:
            ok &= run_case(dtype, reference_too=not args.no_reference, **case)
    path = "v4 where it applies" if os.environ.get("HOPS_CUDA_GDN_BWD") == "v4" else "default (v3)"
    print(f"cuda_bwd_check ({path}):", "all passed" if ok else "FAILURES")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
