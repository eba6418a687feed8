// moe_expert_mlp: one task per row tile of one expert (moe.hpp). The
// products run transposed, so that the weights are read in place as the
// GEMM's broadcast operand (transformers' [2I, Hd] and [Hd, I] layouts are
// already what it wants) and only the tile's rows are packed:
//   (g; u)^T [2I, M] = W_gu [2I, Hd] rows^T [Hd, M]
//   h^T [I, M] = silu(g^T) * u^T, in place of g^T
//   out^T [Hd, M] = W_d [Hd, I] h^T [I, M]
// and out^T is transposed back into the tile's rows.
#include "checked_math.hpp"
#include "moe.hpp"

namespace hops::cpu {

namespace moe {

void load_transposed(const Tensor& t, int64_t first, int64_t M, int64_t Hd, int64_t Mp,
                     float* staging, float* out) {
  const Block rows =
      f32_block(t, t.offset(first, 0), t.stride[0], t.stride[1], M, Hd, Hd, true, staging);
  transpose(rows.data, rows.ld, M, Hd, out, Mp);
  if (M == Mp) return;
  for (int64_t d = 0; d < Hd; ++d) std::fill(out + d * Mp + M, out + (d + 1) * Mp, 0.0f);
}

void store_transposed(const float* in, int64_t Mp, int64_t M, int64_t Hd, const Tensor& t,
                      int64_t first, float* staging) {
  if (t.dtype == DType::f32 && t.stride[1] == 1) {
    return transpose(in, Mp, Hd, M, t.data<float>() + t.offset(first, 0), t.stride[0]);
  }
  transpose(in, Mp, Hd, M, staging, Hd);
  for (int64_t m = 0; m < M; ++m) {
    store_run(t, t.offset(first + m, 0), t.stride[1], Hd, staging + m * Hd);
  }
}

}  // namespace moe

namespace {

// gate[i] = silu(gate[i]) * up[i].
HOPS_VECTOR_CLONES void swiglu(float* __restrict gate, const float* __restrict up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = silu(gate[i]) * up[i];
}

// A worker's fp32 buffers; Mp = the tile's rows padded to kPadding.
struct Buffers {
  float* rows_t;   // [Hd, Mp] the rows transposed, then out^T
  float* hidden;   // [2I, Mp] (g; u)^T, then h^T in the first I rows
  float* staging;  // [Mp, Hd] rows converted from (or to) another dtype
  moe::ExpertWeights weights;

  static int64_t floats(const MoeExpertMlp& op, int64_t Mp) {
    const std::string_view name = op.kName;
    return round_up(scratch_sum(name, scratch_size(name, 2 * op.Hd + 2 * op.I, Mp),
                                moe::ExpertWeights::floats(name, op.gate_up_proj, op.down_proj)),
                    kPadding);
  }
  Buffers(float* base, const MoeExpertMlp& op, int64_t Mp)
      : rows_t(base),
        hidden(rows_t + op.Hd * Mp),
        staging(hidden + 2 * op.I * Mp),
        weights{staging + Mp * op.Hd, staging + Mp * op.Hd + 2 * op.I * op.Hd} {}
};

void run_tile(const MoeExpertMlp& op, const moe::RowTile& tile, Buffers& b) {
  const int64_t M = tile.count, Mp = round_up(M, kPadding), Hd = op.Hd, I = op.I;
  b.weights.load(op.gate_up_proj, op.down_proj, tile.expert);
  const moe::Block w_gu = b.weights.gate_up, w_d = b.weights.down;
  moe::load_transposed(op.rows, tile.first, M, Hd, Mp, b.staging, b.rows_t);
  gemm({2 * I, Mp, Hd, w_gu.data, w_gu.ld, b.rows_t, Mp, b.hidden, Mp, false, Shape::full});
  swiglu(b.hidden, b.hidden + I * Mp, I * Mp);
  gemm({Hd, Mp, I, w_d.data, w_d.ld, b.hidden, Mp, b.rows_t, Mp, false, Shape::full});
  moe::store_transposed(b.rows_t, Mp, M, Hd, op.out, tile.first, b.staging);
}

}  // namespace

void moe_expert_mlp(const ExecContext& context, const MoeExpertMlp& op) {
  const std::string_view name = op.kName;
  const int64_t E = op.E;
  const auto index_lease =
      context.scratch->acquire(scratch_bytes(name, scratch_sum(name, E, 1), sizeof(int64_t)));
  int64_t* first = index_lease.as<int64_t>();
  moe::expert_offsets(op.counts, E, op.R, first);
  const int64_t tiles = moe::list_row_tiles(first, E, nullptr);
  const int64_t per_worker = Buffers::floats(op, round_up(moe::kTileRows, kPadding));
  const int64_t tile_floats =
      round_up(scratch_size(name, tiles, sizeof(moe::RowTile) / sizeof(float)), kPadding);
  const auto lease = context.scratch->acquire(scratch_bytes(
      name, scratch_sum(name, tile_floats, scratch_size(name, per_worker, context.max_workers)),
      sizeof(float)));
  auto* tile_list = lease.as<moe::RowTile>();
  moe::list_row_tiles(first, E, tile_list);
  float* workers = lease.as<float>() + tile_floats;
  std::vector<Buffers> buffers;
  for (int w = 0; w < context.max_workers; ++w) {
    buffers.emplace_back(workers + w * per_worker, op, round_up(moe::kTileRows, kPadding));
  }
  context.threads->parallel_for(tiles, context.max_workers, [&](int64_t task, int worker) {
    run_tile(op, tile_list[task], buffers[worker]);
  });
  moe::zero_rows(context, op.out, first[E], op.R);
}

}  // namespace hops::cpu
