"""Drop-in namesakes of flash-attn 2's entry points (flash_attn.flash_attn_interface) on hops.

Layout as in flash-attn: q [B,Sq,Hq,D] (packed varlen: [total_q,Hq,D] with cu_seqlens),
k/v [B,Sk,Hkv,D] (packed: [total_k,Hkv,D]), Hq % Hkv == 0; caches [B_cache,S_cache,Hkv,D]
or paged [num_blocks,block_size,Hkv,D] with a block_table. As in flash-attn 2.1 and
later, causal masks are aligned to the bottom right (query i of a sequence with Lq
queries and Lk keys sees keys j <= i + Lk - Lq) and causal defaults to False. torch
tensors go through hops.torch_ops: flash_attn_func and flash_attn_varlen_func are
differentiable (the lse they return is not, as in flash-attn). Options hops does not
implement raise HopsError("HOPS_ERR_UNSUPPORTED"): dropout, sliding windows, softcap,
ALiBi, rotary embedding, left padding, the kvcache call's lse, and non-causal attention
of several new queries against a cache.
"""

import sys

import numpy as np

from ._dispatch import ops_for
from ._frameworks import is_torch
from .errors import HopsError, unsupported


def _refuse(dropout_p=0.0, softcap=0.0, alibi_slopes=None, **others) -> None:
    given = [f"dropout_p={dropout_p}"] if dropout_p else []
    given += [f"softcap={softcap}"] if softcap else []
    given += ["alibi_slopes"] if alibi_slopes is not None else []
    given += [name for name, value in others.items() if value is not None and value is not False]
    if given:
        raise unsupported(f"hops.flash_attn: {', '.join(given)} not implemented")


def _causal(causal: bool, window_size) -> bool:
    """flash-attn's causal flag and window as hops' causal flag: no window on the left, and
    on the right none (-1) or none beyond the diagonal (0, which is causal)."""
    left, right = (int(w) for w in window_size)
    if left >= 0 or right > 0:
        raise unsupported(f"hops.flash_attn: window_size={tuple(window_size)} (sliding windows) not implemented")
    return bool(causal) or right == 0


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """-> out [B,Sq,Hq,D]; with return_attn_probs (out, softmax_lse [B,Hq,Sq] float32, None)
    (hops computes no probabilities). hops is deterministic whatever `deterministic` says."""
    _refuse(dropout_p, softcap, alibi_slopes)
    out, lse = ops_for(q).attn_prefill(q, k, v, scale=softmax_scale, causal=_causal(causal, window_size))
    return (out, lse, None) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """Packed sequences -> out [total_q,Hq,D]; with return_attn_probs (out, softmax_lse
    [Hq,total_q] float32, None). max_seqlen_q/k are not needed (hops reads cu_seqlens).

    With block_table, k and v are paged caches [num_blocks,block_size,Hkv,D] holding
    cu_seqlens_k's lengths per sequence: supported when every sequence has the same
    number L of queries, the last L tokens of its keys (L == 1, or causal)."""
    _refuse(dropout_p, softcap, alibi_slopes)
    causal = _causal(causal, window_size)
    if block_table is None:
        out, lse = ops_for(q).attn_prefill(q, k, v, cu_seqlens_q, cu_seqlens_k, scale=softmax_scale, causal=causal)
        return (out, lse, None) if return_attn_probs else out
    if return_attn_probs:
        raise unsupported("hops.flash_attn: softmax_lse of a paged (block_table) call not implemented")
    query_ends, key_ends = _host_list(cu_seqlens_q), _host_list(cu_seqlens_k)
    sequences = len(query_ends) - 1
    lengths = {end - begin for begin, end in zip(query_ends, query_ends[1:])}
    if sequences < 1 or len(lengths) != 1 or (not causal and lengths != {1}):
        raise unsupported("hops.flash_attn: a paged call with unequal query lengths, or several queries per "
                          "sequence without causal")
    seq_lens = [end - begin for begin, end in zip(key_ends, key_ends[1:])]
    queries = q.reshape(sequences, lengths.pop(), *q.shape[1:])
    out = ops_for(q).attn_decode(queries, k, v, block_table, _index_like(seq_lens, block_table),
                                 scale=softmax_scale)
    return out.reshape(q.shape)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """q [B,Sq,Hq,D] against a cache -> out [B,Sq,Hq,D]. cache_seqlens (int or [B]): the
    tokens in the cache before k/v [B,S_new,Hkv,D] (if given) are written after them, in
    place; the queries then attend to cache_seqlens + S_new keys (None: the whole cache).
    The cache is k_cache/v_cache [B_cache,S_cache,Hkv,D] (row cache_batch_idx[b], default
    b, for sequence b), or paged [num_blocks,block_size,Hkv,D] with block_table [B,max_blocks].
    num_splits is flash-attn's tuning knob: hops splits long contexts itself."""
    _refuse(0.0, softcap, alibi_slopes, rotary_cos=rotary_cos, rotary_sin=rotary_sin, cache_leftpad=cache_leftpad,
            return_softmax_lse=return_softmax_lse)
    causal = _causal(causal, window_size)
    batch, queries = q.shape[0], q.shape[1]
    if queries > 1 and not causal:
        raise unsupported("hops.flash_attn: several new queries per sequence without causal (the cache "
                          "kernel is causal among them)")
    if (k is None) != (v is None):
        raise HopsError("HOPS_ERR_INVALID_ARGUMENT", "hops.flash_attn: k and v are given together or not at all")
    if block_table is None:  # a dense cache is a paged one of B_cache blocks of S_cache rows
        if cache_batch_idx is None:
            rows = _arange(batch, k_cache)
        else:
            rows = cache_batch_idx
        block_table = rows.reshape(batch, 1)
    elif cache_batch_idx is not None:
        raise unsupported("hops.flash_attn: cache_batch_idx with block_table")
    block_size = k_cache.shape[1]
    capacity = block_table.shape[1] * block_size
    if cache_seqlens is None:
        if k is not None:
            raise HopsError("HOPS_ERR_INVALID_ARGUMENT", "hops.flash_attn: k/v need cache_seqlens (where to append)")
        seq_lens = _full(batch, capacity, block_table)
    else:
        seq_lens = _full(batch, cache_seqlens, block_table) if isinstance(cache_seqlens, int) else cache_seqlens
    if k is not None:
        new = k.shape[1]
        seq_lens = seq_lens + new
        if int(seq_lens.max()) > capacity:
            raise HopsError("HOPS_ERR_INVALID_ARGUMENT", f"hops.flash_attn: cache_seqlens + {new} new tokens pass the "
                            f"cache's {capacity} rows per sequence")
        positions = seq_lens.reshape(batch, 1) - new + _arange(new, seq_lens).reshape(1, new)
        blocks = _take_along_rows(block_table, positions // block_size)
        slots = blocks * block_size + positions % block_size
        ops_for(k).kv_cache_write(k.reshape(batch * new, *k.shape[2:]), v.reshape(batch * new, *v.shape[2:]),
                                  k_cache, v_cache, slots.reshape(-1))
    return ops_for(q).attn_decode(q, k_cache, v_cache, block_table, seq_lens, scale=softmax_scale)


# ---- index arrays in the caller's library (torch: on the table's device) -----------------

def _host_list(values) -> list[int]:
    return [int(x) for x in (values.tolist() if hasattr(values, "tolist") else values)]


def _arange(count: int, like):
    if is_torch(like):
        return sys.modules["torch"].arange(count, device=like.device)
    return np.arange(count)


def _full(count: int, value: int, like):
    if is_torch(like):
        return sys.modules["torch"].full((count,), value, dtype=sys.modules["torch"].int64, device=like.device)
    return np.full(count, value, dtype=np.int64)


def _index_like(values: list[int], like):
    if is_torch(like):
        return sys.modules["torch"].tensor(values, dtype=like.dtype, device=like.device)
    return np.asarray(values, dtype=np.asarray(like).dtype)


def _take_along_rows(table, columns):
    """table[b, columns[b, j]] for every b, j."""
    if is_torch(table):
        return table.long().gather(1, columns.long())
    return np.take_along_axis(np.asarray(table, dtype=np.int64), np.asarray(columns, dtype=np.int64), axis=1)
