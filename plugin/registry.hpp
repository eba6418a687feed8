// The process-wide state of the plugin: the op table, the backends (CPU plus
// the modules found beside libhops.so) and the per-device resources.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "op.hpp"
#include "scratch_pool.hpp"
#include "thread_pool.hpp"

namespace hops {

// Every op the plugin offers, in ABI order (plugin/families.cpp).
std::span<const OpDef* const> all_ops();

// The backend modules (libhops_<name>.so) found in a folder. A module built
// against another module interface (version or layout fingerprint, or an op
// struct's layout) is listed unavailable, with both versions in its detail.
std::vector<Backend> load_backend_modules(const std::filesystem::path& folder);

class Registry {
 public:
  static Registry& get();

  const OpDef* find_op(std::string_view name) const;
  std::span<const Backend> backends() const { return backends_; }
  std::span<const hops_backend_info> backend_infos() const { return infos_; }
  // The available backends of this device type, best score first.
  std::span<const Backend* const> backends_for(int32_t device_type) const;

  ThreadPool& threads() { return *threads_; }
  ScratchPool& scratch(DLDevice device);
  void set_allocator(const hops_allocator* allocator);
  hops_allocator allocator();  // a copy; struct_size 0 when none is set

 private:
  Registry();

  std::vector<Backend> backends_;
  std::vector<hops_backend_info> infos_;
  std::vector<std::pair<int32_t, std::vector<const Backend*>>> by_device_;
  std::unique_ptr<ThreadPool> threads_;
  std::mutex scratch_mutex_;
  std::map<std::pair<int32_t, int32_t>, std::unique_ptr<ScratchPool>> scratch_;
  hops_allocator allocator_{};
};

}  // namespace hops
