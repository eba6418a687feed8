#include "dtype.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

namespace hops::conformance {

DLDataType to_dl(DType t) {
  switch (t) {
    case DType::f32:
      return {kDLFloat, 32, 1};
    case DType::f16:
      return {kDLFloat, 16, 1};
    case DType::bf16:
      return {kDLBfloat, 16, 1};
    case DType::i32:
      return {kDLInt, 32, 1};
    case DType::i64:
      return {kDLInt, 64, 1};
  }
  return {};
}

int size_of(DType t) {
  switch (t) {
    case DType::f16:
    case DType::bf16:
      return 2;
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
  }
  return 0;
}

std::string_view name_of(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
  }
  return "?";
}

bool is_float(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; }

uint16_t float_to_bf16(float x) {
  const auto bits = std::bit_cast<uint32_t>(x);
  if (std::isnan(x)) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);  // ties to even
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float bf16_to_float(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

// Written independently of the plugin's version on purpose: a shared bug
// would otherwise hide in both.
uint16_t float_to_f16(float x) {
  if (std::isnan(x)) return 0x7e00;
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double magnitude = std::fabs(static_cast<double>(x));
  if (magnitude >= 65520.0) return sign | 0x7c00;  // rounds past the largest half
  // Quantum of the binade (subnormals share 2^-24), then round to nearest even
  // in double, which holds every float exactly.
  int exponent = 0;
  std::frexp(magnitude, &exponent);  // magnitude = m * 2^exponent, m in [0.5, 1)
  const int quantum_exp = std::max(exponent - 11, -24);
  const double units = std::nearbyint(std::ldexp(magnitude, -quantum_exp));  // FE_TONEAREST
  const double rounded = std::ldexp(units, quantum_exp);
  if (rounded < 0x1p-14) return sign | static_cast<uint16_t>(units);  // subnormal or zero
  int e = 0;
  const double m = std::frexp(rounded, &e);  // rounded = m * 2^e
  const auto biased = static_cast<uint16_t>(e - 1 + 15);
  const auto mantissa = static_cast<uint16_t>(std::ldexp(m, 11) - 1024.0);
  return sign | static_cast<uint16_t>(biased << 10) | mantissa;
}

float f16_to_float(uint16_t bits) {
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  double magnitude = 0;
  if (exponent == 0x1f) {
    magnitude = mantissa ? NAN : INFINITY;
  } else if (exponent == 0) {
    magnitude = std::ldexp(mantissa, -24);
  } else {
    magnitude = std::ldexp(mantissa + 1024, exponent - 25);
  }
  return static_cast<float>((bits & 0x8000) ? -magnitude : magnitude);
}

void store(DType t, void* base, int64_t index, double value) {
  auto* bytes = static_cast<unsigned char*>(base) + index * size_of(t);
  switch (t) {
    case DType::f32: {
      const auto v = static_cast<float>(value);
      std::memcpy(bytes, &v, sizeof v);
      return;
    }
    case DType::f16:
    case DType::bf16: {
      const auto f = static_cast<float>(value);
      const auto v = t == DType::f16 ? float_to_f16(f) : float_to_bf16(f);
      std::memcpy(bytes, &v, sizeof v);
      return;
    }
    case DType::i32: {
      const auto v = static_cast<int32_t>(value);
      std::memcpy(bytes, &v, sizeof v);
      return;
    }
    case DType::i64: {
      const auto v = static_cast<int64_t>(value);
      std::memcpy(bytes, &v, sizeof v);
      return;
    }
  }
}

double load(DType t, const void* base, int64_t index) {
  const auto* bytes = static_cast<const unsigned char*>(base) + index * size_of(t);
  switch (t) {
    case DType::f32: {
      float v = 0;
      std::memcpy(&v, bytes, sizeof v);
      return v;
    }
    case DType::f16:
    case DType::bf16: {
      uint16_t v = 0;
      std::memcpy(&v, bytes, sizeof v);
      return t == DType::f16 ? f16_to_float(v) : bf16_to_float(v);
    }
    case DType::i32: {
      int32_t v = 0;
      std::memcpy(&v, bytes, sizeof v);
      return v;
    }
    case DType::i64: {
      int64_t v = 0;
      std::memcpy(&v, bytes, sizeof v);
      return static_cast<double>(v);
    }
  }
  return 0;
}

uint32_t poison_bits(DType t) {
  switch (t) {
    case DType::f32:
      return 0x7fc0dead;
    case DType::f16:
      return 0x7e5a;
    case DType::bf16:
      return 0x7fda;
    default:  // index outputs (MoE's ids, counts, row maps): no count or id is this large
      return 0x7fc0dead;
  }
}

uint32_t bits_at(DType t, const void* base, int64_t index) {
  const auto* bytes = static_cast<const unsigned char*>(base) + index * size_of(t);
  if (size_of(t) == 2) {
    uint16_t v = 0;
    std::memcpy(&v, bytes, sizeof v);
    return v;
  }
  uint32_t v = 0;
  std::memcpy(&v, bytes, sizeof v);
  return v;
}

}  // namespace hops::conformance
