// The MoE ops that move rows: moe_dispatch, moe_combine / moe_dispatch_bwd
// (one gather kernel) and moe_combine_bwd. Rows are copied by a warp per
// token in 16-byte pieces where the layouts allow (`vector`), else element by
// element through the strides.
//
// Dispatch's bookkeeping is deterministic without atomics: the T*k slots, in
// (token, slot) order, are cut into chunks of a warp each; (1) each warp
// counts its chunk's slots per bucket (expert 0..E-1, and bucket E for the
// dropped slots); (2) one CTA turns the per-chunk counts into each chunk's
// first row per bucket (experts in ascending order, then the dropped slots,
// which own the zero rows past the kept ones); (3) each warp places its
// chunk's slots in order, ranking the lanes of a bucket by __match_any_sync.
// The copy kernel then writes every row of `rows` exactly once: x[t] for a
// kept slot, zeros for a dropped one. v2's bookkeeping (moe_dispatch_v2.cu) is
// the default; HOPS_CUDA_MOE_DISPATCH=v1 runs this one, =v3 v2's with
// moe_dispatch_v2.cu's copy kernel where the rows are vectors.
#include <algorithm>

#include "moe_common.cuh"

namespace hops::cuda {

namespace {

using moe::ld_idx;
using moe::place_slots;
using moe::slot_index;
using moe::slot_rounds;
using moe::slot_token;
using moe::st_idx;

constexpr int kWarps = 8;  // warps per CTA of the row kernels
constexpr int kThreads = 32 * kWarps;
constexpr int kPieces = 4;  // 16-byte pieces in flight per lane

__device__ __forceinline__ int64_t global_warp() {
  return int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32;
}

// ---- dispatch --------------------------------------------------------------------------

constexpr int kChunkWarps = 4;      // warps (chunks) per CTA of the count and place kernels
constexpr int kSubChunk = 32 * 32;  // slots a warp holds in registers at once (32 per lane)
constexpr int kScanThreads = 1024;
constexpr int64_t kMaxHistogram = int64_t{1} << 24;  // entries of the per-chunk counts
constexpr size_t kSmemLimit = 48 * 1024;

struct DispatchScratch {
  int32_t* hist;   // [chunks][E + 1]: counts, then each chunk's first row per bucket
  int32_t* total;  // [E + 1]: slots per bucket, then each bucket's first row
  int32_t* dest;   // [T*k]: the row of each slot; ~row (negative) for a dropped slot's zero row
  int64_t chunk, chunks;
  bool shared;  // counters in smem (kChunkWarps x (E + 1) ints fit)
};

// The chunks (at most kMaxHistogram / (E + 1) of them, whole sub-chunks
// each) and the byte offsets of hist, total and dest; returns the bytes.
size_t dispatch_layout(const MoeDispatchParams& p, DispatchScratch& s, size_t (&offset)[3]) {
  const int64_t slots = p.T * p.k, buckets = p.E + 1;
  const int64_t most = std::max<int64_t>(1, kMaxHistogram / buckets);
  s.chunk = std::max<int64_t>(kSubChunk,
                              moe::ceil_div(moe::ceil_div(slots, most), kSubChunk) * kSubChunk);
  s.chunks = std::max<int64_t>(1, moe::ceil_div(slots, s.chunk));
  s.shared = size_t(kChunkWarps) * size_t(buckets) * 4 <= kSmemLimit;
  offset[0] = 0;
  offset[1] = moe::align_up(size_t(s.chunks) * size_t(buckets) * 4);
  offset[2] = offset[1] + moe::align_up(size_t(buckets) * 4);
  return offset[2] + size_t(slots) * 4;
}

__global__ void __launch_bounds__(32 * kChunkWarps)
    dispatch_count_kernel(const MoeDispatchParams p, const DispatchScratch s) {
  extern __shared__ int32_t counters[];
  const int64_t c = global_warp();
  if (c >= s.chunks) return;
  const int lane = threadIdx.x & 31;
  const int64_t buckets = p.E + 1;
  int32_t* hist = s.hist + c * (p.E + 1);
  int32_t* ctr = s.shared ? counters + (threadIdx.x / 32) * (p.E + 1) : hist;
  for (int64_t b = lane; b < buckets; b += 32) ctr[b] = 0;
  __syncwarp();
  const int64_t begin = c * s.chunk, end = std::min(p.T * p.k, begin + s.chunk);
  slot_rounds<kSubChunk / 32>(p, begin, end, [&](int32_t b, unsigned peers, int rank, int64_t) {
    if (b >= 0 && rank == 0) ctr[b] += __popc(peers);  // one writer per bucket
    __syncwarp();
  });
  if (s.shared)
    for (int64_t b = lane; b < buckets; b += 32) hist[b] = ctr[b];
}

// hist[c][b] := the first row of chunk c's slots of bucket b; total[b] :=
// bucket b's first row; counts[e] := the slots of expert e.
__global__ void __launch_bounds__(kScanThreads)
    dispatch_scan_kernel(const MoeDispatchParams p, const DispatchScratch s) {
  __shared__ int64_t partial[kScanThreads / 32];
  const int64_t buckets = p.E + 1;
  for (int64_t b = threadIdx.x; b < buckets; b += kScanThreads) {
    int32_t before = 0;
#pragma unroll 8
    for (int64_t c = 0; c < s.chunks; ++c) {
      const int32_t n = s.hist[c * buckets + b];
      s.hist[c * buckets + b] = before;
      before += n;
    }
    s.total[b] = before;
  }
  __syncthreads();
  const int64_t per = (buckets + kScanThreads - 1) / kScanThreads;
  const int64_t b0 = std::min(buckets, threadIdx.x * per), b1 = std::min(buckets, b0 + per);
  int64_t sum = 0;
  for (int64_t b = b0; b < b1; ++b) sum += s.total[b];
  int64_t all;
  int64_t first = moe::block_exclusive_scan<kScanThreads>(sum, INT64_MAX / 2, partial, all);
  for (int64_t b = b0; b < b1; ++b) {
    const int32_t n = s.total[b];
    if (b < p.E) st_idx(p.counts, b, 0, n);
    s.total[b] = static_cast<int32_t>(first);
    first += n;
  }
  __syncthreads();
  for (int64_t b = threadIdx.x; b < buckets; b += kScanThreads) {
    const int32_t offset = s.total[b];
#pragma unroll 8
    for (int64_t c = 0; c < s.chunks; ++c) s.hist[c * buckets + b] += offset;
  }
}

__global__ void __launch_bounds__(32 * kChunkWarps)
    dispatch_place_kernel(const MoeDispatchParams p, const DispatchScratch s) {
  extern __shared__ int32_t counters[];
  const int64_t c = global_warp();
  if (c >= s.chunks) return;
  const int lane = threadIdx.x & 31;
  const int64_t buckets = p.E + 1;
  int32_t* hist = s.hist + c * (p.E + 1);
  int32_t* next = hist;  // the next row of each bucket
  if (s.shared) {
    next = counters + (threadIdx.x / 32) * (p.E + 1);
    for (int64_t b = lane; b < buckets; b += 32) next[b] = hist[b];
    __syncwarp();
  }
  const int64_t begin = c * s.chunk, end = std::min(p.T * p.k, begin + s.chunk);
  place_slots<kSubChunk / 32>(p, begin, end, next, s.dest);
}

// A warp per token: x[t] to the rows of its slots, zeros to its dropped
// slots' rows.
template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    dispatch_copy_kernel(const MoeDispatchParams p, const int32_t* dest) {
  const int64_t t = global_warp();
  if (t >= p.T) return;
  const int lane = threadIdx.x & 31;
  const T* x = reinterpret_cast<const T*>(p.x.data) + t * p.x.stride[0];
  T* rows = reinterpret_cast<T*>(p.rows.data);
  const int32_t* d = dest + t * p.k;
  if constexpr (kVector) {
    constexpr int kV = 16 / sizeof(T);
    const int64_t pieces = p.Hd / kV;
    for (int64_t p0 = 0; p0 < pieces; p0 += 32 * kPieces) {
      uint4 v[kPieces];
#pragma unroll
      for (int u = 0; u < kPieces; ++u) {
        const int64_t piece = p0 + 32 * u + lane;
        if (piece < pieces) v[u] = reinterpret_cast<const uint4*>(x)[piece];
      }
      for (int64_t j = 0; j < p.k; ++j) {
        const int32_t r = d[j];
        uint4* out = reinterpret_cast<uint4*>(rows + (r >= 0 ? r : ~r) * p.rows.stride[0]);
#pragma unroll
        for (int u = 0; u < kPieces; ++u) {
          const int64_t piece = p0 + 32 * u + lane;
          if (piece < pieces) out[piece] = r >= 0 ? v[u] : make_uint4(0, 0, 0, 0);
        }
      }
    }
  } else {
    for (int64_t i = lane; i < p.Hd; i += 32) {
      const T v = x[i * p.x.stride[1]];
      for (int64_t j = 0; j < p.k; ++j) {
        const int32_t r = d[j];
        rows[(r >= 0 ? r : ~r) * p.rows.stride[0] + i * p.rows.stride[1]] = r >= 0 ? v : T{};
      }
    }
  }
}

// ---- combine and dispatch_bwd -------------------------------------------------------------

// The row of slot (t, j), or -1 when dropped or outside [0, R).
__device__ __forceinline__ int64_t slot_row(const MoeIndex& map, int64_t t, int64_t j, int64_t R) {
  const int64_t r = ld_idx(map, t, j);
  return r >= 0 && r < R ? r : -1;
}

// A warp per token: out[t] = sum over the slots j in order of w[t, j]
// rows[row_map[t, j]] (w = 1 without weights), f32 accumulation. Lanes hold
// kPieces 16-byte pieces of the output; slots go two at a time so that both
// rows' loads are in flight together.
template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads) gather_kernel(const MoeGatherParams p) {
  const int64_t t = global_warp();
  if (t >= p.T) return;
  const int lane = threadIdx.x & 31;
  const T* rows = reinterpret_cast<const T*>(p.rows.data);
  T* out = reinterpret_cast<T*>(p.out.data) + t * p.out.stride[0];
  const auto weight = [&](int64_t j) {
    return p.weights.data ? ld(p.weights.data, p.weights.dtype,
                               t * p.weights.stride[0] + j * p.weights.stride[1])
                          : 1.0f;
  };
  if constexpr (kVector) {
    constexpr int kV = 16 / sizeof(T);
    const int64_t pieces = p.Hd / kV;
    for (int64_t p0 = 0; p0 < pieces; p0 += 32 * kPieces) {
      float acc[kPieces][kV] = {};
      for (int64_t j0 = 0; j0 < p.k; j0 += 32) {
        const int64_t mine = j0 + lane;  // this lane fetches slot j0 + lane's row and weight
        const int64_t my_row = mine < p.k ? slot_row(p.row_map, t, mine, p.R) : -1;
        const float my_w = mine < p.k ? weight(mine) : 0.0f;
        const int n = static_cast<int>(std::min<int64_t>(32, p.k - j0));
        for (int jj = 0; jj < n; jj += 2) {
          int64_t r[2];
          float w[2];
          uint4 v[2][kPieces];
#pragma unroll
          for (int s = 0; s < 2; ++s) {
            r[s] = __shfl_sync(0xffffffffu, my_row, (jj + s) & 31);
            w[s] = __shfl_sync(0xffffffffu, my_w, (jj + s) & 31);
            if (jj + s >= n) r[s] = -1;
#pragma unroll
            for (int u = 0; u < kPieces; ++u) {
              const int64_t piece = p0 + 32 * u + lane;
              if (r[s] >= 0 && piece < pieces)
                v[s][u] = reinterpret_cast<const uint4*>(rows + r[s] * p.rows.stride[0])[piece];
            }
          }
#pragma unroll
          for (int s = 0; s < 2; ++s) {
            if (r[s] < 0) continue;
#pragma unroll
            for (int u = 0; u < kPieces; ++u) {
              float f[kV];
              unpack16<T, kV>(v[s][u], f);
#pragma unroll
              for (int c = 0; c < kV; ++c) acc[u][c] = fmaf(w[s], f[c], acc[u][c]);
            }
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kPieces; ++u) {
        const int64_t piece = p0 + 32 * u + lane;
        if (piece < pieces) reinterpret_cast<uint4*>(out)[piece] = pack16<T, kV>(acc[u]);
      }
    }
  } else {
    for (int64_t i = lane; i < p.Hd; i += 32) {
      float acc = 0.0f;
      for (int64_t j = 0; j < p.k; ++j) {
        const int64_t r = slot_row(p.row_map, t, j, p.R);
        if (r >= 0)
          acc = fmaf(weight(j), to_f(rows[r * p.rows.stride[0] + i * p.rows.stride[1]]), acc);
      }
      out[i * p.out.stride[1]] = from_f<T>(acc);
    }
  }
}

// ---- combine_bwd ---------------------------------------------------------------------------

// Each row's gradient comes from one slot: the last slot (in (token, slot)
// order) naming it, found by an integer max, which no scheduling changes. A
// host-resident map names no row twice; a device-resident one may, and the
// rows no slot names get zeros.
__global__ void claim_rows_kernel(const MoeCombineBwdParams p, int32_t* owner) {
  const int64_t slots = p.T * p.k;
  for (int64_t s = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; s < slots;
       s += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = slot_row(p.row_map, slot_token(s, p.k), slot_index(s, p.k), p.R);
    if (r >= 0) atomicMax(owner + r, static_cast<int32_t>(s));
  }
}

// A warp per token and slot in order: d_rows[r] = w dy[t] where the slot owns
// row r; d_w[t, j] = <dy[t], rows[r]> (lane partials, then a fixed tree).
template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    combine_bwd_kernel(const MoeCombineBwdParams p, const int32_t* owner) {
  const int64_t t = global_warp();
  if (t >= p.T) return;
  const int lane = threadIdx.x & 31;
  const T* dy = reinterpret_cast<const T*>(p.dy.data) + t * p.dy.stride[0];
  const T* rows = reinterpret_cast<const T*>(p.rows.data);
  T* d_rows = reinterpret_cast<T*>(p.d_rows.data);
  for (int64_t j = 0; j < p.k; ++j) {
    const int64_t r = slot_row(p.row_map, t, j, p.R);
    const bool owns = r >= 0 && owner[r] == t * p.k + j;
    const bool dot = p.d_weights.data && r >= 0;
    if (!owns && !dot) {
      if (p.d_weights.data && lane == 0)
        st(p.d_weights.data, p.d_weights.dtype,
           t * p.d_weights.stride[0] + j * p.d_weights.stride[1], 0.0f);
      continue;
    }
    const float w =
        ld(p.weights.data, p.weights.dtype, t * p.weights.stride[0] + j * p.weights.stride[1]);
    float partial = 0.0f;
    if constexpr (kVector) {
      constexpr int kV = 16 / sizeof(T);
      const int64_t pieces = p.Hd / kV;
      const uint4* src = reinterpret_cast<const uint4*>(rows + (dot ? r : 0) * p.rows.stride[0]);
      uint4* dst = reinterpret_cast<uint4*>(d_rows + (owns ? r : 0) * p.d_rows.stride[0]);
      for (int64_t piece = lane; piece < pieces; piece += 32) {
        float g[kV];
        unpack16<T, kV>(reinterpret_cast<const uint4*>(dy)[piece], g);
        if (dot) {
          float x[kV];
          unpack16<T, kV>(src[piece], x);
#pragma unroll
          for (int c = 0; c < kV; ++c) partial = fmaf(g[c], x[c], partial);
        }
        if (owns) {
#pragma unroll
          for (int c = 0; c < kV; ++c) g[c] *= w;
          dst[piece] = pack16<T, kV>(g);
        }
      }
    } else {
      for (int64_t i = lane; i < p.Hd; i += 32) {
        const float g = to_f(dy[i * p.dy.stride[1]]);
        if (dot)
          partial = fmaf(g, to_f(rows[r * p.rows.stride[0] + i * p.rows.stride[1]]), partial);
        if (owns) d_rows[r * p.d_rows.stride[0] + i * p.d_rows.stride[1]] = from_f<T>(w * g);
      }
    }
    if (p.d_weights.data) {
      const float d = warp_sum(partial);
      if (lane == 0)
        st(p.d_weights.data, p.d_weights.dtype,
           t * p.d_weights.stride[0] + j * p.d_weights.stride[1], dot ? d : 0.0f);
    }
  }
}

// A warp per row that no slot owns: zeros.
template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    zero_unowned_kernel(const MoeCombineBwdParams p, const int32_t* owner) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t{gridDim.x} * kWarps;
  T* d_rows = reinterpret_cast<T*>(p.d_rows.data);
  for (int64_t r = global_warp(); r < p.R; r += warps) {
    if (owner[r] >= 0) continue;
    T* row = d_rows + r * p.d_rows.stride[0];
    if constexpr (kVector) {
      for (int64_t piece = lane; piece < p.Hd * int64_t{sizeof(T)} / 16; piece += 32)
        reinterpret_cast<uint4*>(row)[piece] = make_uint4(0, 0, 0, 0);
    } else {
      for (int64_t i = lane; i < p.Hd; i += 32) row[i * p.d_rows.stride[1]] = T{};
    }
  }
}

unsigned warp_grid(int64_t warps) {
  return static_cast<unsigned>(std::max<int64_t>(1, (warps + kWarps - 1) / kWarps));
}

}  // namespace

size_t moe_dispatch_scratch_bytes(const MoeDispatchParams& p) {
  if (p.version != MoeDispatchVersion::v1) return moe::dispatch_v2_scratch_bytes(p);
  DispatchScratch s;
  size_t offset[3];
  return dispatch_layout(p, s, offset);
}

cudaError_t launch_moe_dispatch(const MoeDispatchParams& p, void* scratch, cudaStream_t stream) {
  DispatchScratch s;
  if (p.version != MoeDispatchVersion::v1) {
    const cudaError_t status = moe::launch_dispatch_v2_rows(p, scratch, s.dest, stream);
    if (status != cudaSuccess) return status;
    if (p.version == MoeDispatchVersion::v3 && p.vector && p.T * p.k > 0 && p.Hd > 0)
      return moe::launch_dispatch_v3_copy(p, s.dest, stream);
  } else {
    size_t offset[3];
    dispatch_layout(p, s, offset);
    char* base = static_cast<char*>(scratch);
    s.hist = reinterpret_cast<int32_t*>(base + offset[0]);
    s.total = reinterpret_cast<int32_t*>(base + offset[1]);
    s.dest = reinterpret_cast<int32_t*>(base + offset[2]);
    const size_t smem = s.shared ? size_t(kChunkWarps) * size_t(p.E + 1) * 4 : 0;
    const auto chunk_grid = static_cast<unsigned>((s.chunks + kChunkWarps - 1) / kChunkWarps);
    dispatch_count_kernel<<<chunk_grid, 32 * kChunkWarps, smem, stream>>>(p, s);
    dispatch_scan_kernel<<<1, kScanThreads, 0, stream>>>(p, s);
    dispatch_place_kernel<<<chunk_grid, 32 * kChunkWarps, smem, stream>>>(p, s);
  }
  if (p.T * p.k > 0 && p.Hd > 0) {
    by_dtype(p.x.dtype, [&]<class T>(T) {
      if (p.vector) {
        dispatch_copy_kernel<T, true><<<warp_grid(p.T), kThreads, 0, stream>>>(p, s.dest);
      } else {
        dispatch_copy_kernel<T, false><<<warp_grid(p.T), kThreads, 0, stream>>>(p, s.dest);
      }
    });
  }
  return cudaGetLastError();
}

cudaError_t launch_moe_gather(const MoeGatherParams& p, cudaStream_t stream) {
  if (p.T == 0 || p.Hd == 0) return cudaSuccess;
  by_dtype(p.rows.dtype, [&]<class T>(T) {
    if (p.vector) {
      gather_kernel<T, true><<<warp_grid(p.T), kThreads, 0, stream>>>(p);
    } else {
      gather_kernel<T, false><<<warp_grid(p.T), kThreads, 0, stream>>>(p);
    }
  });
  return cudaGetLastError();
}

size_t moe_combine_bwd_scratch_bytes(const MoeCombineBwdParams& p) { return size_t(p.R) * 4; }

cudaError_t launch_moe_combine_bwd(const MoeCombineBwdParams& p, void* scratch,
                                   cudaStream_t stream) {
  auto* owner = static_cast<int32_t*>(scratch);
  if (p.R > 0) {
    cudaError_t status = cudaMemsetAsync(owner, 0xff, size_t(p.R) * 4, stream);  // -1: no owner
    if (status != cudaSuccess) return status;
  }
  const int64_t slots = p.T * p.k;
  if (slots > 0) {
    claim_rows_kernel<<<static_cast<unsigned>(std::min<int64_t>((slots + 255) / 256, 65536)), 256,
                        0, stream>>>(p, owner);
  }
  by_dtype(p.rows.dtype, [&]<class T>(T) {
    const auto run = [&]<bool kVector>() {
      if (slots > 0)
        combine_bwd_kernel<T, kVector><<<warp_grid(p.T), kThreads, 0, stream>>>(p, owner);
      if (p.R > 0 && p.Hd > 0) {
        zero_unowned_kernel<T, kVector>
            <<<static_cast<unsigned>(std::min<int64_t>(warp_grid(p.R), 8192)), kThreads, 0,
               stream>>>(p, owner);
      }
    };
    if (p.vector) {
      run.template operator()<true>();
    } else {
      run.template operator()<false>();
    }
  });
  return cudaGetLastError();
}

}  // namespace hops::cuda
