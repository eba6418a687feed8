// The norm family's typed, wrong and threaded calls (norm_calls.cpp), listed
// with its reference cases by norm_cases.cpp.
#pragma once

#include "suite.hpp"

namespace hops::conformance {

hops_status gated_rmsnorm_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status gated_rmsnorm_bwd_typed(const hops_op_desc& op, const hops_exec* exec,
                                    const ArgValues& a);
Invocation gated_rmsnorm_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> gated_rmsnorm_bad_calls(const Context& ctx);
Invocation gated_rmsnorm_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> gated_rmsnorm_bwd_bad_calls(const Context& ctx);
Invocation gated_rmsnorm_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random);

}  // namespace hops::conformance
