// The attention family's float64 oracle (see reference.hpp): prefill, its
// backward, paged decode and the cache write.
#pragma once

#include <vector>

#include "reference.hpp"

namespace hops::ref {

// Softmax attention over whole sequences. q [B,Tq,Hq,D], k, v [B,Tk,Hkv,D],
// gate (optional) [B,Tq,Hq,D]; query head h reads key-value head h / (Hq / Hkv).
// Dense: B sequences of Tq queries and Tk keys. Varlen (cu_seqlens_q and
// cu_seqlens_k together, B == 1): sequence n has the queries
// [cu_q[n], cu_q[n+1]) and the keys [cu_k[n], cu_k[n+1]). Query i of a
// sequence with Lq queries and Lk keys sees the keys j <= i + Lk - Lq when
// causal (bottom-right), all Lk keys otherwise. scale 0 means D^-1/2.
// -> o [B,Tq,Hq,D] (times sigmoid(gate) with a gate; 0 where no key is seen)
//    and lse [B,Hq,Tq] (natural log; -inf where no key is seen).
struct AttnResult {
  Array64 o, lse;
};
AttnResult attn_prefill(const Array64& q, const Array64& k, const Array64& v, const Array64* gate,
                        const std::vector<int64_t>* cu_seqlens_q,
                        const std::vector<int64_t>* cu_seqlens_k, double scale, bool causal);

// The gradients of attn_prefill from its gated output o, its lse and d_o
// (o's shape): dq, dk, dv, and dgate when gate is given (else left empty).
// dk and dv sum the query heads of a group; every element is written, 0
// where nothing contributes.
struct AttnGrads {
  Array64 dq, dk, dv, dgate;
};
AttnGrads attn_prefill_bwd(const Array64& q, const Array64& k, const Array64& v,
                           const Array64* gate, const Array64& o, const Array64& lse,
                           const Array64& d_o, const std::vector<int64_t>* cu_seqlens_q,
                           const std::vector<int64_t>* cu_seqlens_k, double scale, bool causal);

// L new queries per sequence against a paged cache. q [N,L,Hq,D], caches
// [num_blocks,block_size,Hkv,D], block_table N rows of max_blocks block ids,
// seq_lens [N] (the L new tokens included). Token p of sequence n is row
// p % block_size of block block_table[n][p / block_size]; query l sits at
// position seq_lens[n] - L + l and sees the tokens 0..that position.
// -> o [N,L,Hq,D], 0 where no token is seen. Throws on a length outside
// 0..max_blocks*block_size or a used block outside [0, num_blocks).
Array64 attn_decode(const Array64& q, const Array64& k_cache, const Array64& v_cache,
                    const std::vector<std::vector<int64_t>>& block_table,
                    const std::vector<int64_t>& seq_lens, double scale);

// Writes k, v [T,Hkv,D] into the caches [num_blocks,block_size,Hkv,D] in
// place: row t goes to slot slot_mapping[t] (block slot / block_size, row
// slot % block_size); -1 skips it. Throws on a slot outside
// [-1, num_blocks*block_size) or one named twice.
void kv_cache_write(const Array64& k, const Array64& v, Array64& k_cache, Array64& v_cache,
                    const std::vector<int64_t>& slot_mapping);

}  // namespace hops::ref
