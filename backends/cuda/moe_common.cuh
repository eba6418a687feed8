// Device helpers of the MoE kernels (moe_*.cu): index tables, a block-wide
// scan, the expert plan (each expert's rows and the work tiles over them,
// built on the device from the counts), and the tensor-core pieces of the
// grouped GEMMs (tile loads by cp.async, warp-level mma.sync products, and a
// persistent pipeline that runs over a CTA's tiles without draining between
// them). The mma.sync / ldmatrix wrappers are the attention family's.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attn_common.cuh"
#include "moe_params.hpp"

namespace hops::cuda::moe {

using attn::a_rows;
using attn::b_rows;
using attn::b_trans;
using attn::st_pair;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- index tables ------------------------------------------------------------------

__device__ __forceinline__ int64_t ld_idx(const MoeIndex& x, int64_t i, int64_t j = 0) {
  const int64_t at = i * x.stride0 + j * x.stride1;
  return x.is64 ? static_cast<const int64_t*>(x.data)[at] : static_cast<const int32_t*>(x.data)[at];
}

// Slot s = t*k + j (T*k < 2^31: 32-bit division).
__device__ __forceinline__ int64_t slot_token(int64_t s, int64_t k) {
  return static_cast<uint32_t>(s) / static_cast<uint32_t>(k);
}
__device__ __forceinline__ int64_t slot_index(int64_t s, int64_t k) {
  return static_cast<uint32_t>(s) % static_cast<uint32_t>(k);
}

// The bucket of slot s: its expert, or E when dropped or out of range.
__device__ __forceinline__ int32_t bucket(const MoeDispatchParams& p, int64_t s) {
  const int64_t id = ld_idx(p.ids, slot_token(s, p.k), slot_index(s, p.k));
  return static_cast<int32_t>(id >= 0 && id < p.E ? id : p.E);
}

// Runs body(bucket, peers, rank, slot) for the slots [begin, end) in order, 32
// at a time, a warp holding kPerLane of them per lane in registers (all
// loads first: one latency per 32 * kPerLane slots): peers are the lanes of
// the round with the same bucket, rank this lane's place among them. Lanes
// past the end get bucket -1; rounds wholly past it are not run.
template <int kPerLane, class Body>
__device__ __forceinline__ void slot_rounds(const MoeDispatchParams& p, int64_t begin, int64_t end,
                                            Body body) {
  const int lane = threadIdx.x & 31;
  const unsigned below = (1u << lane) - 1;
  for (int64_t base = begin; base < end; base += 32 * kPerLane) {
    int32_t b[kPerLane];
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int64_t s = base + 32 * r + lane;
      b[r] = s < end ? bucket(p, s) : -1;
    }
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      if (base + 32 * r >= end) break;  // the same for every lane
      const unsigned peers = __match_any_sync(0xffffffffu, b[r]);
      body(b[r], peers, __popc(peers & below), base + 32 * r + lane);
    }
  }
}
__device__ __forceinline__ void st_idx(const MoeIndex& x, int64_t i, int64_t j, int64_t v) {
  const int64_t at = i * x.stride0 + j * x.stride1;
  if (x.is64) {
    static_cast<int64_t*>(x.data)[at] = v;
  } else {
    static_cast<int32_t*>(x.data)[at] = static_cast<int32_t>(v);
  }
}

// Places the slots [begin, end) of one warp in order (both dispatch
// bookkeepings' last kernel): a slot of bucket b takes row next[b] plus its
// rank among the round's lanes of b, and the round's leader of b moves
// next[b] past them. Writes row_map (-1 for a dropped slot) and dest (the
// row; ~row for a dropped slot's zero row). `next` is indexed by bucket: a
// pointer, or v2's strided counters.
template <int kPerLane, class Next>
__device__ __forceinline__ void place_slots(const MoeDispatchParams& p, int64_t begin, int64_t end,
                                            Next next, int32_t* dest) {
  slot_rounds<kPerLane>(p, begin, end, [&](int32_t b, unsigned peers, int rank, int64_t slot) {
    const int32_t row = b >= 0 ? next[b] + rank : 0;
    __syncwarp();  // every lane has read next[b] before its leader moves it
    if (b >= 0 && rank == 0) next[b] = row + __popc(peers);
    __syncwarp();
    if (b < 0) return;
    const bool kept = b < p.E;
    st_idx(p.row_map, slot_token(slot, p.k), slot_index(slot, p.k), kept ? row : -1);
    dest[slot] = kept ? row : ~row;
  });
}

// ---- block-wide exclusive scan ------------------------------------------------------

// Exclusive prefix sums of non-negative values over the block's threads, each
// partial sum saturated at `cap` (which keeps them far from overflow and
// equals the running sum clamped to cap: the sums only grow). `shared` holds
// one value per warp; `total` gets the block's sum. Every thread must call.
template <int kThreads>
__device__ int64_t block_exclusive_scan(int64_t v, int64_t cap, int64_t* shared, int64_t& total) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t inclusive = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t y = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive = min(inclusive + y, cap);
  }
  int64_t exclusive = __shfl_up_sync(0xffffffffu, inclusive, 1);
  if (lane == 0) exclusive = 0;
  if (lane == 31) shared[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int64_t w = lane < kWarps ? shared[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int64_t y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w = min(w + y, cap);
    }
    if (lane < kWarps) shared[lane] = w;
  }
  __syncthreads();
  const int64_t before = warp > 0 ? shared[warp - 1] : 0;
  total = shared[kWarps - 1];
  __syncthreads();  // `shared` may be reused by the caller's next scan
  return min(before + exclusive, cap);
}

// ---- the expert plan -----------------------------------------------------------------

// Built by plan_kernel (moe_mlp.cu) from the counts: first[e] = the first row
// of expert e, the counts clamped so that the running sum stays within R
// (first[E] = the rows used); entries: expert e owns entries tstart[e] ..
// tstart[e+1] - 1, one per `rows_per_entry` of its rows (0: one entry for an
// expert with rows). A kernel with `nc` column tiles per entry runs tstart[E] *
// nc work tiles; tile L's entry is L / nc, and an expert's tiles are ordered
// column-major (its row tiles innermost), so that the CTAs running at one
// time share weight tiles through L2.
struct Plan {
  int64_t* first;   // [E + 1]
  int64_t* tstart;  // [E + 1]
  int32_t* entry;   // [max_entries]: the expert of each entry
  int64_t experts;  // E
  int64_t rows_per_entry;
};

__host__ __device__ inline int64_t plan_max_entries(int64_t R, int64_t E, int64_t rows_per_entry) {
  const int64_t experts = E < R ? E : R;  // experts with rows
  return rows_per_entry ? (R + rows_per_entry - 1) / rows_per_entry + experts : experts;
}

inline size_t align_up(size_t bytes) { return (bytes + 255) & ~size_t{255}; }

inline size_t plan_bytes(int64_t R, int64_t E, int64_t rows_per_entry) {
  return 2 * align_up(size_t(E + 1) * 8) +
         align_up(size_t(plan_max_entries(R, E, rows_per_entry)) * 4);
}

// Carves a plan out of scratch at `cursor` and moves the cursor past it.
inline Plan carve_plan(char*& cursor, int64_t R, int64_t E, int64_t rows_per_entry) {
  Plan p;
  p.first = reinterpret_cast<int64_t*>(cursor);
  cursor += align_up(size_t(E + 1) * 8);
  p.tstart = reinterpret_cast<int64_t*>(cursor);
  cursor += align_up(size_t(E + 1) * 8);
  p.entry = reinterpret_cast<int32_t*>(cursor);
  cursor += align_up(size_t(plan_max_entries(R, E, rows_per_entry)) * 4);
  p.experts = E, p.rows_per_entry = rows_per_entry;
  return p;
}

// Work tile L of a plan with nc column tiles per entry: its expert, rows
// [row0, row0 + rows) of the grouped rows and column tile `col`.
struct Tile {
  int64_t expert, row0, rows, col;
};
__device__ __forceinline__ Tile decode_tile(const Plan& plan, int64_t L, int64_t nc) {
  const int64_t e = plan.entry[L / nc];
  const int64_t t0 = plan.tstart[e], m = plan.tstart[e + 1] - t0;
  const int64_t local = L - t0 * nc;
  const int64_t col = local / m, part = local % m;
  const int64_t f0 = plan.first[e], f1 = plan.first[e + 1];
  Tile t;
  t.expert = e, t.col = col;
  if (plan.rows_per_entry) {
    t.row0 = f0 + part * plan.rows_per_entry;
    t.rows = min(plan.rows_per_entry, f1 - t.row0);
  } else {
    t.row0 = f0, t.rows = f1 - f0;
  }
  return t;
}

// Launches (moe_mlp.cu): the plan from the counts (one CTA), and zeros for
// the rows [first, R) of a [R, cols] tensor, `first` read on the device (null:
// all rows).
cudaError_t launch_plan(const MoeIndex& counts, int64_t R, const Plan& plan, cudaStream_t stream);
cudaError_t launch_zero_rows(const Arg& t, const int64_t* first, int64_t R, int sms,
                             cudaStream_t stream);

// ---- the general GEMM (f32 CUDA cores; moe_mlp.cu) ------------------------------------

// C(m, n) = sum_k A(m, k) B(k, n) over the work tiles of `plan`, with
//   A(m, k) = a + (mrow + m) a_sm + (krow + k) a_sk + e a_se,
//   B(k, n) = b + (krow + k) b_sk + n b_sn + e b_se,
//   C(m, n) = c + (mrow + m) c_sm + n c_sn + e c_se.
// Row tiles (plan.rows_per_entry > 0): m runs over the tile's rows (mrow =
// row0), k over [0, K), n over [0, N) (krow = 0). Expert tiles: m over [0, M),
// n over [0, N), k over the expert's rows (krow = its first row, mrow = 0).
// With swiglu (row tiles), B's columns n and I + n are a gate and an up
// column and C gets silu(gate) * up at column n, n < I = N.
inline constexpr int kGenRows = 64;  // rows of the general kernel's row tiles

struct GenGemm {
  const char* a;
  int a_dtype;
  int64_t a_sm, a_sk, a_se;
  const char* b;
  int b_dtype;
  int64_t b_sk, b_sn, b_se;
  char* c;
  int c_dtype;
  int64_t c_sm, c_sn, c_se;
  int64_t M, N, K;
  int swiglu;
  Plan plan;
};
cudaError_t launch_gen_gemm(const GenGemm& g, int64_t max_entries, int sms, cudaStream_t stream);

// ---- tensor cores: tiles, warp products, the persistent pipeline -----------------------

inline constexpr int kTcThreads = 256;  // 8 warps: 2 along M x 4 along N
inline constexpr int kBK = 64;          // depth of a pipeline stage
inline constexpr int kStages = 3;

// R rows of C elements (C a multiple of 8) into smem rows of pitch P by
// 16-byte cp.async: rows at or past `rows` and pieces at or past `cols`
// are zero-filled (their source is `base`, which the caller guarantees is
// mapped).
template <int R, int C, int P, class E>
__device__ __forceinline__ void load_tile(E* dst, const E* base, int64_t stride, int64_t rows,
                                          int64_t cols, int tid) {
  constexpr int kPieces = C / 8;
#pragma unroll
  for (int idx = tid; idx < R * kPieces; idx += kTcThreads) {
    const int r = idx / kPieces, c = (idx % kPieces) * 8;
    const bool valid = r < rows && c < cols;
    cp_async16(dst + r * P + c, valid ? base + r * stride + c : base, valid);
  }
}

// acc[MT][NT] (16 x 8 tiles) += A B over one stage of kBK, the warp's A rows
// at `a` (A stored [m][k], pitch PA) or, with kTransA, A^T's rows at `a` (A
// stored [k][m]); B's NT n8 tiles in two groups of NT/2, group g's first
// column at b[g]: B stored [n][k] (pitch PB) or, with kTransB, [k][n]. The
// pointers already hold the lane's ldmatrix offset (a_rows / b_rows /
// b_trans).
template <class E, int MT, int NT, int PA, int PB, bool kTransA, bool kTransB>
__device__ __forceinline__ void warp_mma(float (&acc)[MT][NT][4], const E* a,
                                         const E* const (&b)[2], int m_live) {
  static_assert(NT % 4 == 0);
  if (m_live == 0) return;  // no rows here: leave the smem bandwidth to the other warps
#pragma unroll
  for (int kk = 0; kk < kBK / 16; ++kk) {
    uint32_t bf[NT][2];
#pragma unroll
    for (int g = 0; g < 2; ++g) {
#pragma unroll
      for (int np = 0; np < NT / 4; ++np) {
        uint32_t r[4];
        if constexpr (kTransB) {
          ldsm_x4_trans(r, b[g] + kk * 16 * PB + np * 16);
        } else {
          ldsm_x4(r, b[g] + np * 16 * PB + kk * 16);
        }
        const int n = g * (NT / 2) + 2 * np;
        bf[n][0] = r[0], bf[n][1] = r[1], bf[n + 1][0] = r[2], bf[n + 1][1] = r[3];
      }
    }
#pragma unroll
    for (int mi = 0; mi < MT; ++mi) {
      if (mi >= m_live) break;  // rows past the tile's end: nothing to multiply
      uint32_t af[4];
      if constexpr (kTransA) {
        ldsm_x4_trans(af, a + kk * 16 * PA + mi * 16);
      } else {
        ldsm_x4(af, a + mi * 16 * PA + kk * 16);
      }
#pragma unroll
      for (int n = 0; n < NT; ++n) mma<E>(acc[mi][n], af, bf[n][0], bf[n][1]);
    }
  }
}

// How many of a warp's MT m16 tiles hold rows of a tile of `rows` rows, the
// warp's first row being `first`.
template <int MT>
__device__ __forceinline__ int live_tiles(int64_t rows, int64_t first) {
  const int64_t n = (rows - first + 15) / 16;
  return n <= 0 ? 0 : (n >= MT ? MT : static_cast<int>(n));
}

template <int MT, int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int mi = 0; mi < MT; ++mi)
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][n][e] = 0.0f;
}

// The CTA's work tiles L = blockIdx.x, + gridDim.x, ... (below `tiles`), each
// `steps(tile)` >= 1 stages deep, as one stream of stages through a ring of
// kStages smem buffers: the loads run kStages - 1 stages ahead across tile
// boundaries, so a tile's epilogue (registers to global memory, no smem)
// overlaps the next tile's first loads. load(tile, step, buffer) issues a
// stage's cp.async; compute(tile, buffer) consumes it; epilogue(tile) follows
// a tile's last stage.
template <class Decode, class Steps, class Load, class Compute, class Epilogue>
__device__ __forceinline__ void persistent_pipeline(int64_t tiles, Decode decode, Steps steps,
                                                    Load load, Compute compute, Epilogue epilogue) {
  struct Cursor {
    int64_t L;
    int64_t step, steps;
    Tile tile;
  };
  Cursor ld{}, cp{};
  // A cursor moving to tile L takes the loader's decoding when the loader is
  // there already (the compute cursor always follows it).
  const auto start = [&](Cursor& c, int64_t L) {
    c.L = L, c.step = 0, c.steps = 0;
    if (L >= tiles) return;
    if (&c == &cp && ld.L == L) {
      c.tile = ld.tile, c.steps = ld.steps;
    } else {
      c.tile = decode(L), c.steps = steps(c.tile);
    }
  };
  const auto advance = [&](Cursor& c) {
    if (++c.step == c.steps) start(c, c.L + gridDim.x);
  };
  start(ld, blockIdx.x);
  cp = ld;
#pragma unroll 1
  for (int s = 0; s < kStages - 1; ++s) {
    if (ld.L < tiles) load(ld.tile, ld.step, s), advance(ld);
    cp_async_commit();
  }
  int buffer = 0;
#pragma unroll 1
  while (cp.L < tiles) {
    cp_async_wait<kStages - 2>();  // this stage has landed (for this thread) ...
    __syncthreads();               // ... for every thread, and the previous buffer is free
    if (ld.L < tiles) load(ld.tile, ld.step, (buffer + kStages - 1) % kStages), advance(ld);
    cp_async_commit();
    compute(cp.tile, buffer);
    buffer = buffer + 1 == kStages ? 0 : buffer + 1;
    if (cp.step + 1 == cp.steps) epilogue(cp.tile);
    advance(cp);
  }
  cp_async_wait<0>();
}

// The row GEMM on tensor cores (moe_mlp.cu): c[r, n] = sum_k a[r, k] B[e][n, k]
// over the plan's row tiles (128 rows) and columns n in [0, N) (tiles of 256),
// k in [0, K); B stored [n][k] (b_s: its row step), or with kTransB [k][n].
// a and c are [R, *] with row steps a_s, c_s and unit columns.
template <class E>
struct RowGemm {
  const E* a;
  int64_t a_s;
  const E* b;
  int64_t b_se, b_s;
  E* c;
  int64_t c_s;
  int64_t N, K;
  Plan plan;
};
template <class E, bool kTransB>
cudaError_t launch_row_gemm_tc(const RowGemm<E>& g, int64_t max_entries, int sms,
                               cudaStream_t stream);

// moe_dispatch's bookkeeping v2 (moe_dispatch_v2.cu): its scratch, and its
// kernels (counts, row_map, and each slot's row in scratch at `dest`, which
// the copy kernel reads).
// With v3, the kernels after the first are programmatic dependents of the
// one before (sm_90 code), and launch_dispatch_v3_copy runs the copy for
// vector rows (the elementwise copy stays moe_rows.cu's, launched as usual).
size_t dispatch_v2_scratch_bytes(const MoeDispatchParams& p);
cudaError_t launch_dispatch_v2_rows(const MoeDispatchParams& p, void* scratch, int32_t*& dest,
                                    cudaStream_t stream);
cudaError_t launch_dispatch_v3_copy(const MoeDispatchParams& p, const int32_t* dest,
                                    cudaStream_t stream);

// The forward's two GEMMs on Hopper (moe_mlp_sm90.cu: wgmma, TMA, the plan's
// 128-row tiles), h [R, I] in the storage dtype. cudaErrorNotSupported, with
// nothing launched, where they cannot run: not a compute capability 9.0
// device with sm_90a code in the module, not the tensor-core layouts, or a
// view that TMA cannot describe.
cudaError_t launch_expert_mlp_sm90(const MoeMlpParams& p, const Plan& plan, void* h,
                                   int64_t max_entries, cudaStream_t stream);

}  // namespace hops::cuda::moe
