// The chunked GDN kernels' products for bf16 storage (gdn_chunk.cpp,
// gdn_chunk_bwd.cpp): both operands rounded to bf16 (to nearest even) and
// multiplied into fp32 sums on attention's bf16 products (attn_bf16.hpp) where
// they run on AMX tiles, as FLA does on GPUs. fp32 and f16 storage, CPUs
// without AMX and HOPS_CPU_GEMM=tiles keep the fp32 products (small_gemm.hpp):
// on the AMX Xeon, vdpbf16ps multiplied these shapes at 86 GFLOP/s against
// libxsmm's 150 in fp32, and the forward took 538 ms against 200.
#pragma once

#include "attn_bf16.hpp"
#include "small_gemm.hpp"

namespace hops::cpu::gdn {

// Head dims below one tile depth (32 bf16) keep the fp32 products. The tiles
// would multiply mostly padding there, and rounding costs the most: with
// use_qk_l2norm the gradient of a normalised q or k keeps only its part
// orthogonal to it, which at K = 2 cancels most of it, and a fuzzed
// gdn_chunk_bwd (K = 2, V = 7) reached 1.8e-2 relative error in dq on bf16
// products against 1.2e-3 on fp32 ones; over random inputs the worst
// gradient fell from 9.3e-3 at K = 2 to 2.7e-3 at K = 32 (docs/DECISIONS.md).
inline constexpr int64_t kMinBf16HeadDim = 32;

// Whether a chunk kernel whose inputs are stored as `storage`, with key and
// value head dims K and V, runs its products on bf16; decided per call, the
// engine once per process.
inline bool bf16_products(DType storage, int64_t K, int64_t V) {
  return storage == DType::bf16 && K >= kMinBf16HeadDim && V >= kMinBf16HeadDim &&
         attn::bf16_engine() == attn::Bf16Engine::amx;
}

// g's product with a and b rounded to bf16 and fp32 sums. The whole
// rectangle is multiplied: a triangular shape's stored zeros add nothing,
// and a lower_out product writes above its diagonal too. Each output is one
// chain over the depth (attn::bf16_product), so the bytes depend on the
// engine alone. Operands are packed per call into the calling thread's
// buffers.
void gemm_bf16(const Gemm& g);

// gemm_bf16 where `bf16`, else gemm.
inline void multiply(bool bf16, const Gemm& g) {
  if (bf16) return gemm_bf16(g);
  gemm(g);
}

}  // namespace hops::cpu::gdn
