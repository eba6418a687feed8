// What an op family's OpenCL host file (<family>*.cpp) needs to list its
// kernels; families.cpp joins the families' lists into the module's.
#pragma once

#include <span>

#include "backend.hpp"
#include "error.hpp"

namespace hops::opencl {

// Errors leave the module as "<op>: <message>", as the plugin's own do.
template <class Op, void (*fn)(const ExecContext&, const Op&)>
void named(const ExecContext& exec, const Op& op) {
  try {
    fn(exec, op);
  } catch (const Error& e) {
    throw Error(e.status(), fmt::format("{}: {}", Op::kName, e.what()));
  }
}

// fp16 is storage only (vload_half/vstore_half), so every device runs every dtype.
template <class Op, void (*fn)(const ExecContext&, const Op&)>
constexpr Kernel entry() {
  return kernel<Op, &named<Op, fn>>(HOPS_DTYPE_FLOATS);
}

// Every kernel of the module, family by family (families.cpp).
std::span<const Kernel> all_kernels();

}  // namespace hops::opencl
