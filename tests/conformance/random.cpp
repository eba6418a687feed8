#include "random.hpp"

namespace hops::conformance {

uint64_t case_seed(uint64_t run_seed, std::string_view case_name) {
  uint64_t h = 1469598103934665603ull ^ run_seed;  // FNV-1a over the name
  for (char c : case_name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h % 1000000007ull;  // short enough to read in a log line
}

Array64 Random::uniform(const Shape& shape, double lo, double hi) {
  Array64 a(shape);
  for (double& x : a.data) x = uniform(lo, hi);
  return a;
}

}  // namespace hops::conformance
