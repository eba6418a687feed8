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
    if (!b.available) continue;
    auto group = std::find_if(by_device_.begin(), by_device_.end(),
                              [&](const auto& entry) { return entry.first == b.device_type; });
    if (group == by_device_.end()) group = by_device_.insert(by_device_.end(), {b.device_type, {}});
    group->second.push_back(&b);
  }
  // Best score first; equal scores keep the load order (backends_ is one array).
  for (auto& [type, group] : by_device_) {
    std::sort(group.begin(), group.end(), [](const Backend* a, const Backend* b) {
      return a->score != b->score ? a->score > b->score : a < b;
    });
  }
}

namespace {

// Why a module cannot be used with this libhops.so, or "" when it can: its
// interface version, its shared structs' layout, and each kernel's op struct.
std::string module_mismatch(const BackendModule& module) {
  if (module.interface_version != kModuleInterfaceVersion || module.layout != kModuleLayout) {
    return fmt::format(
        "built against backend-module interface {} (layout {:016x}), but this libhops.so speaks "
        "interface {} (layout {:016x}); rebuild the module with this libhops.so",
        module.interface_version, module.layout, kModuleInterfaceVersion, kModuleLayout);
  }
  if (module.struct_size < sizeof(BackendModule)) {
    return fmt::format("its module struct has {} bytes, expected {}", module.struct_size,
                       sizeof(BackendModule));
  }
  for (size_t i = 0; i < module.num_kernels; ++i) {
    const Kernel& kernel = module.kernels[i];
    const auto ops = all_ops();
    const auto op = std::find_if(ops.begin(), ops.end(), [&](const OpDef* def) {
      return std::string_view(def->desc.name) == kernel.op;
    });
    if (op == ops.end())
      return fmt::format("it has a kernel for '{}', an op unknown here", kernel.op);
    if ((*op)->layout != kernel.op_layout) {
      return fmt::format(
          "its kernel for '{}' was built for the op layout {:016x}, this libhops.so has {:016x}; "
          "rebuild the module with this libhops.so",
          kernel.op, kernel.op_layout, (*op)->layout);
    }
  }
  return {};
}

}  // namespace

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
    const auto entry = reinterpret_cast<BackendModuleFn>(dlsym(handle, kBackendModuleSymbol));
    const BackendModule* module = entry ? entry() : nullptr;
    std::string refused;
    if (!module) {
      refused = dlsym(handle, kLegacyModuleSymbol)
                    ? fmt::format(
                          "{} was built against backend-module interface 1 (unversioned), "
                          "but this libhops.so speaks interface {} (layout {:016x}); "
                          "rebuild the module with this libhops.so",
                          path.string(), kModuleInterfaceVersion, kModuleLayout)
                    : fmt::format("{} has no usable {}", path.string(), kBackendModuleSymbol);
    } else if (const std::string why = module_mismatch(*module); !why.empty()) {
      refused = fmt::format("{} refused: {}", path.string(), why);
    }
    if (!refused.empty()) {
      unavailable(std::move(refused));
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

std::span<const Backend* const> Registry::backends_for(int32_t device_type) const {
  for (const auto& [type, group] : by_device_) {
    if (type == device_type) return group;
  }
  return {};
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
