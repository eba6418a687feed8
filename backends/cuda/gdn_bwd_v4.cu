// gdn_chunk_bwd v4 (docs/CUDA_NOTES.md, "gdn_chunk_bwd v4"), opt-in by
// HOPS_CUDA_GDN_BWD=v4: recompute instead of store. Four launches: the
// forward's records and its state sweep writing S^T at every chunk start
// (gdn_chunk_tc.cu), the reverse sweep for dH^T and dh0 (gdn_bwd_v4_sweep.cu)
// and the fused per-(chunk, key head) gradients (gdn_bwd_v4_grad.cu).
// Scratch: the records and the two 16-bit state arrays, ~1.7x the forward's
// activations at Qwen3.5's shapes (v3: ~15x).
#include <cstdlib>
#include <string>

#include "checked_math.hpp"
#include "device_common.cuh"
#include "gdn_bwd_v4.cuh"

namespace hops::cuda {

namespace {

ChunkParams forward_params(const ChunkBwdParams& p) {
  ChunkParams f{};
  f.q = p.q, f.k = p.k, f.v = p.v, f.g = p.g, f.beta = p.beta, f.h0 = p.h0;
  f.cu = p.cu;
  f.N = p.N, f.T = p.T, f.H = p.H, f.HV = p.HV, f.K = p.K, f.V = p.V;
  f.h0_k = p.h0_k, f.h0_v = p.h0_v;
  f.scale = p.scale, f.l2norm = p.l2norm, f.fused = 0;
  return f;
}

// Records at 0, then S^T and dH^T (256-byte aligned).
struct Layout {
  size_t states, dstates, total;  // byte offsets, and the end
};

Layout layout(const ChunkBwdParams& p) {
  constexpr const char* kOp = "gdn_chunk_bwd";
  const ChunkParams f = forward_params(p);
  const int64_t records = scratch_sum(kOp, chunk_tc_scratch_bytes(f), 255) / 256 * 256;
  const int64_t states = scratch_size(kOp, chunk_slots(f), p.cu.data ? 1 : p.N, p.HV, p.V, p.K, 2);
  const int64_t padded = scratch_sum(kOp, states, 255) / 256 * 256;
  return {static_cast<size_t>(records), static_cast<size_t>(records + padded),
          static_cast<size_t>(scratch_sum(kOp, records, padded, padded))};
}

}  // namespace

bool gdn_bwd_v4() {
  static const bool v4 = [] {
    const char* choice = std::getenv("HOPS_CUDA_GDN_BWD");
    return choice && std::string(choice) == "v4";
  }();
  return v4;
}

bool chunk_bwd_v4_supported(const ChunkBwdParams& p) {
  const int dtype = p.q.dtype;
  if (dtype != kF16 && dtype != kBF16) return false;
  for (const Arg* a : {&p.k, &p.v, &p.d_o, &p.dq, &p.dk, &p.dv}) {
    if (a->dtype != dtype) return false;
  }
  for (const Arg* a : {&p.q, &p.k, &p.v, &p.d_o, &p.dq, &p.dk, &p.dv}) {
    if (!head_rows_ok(*a)) return false;
  }
  if (p.K != kV4Dk || p.V != kV4Dk || p.H == 0 || p.HV % p.H != 0) return false;
  int device = 0, limit = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) ==
             cudaSuccess &&
         static_cast<size_t>(limit) >= chunk_grad_smem_bytes();
}

size_t chunk_bwd_v4_scratch_bytes(const ChunkBwdParams& p) { return layout(p).total; }

cudaError_t launch_gdn_chunk_bwd_v4(const ChunkBwdParams& p, void* scratch, cudaStream_t stream) {
  const ChunkParams f = forward_params(p);
  const Layout at = layout(p);
  char* base = static_cast<char*>(scratch);
  const V4Scratch s{{{base, chunk_slots(f)}, base + at.states}, base + at.dstates};
  const int dtype = p.q.dtype;
  cudaError_t status = launch_gdn_chunk_states(f, dtype, s.rec.records, s.rec.states, stream);
  if (status != cudaSuccess) return status;
  const bool half = dtype == kF16;
  status = half ? launch_reverse_dh<__half>(p, s, stream)
                : launch_reverse_dh<__nv_bfloat16>(p, s, stream);
  if (status != cudaSuccess) return status;
  return half ? launch_chunk_grad<__half>(p, s, stream)
              : launch_chunk_grad<__nv_bfloat16>(p, s, stream);
}

}  // namespace hops::cuda
