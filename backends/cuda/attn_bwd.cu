// attn_prefill_bwd, deterministic (no atomics): a first kernel forms each
// row's Delta = <do, o>, the gated output gradient dO' = do * sigmoid(gate)
// (into scratch, contiguous) and dgate; then dq by a CTA per query block that
// walks the key blocks, and dk/dv by a CTA per key block that walks the query
// heads of its group and their query blocks in ascending order. Tensor cores
// (mma.sync) for f16/bf16 with D in {64, 128, 256}, on Hopper the wgmma
// kernels of attn_bwd_dq_sm90.cu and attn_bwd_sm90.cu where they take the call; general f32
// CUDA-core kernels otherwise. The score and probability tiles are recomputed from lse.
#include "attn_common.cuh"

namespace hops::cuda {

namespace {

using namespace attn;

// Scratch: dO' [B,Tq,Hq,D] in q's dtype, Delta [B,Hq,Tq] f32, then with
// p.dkv_splits > 1 the sm_90a dK/dV kernel's partials (attn_bwd_sm90.cu).
struct BwdScratch {
  char* d_o;
  float* delta;
  float* partial;
};
size_t d_o_bytes(const AttnBwdParams& p, int dtype) {
  const size_t elem = dtype == kF32 ? 4 : 2;
  return (size_t(p.B * p.Tq * p.Hq * p.D) * elem + 255) / 256 * 256;
}
size_t delta_bytes(const AttnBwdParams& p) {
  return (size_t(p.B * p.Hq * p.Tq) * sizeof(float) + 255) / 256 * 256;
}
BwdScratch carve(const AttnBwdParams& p, int dtype, void* scratch) {
  char* base = static_cast<char*>(scratch);
  char* delta = base + d_o_bytes(p, dtype);
  return {base, reinterpret_cast<float*>(delta), reinterpret_cast<float*>(delta + delta_bytes(p))};
}

// ---- Delta, dO', dgate: a warp per (b, t, h) row -------------------------------------

template <class T>
__global__ void __launch_bounds__(256)
    bwd_prepare_kernel(const AttnBwdParams p, T* d_o, float* delta) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = p.B * p.Tq * p.Hq, warps = int64_t{gridDim.x} * 8;
  const int D = static_cast<int>(p.D);
  for (int64_t row = int64_t{blockIdx.x} * 8 + (threadIdx.x >> 5); row < rows; row += warps) {
    const int64_t h = row % p.Hq, t = (row / p.Hq) % p.Tq, b = row / (p.Hq * p.Tq);
    const T* dy = reinterpret_cast<const T*>(p.d_o.data) + at3(p.d_o, b, t, h);
    const T* y = reinterpret_cast<const T*>(p.o.data) + at3(p.o, b, t, h);
    const T* gate =
        p.gate.data ? reinterpret_cast<const T*>(p.gate.data) + at3(p.gate, b, t, h) : nullptr;
    T* dgate = p.dgate.data ? reinterpret_cast<T*>(p.dgate.data) + at3(p.dgate, b, t, h) : nullptr;
    float acc = 0.0f;
    for (int d = lane; d < D; d += 32) {
      const float x = to_f(dy[d * p.d_o.stride[3]]), o = to_f(y[d * p.o.stride[3]]);
      acc = fmaf(x, o, acc);
      const float g = gate ? sigmoidf_(to_f(gate[d * p.gate.stride[3]])) : 1.0f;
      d_o[row * D + d] = from_f<T>(x * g);
      if (dgate) dgate[d * p.dgate.stride[3]] = from_f<T>(x * o * (1.0f - g));
    }
    acc = warp_sum(acc);
    if (lane == 0) delta[(b * p.Hq + h) * p.Tq + t] = acc;
  }
}

// ---- tensor cores: dq ----------------------------------------------------------------

// A CTA of 8 warps owns 128 query rows of one head (16 per warp): Q and dO'
// stay in smem, K and V tiles are double-buffered. Per tile: S = Q K^T,
// dP = dO' V^T, dS = P (dP - Delta), dQ += dS K.
template <int D>
struct DqTile {
  static constexpr int kWarps = 8, kThreads = 32 * kWarps;
  static constexpr int kBr = 16 * kWarps, kBc = D == 256 ? 32 : 64;
  static constexpr int kPitch = D + 8;
  static constexpr size_t kSmem = size_t(2 * kBr + 4 * kBc) * kPitch * 2;
};

template <class E, int D>
__global__ void __launch_bounds__(DqTile<D>::kThreads, 1)
    dq_tc_kernel(const AttnBwdParams p, const E* d_o, const float* delta, int64_t slots) {
  using Tile = DqTile<D>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, P = Tile::kPitch, kThreads = Tile::kThreads;
  extern __shared__ uint4 smem[];
  E* sQ = reinterpret_cast<E*>(smem);
  E* sDO = sQ + kBr * P;
  E* sK = sDO + kBr * P;  // two stages of kBc rows
  E* sV = sK + 2 * kBc * P;

  const int64_t head = blockIdx.x % p.Hq;
  const int64_t slot = slots - 1 - blockIdx.x / p.Hq;
  int64_t n, c;
  if (!slot_block(p.cu_q, p.N, p.Tq, kBr, slot, n, c)) return;
  const SeqPair s = seq_pair(p.cu_q, p.cu_k, n, p.Tq, p.Tk);
  const int64_t m0 = c * kBr;
  if (m0 >= s.Lq) return;
  const int64_t kvh = head / (p.Hq / p.Hkv);
  const int64_t off = s.Lk - s.Lq;
  int64_t kend = s.Lk;
  if (p.causal) kend = min(kend, m0 + kBr + off);
  const int ntiles = kend > 0 ? static_cast<int>((kend + kBc - 1) / kBc) : 0;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const E* q = reinterpret_cast<const E*>(p.q.data) + at3(p.q, s.row, s.q0, head);
  const E* dy = d_o + ((s.row * p.Tq + s.q0) * p.Hq + head) * D;
  const E* k = reinterpret_cast<const E*>(p.k.data) + at3(p.k, s.row, s.k0, kvh);
  const E* v = reinterpret_cast<const E*>(p.v.data) + at3(p.v, s.row, s.k0, kvh);
  load_rows<E, D, P, kBr, kThreads>(sQ, q, p.q.stride[1], m0, s.Lq, tid);
  load_rows<E, D, P, kBr, kThreads>(sDO, dy, p.Hq * D, m0, s.Lq, tid);
  if (ntiles > 0) load_rows<E, D, P, kBc, kThreads>(sK, k, p.k.stride[1], 0, s.Lk, tid);
  cp_async_commit();
  if (ntiles > 0) load_rows<E, D, P, kBc, kThreads>(sV, v, p.v.stride[1], 0, s.Lk, tid);
  cp_async_commit();

  const float c2 = p.scale * kLog2e;
  const int64_t row_g = m0 + warp * 16 + (lane >> 2);
  const float lse2[2] = {lse2_of(p, s, head, row_g), lse2_of(p, s, head, row_g + 8)};
  const float dl[2] = {delta_of(p, delta, s, head, row_g), delta_of(p, delta, s, head, row_g + 8)};
  float dq[D / 8][4] = {};
  const E* qa = sQ + warp * 16 * P + a_rows<P>(lane);
  const E* da = sDO + warp * 16 * P + a_rows<P>(lane);
  for (int t = 0; t < ntiles; ++t) {
    const int st = t & 1;
    const int64_t j0 = int64_t{t} * kBc;
    cp_async_wait<1>();
    __syncthreads();
    if (t + 1 < ntiles)
      load_rows<E, D, P, kBc, kThreads>(sK + (st ^ 1) * kBc * P, k, p.k.stride[1], j0 + kBc, s.Lk,
                                        tid);
    cp_async_commit();
    float sc[kBc / 8][4] = {};
    mma_rows_rows<E, P, D / 16, kBc / 8>(sc, qa, sK + st * kBc * P + b_rows<P>(lane));

    cp_async_wait<1>();
    __syncthreads();
    if (t + 1 < ntiles)
      load_rows<E, D, P, kBc, kThreads>(sV + (st ^ 1) * kBc * P, v, p.v.stride[1], j0 + kBc, s.Lk,
                                        tid);
    cp_async_commit();
    float dp[kBc / 8][4] = {};
    mma_rows_rows<E, P, D / 16, kBc / 8>(dp, da, sV + st * kBc * P + b_rows<P>(lane));
    const bool masked = j0 + kBc > s.Lk || (p.causal && j0 + kBc - 1 > m0 + off);
#pragma unroll
    for (int j = 0; j < kBc / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float pr = ex2(sc[j][e] * c2 - lse2[e >> 1]);
        if (masked) {
          const int64_t key = j0 + 8 * j + 2 * (lane & 3) + (e & 1);
          const int64_t row = row_g + 8 * (e >> 1);
          if (key >= s.Lk || (p.causal && key > row + off)) pr = 0.0f;
        }
        sc[j][e] = pr * (dp[j][e] - dl[e >> 1]);  // dS
      }
    }
    mma_regs_trans<E, P, kBc / 8, D / 8>(dq, sc, sK + st * kBc * P + b_trans<P>(lane));
  }
  cp_async_wait<0>();

  E* out = reinterpret_cast<E*>(p.dq.data) + at3(p.dq, s.row, s.q0, head);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = row_g + 8 * r;
    if (i >= s.Lq) continue;
#pragma unroll
    for (int d = 0; d < D / 8; ++d)
      st_pair(out + i * p.dq.stride[1] + 8 * d + 2 * (lane & 3), dq[d][2 * r] * p.scale,
              dq[d][2 * r + 1] * p.scale);
  }
}

// ---- tensor cores: dk, dv ------------------------------------------------------------

// A CTA of 8 warps owns 128 keys of one key-value head (16 per warp) and kDOut
// of the D output dims (D = 256 runs two such CTAs per key block, each
// recomputing the scores: dk and dv of 16 x 256 would not fit the registers).
// It walks (query head of the group, query block) in ascending order with Q
// and dO' double-buffered: S^T = K Q^T, dP^T = V dO'^T, dV += P^T dO',
// dK += dS^T Q.
template <int D>
struct DkvTile {
  static constexpr int kWarps = 8, kThreads = 32 * kWarps;
  static constexpr int kBc = 16 * kWarps, kBr = D == 64 ? 64 : 32;
  static constexpr int kDOut = D == 256 ? 128 : D, kParts = D / kDOut;
  static constexpr int kPitch = D + 8;
  static constexpr size_t kSmem = size_t(2 * kBc + 4 * kBr) * kPitch * 2 + 4 * kBr * 4;
};

template <class E, int D>
__global__ void __launch_bounds__(DkvTile<D>::kThreads, 1)
    dkv_tc_kernel(const AttnBwdParams p, const E* d_o, const float* delta) {
  using Tile = DkvTile<D>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc, P = Tile::kPitch, kThreads = Tile::kThreads;
  constexpr int kDOut = Tile::kDOut;
  extern __shared__ uint4 smem[];
  E* sK = reinterpret_cast<E*>(smem);
  E* sV = sK + kBc * P;
  E* sQ = sV + kBc * P;                                     // two stages of kBr rows
  E* sDO = sQ + 2 * kBr * P;                                // two stages
  float* sL = reinterpret_cast<float*>(sDO + 2 * kBr * P);  // [2][kBr] lse (log2 domain)
  float* sD = sL + 2 * kBr;                                 // [2][kBr] Delta

  const int64_t kvh = blockIdx.x % p.Hkv;
  const int part = static_cast<int>((blockIdx.x / p.Hkv) % Tile::kParts);
  const int64_t slot = blockIdx.x / (p.Hkv * Tile::kParts);  // early keys (most queries) first
  int64_t n, c;
  if (!slot_block(p.cu_k, p.N, p.Tk, kBc, slot, n, c)) return;
  const SeqPair s = seq_pair(p.cu_q, p.cu_k, n, p.Tq, p.Tk);
  const int64_t j0 = c * kBc;
  if (j0 >= s.Lk) return;
  const int64_t G = p.Hq / p.Hkv;
  const int64_t off = s.Lk - s.Lq;
  const int64_t qmin = p.causal ? max(int64_t{0}, j0 - off) : 0;
  const int64_t qb0 = qmin / kBr;
  const int64_t nqb = qmin < s.Lq ? (s.Lq + kBr - 1) / kBr - qb0 : 0;
  const int64_t total = G * nqb;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const E* k = reinterpret_cast<const E*>(p.k.data) + at3(p.k, s.row, s.k0, kvh);
  const E* v = reinterpret_cast<const E*>(p.v.data) + at3(p.v, s.row, s.k0, kvh);
  load_rows<E, D, P, kBc, kThreads>(sK, k, p.k.stride[1], j0, s.Lk, tid);
  load_rows<E, D, P, kBc, kThreads>(sV, v, p.v.stride[1], j0, s.Lk, tid);
  // Query block `it` of the walk into stage `st`.
  const auto issue = [&](int64_t it, int st) {
    const int64_t h = kvh * G + it / nqb, i0 = (qb0 + it % nqb) * kBr;
    const E* q = reinterpret_cast<const E*>(p.q.data) + at3(p.q, s.row, s.q0, h);
    const E* dy = d_o + ((s.row * p.Tq + s.q0) * p.Hq + h) * D;
    load_rows<E, D, P, kBr, kThreads>(sQ + st * kBr * P, q, p.q.stride[1], i0, s.Lq, tid);
    load_rows<E, D, P, kBr, kThreads>(sDO + st * kBr * P, dy, p.Hq * D, i0, s.Lq, tid);
    if (tid < kBr) {
      sL[st * kBr + tid] = lse2_of(p, s, h, i0 + tid);
      sD[st * kBr + tid] = delta_of(p, delta, s, h, i0 + tid);
    }
  };
  if (total > 0) issue(0, 0);
  cp_async_commit();

  const float c2 = p.scale * kLog2e;
  const int64_t key_g = j0 + warp * 16 + (lane >> 2);  // keys key_g and key_g + 8
  float dk[kDOut / 8][4] = {}, dv[kDOut / 8][4] = {};
  const E* ka = sK + warp * 16 * P + a_rows<P>(lane);
  const E* va = sV + warp * 16 * P + a_rows<P>(lane);
  for (int64_t it = 0; it < total; ++it) {
    const int st = static_cast<int>(it & 1);
    cp_async_wait<0>();
    __syncthreads();  // stage st landed; everyone is done with stage st ^ 1
    if (it + 1 < total) issue(it + 1, st ^ 1);
    cp_async_commit();
    const int64_t i0 = (qb0 + it % nqb) * kBr;
    const E* q_st = sQ + st * kBr * P;
    const E* dy_st = sDO + st * kBr * P;
    float sc[kBr / 8][4] = {}, dp[kBr / 8][4] = {};
    mma_rows_rows<E, P, D / 16, kBr / 8>(sc, ka, q_st + b_rows<P>(lane));
    mma_rows_rows<E, P, D / 16, kBr / 8>(dp, va, dy_st + b_rows<P>(lane));
    const bool masked = (p.causal && i0 < j0 + kBc - 1 - off) || i0 + kBr > s.Lq;
#pragma unroll
    for (int j = 0; j < kBr / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * (lane & 3) + (e & 1);
        float pr = ex2(sc[j][e] * c2 - sL[st * kBr + col]);
        if (masked) {
          const int64_t i = i0 + col, key = key_g + 8 * (e >> 1);
          if (i >= s.Lq || (p.causal && key > i + off)) pr = 0.0f;
        }
        sc[j][e] = pr;
        dp[j][e] = pr * (dp[j][e] - sD[st * kBr + col]);  // dS^T
      }
    }
    mma_regs_trans<E, P, kBr / 8, kDOut / 8>(dv, sc, dy_st + b_trans<P>(lane) + part * kDOut);
    mma_regs_trans<E, P, kBr / 8, kDOut / 8>(dk, dp, q_st + b_trans<P>(lane) + part * kDOut);
  }
  cp_async_wait<0>();

  E* dk_out = reinterpret_cast<E*>(p.dk.data) + at3(p.dk, s.row, s.k0, kvh) + part * kDOut;
  E* dv_out = reinterpret_cast<E*>(p.dv.data) + at3(p.dv, s.row, s.k0, kvh) + part * kDOut;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t key = key_g + 8 * r;
    if (key >= s.Lk) continue;
#pragma unroll
    for (int d = 0; d < kDOut / 8; ++d) {
      const int col = 8 * d + 2 * (lane & 3);
      st_pair(dk_out + key * p.dk.stride[1] + col, dk[d][2 * r] * p.scale,
              dk[d][2 * r + 1] * p.scale);
      st_pair(dv_out + key * p.dv.stride[1] + col, dv[d][2 * r], dv[d][2 * r + 1]);
    }
  }
}

// Which kernels run on Hopper wgmma (attn_bwd_dq_sm90.cu, attn_bwd_sm90.cu).
struct Sm90Kernels {
  bool dq = false, dkv = false;
};

template <class E, int D>
cudaError_t launch_bwd_tc(const AttnBwdParams& p, int dtype, const BwdScratch& sc, Sm90Kernels sm90,
                          cudaStream_t stream) {
  const E* d_o = reinterpret_cast<const E*>(sc.d_o);
  const bool varlen = p.cu_q.data != nullptr;
  const int64_t q_slots = block_slots(p.N, p.Tq, DqTile<D>::kBr, varlen);
  if (sm90.dq) {
    const cudaError_t status = attn_dq_sm90(p, dtype, sc.d_o, sc.delta, true, stream);
    if (status != cudaSuccess) return status;
  } else if (q_slots * p.Hq > 0) {
    const cudaError_t status = allow_smem(dq_tc_kernel<E, D>, DqTile<D>::kSmem);
    if (status != cudaSuccess) return status;
    dq_tc_kernel<E, D>
        <<<static_cast<unsigned>(q_slots * p.Hq), DqTile<D>::kThreads, DqTile<D>::kSmem, stream>>>(
            p, d_o, sc.delta, q_slots);
  }
  if (sm90.dkv) return attn_dkv_sm90(p, dtype, sc.d_o, sc.delta, sc.partial, true, stream);
  const int64_t k_slots = block_slots(p.N, p.Tk, DkvTile<D>::kBc, varlen);
  if (k_slots * p.Hkv > 0) {
    const cudaError_t status = allow_smem(dkv_tc_kernel<E, D>, DkvTile<D>::kSmem);
    if (status != cudaSuccess) return status;
    dkv_tc_kernel<E, D><<<static_cast<unsigned>(k_slots * p.Hkv * DkvTile<D>::kParts),
                          DkvTile<D>::kThreads, DkvTile<D>::kSmem, stream>>>(p, d_o, sc.delta);
  }
  return cudaGetLastError();
}

// ---- general (f32 CUDA cores) --------------------------------------------------------

// The forward's general layout: 4 warps, 4 rows each, tiles of 32 staged as
// f32 in smem rows padded to D + 1; lane j scores row j of the tile and lane l
// accumulates dims l, l + 32, ...
constexpr int kGenWarps = 4, kGenThreads = 32 * kGenWarps, kGenRows = 16, kGenTile = 32;
constexpr int kGenDims = kAttnMaxHeadDim / 32;

size_t gen_bwd_smem(int64_t D) {
  return (size_t(2 * kGenTile) * (D + 1) + size_t(2 * kGenRows) * D + 2 * kGenTile) * sizeof(float);
}

// dq: 16 query rows of one head against key tiles.
template <class T>
__global__ void __launch_bounds__(kGenThreads)
    dq_general_kernel(const AttnBwdParams p, const T* d_o, const float* delta, int64_t slots) {
  extern __shared__ float gsm[];
  const int D = static_cast<int>(p.D), KP = D + 1;
  float* sK = gsm;
  float* sV = sK + kGenTile * KP;
  float* sQ = sV + kGenTile * KP;  // [kGenRows][D], log2-domain scaled
  float* sDO = sQ + kGenRows * D;

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
  const T* dy = d_o + ((s.row * p.Tq + s.q0) * p.Hq + head) * D;
  const T* k = reinterpret_cast<const T*>(p.k.data) + at3(p.k, s.row, s.k0, kvh);
  const T* v = reinterpret_cast<const T*>(p.v.data) + at3(p.v, s.row, s.k0, kvh);
  for (int idx = tid; idx < kGenRows * D; idx += kGenThreads) {
    const int r = idx / D, d = idx % D;
    const bool valid = m0 + r < s.Lq;
    sQ[idx] = valid ? to_f(q[(m0 + r) * p.q.stride[1] + d * p.q.stride[3]]) * c2 : 0.0f;
    sDO[idx] = valid ? to_f(dy[(m0 + r) * p.Hq * D + d]) : 0.0f;
  }
  float lse2[4], dl[4];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    lse2[r] = lse2_of(p, s, head, m0 + warp * 4 + r);
    dl[r] = delta_of(p, delta, s, head, m0 + warp * 4 + r);
  }

  float dq[4][kGenDims] = {};
  for (int64_t j0 = 0; j0 < kend; j0 += kGenTile) {
    __syncthreads();
    for (int idx = tid; idx < kGenTile * D; idx += kGenThreads) {
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
      const float* dr = sDO + (warp * 4 + r) * D;
      const float* kr = sK + lane * KP;
      const float* vr = sV + lane * KP;
      float x = 0.0f, dpv = 0.0f;
      for (int d = 0; d < D; ++d) x = fmaf(qr[d], kr[d], x), dpv = fmaf(dr[d], vr[d], dpv);
      const int64_t key = j0 + lane;
      const bool visible = key < s.Lk && !(p.causal && key > i + off);
      const float pr = visible ? exp2f(x - lse2[r]) : 0.0f;
      const float ds = pr * (dpv - dl[r]);
      for (int jj = 0; jj < kGenTile; ++jj) {
        const float dsj = __shfl_sync(0xffffffffu, ds, jj);
        const float* kj = sK + jj * KP + lane;
#pragma unroll
        for (int cc = 0; cc < kGenDims; ++cc)
          if (lane + 32 * cc < D) dq[r][cc] = fmaf(dsj, kj[32 * cc], dq[r][cc]);
      }
    }
  }

  T* out = reinterpret_cast<T*>(p.dq.data) + at3(p.dq, s.row, s.q0, head);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t i = m0 + warp * 4 + r;
    if (i >= s.Lq) continue;
#pragma unroll
    for (int cc = 0; cc < kGenDims; ++cc) {
      const int d = lane + 32 * cc;
      if (d < D) out[i * p.dq.stride[1] + d * p.dq.stride[3]] = from_f<T>(dq[r][cc] * p.scale);
    }
  }
}

// dk, dv: 16 keys of one key-value head against the query tiles of each query
// head of its group, heads and tiles in ascending order.
template <class T>
__global__ void __launch_bounds__(kGenThreads)
    dkv_general_kernel(const AttnBwdParams p, const T* d_o, const float* delta) {
  extern __shared__ float gsm[];
  const int D = static_cast<int>(p.D), KP = D + 1;
  float* sQ = gsm;                  // [kGenTile][KP], unscaled
  float* sDO = sQ + kGenTile * KP;  // [kGenTile][KP]
  float* sK = sDO + kGenTile * KP;  // [kGenRows][D]
  float* sV = sK + kGenRows * D;
  float* sL = sV + kGenRows * D;  // [kGenTile] lse (log2 domain)
  float* sD = sL + kGenTile;      // [kGenTile] Delta

  const int64_t kvh = blockIdx.x % p.Hkv;
  const int64_t slot = blockIdx.x / p.Hkv;
  int64_t n, c;
  if (!slot_block(p.cu_k, p.N, p.Tk, kGenRows, slot, n, c)) return;
  const SeqPair s = seq_pair(p.cu_q, p.cu_k, n, p.Tq, p.Tk);
  const int64_t j0 = c * kGenRows;
  if (j0 >= s.Lk) return;
  const int64_t G = p.Hq / p.Hkv;
  const int64_t off = s.Lk - s.Lq;
  const int64_t qmin = p.causal ? max(int64_t{0}, j0 - off) : 0;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float c2 = p.scale * kLog2e;

  const T* k = reinterpret_cast<const T*>(p.k.data) + at3(p.k, s.row, s.k0, kvh);
  const T* v = reinterpret_cast<const T*>(p.v.data) + at3(p.v, s.row, s.k0, kvh);
  for (int idx = tid; idx < kGenRows * D; idx += kGenThreads) {
    const int r = idx / D, d = idx % D;
    const bool valid = j0 + r < s.Lk;
    sK[idx] = valid ? to_f(k[(j0 + r) * p.k.stride[1] + d * p.k.stride[3]]) : 0.0f;
    sV[idx] = valid ? to_f(v[(j0 + r) * p.v.stride[1] + d * p.v.stride[3]]) : 0.0f;
  }

  float dk[4][kGenDims] = {}, dv[4][kGenDims] = {};
  for (int64_t h = kvh * G; h < (kvh + 1) * G; ++h) {
    const T* q = reinterpret_cast<const T*>(p.q.data) + at3(p.q, s.row, s.q0, h);
    const T* dy = d_o + ((s.row * p.Tq + s.q0) * p.Hq + h) * D;
    for (int64_t i0 = qmin / kGenTile * kGenTile; i0 < s.Lq; i0 += kGenTile) {
      __syncthreads();
      for (int idx = tid; idx < kGenTile * D; idx += kGenThreads) {
        const int r = idx / D, d = idx % D;
        const bool valid = i0 + r < s.Lq;
        sQ[r * KP + d] = valid ? to_f(q[(i0 + r) * p.q.stride[1] + d * p.q.stride[3]]) : 0.0f;
        sDO[r * KP + d] = valid ? to_f(dy[(i0 + r) * p.Hq * D + d]) : 0.0f;
      }
      if (tid < kGenTile) {
        sL[tid] = lse2_of(p, s, h, i0 + tid);
        sD[tid] = delta_of(p, delta, s, h, i0 + tid);
      }
      __syncthreads();
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int64_t key = j0 + warp * 4 + r;
        if (key >= s.Lk) continue;
        const float* kr = sK + (warp * 4 + r) * D;
        const float* vr = sV + (warp * 4 + r) * D;
        const float* qi = sQ + lane * KP;
        const float* di = sDO + lane * KP;
        float x = 0.0f, dpv = 0.0f;
        for (int d = 0; d < D; ++d) x = fmaf(qi[d], kr[d], x), dpv = fmaf(di[d], vr[d], dpv);
        const int64_t i = i0 + lane;
        const bool visible = i < s.Lq && !(p.causal && key > i + off);
        const float pr = visible ? exp2f(x * c2 - sL[lane]) : 0.0f;
        const float ds = pr * (dpv - sD[lane]);
        for (int ii = 0; ii < kGenTile; ++ii) {
          const float pi = __shfl_sync(0xffffffffu, pr, ii);
          const float dsi = __shfl_sync(0xffffffffu, ds, ii);
          const float* qrow = sQ + ii * KP + lane;
          const float* drow = sDO + ii * KP + lane;
#pragma unroll
          for (int cc = 0; cc < kGenDims; ++cc) {
            if (lane + 32 * cc < D) {
              dv[r][cc] = fmaf(pi, drow[32 * cc], dv[r][cc]);
              dk[r][cc] = fmaf(dsi, qrow[32 * cc], dk[r][cc]);
            }
          }
        }
      }
    }
  }

  T* dk_out = reinterpret_cast<T*>(p.dk.data) + at3(p.dk, s.row, s.k0, kvh);
  T* dv_out = reinterpret_cast<T*>(p.dv.data) + at3(p.dv, s.row, s.k0, kvh);
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t key = j0 + warp * 4 + r;
    if (key >= s.Lk) continue;
#pragma unroll
    for (int cc = 0; cc < kGenDims; ++cc) {
      const int d = lane + 32 * cc;
      if (d >= D) continue;
      dk_out[key * p.dk.stride[1] + d * p.dk.stride[3]] = from_f<T>(dk[r][cc] * p.scale);
      dv_out[key * p.dv.stride[1] + d * p.dv.stride[3]] = from_f<T>(dv[r][cc]);
    }
  }
}

template <class T>
cudaError_t launch_bwd_general(const AttnBwdParams& p, const BwdScratch& sc, cudaStream_t stream) {
  const T* d_o = reinterpret_cast<const T*>(sc.d_o);
  const bool varlen = p.cu_q.data != nullptr;
  const size_t smem = gen_bwd_smem(p.D);
  const int64_t q_slots = block_slots(p.N, p.Tq, kGenRows, varlen);
  if (q_slots * p.Hq > 0) {
    const cudaError_t status = allow_smem(dq_general_kernel<T>, smem);
    if (status != cudaSuccess) return status;
    dq_general_kernel<T><<<static_cast<unsigned>(q_slots * p.Hq), kGenThreads, smem, stream>>>(
        p, d_o, sc.delta, q_slots);
  }
  const int64_t k_slots = block_slots(p.N, p.Tk, kGenRows, varlen);
  if (k_slots * p.Hkv > 0) {
    const cudaError_t status = allow_smem(dkv_general_kernel<T>, smem);
    if (status != cudaSuccess) return status;
    dkv_general_kernel<T>
        <<<static_cast<unsigned>(k_slots * p.Hkv), kGenThreads, smem, stream>>>(p, d_o, sc.delta);
  }
  return cudaGetLastError();
}

}  // namespace

size_t attn_bwd_scratch_bytes(const AttnBwdParams& p, int dtype) {
  const size_t partial =
      p.dkv_splits > 1 ? size_t(2 * p.dkv_splits * p.B * p.Tk * p.Hkv * p.D) * sizeof(float) : 0;
  return d_o_bytes(p, dtype) + delta_bytes(p) + partial;
}

cudaError_t launch_attn_prefill_bwd(const AttnBwdParams& p, int dtype, bool tensor_cores,
                                    BwdPath path, void* scratch, cudaStream_t stream) {
  const BwdScratch sc = carve(p, dtype, scratch);
  // Decided before anything is launched: a forced path that cannot run fails
  // with nothing written.
  Sm90Kernels sm90;
  if (tensor_cores && path != BwdPath::mma) {
    cudaError_t probe = attn_dq_sm90(p, dtype, sc.d_o, sc.delta, false, stream);
    if (probe != cudaSuccess && probe != cudaErrorNotSupported) return probe;
    sm90.dq = probe == cudaSuccess;
    probe = attn_dkv_sm90(p, dtype, sc.d_o, sc.delta, sc.partial, false, stream);
    if (probe != cudaSuccess && probe != cudaErrorNotSupported) return probe;
    sm90.dkv = probe == cudaSuccess;
  }
  if (path == BwdPath::wgmma && !(sm90.dq && sm90.dkv)) return cudaErrorNotSupported;
  const int64_t rows = p.B * p.Tq * p.Hq;
  cudaError_t status = cudaSuccess;
  if (rows > 0) {
    by_dtype(dtype, [&]<class T>(T) {
      bwd_prepare_kernel<T>
          <<<grid_for(rows * 32, 256), 256, 0, stream>>>(p, reinterpret_cast<T*>(sc.d_o), sc.delta);
    });
    status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  if (tensor_cores) {
    const auto by_dim = [&]<class E>(E) {
      switch (p.D) {
        case 64:
          return launch_bwd_tc<E, 64>(p, dtype, sc, sm90, stream);
        case 128:
          return launch_bwd_tc<E, 128>(p, dtype, sc, sm90, stream);
        default:
          return launch_bwd_tc<E, 256>(p, dtype, sc, sm90, stream);
      }
    };
    return dtype == kBF16 ? by_dim(__nv_bfloat16{}) : by_dim(__half{});
  }
  by_dtype(dtype, [&]<class T>(T) { status = launch_bwd_general<T>(p, sc, stream); });
  return status;
}

}  // namespace hops::cuda
