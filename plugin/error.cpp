#include "error.hpp"

#include "checked_math.hpp"

namespace hops {

namespace {
thread_local std::string t_last_error;
}

void set_last_error(std::string message) { t_last_error = std::move(message); }

const char* last_error() { return t_last_error.c_str(); }

void fail_size(hops_status status, std::string_view what, std::string_view problem) {
  fail(status, "{}: {}", what, problem);
}

const char* status_name(hops_status status) {
  switch (status) {
    case HOPS_OK:
      return "HOPS_OK";
    case HOPS_ERR_INVALID_ARGUMENT:
      return "HOPS_ERR_INVALID_ARGUMENT";
    case HOPS_ERR_UNSUPPORTED:
      return "HOPS_ERR_UNSUPPORTED";
    case HOPS_ERR_OUT_OF_MEMORY:
      return "HOPS_ERR_OUT_OF_MEMORY";
    case HOPS_ERR_BACKEND:
      return "HOPS_ERR_BACKEND";
    case HOPS_ERR_NOT_FOUND:
      return "HOPS_ERR_NOT_FOUND";
    case HOPS_ERR_INTERNAL:
      return "HOPS_ERR_INTERNAL";
    default:
      return "HOPS_ERR_UNKNOWN";
  }
}

}  // namespace hops
