// How an op is defined: its descriptor (arguments, dtypes, docs), the checks
// that turn a raw call into a validated argument struct, and the typed entry
// point generated from its C signature. See plugin/ops/*.hpp for the ops.
#pragma once

#include <array>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "backend.hpp"
#include "error.hpp"
#include "tensor.hpp"

namespace hops {

inline constexpr int kMaxArgs = 24;

// ---- descriptor builders -------------------------------------------------

// since_minor is left 0 by the builders: op_def() gives such arguments the
// op's own since_minor. added_in() marks an argument appended later.
constexpr hops_arg_desc tensor_arg(hops_arg_kind kind, bool optional, const char* name,
                                   uint32_t dtypes, const char* shape, const char* doc) {
  return {sizeof(hops_arg_desc), name, kind, optional ? 1 : 0, dtypes, 0, 0.0, shape, doc, 0};
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
  return {sizeof(hops_arg_desc), name, HOPS_ARG_F64, 0, 0, 0, fallback, nullptr, doc, 0};
}
constexpr hops_arg_desc i64_scalar(const char* name, int64_t fallback, const char* doc) {
  return {sizeof(hops_arg_desc), name, HOPS_ARG_I64, 0, 0, fallback, 0.0, nullptr, doc, 0};
}
constexpr hops_arg_desc bool_scalar(const char* name, bool fallback, const char* doc) {
  return {sizeof(hops_arg_desc), name, HOPS_ARG_BOOL, 0, 0, fallback ? 1 : 0, 0.0, nullptr, doc, 0};
}
// An argument appended to its op in ABI minor `minor` (after the op's first
// version): it must be trailing, and optional or a scalar, so that callers of
// the older arity get its default (docs/ABI.md, section 5).
constexpr hops_arg_desc added_in(uint32_t minor, hops_arg_desc arg) {
  arg.since_minor = minor;
  return arg;
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
struct OpDef;

// Where a validated call goes: the backends of its device type, best score
// first. The first whose kernel accepts the call runs it; a kernel that has
// no kernel for the dtype, or refuses (HOPS_ERR_UNSUPPORTED from its accepts
// check or from the kernel itself), passes the call to the next. Without a
// context (supports_call) nothing runs: the call is only asked about.
class Dispatch {
 public:
  Dispatch(std::span<const Backend* const> candidates, const ExecContext* context)
      : candidates_(candidates), context_(context) {}
  // HOPS_ERR_UNSUPPORTED naming every backend's reason when none takes it.
  void operator()(const OpDef& op, const Call& call, const void* args) const;
  // A collective op whose arguments failed validation on this rank: its
  // kernel (the first whose accepts check takes `args`) tells the other
  // ranks, so that they fail too instead of waiting; errors are dropped (the
  // caller reports the validation error).
  void abstain(const OpDef& op, const void* args) const;
  // Whether a kernel ran (a collective op's ranks then met in it).
  bool ran() const { return ran_; }

 private:
  std::span<const Backend* const> candidates_;
  const ExecContext* context_;
  mutable bool ran_ = false;
};

// What the registry holds for every op.
struct OpDef {
  hops_op_desc desc;
  int primary_arg;  // its dtype picks the kernel and answers supports()
  uint64_t layout;  // op_layout<Op>(): a module's kernels must have been built with it
  // Validates into the op's argument struct and hands it to `dispatch`.
  void (*check_and_dispatch)(const Call& call, const Dispatch& dispatch);
  // Collective ops (Op::kCollective: they communicate over exec.comm) run on
  // every rank even when they write nothing here, and a rank that rejects
  // its arguments abstains, so that the others fail rather than wait.
  bool collective = false;
  void (*abstain)(const hops_exec& exec, const Dispatch& dispatch) = nullptr;
};

// An op of a family and its index in the ABI's op list (op_at): indices are
// part of the ABI, append-only, and each family's list names its ops' own
// (plugin/ops/<family>.cpp).
struct OpEntry {
  int32_t index;
  const OpDef* def;
};
// The ops of every family in ABI index order; aborts when the indices are
// not exactly 0..n-1 (two families claiming one index).
std::vector<const OpDef*> abi_order(std::initializer_list<std::span<const OpEntry>> families);

// Validates a call (up to the op's own checks) and runs it, or with
// run == false only asks the backends whether they take it (supports_call).
// `values` may stop short of the descriptor's arguments: the missing trailing
// ones get their defaults (NULL tensors, the descriptor's scalars).
hops_status dispatch(const OpDef& op, const hops_exec* exec, std::span<const hops_value> values,
                     bool run = true);
// The same with an explicit list of backends (tests).
hops_status dispatch_to(const OpDef& op, const hops_exec* exec, std::span<const hops_value> values,
                        std::span<const Backend* const> candidates, bool run);

template <class Op>
const OpDef& op_def();

// How many leading arguments the op had in its first version: the arity of
// its typed entry point (later ones are reachable through api->call).
template <class Op>
constexpr int32_t first_arity() {
  int32_t n = 0;
  while (n < static_cast<int32_t>(std::size(Op::kArgs)) &&
         Op::kArgs[n].since_minor <= Op::kSinceMinor) {
    ++n;
  }
  return n;
}

// Appended arguments come last, each no older than the one before, and can be
// left out by old callers: optional tensors or scalars.
template <class Op>
constexpr bool appended_args_valid() {
  uint32_t since = Op::kSinceMinor + 1;
  for (int32_t i = first_arity<Op>(); i < static_cast<int32_t>(std::size(Op::kArgs)); ++i) {
    const hops_arg_desc& arg = Op::kArgs[i];
    if (arg.since_minor < since || (is_tensor(arg) && !arg.optional)) return false;
    since = arg.since_minor;
  }
  return true;
}

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
    if (static_cast<int32_t>(sizeof...(Params)) != first_arity<Op>()) return false;
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

// The descriptors of Op's arguments with since_minor filled in: the op's
// own for the arguments it had from the start.
template <class Op>
constexpr auto resolved_args() {
  std::array<hops_arg_desc, std::size(Op::kArgs)> args{};
  for (size_t i = 0; i < args.size(); ++i) {
    args[i] = Op::kArgs[i];
    if (args[i].since_minor == 0) args[i].since_minor = Op::kSinceMinor;
  }
  return args;
}

template <class Op>
constexpr bool is_collective() {
  if constexpr (requires { Op::kCollective; }) {
    return Op::kCollective;
  } else {
    return false;
  }
}

// A collective op's abstention: its argument struct built from exec alone
// (Op::abstain), handed to the kernels.
template <class Op>
constexpr auto abstain_entry() -> void (*)(const hops_exec&, const Dispatch&) {
  if constexpr (is_collective<Op>()) {
    return [](const hops_exec& exec, const Dispatch& dispatch) {
      const Op args = Op::abstain(exec);
      dispatch.abstain(op_def<Op>(), &args);
    };
  } else {
    return nullptr;
  }
}

// One definition per op type: descriptor from Op's constants, typed entry
// from Op::Signature (the op's first arity), validation from Op::check.
template <class Op>
const OpDef& op_def() {
  using Entry = detail::TypedEntry<typename Op::Signature>;
  static_assert(Entry::template signature_matches<Op>(),
                "the C signature of the op does not match its first version's arguments");
  static_assert(appended_args_valid<Op>(),
                "arguments added after an op's first version must be trailing, in version "
                "order, and optional tensors or scalars");
  static_assert(std::size(Op::kArgs) <= kMaxArgs);
  static constexpr auto kResolved = resolved_args<Op>();
  constexpr bool kCollective = is_collective<Op>();
  static const OpDef def{{sizeof(hops_op_desc), Op::kName, Op::kSinceMajor, Op::kSinceMinor,
                          Op::kDoc, static_cast<int32_t>(std::size(Op::kArgs)), kResolved.data(),
                          reinterpret_cast<hops_fn>(&Entry::template call<Op>)},
                         Op::kPrimaryArg,
                         op_layout<Op>(),
                         [](const Call& call, const Dispatch& dispatch) {
                           const Op args = Op::check(call);
                           dispatch(op_def<Op>(), call, &args);
                         },
                         kCollective,
                         abstain_entry<Op>()};
  return def;
}

}  // namespace hops
