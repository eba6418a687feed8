// attn::panel_product: the prefill's products (S = Q K^T and O += P V) on
// one column panel of packed keys or values. small_gemm's 6 x 2 tile fits
// every register file; with AVX-512's 32 registers a 12 x 2 tile halves the
// loads of accumulators per FMA and the tile's ramp-up. On one core, R = 480
// rows, 64 keys, D = 256: Q K^T 154 -> 178 and P V 149 -> 161 GFLOP/s with
// the panels in cache, 135 -> 150 and 128 -> 128 streamed from L3.
#include <cstring>

#include "attn.hpp"

namespace hops::cpu::attn {

namespace {

template <int Lanes>
struct Simd {
  // NOLINTNEXTLINE(modernize-use-using)
  typedef float vec __attribute__((vector_size(Lanes * sizeof(float))));
};

// Rows x kPanel of out, accumulated over depth.
template <int Lanes, int Rows>
[[gnu::always_inline]] inline void panel_tile(const float* __restrict p, int64_t ldp, int64_t depth,
                                              const float* __restrict v, float* __restrict out,
                                              int64_t ldo, bool accumulate) {
  using vec = typename Simd<Lanes>::vec;
  constexpr int kVecs = kPanel / Lanes;
  vec acc[Rows][kVecs];
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < kVecs; ++c) {
      acc[r][c] = vec{};
      if (accumulate) std::memcpy(&acc[r][c], out + r * ldo + c * Lanes, sizeof(vec));
    }
  }
  for (int64_t k = 0; k < depth; ++k) {
    vec b[kVecs];
    for (int c = 0; c < kVecs; ++c) std::memcpy(&b[c], v + k * kPanel + c * Lanes, sizeof(vec));
    for (int r = 0; r < Rows; ++r) {
      const float a = p[r * ldp + k];
      for (int c = 0; c < kVecs; ++c) acc[r][c] += a * b[c];
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < kVecs; ++c) std::memcpy(out + r * ldo + c * Lanes, &acc[r][c], sizeof(vec));
  }
}

// Tiles of Rows rows, then one tile of the rows left.
template <int Lanes, int Rows>
[[gnu::always_inline]] inline void panel_rows(const float* p, int64_t ldp, int64_t rows,
                                              int64_t depth, const float* v, float* out,
                                              int64_t ldo, bool accumulate) {
  int64_t i = 0;
  for (; i + Rows <= rows; i += Rows) {
    panel_tile<Lanes, Rows>(p + i * ldp, ldp, depth, v, out + i * ldo, ldo, accumulate);
  }
  if constexpr (Rows > 1) {
    if (i < rows) {
      panel_rows<Lanes, Rows - 1>(p + i * ldp, ldp, rows - i, depth, v, out + i * ldo, ldo,
                                  accumulate);
    }
  }
}

// As many accumulators as leave registers for the b row and a broadcast.
template <int Lanes>
constexpr int kRows = (Lanes == 16 ? 24 : 12) / (kPanel / Lanes);

#if defined(__x86_64__)
[[gnu::target("avx512f")]] void panel_avx512(const float* p, int64_t ldp, int64_t rows,
                                             int64_t depth, const float* v, float* out, int64_t ldo,
                                             bool accumulate) {
  panel_rows<16, kRows<16>>(p, ldp, rows, depth, v, out, ldo, accumulate);
}
[[gnu::target("avx2,fma")]] void panel_avx2(const float* p, int64_t ldp, int64_t rows,
                                            int64_t depth, const float* v, float* out, int64_t ldo,
                                            bool accumulate) {
  panel_rows<8, kRows<8>>(p, ldp, rows, depth, v, out, ldo, accumulate);
}
#endif
void panel_baseline(const float* p, int64_t ldp, int64_t rows, int64_t depth, const float* v,
                    float* out, int64_t ldo, bool accumulate) {
  panel_rows<4, kRows<4>>(p, ldp, rows, depth, v, out, ldo, accumulate);
}

}  // namespace

void panel_product(const float* p, int64_t ldp, int64_t rows, int64_t depth, const float* v,
                   float* out, int64_t ldo, bool accumulate) {
  static const auto variant = [] {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) return &panel_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &panel_avx2;
#endif
    return &panel_baseline;
  }();
  variant(p, ldp, rows, depth, v, out, ldo, accumulate);
}

}  // namespace hops::cpu::attn
