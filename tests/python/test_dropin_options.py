"""Issue 20: every option of Dao's causal-conv1d and of FLA's gated-delta-rule entry points
on hops, against the float64 references (reference.py; torch_reference.py for gradients):
on the CPU (torch and numpy), on OpenCL (numpy through PoCL, device="opencl") and on CUDA
(the `device` parametrisation: skipped, saying why, without a GPU or the cuda backend; on
the device: pytest tests/python/test_dropin_options.py -k cuda)."""

import itertools
import warnings

import numpy as np
import pytest
import torch

import hops
import reference
import torch_reference
from conftest import relative_error

TOLERANCE = 1e-5  # f32 against float64 (seen <= 1e-6)
GRAD_TOLERANCE = 2e-5  # as test_torch_ops


def backend_available(name) -> bool:
    try:
        return any(b.name == name and b.available for b in hops.info().backends)
    except hops.HopsError:
        return False


def device_or_skip(device):
    if device == "cuda" and not (torch.cuda.is_available() and backend_available("cuda")):
        pytest.skip("no CUDA device for torch, or the provider's cuda backend is unavailable")
    return torch.device(device)


DEVICES = ["cpu", "cuda"]
needs_opencl = pytest.mark.skipif(not backend_available("opencl"), reason="no available OpenCL backend")


def randn(*shape, seed=0, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


# ---- causal-conv1d ------------------------------------------------------------------------

SEQ_IDX = [[0, 0, 0, 1, 1, -1, 2, 2, 2, 2, 2, -1, -1, 5, 5, 5, 5, 5, 5, 5],
           [3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_fn_seq_idx_forward_and_gradients(device, activation):
    device = device_or_skip(device)
    x = randn(2, 20, 24, seed=1, device=device).transpose(1, 2)  # [B,D,T] over channels-last memory
    weight, bias = randn(24, 4, seed=2, device=device), randn(24, seed=3, device=device)
    seq_idx = torch.tensor(SEQ_IDX, dtype=torch.int32, device=device)
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
    out = hops.causal_conv1d.causal_conv1d_fn(*leaves, seq_idx=seq_idx, activation=activation)
    want = reference.conv1d_seq_idx(x.transpose(1, 2).cpu(), weight.cpu(), bias.cpu(), activation or "none",
                                    SEQ_IDX)
    assert relative_error(out.detach().transpose(1, 2).cpu(), want) <= TOLERANCE
    assert (out[0, :, 5] == 0).all() and (out[0, :, 11:13] == 0).all()  # padding tokens
    dy = randn(*out.shape, seed=4, device=device)
    grads = torch.autograd.grad(out, leaves, dy)  # conv1d_bwd with seq_idx
    expected = [t.detach().cpu().double().requires_grad_() for t in (x, weight, bias)]
    y64 = torch_reference.conv1d_seq_idx(expected[0].transpose(1, 2), *expected[1:], activation or "none",
                                         torch.tensor(SEQ_IDX))
    grads64 = torch.autograd.grad(y64.transpose(1, 2), expected, dy.cpu().double())
    for ours, theirs in zip(grads, grads64):
        assert relative_error(ours.cpu(), theirs) <= GRAD_TOLERANCE
    with pytest.raises(AssertionError, match="initial_states"):  # as causal-conv1d
        hops.causal_conv1d.causal_conv1d_fn(x, weight, seq_idx=seq_idx, initial_states=torch.zeros(2, 24, 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tokens", [1, 3, 6])
def test_causal_conv1d_update_cache_seqlens_and_padding_rows(device, tokens):
    device = device_or_skip(device)
    x = randn(4, 24, tokens, seed=5, device=device)
    weight, bias = randn(24, 4, seed=6, device=device), randn(24, seed=7, device=device)
    pool = randn(5, 24, 5, seed=8, device=device)  # circular buffers of 5 columns
    seen = torch.tensor([0, 3, 12, 7], dtype=torch.int32, device=device)
    slots = torch.tensor([4, -1, 0, 2], dtype=torch.int32, device=device)
    want_y, want_pool = reference.conv1d_update_circular(x.transpose(1, 2).cpu(), pool.cpu(), weight.cpu(),
                                                         bias.cpu(), "silu", seen.cpu(), slots.cpu())
    out = torch.full_like(x, float("nan"))
    out = hops.causal_conv1d.causal_conv1d_update(x, pool, weight, bias, "silu", cache_seqlens=seen,
                                                  conv_state_indices=slots)
    assert relative_error(out.transpose(1, 2).cpu(), want_y) <= TOLERANCE
    assert (out[1] == 0).all()  # Dao writes zeros for padding rows
    assert relative_error(pool.cpu(), want_pool) <= TOLERANCE


@pytest.mark.parametrize("device", DEVICES)
def test_causal_conv1d_update_padding_rows_are_zero_without_cache_seqlens(device):
    device = device_or_skip(device)
    x, weight = randn(3, 16, seed=9, device=device), randn(16, 4, seed=10, device=device)
    pool = randn(2, 16, 3, seed=11, device=device)
    before = pool.clone()
    slots = torch.tensor([1, -1, 0], device=device)
    out = hops.causal_conv1d.causal_conv1d_update(x, pool, weight, None, None, conv_state_indices=slots)
    want_y, want_pool = reference.conv1d_update(x[:, None].cpu(), before.cpu(), weight.cpu(), None, "none",
                                                slots.cpu())
    assert (out[1] == 0).all()
    assert relative_error(out.cpu(), want_y[:, 0]) <= TOLERANCE and relative_error(pool.cpu(), want_pool) <= TOLERANCE


@pytest.mark.parametrize("device", DEVICES)
def test_causal_conv1d_update_returns_the_output_when_parameters_require_grad(device):
    device = device_or_skip(device)
    x = randn(2, 8, seed=12, device=device)
    weight = torch.nn.Parameter(randn(8, 4, seed=13, device=device))
    bias = torch.nn.Parameter(randn(8, seed=14, device=device))
    pool = torch.zeros(2, 8, 3, device=device)
    out = hops.causal_conv1d.causal_conv1d_update(x, pool, weight, bias, "silu")
    want, _ = reference.conv1d_update(x[:, None].cpu(), torch.zeros(2, 8, 3), weight.detach().cpu(),
                                      bias.detach().cpu(), "silu")
    assert relative_error(out.detach().cpu(), want[:, 0]) <= TOLERANCE
    with pytest.raises(RuntimeError, match="no backward"):  # as causal-conv1d: no autograd formula
        out.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_causal_conv1d_varlen_states(device):
    device = device_or_skip(device)
    x = randn(30, 12, seed=15, device=device)
    cu_seqlens = torch.tensor([0, 2, 2, 10, 30], dtype=torch.int32, device=device)
    states = hops.causal_conv1d.causal_conv1d_varlen_states(x, cu_seqlens, state_len=5)
    want = np.zeros((4, 12, 5))  # causal_conv1d_varlen_states_ref, as a loop
    for n, (begin, end) in enumerate(zip([0, 2, 2, 10], [2, 2, 10, 30])):
        start = max(begin, end - 5)
        if end > start:
            want[n, :, 5 - (end - start):] = x[start:end].T.cpu().numpy()
    assert states.shape == (4, 12, 5) and not states.requires_grad
    assert relative_error(states.cpu(), want) == 0.0


@needs_opencl
def test_conv1d_options_on_opencl(rng):
    x = rng.standard_normal((2, 20, 24)).astype(np.float32)
    weight, bias = (rng.standard_normal(s).astype(np.float32) for s in ((24, 4), (24,)))
    ids = np.array(SEQ_IDX, dtype=np.int32)
    y, _ = hops.ops.conv1d_fwd(x, weight, bias, seq_idx=ids, device="opencl")
    assert relative_error(y, reference.conv1d_seq_idx(x, weight, bias, "silu", ids)) <= TOLERANCE
    dy = rng.standard_normal(x.shape).astype(np.float32)
    cl = hops.ops.conv1d_bwd(x, weight, dy, bias=bias, seq_idx=ids, device="opencl")
    cpu = hops.ops.conv1d_bwd(x, weight, dy, bias=bias, seq_idx=ids)
    assert all(relative_error(a, b) <= TOLERANCE for a, b in zip(cl[:3], cpu[:3]))
    tokens = rng.standard_normal((4, 3, 24)).astype(np.float32)
    pool = rng.standard_normal((5, 24, 5)).astype(np.float32)
    seen, slots = np.array([0, 3, 12, 7]), np.array([4, -1, 0, 2])
    want_y, want_pool = reference.conv1d_update_circular(tokens, pool, weight, bias, "silu", seen, slots)
    out = hops.ops.conv1d_update(tokens, pool, weight, bias, state_indices=slots, cache_seqlens=seen,
                                 zero_skipped=True, device="opencl")
    assert relative_error(out, want_y) <= TOLERANCE and relative_error(pool, want_pool) <= TOLERANCE


# ---- FLA's gated delta rule ---------------------------------------------------------------------

def gdn_inputs(device, batch=2, tokens=40, heads=2, value_heads=4, dim=16):
    q, k = (randn(batch, tokens, heads, dim, seed=s, device=device) for s in (20, 21))
    v = randn(batch, tokens, value_heads, dim, seed=22, device=device)
    a = randn(batch, tokens, value_heads, seed=23, device=device)  # raw gate input
    b = randn(batch, tokens, value_heads, seed=24, device=device)  # raw beta logits
    A_log, dt_bias = randn(value_heads, seed=25, device=device), randn(value_heads, seed=26, device=device)
    h0 = randn(batch, value_heads, dim, dim, seed=27, device=device)
    return q, k, v, a, b, A_log, dt_bias, h0


def gates64(a, b, A_log, dt_bias, gate, sigmoid, double):
    """g and beta in float64 as FLA's in-kernel flags make them (and as plain inputs without them)."""
    a, b = a.double(), b.double()
    g = -A_log.double().exp() * torch.nn.functional.softplus(a + dt_bias.double()) if gate else -a.abs() / 4
    beta = (2 if double else 1) * torch.sigmoid(b) if sigmoid else torch.sigmoid(b)
    return g, beta


# (use_gate_in_kernel, use_beta_sigmoid_in_kernel, allow_neg_eigval)
FLAGS = [(True, False, False), (False, True, False), (False, True, True), (True, True, True), (True, True, False)]


def fla_inputs(a, b, gate, sigmoid):
    """What the caller passes: the raw a with the gate flag, else a log decay; the raw b with
    the sigmoid flag, else a post-sigmoid beta."""
    return (a if gate else -a.abs() / 4), (b if sigmoid else torch.sigmoid(b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("gate, sigmoid, double", FLAGS)
def test_fla_in_kernel_flags(device, entry, gate, sigmoid, double):
    device = device_or_skip(device)
    q, k, v, a, b, A_log, dt_bias, h0 = gdn_inputs(device)
    g, beta = fla_inputs(a, b, gate, sigmoid)
    options = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True,
                   use_gate_in_kernel=gate, A_log=A_log, dt_bias=dt_bias,
                   use_beta_sigmoid_in_kernel=sigmoid, allow_neg_eigval=double)
    if entry == "chunk":
        o, final = hops.fla.chunk_gated_delta_rule(q, k, v, g, beta, **options)
    else:
        o, final = hops.fla.fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, **options)
    g64, beta64 = gates64(a, b, A_log, dt_bias, gate, sigmoid, double)
    want_o, want_final = reference.gdn(q.cpu(), k.cpu(), v.cpu(), g64.cpu(), beta64.cpu(), h0.cpu(),
                                       use_qk_l2norm=True)
    assert relative_error(o.cpu(), want_o) <= 1e-4 and relative_error(final.cpu(), want_final) <= 1e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("entry", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("gate, sigmoid, double", [(False, False, False), *FLAGS])
def test_fla_gradients_with_every_flag(device, entry, gate, sigmoid, double):
    """chunk's and fused_recurrent's gradients (the latter from gdn_chunk_bwd) through the
    in-kernel gate and sigmoid, against float64 autograd of the reference."""
    device = device_or_skip(device)
    q, k, v, a, b, A_log, dt_bias, h0 = gdn_inputs(device, tokens=24)
    g, beta = fla_inputs(a, b, gate, sigmoid)
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v, g, beta, A_log, dt_bias, h0)]
    q_, k_, v_, g_, beta_, A_log_, dt_bias_, h0_ = inputs
    options = dict(initial_state=h0_, output_final_state=True, use_qk_l2norm_in_kernel=True,
                   use_gate_in_kernel=gate, A_log=A_log_, dt_bias=dt_bias_,
                   use_beta_sigmoid_in_kernel=sigmoid, allow_neg_eigval=double)
    if entry == "chunk":
        o, final = hops.fla.chunk_gated_delta_rule(q_, k_, v_, g_, beta_, **options)
    else:
        o, final = hops.fla.fused_recurrent_gated_delta_rule(q_, k_, v_, g=g_, beta=beta_, **options)
    do, dfinal = randn(*o.shape, seed=30, device=device), randn(*final.shape, seed=31, device=device)
    used = [t for t in inputs if gate or (t is not A_log_ and t is not dt_bias_)]  # FLA ignores them then
    grads = torch.autograd.grad((o, final), used, (do, dfinal))

    leaves = [t.detach().cpu().double().requires_grad_() for t in used]
    named = dict(zip(["q", "k", "v", "g", "beta", "A_log", "dt_bias", "h0"] if gate else
                     ["q", "k", "v", "g", "beta", "h0"], leaves))
    g64 = (-named["A_log"].exp() * torch.nn.functional.softplus(named["g"] + named["dt_bias"]) if gate
           else named["g"])
    beta64 = (2 if double else 1) * torch.sigmoid(named["beta"]) if sigmoid else named["beta"]
    o64, final64 = torch_reference.gdn(named["q"], named["k"], named["v"], g64, beta64, named["h0"],
                                       use_qk_l2norm=True)
    grads64 = torch.autograd.grad((o64, final64), leaves, (do.cpu().double(), dfinal.cpu().double()))
    errors = [relative_error(ours.cpu(), theirs) for ours, theirs in zip(grads, grads64)]
    assert max(errors) <= 1e-4, errors  # the gate's A_log and dt_bias sum many terms (test_training: 10x)


@pytest.mark.parametrize("entry", ["chunk", "fused_recurrent"])
def test_fla_transpose_state_layout_and_misuse(entry):
    q, k, v, a, b, _, _, h0 = gdn_inputs("cpu", tokens=6)
    g, beta = -a.abs() / 4, torch.sigmoid(b)
    rule = (hops.fla.chunk_gated_delta_rule if entry == "chunk" else
            lambda *args, **kw: hops.fla.fused_recurrent_gated_delta_rule(*args[:3], g=args[3], beta=args[4], **kw))
    h0_v_first = h0.transpose(-1, -2).contiguous()
    with pytest.warns(DeprecationWarning, match="transpose_state_layout"):
        legacy = rule(q, k, v, g, beta, initial_state=h0_v_first, output_final_state=True,
                      transpose_state_layout=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        current = rule(q, k, v, g, beta, initial_state=h0_v_first, output_final_state=True, state_v_first=True)
    assert torch.equal(legacy[0], current[0]) and torch.equal(legacy[1], current[1])
    want_o, want_final = reference.gdn(q, k, v, g, beta, h0)
    assert relative_error(current[0], want_o) <= 1e-4
    assert relative_error(current[1].transpose(-1, -2), want_final) <= 1e-4
    with pytest.raises(ValueError, match="Cannot pass both"):
        rule(q, k, v, g, beta, state_v_first=True, transpose_state_layout=True)
    with pytest.raises(ValueError, match="allow_neg_eigval"):
        rule(q, k, v, g, beta, allow_neg_eigval=True)


def test_fla_options_hops_lacks_stay_unsupported():
    q, k, v, a, b, _, _, _ = gdn_inputs("cpu", tokens=2)
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*cp_context"):
        hops.fla.chunk_gated_delta_rule(q, k, v, -a.abs(), b.sigmoid(), cp_context=object())
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*gv"):
        hops.fla.fused_recurrent_gated_delta_rule(q, k, v, -a.abs(), gv=torch.zeros(2, 2, 4, 16))


def test_gdn_recurrent_fn_opcheck():
    q, k, v, a, b, _, _, h0 = gdn_inputs("cpu", batch=1, tokens=5)
    args = (q, k, v, -a.abs(), b.sigmoid(), h0, None, 0.0, True, False)
    torch.library.opcheck(torch.ops.hops.gdn_recurrent_fn.default,
                          tuple(t.requires_grad_() if isinstance(t, torch.Tensor) else t for t in args))


@needs_opencl
def test_gdn_beta_modes_on_opencl(rng):
    """The OpenCL GDN kernels take every beta_mode, with the fused gate and without, as the CPU
    backend does (both forwards; the state updated in place by gdn_recurrent too)."""
    q, k = rng.standard_normal((2, 1, 10, 2, 16)).astype(np.float32)
    v = rng.standard_normal((1, 10, 4, 16)).astype(np.float32)
    a, b = rng.standard_normal((2, 1, 10, 4)).astype(np.float32)
    A_log, dt_bias = rng.standard_normal((2, 4)).astype(np.float32)
    o, _ = hops.ops.gdn_chunk_fwd(q, k, v, a, b, A_log=A_log, dt_bias=dt_bias, device="opencl")
    want, _ = reference.gdn(q, k, v, a, b, None, A_log=A_log, dt_bias=dt_bias)
    assert relative_error(o, want) <= 1e-4
    g = -np.abs(a) / 4  # a log decay for the calls without the gate
    for gate, mode in itertools.product((True, False), (-1, 0, 1, 2)):
        options = dict(A_log=A_log, dt_bias=dt_bias) if gate else {}
        decay = a if gate else g
        outputs = {}
        for device in ("cpu", "opencl"):
            o, _ = hops.ops.gdn_chunk_fwd(q, k, v, decay, b, beta_mode=mode, device=device, **options)
            state = np.zeros((1, 4, 16, 16), np.float32)
            o_recurrent = hops.ops.gdn_recurrent(q, k, v, decay, b, state, beta_mode=mode, device=device,
                                                 **options)
            outputs[device] = (o, o_recurrent, state)
        for got, want in zip(outputs["opencl"], outputs["cpu"]):
            assert relative_error(got, want) <= 1e-5, (gate, mode)
