// The MoE kernels' GEMM (moe.hpp), blocked as GotoBLAS does, and the
// panel-major layout of its other operands. a, the weights, is packed block by
// block (kDepth x up to kBlockPanels micro-panels of MR rows, interleaved along
// depth) into fp32, whatever its dtype and strides, the next block fetched
// while the current one is used: the weights come from memory once per tile.
// For each panel of b (kDepth x kPanel floats, contiguous: it stays in L1) the
// block's micro-panels (in L2) pass by once, each the rows of one register
// tile of MR x Vecs vectors.
#include <cstring>
#include <type_traits>

#include "moe.hpp"

namespace hops::cpu::moe {

namespace {

constexpr int64_t kDepth = 256;       // a panel of b: 256 x 32 floats (32 KB)
constexpr int64_t kBlockPanels = 20;  // a block of a: 20 x 8 x 256 floats (160 KB) on AVX-512
constexpr int64_t kMaxMicroRows = 8;

template <int Lanes>
struct Simd {
  // NOLINTNEXTLINE(modernize-use-using)
  typedef float vec __attribute__((vector_size(Lanes * sizeof(float))));
};

// Rows [row0, row0 + rows) x depth [depth0, depth0 + depth) of a as
// micro-panels: element (r, p) of micro-panel m at packed[(m * depth + p) *
// MR + r], zero for rows past `rows`.
template <int MR>
void pack_block(const PackedGemm& g, int64_t row0, int64_t rows, int64_t depth0, int64_t depth,
                float* packed) {
  visit_float(g.a_dtype, [&]<class T>(T) {
    const T* a = static_cast<const T*>(g.a);
    const int64_t micro_panels = (rows + MR - 1) / MR;
    for (int64_t m = 0; m < micro_panels; ++m) {
      float* panel = packed + m * depth * MR;
      const int64_t first = row0 + m * MR, count = std::min<int64_t>(MR, rows - m * MR);
      if constexpr (std::is_same_v<T, float>) {
        if (g.a_depth_step == 1 && count == MR) {  // 8 x 8 blocks transposed in registers
          transpose(a + first * g.a_row_step + depth0, g.a_row_step, MR, depth, panel, MR);
          continue;
        }
      }
      if (g.a_depth_step == 1) {  // each row contiguous along depth
        for (int64_t r = 0; r < count; ++r) {
          const T* in = a + (first + r) * g.a_row_step + depth0;
          for (int64_t p = 0; p < depth; ++p) panel[p * MR + r] = to_float(in[p]);
        }
      } else {  // each depth step a run (contiguous when a_row_step is 1) of the rows
        for (int64_t p = 0; p < depth; ++p) {
          const T* in = a + first * g.a_row_step + (depth0 + p) * g.a_depth_step;
          for (int64_t r = 0; r < count; ++r) panel[p * MR + r] = to_float(in[r * g.a_row_step]);
        }
      }
      for (int64_t r = count; r < MR; ++r) {
        for (int64_t p = 0; p < depth; ++p) panel[p * MR + r] = 0.0f;
      }
    }
  });
}

// The cache lines of the next block of a, fetched into L2 a few at a time
// (a burst would stall on the fill buffers) while the current block is
// multiplied: the weights come from memory, and packing would otherwise wait
// on each row's misses in turn. A block is read as runs: its rows when a is
// contiguous along depth, its depth steps when contiguous along rows (else
// nothing is fetched).
class NextBlock {
 public:
  NextBlock(const PackedGemm& g, int64_t row0, int64_t rows, int64_t depth0, int64_t depth) {
    if (rows <= 0 || depth <= 0) return;
    const int64_t size = dtype_size(g.a_dtype);
    const auto* a = static_cast<const char*>(g.a);
    if (g.a_depth_step == 1) {
      run_ = a + (row0 * g.a_row_step + depth0) * size;
      runs_ = rows, run_bytes_ = depth * size, run_step_ = g.a_row_step * size;
    } else if (g.a_row_step == 1) {
      run_ = a + (row0 + depth0 * g.a_depth_step) * size;
      runs_ = depth, run_bytes_ = rows * size, run_step_ = g.a_depth_step * size;
    }
  }
  int64_t lines() const { return runs_ * ((run_bytes_ + 63) / 64); }
  // The next `count` lines.
  void fetch(int64_t count) {
    for (; count > 0 && runs_ > 0; --count) {
      __builtin_prefetch(run_ + offset_, 0, 2);
      offset_ += 64;
      if (offset_ >= run_bytes_) run_ += run_step_, offset_ = 0, --runs_;
    }
  }

 private:
  const char* run_ = nullptr;
  int64_t runs_ = 0, run_bytes_ = 0, run_step_ = 0, offset_ = 0;
};

// out's rows [0, rows) x Vecs vectors (rows <= MR) of one micro-panel, over
// `depth` rows of b; b and out step kPanel floats per row.
// One line of the next block is fetched every `every` depth steps.
template <int Lanes, int MR, int Vecs>
[[gnu::always_inline]] inline void micro_tile(int64_t depth, const float* __restrict a,
                                              const float* __restrict b, float* __restrict out,
                                              bool accumulate, int64_t rows, NextBlock& next,
                                              int64_t every) {
  using vec = typename Simd<Lanes>::vec;
  vec acc[MR][Vecs];
  for (int r = 0; r < MR; ++r) {
    for (int c = 0; c < Vecs; ++c) {
      acc[r][c] = vec{};
      if (accumulate && r < rows) {
        std::memcpy(&acc[r][c], out + r * kPanel + c * Lanes, sizeof(vec));
      }
    }
  }
  for (int64_t p = 0, countdown = every; p < depth; ++p) {
    if (--countdown == 0) next.fetch(1), countdown = every;
    vec b_row[Vecs];
    for (int c = 0; c < Vecs; ++c) std::memcpy(&b_row[c], b + p * kPanel + c * Lanes, sizeof(vec));
    for (int r = 0; r < MR; ++r) {
      vec a_rp = a[p * MR + r] - vec{};  // a splat (x - +0 folds to x; x + 0 would not)
      pin_to_register(a_rp);             // one broadcast per row, not one load per FMA
      for (int c = 0; c < Vecs; ++c) acc[r][c] += a_rp * b_row[c];
    }
  }
  for (int r = 0; r < MR && r < rows; ++r) {
    for (int c = 0; c < Vecs; ++c) {
      std::memcpy(out + r * kPanel + c * Lanes, &acc[r][c], sizeof(vec));
    }
  }
}

template <int Lanes, int MR, int Vecs>
[[gnu::always_inline]] inline void gemm_body(const PackedGemm& g, float* packed) {
  static_assert(kPanel % (Vecs * Lanes) == 0 && MR <= kMaxMicroRows);
  const int64_t block_rows = kBlockPanels * MR;
  // Blocks of rows outside, depth inside: a band of rows of a is read from
  // memory in order (the depth steps of a row continue its stream), and the
  // band's out rows stay in L2 while their sums run over the depth.
  for (int64_t i0 = 0; i0 < g.rows; i0 += block_rows) {
    const int64_t rows = std::min(block_rows, g.rows - i0);
    const int64_t micro_panels = (rows + MR - 1) / MR;
    for (int64_t p0 = 0; p0 < g.depth || p0 == 0; p0 += kDepth) {
      const int64_t depth = std::min(kDepth, g.depth - p0);
      const bool accumulate = g.accumulate || p0 > 0;
      pack_block<MR>(g, i0, rows, p0, depth, packed);
      // The next block: deeper in this band, else the next band's first.
      const bool band_done = p0 + kDepth >= g.depth;
      const int64_t next_row0 = band_done ? i0 + block_rows : i0,
                    next_p0 = band_done ? 0 : p0 + kDepth;
      NextBlock next(g, next_row0, std::min(block_rows, g.rows - next_row0), next_p0,
                     std::min(kDepth, g.depth - next_p0));
      const int64_t calls = g.cols / (Vecs * Lanes) * micro_panels;
      const int64_t every =
          std::max<int64_t>(1, calls * depth / std::max<int64_t>(1, next.lines()));
      for (int64_t j = 0; j < g.cols; j += kPanel) {
        const float* b = g.b + (j / kPanel) * g.b_panel_step + p0 * kPanel;
        float* out = g.out + (j / kPanel) * g.out_panel_step + i0 * kPanel;
        for (int64_t c = 0; c < kPanel; c += Vecs * Lanes) {
          for (int64_t m = 0; m < micro_panels; ++m) {
            micro_tile<Lanes, MR, Vecs>(depth, packed + m * depth * MR, b + c,
                                        out + m * MR * kPanel + c, accumulate,
                                        std::min<int64_t>(MR, rows - m * MR), next, every);
          }
        }
      }
      if (g.depth == 0) break;
    }
  }
}

#if defined(__x86_64__)
[[gnu::target("avx512f")]] void gemm_avx512(const PackedGemm& g, float* packed) {
  gemm_body<16, 8, 2>(g, packed);
}
[[gnu::target("avx2,fma")]] void gemm_avx2(const PackedGemm& g, float* packed) {
  gemm_body<8, 6, 2>(g, packed);
}
#endif
void gemm_baseline(const PackedGemm& g, float* packed) { gemm_body<4, 6, 2>(g, packed); }

}  // namespace

int64_t packed_floats() { return kDepth * kBlockPanels * kMaxMicroRows; }

void packed_gemm(const PackedGemm& g, float* packed) {
  static const auto variant = [] {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) return &gemm_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &gemm_avx2;
#endif
    return &gemm_baseline;
  }();
  variant(g, packed);
}

void load_transposed(const Tensor& t, int64_t first, int64_t M, int64_t Hd, float* staging,
                     float* out) {
  const bool in_place = t.dtype == DType::f32 && t.stride[1] == 1;
  for (int64_t j = 0; j < M; j += kPanel) {
    const int64_t width = std::min(kPanel, M - j);
    const float* rows = t.data<const float>() + t.offset(first + j, 0);
    int64_t ld = t.stride[0];
    if (!in_place) {
      for (int64_t m = 0; m < width; ++m) {
        load_run(t, t.offset(first + j + m, 0), t.stride[1], Hd, staging + m * Hd);
      }
      rows = staging, ld = Hd;
    }
    float* panel = out + (j / kPanel) * Hd * kPanel;
    transpose(rows, ld, width, Hd, panel, kPanel);
    if (width == kPanel) continue;
    for (int64_t d = 0; d < Hd; ++d) {
      std::fill(panel + d * kPanel + width, panel + (d + 1) * kPanel, 0.0f);
    }
  }
}

void store_transposed(const float* in, int64_t M, int64_t Hd, const Tensor& t, int64_t first,
                      float* staging) {
  const bool in_place = t.dtype == DType::f32 && t.stride[1] == 1;
  for (int64_t j = 0; j < M; j += kPanel) {
    const int64_t width = std::min(kPanel, M - j);
    const float* panel = in + (j / kPanel) * Hd * kPanel;
    if (in_place) {
      transpose(panel, kPanel, Hd, width, t.data<float>() + t.offset(first + j, 0), t.stride[0]);
      continue;
    }
    transpose(panel, kPanel, Hd, width, staging, Hd);
    for (int64_t m = 0; m < width; ++m) {
      store_run(t, t.offset(first + j + m, 0), t.stride[1], Hd, staging + m * Hd);
    }
  }
}

void load_panels(const Tensor& t, int64_t first, int64_t n, int64_t cols, float* out) {
  visit_float(t.dtype, [&]<class T>(T) {
    const int64_t step = t.stride[1];
    for (int64_t r = 0; r < n; ++r) {
      const T* row = t.data<const T>() + t.offset(first + r, 0);
      for (int64_t j = 0; j < cols; j += kPanel) {
        float* target = out + (j / kPanel) * n * kPanel + r * kPanel;
        const int64_t width = std::min(kPanel, cols - j);
        if (step == 1) {  // a loop of its own, which vectorises
          for (int64_t c = 0; c < width; ++c) target[c] = to_float(row[j + c]);
        } else {
          for (int64_t c = 0; c < width; ++c) target[c] = to_float(row[(j + c) * step]);
        }
        std::fill(target + width, target + kPanel, 0.0f);
      }
    }
  });
}

void panel_row(const float* in, int64_t rows, int64_t cols, int64_t r, float* out) {
  for (int64_t j = 0; j < cols; j += kPanel) {
    std::copy_n(in + (j / kPanel) * rows * kPanel + r * kPanel, std::min(kPanel, cols - j),
                out + j);
  }
}

}  // namespace hops::cpu::moe
