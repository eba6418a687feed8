// gated_rmsnorm and gated_rmsnorm_bwd against ref::gated_rmsnorm and
// ref::gated_rmsnorm_bwd.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cases.hpp"
#include "norm_calls.hpp"
#include "norm_reference.hpp"

namespace hops::conformance {

namespace {

struct NormCase {
  Shape shape;  // [..., D]
  double eps = 1e-6;
  bool strided = false;     // x, y padded; z columns of a wider projection
  bool f32_weight = false;  // weight in f32 whatever x is
  bool null_strides = false;
  bool half = false, heavy = false;
};

std::string case_name(const hops_op_desc& op, DType dtype, const NormCase& c) {
  std::string name =
      fmt::format("{} {} x=[{}] eps={}", op.name, name_of(dtype), fmt::join(c.shape, ","), c.eps);
  if (c.strided) name += " strided";
  if (c.f32_weight) name += " f32_weight";
  if (c.null_strides) name += " strides=NULL";
  return name;
}

// z: as the last D columns of rows of 2*D (a fused projection) when strided.
Tensor z_tensor(Device& device, DType dtype, Array64& z, bool strided) {
  if (!strided) return Tensor::input(device, dtype, z);
  const int64_t D = z.shape.back();
  Shape wide_shape = z.shape;
  wide_shape.back() = 2 * D;
  return assign(
      Tensor::empty(device, dtype, wide_shape).view(D, z.shape, contiguous_strides(wide_shape)), z);
}

void norm_case(const Context& ctx, const hops_op_desc& op, DType dtype, const NormCase& c,
               bool typed_too) {
  run_case(ctx, case_name(op, dtype, c), [&](Random& random, Verdict& verdict) {
    const int64_t D = c.shape.back();
    Array64 x = random.uniform(c.shape, -1, 1);
    Array64 z = random.uniform(c.shape, -3, 3);
    Array64 weight = random.uniform({D}, 0.5, 1.5);
    const Shape pad = c.strided ? gaps(c.shape.size()) : Shape{};
    const Tensor tz = z_tensor(ctx.device, dtype, z, c.strided);
    const Tensor y = Tensor::padded(ctx.device, dtype, c.shape, pad);
    Invocation call(ctx, op);
    call.tensor("x", Tensor::input(ctx.device, dtype, x, pad)).tensor("z", tz);
    call.tensor("weight", Tensor::input(ctx.device, c.f32_weight ? DType::f32 : dtype, weight));
    call.tensor("y", y).f64("eps", c.eps);
    if (c.null_strides) call.null_strides();
    call.run(typed_too);
    verdict.expect_close("y", y, ref::gated_rmsnorm(x, z, weight, c.eps), tolerance(dtype));
  });
}

void norm_bwd_case(const Context& ctx, const hops_op_desc& op, DType dtype, const NormCase& c,
                   bool typed_too) {
  run_case(ctx, case_name(op, dtype, c), [&](Random& random, Verdict& verdict) {
    const int64_t D = c.shape.back();
    const DType weight_dtype = c.f32_weight ? DType::f32 : dtype;
    Array64 x = random.uniform(c.shape, -1, 1);
    Array64 z = random.uniform(c.shape, -3, 3);
    Array64 weight = random.uniform({D}, 0.5, 1.5);
    Array64 dy = random.uniform(c.shape, -1, 1);
    const Shape pad = c.strided ? gaps(c.shape.size()) : Shape{};
    const Tensor dx = Tensor::padded(ctx.device, dtype, c.shape, pad);
    const Tensor dz = Tensor::padded(ctx.device, dtype, c.shape, pad);
    const Tensor dweight = Tensor::empty(ctx.device, weight_dtype, {D});
    Invocation call(ctx, op);
    call.tensor("x", Tensor::input(ctx.device, dtype, x, pad))
        .tensor("z", z_tensor(ctx.device, dtype, z, c.strided));
    call.tensor("weight", Tensor::input(ctx.device, weight_dtype, weight));
    call.tensor("dy", Tensor::input(ctx.device, dtype, dy, pad));
    call.tensor("dx", dx).tensor("dz", dz).tensor("dweight", dweight).f64("eps", c.eps);
    if (c.null_strides) call.null_strides();
    call.run(typed_too);
    const ref::GatedRmsNormGrads want = ref::gated_rmsnorm_bwd(x, z, weight, dy, c.eps);
    verdict.expect_close("dx", dx, want.dx, tolerance(dtype));
    verdict.expect_close("dz", dz, want.dz, tolerance(dtype));
    verdict.expect_close("dweight", dweight, want.dweight, tolerance(dtype));
  });
}

std::vector<NormCase> norm_sweep() {
  return {
      {.shape = {2, 7, 4, 128}, .half = true},  // GDN output [B,T,HV,V]
      {.shape = {5, 7}, .eps = 1e-5},
      {.shape = {48}},
      {.shape = {6, 32}, .null_strides = true},
      {.shape = {3, 8}, .eps = 0},
      {.shape = {3, 5, 16}, .strided = true, .half = true},
      {.shape = {4, 64}, .f32_weight = true, .half = true},
      {.shape = {2048, 128}, .half = true, .heavy = true},  // Qwen3.5: 64 tokens x 32 heads
  };
}

}  // namespace

void gated_rmsnorm_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, norm_sweep(), norm_case);
}

// The forward's sweep, plus row counts around the backward's chunks of rows
// (64 rows or more, at most 256 chunks): dweight adds the chunks' shares.
void gated_rmsnorm_bwd_cases(const Context& ctx, const hops_op_desc& op) {
  std::vector<NormCase> cases = norm_sweep();
  cases.push_back({.shape = {63, 16}});
  cases.push_back({.shape = {65, 16}, .half = true});
  cases.push_back({.shape = {4096, 8, 16}, .strided = true, .heavy = true});
  sweep(ctx, op, cases, norm_bwd_case);
}

std::span<const OpSuite> norm_suites() {
  static const OpSuite suites[] = {
      {"gated_rmsnorm", gated_rmsnorm_cases, gated_rmsnorm_typed, gated_rmsnorm_base,
       gated_rmsnorm_bad_calls},
      {"gated_rmsnorm_bwd",
       gated_rmsnorm_bwd_cases,
       gated_rmsnorm_bwd_typed,
       gated_rmsnorm_bwd_base,
       gated_rmsnorm_bwd_bad_calls,
       gated_rmsnorm_bwd_call,
       {"dx", "dz", "dweight"}},
  };
  return suites;
}

}  // namespace hops::conformance
