// attn_prefill: flash-attention-2 style forward on tensor cores for f16/bf16
// with D in {64, 128, 256} (mma.sync m16n8k16, online softmax in f32, causal
// tiles skipped, GQA by mapping each query head to its key-value head), and a
// general f32 CUDA-core kernel for every other call (f32 storage, other head
// dims, strided or misaligned head rows).
#include "attn_common.cuh"

namespace hops::cuda {

namespace {

using namespace attn;

// ---- tensor cores ------------------------------------------------------------------

// A CTA of 8 warps owns 128 query rows of one query head (16 per warp) and
// walks key tiles of 64, K and V double-buffered in smem by cp.async. Rows are
// padded by 16 bytes, so ldmatrix reads hit 8 distinct bank groups.
template <int D>
struct FwdTile {
  static constexpr int kWarps = 8, kThreads = 32 * kWarps;
  static constexpr int kBr = 16 * kWarps, kBc = 64;
  static constexpr int kPitch = D + 8;
  static constexpr size_t kSmem = size_t(kBr + 4 * kBc) * kPitch * 2;
};

template <class E, int D>
__global__ void __launch_bounds__(FwdTile<D>::kThreads, 1)
    fwd_tc_kernel(const AttnFwdParams p, int64_t slots) {
  using Tile = FwdTile<D>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, P = Tile::kPitch, kThreads = Tile::kThreads;
  extern __shared__ uint4 smem[];
  E* sQ = reinterpret_cast<E*>(smem);
  E* sK = sQ + kBr * P;  // two stages of kBc rows
  E* sV = sK + 2 * kBc * P;

  const int64_t head = blockIdx.x % p.Hq;
  const int64_t slot = slots - 1 - blockIdx.x / p.Hq;  // the longest causal blocks first
  int64_t n, c;
  if (!slot_block(p.cu_q, p.N, p.Tq, kBr, slot, n, c)) return;
  const SeqPair s = seq_pair(p.cu_q, p.cu_k, n, p.Tq, p.Tk);
  const int64_t m0 = c * kBr;
  if (m0 >= s.Lq) return;
  const int64_t kvh = head / (p.Hq / p.Hkv);
  const int64_t off = s.Lk - s.Lq;  // query i sees keys j <= i + off
  int64_t kend = s.Lk;
  if (p.causal) kend = min(kend, m0 + kBr + off);
  const int ntiles = kend > 0 ? static_cast<int>((kend + kBc - 1) / kBc) : 0;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const E* q = reinterpret_cast<const E*>(p.q.data) + at3(p.q, s.row, s.q0, head);
  const E* k = reinterpret_cast<const E*>(p.k.data) + at3(p.k, s.row, s.k0, kvh);
  const E* v = reinterpret_cast<const E*>(p.v.data) + at3(p.v, s.row, s.k0, kvh);
  load_rows<E, D, P, kBr, kThreads>(sQ, q, p.q.stride[1], m0, s.Lq, tid);
  if (ntiles > 0) load_rows<E, D, P, kBc, kThreads>(sK, k, p.k.stride[1], 0, s.Lk, tid);
  cp_async_commit();
  if (ntiles > 0) load_rows<E, D, P, kBc, kThreads>(sV, v, p.v.stride[1], 0, s.Lk, tid);
  cp_async_commit();

  const float c2 = p.scale * kLog2e;                   // scores in the log2 domain
  const int64_t row_g = m0 + warp * 16 + (lane >> 2);  // rows row_g and row_g + 8
  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const E* qa = sQ + warp * 16 * P + a_rows<P>(lane);
  for (int t = 0; t < ntiles; ++t) {
    const int st = t & 1;
    const int64_t j0 = int64_t{t} * kBc;
    cp_async_wait<1>();  // K_t (and Q) landed; V_t may still be in flight
    __syncthreads();
    if (t + 1 < ntiles)
      load_rows<E, D, P, kBc, kThreads>(sK + (st ^ 1) * kBc * P, k, p.k.stride[1], j0 + kBc, s.Lk,
                                        tid);
    cp_async_commit();

    float sc[kBc / 8][4] = {};
    mma_rows_rows<E, P, D / 16, kBc / 8>(sc, qa, sK + st * kBc * P + b_rows<P>(lane));
    const bool masked = j0 + kBc > s.Lk || (p.causal && j0 + kBc - 1 > m0 + off);
#pragma unroll
    for (int j = 0; j < kBc / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = sc[j][e] * c2;
        if (masked) {
          const int64_t key = j0 + 8 * j + 2 * (lane & 3) + (e & 1);
          const int64_t row = row_g + 8 * (e >> 1);
          if (key >= s.Lk || (p.causal && key > row + off)) x = -INFINITY;
        }
        sc[j][e] = x;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kBc / 8; ++j) mx = fmaxf(mx, fmaxf(sc[j][2 * r], sc[j][2 * r + 1]));
      const float m_new = fmaxf(m[r], quad_max(mx));
      const float base = m_new == -INFINITY ? 0.0f : m_new;  // no key yet: keep zeros
      const float alpha = ex2(m[r] - base);
      m[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBc / 8; ++j) {
        sc[j][2 * r] = ex2(sc[j][2 * r] - base);
        sc[j][2 * r + 1] = ex2(sc[j][2 * r + 1] - base);
        sum += sc[j][2 * r] + sc[j][2 * r + 1];
      }
      l[r] = l[r] * alpha + sum;
#pragma unroll
      for (int d = 0; d < D / 8; ++d) o[d][2 * r] *= alpha, o[d][2 * r + 1] *= alpha;
    }

    cp_async_wait<1>();  // V_t landed; K_{t+1} may still be in flight
    __syncthreads();
    if (t + 1 < ntiles)
      load_rows<E, D, P, kBc, kThreads>(sV + (st ^ 1) * kBc * P, v, p.v.stride[1], j0 + kBc, s.Lk,
                                        tid);
    cp_async_commit();
    mma_regs_trans<E, P, kBc / 8, D / 8>(o, sc, sV + st * kBc * P + b_trans<P>(lane));
  }
  cp_async_wait<0>();

  E* out = reinterpret_cast<E*>(p.o.data) + at3(p.o, s.row, s.q0, head);
  const E* gate = p.gate.data
                      ? reinterpret_cast<const E*>(p.gate.data) + at3(p.gate, s.row, s.q0, head)
                      : nullptr;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(l[r]);
    const int64_t i = row_g + 8 * r;
    if (i >= s.Lq) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    if (p.lse.data && (lane & 3) == 0) {
      const float lse = sum > 0.0f ? (m[r] + log2f(sum)) * kLn2 : -INFINITY;
      reinterpret_cast<float*>(p.lse.data)[s.row * p.lse.stride[0] + head * p.lse.stride[1] +
                                           (s.q0 + i) * p.lse.stride[2]] = lse;
    }
    E* orow = out + i * p.o.stride[1];
    const E* grow = gate ? gate + i * p.gate.stride[1] : nullptr;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      const int col = 8 * d + 2 * (lane & 3);
      float x0 = o[d][2 * r] * inv, x1 = o[d][2 * r + 1] * inv;
      if (grow) {
        const float2 g = ld_pair(grow + col);
        x0 *= sigmoidf_(g.x), x1 *= sigmoidf_(g.y);
      }
      st_pair(orow + col, x0, x1);
    }
  }
}

template <class E, int D>
cudaError_t launch_fwd_tc(const AttnFwdParams& p, cudaStream_t stream) {
  using Tile = FwdTile<D>;
  const int64_t slots = block_slots(p.N, p.Tq, Tile::kBr, p.cu_q.data != nullptr);
  if (slots * p.Hq == 0) return cudaSuccess;
  const cudaError_t status = allow_smem(fwd_tc_kernel<E, D>, Tile::kSmem);
  if (status != cudaSuccess) return status;
  fwd_tc_kernel<E, D>
      <<<static_cast<unsigned>(slots * p.Hq), Tile::kThreads, Tile::kSmem, stream>>>(p, slots);
  return cudaGetLastError();
}

// ---- general (f32 CUDA cores) ------------------------------------------------------

// A CTA of 4 warps owns 16 query rows of one query head (4 per warp) and walks
// key tiles of 32 staged in smem as f32. Per row, lane j scores key j of the
// tile (q broadcast from smem, k rows padded to D + 1 floats: conflict-free),
// the warp keeps the online softmax, and lane l accumulates dims l, l + 32, ...
constexpr int kGenWarps = 4, kGenThreads = 32 * kGenWarps, kGenRows = 16, kGenKeys = 32;
constexpr int kGenDims = kAttnMaxHeadDim / 32;  // output dims per lane

size_t gen_fwd_smem(int64_t D) {
  return (size_t(2 * kGenKeys) * (D + 1) + size_t(kGenRows) * D) * sizeof(float);
}

template <class T>
__global__ void __launch_bounds__(kGenThreads)
    fwd_general_kernel(const AttnFwdParams p, int64_t slots) {
  extern __shared__ float gsm[];
  const int D = static_cast<int>(p.D), KP = D + 1;
  float* sK = gsm;
  float* sV = sK + kGenKeys * KP;
  float* sQ = sV + kGenKeys * KP;  // [kGenRows][D], pre-scaled to the log2 domain

  const int64_t head = blockIdx.x % p.Hq;
  const int64_t slot = slots - 1 - blockIdx.x / p.Hq;
  int64_t n, c;
  if (!slot_block(p.cu_q, p.N, p.Tq, kGenRows, slot, n, c)) return;
  const SeqPair s = seq_pair(p.cu_q, p.cu_k, n, p.Tq, p.Tk);
  const int64_t m0 = c * kGenRows;
  if (m0 >= s.Lq) return;
  const int64_t kvh = head / (p.Hq / p.Hkv);
  const int64_t off = s.Lk - s.Lq;
  int64_t kend = s.Lk;
  if (p.causal) kend = min(kend, m0 + kGenRows + off);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float c2 = p.scale * kLog2e;

  const T* q = reinterpret_cast<const T*>(p.q.data) + at3(p.q, s.row, s.q0, head);
  const T* k = reinterpret_cast<const T*>(p.k.data) + at3(p.k, s.row, s.k0, kvh);
  const T* v = reinterpret_cast<const T*>(p.v.data) + at3(p.v, s.row, s.k0, kvh);
  for (int idx = tid; idx < kGenRows * D; idx += kGenThreads) {
    const int r = idx / D, d = idx % D;
    sQ[idx] = m0 + r < s.Lq ? to_f(q[(m0 + r) * p.q.stride[1] + d * p.q.stride[3]]) * c2 : 0.0f;
  }

  float o[4][kGenDims] = {};
  float m[4], l[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) m[r] = -INFINITY, l[r] = 0.0f;
  for (int64_t j0 = 0; j0 < kend; j0 += kGenKeys) {
    __syncthreads();  // the previous tile's readers are done (and sQ is written)
    for (int idx = tid; idx < kGenKeys * D; idx += kGenThreads) {
      const int r = idx / D, d = idx % D;
      const bool valid = j0 + r < s.Lk;
      sK[r * KP + d] = valid ? to_f(k[(j0 + r) * p.k.stride[1] + d * p.k.stride[3]]) : 0.0f;
      sV[r * KP + d] = valid ? to_f(v[(j0 + r) * p.v.stride[1] + d * p.v.stride[3]]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t i = m0 + warp * 4 + r;
      if (i >= s.Lq) continue;
      const float* qr = sQ + (warp * 4 + r) * D;
      const float* kr = sK + lane * KP;
      float x = 0.0f;
      for (int d = 0; d < D; ++d) x = fmaf(qr[d], kr[d], x);
      const int64_t key = j0 + lane;
      if (key >= s.Lk || (p.causal && key > i + off)) x = -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(x));
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m[r] - base);
      const float pr = exp2f(x - base);
      m[r] = m_new;
      l[r] = l[r] * alpha + warp_sum(pr);
#pragma unroll
      for (int cc = 0; cc < kGenDims; ++cc) o[r][cc] *= alpha;
      for (int jj = 0; jj < kGenKeys; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, pr, jj);
        const float* vr = sV + jj * KP + lane;
#pragma unroll
        for (int cc = 0; cc < kGenDims; ++cc)
          if (lane + 32 * cc < D) o[r][cc] = fmaf(pj, vr[32 * cc], o[r][cc]);
      }
    }
  }

  T* out = reinterpret_cast<T*>(p.o.data) + at3(p.o, s.row, s.q0, head);
  const T* gate = p.gate.data
                      ? reinterpret_cast<const T*>(p.gate.data) + at3(p.gate, s.row, s.q0, head)
                      : nullptr;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t i = m0 + warp * 4 + r;
    if (i >= s.Lq) continue;
    const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    if (p.lse.data && lane == 0) {
      reinterpret_cast<float*>(p.lse.data)[s.row * p.lse.stride[0] + head * p.lse.stride[1] +
                                           (s.q0 + i) * p.lse.stride[2]] =
          l[r] > 0.0f ? (m[r] + log2f(l[r])) * kLn2 : -INFINITY;
    }
#pragma unroll
    for (int cc = 0; cc < kGenDims; ++cc) {
      const int d = lane + 32 * cc;
      if (d >= D) continue;
      float x = o[r][cc] * inv;
      if (gate) x *= sigmoidf_(to_f(gate[i * p.gate.stride[1] + d * p.gate.stride[3]]));
      out[i * p.o.stride[1] + d * p.o.stride[3]] = from_f<T>(x);
    }
  }
}

template <class T>
cudaError_t launch_fwd_general(const AttnFwdParams& p, cudaStream_t stream) {
  const int64_t slots = block_slots(p.N, p.Tq, kGenRows, p.cu_q.data != nullptr);
  if (slots * p.Hq == 0) return cudaSuccess;
  const size_t smem = gen_fwd_smem(p.D);
  const cudaError_t status = allow_smem(fwd_general_kernel<T>, smem);
  if (status != cudaSuccess) return status;
  fwd_general_kernel<T>
      <<<static_cast<unsigned>(slots * p.Hq), kGenThreads, smem, stream>>>(p, slots);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_attn_prefill(const AttnFwdParams& p, int dtype, bool tensor_cores,
                                cudaStream_t stream) {
  if (tensor_cores) {
    const auto by_dim = [&]<class E>(E) {
      switch (p.D) {
        case 64:
          return launch_fwd_tc<E, 64>(p, stream);
        case 128:
          return launch_fwd_tc<E, 128>(p, stream);
        default:
          return launch_fwd_tc<E, 256>(p, stream);
      }
    };
    return dtype == kBF16 ? by_dim(__nv_bfloat16{}) : by_dim(__half{});
  }
  cudaError_t status = cudaSuccess;
  by_dtype(dtype, [&]<class T>(T) { status = launch_fwd_general<T>(p, stream); });
  return status;
}

}  // namespace hops::cuda
