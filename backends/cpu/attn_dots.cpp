// attn::dots: the scores of a few query rows against cache rows, for decode.
// A GEMM with the keys as its broadcast operand would fill a vector with the
// G = 8 query rows of a key-value head, half the lanes of an AVX-512 vector;
// here the vectors run along the head dim instead (every lane useful), a tile
// of 8 rows x 2 keys of accumulators, and the 16 dot products are summed
// across lanes together by a transposing reduction (log2(lanes) levels of two
// shuffles and an add per pair).
#include <utility>

#include "attn.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace hops::cpu::attn {

namespace {

constexpr int kTileRows = 8;
constexpr int kTileKeys = 2;

template <int Lanes>
struct Simd {
  // NOLINTNEXTLINE(modernize-use-using)
  typedef float vec __attribute__((vector_size(Lanes * sizeof(float))));
};

// Reduction level with groups of `Group` partial sums per input in each
// vector: output lane o of the pair (x, y) takes group o / (Group / 2) (x's
// groups first) and the first (lo) or second (hi) half of that group.
constexpr int half_index(int lanes, int group, int o, bool hi) {
  const int half = group / 2, groups = lanes / group;
  const int source = o / half;
  return (source < groups ? 0 : lanes) + (source % groups) * group + o % half + (hi ? half : 0);
}

// (Vectors pass by pointer: a vector argument or result would change the ABI
// between ISA levels.)
template <int Lanes, int Group, size_t... O>
[[gnu::always_inline]] inline void combine(typename Simd<Lanes>::vec* out,
                                           const typename Simd<Lanes>::vec* x,
                                           const typename Simd<Lanes>::vec* y,
                                           std::index_sequence<O...>) {
  *out = __builtin_shufflevector(*x, *y, half_index(Lanes, Group, O, false)...) +
         __builtin_shufflevector(*x, *y, half_index(Lanes, Group, O, true)...);
}

// v[0 .. Lanes) -> v[0], whose lane i is the sum of the lanes of v[i].
template <int Lanes, int Group = Lanes>
[[gnu::always_inline]] inline void reduce(typename Simd<Lanes>::vec* v) {
  if constexpr (Group > 1) {
    // Group vectors are left at this level (Lanes inputs x Group partial sums).
    for (int i = 0; i < Group / 2; ++i) {
      combine<Lanes, Group>(v + i, v + 2 * i, v + 2 * i + 1, std::make_index_sequence<Lanes>());
    }
    reduce<Lanes, Group / 2>(v);
  }
}

// Rows x 2 keys: q rows [Rows, ld_q], keys k0 and k1, depth floats each;
// the first `keys` of them written.
template <int Lanes, int Rows>
[[gnu::always_inline]] inline void dot_tile(const float* __restrict q, int64_t ld_q,
                                            const float* __restrict k0, const float* __restrict k1,
                                            int64_t depth, float* __restrict out, int64_t ld_out,
                                            int keys) {
  using vec = typename Simd<Lanes>::vec;
  constexpr int kAcc = Rows * kTileKeys;
  constexpr int kPadded = (kAcc + Lanes - 1) / Lanes * Lanes;
  vec acc[kPadded];
  for (int i = 0; i < kPadded; ++i) acc[i] = vec{};
  for (int64_t d = 0; d < depth; d += Lanes) {
    vec a, b;
    __builtin_memcpy(&a, k0 + d, sizeof(vec));
    __builtin_memcpy(&b, k1 + d, sizeof(vec));
    for (int r = 0; r < Rows; ++r) {
      vec x;
      __builtin_memcpy(&x, q + r * ld_q + d, sizeof(vec));
      pin_to_register(x);  // GCC would fold its load into both FMAs: 1.5x slower
      acc[r] += x * a;
      acc[Rows + r] += x * b;
    }
  }
  // acc is [key][row]: the reduced sums are the output rows of each key in order.
  float sums[kPadded];
  for (int base = 0; base < kAcc; base += Lanes) {
    reduce<Lanes>(acc + base);
    __builtin_memcpy(sums + base, acc + base, sizeof(vec));
  }
  for (int key = 0; key < keys; ++key) {
    __builtin_memcpy(out + key * ld_out, sums + key * Rows, Rows * sizeof(float));
  }
}

template <int Lanes, int Rows = kTileRows>
[[gnu::always_inline]] inline void dot_rows(const float* q, int64_t rows, int64_t ld_q,
                                            const float* k0, const float* k1, int64_t depth,
                                            float* out, int64_t ld_out, int keys) {
  if constexpr (Rows > 0) {
    if (rows == Rows) return dot_tile<Lanes, Rows>(q, ld_q, k0, k1, depth, out, ld_out, keys);
    return dot_rows<Lanes, Rows - 1>(q, rows, ld_q, k0, k1, depth, out, ld_out, keys);
  }
}

template <int Lanes>
[[gnu::always_inline]] inline void dots_body(const Dots& p) {
  constexpr int64_t kLineBytes = 64;
  const int64_t tiles = (p.count + kTileKeys - 1) / kTileKeys;
  const int64_t lines = (p.ahead_bytes + kLineBytes - 1) / kLineBytes;
  const int64_t per_tile = (lines + tiles - 1) / std::max<int64_t>(tiles, 1);
  int64_t line = 0;
  for (int64_t t = 0; t < p.count; t += kTileKeys) {
    for (int64_t i = 0; i < per_tile && line < lines; ++i, ++line) {
      __builtin_prefetch(p.ahead + line * kLineBytes, 0, 2);
    }
    const int keys = static_cast<int>(std::min<int64_t>(kTileKeys, p.count - t));
    const float* k0 = p.keys + t * p.ld_keys;
    const float* k1 = keys > 1 ? k0 + p.ld_keys : k0;
    for (int64_t r = 0; r < p.rows; r += kTileRows) {
      dot_rows<Lanes>(p.q + r * p.ld_q, std::min<int64_t>(kTileRows, p.rows - r), p.ld_q, k0, k1,
                      p.depth, p.out + t * p.ld_out + r, p.ld_out, keys);
    }
  }
}

#if defined(__x86_64__)
[[gnu::target("avx512f")]] void dots_avx512(const Dots& p) { dots_body<16>(p); }
[[gnu::target("avx2,fma")]] void dots_avx2(const Dots& p) { dots_body<8>(p); }
#endif
void dots_baseline(const Dots& p) { dots_body<4>(p); }

}  // namespace

void dots(const Dots& p) {
  static const auto variant = [] {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) return &dots_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &dots_avx2;
#endif
    return &dots_baseline;
  }();
  variant(p);
}

}  // namespace hops::cpu::attn
