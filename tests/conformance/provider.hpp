// A provider shared object, open for the lifetime of this object.
#pragma once

#include <string>

#include "hops/hops.h"

namespace hops::conformance {

class Provider {
 public:
  // Throws std::runtime_error when the file cannot be opened or lacks hops_get_api.
  explicit Provider(const std::string& path);
  ~Provider();
  Provider(const Provider&) = delete;
  Provider& operator=(const Provider&) = delete;

  hops_get_api_fn get_api() const { return get_api_; }

 private:
  void* handle_ = nullptr;
  hops_get_api_fn get_api_ = nullptr;
};

}  // namespace hops::conformance
