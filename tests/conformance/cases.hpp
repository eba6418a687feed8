// The case groups of the suite. Each op group runs every dtype the provider
// claims (supports()) over its sweep of shapes and options.
#pragma once

#include <functional>
#include <string_view>

#include "harness.hpp"

namespace hops::conformance {

void gdn_chunk_fwd_cases(const Context& ctx, const hops_op_desc& op);
void gdn_recurrent_cases(const Context& ctx, const hops_op_desc& op);
void gdn_gating_cases(const Context& ctx, const hops_op_desc& op);
void conv1d_fwd_cases(const Context& ctx, const hops_op_desc& op);
void conv1d_update_cases(const Context& ctx, const hops_op_desc& op);
void conv1d_bwd_cases(const Context& ctx, const hops_op_desc& op);
void gdn_chunk_bwd_cases(const Context& ctx, const hops_op_desc& op);

// Whether the run covers an op (--op).
using OpFilter = std::function<bool(std::string_view op)>;

// Wrong calls: the right status, a message naming op and argument, no write.
void bad_input_cases(const Context& ctx, const OpFilter& selected);
// The same calls from 8 threads at once give the single-threaded bytes.
void thread_cases(const Context& ctx, const OpFilter& selected);

}  // namespace hops::conformance
