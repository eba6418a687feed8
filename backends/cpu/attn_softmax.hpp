// The vector helpers of the prefill's online softmax (attn_prefill.cpp and
// attn_prefill_bf16.cpp): 16-float vectors written with GCC's vector
// extension, and 2^x in fp32. They compile to the ISA of the code that
// includes them: attn_prefill_bf16.cpp includes this inside its AVX-512
// region, since clang rejects passing these vectors by value between
// functions of different ISAs. Hence the unnamed namespace: each file has
// its own copies, which may differ in ISA.
#pragma once

#include <cstdint>

namespace hops::cpu::attn::softmax {

namespace {  // NOLINT(*-anonymous-namespace-in-header): per file, see above

// The scores are in base 2 (the scale carries log2(e)): softmax weights are
// 2^(s - max), and ln 2 turns the max back into natural units for lse.
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2 = 0.693147180559945309f;

// 16 floats, written out: GCC kept arrays of lanes on the stack and reduced
// them through store-forwarding stalls. One or more registers per ISA level;
// the helpers that pass them by value are always inlined, so the ABI warning
// about vector arguments of another width (-Wpsabi) does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
// NOLINTNEXTLINE(modernize-use-using)
typedef float Floats __attribute__((vector_size(16 * sizeof(float))));
// NOLINTNEXTLINE(modernize-use-using)
typedef int32_t Ints __attribute__((vector_size(16 * sizeof(int32_t))));
inline constexpr int64_t kLanes = 16;

[[gnu::always_inline]] inline Floats load(const float* p) {
  Floats v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
[[gnu::always_inline]] inline void store(float* p, Floats v) { __builtin_memcpy(p, &v, sizeof(v)); }
[[gnu::always_inline]] inline Floats max(Floats a, Floats b) { return a > b ? a : b; }

// The lanes combined by halves (shuffles, log2(16) levels).
template <class Combine>
[[gnu::always_inline]] inline float reduce(Floats v, Combine combine) {
  v = combine(v,
              __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = combine(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3));
  v = combine(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1));
  v = combine(v, __builtin_shufflevector(v, v, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0));
  return v[0];
}

// 2^x for x = s - max <= 0, half the instructions of exp_approx (the
// softmax's exponentials were 15% of the time): x = n + f with |f| <= 1/2,
// 2^f by its degree-6 Taylor polynomial (relative error < 1.2e-7), 2^n in
// the exponent bits. Below -126 it gives 2^-126, nothing next to the row's
// largest weight, 1; NaN stays NaN.
[[gnu::always_inline]] inline Floats exp2_weights(Floats x) {
  const Floats clamped = x > -126.0f ? x : -126.0f;  // NaN too, for the conversion
  constexpr float kRound = 12582912.0f;              // 1.5 * 2^23: adding it rounds to an integer
  const Floats n = (clamped + kRound) - kRound;
  const Floats f = clamped - n;
  Floats p = f * 1.5403530393381609e-4f + 1.3333558146428443e-3f;  // ln2^k / k!, k = 6 .. 0
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  const Ints exponent = (__builtin_convertvector(n, Ints) + 127) << 23;
  // (The builtin, not std::bit_cast: a function outside the includer's ISA.)
  const Floats e = p * __builtin_bit_cast(Floats, exponent);
  return x != x ? x : e;  // NOLINT(misc-redundant-expression): the NaN lanes
}

}  // namespace

}  // namespace hops::cpu::attn::softmax
