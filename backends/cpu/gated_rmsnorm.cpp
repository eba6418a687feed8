// gated_rmsnorm: parallel over blocks of rows; each row is read into fp32,
// normalised and gated in vectorised loops, and written back.
#include <algorithm>

#include "cpu_kernels.hpp"

namespace hops::cpu {

namespace {

constexpr int64_t kRowsPerTask = 64;

// Rows [first, last): x and z rows land in the worker's buffers (2 D floats).
HOPS_VECTOR_CLONES void normalize_rows(const GatedRmsNorm& op, const float* __restrict weight,
                                       int64_t first, int64_t last, float* __restrict x,
                                       float* __restrict z) {
  const int64_t D = op.D;
  const auto eps = static_cast<float>(op.eps);
  for (int64_t row = first; row < last; ++row) {
    load_run(op.x, row_offset(op.x, row), op.x.step(-1), D, x);
    load_run(op.z, row_offset(op.z, row), op.z.step(-1), D, z);
    const float inv_rms = 1.0f / std::sqrt(dot(x, x, D) / static_cast<float>(D) + eps);
    for (int64_t d = 0; d < D; ++d) x[d] = x[d] * inv_rms * weight[d] * silu(z[d]);
    store_run(op.y, row_offset(op.y, row), op.y.step(-1), D, x);
  }
}

}  // namespace

void gated_rmsnorm(const ExecContext& context, const GatedRmsNorm& op) {
  const auto per_worker = static_cast<size_t>(2 * op.D);
  const auto scratch = context.scratch->acquire(
      (static_cast<size_t>(op.D) + per_worker * context.max_workers) * sizeof(float));
  float* weight = scratch.as<float>();
  load_run(op.weight, 0, op.weight.stride[0], op.D, weight);
  context.threads->parallel_for((op.rows + kRowsPerTask - 1) / kRowsPerTask, context.max_workers,
                                [&](int64_t task, int worker) {
                                  float* buffers = weight + op.D + worker * per_worker;
                                  normalize_rows(op, weight, task * kRowsPerTask,
                                                 std::min(op.rows, (task + 1) * kRowsPerTask),
                                                 buffers, buffers + op.D);
                                });
}

}  // namespace hops::cpu
