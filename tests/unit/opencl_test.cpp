// The OpenCL backend's internals: device selection, the program cache on
// disk, and the scratch pool's reuse of buffers. Tests that need a device
// use the one HOPS_OPENCL_DEVICE selects and skip where there is none.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "buffer_pool.hpp"
#include "context.hpp"
#include "program_cache.hpp"

namespace hops::opencl {
namespace {

DeviceEntry entry(int platform, int device, cl_device_type type, std::string platform_name,
                  std::string device_name) {
  DeviceEntry e;
  e.platform_index = platform;
  e.device_index = device;
  e.type = type;
  e.platform_name = std::move(platform_name);
  e.platform_vendor = "vendor";
  e.platform_version = "OpenCL 3.0";
  e.device_name = std::move(device_name);
  return e;
}

// A CPU platform first, then a GPU platform with two devices.
std::vector<DeviceEntry> devices() {
  return {entry(0, 0, CL_DEVICE_TYPE_CPU, "Portable Computing Language", "pthread-cpu"),
          entry(1, 0, CL_DEVICE_TYPE_GPU, "NVIDIA CUDA", "NVIDIA H100"),
          entry(1, 1, CL_DEVICE_TYPE_GPU, "NVIDIA CUDA", "NVIDIA H200")};
}

TEST(OpenClDeviceSelection, DefaultPrefersTheFirstGpu) {
  const Selection s = select_device(devices(), nullptr);
  ASSERT_TRUE(s.device);
  EXPECT_EQ(s.device->device_name, "NVIDIA H100");
  EXPECT_NE(s.detail.find("NVIDIA H100 (platform 1:0 NVIDIA CUDA"), std::string::npos) << s.detail;
}

TEST(OpenClDeviceSelection, ByIndicesOrName) {
  EXPECT_EQ(select_device(devices(), "1:1").device->device_name, "NVIDIA H200");
  EXPECT_EQ(select_device(devices(), "0").device->device_name, "pthread-cpu");
  EXPECT_EQ(select_device(devices(), "portable").device->device_name, "pthread-cpu");
  EXPECT_EQ(select_device(devices(), "h200").device->device_name, "NVIDIA H200");
  EXPECT_NE(select_device(devices(), "h200").detail.find("HOPS_OPENCL_DEVICE=\"h200\""),
            std::string::npos);
}

TEST(OpenClDeviceSelection, NoMatchListsTheDevices) {
  for (const char* request : {"2:0", "0:5", "amd", "1:x"}) {
    const Selection s = select_device(devices(), request);
    EXPECT_FALSE(s.device) << request;
    EXPECT_NE(s.detail.find("matches no device"), std::string::npos) << s.detail;
    EXPECT_NE(s.detail.find("1:1 NVIDIA CUDA / NVIDIA H200"), std::string::npos) << s.detail;
  }
}

// ---- with a device -------------------------------------------------------------

class OpenClDevice : public ::testing::Test {
 protected:
  void SetUp() override {
    const Selection& selection = selected_device();
    if (!selection.device) GTEST_SKIP() << "no OpenCL device: " << selection.detail;
    device_ = selection.device->device;
    cl_int status = CL_SUCCESS;
    context_ = ContextHandle(clCreateContext(nullptr, 1, &device_, nullptr, nullptr, &status));
    ASSERT_EQ(status, CL_SUCCESS);
    queue_ = QueueHandle(clCreateCommandQueue(context_.get(), device_, 0, &status));
    ASSERT_EQ(status, CL_SUCCESS);
    cache_ = std::filesystem::temp_directory_path() / fmt::format("hops-opencl-test-{}", getpid());
    std::filesystem::remove_all(cache_);
    setenv("HOPS_OPENCL_CACHE_DIR", cache_.c_str(), 1);  // NOLINT(concurrency-mt-unsafe)
  }
  void TearDown() override {
    unsetenv("HOPS_OPENCL_CACHE_DIR");  // NOLINT(concurrency-mt-unsafe): tests run one at a time
    std::filesystem::remove_all(cache_);
  }

  size_t cached_files() const {
    size_t count = 0;
    std::error_code ec;
    for (const auto& file : std::filesystem::directory_iterator(cache_, ec))
      count += file.is_regular_file();
    return count;
  }

  cl_device_id device_ = nullptr;
  ContextHandle context_;
  QueueHandle queue_;
  std::filesystem::path cache_;
};

constexpr std::string_view kSource =
    "kernel void twice(global float* x) { x[get_global_id(0)] *= 2.0f; }";

TEST_F(OpenClDevice, ProgramsAreCachedOnDiskAndStaleFilesRebuilt) {
  EXPECT_TRUE(build_program(context_.get(), device_, "test.cl", kSource, "-cl-std=CL1.2"));
  ASSERT_EQ(cached_files(), 1u);
  // A second build comes from the file; other options are another file.
  EXPECT_TRUE(build_program(context_.get(), device_, "test.cl", kSource, "-cl-std=CL1.2"));
  EXPECT_EQ(cached_files(), 1u);
  EXPECT_TRUE(build_program(context_.get(), device_, "test.cl", kSource, "-cl-std=CL1.2 -DX=1"));
  EXPECT_EQ(cached_files(), 2u);
  // A damaged file is not used: the program is built again and the file rewritten.
  for (const auto& file : std::filesystem::directory_iterator(cache_)) {
    std::ofstream(file.path(), std::ios::binary | std::ios::trunc) << "HOPSCLB1 garbage";
  }
  EXPECT_TRUE(build_program(context_.get(), device_, "test.cl", kSource, "-cl-std=CL1.2"));
  EXPECT_EQ(cached_files(), 2u);
}

TEST_F(OpenClDevice, BuildFailuresCarryTheBuildLog) {
  try {
    build_program(context_.get(), device_, "broken.cl", "kernel void f() { undeclared_thing(); }",
                  "-cl-std=CL1.2");
    FAIL() << "the build succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), HOPS_ERR_BACKEND);
    const std::string message = e.what();
    EXPECT_NE(message.find("building broken.cl"), std::string::npos) << message;
    EXPECT_NE(message.find("CL_BUILD_PROGRAM_FAILURE"), std::string::npos) << message;
    EXPECT_NE(message.find("undeclared_thing"), std::string::npos) << message;
  }
  EXPECT_EQ(cached_files(), 0u);
}

TEST_F(OpenClDevice, ScratchIsReusedOnceItsLastCommandHasRun) {
  BufferPool pool(context_.get());
  { auto lease = pool.acquire(1000); }
  { auto lease = pool.acquire(1000); }  // steady state: the same block
  EXPECT_EQ(pool.buffer_count(), 1u);
  // A block whose last command has not run yet is not handed out again.
  cl_int status = CL_SUCCESS;
  EventHandle gate(clCreateUserEvent(context_.get(), &status));
  ASSERT_EQ(status, CL_SUCCESS);
  {
    auto lease = pool.acquire(1000);
    lease.busy_until(gate);
  }
  { auto lease = pool.acquire(1000); }
  EXPECT_EQ(pool.buffer_count(), 2u);
  ASSERT_EQ(clSetUserEventStatus(gate.get(), CL_COMPLETE), CL_SUCCESS);
  {
    auto first = pool.acquire(1000);
    auto second = pool.acquire(1000);
  }
  EXPECT_EQ(pool.buffer_count(), 2u);
}

}  // namespace
}  // namespace hops::opencl
