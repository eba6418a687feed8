"""MoE on the lent GPU (issue 15): hops' CUDA kernels against torch in the same
run, at the issue's shape T=8192, Hd=2048, E=256, k=8, I=512, bf16 (uniform
top-8 routing: ~256 rows per expert).

- dispatch (v2's bookkeeping, the default, v1's: HOPS_CUDA_MOE_DISPATCH=v1,
  and v3: =v3, v2's kernels chained by programmatic dependent launch with its
  own copy kernel; =v3-chain, that chain with v2's copy kernel; each with its
  kernel split from torch.profiler: with v3 the kernels overlap, so their
  times add up to more than the call) and combine (and their
  backwards) in GB/s, bytes = what the op
  must move at least: dispatch reads x and writes T*k rows; combine reads the
  T*k rows and writes y (indices and weights are < 1% and not counted);
  against a 1 GiB device copy (read + write) measured in the same run, and
  against torch's argsort + index_select dispatch (with bincount and the row
  map) and index_add combine (rows * weights added into y).
- the expert MLP in TFLOP/s (6 Hd I FLOPs per kept row), its forward on both
  tensor-core paths (HOPS_CUDA_MOE_MLP=wgmma: sm_90a, on a 9.0 device; =mma:
  mma.sync), against
  F.grouped_mm / torch._grouped_mm (gate_up, silu * up, down: transformers'
  grouped_mm path) where available, else a loop of torch.mm per expert;
  forward and forward + backward (18 Hd I per row: d_rows and both weight
  gradients; hops recomputes g and u in its backward, not counted).
Each number is the median of 5 timed regions of 10 back-to-back calls (CUDA
events); hops calls go through prepared C-ABI calls. Prints a table last;
--write puts it into docs/PERFORMANCE.md (section "MoE on Hopper (issue 15)").

Usage: HOPS_LIBRARY=build/plugin/libhops.so PYTHONPATH=shims/python \\
       python3 tests/bench/cuda_moe_bench.py [--write] [--quick]"""

import argparse
import datetime
import os
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from prepared_call import Prepared  # noqa: E402

dev = torch.device("cuda")
bf = torch.bfloat16
PERFORMANCE_MD = Path(__file__).resolve().parents[2] / "docs" / "PERFORMANCE.md"
COMMAND = ("HOPS_LIBRARY=build-dev/plugin/libhops.so PYTHONPATH=shims/python "
           "python3 tests/bench/cuda_moe_bench.py --write")


def per_call_ms(fn, calls=10, reps=5):
    """Median over `reps` timed regions of `calls` back-to-back calls, per call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / calls)
    times.sort()
    return times[len(times) // 2]


def kernel_us(fn, calls=20):
    """GPU time per call of each kernel that fn launches (torch.profiler), by name."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    times = {}
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None)
        if t is None:
            t = ev.cuda_time_total
        if t > 0:
            times[ev.key] = times.get(ev.key, 0.0) + t / calls
    return times


def kernel_name(name):
    """A kernel's name with its template arguments, without namespaces and parameters."""
    m = re.search(r"(\w+_kernel(?:<[^>]*>)?)", name)
    return m.group(1) if m else name[:60]


def dispatch_split(fn):
    """(bookkeeping us, copy us, the bookkeeping kernels' us) of a dispatch call."""
    parts = {"count": 0.0, "scan": 0.0, "place": 0.0, "copy": 0.0}
    for name, us in kernel_us(fn).items():
        for part in parts:
            if f"dispatch_{part}_kernel" in name:
                parts[part] += us
    return parts["count"] + parts["scan"] + parts["place"], parts["copy"], parts


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def grouped_mm():
    """The grouped GEMM torch offers here, and its name; None for a loop of torch.mm."""
    if hasattr(F, "grouped_mm"):
        return F.grouped_mm, "F.grouped_mm"
    if hasattr(torch, "_grouped_mm"):
        return torch._grouped_mm, "torch._grouped_mm"
    return None, "torch.mm per expert"


ROWS = []  # (label, hops, torch, unit, torch name, note)


def row(label, hops, ref, unit, ref_name, note=""):
    ROWS.append((label, hops, ref, unit, ref_name, note))
    ratio = f"{hops / ref:5.2f}x" if ref else "  n/a"
    print(f"{label:<34} hops {hops:8.1f} {unit}   {ref_name} {ref:8.1f} {unit}   hops/torch {ratio} {note}",
          flush=True)


def rows_ops(T, Hd, E, k, copy_gbs):
    x = torch.randn(T, Hd, device=dev, dtype=bf)
    ids = torch.randn(T, E, device=dev).topk(k, dim=-1).indices  # int64, k distinct experts per token
    R = T * k
    rows, counts, row_map = (torch.empty(R, Hd, device=dev, dtype=bf), torch.empty(E, device=dev, dtype=torch.int64),
                             torch.empty(T, k, device=dev, dtype=torch.int64))
    dispatch = Prepared("moe_dispatch", x=x, topk_ids=ids, rows=rows, counts=counts, row_map=row_map)

    def torch_dispatch():
        flat = ids.view(-1)
        order = torch.argsort(flat, stable=True)
        out = x.index_select(0, order // k)
        cnt = torch.bincount(flat, minlength=E)
        rmap = torch.empty_like(flat)
        rmap[order] = torch.arange(R, device=dev)
        return out, cnt, rmap

    nbytes = (T + R) * Hd * 2
    ref_ms = per_call_ms(torch_dispatch)
    t_rows, t_counts, t_map = torch_dispatch()
    # v2's bookkeeping (the default), v1's (HOPS_CUDA_MOE_DISPATCH=v1, the one it replaced) and v3
    # (v2's kernels as a programmatic dependent launch chain, its own copy kernel), v3-chain (v2's copy)
    for version in (None, "v1", "v3", "v3-chain"):
        name = "dispatch" if version is None else f"dispatch ({version})"
        if version is not None:
            os.environ["HOPS_CUDA_MOE_DISPATCH"] = version
        try:
            ms = per_call_ms(dispatch)
            dispatch()
            torch.cuda.synchronize()
            same = torch.equal(rows, t_rows) and torch.equal(counts, t_counts) and torch.equal(row_map.view(-1), t_map)
            row(name, nbytes / ms / 1e6, nbytes / ref_ms / 1e6, "GB/s", "argsort+index_select",
                f"{100 * nbytes / ms / 1e6 / copy_gbs:.0f}% of copy; {'same rows, counts, map' if same else 'DIFFERS'}")
            try:
                book, copy_us, parts = dispatch_split(dispatch)
                print(f"{name} kernels (torch.profiler): bookkeeping {book:.1f} us (count {parts['count']:.1f}, "
                      f"scan {parts['scan']:.1f}, place {parts['place']:.1f}), copy {copy_us:.1f} us, "
                      f"call {1000 * ms:.1f} us", flush=True)
                row(f"{name} bookkeeping", book, 0.0, "us", "-",
                    f"count {parts['count']:.1f}, scan {parts['scan']:.1f}, place {parts['place']:.1f} us; "
                    f"copy kernel {copy_us:.1f} us ({nbytes / copy_us / 1e3 / copy_gbs * 100:.0f}% of copy)")
            except Exception as e:  # noqa: BLE001  (the profiler is optional)
                print(f"dispatch split: torch.profiler failed: {e}", flush=True)
        finally:
            os.environ.pop("HOPS_CUDA_MOE_DISPATCH", None)

    w = torch.rand(T, k, device=dev)
    w = w / w.sum(-1, keepdim=True)
    expert_out = torch.randn(R, Hd, device=dev, dtype=bf)
    y = torch.empty(T, Hd, device=dev, dtype=bf)
    combine = Prepared("moe_combine", rows=expert_out, row_map=row_map, topk_weights=w, y=y)
    token_of_row = torch.empty(R, device=dev, dtype=torch.int64)
    token_of_row[row_map.view(-1)] = torch.arange(R, device=dev) // k
    w_of_row = torch.empty(R, device=dev, dtype=torch.float32)
    w_of_row[row_map.view(-1)] = w.view(-1)

    def torch_combine():
        out = torch.zeros(T, Hd, device=dev, dtype=bf)
        return out.index_add_(0, token_of_row, expert_out * w_of_row[:, None].to(bf))

    nbytes = (R + T) * Hd * 2
    ms, ref_ms = per_call_ms(combine), per_call_ms(torch_combine)
    combine()
    want = (expert_out.float()[row_map] * w[..., None]).sum(1)
    row("combine", nbytes / ms / 1e6, nbytes / ref_ms / 1e6, "GB/s", "index_add",
        f"{100 * nbytes / ms / 1e6 / copy_gbs:.0f}% of copy; rel err {rel(y, want):.1e}")

    dx = torch.empty(T, Hd, device=dev, dtype=bf)
    dispatch_bwd = Prepared("moe_dispatch_bwd", d_rows=expert_out, row_map=row_map, dx=dx)
    ms = per_call_ms(dispatch_bwd)
    row("dispatch_bwd", nbytes / ms / 1e6, 0.0, "GB/s", "-", f"{100 * nbytes / ms / 1e6 / copy_gbs:.0f}% of copy")

    dy = torch.randn(T, Hd, device=dev, dtype=bf)
    d_rows, d_w = torch.empty(R, Hd, device=dev, dtype=bf), torch.empty(T, k, device=dev)
    combine_bwd = Prepared("moe_combine_bwd", rows=expert_out, row_map=row_map, topk_weights=w, dy=dy, d_rows=d_rows,
                           d_topk_weights=d_w)
    nbytes_bwd = (T + 2 * R) * Hd * 2  # dy, rows read; d_rows written
    ms = per_call_ms(combine_bwd)
    row("combine_bwd (with d_weights)", nbytes_bwd / ms / 1e6, 0.0, "GB/s", "-",
        f"{100 * nbytes_bwd / ms / 1e6 / copy_gbs:.0f}% of copy")
    del x, rows, expert_out, d_rows, dispatch, combine, dispatch_bwd, combine_bwd
    torch.cuda.empty_cache()
    return counts


def expert_mlp(T, Hd, E, k, I, counts):
    R = T * k
    x = torch.randn(R, Hd, device=dev, dtype=bf)
    gate_up = (torch.randn(E, 2 * I, Hd, device=dev) * Hd ** -0.5).to(bf)
    down = (torch.randn(E, Hd, I, device=dev) * I ** -0.5).to(bf)
    out = torch.empty(R, Hd, device=dev, dtype=bf)
    fwd = Prepared("moe_expert_mlp", rows=x, counts=counts, gate_up_proj=gate_up, down_proj=down, out=out)
    d_out = torch.randn(R, Hd, device=dev, dtype=bf)
    d_rows, d_gu, d_d = torch.empty_like(x), torch.empty_like(gate_up), torch.empty_like(down)
    bwd = Prepared("moe_expert_mlp_bwd", rows=x, counts=counts, gate_up_proj=gate_up, down_proj=down, d_out=d_out,
                   d_rows=d_rows, d_gate_up_proj=d_gu, d_down_proj=d_d)
    kept = int(counts.sum())
    flops = 6 * Hd * I * kept

    def train():
        fwd()
        bwd()

    paths = ["wgmma", "mma"] if torch.cuda.get_device_capability() == (9, 0) else ["mma"]
    path_ms = {}
    for path in paths:
        os.environ["HOPS_CUDA_MOE_MLP"] = path
        try:
            path_ms[path] = per_call_ms(fwd, calls=5)
        finally:
            os.environ.pop("HOPS_CUDA_MOE_MLP")
    ms = per_call_ms(fwd, calls=5)  # the default path
    train_ms = per_call_ms(train, calls=3)
    mm, mm_name = grouped_mm()
    offs = torch.cumsum(counts, 0).to(torch.int32)
    bounds = [0] + offs.tolist()

    def torch_fwd(xx, gu, dd):
        if mm is None:
            parts = []
            for e in range(E):
                xe = xx[bounds[e]:bounds[e + 1]]
                h = xe @ gu[e].t()
                parts.append((F.silu(h[:, :I]) * h[:, I:]) @ dd[e].t())
            return torch.cat(parts)
        h = mm(xx, gu.transpose(-2, -1), offs=offs)
        return mm(F.silu(h[:, :I]) * h[:, I:], dd.transpose(-2, -1), offs=offs)

    ref_tflops, ref_train_tflops, note = 0.0, 0.0, ""
    try:
        with torch.no_grad():
            ref_tflops = flops / per_call_ms(lambda: torch_fwd(x, gate_up, down), calls=5) / 1e9
            want = torch_fwd(x, gate_up, down)
        fwd()
        note = f"out vs torch {rel(out, want):.1e}"
        xg, gug, dg = (t.detach().requires_grad_(True) for t in (x, gate_up, down))
        ref_train_tflops = 3 * flops / per_call_ms(
            lambda: torch.autograd.grad(torch_fwd(xg, gug, dg), [xg, gug, dg], d_out), calls=3) / 1e9
    except Exception as e:  # noqa: BLE001  (hops' numbers still count)
        note += f" torch failed: {str(e).splitlines()[0][:120]}"
    row("expert MLP fwd", flops / ms / 1e9, ref_tflops, "TFLOP/s", mm_name, note)
    for path, t in path_ms.items():
        row(f"expert MLP fwd ({'wgmma' if path == 'wgmma' else 'mma.sync'})", flops / t / 1e9, ref_tflops, "TFLOP/s",
            mm_name, f"HOPS_CUDA_MOE_MLP={path}")
    try:
        for path in paths:
            os.environ["HOPS_CUDA_MOE_MLP"] = path
            try:
                split = kernel_us(fwd, calls=10)
            finally:
                os.environ.pop("HOPS_CUDA_MOE_MLP")
            top = sorted(split.items(), key=lambda kv: -kv[1])[:4]
            print(f"expert MLP fwd kernels [{path}]: " + ", ".join(f"{kernel_name(k)} {v:.0f} us" for k, v in top),
                  flush=True)
    except Exception as e:  # noqa: BLE001  (the profiler is optional)
        print(f"expert MLP split: torch.profiler failed: {e}", flush=True)
    row("expert MLP fwd+bwd", 3 * flops / train_ms / 1e9, ref_train_tflops, "TFLOP/s", mm_name)


def table_text(device, copy_gbs, shape):
    lines = [f"Device: {device}; torch {torch.__version__}; {datetime.date.today().isoformat()}; "
             f"copy {copy_gbs:.0f} GB/s (1 GiB, read + write).", "", f"Shape: {shape}, bf16, uniform top-k routing.", "",
             "| op | hops | torch | hops/torch | torch path | note |", "|---|--:|--:|--:|---|---|"]
    for (label, hops, ref, unit, ref_name, note) in ROWS:
        ratio = f"{hops / ref:.2f}" if ref else "n/a"
        ref_text = f"{ref:.0f} {unit}" if ref else "-"
        lines.append(f"| {label} | {hops:.0f} {unit} | {ref_text} | {ratio} | {ref_name} | {note} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--quick", action="store_true", help="T=2048 (a quarter of the issue's shape)")
    args = parser.parse_args()
    torch.manual_seed(0)
    T, Hd, E, k, I = (2048 if args.quick else 8192), 2048, 256, 8, 512
    device = torch.cuda.get_device_name()
    src = torch.empty(1 << 30, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    copy_gbs = 2 * src.numel() / per_call_ms(lambda: dst.copy_(src), calls=5) / 1e6
    del src, dst
    torch.cuda.empty_cache()
    print(f"{device}: copy {copy_gbs:.0f} GB/s", flush=True)
    counts = rows_ops(T, Hd, E, k, copy_gbs)
    expert_mlp(T, Hd, E, k, I, counts)
    text = table_text(device, copy_gbs, f"T={T} Hd={Hd} E={E} k={k} I={I}")
    print(text)
    if args.write:
        heading = f"## MoE on Hopper (issue 15)\n\nCommand (on the lent GPU, built with HOPS_WITH_CUDA=ON):\n`{COMMAND}`"
        benchlib.write(PERFORMANCE_MD, "cuda_moe_bench", f"{heading}\n\n{text}")


if __name__ == "__main__":
    main()
