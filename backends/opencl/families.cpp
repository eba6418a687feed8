// The OpenCL backend's op families, one line each: a family's kernels are in
// <family>*.cpp (host code, which lists them) and <family>*.cl (its programs).
#include <vector>

#include "family.hpp"

namespace hops::opencl {

std::span<const Kernel> gdn_kernels();
std::span<const Kernel> conv1d_kernels();
std::span<const Kernel> norm_kernels();
std::span<const Kernel> attn_kernels();
std::span<const Kernel> moe_kernels();
std::span<const Kernel> moe_ep_kernels();

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

}  // namespace hops::opencl
