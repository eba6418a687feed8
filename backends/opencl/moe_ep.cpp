// Expert parallelism on OpenCL tensors: moe_ep_dispatch / moe_ep_combine with
// exec->comm NULL (one rank) or HOPS_COMM_MPI (docs/DECISIONS.md).
//
// MPI cannot read a cl_mem, so the rows pass through host memory, and the
// exchange is the host path's own: the public moe_ep_dispatch / moe_ep_combine
// on host views of the tensors, with the same communicator, which libhops.so
// hands to the engine's module (libhops_mpi.so; the CPU backend for one rank).
// This module links no engine, and every check, agreement and deadline of the
// host path holds here too. The host waits for the exchange: a host sync is
// inherent to OpenCL + MPI (no OpenCL queue can wait on an MPI request).
//
// - dispatch: x (T rows) is read to the host, where the host path groups it
//   (rows move as bits: the single-device moe_dispatch's result whatever
//   groups them), and the C rows that arrive are written back. Grouping on
//   the device first would read T*k rows instead of T.
// - combine: expert_out is read to the host; the host path brings every
//   slot's row home unchanged (its combine with one slot per token and weight
//   1, exact in every dtype); the rows are written to a device block and this
//   backend's moe_combine sums them with the weights, so y is the
//   single-device OpenCL moe_combine's bit for bit.
#include <dlfcn.h>

#include <climits>
#include <filesystem>
#include <optional>
#include <string_view>
#include <vector>

#include "checked_math.hpp"
#include "family.hpp"
#include "moe.hpp"
#include "ops/moe_ep.hpp"

namespace hops::opencl {

namespace {

// libhops.so's API. libhops.so loaded this module from its own folder, so the
// libhops.so there is in the process already: RTLD_NOLOAD finds that copy and
// never loads a second one (the module's objects also build unit tests that
// have no libhops.so, so it is not linked).
const hops_api& api() {
  static const hops_api* const table = []() -> const hops_api* {
    Dl_info self{};
    if (!dladdr(reinterpret_cast<void*>(&api), &self) || !self.dli_fname) return nullptr;
    const auto path = std::filesystem::path(self.dli_fname).parent_path() / "libhops.so";
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
    const auto get = lib ? reinterpret_cast<hops_get_api_fn>(dlsym(lib, "hops_get_api")) : nullptr;
    return get ? get(HOPS_ABI_MAJOR) : nullptr;
  }();
  if (!table) {
    fail(HOPS_ERR_BACKEND,
         "opencl: libhops.so is not loaded from this module's folder, so the "
         "host exchange cannot be reached");
  }
  return *table;
}

template <class Fn>
Fn host_op(const char* name) {
  return reinterpret_cast<Fn>(api().find_op(name)->fn);
}

// The host call's exec: host memory, the caller's communicator and threads.
hops_exec host_exec(const ExecContext& context) {
  return {sizeof(hops_exec),        {kDLCPU, 0},      nullptr, context.exec.flags,
          context.exec.num_threads, context.exec.comm};
}

void check_host(hops_status status) {
  if (status != HOPS_OK) fail(status, "{}", api().last_error());
}

// Grow-only host memory per thread and purpose: steady-state calls neither
// allocate nor fault pages in.
enum Purpose { kIn0, kIn1, kIn2, kIn3, kOut0, kOut1, kOut2, kOut3, kOut4, kRows, kMap, kOnes };
std::byte* host_buffer(Purpose purpose, int64_t bytes) {
  thread_local std::vector<std::byte> buffers[kOnes + 1];
  std::vector<std::byte>& buffer = buffers[purpose];
  if (static_cast<int64_t>(buffer.size()) < bytes) buffer.resize(static_cast<size_t>(bytes));
  return buffer.data();
}

int64_t span_bytes(const Tensor& t) { return t.numel() > 0 ? extent_bytes(t).value_or(0) : 0; }

// `t` over host memory `data` holding its span: the view's own shape and
// strides, so no layout changes on the way (the host path takes any strides).
DLTensor host_view(const Tensor& t, void* data) {
  return {data,
          {kDLCPU, 0},
          t.ndim,
          dtype_to_dl(t.dtype),
          const_cast<int64_t*>(t.shape.data()),
          const_cast<int64_t*>(t.stride.data()),
          0};
}
DLTensor as_dl(const Tensor& t) {
  DLTensor dl = host_view(t, t.handle);
  dl.byte_offset = t.byte_offset;
  dl.device = t.device;
  return dl;
}

// Blocking copies between a cl_mem view's span and host memory, in order
// after the call's earlier commands.
void read_span(Call& call, const Tensor& t, std::byte* host, int64_t bytes) {
  const cl_event wait = call.last_event().get();
  EventHandle done;
  check(clEnqueueReadBuffer(call.queue(), static_cast<cl_mem>(t.handle), CL_TRUE, t.byte_offset,
                            static_cast<size_t>(bytes), host, wait ? 1 : 0, wait ? &wait : nullptr,
                            done.receive()),
        "clEnqueueReadBuffer(rows to the host)");
  call.set_last_event(std::move(done));
}
void write_span(Call& call, cl_mem buffer, uint64_t offset, const std::byte* host, int64_t bytes) {
  const cl_event wait = call.last_event().get();
  EventHandle done;
  check(clEnqueueWriteBuffer(call.queue(), buffer, CL_TRUE, offset, static_cast<size_t>(bytes),
                             host, wait ? 1 : 0, wait ? &wait : nullptr, done.receive()),
        "clEnqueueWriteBuffer(rows from the host)");
  call.set_last_event(std::move(done));
}

// An input for the host path: host-resident tensors as they are, a cl_mem
// view read into host memory.
DLTensor stage_in(Call& call, const Tensor& t, Purpose purpose) {
  if (host_accessible(t.device)) return as_dl(t);
  const int64_t bytes = span_bytes(t);
  std::byte* host = host_buffer(purpose, bytes);
  if (bytes > 0) read_span(call, t, host, bytes);
  return host_view(t, host);
}

// An output of the host path: host-resident tensors are written in place; a
// cl_mem view is written in host memory and then copied to the device whole.
// A view with gaps between its elements (padded rows) is read first, so the
// gaps go back as they were.
class StagedOutput {
 public:
  StagedOutput(Call& call, const Tensor& t, Purpose purpose) : call_(call), tensor_(t) {
    if (host_accessible(t.device)) {
      dl = as_dl(t);
      return;
    }
    bytes_ = span_bytes(t);
    host_ = host_buffer(purpose, bytes_);
    if (bytes_ > t.numel() * static_cast<int64_t>(dtype_size(t.dtype))) {
      read_span(call, t, host_, bytes_);
    }
    dl = host_view(t, host_);
  }
  void finish() const {
    if (bytes_ > 0) {
      write_span(call_, static_cast<cl_mem>(tensor_.handle), tensor_.byte_offset, host_, bytes_);
    }
  }

  DLTensor dl;

 private:
  Call& call_;
  const Tensor& tensor_;
  std::byte* host_ = nullptr;
  int64_t bytes_ = 0;
};

// This rank cannot run its call (its arguments failed the plugin's checks, or
// this backend failed before the exchange): it still joins the host exchange,
// with a call that fails validation there, so that the plugin's abstention
// tells the other ranks, which then fail too instead of waiting.
void abstain(const ExecContext& context, bool dispatch) {
  if (!context.exec.comm) return;
  const hops_exec exec = host_exec(context);
  if (dispatch) {
    host_op<hops_moe_ep_dispatch_fn>("moe_ep_dispatch")(&exec, nullptr, nullptr, nullptr, nullptr,
                                                        nullptr, nullptr, nullptr);
  } else {
    host_op<hops_moe_ep_combine_fn>("moe_ep_combine")(&exec, nullptr, nullptr, nullptr, nullptr,
                                                      nullptr, nullptr);
  }
}

// Errors leave as "<op>: <message>"; the host path's already name the op.
[[noreturn]] void rethrow_named(const char* name, const Error& e) {
  const std::string_view text = e.what();
  if (text.starts_with(name)) throw;
  throw Error(e.status(), fmt::format("{}: {}", name, text));
}

void dispatch(const ExecContext& context, const MoeEpDispatch& op) {
  if (op.abstaining) return abstain(context, true);
  try {
    std::optional<Call> call;
    try {
      call.emplace(context, std::initializer_list<NamedTensor>{{op.x, "x"},
                                                               {op.topk_ids, "topk_ids"},
                                                               {op.rows, "rows"},
                                                               {op.counts, "counts"},
                                                               {op.row_map, "row_map"},
                                                               {op.send_counts, "send_counts"},
                                                               {op.recv_counts, "recv_counts"}});
    } catch (const Error&) {
      abstain(context, true);
      throw;
    }
    // With no cl_mem at all (every tensor empty) there is nothing to copy,
    // but the other ranks still wait for this one.
    Call& c = *call;
    std::optional<StagedOutput> rows, counts, row_map, sent, got;
    DLTensor x{}, ids{};
    try {
      x = stage_in(c, op.x, kIn0), ids = stage_in(c, op.topk_ids, kIn1);
      rows.emplace(c, op.rows, kOut0), counts.emplace(c, op.counts, kOut1);
      row_map.emplace(c, op.row_map, kOut2), sent.emplace(c, op.send_counts, kOut3);
      got.emplace(c, op.recv_counts, kOut4);
    } catch (const Error&) {
      abstain(context, true);
      throw;
    }
    const hops_exec exec = host_exec(context);
    check_host(host_op<hops_moe_ep_dispatch_fn>("moe_ep_dispatch")(
        &exec, &x, &ids, &rows->dl, &counts->dl, &row_map->dl, &sent->dl, &got->dl));
    for (const auto* out : {&rows, &counts, &row_map, &sent, &got}) (*out)->finish();
    c.complete();
  } catch (const Error& e) {
    rethrow_named(op.kName, e);
  }
}

void combine(const ExecContext& context, const MoeEpCombine& op) {
  if (op.abstaining) return abstain(context, false);
  try {
    std::optional<Call> call;
    const int64_t T = op.T, k = op.k, R = op.T * op.k, Hd = op.Hd;
    const size_t size = dtype_size(op.expert_out.dtype);
    DLTensor out{}, map{}, sent{}, got{};
    try {
      call.emplace(context, std::initializer_list<NamedTensor>{{op.expert_out, "expert_out"},
                                                               {op.row_map, "row_map"},
                                                               {op.topk_weights, "topk_weights"},
                                                               {op.send_counts, "send_counts"},
                                                               {op.recv_counts, "recv_counts"},
                                                               {op.y, "y"}});
      out = stage_in(*call, op.expert_out, kIn0), map = stage_in(*call, op.row_map, kIn1);
      sent = stage_in(*call, op.send_counts, kIn2), got = stage_in(*call, op.recv_counts, kIn3);
    } catch (const Error&) {
      abstain(context, false);
      throw;
    }
    Call& c = *call;
    // The home trip: slot s = t*k + j of a token as its own token with weight
    // 1, so the host path returns each slot's row unchanged ([R, Hd], zero for
    // a dropped slot), and the slot map that sums them here: row t*k + j for
    // a kept slot, -1 for a dropped one, as the row map had it.
    const Tensor row_map = make_tensor(map, op.row_map.dtype, {kDLCPU, 0});
    auto* slots = reinterpret_cast<int64_t*>(host_buffer(kMap, scratch_size(op.kName, R, 2, 8)));
    int64_t* home = slots + R;
    auto* ones = reinterpret_cast<float*>(host_buffer(kOnes, scratch_size(op.kName, R, 4)));
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < k; ++j) {
        const int64_t s = t * k + j, r = read_index(row_map, t, j);
        home[s] = r, slots[s] = r >= 0 ? s : -1, ones[s] = 1.0f;
      }
    }
    int64_t slot_shape[2] = {R, 1}, slot_stride[2] = {1, 1};
    DLTensor home_map{home, {kDLCPU, 0}, 2, {kDLInt, 64, 1}, slot_shape, slot_stride, 0};
    DLTensor unit{ones, {kDLCPU, 0}, 2, {kDLFloat, 32, 1}, slot_shape, slot_stride, 0};
    int64_t rows_shape[2] = {R, Hd}, rows_stride[2] = {Hd, 1};
    const int64_t rows_bytes = scratch_size(op.kName, R, Hd, size);
    std::byte* back = host_buffer(kRows, rows_bytes);
    DLTensor rows{back,       {kDLCPU, 0}, 2, dtype_to_dl(op.expert_out.dtype),
                  rows_shape, rows_stride, 0};
    const hops_exec exec = host_exec(context);
    check_host(host_op<hops_moe_ep_combine_fn>("moe_ep_combine")(&exec, &out, &home_map, &unit,
                                                                 &sent, &got, &rows));
    if (!c.active() || T == 0) return c.complete();

    // The weighted sum: this backend's moe_combine over the slots' rows.
    MoeCombine sum;
    sum.rows = make_tensor(rows, op.expert_out.dtype, op.y.device);
    sum.rows.handle = c.scratch(static_cast<size_t>(std::max<int64_t>(rows_bytes, 1)));
    if (rows_bytes > 0) write_span(c, static_cast<cl_mem>(sum.rows.handle), 0, back, rows_bytes);
    int64_t map_shape[2] = {T, k}, map_stride[2] = {k, 1};
    const DLTensor slot_map{slots, {kDLCPU, 0}, 2, {kDLInt, 64, 1}, map_shape, map_stride, 0};
    sum.row_map = make_tensor(slot_map, DType::i64, {kDLCPU, 0});
    sum.topk_weights = op.topk_weights, sum.y = op.y;
    sum.R = R, sum.T = T, sum.k = k, sum.Hd = Hd;
    moe_combine(context, sum);
    // The block of rows stays busy until the sum has read it (a marker waits
    // for every command before it, also on an out-of-order queue).
    EventHandle summed;
    check(clEnqueueMarkerWithWaitList(c.queue(), 0, nullptr, summed.receive()),
          "clEnqueueMarkerWithWaitList");
    c.set_last_event(std::move(summed));
    c.complete();
  } catch (const Error& e) {
    rethrow_named(op.kName, e);
  }
}

// NCCL communicators belong to CUDA tensors; the OpenCL kernels count slots in int.
void accepts_dispatch(const MoeEpDispatch& op) {
  if (op.comm.kind == HOPS_COMM_NCCL) {
    fail(HOPS_ERR_UNSUPPORTED,
         "moe_ep_dispatch: the opencl backend exchanges over HOPS_COMM_MPI or runs one rank; "
         "HOPS_COMM_NCCL takes CUDA tensors");
  }
}
void accepts_combine(const MoeEpCombine& op) {
  if (op.comm.kind == HOPS_COMM_NCCL) {
    fail(HOPS_ERR_UNSUPPORTED,
         "moe_ep_combine: the opencl backend exchanges over HOPS_COMM_MPI or runs one rank; "
         "HOPS_COMM_NCCL takes CUDA tensors");
  }
  if (const auto slots = try_mul(op.T, op.k); !slots || *slots >= INT32_MAX) {
    fail(HOPS_ERR_UNSUPPORTED,
         "moe_ep_combine: the opencl backend supports fewer than 2^31 - 1 slots (rows) T*k");
  }
}

}  // namespace

std::span<const Kernel> moe_ep_kernels() {
  static constexpr Kernel kernels[] = {
      kernel<MoeEpDispatch, &dispatch, &accepts_dispatch>(HOPS_DTYPE_FLOATS),
      kernel<MoeEpCombine, &combine, &accepts_combine>(HOPS_DTYPE_FLOATS),
  };
  return kernels;
}

}  // namespace hops::opencl
