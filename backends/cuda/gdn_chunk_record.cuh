// The per-(chunk, value head) record of gdn_chunk_tc.cu's kernel 1 and its
// chunk slots, shared with the v4 backward (gdn_bwd_v4*.cu), which rebuilds
// the records and reads them in its reverse sweep and gradient kernel.
// Templates over the params struct: ChunkParams and ChunkBwdParams both
// carry cu, N, T and HV.
#pragma once

#include <cstdint>

#include "device_common.cuh"
#include "tensor_core.cuh"

namespace hops::cuda {

inline constexpr int kRecordChunk = 64;  // tokens per chunk (C)

// One record per (chunk slot, value head), contiguous so that the sweeps load
// it without per-row address arithmetic: T and M (C x C, 16-bit; rows past
// the chunk's end zero), the row factors (beta, beta Γ rk, scale Γ rq,
// rk e^{gc_last - gc}; zero past the end) and Γ_last in a 16-byte slot.
inline constexpr int kRecordT = 0, kRecordM = kRecordChunk * kRecordChunk * 2;
inline constexpr int kRecordF = 2 * kRecordChunk * kRecordChunk * 2;
inline constexpr int kRecordD = kRecordF + kRecordChunk * 16, kRecordBytes = kRecordD + 16;

struct TcScratch {
  char* records;  // [z][slot][HV] records, z = batch row (dense) or 0 (varlen)
  int64_t slots;  // chunk slots per z
};
// The v4 backward's state sweep also writes S^T (16-bit) at each chunk start.
struct TcStates : TcScratch {
  void* states;  // [z][slot][HV][V][K]
};

// Host: whether a [B, T, H, D] tensor's head rows suit the 16-byte cp.async
// pieces of the tc path and the v4 backward (unit last stride, 16-byte
// aligned rows).
inline bool head_rows_ok(const Arg& a) {
  if (a.stride[3] != 1 || reinterpret_cast<uintptr_t>(a.data) % 16 != 0) return false;
  for (int d = 0; d < 3; ++d) {
    if (a.shape[d] > 1 && a.stride[d] % 8 != 0) return false;
  }
  return true;
}

// Dense: slot c of batch row z is chunk c. Varlen (z = 0): sequence n's chunk
// c takes slot floor(begin_n / C) + n + c; these are disjoint and increasing
// in n, and fewer than T / C + N in all.
template <class P>
int64_t chunk_slots(const P& p) {
  return p.cu.data ? p.T / kRecordChunk + p.N : (p.T + kRecordChunk - 1) / kRecordChunk;
}

// (z, first slot) of sequence n's chunks.
template <class P>
__device__ __forceinline__ int64_t record_z(const P& p, int64_t n) {
  return p.cu.data ? 0 : n;
}
template <class P>
__device__ __forceinline__ int64_t record_first_slot(const P& p, int64_t n, const Span& span) {
  return p.cu.data ? span.begin / kRecordChunk + n : 0;
}

// Index of (z, slot, head) among the [z][slot][HV] records or states.
template <class P>
__device__ __forceinline__ int64_t record_index(const P& p, const TcScratch& s, int64_t z,
                                                int64_t slot, int64_t hv) {
  return (z * s.slots + slot) * p.HV + hv;
}

template <class P>
__device__ __forceinline__ char* record_of(const P& p, const TcScratch& s, int64_t z, int64_t slot,
                                           int64_t hv) {
  return s.records + record_index(p, s, z, slot, hv) * kRecordBytes;
}

// One pipeline stage of the state sweep (gdn_chunk_tc.cu) and of the v4
// reverse sweep, offsets in 16-bit elements: the k and q tiles (C x kDk, rows
// of kRowK), the kBV value columns of v (the forward) or dO (the reverse
// sweep), and the record's T, M or P (rows of kRowC), factors and Γ_last.
template <int kBV_, int kRowK, int kRowC>
struct SweepStage {
  static constexpr int kBV = kBV_;
  static constexpr int kRowV = kBV + 8;
  static constexpr int kK = 0;
  static constexpr int kQ = kK + kRecordChunk * kRowK;
  static constexpr int kV = kQ + kRecordChunk * kRowK;
  static constexpr int kT = kV + kRecordChunk * kRowV;
  static constexpr int kM = kT + kRecordChunk * kRowC;
  static constexpr int kF = kM + kRecordChunk * kRowC;  // float4 [C]
  static constexpr int kD = kF + kRecordChunk * 8;      // float Γ_last (16-byte slot)
  static constexpr int kStage = kD + 8;
  static_assert(kStage % 8 == 0 && kF % 8 == 0 && kRowV % 8 == 0);
};

// Chunk c of a sequence into a sweep stage (Smem: a SweepStage) by cp.async,
// for both sweeps: the k and q tiles (kDk wide, rows of kRowK), the kBV-wide
// tile from vb (v or dO) and the record (T then M or P, rows of kRowC, then
// the factors and Γ_last). Fixed trip counts (every count is a multiple of
// kThreads, which is > C): a thread copies the same 16-byte piece of rows
// row0 + it * step of each tile; rows past the sequence's end are
// zero-filled from an in-bounds source.
template <int kThreads, int kDk, int kRowK, int kRowC, class Smem, int kRecordUnroll, class E,
          class P>
__device__ __forceinline__ void load_sweep_chunk(E* smem, int stage, int tid, const P& p,
                                                 const Span& span, int64_t c, const E* kb,
                                                 const E* qb, const E* vb, const Arg& v,
                                                 const TcScratch& s, int64_t z, int64_t slot,
                                                 int64_t hv) {
  constexpr int kC = kRecordChunk;
  E* base = smem + stage * Smem::kStage;
  const int64_t t0 = span.begin + c * kC, rows_left = span.end - t0;
  const int L = static_cast<int>(rows_left < kC ? rows_left : kC);
  {
    constexpr int kPieces = kDk / 8, kStep = kThreads / kPieces;
    const int row0 = tid / kPieces, piece = (tid % kPieces) * 8;
#pragma unroll 4
    for (int it = 0; it < kC / kStep; ++it) {
      const int i = row0 + it * kStep;
      const bool valid = i < L;
      const int64_t t = t0 + (valid ? i : 0);
      cp_async16(base + Smem::kK + i * kRowK + piece, kb + t * p.k.stride[1] + piece, valid);
      cp_async16(base + Smem::kQ + i * kRowK + piece, qb + t * p.q.stride[1] + piece, valid);
    }
  }
  {
    constexpr int kPieces = Smem::kBV / 8, kStep = kThreads / kPieces;
    const int row0 = tid / kPieces, piece = (tid % kPieces) * 8;
#pragma unroll
    for (int it = 0; it < kC / kStep; ++it) {
      const int i = row0 + it * kStep;
      const bool valid = i < L;
      const int64_t t = t0 + (valid ? i : 0);
      cp_async16(base + Smem::kV + i * Smem::kRowV + piece, vb + t * v.stride[1] + piece, valid);
    }
  }
  // The record of the chunk in slot `slot`: 16-byte piece x of T and M is row (x / 8) % C of the
  // two; the factors and Γ_last (C + 1 pieces) are contiguous in the stage too.
  const char* record = record_of(p, s, z, slot, hv);
#pragma unroll kRecordUnroll
  for (int it = 0; it < 2 * kC * 8 / kThreads; ++it) {
    const int x = tid + it * kThreads, m = x / (kC * 8), row = (x / 8) % kC, col = (x % 8) * 8;
    cp_async16(base + Smem::kT + m * (Smem::kM - Smem::kT) + row * kRowC + col, record + x * 16,
               true);
  }
  if (tid <= kC) cp_async16(base + Smem::kF + tid * 8, record + kRecordF + tid * 16, true);
}

// A sweep warp's 16 x 128 f32 state as mma accumulators: acc[nt] holds
// S^T[v = my_v + g (+8)][k = 8 nt + 2 t4 (+1)] (g = lane / 4, my_v the
// lane's first column). Loaded from src[k * sk + v * sv], or zero without src;
// the strides by reference so that the loads from the params stay per element,
// as they were (and the forward's PTX the same).
__device__ __forceinline__ void load_state_acc(float (&acc)[16][4], const float* src,
                                               const int64_t& sk, const int64_t& sv, int64_t my_v,
                                               int t4) {
#pragma unroll
  for (int nt = 0; nt < 16; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t kd = nt * 8 + 2 * t4 + (e & 1), v = my_v + 8 * (e >> 1);
      acc[nt][e] = src ? src[kd * sk + v * sv] : 0.0f;
    }
  }
}

// The same accumulators into dst[k * sk + v * sv] (f32).
__device__ __forceinline__ void store_state_f32(float* dst, const int64_t& sk, const int64_t& sv,
                                                const float (&acc)[16][4], int64_t my_v, int t4) {
#pragma unroll
  for (int nt = 0; nt < 16; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t kd = nt * 8 + 2 * t4 + (e & 1), v = my_v + 8 * (e >> 1);
      dst[kd * sk + v * sv] = acc[nt][e];
    }
  }
}

// The same accumulators as 16-bit rows [v][kDk], out at the lane's (v, k) = (g, 2 t4).
template <int kDk, class E>
__device__ __forceinline__ void store_state16(E* out, const float (&acc)[16][4]) {
#pragma unroll
  for (int nt = 0; nt < 16; ++nt) {
    *reinterpret_cast<uint32_t*>(out + nt * 8) = pack2<E>(acc[nt][0], acc[nt][1]);
    *reinterpret_cast<uint32_t*>(out + 8 * kDk + nt * 8) = pack2<E>(acc[nt][2], acc[nt][3]);
  }
}

// out[nt] += S^T tile^T: S^T from the state accumulators (16 x 128, packed to
// the A operand one 32-dim slice at a time), tile = 64 rows x 128 in smem
// (rows of kRowK). The reverse sweep's dH^T K^T is the same product.
template <class E, int kRowK>
__device__ __forceinline__ void state_times_tile(const float (&s_acc)[16][4], const E* tile,
                                                 int lane, float (&out)[8][4]) {
#pragma unroll
  for (int kp = 0; kp < 4; ++kp) {
    uint32_t sa[2][4];
#pragma unroll
    for (int hs = 0; hs < 2; ++hs) {
      const int nt = 4 * kp + 2 * hs;
      sa[hs][0] = pack2<E>(s_acc[nt][0], s_acc[nt][1]);
      sa[hs][1] = pack2<E>(s_acc[nt][2], s_acc[nt][3]);
      sa[hs][2] = pack2<E>(s_acc[nt + 1][0], s_acc[nt + 1][1]);
      sa[hs][3] = pack2<E>(s_acc[nt + 1][2], s_acc[nt + 1][3]);
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      uint32_t b[4];
      ldsm_x4(b, tile + (nt * 8 + (lane & 7)) * kRowK + kp * 32 + (lane >> 3) * 8);
      mma<E>(out[nt], sa[0], b[0], b[1]);
      mma<E>(out[nt], sa[1], b[2], b[3]);
    }
  }
}

struct ChunkRef {
  int64_t row, t0;  // batch row (0 when varlen), first token
  int L;            // tokens in the chunk; 0: this block has none
};

// The chunk of slot `slot` (see chunk_slots); a binary search finds the
// sequence when varlen.
template <class P>
__device__ ChunkRef chunk_of_slot(const P& p, int64_t slot, int64_t z) {
  constexpr int kC = kRecordChunk;
  if (!p.cu.data) {
    const int64_t t0 = slot * kC;
    return {z, t0, static_cast<int>(p.T - t0 < kC ? p.T - t0 : kC)};
  }
  int64_t lo = 0, hi = p.N - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (sequence_span(p.cu, mid, p.T).begin / kC + mid <= slot) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const Span s = sequence_span(p.cu, lo, p.T);
  const int64_t c = slot - (s.begin / kC + lo);
  const int64_t t0 = s.begin + c * kC;
  if (c < 0 || t0 >= s.end) return {0, 0, 0};
  return {0, t0, static_cast<int>(s.end - t0 < kC ? s.end - t0 : kC)};
}

}  // namespace hops::cuda
