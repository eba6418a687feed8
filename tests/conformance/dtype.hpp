// Element types the runner builds tensors of, and the float <-> f16/bf16
// conversions (round to nearest even) that make a case's inputs exactly the
// values the float64 reference then sees.
#pragma once

#include <cstdint>
#include <string_view>

#include "hops/hops.h"

namespace hops::conformance {

enum class DType { f32, f16, bf16, i32, i64 };

inline constexpr DType kFloatTypes[] = {DType::f32, DType::f16, DType::bf16};

DLDataType to_dl(DType t);
int size_of(DType t);
std::string_view name_of(DType t);
bool is_float(DType t);

uint16_t float_to_f16(float x);
float f16_to_float(uint16_t bits);
uint16_t float_to_bf16(float x);
float bf16_to_float(uint16_t bits);

// Stores `value` as element `index` of a buffer of dtype `t`, and reads it back.
void store(DType t, void* base, int64_t index, double value);
double load(DType t, const void* base, int64_t index);

// A quiet NaN with a recognisable payload: what every output holds before a call,
// so that an element the op never wrote shows up, bit for bit.
uint32_t poison_bits(DType t);
// The raw bits of float element `index` (zero-extended for 16-bit types).
uint32_t bits_at(DType t, const void* base, int64_t index);

}  // namespace hops::conformance
