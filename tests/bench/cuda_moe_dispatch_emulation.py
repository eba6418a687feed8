"""Off-GPU check of moe_dispatch's bookkeeping v2 (backends/cuda/moe_dispatch_v2.cu),
transcribed from its code: the chunk layout (dispatch_layout), the per-warp
counts (count kernel), the warp-per-bucket scan over the [E + 1][chunks]
table, and the placement (place kernel: bucket bases, the warps' prefixes,
rounds of 32 slots ranked as __match_any_sync groups), for both counter modes
(smem with 8 or 1 warps, and hist's entries with one warp). Compared with a
stable sort by bucket: rows, counts and row maps equal, every row of [0, T*k)
owned by exactly one slot. v3 (HOPS_CUDA_MOE_DISPATCH=v3) launches the same
kernels as a programmatic dependent launch chain (no change to what they
compute) with its own copy kernel, transcribed here too (copy_v3: batches of
pieces, the slots' rows shuffled 32 at a time) and compared with the sorted
rows, zeros past the kept ones.

Usage: python3 tests/bench/cuda_moe_dispatch_emulation.py   (numpy; ~20 s)"""

import random

import numpy as np

K_CHUNK_WARPS, K_MOST_CHUNKS, K_MAX_HIST, K_SMEM = 8, 512, 1 << 24, 47 * 1024


def cdiv(a, b):
    return (a + b - 1) // b


def layout(slots, E, smem_limit=K_SMEM, most_chunks=K_MOST_CHUNKS):
    buckets = E + 1
    warps = K_CHUNK_WARPS if K_CHUNK_WARPS * buckets * 4 <= smem_limit else 1
    shared = warps * buckets * 4 <= smem_limit
    most = min(max(K_MAX_HIST // buckets, 1), most_chunks)
    unit = 32 * warps
    chunk = max(unit, cdiv(cdiv(slots, most), unit) * unit)
    chunks = max(1, cdiv(slots, chunk))
    return warps, shared, chunk, chunks


def rounds(bk, begin, end):
    """The warp's rounds: (bucket, peers count, rank, slot) per live lane, in lane order."""
    base = begin
    while base < end:
        for r in range(4):
            if base + 32 * r >= end:
                break
            lanes = [base + 32 * r + l for l in range(32)]
            b = [bk[s] if s < end else -1 for s in lanes]
            for l in range(32):
                peers = [m for m in range(32) if b[m] == b[l]]
                yield b[l], len(peers), sum(1 for m in peers if m < l), lanes[l]
        base += 128


def emulate(ids, E, smem_limit=K_SMEM, most_chunks=K_MOST_CHUNKS):
    T, k = ids.shape
    slots = T * k
    flat = ids.reshape(-1)
    bk = [int(i) if 0 <= i < E else E for i in flat]
    warps, shared, chunk, chunks = layout(slots, E, smem_limit, most_chunks)
    assert chunks <= K_MOST_CHUNKS and chunks * (E + 1) <= max(K_MAX_HIST, E + 1)
    assert chunk % (32 * warps) == 0
    buckets = E + 1
    span = chunk // warps
    hist = np.zeros((buckets, chunks), np.int64)

    def count_span(c, w):
        ctr = np.zeros(buckets, np.int64)
        begin = c * chunk + w * span
        for b, n, rank, _ in rounds(bk, begin, min(slots, begin + span)):
            if b >= 0 and rank == 0:
                ctr[b] += n
        return ctr

    # (1) count
    for c in range(chunks):
        cnt = [count_span(c, w) for w in range(warps)]
        hist[:, c] = sum(cnt)
    # (2) scan: a warp per bucket, 32 chunks per step with a carry
    total = np.zeros(buckets, np.int64)
    counts = np.full(E, -7, np.int64)
    for b in range(buckets):
        row = hist[b].copy()
        carry = 0
        for i in range(K_MOST_CHUNKS // 32):
            if 32 * i >= chunks:
                break
            v = [row[32 * i + l] if 32 * i + l < chunks else 0 for l in range(32)]
            inc = np.cumsum(v)
            for l in range(32):
                if 32 * i + l < chunks:
                    hist[b, 32 * i + l] = carry + inc[l] - v[l]
            carry += inc[31]
        total[b] = carry
        if b < E:
            counts[b] = carry
    # (3) place
    row_map = np.full((T, k), -9, np.int64)
    dest = np.full(slots, 1 << 40, np.int64)
    nthreads = 32 * warps
    for c in range(chunks):
        cnt = [count_span(c, w) for w in range(warps)] if warps > 1 else None
        per = cdiv(buckets, nthreads)
        sums = []
        for t in range(nthreads):
            b0 = min(buckets, t * per)
            b1 = min(buckets, b0 + per)
            sums.append(sum(total[b0:b1]))
        excl = np.concatenate([[0], np.cumsum(sums)[:-1]])
        nxt = np.zeros((warps, buckets), np.int64)
        for t in range(nthreads):
            b0 = min(buckets, t * per)
            b1 = min(buckets, b0 + per)
            first = excl[t]
            for b in range(b0, b1):
                row = first + hist[b, c]
                first += total[b]
                if not shared:
                    nxt[0, b] = row
                    continue
                for w in range(warps):
                    n = cnt[w][b] if w + 1 < warps else 0
                    nxt[w, b] = row
                    row += n
        for w in range(warps):
            begin = c * chunk + w * span
            # the leader's update after all lanes read: emulate per round
            pending = []
            for b, n, rank, s in rounds(bk, begin, min(slots, begin + span)):
                pending.append((b, n, rank, s))
                if len(pending) == 32:
                    rowv = [nxt[w, bb] + rk if bb >= 0 else 0 for bb, _, rk, _ in pending]
                    for (bb, nn, rk, ss), r in zip(pending, rowv):
                        if bb >= 0 and rk == 0:
                            nxt[w, bb] = r + nn
                    for (bb, nn, rk, ss), r in zip(pending, rowv):
                        if bb < 0:
                            continue
                        kept = bb < E
                        row_map[ss // k, ss % k] = r if kept else -1
                        dest[ss] = r if kept else ~r
                    pending = []
            assert not pending
    return counts, row_map, dest


def copy_v3(x, dest, k, pieces_per_lane=8):
    """v3's copy kernel (moe_dispatch_v2.cu dispatch_copy_kernel), rows as 16-byte pieces: per
    token a batch of 32 * pieces_per_lane pieces at a time (`live` of them), the slots' rows 32 at
    a time (lane l loads dest[t*k + j0 + l], shuffled to every lane), zeros for ~row."""
    T, pieces = x.shape
    rows = np.full((T * k, pieces), -99, np.int64)  # poisoned: every row must be written
    for t in range(T):
        for p0 in range(0, pieces, 32 * pieces_per_lane):
            live = min(pieces - p0, 32 * pieces_per_lane)
            v = [[x[t, p0 + 32 * u + lane] if 32 * u + lane < live else None
                  for u in range(pieces_per_lane)] for lane in range(32)]
            for j0 in range(0, k, 32):
                mine = [dest[t * k + j0 + lane] if j0 + lane < k else 0 for lane in range(32)]
                for j in range(min(32, k - j0)):
                    r = mine[j]
                    for lane in range(32):
                        for u in range(pieces_per_lane):
                            if 32 * u + lane < live:
                                rows[r if r >= 0 else ~r, p0 + 32 * u + lane] = v[lane][u] if r >= 0 else 0
    return rows


def reference(ids, E):
    T, k = ids.shape
    flat = ids.reshape(-1)
    bk = np.array([int(i) if 0 <= i < E else E for i in flat], np.int64)
    order = np.argsort(bk, kind="stable")
    row_of = np.empty(T * k, np.int64)
    row_of[order] = np.arange(T * k)
    counts = np.bincount(bk, minlength=E + 1)[:E]
    row_map = np.where(bk < E, row_of, -1).reshape(T, k)
    return counts, row_map, row_of


def run(ids, E, smem_limit=K_SMEM, name="", most_chunks=K_MOST_CHUNKS):
    counts, row_map, dest = emulate(ids, E, smem_limit, most_chunks)
    rc, rm, rrow = reference(ids, E)
    assert (counts == rc).all(), name
    assert (row_map == rm).all(), name
    owned = np.where(dest >= 0, dest, ~dest)
    assert (owned == rrow).all(), name
    assert sorted(owned.tolist()) == list(range(ids.size)), name
    return layout(ids.size, E, smem_limit, most_chunks)


def run_copy(ids, E, pieces, name):
    """v3's copy over the emulated bookkeeping's destinations against the stable sort's rows."""
    T, k = ids.shape
    _, _, dest = emulate(ids, E)
    x = np.arange(1, T * pieces + 1, dtype=np.int64).reshape(T, pieces)
    rc, _, _ = reference(ids, E)
    flat = ids.reshape(-1)
    bk = np.array([int(i) if 0 <= i < E else E for i in flat], np.int64)
    order = np.argsort(bk, kind="stable")
    want = np.zeros((T * k, pieces), np.int64)
    kept = int(rc.sum())
    want[:kept] = x[order[:kept] // k]
    assert (copy_v3(x, dest, k) == want).all(), name


def main():
    rng = np.random.default_rng(1)
    cases = [
        ("E=1", rng.integers(0, 1, (37, 3)), 1),
        ("E=257", rng.integers(0, 257, (300, 8)), 257),
        ("one expert", np.full((500, 8), 5), 64),
        ("dropped and out of range", rng.integers(-3, 20, (411, 5)), 16),
        ("T=1", rng.integers(-1, 8, (1, 4)), 8),
        ("T=0", np.zeros((0, 4), np.int64), 8),
        ("k=1", rng.integers(-1, 9, (1000, 1)), 9),
        ("E=0", rng.integers(-1, 2, (40, 2)), 0),
        ("slots not a chunk multiple", rng.integers(-1, 300, (2049, 7)), 300),
        ("many chunks", rng.integers(-1, 40, (4111, 16)), 40),
        ("E=1503 (8 warps)", rng.integers(-1, 1503, (700, 4)), 1503),
        ("E=1504 (1 warp, smem)", rng.integers(-1, 1504, (700, 4)), 1504),
    ]
    for name, ids, E in cases:
        lay = run(np.asarray(ids, np.int64), E, name=name)
        print(f"ok  {name}: T*k={ids.size} E={E} (warps, shared, chunk, chunks)={lay}")
    # counters in hist (smem limit lowered so that the global mode is taken at small E)
    ids = rng.integers(-2, 50, (900, 6))
    lay = run(ids, 50, smem_limit=100, name="hist counters")
    print(f"ok  hist counters: (warps, shared, chunk, chunks)={lay}")
    # warps walking several sub-chunks of 128 slots (fewer chunks allowed, as for a large T)
    for lim in (K_SMEM, 100):
        ids = rng.integers(-1, 70, (777, 7))
        lay = run(ids, 70, smem_limit=lim, most_chunks=3, name="long spans")
        print(f"ok  long spans: (warps, shared, chunk, chunks)={lay}")
    r = random.Random(3)
    for i in range(30):
        T, k, E = r.randint(1, 700), r.randint(1, 9), r.randint(0, 300)
        ids = rng.integers(-2, E + 2, (T, k))
        if i % 3 == 0:  # skewed: most slots to a few experts
            ids = np.where(rng.random((T, k)) < 0.8, min(E, 3) - 1, ids)
        run(ids, E, smem_limit=[K_SMEM, 100][i % 2] if i % 5 == 0 else K_SMEM, name=f"random {i}")
    print("ok  30 random routings")
    # v3's copy: k > 32 (two rounds of dest loads), rows of several batches (the last partial)
    for name, ids, E, pieces in [("copy k=40", rng.integers(-1, 50, (6, 40)), 50, 40),
                                 ("copy 600 pieces", rng.integers(-1, 5, (4, 3)), 5, 600),
                                 ("copy 256 pieces", rng.integers(-1, 9, (5, 8)), 9, 256)]:
        run_copy(np.asarray(ids, np.int64), E, pieces, name)
        print(f"ok  {name}")
    # the shape: layout only
    print("issue shape (T=8192, k=8, E=256):", layout(8192 * 8, 256))


if __name__ == "__main__":
    main()
