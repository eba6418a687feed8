#include "descriptor_checks.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace hops::conformance {

namespace {

// Collects the problems of one checked item; reports one line.
struct Problems {
  std::vector<std::string> list;
  template <class... Args>
  void expect(bool ok, fmt::format_string<Args...> format, Args&&... args) {
    if (!ok) list.push_back(fmt::format(format, std::forward<Args>(args)...));
  }
  void report(Report& report, std::string_view name) const {
    report.check(list.empty(), name, fmt::format("{}", fmt::join(list, "; ")));
  }
};

bool non_empty(const char* s) { return s && *s; }

bool identifier(const char* s) {
  if (!non_empty(s)) return false;
  for (const char* c = s; *c; ++c) {
    if (!std::isalnum(static_cast<unsigned char>(*c)) && *c != '_') return false;
  }
  return true;
}

// A plausible struct_size: at least what ABI 1.0 defines, not absurdly large.
bool sane_size(size_t size, size_t minimum) { return size >= minimum && size <= 4096; }

void check_arg(Problems& p, const hops_arg_desc& arg, int32_t index) {
  const std::string where = fmt::format("arg {} ({})", index, arg.name ? arg.name : "NULL");
  p.expect(identifier(arg.name), "{}: name is not a non-empty identifier", where);
  p.expect(non_empty(arg.doc), "{}: empty doc", where);
  p.expect(arg.kind >= HOPS_ARG_TENSOR_IN && arg.kind <= HOPS_ARG_BOOL, "{}: kind {} unknown",
           where, arg.kind);
  if (arg.kind <= HOPS_ARG_TENSOR_INOUT) {
    constexpr uint32_t kKnown = HOPS_DTYPE_FLOATS | HOPS_DTYPE_F64 | HOPS_DTYPE_INDEX;
    p.expect(arg.dtypes != 0 && (arg.dtypes & ~kKnown) == 0, "{}: dtype mask {:#x} invalid", where,
             arg.dtypes);
    const size_t len = arg.shape ? std::strlen(arg.shape) : 0;
    p.expect(len >= 2 && arg.shape[0] == '[' && arg.shape[len - 1] == ']',
             "{}: shape string '{}' is not of the form [..]", where,
             arg.shape ? arg.shape : "NULL");
    p.expect(arg.optional == 0 || arg.optional == 1, "{}: optional = {}", where, arg.optional);
  } else {
    p.expect(arg.optional == 0, "{}: a scalar cannot be optional", where);
  }
  if (arg.kind == HOPS_ARG_BOOL) {
    p.expect(arg.default_i64 == 0 || arg.default_i64 == 1, "{}: bool default {}", where,
             arg.default_i64);
  }
  if (arg.kind == HOPS_ARG_F64) {
    p.expect(std::isfinite(arg.default_f64), "{}: default not finite", where);
  }
}

void check_op(const Context& ctx, const hops_op_desc& op) {
  Problems p;
  p.expect(sane_size(op.struct_size, sizeof(hops_op_desc)), "struct_size {}", op.struct_size);
  p.expect(identifier(op.name), "name is not a non-empty identifier");
  p.expect(non_empty(op.doc), "empty doc");
  p.expect(op.fn != nullptr, "fn is NULL");
  p.expect(op.since_major == HOPS_ABI_MAJOR && op.since_minor <= ctx.api.abi_minor,
           "since {}.{} is not within ABI {}.x up to minor {}", op.since_major, op.since_minor,
           HOPS_ABI_MAJOR, ctx.api.abi_minor);
  p.expect(op.num_args > 0 && op.num_args <= 64 && op.args, "num_args {} / args {}", op.num_args,
           static_cast<const void*>(op.args));
  if (op.num_args > 0 && op.args) {
    p.expect(sane_size(op.args->struct_size, offsetof(hops_arg_desc, since_minor)),
             "arg struct_size {}", op.args->struct_size);
    std::set<std::string> names;
    bool writes = false;
    for (int32_t i = 0; i < op.num_args; ++i) {
      const hops_arg_desc& arg = *hops_op_arg(&op, i);
      p.expect(arg.struct_size == op.args->struct_size, "arg {}: struct_size differs", i);
      check_arg(p, arg, i);
      if (arg.name) p.expect(names.insert(arg.name).second, "arg name '{}' repeated", arg.name);
      writes |= arg.kind == HOPS_ARG_TENSOR_OUT || arg.kind == HOPS_ARG_TENSOR_INOUT;
    }
    p.expect(writes, "the op has no output or inout tensor");
    // 1.1: arguments added after the op's first version come last, in version
    // order, each one a caller may leave out (optional tensor or scalar).
    if (HOPS_HAS_FIELD(op.args, hops_arg_desc, since_minor)) {
      uint32_t since = op.since_minor;
      for (int32_t i = 0; i < op.num_args; ++i) {
        const hops_arg_desc& arg = *hops_op_arg(&op, i);
        p.expect(arg.since_minor >= since && arg.since_minor <= ctx.api.abi_minor,
                 "arg {}: since_minor {} (the op's {}, the previous argument's {}, the ABI's {})",
                 i, arg.since_minor, op.since_minor, since, ctx.api.abi_minor);
        if (arg.since_minor > op.since_minor) {
          p.expect(arg.kind > HOPS_ARG_TENSOR_INOUT || arg.optional,
                   "arg {}: added in 1.{} but a required tensor", i, arg.since_minor);
        }
        since = std::max(since, arg.since_minor);
      }
    }
  }
  p.report(ctx.report, fmt::format("descriptor {}", op.name ? op.name : "?"));
}

// supports() answers only for dtypes an input accepts, never for a
// vector dtype, and the same way twice.
void check_supports(const Context& ctx, const hops_op_desc& op) {
  Problems p;
  uint32_t inputs = 0;
  for (int32_t i = 0; i < op.num_args; ++i) {
    const hops_arg_desc& arg = *hops_op_arg(&op, i);
    if (arg.kind == HOPS_ARG_TENSOR_IN) inputs |= arg.dtypes;
  }
  constexpr std::pair<DType, uint32_t> kBits[] = {
      {DType::f32, HOPS_DTYPE_F32}, {DType::f16, HOPS_DTYPE_F16}, {DType::bf16, HOPS_DTYPE_BF16}};
  const DLDevice device = ctx.device.dl_device();
  for (const auto& [dtype, bit] : kBits) {
    const int32_t answer = ctx.api.supports(op.name, device, to_dl(dtype));
    p.expect(answer == 0 || answer == 1, "supports({}) = {}", name_of(dtype), answer);
    p.expect(answer == ctx.api.supports(op.name, device, to_dl(dtype)),
             "supports({}) changes between calls", name_of(dtype));
    p.expect(!answer || (inputs & bit), "supports({}) = 1 but no input accepts {}", name_of(dtype),
             name_of(dtype));
  }
  p.expect(ctx.api.supports(op.name, device, DLDataType{kDLFloat, 32, 2}) == 0,
           "supports(float32x2) = 1");
  p.report(ctx.report, fmt::format("supports {}", op.name));
}

}  // namespace

const hops_api* check_entry_point(Report& report, hops_get_api_fn get_api) {
  report.check(get_api(999) == nullptr, "entry point: hops_get_api(999) is NULL",
               "an unknown major gave a table");
  report.check(get_api(0) == nullptr, "entry point: hops_get_api(0) is NULL",
               "major 0 gave a table");
  const hops_api* api = get_api(HOPS_ABI_MAJOR);
  if (!api) {
    report.fail("entry point: hops_get_api(1)", "NULL");
    return nullptr;
  }
  Problems p;
  // A provider of any minor of this major: 1.0's table at least, and the
  // entries of each later minor it claims.
  constexpr size_t kApi10 = offsetof(hops_api, supports_call);
  p.expect(sane_size(api->struct_size, kApi10), "struct_size {} < {}", api->struct_size, kApi10);
  if (api->abi_minor >= 1) {
    p.expect(HOPS_HAS_FIELD(api, hops_api, supports_call) && api->supports_call,
             "abi_minor {} but no supports_call (1.1)", api->abi_minor);
  }
  p.expect(api->abi_major == HOPS_ABI_MAJOR, "abi_major {}", api->abi_major);
  p.expect(non_empty(api->version), "empty version string");
  p.expect(api->last_error && api->status_name && api->op_count && api->op_at && api->find_op &&
               api->supports && api->call && api->backend_count && api->backend_at &&
               api->set_allocator,
           "a function pointer is NULL");
  p.expect(get_api(HOPS_ABI_MAJOR) == api, "a second hops_get_api(1) gives another table");
  p.report(report, "entry point: hops_get_api(1) table");
  if (!p.list.empty()) return nullptr;

  Problems names;
  for (hops_status s = HOPS_OK; s <= HOPS_ERR_INTERNAL; ++s) {
    names.expect(non_empty(api->status_name(s)), "status_name({}) empty", s);
  }
  names.report(report, "api: status_name");
  // last_error is thread-local: a fresh thread that failed nothing sees "".
  const char* fresh = nullptr;
  std::thread([&] { fresh = api->last_error(); }).join();
  report.check(fresh && !*fresh, "api: last_error on a fresh thread is \"\"",
               fresh ? fmt::format("got \"{}\"", fresh) : "NULL");
  return api;
}

void check_descriptors(const Context& ctx) {
  const hops_api& api = ctx.api;
  const int32_t count = api.op_count();
  Problems table;
  table.expect(count > 0, "op_count {}", count);
  table.expect(api.op_at(-1) == nullptr, "op_at(-1) is not NULL");
  table.expect(api.op_at(count) == nullptr, "op_at(op_count) is not NULL");
  table.expect(api.find_op("nope") == nullptr, "find_op(\"nope\") is not NULL");
  table.expect(api.find_op("") == nullptr, "find_op(\"\") is not NULL");
  std::set<std::string> names;
  for (int32_t i = 0; i < count; ++i) {
    const hops_op_desc* op = api.op_at(i);
    table.expect(op != nullptr, "op_at({}) is NULL", i);
    if (!op || !op->name) continue;
    table.expect(names.insert(op->name).second, "op name '{}' repeated", op->name);
    table.expect(api.find_op(op->name) == op, "find_op(\"{}\") != op_at({})", op->name, i);
  }
  table.report(ctx.report, "op table: op_count, op_at, find_op");
  for (int32_t i = 0; i < count; ++i) {
    if (const hops_op_desc* op = api.op_at(i); op && op->name) {
      check_op(ctx, *op);
      check_supports(ctx, *op);
    }
  }
  ctx.report.check(api.supports("nope", ctx.device.dl_device(), to_dl(DType::f32)) == 0,
                   "supports: unknown op gives 0", "supports(\"nope\") = 1");
}

void check_backends(const Context& ctx, std::string_view backend) {
  const hops_api& api = ctx.api;
  const int32_t count = api.backend_count();
  Problems p;
  p.expect(count > 0, "backend_count {}", count);
  p.expect(api.backend_at(-1) == nullptr, "backend_at(-1) is not NULL");
  p.expect(api.backend_at(count) == nullptr, "backend_at(backend_count) is not NULL");
  std::set<std::string> names;
  const hops_backend_info* selected = nullptr;
  for (int32_t i = 0; i < count; ++i) {
    const hops_backend_info* info = api.backend_at(i);
    p.expect(info != nullptr, "backend_at({}) is NULL", i);
    if (!info) continue;
    p.expect(sane_size(info->struct_size, sizeof(hops_backend_info)), "backend {}: struct_size {}",
             i, info->struct_size);
    p.expect(identifier(info->name), "backend {}: name is not an identifier", i);
    p.expect(info->detail != nullptr, "backend {}: detail is NULL", i);
    p.expect(info->available == 0 || info->available == 1, "backend {}: available = {}", i,
             info->available);
    if (!info->name) continue;
    p.expect(names.insert(info->name).second, "backend name '{}' repeated", info->name);
    fmt::print("     backend {}: {} ({})\n", info->name,
               info->available ? "available" : "unavailable", info->detail ? info->detail : "");
    if (backend == info->name && info->available) selected = info;
  }
  p.report(ctx.report, "backends: backend_count, backend_at");
  ctx.report.check(selected && selected->device_type == ctx.device.dl_device().device_type,
                   fmt::format("backends: '{}' is listed, available, for device type {}", backend,
                               static_cast<int>(ctx.device.dl_device().device_type)),
                   "not listed, not available, or for another device type");
}

}  // namespace hops::conformance
