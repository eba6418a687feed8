// What the GDN forward (gdn.cpp) and backward (gdn_bwd.cpp) share: the
// per-token data of gdn_prepare and the state layout the kernels take.
#pragma once

#include "call.hpp"
#include "ops/gdn.hpp"

namespace hops::opencl {

// The kernels take H, HV, K and V as int: HOPS_ERR_UNSUPPORTED naming the op
// (`name`) when one does not fit.
void check_kernel_ints(const GdnProblem& op, const char* name);

// Decay, beta and the l2 norms of every (b, t, hv) (TOKEN_INFO floats each,
// common.cl), computed by gdn_prepare into a scratch buffer.
cl_mem prepare_tokens(Call& call, const GdnProblem& op);

// A state tensor's strides as the kernels take them: (index, hv, k step, v step).
cl_long4 state_steps(const Tensor& state, bool v_first);

}  // namespace hops::opencl
