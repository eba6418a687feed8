// gated_rmsnorm_bwd: rows are cut into chunks whose size depends on the row
// count only, and the chunks run in parallel. Each chunk writes dx and dz of
// its rows and sums its share of dweight in double; the shares are added in
// chunk order, so dweight is the same whatever the number of threads.
#include <algorithm>

#include "checked_math.hpp"
#include "norm.hpp"

namespace hops::cpu {

namespace {

constexpr int64_t kMinRowsPerChunk = 64;
constexpr int64_t kMaxChunks = 256;  // bounds the dweight shares to kMaxChunks x D doubles
constexpr int64_t kColumnBlock = 256;
constexpr int64_t kRowBuffers = 5;  // per worker: x, z, dy, dx, dz rows of D floats

// Rows [first, last) in fp32, through the worker's kRowBuffers rows.
// With n = x * inv_rms and y = n * weight * silu(z):
//   dn = dy * weight * silu(z)
//   dx = inv_rms * (dn - x * inv_rms^2 * mean(dn * x))
//   dz = dy * n * weight * silu'(z)
//   dweight += dy * n * silu(z)   (added to `dweight_share` in double)
HOPS_VECTOR_CLONES void backward_rows(const GatedRmsNormBwd& op, const float* __restrict weight,
                                      int64_t first, int64_t last, float* buffers,
                                      double* __restrict dweight_share) {
  const int64_t D = op.D;
  float* __restrict x = buffers;
  float* __restrict z = buffers + D;
  float* __restrict dy = buffers + 2 * D;
  float* __restrict dx = buffers + 3 * D;
  float* __restrict dz = buffers + 4 * D;
  const auto eps = static_cast<float>(op.eps);
  const RowOffsets x_rows(op.x), z_rows(op.z), dy_rows(op.dy), dx_rows(op.dx), dz_rows(op.dz);
  for (int64_t row = first; row < last; ++row) {
    load_run(op.x, x_rows(row), op.x.step(-1), D, x);
    load_run(op.z, z_rows(row), op.z.step(-1), D, z);
    load_run(op.dy, dy_rows(row), op.dy.step(-1), D, dy);
    const float inv_rms = 1.0f / std::sqrt(dot(x, x, D) / static_cast<float>(D) + eps);
    for (int64_t d = 0; d < D; ++d) {
      const float gate = sigmoid(z[d]);
      const float silu_z = z[d] * gate;
      const float silu_grad = gate * (1.0f + z[d] * (1.0f - gate));
      const float n = x[d] * inv_rms;
      dx[d] = dy[d] * weight[d] * silu_z;  // dn, until the correction below
      dz[d] = dy[d] * n * weight[d] * silu_grad;
      dweight_share[d] += static_cast<double>(dy[d] * n * silu_z);
    }
    const float correction = inv_rms * inv_rms * dot(dx, x, D) / static_cast<float>(D);
    for (int64_t d = 0; d < D; ++d) dx[d] = inv_rms * (dx[d] - x[d] * correction);
    store_run(op.dx, dx_rows(row), op.dx.step(-1), D, dx);
    store_run(op.dz, dz_rows(row), op.dz.step(-1), D, dz);
  }
}

}  // namespace

void gated_rmsnorm_bwd(const ExecContext& context, const GatedRmsNormBwd& op) {
  const int64_t D = op.D;
  const int64_t rows_per_chunk =
      std::max(kMinRowsPerChunk, (op.rows + kMaxChunks - 1) / kMaxChunks);
  const int64_t chunks = (op.rows + rows_per_chunk - 1) / rows_per_chunk;
  const int64_t per_worker = scratch_size(op.kName, kRowBuffers, D);
  const auto floats = context.scratch->acquire(scratch_bytes(
      op.kName, scratch_sum(op.kName, D, scratch_size(op.kName, per_worker, context.max_workers)),
      sizeof(float)));
  const auto shares = context.scratch->acquire(scratch_bytes(op.kName, chunks, D, sizeof(double)));
  float* weight = floats.as<float>();
  load_run(op.weight, 0, op.weight.stride[0], D, weight);

  context.threads->parallel_for(chunks, context.max_workers, [&](int64_t chunk, int worker) {
    double* share = shares.as<double>() + chunk * D;
    std::fill_n(share, D, 0.0);
    backward_rows(op, weight, chunk * rows_per_chunk,
                  std::min(op.rows, (chunk + 1) * rows_per_chunk), weight + D + worker * per_worker,
                  share);
  });

  // dweight: the chunks' shares added in chunk order.
  const int64_t blocks = (D + kColumnBlock - 1) / kColumnBlock;
  context.threads->parallel_for(blocks, context.max_workers, [&](int64_t block, int) {
    const int64_t d0 = block * kColumnBlock, count = std::min(kColumnBlock, D - d0);
    double sum[kColumnBlock] = {};
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const double* share = shares.as<double>() + chunk * D + d0;
      for (int64_t c = 0; c < count; ++c) sum[c] += share[c];
    }
    float result[kColumnBlock];
    for (int64_t c = 0; c < count; ++c) result[c] = static_cast<float>(sum[c]);
    store_run(op.dweight, d0 * op.dweight.stride[0], op.dweight.stride[0], count, result);
  });
}

}  // namespace hops::cpu
