// The host side of the CUDA backend shared by its op families (<family>_host.cpp):
// CUDA errors as hops errors, the call's device and stream, stream-ordered
// scratch, and tensors turned into kernel parameters (cuda_params.hpp).
#pragma once

#include <cuda_runtime_api.h>

#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.hpp"
#include "checked_math.hpp"
#include "cuda_params.hpp"
#include "error.hpp"

namespace hops::cuda {

inline constexpr uint32_t kFloats = HOPS_DTYPE_FLOATS;

// ---- errors, device, scratch ------------------------------------------------------

// HOPS_ERR_BACKEND "<op>: CUDA error <name> (<text>) in <what>"; a launcher's
// cudaErrorNotSupported (the device cannot run the kernel: allow_smem) is
// HOPS_ERR_UNSUPPORTED.
inline void check(cudaError_t status, const char* op, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  if (status == cudaErrorMemoryAllocation) {
    fail(HOPS_ERR_OUT_OF_MEMORY, "{}: CUDA out of device memory in {}", op, what);
  }
  if (status == cudaErrorNotSupported) {
    fail(HOPS_ERR_UNSUPPORTED, "{}: this device cannot run {} (too little shared memory per block)",
         op, what);
  }
  fail(HOPS_ERR_BACKEND, "{}: CUDA error {} ({}) in {}", op, cudaGetErrorName(status),
       cudaGetErrorString(status), what);
}

// Makes exec.device current for the call and puts the previous one back.
class DeviceGuard {
 public:
  DeviceGuard(const ExecContext& context, const char* op)
      : device_(context.exec.device.device_id),
        stream_(static_cast<cudaStream_t>(context.exec.stream)),
        allocator_(context.allocator) {
    check(cudaGetDevice(&previous_), op, "cudaGetDevice");
    if (previous_ != device_) check(cudaSetDevice(device_), op, "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  const hops_allocator& allocator() const { return allocator_; }

 private:
  int device_;
  int previous_ = -1;
  cudaStream_t stream_;
  hops_allocator allocator_;  // the host's, or struct_size 0
};

// One memory pool per device that keeps what it was given (release threshold
// unlimited): steady-state calls get scratch without reaching cudaMalloc.
inline cudaMemPool_t device_pool(int device, const char* op) {
  static std::mutex mutex;
  static std::vector<cudaMemPool_t> pools;
  const std::scoped_lock lock(mutex);
  if (pools.size() <= static_cast<size_t>(device))
    pools.resize(static_cast<size_t>(device) + 1, nullptr);
  cudaMemPool_t& pool = pools[static_cast<size_t>(device)];
  if (!pool) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    check(cudaMemPoolCreate(&pool, &props), op, "cudaMemPoolCreate");
    uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), op,
          "cudaMemPoolSetAttribute");
  }
  return pool;
}

// Stream-ordered scratch: allocated and freed on the call's stream, so it is
// safe to reuse as soon as the kernels queued before the free have run. With
// a host allocator (hops_api::set_allocator: torch's caching allocator
// through the Python shim) the memory comes from the host and goes back to it
// when the call's work is queued, so hops holds nothing between calls; the
// host's free must be stream-ordered too, as cudaFreeAsync and torch's
// caching allocator are. Without one, hops' own pool keeps what it had.
class Scratch {
 public:
  Scratch(size_t bytes, const DeviceGuard& guard, const char* op)
      : bytes_(bytes ? bytes : 16), stream_(guard.stream()), host_(guard.allocator()) {
    if (host_.alloc) {
      data_ = host_.alloc(host_.ctx, DLDevice{kDLCUDA, guard.device()}, bytes_, stream_);
      if (!data_) {
        fail(HOPS_ERR_OUT_OF_MEMORY,
             "{}: the host's allocator returned NULL for {} bytes of scratch", op, bytes_);
      }
      device_ = guard.device();
      return;
    }
    check(cudaMallocFromPoolAsync(&data_, bytes_, device_pool(guard.device(), op), stream_), op,
          "cudaMallocFromPoolAsync (scratch)");
  }
  ~Scratch() {
    if (!data_) return;
    if (host_.free) {
      host_.free(host_.ctx, DLDevice{kDLCUDA, device_}, data_, bytes_, stream_);
    } else {
      cudaFreeAsync(data_, stream_);
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  size_t bytes_;
  cudaStream_t stream_;
  hops_allocator host_;
  int device_ = 0;
};

// ---- arguments ---------------------------------------------------------------------

inline int code_of(DType t) {
  switch (t) {
    case DType::f16:
      return kF16;
    case DType::bf16:
      return kBF16;
    case DType::i32:
      return kI32;
    case DType::i64:
      return kI64;
    default:
      return kF32;
  }
}

inline Arg make_arg(const Tensor& t) {
  Arg a;
  if (!t) return a;
  a.data = static_cast<char*>(t.handle) + t.byte_offset;
  a.dtype = code_of(t.dtype);
  a.ndim = t.ndim < 4 ? t.ndim : 4;
  for (int d = 0; d < a.ndim; ++d) a.shape[d] = t.shape[d], a.stride[d] = t.stride[d];
  return a;
}

inline RowsArg make_rows(const Tensor& t) {
  RowsArg a;
  a.data = static_cast<char*>(t.handle) + t.byte_offset;
  a.dtype = code_of(t.dtype);
  a.lead = t.ndim - 1;
  for (int d = 0; d < a.lead; ++d) a.shape[d] = t.shape[d], a.stride[d] = t.stride[d];
  a.step = t.ndim > 0 ? t.stride[t.ndim - 1] : 1;
  return a;
}

// An index tensor as the kernels read it. A host-resident one (validated by
// the plugin) is copied as int64 to stream-ordered scratch: from pageable
// memory cudaMemcpyAsync returns once the bytes are staged, so the host
// vector may go when this returns (and the call does not wait for the GPU).
// A device-resident one is read in place; the kernels clamp its values.
class StagedIndex {
 public:
  StagedIndex(const Tensor& t, const DeviceGuard& guard, const char* op) {
    if (!t) return;
    const bool host = t.device.device_type == kDLCPU || t.device.device_type == kDLCUDAHost;
    if (!host) {
      index_.data = static_cast<const char*>(t.handle) + t.byte_offset;
      index_.stride = t.stride[0];
      index_.is64 = t.dtype == DType::i64;
      return;
    }
    std::vector<int64_t> values(static_cast<size_t>(t.shape[0]));
    for (int64_t i = 0; i < t.shape[0]; ++i) values[static_cast<size_t>(i)] = read_index(t, i);
    scratch_ =
        std::make_unique<Scratch>(scratch_bytes(op, values.size(), sizeof(int64_t)), guard, op);
    check(cudaMemcpyAsync(scratch_->data(), values.data(), values.size() * sizeof(int64_t),
                          cudaMemcpyHostToDevice, guard.stream()),
          op, "cudaMemcpyAsync (index tensor to the device)");
    index_ = {scratch_->data(), 1, 1};
  }
  const Index& get() const { return index_; }

 private:
  Index index_;
  std::unique_ptr<Scratch> scratch_;
};

inline int64_t state_step(const Tensor& t, bool v_first, bool k_dim) {
  if (!t) return 0;
  return t.stride[(k_dim != v_first) ? 2 : 3];
}

// True when every tensor can be read as vectors of `vec` elements along its
// last dim: unit last stride, a multiple of `vec` long, the other strides
// multiples of `vec` and the data aligned to a vector's bytes.
inline bool vector_rows(std::initializer_list<const Tensor*> tensors, int64_t vec) {
  for (const Tensor* t : tensors) {
    const int64_t bytes = vec * dtype_size(t->dtype);
    if (t->ndim == 0 || t->stride[t->ndim - 1] != 1 || t->shape[t->ndim - 1] % vec != 0 ||
        (reinterpret_cast<uintptr_t>(static_cast<const char*>(t->handle) + t->byte_offset) %
         static_cast<uintptr_t>(bytes)) != 0)
      return false;
    for (int d = 0; d + 1 < t->ndim; ++d)
      if (t->stride[d] % vec != 0) return false;
  }
  return true;
}

}  // namespace hops::cuda
