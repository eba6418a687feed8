#include "harness.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace hops::conformance {

std::string status_text(const hops_api& api, hops_status status) {
  const char* name = api.status_name(status);
  return name ? name : fmt::format("status {}", status);
}

std::string index_arg(std::string_view name, DType dtype, const std::vector<int64_t>& values) {
  return fmt::format(" {}({})=[{}]", name, name_of(dtype), fmt::join(values, ","));
}

void run_case(const Context& ctx, std::string_view name,
              const std::function<void(Random& random, Verdict& verdict)>& body) {
  const uint64_t seed = case_seed(ctx.seed, name);
  Random random(seed);
  Verdict verdict;
  try {
    body(random, verdict);
  } catch (const CaseRefused& e) {
    ctx.report.skip(name, e.what());
    return;
  } catch (const std::exception& e) {
    verdict.expect(false, e.what());
  }
  const std::string detail = fmt::format("seed={} {}", seed, verdict.detail());
  if (verdict.ok()) {
    ctx.report.pass(name, detail);
  } else {
    ctx.report.fail(name, detail);
  }
}

const hops_op_desc* find_or_skip(const Context& ctx, std::string_view op) {
  const hops_op_desc* desc = ctx.api.find_op(std::string(op).c_str());
  if (!desc) ctx.report.skip(op, "the provider does not list this op");
  return desc;
}

bool supported_or_skip(const Context& ctx, std::string_view op, DType dtype) {
  if (ctx.api.supports(std::string(op).c_str(), ctx.device.dl_device(), to_dl(dtype))) return true;
  ctx.report.skip(fmt::format("{} {}", op, name_of(dtype)),
                  "supports() says the provider does not run it on this device");
  return false;
}

}  // namespace hops::conformance
