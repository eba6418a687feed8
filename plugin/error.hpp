// The error model: internal code throws hops::Error; the ABI boundary turns it
// into a status code plus the thread-local last_error message.
#pragma once

#include <fmt/format.h>

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

template <class... Args>
[[noreturn]] void fail(hops_status status, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(status, fmt::format(format, std::forward<Args>(args)...));
}

void set_last_error(std::string message);
const char* last_error();
const char* status_name(hops_status status);

// Runs `body` and converts whatever it throws into a status; never throws.
template <class Body>
hops_status guarded(Body&& body) noexcept {
  try {
    body();
    return HOPS_OK;
  } catch (const Error& e) {
    set_last_error(e.what());
    return e.status();
  } catch (const std::bad_alloc&) {
    set_last_error("out of host memory");
    return HOPS_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    set_last_error(fmt::format("internal error: {}", e.what()));
    return HOPS_ERR_INTERNAL;
  } catch (...) {
    set_last_error("internal error: unknown exception");
    return HOPS_ERR_INTERNAL;
  }
}

}  // namespace hops
