"""Off-GPU emulation of gdn_chunk_bwd v4 (HOPS_CUDA_GDN_BWD=v4; docs/CUDA_NOTES.md,
"gdn_chunk_bwd v4"): the four kernels' chunk-level math in numpy, in the
kernels' order, factorisation and 16-bit rounding points, against a float64
reference that differentiates the token recurrence by hand (itself checked
against central finite differences on a tiny case). Also emulates the new
fragment mappings (a B operand by ldmatrix.trans from a row-major k x n tile;
tile_mma's four operand forms lane by lane) against plain products, and the
"[ports]" cases run the two new kernels as ported line by line: reverse_dh
lane by lane (cuda_gdn_bwd_v4_sweep_port.py) and chunk_grad CTA by CTA with
its buffer reuse, prefetch points and fragment-level sums
(cuda_gdn_bwd_v4_grad_port.py).

  python3 tests/bench/cuda_gdn_bwd_v4_emulation.py            all cases
  python3 tests/bench/cuda_gdn_bwd_v4_emulation.py --mutate   a wrong dbeta term: must FAIL

Exact mode (no rounding) must agree to ~1e-12; bf16 mode (operands rounded
where the kernels round them) is reported against the 1e-2 tolerance of
tests/bench/cuda_bwd_check.py."""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cuda_gdn_bwd_v4_grad_port as grad_port  # noqa: E402
import cuda_gdn_bwd_v4_sweep_port as sweep_port  # noqa: E402
from sm90_emulation import bf16  # noqa: E402

C = 64
EPS = 1e-6


def spans(B, T, cu):
    """(row, begin, end) per sequence, as sequence_span."""
    if cu is None:
        return [(n, 0, T) for n in range(B)]
    return [(0, cu[n], cu[n + 1]) for n in range(len(cu) - 1)]


def first_slot(n, begin, T, cu):
    """The chunk slot of a sequence's first chunk (gdn_chunk_tc.cu's record slots)."""
    return begin // C + n if cu is not None else 0


def slots_per_row(T, N, cu):
    return T // C + N if cu is not None else (T + C - 1) // C


# ---- float64 reference: the token recurrence and its hand-written adjoint -----------------

def l2n(x):
    r = 1.0 / np.sqrt((x * x).sum(-1, keepdims=True) + EPS)
    return x * r, r


def forward_tokens(q, k, v, g, beta, h0, cu, scale, l2norm):
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G = HV // H
    o = np.zeros((B, T, HV, V))
    sp = spans(B, T, cu)
    ht = np.zeros((len(sp), HV, K, V))
    qn, kn = (l2n(q)[0], l2n(k)[0]) if l2norm else (q, k)
    for n, (row, b, e) in enumerate(sp):
        for hv in range(HV):
            h = hv // G
            S = h0[n, hv].copy() if h0 is not None else np.zeros((K, V))
            for t in range(b, e):
                S = np.exp(g[row, t, hv]) * S
                u = beta[row, t, hv] * (v[row, t, hv] - S.T @ kn[row, t, h])
                S = S + np.outer(kn[row, t, h], u)
                o[row, t, hv] = S.T @ (scale * qn[row, t, h])
            ht[n, hv] = S
    return o, ht


def backward_tokens(q, k, v, g, beta, h0, dht, do, cu, scale, l2norm):
    """Reverse mode through the recurrence, token by token, float64."""
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G = HV // H
    qn, kn = (l2n(q)[0], l2n(k)[0]) if l2norm else (q, k)
    dqn, dkn = np.zeros_like(q), np.zeros_like(k)
    dv, dg, db = np.zeros_like(v), np.zeros_like(g), np.zeros_like(beta)
    sp = spans(B, T, cu)
    dh0 = np.zeros((len(sp), HV, K, V))
    for n, (row, b, e) in enumerate(sp):
        for hv in range(HV):
            h = hv // G
            S = h0[n, hv].copy() if h0 is not None else np.zeros((K, V))
            hist = []  # (S_prev, S') per token
            for t in range(b, e):
                Sd = np.exp(g[row, t, hv]) * S
                u = beta[row, t, hv] * (v[row, t, hv] - Sd.T @ kn[row, t, h])
                hist.append((S, Sd, u))
                S = Sd + np.outer(kn[row, t, h], u)
            dS = dht[n, hv].copy() if dht is not None else np.zeros((K, V))
            for t in range(e - 1, b - 1, -1):
                S_prev, Sd, u = hist[t - b]
                S_t = Sd + np.outer(kn[row, t, h], u)
                dqn[row, t, h] += scale * S_t @ do[row, t, hv]
                dS = dS + scale * np.outer(qn[row, t, h], do[row, t, hv])
                du = dS.T @ kn[row, t, h]
                dkn[row, t, h] += dS @ u
                db[row, t, hv] = du @ (v[row, t, hv] - Sd.T @ kn[row, t, h])
                dv[row, t, hv] = beta[row, t, hv] * du
                dSd = dS - beta[row, t, hv] * np.outer(kn[row, t, h], du)
                dkn[row, t, h] -= beta[row, t, hv] * Sd @ du
                dg[row, t, hv] = (dSd * Sd).sum()
                dS = np.exp(g[row, t, hv]) * dSd
            dh0[n, hv] = dS
    dq, dk = l2_backward(q, dqn, l2norm), l2_backward(k, dkn, l2norm)
    return dict(dq=dq, dk=dk, dv=dv, dg=dg, dbeta=db, dh0=dh0)


def l2_backward(x, dxn, l2norm):
    if not l2norm:
        return dxn
    xn, r = l2n(x)
    return r * (dxn - xn * (xn * dxn).sum(-1, keepdims=True))


def finite_difference_check():
    """The hand adjoint against central differences of <o, do> + <ht, dht>."""
    rng = np.random.default_rng(7)
    B, T, H, HV, K, V = 1, 5, 1, 2, 3, 2
    cu = [0, 2, 5]
    x = dict(q=rng.uniform(-1, 1, (B, T, H, K)), k=rng.uniform(-1, 1, (B, T, H, K)),
             v=rng.uniform(-1, 1, (B, T, HV, V)), g=-rng.uniform(0.05, 0.5, (B, T, HV)),
             beta=rng.uniform(0, 1, (B, T, HV)))
    h0 = rng.uniform(-1, 1, (2, HV, K, V))
    dht, do = rng.uniform(-1, 1, (2, HV, K, V)), rng.uniform(-1, 1, (B, T, HV, V))

    def loss(x, h0):
        o, ht = forward_tokens(x["q"], x["k"], x["v"], x["g"], x["beta"], h0, cu, 0.7, True)
        return (o * do).sum() + (ht * dht).sum()

    got = backward_tokens(x["q"], x["k"], x["v"], x["g"], x["beta"], h0, dht, do, cu, 0.7, True)
    worst = 0.0
    for name in ("q", "k", "v", "g", "beta", "h0"):
        arr = h0 if name == "h0" else x[name]
        fd = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            keep = arr[idx]
            arr[idx] = keep + 1e-6
            up = loss(x, h0)
            arr[idx] = keep - 1e-6
            down = loss(x, h0)
            arr[idx] = keep
            fd[idx] = (up - down) / 2e-6
        worst = max(worst, np.abs(fd - got["d" + name]).max())
    print(f"reference adjoint vs finite differences: max abs diff {worst:.2e}")
    return worst < 1e-6


# ---- v4, kernel by kernel -------------------------------------------------------------------

def prepare(qh, kh, g, beta, L, scale, l2norm, rnd):
    """Kernel 1 (the forward's chunk_prepare_kernel) for one (chunk, value head): the record.
    qh, kh: raw [C, K] rows (zero past L)."""
    gc = np.zeros(C)
    gc[:L] = np.cumsum(g[:L])
    gc[L:] = gc[L - 1] if L else 0.0
    bt = np.zeros(C)
    bt[:L] = beta[:L]
    rk = np.zeros(C)
    rq = np.zeros(C)
    if l2norm:
        rk[:L] = 1 / np.sqrt((kh[:L] ** 2).sum(1) + EPS)
        rq[:L] = 1 / np.sqrt((qh[:L] ** 2).sum(1) + EPS)
    else:
        rk[:L] = rq[:L] = 1.0
    kk, qk = kh @ kh.T, qh @ kh.T
    i, j = np.meshgrid(np.arange(C), np.arange(C), indexing="ij")
    valid = (j < L)
    D = np.exp((gc[:, None] - gc[None, :]) * (j <= i))
    A = np.where((j < i) & valid, bt[:, None] * rk[:, None] * rk[None, :] * D * kk, 0.0)
    M = np.where((j <= i) & valid, scale * rq[:, None] * rk[None, :] * D * qk, 0.0)
    T = np.linalg.inv(np.eye(C) + A)
    T[L:] = 0.0  # rows past the end are zero in the record
    gamma = np.exp(gc)
    f = np.zeros((C, 4))
    f[:L] = np.stack([bt, bt * gamma * rk, scale * gamma * rq, rk * np.exp(gc[L - 1] - gc)], 1)[:L]
    return dict(T=rnd(T), M=rnd(M), f=f, gamma_last=np.exp(gc[L - 1]), gc=gc, rk=rk, rq=rq)


def chunks_of(n, row, b, e, T, cu):
    z = 0 if cu is not None else n
    s0 = first_slot(n, b, T, cu)
    return [(z, s0 + c, b + c * C, min(C, e - b - c * C)) for c in range((e - b + C - 1) // C)]


def tile(x, row, t0, L, h):
    out = np.zeros((C, x.shape[-1]))
    out[:L] = x[row, t0:t0 + L, h]
    return out


def v4_backward(q, k, v, g, beta, h0, dht, do, cu, scale, l2norm, rnd, mutate=None, port=False, groups=2):
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    G = HV // H
    sp = spans(B, T, cu)
    N = len(sp)
    S_slots = slots_per_row(T, N, cu)
    Z = 1 if cu is not None else B
    rec = {}  # (z, slot, hv) -> record
    states = np.full((Z, S_slots, HV, V, K), np.nan)  # S^T at each chunk start, 16-bit
    dstates = np.full((Z, S_slots, HV, V, K), np.nan)  # dH^T at each chunk end, 16-bit
    dh0 = np.zeros((N, HV, K, V))

    # kernel 1: records
    for n, (row, b, e) in enumerate(sp):
        for (z, slot, t0, L) in chunks_of(n, row, b, e, T, cu):
            for hv in range(HV):
                h = hv // G
                gg = np.zeros(C)
                gg[:L] = g[row, t0:t0 + L, hv]
                bb = np.zeros(C)
                bb[:L] = beta[row, t0:t0 + L, hv]
                rec[z, slot, hv] = prepare(tile(q, row, t0, L, h), tile(k, row, t0, L, h), gg, bb, L,
                                           scale, l2norm, rnd)

    # kernel 2: the state sweep (the forward's chunk_state_kernel, transposed form, O skipped)
    for n, (row, b, e) in enumerate(sp):
        for hv in range(HV):
            h = hv // G
            St = h0[n, hv].T.copy() if h0 is not None else np.zeros((V, K))  # S^T, f32
            for (z, slot, t0, L) in chunks_of(n, row, b, e, T, cu):
                r = rec[z, slot, hv]
                kt, vt = rnd(tile(k, row, t0, L, h)), rnd(tile(v, row, t0, L, hv))
                states[z, slot, hv] = rnd(St)
                Xt = rnd(St) @ kt.T  # S^T K^T
                rhs = rnd(r["f"][:, 0][None, :] * vt.T - r["f"][:, 1][None, :] * Xt)
                vnew = rnd(rhs @ r["T"].T)
                St = r["gamma_last"] * St + rnd(vnew * r["f"][:, 3][None, :]) @ kt

    # kernel 3: the reverse sweep (new): dH^T per chunk end, dh0
    for n, (row, b, e) in enumerate(sp if port else []):  # the kernel's lane-level port
        for hv in range(HV):
            h = hv // G
            order = list(reversed(chunks_of(n, row, b, e, T, cu)))
            tiles = [dict(k=rnd(tile(k, row, t0, L, h)), q=rnd(tile(q, row, t0, L, h)), o=rnd(tile(do, row, t0, L, hv)),
                          T=rec[z, slot, hv]["T"], M=rec[z, slot, hv]["M"], f=rec[z, slot, hv]["f"],
                          gamma_last=rec[z, slot, hv]["gamma_last"]) for (z, slot, t0, L) in order]
            for c0 in range(0, V, 16 * groups):  # CTAs of `groups` column groups (kGroups)
                cta = [dict(t, o=t["o"][:, c0:c0 + 16 * groups]) for t in tiles]
                for warp in range(groups):
                    stored, d0 = sweep_port.reverse_warp(cta, warp, c0, dht[n, hv] if dht is not None else None, rnd)
                    v0 = c0 + 16 * warp
                    for (z, slot, _, _), rows in zip(order, stored):
                        dstates[z, slot, hv][v0:v0 + 16] = rows
                    dh0[n, hv][:, v0:v0 + 16] = d0.T
    for n, (row, b, e) in enumerate([] if port else sp):
        for hv in range(HV):
            h = hv // G
            dHt = dht[n, hv].T.copy() if dht is not None else np.zeros((V, K))
            for (z, slot, t0, L) in reversed(chunks_of(n, row, b, e, T, cu)):
                r = rec[z, slot, hv]
                kt, qt = rnd(tile(k, row, t0, L, h)), rnd(tile(q, row, t0, L, h))
                dot = rnd(tile(do, row, t0, L, hv)).T  # dO^T [V, C]
                dstates[z, slot, hv] = rnd(dHt)
                dUt = (rnd(dHt) @ kt.T) * r["f"][:, 3][None, :] + dot @ r["M"]  # dU^T
                Yt = rnd(dUt) @ r["T"]  # Y^T = dU^T T
                dHt = (r["gamma_last"] * dHt + rnd(dot * r["f"][:, 2][None, :]) @ qt
                       - rnd(Yt * r["f"][:, 1][None, :]) @ kt)
            dh0[n, hv] = dHt.T

    # kernel 4: fused gradients per (chunk slot, key head), value heads in order
    dq, dk = np.full(q.shape, np.nan), np.full(k.shape, np.nan)
    dv, dg, db = np.full(v.shape, np.nan), np.full(g.shape, np.nan), np.full(beta.shape, np.nan)
    lower = np.tril(np.ones((C, C)))
    strict = np.tril(np.ones((C, C)), -1)
    if port:  # the kernel's port, CTA by CTA
        x = dict(q=q, k=k, v=v, g=g, beta=beta, do=do)
        out = dict(dq=dq, dk=dk, dv=dv, dg=dg, dbeta=db)
        hazards = []
        for n, (row, b, e) in enumerate(sp):
            for (z, slot, t0, L) in chunks_of(n, row, b, e, T, cu):
                for h in range(H):
                    grad_port.grad_cta(x, lambda hv: rec[z, slot, hv], lambda hv: states[z, slot, hv],
                                       lambda hv: dstates[z, slot, hv], (row, t0, L), h, G, scale, l2norm,
                                       rnd, out, hazards)
        for line in sorted(set(hazards))[:5]:
            print("  HAZARD", line)
        return dict(dq=dq, dk=dk, dv=dv, dg=dg, dbeta=db, dh0=dh0, hazards=len(hazards))
    for n, (row, b, e) in enumerate(sp):
        for (z, slot, t0, L) in chunks_of(n, row, b, e, T, cu):
            for h in range(H):
                qr, kr = tile(q, row, t0, L, h), tile(k, row, t0, L, h)
                r0 = rec[z, slot, h * G]
                Qn, Kn = rnd(qr * r0["rq"][:, None]), rnd(kr * r0["rk"][:, None])
                if not l2norm:
                    Qn, Kn = rnd(qr), rnd(kr)
                KK = Kn @ Kn.T  # f32, registers, shared by the G value heads
                dQn, dKn = np.zeros((C, K)), np.zeros((C, K))
                for hv in range(h * G, (h + 1) * G):
                    r = rec[z, slot, hv]
                    gc = r["gc"]
                    bt = r["f"][:, 0]
                    gam = np.exp(gc) * (np.arange(C) < L)
                    ee = np.exp(gc[L - 1] - gc) * (np.arange(C) < L)
                    D = np.exp((gc[:, None] - gc[None, :]) * lower) * lower
                    Tm, P = r["T"], r["M"]
                    Vt, dO = rnd(tile(v, row, t0, L, hv)), rnd(tile(do, row, t0, L, hv))
                    S = states[z, slot, hv].T  # [K, V], 16-bit
                    dH = dstates[z, slot, hv].T
                    rhs = rnd(bt[:, None] * Vt - (bt * gam)[:, None] * (Kn @ S))
                    U = rnd(Tm @ rhs)
                    dU = rnd(ee[:, None] * (Kn @ dH) + P.T @ dO)
                    dW = rnd(dU @ S.T)
                    Y, X = Tm.T @ dU, Tm.T @ dW  # f32
                    dv[row, t0:t0 + L, hv] = (bt[:, None] * Y)[:L]
                    dq1 = (scale * gam)[:, None] * (dO @ S.T)
                    dP = (dO @ U.T) * lower
                    dPs = rnd(scale * D * dP)
                    Zm = rnd(bt[None, :] * (rnd(Y) @ Vt.T - gam[None, :] * (rnd(X) @ Kn.T)))
                    dA = -(Zm @ Tm.T) * strict
                    A = bt[:, None] * D * KK * strict
                    Bm = bt[:, None] * D * dA * strict
                    dKt = U @ dH.T  # dK~
                    dQn += dq1 + dPs @ Kn
                    dKn += (dPs.T @ Qn + ee[:, None] * dKt - (bt * gam)[:, None] * X
                            + rnd(Bm + Bm.T) @ Kn)
                    kx = (Kn * X).sum(1)
                    term = gam * kx if mutate != "dbeta" else -gam * kx
                    db[row, t0:t0 + L, hv] = ((Vt * Y).sum(1) - term + (dA * D * KK).sum(1))[:L]
                    end = ee * (Kn * dKt).sum(1)
                    dG = ((Qn * dq1).sum(1) + (dP * P).sum(1) - (dP * P).sum(0) + (dA * A).sum(1)
                          - (dA * A).sum(0) - bt * gam * kx - end)
                    dG[L - 1] += end.sum() + r["gamma_last"] * (dH * S).sum()
                    dg[row, t0:t0 + L, hv] = np.cumsum(dG[:L][::-1])[::-1]
                if l2norm:
                    dQn = r0["rq"][:, None] * (dQn - Qn * (Qn * dQn).sum(1, keepdims=True))
                    dKn = r0["rk"][:, None] * (dKn - Kn * (Kn * dKn).sum(1, keepdims=True))
                dq[row, t0:t0 + L, h] = dQn[:L]
                dk[row, t0:t0 + L, h] = dKn[:L]
    return dict(dq=dq, dk=dk, dv=dv, dg=dg, dbeta=db, dh0=dh0)


# ---- the new fragment mapping -----------------------------------------------------------------

def ldsm_x4_trans(smem, row_addr):
    """ldmatrix.x4.trans: lanes 8i..8i+7 give the rows of 8x8 matrix i; lane l gets, of each
    matrix, the pair (rows 2 (l % 4) + {0, 1}, column l / 4)."""
    out = np.zeros((32, 4, 2))
    for i in range(4):
        rows = [smem[row_addr[8 * i + r]] for r in range(8)]  # each an 8-vector
        for l in range(32):
            out[l, i] = [rows[2 * (l % 4)][l // 4], rows[2 * (l % 4) + 1][l // 4]]
    return out


def check_b_trans_mapping():
    """B (k = 32 rows x n = 8) from a row-major [k][n] tile by ldsm_x4_trans at rows
    k0 + lane, column n0, used as b0, b1 (k 0..15) and b2, b3 (k 16..31) of two m16n8k16
    mmas: the result must be A B."""
    rng = np.random.default_rng(3)
    Kd, N = 64, 64
    Bm = rng.standard_normal((Kd, N))
    Am = rng.standard_normal((16, Kd))
    for k0 in (0, 32):
        for n0 in range(0, N, 8):
            smem = {(k0 + l): Bm[k0 + l, n0:n0 + 8] for l in range(32)}
            frag = ldsm_x4_trans(smem, [k0 + l for l in range(32)])
            d = np.zeros((16, 8))
            for l in range(32):
                g, t = l // 4, l % 4
                for half in range(2):  # k 0..15 from b0, b1; 16..31 from b2, b3
                    b = {2 * t: frag[l, 2 * half][0], 2 * t + 1: frag[l, 2 * half][1],
                         2 * t + 8: frag[l, 2 * half + 1][0], 2 * t + 9: frag[l, 2 * half + 1][1]}
                    for kk, val in b.items():
                        # lane (g, t) holds B[kk][g]; the mma sums A[:, kk] B[kk][n = g]
                        d[:, g] += Am[:, k0 + 16 * half + kk] * val
            # each (kk, g) pair was visited exactly once across lanes
            want = Am[:, k0:k0 + 32] @ Bm[k0:k0 + 32, n0:n0 + 8]
            if np.abs(d - want).max() > 1e-9:
                return False
    return True


def ldsm_x4(mem, addrs, trans):
    """ldmatrix.x4 (.trans): addrs[l] = (row, col) of the 8-element row that lane l names
    (lanes 8i..8i+7: matrix i). Lane l gets, of each matrix, the pair at (l / 4, 2 (l % 4) + {0, 1})
    or, transposed, at (2 (l % 4) + {0, 1}, l / 4)."""
    out = np.zeros((32, 4, 2))
    for i in range(4):
        rows = [mem[addrs[8 * i + r][0], addrs[8 * i + r][1]:addrs[8 * i + r][1] + 8] for r in range(8)]
        for l in range(32):
            if trans:
                out[l, i] = [rows[2 * (l % 4)][l // 4], rows[2 * (l % 4) + 1][l // 4]]
            else:
                out[l, i] = rows[l // 4][2 * (l % 4):2 * (l % 4) + 2]
    return out


def mma_frag(d, a, b):
    """m16n8k16: per lane (g, t) a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]},
    b = {B[2t..][g], B[2t+8..][g]}; d = 16 x 8 += A B."""
    A, B = np.zeros((16, 16)), np.zeros((16, 8))
    for l in range(32):
        g, t = l // 4, l % 4
        A[g, 2 * t:2 * t + 2], A[g + 8, 2 * t:2 * t + 2] = a[l][0], a[l][1]
        A[g, 2 * t + 8:2 * t + 10], A[g + 8, 2 * t + 8:2 * t + 10] = a[l][2], a[l][3]
        B[2 * t:2 * t + 2, g], B[2 * t + 8:2 * t + 10, g] = b[l][0], b[l][1]
    return d + A @ B


def tile_mma(a_mem, a_trans, m0, b_mem, b_trans, n0, depth, NT):
    """gdn_bwd_v4.cuh's tile_mma, lane by lane: out (16 x 8 NT) += A B."""
    out = np.zeros((16, 8 * NT))
    for k0 in range(0, depth, 32):
        af = []
        for hs in range(2):
            kk = k0 + 16 * hs
            if a_trans:
                addrs = [(kk + l % 8 + 8 * ((l >> 3) >> 1), m0 + 8 * ((l >> 3) & 1)) for l in range(32)]
            else:
                addrs = [(m0 + l % 8 + 8 * ((l >> 3) & 1), kk + 8 * ((l >> 3) >> 1)) for l in range(32)]
            af.append(ldsm_x4(a_mem, addrs, a_trans))
        for nt in range(NT):
            if b_trans:
                addrs = [(k0 + l, n0 + 8 * nt) for l in range(32)]
            else:
                addrs = [(n0 + 8 * nt + l % 8, k0 + 8 * (l >> 3)) for l in range(32)]
            bf = ldsm_x4(b_mem, addrs, b_trans)
            d = out[:, 8 * nt:8 * nt + 8]
            d = mma_frag(d, af[0], bf[:, 0:2])
            d = mma_frag(d, af[1], bf[:, 2:4])
            out[:, 8 * nt:8 * nt + 8] = d
    return out


def check_tile_mma():
    """Every (A, B) storage form of tile_mma against the plain product, at a warp's offsets."""
    rng = np.random.default_rng(5)
    ok = True
    for a_trans in (False, True):
        for b_trans in (False, True):
            for depth, NT, m0, n0 in ((64, 4, 32, 32), (128, 8, 48, 64)):
                A = rng.standard_normal((64, depth))  # [m][k]
                B = rng.standard_normal((depth, 128))  # [k][n]
                a_mem = A.T.copy() if a_trans else A
                b_mem = B if b_trans else B.T.copy()
                got = tile_mma(a_mem, a_trans, m0, b_mem, b_trans, n0, depth, NT)
                want = A[m0:m0 + 16] @ B[:, n0:n0 + 8 * NT]
                ok &= np.abs(got - want).max() < 1e-9
    return ok


# ---- cases ----------------------------------------------------------------------------------

def rel(a, b):
    return np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30)


def case(seed, B, T, H, HV, K, V, cu=None, h0=True, dht=True, l2norm=True, scale=None, mutate=None,
         label="", port=False, groups=2):
    rng = np.random.default_rng(seed)
    N = B if cu is None else len(cu) - 1
    q, k = rng.uniform(-1, 1, (B, T, H, K)), rng.uniform(-1, 1, (B, T, H, K))
    if not l2norm:
        k = k / np.sqrt(K)
    v = rng.uniform(-1, 1, (B, T, HV, V))
    g = np.log(1 / (1 + np.exp(-rng.standard_normal((B, T, HV))))) * 0.1
    beta = rng.uniform(0, 1, (B, T, HV))
    s0 = rng.uniform(-1, 1, (N, HV, K, V)) if h0 else None
    ds = rng.uniform(-1, 1, (N, HV, K, V)) if dht else None
    do = rng.uniform(-1, 1, (B, T, HV, V))
    sc = scale or K ** -0.5
    want = backward_tokens(q, k, v, g, beta, s0, ds, do, cu, sc, l2norm)
    worst = {}
    for mode, rnd in (("exact", lambda x: x), ("bf16", bf16)):
        args = [rnd(x) for x in (q, k, v, g, beta)]
        ref = want if mode == "exact" else backward_tokens(*args, s0, ds, rnd(do), cu, sc, l2norm)
        got = v4_backward(*args, s0, ds, rnd(do), cu, sc, l2norm, rnd, mutate, port, groups)
        hazard_count = got.pop("hazards", 0)
        if not h0:
            got.pop("dh0"), ref.pop("dh0")  # dh0 is only written when h0 is given
        errs = {name: rel(got[name], ref[name]) for name in got}
        if any(np.isnan(got[name]).any() for name in got):
            errs = {name: float("inf") for name in got}
        worst[mode] = errs
    ok = max(worst["exact"].values()) < 1e-9 and max(worst["bf16"].values()) < 1e-2 and hazard_count == 0
    label = ("[ports] " if port else "") + label
    print(f"{'PASS' if ok else 'FAIL'} B={B} T={T} H={H} HV={HV} K={K} V={V} {label:<40} "
          f"exact {max(worst['exact'].values()):.1e}  bf16 "
          + " ".join(f"{n} {e:.1e}" for n, e in worst["bf16"].items()), flush=True)
    return ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mutate", action="store_true", help="flip the sign of dbeta's X term")
    args = ap.parse_args()
    if args.mutate:
        ok = case(1, 1, 130, 1, 2, 16, 8, mutate="dbeta", label="mutated dbeta")
        print("mutation", "caught" if not ok else "NOT caught")
        return 0 if not ok else 1
    ok = finite_difference_check()
    ok &= check_b_trans_mapping()
    print("B-operand ldmatrix.trans mapping:", "ok" if ok else "WRONG")
    ok &= check_tile_mma()
    print("tile_mma, all four operand forms:", "ok" if ok else "WRONG")
    cases = [
        dict(seed=1, B=1, T=130, H=1, HV=2, K=16, V=8, label="T % 64 = 2, GQA 2"),
        dict(seed=2, B=2, T=64, H=2, HV=2, K=8, V=12, label="T = 64 (boundary), B=2"),
        dict(seed=3, B=1, T=128, H=1, HV=3, K=8, V=8, label="T = 128, GQA 3"),
        dict(seed=4, B=1, T=200, H=2, HV=4, K=8, V=8, cu=[0, 0, 1, 64, 65, 65, 200],
             label="varlen empty / 1 / 63 / 1 / 0 / 135"),
        dict(seed=5, B=1, T=129, H=1, HV=1, K=8, V=8, cu=[0, 1, 129], label="varlen 1, 128"),
        dict(seed=6, B=1, T=100, H=1, HV=2, K=8, V=8, h0=False, dht=False, label="no h0, no dht"),
        dict(seed=7, B=1, T=70, H=1, HV=2, K=8, V=8, l2norm=False, scale=0.3, label="no l2norm"),
        dict(seed=8, B=1, T=192, H=1, HV=2, K=128, V=128, label="K = V = 128"),
        dict(seed=9, B=1, T=140, H=1, HV=2, K=128, V=128, cu=[0, 0, 1, 65, 140], port=True,
             label="varlen 0 / 1 / 64 / 75, GQA 2"),
        dict(seed=12, B=1, T=130, H=1, HV=1, K=128, V=128, cu=[0, 130], port=True, groups=4,
             label="varlen 130, 64-column sweep"),
        dict(seed=10, B=2, T=64, H=2, HV=6, K=128, V=128, port=True, label="T = 64, GQA 3"),
        dict(seed=11, B=1, T=100, H=1, HV=1, K=128, V=128, l2norm=False, scale=0.3, h0=False, dht=False,
             port=True, label="no l2norm, no h0 / dht"),
    ]
    for c in cases:
        ok &= case(**c)
    print("ALL PASS" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
