// gdn_chunk_bwd v4, kernel 4: every gradient of one (chunk, key head) from
// S (its start state) and dH (the gradient of its end state), both 16-bit
// S^T / dH^T from the sweeps, the record's T and P, and the chunk's inputs,
// all in shared memory; the G value heads in order, dq and dk summed in
// registers (deterministic), then the l2norm backward. Per value head
// (k̂ = rk k, e = e^{gc_last - gc}, D_ij = e^{gc_i - gc_j}):
//   rhs = beta V - beta Γ (K̂ S)   U = T rhs          dU = diag(e) K̂ dH + P^T dO
//   dW = dU S^T                    Y = T^T dU,  X = T^T dW,  dv = beta Y
//   dq̂ += diag(s Γ) dO S^T + (dP o sD) K̂           dP = dO U^T (j <= i)
//   Z_ij = beta_j (Y V^T - Γ_j X K̂^T)_ij           dA = -Z T^T (j < i),  B = beta_i D_ij dA_ij
//   dk̂ += (dP o sD)^T Q̂ + diag(e) U dH^T - diag(beta Γ) X + B K̂ + B^T K̂
//   dbeta_i = v_i.Y_i - Γ_i k̂_i.X_i + sum_j dA_ij D_ij (K̂K̂^T)_ij
//   dg = the in-chunk reverse cumsum of dG (docs/CUDA_NOTES.md has its terms).
// 8 warps: a C x 128 product is split 4 (rows) x 2 (64 columns), a C x C one
// 4 x 2 (32 columns); row and column sums cross warps through shared memory
// in a fixed order.
#include "checked_math.hpp"
#include "device_common.cuh"
#include "gdn_bwd_v4.cuh"

namespace hops::cuda {

namespace {

constexpr int kC = kRecordChunk, kDk = kV4Dk, kRowK = kV4RowK, kRowC = kV4RowC;
constexpr int kThreads = 256;

// Shared memory, in 16-bit elements then floats.
constexpr int kTileK = kC * kRowK;   // a C x 128 tile
constexpr int kTileS = kDk * kRowK;  // a 128 x 128 tile (S^T, dH^T)
constexpr int kTileC = kC * kRowC;   // a C x C tile
constexpr int kQ = 0, kK = kQ + kTileK, kV = kK + kTileK, kO = kV + kTileK;
constexpr int kS = kO + kTileK, kH = kS + kTileS, kT = kH + kTileS, kP = kT + kTileC;
constexpr int kB1 = kP + kTileC;   // rhs, then dW, then X
constexpr int kB2 = kB1 + kTileK;  // U
constexpr int kB3 = kB2 + kTileK;  // dU, then Y
constexpr int kZ = kB3 + kTileK;   // Z, then B
constexpr int kHalves = kZ + kTileC;
// floats: per-row vectors, then row sums [quantity][2][C], column sums [quantity][4][C]
enum { kGc, kBeta, kGamma, kEnd, kRq, kRk, kVectors };
enum { kQdq, kKx, kVy, kKdk, kPpRow, kAaRow, kAkkRow, kRowSums };
enum { kPpCol, kAaCol, kColSums };
constexpr int kFloats = kVectors * kC + kRowSums * 2 * kC + kColSums * 4 * kC + 8;
constexpr size_t kSmemBytes = static_cast<size_t>(kHalves) * 2 + kFloats * 4;
static_assert(kHalves % 8 == 0 && kSmemBytes <= 232448);

struct Frag {
  int lane, g, t4, mr, nc;  // mr: the warp's 16-row strip, nc: its column half
};

// A lane's partial sums of its rows 16 mr + g (lo) and + 8 (hi), summed over
// the quad, into sums[nc][row].
__device__ __forceinline__ void row_sums(float lo, float hi, const Frag& f, float* sums) {
#pragma unroll
  for (int o = 1; o < 4; o <<= 1) {
    lo += __shfl_xor_sync(0xffffffffu, lo, o);
    hi += __shfl_xor_sync(0xffffffffu, hi, o);
  }
  if (f.t4 == 0) sums[f.nc * kC + 16 * f.mr + f.g] = lo, sums[f.nc * kC + 16 * f.mr + f.g + 8] = hi;
}

// Column sums of value(nt, e) over a C x 32 tile (columns 32 nc + 8 nt + 2 t4 (+1)) into
// sums[mr][col].
template <class Value>
__device__ __forceinline__ void column_sums(Value value, const Frag& f, float* sums) {
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float x = value(nt, e) + value(nt, e + 2);
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
      if (f.g == 0) sums[f.mr * kC + 32 * f.nc + 8 * nt + 2 * f.t4 + e] = x;
    }
  }
}

// The element (row, column) of fragment [nt][e] of a tile with column base n0.
__device__ __forceinline__ int frag_row(const Frag& f, int e) {
  return 16 * f.mr + f.g + 8 * (e >> 1);
}
__device__ __forceinline__ int frag_col(const Frag& f, int n0, int nt, int e) {
  return n0 + 8 * nt + 2 * f.t4 + (e & 1);
}

// A C x 8 NT accumulator tile into a 16-bit smem tile (row pitch ld).
template <class E, int NT>
__device__ __forceinline__ void store_tile(const float (&acc)[NT][4], const Frag& f, int n0,
                                           E* tile, int ld) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int row = frag_row(f, 2 * hr), col = frag_col(f, n0, nt, 0);
      *reinterpret_cast<uint32_t*>(tile + row * ld + col) =
          pack2<E>(acc[nt][2 * hr], acc[nt][2 * hr + 1]);
    }
  }
}

// The 16-bit pair at (row, col), (row, col + 1) of a smem tile as floats.
template <class E>
__device__ __forceinline__ float2 pair_at(const E* tile, int ld, int row, int col) {
  return unpack2<E>(*reinterpret_cast<const uint32_t*>(tile + row * ld + col));
}

// acc[nt][e] *= factor(its tile row), over a C x 8 NT accumulator tile.
template <int NT, class Factor>
__device__ __forceinline__ void scale_rows(float (&acc)[NT][4], const Frag& f, Factor factor) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] *= factor(frag_row(f, e));
  }
}

// dst[nt][e] += factor(its tile row) * src[nt][e], over C x 8 NT accumulator tiles.
template <int NT, class Factor>
__device__ __forceinline__ void add_rows(float (&dst)[NT][4], const float (&src)[NT][4],
                                         const Frag& f, Factor factor) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dst[nt][e] += factor(frag_row(f, e)) * src[nt][e];
  }
}

// Row sums of acc * tile (the same positions) into sums[nc][row].
template <class E, int NT>
__device__ __forceinline__ void dot_rows(const float (&acc)[NT][4], const Frag& f, int n0,
                                         const E* tile, int ld, float* sums) {
  float part[2] = {0.0f, 0.0f};
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const float2 x = pair_at<E>(tile, ld, frag_row(f, 2 * hr), frag_col(f, n0, nt, 0));
      part[hr] += acc[nt][2 * hr] * x.x + acc[nt][2 * hr + 1] * x.y;
    }
  }
  row_sums(part[0], part[1], f, sums);
}

template <class E>
__global__ void __launch_bounds__(kThreads, 1) chunk_grad_kernel(ChunkBwdParams p, V4Scratch s) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  E* const sh = reinterpret_cast<E*>(smem_raw);
  float* const vec = reinterpret_cast<float*>(smem_raw + static_cast<size_t>(kHalves) * 2);
  float* const rows = vec + kVectors * kC;        // [kRowSums][2][C]
  float* const cols = rows + kRowSums * 2 * kC;   // [kColSums][4][C]
  float* const block = cols + kColSums * 4 * kC;  // [8]
  float *gc = vec + kGc * kC, *bt = vec + kBeta * kC, *gam = vec + kGamma * kC;
  float *ee = vec + kEnd * kC, *rq = vec + kRq * kC, *rk = vec + kRk * kC;
  auto row_sum = [&](int q) { return rows + q * 2 * kC; };
  auto col_sum = [&](int q) { return cols + q * 4 * kC; };

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Row strips of the two column halves in opposite orders: the warps a scheduler shares
  // (w, w + 4) then split the triangular products' work evenly.
  const Frag f{lane, lane >> 2, lane & 3, warp < 4 ? warp : 7 - warp, warp >> 2};
  const int64_t h = blockIdx.x % p.H, slot = blockIdx.x / p.H, z = blockIdx.z;
  const ChunkRef c = chunk_of_slot(p, slot, z);
  if (c.L == 0) return;
  const int L = c.L;
  const int64_t G = p.HV / p.H;
  const float scale = p.scale;
  const int m0 = 16 * f.mr, nk = 64 * f.nc, nc32 = 32 * f.nc;  // the warp's tiles
  E *sq = sh + kQ, *sk = sh + kK, *sv = sh + kV, *so = sh + kO, *ss = sh + kS, *sdh = sh + kH;
  E *tt = sh + kT, *sp = sh + kP, *b1 = sh + kB1, *b2 = sh + kB2, *b3 = sh + kB3, *sz = sh + kZ;

  auto load_rows = [&](E* tile, const Arg& a, int64_t head) {
    const E* base = reinterpret_cast<const E*>(a.data) + c.row * a.stride[0] + head * a.stride[2];
    for (int x = tid; x < kC * 16; x += kThreads) {
      const int i = x >> 4, piece = (x & 15) * 8;
      const bool valid = i < L;
      cp_async16(tile + i * kRowK + piece, base + (c.t0 + (valid ? i : 0)) * a.stride[1] + piece,
                 valid);
    }
  };
  // A value head's tiles in three parts, each issued (for the next head) as soon as
  // the current one is done with its tiles: S^T after dq's first term, v and dO after
  // Z, dH^T and the record's T and P at the head's end.
  auto load_state = [&](int64_t hv) {
    const E* from =
        static_cast<const E*>(s.rec.states) + record_index(p, s.rec, z, slot, hv) * p.V * kDk;
    for (int x = tid; x < kDk * 16; x += kThreads) {
      const int r = x >> 4, piece = (x & 15) * 8;
      cp_async16(ss + r * kRowK + piece, from + r * kDk + piece, true);
    }
    cp_async_commit();
  };
  auto load_values = [&](int64_t hv) {
    load_rows(sv, p.v, hv);
    load_rows(so, p.d_o, hv);
    cp_async_commit();
  };
  auto load_rest = [&](int64_t hv) {
    const int64_t index = record_index(p, s.rec, z, slot, hv);
    const E* from = static_cast<const E*>(s.dstates) + index * p.V * kDk;
    for (int x = tid; x < kDk * 16; x += kThreads) {
      const int r = x >> 4, piece = (x & 15) * 8;
      cp_async16(sdh + r * kRowK + piece, from + r * kDk + piece, true);
    }
    const char* record = s.rec.records + index * kRecordBytes;
    for (int x = tid; x < 2 * kC * 8; x += kThreads) {
      const int m = x / (kC * 8), row = (x / 8) % kC, col = (x % 8) * 8;
      cp_async16((m ? sp : tt) + row * kRowC + col, record + x * 16, true);
    }
    cp_async_commit();
  };
  load_rows(sq, p.q, h);
  load_rows(sk, p.k, h);
  cp_async_commit();
  load_state(h * G);
  load_values(h * G);
  load_rest(h * G);
  cp_async_wait<3>();  // q and k
  __syncthreads();
  {  // l2 norms (threads 0-63 the k rows, 64-127 the q rows), then q̂, k̂ in place
    if (tid < 2 * kC) {
      const int i = tid & (kC - 1);
      E* row = (tid < kC ? sk : sq) + i * kRowK;
      float ss2 = 0.0f;
      for (int x = 0; x < kDk; x += 2) {
        const float2 v = pair_at<E>(row, 0, 0, x);
        ss2 += v.x * v.x + v.y * v.y;
      }
      (tid < kC ? rk : rq)[i] = i >= L ? 0.0f : (p.l2norm ? rsqrtf(ss2 + 1e-6f) : 1.0f);
    }
    __syncthreads();
    if (p.l2norm) {
      for (int x = tid; x < 2 * kC * (kDk / 2); x += kThreads) {
        const int which = x / (kC * kDk / 2), i = (x / (kDk / 2)) % kC, col = 2 * (x % (kDk / 2));
        E* row = (which ? sq : sk) + i * kRowK;
        const float r = (which ? rq : rk)[i];
        const float2 v = pair_at<E>(row, 0, 0, col);
        *reinterpret_cast<uint32_t*>(row + col) = pack2<E>(r * v.x, r * v.y);
      }
    }
    __syncthreads();
  }
  // K̂ K̂^T in registers, in the C x C tiling; shared by the value heads.
  float kk[4][4] = {};
  tile_mma<E, false, false, 4, kOutLower>(kk, sk, kRowK, m0, sk, kRowK, nc32, kDk, lane);

  float dq[8][4] = {}, dk[8][4] = {};  // dq̂, dk̂ of the warp's C x 64 tile
  for (int64_t hv = h * G; hv < (h + 1) * G; ++hv) {
    const bool next = hv + 1 < (h + 1) * G;
    if (warp == 0) {  // gates: the in-chunk cumsum, two rows per lane
      float gl[2], bl[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = 2 * lane + r;
        const int64_t t = c.t0 + i;
        gl[r] = i < L ? ld(p.g.data, p.g.dtype,
                           c.row * p.g.stride[0] + t * p.g.stride[1] + hv * p.g.stride[2])
                      : 0.0f;
        bl[r] = i < L ? ld(p.beta.data, p.beta.dtype,
                           c.row * p.beta.stride[0] + t * p.beta.stride[1] + hv * p.beta.stride[2])
                      : 0.0f;
      }
      const float pair = gl[0] + gl[1];
      const float run = warp_inclusive_scan(pair, lane);
      const float last = __shfl_sync(0xffffffffu, run, 31);  // gc past the end stays gc_{L-1}
      gc[2 * lane] = run - pair + gl[0], gc[2 * lane + 1] = run;
      bt[2 * lane] = bl[0], bt[2 * lane + 1] = bl[1];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = 2 * lane + r;
        const float gi = r ? run : run - pair + gl[0];
        gam[i] = i < L ? expf(gi) : 0.0f;
        ee[i] = i < L ? expf(last - gi) : 0.0f;
      }
    }
    cp_async_wait<0>();
    __syncthreads();
    const float gamma_last = expf(gc[kC - 1]);
    auto decay = [&](int i, int j) { return __expf(gc[i] - gc[j]); };

    // rhs = beta V - beta Γ (K̂ S) -> b1;  dU = diag(e) K̂ dH + P^T dO -> b3
    {
      float acc[8][4] = {};
      tile_mma<E, false, false, 8>(acc, sk, kRowK, m0, ss, kRowK, nk, kDk, lane);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int i = frag_row(f, 2 * hr);
          const float2 v = pair_at<E>(sv, kRowK, i, frag_col(f, nk, nt, 0));
          acc[nt][2 * hr] = bt[i] * (v.x - gam[i] * acc[nt][2 * hr]);
          acc[nt][2 * hr + 1] = bt[i] * (v.y - gam[i] * acc[nt][2 * hr + 1]);
        }
      }
      store_tile<E>(acc, f, nk, b1, kRowK);
    }
    {
      float acc[8][4] = {};
      tile_mma<E, false, false, 8>(acc, sk, kRowK, m0, sdh, kRowK, nk, kDk, lane);
      scale_rows(acc, f, [&](int i) { return ee[i]; });
      tile_mma<E, true, true, 8, kAUpper>(acc, sp, kRowC, m0, so, kRowK, nk, kC, lane);
      store_tile<E>(acc, f, nk, b3, kRowK);
    }
    // sum(dH o S) for dg, all threads, fixed order.
    {
      float sum = 0.0f;
      for (int x = tid; x < kDk * kDk / 2; x += kThreads) {
        const int r = x / (kDk / 2), col = 2 * (x % (kDk / 2));
        const float2 a = pair_at<E>(ss, kRowK, r, col), b = pair_at<E>(sdh, kRowK, r, col);
        sum += a.x * b.x + a.y * b.y;
      }
      sum = warp_sum(sum);
      if (lane == 0) block[warp] = sum;
    }
    __syncthreads();
    // U = T rhs -> b2;  dW = dU S^T -> b1 (after all have read rhs)
    {
      float acc[8][4] = {};
      tile_mma<E, false, true, 8, kALower>(acc, tt, kRowC, m0, b1, kRowK, nk, kC, lane);
      store_tile<E>(acc, f, nk, b2, kRowK);
    }
    {
      float acc[8][4] = {};
      tile_mma<E, false, true, 8>(acc, b3, kRowK, m0, ss, kRowK, nk, kDk, lane);
      __syncthreads();
      store_tile<E>(acc, f, nk, b1, kRowK);
    }
    // dq̂ += diag(s Γ) dO S^T (its q̂-dot feeds dG)
    {
      float acc[8][4] = {};
      tile_mma<E, false, true, 8>(acc, so, kRowK, m0, ss, kRowK, nk, kDk, lane);
      scale_rows(acc, f, [&](int i) { return scale * gam[i]; });
      dot_rows<E>(acc, f, nk, sq, kRowK, row_sum(kQdq));
      add_rows(dq, acc, f, [](int) { return 1.0f; });
    }
    __syncthreads();  // dW in b1; S^T is dead
    if (next) load_state(hv + 1);
    // Y = T^T dU: dv = beta Y, then Y over dU in b3
    {
      float y[8][4] = {};
      tile_mma<E, true, true, 8, kAUpper>(y, tt, kRowC, m0, b3, kRowK, nk, kC, lane);
      dot_rows<E>(y, f, nk, sv, kRowK, row_sum(kVy));
      E* dv = reinterpret_cast<E*>(p.dv.data) + c.row * p.dv.stride[0] + hv * p.dv.stride[2];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int i = frag_row(f, 2 * hr);
          if (i < L) {
            *reinterpret_cast<uint32_t*>(dv + (c.t0 + i) * p.dv.stride[1] +
                                         frag_col(f, nk, nt, 0)) =
                pack2<E>(bt[i] * y[nt][2 * hr], bt[i] * y[nt][2 * hr + 1]);
          }
        }
      }
      __syncthreads();  // all have read dU
      store_tile<E>(y, f, nk, b3, kRowK);
    }
    // X = T^T dW: dk̂ -= diag(beta Γ) X, then X over dW in b1
    {
      float x[8][4] = {};
      tile_mma<E, true, true, 8, kAUpper>(x, tt, kRowC, m0, b1, kRowK, nk, kC, lane);
      dot_rows<E>(x, f, nk, sk, kRowK, row_sum(kKx));
      add_rows(dk, x, f, [&](int i) { return -(bt[i] * gam[i]); });
      __syncthreads();  // all have read dW
      store_tile<E>(x, f, nk, b1, kRowK);
    }
    // dP = dO U^T (j <= i), with the dG sums of dP o P and dA's A = beta D K̂K̂^T
    float dp[4][4] = {};
    tile_mma<E, false, false, 4, kOutLower>(dp, so, kRowK, m0, b2, kRowK, nc32, kDk, lane);
    {
      float part[2] = {0.0f, 0.0f};
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = frag_row(f, e), j = frag_col(f, nc32, nt, e);
          if (j > i) dp[nt][e] = 0.0f;
          part[e >> 1] += dp[nt][e] * static_cast<float>(sp[i * kRowC + j]);
        }
      }
      row_sums(part[0], part[1], f, row_sum(kPpRow));
      column_sums(
          [&](int nt, int e) {
            const int i = frag_row(f, e), j = frag_col(f, nc32, nt, e);
            return dp[nt][e] * static_cast<float>(sp[i * kRowC + j]);
          },
          f, col_sum(kPpCol));
    }
    __syncthreads();  // Y, X stored; all have read P
    {                 // dP o sD -> sp (P is dead);  Z = beta_j (Y V^T - Γ_j X K̂^T) -> sz
      float yv[4][4] = {}, xk[4][4] = {};
      tile_mma<E, false, false, 4, kOutLower>(yv, b3, kRowK, m0, sv, kRowK, nc32, kDk, lane);
      tile_mma<E, false, false, 4, kOutLower>(xk, b1, kRowK, m0, sk, kRowK, nc32, kDk, lane);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = frag_row(f, e), j = frag_col(f, nc32, nt, e);
          dp[nt][e] *= j <= i ? scale * decay(i, j) : 0.0f;
          yv[nt][e] = bt[j] * (yv[nt][e] - gam[j] * xk[nt][e]);
        }
      }
      store_tile<E>(dp, f, nc32, sp, kRowC);
      store_tile<E>(yv, f, nc32, sz, kRowC);
    }
    __syncthreads();  // v and dO are dead
    if (next) load_values(hv + 1);
    // dA = -Z T^T (j < i): dbeta's and dG's sums, then B = beta_i D_ij dA_ij -> sz
    {
      float da[4][4] = {};
      tile_mma<E, false, false, 4, kOutLower>(da, sz, kRowC, m0, tt, kRowC, nc32, kC, lane);
      // dA o D (zero off the strict lower triangle); its products with K̂K̂^T (dbeta) and with
      // A = beta_i D K̂K̂^T (dG); then B = beta_i (dA o D).
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int i = frag_row(f, e), j = frag_col(f, nc32, nt, e);
          da[nt][e] = j < i ? -decay(i, j) * da[nt][e] : 0.0f;
        }
      }
      float akk[2] = {0.0f, 0.0f};
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) akk[e >> 1] += da[nt][e] * kk[nt][e];
      }
      row_sums(akk[0], akk[1], f, row_sum(kAkkRow));
      row_sums(bt[frag_row(f, 0)] * akk[0], bt[frag_row(f, 2)] * akk[1], f, row_sum(kAaRow));
      column_sums([&](int nt, int e) { return bt[frag_row(f, e)] * da[nt][e] * kk[nt][e]; }, f,
                  col_sum(kAaCol));
      scale_rows(da, f, [&](int i) { return bt[i]; });
      __syncthreads();  // all have read Z
      store_tile<E>(da, f, nc32, sz, kRowC);
    }
    __syncthreads();
    // dq̂ += (dP o sD) K̂;  dk̂ += (dP o sD)^T Q̂ + B K̂ + B^T K̂ + diag(e) U dH^T
    tile_mma<E, false, true, 8, kALower>(dq, sp, kRowC, m0, sk, kRowK, nk, kC, lane);
    tile_mma<E, true, true, 8, kAUpper>(dk, sp, kRowC, m0, sq, kRowK, nk, kC, lane);
    tile_mma<E, false, true, 8, kALower>(dk, sz, kRowC, m0, sk, kRowK, nk, kC, lane);
    tile_mma<E, true, true, 8, kAUpper>(dk, sz, kRowC, m0, sk, kRowK, nk, kC, lane);
    {
      float acc[8][4] = {};
      tile_mma<E, false, true, 8>(acc, b2, kRowK, m0, sdh, kRowK, nk, kDk, lane);
      dot_rows<E>(acc, f, nk, sk, kRowK, row_sum(kKdk));
      add_rows(dk, acc, f, [&](int i) { return ee[i]; });
    }
    __syncthreads();  // every sum is in
    if (warp == 0) {  // dbeta, dG and its reverse cumsum: two rows per lane
      auto rs = [&](int q, int i) { return row_sum(q)[i] + row_sum(q)[kC + i]; };
      auto cs = [&](int q, int j) {
        return col_sum(q)[j] + col_sum(q)[kC + j] + col_sum(q)[2 * kC + j] + col_sum(q)[3 * kC + j];
      };
      float dG[2], end = 0.0f;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = 2 * lane + r;
        const float kx = rs(kKx, i), e_kdk = ee[i] * rs(kKdk, i);
        dG[r] = rs(kQdq, i) + rs(kPpRow, i) - cs(kPpCol, i) + rs(kAaRow, i) - cs(kAaCol, i) -
                bt[i] * gam[i] * kx - e_kdk;
        end += e_kdk;
        if (i < L) {
          const int64_t t = c.t0 + i;
          st(p.dbeta.data, p.dbeta.dtype,
             c.row * p.dbeta.stride[0] + t * p.dbeta.stride[1] + hv * p.dbeta.stride[2],
             rs(kVy, i) - gam[i] * kx + rs(kAkkRow, i));
        }
      }
      end = warp_sum(end);
      float state_term = 0.0f;
      for (int w = 0; w < kThreads / 32; ++w) state_term += block[w];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        if (2 * lane + r == L - 1) dG[r] += end + gamma_last * state_term;
      }
      // reverse inclusive cumsum over i < L: a suffix scan of the lane pairs
      const float pair = (2 * lane < L ? dG[0] : 0.0f) + (2 * lane + 1 < L ? dG[1] : 0.0f);
      float run = pair;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const float y2 = __shfl_down_sync(0xffffffffu, run, o);
        if (lane + o < 32) run += y2;
      }
      const float at[2] = {run, run - (2 * lane < L ? dG[0] : 0.0f)};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = 2 * lane + r;
        if (i < L) {
          const int64_t t = c.t0 + i;
          st(p.dg.data, p.dg.dtype,
             c.row * p.dg.stride[0] + t * p.dg.stride[1] + hv * p.dg.stride[2], at[r]);
        }
      }
    }
    __syncthreads();  // the next value head's loads overwrite the tiles, its sums these sums
    if (next) load_rest(hv + 1);
  }

  // The l2norm backward r (d - x̂ (x̂.d)) of the summed dq̂, dk̂, then the stores.
  if (p.l2norm) {
    dot_rows<E>(dq, f, nk, sq, kRowK, row_sum(kQdq));
    dot_rows<E>(dk, f, nk, sk, kRowK, row_sum(kKx));
    __syncthreads();
  }
  E* dqo = reinterpret_cast<E*>(p.dq.data) + c.row * p.dq.stride[0] + h * p.dq.stride[2];
  E* dko = reinterpret_cast<E*>(p.dk.data) + c.row * p.dk.stride[0] + h * p.dk.stride[2];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int i = frag_row(f, 2 * hr), col = frag_col(f, nk, nt, 0);
      if (i >= L) continue;
      float q0 = dq[nt][2 * hr], q1 = dq[nt][2 * hr + 1];
      float k0 = dk[nt][2 * hr], k1 = dk[nt][2 * hr + 1];
      if (p.l2norm) {
        const float qd = row_sum(kQdq)[i] + row_sum(kQdq)[kC + i];
        const float kd = row_sum(kKx)[i] + row_sum(kKx)[kC + i];
        const float2 qh = pair_at<E>(sq, kRowK, i, col), kh = pair_at<E>(sk, kRowK, i, col);
        q0 = rq[i] * (q0 - qh.x * qd), q1 = rq[i] * (q1 - qh.y * qd);
        k0 = rk[i] * (k0 - kh.x * kd), k1 = rk[i] * (k1 - kh.y * kd);
      }
      *reinterpret_cast<uint32_t*>(dqo + (c.t0 + i) * p.dq.stride[1] + col) = pack2<E>(q0, q1);
      *reinterpret_cast<uint32_t*>(dko + (c.t0 + i) * p.dk.stride[1] + col) = pack2<E>(k0, k1);
    }
  }
}

}  // namespace

size_t chunk_grad_smem_bytes() { return kSmemBytes; }

template <class E>
cudaError_t launch_chunk_grad(const ChunkBwdParams& p, const V4Scratch& s, cudaStream_t stream) {
  if (s.rec.slots == 0 || p.H == 0) return cudaSuccess;
  cudaError_t status = allow_smem(chunk_grad_kernel<E>, kSmemBytes);
  if (status != cudaSuccess) return status;
  const dim3 grid(static_cast<unsigned>(s.rec.slots * p.H), 1,
                  static_cast<unsigned>(p.cu.data ? 1 : p.N));
  chunk_grad_kernel<E><<<grid, kThreads, kSmemBytes, stream>>>(p, s);
  return cudaGetLastError();
}

template cudaError_t launch_chunk_grad<__half>(const ChunkBwdParams&, const V4Scratch&,
                                               cudaStream_t);
template cudaError_t launch_chunk_grad<__nv_bfloat16>(const ChunkBwdParams&, const V4Scratch&,
                                                      cudaStream_t);

}  // namespace hops::cuda
