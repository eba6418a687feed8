// The norm family's host side: gated_rmsnorm (elementwise.cu) and
// gated_rmsnorm_bwd (norm_bwd.cu).
#include "cuda_host.hpp"
#include "ops/norm.hpp"

namespace hops::cuda {

namespace {

void gated_rmsnorm(const ExecContext& context, const GatedRmsNorm& op) {
  if (op.rows == 0 || op.D == 0) return;
  const DeviceGuard guard(context, op.kName);
  const NormParams p{make_rows(op.x),           make_rows(op.z), make_rows(op.y),
                     make_arg(op.weight),       op.rows,         op.D,
                     static_cast<float>(op.eps)};
  check(launch_gated_rmsnorm(p, code_of(op.x.dtype), guard.stream()), op.kName,
        "rmsnorm kernel launch");
}

void gated_rmsnorm_bwd(const ExecContext& context, const GatedRmsNormBwd& op) {
  if (op.D == 0) return;
  const DeviceGuard guard(context, op.kName);
  const int dtype = code_of(op.x.dtype);
  const NormBwdParams p{
      make_rows(op.x),
      make_rows(op.z),
      make_rows(op.dy),
      make_rows(op.dx),
      make_rows(op.dz),
      make_arg(op.weight),
      make_arg(op.dweight),
      op.rows,
      op.D,
      static_cast<float>(op.eps),
      vector_rows({&op.x, &op.z, &op.dy, &op.dx, &op.dz}, 16 / dtype_size(op.x.dtype))};
  const Scratch scratch(gated_rmsnorm_bwd_scratch_bytes(p, dtype), guard, op.kName);
  check(launch_gated_rmsnorm_bwd(p, dtype, scratch.data(), guard.stream()), op.kName,
        "gated_rmsnorm_bwd kernels launch");
}

}  // namespace

std::span<const Kernel> norm_kernels() {
  static const Kernel kernels[] = {
      kernel<GatedRmsNorm, &gated_rmsnorm>(kFloats),
      kernel<GatedRmsNormBwd, &gated_rmsnorm_bwd>(kFloats),
  };
  return kernels;
}

}  // namespace hops::cuda
