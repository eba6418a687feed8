// The CPU kernels of the MoE family (moe.cpp: the list and moe_route;
// moe_rows.cpp: dispatch, combine and their backwards; moe_expert_mlp.cpp and
// moe_expert_mlp_bwd.cpp: the grouped SwiGLU MLP on moe_gemm.cpp's GEMM) and
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

// Tiles of up to `tile_rows` rows; an expert with more rows is cut into tiles
// of near-equal size. Returns the number of tiles written to `tiles` (null:
// only counts them).
inline int64_t list_row_tiles(const int64_t* first, int64_t E, int64_t tile_rows, RowTile* tiles) {
  int64_t count = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = first[e + 1] - first[e];
    const int64_t parts = (rows + tile_rows - 1) / tile_rows;
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t begin = rows * p / parts, end = rows * (p + 1) / parts;
      if (tiles) tiles[count] = {e, first[e] + begin, end - begin};
      ++count;
    }
  }
  return count;
}

// Rows per tile: as many as kMaxTileRows (the weights, packed once per tile,
// then serve that many rows), fewer when the call has too few rows to keep
// every worker busy.
inline constexpr int64_t kMaxTileRows = 1024;
inline int64_t tile_rows(int64_t used_rows, int workers) {
  const int64_t per_task = (used_rows + 4 * workers - 1) / (4 * workers);
  return std::clamp<int64_t>(round_up(per_task, 32), 32, kMaxTileRows);
}

// The GEMM operands that are not weights are panel-major: a matrix [K, N] is
// stored as N / kPanel panels [K, kPanel], each contiguous, so that the
// register tiles read and write whole cache lines in sequence.
inline constexpr int64_t kPanel = 32;
inline int64_t panels(int64_t columns) { return (columns + kPanel - 1) / kPanel; }

// out [rows, cols] (+)= a [rows, depth] b [depth, cols] (moe_gemm.cpp). a,
// the weights' side, has any float dtype and strides: element (r, p) at
// a[r * a_row_step + p * a_depth_step] (elements of a_dtype); it is packed
// into fp32 micro-panels as it goes. b and out are fp32 and panel-major:
// element (p, j) of b at b[(j / kPanel) * b_panel_step + p * kPanel + j %
// kPanel], likewise out with out_panel_step; cols is a multiple of kPanel.
// Depth 0 without accumulate writes zeros.
struct PackedGemm {
  int64_t rows, cols, depth;
  const void* a;
  DType a_dtype;
  int64_t a_row_step, a_depth_step;
  const float* b;
  int64_t b_panel_step;
  float* out;
  int64_t out_panel_step;
  bool accumulate;
};
// `packed`: packed_floats() floats of the worker's scratch.
void packed_gemm(const PackedGemm& g, float* packed);
int64_t packed_floats();

// The M rows from `first` of a [R, Hd] tensor as fp32, transposed into the
// panel-major out [Hd, panels(M) * kPanel] (zero columns past M). `staging`
// [kPanel, Hd] holds rows converted from another dtype or stride.
void load_transposed(const Tensor& t, int64_t first, int64_t M, int64_t Hd, float* staging,
                     float* out);
// The inverse: the first M columns of in become rows [first, first + M) of t.
void store_transposed(const float* in, int64_t M, int64_t Hd, const Tensor& t, int64_t first,
                      float* staging);
// The n rows from `first` of a [R, cols] tensor as the panel-major out [n,
// panels(cols) * kPanel], zero past cols.
void load_panels(const Tensor& t, int64_t first, int64_t n, int64_t cols, float* out);
// Row r of the panel-major in [rows, panels(cols) * kPanel] as cols floats.
void panel_row(const float* in, int64_t rows, int64_t cols, int64_t r, float* out);

// Where element `offset` of a float tensor lies, for PackedGemm::a.
inline const void* element(const Tensor& t, int64_t offset) {
  return visit_float(t.dtype,
                     [&]<class T>(T) -> const void* { return t.data<const T>() + offset; });
}

}  // namespace moe

}  // namespace hops::cpu
