// Rows of [..., last] tensors as common.cl's lead_offset() reads them (the
// norm and gdn_gating programs).
#pragma once

#include <initializer_list>
#include <vector>

#include "cl.hpp"
#include "tensor.hpp"

namespace hops::opencl {

// The leading dims of same-shaped [..., last] tensors as common.cl's
// lead_offset() reads them: innermost first, each dim merged into the next
// inner one where every tensor allows it (stride = inner stride * inner size),
// dims of size 1 dropped. A contiguous tensor of any rank becomes one dim.
struct Rows {
  cl_long8 shape{};
  std::vector<cl_long8> strides;  // one per tensor
  cl_int dims = 0;
  int64_t count = 1;
};

inline Rows leading_rows(std::initializer_list<const Tensor*> tensors) {
  const Tensor& first = **tensors.begin();
  Rows rows;
  rows.strides.resize(tensors.size());
  for (int d = first.ndim - 2; d >= 0; --d) {
    const int64_t size = first.shape[d];
    rows.count *= size;
    if (size == 1) continue;
    bool merges = rows.dims > 0;
    size_t i = 0;
    for (const Tensor* t : tensors) {
      const int64_t inner =
          rows.dims > 0 ? rows.strides[i].s[rows.dims - 1] * rows.shape.s[rows.dims - 1] : 0;
      merges = merges && t->stride[d] == inner;
      ++i;
    }
    if (merges) {
      rows.shape.s[rows.dims - 1] *= size;
      continue;
    }
    rows.shape.s[rows.dims] = size;
    i = 0;
    for (const Tensor* t : tensors) rows.strides[i++].s[rows.dims] = t->stride[d];
    ++rows.dims;
  }
  return rows;
}

inline size_t groups_for(int64_t items, size_t group) {
  return static_cast<size_t>((items + static_cast<int64_t>(group) - 1) /
                             static_cast<int64_t>(group));
}

}  // namespace hops::opencl
