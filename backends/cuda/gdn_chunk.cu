// gdn_chunk_fwd, the general kernel (fp32 CUDA cores) for every case the
// tensor-core path (gdn_chunk_tc.cu) does not take: f32 inputs, K != 128,
// strided or misaligned head rows, small odd dims. One CTA of 256 threads
// per (sequence, value head, block of 32 value columns) walks its sequence
// in chunks of 64 tokens; the K x 32 slice of the f32 state stays in shared
// memory for the whole sequence. The delta rule is column-separable (column
// j of S only needs column j of v), which is what lets value columns split
// over CTAs. Per chunk, with gc the cumulative log decay inside the chunk
// and Γ_i = e^{gc_i}:
//   A_ij  = beta_i e^{gc_i - gc_j} k_i.k_j  (j < i)
//   QK_ij = e^{gc_i - gc_j} q_i.k_j         (j <= i)
//   (I + A) U = diag(beta) (V - diag(Γ) K S)   (blocked forward substitution)
//   O = scale (diag(Γ) Q S + QK U)
//   S = Γ_last S + sum_j e^{gc_last - gc_j} k_j u_j^T
#include "device_common.cuh"

namespace hops::cuda {

namespace {

constexpr int kC = 64;   // chunk length
constexpr int kBV = 32;  // value columns per CTA
constexpr int kThreads = 256;
constexpr int kMP = kC + 1;  // padded row of the C x C matrices

size_t smem_bytes(int64_t K) {
  const int64_t KP = K + 1;
  return sizeof(float) *
         static_cast<size_t>(2 * kC * KP + K * kBV + 2 * kC * kBV + 2 * kC * kMP + 4 * kC);
}

template <class T>
__global__ void __launch_bounds__(kThreads, 1) chunk_kernel(ChunkParams p) {
  extern __shared__ float smem[];
  const int64_t K = p.K, KP = K + 1;
  float* sq = smem;           // [C][KP]
  float* sk = sq + kC * KP;   // [C][KP]
  float* S = sk + kC * KP;    // [K][BV]
  float* W = S + K * kBV;     // [C][BV]: rhs, then U
  float* QS = W + kC * kBV;   // [C][BV]: Γ Q S
  float* MA = QS + kC * kBV;  // [C][MP]
  float* MQ = MA + kC * kMP;  // [C][MP]
  float* gc = MQ + kC * kMP;  // [C] cumulative log decay
  float* bt = gc + kC;        // [C] beta
  float* coef = bt + kC;      // [C] e^{gc_last - gc_j}
  float* gam = coef + kC;     // [C] e^{gc_i}

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t n = blockIdx.z, hv = blockIdx.y, c0 = int64_t(blockIdx.x) * kBV;
  const int64_t h = hv / (p.HV / p.H);
  const Span span = sequence_span(p.cu, n, p.T);
  const T* qb = reinterpret_cast<const T*>(p.q.data);
  const T* kb = reinterpret_cast<const T*>(p.k.data);
  const T* vb = reinterpret_cast<const T*>(p.v.data);
  T* ob = reinterpret_cast<T*>(p.o.data);

  // Initial state slice.
  const float* h0 = p.h0.data ? reinterpret_cast<const float*>(p.h0.data) + n * p.h0.stride[0] +
                                    hv * p.h0.stride[1]
                              : nullptr;
  for (int64_t e = tid; e < K * kBV; e += kThreads) {
    const int64_t i = e / kBV, c = e % kBV;
    S[e] = (h0 && c0 + c < p.V) ? h0[i * p.h0_k + (c0 + c) * p.h0_v] : 0.0f;
  }
  const FusedGate gate(p.fused, p.A_log, p.dt_bias, hv);

  for (int64_t t0 = span.begin; t0 < span.end; t0 += kC) {
    const int L = static_cast<int>(span.end - t0 < kC ? span.end - t0 : kC);
    __syncthreads();  // the previous chunk is done with every buffer
    // (a) load q, k (zero rows past L), v block into W, gates.
    for (int64_t e = tid; e < kC * K; e += kThreads) {
      const int i = static_cast<int>(e / K);
      const int64_t x = e % K;
      float qv = 0.0f, kv = 0.0f;
      if (i < L) {
        const int64_t t = t0 + i;
        qv = to_f(qb[span.row * p.q.stride[0] + t * p.q.stride[1] + h * p.q.stride[2] +
                     x * p.q.stride[3]]);
        kv = to_f(kb[span.row * p.k.stride[0] + t * p.k.stride[1] + h * p.k.stride[2] +
                     x * p.k.stride[3]]);
      }
      sq[i * KP + x] = qv, sk[i * KP + x] = kv;
    }
    for (int e = tid; e < kC * kBV; e += kThreads) {
      const int i = e / kBV, c = e % kBV;
      W[e] = (i < L && c0 + c < p.V) ? to_f(vb[span.row * p.v.stride[0] + (t0 + i) * p.v.stride[1] +
                                               hv * p.v.stride[2] + (c0 + c) * p.v.stride[3]])
                                     : 0.0f;
    }
    if (tid < kC) {
      float g = 0.0f, b = 0.0f;
      if (tid < L) {
        const int64_t t = t0 + tid;
        g = ld(p.g.data, p.g.dtype,
               span.row * p.g.stride[0] + t * p.g.stride[1] + hv * p.g.stride[2]);
        b = ld(p.beta.data, p.beta.dtype,
               span.row * p.beta.stride[0] + t * p.beta.stride[1] + hv * p.beta.stride[2]);
        if (p.fused) gate.apply(g, b);
      }
      gc[tid] = g, bt[tid] = b;
    }
    __syncthreads();
    // (b) l2 norms (a warp per row) and the cumulative decay (warp 0 scan).
    if (p.l2norm) {
      for (int i = warp; i < L; i += kThreads / 32) {
        float ss = 0.0f, sk2 = 0.0f;
        for (int64_t x = lane; x < K; x += 32)
          ss += sq[i * KP + x] * sq[i * KP + x], sk2 += sk[i * KP + x] * sk[i * KP + x];
        ss = warp_sum(ss), sk2 = warp_sum(sk2);
        const float iq = rsqrtf(ss + 1e-6f), ik = rsqrtf(sk2 + 1e-6f);
        for (int64_t x = lane; x < K; x += 32) sq[i * KP + x] *= iq, sk[i * KP + x] *= ik;
      }
    }
    if (warp == 0) {
      // inclusive scan of 64 values, two per lane
      float a0 = gc[2 * lane], a1 = gc[2 * lane + 1];
      a1 += a0;
      const float run = warp_inclusive_scan(a1, lane);
      const float before = run - a1;
      gc[2 * lane] = before + a0, gc[2 * lane + 1] = run;
      __syncwarp();
      const float last = __shfl_sync(0xffffffffu, run, 31);
      for (int j = lane; j < kC; j += 32) coef[j] = expf(last - gc[j]), gam[j] = expf(gc[j]);
    }
    __syncthreads();
    // (c) MA and MQ: 4 x 4 register tiles, rows ti*4.., columns tj + 16m.
    {
      const int ti = tid / 16, tj = tid % 16;
      float acc_a[4][4] = {}, acc_q[4][4] = {};
      for (int64_t x = 0; x < K; ++x) {
        float ki[4], qi[4], kj[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          ki[r] = sk[(ti * 4 + r) * KP + x], qi[r] = sq[(ti * 4 + r) * KP + x];
          kj[r] = sk[(tj + 16 * r) * KP + x];
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
#pragma unroll
          for (int m = 0; m < 4; ++m) acc_a[r][m] += ki[r] * kj[m], acc_q[r][m] += qi[r] * kj[m];
        }
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = ti * 4 + r;
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const int j = tj + 16 * m;
          const float d = j <= i ? expf(gc[i] - gc[j]) : 0.0f;
          MA[i * kMP + j] = j < i ? bt[i] * d * acc_a[r][m] : 0.0f;
          MQ[i * kMP + j] = d * acc_q[r][m];
        }
      }
    }
    // (d) W = beta (V - Γ K S), QS = Γ Q S: lane = column, rows warp + 8m.
    {
      float ak[8] = {}, aq[8] = {};
      for (int64_t x = 0; x < K; ++x) {
        const float s = S[x * kBV + lane];
#pragma unroll
        for (int m = 0; m < 8; ++m) {
          const int i = warp + 8 * m;
          ak[m] += sk[i * KP + x] * s, aq[m] += sq[i * KP + x] * s;
        }
      }
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        const int i = warp + 8 * m;
        W[i * kBV + lane] = bt[i] * (W[i * kBV + lane] - gam[i] * ak[m]);
        QS[i * kBV + lane] = gam[i] * aq[m];
      }
    }
    __syncthreads();
    // (e) (I + A) U = W, blocks of 16 rows: subtract the solved blocks (all
    // threads), then solve the diagonal block (warp 0, lane = column).
    for (int b = 0; b < kC / 16; ++b) {
      if (b > 0) {
        for (int e = tid; e < 16 * kBV; e += kThreads) {
          const int i = b * 16 + e / kBV, c = e % kBV;
          float acc = 0.0f;
          for (int j = 0; j < b * 16; ++j) acc += MA[i * kMP + j] * W[j * kBV + c];
          W[i * kBV + c] -= acc;
        }
        __syncthreads();
      }
      if (warp == 0) {
        for (int i = b * 16 + 1; i < b * 16 + 16; ++i) {
          float acc = 0.0f;
          for (int j = b * 16; j < i; ++j) acc += MA[i * kMP + j] * W[j * kBV + lane];
          W[i * kBV + lane] -= acc;
        }
      }
      __syncthreads();
    }
    // (f) O = scale (QS + MQ U): lane = column, rows warp + 8m.
    {
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        const int i = warp + 8 * m;
        if (i >= L) continue;
        float acc = QS[i * kBV + lane];
        for (int j = 0; j <= i; ++j) acc += MQ[i * kMP + j] * W[j * kBV + lane];
        if (c0 + lane < p.V) {
          ob[span.row * p.o.stride[0] + (t0 + i) * p.o.stride[1] + hv * p.o.stride[2] +
             (c0 + lane) * p.o.stride[3]] = from_f<T>(p.scale * acc);
        }
      }
    }
    // (g) S = Γ_last S + sum_j coef_j k_j u_j^T: lane = column, rows warp + 8m.
    // S is read by (d) only, which finished before the last barrier.
    {
      const float glast = gam[kC - 1];
      for (int64_t x0 = warp; x0 < K; x0 += 8 * 8) {
        float acc[8];
#pragma unroll
        for (int m = 0; m < 8; ++m) {
          const int64_t x = x0 + 8 * m;
          acc[m] = x < K ? glast * S[x * kBV + lane] : 0.0f;
        }
        for (int j = 0; j < L; ++j) {
          const float u = coef[j] * W[j * kBV + lane];
#pragma unroll
          for (int m = 0; m < 8; ++m) {
            const int64_t x = x0 + 8 * m;
            if (x < K) acc[m] += sk[j * KP + x] * u;
          }
        }
#pragma unroll
        for (int m = 0; m < 8; ++m) {
          const int64_t x = x0 + 8 * m;
          if (x < K) S[x * kBV + lane] = acc[m];
        }
      }
    }
  }
  if (p.ht.data) {
    __syncthreads();
    float* ht = reinterpret_cast<float*>(p.ht.data) + n * p.ht.stride[0] + hv * p.ht.stride[1];
    for (int64_t e = tid; e < K * kBV; e += kThreads) {
      const int64_t i = e / kBV, c = e % kBV;
      if (c0 + c < p.V) ht[i * p.ht_k + (c0 + c) * p.ht_v] = S[e];
    }
  }
}

}  // namespace

cudaError_t launch_gdn_chunk_general(const ChunkParams& p, int dtype, cudaStream_t stream) {
  const size_t smem = smem_bytes(p.K);
  const dim3 grid(static_cast<unsigned>((p.V + kBV - 1) / kBV), static_cast<unsigned>(p.HV),
                  static_cast<unsigned>(p.N));
  cudaError_t status = cudaSuccess;
  by_dtype(dtype, [&]<class T>(T) {
    status = allow_smem(chunk_kernel<T>, smem);
    if (status == cudaSuccess) chunk_kernel<T><<<grid, kThreads, smem, stream>>>(p);
  });
  return status != cudaSuccess ? status : cudaGetLastError();
}

}  // namespace hops::cuda
