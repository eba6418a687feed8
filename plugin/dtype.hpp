// Element types: the DLPack dtypes hops accepts, and the 16-bit float formats
// as storage types converted to and from float in registers.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "hops/hops.h"

namespace hops {

enum class DType : uint8_t { f32, f16, bf16, f64, i32, i64 };

std::optional<DType> dtype_from_dl(DLDataType dl);
DLDataType dtype_to_dl(DType t);
uint32_t dtype_bit(DType t);  // the HOPS_DTYPE_* mask bit
int dtype_size(DType t);
const char* dtype_name(DType t);
std::string dl_dtype_name(DLDataType dl);
std::string dtype_mask_names(uint32_t mask);  // "{f32, f16, bf16}"

struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) { return std::bit_cast<float>(static_cast<uint32_t>(x.bits) << 16); }
inline float to_float(f16 x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1fu;
  const uint32_t mantissa = x.bits & 0x3ffu;
  if (exponent == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0)
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Subnormal half: mantissa * 2^-24, exact in float.
  const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
  return sign ? -magnitude : magnitude;
}

template <class T>
T from_float(float x);

template <>
inline float from_float<float>(float x) {
  return x;
}

template <>
inline bf16 from_float<bf16>(float x) {
  const auto bits = std::bit_cast<uint32_t>(x);
  if (std::isnan(x)) return {static_cast<uint16_t>((bits >> 16) | 0x40u)};  // keep it a NaN
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);                  // to nearest even
  return {static_cast<uint16_t>((bits + rounding) >> 16)};
}

template <>
inline f16 from_float<f16>(float x) {
  const auto bits = std::bit_cast<uint32_t>(x);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // inf or NaN
    return {static_cast<uint16_t>(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0u))};
  }
  if (magnitude >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
  if (magnitude < 0x38800000u) {
    // Result is subnormal (or zero): scale so that the half ulp 2^-24 becomes 1,
    // and let the float unit round to nearest even.
    const float scaled = std::bit_cast<float>(magnitude) * 0x1p24f;
    return {static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)))};
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits to nearest even.
  const uint32_t rebiased = magnitude - (112u << 23);
  const uint32_t rounded = rebiased + 0xfffu + ((rebiased >> 13) & 1u);
  return {static_cast<uint16_t>(sign | (rounded >> 13))};
}

// Calls body(T{}) with T the storage type of a float dtype.
template <class Body>
decltype(auto) visit_float(DType t, Body&& body) {
  switch (t) {
    case DType::f16:
      return body(f16{});
    case DType::bf16:
      return body(bf16{});
    default:
      return body(float{});
  }
}

}  // namespace hops
