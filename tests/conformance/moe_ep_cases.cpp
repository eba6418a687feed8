// moe_ep_dispatch and moe_ep_combine on one rank (exec->comm NULL): the
// single-device dispatch and combine of the oracle, plus the handle (send and
// receive counts) and the zero rows past the kept ones. Several ranks are
// tests/mpi's (ctest under mpirun).
#include <fmt/format.h>

#include <algorithm>

#include "invocation.hpp"
#include "moe_reference.hpp"
#include "suite.hpp"

namespace hops::conformance {

namespace {

struct EpCase {
  int64_t T, k, E, Hd;
  int64_t drop_every = 0;  // every n-th slot (flat order) dropped; 0: none
  int64_t spare = 0;       // rows beyond T*k
  DType index_dtype = DType::i32;
  bool half = false;
  bool heavy = false;
  int64_t C() const { return T * k + spare; }
};

std::string case_name(std::string_view op, DType dtype, const EpCase& c) {
  return fmt::format("{} {} one rank T={} k={} E={} Hd={} C={}{} index({})", op, name_of(dtype),
                     c.T, c.k, c.E, c.Hd, c.C(),
                     c.drop_every ? fmt::format(" dropped=every {}", c.drop_every) : "",
                     name_of(c.index_dtype));
}

// k distinct experts per token in random order, every drop_every-th slot dropped.
ref::SlotTable routing(Random& random, const EpCase& c) {
  ref::SlotTable ids(c.T, c.k);
  for (int64_t t = 0; t < c.T; ++t) {
    std::vector<int64_t> experts(c.E);
    for (int64_t e = 0; e < c.E; ++e) experts[e] = e;
    for (int64_t j = 0; j < c.k; ++j) {
      const auto at = j + std::min<int64_t>(static_cast<int64_t>(random.uniform(0, 1) * (c.E - j)),
                                            c.E - j - 1);
      std::swap(experts[j], experts[at]);
      const bool dropped = c.drop_every > 0 && (t * c.k + j) % c.drop_every == c.drop_every - 1;
      ids.at(t, j) = dropped ? -1 : experts[j];
    }
  }
  return ids;
}

Tensor index_input(Device& device, DType dtype, const std::vector<int64_t>& values,
                   const Shape& shape) {
  Array64 a(shape);
  for (size_t i = 0; i < values.size(); ++i) a.data[i] = static_cast<double>(values[i]);
  Tensor t = Tensor::empty(device, dtype, shape);
  t.write(a);
  return t;
}

void expect_indices(Verdict& verdict, std::string_view output, const Tensor& out,
                    const std::vector<int64_t>& expected) {
  const Array64 got = out.read();
  int64_t wrong = 0;
  for (size_t i = 0; i < expected.size(); ++i)
    wrong += got.data[i] != static_cast<double>(expected[i]);
  verdict.expect(wrong == 0,
                 fmt::format("{}: {} of {} entries differ", output, wrong, expected.size()));
}

void dispatch_case(const Context& ctx, const hops_op_desc& op, DType dtype, const EpCase& c,
                   bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const ref::SlotTable ids = routing(random, c);
    Array64 x = random.uniform({c.T, c.Hd}, -1, 1);
    const Tensor rows = Tensor::empty(ctx.device, dtype, {c.C(), c.Hd});
    const Tensor counts = Tensor::empty(ctx.device, c.index_dtype, {c.E});
    const Tensor row_map = Tensor::empty(ctx.device, c.index_dtype, {c.T, c.k});
    const Tensor sent = Tensor::empty(ctx.device, c.index_dtype, {c.E});
    const Tensor got = Tensor::empty(ctx.device, c.index_dtype, {1, c.E});
    Invocation call(ctx, op);
    call.tensor("x", Tensor::input(ctx.device, dtype, x))
        .tensor("topk_ids", index_input(ctx.index_device(), c.index_dtype, ids.data, {c.T, c.k}))
        .tensor("rows", rows)
        .tensor("counts", counts)
        .tensor("row_map", row_map)
        .tensor("send_counts", sent)
        .tensor("recv_counts", got);
    call.run(typed_too);
    // One rank: the single-device dispatch, zero rows up to C; every count
    // is the experts' counts.
    const ref::MoeDispatchResult want = ref::moe_dispatch(x, ids, c.E);
    Array64 want_rows({c.C(), c.Hd});
    std::copy(want.rows.data.begin(), want.rows.data.end(), want_rows.data.begin());
    verdict.expect_close("rows", rows, want_rows, 0.0);
    expect_indices(verdict, "counts", counts, want.counts);
    expect_indices(verdict, "row_map", row_map, want.row_map.data);
    expect_indices(verdict, "send_counts", sent, want.counts);
    expect_indices(verdict, "recv_counts", got, want.counts);
  });
}

void combine_case(const Context& ctx, const hops_op_desc& op, DType dtype, const EpCase& c,
                  bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const ref::SlotTable ids = routing(random, c);
    const ref::MoeDispatchResult dispatched = ref::moe_dispatch(Array64({c.T, 0}), ids, c.E);
    Array64 expert_out = random.uniform({c.C(), c.Hd}, -1, 1);
    Array64 weights = random.uniform({c.T, c.k}, 0, 1);
    const Tensor y = Tensor::empty(ctx.device, dtype, {c.T, c.Hd});
    Device& index = ctx.index_device();
    Invocation call(ctx, op);
    call.tensor("expert_out", Tensor::input(ctx.device, dtype, expert_out))
        .tensor("row_map", index_input(index, c.index_dtype, dispatched.row_map.data, {c.T, c.k}))
        .tensor("topk_weights", Tensor::input(ctx.device, dtype, weights))
        .tensor("send_counts", index_input(index, c.index_dtype, dispatched.counts, {c.E}))
        .tensor("recv_counts", index_input(index, c.index_dtype, dispatched.counts, {1, c.E}))
        .tensor("y", y);
    call.run(typed_too);
    // One rank: the rows come back where they were, so y is the
    // single-device combine of the first T*k rows.
    Array64 rows({c.T * c.k, c.Hd});
    std::copy_n(expert_out.data.begin(), rows.data.size(), rows.data.begin());
    verdict.expect_close("y", y, ref::moe_combine(rows, dispatched.row_map, weights),
                         tolerance(dtype));
  });
}

// Uneven experts, drops (all of them too), T = 0, E = 1, k = E, spare rows,
// both index dtypes.
std::vector<EpCase> ep_sweep() {
  // clang-format off
  return {
      {.T = 1, .k = 1, .E = 1, .Hd = 4, .half = true},
      {.T = 17, .k = 2, .E = 8, .Hd = 24, .drop_every = 3, .spare = 5, .half = true},
      {.T = 33, .k = 8, .E = 8, .Hd = 16, .index_dtype = DType::i64, .half = true},
      {.T = 9, .k = 3, .E = 64, .Hd = 33, .drop_every = 1},
      {.T = 0, .k = 4, .E = 16, .Hd = 8, .spare = 2},
      {.T = 256, .k = 8, .E = 64, .Hd = 128, .drop_every = 7, .index_dtype = DType::i64,
       .half = true, .heavy = true},
  };
  // clang-format on
}

void dispatch_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, ep_sweep(), dispatch_case);
}
void combine_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, ep_sweep(), combine_case);
}

hops_status dispatch_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_moe_ep_dispatch_fn>(op)(
      exec, a.tensor("x"), a.tensor("topk_ids"), a.tensor("rows"), a.tensor("counts"),
      a.tensor("row_map"), a.tensor("send_counts"), a.tensor("recv_counts"));
}
hops_status combine_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_moe_ep_combine_fn>(op)(exec, a.tensor("expert_out"), a.tensor("row_map"),
                                           a.tensor("topk_weights"), a.tensor("send_counts"),
                                           a.tensor("recv_counts"), a.tensor("y"));
}

}  // namespace

std::span<const OpSuite> moe_ep_suites() {
  static const OpSuite suites[] = {
      {"moe_ep_dispatch", dispatch_cases, dispatch_typed},
      {"moe_ep_combine", combine_cases, combine_typed},
  };
  return suites;
}

}  // namespace hops::conformance
