// The norm family's float64 oracle: gated_rmsnorm and its backward.
#pragma once

#include "reference.hpp"

namespace hops::ref {

// y = x * rsqrt(mean(x^2) + eps) * weight * silu(z) over the last dim.
Array64 gated_rmsnorm(const Array64& x, const Array64& z, const Array64& weight, double eps);

// The gradients of gated_rmsnorm given dy (x's shape): dx, dz (x's shape) and
// dweight [D] (summed over all rows).
struct GatedRmsNormGrads {
  Array64 dx, dz, dweight;
};
GatedRmsNormGrads gated_rmsnorm_bwd(const Array64& x, const Array64& z, const Array64& weight,
                                    const Array64& dy, double eps);

}  // namespace hops::ref
