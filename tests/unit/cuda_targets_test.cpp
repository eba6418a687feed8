// carries_code_for: which devices a CUDA target list runs on (cubins within
// their major version, PTX forward, "a" targets on their own version only).
#include "cuda_targets.hpp"

#include <gtest/gtest.h>

using hops::cuda::carries_code_for;

TEST(CudaTargets, HopperOnlyByDefault) {
  EXPECT_TRUE(carries_code_for("90a", 9, 0));
  EXPECT_FALSE(carries_code_for("90a", 8, 0));
  EXPECT_FALSE(carries_code_for("90a", 8, 9));
  EXPECT_FALSE(carries_code_for("90a", 10, 0));  // compute_90a PTX is not forward compatible
}

TEST(CudaTargets, CubinsRunWithinTheirMajorVersion) {
  EXPECT_TRUE(carries_code_for("80-real", 8, 0));
  EXPECT_TRUE(carries_code_for("80-real", 8, 6));
  EXPECT_TRUE(carries_code_for("80-real", 8, 9));
  EXPECT_FALSE(carries_code_for("80-real", 9, 0));
  EXPECT_FALSE(carries_code_for("86-real", 8, 0));
  EXPECT_FALSE(carries_code_for("80-real", 7, 5));
}

TEST(CudaTargets, PtxRunsOnNewerDevices) {
  EXPECT_TRUE(carries_code_for("80-virtual", 9, 0));
  EXPECT_TRUE(carries_code_for("80-virtual", 12, 0));
  EXPECT_TRUE(carries_code_for("80", 9, 0));  // a plain entry: cubin and PTX
  EXPECT_FALSE(carries_code_for("80-virtual", 7, 5));
  EXPECT_FALSE(carries_code_for("89-virtual", 8, 6));
}

TEST(CudaTargets, ListsMatchAnyEntry) {
  constexpr const char* kField = "80-real;86-real;89-real;90a";
  EXPECT_TRUE(carries_code_for(kField, 8, 0));
  EXPECT_TRUE(carries_code_for(kField, 8, 7));
  EXPECT_TRUE(carries_code_for(kField, 9, 0));
  EXPECT_FALSE(carries_code_for(kField, 10, 0));
  EXPECT_FALSE(carries_code_for("", 9, 0));
}
