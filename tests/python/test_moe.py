"""The mixture-of-experts family from Python: hops.ops (torch tensors and numpy arrays) and
the torch operators (hops.torch_ops, torch.ops.hops.*) against a float64 torch reference,
their gradients against float64 autograd of it, then transformers: the experts function
"hops", the routers, and the patched tiny Qwen3.5-MoE / Qwen3-Next (prefill logits, 32
greedy tokens, 3 AdamW steps with the same losses and gradients, 0 fallbacks), the
fallbacks, the kernels layer mapping, the switch and exact unpatch.

hops has no float64 kernels, so instead of torch.autograd.gradcheck the kernels' outputs and
gradients are compared with float64 autograd through the reference, for the same (rounded)
inputs and random output gradients. Tolerances (relative L2, docs/OPS.md): float32 1e-5,
bfloat16 1e-2. Copies (dispatch's rows), counts, row maps and routed ids must be exact."""

import importlib
import importlib.util

import numpy as np
import pytest
import torch

import hops
from hops import torch_ops
from hops._patch_transformers import EXPERTS_LABEL, ROUTER_KERNEL_LABEL
from models import MOE_MODULES, build, greedy, torch_route

F32_TOLERANCE = 1e-5
HALF_TOLERANCE = 1e-2
TOLERANCE = {torch.float32: F32_TOLERANCE, torch.bfloat16: HALF_TOLERANCE}


def relative_l2(actual, expected) -> float:
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


# ---- the float64 reference (differentiable where it has gradients) ---------------------------

def reference_route(logits, k, normalize=True, scoring="softmax"):
    """-> (weights [T,k] float64, ids [T,k] int64): the k largest logits (scores are monotone
    in them), best first, ties to the lower id (a stable sort)."""
    z = logits.double()
    scores = torch.softmax(z, dim=-1) if scoring == "softmax" else torch.sigmoid(z)
    ids = torch.sort(z, dim=-1, descending=True, stable=True).indices[:, :k]
    weights = scores.gather(-1, ids)
    return (weights / weights.sum(-1, keepdim=True) if normalize else weights), ids


def reference_dispatch(x, ids, experts):
    """-> (rows [T*k,Hd] float64, counts [E], row_map [T,k]), grouped by expert, then (t, j)."""
    tokens, slots = ids.shape
    kept = sorted((int(ids[t, j]), t, j) for t in range(tokens) for j in range(slots) if ids[t, j] >= 0)
    rows = torch.zeros(tokens * slots, x.shape[1], dtype=torch.float64)
    counts = torch.zeros(experts, dtype=torch.int64)
    row_map = torch.full((tokens, slots), -1, dtype=torch.int64)
    for r, (e, t, j) in enumerate(kept):
        rows[r], row_map[t, j] = x[t].double(), r
        counts[e] += 1
    return rows, counts, row_map


def reference_expert_mlp(rows, counts, gate_up_proj, down_proj):
    """(silu(r Wg^T) * (r Wu^T)) Wd^T per row of each expert; 0 past sum(counts)."""
    kept = int(counts.sum())
    expert = torch.repeat_interleave(torch.arange(len(counts)), counts.long())
    h = torch.einsum("rd,rid->ri", rows[:kept], gate_up_proj[expert])
    gate, up = h.chunk(2, dim=-1)
    out = torch.einsum("ri,rdi->rd", torch.nn.functional.silu(gate) * up, down_proj[expert])
    return torch.cat([out, out.new_zeros(rows.shape[0] - kept, rows.shape[1])])


def reference_combine(rows, row_map, weights):
    """y[t] = sum_j w[t,j] rows[row_map[t,j]] over the kept slots."""
    kept = (row_map >= 0).unsqueeze(-1)
    return (weights.unsqueeze(-1) * rows[row_map.clamp_min(0).long()] * kept).sum(1)


# ---- inputs -----------------------------------------------------------------------------------

def randn(*shape, seed, dtype=torch.float32, scale=1.0):
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


def routing(case, ids_dtype=torch.int64):
    """(tokens, experts, topk_ids) of a named case."""
    generator = torch.Generator().manual_seed(3)
    tokens, experts, k, how = CASES[case]
    if how == "one expert":  # every slot of every token to expert 2 (repeats within a token too)
        ids = torch.full((tokens, k), 2)
    else:  # k distinct experts per token, as routers choose them
        ids = torch.stack([torch.randperm(experts, generator=generator)[:k] for _ in range(tokens)])
        if how == "dropped":
            ids[torch.rand(ids.shape, generator=generator) < 0.3] = -1
            ids[1] = -1  # a token without any expert
    return tokens, experts, ids.to(ids_dtype)


CASES = {  # name -> (T, E, k, how)
    "E=1": (9, 1, 1, "distinct"),
    "E=7 k=3": (23, 7, 3, "distinct"),
    "E=64 k=8, most experts without tokens": (5, 64, 8, "distinct"),
    "T=1 k=8": (1, 8, 8, "distinct"),
    "every token to one expert": (11, 5, 2, "one expert"),
    "dropped slots": (17, 6, 4, "dropped"),
    "k=5": (13, 9, 5, "distinct"),
}
WIDTH, EXPERT_WIDTH = 48, 20  # Hd, I: no multiple of a vector width


def expert_weights(experts, dtype=torch.float32):
    return (randn(experts, 2 * EXPERT_WIDTH, WIDTH, seed=5, dtype=dtype, scale=WIDTH ** -0.5),
            randn(experts, WIDTH, EXPERT_WIDTH, seed=6, dtype=dtype, scale=EXPERT_WIDTH ** -0.5))


ID_DTYPES = [torch.int32, torch.int64]


# ---- hops.ops against the reference ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("experts, k", [(1, 1), (7, 1), (7, 3), (7, 7), (64, 8), (64, 2), (10, 10)])
def test_route_matches_reference(experts, k, scoring, dtype):
    logits = randn(37, experts, seed=experts + k, dtype=dtype, scale=3.0)
    logits[0] = logits[0, 0]  # a token whose logits all tie: the lowest ids win, in order
    for normalize in (True, False):
        for ids_dtype in ("int32", "int64"):
            weights, ids = hops.ops.moe_route(logits, k, normalize=normalize, scoring=scoring, ids_dtype=ids_dtype)
            expected_weights, expected_ids = reference_route(logits, k, normalize, scoring)
            assert weights.dtype == torch.float32 and ids.dtype == getattr(torch, ids_dtype)
            assert torch.equal(ids.long(), expected_ids) and ids[0].tolist() == list(range(k))
            assert relative_l2(weights, expected_weights) <= F32_TOLERANCE
    weights, _ = hops.ops.moe_route(logits, k, weights_dtype=None)  # the logits' dtype
    assert weights.dtype == dtype and relative_l2(weights, reference_route(logits, k)[0]) <= TOLERANCE[dtype]


@pytest.mark.parametrize("ids_dtype", ID_DTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_dispatch_expert_mlp_combine_match_reference(case, dtype, ids_dtype):
    tokens, experts, ids = routing(case, ids_dtype)
    x = randn(tokens, WIDTH, seed=1, dtype=dtype)
    weights = randn(*ids.shape, seed=2).abs()
    gate_up_proj, down_proj = expert_weights(experts, dtype)

    rows, counts, row_map = hops.ops.moe_dispatch(x, ids, experts)
    expected_rows, expected_counts, expected_map = reference_dispatch(x, ids, experts)
    assert rows.dtype == dtype and counts.dtype == row_map.dtype == ids_dtype
    assert torch.equal(rows.double(), expected_rows)  # copies, zero past the kept rows
    assert torch.equal(counts.long(), expected_counts) and torch.equal(row_map.long(), expected_map)

    out = hops.ops.moe_expert_mlp(rows, counts, gate_up_proj, down_proj)
    expected_out = reference_expert_mlp(expected_rows, expected_counts, gate_up_proj.double(), down_proj.double())
    assert out.dtype == dtype and relative_l2(out, expected_out) <= TOLERANCE[dtype]
    assert not out[int(counts.sum()):].any()

    y = hops.ops.moe_combine(out, row_map, weights)
    expected_y = reference_combine(out.double(), expected_map, weights.double())
    assert y.dtype == dtype and relative_l2(y, expected_y) <= TOLERANCE[dtype]
    if case == "dropped slots":
        assert not y[1].any()  # the token without experts

    if dtype == torch.float32:  # numpy arrays: the same kernels, the same bits
        arrays = hops.ops.moe_dispatch(x.numpy(), ids.numpy(), experts)
        assert all(np.array_equal(a, b.numpy()) for a, b in zip(arrays, (rows, counts, row_map)))
        out_np = hops.ops.moe_expert_mlp(arrays[0], arrays[1], gate_up_proj.numpy(), down_proj.numpy())
        assert np.array_equal(out_np, out.numpy())
        assert np.array_equal(hops.ops.moe_combine(out_np, arrays[2], weights.numpy()), y.numpy())


@pytest.mark.parametrize("ids_dtype", ID_DTYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_ops_match_float64_autograd(case, dtype, ids_dtype):
    tokens, experts, ids = routing(case, ids_dtype)
    x = randn(tokens, WIDTH, seed=1, dtype=dtype)
    weights = randn(*ids.shape, seed=2).abs()
    gate_up_proj, down_proj = expert_weights(experts, dtype)
    rows, counts, row_map = hops.ops.moe_dispatch(x, ids, experts)
    out = hops.ops.moe_expert_mlp(rows, counts, gate_up_proj, down_proj)
    kept = int(counts.sum())

    # dispatch: dx[t] = sum of its rows' gradients
    d_rows = randn(*rows.shape, seed=7, dtype=dtype)
    x64 = x.double().requires_grad_()
    rows64 = reference_dispatch(x64.detach(), ids, experts)[0]
    gathered = torch.zeros_like(rows64).index_add(0, row_map.long()[row_map >= 0], x64[(row_map >= 0).nonzero()[:, 0]])
    assert torch.equal(gathered.detach(), rows64)
    expected_dx, = torch.autograd.grad((gathered * d_rows.double()).sum(), x64)
    dx = hops.ops.moe_dispatch_bwd(d_rows, row_map)
    assert dx.dtype == dtype and relative_l2(dx, expected_dx) <= TOLERANCE[dtype]

    # expert MLP: d_rows, d_gate_up_proj, d_down_proj (and d_rows alone)
    d_out = randn(*out.shape, seed=8, dtype=dtype)
    inputs64 = [t.double().requires_grad_() for t in (rows, gate_up_proj, down_proj)]
    expected = torch.autograd.grad((reference_expert_mlp(inputs64[0], counts, *inputs64[1:]) * d_out.double()).sum(),
                                   inputs64)
    grads = hops.ops.moe_expert_mlp_bwd(rows, counts, gate_up_proj, down_proj, d_out)
    for got, want in zip(grads, expected):
        assert got.dtype == dtype and relative_l2(got, want) <= TOLERANCE[dtype]
    assert not grads[0][kept:].any()
    used = torch.bincount(ids[ids >= 0].long(), minlength=experts) > 0
    assert not grads[1][~used].any() and not grads[2][~used].any()  # experts without rows: exact zeros
    d_rows_only = hops.ops.moe_expert_mlp_bwd(rows, counts, gate_up_proj, down_proj, d_out, gate_up_grad=False,
                                              down_grad=False)
    assert d_rows_only[1:] == (None, None) and torch.equal(d_rows_only[0], grads[0])

    # combine: d_rows and d_topk_weights
    dy = randn(tokens, WIDTH, seed=9, dtype=dtype)
    out64, weights64 = out.double().requires_grad_(), weights.double().requires_grad_()
    expected = torch.autograd.grad((reference_combine(out64, row_map, weights64) * dy.double()).sum(),
                                   (out64, weights64))
    d_rows, d_weights = hops.ops.moe_combine_bwd(out, row_map, weights, dy)
    assert d_rows.dtype == dtype and d_weights.dtype == weights.dtype
    assert relative_l2(d_rows, expected[0]) <= TOLERANCE[dtype]
    assert relative_l2(d_weights, expected[1]) <= TOLERANCE[dtype]
    assert not d_rows[kept:].any() and not d_weights[row_map < 0].any()
    assert hops.ops.moe_combine_bwd(out, row_map, weights, dy, weights_grad=False)[1] is None


def test_bad_calls_raise_naming_the_argument():
    tokens, experts, ids = routing("E=7 k=3")
    x = randn(tokens, WIDTH, seed=1)
    bad = ids.clone()
    bad[3, 1] = experts
    with pytest.raises(hops.HopsError, match="HOPS_ERR_INVALID_ARGUMENT.*topk_ids"):
        hops.ops.moe_dispatch(x, bad, experts)
    bad[3, 1] = -2
    with pytest.raises(hops.HopsError, match="topk_ids"):
        hops.ops.moe_dispatch(x, bad, experts)
    with pytest.raises(hops.HopsError, match="topk_ids"):  # k > E
        hops.ops.moe_route(randn(tokens, 3, seed=2), 4)
    rows, counts, row_map = hops.ops.moe_dispatch(x, ids, experts)
    gate_up_proj, down_proj = expert_weights(experts)
    with pytest.raises(hops.HopsError, match="counts"):  # counts summing past the rows
        hops.ops.moe_expert_mlp(rows, counts * 2, gate_up_proj, down_proj)
    with pytest.raises(hops.HopsError, match="gate_up_proj"):  # not 2I rows
        hops.ops.moe_expert_mlp(rows, counts, gate_up_proj[:, 1:], down_proj)
    with pytest.raises(hops.HopsError, match="topk_weights"):  # weights of the wrong shape
        hops.ops.moe_combine(rows, row_map, randn(tokens, 2, seed=3))
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*scoring"):
        hops.ops.moe_route(randn(tokens, 8, seed=2), 2, scoring="sparsemax")


# ---- the torch operators: autograd, opcheck, torch.compile --------------------------------------------

def moe_layer(logits, x, gate_up_proj, down_proj, top_k):
    """A routed MoE through hops.torch_ops: route, dispatch, grouped SwiGLU, combine."""
    weights, ids = torch_ops.moe_route(logits, top_k)
    rows, counts, row_map = torch_ops.moe_dispatch(x, ids, logits.shape[-1])
    return torch_ops.moe_combine(torch_ops.moe_expert_mlp(rows, counts, gate_up_proj, down_proj), row_map, weights)


def reference_layer(logits, x, gate_up_proj, down_proj, top_k):
    """The same in float64 (differentiable in all four), routed as reference_route chooses."""
    weights, ids = reference_route(logits, top_k)
    scores = torch.softmax(logits, dim=-1).gather(-1, ids)  # the weights, differentiable in the logits
    weights = scores / scores.sum(-1, keepdim=True)
    _, counts, row_map = reference_dispatch(x.detach(), ids, logits.shape[-1])
    kept = row_map >= 0
    rows = torch.zeros(row_map.numel(), x.shape[1], dtype=x.dtype).index_put((row_map[kept],), x[kept.nonzero()[:, 0]])
    return reference_combine(reference_expert_mlp(rows, counts, gate_up_proj, down_proj), row_map, weights)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("experts, top_k", [(1, 1), (7, 3), (32, 8)])
def test_torch_ops_autograd_matches_float64(experts, top_k, dtype):
    tokens = 29
    inputs = (randn(tokens, experts, seed=1, dtype=dtype, scale=2.0), randn(tokens, WIDTH, seed=2, dtype=dtype),
              *expert_weights(experts, dtype))
    leaves = [t.clone().requires_grad_() for t in inputs]
    y = moe_layer(*leaves, top_k)
    dy = randn(*y.shape, seed=3, dtype=torch.float64)
    (y.double() * dy).sum().backward()
    leaves64 = [t.double().requires_grad_() for t in inputs]
    expected_y = reference_layer(*leaves64, top_k)
    expected = torch.autograd.grad((expected_y * dy).sum(), leaves64)
    assert y.dtype == dtype and relative_l2(y, expected_y) <= TOLERANCE[dtype]
    for name, leaf, want in zip(("logits", "x", "gate_up_proj", "down_proj"), leaves, expected):
        assert leaf.grad.dtype == dtype and relative_l2(leaf.grad, want) <= TOLERANCE[dtype], name
    with torch.no_grad():  # without gradients: hops.ops' results, bit for bit
        weights, ids = hops.ops.moe_route(inputs[0], top_k)
        rows, counts, row_map = hops.ops.moe_dispatch(inputs[1], ids, experts)
        plain = hops.ops.moe_combine(hops.ops.moe_expert_mlp(rows, counts, *inputs[2:]), row_map, weights)
        assert torch.equal(moe_layer(*inputs, top_k), plain)


def test_frozen_experts_get_no_weight_gradients():
    """LoRA-style training: the experts' weights frozen, so moe_expert_mlp_bwd computes d_rows only."""
    tokens, experts, ids = routing("E=7 k=3")
    x = randn(tokens, WIDTH, seed=1).requires_grad_()
    gate_up_proj, down_proj = expert_weights(experts)
    report = hops.patch()  # counts the kernels
    rows, counts, row_map = torch_ops.moe_dispatch(x, ids, experts)
    out = torch_ops.moe_expert_mlp(rows, counts, gate_up_proj, down_proj)
    out.sum().backward()
    expected = hops.ops.moe_dispatch_bwd(hops.ops.moe_expert_mlp_bwd(
        rows.detach(), counts, gate_up_proj, down_proj, torch.ones_like(out), gate_up_grad=False,
        down_grad=False)[0], row_map)
    assert torch.equal(x.grad, expected) and report.kernels["moe_expert_mlp_bwd"] == 2


def opcheck_cases():
    tokens, experts, ids = routing("dropped slots")
    x = randn(tokens, WIDTH, seed=1).requires_grad_()
    weights = randn(*ids.shape, seed=2).abs().requires_grad_()
    gate_up_proj, down_proj = (w.requires_grad_() for w in expert_weights(experts))
    rows, counts, row_map = (t.detach() for t in hops.ops.moe_dispatch(x.detach(), ids, experts))
    out = hops.ops.moe_expert_mlp(rows, counts, gate_up_proj.detach(), down_proj.detach())
    return {
        "moe_route": (randn(tokens, experts, seed=3), 3, True, 0, torch.float32, torch.int64),
        "moe_route int32 sigmoid": (randn(tokens, experts, seed=3, dtype=torch.bfloat16), 2, False, 1,
                                    torch.bfloat16, torch.int32),
        "moe_dispatch": (x, ids, experts),
        "moe_dispatch int32": (x, ids.int(), experts),
        "moe_dispatch_bwd": (torch.randn_like(rows), row_map),
        "moe_expert_mlp": (rows.clone().requires_grad_(), counts, gate_up_proj, down_proj),
        "moe_expert_mlp_bwd": (rows, counts, gate_up_proj.detach(), down_proj.detach(), torch.randn_like(out), True,
                               False),
        "moe_combine": (out.clone().requires_grad_(), row_map, weights),
        "moe_combine_bwd": (out, row_map, weights.detach(), randn(tokens, WIDTH, seed=4), True),
    }


@pytest.mark.parametrize("case", sorted(opcheck_cases()))
def test_opcheck(case):
    torch.library.opcheck(getattr(torch.ops.hops, case.split()[0]).default, opcheck_cases()[case])


def test_compile_fullgraph_forward_and_backward_equal_eager():
    def loss(*args):
        return moe_layer(*args, 3).square().mean()

    inputs = (randn(21, 7, seed=1, scale=2.0), randn(21, WIDTH, seed=2), *expert_weights(7))
    eager, traced = ([t.detach().clone().requires_grad_() for t in inputs] for _ in range(2))
    loss(*eager).backward()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(loss)(*inputs)
    assert explained.graph_break_count == 0
    assert all(f"torch.ops.hops.{op}" in explained.graphs[0].code
               for op in ("moe_route", "moe_dispatch", "moe_expert_mlp", "moe_combine"))
    torch._dynamo.reset()
    # aot_eager: inductor would fuse the router's softmax differently, rounding apart from eager
    torch.compile(loss, fullgraph=True, backend="aot_eager")(*traced).backward()
    for a, b in zip(eager, traced):
        assert torch.equal(a.grad, b.grad)


def test_trace_time_question_with_device_index_tensors():
    """While torch.compile traces, a call whose index tensors live on a device is asked of the
    provider (supports_call) with TensorSpecs, which carry no data: the wrappers pass them on
    as they are (host index tensors are not asked about: the provider would read them)."""
    from hops.torch_ops._common import _answer

    x, ids = (("tensor", shape, (shape[1], 1), dtype, "cuda", 0)
              for shape, dtype in (((5, 16), "torch.float32"), ((5, 2), "torch.int64")))
    answer = _answer("moe_dispatch", (x, ids, 4), ())
    assert answer is None or answer[0] == "HOPS_ERR_UNSUPPORTED", answer  # no CUDA kernels here: unsupported


def test_refusals_are_unsupported_errors():
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*float64"):
        torch_ops.moe_route(randn(3, 4, seed=1, dtype=torch.float64), 2)
    _, experts, ids = routing("E=7 k=3")
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*float64"):
        torch_ops.moe_dispatch(randn(len(ids), 8, seed=1, dtype=torch.float64), ids, experts)


# ---- transformers: the experts function "hops" and the routers ----------------------------------------

needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is not installed")


def prompt(batch=2, tokens=50):
    return torch.randint(1, 256, (batch, tokens), generator=torch.Generator().manual_seed(7))


def sparse_block(alias="qwen3_5_moe", dtype=torch.float32):
    model = build(alias, dtype)
    return model, model.model.layers[0].mlp


@needs_transformers
@pytest.mark.parametrize("implementation", ["grouped_mm", "eager"])
def test_experts_function_matches_transformers(implementation):
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    _, block = sparse_block()
    hidden = randn(40, 64, seed=1)
    with torch.no_grad():
        _, weights, ids = block.gate(hidden)
        block.experts.config._experts_implementation = implementation
        expected = block.experts(hidden, ids, weights)
        report = hops.patch()
        got = ALL_EXPERTS_FUNCTIONS["hops"](block.experts, hidden, ids, weights)
    assert relative_l2(got, expected) <= F32_TOLERANCE
    assert report.calls[EXPERTS_LABEL] == 1 and report.kernels["moe_expert_mlp"] == 1 and not report.fallbacks


@needs_transformers
def test_router_matches_transformers():
    _, block = sparse_block()
    hidden = randn(40, 64, seed=1, scale=3.0)
    expected = block.gate(hidden)
    report = hops.patch()
    got = block.gate(hidden)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])
    assert got[1].dtype == expected[1].dtype and relative_l2(got[1], expected[1]) <= F32_TOLERANCE
    assert report.calls[f"qwen3_5_moe.{type(block.gate).__name__}.forward"] == 1 and report.kernels["moe_route"] == 1


@needs_transformers
def test_refused_experts_fall_back_to_the_configured_implementation():
    """A layout hops does not compute (here a gelu expert activation) runs the configured
    implementation; with "hops" itself configured, the module's own loop (eager)."""
    _, block = sparse_block()
    block.experts.act_fn = torch.nn.GELU()
    hidden = randn(12, 64, seed=2)
    with torch.no_grad():
        _, weights, ids = block.gate(hidden)
        expected = {}
        for name in ("grouped_mm", "eager"):
            block.experts.config._experts_implementation = name
            expected[name] = block.experts(hidden, ids, weights)
        report = hops.patch()
        for name, configured in (("grouped_mm", "grouped_mm"), ("eager", "hops")):
            block.experts.config._experts_implementation = configured
            assert torch.equal(block.experts(hidden, ids, weights), expected[name])
    assert report.fallbacks[EXPERTS_LABEL] == 2 and not report.calls[EXPERTS_LABEL]
    assert "activation GELU" in report.fallback_reasons[EXPERTS_LABEL]


# ---- the experts function's workspace (hops._redirects.moe_workspace) ---------------------------------------

@pytest.fixture
def workspace(monkeypatch):
    """The pool, emptied before and after; hops.ops' moe_dispatch spied on: the rows each call wrote."""
    from hops._redirects.moe_workspace import WORKSPACE

    monkeypatch.delenv("HOPS_MOE_WORKSPACE", raising=False)
    hops.release_moe_workspace()
    written = []
    dispatch = hops.ops.moe_dispatch

    def spy(*args, rows=None, **kwargs):
        result = dispatch(*args, rows=rows, **kwargs)
        written.append(result[0].data_ptr())
        return result

    monkeypatch.setattr(hops.ops, "moe_dispatch", spy)
    yield WORKSPACE, written
    hops.release_moe_workspace()


def routed(block, tokens, seed):
    hidden = randn(tokens, 64, seed=seed)
    with torch.no_grad():
        _, weights, ids = block.gate(hidden)
    return hidden, ids, weights


@needs_transformers
def test_experts_workspace_equals_the_uncached_path_bitwise(workspace, monkeypatch):
    """Without autograd the experts function takes its rows and expert outputs from the pool:
    y is the torch operators' (fresh intermediates) bitwise; the buffers are kept and reused by
    later calls (other layers, a shorter T: no new ones); release frees them; the switch and
    autograd keep the pool out."""
    from hops._redirects.moe import experts

    pool, written = workspace
    _, block = sparse_block()
    calls = [routed(block, tokens, seed) for tokens, seed in ((40, 1), (40, 2), (7, 3))]
    monkeypatch.setenv("HOPS_MOE_WORKSPACE", "0")
    with torch.no_grad():
        expected = [experts(block.experts, *call) for call in calls]
    assert not written and pool.nbytes() == 0  # switched off: the torch operators, nothing kept
    monkeypatch.delenv("HOPS_MOE_WORKSPACE")
    with torch.inference_mode():
        got = [experts(block.experts, *call) for call in calls]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert pool.nbytes() == 2 * 40 * 4 * 64 * 4  # rows + expert outputs of the largest call (T=40, k=4, fp32)
    assert len(written) == 3 and len(set(written)) == 1  # every call wrote the same buffer
    assert hops.release_moe_workspace() == 2 * 40 * 4 * 64 * 4 and pool.nbytes() == 0
    hidden, ids, weights = calls[0]
    hidden = hidden.clone().requires_grad_()
    y = experts(block.experts, hidden, ids, weights)  # autograd keeps the intermediates: no pool
    y.sum().backward()
    assert len(written) == 3 and pool.nbytes() == 0 and hidden.grad is not None
    assert torch.equal(y.detach(), expected[0])


def test_workspace_buffers_are_never_shared_while_borrowed():
    """A borrowed buffer is out of the pool: a nested call gets others; what release() drops
    while borrowed is not taken back."""
    from hops._redirects.moe_workspace import Workspace

    pool, like = Workspace(), torch.empty(0)
    with pool.borrow(like, (8, 16), 2) as outer:
        with pool.borrow(like, (4, 16), 2) as inner:
            pointers = {t.data_ptr() for t in outer + inner}
    assert len(pointers) == 4 and pool.nbytes() == 2 * (8 + 4) * 16 * 4
    with pool.borrow(like, (8, 16), 2) as again:
        assert [t.data_ptr() for t in again] == [t.data_ptr() for t in outer]  # the largest, in order
        assert pool.release() == 2 * 4 * 16 * 4  # the two idle ones
    assert pool.nbytes() == 0  # the two borrowed during release were dropped


@needs_transformers
def test_experts_workspace_under_concurrent_threads(workspace):
    """Threads calling the experts function at once (held together inside moe_dispatch) write
    different buffers and each gets its own result, bitwise the sequential one."""
    import threading

    from hops._redirects.moe import experts

    pool, written = workspace
    _, block = sparse_block()
    threads = 3
    calls = [routed(block, 40, seed) for seed in range(threads)]
    with torch.no_grad():
        expected = [experts(block.experts, *call) for call in calls]
    hops.release_moe_workspace()
    written.clear()
    together, inside, results, errors = threading.Barrier(threads, timeout=30), threading.local(), {}, []
    dispatch = hops.ops.moe_dispatch  # the spy

    def held(*args, **kwargs):
        result = dispatch(*args, **kwargs)
        if not getattr(inside, "waited", False):  # the first call of each thread waits for the others
            inside.waited = True
            together.wait()
        return result

    def run(i):
        try:
            with torch.no_grad():
                for _ in range(4):
                    results.setdefault(i, []).append(experts(block.experts, *calls[i]))
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    hops.ops.moe_dispatch = held
    try:
        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        hops.ops.moe_dispatch = dispatch
    assert not errors, errors
    assert len(set(written[:threads])) == threads  # the calls in flight together had their own rows
    assert all(torch.equal(y, expected[i]) for i in range(threads) for y in results[i])
    assert pool.nbytes() <= threads * 2 * 40 * 4 * 64 * 4


# ---- transformers: the tiny Qwen3.5-MoE / Qwen3-Next with their MoE on hops ------------------------------

@pytest.fixture(scope="module", params=sorted(MOE_MODULES))
def case(request):
    return request.param, build(request.param), importlib.import_module(MOE_MODULES[request.param])


def moe_classes(module):
    return [cls for cls in vars(module).values() if isinstance(cls, type) and cls.__module__ == module.__name__
            and cls.__name__.endswith(("Experts", "TopKRouter"))]


@needs_transformers
@torch.no_grad()
def test_tiny_models_prefill_and_greedy_decode_with_moe_on_hops(case):
    alias, model, module = case
    with torch_route(module):
        expected_logits = model(prompt()).logits
        expected_tokens = greedy(model, prompt(1, 12))
    report = hops.patch()
    assert (model(prompt()).logits - expected_logits).abs().max().item() <= 1e-4
    assert torch.equal(greedy(model, prompt(1, 12)), expected_tokens)
    # every layer's sparse block: the prefill, the generation's prefill, then 31 decode steps
    calls = model.config.num_hidden_layers * (1 + 1 + 31)
    router = next(cls.__name__ for cls in moe_classes(module) if cls.__name__.endswith("TopKRouter"))
    assert report.calls[EXPERTS_LABEL] == report.calls[f"{alias}.{router}.forward"] == calls
    assert all(report.kernels[op] == calls for op in ("moe_route", "moe_dispatch", "moe_expert_mlp", "moe_combine"))
    assert sum(report.fallbacks.values()) == 0, report.fallback_reasons


STEPS = 3


def train(model, tokens):
    """STEPS AdamW steps -> the losses and every parameter's gradient, per step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses, gradients = [], []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    return losses, gradients


@needs_transformers
@pytest.mark.parametrize("alias", sorted(MOE_MODULES))
def test_training_steps_equal_with_everything_on_hops(alias):
    """3 AdamW steps, every family patched: the same losses (1e-5 relative) and gradients
    (tests/python/test_training.py's bounds: 1e-4 relative L2 per parameter at the first
    step, 1e-3 once AdamW moved the weights, 10x for the GDN gate's A_log and dt_bias),
    hops' MoE forward and backward kernels in every layer, no fallback."""
    from test_training import gradient_tolerance

    module = importlib.import_module(MOE_MODULES[alias])
    tokens = torch.randint(1, 256, (2, 80), generator=torch.Generator().manual_seed(5))
    with torch_route(module):
        expected_losses, expected_gradients = train(build(alias).train(), tokens)
        report = hops.patch()
        losses, gradients = train(build(alias).train(), tokens)
        hops.unpatch()
    assert max(abs(a - b) / abs(b) for a, b in zip(losses, expected_losses)) <= 1e-5, (losses, expected_losses)
    errors = {(step, name): relative_l2(ours[name], expected[name])
              for step, (ours, expected) in enumerate(zip(gradients, expected_gradients)) for name in ours}
    failed = {key: error for key, error in errors.items() if error > gradient_tolerance(*key)}
    assert not failed, failed
    calls = STEPS * build(alias).config.num_hidden_layers
    assert all(report.kernels[op] == calls for op in ("moe_route", "moe_dispatch", "moe_expert_mlp", "moe_combine",
                                                        "moe_dispatch_bwd", "moe_expert_mlp_bwd", "moe_combine_bwd"))
    assert report.calls[EXPERTS_LABEL] == calls and sum(report.fallbacks.values()) == 0, report.fallback_reasons


@needs_transformers
def test_patched_model_compiles_whole_and_trains_like_eager():
    """The patched tiny Qwen3.5-MoE under torch.compile(fullgraph=True): one graph holding
    every layer's router and experts as hops ops, loss and gradients equal to eager."""
    model = build("qwen3_5_moe").train()
    tokens = prompt(2, 40)
    report = hops.patch()
    eager_loss = model(input_ids=tokens, labels=tokens).loss
    eager_loss.backward()
    eager_gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    graphs = []

    def recording_backend(graph, example_inputs):
        graphs.append(graph)
        return torch._dynamo.lookup_backend("aot_eager")(graph, example_inputs)

    torch._dynamo.reset()
    loss = torch.compile(model, backend=recording_backend, fullgraph=True)(input_ids=tokens, labels=tokens).loss
    loss.backward()
    assert loss.item() == eager_loss.item() and len(graphs) == 1
    assert all(torch.equal(p.grad, eager_gradients[name]) for name, p in model.named_parameters())
    layers = model.config.num_hidden_layers
    assert all(graphs[0].code.count(f"torch.ops.hops.{op}.default(") == layers
               for op in ("moe_route", "moe_dispatch", "moe_expert_mlp", "moe_combine"))
    assert report.kernels["moe_expert_mlp_bwd"] == 2 * layers and not report.fallbacks  # eager, then compiled


def only_moe(monkeypatch):
    for switch in ("HOPS_PATCH_GDN", "HOPS_PATCH_CONV", "HOPS_PATCH_NORM", "HOPS_PATCH_ATTN"):
        monkeypatch.setenv(switch, "0")


@needs_transformers
@pytest.mark.parametrize("alias", sorted(MOE_MODULES))
def test_training_step_gradients_with_moe_on_hops(alias, monkeypatch):
    """One step's loss and gradients, only the MoE patched: the difference is hops' router
    and experts, forward and backward, against transformers' grouped_mm and autograd. The
    MoE blocks' parameters agree within 1e-5; elsewhere fp32 rounding upstream of the gate
    sums (the GDN's A_log and dt_bias: torch's own fp32 run is ~1e-4 from float64 there)
    moves both runs alike, so each gradient is held to float64 within twice torch's error."""
    only_moe(monkeypatch)
    tokens = prompt(2, 40)

    def step(dtype=torch.float32):
        model = build(alias, dtype).train()
        model.set_experts_implementation("eager" if dtype == torch.float64 else "grouped_mm")
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        return loss.item(), {name: p.grad.double() for name, p in model.named_parameters()}

    _, exact = step(torch.float64)
    expected_loss, expected = step()
    report = hops.patch()
    loss, gradients = step()
    assert abs(loss - expected_loss) <= 1e-6 * abs(expected_loss)
    moe = {name: relative_l2(g, expected[name]) for name, g in gradients.items() if ".mlp." in name}
    layers = build(alias).config.num_hidden_layers
    # per block: the router, gate_up_proj, down_proj, the shared expert's three and its gate
    assert len(moe) == 7 * layers and max(moe.values()) <= 1e-5, moe
    worse = {name: (relative_l2(g, exact[name]), relative_l2(expected[name], exact[name]))
             for name, g in gradients.items()}
    assert all(ours <= max(1e-5, 2 * theirs) for ours, theirs in worse.values()), worse
    assert report.kernels == dict.fromkeys(["moe_route", "moe_dispatch", "moe_expert_mlp", "moe_combine",
                                            "moe_dispatch_bwd", "moe_expert_mlp_bwd", "moe_combine_bwd"], layers)
    assert not report.fallbacks


@needs_transformers
def test_float64_falls_back_exactly(monkeypatch):
    only_moe(monkeypatch)
    model = build("qwen3_5_moe", torch.float64)  # hops has no float64 kernels
    model.set_experts_implementation("eager")  # grouped_mm has no float64 either
    with torch.no_grad():
        expected = model(prompt()).logits
        report = hops.patch()
        assert torch.equal(model(prompt()).logits, expected)
    layers = model.config.num_hidden_layers
    assert report.fallbacks[EXPERTS_LABEL] == report.fallbacks["qwen3_5_moe.Qwen3_5MoeTopKRouter.forward"] == layers
    assert "float64" in report.fallback_reasons[EXPERTS_LABEL] and not report.kernels


@needs_transformers
@torch.no_grad()
def test_experts_implementation_hops_and_the_router_hub_layer():
    """experts_implementation="hops" is a valid choice while patched; kernels.kernelize gives
    the routers hops' layer for SoftmaxTopKRouter; unpatch() takes both back."""
    kernels = pytest.importorskip("kernels")
    model = build("qwen3_5_moe")
    expected = model(prompt()).logits
    report = hops.patch()
    model.set_experts_implementation("hops")
    kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu")
    routers = [layer.mlp.gate for layer in model.model.layers]
    assert all("forward" in vars(router) for router in routers)  # kernelize bound hops' layer forward
    assert (model(prompt()).logits - expected).abs().max().item() <= 1e-4
    layers = model.config.num_hidden_layers
    assert report.calls[ROUTER_KERNEL_LABEL] == report.calls[EXPERTS_LABEL] == layers
    assert not report.calls["qwen3_5_moe.Qwen3_5MoeTopKRouter.forward"] and not report.fallbacks
    hops.unpatch()
    kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu")  # no mapping: the routers' own forward
    assert not any("forward" in vars(router) for router in routers)


@needs_transformers
def test_switch_and_exact_unpatch(case, monkeypatch):
    from transformers.integrations.moe import ExpertsInterface

    _, _, module = case
    forwards = {cls: vars(cls)["forward"] for cls in moe_classes(module)}
    interface = dict(ExpertsInterface._global_mapping)
    try:
        from kernels._internals.layer.globals import _KERNEL_MAPPING
        layer_mapping = dict(_KERNEL_MAPPING.get())
    except ImportError:
        _KERNEL_MAPPING = layer_mapping = None
    monkeypatch.setenv("HOPS_PATCH_MOE", "0")
    report = hops.patch()
    assert report.skipped["moe"] == "HOPS_PATCH_MOE=0" and "hops" not in ExpertsInterface._global_mapping
    assert all(vars(cls)["forward"] is forward for cls, forward in forwards.items())
    assert module.torch_chunk_gated_delta_rule.__hops_original__ is not None  # the other families are patched
    monkeypatch.setenv("HOPS_PATCH_MOE", "1")
    hops.patch()
    assert len(forwards) == 2 and all(vars(cls)["forward"] is not forward for cls, forward in forwards.items())
    assert "hops" in ExpertsInterface._global_mapping
    if layer_mapping is not None:
        assert "SoftmaxTopKRouter" in _KERNEL_MAPPING.get()
    hops.unpatch()
    assert all(vars(cls)["forward"] is forward for cls, forward in forwards.items())
    assert dict(ExpertsInterface._global_mapping) == interface
    if layer_mapping is not None:
        restored = _KERNEL_MAPPING.get()
        assert restored.keys() == layer_mapping.keys() and all(restored[k] is v for k, v in layer_mapping.items())
