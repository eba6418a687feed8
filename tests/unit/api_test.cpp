// The API surface through hops_get_api, with the internals in reach to
// observe what the ABI cannot show (scratch allocations).
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "host_tensor.hpp"
#include "registry.hpp"

namespace hops {
namespace {

const hops_api* api() { return hops_get_api(HOPS_ABI_MAJOR); }

TEST(Api, NegotiatesTheMajorVersion) {
  ASSERT_NE(api(), nullptr);
  EXPECT_EQ(api()->abi_major, HOPS_ABI_MAJOR);
  EXPECT_GE(api()->struct_size, sizeof(hops_api));
  EXPECT_EQ(hops_get_api(HOPS_ABI_MAJOR + 1), nullptr);
  EXPECT_EQ(hops_get_api(0), nullptr);
}

TEST(Api, LastErrorIsPerThread) {
  const hops_op_desc* norm = api()->find_op("gated_rmsnorm");
  ASSERT_NE(norm, nullptr);
  HostTensor x({2, 8}), w({8}), y({2, 8});
  const hops_value args[] = {{&x.dl}, {nullptr}, {&w.dl}, {&y.dl}, {.f64 = 1e-6}};
  EXPECT_EQ(api()->call(norm, nullptr, args, 5), HOPS_ERR_INVALID_ARGUMENT);
  const std::string message = api()->last_error();
  EXPECT_NE(message.find("gated_rmsnorm"), std::string::npos) << message;
  EXPECT_NE(message.find("'z'"), std::string::npos) << message;
  std::string other_thread = "unset";
  std::thread([&] { other_thread = api()->last_error(); }).join();
  EXPECT_EQ(other_thread, "");
  EXPECT_EQ(std::string(api()->last_error()), message);
}

TEST(Api, SteadyCallsAllocateNoScratch) {
  const auto chunk = reinterpret_cast<hops_gdn_chunk_fwd_fn>(api()->find_op("gdn_chunk_fwd")->fn);
  HostTensor q({1, 100, 2, 16}), k({1, 100, 2, 16}), v({1, 100, 4, 8}), g({1, 100, 4}),
      beta({1, 100, 4}), o({1, 100, 4, 8});
  for (float& x : g.data) x = -0.1f;
  auto run = [&] {
    return chunk(nullptr, &q.dl, &k.dl, &v.dl, &g.dl, &beta.dl, nullptr, nullptr, nullptr, nullptr,
                 &o.dl, nullptr, 0.0, true, false);
  };
  ASSERT_EQ(run(), HOPS_OK) << api()->last_error();
  const size_t after_first = Registry::get().scratch({kDLCPU, 0}).allocation_count();
  for (int i = 0; i < 20; ++i) ASSERT_EQ(run(), HOPS_OK);
  EXPECT_EQ(Registry::get().scratch({kDLCPU, 0}).allocation_count(), after_first);
}

TEST(Api, ExecFlagsAreHonouredOrRejected) {
  const hops_op_desc* norm = api()->find_op("gated_rmsnorm");
  HostTensor x({2, 8}), z({2, 8}), w({8}), y({2, 8});
  const hops_value args[] = {{&x.dl}, {&z.dl}, {&w.dl}, {&y.dl}, {.f64 = 1e-6}};
  hops_exec exec{sizeof(hops_exec), {kDLCPU, 0}, nullptr, HOPS_EXEC_DETERMINISTIC, 0, nullptr};
  EXPECT_EQ(api()->call(norm, &exec, args, 5), HOPS_OK) << api()->last_error();
  const std::vector<float> first = std::vector<float>(y.data);
  EXPECT_EQ(api()->call(norm, &exec, args, 5), HOPS_OK);
  EXPECT_EQ(y.data, first);
  exec.flags = uint64_t{1} << 40;  // a flag of some later minor version
  y.data.assign(y.data.size(), -7.0f);
  EXPECT_EQ(api()->call(norm, &exec, args, 5), HOPS_ERR_INVALID_ARGUMENT);
  const std::string message = api()->last_error();
  EXPECT_NE(message.find("gated_rmsnorm"), std::string::npos) << message;
  EXPECT_NE(message.find("'exec'"), std::string::npos) << message;
  EXPECT_EQ(y.data, std::vector<float>(y.data.size(), -7.0f));
}

TEST(Api, ListsTheCpuBackend) {
  ASSERT_GE(api()->backend_count(), 1);
  const hops_backend_info* cpu = api()->backend_at(0);
  EXPECT_STREQ(cpu->name, "cpu");
  EXPECT_EQ(cpu->available, 1);
  EXPECT_EQ(api()->backend_at(api()->backend_count()), nullptr);
  EXPECT_EQ(api()->supports("gdn_chunk_fwd", {kDLCPU, 0}, {kDLBfloat, 16, 1}), 1);
  EXPECT_EQ(api()->supports("gdn_chunk_fwd", {kDLCUDA, 0}, {kDLFloat, 32, 1}), 0);
  EXPECT_EQ(api()->supports("gdn_chunk_fwd", {kDLCPU, 0}, {kDLInt, 32, 1}), 0);
  EXPECT_EQ(api()->supports("nope", {kDLCPU, 0}, {kDLFloat, 32, 1}), 0);
}

}  // namespace
}  // namespace hops
