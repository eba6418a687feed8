// AMX bf16 tiles, shared by the kernels that run them (moe_gemm_amx.cpp,
// attn_bf16_product.cpp): whether this process may use them, the macros that
// compile a region of a file for AMX, the tile configuration, and AVX-512
// helpers (compiled for AVX-512F alone, so that the AVX512-BF16 kernels use
// them too). Only code between HOPS_AMX_BEGIN and HOPS_AMX_END is compiled
// for AMX (and AVX-512, which every AMX CPU has and available() checks too),
// so no AMX instruction reaches code that other CPUs run.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define HOPS_AMX_BUILD 1
#include <immintrin.h>
#else
#define HOPS_AMX_BUILD 0
#endif

namespace hops::cpu::amx {

// Whether this process runs AMX bf16 tiles: the CPU reports AMX-TILE and
// AMX-BF16 (cpuid), Linux granted XTILEDATA (arch_prctl, asked once per
// process) and HOPS_CPU_GEMM is not "tiles" (which forces the fp32 paths).
// Decided once, at the first call.
bool available();

inline constexpr int64_t kTileRows = 16;  // rows of every tile
inline constexpr int64_t kStepK = 32;     // bf16 along the depth in a row of an A tile (64 bytes)
inline constexpr int64_t kTileFloats = kTileRows * kTileRows;  // a 16 x 16 fp32 C tile

}  // namespace hops::cpu::amx

#if HOPS_AMX_BUILD
// clang takes the target through an attribute on every function that follows
// (it has no GCC target pragma: the fuzzer's build uses clang). GCC 12's own
// intrinsics (_mm512_cvtepi32_epi16, ...) start from an "undefined" register
// that its flow analysis then reports.
// clang-format off
#if defined(__clang__)
#define HOPS_AMX_BEGIN \
  _Pragma("clang attribute push(__attribute__((target(\"avx512f,avx512bw,avx512vl,avx512dq,amx-tile,amx-bf16\"))), apply_to = function)")
#define HOPS_AMX_END _Pragma("clang attribute pop")
#else
#define HOPS_AMX_BEGIN \
  _Pragma("GCC push_options") \
  _Pragma("GCC target(\"avx512f,avx512bw,avx512vl,avx512dq,amx-tile,amx-bf16\")") \
  _Pragma("GCC diagnostic push") \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")
#define HOPS_AMX_END _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")
#endif
// clang-format on

namespace hops::cpu::amx {

// Palette 1 with all 8 tiles 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) bytes_per_row[t] = 64, rows[t] = kTileRows;
  }
};

// out[j] = column j of the 16 x 16 matrix `in` (rows of 16 32-bit lanes,
// `row_bytes` apart): C tiles are read back transposed, and 16 rows' bf16
// pairs packed into the VNNI B layout, through this. Three rounds of in-lane
// and lane shuffles.
[[gnu::target("avx512f")]] inline void transpose16(const void* in, int64_t row_bytes,
                                                   __m512 out[16]) {
  const auto* rows = static_cast<const char*>(in);
  __m512 r[16], t[16], u[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(rows + i * row_bytes);
  for (int i = 0; i < 8; ++i) {  // (r0[0] r1[0] r0[1] r1[1]) and (r0[2] r1[2] r0[3] r1[3]) a lane
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int q = 0; q < 4; ++q) {  // u[4q + j], lane l: rows 4q..4q+3 of column 4l + j
    u[4 * q] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    u[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
    u[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    u[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {  // gather each column's four lanes
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    out[j] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    out[8 + j] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    out[4 + j] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    out[12 + j] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

// from_float<bf16> on 16 lanes (to nearest even, NaN kept a NaN), each
// result in the low 16 bits of its 32-bit lane.
[[gnu::target("avx512f")]] inline __m512i round_to_bf16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  const __m512i nan = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  return _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), nan);
}

}  // namespace hops::cpu::amx
#endif
