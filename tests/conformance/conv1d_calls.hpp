// The conv1d family's typed, wrong and threaded calls (conv1d_calls.cpp), listed
// with its reference cases by conv1d_cases.cpp.
#pragma once

#include "suite.hpp"

namespace hops::conformance {

hops_status conv1d_fwd_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status conv1d_update_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status conv1d_bwd_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
Invocation conv1d_fwd_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> conv1d_fwd_bad_calls(const Context& ctx);
Invocation conv1d_update_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> conv1d_update_bad_calls(const Context& ctx);
Invocation conv1d_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> conv1d_bwd_bad_calls(const Context& ctx);
Invocation conv1d_fwd_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation conv1d_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random);

}  // namespace hops::conformance
