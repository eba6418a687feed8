// attn_decode against a paged cache, split over the context (flash-decoding):
// each CTA takes one piece of `chunk` tokens of one sequence and key-value
// head; with several pieces it writes its partial (m, l, o) to scratch and a
// second kernel merges the pieces of each query row in a fixed order. Tensor
// cores (mma.sync) for f16/bf16 with D in {64, 128, 256}: a CTA serves 16
// query rows (the group's heads x the L new tokens), so each cache row is read
// once per 16 rows; a general f32 kernel otherwise. kv_cache_write is here too.
#include <algorithm>
#include <atomic>

#include "attn_common.cuh"

namespace hops::cuda {

namespace {

using namespace attn;

// Scratch: m and l [rows][splits] f32 (log2 domain), o [rows][splits][D] f32,
// rows = N * L * Hq in (n, l, head) order.
struct DecodeScratch {
  float *m, *l, *o;
};
DecodeScratch carve(const AttnDecodeParams& p, void* scratch) {
  const int64_t parts = p.N * p.L * p.Hq * p.splits;
  float* base = static_cast<float*>(scratch);
  return {base, base + parts, base + 2 * parts};
}

__device__ __forceinline__ int64_t ld_index2(const Index2& t, int64_t i, int64_t j) {
  const int64_t at = i * t.stride0 + j * t.stride1;
  return t.is64 ? reinterpret_cast<const int64_t*>(t.data)[at]
                : reinterpret_cast<const int32_t*>(t.data)[at];
}

// Sequence n's length, clamped to the table's capacity (device-resident
// tables are not validated on the host).
__device__ __forceinline__ int64_t seq_len(const AttnDecodeParams& p, int64_t n) {
  const int64_t len = ld_index(p.seq_lens, n);
  const int64_t cap = p.max_blocks * p.block_size;
  return len < 0 ? 0 : (len > cap ? cap : len);
}

// The cache row of token `pos` of sequence n (element offset of [block, row,
// kvh, 0]), or -1 when its block id is outside [0, num_blocks).
__device__ __forceinline__ int64_t cache_row(const AttnDecodeParams& p, const Arg& cache, int64_t n,
                                             int64_t kvh, int64_t pos) {
  const int64_t block = ld_index2(p.block_table, n, pos / p.block_size);
  if (block < 0 || block >= p.num_blocks) return -1;
  return block * cache.stride[0] + (pos % p.block_size) * cache.stride[1] + kvh * cache.stride[2];
}

// ---- tensor cores ----------------------------------------------------------------------

// Division of nonnegative values: 32-bit when both fit (the usual case), else 64-bit.
__device__ __forceinline__ int64_t div_nonneg(int64_t a, int64_t b) {
  if (((a | b) >> 31) == 0) return static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
  return a / b;
}

// Issues 16-byte cp.async of the K and V rows of tokens [p0, p0 + 16) (p0 a
// multiple of 16) of sequence n, head kvh into sk and sv (16 rows of pitch P)
// and returns the mask of rows loaded: bit i set when token p0 + i is below
// `end` and its block is in the cache; the other rows are zero-filled. Lane
// `lane` copies piece lane % (D/8) of rows lane / (D/8) + (256/D) j. When
// block_size is a multiple of 16 the chunk lies in one block: one table read
// and no division per row; otherwise lane i < 16 finds row i and the warp
// shares the offsets.
template <class E, int D, int P>
__device__ __forceinline__ int issue_chunk(const AttnDecodeParams& p, int64_t n, int64_t kvh,
                                           int64_t p0, int64_t end, E* sk, E* sv, int lane) {
  constexpr int kPieces = D / 8, kStep = 32 / kPieces, kIters = 16 / kStep;
  const int c = lane % kPieces, sub = lane / kPieces;
  const Arg &kc = p.k_cache, &vc = p.v_cache;
  const E* kb = reinterpret_cast<const E*>(kc.data);
  const E* vb = reinterpret_cast<const E*>(vc.data);
  if (p.block_size % 16 == 0) {
    const int64_t idx = div_nonneg(p0, p.block_size), row0 = p0 - idx * p.block_size;
    const int64_t block = ld_index2(p.block_table, n, idx), rows = end - p0;
    const int mask =
        block < 0 || block >= p.num_blocks ? 0 : (rows >= 16 ? 0xffff : (1 << rows) - 1);
    const int64_t kbase =
        mask ? block * kc.stride[0] + row0 * kc.stride[1] + kvh * kc.stride[2] : 0;
    const int64_t vbase =
        mask ? block * vc.stride[0] + row0 * vc.stride[1] + kvh * vc.stride[2] : 0;
#pragma unroll
    for (int j = 0; j < kIters; ++j) {
      const int r = sub + kStep * j;
      const bool valid = (mask >> r) & 1;
      cp_async16(sk + r * P + c * 8, valid ? kb + kbase + r * kc.stride[1] + c * 8 : kb, valid);
      cp_async16(sv + r * P + c * 8, valid ? vb + vbase + r * vc.stride[1] + c * 8 : vb, valid);
    }
    return mask;
  }
  int64_t koff = 0, voff = 0;
  bool mine = false;
  if (lane < 16 && p0 + lane < end) {
    const int64_t pos = p0 + lane, idx = div_nonneg(pos, p.block_size);
    const int64_t block = ld_index2(p.block_table, n, idx);
    if (block >= 0 && block < p.num_blocks) {
      const int64_t row = pos - idx * p.block_size;
      koff = block * kc.stride[0] + row * kc.stride[1] + kvh * kc.stride[2];
      voff = block * vc.stride[0] + row * vc.stride[1] + kvh * vc.stride[2];
      mine = true;
    }
  }
  const int mask = static_cast<int>(__ballot_sync(0xffffffffu, mine));
#pragma unroll
  for (int j = 0; j < kIters; ++j) {
    const int r = sub + kStep * j;
    const int64_t ko = __shfl_sync(0xffffffffu, koff, r), vo = __shfl_sync(0xffffffffu, voff, r);
    const bool valid = (mask >> r) & 1;
    cp_async16(sk + r * P + c * 8, valid ? kb + ko + c * 8 : kb, valid);
    cp_async16(sv + r * P + c * 8, valid ? vb + vo + c * 8 : vb, valid);
  }
  return mask;
}

// A CTA of 4 warps: 16 query rows (row r = l * G + h of the key-value head's
// group) against a piece of the context. The piece is cut into chunks of 16
// tokens; warp w takes chunks w, w + 4, ... through its own ring of three
// stages (K and V rows by cp.async), so the loop needs only warp barriers
// and each warp keeps two chunks (16 KB at D = 256) in flight. Each warp keeps
// its own online softmax; the four are merged in order through smem at the
// end. With one piece per sequence the CTA writes o itself, else its partial
// (m, l, o) goes to scratch for the merge kernel.
template <int D>
struct DecTile {
  static constexpr int kWarps = 4, kThreads = 32 * kWarps;
  static constexpr int kRows = 16, kChunk = 16, kStages = 3;
  static constexpr int kPitch = D + 8;
  static constexpr int kOPitch = D + 4;                    // the f32 merge rows
  static constexpr int kStageElems = 2 * kChunk * kPitch;  // K rows then V rows
  static constexpr size_t kTiles = (size_t(kRows) * kPitch + kWarps * kStages * kStageElems) * 2;
  static constexpr size_t kMerge = size_t(kWarps) * kRows * kOPitch * 4;
  static constexpr size_t kTail = (kWarps * kStages + 2 * kWarps * kRows) * 4;
  static constexpr size_t kSmem = (kTiles > kMerge ? kTiles : kMerge) + kTail;
};

template <class E, int D>
__global__ void __launch_bounds__(DecTile<D>::kThreads)
    decode_tc_kernel(const AttnDecodeParams p, DecodeScratch out, int64_t row_tiles) {
  using Tile = DecTile<D>;
  constexpr int kRows = Tile::kRows, kChunk = Tile::kChunk, kStages = Tile::kStages;
  constexpr int kWarps = Tile::kWarps, P = Tile::kPitch, kThreads = Tile::kThreads;
  constexpr int kPieces = D / 8;
  extern __shared__ uint4 smem[];
  E* sQ = reinterpret_cast<E*>(smem);
  float* sO = reinterpret_cast<float*>(smem);  // the merge, after the chunks are done
  int* sMask = reinterpret_cast<int*>(reinterpret_cast<char*>(smem) + Tile::kSmem - Tile::kTail);
  float* sM = reinterpret_cast<float*>(sMask + kWarps * kStages);  // [warp][row]
  float* sL = sM + kWarps * kRows;

  int64_t x = blockIdx.x;
  const int64_t split = x % p.splits;
  x /= p.splits;
  const int64_t rt = x % row_tiles;
  x /= row_tiles;
  const int64_t kvh = x % p.Hkv, n = x / p.Hkv;
  const int64_t G = p.Hq / p.Hkv, rows = G * p.L;
  const int64_t len = seq_len(p, n);
  const int64_t begin = split * p.chunk, end = min(len, begin + p.chunk);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Q rows (zero past the group's rows), a group of their own.
  for (int idx = tid; idx < kRows * kPieces; idx += kThreads) {
    const int r = idx / kPieces, c = idx % kPieces;
    const int64_t row = rt * kRows + r;
    const bool valid = row < rows;
    const E* src = reinterpret_cast<const E*>(p.q.data) +
                   (valid ? at3(p.q, n, row / G, kvh * G + row % G) + c * 8 : 0);
    cp_async16(sQ + r * P + c * 8, src, valid);
  }
  cp_async_commit();

  // This warp's chunks: tokens [first + i step, + 16) for first + i step < end.
  E* ring = sQ + kRows * P + warp * kStages * Tile::kStageElems;
  const int64_t first = begin + kChunk * warp, step = kChunk * kWarps;
  const int count = end > first ? static_cast<int>((end - first + step - 1) / step) : 0;
  const auto issue = [&](int i) {
    const int st = i % kStages;
    E* sk = ring + st * Tile::kStageElems;
    const int mask =
        issue_chunk<E, D, P>(p, n, kvh, first + i * step, end, sk, sk + kChunk * P, lane);
    if (lane == 0) sMask[warp * kStages + st] = mask;
  };
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < count) issue(i);
    cp_async_commit();
  }
  cp_async_wait<kStages - 1>();  // this thread's part of Q
  __syncthreads();

  const float c2 = p.scale * kLog2e;
  // This thread's rows g and g + 8: their last visible position len - L + l.
  int64_t last[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = rt * kRows + (lane >> 2) + 8 * r;
    last[r] = row < rows ? len - p.L + row / G : -1;
  }
  float o[D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  const E* qa = sQ + a_rows<P>(lane);
  for (int i = 0; i < count; ++i) {
    const int st = i % kStages;
    cp_async_wait<kStages - 2>();  // chunk i landed (this lane's rows) ...
    __syncwarp();                  // ... and the other lanes', and stage i - 1 is free
    if (i + kStages - 1 < count) issue(i + kStages - 1);
    cp_async_commit();
    const E* sk = ring + st * Tile::kStageElems;
    const int mask = sMask[warp * kStages + st];
    float sc[2][4] = {};
    mma_rows_rows<E, P, D / 16, 2>(sc, qa, sk + b_rows<P>(lane));
    const int64_t p0 = first + i * step;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * (lane & 3) + (e & 1);
        const bool visible = ((mask >> col) & 1) && p0 + col <= last[e >> 1];
        sc[j][e] = visible ? sc[j][e] * c2 : -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float mx = quad_max(
          fmaxf(fmaxf(sc[0][2 * r], sc[0][2 * r + 1]), fmaxf(sc[1][2 * r], sc[1][2 * r + 1])));
      const float m_new = fmaxf(m[r], mx);
      const float base = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = ex2(m[r] - base);
      m[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        sc[j][2 * r] = ex2(sc[j][2 * r] - base);
        sc[j][2 * r + 1] = ex2(sc[j][2 * r + 1] - base);
        sum += sc[j][2 * r] + sc[j][2 * r + 1];
      }
      l[r] = l[r] * alpha + sum;
#pragma unroll
      for (int d = 0; d < D / 8; ++d) o[d][2 * r] *= alpha, o[d][2 * r + 1] *= alpha;
    }
    mma_regs_trans<E, P, 2, D / 8>(o, sc, sk + kChunk * P + b_trans<P>(lane));
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with its ring: smem becomes the merge area

  // Each warp's (m, l, o) of rows g, g + 8 to smem; then a thread per column
  // sums the warps in order.
  const int g = lane >> 2;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(l[r]);
    if ((lane & 3) == 0) sM[warp * kRows + g + 8 * r] = m[r], sL[warp * kRows + g + 8 * r] = sum;
    float* orow = sO + (warp * kRows + g + 8 * r) * Tile::kOPitch;
#pragma unroll
    for (int d = 0; d < D / 8; ++d) {
      const int col = 8 * d + 2 * (lane & 3);
      orow[col] = o[d][2 * r], orow[col + 1] = o[d][2 * r + 1];
    }
  }
  __syncthreads();
  for (int idx = tid; idx < kRows * D; idx += kThreads) {
    const int r = idx / D, d = idx % D;
    const int64_t row = rt * kRows + r;
    if (row >= rows) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sM[w * kRows + r]);
    const float base = mx == -INFINITY ? 0.0f : mx;
    float lsum = 0.0f, osum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = ex2(sM[w * kRows + r] - base);
      lsum += f * sL[w * kRows + r];
      osum += f * sO[(w * kRows + r) * Tile::kOPitch + d];
    }
    const int64_t head = kvh * G + row % G;
    if (p.splits == 1) {
      E* orow = reinterpret_cast<E*>(p.o.data) + at3(p.o, n, row / G, head);
      orow[d * p.o.stride[3]] = from_f<E>(lsum > 0.0f ? osum * (1.0f / lsum) : 0.0f);
      continue;
    }
    const int64_t part = ((n * p.L + row / G) * p.Hq + head) * p.splits + split;
    out.o[part * D + d] = osum;
    if (d == 0) out.m[part] = mx, out.l[part] = lsum;
  }
}

template <class E, int D>
cudaError_t launch_decode_tc(const AttnDecodeParams& p, const DecodeScratch& s,
                             cudaStream_t stream) {
  using Tile = DecTile<D>;
  const int64_t row_tiles = (p.Hq / p.Hkv * p.L + Tile::kRows - 1) / Tile::kRows;
  const cudaError_t status = allow_smem(decode_tc_kernel<E, D>, Tile::kSmem);
  if (status != cudaSuccess) return status;
  decode_tc_kernel<E, D><<<static_cast<unsigned>(p.N * p.Hkv * row_tiles * p.splits),
                           Tile::kThreads, Tile::kSmem, stream>>>(p, s, row_tiles);
  return cudaGetLastError();
}

// CTAs of the tensor-core kernel resident per SM (its smem decides), asked
// once: the module runs on sm_90 devices only, which agree on it.
template <class E, int D>
cudaError_t decode_tc_per_sm(int& per_sm) {
  using Tile = DecTile<D>;
  static std::atomic<int> known{0};
  per_sm = known.load(std::memory_order_relaxed);
  if (per_sm > 0) return cudaSuccess;
  cudaError_t status = allow_smem(decode_tc_kernel<E, D>, Tile::kSmem);
  if (status == cudaSuccess) {
    status = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, decode_tc_kernel<E, D>,
                                                           Tile::kThreads, Tile::kSmem);
  }
  if (status == cudaSuccess) known.store(per_sm, std::memory_order_relaxed);
  return status;
}

// ---- general (f32 CUDA cores) ----------------------------------------------------------

// A CTA of 4 warps per (sequence, new token, query head, piece); warp w takes
// tokens w, w + 4, ... of the piece, lanes over D (dims lane, lane + 32, ...).
constexpr int kGenWarps = 4, kGenThreads = 32 * kGenWarps;
constexpr int kGenDims = kAttnMaxHeadDim / 32;

template <class T>
__global__ void __launch_bounds__(kGenThreads)
    decode_general_kernel(const AttnDecodeParams p, DecodeScratch out) {
  __shared__ float sO[kGenWarps][kAttnMaxHeadDim];
  __shared__ float sM[kGenWarps], sL[kGenWarps];
  int64_t x = blockIdx.x;
  const int64_t split = x % p.splits;
  x /= p.splits;
  const int64_t head = x % p.Hq;
  x /= p.Hq;
  const int64_t l_new = x % p.L, n = x / p.L;
  const int64_t kvh = head / (p.Hq / p.Hkv);
  const int64_t len = seq_len(p, n);
  const int64_t last = len - p.L + l_new;  // last visible position
  const int64_t begin = split * p.chunk;
  const int64_t end = min(min(len, begin + p.chunk), last + 1);
  const int D = static_cast<int>(p.D), lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float c2 = p.scale * kLog2e;

  float q[kGenDims], o[kGenDims] = {};
  const T* qrow = reinterpret_cast<const T*>(p.q.data) + at3(p.q, n, l_new, head);
#pragma unroll
  for (int cc = 0; cc < kGenDims; ++cc) {
    const int d = lane + 32 * cc;
    q[cc] = d < D ? to_f(qrow[d * p.q.stride[3]]) * c2 : 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const T* kb = reinterpret_cast<const T*>(p.k_cache.data);
  const T* vb = reinterpret_cast<const T*>(p.v_cache.data);
  for (int64_t pos = begin + warp; pos < end; pos += kGenWarps) {
    const int64_t krow = cache_row(p, p.k_cache, n, kvh, pos);
    if (krow < 0) continue;  // a block outside the cache contributes nothing
    const int64_t vrow = cache_row(p, p.v_cache, n, kvh, pos);
    float s = 0.0f;
#pragma unroll
    for (int cc = 0; cc < kGenDims; ++cc) {
      const int d = lane + 32 * cc;
      if (d < D) s = fmaf(q[cc], to_f(kb[krow + d * p.k_cache.stride[3]]), s);
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s);
    const float alpha = exp2f(m - m_new), pr = exp2f(s - m_new);
    m = m_new;
    l = l * alpha + pr;
#pragma unroll
    for (int cc = 0; cc < kGenDims; ++cc) {
      const int d = lane + 32 * cc;
      if (d < D) o[cc] = fmaf(pr, to_f(vb[vrow + d * p.v_cache.stride[3]]), o[cc] * alpha);
    }
  }
#pragma unroll
  for (int cc = 0; cc < kGenDims; ++cc) {
    const int d = lane + 32 * cc;
    if (d < D) sO[warp][d] = o[cc];
  }
  if (lane == 0) sM[warp] = m, sL[warp] = l;
  __syncthreads();
  float mx = -INFINITY;
#pragma unroll
  for (int w = 0; w < kGenWarps; ++w) mx = fmaxf(mx, sM[w]);
  const float base = mx == -INFINITY ? 0.0f : mx;
  const int64_t part = ((n * p.L + l_new) * p.Hq + head) * p.splits + split;
  for (int d = threadIdx.x; d < D; d += kGenThreads) {
    float lsum = 0.0f, osum = 0.0f;
#pragma unroll
    for (int w = 0; w < kGenWarps; ++w) {
      const float f = exp2f(sM[w] - base);
      lsum += f * sL[w];
      osum += f * sO[w][d];
    }
    out.o[part * D + d] = osum;
    if (d == 0) out.m[part] = mx, out.l[part] = lsum;
  }
}

// ---- the merge: a CTA per (query row, 64 columns) ---------------------------------------

// The pieces' weights 2^(m_s - max) first (in smem), then thread (j, c) sums
// pieces j, j + 4, ... of its column with independent loads in flight, and the
// four partial sums are added in order: the same order on every call.
constexpr int kMergeCols = 64, kMergeSlices = 4, kMergeThreads = kMergeCols * kMergeSlices;
constexpr int64_t kMaxSplits = 1024;

// A CTA-wide max or sum over kMergeThreads threads in a fixed tree order.
template <class Op>
__device__ __forceinline__ float merge_reduce(float v, float* red, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  v = red[0];
#pragma unroll
  for (int w = 1; w < kMergeThreads / 32; ++w) v = op(v, red[w]);
  __syncthreads();
  return v;
}

template <class T>
__global__ void __launch_bounds__(kMergeThreads)
    decode_merge_kernel(const AttnDecodeParams p, DecodeScratch in, int64_t col_blocks) {
  __shared__ float sW[kMaxSplits];
  __shared__ float sPart[kMergeSlices][kMergeCols];
  __shared__ float sRed[kMergeThreads / 32];
  const int64_t row = blockIdx.x / col_blocks;  // (n * L + l) * Hq + head
  const int c = threadIdx.x % kMergeCols, j = threadIdx.x / kMergeCols;
  const int64_t d = blockIdx.x % col_blocks * kMergeCols + c;
  const int64_t head = row % p.Hq, l_new = (row / p.Hq) % p.L, n = row / (p.Hq * p.L);
  const int S = static_cast<int>(p.splits);
  const float* m = in.m + row * p.splits;
  const float* l = in.l + row * p.splits;
  float mx = -INFINITY;
  for (int s = threadIdx.x; s < S; s += kMergeThreads) mx = fmaxf(mx, m[s]);
  mx = merge_reduce(mx, sRed, [](float a, float b) { return fmaxf(a, b); });
  const float base = mx == -INFINITY ? 0.0f : mx;
  float lsum = 0.0f;
  for (int s = threadIdx.x; s < S; s += kMergeThreads) {
    const float w = ex2(m[s] - base);
    sW[s] = w;
    lsum += w * l[s];
  }
  lsum = merge_reduce(lsum, sRed, [](float a, float b) { return a + b; });  // also publishes sW
  float acc = 0.0f;
  if (d < p.D) {
    const float* o = in.o + row * p.splits * p.D + d;
#pragma unroll 8
    for (int s = j; s < S; s += kMergeSlices) acc = fmaf(sW[s], o[s * p.D], acc);
  }
  sPart[j][c] = acc;
  __syncthreads();
  if (j != 0 || d >= p.D) return;
  float total = sPart[0][c];
#pragma unroll
  for (int k = 1; k < kMergeSlices; ++k) total += sPart[k][c];
  T* orow = reinterpret_cast<T*>(p.o.data) + at3(p.o, n, l_new, head);
  orow[d * p.o.stride[3]] = from_f<T>(lsum > 0.0f ? total * (1.0f / lsum) : 0.0f);
}

// ---- kv_cache_write: a thread per kVec elements of a row -------------------------------

template <class T, int kVec>
__global__ void __launch_bounds__(256) kv_write_kernel(const KvCacheWriteParams p) {
  const int64_t pieces = p.D / kVec, total = p.T * p.Hkv * pieces;
  const int64_t slots = p.num_blocks * p.block_size;
  for (int64_t idx = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c = idx % pieces, h = (idx / pieces) % p.Hkv, t = idx / (pieces * p.Hkv);
    const int64_t slot = ld_index(p.slots, t);
    if (slot < 0 || slot >= slots) continue;  // -1 skips; device-resident garbage too
    const int64_t block = slot / p.block_size, r = slot % p.block_size;
    const Arg* src[2] = {&p.k, &p.v};
    const Arg* dst[2] = {&p.k_cache, &p.v_cache};
#pragma unroll
    for (int which = 0; which < 2; ++which) {
      const Arg& a = *src[which];
      const Arg& b = *dst[which];
      const T* from = reinterpret_cast<const T*>(a.data) + t * a.stride[0] + h * a.stride[1];
      T* to =
          reinterpret_cast<T*>(b.data) + block * b.stride[0] + r * b.stride[1] + h * b.stride[2];
      if constexpr (kVec > 1) {
        *reinterpret_cast<uint4*>(to + c * kVec) = *reinterpret_cast<const uint4*>(from + c * kVec);
      } else {
        to[c * b.stride[3]] = from[c * a.stride[2]];
      }
    }
  }
}

}  // namespace

cudaError_t plan_attn_decode(AttnDecodeParams& p, int dtype, bool tensor_cores, int sms) {
  const int64_t capacity = p.max_blocks * p.block_size;
  const int64_t units = std::max<int64_t>((capacity + 63) / 64, 1);  // pieces: whole 64 tokens
  const auto use = [&](int64_t want) {
    p.chunk = (units + want - 1) / want * 64;
    p.splits = std::max<int64_t>((capacity + p.chunk - 1) / p.chunk, 1);
  };
  if (!tensor_cores) {  // ~4 CTAs per SM
    const int64_t ctas = std::max<int64_t>(p.N * p.L * p.Hq, 1);
    use(std::clamp<int64_t>((4 * int64_t{sms} + ctas - 1) / ctas, 1, std::min(units, kMaxSplits)));
    return cudaSuccess;
  }
  int per_sm = 0;
  const auto by_dim = [&]<class E>(E) {
    switch (p.D) {
      case 64:
        return decode_tc_per_sm<E, 64>(per_sm);
      case 128:
        return decode_tc_per_sm<E, 128>(per_sm);
      default:
        return decode_tc_per_sm<E, 256>(per_sm);
    }
  };
  const cudaError_t status = dtype == kBF16 ? by_dim(__nv_bfloat16{}) : by_dim(__half{});
  if (status != cudaSuccess) return status;
  // The fewest pieces whose CTAs fill the resident slots' waves to >= 90%
  // (else the best filling): a piece is streamed by one CTA, so more pieces
  // only add partials to merge.
  const int64_t ctas = std::max<int64_t>(p.N * p.Hkv * ((p.Hq / p.Hkv * p.L + 15) / 16), 1);
  const int64_t slots = std::max<int64_t>(int64_t{sms} * std::max(per_sm, 1), 1);
  int64_t best = 1;
  double best_fill = 0.0;
  for (int64_t want = 1; want <= std::min(units, kMaxSplits); ++want) {
    use(want);
    const int64_t total = ctas * p.splits, waves = (total + slots - 1) / slots;
    const double fill = double(total) / double(waves * slots);
    if (fill > best_fill + 1e-9) best = want, best_fill = fill;
    if (fill >= 0.9) break;
  }
  use(best);
  return cudaSuccess;
}

size_t attn_decode_scratch_bytes(const AttnDecodeParams& p, bool tensor_cores) {
  if (tensor_cores && p.splits == 1) return 0;  // the kernel writes o itself
  return size_t(p.N * p.L * p.Hq * p.splits) * (2 + p.D) * sizeof(float);
}

cudaError_t launch_attn_decode(const AttnDecodeParams& p, int dtype, bool tensor_cores,
                               void* scratch, cudaStream_t stream) {
  const DecodeScratch s = carve(p, scratch);
  cudaError_t status = cudaSuccess;
  if (tensor_cores) {
    const auto by_dim = [&]<class E>(E) {
      switch (p.D) {
        case 64:
          return launch_decode_tc<E, 64>(p, s, stream);
        case 128:
          return launch_decode_tc<E, 128>(p, s, stream);
        default:
          return launch_decode_tc<E, 256>(p, s, stream);
      }
    };
    status = dtype == kBF16 ? by_dim(__nv_bfloat16{}) : by_dim(__half{});
    if (status != cudaSuccess || p.splits == 1) return status;
  } else {
    by_dtype(dtype, [&]<class T>(T) {
      decode_general_kernel<T>
          <<<static_cast<unsigned>(p.N * p.L * p.Hq * p.splits), kGenThreads, 0, stream>>>(p, s);
    });
    status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  const int64_t col_blocks = (p.D + kMergeCols - 1) / kMergeCols;
  by_dtype(dtype, [&]<class T>(T) {
    decode_merge_kernel<T>
        <<<static_cast<unsigned>(p.N * p.L * p.Hq * col_blocks), kMergeThreads, 0, stream>>>(
            p, s, col_blocks);
  });
  return cudaGetLastError();
}

cudaError_t launch_kv_cache_write(const KvCacheWriteParams& p, int dtype, bool vector,
                                  cudaStream_t stream) {
  by_dtype(dtype, [&]<class T>(T) {
    const int64_t elems = p.T * p.Hkv * p.D;
    if (vector) {
      constexpr int kVec = 16 / sizeof(T);
      kv_write_kernel<T, kVec><<<grid_for(elems / kVec, 256), 256, 0, stream>>>(p);
    } else {
      kv_write_kernel<T, 1><<<grid_for(elems, 256), 256, 0, stream>>>(p);
    }
  });
  return cudaGetLastError();
}

}  // namespace hops::cuda
