// libhops_cuda.so: its op families, one line each (a family's host code is
// in <family>_host.cpp, its kernels in <family>*.cu), and the module's entry.
// The CUDA runtime is linked statically and reaches the driver
// (libcuda.so.1) only when first asked, so on a machine without one the
// module still loads and reports itself unavailable.
#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "backend.hpp"
#include "cuda_targets.hpp"
#include "nccl.hpp"

namespace hops::cuda {

std::span<const Kernel> gdn_kernels();
std::span<const Kernel> conv1d_kernels();
std::span<const Kernel> norm_kernels();
std::span<const Kernel> attn_kernels();
std::span<const Kernel> moe_kernels();
std::span<const Kernel> moe_ep_kernels();

namespace {

std::span<const Kernel> all_kernels() {
  static const std::vector<Kernel> kernels = join_families({
      gdn_kernels(),
      conv1d_kernels(),
      norm_kernels(),
      attn_kernels(),
      moe_kernels(),
      moe_ep_kernels(),
  });
  return kernels;
}

const char* module_last_error() { return hops::last_error(); }

BackendModule make_module() {
  static std::string detail;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  bool available = false;
  if (status != cudaSuccess) {
    detail = fmt::format("no CUDA driver: {} ({})", cudaGetErrorName(status),
                         cudaGetErrorString(status));
    cudaGetLastError();
  } else if (count == 0) {
    detail = "no CUDA device";
  } else {
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    // The kernels need sm_80 (cp.async, bf16 mma.sync); which targets the
    // module carries is the build's choice (HOPS_CUDA_ARCHITECTURES).
    const bool code = carries_code_for(HOPS_CUDA_TARGETS, prop.major, prop.minor);
    available = prop.major >= 8 && code;
    std::string why;
    if (prop.major < 8)
      why = "; the kernels need compute capability 8.0 or newer";
    else if (!code)
      why = fmt::format("; this build holds no code for it (built for {})", HOPS_CUDA_TARGETS);
    detail = fmt::format("{} CUDA device(s); device 0: {} (sm_{}{}); runtime {}, driver {}{}",
                         count, prop.name, prop.major, prop.minor, runtime, driver, why);
  }
  // Expert parallelism across GPUs: whether NCCL can be opened (nccl.cpp).
  detail += "; " + nccl::describe();
  return {sizeof(BackendModule),
          kModuleInterfaceVersion,
          kModuleLayout,
          "cuda",
          kDLCUDA,
          available ? 1 : 0,
          detail.c_str(),
          10,
          all_kernels().data(),
          all_kernels().size(),
          &module_last_error};
}

}  // namespace

}  // namespace hops::cuda

extern "C" __attribute__((visibility("default"))) const hops::BackendModule* hops_backend_module() {
  static const hops::BackendModule module = hops::cuda::make_module();
  return &module;
}
