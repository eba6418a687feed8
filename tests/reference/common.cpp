// The helpers of the families' reference files (common.hpp).
#include "common.hpp"

#include <cmath>
#include <stdexcept>

namespace hops::ref::detail {

// ---- checks -----------------------------------------------------------------

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument("hops::ref: " + message);
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ",";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

void require_shape(const Array64& array, const std::vector<int64_t>& expected,
                   const std::string& name) {
  require(array.shape == expected, name + " has shape " + shape_string(array.shape) +
                                       ", expected " + shape_string(expected));
}

void require_rank(const Array64& array, size_t rank, const std::string& name) {
  require(array.shape.size() == rank, name + " has shape " + shape_string(array.shape) +
                                          ", expected rank " + std::to_string(rank));
}

// ---- scalar functions ---------------------------------------------------------

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

double silu(double x) { return x / (1.0 + std::exp(-x)); }

// torch.nn.functional.softplus: linear above the threshold, where torch
// switches to avoid overflowing exp.
double softplus(double x, double beta, double threshold) {
  if (beta * x > threshold) return x;
  return std::log1p(std::exp(beta * x)) / beta;
}

// d/dx silu(x) = sigmoid(x) + x sigmoid(x) (1 - sigmoid(x)).
double silu_derivative(double x) { return sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x))); }

}  // namespace hops::ref::detail
