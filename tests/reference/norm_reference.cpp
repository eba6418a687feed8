// The norm family's float64 oracle, in plain loops (see reference.cpp).
#include "norm_reference.hpp"

#include <cmath>

#include "common.hpp"

namespace hops::ref {

using namespace detail;  // NOLINT(google-build-using-namespace): the shared helpers

// ---- gated_rmsnorm --------------------------------------------------------------

namespace {

// 1 / sqrt(mean(x^2) + eps) over the D elements of x from row_start.
double inverse_rms_of_row(const Array64& x, int64_t row_start, int64_t D, double eps) {
  double sum_squares = 0.0;
  for (int64_t d = 0; d < D; ++d) sum_squares += x.data[row_start + d] * x.data[row_start + d];
  return 1.0 / std::sqrt(sum_squares / static_cast<double>(D) + eps);
}

}  // namespace

Array64 gated_rmsnorm(const Array64& x, const Array64& z, const Array64& weight, double eps) {
  require(!x.shape.empty() && x.dim(-1) > 0, "x must be [..., D] with D > 0");
  const int64_t D = x.dim(-1);
  require_shape(z, x.shape, "z");
  require_shape(weight, {D}, "weight");

  Array64 y(x.shape);
  const int64_t rows = x.numel() / D;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row_start = r * D;
    const double inverse_rms = inverse_rms_of_row(x, row_start, D, eps);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = row_start + d;
      y.data[i] = x.data[i] * inverse_rms * weight.data[d] * silu(z.data[i]);
    }
  }
  return y;
}

// ---- gated_rmsnorm_bwd ----------------------------------------------------------

GatedRmsNormGrads gated_rmsnorm_bwd(const Array64& x, const Array64& z, const Array64& weight,
                                    const Array64& dy, double eps) {
  require(!x.shape.empty() && x.dim(-1) > 0, "x must be [..., D] with D > 0");
  const int64_t D = x.dim(-1);
  require_shape(z, x.shape, "z");
  require_shape(weight, {D}, "weight");
  require_shape(dy, x.shape, "dy");

  GatedRmsNormGrads grads{Array64(x.shape), Array64(x.shape), Array64({D})};
  const int64_t rows = x.numel() / D;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row_start = r * D;
    const double inverse_rms = inverse_rms_of_row(x, row_start, D, eps);
    // y = n * weight * silu(z) with n = x * inverse_rms. The gradient of n is
    // dn = dy * weight * silu(z); inverse_rms depends on every x of the row,
    // d inverse_rms / dx_i = -inverse_rms^3 x_i / D, so
    // dx_i = inverse_rms dn_i - inverse_rms^3 / D * x_i * sum_d dn_d x_d.
    double dn_dot_x = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = row_start + d;
      dn_dot_x += dy.data[i] * weight.data[d] * silu(z.data[i]) * x.data[i];
    }
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = row_start + d;
      const double n = x.data[i] * inverse_rms;
      const double dn = dy.data[i] * weight.data[d] * silu(z.data[i]);
      grads.dx.data[i] = inverse_rms * dn - inverse_rms * inverse_rms * inverse_rms /
                                                static_cast<double>(D) * x.data[i] * dn_dot_x;
      grads.dz.data[i] = dy.data[i] * n * weight.data[d] * silu_derivative(z.data[i]);
      grads.dweight.data[d] += dy.data[i] * n * silu(z.data[i]);
    }
  }
  return grads;
}

}  // namespace hops::ref
