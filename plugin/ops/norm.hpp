// Gated RMSNorm: the normalisation of the GDN output in Qwen3.5.
#pragma once

#include "../op.hpp"

namespace hops {

struct GatedRmsNorm {
  static constexpr const char* kName = "gated_rmsnorm";
  static constexpr const char* kDoc =
      "y = x * rsqrt(mean(x^2) + eps) * weight * silu(z) over the last dim";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 0;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_gated_rmsnorm_fn;
  struct Arg {
    enum : int { x, z, weight, y, eps };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("x", HOPS_DTYPE_FLOATS, "[...,D]", "input"),
      input("z", HOPS_DTYPE_FLOATS, "[...,D]", "gate (shape and dtype of x)"),
      input("weight", HOPS_DTYPE_FLOATS, "[D]", "per-channel scale"),
      output("y", HOPS_DTYPE_FLOATS, "[...,D]", "output (shape and dtype of x)"),
      f64_scalar("eps", 1e-6, "added to the mean square"),
  };

  Tensor x, z, weight, y;
  int64_t rows = 0, D = 0;  // x viewed as [rows, D]
  double eps = 1e-6;
  static GatedRmsNorm check(const Call& call);
};

// Its backward: the row statistics are recomputed from x, nothing is saved.
struct GatedRmsNormBwd {
  static constexpr const char* kName = "gated_rmsnorm_bwd";
  static constexpr const char* kDoc =
      "backward of gated_rmsnorm: dx, dz and dweight (summed over rows) from dy";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 0;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_gated_rmsnorm_bwd_fn;
  struct Arg {
    enum : int { x, z, weight, dy, dx, dz, dweight, eps };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("x", HOPS_DTYPE_FLOATS, "[...,D]", "forward input"),
      input("z", HOPS_DTYPE_FLOATS, "[...,D]", "forward gate (shape and dtype of x)"),
      input("weight", HOPS_DTYPE_FLOATS, "[D]", "per-channel scale"),
      input("dy", HOPS_DTYPE_FLOATS, "[...,D]", "gradient of y (shape and dtype of x)"),
      output("dx", HOPS_DTYPE_FLOATS, "[...,D]", "gradient of x (shape and dtype of x)"),
      output("dz", HOPS_DTYPE_FLOATS, "[...,D]", "gradient of z (shape and dtype of x)"),
      output("dweight", HOPS_DTYPE_FLOATS, "[D]", "gradient of weight (dtype of weight)"),
      f64_scalar("eps", 1e-6, "added to the mean square, as in the forward"),
  };

  Tensor x, z, weight, dy, dx, dz, dweight;
  int64_t rows = 0, D = 0;  // x viewed as [rows, D]
  double eps = 1e-6;
  static GatedRmsNormBwd check(const Call& call);
};

// The family's ops with their ABI indices (plugin/families.cpp lists the families).
std::span<const OpEntry> norm_ops();

}  // namespace hops
