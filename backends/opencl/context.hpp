// Per (cl_context, device) state: the built kernel programs, the scratch
// pool, and the plugin's own queue for calls that bring none. Runtimes live
// as long as the process (they hold a reference on their context), so a
// host's context can be used from any thread at any time.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "buffer_pool.hpp"
#include "cl.hpp"
#include "device_select.hpp"
#include "dtype.hpp"

namespace hops::opencl {

// One cl_kernel. OpenCL kernel objects hold their arguments, so setting them
// and enqueueing is done under `mutex` (see Launch): concurrent calls stay correct.
struct KernelSlot {
  std::mutex mutex;
  KernelHandle kernel;
  std::string name;
  size_t max_work_group = 1;  // CL_KERNEL_WORK_GROUP_SIZE on this device
  cl_uint num_args = 0;
};

class Runtime {
 public:
  Runtime(ContextHandle context, cl_device_id device);
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  cl_context context() const { return context_.get(); }
  cl_device_id device() const { return device_; }
  // CPU devices (PoCL, CPU runtimes) get kernels written with explicit SIMD.
  bool cpu_device() const { return cpu_device_; }
  BufferPool& pool() { return pool_; }

  // The kernel `name` of the program `program` (an embedded .cl file, after
  // common.cl) with primary dtype `dtype`; the program is built (or loaded
  // from the disk cache) on first use.
  KernelSlot& kernel(std::string_view program, DType dtype, std::string_view name);

  // The kernel `name` of `program` built with extra `defines` (-D options),
  // for vendor-specific programs (attn_nv.cl): null where the device's
  // compiler rejects it, which is said once on stderr and not retried.
  KernelSlot* optional_kernel(std::string_view program, DType dtype, const std::string& defines,
                              std::string_view name);

  // The device's platform is NVIDIA's (its name or vendor says so).
  bool nvidia_platform() const { return nvidia_platform_; }

  // An in-order queue of the plugin's own, for calls with a NULL stream.
  cl_command_queue own_queue();

 private:
  struct Program {
    ProgramHandle program;
    std::vector<std::unique_ptr<KernelSlot>> kernels;
  };
  Program& program(std::string_view file, DType dtype);
  // Builds (or finds) `file` with `defines`; a failed optional build leaves
  // a Program without kernels.
  Program& program(std::string_view file, DType dtype, const std::string& defines, bool optional);

  ContextHandle context_;
  cl_device_id device_;
  bool cpu_device_;
  bool nvidia_platform_;
  BufferPool pool_;
  std::mutex mutex_;  // guards programs_ and queue_
  std::map<std::pair<std::string, DType>, std::unique_ptr<Program>, std::less<>> programs_;
  QueueHandle queue_;
};

// The runtime of `device` in `context`, created on first use.
Runtime& runtime_for(cl_context context, cl_device_id device);

// The device chosen at load time (HOPS_OPENCL_DEVICE), and what to report.
const Selection& selected_device();

}  // namespace hops::opencl
