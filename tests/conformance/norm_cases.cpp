// gated_rmsnorm against ref::gated_rmsnorm.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cases.hpp"
#include "invocation.hpp"

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

void norm_case(const Context& ctx, const hops_op_desc& op, DType dtype, const NormCase& c,
               bool typed_too) {
  std::string name =
      fmt::format("{} {} x=[{}] eps={}", op.name, name_of(dtype), fmt::join(c.shape, ","), c.eps);
  if (c.strided) name += " strided";
  if (c.f32_weight) name += " f32_weight";
  if (c.null_strides) name += " strides=NULL";
  run_case(ctx, name, [&](Random& random, Verdict& verdict) {
    const int64_t D = c.shape.back();
    Array64 x = random.uniform(c.shape, -1, 1);
    Array64 z = random.uniform(c.shape, -3, 3);
    Array64 weight = random.uniform({D}, 0.5, 1.5);
    const Shape pad = c.strided ? gaps(c.shape.size()) : Shape{};
    Tensor tz;
    if (c.strided) {  // z as the last D columns of rows of 2*D
      Shape wide_shape = c.shape;
      wide_shape.back() = 2 * D;
      Shape strides = contiguous_strides(wide_shape);
      tz = assign(Tensor::empty(ctx.device, dtype, wide_shape).view(D, c.shape, strides), z);
    } else {
      tz = Tensor::input(ctx.device, dtype, z);
    }
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

}  // namespace hops::conformance
