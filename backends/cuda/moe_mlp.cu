// moe_expert_mlp: the grouped SwiGLU MLP as two grouped GEMMs over work tiles
// that the device lists from the counts (plan_kernel: no host sync). On a
// Hopper with sm_90a code both GEMMs run on wgmma (moe_mlp_sm90.cu) over the
// same plan; elsewhere, or where that path refuses, tensor
// cores (f16/bf16, mma.sync m16n8k16, f32 accumulation): the up GEMM holds
// an expert's gate and up columns n0..n0+127 in one 256-row weight tile and
// writes h = silu(gate) * up (storage dtype) to scratch; the down GEMM
// multiplies h by the expert's down projection. Both run persistent CTAs of
// 8 warps over 128 x 256 tiles, three cp.async stages of depth 64. Every
// other call runs the general f32 kernel (gen_gemm_kernel), which the
// backward shares. Also here: the plan, and zeros for the rows past the
// counted ones.
#include <algorithm>

#include "moe_common.cuh"

namespace hops::cuda {

namespace moe {

namespace {

constexpr int kPlanThreads = 1024;

__device__ __forceinline__ int64_t clamped_count(const MoeIndex& counts, int64_t e, int64_t R) {
  const int64_t c = ld_idx(counts, e);
  return c < 0 ? 0 : (c > R ? R : c);
}

__device__ __forceinline__ int64_t entries_of(int64_t rows, int64_t rows_per_entry) {
  return rows_per_entry ? (rows + rows_per_entry - 1) / rows_per_entry : (rows > 0 ? 1 : 0);
}

// One CTA; thread i owns a contiguous run of experts. Three passes over the
// counts: the clamped row offsets, each expert's entries, the entry list.
__global__ void __launch_bounds__(kPlanThreads)
    plan_kernel(const MoeIndex counts, int64_t R, const Plan plan) {
  __shared__ int64_t partial[kPlanThreads / 32];
  const int64_t E = plan.experts, per = (E + kPlanThreads - 1) / kPlanThreads;
  const int64_t e0 = min(E, threadIdx.x * per), e1 = min(E, e0 + per);
  int64_t rows = 0;
  for (int64_t e = e0; e < e1; ++e) rows = min(rows + clamped_count(counts, e, R), R);
  int64_t used;
  const int64_t base = block_exclusive_scan<kPlanThreads>(rows, R, partial, used);
  int64_t entries = 0;
  for (int64_t e = e0, f = base; e < e1; ++e) {
    const int64_t next = min(f + clamped_count(counts, e, R), R);
    plan.first[e] = f;
    entries += entries_of(next - f, plan.rows_per_entry);
    f = next;
  }
  int64_t total;
  const int64_t entry0 = block_exclusive_scan<kPlanThreads>(entries, INT64_MAX / 2, partial, total);
  for (int64_t e = e0, f = base, t = entry0; e < e1; ++e) {
    const int64_t next = min(f + clamped_count(counts, e, R), R);
    const int64_t m = entries_of(next - f, plan.rows_per_entry);
    plan.tstart[e] = t;
    for (int64_t i = 0; i < m; ++i) plan.entry[t + i] = static_cast<int32_t>(e);
    t += m, f = next;
  }
  if (threadIdx.x == 0) plan.first[E] = used, plan.tstart[E] = total;
}

// A warp per row of [first, R): zeros, 16 bytes at a time where the rows allow.
__global__ void __launch_bounds__(256)
    zero_rows_kernel(const Arg t, const int64_t* first, int64_t R) {
  const int64_t begin = first ? *first : 0;
  const int64_t cols = t.shape[1];
  const int size = t.dtype == kF32 ? 4 : 2;
  const bool vector = t.stride[1] == 1 && (cols * size) % 16 == 0 &&
                      (t.stride[0] * size) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(t.data) % 16 == 0;
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  for (int64_t r = begin + int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32; r < R;
       r += warps) {
    char* row = t.data + r * t.stride[0] * size;
    if (vector) {
      for (int64_t c = lane; c < cols * size / 16; c += 32)
        reinterpret_cast<uint4*>(row)[c] = make_uint4(0, 0, 0, 0);
    } else if (size == 4) {
      for (int64_t c = lane; c < cols; c += 32)
        reinterpret_cast<float*>(row)[c * t.stride[1]] = 0.0f;
    } else {
      for (int64_t c = lane; c < cols; c += 32)
        reinterpret_cast<uint16_t*>(row)[c * t.stride[1]] = 0;
    }
  }
}

// ---- the general GEMM (f32 CUDA cores) ----------------------------------------------

// A CTA computes a 64 x 64 tile of C (swiglu: 64 rows x 32 h columns from 32
// gate and 32 up columns) in steps of 16 deep, A and B staged as f32 in smem;
// thread (tx, ty) owns rows ty + 16i and four columns: 4tx..4tx+3, or
// (swiglu) gate 2tx, 2tx+1 and up 32+2tx, 33+2tx.
constexpr int kGenTile = kGenRows, kGenDepth = 16, kGenThreads = 256;

__device__ __forceinline__ int gen_col(bool swiglu, int tx, int c) {
  return swiglu ? (c < 2 ? 2 * tx + c : 32 + 2 * tx + c - 2) : 4 * tx + c;
}

int64_t gen_column_tiles(const GenGemm& g) {
  const int64_t width = g.swiglu ? kGenTile / 2 : kGenTile;
  const int64_t n = (g.N + width - 1) / width;
  return g.plan.rows_per_entry ? n : n * ((g.M + kGenTile - 1) / kGenTile);
}

__global__ void __launch_bounds__(kGenThreads) gen_gemm_kernel(const GenGemm g, int64_t nc) {
  __shared__ float sA[kGenDepth][kGenTile + 1];
  __shared__ float sB[kGenDepth][kGenTile + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const bool rows_mode = g.plan.rows_per_entry > 0, swiglu = g.swiglu;
  const int64_t tiles = g.plan.tstart[g.plan.experts] * nc;
  const bool a_kfast = g.a_sk == 1, b_kfast = g.b_sk == 1;
  for (int64_t L = blockIdx.x; L < tiles; L += gridDim.x) {
    const Tile t = decode_tile(g.plan, L, nc);
    int64_t m0 = 0, n0, mrow, krow, M, K;
    if (rows_mode) {
      n0 = t.col * (swiglu ? 32 : 64), mrow = t.row0, krow = 0, M = t.rows, K = g.K;
    } else {
      const int64_t ntc = (g.N + kGenTile - 1) / kGenTile;
      m0 = (t.col / ntc) * kGenTile, n0 = (t.col % ntc) * kGenTile;
      mrow = 0, krow = t.row0, M = g.M, K = t.rows;
    }
    float acc[4][4] = {};
    for (int64_t k0 = 0; k0 < K; k0 += kGenDepth) {
      __syncthreads();  // the previous step's readers are done
#pragma unroll
      for (int i = 0; i < kGenTile * kGenDepth / kGenThreads; ++i) {
        const int idx = tid + i * kGenThreads;
        const int kk = a_kfast ? idx % kGenDepth : idx / kGenTile;
        const int mm = a_kfast ? idx / kGenDepth : idx % kGenTile;
        const int64_t m = m0 + mm, k = k0 + kk;
        sA[kk][mm] =
            m < M && k < K
                ? ld(g.a, g.a_dtype, (mrow + m) * g.a_sm + (krow + k) * g.a_sk + t.expert * g.a_se)
                : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kGenTile * kGenDepth / kGenThreads; ++i) {
        const int idx = tid + i * kGenThreads;
        const int kk = b_kfast ? idx % kGenDepth : idx / kGenTile;
        const int cc = b_kfast ? idx / kGenDepth : idx % kGenTile;
        const int64_t k = k0 + kk;
        // swiglu: tile column cc < 32 is gate column n0 + cc, else up column N + n0 + cc - 32
        const int64_t n = swiglu ? (cc < 32 ? n0 + cc : g.N + n0 + cc - 32) : n0 + cc;
        const bool live = swiglu ? n0 + cc % 32 < g.N : n < g.N;
        sB[kk][cc] = live && k < K
                         ? ld(g.b, g.b_dtype, (krow + k) * g.b_sk + n * g.b_sn + t.expert * g.b_se)
                         : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kGenDepth; ++kk) {
        float av[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = sA[kk][ty + 16 * i];
#pragma unroll
        for (int c = 0; c < 4; ++c) bv[c] = sB[kk][gen_col(swiglu, tx, c)];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[i][c] = fmaf(av[i], bv[c], acc[i][c]);
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + ty + 16 * i;
      if (m >= M) continue;
      const int64_t row = (mrow + m) * g.c_sm + t.expert * g.c_se;
      if (swiglu) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int64_t n = n0 + 2 * tx + c;
          if (n < g.N) st(g.c, g.c_dtype, row + n * g.c_sn, siluf_(acc[i][c]) * acc[i][2 + c]);
        }
      } else {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t n = n0 + 4 * tx + c;
          if (n < g.N) st(g.c, g.c_dtype, row + n * g.c_sn, acc[i][c]);
        }
      }
    }
  }
}

// ---- tensor cores ---------------------------------------------------------------------

constexpr int kPitch = kBK + 8;  // [rows][kBK] tiles: 144-byte rows, conflict-free ldmatrix
constexpr int kUpCols = 128;     // h columns of an up tile (its 128 gate + 128 up weight rows)
constexpr int kTileRows = 128;   // rows of a row tile
constexpr int kTileCols = 256;   // columns of a down tile

// h[r, n] = silu(x_r . Wg[n]) * (x_r . Wu[n]) for the tile's rows and h
// columns n0..n0+127: warp (wm, wn) owns rows 64wm.. and h columns 32wn..,
// from gate rows 32wn.. and up rows 128+32wn.. of the weight tile.
template <class E>
__global__ void __launch_bounds__(kTcThreads, 1)
    up_tc_kernel(const MoeMlpParams p, const Plan plan, E* h) {
  extern __shared__ uint4 smem[];
  constexpr int kStage = (kTileRows + 2 * kUpCols) * kPitch;
  E* const tiles_base = reinterpret_cast<E*>(smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
  const int64_t I = p.I, Hd = p.Hd, nc = ceil_div(I, kUpCols);
  const E* x = reinterpret_cast<const E*>(p.rows.data);
  const E* w = reinterpret_cast<const E*>(p.gate_up.data);
  const int64_t xs = p.rows.stride[0], we = p.gate_up.stride[0], ws = p.gate_up.stride[1];
  float acc[4][8][4];
  zero_acc(acc);
  persistent_pipeline(
      plan.tstart[p.E] * nc, [&](int64_t L) { return decode_tile(plan, L, nc); },
      [&](const Tile&) { return ceil_div(Hd, kBK); },
      [&](const Tile& t, int64_t step, int buffer) {
        E* sA = tiles_base + buffer * kStage;
        E* sB = sA + kTileRows * kPitch;
        const int64_t k0 = step * kBK, n0 = t.col * kUpCols, live = min(int64_t{kUpCols}, I - n0);
        load_tile<kTileRows, kBK, kPitch>(sA, x + t.row0 * xs + k0, xs, t.rows, Hd - k0, tid);
        const E* we0 = w + t.expert * we + k0;
        load_tile<kUpCols, kBK, kPitch>(sB, we0 + n0 * ws, ws, live, Hd - k0, tid);
        load_tile<kUpCols, kBK, kPitch>(sB + kUpCols * kPitch, we0 + (I + n0) * ws, ws, live,
                                        Hd - k0, tid);
      },
      [&](const Tile& t, int buffer) {
        const E* sA = tiles_base + buffer * kStage;
        const E* sB = sA + kTileRows * kPitch;
        const int m_live = live_tiles<4>(t.rows, 64 * wm);
        const E* const b[2] = {sB + (32 * wn) * kPitch + b_rows<kPitch>(lane),
                               sB + (kUpCols + 32 * wn) * kPitch + b_rows<kPitch>(lane)};
        warp_mma<E, 4, 8, kPitch, kPitch, false, false>(
            acc, sA + (64 * wm) * kPitch + a_rows<kPitch>(lane), b, m_live);
      },
      [&](const Tile& t) {
        const int64_t n0 = t.col * kUpCols + 32 * wn + 2 * (lane & 3);
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
          for (int hi = 0; hi < 2; ++hi) {
            const int64_t r = 64 * wm + 16 * mi + (lane >> 2) + 8 * hi;
            if (r >= t.rows) continue;
            E* out = h + (t.row0 + r) * I;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              const int64_t n = n0 + 8 * q;
              if (n >= I) continue;
              st_pair(out + n, siluf_(acc[mi][q][2 * hi]) * acc[mi][q + 4][2 * hi],
                      siluf_(acc[mi][q][2 * hi + 1]) * acc[mi][q + 4][2 * hi + 1]);
            }
          }
        }
        zero_acc(acc);
      });
}

}  // namespace

// c[r, n] = a_r . B[e][n] for the tile's rows and columns n0..n0+255 (B
// stored [n][k], or with kTransB [k][n]); warp (wm, wn) owns rows 64wm.. and
// columns 64wn... The down GEMM (B = down_proj) and the backward's d_rows (B
// = gate_up_proj, transposed).
template <class E, bool kTransB>
__global__ void __launch_bounds__(kTcThreads, 1) row_gemm_tc_kernel(const RowGemm<E> g) {
  extern __shared__ uint4 smem[];
  constexpr int kBPitch = kTransB ? kTileCols + 8 : kPitch;
  constexpr int kStage = kTileRows * kPitch + (kTransB ? kBK * kBPitch : kTileCols * kPitch);
  E* const tiles_base = reinterpret_cast<E*>(smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
  const int64_t N = g.N, K = g.K, nc = (N + kTileCols - 1) / kTileCols;
  float acc[4][8][4];
  zero_acc(acc);
  persistent_pipeline(
      g.plan.tstart[g.plan.experts] * nc, [&](int64_t L) { return decode_tile(g.plan, L, nc); },
      [&](const Tile&) { return (K + kBK - 1) / kBK; },
      [&](const Tile& t, int64_t step, int buffer) {
        E* sA = tiles_base + buffer * kStage;
        E* sB = sA + kTileRows * kPitch;
        const int64_t k0 = step * kBK, n0 = t.col * kTileCols;
        load_tile<kTileRows, kBK, kPitch>(sA, g.a + t.row0 * g.a_s + k0, g.a_s, t.rows, K - k0,
                                          tid);
        const E* b = g.b + t.expert * g.b_se;
        if constexpr (kTransB) {
          load_tile<kBK, kTileCols, kBPitch>(sB, b + k0 * g.b_s + n0, g.b_s, K - k0, N - n0, tid);
        } else {
          load_tile<kTileCols, kBK, kPitch>(sB, b + n0 * g.b_s + k0, g.b_s, N - n0, K - k0, tid);
        }
      },
      [&](const Tile& t, int buffer) {
        const E* sA = tiles_base + buffer * kStage;
        const E* sB = sA + kTileRows * kPitch;
        const int m_live = live_tiles<4>(t.rows, 64 * wm);
        const E* const b[2] = {kTransB ? sB + 64 * wn + b_trans<kBPitch>(lane)
                                       : sB + (64 * wn) * kPitch + b_rows<kPitch>(lane),
                               kTransB ? sB + 64 * wn + 32 + b_trans<kBPitch>(lane)
                                       : sB + (64 * wn + 32) * kPitch + b_rows<kPitch>(lane)};
        warp_mma<E, 4, 8, kPitch, kBPitch, false, kTransB>(
            acc, sA + (64 * wm) * kPitch + a_rows<kPitch>(lane), b, m_live);
      },
      [&](const Tile& t) {
        const int64_t n0 = t.col * kTileCols + 64 * wn + 2 * (lane & 3);
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
          for (int hi = 0; hi < 2; ++hi) {
            const int64_t r = 64 * wm + 16 * mi + (lane >> 2) + 8 * hi;
            if (r >= t.rows) continue;
            E* out = g.c + (t.row0 + r) * g.c_s;
#pragma unroll
            for (int q = 0; q < 8; ++q) {
              const int64_t n = n0 + 8 * q;
              if (n < N) st_pair(out + n, acc[mi][q][2 * hi], acc[mi][q][2 * hi + 1]);
            }
          }
        }
        zero_acc(acc);
      });
}

template <class E, bool kTransB>
cudaError_t launch_row_gemm_tc(const RowGemm<E>& g, int64_t max_entries, int sms,
                               cudaStream_t stream) {
  constexpr size_t kSmem =
      size_t(kStages) *
      (kTileRows * kPitch + (kTransB ? kBK * (kTileCols + 8) : kTileCols * kPitch)) * 2;
  const int64_t tiles = max_entries * ((g.N + kTileCols - 1) / kTileCols);
  if (tiles == 0) return cudaSuccess;
  const cudaError_t status = allow_smem(row_gemm_tc_kernel<E, kTransB>, kSmem);
  if (status != cudaSuccess) return status;
  row_gemm_tc_kernel<E, kTransB>
      <<<static_cast<unsigned>(std::min<int64_t>(tiles, sms)), kTcThreads, kSmem, stream>>>(g);
  return cudaGetLastError();
}

template cudaError_t launch_row_gemm_tc<__half, true>(const RowGemm<__half>&, int64_t, int,
                                                      cudaStream_t);
template cudaError_t launch_row_gemm_tc<__nv_bfloat16, true>(const RowGemm<__nv_bfloat16>&, int64_t,
                                                             int, cudaStream_t);

cudaError_t launch_plan(const MoeIndex& counts, int64_t R, const Plan& plan, cudaStream_t stream) {
  plan_kernel<<<1, kPlanThreads, 0, stream>>>(counts, R, plan);
  return cudaGetLastError();
}

cudaError_t launch_zero_rows(const Arg& t, const int64_t* first, int64_t R, int sms,
                             cudaStream_t stream) {
  if (R == 0 || t.shape[1] == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((R + 7) / 8, int64_t{4} * sms);
  zero_rows_kernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(t, first, R);
  return cudaGetLastError();
}

cudaError_t launch_gen_gemm(const GenGemm& g, int64_t max_entries, int sms, cudaStream_t stream) {
  const int64_t nc = gen_column_tiles(g);
  const int64_t tiles = max_entries * nc;
  if (tiles == 0) return cudaSuccess;
  gen_gemm_kernel<<<static_cast<unsigned>(std::min<int64_t>(tiles, int64_t{8} * sms)), kGenThreads,
                    0, stream>>>(g, nc);
  return cudaGetLastError();
}

}  // namespace moe

using namespace moe;

namespace {

int64_t rows_per_entry(const MoeMlpParams& p) { return p.tensor_cores ? kTileRows : kGenRows; }

size_t h_bytes(const MoeMlpParams& p) {
  return align_up(size_t(p.R) * size_t(p.I) * (p.tensor_cores ? 2 : 4));
}

// The forward's GEMMs on mma.sync: the up kernel (h = silu(g) u), then the
// down row GEMM.
cudaError_t launch_mma(const MoeMlpParams& p, const Plan& plan, void* h, int64_t max_entries,
                       cudaStream_t stream) {
  const auto run = [&]<class E>(E) {
    constexpr size_t kSmem = size_t(kStages) * (kTileRows + 2 * kUpCols) * kPitch * 2;
    const int64_t up_tiles = max_entries * ceil_div(p.I, kUpCols);
    cudaError_t s = allow_smem(up_tc_kernel<E>, kSmem);
    if (s != cudaSuccess) return s;
    up_tc_kernel<E>
        <<<static_cast<unsigned>(std::min<int64_t>(up_tiles, p.sms)), kTcThreads, kSmem, stream>>>(
            p, plan, static_cast<E*>(h));
    if ((s = cudaGetLastError()) != cudaSuccess) return s;
    const RowGemm<E> down{.a = static_cast<const E*>(h),
                          .a_s = p.I,
                          .b = reinterpret_cast<const E*>(p.down.data),
                          .b_se = p.down.stride[0],
                          .b_s = p.down.stride[1],
                          .c = reinterpret_cast<E*>(p.out.data),
                          .c_s = p.out.stride[0],
                          .N = p.Hd,
                          .K = p.I,
                          .plan = plan};
    return launch_row_gemm_tc<E, false>(down, max_entries, p.sms, stream);
  };
  return p.rows.dtype == kBF16 ? run(__nv_bfloat16{}) : run(__half{});
}

// The forward's GEMMs on the general f32 kernel, h in f32.
cudaError_t launch_general(const MoeMlpParams& p, const Plan& plan, void* h, int64_t max_entries,
                           cudaStream_t stream) {
  const GenGemm up{.a = p.rows.data,
                   .a_dtype = p.rows.dtype,
                   .a_sm = p.rows.stride[0],
                   .a_sk = p.rows.stride[1],
                   .a_se = 0,
                   .b = p.gate_up.data,
                   .b_dtype = p.gate_up.dtype,
                   .b_sk = p.gate_up.stride[2],
                   .b_sn = p.gate_up.stride[1],
                   .b_se = p.gate_up.stride[0],
                   .c = static_cast<char*>(h),
                   .c_dtype = kF32,
                   .c_sm = p.I,
                   .c_sn = 1,
                   .c_se = 0,
                   .M = 0,
                   .N = p.I,
                   .K = p.Hd,
                   .swiglu = 1,
                   .plan = plan};
  const cudaError_t status = launch_gen_gemm(up, max_entries, p.sms, stream);
  if (status != cudaSuccess) return status;
  const GenGemm down{.a = static_cast<char*>(h),
                     .a_dtype = kF32,
                     .a_sm = p.I,
                     .a_sk = 1,
                     .a_se = 0,
                     .b = p.down.data,
                     .b_dtype = p.down.dtype,
                     .b_sk = p.down.stride[2],
                     .b_sn = p.down.stride[1],
                     .b_se = p.down.stride[0],
                     .c = p.out.data,
                     .c_dtype = p.out.dtype,
                     .c_sm = p.out.stride[0],
                     .c_sn = p.out.stride[1],
                     .c_se = 0,
                     .M = 0,
                     .N = p.Hd,
                     .K = p.I,
                     .swiglu = 0,
                     .plan = plan};
  return launch_gen_gemm(down, max_entries, p.sms, stream);
}

}  // namespace

size_t moe_expert_mlp_scratch_bytes(const MoeMlpParams& p) {
  return h_bytes(p) + plan_bytes(p.R, p.E, rows_per_entry(p));
}

cudaError_t launch_moe_expert_mlp(const MoeMlpParams& p, void* scratch, cudaStream_t stream) {
  if (p.R == 0 || p.Hd == 0) return cudaSuccess;
  if (p.I == 0) return launch_zero_rows(p.out, nullptr, p.R, p.sms, stream);
  char* cursor = static_cast<char*>(scratch);
  void* h = cursor;
  cursor += h_bytes(p);
  const int64_t rpe = rows_per_entry(p);
  const Plan plan = carve_plan(cursor, p.R, p.E, rpe);
  const int64_t max_entries = plan_max_entries(p.R, p.E, rpe);
  cudaError_t status = launch_plan(p.counts, p.R, plan, stream);
  if (status != cudaSuccess) return status;
  status = cudaErrorNotSupported;  // until a path takes the call
  if (p.tensor_cores && p.path != MoeMlpPath::mma)
    status = launch_expert_mlp_sm90(p, plan, h, max_entries, stream);
  if (status == cudaErrorNotSupported) {
    if (p.path == MoeMlpPath::wgmma) return status;
    status = p.tensor_cores ? launch_mma(p, plan, h, max_entries, stream)
                            : launch_general(p, plan, h, max_entries, stream);
  }
  if (status != cudaSuccess) return status;
  return launch_zero_rows(p.out, plan.first + p.E, p.R, p.sms, stream);
}

}  // namespace hops::cuda
