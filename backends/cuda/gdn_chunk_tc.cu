// gdn_chunk_fwd on tensor cores for the common case (K = 128, f16/bf16
// inputs, V % 32 == 0, unit-stride 16-byte-aligned head rows): FLA's chunked
// WY algorithm in two kernels, mma.sync m16n8k16 with f32 accumulation.
// Per chunk of C = 64 tokens, with gc the in-chunk cumulative log decay,
// Γ_i = e^{gc_i}, k̂ = rk k, q̂ = rq q (rk, rq: l2-norm factors or 1):
//   A  = strictly-lower(beta_i e^{gc_i - gc_j} k̂_i.k̂_j),   T = (I + A)^-1
//   M  = lower(scale e^{gc_i - gc_j} q̂_i.k̂_j)
//   v_new = T (beta (V - Γ K̂ S))           (= U - W S of FLA, T applied last)
//   O  = scale Γ Q̂ S + M v_new
//   S' = Γ_last S + K̂^T diag(e^{gc_last - gc}) v_new
// Kernel 1 (chunk_prepare_kernel), fully parallel over (chunk, value head):
// the l2 norms, the gates, A and M by tensor cores, T by blocked inversion
// (16 x 16 diagonal blocks by f32 substitution, the rest on tf32 tensor
// cores); writes one scratch record per (chunk, value head): T and M
// (16-bit), the row factors and Γ_last.
// Kernel 2 (chunk_state_kernel), one CTA per (sequence, value head, 32 or 64
// value columns), walks the chunks in order with the state in registers: a
// warp keeps S^T of 16 value columns (16 x 128, f32) as mma accumulators,
// which is also the A-operand layout of S^T K^T and S^T Q^T, so the chunk
// step runs in the transposed form (X^T = S^T K^T, v_new^T = rhs^T T^T,
// O^T, S^T += (f3 v_new)^T K) without leaving registers; each column group
// has a compute warp (the recurrence) and an output warp (O) that overlap.
// Chunk tiles (q, k, v and the record) arrive by cp.async, three stages deep.
// docs/CUDA_NOTES.md has the counts, predictions and measurements.
#include <cstring>
#include <type_traits>

#include "checked_math.hpp"
#include "device_common.cuh"
#include "gdn_chunk_record.cuh"
#include "tensor_core.cuh"

namespace hops::cuda {

namespace {

constexpr int kC = 64;          // chunk length
constexpr int kDk = 128;        // key dim of this path
constexpr int kRowK = kDk + 8;  // smem row of a q/k tile: 272 B, conflict-free ldmatrix
constexpr int kRowC = kC + 8;   // smem row of a C x C 16-bit matrix: 144 B
constexpr int kRowF = kC + 8;   // smem row of a C x C f32 matrix: conflict-free tf32 fragments
constexpr int kRowP = 24;       // smem row of a warp's 16 x 16 f32 partial product
constexpr int kPrepThreads = 128;

// out (16 x 16 as two m16n8 accumulators) += X Y, X and Y 16 x 16 f32 blocks
// in smem (leading dims ldx, ldy), through m16n8k8 tf32 mma.
__device__ __forceinline__ void block_mma_tf32(float (&out)[2][4], const float* x, int ldx,
                                               const float* y, int ldy, int lane) {
  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
    const int k0 = 8 * ks + t4;
    const uint32_t a0 = to_tf32(x[g * ldx + k0]), a1 = to_tf32(x[(g + 8) * ldx + k0]);
    const uint32_t a2 = to_tf32(x[g * ldx + k0 + 4]), a3 = to_tf32(x[(g + 8) * ldx + k0 + 4]);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const uint32_t b0 = to_tf32(y[k0 * ldy + 8 * nt + g]);
      const uint32_t b1 = to_tf32(y[(k0 + 4) * ldy + 8 * nt + g]);
      mma_tf32(out[nt], a0, a1, a2, a3, b0, b1);
    }
  }
}

// ---- kernel 1: per (chunk, value head) ------------------------------------------------

// Shared memory of kernel 1: the q and k tiles, overlaid after the products by
// A and T (f32), the partial products of the inversion and the M staging.
constexpr size_t kPrepTiles = 2 * kC * kRowK * 2;
constexpr size_t kPrepOverlay = (2 * kC * kRowF + 4 * 16 * kRowP) * 4 + kC * kRowC * 2;
constexpr size_t kPrepBase = kPrepTiles > kPrepOverlay ? kPrepTiles : kPrepOverlay;
constexpr size_t kPrepSmem = kPrepBase + 4 * kC * 4;
static_assert(kPrepBase % 16 == 0 && kRecordChunk == kC);

template <class E>
__global__ void __launch_bounds__(kPrepThreads) chunk_prepare_kernel(ChunkParams p, TcScratch s) {
  extern __shared__ __align__(16) unsigned char smem[];
  E* const sk = reinterpret_cast<E*>(smem);                 // [C][kRowK]
  E* const sq = sk + kC * kRowK;                            // [C][kRowK]
  float* const sa = reinterpret_cast<float*>(smem);         // [C][kRowF] A (after the products)
  float* const st = sa + kC * kRowF;                        // [C][kRowF] T
  float* const sp = st + kC * kRowF;                        // [warp][16][kRowP] inversion partials
  E* const sm = reinterpret_cast<E*>(sp + 4 * 16 * kRowP);  // [C][kRowC] M staging
  float* const gc = reinterpret_cast<float*>(smem + kPrepBase);
  float* const bt = gc + kC;
  float* const rk = bt + kC;
  float* const rq = rk + kC;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t hv = blockIdx.x % p.HV;
  const ChunkRef c = chunk_of_slot(p, blockIdx.x / p.HV, blockIdx.z);
  if (c.L == 0) return;
  const int L = c.L;
  const int64_t h = hv / (p.HV / p.H);
  const E* kb = reinterpret_cast<const E*>(p.k.data) + c.row * p.k.stride[0] + h * p.k.stride[2];
  const E* qb = reinterpret_cast<const E*>(p.q.data) + c.row * p.q.stride[0] + h * p.q.stride[2];
  char* const record = record_of(p, s, blockIdx.z, blockIdx.x / p.HV, hv);

  for (int e = tid; e < kC * (kDk / 8); e += kPrepThreads) {
    const int i = e >> 4, piece = (e & 15) * 8;
    const bool valid = i < L;
    const int64_t t = c.t0 + (valid ? i : 0);
    cp_async16(sk + i * kRowK + piece, kb + t * p.k.stride[1] + piece, valid);
    cp_async16(sq + i * kRowK + piece, qb + t * p.q.stride[1] + piece, valid);
  }
  cp_async_commit();

  if (warp == 0) {  // gates and the inclusive cumsum of g, two rows per lane
    const FusedGate gate(p.fused, p.A_log, p.dt_bias, hv);
    float gl[2], bl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = 2 * lane + r;
      gl[r] = 0.0f, bl[r] = 0.0f;
      if (i < L) {
        const int64_t t = c.t0 + i;
        float gv =
            ld(p.g.data, p.g.dtype, c.row * p.g.stride[0] + t * p.g.stride[1] + hv * p.g.stride[2]);
        float bv = ld(p.beta.data, p.beta.dtype,
                      c.row * p.beta.stride[0] + t * p.beta.stride[1] + hv * p.beta.stride[2]);
        if (p.fused) gate.apply(gv, bv);
        gl[r] = gv, bl[r] = bv;
      }
    }
    const float pair = gl[0] + gl[1];
    const float run = warp_inclusive_scan(pair, lane);
    gc[2 * lane] = run - pair + gl[0], gc[2 * lane + 1] = run;
    bt[2 * lane] = bl[0], bt[2 * lane + 1] = bl[1];
  }
  cp_async_wait<0>();
  __syncthreads();

  {  // l2-norm factors: threads 0-63 the k rows, 64-127 the q rows
    const int i = tid & 63;
    const uint4* row = reinterpret_cast<const uint4*>((tid < 64 ? sk : sq) + i * kRowK);
    float ss = 0.0f;
#pragma unroll
    for (int x = 0; x < kDk / 8; ++x) {
      const uint4 u = row[x];
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const float2 f = unpack2<E>(w[m]);
        ss += f.x * f.x + f.y * f.y;
      }
    }
    const float r = i >= L ? 0.0f : (p.l2norm ? rsqrtf(ss + 1e-6f) : 1.0f);
    (tid < 64 ? rk : rq)[i] = r;
  }

  // K K^T and Q K^T for the warp's 16 rows; column tiles past the diagonal skipped.
  float kk[8][4] = {}, qk[8][4] = {};
  const int last_tile = 2 * warp + 1;
#pragma unroll
  for (int kp = 0; kp < kDk / 32; ++kp) {
    uint32_t ak[2][4], aq[2][4];
#pragma unroll
    for (int hs = 0; hs < 2; ++hs) {
      const int m = lane >> 3;
      const int off =
          (16 * warp + (lane & 7) + 8 * (m & 1)) * kRowK + (2 * kp + hs) * 16 + 8 * (m >> 1);
      ldsm_x4(ak[hs], sk + off);
      ldsm_x4(aq[hs], sq + off);
    }
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      if (nt > last_tile) continue;
      uint32_t b[4];
      ldsm_x4(b, sk + (nt * 8 + (lane & 7)) * kRowK + kp * 32 + (lane >> 3) * 8);
      mma<E>(kk[nt], ak[0], b[0], b[1]);
      mma<E>(kk[nt], ak[1], b[2], b[3]);
      mma<E>(qk[nt], aq[0], b[0], b[1]);
      mma<E>(qk[nt], aq[1], b[2], b[3]);
    }
  }
  __syncthreads();  // the tiles are dead: A, T, M overlay them

  {
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int i = 16 * warp + g + 8 * hr;
        float mv[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int j = nt * 8 + 2 * t4 + e;
          float a = 0.0f, m = 0.0f;
          if (j <= i && j < L) {
            const float d = __expf(gc[i] - gc[j]);
            m = p.scale * rq[i] * rk[j] * d * qk[nt][2 * hr + e];
            if (j < i) a = bt[i] * rk[i] * rk[j] * d * kk[nt][2 * hr + e];
          }
          sa[i * kRowF + j] = a;
          mv[e] = m;
        }
        *reinterpret_cast<uint32_t*>(sm + i * kRowC + nt * 8 + 2 * t4) = pack2<E>(mv[0], mv[1]);
      }
    }
  }
  __syncthreads();

  if (tid < 64) {  // the 16 x 16 diagonal blocks of T by forward substitution
    const int b = tid >> 4, col = tid & 15;
    const float* ab = sa + 16 * b * kRowF + 16 * b;
    float x[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) {
      float acc = r == col ? 1.0f : 0.0f;
#pragma unroll
      for (int k = 0; k < r; ++k) acc -= ab[r * kRowF + k] * x[k];
      x[r] = acc;
    }
#pragma unroll
    for (int r = 0; r < 16; ++r) st[(16 * b + r) * kRowF + 16 * b + col] = x[r];
  } else {  // meanwhile: M (zero past the end: rq = 0 there) and the row factors out
    const int i = tid - 64;
    for (int e = i; e < kC * 8; e += 64) {
      const int row = e >> 3, piece = (e & 7) * 8;
      *reinterpret_cast<uint4*>(record + kRecordM + (row * kC + piece) * 2) =
          *reinterpret_cast<const uint4*>(sm + row * kRowC + piece);
    }
    float4 f = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (i < L) {
      const float gamma = expf(gc[i]);
      f = make_float4(bt[i], bt[i] * gamma * rk[i], p.scale * gamma * rq[i],
                      rk[i] * expf(gc[L - 1] - gc[i]));
    }
    reinterpret_cast<float4*>(record + kRecordF)[i] = f;
    if (i == 0) {
      *reinterpret_cast<float4*>(record + kRecordD) =
          make_float4(expf(gc[L - 1]), 0.0f, 0.0f, 0.0f);
    }
  }
  __syncthreads();

  // Off-diagonal 16 x 16 blocks, one block diagonal d at a time, a warp per
  // block, on tf32 tensor cores (T is rounded to 16 bits after anyway):
  // T_ij = -T_ii P,  P = sum_{k=j}^{i-1} A_ik T_kj  (i = j + d).
  for (int d = 1; d < 4; ++d) {
    if (warp < 4 - d) {
      const int jb = warp, ib = jb + d, g = lane >> 2, t4 = lane & 3;
      float part[2][4] = {};
      for (int kb2 = jb; kb2 < ib; ++kb2) {
        block_mma_tf32(part, sa + 16 * ib * kRowF + 16 * kb2, kRowF,
                       st + 16 * kb2 * kRowF + 16 * jb, kRowF, lane);
      }
      float* pw = sp + warp * 16 * kRowP;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          pw[(g + 8 * (e >> 1)) * kRowP + 8 * nt + 2 * t4 + (e & 1)] = part[nt][e];
      }
      __syncwarp();
      float out[2][4] = {};
      block_mma_tf32(out, st + 16 * ib * kRowF + 16 * ib, kRowF, pw, kRowP, lane);
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          st[(16 * ib + g + 8 * (e >> 1)) * kRowF + 16 * jb + 8 * nt + 2 * t4 + (e & 1)] =
              -out[nt][e];
        }
      }
    }
    __syncthreads();
  }

  // T out: zeros above the diagonal and in the rows past the chunk's end.
  for (int e = tid; e < kC * 8; e += kPrepThreads) {
    const int row = e >> 3, piece = (e & 7) * 8;
    uint32_t w[4];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int j = piece + 2 * m;
      const bool in = row < L;
      w[m] = pack2<E>(in && j <= row ? st[row * kRowF + j] : 0.0f,
                      in && j + 1 <= row ? st[row * kRowF + j + 1] : 0.0f);
    }
    *reinterpret_cast<uint4*>(record + kRecordT + (row * kC + piece) * 2) =
        make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// ---- kernel 2: per (sequence, value head, value block), chunks in order ---------------

constexpr int kStages = 3;
constexpr int kOutRow = 24;  // per-warp O staging row: 16 values + pad (48 B, conflict-free)

template <int kWarps>
struct StateSmem : SweepStage<16 * kWarps, kRowK, kRowC> {
  static constexpr int kOut =
      kStages * StateSmem::kStage;  // per output warp: O staging [C][kOutRow]
  static constexpr int kHandoff = kOut + kWarps * kC * kOutRow;  // per column group: v_new^T
  static constexpr size_t kBytes = static_cast<size_t>(kHandoff) * 2 + kWarps * 16 * 32 * 4;
};

// out += a B^T with a (16 x 64, A operands over the chunk rows) and B a lower
// triangular C x C matrix in smem: row tiles 2np, 2np+1 need k-steps <= np.
template <class E>
__device__ __forceinline__ void lower_times(const uint32_t (&a)[4][4], const E* lower, int lane,
                                            float (&out)[8][4]) {
  const int quad = lane >> 3;
#pragma unroll
  for (int np = 0; np < 4; ++np) {
#pragma unroll
    for (int kc = 0; kc <= np; ++kc) {
      uint32_t b[4];
      ldsm_x4(b,
              lower + ((2 * np + (quad >> 1)) * 8 + (lane & 7)) * kRowC + kc * 16 + (quad & 1) * 8);
      mma<E>(out[2 * np], a[kc], b[0], b[1]);
      mma<E>(out[2 * np + 1], a[kc], b[2], b[3]);
    }
  }
}

// kWarps column groups of 16 value columns, each served by two warps that
// keep bit-identical copies of the group's S^T: the compute warp (warp g)
// runs the recurrence (X = S^T K^T, rhs, v_new^T = rhs^T T^T) while its output
// warp (warp g + kWarps) computes S^T Q^T; after a barrier the output warp
// takes v_new^T and finishes O; both apply the same state update. All
// threads share the loads; two barriers per chunk. With Out = TcStates (the
// v4 backward's state sweep): no O; the compute warps write S^T (16-bit, the
// value the products use) at each chunk start, the output warps only load.
template <class E, int kWarps, class Out>
__global__ void __launch_bounds__(kWarps * 64, 1) chunk_state_kernel(ChunkParams p, Out s) {
  constexpr bool kStates = std::is_same_v<Out, TcStates>;
  using Smem = StateSmem<kWarps>;
  constexpr int kThreads = kWarps * 64, kBV = Smem::kBV;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  E* const smem = reinterpret_cast<E*>(smem_raw);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const bool output = warp >= kWarps;
  const int group = output ? warp - kWarps : warp;  // the warp's 16 value columns
  const int g = lane >> 2, t4 = lane & 3, quad = lane >> 3;
  const int64_t n = blockIdx.z, hv = blockIdx.y, c0 = int64_t(blockIdx.x) * kBV;
  const int64_t h = hv / (p.HV / p.H);
  const Span span = sequence_span(p.cu, n, p.T);
  // chunk c's record: slot first_slot + c of row z
  const int64_t z = p.cu.data ? 0 : n, first_slot = p.cu.data ? span.begin / kC + n : 0;
  const E* kb = reinterpret_cast<const E*>(p.k.data) + span.row * p.k.stride[0] + h * p.k.stride[2];
  const E* qb = reinterpret_cast<const E*>(p.q.data) + span.row * p.q.stride[0] + h * p.q.stride[2];
  const E* vb =
      reinterpret_cast<const E*>(p.v.data) + span.row * p.v.stride[0] + hv * p.v.stride[2] + c0;
  E* ob = reinterpret_cast<E*>(p.o.data) + span.row * p.o.stride[0] + hv * p.o.stride[2] + c0 +
          16 * group;
  E* const ostage = smem + Smem::kOut + group * kC * kOutRow;
  uint32_t* const handoff = reinterpret_cast<uint32_t*>(smem + Smem::kHandoff) + group * 16 * 32;

  auto load_chunk = [&](int64_t c, int stage) {
    constexpr int kAll = 2 * kC * 8 / kThreads;  // the record's loop fully unrolled
    load_sweep_chunk<kThreads, kDk, kRowK, kRowC, Smem, kAll>(smem, stage, tid, p, span, c, kb, qb,
                                                              vb, p.v, s, z, first_slot + c, hv);
  };

  // S^T of the group's 16 columns: s_acc[nt] holds S^T[v = g (+8)][k = 8 nt + 2 t4 (+1)].
  float s_acc[16][4];
  const int64_t my_v = c0 + 16 * group + g;
  {
    const float* h0 = p.h0.data ? reinterpret_cast<const float*>(p.h0.data) + n * p.h0.stride[0] +
                                      hv * p.h0.stride[1]
                                : nullptr;
    load_state_acc(s_acc, h0, p.h0_k, p.h0_v, my_v, t4);
  }

  const int64_t chunks = (span.end - span.begin + kC - 1) / kC;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < chunks) load_chunk(st, st);
    cp_async_commit();
  }

  for (int64_t c = 0; c < chunks; ++c) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // chunk c landed for all; all are done with chunk c - 1 and its handoff
    if (c + kStages - 1 < chunks) {
      load_chunk(c + kStages - 1, static_cast<int>((c + kStages - 1) % kStages));
    }
    cp_async_commit();

    const E* base = smem + static_cast<int>(c % kStages) * Smem::kStage;
    const E* sk = base + Smem::kK;
    const float4* sf = reinterpret_cast<const float4*>(base + Smem::kF);
    const float decay_last = *reinterpret_cast<const float*>(base + Smem::kD);
    const int64_t t0 = span.begin + c * kC;
    const int L = static_cast<int>(span.end - t0 < kC ? span.end - t0 : kC);

    // v_new^T as the A operand over the chunk rows (k-step np: rows 16 np ..).
    uint32_t na[4][4];
    if constexpr (kStates) {
      if (!output) {
        E* out = static_cast<E*>(s.states) +
                 (record_index(p, s, z, first_slot + c, hv) * p.V + my_v) * kDk + 2 * t4;
        store_state16<kDk>(out, s_acc);
      }
    }
    if (!output) {
      // X^T = S^T K^T (columns: the chunk's rows).
      float x[8][4] = {};
      state_times_tile<E, kRowK>(s_acc, sk, lane, x);
      // rhs^T = beta V^T - f1 X^T as the A operand.
      uint32_t ra[4][4];
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t vv[4];  // V^T[v = g, g + 8][i = 8 nt + 2 t4 ..] for nt = 2 np, 2 np + 1
        ldsm_x4_trans(vv, base + Smem::kV +
                              ((2 * np + (quad >> 1)) * 8 + (lane & 7)) * Smem::kRowV + 16 * group +
                              (quad & 1) * 8);
#pragma unroll
        for (int hs = 0; hs < 2; ++hs) {
          const int nt = 2 * np + hs, i0 = nt * 8 + 2 * t4;
          const float4 fa = sf[i0], fb = sf[i0 + 1];
          const float2 lo = unpack2<E>(vv[2 * hs]), hi = unpack2<E>(vv[2 * hs + 1]);
          ra[np][2 * hs] = pack2<E>(fa.x * lo.x - fa.y * x[nt][0], fb.x * lo.y - fb.y * x[nt][1]);
          ra[np][2 * hs + 1] =
              pack2<E>(fa.x * hi.x - fa.y * x[nt][2], fb.x * hi.y - fb.y * x[nt][3]);
        }
      }
      // v_new^T = rhs^T T^T, handed to the output warp.
      float vn[8][4] = {};
      lower_times<E>(ra, base + Smem::kT, lane, vn);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
#pragma unroll
        for (int hs = 0; hs < 2; ++hs) {
          na[np][2 * hs] = pack2<E>(vn[2 * np + hs][0], vn[2 * np + hs][1]);
          na[np][2 * hs + 1] = pack2<E>(vn[2 * np + hs][2], vn[2 * np + hs][3]);
        }
      }
#pragma unroll
      for (int r = 0; r < 16; ++r) handoff[r * 32 + lane] = na[r / 4][r % 4];
    }
    float y[8][4];  // output warps: O^T = f2 (S^T Q^T) + v_new^T M^T
    if (output && !kStates) {
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) y[nt][0] = y[nt][1] = y[nt][2] = y[nt][3] = 0.0f;
      state_times_tile<E, kRowK>(s_acc, base + Smem::kQ, lane, y);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int i0 = nt * 8 + 2 * t4;
        const float f2a = sf[i0].z, f2b = sf[i0 + 1].z;
        y[nt][0] *= f2a, y[nt][1] *= f2b, y[nt][2] *= f2a, y[nt][3] *= f2b;
      }
    }
    __syncthreads();  // v_new^T handed over
    if (output && !kStates) {
#pragma unroll
      for (int r = 0; r < 16; ++r) na[r / 4][r % 4] = handoff[r * 32 + lane];
      lower_times<E>(na, base + Smem::kM, lane, y);
      // O rows through the warp's staging tile (stmatrix.trans: row = token), then
      // 16-byte stores of the rows that belong to the sequence.
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        stsm_x4_trans(ostage + ((2 * np + (quad >> 1)) * 8 + (lane & 7)) * kOutRow + (quad & 1) * 8,
                      pack2<E>(y[2 * np][0], y[2 * np][1]), pack2<E>(y[2 * np][2], y[2 * np][3]),
                      pack2<E>(y[2 * np + 1][0], y[2 * np + 1][1]),
                      pack2<E>(y[2 * np + 1][2], y[2 * np + 1][3]));
      }
      __syncwarp();
#pragma unroll
      for (int e = lane; e < 2 * kC; e += 32) {
        const int i = e >> 1, half = (e & 1) * 8;
        if (i < L) {
          *reinterpret_cast<uint4*>(ob + (t0 + i) * p.o.stride[1] + half) =
              *reinterpret_cast<const uint4*>(ostage + i * kOutRow + half);
        }
      }
    }
    // Both warps: S^T = Γ_last S^T + (f3 v_new)^T K (n = key dims, k = chunk rows), from
    // the same 16-bit v_new, so that the two copies of S^T stay bit-identical.
    if (kStates && output) continue;
    uint32_t ua[4][4];
#pragma unroll
    for (int np = 0; np < 4; ++np) {
#pragma unroll
      for (int hs = 0; hs < 2; ++hs) {
        const int i0 = (2 * np + hs) * 8 + 2 * t4;
        const float f3a = sf[i0].w, f3b = sf[i0 + 1].w;
        const float2 lo = unpack2<E>(na[np][2 * hs]), hi = unpack2<E>(na[np][2 * hs + 1]);
        ua[np][2 * hs] = pack2<E>(f3a * lo.x, f3b * lo.y);
        ua[np][2 * hs + 1] = pack2<E>(f3a * hi.x, f3b * hi.y);
      }
    }
#pragma unroll
    for (int nt = 0; nt < 16; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s_acc[nt][e] *= decay_last;
#pragma unroll
      for (int kp = 0; kp < 2; ++kp) {
        uint32_t b[4];
        ldsm_x4_trans(b, sk + (kp * 32 + lane) * kRowK + nt * 8);
        mma<E>(s_acc[nt], ua[2 * kp], b[0], b[1]);
        mma<E>(s_acc[nt], ua[2 * kp + 1], b[2], b[3]);
      }
    }
  }

  if (!kStates && p.ht.data && !output) {
    float* ht = reinterpret_cast<float*>(p.ht.data) + n * p.ht.stride[0] + hv * p.ht.stride[1];
    store_state_f32(ht, p.ht_k, p.ht_v, s_acc, my_v, t4);
  }
}

template <class E, int kWarps, class Out>
cudaError_t launch_state(const ChunkParams& p, const Out& s, cudaStream_t stream) {
  constexpr size_t bytes = StateSmem<kWarps>::kBytes;
  cudaError_t status = allow_smem(chunk_state_kernel<E, kWarps, Out>, bytes);
  if (status != cudaSuccess) return status;
  const dim3 grid(static_cast<unsigned>(p.V / (16 * kWarps)), static_cast<unsigned>(p.HV),
                  static_cast<unsigned>(p.N));
  chunk_state_kernel<E, kWarps, Out><<<grid, kWarps * 64, bytes, stream>>>(p, s);
  return cudaGetLastError();
}

// states null: the forward (O, final state); else the v4 backward's state
// sweep (S^T at every chunk start into `states`).
template <class E>
cudaError_t launch_tc(const ChunkParams& p, void* scratch, void* states, cudaStream_t stream) {
  const TcScratch s{static_cast<char*>(scratch), chunk_slots(p)};
  if (p.T > 0) {
    cudaError_t status = allow_smem(chunk_prepare_kernel<E>, kPrepSmem);
    if (status != cudaSuccess) return status;
    const dim3 grid(static_cast<unsigned>(s.slots * p.HV), 1,
                    static_cast<unsigned>(p.cu.data ? 1 : p.N));
    chunk_prepare_kernel<E><<<grid, kPrepThreads, kPrepSmem, stream>>>(p, s);
    if ((status = cudaGetLastError()) != cudaSuccess) return status;
  }
  // 64 columns per CTA (4 warps share each chunk's tiles) when that still
  // gives every SM a CTA; else 32, for twice the CTAs.
  int device = 0, sms = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) {
    status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  if (status != cudaSuccess) return status;
  const bool wide = p.V % 64 == 0 && (p.V / 64) * p.HV * p.N >= sms;
  if (states) {
    const TcStates out{s, states};
    return wide ? launch_state<E, 4>(p, out, stream) : launch_state<E, 2>(p, out, stream);
  }
  return wide ? launch_state<E, 4>(p, s, stream) : launch_state<E, 2>(p, s, stream);
}

}  // namespace

bool chunk_tc_supported(const ChunkParams& p, int dtype) {
  return (dtype == kF16 || dtype == kBF16) && p.K == kDk && p.V % 32 == 0 && p.V > 0 &&
         head_rows_ok(p.q) && head_rows_ok(p.k) && head_rows_ok(p.v) && head_rows_ok(p.o);
}

size_t chunk_tc_scratch_bytes(const ChunkParams& p) {
  return scratch_bytes("gdn_chunk_fwd", chunk_slots(p), p.cu.data ? 1 : p.N, p.HV, kRecordBytes);
}

cudaError_t launch_gdn_chunk_tc(const ChunkParams& p, int dtype, void* scratch,
                                cudaStream_t stream) {
  return dtype == kF16 ? launch_tc<__half>(p, scratch, nullptr, stream)
                       : launch_tc<__nv_bfloat16>(p, scratch, nullptr, stream);
}

cudaError_t launch_gdn_chunk_states(const ChunkParams& p, int dtype, void* records, void* states,
                                    cudaStream_t stream) {
  return dtype == kF16 ? launch_tc<__half>(p, records, states, stream)
                       : launch_tc<__nv_bfloat16>(p, records, states, stream);
}

}  // namespace hops::cuda
