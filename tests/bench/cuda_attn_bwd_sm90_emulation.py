"""Off-GPU checks of the sm_90a attention backward's dK/dV and dQ kernels
(backends/cuda/attn_bwd_sm90.cu, attn_bwd_dq_sm90.cu), transcribed from their
code; run them after changing their tiles, offsets, masks or pipelines.
dK/dV:

1. layouts: TMA's 128-byte-swizzle writes of K, V and the Q / dO' stages and
   wgmma's descriptor reads with the kernel's offsets (K, V as K-major A of
   S^T = K Q^T and dP^T = V dO'^T, Q and dO' as K-major B there and MN-major B
   of dK += dS^T Q, dV += P^T dO' from each consumer's first owned column
   block) read back every operand of every k-step, both consumers, both
   stages; the descriptor arithmetic stays inside the 14-bit address field;
   the query-tail zeroing clears exactly the rows past the sequence; the
   register A fragments built from accumulators (acc_to_a) are wgmma's m64k16
   A layout;
2. pipeline: random interleavings of the producer (TMA thread, 64 row
   writers) / consumer mbarrier protocol never read a stale stage, write a
   stage being read, or deadlock;
3. math: a thread-by-thread numpy transcription of the consumer (slot walk,
   query-block walk over the group's heads, fragment layouts, masks and the
   `masked` shortcut, bf16 P^T and dS^T, the query tail zeroed against NaN
   neighbours, the epilogue) against float64 attention gradients; mutations
   of a mask boundary, of the shortcut and of the tail zeroing must fail.
   The split of a key block's query heads over CTAs (f32 partials summed in
   order by the reduce kernel) matches too.
dQ: the same three for its tiles (Q, dO' as K-major A of both consumers, K,
V as K-major B, K as MN-major B of dQ += dS K, the K tail zeroing), its K / V
rings (2 + 1 stages at D = 256, 2 + 2 below), and its consumer math (n_full,
masks, dS by select against NaN in V rows past the sequence); mutations of
n_full, of the causal boundary and of the K tail zeroing must fail.

These check the transcription's arithmetic against the PTX ISA's model (as
cuda_attn_sm90_emulation.py does for the forward), not the hardware:
tests/bench/cuda_attn_check.py is the check on the GPU.

Usage: python3 tests/bench/cuda_attn_bwd_sm90_emulation.py   (numpy; ~1 min)"""

import math
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sm90_emulation import (Bar, bf16, fetch, frag, interleave, read_kmajor, read_mnmajor, swz,  # noqa: E402
                            tma_store, unfrag)

LOG2E = 1.4426950408889634


class Tile:  # DkvSm90Tile<D>
    def __init__(self, D):
        self.D = D
        self.split = D == 256
        self.keys = 64 if self.split else 128
        self.br = 64
        self.cols = D // 2 if self.split else D
        self.kbytes, self.qbytes = self.keys * D * 2, self.br * D * 2
        self.kblock, self.qblock = self.keys * 128, self.br * 128
        self.smem = 1024 + 2 * self.kbytes + 4 * self.qbytes + 4 * self.br * 4 + 64

    def krow(self, wg):
        return 0 if self.split else 64 * wg

    def cb0(self, wg):
        return 2 * wg if self.split else 0


# ---- 1. layouts -------------------------------------------------------------------------

def smem_desc(addr, lbo, sbo):  # wgmma.cuh's smem_desc
    return ((addr & 0x3FFFF) >> 4) | ((lbo >> 4) << 16) | ((sbo >> 4) << 32) | (1 << 62)


def desc_start(desc):
    return (desc & 0x3FFF) << 4


def check_layout(D):
    T = Tile(D)
    rng = np.random.default_rng(D)
    K = rng.integers(0, 60000, (T.keys, D)).astype(np.uint16)
    V = rng.integers(0, 60000, (T.keys, D)).astype(np.uint16)
    Q = [rng.integers(0, 60000, (64, D)).astype(np.uint16) for _ in range(2)]
    DO = [rng.integers(0, 60000, (64, D)).astype(np.uint16) for _ in range(2)]
    base = 1024 * 3  # a 1024-aligned dynamic smem start
    sK = base; sV = sK + T.kbytes; sQ = sV + T.kbytes; sDO = sQ + 2 * T.qbytes
    sL = sDO + 2 * T.qbytes
    assert sL + 4 * 64 * 4 + 40 <= base + T.smem - 1024 and T.smem <= 227 * 1024, ("smem", D)
    smem = np.zeros((sL + 1024) // 2, np.uint16)
    for cb in range(D // 64):
        tma_store(smem, sK + cb * T.kblock, K[:, 64 * cb:64 * cb + 64])
        tma_store(smem, sV + cb * T.kblock, V[:, 64 * cb:64 * cb + 64])
        for st in range(2):
            tma_store(smem, sQ + st * T.qbytes + cb * T.qblock, Q[st][:, 64 * cb:64 * cb + 64])
            tma_store(smem, sDO + st * T.qbytes + cb * T.qblock, DO[st][:, 64 * cb:64 * cb + 64])
    kstage = T.qbytes >> 4
    for wg in range(2):
        kr, cb0 = T.krow(wg), T.cb0(wg)
        k_desc = smem_desc(sK + kr * 128, 16, 1024)
        v_desc = smem_desc(sV + kr * 128, 16, 1024)
        q_desc = smem_desc(sQ, 16, 1024)
        do_desc = smem_desc(sDO, 16, 1024)
        qn_desc = smem_desc(sQ + cb0 * T.qblock, T.qblock, 1024)
        don_desc = smem_desc(sDO + cb0 * T.qblock, T.qblock, 1024)
        for st in range(2):
            for kk in range(D // 16):  # issue_t
                yo = ((kk // 4) * T.kblock + (kk % 4) * 32) >> 4
                zo = ((kk // 4) * T.qblock + (kk % 4) * 32) >> 4
                for y_desc, z_desc, Y, Z, name in ((k_desc, q_desc, K, Q[st], "K/Q"),
                                                   (v_desc, do_desc, V, DO[st], "V/dO")):
                    da, db = y_desc + yo, z_desc + st * kstage + zo
                    assert (da & 0x3FFF) == (y_desc & 0x3FFF) + yo and (db & 0x3FFF) == (z_desc & 0x3FFF) + st * kstage + zo
                    a = read_kmajor(smem, desc_start(da), 64, (da >> 32 & 0x3FFF) << 4)
                    b = read_kmajor(smem, desc_start(db), 64, (db >> 32 & 0x3FFF) << 4)
                    assert (a == Y[kr:kr + 64, 16 * kk:16 * kk + 16]).all(), ("A", name, D, wg, kk)
                    assert (b == Z[:, 16 * kk:16 * kk + 16]).all(), ("B", name, D, st, kk)
            for ks in range(4):  # issue_acc
                for desc, Z, name in ((don_desc, DO[st], "dO"), (qn_desc, Q[st], "Q")):
                    d = desc + st * kstage + ((ks * 2048) >> 4)
                    b = read_mnmajor(smem, desc_start(d), T.cols, (d >> 16 & 0x3FFF) << 4, (d >> 32 & 0x3FFF) << 4)
                    want = Z[16 * ks:16 * ks + 16, 64 * cb0:64 * cb0 + T.cols]
                    assert (b == want).all(), ("MN-major B", name, D, wg, st, ks)
    # zero_q_tail: the rows past `first` of both tensors of a stage read back as zero, the others intact
    for first in (1, 37, 63):
        z = smem.copy()
        for st_base in (sQ + T.qbytes, sDO + T.qbytes):
            for idx in range((64 - first) * (D // 8)):
                r, c = first + idx // (D // 8), idx % (D // 8)
                at = st_base + (c // 8) * T.qblock + r * 128 + (c % 8) * 16
                z[at // 2:at // 2 + 8] = 0
        for st_base, X in ((sQ + T.qbytes, Q[1]), (sDO + T.qbytes, DO[1])):
            for cb in range(D // 64):
                got = np.array([[z[swz(st_base + cb * T.qblock + r * 128 + c * 2) // 2] for c in range(64)]
                                for r in range(64)])
                assert (got[:first] == X[:first, 64 * cb:64 * cb + 64]).all() and (got[first:] == 0).all()
        assert (z[:(sQ + T.qbytes) // 2] == smem[:(sQ + T.qbytes) // 2]).all()
    # descriptors stay inside the 14-bit start field at the largest offsets
    assert ((sDO + T.qbytes + (D // 64 - 1) * T.qblock + 2048 * 3 + 96) >> 4) < (1 << 14)
    print(f"D={D}: K, V (K-major A), Q, dO' (K-major and MN-major B) read back; tail zeroing exact")


def check_fragments():
    # acc_to_a(a, lo = d[2ks], hi = d[2ks + 1]) against wgmma's m64k16 A fragment
    warp = np.repeat(np.arange(4), 32); lane = np.tile(np.arange(32), 4)
    g, t = 16 * warp + (lane >> 2), lane & 3
    X = np.arange(64 * 64).reshape(64, 64)
    acc = lambda j, e: X[g + 8 * (e >> 1), 8 * j + 2 * t + (e & 1)]
    for ks in range(4):
        lo = [acc(2 * ks, e) for e in range(4)]; hi = [acc(2 * ks + 1, e) for e in range(4)]
        a = [(lo[0], lo[1]), (lo[2], lo[3]), (hi[0], hi[1]), (hi[2], hi[3])]
        want = [(X[g, 16 * ks + 2 * t], X[g, 16 * ks + 2 * t + 1]),
                (X[g + 8, 16 * ks + 2 * t], X[g + 8, 16 * ks + 2 * t + 1]),
                (X[g, 16 * ks + 2 * t + 8], X[g, 16 * ks + 2 * t + 9]),
                (X[g + 8, 16 * ks + 2 * t + 8], X[g + 8, 16 * ks + 2 * t + 9])]
        for (x0, x1), (w0, w1) in zip(a, want):
            assert (x0 == w0).all() and (x1 == w1).all()
    print("acc_to_a: accumulator pairs are wgmma's register A fragments")


class DqTile:  # DqSm90Tile<D>
    def __init__(self, D):
        self.D = D
        self.br, self.bc = 128, 64
        self.kstages, self.vstages = 2, (1 if D == 256 else 2)
        self.qbytes, self.kvbytes = self.br * D * 2, self.bc * D * 2
        self.qblock, self.kvblock = self.br * 128, self.bc * 128
        self.smem = 1024 + 2 * self.qbytes + (self.kstages + self.vstages) * self.kvbytes + 128


def check_dq_layout(D):
    T = DqTile(D)
    assert T.smem <= 227 * 1024, ("dq smem", D, T.smem)
    rng = np.random.default_rng(D + 1)
    Q = rng.integers(0, 60000, (128, D)).astype(np.uint16)
    DO = rng.integers(0, 60000, (128, D)).astype(np.uint16)
    K = [rng.integers(0, 60000, (64, D)).astype(np.uint16) for _ in range(T.kstages)]
    V = [rng.integers(0, 60000, (64, D)).astype(np.uint16) for _ in range(T.vstages)]
    base = 1024 * 5
    sQ = base; sDO = sQ + T.qbytes; sK = sDO + T.qbytes; sV = sK + T.kstages * T.kvbytes
    end = sV + T.vstages * T.kvbytes
    smem = np.zeros((end + 1024) // 2, np.uint16)
    for cb in range(D // 64):
        tma_store(smem, sQ + cb * T.qblock, Q[:, 64 * cb:64 * cb + 64])
        tma_store(smem, sDO + cb * T.qblock, DO[:, 64 * cb:64 * cb + 64])
        for st in range(T.kstages):
            tma_store(smem, sK + st * T.kvbytes + cb * T.kvblock, K[st][:, 64 * cb:64 * cb + 64])
        for st in range(T.vstages):
            tma_store(smem, sV + st * T.kvbytes + cb * T.kvblock, V[st][:, 64 * cb:64 * cb + 64])
    kstage = T.kvbytes >> 4
    k_desc, v_desc = smem_desc(sK, 16, 1024), smem_desc(sV, 16, 1024)
    kn_desc = smem_desc(sK, T.kvblock, 1024)
    for wg in range(2):
        q_desc = smem_desc(sQ + wg * 64 * 128, 16, 1024)
        do_desc = smem_desc(sDO + wg * 64 * 128, 16, 1024)
        for kk in range(D // 16):  # issue_qk
            yo = ((kk // 4) * T.qblock + (kk % 4) * 32) >> 4
            zo = ((kk // 4) * T.kvblock + (kk % 4) * 32) >> 4
            for y_desc, z_desc, Y, Zs, name in ((q_desc, k_desc, Q, K, "Q/K"), (do_desc, v_desc, DO, V, "dO/V")):
                a = read_kmajor(smem, desc_start(y_desc + yo), 64, 1024)
                assert (a == Y[64 * wg:64 * wg + 64, 16 * kk:16 * kk + 16]).all(), ("A", name, D, wg, kk)
                for st, Z in enumerate(Zs):
                    b = read_kmajor(smem, desc_start(z_desc + st * kstage + zo), 64, 1024)
                    assert (b == Z[:, 16 * kk:16 * kk + 16]).all(), ("B", name, D, st, kk)
    for st in range(T.kstages):  # dQ += dS K
        for ks in range(4):
            d = kn_desc + st * kstage + ((ks * 2048) >> 4)
            b = read_mnmajor(smem, desc_start(d), D, (d >> 16 & 0x3FFF) << 4, (d >> 32 & 0x3FFF) << 4)
            assert (b == K[st][16 * ks:16 * ks + 16, :]).all(), ("MN-major K", D, st, ks)
    for first in (1, 30, 63):  # zero_k_tail on stage 1
        z = smem.copy()
        stage = sK + T.kvbytes
        for idx in range((64 - first) * (D // 8)):
            r, c = first + idx // (D // 8), idx % (D // 8)
            at = stage + (c // 8) * T.kvblock + r * 128 + (c % 8) * 16
            z[at // 2:at // 2 + 8] = 0
        b = np.concatenate([read_mnmajor(z, stage + ks * 2048, D, T.kvblock, 1024) for ks in range(4)])
        assert (b[:first] == K[1][:first]).all() and (b[first:] == 0).all()
        assert (z[:stage // 2] == smem[:stage // 2]).all() and (z[(stage + T.kvbytes) // 2:] == smem[(stage + T.kvbytes) // 2:]).all()
    assert (end >> 4) < (1 << 14)
    print(f"dQ D={D}: Q, dO' (K-major A), K, V (K-major B), K (MN-major B) read back; K tail zeroing exact")


# ---- 2. pipeline ------------------------------------------------------------------------

def run(total, seed):
    rnd = random.Random(seed)
    bars = {"kv": Bar(1)}
    for st in range(2):
        bars[f"f{st}"] = Bar(1 + 64); bars[f"e{st}"] = Bar(8)
    content, reading, writing = {}, {}, {}  # stage -> step; stage -> readers; stage -> TMA writes in flight
    rows = {}  # stage -> step whose lse / Delta rows were written, per writer count

    def tma():
        yield (bars["kv"], "KV", 0)
        for it in range(total):
            st = it & 1
            yield from bars[f"e{st}"].wait(((it >> 1) & 1) ^ 1)
            yield (bars[f"f{st}"], f"S{st}", it)

    def rowwriter(r):
        for it in range(total):
            st = it & 1
            yield from bars[f"e{st}"].wait(((it >> 1) & 1) ^ 1)
            assert not reading.get(f"S{st}"), ("row write into a stage being read", st)
            rows.setdefault(st, {})[r] = it
            yield None
            bars[f"f{st}"].arrive()

    def warp(w):
        yield from bars["kv"].wait(0)
        assert content.get("KV") == 0
        for it in range(total):
            st = it & 1
            yield from bars[f"f{st}"].wait((it >> 1) & 1)
            assert content.get(f"S{st}") == it, ("stale tile", it, content.get(f"S{st}"))
            assert all(v == it for v in rows[st].values()) and len(rows[st]) == 64, ("stale rows", it)
            reading.setdefault(f"S{st}", set()).add(w)
            yield None  # S^T issued, the previous step's dK waited:
            if it > 0:
                reading[f"S{st ^ 1}"].discard(w)
                bars[f"e{st ^ 1}"].arrive()
            yield None
            assert content.get(f"S{st}") == it and all(v == it for v in rows[st].values()), "overwritten while read"

    procs = [tma()] + [rowwriter(r) for r in range(64)] + [warp(w) for w in range(8)]
    interleave(rnd, procs, 400000, content, reading, writing)


def run_dq(ntiles, vstages, seed):
    """The dQ kernel's rings: K in 2 stages, V in vstages; K_t is read from its
    wait until the next tile's S was issued and dQ_t waited, V_t until dP_t."""
    rnd = random.Random(seed)
    kst = 2
    bars = {"q": Bar(1)}
    for st in range(2):
        for x in "kv":
            bars[f"{x}f{st}"] = Bar(1); bars[f"{x}e{st}"] = Bar(8)
    content, reading, writing = {}, {}, {}

    def producer():
        yield (bars["q"], "Q", 0)
        for t in range(ntiles):
            for x, n in (("k", kst), ("v", vstages)):
                st, par = t % n, (t // n) & 1
                yield from bars[f"{x}e{st}"].wait(par ^ 1)
                yield (bars[f"{x}f{st}"], f"{x.upper()}{st}", t)

    def warp(w):
        def read(stage, t):
            assert content.get(stage) == t, ("stale", stage, t, content.get(stage))
            reading.setdefault(stage, set()).add(w)

        def end(stage, t):
            assert content.get(stage) == t, ("overwritten while read", stage, t)
            reading[stage].discard(w)
        yield from bars["q"].wait(0)
        for t in range(ntiles):
            sk, sv = t % kst, t % vstages
            yield from bars[f"kf{sk}"].wait((t // kst) & 1)
            read(f"K{sk}", t); yield None           # S issued
            if t > 0:                                # the previous dQ waited
                end(f"K{(t - 1) % kst}", t - 1); bars[f"ke{(t - 1) % kst}"].arrive()
            yield from bars[f"vf{sv}"].wait((t // vstages) & 1)
            read(f"V{sv}", t); yield None           # dP issued, S waited
            end(f"V{sv}", t); bars[f"ve{sv}"].arrive(); yield None  # dP waited, dQ issued
        yield None
        if ntiles:
            end(f"K{(ntiles - 1) % kst}", ntiles - 1)

    interleave(rnd, [producer()] + [warp(w) for w in range(8)], 200000, content, reading, writing)


# ---- 3. math ----------------------------------------------------------------------------

def reference(q, k, v, dy, spans, scale, causal):
    """float64 dQ, dK, dV, and the forward's lse and Delta = <dO', O>."""
    Tq, Hq, D = q.shape; Tk, Hkv, _ = k.shape; G = Hq // Hkv
    dq = np.zeros_like(q); dk = np.zeros_like(k); dv = np.zeros_like(v)
    lse = np.full((Hq, Tq), -np.inf); delta = np.zeros((Hq, Tq))
    for q0, q1, k0, k1 in spans:
        Lq, Lk = q1 - q0, k1 - k0
        i = np.arange(Lq)[:, None]; j = np.arange(Lk)[None, :]
        mask = (j <= i + Lk - Lq) if causal else np.ones((Lq, Lk), bool)
        for h in range(Hq):
            kv = h // G
            s = np.where(mask, scale * q[q0:q1, h] @ k[k0:k1, kv].T, -np.inf)
            m = np.where(mask.any(1), s.max(1, initial=-np.inf), 0.0)
            e = np.where(mask, np.exp(s - m[:, None]), 0.0); l = e.sum(1)
            p = np.where(l[:, None] > 0, e / np.where(l > 0, l, 1)[:, None], 0.0)
            lse[h, q0:q1] = np.where(l > 0, m + np.log(np.where(l > 0, l, 1)), -np.inf)
            o = p @ v[k0:k1, kv]
            delta[h, q0:q1] = (dy[q0:q1, h] * o).sum(1)
            dP = dy[q0:q1, h] @ v[k0:k1, kv].T
            dS = p * (dP - delta[h, q0:q1, None])
            dv[k0:k1, kv] += p.T @ dy[q0:q1, h]
            dk[k0:k1, kv] += scale * dS.T @ q[q0:q1, h]
            dq[q0:q1, h] = scale * dS @ k[k0:k1, kv]
    return dq, dk, dv, lse, delta


def slot_block(cu, N, Tt, rows, slot):  # attn_common.cuh, varlen form
    def start(n):
        return min(max(cu[n], 0), Tt) // rows + n
    lo, hi = 0, N - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if start(mid) <= slot: lo = mid
        else: hi = mid - 1
    return lo, slot - start(lo)


def emulate(q, k, v, dy, lse, delta, cu_q, cu_k, scale, causal, D, mutate=None, splits=1):
    T = Tile(D)
    Tq, Hq, _ = q.shape; Tk, Hkv, _ = k.shape; G = Hq // Hkv; N = len(cu_q) - 1
    dk_out = np.full_like(k, np.nan); dv_out = np.full_like(v, np.nan)
    c2 = scale * LOG2E
    warp = np.repeat(np.arange(4), 32); lane = np.tile(np.arange(32), 4)
    g, t = lane >> 2, lane & 3

    slots = Tk // T.keys + N + 1
    partial = np.full((2, splits) + k.shape, np.nan)  # [dk, dv][split][Tk][Hkv][D]
    for bid in range(slots * Hkv * splits):
        kvh, split, slot = bid % Hkv, (bid // Hkv) % splits, bid // (Hkv * splits)
        n, c = slot_block(cu_k, N, Tk, T.keys, slot)
        if c < 0: continue
        q0, q1, k0, k1 = cu_q[n], cu_q[n + 1], cu_k[n], cu_k[n + 1]
        Lq, Lk = q1 - q0, k1 - k0
        j0 = c * T.keys
        if j0 >= Lk: continue
        off = Lk - Lq
        qmin = max(0, j0 - off) if causal else 0
        nqb = (Lq + 63) // 64 - qmin // 64 if qmin < Lq else 0
        heads = G // splits
        total = heads * nqb
        head_of = lambda it: kvh * G + split * heads + it // nqb
        row_of = lambda it: (qmin // 64 + it % nqb) * 64
        Kt = fetch(k, kvh, k0 + j0, T.keys, k1); Vt = fetch(v, kvh, k0 + j0, T.keys, k1)
        for wg in range(2):
            kr, cb0 = T.krow(wg), T.cb0(wg)
            key0 = j0 + kr + warp * 16 + g
            kmax = j0 + kr + 63 + (1 if mutate == "kmax" else 0) - (1 if mutate == "kmax-" else 0)
            dk = np.zeros((128, T.cols // 8, 4)); dv = np.zeros((128, T.cols // 8, 4))
            for it in range(total):
                h, i0 = head_of(it), row_of(it)
                Qt = fetch(q, h, q0 + i0, 64, q1); Dt = fetch(dy, h, q0 + i0, 64, q1)
                if i0 + 64 > Lq and mutate != "no-zero-q":  # zero_q_tail
                    Qt[Lq - i0:] = 0.0; Dt[Lq - i0:] = 0.0
                # producer rows: lse2_of, delta_of
                ii = i0 + np.arange(64)
                sL = np.array([np.inf if i >= Lq or lse[h, q0 + i] == -np.inf else lse[h, q0 + i] * LOG2E
                               for i in ii])
                sDl = np.array([0.0 if i >= Lq else delta[h, q0 + i] for i in ii])
                with np.errstate(invalid="ignore"):
                    sc = frag(Kt[kr:kr + 64] @ Qt.T, 64)
                    dp = frag(Vt[kr:kr + 64] @ Dt.T, 64)
                masked = i0 + 64 > Lq or (causal and kmax > i0 + off)
                if mutate == "no-shortcut": masked = True
                with np.errstate(invalid="ignore", over="ignore"):
                    for j in range(8):
                        for e in range(4):
                            col = 8 * j + 2 * t + (e & 1)
                            pr = np.exp2(sc[:, j, e] * c2 - sL[col])
                            if masked:
                                i = i0 + col; key = key0 + 8 * (e >> 1)
                                lim = off + (1 if mutate == "causal+1" else 0)
                                bad = (i >= Lq) | ((key > i + lim) if causal else False)
                                pr = np.where(bad, 0.0, pr)
                            sc[:, j, e] = pr
                    pa = bf16(sc)
                    for j in range(8):
                        for e in range(4):
                            col = 8 * j + 2 * t + (e & 1)
                            dp[:, j, e] = sc[:, j, e] * (dp[:, j, e] - sDl[col])
                    da = bf16(dp)
                    cols = slice(64 * cb0, 64 * cb0 + T.cols)
                    dv += frag(unfrag(pa, 64) @ Dt[:, cols], T.cols)
                    dk += frag(unfrag(da, 64) @ Qt[:, cols], T.cols)
            for r in range(2):
                for th in range(128):
                    key = key0[th] + 8 * r
                    if key >= Lk: continue
                    for d in range(T.cols // 8):
                        col = 64 * cb0 + 8 * d + 2 * t[th]
                        for x in range(2):
                            if splits > 1:
                                partial[0, split, k0 + key, kvh, col + x] = dk[th, d, 2 * r + x] * scale
                                partial[1, split, k0 + key, kvh, col + x] = dv[th, d, 2 * r + x]
                            else:
                                dk_out[k0 + key, kvh, col + x] = dk[th, d, 2 * r + x] * scale
                                dv_out[k0 + key, kvh, col + x] = dv[th, d, 2 * r + x]
    if splits > 1:  # dkv_reduce_kernel: the grid without splits, partials summed in split order
        for bid in range(slots * Hkv):
            kvh, slot = bid % Hkv, bid // Hkv
            n, c = slot_block(cu_k, N, Tk, T.keys, slot)
            if c < 0: continue
            k0, Lk = cu_k[n], cu_k[n + 1] - cu_k[n]
            j0 = c * T.keys
            if j0 >= Lk: continue
            for key in range(j0, min(j0 + T.keys, Lk)):
                a = np.zeros(D); b = np.zeros(D)
                for sp in range(splits):
                    a = a + partial[0, sp, k0 + key, kvh]; b = b + partial[1, sp, k0 + key, kvh]
                dk_out[k0 + key, kvh] = a; dv_out[k0 + key, kvh] = b
    return dk_out, dv_out


def emulate_dq(q, k, v, dy, lse, delta, cu_q, cu_k, scale, causal, D, mutate=None):
    Tq, Hq, _ = q.shape; Tk, Hkv, _ = k.shape; G = Hq // Hkv; N = len(cu_q) - 1
    dq_out = np.full_like(q, np.nan)
    c2 = scale * LOG2E
    warp = np.repeat(np.arange(4), 32); lane = np.tile(np.arange(32), 4)
    g, t = lane >> 2, lane & 3

    slots = Tq // 128 + N + 1
    for bid in range(slots * Hq):
        head, slot = bid % Hq, slots - 1 - bid // Hq
        n, c = slot_block(cu_q, N, Tq, 128, slot)
        if c < 0: continue
        q0, q1, k0, k1 = cu_q[n], cu_q[n + 1], cu_k[n], cu_k[n + 1]
        Lq, Lk = q1 - q0, k1 - k0
        m0 = c * 128
        if m0 >= Lq: continue
        kvh, off = head // G, Lk - Lq
        kend = min(Lk, min(m0 + 128, Lq) + off) if causal else Lk
        ntiles = (kend + 63) // 64 if kend > 0 else 0
        Qt = fetch(q, head, q0 + m0, 128, q1); Dt = fetch(dy, head, q0 + m0, 128, q1)
        for wg in range(2):
            row0 = m0 + wg * 64 + warp * 16 + g
            n_full = Lk // 64
            if causal:
                lim = m0 + wg * 64 + off + 1
                n_full = min(n_full, lim // 64 if lim > 0 else 0)
            if mutate == "n_full+1": n_full += 1
            lse2 = [np.array([np.inf if i >= Lq or lse[head, q0 + i] == -np.inf else lse[head, q0 + i] * LOG2E
                              for i in row0 + 8 * r]) for r in range(2)]
            dl = [np.array([0.0 if i >= Lq else delta[head, q0 + i] for i in row0 + 8 * r]) for r in range(2)]
            dq = np.zeros((128, D // 8, 4))
            for tt in range(ntiles):
                Kt = fetch(k, kvh, k0 + tt * 64, 64, k1); Vt = fetch(v, kvh, k0 + tt * 64, 64, k1)
                tail = Lk - tt * 64
                if tail < 64 and mutate != "no-zero-k": Kt[tail:] = 0.0  # zero_k_tail
                with np.errstate(invalid="ignore"):
                    sc = frag(Qt[64 * wg:64 * wg + 64] @ Kt.T, 64)
                    dp = frag(Dt[64 * wg:64 * wg + 64] @ Vt.T, 64)
                masked = tt >= n_full
                key0 = tt * 64 + 2 * t
                with np.errstate(invalid="ignore", over="ignore"):
                    for j in range(8):
                        for e in range(4):
                            r = e >> 1
                            pr = np.exp2(sc[:, j, e] * c2 - lse2[r])
                            if masked:
                                key = key0 + 8 * j + (e & 1)
                                lim = off + (1 if mutate == "causal+1" else 0)
                                bad = (key >= Lk) | ((key > row0 + 8 * r + lim) if causal else False)
                                pr = np.where(bad, -1.0, pr)
                            sc[:, j, e] = pr
                    for j in range(8):
                        for e in range(4):
                            dp[:, j, e] = np.where(sc[:, j, e] < 0, 0.0, sc[:, j, e] * (dp[:, j, e] - dl[e >> 1]))
                    da = bf16(dp)
                    dq += frag(unfrag(da, 64) @ Kt, D)
            for r in range(2):
                for th in range(128):
                    i = row0[th] + 8 * r
                    if i >= Lq: continue
                    for j in range(D // 8):
                        col = 8 * j + 2 * t[th]
                        dq_out[q0 + i, head, col] = dq[th, j, 2 * r] * scale
                        dq_out[q0 + i, head, col + 1] = dq[th, j, 2 * r + 1] * scale
    return dq_out


def case(D, lens_q, lens_k, Hq, Hkv, causal, seed, scale=None, mutate=None, quiet=False, splits=1):
    rng = np.random.default_rng(seed)
    Tq, Tk = sum(lens_q), sum(lens_k)
    q = bf16(rng.standard_normal((Tq, Hq, D))); k = bf16(rng.standard_normal((Tk, Hkv, D)))
    v = bf16(rng.standard_normal((Tk, Hkv, D))); dy = bf16(rng.standard_normal((Tq, Hq, D)))
    cq = np.concatenate([[0], np.cumsum(lens_q)]).astype(int)
    ck = np.concatenate([[0], np.cumsum(lens_k)]).astype(int)
    spans = [(cq[n], cq[n + 1], ck[n], ck[n + 1]) for n in range(len(lens_q))]
    sc = scale or D ** -0.5
    rdq, rdk, rdv, lse, delta = reference(q, k, v, dy, spans, sc, causal)
    dk, dv = emulate(q, k, v, dy, lse, delta, cq, ck, sc, causal, D, mutate, splits)
    dq = emulate_dq(q, k, v, dy, lse, delta, cq, ck, sc, causal, D, mutate)
    ok = np.isfinite(dk).all() and np.isfinite(dv).all() and np.isfinite(dq).all()
    # relative L2, and the largest element error against the largest element
    # (one wrongly visible key moves a few elements only)
    rel = lambda x, r: np.linalg.norm(x - r) / max(np.linalg.norm(r), 1e-30) if ok else math.inf
    top = lambda x, r: np.abs(x - r).max(initial=0) / max(np.abs(r).max(initial=0), 1e-30) if ok else math.inf
    errs = [(rel(x, r), top(x, r)) for x, r in ((dq, rdq), (dk, rdk), (dv, rdv))]
    if not quiet:
        print(f"D={D} lens_q={lens_q} lens_k={lens_k} {Hq}/{Hkv} causal={causal} splits={splits}: "
              + ", ".join(f"{n} rel {e:.1e} (max {m:.1e})" for n, (e, m) in zip(("dq", "dk", "dv"), errs)))
    return all(e < 1e-2 and m < 1e-2 for e, m in errs)


def main():
    check_fragments()
    for D in (64, 128, 256):
        check_layout(D)
        check_dq_layout(D)
    for total in range(1, 7):
        for seed in range(60):
            run(total, seed)
    print("dK/dV pipeline: 1..6 steps x 60 random interleavings: no stale read, no write while read, no deadlock")
    for vstages in (1, 2):
        for ntiles in range(1, 7):
            for seed in range(100):
                run_dq(ntiles, vstages, seed)
    print("dQ pipeline: V stages 1, 2 x 1..6 tiles x 100 random interleavings: no stale read, no write while read, "
          "no deadlock")
    cases = [
        (256, [0, 1, 130, 77, 0, 200], [5, 1, 130, 300, 4, 200], 4, 2, True, 1),  # varlen, empty, length 1
        (256, [150], [165], 3, 1, True, 2),     # Lk > Lq, offset 15
        (256, [90], [40], 2, 1, True, 3),       # Lk < Lq: rows without keys
        (128, [129, 260], [129, 300], 3, 1, True, 4),
        (64, [200, 1, 0], [333, 17, 5], 2, 2, False, 5),
        (256, [161], [161], 16, 2, True, 6),    # GQA 16/2
        (128, [70], [333], 3, 1, True, 7),      # keys no query sees
        (64, [300], [362], 2, 1, True, 8),
        (256, [64], [190], 1, 1, True, 9),      # the `masked` shortcut's boundary
        (256, [150], [164], 2, 1, True, 10),    # dQ: off 14, n_full of the second warpgroup at its boundary
        (128, [300], [362], 1, 1, True, 11),    # dQ: off 62: 64 + 62 + 1 = 127, n_full boundary
    ]
    for c in cases:
        assert case(*c), c
    # dK/dV split over the group's heads (attn_dkv_sm90_splits), partials reduced in order
    for c, sp in (((256, [0, 1, 130, 77, 0, 200], [5, 1, 130, 300, 4, 200], 4, 2, True, 1), 2),
                  ((256, [161], [161], 16, 2, True, 6), 8),
                  ((128, [129, 260], [129, 300], 4, 1, True, 4), 4)):
        assert case(*c, splits=sp), (c, sp)
    # mutations a correct transcription must not survive
    for mut, c in (("causal+1", (256, [150], [165], 1, 1, True, 2)),
                   ("n_full+1", (128, [300], [362], 1, 1, True, 11)),
                   ("kmax-", (256, [64], [190], 1, 1, True, 9)),  # key 127, query 0: kmax = i0 + off + 1
                   ("no-zero-q", (256, [0, 1, 130, 77, 0, 200], [5, 1, 130, 300, 4, 200], 2, 1, True, 1)),
                   ("no-zero-k", (256, [0, 1, 130, 77, 0, 200], [5, 1, 130, 300, 4, 200], 2, 1, True, 1))):
        assert not case(*c, mutate=mut, quiet=True), ("mutation survived", mut)
        print(f"mutation {mut}: caught")
    assert case(256, [150], [165], 1, 1, True, 2, mutate="no-shortcut", quiet=True)  # the shortcut only skips work
    print("cuda_attn_bwd_sm90_emulation: all passed")


if __name__ == "__main__":
    main()
