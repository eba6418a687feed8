#include "provider.hpp"

#include <dlfcn.h>

#include <stdexcept>

namespace hops::conformance {

Provider::Provider(const std::string& path) {
  // RTLD_LOCAL: as a host would, so that the provider cannot lean on our symbols.
  handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle_) throw std::runtime_error("cannot open " + path + ": " + dlerror());
  get_api_ = reinterpret_cast<hops_get_api_fn>(dlsym(handle_, "hops_get_api"));
  if (!get_api_) {
    dlclose(handle_);
    throw std::runtime_error(path + " does not export hops_get_api");
  }
}

Provider::~Provider() { dlclose(handle_); }

}  // namespace hops::conformance
