// The conformance suite's op families, one line each: a family's suites are in
// tests/conformance/<family>_*.cpp, which define <family>_suites().
#include <vector>

#include "suite.hpp"

namespace hops::conformance {

std::span<const OpSuite> norm_suites();

std::span<const OpSuite> all_suites() {
  static const std::vector<OpSuite> suites = [] {
    std::vector<OpSuite> all;
    for (const auto family : std::initializer_list<std::span<const OpSuite>>{
             norm_suites(),
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

}  // namespace hops::conformance
