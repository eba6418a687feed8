// hops-conformance: checks any provider .so against the hops ABI contract.
//
//   hops-conformance --provider PATH [--backend NAME] [--op NAME] [--quick] [--seed N]
//                    [--host-indices]
//
// Prints one line per case (PASS / FAIL / SKIP) and "N passed, M failed";
// exits non-zero on any failure.
#include <fmt/format.h>

#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <string_view>

#include "cases.hpp"
#include "descriptor_checks.hpp"
#include "provider.hpp"
#include "suite.hpp"

namespace hops::conformance {

namespace {

struct Options {
  std::string provider;
  std::string backend = "cpu";
  std::string op;  // empty: all
  bool quick = false;
  bool host_indices = false;  // index tensors in host memory, not on the backend's device
  uint64_t seed = 20250601;
};

constexpr const char* kUsage =
    "usage: hops-conformance --provider PATH [--backend NAME] [--op NAME] [--quick] [--seed N]\n"
    "                        [--host-indices]\n";

std::optional<Options> parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--provider" && has_value) {
      options.provider = argv[++i];
    } else if (arg == "--backend" && has_value) {
      options.backend = argv[++i];
    } else if (arg == "--op" && has_value) {
      options.op = argv[++i];
    } else if (arg == "--seed" && has_value) {
      options.seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--quick") {
      options.quick = true;
    } else if (arg == "--host-indices") {
      options.host_indices = true;
    } else {
      return std::nullopt;
    }
  }
  if (options.provider.empty()) return std::nullopt;
  return options;
}

// Every op the provider lists runs its cases; one the runner has no cases for
// fails, so that a new op cannot go untested. Ops the runner knows but the
// provider lacks are skipped.
void op_cases(const Context& ctx, const OpFilter& selected) {
  for (int32_t i = 0; i < ctx.api.op_count(); ++i) {
    const hops_op_desc* op = ctx.api.op_at(i);
    if (!op || !op->name || !selected(op->name)) continue;
    if (const OpSuite* suite = suite_for(op->name)) {
      suite->cases(ctx, *op);
    } else {
      ctx.report.fail(op->name, "the provider lists this op but the runner has no cases for it");
    }
  }
  for (const OpSuite& s : all_suites()) {
    if (selected(s.op)) find_or_skip(ctx, s.op);  // prints the SKIP line when absent
  }
}

int run(const Options& options) {
  fmt::print("hops-conformance: provider {}, backend {}, seed {}{}{}\n", options.provider,
             options.backend, options.seed, options.quick ? ", quick" : "",
             options.host_indices ? ", index tensors in host memory" : "");
  Report report;
  const Provider provider(options.provider);
  report.section("entry point and descriptors");
  const hops_api* api = check_entry_point(report, provider.get_api());
  const std::unique_ptr<Device> device = make_device(options.backend);
  const std::unique_ptr<Device> host = make_device("cpu");
  if (!device) {
    report.fail(fmt::format("backend {}", options.backend),
                "the runner has no device memory implementation for this backend");
  }
  if (api && device) {
    const Context ctx{
        *api, *device, report, options.seed, options.quick, host.get(), options.host_indices};
    check_descriptors(ctx);
    check_backends(ctx, options.backend);
    const OpFilter selected = [&](std::string_view op) {
      return options.op.empty() || op == options.op;
    };
    report.section("ops against the float64 reference");
    op_cases(ctx, selected);
    report.section("bad inputs");
    bad_input_cases(ctx, selected);
    report.section("threads");
    thread_cases(ctx, selected);
  }
  report.summary();
  return report.failed() == 0 ? 0 : 1;
}

}  // namespace

}  // namespace hops::conformance

int main(int argc, char** argv) {
  const auto options = hops::conformance::parse(argc, argv);
  if (!options) {
    fmt::print(stderr, "{}", hops::conformance::kUsage);
    return 2;
  }
  try {
    return hops::conformance::run(*options);
  } catch (const std::exception& e) {
    fmt::print(stderr, "hops-conformance: {}\n", e.what());
    return 2;
  }
}
