#include "dtype.hpp"

#include <fmt/format.h>

namespace hops {

std::optional<DType> dtype_from_dl(DLDataType dl) {
  if (dl.lanes != 1) return std::nullopt;
  if (dl.code == kDLFloat && dl.bits == 32) return DType::f32;
  if (dl.code == kDLFloat && dl.bits == 16) return DType::f16;
  if (dl.code == kDLBfloat && dl.bits == 16) return DType::bf16;
  if (dl.code == kDLFloat && dl.bits == 64) return DType::f64;
  if (dl.code == kDLInt && dl.bits == 32) return DType::i32;
  if (dl.code == kDLInt && dl.bits == 64) return DType::i64;
  return std::nullopt;
}

DLDataType dtype_to_dl(DType t) {
  switch (t) {
    case DType::f32:
      return {kDLFloat, 32, 1};
    case DType::f16:
      return {kDLFloat, 16, 1};
    case DType::bf16:
      return {kDLBfloat, 16, 1};
    case DType::f64:
      return {kDLFloat, 64, 1};
    case DType::i32:
      return {kDLInt, 32, 1};
    case DType::i64:
      return {kDLInt, 64, 1};
  }
  return {kDLFloat, 32, 1};
}

uint32_t dtype_bit(DType t) {
  switch (t) {
    case DType::f32:
      return HOPS_DTYPE_F32;
    case DType::f16:
      return HOPS_DTYPE_F16;
    case DType::bf16:
      return HOPS_DTYPE_BF16;
    case DType::f64:
      return HOPS_DTYPE_F64;
    case DType::i32:
      return HOPS_DTYPE_I32;
    case DType::i64:
      return HOPS_DTYPE_I64;
  }
  return 0;
}

int dtype_size(DType t) {
  switch (t) {
    case DType::f16:
    case DType::bf16:
      return 2;
    case DType::f32:
    case DType::i32:
      return 4;
    case DType::f64:
    case DType::i64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
    case DType::f64:
      return "f64";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
  }
  return "?";
}

std::string dl_dtype_name(DLDataType dl) {
  if (auto t = dtype_from_dl(dl)) return dtype_name(*t);
  static constexpr const char* kCodes[] = {"int", "uint", "float", "handle", "bfloat", "complex"};
  const char* code = dl.code < std::size(kCodes) ? kCodes[dl.code] : "code?";
  return dl.lanes == 1 ? fmt::format("{}{}", code, dl.bits)
                       : fmt::format("{}{}x{}", code, dl.bits, dl.lanes);
}

std::string dtype_mask_names(uint32_t mask) {
  std::string names;
  for (DType t : {DType::f32, DType::f16, DType::bf16, DType::f64, DType::i32, DType::i64}) {
    if (mask & dtype_bit(t)) names += fmt::format("{}{}", names.empty() ? "" : ", ", dtype_name(t));
  }
  return "{" + names + "}";
}

}  // namespace hops
