// Where the runner's tensors live. Cases only ever talk to Device and Memory,
// so a GPU backend (OpenCL, CUDA) plugs in by implementing these two classes
// and registering a name in make_device(); no case changes.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "hops/hops.h"

namespace hops::conformance {

// One allocation on a device. Contents move to and from the host in whole
// buffers: the runner stages every read and write on the host.
class Memory {
 public:
  virtual ~Memory() = default;
  virtual size_t size() const = 0;
  // What DLTensor::data holds for this allocation (a pointer, or a cl_mem).
  virtual void* handle() const = 0;
  virtual void write(std::span<const std::byte> bytes) = 0;  // bytes.size() == size()
  virtual std::vector<std::byte> read() const = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual DLDevice dl_device() const = 0;
  // The native stream/queue the calls run on (hops_exec::stream), NULL for the default.
  virtual void* stream() const = 0;
  virtual std::unique_ptr<Memory> allocate(size_t bytes) = 0;
};

// The device for a backend name ("cpu"), or null when the runner has no
// memory implementation for it yet.
std::unique_ptr<Device> make_device(std::string_view backend);

}  // namespace hops::conformance
