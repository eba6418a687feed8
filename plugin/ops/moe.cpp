#include "moe.hpp"

#include <algorithm>
#include <vector>

#include "checked_math.hpp"

namespace hops {

namespace {

// Every index of a host-resident [T,k] map lies in [-1, limit); with
// `distinct`, no value >= 0 appears twice. Device-resident maps are not read
// (that would sync the stream): device kernels treat an entry outside the
// range as -1 (docs/DECISIONS.md).
void check_map(const Call& call, int arg, int64_t limit, std::string_view what, bool distinct) {
  const Tensor& map = call.tensor(arg);
  if (!host_accessible(map.device)) return;
  std::vector<int64_t> used;
  for (int64_t t = 0; t < map.shape[0]; ++t) {
    for (int64_t j = 0; j < map.shape[1]; ++j) {
      const int64_t value = read_index(map, t, j);
      if (value < -1 || value >= limit) {
        call.fail(arg, "entry [{}, {}] is {}, expected -1 (dropped) or {} id in [0, {})", t, j,
                  value, what, limit);
      }
      if (distinct && value >= 0) used.push_back(value);
    }
  }
  std::sort(used.begin(), used.end());
  const auto twice = std::adjacent_find(used.begin(), used.end());
  if (twice != used.end()) call.fail(arg, "{} {} is named by two slots", what, *twice);
}

// Host-resident counts are >= 0 and sum to at most the rows R; device
// kernels clamp the running sum to R instead.
void check_counts(const Call& call, int arg, int64_t rows) {
  const Tensor& counts = call.tensor(arg);
  if (!host_accessible(counts.device)) return;
  int64_t total = 0;
  for (int64_t e = 0; e < counts.shape[0]; ++e) {
    const int64_t count = read_index(counts, e);
    if (count < 0) call.fail(arg, "entry {} is {}, expected >= 0", e, count);
    total += std::min(count, rows + 1);  // stays far from overflow
    if (total > rows) {
      call.fail(arg, "the counts of experts 0..{} sum to more than the {} rows", e, rows);
    }
  }
}

// rows [R,Hd] of a dispatch with T tokens and k slots each: R = T*k.
void check_row_capacity(const Call& call, int rows_arg, int64_t R, int64_t T, int64_t k) {
  const auto want = try_mul(T, k);
  if (!want || *want != R) {
    call.fail(rows_arg, "has {} rows, expected T*k = {}*{} (one per slot)", R, T, k);
  }
}

// The expert weights [E,2I,Hd] and [E,Hd,I]; returns I.
int64_t check_experts(const Call& call, Shapes& dims, int gate_up, int down) {
  dims.expect(gate_up, {"E", "I2", "Hd"});
  dims.expect(down, {"E", "Hd", "I"});
  if (dims["I2"] != 2 * dims["I"]) {
    call.fail(gate_up, "dim 1 is {}, expected 2I = {} (gate rows, then up rows)", dims["I2"],
              2 * dims["I"]);
  }
  return dims["I"];
}

}  // namespace

MoeRoute MoeRoute::check(const Call& call) {
  MoeRoute op;
  Shapes dims(call);
  dims.expect(Arg::logits, {"T", "E"});
  dims.expect(Arg::topk_weights, {"T", "k"});
  dims.expect(Arg::topk_ids, {"T", "k"});
  op.T = dims["T"], op.E = dims["E"], op.k = dims["k"];
  if (op.k > op.E) call.fail(Arg::topk_ids, "asks for k = {} of only E = {} experts", op.k, op.E);
  const int64_t scoring = call.i64(Arg::scoring);
  if (scoring != 0 && scoring != 1) {
    call.fail(Arg::scoring, "expected 0 (softmax) or 1 (sigmoid), got {}", scoring);
  }
  op.scoring = static_cast<MoeScoring>(scoring);
  op.normalize = call.flag(Arg::normalize);
  op.logits = call.tensor(Arg::logits);
  op.topk_weights = call.tensor(Arg::topk_weights), op.topk_ids = call.tensor(Arg::topk_ids);
  return op;
}

MoeDispatch MoeDispatch::check(const Call& call) {
  MoeDispatch op;
  Shapes dims(call);
  dims.expect(Arg::x, {"T", "Hd"});
  dims.expect(Arg::topk_ids, {"T", "k"});
  dims.expect(Arg::rows, {"R", "Hd"});
  dims.expect(Arg::counts, {"E"});
  dims.expect(Arg::row_map, {"T", "k"});
  call.same_dtype(Arg::rows, Arg::x);
  op.T = dims["T"], op.k = dims["k"], op.Hd = dims["Hd"], op.E = dims["E"];
  check_row_capacity(call, Arg::rows, dims["R"], op.T, op.k);
  check_map(call, Arg::topk_ids, op.E, "expert", false);
  op.x = call.tensor(Arg::x), op.topk_ids = call.tensor(Arg::topk_ids);
  op.rows = call.tensor(Arg::rows), op.counts = call.tensor(Arg::counts);
  op.row_map = call.tensor(Arg::row_map);
  return op;
}

MoeDispatchBwd MoeDispatchBwd::check(const Call& call) {
  MoeDispatchBwd op;
  Shapes dims(call);
  dims.expect(Arg::d_rows, {"R", "Hd"});
  dims.expect(Arg::row_map, {"T", "k"});
  dims.expect(Arg::dx, {"T", "Hd"});
  call.same_dtype(Arg::dx, Arg::d_rows);
  op.R = dims["R"], op.T = dims["T"], op.k = dims["k"], op.Hd = dims["Hd"];
  check_map(call, Arg::row_map, op.R, "row", false);
  op.d_rows = call.tensor(Arg::d_rows), op.row_map = call.tensor(Arg::row_map);
  op.dx = call.tensor(Arg::dx);
  return op;
}

MoeExpertMlp MoeExpertMlp::check(const Call& call) {
  MoeExpertMlp op;
  Shapes dims(call);
  dims.expect(Arg::rows, {"R", "Hd"});
  dims.expect(Arg::out, {"R", "Hd"});
  dims.expect(Arg::counts, {"E"});
  op.I = check_experts(call, dims, Arg::gate_up_proj, Arg::down_proj);
  for (int arg : {Arg::gate_up_proj, Arg::down_proj, Arg::out}) call.same_dtype(arg, Arg::rows);
  op.R = dims["R"], op.Hd = dims["Hd"], op.E = dims["E"];
  check_counts(call, Arg::counts, op.R);
  op.rows = call.tensor(Arg::rows), op.counts = call.tensor(Arg::counts);
  op.gate_up_proj = call.tensor(Arg::gate_up_proj), op.down_proj = call.tensor(Arg::down_proj);
  op.out = call.tensor(Arg::out);
  return op;
}

MoeExpertMlpBwd MoeExpertMlpBwd::check(const Call& call) {
  MoeExpertMlpBwd op;
  Shapes dims(call);
  for (int arg : {Arg::rows, Arg::d_out, Arg::d_rows}) dims.expect(arg, {"R", "Hd"});
  dims.expect(Arg::counts, {"E"});
  op.I = check_experts(call, dims, Arg::gate_up_proj, Arg::down_proj);
  dims.expect(Arg::d_gate_up_proj, {"E", "I2", "Hd"});
  dims.expect(Arg::d_down_proj, {"E", "Hd", "I"});
  for (int arg : {Arg::gate_up_proj, Arg::down_proj, Arg::d_out, Arg::d_rows, Arg::d_gate_up_proj,
                  Arg::d_down_proj}) {
    call.same_dtype(arg, Arg::rows);
  }
  op.R = dims["R"], op.Hd = dims["Hd"], op.E = dims["E"];
  check_counts(call, Arg::counts, op.R);
  op.rows = call.tensor(Arg::rows), op.counts = call.tensor(Arg::counts);
  op.gate_up_proj = call.tensor(Arg::gate_up_proj), op.down_proj = call.tensor(Arg::down_proj);
  op.d_out = call.tensor(Arg::d_out), op.d_rows = call.tensor(Arg::d_rows);
  op.d_gate_up_proj = call.tensor(Arg::d_gate_up_proj);
  op.d_down_proj = call.tensor(Arg::d_down_proj);
  return op;
}

MoeCombine MoeCombine::check(const Call& call) {
  MoeCombine op;
  Shapes dims(call);
  dims.expect(Arg::rows, {"R", "Hd"});
  dims.expect(Arg::row_map, {"T", "k"});
  dims.expect(Arg::topk_weights, {"T", "k"});
  dims.expect(Arg::y, {"T", "Hd"});
  call.same_dtype(Arg::y, Arg::rows);
  op.R = dims["R"], op.T = dims["T"], op.k = dims["k"], op.Hd = dims["Hd"];
  check_map(call, Arg::row_map, op.R, "row", false);
  op.rows = call.tensor(Arg::rows), op.row_map = call.tensor(Arg::row_map);
  op.topk_weights = call.tensor(Arg::topk_weights), op.y = call.tensor(Arg::y);
  return op;
}

MoeCombineBwd MoeCombineBwd::check(const Call& call) {
  MoeCombineBwd op;
  Shapes dims(call);
  dims.expect(Arg::rows, {"R", "Hd"});
  dims.expect(Arg::d_rows, {"R", "Hd"});
  dims.expect(Arg::row_map, {"T", "k"});
  dims.expect(Arg::topk_weights, {"T", "k"});
  dims.expect(Arg::d_topk_weights, {"T", "k"});
  dims.expect(Arg::dy, {"T", "Hd"});
  for (int arg : {Arg::dy, Arg::d_rows}) call.same_dtype(arg, Arg::rows);
  call.same_dtype(Arg::d_topk_weights, Arg::topk_weights);
  op.R = dims["R"], op.T = dims["T"], op.k = dims["k"], op.Hd = dims["Hd"];
  // Each row's gradient comes from the one slot that reads it: two slots on
  // one row would make its gradient a sum across threads.
  check_map(call, Arg::row_map, op.R, "row", true);
  op.rows = call.tensor(Arg::rows), op.row_map = call.tensor(Arg::row_map);
  op.topk_weights = call.tensor(Arg::topk_weights), op.dy = call.tensor(Arg::dy);
  op.d_rows = call.tensor(Arg::d_rows), op.d_topk_weights = call.tensor(Arg::d_topk_weights);
  return op;
}

std::span<const OpEntry> moe_ops() {
  static const OpEntry ops[] = {
      {13, &op_def<MoeRoute>()},       {14, &op_def<MoeDispatch>()},
      {15, &op_def<MoeExpertMlp>()},   {16, &op_def<MoeCombine>()},
      {17, &op_def<MoeDispatchBwd>()}, {18, &op_def<MoeExpertMlpBwd>()},
      {19, &op_def<MoeCombineBwd>()},
  };
  return ops;
}

}  // namespace hops
