// One call of an op, assembled by argument NAME from the provider's
// descriptor: a renamed, reordered or missing argument fails loudly instead of
// being passed in the wrong slot. Runs through the generic api->call and, on
// request, also through the op's typed entry point, and checks what each call
// may and may not write.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "harness.hpp"
#include "tensor.hpp"

namespace hops::conformance {

// Index of the argument called `name` in `op`; throws CaseFailure when absent.
int arg_index(const hops_op_desc& op, std::string_view name);

// The argument values of one call, in descriptor order, read by name.
class ArgValues {
 public:
  ArgValues(const hops_op_desc& op, std::span<const hops_value> values)
      : op_(op), values_(values) {}
  const DLTensor* tensor(std::string_view name) const;
  double f64(std::string_view name) const;
  int64_t i64(std::string_view name) const;
  bool flag(std::string_view name) const;

 private:
  const hops_value& value(std::string_view name, int32_t kind) const;
  const hops_op_desc& op_;
  std::span<const hops_value> values_;
};

class Invocation {
 public:
  // Scalars start at the descriptor's defaults, tensors absent (NULL).
  Invocation(const Context& ctx, const hops_op_desc& op);

  Invocation& tensor(std::string_view name, Tensor t);
  Invocation& f64(std::string_view name, double value);
  Invocation& i64(std::string_view name, int64_t value);
  Invocation& flag(std::string_view name, bool value);
  const Tensor& tensor(std::string_view name) const;

  // For wrong calls: edits the DLTensor handed over for `name`, the exec, the
  // argument count.
  Invocation& patch(std::string_view name, std::function<void(DLTensor&)> edit);
  hops_exec& exec() { return exec_; }
  Invocation& num_args(int32_t count);
  Invocation& null_exec();
  // Passes strides = NULL (DLPack's compact row-major) for every contiguous tensor.
  Invocation& null_strides();
  // The backends may refuse this valid call: run() then throws CaseRefused
  // (a SKIP) on HOPS_ERR_UNSUPPORTED, after checking that nothing was written.
  Invocation& may_be_refused(bool refusable = true);

  // Poisons the outputs, calls api->call and requires HOPS_OK and that only the
  // elements of output and inout views changed. With `typed_too`, repeats the
  // call from the same starting bytes through desc->fn and requires identical bytes.
  void run(bool typed_too = false);
  // Poisons the outputs and calls api->call, requiring HOPS_OK, without the
  // byte checks: for calls that must overlap in time with other threads'.
  void run_lean();
  // Reruns the call with HOPS_EXEC_DETERMINISTIC on all threads and on
  // num_threads = 1, output `name` in a tensor of its own each time (from
  // `fresh`), and says whether the two gave the same bytes.
  bool same_bytes_on_one_thread(std::string_view name, const std::function<Tensor()>& fresh) const;

  // Poisons the outputs, then requires the call to fail with `status`, a
  // last_error naming the op and one of `names` (none: the op alone), and
  // every buffer left bit-identical.
  // Returns the provider's message.
  std::string expect_rejected(hops_status status, const std::vector<std::string_view>& names);

 private:
  using Snapshot = std::vector<std::vector<std::byte>>;  // one per buffer
  hops_status call(bool typed);
  void poison_outputs() const;
  Snapshot snapshot() const;
  void restore(const Snapshot& snapshot) const;
  // Names of the arguments viewing buffer `b`, for messages.
  std::string buffer_owners(size_t b) const;
  void check_only_outputs_written(const Snapshot& before) const;

  const Context& ctx_;
  const hops_op_desc& op_;
  std::vector<Tensor> tensors_;
  std::vector<hops_value> scalars_;
  std::vector<std::function<void(DLTensor&)>> patches_;
  hops_exec exec_{};
  bool null_exec_ = false;
  bool null_strides_ = false;
  bool refusable_ = false;
  int32_t num_args_;
  std::vector<std::shared_ptr<Memory>> buffers_;  // distinct buffers of all tensors
};

// The hops.h typedef of each op, fed from ArgValues by name (its family's suite).
using TypedCall = hops_status (*)(const hops_op_desc& op, const hops_exec* exec,
                                  const ArgValues& args);
// Null for an op the runner has no typedef for.
TypedCall typed_call(std::string_view op);

}  // namespace hops::conformance
