"""Off-GPU checks of the sm_90a expert MLP forward (backends/cuda/moe_mlp_sm90.cu),
transcribed from its code; run them after changing its tiles, boxes or pipeline:

1. layouts: TMA's 128-byte-swizzle writes of a stage (A box of 128 rows, four B
   boxes of 64 rows) read back by the kernel's wgmma descriptors, 32 bytes per
   k16 step: full tiles (each warpgroup's 64 A rows, all 256 B rows) and small
   tiles (A rows 0..63, each warpgroup's 128 B rows);
2. pipeline: random interleavings of the producer / consumer mbarrier protocol
   over a ring of 4 stages and several persistent tiles (parity waits, TMA
   writes landing late, wgmma reads live from issue to the next wait_group<1>)
   never read a stale stage, overwrite a stage being read, or deadlock;
3. math: the plan (plan_kernel), the tile decoding (decode_tile), the TMA boxes
   with their zero fill (rows past R, K past Hd or I, B rows past the weight),
   the up tile's gate / up pairing, full and small (<= 64 rows) tiles and the
   epilogues' accumulator-column mapping and masks, at awkward shapes
   (Hd, I multiples of 8 but not of 64 or 128, experts straddling tiles, empty
   experts, counts past R, a tail), with NaN in every row no call may read
   into a stored result: equal (to rounding) to a per-expert float64 MLP with h
   rounded to bf16 as the kernel does, every counted row written exactly once.

These check the transcription against the PTX ISA's model (swizzle on address
bits 4-6 by 7-9, descriptor sbo), not the hardware: tests/bench/cuda_moe_check.py
(HOPS_CUDA_MOE_MLP=wgmma) is the check on the GPU.

Usage: python3 tests/bench/cuda_moe_sm90_emulation.py   (numpy; ~1 min)"""

import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sm90_emulation import Bar, bf16, interleave, read_kmajor, tma_store  # noqa: E402

ROWS, COLS, DEPTH, RING = 128, 256, 64, 4
A_BYTES, BOX_BYTES = ROWS * DEPTH * 2, 64 * DEPTH * 2
STAGE = A_BYTES + 4 * BOX_BYTES


# ---- 1. layouts -------------------------------------------------------------------------

def check_layout():
    rng = np.random.default_rng(0)
    smem = np.zeros(RING * STAGE // 2, np.uint16)
    for stage in (0, RING - 1):
        A = rng.integers(0, 60000, (ROWS, 64)).astype(np.uint16)
        B = rng.integers(0, 60000, (COLS, 64)).astype(np.uint16)
        sA = stage * STAGE
        tma_store(smem, sA, A)
        for i in range(4):
            assert (sA + A_BYTES + i * BOX_BYTES) % 1024 == 0
            tma_store(smem, sA + A_BYTES + i * BOX_BYTES, B[64 * i:64 * i + 64])
        for small in (False, True):
            for wg in range(2):
                a_off = 0 if small else wg * 64 * 128
                b_off = wg * 2 * BOX_BYTES if small else 0
                n = COLS // 2 if small else COLS
                da, db = sA + a_off, sA + A_BYTES + b_off
                a_rows = slice(0, 64) if small else slice(64 * wg, 64 * wg + 64)
                b_rows = slice(128 * wg, 128 * wg + 128) if small else slice(0, COLS)
                for kk in range(DEPTH // 16):
                    a = read_kmajor(smem, da + 32 * kk, 64, 1024)
                    b = read_kmajor(smem, db + 32 * kk, n, 1024)
                    assert (a == A[a_rows, 16 * kk:16 * kk + 16]).all(), ("A", stage, small, wg, kk)
                    assert (b == B[b_rows, 16 * kk:16 * kk + 16]).all(), ("B", stage, small, wg, kk)
    print("layouts: A and B (256 rows over four boxes) read back as written, every k16 step, both warpgroups, "
          "full and small tiles")


# ---- 2. pipeline ------------------------------------------------------------------------

def pipeline(tile_steps, seed):
    """tile_steps: the k-steps of this CTA's tiles in order (the same list for
    producer and consumers, as both decode the same tiles)."""
    rnd = random.Random(seed)
    full = [Bar(1) for _ in range(RING)]
    empty = [Bar(8) for _ in range(RING)]
    content, writing, reading = {}, {}, {}

    def producer():
        stage, phase = 0, 0
        for ti, steps in enumerate(tile_steps):
            for ks in range(steps):
                yield from empty[stage].wait(phase ^ 1)
                yield (full[stage], stage, (ti, ks))
                stage, phase = (stage + 1) % RING, phase ^ (stage + 1 == RING)

    def warp(w):
        stage, phase = 0, 0
        live = []  # wgmma groups in flight: (stage, tag)

        def read(st, tag):
            assert content.get(st) == tag, ("stale", st, content.get(st), tag)
            assert not writing.get(st), ("write in flight during read", st)
            reading.setdefault(st, set()).add(w)

        def retire(keep):  # wgmma_wait<keep>
            while len(live) > keep:
                st, tag = live.pop(0)
                assert content.get(st) == tag and not writing.get(st), ("overwritten while read", st)
                reading[st].discard(w)

        for ti, steps in enumerate(tile_steps):
            prev = 0
            for ks in range(steps):
                yield from full[stage].wait(phase)
                read(stage, (ti, ks))
                live.append((stage, (ti, ks)))
                yield None
                retire(1)
                if ks > 0:
                    empty[prev].arrive()
                yield None
                prev = stage
                stage, phase = (stage + 1) % RING, phase ^ (stage + 1 == RING)
            retire(0)
            empty[prev].arrive()
            yield None

    interleave(rnd, [producer()] + [warp(w) for w in range(8)], 400000, content, reading, writing)


def check_pipeline():
    for seed in range(40):
        r = random.Random(seed)
        tiles = [r.choice([1, 2, 3, 5, 8, 32]) for _ in range(r.randint(1, 6))]
        pipeline(tiles, seed)
    print("pipeline: 40 random interleavings (1-6 tiles of 1-32 steps, ring of 4): no stale read, "
          "no overwrite while read, no deadlock")


# ---- 3. math ----------------------------------------------------------------------------

def cdiv(a, b):
    return (a + b - 1) // b


def plan(counts, R, rpe=ROWS):
    """plan_kernel: clamped first rows, entries per expert, the entry list."""
    E = len(counts)
    first, f = [], 0
    for c in counts:
        first.append(f)
        f = min(f + min(max(c, 0), R), R)
    first.append(f)
    tstart, entry, t = [], [], 0
    for e in range(E):
        m = cdiv(first[e + 1] - first[e], rpe)
        tstart.append(t)
        entry += [e] * m
        t += m
    tstart.append(t)
    return first, tstart, entry


def decode(first, tstart, entry, L, nc, rpe=ROWS):
    e = entry[L // nc]
    t0, m = tstart[e], tstart[e + 1] - tstart[e]
    local = L - t0 * nc
    col, part = local // m, local % m
    row0 = first[e] + part * rpe
    return e, row0, min(rpe, first[e + 1] - row0), col


def box(src3, e, r0, c0, rows):
    """TMA box of [rows x 64] at (c0, r0[, e]): zeros past the tensor's ends."""
    out = np.zeros((rows, 64))
    R, C = src3.shape[-2:]
    m = src3[e] if src3.ndim == 3 else src3
    r1, c1 = min(r0 + rows, R), min(c0 + 64, C)
    if r1 > r0 and c1 > c0:
        out[:r1 - r0, :c1 - c0] = m[r0:r1, c0:c1]
    return out


def gemm_kernel(A, B3, C, up, N, K, I, nc, first, tstart, entry, writes, grid, stats):
    """grouped_gemm_sm90_kernel: every CTA's tiles, stage by stage, each warpgroup's
    accumulator [64, 256] (a small tile's products in its first 128 columns)."""
    tiles = tstart[-1] * nc
    n_tile = COLS // 2 if up else COLS
    for cta in range(grid):
        for L in range(cta, tiles, grid):
            e, row0, rows, col = decode(first, tstart, entry, L, nc)
            n0 = col * n_tile
            b_row = [n0, n0 + I if up else n0 + 64, n0 + (64 if up else 128), n0 + I + 64 if up else n0 + 192]
            small = rows <= 64
            stats[small] += 1
            acc = [np.zeros((64, COLS)) for _ in range(2)]
            with np.errstate(invalid="ignore", over="ignore"):
                for ks in range(cdiv(K, DEPTH)):
                    a = box(A, None, row0, ks * DEPTH, ROWS)
                    b = np.concatenate([box(B3, e, br, ks * DEPTH, 64) for br in b_row])
                    for wg in range(2):
                        if small:
                            acc[wg][:, :128] += a[:64] @ b[128 * wg:128 * wg + 128].T
                        else:
                            acc[wg] += a[64 * wg:64 * wg + 64] @ b.T
            for wg in range(2):
                for warp in range(4):
                    epilogue(acc[wg], C, writes, up, small, wg, warp, rows, row0, col * n_tile, n_tile, N)


def silu_mul(g, u):
    return g / (1 + np.exp(-g)) * u


def quad_transpose(pk, t):
    """quad_transpose: pk[lane][i] the 4 pairs of each lane of the quad; lane t's result."""
    got = [pk[t][t]] + [pk[t ^ d][t] for d in (1, 2, 3)]  # shfl_xor d: lane t^d sends its pick(p, t)
    return [got[s ^ t] for s in range(4)]


def epilogue(acc, C, writes, up, small, wg, warp, rows, row0, tile_col0, n_tile, N):
    """One warp's epilogue: pairs packed per lane, quads transposed, 16-byte stores."""
    for hi in range(2):
        pk = {}
        for lane in range(32):
            t = lane & 3
            ar = 16 * warp + (lane >> 2) + 8 * hi  # the accumulator's row
            pk[lane] = {}
            for q in range(n_tile // 32):
                if small and q >= n_tile // 64:
                    break
                vals = []
                for jj in range(4):
                    j = 16 * (q // 2) + 4 * (q % 2) + jj if up else 4 * q + jj
                    c = 8 * j + 2 * t
                    if up:
                        vals.append((bf16(silu_mul(acc[ar, c], acc[ar, c + 64])),
                                     bf16(silu_mul(acc[ar, c + 1], acc[ar, c + 65]))))
                    else:
                        vals.append((bf16(acc[ar, c]), bf16(acc[ar, c + 1])))
                pk[lane][q] = vals
        for lane in range(32):
            t = lane & 3
            r = (0 if small else 64 * wg) + 16 * warp + (lane >> 2) + 8 * hi
            n0 = tile_col0 + (wg * n_tile // 2 if small else 0) + 8 * t
            base = lane & ~3
            for q in pk[lane]:
                v = quad_transpose([pk[base + i][q] for i in range(4)], t)
                n = n0 + 32 * q
                if r < rows and n < N:
                    for s_, (lo, hi_) in enumerate(v):
                        C[row0 + r, n + 2 * s_] = lo
                        C[row0 + r, n + 2 * s_ + 1] = hi_
                        writes[row0 + r, n + 2 * s_] += 1
                        writes[row0 + r, n + 2 * s_ + 1] += 1


def check_math(R, Hd, I, counts, seed, sms=5):
    rng = np.random.default_rng(seed)
    E = len(counts)
    first, tstart, entry = plan(counts, R)
    used = first[-1]
    rows = bf16(rng.uniform(-1, 1, (R, Hd)))
    rows[used:] = np.nan  # the tail: never counted, never read into a stored row
    gate_up = bf16(rng.uniform(-1, 1, (E, 2 * I, Hd)) * (3 / Hd) ** 0.5)
    down = bf16(rng.uniform(-1, 1, (E, Hd, I)) * (3 / I) ** 0.5)
    h = np.full((R, I), np.nan)  # scratch: rows past `used` stay unwritten (NaN)
    out = np.full((R, Hd), np.nan)
    max_entries = cdiv(R, ROWS) + min(E, R)
    nc_up, nc_down = cdiv(I, COLS // 2), cdiv(Hd, COLS)
    wh, wo = np.zeros((R, I), int), np.zeros((R, Hd), int)
    stats = [0, 0]  # full, small tiles
    gemm_kernel(rows, gate_up, h, True, I, Hd, I, nc_up, first, tstart, entry, wh, min(max_entries * nc_up, sms),
                stats)
    gemm_kernel(h, down, out, False, Hd, I, I, nc_down, first, tstart, entry, wo, min(max_entries * nc_down, sms),
                stats)
    assert (wh[:used] == 1).all() and (wh[used:] == 0).all(), "h rows written once each"
    assert (wo[:used] == 1).all() and (wo[used:] == 0).all(), "out rows written once each"
    out[used:] = 0.0  # launch_zero_rows
    want = np.zeros((R, Hd))
    for e in range(E):
        a, b = first[e], first[e + 1]
        if b <= a:
            continue
        gu = rows[a:b] @ gate_up[e].T
        hh = bf16(gu[:, :I] / (1 + np.exp(-gu[:, :I])) * gu[:, I:])
        want[a:b] = hh @ down[e].T
    assert np.isfinite(out).all(), "NaN reached a stored row"
    err = np.abs(out - bf16(want)).max() / max(np.abs(want).max(), 1e-30)
    assert err < 1e-2, err
    return used, err, stats


def check_math_cases():
    cases = [
        ("Hd=72 I=40: experts of 130, 0, 17 rows", 147, 72, 40, [130, 0, 17]),
        ("Hd=136 I=136 (I % 128: the gate box crosses into up rows)", 300, 136, 136, [1, 200, 99]),
        ("one expert of 300 rows, tail 20", 320, 64, 32, [0, 300, 0]),
        ("counts past R and negative (clamped)", 200, 64, 48, [-3, 150, 500, 7]),
        ("no rows counted", 40, 64, 32, [0, 0]),
        ("E=1, R=1", 1, 8, 8, [1]),
        ("Hd=200 I=264: several column tiles, 5 experts", 400, 200, 264, [64, 65, 127, 128, 16]),
        ("remainders of 1, 63, 64, 65 rows", 600, 72, 72, [129, 191, 192, 65, 1, 0, 22]),
    ]
    for i, (name, R, Hd, I, counts) in enumerate(cases):
        used, err, stats = check_math(R, Hd, I, counts, seed=i)
        print(f"math: {name}: {used} rows counted ({stats[0]} full, {stats[1]} small tiles), "
              f"max rel err vs float64 {err:.1e}")


if __name__ == "__main__":
    check_layout()
    check_pipeline()
    check_math_cases()
