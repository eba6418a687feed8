// gated_rmsnorm: one row of D channels per step, parallel over rows.
#include "cpu_kernels.hpp"

namespace hops::cpu {

namespace {

template <class T>
void normalize_rows(const ExecContext& context, const GatedRmsNorm& op, const float* weight) {
  constexpr int64_t kRowsPerTask = 64;
  const int64_t D = op.D;
  const int64_t xs = op.x.step(-1), zs = op.z.step(-1), ys = op.y.step(-1);
  const auto eps = static_cast<float>(op.eps);
  context.threads->parallel_for(
      (op.rows + kRowsPerTask - 1) / kRowsPerTask, context.max_workers, [&](int64_t task, int) {
        const int64_t last = std::min(op.rows, (task + 1) * kRowsPerTask);
        for (int64_t row = task * kRowsPerTask; row < last; ++row) {
          const T* x = op.x.data<const T>() + row_offset(op.x, row);
          const T* z = op.z.data<const T>() + row_offset(op.z, row);
          T* y = op.y.data<T>() + row_offset(op.y, row);
          float sum_squares = 0.0f;
          for (int64_t d = 0; d < D; ++d) {
            const float v = to_float(x[d * xs]);
            sum_squares += v * v;
          }
          const float inv_rms = 1.0f / std::sqrt(sum_squares / static_cast<float>(D) + eps);
          for (int64_t d = 0; d < D; ++d) {
            y[d * ys] = from_float<T>(to_float(x[d * xs]) * inv_rms * weight[d] *
                                      silu(to_float(z[d * zs])));
          }
        }
      });
}

}  // namespace

void gated_rmsnorm(const ExecContext& context, const GatedRmsNorm& op) {
  const auto weight = context.scratch->acquire(static_cast<size_t>(op.D) * sizeof(float));
  load_run(op.weight, 0, op.weight.stride[0], op.D, weight.as<float>());
  visit_float(op.x.dtype, [&]<class T>(T) { normalize_rows<T>(context, op, weight.as<float>()); });
}

}  // namespace hops::cpu
