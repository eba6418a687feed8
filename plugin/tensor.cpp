#include "tensor.hpp"

#include <algorithm>
#include <cstring>

#include "checked_math.hpp"

namespace hops {

int64_t Tensor::numel() const {
  int64_t count = 1;
  for (int d = 0; d < ndim; ++d) count = checked_product("tensor: element count", count, shape[d]);
  return count;
}

bool Tensor::contiguous() const {
  int64_t expected = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] != 1 && stride[d] != expected) return false;
    expected = checked_product("tensor: compact stride", expected, shape[d]);
  }
  return true;
}

Tensor make_tensor(const DLTensor& dl, DType dtype, DLDevice device) {
  Tensor t;
  t.exists = true;
  t.handle = dl.data;
  t.byte_offset = dl.byte_offset;
  t.device = device;
  t.dtype = dtype;
  t.ndim = dl.ndim;
  // A 0 dim counts as 1, as torch's compact strides do: the strides of an
  // empty tensor are never used, and this way they stay within the bounds.
  int64_t compact = 1;
  for (int d = dl.ndim - 1; d >= 0; --d) {
    t.shape[d] = dl.shape[d];
    t.stride[d] = dl.strides ? dl.strides[d] : compact;
    compact = checked_product("tensor: compact stride", compact, std::max<int64_t>(dl.shape[d], 1));
  }
  return t;
}

// Each (shape - 1) * stride may pass 2^63 for dims and strides within their
// bounds, so every step is checked.
std::optional<int64_t> extent_bytes(const Tensor& t) {
  int64_t last = 0;  // offset of the last element, in elements
  for (int d = 0; d < t.ndim; ++d) {
    if (t.shape[d] == 0) return 0;
    const std::optional<int64_t> step = try_mul(t.shape[d] - 1, t.stride[d]);
    const std::optional<int64_t> sum = step ? try_add(last, *step) : std::nullopt;
    if (!sum || *sum >= kMaxBytes) return std::nullopt;
    last = *sum;
  }
  return try_product(kMaxBytes, last + 1, dtype_size(t.dtype));
}

int32_t raw_device_type(const DLDevice& device) {
  int32_t type = 0;
  static_assert(sizeof device.device_type == sizeof type);
  std::memcpy(&type, &device.device_type, sizeof type);
  return type;
}

std::optional<DLDevice> read_device(const DLDevice& device) {
  const int32_t type = raw_device_type(device);
  if (type < kDLCPU || type > kDLCUDAManaged) return std::nullopt;
  return DLDevice{static_cast<DLDeviceType>(type), device.device_id};
}

int64_t read_index(const Tensor& t, int64_t i) {
  const int64_t at = i * t.stride[0];
  return t.dtype == DType::i32 ? t.data<const int32_t>()[at] : t.data<const int64_t>()[at];
}

int64_t read_index(const Tensor& t, int64_t i, int64_t j) {
  const int64_t at = i * t.stride[0] + j * t.stride[1];
  return t.dtype == DType::i32 ? t.data<const int32_t>()[at] : t.data<const int64_t>()[at];
}

}  // namespace hops
