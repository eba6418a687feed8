"""Off-GPU check of gdn_recurrent's v2 kernel (issue 21, HOPS_CUDA_RECURRENT=v2:
recurrent_chunk_kernel in backends/cuda/gdn_recurrent.cu), transcribed from its
code: the CTA's thread mapping (warp, lane group, 4 columns a lane, kRows rows
a thread) for both widths, the chunks of up to 4 tokens with the staged q/k in
float4 components (smem starts as NaN, so a component or a column read that
was never written shows), the warps' dot products, warp 0's coefficient table,
the column-local solve, the writing warps of o and the update pass; against
float64 token-by-token math of the op (DESIGN.md) over awkward shapes: K < 128,
V off the CTA's columns, varlen with empty and long (> 4, several chunks)
sequences, skipped slots, fused gates, l2norm on and off.

These check index logic and the chunk algebra, not the hardware or the
rounding: the conformance runner on the GPU checks that.

Usage: python3 tests/bench/cuda_recurrent_emulation.py   (numpy; seconds)"""

import numpy as np

rng = np.random.default_rng(0)
NAN = float("nan")
WARPS, MAXK, CHUNK = 8, 128, 4


def softplus(x):
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def gates(g, beta, fused, A_log, dt_bias, hv):
    if fused:
        g = -np.exp(A_log[hv]) * softplus(g + dt_bias[hv])
        beta = 1.0 / (1.0 + np.exp(-beta))
    return g, beta


# ---- the math (float64), token by token ----------------------------------------------
def reference(q, k, v, g, beta, pool, slots, spans, scale, l2norm, fused, A_log, dt_bias, o):
    HV, K, V = pool.shape[1:]
    H = q.shape[2]
    for n, (row, b, e) in enumerate(spans):
        slot = slots[n]
        if slot < 0:
            continue
        for hv in range(HV):
            h = hv // (HV // H)
            S = pool[slot, hv]
            for t in range(b, e):
                qt, kt = q[row, t, h], k[row, t, h]
                if l2norm:
                    qt, kt = qt / np.sqrt((qt * qt).sum() + 1e-6), kt / np.sqrt((kt * kt).sum() + 1e-6)
                gt, bt = gates(g[row, t, hv], beta[row, t, hv], fused, A_log, dt_bias, hv)
                S *= np.exp(gt)
                u = bt * (v[row, t, hv] - S.T @ kt)
                S += np.outer(kt, u)
                o[row, t, hv] = scale * (S.T @ qt)


# ---- recurrent_chunk_kernel, one CTA (n, hv, column block) at a time ------------------
def chunk_kernel(q, k, v, g, beta, pool, slots, spans, scale, l2norm, fused, A_log, dt_bias, o,
                 lanes_per_row):
    HV, K, V = pool.shape[1:]
    H = q.shape[2]
    groups = 32 // lanes_per_row
    rows = MAXK // (WARPS * groups)
    cols = 4 * lanes_per_row
    for n, (row, b, e) in enumerate(spans):
        slot = slots[n]
        if slot < 0 or b >= e:
            continue
        for hv in range(HV):
            h = hv // (HV // H)
            for bx in range((V + cols - 1) // cols):
                # threads: (warp, lane) -> group, lane_in_row, col, rows row_of(r)
                threads = []
                for warp in range(WARPS):
                    for lane in range(32):
                        group, lir = lane // lanes_per_row, lane % lanes_per_row
                        col = bx * cols + 4 * lir
                        rws = [(warp * rows + r) * groups + group for r in range(rows)]
                        threads.append((warp, lane, group, lir, col, rws))
                # the state loads: float4 per (row, 4 columns); zero past K or V
                s = {}
                for (warp, lane, group, lir, col, rws) in threads:
                    s[warp, lane] = np.array([pool[slot, hv, i, col:col + 4] if (col < V and i < K)
                                              else np.zeros(4) for i in rws])
                for t0 in range(b, e, CHUNK):
                    L = min(CHUNK, e - t0)
                    sk = np.full((MAXK, 4), NAN)
                    sq = np.full((MAXK, 4), NAN)
                    for ei in range(L * MAXK):  # the staging loop (all threads' elements)
                        t, i = ei // MAXK, ei % MAXK
                        sq[i, t] = q[row, t0 + t, h, i] if i < K else 0.0
                        sk[i, t] = k[row, t0 + t, h, i] if i < K else 0.0
                    sv = np.full((CHUNK, lanes_per_row, 4), NAN)
                    for tid in range(L * lanes_per_row):
                        t, j = tid // lanes_per_row, tid % lanes_per_row
                        c = bx * cols + 4 * j
                        sv[t, j] = v[row, t0 + t, hv, c:c + 4] if c < V else 0.0
                    sg, sbeta = np.full(CHUNK, NAN), np.full(CHUNK, NAN)
                    for tid in range(L):
                        sg[tid], sbeta[tid] = gates(g[row, t0 + tid, hv], beta[row, t0 + tid, hv],
                                                    fused, A_log, dt_bias, hv)
                    # the two passes, the shuffles over the warp's groups, part[pass][t][warp][lir]
                    part = np.full((2, CHUNK, WARPS, lanes_per_row, 4), NAN)
                    for p, x in enumerate((sk, sq)):
                        acc = {}
                        for (warp, lane, group, lir, col, rws) in threads:
                            acc[warp, lane] = [sum(x[rws[r], t] * s[warp, lane][r] for r in range(rows))
                                               for t in range(L)]
                        for (warp, lane, group, lir, col, rws) in threads:
                            if group == 0:
                                for t in range(L):
                                    part[p, t, warp, lir] = sum(acc[warp, gg * lanes_per_row + lir][t]
                                                                for gg in range(groups))
                    # dot products: warp d, d + 8, ...
                    kk, kq, qq = np.full((CHUNK, CHUNK), NAN), np.full((CHUNK, CHUNK), NAN), np.full(CHUNK, NAN)
                    for warp in range(WARPS):
                        for d in range(warp, 2 * L * L + L, WARPS):
                            which, j, t = d // (L * L), d % (L * L) // L, d % L
                            a = sq if which == 2 else sk
                            bb = sk if which == 0 else sq
                            ja = t if which == 2 else j
                            val = float((a[:, ja] * bb[:, t]).sum())
                            if which == 0:
                                kk[j, t] = val
                            elif which == 1:
                                kq[j, t] = val
                            else:
                                qq[t] = val
                    # warp 0's coefficient table
                    ckk, ckq = np.full((CHUNK, CHUNK), NAN), np.full((CHUNK, CHUNK), NAN)
                    ck, cq, cu = np.full(CHUNK, NAN), np.full(CHUNK, NAN), np.full(CHUNK, NAN)
                    decay = NAN
                    for lane in range(L * L):
                        j, t = lane // L, lane % L
                        gj = sum(sg[i] for i in range(L) if i <= j)
                        gt = sum(sg[i] for i in range(L) if i <= t)
                        gl = sum(sg[i] for i in range(L))

                        def norm(x):
                            return 1.0 / np.sqrt(x + 1e-6) if l2norm else 1.0
                        ikj, ikt, iqt = norm(kk[j, j]), norm(kk[t, t]), norm(qq[t])
                        between = np.exp(gt - gj)
                        ckk[j, t] = between * ikj * ikt * kk[j, t] if j < t else 0.0
                        ckq[j, t] = scale * between * ikj * iqt * kq[j, t] if j <= t else 0.0
                        if j == 0:
                            ck[t], cq[t] = np.exp(gt) * ikt, scale * np.exp(gt) * iqt
                            cu[t] = np.exp(gl - gt) * ikt
                        if lane == 0:
                            decay = np.exp(gl)
                    # the solve, o from warp t's group 0, the update
                    for (warp, lane, group, lir, col, rws) in threads:
                        u = [None] * L
                        for t in range(L):
                            skv = part[0, t, :, lir].sum(axis=0)
                            x = sv[t, lir] - ck[t] * skv
                            for j in range(t):
                                x = x - ckk[j, t] * u[j]
                            u[t] = sbeta[t] * x
                            if warp == t and group == 0 and col < V:
                                ov = sum(cq[t] * part[1, t, w, lir] for w in range(WARPS))
                                for j in range(t + 1):
                                    ov = ov + ckq[j, t] * u[j]
                                o[row, t0 + t, hv, col:col + 4] = ov
                        u = [cu[j] * u[j] for j in range(L)]
                        for r in range(rows):
                            s[warp, lane][r] = decay * s[warp, lane][r] + sum(sk[rws[r], j] * u[j] for j in range(L))
                for (warp, lane, group, lir, col, rws) in threads:
                    for r, i in enumerate(rws):
                        if col < V and i < K:
                            pool[slot, hv, i, col:col + 4] = s[warp, lane][r]


def run_case(K, V, H, HV, lengths, slots_of, l2norm, fused, lanes_per_row):
    """lengths: tokens per sequence (varlen, packed into one row) or (B, T) dense."""
    if isinstance(lengths, tuple):
        B, T = lengths
        spans = [(n, 0, T) for n in range(B)]
    else:
        B, T = 1, sum(lengths)
        cu = np.concatenate([[0], np.cumsum(lengths)])
        spans = [(0, int(cu[n]), int(cu[n + 1])) for n in range(len(lengths))]
    N = len(spans)
    q = rng.standard_normal((B, T, H, K))
    k = rng.standard_normal((B, T, H, K))
    v = rng.standard_normal((B, T, HV, V))
    g = rng.standard_normal((B, T, HV)) * (1.0 if fused else 0.3) - (0.0 if fused else 0.2)
    beta = rng.standard_normal((B, T, HV)) if fused else rng.uniform(0, 1, (B, T, HV))
    A_log = rng.standard_normal(HV) * 0.3
    dt_bias = rng.standard_normal(HV) * 0.3
    pool = rng.standard_normal((slots_of + 1, HV, K, V)) * 0.1
    slots = rng.permutation(slots_of + 1)[:N]
    if N > 2:
        slots[1] = -1
    scale = K ** -0.5
    want_pool, got_pool = pool.copy(), pool.copy()
    want_o, got_o = np.full_like(v, NAN), np.full_like(v, NAN)
    reference(q, k, v, g, beta, want_pool, slots, spans, scale, l2norm, fused, A_log, dt_bias, want_o)
    chunk_kernel(q, k, v, g, beta, got_pool, slots, spans, scale, l2norm, fused, A_log, dt_bias, got_o,
                 lanes_per_row)
    ok_o = np.array_equal(np.isnan(got_o), np.isnan(want_o)) and \
        np.allclose(got_o[~np.isnan(want_o)], want_o[~np.isnan(want_o)], rtol=1e-9, atol=1e-9)
    ok_s = np.allclose(got_pool, want_pool, rtol=1e-9, atol=1e-9)
    what = f"K={K} V={V} H={H} HV={HV} lengths={lengths} l2norm={l2norm} fused={fused} lanes={lanes_per_row}"
    if not (ok_o and ok_s):
        err_o = np.nanmax(np.abs(got_o - want_o))
        err_s = np.abs(got_pool - want_pool).max()
        raise SystemExit(f"MISMATCH {what}: o {ok_o} (max {err_o:.2e}), state {ok_s} (max {err_s:.2e})")
    print(f"ok {what}")


def main():
    cases = [
        # the bench's shape in small: L = 2, 3, 4 at K = V = 128, both widths
        (128, 128, 1, 2, [2, 3, 4], 4, True, False, 32),
        (128, 128, 1, 2, [4, 1, 3], 4, True, True, 8),
        # several chunks, empty sequences, K below 128, V off the CTA's columns
        (40, 72, 2, 4, [0, 9, 1, 5, 0, 6], 8, True, True, 32),
        (16, 20, 1, 3, [7, 2, 0, 4], 5, False, False, 8),
        (128, 36, 2, 2, (2, 5), 3, True, False, 8),
        (8, 8, 1, 1, (3, 1), 4, False, True, 32),
    ]
    for c in cases:
        run_case(*c)
    print(f"{len(cases)} cases passed")


if __name__ == "__main__":
    main()
