"""A port of backends/cuda/gdn_bwd_v4_grad.cu's chunk_grad_kernel for the emulation
(cuda_gdn_bwd_v4_emulation.py --port): one CTA at a time, its shared-memory
tiles as arrays under the kernel's names (b1 holds rhs, then dW, then X, as in
the kernel), each product as tile_mma computes it from the operand forms the
kernel names (checked lane by lane by check_tile_mma), the 8 warps' tiles and
the fragment-level helpers (frag_row/frag_col, store_tile, row_sums,
column_sums, dot_rows, the warp-0 scan) lane by lane. Phases run in the
kernel's barrier order, so a buffer read after it was overwritten shows."""

import numpy as np

C, DK = 64, 128
WARPS = [(w if w < 4 else 7 - w, w >> 2) for w in range(8)]  # (mr, nc), as the kernel's Frag
LANES = np.arange(32)
G_, T4 = LANES >> 2, LANES & 3


class Track:
    """Shared-memory accesses of the current barrier interval, and the loads in flight."""

    def __init__(self):
        self.epoch, self.warp, self.log, self.flight, self.hazards = 0, "all", {}, {}, []

    def access(self, buf, idx, kind):
        mask = np.zeros(buf.a.shape, bool)
        mask[idx] = True
        for m in self.flight.get(buf.name, []):
            if (m & mask).any():
                self.hazards.append(f"{buf.name}: {kind} by warp {self.warp} while a load is in flight "
                                    f"(interval {self.epoch})")
        for w, k, m in self.log.setdefault(buf.name, []):
            if w != self.warp and "w" in (k, kind) and (m & mask).any():
                self.hazards.append(f"{buf.name}: {k} by warp {w} and {kind} by warp {self.warp} in "
                                    f"interval {self.epoch}")
        self.log[buf.name].append((self.warp, kind, mask))

    def barrier(self):
        self.epoch += 1
        self.log = {}

    def load(self, buf, value):
        """A cp.async of the whole buffer: in flight until wait()."""
        buf.a[...] = value
        mask = np.ones(buf.a.shape, bool)
        for w, k, m in self.log.get(buf.name, []):
            self.hazards.append(f"{buf.name}: load issued in interval {self.epoch} after a {k} by warp {w}")
        self.flight.setdefault(buf.name, []).append(mask)

    def wait(self):
        self.flight = {}


class Buf:
    """A shared-memory array whose element accesses go through the tracker."""

    def __init__(self, track, name, shape):
        self.t, self.name, self.a = track, name, np.full(shape, np.nan)

    def __getitem__(self, idx):
        self.t.access(self, idx, "r")
        return self.a[idx]

    def __setitem__(self, idx, value):
        self.t.access(self, idx, "w")
        self.a[idx] = value


def product(a, a_t, m0, b, b_t, n0, depth, nt, skip=None):
    """tile_mma<kAT = a_t, kBT = b_t, NT = nt, kSkip = skip>: A is a[m][k] (a_t: a[k][m]), B is
    b[n][k] (b_t: b[k][n]); the warp's 16 x 8 nt result, without the k blocks and n tiles the
    skip rule leaves out."""
    A = (a[:depth, m0:m0 + 16].T if a_t else a[m0:m0 + 16, :depth]).copy()
    B = b[:depth, n0:n0 + 8 * nt] if b_t else b[n0:n0 + 8 * nt, :depth].T
    for k0 in range(0, depth, 32):
        if (skip == "ALower" and k0 > m0 + 15) or (skip == "AUpper" and k0 + 31 < m0):
            A[:, k0:k0 + 32] = 0.0
    D = A @ B
    if skip == "OutLower":
        for t in range(nt):
            if n0 > m0 + 15 or n0 + 8 * t > m0 + 15:
                D[:, 8 * t:8 * t + 8] = 0.0
    return D


def rows_of(mr, e):
    return 16 * mr + G_ + 8 * (e >> 1)


def cols_of(n0, nt, e):
    return n0 + 8 * nt + 2 * T4 + (e & 1)


def to_frag(D, mr, n0, nt_count):
    """The C-layout fragments [lane][nt][e] of a warp's 16 x 8 nt result D (rows 16 mr..)."""
    f = np.zeros((32, nt_count, 4))
    for nt in range(nt_count):
        for e in range(4):
            f[:, nt, e] = D[rows_of(mr, e) - 16 * mr, cols_of(0, nt, e)]
    return f


def store_tile(acc, mr, n0, tile, rnd):
    for nt in range(acc.shape[1]):
        for e in range(4):
            tile[rows_of(mr, e), cols_of(n0, nt, e)] = rnd(acc[:, nt, e])


def row_sums(lo, hi, mr, nc, sums):
    """Quad shuffles (xor 1, 2), then lanes with t4 = 0 write rows 16 mr + g (+8)."""
    for o in (1, 2):
        lo, hi = lo + lo[LANES ^ o], hi + hi[LANES ^ o]
    for l in LANES[T4 == 0]:
        sums[nc, 16 * mr + G_[l]], sums[nc, 16 * mr + G_[l] + 8] = lo[l], hi[l]


def column_sums(value, mr, nc, sums):
    for nt in range(4):
        for e in range(2):
            x = value(nt, e) + value(nt, e + 2)
            for o in (4, 8, 16):
                x = x + x[LANES ^ o]
            for l in LANES[G_ == 0]:
                sums[mr, 32 * nc + 8 * nt + 2 * T4[l] + e] = x[l]


def dot_rows(acc, mr, n0, tile, sums, nc):
    part = [np.zeros(32), np.zeros(32)]
    for nt in range(acc.shape[1]):
        for e in range(4):
            part[e >> 1] = part[e >> 1] + acc[:, nt, e] * tile[rows_of(mr, e), cols_of(n0, nt, e)]
    row_sums(part[0], part[1], mr, nc, sums)


def grad_cta(x, rec_of, state_of, dstate_of, chunk, h, G, scale, l2norm, rnd, out, hazards):
    """One CTA: x holds the inputs (q, k, v, g, beta, do: [B, T, heads, ..]); rec_of(hv), state_of(hv),
    dstate_of(hv) give the record and the 16-bit S^T, dH^T [V][K]; out the gradient arrays. Hazards
    found are appended to `hazards`."""
    row, t0, L = chunk
    tr = Track()
    B = lambda name, shape: Buf(tr, name, shape)  # noqa: E731
    sq, sk, sv, so = B("q", (C, DK)), B("k", (C, DK)), B("v", (C, DK)), B("do", (C, DK))
    ss, sdh, b1, b2, b3 = B("S", (DK, DK)), B("dH", (DK, DK)), B("b1", (C, DK)), B("b2", (C, DK)), B("b3", (C, DK))
    tt, sp, sz = B("T", (C, C)), B("P", (C, C)), B("Z", (C, C))
    vec = {n: B(n, (C,)) for n in ("gc", "bt", "gam", "ee", "rq", "rk")}
    rows = {q: B("rows_" + q, (2, C)) for q in ("qdq", "kx", "vy", "kdk", "pp", "aa", "akk")}
    cols = {q: B("cols_" + q, (4, C)) for q in ("pp", "aa")}
    block = B("block", (8,))
    valid = np.arange(C) < L

    def rows_in(name, head):
        v = np.zeros((C, DK))
        v[:L] = rnd(x[name][row, t0:t0 + L, head])
        return v

    def load_state(hv):
        tr.load(ss, state_of(hv))

    def load_values(hv):
        tr.load(sv, rows_in("v", hv))
        tr.load(so, rows_in("do", hv))

    def load_rest(hv):
        tr.load(sdh, dstate_of(hv))
        tr.load(tt, rec_of(hv)["T"])
        tr.load(sp, rec_of(hv)["M"])

    tr.load(sq, rows_in("q", h))
    tr.load(sk, rows_in("k", h))
    qk_flight = dict(tr.flight)
    load_state(h * G)
    load_values(h * G)
    load_rest(h * G)
    tr.flight = {n: m for n, m in tr.flight.items() if n not in qk_flight}  # wait<3>: q, k landed
    tr.barrier()
    tr.warp = "all"  # norms: threads 0-127 a row each
    for name, r in (("k", "rk"), ("q", "rq")):
        t = sk if name == "k" else sq
        ss2 = (t[:, :] ** 2).sum(1)
        vec[r][:] = np.where(valid, 1 / np.sqrt(ss2 + 1e-6) if l2norm else 1.0, 0.0)
    tr.barrier()
    if l2norm:
        sk[:, :] = rnd(sk[:, :] * vec["rk"][:][:, None])
        sq[:, :] = rnd(sq[:, :] * vec["rq"][:][:, None])
    tr.barrier()
    kk = {}
    for w, (mr, nc) in enumerate(WARPS):
        tr.warp = w
        kk[w] = to_frag(product(sk, False, 16 * mr, sk, False, 32 * nc, DK, 4, "OutLower"), mr, 32 * nc, 4)
    dq = {w: np.zeros((32, 8, 4)) for w in range(8)}
    dk = {w: np.zeros((32, 8, 4)) for w in range(8)}
    for hv in range(h * G, (h + 1) * G):
        nxt = hv + 1 < (h + 1) * G
        tr.warp = 0  # gates
        gl, btv = np.zeros(C), np.zeros(C)
        gl[:L], btv[:L] = x["g"][row, t0:t0 + L, hv], x["beta"][row, t0:t0 + L, hv]
        gcv = np.cumsum(gl)
        vec["gc"][:], vec["bt"][:] = gcv, btv
        vec["gam"][:] = np.where(valid, np.exp(gcv), 0.0)
        vec["ee"][:] = np.where(valid, np.exp(gcv[-1] - gcv), 0.0)
        tr.wait()
        tr.barrier()
        gc, bt, gam, ee = vec["gc"], vec["bt"], vec["gam"], vec["ee"]
        gamma_last = np.exp(gc[C - 1])
        for w, (mr, nc) in enumerate(WARPS):  # rhs -> b1, dU -> b3
            tr.warp = w
            m0, nk = 16 * mr, 64 * nc
            acc = to_frag(product(sk, False, m0, ss, False, nk, DK, 8), mr, nk, 8)
            for nt in range(8):
                for e in range(4):
                    i, j = rows_of(mr, e), cols_of(nk, nt, e)
                    acc[:, nt, e] = bt[i] * (sv[i, j] - gam[i] * acc[:, nt, e])
            store_tile(acc, mr, nk, b1, rnd)
            D = product(sk, False, m0, sdh, False, nk, DK, 8) * ee[m0:m0 + 16][:, None]
            D = D + product(sp, True, m0, so, True, nk, C, 8, "AUpper")
            store_tile(to_frag(D, mr, nk, 8), mr, nk, b3, rnd)
        for w in range(8):  # sum(dH o S): thread-strided, a warp's partial into block[w]
            tr.warp = w
            block[w] = (ss[w * 16:(w + 1) * 16, :] * sdh[w * 16:(w + 1) * 16, :]).sum()
        tr.barrier()
        wres = {}
        for w, (mr, nc) in enumerate(WARPS):  # U -> b2; dW (stored after the barrier)
            tr.warp = w
            store_tile(to_frag(product(tt, False, 16 * mr, b1, True, 64 * nc, C, 8, "ALower"), mr, 64 * nc, 8),
                       mr, 64 * nc, b2, rnd)
            wres[w] = product(b3, False, 16 * mr, ss, True, 64 * nc, DK, 8)
        tr.barrier()
        for w, (mr, nc) in enumerate(WARPS):
            tr.warp = w
            store_tile(to_frag(wres[w], mr, 64 * nc, 8), mr, 64 * nc, b1, rnd)
            m0, nk = 16 * mr, 64 * nc  # dq1
            acc = to_frag(product(so, False, m0, ss, True, nk, DK, 8), mr, nk, 8)
            for e in range(4):
                acc[:, :, e] *= (scale * gam[rows_of(mr, e)])[:, None]
            dot_rows(acc, mr, nk, sq, rows["qdq"], nc)
            dq[w] += acc
        tr.barrier()
        if nxt:
            load_state(hv + 1)
        ys = {}
        for w, (mr, nc) in enumerate(WARPS):  # Y
            tr.warp = w
            m0, nk = 16 * mr, 64 * nc
            ys[w] = to_frag(product(tt, True, m0, b3, True, nk, C, 8, "AUpper"), mr, nk, 8)
            dot_rows(ys[w], mr, nk, sv, rows["vy"], nc)
            for nt in range(8):
                for e in range(4):
                    i, j = rows_of(mr, e), cols_of(nk, nt, e)
                    keep = i < L
                    out["dv"][row, t0 + i[keep], hv, j[keep]] = bt[i[keep]] * ys[w][keep, nt, e]
        tr.barrier()
        xs = {}
        for w, (mr, nc) in enumerate(WARPS):  # Y over dU; X
            tr.warp = w
            store_tile(ys[w], mr, 64 * nc, b3, rnd)
            m0, nk = 16 * mr, 64 * nc
            xs[w] = to_frag(product(tt, True, m0, b1, True, nk, C, 8, "AUpper"), mr, nk, 8)
            dot_rows(xs[w], mr, nk, sk, rows["kx"], nc)
            for e in range(4):
                i = rows_of(mr, e)
                dk[w][:, :, e] -= (bt[i] * gam[i])[:, None] * xs[w][:, :, e]
        tr.barrier()
        dps = {}
        for w, (mr, nc) in enumerate(WARPS):  # X over dW; dP, its sums with P
            tr.warp = w
            store_tile(xs[w], mr, 64 * nc, b1, rnd)
            m0, n0 = 16 * mr, 32 * nc
            dp = to_frag(product(so, False, m0, b2, False, n0, DK, 4, "OutLower"), mr, n0, 4)
            part = [np.zeros(32), np.zeros(32)]
            for nt in range(4):
                for e in range(4):
                    i, j = rows_of(mr, e), cols_of(n0, nt, e)
                    dp[:, nt, e] = np.where(j > i, 0.0, dp[:, nt, e])
                    part[e >> 1] = part[e >> 1] + dp[:, nt, e] * sp[i, j]
            row_sums(part[0], part[1], mr, nc, rows["pp"])
            column_sums(lambda nt, e: dp[:, nt, e] * sp[rows_of(mr, e), cols_of(n0, nt, e)], mr, nc,
                        cols["pp"])
            dps[w] = dp
        tr.barrier()
        for w, (mr, nc) in enumerate(WARPS):  # dPs -> P, Z -> Z
            tr.warp = w
            m0, n0 = 16 * mr, 32 * nc
            yv = to_frag(product(b3, False, m0, sv, False, n0, DK, 4, "OutLower"), mr, n0, 4)
            xk = to_frag(product(b1, False, m0, sk, False, n0, DK, 4, "OutLower"), mr, n0, 4)
            for nt in range(4):
                for e in range(4):
                    i, j = rows_of(mr, e), cols_of(n0, nt, e)
                    dps[w][:, nt, e] *= np.where(j <= i, scale * np.exp(gc[i] - gc[j]), 0.0)
                    yv[:, nt, e] = bt[j] * (yv[:, nt, e] - gam[j] * xk[:, nt, e])
            store_tile(dps[w], mr, n0, sp, rnd)
            store_tile(yv, mr, n0, sz, rnd)
        tr.barrier()
        if nxt:
            load_values(hv + 1)
        das = {}
        for w, (mr, nc) in enumerate(WARPS):  # dA, its sums, B
            tr.warp = w
            m0, n0 = 16 * mr, 32 * nc
            da = to_frag(product(sz, False, m0, tt, False, n0, C, 4, "OutLower"), mr, n0, 4)
            for nt in range(4):
                for e in range(4):
                    i, j = rows_of(mr, e), cols_of(n0, nt, e)
                    da[:, nt, e] = np.where(j < i, -np.exp(np.where(j < i, gc[i] - gc[j], 0.0)) * da[:, nt, e],
                                            0.0)
            akk = [np.zeros(32), np.zeros(32)]
            for nt in range(4):
                for e in range(4):
                    akk[e >> 1] = akk[e >> 1] + da[:, nt, e] * kk[w][:, nt, e]
            row_sums(akk[0], akk[1], mr, nc, rows["akk"])
            row_sums(bt[rows_of(mr, 0)] * akk[0], bt[rows_of(mr, 2)] * akk[1], mr, nc, rows["aa"])
            column_sums(lambda nt, e: bt[rows_of(mr, e)] * da[:, nt, e] * kk[w][:, nt, e], mr, nc, cols["aa"])
            for e in range(4):
                da[:, :, e] *= bt[rows_of(mr, e)][:, None]
            das[w] = da
        tr.barrier()
        for w, (mr, nc) in enumerate(WARPS):
            tr.warp = w
            store_tile(das[w], mr, 32 * nc, sz, rnd)
        tr.barrier()
        for w, (mr, nc) in enumerate(WARPS):  # dq, dk products; U dH^T
            tr.warp = w
            m0, nk = 16 * mr, 64 * nc
            dq[w] += to_frag(product(sp, False, m0, sk, True, nk, C, 8, "ALower"), mr, nk, 8)
            dk[w] += to_frag(product(sp, True, m0, sq, True, nk, C, 8, "AUpper")
                             + product(sz, False, m0, sk, True, nk, C, 8, "ALower")
                             + product(sz, True, m0, sk, True, nk, C, 8, "AUpper"), mr, nk, 8)
            acc = to_frag(product(b2, False, m0, sdh, True, nk, DK, 8), mr, nk, 8)
            dot_rows(acc, mr, nk, sk, rows["kdk"], nc)
            for e in range(4):
                dk[w][:, :, e] += ee[rows_of(mr, e)][:, None] * acc[:, :, e]
        tr.barrier()
        tr.warp = 0  # dbeta, dG, the suffix scan of lane pairs
        rs = {q: v[0, :] + v[1, :] for q, v in rows.items()}
        cs = {q: v[:, :].sum(0) for q, v in cols.items()}
        btv, gamv, eev = bt[:], gam[:], ee[:]
        i2 = np.stack([2 * LANES, 2 * LANES + 1], 1)
        kx, e_kdk = rs["kx"][i2], eev[i2] * rs["kdk"][i2]
        dG = (rs["qdq"][i2] + rs["pp"][i2] - cs["pp"][i2] + rs["aa"][i2] - cs["aa"][i2]
              - btv[i2] * gamv[i2] * kx - e_kdk)
        for r in range(2):
            for l in LANES:
                if i2[l, r] < L:
                    out["dbeta"][row, t0 + i2[l, r], hv] = rs["vy"][i2[l, r]] - gamv[i2[l, r]] * kx[l, r] + \
                        rs["akk"][i2[l, r]]
        end = e_kdk.sum()
        dG[i2 == L - 1] += end + gamma_last * block[:].sum()
        pair = np.where(i2[:, 0] < L, dG[:, 0], 0.0) + np.where(i2[:, 1] < L, dG[:, 1], 0.0)
        run = pair.copy()
        for o in (1, 2, 4, 8, 16):
            run = run + np.where(LANES + o < 32, np.roll(run, -o), 0.0)
        at = np.stack([run, run - np.where(i2[:, 0] < L, dG[:, 0], 0.0)], 1)
        for r in range(2):
            for l in LANES:
                if i2[l, r] < L:
                    out["dg"][row, t0 + i2[l, r], hv] = at[l, r]
        tr.barrier()
        if nxt:
            load_rest(hv + 1)
    # l2norm backward and the stores
    if l2norm:
        for w, (mr, nc) in enumerate(WARPS):
            tr.warp = w
            dot_rows(dq[w], mr, 64 * nc, sq, rows["qdq"], nc)
            dot_rows(dk[w], mr, 64 * nc, sk, rows["kx"], nc)
        tr.barrier()
    for w, (mr, nc) in enumerate(WARPS):
        tr.warp = w
        for nt in range(8):
            for e in range(4):
                i, j = rows_of(mr, e), cols_of(64 * nc, nt, e)
                keep = i < L
                qv, kv = dq[w][:, nt, e], dk[w][:, nt, e]
                if l2norm:
                    qd, kd = rows["qdq"][0, i] + rows["qdq"][1, i], rows["kx"][0, i] + rows["kx"][1, i]
                    qv = vec["rq"][i] * (qv - sq[i, j] * qd)
                    kv = vec["rk"][i] * (kv - sk[i, j] * kd)
                out["dq"][row, t0 + i[keep], h, j[keep]] = qv[keep]
                out["dk"][row, t0 + i[keep], h, j[keep]] = kv[keep]
    hazards += tr.hazards
