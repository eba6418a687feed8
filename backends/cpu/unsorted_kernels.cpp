// The CPU kernels of the families not yet in files of their own (families.cpp
// lists them with the others).
#include "cpu_kernels.hpp"

namespace hops::cpu {

std::span<const Kernel> unsorted_kernels() {
  static constexpr Kernel table[] = {
      kernel<GdnChunkFwd, &cpu::gdn_chunk_fwd>(HOPS_DTYPE_FLOATS),
      kernel<GdnRecurrent, &cpu::gdn_recurrent>(HOPS_DTYPE_FLOATS),
      kernel<GdnGating, &cpu::gdn_gating>(HOPS_DTYPE_FLOATS),
      kernel<Conv1dFwd, &cpu::conv1d_fwd>(HOPS_DTYPE_FLOATS),
      kernel<Conv1dUpdate, &cpu::conv1d_update>(HOPS_DTYPE_FLOATS),
      kernel<Conv1dBwd, &cpu::conv1d_bwd>(HOPS_DTYPE_FLOATS),
      kernel<GdnChunkBwd, &cpu::gdn_chunk_bwd>(HOPS_DTYPE_FLOATS),
  };
  return table;
}

}  // namespace hops::cpu
