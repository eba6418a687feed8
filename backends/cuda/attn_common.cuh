// Device helpers of the attention kernels (attn*.cu): the sequences of a
// prefill call cut into blocks, tensor-core wrappers (mma.sync m16n8k16,
// ldmatrix), quad reductions and tile loads by cp.async.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstring>
#include <type_traits>

#include "attn_params.hpp"
#include "device_common.cuh"
#include "tensor_core.cuh"

namespace hops::cuda::attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// 2^x (MUFU.EX2; -inf gives 0).
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---- sequences and blocks ----------------------------------------------------------

// Sequence n of a prefill call: its row, the first query and key token, and
// the lengths, from clamped offsets (sequence_span) when varlen.
struct SeqPair {
  int64_t row, q0, Lq, k0, Lk;
};
__device__ __forceinline__ SeqPair seq_pair(const Index& cu_q, const Index& cu_k, int64_t n,
                                            int64_t Tq, int64_t Tk) {
  const Span a = sequence_span(cu_q, n, Tq), b = sequence_span(cu_k, n, Tk);
  return {a.row, a.begin, a.end - a.begin, b.begin, b.end - b.begin};
}

// Blocks of `rows` tokens over the sequences. Dense: ceil(T/rows) per row.
// Varlen: block c of sequence n is slot floor(cu[n]/rows) + n + c, which is
// injective and below T/rows + N + 1 for any nondecreasing offsets, so the
// host sizes the grid without reading device-resident offsets.
__host__ __device__ inline int64_t block_slots(int64_t N, int64_t T, int64_t rows, bool varlen) {
  return varlen ? T / rows + N + 1 : N * ((T + rows - 1) / rows);
}
__device__ __forceinline__ int64_t slot_start(const Index& cu, int64_t T, int64_t rows, int64_t n) {
  int64_t b = ld_index(cu, n);
  b = b < 0 ? 0 : (b > T ? T : b);
  return b / rows + n;
}
// The (sequence, block) of a slot; false when the slot lies before its
// sequence's first (possible only for device-resident offsets not starting at
// 0). The caller checks the block against the sequence's length (an unused
// slot maps past it).
__device__ __forceinline__ bool slot_block(const Index& cu, int64_t N, int64_t T, int64_t rows,
                                           int64_t slot, int64_t& n, int64_t& c) {
  if (!cu.data) {
    const int64_t per = (T + rows - 1) / rows;
    n = slot / per, c = slot % per;
    return true;
  }
  int64_t lo = 0, hi = N - 1;  // the last sequence whose first slot is <= slot
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (slot_start(cu, T, rows, mid) <= slot)
      lo = mid;
    else
      hi = mid - 1;
  }
  n = lo, c = slot - slot_start(cu, T, rows, lo);
  return c >= 0;
}

// Element offset of [i0, i1, i2, 0] in a rank-4 tensor.
__device__ __forceinline__ int64_t at3(const Arg& a, int64_t i0, int64_t i1, int64_t i2) {
  return i0 * a.stride[0] + i1 * a.stride[1] + i2 * a.stride[2];
}

// The backward's per-row inputs (attn_bwd*.cu). lse of query row i of head h
// in the log2 domain; +inf where the row saw no key (so that every p of the
// row is exp2(-inf) = 0), and for rows past Lq.
__device__ __forceinline__ float lse2_of(const AttnBwdParams& p, const SeqPair& s, int64_t h,
                                         int64_t i) {
  if (i >= s.Lq) return INFINITY;
  const float x = reinterpret_cast<const float*>(
      p.lse.data)[s.row * p.lse.stride[0] + h * p.lse.stride[1] + (s.q0 + i) * p.lse.stride[2]];
  return x == -INFINITY ? INFINITY : x * kLog2e;
}
__device__ __forceinline__ float delta_of(const AttnBwdParams& p, const float* delta,
                                          const SeqPair& s, int64_t h, int64_t i) {
  return i < s.Lq ? delta[(s.row * p.Hq + h) * p.Tq + s.q0 + i] : 0.0f;
}

// ---- tensor cores (wrappers in tensor_core.cuh) -----------------------------------

// The A operand of a 16 x 16 block from two accumulator tiles (columns
// 16s..16s+7 and 16s+8..16s+15): the C layout of mma is the A layout.
template <class E>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[4], const float (&lo)[4],
                                         const float (&hi)[4]) {
  a[0] = pack2<E>(lo[0], lo[1]), a[1] = pack2<E>(lo[2], lo[3]);
  a[2] = pack2<E>(hi[0], hi[1]), a[3] = pack2<E>(hi[2], hi[3]);
}

// Lane offsets (elements) into a smem tile of rows with pitch P, for the
// three ldmatrix patterns of the kernels:
// - a_rows: the A operand of rows 0..15 (row = lane % 16, column 8 (lane / 16)).
// - b_rows: two B operands (n-tiles n, n+8) from rows that are the n index
//   (K in Q K^T): row = lane % 8 + 8 (lane / 16), column 8 ((lane / 8) % 2).
// - b_trans: two B operands from rows that are the k index (V in P V), by
//   ldmatrix.trans: row = lane % 8 + 8 ((lane / 8) % 2), column 8 (lane / 16).
template <int P>
__device__ __forceinline__ int a_rows(int lane) {
  return (lane & 15) * P + (lane >> 4) * 8;
}
template <int P>
__device__ __forceinline__ int b_rows(int lane) {
  return ((lane & 7) + ((lane >> 4) << 3)) * P + ((lane >> 3) & 1) * 8;
}
template <int P>
__device__ __forceinline__ int b_trans(int lane) {
  return ((lane & 7) + (((lane >> 3) & 1) << 3)) * P + (lane >> 4) * 8;
}

// acc[16 x 8 NT] += A (16 x 16 KS, smem rows at `a`) B, B^T's rows (n) at `b`:
// the Q K^T pattern. Offsets are the lane's a_rows / b_rows.
template <class E, int P, int KS, int NT>
__device__ __forceinline__ void mma_rows_rows(float (&acc)[NT][4], const E* a, const E* b) {
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    uint32_t af[4];
    ldsm_x4(af, a + kk * 16);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t bf[4];
      ldsm_x4(bf, b + np * 16 * P + kk * 16);
      mma<E>(acc[2 * np], af, bf[0], bf[1]);
      mma<E>(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// acc[16 x 8 NT] += A B with A in registers as accumulator tiles (16 x 8 KT,
// KT even) and B's rows (k) at `b` (offset b_trans): the P V pattern.
template <class E, int P, int KT, int NT>
__device__ __forceinline__ void mma_regs_trans(float (&acc)[NT][4], const float (&a)[KT][4],
                                               const E* b) {
#pragma unroll
  for (int ks = 0; ks < KT / 2; ++ks) {
    uint32_t af[4];
    acc_to_a<E>(af, a[2 * ks], a[2 * ks + 1]);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t bf[4];
      ldsm_x4_trans(bf, b + ks * 16 * P + np * 16);
      mma<E>(acc[2 * np], af, bf[0], bf[1]);
      mma<E>(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// Reductions over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Rows [r0, r0 + R) of a head slice (row 0 at `base`, rows `step` elements
// apart, D contiguous elements each) into smem rows of pitch P by 16-byte
// cp.async; rows at or past `limit` are zero-filled (their source is `base`,
// which the caller guarantees is a mapped row).
template <class E, int D, int P, int R, int kThreads>
__device__ __forceinline__ void load_rows(E* dst, const E* base, int64_t step, int64_t r0,
                                          int64_t limit, int tid) {
  constexpr int kPieces = D / 8;
#pragma unroll 4
  for (int idx = tid; idx < R * kPieces; idx += kThreads) {
    const int r = idx / kPieces, c = idx % kPieces;
    const bool valid = r0 + r < limit;
    cp_async16(dst + r * P + c * 8, valid ? base + (r0 + r) * step + c * 8 : base, valid);
  }
}

// Two adjacent elements of a 16-bit row as floats, and stored from floats.
template <class E>
__device__ __forceinline__ float2 ld_pair(const E* p) {
  return unpack2<E>(*reinterpret_cast<const uint32_t*>(p));
}
template <class E>
__device__ __forceinline__ void st_pair(E* p, float lo, float hi) {
  *reinterpret_cast<uint32_t*>(p) = pack2<E>(lo, hi);
}

}  // namespace hops::cuda::attn
