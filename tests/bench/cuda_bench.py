"""CUDA backend timing on the lent GPU (issue 5): hops' kernels against the
copy bandwidth and flash-linear-attention (FLA, when importable), one run,
medians. Run by tests/bench/cuda_device_run.sh; prints a table last.

hops calls are prepared once (DLPack views kept alive) and then issued through
the generic api->call with a hops_exec naming the stream, so that they can be
captured in a CUDA graph: graph replays time the kernels without the Python
call overhead (decode at N=1 is a few microseconds of GPU time).

--gdn-bwd-v4 times the selected bwd_* cases again with the v4 backward
(HOPS_CUDA_GDN_BWD=v4, which the library reads once per process: a child
process), their rows tagged [bwd v4], beside the default's rows."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepared_call import Prepared  # noqa: E402

# HOPS_CUDA_RECURRENT=v2 (gdn_recurrent's multi-token kernel, issue 21) in the environment: the
# decode rows time the default kernel (v1) and v2, one after the other, and compare their results.
RECURRENT_PATHS = ["v1", os.environ["HOPS_CUDA_RECURRENT"]] if os.environ.get("HOPS_CUDA_RECURRENT") else [None]
dev = torch.device("cuda")
torch.manual_seed(0)
ROWS = []


def time_graph(fn, calls=20, replays=10):
    """Median microseconds per call from graph replays; eager events if capture fails."""
    fn()
    torch.cuda.synchronize()
    try:
        s = torch.cuda.Stream()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(s):
            g.capture_begin()
            for _ in range(calls):
                fn(s)
            g.capture_end()
        g.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(replays):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) * 1e3 / calls)
        how = "graph"
    except Exception as e:  # noqa: BLE001
        print(f"  (graph capture failed: {e}; eager events)")
        torch.cuda.synchronize()
        times = []
        for _ in range(replays):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(calls):
                fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) * 1e3 / calls)
        how = "eager"
    times.sort()
    return times[len(times) // 2], how


def time_torch(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    times.sort()
    return times[len(times) // 2]


def row(what, us, extra):
    ROWS.append((what, us, extra))
    print(f"{what:<44} {us:>10.1f} us  {extra}", flush=True)


# ---- copy bandwidth --------------------------------------------------------------
src = torch.empty(1 << 30, dtype=torch.uint8, device=dev).random_(0, 255)
dst = torch.empty_like(src)
copy_us = time_torch(lambda: dst.copy_(src))
COPY_BW = 2 * src.numel() / (copy_us * 1e-6) / 1e9
row("copy 1 GiB (read+write)", copy_us, f"{COPY_BW:.0f} GB/s")
del src, dst

try:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
except Exception as e:  # noqa: BLE001
    print(f"FLA not importable: {e}")
    fla_chunk = None

H, HV, K, V = 16, 32, 128, 128
bf = torch.bfloat16


def gdn_inputs(B, T):
    q = torch.randn(B, T, H, K, device=dev, dtype=bf)
    k = torch.randn(B, T, H, K, device=dev, dtype=bf)
    v = torch.randn(B, T, HV, V, device=dev, dtype=bf)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, HV, device=dev, dtype=torch.float32)) * 0.1
    beta = torch.rand(B, T, HV, device=dev, dtype=bf)
    return q, k, v, g, beta


def kernel_times(fn, reps=3):
    """{kernel name: mean device microseconds per call} from the torch profiler (CUPTI)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    times = {}
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us > 0:
            times[e.key[:60]] = us / reps
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def print_kernels(who, fn):
    try:
        for name, us in list(kernel_times(fn).items())[:8]:
            print(f"    {who} kernel {name:<60} {us:9.1f} us", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"    ({who} kernel breakdown failed: {e})", flush=True)


def sequence_offsets(B, lengths):
    """N and cu_seqlens for hops (int32) and FLA (int64); None for a dense batch of B."""
    if lengths is None:
        return B, None, None
    cu64 = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), device=dev, dtype=torch.int64)
    return len(lengths), cu64.to(torch.int32), cu64


def chunk_case(label, B, T, lengths=None, breakdown=False):
    q, k, v, g, beta = gdn_inputs(B, T)
    N, cu32, cu64 = sequence_offsets(B, lengths)
    o = torch.empty_like(v)
    ht = torch.empty(N, HV, K, V, device=dev, dtype=torch.float32)
    call = Prepared("gdn_chunk_fwd", q=q, k=k, v=v, g=g, beta=beta, cu_seqlens=cu32, o=o, final_state=ht,
                    scale=K ** -0.5, use_qk_l2norm=True)
    us, how = time_graph(call, calls=2, replays=5)
    tokens = B * T
    # counted floor: q, k, v read once, o and the final state written once, at the copy bandwidth
    nbytes = tokens * (2 * H * K + 2 * HV * V) * 2 + tokens * HV * (4 + 2) + N * HV * K * V * 4
    floor_us = nbytes / (COPY_BW * 1e9) * 1e6
    extra = f"{tokens / us * 1e6 / 1e6:.2f} Mtok/s, {us / floor_us:.1f}x the {floor_us:.0f} us byte floor ({how})"
    if breakdown:
        print_kernels("hops", call)
    if fla_chunk is not None:
        kw = dict(scale=K ** -0.5, output_final_state=True, use_qk_l2norm_in_kernel=True)
        if cu64 is not None:
            kw["cu_seqlens"] = cu64
        fo, fht = fla_chunk(q, k, v, g, beta, **kw)
        err = ((o.float() - fo.float()).norm() / fo.float().norm()).item()
        errh = ((ht - fht.float()).norm() / fht.float().norm()).item()
        fla_us = time_torch(lambda: fla_chunk(q, k, v, g, beta, **kw), reps=10)
        if breakdown:
            print_kernels("FLA", lambda: fla_chunk(q, k, v, g, beta, **kw))
        extra += f" | FLA {fla_us:.0f} us, hops/FLA speed {fla_us / us:.2f}x | rel diff o {err:.1e} ht {errh:.1e}"
    row(f"gdn_chunk_fwd {label}", us, extra)


def chunk_train_case(label, B, T, lengths=None, breakdown=False):
    """gdn_chunk_fwd + gdn_chunk_bwd against FLA's chunk_gated_delta_rule forward + backward (autograd)."""
    q, k, v, g, beta = gdn_inputs(B, T)
    N, cu32, cu64 = sequence_offsets(B, lengths)
    d_o = torch.randn_like(v)
    dht = torch.randn(N, HV, K, V, device=dev, dtype=torch.float32) * 0.01
    dq, dk, dv, dg, dbeta = (torch.empty_like(x) for x in (q, k, v, g, beta))
    common = dict(q=q, k=k, v=v, g=g, beta=beta, cu_seqlens=cu32, scale=K ** -0.5, use_qk_l2norm=True)
    fwd = Prepared("gdn_chunk_fwd", o=torch.empty_like(v), final_state=torch.empty_like(dht), **common)
    bwd = Prepared("gdn_chunk_bwd", d_final_state=dht, dq=dq, dk=dk, dv=dv, dg=dg, dbeta=dbeta,
                   **common, **{"do": d_o})

    def both(stream=None):
        fwd(stream)
        bwd(stream)

    # Device memory the first call takes (the backend's pool keeps its scratch reserved, so a
    # later case of the same run shows only what it needs beyond the earlier ones).
    torch.cuda.synchronize()
    free_before = torch.cuda.mem_get_info()[0]
    both()
    torch.cuda.synchronize()
    taken_gb = (free_before - torch.cuda.mem_get_info()[0]) / 1e9
    us, how = time_graph(both, calls=1, replays=3)
    bwd_us, _ = time_graph(bwd, calls=1, replays=3)
    extra = (f"bwd alone {bwd_us:.0f} us, {B * T / us:.2f} Mtok/s fwd+bwd ({how}), "
             f"first call took {taken_gb:.2f} GB of device memory")
    if breakdown:
        print_kernels("hops bwd", bwd)
    if fla_chunk is not None:
        # FLA refuses its backward on Hopper under Triton < 3.7.1 (gated chunk_bwd_dqkwg may be wrong,
        # FLA #640): the guard is switched off here for timing only, so its dq/dk/dg are not a reference.
        import fla.ops.common.chunk_o as fla_chunk_o

        fla_chunk_o.TRITON_ABOVE_3_7_1 = True
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, g, beta)]
        kw = dict(scale=K ** -0.5, output_final_state=True, use_qk_l2norm_in_kernel=True)
        if cu64 is not None:
            kw["cu_seqlens"] = cu64

        def fla_both():
            for x in leaves:
                x.grad = None
            fo, fht = fla_chunk(*leaves, **kw)
            torch.autograd.backward((fo, fht), (d_o, dht))

        fla_us = time_torch(fla_both, reps=5)
        diffs = " ".join(f"{name} {((ours.float() - x.grad.float()).norm() / x.grad.float().norm()).item():.1e}"
                         for name, ours, x in zip(("dq", "dk", "dv", "dg", "dbeta"), (dq, dk, dv, dg, dbeta), leaves))
        extra += (f" | FLA (bwd guard off) {fla_us:.0f} us, hops/FLA speed {fla_us / us:.2f}x"
                  f" | rel diff to FLA: {diffs}")
    tag = " [bwd v4]" if os.environ.get("HOPS_CUDA_GDN_BWD") == "v4" else ""
    row(f"gdn_chunk fwd+bwd {label}{tag}", us, extra)


def decode_case(N, L=1):
    """N sequences of L new tokens each (L > 1: speculative / multi-token
    decoding, packed [1, N*L] with cu_seqlens); the state is read and written
    once per sequence whatever L is."""
    rows = N * L
    q = torch.randn(rows, 1, H, K, device=dev, dtype=bf)
    k = torch.randn(rows, 1, H, K, device=dev, dtype=bf)
    v = torch.randn(rows, 1, HV, V, device=dev, dtype=bf)
    g = torch.nn.functional.logsigmoid(torch.randn(rows, 1, HV, device=dev)) * 0.1
    beta = torch.rand(rows, 1, HV, device=dev, dtype=bf)
    if L > 1:
        q, k, v, g, beta = (x.reshape(1, rows, *x.shape[2:]) for x in (q, k, v, g, beta))
        extra = {"cu_seqlens": torch.arange(0, rows + 1, L, device=dev, dtype=torch.int32)}
    else:
        extra = {}
    pool = torch.randn(max(N, 1) * 2, HV, K, V, device=dev, dtype=torch.float32) * 0.01
    idx = torch.randperm(pool.shape[0], device=dev)[:N].to(torch.int32)
    o = torch.empty_like(v)
    call = Prepared("gdn_recurrent", q=q, k=k, v=v, g=g, beta=beta, state=pool, state_indices=idx, o=o,
                    scale=K ** -0.5, use_qk_l2norm=True, **extra)
    nbytes = 2 * N * HV * K * V * 4 + (2 * rows * H * K + 2 * rows * HV * V) * 2
    start, results = pool.clone(), {}
    for path in RECURRENT_PATHS:
        if path is not None:
            # read per call (a capture keeps its kernel); the last path is the environment's own
            os.environ["HOPS_CUDA_RECURRENT"] = path
        pool.copy_(start)  # one call from the same state: the paths' o and new states are compared
        call()
        torch.cuda.synchronize()
        results[path] = (o.float().clone(), pool.clone())
        us, how = time_graph(call, calls=50, replays=10)
        bw = nbytes / (us * 1e-6) / 1e9
        label = f"gdn_recurrent decode N={N} L={L} fp32 pool" + (f" {path}" if path else "")
        row(label, us, f"{bw:.0f} GB/s = {100 * bw / COPY_BW:.0f}% of copy ({how})")
    if len(results) == 2:
        (o1, s1), (o2, s2) = results.values()
        diff_o = ((o2 - o1).abs().max() / o1.abs().max()).item()
        diff_s = ((s2 - s1).abs().max() / s1.abs().max()).item()
        verdict = "ok" if diff_o < 1e-2 and diff_s < 1e-4 else "MISMATCH"
        print(f"    {RECURRENT_PATHS[1]} against v1: max |diff| / max |v1| o {diff_o:.1e} state {diff_s:.1e}"
              f" ({verdict}: o below 1e-2 (bf16), state below 1e-4)", flush=True)


def conv_case():
    Bc, T, D = 1, 32768, 8192
    x = torch.randn(Bc, T, D, device=dev, dtype=bf)
    w = torch.randn(D, 4, device=dev, dtype=bf)
    b = torch.randn(D, device=dev, dtype=bf)
    y = torch.empty_like(x)
    call = Prepared("conv1d_fwd", x=x, weight=w, bias=b, y=y, activation=1)
    us, how = time_graph(call, calls=5, replays=5)
    bw = 2 * x.numel() * 2 / (us * 1e-6) / 1e9
    # check against torch
    ref = torch.nn.functional.conv1d(torch.nn.functional.pad(x.float().transpose(1, 2), (3, 0)),
                                     w.float().unsqueeze(1), b.float(), groups=D)
    ref = torch.nn.functional.silu(ref).transpose(1, 2)
    err = ((y.float() - ref).norm() / ref.norm()).item()
    row("conv1d_fwd [1,32768,8192] bf16", us, f"{bw:.0f} GB/s = {100 * bw / COPY_BW:.0f}% of copy, rel err {err:.1e} ({how})")


def conv_update_case(N=256, D=8192, SL=4):
    x = torch.randn(N, D, device=dev, dtype=bf)
    state = torch.randn(N * 2, D, SL, device=dev, dtype=bf)
    idx = torch.randperm(N * 2, device=dev)[:N].to(torch.int32)
    w = torch.randn(D, 4, device=dev, dtype=bf)
    y = torch.empty_like(x)
    call = Prepared("conv1d_update", x=x, state=state, weight=w, state_indices=idx, y=y, activation=1)
    us, how = time_graph(call, calls=50, replays=10)
    nbytes = (2 * N * D + 2 * N * D * SL) * 2
    bw = nbytes / (us * 1e-6) / 1e9
    row(f"conv1d_update N={N} D={D} state_len={SL}", us, f"{bw:.0f} GB/s = {100 * bw / COPY_BW:.0f}% of copy ({how})")


def conv_bwd_case():
    Bc, T, D = 1, 32768, 8192
    x, dy = (torch.randn(Bc, T, D, device=dev, dtype=bf) for _ in range(2))
    w = torch.randn(D, 4, device=dev, dtype=bf)
    b = torch.randn(D, device=dev, dtype=bf)
    dx = torch.empty_like(x)
    dw, db = torch.empty_like(w), torch.empty_like(b)
    call = Prepared("conv1d_bwd", x=x, weight=w, bias=b, dy=dy, dx=dx, dweight=dw, dbias=db, activation=1)
    us, how = time_graph(call, calls=5, replays=5)
    bw = 3 * x.numel() * 2 / (us * 1e-6) / 1e9  # x, dy read, dx written
    row("conv1d_bwd [1,32768,8192] bf16 W=4 silu", us, f"{bw:.0f} GB/s = {100 * bw / COPY_BW:.0f}% of copy ({how})")


def norm_bwd_case(rows=32768 * 32, D=128):
    x, z, dy = (torch.randn(rows // 32, 32, D, device=dev, dtype=bf) for _ in range(3))
    w = torch.randn(D, device=dev, dtype=bf)
    dx, dz, dw = torch.empty_like(x), torch.empty_like(x), torch.empty_like(w)
    call = Prepared("gated_rmsnorm_bwd", x=x, z=z, weight=w, dy=dy, dx=dx, dz=dz, dweight=dw)
    us, how = time_graph(call, calls=5, replays=5)
    bw = 5 * x.numel() * 2 / (us * 1e-6) / 1e9  # x, z, dy read, dx, dz written
    row(f"gated_rmsnorm_bwd rows={rows} D={D} bf16", us, f"{bw:.0f} GB/s = {100 * bw / COPY_BW:.0f}% of copy ({how})")


if "--profile" in sys.argv:  # the chunk kernels alone, for ncu (cuda_device_run.sh's ncu step)
    q, k, v, g, beta = gdn_inputs(1, 32768)
    call = Prepared("gdn_chunk_fwd", q=q, k=k, v=v, g=g, beta=beta, o=torch.empty_like(v),
                    final_state=torch.empty(1, HV, K, V, device=dev), scale=K ** -0.5, use_qk_l2norm=True)
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    sys.exit(0)

# --only LABEL[,LABEL...] times just those cases (labels as below)
only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else None
for label, fn in [
    ("B=1 T=32768", lambda: chunk_case("B=1 T=32768", 1, 32768, breakdown=True)),
    ("B=8 T=4096", lambda: chunk_case("B=8 T=4096", 8, 4096)),
    ("varlen", lambda: chunk_case("varlen 8 seqs, 32768 tokens", 1, 32768,
                                  [1000, 7000, 3000, 5000, 2500, 6000, 4268, 4000])),
    ("bwd_T4096", lambda: chunk_train_case("B=1 T=4096", 1, 4096)),
    ("bwd_B1", lambda: chunk_train_case("B=1 T=32768", 1, 32768, breakdown=True)),
    ("bwd_B8", lambda: chunk_train_case("B=8 T=4096", 8, 4096)),
    ("bwd_varlen", lambda: chunk_train_case("varlen 8 seqs, 32768 tokens", 1, 32768,
                                            [1000, 7000, 3000, 5000, 2500, 6000, 4268, 4000])),
    ("N=1", lambda: decode_case(1)), ("N=64", lambda: decode_case(64)), ("N=256", lambda: decode_case(256)),
    *((f"N={n} L={l}", lambda n=n, l=l: decode_case(n, l)) for n in (64, 256) for l in (2, 3, 4)),
    ("conv", conv_case), ("conv_update", conv_update_case), ("conv_update3", lambda: conv_update_case(SL=3)),
    ("conv_bwd", conv_bwd_case), ("norm_bwd", norm_bwd_case),
]:
    if only is not None and label not in only:
        continue
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        print(f"{label}: FAILED {type(e).__name__}: {e}", flush=True)
    torch.cuda.empty_cache()

if "--gdn-bwd-v4" in sys.argv and os.environ.get("HOPS_CUDA_GDN_BWD") != "v4":
    cases = [c for c in ("bwd_T4096", "bwd_B1", "bwd_B8", "bwd_varlen") if only is None or c in only]
    child = subprocess.run([sys.executable, __file__, "--only", ",".join(cases)],
                           env=dict(os.environ, HOPS_CUDA_GDN_BWD="v4"), capture_output=True, text=True)
    print(child.stdout + child.stderr, flush=True)
    for line in child.stdout.splitlines():
        found = re.match(r"(gdn_chunk fwd\+bwd .*\[bwd v4\])\s+([\d.]+) us  (.*)", line)
        if found and not any(r[0] == found[1] for r in ROWS):
            ROWS.append((found[1], float(found[2]), found[3]))

print("\n==== summary (H=16 HV=32 K=V=128 bf16; copy bandwidth %.0f GB/s) ====" % COPY_BW)
for what, us, extra in ROWS:
    print(f"{what:<44} {us:>10.1f} us  {extra}")
