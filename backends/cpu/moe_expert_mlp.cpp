// moe_expert_mlp: one task per row tile of one expert (moe.hpp). The
// products run transposed, so that the weights are the GEMM's packed operand
// (moe_gemm.cpp: transformers' [2I, Hd] and [Hd, I] layouts are read along
// their rows) and the tile's rows, transposed once, the streamed one:
//   (g; u)^T [2I, M] = W_gu [2I, Hd] rows^T [Hd, M]
//   h^T [I, M] = silu(g^T) * u^T, in place of g^T
//   out^T [Hd, M] = W_d [Hd, I] h^T [I, M]
// and out^T is transposed back into the tile's rows. With bf16 operands on
// a CPU with AMX-BF16, moe_gemm_amx.cpp runs the tiles instead.
#include <algorithm>

#include "checked_math.hpp"
#include "moe.hpp"
#include "moe_gemm_amx.hpp"

namespace hops::cpu {

namespace {

// gate[i] = silu(gate[i]) * up[i].
HOPS_VECTOR_CLONES void swiglu(float* __restrict gate, const float* __restrict up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = silu(gate[i]) * up[i];
}

// A worker's fp32 buffers, panel-major (moe.hpp), for tiles of up to Mp rows.
struct Buffers {
  float* rows_t;   // [Hd, Mp] the rows transposed, then out^T
  float* hidden;   // [2I, Mp] (g; u)^T, then h^T in the first I rows of each panel
  float* staging;  // [kPanel, Hd] rows converted from (or to) another dtype
  float* packed;   // the GEMM's packed weights
  float* row;      // [max(Hd, I)] a weight row converted to fp32 (few-row tiles)

  static int64_t floats(const MoeExpertMlp& op, int64_t Mp) {
    const std::string_view name = op.kName;
    return round_up(scratch_sum(name, scratch_size(name, op.Hd + 2 * op.I, Mp),
                                scratch_size(name, moe::kPanel, op.Hd), moe::packed_floats(),
                                std::max(op.Hd, op.I)),
                    kPadding);
  }
  Buffers(float* base, const MoeExpertMlp& op, int64_t Mp)
      : rows_t(base),
        hidden(rows_t + op.Hd * Mp),
        staging(hidden + 2 * op.I * Mp),
        packed(staging + moe::kPanel * op.Hd),
        row(packed + moe::packed_floats()) {}
};

// A tile of at most kFewRows rows (decoding: a token or two per expert) skips
// the GEMM, whose packed weights would serve only these few columns: each
// weight row is read once (converted to fp32 where it is not) and dotted with
// the tile's rows. Whether a tile is one depends only on its expert's rows
// (tiles are cut at 16 rows or more), not on the thread count.
constexpr int64_t kFewRows = 4;

// Row n of expert e's weights [E, rows, cols] as fp32.
const float* weight_row(const Tensor& w, int64_t e, int64_t n, int64_t cols, float* buffer) {
  if (w.dtype == DType::f32 && w.stride[2] == 1) return w.data<const float>() + w.offset(e, n, 0);
  load_run(w, w.offset(e, n, 0), w.stride[2], cols, buffer);
  return buffer;
}

// out[m * out_step + n] = dot(row n of w, row m of x) for the first N / 4 * 4
// rows of w (bf16, contiguous rows `w_step` apart) and the M rows of x
// (`x_step` apart), four weight rows at a time: they come from memory once
// and stay in L1 while every row of x passes. Each product keeps dot()'s 16
// lanes and order; the four rows' chains overlap, where one row converted
// and then dotted alone left the conversion and the adds' latency in line
// (decoding's bf16 experts ran at 13-14 GB/s of weights that way, 16-17 GB/s
// this way; f32 rows are dotted in place, which already streams at the copy
// bandwidth). Returns the rows done.
HOPS_VECTOR_CLONES int64_t dot_rows(const bf16* __restrict w, int64_t w_step, int64_t N, int64_t K,
                                    const float* __restrict x, int64_t x_step, int64_t M,
                                    float* __restrict out, int64_t out_step) {
  constexpr int kLanes = 16, kRows = 4;
  const int64_t blocks = N / kRows * kRows;
  for (int64_t n0 = 0; n0 < blocks; n0 += kRows) {
    for (int64_t m = 0; m < M; ++m) {
      const float* __restrict xm = x + m * x_step;
      float lanes[kRows][kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= K; i += kLanes) {
        for (int r = 0; r < kRows; ++r) {
          const bf16* __restrict wr = w + (n0 + r) * w_step + i;
          for (int l = 0; l < kLanes; ++l) lanes[r][l] += to_float(wr[l]) * xm[i + l];
        }
      }
      for (int r = 0; r < kRows; ++r) {
        float sum = 0.0f;
        for (int64_t j = i; j < K; ++j) sum += to_float(w[(n0 + r) * w_step + j]) * xm[j];
        for (const float lane : lanes[r]) sum += lane;
        out[m * out_step + n0 + r] = sum;
      }
    }
  }
  return blocks;
}

// out[m * out_step + n] = dot(row n of expert e's weights [E, N, K], row m of
// x): contiguous bf16 rows through dot_rows, the others one at a time (f32
// in place, other dtypes or strides converted into `row`).
HOPS_VECTOR_CLONES void weights_times(const Tensor& w, int64_t e, int64_t N, int64_t K,
                                      const float* x, int64_t x_step, int64_t M, float* out,
                                      int64_t out_step, float* row) {
  int64_t done = 0;
  if (w.dtype == DType::bf16 && w.stride[2] == 1) {
    done = dot_rows(w.data<const bf16>() + w.offset(e, 0, 0), w.stride[1], N, K, x, x_step, M, out,
                    out_step);
  }
  for (int64_t n = done; n < N; ++n) {
    const float* wn = weight_row(w, e, n, K, row);
    for (int64_t m = 0; m < M; ++m) out[m * out_step + n] = dot(wn, x + m * x_step, K);
  }
}

void run_few_rows(const MoeExpertMlp& op, const moe::RowTile& tile, const Buffers& b) {
  const int64_t M = tile.count, Hd = op.Hd, I = op.I, e = tile.expert;
  float* x = b.staging;  // [M, Hd] the rows, then out
  float* gu = b.hidden;  // [M, 2I] (g; u), then h in the first I of each row
  for (int64_t m = 0; m < M; ++m) {
    load_run(op.rows, op.rows.offset(tile.first + m, 0), op.rows.stride[1], Hd, x + m * Hd);
  }
  weights_times(op.gate_up_proj, e, 2 * I, Hd, x, Hd, M, gu, 2 * I, b.row);
  for (int64_t m = 0; m < M; ++m) swiglu(gu + m * 2 * I, gu + m * 2 * I + I, I);
  weights_times(op.down_proj, e, Hd, I, gu, 2 * I, M, x, Hd, b.row);
  for (int64_t m = 0; m < M; ++m) {
    store_run(op.out, op.out.offset(tile.first + m, 0), op.out.stride[1], Hd, x + m * Hd);
  }
}

void run_tile(const MoeExpertMlp& op, const moe::RowTile& tile, const Buffers& b) {
  if (tile.count <= kFewRows) return run_few_rows(op, tile, b);
  const int64_t M = tile.count, Mp = moe::panels(M) * moe::kPanel, Hd = op.Hd, I = op.I;
  const int64_t e = tile.expert;
  const Tensor &gate_up = op.gate_up_proj, &down = op.down_proj;
  moe::load_transposed(op.rows, tile.first, M, Hd, b.staging, b.rows_t);
  moe::packed_gemm({2 * I, Mp, Hd, moe::element(gate_up, gate_up.offset(e, 0, 0)), gate_up.dtype,
                    gate_up.stride[1], gate_up.stride[2], b.rows_t, Hd * moe::kPanel, b.hidden,
                    2 * I * moe::kPanel, false},
                   b.packed);
  for (int64_t j = 0; j < Mp; j += moe::kPanel) {
    float* panel = b.hidden + j * 2 * I;
    swiglu(panel, panel + I * moe::kPanel, I * moe::kPanel);
  }
  moe::packed_gemm(
      {Hd, Mp, I, moe::element(down, down.offset(e, 0, 0)), down.dtype, down.stride[1],
       down.stride[2], b.hidden, 2 * I * moe::kPanel, b.rows_t, Hd * moe::kPanel, false},
      b.packed);
  moe::store_transposed(b.rows_t, M, Hd, op.out, tile.first, b.staging);
}

}  // namespace

void moe_expert_mlp(const ExecContext& context, const MoeExpertMlp& op) {
  const std::string_view name = op.kName;
  const int64_t E = op.E;
  const auto index_lease =
      context.scratch->acquire(scratch_bytes(name, scratch_sum(name, E, 1), sizeof(int64_t)));
  int64_t* first = index_lease.as<int64_t>();
  moe::expert_offsets(op.counts, E, op.R, first);
  const int64_t tile_rows = moe::tile_rows(first[E], context.max_workers);
  const int64_t tiles = moe::list_row_tiles(first, E, tile_rows, nullptr);
  // Few-row tiles stream their weights through dot_rows on either path: AMX
  // would spend a 16-row tile on them.
  const bool amx = moe::amx::takes(op);
  const int64_t per_worker =
      amx ? std::max(moe::amx::worker_floats(op, tile_rows), Buffers::floats(op, kFewRows))
          : Buffers::floats(op, tile_rows);
  const int64_t tile_floats =
      round_up(scratch_size(name, tiles, sizeof(moe::RowTile) / sizeof(float)), kPadding);
  const auto lease = context.scratch->acquire(scratch_bytes(
      name, scratch_sum(name, tile_floats, scratch_size(name, per_worker, context.max_workers)),
      sizeof(float)));
  auto* tile_list = lease.as<moe::RowTile>();
  moe::list_row_tiles(first, E, tile_rows, tile_list);
  float* workers = lease.as<float>() + tile_floats;
  context.threads->parallel_for(tiles, context.max_workers, [&](int64_t task, int worker) {
    float* scratch = workers + worker * per_worker;
    const moe::RowTile& tile = tile_list[task];
    if (amx && tile.count > kFewRows) return moe::amx::expert_mlp_tile(op, tile, scratch);
    run_tile(op, tile, Buffers(scratch, op, amx ? kFewRows : tile_rows));
  });
  moe::zero_rows(context, op.out, first[E], op.R);
}

}  // namespace hops::cpu
