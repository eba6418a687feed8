// What the families' reference self-tests (<family>_reference_test.cpp)
// share: random and hand-written arrays, slices, comparisons and the
// finite-difference check of a gradient.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <utility>
#include <vector>

#include "reference.hpp"

namespace hops::ref::testing {

inline Array64 random_array(std::vector<int64_t> shape, std::mt19937_64& rng, double low = -1.0,
                            double high = 1.0) {
  Array64 a(std::move(shape));
  std::uniform_real_distribution<double> uniform(low, high);
  for (double& value : a.data) value = uniform(rng);
  return a;
}

inline Array64 from_values(std::vector<int64_t> shape, std::vector<double> values) {
  Array64 a(std::move(shape));
  EXPECT_EQ(a.data.size(), values.size());
  a.data = std::move(values);
  return a;
}

// Elements [begin, end) along `axis`, the other axes whole.
inline Array64 slice(const Array64& a, size_t axis, int64_t begin, int64_t end) {
  std::vector<int64_t> shape = a.shape;
  shape[axis] = end - begin;
  int64_t outer = 1, inner = 1;
  for (size_t i = 0; i < axis; ++i) outer *= a.shape[i];
  for (size_t i = axis + 1; i < a.shape.size(); ++i) inner *= a.shape[i];
  Array64 out(shape);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < end - begin; ++i) {
      for (int64_t r = 0; r < inner; ++r) {
        out.data[(o * (end - begin) + i) * inner + r] =
            a.data[(o * a.shape[axis] + begin + i) * inner + r];
      }
    }
  }
  return out;
}

// Element `index` along `axis`, keeping that axis with extent 1.
inline Array64 select(const Array64& a, size_t axis, int64_t index) {
  return slice(a, axis, index, index + 1);
}

// Swaps the last two axes of a rank-4 array.
inline Array64 transpose_last2(const Array64& a) {
  Array64 out({a.dim(0), a.dim(1), a.dim(3), a.dim(2)});
  for (int64_t i0 = 0; i0 < a.dim(0); ++i0)
    for (int64_t i1 = 0; i1 < a.dim(1); ++i1)
      for (int64_t i2 = 0; i2 < a.dim(2); ++i2)
        for (int64_t i3 = 0; i3 < a.dim(3); ++i3) out.at({i0, i1, i3, i2}) = a.at({i0, i1, i2, i3});
  return out;
}

inline void expect_near(const Array64& actual, const Array64& expected, double tolerance = 1e-12) {
  ASSERT_EQ(actual.shape, expected.shape);
  double worst = 0.0;
  int64_t worst_index = -1;
  for (int64_t i = 0; i < actual.numel(); ++i) {
    const double difference = std::abs(actual.data[i] - expected.data[i]);
    if (!(difference <= worst)) {  // also catches NaN
      worst = difference;
      worst_index = i;
    }
  }
  EXPECT_LE(worst, tolerance) << "at flat index " << worst_index;
}

inline double dot(const Array64& a, const Array64& b) {
  double sum = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) sum += a.data[i] * b.data[i];
  return sum;
}

// Checks every element of `gradient` against the central difference of
// `loss` in `input` (step 1e-6: truncation ~1e-12, rounding ~1e-10 at these
// sizes) and returns the worst absolute error.
inline double expect_finite_differences(const char* name, Array64& input, const Array64& gradient,
                                        const std::function<double()>& loss) {
  EXPECT_EQ(input.shape, gradient.shape) << name;
  if (input.shape != gradient.shape) return INFINITY;
  constexpr double kStep = 1e-6;
  double worst = 0.0;
  for (int64_t i = 0; i < input.numel(); ++i) {
    const double saved = input.data[i];
    input.data[i] = saved + kStep;
    const double above = loss();
    input.data[i] = saved - kStep;
    const double below = loss();
    input.data[i] = saved;
    const double difference = (above - below) / (2 * kStep);
    const double error = std::abs(gradient.data[i] - difference);
    worst = std::max(worst, error);
    EXPECT_LE(error, 1e-7 * std::max(1.0, std::abs(difference)))
        << "d" << name << " at flat index " << i << ": analytic " << gradient.data[i]
        << ", finite difference " << difference;
  }
  return worst;
}

}  // namespace hops::ref::testing
