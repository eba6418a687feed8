// The gdn family's typed, wrong and threaded calls (gdn_calls.cpp), listed
// with its reference cases by gdn_cases.cpp.
#pragma once

#include "suite.hpp"

namespace hops::conformance {

hops_status gdn_chunk_fwd_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status gdn_recurrent_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status gdn_gating_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status gdn_chunk_bwd_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
Invocation gdn_chunk_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> gdn_chunk_bad_calls(const Context& ctx);
Invocation gdn_recurrent_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> gdn_recurrent_bad_calls(const Context& ctx);
Invocation gdn_gating_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> gdn_gating_bad_calls(const Context& ctx);
Invocation gdn_chunk_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> gdn_chunk_bwd_bad_calls(const Context& ctx);
Invocation gdn_chunk_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation gdn_chunk_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random);
// gdn_gating_cases.cpp
void gdn_gating_cases(const Context& ctx, const hops_op_desc& op);

}  // namespace hops::conformance
