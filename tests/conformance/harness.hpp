// What every case needs: the provider, the device, the report, the seed; and
// run_case(), which gives a case its own seeded Random and prints its line.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "device.hpp"
#include "random.hpp"
#include "report.hpp"
#include "verdict.hpp"

namespace hops::conformance {

struct Context {
  const hops_api& api;
  Device& device;
  Report& report;
  uint64_t seed = 0;
  bool quick = false;
  // Host memory. Index tensors whose values must be validated live here: a
  // device-resident one is not read by the plugin, only clamped by its
  // kernels (docs/DECISIONS.md).
  Device* host = nullptr;
  bool host_indices = false;  // --host-indices: the cases' index tensors in host memory

  // Where the cases put cu_seqlens and state_indices.
  Device& index_device() const { return host_indices ? *host : device; }
};

// A failure that is not a comparison (bad status, wrong bytes, bad descriptor).
struct CaseFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A valid call that the device's backends may refuse (HOPS_ERR_UNSUPPORTED:
// an option a backend's kernels do not implement yet) was refused: the case
// is reported as SKIP with the provider's reason, not as a FAIL.
struct CaseRefused : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The provider's name of a status, or its number when it has none.
std::string status_text(const hops_api& api, hops_status status);

// " name(i32)=[0,1,5]": an index argument in a case name.
std::string index_arg(std::string_view name, DType dtype, const std::vector<int64_t>& values);

// Runs `body` with a Random seeded from the run's seed and `name`, then prints
// "PASS|FAIL <name> seed=<s> rel_err=..." (any exception is a FAIL).
void run_case(const Context& ctx, std::string_view name,
              const std::function<void(Random& random, Verdict& verdict)>& body);

// The descriptor of `op`, or null after printing a SKIP line (provider lacks it).
const hops_op_desc* find_or_skip(const Context& ctx, std::string_view op);

// Whether the provider runs `op` on the context's device for `dtype`; prints a
// SKIP line when not.
bool supported_or_skip(const Context& ctx, std::string_view op, DType dtype);

// Runs run_one(ctx, op, dtype, case, typed_too) for every float dtype the
// provider claims: every case in f32, those marked `half` in f16 and bf16,
// none marked `heavy` under --quick. The first case of each dtype also goes
// through the typed entry point.
template <class Case, class RunOne>
void sweep(const Context& ctx, const hops_op_desc& op, const std::vector<Case>& cases,
           RunOne run_one) {
  for (DType dtype : kFloatTypes) {
    if (!supported_or_skip(ctx, op.name, dtype)) continue;
    bool first = true;
    for (const Case& c : cases) {
      if ((dtype != DType::f32 && !c.half) || (ctx.quick && c.heavy)) continue;
      run_one(ctx, op, dtype, c, first);
      first = false;
    }
  }
}

}  // namespace hops::conformance
