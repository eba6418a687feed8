"""A lane-level port of backends/cuda/gdn_bwd_v4_sweep.cu's reverse_dh_kernel for the
emulation (cuda_gdn_bwd_v4_emulation.py): each warp's registers as [lane] arrays,
ldmatrix (.trans) and mma.sync m16n8k16 by their PTX fragment definitions, the
kernel's addresses, packings, factor positions and triangular skips line by line.
A packed 16-bit register is a [32, 2] array (rounded by rnd)."""

import numpy as np

C, DK = 64, 128
L32 = np.arange(32)
G_, T4, QUAD, R8 = L32 >> 2, L32 & 3, L32 >> 3, L32 & 7


def ldsm(mem, rows, cols, trans):
    """ldmatrix.x4: lane l names row `rows[l]`, columns cols[l]..+7 of matrix l / 8; returns
    [32, 4, 2]: per lane, per matrix i, the pair (l / 4, 2 (l % 4) + {0, 1}), transposed:
    (2 (l % 4) + {0, 1}, l / 4)."""
    R = mem[rows[:, None], cols[:, None] + np.arange(8)]  # [32 named rows, 8]
    out = np.zeros((32, 4, 2))
    for i in range(4):
        if trans:
            out[:, i, 0] = R[8 * i + 2 * T4, G_]
            out[:, i, 1] = R[8 * i + 2 * T4 + 1, G_]
        else:
            out[:, i, 0] = R[8 * i + G_, 2 * T4]
            out[:, i, 1] = R[8 * i + G_, 2 * T4 + 1]
    return out


def mma(d, a, b0, b1):
    """d [32, 4] += a [32, 4, 2] b: the m16n8k16 fragments of tensor_core.cuh's mma."""
    A, B, D = np.zeros((16, 16)), np.zeros((16, 8)), np.zeros((16, 8))
    for k in range(2):
        A[G_, 2 * T4 + k], A[G_ + 8, 2 * T4 + k] = a[:, 0, k], a[:, 1, k]
        A[G_, 2 * T4 + 8 + k], A[G_ + 8, 2 * T4 + 8 + k] = a[:, 2, k], a[:, 3, k]
        B[2 * T4 + k, G_], B[2 * T4 + 8 + k, G_] = b0[:, k], b1[:, k]
        D[G_, 2 * T4 + k], D[G_ + 8, 2 * T4 + k] = d[:, k], d[:, 2 + k]
    D = D + A @ B
    out = np.zeros((32, 4))
    for k in range(2):
        out[:, k], out[:, 2 + k] = D[G_, 2 * T4 + k], D[G_ + 8, 2 * T4 + k]
    return out


def pack(rnd, lo, hi):
    return np.stack([rnd(lo), rnd(hi)], 1)


def times_lower(rnd, a, lower, out):
    for nt in range(8):
        for kp in range(2):
            if 32 * kp + 31 < 8 * nt:
                continue
            b = ldsm(lower, 32 * kp + L32, np.full(32, 8 * nt), True)
            out[:, nt] = mma(out[:, nt], a[2 * kp], b[:, 0], b[:, 1])
            out[:, nt] = mma(out[:, nt], a[2 * kp + 1], b[:, 2], b[:, 3])


def rows_as_a(rnd, acc, factor):
    a = []
    for np_ in range(4):
        regs = []
        for hs in range(2):
            nt = 2 * np_ + hs
            i0 = nt * 8 + 2 * T4
            fa = factor[i0] if factor is not None else 1.0
            fb = factor[i0 + 1] if factor is not None else 1.0
            regs += [pack(rnd, fa * acc[:, nt, 0], fb * acc[:, nt, 1]),
                     pack(rnd, fa * acc[:, nt, 2], fb * acc[:, nt, 3])]
        a.append(np.stack(regs, 1))
    return a


def reverse_warp(chunks, warp, c0, dht, rnd):
    """Column group `warp` (columns c0 + 16 warp ..+15) of reverse_dh_kernel: its helper warp
    (W1, W2 into the handoff) and its chain warp (dH^T). chunks: the sequence's chunks from the
    last, each a dict of the stage's tiles: k, q [C, 128], o (dO columns c0.., [C, kBV]), T, M
    [C, C], f [C, 4], gamma_last. dht: [K, V] or None. Returns the dH^T rows the chain warp
    stores per chunk (v = c0 + 16 warp + 0..15) and its dh0 rows."""
    my_v = c0 + 16 * warp + G_
    dh = np.zeros((32, 16, 4))
    for nt in range(16):
        for e in range(4):
            kd, v = nt * 8 + 2 * T4 + (e & 1), my_v + 8 * (e >> 1)
            dh[:, nt, e] = dht[kd, v] if dht is not None else 0.0
    stored = []
    for ch in chunks:
        sk, sq, so, sf = ch["k"], ch["q"], ch["o"], ch["f"]
        # helper warp: W1 = dO^T P, W2 = (dO^T diag(f2)) Q, as [lane][reg] (the handoff)
        oa = [ldsm(so, (2 * np_ + (QUAD >> 1)) * 8 + R8, 16 * warp + (QUAD & 1) * 8, True) for np_ in range(4)]
        w1 = np.zeros((32, 8, 4))
        times_lower(rnd, oa, ch["M"], w1)
        for np_ in range(4):
            for hs in range(2):
                i0 = (2 * np_ + hs) * 8 + 2 * T4
                fa, fb = sf[i0, 2], sf[i0 + 1, 2]
                for r in range(2):
                    x = oa[np_][:, 2 * hs + r].copy()
                    oa[np_][:, 2 * hs + r] = pack(rnd, fa * x[:, 0], fb * x[:, 1])
        w2 = np.zeros((32, 16, 4))
        for nt in range(16):
            for kp in range(2):
                b = ldsm(sq, kp * 32 + L32, np.full(32, nt * 8), True)
                w2[:, nt] = mma(w2[:, nt], oa[2 * kp], b[:, 0], b[:, 1])
                w2[:, nt] = mma(w2[:, nt], oa[2 * kp + 1], b[:, 2], b[:, 3])
        # chain warp
        out = np.full((16, DK), np.nan)  # rows v - (c0 + 16 warp)
        for nt in range(16):
            for e in range(4):
                out[G_ + 8 * (e >> 1), nt * 8 + 2 * T4 + (e & 1)] = rnd(dh[:, nt, e])
        stored.append(out)
        du = np.zeros((32, 8, 4))
        for kp in range(4):
            ha = []
            for hs in range(2):
                nt = 4 * kp + 2 * hs
                ha.append(np.stack([pack(rnd, dh[:, nt, 0], dh[:, nt, 1]), pack(rnd, dh[:, nt, 2], dh[:, nt, 3]),
                                    pack(rnd, dh[:, nt + 1, 0], dh[:, nt + 1, 1]),
                                    pack(rnd, dh[:, nt + 1, 2], dh[:, nt + 1, 3])], 1))
            for nt in range(8):
                b = ldsm(sk, nt * 8 + R8, kp * 32 + QUAD * 8, False)
                du[:, nt] = mma(du[:, nt], ha[0], b[:, 0], b[:, 1])
                du[:, nt] = mma(du[:, nt], ha[1], b[:, 2], b[:, 3])
        for nt in range(8):
            i0 = nt * 8 + 2 * T4
            fa, fb = sf[i0, 3], sf[i0 + 1, 3]
            du[:, nt, 0] = fa * du[:, nt, 0] + w1[:, nt, 0]
            du[:, nt, 1] = fb * du[:, nt, 1] + w1[:, nt, 1]
            du[:, nt, 2] = fa * du[:, nt, 2] + w1[:, nt, 2]
            du[:, nt, 3] = fb * du[:, nt, 3] + w1[:, nt, 3]
        ua = rows_as_a(rnd, du, None)
        yt = np.zeros((32, 8, 4))
        times_lower(rnd, ua, ch["T"], yt)
        ua = rows_as_a(rnd, -yt, sf[:, 1])
        for nt in range(16):
            dh[:, nt] = ch["gamma_last"] * dh[:, nt] + w2[:, nt]
            for kp in range(2):
                b = ldsm(sk, kp * 32 + L32, np.full(32, nt * 8), True)
                dh[:, nt] = mma(dh[:, nt], ua[2 * kp], b[:, 0], b[:, 1])
                dh[:, nt] = mma(dh[:, nt], ua[2 * kp + 1], b[:, 2], b[:, 3])
    dh0 = np.zeros((16, DK))
    for nt in range(16):
        for e in range(4):
            dh0[G_ + 8 * (e >> 1), nt * 8 + 2 * T4 + (e & 1)] = dh[:, nt, e]
    return stored, dh0
