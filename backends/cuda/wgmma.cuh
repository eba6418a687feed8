// Hopper (sm_90a) PTX wrappers: mbarriers, TMA tile loads (cp.async.bulk.tensor),
// plain bulk copies (cp.async.bulk, sm_90) both ways, programmatic dependent
// launch (griddepcontrol), warpgroup MMA (wgmma.mma_async) with shared-memory
// matrix descriptors, the async-proxy fence, named barriers and setmaxnreg.
// Used by the sm_90a kernels (attn_prefill_sm90.cu, attn_bwd_sm90.cu,
// moe_mlp_sm90.cu, the conv1d bulk paths); the mma.sync kernels use
// tensor_core.cuh.
#pragma once

#include <cuda.h>  // CUtensorMap
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "tensor_core.cuh"  // smem_u32

namespace hops::cuda::sm90 {

// ---- mbarriers ---------------------------------------------------------------------

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count)
               : "memory");
}
// Makes initialized barriers visible to the async proxy (TMA) before the
// CTA barrier that follows.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival that also expects `bytes` more transaction bytes (the TMA loads
// that complete on this barrier).
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
// Waits until the phase of parity `parity` has completed (a fresh barrier
// counts its phase before the first as complete: parity 1 returns at once).
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = smem_u32(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
}

// ---- TMA ---------------------------------------------------------------------------

// A box of a rank-4 tensor map at element coordinates (c0 innermost) into smem
// at `dst`, completing `bar`'s transaction bytes. `map` is a __grid_constant__
// kernel parameter.
__device__ __forceinline__ void tma_load_4d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(bar))
      : "memory");
}
// Boxes of rank-2 and rank-3 maps, likewise.
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, uint64_t* bar,
                                            int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(smem_u32(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// ---- bulk copies (cp.async.bulk, no tensor map) -------------------------------------

// `bytes` (a multiple of 16; both addresses 16-byte aligned) from global memory
// into smem at `dst`, completing `bar`'s transaction bytes.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes,
                                          uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
}
// An L2 policy that evicts first: for data written once and not read again
// soon (a streaming kernel's outputs), as __stcs does for ordinary stores.
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
// `bytes` from smem at `src` to global memory, in the calling thread's current
// bulk group (bulk_commit closes it), with the L2 eviction `policy`.
__device__ __forceinline__ void bulk_store(void* dst, const void* src, uint32_t bytes,
                                           uint64_t policy) {
  asm volatile(
      "cp.async.bulk.global.shared::cta.bulk_group.L2::cache_hint [%0], [%1], %2, %3;\n" ::"l"(dst),
      "r"(smem_u32(src)), "r"(bytes), "l"(policy)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// Waits until at most kPending of this thread's bulk groups still read their
// smem source (the smem may then be overwritten).
template <int kPending>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
}

// ---- programmatic dependent launch ----------------------------------------------------

// Lets the next kernel in the stream, launched with programmatic stream
// serialization, start its CTAs once every CTA of this grid has called this.
__device__ __forceinline__ void launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}
// Waits until the grids this one depends on programmatically have completed
// and their memory is visible (at once without such a dependency).
__device__ __forceinline__ void wait_prerequisites() {
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
}

// ---- ordering, barriers, registers -------------------------------------------------

// Generic-proxy smem writes (ordinary stores) made visible to the async proxy
// (wgmma, TMA) that reads them after the next barrier.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Named barrier `id` (1..15; 0 is __syncthreads) over `threads` threads.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Per-warpgroup register budgets (need a register cap at kernel entry:
// __launch_bounds__(threads, 1)).
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// ---- wgmma ---------------------------------------------------------------------------

// Shared-memory matrix descriptor, 128-byte swizzle (the layout TMA writes with
// CU_TENSOR_MAP_SWIZZLE_128B into 1024-byte aligned tiles): start address,
// leading and stride byte offsets (16-byte units), layout type 1 in bits 62-63.
// K-major operands (rows of 64 16-bit elements, 8-row groups 1024 bytes
// apart): lbo unused (1), sbo 1024; advancing K by 16 adds 32 bytes to the
// start inside a 64-column block. MN-major operands (V as B of P V): lbo = the
// distance between 64-column blocks, sbo = 1024 between 8-row (K) groups.
__device__ __forceinline__ uint64_t smem_desc(const void* p, uint32_t lbo, uint32_t sbo) {
  return uint64_t{(smem_u32(p) & 0x3FFFFu) >> 4} | (uint64_t{lbo >> 4} << 16) |
         (uint64_t{sbo >> 4} << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Keeps the compiler from moving accesses of accumulator registers across
// wgmma issue / wait points (the registers are "written" here).
template <int kN>
__device__ __forceinline__ void fence_operand(float (&d)[kN][4]) {
#pragma unroll
  for (int j = 0; j < kN; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
}

// Operand lists: accumulator tiles j.. of d (float[N/8][4], the m64nN layout:
// d[j] = {D[g][8j+2t], D[g][8j+2t+1], D[g+8][8j+2t], D[g+8][8j+2t+1]} with
// g = 16 warp + lane / 4, t = lane % 4), and their "%i" placeholders.
#define HOPS_ACC1(d, j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define HOPS_ACC2(d, j) HOPS_ACC1(d, j), HOPS_ACC1(d, (j) + 1)
#define HOPS_ACC4(d, j) HOPS_ACC2(d, j), HOPS_ACC2(d, (j) + 2)
#define HOPS_ACC8(d, j) HOPS_ACC4(d, j), HOPS_ACC4(d, (j) + 4)
#define HOPS_ACC16(d, j) HOPS_ACC8(d, j), HOPS_ACC8(d, (j) + 8)
#define HOPS_ACC32(d, j) HOPS_ACC16(d, j), HOPS_ACC16(d, (j) + 16)
#define HOPS_WGMMA_REGS32                                                   \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define HOPS_WGMMA_REGS40                                                            \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "          \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39}"
#define HOPS_WGMMA_REGS64                                                            \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "          \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define HOPS_WGMMA_REGS128                                                                 \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "       \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "       \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "       \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "       \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "       \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, " \
  "%111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, "   \
  "%125, %126, %127}"

// D (64 x N, f32) (+)= A B, A and B from smem, both K-major (trans 0): A's
// 64 x 16 rows at desc_a, B^T's N x 16 rows at desc_b. ia, ib, ip: the
// placeholders of desc_a, desc_b and scale_d (0: D = A B).
#define HOPS_WGMMA_SS(shape, type, regs, ia, ib, ip, ...)                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" ip                                       \
               ", 0;\n"                                                                      \
               "wgmma.mma_async.sync.aligned." shape ".f32." type "." type " " regs ", %" ia \
               ", %" ib ", p, 1, 1, 0, 0;\n}\n"                                              \
               : __VA_ARGS__                                                                 \
               : "l"(desc_a), "l"(desc_b), "r"(scale_d))

template <class E, int N>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b,
                                         int scale_d) {
  constexpr bool bf16 = std::is_same_v<E, __nv_bfloat16>;
  static_assert(N == 64 || N == 80 || N == 128 || N == 256,
                "wgmma_ss: shapes m64n{64,80,128,256}k16");
  if constexpr (N == 256 && bf16) {
    HOPS_WGMMA_SS("m64n256k16", "bf16", HOPS_WGMMA_REGS128, "128", "129", "130", HOPS_ACC32(d, 0));
  } else if constexpr (N == 256) {
    HOPS_WGMMA_SS("m64n256k16", "f16", HOPS_WGMMA_REGS128, "128", "129", "130", HOPS_ACC32(d, 0));
  } else if constexpr (N == 64 && bf16) {
    HOPS_WGMMA_SS("m64n64k16", "bf16", HOPS_WGMMA_REGS32, "32", "33", "34", HOPS_ACC8(d, 0));
  } else if constexpr (N == 64) {
    HOPS_WGMMA_SS("m64n64k16", "f16", HOPS_WGMMA_REGS32, "32", "33", "34", HOPS_ACC8(d, 0));
  } else if constexpr (N == 80 && bf16) {
    HOPS_WGMMA_SS("m64n80k16", "bf16", HOPS_WGMMA_REGS40, "40", "41", "42", HOPS_ACC8(d, 0),
                  HOPS_ACC2(d, 8));
  } else if constexpr (N == 80) {
    HOPS_WGMMA_SS("m64n80k16", "f16", HOPS_WGMMA_REGS40, "40", "41", "42", HOPS_ACC8(d, 0),
                  HOPS_ACC2(d, 8));
  } else if constexpr (bf16) {
    HOPS_WGMMA_SS("m64n128k16", "bf16", HOPS_WGMMA_REGS64, "64", "65", "66", HOPS_ACC16(d, 0));
  } else {
    HOPS_WGMMA_SS("m64n128k16", "f16", HOPS_WGMMA_REGS64, "64", "65", "66", HOPS_ACC16(d, 0));
  }
}

// D (64 x N, f32) += A B, A (64 x 16) in registers (four 16-bit pairs per
// thread, the accumulator layout: a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..],
// A[g+8][2t+8..]}), B from smem MN-major (trans 1): its 16 rows of N at desc_b.
#define HOPS_WGMMA_RS(shape, type, regs, ia, ib, ip, ...)                                     \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" ip                                        \
               ", 0;\n"                                                                       \
               "wgmma.mma_async.sync.aligned." shape ".f32." type "." type " " regs ", {%" ia \
               "}, %" ib ", p, 1, 1, 1;\n}\n"                                                 \
               : __VA_ARGS__                                                                  \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d))

template <class E, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4],
                                         uint64_t desc_b, int scale_d) {
  constexpr bool bf16 = std::is_same_v<E, __nv_bfloat16>;
  static_assert(N == 64 || N == 128 || N == 256, "wgmma_rs: shapes m64n{64,128,256}k16");
  if constexpr (N == 64 && bf16) {
    HOPS_WGMMA_RS("m64n64k16", "bf16", HOPS_WGMMA_REGS32, "32, %33, %34, %35", "36", "37",
                  HOPS_ACC8(d, 0));
  } else if constexpr (N == 64) {
    HOPS_WGMMA_RS("m64n64k16", "f16", HOPS_WGMMA_REGS32, "32, %33, %34, %35", "36", "37",
                  HOPS_ACC8(d, 0));
  } else if constexpr (N == 128 && bf16) {
    HOPS_WGMMA_RS("m64n128k16", "bf16", HOPS_WGMMA_REGS64, "64, %65, %66, %67", "68", "69",
                  HOPS_ACC16(d, 0));
  } else if constexpr (N == 128) {
    HOPS_WGMMA_RS("m64n128k16", "f16", HOPS_WGMMA_REGS64, "64, %65, %66, %67", "68", "69",
                  HOPS_ACC16(d, 0));
  } else if constexpr (bf16) {
    HOPS_WGMMA_RS("m64n256k16", "bf16", HOPS_WGMMA_REGS128, "128, %129, %130, %131", "132", "133",
                  HOPS_ACC32(d, 0));
  } else {
    HOPS_WGMMA_RS("m64n256k16", "f16", HOPS_WGMMA_REGS128, "128, %129, %130, %131", "132", "133",
                  HOPS_ACC32(d, 0));
  }
}

#undef HOPS_WGMMA_SS
#undef HOPS_WGMMA_RS
#undef HOPS_WGMMA_REGS32
#undef HOPS_WGMMA_REGS40
#undef HOPS_WGMMA_REGS64
#undef HOPS_WGMMA_REGS128
#undef HOPS_ACC1
#undef HOPS_ACC2
#undef HOPS_ACC4
#undef HOPS_ACC8
#undef HOPS_ACC16
#undef HOPS_ACC32

}  // namespace hops::cuda::sm90
