// moe_expert_mlp's forward on Hopper (sm_90a): both grouped GEMMs on wgmma
// with TMA loads, warp-specialized and persistent. A CTA of three
// warpgroups walks the plan's work tiles (moe_common.cuh: 128 rows of one
// expert x a column tile, an expert's row tiles innermost) from blockIdx.x in
// steps of gridDim.x: warpgroup 0 is the producer (one thread issues the TMA
// loads of each 64-deep stage into a ring of kRing, completing on mbarriers),
// warpgroups 1 and 2 each own 64 of the tile's rows and issue m64n256k16
// wgmma with both operands K-major in 128-byte-swizzled smem. A tile of at
// most 64 rows (an expert's remainder) is split by columns instead: each
// warpgroup multiplies the 64 rows by its half of the B rows (m64n128k16), so
// that no warpgroup multiplies rows past the tile's end (skipping by
// warpgroup would be a branch ptxas answers by serializing every wgmma,
// C7518; the branch on the tile's size is uniform over the CTA).
// - up GEMM: rows [R, Hd] x gate_up[e]^T; the 256 B rows of a tile are four
//   TMA boxes of 64: gate rows n0.., up rows I+n0.., gate rows n0+64.., up
//   rows I+n0+64.., so a thread holds gate and up of the same h column (8
//   accumulator columns apart) and writes h = silu(g) u (storage dtype) to
//   scratch.
// - down GEMM: h [R, I] x down[e]^T, 256 output columns per tile.
// A tile's rows past its expert's end (the next expert's rows, or zeros past
// R) are loaded and multiplied but not stored: a row of the product depends on
// its own A row only. K past Hd or I, and B rows past the weight's end, are
// TMA's zero fill. f32 accumulation in a fixed order: deterministic.
#include <algorithm>

#include "moe_common.cuh"
#include "tma_host.cuh"
#include "wgmma.cuh"

namespace hops::cuda::moe {

namespace {

using namespace sm90;

// Some constants and quad_transpose are used only by the kernel's sm_90a
// body: compiled for other targets they are unused, which is expected
// (warning 177).
#pragma nv_diag_suppress 177
constexpr int kThreads = 384;  // producer + 2 consumer warpgroups
constexpr int kProducerRegs = 40, kConsumerRegs = 232;
constexpr int kRows = 128;  // rows of a work tile (the plan's rows_per_entry)
constexpr int kCols = 256;  // B rows of a tile: four TMA boxes of 64
constexpr int kDepth = 64;  // K of a stage: one 128-byte swizzle row of 16-bit elements
constexpr int kRing = 4;
constexpr int kABytes = kRows * kDepth * 2;  // 16 KB
constexpr int kBoxBytes = 64 * kDepth * 2;   // one B box, 8 KB
constexpr int kStageBytes = kABytes + 4 * kBoxBytes;
constexpr size_t kSmem = 1024 + size_t{kRing} * kStageBytes + 2 * kRing * sizeof(uint64_t);

// Four 4-byte pairs of each lane of a quad (lane t holds columns 8i + 2t,
// 8i + 2t + 1 of groups i = 0..3) transposed so that lane t gets group t's
// 16 bytes, pairs in column order.
__device__ __forceinline__ uint4 quad_transpose(const uint32_t (&p)[4], int t) {
  const auto pick = [](const uint32_t(&x)[4], int i) {  // selects, not local memory
    return i == 0 ? x[0] : i == 1 ? x[1] : i == 2 ? x[2] : x[3];
  };
  uint32_t got[4];  // got[d]: from lane t ^ d, its pair of group t
  got[0] = pick(p, t);
#pragma unroll
  for (int d = 1; d < 4; ++d) got[d] = __shfl_xor_sync(0xffffffffu, pick(p, t ^ d), d);
  return make_uint4(pick(got, t), pick(got, t ^ 1), pick(got, t ^ 2), pick(got, t ^ 3));
}
#pragma nv_diag_default 177

// One GEMM's work: kUp (h columns in tiles of 128, from gate and up rows I
// apart) or down (output columns in tiles of 256).
struct Sm90Gemm {
  void* c;       // h [R, I] (up) or out (down), unit columns
  int64_t c_s;   // c's row step
  int64_t N, K;  // valid columns of c; the depth
  int64_t I;     // up: the up rows' offset in gate_up
  int64_t nc;    // column tiles per row tile
  Plan plan;
};

template <class E, bool kUp>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_gemm_sm90_kernel(const __grid_constant__ CUtensorMap ta,
                             const __grid_constant__ CUtensorMap tb, const Sm90Gemm g) {
  // wgmma, TMA and mbarrier waits exist in sm_90a code only; a module built
  // for other targets carries an empty kernel that launch_expert_mlp_sm90
  // never launches (sm90a_code).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ uint8_t smem_raw[];
  uint8_t* const tiles_base = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  uint64_t* const full = reinterpret_cast<uint64_t*>(tiles_base + kRing * kStageBytes);
  uint64_t* const empty = full + kRing;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kRing; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 8);  // a lane per consumer warp
    }
    fence_barrier_init();
  }
  __syncthreads();
  const int64_t tiles = g.plan.tstart[g.plan.experts] * g.nc;
  const int steps = static_cast<int>(ceil_div(g.K, kDepth));
  const int n_tile = kUp ? kCols / 2 : kCols;  // c columns per tile

  if (threadIdx.x < 128) {  // producer warpgroup
    setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x != 0) return;
    prefetch_tensor_map(&ta), prefetch_tensor_map(&tb);
    int stage = 0;
    uint32_t phase = 0;
    for (int64_t L = blockIdx.x; L < tiles; L += gridDim.x) {
      const Tile t = decode_tile(g.plan, L, g.nc);
      const int row = static_cast<int>(t.row0), e = static_cast<int>(t.expert);
      const int n0 = static_cast<int>(t.col) * n_tile, I = static_cast<int>(g.I);
      // The B boxes' first rows: gate, up, gate, up (up) or four consecutive (down).
      const int b_row[4] = {n0, kUp ? n0 + I : n0 + 64, n0 + (kUp ? 64 : 128),
                            kUp ? n0 + I + 64 : n0 + 192};
      for (int ks = 0; ks < steps; ++ks) {
        mbar_wait(&empty[stage], phase ^ 1);  // both consumers released the stage
        uint8_t* const sA = tiles_base + stage * kStageBytes;
        mbar_arrive_expect_tx(&full[stage], kStageBytes);
        tma_load_2d(sA, &ta, &full[stage], ks * kDepth, row);
#pragma unroll
        for (int b = 0; b < 4; ++b)
          tma_load_3d(sA + kABytes + b * kBoxBytes, &tb, &full[stage], ks * kDepth, b_row[b], e);
        if (++stage == kRing) stage = 0, phase ^= 1;
      }
    }
    return;
  }

  setmaxnreg_inc<kConsumerRegs>();
  const int ctid = threadIdx.x - 128, wg = ctid >> 7, warp = (ctid >> 5) & 3, lane = ctid & 31;
  float acc[kCols / 8][4];
  int stage = 0;
  uint32_t phase = 0;
  for (int64_t L = blockIdx.x; L < tiles; L += gridDim.x) {
    const Tile t = decode_tile(g.plan, L, g.nc);
    // Full tile: this warpgroup's 64 rows x all 256 B rows. Small tile (at
    // most 64 rows): rows 0..63 x this warpgroup's 128 B rows (m64n128k16
    // into acc's first half).
    const bool small = t.rows <= 64;
    // The k-steps of a tile with N-wide products (the branch on `small` is
    // taken once per tile, outside the loop: a branch between wgmma issues
    // makes ptxas inject warpgroup.arrive there, C7519).
    const auto mainloop = [&]<int N>(float(&d)[N / 8][4], int a_off, int b_off) {
      int prev = 0;
      for (int ks = 0; ks < steps; ++ks) {
        mbar_wait(&full[stage], phase);
        const uint8_t* sA = tiles_base + stage * kStageBytes;
        const uint64_t da = smem_desc(sA + a_off, 16, 1024);
        const uint64_t db = smem_desc(sA + kABytes + b_off, 16, 1024);
        fence_operand(d);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kDepth / 16; ++kk)  // 16 deep = 32 bytes along the swizzled row
          wgmma_ss<E, N>(d, da + 2 * kk, db + 2 * kk, ks > 0 || kk > 0);
        wgmma_commit();
        wgmma_wait<1>();  // the previous stage's products are done: release it
        fence_operand(d);
        if (ks > 0 && lane == 0) mbar_arrive(&empty[prev]);
        prev = stage;
        if (++stage == kRing) stage = 0, phase ^= 1;
      }
      wgmma_wait<0>();
      fence_operand(d);
      if (lane == 0) mbar_arrive(&empty[prev]);
    };
    if (small) {
      mainloop.template operator()<kCols / 2>(*reinterpret_cast<float(*)[kCols / 16][4]>(&acc[0]),
                                              0, wg * 2 * kBoxBytes);
    } else {
      mainloop.template operator()<kCols>(acc, wg * 64 * 128, 0);
    }

    // Epilogue: thread rows r and r + 8, accumulator columns 8j + 2 (lane %
    // 4) + {0, 1}, j < 32 (full) or 16 (small: from tile column c0). Up:
    // gate in j % 16 < 8 and its up in j + 8, h column 64 (j / 16) + 8 (j %
    // 16) + ... Pairs packed to the storage dtype four accumulator groups at a
    // time (32 columns), transposed within the quad so that each lane stores
    // 16 bytes: a row's 64 contiguous bytes per quad and store.
    const int r0 = (small ? 0 : 64 * wg) + 16 * warp + (lane >> 2), q4 = lane & 3;
    const int64_t n0 = t.col * n_tile + (small ? wg * n_tile / 2 : 0) + 8 * q4;
    E* const c = static_cast<E*>(g.c);
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      const int r = r0 + 8 * hi;
      E* const out = r < t.rows ? c + (t.row0 + r) * g.c_s : nullptr;
#pragma unroll
      for (int q = 0; q < n_tile / 32; ++q) {
        if (small && q >= n_tile / 64) break;
        uint32_t pk[4];
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
          const int j = kUp ? 16 * (q / 2) + 4 * (q % 2) + jj : 4 * q + jj;
          if constexpr (kUp) {
            pk[jj] = pack2<E>(siluf_(acc[j][2 * hi]) * acc[j + 8][2 * hi],
                              siluf_(acc[j][2 * hi + 1]) * acc[j + 8][2 * hi + 1]);
          } else {
            pk[jj] = pack2<E>(acc[j][2 * hi], acc[j][2 * hi + 1]);
          }
        }
        const uint4 v = quad_transpose(pk, q4);  // every lane: shuffles
        const int64_t n = n0 + 32 * q;
        if (out && n < g.N) *reinterpret_cast<uint4*>(out + n) = v;  // N % 8 == 0
      }
    }
  }
#endif
}

// ---- host ------------------------------------------------------------------------------

// A map of a [dims[2], dims[1], dims[0]] 16-bit tensor (dims[0] innermost,
// unit stride; strides in elements, rank 2 or 3) with boxes of 64 x `rows`
// (x 1), 128-byte swizzle, zeros past the ends. False when TMA cannot
// describe it (the driver refuses: alignment, strides).
bool tensor_map(CUtensorMap& map, EncodeTiled encode, const void* data, int dtype, int rank,
                const int64_t (&dims)[3], const int64_t (&strides)[2], int rows) {
  cuuint64_t d[3], st[2];
  for (int i = 0; i < rank; ++i) d[i] = static_cast<cuuint64_t>(std::max<int64_t>(dims[i], 1));
  for (int i = 0; i + 1 < rank; ++i) {
    if (strides[i] < 0) return false;
    // A dimension of extent 1 is never stepped: give it the packed stride.
    st[i] = dims[i + 1] > 1 ? static_cast<cuuint64_t>(strides[i]) * 2
                            : (i == 0 ? d[0] * 2 : st[i - 1] * d[i]);
  }
  const cuuint32_t box[3] = {64, static_cast<cuuint32_t>(rows), 1};
  const cuuint32_t unit[3] = {1, 1, 1};
  return encode(&map,
                dtype == kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                static_cast<cuuint32_t>(rank), const_cast<void*>(data), d, st, box, unit,
                CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Whether the module holds the kernels as sm_90a code (tma_host.cuh).
bool sm90a_code() {
  static const bool sm90a =
      has_sm90a_code(reinterpret_cast<const void*>(grouped_gemm_sm90_kernel<__nv_bfloat16, true>));
  return sm90a;
}

template <class E>
cudaError_t launch_sm90(const MoeMlpParams& p, int dtype, const Plan& plan, E* h,
                        int64_t max_entries, cudaStream_t stream) {
  const EncodeTiled encode = encode_tiled();
  CUtensorMap t_rows, t_gate_up, t_h, t_down;
  const Arg &gu = p.gate_up, &dn = p.down;
  if (!encode ||
      !tensor_map(t_rows, encode, p.rows.data, dtype, 2, {p.Hd, p.R, 1}, {p.rows.stride[0], 0},
                  kRows) ||
      !tensor_map(t_gate_up, encode, gu.data, dtype, 3, {p.Hd, 2 * p.I, p.E},
                  {gu.stride[1], gu.stride[0]}, 64) ||
      !tensor_map(t_h, encode, h, dtype, 2, {p.I, p.R, 1}, {p.I, 0}, kRows) ||
      !tensor_map(t_down, encode, dn.data, dtype, 3, {p.I, p.Hd, p.E}, {dn.stride[1], dn.stride[0]},
                  64))
    return cudaErrorNotSupported;
  cudaError_t status = allow_smem(grouped_gemm_sm90_kernel<E, true>, kSmem);
  if (status == cudaSuccess) status = allow_smem(grouped_gemm_sm90_kernel<E, false>, kSmem);
  if (status != cudaSuccess) return status;
  const Sm90Gemm up{.c = h,
                    .c_s = p.I,
                    .N = p.I,
                    .K = p.Hd,
                    .I = p.I,
                    .nc = ceil_div(p.I, kCols / 2),
                    .plan = plan};
  const Sm90Gemm down{.c = p.out.data,
                      .c_s = p.out.stride[0],
                      .N = p.Hd,
                      .K = p.I,
                      .I = p.I,
                      .nc = ceil_div(p.Hd, kCols),
                      .plan = plan};
  const auto grid = [&](const Sm90Gemm& g) {
    return static_cast<unsigned>(std::min<int64_t>(max_entries * g.nc, p.sms));
  };
  grouped_gemm_sm90_kernel<E, true><<<grid(up), kThreads, kSmem, stream>>>(t_rows, t_gate_up, up);
  if ((status = cudaGetLastError()) != cudaSuccess) return status;
  grouped_gemm_sm90_kernel<E, false><<<grid(down), kThreads, kSmem, stream>>>(t_h, t_down, down);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_expert_mlp_sm90(const MoeMlpParams& p, const Plan& plan, void* h,
                                   int64_t max_entries, cudaStream_t stream) {
  // What the kernels assume: a compute capability 9.0 device (sm_90a code),
  // 16-bit storage with the tensor-core layouts (moe_host.cpp: Hd and I
  // multiples of 8, unit-stride 16-byte-aligned rows), TMA coordinates and
  // tile columns inside int.
  constexpr int64_t kMax = (int64_t{1} << 31) - 512;
  const int dtype = p.rows.dtype;
  if (!p.tensor_cores || (dtype != kBF16 && dtype != kF16) || p.R >= kMax || p.Hd >= kMax ||
      2 * p.I >= kMax || p.E >= kMax)
    return cudaErrorNotSupported;
  bool hopper = false;
  if (const cudaError_t status = hopper_device(hopper); status != cudaSuccess) return status;
  if (!hopper || !sm90a_code()) return cudaErrorNotSupported;
  return dtype == kBF16
             ? launch_sm90(p, dtype, plan, static_cast<__nv_bfloat16*>(h), max_entries, stream)
             : launch_sm90(p, dtype, plan, static_cast<__half*>(h), max_entries, stream);
}

}  // namespace hops::cuda::moe
