// moe_expert_mlp_bwd in two passes.
// 1. One task per row tile (moe.hpp), transposed as in the forward:
//      (g; u)^T = W_gu rows^T, dh^T [I, M] = W_d^T d_out^T,
//      dg^T = dh^T * u^T * silu'(g^T), du^T = dh^T * silu(g^T), h^T = silu(g^T) * u^T,
//      d_rows^T [Hd, M] = W_gu^T (dg; du)^T,
//    and, when weight gradients are wanted, (dg; du)^T and h^T are kept for
//    every row as columns of [2I, R] and [I, R] matrices.
// 2. One task per block of an expert's weight-gradient rows:
//      d_gate_up[e] [2I, Hd] = (dg; du)^T [2I, n] rows [n, Hd]
//      d_down[e]^T [I, Hd] = h^T [I, n] d_out [n, Hd]
//    summed over the expert's rows in row order by one thread, whatever the
//    thread count (bitwise reproducible).
#include <vector>

#include "checked_math.hpp"
#include "moe.hpp"

namespace hops::cpu {

namespace {

// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g).
HOPS_VECTOR_CLONES void swiglu_bwd(float* __restrict gate, float* __restrict up,
                                   float* __restrict dh, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i], u = up[i], s = sigmoid(g), silu_g = g * s;
    const float d = dh[i];
    gate[i] = d * u * (s * (1.0f + g * (1.0f - s)));
    up[i] = d * silu_g;
    dh[i] = silu_g * u;
  }
}

// A worker's fp32 buffers in pass 1, panel-major (moe.hpp), for tiles of up
// to Mp rows.
struct TileBuffers {
  float* rows_t;   // [Hd, Mp] rows^T, then d_rows^T
  float* d_out_t;  // [Hd, Mp]
  float* hidden;   // [2I, Mp] (g; u)^T, then (dg; du)^T
  float* dh;       // [I, Mp] dh^T, then h^T
  float* staging;  // [kPanel, Hd]
  float* packed;   // the GEMM's packed weights

  static int64_t floats(const MoeExpertMlpBwd& op, int64_t Mp) {
    const std::string_view name = op.kName;
    return round_up(scratch_sum(name, scratch_size(name, 2 * op.Hd + 3 * op.I, Mp),
                                scratch_size(name, moe::kPanel, op.Hd), moe::packed_floats()),
                    kPadding);
  }
  TileBuffers(float* base, const MoeExpertMlpBwd& op, int64_t Mp)
      : rows_t(base),
        d_out_t(rows_t + op.Hd * Mp),
        hidden(d_out_t + op.Hd * Mp),
        dh(hidden + 2 * op.I * Mp),
        staging(dh + op.I * Mp),
        packed(staging + moe::kPanel * op.Hd) {}
};

// What pass 1 keeps for pass 2: columns r of [2I, ld] and [I, ld].
struct Kept {
  float* d_gate_up_t;  // (dg; du)^T, or null when not wanted
  float* h_t;          // h^T, or null when not wanted
  int64_t ld;          // the rows used
};

// Columns [0, M) of the panel-major in [rows, Mp] into columns [first,
// first + M) of the row-major out [rows, ld].
void unpanel(const float* in, int64_t rows, int64_t M, float* out, int64_t ld, int64_t first) {
  for (int64_t j = 0; j < M; j += moe::kPanel) {
    const float* panel = in + j * rows;
    const int64_t width = std::min(moe::kPanel, M - j);
    for (int64_t n = 0; n < rows; ++n) {
      std::copy_n(panel + n * moe::kPanel, width, out + n * ld + first + j);
    }
  }
}

void tile_backward(const MoeExpertMlpBwd& op, const moe::RowTile& tile, const TileBuffers& b,
                   const Kept& kept) {
  constexpr int64_t P = moe::kPanel;
  const int64_t M = tile.count, Mp = moe::panels(M) * P, Hd = op.Hd, I = op.I, e = tile.expert;
  const Tensor &gate_up = op.gate_up_proj, &down = op.down_proj;
  const void* w_gu = moe::element(gate_up, gate_up.offset(e, 0, 0));
  const void* w_d = moe::element(down, down.offset(e, 0, 0));
  moe::load_transposed(op.rows, tile.first, M, Hd, b.staging, b.rows_t);
  moe::load_transposed(op.d_out, tile.first, M, Hd, b.staging, b.d_out_t);
  moe::packed_gemm({2 * I, Mp, Hd, w_gu, gate_up.dtype, gate_up.stride[1], gate_up.stride[2],
                    b.rows_t, Hd * P, b.hidden, 2 * I * P, false},
                   b.packed);
  // dh^T = W_d^T d_out^T: element (i, d) of W_d^T is down[e][d][i].
  moe::packed_gemm({I, Mp, Hd, w_d, down.dtype, down.stride[2], down.stride[1], b.d_out_t, Hd * P,
                    b.dh, I * P, false},
                   b.packed);
  for (int64_t j = 0; j < Mp; j += P) {
    float* panel = b.hidden + j * 2 * I;
    swiglu_bwd(panel, panel + I * P, b.dh + j * I, I * P);
  }
  moe::packed_gemm({Hd, Mp, 2 * I, w_gu, gate_up.dtype, gate_up.stride[2], gate_up.stride[1],
                    b.hidden, 2 * I * P, b.rows_t, Hd * P, false},
                   b.packed);
  moe::store_transposed(b.rows_t, M, Hd, op.d_rows, tile.first, b.staging);
  if (kept.d_gate_up_t) unpanel(b.hidden, 2 * I, M, kept.d_gate_up_t, kept.ld, tile.first);
  if (kept.h_t) unpanel(b.dh, I, M, kept.h_t, kept.ld, tile.first);
}

// Pass 2's unit: gradient rows [begin, end) of expert e, of d_gate_up
// (rows < 2I) or of d_down^T (rows 2I..3I).
struct GradBlock {
  int64_t expert, begin, end;
};
constexpr int64_t kGradRows = 96;  // a multiple of moe_gemm's micro-panels (8 and 6 rows)
constexpr int64_t kDepth = 256;    // token rows per GEMM call (staged panel-major)

// out [rows, Hdp] (panel-major) = a [rows, n] (columns of kept, from the
// expert's first row) times the expert's n rows of `x` [R, Hd], in row order;
// `staging` holds kDepth of them panel-major.
void weight_gradient(const Tensor& x, const float* a, int64_t lda, int64_t rows, int64_t first,
                     int64_t n, int64_t Hd, float* staging, float* packed, float* out) {
  const int64_t Hdp = moe::panels(Hd) * moe::kPanel;
  for (int64_t p = 0; p < n || p == 0; p += kDepth) {
    const int64_t depth = std::min(kDepth, n - p);
    moe::load_panels(x, first + p, depth, Hd, staging);
    moe::packed_gemm({rows, Hdp, depth, a + p, DType::f32, lda, 1, staging, depth * moe::kPanel,
                      out, rows * moe::kPanel, p > 0},
                     packed);
    if (n == 0) break;
  }
}

void grad_block(const MoeExpertMlpBwd& op, const GradBlock& block, const int64_t* first,
                const Kept& kept, float* staging, float* packed, float* out) {
  const int64_t I = op.I, Hd = op.Hd, e = block.expert;
  const int64_t n = first[e + 1] - first[e], rows = block.end - block.begin;
  float* row = staging;  // free again once the GEMMs are done
  if (block.begin < 2 * I) {
    weight_gradient(op.rows, kept.d_gate_up_t + block.begin * kept.ld + first[e], kept.ld, rows,
                    first[e], n, Hd, staging, packed, out);
    const Tensor& d = op.d_gate_up_proj;
    for (int64_t r = 0; r < rows; ++r) {
      moe::panel_row(out, rows, Hd, r, row);
      store_run(d, d.offset(e, block.begin + r, 0), d.stride[2], Hd, row);
    }
    return;
  }
  const int64_t i0 = block.begin - 2 * I;
  weight_gradient(op.d_out, kept.h_t + i0 * kept.ld + first[e], kept.ld, rows, first[e], n, Hd,
                  staging, packed, out);
  // Row i of d_down^T is column i of d_down: fp32 with unit steps along I
  // takes each panel transposed, else a column at a time.
  const Tensor& d = op.d_down_proj;
  if (d.dtype == DType::f32 && d.stride[2] == 1) {
    for (int64_t j = 0; j < Hd; j += moe::kPanel) {
      transpose(out + j * rows, moe::kPanel, rows, std::min(moe::kPanel, Hd - j),
                d.data<float>() + d.offset(e, j, i0), d.stride[1]);
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    moe::panel_row(out, rows, Hd, r, row);
    store_run(d, d.offset(e, 0, i0 + r), d.stride[1], Hd, row);
  }
}

}  // namespace

void moe_expert_mlp_bwd(const ExecContext& context, const MoeExpertMlpBwd& op) {
  const std::string_view name = op.kName;
  const int64_t E = op.E, I = op.I, Hdp = moe::panels(op.Hd) * moe::kPanel;
  const auto index_lease =
      context.scratch->acquire(scratch_bytes(name, scratch_sum(name, E, 1), sizeof(int64_t)));
  int64_t* first = index_lease.as<int64_t>();
  moe::expert_offsets(op.counts, E, op.R, first);
  const int64_t used = first[E];
  const int64_t tile_rows = moe::tile_rows(used, context.max_workers);
  const int64_t tiles = moe::list_row_tiles(first, E, tile_rows, nullptr);
  const int64_t per_worker = std::max(
      TileBuffers::floats(op, tile_rows),
      scratch_sum(name, scratch_size(name, kGradRows + kDepth, Hdp), moe::packed_floats()));
  const bool want_gate_up = op.d_gate_up_proj.exists, want_down = op.d_down_proj.exists;
  const int64_t kept_gate_up = want_gate_up ? scratch_size(name, 2 * I, used) : 0;
  const int64_t kept_h = want_down ? scratch_size(name, I, used) : 0;
  const int64_t tile_floats =
      round_up(scratch_size(name, tiles, sizeof(moe::RowTile) / sizeof(float)), kPadding);
  const auto lease = context.scratch->acquire(
      scratch_bytes(name,
                    scratch_sum(name, tile_floats, round_up(kept_gate_up, kPadding), kept_h,
                                scratch_size(name, per_worker, context.max_workers)),
                    sizeof(float)));
  auto* tile_list = lease.as<moe::RowTile>();
  moe::list_row_tiles(first, E, tile_rows, tile_list);
  float* base = lease.as<float>() + tile_floats;
  const Kept kept{want_gate_up ? base : nullptr,
                  want_down ? base + round_up(kept_gate_up, kPadding) : nullptr, used};
  float* workers = base + round_up(round_up(kept_gate_up, kPadding) + kept_h, kPadding);

  context.threads->parallel_for(tiles, context.max_workers, [&](int64_t task, int worker) {
    tile_backward(op, tile_list[task], TileBuffers(workers + worker * per_worker, op, tile_rows),
                  kept);
  });
  moe::zero_rows(context, op.d_rows, used, op.R);
  if (!want_gate_up && !want_down) return;

  // Pass 2: the gradient rows of each expert in blocks: d_gate_up's 2I, then d_down^T's I.
  std::vector<GradBlock> blocks;
  auto add_blocks = [&](int64_t e, int64_t begin, int64_t end) {
    for (; begin < end; begin += kGradRows) {
      blocks.push_back({e, begin, std::min(end, begin + kGradRows)});
    }
  };
  for (int64_t e = 0; e < E; ++e) {
    if (want_gate_up) add_blocks(e, 0, 2 * I);
    if (want_down) add_blocks(e, 2 * I, 3 * I);
  }
  context.threads->parallel_for(static_cast<int64_t>(blocks.size()), context.max_workers,
                                [&](int64_t task, int worker) {
                                  float* out = workers + worker * per_worker;
                                  grad_block(op, blocks[task], first, kept, out + kGradRows * Hdp,
                                             out + (kGradRows + kDepth) * Hdp, out);
                                });
}

}  // namespace hops::cpu
