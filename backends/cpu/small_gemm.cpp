#include "small_gemm.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string_view>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xsmm_gemm.hpp"

namespace hops::cpu {

namespace {

// 6 x 2 vector accumulators fit every register file; on AVX2 the broadcasts
// of a, not the FMAs, bound it (other shapes measured no faster).
constexpr int kTileRows = 6;
constexpr int kTileVecs = 2;

// Lanes floats in one register (a typedef: GCC drops the attribute from a
// dependent `using`).
template <int Lanes>
struct Simd {
  // NOLINTNEXTLINE(modernize-use-using)
  typedef float vec __attribute__((vector_size(Lanes * sizeof(float))));
};

template <int Lanes, int Rows, int Vecs, bool TransposeA>
[[gnu::always_inline]] inline void gemm_tile(const Gemm& g, int64_t i, int64_t j, int64_t first,
                                             int64_t depth) {
  using vec = typename Simd<Lanes>::vec;
  const float* __restrict a = TransposeA ? g.a + i : g.a + i * g.lda;
  const float* __restrict b = g.b + j;
  float* __restrict out = g.out + i * g.ldo + j;
  vec acc[Rows][Vecs];
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Vecs; ++c) {
      acc[r][c] = vec{};
      if (g.accumulate) std::memcpy(&acc[r][c], out + r * g.ldo + c * Lanes, sizeof(vec));
    }
  }
  for (int64_t p = first; p < depth; ++p) {
    vec b_row[Vecs];
    for (int c = 0; c < Vecs; ++c) std::memcpy(&b_row[c], b + p * g.ldb + c * Lanes, sizeof(vec));
    for (int r = 0; r < Rows; ++r) {
      const float a_rp = TransposeA ? a[p * g.lda + r] : a[r * g.lda + p];
      for (int c = 0; c < Vecs; ++c) acc[r][c] += a_rp * b_row[c];
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Vecs; ++c) {
      std::memcpy(out + r * g.ldo + c * Lanes, &acc[r][c], sizeof(vec));
    }
  }
}

// The part of column panel [j, j + Vecs * Lanes) that row tile [i, i + Rows)
// needs, by the product's shape.
template <int Lanes, int Rows, int Vecs, bool TransposeA>
[[gnu::always_inline]] inline void gemm_shaped_tile(const Gemm& g, int64_t i, int64_t j) {
  if (g.shape == Shape::lower_out && j >= round_up(i + Rows, kPadding)) return;
  const int64_t first = g.shape == Shape::upper_a ? std::min(g.depth, i) : 0;
  const int64_t depth = g.shape == Shape::lower_a ? std::min(g.depth, i + Rows) : g.depth;
  gemm_tile<Lanes, Rows, Vecs, TransposeA>(g, i, j, first, depth);
}

// Row tiles of Rows, then one of the rows left (fewer than Rows).
template <int Lanes, int Vecs, bool TransposeA, int Rows = kTileRows>
[[gnu::always_inline]] inline void gemm_panel(const Gemm& g, int64_t j, int64_t i = 0) {
  if constexpr (Rows == kTileRows) {
    for (; i + Rows <= g.rows; i += Rows) gemm_shaped_tile<Lanes, Rows, Vecs, TransposeA>(g, i, j);
  }
  if constexpr (Rows > 1) {
    if (g.rows - i == Rows - 1) return gemm_shaped_tile<Lanes, Rows - 1, Vecs, TransposeA>(g, i, j);
    return gemm_panel<Lanes, Vecs, TransposeA, Rows - 1>(g, j, i);
  }
}

// Column panels outside, row tiles inside: a panel of b (depth x Vecs
// vectors) stays in L1 while every row tile passes over it; rows outside
// re-read the whole of b (64 KB for a K x V state) from L2 once per row
// tile. Panels of Vecs vectors, then narrower ones for the columns left.
template <int Lanes, bool TransposeA, int Vecs = kTileVecs>
[[gnu::always_inline]] inline void gemm_body(const Gemm& g, int64_t j = 0) {
  for (; j + Vecs * Lanes <= g.cols; j += Vecs * Lanes) gemm_panel<Lanes, Vecs, TransposeA>(g, j);
  if constexpr (Vecs > 1) gemm_body<Lanes, TransposeA, Vecs / 2>(g, j);
}

template <int Lanes>
[[gnu::always_inline]] inline void gemm_either(const Gemm& g) {
  if (g.transpose_a) {
    gemm_body<Lanes, true>(g);
  } else {
    gemm_body<Lanes, false>(g);
  }
}

#if defined(__x86_64__)
[[gnu::target("avx512f")]] void gemm_avx512(const Gemm& g) { gemm_either<16>(g); }
[[gnu::target("avx2,fma")]] void gemm_avx2(const Gemm& g) { gemm_either<8>(g); }
#endif
void gemm_baseline(const Gemm& g) { gemm_either<4>(g); }

void transpose_scalar(const float* __restrict in, int64_t ldi, int64_t rows, int64_t cols,
                      float* __restrict out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[c * ldo + r] = in[r * ldi + c];
  }
}

#if defined(__x86_64__)
// 8 x 8 blocks in registers (unpack row pairs, shuffle quads, swap 128-bit
// halves): a scalar transpose spends a store per element on strided addresses.
[[gnu::target("avx")]] void transpose_avx(const float* in, int64_t ldi, int64_t rows, int64_t cols,
                                          float* out, int64_t ldo) {
  int64_t r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) {
    int64_t c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) {
      const float* block = in + r0 * ldi + c0;
      __m256 row[8], pair[8], quad[8];
      for (int i = 0; i < 8; ++i) row[i] = _mm256_loadu_ps(block + i * ldi);
      for (int i = 0; i < 8; i += 2) {
        pair[i] = _mm256_unpacklo_ps(row[i], row[i + 1]);
        pair[i + 1] = _mm256_unpackhi_ps(row[i], row[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        quad[i] = _mm256_shuffle_ps(pair[i], pair[i + 2], 0x44);
        quad[i + 1] = _mm256_shuffle_ps(pair[i], pair[i + 2], 0xEE);
        quad[i + 2] = _mm256_shuffle_ps(pair[i + 1], pair[i + 3], 0x44);
        quad[i + 3] = _mm256_shuffle_ps(pair[i + 1], pair[i + 3], 0xEE);
      }
      float* target = out + c0 * ldo + r0;
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(target + i * ldo, _mm256_permute2f128_ps(quad[i], quad[i + 4], 0x20));
        _mm256_storeu_ps(target + (i + 4) * ldo,
                         _mm256_permute2f128_ps(quad[i], quad[i + 4], 0x31));
      }
    }
    transpose_scalar(in + r0 * ldi + c0, ldi, 8, cols - c0, out + c0 * ldo + r0, ldo);
  }
  transpose_scalar(in + r0 * ldi, ldi, rows - r0, cols, out + r0, ldo);
}
#endif

}  // namespace

void transpose(const float* in, int64_t ldi, int64_t rows, int64_t cols, float* out, int64_t ldo) {
#if defined(__x86_64__)
  static const bool avx = __builtin_cpu_supports("avx");
  if (avx) return transpose_avx(in, ldi, rows, cols, out, ldo);
#endif
  transpose_scalar(in, ldi, rows, cols, out, ldo);
}

void gemm_tiles(const Gemm& g) {
  static const auto variant = [] {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) return &gemm_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &gemm_avx2;
#endif
    return &gemm_baseline;
  }();
  variant(g);
}

#if defined(__x86_64__)
constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
FlushSubnormals::FlushSubnormals() : saved_(_mm_getcsr()) {
  _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero);
}
FlushSubnormals::~FlushSubnormals() { _mm_setcsr(saved_); }
#else
FlushSubnormals::FlushSubnormals() = default;
FlushSubnormals::~FlushSubnormals() = default;
#endif

bool gemm_forced_to_tiles() {
  static const bool tiles = [] {
    // NOLINTNEXTLINE(concurrency-mt-unsafe): read once, at the first product
    const char* forced = std::getenv("HOPS_CPU_GEMM");
    return forced && std::string_view(forced) == "tiles";
  }();
  return tiles;
}

GemmEngine gemm_engine() {
  static const GemmEngine engine =
      !gemm_forced_to_tiles() && xsmm::available() ? GemmEngine::xsmm : GemmEngine::tiles;
  return engine;
}

void gemm(const Gemm& g) {
  if (gemm_engine() == GemmEngine::xsmm && xsmm::gemm(g)) return;
  gemm_tiles(g);
}

}  // namespace hops::cpu
