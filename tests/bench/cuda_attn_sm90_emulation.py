"""Off-GPU checks of the sm_90a attention forward (backends/cuda/attn_prefill_sm90.cu),
transcribed from its code; run them after changing its tiles, offsets or pipeline:

1. layouts: TMA's 128-byte-swizzle writes of Q, K, V column blocks and wgmma's
   descriptor reads (K-major Q and K, N-major V) with the kernel's offsets read
   back every operand of every k-step, both warpgroups, both stages;
2. pipeline: random interleavings of the producer / consumer mbarrier protocol
   (parity waits, TMA writes landing late, wgmma reads live from issue to their
   wait) never read a stale tile, overwrite a stage being read, or deadlock;
3. math: a thread-by-thread numpy transcription of the consumer (fragment
   layouts, tiles walked last-first, the overlapped P V, masks and n_full, the
   V tail zeroing against NaN neighbours, the epilogue) against float64.

These check the transcription's arithmetic against the hardware model of the PTX
ISA (swizzle on address bits 4-6 by 7-9, descriptor lbo/sbo), not the hardware:
tests/bench/cuda_attn_check.py is the check on the GPU.

Usage: python3 tests/bench/cuda_attn_sm90_emulation.py   (numpy; ~30 s)"""

import math
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sm90_emulation import (Bar, bf16, fetch, frag, interleave, read_kmajor, read_mnmajor,  # noqa: E402
                            tma_store, unfrag)


# ---- 1. layouts -------------------------------------------------------------------------

def check(D, Bc, Br=128, stage=1):
    rng = np.random.default_rng(D)
    Q = rng.integers(0, 60000, (Br, D)).astype(np.uint16)
    K = rng.integers(0, 60000, (Bc, D)).astype(np.uint16)
    V = rng.integers(0, 60000, (Bc, D)).astype(np.uint16)
    QB, KVB = Br * D * 2, Bc * D * 2
    qblock, kvblock = Br * 128, Bc * 128
    sQ = 0; sK = sQ + QB; sV = sK + 2 * KVB
    smem = np.zeros((sV + 2 * KVB) // 2, np.uint16)
    for cb in range(D // 64):
        tma_store(smem, sQ + cb * qblock, Q[:, 64 * cb:64 * cb + 64])
        tma_store(smem, sK + stage * KVB + cb * kvblock, K[:, 64 * cb:64 * cb + 64])
        tma_store(smem, sV + stage * KVB + cb * kvblock, V[:, 64 * cb:64 * cb + 64])
    for wg in range(2):
        q_start = sQ + wg * 64 * 128
        k_start = sK + stage * KVB
        # S: sum over kk of A(64x16) B^T(Bc x 16)
        for kk in range(D // 16):
            qo = (kk // 4) * qblock + (kk % 4) * 32
            ko = (kk // 4) * kvblock + (kk % 4) * 32
            a = read_kmajor(smem, q_start + qo, 64, 1024)
            b = read_kmajor(smem, k_start + ko, Bc, 1024)
            assert (a == Q[64 * wg:64 * wg + 64, 16 * kk:16 * kk + 16]).all(), ("Q", D, wg, kk)
            assert (b == K[:, 16 * kk:16 * kk + 16]).all(), ("K", D, kk)
        v_start = sV + stage * KVB
        for ks in range(Bc // 16):
            b = read_mnmajor(smem, v_start + ks * 2048, D, kvblock, 1024)
            assert (b == V[16 * ks:16 * ks + 16, :]).all(), ("V", D, ks)
    # alignment of every descriptor start's pattern (base offset 0): 1024-aligned bases
    assert (sK + stage * KVB) % 1024 == 0 and (sV + stage * KVB) % 1024 == 0 and kvblock % 1024 == 0
    print(f"D={D} Bc={Bc}: Q, K (K-major) and V (MN-major) operands read back as written")


# ---- 2. pipeline ------------------------------------------------------------------------

def run(ntiles, seed):
    rnd = random.Random(seed)
    bars = {"q": Bar(1)}
    for st in range(2):
        bars[f"kf{st}"] = Bar(1); bars[f"vf{st}"] = Bar(1)
        bars[f"ke{st}"] = Bar(8); bars[f"ve{st}"] = Bar(8)
    content = {}      # stage -> tag
    writing = {}      # stage -> count of writes in flight
    reading = {}      # stage -> set of readers

    def producer():
        yield (bars["q"], "Q", ("Q", 0))
        order = []
        for i in range(ntiles):
            order.append(("K", i))
            if i > 0: order.append(("V", i - 1))
        order.append(("V", ntiles - 1))
        for t, i in order:
            st = i & 1
            e = f"{'k' if t == 'K' else 'v'}e{st}"
            yield from bars[e].wait(((i >> 1) & 1) ^ 1)
            yield (bars[f"{'k' if t == 'K' else 'v'}f{st}"], f"{t}{st}", (t, i))

    def warp(w):
        def read(stage, tag, who):
            assert content.get(stage) == tag, (stage, content.get(stage), tag)
            assert not writing.get(stage), ("write in flight during read", stage)
            reading.setdefault(stage, set()).add(who)
        def end_read(stage, tag, who):
            assert content.get(stage) == tag and not writing.get(stage), ("overwritten while read", stage)
            reading[stage].discard(who)
        groups = []
        yield from bars["q"].wait(0)
        yield from bars["kf0"].wait(0)
        read("Q", ("Q", 0), w); read("K0", ("K", 0), w); yield None
        end_read("K0", ("K", 0), w); bars["ke0"].arrive(); yield None
        for i in range(1, ntiles):
            st, prev = i & 1, (i - 1) & 1
            yield from bars[f"kf{st}"].wait((i >> 1) & 1)
            read(f"K{st}", ("K", i), w); yield None
            yield from bars[f"vf{prev}"].wait(((i - 1) >> 1) & 1)
            read(f"V{prev}", ("V", i - 1), w); yield None
            end_read(f"K{st}", ("K", i), w); bars[f"ke{st}"].arrive(); yield None
            end_read(f"V{prev}", ("V", i - 1), w); bars[f"ve{prev}"].arrive(); yield None
        last = (ntiles - 1) & 1
        yield from bars[f"vf{last}"].wait(((ntiles - 1) >> 1) & 1)
        read(f"V{last}", ("V", ntiles - 1), w); yield None
        end_read(f"V{last}", ("V", ntiles - 1), w)

    interleave(rnd, [producer()] + [warp(w) for w in range(8)], 100000, content, reading, writing)


# ---- 3. math ----------------------------------------------------------------------------

LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453


def reference(q, k, v, spans, scale, causal):
    Tq, Hq, D = q.shape; Hkv = k.shape[1]; G = Hq // Hkv
    o = np.zeros_like(q); lse = np.full((Hq, Tq), -np.inf)
    for q0, q1, k0, k1 in spans:
        Lq, Lk = q1 - q0, k1 - k0
        for h in range(Hq):
            s = scale * q[q0:q1, h] @ k[k0:k1, h // G].T
            i = np.arange(Lq)[:, None]; j = np.arange(Lk)[None, :]
            mask = (j <= i + Lk - Lq) if causal else np.ones((Lq, Lk), bool)
            s = np.where(mask, s, -np.inf)
            for r in range(Lq):
                if mask[r].any():
                    m = s[r].max(); p = np.exp(s[r] - m); l = p.sum()
                    o[q0 + r, h] = p @ v[k0:k1, h // G] / l; lse[h, q0 + r] = m + math.log(l)
    return o, lse


def emulate(q, k, v, spans, scale, causal, D):
    Br, Bc = 128, (80 if D == 256 else 128)
    Tq, Hq, _ = q.shape; Hkv = k.shape[1]; G = Hq // Hkv
    o_out = np.full_like(q, np.nan); lse_out = np.full((Hq, Tq), np.nan)
    c2 = scale * LOG2E
    warp = np.repeat(np.arange(4), 32); lane = np.tile(np.arange(32), 4)
    g, t = lane >> 2, lane & 3
    for (q0, q1, k0, k1) in spans:
        Lq, Lk = q1 - q0, k1 - k0; off = Lk - Lq
        for c in range((Lq + Br - 1) // Br):
            m0 = c * Br
            kend = min(Lk, min(m0 + Br, Lq) + off) if causal else Lk
            ntiles = (kend + Bc - 1) // Bc if kend > 0 else 0
            for head in range(Hq):
                kvh = head // G
                Qt = np.zeros((Br, D))
                for r in range(Br):
                    if q0 + m0 + r < Tq: Qt[r] = q[q0 + m0 + r, head]
                tail = Lk - (ntiles - 1) * Bc
                for wg in range(2):
                    row0 = m0 + wg * 64 + warp * 16 + g  # [128]
                    n_full = Lk // Bc
                    if causal:
                        lim = m0 + wg * 64 + off + 1
                        n_full = min(n_full, lim // Bc if lim > 0 else 0)
                    o = np.zeros((128, D // 8, 4)); m = np.full((128, 2), -np.inf); l = np.zeros((128, 2))
                    # fragment coordinates: sc[th, j, e] = S[row0 - m0 - wg*64 + 8*(e>>1), 8j + 2t + (e&1)]
                    def qmax(x):  # over the quad's 4 lanes (lanes sharing g within a warp)
                        return x.reshape(4, 8, 4).max(axis=2).repeat(4, axis=1).reshape(128)
                    def qsum(x):
                        return x.reshape(4, 8, 4).sum(axis=2).repeat(4, axis=1).reshape(128)
                    def softmax(sc, i):
                        tile = ntiles - 1 - i
                        key0 = tile * Bc + 2 * t
                        if tile >= n_full:
                            for j in range(Bc // 8):
                                for e in range(4):
                                    key = key0 + 8 * j + (e & 1); row = row0 + 8 * (e >> 1)
                                    bad = (key >= Lk) | ((key > row + off) if causal else False)
                                    sc[:, j, e] = np.where(bad, -np.inf, sc[:, j, e])
                        alpha = np.zeros((128, 2))
                        for r in range(2):
                            mx = np.maximum(sc[:, :, 2 * r], sc[:, :, 2 * r + 1]).max(axis=1)
                            m_new = np.maximum(m[:, r], qmax(mx) * c2)
                            base = np.where(m_new == -np.inf, 0.0, m_new)
                            alpha[:, r] = np.exp2(m[:, r] - base)
                            m[:, r] = m_new
                            for e in (2 * r, 2 * r + 1):
                                sc[:, :, e] = np.exp2(sc[:, :, e] * c2 - base[:, None])
                            l[:, r] = l[:, r] * alpha[:, r] + (sc[:, :, 2 * r] + sc[:, :, 2 * r + 1]).sum(axis=1)
                        return alpha
                    def qk(i):
                        tile = ntiles - 1 - i
                        Kt = fetch(k, kvh, k0 + tile * Bc, Bc, k1)
                        with np.errstate(invalid="ignore"):
                            return frag(Qt[wg * 64:wg * 64 + 64] @ Kt.T, Bc)
                    def pv(pa, i):
                        tile = ntiles - 1 - i
                        Vt = fetch(v, kvh, k0 + tile * Bc, Bc, k1)
                        if i == 0 and tail < Bc: Vt[tail:] = 0.0  # zero_v_tail
                        P = unfrag(pa, Bc)
                        return frag(P @ Vt, D)
                    if ntiles > 0:
                        sc = qk(0); softmax(sc, 0); pa = bf16(sc)
                        for i in range(1, ntiles):
                            sc = qk(i)
                            acc = pv(pa, i - 1)
                            alpha = softmax(sc, i)
                            o = o + acc
                            o[:, :, 0:2] *= alpha[:, None, 0:1]; o[:, :, 2:4] *= alpha[:, None, 1:2]
                            pa = bf16(sc)
                        o = o + pv(pa, ntiles - 1)
                    for r in range(2):
                        s = qsum(l[:, r]); i_row = row0 + 8 * r
                        inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1), 0.0)
                        for th in range(128):
                            if i_row[th] >= Lq: continue
                            if t[th] == 0:
                                lse_out[head, q0 + i_row[th]] = ((m[th, r] + math.log2(s[th])) * LN2
                                                                 if s[th] > 0 else -np.inf)
                            for j in range(D // 8):
                                col = 8 * j + 2 * t[th]
                                o_out[q0 + i_row[th], head, col] = o[th, j, 2 * r] * inv[th]
                                o_out[q0 + i_row[th], head, col + 1] = o[th, j, 2 * r + 1] * inv[th]
    return o_out, lse_out


def case(D, lens_q, lens_k, Hq, Hkv, causal, seed, scale=None):
    rng = np.random.default_rng(seed)
    Tq, Tk = sum(lens_q), sum(lens_k)
    q = bf16(rng.standard_normal((Tq, Hq, D))); k = bf16(rng.standard_normal((Tk, Hkv, D)))
    v = bf16(rng.standard_normal((Tk, Hkv, D)))
    cq = np.concatenate([[0], np.cumsum(lens_q)]); ck = np.concatenate([[0], np.cumsum(lens_k)])
    spans = [(cq[n], cq[n + 1], ck[n], ck[n + 1]) for n in range(len(lens_q))]
    sc = scale or D ** -0.5
    o, lse = emulate(q, k, v, spans, sc, causal, D)
    ro, rl = reference(q, k, v, spans, sc, causal)
    assert np.isfinite(o).all(), "unwritten or NaN output"
    err = np.linalg.norm(o - ro) / max(np.linalg.norm(ro), 1e-30)
    fin = np.isfinite(rl)
    assert (np.isinf(lse) == ~fin).all() and (lse[~fin] < 0).all(), "lse -inf pattern"
    lerr = np.abs(lse[fin] - rl[fin]).max() if fin.any() else 0.0
    print(f"D={D} lens_q={lens_q} lens_k={lens_k} {Hq}/{Hkv} causal={causal}: o rel {err:.1e}, lse max abs {lerr:.1e}")
    assert err < 1e-2 and lerr < 1e-3


def main():
    for D, Bc in ((64, 128), (128, 128), (256, 80)):
        check(D, Bc)
    for ntiles in range(1, 9):
        for seed in range(300):
            run(ntiles, seed)
    print("pipeline: ntiles 1..8 x 300 random interleavings: no stale read, no overwrite while read, no deadlock")
    case(256, [0, 1, 130, 77, 0, 200], [5, 1, 130, 300, 4, 200], 2, 1, True, 1)
    case(256, [300], [300], 2, 1, True, 2)
    case(256, [90], [40], 1, 1, True, 3)        # Lk < Lq: rows without keys
    case(128, [129, 260], [129, 500], 3, 1, True, 4)
    case(64, [200, 1, 0], [333, 17, 5], 2, 2, False, 5)
    case(256, [161], [161], 1, 1, False, 6)
    case(128, [257], [257], 1, 1, True, 7)
    case(256, [150], [164], 1, 1, True, 8)   # off = 14: the n_full boundary at row 64
    case(256, [150], [165], 1, 1, True, 9)   # off = 15
    case(128, [300], [362], 1, 1, True, 10)  # off = 62: row 64 + 62 + 2 = 128
    print("cuda_attn_sm90_emulation: all passed")


if __name__ == "__main__":
    main()
