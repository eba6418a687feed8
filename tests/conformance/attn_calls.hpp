// The attention family's typed, wrong and threaded calls (attn_calls.cpp),
// listed with its reference cases by attn_cases.cpp.
#pragma once

#include "suite.hpp"

namespace hops::conformance {

hops_status attn_prefill_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status attn_prefill_bwd_typed(const hops_op_desc& op, const hops_exec* exec,
                                   const ArgValues& a);
hops_status attn_decode_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
hops_status kv_cache_write_typed(const hops_op_desc& op, const hops_exec* exec, const ArgValues& a);
Invocation attn_prefill_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> attn_prefill_bad_calls(const Context& ctx);
Invocation attn_prefill_bwd_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> attn_prefill_bwd_bad_calls(const Context& ctx);
Invocation attn_decode_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> attn_decode_bad_calls(const Context& ctx);
Invocation kv_cache_write_base(const Context& ctx, const hops_op_desc& op, Random& random);
std::vector<BadCall> kv_cache_write_bad_calls(const Context& ctx);
Invocation attn_prefill_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation attn_prefill_bwd_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation attn_decode_call(const Context& ctx, const hops_op_desc& op, Random& random);
Invocation kv_cache_write_call(const Context& ctx, const hops_op_desc& op, Random& random);

// A 2-D index tensor (block_table) of `rows` on `device`.
Tensor index_table(Device& device, DType dtype, const std::vector<std::vector<int64_t>>& rows);

}  // namespace hops::conformance
