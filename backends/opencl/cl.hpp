// The OpenCL C API as the backend uses it: the 1.2 headers, RAII owners for
// cl objects, and check(), which turns any error code into a hops::Error
// (HOPS_ERR_BACKEND) naming the call and the code.
#pragma once

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>

#include <string>
#include <string_view>
#include <utility>

#include "error.hpp"

namespace hops::opencl {

// "CL_OUT_OF_RESOURCES" for -5, "CL error -1234" for codes it does not know.
std::string error_name(cl_int code);

[[noreturn]] void fail_cl(cl_int code, std::string_view what);

inline void check(cl_int code, std::string_view what) {
  if (code != CL_SUCCESS) fail_cl(code, what);
}

// Owns one reference to a cl object: released when the owner dies, retained
// when it is copied.
template <class T, cl_int (*Retain)(T), cl_int (*Release)(T)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(T owned) : raw_(owned) {}  // takes over a reference the caller holds
  static Handle retain(T borrowed) {
    if (borrowed) Retain(borrowed);
    return Handle(borrowed);
  }
  Handle(const Handle& other) : raw_(other.raw_) {
    if (raw_) Retain(raw_);
  }
  Handle(Handle&& other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
  Handle& operator=(Handle other) noexcept {
    std::swap(raw_, other.raw_);
    return *this;
  }
  ~Handle() {
    if (raw_) Release(raw_);
  }

  T get() const { return raw_; }
  // For out-parameters of clEnqueue* and the like: drops what it held.
  T* receive() {
    *this = Handle();
    return &raw_;
  }
  explicit operator bool() const { return raw_ != nullptr; }

 private:
  T raw_ = nullptr;
};

using ContextHandle = Handle<cl_context, clRetainContext, clReleaseContext>;
using QueueHandle = Handle<cl_command_queue, clRetainCommandQueue, clReleaseCommandQueue>;
using ProgramHandle = Handle<cl_program, clRetainProgram, clReleaseProgram>;
using KernelHandle = Handle<cl_kernel, clRetainKernel, clReleaseKernel>;
using MemHandle = Handle<cl_mem, clRetainMemObject, clReleaseMemObject>;
using EventHandle = Handle<cl_event, clRetainEvent, clReleaseEvent>;

// A string property (clGetPlatformInfo, clGetDeviceInfo), without the NUL.
std::string platform_string(cl_platform_id platform, cl_platform_info what);
std::string device_string(cl_device_id device, cl_device_info what);

template <class T>
T device_value(cl_device_id device, cl_device_info what) {
  T value{};
  check(clGetDeviceInfo(device, what, sizeof value, &value, nullptr), "clGetDeviceInfo");
  return value;
}

}  // namespace hops::opencl
