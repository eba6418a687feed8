// The OpenCL backend's op families, one line each: a family's kernels are in
// <family>*.cpp (host code, which lists them) and <family>*.cl (its programs).
#include <vector>

#include "family.hpp"
#include "ops/gdn.hpp"

namespace hops::opencl {

std::span<const Kernel> gdn_kernels();
std::span<const Kernel> conv1d_kernels();
std::span<const Kernel> norm_kernels();
std::span<const Kernel> attn_kernels();
std::span<const Kernel> moe_kernels();

namespace {

// GDN options of ABI 1.3 that the OpenCL GDN kernels (gdn.cpp) do not read
// yet: a beta_mode other than "sigmoid exactly with the fused gate" (the gate
// without the sigmoid, the sigmoid without the gate, 2 sigmoid). Such calls
// are refused here, ahead of the kernel's own check if it has one, so they
// return HOPS_ERR_UNSUPPORTED instead of running with the wrong beta; to be
// dropped once gdn.cpp's kernels take op.beta_mode (issue 20).
template <class Op>
struct BetaModeRefusal {
  static inline AcceptsFn next = nullptr;
  static hops_status accepts(const void* args) noexcept {
    const Op& op = *static_cast<const Op*>(args);
    if (!op.beta_follows_gate()) {
      return guarded([&] {
        fail(HOPS_ERR_UNSUPPORTED,
             "{}: the OpenCL kernels do not implement beta_mode {} {} the fused gate yet",
             Op::kName, static_cast<int64_t>(op.beta_mode), op.fused_gating() ? "with" : "without");
      });
    }
    return next ? next(args) : HOPS_OK;
  }
};

template <class Op>
void refuse_beta_modes(std::vector<Kernel>& kernels) {
  for (Kernel& kernel : kernels) {
    if (std::string_view(kernel.op) != Op::kName) continue;
    BetaModeRefusal<Op>::next = kernel.accepts;
    kernel.accepts = &BetaModeRefusal<Op>::accepts;
  }
}

std::vector<Kernel> gdn_kernels_with_refusals() {
  std::vector<Kernel> kernels(gdn_kernels().begin(), gdn_kernels().end());
  refuse_beta_modes<GdnChunkFwd>(kernels);
  refuse_beta_modes<GdnRecurrent>(kernels);
  return kernels;
}

}  // namespace

std::span<const Kernel> all_kernels() {
  static const std::vector<Kernel> gdn = gdn_kernels_with_refusals();
  static const std::vector<Kernel> kernels = join_families({
      gdn,
      conv1d_kernels(),
      norm_kernels(),
      attn_kernels(),
      moe_kernels(),
  });
  return kernels;
}

}  // namespace hops::opencl
