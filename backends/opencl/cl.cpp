#include "cl.hpp"

#include <vector>

namespace hops::opencl {

std::string error_name(cl_int code) {
  switch (code) {
#define HOPS_CL_ERROR(name) \
  case name:                \
    return #name;
    HOPS_CL_ERROR(CL_DEVICE_NOT_FOUND)
    HOPS_CL_ERROR(CL_DEVICE_NOT_AVAILABLE)
    HOPS_CL_ERROR(CL_COMPILER_NOT_AVAILABLE)
    HOPS_CL_ERROR(CL_MEM_OBJECT_ALLOCATION_FAILURE)
    HOPS_CL_ERROR(CL_OUT_OF_RESOURCES)
    HOPS_CL_ERROR(CL_OUT_OF_HOST_MEMORY)
    HOPS_CL_ERROR(CL_PROFILING_INFO_NOT_AVAILABLE)
    HOPS_CL_ERROR(CL_MEM_COPY_OVERLAP)
    HOPS_CL_ERROR(CL_IMAGE_FORMAT_MISMATCH)
    HOPS_CL_ERROR(CL_IMAGE_FORMAT_NOT_SUPPORTED)
    HOPS_CL_ERROR(CL_BUILD_PROGRAM_FAILURE)
    HOPS_CL_ERROR(CL_MAP_FAILURE)
    HOPS_CL_ERROR(CL_MISALIGNED_SUB_BUFFER_OFFSET)
    HOPS_CL_ERROR(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)
    HOPS_CL_ERROR(CL_COMPILE_PROGRAM_FAILURE)
    HOPS_CL_ERROR(CL_LINKER_NOT_AVAILABLE)
    HOPS_CL_ERROR(CL_LINK_PROGRAM_FAILURE)
    HOPS_CL_ERROR(CL_DEVICE_PARTITION_FAILED)
    HOPS_CL_ERROR(CL_KERNEL_ARG_INFO_NOT_AVAILABLE)
    HOPS_CL_ERROR(CL_INVALID_VALUE)
    HOPS_CL_ERROR(CL_INVALID_DEVICE_TYPE)
    HOPS_CL_ERROR(CL_INVALID_PLATFORM)
    HOPS_CL_ERROR(CL_INVALID_DEVICE)
    HOPS_CL_ERROR(CL_INVALID_CONTEXT)
    HOPS_CL_ERROR(CL_INVALID_QUEUE_PROPERTIES)
    HOPS_CL_ERROR(CL_INVALID_COMMAND_QUEUE)
    HOPS_CL_ERROR(CL_INVALID_HOST_PTR)
    HOPS_CL_ERROR(CL_INVALID_MEM_OBJECT)
    HOPS_CL_ERROR(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)
    HOPS_CL_ERROR(CL_INVALID_IMAGE_SIZE)
    HOPS_CL_ERROR(CL_INVALID_SAMPLER)
    HOPS_CL_ERROR(CL_INVALID_BINARY)
    HOPS_CL_ERROR(CL_INVALID_BUILD_OPTIONS)
    HOPS_CL_ERROR(CL_INVALID_PROGRAM)
    HOPS_CL_ERROR(CL_INVALID_PROGRAM_EXECUTABLE)
    HOPS_CL_ERROR(CL_INVALID_KERNEL_NAME)
    HOPS_CL_ERROR(CL_INVALID_KERNEL_DEFINITION)
    HOPS_CL_ERROR(CL_INVALID_KERNEL)
    HOPS_CL_ERROR(CL_INVALID_ARG_INDEX)
    HOPS_CL_ERROR(CL_INVALID_ARG_VALUE)
    HOPS_CL_ERROR(CL_INVALID_ARG_SIZE)
    HOPS_CL_ERROR(CL_INVALID_KERNEL_ARGS)
    HOPS_CL_ERROR(CL_INVALID_WORK_DIMENSION)
    HOPS_CL_ERROR(CL_INVALID_WORK_GROUP_SIZE)
    HOPS_CL_ERROR(CL_INVALID_WORK_ITEM_SIZE)
    HOPS_CL_ERROR(CL_INVALID_GLOBAL_OFFSET)
    HOPS_CL_ERROR(CL_INVALID_EVENT_WAIT_LIST)
    HOPS_CL_ERROR(CL_INVALID_EVENT)
    HOPS_CL_ERROR(CL_INVALID_OPERATION)
    HOPS_CL_ERROR(CL_INVALID_GL_OBJECT)
    HOPS_CL_ERROR(CL_INVALID_BUFFER_SIZE)
    HOPS_CL_ERROR(CL_INVALID_MIP_LEVEL)
    HOPS_CL_ERROR(CL_INVALID_GLOBAL_WORK_SIZE)
    HOPS_CL_ERROR(CL_INVALID_PROPERTY)
    HOPS_CL_ERROR(CL_INVALID_IMAGE_DESCRIPTOR)
    HOPS_CL_ERROR(CL_INVALID_COMPILER_OPTIONS)
    HOPS_CL_ERROR(CL_INVALID_LINKER_OPTIONS)
    HOPS_CL_ERROR(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef HOPS_CL_ERROR
    case -1001:
      return "CL_PLATFORM_NOT_FOUND_KHR";  // the ICD loader found no platform
    default:
      return fmt::format("CL error {}", code);
  }
}

void fail_cl(cl_int code, std::string_view what) {
  // Allocation failures are the host's to handle like any out-of-memory.
  const hops_status status =
      code == CL_MEM_OBJECT_ALLOCATION_FAILURE || code == CL_OUT_OF_HOST_MEMORY
          ? HOPS_ERR_OUT_OF_MEMORY
          : HOPS_ERR_BACKEND;
  fail(status, "opencl: {} failed: {} ({})", what, error_name(code), code);
}

namespace {

template <class Query, class Object, class Info>
std::string query_string(Query query, Object object, Info what, const char* call) {
  size_t size = 0;
  check(query(object, what, 0, nullptr, &size), call);
  std::string text(size, '\0');
  check(query(object, what, size, text.data(), nullptr), call);
  while (!text.empty() && text.back() == '\0') text.pop_back();
  return text;
}

}  // namespace

std::string platform_string(cl_platform_id platform, cl_platform_info what) {
  return query_string(clGetPlatformInfo, platform, what, "clGetPlatformInfo");
}

std::string device_string(cl_device_id device, cl_device_info what) {
  return query_string(clGetDeviceInfo, device, what, "clGetDeviceInfo");
}

}  // namespace hops::opencl
