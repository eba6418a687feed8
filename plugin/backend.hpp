// Backends: a list of kernels, one per (op, dtypes), for one device type.
// The CPU backend is compiled into libhops.so; the others are modules
// (libhops_<name>.so beside it) that export hops_backend_module. Each backend
// lists its kernels one op family at a time (backends/<name>/families.cpp).
#pragma once

#include <cstddef>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dtype.hpp"
#include "error.hpp"
#include "hops/hops.h"
#include "tensor.hpp"

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

// Kernels return a status; their message is the module's last_error(). A
// kernel may refuse a valid call it cannot run (a head dim, an alignment)
// with HOPS_ERR_UNSUPPORTED, before writing anything: the plugin then tries
// the next backend of the device type.
using KernelFn = hops_status (*)(const ExecContext& context, const void* args);
// Whether the kernel takes these validated arguments: HOPS_OK, or
// HOPS_ERR_UNSUPPORTED with the reason as the module's last_error(). Reads
// shapes, strides and pointers only; runs and writes nothing.
using AcceptsFn = hops_status (*)(const void* args);

struct Kernel {
  const char* op;
  uint32_t dtypes;  // primary dtypes this kernel accepts
  KernelFn run;
  AcceptsFn accepts;   // null: every validated call of its dtypes
  uint64_t op_layout;  // op_layout<Op>() when the kernel was compiled
};

// ---- layout fingerprints ---------------------------------------------------------
// A module and libhops.so exchange C++ structs (the ops' argument structs,
// ExecContext, Kernel, Tensor). Both sides compute these fingerprints from
// their own headers; a module whose numbers differ from the plugin's is
// refused at load instead of being misread.

constexpr uint64_t fingerprint(uint64_t hash, uint64_t value) {
  for (int byte = 0; byte < 8; ++byte) {  // FNV-1a over the value's bytes
    hash ^= (value >> (8 * byte)) & 0xffu;
    hash *= 0x100000001b3ull;
  }
  return hash;
}
constexpr uint64_t fingerprint(uint64_t hash, std::string_view text) {
  for (const char c : text) hash = fingerprint(hash, static_cast<unsigned char>(c));
  return fingerprint(hash, text.size());
}
constexpr uint64_t fingerprint(uint64_t hash, std::initializer_list<uint64_t> values) {
  for (const uint64_t v : values) hash = fingerprint(hash, v);
  return hash;
}
inline constexpr uint64_t kFingerprintSeed = 0xcbf29ce484222325ull;

// The layout of an op's argument struct as a kernel reads it: its size and
// alignment, and its name and argument list (a changed descriptor changes
// what the struct holds). A member reordered within the same size is not
// seen: such a change bumps kModuleInterfaceVersion by hand.
template <class Op>
constexpr uint64_t op_layout() {
  uint64_t hash = fingerprint(kFingerprintSeed, {sizeof(Op), alignof(Op)});
  hash = fingerprint(hash, Op::kName);
  for (const hops_arg_desc& arg : Op::kArgs) {
    hash = fingerprint(hash, arg.name);
    hash = fingerprint(
        hash, {static_cast<uint64_t>(arg.kind), static_cast<uint64_t>(arg.optional), arg.dtypes});
  }
  return hash;
}

// Adapts `void fn(const ExecContext&, const Op&)` (which throws hops::Error)
// into a KernelFn, and `void accepts(const Op&)` (which throws
// HOPS_ERR_UNSUPPORTED with the reason) into an AcceptsFn; exceptions never
// cross a module boundary. With an accepts check, the kernel runs only calls
// that pass it (the plugin asks first).
template <class Op, void (*fn)(const ExecContext&, const Op&), void (*accepts)(const Op&) = nullptr>
constexpr Kernel kernel(uint32_t dtypes) {
  AcceptsFn check = nullptr;
  if constexpr (accepts != nullptr) {
    check = [](const void* args) noexcept {
      return guarded([&] { accepts(*static_cast<const Op*>(args)); });
    };
  }
  return {Op::kName, dtypes,
          [](const ExecContext& context, const void* args) noexcept {
            return guarded([&] { fn(context, *static_cast<const Op*>(args)); });
          },
          check, op_layout<Op>()};
}

// A backend's kernels: its families' lists, one after the other.
inline std::vector<Kernel> join_families(std::initializer_list<std::span<const Kernel>> families) {
  std::vector<Kernel> all;
  for (const auto family : families) all.insert(all.end(), family.begin(), family.end());
  return all;
}

struct Backend {
  std::string name;
  DLDeviceType device_type;
  bool available;
  std::string detail;
  int score;  // backends of a device type are tried best score first
  std::span<const Kernel> kernels;
  const char* (*module_last_error)();  // where a failing kernel left its message

  const Kernel* find(std::string_view op, DType primary) const;
};

// ---- the backend-module interface ------------------------------------------------

// Raised by hand whenever the meaning of what crosses between libhops.so and a
// module changes in a way the layout fingerprint cannot see. 1 was the
// unversioned interface (hops_backend_init_v1).
inline constexpr uint32_t kModuleInterfaceVersion = 2;

// Entry of a backend module: `extern "C" const BackendModule* hops_backend_module(void)`.
// The first three members stay where they are in every version, so that the
// loader can read any module's version before anything else.
struct BackendModule {
  size_t struct_size;
  uint32_t interface_version;  // kModuleInterfaceVersion the module was built with
  uint64_t layout;             // kModuleLayout the module was built with
  // Read only when the version and the layout match libhops.so's:
  const char* name;
  int32_t device_type;
  int32_t available;
  const char* detail;
  int32_t score;
  const Kernel* kernels;
  size_t num_kernels;
  const char* (*last_error)();
};
using BackendModuleFn = const BackendModule* (*)();
inline constexpr const char* kBackendModuleSymbol = "hops_backend_module";
// The entry of interface 1, recognised only to name it when refusing the module.
inline constexpr const char* kLegacyModuleSymbol = "hops_backend_init_v1";

// The shared structs' layout: every member offset of Kernel, Tensor and
// BackendModule, ExecContext's size (its reference member rules out
// offsetof), the sizes of the ABI structs inside them, and the DType codes.
// Each op's own struct is fingerprinted per kernel (op_layout).
inline constexpr uint64_t kModuleLayout =
    fingerprint(kFingerprintSeed, {sizeof(ExecContext),
                                   alignof(ExecContext),
                                   sizeof(hops_exec),
                                   sizeof(hops_allocator),
                                   sizeof(Kernel),
                                   offsetof(Kernel, dtypes),
                                   offsetof(Kernel, run),
                                   offsetof(Kernel, accepts),
                                   offsetof(Kernel, op_layout),
                                   sizeof(Tensor),
                                   offsetof(Tensor, handle),
                                   offsetof(Tensor, byte_offset),
                                   offsetof(Tensor, device),
                                   offsetof(Tensor, dtype),
                                   offsetof(Tensor, ndim),
                                   offsetof(Tensor, shape),
                                   offsetof(Tensor, stride),
                                   kMaxDims,
                                   sizeof(BackendModule),
                                   offsetof(BackendModule, name),
                                   offsetof(BackendModule, device_type),
                                   offsetof(BackendModule, available),
                                   offsetof(BackendModule, detail),
                                   offsetof(BackendModule, score),
                                   offsetof(BackendModule, kernels),
                                   offsetof(BackendModule, num_kernels),
                                   offsetof(BackendModule, last_error),
                                   static_cast<uint64_t>(DType::f32),
                                   static_cast<uint64_t>(DType::f16),
                                   static_cast<uint64_t>(DType::bf16),
                                   static_cast<uint64_t>(DType::f64),
                                   static_cast<uint64_t>(DType::i32),
                                   static_cast<uint64_t>(DType::i64)});

// The kernels of the embedded CPU backend (backends/cpu/families.cpp).
std::span<const Kernel> cpu_kernels();

}  // namespace hops
