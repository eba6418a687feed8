"""The GPU kernels' off-GPU checks, in CI: numpy transcriptions of their
shared-memory layouts (TMA swizzle, wgmma descriptors), pipelines (mbarrier
protocols) and per-thread math against float64, written with each kernel
(tests/bench/cuda_*_emulation.py for the CUDA backend,
tests/bench/ocl_nv_*_emulation.py for the OpenCL kernels on NVIDIA's tensor
cores). They need no GPU and no build; each exits non-zero on a mismatch,
and each was seen to fail on a mutated mask or offset. A change to a
kernel's index logic must keep them passing."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
PATTERNS = ("cuda_*_emulation.py", "ocl_nv_*_emulation.py")
SCRIPTS = sorted(p.name for pattern in PATTERNS for p in BENCH.glob(pattern))


def test_every_emulation_is_collected():
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_emulation(script):
    done = subprocess.run([sys.executable, str(BENCH / script)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
