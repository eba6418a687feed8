// A float32 tensor in host memory that owns its data, with the DLTensor a
// call takes: the unit tests' arguments. Its data holds the product of the
// dims it was made with (tests may spoil shape or strides afterwards).
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "hops/hops.h"

struct HostTensor {
  static constexpr float kFill = 0.25f;

  std::vector<float> data;
  std::vector<int64_t> shape, strides;  // strides empty: compact
  DLTensor dl{};

  explicit HostTensor(std::vector<int64_t> dims, float fill = kFill) : shape(std::move(dims)) {
    data.assign(count(), fill);
    bind();
  }
  HostTensor(std::vector<int64_t> dims, std::vector<int64_t> steps)
      : shape(std::move(dims)), strides(std::move(steps)) {
    data.assign(count(), kFill);
    bind();
  }
  HostTensor(std::vector<int64_t> dims, std::mt19937& random, float lo, float hi)
      : shape(std::move(dims)) {
    std::uniform_real_distribution<float> uniform(lo, hi);
    data.resize(count());
    for (float& x : data) x = uniform(random);
    bind();
  }
  // dl points into this object's vectors.
  HostTensor(const HostTensor&) = delete;
  HostTensor& operator=(const HostTensor&) = delete;

  bool all(float value) const {
    for (float x : data) {
      if (x != value) return false;
    }
    return true;
  }

 private:
  size_t count() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
  void bind() {
    dl = {data.data(),
          {kDLCPU, 0},
          static_cast<int>(shape.size()),
          {kDLFloat, 32, 1},
          shape.data(),
          strides.empty() ? nullptr : strides.data(),
          0};
  }
};
