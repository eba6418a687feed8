#include "tensor.hpp"

namespace hops {

int64_t Tensor::numel() const {
  int64_t count = 1;
  for (int d = 0; d < ndim; ++d) count *= shape[d];
  return count;
}

bool Tensor::contiguous() const {
  int64_t expected = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] != 1 && stride[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

Tensor make_tensor(const DLTensor& dl, DType dtype) {
  Tensor t;
  t.exists = true;
  t.handle = dl.data;
  t.byte_offset = dl.byte_offset;
  t.device = dl.device;
  t.dtype = dtype;
  t.ndim = dl.ndim;
  int64_t compact = 1;
  for (int d = dl.ndim - 1; d >= 0; --d) {
    t.shape[d] = dl.shape[d];
    t.stride[d] = dl.strides ? dl.strides[d] : compact;
    compact *= dl.shape[d];
  }
  return t;
}

int64_t read_index(const Tensor& t, int64_t i) {
  const int64_t at = i * t.stride[0];
  return t.dtype == DType::i32 ? t.data<const int32_t>()[at] : t.data<const int64_t>()[at];
}

}  // namespace hops
