// The overflow-checked size helpers (plugin/checked_math.hpp) and the tensor
// arithmetic built on them.
#include "checked_math.hpp"

#include <gtest/gtest.h>

#include <limits>

#include "error.hpp"
#include "tensor.hpp"

namespace hops {
namespace {

constexpr int64_t kBig = int64_t{1} << 40;

hops_status status_of(auto&& body) {
  try {
    body();
  } catch (const Error& e) {
    return e.status();
  }
  return HOPS_OK;
}

TEST(CheckedMath, TryOpsReportOverflow) {
  EXPECT_EQ(try_mul(kBig, 1 << 20), kBig << 20);
  EXPECT_FALSE(try_mul(kBig, kBig));
  EXPECT_FALSE(try_mul(INT64_MIN, -1));
  EXPECT_EQ(try_add(INT64_MAX - 1, 1), INT64_MAX);
  EXPECT_FALSE(try_add(INT64_MAX, 1));
}

TEST(CheckedMath, ProductsAreBoundedAndRejectNegatives) {
  EXPECT_EQ(try_product(kMaxElements, 1 << 16, 1 << 16, 1 << 16), int64_t{1} << 48);
  EXPECT_FALSE(try_product(kMaxElements, 1 << 16, 1 << 16, 1 << 16, 2));
  EXPECT_FALSE(try_product(INT64_MAX, kBig, kBig, 0));  // overflow before the zero
  EXPECT_EQ(try_product(INT64_MAX, 0, kBig, kBig), std::optional<int64_t>{0});
  EXPECT_FALSE(try_product(INT64_MAX, 3, -2));
  // A size_t past INT64_MAX is not a size.
  EXPECT_FALSE(try_product(INT64_MAX, std::numeric_limits<size_t>::max()));
}

TEST(CheckedMath, ThrowingHelpersNameWhat) {
  EXPECT_EQ(checked_product("op", kBig, 1 << 10), kBig << 10);
  try {
    checked_product("gdn_chunk_fwd: argument 'v'", kBig, kBig);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), HOPS_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("gdn_chunk_fwd: argument 'v'"), std::string::npos);
  }
  EXPECT_EQ(status_of([] { checked_add("op", INT64_MAX, 1); }), HOPS_ERR_INVALID_ARGUMENT);
}

TEST(CheckedMath, ScratchSizesStopAtTheLimit) {
  EXPECT_EQ(scratch_bytes("op", kMaxScratchBytes / 4, sizeof(float)),
            static_cast<size_t>(kMaxScratchBytes));
  EXPECT_EQ(status_of([] { scratch_bytes("op", kMaxScratchBytes / 4 + 1, sizeof(float)); }),
            HOPS_ERR_OUT_OF_MEMORY);
  // What used to wrap to a few KB: 16 x 2^60 floats.
  EXPECT_EQ(status_of([] { scratch_size("op", 16, int64_t{1} << 60, sizeof(float)); }),
            HOPS_ERR_OUT_OF_MEMORY);
  EXPECT_EQ(scratch_sum("op", 1, 2, 3), 6);
  EXPECT_EQ(status_of([] { scratch_sum("op", kMaxScratchBytes, 1); }), HOPS_ERR_OUT_OF_MEMORY);
  EXPECT_EQ(status_of([] { scratch_sum("op", 1, -1); }), HOPS_ERR_OUT_OF_MEMORY);
}

Tensor tensor_of(std::initializer_list<int64_t> shape, std::initializer_list<int64_t> stride) {
  Tensor t;
  t.exists = true;
  t.ndim = static_cast<int>(shape.size());
  std::copy(shape.begin(), shape.end(), t.shape.begin());
  std::copy(stride.begin(), stride.end(), t.stride.begin());
  return t;
}

TEST(CheckedMath, ExtentBytesChecksEveryStep) {
  EXPECT_EQ(extent_bytes(tensor_of({2, 3}, {3, 1})), 24);
  EXPECT_EQ(extent_bytes(tensor_of({0, 5}, {int64_t{1} << 62, 1})), 0);  // empty
  // (shape - 1) * stride overflows int64: no span, not a wrapped small one.
  EXPECT_FALSE(extent_bytes(tensor_of({10, 4}, {int64_t{1} << 62, 1})));
  EXPECT_FALSE(extent_bytes(tensor_of({1025, 1}, {int64_t{1} << 48, 1})));
  EXPECT_TRUE(extent_bytes(tensor_of({2, 1}, {int64_t{1} << 48, 1})));
}

TEST(CheckedMath, NumelAndContiguousDoNotWrap) {
  EXPECT_EQ(tensor_of({0, kBig, kBig}, {1, 1, 1}).numel(), 0);
  EXPECT_EQ(status_of([] {
              (void)tensor_of({2, kBig, kBig}, {1, 1, 1}).numel();
            }),
            HOPS_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(status_of([] {
              (void)tensor_of({3, kBig, kBig}, {0, kBig, 1}).contiguous();
            }),
            HOPS_ERR_INVALID_ARGUMENT);
}

TEST(CheckedMath, DeviceTypesAreReadAsIntegers) {
  DLDevice device{kDLCPU, 0};
  EXPECT_EQ(read_device(device)->device_type, kDLCPU);
  const int32_t bad = 999;
  std::memcpy(&device.device_type, &bad, sizeof bad);
  EXPECT_EQ(raw_device_type(device), 999);
  EXPECT_FALSE(read_device(device));
  const int32_t zero = 0;
  std::memcpy(&device.device_type, &zero, sizeof zero);
  EXPECT_FALSE(read_device(device));
}

}  // namespace
}  // namespace hops
