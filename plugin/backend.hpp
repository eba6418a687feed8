// Backends: a list of kernels, one per (op, dtypes), for one device type.
// The CPU backend is compiled into libhops.so; the others are modules
// (libhops_<name>.so beside it) that export hops_backend_init_v1.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "dtype.hpp"
#include "error.hpp"
#include "hops/hops.h"

namespace hops {

class ThreadPool;
class ScratchPool;

// What a kernel gets besides its arguments.
struct ExecContext {
  const hops_exec& exec;
  ThreadPool* threads;   // CPU backend only
  ScratchPool* scratch;  // the pool of exec.device (CPU backend)
  int max_workers;       // CPU: threads this call may use
  // The host's allocator when the call began (struct_size 0: none). Device
  // modules take their scratch from it, stream-ordered, instead of their own
  // pools; a copy, so that a concurrent set_allocator cannot tear it.
  hops_allocator allocator;
};

// Kernels return a status; their message is the module's last_error().
using KernelFn = hops_status (*)(const ExecContext& context, const void* args);

struct Kernel {
  const char* op;
  uint32_t dtypes;  // primary dtypes this kernel accepts
  KernelFn run;
};

// Adapts `void fn(const ExecContext&, const Op&)` (which throws hops::Error)
// into a KernelFn; exceptions never cross a module boundary.
template <class Op, void (*fn)(const ExecContext&, const Op&)>
constexpr Kernel kernel(uint32_t dtypes) {
  return {Op::kName, dtypes, [](const ExecContext& context, const void* args) noexcept {
            return guarded([&] { fn(context, *static_cast<const Op*>(args)); });
          }};
}

struct Backend {
  std::string name;
  DLDeviceType device_type;
  bool available;
  std::string detail;
  int score;  // the highest available score wins a device type
  std::span<const Kernel> kernels;
  const char* (*module_last_error)();  // where a failing kernel left its message

  const Kernel* find(std::string_view op, DType primary) const;
};

// Entry of a backend module: `extern "C" const BackendModuleV1* hops_backend_init_v1(void)`.
struct BackendModuleV1 {
  size_t struct_size;
  const char* name;
  int32_t device_type;
  int32_t available;
  const char* detail;
  int32_t score;
  const Kernel* kernels;
  size_t num_kernels;
  const char* (*last_error)();
};
using BackendInitFn = const BackendModuleV1* (*)();
inline constexpr const char* kBackendInitSymbol = "hops_backend_init_v1";

// The kernels of the embedded CPU backend (backends/cpu/cpu_backend.cpp).
std::span<const Kernel> cpu_kernels();

}  // namespace hops
