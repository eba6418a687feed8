#include "small_gemm.hpp"

#include <algorithm>
#include <cstring>

namespace hops::cpu {

namespace {

constexpr int kTileRows = 6;  // 6 x 2 vector accumulators fit every register file

// Lanes floats in one register (a typedef: GCC drops the attribute from a
// dependent `using`).
template <int Lanes>
struct Simd {
  // NOLINTNEXTLINE(modernize-use-using)
  typedef float vec __attribute__((vector_size(Lanes * sizeof(float))));
};

template <int Lanes, int Rows, int Vecs>
[[gnu::always_inline]] inline void gemm_tile(const Gemm& g, int64_t i, int64_t j, int64_t depth) {
  using vec = typename Simd<Lanes>::vec;
  const float* __restrict a = g.a + i * g.lda;
  const float* __restrict b = g.b + j;
  float* __restrict out = g.out + i * g.ldo + j;
  vec acc[Rows][Vecs];
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Vecs; ++c) {
      acc[r][c] = vec{};
      if (g.accumulate) std::memcpy(&acc[r][c], out + r * g.ldo + c * Lanes, sizeof(vec));
    }
  }
  for (int64_t p = 0; p < depth; ++p) {
    vec b_row[Vecs];
    for (int c = 0; c < Vecs; ++c) std::memcpy(&b_row[c], b + p * g.ldb + c * Lanes, sizeof(vec));
    for (int r = 0; r < Rows; ++r) {
      const float a_rp = a[r * g.lda + p];
      for (int c = 0; c < Vecs; ++c) acc[r][c] += a_rp * b_row[c];
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Vecs; ++c) {
      std::memcpy(out + r * g.ldo + c * Lanes, &acc[r][c], sizeof(vec));
    }
  }
}

template <int Lanes, int Rows>
[[gnu::always_inline]] inline void gemm_row_tile(const Gemm& g, int64_t i) {
  const int64_t depth = g.shape == Shape::lower_a ? std::min(g.depth, i + Rows) : g.depth;
  const int64_t cols =
      g.shape == Shape::lower_out ? std::min(g.cols, round_up(i + Rows, kPadding)) : g.cols;
  int64_t j = 0;
  for (; j + 2 * Lanes <= cols; j += 2 * Lanes) gemm_tile<Lanes, Rows, 2>(g, i, j, depth);
  for (; j < cols; j += Lanes) gemm_tile<Lanes, Rows, 1>(g, i, j, depth);
}

template <int Lanes>
[[gnu::always_inline]] inline void gemm_body(const Gemm& g) {
  int64_t i = 0;
  for (; i + kTileRows <= g.rows; i += kTileRows) gemm_row_tile<Lanes, kTileRows>(g, i);
  switch (g.rows - i) {
    case 5:
      return gemm_row_tile<Lanes, 5>(g, i);
    case 4:
      return gemm_row_tile<Lanes, 4>(g, i);
    case 3:
      return gemm_row_tile<Lanes, 3>(g, i);
    case 2:
      return gemm_row_tile<Lanes, 2>(g, i);
    case 1:
      return gemm_row_tile<Lanes, 1>(g, i);
    default:
      return;
  }
}

#if defined(__x86_64__)
[[gnu::target("avx512f")]] void gemm_avx512(const Gemm& g) { gemm_body<16>(g); }
[[gnu::target("avx2,fma")]] void gemm_avx2(const Gemm& g) { gemm_body<8>(g); }
#endif
void gemm_baseline(const Gemm& g) { gemm_body<4>(g); }

}  // namespace

void gemm(const Gemm& g) {
  static const auto variant = [] {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) return &gemm_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &gemm_avx2;
#endif
    return &gemm_baseline;
  }();
  variant(g);
}

}  // namespace hops::cpu
