// gdn_chunk_bwd v4, kernel 3: the reverse sweep. One CTA per (sequence,
// value head, 16 kGroups value columns), chunks from the last. Each group of
// 16 columns has a chain warp that keeps dH^T (16 x 128, f32) as mma
// accumulators, the A-operand layout of dH^T K^T, exactly as gdn_chunk_tc.cu's
// kernel 2 keeps S^T, and a helper warp for the products that do not depend on
// dH (as kernel 2's output warp). Per chunk, with the forward's record (T, P,
// the factors f1 = beta Γ rk, f2 = scale Γ rq, f3 = rk e^{gc_last - gc},
// Γ_last) and raw q, k, dO:
//   helper: W1 = dO^T P, W2 = (dO^T diag(f2)) Q, handed over through shared memory
//   chain:  dH^T out (16-bit, the gradient of the state at the chunk's end)
//           dU^T = (dH^T K^T) diag(f3) + W1,  Y^T = dU^T T
//           dH^T = Γ_last dH^T + W2 - (Y^T diag(f1)) K
// and after the first chunk dH^T is dh0. Tiles arrive by cp.async, kStages
// chunks deep; two barriers per chunk.
#include "checked_math.hpp"
#include "device_common.cuh"
#include "gdn_bwd_v4.cuh"

namespace hops::cuda {

namespace {

constexpr int kC = kRecordChunk, kDk = kV4Dk, kRowK = kV4RowK, kRowC = kV4RowC;
// Stages: three for 2 groups; two for 4, whose handoff would not fit beside three.
template <int kGroups>
struct SweepSmem : SweepStage<16 * kGroups, kRowK, kRowC> {  // kV: dO
  static constexpr int kStages = kGroups == 2 ? 3 : 2;
  // per group: W1 (32 floats per lane) then W2 (64), lane-minor
  static constexpr int kHandoffFloats = 96 * 32;
  static constexpr size_t kBytes =
      static_cast<size_t>(kStages) * SweepSmem::kStage * 2 + size_t{4} * kGroups * kHandoffFloats;
};

// a (16 x 64 over the chunk rows, A operands of k-steps 0..3) times a lower
// triangular C x C matrix L (row-major, 16-bit): out[nt] (columns 8 nt..) +=
// sum_i a[., i] L[i][8 nt + .]; the 32-row k blocks above the tile's
// columns are zero and skipped.
template <class E>
__device__ __forceinline__ void times_lower(const uint32_t (&a)[4][4], const E* lower, int lane,
                                            float (&out)[8][4]) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int kp = 0; kp < 2; ++kp) {
      if (32 * kp + 31 < 8 * nt) continue;
      uint32_t b[4];
      ldsm_x4_trans(b, lower + (32 * kp + lane) * kRowC + 8 * nt);
      mma<E>(out[nt], a[2 * kp], b[0], b[1]);
      mma<E>(out[nt], a[2 * kp + 1], b[2], b[3]);
    }
  }
}

// C-layout accumulators (16 x 64: v = g (+8), chunk row 8 nt + 2 t4 (+1)) as
// A operands over the chunk rows, each column scaled by factor[row].
template <class E>
__device__ __forceinline__ void rows_as_a(const float (&acc)[8][4], const float* factor, int t4,
                                          uint32_t (&a)[4][4]) {
#pragma unroll
  for (int np = 0; np < 4; ++np) {
#pragma unroll
    for (int hs = 0; hs < 2; ++hs) {
      const int nt = 2 * np + hs, i0 = nt * 8 + 2 * t4;
      const float fa = factor ? factor[4 * i0] : 1.0f, fb = factor ? factor[4 * i0 + 4] : 1.0f;
      a[np][2 * hs] = pack2<E>(fa * acc[nt][0], fb * acc[nt][1]);
      a[np][2 * hs + 1] = pack2<E>(fa * acc[nt][2], fb * acc[nt][3]);
    }
  }
}

template <class E, int kGroups>
__global__ void __launch_bounds__(kGroups * 64, 1)
    reverse_dh_kernel(ChunkBwdParams p, V4Scratch s) {
  using Smem = SweepSmem<kGroups>;
  constexpr int kThreads = kGroups * 64, kBV = Smem::kBV, kStages = Smem::kStages;
  static_assert(kC * (kDk / 8) % kThreads == 0 && kC * (kBV / 8) % kThreads == 0 && kThreads > kC);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  E* const smem = reinterpret_cast<E*>(smem_raw);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const bool helper = warp >= kGroups;
  const int group = helper ? warp - kGroups : warp;  // the warp's 16 value columns
  const int g = lane >> 2, t4 = lane & 3, quad = lane >> 3;
  const int64_t n = blockIdx.z, hv = blockIdx.y, c0 = int64_t(blockIdx.x) * kBV;
  const int64_t h = hv / (p.HV / p.H);
  const Span span = sequence_span(p.cu, n, p.T);
  const int64_t z = record_z(p, n), first_slot = record_first_slot(p, n, span);
  const E* kb = reinterpret_cast<const E*>(p.k.data) + span.row * p.k.stride[0] + h * p.k.stride[2];
  const E* qb = reinterpret_cast<const E*>(p.q.data) + span.row * p.q.stride[0] + h * p.q.stride[2];
  const E* ob = reinterpret_cast<const E*>(p.d_o.data) + span.row * p.d_o.stride[0] +
                hv * p.d_o.stride[2] + c0;
  float* const handoff = reinterpret_cast<float*>(smem + kStages * Smem::kStage) +
                         group * Smem::kHandoffFloats + lane;  // [96][32]: W1 then W2

  auto load_chunk = [&](int64_t c, int stage) {
    load_sweep_chunk<kThreads, kDk, kRowK, kRowC, Smem, 4>(smem, stage, tid, p, span, c, kb, qb, ob,
                                                           p.d_o, s.rec, z, first_slot + c, hv);
  };

  // Chain warps: dh[nt] holds dH^T[v = g (+8)][k = 8 nt + 2 t4 (+1)].
  float dh[16][4];
  const int64_t my_v = c0 + 16 * group + g;
  if (!helper) {
    const float* dht = p.dht.data ? reinterpret_cast<const float*>(p.dht.data) +
                                        n * p.dht.stride[0] + hv * p.dht.stride[1]
                                  : nullptr;
    load_state_acc(dh, dht, p.dht_k, p.dht_v, my_v, t4);
  }

  const int64_t chunks = (span.end - span.begin + kC - 1) / kC;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < chunks) load_chunk(chunks - 1 - st, st);
    cp_async_commit();
  }
  for (int64_t it = 0; it < chunks; ++it) {
    const int64_t c = chunks - 1 - it;
    cp_async_wait<kStages - 2>();
    __syncthreads();  // chunk c landed; all are done with the stage reloaded next and the handoff
    if (it + kStages - 1 < chunks) load_chunk(c - (kStages - 1), int((it + kStages - 1) % kStages));
    cp_async_commit();

    const E* base = smem + static_cast<int>(it % kStages) * Smem::kStage;
    const E* sk = base + Smem::kK;
    const float* sf = reinterpret_cast<const float*>(base + Smem::kF);  // [C][4]

    float du[8][4] = {};
    if (helper) {
      // dO^T as A operands over the chunk rows (V^T's fragments in gdn_chunk_tc.cu).
      uint32_t oa[4][4];
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        ldsm_x4_trans(oa[np], base + Smem::kV +
                                  ((2 * np + (quad >> 1)) * 8 + (lane & 7)) * Smem::kRowV +
                                  16 * group + (quad & 1) * 8);
      }
      float w1[8][4] = {};
      times_lower<E>(oa, base + Smem::kM, lane, w1);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) handoff[(4 * nt + e) * 32] = w1[nt][e];
      }
#pragma unroll
      for (int np = 0; np < 4; ++np) {
#pragma unroll
        for (int hs = 0; hs < 2; ++hs) {
          const int i0 = (2 * np + hs) * 8 + 2 * t4;
          const float fa = sf[4 * i0 + 2], fb = sf[4 * i0 + 6];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const float2 x = unpack2<E>(oa[np][2 * hs + r]);
            oa[np][2 * hs + r] = pack2<E>(fa * x.x, fb * x.y);
          }
        }
      }
      const E* sq = base + Smem::kQ;
#pragma unroll
      for (int nt = 0; nt < 16; ++nt) {
        float w2[4] = {};
#pragma unroll
        for (int kp = 0; kp < 2; ++kp) {
          uint32_t b[4];
          ldsm_x4_trans(b, sq + (kp * 32 + lane) * kRowK + nt * 8);
          mma<E>(w2, oa[2 * kp], b[0], b[1]);
          mma<E>(w2, oa[2 * kp + 1], b[2], b[3]);
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) handoff[(32 + 4 * nt + e) * 32] = w2[e];
      }
    } else {
      {  // dH^T at the chunk's end, as the 16-bit value the products use
        E* out = static_cast<E*>(s.dstates) +
                 (record_index(p, s.rec, z, first_slot + c, hv) * p.V + my_v) * kDk + 2 * t4;
        store_state16<kDk>(out, dh);
      }
      // dH^T K^T, 32 key dims of dH^T as A operands at a time
      state_times_tile<E, kRowK>(dh, sk, lane, du);
    }
    __syncthreads();  // W1, W2 handed over
    if (helper) continue;
      // dU^T = (dH^T K^T) diag(f3) + W1;  Y^T = dU^T T
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      const int i0 = nt * 8 + 2 * t4;
      const float fa = sf[4 * i0 + 3], fb = sf[4 * i0 + 7];
      du[nt][0] = fa * du[nt][0] + handoff[(4 * nt) * 32];
      du[nt][1] = fb * du[nt][1] + handoff[(4 * nt + 1) * 32];
      du[nt][2] = fa * du[nt][2] + handoff[(4 * nt + 2) * 32];
      du[nt][3] = fb * du[nt][3] + handoff[(4 * nt + 3) * 32];
    }
    uint32_t ua[4][4];
    rows_as_a<E>(du, nullptr, t4, ua);
    float yt[8][4] = {};
    times_lower<E>(ua, base + Smem::kT, lane, yt);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) yt[nt][e] = -yt[nt][e];
    }
    rows_as_a<E>(yt, sf + 1, t4, ua);
    // dH^T = Γ_last dH^T + W2 - (Y^T diag(f1)) K (n = key dims, k = chunk rows)
    const float decay_last = *reinterpret_cast<const float*>(base + Smem::kD);
#pragma unroll
    for (int nt = 0; nt < 16; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e)
        dh[nt][e] = decay_last * dh[nt][e] + handoff[(32 + 4 * nt + e) * 32];
#pragma unroll
      for (int kp = 0; kp < 2; ++kp) {
        uint32_t b[4];
        ldsm_x4_trans(b, sk + (kp * 32 + lane) * kRowK + nt * 8);
        mma<E>(dh[nt], ua[2 * kp], b[0], b[1]);
        mma<E>(dh[nt], ua[2 * kp + 1], b[2], b[3]);
      }
    }
  }

  if (p.dh0.data && !helper) {
    float* dh0 = reinterpret_cast<float*>(p.dh0.data) + n * p.dh0.stride[0] + hv * p.dh0.stride[1];
    store_state_f32(dh0, p.dh0_k, p.dh0_v, dh, my_v, t4);
  }
}

template <class E, int kGroups>
cudaError_t launch_sweep(const ChunkBwdParams& p, const V4Scratch& s, cudaStream_t stream) {
  constexpr size_t bytes = SweepSmem<kGroups>::kBytes;
  cudaError_t status = allow_smem(reverse_dh_kernel<E, kGroups>, bytes);
  if (status != cudaSuccess) return status;
  const dim3 grid(static_cast<unsigned>(p.V / (16 * kGroups)), static_cast<unsigned>(p.HV),
                  static_cast<unsigned>(p.N));
  reverse_dh_kernel<E, kGroups><<<grid, kGroups * 64, bytes, stream>>>(p, s);
  return cudaGetLastError();
}

}  // namespace

// 64 columns per CTA when that still gives every SM a CTA, else 32 (the
// forward's kernel 2 rule).
template <class E>
cudaError_t launch_reverse_dh(const ChunkBwdParams& p, const V4Scratch& s, cudaStream_t stream) {
  int device = 0, sms = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) {
    status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  if (status != cudaSuccess) return status;
  const bool wide = p.V % 64 == 0 && (p.V / 64) * p.HV * p.N >= sms;
  return wide ? launch_sweep<E, 4>(p, s, stream) : launch_sweep<E, 2>(p, s, stream);
}

template cudaError_t launch_reverse_dh<__half>(const ChunkBwdParams&, const V4Scratch&,
                                               cudaStream_t);
template cudaError_t launch_reverse_dh<__nv_bfloat16>(const ChunkBwdParams&, const V4Scratch&,
                                                      cudaStream_t);

}  // namespace hops::cuda
