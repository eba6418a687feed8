#include "moe_ep.hpp"

#include <algorithm>

#include "checked_math.hpp"

namespace hops {

namespace {

// The descriptor as the host wrote it; kind 0 when it is unusable (too
// small, an unknown kind, no handle), so that no engine takes it.
Comm read_comm(const hops_exec& exec) {
  Comm comm;
  const hops_comm* given = exec.comm;
  if (!given || given->struct_size < sizeof(hops_comm)) return comm;
  if (given->kind != HOPS_COMM_MPI && given->kind != HOPS_COMM_NCCL) return comm;
  if (!given->handle) return comm;
  return {given->kind, given->rank, given->size, given->handle};
}

// Every entry of a host-resident [T,k] map lies in [-1, limit).
void check_ids(const Call& call, int arg, int64_t limit, std::string_view what) {
  const Tensor& map = call.tensor(arg);
  if (!host_accessible(map.device)) return;
  for (int64_t t = 0; t < map.shape[0]; ++t) {
    for (int64_t j = 0; j < map.shape[1]; ++j) {
      const int64_t value = read_index(map, t, j);
      if (value < -1 || value >= limit) {
        call.fail(arg, "entry [{}, {}] is {}, expected -1 (dropped) or {} in [0, {})", t, j, value,
                  what, limit);
      }
    }
  }
}

// Host-resident counts (any shape up to 2-D) are >= 0 and sum to at most `limit`.
void check_count_sum(const Call& call, int arg, int64_t limit, std::string_view what) {
  const Tensor& counts = call.tensor(arg);
  if (!host_accessible(counts.device)) return;
  const int64_t rows = counts.ndim == 2 ? counts.shape[0] : 1;
  const int64_t cols = counts.shape[counts.ndim - 1];
  int64_t total = 0;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t count = counts.ndim == 2 ? read_index(counts, i, j) : read_index(counts, j);
      if (count < 0) call.fail(arg, "entry {} is {}, expected >= 0", i * cols + j, count);
      total += std::min(count, limit + 1);  // stays far from overflow
      if (total > limit) call.fail(arg, "sums to more than the {} {}", limit, what);
    }
  }
}

// E experts split evenly over the ranks: send_counts [E], counts [El],
// recv_counts [W, El] with W the communicator's size.
void check_split(const Call& call, const Comm& comm, const Shapes& dims, int experts_arg,
                 int ranks_arg) {
  if (dims["ranks"] != comm.size) {
    call.fail(ranks_arg, "dim 0 is {}, expected the communicator's {} ranks", dims["ranks"],
              comm.size);
  }
  if (dims["E"] % comm.size != 0) {
    call.fail(experts_arg, "E = {} experts do not split evenly over {} ranks", dims["E"],
              comm.size);
  }
  if (dims["El"] * comm.size != dims["E"]) {
    call.fail(ranks_arg, "dim 1 is El = {}, expected E / ranks = {} / {} = {}", dims["El"],
              dims["E"], comm.size, dims["E"] / comm.size);
  }
}

int64_t slots(const Call& call, int arg, int64_t T, int64_t k) {
  const auto n = try_mul(T, k);
  if (!n) call.fail(arg, "T*k = {}*{} overflows", T, k);
  return *n;
}

}  // namespace

Comm check_comm(const Call& call) {
  const hops_exec& exec = call.exec();
  if (!exec.comm) return {};
  const hops_comm& given = *exec.comm;
  const char* name = call.op_name();
  if (given.struct_size < sizeof(hops_comm)) {
    fail(HOPS_ERR_INVALID_ARGUMENT, "{}: argument 'exec': comm struct_size expected >= {}, got {}",
         name, sizeof(hops_comm), given.struct_size);
  }
  if (given.kind != HOPS_COMM_MPI && given.kind != HOPS_COMM_NCCL) {
    fail(HOPS_ERR_INVALID_ARGUMENT,
         "{}: argument 'exec': comm kind is {}, expected HOPS_COMM_MPI ({}) or HOPS_COMM_NCCL ({})",
         name, given.kind, int{HOPS_COMM_MPI}, int{HOPS_COMM_NCCL});
  }
  if (!given.handle) {
    fail(HOPS_ERR_INVALID_ARGUMENT,
         "{}: argument 'exec': comm handle is NULL, expected the engine's communicator", name);
  }
  if (given.size < 1) {
    fail(HOPS_ERR_INVALID_ARGUMENT, "{}: argument 'exec': comm size is {}, expected >= 1", name,
         given.size);
  }
  if (given.rank < 0 || given.rank >= given.size) {
    fail(HOPS_ERR_INVALID_ARGUMENT, "{}: argument 'exec': comm rank {} is outside [0, {})", name,
         given.rank, given.size);
  }
  return read_comm(exec);
}

MoeEpDispatch MoeEpDispatch::check(const Call& call) {
  MoeEpDispatch op;
  op.comm = check_comm(call);
  Shapes dims(call);
  dims.expect(Arg::x, {"T", "Hd"});
  dims.expect(Arg::topk_ids, {"T", "k"});
  dims.expect(Arg::rows, {"C", "Hd"});
  dims.expect(Arg::counts, {"El"});
  dims.expect(Arg::row_map, {"T", "k"});
  dims.expect(Arg::send_counts, {"E"});
  dims.expect(Arg::recv_counts, {"ranks", "El"});
  call.same_dtype(Arg::rows, Arg::x);
  check_split(call, op.comm, dims, Arg::send_counts, Arg::recv_counts);
  op.T = dims["T"], op.k = dims["k"], op.Hd = dims["Hd"], op.E = dims["E"];
  op.El = dims["El"], op.C = dims["C"];
  slots(call, Arg::topk_ids, op.T, op.k);
  check_ids(call, Arg::topk_ids, op.E, "an expert id");
  op.x = call.tensor(Arg::x), op.topk_ids = call.tensor(Arg::topk_ids);
  op.rows = call.tensor(Arg::rows), op.counts = call.tensor(Arg::counts);
  op.row_map = call.tensor(Arg::row_map), op.send_counts = call.tensor(Arg::send_counts);
  op.recv_counts = call.tensor(Arg::recv_counts);
  return op;
}

MoeEpDispatch MoeEpDispatch::abstain(const hops_exec& exec) {
  MoeEpDispatch op;
  op.comm = read_comm(exec);
  op.abstaining = true;
  return op;
}

MoeEpCombine MoeEpCombine::check(const Call& call) {
  MoeEpCombine op;
  op.comm = check_comm(call);
  Shapes dims(call);
  dims.expect(Arg::expert_out, {"C", "Hd"});
  dims.expect(Arg::row_map, {"T", "k"});
  dims.expect(Arg::topk_weights, {"T", "k"});
  dims.expect(Arg::send_counts, {"E"});
  dims.expect(Arg::recv_counts, {"ranks", "El"});
  dims.expect(Arg::y, {"T", "Hd"});
  call.same_dtype(Arg::y, Arg::expert_out);
  check_split(call, op.comm, dims, Arg::send_counts, Arg::recv_counts);
  op.T = dims["T"], op.k = dims["k"], op.Hd = dims["Hd"], op.E = dims["E"];
  op.El = dims["El"], op.C = dims["C"];
  const int64_t R = slots(call, Arg::row_map, op.T, op.k);
  check_ids(call, Arg::row_map, R, "a row");
  check_count_sum(call, Arg::send_counts, R, "slots (T*k)");
  check_count_sum(call, Arg::recv_counts, op.C, "rows of expert_out (C)");
  op.expert_out = call.tensor(Arg::expert_out), op.row_map = call.tensor(Arg::row_map);
  op.topk_weights = call.tensor(Arg::topk_weights);
  op.send_counts = call.tensor(Arg::send_counts), op.recv_counts = call.tensor(Arg::recv_counts);
  op.y = call.tensor(Arg::y);
  return op;
}

MoeEpCombine MoeEpCombine::abstain(const hops_exec& exec) {
  MoeEpCombine op;
  op.comm = read_comm(exec);
  op.abstaining = true;
  return op;
}

std::span<const OpEntry> moe_ep_ops() {
  static const OpEntry ops[] = {
      {20, &op_def<MoeEpDispatch>()},
      {21, &op_def<MoeEpCombine>()},
  };
  return ops;
}

}  // namespace hops
