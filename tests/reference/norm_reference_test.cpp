// Self-test of the norm family's oracle: hand values and finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "norm_reference.hpp"
#include "test_support.hpp"

namespace {

using hops::ref::Array64;
using namespace hops::ref::testing;  // NOLINT(google-build-using-namespace)

// ---- gated_rmsnorm -----------------------------------------------------------------

TEST(GatedRmsnorm, HandValues) {
  auto silu = [](double z) { return z / (1.0 + std::exp(-z)); };
  const Array64 x = from_values({2, 2}, {3.0, 4.0, 1.0, -1.0});
  const Array64 z = from_values({2, 2}, {1.0, 2.0, -0.5, 3.0});
  const Array64 weight = from_values({2}, {1.0, 0.5});

  const Array64 y = hops::ref::gated_rmsnorm(x, z, weight, 0.0);
  const double rms0 = std::sqrt((9.0 + 16.0) / 2.0);  // row 0: mean of squares 12.5
  EXPECT_NEAR(y.at({0, 0}), 3.0 / rms0 * 1.0 * silu(1.0), 1e-14);
  EXPECT_NEAR(y.at({0, 1}), 4.0 / rms0 * 0.5 * silu(2.0), 1e-14);
  EXPECT_NEAR(y.at({1, 0}), 1.0 * 1.0 * silu(-0.5), 1e-14);  // row 1: rms 1
  EXPECT_NEAR(y.at({1, 1}), -1.0 * 0.5 * silu(3.0), 1e-14);

  // eps is added to the mean of squares, inside the root.
  const Array64 y_eps = hops::ref::gated_rmsnorm(x, z, weight, 1.0);
  EXPECT_NEAR(y_eps.at({1, 0}), 1.0 / std::sqrt(2.0) * silu(-0.5), 1e-14);
}

// ---- gated_rmsnorm_bwd: against finite differences --------------------------------

void check_gated_rmsnorm_bwd(const std::vector<int64_t>& shape, double eps, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t D = shape.back();
  Array64 x = random_array(shape, rng), z = random_array(shape, rng, -3.0, 3.0);
  Array64 weight = random_array({D}, rng, 0.5, 1.5);
  const Array64 dy = random_array(shape, rng);
  const auto grads = hops::ref::gated_rmsnorm_bwd(x, z, weight, dy, eps);
  // L = sum(dy * y): its gradients are the backward's outputs.
  auto loss = [&] { return dot(dy, hops::ref::gated_rmsnorm(x, z, weight, eps)); };
  double worst = expect_finite_differences("x", x, grads.dx, loss);
  worst = std::max(worst, expect_finite_differences("z", z, grads.dz, loss));
  worst = std::max(worst, expect_finite_differences("weight", weight, grads.dweight, loss));
  std::printf("  max |analytic - finite difference| = %.2e\n", worst);
}

TEST(GatedRmsnormBwd, MatchesFiniteDifferences) {
  check_gated_rmsnorm_bwd({2, 3, 5}, 1e-6, 11);  // dweight sums over 6 rows
  check_gated_rmsnorm_bwd({4, 1}, 0.5, 12);      // D = 1: the norm only keeps the sign
}

}  // namespace
