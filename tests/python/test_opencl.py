"""hops.ops(..., device="opencl"): numpy arrays through the OpenCL backend (PoCL in
CI) give what the CPU backend gives. Skipped where the provider has no
available OpenCL backend."""

import numpy as np
import pytest

import hops
from conftest import relative_error


def opencl_available() -> bool:
    try:
        backends = hops.info().backends
    except hops.HopsError:
        return False
    return any(b.name == "opencl" and b.available for b in backends)


pytestmark = pytest.mark.skipif(not opencl_available(), reason="no available OpenCL backend")

TOLERANCE = 1e-5


def close(a, b, tolerance=TOLERANCE):
    return relative_error(a, b) <= tolerance


def test_gdn_chunk_fwd_varlen_with_states(rng):
    q, k = rng.standard_normal((2, 1, 50, 2, 16)).astype(np.float32)
    v = rng.standard_normal((1, 50, 4, 32)).astype(np.float32)
    g = -rng.uniform(0.01, 0.5, (1, 50, 4)).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, (1, 50, 4)).astype(np.float32)
    h0 = rng.standard_normal((3, 4, 16, 32)).astype(np.float32)
    cu_seqlens = np.array([0, 20, 20, 50], dtype=np.int64)
    kwargs = dict(initial_state=h0, cu_seqlens=cu_seqlens, use_qk_l2norm=True, output_final_state=True)
    o, final = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, **kwargs)
    o_cl, final_cl = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, device="opencl", **kwargs)
    assert isinstance(o_cl, np.ndarray) and o_cl.dtype == np.float32
    assert close(o_cl, o) and close(final_cl, final)


def test_gdn_recurrent_updates_the_state_in_place(rng):
    q, k = rng.standard_normal((2, 3, 1, 2, 8)).astype(np.float32)
    v = rng.standard_normal((3, 1, 2, 16)).astype(np.float32)
    g = -rng.uniform(0.01, 0.5, (3, 1, 2)).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, (3, 1, 2)).astype(np.float32)
    pool = rng.standard_normal((4, 2, 8, 16)).astype(np.float32)
    pool_cl = pool.copy()
    slots = np.array([3, -1, 0], dtype=np.int32)
    o = hops.ops.gdn_recurrent(q, k, v, g, beta, pool, state_indices=slots, use_qk_l2norm=True)
    o_cl = hops.ops.gdn_recurrent(q, k, v, g, beta, pool_cl, state_indices=slots, use_qk_l2norm=True,
                                  device="opencl")
    assert close(o_cl[[0, 2]], o[[0, 2]]) and close(pool_cl, pool)


def test_conv1d_fwd_and_update(rng):
    x = rng.standard_normal((2, 40, 32)).astype(np.float32)
    weight, bias = rng.standard_normal((32, 4)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    y, final = hops.ops.conv1d_fwd(x, weight, bias, output_final_state=True)
    y_cl, final_cl = hops.ops.conv1d_fwd(x, weight, bias, output_final_state=True, device="opencl")
    assert close(y_cl, y) and close(final_cl, final)
    state, state_cl = final.copy(), final.copy()
    step = rng.standard_normal((2, 32)).astype(np.float32)
    out = hops.ops.conv1d_update(step, state, weight, bias)
    out_cl = hops.ops.conv1d_update(step, state_cl, weight, bias, device="opencl")
    assert close(out_cl, out) and close(state_cl, state)


def test_gating_and_norm_in_half_precision(rng):
    a, b = rng.standard_normal((2, 6, 8)).astype(np.float16)
    A_log, dt_bias = rng.standard_normal((2, 8)).astype(np.float32)
    g, beta = hops.ops.gdn_gating(A_log, a, b, dt_bias)
    g_cl, beta_cl = hops.ops.gdn_gating(A_log, a, b, dt_bias, device="opencl")
    assert g_cl.dtype == np.float32 and beta_cl.dtype == np.float16
    assert close(g_cl, g, 1e-3) and close(beta_cl, beta, 1e-3)
    x, z = rng.standard_normal((2, 5, 4, 64)).astype(np.float16)
    weight = rng.standard_normal(64).astype(np.float16)
    assert close(hops.ops.gated_rmsnorm(x, z, weight, device="opencl"), hops.ops.gated_rmsnorm(x, z, weight), 1e-3)


def test_unknown_device_is_refused():
    with pytest.raises(hops.HopsError, match="device='metal'"):
        hops.ops.gated_rmsnorm(np.ones((2, 4), np.float32), np.ones((2, 4), np.float32),
                               np.ones(4, np.float32), device="metal")


def test_attn_prefill_and_backward_batched(rng):
    q = rng.standard_normal((2, 33, 4, 64)).astype(np.float32)
    k, v = rng.standard_normal((2, 2, 40, 2, 64)).astype(np.float32)
    gate = rng.standard_normal(q.shape).astype(np.float32)
    o, lse = hops.ops.attn_prefill(q, k, v, gate=gate)
    o_cl, lse_cl = hops.ops.attn_prefill(q, k, v, gate=gate, device="opencl")
    assert close(o_cl, o) and close(lse_cl, lse)
    do = rng.standard_normal(q.shape).astype(np.float32)
    grads = hops.ops.attn_prefill_bwd(q, k, v, o, lse, do, gate=gate)
    grads_cl = hops.ops.attn_prefill_bwd(q, k, v, o, lse, do, gate=gate, device="opencl")
    for got, want in zip(grads_cl, grads):
        assert close(got, want)


def test_kv_cache_write_then_decode_with_host_tables(rng):
    blocks, block_size, Hkv, D = 6, 16, 2, 64
    k_cache, v_cache = rng.standard_normal((2, blocks, block_size, Hkv, D)).astype(np.float32)
    k_new, v_new = rng.standard_normal((2, 3, Hkv, D)).astype(np.float32)
    slots = np.array([5 * 16 + 3, -1, 2 * 16 + 15], dtype=np.int64)
    expected_k, expected_v = k_cache.copy(), v_cache.copy()
    hops.ops.kv_cache_write(k_new, v_new, expected_k, expected_v, slots)
    hops.ops.kv_cache_write(k_new, v_new, k_cache, v_cache, slots, device="opencl")
    assert np.array_equal(k_cache, expected_k) and np.array_equal(v_cache, expected_v)
    q = rng.standard_normal((2, 2, 4, D)).astype(np.float32)
    table = np.array([[5, 0, 3], [2, 4, 1]], dtype=np.int32)
    seq_lens = np.array([37, 2], dtype=np.int32)
    o = hops.ops.attn_decode(q, k_cache, v_cache, table, seq_lens)
    o_cl = hops.ops.attn_decode(q, k_cache, v_cache, table, seq_lens, device="opencl")
    assert close(o_cl, o)
