// Tensor: a validated, read-only view of a DLTensor argument. Shapes and
// strides are copied in (strides always explicit, in elements) so kernels
// never consult the DLTensor again.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "dtype.hpp"
#include "hops/hops.h"

namespace hops {

inline constexpr int kMaxDims = 8;

struct Tensor {
  bool exists = false;       // false for an absent optional argument
  void* handle = nullptr;    // DLTensor::data: a pointer, or a cl_mem for OpenCL
  uint64_t byte_offset = 0;  // DLTensor::byte_offset
  DLDevice device{kDLCPU, 0};
  DType dtype = DType::f32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> stride{};  // in elements

  explicit operator bool() const { return exists; }

  // Negative dims count from the back, as in Python.
  int64_t size(int dim) const { return shape[dim < 0 ? dim + ndim : dim]; }
  int64_t step(int dim) const { return stride[dim < 0 ? dim + ndim : dim]; }
  int64_t numel() const;
  bool contiguous() const;

  // Host-addressable data (CPU and CUDA-style pointer devices).
  template <class T>
  T* data() const {
    return reinterpret_cast<T*>(static_cast<std::byte*>(handle) + byte_offset);
  }
  // Offset in elements of an index tuple.
  template <class... I>
  int64_t offset(I... index) const {
    int64_t position = 0;
    int dim = 0;
    ((position += static_cast<int64_t>(index) * stride[dim++]), ...);
    return position;
  }
};

// Builds a view on `device` (the DLTensor's, read by read_device); the
// caller has already validated the DLTensor (its dims, zeros counted as one,
// multiply to at most kMaxElements, so the compact strides fit).
Tensor make_tensor(const DLTensor& dl, DType dtype, DLDevice device);

// Bytes from a tensor's first element to the end of its last (0 when it has
// none), or nothing when that exceeds kMaxBytes (checked_math.hpp).
std::optional<int64_t> extent_bytes(const Tensor& t);

// DLDevice::device_type is an enum, but a host may store any integer in it
// and loading a value outside the enum's range is undefined behaviour: it is
// read as the plain int32 it is. read_device gives the device when the type
// is one DLPack defines (kDLCPU..kDLCUDAManaged), else nothing.
int32_t raw_device_type(const DLDevice& device);
std::optional<DLDevice> read_device(const DLDevice& device);

// Whether the host may read the memory of a tensor on `device`.
inline bool host_accessible(DLDevice device) {
  return device.device_type == kDLCPU || device.device_type == kDLCUDAHost;
}

// Reads element i of a 1-D integer tensor (i32 or i64) in host memory.
int64_t read_index(const Tensor& t, int64_t i);
// Reads element [i, j] of a 2-D integer tensor (i32 or i64) in host memory.
int64_t read_index(const Tensor& t, int64_t i, int64_t j);

}  // namespace hops
