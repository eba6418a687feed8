// Expert parallelism: the MoE dispatch and combine across the ranks of a
// communicator (hops_exec.comm). Each of W ranks owns El = E / W consecutive
// experts; dispatch sends every kept (token, slot) row to the rank owning its
// expert, combine brings the expert outputs back and sums them with the
// weights. Concatenated over the ranks, the results are those of moe_dispatch
// and moe_combine on the gathered problem (docs/OPS.md, docs/DECISIONS.md).
#pragma once

#include "../op.hpp"

namespace hops {

// The communicator of a call: exec.comm checked, or a lone rank when NULL.
struct Comm {
  int32_t kind = 0;  // 0: no communicator (one rank), else HOPS_COMM_*
  int32_t rank = 0, size = 1;
  void* handle = nullptr;
};
Comm check_comm(const Call& call);

// What a rank tells the others before any data moves, so that all of them
// fail together (bad arguments on one rank, ranks that disagree) instead of
// some waiting forever in an exchange. Collective ops carry one.
struct EpAgreement {
  int32_t op = 0;      // 1 dispatch, 2 combine
  int32_t status = 0;  // HOPS_OK, or why this rank rejects the call
  int32_t rank = 0, size = 0;
  int64_t E = 0, k = 0, Hd = 0, C = 0;
  int32_t dtype = 0, reserved = 0;
};

struct MoeEpDispatch {
  static constexpr const char* kName = "moe_ep_dispatch";
  static constexpr const char* kDoc =
      "expert-parallel dispatch: each kept slot's token row goes to the rank owning its expert, "
      "grouped there by local expert, then source rank, token and slot (exec->comm)";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 3;
  static constexpr int kPrimaryArg = 0;
  static constexpr bool kCollective = true;
  using Signature = hops_moe_ep_dispatch_fn;
  struct Arg {
    enum : int { x, topk_ids, rows, counts, row_map, send_counts, recv_counts };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("x", HOPS_DTYPE_FLOATS, "[T,Hd]", "this rank's tokens"),
      input("topk_ids", HOPS_DTYPE_INDEX, "[T,k]", "global expert ids; -1 drops the slot"),
      output("rows", HOPS_DTYPE_FLOATS, "[C,Hd]",
             "rows for this rank's experts (dtype of x), by local expert, then source rank, "
             "token and slot; zero past them; C at least the rows that arrive"),
      output("counts", HOPS_DTYPE_INDEX, "[El]", "rows of each local expert, El = E / ranks"),
      output("row_map", HOPS_DTYPE_INDEX, "[T,k]",
             "where slot (t, j) leaves from, -1 when dropped (for combine)"),
      output("send_counts", HOPS_DTYPE_INDEX, "[E]", "this rank's slots per expert (for combine)"),
      output("recv_counts", HOPS_DTYPE_INDEX, "[ranks,El]",
             "rows received per source rank and local expert (for combine)"),
  };

  Tensor x, topk_ids, rows, counts, row_map, send_counts, recv_counts;
  int64_t T = 0, k = 0, Hd = 0, E = 0, El = 0, C = 0;
  Comm comm;
  // Set on a rank whose arguments failed validation: its kernel only tells
  // the other ranks, which then fail too (op.cpp, OpDef::abstain).
  bool abstaining = false;
  EpAgreement agreement() const {
    return {1, HOPS_OK, comm.rank, comm.size, E, k, Hd, C, static_cast<int32_t>(x.dtype), 0};
  }
  static MoeEpDispatch check(const Call& call);
  static MoeEpDispatch abstain(const hops_exec& exec);
};

struct MoeEpCombine {
  static constexpr const char* kName = "moe_ep_combine";
  static constexpr const char* kDoc =
      "expert-parallel combine: the expert outputs go back to their tokens' ranks, "
      "y[t] = sum over the kept slots j of topk_weights[t, j] * output, in slot order";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 3;
  static constexpr int kPrimaryArg = 0;
  static constexpr bool kCollective = true;
  using Signature = hops_moe_ep_combine_fn;
  struct Arg {
    enum : int { expert_out, row_map, topk_weights, send_counts, recv_counts, y };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("expert_out", HOPS_DTYPE_FLOATS, "[C,Hd]",
            "outputs for moe_ep_dispatch's rows, in their order"),
      input("row_map", HOPS_DTYPE_INDEX, "[T,k]", "moe_ep_dispatch's row map"),
      input("topk_weights", HOPS_DTYPE_FLOATS, "[T,k]", "routing weights (any float dtype)"),
      input("send_counts", HOPS_DTYPE_INDEX, "[E]", "moe_ep_dispatch's send counts"),
      input("recv_counts", HOPS_DTYPE_INDEX, "[ranks,El]", "moe_ep_dispatch's receive counts"),
      output("y", HOPS_DTYPE_FLOATS, "[T,Hd]", "combined tokens (dtype of expert_out)"),
  };

  Tensor expert_out, row_map, topk_weights, send_counts, recv_counts, y;
  int64_t T = 0, k = 0, Hd = 0, E = 0, El = 0, C = 0;
  Comm comm;
  bool abstaining = false;
  EpAgreement agreement() const {
    return {2, HOPS_OK, comm.rank, comm.size, E, k, Hd, C, static_cast<int32_t>(expert_out.dtype),
            0};
  }
  static MoeEpCombine check(const Call& call);
  static MoeEpCombine abstain(const hops_exec& exec);
};

// The family's ops with their ABI indices (plugin/families.cpp lists the families).
std::span<const OpEntry> moe_ep_ops();

}  // namespace hops
