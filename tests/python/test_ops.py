"""hops.ops on numpy arrays against the float64 reference (tests/python/reference.py)."""

import numpy as np
import pytest

import hops
import reference
from conftest import relative_error

F32_TOLERANCE = 1e-5
GDN_TOLERANCE = 1e-4  # chunked algorithm (DESIGN.md section 4)
F16_TOLERANCE = 1e-2


def gdn_inputs(rng, batch=2, tokens=37, heads=2, value_heads=4, key_dim=16, value_dim=8, dtype=np.float32):
    q = rng.standard_normal((batch, tokens, heads, key_dim)).astype(dtype)
    k = rng.standard_normal((batch, tokens, heads, key_dim)).astype(dtype)
    v = rng.standard_normal((batch, tokens, value_heads, value_dim)).astype(dtype)
    g = -rng.uniform(0.01, 0.5, (batch, tokens, value_heads)).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, (batch, tokens, value_heads)).astype(dtype)
    return q, k, v, g, beta


@pytest.mark.parametrize("value_heads", [2, 4, 6])  # G = 1, 2, 3
def test_gdn_chunk_fwd_dense(rng, value_heads):
    q, k, v, g, beta = gdn_inputs(rng, value_heads=value_heads)
    h0 = rng.standard_normal((2, value_heads, 16, 8)).astype(np.float32)
    o, final = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, initial_state=h0, use_qk_l2norm=True,
                                      output_final_state=True)
    o_ref, final_ref = reference.gdn(q, k, v, g, beta, h0, use_qk_l2norm=True)
    assert isinstance(o, np.ndarray) and o.dtype == np.float32 and final.dtype == np.float32
    assert relative_error(o, o_ref) <= GDN_TOLERANCE
    assert relative_error(final, final_ref) <= GDN_TOLERANCE


def test_gdn_chunk_fwd_varlen_scale_and_no_final_state(rng):
    q, k, v, g, beta = gdn_inputs(rng, batch=1, tokens=70)
    cu_seqlens = np.array([0, 5, 5, 70], dtype=np.int32)  # with an empty sequence
    o, final = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, cu_seqlens=cu_seqlens, scale=0.3)
    o_ref, _ = reference.gdn(q, k, v, g, beta, None, cu_seqlens=cu_seqlens, scale=0.3)
    assert final is None
    assert relative_error(o, o_ref) <= GDN_TOLERANCE


def test_gdn_chunk_fwd_fused_gating(rng):
    q, k, v, _, _ = gdn_inputs(rng)
    a, b = rng.standard_normal((2, 2, 37, 4)).astype(np.float32)
    A_log = np.log(rng.uniform(1, 16, 4)).astype(np.float32)
    dt_bias = rng.standard_normal(4).astype(np.float32)
    o, final = hops.ops.gdn_chunk_fwd(q, k, v, a, b, A_log=A_log, dt_bias=dt_bias, output_final_state=True)
    o_ref, final_ref = reference.gdn(q, k, v, a, b, None, A_log=A_log, dt_bias=dt_bias)
    assert relative_error(o, o_ref) <= GDN_TOLERANCE
    assert relative_error(final, final_ref) <= GDN_TOLERANCE


def test_gdn_chunk_fwd_reads_strided_views(rng):
    """Qwen3.5 slices q, k and v out of one projection: no copies needed."""
    tokens, heads, value_heads, key_dim, value_dim = 29, 2, 4, 16, 8
    width = 2 * heads * key_dim + value_heads * value_dim
    mixed = rng.standard_normal((1, tokens, width)).astype(np.float32)
    q = mixed[..., :heads * key_dim].reshape(1, tokens, heads, key_dim)
    k = mixed[..., heads * key_dim:2 * heads * key_dim].reshape(1, tokens, heads, key_dim)
    v = mixed[..., 2 * heads * key_dim:].reshape(1, tokens, value_heads, value_dim)
    assert not q.flags.c_contiguous
    g = -rng.uniform(0.01, 0.5, (1, tokens, value_heads)).astype(np.float32)
    beta = rng.uniform(0.1, 0.9, (1, tokens, value_heads)).astype(np.float32)
    o, _ = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, use_qk_l2norm=True)
    o_ref, _ = reference.gdn(q, k, v, g, beta, None, use_qk_l2norm=True)
    assert relative_error(o, o_ref) <= GDN_TOLERANCE


def test_gdn_chunk_fwd_float16(rng):
    q, k, v, g, beta = gdn_inputs(rng, dtype=np.float16)
    o, _ = hops.ops.gdn_chunk_fwd(q, k, v, g, beta, use_qk_l2norm=True)
    assert o.dtype == np.float16
    assert relative_error(o, reference.gdn(q, k, v, g, beta, None, use_qk_l2norm=True)[0]) <= F16_TOLERANCE


def test_gdn_recurrent_state_pool(rng):
    q, k, v, g, beta = gdn_inputs(rng, batch=3, tokens=2)
    pool = rng.standard_normal((5, 4, 16, 8)).astype(np.float32)
    slots = np.array([4, -1, 0], dtype=np.int64)
    expected_o, expected_pool = reference.gdn(q, k, v, g, beta, pool, slots=slots, use_qk_l2norm=True)
    o = hops.ops.gdn_recurrent(q, k, v, g, beta, pool, state_indices=slots, use_qk_l2norm=True)
    for n in (0, 2):
        assert relative_error(o[n], expected_o[n]) <= F32_TOLERANCE
    assert relative_error(pool, expected_pool) <= F32_TOLERANCE  # slots 1-3 untouched


def test_gdn_gating(rng):
    A_log = np.log(rng.uniform(1, 16, 6)).astype(np.float32)
    a, b = rng.standard_normal((2, 3, 5, 6)).astype(np.float32) * 10  # both softplus branches
    dt_bias = rng.standard_normal(6).astype(np.float32)
    g, beta = hops.ops.gdn_gating(A_log, a, b, dt_bias)
    g_ref, beta_ref = reference.gdn_gating(A_log, a, b, dt_bias)
    assert g.dtype == np.float32 and beta.dtype == b.dtype
    assert relative_error(g, g_ref) <= F32_TOLERANCE and relative_error(beta, beta_ref) <= F32_TOLERANCE


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, F32_TOLERANCE), (np.float16, F16_TOLERANCE)])
def test_gated_rmsnorm(rng, dtype, tolerance):
    x, z = rng.standard_normal((2, 7, 3, 32)).astype(dtype)
    weight = rng.standard_normal(32).astype(np.float32)
    y = hops.ops.gated_rmsnorm(x, z, weight, eps=1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    assert relative_error(y, reference.gated_rmsnorm(x, z, weight, eps=1e-5)) <= tolerance


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("activation", ["silu", None])
def test_conv1d_fwd_states(rng, width, activation):
    x = rng.standard_normal((2, 9, 12)).astype(np.float32)
    weight = rng.standard_normal((12, width)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    initial = rng.standard_normal((2, 12, width)).astype(np.float32)  # transformers keeps W columns
    y, final = hops.ops.conv1d_fwd(x, weight, bias, activation=activation, initial_state=initial,
                                   output_final_state=True)
    y_ref, final_ref = reference.conv1d(x, weight, bias, activation, initial, state_len=width)
    assert final.shape == (2, 12, width)
    assert relative_error(y, y_ref) <= F32_TOLERANCE and relative_error(final, final_ref) <= F32_TOLERANCE


def test_conv1d_fwd_varlen_channels_first_view(rng):
    x = rng.standard_normal((1, 20, 12)).astype(np.float32)
    weight = rng.standard_normal((12, 4)).astype(np.float32)
    cu_seqlens = [0, 2, 20]  # the first sequence is shorter than W-1: its final state has zeros
    y, final = hops.ops.conv1d_fwd(x.transpose(0, 2, 1), weight, cu_seqlens=cu_seqlens, output_final_state=True,
                                   channels_first=True)
    y_ref, final_ref = reference.conv1d(x, weight, cu_seqlens=cu_seqlens)
    assert final.shape == (2, 12, 3)
    assert relative_error(y.transpose(0, 2, 1), y_ref) <= F32_TOLERANCE
    assert relative_error(final, final_ref) <= F32_TOLERANCE


@pytest.mark.parametrize("tokens", [None, 3])  # x [N,D] and [N,L,D]
def test_conv1d_update_state_pool(rng, tokens):
    shape = (3, 12) if tokens is None else (3, tokens, 12)
    x = rng.standard_normal(shape).astype(np.float32)
    weight = rng.standard_normal((12, 4)).astype(np.float32)
    pool = rng.standard_normal((4, 12, 5)).astype(np.float32)
    slots = [2, -1, 0]
    x3 = x[:, None] if tokens is None else x
    y_ref, pool_ref = reference.conv1d_update(x3, pool, weight, slots=slots)
    y = hops.ops.conv1d_update(x, pool, weight, state_indices=slots)
    assert y.shape == x.shape
    y3 = y[:, None] if tokens is None else y
    for n in (0, 2):
        assert relative_error(y3[n], y_ref[n]) <= F32_TOLERANCE
    assert relative_error(pool, pool_ref) <= F32_TOLERANCE


def test_validation_errors_name_the_argument(rng):
    x, z = rng.standard_normal((2, 4, 8)).astype(np.float32)
    with pytest.raises(hops.HopsError) as error:
        hops.ops.gated_rmsnorm(x, z[:, :2], np.ones(8, np.float32))
    assert error.value.status == "HOPS_ERR_INVALID_ARGUMENT"
    assert "gated_rmsnorm" in error.value.message and "'z'" in error.value.message
    with pytest.raises(hops.HopsError, match="argument 'q': expected \\[B,T,H,K\\]"):
        hops.ops.gdn_chunk_fwd(x, x, x, x, x)
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED"):
        hops.ops.conv1d_fwd(x[None], np.ones((8, 4), np.float32), activation="gelu")


def test_every_provider_op_is_reachable():
    for name in hops.info().ops:
        assert callable(getattr(hops.ops, name))
    with pytest.raises(AttributeError):
        hops.ops.no_such_op
