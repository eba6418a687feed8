#include "invocation.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace hops::conformance {

namespace {

bool is_tensor_kind(int32_t kind) { return kind <= HOPS_ARG_TENSOR_INOUT; }
bool is_written_kind(int32_t kind) {
  return kind == HOPS_ARG_TENSOR_OUT || kind == HOPS_ARG_TENSOR_INOUT;
}

// `word` occurs in `text` as a whole identifier, so that 'q' is not found in "required".
bool mentions(std::string_view text, std::string_view word) {
  auto ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (size_t at = text.find(word); at != std::string_view::npos; at = text.find(word, at + 1)) {
    const bool starts = at == 0 || !ident(text[at - 1]);
    const bool ends = at + word.size() == text.size() || !ident(text[at + word.size()]);
    if (starts && ends) return true;
  }
  return false;
}

}  // namespace

int arg_index(const hops_op_desc& op, std::string_view name) {
  for (int32_t i = 0; i < op.num_args; ++i) {
    if (name == hops_op_arg(&op, i)->name) return i;
  }
  throw CaseFailure(fmt::format("the descriptor of {} has no argument '{}'", op.name, name));
}

const hops_value& ArgValues::value(std::string_view name, int32_t kind) const {
  const int i = arg_index(op_, name);
  const int32_t actual = hops_op_arg(&op_, i)->kind;
  if (is_tensor_kind(kind) ? !is_tensor_kind(actual) : actual != kind) {
    throw CaseFailure(fmt::format("{}: argument '{}' has kind {}, the runner expects {}", op_.name,
                                  name, actual, kind));
  }
  return values_[static_cast<size_t>(i)];
}

const DLTensor* ArgValues::tensor(std::string_view name) const {
  return value(name, HOPS_ARG_TENSOR_IN).tensor;
}
double ArgValues::f64(std::string_view name) const { return value(name, HOPS_ARG_F64).f64; }
int64_t ArgValues::i64(std::string_view name) const { return value(name, HOPS_ARG_I64).i64; }
bool ArgValues::flag(std::string_view name) const { return value(name, HOPS_ARG_BOOL).boolean; }

Invocation::Invocation(const Context& ctx, const hops_op_desc& op)
    : ctx_(ctx),
      op_(op),
      tensors_(static_cast<size_t>(op.num_args)),
      scalars_(static_cast<size_t>(op.num_args)),
      patches_(static_cast<size_t>(op.num_args)),
      num_args_(op.num_args) {
  exec_ = {sizeof(hops_exec), ctx.device.dl_device(), ctx.device.stream(), 0, 0, nullptr};
  for (int32_t i = 0; i < op.num_args; ++i) {
    const hops_arg_desc& arg = *hops_op_arg(&op, i);
    hops_value& v = scalars_[static_cast<size_t>(i)];
    if (arg.kind == HOPS_ARG_F64) v.f64 = arg.default_f64;
    if (arg.kind == HOPS_ARG_I64) v.i64 = arg.default_i64;
    if (arg.kind == HOPS_ARG_BOOL) v.boolean = arg.default_i64 != 0;
  }
}

Invocation& Invocation::tensor(std::string_view name, Tensor t) {
  const int i = arg_index(op_, name);
  if (!is_tensor_kind(hops_op_arg(&op_, i)->kind)) {
    throw CaseFailure(fmt::format("{}: argument '{}' is not a tensor", op_.name, name));
  }
  tensors_[static_cast<size_t>(i)] = std::move(t);
  buffers_.clear();
  for (const Tensor& each : tensors_) {
    if (each && std::find(buffers_.begin(), buffers_.end(), each.memory()) == buffers_.end()) {
      buffers_.push_back(each.memory());
    }
  }
  return *this;
}

Invocation& Invocation::f64(std::string_view name, double value) {
  scalars_[static_cast<size_t>(arg_index(op_, name))].f64 = value;
  ArgValues(op_, scalars_).f64(name);  // kind check
  return *this;
}

Invocation& Invocation::i64(std::string_view name, int64_t value) {
  scalars_[static_cast<size_t>(arg_index(op_, name))].i64 = value;
  ArgValues(op_, scalars_).i64(name);
  return *this;
}

Invocation& Invocation::flag(std::string_view name, bool value) {
  scalars_[static_cast<size_t>(arg_index(op_, name))].boolean = value;
  ArgValues(op_, scalars_).flag(name);
  return *this;
}

const Tensor& Invocation::tensor(std::string_view name) const {
  return tensors_[static_cast<size_t>(arg_index(op_, name))];
}

Invocation& Invocation::patch(std::string_view name, std::function<void(DLTensor&)> edit) {
  patches_[static_cast<size_t>(arg_index(op_, name))] = std::move(edit);
  return *this;
}

Invocation& Invocation::may_be_refused(bool refusable) {
  refusable_ = refusable;
  return *this;
}

Invocation& Invocation::num_args(int32_t count) {
  num_args_ = count;
  return *this;
}

Invocation& Invocation::null_exec() {
  null_exec_ = true;
  return *this;
}

Invocation& Invocation::null_strides() {
  null_strides_ = true;
  return *this;
}

hops_status Invocation::call(bool typed) {
  // DLTensors and values live here for the duration of the call only; a
  // patch edits copies of shape and strides, never the tensor's own.
  std::vector<DLTensor> dl(tensors_.size());
  std::vector<Shape> shapes(tensors_.size()), strides(tensors_.size());
  std::vector<hops_value> values = scalars_;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (!is_tensor_kind(hops_op_arg(&op_, static_cast<int32_t>(i))->kind)) continue;
    values[i].tensor = nullptr;
    if (!tensors_[i]) continue;
    shapes[i] = tensors_[i].shape();
    strides[i] = tensors_[i].strides();
    dl[i] = tensors_[i].dl();
    dl[i].shape = shapes[i].data();
    dl[i].strides = strides[i].data();
    if (null_strides_ && strides[i] == contiguous_strides(shapes[i])) dl[i].strides = nullptr;
    if (patches_[i]) patches_[i](dl[i]);
    values[i].tensor = &dl[i];
  }
  const hops_exec* exec = null_exec_ ? nullptr : &exec_;
  // A longer list than the descriptor's (a wrong call) still points at values.
  if (num_args_ > static_cast<int32_t>(values.size()))
    values.resize(static_cast<size_t>(num_args_));
  if (!typed) return ctx_.api.call(&op_, exec, values.data(), num_args_);
  const TypedCall fn = typed_call(op_.name);
  if (!fn) throw CaseFailure(fmt::format("the runner has no typed signature for {}", op_.name));
  return fn(op_, exec, ArgValues(op_, values));
}

Invocation::Snapshot Invocation::snapshot() const {
  Snapshot s;
  for (const auto& b : buffers_) s.push_back(b->read());
  return s;
}

void Invocation::restore(const Snapshot& snapshot) const {
  for (size_t b = 0; b < buffers_.size(); ++b) buffers_[b]->write(snapshot[b]);
}

std::string Invocation::buffer_owners(size_t b) const {
  std::string names;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (tensors_[i] && tensors_[i].memory() == buffers_[b]) {
      names += fmt::format("{}'{}'", names.empty() ? "" : ", ", hops_op_arg(&op_, i)->name);
    }
  }
  return names;
}

void Invocation::check_only_outputs_written(const Snapshot& before) const {
  for (size_t b = 0; b < buffers_.size(); ++b) {
    std::vector<bool> writable(before[b].size(), false);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      if (!t || t.memory() != buffers_[b] || !is_written_kind(hops_op_arg(&op_, i)->kind)) continue;
      const auto size = static_cast<size_t>(size_of(t.dtype()));
      for (int64_t offset : t.element_offsets()) {
        std::fill_n(writable.begin() + static_cast<std::ptrdiff_t>(offset) * size, size, true);
      }
    }
    const std::vector<std::byte> after = buffers_[b]->read();
    for (size_t at = 0; at < after.size(); ++at) {
      if (!writable[at] && after[at] != before[b][at]) {
        throw CaseFailure(fmt::format("{} wrote byte {} of the buffer of {}, outside any output",
                                      op_.name, at, buffer_owners(b)));
      }
    }
  }
}

void Invocation::poison_outputs() const {
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (tensors_[i] && hops_op_arg(&op_, i)->kind == HOPS_ARG_TENSOR_OUT) tensors_[i].poison();
  }
}

void Invocation::run_lean() {
  poison_outputs();
  if (const hops_status s = call(false); s != HOPS_OK) {
    throw CaseFailure(
        fmt::format("api->call returned {}: {}", status_text(ctx_.api, s), ctx_.api.last_error()));
  }
}

bool Invocation::same_bytes_on_one_thread(std::string_view name,
                                          const std::function<Tensor()>& fresh) const {
  Invocation all = *this, one = *this;
  const Tensor out_all = fresh(), out_one = fresh();
  all.tensor(name, out_all).exec().flags |= HOPS_EXEC_DETERMINISTIC;
  one.tensor(name, out_one).exec().flags |= HOPS_EXEC_DETERMINISTIC;
  one.exec().num_threads = 1;
  all.run_lean();
  one.run_lean();
  return out_all.memory()->read() == out_one.memory()->read();
}

void Invocation::run(bool typed_too) {
  poison_outputs();
  const Snapshot before = snapshot();
  if (const hops_status s = call(false); s == HOPS_ERR_UNSUPPORTED && refusable_) {
    const std::string reason = ctx_.api.last_error();
    if (snapshot() != before) throw CaseFailure("a refused call changed its buffers: " + reason);
    throw CaseRefused("refused (HOPS_ERR_UNSUPPORTED): " + reason);
  } else if (s != HOPS_OK) {
    throw CaseFailure(
        fmt::format("api->call returned {}: {}", status_text(ctx_.api, s), ctx_.api.last_error()));
  }
  check_only_outputs_written(before);
  if (!typed_too) return;
  const Snapshot generic = snapshot();
  restore(before);
  if (const hops_status s = call(true); s != HOPS_OK) {
    throw CaseFailure(
        fmt::format("typed fn returned {}: {}", status_text(ctx_.api, s), ctx_.api.last_error()));
  }
  const Snapshot typed = snapshot();
  for (size_t b = 0; b < buffers_.size(); ++b) {
    if (typed[b] != generic[b]) {
      throw CaseFailure(
          fmt::format("typed fn and api->call wrote different bytes to {}", buffer_owners(b)));
    }
  }
}

std::string Invocation::expect_rejected(hops_status status,
                                        const std::vector<std::string_view>& names) {
  poison_outputs();
  const Snapshot before = snapshot();
  const hops_status got = call(false);
  std::string message = ctx_.api.last_error();
  if (got != status) {
    throw CaseFailure(fmt::format("expected {}, got {} ({})", status_text(ctx_.api, status),
                                  status_text(ctx_.api, got), message));
  }
  if (!mentions(message, op_.name)) {
    throw CaseFailure(fmt::format("last_error does not name the op: \"{}\"", message));
  }
  if (!names.empty() && std::none_of(names.begin(), names.end(),
                                     [&](std::string_view n) { return mentions(message, n); })) {
    throw CaseFailure(
        fmt::format("last_error names none of {}: \"{}\"", fmt::join(names, "/"), message));
  }
  const Snapshot after = snapshot();
  for (size_t b = 0; b < buffers_.size(); ++b) {
    if (after[b] != before[b]) {
      throw CaseFailure(fmt::format("a rejected call changed the buffer of {}", buffer_owners(b)));
    }
  }
  return message;
}

}  // namespace hops::conformance
