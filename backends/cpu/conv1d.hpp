// The CPU kernels of the conv1d family (conv1d.cpp, conv1d_bwd.cpp);
// conv1d.cpp lists them for families.cpp.
#pragma once

#include "cpu_kernels.hpp"
#include "ops/conv1d.hpp"

namespace hops::cpu {

void conv1d_fwd(const ExecContext& context, const Conv1dFwd& op);
void conv1d_update(const ExecContext& context, const Conv1dUpdate& op);
void conv1d_bwd(const ExecContext& context, const Conv1dBwd& op);

}  // namespace hops::cpu
