// attn::bf16_product (attn_bf16.hpp) on AMX tiles or on AVX512-BF16, and the
// choice between them.
#include "amx.hpp"
#include "attn_bf16.hpp"

namespace hops::cpu::attn {

Bf16Engine bf16_engine() {
  static const Bf16Engine engine = [] {
    if (gemm_forced_to_tiles()) return Bf16Engine::none;
#if HOPS_AMX_BUILD
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bf16")) {
      return amx::available() ? Bf16Engine::amx : Bf16Engine::avx512_bf16;
    }
#endif
    return Bf16Engine::none;
  }();
  return engine;
}

#if HOPS_AMX_BUILD
namespace {

// vdpbf16ps: one vector of 16 fp32 sums per 16 columns; a tile of Rows rows
// x Groups groups of them, the b vectors loaded once per pair of depth and
// each row's pair of a broadcast. 6 x 4 keeps 24 of the 32 registers for
// sums, with 10 loads per 24 products (12 x 2: 14; 3% slower on Zen 5).
template <int Rows, int Groups>
[[HOPS_AVX512_BF16, gnu::always_inline]] inline void dot_tile(const Bf16Product& p, int64_t r0,
                                                              int64_t g0) {
  __m512 acc[Rows][Groups];
  float* out = p.out + r0 * p.ldo + g0 * amx::kTileRows;
  for (int r = 0; r < Rows; ++r) {
    for (int g = 0; g < Groups; ++g) {
      acc[r][g] = p.accumulate ? _mm512_loadu_ps(out + r * p.ldo + g * amx::kTileRows)
                               : _mm512_setzero_ps();
    }
  }
  const uint16_t* a = p.a + r0 * p.lda;
  const uint32_t* b = p.b + g0 * p.group_step;
  for (int64_t i = 0; i < p.depth / 2; ++i) {
    __m512i columns[Groups];
    for (int g = 0; g < Groups; ++g) {
      columns[g] = _mm512_loadu_si512(b + g * p.group_step + i * amx::kTileRows);
    }
    for (int r = 0; r < Rows; ++r) {
      uint32_t pair;
      __builtin_memcpy(&pair, a + r * p.lda + 2 * i, sizeof(pair));
      // (C casts: GCC's vector casts between same-size vectors; no intrinsic converts.)
      const auto broadcast = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      for (int g = 0; g < Groups; ++g) {
        acc[r][g] = _mm512_dpbf16_ps(acc[r][g], broadcast, (__m512bh)columns[g]);
      }
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int g = 0; g < Groups; ++g)
      _mm512_storeu_ps(out + r * p.ldo + g * amx::kTileRows, acc[r][g]);
  }
}

// Tiles of Rows rows from r0, then one tile of the rows left.
template <int Rows, int Groups>
[[HOPS_AVX512_BF16, gnu::always_inline]] inline void dot_rows(const Bf16Product& p, int64_t r0,
                                                              int64_t g0) {
  for (; r0 + Rows <= p.rows; r0 += Rows) dot_tile<Rows, Groups>(p, r0, g0);
  if constexpr (Rows > 1) {
    if (r0 < p.rows) dot_rows<Rows - 1, Groups>(p, r0, g0);
  }
}

// Column groups outer: four groups of b (32 KB at a depth of 256) stay in
// L1 while the rows of a pass.
[[HOPS_AVX512_BF16]] void product_avx512(const Bf16Product& p) {
  int64_t g0 = 0;
  for (; g0 + 4 <= p.groups; g0 += 4) dot_rows<6, 4>(p, 0, g0);
  for (; g0 + 2 <= p.groups; g0 += 2) dot_rows<12, 2>(p, 0, g0);
  if (g0 < p.groups) dot_rows<12, 1>(p, 0, g0);
}

HOPS_AMX_BEGIN

// Tiles: C 0-3 (C 2i + j: rows r0 + 16i, group g0 + j), A 4-5, B 6-7; 32 rows
// x 2 groups at a time, each load right before its first product (a tile
// register is not renamed: a load waits for the products still reading it).
void product_amx(const Bf16Product& p) {
  static const amx::TileConfig config;
  _tile_loadconfig(&config);
  const int64_t a_bytes = p.lda * 2, out_bytes = p.ldo * 4;
  for (int64_t g0 = 0; g0 < p.groups; g0 += 2) {
    const bool two_groups = g0 + 1 < p.groups;
    const uint32_t* b0 = p.b + g0 * p.group_step;
    const uint32_t* b1 = b0 + p.group_step;
    for (int64_t r0 = 0; r0 < p.rows; r0 += 2 * amx::kTileRows) {
      const bool two_rows = r0 + amx::kTileRows < p.rows;
      float* c0 = p.out + r0 * p.ldo + g0 * amx::kTileRows;
      float* c2 = c0 + amx::kTileRows * p.ldo;
      const uint16_t* a0 = p.a + r0 * p.lda;
      const uint16_t* a1 = a0 + amx::kTileRows * p.lda;
      if (p.accumulate) {
        _tile_loadd(0, c0, out_bytes);
        if (two_groups) _tile_loadd(1, c0 + amx::kTileRows, out_bytes);
        if (two_rows) _tile_loadd(2, c2, out_bytes);
        if (two_rows && two_groups) _tile_loadd(3, c2 + amx::kTileRows, out_bytes);
      } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      }
      for (int64_t k = 0; k < p.depth; k += amx::kStepK) {
        _tile_loadd(4, a0 + k, a_bytes);
        _tile_loadd(6, b0 + k / 2 * amx::kTileRows, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (two_groups) {
          _tile_loadd(7, b1 + k / 2 * amx::kTileRows, 64);
          _tile_dpbf16ps(1, 4, 7);
        }
        if (two_rows) {
          _tile_loadd(5, a1 + k, a_bytes);
          _tile_dpbf16ps(2, 5, 6);
          if (two_groups) _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, c0, out_bytes);
      if (two_groups) _tile_stored(1, c0 + amx::kTileRows, out_bytes);
      if (two_rows) _tile_stored(2, c2, out_bytes);
      if (two_rows && two_groups) _tile_stored(3, c2 + amx::kTileRows, out_bytes);
    }
  }
  _tile_release();
}

HOPS_AMX_END

}  // namespace

void bf16_product(const Bf16Product& p) {
  if (bf16_engine() == Bf16Engine::amx) return product_amx(p);
  product_avx512(p);
}
#else
void bf16_product(const Bf16Product&) {}  // bf16_engine() is none
#endif

}  // namespace hops::cpu::attn
