// moe_route, moe_dispatch, moe_expert_mlp, moe_combine and the backwards of
// dispatch, expert MLP and combine against ref::moe_*.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <utility>

#include "cases.hpp"
#include "invocation.hpp"
#include "moe_calls.hpp"
#include "moe_reference.hpp"

namespace hops::conformance {

namespace {

enum class Layout {
  contiguous,
  padded,   // every tensor strided with gaps (index tensors: every other entry)
  compact,  // contiguous, passed with strides = NULL
  // every tensor stored with its last two dims swapped (x as [Hd,T],
  // gate_up_proj as [E,Hd,2I], the [T,k] tables as [k,T]); 1-D ones as given
  transposed,
};

std::string_view layout_name(Layout layout) {
  switch (layout) {
    case Layout::contiguous:
      return "";
    case Layout::padded:
      return " padded";
    case Layout::compact:
      return " strides=NULL";
    case Layout::transposed:
      return " transposed";
  }
  return "";
}

// The last two dims swapped: Tensor::permuted's and permute()'s order.
std::vector<int> swap_last2(size_t rank) {
  std::vector<int> perm(rank);
  for (size_t d = 0; d < rank; ++d) perm[d] = static_cast<int>(d);
  std::swap(perm[rank - 1], perm[rank - 2]);
  return perm;
}

bool swapped(Layout layout, size_t rank) { return layout == Layout::transposed && rank >= 2; }

// A float input holding `values` as the layout stores it; `values` is then
// what it holds.
Tensor input_tensor(Device& device, DType dtype, Array64& values, Layout layout) {
  const size_t rank = values.shape.size();
  if (!swapped(layout, rank)) {
    return Tensor::input(device, dtype, values, layout == Layout::padded ? gaps(rank) : Shape{});
  }
  const std::vector<int> perm = swap_last2(rank);
  Array64 stored = permute(values, perm);
  const Tensor t = Tensor::input(device, dtype, stored);
  values = permute(stored, perm);
  return t.permuted(perm);
}

// A float output of logical shape `shape` as the layout stores it.
Tensor output_tensor(Device& device, DType dtype, const Shape& shape, Layout layout) {
  const size_t rank = shape.size();
  if (!swapped(layout, rank)) {
    return Tensor::padded(device, dtype, shape, layout == Layout::padded ? gaps(rank) : Shape{});
  }
  Shape stored = shape;
  std::swap(stored[rank - 1], stored[rank - 2]);
  return Tensor::empty(device, dtype, stored).permuted(swap_last2(rank));
}

// An index tensor (ids, row map, counts) of `values` shaped `shape`, as the
// layout stores it; padded, every other entry of a wider buffer whose other
// entries hold junk that no kernel may read.
Tensor index_tensor(Device& device, DType dtype, const std::vector<int64_t>& values,
                    const Shape& shape, Layout layout) {
  Array64 a(shape);
  for (size_t i = 0; i < values.size(); ++i) a.data[i] = static_cast<double>(values[i]);
  if (swapped(layout, shape.size())) {
    const std::vector<int> perm = swap_last2(shape.size());
    Tensor t = Tensor::empty(device, dtype, permute(a, perm).shape);
    t.write(permute(a, perm));
    return t.permuted(perm);
  }
  if (layout != Layout::padded) {
    Tensor t = Tensor::empty(device, dtype, shape);
    t.write(a);
    return t;
  }
  Shape wide = shape;
  wide.back() *= 2;
  Tensor t = Tensor::empty(device, dtype, wide);
  t.write(Array64(wide, -12345.0));
  Shape strides = contiguous_strides(wide);
  strides.back() = 2;
  t = t.view(0, shape, strides);
  t.write(a);
  return t;
}

// An index output of `shape` as the layout stores it (padded: every other entry).
Tensor index_output(Device& device, DType dtype, const Shape& shape, Layout layout) {
  if (swapped(layout, shape.size())) {
    Shape stored = shape;
    std::swap(stored[shape.size() - 1], stored[shape.size() - 2]);
    return Tensor::empty(device, dtype, stored).permuted(swap_last2(shape.size()));
  }
  if (layout != Layout::padded) return Tensor::empty(device, dtype, shape);
  Shape wide = shape;
  wide.back() *= 2;
  Shape strides = contiguous_strides(wide);
  strides.back() = 2;
  return Tensor::empty(device, dtype, wide).view(0, shape, strides);
}

// Index outputs are exact: every entry equal, else the first that is not.
void expect_indices(Verdict& verdict, std::string_view output, const Tensor& out,
                    const std::vector<int64_t>& expected) {
  const Array64 got = out.read();
  int64_t wrong = 0, first = -1;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (got.data[i] == static_cast<double>(expected[i])) continue;
    if (wrong++ == 0) first = static_cast<int64_t>(i);
  }
  verdict.expect(
      wrong == 0,
      fmt::format("{}: {} of {} entries differ, the first at flat index {}: {} (expected "
                  "{})",
                  output, wrong, expected.size(), first, first >= 0 ? got.data[first] : 0.0,
                  first >= 0 ? expected[first] : 0));
}

// The harness poisons index outputs with zeros, under which an entry that
// should be 0 (an expert without tokens, expert id 0) passes unwritten: the
// ops with index outputs run once more, through the typed entry point, from
// index outputs filled with junk.
void fill_with_junk(Tensor t) { t.write(Array64(t.shape(), -777.0)); }

hops_exec exec_of(const Context& ctx) {
  return {sizeof(hops_exec), ctx.device.dl_device(), ctx.device.stream(), 0, 0, nullptr};
}

void expect_ok(Verdict& verdict, const Context& ctx, hops_status status) {
  verdict.expect(status == HOPS_OK,
                 fmt::format("the call from junk index outputs returned {}: {}",
                             status_text(ctx.api, status), ctx.api.last_error()));
}

// Uniform in 0..n-1.
int64_t pick(Random& random, int64_t n) {
  return std::min(static_cast<int64_t>(random.uniform(0, static_cast<double>(n))), n - 1);
}

// A random permutation of 0..count-1 (Fisher-Yates on the case's Random).
std::vector<int64_t> shuffled(Random& random, int64_t count) {
  std::vector<int64_t> ids(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) ids[i] = i;
  for (int64_t i = count - 1; i > 0; --i) std::swap(ids[i], ids[pick(random, i + 1)]);
  return ids;
}

// ---- the cases of the token-row ops -------------------------------------------------

// How a case's slots are routed. The first four give expert ids, and the
// row map and counts are moe_dispatch's of them; the last two give row maps
// that no dispatch makes (for combine and the backwards of dispatch and combine).
enum class Slots {
  top_k,        // k distinct experts per token in random order (a router's output)
  repeats,      // any expert per slot, a token's slots may repeat one
  one_expert,   // every slot to expert E/2
  few_experts,  // only experts 0, 3, 6, ...: the others get no tokens
  shuffled,     // row map: distinct rows in random order, the unread ones scattered
  any_rows,     // row map: any row, rows read by several slots
};

std::string_view slots_name(Slots slots) {
  switch (slots) {
    case Slots::top_k:
      return "top_k";
    case Slots::repeats:
      return "repeats";
    case Slots::one_expert:
      return "one_expert";
    case Slots::few_experts:
      return "few_experts";
    case Slots::shuffled:
      return "shuffled_rows";
    case Slots::any_rows:
      return "any_rows";
  }
  return "?";
}

struct MoeCase {
  int64_t T, k, E, Hd;
  int64_t I = 0;  // the expert MLP's width
  Slots slots = Slots::top_k;
  int64_t drop_every = 0;  // every n-th slot (flat order) dropped; 0: none
  DType index_dtype = DType::i32;
  std::optional<DType> map_dtype = {};      // moe_dispatch's counts and row_map; else index_dtype
  std::optional<DType> weights_dtype = {};  // topk_weights; else the op's float dtype
  bool weight_grads = true;                 // the backwards: ask for the optional gradients
  Layout layout = Layout::contiguous;
  bool half = false;   // also run for f16 and bf16
  bool heavy = false;  // left out by --quick

  int64_t R() const { return T * k; }
};

std::string case_name(std::string_view op, DType dtype, const MoeCase& c) {
  std::string name =
      fmt::format("{} {} T={} k={} E={} Hd={}", op, name_of(dtype), c.T, c.k, c.E, c.Hd);
  if (c.I > 0) name += fmt::format(" I={}", c.I);
  name += fmt::format(" slots={}", slots_name(c.slots));
  if (c.drop_every > 0) name += fmt::format(" dropped=every {}", c.drop_every);
  name += fmt::format(" index({})", name_of(c.index_dtype));
  if (c.map_dtype) name += fmt::format(" counts,row_map({})", name_of(*c.map_dtype));
  if (c.weights_dtype) name += fmt::format(" topk_weights({})", name_of(*c.weights_dtype));
  if (!c.weight_grads) name += " no_weight_grads";
  return name + std::string(layout_name(c.layout));
}

// A case's routing: the expert of each slot, and the row map and counts
// moe_dispatch makes of them (or, for shuffled and any_rows, a row map alone).
struct Routing {
  ref::SlotTable ids, row_map;
  std::vector<int64_t> counts;
};

Routing make_routing(Random& random, const MoeCase& c) {
  if (c.slots == Slots::top_k && c.k > c.E) throw std::logic_error("top_k routing needs k <= E");
  Routing routing{ref::SlotTable(c.T, c.k), ref::SlotTable(c.T, c.k), {}};
  const std::vector<int64_t> rows = shuffled(random, c.R());
  for (int64_t t = 0; t < c.T; ++t) {
    const std::vector<int64_t> experts = shuffled(random, c.E);
    for (int64_t j = 0; j < c.k; ++j) {
      int64_t& id = routing.ids.at(t, j);
      switch (c.slots) {
        case Slots::top_k:
          id = experts[j];
          break;
        case Slots::repeats:
          id = pick(random, c.E);
          break;
        case Slots::one_expert:
          id = c.E / 2;
          break;
        case Slots::few_experts:
          id = 3 * pick(random, (c.E + 2) / 3);
          break;
        case Slots::shuffled:
          routing.row_map.at(t, j) = rows[t * c.k + j];
          break;
        case Slots::any_rows:
          routing.row_map.at(t, j) = pick(random, c.R());
          break;
      }
      if (c.drop_every > 0 && (t * c.k + j) % c.drop_every == c.drop_every - 1) {
        id = routing.row_map.at(t, j) = -1;
      }
    }
  }
  if (c.slots != Slots::shuffled && c.slots != Slots::any_rows) {
    const ref::MoeDispatchResult dispatch = ref::moe_dispatch(Array64({c.T, 0}), routing.ids, c.E);
    routing.row_map = dispatch.row_map;
    routing.counts = dispatch.counts;
  }
  return routing;
}

Tensor slot_tensor(const Context& ctx, const ref::SlotTable& table, const MoeCase& c) {
  return index_tensor(ctx.index_device(), c.index_dtype, table.data, {table.T, table.k}, c.layout);
}

Tensor counts_tensor(const Context& ctx, const std::vector<int64_t>& counts, const MoeCase& c) {
  return index_tensor(ctx.index_device(), c.index_dtype, counts,
                      {static_cast<int64_t>(counts.size())}, c.layout);
}

// Routing weights in [0, 1), as a router gives them.
Tensor weights_tensor(const Context& ctx, Random& random, DType dtype, Array64& weights,
                      const MoeCase& c) {
  weights = random.uniform({c.T, c.k}, 0, 1);
  return input_tensor(ctx.device, c.weights_dtype.value_or(dtype), weights, c.layout);
}

// The looser tolerance of the op's dtype and the routing weights'.
double combined_tolerance(DType dtype, const MoeCase& c) {
  return std::max(tolerance(dtype), tolerance(c.weights_dtype.value_or(dtype)));
}

void run(Invocation& call, const MoeCase& c, bool typed_too) {
  if (c.layout == Layout::compact) call.null_strides();
  call.run(typed_too);
}

void dispatch_case(const Context& ctx, const hops_op_desc& op, DType dtype, const MoeCase& c,
                   bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const Routing routing = make_routing(random, c);
    Array64 x = random.uniform({c.T, c.Hd}, -1, 1);
    const DType map_dtype = c.map_dtype.value_or(c.index_dtype);
    const Tensor tx = input_tensor(ctx.device, dtype, x, c.layout);
    const Tensor ids = slot_tensor(ctx, routing.ids, c);
    const Tensor rows = output_tensor(ctx.device, dtype, {c.R(), c.Hd}, c.layout);
    const Tensor counts = index_output(ctx.device, map_dtype, {c.E}, c.layout);
    const Tensor row_map = index_output(ctx.device, map_dtype, {c.T, c.k}, c.layout);
    Invocation call(ctx, op);
    call.tensor("x", tx)
        .tensor("topk_ids", ids)
        .tensor("rows", rows)
        .tensor("counts", counts)
        .tensor("row_map", row_map);
    run(call, c, typed_too);

    // A copy: the rows exact, the kept ones' tail exact zeros.
    const ref::MoeDispatchResult want = ref::moe_dispatch(x, routing.ids, c.E);
    verdict.expect_close("rows", rows, want.rows, 0.0);
    expect_indices(verdict, "counts", counts, want.counts);
    expect_indices(verdict, "row_map", row_map, want.row_map.data);

    fill_with_junk(counts), fill_with_junk(row_map);
    const hops_exec exec = exec_of(ctx);
    const DLTensor a = tx.dl(), b = ids.dl(), r = rows.dl(), n = counts.dl(), m = row_map.dl();
    expect_ok(verdict, ctx, typed<hops_moe_dispatch_fn>(op)(&exec, &a, &b, &r, &n, &m));
    expect_indices(verdict, "counts (from junk)", counts, want.counts);
    expect_indices(verdict, "row_map (from junk)", row_map, want.row_map.data);
  });
}

void combine_case(const Context& ctx, const hops_op_desc& op, DType dtype, const MoeCase& c,
                  bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const Routing routing = make_routing(random, c);
    Array64 rows = random.uniform({c.R(), c.Hd}, -1, 1), weights;
    const Tensor y = output_tensor(ctx.device, dtype, {c.T, c.Hd}, c.layout);
    Invocation call(ctx, op);
    call.tensor("rows", input_tensor(ctx.device, dtype, rows, c.layout))
        .tensor("row_map", slot_tensor(ctx, routing.row_map, c))
        .tensor("topk_weights", weights_tensor(ctx, random, dtype, weights, c))
        .tensor("y", y);
    run(call, c, typed_too);
    verdict.expect_close("y", y, ref::moe_combine(rows, routing.row_map, weights),
                         combined_tolerance(dtype, c));
  });
}

void dispatch_bwd_case(const Context& ctx, const hops_op_desc& op, DType dtype, const MoeCase& c,
                       bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const Routing routing = make_routing(random, c);
    Array64 d_rows = random.uniform({c.R(), c.Hd}, -1, 1);
    const Tensor dx = output_tensor(ctx.device, dtype, {c.T, c.Hd}, c.layout);
    Invocation call(ctx, op);
    call.tensor("d_rows", input_tensor(ctx.device, dtype, d_rows, c.layout))
        .tensor("row_map", slot_tensor(ctx, routing.row_map, c))
        .tensor("dx", dx);
    run(call, c, typed_too);
    verdict.expect_close("dx", dx, ref::moe_dispatch_bwd(d_rows, routing.row_map),
                         tolerance(dtype));
  });
}

void combine_bwd_case(const Context& ctx, const hops_op_desc& op, DType dtype, const MoeCase& c,
                      bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const Routing routing = make_routing(random, c);
    Array64 rows = random.uniform({c.R(), c.Hd}, -1, 1), weights;
    Array64 dy = random.uniform({c.T, c.Hd}, -1, 1);
    const Tensor d_rows = output_tensor(ctx.device, dtype, rows.shape, c.layout);
    Tensor d_weights;
    if (c.weight_grads) {
      d_weights = output_tensor(ctx.device, c.weights_dtype.value_or(dtype), {c.T, c.k}, c.layout);
    }
    Invocation call(ctx, op);
    call.tensor("rows", input_tensor(ctx.device, dtype, rows, c.layout))
        .tensor("row_map", slot_tensor(ctx, routing.row_map, c))
        .tensor("topk_weights", weights_tensor(ctx, random, dtype, weights, c))
        .tensor("dy", input_tensor(ctx.device, dtype, dy, c.layout))
        .tensor("d_rows", d_rows)
        .tensor("d_topk_weights", d_weights);
    run(call, c, typed_too);

    const ref::MoeCombineGrads want = ref::moe_combine_bwd(rows, routing.row_map, weights, dy);
    verdict.expect_close("d_rows", d_rows, want.d_rows, combined_tolerance(dtype, c));
    if (d_weights) {
      verdict.expect_close("d_topk_weights", d_weights, want.d_topk_weights,
                           combined_tolerance(dtype, c));
    }
  });
}

// The token-row ops' shapes: E = 1, 7 (a multiple of nothing) and 64
// (Qwen3.5-35B-A3B's top-8 of 256 scaled down); k = 1..10; T = 1 and 0; Hd
// 64 and 96 and 40; every token to one expert, experts without tokens,
// dropped slots (all of them too); int32 and int64 index tables; strided views.
std::vector<MoeCase> token_sweep() {
  // clang-format off
  return {
      {.T = 1, .k = 1, .E = 1, .Hd = 64, .half = true},
      {.T = 5, .k = 3, .E = 7, .Hd = 64, .drop_every = 4, .half = true},
      {.T = 33, .k = 8, .E = 64, .Hd = 96, .half = true},
      {.T = 16, .k = 10, .E = 7, .Hd = 64, .slots = Slots::repeats, .index_dtype = DType::i64,
       .half = true},
      {.T = 20, .k = 1, .E = 64, .Hd = 64, .slots = Slots::one_expert},
      {.T = 20, .k = 4, .E = 7, .Hd = 64, .slots = Slots::one_expert, .half = true},
      {.T = 30, .k = 6, .E = 64, .Hd = 64, .slots = Slots::few_experts, .drop_every = 3,
       .index_dtype = DType::i64},
      {.T = 24, .k = 9, .E = 64, .Hd = 40, .slots = Slots::few_experts, .half = true},
      {.T = 0, .k = 8, .E = 64, .Hd = 64},
      {.T = 12, .k = 2, .E = 7, .Hd = 64, .drop_every = 1},
      {.T = 6, .k = 0, .E = 7, .Hd = 64},  // no slots: outputs of zeros, rows of none
      {.T = 7, .k = 7, .E = 7, .Hd = 96, .drop_every = 5, .half = true},
      {.T = 9, .k = 3, .E = 7, .Hd = 3, .drop_every = 4, .half = true},  // rows narrower than a vector
      {.T = 25, .k = 5, .E = 7, .Hd = 40, .drop_every = 6, .layout = Layout::padded, .half = true},
      {.T = 10, .k = 6, .E = 64, .Hd = 64, .index_dtype = DType::i64, .layout = Layout::compact},
      {.T = 19, .k = 2, .E = 7, .Hd = 96, .drop_every = 3, .index_dtype = DType::i64,
       .layout = Layout::transposed, .half = true},
      {.T = 512, .k = 8, .E = 64, .Hd = 128, .drop_every = 11, .half = true, .heavy = true},
  };
  // clang-format on
}

// moe_dispatch: its outputs in another index dtype than the ids too, and
// rows of more than 64 MiB.
std::vector<MoeCase> dispatch_sweep() {
  std::vector<MoeCase> cases = token_sweep();
  // 68 MB of f32 rows of 2084 bytes (not a multiple of 16): the size at
  // which a kernel may write past the caches, rows starting off alignment.
  cases.push_back({.T = 4096, .k = 8, .E = 64, .Hd = 521, .drop_every = 13, .heavy = true});
  cases.push_back({.T = 40,
                   .k = 8,
                   .E = 64,
                   .Hd = 64,
                   .drop_every = 7,
                   .index_dtype = DType::i64,
                   .map_dtype = DType::i32,
                   .half = true});
  cases.push_back({.T = 9,
                   .k = 3,
                   .E = 7,
                   .Hd = 64,
                   .index_dtype = DType::i32,
                   .map_dtype = DType::i64,
                   .layout = Layout::padded});
  return cases;
}

// moe_combine and moe_dispatch_bwd: row maps no dispatch makes (rows read by
// several slots too), and routing weights in another dtype than the rows.
std::vector<MoeCase> gather_sweep(bool with_weights) {
  std::vector<MoeCase> cases = token_sweep();
  cases.push_back({.T = 30,
                   .k = 6,
                   .E = 64,
                   .Hd = 64,
                   .slots = Slots::any_rows,
                   .drop_every = 4,
                   .half = true});
  cases.push_back({.T = 17,
                   .k = 3,
                   .E = 7,
                   .Hd = 96,
                   .slots = Slots::shuffled,
                   .drop_every = 5,
                   .index_dtype = DType::i64,
                   .half = true});
  if (with_weights) {
    cases.push_back(
        {.T = 20, .k = 8, .E = 64, .Hd = 64, .weights_dtype = DType::f32, .half = true});
    cases.push_back(
        {.T = 20, .k = 8, .E = 64, .Hd = 64, .drop_every = 3, .weights_dtype = DType::bf16});
  }
  return cases;
}

// moe_combine_bwd: distinct rows only; weights in another dtype; without
// d_topk_weights.
std::vector<MoeCase> combine_bwd_sweep() {
  std::vector<MoeCase> cases = token_sweep();
  cases.push_back({.T = 17,
                   .k = 3,
                   .E = 7,
                   .Hd = 96,
                   .slots = Slots::shuffled,
                   .drop_every = 5,
                   .index_dtype = DType::i64,
                   .half = true});
  cases.push_back({.T = 20,
                   .k = 8,
                   .E = 64,
                   .Hd = 64,
                   .drop_every = 3,
                   .weights_dtype = DType::f32,
                   .half = true});
  cases.push_back({.T = 20, .k = 4, .E = 7, .Hd = 64, .weights_dtype = DType::f16});
  cases.push_back(
      {.T = 21, .k = 5, .E = 7, .Hd = 64, .drop_every = 4, .weight_grads = false, .half = true});
  return cases;
}

// ---- moe_expert_mlp and its backward ------------------------------------------------

// The expert weights: g = r Wg^T and the output of about unit spread.
struct Experts {
  Array64 gate_up, down;
  Tensor t_gate_up, t_down;
};

Experts make_experts(const Context& ctx, Random& random, DType dtype, const MoeCase& c) {
  Experts w;
  const double gate_scale = 2 / std::sqrt(static_cast<double>(c.Hd));
  const double down_scale = 2 / std::sqrt(static_cast<double>(c.I));
  w.gate_up = random.uniform({c.E, 2 * c.I, c.Hd}, -gate_scale, gate_scale);
  w.down = random.uniform({c.E, c.Hd, c.I}, -down_scale, down_scale);
  w.t_gate_up = input_tensor(ctx.device, dtype, w.gate_up, c.layout);
  w.t_down = input_tensor(ctx.device, dtype, w.down, c.layout);
  return w;
}

void expert_mlp_case(const Context& ctx, const hops_op_desc& op, DType dtype, const MoeCase& c,
                     bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const Routing routing = make_routing(random, c);
    // Rows past the counted ones hold values too: the op must not read them.
    Array64 rows = random.uniform({c.R(), c.Hd}, -1, 1);
    const Experts w = make_experts(ctx, random, dtype, c);
    const Tensor out = output_tensor(ctx.device, dtype, rows.shape, c.layout);
    Invocation call(ctx, op);
    call.tensor("rows", input_tensor(ctx.device, dtype, rows, c.layout))
        .tensor("counts", counts_tensor(ctx, routing.counts, c))
        .tensor("gate_up_proj", w.t_gate_up)
        .tensor("down_proj", w.t_down)
        .tensor("out", out);
    run(call, c, typed_too);
    verdict.expect_close("out", out, ref::moe_expert_mlp(rows, routing.counts, w.gate_up, w.down),
                         tolerance(dtype));
    // threads.cpp's num_threads = 1 check on every dtype and shape here: its call is f32,
    // and f16 and bf16 may take other kernels (the CPU's AMX tiles where it has AMX-BF16).
    verdict.expect(
        call.same_bytes_on_one_thread(
            "out", [&] { return output_tensor(ctx.device, dtype, rows.shape, c.layout); }),
        "out: the bytes with num_threads=1 differ from those with all threads");
  });
}

void expert_mlp_bwd_case(const Context& ctx, const hops_op_desc& op, DType dtype, const MoeCase& c,
                         bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const Routing routing = make_routing(random, c);
    Array64 rows = random.uniform({c.R(), c.Hd}, -1, 1);
    Array64 d_out = random.uniform({c.R(), c.Hd}, -1, 1);
    const Experts w = make_experts(ctx, random, dtype, c);
    const Tensor d_rows = output_tensor(ctx.device, dtype, rows.shape, c.layout);
    Tensor d_gate_up, d_down;
    if (c.weight_grads) {
      d_gate_up = output_tensor(ctx.device, dtype, w.gate_up.shape, c.layout);
      d_down = output_tensor(ctx.device, dtype, w.down.shape, c.layout);
    }
    Invocation call(ctx, op);
    call.tensor("rows", input_tensor(ctx.device, dtype, rows, c.layout))
        .tensor("counts", counts_tensor(ctx, routing.counts, c))
        .tensor("gate_up_proj", w.t_gate_up)
        .tensor("down_proj", w.t_down)
        .tensor("d_out", input_tensor(ctx.device, dtype, d_out, c.layout))
        .tensor("d_rows", d_rows)
        .tensor("d_gate_up_proj", d_gate_up)
        .tensor("d_down_proj", d_down);
    run(call, c, typed_too);

    const ref::MoeExpertMlpGrads want =
        ref::moe_expert_mlp_bwd(rows, routing.counts, w.gate_up, w.down, d_out);
    verdict.expect_close("d_rows", d_rows, want.d_rows, tolerance(dtype));
    if (d_gate_up)
      verdict.expect_close("d_gate_up_proj", d_gate_up, want.d_gate_up_proj, tolerance(dtype));
    if (d_down) verdict.expect_close("d_down_proj", d_down, want.d_down_proj, tolerance(dtype));
  });
}

// The expert MLP's shapes: I 32 and 48 (and 20 off every tile), Hd 64, 96
// and 40; experts with no rows, every row in one expert, no rows counted,
// rows past sum(counts).
std::vector<MoeCase> expert_sweep(bool backward) {
  // clang-format off
  std::vector<MoeCase> cases = {
      {.T = 1, .k = 1, .E = 1, .Hd = 64, .I = 32, .half = true},
      {.T = 5, .k = 2, .E = 7, .Hd = 64, .I = 32, .drop_every = 3, .half = true},
      {.T = 33, .k = 8, .E = 64, .Hd = 64, .I = 32, .half = true},
      {.T = 40, .k = 4, .E = 7, .Hd = 96, .I = 48, .half = true},
      // 600 rows in one expert: more than one tile of rows in a kernel.
      {.T = 300, .k = 2, .E = 7, .Hd = 64, .I = 48, .slots = Slots::one_expert,
       .index_dtype = DType::i64, .half = true},
      {.T = 16, .k = 1, .E = 1, .Hd = 96, .I = 32, .drop_every = 4, .half = true},
      {.T = 30, .k = 6, .E = 64, .Hd = 96, .I = 32, .slots = Slots::few_experts, .drop_every = 5,
       .half = true},
      {.T = 0, .k = 8, .E = 64, .Hd = 64, .I = 32},
      {.T = 12, .k = 2, .E = 7, .Hd = 64, .I = 32, .drop_every = 1},
      {.T = 9, .k = 2, .E = 7, .Hd = 5, .I = 3, .drop_every = 4, .half = true},
      {.T = 17, .k = 10, .E = 64, .Hd = 40, .I = 20, .index_dtype = DType::i64, .half = true},
      {.T = 10, .k = 4, .E = 7, .Hd = 64, .I = 32, .drop_every = 5, .layout = Layout::padded,
       .half = true},
      {.T = 8, .k = 2, .E = 7, .Hd = 64, .I = 48, .layout = Layout::compact},
      {.T = 9, .k = 5, .E = 7, .Hd = 64, .I = 32, .index_dtype = DType::i64,
       .layout = Layout::transposed, .half = true},
      {.T = 256, .k = 4, .E = 7, .Hd = 128, .I = 64, .slots = Slots::repeats, .drop_every = 9,
       .half = true, .heavy = true},
  };
  // clang-format on
  if (backward) {
    cases.push_back({.T = 14,
                     .k = 3,
                     .E = 7,
                     .Hd = 64,
                     .I = 32,
                     .drop_every = 4,
                     .weight_grads = false,
                     .half = true});
  }
  return cases;
}

// ---- moe_route ----------------------------------------------------------------------

// Logits on a grid of `step` within +-`reach`, exact in f16 and bf16: equal
// logits are exact ties, distinct ones far enough apart that no f32 score
// can order them differently from the float64 one.
enum class Logits {
  eighths,  // step 1/8 within +-4
  halves,   // step 1/2 within +-2: ties everywhere
  wide,     // step 1/4 within +-30 (softmax only: sigmoid saturates in f32)
};

std::string_view logits_name(Logits logits) {
  switch (logits) {
    case Logits::eighths:
      return "eighths";
    case Logits::halves:
      return "halves";
    case Logits::wide:
      return "wide";
  }
  return "?";
}

struct RouteCase {
  int64_t T, E, k;
  bool normalize = true;
  int64_t scoring = 0;  // 0 softmax, 1 sigmoid
  Logits logits = Logits::eighths;
  DType index_dtype = DType::i32;
  std::optional<DType> weights_dtype = {};  // else the logits'
  Layout layout = Layout::contiguous;
  bool half = false, heavy = false;
};

std::string case_name(std::string_view op, DType dtype, const RouteCase& c) {
  std::string name =
      fmt::format("{} {} T={} E={} k={} {}{} logits={} topk_ids({})", op, name_of(dtype), c.T, c.E,
                  c.k, c.scoring == 0 ? "softmax" : "sigmoid", c.normalize ? " normalize" : "",
                  logits_name(c.logits), name_of(c.index_dtype));
  if (c.weights_dtype) name += fmt::format(" topk_weights({})", name_of(*c.weights_dtype));
  return name + std::string(layout_name(c.layout));
}

Array64 grid_logits(Random& random, int64_t T, int64_t E, Logits logits) {
  const auto [step, reach] = logits == Logits::eighths  ? std::pair{0.125, 4.0}
                             : logits == Logits::halves ? std::pair{0.5, 2.0}
                                                        : std::pair{0.25, 30.0};
  const auto points = static_cast<int64_t>(2 * reach / step) + 1;
  Array64 a({T, E});
  for (double& value : a.data) value = -reach + step * static_cast<double>(pick(random, points));
  return a;
}

void route_case(const Context& ctx, const hops_op_desc& op, DType dtype, const RouteCase& c,
                bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    Array64 logits = grid_logits(random, c.T, c.E, c.logits);
    const DType weights_dtype = c.weights_dtype.value_or(dtype);
    const Tensor weights = output_tensor(ctx.device, weights_dtype, {c.T, c.k}, c.layout);
    const Tensor ids = index_output(ctx.device, c.index_dtype, {c.T, c.k}, c.layout);
    const Tensor tlogits = input_tensor(ctx.device, dtype, logits, c.layout);
    Invocation call(ctx, op);
    call.tensor("logits", tlogits)
        .tensor("topk_weights", weights)
        .tensor("topk_ids", ids)
        .flag("normalize", c.normalize)
        .i64("scoring", c.scoring);
    if (c.layout == Layout::compact) call.null_strides();
    call.run(typed_too);

    const ref::MoeRouteResult want =
        ref::moe_route(logits, c.k, c.normalize, static_cast<ref::MoeScoring>(c.scoring));
    expect_indices(verdict, "topk_ids", ids, want.topk_ids.data);
    verdict.expect_close("topk_weights", weights, want.topk_weights,
                         std::max(tolerance(dtype), tolerance(weights_dtype)));

    fill_with_junk(ids);
    const hops_exec exec = exec_of(ctx);
    const DLTensor l = tlogits.dl(), w = weights.dl(), i = ids.dl();
    expect_ok(verdict, ctx,
              typed<hops_moe_route_fn>(op)(&exec, &l, &w, &i, c.normalize, c.scoring));
    expect_indices(verdict, "topk_ids (from junk)", ids, want.topk_ids.data);
  });
}

// E = 1, 7 and 64 (and 13), k = 1..10 with k = E, softmax and sigmoid with
// and without normalization, ties, wide logits, T = 1 and 0, weights in
// another dtype than the logits, strided views.
std::vector<RouteCase> route_sweep() {
  // clang-format off
  return {
      {.T = 1, .E = 1, .k = 1, .half = true},
      {.T = 3, .E = 1, .k = 1, .scoring = 1},
      {.T = 7, .E = 7, .k = 7, .half = true},
      {.T = 33, .E = 7, .k = 2, .normalize = false, .scoring = 1, .half = true},
      {.T = 33, .E = 64, .k = 8, .half = true},
      {.T = 20, .E = 64, .k = 10, .scoring = 1, .index_dtype = DType::i64, .half = true},
      {.T = 9, .E = 64, .k = 1, .normalize = false},
      {.T = 50, .E = 64, .k = 8, .logits = Logits::halves, .half = true},
      {.T = 40, .E = 7, .k = 3, .normalize = false, .scoring = 1, .logits = Logits::halves,
       .index_dtype = DType::i64, .half = true},
      {.T = 25, .E = 13, .k = 9, .scoring = 1, .logits = Logits::halves},
      {.T = 17, .E = 64, .k = 4, .normalize = false, .logits = Logits::wide, .half = true},
      {.T = 0, .E = 64, .k = 8},
      {.T = 5, .E = 7, .k = 0},
      {.T = 9, .E = 13, .k = 5, .weights_dtype = DType::f32, .half = true},
      {.T = 9, .E = 13, .k = 6, .scoring = 1, .weights_dtype = DType::bf16},
      {.T = 21, .E = 64, .k = 6, .index_dtype = DType::i64, .layout = Layout::padded,
       .half = true},
      {.T = 16, .E = 7, .k = 2, .normalize = false, .layout = Layout::compact},
      {.T = 24, .E = 64, .k = 9, .scoring = 1, .layout = Layout::transposed, .half = true},
      {.T = 1024, .E = 256, .k = 8, .half = true, .heavy = true},
      {.T = 512, .E = 512, .k = 10, .logits = Logits::halves, .heavy = true},
  };
  // clang-format on
}

}  // namespace

void moe_route_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, route_sweep(), route_case);
}

void moe_dispatch_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, dispatch_sweep(), dispatch_case);
}

void moe_expert_mlp_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, expert_sweep(false), expert_mlp_case);
}

void moe_combine_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, gather_sweep(true), combine_case);
}

void moe_dispatch_bwd_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, gather_sweep(false), dispatch_bwd_case);
}

void moe_expert_mlp_bwd_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, expert_sweep(true), expert_mlp_bwd_case);
}

void moe_combine_bwd_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, combine_bwd_sweep(), combine_bwd_case);
}

std::span<const OpSuite> moe_suites() {
  static const OpSuite suites[] = {
      {"moe_route",
       moe_route_cases,
       moe_route_typed,
       moe_route_base,
       moe_route_bad_calls,
       moe_route_call,
       {"topk_weights", "topk_ids"}},
      {"moe_dispatch",
       moe_dispatch_cases,
       moe_dispatch_typed,
       moe_dispatch_base,
       moe_dispatch_bad_calls,
       moe_dispatch_call,
       {"rows", "counts", "row_map"}},
      {"moe_expert_mlp",
       moe_expert_mlp_cases,
       moe_expert_mlp_typed,
       moe_expert_mlp_base,
       moe_expert_mlp_bad_calls,
       moe_expert_mlp_call,
       {"out"}},
      {"moe_combine",
       moe_combine_cases,
       moe_combine_typed,
       moe_combine_base,
       moe_combine_bad_calls,
       moe_combine_call,
       {"y"}},
      {"moe_dispatch_bwd",
       moe_dispatch_bwd_cases,
       moe_dispatch_bwd_typed,
       moe_dispatch_bwd_base,
       moe_dispatch_bwd_bad_calls,
       moe_dispatch_bwd_call,
       {"dx"}},
      {"moe_expert_mlp_bwd",
       moe_expert_mlp_bwd_cases,
       moe_expert_mlp_bwd_typed,
       moe_expert_mlp_bwd_base,
       moe_expert_mlp_bwd_bad_calls,
       moe_expert_mlp_bwd_call,
       {"d_rows", "d_gate_up_proj", "d_down_proj"}},
      {"moe_combine_bwd",
       moe_combine_bwd_cases,
       moe_combine_bwd_typed,
       moe_combine_bwd_base,
       moe_combine_bwd_bad_calls,
       moe_combine_bwd_call,
       {"d_rows", "d_topk_weights"}},
  };
  return suites;
}

}  // namespace hops::conformance
