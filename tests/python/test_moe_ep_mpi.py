"""hops.ops.moe_ep_dispatch / moe_ep_combine with mpi4py: moe_ep_mpi_check.py under
mpirun -np 2 and 4 (one host, oversubscribed), bitwise against the gathered single-device ops."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")
MPIRUN = shutil.which("mpirun")


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (./run.sh installs openmpi-bin)")
@pytest.mark.parametrize("ranks", [2, 4])
def test_moe_ep_through_mpi4py(ranks):
    env = dict(os.environ, OMPI_MCA_btl="self,vader", OMPI_MCA_btl_vader_single_copy_mechanism="none",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    script = Path(__file__).with_name("moe_ep_mpi_check.py")
    result = subprocess.run([MPIRUN, "--oversubscribe", "--allow-run-as-root", "-np", str(ranks), sys.executable,
                             str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "equal" in result.stdout
