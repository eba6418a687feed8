// The MoE ops that move rows: moe_dispatch, moe_combine / moe_dispatch_bwd
// (one gather kernel) and moe_combine_bwd. Rows are copied by a warp per
// token in 16-byte pieces where the layouts allow (`vector`), else element by
// element through the strides.
//
// Dispatch's bookkeeping is deterministic without atomics: the T*k slots, in
// (token, slot) order, are cut into at most 512 chunks of a CTA each, a warp
// per equal span of the chunk; (1) each CTA counts its chunk's slots per
// bucket (expert 0..E-1, and bucket E for the dropped slots), a warp's
// counters in smem, into a bucket-major [E + 1][chunks] table; (2) a warp per
// bucket scans its row of the table; (3) each CTA counts its warps again, adds
// the buckets' first rows (experts in ascending order, then the dropped
// slots, which own the zero rows past the kept ones) and places its slots in
// order, ranking the lanes of a bucket by __match_any_sync. The copy kernel
// then writes every row of `rows` exactly once: x[t] for a kept slot, zeros
// for a dropped one.
#include <algorithm>

#include "moe_common.cuh"

namespace hops::cuda {

namespace {

using moe::ld_idx;
using moe::st_idx;

constexpr int kWarps = 8;  // warps per CTA of the row kernels
constexpr int kThreads = 32 * kWarps;
constexpr int kPieces = 4;  // 16-byte pieces in flight per lane

__device__ __forceinline__ int64_t global_warp() {
  return int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32;
}

// ---- dispatch --------------------------------------------------------------------------

constexpr int kChunkWarps = 8;     // warps of a chunk (CTA) where 8 x (E + 1) counters fit in smem
constexpr int kMostChunks = 512;   // chunks (CTAs): enough to fill the GPU, few to scan
constexpr int kSubChunk = 32 * 4;  // slots a warp holds in registers at once (4 per lane)
constexpr int kScanWarps = 8;      // a warp per bucket
constexpr int64_t kMaxHistogram = int64_t{1} << 24;  // entries of the [E + 1][chunks] table
constexpr size_t kSmemLimit = 47 * 1024;  // counters; the place kernel's static smem beside them

struct DispatchScratch {
  int32_t* hist;   // [E + 1][chunks]: counts, then each chunk's first row within its bucket
  int32_t* total;  // [E + 1]: slots per bucket
  int32_t* dest;   // [T*k]: the row of each slot; ~row (negative) for a dropped slot's zero row
  int64_t chunk, chunks;  // slots per chunk (whole warp spans of 32-slot rounds), chunks
  int warps;              // per chunk: kChunkWarps, or 1 where their counters do not fit
  bool shared;            // counters in smem; else (one warp) hist's entries of the chunk
};

// The chunks (at most kMostChunks, and at most kMaxHistogram / (E + 1)) and
// the byte offsets of hist, total and dest; returns the bytes.
size_t dispatch_layout(const MoeDispatchParams& p, DispatchScratch& s, size_t (&offset)[3]) {
  const int64_t slots = p.T * p.k, buckets = p.E + 1;
  s.warps = size_t(kChunkWarps) * size_t(buckets) * 4 <= kSmemLimit ? kChunkWarps : 1;
  s.shared = size_t(s.warps) * size_t(buckets) * 4 <= kSmemLimit;
  const int64_t most = std::clamp<int64_t>(kMaxHistogram / buckets, 1, kMostChunks);
  const int64_t unit = 32 * int64_t{s.warps};
  s.chunk = std::max<int64_t>(unit, moe::ceil_div(moe::ceil_div(slots, most), unit) * unit);
  s.chunks = std::max<int64_t>(1, moe::ceil_div(slots, s.chunk));
  offset[0] = 0;
  offset[1] = moe::align_up(size_t(s.chunks) * size_t(buckets) * 4);
  offset[2] = offset[1] + moe::align_up(size_t(buckets) * 4);
  return offset[2] + size_t(slots) * 4;
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
// at a time: peers are the lanes of the round with the same bucket, rank this
// lane's place among them. Lanes past the end get bucket -1.
template <class Body>
__device__ __forceinline__ void warp_rounds(const MoeDispatchParams& p, int64_t begin, int64_t end,
                                            Body body) {
  const int lane = threadIdx.x & 31;
  const unsigned below = (1u << lane) - 1;
  for (int64_t base = begin; base < end; base += kSubChunk) {
    int32_t b[kSubChunk / 32];
#pragma unroll
    for (int r = 0; r < kSubChunk / 32; ++r) {  // all loads first: one latency per sub-chunk
      const int64_t s = base + 32 * r + lane;
      b[r] = s < end ? bucket(p, s) : -1;
    }
#pragma unroll
    for (int r = 0; r < kSubChunk / 32; ++r) {
      if (base + 32 * r >= end) break;
      const unsigned peers = __match_any_sync(0xffffffffu, b[r]);
      body(b[r], peers, __popc(peers & below), base + 32 * r + lane);
    }
  }
}

// A warp's counters, one per bucket: in smem, or (one warp per chunk, the
// counters too many for smem) the chunk's entries of hist.
struct Counters {
  int32_t* base;
  int64_t step;
  __device__ int32_t& operator[](int64_t b) const { return base[b * step]; }
};

__device__ __forceinline__ Counters warp_counters(const DispatchScratch& s, int64_t buckets,
                                                  int32_t* smem) {
  const int warp = threadIdx.x / 32;
  return s.shared ? Counters{smem + warp * buckets, 1} : Counters{s.hist + blockIdx.x, s.chunks};
}

// The warp's slots of chunk blockIdx.x counted per bucket into ctr (zeroed
// here): warp w owns the w-th of kWarps equal spans of the chunk.
template <int kWarps>
__device__ __forceinline__ void count_span(const MoeDispatchParams& p, const DispatchScratch& s,
                                           const Counters& ctr) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  for (int64_t b = lane; b <= p.E; b += 32) ctr[b] = 0;
  __syncwarp();
  const int64_t span = s.chunk / kWarps, begin = blockIdx.x * s.chunk + warp * span;
  warp_rounds(p, begin, std::min(p.T * p.k, begin + span),
              [&](int32_t b, unsigned peers, int rank, int64_t) {
                if (b >= 0 && rank == 0) ctr[b] += __popc(peers);  // one writer per bucket
                __syncwarp();
              });
}

// (1) hist[b][c] := chunk c's slots of bucket b.
template <int kWarps>
__global__ void __launch_bounds__(32 * kWarps)
    dispatch_count_kernel(const MoeDispatchParams p, const DispatchScratch s) {
  extern __shared__ int32_t counters[];
  const int64_t buckets = p.E + 1;
  count_span<kWarps>(p, s, warp_counters(s, buckets, counters));
  if (!s.shared) return;  // counted in hist directly
  __syncthreads();
  for (int64_t b = threadIdx.x; b < buckets; b += 32 * kWarps) {
    int32_t n = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) n += counters[w * buckets + b];
    s.hist[b * s.chunks + blockIdx.x] = n;
  }
}

// (2) A warp per bucket b: hist[b][c] := the exclusive sum over the chunks
// before c; total[b] and counts[b] := the bucket's slots.
__global__ void __launch_bounds__(32 * kScanWarps)
    dispatch_scan_kernel(const MoeDispatchParams p, const DispatchScratch s) {
  const int64_t b = global_warp();
  if (b > p.E) return;
  const int lane = threadIdx.x & 31;
  int32_t* row = s.hist + b * s.chunks;
  int32_t v[kMostChunks / 32];
#pragma unroll
  for (int i = 0; i < kMostChunks / 32; ++i) {  // all loads first
    const int64_t c = 32 * i + lane;
    v[i] = c < s.chunks ? row[c] : 0;
  }
  int32_t carry = 0;
#pragma unroll
  for (int i = 0; i < kMostChunks / 32; ++i) {
    if (32 * i >= s.chunks) break;
    int32_t inclusive = v[i];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int32_t y = __shfl_up_sync(0xffffffffu, inclusive, o);
      if (lane >= o) inclusive += y;
    }
    if (32 * i + lane < s.chunks) row[32 * i + lane] = carry + inclusive - v[i];
    carry += __shfl_sync(0xffffffffu, inclusive, 31);
  }
  if (lane == 0) {
    s.total[b] = carry;
    if (b < p.E) st_idx(p.counts, b, 0, carry);
  }
}

// (3) Each warp's first row per bucket: the bucket's first row (the totals of
// the buckets before it: experts in ascending order, then the dropped slots,
// which own the zero rows past the kept ones) + the chunk's first row within
// the bucket + the earlier warps' counts of the chunk (counted again here);
// then the warp places its span's slots in order.
template <int kWarps>
__global__ void __launch_bounds__(32 * kWarps)
    dispatch_place_kernel(const MoeDispatchParams p, const DispatchScratch s) {
  extern __shared__ int32_t counters[];
  __shared__ int64_t partial[kWarps];
  const int64_t buckets = p.E + 1, c = blockIdx.x;
  const Counters next = warp_counters(s, buckets, counters);
  if (kWarps > 1) count_span<kWarps>(p, s, next);
  __syncthreads();  // every warp's counts
  const int64_t per = moe::ceil_div(buckets, 32 * kWarps);
  const int64_t b0 = std::min<int64_t>(buckets, threadIdx.x * per);
  const int64_t b1 = std::min(buckets, b0 + per);
  int64_t sum = 0;
  for (int64_t b = b0; b < b1; ++b) sum += s.total[b];
  int64_t all;
  int64_t first = moe::block_exclusive_scan<32 * kWarps>(sum, INT64_MAX / 2, partial, all);
  for (int64_t b = b0; b < b1; ++b) {
    int64_t row = first + s.hist[b * s.chunks + c];
    first += s.total[b];
    if (!s.shared) {  // one warp: the chunk's entry becomes its counter
      s.hist[b * s.chunks + c] = static_cast<int32_t>(row);
      continue;
    }
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      int32_t& at = counters[w * buckets + b];
      const int32_t n = w + 1 < kWarps ? at : 0;  // the last warp's own count is not needed
      at = static_cast<int32_t>(row);
      row += n;
    }
  }
  __syncthreads();
  const int warp = threadIdx.x / 32;
  const int64_t span = s.chunk / kWarps, begin = c * s.chunk + warp * span;
  warp_rounds(p, begin, std::min(p.T * p.k, begin + span),
              [&](int32_t b, unsigned peers, int rank, int64_t slot) {
                const int32_t row = b >= 0 ? next[b] + rank : 0;
                __syncwarp();  // every lane has read next[b] before its leader moves it
                if (b >= 0 && rank == 0) next[b] = row + __popc(peers);
                __syncwarp();
                if (b < 0) return;
                const bool kept = b < p.E;
                st_idx(p.row_map, slot_token(slot, p.k), slot_index(slot, p.k), kept ? row : -1);
                s.dest[slot] = kept ? row : ~row;
              });
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
  DispatchScratch s;
  size_t offset[3];
  return dispatch_layout(p, s, offset);
}

cudaError_t launch_moe_dispatch(const MoeDispatchParams& p, void* scratch, cudaStream_t stream) {
  DispatchScratch s;
  size_t offset[3];
  dispatch_layout(p, s, offset);
  char* base = static_cast<char*>(scratch);
  s.hist = reinterpret_cast<int32_t*>(base + offset[0]);
  s.total = reinterpret_cast<int32_t*>(base + offset[1]);
  s.dest = reinterpret_cast<int32_t*>(base + offset[2]);
  const size_t smem = s.shared ? size_t(s.warps) * size_t(p.E + 1) * 4 : 0;
  const auto chunks = static_cast<unsigned>(s.chunks);
  if (s.warps == kChunkWarps) {
    dispatch_count_kernel<kChunkWarps><<<chunks, 32 * kChunkWarps, smem, stream>>>(p, s);
  } else {
    dispatch_count_kernel<1><<<chunks, 32, smem, stream>>>(p, s);
  }
  dispatch_scan_kernel<<<static_cast<unsigned>(moe::ceil_div(p.E + 1, kScanWarps)), 32 * kScanWarps,
                         0, stream>>>(p, s);
  if (s.warps == kChunkWarps) {
    dispatch_place_kernel<kChunkWarps><<<chunks, 32 * kChunkWarps, smem, stream>>>(p, s);
  } else {
    dispatch_place_kernel<1><<<chunks, 32, smem, stream>>>(p, s);
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
