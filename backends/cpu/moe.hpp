// The CPU kernels of the MoE family (moe.cpp: the list and moe_route;
// moe_rows.cpp: dispatch, combine and their backwards; moe_expert_mlp.cpp and
// moe_expert_mlp_bwd.cpp: the grouped SwiGLU MLP as register-tiled GEMMs) and
// what they share.
#pragma once

#include <algorithm>

#include "cpu_kernels.hpp"
#include "ops/moe.hpp"
#include "small_gemm.hpp"

namespace hops::cpu {

void moe_route(const ExecContext& context, const MoeRoute& op);
void moe_dispatch(const ExecContext& context, const MoeDispatch& op);
void moe_expert_mlp(const ExecContext& context, const MoeExpertMlp& op);
void moe_combine(const ExecContext& context, const MoeCombine& op);
void moe_dispatch_bwd(const ExecContext& context, const MoeDispatchBwd& op);
void moe_expert_mlp_bwd(const ExecContext& context, const MoeExpertMlpBwd& op);
void moe_combine_bwd(const ExecContext& context, const MoeCombineBwd& op);

namespace moe {

// Element `offset` (in elements) of an i32 or i64 tensor.
inline int64_t load_index(const Tensor& t, int64_t offset) {
  return t.dtype == DType::i32 ? t.data<const int32_t>()[offset] : t.data<const int64_t>()[offset];
}
inline void store_index(const Tensor& t, int64_t offset, int64_t value) {
  if (t.dtype == DType::i32) {
    t.data<int32_t>()[offset] = static_cast<int32_t>(value);
  } else {
    t.data<int64_t>()[offset] = value;
  }
}

// Rows [first, last) of a [R, Hd] tensor set to zero, in parallel.
void zero_rows(const ExecContext& context, const Tensor& t, int64_t first, int64_t last);

// Where each expert's rows start: first[e] = sum of counts[<e], first[E] the
// rows used. Counts are clamped so that the running sum stays within R (a
// host-resident count was checked; the clamp is for the others).
inline void expert_offsets(const Tensor& counts, int64_t E, int64_t R, int64_t* first) {
  first[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t count = std::clamp<int64_t>(load_index(counts, e * counts.stride[0]), 0, R);
    first[e + 1] = first[e] + std::min(count, R - first[e]);
  }
}

// A block of rows of one expert: the unit of work of the expert MLP.
struct RowTile {
  int64_t expert, first, count;  // rows [first, first + count) of the grouped rows
};

// Up to kTileRows rows per tile; an expert with more rows is cut into tiles
// of near-equal size. Returns the number of tiles written to `tiles` (null:
// only counts them).
inline constexpr int64_t kTileRows = 192;
inline int64_t list_row_tiles(const int64_t* first, int64_t E, RowTile* tiles) {
  int64_t count = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = first[e + 1] - first[e];
    const int64_t parts = (rows + kTileRows - 1) / kTileRows;
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t begin = rows * p / parts, end = rows * (p + 1) / parts;
      if (tiles) tiles[count] = {e, first[e] + begin, end - begin};
      ++count;
    }
  }
  return count;
}

// An f32 row-major view [rows, cols] (leading dim ld) of a block of a 2-D
// slice of a float tensor: in place when it is f32 with unit column step
// (and `ld_wanted` allows it), else converted into `buffer` with leading
// dim `ld_wanted`, zeros past `cols`.
struct Block {
  const float* data;
  int64_t ld;
};
inline Block f32_block(const Tensor& t, int64_t offset, int64_t row_step, int64_t col_step,
                       int64_t rows, int64_t cols, int64_t ld_wanted, bool in_place_ok,
                       float* buffer) {
  if (in_place_ok && t.dtype == DType::f32 && col_step == 1) {
    return {t.data<const float>() + offset, row_step};
  }
  for (int64_t r = 0; r < rows; ++r) {
    load_run(t, offset + r * row_step, col_step, cols, buffer + r * ld_wanted);
    std::fill(buffer + r * ld_wanted + cols, buffer + (r + 1) * ld_wanted, 0.0f);
  }
  return {buffer, ld_wanted};
}

// The first M rows from `first` of a [R, Hd] tensor as f32, transposed into
// out [Hd, Mp] with zero columns past M (`staging` [M, Hd]: the rows
// converted first when they are not f32 with unit column step).
void load_transposed(const Tensor& t, int64_t first, int64_t M, int64_t Hd, int64_t Mp,
                     float* staging, float* out);
// The inverse: the first M columns of in [Hd, Mp] become rows [first, first + M) of t.
void store_transposed(const float* in, int64_t Mp, int64_t M, int64_t Hd, const Tensor& t,
                      int64_t first, float* staging);

// An expert's weights as f32 GEMM operands, [2I, Hd] and [Hd, I]: in place
// when they are f32 with a unit column step, else converted into a worker's
// buffers, which keep them while the worker's tiles are of the same expert.
struct ExpertWeights {
  float* gate_up_buffer;  // [2I, Hd]
  float* down_buffer;     // [Hd, I]
  int64_t loaded = -1;
  Block gate_up{}, down{};

  // The buffers' floats: none when both are read in place.
  static int64_t floats(std::string_view name, const Tensor& gate_up_proj,
                        const Tensor& down_proj) {
    auto in_place = [](const Tensor& t) { return t.dtype == DType::f32 && t.stride[2] == 1; };
    if (in_place(gate_up_proj) && in_place(down_proj)) return 0;
    return scratch_size(name, gate_up_proj.shape[1] + down_proj.shape[2], gate_up_proj.shape[2]);
  }
  void load(const Tensor& gate_up_proj, const Tensor& down_proj, int64_t e) {
    if (e == loaded) return;
    loaded = e;
    const int64_t I2 = gate_up_proj.shape[1], Hd = gate_up_proj.shape[2], I = down_proj.shape[2];
    gate_up = f32_block(gate_up_proj, gate_up_proj.offset(e, 0, 0), gate_up_proj.stride[1],
                        gate_up_proj.stride[2], I2, Hd, Hd, true, gate_up_buffer);
    down = f32_block(down_proj, down_proj.offset(e, 0, 0), down_proj.stride[1], down_proj.stride[2],
                     Hd, I, I, true, down_buffer);
  }
};

}  // namespace moe

}  // namespace hops::cpu
