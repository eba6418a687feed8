// The expert-parallel ops' kernel parameters and launch functions
// (moe_ep.cu), shared with their host side (moe_ep_host.cpp), which runs them
// around moe_dispatch / moe_combine's kernels and NCCL's send / receive.
//
// Every peer has a fixed block of P = C / W rows in the send and receive
// buffers (C the rows of the call, W the ranks), so the bytes NCCL moves are
// known on the host; how many rows of a block are real is known only on the
// device, from the counts that travel beside the rows. No kernel here is
// read back by the host.
#pragma once

#include "moe_params.hpp"

namespace hops::cuda {

// Built on the device by launch_moe_ep_plan, in int64 scratch
// (moe_ep_plan_words entries).
struct MoeEpPlan {
  int64_t* send_first;    // [W + 1]: where peer d's rows start in the sender's grouped rows
  int64_t* send_kept;     // [W]: how many of them fit peer d's block (at most P)
  int64_t* block_first;   // [W][El + 1]: where local expert e starts in source s's block
  int64_t* row_first;     // [W][El]: where source s's rows of expert e start in the grouped rows
  int64_t* expert_first;  // [El + 1]: where local expert e starts; [El]: the rows received
};

struct MoeEpPlanParams {
  MoeEpPlan plan;
  MoeIndex send_counts;  // [E]: this rank's slots per global expert
  MoeIndex
      recv_counts;  // [W, El]: rows each source sends per local expert (null: sender side only)
  MoeIndex counts_out, recv_counts_out;  // dispatch's outputs [El], [W, El] (null in combine)
  int64_t W, El, P;
};

// Rows between the per-peer blocks [W*P, Hd] (compact scratch) and the grouped
// rows of a tensor: `by_source` picks the receiver's layout (rows by local
// expert, then source: block_first / row_first) over the sender's (peer d's
// rows contiguous from send_first[d]); `to_blocks` the direction.
struct MoeEpMoveParams {
  MoeEpPlan plan;
  Arg grouped;   // [rows, Hd], a tensor or compact scratch
  char* blocks;  // [W*P, Hd] compact
  int64_t W, El, P, Hd;
  int by_source, to_blocks;
  int vector;  // grouped unit-stride with 16-byte aligned rows, Hd*size a multiple of 16
};

// Slot (t, j) at row_map[t, j] of the sender's grouped rows: dispatch marks
// the slots whose row did not fit its peer's block dropped (-1) in place;
// combine writes where each slot's output lands in the receive blocks
// (d*P + i, or -1) to `out`.
struct MoeEpSlotParams {
  MoeEpPlan plan;
  MoeIndex row_map, out;
  int64_t T, k, W, P;
  int to_blocks;
};

size_t moe_ep_plan_words(int64_t W, int64_t El);
MoeEpPlan moe_ep_carve_plan(int64_t* words, int64_t W, int64_t El);
// send_counts [E] as contiguous int64 (what NCCL sends).
cudaError_t launch_moe_ep_stage_counts(MoeIndex counts, int64_t E, int64_t* out,
                                       cudaStream_t stream);
cudaError_t launch_moe_ep_plan(const MoeEpPlanParams& p, cudaStream_t stream);
cudaError_t launch_moe_ep_move(const MoeEpMoveParams& p, cudaStream_t stream);
cudaError_t launch_moe_ep_slots(const MoeEpSlotParams& p, cudaStream_t stream);
// Zeros rows [expert_first[El], C) of `rows` (past the rows that arrived).
cudaError_t launch_moe_ep_zero_tail(const MoeEpPlan& plan, Arg rows, int64_t C, int64_t Hd,
                                    int64_t El, cudaStream_t stream);

}  // namespace hops::cuda
