// The gdn family's CPU kernels, for families.cpp.
#include "gdn.hpp"

namespace hops::cpu {

std::span<const Kernel> gdn_kernels() {
  static constexpr Kernel kernels[] = {
      kernel<GdnChunkFwd, &gdn_chunk_fwd>(HOPS_DTYPE_FLOATS),
      kernel<GdnRecurrent, &gdn_recurrent>(HOPS_DTYPE_FLOATS),
      kernel<GdnGating, &gdn_gating>(HOPS_DTYPE_FLOATS),
      kernel<GdnChunkBwd, &gdn_chunk_bwd>(HOPS_DTYPE_FLOATS),
  };
  return kernels;
}

}  // namespace hops::cpu
