#include "gdn_chunk_common.hpp"

#include <algorithm>
#include <cmath>

#include "small_gemm.hpp"

namespace hops::cpu::gdn {

namespace {

// exp(x) is a normal float for |x| <= 80: the bound for factoring the decays.
constexpr float kMaxFactorLog = 80.0f;

// Rows [first, last) of t = (I + A)^-1 by forward substitution: row i is
// e_i - sum_{j<i} A_ij t_j. These rows, and the ones before, are zero past
// column Width, so fixed-width loops cover them; each row is summed in two
// local accumulators: registers rather than a memory round trip per j, and
// two dependency chains rather than one.
template <int Width>
[[gnu::always_inline]] inline void substitute_rows(const float* a, float* t, int64_t first,
                                                   int64_t last) {
  for (int64_t i = first; i < last; ++i) {
    float even[Width] = {}, odd[Width] = {};
    const float* a_i = a + i * kChunk;
    int64_t j = 0;
    for (; j + 1 < i; j += 2) {
      const float* __restrict t_j = t + j * kChunk;
      const float* __restrict t_next = t_j + kChunk;
      for (int c = 0; c < Width; ++c) {
        even[c] -= a_i[j] * t_j[c];
        odd[c] -= a_i[j + 1] * t_next[c];
      }
    }
    if (j < i) {
      const float* __restrict t_j = t + j * kChunk;
      for (int c = 0; c < Width; ++c) even[c] -= a_i[j] * t_j[c];
    }
    float* t_i = t + i * kChunk;
    for (int c = 0; c < Width; ++c) t_i[c] = even[c] + odd[c];
    t_i[i] += 1.0f;
    std::fill(t_i + Width, t_i + kChunk, 0.0f);
  }
}

}  // namespace

// Never exp(G_i) / exp(G_j), which overflows for strong decays. Around the
// midpoint m of G's range, exp(G_i - m) and exp(m - G_j) are normal floats
// when the range is at most 2 * kMaxFactorLog, and their product is D_ij to a
// few ulp: 2C exps instead of C^2 / 2. Wider ranges (very strong decay) take
// one exp per entry. Row i is filled up to a whole vector past its diagonal
// (finite values above it, which no reader takes): a triangular bound left a
// scalar remainder of up to 15 entries per row, most of the loop's time.
HOPS_VECTOR_CLONES void fill_decay(const float* G, int64_t length, float* factors, float* decay) {
  const auto [low, high] = std::minmax_element(G, G + length);
  auto row_end = [&](int64_t i) { return std::min(length, round_up(i + 1, kPadding)); };
  if (*high - *low > 2.0f * kMaxFactorLog) {
    for (int64_t i = 0; i < length; ++i) {
      // Restrict-qualified, as GCC if-converts exp_approx's selects (and so
      // vectorises the loop: 13 -> 1.6 us a chunk) only without aliasing stores.
      float* __restrict row = decay + i * kChunk;
      const float* __restrict logs = G;
      const float g_i = G[i];
      const int64_t end = row_end(i);
      for (int64_t j = 0; j < end; ++j) row[j] = exp_approx(g_i - logs[j]);
    }
    return;
  }
  const float middle = 0.5f * (*low + *high);
  float* to_middle = factors;             // exp(m - G_j)
  float* from_middle = factors + kChunk;  // exp(G_i - m)
  for (int64_t i = 0; i < length; ++i) {
    to_middle[i] = exp_approx(middle - G[i]);
    from_middle[i] = exp_approx(G[i] - middle);
  }
  for (int64_t i = 0; i < length; ++i) {
    const int64_t end = row_end(i);
    for (int64_t j = 0; j < end; ++j) decay[i * kChunk + j] = from_middle[i] * to_middle[j];
  }
}

HOPS_VECTOR_CLONES void invert_unit_lower(const float* a, float* t, int64_t length) {
  static_assert(kChunk == 4 * kPadding);
  substitute_rows<kPadding>(a, t, 0, std::min(length, kPadding));
  substitute_rows<2 * kPadding>(a, t, kPadding, std::min(length, 2 * kPadding));
  substitute_rows<3 * kPadding>(a, t, 2 * kPadding, std::min(length, 3 * kPadding));
  substitute_rows<4 * kPadding>(a, t, 3 * kPadding, length);
}

}  // namespace hops::cpu::gdn
