// The mixture-of-experts family's calls besides its reference cases: the
// typed entry points fed by argument name, the wrong calls and the threaded
// calls.
#include "moe_calls.hpp"

namespace hops::conformance {

namespace {

using Table = std::vector<std::vector<int64_t>>;

// A [T,k] index table (ids, row map) of `rows` on `device`.
Tensor table(Device& device, DType dtype, const Table& rows) {
  const auto T = static_cast<int64_t>(rows.size());
  const int64_t k = T > 0 ? static_cast<int64_t>(rows[0].size()) : 0;
  Tensor t = Tensor::empty(device, dtype, {T, k});
  Array64 values({T, k});
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t j = 0; j < k; ++j) values.at({i, j}) = static_cast<double>(rows[i][j]);
  }
  t.write(values);
  return t;
}

// Wrong index values go in host memory, where the plugin validates them.
auto host_table(const Context& ctx, std::string_view name, const Table& rows) {
  return set(name, table(*ctx.host, DType::i32, rows));
}

auto host_counts(const Context& ctx, const std::vector<int64_t>& values) {
  return set("counts", Tensor::indices(*ctx.host, DType::i32, values));
}

auto scoring(int64_t value) {
  return [value](Invocation& call) { call.i64("scoring", value); };
}

}  // namespace

// ---- typed calls -------------------------------------------------------------------

hops_status moe_route_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_moe_route_fn>(op)(exec, a.tensor("logits"), a.tensor("topk_weights"),
                                      a.tensor("topk_ids"), a.flag("normalize"), a.i64("scoring"));
}

hops_status moe_dispatch_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_moe_dispatch_fn>(op)(exec, a.tensor("x"), a.tensor("topk_ids"),
                                         a.tensor("rows"), a.tensor("counts"), a.tensor("row_map"));
}

hops_status moe_expert_mlp_typed(const hops_op_desc& op, const hops_exec* exec,
                                 const ArgValues& a) {
  return typed<hops_moe_expert_mlp_fn>(op)(exec, a.tensor("rows"), a.tensor("counts"),
                                           a.tensor("gate_up_proj"), a.tensor("down_proj"),
                                           a.tensor("out"));
}

hops_status moe_combine_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_moe_combine_fn>(op)(exec, a.tensor("rows"), a.tensor("row_map"),
                                        a.tensor("topk_weights"), a.tensor("y"));
}

hops_status moe_dispatch_bwd_typed(const hops_op_desc& op, const hops_exec* exec,
                                   const ArgValues& a) {
  return typed<hops_moe_dispatch_bwd_fn>(op)(exec, a.tensor("d_rows"), a.tensor("row_map"),
                                             a.tensor("dx"));
}

hops_status moe_expert_mlp_bwd_typed(const hops_op_desc& op, const hops_exec* exec,
                                     const ArgValues& a) {
  return typed<hops_moe_expert_mlp_bwd_fn>(op)(
      exec, a.tensor("rows"), a.tensor("counts"), a.tensor("gate_up_proj"), a.tensor("down_proj"),
      a.tensor("d_out"), a.tensor("d_rows"), a.tensor("d_gate_up_proj"), a.tensor("d_down_proj"));
}

hops_status moe_combine_bwd_typed(const hops_op_desc& op, const hops_exec* exec,
                                  const ArgValues& a) {
  return typed<hops_moe_combine_bwd_fn>(op)(exec, a.tensor("rows"), a.tensor("row_map"),
                                            a.tensor("topk_weights"), a.tensor("dy"),
                                            a.tensor("d_rows"), a.tensor("d_topk_weights"));
}

// ---- moe_route: logits [5,7], top 3 ------------------------------------------------

Invocation moe_route_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("logits", filled(d, DType::f32, random, {5, 7}))
      .tensor("topk_weights", f32(d, {5, 3}))
      .tensor("topk_ids", Tensor::empty(d, DType::i32, {5, 3}));
  return call;
}

std::vector<BadCall> moe_route_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"k = 8 > E = 7",
       {"topk_ids", "topk_weights"},
       [w = f32(d, {5, 8}), ids = Tensor::empty(d, DType::i32, {5, 8})](Invocation& call) {
         call.tensor("topk_weights", w).tensor("topk_ids", ids);
       }},
      {"topk_weights has k = 2 while topk_ids has k = 3",
       {"topk_ids", "topk_weights"},
       set("topk_weights", f32(d, {5, 2}))},
      {"topk_ids has T = 4 while logits has T = 5",
       {"topk_ids", "logits"},
       set("topk_ids", Tensor::empty(d, DType::i32, {4, 3}))},
      {"topk_weights has shape [3,5]", {"topk_weights"}, set("topk_weights", f32(d, {3, 5}))},
      {"topk_ids has rank 1", {"topk_ids"}, set("topk_ids", Tensor::empty(d, DType::i32, {15}))},
      {"logits has rank 3", {"logits"}, set("logits", f32(d, {1, 5, 7}))},
      {"scoring = 2", {"scoring"}, scoring(2)},
      {"scoring = -1", {"scoring"}, scoring(-1)},
      {"topk_ids has dtype f32", {"topk_ids"}, set("topk_ids", f32(d, {5, 3}))},
      {"topk_weights has dtype i32",
       {"topk_weights"},
       set("topk_weights", Tensor::empty(d, DType::i32, {5, 3}))},
      {"logits has dtype i64", {"logits"}, set("logits", Tensor::empty(d, DType::i64, {5, 7}))},
      {"topk_ids is NULL", {"topk_ids"}, set("topk_ids", {})},
      {"topk_weights is NULL", {"topk_weights"}, set("topk_weights", {})},
      {"topk_weights overlaps logits",
       {"topk_weights", "logits"},
       [](Invocation& call) {
         call.tensor("topk_weights", call.tensor("logits").view(0, {5, 3}, {7, 1}));
       }},
  };
}

// ---- moe_dispatch: x [5,8], topk_ids [5,2] over E = 4 ------------------------------

namespace {

const Table kIds = {{2, 0}, {0, -1}, {3, 3}, {1, 2}, {-1, 0}};

}  // namespace

Invocation moe_dispatch_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("x", filled(d, DType::f32, random, {5, 8}))
      .tensor("topk_ids", table(d, DType::i32, kIds))
      .tensor("rows", f32(d, {10, 8}))
      .tensor("counts", Tensor::empty(d, DType::i32, {4}))
      .tensor("row_map", Tensor::empty(d, DType::i32, {5, 2}));
  return call;
}

std::vector<BadCall> moe_dispatch_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"topk_ids entry [3,1] is 4 = E",
       {"topk_ids"},
       host_table(ctx, "topk_ids", {{2, 0}, {0, -1}, {3, 3}, {1, 4}, {-1, 0}})},
      {"topk_ids entry [0,0] is -2",
       {"topk_ids"},
       host_table(ctx, "topk_ids", {{-2, 0}, {0, -1}, {3, 3}, {1, 2}, {-1, 0}})},
      {"rows has 9 rows, T*k = 10", {"rows"}, set("rows", f32(d, {9, 8}))},
      {"rows has 11 rows, T*k = 10", {"rows"}, set("rows", f32(d, {11, 8}))},
      {"row_map has k = 3 while topk_ids has k = 2",
       {"row_map", "topk_ids"},
       set("row_map", Tensor::empty(d, DType::i32, {5, 3}))},
      {"row_map has T = 4 while x has T = 5",
       {"row_map", "x", "topk_ids"},
       set("row_map", Tensor::empty(d, DType::i32, {4, 2}))},
      {"topk_ids has T = 4 while x has T = 5",
       {"topk_ids", "x"},
       host_table(ctx, "topk_ids", {{2, 0}, {0, -1}, {3, 3}, {1, 2}})},
      {"rows has Hd = 7 while x has Hd = 8", {"rows", "x"}, set("rows", f32(d, {10, 7}))},
      {"rows is bf16 while x is f32",
       {"rows"},
       set("rows", Tensor::empty(d, DType::bf16, {10, 8}))},
      {"counts has dtype f32", {"counts"}, set("counts", f32(d, {4}))},
      {"counts has rank 2", {"counts"}, set("counts", Tensor::empty(d, DType::i32, {4, 1}))},
      {"row_map has dtype f16", {"row_map"}, set("row_map", Tensor::empty(d, DType::f16, {5, 2}))},
      {"topk_ids has dtype f32", {"topk_ids"}, set("topk_ids", f32(d, {5, 2}))},
      {"topk_ids is NULL", {"topk_ids"}, set("topk_ids", {})},
      {"counts is NULL", {"counts"}, set("counts", {})},
      {"x overlaps rows",
       {"rows", "x"},
       [](Invocation& call) {
         call.tensor("x", call.tensor("rows").view(0, {5, 8}, {8, 1}));
       }},
      {"row_map aliases topk_ids (in place)",
       {"row_map", "topk_ids"},
       same_as("row_map", "topk_ids")},
      {"counts overlaps row_map",
       {"counts", "row_map"},
       [](Invocation& call) { call.tensor("counts", call.tensor("row_map").view(2, {4}, {1})); }},
  };
}

// ---- moe_expert_mlp: rows [6,8], counts {2,0,3}, I = 4 ------------------------------

namespace {

const std::vector<int64_t> kCounts = {2, 0, 3};

}  // namespace

Invocation moe_expert_mlp_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("rows", filled(d, DType::f32, random, {6, 8}))
      .tensor("counts", Tensor::indices(d, DType::i32, kCounts))
      .tensor("gate_up_proj", filled(d, DType::f32, random, {3, 8, 8}))
      .tensor("down_proj", filled(d, DType::f32, random, {3, 8, 4}))
      .tensor("out", f32(d, {6, 8}));
  return call;
}

namespace {

// What moe_expert_mlp and its backward reject alike.
std::vector<BadCall> expert_problem_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"counts sum to 7 > R = 6", {"counts"}, host_counts(ctx, {2, 2, 3})},
      {"counts entry 0 is 7 > R = 6", {"counts"}, host_counts(ctx, {7, 0, 0})},
      {"counts entry 1 is -1", {"counts"}, host_counts(ctx, {2, -1, 3})},
      {"counts has 2 entries while gate_up_proj has E = 3",
       {"counts", "gate_up_proj", "down_proj"},
       host_counts(ctx, {2, 3})},
      {"counts has dtype f32", {"counts"}, set("counts", f32(d, {3}))},
      {"counts has rank 2", {"counts"}, set("counts", Tensor::empty(d, DType::i32, {3, 1}))},
      {"counts is NULL", {"counts"}, set("counts", {})},
      {"gate_up_proj dim 1 is 7, not 2I = 8",
       {"gate_up_proj"},
       set("gate_up_proj", f32(d, {3, 7, 8}))},
      {"gate_up_proj dim 1 is 6 while down_proj has I = 4",
       {"gate_up_proj"},
       set("gate_up_proj", f32(d, {3, 6, 8}))},
      {"gate_up_proj has Hd = 7 while rows has Hd = 8",
       {"gate_up_proj", "rows"},
       set("gate_up_proj", f32(d, {3, 8, 7}))},
      {"gate_up_proj has E = 2",
       {"gate_up_proj", "counts"},
       set("gate_up_proj", f32(d, {2, 8, 8}))},
      {"down_proj has E = 4", {"down_proj", "counts"}, set("down_proj", f32(d, {4, 8, 4}))},
      {"down_proj has Hd = 7", {"down_proj"}, set("down_proj", f32(d, {3, 7, 4}))},
      {"down_proj has rank 2", {"down_proj"}, set("down_proj", f32(d, {24, 4}))},
      {"gate_up_proj is f16 while rows is f32",
       {"gate_up_proj"},
       set("gate_up_proj", Tensor::empty(d, DType::f16, {3, 8, 8}))},
      {"down_proj is bf16 while rows is f32",
       {"down_proj"},
       set("down_proj", Tensor::empty(d, DType::bf16, {3, 8, 4}))},
      {"gate_up_proj is NULL", {"gate_up_proj"}, set("gate_up_proj", {})},
      {"rows has rank 3", {"rows"}, set("rows", f32(d, {1, 6, 8}))},
  };
}

}  // namespace

std::vector<BadCall> moe_expert_mlp_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  std::vector<BadCall> calls = expert_problem_bad_calls(ctx);
  const std::vector<BadCall> more = {
      {"out has R = 5 while rows has R = 6", {"out", "rows"}, set("out", f32(d, {5, 8}))},
      {"out is f16 while rows is f32", {"out"}, set("out", Tensor::empty(d, DType::f16, {6, 8}))},
      {"out is NULL", {"out"}, set("out", {})},
      {"out aliases rows (in place)", {"out", "rows"}, same_as("out", "rows")},
      {"out overlaps down_proj",
       {"out", "down_proj"},
       [](Invocation& call) {
         call.tensor("out", call.tensor("down_proj").view(16, {6, 8}, {8, 1}));
       }},
  };
  calls.insert(calls.end(), more.begin(), more.end());
  return calls;
}

// ---- moe_expert_mlp_bwd: the forward's shapes, with d_out and the gradients ---------

Invocation moe_expert_mlp_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("rows", filled(d, DType::f32, random, {6, 8}))
      .tensor("counts", Tensor::indices(d, DType::i32, kCounts))
      .tensor("gate_up_proj", filled(d, DType::f32, random, {3, 8, 8}))
      .tensor("down_proj", filled(d, DType::f32, random, {3, 8, 4}))
      .tensor("d_out", filled(d, DType::f32, random, {6, 8}))
      .tensor("d_rows", f32(d, {6, 8}))
      .tensor("d_gate_up_proj", f32(d, {3, 8, 8}))
      .tensor("d_down_proj", f32(d, {3, 8, 4}));
  return call;
}

std::vector<BadCall> moe_expert_mlp_bwd_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  std::vector<BadCall> calls = expert_problem_bad_calls(ctx);
  const std::vector<BadCall> more = {
      {"d_out has R = 5", {"d_out"}, set("d_out", f32(d, {5, 8}))},
      {"d_out is bf16 while rows is f32",
       {"d_out"},
       set("d_out", Tensor::empty(d, DType::bf16, {6, 8}))},
      {"d_out is NULL", {"d_out"}, set("d_out", {})},
      {"d_rows has Hd = 7", {"d_rows"}, set("d_rows", f32(d, {6, 7}))},
      {"d_rows is NULL", {"d_rows"}, set("d_rows", {})},
      {"d_gate_up_proj has dim 1 = 6 while gate_up_proj has 8",
       {"d_gate_up_proj"},
       set("d_gate_up_proj", f32(d, {3, 6, 8}))},
      {"d_down_proj has E = 2", {"d_down_proj"}, set("d_down_proj", f32(d, {2, 8, 4}))},
      {"d_gate_up_proj is f16 while rows is f32",
       {"d_gate_up_proj"},
       set("d_gate_up_proj", Tensor::empty(d, DType::f16, {3, 8, 8}))},
      {"d_down_proj is bf16 while rows is f32",
       {"d_down_proj"},
       set("d_down_proj", Tensor::empty(d, DType::bf16, {3, 8, 4}))},
      {"d_rows aliases rows", {"d_rows", "rows"}, same_as("d_rows", "rows")},
      {"d_gate_up_proj aliases gate_up_proj (in place)",
       {"d_gate_up_proj", "gate_up_proj"},
       same_as("d_gate_up_proj", "gate_up_proj")},
      {"d_down_proj overlaps d_gate_up_proj",
       {"d_down_proj", "d_gate_up_proj"},
       [](Invocation& call) {
         call.tensor("d_down_proj", call.tensor("d_gate_up_proj").view(64, {3, 8, 4}, {32, 4, 1}));
       }},
  };
  calls.insert(calls.end(), more.begin(), more.end());
  return calls;
}

// ---- moe_combine and moe_dispatch_bwd: rows [10,8], row_map [5,2] -------------------

namespace {

// Row 9 read by two slots (combine and dispatch_bwd sum it), rows 4, 6, 7, 8 by none.
const Table kRowMap = {{3, -1}, {0, 9}, {9, 1}, {-1, -1}, {5, 2}};

// What moe_combine, moe_dispatch_bwd and moe_combine_bwd reject alike about
// row_map; `r_args` are their tensors of R rows.
std::vector<BadCall> row_map_bad_calls(const Context& ctx, std::vector<std::string_view> r_args) {
  Device& d = ctx.device;
  return {
      {"row_map entry [4,0] is 10 = R",
       {"row_map"},
       host_table(ctx, "row_map", {{3, -1}, {0, 6}, {8, 1}, {-1, -1}, {10, 2}})},
      {"row_map entry [1,0] is -2",
       {"row_map"},
       host_table(ctx, "row_map", {{3, -1}, {-2, 6}, {8, 1}, {-1, -1}, {5, 2}})},
      {"row_map entry [1,1] is 9 while R = 8",
       {"row_map"},
       [&d, r_args,
        map = table(*ctx.host, DType::i32, {{3, -1}, {0, 9}, {8, 1}, {-1, -1}, {5, 2}})](
           Invocation& call) {
         for (std::string_view name : r_args) call.tensor(name, f32(d, {8, 8}));
         call.tensor("row_map", map);
       }},
      {"row_map has dtype f32", {"row_map"}, set("row_map", f32(d, {5, 2}))},
      {"row_map has rank 1", {"row_map"}, set("row_map", Tensor::empty(d, DType::i32, {10}))},
      {"row_map is NULL", {"row_map"}, set("row_map", {})},
  };
}

}  // namespace

Invocation moe_combine_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("rows", filled(d, DType::f32, random, {10, 8}))
      .tensor("row_map", table(d, DType::i32, kRowMap))
      .tensor("topk_weights", filled(d, DType::f32, random, {5, 2}))
      .tensor("y", f32(d, {5, 8}));
  return call;
}

std::vector<BadCall> moe_combine_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  std::vector<BadCall> calls = row_map_bad_calls(ctx, {"rows"});
  const std::vector<BadCall> more = {
      {"topk_weights has k = 3 while row_map has k = 2",
       {"topk_weights", "row_map"},
       set("topk_weights", f32(d, {5, 3}))},
      {"topk_weights has shape [2,5]",
       {"topk_weights", "row_map"},
       set("topk_weights", f32(d, {2, 5}))},
      {"topk_weights has rank 1", {"topk_weights"}, set("topk_weights", f32(d, {10}))},
      {"topk_weights has rank 3", {"topk_weights"}, set("topk_weights", f32(d, {5, 2, 1}))},
      {"topk_weights has dtype i32",
       {"topk_weights"},
       set("topk_weights", Tensor::empty(d, DType::i32, {5, 2}))},
      {"topk_weights is NULL", {"topk_weights"}, set("topk_weights", {})},
      {"y has T = 4", {"y", "row_map"}, set("y", f32(d, {4, 8}))},
      {"y has Hd = 7", {"y", "rows"}, set("y", f32(d, {5, 7}))},
      {"y is bf16 while rows is f32", {"y"}, set("y", Tensor::empty(d, DType::bf16, {5, 8}))},
      {"y is NULL", {"y"}, set("y", {})},
      {"y overlaps rows",
       {"y", "rows"},
       [](Invocation& call) {
         call.tensor("y", call.tensor("rows").view(8, {5, 8}, {8, 1}));
       }},
  };
  calls.insert(calls.end(), more.begin(), more.end());
  return calls;
}

Invocation moe_dispatch_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("d_rows", filled(d, DType::f32, random, {10, 8}))
      .tensor("row_map", table(d, DType::i32, kRowMap))
      .tensor("dx", f32(d, {5, 8}));
  return call;
}

std::vector<BadCall> moe_dispatch_bwd_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  std::vector<BadCall> calls = row_map_bad_calls(ctx, {"d_rows"});
  const std::vector<BadCall> more = {
      {"dx has T = 4 while row_map has T = 5", {"dx", "row_map"}, set("dx", f32(d, {4, 8}))},
      {"dx has Hd = 9", {"dx", "d_rows"}, set("dx", f32(d, {5, 9}))},
      {"dx is f16 while d_rows is f32", {"dx"}, set("dx", Tensor::empty(d, DType::f16, {5, 8}))},
      {"d_rows has rank 3", {"d_rows"}, set("d_rows", f32(d, {1, 10, 8}))},
      {"dx is NULL", {"dx"}, set("dx", {})},
      {"dx overlaps d_rows",
       {"dx", "d_rows"},
       [](Invocation& call) {
         call.tensor("dx", call.tensor("d_rows").view(0, {5, 8}, {8, 1}));
       }},
  };
  calls.insert(calls.end(), more.begin(), more.end());
  return calls;
}

// ---- moe_combine_bwd: rows, d_rows [10,8], row_map [5,2] of distinct rows ----------

namespace {

const Table kDistinctRowMap = {{3, -1}, {0, 9}, {8, 1}, {-1, -1}, {5, 2}};

}  // namespace

Invocation moe_combine_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("rows", filled(d, DType::f32, random, {10, 8}))
      .tensor("row_map", table(d, DType::i32, kDistinctRowMap))
      .tensor("topk_weights", filled(d, DType::f32, random, {5, 2}))
      .tensor("dy", filled(d, DType::f32, random, {5, 8}))
      .tensor("d_rows", f32(d, {10, 8}))
      .tensor("d_topk_weights", f32(d, {5, 2}));
  return call;
}

std::vector<BadCall> moe_combine_bwd_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  std::vector<BadCall> calls = row_map_bad_calls(ctx, {"rows", "d_rows"});
  const std::vector<BadCall> more = {
      {"row_map names row 9 twice (combine's map may, its backward's may not)",
       {"row_map"},
       host_table(ctx, "row_map", kRowMap)},
      {"topk_weights has k = 3 while row_map has k = 2",
       {"topk_weights", "row_map"},
       set("topk_weights", f32(d, {5, 3}))},
      {"topk_weights has shape [10,1]",
       {"topk_weights", "row_map"},
       set("topk_weights", f32(d, {10, 1}))},
      {"d_topk_weights has k = 3",
       {"d_topk_weights", "row_map", "topk_weights"},
       set("d_topk_weights", f32(d, {5, 3}))},
      {"d_topk_weights is f16 while topk_weights is f32",
       {"d_topk_weights"},
       set("d_topk_weights", Tensor::empty(d, DType::f16, {5, 2}))},
      {"dy has T = 4", {"dy", "row_map"}, set("dy", f32(d, {4, 8}))},
      {"dy is bf16 while rows is f32", {"dy"}, set("dy", Tensor::empty(d, DType::bf16, {5, 8}))},
      {"dy is NULL", {"dy"}, set("dy", {})},
      {"d_rows has R = 9 while rows has R = 10", {"d_rows", "rows"}, set("d_rows", f32(d, {9, 8}))},
      {"d_rows is NULL", {"d_rows"}, set("d_rows", {})},
      {"d_rows aliases rows (in place)", {"d_rows", "rows"}, same_as("d_rows", "rows")},
      {"d_topk_weights aliases topk_weights (in place)",
       {"d_topk_weights", "topk_weights"},
       same_as("d_topk_weights", "topk_weights")},
  };
  calls.insert(calls.end(), more.begin(), more.end());
  return calls;
}

// ---- threads: medium calls --------------------------------------------------------

namespace {

// 300 tokens, 8 distinct experts of 64 each ((7t + 8j) mod 64), every 11th slot dropped.
Table thread_ids() {
  Table ids(300, std::vector<int64_t>(8));
  for (int64_t t = 0; t < 300; ++t) {
    for (int64_t j = 0; j < 8; ++j) ids[t][j] = (t * 8 + j) % 11 == 5 ? -1 : (7 * t + 8 * j) % 64;
  }
  return ids;
}

// 300 tokens x 4 slots onto distinct rows of 1200 ((7 s) mod 1200 for slot s),
// every 13th slot dropped.
Table thread_row_map() {
  Table map(300, std::vector<int64_t>(4));
  for (int64_t s = 0; s < 1200; ++s) map[s / 4][s % 4] = s % 13 == 5 ? -1 : (7 * s) % 1200;
  return map;
}

// 16 experts over 512 rows: 41 rows each but experts 1, 5, 9, 13 (none); 20 rows nobody's.
std::vector<int64_t> thread_counts() {
  std::vector<int64_t> counts(16);
  for (int64_t e = 0; e < 16; ++e) counts[e] = e % 4 == 1 ? 0 : 41;
  return counts;
}

}  // namespace

Invocation moe_route_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("logits", random_input(ctx, random, {300, 64}, -3, 3))
      .tensor("topk_weights", f32(ctx.device, {300, 8}))
      .tensor("topk_ids", Tensor::empty(ctx.device, DType::i32, {300, 8}));
  return call;
}

Invocation moe_dispatch_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("x", random_input(ctx, random, {300, 64}, -1, 1))
      .tensor("topk_ids", table(ctx.index_device(), DType::i32, thread_ids()))
      .tensor("rows", f32(ctx.device, {2400, 64}))
      .tensor("counts", Tensor::empty(ctx.device, DType::i32, {64}))
      .tensor("row_map", Tensor::empty(ctx.device, DType::i32, {300, 8}));
  return call;
}

Invocation moe_expert_mlp_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("rows", random_input(ctx, random, {512, 64}, -1, 1))
      .tensor("counts", Tensor::indices(ctx.index_device(), DType::i32, thread_counts()))
      .tensor("gate_up_proj", random_input(ctx, random, {16, 64, 64}, -0.25, 0.25))
      .tensor("down_proj", random_input(ctx, random, {16, 64, 32}, -0.35, 0.35))
      .tensor("out", f32(ctx.device, {512, 64}));
  return call;
}

Invocation moe_combine_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("rows", random_input(ctx, random, {1200, 64}, -1, 1))
      .tensor("row_map", table(ctx.index_device(), DType::i32, thread_row_map()))
      .tensor("topk_weights", random_input(ctx, random, {300, 4}, 0, 1))
      .tensor("y", f32(ctx.device, {300, 64}));
  return call;
}

Invocation moe_dispatch_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("d_rows", random_input(ctx, random, {1200, 64}, -1, 1))
      .tensor("row_map", table(ctx.index_device(), DType::i32, thread_row_map()))
      .tensor("dx", f32(ctx.device, {300, 64}));
  return call;
}

// The weight gradients sum each expert's 41 rows: the same bytes for any
// number of threads only if the sums' order is fixed.
Invocation moe_expert_mlp_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("rows", random_input(ctx, random, {512, 64}, -1, 1))
      .tensor("counts", Tensor::indices(ctx.index_device(), DType::i32, thread_counts()))
      .tensor("gate_up_proj", random_input(ctx, random, {16, 64, 64}, -0.25, 0.25))
      .tensor("down_proj", random_input(ctx, random, {16, 64, 32}, -0.35, 0.35))
      .tensor("d_out", random_input(ctx, random, {512, 64}, -1, 1))
      .tensor("d_rows", f32(ctx.device, {512, 64}))
      .tensor("d_gate_up_proj", f32(ctx.device, {16, 64, 64}))
      .tensor("d_down_proj", f32(ctx.device, {16, 64, 32}));
  return call;
}

Invocation moe_combine_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("rows", random_input(ctx, random, {1200, 64}, -1, 1))
      .tensor("row_map", table(ctx.index_device(), DType::i32, thread_row_map()))
      .tensor("topk_weights", random_input(ctx, random, {300, 4}, 0, 1))
      .tensor("dy", random_input(ctx, random, {300, 64}, -1, 1))
      .tensor("d_rows", f32(ctx.device, {1200, 64}))
      .tensor("d_topk_weights", f32(ctx.device, {300, 4}));
  return call;
}

}  // namespace hops::conformance
