// The OpenCL kernels of each op, one op family per file (gdn.cpp,
// gdn_bwd.cpp, conv1d.cpp, conv1d_bwd.cpp, norm.cpp); module.cpp lists them.
#pragma once

#include "backend.hpp"
#include "ops/conv1d.hpp"
#include "ops/gdn.hpp"

namespace hops::opencl {

void gdn_chunk_fwd(const ExecContext& exec, const GdnChunkFwd& op);
void gdn_recurrent(const ExecContext& exec, const GdnRecurrent& op);
void gdn_gating(const ExecContext& exec, const GdnGating& op);
void conv1d_fwd(const ExecContext& exec, const Conv1dFwd& op);
void conv1d_update(const ExecContext& exec, const Conv1dUpdate& op);
void conv1d_bwd(const ExecContext& exec, const Conv1dBwd& op);
void gdn_chunk_bwd(const ExecContext& exec, const GdnChunkBwd& op);

}  // namespace hops::opencl
