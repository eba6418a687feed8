#include "device.hpp"

#include <algorithm>
#include <cstring>

namespace hops::conformance {

namespace {

class HostMemory final : public Memory {
 public:
  // At least one byte, so that even an empty tensor has a non-NULL data pointer.
  explicit HostMemory(size_t bytes) : bytes_(std::max<size_t>(bytes, 1)), size_(bytes) {}
  size_t size() const override { return size_; }
  void* handle() const override { return const_cast<std::byte*>(bytes_.data()); }
  void write(std::span<const std::byte> bytes) override {
    if (!bytes.empty()) std::memcpy(bytes_.data(), bytes.data(), std::min(bytes.size(), size_));
  }
  std::vector<std::byte> read() const override {
    return {bytes_.begin(), bytes_.begin() + static_cast<std::ptrdiff_t>(size_)};
  }

 private:
  std::vector<std::byte> bytes_;
  size_t size_;
};

class HostDevice final : public Device {
 public:
  DLDevice dl_device() const override { return {kDLCPU, 0}; }
  void* stream() const override { return nullptr; }
  std::unique_ptr<Memory> allocate(size_t bytes) override {
    return std::make_unique<HostMemory>(bytes);
  }
};

}  // namespace

std::unique_ptr<Device> make_cuda_device();    // device_cuda.cpp
std::unique_ptr<Device> make_opencl_device();  // device_opencl.cpp

std::unique_ptr<Device> make_device(std::string_view backend) {
  if (backend == "cpu") return std::make_unique<HostDevice>();
  if (backend == "cuda") return make_cuda_device();
  if (backend == "opencl") return make_opencl_device();
  return nullptr;
}

}  // namespace hops::conformance
