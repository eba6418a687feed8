// The runner's CUDA device (--backend cuda): device memory through the CUDA
// driver API, opened with dlopen("libcuda.so.1") when the device is made, so
// the runner builds and runs without the CUDA toolkit. It uses the primary
// context of device 0 (the one the CUDA runtime in libhops_cuda.so uses) and
// the legacy default stream (hops_exec::stream = NULL), so the synchronous
// copies here order after the plugin's kernels.
#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "device.hpp"

namespace hops::conformance {

namespace {

using CUresult = int;
using CUdevice = int;
using CUcontext = void*;
using CUdeviceptr = unsigned long long;

struct Driver {
  CUresult (*cuInit)(unsigned);
  CUresult (*cuDeviceGet)(CUdevice*, int);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
  CUresult (*cuCtxSetCurrent)(CUcontext);
  CUresult (*cuCtxSynchronize)();
  CUresult (*cuMemAlloc)(CUdeviceptr*, size_t);
  CUresult (*cuMemFree)(CUdeviceptr);
  CUresult (*cuMemcpyHtoD)(CUdeviceptr, const void*, size_t);
  CUresult (*cuMemcpyDtoH)(void*, CUdeviceptr, size_t);
  CUresult (*cuGetErrorName)(CUresult, const char**);
  CUcontext context = nullptr;

  void check(CUresult status, const char* what) const {
    if (status == 0) return;
    const char* name = "unknown";
    if (cuGetErrorName) cuGetErrorName(status, &name);
    throw std::runtime_error(fmt::format("CUDA driver: {} failed: {} ({})", what, name, status));
  }
  // Every call may come from another thread (the thread cases): bind the context.
  void bind() const { check(cuCtxSetCurrent(context), "cuCtxSetCurrent"); }
};

const Driver& driver() {
  static const Driver d = [] {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) throw std::runtime_error(fmt::format("no CUDA driver: {}", dlerror()));
    Driver d{};
    auto get = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) throw std::runtime_error(fmt::format("CUDA driver lacks {}", name));
    };
    get(d.cuInit, "cuInit");
    get(d.cuDeviceGet, "cuDeviceGet");
    get(d.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
    get(d.cuCtxSetCurrent, "cuCtxSetCurrent");
    get(d.cuCtxSynchronize, "cuCtxSynchronize");
    get(d.cuMemAlloc, "cuMemAlloc_v2");
    get(d.cuMemFree, "cuMemFree_v2");
    get(d.cuMemcpyHtoD, "cuMemcpyHtoD_v2");
    get(d.cuMemcpyDtoH, "cuMemcpyDtoH_v2");
    get(d.cuGetErrorName, "cuGetErrorName");
    d.check(d.cuInit(0), "cuInit");
    CUdevice device = 0;
    d.check(d.cuDeviceGet(&device, 0), "cuDeviceGet");
    d.check(d.cuDevicePrimaryCtxRetain(&d.context, device), "cuDevicePrimaryCtxRetain");
    return d;
  }();
  return d;
}

class CudaMemory final : public Memory {
 public:
  // At least one byte, so that even an empty tensor has a non-NULL pointer.
  explicit CudaMemory(size_t bytes) : size_(bytes) {
    const Driver& d = driver();
    d.bind();
    d.check(d.cuMemAlloc(&ptr_, bytes ? bytes : 1), "cuMemAlloc");
  }
  ~CudaMemory() override {
    const Driver& d = driver();
    if (d.cuCtxSetCurrent(d.context) == 0) d.cuMemFree(ptr_);
  }
  size_t size() const override { return size_; }
  void* handle() const override { return reinterpret_cast<void*>(ptr_); }
  void write(std::span<const std::byte> bytes) override {
    if (bytes.empty() || size_ == 0) return;
    const Driver& d = driver();
    d.bind();
    d.check(d.cuCtxSynchronize(), "cuCtxSynchronize (before a write)");
    d.check(d.cuMemcpyHtoD(ptr_, bytes.data(), std::min(bytes.size(), size_)), "cuMemcpyHtoD");
  }
  std::vector<std::byte> read() const override {
    std::vector<std::byte> out(size_);
    if (size_ == 0) return out;
    const Driver& d = driver();
    d.bind();
    // Surfaces asynchronous kernel faults here rather than as wrong bytes.
    d.check(d.cuCtxSynchronize(), "cuCtxSynchronize (before a read)");
    d.check(d.cuMemcpyDtoH(out.data(), ptr_, size_), "cuMemcpyDtoH");
    return out;
  }

 private:
  CUdeviceptr ptr_ = 0;
  size_t size_;
};

class CudaDevice final : public Device {
 public:
  CudaDevice() { driver(); }
  DLDevice dl_device() const override { return {kDLCUDA, 0}; }
  void* stream() const override { return nullptr; }
  std::unique_ptr<Memory> allocate(size_t bytes) override {
    return std::make_unique<CudaMemory>(bytes);
  }
};

}  // namespace

// Throws with the reason when there is no usable CUDA driver.
std::unique_ptr<Device> make_cuda_device() { return std::make_unique<CudaDevice>(); }

}  // namespace hops::conformance
