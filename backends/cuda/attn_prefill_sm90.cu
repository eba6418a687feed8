// attn_prefill on Hopper (sm_90a) for f16/bf16 with D in {64, 128, 256}:
// flash-attention-3 style warp specialization. A CTA of three warpgroups owns
// 128 query rows of one query head: warpgroup 0 is the producer (one thread
// issues TMA tile loads of Q, K and V completing on mbarriers, 2 stages per K
// and V), warpgroups 1 and 2 each own 64 of the rows and compute S = Q K^T
// (wgmma, both operands from 128-byte-swizzled smem) and O += P V (wgmma, P
// from registers, V read N-major). Within a warpgroup the next tile's Q K^T
// runs while the previous tile's P V is in flight and the softmax is computed.
// Key tiles are walked from the last (the causal diagonal and the sequence
// end, masked) to the first. Numerics as the mma.sync kernel (attn_prefill.cu):
// f32 accumulation, online softmax in the log2 domain, rows without a visible
// key get o = 0 and lse = -inf, the gate applied in the epilogue.
#include "attn_common.cuh"
#include "tma_host.cuh"
#include "wgmma.cuh"

namespace hops::cuda {

namespace {

using namespace attn;
using namespace sm90;

// Tiles as FA3 chose them for 16-bit inputs: 128 x 80 at D = 256 (the smem
// limit: Q 64 KB + 2 stages of K and V 160 KB), 128 x 128 below. Rows of a
// tile are stored as D / 64 column blocks of 128-byte rows (TMA's 128-byte
// swizzle), each block 1024-byte aligned.
// Some members are read only by the kernel's sm_90a body: compiled for other
// targets they are unused, which is expected (warning 177).
#pragma nv_diag_suppress 177
template <int D>
struct Sm90Tile {
  static constexpr int kBr = 128, kBc = D == 256 ? 80 : 128;
  static constexpr int kThreads = 384;  // producer + 2 consumer warpgroups
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;
  static constexpr int kQBytes = kBr * D * 2, kKVBytes = kBc * D * 2;  // Q; one stage of K or V
  static constexpr int kQBlock = kBr * 128, kKVBlock = kBc * 128;      // one 64-column block
  static constexpr size_t kSmem = 1024 + kQBytes + 4 * size_t{kKVBytes} + 128;
};
#pragma nv_diag_default 177

struct Barriers {
  uint64_t q_full, k_full[2], v_full[2], k_empty[2], v_empty[2];
};

// ---- producer ------------------------------------------------------------------------

// One thread: Q once, then K of tile i before V of tile i - 1 (the order the
// consumers need them), each into stage i % 2 once both consumers released it.
template <int D>
__device__ __forceinline__ void produce(const CUtensorMap* tq, const CUtensorMap* tk,
                                        const CUtensorMap* tv, uint8_t* sQ, uint8_t* sK,
                                        uint8_t* sV, Barriers& bar, int head, int kvh, int q_row,
                                        int k_row, int batch, int ntiles) {
  using Tile = Sm90Tile<D>;
  constexpr int kBc = Tile::kBc;
  mbar_arrive_expect_tx(&bar.q_full, Tile::kQBytes);
#pragma unroll
  for (int cb = 0; cb < D / 64; ++cb)
    tma_load_4d(sQ + cb * Tile::kQBlock, tq, &bar.q_full, 64 * cb, head, q_row, batch);
  const auto load = [&](const CUtensorMap* map, uint8_t* dst, uint64_t* full, uint64_t* empty,
                        int i) {
    const int st = i & 1, tile = ntiles - 1 - i;
    mbar_wait(&empty[st], ((i >> 1) & 1) ^ 1);
    mbar_arrive_expect_tx(&full[st], Tile::kKVBytes);
#pragma unroll
    for (int cb = 0; cb < D / 64; ++cb)
      tma_load_4d(dst + st * Tile::kKVBytes + cb * Tile::kKVBlock, map, &full[st], 64 * cb, kvh,
                  k_row + tile * kBc, batch);
  };
  for (int i = 0; i < ntiles; ++i) {
    load(tk, sK, bar.k_full, bar.k_empty, i);
    if (i > 0) load(tv, sV, bar.v_full, bar.v_empty, i - 1);
  }
  load(tv, sV, bar.v_full, bar.v_empty, ntiles - 1);
}

// ---- consumers -----------------------------------------------------------------------

// S (64 x kBc) = Q K^T for this warpgroup's 64 rows: D / 16 wgmma, committed
// as one group. q_desc / k_desc address column block 0 of the rows.
template <class E, int D>
__device__ __forceinline__ void issue_qk(float (&sc)[Sm90Tile<D>::kBc / 8][4], uint64_t q_desc,
                                         uint64_t k_desc) {
  using Tile = Sm90Tile<D>;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint64_t qo = uint64_t((kk / 4) * Tile::kQBlock + (kk % 4) * 32) >> 4;
    const uint64_t ko = uint64_t((kk / 4) * Tile::kKVBlock + (kk % 4) * 32) >> 4;
    wgmma_ss<E, Tile::kBc>(sc, q_desc + qo, k_desc + ko, kk > 0);
  }
  wgmma_commit();
}

// O (64 x D) += P V: kBc / 16 wgmma over 16-key slices of V (2048 bytes each).
template <class E, int D>
__device__ __forceinline__ void issue_pv(float (&o)[D / 8][4],
                                         const uint32_t (&pa)[Sm90Tile<D>::kBc / 16][4],
                                         uint64_t v_desc) {
#pragma unroll
  for (int ks = 0; ks < Sm90Tile<D>::kBc / 16; ++ks)
    wgmma_rs<E, D>(o, pa[ks], v_desc + uint64_t(ks * 2048 >> 4), 1);
  wgmma_commit();
}

// Online softmax of one tile for this thread's rows row0 and row0 + 8:
// scores become probabilities 2^(s c2 - m) in place; alpha rescales the
// previous o and l. kMasked: keys past the sequence or the causal diagonal
// get -inf (key0: the thread's first key column; keys key0 + 8j + {0, 1}).
template <int kN, bool kMasked>
__device__ __forceinline__ void online_softmax(float (&sc)[kN][4], float (&m)[2], float (&l)[2],
                                               float (&alpha)[2], float c2, int key0, int row0,
                                               int Lk, int off, bool causal) {
  if constexpr (kMasked) {
#pragma unroll
    for (int j = 0; j < kN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + 8 * j + (e & 1), row = row0 + 8 * (e >> 1);
        if (key >= Lk || (causal && key > row + off)) sc[j][e] = -INFINITY;
      }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kN; ++j) mx = fmaxf(mx, fmaxf(sc[j][2 * r], sc[j][2 * r + 1]));
    const float m_new = fmaxf(m[r], quad_max(mx) * c2);    // c2 > 0 (the host checks the scale)
    const float base = m_new == -INFINITY ? 0.0f : m_new;  // no key yet: keep zeros
    alpha[r] = ex2(m[r] - base);
    m[r] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      sc[j][2 * r] = ex2(fmaf(sc[j][2 * r], c2, -base));
      sc[j][2 * r + 1] = ex2(fmaf(sc[j][2 * r + 1], c2, -base));
      sum += sc[j][2 * r] + sc[j][2 * r + 1];
    }
    l[r] = l[r] * alpha[r] + sum;
  }
}

// Probabilities (accumulator layout) as the A operand of P V: 16-key slices.
template <class E, int kN>
__device__ __forceinline__ void probs_to_a(uint32_t (&pa)[kN / 2][4], const float (&sc)[kN][4]) {
#pragma unroll
  for (int ks = 0; ks < kN / 2; ++ks) acc_to_a<E>(pa[ks], sc[2 * ks], sc[2 * ks + 1]);
}

// Rows [first, kBc) of a V stage set to zero (every 16-byte piece of those
// rows, whatever the swizzle put where): keys past the sequence are masked to
// P = 0, but their V rows may hold another sequence's values or NaN, and
// 0 * NaN would reach O. Both consumer warpgroups, then a named barrier.
template <int D>
__device__ __forceinline__ void zero_v_tail(uint8_t* stage, int first, int ctid) {
  constexpr int kBc = Sm90Tile<D>::kBc, kPieces = D / 8;
  for (int idx = ctid; idx < (kBc - first) * kPieces; idx += 256) {
    const int r = first + idx / kPieces, c = idx % kPieces;
    *reinterpret_cast<uint4*>(stage + (c / 8) * Sm90Tile<D>::kKVBlock + r * 128 + (c % 8) * 16) =
        make_uint4(0, 0, 0, 0);
  }
  fence_proxy_async();
  named_barrier_sync(1, 256);
}

template <class E, int D>
__global__ void __launch_bounds__(Sm90Tile<D>::kThreads, 1)
    fwd_sm90_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                    const __grid_constant__ CUtensorMap tv, const AttnFwdParams p, int64_t slots) {
  // wgmma, TMA and mbarrier waits exist in sm_90a code only; a module built
  // for other targets carries an empty kernel that launch_attn_prefill_sm90
  // never launches (sm90a_code).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = Sm90Tile<D>;
  constexpr int kBr = Tile::kBr, kBc = Tile::kBc;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* sQ = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  uint8_t* sK = sQ + Tile::kQBytes;  // 2 stages
  uint8_t* sV = sK + 2 * Tile::kKVBytes;
  Barriers& bar = *reinterpret_cast<Barriers*>(sV + 2 * Tile::kKVBytes);

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
      prefetch_tensor_map(&tq), prefetch_tensor_map(&tk), prefetch_tensor_map(&tv);
      produce<D>(&tq, &tk, &tv, sQ, sK, sV, bar, head, kvh, static_cast<int>(s.q0) + m0,
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

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  if (ntiles > 0) {
    const uint64_t q_desc = smem_desc(sQ + wg * 64 * 128, 16, 1024);
    const uint64_t k_desc = smem_desc(sK, 16, 1024);
    const uint64_t v_desc = smem_desc(sV, Tile::kKVBlock, 1024);
    constexpr uint64_t kStage = Tile::kKVBytes >> 4;  // descriptor units
    const int tail = Lk - (ntiles - 1) * kBc;         // valid keys of the first tile walked
    const auto softmax = [&](float(&sc)[kBc / 8][4], float(&alpha)[2], int i) {
      const int tile = ntiles - 1 - i, key0 = tile * kBc + 2 * (lane & 3);
      if (tile >= n_full)
        online_softmax<kBc / 8, true>(sc, m, l, alpha, c2, key0, row0, Lk, off, causal);
      else
        online_softmax<kBc / 8, false>(sc, m, l, alpha, c2, key0, row0, Lk, off, causal);
    };

    float sc[kBc / 8][4];
    uint32_t pa[kBc / 16][4];
    float alpha[2];
    mbar_wait(&bar.q_full, 0);
    mbar_wait(&bar.k_full[0], 0);
    wgmma_fence();
    issue_qk<E, D>(sc, q_desc, k_desc);
    wgmma_wait<0>();
    fence_operand(sc);
    if (lane == 0) mbar_arrive(&bar.k_empty[0]);
    softmax(sc, alpha, 0);
    probs_to_a<E, kBc / 8>(pa, sc);
    for (int i = 1; i < ntiles; ++i) {
      const int st = i & 1, prev = st ^ 1;
      mbar_wait(&bar.k_full[st], (i >> 1) & 1);
      fence_operand(sc), fence_operand(o);
      wgmma_fence();
      issue_qk<E, D>(sc, q_desc, k_desc + st * kStage);
      mbar_wait(&bar.v_full[prev], ((i - 1) >> 1) & 1);
      if (i == 1 && tail < kBc) zero_v_tail<D>(sV + prev * Tile::kKVBytes, tail, ctid);
      issue_pv<E, D>(o, pa, v_desc + prev * kStage);
      wgmma_wait<1>();  // S of tile i
      fence_operand(sc);
      if (lane == 0) mbar_arrive(&bar.k_empty[st]);
      softmax(sc, alpha, i);
      wgmma_wait<0>();  // P V of tile i - 1
      fence_operand(o);
      if (lane == 0) mbar_arrive(&bar.v_empty[prev]);
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[j][0] *= alpha[0], o[j][1] *= alpha[0];
        o[j][2] *= alpha[1], o[j][3] *= alpha[1];
      }
      probs_to_a<E, kBc / 8>(pa, sc);
    }
    const int last = (ntiles - 1) & 1;
    mbar_wait(&bar.v_full[last], ((ntiles - 1) >> 1) & 1);
    if (ntiles == 1 && tail < kBc) zero_v_tail<D>(sV + last * Tile::kKVBytes, tail, ctid);
    fence_operand(o);
    wgmma_fence();
    issue_pv<E, D>(o, pa, v_desc + last * kStage);
    wgmma_wait<0>();
    fence_operand(o);
  }

  E* out = reinterpret_cast<E*>(p.o.data) + at3(p.o, s.row, s.q0, head);
  const E* gate = p.gate.data
                      ? reinterpret_cast<const E*>(p.gate.data) + at3(p.gate, s.row, s.q0, head)
                      : nullptr;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(l[r]);
    const int i = row0 + 8 * r;
    if (i >= Lq) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    if (p.lse.data && (lane & 3) == 0) {
      const float lse = sum > 0.0f ? (m[r] + log2f(sum)) * kLn2 : -INFINITY;
      reinterpret_cast<float*>(p.lse.data)[s.row * p.lse.stride[0] + head * p.lse.stride[1] +
                                           (s.q0 + i) * p.lse.stride[2]] = lse;
    }
    E* orow = out + i * p.o.stride[1];
    const E* grow = gate ? gate + i * p.gate.stride[1] : nullptr;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const int col = 8 * j + 2 * (lane & 3);
      float x0 = o[j][2 * r] * inv, x1 = o[j][2 * r + 1] * inv;
      if (grow) {
        const float2 g = ld_pair(grow + col);
        x0 *= sigmoidf_(g.x), x1 *= sigmoidf_(g.y);
      }
      st_pair(orow + col, x0, x1);
    }
  }
#endif
}

// ---- host ------------------------------------------------------------------------------

// The module's kernels as sm_90a code: checked once (tma_host.cuh).
bool sm90a_code() {
  static const bool sm90a =
      has_sm90a_code(reinterpret_cast<const void*>(fwd_sm90_kernel<__nv_bfloat16, 64>));
  return sm90a;
}

template <class E, int D>
cudaError_t launch_sm90(const AttnFwdParams& p, int dtype, cudaStream_t stream) {
  using Tile = Sm90Tile<D>;
  const EncodeTiled encode = encode_tiled();
  // Without keys nothing is loaded, but the maps still need a mapped address
  // (an empty k may have none): describe q there.
  const Arg& k = p.Tk > 0 ? p.k : p.q;
  const Arg& v = p.Tk > 0 ? p.v : p.q;
  CUtensorMap tq, tk, tv;
  if (!encode || !tensor_map(tq, encode, p.q, dtype, Tile::kBr) ||
      !tensor_map(tk, encode, k, dtype, Tile::kBc) || !tensor_map(tv, encode, v, dtype, Tile::kBc))
    return cudaErrorNotSupported;
  const int64_t slots = block_slots(p.N, p.Tq, Tile::kBr, p.cu_q.data != nullptr);
  if (slots * p.Hq == 0) return cudaSuccess;
  const cudaError_t status = allow_smem(fwd_sm90_kernel<E, D>, Tile::kSmem);
  if (status != cudaSuccess) return status;
  fwd_sm90_kernel<E, D>
      <<<static_cast<unsigned>(slots * p.Hq), Tile::kThreads, Tile::kSmem, stream>>>(tq, tk, tv, p,
                                                                                     slots);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_attn_prefill_sm90(const AttnFwdParams& p, int dtype, cudaStream_t stream) {
  // What the kernel assumes: a compute capability 9.0 device (sm_90a code),
  // 16-bit storage (and unit-stride 16-byte-aligned rows: the caller's
  // tensor-core check), D in {64, 128, 256}, a positive scale (the running
  // max is taken before scaling), token counts that keep TMA coordinates and
  // tile ends inside int.
  constexpr int64_t kMaxT = (int64_t{1} << 31) - 256;
  if ((dtype != kBF16 && dtype != kF16) || (p.D != 64 && p.D != 128 && p.D != 256) ||
      !(p.scale > 0.0f) || p.scale == INFINITY || p.Tq >= kMaxT || p.Tk >= kMaxT || p.Hq >= kMaxT ||
      p.B >= kMaxT)
    return cudaErrorNotSupported;
  bool hopper = false;
  const cudaError_t status = hopper_device(hopper);
  if (status != cudaSuccess) return status;
  if (!hopper || !sm90a_code()) return cudaErrorNotSupported;
  const auto by_dim = [&]<class E>(E) {
    switch (p.D) {
      case 64:
        return launch_sm90<E, 64>(p, dtype, stream);
      case 128:
        return launch_sm90<E, 128>(p, dtype, stream);
      default:
        return launch_sm90<E, 256>(p, dtype, stream);
    }
  };
  return dtype == kBF16 ? by_dim(__nv_bfloat16{}) : by_dim(__half{});
}

}  // namespace hops::cuda
