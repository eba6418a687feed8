// Seeded random inputs. Each case draws from its own seed, derived from the
// run's seed and the case's name, so one case reruns alone with the same data.
#pragma once

#include <cstdint>
#include <random>
#include <string_view>

#include "tensor.hpp"

namespace hops::conformance {

uint64_t case_seed(uint64_t run_seed, std::string_view case_name);

class Random {
 public:
  explicit Random(uint64_t seed) : engine_(seed) {}
  double uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(engine_);
  }
  Array64 uniform(const Shape& shape, double lo, double hi);

 private:
  std::mt19937_64 engine_;
};

}  // namespace hops::conformance
