// A backend module for the loader test: it loads, but its device runtime is
// "missing", as a CUDA module is on a machine without a driver.
#include "backend.hpp"

namespace {
const char* no_error() { return ""; }
const hops::BackendModuleV1 kModule{sizeof(hops::BackendModuleV1),
                                    "testdev",
                                    kDLExtDev,
                                    0,
                                    "no test device on this machine",
                                    5,
                                    nullptr,
                                    0,
                                    &no_error};
}  // namespace

extern "C" __attribute__((visibility("default"))) const hops::BackendModuleV1*
hops_backend_init_v1() {
  return &kModule;
}
