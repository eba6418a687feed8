"""hops::attn_prefill, hops::attn_prefill_bwd, hops::attn_decode and hops::kv_cache_write.

The operators take the provider's batched layout ([B,T,H,D]); the functions also take
hops.ops' packed varlen and one-token decode layouts, as views (autograd sees them)."""

from .._frameworks import empty_like, index_array
from ..ops import attn
from ._common import check, needs_grad, present, refuse_gradients, refuse_traced, restore
from ._registry import define

_prefill, _prefill_bwd, _decode = (attn.attn_prefill.__wrapped__, attn.attn_prefill_bwd.__wrapped__,
                                   attn.attn_decode.__wrapped__)  # without device=


# ---- hops::attn_prefill and its backward ---------------------------------------------

def _prefill_kernel(q, k, v, gate, cu_seqlens_q, cu_seqlens_k, scale, causal):
    return _prefill(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, causal, gate)


def _prefill_fake(q, k, v, gate, cu_seqlens_q, cu_seqlens_k, scale, causal):
    return attn.attn_prefill_outputs(q)


def _prefill_setup_context(ctx, inputs, output):
    q, k, v, gate, cu_seqlens_q, cu_seqlens_k, scale, causal = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, gate, o, lse, cu_seqlens_q, cu_seqlens_k)
    ctx.mark_non_differentiable(lse)  # attn_prefill_bwd takes no lse gradient (flash-attn ignores it too)
    ctx.options = scale, causal


def _prefill_gradients(ctx, d_o, d_lse):
    q, k, v, gate, o, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    grads = attn_prefill_bwd_op(q, k, v, gate, o, lse, d_o, cu_seqlens_q, cu_seqlens_k, *ctx.options)
    dq, dk, dv, dgate = restore(grads, (True,) * 3 + (gate is not None,))
    return dq, dk, dv, dgate, None, None, None, None


def _prefill_bwd_kernel(q, k, v, gate, o, lse, do, cu_seqlens_q, cu_seqlens_k, scale, causal):
    """[dq, dk, dv] and dgate when gate is given."""
    return present(_prefill_bwd(q, k, v, o, lse, do, cu_seqlens_q, cu_seqlens_k, scale, causal, gate))


def _prefill_bwd_fake(q, k, v, gate, o, lse, do, cu_seqlens_q, cu_seqlens_k, scale, causal):
    return present(attn.attn_prefill_bwd_outputs(q, k, v, gate))


attn_prefill_op = define(
    "attn_prefill(Tensor q, Tensor k, Tensor v, Tensor? gate, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
    "float scale, bool causal) -> (Tensor, Tensor)",
    _prefill_kernel, _prefill_fake, backward=_prefill_gradients, setup_context=_prefill_setup_context)
attn_prefill_bwd_op = define(
    "attn_prefill_bwd(Tensor q, Tensor k, Tensor v, Tensor? gate, Tensor o, Tensor lse, Tensor do, "
    "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, float scale, bool causal) -> Tensor[]",
    _prefill_bwd_kernel, _prefill_bwd_fake)


def _with_batch(x):
    return None if x is None else x.unsqueeze(0)


def attn_prefill(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, scale=None, causal=True, gate=None):
    """hops.ops.attn_prefill through hops::attn_prefill: differentiable in q, k, v and gate
    (lse is not: it is returned for the caller's own merging, without a gradient)."""
    check("attn_prefill", q)
    if needs_grad(q, k, v, gate):
        check("attn_prefill_bwd", q)
    packed = q.dim() == 3
    if packed:
        q, k, v, gate = map(_with_batch, (q, k, v, gate))
    if cu_seqlens_q is None and cu_seqlens_k is None:
        refuse_traced("attn_prefill", q, k, v, scale=scale, causal=causal, gate=gate)
    o, lse = attn_prefill_op(q, k, v, gate, index_array(cu_seqlens_q, q), index_array(cu_seqlens_k, q),
                             scale or 0.0, causal)
    return (o[0], lse[0]) if packed else (o, lse)


# ---- hops::attn_decode and hops::kv_cache_write (no backward) ------------------------------

attn_decode_op = define(
    "attn_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seq_lens, float scale) "
    "-> Tensor",
    lambda q, k_cache, v_cache, block_table, seq_lens, scale: _decode(q, k_cache, v_cache, block_table, seq_lens,
                                                                      scale),
    lambda q, k_cache, v_cache, block_table, seq_lens, scale: empty_like(q))


def _write_kernel(k, v, k_cache, v_cache, slot_mapping):
    attn.kv_cache_write(k, v, k_cache, v_cache, slot_mapping)


kv_cache_write_op = define(
    "kv_cache_write(Tensor k, Tensor v, Tensor(a2!) k_cache, Tensor(a3!) v_cache, Tensor slot_mapping) -> ()",
    _write_kernel, lambda k, v, k_cache, v_cache, slot_mapping: None, mutated=(2, 3))


def attn_decode(q, k_cache, v_cache, block_table, seq_lens, scale=None):
    """hops.ops.attn_decode through hops::attn_decode (no gradient)."""
    check("attn_decode", q)
    refuse_gradients("attn_decode", q, k_cache, v_cache)
    one_token = q.dim() == 3
    if one_token:
        q = q.unsqueeze(1)
    o = attn_decode_op(q, k_cache, v_cache, index_array(block_table, q), index_array(seq_lens, q), scale or 0.0)
    return o[:, 0] if one_token else o


def kv_cache_write(k, v, k_cache, v_cache, slot_mapping):
    """hops.ops.kv_cache_write through hops::kv_cache_write (the caches written in place)."""
    check("kv_cache_write", k)
    refuse_gradients("kv_cache_write", k, v, k_cache, v_cache)
    kv_cache_write_op(k, v, k_cache, v_cache, index_array(slot_mapping, k))


FUNCTIONS = (attn_prefill, attn_decode, kv_cache_write)  # what hops.torch_ops exports of this family
