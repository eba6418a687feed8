// Mixture-of-experts ops on one device: the router's top-k, dispatch of token
// copies grouped by expert, the grouped SwiGLU expert MLP, the weighted
// combine, and their backwards. Math and conventions: docs/OPS.md (MoE).
#pragma once

#include "../op.hpp"

namespace hops {

// How the router turns logits into scores before its top-k.
enum class MoeScoring : int64_t { softmax = 0, sigmoid = 1 };

struct MoeRoute {
  static constexpr const char* kName = "moe_route";
  static constexpr const char* kDoc =
      "router top-k: scores = softmax (or sigmoid) of the logits, the k best experts per token "
      "(ties to the lower id), weights renormalised over the k";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_moe_route_fn;
  struct Arg {
    enum : int { logits, topk_weights, topk_ids, normalize, scoring };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("logits", HOPS_DTYPE_FLOATS, "[T,E]", "router logits"),
      output("topk_weights", HOPS_DTYPE_FLOATS, "[T,k]",
             "weights of the chosen experts, best first"),
      output("topk_ids", HOPS_DTYPE_INDEX, "[T,k]", "the chosen experts, best first; k <= E"),
      bool_scalar("normalize", true, "divide the k weights by their sum"),
      i64_scalar("scoring", 0, "0: softmax over the experts, 1: sigmoid per expert"),
  };

  Tensor logits, topk_weights, topk_ids;
  int64_t T = 0, E = 0, k = 0;
  bool normalize = true;
  MoeScoring scoring = MoeScoring::softmax;
  static MoeRoute check(const Call& call);
};

// Token copies grouped by expert: rows [R,Hd] with R = T*k holds, expert by
// expert in ascending order and within one in (token, slot) order, a copy of
// x[t] for every kept slot (t, j); the rows past the kept ones are zero.
struct MoeDispatch {
  static constexpr const char* kName = "moe_dispatch";
  static constexpr const char* kDoc =
      "copies each token's row to its experts, grouped by expert (stable in token, slot order)";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_moe_dispatch_fn;
  struct Arg {
    enum : int { x, topk_ids, rows, counts, row_map };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("x", HOPS_DTYPE_FLOATS, "[T,Hd]", "tokens"),
      input("topk_ids", HOPS_DTYPE_INDEX, "[T,k]", "experts of each token; -1 drops the slot"),
      output("rows", HOPS_DTYPE_FLOATS, "[R,Hd]",
             "R = T*k copies grouped by expert (dtype of x), zero past the kept ones"),
      output("counts", HOPS_DTYPE_INDEX, "[E]", "rows of each expert"),
      output("row_map", HOPS_DTYPE_INDEX, "[T,k]", "the row of slot (t, j), -1 when dropped"),
  };

  Tensor x, topk_ids, rows, counts, row_map;
  int64_t T = 0, k = 0, Hd = 0, E = 0;
  static MoeDispatch check(const Call& call);
};

// The backward of moe_dispatch: each token gathers the gradients of its copies.
struct MoeDispatchBwd {
  static constexpr const char* kName = "moe_dispatch_bwd";
  static constexpr const char* kDoc =
      "dx[t] = sum over the kept slots j of d_rows[row_map[t, j]], in slot order";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_moe_dispatch_bwd_fn;
  struct Arg {
    enum : int { d_rows, row_map, dx };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("d_rows", HOPS_DTYPE_FLOATS, "[R,Hd]", "gradient of rows"),
      input("row_map", HOPS_DTYPE_INDEX, "[T,k]", "moe_dispatch's row map"),
      output("dx", HOPS_DTYPE_FLOATS, "[T,Hd]", "gradient of x (dtype of d_rows)"),
  };

  Tensor d_rows, row_map, dx;
  int64_t R = 0, T = 0, k = 0, Hd = 0;
  static MoeDispatchBwd check(const Call& call);
};

// Per expert e, for its counts[e] rows (in order from row sum(counts[<e])):
// out = (silu(r Wg^T) * (r Wu^T)) Wd^T with [Wg; Wu] = gate_up_proj[e]
// [2I,Hd] (gate rows first) and Wd = down_proj[e] [Hd,I].
struct MoeExpertMlp {
  static constexpr const char* kName = "moe_expert_mlp";
  static constexpr const char* kDoc =
      "grouped SwiGLU expert MLP over rows grouped by expert (transformers' stacked weights)";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_moe_expert_mlp_fn;
  struct Arg {
    enum : int { rows, counts, gate_up_proj, down_proj, out };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("rows", HOPS_DTYPE_FLOATS, "[R,Hd]", "rows grouped by expert"),
      input("counts", HOPS_DTYPE_INDEX, "[E]", "rows of each expert; they sum to at most R"),
      input("gate_up_proj", HOPS_DTYPE_FLOATS, "[E,I2,Hd]",
            "gate then up projections, I2 = 2I (dtype of rows)"),
      input("down_proj", HOPS_DTYPE_FLOATS, "[E,Hd,I]", "down projections (dtype of rows)"),
      output("out", HOPS_DTYPE_FLOATS, "[R,Hd]",
             "expert outputs (dtype of rows), zero past the counted rows"),
  };

  Tensor rows, counts, gate_up_proj, down_proj, out;
  int64_t R = 0, Hd = 0, E = 0, I = 0;
  static MoeExpertMlp check(const Call& call);
};

struct MoeExpertMlpBwd {
  static constexpr const char* kName = "moe_expert_mlp_bwd";
  static constexpr const char* kDoc =
      "gradients of moe_expert_mlp: d_rows, d_gate_up_proj and d_down_proj from d_out";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_moe_expert_mlp_bwd_fn;
  struct Arg {
    enum : int {
      rows,
      counts,
      gate_up_proj,
      down_proj,
      d_out,
      d_rows,
      d_gate_up_proj,
      d_down_proj
    };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("rows", HOPS_DTYPE_FLOATS, "[R,Hd]", "forward rows"),
      input("counts", HOPS_DTYPE_INDEX, "[E]", "rows of each expert"),
      input("gate_up_proj", HOPS_DTYPE_FLOATS, "[E,I2,Hd]", "forward gate and up projections"),
      input("down_proj", HOPS_DTYPE_FLOATS, "[E,Hd,I]", "forward down projections"),
      input("d_out", HOPS_DTYPE_FLOATS, "[R,Hd]", "gradient of out"),
      output("d_rows", HOPS_DTYPE_FLOATS, "[R,Hd]", "gradient of rows, zero past the counted ones"),
      optional_output("d_gate_up_proj", HOPS_DTYPE_FLOATS, "[E,I2,Hd]",
                      "gradient of gate_up_proj (zero for experts without rows)"),
      optional_output("d_down_proj", HOPS_DTYPE_FLOATS, "[E,Hd,I]",
                      "gradient of down_proj (zero for experts without rows)"),
  };

  Tensor rows, counts, gate_up_proj, down_proj, d_out, d_rows, d_gate_up_proj, d_down_proj;
  int64_t R = 0, Hd = 0, E = 0, I = 0;
  static MoeExpertMlpBwd check(const Call& call);
};

struct MoeCombine {
  static constexpr const char* kName = "moe_combine";
  static constexpr const char* kDoc =
      "y[t] = sum over the kept slots j of topk_weights[t, j] * rows[row_map[t, j]], in slot order";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_moe_combine_fn;
  struct Arg {
    enum : int { rows, row_map, topk_weights, y };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("rows", HOPS_DTYPE_FLOATS, "[R,Hd]", "expert outputs grouped by expert"),
      input("row_map", HOPS_DTYPE_INDEX, "[T,k]", "moe_dispatch's row map (-1: dropped)"),
      input("topk_weights", HOPS_DTYPE_FLOATS, "[T,k]", "routing weights (any float dtype)"),
      output("y", HOPS_DTYPE_FLOATS, "[T,Hd]", "combined tokens (dtype of rows)"),
  };

  Tensor rows, row_map, topk_weights, y;
  int64_t R = 0, T = 0, k = 0, Hd = 0;
  static MoeCombine check(const Call& call);
};

struct MoeCombineBwd {
  static constexpr const char* kName = "moe_combine_bwd";
  static constexpr const char* kDoc =
      "gradients of moe_combine: d_rows (zero for rows no slot reads) and d_topk_weights";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 2;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_moe_combine_bwd_fn;
  struct Arg {
    enum : int { rows, row_map, topk_weights, dy, d_rows, d_topk_weights };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("rows", HOPS_DTYPE_FLOATS, "[R,Hd]", "forward rows"),
      input("row_map", HOPS_DTYPE_INDEX, "[T,k]", "moe_dispatch's row map"),
      input("topk_weights", HOPS_DTYPE_FLOATS, "[T,k]", "forward routing weights"),
      input("dy", HOPS_DTYPE_FLOATS, "[T,Hd]", "gradient of y (dtype of rows)"),
      output("d_rows", HOPS_DTYPE_FLOATS, "[R,Hd]", "gradient of rows (dtype of rows)"),
      optional_output("d_topk_weights", HOPS_DTYPE_FLOATS, "[T,k]",
                      "gradient of topk_weights (dtype of topk_weights), 0 for dropped slots"),
  };

  Tensor rows, row_map, topk_weights, dy, d_rows, d_topk_weights;
  int64_t R = 0, T = 0, k = 0, Hd = 0;
  static MoeCombineBwd check(const Call& call);
};

// The family's ops with their ABI indices (plugin/families.cpp lists the families).
std::span<const OpEntry> moe_ops();

}  // namespace hops
