"""conv1d_fwd, conv1d_bwd and conv1d_update on the GPU at the sizes the
conformance sweep does not reach (issue 21's bulk-copy and decode paths): whole
4 KB / 2 KB channel blocks and a partial one, runs of several 256-token
segments (B * blocks large), T off every tile, W 1..4, initial / final states,
skipped decode slots. Each against a float32 torch reference of the same
(rounded) inputs, outputs poisoned with NaN first; conv1d_bwd twice, bitwise
equal (deterministic). HOPS_CONV_V4=1 | 0 picks the v4 or the v3 kernels
(backends/cuda/cuda_params.hpp: kConvV4 is the default).

Usage (repo root, HOPS_LIBRARY set): python3 tests/bench/cuda_conv_check.py"""

import math
import sys

import torch

import hops.ops as hops_ops

dev = torch.device("cuda")
torch.manual_seed(0)
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
FAILED = []


def op(name):
    return hops_ops.library().op(name)


def rel(got, want):
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return math.inf
    den = want.norm().item()
    return (got - want).norm().item() / den if den > 0 else (got - want).norm().item()


def report(name, errs, tol):
    ok = all(e <= tol for e in errs.values())
    if not ok:
        FAILED.append(name)
    print(f"{'PASS' if ok else 'FAIL'} {name:<60} " + "  ".join(f"{k} {v:.1e}" for k, v in errs.items()),
          flush=True)


def poison(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=dev)


def reference(x, w, b, act, init, L1):
    """y, final state (f32) of u = [init, x] over time; tensors require grad as given."""
    B, T, D = x.shape
    W = w.shape[1]
    u = x.transpose(1, 2)
    if init is not None:
        u = torch.cat([init, u], dim=2)
    pad = torch.nn.functional.pad(u, (max(0, W - 1 - (u.shape[2] - T)), 0))
    y = torch.nn.functional.conv1d(pad, w.unsqueeze(1), b, groups=D)[:, :, -T:]
    if act:
        y = torch.nn.functional.silu(y)
    final = None
    if L1:
        ext = torch.nn.functional.pad(u, (max(0, L1 - u.shape[2]), 0))
        final = ext[:, :, -L1:]
    return y.transpose(1, 2), final


def conv_case(dtype, B, T, D, W, bias=True, act=True, L0=0, L1=0, bwd=True):
    name = f"{str(dtype)[6:]} B={B} T={T} D={D} W={W}{' bias' if bias else ''}{' silu' if act else ''}" \
           f"{f' L0={L0}' if L0 else ''}{f' L1={L1}' if L1 else ''}"
    x = torch.randn(B, T, D, device=dev).to(dtype)
    w = (torch.randn(D, W, device=dev) * 0.5).to(dtype)
    b = torch.randn(D, device=dev).to(dtype) if bias else None
    init = torch.randn(B, D, L0, device=dev).to(dtype) if L0 else None
    y = poison((B, T, D), dtype)
    final = poison((B, D, L1), dtype) if L1 else None
    op("conv1d_fwd")(x=x, weight=w, bias=b, initial_state=init, y=y, final_state=final, activation=int(act))
    xr, wr = x.float().requires_grad_(), w.float().requires_grad_()
    br = b.float().requires_grad_() if bias else None
    ir = init.float().requires_grad_() if L0 else None
    want_y, want_final = reference(xr, wr, br, act, ir, L1)
    errs = {"y": rel(y, want_y.detach())}
    if L1:
        errs["final"] = rel(final, want_final.detach())
    report("conv1d_fwd " + name, errs, TOL[dtype])
    if not bwd:
        return
    dy = torch.randn(B, T, D, device=dev).to(dtype)
    dfinal = torch.randn(B, D, L1, device=dev).to(dtype) if L1 else None
    loss = (want_y * dy.float()).sum() + ((want_final * dfinal.float()).sum() if L1 else 0)
    named = [(k, t) for k, t in (("dx", xr), ("dweight", wr), ("dbias", br), ("d_initial_state", ir))
             if t is not None]
    grads = dict(zip([k for k, _ in named], torch.autograd.grad(loss, [t for _, t in named])))
    runs = []
    for _ in range(2):
        out = {"dx": poison((B, T, D), dtype), "dweight": poison((D, W), dtype),
               "dbias": poison((D,), dtype) if bias else None,
               "d_initial_state": poison((B, D, L0), dtype) if L0 else None}
        op("conv1d_bwd")(x=x, weight=w, bias=b, initial_state=init, dy=dy, d_final_state=dfinal,
                         activation=int(act), **out)
        runs.append(out)
    errs = {k: rel(runs[0][k], v) for k, v in grads.items()}
    same = all(torch.equal(runs[0][k], runs[1][k]) for k in grads)
    errs["bitwise"] = 0.0 if same else math.inf
    report("conv1d_bwd " + name, errs, TOL[dtype])


def update_case(dtype, N, D, W, SL, bias=True, act=True):
    name = f"conv1d_update {str(dtype)[6:]} N={N} D={D} W={W} state_len={SL}"
    S = 2 * N
    x = torch.randn(N, D, device=dev).to(dtype)
    w = (torch.randn(D, W, device=dev) * 0.5).to(dtype)
    b = torch.randn(D, device=dev).to(dtype) if bias else None
    state = torch.randn(S, D, SL, device=dev).to(dtype)
    idx = torch.randperm(S, device=dev)[:N].to(torch.int32)
    idx[N // 2] = -1
    want_state = state.clone()
    kept = idx >= 0
    window = torch.cat([state[idx[kept].long()].float(), x[kept].float().unsqueeze(2)], dim=2)
    want = (window[:, :, SL + 1 - W:] * w.float()).sum(2) + (b.float() if bias else 0)
    if act:
        want = torch.nn.functional.silu(want)
    want_state[idx[kept].long()] = window[:, :, 1:].to(dtype)
    y = poison((N, D), dtype)
    op("conv1d_update")(x=x, state=state, weight=w, bias=b, state_indices=idx, y=y, activation=int(act))
    errs = {"y": rel(y[kept], want), "state": 0.0 if torch.equal(state, want_state) else math.inf}
    report(name, errs, TOL[dtype])


bf, f16, f32 = torch.bfloat16, torch.float16, torch.float32
conv_case(bf, 1, 32768, 8192, 4)                    # the bench shape: one wave of runs
conv_case(bf, 8, 8192, 8192, 4, L0=3, L1=3)         # runs of several segments
conv_case(bf, 3, 1000, 2056, 3, L0=3, L1=4)         # a partial channel block
conv_case(bf, 2, 4097, 4096, 2, bias=False, act=False)
conv_case(f16, 1, 777, 1024, 1, L0=5, L1=5)
conv_case(bf, 5, 1, 2048, 4, L0=3, L1=4)            # T = 1
conv_case(f32, 2, 3000, 3072, 4, L0=4, L1=3)        # f32: the bulk forward, the v2 backward
for SL, W in ((4, 4), (3, 4), (4, 3), (3, 2)):
    update_case(bf, 256, 8192, W, SL)
update_case(f16, 5, 64, 4, 4, bias=False)
update_case(f32, 7, 96, 4, 3)
print(f"{'FAILED: ' + ', '.join(FAILED) if FAILED else 'all passed'}")
sys.exit(1 if FAILED else 0)
