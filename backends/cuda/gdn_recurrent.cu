// gdn_recurrent (decode). Per token, with the f32 state S (K x V) of one
// (sequence, value head):
//   u = beta (v - a S^T k),  o = scale (a S^T q + (k.q) u),  S = a S + k u^T.
// Both kernels keep their state slice in registers for all of the sequence's
// tokens, so the state is read once and written once per call.
// - recurrent_vec_kernel (the common case: K <= 128, state rows contiguous in
//   V and 16-byte aligned): 8 warps; a lane owns 4 columns (16-byte loads and
//   stores) of R rows, all R loads issued before the q/k/gate prologue, so a
//   CTA has 64 KB of state in flight at K = V = 128.
// - recurrent_kernel (everything else: v-first layout, strided state, K > 128):
//   4 warps per (sequence, value head, 32 value columns), lane = column.
// - recurrent_chunk_kernel (HOPS_CUDA_RECURRENT=v2, the vector kernel's cases;
//   issue 21, multi-token decoding): the vector kernel's mapping, but up to
//   kChunk tokens per step in the WY form of the chunked algorithm (below), so
//   a sequence's tokens cost one pass of 2L reductions over the state, one
//   cross-warp exchange and one update pass instead of L dependent rounds of
//   global loads and three barriers.
#include <cstdlib>
#include <string_view>

#include "device_common.cuh"

namespace hops::cuda {

namespace {

constexpr int kColumns = 32;
constexpr int kWarps = 4;

template <class T, int R>
__global__ void __launch_bounds__(kWarps * 32) recurrent_kernel(RecurrentParams p) {
  const int64_t n = blockIdx.z, hv = blockIdx.y;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t col = int64_t(blockIdx.x) * kColumns + lane;
  const bool has_col = col < p.V;
  const int64_t slot = slot_of(p.slots, n, p.S);
  if (slot < 0) return;
  const Span span = sequence_span(p.cu, n, p.T);
  if (span.begin >= span.end) return;
  const int64_t h = hv / (p.HV / p.H);

  __shared__ float sq[kMaxHeadDim], sk[kMaxHeadDim];
  __shared__ float red[3][kWarps];
  __shared__ float part[2][kWarps][kColumns];

  float* state =
      reinterpret_cast<float*>(p.state.data) + slot * p.state.stride[0] + hv * p.state.stride[1];
  float s[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t i = int64_t(warp) * R + r;
    s[r] = (has_col && i < p.K) ? state[i * p.k_step + col * p.v_step] : 0.0f;
  }
  const FusedGate gate(p.fused, p.A_log, p.dt_bias, hv);
  const T* qb = reinterpret_cast<const T*>(p.q.data);
  const T* kb = reinterpret_cast<const T*>(p.k.data);
  const T* vb = reinterpret_cast<const T*>(p.v.data);
  T* ob = reinterpret_cast<T*>(p.o.data);

  for (int64_t t = span.begin; t < span.end; ++t) {
    // Stage q and k; partial sums of q.q, k.k, k.q.
    float qq = 0.0f, kk = 0.0f, kq = 0.0f;
    const int64_t qoff = span.row * p.q.stride[0] + t * p.q.stride[1] + h * p.q.stride[2];
    const int64_t koff = span.row * p.k.stride[0] + t * p.k.stride[1] + h * p.k.stride[2];
    for (int64_t i = threadIdx.x; i < p.K; i += blockDim.x) {
      const float qi = to_f(qb[qoff + i * p.q.stride[3]]);
      const float ki = to_f(kb[koff + i * p.k.stride[3]]);
      sq[i] = qi, sk[i] = ki;
      qq += qi * qi, kk += ki * ki, kq += ki * qi;
    }
    qq = warp_sum(qq), kk = warp_sum(kk), kq = warp_sum(kq);
    if (lane == 0) red[0][warp] = qq, red[1][warp] = kk, red[2][warp] = kq;
    // Token gate and value (independent of the reduction).
    float g =
        ld(p.g.data, p.g.dtype, span.row * p.g.stride[0] + t * p.g.stride[1] + hv * p.g.stride[2]);
    float beta = ld(p.beta.data, p.beta.dtype,
                    span.row * p.beta.stride[0] + t * p.beta.stride[1] + hv * p.beta.stride[2]);
    if (p.fused) gate.apply(g, beta);
    const float a = expf(g);
    const float v = has_col ? to_f(vb[span.row * p.v.stride[0] + t * p.v.stride[1] +
                                      hv * p.v.stride[2] + col * p.v.stride[3]])
                            : 0.0f;
    __syncthreads();
    qq = kk = kq = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) qq += red[0][w], kk += red[1][w], kq += red[2][w];
    const float iq = p.l2norm ? rsqrtf(qq + 1e-6f) : 1.0f;
    const float ik = p.l2norm ? rsqrtf(kk + 1e-6f) : 1.0f;
    kq *= iq * ik;
    // Partial S^T k, S^T q over this warp's rows.
    float pk = 0.0f, pq = 0.0f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t i = int64_t(warp) * R + r;
      const float ki = i < p.K ? sk[i] : 0.0f, qi = i < p.K ? sq[i] : 0.0f;
      pk += ki * s[r], pq += qi * s[r];
    }
    part[0][warp][lane] = pk * ik, part[1][warp][lane] = pq * iq;
    __syncthreads();
    float state_k = 0.0f, state_q = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) state_k += part[0][w][lane], state_q += part[1][w][lane];
    const float u = beta * (v - a * state_k);
    if (warp == 0 && has_col) {
      ob[span.row * p.o.stride[0] + t * p.o.stride[1] + hv * p.o.stride[2] + col * p.o.stride[3]] =
          from_f<T>(p.scale * (a * state_q + kq * u));
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t i = int64_t(warp) * R + r;
      const float ki = i < p.K ? sk[i] * ik : 0.0f;
      s[r] = a * s[r] + ki * u;
    }
    __syncthreads();  // sq/sk/red/part are rewritten by the next token
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t i = int64_t(warp) * R + r;
    if (has_col && i < p.K) state[i * p.k_step + col * p.v_step] = s[r];
  }
}

constexpr int kVecWarps = 8;
constexpr int kVecMaxK = 128;

// A lane owns 4 consecutive columns; kLanesPerRow lanes cover one row segment
// of 4 kLanesPerRow columns (the CTA's columns), the warp's 32 / kLanesPerRow
// lane groups take different rows. Thread rows: (warp R + r) groups + group.
template <class T, int kLanesPerRow>
__global__ void __launch_bounds__(kVecWarps * 32, 2) recurrent_vec_kernel(RecurrentParams p) {
  constexpr int kGroups = 32 / kLanesPerRow;
  constexpr int kRows = kVecMaxK / (kVecWarps * kGroups);  // R: rows per thread
  constexpr int kCols = 4 * kLanesPerRow;
  const int64_t n = blockIdx.z, hv = blockIdx.y;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int group = lane / kLanesPerRow, lane_in_row = lane % kLanesPerRow;
  const int64_t col = int64_t(blockIdx.x) * kCols + 4 * lane_in_row;
  const bool has_col = col < p.V;  // V % 4 == 0: the 4 columns are all in or all out
  const int64_t slot = slot_of(p.slots, n, p.S);
  if (slot < 0) return;
  const Span span = sequence_span(p.cu, n, p.T);
  if (span.begin >= span.end) return;
  const int64_t h = hv / (p.HV / p.H);
  auto row_of = [&](int r) { return (warp * kRows + r) * kGroups + group; };

  // The state first: these loads are in flight during the whole prologue.
  float* state = reinterpret_cast<float*>(p.state.data) + slot * p.state.stride[0] +
                 hv * p.state.stride[1] + col;
  float4 s[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = row_of(r);
    s[r] = (has_col && i < p.K) ? *reinterpret_cast<const float4*>(state + i * p.k_step)
                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }

  __shared__ float sq[kVecMaxK], sk[kVecMaxK];
  __shared__ float red[3][kVecMaxK / 32];
  __shared__ float4 part[2][kVecWarps][kLanesPerRow];
  const FusedGate gate(p.fused, p.A_log, p.dt_bias, hv);
  const T* qb = reinterpret_cast<const T*>(p.q.data);
  const T* kb = reinterpret_cast<const T*>(p.k.data);
  const T* vb = reinterpret_cast<const T*>(p.v.data);
  T* ob = reinterpret_cast<T*>(p.o.data);

  for (int64_t t = span.begin; t < span.end; ++t) {
    // Stage q and k (zero past K) in the first 4 warps; partial q.q, k.k, k.q.
    if (threadIdx.x < kVecMaxK) {
      const int i = threadIdx.x;
      float qi = 0.0f, ki = 0.0f;
      if (i < p.K) {
        qi = to_f(qb[span.row * p.q.stride[0] + t * p.q.stride[1] + h * p.q.stride[2] +
                     i * p.q.stride[3]]);
        ki = to_f(kb[span.row * p.k.stride[0] + t * p.k.stride[1] + h * p.k.stride[2] +
                     i * p.k.stride[3]]);
      }
      sq[i] = qi, sk[i] = ki;
      const float qq = warp_sum(qi * qi), kk = warp_sum(ki * ki), kq = warp_sum(ki * qi);
      if (lane == 0) red[0][warp] = qq, red[1][warp] = kk, red[2][warp] = kq;
    }
    // Token gate and the lane's 4 values (independent of the reduction).
    float g =
        ld(p.g.data, p.g.dtype, span.row * p.g.stride[0] + t * p.g.stride[1] + hv * p.g.stride[2]);
    float beta = ld(p.beta.data, p.beta.dtype,
                    span.row * p.beta.stride[0] + t * p.beta.stride[1] + hv * p.beta.stride[2]);
    if (p.fused) gate.apply(g, beta);
    const float a = expf(g);
    float v[4] = {};
    const int64_t voff =
        span.row * p.v.stride[0] + t * p.v.stride[1] + hv * p.v.stride[2] + col * p.v.stride[3];
    if (has_col) {
#pragma unroll
      for (int c = 0; c < 4; ++c) v[c] = to_f(vb[voff + c * p.v.stride[3]]);
    }
    __syncthreads();
    float qq = 0.0f, kk = 0.0f, kq = 0.0f;
#pragma unroll
    for (int w = 0; w < kVecMaxK / 32; ++w) qq += red[0][w], kk += red[1][w], kq += red[2][w];
    const float iq = p.l2norm ? rsqrtf(qq + 1e-6f) : 1.0f;
    const float ik = p.l2norm ? rsqrtf(kk + 1e-6f) : 1.0f;
    kq *= iq * ik;
    // Partial S^T k, S^T q over the thread's rows, then over the warp's row groups.
    float4 pk = make_float4(0.0f, 0.0f, 0.0f, 0.0f), pq = pk;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float ki = sk[row_of(r)], qi = sq[row_of(r)];
      pk.x += ki * s[r].x, pk.y += ki * s[r].y, pk.z += ki * s[r].z, pk.w += ki * s[r].w;
      pq.x += qi * s[r].x, pq.y += qi * s[r].y, pq.z += qi * s[r].z, pq.w += qi * s[r].w;
    }
#pragma unroll
    for (int o = kLanesPerRow; o < 32; o *= 2) {
      pk.x += __shfl_xor_sync(0xffffffffu, pk.x, o), pk.y += __shfl_xor_sync(0xffffffffu, pk.y, o);
      pk.z += __shfl_xor_sync(0xffffffffu, pk.z, o), pk.w += __shfl_xor_sync(0xffffffffu, pk.w, o);
      pq.x += __shfl_xor_sync(0xffffffffu, pq.x, o), pq.y += __shfl_xor_sync(0xffffffffu, pq.y, o);
      pq.z += __shfl_xor_sync(0xffffffffu, pq.z, o), pq.w += __shfl_xor_sync(0xffffffffu, pq.w, o);
    }
    if (group == 0) part[0][warp][lane_in_row] = pk, part[1][warp][lane_in_row] = pq;
    __syncthreads();
    float state_k[4] = {}, state_q[4] = {};
#pragma unroll
    for (int w = 0; w < kVecWarps; ++w) {
      const float4 xk = part[0][w][lane_in_row], xq = part[1][w][lane_in_row];
      state_k[0] += xk.x, state_k[1] += xk.y, state_k[2] += xk.z, state_k[3] += xk.w;
      state_q[0] += xq.x, state_q[1] += xq.y, state_q[2] += xq.z, state_q[3] += xq.w;
    }
    float u[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) u[c] = beta * (v[c] - a * ik * state_k[c]);
    if (warp == 0 && group == 0 && has_col) {
      const int64_t ooff =
          span.row * p.o.stride[0] + t * p.o.stride[1] + hv * p.o.stride[2] + col * p.o.stride[3];
#pragma unroll
      for (int c = 0; c < 4; ++c)
        ob[ooff + c * p.o.stride[3]] = from_f<T>(p.scale * (a * iq * state_q[c] + kq * u[c]));
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float ki = sk[row_of(r)] * ik;
      s[r].x = a * s[r].x + ki * u[0], s[r].y = a * s[r].y + ki * u[1];
      s[r].z = a * s[r].z + ki * u[2], s[r].w = a * s[r].w + ki * u[3];
    }
    __syncthreads();  // sq/sk/red/part are rewritten by the next token
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = row_of(r);
    if (has_col && i < p.K) *reinterpret_cast<float4*>(state + i * p.k_step) = s[r];
  }
}

// ---- v2: L tokens per step --------------------------------------------------
// With A_t = e^(G_t), G_t = g_1 + ... + g_t over the chunk's tokens, and the
// normalised k^_t = ik_t k_t, q^_t = iq_t q_t, the tokens' recurrence from the
// chunk's initial state S unrolls to (column by column, no reduction over K
// but the 2L of S^T k_t and S^T q_t):
//   u_t = beta_t (v_t - A_t S^T k^_t - sum_{j<t} e^(G_t-G_j) (k^_j.k^_t) u_j)
//   o_t = scale (A_t S^T q^_t + sum_{j<=t} e^(G_t-G_j) (k^_j.q^_t) u_j)
//   S'  = A_L S + sum_j e^(G_L-G_j) k^_j u_j^T.
// So every load a chunk needs (its q, k, v, g, beta) is issued at its start,
// behind the state loads, and the dot products k.k, k.q, q.q of its tokens run
// beside the pass over the state.
constexpr int kChunk = 4;

// Shared memory of one chunk. k and q are staged raw (f32; zero past K), token
// t of the chunk in component t: one 16-byte load gives a row's kChunk values.
template <int kLanesPerRow>
struct ChunkSmem {
  float4 k[kVecMaxK], q[kVecMaxK];
  float4 v[kChunk][kLanesPerRow];                            // the CTA's columns
  float4 part[2][kChunk][kVecWarps][kLanesPerRow];           // S^T k, S^T q per warp
  float kk[kChunk][kChunk], kq[kChunk][kChunk], qq[kChunk];  // raw dot products
  float g[kChunk], beta[kChunk];                             // gates applied
  float ckk[kChunk][kChunk], ckq[kChunk][kChunk], ck[kChunk], cq[kChunk], cu[kChunk], decay;
};

__device__ __forceinline__ float part_of(const float4& x, int t) {
  return t == 0 ? x.x : t == 1 ? x.y : t == 2 ? x.z : x.w;
}
__device__ __forceinline__ void fma4(float4& acc, float a, const float4& b) {
  acc.x += a * b.x, acc.y += a * b.y, acc.z += a * b.z, acc.w += a * b.w;
}

// A thread's place: as in recurrent_vec_kernel.
struct ChunkThread {
  int warp, group, lane_in_row;
  int col, row, h, hv;  // row: the sequence's row of q/k/v (batch index); < 2^31 as grid indices
  bool has_col;
};

// kL (<= kChunk) tokens from t0 on the state slice s (kRows rows of 4 columns).
template <class T, int kLanesPerRow, int kRows, int kL>
__device__ __forceinline__ void chunk_step(const RecurrentParams& p, const ChunkThread& th,
                                           const FusedGate& gate, int64_t t0, float4 (&s)[kRows],
                                           ChunkSmem<kLanesPerRow>& sm) {
  constexpr int kGroups = 32 / kLanesPerRow;
  const int lane = threadIdx.x % 32;
  auto row_of = [&](int r) { return (th.warp * kRows + r) * kGroups + th.group; };
  // Stage the chunk: q, k (raw, zero past K), the CTA's v columns, the gates.
  const T* qb = reinterpret_cast<const T*>(p.q.data) + th.row * p.q.stride[0] + t0 * p.q.stride[1] +
                th.h * p.q.stride[2];
  const T* kb = reinterpret_cast<const T*>(p.k.data) + th.row * p.k.stride[0] + t0 * p.k.stride[1] +
                th.h * p.k.stride[2];
  for (int e = threadIdx.x; e < kL * kVecMaxK; e += kVecWarps * 32) {
    const int t = e / kVecMaxK, i = e % kVecMaxK;
    const bool in = i < p.K;
    const float qi = in ? to_f(qb[t * p.q.stride[1] + i * p.q.stride[3]]) : 0.0f;
    const float ki = in ? to_f(kb[t * p.k.stride[1] + i * p.k.stride[3]]) : 0.0f;
    reinterpret_cast<float*>(sm.q)[4 * i + t] = qi;
    reinterpret_cast<float*>(sm.k)[4 * i + t] = ki;
  }
  if (threadIdx.x < kL * kLanesPerRow) {
    const int t = threadIdx.x / kLanesPerRow, j = threadIdx.x % kLanesPerRow;
    const int64_t col = th.col - 4 * th.lane_in_row + 4 * j;
    float x[4] = {};
    if (col < p.V) {
      const T* vb = reinterpret_cast<const T*>(p.v.data);
      const int64_t off = th.row * p.v.stride[0] + (t0 + t) * p.v.stride[1] +
                          th.hv * p.v.stride[2] + col * p.v.stride[3];
#pragma unroll
      for (int c = 0; c < 4; ++c) x[c] = to_f(vb[off + c * p.v.stride[3]]);
    }
    sm.v[t][j] = make_float4(x[0], x[1], x[2], x[3]);
  }
  if (threadIdx.x < kL) {
    const int64_t t = t0 + threadIdx.x;
    float g =
        ld(p.g.data, p.g.dtype, th.row * p.g.stride[0] + t * p.g.stride[1] + th.hv * p.g.stride[2]);
    float beta = ld(p.beta.data, p.beta.dtype,
                    th.row * p.beta.stride[0] + t * p.beta.stride[1] + th.hv * p.beta.stride[2]);
    gate.apply(g, beta);
    sm.g[threadIdx.x] = g, sm.beta[threadIdx.x] = beta;
  }
  __syncthreads();

  // The passes over the state: raw S^T k_t (then S^T q_t) of the thread's
  // rows, then of the warp's row groups (xor shuffles), per warp to shared
  // memory. Two passes keep one set of kL accumulators live beside the state.
#pragma unroll
  for (int pass = 0; pass < 2; ++pass) {
    const float4* x = pass == 0 ? sm.k : sm.q;
    float4 acc[kL];
#pragma unroll
    for (int t = 0; t < kL; ++t) acc[t] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float4 xr = x[row_of(r)];
#pragma unroll
      for (int t = 0; t < kL; ++t) fma4(acc[t], part_of(xr, t), s[r]);
    }
#pragma unroll
    for (int t = 0; t < kL; ++t) {
#pragma unroll
      for (int o = kLanesPerRow; o < 32; o *= 2) {
        acc[t].x += __shfl_xor_sync(0xffffffffu, acc[t].x, o);
        acc[t].y += __shfl_xor_sync(0xffffffffu, acc[t].y, o);
        acc[t].z += __shfl_xor_sync(0xffffffffu, acc[t].z, o);
        acc[t].w += __shfl_xor_sync(0xffffffffu, acc[t].w, o);
      }
      if (th.group == 0) sm.part[pass][t][th.warp][th.lane_in_row] = acc[t];
    }
  }
  // The tokens' dot products, a warp per product: k_j.k_t, k_j.q_t, q_t.q_t.
  for (int d = th.warp; d < 2 * kL * kL + kL; d += kVecWarps) {
    const int which = d / (kL * kL), j = d % (kL * kL) / kL, t = d % kL;
    const float* a = reinterpret_cast<const float*>(which == 2 ? sm.q : sm.k);
    const float* b = reinterpret_cast<const float*>(which == 0 ? sm.k : sm.q);
    const int ja = which == 2 ? t : j;
    float x = 0.0f;
#pragma unroll
    for (int i = lane; i < kVecMaxK; i += 32) x += a[4 * i + ja] * b[4 * i + t];
    x = warp_sum(x);
    if (lane == 0) (which == 0 ? sm.kk[j][t] : which == 1 ? sm.kq[j][t] : sm.qq[t]) = x;
  }
  __syncthreads();

  // The chunk's scalars, once (warp 0), so that the solve holds little
  // besides the state: with G_t, ik_t, iq_t from the sums above,
  //   ck[t] = A_t ik_t, cq[t] = scale A_t iq_t, ckk[j][t] = e^(G_t-G_j) ik_j ik_t k_j.k_t (j < t),
  //   ckq[j][t] = scale e^(G_t-G_j) ik_j iq_t k_j.q_t (j <= t), cu[j] = e^(G_L-G_j) ik_j.
  if (th.warp == 0 && lane < kL * kL) {
    const int j = lane / kL, t = lane % kL;
    float gj = 0.0f, gt = 0.0f, gl = 0.0f;  // G_j, G_t, G_L
#pragma unroll
    for (int i = 0; i < kL; ++i) {
      const float g = sm.g[i];
      gj += i <= j ? g : 0.0f, gt += i <= t ? g : 0.0f, gl += g;
    }
    auto norm = [&](float sum) { return p.l2norm ? rsqrtf(sum + 1e-6f) : 1.0f; };
    const float ikj = norm(sm.kk[j][j]), ikt = norm(sm.kk[t][t]), iqt = norm(sm.qq[t]);
    const float between = expf(gt - gj);
    sm.ckk[j][t] = j < t ? between * ikj * ikt * sm.kk[j][t] : 0.0f;
    sm.ckq[j][t] = j <= t ? p.scale * between * ikj * iqt * sm.kq[j][t] : 0.0f;
    if (j == 0) {
      sm.ck[t] = expf(gt) * ikt, sm.cq[t] = p.scale * expf(gt) * iqt;
      sm.cu[t] = expf(gl - gt) * ikt;
    }
    if (lane == 0) sm.decay = expf(gl);
  }
  __syncthreads();

  // Column-local solve for u_t (and o_t in the writing warps: warp t, group 0).
  float4 u[kL];
#pragma unroll
  for (int t = 0; t < kL; ++t) {
    float4 sk = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < kVecWarps; ++w) fma4(sk, 1.0f, sm.part[0][t][w][th.lane_in_row]);
    float4 x = sm.v[t][th.lane_in_row];
    fma4(x, -sm.ck[t], sk);
#pragma unroll
    for (int j = 0; j < t; ++j) fma4(x, -sm.ckk[j][t], u[j]);
    const float beta = sm.beta[t];
    u[t] = make_float4(beta * x.x, beta * x.y, beta * x.z, beta * x.w);
    if (th.warp == t && th.group == 0 && th.has_col) {
      float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
      for (int w = 0; w < kVecWarps; ++w) fma4(o, sm.cq[t], sm.part[1][t][w][th.lane_in_row]);
#pragma unroll
      for (int j = 0; j <= t; ++j) fma4(o, sm.ckq[j][t], u[j]);
      T* ob = reinterpret_cast<T*>(p.o.data) + th.row * p.o.stride[0] + (t0 + t) * p.o.stride[1] +
              th.hv * p.o.stride[2] + th.col * p.o.stride[3];
      ob[0] = from_f<T>(o.x), ob[p.o.stride[3]] = from_f<T>(o.y);
      ob[2 * p.o.stride[3]] = from_f<T>(o.z), ob[3 * p.o.stride[3]] = from_f<T>(o.w);
    }
  }
  // The update pass: S' = A_L S + sum_j k_j (cu_j u_j)^T (raw k rows).
#pragma unroll
  for (int j = 0; j < kL; ++j) {
    const float w = sm.cu[j];
    u[j] = make_float4(w * u[j].x, w * u[j].y, w * u[j].z, w * u[j].w);
  }
  const float decay = sm.decay;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float4 kr = sm.k[row_of(r)];
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    fma4(x, decay, s[r]);
#pragma unroll
    for (int j = 0; j < kL; ++j) fma4(x, part_of(kr, j), u[j]);
    s[r] = x;
  }
}

// recurrent_vec_kernel's mapping and state traffic; the tokens kChunk at a time.
template <class T, int kLanesPerRow>
__global__ void __launch_bounds__(kVecWarps * 32, 2) recurrent_chunk_kernel(RecurrentParams p) {
  constexpr int kGroups = 32 / kLanesPerRow;
  constexpr int kRows = kVecMaxK / (kVecWarps * kGroups);
  constexpr int kCols = 4 * kLanesPerRow;
  const int64_t n = blockIdx.z;
  const int lane = threadIdx.x % 32;
  ChunkThread th;
  th.warp = threadIdx.x / 32, th.group = lane / kLanesPerRow, th.lane_in_row = lane % kLanesPerRow;
  th.hv = blockIdx.y, th.h = static_cast<int>(th.hv / (p.HV / p.H));
  th.col = blockIdx.x * kCols + 4 * th.lane_in_row;
  th.has_col = th.col < p.V;
  const int64_t slot = slot_of(p.slots, n, p.S);
  if (slot < 0) return;
  const Span span = sequence_span(p.cu, n, p.T);
  if (span.begin >= span.end) return;
  th.row = static_cast<int>(span.row);
  auto row_of = [&](int r) { return (th.warp * kRows + r) * kGroups + th.group; };

  float* state = reinterpret_cast<float*>(p.state.data) + slot * p.state.stride[0] +
                 th.hv * p.state.stride[1] + th.col;
  float4 s[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = row_of(r);
    s[r] = (th.has_col && i < p.K) ? *reinterpret_cast<const float4*>(state + i * p.k_step)
                                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  __shared__ ChunkSmem<kLanesPerRow> sm;
  const FusedGate gate(p.fused, p.A_log, p.dt_bias, th.hv);
  for (int64_t t0 = span.begin; t0 < span.end; t0 += kChunk) {
    if (t0 > span.begin) __syncthreads();  // the previous chunk's shared memory is read
    switch (span.end - t0) {
      case 1:
        chunk_step<T, kLanesPerRow, kRows, 1>(p, th, gate, t0, s, sm);
        break;
      case 2:
        chunk_step<T, kLanesPerRow, kRows, 2>(p, th, gate, t0, s, sm);
        break;
      case 3:
        chunk_step<T, kLanesPerRow, kRows, 3>(p, th, gate, t0, s, sm);
        break;
      default:
        chunk_step<T, kLanesPerRow, kRows, kChunk>(p, th, gate, t0, s, sm);
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i = row_of(r);
    if (th.has_col && i < p.K) *reinterpret_cast<float4*>(state + i * p.k_step) = s[r];
  }
}

// HOPS_CUDA_RECURRENT=v2 takes recurrent_chunk_kernel where the vector kernel
// would run (read per call, so one process can time and compare both).
bool recurrent_v2() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read-only use of the environment
  const char* value = std::getenv("HOPS_CUDA_RECURRENT");
  return value && std::string_view(value) == "v2";
}

// The vector kernel's layout conditions: f32 state rows contiguous in V,
// every row start 16-byte aligned.
bool vec_supported(const RecurrentParams& p) {
  const auto& st = p.state;
  return p.K <= kVecMaxK && p.V % 4 == 0 && p.v_step == 1 && p.k_step % 4 == 0 &&
         st.stride[0] % 4 == 0 && st.stride[1] % 4 == 0 &&
         (reinterpret_cast<uintptr_t>(st.data) & 15u) == 0;
}

}  // namespace

cudaError_t launch_gdn_recurrent(const RecurrentParams& p, int dtype, cudaStream_t stream) {
  if (vec_supported(p)) {
    // 128 columns per CTA (a row segment per warp) when that still gives
    // enough CTAs, else 32 (4 rows per warp instruction, 4x the CTAs).
    const int64_t wide_ctas = (p.V + 127) / 128 * p.HV * p.N;
    const bool wide = p.V > 64 && wide_ctas >= 64;
    const int64_t cols = wide ? 128 : 32;
    const dim3 grid(static_cast<unsigned>((p.V + cols - 1) / cols), static_cast<unsigned>(p.HV),
                    static_cast<unsigned>(p.N));
    const bool v2 = recurrent_v2();
    by_dtype(dtype, [&]<class T>(T) {
      if (v2 && wide)
        recurrent_chunk_kernel<T, 32><<<grid, kVecWarps * 32, 0, stream>>>(p);
      else if (v2)
        recurrent_chunk_kernel<T, 8><<<grid, kVecWarps * 32, 0, stream>>>(p);
      else if (wide)
        recurrent_vec_kernel<T, 32><<<grid, kVecWarps * 32, 0, stream>>>(p);
      else
        recurrent_vec_kernel<T, 8><<<grid, kVecWarps * 32, 0, stream>>>(p);
    });
    return cudaGetLastError();
  }
  const dim3 grid(static_cast<unsigned>((p.V + kColumns - 1) / kColumns),
                  static_cast<unsigned>(p.HV), static_cast<unsigned>(p.N));
  by_dtype(dtype, [&]<class T>(T) {
    if (p.K <= 4 * kWarps)
      recurrent_kernel<T, 4><<<grid, kWarps * 32, 0, stream>>>(p);
    else if (p.K <= 8 * kWarps)
      recurrent_kernel<T, 8><<<grid, kWarps * 32, 0, stream>>>(p);
    else if (p.K <= 32 * kWarps)
      recurrent_kernel<T, 32><<<grid, kWarps * 32, 0, stream>>>(p);
    else
      recurrent_kernel<T, 64><<<grid, kWarps * 32, 0, stream>>>(p);
  });
  return cudaGetLastError();
}

}  // namespace hops::cuda
