"""The attention family of hops.ops: attn_prefill, attn_prefill_bwd, attn_decode, kv_cache_write.

The provider's ops take batched tensors ([B,T,H,D], lse [B,Hq,Tq]); the wrappers also
take the packed varlen layout ([T,H,D] with cu_seqlens, lse [Hq,T]) and one-token decode
queries ([N,Hq,D]), passed on as views with a leading 1 (no copy)."""

from .._frameworks import empty, empty_like, index_array
from ..errors import unsupported
from ..opencl import device_option
from ._common import call, dims

OPS = ("attn_prefill", "attn_prefill_bwd", "attn_decode", "kv_cache_write")


def with_axis(x, axis: int = 0):
    """x with a new dim of size 1 at `axis`, a view ([T,H,D] -> [1,T,H,D]); None stays None."""
    if x is None:
        return None
    try:
        return x[(slice(None),) * axis + (None,)]
    except TypeError:  # an array without views (hops.opencl.DeviceArray)
        raise unsupported(f"attention: {type(x).__name__} has no views; pass the batched layout "
                          "([1,T,H,D], lse [1,Hq,T], decode q [N,1,Hq,D])") from None


def attn_prefill_outputs(q):
    """(o like q, lse [B,Hq,Tq] float32) for a batched q [B,Tq,Hq,D]."""
    batch, tokens, heads, _ = dims("attn_prefill", "q", q, 4)
    return empty(q, (batch, tokens, heads, q.shape[3])), empty(q, (batch, heads, tokens), "float32")


@device_option
def attn_prefill(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, scale=None, causal=True, gate=None):
    """Softmax attention over whole sequences -> (o like q, lse float32).

    Packed varlen: q [Tq,Hq,D], k/v [Tk,Hkv,D], cu_seqlens_q/k [N+1] -> o [Tq,Hq,D], lse [Hq,Tq].
    Batched: q [B,Tq,Hq,D], k/v [B,Tk,Hkv,D] -> o [B,Tq,Hq,D], lse [B,Hq,Tq]. Hq % Hkv == 0.
    causal: query i of a sequence (Lq queries, Lk keys) sees keys j <= i + Lk - Lq (bottom
    right). scale None means D^-1/2. gate (like q): o = attention * sigmoid(gate).
    lse: natural log-sum-exp of the scaled scores (-inf, and o = 0, where no key is seen)."""
    packed = len(q.shape) == 3
    if packed:
        q, k, v, gate = (with_axis(x) for x in (q, k, v, gate))
    o, lse = attn_prefill_outputs(q)
    call("attn_prefill",
         q=q, k=k, v=v, gate=gate, cu_seqlens_q=index_array(cu_seqlens_q, q),
         cu_seqlens_k=index_array(cu_seqlens_k, q), o=o, lse=lse, scale=scale or 0.0, causal=causal)
    return (o[0], lse[0]) if packed else (o, lse)


def attn_prefill_bwd_outputs(q, k, v, gate):
    """(dq, dk, dv, dgate or None): each gradient like its input."""
    return empty_like(q), empty_like(k), empty_like(v), None if gate is None else empty_like(gate)


@device_option
def attn_prefill_bwd(q, k, v, o, lse, do, cu_seqlens_q=None, cu_seqlens_k=None, scale=None, causal=True,
                     gate=None):
    """Backward of attn_prefill: from its output o (gated), lse and do (the gradient of o)
    -> (dq, dk, dv, dgate or None); the forward's inputs and options, as they were, in the
    same layout (packed or batched)."""
    if len(q.shape) == 3:
        q, k, v, o, lse, do, gate = (with_axis(x) for x in (q, k, v, o, lse, do, gate))
        return tuple(None if g is None else g[0] for g in attn_prefill_bwd(
            q, k, v, o, lse, do, cu_seqlens_q, cu_seqlens_k, scale, causal, gate))
    dq, dk, dv, dgate = attn_prefill_bwd_outputs(q, k, v, gate)
    call("attn_prefill_bwd",
         q=q, k=k, v=v, gate=gate, o=o, lse=lse, do=do, cu_seqlens_q=index_array(cu_seqlens_q, q),
         cu_seqlens_k=index_array(cu_seqlens_k, q), dq=dq, dk=dk, dv=dv, dgate=dgate, scale=scale or 0.0,
         causal=causal)
    return dq, dk, dv, dgate


@device_option
def attn_decode(q, k_cache, v_cache, block_table, seq_lens, scale=None):
    """Attention of the newest tokens of N sequences against a paged cache -> o like q.

    q [N,Hq,D] (one new token each) or [N,L,Hq,D] (the last L tokens, causal among them);
    caches [num_blocks,block_size,Hkv,D]; block_table [N,max_blocks]; seq_lens [N], the
    tokens in the cache with the new ones (already written: kv_cache_write)."""
    one_token = len(q.shape) == 3
    if one_token:
        q = with_axis(q, 1)
    o = empty_like(q)
    call("attn_decode",
         q=q, k_cache=k_cache, v_cache=v_cache, block_table=index_array(block_table, q),
         seq_lens=index_array(seq_lens, q), o=o, scale=scale or 0.0)
    return o[:, 0] if one_token else o


@device_option
def kv_cache_write(k, v, k_cache, v_cache, slot_mapping):
    """Writes k, v [T,Hkv,D] into the paged caches [num_blocks,block_size,Hkv,D] in place:
    row t at slot slot_mapping[t] = block * block_size + offset; -1 skips the row."""
    call("kv_cache_write",
         k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=index_array(slot_mapping, k))
