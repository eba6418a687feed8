// The typed entry point of every op the runner knows, cast to its hops.h
// typedef and fed by argument name: a descriptor whose order disagrees with
// the typedef then gives different bytes than api->call, and the case fails.
#include <utility>

#include "invocation.hpp"
#include "suite.hpp"

namespace hops::conformance {

namespace {

hops_status gdn_chunk_fwd(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_gdn_chunk_fwd_fn>(op)(
      exec, a.tensor("q"), a.tensor("k"), a.tensor("v"), a.tensor("g"), a.tensor("beta"),
      a.tensor("initial_state"), a.tensor("cu_seqlens"), a.tensor("A_log"), a.tensor("dt_bias"),
      a.tensor("o"), a.tensor("final_state"), a.f64("scale"), a.flag("use_qk_l2norm"),
      a.flag("state_v_first"));
}

hops_status gdn_recurrent(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_gdn_recurrent_fn>(op)(
      exec, a.tensor("q"), a.tensor("k"), a.tensor("v"), a.tensor("g"), a.tensor("beta"),
      a.tensor("state"), a.tensor("state_indices"), a.tensor("cu_seqlens"), a.tensor("A_log"),
      a.tensor("dt_bias"), a.tensor("o"), a.f64("scale"), a.flag("use_qk_l2norm"),
      a.flag("state_v_first"));
}

hops_status gdn_gating(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_gdn_gating_fn>(op)(exec, a.tensor("A_log"), a.tensor("a"), a.tensor("b"),
                                       a.tensor("dt_bias"), a.tensor("g"), a.tensor("beta"),
                                       a.f64("softplus_beta"), a.f64("softplus_threshold"));
}

hops_status conv1d_fwd(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_conv1d_fwd_fn>(op)(exec, a.tensor("x"), a.tensor("weight"), a.tensor("bias"),
                                       a.tensor("initial_state"), a.tensor("cu_seqlens"),
                                       a.tensor("y"), a.tensor("final_state"), a.i64("activation"),
                                       a.flag("channels_first"));
}

hops_status conv1d_update(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_conv1d_update_fn>(op)(
      exec, a.tensor("x"), a.tensor("state"), a.tensor("weight"), a.tensor("bias"),
      a.tensor("state_indices"), a.tensor("y"), a.i64("activation"));
}

hops_status conv1d_bwd(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_conv1d_bwd_fn>(op)(
      exec, a.tensor("x"), a.tensor("weight"), a.tensor("bias"), a.tensor("initial_state"),
      a.tensor("cu_seqlens"), a.tensor("dy"), a.tensor("d_final_state"), a.tensor("dx"),
      a.tensor("dweight"), a.tensor("dbias"), a.tensor("d_initial_state"), a.i64("activation"),
      a.flag("channels_first"));
}

hops_status gdn_chunk_bwd(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a) {
  return typed<hops_gdn_chunk_bwd_fn>(op)(
      exec, a.tensor("q"), a.tensor("k"), a.tensor("v"), a.tensor("g"), a.tensor("beta"),
      a.tensor("initial_state"), a.tensor("cu_seqlens"), a.tensor("do"), a.tensor("d_final_state"),
      a.tensor("dq"), a.tensor("dk"), a.tensor("dv"), a.tensor("dg"), a.tensor("dbeta"),
      a.tensor("dh0"), a.f64("scale"), a.flag("use_qk_l2norm"), a.flag("state_v_first"));
}

constexpr std::pair<std::string_view, TypedCall> kTypedCalls[] = {
    {"gdn_chunk_fwd", gdn_chunk_fwd}, {"gdn_recurrent", gdn_recurrent}, {"gdn_gating", gdn_gating},
    {"conv1d_fwd", conv1d_fwd},       {"conv1d_update", conv1d_update}, {"conv1d_bwd", conv1d_bwd},
    {"gdn_chunk_bwd", gdn_chunk_bwd},
};

}  // namespace

TypedCall typed_call(std::string_view op) {
  if (const OpSuite* suite = suite_for(op)) return suite->typed;
  for (const auto& [name, fn] : kTypedCalls) {
    if (name == op) return fn;
  }
  return nullptr;
}

}  // namespace hops::conformance
