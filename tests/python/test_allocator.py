"""hops_api::set_allocator from Python: the torch-allocator hook the bindings install for
CUDA calls also serves the CPU pool (plain aligned host memory). Here on the CPU: the
plugin really takes its scratch from the callbacks, results are unchanged, and resetting
the allocator hands every block back through the same callbacks."""

import ctypes

import numpy as np

import hops
from hops import _abi, _torch_allocator
from hops._bindings import library


def _chunk_inputs(rng, T=200, H=2, HV=4, K=16, V=16):
    q, k = (rng.standard_normal((1, T, H, K)).astype(np.float32) for _ in range(2))
    v = rng.standard_normal((1, T, HV, V)).astype(np.float32)
    g = -rng.uniform(0.01, 0.2, (1, T, HV)).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, (1, T, HV)).astype(np.float32)
    return q, k, v, g, beta


def test_cpu_scratch_goes_through_the_installed_allocator(rng, monkeypatch):
    api = library().api
    calls = {"alloc": 0, "free": 0}
    alloc, free = _torch_allocator._alloc, _torch_allocator._free

    def counting_alloc(*args):
        calls["alloc"] += 1
        return alloc(*args)

    def counting_free(*args):
        calls["free"] += 1
        free(*args)

    counting = _abi.hops_allocator(ctypes.sizeof(_abi.hops_allocator), None, _abi.ALLOC_FN(counting_alloc),
                                   _abi.FREE_FN(counting_free))
    inputs = _chunk_inputs(rng)
    expected, _ = hops.ops.gdn_chunk_fwd(*inputs)
    assert api.set_allocator(ctypes.addressof(counting)) == _abi.HOPS_OK
    try:
        got, _ = hops.ops.gdn_chunk_fwd(*inputs)
        np.testing.assert_array_equal(got, expected)
        assert calls["alloc"] >= 1
    finally:
        assert api.set_allocator(None) == _abi.HOPS_OK
    assert calls["free"] == calls["alloc"]  # every block went back to the allocator that made it


def test_install_routes_through_the_module_callbacks(rng):
    api = library().api
    inputs = _chunk_inputs(rng)
    expected, _ = hops.ops.gdn_chunk_fwd(*inputs)
    _torch_allocator.install(api)
    try:
        got, _ = hops.ops.gdn_chunk_fwd(*inputs)
        np.testing.assert_array_equal(got, expected)
    finally:
        assert api.set_allocator(None) == _abi.HOPS_OK
