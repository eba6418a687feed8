// gdn_recurrent (decode): one CTA of 4 warps per (sequence, value head, block
// of 32 value columns). Lane = column, warp = a quarter of the K rows; each
// thread keeps its R = K/4 state elements in registers for all of the
// sequence's tokens, so the f32 state is read once and written once per call.
// Per token: q, k staged in shared memory (l2-normalised in the kernel when
// asked), S^T k and S^T q reduced over the 4 warps, then
//   u = beta (v - a S^T k),  o = scale (a S^T q + (k.q) u),  S = a S + k u^T.
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
  float decay_rate = 0.0f, bias = 0.0f;
  if (p.fused) {
    decay_rate = expf(ld(p.A_log.data, p.A_log.dtype, hv * p.A_log.stride[0]));
    bias = ld(p.dt_bias.data, p.dt_bias.dtype, hv * p.dt_bias.stride[0]);
  }
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
    if (p.fused) g = -decay_rate * softplusf_(g + bias, 1.0f, 20.0f), beta = sigmoidf_(beta);
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

}  // namespace

cudaError_t launch_gdn_recurrent(const RecurrentParams& p, int dtype, cudaStream_t stream) {
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
