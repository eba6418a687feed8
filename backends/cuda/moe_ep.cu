// The expert-parallel ops' own kernels (moe_ep_params.hpp): the plan that
// turns counts into block and row offsets, the row moves between the
// per-peer blocks and the grouped rows, the slot maps, and the zero tail.
// Rows are moved as bits (2- or 4-byte elements, or 16-byte pieces), never
// converted, so that what arrives is what left.
#include <algorithm>

#include "moe_common.cuh"
#include "moe_ep_params.hpp"

namespace hops::cuda {

namespace {

using moe::ld_idx;
using moe::st_idx;

constexpr int kPlanThreads = 1024;
constexpr int kWarps = 8;  // warps per CTA of the row kernels
constexpr int kThreads = 32 * kWarps;
constexpr int64_t kCap = INT64_MAX / 4;  // counts and their sums saturate here (bad handles)

__device__ __forceinline__ int64_t count_at(const MoeIndex& x, int64_t i, int64_t j = 0) {
  return min(max(ld_idx(x, i, j), int64_t{0}), kCap);
}

// out[i] = the exclusive prefix sums of value(i), i < n, over the whole block.
template <class Value>
__device__ void block_scan(int64_t n, Value value, int64_t* out, int64_t* shared) {
  int64_t carry = 0;
  for (int64_t base = 0; base < n; base += kPlanThreads) {
    const int64_t i = base + threadIdx.x;
    int64_t all = 0;
    const int64_t before =
        moe::block_exclusive_scan<kPlanThreads>(i < n ? value(i) : 0, kCap, shared, all);
    if (i < n) out[i] = min(carry + before, kCap);
    carry = min(carry + all, kCap);
  }
  if (threadIdx.x == 0) out[n] = carry;
  __syncthreads();
}

// The last b in [0, n) with first[b] <= i (first ascending, first[0] = 0).
__device__ __forceinline__ int64_t block_of(const int64_t* first, int64_t n, int64_t i) {
  int64_t lo = 0, hi = n;  // first[lo] <= i < first[hi] (first[n] taken as +inf)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (first[mid] <= i) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

__global__ void stage_counts_kernel(const MoeIndex counts, int64_t E, int64_t* out) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < E;
       e += int64_t{gridDim.x} * blockDim.x)
    out[e] = count_at(counts, e);
}

// One CTA. Sender side: peer d's rows are the send counts of its El experts,
// the first P of them fit its block. Receiver side: of what source s sends,
// expert e's rows fit while the block has room (its rows come in expert
// order), and the grouped rows are by local expert, then source.
__global__ void __launch_bounds__(kPlanThreads) plan_kernel(const MoeEpPlanParams p) {
  __shared__ int64_t shared[kPlanThreads / 32];
  const MoeEpPlan& plan = p.plan;
  const int64_t W = p.W, El = p.El;
  for (int64_t d = threadIdx.x; d < W; d += kPlanThreads) {
    int64_t n = 0;
    for (int64_t e = 0; e < El; ++e) n = min(n + count_at(p.send_counts, d * El + e), kCap);
    plan.send_kept[d] = n;
  }
  __syncthreads();
  block_scan(
      W, [&](int64_t d) { return plan.send_kept[d]; }, plan.send_first, shared);
  for (int64_t d = threadIdx.x; d < W; d += kPlanThreads)
    plan.send_kept[d] = min(plan.send_first[d + 1] - plan.send_first[d], p.P);
  if (!p.recv_counts.data) return;

  // Rows kept per (source, expert), held in row_first until the scan.
  for (int64_t s = threadIdx.x; s < W; s += kPlanThreads) {
    int64_t* first = plan.block_first + s * (El + 1);
    int64_t used = 0;
    for (int64_t e = 0; e < El; ++e) {
      const int64_t kept = min(count_at(p.recv_counts, s, e), p.P - used);
      first[e] = used;
      plan.row_first[s * El + e] = kept;
      used += kept;
    }
    first[El] = used;
  }
  __syncthreads();
  const auto expert_rows = [&](int64_t e) {
    int64_t n = 0;
    for (int64_t s = 0; s < W; ++s) n += plan.row_first[s * El + e];  // each <= P: no overflow
    return n;
  };
  block_scan(El, expert_rows, plan.expert_first, shared);
  for (int64_t e = threadIdx.x; e < El; e += kPlanThreads) {
    int64_t row = plan.expert_first[e];
    if (p.counts_out.data) st_idx(p.counts_out, e, 0, plan.expert_first[e + 1] - row);
    for (int64_t s = 0; s < W; ++s) {
      const int64_t kept = plan.row_first[s * El + e];
      if (p.recv_counts_out.data) st_idx(p.recv_counts_out, s, e, kept);
      plan.row_first[s * El + e] = row;
      row += kept;
    }
  }
}

// The grouped row of block row b (source or peer b / P, row b % P), or -1.
__device__ __forceinline__ int64_t grouped_row(const MoeEpMoveParams& p, int64_t b) {
  const int64_t s = b / p.P, i = b % p.P;
  if (!p.by_source) return i < p.plan.send_kept[s] ? p.plan.send_first[s] + i : -1;
  const int64_t* first = p.plan.block_first + s * (p.El + 1);
  if (i >= first[p.El]) return -1;
  const int64_t e = block_of(first, p.El, i);
  return p.plan.row_first[s * p.El + e] + (i - first[e]);
}

// A warp per block row: one row copied either way, as bits.
template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads) move_kernel(const MoeEpMoveParams p) {
  const int64_t rows = p.W * p.P;
  const int lane = threadIdx.x & 31;
  for (int64_t b = blockIdx.x * int64_t{kWarps} + threadIdx.x / 32; b < rows;
       b += int64_t{gridDim.x} * kWarps) {
    const int64_t g = grouped_row(p, b);
    if (g < 0) continue;
    T* block = reinterpret_cast<T*>(p.blocks) + b * p.Hd;
    T* grouped = reinterpret_cast<T*>(p.grouped.data) + g * p.grouped.stride[0];
    if constexpr (kVector) {
      auto* from = reinterpret_cast<const uint4*>(p.to_blocks ? grouped : block);
      auto* to = reinterpret_cast<uint4*>(p.to_blocks ? block : grouped);
      for (int64_t i = lane; i < p.Hd * int64_t{sizeof(T)} / 16; i += 32) to[i] = from[i];
    } else {
      const int64_t step = p.grouped.stride[1];
      for (int64_t i = lane; i < p.Hd; i += 32) {
        if (p.to_blocks) {
          block[i] = grouped[i * step];
        } else {
          grouped[i * step] = block[i];
        }
      }
    }
  }
}

__global__ void slots_kernel(const MoeEpSlotParams p) {
  const int64_t slots = p.T * p.k;
  for (int64_t s = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; s < slots;
       s += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = s / p.k, j = s % p.k;
    const int64_t row = ld_idx(p.row_map, t, j);
    int64_t slot = -1;
    if (row >= 0 && row < p.plan.send_first[p.W]) {
      const int64_t d = block_of(p.plan.send_first, p.W, row);
      const int64_t i = row - p.plan.send_first[d];
      if (i < p.plan.send_kept[d]) slot = d * p.P + i;
    }
    if (p.to_blocks) {
      st_idx(p.out, t, j, slot);
    } else if (slot < 0 && row >= 0) {
      st_idx(p.out, t, j, -1);  // its row did not fit its peer's block: dropped
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    zero_tail_kernel(const MoeEpPlan plan, const Arg rows, int64_t C, int64_t Hd, int64_t El) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = plan.expert_first[El] + blockIdx.x * int64_t{kWarps} + threadIdx.x / 32; r < C;
       r += int64_t{gridDim.x} * kWarps) {
    T* row = reinterpret_cast<T*>(rows.data) + r * rows.stride[0];
    for (int64_t i = lane; i < Hd; i += 32) row[i * rows.stride[1]] = T{};
  }
}

unsigned row_grid(int64_t rows) {
  return static_cast<unsigned>(std::clamp<int64_t>((rows + kWarps - 1) / kWarps, 1, 8192));
}
unsigned thread_grid(int64_t n) {
  return static_cast<unsigned>(std::clamp<int64_t>((n + 255) / 256, 1, 8192));
}

// Elements as unsigned integers of their size: rows move as bits.
template <class Body>
void by_size(int dtype, Body&& body) {
  if (dtype == kF32) {
    body(uint32_t{});
  } else {
    body(uint16_t{});
  }
}

}  // namespace

size_t moe_ep_plan_words(int64_t W, int64_t El) {
  return size_t(W + 1) + size_t(W) + size_t(W) * size_t(El + 1) + size_t(W) * size_t(El) +
         size_t(El + 1);
}

MoeEpPlan moe_ep_carve_plan(int64_t* words, int64_t W, int64_t El) {
  MoeEpPlan plan;
  plan.send_first = words;
  plan.send_kept = plan.send_first + (W + 1);
  plan.block_first = plan.send_kept + W;
  plan.row_first = plan.block_first + W * (El + 1);
  plan.expert_first = plan.row_first + W * El;
  return plan;
}

cudaError_t launch_moe_ep_stage_counts(MoeIndex counts, int64_t E, int64_t* out,
                                       cudaStream_t stream) {
  if (E > 0) stage_counts_kernel<<<thread_grid(E), 256, 0, stream>>>(counts, E, out);
  return cudaGetLastError();
}

cudaError_t launch_moe_ep_plan(const MoeEpPlanParams& p, cudaStream_t stream) {
  plan_kernel<<<1, kPlanThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_moe_ep_move(const MoeEpMoveParams& p, cudaStream_t stream) {
  const int64_t rows = p.W * p.P;
  if (rows == 0 || p.Hd == 0) return cudaSuccess;
  by_size(p.grouped.dtype, [&]<class T>(T) {
    if (p.vector) {
      move_kernel<T, true><<<row_grid(rows), kThreads, 0, stream>>>(p);
    } else {
      move_kernel<T, false><<<row_grid(rows), kThreads, 0, stream>>>(p);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_moe_ep_slots(const MoeEpSlotParams& p, cudaStream_t stream) {
  const int64_t slots = p.T * p.k;
  if (slots > 0) slots_kernel<<<thread_grid(slots), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_moe_ep_zero_tail(const MoeEpPlan& plan, Arg rows, int64_t C, int64_t Hd,
                                    int64_t El, cudaStream_t stream) {
  if (C == 0 || Hd == 0) return cudaSuccess;
  by_size(rows.dtype, [&]<class T>(T) {
    zero_tail_kernel<T><<<row_grid(C), kThreads, 0, stream>>>(plan, rows, C, Hd, El);
  });
  return cudaGetLastError();
}

}  // namespace hops::cuda
