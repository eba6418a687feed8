// moe_expert_mlp_bwd, deterministic (every output element summed by one
// thread in a fixed order; no atomics). Per expert, with g, u the gate and up
// pre-activations of its rows:
//   1. one pass over Hd per (row tile, 64 h columns): g, u = x [Wg; Wu]^T and
//      dh = d_out Wd together, then h = silu(g) u, du = dh silu(g) and dg =
//      dh u silu'(g) into scratch (dg | du as one [R, 2I] matrix);
//   2. d_rows = [dg | du] gate_up_proj[e] (K = 2I);
//   3. d_down[e] = d_out^T h and d_gate_up[e] = [dg | du]^T x: one CTA per
//      output tile of an expert, over its rows in row order.
// Tensor cores (f16/bf16; moe_mlp.cu says when) or the general f32 kernel
// with an elementwise step between its GEMMs.
#include <algorithm>

#include "moe_common.cuh"

namespace hops::cuda {

namespace moe {

namespace {

// ---- 1. the fused pass ---------------------------------------------------------------

// A tile: 128 rows x 64 h columns. Warp (wm, wn) of 4 x 2 owns rows 32wm..
// and h columns 32wn..: g | u from x and the weight tile's gate rows 32wn..
// and up rows 64+32wn.. (acc_gu: n8 tiles 0-3 gate, 4-7 up), dh from d_out
// and the down projection's columns read as [k][n] (acc_dh).
constexpr int kPitch = kBK + 8;
constexpr int kRows = 128, kCols = 64;
constexpr int kFusedStage = (3 * kRows + kBK) * kPitch;  // x, d_out, gate|up rows, Wd^T
constexpr size_t kFusedSmem = size_t(kStages) * kFusedStage * 2;

template <class E>
__global__ void __launch_bounds__(kTcThreads, 1)
    swiglu_bwd_tc_kernel(const MoeMlpBwdParams p, const Plan plan, E* h, E* dgu) {
  extern __shared__ uint4 smem[];
  E* const tiles_base = reinterpret_cast<E*>(smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
  const int64_t I = p.I, Hd = p.Hd, nc = ceil_div(I, kCols);
  const E* x = reinterpret_cast<const E*>(p.rows.data);
  const E* dout = reinterpret_cast<const E*>(p.d_out.data);
  const E* w = reinterpret_cast<const E*>(p.gate_up.data);
  const E* wd = reinterpret_cast<const E*>(p.down.data);
  const int64_t xs = p.rows.stride[0], ds = p.d_out.stride[0];
  const int64_t we = p.gate_up.stride[0], ws = p.gate_up.stride[1];
  const int64_t de = p.down.stride[0], dr = p.down.stride[1];
  float acc_gu[2][8][4], acc_dh[2][4][4];
  zero_acc(acc_gu);
  zero_acc(acc_dh);
  persistent_pipeline(
      plan.tstart[p.E] * nc, [&](int64_t L) { return decode_tile(plan, L, nc); },
      [&](const Tile&) { return ceil_div(Hd, kBK); },
      [&](const Tile& t, int64_t step, int buffer) {
        E* sX = tiles_base + buffer * kFusedStage;
        E* sD = sX + kRows * kPitch;
        E* sW = sD + kRows * kPitch;
        E* sV = sW + kRows * kPitch;
        const int64_t k0 = step * kBK, n0 = t.col * kCols, live = min(int64_t{kCols}, I - n0);
        load_tile<kRows, kBK, kPitch>(sX, x + t.row0 * xs + k0, xs, t.rows, Hd - k0, tid);
        load_tile<kRows, kBK, kPitch>(sD, dout + t.row0 * ds + k0, ds, t.rows, Hd - k0, tid);
        const E* we0 = w + t.expert * we + k0;
        load_tile<kCols, kBK, kPitch>(sW, we0 + n0 * ws, ws, live, Hd - k0, tid);
        load_tile<kCols, kBK, kPitch>(sW + kCols * kPitch, we0 + (I + n0) * ws, ws, live, Hd - k0,
                                      tid);
        load_tile<kBK, kCols, kPitch>(sV, wd + t.expert * de + k0 * dr + n0, dr, Hd - k0, I - n0,
                                      tid);
      },
      [&](const Tile& t, int buffer) {
        const E* sX = tiles_base + buffer * kFusedStage;
        const E* sD = sX + kRows * kPitch;
        const E* sW = sD + kRows * kPitch;
        const E* sV = sW + kRows * kPitch;
        const int m_live = live_tiles<2>(t.rows, 32 * wm);
        const int a_off = (32 * wm) * kPitch + a_rows<kPitch>(lane);
        const E* const gu[2] = {sW + (32 * wn) * kPitch + b_rows<kPitch>(lane),
                                sW + (kCols + 32 * wn) * kPitch + b_rows<kPitch>(lane)};
        warp_mma<E, 2, 8, kPitch, kPitch, false, false>(acc_gu, sX + a_off, gu, m_live);
        const E* const dh[2] = {sV + 32 * wn + b_trans<kPitch>(lane),
                                sV + 32 * wn + 16 + b_trans<kPitch>(lane)};
        warp_mma<E, 2, 4, kPitch, kPitch, false, true>(acc_dh, sD + a_off, dh, m_live);
      },
      [&](const Tile& t) {
        const int64_t n0 = t.col * kCols + 32 * wn + 2 * (lane & 3);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
          for (int hi = 0; hi < 2; ++hi) {
            const int64_t r = 32 * wm + 16 * mi + (lane >> 2) + 8 * hi;
            if (r >= t.rows) continue;
            const int64_t row = t.row0 + r;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              const int64_t n = n0 + 8 * q;
              if (n >= I) continue;
              float hv[2], dg[2], du[2];
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const float g = acc_gu[mi][q][2 * hi + c], u = acc_gu[mi][q + 4][2 * hi + c];
                const float d = acc_dh[mi][q][2 * hi + c];
                const float s = sigmoidf_(g), silu = g * s;
                hv[c] = silu * u, du[c] = d * silu, dg[c] = d * u * s * (1.0f + g * (1.0f - s));
              }
              if (h) st_pair(h + row * I + n, hv[0], hv[1]);
              st_pair(dgu + row * 2 * I + n, dg[0], dg[1]);
              st_pair(dgu + row * 2 * I + I + n, du[0], du[1]);
            }
          }
        }
        zero_acc(acc_gu);
        zero_acc(acc_dh);
      });
}

// ---- 3. weight gradients ----------------------------------------------------------------

// C[e](m, n) = sum over expert e's rows r, in order, of a[r, m] b[r, n]: both
// operands read as [k][*] tiles (ldmatrix.trans), 128 x 256 output tiles,
// warp (wm, wn) of 2 x 4 owning rows 64wm.. and columns 64wn...
template <class E>
struct WeightGemm {
  const E* a;
  int64_t a_s;
  const E* b;
  int64_t b_s;
  E* c;
  int64_t c_se, c_s;
  int64_t M, N;
  Plan plan;  // one entry per expert with rows
};

constexpr int kWm = 128, kWn = 256;
constexpr int kWaPitch = kWm + 8, kWbPitch = kWn + 8;
constexpr int kWStage = kBK * (kWaPitch + kWbPitch);
constexpr size_t kWSmem = size_t(kStages) * kWStage * 2;

template <class E>
__global__ void __launch_bounds__(kTcThreads, 1) weight_grad_tc_kernel(const WeightGemm<E> g) {
  extern __shared__ uint4 smem[];
  E* const tiles_base = reinterpret_cast<E*>(smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
  const int64_t ntc = ceil_div(g.N, kWn), nc = ceil_div(g.M, kWm) * ntc;
  float acc[4][8][4];
  zero_acc(acc);
  persistent_pipeline(
      g.plan.tstart[g.plan.experts] * nc, [&](int64_t L) { return decode_tile(g.plan, L, nc); },
      [&](const Tile& t) { return ceil_div(t.rows, kBK); },
      [&](const Tile& t, int64_t step, int buffer) {
        E* sA = tiles_base + buffer * kWStage;
        E* sB = sA + kBK * kWaPitch;
        const int64_t k0 = step * kBK, r0 = t.row0 + k0;
        const int64_t m0 = (t.col / ntc) * kWm, n0 = (t.col % ntc) * kWn;
        load_tile<kBK, kWm, kWaPitch>(sA, g.a + r0 * g.a_s + m0, g.a_s, t.rows - k0, g.M - m0, tid);
        load_tile<kBK, kWn, kWbPitch>(sB, g.b + r0 * g.b_s + n0, g.b_s, t.rows - k0, g.N - n0, tid);
      },
      [&](const Tile& t, int buffer) {
        const E* sA = tiles_base + buffer * kWStage;
        const E* sB = sA + kBK * kWaPitch;
        const int64_t m0 = (t.col / ntc) * kWm;
        const int m_live = live_tiles<4>(g.M - m0, 64 * wm);
        const E* const b[2] = {sB + 64 * wn + b_trans<kWbPitch>(lane),
                               sB + 64 * wn + 32 + b_trans<kWbPitch>(lane)};
        warp_mma<E, 4, 8, kWaPitch, kWbPitch, true, true>(
            acc, sA + 64 * wm + b_rows<kWaPitch>(lane), b, m_live);
      },
      [&](const Tile& t) {
        const int64_t m0 = (t.col / ntc) * kWm + 64 * wm + (lane >> 2);
        const int64_t n0 = (t.col % ntc) * kWn + 64 * wn + 2 * (lane & 3);
        E* c = g.c + t.expert * g.c_se;
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
#pragma unroll
          for (int hi = 0; hi < 2; ++hi) {
            const int64_t m = m0 + 16 * mi + 8 * hi;
            if (m >= g.M) continue;
#pragma unroll
            for (int q = 0; q < 8; ++q) {
              const int64_t n = n0 + 8 * q;
              if (n < g.N) st_pair(c + m * g.c_s + n, acc[mi][q][2 * hi], acc[mi][q][2 * hi + 1]);
            }
          }
        }
        zero_acc(acc);
      });
}

template <class E>
cudaError_t launch_weight_grad_tc(const WeightGemm<E>& g, int64_t max_entries, int sms,
                                  cudaStream_t stream) {
  const int64_t tiles = max_entries * ceil_div(g.M, kWm) * ceil_div(g.N, kWn);
  if (tiles == 0) return cudaSuccess;
  const cudaError_t status = allow_smem(weight_grad_tc_kernel<E>, kWSmem);
  if (status != cudaSuccess) return status;
  weight_grad_tc_kernel<E>
      <<<static_cast<unsigned>(std::min<int64_t>(tiles, sms)), kTcThreads, kWSmem, stream>>>(g);
  return cudaGetLastError();
}

// ---- the general path's elementwise step and the experts without rows ------------------

// gu [R, 2I] holds g | u and dh_h [R, I] holds dh for the used rows; they
// become dg | du and h.
__global__ void swiglu_bwd_kernel(float* gu, float* dh_h, const int64_t* used, int64_t I) {
  const int64_t n = *used * I;
  for (int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = idx / I, i = idx % I;
    float* row = gu + r * 2 * I;
    const float g = row[i], u = row[I + i], d = dh_h[idx];
    const float s = sigmoidf_(g), silu = g * s;
    row[i] = d * u * s * (1.0f + g * (1.0f - s));
    row[I + i] = d * silu;
    dh_h[idx] = silu * u;
  }
}

// Zeros the [E, a, b] weight gradient's slabs of the experts without rows.
__global__ void zero_empty_experts_kernel(const Arg w, const int64_t* first) {
  const int size = w.dtype == kF32 ? 4 : 2;
  for (int64_t e = blockIdx.x; e < w.shape[0]; e += gridDim.x) {
    if (first[e + 1] != first[e]) continue;
    for (int64_t i = 0; i < w.shape[1]; ++i) {
      char* row = w.data + (e * w.stride[0] + i * w.stride[1]) * size;
      for (int64_t j = threadIdx.x; j < w.shape[2]; j += blockDim.x) {
        if (size == 4) {
          reinterpret_cast<float*>(row)[j * w.stride[2]] = 0.0f;
        } else {
          reinterpret_cast<uint16_t*>(row)[j * w.stride[2]] = 0;
        }
      }
    }
  }
}

cudaError_t zero_empty_experts(const Arg& w, const Plan& plan, int sms, cudaStream_t stream) {
  if (!w.data || w.shape[0] * w.shape[1] * w.shape[2] == 0) return cudaSuccess;
  zero_empty_experts_kernel<<<static_cast<unsigned>(std::min<int64_t>(w.shape[0], 4 * sms)), 256, 0,
                              stream>>>(w, plan.first);
  return cudaGetLastError();
}

// ---- the two paths -----------------------------------------------------------------------

struct BwdScratch {
  void *h, *dgu;  // [R, I] and [R, 2I]: storage dtype (tensor cores) or f32
  Plan rows, experts;
};

size_t element_bytes(const MoeMlpBwdParams& p) { return p.tensor_cores ? 2 : 4; }
int64_t rows_per_entry(const MoeMlpBwdParams& p) { return p.tensor_cores ? kRows : kGenRows; }

BwdScratch carve(const MoeMlpBwdParams& p, void* scratch) {
  char* cursor = static_cast<char*>(scratch);
  BwdScratch s;
  s.h = cursor;
  cursor += align_up(size_t(p.R) * size_t(p.I) * element_bytes(p));
  s.dgu = cursor;
  cursor += align_up(size_t(p.R) * size_t(2 * p.I) * element_bytes(p));
  s.rows = carve_plan(cursor, p.R, p.E, rows_per_entry(p));
  s.experts = carve_plan(cursor, p.R, p.E, 0);
  return s;
}

template <class E>
cudaError_t run_tensor_cores(const MoeMlpBwdParams& p, const BwdScratch& s, cudaStream_t stream) {
  const int64_t I = p.I, row_entries = plan_max_entries(p.R, p.E, kRows);
  const int64_t expert_entries = plan_max_entries(p.R, p.E, 0);
  E* h = p.d_down.data ? static_cast<E*>(s.h) : nullptr;
  E* dgu = static_cast<E*>(s.dgu);
  const int64_t fused_tiles = row_entries * ceil_div(I, kCols);
  if (fused_tiles > 0) {
    cudaError_t status = allow_smem(swiglu_bwd_tc_kernel<E>, kFusedSmem);
    if (status != cudaSuccess) return status;
    swiglu_bwd_tc_kernel<E><<<static_cast<unsigned>(std::min<int64_t>(fused_tiles, p.sms)),
                              kTcThreads, kFusedSmem, stream>>>(p, s.rows, h, dgu);
    if ((status = cudaGetLastError()) != cudaSuccess) return status;
  }
  const RowGemm<E> d_rows{.a = dgu,
                          .a_s = 2 * I,
                          .b = reinterpret_cast<const E*>(p.gate_up.data),
                          .b_se = p.gate_up.stride[0],
                          .b_s = p.gate_up.stride[1],
                          .c = reinterpret_cast<E*>(p.d_rows.data),
                          .c_s = p.d_rows.stride[0],
                          .N = p.Hd,
                          .K = 2 * I,
                          .plan = s.rows};
  cudaError_t status = launch_row_gemm_tc<E, true>(d_rows, row_entries, p.sms, stream);
  if (status != cudaSuccess) return status;
  if (p.d_down.data) {
    const WeightGemm<E> d_down{.a = reinterpret_cast<const E*>(p.d_out.data),
                               .a_s = p.d_out.stride[0],
                               .b = h,
                               .b_s = I,
                               .c = reinterpret_cast<E*>(p.d_down.data),
                               .c_se = p.d_down.stride[0],
                               .c_s = p.d_down.stride[1],
                               .M = p.Hd,
                               .N = I,
                               .plan = s.experts};
    status = launch_weight_grad_tc(d_down, expert_entries, p.sms, stream);
    if (status != cudaSuccess) return status;
  }
  if (p.d_gate_up.data) {
    const WeightGemm<E> d_gate_up{.a = dgu,
                                  .a_s = 2 * I,
                                  .b = reinterpret_cast<const E*>(p.rows.data),
                                  .b_s = p.rows.stride[0],
                                  .c = reinterpret_cast<E*>(p.d_gate_up.data),
                                  .c_se = p.d_gate_up.stride[0],
                                  .c_s = p.d_gate_up.stride[1],
                                  .M = 2 * I,
                                  .N = p.Hd,
                                  .plan = s.experts};
    status = launch_weight_grad_tc(d_gate_up, expert_entries, p.sms, stream);
  }
  return status;
}

cudaError_t run_general(const MoeMlpBwdParams& p, const BwdScratch& s, cudaStream_t stream) {
  const int64_t I = p.I, row_entries = plan_max_entries(p.R, p.E, kGenRows);
  const int64_t expert_entries = plan_max_entries(p.R, p.E, 0);
  auto* gu = static_cast<float*>(s.dgu);
  auto* dh = static_cast<float*>(s.h);
  const Arg &x = p.rows, &dout = p.d_out, &wgu = p.gate_up, &wd = p.down;
  // g | u = x [Wg; Wu]^T and dh = d_out Wd over the row tiles
  const GenGemm up{.a = x.data,
                   .a_dtype = x.dtype,
                   .a_sm = x.stride[0],
                   .a_sk = x.stride[1],
                   .a_se = 0,
                   .b = wgu.data,
                   .b_dtype = wgu.dtype,
                   .b_sk = wgu.stride[2],
                   .b_sn = wgu.stride[1],
                   .b_se = wgu.stride[0],
                   .c = reinterpret_cast<char*>(gu),
                   .c_dtype = kF32,
                   .c_sm = 2 * I,
                   .c_sn = 1,
                   .c_se = 0,
                   .M = 0,
                   .N = 2 * I,
                   .K = p.Hd,
                   .swiglu = 0,
                   .plan = s.rows};
  cudaError_t status = launch_gen_gemm(up, row_entries, p.sms, stream);
  if (status != cudaSuccess) return status;
  const GenGemm back{.a = dout.data,
                     .a_dtype = dout.dtype,
                     .a_sm = dout.stride[0],
                     .a_sk = dout.stride[1],
                     .a_se = 0,
                     .b = wd.data,
                     .b_dtype = wd.dtype,
                     .b_sk = wd.stride[1],
                     .b_sn = wd.stride[2],
                     .b_se = wd.stride[0],
                     .c = reinterpret_cast<char*>(dh),
                     .c_dtype = kF32,
                     .c_sm = I,
                     .c_sn = 1,
                     .c_se = 0,
                     .M = 0,
                     .N = I,
                     .K = p.Hd,
                     .swiglu = 0,
                     .plan = s.rows};
  if ((status = launch_gen_gemm(back, row_entries, p.sms, stream)) != cudaSuccess) return status;
  swiglu_bwd_kernel<<<static_cast<unsigned>(4 * p.sms), 256, 0, stream>>>(gu, dh,
                                                                          s.rows.first + p.E, I);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  // d_rows = [dg | du] gate_up_proj[e]
  const GenGemm d_rows{.a = reinterpret_cast<char*>(gu),
                       .a_dtype = kF32,
                       .a_sm = 2 * I,
                       .a_sk = 1,
                       .a_se = 0,
                       .b = wgu.data,
                       .b_dtype = wgu.dtype,
                       .b_sk = wgu.stride[1],
                       .b_sn = wgu.stride[2],
                       .b_se = wgu.stride[0],
                       .c = p.d_rows.data,
                       .c_dtype = p.d_rows.dtype,
                       .c_sm = p.d_rows.stride[0],
                       .c_sn = p.d_rows.stride[1],
                       .c_se = 0,
                       .M = 0,
                       .N = p.Hd,
                       .K = 2 * I,
                       .swiglu = 0,
                       .plan = s.rows};
  if ((status = launch_gen_gemm(d_rows, row_entries, p.sms, stream)) != cudaSuccess) return status;
  if (p.d_down.data) {  // d_down[e] (hd, i) = sum_r d_out[r, hd] h[r, i]
    const GenGemm d_down{.a = dout.data,
                         .a_dtype = dout.dtype,
                         .a_sm = dout.stride[1],
                         .a_sk = dout.stride[0],
                         .a_se = 0,
                         .b = reinterpret_cast<char*>(dh),
                         .b_dtype = kF32,
                         .b_sk = I,
                         .b_sn = 1,
                         .b_se = 0,
                         .c = p.d_down.data,
                         .c_dtype = p.d_down.dtype,
                         .c_sm = p.d_down.stride[1],
                         .c_sn = p.d_down.stride[2],
                         .c_se = p.d_down.stride[0],
                         .M = p.Hd,
                         .N = I,
                         .K = 0,
                         .swiglu = 0,
                         .plan = s.experts};
    if ((status = launch_gen_gemm(d_down, expert_entries, p.sms, stream)) != cudaSuccess)
      return status;
  }
  if (p.d_gate_up.data) {  // d_gate_up[e] (j, hd) = sum_r [dg | du][r, j] x[r, hd]
    const GenGemm d_gate_up{.a = reinterpret_cast<char*>(gu),
                            .a_dtype = kF32,
                            .a_sm = 1,
                            .a_sk = 2 * I,
                            .a_se = 0,
                            .b = x.data,
                            .b_dtype = x.dtype,
                            .b_sk = x.stride[0],
                            .b_sn = x.stride[1],
                            .b_se = 0,
                            .c = p.d_gate_up.data,
                            .c_dtype = p.d_gate_up.dtype,
                            .c_sm = p.d_gate_up.stride[1],
                            .c_sn = p.d_gate_up.stride[2],
                            .c_se = p.d_gate_up.stride[0],
                            .M = 2 * I,
                            .N = p.Hd,
                            .K = 0,
                            .swiglu = 0,
                            .plan = s.experts};
    status = launch_gen_gemm(d_gate_up, expert_entries, p.sms, stream);
  }
  return status;
}

}  // namespace

}  // namespace moe

using namespace moe;

size_t moe_expert_mlp_bwd_scratch_bytes(const MoeMlpBwdParams& p) {
  return align_up(size_t(p.R) * size_t(p.I) * element_bytes(p)) +
         align_up(size_t(p.R) * size_t(2 * p.I) * element_bytes(p)) +
         plan_bytes(p.R, p.E, rows_per_entry(p)) + plan_bytes(p.R, p.E, 0);
}

cudaError_t launch_moe_expert_mlp_bwd(const MoeMlpBwdParams& p, void* scratch,
                                      cudaStream_t stream) {
  // A zero width leaves d_rows zero and the weight gradients empty.
  if (p.Hd == 0) return cudaSuccess;
  if (p.I == 0) return launch_zero_rows(p.d_rows, nullptr, p.R, p.sms, stream);
  const BwdScratch s = carve(p, scratch);
  cudaError_t status = launch_plan(p.counts, p.R, s.rows, stream);
  if (status == cudaSuccess && (p.d_gate_up.data || p.d_down.data))
    status = launch_plan(p.counts, p.R, s.experts, stream);
  if (status != cudaSuccess) return status;
  if (p.tensor_cores) {
    status = p.rows.dtype == kBF16 ? run_tensor_cores<__nv_bfloat16>(p, s, stream)
                                   : run_tensor_cores<__half>(p, s, stream);
  } else {
    status = run_general(p, s, stream);
  }
  if (status != cudaSuccess) return status;
  if ((status = launch_zero_rows(p.d_rows, s.rows.first + p.E, p.R, p.sms, stream)) != cudaSuccess)
    return status;
  if ((status = zero_empty_experts(p.d_down, s.experts, p.sms, stream)) != cudaSuccess)
    return status;
  return zero_empty_experts(p.d_gate_up, s.experts, p.sms, stream);
}

}  // namespace hops::cuda
