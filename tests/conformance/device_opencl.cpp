// The runner's OpenCL device (--backend opencl): cl_mem buffers in a context
// and in-order queue of the runner's own, passed as hops_exec::stream, so the
// blocking copies here order after the plugin's kernels. The device is
// chosen as the plugin chooses it: HOPS_OPENCL_DEVICE="P:D", "P" or a
// case-insensitive substring of the platform's name, vendor or version or of
// the device's name; unset, the first GPU, else the first device.
#include "device.hpp"

#ifdef HOPS_CONFORMANCE_OPENCL

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace hops::conformance {

namespace {

void check(cl_int status, const char* what) {
  if (status != CL_SUCCESS)
    throw std::runtime_error(fmt::format("OpenCL: {} failed ({})", what, status));
}

std::string info_text(cl_platform_id platform, cl_platform_info what) {
  char text[1024] = {};
  check(clGetPlatformInfo(platform, what, sizeof text - 1, text, nullptr), "clGetPlatformInfo");
  return text;
}

std::string info_text(cl_device_id device, cl_device_info what) {
  char text[1024] = {};
  check(clGetDeviceInfo(device, what, sizeof text - 1, text, nullptr), "clGetDeviceInfo");
  return text;
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

struct Candidate {
  int platform_index, device_index;
  cl_device_id device;
  cl_device_type type;
  std::string words;  // platform name, vendor, version and device name, lower case
  std::string name;
};

std::vector<Candidate> candidates() {
  cl_uint count = 0;
  check(clGetPlatformIDs(0, nullptr, &count), "clGetPlatformIDs");
  std::vector<cl_platform_id> platforms(count);
  check(clGetPlatformIDs(count, platforms.data(), nullptr), "clGetPlatformIDs");
  std::vector<Candidate> all;
  for (cl_uint p = 0; p < count; ++p) {
    cl_uint devices = 0;
    if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, 0, nullptr, &devices) != CL_SUCCESS)
      continue;
    std::vector<cl_device_id> ids(devices);
    check(clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, devices, ids.data(), nullptr),
          "clGetDeviceIDs");
    for (cl_uint d = 0; d < devices; ++d) {
      cl_device_type type = 0;
      check(clGetDeviceInfo(ids[d], CL_DEVICE_TYPE, sizeof type, &type, nullptr),
            "clGetDeviceInfo");
      const std::string platform = info_text(platforms[p], CL_PLATFORM_NAME);
      const std::string device = info_text(ids[d], CL_DEVICE_NAME);
      all.push_back({static_cast<int>(p), static_cast<int>(d), ids[d], type,
                     lower(fmt::format("{}\n{}\n{}\n{}", platform,
                                       info_text(platforms[p], CL_PLATFORM_VENDOR),
                                       info_text(platforms[p], CL_PLATFORM_VERSION), device)),
                     fmt::format("{}:{} {} / {}", p, d, platform, device)});
    }
  }
  return all;
}

const Candidate& choose(const std::vector<Candidate>& all) {
  const char* env = std::getenv("HOPS_OPENCL_DEVICE");  // NOLINT(concurrency-mt-unsafe): once
  const std::string wanted = env ? env : "";
  for (const Candidate& c : all) {
    const bool match = wanted.empty() ? (c.type & CL_DEVICE_TYPE_GPU) != 0
                       : wanted.find_first_not_of("0123456789:") == std::string::npos
                           ? wanted == fmt::format("{}:{}", c.platform_index, c.device_index) ||
                                 (c.device_index == 0 && wanted == std::to_string(c.platform_index))
                           : c.words.find(lower(wanted)) != std::string::npos;
    if (match) return c;
  }
  if (wanted.empty() && !all.empty()) return all.front();
  throw std::runtime_error(
      fmt::format("no OpenCL device matches HOPS_OPENCL_DEVICE=\"{}\"", wanted));
}

class OpenClMemory final : public Memory {
 public:
  OpenClMemory(cl_context context, cl_command_queue queue, size_t bytes)
      : queue_(queue), size_(bytes) {
    cl_int status = CL_SUCCESS;
    // At least one byte, so that even an empty tensor has a buffer.
    buffer_ =
        clCreateBuffer(context, CL_MEM_READ_WRITE, std::max<size_t>(bytes, 1), nullptr, &status);
    check(status, "clCreateBuffer");
  }
  ~OpenClMemory() override { clReleaseMemObject(buffer_); }
  OpenClMemory(const OpenClMemory&) = delete;
  OpenClMemory& operator=(const OpenClMemory&) = delete;

  size_t size() const override { return size_; }
  void* handle() const override { return buffer_; }
  void write(std::span<const std::byte> bytes) override {
    if (bytes.empty()) return;
    check(clEnqueueWriteBuffer(queue_, buffer_, CL_TRUE, 0, std::min(bytes.size(), size_),
                               bytes.data(), 0, nullptr, nullptr),
          "clEnqueueWriteBuffer");
  }
  std::vector<std::byte> read() const override {
    std::vector<std::byte> bytes(size_);
    if (size_ > 0) {
      check(clEnqueueReadBuffer(queue_, buffer_, CL_TRUE, 0, size_, bytes.data(), 0, nullptr,
                                nullptr),
            "clEnqueueReadBuffer");
    }
    return bytes;
  }

 private:
  cl_command_queue queue_;
  size_t size_;
  cl_mem buffer_ = nullptr;
};

class OpenClDevice final : public Device {
 public:
  OpenClDevice() {
    const std::vector<Candidate> all = candidates();
    const Candidate& chosen = choose(all);
    fmt::print("hops-conformance: OpenCL device {}\n", chosen.name);
    cl_int status = CL_SUCCESS;
    context_ = clCreateContext(nullptr, 1, &chosen.device, nullptr, nullptr, &status);
    check(status, "clCreateContext");
    queue_ = clCreateCommandQueue(context_, chosen.device, 0, &status);
    check(status, "clCreateCommandQueue");
  }
  ~OpenClDevice() override {
    clReleaseCommandQueue(queue_);
    clReleaseContext(context_);
  }
  OpenClDevice(const OpenClDevice&) = delete;
  OpenClDevice& operator=(const OpenClDevice&) = delete;

  DLDevice dl_device() const override { return {kDLOpenCL, 0}; }
  void* stream() const override { return queue_; }
  std::unique_ptr<Memory> allocate(size_t bytes) override {
    return std::make_unique<OpenClMemory>(context_, queue_, bytes);
  }

 private:
  cl_context context_ = nullptr;
  cl_command_queue queue_ = nullptr;
};

}  // namespace

std::unique_ptr<Device> make_opencl_device() { return std::make_unique<OpenClDevice>(); }

}  // namespace hops::conformance

#else  // built without OpenCL headers

namespace hops::conformance {
std::unique_ptr<Device> make_opencl_device() { return nullptr; }
}  // namespace hops::conformance

#endif
