// The expert-parallel ops on CUDA tensors: this device alone (exec->comm
// NULL) or the ranks of an NCCL communicator (HOPS_COMM_NCCL). Everything is
// queued on the call's stream and nothing is read back by the host, so the
// ops never block it and a CUDA graph can capture them:
// - each peer gets a fixed block of P = C / W rows (C the rows of the call,
//   W the ranks), so NCCL's sizes are known on the host; the counts travel
//   in the same NCCL group as the rows, and device kernels (moe_ep.cu) read
//   them to find the real rows of each block;
// - the sender's grouping is moe_dispatch's kernels and the weighted sum
//   moe_combine's (moe_rows.cu), so results are the single-device ops' bit
//   for bit; rows past a full block are dropped (row_map -1) instead of
//   failing the call, which would need the counts on the host.
#include <memory>

#include "cuda_host.hpp"
#include "moe_ep_params.hpp"
#include "nccl.hpp"
#include "ops/moe_ep.hpp"

namespace hops::cuda {

namespace {

MoeIndex device_index(const Tensor& t) {
  return {static_cast<char*>(t.handle) + t.byte_offset, t.ndim > 0 ? t.stride[0] : 0,
          t.ndim > 1 ? t.stride[1] : 0, t.dtype == DType::i64};
}

// Compact rows [rows, Hd] of scratch as a kernel argument.
Arg compact(void* data, DType dtype, int64_t rows, int64_t Hd) {
  Arg a;
  a.data = static_cast<char*>(data);
  a.dtype = code_of(dtype);
  a.ndim = 2;
  a.shape[0] = rows, a.shape[1] = Hd;
  a.stride[0] = Hd, a.stride[1] = 1;
  return a;
}

bool vector16(const Tensor& t) { return vector_rows({&t}, 16 / dtype_size(t.dtype)); }

// One scratch allocation cut into 256-byte aligned pieces.
class Pieces {
 public:
  Pieces(std::initializer_list<int64_t> bytes, const DeviceGuard& guard, const char* op) {
    int64_t total = 0;
    for (const int64_t b : bytes) {
      offsets_.push_back(total);
      total = scratch_sum(op, total, b, 255) & ~int64_t{255};
    }
    scratch_ = std::make_unique<Scratch>(static_cast<size_t>(total), guard, op);
  }
  template <class T = char>
  T* at(size_t piece) const {
    return reinterpret_cast<T*>(static_cast<char*>(scratch_->data()) + offsets_[piece]);
  }

 private:
  std::vector<int64_t> offsets_;
  std::unique_ptr<Scratch> scratch_;
};

// The ranks of a call: an NCCL communicator's, or this device alone (then
// the receive blocks are the send blocks and nothing moves).
class Peers {
 public:
  Peers(const Comm& comm, const DeviceGuard& guard, const char* op)
      : op_(op), stream_(guard.stream()) {
    if (comm.kind != HOPS_COMM_NCCL) return;
    std::string why;
    nccl_ = nccl::api(&why);
    if (!nccl_) {
      fail(HOPS_ERR_UNSUPPORTED, "{}: argument 'exec': comm is HOPS_COMM_NCCL, but {}", op, why);
    }
    comm_ = static_cast<nccl::Comm>(comm.handle);
    int count = 0, rank = 0, device = 0;
    check(nccl_->comm_count(comm_, &count), "ncclCommCount");
    check(nccl_->comm_user_rank(comm_, &rank), "ncclCommUserRank");
    check(nccl_->comm_cu_device(comm_, &device), "ncclCommCuDevice");
    if (count != comm.size || rank != comm.rank) {
      fail(HOPS_ERR_INVALID_ARGUMENT,
           "{}: argument 'exec': comm says rank {} of {}, but the NCCL communicator has this "
           "process as rank {} of {}",
           op, comm.rank, comm.size, rank, count);
    }
    if (device != guard.device()) {
      fail(HOPS_ERR_INVALID_ARGUMENT,
           "{}: argument 'exec': the NCCL communicator is on CUDA device {}, the call on {}", op,
           device, guard.device());
    }
    size_ = count;
  }
  int64_t size() const { return size_; }
  bool lone() const { return !nccl_; }

  // `count` elements of `bytes` each to and from every peer d, at block d of
  // `send` and `recv`.
  struct Blocks {
    const void* send;
    void* recv;
    size_t count, bytes;
    nccl::DataType type;
  };
  // One NCCL group: its sends and receives run as one launch on the stream.
  void exchange(std::initializer_list<Blocks> all) const {
    if (!nccl_) return;
    check(nccl_->group_start(), "ncclGroupStart");
    int status = nccl::kSuccess;
    for (const Blocks& b : all) {
      if (b.count == 0) continue;
      for (int d = 0; d < size_ && ok(status); ++d) {
        const size_t at = size_t(d) * b.count * b.bytes;
        status =
            nccl_->send(static_cast<const char*>(b.send) + at, b.count, b.type, d, comm_, stream_);
        if (ok(status)) {
          status = nccl_->recv(static_cast<char*>(b.recv) + at, b.count, b.type, d, comm_, stream_);
        }
      }
    }
    const int end = nccl_->group_end();  // closes the group even after a failed call
    check(status, "ncclSend / ncclRecv");
    check(end, "ncclGroupEnd");
  }

 private:
  // ncclInProgress: queued on a nonblocking communicator.
  static bool ok(int status) { return status == nccl::kSuccess || status == nccl::kInProgress; }
  void check(int status, const char* call) const {
    if (ok(status)) return;
    fail(HOPS_ERR_BACKEND, "{}: {} failed: NCCL error {} ({})", op_, call, status,
         nccl_->error_string(status));
  }

  const char* op_;
  cudaStream_t stream_;
  const nccl::Api* nccl_ = nullptr;
  nccl::Comm comm_ = nullptr;
  int size_ = 1;
};

// ---- the accepts checks ----

template <class Op>
void device_indices(const Op& op, std::initializer_list<const Tensor*> indices) {
  if (op.comm.kind != 0 && op.comm.kind != HOPS_COMM_NCCL) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: the cuda backend runs this device alone (exec->comm NULL) or HOPS_COMM_NCCL; "
         "HOPS_COMM_MPI takes host tensors (libhops_mpi.so)",
         op.kName);
  }
  for (const Tensor* t : indices) {
    if (host_accessible(t->device)) {
      fail(HOPS_ERR_UNSUPPORTED,
           "{}: the cuda backend takes the index tensors in device memory (a host-resident one "
           "would make the call wait for the device)",
           op.kName);
    }
  }
}

void slot_limits(const char* name, int64_t T, int64_t k, int64_t E) {
  const std::optional<int64_t> slots = try_mul(T, k);
  if (!slots || *slots > INT32_MAX || E >= INT32_MAX) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: the cuda backend supports up to 2^31 - 1 slots T*k and 2^31 - 2 experts", name);
  }
}

void dispatch_accepts(const MoeEpDispatch& op) {
  if (op.abstaining) return;
  device_indices(op, {&op.topk_ids, &op.counts, &op.row_map, &op.send_counts, &op.recv_counts});
  slot_limits(op.kName, op.T, op.k, op.E);
}

void combine_accepts(const MoeEpCombine& op) {
  if (op.abstaining) return;
  device_indices(op, {&op.row_map, &op.send_counts, &op.recv_counts});
  slot_limits(op.kName, op.T, op.k, op.E);
}

// ---- the ops ----

// A rank whose arguments failed validation cannot join the exchange (the
// bytes each peer expects follow from the shapes it rejected), and without
// reading the stream back it cannot tell the others: their NCCL calls wait
// for it (docs/DECISIONS.md). Its own call has already failed.
void moe_ep_dispatch(const ExecContext& context, const MoeEpDispatch& op) {
  if (op.abstaining) return;
  const char* name = op.kName;
  const DeviceGuard guard(context, name);
  const Peers peers(op.comm, guard, name);
  const int64_t W = peers.size(), E = op.E, El = op.El, Hd = op.Hd, P = op.C / W;
  const int64_t R = op.T * op.k, block_rows = W * P;
  const int64_t row_bytes = checked_product(name, Hd, dtype_size(op.x.dtype));
  const MoeDispatchParams grouping{make_arg(op.x),
                                   Arg{},
                                   device_index(op.topk_ids),
                                   device_index(op.send_counts),
                                   device_index(op.row_map),
                                   op.T,
                                   op.k,
                                   Hd,
                                   E,
                                   vector16(op.x)};
  enum { kGrouped, kSendBlocks, kRecvBlocks, kSendCounts, kRecvCounts, kPlan, kDispatch };
  const Pieces scratch(
      {scratch_size(name, R, row_bytes), scratch_size(name, block_rows, row_bytes),
       peers.lone() ? 0 : scratch_size(name, block_rows, row_bytes), scratch_size(name, E, 8),
       peers.lone() ? 0 : scratch_size(name, E, 8), scratch_size(name, moe_ep_plan_words(W, El), 8),
       static_cast<int64_t>(moe_dispatch_scratch_bytes(grouping))},
      guard, name);
  void* send_blocks = scratch.at(kSendBlocks);
  void* recv_blocks = peers.lone() ? send_blocks : scratch.at(kRecvBlocks);
  auto* send_counts = scratch.at<int64_t>(kSendCounts);
  auto* recv_counts = peers.lone() ? send_counts : scratch.at<int64_t>(kRecvCounts);
  const MoeEpPlan plan = moe_ep_carve_plan(scratch.at<int64_t>(kPlan), W, El);
  const Arg grouped = compact(scratch.at(kGrouped), op.x.dtype, R, Hd);
  const cudaStream_t stream = guard.stream();

  // This rank's rows grouped by global expert: peer d's are one run.
  MoeDispatchParams own = grouping;
  own.rows = grouped;
  check(launch_moe_dispatch(own, scratch.at(kDispatch), stream), name, "dispatch kernels launch");
  check(launch_moe_ep_stage_counts(device_index(op.send_counts), E, send_counts, stream), name,
        "counts kernel launch");
  MoeEpPlanParams sender{plan, {send_counts, 1, 0, 1}, {}, {}, {}, W, El, P};
  check(launch_moe_ep_plan(sender, stream), name, "plan kernel launch");
  check(launch_moe_ep_move({plan, grouped, static_cast<char*>(send_blocks), W, El, P, Hd, 0, 1,
                            row_bytes % 16 == 0},
                           stream),
        name, "pack kernel launch");
  check(
      launch_moe_ep_slots(
          {plan, device_index(op.row_map), device_index(op.row_map), op.T, op.k, W, P, 0}, stream),
      name, "row map kernel launch");

  peers.exchange({{send_counts, recv_counts, size_t(El), 8, nccl::kInt64},
                  {send_blocks, recv_blocks, size_t(P) * size_t(row_bytes), 1, nccl::kUint8}});

  // What arrived, by local expert, then source.
  const MoeEpPlanParams receiver{plan,
                                 {send_counts, 1, 0, 1},
                                 {recv_counts, El, 1, 1},
                                 device_index(op.counts),
                                 device_index(op.recv_counts),
                                 W,
                                 El,
                                 P};
  check(launch_moe_ep_plan(receiver, stream), name, "plan kernel launch");
  check(launch_moe_ep_move({plan, make_arg(op.rows), static_cast<char*>(recv_blocks), W, El, P, Hd,
                            1, 0, row_bytes % 16 == 0 && vector16(op.rows)},
                           stream),
        name, "unpack kernel launch");
  check(launch_moe_ep_zero_tail(plan, make_arg(op.rows), op.C, Hd, El, stream), name,
        "zero kernel launch");
}

void moe_ep_combine(const ExecContext& context, const MoeEpCombine& op) {
  if (op.abstaining) return;
  const char* name = op.kName;
  const DeviceGuard guard(context, name);
  const Peers peers(op.comm, guard, name);
  const int64_t W = peers.size(), El = op.El, Hd = op.Hd, P = op.C / W, block_rows = W * P;
  const int64_t row_bytes = checked_product(name, Hd, dtype_size(op.expert_out.dtype));
  enum { kSendBlocks, kRecvBlocks, kPlan, kSlots };
  const Pieces scratch(
      {scratch_size(name, block_rows, row_bytes),
       peers.lone() ? 0 : scratch_size(name, block_rows, row_bytes),
       scratch_size(name, moe_ep_plan_words(W, El), 8), scratch_size(name, op.T, op.k, 8)},
      guard, name);
  void* send_blocks = scratch.at(kSendBlocks);
  void* recv_blocks = peers.lone() ? send_blocks : scratch.at(kRecvBlocks);
  const MoeEpPlan plan = moe_ep_carve_plan(scratch.at<int64_t>(kPlan), W, El);
  const MoeIndex slots{scratch.at(kSlots), op.k, 1, 1};
  const cudaStream_t stream = guard.stream();

  // The handle as dispatch left it: the plan, and where each slot's output
  // will land in the receive blocks.
  const MoeEpPlanParams both{
      plan, device_index(op.send_counts), device_index(op.recv_counts), {}, {}, W, El, P};
  check(launch_moe_ep_plan(both, stream), name, "plan kernel launch");
  check(launch_moe_ep_slots({plan, device_index(op.row_map), slots, op.T, op.k, W, P, 1}, stream),
        name, "slot map kernel launch");
  check(launch_moe_ep_move({plan, make_arg(op.expert_out), static_cast<char*>(send_blocks), W, El,
                            P, Hd, 1, 1, row_bytes % 16 == 0 && vector16(op.expert_out)},
                           stream),
        name, "pack kernel launch");

  peers.exchange({{send_blocks, recv_blocks, size_t(P) * size_t(row_bytes), 1, nccl::kUint8}});

  const MoeGatherParams sum{compact(recv_blocks, op.expert_out.dtype, block_rows, Hd),
                            make_arg(op.topk_weights),
                            make_arg(op.y),
                            slots,
                            block_rows,
                            op.T,
                            op.k,
                            Hd,
                            row_bytes % 16 == 0 && vector16(op.y)};
  check(launch_moe_gather(sum, stream), name, "combine kernel launch");
}

}  // namespace

std::span<const Kernel> moe_ep_kernels() {
  static const Kernel kernels[] = {
      kernel<MoeEpDispatch, &moe_ep_dispatch, &dispatch_accepts>(kFloats),
      kernel<MoeEpCombine, &moe_ep_combine, &combine_accepts>(kFloats),
  };
  return kernels;
}

}  // namespace hops::cuda
