"""The Python shim's cost per call (issue 12): gated_rmsnorm on [1, 8] float32 CPU
tensors, a call whose kernel takes well under a microsecond, timed

- in C (tests/bench/shim_overhead.c, compiled here with cc): the typed entry
  op->fn and the generic api->call, with no Python at all;
- through hops.ops.gated_rmsnorm (output allocated by the shim), on torch CPU
  tensors and on numpy arrays;
- through torch.ops.hops.gated_rmsnorm (the torch operator, as a compiled graph
  or the drop-ins reach it) and hops.torch_ops.gated_rmsnorm (its checks first);
- through the generated binding with a caller-allocated output;

and the decode step of the tiny patched Qwen3.5 of tests/python/models.py: hops
calls per decoded token, their shim time estimated (calls x the torch.ops.hops
overhead) and measured (time inside the patched functions minus time inside the
provider's api->call, per token).

    .venv/bin/python tests/bench/bench_shim_overhead.py [--baseline DIR] [--write docs/PERFORMANCE.md]

--baseline DIR times another version of the shim (a shims/python folder, e.g.
`git archive <commit> shims/python | tar -x -C DIR`) in a subprocess on the same
provider and puts its figures beside these. Times are medians over blocks of calls
(per-call mean of each block, a block about 0.1 s); the machine is shared, so each
block also records how many cores other processes kept busy, and a block during
which they kept more than --noisy cores busy is thrown away and run again once
the machine is quiet (at most --redo per path), as bench_cpu_vs_torch does.
"""

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python"))  # models.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib

import torch  # noqa: E402

import benchlib  # noqa: E402
import hops  # noqa: E402


def per_call_us(function, args) -> tuple[float, float, float, int]:
    """(median over the kept blocks of the mean us per call, the fastest block's, others'
    cores averaged over the kept blocks, blocks thrown away for others' load)."""
    for _ in range(min(args.calls, 500)):
        function()
    means, loads, redone = [], [], 0
    benchlib.wait_for_quiet(args.noisy, patience=args.patience)
    while len(means) < args.blocks:
        with benchlib.OtherLoad() as load:
            start = time.perf_counter_ns()
            for _ in range(args.calls):
                function()
            mean = (time.perf_counter_ns() - start) / args.calls / 1e3
        if load.cores > args.noisy and redone < args.redo:
            redone += 1
            benchlib.wait_for_quiet(args.noisy, patience=args.patience)
            continue
        means.append(mean)
        loads.append(load.cores)
    return statistics.median(means), min(means), statistics.fmean(loads), redone


def c_entries(library_path: str, calls: int, blocks: int) -> dict[str, float]:
    """us per call (median over blocks) of the typed entry and of api->call, from shim_overhead.c."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    with tempfile.TemporaryDirectory() as folder:
        binary = Path(folder) / "shim_overhead"
        subprocess.run([compiler, "-O2", "-std=c99", "-I", str(ROOT / "abi" / "include"),
                        str(ROOT / "tests" / "bench" / "shim_overhead.c"), "-o", str(binary), "-ldl"], check=True)
        out = subprocess.run([str(binary), library_path, str(calls), str(blocks)], capture_output=True, text=True,
                             check=True).stdout
    return {name: float(ns) / 1e3 for name, ns in (line.split() for line in out.splitlines())}


def python_entries(args) -> dict[str, tuple[float, float, float, int]]:
    from hops import torch_ops  # noqa: F401 (registers torch.ops.hops)
    x, z, weight = torch.randn(1, 8), torch.randn(1, 8), torch.randn(8)
    xn, zn, wn = x.numpy(), z.numpy(), weight.numpy()
    y = torch.empty(1, 8)
    binding = hops.library().op("gated_rmsnorm")
    operator = torch.ops.hops.gated_rmsnorm
    cases = {
        "hops.ops.gated_rmsnorm, torch CPU tensors": lambda: hops.ops.gated_rmsnorm(x, z, weight),
        "hops.ops.gated_rmsnorm, numpy arrays": lambda: hops.ops.gated_rmsnorm(xn, zn, wn),
        "torch.ops.hops.gated_rmsnorm": lambda: operator(x, z, weight, 1e-6),
        "hops.torch_ops.gated_rmsnorm (its checks, then the operator)":
            lambda: hops.torch_ops.gated_rmsnorm(x, z, weight),
        "the generated binding, caller's output": lambda: binding(x, z, weight, y),
    }
    return {name: per_call_us(function, args) for name, function in cases.items()}


class _Timed:
    """api->call with its time summed into `seconds` (the C side of each call)."""

    def __init__(self, call):
        self._call, self.seconds = call, 0.0

    def __call__(self, *args):
        start = time.perf_counter()
        try:
            return self._call(*args)
        finally:
            self.seconds += time.perf_counter() - start


class _TimedApi:
    """The provider's API table with api->call timed, for shims that call it through the
    table (before Library.call)."""

    def __init__(self, api):
        self._api, self.call = api, _Timed(api.call)

    def __getattr__(self, name):
        return getattr(self._api, name)


def _time_api_calls(library) -> tuple[_Timed, tuple]:
    """Times api->call as the shim makes it; returns the timer and (attribute, value) to restore."""
    if "call" in vars(library):  # Library.call: api->call without ctypes' argument checks
        saved = ("call", library.call)
        library.call = timed = _Timed(library.call)
        return timed, saved
    saved = ("api", library.api)
    library.api = timed_api = _TimedApi(library.api)
    return timed_api.call, saved


def decode_step(args) -> dict:
    """The tiny patched Qwen3.5 decoding args.tokens tokens after a 16-token prompt (timed
    once the machine is quiet): hops calls per token, ms per token, and the shim's time per
    token (inside the patched functions minus inside api->call)."""
    tokens = args.tokens
    import models
    patch_module = importlib.import_module("hops.patch")  # the module (hops.patch is also the function)

    benchlib.quiet_transformers()
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)  # 5.25 renames it
    inside = {"seconds": 0.0}
    redirect = patch_module.Patcher.redirect

    def timed_redirect(self, label, hops_impl, original, like=None):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return hops_impl(*args, **kwargs)
            finally:
                inside["seconds"] += time.perf_counter() - start
        return redirect(self, label, timed, original, like)

    library = hops.library()
    timer, saved = _time_api_calls(library)
    patch_module.Patcher.redirect = timed_redirect
    try:
        model = models.build("qwen3_5")
        report = hops.patch()
        with torch.no_grad():
            prompt = torch.arange(16).reshape(1, 16) % 256
            out = model(prompt, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(3):  # warm up the decode path
                out = model(token, past_key_values=cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
            calls_before, inside["seconds"], timer.seconds = sum(report.kernels.values()), 0.0, 0.0
            fallbacks_before = sum(report.fallbacks.values())
            benchlib.wait_for_quiet(args.noisy, patience=args.patience)
            start = time.perf_counter()
            for _ in range(tokens):
                out = model(token, past_key_values=cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
            elapsed = time.perf_counter() - start
        calls = (sum(report.kernels.values()) - calls_before) / tokens
        fallbacks = (sum(report.fallbacks.values()) - fallbacks_before) / tokens
        return {"calls": calls, "fallbacks": fallbacks, "step_ms": 1e3 * elapsed / tokens,
                "inside_us": 1e6 * inside["seconds"] / tokens, "c_us": 1e6 * timer.seconds / tokens}
    finally:
        hops.unpatch()
        patch_module.Patcher.redirect = redirect
        setattr(library, *saved)


def measure(args) -> dict:
    return {"python": python_entries(args), "decode": decode_step(args)}


def baseline(args) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "baseline.json"
        env = dict(os.environ, PYTHONPATH=str(Path(args.baseline).resolve()),
                   HOPS_LIBRARY=str(hops.library().provider.path))
        subprocess.run([sys.executable, __file__, "--json", str(out), "--calls", str(args.calls), "--blocks",
                        str(args.blocks), "--tokens", str(args.tokens), "--noisy", str(args.noisy), "--redo",
                        str(args.redo), "--patience", str(args.patience)], env=env, check=True, cwd=folder)
        return json.loads(out.read_text())


def table(c: dict, now: dict, before: dict | None, args) -> str:
    typed = c["typed"]
    lines = ["| path | " + ("before: us per call (fastest block) | " if before else "") +
             "us per call (fastest block) | shim: us over the C typed call | others' cores (blocks redone) |",
             "|---|" + ("--:|" if before else "") + "--:|--:|--:|"]
    for name, us in (("C typed call (op->fn)", typed), ("C generic call (api->call)", c["generic"])):
        lines.append(f"| {name} | " + (f"{us:.2f} | " if before else "") + f"{us:.2f} | - | - |")
    for name, (us, best, load, redone) in now["python"].items():
        old = (before or {}).get("python", {}).get(name)
        cells = ([f"{old[0]:.1f} ({old[1]:.1f})" if old else "-"] if before else []) + [
            f"{us:.1f} ({best:.1f})", f"{us - typed:.1f}", f"{load:.2f} ({redone})"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    operator = now["python"]["torch.ops.hops.gated_rmsnorm"][0] - typed
    lines += ["", "**Decode step of the tiny patched Qwen3.5** (tests/python/models.py: 4 layers, 3 of them "
              f"GatedDeltaNet; {args.tokens} tokens after a 16-token prompt, torch CPU, fp32, no_grad)", ""]
    rows = [("hops calls per decoded token", "calls", "{:.0f}"), ("fallbacks per token", "fallbacks", "{:.0f}"),
            ("decode step, ms per token", "step_ms", "{:.2f}"),
            ("time inside the patched functions, us per token", "inside_us", "{:.0f}"),
            ("of which inside api->call, us per token", "c_us", "{:.0f}")]
    lines += ["| | before | now |" if before else "| | now |", "|---|--:|--:|" if before else "|---|--:|"]
    for label, key, form in rows:
        old = [form.format(before["decode"][key])] if before else []
        lines.append(f"| {label} | " + " | ".join(old + [form.format(now["decode"][key])]) + " |")
    shim = [d["inside_us"] - d["c_us"] for d in ([before["decode"]] if before else []) + [now["decode"]]]
    lines.append("| **shim time per token, measured** (inside minus api->call), us | " +
                 " | ".join(f"**{value:.0f}**" for value in shim) + " |")
    estimate = now["decode"]["calls"] * operator
    lines.append(f"| shim time per token, estimated (calls x torch.ops.hops overhead {operator:.1f} us), us | " +
                 ("- | " if before else "") + f"{estimate:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10000, help="calls per timed block")
    parser.add_argument("--blocks", type=int, default=21, help="timed blocks per path")
    parser.add_argument("--noisy", type=float, default=0.15,
                        help="a block during which other processes kept more cores than this busy is redone")
    parser.add_argument("--redo", type=int, default=40, help="blocks redone per path, at most")
    parser.add_argument("--patience", type=float, default=10.0, help="seconds to wait for a quiet machine")
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens timed")
    parser.add_argument("--baseline", metavar="DIR", help="a shims/python folder of another version to compare")
    parser.add_argument("--json", metavar="FILE", help=argparse.SUPPRESS)  # the baseline subprocess' answer
    parser.add_argument("--write", metavar="MD", help="write the table into this markdown file's section")
    args = parser.parse_args()
    torch.set_num_threads(1)  # [1, 8] tensors: torch's own ops stay single-threaded anyway
    if args.json:
        Path(args.json).write_text(json.dumps(measure(args)))
        return
    started = time.perf_counter()
    before = baseline(args) if args.baseline else None
    now = measure(args)
    c = c_entries(str(hops.library().provider.path), args.calls, args.blocks)
    command = " ".join(["tests/bench/bench_shim_overhead.py", *sys.argv[1:]])
    text = "\n".join([
        f"Command: `.venv/bin/python {command}` ({time.perf_counter() - started:.0f} s)  ",
        benchlib.machine_line() + "  ",
        f"hops: {hops.library().provider.path}; shim: {Path(hops.__file__).parent}" +
        (f"; before: the shim in {args.baseline}, same provider" if before else "") + "  ",
        f"gated_rmsnorm on x, z [1, 8], weight [8] float32 CPU; medians over {args.blocks} blocks of "
        f"{args.calls} calls (each block's mean), in parentheses the fastest block; shim = median minus the C "
        "typed call; others' cores: how many cores other processes kept busy meanwhile, averaged over the kept "
        f"blocks (the machine is shared); a block during which they kept more than {args.noisy:g} cores busy "
        f"was thrown away and run again once the machine was quiet (blocks redone: at most {args.redo}); "
        f"the decode step starts once it is quiet (waiting at most {args.patience:g} s).",
        "", table(c, now, before, args)])
    print(text)
    if args.write:
        benchlib.write(args.write, "bench_shim_overhead", text)


if __name__ == "__main__":
    main()
