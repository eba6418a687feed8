// The OpenCL kernels of the conv1d family (conv1d.cpp, conv1d_bwd.cpp, with
// conv1d.cl, conv1d_bwd.cl); conv1d.cpp lists them for families.cpp.
#pragma once

#include "backend.hpp"
#include "ops/conv1d.hpp"

namespace hops::opencl {

void conv1d_fwd(const ExecContext& exec, const Conv1dFwd& op);
void conv1d_update(const ExecContext& exec, const Conv1dUpdate& op);
void conv1d_bwd(const ExecContext& exec, const Conv1dBwd& op);

}  // namespace hops::opencl
