// The float64 oracle: every hops op written as plain loops, to be read. This
// header has the arrays and sequences; each op family's functions are in
// <family>_reference.hpp.
//
// Arrays are dense row-major float64 (Array64). Shapes and conventions are the
// ones of docs/OPS.md; the conformance runner converts the provider's tensors
// (any dtype, any strides) to and from Array64.
//
// Every function checks its arguments (shapes, cu_seqlens, slots) and throws
// std::invalid_argument on misuse, and Array64::at is bounds-checked: a wrong
// call is a bug in the test and must fail loudly.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace hops::ref {

struct Array64 {
  std::vector<int64_t> shape;
  std::vector<double> data;

  Array64() = default;
  explicit Array64(std::vector<int64_t> dims, double fill = 0.0);
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  // Row-major element access; the number of indices equals the rank.
  double& at(std::initializer_list<int64_t> index);
  double at(std::initializer_list<int64_t> index) const;
};

// One (batch row, token range) per sequence: dense inputs give N=B sequences
// [0,T) of row n; varlen inputs (B=1) give [cu[n], cu[n+1]) of row 0.
struct Sequence {
  int64_t batch, begin, end;
};
std::vector<Sequence> sequences(int64_t B, int64_t T, const std::vector<int64_t>* cu_seqlens);

}  // namespace hops::ref
