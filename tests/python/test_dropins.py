"""hops.fla and hops.causal_conv1d: the peers' signatures and return conventions,
checked against transformers' own torch implementations of the same functions."""

import importlib

import numpy as np
import pytest
import torch

import hops
import reference
from conftest import relative_error
from models import torch_function

pytest.importorskip("transformers")
modeling = importlib.import_module("transformers.models.qwen3_5.modeling_qwen3_5")


def gdn_tensors(batch=2, tokens=40, heads=2, value_heads=4, dim=16):
    generator = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, batch, tokens, heads, dim, generator=generator)
    v = torch.randn(batch, tokens, value_heads, dim, generator=generator)
    g = -torch.rand(batch, tokens, value_heads, generator=generator)
    beta = torch.rand(batch, tokens, value_heads, generator=generator)
    h0 = torch.randn(batch, value_heads, dim, dim, generator=generator)
    return q, k, v, g, beta, h0


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 1e-2)])
def test_chunk_gated_delta_rule(dtype, tolerance):
    q, k, v, g, beta, h0 = gdn_tensors()
    q, k, v, beta = (t.to(dtype) for t in (q, k, v, beta))
    o, final = hops.fla.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                               use_qk_l2norm_in_kernel=True)
    o_ref, final_ref = torch_function(modeling, "torch_chunk_gated_delta_rule")(
        q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert o.dtype == dtype and final.dtype == torch.float32 and o.shape == o_ref.shape
    assert relative_error(o.float(), o_ref.float()) <= tolerance
    assert relative_error(final, final_ref) <= tolerance
    assert hops.fla.chunk_gated_delta_rule(q, k, v, g, beta)[1] is None


def test_fused_recurrent_keeps_initial_state():
    q, k, v, g, beta, h0 = gdn_tensors(tokens=3)
    kept = h0.clone()
    o, final = hops.fla.fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0,
                                                         output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_ref, final_ref = torch_function(modeling, "torch_recurrent_gated_delta_rule")(
        q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert torch.equal(h0, kept)
    assert relative_error(o, o_ref) <= 1e-5 and relative_error(final, final_ref) <= 1e-5


def test_fla_options_hops_lacks_are_unsupported():
    q, k, v, g, beta, _ = gdn_tensors(tokens=2)
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*gk"):
        hops.fla.fused_recurrent_gated_delta_rule(q, k, v, g, torch.zeros(2, 2, 4, 16), beta=beta)
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*cp_context"):
        hops.fla.chunk_gated_delta_rule(q, k, v, g, beta, cp_context=object())


def test_causal_conv1d_fn_channels_first_with_states():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 30, 24, generator=generator).transpose(1, 2)  # [B,D,T] over channels-last memory
    weight, bias = torch.randn(24, 4, generator=generator), torch.randn(24, generator=generator)
    initial = torch.randn(2, 24, 3, generator=generator)
    out, final = hops.causal_conv1d.causal_conv1d_fn(x, weight, bias, initial_states=initial,
                                                     return_final_states=True, activation="silu")
    y_ref, final_ref = reference.conv1d(x.transpose(1, 2).numpy(), weight.numpy(), bias.numpy(), "silu",
                                        initial.numpy())
    assert out.shape == x.shape and out.stride() == x.stride()  # written in x's memory order
    assert relative_error(out.transpose(1, 2).numpy(), y_ref) <= 1e-5
    assert relative_error(final.numpy(), final_ref) <= 1e-5
    plain = hops.causal_conv1d.causal_conv1d_fn(x, weight)
    assert relative_error(plain.transpose(1, 2).numpy(), reference.conv1d(x.transpose(1, 2).numpy(), weight.numpy(),
                                                                           activation=None)[0]) <= 1e-5


@pytest.mark.parametrize("shape", [(3, 24), (3, 24, 2)])
def test_causal_conv1d_update_matches_transformers(shape):
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(*shape, generator=generator)
    weight = torch.randn(24, 4, generator=generator)
    state = torch.randn(3, 24, 4, generator=generator)  # transformers keeps W columns
    expected_state = state.clone()
    expected = torch_function(modeling, "causal_conv1d_update")(x if x.ndim == 3 else x[..., None], expected_state,
                                                                weight, None, "silu")
    out = hops.causal_conv1d.causal_conv1d_update(x, state, weight, None, "silu")
    assert out.shape == x.shape
    assert relative_error(out.reshape(expected.shape), expected) <= 1e-5
    assert torch.allclose(state, expected_state)


def test_numpy_works_through_the_dropins_too():
    x = np.random.default_rng(0).standard_normal((1, 8, 6)).astype(np.float32)
    out = hops.causal_conv1d.causal_conv1d_fn(x, np.ones((8, 4), np.float32), activation="silu")
    assert isinstance(out, np.ndarray) and out.shape == x.shape
