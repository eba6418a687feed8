// Part 1 of the suite: the entry point, the table, the op descriptors,
// supports() and the backend list are well formed.
#pragma once

#include <string_view>

#include "harness.hpp"

namespace hops::conformance {

// hops_get_api: the current major gives a sane table, unknown majors give NULL.
// Returns the table, or null (after reporting) when there is none to test.
const hops_api* check_entry_point(Report& report, hops_get_api_fn get_api);

void check_descriptors(const Context& ctx);

// The backend list is well formed and `backend` is listed, available and
// serves the context's device type.
void check_backends(const Context& ctx, std::string_view backend);

}  // namespace hops::conformance
