"""Off-GPU check of attn_prefill's forward for NVIDIA's OpenCL (backends/opencl/attn_nv.cl),
transcribed from its code; run it after changing its tiles, swizzle, fragments or masks:

1. layouts: the swizzled local tiles (nv_at) read back through ldmatrix (x4, x4.trans)
   and through the plain-load variant (NV_LDSM=0) give every operand of every k-step of
   mma.sync m16n8k16 as the PTX ISA lays it out (A, B, C fragments by lane), and the
   8-lane phases of ldmatrix and the 32-bit fragment loads hit 32 distinct banks;
2. math: a lane-by-lane numpy transcription of the kernel (work-group slots for dense and
   varlen calls, longest blocks first, the Q block and the K / V tiles as nv_fetch and
   nv_put move them, warps skipping tiles they cannot see, masks, the online softmax in
   the log2 domain with quad shuffles, P rounded to the storage type, the gate and lse)
   against float64, on small cases: varlen with empty and length-1 sequences, GQA, keys
   longer and shorter than queries, lengths off the tile sizes, non-causal, D 64/128/256.

It checks the transcription against the PTX ISA's fragment and ldmatrix definitions, not
the hardware or NVIDIA's OpenCL compiler: the conformance runner on NVIDIA's platform is
the check on the GPU (docs/OPENCL.md, "attention on NVIDIA's OpenCL").

Usage: python3 tests/bench/ocl_nv_attn_emulation.py [--mutate NAME]   (numpy; ~1 min)
  --mutate swizzle|btrans|mask|slot: run with one index of the transcription broken;
  the check must fail (exit status 1)."""

import argparse
import math
import sys

import numpy as np

MUTATE = ""

LANE = np.arange(32)
G, T4 = LANE >> 2, LANE & 3


def bf16(x):
    """Round float32 values to bfloat16 (nearest even), kept as float32."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32)


def f16(x):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


class Tile:
    """attn_nv.cl's tile constants for head dim D."""

    def __init__(self, D):
        self.D = D
        self.W = 4 if D == 256 else 8
        self.BC = 32 if D == 256 else 64
        self.THREADS, self.BR, self.CHUNKS = 32 * self.W, 16 * self.W, D // 8
        self.PREFETCH = self.BC * self.CHUNKS // self.THREADS
        self.STEP = self.THREADS // self.CHUNKS

    def at(self, r, col):  # nv_at
        r, col = np.asarray(r), np.asarray(col)
        key = (r & 3) if MUTATE == "swizzle" else (r & 7)
        return r * self.D + (((col >> 3) ^ key) << 3) + (col & 7)


# ---- PTX ISA models ---------------------------------------------------------------------

def ldsm(mem, addr, trans=False):
    """ldmatrix.x4: lanes 8i..8i+7 give the rows of matrix i; register i of lane l holds
    row l / 4, columns 2 (l % 4) + {0, 1} of matrix i (of its transpose with .trans)."""
    regs = []
    for i in range(4):
        M = np.stack([mem[addr[8 * i + r] + np.arange(8)] for r in range(8)])
        if trans:
            M = M.T
        regs.append(np.stack([M[G, 2 * T4], M[G, 2 * T4 + 1]], axis=1))
    return regs


def ld32(mem, idx):
    return np.stack([mem[idx], mem[idx + 1]], axis=1)


def mma(d, a, b0, b1):
    """mma.sync.m16n8k16.row.col, f32 accumulators: fragments per the PTX ISA."""
    A = np.full((16, 16), np.nan)
    for reg, (ro, co) in zip(a, [(0, 0), (8, 0), (0, 8), (8, 8)]):
        A[G + ro, 2 * T4 + co], A[G + ro, 2 * T4 + co + 1] = reg[:, 0], reg[:, 1]
    B = np.full((16, 8), np.nan)
    for reg, ko in zip((b0, b1), (0, 8)):
        B[2 * T4 + ko, G], B[2 * T4 + ko + 1, G] = reg[:, 0], reg[:, 1]
    C = np.full((16, 8), np.nan)
    C[G, 2 * T4], C[G, 2 * T4 + 1], C[G + 8, 2 * T4], C[G + 8, 2 * T4 + 1] = d.T
    assert not np.isnan(A).any() and not np.isnan(B).any() and not np.isnan(C).any()
    R = (A @ B + C).astype(np.float32)
    return np.stack([R[G, 2 * T4], R[G, 2 * T4 + 1], R[G + 8, 2 * T4], R[G + 8, 2 * T4 + 1]], 1)


def shfl_xor(v, mask):
    return v[LANE ^ mask]


def banks_distinct(word_addrs):
    """True where 32-bit words at these addresses (bytes / 4) hit distinct banks or the
    same word (a broadcast)."""
    seen = {}
    for w in np.unique(word_addrs):
        if w % 32 in seen:
            return False
        seen[w % 32] = w
    return True


# ---- the kernel's fragment reads (nv_frag_a, nv_frag_b_rows, nv_frag_b_trans) -------

def frag_a(tile, mem, row0, kk, ldsm_on):
    if ldsm_on:
        return ldsm(mem, tile.at(row0 + (LANE & 15), kk * 16 + (LANE >> 4) * 8))
    c = kk * 16 + 2 * T4
    return [ld32(mem, tile.at(row0 + G + ro, c + co)) for ro, co in [(0, 0), (8, 0), (0, 8), (8, 8)]]


def frag_b_rows(tile, mem, n0, kk, ldsm_on):
    if ldsm_on:
        return ldsm(mem, tile.at(n0 + (LANE & 7) + ((LANE >> 4) << 3), kk * 16 + ((LANE >> 3) & 1) * 8))
    c = kk * 16 + 2 * T4
    return [ld32(mem, tile.at(n0 + G + ro, c + co)) for ro, co in [(0, 0), (0, 8), (8, 0), (8, 8)]]


def frag_b_trans(tile, mem, k0, c0, ldsm_on):
    if ldsm_on:
        hi = (LANE >> 4) if MUTATE != "btrans" else ((LANE >> 3) & 1)
        lo = ((LANE >> 3) & 1) if MUTATE != "btrans" else (LANE >> 4)
        return ldsm(mem, tile.at(k0 + (LANE & 7) + (lo << 3), c0 + hi * 8), trans=True)
    r = k0 + 2 * T4
    regs = []
    for i in range(4):
        row, col = r + (i & 1) * 8, c0 + G + (i >> 1) * 8
        regs.append(np.stack([mem[tile.at(row, col)], mem[tile.at(row + 1, col)]], 1))
    return regs


# ---- 1. layouts ---------------------------------------------------------------------------

def check_layouts(D):
    tile = Tile(D)
    rng = np.random.default_rng(D)
    X = rng.standard_normal((max(tile.BR, tile.BC), D)).astype(np.float32)
    mem = np.full(X.size, np.nan, np.float32)
    for r in range(X.shape[0]):
        for col in range(D):
            mem[tile.at(r, col)] = X[r, col]
    assert not np.isnan(mem).any(), "nv_at is not a bijection"
    ok = True
    for ldsm_on in (True, False):
        for kk in range(D // 16):
            a = frag_a(tile, mem, 16, kk, ldsm_on)  # rows 16..31 (warp 1)
            for reg, (ro, co) in zip(a, [(0, 0), (8, 0), (0, 8), (8, 8)]):
                ok &= np.array_equal(reg[:, 0], X[16 + G + ro, kk * 16 + 2 * T4 + co])
                ok &= np.array_equal(reg[:, 1], X[16 + G + ro, kk * 16 + 2 * T4 + co + 1])
            b = frag_b_rows(tile, mem, 16, kk, ldsm_on)  # B[k][n] = X[n][k]: keys 16..31
            for reg, (no, ko) in zip(b, [(0, 0), (0, 8), (8, 0), (8, 8)]):
                ok &= np.array_equal(reg[:, 0], X[16 + no + G, kk * 16 + ko + 2 * T4])
                ok &= np.array_equal(reg[:, 1], X[16 + no + G, kk * 16 + ko + 2 * T4 + 1])
        for k0 in range(0, 32, 16):
            for c0 in range(0, D, 16):
                b = frag_b_trans(tile, mem, k0, c0, ldsm_on)  # B[k][n] = X[k][n]
                for reg, (no, ko) in zip(b, [(0, 0), (0, 8), (8, 0), (8, 8)]):
                    ok &= np.array_equal(reg[:, 0], X[k0 + ko + 2 * T4, c0 + no + G])
                    ok &= np.array_equal(reg[:, 1], X[k0 + ko + 2 * T4 + 1, c0 + no + G])
    # Banks: each 8-lane phase of ldmatrix reads 8 rows of 16 bytes; the plain A / K
    # fragment loads read one 32-bit word per lane.
    banks = True
    for kk in range(D // 16):
        for addr in (tile.at(LANE & 15, kk * 16 + (LANE >> 4) * 8),
                     tile.at((LANE & 7) + ((LANE >> 4) << 3), kk * 16 + ((LANE >> 3) & 1) * 8),
                     tile.at((LANE & 7) + (((LANE >> 3) & 1) << 3), (kk % (D // 16)) * 16 + (LANE >> 4) * 8)):
            for p in range(4):
                words = np.concatenate([addr[8 * p + r] // 2 + np.arange(4) for r in range(8)])
                banks &= banks_distinct(words)
        c = kk * 16 + 2 * T4
        for ro, co in [(0, 0), (8, 0), (0, 8), (8, 8)]:
            banks &= banks_distinct(tile.at(G + ro, c + co) // 2)
    print(f"layouts D={D}: fragments {'ok' if ok else 'WRONG'}, banks {'conflict-free' if banks else 'CONFLICTS'}")
    return bool(ok and banks)


# ---- 2. math ------------------------------------------------------------------------------

def sequence_span(cu, n, T):
    if cu is None:
        return n, 0, T
    b = min(max(cu[n], 0), T)
    return 0, b, min(max(cu[n + 1], b), T)


def kernel(q, k, v, gate, cu_q, cu_k, N, scale, causal, rnd, ldsm_on):
    """attn_fwd_nv over every work-group; q [B,Tq,Hq,D], k/v [B,Tk,Hkv,D] (values already
    in the storage type), returns o (NaN where never written) and lse."""
    B, Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    tile = Tile(D)
    BR, BC = tile.BR, tile.BC
    o = np.full(q.shape, np.nan, np.float32)
    lse = np.full((B, Hq, Tq), np.nan, np.float32)
    slots = Tq // BR + N + 1 if cu_q is not None else B * ((Tq + BR - 1) // BR)

    def slot_start(n):
        return min(max(cu_q[n], 0), Tq) // BR + n + (1 if MUTATE == "slot" else 0) * (n == 1)

    for group in range(slots * Hq):
        head, slot = group % Hq, slots - 1 - group // Hq
        if cu_q is None:
            per = (Tq + BR - 1) // BR
            n, c = slot // per, slot % per
        else:
            lo, hi = 0, N - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if slot_start(mid) <= slot:
                    lo = mid
                else:
                    hi = mid - 1
            n, c = lo, slot - slot_start(lo)
            if c < 0:
                continue
        qrow, qb, qe = sequence_span(cu_q, n, Tq)
        krow, kb, ke = sequence_span(cu_k, n, Tk)
        Lq, Lk = qe - qb, ke - kb
        m0 = c * BR
        if m0 >= Lq:
            continue
        kvh = head // (Hq // Hkv)
        shift = Lk - Lq
        kend = min(Lk, m0 + BR + shift) if causal else Lk
        ntiles = (kend + BC - 1) // BC if kend > 0 else 0

        def fetch(src, row, begin, head_, r0, limit):  # nv_fetch: rows r0.. of the sequence
            regs = np.zeros((tile.THREADS, tile.PREFETCH, 8), np.float32)
            for tid in range(tile.THREADS):
                r, ch = tid // tile.CHUNKS, tid % tile.CHUNKS
                for i in range(tile.PREFETCH):
                    rr = r0 + r + i * tile.STEP
                    if rr < limit:
                        regs[tid, i] = src[row, begin + rr, head_, ch * 8:ch * 8 + 8]
            return regs

        def put(mem, base, regs):  # nv_put
            for tid in range(tile.THREADS):
                r, ch = tid // tile.CHUNKS, tid % tile.CHUNKS
                for i in range(tile.PREFETCH):
                    at = base + tile.at(r + i * tile.STEP, ch * 8)
                    mem[at:at + 8] = regs[tid, i]

        sQ = np.full(BR * D, np.nan, np.float32)
        sKV = np.full(BC * D, np.nan, np.float32)
        for part in range(BR // BC):
            put(sQ, part * BC * D, fetch(q, qrow, qb, head, m0 + part * BC, Lq))
        c2 = np.float32(scale * math.log2(math.e))
        acc = np.zeros((tile.W, D // 8, 32, 4), np.float32)
        m = np.full((tile.W, 2, 32), -np.inf, np.float32)
        l = np.zeros((tile.W, 2, 32), np.float32)
        for t in range(ntiles):
            j0 = t * BC
            put(sKV, 0, fetch(k, krow, kb, kvh, j0, Lk))
            probs = [None] * tile.W
            for warp in range(tile.W):
                w0 = m0 + warp * 16
                row_g = w0 + G
                if causal and j0 > w0 + 15 + shift:
                    continue  # inactive warp
                sc = np.zeros((BC // 8, 32, 4), np.float32)
                for kk in range(D // 16):
                    a = frag_a(tile, sQ, warp * 16, kk, ldsm_on)
                    for np_ in range(BC // 16):
                        b = frag_b_rows(tile, sKV, np_ * 16, kk, ldsm_on)
                        sc[2 * np_] = mma(sc[2 * np_], a, b[0], b[1])
                        sc[2 * np_ + 1] = mma(sc[2 * np_ + 1], a, b[2], b[3])
                masked = j0 + BC > Lk or (causal and j0 + BC - 1 > w0 + shift)
                x = sc * c2
                if masked:
                    for j in range(BC // 8):
                        for e in range(4):
                            key = j0 + 8 * j + 2 * T4 + (e & 1)
                            row = row_g + 8 * (e >> 1)
                            hide = (key >= Lk) | ((key > row + shift + (1 if MUTATE == "mask" else 0)) & bool(causal))
                            x[j, :, e] = np.where(hide, -np.inf, x[j, :, e])
                for r in range(2):
                    mx = np.max(np.maximum(x[:, :, 2 * r], x[:, :, 2 * r + 1]), axis=0)
                    mx = np.maximum(mx, shfl_xor(mx, 1))
                    mx = np.maximum(mx, shfl_xor(mx, 2))
                    m_new = np.maximum(m[warp, r], mx)
                    base = np.where(m_new == -np.inf, 0, m_new).astype(np.float32)
                    alpha = np.exp2(m[warp, r] - base).astype(np.float32)
                    m[warp, r] = m_new
                    x[:, :, 2 * r] = np.exp2(x[:, :, 2 * r] - base)
                    x[:, :, 2 * r + 1] = np.exp2(x[:, :, 2 * r + 1] - base)
                    s = np.zeros(32, np.float32)
                    for j in range(BC // 8):
                        s = s + x[j, :, 2 * r] + x[j, :, 2 * r + 1]
                    l[warp, r] = l[warp, r] * alpha + s
                    acc[warp, :, :, 2 * r] *= alpha
                    acc[warp, :, :, 2 * r + 1] *= alpha
                probs[warp] = x
            put(sKV, 0, fetch(v, krow, kb, kvh, j0, Lk))
            for warp in range(tile.W):
                x = probs[warp]
                if x is None:
                    continue
                for ks in range(BC // 16):
                    pa = [rnd(np.stack([x[2 * ks + hi, :, e0], x[2 * ks + hi, :, e0 + 1]], 1))
                          for hi, e0 in [(0, 0), (0, 2), (1, 0), (1, 2)]]
                    for np_ in range(D // 16):
                        b = frag_b_trans(tile, sKV, ks * 16, np_ * 16, ldsm_on)
                        acc[warp, 2 * np_] = mma(acc[warp, 2 * np_], pa, b[0], b[1])
                        acc[warp, 2 * np_ + 1] = mma(acc[warp, 2 * np_ + 1], pa, b[2], b[3])
        for warp in range(tile.W):
            row_g = m0 + warp * 16 + G
            for r in range(2):
                tot = l[warp, r] + shfl_xor(l[warp, r], 1)
                tot = tot + shfl_xor(tot, 2)
                for lane in range(32):
                    i = row_g[lane] + 8 * r
                    if i >= Lq:
                        continue
                    s = tot[lane]
                    inv = np.float32(1) / s if s > 0 else np.float32(0)
                    tt = qb + i
                    if lane & 3 == 0:
                        lse[qrow, head, tt] = (m[warp, r, lane] + np.log2(s)) * math.log(2) if s > 0 else -np.inf
                    for d in range(D // 8):
                        col = 8 * d + 2 * (lane & 3)
                        xs = acc[warp, d, lane, 2 * r:2 * r + 2] * inv
                        if gate is not None:
                            xs = xs / (1 + np.exp(-gate[qrow, tt, head, col:col + 2]))
                        o[qrow, tt, head, col:col + 2] = rnd(xs)
    return o, lse


def reference(q, k, v, gate, spans, scale, causal):
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    o = np.zeros(q.shape)
    lse = np.full((q.shape[0], q.shape[2], q.shape[1]), -np.inf)
    G_ = q.shape[2] // k.shape[2]
    for row, qb, qe, kb, ke in spans:
        Lq, Lk = qe - qb, ke - kb
        for h in range(q.shape[2]):
            s = scale * q[row, qb:qe, h] @ k[row, kb:ke, h // G_].T
            if causal:
                s = np.where(np.arange(Lk)[None, :] > np.arange(Lq)[:, None] + Lk - Lq, -np.inf, s)
            mx = s.max(axis=1, initial=-np.inf, keepdims=True)
            mx = np.where(np.isfinite(mx), mx, 0)
            p = np.exp(s - mx)
            tot = p.sum(axis=1, keepdims=True)
            o[row, qb:qe, h] = np.where(tot > 0, p @ v[row, kb:ke, h // G_] / np.where(tot > 0, tot, 1), 0)
            lse[row, h, qb:qe] = np.where(tot[:, 0] > 0, np.log(np.where(tot[:, 0] > 0, tot[:, 0], 1)) + mx[:, 0], -np.inf)
    if gate is not None:
        o = o / (1 + np.exp(-gate.astype(np.float64)))
    return o, lse


def case(name, D, Hq, Hkv, causal, lens_q, lens_k=None, B=None, dtype="bf16", gate=False, ldsm_on=True, seed=0):
    rng = np.random.default_rng(seed)
    rnd = bf16 if dtype == "bf16" else f16
    if B is not None:  # dense: B rows of lens_q[0] queries and lens_k[0] keys
        Tq, Tk, N, cu_q, cu_k = lens_q[0], lens_k[0], B, None, None
        spans = [(b, 0, Tq, 0, Tk) for b in range(B)]
    else:
        lens_k = lens_k or lens_q
        B, N = 1, len(lens_q)
        cu_q, cu_k = np.concatenate([[0], np.cumsum(lens_q)]), np.concatenate([[0], np.cumsum(lens_k)])
        Tq, Tk = int(cu_q[-1]), int(cu_k[-1])
        spans = [(0, cu_q[n], cu_q[n + 1], cu_k[n], cu_k[n + 1]) for n in range(N)]
    q = rnd(rng.standard_normal((B, Tq, Hq, D)))
    k = rnd(rng.standard_normal((B, Tk, Hkv, D)))
    v = rnd(rng.standard_normal((B, Tk, Hkv, D)))
    g = rnd(rng.standard_normal((B, Tq, Hq, D))) if gate else None
    scale = D ** -0.5
    o, lse = kernel(q, k, v, g, cu_q, cu_k, N, scale, causal, rnd, ldsm_on)
    ro, rl = reference(q, k, v, g, spans, scale, causal)
    written = not np.isnan(o).any() and not np.isnan(lse).any()
    err = float(np.max(np.abs(o - ro), initial=0)) if written else float("nan")
    finite = np.isfinite(rl)
    lerr = float(np.max(np.abs(lse[finite] - rl[finite]), initial=0)) if written else float("nan")
    same_inf = written and np.array_equal(np.isfinite(lse), finite)
    tol = 2e-2 if dtype == "bf16" else 4e-3  # P and o rounded to the storage type
    ok = written and same_inf and err <= tol and lerr <= 1e-3
    print(f"{'ok  ' if ok else 'FAIL'} {name}: D={D} Hq/Hkv={Hq}/{Hkv} causal={int(causal)} {dtype} "
          f"ldsm={int(ldsm_on)} max|o - ref| {err:.2e} max|lse - ref| {lerr:.2e}"
          + ("" if written else " (rows never written)") + ("" if same_inf or not written else " (lse -inf rows differ)"))
    return ok


def main():
    global MUTATE
    parser = argparse.ArgumentParser()
    parser.add_argument("--mutate", default="", choices=["", "swizzle", "btrans", "mask", "slot"])
    parser.add_argument("--quick", action="store_true")
    MUTATE = parser.parse_args().mutate
    ok = all([check_layouts(D) for D in (64, 128, 256)])
    cases = [
        ("varlen, empty and length-1 sequences, GQA", dict(D=64, Hq=4, Hkv=2, causal=True,
                                                           lens_q=[5, 0, 1, 70, 131], seed=1)),
        ("keys longer than queries (prefix), gate", dict(D=64, Hq=2, Hkv=1, causal=True, lens_q=[3, 40, 1],
                                                         lens_k=[70, 100, 1], gate=True, seed=2)),
        ("keys shorter than queries, empty keys", dict(D=64, Hq=3, Hkv=1, causal=True, lens_q=[20, 9, 0],
                                                       lens_k=[7, 0, 5], seed=3)),
        ("non-causal varlen", dict(D=64, Hq=2, Hkv=2, causal=False, lens_q=[33, 1], lens_k=[65, 17], seed=4)),
        ("dense B=2, off the tile, plain loads", dict(D=64, Hq=2, Hkv=1, causal=True, lens_q=[77], lens_k=[77],
                                                       B=2, ldsm_on=False, seed=5)),
        ("D=128 varlen GQA f16, gate", dict(D=128, Hq=4, Hkv=1, causal=True, lens_q=[1, 90], lens_k=[1, 130],
                                            dtype="f16", gate=True, seed=6)),
        ("D=256 varlen GQA", dict(D=256, Hq=2, Hkv=1, causal=True, lens_q=[67, 0, 2], lens_k=[100, 3, 2], seed=7)),
        ("D=256 plain loads, dense", dict(D=256, Hq=2, Hkv=2, causal=True, lens_q=[40], lens_k=[45], B=1,
                                          ldsm_on=False, seed=8)),
    ]
    if parser.parse_args().quick:
        cases = cases[:2]
    for name, kw in cases:
        ok &= case(name, **kw)
    print("all ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
