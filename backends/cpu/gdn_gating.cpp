// gdn_gating: elementwise, parallel over rows of [rows, HV].
#include "gdn.hpp"

namespace hops::cpu {

void gdn_gating(const ExecContext& context, const GdnGating& op) {
  constexpr int64_t kRowsPerTask = 256;
  const auto beta = static_cast<float>(op.softplus_beta);
  const auto threshold = static_cast<float>(op.softplus_threshold);
  context.threads->parallel_for(
      (op.rows + kRowsPerTask - 1) / kRowsPerTask, context.max_workers, [&](int64_t task, int) {
        const int64_t last = std::min(op.rows, (task + 1) * kRowsPerTask);
        const RowOffsets a_rows(op.a), b_rows(op.b), g_rows(op.g), beta_rows(op.beta);
        for (int64_t row = task * kRowsPerTask; row < last; ++row) {
          const int64_t a_row = a_rows(row), b_row = b_rows(row);
          const int64_t g_row = g_rows(row), beta_row = beta_rows(row);
          for (int64_t h = 0; h < op.HV; ++h) {
            const float a = load(op.a, a_row + h * op.a.step(-1));
            const float dt_bias = load(op.dt_bias, h * op.dt_bias.stride[0]);
            const float A = std::exp(load(op.A_log, h * op.A_log.stride[0]));
            store(op.g, g_row + h * op.g.step(-1), -A * softplus(a + dt_bias, beta, threshold));
            store(op.beta, beta_row + h * op.beta.step(-1),
                  sigmoid(load(op.b, b_row + h * op.b.step(-1))));
          }
        }
      });
}

}  // namespace hops::cpu
