// One op's part of the conformance suite, and the op families' lists of
// them. A family's suite lives in tests/conformance/<family>_*.cpp: its cases
// against the float64 reference, its typed call, its wrong calls and its
// threaded call. families.cpp lists the families, one line each.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "invocation.hpp"

namespace hops::conformance {

// A wrong call: it spoils exactly one thing of its op's valid base call and
// must get `status`, a last_error naming the op and one of `names` (empty:
// the op alone), and no byte written.
struct BadCall {
  std::string what;
  std::vector<std::string_view> names;
  std::function<void(Invocation&)> spoil;
  hops_status status = HOPS_ERR_INVALID_ARGUMENT;
};

using CallBuilder = Invocation (*)(const Context& ctx, const hops_op_desc& op, Random& random);

struct OpSuite {
  std::string_view op;
  void (*cases)(const Context& ctx, const hops_op_desc& op);  // against the reference
  TypedCall typed;  // the op's hops.h typedef, fed by argument name
  // Wrong calls: the valid call they start from, and the calls (null: none).
  CallBuilder bad_base = nullptr;
  std::vector<BadCall> (*bad_calls)(const Context& ctx) = nullptr;
  // Threads: a medium call and the outputs it writes (null: not in the checks).
  CallBuilder thread_call = nullptr;
  std::vector<std::string_view> thread_outputs = {};
};

// Every family's suites (families.cpp).
std::span<const OpSuite> all_suites();
// The suite of `op`, or null.
const OpSuite* suite_for(std::string_view op);

// ---- for the families' typed, wrong and threaded calls
// ---------------------------------------------

// An op's typed entry point as its hops.h typedef.
template <class Fn>
Fn typed(const hops_op_desc& op) {
  return reinterpret_cast<Fn>(op.fn);
}

// An f32 input of uniform values in [lo, hi).
inline Tensor random_input(const Context& ctx, Random& random, const Shape& shape, double lo,
                           double hi) {
  Array64 values = random.uniform(shape, lo, hi);
  return Tensor::input(ctx.device, DType::f32, values);
}

inline Tensor f32(Device& device, Shape shape) {
  return Tensor::empty(device, DType::f32, std::move(shape));
}

inline Tensor filled(Device& device, DType dtype, Random& random, const Shape& shape) {
  Array64 values = random.uniform(shape, -1, 1);
  return Tensor::input(device, dtype, values);
}

inline auto set(std::string_view name, const Tensor& t) {
  return [name, t](Invocation& call) { call.tensor(name, t); };
}

// Gives argument `name` the very tensor already given for `other`.
inline auto same_as(std::string_view name, std::string_view other) {
  return [name, other](Invocation& call) { call.tensor(name, call.tensor(other)); };
}

inline auto patch(std::string_view name, std::function<void(DLTensor&)> edit) {
  return [name, edit = std::move(edit)](Invocation& call) { call.patch(name, edit); };
}

}  // namespace hops::conformance
