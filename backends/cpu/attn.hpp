// The CPU kernels of the attention family (attn_prefill.cpp, attn_prefill_bwd.cpp,
// attn_decode.cpp, attn.cpp) and what they share: blocks of rows packed into fp32
// scratch, row-major, their feature dim padded with zeros to a multiple of
// kPadding (small_gemm.hpp) so that the products run on register tiles.
#pragma once

#include <algorithm>

#include "cpu_kernels.hpp"
#include "ops/attn.hpp"
#include "small_gemm.hpp"

namespace hops::cpu {

void attn_prefill(const ExecContext& context, const AttnPrefill& op);
void attn_prefill_bwd(const ExecContext& context, const AttnPrefillBwd& op);
void attn_decode(const ExecContext& context, const AttnDecode& op);
void kv_cache_write(const ExecContext& context, const KvCacheWrite& op);

namespace attn {

inline constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// Element [row, t, h, 0] of a [B, T, H, D] tensor as D floats at `out`, then
// zeros up to `padded`.
inline void load_head_row(const Tensor& x, int64_t row, int64_t t, int64_t h, int64_t D,
                          int64_t padded, float* out) {
  load_run(x, x.offset(row, t, h, 0), x.stride[3], D, out);
  std::fill(out + D, out + padded, 0.0f);
}

// Rows of a [B, T, H, D] tensor (or a cache [blocks, rows, H, D]) as a GEMM
// operand: in place when they are fp32 with a unit feature stride, else
// converted into `buffer` [count, padded] with zeros past D. In place needs
// `padded` == D when the GEMM reads whole padded rows (as its b operand).
struct Rows {
  const float* data;
  int64_t ld;
};
inline Rows head_rows(const Tensor& x, int64_t row, int64_t first, int64_t count, int64_t h,
                      int64_t D, int64_t padded, bool whole_rows, float* buffer) {
  if (x.dtype == DType::f32 && x.stride[3] == 1 && (!whole_rows || padded == D)) {
    return {x.data<const float>() + x.offset(row, first, h, 0), x.stride[1]};
  }
  for (int64_t i = 0; i < count; ++i)
    load_head_row(x, row, first + i, h, D, padded, buffer + i * padded);
  return {buffer, padded};
}

// out[t * ld_out + r] = q_r . k_t for the rows of q [rows, ld_q] and the keys
// [count, ld_keys], over `depth` floats of each (a multiple of kPadding, all
// readable): decode's scores (attn_dots.cpp).
struct Dots {
  const float* q;
  int64_t rows, ld_q;
  const float* keys;
  int64_t ld_keys, count, depth;
  float* out;
  int64_t ld_out;
  // Memory that the caller reads next (ahead_bytes from ahead): asked for
  // into L2 a few lines per tile, so that the requests never pile up.
  const char* ahead = nullptr;
  int64_t ahead_bytes = 0;
};
void dots(const Dots& p);

// out[rows, kPanel] (+)= p[rows, depth] v[depth, kPanel] (p and out with row
// strides ldp, ldo; v's rows contiguous): the prefill's Q K^T and P V on one
// column panel of packed keys or values (attn_panel.cpp).
inline constexpr int64_t kPanel = 32;
void panel_product(const float* p, int64_t ldp, int64_t rows, int64_t depth, const float* v,
                   float* out, int64_t ldo, bool accumulate);

// The prefill ops work on blocks. A key block is kKeys keys (the bf16 path:
// its own count, attn_prefill_bf16.cpp) of one sequence
// (the last one shorter); a query block is `tokens` queries of one sequence,
// all G query heads of one key-value head (rows ordered token by token, the
// G heads of a token together), so that each key and value row packed
// serves G x tokens query rows.
inline constexpr int64_t kKeys = 64;

struct KeyBlock {
  int64_t sequence, first, count;  // keys [first, first + count) of the sequence, local
  int64_t queries;  // the first query that sees a key of the block (all later ones do)
};
struct QueryBlock {
  int64_t sequence, begin, end;  // queries [begin, end) of the sequence, local
  int64_t keys;                  // the keys the last query sees: the block's work
  int64_t key_block;             // the index of the sequence's first key block
};

// Causal: query i of a sequence (Lq queries, Lk keys) sees keys [0, key_end).
inline int64_t key_end(const AttnProblem& p, int64_t Lq, int64_t Lk, int64_t i) {
  return p.causal ? std::clamp<int64_t>(i + 1 + Lk - Lq, 0, Lk) : Lk;
}

// Query tokens per block (of G rows each) for blocks of `row_bytes` per row.
// The more rows a block has, the more work each key block brought in from L3
// serves (at T = 4096, D = 256: 101, 110 and 118 GFLOP/s per core with 120,
// 240 and 480 rows), as long as the block's rows stay in L2: half of it is
// given to them.
int64_t query_block_tokens(const AttnProblem& p, int64_t row_bytes);

// The key blocks (of block_keys keys, kKeys on the fp32 paths) of every
// sequence in order.
int64_t count_key_blocks(const AttnProblem& p, int64_t block_keys);
void list_key_blocks(const AttnProblem& p, int64_t block_keys, KeyBlock* blocks);
// The query blocks of every sequence, largest work first, so that the
// threads finish together.
int64_t count_query_blocks(const AttnProblem& p, int64_t tokens);
void list_query_blocks(const AttnProblem& p, int64_t tokens, int64_t block_keys,
                       QueryBlock* blocks);

// Query row (row, t, h) of a prefill, done: o = acc / sum (0 where no key was
// seen) times sigmoid(gate) when there is a gate (gate: D floats of scratch),
// stored to op.o, and lse = max ln 2 + ln sum (max in log2 units, as the
// softmax keeps it) to op.lse. acc is overwritten. attn_prefill.cpp.
void finish_query_row(const AttnPrefill& op, int64_t row, int64_t t, int64_t h, float* acc,
                      float max, float sum, float* gate);

}  // namespace attn

}  // namespace hops::cpu
