// NCCL, opened at run time: libhops_cuda.so has no link-time NCCL dependency.
// The few entry points the expert-parallel ops use are declared here (NCCL's
// C API is stable since 2.7, the first with grouped send / receive), and
// resolved from libnccl.so.2: HOPS_NCCL_LIBRARY when set, else the copy the
// process has already loaded (torch's, from the nvidia-nccl wheel) or the
// loader's search path. A communicator is only usable with the copy that
// made it, which is why an already-loaded library is preferred.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

namespace hops::cuda::nccl {

using Comm = struct ncclComm*;  // ncclComm_t
enum Result : int { kSuccess = 0, kInProgress = 7 };
enum DataType : int { kUint8 = 1, kInt64 = 4 };

struct Api {
  int version = 0;  // NCCL_VERSION_CODE of the library
  std::string path;
  int (*get_version)(int*) = nullptr;
  const char* (*error_string)(int) = nullptr;
  int (*comm_count)(Comm, int*) = nullptr;
  int (*comm_user_rank)(Comm, int*) = nullptr;
  int (*comm_cu_device)(Comm, int*) = nullptr;
  int (*group_start)() = nullptr;
  int (*group_end)() = nullptr;
  int (*send)(const void*, size_t, int, int, Comm, cudaStream_t) = nullptr;
  int (*recv)(void*, size_t, int, int, Comm, cudaStream_t) = nullptr;
};

// The loaded library, or null with `why` set. Tried again on every call until
// it loads (a host may load NCCL after hops); then kept for the process.
const Api* api(std::string* why);

// "NCCL 2.21.5 (<path>)" or "NCCL not found: <why>", for the backend list.
std::string describe();

}  // namespace hops::cuda::nccl
