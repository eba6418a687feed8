// The embedded CPU backend (every op, f32/f16/bf16), one line per op family:
// a family's kernels are in backends/cpu/<family>*.cpp, which define
// cpu::<family>_kernels().
#include <vector>

#include "backend.hpp"

namespace hops {

namespace cpu {
std::span<const Kernel> gdn_kernels();
std::span<const Kernel> conv1d_kernels();
std::span<const Kernel> norm_kernels();
std::span<const Kernel> attn_kernels();
std::span<const Kernel> moe_kernels();
std::span<const Kernel> moe_ep_kernels();
}  // namespace cpu

std::span<const Kernel> cpu_kernels() {
  static const std::vector<Kernel> kernels = join_families({
      cpu::gdn_kernels(),
      cpu::conv1d_kernels(),
      cpu::norm_kernels(),
      cpu::attn_kernels(),
      cpu::moe_kernels(),
      cpu::moe_ep_kernels(),
  });
  return kernels;
}

}  // namespace hops
