#include "context.hpp"

#include <cctype>
#include <cstdio>
#include <cstdlib>

#include "kernel_sources.hpp"
#include "program_cache.hpp"

namespace hops::opencl {

namespace {

// Storage dtype codes shared with common.cl (HOPS_F32, HOPS_F16, HOPS_BF16).
int dtype_code(DType dtype) {
  switch (dtype) {
    case DType::f16:
      return 1;
    case DType::bf16:
      return 2;
    default:
      return 0;
  }
}

// Name, argument count and work-group limit of a kernel.
void describe_kernel(KernelSlot& slot, cl_device_id device) {
  const cl_kernel kernel = slot.kernel.get();
  size_t size = 0;
  check(clGetKernelInfo(kernel, CL_KERNEL_FUNCTION_NAME, 0, nullptr, &size), "clGetKernelInfo");
  slot.name.resize(size);
  check(clGetKernelInfo(kernel, CL_KERNEL_FUNCTION_NAME, size, slot.name.data(), nullptr),
        "clGetKernelInfo");
  while (!slot.name.empty() && slot.name.back() == '\0') slot.name.pop_back();
  check(clGetKernelInfo(kernel, CL_KERNEL_NUM_ARGS, sizeof slot.num_args, &slot.num_args, nullptr),
        "clGetKernelInfo");
  check(clGetKernelWorkGroupInfo(kernel, device, CL_KERNEL_WORK_GROUP_SIZE,
                                 sizeof slot.max_work_group, &slot.max_work_group, nullptr),
        "clGetKernelWorkGroupInfo");
}

bool is_nvidia(cl_device_id device) {
  const auto platform = device_value<cl_platform_id>(device, CL_DEVICE_PLATFORM);
  for (const std::string& text : {platform_string(platform, CL_PLATFORM_NAME),
                                  platform_string(platform, CL_PLATFORM_VENDOR)}) {
    std::string lower = text;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower.find("nvidia") != std::string::npos) return true;
  }
  return false;
}

}  // namespace

Runtime::Runtime(ContextHandle context, cl_device_id device)
    : context_(std::move(context)),
      device_(device),
      cpu_device_((device_value<cl_device_type>(device, CL_DEVICE_TYPE) & CL_DEVICE_TYPE_CPU) != 0),
      nvidia_platform_(is_nvidia(device)),
      pool_(context_.get()) {}

Runtime::Program& Runtime::program(std::string_view file, DType dtype) {
  return program(file, dtype, "", false);
}

Runtime::Program& Runtime::program(std::string_view file, DType dtype, const std::string& defines,
                                   bool optional) {
  const std::scoped_lock lock(mutex_);
  const std::string key = defines.empty() ? std::string(file) : fmt::format("{} {}", file, defines);
  std::unique_ptr<Program>& entry = programs_[{key, dtype}];
  if (entry) return *entry;
  const std::string_view source = embedded::source(file);
  if (source.empty()) fail(HOPS_ERR_INTERNAL, "opencl: no embedded program {}", file);
  // #line makes the compiler's messages point into the family's own file.
  const std::string text =
      fmt::format("{}\n#line 1 \"{}\"\n{}", embedded::source("common.cl"), file, source);
  // Accuracy matters more than the last percent: no -cl-fast-relaxed-math.
  std::string options = fmt::format("-cl-std=CL1.2 -DHOPS_X={}", dtype_code(dtype));
  if (!defines.empty()) options += " " + defines;
  auto built = std::make_unique<Program>();
  try {
    built->program = build_program(context(), device_, file, text, options);
  } catch (const Error& e) {
    if (!optional) throw;
    std::fprintf(stderr, "hops opencl: %s (%s) not built, the portable kernels run instead: %s\n",
                 std::string(file).c_str(), options.c_str(), e.what());
    entry = std::move(built);
    return *entry;
  }
  cl_uint count = 0;
  check(clCreateKernelsInProgram(built->program.get(), 0, nullptr, &count),
        "clCreateKernelsInProgram");
  std::vector<cl_kernel> raw(count);
  check(clCreateKernelsInProgram(built->program.get(), count, raw.data(), nullptr),
        "clCreateKernelsInProgram");
  for (cl_kernel kernel : raw) {  // owned before anything below can throw
    built->kernels.push_back(std::make_unique<KernelSlot>());
    built->kernels.back()->kernel = KernelHandle(kernel);
  }
  for (const auto& slot : built->kernels) describe_kernel(*slot, device_);
  entry = std::move(built);
  return *entry;
}

KernelSlot& Runtime::kernel(std::string_view program_file, DType dtype, std::string_view name) {
  for (const auto& slot : program(program_file, dtype).kernels) {
    if (slot->name == name) return *slot;
  }
  fail(HOPS_ERR_INTERNAL, "opencl: {} has no kernel {}", program_file, name);
}

KernelSlot* Runtime::optional_kernel(std::string_view program_file, DType dtype,
                                     const std::string& defines, std::string_view name) {
  for (const auto& slot : program(program_file, dtype, defines, true).kernels) {
    if (slot->name == name) return slot.get();
  }
  return nullptr;
}

cl_command_queue Runtime::own_queue() {
  const std::scoped_lock lock(mutex_);
  if (!queue_) {
    cl_int status = CL_SUCCESS;
    queue_ = QueueHandle(clCreateCommandQueue(context(), device_, 0, &status));
    check(status, "clCreateCommandQueue");
  }
  return queue_.get();
}

Runtime& runtime_for(cl_context context, cl_device_id device) {
  static std::mutex mutex;
  // Never destroyed: a host may call from its own static destructors, and
  // releasing cl objects after the ICD has unloaded would crash.
  // NOLINTNEXTLINE(cppcoreguidelines-owning-memory)
  static auto* runtimes =
      new std::map<std::pair<cl_context, cl_device_id>, std::unique_ptr<Runtime>>;
  const std::scoped_lock lock(mutex);
  std::unique_ptr<Runtime>& runtime = (*runtimes)[{context, device}];
  if (!runtime) runtime = std::make_unique<Runtime>(ContextHandle::retain(context), device);
  return *runtime;
}

const Selection& selected_device() {
  static const Selection selection = [] {
    std::string error;
    const std::vector<DeviceEntry> devices = list_devices(&error);
    if (devices.empty()) return Selection{std::nullopt, error};
    // NOLINTNEXTLINE(concurrency-mt-unsafe): read once, inside the static-init guard
    return select_device(devices, std::getenv("HOPS_OPENCL_DEVICE"));
  }();
  return selection;
}

}  // namespace hops::opencl
