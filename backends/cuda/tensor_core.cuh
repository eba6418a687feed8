// Tensor-core PTX wrappers every mma.sync kernel shares (gdn_chunk_tc.cu,
// attn*.cu, moe*.cu): ldmatrix / stmatrix on shared memory, mma.sync
// m16n8k16 with f32 accumulators, and two floats packed as one register of
// two 16-bit values. sm_80 and later.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace hops::cuda {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// Four 8x8 16-bit matrices; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
}
// The transpose of ldsm_x4's fragments stored: lane l's register i holds
// elements (l / 4, 2 (l % 4) + {0, 1}) of matrix i, which go to column l / 4
// of rows 2 (l % 4) + {0, 1}. stmatrix is sm_90's; sm_8x stores the halves one
// by one through the row addresses of their lanes.
__device__ __forceinline__ void stsm_x4_trans(void* p, uint32_t a, uint32_t b, uint32_t c,
                                              uint32_t d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  const uint32_t regs[4] = {a, b, c, d}, row = smem_u32(p);
  const int lane = static_cast<int>(threadIdx.x & 31), col = 2 * (lane >> 2),
            first = 2 * (lane & 3);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t lo = __shfl_sync(0xffffffffu, row, 8 * i + first);
    const uint32_t hi = __shfl_sync(0xffffffffu, row, 8 * i + first + 1);
    asm volatile("st.shared.b16 [%0], %1;\n" ::"r"(lo + col), "h"(static_cast<uint16_t>(regs[i]))
                 : "memory");
    asm volatile("st.shared.b16 [%0], %1;\n" ::"r"(hi + col),
                 "h"(static_cast<uint16_t>(regs[i] >> 16))
                 : "memory");
  }
#else
  asm volatile(
      "stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(smem_u32(p)),
      "r"(a), "r"(b), "r"(c), "r"(d)
      : "memory");
#endif
}

// d (16 x 8, f32) += a (16 x 16) b (16 x 8), 16-bit operands of type E. With
// g = lane / 4, t = lane % 4: a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..],
// A[g+8][2t+8..]}, b = {B[2t..][g], B[2t+8..][g]}, d = {D[g][2t], D[g][2t+1],
// D[g+8][2t], D[g+8][2t+1]}.
template <class E>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  if constexpr (std::is_same_v<E, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Two floats as one register of two E (lo in the low half), and back.
template <class E>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same_v<E, __nv_bfloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&r, &v, 4);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&r, &v, 4);
  }
  return r;
}
template <class E>
__device__ __forceinline__ float2 unpack2(uint32_t r) {
  if constexpr (std::is_same_v<E, __nv_bfloat16>) {
    __nv_bfloat162 v;
    memcpy(&v, &r, 4);
    return __bfloat1622float2(v);
  } else {
    __half2 v;
    memcpy(&v, &r, 4);
    return __half22float2(v);
  }
}

}  // namespace hops::cuda
