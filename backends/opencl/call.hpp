// One op call on the OpenCL backend: which queue and runtime it uses, the
// checks only the backend can make on cl_mem tensors, index tensors as the
// kernels read them, and Launch, which sets a kernel's arguments and
// enqueues it.
//
// Tensors: DLTensor::data is the cl_mem, byte_offset an offset in bytes into
// it (a multiple of the element size). Kernels get the buffer, the offset in
// elements and the strides in elements: no sub-buffers, whose origins would
// have to meet CL_DEVICE_MEM_BASE_ADDR_ALIGN.
//
// Queues: exec.stream is the host's cl_command_queue and the call is
// asynchronous on it. With a NULL stream the call runs on the plugin's own
// in-order queue for the tensors' context and returns when it is done: no
// queue is shared with the host then, so nothing else could order it.
#pragma once

#include <initializer_list>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "backend.hpp"
#include "cl.hpp"
#include "context.hpp"
#include "tensor.hpp"

namespace hops::opencl {

// An index tensor (cu_seqlens, state_indices) as the kernels read it:
// `kind` 0 absent, 4 int32, 8 int64. Host-resident ones are uploaded (see
// Call::index); device-resident ones are read in place and clamped by the
// kernels (docs/DECISIONS.md).
struct IndexArg {
  cl_mem buffer = nullptr;
  cl_long offset = 0, stride = 0;
  cl_int kind = 0;
};

struct NamedTensor {
  const Tensor& tensor;
  const char* name;
};

class Call {
 public:
  // Resolves the queue and runtime and checks every cl_mem tensor: it must
  // belong to the queue's context and hold the whole view.
  Call(const ExecContext& exec, std::initializer_list<NamedTensor> tensors);
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;
  ~Call();

  // False when there is no cl_mem at all (every tensor is empty and NULL):
  // nothing to read or write.
  bool active() const { return runtime_ != nullptr; }
  Runtime& runtime() const { return *runtime_; }
  cl_command_queue queue() const { return queue_; }

  KernelSlot& kernel(std::string_view program, DType dtype, std::string_view name) const {
    return runtime_->kernel(program, dtype, name);
  }
  // An index tensor for the kernels; a host-resident one is copied into a
  // scratch buffer by an asynchronous write.
  IndexArg index(const Tensor& t);
  // Scratch device memory, busy until the call's last command completes.
  cl_mem scratch(size_t bytes);

  // The event the next command waits for, and the one it produced: commands
  // of a call run in order even on an out-of-order queue.
  const EventHandle& last_event() const { return last_; }
  void set_last_event(EventHandle event) { last_ = std::move(event); }

  // Ends the call: with the plugin's own queue, waits for the work.
  void complete();

 private:
  void check_tensor(const Tensor& t, const char* name) const;

  Runtime* runtime_ = nullptr;
  cl_command_queue queue_ = nullptr;
  bool own_queue_ = false;
  EventHandle last_;
  std::vector<BufferPool::Lease> leases_;
};

// Element offset of a tensor's first element in its buffer.
cl_long element_offset(const Tensor& t);
// Storage dtype code (common.cl: 0 f32, 1 f16, 2 bf16), -1 for an absent tensor.
cl_int dtype_code(const Tensor& t);
// The strides of `t` (zero past its rank) as long4.
cl_long4 strides4(const Tensor& t);

// Sets a kernel's arguments in order and enqueues it, holding the kernel's
// lock throughout: a cl_kernel keeps its arguments between calls.
class Launch {
 public:
  explicit Launch(KernelSlot& slot) : slot_(slot), lock_(slot.mutex) {}

  template <class T>
  Launch& value(const T& v) {
    return raw(sizeof v, &v);
  }
  // Buffer and element offset (NULL and 0 for an absent or empty tensor).
  Launch& tensor(const Tensor& t);
  // Buffer, element offset and dtype code: a float tensor of any storage dtype.
  Launch& any_float(const Tensor& t);
  Launch& index(const IndexArg& index);
  // A __local float array of `count` elements.
  Launch& local_floats(size_t count);

  // Enqueues `groups` work-groups of `local` items per dim (dims beyond
  // `dims` are 1), after the call's last command; skipped when there is no work.
  void run(Call& call, cl_uint dims, const size_t* groups, const size_t* local);

  // The work-group size to use: `wanted`, capped by the kernel's limit.
  size_t group_size(size_t wanted) const;

 private:
  Launch& raw(size_t size, const void* value);

  KernelSlot& slot_;
  std::unique_lock<std::mutex> lock_;
  cl_uint index_ = 0;
};

}  // namespace hops::opencl
