"""Expert parallelism through Python, under mpirun -np 2 and 4 (one host, oversubscribed):
moe_ep_mpi_check.py (hops.ops with mpi4py, bitwise against the gathered single-device ops) and
moe_ep_torch_check.py (hops.torch_ops forward and backward, fake kernels, the expert-parallel
Qwen3.5-MoE block of hops.patch, over mpi4py and a gloo process group; a process group whose
ranks are not MPI's refused on every rank)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
MPIRUN = shutil.which("mpirun")
needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (./run.sh installs openmpi-bin)")


def mpirun(ranks: int, script: str, *arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMPI_MCA_btl="self,vader", OMPI_MCA_btl_vader_single_copy_mechanism="none",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               HOPS_COMM_TIMEOUT="60", OMP_NUM_THREADS="1")
    return subprocess.run([MPIRUN, "--oversubscribe", "--allow-run-as-root", "-np", str(ranks), sys.executable,
                           str(Path(__file__).with_name(script)), *arguments], env=env, capture_output=True,
                          text=True, timeout=240)


@needs_mpirun
@pytest.mark.parametrize("ranks", [2, 4])
def test_moe_ep_through_mpi4py(ranks):
    result = mpirun(ranks, "moe_ep_mpi_check.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "equal" in result.stdout


@needs_mpirun
@pytest.mark.parametrize("ranks", [2, 4])
def test_moe_ep_torch_ops_and_expert_parallel_block(ranks, tmp_path):
    result = mpirun(ranks, "moe_ep_torch_check.py", str(tmp_path / "rendezvous"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "equal" in result.stdout


@needs_mpirun
def test_process_group_of_other_ranks_is_refused(tmp_path):
    result = mpirun(2, "moe_ep_torch_check.py", str(tmp_path / "rendezvous"), "permuted")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(permuted): equal" in result.stdout
