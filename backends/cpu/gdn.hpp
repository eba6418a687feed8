// The CPU kernels of the gdn family (gdn_chunk.cpp, gdn_chunk_bwd.cpp,
// gdn_recurrent.cpp, gdn_gating.cpp); gdn.cpp lists them for families.cpp.
#pragma once

#include "cpu_kernels.hpp"
#include "ops/gdn.hpp"

namespace hops::cpu {

void gdn_chunk_fwd(const ExecContext& context, const GdnChunkFwd& op);
void gdn_recurrent(const ExecContext& context, const GdnRecurrent& op);
void gdn_gating(const ExecContext& context, const GdnGating& op);
void gdn_chunk_bwd(const ExecContext& context, const GdnChunkBwd& op);

}  // namespace hops::cpu
