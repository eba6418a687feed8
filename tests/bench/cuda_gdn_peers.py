"""Gated DeltaNet on the lent GPU beside its peers (issue 21): hops, FLA's Triton
kernels and FlashQLA, forward and forward+backward, in one run.

Each path is called eagerly through its FLA-style namesake: hops through
hops.fla.chunk_gated_delta_rule, FLA through fla.ops.gated_delta_rule with
FLA_FLASH_QLA=0 (FLA routes to FlashQLA when flash_qla is importable, so the
switch keeps its own Triton kernels), FlashQLA through
flash_qla.chunk_gated_delta_rule (auto_cp, its intra-card context
parallelism, on as by default). bf16, K = V = 128, l2norm in the kernel,
the final state out; the backward takes random d_o and d_final_state.
Medians of CUDA events around whole calls (forward; forward + backward), after
warm-up calls that also pay the peers' JIT compilation. The relative L2
difference of o (and of dq, dk, dv for the backward) against FLA's is
printed beside the times.

--hops-bwd-v4 adds a "hops v4" column: hops again with the v4 backward
(HOPS_CUDA_GDN_BWD=v4, read once per process by the library, so a child
process per case runs it and hands back its times and its o, dq, dk, dv).

Prints the table last; --write puts it into docs/PERFORMANCE.md (section
"Gated DeltaNet on Hopper beside FLA and FlashQLA (issue 21)").
Usage: HOPS_LIBRARY=build/plugin/libhops.so PYTHONPATH=shims/python[:flash-qla site] \
       python3 tests/bench/cuda_gdn_peers.py [--write] [--only LABEL,...] [--reps N] [--hops-bwd-v4]"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FLA_FLASH_QLA", "0")  # before fla is imported: FLA's own Triton path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import hops.fla  # noqa: E402

dev = torch.device("cuda")
bf = torch.bfloat16
K = V = 128
PERFORMANCE_MD = Path(__file__).resolve().parents[2] / "docs" / "PERFORMANCE.md"
VARLEN = [1000, 7000, 3000, 5000, 2500, 6000, 4268, 4000]
CASES = [  # label, B, T, H, HV, lengths
    ("B=1 T=4096", 1, 4096, 16, 32, None),
    ("B=1 T=32768", 1, 32768, 16, 32, None),
    ("B=8 T=4096", 8, 4096, 16, 32, None),
    ("varlen 8 / 32768", 1, 32768, 16, 32, VARLEN),
    ("TP8 heads (H=2, HV=4), T=32768", 1, 32768, 2, 4, None),
    ("TP8 heads, T=131072", 1, 131072, 2, 4, None),
]


def peers():
    found = {"hops": hops.fla.chunk_gated_delta_rule}
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
        found["FLA"] = fla_chunk
    except Exception as e:  # noqa: BLE001
        print(f"FLA not importable: {type(e).__name__}: {e}")
    try:
        import flash_qla
        found["FlashQLA"] = flash_qla.chunk_gated_delta_rule
    except Exception as e:  # noqa: BLE001
        print(f"FlashQLA not importable: {type(e).__name__}: {e}")
    return found


def inputs(B, T, H, HV, lengths):
    torch.manual_seed(0)
    q = torch.randn(B, T, H, K, device=dev, dtype=bf)
    k = torch.randn(B, T, H, K, device=dev, dtype=bf)
    v = torch.randn(B, T, HV, V, device=dev, dtype=bf)
    g = F.logsigmoid(torch.randn(B, T, HV, device=dev, dtype=torch.float32)) * 0.1
    beta = torch.rand(B, T, HV, device=dev, dtype=bf).sigmoid()
    cu = None
    if lengths is not None:
        cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), device=dev, dtype=torch.long)
    n = len(lengths) if lengths is not None else B
    d_o = torch.randn(B, T, HV, V, device=dev, dtype=bf)
    d_ht = torch.randn(n, HV, K, V, device=dev, dtype=torch.float32) * 0.01
    return (q, k, v, g, beta), cu, d_o, d_ht


def median_ms(fn, reps, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def run_case(label, B, T, H, HV, lengths, fns, reps, v4=False, save=None):
    leaves, cu, d_o, d_ht = inputs(B, T, H, HV, lengths)
    kw = dict(scale=K ** -0.5, output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    row = {"case": label}
    outs = {}
    for name, fn in fns.items():
        t0 = time.time()
        try:
            with torch.no_grad():
                row[f"{name} fwd"] = median_ms(lambda: fn(*leaves, **kw), reps)
                outs[name] = [fn(*leaves, **kw)[0]]
            grads = [x.detach().clone().requires_grad_(True) for x in leaves]

            def both():
                for x in grads:
                    x.grad = None
                o, ht = fn(*grads, **kw)
                torch.autograd.backward((o, ht), (d_o, d_ht))

            row[f"{name} fwd+bwd"] = median_ms(both, max(3, reps // 2))
            outs[name] += [x.grad for x in grads[:3]]
        except Exception as e:  # noqa: BLE001
            print(f"  {label} {name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
        print(f"  {label} {name}: {time.time() - t0:.1f} s", flush=True)
        torch.cuda.empty_cache()
    if v4:  # hops with the v4 backward, in a child process (the switch is read once)
        with tempfile.TemporaryDirectory() as tmp:
            saved = os.path.join(tmp, "outs.pt")
            child = subprocess.run([sys.executable, __file__, "--child-v4", label, "--reps", str(reps),
                                    "--save", saved], env=dict(os.environ, HOPS_CUDA_GDN_BWD="v4"),
                                   capture_output=True, text=True)
            print(child.stdout + child.stderr, flush=True)
            for line in child.stdout.splitlines():
                if line.startswith("CHILD "):
                    got = json.loads(line[6:])
                    for what in ("fwd", "fwd+bwd"):
                        if f"hops {what}" in got:
                            row[f"hops v4 {what}"] = got[f"hops {what}"]
            if os.path.exists(saved):
                outs["hops v4"] = torch.load(saved)
    if "FLA" in outs:
        ref = outs["FLA"]
        row["diff"] = "; ".join(
            f"{name} " + " ".join(f"{w} {rel(a, b):.1e}" for w, a, b in zip(("o", "dq", "dk", "dv"), got, ref))
            for name, got in outs.items() if name != "FLA")
    if save is not None and "hops" in outs:
        torch.save(outs["hops"], save)
    print(row, flush=True)
    return row


def table(rows, names):
    ours = [n for n in names if n.startswith("hops")]
    others = [n for n in names if n not in ours]
    head = ["case"] + [f"{n} fwd ms" for n in names] + [f"{o} / {n} fwd" for o in ours for n in others]
    head += [f"{n} fwd+bwd ms" for n in names] + [f"{o} / {n} fwd+bwd" for o in ours for n in others]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]

    def cell(x):
        return f"{x:.2f}" if isinstance(x, float) else "-"

    for r in rows:
        cells = [r["case"]] + [cell(r.get(f"{n} fwd")) for n in names]
        for what in ("fwd", "fwd+bwd"):
            if what == "fwd+bwd":
                cells += [cell(r.get(f"{n} fwd+bwd")) for n in names]
            for o in ours:
                for n in others:
                    h, p = r.get(f"{o} {what}"), r.get(f"{n} {what}")
                    cells.append(f"**{p / h:.2f}x**" if h and p else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated case labels")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--hops-bwd-v4", action="store_true", help="add hops with HOPS_CUDA_GDN_BWD=v4")
    parser.add_argument("--child-v4", default=None, help=argparse.SUPPRESS)  # one case, hops only
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_v4:
        case = next(c for c in CASES if c[0] == args.child_v4)
        row = run_case(*case, {"hops": hops.fla.chunk_gated_delta_rule}, args.reps, save=args.save)
        print("CHILD " + json.dumps({k: v for k, v in row.items() if isinstance(v, float)}), flush=True)
        return
    fns = peers()
    names = list(fns)
    if args.hops_bwd_v4:
        names.insert(1, "hops v4")
    rows = []
    for label, B, T, H, HV, lengths in CASES:
        if args.only and label not in args.only.split(","):
            continue
        rows.append(run_case(label, B, T, H, HV, lengths, fns, args.reps, v4=args.hops_bwd_v4))
    text = (f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
            f"{datetime.date.today()}; peers: {', '.join(n for n in names if not n.startswith('hops')) or 'none'}.\n\n"
            "bf16, K = V = 128, l2norm in the kernel, final state out; medians of CUDA events around eager "
            "calls; \"hops / X\" is X's time over hops' (above 1: hops faster).\n\n" + table(rows, names))
    diffs = "; ".join(f"{r['case']}: {r['diff']}" for r in rows if r.get("diff"))
    if diffs:
        text += "\n\nRelative L2 difference against FLA (o, dq, dk, dv): " + diffs
    print("\n" + text)
    if args.write:
        heading = "## Gated DeltaNet on Hopper beside FLA and FlashQLA (issue 21)"
        command = ("Command (on the lent GPU, flash-qla's unpacked site on PYTHONPATH): "
                   "`python3 tests/bench/cuda_gdn_peers.py --write`")
        benchlib.write(PERFORMANCE_MD, "cuda_gdn_peers", f"{heading}\n\n{command}\n\n{text}")


if __name__ == "__main__":
    main()
