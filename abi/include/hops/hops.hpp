// hops.hpp — optional header-only C++ convenience over hops.h: a provider
// opened with RAII, statuses turned into exceptions, ops looked up by name
// with their typed signature. Nothing here is part of the ABI.
#pragma once

#include <dlfcn.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "hops/hops.h"

namespace hops {

class Error : public std::runtime_error {
 public:
  Error(hops_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  hops_status status() const { return status_; }

 private:
  hops_status status_;
};

// A provider library, open for the lifetime of this object.
class Provider {
 public:
  // `path` as dlopen takes it: "libhops.so", or a full path.
  explicit Provider(const std::string& path)
      : handle_(dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL), &dlclose) {
    if (!handle_) throw Error(HOPS_ERR_NOT_FOUND, "cannot open " + path + ": " + dlerror());
    const auto get_api = reinterpret_cast<hops_get_api_fn>(dlsym(handle_.get(), "hops_get_api"));
    api_ = get_api ? get_api(HOPS_ABI_MAJOR) : nullptr;
    if (!api_) throw Error(HOPS_ERR_NOT_FOUND, path + " does not speak hops ABI major 1");
  }

  const hops_api& api() const { return *api_; }

  // The typed entry point of an op, e.g. op<hops_gdn_chunk_fwd_fn>("gdn_chunk_fwd").
  template <class Fn>
  Fn op(const char* name) const {
    const hops_op_desc* desc = api_->find_op(name);
    if (!desc) throw Error(HOPS_ERR_NOT_FOUND, std::string("provider has no op ") + name);
    return reinterpret_cast<Fn>(desc->fn);
  }

  // Throws hops::Error with the provider's message unless status is HOPS_OK.
  void check(hops_status status) const {
    if (status != HOPS_OK) throw Error(status, api_->last_error());
  }

 private:
  std::unique_ptr<void, int (*)(void*)> handle_;
  const hops_api* api_ = nullptr;
};

}  // namespace hops
