// The OpenCL kernels of the families not yet in files of their own
// (families.cpp lists them with the others).
#include "family.hpp"
#include "ops.hpp"

namespace hops::opencl {

std::span<const Kernel> unsorted_kernels() {
  static constexpr Kernel kernels[] = {
      entry<GdnChunkFwd, &gdn_chunk_fwd>(),  entry<GdnRecurrent, &gdn_recurrent>(),
      entry<GdnGating, &gdn_gating>(),       entry<Conv1dFwd, &conv1d_fwd>(),
      entry<Conv1dUpdate, &conv1d_update>(), entry<Conv1dBwd, &conv1d_bwd>(),
      entry<GdnChunkBwd, &gdn_chunk_bwd>(),
  };
  return kernels;
}

}  // namespace hops::opencl
