// What the families' reference files (<family>_reference.cpp, reference.cpp)
// share: argument checks that throw std::invalid_argument, and the scalar
// functions of the ops' math. Not part of the oracle's interface.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "reference.hpp"

namespace hops::ref::detail {

void require(bool condition, const std::string& message);
std::string shape_string(const std::vector<int64_t>& shape);
void require_shape(const Array64& array, const std::vector<int64_t>& expected,
                   const std::string& name);
void require_rank(const Array64& array, size_t rank, const std::string& name);

double sigmoid(double x);
double silu(double x);
// torch.nn.functional.softplus: linear above the threshold.
double softplus(double x, double beta, double threshold);
// d/dx silu(x).
double silu_derivative(double x);

// The slot of each of N sequences in a state pool of `pool_size` slots:
// state_indices[n], or n without indices; -1 skips. Throws on a value
// outside [-1, pool_size) or a slot named twice.
std::vector<int64_t> pool_slots(int64_t N, int64_t pool_size,
                                const std::vector<int64_t>* state_indices);

}  // namespace hops::ref::detail
