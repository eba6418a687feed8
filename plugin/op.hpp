// How an op is defined: its descriptor (arguments, dtypes, docs), the checks
// that turn a raw call into a validated argument struct, and the typed entry
// point generated from its C signature. See plugin/ops/*.hpp for the ops.
#pragma once

#include <array>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string_view>
#include <type_traits>

#include "error.hpp"
#include "tensor.hpp"

namespace hops {

inline constexpr int kMaxArgs = 24;

// ---- descriptor builders -------------------------------------------------

constexpr hops_arg_desc tensor_arg(hops_arg_kind kind, bool optional, const char* name,
                                   uint32_t dtypes, const char* shape, const char* doc) {
  return {sizeof(hops_arg_desc), name, kind, optional ? 1 : 0, dtypes, 0, 0.0, shape, doc};
}
constexpr hops_arg_desc input(const char* name, uint32_t dtypes, const char* shape,
                              const char* doc) {
  return tensor_arg(HOPS_ARG_TENSOR_IN, false, name, dtypes, shape, doc);
}
constexpr hops_arg_desc optional_input(const char* name, uint32_t dtypes, const char* shape,
                                       const char* doc) {
  return tensor_arg(HOPS_ARG_TENSOR_IN, true, name, dtypes, shape, doc);
}
constexpr hops_arg_desc output(const char* name, uint32_t dtypes, const char* shape,
                               const char* doc) {
  return tensor_arg(HOPS_ARG_TENSOR_OUT, false, name, dtypes, shape, doc);
}
constexpr hops_arg_desc optional_output(const char* name, uint32_t dtypes, const char* shape,
                                        const char* doc) {
  return tensor_arg(HOPS_ARG_TENSOR_OUT, true, name, dtypes, shape, doc);
}
constexpr hops_arg_desc in_out(const char* name, uint32_t dtypes, const char* shape,
                               const char* doc) {
  return tensor_arg(HOPS_ARG_TENSOR_INOUT, false, name, dtypes, shape, doc);
}
constexpr hops_arg_desc f64_scalar(const char* name, double fallback, const char* doc) {
  return {sizeof(hops_arg_desc), name, HOPS_ARG_F64, 0, 0, 0, fallback, nullptr, doc};
}
constexpr hops_arg_desc i64_scalar(const char* name, int64_t fallback, const char* doc) {
  return {sizeof(hops_arg_desc), name, HOPS_ARG_I64, 0, 0, fallback, 0.0, nullptr, doc};
}
constexpr hops_arg_desc bool_scalar(const char* name, bool fallback, const char* doc) {
  return {sizeof(hops_arg_desc), name, HOPS_ARG_BOOL, 0, 0, fallback ? 1 : 0, 0.0, nullptr, doc};
}

constexpr bool is_tensor(const hops_arg_desc& arg) { return arg.kind <= HOPS_ARG_TENSOR_INOUT; }
constexpr bool is_written(const hops_arg_desc& arg) {
  return arg.kind == HOPS_ARG_TENSOR_OUT || arg.kind == HOPS_ARG_TENSOR_INOUT;
}

// ---- a call under validation -----------------------------------------------

// Construction runs every check the descriptor implies (presence, dtype,
// device, rank limits, strides, alignment, outputs overlapping anything);
// the op's own check() adds the shape relations.
class Call {
 public:
  Call(const hops_op_desc& op, const hops_exec& exec, std::span<const hops_value> values);

  const char* op_name() const { return op_.name; }
  const hops_exec& exec() const { return exec_; }
  const char* arg_name(int arg) const { return op_.args[arg].name; }
  const Tensor& tensor(int arg) const { return tensors_[arg]; }
  double f64(int arg) const { return values_[arg].f64; }
  int64_t i64(int arg) const { return values_[arg].i64; }
  bool flag(int arg) const { return flags_[arg] != 0; }

  // Throws HOPS_ERR_INVALID_ARGUMENT: "<op>: argument '<name>': <message>".
  template <class... Args>
  [[noreturn]] void fail(int arg, fmt::format_string<Args...> format, Args&&... args) const {
    hops::fail(HOPS_ERR_INVALID_ARGUMENT, "{}: argument '{}': {}", op_name(), arg_name(arg),
               fmt::format(format, std::forward<Args>(args)...));
  }
  void require(bool condition, int arg, std::string_view message) const {
    if (!condition) fail(arg, "{}", message);
  }
  // `arg` (when present) has the dtype of `reference`.
  void same_dtype(int arg, int reference) const;
  // Whether any output or in-out tensor has an element: a call that writes
  // none has no effect to produce.
  bool writes_elements() const;

 private:
  void check_tensor(int arg);
  void check_overlaps() const;

  const hops_op_desc& op_;
  hops_exec exec_;
  std::span<const hops_value> values_;
  std::array<Tensor, kMaxArgs> tensors_{};
  std::array<uint8_t, kMaxArgs> flags_{};  // bool arguments, read as bytes and checked
};

// Binds symbolic dims ("B", "T", "H", ...) across arguments and reports the
// first disagreement with both sources named.
class Shapes {
 public:
  explicit Shapes(const Call& call) : call_(call) {}
  // Tensor `arg` must have exactly these dims (skipped when absent).
  void expect(int arg, std::initializer_list<std::string_view> dims);
  void bind(std::string_view name, int64_t value, int source_arg);
  int64_t operator[](std::string_view name) const;

 private:
  void bind_dim(std::string_view name, int64_t value, int arg, int dim);

  struct Symbol {
    std::string_view name;
    int64_t value;
    int source_arg;
  };
  const Call& call_;
  std::array<Symbol, 16> symbols_{};
  int count_ = 0;
};

// The sequences of a call: N = B dense rows of T tokens, or with cu_seqlens
// (B = 1) the spans [cu[n], cu[n+1]) of row 0. operator[] reads host memory:
// device kernels given device-resident cu_seqlens read them on the device.
struct Sequences {
  struct Span {
    int64_t row, begin, end;
  };
  Tensor cu_seqlens;  // absent for dense calls
  int64_t count = 0;
  int64_t tokens = 0;
  Span operator[](int64_t n) const {
    if (!cu_seqlens) return {n, 0, tokens};
    return {0, read_index(cu_seqlens, n), read_index(cu_seqlens, n + 1)};
  }
};
Sequences check_sequences(const Call& call, int cu_seqlens_arg, int64_t batch, int64_t tokens);

// Sequence n -> state slot: state_indices[n] (-1: skip), or n when absent.
struct Slots {
  Tensor indices;
  int64_t operator()(int64_t n) const { return indices ? read_index(indices, n) : n; }
};
Slots check_slots(const Call& call, int indices_arg, int64_t sequences, int64_t pool_size);

// ---- op definitions ----------------------------------------------------------

struct ExecContext;
struct Backend;

// What the registry holds for every op.
struct OpDef {
  hops_op_desc desc;
  int primary_arg;  // its dtype picks the kernel and answers supports()
  // Validates into the op's argument struct, then runs the backend's kernel on it.
  void (*check_and_run)(const Call& call, const Backend& backend, const ExecContext& context);
};

// Runs the backend's kernel for `op` and the dtype of its primary argument;
// HOPS_ERR_UNSUPPORTED when the backend has none.
void run_kernel(const OpDef& op, const Call& call, const Backend& backend,
                const ExecContext& context, const void* args);

hops_status dispatch(const OpDef& op, const hops_exec* exec, std::span<const hops_value> values);

template <class Op>
const OpDef& op_def();

namespace detail {

template <class T>
hops_value to_value(T value) {
  hops_value v{};
  if constexpr (std::is_same_v<T, const DLTensor*>) {
    v.tensor = value;
  } else if constexpr (std::is_same_v<T, int64_t>) {
    v.i64 = value;
  } else if constexpr (std::is_same_v<T, double>) {
    v.f64 = value;
  } else {
    static_assert(std::is_same_v<T, bool>, "unsupported argument type in an op signature");
    // The parameter's byte, copied as is: a C caller may have passed any byte
    // in it, and Call rejects one that is neither 0 nor 1 (loading it as a
    // bool would be undefined behaviour).
    std::memcpy(&v.boolean, &value, sizeof(bool));
  }
  return v;
}

template <class T>
constexpr bool matches(const hops_arg_desc& arg) {
  if constexpr (std::is_same_v<T, const DLTensor*>) {
    return is_tensor(arg);
  } else if constexpr (std::is_same_v<T, int64_t>) {
    return arg.kind == HOPS_ARG_I64;
  } else if constexpr (std::is_same_v<T, double>) {
    return arg.kind == HOPS_ARG_F64;
  } else {
    return arg.kind == HOPS_ARG_BOOL;
  }
}

template <class Signature>
struct TypedEntry;

// The C entry point of an op: packs its parameters in descriptor order.
template <class... Params>
struct TypedEntry<hops_status (*)(const hops_exec*, Params...)> {
  template <class Op>
  static constexpr bool signature_matches() {
    if (sizeof...(Params) != std::size(Op::kArgs)) return false;
    int i = 0;
    return (matches<Params>(Op::kArgs[i++]) && ...);
  }
  template <class Op>
  static hops_status call(const hops_exec* exec, Params... params) {
    const hops_value values[] = {to_value<Params>(params)...};
    return dispatch(op_def<Op>(), exec, values);
  }
};

}  // namespace detail

// One definition per op type: descriptor from Op's constants, typed entry
// from Op::Signature, validation from Op::check.
template <class Op>
const OpDef& op_def() {
  using Entry = detail::TypedEntry<typename Op::Signature>;
  static_assert(Entry::template signature_matches<Op>(),
                "the C signature of the op does not match its argument descriptors");
  static_assert(std::size(Op::kArgs) <= kMaxArgs);
  static const OpDef def{{sizeof(hops_op_desc), Op::kName, Op::kSinceMajor, Op::kSinceMinor,
                          Op::kDoc, static_cast<int32_t>(std::size(Op::kArgs)), Op::kArgs,
                          reinterpret_cast<hops_fn>(&Entry::template call<Op>)},
                         Op::kPrimaryArg,
                         [](const Call& call, const Backend& backend, const ExecContext& context) {
                           const Op args = Op::check(call);
                           run_kernel(op_def<Op>(), call, backend, context, &args);
                         }};
  return def;
}

}  // namespace hops
