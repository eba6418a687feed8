// The helpers of the families' reference files (common.hpp).
#include "common.hpp"

#include <cmath>
#include <set>
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

// The slot of sequence n in a state pool of `pool_size` slots: state_indices[n],
// or n without indices. -1 means "skip". Checks the whole list once: every
// value in [-1, pool_size), no slot named twice (their updates would alias).
std::vector<int64_t> pool_slots(int64_t N, int64_t pool_size,
                                const std::vector<int64_t>* state_indices) {
  std::vector<int64_t> slots(N);
  if (state_indices == nullptr) {
    require(N <= pool_size, "without state_indices, N (" + std::to_string(N) +
                                ") must be <= the pool size (" + std::to_string(pool_size) + ")");
    for (int64_t n = 0; n < N; ++n) slots[n] = n;
    return slots;
  }
  require(static_cast<int64_t>(state_indices->size()) == N,
          "state_indices has " + std::to_string(state_indices->size()) +
              " entries, expected N = " + std::to_string(N));
  std::set<int64_t> used;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t slot = (*state_indices)[n];
    require(slot >= -1 && slot < pool_size,
            "state_indices[" + std::to_string(n) + "] = " + std::to_string(slot) +
                " is outside [-1, " + std::to_string(pool_size) + ")");
    if (slot >= 0) {
      require(used.insert(slot).second,
              "slot " + std::to_string(slot) + " is named by two sequences");
    }
    slots[n] = slot;
  }
  return slots;
}

}  // namespace hops::ref::detail
