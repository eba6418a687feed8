#include "device_select.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace hops::opencl {

namespace {

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// "3" -> 3; anything else (empty, signs, trailing text) -> nullopt.
std::optional<int> parse_index(std::string_view text) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || value < 0) return std::nullopt;
  return value;
}

std::string device_list(const std::vector<DeviceEntry>& devices) {
  std::string text;
  for (const DeviceEntry& d : devices) {
    text += fmt::format("{}{}:{} {} / {}", text.empty() ? "" : "; ", d.platform_index,
                        d.device_index, d.platform_name, d.device_name);
  }
  return text;
}

const DeviceEntry* find_by_index(const std::vector<DeviceEntry>& devices, int platform,
                                 int device) {
  for (const DeviceEntry& d : devices) {
    if (d.platform_index == platform && d.device_index == device) return &d;
  }
  return nullptr;
}

const DeviceEntry* find_by_name(const std::vector<DeviceEntry>& devices,
                                const std::string& needle) {
  for (const DeviceEntry& d : devices) {
    const std::string haystack = lower(fmt::format(
        "{}\n{}\n{}\n{}", d.platform_name, d.platform_vendor, d.platform_version, d.device_name));
    if (haystack.find(lower(needle)) != std::string::npos) return &d;
  }
  return nullptr;
}

const DeviceEntry* find_default(const std::vector<DeviceEntry>& devices) {
  for (const DeviceEntry& d : devices) {
    if (d.type & CL_DEVICE_TYPE_GPU) return &d;
  }
  return devices.empty() ? nullptr : &devices.front();
}

}  // namespace

std::vector<DeviceEntry> list_devices(std::string* error) {
  std::vector<DeviceEntry> devices;
  cl_uint platform_count = 0;
  const cl_int status = clGetPlatformIDs(0, nullptr, &platform_count);
  if (status != CL_SUCCESS || platform_count == 0) {
    *error = fmt::format(
        "no OpenCL platform (clGetPlatformIDs: {}); install an ICD such as pocl-opencl-icd or "
        "the GPU vendor's",
        status == CL_SUCCESS ? "0 platforms" : error_name(status));
    return devices;
  }
  std::vector<cl_platform_id> platforms(platform_count);
  check(clGetPlatformIDs(platform_count, platforms.data(), nullptr), "clGetPlatformIDs");
  for (cl_uint p = 0; p < platform_count; ++p) {
    cl_uint device_count = 0;
    // A platform without devices answers CL_DEVICE_NOT_FOUND: not an error here.
    if (clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, 0, nullptr, &device_count) != CL_SUCCESS) {
      continue;
    }
    std::vector<cl_device_id> ids(device_count);
    check(clGetDeviceIDs(platforms[p], CL_DEVICE_TYPE_ALL, device_count, ids.data(), nullptr),
          "clGetDeviceIDs");
    for (cl_uint d = 0; d < device_count; ++d) {
      DeviceEntry e;
      e.platform_index = static_cast<int>(p);
      e.device_index = static_cast<int>(d);
      e.platform = platforms[p];
      e.device = ids[d];
      e.type = device_value<cl_device_type>(ids[d], CL_DEVICE_TYPE);
      e.platform_name = platform_string(platforms[p], CL_PLATFORM_NAME);
      e.platform_vendor = platform_string(platforms[p], CL_PLATFORM_VENDOR);
      e.platform_version = platform_string(platforms[p], CL_PLATFORM_VERSION);
      e.device_name = device_string(ids[d], CL_DEVICE_NAME);
      e.device_version = device_string(ids[d], CL_DEVICE_VERSION);
      e.driver_version = device_string(ids[d], CL_DRIVER_VERSION);
      devices.push_back(std::move(e));
    }
  }
  if (devices.empty()) *error = "OpenCL platforms found, but no devices";
  return devices;
}

Selection select_device(const std::vector<DeviceEntry>& devices, const char* request) {
  const std::string wanted = request ? request : "";
  const DeviceEntry* chosen = nullptr;
  if (wanted.empty()) {
    chosen = find_default(devices);
  } else if (const size_t colon = wanted.find(':'); colon != std::string::npos) {
    const auto platform = parse_index(std::string_view(wanted).substr(0, colon));
    const auto device = parse_index(std::string_view(wanted).substr(colon + 1));
    if (platform && device) chosen = find_by_index(devices, *platform, *device);
  } else if (const auto platform = parse_index(wanted)) {
    chosen = find_by_index(devices, *platform, 0);
  } else {
    chosen = find_by_name(devices, wanted);
  }
  if (!chosen) {
    return {std::nullopt, fmt::format("HOPS_OPENCL_DEVICE=\"{}\" matches no device (devices: {})",
                                      wanted, device_list(devices))};
  }
  std::string detail = describe(*chosen);
  if (!wanted.empty()) detail += fmt::format(", chosen by HOPS_OPENCL_DEVICE=\"{}\"", wanted);
  return {*chosen, std::move(detail)};
}

std::string describe(const DeviceEntry& e) {
  return fmt::format("{} (platform {}:{} {}, {}, driver {})", e.device_name, e.platform_index,
                     e.device_index, e.platform_name, e.device_version, e.driver_version);
}

}  // namespace hops::opencl
