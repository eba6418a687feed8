// Backend modules for the loader test. As libhops_testdev.so it loads, but
// its device runtime is "missing", as a CUDA module is on a machine without a
// driver. Built with HOPS_STALE_MODULE (libhops_stale.so) it claims another
// layout fingerprint, as a module left over from an older build would; with
// HOPS_STALE_KERNEL (libhops_stalekernel.so), one kernel was built for
// another layout of its op struct.
#include "backend.hpp"
#include "ops/norm.hpp"

namespace {

const char* no_error() { return ""; }

void no_run(const hops::ExecContext&, const hops::GatedRmsNorm&) {}

#if defined(HOPS_STALE_KERNEL)
const hops::Kernel kKernels[] = {
    {"gated_rmsnorm", HOPS_DTYPE_F32, nullptr, nullptr, hops::op_layout<hops::GatedRmsNorm>() ^ 1}};
#else
const hops::Kernel kKernels[] = {hops::kernel<hops::GatedRmsNorm, &no_run>(HOPS_DTYPE_F32)};
#endif

#if defined(HOPS_STALE_MODULE)
constexpr uint64_t kLayout = hops::kModuleLayout ^ 0x5a5a;
#else
constexpr uint64_t kLayout = hops::kModuleLayout;
#endif

const hops::BackendModule kModule{sizeof(hops::BackendModule),
                                  hops::kModuleInterfaceVersion,
                                  kLayout,
                                  "testdev",
                                  kDLExtDev,
                                  0,
                                  "no test device on this machine",
                                  5,
                                  kKernels,
                                  std::size(kKernels),
                                  &no_error};

}  // namespace

extern "C" __attribute__((visibility("default"))) const hops::BackendModule* hops_backend_module() {
  return &kModule;
}
