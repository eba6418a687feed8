// The norm family's calls besides its reference cases: the typed entry
// points fed by argument name, the wrong calls and the threaded call.
#include <cmath>

#include "norm_calls.hpp"

namespace hops::conformance {

// ---- typed calls -------------------------------------------------------------------

hops_status gated_rmsnorm_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_gated_rmsnorm_fn>(op)(exec, a.tensor("x"), a.tensor("z"), a.tensor("weight"),
                                          a.tensor("y"), a.f64("eps"));
}

hops_status gated_rmsnorm_bwd_typed(const hops_op_desc& op, const hops_exec* exec,
                                    const ArgValues& a) {
  return typed<hops_gated_rmsnorm_bwd_fn>(op)(exec, a.tensor("x"), a.tensor("z"),
                                              a.tensor("weight"), a.tensor("dy"), a.tensor("dx"),
                                              a.tensor("dz"), a.tensor("dweight"), a.f64("eps"));
}

// ---- gated_rmsnorm: x, z, y [3,4,8], weight [8] ------------------------------

Invocation gated_rmsnorm_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("x", filled(d, DType::f32, random, {3, 4, 8}))
      .tensor("z", filled(d, DType::f32, random, {3, 4, 8}))
      .tensor("weight", filled(d, DType::f32, random, {8}))
      .tensor("y", f32(d, {3, 4, 8}));
  return call;
}

std::vector<BadCall> gated_rmsnorm_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"eps is NaN", {"eps"}, [](Invocation& call) { call.f64("eps", NAN); }},
      {"weight has 7 entries for D=8", {"weight"}, set("weight", f32(d, {7}))},
      {"z has shape [3,4,7]", {"z"}, set("z", f32(d, {3, 4, 7}))},
      {"y is bf16 while x is f32", {"y"}, set("y", Tensor::empty(d, DType::bf16, {3, 4, 8}))},
      {"x, z, y have shape [0,2^40,2^40] (compact strides past 2^63)",
       {"x", "z", "y"},
       [](Invocation& call) {
         for (std::string_view name : {"x", "z", "y"}) {
           call.patch(name, [](DLTensor& t) {
             t.shape[0] = 0;
             t.shape[1] = t.shape[2] = int64_t{1} << 40;
             t.strides = nullptr;
           });
         }
       }},
  };
}

// ---- gated_rmsnorm_bwd: x, z, dy, dx, dz [3,4,8], weight, dweight [8] ----------

Invocation gated_rmsnorm_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("x", filled(d, DType::f32, random, {3, 4, 8}))
      .tensor("z", filled(d, DType::f32, random, {3, 4, 8}))
      .tensor("weight", filled(d, DType::f32, random, {8}))
      .tensor("dy", filled(d, DType::f32, random, {3, 4, 8}))
      .tensor("dx", f32(d, {3, 4, 8}))
      .tensor("dz", f32(d, {3, 4, 8}))
      .tensor("dweight", f32(d, {8}));
  return call;
}

std::vector<BadCall> gated_rmsnorm_bwd_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"dy is bf16 while x is f32", {"dy"}, set("dy", Tensor::empty(d, DType::bf16, {3, 4, 8}))},
      {"dy has shape [3,4,7]", {"dy"}, set("dy", f32(d, {3, 4, 7}))},
      {"dx aliases dy", {"dx", "dy"}, same_as("dx", "dy")},
      {"dz overlaps dx (rows 1-2 of dx are rows 0-1 of dz)",
       {"dz", "dx"},
       [both = f32(d, {4, 4, 8})](Invocation& call) {
         call.tensor("dx", both.view(0, {3, 4, 8}, {32, 8, 1}));
         call.tensor("dz", both.view(32, {3, 4, 8}, {32, 8, 1}));
       }},
      {"dweight has 7 entries for D=8", {"dweight"}, set("dweight", f32(d, {7}))},
      {"dweight is f16 while weight is f32",
       {"dweight"},
       set("dweight", Tensor::empty(d, DType::f16, {8}))},
      {"dz is NULL", {"dz"}, set("dz", {})},
  };
}

// ---- threads: 4000 rows of 4 x 64 ------------------------------------------------

Invocation gated_rmsnorm_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("x", random_input(ctx, random, {1000, 4, 64}, -1, 1))
      .tensor("z", random_input(ctx, random, {1000, 4, 64}, -3, 3))
      .tensor("weight", random_input(ctx, random, {64}, 0.5, 1.5))
      .tensor("dy", random_input(ctx, random, {1000, 4, 64}, -1, 1))
      .tensor("dx", Tensor::empty(ctx.device, DType::f32, {1000, 4, 64}))
      .tensor("dz", Tensor::empty(ctx.device, DType::f32, {1000, 4, 64}))
      .tensor("dweight", Tensor::empty(ctx.device, DType::f32, {64}));
  return call;
}

}  // namespace hops::conformance
