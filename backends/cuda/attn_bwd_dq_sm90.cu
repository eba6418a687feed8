// attn_prefill_bwd's dQ on Hopper (sm_90a) for f16/bf16 with D in
// {64, 128, 256}, shaped like the forward (attn_prefill_sm90.cu): a CTA owns
// 128 query rows of one query head and walks its key tiles of 64 in
// ascending order (one writer per dQ row, a fixed order: deterministic).
// Warpgroup 0 produces (one thread: TMA loads of Q and dO' once, then K and V
// of each tile, K in 2 stages, V in 1 at D = 256 (Q and dO' take 128 KB of
// smem) and 2 below); warpgroups 1 and 2 own 64 rows each: S = Q K^T,
// dP = dO' V^T (wgmma, both operands K-major from smem), P = 2^(S c2 - lse2),
// dS = P (dP - Delta) in registers, dQ += dS K (wgmma, dS from registers, K
// read MN-major). A V stage is free once dP completed, a K stage once dQ did.
#include "attn_common.cuh"
#include "tma_host.cuh"
#include "wgmma.cuh"

namespace hops::cuda {

namespace {

using namespace attn;
using namespace sm90;

// Some members are read only by the kernel's sm_90a body (warning 177).
#pragma nv_diag_suppress 177
template <int D>
struct DqSm90Tile {
  static constexpr int kBr = 128, kBc = 64;
  static constexpr int kKStages = 2, kVStages = D == 256 ? 1 : 2;
  static constexpr int kThreads = 384;
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static constexpr int kQBytes = kBr * D * 2, kKVBytes = kBc * D * 2;  // Q or dO'; a K or V stage
  static constexpr int kQBlock = kBr * 128, kKVBlock = kBc * 128;      // one 64-column block
  static constexpr size_t kSmem =
      1024 + 2 * size_t{kQBytes} + (kKStages + kVStages) * size_t{kKVBytes} + 128;
};
#pragma nv_diag_default 177

struct DqBarriers {
  uint64_t q_full, k_full[2], k_empty[2], v_full[2], v_empty[2];
};

// Tile t's stage in a ring of kStages, and the parity of its use of it.
template <int kStages>
__device__ __forceinline__ int stage_of(int t) {
  return t % kStages;
}
template <int kStages>
__device__ __forceinline__ uint32_t parity_of(int t) {
  return (t / kStages) & 1;
}

// One thread: Q and dO' once, then K and V of each tile (the order the
// consumers release stages in), each once its stage's previous tile is done.
template <int D>
__device__ __forceinline__ void produce(const CUtensorMap* tq, const CUtensorMap* tdo,
                                        const CUtensorMap* tk, const CUtensorMap* tv, uint8_t* sQ,
                                        uint8_t* sDO, uint8_t* sK, uint8_t* sV, DqBarriers& bar,
                                        int head, int kvh, int q_row, int k_row, int batch,
                                        int ntiles) {
  using Tile = DqSm90Tile<D>;
  mbar_arrive_expect_tx(&bar.q_full, 2 * Tile::kQBytes);
#pragma unroll
  for (int cb = 0; cb < D / 64; ++cb) {
    tma_load_4d(sQ + cb * Tile::kQBlock, tq, &bar.q_full, 64 * cb, head, q_row, batch);
    tma_load_4d(sDO + cb * Tile::kQBlock, tdo, &bar.q_full, 64 * cb, head, q_row, batch);
  }
  const auto load = [&](const CUtensorMap* map, uint8_t* dst, uint64_t* full, uint64_t* empty,
                        int st, uint32_t parity, int t) {
    mbar_wait(&empty[st], parity ^ 1);
    mbar_arrive_expect_tx(&full[st], Tile::kKVBytes);
#pragma unroll
    for (int cb = 0; cb < D / 64; ++cb)
      tma_load_4d(dst + st * Tile::kKVBytes + cb * Tile::kKVBlock, map, &full[st], 64 * cb, kvh,
                  k_row + t * Tile::kBc, batch);
  };
  for (int t = 0; t < ntiles; ++t) {
    load(tk, sK, bar.k_full, bar.k_empty, stage_of<Tile::kKStages>(t), parity_of<Tile::kKStages>(t),
         t);
    load(tv, sV, bar.v_full, bar.v_empty, stage_of<Tile::kVStages>(t), parity_of<Tile::kVStages>(t),
         t);
  }
}

// X (64 x 64) = Y Z^T, Y = Q or dO' (this consumer's rows at y_desc), Z = K or
// V (the stage at z_desc): D / 16 wgmma, one commit group.
template <class E, int D>
__device__ __forceinline__ void issue_qk(float (&x)[8][4], uint64_t y_desc, uint64_t z_desc) {
  using Tile = DqSm90Tile<D>;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint64_t yo = uint64_t((kk / 4) * Tile::kQBlock + (kk % 4) * 32) >> 4;
    const uint64_t zo = uint64_t((kk / 4) * Tile::kKVBlock + (kk % 4) * 32) >> 4;
    wgmma_ss<E, 64>(x, y_desc + yo, z_desc + zo, kk > 0);
  }
  wgmma_commit();
}

// Rows [first, 64) of a K stage set to zero: dS is 0 for keys past the
// sequence, but their K rows may hold another sequence's values or NaN, and
// 0 * NaN would reach dQ. Both consumer warpgroups, then a named barrier.
template <int D>
__device__ __forceinline__ void zero_k_tail(uint8_t* stage, int first, int ctid) {
  constexpr int kPieces = D / 8;
  for (int idx = ctid; idx < (64 - first) * kPieces; idx += 256) {
    const int r = first + idx / kPieces, c = idx % kPieces;
    *reinterpret_cast<uint4*>(stage + (c / 8) * DqSm90Tile<D>::kKVBlock + r * 128 + (c % 8) * 16) =
        make_uint4(0, 0, 0, 0);
  }
  fence_proxy_async();
  named_barrier_sync(1, 256);
}

template <class E, int D>
__global__ void __launch_bounds__(DqSm90Tile<D>::kThreads, 1)
    dq_sm90_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tdo,
                   const __grid_constant__ CUtensorMap tk, const __grid_constant__ CUtensorMap tv,
                   const AttnBwdParams p, const float* delta, int64_t slots) {
  // sm_90a code only; other targets carry an empty kernel that is never
  // launched (has_sm90a_code).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = DqSm90Tile<D>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* sQ = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  uint8_t* sDO = sQ + Tile::kQBytes;
  uint8_t* sK = sDO + Tile::kQBytes;  // kKStages stages
  uint8_t* sV = sK + Tile::kKStages * Tile::kKVBytes;
  DqBarriers& bar = *reinterpret_cast<DqBarriers*>(sV + Tile::kVStages * Tile::kKVBytes);

  const int head = static_cast<int>(blockIdx.x % p.Hq);
  const int64_t slot = slots - 1 - blockIdx.x / p.Hq;  // the longest causal blocks first
  int64_t n, c;
  if (!slot_block(p.cu_q, p.N, p.Tq, kBr, slot, n, c)) return;
  const SeqPair s = seq_pair(p.cu_q, p.cu_k, n, p.Tq, p.Tk);
  // Lengths and offsets fit in int (the host takes T < 2^31 - 256 only).
  const int Lq = static_cast<int>(s.Lq), Lk = static_cast<int>(s.Lk);
  const int m0 = static_cast<int>(c) * kBr;
  if (m0 >= Lq) return;
  const int kvh = head / static_cast<int>(p.Hq / p.Hkv);
  const int off = Lk - Lq;  // query i sees keys j <= i + off
  const bool causal = p.causal != 0;
  int kend = Lk;
  if (causal) kend = min(kend, min(m0 + kBr, Lq) + off);
  const int ntiles = kend > 0 ? (kend + kBc - 1) / kBc : 0;

  if (threadIdx.x == 0) {
    mbar_init(&bar.q_full, 1);
    for (int st = 0; st < 2; ++st) {
      mbar_init(&bar.k_full[st], 1), mbar_init(&bar.v_full[st], 1);
      mbar_init(&bar.k_empty[st], 8), mbar_init(&bar.v_empty[st], 8);  // a lane per consumer warp
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {  // producer warpgroup
    setmaxnreg_dec<Tile::kProducerRegs>();
    if (threadIdx.x == 0 && ntiles > 0) {
      prefetch_tensor_map(&tq), prefetch_tensor_map(&tdo);
      prefetch_tensor_map(&tk), prefetch_tensor_map(&tv);
      produce<D>(&tq, &tdo, &tk, &tv, sQ, sDO, sK, sV, bar, head, kvh, static_cast<int>(s.q0) + m0,
                 static_cast<int>(s.k0), static_cast<int>(s.row), ntiles);
    }
    return;
  }
  setmaxnreg_inc<Tile::kConsumerRegs>();
  const int ctid = threadIdx.x - 128, wg = ctid >> 7, warp = (ctid >> 5) & 3, lane = ctid & 31;
  const int row0 = m0 + wg * 64 + warp * 16 + (lane >> 2);  // this thread's rows row0, row0 + 8
  // Tiles [0, n_full) hold no masked score for this warpgroup's rows.
  int n_full = Lk / kBc;
  if (causal) {
    const int lim = m0 + wg * 64 + off + 1;
    n_full = min(n_full, lim > 0 ? lim / kBc : 0);
  }
  const float c2 = p.scale * kLog2e;
  const float lse2[2] = {lse2_of(p, s, head, row0), lse2_of(p, s, head, row0 + 8)};
  const float dl[2] = {delta_of(p, delta, s, head, row0), delta_of(p, delta, s, head, row0 + 8)};

  float dq[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;
  if (ntiles > 0) {
    const uint64_t q_desc = smem_desc(sQ + wg * 64 * 128, 16, 1024);
    const uint64_t do_desc = smem_desc(sDO + wg * 64 * 128, 16, 1024);
    const uint64_t k_desc = smem_desc(sK, 16, 1024);               // K-major B of S
    const uint64_t v_desc = smem_desc(sV, 16, 1024);               // K-major B of dP
    const uint64_t kn_desc = smem_desc(sK, Tile::kKVBlock, 1024);  // MN-major B of dQ
    constexpr uint64_t kStage = Tile::kKVBytes >> 4;               // descriptor units
    float sc[8][4], dp[8][4];
    uint32_t da[4][4];
    // Per tile: S issued, the previous dQ waited (its K stage released), dP
    // issued, S waited, P; dP waited (its V stage released), dS, dQ issued.
    // Each wait follows its issue in the same iteration (see attn_bwd_sm90.cu).
    mbar_wait(&bar.q_full, 0);
    for (int t = 0; t < ntiles; ++t) {
      const int sk = stage_of<Tile::kKStages>(t), sv = stage_of<Tile::kVStages>(t);
      mbar_wait(&bar.k_full[sk], parity_of<Tile::kKStages>(t));
      const int tail = Lk - t * kBc;
      if (tail < kBc) {
        zero_k_tail<D>(sK + sk * Tile::kKVBytes, tail, ctid);
      }
      // The wgmma operands are read-write: zeros end the old values' lives.
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[j][e] = dp[j][e] = 0.0f;
      fence_operand(sc), fence_operand(dp);
      wgmma_fence();
      issue_qk<E, D>(sc, q_desc, k_desc + sk * kStage);
      wgmma_wait<1>();  // the previous tile's dQ: da and its K stage are free
      if (t > 0 && lane == 0) mbar_arrive(&bar.k_empty[stage_of<Tile::kKStages>(t - 1)]);
      mbar_wait(&bar.v_full[sv], parity_of<Tile::kVStages>(t));
      fence_operand(dp);
      wgmma_fence();  // else ptxas adds one (C7519) after the wait's loop
      issue_qk<E, D>(dp, do_desc, v_desc + sv * kStage);
      wgmma_wait<1>();  // S
      fence_operand(sc);
      const bool masked = t >= n_full;
      const int key0 = t * kBc + 2 * (lane & 3);
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = e >> 1;
          float pr = ex2(fmaf(sc[j][e], c2, -lse2[r]));
          if (masked) {
            const int key = key0 + 8 * j + (e & 1);
            if (key >= Lk || (causal && key > row0 + 8 * r + off)) pr = -1.0f;  // mark: dS = 0
          }
          sc[j][e] = pr;
        }
      wgmma_wait<0>();  // dP
      if (lane == 0) mbar_arrive(&bar.v_empty[sv]);
      fence_operand(dp);
      // dS by select: masked keys' dP may be NaN (V rows past the sequence)
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          dp[j][e] = sc[j][e] < 0.0f ? 0.0f : sc[j][e] * (dp[j][e] - dl[e >> 1]);
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) acc_to_a<E>(da[ks], dp[2 * ks], dp[2 * ks + 1]);
      fence_operand(dq);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        wgmma_rs<E, D>(dq, da[ks], kn_desc + sk * kStage + uint64_t(ks * 2048 >> 4), 1);
      wgmma_commit();
    }
    wgmma_wait<0>();
    fence_operand(dq);
  }

  E* out = reinterpret_cast<E*>(p.dq.data) + at3(p.dq, s.row, s.q0, head);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row0 + 8 * r;
    if (i >= Lq) continue;
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      st_pair(out + i * p.dq.stride[1] + 8 * j + 2 * (lane & 3), dq[j][2 * r] * p.scale,
              dq[j][2 * r + 1] * p.scale);
  }
#endif
}

// ---- host ------------------------------------------------------------------------------

bool dq_sm90a_code() {
  static const bool sm90a =
      has_sm90a_code(reinterpret_cast<const void*>(dq_sm90_kernel<__nv_bfloat16, 64>));
  return sm90a;
}

template <class E, int D>
cudaError_t dq_sm90(const AttnBwdParams& p, int dtype, const void* d_o, const float* delta,
                    bool launch, cudaStream_t stream) {
  using Tile = DqSm90Tile<D>;
  if (p.Tq == 0) return cudaSuccess;  // no query: nothing to write
  const EncodeTiled encode = encode_tiled();
  // dO' (scratch, [B, Tq, Hq, D] contiguous). Without keys nothing of K and V
  // is loaded, but their maps need a mapped address: describe q there.
  Arg dy = p.q;
  dy.data = static_cast<char*>(const_cast<void*>(d_o));
  dy.stride[3] = 1, dy.stride[2] = p.D, dy.stride[1] = p.Hq * p.D, dy.stride[0] = p.Tq * p.Hq * p.D;
  const Arg& k = p.Tk > 0 ? p.k : p.q;
  const Arg& v = p.Tk > 0 ? p.v : p.q;
  CUtensorMap tq, tdo, tk, tv;
  if (!encode || !tensor_map(tq, encode, p.q, dtype, Tile::kBr) ||
      !tensor_map(tdo, encode, dy, dtype, Tile::kBr) ||
      !tensor_map(tk, encode, k, dtype, Tile::kBc) || !tensor_map(tv, encode, v, dtype, Tile::kBc))
    return cudaErrorNotSupported;
  // The smem opt-in is part of the probe (see attn_bwd_sm90.cu).
  const cudaError_t status = allow_smem(dq_sm90_kernel<E, D>, Tile::kSmem);
  if (status != cudaSuccess || !launch) return status;
  const int64_t slots = block_slots(p.N, p.Tq, Tile::kBr, p.cu_q.data != nullptr);
  if (slots * p.Hq == 0) return cudaSuccess;
  dq_sm90_kernel<E, D>
      <<<static_cast<unsigned>(slots * p.Hq), Tile::kThreads, Tile::kSmem, stream>>>(
          tq, tdo, tk, tv, p, delta, slots);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attn_dq_sm90(const AttnBwdParams& p, int dtype, const void* d_o, const float* delta,
                         bool launch, cudaStream_t stream) {
  // The same assumptions as attn_dkv_sm90 (attn_bwd_sm90.cu).
  constexpr int64_t kMaxT = (int64_t{1} << 31) - 256;
  if ((dtype != kBF16 && dtype != kF16) || (p.D != 64 && p.D != 128 && p.D != 256) ||
      p.Tq >= kMaxT || p.Tk >= kMaxT || p.Hq >= kMaxT || p.B >= kMaxT)
    return cudaErrorNotSupported;
  bool hopper = false;
  const cudaError_t status = hopper_device(hopper);
  if (status != cudaSuccess) return status;
  if (!hopper || !dq_sm90a_code()) return cudaErrorNotSupported;
  const auto by_dim = [&]<class E>(E) {
    switch (p.D) {
      case 64:
        return dq_sm90<E, 64>(p, dtype, d_o, delta, launch, stream);
      case 128:
        return dq_sm90<E, 128>(p, dtype, d_o, delta, launch, stream);
      default:
        return dq_sm90<E, 256>(p, dtype, d_o, delta, launch, stream);
    }
  };
  return dtype == kBF16 ? by_dim(__nv_bfloat16{}) : by_dim(__half{});
}

}  // namespace hops::cuda
