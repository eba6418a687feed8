// Self-test of the float64 oracle's arrays and sequences; each op family's
// oracle has its own in <family>_reference_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <stdexcept>
#include <utility>

#include "reference.hpp"
#include "test_support.hpp"

namespace {

using hops::ref::Array64;
using namespace hops::ref::testing;  // NOLINT(google-build-using-namespace)

// ---- Array64 and sequences -----------------------------------------------------

TEST(Array64, RowMajorAndBoundsChecked) {
  Array64 a({2, 3}, 1.5);
  EXPECT_EQ(a.numel(), 6);
  EXPECT_EQ(a.dim(-1), 3);
  a.at({1, 2}) = 7.0;
  a.at({1, 0}) = 5.0;
  EXPECT_EQ(a.data[5], 7.0);
  EXPECT_EQ(a.data[3], 5.0);
  EXPECT_EQ(a.data[0], 1.5);
  EXPECT_THROW(a.at({0, 3}), std::invalid_argument);
  EXPECT_THROW(a.at({1}), std::invalid_argument);
}

TEST(Sequences, DenseAndVarlen) {
  const auto dense = hops::ref::sequences(2, 5, nullptr);
  ASSERT_EQ(dense.size(), 2u);
  EXPECT_EQ(dense[1].batch, 1);
  EXPECT_EQ(dense[1].begin, 0);
  EXPECT_EQ(dense[1].end, 5);

  const std::vector<int64_t> cu = {0, 2, 2, 5};
  const auto varlen = hops::ref::sequences(1, 5, &cu);
  ASSERT_EQ(varlen.size(), 3u);
  EXPECT_EQ(varlen[1].begin, 2);
  EXPECT_EQ(varlen[1].end, 2);  // empty sequence
  EXPECT_EQ(varlen[2].batch, 0);
  EXPECT_EQ(varlen[2].begin, 2);
  EXPECT_EQ(varlen[2].end, 5);

  EXPECT_THROW(hops::ref::sequences(2, 5, &cu), std::invalid_argument);  // varlen needs B == 1
  const std::vector<int64_t> short_total = {0, 2, 4};
  EXPECT_THROW(hops::ref::sequences(1, 5, &short_total), std::invalid_argument);
  const std::vector<int64_t> decreasing = {0, 3, 2, 5};
  EXPECT_THROW(hops::ref::sequences(1, 5, &decreasing), std::invalid_argument);
}

}  // namespace
