"""The attention family from Python: hops.ops and the torch operators (hops.torch_ops,
torch.ops.hops.*) against a float64 torch reference, their gradients against float64
autograd of it, the flash-attn namesakes (hops.flash_attn), transformers' attention
function "hops" and the patched tiny Qwen3.5 / Qwen3-Next models with attention on hops
(prefill logits, 32 greedy tokens through transformers' cache, a training step's
gradients, 0 fallbacks), the fallbacks and the switch.

hops has no float64 kernels, so instead of torch.autograd.gradcheck the float32 kernels'
outputs and gradients are compared with float64 autograd through the reference, for the
same (rounded) inputs and random output gradients. Tolerances (relative L2, DESIGN.md
section 4): float32 1e-5 (outputs and gradients), float16/bfloat16 1e-2."""

import importlib
import importlib.util
import math

import numpy as np
import pytest
import torch

import hops
from hops import flash_attn, torch_ops
from hops._patch_transformers import ATTENTION_LABEL
from models import MODULES, build, greedy, torch_route

F32_TOLERANCE = 1e-5
HALF_TOLERANCE = 1e-2


def relative_l2(actual, expected) -> float:
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


# ---- the float64 reference (differentiable) -----------------------------------------------

def attend(q, k, v, scale, causal):
    """One sequence: q [Lq,Hq,D], k/v [Lk,Hkv,D] -> (o [Lq,Hq,D], lse [Hq,Lq]); query i sees
    keys j <= i + Lk - Lq when causal; o = 0 and lse = -inf where no key is seen."""
    queries, heads, _ = q.shape
    keys, kv_heads = k.shape[:2]
    k, v = (x.repeat_interleave(heads // kv_heads, dim=1) for x in (k, v))  # head h reads kv head h // G
    visible = torch.ones(queries, keys, dtype=torch.bool)
    if causal:
        visible = visible.tril(keys - queries)
    seen = visible.any(-1)
    scores = (torch.einsum("ihd,jhd->hij", q, k) * scale).masked_fill(~visible, -math.inf)
    scores = torch.where(seen[:, None], scores, 0.0)  # rows without keys: finite, so no NaN in the gradient
    p = torch.softmax(scores, dim=-1) * seen[:, None]
    lse = torch.where(seen, torch.logsumexp(scores, dim=-1), -math.inf)
    return torch.einsum("hij,jhd->ihd", p, v), lse


def spans(batch, queries, keys, cu_seqlens_q, cu_seqlens_k):
    """(row, q_begin, q_end, k_begin, k_end) of each sequence."""
    if cu_seqlens_q is None:
        return [(b, 0, queries, 0, keys) for b in range(batch)]
    cq, ck = [int(x) for x in cu_seqlens_q], [int(x) for x in cu_seqlens_k]
    return [(0, cq[n], cq[n + 1], ck[n], ck[n + 1]) for n in range(len(cq) - 1)]


def reference_prefill(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, scale=None, causal=True, gate=None):
    """attn_prefill in float64 for the batched layout -> (o [B,Tq,Hq,D], lse [B,Hq,Tq])."""
    q, k, v = (x.double() for x in (q, k, v))
    scale = scale or q.shape[-1] ** -0.5
    rows_o, rows_lse = {}, {}
    for row, qb, qe, kb, ke in spans(q.shape[0], q.shape[1], k.shape[1], cu_seqlens_q, cu_seqlens_k):
        o, lse = attend(q[row, qb:qe], k[row, kb:ke], v[row, kb:ke], scale, causal)
        rows_o.setdefault(row, []).append(o)
        rows_lse.setdefault(row, []).append(lse)
    o = torch.stack([torch.cat(rows_o[row]) for row in sorted(rows_o)])
    lse = torch.stack([torch.cat(rows_lse[row], dim=1) for row in sorted(rows_lse)])
    if gate is not None:
        o = o * torch.sigmoid(gate.double())
    return o, lse


def gather_sequence(cache, block_table, n, length):
    block_size = cache.shape[1]
    return torch.stack([cache[int(block_table[n, p // block_size]), p % block_size] for p in range(length)]) \
        if length else cache.new_zeros(0, *cache.shape[2:])


def reference_decode(q, k_cache, v_cache, block_table, seq_lens, scale=None):
    """attn_decode in float64: q [N,L,Hq,D] -> o [N,L,Hq,D] (the new queries are the last L
    positions of seq_lens[n] tokens, causal among them)."""
    scale = scale or q.shape[-1] ** -0.5
    out = []
    for n, length in enumerate(int(x) for x in seq_lens):
        k = gather_sequence(k_cache.double(), block_table, n, length)
        v = gather_sequence(v_cache.double(), block_table, n, length)
        out.append(attend(q[n].double(), k, v, scale, True)[0])
    return torch.stack(out)


# ---- inputs -----------------------------------------------------------------------------

def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def prefill_inputs(case, heads, kv_heads, dim, gated, dtype=torch.float32):
    """(q, k, v, gate, cu_seqlens_q, cu_seqlens_k) of a named layout, batched ([B,T,H,D];
    varlen: B = 1)."""
    if case == "dense":
        batch, queries, keys, cu_q, cu_k = 2, 37, 37, None, None
    elif case == "prefix":  # keys longer than queries: a chunked prefill, causal bottom-right
        batch, queries, keys, cu_q, cu_k = 2, 11, 40, None, None
    else:  # varlen: empty, length-1, fewer keys than queries (rows without keys), longer keys, one past a tile
        lengths_q, lengths_k = [0, 1, 5, 17, 1, 33], [0, 1, 3, 30, 0, 65]
        cu_q, cu_k = (torch.tensor(np.cumsum([0, *lengths]), dtype=torch.int32) for lengths in (lengths_q, lengths_k))
        batch, queries, keys = 1, int(cu_q[-1]), int(cu_k[-1])
    q = randn(batch, queries, heads, dim, seed=1, dtype=dtype)
    k = randn(batch, keys, kv_heads, dim, seed=2, dtype=dtype)
    v = randn(batch, keys, kv_heads, dim, seed=3, dtype=dtype)
    gate = randn(batch, queries, heads, dim, seed=4, dtype=dtype) if gated else None
    return q, k, v, gate, cu_q, cu_k


PREFILL_CASES = [  # (layout, Hq, Hkv, D, gate, causal)
    ("dense", 16, 2, 64, True, True),
    ("dense", 3, 1, 64, False, False),
    ("prefix", 16, 2, 256, True, True),
    ("prefix", 3, 1, 64, False, False),
    ("varlen", 16, 2, 64, True, True),
    ("varlen", 3, 1, 256, False, True),
    ("varlen", 3, 1, 64, True, False),
]


def case_id(case):
    layout, heads, kv_heads, dim, gated, causal = case
    return f"{layout}-{heads}/{kv_heads}-D{dim}{'-gate' if gated else ''}-{'causal' if causal else 'full'}"


@pytest.mark.parametrize("case", PREFILL_CASES, ids=case_id)
def test_prefill_ops_match_reference(case):
    layout, heads, kv_heads, dim, gated, causal = case
    q, k, v, gate, cu_q, cu_k = prefill_inputs(layout, heads, kv_heads, dim, gated)
    expected_o, expected_lse = reference_prefill(q, k, v, cu_q, cu_k, causal=causal, gate=gate)
    for framework in ("torch", "numpy"):
        args = (q, k, v, gate)
        if framework == "numpy":
            args = tuple(None if x is None else x.numpy() for x in args)
        if layout == "varlen":  # the packed layout [T,H,D], lse [Hq,T]
            cu = (cu_q, cu_k) if framework == "torch" else (cu_q.tolist(), cu_k.tolist())
            o, lse = hops.ops.attn_prefill(*(None if x is None else x[0] for x in args[:3]), *cu, causal=causal,
                                           gate=None if args[3] is None else args[3][0])
            o, lse = o[None], lse[None]
        else:
            o, lse = hops.ops.attn_prefill(*args[:3], causal=causal, gate=args[3])
        assert tuple(o.shape) == tuple(q.shape) and tuple(lse.shape) == (q.shape[0], heads, q.shape[1])
        assert relative_l2(o, expected_o) <= F32_TOLERANCE
        o, lse = torch.as_tensor(o), torch.as_tensor(lse)
        assert torch.equal(torch.isinf(lse), torch.isinf(expected_lse))  # -inf exactly where no key is seen
        finite = ~torch.isinf(expected_lse)
        assert relative_l2(lse[finite], expected_lse[finite]) <= F32_TOLERANCE
    if layout == "varlen":  # the rows without keys: o = 0
        empty_rows = torch.isinf(expected_lse[0, 0])
        assert empty_rows.any() and not o[0, empty_rows].any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prefill_half_precision(dtype):
    q, k, v, gate, cu_q, cu_k = prefill_inputs("varlen", 16, 2, 64, True, dtype)
    o, lse = hops.ops.attn_prefill(q[0], k[0], v[0], cu_q, cu_k, gate=gate[0])
    expected_o, expected_lse = reference_prefill(q, k, v, cu_q, cu_k, gate=gate)
    assert o.dtype == dtype and lse.dtype == torch.float32
    assert relative_l2(o, expected_o[0]) <= HALF_TOLERANCE
    finite = ~torch.isinf(expected_lse[0])
    assert relative_l2(lse[finite], expected_lse[0][finite]) <= HALF_TOLERANCE


def test_prefill_scale_and_strided_views():
    q, k, v, gate, _, _ = prefill_inputs("prefix", 4, 2, 64, True)
    # transformers' layout: [B,H,T,D] tensors seen as [B,T,H,D] views, and a gate chunked out of a wider tensor
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    wide = torch.cat([gate, q], dim=-1)
    o, _ = hops.ops.attn_prefill(qt, kt, vt, scale=0.3, gate=wide[..., :64])
    assert relative_l2(o, reference_prefill(q, k, v, scale=0.3, gate=gate)[0]) <= F32_TOLERANCE


# ---- the backward --------------------------------------------------------------------------

def grad_weights(shape, seed=11):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("case", PREFILL_CASES, ids=case_id)
def test_backward_matches_float64_autograd(case):
    layout, heads, kv_heads, dim, gated, causal = case
    q, k, v, gate, cu_q, cu_k = prefill_inputs(layout, heads, kv_heads, dim, gated)
    inputs64 = [None if x is None else x.double().requires_grad_() for x in (q, k, v, gate)]
    expected_o, _ = reference_prefill(*inputs64[:3], cu_q, cu_k, causal=causal, gate=inputs64[3])
    do = grad_weights(expected_o.shape)
    expected = torch.autograd.grad((expected_o * do).sum(), [x for x in inputs64 if x is not None])

    # hops.ops: the backward op from the forward's o and lse
    o, lse = hops.ops.attn_prefill(q, k, v, cu_q, cu_k, causal=causal, gate=gate)
    grads = hops.ops.attn_prefill_bwd(q, k, v, o, lse, do.float(), cu_q, cu_k, causal=causal, gate=gate)
    assert (grads[3] is None) == (gate is None)
    errors = [relative_l2(ours, theirs) for ours, theirs in zip([g for g in grads if g is not None], expected)]
    assert max(errors) <= F32_TOLERANCE, errors

    # torch autograd through hops::attn_prefill (packed layout for varlen)
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in (q, k, v, gate)]
    if layout == "varlen":
        o, _ = torch_ops.attn_prefill(*(x[0] for x in leaves[:3]), cu_q, cu_k, causal=causal,
                                      gate=None if gate is None else leaves[3][0])
        o = o[None]
    else:
        o, _ = torch_ops.attn_prefill(*leaves[:3], causal=causal, gate=leaves[3])
    (o.double() * do).sum().backward()
    errors = [relative_l2(leaf.grad, theirs) for leaf, theirs in zip([x for x in leaves if x is not None], expected)]
    assert max(errors) <= F32_TOLERANCE, errors


def test_backward_bf16():
    q, k, v, gate, cu_q, cu_k = prefill_inputs("varlen", 16, 2, 64, True, torch.bfloat16)
    leaves = [x[0].detach().clone().requires_grad_() for x in (q, k, v, gate)]
    o, _ = torch_ops.attn_prefill(*leaves[:3], cu_q, cu_k, gate=leaves[3])
    do = grad_weights(o.shape)
    (o.double() * do).sum().backward()
    inputs64 = [x.double().requires_grad_() for x in (q, k, v, gate)]
    expected_o, _ = reference_prefill(*inputs64[:3], cu_q, cu_k, gate=inputs64[3])
    expected = torch.autograd.grad((expected_o[0] * do).sum(), inputs64)
    errors = [relative_l2(leaf.grad, theirs[0]) for leaf, theirs in zip(leaves, expected)]
    assert max(errors) <= HALF_TOLERANCE, errors


# ---- decode and the cache write ---------------------------------------------------------

def paged_cache(lengths, kv_heads, dim, block_size=16, dtype=torch.float32, seed=20):
    """Caches whose blocks are scattered (a random permutation, spare blocks between), the
    block table of each sequence, and the caches' rows of every sequence in order."""
    generator = torch.Generator().manual_seed(seed)
    max_blocks = max(1, max(-(-length // block_size) for length in lengths))
    num_blocks = 2 * len(lengths) * max_blocks + 3
    order = torch.randperm(num_blocks, generator=generator)
    block_table = order[: len(lengths) * max_blocks].reshape(len(lengths), max_blocks).to(torch.int32)
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=generator).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=generator).to(dtype)
    return k_cache, v_cache, block_table


@pytest.mark.parametrize("new_tokens, lengths, heads, kv_heads, dim, dtype", [
    (1, [1, 37, 70, 0], 16, 2, 256, torch.float32),
    (3, [3, 2, 40, 16], 3, 1, 64, torch.float32),  # 2 < L: the first query sees no key
    (1, [5, 33], 16, 2, 64, torch.bfloat16),
])
def test_decode_matches_reference(new_tokens, lengths, heads, kv_heads, dim, dtype):
    k_cache, v_cache, block_table = paged_cache(lengths, kv_heads, dim, dtype=dtype)
    q = randn(len(lengths), new_tokens, heads, dim, seed=21, dtype=dtype)
    seq_lens = torch.tensor(lengths, dtype=torch.int64)
    expected = reference_decode(q, k_cache, v_cache, block_table, seq_lens)
    tolerance = F32_TOLERANCE if dtype == torch.float32 else HALF_TOLERANCE
    for ops in (hops.ops, torch_ops):
        o = ops.attn_decode(q, k_cache, v_cache, block_table, seq_lens)
        assert o.shape == q.shape and o.dtype == dtype
        assert relative_l2(o, expected) <= tolerance
        if 0 in lengths:  # an empty sequence: o = 0
            assert not o[lengths.index(0)].any()
    if new_tokens == 1:  # q [N,Hq,D]: one new token per sequence
        o = hops.ops.attn_decode(q[:, 0], k_cache, v_cache, block_table.tolist(), lengths)
        assert o.shape == q[:, 0].shape and relative_l2(o, expected[:, 0]) <= tolerance
    if dtype == torch.float32:  # numpy arrays
        o = hops.ops.attn_decode(q.numpy(), k_cache.numpy(), v_cache.numpy(), block_table.numpy(), seq_lens.numpy())
        assert relative_l2(o, expected) <= tolerance


def test_cache_write_then_decode():
    kv_heads, dim, block_size = 2, 64, 16
    k_cache, v_cache, block_table = paged_cache([40, 20], kv_heads, dim, block_size)
    before = k_cache.clone(), v_cache.clone()
    k, v = randn(5, kv_heads, dim, seed=30), randn(5, kv_heads, dim, seed=31)
    positions = [(0, 38), (0, 39), (1, 17), None, (1, 18)]  # row 3: slot -1, skipped
    slots = [-1 if p is None else int(block_table[p[0], p[1] // block_size]) * block_size + p[1] % block_size
             for p in positions]
    for ops, dtype in ((hops.ops, torch.int64), (torch_ops, torch.int32)):
        k_cache_, v_cache_ = before[0].clone(), before[1].clone()
        ops.kv_cache_write(k, v, k_cache_, v_cache_, torch.tensor(slots, dtype=dtype))
        expected_k, expected_v = before[0].clone(), before[1].clone()
        for t, slot in enumerate(slots):
            if slot >= 0:
                expected_k[slot // block_size, slot % block_size] = k[t]
                expected_v[slot // block_size, slot % block_size] = v[t]
        assert torch.equal(k_cache_, expected_k) and torch.equal(v_cache_, expected_v)  # nothing else changed
    k_np, v_np = before[0].numpy().copy(), before[1].numpy().copy()
    hops.ops.kv_cache_write(k.numpy(), v.numpy(), k_np, v_np, slots)
    assert np.array_equal(k_np, expected_k.numpy()) and np.array_equal(v_np, expected_v.numpy())
    # decode over what was written: the last 2 tokens of sequence 0 are the new ones
    q = randn(2, 2, 4, dim, seed=32)
    o = hops.ops.attn_decode(q, k_cache_, v_cache_, block_table, [40, 19])
    assert relative_l2(o, reference_decode(q, k_cache_, v_cache_, block_table, [40, 19])) <= F32_TOLERANCE


def test_cache_write_refuses_a_slot_out_of_range():
    k_cache, v_cache, _ = paged_cache([16], 2, 64)
    k = randn(2, 2, 64, seed=1)
    with pytest.raises(hops.HopsError, match="HOPS_ERR_INVALID_ARGUMENT.*slot_mapping"):
        hops.ops.kv_cache_write(k, k, k_cache, v_cache, [0, k_cache.shape[0] * k_cache.shape[1]])


# ---- the torch operators: opcheck, torch.compile, refusals -------------------------------------

def opcheck_cases():
    q, k, v, gate, cu_q, cu_k = (x.requires_grad_() if x is not None and x.is_floating_point() else x
                                 for x in prefill_inputs("varlen", 4, 2, 16, True))
    qd, kd, vd, gd = prefill_inputs("prefix", 4, 2, 16, True)[:4]
    o, lse = hops.ops.attn_prefill(qd, kd, vd, gate=gd)
    k_cache, v_cache, block_table = paged_cache([20, 3], 2, 16)
    return {
        "attn_prefill varlen": (q, k, v, gate, cu_q, cu_k, 0.0, True),
        "attn_prefill dense": (qd.requires_grad_(), kd.requires_grad_(), vd, None, None, None, 0.25, False),
        "attn_prefill_bwd": (qd.detach(), kd.detach(), vd, gd, o, lse, torch.randn_like(o), None, None, 0.0, True),
        "attn_decode": (randn(2, 3, 4, 16, seed=5), k_cache, v_cache, block_table, torch.tensor([20, 3]), 0.0),
        "kv_cache_write": (randn(2, 2, 16, seed=6), randn(2, 2, 16, seed=7), k_cache.clone(), v_cache.clone(),
                           torch.tensor([5, -1])),
    }


@pytest.mark.parametrize("case", sorted(opcheck_cases()))
def test_opcheck(case):
    torch.library.opcheck(getattr(torch.ops.hops, case.split()[0]).default, opcheck_cases()[case])


def gated_attention(q, k, v, gate):
    o, _ = torch_ops.attn_prefill(q, k, v, gate=gate)
    return o.square().mean()


def test_compile_fullgraph_forward_and_backward_equal_eager():
    inputs = prefill_inputs("prefix", 4, 2, 64, True)[:4]
    eager, traced = ([x.detach().clone().requires_grad_() for x in inputs] for _ in range(2))
    gated_attention(*eager).backward()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(gated_attention)(*inputs)
    assert explained.graph_break_count == 0 and "torch.ops.hops.attn_prefill" in explained.graphs[0].code
    torch._dynamo.reset()
    torch.compile(gated_attention, fullgraph=True)(*traced).backward()
    for a, b in zip(eager, traced):
        assert torch.equal(a.grad, b.grad)


def test_refusals_are_unsupported_errors():
    q = randn(1, 4, 2, 16, seed=1, dtype=torch.float64)
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*float64"):
        torch_ops.attn_prefill(q, q, q)
    k_cache, v_cache, block_table = paged_cache([3], 2, 16)
    q = randn(1, 2, 16, seed=1).requires_grad_()
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED.*decode"):
        torch_ops.attn_decode(q, k_cache, v_cache, block_table, [3])


# ---- the flash-attn namesakes ----------------------------------------------------------------

def test_flash_attn_varlen_func():
    q, k, v, _, cu_q, cu_k = prefill_inputs("varlen", 16, 2, 64, False)
    leaves = [x[0].detach().clone().requires_grad_() for x in (q, k, v)]
    for causal in (False, True):
        expected_o, expected_lse = reference_prefill(q, k, v, cu_q, cu_k, causal=causal)
        out = flash_attn.flash_attn_varlen_func(*leaves, cu_q, cu_k, 33, 65, causal=causal)
        assert relative_l2(out, expected_o[0]) <= F32_TOLERANCE
        out, lse, probabilities = flash_attn.flash_attn_varlen_func(*leaves, cu_q, cu_k, 33, 65, softmax_scale=0.2,
                                                                    causal=causal, return_attn_probs=True)
        expected_o, expected_lse = reference_prefill(q, k, v, cu_q, cu_k, scale=0.2, causal=causal)
        finite = ~torch.isinf(expected_lse[0])
        assert lse.shape == (16, q.shape[1]) and probabilities is None
        assert relative_l2(lse[finite], expected_lse[0][finite]) <= F32_TOLERANCE
    # differentiable, as flash-attn's is; window (-1, 0) is causal
    out = flash_attn.flash_attn_varlen_func(*leaves, cu_q, cu_k, 33, 65, window_size=(-1, 0), deterministic=True)
    do = grad_weights(out.shape)
    (out.double() * do).sum().backward()
    inputs64 = [x.double().requires_grad_() for x in (q, k, v)]
    expected = torch.autograd.grad((reference_prefill(*inputs64, cu_q, cu_k)[0][0] * do).sum(), inputs64)
    assert max(relative_l2(leaf.grad, theirs[0]) for leaf, theirs in zip(leaves, expected)) <= F32_TOLERANCE


def test_flash_attn_func():
    q, k, v, _, _, _ = prefill_inputs("prefix", 3, 1, 64, False)
    out, lse, _ = flash_attn.flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    expected_o, expected_lse = reference_prefill(q, k, v, causal=True)
    assert relative_l2(out, expected_o) <= F32_TOLERANCE and relative_l2(lse, expected_lse) <= F32_TOLERANCE
    assert relative_l2(flash_attn.flash_attn_func(q, k, v), reference_prefill(q, k, v, causal=False)[0]) \
        <= F32_TOLERANCE  # flash-attn's default: not causal


def test_flash_attn_varlen_func_paged():
    lengths = [17, 40, 1]
    k_cache, v_cache, block_table = paged_cache(lengths, 2, 64)
    cu_k = torch.tensor(np.cumsum([0, *lengths]), dtype=torch.int32)
    for queries in (1, 2):
        q = randn(len(lengths) * queries, 16, 64, seed=40)
        cu_q = torch.arange(0, len(lengths) * queries + 1, queries, dtype=torch.int32)
        out = flash_attn.flash_attn_varlen_func(q, k_cache, v_cache, cu_q, cu_k, queries, 40, causal=True,
                                                block_table=block_table)
        expected = reference_decode(q.reshape(len(lengths), queries, 16, 64), k_cache, v_cache, block_table, lengths)
        assert out.shape == q.shape and relative_l2(out, expected.reshape(q.shape)) <= F32_TOLERANCE
    with pytest.raises(hops.HopsError, match="HOPS_ERR_UNSUPPORTED"):
        flash_attn.flash_attn_varlen_func(q, k_cache, v_cache, cu_q, cu_k, 2, 40, causal=False, block_table=block_table)


@pytest.mark.parametrize("paged", [True, False])
def test_flash_attn_with_kvcache_appends_then_attends(paged):
    batch, heads, kv_heads, dim, new = 3, 16, 2, 64, 2
    cached = torch.tensor([0, 15, 33], dtype=torch.int32)  # tokens before the new ones
    if paged:
        k_cache, v_cache, block_table = paged_cache([48] * batch, kv_heads, dim)
        batch_idx, rows = None, None
    else:
        k_cache, v_cache = randn(5, 48, kv_heads, dim, seed=50), randn(5, 48, kv_heads, dim, seed=51)
        block_table, batch_idx = None, torch.tensor([4, 0, 2])
        rows = batch_idx.reshape(batch, 1)
    q = randn(batch, new, heads, dim, seed=52)
    k, v = randn(batch, new, kv_heads, dim, seed=53), randn(batch, new, kv_heads, dim, seed=54)
    before, caches_np = k_cache.clone(), (k_cache.numpy().copy(), v_cache.numpy().copy())
    out = flash_attn.flash_attn_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=cached,
                                             cache_batch_idx=batch_idx, block_table=block_table, causal=True)
    out_np = flash_attn.flash_attn_with_kvcache(  # numpy arrays: the same writes, the same result
        q.numpy(), *caches_np, k.numpy(), v.numpy(), cache_seqlens=cached.numpy(), causal=True,
        cache_batch_idx=None if batch_idx is None else batch_idx.numpy(),
        block_table=None if block_table is None else block_table.numpy())
    assert np.array_equal(out_np, out.numpy()) and np.array_equal(caches_np[0], k_cache.numpy())
    table = block_table if paged else rows
    block_size = k_cache.shape[1]
    for b in range(batch):  # the new rows sit right after the cached ones; nothing else moved
        for t in range(new):
            p = int(cached[b]) + t
            assert torch.equal(k_cache[int(table[b, p // block_size]), p % block_size], k[b, t])
            before[int(table[b, p // block_size]), p % block_size] = k[b, t]
    assert torch.equal(k_cache, before)
    expected = reference_decode(q, k_cache, v_cache, table, (cached + new).tolist())
    assert out.shape == q.shape and relative_l2(out, expected) <= F32_TOLERANCE
    # no new k/v: the queries attend to cache_seqlens keys (an int broadcasts); one query needs no causal
    out = flash_attn.flash_attn_with_kvcache(q[:, :1], k_cache, v_cache, cache_seqlens=20, cache_batch_idx=batch_idx,
                                             block_table=block_table)
    assert relative_l2(out, reference_decode(q[:, :1], k_cache, v_cache, table, [20] * batch)) <= F32_TOLERANCE


@pytest.mark.parametrize("option", [dict(dropout_p=0.1), dict(window_size=(8, 0)), dict(softcap=30.0),
                                    dict(alibi_slopes=torch.ones(16))])
def test_flash_attn_unsupported_options_raise(option):
    q, k, v, _, cu_q, cu_k = prefill_inputs("varlen", 16, 2, 64, False)
    with pytest.raises(hops.HopsError) as error:
        flash_attn.flash_attn_varlen_func(q[0], k[0], v[0], cu_q, cu_k, 33, 65, **option)
    assert error.value.status == "HOPS_ERR_UNSUPPORTED"


@pytest.mark.parametrize("option", [dict(rotary_cos=torch.ones(1)), dict(cache_leftpad=torch.zeros(1)),
                                    dict(return_softmax_lse=True), dict(causal=False)])
def test_flash_attn_with_kvcache_unsupported_options_raise(option):
    k_cache, v_cache, block_table = paged_cache([20], 2, 64)
    q = randn(1, 2, 16, 64, seed=1)
    with pytest.raises(hops.HopsError) as error:
        flash_attn.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=20, block_table=block_table,
                                           **({"causal": True} | option))
    assert error.value.status == "HOPS_ERR_UNSUPPORTED"


# ---- transformers: the attention function "hops" -----------------------------------------------

# Only these tests need transformers (the ops' tests above run without it).
needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers is not installed")


class Layer(torch.nn.Module):
    """What transformers' attention functions read of a layer."""

    def __init__(self, groups, implementation="sdpa"):
        import transformers

        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True
        self.config = transformers.PretrainedConfig()
        self.config._attn_implementation = implementation


def transformers_layout(queries, keys, heads=4, kv_heads=2, dim=16, batch=2):
    """query [B,Hq,Tq,D], key/value [B,Hkv,Tk,D] and a gate [B,Tq,Hq*D], as the layers pass them."""
    return (randn(batch, heads, queries, dim, seed=60), randn(batch, kv_heads, keys, dim, seed=61),
            randn(batch, kv_heads, keys, dim, seed=62), randn(batch, queries, heads * dim, seed=63))


@needs_transformers
@pytest.mark.parametrize("queries, keys", [(9, 9), (1, 23)])  # prefill; a decode step against the cache
def test_attention_function_matches_sdpa(queries, keys):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    query, key, value, gate = transformers_layout(queries, keys)
    layer = Layer(groups=2)
    expected, _ = sdpa_attention_forward(layer, query, key, value, None, scaling=0.3)
    report = hops.patch()
    attention = ALL_ATTENTION_FUNCTIONS[hops._redirects.attn.INTERFACE]
    output, weights = attention(layer, query, key, value, None, scaling=0.3)
    assert weights is None and output.shape == expected.shape and relative_l2(output, expected) <= F32_TOLERANCE
    gated, _ = attention(layer, query, key, value, None, scaling=0.3, output_gate=gate)
    assert relative_l2(gated, expected * torch.sigmoid(gate).view(expected.shape)) <= F32_TOLERANCE
    if queries > 1:  # the same causal mask materialized (bool, and additive as eager builds it) runs on hops
        causal = torch.ones(queries, keys, dtype=torch.bool).tril()[None, None].expand(2, 1, -1, -1)
        additive = torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)
        for mask in (causal, additive):
            assert relative_l2(attention(layer, query, key, value, mask, scaling=0.3)[0], expected) <= F32_TOLERANCE
    assert report.calls[ATTENTION_LABEL] == 2 + 2 * (queries > 1) and not report.fallbacks


@needs_transformers
def test_attention_function_falls_back_on_a_padding_mask():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    query, key, value, gate = transformers_layout(7, 7)
    padded = torch.ones(7, 7, dtype=torch.bool).tril()[None, None].repeat(2, 1, 1, 1)
    padded[1, :, :, :2] = False  # left padding of the second row
    layer = Layer(groups=2)
    expected, _ = sdpa_attention_forward(layer, query, key, value, padded, scaling=0.25)
    report = hops.patch()
    output, _ = ALL_ATTENTION_FUNCTIONS["hops"](layer, query, key, value, padded, scaling=0.25, output_gate=gate)
    assert torch.equal(output, (expected.reshape(2, 7, -1) * torch.sigmoid(gate)).view(expected.shape))
    assert report.fallbacks[ATTENTION_LABEL] == 1 and report.calls[ATTENTION_LABEL] == 0
    assert "mask" in report.fallback_reasons[ATTENTION_LABEL]


# ---- transformers: the tiny Qwen3.5 / Qwen3-Next with attention on hops ----------------------------

@pytest.fixture(scope="module", params=sorted(MODULES))
def case(request):
    return request.param, build(request.param), importlib.import_module(MODULES[request.param])


def prompt(batch=2, tokens=50):
    return torch.randint(1, 256, (batch, tokens), generator=torch.Generator().manual_seed(7))


def attention_classes(module):
    return [cls for cls in vars(module).values() if isinstance(cls, type) and cls.__name__.endswith("Attention")
            and "Vision" not in cls.__name__]


@needs_transformers
@torch.no_grad()
def test_tiny_models_prefill_and_greedy_decode_with_attention_on_hops(case):
    alias, model, module = case
    with torch_route(module):
        expected_logits = model(prompt()).logits
        expected_tokens = greedy(model, prompt(1, 12))
    report = hops.patch()
    assert (model(prompt()).logits - expected_logits).abs().max().item() <= 1e-4
    assert torch.equal(greedy(model, prompt(1, 12)), expected_tokens)
    # one full-attention layer: the prefill, the generation's prefill, then 31 decode steps through the cache
    assert report.calls[ATTENTION_LABEL] == 1 + 1 + 31 == report.kernels["attn_prefill"]
    assert f"{alias}.{attention_classes(module)[0].__name__}.forward" in report.patched
    assert sum(report.fallbacks.values()) == 0, report.fallback_reasons


def only_attention(monkeypatch):
    for switch in ("HOPS_PATCH_GDN", "HOPS_PATCH_CONV", "HOPS_PATCH_NORM", "HOPS_PATCH_MOE"):
        monkeypatch.setenv(switch, "0")


@needs_transformers
@pytest.mark.parametrize("alias", sorted(MODULES))
def test_training_step_gradients_with_attention_on_hops(alias, monkeypatch):
    """One step's loss and gradients, only attention patched: the difference is hops' attention
    forward and backward (with the gate) against transformers' sdpa and autograd."""
    only_attention(monkeypatch)
    tokens = prompt(2, 40)

    def step():
        model = build(alias).train()
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        return loss.item(), {name: p.grad for name, p in model.named_parameters()}

    expected_loss, expected = step()
    report = hops.patch()
    loss, gradients = step()
    assert abs(loss - expected_loss) <= 1e-6 * abs(expected_loss)
    whole = relative_l2(torch.cat([g.flatten() for g in gradients.values()]),
                        torch.cat([expected[name].flatten() for name in gradients]))
    attention = {name: relative_l2(g, expected[name]) for name, g in gradients.items() if ".self_attn." in name}
    assert whole <= 1e-5 and max(attention.values()) <= 1e-5, (whole, attention)
    assert report.kernels == {"attn_prefill": 1, "attn_prefill_bwd": 1} and not report.fallbacks


@needs_transformers
@torch.no_grad()
def test_eager_masks_run_on_hops_and_padding_falls_back(monkeypatch):
    only_attention(monkeypatch)
    model = build("qwen3_5", attn_implementation="eager")  # eager materializes the causal mask (additive)
    expected = model(prompt()).logits
    report = hops.patch()
    assert (model(prompt()).logits - expected).abs().max().item() <= 1e-5
    assert report.calls[ATTENTION_LABEL] == 1 and not report.fallbacks
    # left padding: a mask hops does not take; the configured function (eager) runs, with the gate
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[1, :5] = 0
    hops.unpatch()
    expected = model(prompt(), attention_mask=mask).logits
    report = hops.patch()
    assert torch.equal(model(prompt(), attention_mask=mask).logits, expected)
    assert report.fallbacks[ATTENTION_LABEL] == 1 and report.calls[ATTENTION_LABEL] == 0


@needs_transformers
@torch.no_grad()
def test_built_plain_causal_masks_run_unread(monkeypatch):
    """The plain causal masks that eager's builder materializes (as transformers < 5.18 does
    for sdpa during a CUDA graph capture) carry the patch's tag and run on hops without their
    values being read: a prefill and decode steps through the cache, no fallback."""
    only_attention(monkeypatch)
    model = build("qwen3_5", attn_implementation="eager")

    def steps():  # the prefill's logits, then three greedy steps' without an attention mask
        out = model(prompt(1, 20), use_cache=True)
        logits = [out.logits]
        for _ in range(3):
            out = model(logits[-1][:, -1:].argmax(-1), past_key_values=out.past_key_values)
            logits.append(out.logits)
        return torch.cat(logits, dim=1)

    expected = steps()
    report = hops.patch()

    reads = []

    def unreadable(mask, *_):  # as if capturing: a mask hops would have to read is refused
        reads.append(tuple(mask.shape))

    monkeypatch.setattr(hops._redirects.attn, "_pattern_from_values", unreadable)
    assert (steps() - expected).abs().max().item() <= 1e-5
    assert not reads and report.calls[ATTENTION_LABEL] == 4 and not report.fallbacks, report.fallback_reasons
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[1, :5] = 0  # padding: untagged, so read (here: refused) and run on eager
    assert torch.isfinite(model(prompt(), attention_mask=mask).logits).all()
    assert reads == [(2, 1, 50, 50)] and report.fallbacks[ATTENTION_LABEL] == 1


@needs_transformers
def test_float64_falls_back_exactly(monkeypatch):
    only_attention(monkeypatch)
    model = build("qwen3_5", torch.float64)  # hops has no float64 kernels
    with torch.no_grad():
        expected = model(prompt()).logits
        report = hops.patch()
        assert torch.equal(model(prompt()).logits, expected)  # sdpa, then the gate as the layer applies it
    assert report.fallbacks[ATTENTION_LABEL] == 1 and "float64" in report.fallback_reasons[ATTENTION_LABEL]
    assert not report.kernels


@needs_transformers
def test_switch_and_exact_unpatch(case, monkeypatch):
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    _, _, module = case
    forwards = {cls: vars(cls)["forward"] for cls in attention_classes(module)}
    interfaces = dict(AttentionInterface._global_mapping), dict(AttentionMaskInterface._global_mapping)
    monkeypatch.setenv("HOPS_PATCH_ATTN", "0")
    report = hops.patch()
    assert report.skipped["attn"] == "HOPS_PATCH_ATTN=0" and "hops" not in AttentionInterface._global_mapping
    assert all(vars(cls)["forward"] is forward for cls, forward in forwards.items())
    assert module.torch_chunk_gated_delta_rule.__hops_original__ is not None  # the other families are patched
    monkeypatch.setenv("HOPS_PATCH_ATTN", "1")
    hops.patch()
    text_layers = [cls for cls in forwards if "Vision" not in cls.__name__]
    assert all(vars(cls)["forward"] is not forwards[cls] for cls in text_layers)
    assert "hops" in AttentionInterface._global_mapping and "hops" in AttentionMaskInterface._global_mapping
    hops.unpatch()
    assert all(vars(cls)["forward"] is forward for cls, forward in forwards.items())
    assert (dict(AttentionInterface._global_mapping), dict(AttentionMaskInterface._global_mapping)) == interfaces
