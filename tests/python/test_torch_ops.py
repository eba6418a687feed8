"""hops.torch_ops: the custom ops torch.ops.hops.*, their backward through the plugin's
backward kernels, fake kernels (torch.library.opcheck) and torch.compile(fullgraph=True).

hops has no float64 kernels, so torch.autograd.gradcheck cannot run on it; instead,
hops' float32 gradients are compared with float64 autograd through the token-by-token
torch reference (torch_reference.py) of the same math, for random output gradients."""

import subprocess
import sys

import pytest
import torch

import hops
import torch_reference as reference
from hops import torch_ops

# Relative L2 error of each output and gradient, fp32 kernels against float64 autograd:
# the chunked GDN sums in another order over chunks (seen: up to 6e-6); conv1d and the
# norm are a few roundings per element (seen: up to 3e-7).
GDN_TOLERANCE = 2e-5
ELEMENTWISE_TOLERANCE = 1e-6


def relative_l2(actual, expected) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def leaves(*tensors, dtype=torch.float32):
    """Fresh leaf copies that require grad (None stays None)."""
    return [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]


def gradients(function, inputs, weights):
    """Gradients of sum(output_i * weights_i) with respect to `inputs`."""
    outputs = function(*inputs)
    loss = sum((output.double() * weight).sum() for output, weight in zip(outputs, weights))
    return outputs, torch.autograd.grad(loss, [t for t in inputs if t is not None])


def assert_gradients_match(hops_function, reference_function, inputs, output_shapes, tolerance):
    generator = torch.Generator().manual_seed(11)
    weights = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in output_shapes]
    ours, our_grads = gradients(hops_function, leaves(*inputs), weights)
    expected, expected_grads = gradients(reference_function, leaves(*inputs, dtype=torch.float64), weights)
    for output, reference_output in zip(ours, expected):
        assert relative_l2(output, reference_output) <= tolerance
    errors = [relative_l2(a, b) for a, b in zip(our_grads, expected_grads)]
    assert max(errors) <= tolerance, errors


# ---- gdn_chunk ---------------------------------------------------------------------

def gdn_inputs(batch=2, tokens=70, heads=2, value_heads=4, key_dim=16, value_dim=8, strong_decay=False):
    generator = torch.Generator().manual_seed(5)
    q = torch.randn(batch, tokens, heads, key_dim, generator=generator)
    k = torch.randn(batch, tokens, heads, key_dim, generator=generator)
    v = torch.randn(batch, tokens, value_heads, value_dim, generator=generator)
    low = 20.0 if strong_decay else 0.5  # the layer's gate reaches -16 * softplus(.) per token
    g = -torch.empty(batch, tokens, value_heads).uniform_(0.01, low, generator=generator)
    beta = torch.rand(batch, tokens, value_heads, generator=generator)
    return q, k, v, g, beta


@pytest.mark.parametrize("value_heads, use_qk_l2norm, scale, strong_decay", [
    (4, True, None, False),  # GQA: two value heads per key head
    (2, False, 0.3, False),
    (6, True, None, True),  # G = 3; decays that empty the state within a token
])
def test_gdn_chunk_gradients_dense(value_heads, use_qk_l2norm, scale, strong_decay):
    q, k, v, g, beta = gdn_inputs(value_heads=value_heads, strong_decay=strong_decay)
    h0 = torch.randn(2, value_heads, 16, 8, generator=torch.Generator().manual_seed(6))
    options = dict(scale=scale, use_qk_l2norm=use_qk_l2norm)

    def ours(q, k, v, g, beta, h0):
        return torch_ops.gdn_chunk_fwd(q, k, v, g, beta, initial_state=h0, output_final_state=True, **options)

    def theirs(q, k, v, g, beta, h0):
        return reference.gdn(q, k, v, g, beta, h0, **options)

    assert_gradients_match(ours, theirs, (q, k, v, g, beta, h0), [v.shape, h0.shape],
                           GDN_TOLERANCE)


def test_gdn_chunk_gradients_varlen():
    """Sequences of 5, 0, 64 and 61 tokens (chunk boundaries inside and at the end), each
    with its own initial state, gradients into every final state."""
    q, k, v, g, beta = gdn_inputs(batch=1, tokens=130)
    cu_seqlens = torch.tensor([0, 5, 5, 69, 130], dtype=torch.int32)
    h0 = torch.randn(4, 4, 16, 8, generator=torch.Generator().manual_seed(7))

    def ours(q, k, v, g, beta, h0):
        return torch_ops.gdn_chunk_fwd(q, k, v, g, beta, initial_state=h0, cu_seqlens=cu_seqlens,
                                       use_qk_l2norm=True, output_final_state=True)

    def theirs(q, k, v, g, beta, h0):
        return reference.gdn(q, k, v, g, beta, h0, cu_seqlens=cu_seqlens, use_qk_l2norm=True)

    assert_gradients_match(ours, theirs, (q, k, v, g, beta, h0), [v.shape, h0.shape],
                           GDN_TOLERANCE)


def test_gdn_chunk_without_initial_state_or_final_state_gradient():
    q, k, v, g, beta = gdn_inputs(tokens=33)
    assert_gradients_match(lambda *x: torch_ops.gdn_chunk_fwd(*x, use_qk_l2norm=True)[:1],
                           lambda *x: reference.gdn(*x, use_qk_l2norm=True)[:1], (q, k, v, g, beta), [v.shape],
                           GDN_TOLERANCE)


def test_gdn_chunk_bfloat16_gradients():
    q, k, v, g, beta = gdn_inputs(tokens=40)
    bf16 = [t.bfloat16().requires_grad_() for t in (q, k, v, beta)]
    o, _ = torch_ops.gdn_chunk_fwd(*bf16[:3], g, bf16[3], use_qk_l2norm=True)
    o.float().square().sum().backward()
    f32 = leaves(q, k, v, beta)
    reference_o, _ = reference.gdn(*f32[:3], g, f32[3], use_qk_l2norm=True)
    reference_o.square().sum().backward()
    for ours, theirs in zip(bf16, f32):
        assert ours.grad.dtype == torch.bfloat16
        assert relative_l2(ours.grad, theirs.grad) <= 2e-2


# ---- causal_conv1d ---------------------------------------------------------------------

@pytest.mark.parametrize("width, activation, bias, channels_first", [
    (4, "silu", False, True),  # transformers' call: a [B,D,T] view of [B,T,D]
    (3, "silu", True, False),
    (2, None, True, True),
    (1, "silu", False, False),
])
def test_conv1d_gradients(width, activation, bias, channels_first):
    generator = torch.Generator().manual_seed(width)
    x = torch.randn(2, 37, 12, generator=generator)
    weight = torch.randn(12, width, generator=generator)
    bias = torch.randn(12, generator=generator) if bias else None
    initial = torch.randn(2, 12, 5, generator=generator)  # longer than W-1
    layout = (lambda t: t.transpose(1, 2)) if channels_first else (lambda t: t)

    def ours(x, weight, bias, initial):
        y, final = torch_ops.conv1d_fwd(layout(x), weight, bias, activation=activation, initial_state=initial,
                                        output_final_state=True, state_len=6, channels_first=channels_first)
        return layout(y), final

    def theirs(x, weight, bias, initial):
        return reference.conv1d(x, weight, bias, activation or "none", initial, state_len=6)

    assert_gradients_match(ours, theirs, (x, weight, bias, initial), [x.shape, (2, 12, 6)],
                           ELEMENTWISE_TOLERANCE)


def test_conv1d_gradients_varlen():
    """Sequences of 3, 0, 1 and 40 tokens: the short ones hand final-state gradients back
    to their initial states."""
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(1, 44, 10, generator=generator)
    weight, bias = torch.randn(10, 4, generator=generator), torch.randn(10, generator=generator)
    initial = torch.randn(4, 10, 3, generator=generator)
    cu_seqlens = torch.tensor([0, 3, 3, 4, 44])

    def ours(x, weight, bias, initial):
        return torch_ops.conv1d_fwd(x, weight, bias, initial_state=initial, cu_seqlens=cu_seqlens,
                                    output_final_state=True)

    def theirs(x, weight, bias, initial):
        return reference.conv1d(x, weight, bias, "silu", initial, cu_seqlens=cu_seqlens)

    assert_gradients_match(ours, theirs, (x, weight, bias, initial), [x.shape, initial.shape],
                           ELEMENTWISE_TOLERANCE)


# ---- gated_rmsnorm ----------------------------------------------------------------------

def test_gated_rmsnorm_gradients():
    generator = torch.Generator().manual_seed(9)
    x, z = torch.randn(2, 2, 30, 16, generator=generator)
    weight = 1 + 0.1 * torch.randn(16, generator=generator)
    assert_gradients_match(lambda *a: [torch_ops.gated_rmsnorm(*a, eps=1e-5)],
                           lambda *a: [reference.gated_rmsnorm(*a, eps=1e-5)], (x, z, weight), [x.shape],
                           ELEMENTWISE_TOLERANCE)


# ---- the custom ops themselves ------------------------------------------------------------

def opcheck_cases():
    q, k, v, g, beta = (t.requires_grad_() for t in gdn_inputs(batch=1, tokens=20))
    h0 = torch.randn(1, 4, 16, 8, requires_grad=True)
    cu = torch.tensor([0, 7, 20])
    x = torch.randn(1, 20, 6, requires_grad=True)
    weight, bias = torch.randn(6, 4, requires_grad=True), torch.randn(6, requires_grad=True)
    conv_state = torch.randn(1, 6, 3, requires_grad=True)
    z, norm_weight = torch.randn(20, 6, requires_grad=True), torch.randn(6, requires_grad=True)
    do, dy = torch.randn(1, 20, 4, 8), torch.randn(1, 20, 6)
    detached = [t.detach() for t in (q, k, v, g, beta)]
    return {
        "gdn_chunk": (q, k, v, g, beta, h0, None, None, None, 0.0, True, False),
        "gdn_chunk varlen": (q, k, v, g, beta, None, cu, None, None, 0.25, False, False),
        "gdn_chunk_bwd": (*detached, h0.detach(), None, do, torch.randn(1, 4, 16, 8), 0.0, True, False),
        "causal_conv1d": (x, weight, bias, conv_state, None, "silu", False, 3),
        "causal_conv1d channels first": (x.transpose(1, 2), weight, None, None, None, "none", True, 3),
        "causal_conv1d_bwd": (x.detach(), weight.detach(), bias.detach(), None, cu, dy, torch.randn(2, 6, 3), "silu",
                              False),
        "gated_rmsnorm": (x[0], z, norm_weight, 1e-6),
        "gated_rmsnorm_bwd": (x[0].detach(), z.detach(), norm_weight.detach(), dy[0], 1e-6),
        "gdn_recurrent": (*(t[:, :1] for t in detached), torch.randn(2, 4, 16, 8), torch.tensor([1]), None, None,
                          None, 0.0, True, False),
        "causal_conv1d_update": (dy[0, :2], torch.randn(3, 6, 4), weight.detach(), None, torch.tensor([2, 0]),
                                 "silu"),
    }


@pytest.mark.parametrize("case", sorted(opcheck_cases()))
def test_opcheck(case):
    args = opcheck_cases()[case]
    torch.library.opcheck(getattr(torch.ops.hops, case.split()[0]).default, args)


def layer(x, weight, z, norm_weight, g, beta, heads=2, key_dim=8, value_dim=8):
    """A GatedDeltaNet layer's core, as transformers strings the three families together."""
    batch, tokens, _ = x.shape
    mixed = hops.causal_conv1d.causal_conv1d_fn(x.transpose(1, 2), weight, activation="silu").transpose(1, 2)
    q, k, v = mixed.split([heads * key_dim, heads * key_dim, 2 * heads * value_dim], dim=-1)
    q, k = (t.reshape(batch, tokens, heads, key_dim) for t in (q, k))
    o, _ = hops.fla.chunk_gated_delta_rule(q, k, v.reshape(batch, tokens, 2 * heads, value_dim), g, beta,
                                           use_qk_l2norm_in_kernel=True)
    return torch_ops.gated_rmsnorm(o.reshape(-1, value_dim), z, norm_weight).square().mean()


def layer_inputs():
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(2, 50, 64, generator=generator)
    weight = torch.randn(64, 4, generator=generator) * 0.5
    z, norm_weight = torch.randn(2 * 50 * 4, 8, generator=generator), torch.ones(8)
    g, beta = -torch.rand(2, 50, 4, generator=generator), torch.rand(2, 50, 4, generator=generator)
    return leaves(x, weight, z, norm_weight, g, beta)


def test_compile_fullgraph_forward_and_backward_equal_eager():
    eager_inputs, compiled_inputs = layer_inputs(), layer_inputs()
    layer(*eager_inputs).backward()
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    compiled(*compiled_inputs).backward()
    for eager, traced in zip(eager_inputs, compiled_inputs):
        assert relative_l2(traced.grad, eager.grad) <= 1e-6


def test_compile_traces_the_ops_with_no_graph_break():
    explained = torch._dynamo.explain(layer)(*layer_inputs())
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    code = explained.graphs[0].code
    assert all(f"torch.ops.hops.{op}" in code for op in ("causal_conv1d", "gdn_chunk", "gated_rmsnorm"))


def test_compile_decode_ops_update_their_state():
    q, k, v, g, beta = (t[:, :1] for t in gdn_inputs(tokens=1))
    x, conv_weight = torch.randn(2, 6), torch.randn(6, 4)

    def step(gdn_state, conv_state):
        o = torch_ops.gdn_recurrent(q, k, v, g, beta, gdn_state, use_qk_l2norm=True)
        return o, torch_ops.conv1d_update(x, conv_state, conv_weight)

    states = [torch.randn(2, 4, 16, 8), torch.randn(2, 6, 3)]
    compiled_states = [s.clone() for s in states]
    eager = step(*states)
    torch._dynamo.reset()
    traced = torch.compile(step, fullgraph=True)(*compiled_states)
    for a, b in zip((*eager, *states), (*traced, *compiled_states)):
        assert torch.equal(a, b)


# ---- what hops refuses, before running anything ---------------------------------------------

def test_refusals_are_unsupported_errors():
    q, k, v, g, beta = leaves(*gdn_inputs(tokens=4))
    A_log, dt_bias = torch.zeros(4), torch.zeros(4)
    # With gradients the fused gate runs as torch ops before the kernel (issue 20); called
    # directly, the op's backward refuses it.
    assert torch_ops.gdn_chunk_fwd(q, k, v, g, beta, A_log=A_log, dt_bias=dt_bias)[0].requires_grad
    o, _ = torch.ops.hops.gdn_chunk(q, k, v, g, beta, None, None, A_log, dt_bias, 0.0, False, False)
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*fused gate"):
        o.sum().backward()
    state = torch.zeros(2, 4, 16, 8)
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*decode"):
        torch_ops.gdn_recurrent(q, k, v, g, beta, state)
    assert not state.any()
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*width 5"):
        torch_ops.conv1d_fwd(torch.randn(1, 8, 4), torch.randn(4, 5))
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*float64"):
        torch_ops.gated_rmsnorm(*torch.randn(2, 3, 8, dtype=torch.float64), torch.ones(8, dtype=torch.float64))
    with torch.no_grad():  # without gradients the fused gate runs
        o, _ = torch_ops.gdn_chunk_fwd(q, k, v, g, beta, A_log=A_log, dt_bias=dt_bias)
        assert o.shape == v.shape


def test_numpy_users_never_import_torch():
    script = """
import sys
import numpy as np
import hops
x = np.random.default_rng(0).standard_normal((1, 8, 2, 4)).astype(np.float32)
g, beta = -np.ones((1, 8, 2), np.float32), np.full((1, 8, 2), 0.5, np.float32)
hops.fla.chunk_gated_delta_rule(x, x, x, g, beta)
hops.causal_conv1d.causal_conv1d_fn(x[0], np.ones((2, 4), np.float32), activation="silu")  # [B,D,T] = [8,2,4]
assert "torch" not in sys.modules, "torch was imported"
"""
    subprocess.run([sys.executable, "-c", script], check=True)
