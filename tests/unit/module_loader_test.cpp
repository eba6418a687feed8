#include <gtest/gtest.h>

#include "ops/norm.hpp"
#include "registry.hpp"

namespace hops {
namespace {

bool mentions(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string hex(uint64_t value) { return fmt::format("{:016x}", value); }

TEST(ModuleLoader, ListsModulesWhateverTheirState) {
  const auto modules = load_backend_modules(HOPS_TEST_MODULE_DIR);
  ASSERT_EQ(modules.size(), 5u);
  // Sorted by file name: broken, legacy, stale, stalekernel, testdev.
  EXPECT_EQ(modules[0].name, "broken");
  EXPECT_FALSE(modules[0].available);
  EXPECT_TRUE(mentions(modules[0].detail, "hops_backend_module")) << modules[0].detail;
  EXPECT_EQ(modules[4].name, "testdev");
  EXPECT_FALSE(modules[4].available);
  EXPECT_EQ(modules[4].score, 5);
  EXPECT_EQ(modules[4].kernels.size(), 1u);
  EXPECT_TRUE(mentions(modules[4].detail, "no test device")) << modules[4].detail;
}

// A module of the unversioned interface is refused without reading its struct.
TEST(ModuleLoader, RefusesAModuleOfInterfaceOne) {
  const auto modules = load_backend_modules(HOPS_TEST_MODULE_DIR);
  ASSERT_EQ(modules.size(), 5u);
  const Backend& legacy = modules[1];
  EXPECT_EQ(legacy.name, "legacy");
  EXPECT_FALSE(legacy.available);
  EXPECT_TRUE(legacy.kernels.empty());
  EXPECT_TRUE(mentions(legacy.detail, "interface 1")) << legacy.detail;
  EXPECT_TRUE(mentions(legacy.detail, fmt::format("interface {}", kModuleInterfaceVersion)))
      << legacy.detail;
}

// Another layout fingerprint: refused, both versions named.
TEST(ModuleLoader, RefusesAModuleOfAnotherLayout) {
  const auto modules = load_backend_modules(HOPS_TEST_MODULE_DIR);
  ASSERT_EQ(modules.size(), 5u);
  const Backend& stale = modules[2];
  EXPECT_EQ(stale.name, "stale");
  EXPECT_FALSE(stale.available);
  EXPECT_TRUE(stale.kernels.empty());
  EXPECT_TRUE(mentions(stale.detail, "refused")) << stale.detail;
  EXPECT_TRUE(mentions(stale.detail, hex(kModuleLayout ^ 0x5a5a))) << stale.detail;
  EXPECT_TRUE(mentions(stale.detail, hex(kModuleLayout))) << stale.detail;
}

// A kernel built for another layout of its op struct: the module is refused.
TEST(ModuleLoader, RefusesAKernelOfAnotherOpLayout) {
  const auto modules = load_backend_modules(HOPS_TEST_MODULE_DIR);
  ASSERT_EQ(modules.size(), 5u);
  const Backend& stale = modules[3];
  EXPECT_EQ(stale.name, "stalekernel");
  EXPECT_FALSE(stale.available);
  EXPECT_TRUE(mentions(stale.detail, "gated_rmsnorm")) << stale.detail;
  const uint64_t layout = op_layout<GatedRmsNorm>();
  EXPECT_TRUE(mentions(stale.detail, hex(layout ^ 1))) << stale.detail;
  EXPECT_TRUE(mentions(stale.detail, hex(layout))) << stale.detail;
}

TEST(ModuleLoader, MissingFolderIsNoError) {
  EXPECT_TRUE(load_backend_modules("/nonexistent/hops/modules").empty());
}

}  // namespace
}  // namespace hops
