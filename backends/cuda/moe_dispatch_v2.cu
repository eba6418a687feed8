// moe_dispatch's bookkeeping, v2 (the default; HOPS_CUDA_MOE_DISPATCH=v1 runs
// moe_rows.cu's v1; the copy kernel is moe_rows.cu's for both), and v3's copy
// kernel. Deterministic without atomics: the T*k slots, in (token, slot)
// order, are cut into at most 512 chunks of a CTA each, a warp per equal span
// of the chunk; (1) each CTA counts its chunk's slots per bucket (expert
// 0..E-1, and bucket E for the dropped slots), a warp's counters in smem, into
// a bucket-major [E + 1][chunks] table; (2) a warp per bucket scans its row of
// the table; (3) each CTA counts its warps again, adds the buckets' first rows
// (experts in ascending order, then the dropped slots, which own the zero rows
// past the kept ones) and places its slots in order, ranking the lanes of a
// bucket by __match_any_sync: row_map, and each slot's row for the copy
// kernel.
//
// v3 (HOPS_CUDA_MOE_DISPATCH=v3) launches the same kernels, each after the
// first as a programmatic dependent of the one before (sm_90 code): a
// kernel's CTAs start while the one before runs and wait (griddepcontrol.wait)
// for its completion before reading what it wrote, which hides the launch
// gaps between the four kernels; the place kernel recounts its warps' ids
// before that wait, and v3's copy kernel loads its tokens' x rows before it.
// =v3-chain runs that chain with moe_rows.cu's copy kernel, launched as usual.
#include <algorithm>

#include "moe_common.cuh"
#include "wgmma.cuh"

namespace hops::cuda::moe {

namespace {

__device__ __forceinline__ int64_t global_warp() {
  return int64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32;
}

// Programmatic dependent launch (v3): let the next kernel's CTAs start, and
// wait for the kernel before (both no-ops in a kernel launched as usual:
// v2's launches). The first kernel of a call is launched as usual, so
// everything before the call (x, the ids) is complete when any of the call's
// kernels starts: only what an earlier kernel of the chain writes needs the
// wait.
__device__ __forceinline__ void start_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  sm90::launch_dependents();
#endif
}
__device__ __forceinline__ void wait_prerequisites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  sm90::wait_prerequisites();
#endif
}

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
  s.chunk = std::max<int64_t>(unit, ceil_div(ceil_div(slots, most), unit) * unit);
  s.chunks = std::max<int64_t>(1, ceil_div(slots, s.chunk));
  offset[0] = 0;
  offset[1] = align_up(size_t(s.chunks) * size_t(buckets) * 4);
  offset[2] = offset[1] + align_up(size_t(buckets) * 4);
  return offset[2] + size_t(slots) * 4;
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
  slot_rounds<kSubChunk / 32>(p, begin, std::min(p.T * p.k, begin + span),
                              [&](int32_t b, unsigned peers, int rank, int64_t) {
                                if (b >= 0 && rank == 0)
                                  ctr[b] += __popc(peers);  // one writer per bucket
                                __syncwarp();
                              });
}

// (1) hist[b][c] := chunk c's slots of bucket b.
template <int kWarps>
__global__ void __launch_bounds__(32 * kWarps)
    dispatch_count_kernel(const MoeDispatchParams p, const DispatchScratch s) {
  extern __shared__ int32_t counters[];
  start_dependents();  // launched as usual: nothing to wait for
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
  start_dependents();
  wait_prerequisites();  // the counts
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
  start_dependents();
  if (kWarps > 1) count_span<kWarps>(p, s, next);  // the ids and smem only: before the wait
  wait_prerequisites();                            // the scan
  __syncthreads();                                 // every warp's counts
  const int64_t per = ceil_div(buckets, 32 * kWarps);
  const int64_t b0 = std::min<int64_t>(buckets, threadIdx.x * per);
  const int64_t b1 = std::min(buckets, b0 + per);
  int64_t sum = 0;
  for (int64_t b = b0; b < b1; ++b) sum += s.total[b];
  int64_t all;
  int64_t first = block_exclusive_scan<32 * kWarps>(sum, INT64_MAX / 2, partial, all);
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
  place_slots<kSubChunk / 32>(p, begin, std::min(p.T * p.k, begin + span), next, s.dest);
}

constexpr int kCopyWarps = 8;   // warps (tokens) per CTA of v3's copy kernel
constexpr int kCopyPieces = 8;  // 16-byte pieces per lane at once: a 4 KB row (Hd 2048, 16-bit)

// v3's copy, a warp per token as moe_rows.cu's: x[t] to the rows of its kept
// slots, zeros to its dropped slots' rows. Its first kCopyPieces pieces per
// lane are loaded before the wait for the place kernel (x is complete before
// the call), so the CTAs resident during the bookkeeping hold their rows when
// it ends; the slots' rows come from one load of dest per lane and shuffles;
// rows are written with streaming stores (st.global.cs: 256 MiB written once,
// which need not stay in L2). At most 64 registers: 4 CTAs per SM.
template <class T>
__global__ void __launch_bounds__(32 * kCopyWarps, 4)
    dispatch_copy_kernel(const MoeDispatchParams p, const int32_t* dest) {
  const int64_t t = global_warp();
  if (t >= p.T) return;
  const int lane = threadIdx.x & 31;
  constexpr int kV = 16 / sizeof(T);
  const int64_t pieces = p.Hd / kV;
  const auto* x =
      reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(p.x.data) + t * p.x.stride[0]);
  T* rows = reinterpret_cast<T*>(p.rows.data);
  uint4 v[kCopyPieces];
  int live = 0;  // pieces of the batch at p0: lane l holds pieces 32 u + l < live
  const auto load = [&](int64_t p0) {
    live = static_cast<int>(std::min<int64_t>(pieces - p0, 32 * kCopyPieces));
#pragma unroll
    for (int u = 0; u < kCopyPieces; ++u)
      if (32 * u + lane < live) v[u] = x[p0 + 32 * u + lane];
  };
  load(0);
  wait_prerequisites();  // dest
  for (int64_t p0 = 0; p0 < pieces; p0 += 32 * kCopyPieces) {
    if (p0 > 0) load(p0);
    for (int64_t j0 = 0; j0 < p.k; j0 += 32) {
      const int32_t mine = j0 + lane < p.k ? dest[t * p.k + j0 + lane] : 0;
      const int n = static_cast<int>(std::min<int64_t>(32, p.k - j0));
      for (int j = 0; j < n; ++j) {
        const int32_t r = __shfl_sync(0xffffffffu, mine, j);
        auto* out = reinterpret_cast<uint4*>(rows + (r >= 0 ? r : ~r) * p.rows.stride[0]) + p0;
#pragma unroll
        for (int u = 0; u < kCopyPieces; ++u)
          if (32 * u + lane < live)
            __stcs(out + 32 * u + lane, r >= 0 ? v[u] : make_uint4(0, 0, 0, 0));
      }
    }
  }
}

// Whether the module runs sm_90 code here (the kernels' griddepcontrol): the
// scan kernel's PTX version, read once (a module built for sm_8x only, or run
// from compute_80 PTX on a Hopper, has none, and v3 then launches as usual).
bool sm90_code() {
  static const bool sm90 = [] {
    cudaFuncAttributes attributes{};
    const bool found = cudaFuncGetAttributes(&attributes, dispatch_scan_kernel) == cudaSuccess;
    (void)cudaGetLastError();  // not sticky; leave no error for later launches to report
    return found && attributes.ptxVersion >= 90;
  }();
  return sm90;
}

// A launch as usual, or (dependent) as a programmatic dependent of the
// stream's kernel before it where the module runs sm_90 code.
template <class... Params, class... Args>
cudaError_t launch(bool dependent, void (*kernel)(Params...), unsigned grid, unsigned block,
                   size_t smem, cudaStream_t stream, const Args&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(block);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute overlap{};
  overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap.val.programmaticStreamSerializationAllowed = 1;
  if (dependent && sm90_code()) config.attrs = &overlap, config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, args...);
}

}  // namespace

size_t dispatch_v2_scratch_bytes(const MoeDispatchParams& p) {
  DispatchScratch s;
  size_t offset[3];
  return dispatch_layout(p, s, offset);
}

cudaError_t launch_dispatch_v2_rows(const MoeDispatchParams& p, void* scratch, int32_t*& dest,
                                    cudaStream_t stream) {
  DispatchScratch s;
  size_t offset[3];
  dispatch_layout(p, s, offset);
  char* base = static_cast<char*>(scratch);
  s.hist = reinterpret_cast<int32_t*>(base + offset[0]);
  s.total = reinterpret_cast<int32_t*>(base + offset[1]);
  s.dest = dest = reinterpret_cast<int32_t*>(base + offset[2]);
  const size_t smem = s.shared ? size_t(s.warps) * size_t(p.E + 1) * 4 : 0;
  const auto chunks = static_cast<unsigned>(s.chunks);
  // v3: the first kernel waits for the stream as usual, the others only for their predecessor
  const bool chain =
      p.version == MoeDispatchVersion::v3 || p.version == MoeDispatchVersion::v3_chain;
  const bool wide = s.warps == kChunkWarps;
  const unsigned block = wide ? 32 * kChunkWarps : 32;
  cudaError_t status =
      launch(false, wide ? dispatch_count_kernel<kChunkWarps> : dispatch_count_kernel<1>, chunks,
             block, smem, stream, p, s);
  if (status == cudaSuccess) {
    status =
        launch(chain, dispatch_scan_kernel, static_cast<unsigned>(ceil_div(p.E + 1, kScanWarps)),
               32 * kScanWarps, 0, stream, p, s);
  }
  if (status == cudaSuccess) {
    status = launch(chain, wide ? dispatch_place_kernel<kChunkWarps> : dispatch_place_kernel<1>,
                    chunks, block, smem, stream, p, s);
  }
  return status;
}

cudaError_t launch_dispatch_v3_copy(const MoeDispatchParams& p, const int32_t* dest,
                                    cudaStream_t stream) {
  const auto grid = static_cast<unsigned>(ceil_div(p.T, kCopyWarps));
  cudaError_t status = cudaSuccess;
  by_dtype(p.x.dtype, [&]<class T>(T) {
    status = launch(true, dispatch_copy_kernel<T>, grid, 32 * kCopyWarps, 0, stream, p, dest);
  });
  return status;
}

}  // namespace hops::cuda::moe
