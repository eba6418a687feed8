// Wrong calls. Each starts from a valid call of its op (checked to pass
// first), spoils exactly one thing, and must get the right status, a
// last_error naming the op and the offending argument, and no byte written.
// The calls of each op are in its family's suite (<family>_calls.cpp); here
// are the runner and the calls that need no op.
#include <fmt/format.h>

#include <cmath>
#include <cstddef>
#include <cstring>

#include "cases.hpp"
#include "suite.hpp"

namespace hops::conformance {

namespace {

// Calls that need no valid base: lookups and the generic entry's own arguments.
void table_bad_calls(const Context& ctx) {
  const hops_api& api = ctx.api;
  ctx.report.check(api.find_op("nope") == nullptr, "bad input: find_op(\"nope\") is NULL",
                   "got a descriptor");
  const hops_status s = api.call(nullptr, nullptr, nullptr, 0);
  const std::string message = api.last_error();
  ctx.report.check(s == HOPS_ERR_NOT_FOUND && !message.empty(),
                   "bad input: api->call with a NULL descriptor -> NOT_FOUND",
                   fmt::format("{}, last_error \"{}\"", status_text(api, s), message));
  if (const hops_op_desc* op = api.op_at(0)) {
    const hops_status t = api.call(op, nullptr, nullptr, op->num_args);
    const std::string text = api.last_error();
    ctx.report.check(
        t == HOPS_ERR_INVALID_ARGUMENT && text.find(op->name) != std::string::npos,
        fmt::format("bad input: api->call({}) with args = NULL -> INVALID_ARGUMENT", op->name),
        fmt::format("{}, last_error \"{}\"", status_text(api, t), text));
  }
}

// The wrong calls of one op, each from a fresh copy of its valid base call.
void op_bad_calls(const Context& ctx, std::string_view name, CallBuilder build_base,
                  std::vector<BadCall> (*calls)(const Context&)) {
  const hops_op_desc* op = find_or_skip(ctx, name);
  if (!op || !supported_or_skip(ctx, name, DType::f32)) return;
  // Bases are fixed: the wrong calls are about arguments, not values.
  Random random(ctx.seed);
  Invocation base = build_base(ctx, *op, random);
  try {
    base.run();
  } catch (const std::exception& e) {
    ctx.report.fail(fmt::format("bad input: {} valid base call", name), e.what());
    return;
  }
  for (const BadCall& bad : calls(ctx)) {
    const std::string case_name = fmt::format("bad input: {}: {}", name, bad.what);
    try {
      Invocation call = base;
      bad.spoil(call);
      const std::string message = call.expect_rejected(bad.status, bad.names);
      ctx.report.pass(case_name,
                      fmt::format("-> {} \"{}\"", status_text(ctx.api, bad.status), message));
    } catch (const std::exception& e) {
      ctx.report.fail(case_name, e.what());
    }
  }
}

}  // namespace

void bad_input_cases(const Context& ctx, const OpFilter& selected) {
  table_bad_calls(ctx);
  for (const OpSuite& suite : all_suites()) {
    if (suite.bad_base && selected(suite.op))
      op_bad_calls(ctx, suite.op, suite.bad_base, suite.bad_calls);
  }
}

}  // namespace hops::conformance
