// What the CPU backend's op families (<family>*.cpp) share: the small
// helpers of their kernels. Kernels compute in fp32 whatever the storage dtype.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "backend.hpp"
#include "scratch_pool.hpp"
#include "thread_pool.hpp"

// Hot loops are compiled once per x86-64 ISA level (AVX-512, AVX2 + FMA,
// SSE2) and the loader binds the widest one the CPU runs.
#if defined(__x86_64__)
#define HOPS_VECTOR_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOPS_VECTOR_CLONES
#endif

namespace hops::cpu {

// ---- shared helpers ----------------------------------------------------------

// Keeps a vector in a register: GCC folds a load into every FMA that reads
// the value, and in a register-tiled loop those loads, not the FMAs, then
// bound it. GCC only: clang rejects the constraint for vectors wider than the
// baseline ISA's registers (the fuzz build compiles one clone, the baseline).
template <class V>
[[gnu::always_inline]] inline void pin_to_register(V& v) {
#if defined(__x86_64__) && !defined(__clang__)
  asm("" : "+v"(v));
#else
  (void)v;
#endif
}

// e^x, branch-free so that loops calling it vectorise (std::exp is a scalar
// libm call: it was most of the time of conv1d and gated_rmsnorm, and its
// underflow path, which sets errno, was 7% of the chunk kernel's on strongly
// decaying heads). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and
// Cephes' degree-6 polynomial for e^r: within 2 ulp of e^x for x in
// [-87.3, 88.3]. Above, x is clamped (no inf); below, the result is 0 where
// e^x would be subnormal (< 1.2e-38): the decays of the GDN kernels reach it
// within a chunk, and subnormal operands are slow in the GEMMs that follow.
inline float exp_approx(float x) {
  constexpr float kLowest = -87.33f;  // e^kLowest is about the smallest normal float
  const bool underflows = x < kLowest;
  const bool nan = x != x;
  // Selects, vectorised (-fno-trapping-math); this order maps NaN to kLowest, as the
  // integer conversion below needs a number (NaN is returned as it came).
  x = std::min(88.3f, std::max(kLowest, x));
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float e = p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return underflows ? 0.0f : (nan ? std::numeric_limits<float>::quiet_NaN() : e);
}
// From e^-|x| in (0, 1]: one division per element, no overflow to guard.
inline float sigmoid(float x) {
  const float e = exp_approx(-std::abs(x));
  return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}
inline float silu(float x) { return x * sigmoid(x); }
// torch.nn.functional.softplus: linear above the threshold.
inline float softplus(float x, float beta, float threshold) {
  return beta * x > threshold ? x : std::log1p(std::exp(beta * x)) / beta;
}

// x.y with independent partial sums: one running sum is a serial chain of
// adds that the compiler may not reorder, hence not vectorise.
inline float dot(const float* __restrict x, const float* __restrict y, int64_t n) {
  constexpr int kLanes = 16;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] += x[i + l] * y[i + l];
  }
  float sum = 0.0f;
  for (; i < n; ++i) sum += x[i] * y[i];
  for (const float lane : lanes) sum += lane;
  return sum;
}

// Element `offset` (in elements) of a float tensor, as float.
inline float load(const Tensor& t, int64_t offset) {
  return visit_float(t.dtype, [&]<class T>(T) { return to_float(t.data<const T>()[offset]); });
}
inline void store(const Tensor& t, int64_t offset, float value) {
  visit_float(t.dtype, [&]<class T>(T) { t.data<T>()[offset] = from_float<T>(value); });
}

// count elements from `offset` with stride `step`, as floats: one dtype
// dispatch for the whole run instead of one per element, and a loop of its
// own for contiguous runs (the usual case), which vectorises. An empty run
// touches nothing: an empty tensor's data may be NULL, and NULL + offset is UB.
inline void load_run(const Tensor& t, int64_t offset, int64_t step, int64_t count,
                     float* __restrict out) {
  if (count <= 0) return;
  visit_float(t.dtype, [&]<class T>(T) {
    const T* __restrict in = t.data<const T>() + offset;
    if (step == 1) {
      for (int64_t i = 0; i < count; ++i) out[i] = to_float(in[i]);
    } else {
      for (int64_t i = 0; i < count; ++i) out[i] = to_float(in[i * step]);
    }
  });
}
inline void store_run(const Tensor& t, int64_t offset, int64_t step, int64_t count,
                      const float* __restrict in) {
  if (count <= 0) return;
  visit_float(t.dtype, [&]<class T>(T) {
    T* __restrict out = t.data<T>() + offset;
    if (step == 1) {
      for (int64_t i = 0; i < count; ++i) out[i] = from_float<T>(in[i]);
    } else {
      for (int64_t i = 0; i < count; ++i) out[i * step] = from_float<T>(in[i]);
    }
  });
}

// Offset of row `row` when the tensor is viewed as [rows, last dim]: the
// leading dims may have any strides, so the row index is decomposed.
inline int64_t row_offset(const Tensor& t, int64_t row) {
  int64_t offset = 0;
  for (int d = t.ndim - 2; d >= 0; --d) {
    offset += (row % t.shape[d]) * t.stride[d];
    row /= t.shape[d];
  }
  return offset;
}

// Row offsets of a tensor viewed as [rows, last dim]: one multiply when the
// leading dims collapse into a single stride (the common case), else the
// division-per-dim decomposition of row_offset.
class RowOffsets {
 public:
  explicit RowOffsets(const Tensor& t) : tensor_(t), stride_(collapsed_stride(t)) {}
  int64_t operator()(int64_t row) const {
    return stride_ >= 0 ? row * stride_ : row_offset(tensor_, row);
  }

 private:
  static int64_t collapsed_stride(const Tensor& t) {
    if (t.ndim < 2) return 0;
    for (int d = t.ndim - 2; d > 0; --d) {
      if (t.shape[d - 1] > 1 && t.stride[d - 1] != t.stride[d] * t.shape[d]) return -1;
    }
    return t.stride[t.ndim - 2];
  }
  const Tensor& tensor_;
  int64_t stride_;
};

}  // namespace hops::cpu
