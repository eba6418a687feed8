#include "call.hpp"

#include <cstring>

#include "checked_math.hpp"

namespace hops::opencl {

namespace {

template <class... Args>
[[noreturn]] void reject(fmt::format_string<Args...> format, Args&&... args) {
  fail(HOPS_ERR_INVALID_ARGUMENT, format, std::forward<Args>(args)...);
}

cl_mem buffer_of(const Tensor& t) { return static_cast<cl_mem>(t.handle); }

bool on_device(const Tensor& t) { return t && t.device.device_type == kDLOpenCL; }

template <class T>
T mem_info(cl_mem buffer, cl_mem_info what, const char* name) {
  T value{};
  const cl_int status = clGetMemObjectInfo(buffer, what, sizeof value, &value, nullptr);
  if (status != CL_SUCCESS) {
    reject("argument '{}': data is not a usable cl_mem (clGetMemObjectInfo: {})", name,
           error_name(status));
  }
  return value;
}

// With a NULL stream: the selected device when the context has it, else the
// context's first device.
cl_device_id device_in(cl_context context) {
  size_t bytes = 0;
  check(clGetContextInfo(context, CL_CONTEXT_DEVICES, 0, nullptr, &bytes), "clGetContextInfo");
  std::vector<cl_device_id> devices(bytes / sizeof(cl_device_id));
  check(clGetContextInfo(context, CL_CONTEXT_DEVICES, bytes, devices.data(), nullptr),
        "clGetContextInfo");
  if (devices.empty()) fail(HOPS_ERR_BACKEND, "opencl: the tensors' cl_context has no device");
  const Selection& selection = selected_device();
  for (cl_device_id device : devices) {
    if (selection.device && device == selection.device->device) return device;
  }
  return devices.front();
}

}  // namespace

cl_long element_offset(const Tensor& t) {
  return t ? static_cast<cl_long>(t.byte_offset / static_cast<uint64_t>(dtype_size(t.dtype))) : 0;
}

cl_int dtype_code(const Tensor& t) {
  if (!t) return -1;
  switch (t.dtype) {
    case DType::f16:
      return 1;
    case DType::bf16:
      return 2;
    default:
      return 0;
  }
}

cl_long4 strides4(const Tensor& t) {
  cl_long4 s{};
  for (int d = 0; d < 4 && d < t.ndim; ++d) s.s[d] = t.stride[d];
  return s;
}

Call::Call(const ExecContext& exec, std::initializer_list<NamedTensor> tensors) {
  cl_context context = nullptr;
  cl_device_id device = nullptr;
  if (exec.exec.stream) {
    queue_ = static_cast<cl_command_queue>(exec.exec.stream);
    const cl_int status =
        clGetCommandQueueInfo(queue_, CL_QUEUE_CONTEXT, sizeof context, &context, nullptr);
    if (status != CL_SUCCESS) {
      reject("argument 'exec': stream is not a usable cl_command_queue ({})", error_name(status));
    }
    check(clGetCommandQueueInfo(queue_, CL_QUEUE_DEVICE, sizeof device, &device, nullptr),
          "clGetCommandQueueInfo(CL_QUEUE_DEVICE)");
  } else {
    for (const NamedTensor& arg : tensors) {
      if (on_device(arg.tensor) && arg.tensor.handle) {
        context = mem_info<cl_context>(buffer_of(arg.tensor), CL_MEM_CONTEXT, arg.name);
        break;
      }
    }
    if (!context) return;  // every tensor is empty: nothing to do
    device = device_in(context);
    own_queue_ = true;
  }
  runtime_ = &runtime_for(context, device);
  if (own_queue_) queue_ = runtime_->own_queue();
  for (const NamedTensor& arg : tensors) check_tensor(arg.tensor, arg.name);
}

Call::~Call() {
  // Scratch stays busy until the last command of the call has run.
  for (BufferPool::Lease& lease : leases_) lease.busy_until(last_);
}

void Call::check_tensor(const Tensor& t, const char* name) const {
  if (!on_device(t) || t.numel() == 0) return;
  const auto element = static_cast<uint64_t>(dtype_size(t.dtype));
  if (t.byte_offset % element != 0) {
    reject("argument '{}': byte_offset {} is not a multiple of the {}-byte element", name,
           t.byte_offset, element);
  }
  if (mem_info<cl_context>(buffer_of(t), CL_MEM_CONTEXT, name) != runtime_->context()) {
    reject("argument '{}': its cl_mem belongs to another cl_context than the call's queue", name);
  }
  // The plugin has bounded the span and byte_offset (checked_math.hpp), so
  // their sum cannot wrap.
  const std::optional<int64_t> extent = extent_bytes(t);
  if (!extent) reject("argument '{}': its shape and strides span more than 2^56 bytes", name);
  const uint64_t end = t.byte_offset + static_cast<uint64_t>(*extent);
  const auto size = mem_info<size_t>(buffer_of(t), CL_MEM_SIZE, name);
  if (end > size) {
    reject("argument '{}': the view ends at byte {}, past the end of its {}-byte cl_mem", name, end,
           size);
  }
}

IndexArg Call::index(const Tensor& t) {
  if (!t) return {};
  if (on_device(t)) {
    return {buffer_of(t), element_offset(t), t.stride[0], static_cast<cl_int>(dtype_size(t.dtype))};
  }
  // Host-resident: the plugin has validated the values; they travel as int64.
  const auto count = static_cast<size_t>(t.shape[0]);
  BufferPool::Lease lease =
      runtime_->pool().acquire(scratch_bytes("opencl: index tensor", count, sizeof(int64_t)));
  std::vector<std::byte>& staging = lease.staging();
  staging.resize(count * sizeof(int64_t));
  for (size_t i = 0; i < count; ++i) {
    const int64_t value = read_index(t, static_cast<int64_t>(i));
    std::memcpy(staging.data() + i * sizeof value, &value, sizeof value);
  }
  const cl_mem buffer = lease.buffer();
  if (count > 0) {
    // Asynchronous: `staging` lives in the block, which stays busy until the
    // call's last command (which follows this write) has completed.
    const cl_event wait = last_.get();
    EventHandle written;
    check(clEnqueueWriteBuffer(queue_, buffer, CL_FALSE, 0, staging.size(), staging.data(),
                               wait ? 1 : 0, wait ? &wait : nullptr, written.receive()),
          "clEnqueueWriteBuffer(index tensor)");
    last_ = std::move(written);
  }
  leases_.push_back(std::move(lease));
  return {buffer, 0, 1, static_cast<cl_int>(sizeof(int64_t))};
}

cl_mem Call::scratch(size_t bytes) {
  leases_.push_back(runtime_->pool().acquire(bytes));
  return leases_.back().buffer();
}

void Call::complete() {
  if (!active()) return;
  if (own_queue_) {
    check(clFinish(queue_), "clFinish");
  } else {
    check(clFlush(queue_), "clFlush");  // start the work now, as a CUDA launch would
  }
}

// ---- Launch ----------------------------------------------------------------------

Launch& Launch::raw(size_t size, const void* value) {
  check(clSetKernelArg(slot_.kernel.get(), index_, size, value),
        fmt::format("clSetKernelArg({}, argument {})", slot_.name, index_));
  ++index_;
  return *this;
}

Launch& Launch::tensor(const Tensor& t) {
  const cl_mem buffer = t && t.numel() > 0 ? buffer_of(t) : nullptr;
  raw(sizeof buffer, &buffer);
  return value(element_offset(t));
}

Launch& Launch::any_float(const Tensor& t) {
  tensor(t);
  return value(dtype_code(t));
}

Launch& Launch::index(const IndexArg& index) {
  raw(sizeof index.buffer, &index.buffer);
  return value(index.offset).value(index.stride).value(index.kind);
}

Launch& Launch::local_floats(size_t count) {
  return raw(std::max<size_t>(count, 1) * sizeof(float), nullptr);
}

size_t Launch::group_size(size_t wanted) const {
  size_t size = 1;
  while (size * 2 <= std::min(wanted, slot_.max_work_group)) size *= 2;
  return size;
}

void Launch::run(Call& call, cl_uint dims, const size_t* groups, const size_t* local) {
  if (index_ != slot_.num_args) {
    fail(HOPS_ERR_INTERNAL, "opencl: {} got {} arguments, it takes {}", slot_.name, index_,
         slot_.num_args);
  }
  size_t global[3] = {1, 1, 1};
  for (cl_uint d = 0; d < dims; ++d) {
    if (groups[d] == 0) return;
    global[d] = static_cast<size_t>(checked_product(slot_.name, groups[d], local[d]));
  }
  const cl_event wait = call.last_event().get();
  EventHandle done;
  check(clEnqueueNDRangeKernel(call.queue(), slot_.kernel.get(), dims, nullptr, global, local,
                               wait ? 1 : 0, wait ? &wait : nullptr, done.receive()),
        fmt::format("clEnqueueNDRangeKernel({})", slot_.name));
  call.set_last_event(std::move(done));
}

}  // namespace hops::opencl
