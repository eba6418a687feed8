// attn_prefill_bwd's dK/dV on Hopper (sm_90a) for f16/bf16 with D in
// {64, 128, 256}: a CTA per key block of one key-value head walks the query
// heads of its group and their 64-row query blocks in ascending order (each dK
// and dV row has one writer and a fixed summation order: deterministic, no
// atomics). Warpgroup 0 produces (one thread issues TMA loads of K and V once
// and of Q and dO' per step, 2 stages; warps 1-2 write the step's lse and
// Delta rows to smem), warpgroups 1 and 2 consume:
//   S^T = K Q^T, dP^T = V dO'^T (wgmma, both operands K-major from smem),
//   P^T = 2^(S^T c2 - lse2), dS^T = P^T (dP^T - Delta) in registers,
//   dV += P^T dO', dK += dS^T Q (wgmma, A from registers, B MN-major).
// D = 256: dK and dV of 64 keys x 256 would need 256 accumulator registers a
// thread, so the CTA owns 64 keys and each consumer owns 128 of the columns
// of both, computing the whole S^T and dP^T itself (1.5x the MMA work, no
// exchange between warpgroups). D <= 128: the CTA owns 128 keys, 64 per
// consumer. Small grids split each group's query heads over p.dkv_splits
// CTAs that write f32 partials; dkv_reduce_kernel sums them in order.
#include "attn_common.cuh"
#include "tma_host.cuh"
#include "wgmma.cuh"

namespace hops::cuda {

namespace {

using namespace attn;
using namespace sm90;

// Tiles of 128-byte-swizzled rows in D / 64 column blocks (as the forward's).
// Some members are read only by the kernel's sm_90a body (warning 177).
#pragma nv_diag_suppress 177
template <int D>
struct DkvSm90Tile {
  static constexpr bool kSplitD = D == 256;          // consumers split D, else keys
  static constexpr int kKeys = kSplitD ? 64 : 128;   // keys per CTA
  static constexpr int kBr = 64;                     // queries per step
  static constexpr int kCols = kSplitD ? D / 2 : D;  // dK / dV columns per consumer
  static constexpr int kThreads = 384;
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static constexpr int kKBytes = kKeys * D * 2, kQBytes = kBr * D * 2;  // K or V; a Q or dO' stage
  static constexpr int kKBlock = kKeys * 128, kQBlock = kBr * 128;      // one 64-column block
  static constexpr size_t kSmem =
      1024 + 2 * size_t{kKBytes} + 4 * size_t{kQBytes} + 4 * kBr * 4 + 64;
};
#pragma nv_diag_default 177

struct DkvBarriers {
  uint64_t kv_full, full[2], empty[2];
};

// The walk: step `it` is query block qb0 + it % nqb of query head head0 + it / nqb.
struct Walk {
  int kvh, head0, qb0, nqb;
  __device__ int head(int it) const { return head0 + it / nqb; }
  __device__ int row(int it) const { return (qb0 + it % nqb) * 64; }
};

// ---- producer ------------------------------------------------------------------------

// Thread 0: K and V once, then Q and dO' of each step into stage it % 2 once
// all consumer warps released it.
template <int D>
__device__ __forceinline__ void produce_tiles(const CUtensorMap* tq, const CUtensorMap* tk,
                                              const CUtensorMap* tv, const CUtensorMap* tdo,
                                              uint8_t* sK, uint8_t* sV, uint8_t* sQ, uint8_t* sDO,
                                              DkvBarriers& bar, const Walk& w, int q_row, int k_row,
                                              int batch, int total) {
  using Tile = DkvSm90Tile<D>;
  mbar_arrive_expect_tx(&bar.kv_full, 2 * Tile::kKBytes);
#pragma unroll
  for (int cb = 0; cb < D / 64; ++cb) {
    tma_load_4d(sK + cb * Tile::kKBlock, tk, &bar.kv_full, 64 * cb, w.kvh, k_row, batch);
    tma_load_4d(sV + cb * Tile::kKBlock, tv, &bar.kv_full, 64 * cb, w.kvh, k_row, batch);
  }
  for (int it = 0; it < total; ++it) {
    const int st = it & 1, h = w.head(it), r = q_row + w.row(it);
    mbar_wait(&bar.empty[st], ((it >> 1) & 1) ^ 1);
    mbar_arrive_expect_tx(&bar.full[st], 2 * Tile::kQBytes);
#pragma unroll
    for (int cb = 0; cb < D / 64; ++cb) {
      tma_load_4d(sQ + st * Tile::kQBytes + cb * Tile::kQBlock, tq, &bar.full[st], 64 * cb, h, r,
                  batch);
      tma_load_4d(sDO + st * Tile::kQBytes + cb * Tile::kQBlock, tdo, &bar.full[st], 64 * cb, h, r,
                  batch);
    }
  }
}

// Read only by the kernel's sm_90a body (warning 177 for other targets).
#pragma nv_diag_suppress 177
// Warps 1-2 (64 threads, a query row each): the step's lse (log2 domain, +inf
// for rows without keys or past the sequence) and Delta into stage it % 2;
// each thread's arrival on the full barrier releases its own stores.
__device__ __forceinline__ void produce_rows(const AttnBwdParams& p, const SeqPair& s,
                                             const float* delta, float* sL, float* sDl,
                                             DkvBarriers& bar, const Walk& w, int r, int total) {
  for (int it = 0; it < total; ++it) {
    const int st = it & 1, h = w.head(it), i = w.row(it) + r;
    mbar_wait(&bar.empty[st], ((it >> 1) & 1) ^ 1);
    sL[st * 64 + r] = lse2_of(p, s, h, i);
    sDl[st * 64 + r] = delta_of(p, delta, s, h, i);
    mbar_arrive(&bar.full[st]);
  }
}
#pragma nv_diag_default 177

// ---- consumers -----------------------------------------------------------------------

// X^T (64 keys x 64 queries) = Y Z^T with Y = K or V (this consumer's 64
// rows at y_desc) and Z = Q or dO' (the stage at z_desc): D / 16 wgmma, one
// commit group.
template <class E, int D>
__device__ __forceinline__ void issue_t(float (&x)[8][4], uint64_t y_desc, uint64_t z_desc) {
  using Tile = DkvSm90Tile<D>;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint64_t yo = uint64_t((kk / 4) * Tile::kKBlock + (kk % 4) * 32) >> 4;
    const uint64_t zo = uint64_t((kk / 4) * Tile::kQBlock + (kk % 4) * 32) >> 4;
    wgmma_ss<E, 64>(x, y_desc + yo, z_desc + zo, kk > 0);
  }
  wgmma_commit();
}

// acc (64 x kCols) += A Z[:, cols] with A (64 x 64, registers) over 16-query
// slices of Z (2048 bytes each), Z read MN-major from its first owned column
// block at z_desc. Not committed.
template <class E, int D>
__device__ __forceinline__ void issue_acc(float (&acc)[DkvSm90Tile<D>::kCols / 8][4],
                                          const uint32_t (&a)[4][4], uint64_t z_desc) {
#pragma unroll
  for (int ks = 0; ks < 4; ++ks)
    wgmma_rs<E, DkvSm90Tile<D>::kCols>(acc, a[ks], z_desc + uint64_t(ks * 2048 >> 4), 1);
}

// Rows [first, 64) of a Q and a dO' stage set to zero: the rows past the
// sequence's queries are masked to P = 0, but they may hold another
// sequence's values or NaN, and 0 * NaN would reach dK and dV. Both consumer
// warpgroups, then a named barrier.
template <int D>
__device__ __forceinline__ void zero_q_tail(uint8_t* q_stage, uint8_t* do_stage, int first,
                                            int ctid) {
  constexpr int kPieces = D / 8;
  for (int idx = ctid; idx < (64 - first) * kPieces; idx += 256) {
    const int r = first + idx / kPieces, c = idx % kPieces;
    const int at = (c / 8) * DkvSm90Tile<D>::kQBlock + r * 128 + (c % 8) * 16;
    *reinterpret_cast<uint4*>(q_stage + at) = make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(do_stage + at) = make_uint4(0, 0, 0, 0);
  }
  fence_proxy_async();
  named_barrier_sync(1, 256);
}

template <class E, int D>
__global__ void __launch_bounds__(DkvSm90Tile<D>::kThreads, 1)
    dkv_sm90_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                    const __grid_constant__ CUtensorMap tv, const __grid_constant__ CUtensorMap tdo,
                    const AttnBwdParams p, const float* delta, float* partial) {
  // sm_90a code only; other targets carry an empty kernel that is never
  // launched (has_sm90a_code).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = DkvSm90Tile<D>;
  constexpr int kKeys = Tile::kKeys, kCols = Tile::kCols;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* sK = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  uint8_t* sV = sK + Tile::kKBytes;
  uint8_t* sQ = sV + Tile::kKBytes;                               // 2 stages
  uint8_t* sDO = sQ + 2 * Tile::kQBytes;                          // 2 stages
  float* sL = reinterpret_cast<float*>(sDO + 2 * Tile::kQBytes);  // [2][64]
  float* sDl = sL + 2 * 64;                                       // [2][64]
  DkvBarriers& bar = *reinterpret_cast<DkvBarriers*>(sDl + 2 * 64);

  const int splits = static_cast<int>(p.dkv_splits);
  const int kvh = static_cast<int>(blockIdx.x % p.Hkv);
  const int split = static_cast<int>((blockIdx.x / p.Hkv) % splits);
  const int64_t slot = blockIdx.x / (p.Hkv * splits);  // early keys (the most queries) first
  int64_t n, c;
  if (!slot_block(p.cu_k, p.N, p.Tk, kKeys, slot, n, c)) return;
  const SeqPair s = seq_pair(p.cu_q, p.cu_k, n, p.Tq, p.Tk);
  // Lengths and offsets fit in int (the host takes T < 2^31 - 256 only).
  const int Lq = static_cast<int>(s.Lq), Lk = static_cast<int>(s.Lk);
  const int j0 = static_cast<int>(c) * kKeys;
  if (j0 >= Lk) return;
  const int G = static_cast<int>(p.Hq / p.Hkv), heads = G / splits;
  const int off = Lk - Lq;  // query i sees keys j <= i + off
  const bool causal = p.causal != 0;
  const int qmin = causal ? max(0, j0 - off) : 0;
  const int nqb = qmin < Lq ? (Lq + 63) / 64 - qmin / 64 : 0;
  const Walk walk{kvh, kvh * G + split * heads, qmin / 64, nqb};
  const int total = heads * nqb;

  if (threadIdx.x == 0) {
    mbar_init(&bar.kv_full, 1);
    for (int st = 0; st < 2; ++st) {
      mbar_init(&bar.full[st], 1 + 64);  // the TMA thread and the 64 row writers
      mbar_init(&bar.empty[st], 8);      // a lane per consumer warp
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {  // producer warpgroup
    setmaxnreg_dec<Tile::kProducerRegs>();
    if (total > 0) {
      if (threadIdx.x == 0) {
        prefetch_tensor_map(&tq), prefetch_tensor_map(&tk), prefetch_tensor_map(&tv);
        prefetch_tensor_map(&tdo);
        produce_tiles<D>(&tq, &tk, &tv, &tdo, sK, sV, sQ, sDO, bar, walk, static_cast<int>(s.q0),
                         static_cast<int>(s.k0) + j0, static_cast<int>(s.row), total);
      } else if (threadIdx.x >= 32 && threadIdx.x < 96) {
        produce_rows(p, s, delta, sL, sDl, bar, walk, threadIdx.x - 32, total);
      }
    }
    return;
  }
  setmaxnreg_inc<Tile::kConsumerRegs>();
  const int ctid = threadIdx.x - 128, wg = ctid >> 7, warp = (ctid >> 5) & 3, lane = ctid & 31;
  const int krow = Tile::kSplitD ? 0 : 64 * wg;          // this consumer's first key of the block
  const int cb0 = Tile::kSplitD ? 2 * wg : 0;            // its first owned column block
  const int key0 = j0 + krow + warp * 16 + (lane >> 2);  // its keys key0, key0 + 8
  // Steps whose query block can hold a masked (i, key) pair for these keys.
  const int kmax = j0 + krow + 63;
  const float c2 = p.scale * kLog2e;

  float dk[kCols / 8][4], dv[kCols / 8][4];
#pragma unroll
  for (int j = 0; j < kCols / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[j][e] = dv[j][e] = 0.0f;
  if (total > 0) {
    const uint64_t k_desc = smem_desc(sK + krow * 128, 16, 1024);
    const uint64_t v_desc = smem_desc(sV + krow * 128, 16, 1024);
    const uint64_t q_desc = smem_desc(sQ, 16, 1024);  // K-major B of S^T
    const uint64_t do_desc = smem_desc(sDO, 16, 1024);
    const uint64_t qn_desc = smem_desc(sQ + cb0 * Tile::kQBlock, Tile::kQBlock, 1024);  // MN-major
    const uint64_t don_desc = smem_desc(sDO + cb0 * Tile::kQBlock, Tile::kQBlock, 1024);
    constexpr uint64_t kStage = Tile::kQBytes >> 4;  // descriptor units
    float sc[8][4], dp[8][4];
    uint32_t pa[4][4], da[4][4];

    // The warpgroup keeps a wgmma group queued behind the one it waits for,
    // so its elementwise work runs under wgmma: S^T issued, the previous dK
    // waited (its stage released), dP^T issued, S^T waited, P^T; dV issued,
    // dP^T waited, dS^T; dK issued, dV waited. Operand registers are reused
    // only once their wgmma completed (240 registers at D = 256). Each wait
    // follows its issue in the same iteration: ptxas serializes the wgmma
    // (C7514) when accumulators issued in a previous iteration are read.
    mbar_wait(&bar.kv_full, 0);
    for (int it = 0; it < total; ++it) {
      const int st = it & 1, i0 = walk.row(it);
      mbar_wait(&bar.full[st], (it >> 1) & 1);
      if (i0 + 64 > Lq) {
        zero_q_tail<D>(sQ + st * Tile::kQBytes, sDO + st * Tile::kQBytes, Lq - i0, ctid);
      }
      // The wgmma operands are read-write: zeros end the old values' lives
      // (else they stay live across the loop and the registers run out).
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[j][e] = dp[j][e] = 0.0f;
      fence_operand(sc), fence_operand(dp);
      wgmma_fence();
      issue_t<E, D>(sc, k_desc, q_desc + st * kStage);
      wgmma_wait<1>();  // the previous step's dK: da and its stage are free
      if (it > 0 && lane == 0) mbar_arrive(&bar.empty[st ^ 1]);
      issue_t<E, D>(dp, v_desc, do_desc + st * kStage);
      wgmma_wait<1>();  // S^T
      fence_operand(sc);
      const bool masked = i0 + 64 > Lq || (causal && kmax > i0 + off);
      const float* l2 = sL + st * 64 + 2 * (lane & 3);
      const float* dl = sDl + st * 64 + 2 * (lane & 3);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float2 l = *reinterpret_cast<const float2*>(l2 + 8 * j);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float pr = ex2(fmaf(sc[j][e], c2, -((e & 1) ? l.y : l.x)));
          if (masked) {
            const int i = i0 + 8 * j + 2 * (lane & 3) + (e & 1), key = key0 + 8 * (e >> 1);
            if (i >= Lq || (causal && key > i + off)) pr = 0.0f;
          }
          sc[j][e] = pr;
        }
      }
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) acc_to_a<E>(pa[ks], sc[2 * ks], sc[2 * ks + 1]);
      fence_operand(dv);
      wgmma_fence();
      issue_acc<E, D>(dv, pa, don_desc + st * kStage);
      wgmma_commit();
      wgmma_wait<1>();  // dP^T
      fence_operand(dp);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float2 d = *reinterpret_cast<const float2*>(dl + 8 * j);
        dp[j][0] = sc[j][0] * (dp[j][0] - d.x), dp[j][1] = sc[j][1] * (dp[j][1] - d.y);
        dp[j][2] = sc[j][2] * (dp[j][2] - d.x), dp[j][3] = sc[j][3] * (dp[j][3] - d.y);
      }
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) acc_to_a<E>(da[ks], dp[2 * ks], dp[2 * ks + 1]);
      fence_operand(dk);
      wgmma_fence();
      issue_acc<E, D>(dk, da, qn_desc + st * kStage);
      wgmma_commit();
      wgmma_wait<1>();  // dV: pa is free
      fence_operand(dv);
    }
    wgmma_wait<0>();
    fence_operand(dk), fence_operand(dv);
  }

  if (splits > 1) {  // f32 partials [split][B][Tk][Hkv][D], dK's then dV's
    const int64_t plane = p.B * p.Tk * p.Hkv * D;
    float* pk = partial + split * plane + ((s.row * p.Tk + s.k0) * p.Hkv + kvh) * D + cb0 * 64;
    float* pv = pk + splits * plane;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = key0 + 8 * r;
      if (key >= Lk) continue;
#pragma unroll
      for (int d = 0; d < kCols / 8; ++d) {
        const int64_t at = key * p.Hkv * D + 8 * d + 2 * (lane & 3);
        *reinterpret_cast<float2*>(pk + at) =
            make_float2(dk[d][2 * r] * p.scale, dk[d][2 * r + 1] * p.scale);
        *reinterpret_cast<float2*>(pv + at) = make_float2(dv[d][2 * r], dv[d][2 * r + 1]);
      }
    }
    return;
  }
  E* dk_out = reinterpret_cast<E*>(p.dk.data) + at3(p.dk, s.row, s.k0, kvh) + cb0 * 64;
  E* dv_out = reinterpret_cast<E*>(p.dv.data) + at3(p.dv, s.row, s.k0, kvh) + cb0 * 64;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key0 + 8 * r;
    if (key >= Lk) continue;
#pragma unroll
    for (int d = 0; d < kCols / 8; ++d) {
      const int col = 8 * d + 2 * (lane & 3);
      st_pair(dk_out + key * p.dk.stride[1] + col, dk[d][2 * r] * p.scale,
              dk[d][2 * r + 1] * p.scale);
      st_pair(dv_out + key * p.dv.stride[1] + col, dv[d][2 * r], dv[d][2 * r + 1]);
    }
  }
#endif
}

// dK and dV of one key block of one kv head (the dK/dV grid without splits):
// the partials of its p.dkv_splits CTAs summed in split order.
template <class E>
__global__ void __launch_bounds__(256)
    dkv_reduce_kernel(const AttnBwdParams p, const float* partial, int keys_per_block) {
  const int64_t kvh = blockIdx.x % p.Hkv, slot = blockIdx.x / p.Hkv;
  int64_t n, c;
  if (!slot_block(p.cu_k, p.N, p.Tk, keys_per_block, slot, n, c)) return;
  const SeqPair s = seq_pair(p.cu_q, p.cu_k, n, p.Tq, p.Tk);
  const int64_t j0 = c * keys_per_block;
  if (j0 >= s.Lk) return;
  const int64_t D = p.D, keys = min(int64_t{keys_per_block}, s.Lk - j0);
  const int64_t plane = p.B * p.Tk * p.Hkv * D, splits = p.dkv_splits;
  E* dk = reinterpret_cast<E*>(p.dk.data) + at3(p.dk, s.row, s.k0 + j0, kvh);
  E* dv = reinterpret_cast<E*>(p.dv.data) + at3(p.dv, s.row, s.k0 + j0, kvh);
  const float* src = partial + ((s.row * p.Tk + s.k0 + j0) * p.Hkv + kvh) * D;
  for (int64_t idx = threadIdx.x; idx < keys * D / 2; idx += 256) {
    const int64_t key = idx / (D / 2), col = 2 * (idx % (D / 2));
    const float* at = src + key * p.Hkv * D + col;
    float2 a = make_float2(0.0f, 0.0f), b = a;
    for (int64_t sp = 0; sp < splits; ++sp) {
      const float2 x = *reinterpret_cast<const float2*>(at + sp * plane);
      const float2 y = *reinterpret_cast<const float2*>(at + (splits + sp) * plane);
      a.x += x.x, a.y += x.y, b.x += y.x, b.y += y.y;
    }
    st_pair(dk + key * p.dk.stride[1] + col, a.x, a.y);
    st_pair(dv + key * p.dv.stride[1] + col, b.x, b.y);
  }
}

// ---- host ------------------------------------------------------------------------------

bool dkv_sm90a_code() {
  static const bool sm90a =
      has_sm90a_code(reinterpret_cast<const void*>(dkv_sm90_kernel<__nv_bfloat16, 64>));
  return sm90a;
}

template <class E, int D>
cudaError_t dkv_sm90(const AttnBwdParams& p, int dtype, const void* d_o, const float* delta,
                     float* partial, bool launch, cudaStream_t stream) {
  using Tile = DkvSm90Tile<D>;
  if (p.Tk == 0) return cudaSuccess;  // no key: nothing to write
  const EncodeTiled encode = encode_tiled();
  // dO' (scratch, [B, Tq, Hq, D] contiguous). Without queries nothing of Q
  // and dO' is loaded, but their maps need a mapped address: describe k there.
  Arg dy = p.q;
  dy.data = static_cast<char*>(const_cast<void*>(d_o));
  dy.stride[3] = 1, dy.stride[2] = p.D, dy.stride[1] = p.Hq * p.D, dy.stride[0] = p.Tq * p.Hq * p.D;
  const Arg& q = p.Tq > 0 ? p.q : p.k;
  const Arg& dq = p.Tq > 0 ? dy : p.k;
  CUtensorMap tq, tk, tv, tdo;
  if (!encode || !tensor_map(tq, encode, q, dtype, Tile::kBr) ||
      !tensor_map(tdo, encode, dq, dtype, Tile::kBr) ||
      !tensor_map(tk, encode, p.k, dtype, Tile::kKeys) ||
      !tensor_map(tv, encode, p.v, dtype, Tile::kKeys))
    return cudaErrorNotSupported;
  // The smem opt-in is part of the probe: a device with less refuses here,
  // before anything is launched.
  cudaError_t status = allow_smem(dkv_sm90_kernel<E, D>, Tile::kSmem);
  if (status != cudaSuccess || !launch) return status;
  const int64_t slots = block_slots(p.N, p.Tk, Tile::kKeys, p.cu_k.data != nullptr);
  if (slots * p.Hkv == 0) return cudaSuccess;
  dkv_sm90_kernel<E, D><<<static_cast<unsigned>(slots * p.Hkv * p.dkv_splits), Tile::kThreads,
                          Tile::kSmem, stream>>>(tq, tk, tv, tdo, p, delta, partial);
  status = cudaGetLastError();
  if (status != cudaSuccess || p.dkv_splits == 1) return status;
  dkv_reduce_kernel<E>
      <<<static_cast<unsigned>(slots * p.Hkv), 256, 0, stream>>>(p, partial, Tile::kKeys);
  return cudaGetLastError();
}

}  // namespace

int64_t attn_dkv_sm90_splits(const AttnBwdParams& p, int sms) {
  // No partials (scratch) where the kernel cannot run.
  bool hopper = false;
  if (hopper_device(hopper) != cudaSuccess || !hopper || !dkv_sm90a_code()) {
    (void)cudaGetLastError();  // not sticky; leave no error for later launches to report
    return 1;
  }
  const int64_t keys = p.D == 256 ? DkvSm90Tile<256>::kKeys : DkvSm90Tile<128>::kKeys;
  const int64_t blocks = block_slots(p.N, p.Tk, keys, p.cu_k.data != nullptr) * p.Hkv;
  const int64_t G = p.Hkv > 0 ? p.Hq / p.Hkv : 1;
  int64_t splits = 1;
  while (G % (2 * splits) == 0 && blocks * splits < 2 * int64_t{sms}) splits *= 2;
  return splits;
}

cudaError_t attn_dkv_sm90(const AttnBwdParams& p, int dtype, const void* d_o, const float* delta,
                          float* partial, bool launch, cudaStream_t stream) {
  // What the kernel assumes: a compute capability 9.0 device (sm_90a code),
  // 16-bit storage with unit-stride 16-byte-aligned rows (the caller's
  // tensor-core check), D in {64, 128, 256}, token counts that keep TMA
  // coordinates and block ends inside int.
  constexpr int64_t kMaxT = (int64_t{1} << 31) - 256;
  if ((dtype != kBF16 && dtype != kF16) || (p.D != 64 && p.D != 128 && p.D != 256) ||
      p.Tq >= kMaxT || p.Tk >= kMaxT || p.Hq >= kMaxT || p.B >= kMaxT)
    return cudaErrorNotSupported;
  bool hopper = false;
  const cudaError_t status = hopper_device(hopper);
  if (status != cudaSuccess) return status;
  if (!hopper || !dkv_sm90a_code()) return cudaErrorNotSupported;
  const auto by_dim = [&]<class E>(E) {
    switch (p.D) {
      case 64:
        return dkv_sm90<E, 64>(p, dtype, d_o, delta, partial, launch, stream);
      case 128:
        return dkv_sm90<E, 128>(p, dtype, d_o, delta, partial, launch, stream);
      default:
        return dkv_sm90<E, 256>(p, dtype, d_o, delta, partial, launch, stream);
    }
  };
  return dtype == kBF16 ? by_dim(__nv_bfloat16{}) : by_dim(__half{});
}

}  // namespace hops::cuda
