// Overflow-checked size arithmetic. Element counts, byte extents, stride
// spans and scratch sizes are computed with these helpers, never by hand, so
// that no size can wrap whatever a host passes (docs/DECISIONS.md,
// Validation: the bounds below). Host code only: device code never sees them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "hops/hops.h"

namespace hops {

// Bounds every validated tensor meets. They are far beyond any real tensor
// (2^48 elements is 1 PiB of f32) and small enough that every offset into a
// validated tensor, in elements or in bytes, fits in an int64_t.
//   kMaxElements: the product of its dims, a 0 dim counted as 1 (so each dim
//                 is bounded whatever the others are);
//   kMaxStride:   any one stride, in elements;
//   kMaxBytes:    its byte span (first to last element) and its byte_offset.
inline constexpr int64_t kMaxElements = int64_t{1} << 48;
inline constexpr int64_t kMaxStride = int64_t{1} << 48;
inline constexpr int64_t kMaxBytes = int64_t{1} << 56;
// One scratch request: above it a call fails with HOPS_ERR_OUT_OF_MEMORY
// before asking any allocator (no machine has 1 TiB to lend a call).
inline constexpr int64_t kMaxScratchBytes = int64_t{1} << 40;

// Throws Error(status, "<what>: <problem>") (error.cpp): out of line, so that
// this header needs no fmt and also serves the CUDA module's .cu host code.
[[noreturn]] void fail_size(hops_status status, std::string_view what, std::string_view problem);

// a * b and a + b, or nothing when the result does not fit: for validation,
// which names the argument itself.
inline std::optional<int64_t> try_mul(int64_t a, int64_t b) {
  int64_t result = 0;
  if (__builtin_mul_overflow(a, b, &result)) return std::nullopt;
  return result;
}
inline std::optional<int64_t> try_add(int64_t a, int64_t b) {
  int64_t result = 0;
  if (__builtin_add_overflow(a, b, &result)) return std::nullopt;
  return result;
}

// The product of `factors`, or nothing when one is negative (a size_t past
// INT64_MAX included) or the product exceeds `bound`.
template <class... Factors>
std::optional<int64_t> try_product(int64_t bound, Factors... factors) {
  int64_t result = 1;
  for (const int64_t factor : {static_cast<int64_t>(factors)...}) {
    if (factor < 0) return std::nullopt;
    const std::optional<int64_t> next = try_mul(result, factor);
    if (!next || *next > bound) return std::nullopt;
    result = *next;
  }
  return result;
}

// The product of `factors`; throws HOPS_ERR_INVALID_ARGUMENT naming `what`
// (e.g. "gdn_chunk_fwd: argument 'v'") when it exceeds 2^63 - 1.
template <class... Factors>
int64_t checked_product(std::string_view what, Factors... factors) {
  const std::optional<int64_t> result = try_product(INT64_MAX, factors...);
  if (!result) fail_size(HOPS_ERR_INVALID_ARGUMENT, what, "a size overflows 64 bits");
  return *result;
}

// a + b; throws HOPS_ERR_INVALID_ARGUMENT naming `what` when it overflows.
inline int64_t checked_add(std::string_view what, int64_t a, int64_t b) {
  const std::optional<int64_t> result = try_add(a, b);
  if (!result) fail_size(HOPS_ERR_INVALID_ARGUMENT, what, "a size overflows 64 bits");
  return *result;
}

// Scratch sizes (in elements or bytes): the product or sum of their parts,
// at most kMaxScratchBytes; else HOPS_ERR_OUT_OF_MEMORY naming `what` (the
// op): a call whose scratch would not fit in 2^40 bytes cannot run.
template <class... Factors>
int64_t scratch_size(std::string_view what, Factors... factors) {
  const std::optional<int64_t> result = try_product(kMaxScratchBytes, factors...);
  if (!result)
    fail_size(HOPS_ERR_OUT_OF_MEMORY, what, "the call needs more than 2^40 bytes of scratch");
  return *result;
}
template <class... Terms>
int64_t scratch_sum(std::string_view what, Terms... terms) {
  int64_t result = 0;
  for (const int64_t term : {static_cast<int64_t>(terms)...}) {
    const std::optional<int64_t> next = term < 0 ? std::nullopt : try_add(result, term);
    if (!next || *next > kMaxScratchBytes) {
      fail_size(HOPS_ERR_OUT_OF_MEMORY, what, "the call needs more than 2^40 bytes of scratch");
    }
    result = *next;
  }
  return result;
}
// Bytes of one scratch request: scratch_size as a size_t.
template <class... Factors>
size_t scratch_bytes(std::string_view what, Factors... factors) {
  return static_cast<size_t>(scratch_size(what, factors...));
}

}  // namespace hops
