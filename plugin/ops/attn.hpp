// Attention ops: varlen causal GQA prefill with Qwen3.5's output gate, its
// backward, paged-KV decode and the cache write. Math and conventions:
// docs/OPS.md (Attention).
#pragma once

#include "../op.hpp"

namespace hops {

// The sequences of an attention call: B dense rows (Tq queries against Tk
// keys each), or with cu_seqlens_q and cu_seqlens_k (B == 1) the spans of
// row 0. A query i of a sequence with Lq queries and Lk keys sees the keys
// j <= i + Lk - Lq when causal (bottom-right alignment), all keys otherwise.
struct AttnSequences {
  struct Span {
    int64_t row, q_begin, q_end, k_begin, k_end;
  };
  Tensor cu_seqlens_q, cu_seqlens_k;  // both absent for dense calls
  int64_t count = 0;
  int64_t Tq = 0, Tk = 0;
  Span operator[](int64_t n) const {
    if (!cu_seqlens_q) return {n, 0, Tq, 0, Tk};
    return {0, read_index(cu_seqlens_q, n), read_index(cu_seqlens_q, n + 1),
            read_index(cu_seqlens_k, n), read_index(cu_seqlens_k, n + 1)};
  }
};

// What the prefill ops share, validated.
struct AttnProblem {
  Tensor q, k, v, gate;
  AttnSequences sequences;
  int64_t B = 0, Tq = 0, Tk = 0, Hq = 0, Hkv = 0, D = 0;
  double scale = 0.0;  // resolved: never 0
  bool causal = true;
  int64_t group() const { return Hq / Hkv; }  // query heads per key-value head
};

struct AttnPrefill : AttnProblem {
  static constexpr const char* kName = "attn_prefill";
  static constexpr const char* kDoc =
      "softmax attention over whole sequences (varlen, causal bottom-right, GQA, optional "
      "sigmoid output gate) with the log-sum-exp for the backward";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_attn_prefill_fn;
  struct Arg {
    enum : int { q, k, v, gate, cu_seqlens_q, cu_seqlens_k, o, lse, scale, causal };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("q", HOPS_DTYPE_FLOATS, "[B,Tq,Hq,D]", "queries"),
      input("k", HOPS_DTYPE_FLOATS, "[B,Tk,Hkv,D]", "keys (dtype of q); Hq % Hkv == 0"),
      input("v", HOPS_DTYPE_FLOATS, "[B,Tk,Hkv,D]", "values (dtype of q)"),
      optional_input("gate", HOPS_DTYPE_FLOATS, "[B,Tq,Hq,D]",
                     "output gate: o = attention * sigmoid(gate) (dtype of q)"),
      optional_input("cu_seqlens_q", HOPS_DTYPE_INDEX, "[N+1]",
                     "varlen query offsets (B == 1, with cu_seqlens_k)"),
      optional_input("cu_seqlens_k", HOPS_DTYPE_INDEX, "[N+1]",
                     "varlen key offsets (B == 1, with cu_seqlens_q)"),
      output("o", HOPS_DTYPE_FLOATS, "[B,Tq,Hq,D]", "output (dtype of q); 0 where no key is seen"),
      optional_output("lse", HOPS_DTYPE_F32, "[B,Hq,Tq]",
                      "log-sum-exp of the scaled scores, f32; -inf where no key is seen"),
      f64_scalar("scale", 0.0, "score scale; 0 means D^-1/2"),
      bool_scalar("causal", true, "query i sees keys j <= i + Lk - Lq"),
  };

  Tensor o, lse;
  static AttnPrefill check(const Call& call);
};

// The backward of attn_prefill from its output o (gated when gate is given)
// and lse: nothing else is saved. dk and dv sum the query heads of a group
// in ascending order.
struct AttnPrefillBwd : AttnProblem {
  static constexpr const char* kName = "attn_prefill_bwd";
  static constexpr const char* kDoc =
      "gradients of attn_prefill (dq, dk, dv, and dgate with a gate) from do, o and lse";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_attn_prefill_bwd_fn;
  struct Arg {
    enum : int {
      q,
      k,
      v,
      gate,
      o,
      lse,
      d_o,  // "do", a C keyword
      cu_seqlens_q,
      cu_seqlens_k,
      dq,
      dk,
      dv,
      dgate,
      scale,
      causal
    };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("q", HOPS_DTYPE_FLOATS, "[B,Tq,Hq,D]", "forward queries"),
      input("k", HOPS_DTYPE_FLOATS, "[B,Tk,Hkv,D]", "forward keys (dtype of q)"),
      input("v", HOPS_DTYPE_FLOATS, "[B,Tk,Hkv,D]", "forward values (dtype of q)"),
      optional_input("gate", HOPS_DTYPE_FLOATS, "[B,Tq,Hq,D]", "forward output gate (dtype of q)"),
      input("o", HOPS_DTYPE_FLOATS, "[B,Tq,Hq,D]", "forward output, gated (dtype of q)"),
      input("lse", HOPS_DTYPE_F32, "[B,Hq,Tq]", "forward log-sum-exp, f32"),
      input("do", HOPS_DTYPE_FLOATS, "[B,Tq,Hq,D]", "gradient of o (dtype of q)"),
      optional_input("cu_seqlens_q", HOPS_DTYPE_INDEX, "[N+1]", "varlen query offsets"),
      optional_input("cu_seqlens_k", HOPS_DTYPE_INDEX, "[N+1]", "varlen key offsets"),
      output("dq", HOPS_DTYPE_FLOATS, "[B,Tq,Hq,D]", "gradient of q (dtype of q)"),
      output("dk", HOPS_DTYPE_FLOATS, "[B,Tk,Hkv,D]", "gradient of k (dtype of q)"),
      output("dv", HOPS_DTYPE_FLOATS, "[B,Tk,Hkv,D]", "gradient of v (dtype of q)"),
      optional_output("dgate", HOPS_DTYPE_FLOATS, "[B,Tq,Hq,D]",
                      "gradient of gate (dtype of q); only with gate"),
      f64_scalar("scale", 0.0, "score scale; 0 means D^-1/2"),
      bool_scalar("causal", true, "query i sees keys j <= i + Lk - Lq"),
  };

  Tensor o, lse, d_o, dq, dk, dv, dgate;
  static AttnPrefillBwd check(const Call& call);
};

// Decode against a paged cache [num_blocks, block_size, Hkv, D]: sequence n
// has seq_lens[n] tokens (its L new ones last), token p of it in block
// block_table[n, p / block_size] at row p % block_size.
struct AttnDecode {
  static constexpr const char* kName = "attn_decode";
  static constexpr const char* kDoc =
      "attention of L new queries per sequence against a paged KV cache (causal among them)";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_attn_decode_fn;
  struct Arg {
    enum : int { q, k_cache, v_cache, block_table, seq_lens, o, scale };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("q", HOPS_DTYPE_FLOATS, "[N,L,Hq,D]", "queries, the sequence's last L tokens"),
      input("k_cache", HOPS_DTYPE_FLOATS, "[num_blocks,block_size,Hkv,D]",
            "paged keys (dtype of q); Hq % Hkv == 0"),
      input("v_cache", HOPS_DTYPE_FLOATS, "[num_blocks,block_size,Hkv,D]",
            "paged values (dtype of q)"),
      input("block_table", HOPS_DTYPE_INDEX, "[N,max_blocks]", "the blocks of each sequence"),
      input("seq_lens", HOPS_DTYPE_INDEX, "[N]",
            "tokens of each sequence in the cache, the L new ones included"),
      output("o", HOPS_DTYPE_FLOATS, "[N,L,Hq,D]", "output (dtype of q); 0 where no key is seen"),
      f64_scalar("scale", 0.0, "score scale; 0 means D^-1/2"),
  };

  Tensor q, k_cache, v_cache, block_table, seq_lens, o;
  int64_t N = 0, L = 0, Hq = 0, Hkv = 0, D = 0;
  int64_t num_blocks = 0, block_size = 0, max_blocks = 0;
  double scale = 0.0;  // resolved: never 0
  int64_t group() const { return Hq / Hkv; }
  static AttnDecode check(const Call& call);
};

// Writes rows of k and v into a paged cache in place.
struct KvCacheWrite {
  static constexpr const char* kName = "kv_cache_write";
  static constexpr const char* kDoc =
      "writes k and v rows into a paged cache at slot = block * block_size + offset (-1 skips)";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_kv_cache_write_fn;
  struct Arg {
    enum : int { k, v, k_cache, v_cache, slot_mapping };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("k", HOPS_DTYPE_FLOATS, "[T,Hkv,D]", "new keys"),
      input("v", HOPS_DTYPE_FLOATS, "[T,Hkv,D]", "new values (dtype of k)"),
      in_out("k_cache", HOPS_DTYPE_FLOATS, "[num_blocks,block_size,Hkv,D]",
             "paged keys (dtype of k), written in place"),
      in_out("v_cache", HOPS_DTYPE_FLOATS, "[num_blocks,block_size,Hkv,D]",
             "paged values (dtype of k), written in place"),
      input("slot_mapping", HOPS_DTYPE_INDEX, "[T]", "the slot of each row, -1 skips it"),
  };

  Tensor k, v, k_cache, v_cache, slot_mapping;
  int64_t T = 0, Hkv = 0, D = 0, num_blocks = 0, block_size = 0;
  int64_t slots() const { return num_blocks * block_size; }  // proven to fit by check
  static KvCacheWrite check(const Call& call);
};

// The family's ops with their ABI indices (plugin/families.cpp lists the families).
std::span<const OpEntry> attn_ops();

}  // namespace hops
