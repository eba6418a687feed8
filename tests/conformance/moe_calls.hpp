// The mixture-of-experts family's typed, wrong and threaded calls
// (moe_calls.cpp), listed with its reference cases by moe_cases.cpp.
#pragma once

#include "suite.hpp"

namespace hops::conformance {

hops_status moe_route_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status moe_dispatch_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status moe_expert_mlp_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status moe_combine_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status moe_dispatch_bwd_typed(const hops_op_desc& op, const hops_exec* exec,
                                   const ArgValues& a);
hops_status moe_expert_mlp_bwd_typed(const hops_op_desc& op, const hops_exec* exec,
                                     const ArgValues& a);
hops_status moe_combine_bwd_typed(const hops_op_desc& op, const hops_exec* exec,
                                  const ArgValues& a);

Invocation moe_route_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> moe_route_bad_calls(const Context& ctx);
Invocation moe_dispatch_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> moe_dispatch_bad_calls(const Context& ctx);
Invocation moe_expert_mlp_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> moe_expert_mlp_bad_calls(const Context& ctx);
Invocation moe_combine_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> moe_combine_bad_calls(const Context& ctx);
Invocation moe_dispatch_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> moe_dispatch_bwd_bad_calls(const Context& ctx);
Invocation moe_expert_mlp_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> moe_expert_mlp_bwd_bad_calls(const Context& ctx);
Invocation moe_combine_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> moe_combine_bwd_bad_calls(const Context& ctx);

Invocation moe_route_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation moe_dispatch_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation moe_expert_mlp_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation moe_combine_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation moe_dispatch_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation moe_expert_mlp_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation moe_combine_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random);

}  // namespace hops::conformance
