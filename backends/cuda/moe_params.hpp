// The MoE family's kernel parameters and launch functions (moe_*.cu), shared
// with its host side (moe_host.cpp). nvcc sees only this header and
// cuda_params.hpp.
#pragma once

#include "cuda_params.hpp"

namespace hops::cuda {

// An int32/int64 tensor of rank 1 ([E] counts) or 2 ([T,k] ids, row maps) in
// device memory, read and written as int64. Device-resident inputs are read
// in place (the kernels treat values outside their range as dropped);
// host-resident ones, and host-resident outputs, go through contiguous int64
// scratch (moe_host.cpp).
struct MoeIndex {
  void* data = nullptr;
  int64_t stride0 = 0, stride1 = 0;
  int is64 = 1;
};

// moe_route: logits [T,E] -> weights [T,k] (their own float dtype), ids [T,k].
struct MoeRouteParams {
  Arg logits, weights;
  MoeIndex ids;
  int64_t T, E, k;
  int normalize, sigmoid;
};

// moe_dispatch: x [T,Hd] -> rows [T*k,Hd], counts [E], row_map [T,k].
// `vector`: x and rows unit-stride with 16-byte aligned rows. `version`: v2's
// bookkeeping (the default), v1's, or v3: v2's kernels as a programmatic
// dependent launch chain with its own copy kernel; v3_chain: that chain with
// v2's copy kernel (HOPS_CUDA_MOE_DISPATCH, moe_host.cpp).
enum class MoeDispatchVersion { v1, v2, v3, v3_chain };
struct MoeDispatchParams {
  Arg x, rows;
  MoeIndex ids, counts, row_map;
  int64_t T, k, Hd, E;
  int vector;
  MoeDispatchVersion version = MoeDispatchVersion::v1;
};

// moe_combine (weights present) and moe_dispatch_bwd (weights absent):
// out[t] = sum over the kept slots j, in order, of w[t,j] rows[row_map[t,j]].
struct MoeGatherParams {
  Arg rows, weights, out;  // rows [R,Hd], weights [T,k] (any float dtype), out [T,Hd]
  MoeIndex row_map;
  int64_t R, T, k, Hd;
  int vector;  // rows and out unit-stride with 16-byte aligned rows
};

// moe_combine_bwd: d_rows [R,Hd] and, when present, d_weights [T,k].
struct MoeCombineBwdParams {
  Arg rows, weights, dy, d_rows, d_weights;
  MoeIndex row_map;
  int64_t R, T, k, Hd;
  int vector;  // rows, dy and d_rows unit-stride with 16-byte aligned rows
};

// moe_expert_mlp and its backward. `tensor_cores`: the host found f16/bf16
// storage, Hd and I multiples of 8 and every float tensor unit-stride along
// its last dim with 16-byte aligned rows (moe_host.cpp); the GEMMs then run on
// mma.sync, else on the general f32 CUDA-core kernel. `sms`: the device's
// multiprocessor count (the persistent grids). The forward's tensor-core
// GEMMs run on wgmma (sm_90a) where they can, else on mma.sync; `path` may
// force either (HOPS_CUDA_MOE_MLP, moe_host.cpp).
enum class MoeMlpPath { any, mma, wgmma };
struct MoeMlpParams {
  Arg rows, gate_up, down, out;  // [R,Hd], [E,2I,Hd], [E,Hd,I], [R,Hd]
  MoeIndex counts;
  int64_t R, Hd, E, I;
  int tensor_cores, sms;
  MoeMlpPath path = MoeMlpPath::any;
};

struct MoeMlpBwdParams {
  Arg rows, gate_up, down, d_out, d_rows, d_gate_up, d_down;  // the weight gradients optional
  MoeIndex counts;
  int64_t R, Hd, E, I;
  int tensor_cores, sms;
};

cudaError_t launch_moe_route(const MoeRouteParams& p, cudaStream_t stream);
// Dispatch counts and places the slots in chunks (no float atomics, no
// order-dependent integer atomics) in moe_dispatch_scratch_bytes of scratch.
size_t moe_dispatch_scratch_bytes(const MoeDispatchParams& p);
cudaError_t launch_moe_dispatch(const MoeDispatchParams& p, void* scratch, cudaStream_t stream);
cudaError_t launch_moe_gather(const MoeGatherParams& p, cudaStream_t stream);
size_t moe_combine_bwd_scratch_bytes(const MoeCombineBwdParams& p);
cudaError_t launch_moe_combine_bwd(const MoeCombineBwdParams& p, void* scratch,
                                   cudaStream_t stream);
size_t moe_expert_mlp_scratch_bytes(const MoeMlpParams& p);
// cudaErrorNotSupported where path is wgmma and the sm_90a kernels cannot
// take the call.
cudaError_t launch_moe_expert_mlp(const MoeMlpParams& p, void* scratch, cudaStream_t stream);
size_t moe_expert_mlp_bwd_scratch_bytes(const MoeMlpBwdParams& p);
cudaError_t launch_moe_expert_mlp_bwd(const MoeMlpBwdParams& p, void* scratch, cudaStream_t stream);

}  // namespace hops::cuda
