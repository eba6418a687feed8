"""The Hopper (sm_90a) pieces that the off-GPU kernel emulations
(tests/bench/cuda_*_sm90_emulation.py) import: TMA's 128-byte swizzle and its
boxes, wgmma's descriptor reads and accumulator fragments, bf16 rounding, the
mbarrier (arrivals, transaction counts, phase parity) and a scheduler of random
interleavings of a pipeline's threads with TMA writes in flight. They model the
PTX ISA, not the hardware."""

import numpy as np


# ---- layouts ----------------------------------------------------------------------------

def swz(addr):
    """TMA's 128-byte swizzle: address bits 4-6 XOR bits 7-9."""
    return addr ^ (((addr >> 7) & 7) << 4)


def tma_store(smem, dst, tile):
    """A TMA write of tile [rows, 64] of uint16 at dst (1024-aligned), swizzled."""
    assert dst % 1024 == 0
    for r in range(tile.shape[0]):
        for c in range(64):
            smem[swz(dst + r * 128 + c * 2) // 2] = tile[r, c]


def read_kmajor(smem, start, rows, sbo):
    """wgmma's K-major operand [rows, 16] at a descriptor's start (8-row groups sbo apart)."""
    out = np.zeros((rows, 16), np.uint16)
    for i in range(rows):
        for k in range(16):
            a = start + (i // 8) * sbo + (i % 8) * 128 + k * 2
            out[i, k] = smem[swz(a) // 2]
    return out


def read_mnmajor(smem, start, n, lbo, sbo):
    """wgmma's MN-major operand [16, n] at a descriptor's start (64-column blocks lbo apart)."""
    out = np.zeros((16, n), np.uint16)
    for k in range(16):
        for j in range(n):
            a = start + (k // 8) * sbo + (k % 8) * 128 + (j // 64) * lbo + (j % 64) * 2
            out[k, j] = smem[swz(a) // 2]
    return out


def fetch(x, h, row0, rows, seq_end):
    """A TMA box of x [T, H, D]'s head h from row0: zeros past the tensor, NaN past seq_end."""
    out = np.zeros((rows, x.shape[2]))
    for r in range(rows):
        gr = row0 + r
        if gr >= x.shape[0]: out[r] = 0.0
        elif gr >= seq_end: out[r] = np.nan
        else: out[r] = x[gr, h]
    return out


# ---- registers --------------------------------------------------------------------------

_LANE = np.tile(np.arange(32), 4)
_ROW = 16 * np.repeat(np.arange(4), 32) + (_LANE >> 2)  # a warpgroup's thread's row (+8 for e >= 2)
_COL = 2 * (_LANE & 3)                                    # and column in each 8 (+1 for odd e)


def frag(S, n):
    """wgmma's accumulator fragments of S [64, n]: [128 threads, n / 8, 4]."""
    f = np.zeros((128, n // 8, 4))
    for j in range(n // 8):
        for e in range(4):
            f[:, j, e] = S[_ROW + 8 * (e >> 1), 8 * j + _COL + (e & 1)]
    return f


def unfrag(f, n):
    """The inverse of frag: S [64, n] of its fragments."""
    S = np.zeros((64, n))
    for j in range(n // 8):
        for e in range(4):
            S[_ROW + 8 * (e >> 1), 8 * j + _COL + (e & 1)] = f[:, j, e]
    return S


def bf16(x):
    """x rounded to bf16 (to nearest even), as float64."""
    x = np.asarray(x, np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32).astype(np.float64)


# ---- pipelines --------------------------------------------------------------------------

class Bar:
    """An mbarrier: a phase completes when all count arrivals and all expected bytes are in."""
    def __init__(s, count): s.count, s.pending, s.tx, s.phase = count, count, 0, 0
    def done(s, parity): return (s.phase & 1) != parity
    def _maybe(s):
        if s.pending == 0 and s.tx == 0:
            s.phase += 1; s.pending = s.count
    def arrive(s): s.pending -= 1; assert s.pending >= 0; s._maybe()
    def expect_tx(s, b): s.tx += b; s.pending -= 1; assert s.pending >= 0; s._maybe()
    def complete_tx(s, b): s.tx -= b; s._maybe()

    def wait(s, parity):
        """A thread's try_wait.parity loop, one scheduler step a try."""
        while not s.done(parity):
            yield None


def interleave(rnd, procs, most, content, reading, writing):
    """Runs procs in a random order, each yielded (bar, stage, tag) a TMA write landing later."""
    alive = list(range(len(procs)))
    inflight = []
    steps = 0
    while alive or inflight:
        steps += 1
        assert steps < most, "deadlock"
        if inflight and (not alive or rnd.random() < 0.3):
            bar, stage, tag = inflight.pop(rnd.randrange(len(inflight)))
            assert not reading.get(stage), ("TMA lands while read", stage, reading.get(stage))
            writing[stage] -= 1
            content[stage] = tag
            bar.complete_tx(1)
            continue
        if not alive:
            continue
        p = rnd.choice(alive)
        try:
            ev = next(procs[p])
        except StopIteration:
            alive.remove(p)
            continue
        if ev:
            bar, stage, tag = ev
            assert not reading.get(stage), ("TMA issued into a stage being read", stage)
            bar.expect_tx(1)
            writing[stage] = writing.get(stage, 0) + 1
            inflight.append(ev)
