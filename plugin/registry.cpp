#include "registry.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <filesystem>

namespace hops {

const Kernel* Backend::find(std::string_view op, DType primary) const {
  for (const Kernel& k : kernels) {
    if (op == k.op && (k.dtypes & dtype_bit(primary))) return &k;
  }
  return nullptr;
}

Registry& Registry::get() {
  static Registry registry;
  return registry;
}

Registry::Registry() : threads_(std::make_unique<ThreadPool>(default_thread_count())) {
  backends_.push_back({"cpu", kDLCPU, true, "built into libhops", 0, cpu_kernels(), &last_error});
  // Our own modules sit beside libhops.so.
  Dl_info self{};
  if (dladdr(reinterpret_cast<void*>(&all_ops), &self) && self.dli_fname) {
    for (Backend& module :
         load_backend_modules(std::filesystem::path(self.dli_fname).parent_path())) {
      backends_.push_back(std::move(module));
    }
  }
  for (const Backend& b : backends_) {
    infos_.push_back({sizeof(hops_backend_info), b.name.c_str(), b.device_type, b.available ? 1 : 0,
                      b.detail.c_str()});
  }
}

// Modules are libhops_<name>.so files in `folder`. A module whose runtime is
// missing (no GPU driver, no OpenCL ICD) still loads and reports itself
// unavailable; one that cannot be opened at all is listed with the reason.
std::vector<Backend> load_backend_modules(const std::filesystem::path& folder) {
  std::vector<std::filesystem::path> paths;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(folder, ec)) {
    const std::string file = entry.path().filename().string();
    if (file.starts_with("libhops_") && entry.path().extension() == ".so")
      paths.push_back(entry.path());
  }
  std::sort(paths.begin(), paths.end());
  std::vector<Backend> modules;
  for (const auto& path : paths) {
    const std::string name = path.stem().string().substr(std::string_view("libhops_").size());
    auto unavailable = [&](std::string why) {
      modules.push_back({name, kDLExtDev, false, std::move(why), 0, {}, nullptr});
    };
    // RTLD_LOCAL: a module's symbols never leak into the host's namespace.
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      // NOLINTNEXTLINE(concurrency-mt-unsafe): runs once, inside the registry's static-init guard
      unavailable(fmt::format("cannot open {}: {}", path.string(), dlerror()));
      continue;
    }
    const auto init = reinterpret_cast<BackendInitFn>(dlsym(handle, kBackendInitSymbol));
    const BackendModuleV1* module = init ? init() : nullptr;
    if (!module || module->struct_size < sizeof(BackendModuleV1)) {
      unavailable(fmt::format("{} has no usable {}", path.string(), kBackendInitSymbol));
      dlclose(handle);
      continue;
    }
    // The module stays loaded for the life of the process: its kernels are in the table.
    modules.push_back({module->name,
                       static_cast<DLDeviceType>(module->device_type),
                       module->available != 0,
                       fmt::format("{}: {}", path.string(), module->detail),
                       module->score,
                       {module->kernels, module->num_kernels},
                       module->last_error});
  }
  return modules;
}

const OpDef* Registry::find_op(std::string_view name) const {
  for (const OpDef* op : all_ops()) {
    if (name == op->desc.name) return op;
  }
  return nullptr;
}

const Backend* Registry::backend_for(int32_t device_type) const {
  const Backend* best = nullptr;
  for (const Backend& b : backends_) {
    if (b.available && b.device_type == device_type && (!best || b.score > best->score)) best = &b;
  }
  return best;
}

ScratchPool& Registry::scratch(DLDevice device) {
  const std::scoped_lock lock(scratch_mutex_);
  auto& pool = scratch_[{device.device_type, device.device_id}];
  if (!pool) {
    pool = std::make_unique<ScratchPool>(device);
    pool->set_allocator(allocator_.struct_size ? &allocator_ : nullptr);
  }
  return *pool;
}

void Registry::set_allocator(const hops_allocator* allocator) {
  const std::scoped_lock lock(scratch_mutex_);
  allocator_ = hops_allocator{};
  if (allocator)
    std::memcpy(&allocator_, allocator, std::min(allocator->struct_size, sizeof allocator_));
  for (auto& [device, pool] : scratch_) pool->set_allocator(allocator);
}

hops_allocator Registry::allocator() {
  const std::scoped_lock lock(scratch_mutex_);
  return allocator_;
}

}  // namespace hops
