// Tensors of the runner: a view (dtype, shape, strides, offset) on a shared
// device buffer, with conversion to and from the reference's float64 arrays.
// Several views may share one buffer, as q, k and v share Qwen3.5's projection.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "device.hpp"
#include "dtype.hpp"
#include "reference.hpp"

namespace hops::conformance {

using ref::Array64;
using Shape = std::vector<int64_t>;

class Tensor {
 public:
  Tensor() = default;  // absent: passed as NULL

  // A fresh row-major buffer holding exactly `shape`, filled with poison.
  static Tensor empty(Device& device, DType dtype, Shape shape);
  // `shape` at the origin of a buffer of `shape + pad`: a strided view whose gaps
  // hold poison, so that reading them (or writing them) shows.
  static Tensor padded(Device& device, DType dtype, Shape shape, Shape pad);
  // A 1-D index tensor (cu_seqlens, state_indices).
  static Tensor indices(Device& device, DType dtype, const std::vector<int64_t>& values);
  // Random-ready input: allocates `shape` (padded when `pad` is given), writes
  // `values` rounded to `dtype`, and returns the tensor; `values` then holds
  // exactly what the tensor holds.
  static Tensor input(Device& device, DType dtype, Array64& values, Shape pad = {});

  // A view on the same buffer; offset and strides in elements, relative to this
  // view's origin. Throws if an element would fall outside the buffer.
  Tensor view(int64_t offset, Shape shape, Shape strides) const;
  // Logical dim i of the result is dim perm[i] of this tensor (no data moves).
  Tensor permuted(const std::vector<int>& perm) const;

  explicit operator bool() const { return static_cast<bool>(memory_); }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t numel() const;
  const std::shared_ptr<Memory>& memory() const { return memory_; }

  // The DLPack view; its shape and strides point into this object.
  DLTensor dl() const;

  // Logical values, converted to the dtype; bytes outside the view are kept.
  void write(const Array64& values);
  // With ref's `values` rounded to this tensor's dtype (what write() stores).
  Array64 read() const;
  // Raw bits of every element, in logical order (float dtypes).
  std::vector<uint32_t> read_bits() const;
  // Buffer offset (in elements) of every element, in logical order.
  std::vector<int64_t> element_offsets() const;
  // Fills the whole buffer, gaps included, with the dtype's poison NaN.
  void poison() const;

 private:
  std::shared_ptr<Memory> memory_;
  DLDevice device_{kDLCPU, 0};
  DType dtype_ = DType::f32;
  Shape shape_, strides_;
  int64_t offset_ = 0;
};

// Writes `values` into `view` and rounds `values` to what the view now holds.
Tensor assign(Tensor view, Array64& values);
// A padding for Tensor::padded that makes every dim but the first strided.
Shape gaps(size_t rank);

// Row-major strides of a shape.
Shape contiguous_strides(const Shape& shape);
int64_t product(const Shape& shape);
// `a` with its dims permuted like Tensor::permuted (data moved).
Array64 permute(const Array64& a, const std::vector<int>& perm);

}  // namespace hops::conformance
