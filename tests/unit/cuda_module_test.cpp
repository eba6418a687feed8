// libhops_cuda.so loads on any machine; without a CUDA driver it reports the
// backend unavailable with the reason, instead of failing the load.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include "registry.hpp"

namespace hops {
namespace {

TEST(CudaModule, UnavailableWithoutDriver) {
  const auto modules = load_backend_modules(HOPS_CUDA_MODULE_DIR);
  const Backend* cuda = nullptr;
  for (const Backend& b : modules) {
    if (b.name == "cuda") cuda = &b;
  }
  ASSERT_NE(cuda, nullptr) << "libhops_cuda.so not found in " << HOPS_CUDA_MODULE_DIR;
  EXPECT_EQ(cuda->device_type, kDLCUDA) << cuda->detail;
  EXPECT_EQ(cuda->kernels.size(), all_ops().size())
      << "every op has a CUDA kernel; " << cuda->detail;
  void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (driver) {
    dlclose(driver);
    GTEST_SKIP() << "a CUDA driver is installed here; the module says: " << cuda->detail;
  }
  EXPECT_FALSE(cuda->available);
  EXPECT_NE(cuda->detail.find("no CUDA driver"), std::string::npos) << cuda->detail;
}

}  // namespace
}  // namespace hops
