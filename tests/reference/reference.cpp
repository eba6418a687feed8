// The float64 oracle's arrays and sequences; each op family's oracle is in
// <family>_reference.cpp. Plain loops over plain indices, in the order the
// math in docs/OPS.md is written, so that a reader can check each line
// against the spec. Speed does not matter here; being obviously right does.
//
// Misuse (a wrong shape, a bad cu_seqlens, a slot out of range) throws
// std::invalid_argument: in a test, that is a bug in the test.
#include "reference.hpp"

#include <cmath>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

#include "common.hpp"

namespace hops::ref {

using namespace detail;  // NOLINT(google-build-using-namespace): the shared helpers

// ---- Array64 --------------------------------------------------------------------

Array64::Array64(std::vector<int64_t> dims, double fill) : shape(std::move(dims)) {
  int64_t count = 1;
  for (int64_t extent : shape) {
    require(extent >= 0, "negative extent in shape " + shape_string(shape));
    count *= extent;
  }
  data.assign(count, fill);
}

namespace {

// Row-major offset of `index` in `shape`, bounds-checked: a wrong index in the
// oracle must fail loudly, never read a neighbour.
// The messages are built only on failure: this runs for every element the
// oracle touches.
int64_t row_major_offset(const std::vector<int64_t>& shape, std::initializer_list<int64_t> index) {
  if (index.size() != shape.size()) {
    require(false,
            "index of rank " + std::to_string(index.size()) + " into shape " + shape_string(shape));
  }
  int64_t offset = 0;
  size_t axis = 0;
  for (int64_t i : index) {
    if (i < 0 || i >= shape[axis]) {
      require(false, "index " + std::to_string(i) + " out of range on axis " +
                         std::to_string(axis) + " of shape " + shape_string(shape));
    }
    offset = offset * shape[axis] + i;
    ++axis;
  }
  return offset;
}

}  // namespace

double& Array64::at(std::initializer_list<int64_t> index) {
  return data[row_major_offset(shape, index)];
}

double Array64::at(std::initializer_list<int64_t> index) const {
  return data[row_major_offset(shape, index)];
}

// ---- sequences ------------------------------------------------------------------

std::vector<Sequence> sequences(int64_t B, int64_t T, const std::vector<int64_t>* cu_seqlens) {
  std::vector<Sequence> result;
  if (cu_seqlens == nullptr) {
    // Dense: each batch row is one sequence of T tokens.
    for (int64_t n = 0; n < B; ++n) result.push_back({n, 0, T});
    return result;
  }
  // Varlen: the sequences are packed back to back in the single row 0.
  const std::vector<int64_t>& cu = *cu_seqlens;
  require(B == 1, "varlen inputs need B == 1, got B = " + std::to_string(B));
  require(cu.size() >= 2, "cu_seqlens needs N+1 >= 2 entries");
  require(cu.front() == 0, "cu_seqlens[0] must be 0");
  require(cu.back() == T,
          "cu_seqlens[N] = " + std::to_string(cu.back()) + ", expected T = " + std::to_string(T));
  for (size_t n = 0; n + 1 < cu.size(); ++n) {
    require(cu[n] <= cu[n + 1], "cu_seqlens must be nondecreasing");
    result.push_back({0, cu[n], cu[n + 1]});
  }
  return result;
}

}  // namespace hops::ref
