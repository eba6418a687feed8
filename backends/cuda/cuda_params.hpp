// The interface between the host side of the CUDA backend (<family>_host.cpp
// and cuda_host.hpp: compiled by the C++ compiler, where the plugin's headers
// and fmt live) and the kernels (*.cu, compiled by nvcc, which sees only this
// header): plain parameter structs passed by value to the kernels, and one
// launch function per kernel that returns the launch's CUDA status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace hops::cuda {

enum : int { kF32 = 0, kF16 = 1, kBF16 = 2, kI32 = 3, kI64 = 4 };

// A tensor of rank <= 4 (every GDN and conv tensor).
struct Arg {
  char* data = nullptr;  // base + byte_offset; null when absent
  int dtype = kF32;
  int ndim = 0;
  int64_t shape[4] = {};
  int64_t stride[4] = {};  // in elements
};

// A tensor of any rank viewed as [rows, last]; the leading dims are decomposed
// from the row index in the kernel (gating and rmsnorm take [..., D]).
struct RowsArg {
  char* data = nullptr;
  int dtype = kF32;
  int lead = 0;
  int64_t shape[8] = {};
  int64_t stride[8] = {};
  int64_t step = 1;  // stride of the last dim
};

// An index tensor on the device: int32 or int64, read as int64; device-
// resident values are clamped by the kernels (docs/DECISIONS.md).
struct Index {
  const void* data = nullptr;  // null: absent
  int64_t stride = 1;
  int is64 = 1;
};

struct GatingParams {
  RowsArg a, b, g, beta;
  Arg A_log, dt_bias;
  int64_t rows, HV;
  float softplus_beta, softplus_threshold;
};

struct NormParams {
  RowsArg x, z, y;
  Arg weight;
  int64_t rows, D;
  float eps;
};

// Issue 21's conv1d v4 paths (conv1d.cu, conv1d_bwd.cu: the sm_90 bulk-copy
// forward and backward, the decode-only conv1d_update) by default;
// HOPS_CONV_V4=0 takes the v3 kernels they replace. conv_v4() is the choice in
// force (HOPS_CONV_V4=0|1 over kConvV4).
inline constexpr bool kConvV4 = true;
bool conv_v4();

struct ConvParams {
  Arg x, y, weight, bias, initial_state, final_state;  // x, y as [B,T,D]
  Index cu;
  Index ids;  // seq_idx: the id of flat token row * T + t (absent: none)
  int64_t B, T, D, N, W;
  int silu;
  int vector;  // unit channel stride and 16-byte aligned rows: 16-byte accesses
};

struct ConvUpdateParams {
  Arg x, y, state, weight, bias;  // x, y as [N,L,D]; state [S,D,SL]
  Index slots;
  int64_t N, L, D, W, S, SL;
  int silu;
  Index seen;        // cache_seqlens: the state is circular (absent: shifted)
  int zero_skipped;  // skipped sequences get y = 0
};

// What the GDN forwards compute in the kernel (their `fused`, a bit set): the
// gate g = -exp(A_log) softplus(a + dt_bias), beta = sigmoid(b), and that
// doubled (beta_mode 2). 0: g and beta as given.
enum : int { kFuseGate = 1, kFuseSigmoid = 2, kFuseDoubleBeta = 4 };

struct RecurrentParams {
  Arg q, k, v, g, beta, A_log, dt_bias, o, state;
  Index cu, slots;
  int64_t N, T, H, HV, K, V, S;
  int64_t k_step, v_step;  // state element (i, j) at i*k_step + j*v_step
  float scale;
  int l2norm, fused;  // fused: kFuse* bits
};

struct ChunkParams {
  Arg q, k, v, g, beta, A_log, dt_bias, o, h0, ht;
  Index cu;
  int64_t N, T, H, HV, K, V;
  int64_t h0_k, h0_v, ht_k, ht_v;  // state (i, j) steps
  float scale;
  int l2norm, fused;  // fused: kFuse* bits
};

inline constexpr int64_t kMaxHeadDim = 256;  // K limit of the GDN kernels

// Each returns the status of its launch(es) (cudaGetLastError after them).
// `dtype` is the dtype code of the activations (x, q).
cudaError_t launch_gdn_gating(const GatingParams& p, cudaStream_t stream);
cudaError_t launch_gated_rmsnorm(const NormParams& p, int dtype, cudaStream_t stream);
cudaError_t launch_conv1d_fwd(const ConvParams& p, int dtype, cudaStream_t stream);
cudaError_t launch_conv1d_update(const ConvUpdateParams& p, int dtype, cudaStream_t stream);
cudaError_t launch_gdn_recurrent(const RecurrentParams& p, int dtype, cudaStream_t stream);
// gdn_chunk_fwd: the tensor-core path (gdn_chunk_tc.cu) takes the common case
// (f16/bf16, K = 128, V % 32 == 0, unit-stride 16-byte-aligned head rows) and
// needs chunk_tc_scratch_bytes of stream-ordered scratch; the general kernel
// (gdn_chunk.cu) takes every other case.
bool chunk_tc_supported(const ChunkParams& p, int dtype);
size_t chunk_tc_scratch_bytes(const ChunkParams& p);
cudaError_t launch_gdn_chunk_tc(const ChunkParams& p, int dtype, void* scratch,
                                cudaStream_t stream);
cudaError_t launch_gdn_chunk_general(const ChunkParams& p, int dtype, cudaStream_t stream);
// The v4 backward's recompute (gdn_chunk_tc.cu): kernel 1's records into
// `records` (chunk_tc_scratch_bytes) and kernel 2 without O, writing 16-bit
// S^T [z][slot][HV][V][K] at every chunk start into `states`.
cudaError_t launch_gdn_chunk_states(const ChunkParams& p, int dtype, void* records, void* states,
                                    cudaStream_t stream);

// gdn_chunk_bwd (gdn_chunk_bwd.cu): q, k, v, d_o, dq, dk, dv share q's dtype;
// dg, dbeta have g's and beta's; the states are f32. Needs
// chunk_bwd_scratch_bytes of stream-ordered scratch.
struct ChunkBwdParams {
  Arg q, k, v, g, beta, d_o, h0, dht, dq, dk, dv, dg, dbeta, dh0;
  Index cu;
  int64_t N, T, H, HV, K, V;
  int64_t h0_k, h0_v, dht_k, dht_v, dh0_k, dh0_v;  // state (i, j) steps
  float scale;
  int l2norm;
};
size_t chunk_bwd_scratch_bytes(const ChunkBwdParams& p);
cudaError_t launch_gdn_chunk_bwd(const ChunkBwdParams& p, void* scratch, cudaStream_t stream);
// gdn_chunk_bwd v4 (gdn_bwd_v4*.cu), opt-in by HOPS_CUDA_GDN_BWD=v4 (read once:
// gdn_bwd_v4()): recomputes the chunk states and fuses the per-chunk gradients;
// f16/bf16, K = V = 128, unit-stride 16-byte-aligned head rows, a device with
// 226 KB of shared memory per block (Hopper); else v3.
bool gdn_bwd_v4();
bool chunk_bwd_v4_supported(const ChunkBwdParams& p);
size_t chunk_bwd_v4_scratch_bytes(const ChunkBwdParams& p);
cudaError_t launch_gdn_chunk_bwd_v4(const ChunkBwdParams& p, void* scratch, cudaStream_t stream);

// ---- conv1d_bwd and gated_rmsnorm_bwd (conv1d_bwd.cu, norm_bwd.cu) ----
// Both sum their weight gradients over tokens/rows deterministically: per-
// block partials in `scratch` (of *_scratch_bytes, from the stream-ordered
// pool), added in a fixed order by a second kernel.

struct ConvBwdParams {
  Arg x, weight, bias, initial_state, dy, d_final_state;  // x, dy, dx as [B,T,D]
  Arg dx, dweight, dbias, d_initial_state;
  Index cu;
  Index ids;  // seq_idx, as in ConvParams
  int64_t B, T, D, N, W;
  int silu;
  int vector;  // x, dy, dx: unit channel stride, rows aligned to 4 elements (vector access)
};

struct NormBwdParams {
  RowsArg x, z, dy, dx, dz;  // the same [rows, D] shape
  Arg weight, dweight;
  int64_t rows, D;
  float eps;
  int vector;  // unit last stride, 16-byte aligned rows of all five
};

size_t conv1d_bwd_scratch_bytes(const ConvBwdParams& p, int dtype);
cudaError_t launch_conv1d_bwd(const ConvBwdParams& p, int dtype, void* scratch,
                              cudaStream_t stream);
size_t gated_rmsnorm_bwd_scratch_bytes(const NormBwdParams& p, int dtype);
cudaError_t launch_gated_rmsnorm_bwd(const NormBwdParams& p, int dtype, void* scratch,
                                     cudaStream_t stream);

}  // namespace hops::cuda
