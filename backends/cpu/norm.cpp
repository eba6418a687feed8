// gated_rmsnorm: parallel over blocks of rows; each row is read into fp32,
// normalised and gated in vectorised loops, and written back.
#include <algorithm>

#include "checked_math.hpp"
#include "norm.hpp"

namespace hops::cpu {

namespace {

constexpr int64_t kRowsPerTask = 64;

// Rows [first, last); `x` and `z` are the worker's D-float row buffers.
template <class T>
[[gnu::always_inline]] inline void normalize_rows(const GatedRmsNorm& op,
                                                  const float* __restrict weight, int64_t first,
                                                  int64_t last, float* __restrict x,
                                                  float* __restrict z) {
  const int64_t D = op.D, xs = op.x.step(-1), zs = op.z.step(-1), ys = op.y.step(-1);
  const RowOffsets x_rows(op.x), z_rows(op.z), y_rows(op.y);
  const auto eps = static_cast<float>(op.eps);
  for (int64_t row = first; row < last; ++row) {
    const T* x_in = op.x.data<const T>() + x_rows(row);
    const T* z_in = op.z.data<const T>() + z_rows(row);
    for (int64_t d = 0; d < D; ++d) x[d] = to_float(x_in[d * xs]);
    for (int64_t d = 0; d < D; ++d) z[d] = to_float(z_in[d * zs]);
    const float inv_rms = 1.0f / std::sqrt(dot(x, x, D) / static_cast<float>(D) + eps);
    T* y = op.y.data<T>() + y_rows(row);
    for (int64_t d = 0; d < D; ++d)
      y[d * ys] = from_float<T>(x[d] * inv_rms * weight[d] * silu(z[d]));
  }
}

// One instance per storage dtype, each compiled per ISA level.
HOPS_VECTOR_CLONES void normalize_rows_f32(const GatedRmsNorm& op, const float* weight,
                                           int64_t first, int64_t last, float* x, float* z) {
  normalize_rows<float>(op, weight, first, last, x, z);
}
HOPS_VECTOR_CLONES void normalize_rows_bf16(const GatedRmsNorm& op, const float* weight,
                                            int64_t first, int64_t last, float* x, float* z) {
  normalize_rows<bf16>(op, weight, first, last, x, z);
}
HOPS_VECTOR_CLONES void normalize_rows_f16(const GatedRmsNorm& op, const float* weight,
                                           int64_t first, int64_t last, float* x, float* z) {
  normalize_rows<f16>(op, weight, first, last, x, z);
}

}  // namespace

void gated_rmsnorm(const ExecContext& context, const GatedRmsNorm& op) {
  const int64_t per_worker = scratch_size(op.kName, 2, op.D);
  const auto scratch = context.scratch->acquire(scratch_bytes(
      op.kName,
      scratch_sum(op.kName, op.D, scratch_size(op.kName, per_worker, context.max_workers)),
      sizeof(float)));
  float* weight = scratch.as<float>();
  load_run(op.weight, 0, op.weight.stride[0], op.D, weight);
  const auto normalize = op.x.dtype == DType::bf16  ? &normalize_rows_bf16
                         : op.x.dtype == DType::f16 ? &normalize_rows_f16
                                                    : &normalize_rows_f32;
  context.threads->parallel_for((op.rows + kRowsPerTask - 1) / kRowsPerTask, context.max_workers,
                                [&](int64_t task, int worker) {
                                  float* buffers = weight + op.D + worker * per_worker;
                                  normalize(op, weight, task * kRowsPerTask,
                                            std::min(op.rows, (task + 1) * kRowsPerTask), buffers,
                                            buffers + op.D);
                                });
}

std::span<const Kernel> norm_kernels() {
  static constexpr Kernel kernels[] = {
      kernel<GatedRmsNorm, &gated_rmsnorm>(HOPS_DTYPE_FLOATS),
      kernel<GatedRmsNormBwd, &gated_rmsnorm_bwd>(HOPS_DTYPE_FLOATS),
  };
  return kernels;
}

}  // namespace hops::cpu
