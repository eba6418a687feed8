// The conformance suite's op families, one line each: a family's suites are in
// tests/conformance/<family>_*.cpp, which define <family>_suites().
#include <vector>

#include "suite.hpp"

namespace hops::conformance {

std::span<const OpSuite> gdn_suites();
std::span<const OpSuite> conv1d_suites();
std::span<const OpSuite> norm_suites();
std::span<const OpSuite> attn_suites();
std::span<const OpSuite> moe_suites();
std::span<const OpSuite> moe_ep_suites();

std::span<const OpSuite> all_suites() {
  static const std::vector<OpSuite> suites = [] {
    std::vector<OpSuite> all;
    for (const auto family : std::initializer_list<std::span<const OpSuite>>{
             gdn_suites(),
             conv1d_suites(),
             norm_suites(),
             attn_suites(),
             moe_suites(),
             moe_ep_suites(),
         }) {
      all.insert(all.end(), family.begin(), family.end());
    }
    return all;
  }();
  return suites;
}

const OpSuite* suite_for(std::string_view op) {
  for (const OpSuite& s : all_suites()) {
    if (s.op == op) return &s;
  }
  return nullptr;
}

TypedCall typed_call(std::string_view op) {
  const OpSuite* suite = suite_for(op);
  return suite ? suite->typed : nullptr;
}

}  // namespace hops::conformance
