// The conv1d family's float64 oracle (see reference.hpp).
#pragma once

#include <vector>

#include "reference.hpp"

namespace hops::ref {

enum class Activation { none = 0, silu = 1 };

// Depthwise causal conv over channels-last x [B,T,D], weight [D,W], bias [D],
// initial state [N,D,L0] (L0 >= W-1) -> y [B,T,D], final state [N,D,final_len]
// (shape [N,D,0] when final_len == 0). Inputs before a sequence's start
// are the last columns of its initial state, or 0 (no state, or further back
// than L0). Final column c is the input at position len - final_len + c of
// the sequence (negative: the initial state's columns, then 0).
struct Conv1dResult {
  Array64 y, final_state;
};
// With seq_idx ([B,T] row-major; no states, no cu_seqlens), as Dao's
// causal-conv1d: a tap reads the input at p only when seq_idx[p] equals the
// current token's id (positions before 0 have none), and a token whose id is
// negative (padding) has y = 0.
Conv1dResult conv1d_fwd(const Array64& x, const Array64& weight, const Array64* bias,
                        const Array64* initial_state, const std::vector<int64_t>* cu_seqlens,
                        Activation activation, int64_t final_len,
                        const std::vector<int64_t>* seq_idx = nullptr);

// The gradients of conv1d_fwd given dy [B,T,D] and d_final_state [N,D,L1]
// (null: 0, as if the forward returned no final state): dx [B,T,D],
// dweight [D,W], dbias [D] (the gradient of a bias of 0 when bias is null),
// d_initial_state [N,D,L0] ([N,D,0] when initial_state is null). The
// activation is recomputed from x.
struct Conv1dGrads {
  Array64 dx, dweight, dbias, d_initial_state;
};
Conv1dGrads conv1d_bwd(const Array64& x, const Array64& weight, const Array64* bias,
                       const Array64* initial_state, const std::vector<int64_t>* cu_seqlens,
                       const Array64& dy, const Array64* d_final_state, Activation activation,
                       const std::vector<int64_t>* seq_idx = nullptr);

// Decode: x [N,L,D], state pool [S,D,state_len] updated in place, slot
// state_indices[n] (n when null, -1 skips: y rows keep their entry values, or
// are 0 with zero_skipped). Requires state_len >= W-1; the new state is the
// last state_len inputs of [old state columns, new tokens]. y must be [N,L,D].
// With cache_seqlens [N] the state is circular (Dao's causal-conv1d): with
// c = cache_seqlens[n] % state_len, the W-1 inputs before the new tokens are
// the columns c-(W-1) .. c-1 (mod state_len), and token t is written to
// column (c + t) % state_len, a later token overwriting an earlier one.
void conv1d_update(const Array64& x, Array64& state_pool, const Array64& weight,
                   const Array64* bias, const std::vector<int64_t>* state_indices,
                   Activation activation, Array64& y,
                   const std::vector<int64_t>* cache_seqlens = nullptr, bool zero_skipped = false);

}  // namespace hops::ref
