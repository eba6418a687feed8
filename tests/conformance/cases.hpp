// The sections of the suite that run over every family's ops (suite.hpp): each
// op's reference cases run every dtype the provider claims (supports()) over
// their sweep of shapes and options.
#pragma once

#include <functional>
#include <string_view>

#include "harness.hpp"

namespace hops::conformance {

// Whether the run covers an op (--op).
using OpFilter = std::function<bool(std::string_view op)>;

// Wrong calls: the right status, a message naming op and argument, no write.
void bad_input_cases(const Context& ctx, const OpFilter& selected);
// The same calls from 8 threads at once give the single-threaded bytes.
void thread_cases(const Context& ctx, const OpFilter& selected);

}  // namespace hops::conformance
