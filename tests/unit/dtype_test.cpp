#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>

#include "dtype.hpp"

namespace hops {
namespace {

TEST(Dtype, Bf16RoundsToNearestEven) {
  EXPECT_EQ(from_float<bf16>(1.0f).bits, 0x3f80);
  // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one.
  EXPECT_EQ(from_float<bf16>(1.0f + 0x1p-8f).bits, 0x3f80);
  EXPECT_EQ(from_float<bf16>(1.0f + 3 * 0x1p-8f).bits, 0x3f82);
  EXPECT_TRUE(std::isnan(to_float(from_float<bf16>(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(Dtype, F16KnownValues) {
  EXPECT_EQ(from_float<f16>(1.0f).bits, 0x3c00);
  EXPECT_EQ(from_float<f16>(-2.0f).bits, 0xc000);
  EXPECT_EQ(from_float<f16>(65504.0f).bits, 0x7bff);
  EXPECT_EQ(from_float<f16>(65520.0f).bits, 0x7c00);         // rounds up to infinity
  EXPECT_EQ(from_float<f16>(0x1p-24f).bits, 0x0001);         // smallest subnormal
  EXPECT_EQ(from_float<f16>(0x1p-26f).bits, 0x0000);         // below half of it
  EXPECT_EQ(from_float<f16>(1.0f + 0x1p-11f).bits, 0x3c00);  // tie to even
  EXPECT_TRUE(std::isnan(to_float(from_float<f16>(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(Dtype, F16RoundTripsEveryFiniteHalf) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const f16 h{static_cast<uint16_t>(bits)};
    const float x = to_float(h);
    if (std::isnan(x)) continue;
    EXPECT_EQ(from_float<f16>(x).bits, h.bits) << std::hex << bits;
  }
}

TEST(Dtype, DlpackNames) {
  EXPECT_EQ(dtype_from_dl({kDLBfloat, 16, 1}), DType::bf16);
  EXPECT_FALSE(dtype_from_dl({kDLFloat, 32, 4}).has_value());
  EXPECT_EQ(dl_dtype_name({kDLFloat, 32, 4}), "float32x4");
  EXPECT_EQ(dtype_mask_names(HOPS_DTYPE_FLOATS), "{f32, f16, bf16}");
}

}  // namespace
}  // namespace hops
