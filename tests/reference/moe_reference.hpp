// The mixture-of-experts family's float64 oracle (see reference.hpp): the
// router's top-k, dispatch, the grouped SwiGLU expert MLP, combine and the
// backwards. T tokens of width Hd, E experts of width I, k slots per token.
#pragma once

#include <cstdint>
#include <vector>

#include "reference.hpp"

namespace hops::ref {

// A [T,k] table of one index per slot (an expert id or a row), row-major;
// -1 marks a dropped slot.
struct SlotTable {
  int64_t T = 0, k = 0;
  std::vector<int64_t> data;

  SlotTable() = default;
  SlotTable(int64_t tokens, int64_t slots, int64_t fill = -1);
  // From rows of k entries each (every row the same length).
  static SlotTable from_rows(const std::vector<std::vector<int64_t>>& rows, int64_t k);
  // Bounds-checked.
  int64_t& at(int64_t t, int64_t j);
  int64_t at(int64_t t, int64_t j) const;

 private:
  size_t offset(int64_t t, int64_t j) const;
};

enum class MoeScoring { softmax = 0, sigmoid = 1 };

// logits [T,E] -> the k best experts of each token, best first, ties to the
// lower id, by p = softmax over E (or sigmoid per expert); the weights are
// p / (the sum of the k p's) when normalize, else p. Requires 0 <= k <= E.
struct MoeRouteResult {
  Array64 topk_weights;  // [T,k]
  SlotTable topk_ids;
};
MoeRouteResult moe_route(const Array64& logits, int64_t k, bool normalize, MoeScoring scoring);

// x [T,Hd] and topk_ids (ids in [-1, E), -1 drops the slot) -> rows [T*k,Hd]:
// expert e's rows start at sum(counts[<e]) and hold x[t] for its slots (t, j)
// in (t, j) order; the rows past the kept ones are zero. counts [E]; row_map
// gives each slot's row, -1 when dropped.
struct MoeDispatchResult {
  Array64 rows;
  std::vector<int64_t> counts;
  SlotTable row_map;
};
MoeDispatchResult moe_dispatch(const Array64& x, const SlotTable& topk_ids, int64_t num_experts);

// rows [R,Hd], counts [E] (>= 0, summing to at most R), gate_up_proj
// [E,2I,Hd] (gate rows, then up rows), down_proj [E,Hd,I] -> out [R,Hd]:
// for each row r of expert e, (silu(r Wg^T) * (r Wu^T)) Wd^T; zero past
// sum(counts).
Array64 moe_expert_mlp(const Array64& rows, const std::vector<int64_t>& counts,
                       const Array64& gate_up_proj, const Array64& down_proj);

// rows [R,Hd], row_map [T,k] (entries in [-1, R)), topk_weights [T,k] ->
// y [T,Hd] = sum over the kept slots j (ascending) of w[t,j] rows[row_map[t,j]].
Array64 moe_combine(const Array64& rows, const SlotTable& row_map, const Array64& topk_weights);

// d_rows [R,Hd], row_map [T,k] -> dx [T,Hd] = sum over the kept slots of
// d_rows[row_map[t,j]].
Array64 moe_dispatch_bwd(const Array64& d_rows, const SlotTable& row_map);

// The gradients of moe_expert_mlp from d_out [R,Hd]: d_rows [R,Hd] (zero past
// sum(counts)), d_gate_up_proj [E,2I,Hd] and d_down_proj [E,Hd,I] (each
// expert's rows summed in row order; zero for experts without rows).
struct MoeExpertMlpGrads {
  Array64 d_rows, d_gate_up_proj, d_down_proj;
};
MoeExpertMlpGrads moe_expert_mlp_bwd(const Array64& rows, const std::vector<int64_t>& counts,
                                     const Array64& gate_up_proj, const Array64& down_proj,
                                     const Array64& d_out);

// The gradients of moe_combine from dy [T,Hd]: d_rows [R,Hd] with
// d_rows[row_map[t,j]] = w[t,j] dy[t] (zero for rows no slot reads) and
// d_topk_weights [T,k] = <dy[t], rows[row_map[t,j]]> (0 when dropped).
// Throws on a row named by two slots.
struct MoeCombineGrads {
  Array64 d_rows, d_topk_weights;
};
MoeCombineGrads moe_combine_bwd(const Array64& rows, const SlotTable& row_map,
                                const Array64& topk_weights, const Array64& dy);

}  // namespace hops::ref
