"""The CUDA backend's MoE kernels against float64 torch on the GPU: moe_route,
moe_dispatch, moe_expert_mlp, moe_combine and the backwards of dispatch, expert
MLP and combine, through the generic C-ABI binding (hops.ops.library().op).

moe_dispatch runs with v2's bookkeeping (the default), v1's
(HOPS_CUDA_MOE_DISPATCH=v1) and v3 (=v3: v2's kernels chained by programmatic
dependent launch, its own copy kernel; =v3-chain, bf16 only: that chain with
v2's copy kernel). Every expert-MLP path is covered: tensor cores (f16/bf16, Hd and I multiples
of 8, unit-stride 16-byte aligned rows) forced onto the sm_90a wgmma kernels
(HOPS_CUDA_MOE_MLP=wgmma, on a compute capability 9.0 device: a call they
do not take fails) and onto mma.sync (=mma), and the general f32 kernel (f32,
Hd or I off the multiple of 8, transposed weights); the row ops' 16-byte and
element-wise paths likewise (Hd = 3, transposed x). Cases: E = 1, 7, 64, 256,
k = 0, 1, 2, 8, 10, T = 0, 1, ..., every slot to one expert (600+ rows of one
expert), experts without rows, dropped slots (all of them too), repeated
experts in a token, int32 and int64 indices, device- and host-resident index
tensors, routing weights in another dtype, row maps no dispatch makes
(shuffled; rows read twice for combine), counts summing below R (zero tail).
On the GPU only (the op's check rejects them in host memory): device-resident
ids and rows outside their range (dropped), counts past R (clamped), and a row
named by two slots for combine_bwd (the later slot's gradient).

Fresh random inputs per case; float outputs are poisoned with NaN and index
outputs with 12345 first, so an unwritten element fails. Tolerances (relative
L2 against float64 of the same rounded inputs): 1e-5 for f32, 1e-2 for
f16/bf16; rows, counts, row maps and ids must match exactly. The backwards and
the expert MLP run twice and must agree bitwise (deterministic).

Usage: HOPS_LIBRARY=build/plugin/libhops.so PYTHONPATH=shims/python \\
       python3 tests/bench/cuda_moe_check.py [--quick] [--device cpu]
Prints PASS/FAIL per case and exits 1 on any failure. --device cpu runs the
same cases on the CPU backend (a check of this script off the GPU)."""

import argparse
import math
import os
import sys

import torch

import hops.ops as hops_ops

dev = torch.device("cuda")
ON_GPU = True
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
RESULTS = []
SENTINEL = 12345


def op(name):
    return hops_ops.library().op(name)


def short(dtype):
    return str(dtype)[6:]


def rel(got, want):
    got, want = got.double(), want.double()
    if got.shape != want.shape or not torch.isfinite(got).all():
        return math.inf
    den = want.norm().item()
    num = (got - want).norm().item()
    return num / den if den > 0 else num


def exact(got, want):
    return 0.0 if got.shape == want.shape and torch.equal(got.cpu().long(), want.cpu().long()) else math.inf


def bitwise(a, b):
    view = {2: torch.int16, 4: torch.int32}[a.element_size()]
    return torch.equal(a.view(view), b.view(view))


def report(name, errs, tol, extra=""):
    ok = all(e <= (0.0 if k in EXACT_KEYS else tol) for k, e in errs.items())
    RESULTS.append(ok)
    parts = "  ".join(f"{k} {v:.1e}" for k, v in errs.items())
    print(f"{'PASS' if ok else 'FAIL'} {name:<84} {parts} {extra}", flush=True)


EXACT_KEYS = {"rows", "counts", "row_map", "ids", "repeat", "zeros"}


def poison(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=dev)


def poison_index(shape, dtype):
    return torch.full(shape, SENTINEL, dtype=dtype, device=dev)


def index_tensor(values, dtype, host):
    t = torch.as_tensor(values, dtype=dtype)
    return t if host or not ON_GPU else t.to(dev)


def float_tensor(shape, dtype, lo=-1.0, hi=1.0, transposed=False):
    if transposed:  # stored [.., b, a]: the last dim's stride is the row length
        t = torch.empty(*shape[:-2], shape[-1], shape[-2], device=dev).uniform_(lo, hi).to(dtype)
        return t.transpose(-1, -2)
    return torch.empty(*shape, device=dev).uniform_(lo, hi).to(dtype)


# ---- routing tables ------------------------------------------------------------------------

def make_ids(T, k, E, pattern="topk", drop_every=0, bad=False):
    """topk_ids [T,k] (int64, host): distinct experts per token, or repeats,
    one expert, ...; every drop_every-th slot -1; `bad`: ids outside [-1, E)
    in a few slots (device-resident only)."""
    ids = torch.empty(T, k, dtype=torch.int64)
    for t in range(T):
        if pattern == "topk":
            ids[t] = torch.randperm(E)[:k] if k <= E else torch.randint(0, E, (k,))
        elif pattern == "repeats":
            ids[t] = torch.randint(0, E, (k,))
        elif pattern == "one":
            ids[t] = E // 2
        elif pattern == "few":
            ids[t] = 3 * torch.randint(0, (E + 2) // 3, (k,))
    if drop_every:
        flat = ids.view(-1)
        flat[drop_every - 1::drop_every] = -1
    if bad and T * k >= 3:
        flat = ids.view(-1)
        flat[0], flat[T * k // 2], flat[-1] = E + 3, -5, E
    return ids


def ref_dispatch(ids, E):
    """(order of kept slots, counts [E], row_map [T,k]) in float64-free integer math."""
    T, k = ids.shape
    flat = ids.reshape(-1)
    valid = (flat >= 0) & (flat < E)
    key = torch.where(valid, flat, torch.full_like(flat, E))
    order = torch.sort(key, stable=True).indices
    kept = int(valid.sum())
    row_map = torch.full((T * k,), -1, dtype=torch.int64)
    row_map[order[:kept]] = torch.arange(kept)
    counts = torch.bincount(key[valid], minlength=E)[:E] if E > 0 else torch.zeros(0, dtype=torch.int64)
    return order[:kept], counts, row_map.view(T, k)


def clamped_offsets(counts, R):
    first, f = [0], 0
    for c in counts.tolist():
        f = min(f + min(max(c, 0), R), R)
        first.append(f)
    return first


# ---- ops ---------------------------------------------------------------------------------------

def route_case(dtype, label, T, E, k, scoring="softmax", normalize=True, grid=False, idx=torch.int64,
               w_dtype=None):
    if grid:  # values exact in every dtype, with ties
        logits = (torch.randint(-8, 8, (T, E), device=dev).float() / 4).to(dtype)
    else:
        logits = float_tensor((T, E), dtype, -4, 4)
    w_dtype = w_dtype or dtype
    weights, ids = poison((T, k), w_dtype), poison_index((T, k), idx)
    op("moe_route")(logits=logits, topk_weights=weights, topk_ids=ids, normalize=normalize,
                    scoring=0 if scoring == "softmax" else 1)
    l64 = logits.double()
    p = torch.softmax(l64, -1) if scoring == "softmax" else torch.sigmoid(l64)
    order = torch.sort(-l64, dim=-1, stable=True).indices[:, :k] if E > 0 else torch.zeros(T, 0, dtype=torch.long)
    w = p.gather(1, order)
    if normalize and k > 0:
        w = w / w.sum(-1, keepdim=True)
    errs = {"ids": exact(ids, order), "w": rel(weights, w)}
    report(f"route   {short(dtype):<8} {label}", errs, max(TOL[dtype], TOL[w_dtype]))


def dispatch_case(dtype, label, T, k, E, Hd, pattern="topk", drop_every=0, idx=torch.int64, host=False,
                  bad=False, transposed=False, map_dtype=None, version=None):
    if version is not None:
        label = f"{label} [{version}]"
    ids = make_ids(T, k, E, pattern, drop_every, bad)
    x = float_tensor((T, Hd), dtype, transposed=transposed)
    map_dtype = map_dtype or idx
    rows, counts, row_map = poison((T * k, Hd), dtype), poison_index((E,), map_dtype), poison_index((T, k), map_dtype)
    restore = set_env("HOPS_CUDA_MOE_DISPATCH", version)
    try:
        op("moe_dispatch")(x=x, topk_ids=index_tensor(ids, idx, host), rows=rows, counts=counts, row_map=row_map)
    finally:
        restore()
    order, want_counts, want_map = ref_dispatch(ids, E)
    want_rows = torch.zeros(T * k, Hd, dtype=dtype, device=dev)
    if len(order):
        want_rows[:len(order)] = x[(order // k).to(dev)]
    errs = {"rows": 0.0 if torch.equal(rows.view(torch.int16 if rows.element_size() == 2 else torch.int32),
                                       want_rows.view(torch.int16 if rows.element_size() == 2 else torch.int32))
            else math.inf,
            "counts": exact(counts, want_counts), "row_map": exact(row_map, want_map)}
    report(f"dispatch {short(dtype):<7} {label}", errs, 0.0)


def routed_rows(T, k, E, pattern="topk", drop_every=0, shuffled=False, any_rows=False, R=None):
    """A row map [T,k] (int64, host) and R: a dispatch's, shuffled, or any rows (repeats)."""
    ids = make_ids(T, k, E, pattern, drop_every)
    _, _, row_map = ref_dispatch(ids, E)
    R = T * k if R is None else R
    if shuffled:
        perm = torch.randperm(R)
        row_map = torch.where(row_map >= 0, perm[row_map.clamp(min=0)], row_map)
    if any_rows:
        row_map = torch.where(row_map >= 0, torch.randint(0, max(R, 1), row_map.shape), row_map)
    return row_map, R


def ref_gather(rows, row_map, w):
    T, k = row_map.shape
    out = torch.zeros(T, rows.shape[1], dtype=torch.float64, device=dev)
    for j in range(k):
        r = row_map[:, j].to(dev)
        ok = (r >= 0) & (r < rows.shape[0])
        contrib = rows.double()[r.clamp(0, max(rows.shape[0] - 1, 0))] if rows.shape[0] else torch.zeros_like(out)
        wj = w[:, j].double()[:, None] if w is not None else 1.0
        out += torch.where(ok[:, None], wj * contrib, torch.zeros_like(out))
    return out


def combine_case(dtype, label, T, k, E, Hd, w_dtype=None, idx=torch.int64, host=False, bad=False,
                 transposed=False, bwd=False, **routing):
    row_map, R = routed_rows(T, k, E, **routing)
    if bad and T * k >= 2:  # device-resident rows outside [0, R): dropped
        row_map.view(-1)[0], row_map.view(-1)[-1] = R + 5, -3
    rows = float_tensor((R, Hd), dtype, transposed=transposed)
    w_dtype = w_dtype or dtype
    w = float_tensor((T, k), w_dtype, 0, 1)
    m = index_tensor(row_map, idx, host)
    if not bwd:
        y = poison((T, Hd), dtype)
        op("moe_combine")(rows=rows, row_map=m, topk_weights=w, y=y)
        report(f"combine {short(dtype):<8} {label}", {"y": rel(y, ref_gather(rows, row_map, w))},
               max(TOL[dtype], TOL[w_dtype]))
        dx = poison((T, Hd), dtype)
        op("moe_dispatch_bwd")(d_rows=rows, row_map=m, dx=dx)
        report(f"dispbwd {short(dtype):<8} {label}", {"dx": rel(dx, ref_gather(rows, row_map, None))}, TOL[dtype])
        return
    dy = float_tensor((T, Hd), dtype)
    outs = []
    for _ in range(2):
        d_rows, d_w = poison((R, Hd), dtype), poison((T, k), w_dtype)
        op("moe_combine_bwd")(rows=rows, row_map=m, topk_weights=w, dy=dy, d_rows=d_rows, d_topk_weights=d_w)
        outs.append((d_rows, d_w))
    # reference: each row's gradient from the last slot (in (t, j) order) naming it
    want_rows = torch.zeros(R, Hd, dtype=torch.float64, device=dev)
    want_w = torch.zeros(T, k, dtype=torch.float64, device=dev)
    flat = row_map.reshape(-1).tolist()
    for s, r in enumerate(flat):
        t, j = divmod(s, k)
        if 0 <= r < R:
            want_rows[r] = w[t, j].double() * dy[t].double()
            want_w[t, j] = (dy[t].double() * rows[r].double()).sum()
    d_rows, d_w = outs[0]
    same = bitwise(d_rows, outs[1][0]) and bitwise(d_w, outs[1][1])
    errs = {"d_rows": rel(d_rows, want_rows), "d_w": rel(d_w, want_w), "repeat": 0.0 if same else math.inf}
    report(f"combbwd {short(dtype):<8} {label}", errs, max(TOL[dtype], TOL[w_dtype]))
    # without d_topk_weights
    d_rows2 = poison((R, Hd), dtype)
    op("moe_combine_bwd")(rows=rows, row_map=m, topk_weights=w, dy=dy, d_rows=d_rows2, d_topk_weights=None)
    report(f"combbwd {short(dtype):<8} {label}, no d_w", {"d_rows": rel(d_rows2, want_rows)},
           max(TOL[dtype], TOL[w_dtype]))


# ---- the expert MLP -----------------------------------------------------------------------------

def mlp_counts(R, E, pattern, tail=0, bad=False):
    """counts [E] (int64, host) summing to R - tail."""
    used = R - tail
    if pattern == "one":
        counts = torch.zeros(E, dtype=torch.int64)
        counts[E // 2] = used
    elif pattern == "sparse":  # most experts empty
        counts = torch.zeros(E, dtype=torch.int64)
        picks = torch.randint(0, E, (used,))
        counts += torch.bincount(picks[picks % 3 == 0] if E > 2 else picks, minlength=E)[:E]
        counts[0] += used - int(counts.sum())
    else:
        counts = torch.bincount(torch.randint(0, E, (used,)), minlength=E)[:E]
    if bad and E >= 2:  # device-resident: a count past R and a negative one (clamped)
        counts[-1] = R + 100
        counts[0] = -4
    return counts


def ref_mlp(rows, counts, gate_up, down, R):
    first = clamped_offsets(counts, R)
    I = down.shape[2]
    out = torch.zeros(R, rows.shape[1], dtype=torch.float64, device=dev)
    for e in range(len(counts)):
        a, b = first[e], first[e + 1]
        if b <= a:
            continue
        x = rows[a:b]
        gu = x @ gate_up[e].t()
        h = torch.nn.functional.silu(gu[:, :I]) * gu[:, I:]
        out[a:b] = h @ down[e].t()
    return out


def set_env(name, value):
    """name=value (None: unset) until the returned restore() (the host reads it per call)."""
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value

    def restore():
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
    return restore


def mlp_forward_path(path):
    return set_env("HOPS_CUDA_MOE_MLP", path)


def mlp_case(dtype, label, R, Hd, I, E, pattern="uniform", tail=0, idx=torch.int64, host=False, bad=False,
             transposed_w=False, bwd=True, weight_grads=True, path=None):
    if path is not None:
        label = f"{label} [{path}]"
    counts = mlp_counts(R, E, pattern, tail, bad)
    rows = float_tensor((R, Hd), dtype)
    s_gu, s_d = (2.0 / Hd) ** 0.5, (2.0 / max(I, 1)) ** 0.5
    gate_up = (float_tensor((E, 2 * I, Hd), torch.float32, transposed=transposed_w) * s_gu * 3 ** 0.5).to(dtype)
    down = (float_tensor((E, Hd, I), torch.float32, transposed=transposed_w) * s_d * 3 ** 0.5).to(dtype)
    c = index_tensor(counts, idx, host)
    outs = []
    restore = mlp_forward_path(path)
    try:
        for _ in range(2):
            out = poison((R, Hd), dtype)
            op("moe_expert_mlp")(rows=rows, counts=c, gate_up_proj=gate_up, down_proj=down, out=out)
            outs.append(out)
    finally:
        restore()
    r64, gu64, d64 = (x.double().requires_grad_(True) for x in (rows, gate_up, down))
    want = ref_mlp(r64, counts, gu64, d64, R)
    errs = {"out": rel(outs[0], want.detach()), "repeat": 0.0 if bitwise(outs[0], outs[1]) else math.inf}
    report(f"mlp     {short(dtype):<8} {label}", errs, TOL[dtype])
    if not bwd:
        return
    d_out = float_tensor((R, Hd), dtype)
    if want.requires_grad:
        grads = torch.autograd.grad(want, [r64, gu64, d64], d_out.double())
    else:  # no counted rows: every gradient is zero
        grads = [torch.zeros_like(x) for x in (r64, gu64, d64)]
    results = []
    for _ in range(2):
        d_rows = poison((R, Hd), dtype)
        d_gu = poison(gate_up.shape, dtype) if weight_grads else None
        d_d = poison(down.shape, dtype) if weight_grads else None
        op("moe_expert_mlp_bwd")(rows=rows, counts=c, gate_up_proj=gate_up, down_proj=down, d_out=d_out,
                                 d_rows=d_rows, d_gate_up_proj=d_gu, d_down_proj=d_d)
        results.append([x for x in (d_rows, d_gu, d_d) if x is not None])
    names = ("d_rows", "d_gate_up", "d_down")
    errs = {n: rel(got, want) for n, got, want in zip(names, results[0], grads)}
    errs["repeat"] = 0.0 if all(bitwise(a, b) for a, b in zip(*results)) else math.inf
    report(f"mlpbwd  {short(dtype):<8} {label}", errs, TOL[dtype])


# ---- the cases ------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small cases only (for the sanitizers)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    global dev, ON_GPU
    dev = torch.device(args.device)
    ON_GPU = dev.type == "cuda"
    torch.manual_seed(0)
    gpu = ON_GPU
    heavy = not args.quick and ON_GPU  # the float64 reference of the large cases needs the GPU

    route = [
        dict(label="T=100 E=64 k=8 softmax", T=100, E=64, k=8),
        dict(label="T=37 E=7 k=7 (k = E) sigmoid, not normalized", T=37, E=7, k=7, scoring="sigmoid",
             normalize=False),
        dict(label="T=50 E=13 k=3 softmax, not normalized, grid (ties), i32", T=50, E=13, k=3, normalize=False,
             grid=True, idx=torch.int32),
        dict(label="T=64 E=256 k=8 sigmoid normalized, grid (ties)", T=64, E=256, k=8, scoring="sigmoid", grid=True),
        dict(label="T=5 E=1 k=1", T=5, E=1, k=1),
        dict(label="T=9 E=40 k=10 weights f32", T=9, E=40, k=10, w_dtype=torch.float32),
        dict(label="T=3 E=6 k=0", T=3, E=6, k=0),
        dict(label="T=0 E=6 k=2", T=0, E=6, k=2),
    ]
    if heavy:
        route.append(dict(label="T=4096 E=512 k=10 softmax", T=4096, E=512, k=10))
    dispatch = [
        dict(label="T=100 k=8 E=64 Hd=64", T=100, k=8, E=64, Hd=64),
        dict(label="T=37 k=2 E=7 Hd=40 drops, i32", T=37, k=2, E=7, Hd=40, drop_every=5, idx=torch.int32),
        dict(label="T=60 k=10 E=13 Hd=3 (elementwise) repeats", T=60, k=10, E=13, Hd=3, pattern="repeats"),
        dict(label="T=75 k=8 E=64 Hd=64 one expert (600 rows)", T=75, k=8, E=64, Hd=64, pattern="one"),
        dict(label="T=40 k=3 E=1 Hd=16 host ids i32, i64 outputs", T=40, k=3, E=1, Hd=16, host=True,
             idx=torch.int32, map_dtype=torch.int64),
        dict(label="T=33 k=4 E=9 Hd=24 all dropped", T=33, k=4, E=9, Hd=24, drop_every=1),
        dict(label="T=50 k=4 E=20 Hd=48 transposed x, few experts", T=50, k=4, E=20, Hd=48, transposed=True,
             pattern="few"),
        dict(label="T=6 k=0 E=7 Hd=64", T=6, k=0, E=7, Hd=64),
        dict(label="T=0 k=4 E=5 Hd=64", T=0, k=4, E=5, Hd=64),
        dict(label="T=1 k=1 E=1 Hd=8", T=1, k=1, E=1, Hd=8),
        dict(label="T=300 k=6 E=1503 Hd=8 (8 warps per chunk, 47 KB of counters)", T=300, k=6, E=1503, Hd=8,
             pattern="repeats", drop_every=7),
        dict(label="T=300 k=6 E=1504 Hd=8 (one warp per chunk)", T=300, k=6, E=1504, Hd=8, pattern="repeats"),
        dict(label="T=3000 k=8 E=5000 Hd=8 (one warp per chunk)", T=3000, k=8, E=5000, Hd=8),
        dict(label="T=500 k=4 E=20000 Hd=8 (counters in global memory)", T=500, k=4, E=20000, Hd=8,
             pattern="repeats"),
        dict(label="T=2049 k=7 E=257 Hd=16 drops, i32 (T*k off the chunk)", T=2049, k=7, E=257, Hd=16,
             drop_every=11, idx=torch.int32),
        dict(label="T=20 k=40 E=50 Hd=64 drops (k > 32: v3's copy shuffles rows twice)", T=20, k=40, E=50,
             Hd=64, drop_every=9),
        dict(label="T=9 k=3 E=5 Hd=2312 (v3's copy: row in several batches, the last partial)", T=9, k=3,
             E=5, Hd=2312, drop_every=4),
    ]
    if gpu:
        dispatch.append(dict(label="T=64 k=8 E=16 Hd=64 device ids out of range (dropped)", T=64, k=8, E=16,
                             Hd=64, bad=True))
    if heavy:
        dispatch.append(dict(label="T=8192 k=8 E=256 Hd=2048", T=8192, k=8, E=256, Hd=2048))
        dispatch.append(dict(label="T=80000 k=8 E=64 Hd=8 (512 chunks of 1280 slots)", T=80000, k=8, E=64, Hd=8,
                             pattern="repeats", drop_every=13))
    combine = [
        dict(label="T=100 k=8 E=64 Hd=64 (a dispatch's map)", T=100, k=8, E=64, Hd=64),
        dict(label="T=37 k=2 E=7 Hd=40 drops, weights f32, i32", T=37, k=2, E=7, Hd=40, drop_every=3,
             w_dtype=torch.float32, idx=torch.int32),
        dict(label="T=30 k=10 E=13 Hd=3 shuffled rows", T=30, k=10, E=13, Hd=3, shuffled=True),
        dict(label="T=25 k=4 E=5 Hd=96 host map, transposed rows", T=25, k=4, E=5, Hd=96, host=True,
             transposed=True),
        dict(label="T=20 k=3 E=4 Hd=32 all dropped", T=20, k=3, E=4, Hd=32, drop_every=1),
        dict(label="T=6 k=0 E=7 Hd=64", T=6, k=0, E=7, Hd=64),
        dict(label="T=1 k=1 E=1 Hd=2048", T=1, k=1, E=1, Hd=2048),
    ]
    gather_only = [dict(label="T=40 k=5 E=9 Hd=64 rows read twice", T=40, k=5, E=9, Hd=64, any_rows=True)]
    if gpu:
        gather_only.append(dict(label="T=50 k=4 E=9 Hd=64 device rows out of range", T=50, k=4, E=9, Hd=64,
                                bad=True))
        combine.append(dict(label="T=50 k=4 E=9 Hd=64 device rows out of range", T=50, k=4, E=9, Hd=64, bad=True))
        combine.append(dict(label="T=40 k=5 E=9 Hd=64 device rows named twice", T=40, k=5, E=9, Hd=64,
                            any_rows=True))
    mlp = [
        dict(label="R=256 Hd=64 I=32 E=7 uniform", R=256, Hd=64, I=32, E=7),
        dict(label="R=300 Hd=128 I=48 E=13 sparse (empty experts), tail 37", R=300, Hd=128, I=48, E=13,
             pattern="sparse", tail=37),
        dict(label="R=600 Hd=64 I=32 E=64 one expert, i32 counts", R=600, Hd=64, I=32, E=64, pattern="one",
             idx=torch.int32),
        dict(label="R=64 Hd=40 I=20 E=4 (I % 8: general)", R=64, Hd=40, I=20, E=4),
        dict(label="R=50 Hd=5 I=3 E=3 (general)", R=50, Hd=5, I=3, E=3),
        dict(label="R=200 Hd=96 I=40 E=5 transposed weights (general)", R=200, Hd=96, I=40, E=5,
             transposed_w=True),
        dict(label="R=130 Hd=64 I=32 E=1 host counts", R=130, Hd=64, I=32, E=1, host=True),
        dict(label="R=40 Hd=64 I=32 E=6 no rows counted (tail 40)", R=40, Hd=64, I=32, E=6, tail=40),
        dict(label="R=90 Hd=64 I=32 E=3 d_rows only", R=90, Hd=64, I=32, E=3, weight_grads=False),
    ]
    if gpu:
        mlp.append(dict(label="R=100 Hd=64 I=32 E=5 device counts past R and negative", R=100, Hd=64, I=32, E=5,
                        bad=True))
    mlp.append(dict(label="R=700 Hd=136 I=136 E=5 (Hd % 64, I % 128), tail 9", R=700, Hd=136, I=136, E=5,
                    tail=9, bwd=False))
    if heavy:
        mlp += [dict(label="R=8192 Hd=2048 I=512 E=64 (T=1024 k=8)", R=8192, Hd=2048, I=512, E=64),
                dict(label="R=2000 Hd=1024 I=768 E=16 tail 100", R=2000, Hd=1024, I=768, E=16, tail=100)]

    # sm_90a code runs on compute capability 9.0 only; elsewhere =wgmma refuses every call
    hopper = ON_GPU and torch.cuda.get_device_capability(dev) == (9, 0)
    forward_paths = ["wgmma", "mma"] if hopper else ["mma"]

    def guarded(fn, dtype, **case):
        try:
            fn(dtype, **case)
        except Exception as e:  # noqa: BLE001  (a failed call is a failed case)
            RESULTS.append(False)
            print(f"FAIL {fn.__name__} {short(dtype)} {case.get('label', '')}: {type(e).__name__}: "
                  f"{str(e).splitlines()[0][:200]}", flush=True)

    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for case in route:
            guarded(route_case, dtype, **case)
        # v2's bookkeeping (the default), v1's and v3 (HOPS_CUDA_MOE_DISPATCH); v3-chain (v3's
        # bookkeeping chain, v2's copy kernel) in one dtype
        versions = [None, "v1", "v3"] + (["v3-chain"] if dtype == torch.bfloat16 else [])
        for case in dispatch:
            for version in (versions if ON_GPU else [None]):
                guarded(dispatch_case, dtype, **{**case, "version": version})
        for case in combine:
            guarded(combine_case, dtype, **case)
            guarded(combine_case, dtype, **{**case, "bwd": True})
        for case in gather_only:
            guarded(combine_case, dtype, **case)
        for case in mlp:
            # the forward's tensor-core paths, each forced (the backward once)
            tc = (dtype != torch.float32 and case["Hd"] % 8 == 0 and case["I"] % 8 == 0
                  and not case.get("transposed_w", False))
            if not (tc and ON_GPU):
                guarded(mlp_case, dtype, **case)
                continue
            for i, path in enumerate(forward_paths):
                guarded(mlp_case, dtype, **{**case, "path": path, "bwd": case.get("bwd", True) and i == 0})
    passed = sum(RESULTS)
    print(f"cuda_moe_check: {passed}/{len(RESULTS)} passed", "" if passed == len(RESULTS) else "FAILURES")
    sys.exit(0 if passed == len(RESULTS) else 1)


if __name__ == "__main__":
    main()
