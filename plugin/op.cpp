#include "op.hpp"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "backend.hpp"
#include "checked_math.hpp"
#include "registry.hpp"

namespace hops {

namespace {

std::string device_name(DLDevice device) {
  static constexpr std::pair<int, const char*> kNames[] = {
      {kDLCPU, "cpu"},       {kDLCUDA, "cuda"},      {kDLCUDAHost, "cuda_host"},
      {kDLOpenCL, "opencl"}, {kDLVulkan, "vulkan"},  {kDLMetal, "metal"},
      {kDLROCM, "rocm"},     {kDLExtDev, "ext_dev"}, {kDLCUDAManaged, "cuda_managed"}};
  for (const auto& [type, name] : kNames) {
    if (type == device.device_type) return fmt::format("{}:{}", name, device.device_id);
  }
  return fmt::format("device_type {}:{}", static_cast<int>(device.device_type), device.device_id);
}

bool same_device(DLDevice a, DLDevice b) {
  return a.device_type == b.device_type && a.device_id == b.device_id;
}

// Byte span [begin, end) that a validated tensor's elements occupy, for
// overlap tests: check_tensor has proven that the end does not wrap.
struct ByteSpan {
  uintptr_t begin = 0, end = 0;
};
ByteSpan byte_span(const Tensor& t) {
  const auto extent = static_cast<uintptr_t>(extent_bytes(t).value());
  if (extent == 0) return {};
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.handle) + t.byte_offset;
  return {begin, begin + extent};
}

// No two elements share an address: with dims sorted by stride, each stride
// steps past everything the smaller dims span. Only for validated tensors,
// whose spans fit (extent_bytes).
bool self_overlapping(const Tensor& t) {
  if (t.numel() == 0) return false;
  std::array<int, kMaxDims> order{};
  int n = 0;
  for (int d = 0; d < t.ndim; ++d) {
    if (t.shape[d] > 1) order[n++] = d;
  }
  for (int i = 1; i < n; ++i) {  // insertion sort: at most kMaxDims dims
    for (int j = i; j > 0 && t.stride[order[j]] < t.stride[order[j - 1]]; --j) {
      std::swap(order[j], order[j - 1]);
    }
  }
  int64_t span = 0;  // elements covered by the smaller dims, minus one
  for (int i = 0; i < n; ++i) {
    const int d = order[i];
    if (t.stride[d] <= span) return true;
    span = checked_add("overlap test", span,
                       checked_product("overlap test", t.shape[d] - 1, t.stride[d]));
  }
  return false;
}

std::string shape_text(const DLTensor& dl) {
  return fmt::format("[{}]", fmt::join(std::span(dl.shape, static_cast<size_t>(dl.ndim)), ","));
}

}  // namespace

Call::Call(const hops_op_desc& op, const hops_exec& exec, std::span<const hops_value> values)
    : op_(op), exec_(exec), values_(values) {
  for (int arg = 0; arg < op.num_args; ++arg) {
    const hops_arg_desc& desc = op.args[arg];
    if (is_tensor(desc)) {
      check_tensor(arg);
    } else if (desc.kind == HOPS_ARG_F64 && !std::isfinite(values[arg].f64)) {
      fail(arg, "expected a finite number, got {}", values[arg].f64);
    } else if (desc.kind == HOPS_ARG_BOOL) {
      // Read as the byte it is: a C host may have stored any value there, and
      // loading a bool that is neither 0 nor 1 is undefined behaviour.
      uint8_t byte = 0;
      std::memcpy(&byte, &values[arg].boolean, sizeof byte);
      if (byte > 1) fail(arg, "a bool must hold 0 or 1, got the byte {}", byte);
      flags_[arg] = byte;
    }
  }
  check_overlaps();
}

void Call::check_tensor(int arg) {
  const hops_arg_desc& desc = op_.args[arg];
  const DLTensor* dl = values_[arg].tensor;
  if (!dl) {
    if (!desc.optional) fail(arg, "is required, got NULL");
    return;
  }
  const auto dtype = dtype_from_dl(dl->dtype);
  if (!dtype || !(desc.dtypes & dtype_bit(*dtype))) {
    fail(arg, "dtype expected one of {}, got {}", dtype_mask_names(desc.dtypes),
         dl_dtype_name(dl->dtype));
  }
  const std::optional<DLDevice> device = read_device(dl->device);
  if (!device) {
    fail(arg, "device_type {} is not a DLPack device type ({}..{})", raw_device_type(dl->device),
         static_cast<int>(kDLCPU), static_cast<int>(kDLCUDAManaged));
  }
  // Index tensors may also stay in host memory: a device call then validates
  // their values on the host, as the CPU backend always does.
  const bool index_only = (desc.dtypes & ~static_cast<uint32_t>(HOPS_DTYPE_INDEX)) == 0;
  if (!same_device(*device, exec_.device) && !(index_only && host_accessible(*device))) {
    fail(arg, "device expected {} (the call's device), got {}", device_name(exec_.device),
         device_name(*device));
  }
  if (dl->ndim < 0 || dl->ndim > kMaxDims)
    fail(arg, "rank expected 0..{}, got {}", kMaxDims, dl->ndim);
  if (dl->ndim > 0 && !dl->shape) fail(arg, "shape pointer is NULL for rank {}", dl->ndim);
  // Every dim is bounded whatever the others are: a 0 dim counts as 1 here,
  // so that it cannot lift the bound for the dims beside it.
  int64_t extent = 1;
  bool empty = false;
  for (int d = 0; d < dl->ndim; ++d) {
    if (dl->shape[d] < 0) fail(arg, "dim {} is negative ({})", d, dl->shape[d]);
    if (dl->strides && dl->strides[d] < 0) {
      fail(arg, "dim {} has a negative stride ({}); only non-negative strides are supported", d,
           dl->strides[d]);
    }
    if (dl->strides && dl->strides[d] > kMaxStride) {
      fail(arg, "dim {} has the stride {}, more than 2^48 elements", d, dl->strides[d]);
    }
    const std::optional<int64_t> next =
        try_product(kMaxElements, extent, std::max<int64_t>(dl->shape[d], 1));
    if (!next)
      fail(arg, "shape {} has more than 2^48 elements (a 0 dim counted as 1)", shape_text(*dl));
    extent = *next;
    empty = empty || dl->shape[d] == 0;
  }
  if (!empty && !dl->data) fail(arg, "data is NULL for {} elements", extent);
  if (dl->byte_offset > static_cast<uint64_t>(kMaxBytes)) {
    fail(arg, "byte_offset {} is more than 2^56", dl->byte_offset);
  }
  tensors_[arg] = make_tensor(*dl, *dtype, *device);
  const Tensor& t = tensors_[arg];
  const std::optional<int64_t> extent_in_bytes = extent_bytes(t);
  if (!extent_in_bytes) fail(arg, "its shape and strides span more than 2^56 bytes");
  if (t.device.device_type != kDLOpenCL && !empty) {
    // A pointer: its span must fit in the address space.
    uintptr_t address = 0, end = 0;
    if (__builtin_add_overflow(reinterpret_cast<uintptr_t>(t.handle), t.byte_offset, &address) ||
        __builtin_add_overflow(address, static_cast<uintptr_t>(*extent_in_bytes), &end)) {
      fail(arg, "data + byte_offset + its span wraps around the address space");
    }
    if (address % static_cast<uintptr_t>(dtype_size(t.dtype)) != 0) {
      fail(arg, "data + byte_offset is not aligned to its {}-byte elements", dtype_size(t.dtype));
    }
  }
  if (is_written(desc) && self_overlapping(t)) {
    fail(arg, "is written, so its elements must not overlap (zero or interleaved strides)");
  }
}

void Call::check_overlaps() const {
  for (int out = 0; out < op_.num_args; ++out) {
    if (!is_written(op_.args[out]) || !tensors_[out]) continue;
    const ByteSpan written = byte_span(tensors_[out]);
    for (int other = 0; other < op_.num_args; ++other) {
      if (other == out || !is_tensor(op_.args[other]) || !tensors_[other]) continue;
      // cl_mem handles are opaque, not addresses: only views of one buffer
      // can overlap, and never an OpenCL tensor and a host one (a host index
      // output beside an OpenCL input would compare a cl_mem's value with
      // host memory otherwise).
      const bool out_cl = tensors_[out].device.device_type == kDLOpenCL;
      const bool other_cl = tensors_[other].device.device_type == kDLOpenCL;
      if (out_cl != other_cl || (out_cl && tensors_[out].handle != tensors_[other].handle)) {
        continue;
      }
      const ByteSpan span = byte_span(tensors_[other]);
      if (written.begin < span.end && span.begin < written.end) {
        fail(out, "overlaps the memory of argument '{}'; outputs must not alias other arguments",
             arg_name(other));
      }
    }
  }
}

bool Call::writes_elements() const {
  for (int arg = 0; arg < op_.num_args; ++arg) {
    if (is_written(op_.args[arg]) && tensors_[arg] && tensors_[arg].numel() > 0) return true;
  }
  return false;
}

void Call::same_dtype(int arg, int reference) const {
  if (tensors_[arg] && tensors_[reference] && tensors_[arg].dtype != tensors_[reference].dtype) {
    fail(arg, "dtype expected {} (as '{}'), got {}", dtype_name(tensors_[reference].dtype),
         arg_name(reference), dtype_name(tensors_[arg].dtype));
  }
}

void Shapes::bind(std::string_view name, int64_t value, int source_arg) {
  bind_dim(name, value, source_arg, -1);
}

void Shapes::bind_dim(std::string_view name, int64_t value, int arg, int dim) {
  for (int i = 0; i < count_; ++i) {
    const Symbol& s = symbols_[i];
    if (s.name != name) continue;
    if (s.value != value) {
      const std::string where =
          dim >= 0 ? fmt::format("dim {} ({})", dim, name) : std::string(name);
      call_.fail(arg, "{} expected {} (as in '{}'), got {}", where, s.value,
                 call_.arg_name(s.source_arg), value);
    }
    return;
  }
  symbols_.at(count_++) = {name, value, arg};
}

void Shapes::expect(int arg, std::initializer_list<std::string_view> dims) {
  const Tensor& t = call_.tensor(arg);
  if (!t) return;
  if (t.ndim != static_cast<int>(dims.size())) {
    std::string wanted;
    for (std::string_view d : dims) wanted += fmt::format("{}{}", wanted.empty() ? "" : ",", d);
    call_.fail(arg, "rank expected {} ([{}]), got {}", dims.size(), wanted, t.ndim);
  }
  int dim = 0;
  for (std::string_view name : dims) {
    bind_dim(name, t.shape[dim], arg, dim);
    ++dim;
  }
}

int64_t Shapes::operator[](std::string_view name) const {
  for (int i = 0; i < count_; ++i) {
    if (symbols_[i].name == name) return symbols_[i].value;
  }
  fail(HOPS_ERR_INTERNAL, "{}: shape symbol {} was never bound", call_.op_name(), name);
}

Sequences check_sequences(const Call& call, int arg, int64_t batch, int64_t tokens) {
  Sequences seqs{call.tensor(arg), batch, tokens};
  const Tensor& cu = seqs.cu_seqlens;
  if (!cu) return seqs;
  call.require(cu.ndim == 1 && cu.shape[0] >= 2, arg, "expected shape [N+1] with N >= 1");
  if (batch != 1) call.fail(arg, "is given, so the batch dim must be 1, got {}", batch);
  seqs.count = cu.shape[0] - 1;
  // Device-resident offsets are not read here (that would sync the stream):
  // device kernels clamp them instead (docs/DECISIONS.md).
  if (!host_accessible(cu.device)) return seqs;
  if (read_index(cu, 0) != 0) call.fail(arg, "must start at 0, got {}", read_index(cu, 0));
  for (int64_t n = 1; n <= seqs.count; ++n) {
    if (read_index(cu, n) < read_index(cu, n - 1)) {
      call.fail(arg, "must be nondecreasing, but cu_seqlens[{}] = {} < cu_seqlens[{}] = {}", n,
                read_index(cu, n), n - 1, read_index(cu, n - 1));
    }
  }
  if (read_index(cu, seqs.count) != tokens) {
    call.fail(arg, "must end at the token count T = {}, got {}", tokens,
              read_index(cu, seqs.count));
  }
  return seqs;
}

Slots check_slots(const Call& call, int arg, int64_t sequences, int64_t pool_size) {
  Slots slots{call.tensor(arg)};
  const Tensor& idx = slots.indices;
  if (!idx) {
    if (sequences > pool_size) {
      call.fail(arg,
                "is absent, so sequence n uses slot n, but there are {} sequences and {} slots",
                sequences, pool_size);
    }
    return slots;
  }
  if (idx.ndim != 1 || idx.shape[0] != sequences) {
    call.fail(arg, "shape expected [{}] (one slot per sequence), got rank {} with {} entries",
              sequences, idx.ndim, idx.ndim > 0 ? idx.shape[0] : 0);
  }
  if (!host_accessible(idx.device)) return slots;  // device kernels skip invalid slots
  // Duplicates are found among the N slots used, sorted: O(N log N) time and
  // memory whatever the pool size S.
  std::vector<int64_t> used;
  used.reserve(static_cast<size_t>(sequences));
  for (int64_t n = 0; n < sequences; ++n) {
    const int64_t slot = read_index(idx, n);
    if (slot < -1 || slot >= pool_size) {
      call.fail(arg, "entry {} is {}, expected -1 (skip) or a slot in [0, {})", n, slot, pool_size);
    }
    if (slot >= 0) used.push_back(slot);
  }
  std::sort(used.begin(), used.end());
  const auto twice = std::adjacent_find(used.begin(), used.end());
  if (twice != used.end()) {
    call.fail(arg, "slot {} is used by two sequences; their state updates would alias", *twice);
  }
  return slots;
}

void Dispatch::operator()(const OpDef& op, const Call& call, const void* args) const {
  const DType dtype = call.tensor(op.primary_arg).dtype;
  std::vector<std::string> reasons;  // one per backend that passed the call on
  for (const Backend* backend : candidates_) {
    const Kernel* kernel = backend->find(op.desc.name, dtype);
    if (!kernel) {
      reasons.push_back(fmt::format("{}: the {} backend has no kernel for dtype {}", op.desc.name,
                                    backend->name, dtype_name(dtype)));
      continue;
    }
    // Nothing to write, nothing to run (or ask): the kernels would still loop
    // over the batch and heads (the fuzzer found T = 0 with B or HV near 2^32
    // running for minutes).
    // A collective op runs anyway: the other ranks wait for this one.
    if (!call.writes_elements() && !op.collective) return;
    hops_status status = kernel->accepts ? kernel->accepts(args) : HOPS_OK;
    if (status == HOPS_OK && context_) {
      ran_ = true;
      status = kernel->run(*context_, args);
    }
    if (status == HOPS_OK) return;
    if (status != HOPS_ERR_UNSUPPORTED) throw Error(status, backend->module_last_error());
    reasons.emplace_back(backend->module_last_error());
  }
  fail(HOPS_ERR_UNSUPPORTED, "{}", fmt::join(reasons, "; "));
}

void Dispatch::abstain(const OpDef& op, const void* args) const {
  if (!context_) return;
  for (const Backend* backend : candidates_) {
    const Kernel* kernel = backend->find(op.desc.name, DType::f32);
    if (!kernel || (kernel->accepts && kernel->accepts(args) != HOPS_OK)) continue;
    kernel->run(*context_, args);
    return;
  }
}

std::vector<const OpDef*> abi_order(std::initializer_list<std::span<const OpEntry>> families) {
  std::vector<OpEntry> entries;
  for (const auto family : families) entries.insert(entries.end(), family.begin(), family.end());
  std::sort(entries.begin(), entries.end(),
            [](const OpEntry& a, const OpEntry& b) { return a.index < b.index; });
  std::vector<const OpDef*> ops;
  for (const OpEntry& entry : entries) {
    if (entry.index != static_cast<int32_t>(ops.size())) {
      // A build error in all but name: the op list is the ABI, so no call may run.
      std::fprintf(stderr,
                   "hops: op '%s' has ABI index %d, expected %zu (indices must be 0..n-1)\n",
                   entry.def->desc.name, entry.index, ops.size());
      std::abort();
    }
    ops.push_back(entry.def);
  }
  return ops;
}

namespace {

// The call's hops_exec with every field present, checked.
hops_exec normalized_exec(const hops_op_desc& desc, const hops_exec* exec,
                          std::span<const hops_value> values) {
  hops_exec normalized{sizeof(hops_exec), {kDLCPU, 0}, nullptr, 0, 0, nullptr};
  if (exec) {
    constexpr size_t kMinimum = offsetof(hops_exec, stream) + sizeof(void*);
    if (exec->struct_size < kMinimum) {
      fail(HOPS_ERR_INVALID_ARGUMENT, "{}: argument 'exec': struct_size expected >= {}, got {}",
           desc.name, kMinimum, exec->struct_size);
    }
    std::memcpy(&normalized, exec, std::min(exec->struct_size, sizeof normalized));
    normalized.struct_size = sizeof normalized;
    const std::optional<DLDevice> device = read_device(normalized.device);
    if (!device) {
      fail(HOPS_ERR_INVALID_ARGUMENT,
           "{}: argument 'exec': device_type {} is not a DLPack device type ({}..{})", desc.name,
           raw_device_type(normalized.device), static_cast<int>(kDLCPU),
           static_cast<int>(kDLCUDAManaged));
    }
    normalized.device = *device;
  } else {
    // No exec: run where the first tensor lives (Call rejects a tensor
    // whose device_type is no DLPack device type).
    for (size_t arg = 0; arg < values.size(); ++arg) {
      if (is_tensor(desc.args[arg]) && values[arg].tensor) {
        if (const auto device = read_device(values[arg].tensor->device))
          normalized.device = *device;
        break;
      }
    }
  }
  // A flag this provider does not know cannot be honoured (HOPS_EXEC_DETERMINISTIC
  // always is: every kernel here reduces in a fixed order, without atomics).
  if (const uint64_t unknown = normalized.flags & ~uint64_t{HOPS_EXEC_DETERMINISTIC}) {
    fail(HOPS_ERR_INVALID_ARGUMENT, "{}: argument 'exec': flags has unknown bits {:#x}", desc.name,
         unknown);
  }
  return normalized;
}

// `given` completed to the descriptor's arity: a caller of an older arity
// leaves out trailing arguments, which take their defaults (NULL tensors,
// the descriptor's scalars); a left-out required tensor is an error.
std::span<const hops_value> complete_args(const hops_op_desc& desc,
                                          std::span<const hops_value> given,
                                          std::array<hops_value, kMaxArgs>& storage) {
  const auto count = static_cast<size_t>(desc.num_args);
  if (given.size() == count) return given;
  if (given.size() > count) {
    fail(HOPS_ERR_INVALID_ARGUMENT, "{}: expected at most {} arguments, got {}", desc.name, count,
         given.size());
  }
  std::copy(given.begin(), given.end(), storage.begin());
  for (size_t arg = given.size(); arg < count; ++arg) {
    const hops_arg_desc& a = desc.args[arg];
    hops_value& value = storage[arg];
    value = hops_value{};
    if (is_tensor(a)) {
      if (!a.optional) {
        fail(HOPS_ERR_INVALID_ARGUMENT,
             "{}: argument '{}': is required, but the call passed only {} of {} arguments",
             desc.name, a.name, given.size(), count);
      }
      value.tensor = nullptr;
    } else if (a.kind == HOPS_ARG_F64) {
      value.f64 = a.default_f64;
    } else if (a.kind == HOPS_ARG_I64) {
      value.i64 = a.default_i64;
    } else {
      value.boolean = a.default_i64 != 0;
    }
  }
  return {storage.data(), count};
}

}  // namespace

namespace {

// With `candidates` null, the registry's backends for the call's device type.
hops_status dispatch_on(const OpDef& op, const hops_exec* exec, std::span<const hops_value> given,
                        const std::span<const Backend* const>* candidates, bool run) {
  return guarded([&] {
    const hops_op_desc& desc = op.desc;
    std::array<hops_value, kMaxArgs> storage{};
    const std::span<const hops_value> values = complete_args(desc, given, storage);
    const hops_exec normalized = normalized_exec(desc, exec, values);
    Registry& registry = Registry::get();
    const std::span<const Backend* const> backends =
        candidates ? *candidates : registry.backends_for(normalized.device.device_type);
    std::optional<ExecContext> context;
    std::optional<Dispatch> dispatch;
    const auto prepare = [&] {
      const int threads = registry.threads().size();
      context.emplace(ExecContext{
          normalized, &registry.threads(), &registry.scratch(normalized.device),
          normalized.num_threads > 0 ? std::min(normalized.num_threads, threads) : threads,
          registry.allocator()});
      dispatch.emplace(backends, &*context);
    };
    // A collective call can abstain from the start (a bad tensor, say).
    if (run && op.collective && !backends.empty()) prepare();
    try {
      const Call call(desc, normalized, values);
      if (backends.empty()) {
        fail(HOPS_ERR_UNSUPPORTED, "{}: no available backend for device {}", desc.name,
             device_name(normalized.device));
      }
      if (!run) {
        op.check_and_dispatch(call, Dispatch(backends, nullptr));
        return;
      }
      if (!dispatch) prepare();
      op.check_and_dispatch(call, *dispatch);
    } catch (const Error&) {
      // This rank rejected a collective call before any kernel ran: the
      // other ranks learn it from its abstention and fail too.
      if (run && op.abstain && normalized.comm && dispatch && !dispatch->ran()) {
        op.abstain(normalized, *dispatch);
      }
      throw;
    }
  });
}

}  // namespace

hops_status dispatch(const OpDef& op, const hops_exec* exec, std::span<const hops_value> values,
                     bool run) {
  return dispatch_on(op, exec, values, nullptr, run);
}

hops_status dispatch_to(const OpDef& op, const hops_exec* exec, std::span<const hops_value> values,
                        std::span<const Backend* const> candidates, bool run) {
  return dispatch_on(op, exec, values, &candidates, run);
}

}  // namespace hops
