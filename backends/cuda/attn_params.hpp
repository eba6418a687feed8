// The attention family's kernel parameters and launch functions (attn*.cu),
// shared with its host side (attn_host.cpp). nvcc sees only this header and
// cuda_params.hpp.
#pragma once

#include "cuda_params.hpp"

namespace hops::cuda {

inline constexpr int64_t kAttnMaxHeadDim = 256;  // D limit of every attention kernel

// A 2-D index table on the device (block_table), read as int64.
struct Index2 {
  const void* data = nullptr;
  int64_t stride0 = 0, stride1 = 1;
  int is64 = 1;
};

// attn_prefill: q, gate, o [B,Tq,Hq,D]; k, v [B,Tk,Hkv,D]; lse [B,Hq,Tq] (f32).
struct AttnFwdParams {
  Arg q, k, v, gate, o, lse;
  Index cu_q, cu_k;
  int64_t B, Tq, Tk, Hq, Hkv, D, N;  // N sequences: B dense, or cu_seqlens' count
  float scale;
  int causal;
};

// attn_prefill_bwd: the forward's shapes, plus o, d_o, dq, dgate like q and
// dk, dv like k.
struct AttnBwdParams {
  Arg q, k, v, gate, o, lse, d_o, dq, dk, dv, dgate;
  Index cu_q, cu_k;
  int64_t B, Tq, Tk, Hq, Hkv, D, N;
  float scale;
  int causal;
  // The sm_90a dK/dV kernel's split of each group's query heads over CTAs
  // (attn_dkv_sm90_splits); above 1 its f32 partials go to scratch and a
  // second kernel sums them in order.
  int64_t dkv_splits = 1;
};

// attn_decode: q, o [N,L,Hq,D]; caches [num_blocks,block_size,Hkv,D]. The
// context of each sequence is cut into `splits` pieces of `chunk` tokens
// (plan_attn_decode, from the table's capacity and the SM count); with more
// than one, their partial results go to scratch and a second kernel merges
// them in order.
struct AttnDecodeParams {
  Arg q, k_cache, v_cache, o;
  Index2 block_table;
  Index seq_lens;
  int64_t N, L, Hq, Hkv, D, num_blocks, block_size, max_blocks;
  int64_t splits, chunk;
  float scale;
};

// kv_cache_write: k, v [T,Hkv,D] into caches [num_blocks,block_size,Hkv,D].
struct KvCacheWriteParams {
  Arg k, v, k_cache, v_cache;
  Index slots;
  int64_t T, Hkv, D, num_blocks, block_size;
};

// `tensor_cores`: the host found f16/bf16 storage, D in {64, 128, 256} and
// unit-stride, 16-byte-aligned head rows (attn_host.cpp); the kernels then
// run on mma.sync, else on the general f32 CUDA-core kernels.
cudaError_t launch_attn_prefill(const AttnFwdParams& p, int dtype, bool tensor_cores,
                                cudaStream_t stream);
// The Hopper forward (attn_prefill_sm90.cu: wgmma, TMA, warp specialization)
// for calls that pass the tensor-core check. Returns cudaErrorNotSupported,
// having launched nothing, when it cannot take the call (not a compute
// capability 9.0 device, a scale <= 0, a layout TMA cannot describe); the
// caller then runs launch_attn_prefill.
cudaError_t launch_attn_prefill_sm90(const AttnFwdParams& p, int dtype, cudaStream_t stream);
// The backward needs attn_bwd_scratch_bytes of stream-ordered scratch: the
// gated output gradient (q's dtype), the row dot products Delta (f32), and
// with p.dkv_splits > 1 the dK/dV partials (f32).
size_t attn_bwd_scratch_bytes(const AttnBwdParams& p, int dtype);
// `path`: which dQ and dK/dV kernels a tensor-core call runs. automatic: the
// sm_90a ones where they can take the call (attn_dq_sm90, attn_dkv_sm90), else
// mma.sync; mma: always mma.sync; wgmma: cudaErrorNotSupported, nothing
// launched, where an sm_90a one cannot take the call.
enum class BwdPath { automatic, mma, wgmma };
cudaError_t launch_attn_prefill_bwd(const AttnBwdParams& p, int dtype, bool tensor_cores,
                                    BwdPath path, void* scratch, cudaStream_t stream);
// The backward's Hopper kernels (attn_bwd_dq_sm90.cu, attn_bwd_sm90.cu), run
// after the prepare kernel wrote dO' (`d_o`) and Delta. With launch = false
// they only answer whether they can take the call: cudaErrorNotSupported
// (nothing launched) when not (not a compute capability 9.0 device, a view
// TMA cannot describe).
cudaError_t attn_dq_sm90(const AttnBwdParams& p, int dtype, const void* d_o, const float* delta,
                         bool launch, cudaStream_t stream);
cudaError_t attn_dkv_sm90(const AttnBwdParams& p, int dtype, const void* d_o, const float* delta,
                          float* partial, bool launch, cudaStream_t stream);
// How many CTAs share each key block's query heads in the sm_90a dK/dV
// kernel on `sms` multiprocessors: a power of 2 dividing Hq / Hkv, doubled
// while the grid is under 2 CTAs per SM (under causality the first key
// blocks walk every query block: one CTA each would leave most SMs idle at
// the end). T = 4096 at D = 256, Hq 16, Hkv 2 on 132 SMs: 4; T = 32768: 1.
// 1 where the kernel cannot run (not a compute capability 9.0 device).
int64_t attn_dkv_sm90_splits(const AttnBwdParams& p, int sms);
// Sets p.splits and p.chunk for `sms` multiprocessors: whole waves of the
// kernel's resident CTAs with the fewest pieces.
cudaError_t plan_attn_decode(AttnDecodeParams& p, int dtype, bool tensor_cores, int sms);
// The decode's split partials: (m, l, o[D]) in f32 per (n, l, query head,
// split); none when the tensor-core kernel has one piece per sequence.
size_t attn_decode_scratch_bytes(const AttnDecodeParams& p, bool tensor_cores);
cudaError_t launch_attn_decode(const AttnDecodeParams& p, int dtype, bool tensor_cores,
                               void* scratch, cudaStream_t stream);
// `vector`: every row unit-stride and 16-byte aligned (16-byte copies).
cudaError_t launch_kv_cache_write(const KvCacheWriteParams& p, int dtype, bool vector,
                                  cudaStream_t stream);

}  // namespace hops::cuda
