// The CPU backend's kernels, one op family per file, and the small helpers
// they share. Kernels compute in fp32 whatever the storage dtype.
#pragma once

#include <cmath>

#include "backend.hpp"
#include "ops/conv1d.hpp"
#include "ops/gdn.hpp"
#include "ops/norm.hpp"
#include "scratch_pool.hpp"
#include "thread_pool.hpp"

namespace hops::cpu {

void gdn_chunk_fwd(const ExecContext& context, const GdnChunkFwd& op);
void gdn_recurrent(const ExecContext& context, const GdnRecurrent& op);
void gdn_gating(const ExecContext& context, const GdnGating& op);
void gated_rmsnorm(const ExecContext& context, const GatedRmsNorm& op);
void conv1d_fwd(const ExecContext& context, const Conv1dFwd& op);
void conv1d_update(const ExecContext& context, const Conv1dUpdate& op);

// ---- shared helpers ----------------------------------------------------------

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float silu(float x) { return x * sigmoid(x); }
// torch.nn.functional.softplus: linear above the threshold.
inline float softplus(float x, float beta, float threshold) {
  return beta * x > threshold ? x : std::log1p(std::exp(beta * x)) / beta;
}

// Element `offset` (in elements) of a float tensor, as float.
inline float load(const Tensor& t, int64_t offset) {
  return visit_float(t.dtype, [&]<class T>(T) { return to_float(t.data<const T>()[offset]); });
}
inline void store(const Tensor& t, int64_t offset, float value) {
  visit_float(t.dtype, [&]<class T>(T) { t.data<T>()[offset] = from_float<T>(value); });
}

// count elements from `offset` with stride `step`, as floats: one dtype
// dispatch for the whole run instead of one per element.
inline void load_run(const Tensor& t, int64_t offset, int64_t step, int64_t count, float* out) {
  visit_float(t.dtype, [&]<class T>(T) {
    const T* in = t.data<const T>() + offset;
    for (int64_t i = 0; i < count; ++i) out[i] = to_float(in[i * step]);
  });
}
inline void store_run(const Tensor& t, int64_t offset, int64_t step, int64_t count,
                      const float* in) {
  visit_float(t.dtype, [&]<class T>(T) {
    T* out = t.data<T>() + offset;
    for (int64_t i = 0; i < count; ++i) out[i * step] = from_float<T>(in[i]);
  });
}

// Offset of row `row` when the tensor is viewed as [rows, last dim]: the
// leading dims may have any strides, so the row index is decomposed.
inline int64_t row_offset(const Tensor& t, int64_t row) {
  int64_t offset = 0;
  for (int d = t.ndim - 2; d >= 0; --d) {
    offset += (row % t.shape[d]) * t.stride[d];
    row /= t.shape[d];
  }
  return offset;
}

}  // namespace hops::cpu
