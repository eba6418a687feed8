#include <gtest/gtest.h>

#include "registry.hpp"

namespace hops {
namespace {

TEST(ModuleLoader, ListsModulesWhateverTheirState) {
  const auto modules = load_backend_modules(HOPS_TEST_MODULE_DIR);
  ASSERT_EQ(modules.size(), 2u);
  // Sorted by file name: libhops_broken.so, libhops_testdev.so.
  EXPECT_EQ(modules[0].name, "broken");
  EXPECT_FALSE(modules[0].available);
  EXPECT_NE(modules[0].detail.find("hops_backend_init_v1"), std::string::npos) << modules[0].detail;
  EXPECT_EQ(modules[1].name, "testdev");
  EXPECT_FALSE(modules[1].available);
  EXPECT_EQ(modules[1].score, 5);
  EXPECT_NE(modules[1].detail.find("no test device"), std::string::npos) << modules[1].detail;
}

TEST(ModuleLoader, MissingFolderIsNoError) {
  EXPECT_TRUE(load_backend_modules("/nonexistent/hops/modules").empty());
}

}  // namespace
}  // namespace hops
