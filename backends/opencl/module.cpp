// libhops_opencl.so: the module's one exported symbol (its kernels are listed
// by family in families.cpp).
#include "context.hpp"
#include "family.hpp"

namespace hops::opencl {

namespace {

const BackendModule& describe_module() {
  static std::string detail;
  static BackendModule module{
      sizeof(BackendModule), kModuleInterfaceVersion, kModuleLayout, "opencl", kDLOpenCL, 0, "", 1,
      all_kernels().data(),  all_kernels().size(),    &last_error};
  try {
    const Selection& selection = selected_device();
    module.available = selection.device ? 1 : 0;
    detail = selection.detail;
  } catch (const std::exception& e) {  // a broken ICD: unavailable, never a load failure
    detail = fmt::format("OpenCL device query failed: {}", e.what());
  }
  module.detail = detail.c_str();
  return module;
}

}  // namespace

}  // namespace hops::opencl

extern "C" __attribute__((visibility("default"))) const hops::BackendModule* hops_backend_module() {
  static const hops::BackendModule& module = hops::opencl::describe_module();
  return &module;
}
