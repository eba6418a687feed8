// The CPU kernels of the norm family (norm.cpp, norm_bwd.cpp); norm.cpp
// lists them for families.cpp.
#pragma once

#include "cpu_kernels.hpp"
#include "ops/norm.hpp"

namespace hops::cpu {

void gated_rmsnorm(const ExecContext& context, const GatedRmsNorm& op);
void gated_rmsnorm_bwd(const ExecContext& context, const GatedRmsNormBwd& op);

}  // namespace hops::cpu
