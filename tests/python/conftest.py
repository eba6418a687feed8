"""Shared fixtures. The tests load the provider the way users do (hops discovery:
HOPS_LIBRARY, manifests, then the in-tree build/plugin/libhops.so)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # reference.py


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def no_patch_left_behind():
    yield
    import hops
    hops.unpatch()


def relative_error(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))
