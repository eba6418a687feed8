// gdn_chunk_bwd v4 (docs/CUDA_NOTES.md, "gdn_chunk_bwd v4"): what its two
// new kernels share. The records and S^T come from gdn_chunk_tc.cu's kernels
// (launch_gdn_chunk_states); reverse_dh (gdn_bwd_v4_sweep.cu) writes dH^T at
// every chunk end and dh0; chunk_grad (gdn_bwd_v4_grad.cu) turns S^T, dH^T
// and the chunk's inputs into dq, dk, dv, dg, dbeta.
#pragma once

#include "gdn_chunk_record.cuh"
#include "tensor_core.cuh"

namespace hops::cuda {

inline constexpr int kV4Dk = 128;          // key dim of the path
inline constexpr int kV4RowK = kV4Dk + 8;  // smem row of a 128-wide 16-bit tile: conflict-free
inline constexpr int kV4RowC = kRecordChunk + 8;  // smem row of a C-wide 16-bit tile

struct V4Scratch {
  TcStates rec;   // records and S^T ([z][slot][HV][V][K], 16-bit)
  void* dstates;  // dH^T at each chunk end, same layout
};

// What tile_mma may skip, from the operands' triangles (m, n: the output's row and
// column, k: the depth): A zero for k > m (kALower), A zero for k < m (kAUpper),
// or only the output's n <= m wanted (kOutLower); whole 32-deep k blocks or 8-wide
// n tiles of the warp's 16 rows.
enum TileSkip { kDense, kALower, kAUpper, kOutLower };

// out[nt] (16 rows m0.. x 8 NT columns n0..) += A B over `depth` (a multiple
// of 32), 16-bit operands in smem. A is [m][k] in memory (kAT: [k][m]), B is
// [n][k] (kBT: [k][n]); lda, ldb in elements. ldmatrix (.trans for the
// transposed forms) gives the m16n8k16 fragments of tensor_core.cuh's mma.
template <class E, bool kAT, bool kBT, int NT, TileSkip kSkip = kDense>
__device__ __forceinline__ void tile_mma(float (&out)[NT][4], const E* a, int lda, int m0,
                                         const E* b, int ldb, int n0, int depth, int lane) {
  const int quad = lane >> 3, r8 = lane & 7;
  if (kSkip == kOutLower && n0 > m0 + 15) return;
  for (int k0 = 0; k0 < depth; k0 += 32) {
    if (kSkip == kALower && k0 > m0 + 15) break;
    if (kSkip == kAUpper && k0 + 31 < m0) continue;
    uint32_t af[2][4];
#pragma unroll
    for (int hs = 0; hs < 2; ++hs) {
      const int kk = k0 + 16 * hs;
      if constexpr (kAT) {
        ldsm_x4_trans(af[hs], a + (kk + r8 + 8 * (quad >> 1)) * lda + m0 + 8 * (quad & 1));
      } else {
        ldsm_x4(af[hs], a + (m0 + r8 + 8 * (quad & 1)) * lda + kk + 8 * (quad >> 1));
      }
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (kSkip == kOutLower && n0 + 8 * nt > m0 + 15) continue;
      uint32_t bf[4];
      if constexpr (kBT) {
        ldsm_x4_trans(bf, b + (k0 + lane) * ldb + n0 + 8 * nt);
      } else {
        ldsm_x4(bf, b + (n0 + 8 * nt + r8) * ldb + k0 + 8 * quad);
      }
      mma<E>(out[nt], af[0], bf[0], bf[1]);
      mma<E>(out[nt], af[1], bf[2], bf[3]);
    }
  }
}

// The launches (E: __half or __nv_bfloat16).
template <class E>
cudaError_t launch_reverse_dh(const ChunkBwdParams& p, const V4Scratch& s, cudaStream_t stream);
template <class E>
cudaError_t launch_chunk_grad(const ChunkBwdParams& p, const V4Scratch& s, cudaStream_t stream);
// The gradient kernel's shared memory, the most any v4 kernel takes (226 KB: Hopper's
// per-block limit allows it, sm_80's 163 KB does not; there v4 is not taken).
size_t chunk_grad_smem_bytes();

}  // namespace hops::cuda
