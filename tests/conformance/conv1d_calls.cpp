// The conv1d family's calls besides its reference cases: the typed entry
// points fed by argument name, the wrong calls and the threaded calls.
#include <cmath>
#include <cstddef>
#include <cstring>

#include "conv1d_calls.hpp"

namespace hops::conformance {

// ---- typed calls -------------------------------------------------------------------

hops_status conv1d_fwd_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_conv1d_fwd_fn>(op)(exec, a.tensor("x"), a.tensor("weight"), a.tensor("bias"),
                                       a.tensor("initial_state"), a.tensor("cu_seqlens"),
                                       a.tensor("y"), a.tensor("final_state"), a.i64("activation"),
                                       a.flag("channels_first"));
}

hops_status conv1d_update_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_conv1d_update_fn>(op)(
      exec, a.tensor("x"), a.tensor("state"), a.tensor("weight"), a.tensor("bias"),
      a.tensor("state_indices"), a.tensor("y"), a.i64("activation"));
}

hops_status conv1d_bwd_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_conv1d_bwd_fn>(op)(
      exec, a.tensor("x"), a.tensor("weight"), a.tensor("bias"), a.tensor("initial_state"),
      a.tensor("cu_seqlens"), a.tensor("dy"), a.tensor("d_final_state"), a.tensor("dx"),
      a.tensor("dweight"), a.tensor("dbias"), a.tensor("d_initial_state"), a.i64("activation"),
      a.flag("channels_first"));
}

// ---- conv1d_fwd: B=1 T=6 D=5 W=4, bias, states of length 3 ----------------

Invocation conv1d_fwd_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("x", filled(d, DType::f32, random, {1, 6, 5}))
      .tensor("weight", filled(d, DType::f32, random, {5, 4}))
      .tensor("bias", filled(d, DType::f32, random, {5}))
      .tensor("initial_state", filled(d, DType::f32, random, {1, 5, 3}))
      .tensor("y", f32(d, {1, 6, 5}))
      .tensor("final_state", f32(d, {1, 5, 3}));
  return call;
}

std::vector<BadCall> conv1d_fwd_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"weight has W=5", {"weight"}, set("weight", f32(d, {5, 5}))},
      {"initial_state length 2 < W-1", {"initial_state"}, set("initial_state", f32(d, {1, 5, 2}))},
      {"final_state length 2 < W-1", {"final_state"}, set("final_state", f32(d, {1, 5, 2}))},
      {"initial_state has N=2 for one sequence",
       {"initial_state"},
       set("initial_state", f32(d, {2, 5, 3}))},
      {"activation is 7", {"activation"}, [](Invocation& call) { call.i64("activation", 7); }},
      {"y has D=6 while x has D=5", {"y"}, set("y", f32(d, {1, 6, 6}))},
      {"bias has 4 entries for D=5", {"bias"}, set("bias", f32(d, {4}))},
      {"x has rank 2", {"x"}, set("x", f32(d, {6, 5}))},
      {"y overlaps itself (strides [30,1,1])",
       {"y"},
       patch("y", [](DLTensor& t) { t.strides[1] = 1; })},
      {"seq_idx with initial_state and final_state",
       {"seq_idx"},
       set("seq_idx",
           Tensor::indices(*ctx.host, DType::i32, {0, 0, 0, 1, 1, 1}).view(0, {1, 6}, {6, 1}))},
      {"seq_idx has T=5 while x has T=6",
       {"seq_idx"},
       [&d](Invocation& call) {
         call.tensor("initial_state", {}).tensor("final_state", {});
         call.tensor("seq_idx",
                     Tensor::indices(d, DType::i32, {0, 0, 1, 1, 1}).view(0, {1, 5}, {5, 1}));
       }},
  };
}

// ---- conv1d_update: x [2,5], pool [3,5,3], W=4, state_indices [1,-1] --------

Invocation conv1d_update_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("x", filled(d, DType::f32, random, {2, 5}))
      .tensor("state", filled(d, DType::f32, random, {3, 5, 3}))
      .tensor("weight", filled(d, DType::f32, random, {5, 4}))
      .tensor("state_indices", Tensor::indices(d, DType::i32, {1, -1}))
      .tensor("y", f32(d, {2, 5}));
  return call;
}

std::vector<BadCall> conv1d_update_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"state length 2 < W-1", {"state"}, set("state", f32(d, {3, 5, 2}))},
      {"x has rank 4", {"x"}, set("x", f32(d, {2, 1, 1, 5}))},
      {"state_indices entry 3 >= S=3",
       {"state_indices"},
       set("state_indices", Tensor::indices(*ctx.host, DType::i64, {1, 3}))},
      {"y has shape [2,6]", {"y"}, set("y", f32(d, {2, 6}))},
      {"weight has W=0", {"weight"}, set("weight", f32(d, {5, 0}))},
      {"cache_seqlens entry -1",
       {"cache_seqlens"},
       set("cache_seqlens", Tensor::indices(*ctx.host, DType::i32, {4, -1}))},
      {"cache_seqlens has 3 entries for N=2",
       {"cache_seqlens"},
       set("cache_seqlens", Tensor::indices(*ctx.host, DType::i64, {4, 1, 0}))},
  };
}

// ---- conv1d_bwd: B=1 T=6 D=5 W=4, bias, states of length 3, every gradient ------

Invocation conv1d_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random) {
  Device& d = ctx.device;
  Invocation call(ctx, op);
  call.tensor("x", filled(d, DType::f32, random, {1, 6, 5}))
      .tensor("weight", filled(d, DType::f32, random, {5, 4}))
      .tensor("bias", filled(d, DType::f32, random, {5}))
      .tensor("initial_state", filled(d, DType::f32, random, {1, 5, 3}))
      .tensor("dy", filled(d, DType::f32, random, {1, 6, 5}))
      .tensor("d_final_state", filled(d, DType::f32, random, {1, 5, 3}))
      .tensor("dx", f32(d, {1, 6, 5}))
      .tensor("dweight", f32(d, {5, 4}))
      .tensor("dbias", f32(d, {5}))
      .tensor("d_initial_state", f32(d, {1, 5, 3}));
  return call;
}

std::vector<BadCall> conv1d_bwd_bad_calls(const Context& ctx) {
  Device& d = ctx.device;
  return {
      {"dy is f16 while x is f32", {"dy"}, set("dy", Tensor::empty(d, DType::f16, {1, 6, 5}))},
      {"dy has T=5 while x has T=6", {"dy"}, set("dy", f32(d, {1, 5, 5}))},
      {"dx aliases dy", {"dx", "dy"}, same_as("dx", "dy")},
      {"d_initial_state aliases initial_state",
       {"d_initial_state", "initial_state"},
       same_as("d_initial_state", "initial_state")},
      {"d_initial_state without initial_state", {"d_initial_state"}, set("initial_state", {})},
      {"dbias without bias", {"dbias"}, set("bias", {})},
      {"d_initial_state has L0=4 while initial_state has 3",
       {"d_initial_state"},
       set("d_initial_state", f32(d, {1, 5, 4}))},
      {"d_final_state length 2 < W-1", {"d_final_state"}, set("d_final_state", f32(d, {1, 5, 2}))},
      {"dweight has W=3 while weight has W=4", {"dweight"}, set("dweight", f32(d, {5, 3}))},
      {"dweight is bf16 while weight is f32",
       {"dweight"},
       set("dweight", Tensor::empty(d, DType::bf16, {5, 4}))},
      {"cu_seqlens ends at 5, T=6: [0,5]",
       {"cu_seqlens"},
       set("cu_seqlens", Tensor::indices(*ctx.host, DType::i64, {0, 5}))},
      {"activation is 2", {"activation"}, [](Invocation& call) { call.i64("activation", 2); }},
      {"seq_idx with initial_state and d_final_state",
       {"seq_idx"},
       set("seq_idx",
           Tensor::indices(*ctx.host, DType::i32, {0, 0, 0, 1, 1, 1}).view(0, {1, 6}, {6, 1}))},
  };
}

// ---- threads: medium calls --------------------------------------------------------

Invocation conv1d_fwd_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("x", random_input(ctx, random, {2, 500, 256}, -1, 1))
      .tensor("weight", random_input(ctx, random, {256, 4}, -1, 1))
      .tensor("bias", random_input(ctx, random, {256}, -1, 1))
      .tensor("initial_state", random_input(ctx, random, {2, 256, 3}, -1, 1))
      .tensor("y", Tensor::empty(ctx.device, DType::f32, {2, 500, 256}))
      .tensor("final_state", Tensor::empty(ctx.device, DType::f32, {2, 256, 3}));
  return call;
}

Invocation conv1d_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random) {
  Invocation call(ctx, op);
  call.tensor("x", random_input(ctx, random, {1, 1000, 300}, -1, 1))
      .tensor("weight", random_input(ctx, random, {300, 4}, -1, 1))
      .tensor("bias", random_input(ctx, random, {300}, -1, 1))
      .tensor("initial_state", random_input(ctx, random, {3, 300, 3}, -1, 1))
      .tensor("cu_seqlens", Tensor::indices(ctx.index_device(), DType::i32, {0, 300, 301, 1000}))
      .tensor("dy", random_input(ctx, random, {1, 1000, 300}, -1, 1))
      .tensor("d_final_state", random_input(ctx, random, {3, 300, 4}, -1, 1))
      .tensor("dx", Tensor::empty(ctx.device, DType::f32, {1, 1000, 300}))
      .tensor("dweight", Tensor::empty(ctx.device, DType::f32, {300, 4}))
      .tensor("dbias", Tensor::empty(ctx.device, DType::f32, {300}))
      .tensor("d_initial_state", Tensor::empty(ctx.device, DType::f32, {3, 300, 3}));
  return call;
}

}  // namespace hops::conformance
