// The gdn family's host side: gdn_gating (elementwise.cu), gdn_recurrent
// (gdn_recurrent.cu), gdn_chunk_fwd (gdn_chunk.cu, gdn_chunk_tc.cu) and
// gdn_chunk_bwd (gdn_chunk_bwd.cu).
#include <algorithm>

#include "cuda_host.hpp"
#include "ops/gdn.hpp"

namespace hops::cuda {

namespace {

// The kFuse* bits of a forward: the gate with A_log, beta as beta_mode says.
int fusion(const GdnProblem& op) {
  int bits = op.fused_gating() ? kFuseGate : 0;
  if (op.beta_mode == BetaMode::sigmoid) bits |= kFuseSigmoid;
  if (op.beta_mode == BetaMode::double_sigmoid) bits |= kFuseSigmoid | kFuseDoubleBeta;
  return bits;
}

// The GDN kernels' limits, as the accepts check of their kernels: the plugin
// asks before running (and for supports_call), so a refused call reaches
// the next backend or the host with nothing written.
template <class Op>
void gdn_limits(const Op& op) {
  const char* name = Op::kName;
  if (op.K > kMaxHeadDim) {
    fail(HOPS_ERR_UNSUPPORTED, "{}: the cuda backend supports K <= {}, got K = {}", name,
         kMaxHeadDim, op.K);
  }
  if (op.sequences.count > 65535 || op.HV > 65535) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: the cuda backend supports at most 65535 sequences and value heads, got N = {}, HV = "
         "{}",
         name, op.sequences.count, op.HV);
  }
  // Grid x counts value-column blocks, or 64-token chunks (one per sequence at least) times
  // heads: launch dims are 32-bit, so a larger count would be cut off, not refused.
  constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;
  const int64_t chunks = op.T / 64 + 1 + op.sequences.count;
  if (op.V > kMaxGridX || chunks > kMaxGridX / std::max(op.HV, int64_t{1})) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: the cuda backend's grids hold at most 2^31 - 1 blocks a row, got V = {} and {} "
         "chunks x {} value heads",
         name, op.V, chunks, op.HV);
  }
}

void gdn_gating(const ExecContext& context, const GdnGating& op) {
  if (op.rows * op.HV == 0) return;
  const DeviceGuard guard(context, op.kName);
  const GatingParams p{make_rows(op.a),
                       make_rows(op.b),
                       make_rows(op.g),
                       make_rows(op.beta),
                       make_arg(op.A_log),
                       make_arg(op.dt_bias),
                       op.rows,
                       op.HV,
                       static_cast<float>(op.softplus_beta),
                       static_cast<float>(op.softplus_threshold)};
  check(launch_gdn_gating(p, guard.stream()), op.kName, "gating kernel launch");
}

void gdn_recurrent(const ExecContext& context, const GdnRecurrent& op) {
  const int64_t N = op.sequences.count;
  if (N == 0 || op.HV == 0) return;
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu(op.sequences.cu_seqlens, guard, op.kName);
  const StagedIndex slots(op.slots.indices, guard, op.kName);
  const RecurrentParams p{make_arg(op.q),
                          make_arg(op.k),
                          make_arg(op.v),
                          make_arg(op.g),
                          make_arg(op.beta),
                          make_arg(op.A_log),
                          make_arg(op.dt_bias),
                          make_arg(op.o),
                          make_arg(op.state),
                          cu.get(),
                          slots.get(),
                          N,
                          op.T,
                          op.H,
                          op.HV,
                          op.K,
                          op.V,
                          op.state.shape[0],
                          state_step(op.state, op.state_v_first, true),
                          state_step(op.state, op.state_v_first, false),
                          static_cast<float>(op.scale),
                          op.use_qk_l2norm,
                          fusion(op)};
  check(launch_gdn_recurrent(p, code_of(op.q.dtype), guard.stream()), op.kName,
        "recurrent kernel launch");
}

void gdn_chunk_fwd(const ExecContext& context, const GdnChunkFwd& op) {
  const int64_t N = op.sequences.count;
  if (N == 0 || op.HV == 0) return;
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu(op.sequences.cu_seqlens, guard, op.kName);
  const bool vf = op.state_v_first;
  const ChunkParams p{make_arg(op.q),
                      make_arg(op.k),
                      make_arg(op.v),
                      make_arg(op.g),
                      make_arg(op.beta),
                      make_arg(op.A_log),
                      make_arg(op.dt_bias),
                      make_arg(op.o),
                      make_arg(op.initial_state),
                      make_arg(op.final_state),
                      cu.get(),
                      N,
                      op.T,
                      op.H,
                      op.HV,
                      op.K,
                      op.V,
                      state_step(op.initial_state, vf, true),
                      state_step(op.initial_state, vf, false),
                      state_step(op.final_state, vf, true),
                      state_step(op.final_state, vf, false),
                      static_cast<float>(op.scale),
                      op.use_qk_l2norm,
                      fusion(op)};
  const int dtype = code_of(op.q.dtype);
  if (chunk_tc_supported(p, dtype)) {
    const Scratch scratch(chunk_tc_scratch_bytes(p), guard, op.kName);
    check(launch_gdn_chunk_tc(p, dtype, scratch.data(), guard.stream()), op.kName,
          "tensor-core chunk kernels launch");
  } else {
    check(launch_gdn_chunk_general(p, dtype, guard.stream()), op.kName, "chunk kernel launch");
  }
}

void gdn_chunk_bwd(const ExecContext& context, const GdnChunkBwd& op) {
  const int64_t N = op.sequences.count;
  if (N == 0 || op.HV == 0) return;
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu(op.sequences.cu_seqlens, guard, op.kName);
  const bool vf = op.state_v_first;
  const ChunkBwdParams p{make_arg(op.q),
                         make_arg(op.k),
                         make_arg(op.v),
                         make_arg(op.g),
                         make_arg(op.beta),
                         make_arg(op.d_o),
                         make_arg(op.initial_state),
                         make_arg(op.d_final_state),
                         make_arg(op.dq),
                         make_arg(op.dk),
                         make_arg(op.dv),
                         make_arg(op.dg),
                         make_arg(op.dbeta),
                         make_arg(op.dh0),
                         cu.get(),
                         N,
                         op.T,
                         op.H,
                         op.HV,
                         op.K,
                         op.V,
                         state_step(op.initial_state, vf, true),
                         state_step(op.initial_state, vf, false),
                         state_step(op.d_final_state, vf, true),
                         state_step(op.d_final_state, vf, false),
                         state_step(op.dh0, vf, true),
                         state_step(op.dh0, vf, false),
                         static_cast<float>(op.scale),
                         op.use_qk_l2norm};
  if (gdn_bwd_v4() && chunk_bwd_v4_supported(p)) {
    const Scratch scratch(chunk_bwd_v4_scratch_bytes(p), guard, op.kName);
    check(launch_gdn_chunk_bwd_v4(p, scratch.data(), guard.stream()), op.kName,
          "backward chunk kernels (v4) launch");
    return;
  }
  const Scratch scratch(chunk_bwd_scratch_bytes(p), guard, op.kName);
  check(launch_gdn_chunk_bwd(p, scratch.data(), guard.stream()), op.kName,
        "backward chunk kernels launch");
}

}  // namespace

std::span<const Kernel> gdn_kernels() {
  static const Kernel kernels[] = {
      kernel<GdnChunkFwd, &gdn_chunk_fwd, &gdn_limits<GdnChunkFwd>>(kFloats),
      kernel<GdnRecurrent, &gdn_recurrent, &gdn_limits<GdnRecurrent>>(kFloats),
      kernel<GdnGating, &gdn_gating>(kFloats),
      kernel<GdnChunkBwd, &gdn_chunk_bwd, &gdn_limits<GdnChunkBwd>>(kFloats),
  };
  return kernels;
}

}  // namespace hops::cuda
