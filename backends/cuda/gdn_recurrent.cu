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
    by_dtype(dtype, [&]<class T>(T) {
      if (wide)
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
