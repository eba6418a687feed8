// Which OpenCL device the backend reports and uses by default:
// HOPS_OPENCL_DEVICE="P:D" (platform and device index), "P" (platform P,
// device 0) or a case-insensitive substring of the platform's name, vendor or
// version or the device's name ("pocl", "nvidia", "rtx"); unset, the first
// GPU, else the first device of any type.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "cl.hpp"

namespace hops::opencl {

struct DeviceEntry {
  int platform_index = 0, device_index = 0;
  cl_platform_id platform = nullptr;
  cl_device_id device = nullptr;
  cl_device_type type = 0;
  std::string platform_name, platform_vendor, platform_version;
  std::string device_name, device_version, driver_version;
};

struct Selection {
  std::optional<DeviceEntry> device;  // absent: no usable device
  std::string detail;                 // the device, or why there is none
};

// Every device of every platform, in ICD order; `error` says why the list is
// empty when the loader itself failed.
std::vector<DeviceEntry> list_devices(std::string* error);

// Applies `request` (the value of HOPS_OPENCL_DEVICE, or null) to the devices.
Selection select_device(const std::vector<DeviceEntry>& devices, const char* request);

// One line: "pthread-skylake-avx512 (platform 0:0 Portable Computing Language, OpenCL 3.0 ...,
// driver 3.1)".
std::string describe(const DeviceEntry& entry);

}  // namespace hops::opencl
