// libhops_mpi.so: the module's one exported symbol. It serves the CPU device
// type with the expert-parallel ops for HOPS_COMM_MPI communicators only; the
// CPU backend keeps every other call.
#include <mpi.h>

#include <string>

#include "backend.hpp"

namespace hops::mpi {

std::span<const Kernel> moe_ep_kernels();

namespace {

std::string describe_library() {
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int length = 0;
  MPI_Get_library_version(version, &length);  // callable before MPI_Init
  std::string text(version, static_cast<size_t>(length));
  if (const size_t end = text.find_first_of(",\n"); end != std::string::npos) text.resize(end);
  return fmt::format("{} (MPI {}.{}); moe_ep_dispatch / moe_ep_combine with HOPS_COMM_MPI", text,
                     MPI_VERSION, MPI_SUBVERSION);
}

}  // namespace

}  // namespace hops::mpi

extern "C" __attribute__((visibility("default"))) const hops::BackendModule* hops_backend_module() {
  static const std::string detail = hops::mpi::describe_library();
  static const hops::BackendModule module{sizeof(hops::BackendModule),
                                          hops::kModuleInterfaceVersion, hops::kModuleLayout, "mpi",
                                          kDLCPU, 1, detail.c_str(),
                                          // Tried before the CPU backend, which has no engine.
                                          10, hops::mpi::moe_ep_kernels().data(),
                                          hops::mpi::moe_ep_kernels().size(), &hops::last_error};
  return &module;
}
