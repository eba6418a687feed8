#include "tensor.hpp"

#include <fmt/format.h>

#include <cstring>
#include <stdexcept>

namespace hops::conformance {

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size(), 1);
  for (size_t d = shape.size(); d-- > 1;) strides[d - 1] = strides[d] * shape[d];
  return strides;
}

int64_t product(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Tensor Tensor::empty(Device& device, DType dtype, Shape shape) {
  return padded(device, dtype, std::move(shape), {});
}

Tensor Tensor::padded(Device& device, DType dtype, Shape shape, Shape pad) {
  Shape allocated = shape;
  for (size_t d = 0; d < pad.size(); ++d) allocated[d] += pad[d];
  Tensor t;
  t.memory_ = device.allocate(static_cast<size_t>(product(allocated) * size_of(dtype)));
  t.device_ = device.dl_device();
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.strides_ = contiguous_strides(allocated);
  if (is_float(dtype)) t.poison();
  return t;
}

Tensor Tensor::indices(Device& device, DType dtype, const std::vector<int64_t>& values) {
  Tensor t = empty(device, dtype, {static_cast<int64_t>(values.size())});
  Array64 a({t.shape_[0]});
  for (size_t i = 0; i < values.size(); ++i) a.data[i] = static_cast<double>(values[i]);
  t.write(a);
  return t;
}

Tensor Tensor::input(Device& device, DType dtype, Array64& values, Shape pad) {
  return assign(padded(device, dtype, values.shape, std::move(pad)), values);
}

Tensor assign(Tensor view, Array64& values) {
  view.write(values);
  values = view.read();
  return view;
}

Shape gaps(size_t rank) {
  Shape pad(rank, 1);
  if (rank > 0) pad[0] = 0;
  return pad;
}

Tensor Tensor::view(int64_t offset, Shape shape, Shape strides) const {
  Tensor t = *this;
  t.offset_ = offset_ + offset;
  t.shape_ = std::move(shape);
  t.strides_ = std::move(strides);
  int64_t lowest = t.offset_, highest = t.offset_;
  if (t.numel() > 0) {
    for (size_t d = 0; d < t.shape_.size(); ++d) {
      const int64_t reach = (t.shape_[d] - 1) * t.strides_[d];
      (reach < 0 ? lowest : highest) += reach;
    }
  }
  const auto elements = static_cast<int64_t>(memory_->size()) / size_of(dtype_);
  if (lowest < 0 || highest >= std::max<int64_t>(elements, 1)) {
    throw std::logic_error(
        fmt::format("view [{}, {}] outside a buffer of {} elements", lowest, highest, elements));
  }
  return t;
}

Tensor Tensor::permuted(const std::vector<int>& perm) const {
  Shape shape, strides;
  for (int d : perm) {
    shape.push_back(shape_[d]);
    strides.push_back(strides_[d]);
  }
  return view(0, shape, strides);
}

int64_t Tensor::numel() const { return product(shape_); }

DLTensor Tensor::dl() const {
  DLTensor t{};
  t.data = memory_->handle();
  // The plugin would see the same memory with the offset in `data`; byte_offset
  // is the form that works for opaque handles (cl_mem) too.
  t.byte_offset = static_cast<uint64_t>(offset_ * size_of(dtype_));
  t.device = device_;
  t.ndim = static_cast<int32_t>(shape_.size());
  t.dtype = to_dl(dtype_);
  t.shape = const_cast<int64_t*>(shape_.data());
  t.strides = const_cast<int64_t*>(strides_.data());
  return t;
}

std::vector<int64_t> Tensor::element_offsets() const {
  const int64_t n = numel();
  std::vector<int64_t> offsets(static_cast<size_t>(n));
  Shape index(shape_.size(), 0);
  int64_t position = offset_;
  for (int64_t i = 0; i < n; ++i) {
    offsets[static_cast<size_t>(i)] = position;
    // Odometer step over the row-major index.
    for (size_t d = shape_.size(); d-- > 0;) {
      position += strides_[d];
      if (++index[d] < shape_[d]) break;
      position -= strides_[d] * shape_[d];
      index[d] = 0;
    }
  }
  return offsets;
}

void Tensor::write(const Array64& values) {
  if (values.shape != shape_) throw std::logic_error("Tensor::write: shape mismatch");
  std::vector<std::byte> bytes = memory_->read();
  const std::vector<int64_t> offsets = element_offsets();
  for (size_t i = 0; i < offsets.size(); ++i)
    store(dtype_, bytes.data(), offsets[i], values.data[i]);
  memory_->write(bytes);
}

Array64 Tensor::read() const {
  const std::vector<std::byte> bytes = memory_->read();
  Array64 values(shape_);
  const std::vector<int64_t> offsets = element_offsets();
  for (size_t i = 0; i < offsets.size(); ++i)
    values.data[i] = load(dtype_, bytes.data(), offsets[i]);
  return values;
}

std::vector<uint32_t> Tensor::read_bits() const {
  const std::vector<std::byte> bytes = memory_->read();
  const std::vector<int64_t> offsets = element_offsets();
  std::vector<uint32_t> bits(offsets.size());
  for (size_t i = 0; i < offsets.size(); ++i) bits[i] = bits_at(dtype_, bytes.data(), offsets[i]);
  return bits;
}

void Tensor::poison() const {
  std::vector<std::byte> bytes(memory_->size());
  const uint64_t pattern = poison_bits(dtype_);  // an element's low bytes (i64: 8 bytes)
  const auto size = static_cast<size_t>(size_of(dtype_));
  for (size_t at = 0; at + size <= bytes.size(); at += size)
    std::memcpy(&bytes[at], &pattern, size);
  memory_->write(bytes);
}

Array64 permute(const Array64& a, const std::vector<int>& perm) {
  Shape shape;
  for (int d : perm) shape.push_back(a.shape[d]);
  const Shape from = contiguous_strides(a.shape);
  Array64 out(shape);
  const Shape to = contiguous_strides(shape);
  for (int64_t i = 0; i < out.numel(); ++i) {
    int64_t source = 0;
    for (size_t d = 0; d < shape.size(); ++d) source += (i / to[d] % shape[d]) * from[perm[d]];
    out.data[static_cast<size_t>(i)] = a.data[static_cast<size_t>(source)];
  }
  return out;
}

}  // namespace hops::conformance
