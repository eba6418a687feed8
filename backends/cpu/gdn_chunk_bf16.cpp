// gdn::gemm_bf16 (gdn_chunk_bf16.hpp): packs a Gemm's fp32 operands into
// attn::bf16_product's layouts, rows of 16 and depth of 32 padded with zeros.
#include "gdn_chunk_bf16.hpp"

#include <algorithm>
#include <vector>

// GCC 12's own intrinsics (_mm512_cvtepu16_epi32, ...) start from an
// "undefined" register that its flow analysis then reports (as in amx.hpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace hops::cpu::gdn {

#if HOPS_AMX_BUILD
namespace {

constexpr int64_t kGroup = 16;  // columns of a group of b (attn_bf16.hpp)

// The calling thread's packed operands and, where rows is no multiple of 16
// (AMX writes whole 16-row tiles), its output rows; grown to the largest
// product, kept for the next (a chunk makes ~20 products per value head).
struct Buffers {
  std::vector<uint16_t> a;
  std::vector<uint32_t> b;
  std::vector<float> out;
};
thread_local Buffers buffers;

template <class T>
T* at_least(std::vector<T>& v, int64_t count) {
  if (static_cast<int64_t>(v.size()) < count) v.resize(count);
  return v.data();
}

// The first n of 16 lanes.
__mmask16 lanes(int64_t n) {
  return n >= 16 ? __mmask16{0xffff} : n <= 0 ? __mmask16{0} : __mmask16((1u << n) - 1);
}

[[HOPS_AVX512_BF16]] inline __m256i to_bf16(__m512 x) {
  return (__m256i)_mm512_cvtneps_pbh(x);  // to nearest even (GCC's vector cast)
}

// a [rows_p, depth_p] bf16 row-major from g.a (or its transpose), zeros past
// g.rows and g.depth.
[[HOPS_AVX512_BF16]] void pack_a(const Gemm& g, int64_t rows_p, int64_t depth_p, uint16_t* out) {
  if (!g.transpose_a) {
    for (int64_t r = 0; r < rows_p; ++r) {
      const float* in = g.a + r * g.lda;
      for (int64_t p = 0; p < depth_p; p += 16) {
        const __mmask16 m = r < g.rows ? lanes(g.depth - p) : __mmask16{0};
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * depth_p + p),
                            to_bf16(_mm512_maskz_loadu_ps(m, in + p)));
      }
    }
    return;
  }
  // Element (r, p) at g.a[p * lda + r]: 16 x 16 blocks transposed in registers.
  for (int64_t r0 = 0; r0 < rows_p; r0 += 16) {
    for (int64_t p0 = 0; p0 < depth_p; p0 += 16) {
      __m512 block[16], columns[16];
      for (int64_t i = 0; i < 16; ++i) {
        const __mmask16 m = p0 + i < g.depth ? lanes(g.rows - r0) : __mmask16{0};
        block[i] = _mm512_maskz_loadu_ps(m, g.a + (p0 + i) * g.lda + r0);
      }
      amx::transpose16(block, sizeof(__m512), columns);
      for (int64_t j = 0; j < 16; ++j) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (r0 + j) * depth_p + p0),
                            to_bf16(columns[j]));
      }
    }
  }
}

// b [depth_p, cols] as VNNI groups of 16 columns, [depth_p / 2][16] each,
// zeros past g.depth.
[[HOPS_AVX512_BF16]] void pack_b(const Gemm& g, int64_t depth_p, uint32_t* out) {
  const int64_t group_step = depth_p / 2 * kGroup;
  for (int64_t i = 0; i < depth_p / 2; ++i) {
    const float* even = g.b + 2 * i * g.ldb;
    const float* odd = even + g.ldb;
    const bool has_even = 2 * i < g.depth, has_odd = 2 * i + 1 < g.depth;
    for (int64_t c = 0; c < g.cols; c += kGroup) {
      const __m512 x = has_even ? _mm512_loadu_ps(even + c) : _mm512_setzero_ps();
      const __m512 y = has_odd ? _mm512_loadu_ps(odd + c) : _mm512_setzero_ps();
      const __m512i pairs =
          _mm512_or_si512(_mm512_cvtepu16_epi32(to_bf16(x)),
                          _mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16(y)), 16));
      _mm512_storeu_si512(out + c / kGroup * group_step + i * kGroup, pairs);
    }
  }
}

}  // namespace

void gemm_bf16(const Gemm& g) {
  if (g.rows <= 0 || g.cols <= 0) return;
  const int64_t rows_p = round_up(g.rows, amx::kTileRows);
  const int64_t depth_p = round_up(std::max<int64_t>(g.depth, 1), amx::kStepK);
  uint16_t* a = at_least(buffers.a, rows_p * depth_p);
  uint32_t* b = at_least(buffers.b, depth_p / 2 * g.cols);
  pack_a(g, rows_p, depth_p, a);
  pack_b(g, depth_p, b);
  float* out = g.out;
  int64_t ldo = g.ldo;
  if (rows_p != g.rows) {
    out = at_least(buffers.out, rows_p * g.cols), ldo = g.cols;
    for (int64_t r = 0; r < g.rows && g.accumulate; ++r) {
      std::copy_n(g.out + r * g.ldo, g.cols, out + r * ldo);
    }
  }
  attn::bf16_product({a, depth_p, rows_p, depth_p, b, g.cols / kGroup, depth_p / 2 * kGroup, out,
                      ldo, g.accumulate});
  if (out != g.out) {
    for (int64_t r = 0; r < g.rows; ++r) std::copy_n(out + r * ldo, g.cols, g.out + r * g.ldo);
  }
}
#else
void gemm_bf16(const Gemm&) {}  // bf16_products() is false
#endif

}  // namespace hops::cpu::gdn
