// libhops_opencl.so: the kernel table and the module's one exported symbol.
// Adding an OpenCL kernel adds one line to kKernels.
#include "context.hpp"
#include "ops.hpp"

namespace hops::opencl {

namespace {

// Errors leave the module as "<op>: <message>", as the plugin's own do.
template <class Op, void (*fn)(const ExecContext&, const Op&)>
void named(const ExecContext& exec, const Op& op) {
  try {
    fn(exec, op);
  } catch (const Error& e) {
    throw Error(e.status(), fmt::format("{}: {}", Op::kName, e.what()));
  }
}

template <class Op, void (*fn)(const ExecContext&, const Op&)>
constexpr Kernel entry() {
  // fp16 is storage only (vload_half/vstore_half), so every device runs every dtype.
  return kernel<Op, &named<Op, fn>>(HOPS_DTYPE_FLOATS);
}

constexpr Kernel kKernels[] = {
    entry<GdnChunkFwd, &gdn_chunk_fwd>(),
    entry<GdnRecurrent, &gdn_recurrent>(),
    entry<GdnGating, &gdn_gating>(),
    entry<GatedRmsNorm, &gated_rmsnorm>(),
    entry<Conv1dFwd, &conv1d_fwd>(),
    entry<Conv1dUpdate, &conv1d_update>(),
    entry<GatedRmsNormBwd, &gated_rmsnorm_bwd>(),
    entry<Conv1dBwd, &conv1d_bwd>(),
    entry<GdnChunkBwd, &gdn_chunk_bwd>(),
};

const BackendModule& describe_module() {
  static std::string detail;
  static BackendModule module{sizeof(BackendModule),
                              kModuleInterfaceVersion,
                              kModuleLayout,
                              "opencl",
                              kDLOpenCL,
                              0,
                              "",
                              1,
                              kKernels,
                              std::size(kKernels),
                              &last_error};
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
