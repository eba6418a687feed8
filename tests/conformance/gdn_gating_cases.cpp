// gdn_gating against ref::gdn_gating.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "cases.hpp"
#include "gdn_calls.hpp"
#include "gdn_reference.hpp"
#include "invocation.hpp"

namespace hops::conformance {

namespace {

struct GatingCase {
  Shape shape;  // of a, b, g, beta: [..., HV]
  double softplus_beta = 1, softplus_threshold = 20;
  bool strided = false;      // b, a the two halves of one [..., 2*HV] projection; g, beta padded
  bool f32_params = false;   // A_log, dt_bias in f32 whatever a is
  bool f32_outputs = false;  // g, beta in f32 whatever a is
  bool null_exec = false;    // exec NULL: run on the tensors' device
  bool null_strides = false;
  bool half = false, heavy = false;
};

void gating_case(const Context& ctx, const hops_op_desc& op, DType dtype, const GatingCase& c,
                 bool typed_too) {
  std::string name =
      fmt::format("{} {} a=[{}] softplus_beta={} threshold={}", op.name, name_of(dtype),
                  fmt::join(c.shape, ","), c.softplus_beta, c.softplus_threshold);
  if (c.strided) name += " strided";
  if (c.f32_params) name += " f32_params";
  if (c.f32_outputs) name += " f32_outputs";
  if (c.null_exec) name += " exec=NULL";
  if (c.null_strides) name += " strides=NULL";
  run_case(ctx, name, [&](Random& random, Verdict& verdict) {
    const int64_t HV = c.shape.back();
    const DType params = c.f32_params ? DType::f32 : dtype;
    const DType outputs = c.f32_outputs ? DType::f32 : dtype;
    Array64 A_log = random.uniform({HV}, -1, 1);
    Array64 dt_bias = random.uniform({HV}, -1, 1);
    Array64 a = random.uniform(c.shape, -3, 3);  // wide enough to cross the threshold
    Array64 b = random.uniform(c.shape, -4, 4);
    Tensor ta, tb;
    if (c.strided) {  // Qwen3.5's in_proj_ba: b then a in each row
      Shape wide_shape = c.shape;
      wide_shape.back() = 2 * HV;
      const Tensor ba = Tensor::empty(ctx.device, dtype, wide_shape);
      tb = assign(ba.view(0, c.shape, contiguous_strides(wide_shape)), b);
      ta = assign(ba.view(HV, c.shape, contiguous_strides(wide_shape)), a);
    } else {
      ta = Tensor::input(ctx.device, dtype, a);
      tb = Tensor::input(ctx.device, dtype, b);
    }
    const Shape pad = c.strided ? gaps(c.shape.size()) : Shape{};
    const Tensor g = Tensor::padded(ctx.device, outputs, c.shape, pad);
    const Tensor beta = Tensor::padded(ctx.device, outputs, c.shape, pad);
    Invocation call(ctx, op);
    call.tensor("A_log", Tensor::input(ctx.device, params, A_log)).tensor("a", ta).tensor("b", tb);
    call.tensor("dt_bias", Tensor::input(ctx.device, params, dt_bias));
    call.tensor("g", g).tensor("beta", beta);
    call.f64("softplus_beta", c.softplus_beta).f64("softplus_threshold", c.softplus_threshold);
    if (c.null_exec) call.null_exec();
    if (c.null_strides) call.null_strides();
    call.run(typed_too);
    const ref::Gating want =
        ref::gdn_gating(A_log, a, b, dt_bias, c.softplus_beta, c.softplus_threshold);
    verdict.expect_close("g", g, want.g, tolerance(outputs));
    verdict.expect_close("beta", beta, want.beta, tolerance(outputs));
  });
}

std::vector<GatingCase> gating_sweep() {
  return {
      {.shape = {2, 9, 32}, .half = true},
      {.shape = {6}},
      {.shape = {64, 8}, .softplus_beta = 2, .softplus_threshold = 0.5, .half = true},
      {.shape = {3, 7, 4}, .strided = true, .half = true},
      {.shape = {5, 6}, .f32_params = true, .f32_outputs = true, .half = true},
      {.shape = {4, 4}, .null_exec = true},
      {.shape = {3, 16}, .null_strides = true},
      {.shape = {1000, 32}, .half = true, .heavy = true},  // Qwen3.5 prefill chunk
  };
}

}  // namespace

void gdn_gating_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, gating_sweep(), gating_case);
}

}  // namespace hops::conformance
