// What the GDN forward (gdn.cpp) and backward (gdn_bwd.cpp) share: the
// per-token data of gdn_prepare and the state layout the kernels take.
#pragma once

#include <optional>

#include "call.hpp"
#include "ops/gdn.hpp"

namespace hops::opencl {

// The kernels take H, HV, K and V as int: HOPS_ERR_UNSUPPORTED naming the op
// (`name`) when one does not fit.
void check_kernel_ints(const GdnProblem& op, const char* name);

// Decay, beta and the l2 norms of every (b, t, hv) (TOKEN_INFO floats each,
// common.cl), computed by gdn_prepare into a scratch buffer; without
// key_stats, q and k are not read (norms 1, q^.k^ 0) for a kernel that
// normalises them itself.
cl_mem prepare_tokens(Call& call, const GdnProblem& op, bool key_stats = true);

// A state tensor's strides as the kernels take them: (index, hv, k step, v step).
cl_long4 state_steps(const Tensor& state, bool v_first);

// The chunked form (gdn_chunk.cpp, gdn_chunk.cl) on this device: the chunk
// length, the value columns per sweep work-group and its size.
struct ChunkPlan {
  int64_t chunk, tile;
  size_t sweep_group;
};

// Whether gdn_chunk_fwd takes the chunked form of CPU devices
// (gdn_chunk_rows.cl): K and V multiples of 16 and, on a CPU device, at
// least 32 tokens per sequence on average (HOPS_OPENCL_GDN_FORM=rows forces
// it on any device).
bool rows_form(const Call& call, const GdnProblem& op);

// gdn_chunk_fwd in that form, after gdn_prepare filled `info` (key_stats off).
void rows_forward(Call& call, const GdnChunkFwd& op, cl_mem info, const IndexArg& cu_seqlens);

// The chunked form's tiles, or nullopt where the token scan takes the call:
// too few tokens per sequence, or tiles that do not fit the device's local
// memory (docs/OPENCL.md has the rule).
std::optional<ChunkPlan> chunk_plan(const Call& call, const GdnProblem& op, bool backward);

// gdn_chunk_fwd in the chunked form, after gdn_prepare filled `info`.
void chunked_forward(Call& call, const GdnChunkFwd& op, cl_mem info, const IndexArg& cu_seqlens,
                     const ChunkPlan& plan);

// gdn_chunk_bwd in the chunked form: writes dv and dh0, and the shares
// gdn_bwd_reduce adds (one block per value head) into `partial`.
void chunked_backward(Call& call, const GdnChunkBwd& op, cl_mem info, const IndexArg& cu_seqlens,
                      const ChunkPlan& plan, cl_mem partial);

}  // namespace hops::opencl
