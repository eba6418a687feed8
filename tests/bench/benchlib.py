"""Shared by the benchmarks: the machine line, a meter of the CPU time other processes
take while we measure (the machine is shared), and writing a generated section of a
markdown file between `<!-- BEGIN name -->` and `<!-- END name -->` (appended at the
end when the markers are absent), leaving the rest of the file alone."""

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        family = fields.get("CPU family", "").strip()
        return f"{fields['Model name'].strip()} (family {family})" if family else fields["Model name"].strip()
    except (OSError, subprocess.CalledProcessError, KeyError):
        return platform.processor() or "unknown CPU"


_TICK = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU seconds all processes (and the hypervisor's steal) took, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICK


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


class OtherLoad:
    """`with OtherLoad() as load:` ... then load.cores: how many cores other processes
    (and steal) kept busy on average meanwhile; 0 on a quiet machine. /proc/stat counts
    in 1/100 s per core, so it means something over windows of 0.1 s and more."""

    def __enter__(self):
        self.start = (time.perf_counter(), _busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *_):
        wall, busy, own = (b - a for a, b in zip(self.start, (time.perf_counter(), _busy_seconds(),
                                                               _own_seconds())))
        self.wall = wall
        self.cores = max(0.0, busy - own) / wall if wall > 0 else 0.0


def wait_for_quiet(max_cores: float = 0.1, window: float = 0.5, patience: float = 120.0) -> float:
    """Waits (at most `patience` s) until other processes use under `max_cores` cores over a
    window; returns the last window's figure."""
    deadline = time.perf_counter() + patience
    while True:
        with OtherLoad() as load:
            time.sleep(window)
        if load.cores < max_cores or time.perf_counter() > deadline:
            return load.cores


def isa() -> str:
    """The SIMD extensions the kernels can use, from /proc/cpuinfo's flags (widest first)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown ISA"
    wanted = ["amx_tile", "amx_bf16", "avx512_fp16", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "fma"]
    return " ".join(flag for flag in wanted if flag in flags) or "no AVX"


def machine_line() -> str:
    import transformers
    try:
        load = "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = ""
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores, ISA {isa()}; hops CPU GEMM: "
            f"{os.environ.get('HOPS_CPU_GEMM', 'default (xsmm where built with libxsmm)')}; torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, transformers {transformers.__version__}; hops threads: "
            f"{os.environ.get('HOPS_NUM_THREADS', 'all cores (HOPS_NUM_THREADS unset)')}; {load} at the start")


def child_args(*drop: str) -> list:
    """This script's command-line arguments without the options `drop` and their values:
    what a child run of the same script gets."""
    args = sys.argv[1:]
    for option in drop:
        if option in args:
            i = args.index(option)
            j = i + 1
            while j < len(args) and not args[j].startswith("--"):
                j += 1
            del args[i:j]
    return args


def run_child(script, args: list, env: dict):
    """`script args --json FILE` in a child process under `env` (its stdout dropped): what
    it wrote to FILE. For settings a library reads once per process (HOPS_CPU_GEMM)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, str(script), *args, "--json", out.name], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return json.load(open(out.name))


def write(path, name: str, text: str) -> None:
    path = Path(path)
    begin, end = f"<!-- BEGIN {name} (generated: do not edit by hand) -->", f"<!-- END {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)
    print(f"wrote section '{name}' of {path}")


def add_timing_arguments(parser, budget: float) -> None:
    """The options of the interleaved, noise-guarded timing (see bench_cpu_vs_torch.measure)."""
    parser.add_argument("--reps", type=int, default=5, help="timed runs per case (hops: more when cheap)")
    parser.add_argument("--min-reps", type=int, default=3,
                        help="timed torch calls per case at least, when --budget allows fewer than --reps")
    parser.add_argument("--budget", type=float, default=budget, help="seconds of timed torch calls per case")
    parser.add_argument("--target", type=float, default=1.0, help="seconds of runs per side for cheap cases")
    parser.add_argument("--block", type=float, default=0.25, help="seconds per block of timed calls")
    parser.add_argument("--noisy", type=float, default=0.15,
                        help="a block during which other processes kept more cores than this busy is redone")
    parser.add_argument("--redo", type=int, default=8, help="blocks redone per case, at most")
    parser.add_argument("--patience", type=float, default=10.0, help="seconds to wait for a quiet machine")
    parser.add_argument("--write", metavar="MD", help="write the tables into this markdown file's section")


def timing_note(args, compared: str, tolerance: dict) -> str:
    """The sentence of a table's header that says how the times (add_timing_arguments) and the
    errors were taken; `compared` names what the error is taken over."""
    return (f"Times are medians of (n) calls, taken in blocks of about {args.block:g} s, hops and torch in "
            f"turn; a block during which other processes kept more than {args.noisy:g} cores busy was "
            f"thrown away and run again (others' cores: their average over the kept blocks; redone: blocks "
            f"thrown away). max rel err = max |hops - torch| / max |torch| over {compared}, "
            f"tolerance {tolerance[torch.float32]:g} fp32, {tolerance[torch.bfloat16]:g} bf16.")


def quiet_transformers() -> None:
    """transformers' once-per-function fallback warnings would interleave with the output."""
    import logging
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)

