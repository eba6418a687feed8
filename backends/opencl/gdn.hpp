// The OpenCL kernels of the gdn family (gdn.cpp, gdn_bwd.cpp, gdn_gating.cpp,
// with gdn.cl, gdn_bwd.cl, gdn_gating.cl); gdn.cpp lists them for families.cpp.
#pragma once

#include "backend.hpp"
#include "ops/gdn.hpp"

namespace hops::opencl {

void gdn_chunk_fwd(const ExecContext& exec, const GdnChunkFwd& op);
void gdn_recurrent(const ExecContext& exec, const GdnRecurrent& op);
void gdn_gating(const ExecContext& exec, const GdnGating& op);
void gdn_chunk_bwd(const ExecContext& exec, const GdnChunkBwd& op);

}  // namespace hops::opencl
