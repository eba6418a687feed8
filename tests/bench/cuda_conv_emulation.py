"""Off-GPU checks of the conv1d fast paths of issue 21 (backends/cuda/conv1d.cu,
conv1d_bwd.cu), transcribed from their code: the host's run sizing, the tiles,
halos, stages and bulk copies of conv_fwd_bulk_kernel and conv_bwd_bulk_kernel
(the asynchronous copies land, and the bulk stores read their smem, at random
points between their issue and the wait that covers them; smem and outputs
start as NaN, so a stale or unwritten element shows), and
conv_decode_vec_kernel's state columns; each against float64 math of the ops
(DESIGN.md section 3) over awkward shapes: T = 1, T off the tile and the run,
W 1..4, state_len W-1 and W, B > 1, partial channel blocks, initial / final
states.

These check index logic, not the hardware or the rounding: the conformance
runner on the GPU checks that.

Usage: python3 tests/bench/cuda_conv_emulation.py   (numpy; about a minute)"""

import random

import numpy as np

rng = np.random.default_rng(0)
NAN = float("nan")


def silu(v):
    return v / (1.0 + np.exp(-v))


def taps_of(weight, W):
    """The kernels' right-aligned taps [4, D]: taps[m] = w[:, m - (4 - W)], 0 before."""
    D = weight.shape[0]
    taps = np.zeros((4, D))
    for m in range(4):
        j = m - (4 - W)
        if j >= 0:
            taps[m] = weight[:, j]
    return taps


# ---- the math (float64) ------------------------------------------------------------------

def ref_fwd(x, weight, bias, act, init):
    """y [B,T,D] of x [B,T,D], weight [D,W], init [B,D,L0] or None."""
    B, T, D = x.shape
    W = weight.shape[1]
    L0 = init.shape[2] if init is not None else 0
    y = np.zeros_like(x)
    for b in range(B):
        for t in range(T):
            acc = bias.copy() if bias is not None else np.zeros(D)
            for j in range(W):
                q = t - (W - 1) + j
                if q >= 0:
                    u = x[b, q]
                elif init is not None and L0 + q >= 0:
                    u = init[b, :, L0 + q]
                else:
                    u = np.zeros(D)
                acc = acc + weight[:, j] * u
            y[b, t] = silu(acc) if act else acc
    return y


def ref_bwd(x, weight, bias, act, init, dy, dfinal):
    """dx, dweight, dbias, d_init of the forward above (final state of L1 columns)."""
    B, T, D = x.shape
    W = weight.shape[1]
    L0 = init.shape[2] if init is not None else 0
    # u over positions -L0 .. T-1
    u = np.zeros((B, L0 + T, D))
    if init is not None:
        u[:, :L0] = init.transpose(0, 2, 1)
    u[:, L0:] = x
    du = np.zeros_like(u)
    dw = np.zeros((D, W))
    db = np.zeros(D)
    for b in range(B):
        for t in range(T):
            pre = bias.copy() if bias is not None else np.zeros(D)
            for j in range(W):
                q = t - (W - 1) + j
                if q >= -L0:
                    pre = pre + weight[:, j] * u[b, L0 + q]
            if act:
                s = 1.0 / (1.0 + np.exp(-pre))
                dpre = dy[b, t] * s * (1.0 + pre * (1.0 - s))
            else:
                dpre = dy[b, t]
            db += dpre
            for j in range(W):
                q = t - (W - 1) + j
                if q >= -L0:
                    dw[:, j] += dpre * u[b, L0 + q]
                    du[b, L0 + q] += dpre * weight[:, j]
        if dfinal is not None:  # final state column c = position T - L1 + c (earlier: init or 0)
            L1 = dfinal.shape[2]
            for c in range(L1):
                q = T - L1 + c
                if q >= -L0:
                    du[b, L0 + q] += dfinal[b, :, c]
    dx = du[:, L0:]
    dinit = du[:, :L0].transpose(0, 2, 1) if init is not None else None
    return dx, dw, db, dinit


# ---- a CTA's asynchronous copies ---------------------------------------------------------

class Async:
    """Pending bulk loads (land on an mbarrier) and bulk stores (read smem in
    bulk groups), run at random points before the waits that cover them."""

    def __init__(self, rand):
        self.rand = rand
        self.loads = []   # (stage, fn)
        self.groups = []  # committed groups: lists of fns
        self.open = []

    def load(self, stage, fn):
        self.loads.append((stage, fn))

    def store(self, fn):
        self.open.append(fn)

    def commit(self):
        self.groups.append(self.open)
        self.open = []

    def maybe(self):
        """Some pending work happens now."""
        for op in list(self.loads):
            if self.rand.random() < 0.3:
                self.loads.remove(op)
                op[1]()
        for g in self.groups:
            for fn in list(g):
                if self.rand.random() < 0.3:
                    g.remove(fn)
                    fn()

    def wait_stage(self, stage):
        for op in [op for op in self.loads if op[0] == stage]:
            self.loads.remove(op)
            op[1]()

    def wait_read(self, pending):
        while len(self.groups) > pending:
            for fn in self.groups.pop(0):
                fn()


# ---- conv_fwd_bulk_kernel ----------------------------------------------------------------

def fwd_runs(B, T, D, kvec, sms, threads=256, blocks_per_sm=2, min_run=64):
    """launch_conv_fwd_bulk's run_tokens and grid."""
    channels = threads * kvec
    strips = B * ((D + channels - 1) // channels)
    fit = sms * blocks_per_sm // strips
    most = (T + min_run - 1) // min_run
    runs = 1 if fit < 1 else min(fit, most)
    run_tokens = (T + runs - 1) // runs
    return run_tokens, strips * ((T + run_tokens - 1) // run_tokens)


def fwd_bulk(x, weight, bias, act, init, kvec, sms, rows=8, stages=3, threads=256, seed=0):
    B, T, D = x.shape
    W = weight.shape[1]
    taps = taps_of(weight, W)
    bvec = bias if bias is not None else np.zeros(D)
    y = np.full_like(x, NAN)
    written = np.zeros(x.shape, int)
    run_tokens, grid = fwd_runs(B, T, D, kvec, sms, threads)
    channels = threads * kvec
    blocks = (D + channels - 1) // channels
    runs = (T + run_tokens - 1) // run_tokens
    rand = random.Random(seed)
    for bid in range(grid):
        block, run, row = bid % blocks, bid // blocks % runs, bid // (blocks * runs)
        t_begin = run * run_tokens
        t_end = min(t_begin + run_tokens, T)
        c0 = block * channels
        width = min(channels, D - c0)  # row_bytes / sizeof(T)
        positions = t_end - t_begin + 3
        tile_count = (positions + rows - 1) // rows
        first_loaded = 0 if t_begin >= 3 else 3 - t_begin
        smem = np.full((stages, rows, channels), NAN)
        cp = Async(rand)

        def cell(k):
            return (k // rows % stages, k % rows)

        def issue(tile):
            lo = max(tile * rows, first_loaded)
            hi = min((tile + 1) * rows, positions)
            for k in range(lo, hi):
                t = t_begin - 3 + k
                assert 0 <= t < T
                s, r = cell(k)

                def land(s=s, r=r, t=t):
                    smem[s, r, :width] = x[row, t, c0:c0 + width]
                cp.load(tile % stages, land)

        for tile in range(min(stages - 1, tile_count)):
            issue(tile)
        win = np.full((4, channels), NAN)
        for tile in range(tile_count):
            cp.maybe()
            cp.wait_stage(tile % stages)
            k_end = min((tile + 1) * rows, positions)
            ch = slice(0, width)  # active threads' channels
            if tile == 0:
                for j in range(3):
                    if j >= first_loaded:
                        s, r = cell(j)
                        win[j, ch] = smem[s, r, ch]
                    elif init is not None:
                        col = init.shape[2] + t_begin - 3 + j
                        win[j, ch] = init[row, c0:c0 + width, col] if col >= 0 else 0.0
                    else:
                        win[j, ch] = 0.0
            for k in range(3 if tile == 0 else tile * rows, k_end):
                s, r = cell(k)
                win[3, ch] = smem[s, r, ch]
                acc = bvec[c0:c0 + width].copy()
                for m in range(4):
                    acc = acc + taps[m, c0:c0 + width] * win[m, ch]
                smem[s, r, ch] = silu(acc) if act else acc
                win[:3] = win[1:].copy()
                cp.maybe()
            for k in range(3 if tile == 0 else tile * rows, k_end):
                t = t_begin - 3 + k
                s, r = cell(k)

                def st(s=s, r=r, t=t):
                    y[row, t, c0:c0 + width] = smem[s, r, :width]
                    written[row, t, c0:c0 + width] += 1
                cp.store(st)
            cp.commit()
            if tile + stages - 1 < tile_count:
                cp.wait_read(1)
                issue(tile + stages - 1)
        cp.wait_read(0)
        assert not cp.loads
    assert (written == 1).all(), "every y element written once"
    return y


# ---- conv_bwd_bulk_kernel ----------------------------------------------------------------

def bwd_runs(B, T, D, sms, threads=256, kvec=4, blocks_per_sm=2, seg=256):
    """launch_conv_bwd_bulk's run_tokens and grid."""
    channels = threads * kvec
    strips = B * ((D + channels - 1) // channels)
    segments = (T + seg - 1) // seg
    fit = sms * blocks_per_sm // strips
    runs = 1 if fit < 1 else min(fit, segments)
    run_tokens = (segments + runs - 1) // runs * seg
    return run_tokens, strips * ((T + run_tokens - 1) // run_tokens)


def bwd_bulk(x, weight, bias, act, init, dy, dfinal, sms, rows=4, stages=6, threads=256,
             kvec=4, seg=256, seed=0):
    """dx and the partials [B * segments, 5, D] (then summed in order as ordered_sum does)."""
    B, T, D = x.shape
    W = weight.shape[1]
    taps = taps_of(weight, W)
    bvec = bias if bias is not None else np.zeros(D)
    L1 = dfinal.shape[2] if dfinal is not None else 0
    dx = np.full_like(x, NAN)
    written = np.zeros(x.shape, int)
    segments = (T + seg - 1) // seg
    partials = np.full((B * segments, 5, D), NAN)
    flushed = np.zeros((B * segments, D), int)
    run_tokens, grid = bwd_runs(B, T, D, sms, threads, kvec, seg=seg)
    channels = threads * kvec
    blocks = (D + channels - 1) // channels
    runs = (T + run_tokens - 1) // run_tokens
    rand = random.Random(seed)
    for bid in range(grid):
        block, run, row = bid % blocks, bid // blocks % runs, bid // (blocks * runs)
        a = run * run_tokens
        b = min(a + run_tokens, T)
        e = min(b + 3, T)
        assert a % seg == 0
        c0 = block * channels
        width = min(channels, D - c0)
        ch = slice(0, width)
        cs = slice(c0, c0 + width)
        positions = b - a + 6
        tile_count = (positions + rows - 1) // rows
        first_loaded = 0 if a >= 3 else 3 - a
        end_loaded = e - a + 3
        xs = np.full((stages, rows, channels), NAN)
        gs = np.full((stages, rows, channels), NAN)
        cp = Async(rand)

        def cell(k):
            return (k // rows % stages, k % rows)

        def issue(tile):
            lo = max(tile * rows, first_loaded)
            hi = min((tile + 1) * rows, end_loaded)
            for k in range(lo, hi):
                t = a - 3 + k
                assert 0 <= t < T
                s, r = cell(k)

                def land(s=s, r=r, t=t, k=k):
                    xs[s, r, :width] = x[row, t, cs]
                    if k >= 3:
                        gs[s, r, :width] = dy[row, t, cs]
                cp.load(tile % stages, land)

        def store(tile):
            for k in range(max(tile * rows, 3), min((tile + 1) * rows, positions - 3)):
                t = a - 3 + k
                s, r = cell(k)

                def st(s=s, r=r, t=t):
                    dx[row, t, cs] = gs[s, r, :width]
                    written[row, t, cs] += 1
                cp.store(st)

        for tile in range(min(stages - 2, tile_count)):
            issue(tile)
        win = np.zeros((4, channels))
        dp = np.zeros((4, channels))
        share = np.zeros((5, channels))

        def flush(segment):
            partials[row * segments + segment, :, cs] = share[:, ch]
            flushed[row * segments + segment, cs] += 1
            share[:] = 0.0

        def step(k):
            t = a - 3 + k
            win[:3] = win[1:].copy()
            dp[:3] = dp[1:].copy()
            if t >= e:
                win[3] = 0.0
                dp[3] = 0.0
            else:
                s, r = cell(k)
                win[3, ch] = xs[s, r, ch]
                g = gs[s, r, ch]
                pre = bvec[cs].copy()
                for m in range(4):
                    pre = pre + taps[m, cs] * win[m, ch]
                if act:
                    sg = 1.0 / (1.0 + np.exp(-pre))
                    dp[3, ch] = g * sg * (1.0 + pre * (1.0 - sg))
                else:
                    dp[3, ch] = g
            if t < b:
                if t > a and t % seg == 0:
                    flush(t // seg - 1)
                for m in range(4):
                    share[m, ch] += dp[3, ch] * win[m, ch]
                share[4, ch] += dp[3, ch]
            if t - 3 < a:
                return
            out = np.zeros(width)
            for m in range(4):
                out = out + taps[m, cs] * dp[3 - m, ch]
            column = t - 3 - T + L1
            if L1 > 0 and column >= 0:
                out = out + dfinal[row, cs, column]
            s, r = cell(k - 3)
            gs[s, r, ch] = out

        for tile in range(tile_count):
            cp.maybe()
            cp.wait_stage(tile % stages)
            if tile == 0:
                for j in range(3):
                    if j >= first_loaded:
                        s, r = cell(j)
                        win[j + 1, ch] = xs[s, r, ch]
                    elif init is not None:
                        column = init.shape[2] + a - 3 + j
                        win[j + 1, ch] = init[row, cs, column] if column >= 0 else 0.0
            k0 = tile * rows
            k_end = min(k0 + rows, positions)
            interior = k0 >= 6 and a - 3 + k0 + rows <= b and (L1 == 0 or a - 6 + k0 + rows <= T - L1)
            if interior:  # the unguarded steps: check that no guard would have fired
                for k in range(k0, k0 + rows):
                    t = a - 3 + k
                    assert k < positions and t < b and t < e and t - 3 >= a
                    assert L1 == 0 or t - 3 - T + L1 < 0
            for k in range(max(k0, 3), k_end):
                step(k)
                cp.maybe()
            if tile > 0:
                store(tile - 1)
            if tile == tile_count - 1:
                store(tile)
            cp.commit()
            if tile + stages - 2 < tile_count:
                cp.wait_read(1)
                issue(tile + stages - 2)
        flush((b - 1) // seg)
        cp.wait_read(0)
        assert not cp.loads
    assert (written == 1).all(), "every dx element written once"
    assert (flushed == 1).all(), "every share written once"
    sums = partials.sum(axis=0)  # [5, D]: row m - (4 - W) of dweight, bias last
    dw = sums[4 - W:4].T
    return dx, dw, sums[4]


# ---- conv_decode_vec_kernel --------------------------------------------------------------

def decode_vec(x, state, slots, weight, bias, act, kvec, zero_skipped):
    """x [N, D] (L = 1), state [S, D, SL] updated in place; returns y."""
    N, D = x.shape
    SL = state.shape[2]
    taps = taps_of(weight, weight.shape[1])
    bvec = bias if bias is not None else np.zeros(D)
    y = np.full_like(x, NAN)
    for n in range(N):
        slot = slots[n]
        for d0 in range(0, D, kvec):
            ch = slice(d0, d0 + kvec)
            if slot < 0:
                if zero_skipped:
                    y[n, ch] = 0.0
                continue
            old = state[slot, ch].copy()  # [kvec, SL]
            win = np.zeros((4, kvec))
            for j in range(1, 4):
                win[3 - j] = old[:, SL - j]
            win[3] = x[n, ch]
            acc = bvec[ch].copy()
            for m in range(4):
                acc = acc + taps[m, ch] * win[m]
            y[n, ch] = silu(acc) if act else acc
            new = np.zeros_like(old)
            for j in range(SL):
                new[:, j] = old[:, j + 1] if j + 1 < SL else x[n, ch]
            state[slot, ch] = new
    return y


def ref_update(x, state, slots, weight, bias, act, zero_skipped, y_before):
    N, D = x.shape
    W = weight.shape[1]
    SL = state.shape[2]
    y = y_before.copy()
    for n in range(N):
        s = slots[n]
        if s < 0:
            if zero_skipped:
                y[n] = 0.0
            continue
        window = np.concatenate([state[s], x[n][:, None]], axis=1)  # [D, SL + 1]
        acc = bias.copy() if bias is not None else np.zeros(D)
        for j in range(W):
            acc = acc + weight[:, j] * window[:, SL + 1 - W + j]
        y[n] = silu(acc) if act else acc
        state[s] = window[:, 1:]
    return y


def check(name, got, want, tol=1e-12):
    if want is None:
        assert got is None, name
        return
    err = np.nanmax(np.abs(got - want)) if got.size else 0.0
    assert not np.isnan(got).any(), f"{name}: NaN (unwritten or stale)"
    assert err <= tol * max(1.0, np.abs(want).max() if want.size else 1.0), f"{name}: err {err}"


# (rows, stages) of the kernels' instances: the default first, then the
# temporary HOPS_CONV_FWD / HOPS_CONV_BWD ones
FWD_TILES = [(8, 3), (4, 3), (4, 5)]
BWD_TILES = [(4, 6), (4, 4)]


def main():
    cases = 0
    # conv_fwd_bulk_kernel: kvec 8 (16-bit) / 4 (f32); few "SMs" so that runs
    # are short and many, or many so that runs hit kBulkMinRun.
    for (B, T, D, W, kvec, sms, L0, act, with_bias) in [
        (1, 1, 2048, 4, 8, 132, 0, True, True),
        (1, 1, 2048, 4, 8, 132, 3, True, True),
        (1, 5, 2056, 3, 8, 4, 4, False, True),
        (2, 37, 1024, 4, 4, 3, 3, True, False),
        (1, 200, 4096, 2, 8, 2, 2, True, True),
        (3, 129, 2048, 1, 8, 5, 0, False, True),
        (1, 300, 1032, 4, 4, 1, 5, True, True),
        (2, 64, 512, 4, 8, 132, 3, True, True),
        (1, 700, 16, 4, 8, 1, 4, True, True),
    ]:
        x = rng.standard_normal((B, T, D))
        w = rng.standard_normal((D, W))
        bias = rng.standard_normal(D) if with_bias else None
        init = rng.standard_normal((B, D, L0)) if L0 else None
        want = ref_fwd(x, w, bias, act, init)
        for rows, stages in FWD_TILES:
            got = fwd_bulk(x, w, bias, act, init, kvec, sms, rows, stages, seed=cases)
            check(f"fwd {rows}x{stages} B={B} T={T} D={D} W={W}", got, want)
            cases += 1
    # conv_bwd_bulk_kernel: 16-bit only (4 channels a thread); runs of whole
    # 256-token segments, several segments per run with few "SMs"
    for (B, T, D, W, sms, L0, L1, act, with_bias) in [
        (1, 1, 1024, 4, 132, 0, 0, True, True),
        (1, 1, 1024, 4, 132, 3, 4, True, True),
        (1, 3, 1032, 3, 4, 2, 2, False, True),
        (2, 37, 1024, 4, 3, 3, 3, True, False),
        (1, 600, 2048, 2, 2, 4, 4, True, True),
        (3, 513, 1024, 1, 1, 0, 0, False, True),
        (1, 770, 1040, 4, 1, 3, 6, True, True),
        (2, 256, 512, 4, 132, 3, 3, True, True),
        (1, 1030, 16, 4, 2, 4, 4, True, True),
    ]:
        x = rng.standard_normal((B, T, D))
        dy = rng.standard_normal((B, T, D))
        w = rng.standard_normal((D, W))
        bias = rng.standard_normal(D) if with_bias else None
        init = rng.standard_normal((B, D, L0)) if L0 else None
        dfinal = rng.standard_normal((B, D, L1)) if L1 else None
        rdx, rdw, rdb, _ = ref_bwd(x, w, bias, act, init, dy, dfinal)
        for rows, stages in BWD_TILES:
            dx, dw, db = bwd_bulk(x, w, bias, act, init, dy, dfinal, sms, rows, stages, seed=cases)
            name = f"bwd {rows}x{stages} B={B} T={T} D={D} W={W}"
            check(name + " dx", dx, rdx)
            check(name + " dweight", dw, rdw, 1e-9)
            check(name + " dbias", db, rdb, 1e-9)
            cases += 1
    # conv_decode_vec_kernel: SL 3 and 4 (its instances), W <= SL + 1
    for (N, D, W, SL, kvec, act, with_bias, zero) in [
        (1, 8, 4, 3, 8, True, True, False),
        (5, 64, 4, 4, 8, True, False, True),
        (4, 32, 3, 3, 4, False, True, True),
        (3, 16, 2, 4, 4, True, True, False),
        (6, 24, 1, 3, 8, True, True, True),
    ]:
        S = 2 * N
        x = rng.standard_normal((N, D))
        w = rng.standard_normal((D, W))
        bias = rng.standard_normal(D) if with_bias else None
        state = rng.standard_normal((S, D, SL))
        slots = rng.permutation(S)[:N]
        slots[N // 2] = -1
        want_state = state.copy()
        want = ref_update(x, want_state, slots, w, bias, act, zero, np.full((N, D), NAN))
        got_state = state.copy()
        got = decode_vec(x, got_state, slots, w, bias, act, kvec, zero)
        skipped = slots < 0
        check("decode y", got[~skipped], want[~skipped])
        assert np.isnan(got[skipped]).all() != zero, "skipped rows"
        check("decode state", got_state, want_state)
        cases += 1
    print(f"{cases} cases passed")


if __name__ == "__main__":
    main()
