// attn_decode against a paged cache, split over the context (flash-decoding):
// each CTA takes one piece of `chunk` tokens of one sequence and key-value
// head and writes its partial (m, l, o) to scratch; a second kernel merges
// the pieces of each query row in order. Tensor cores (mma.sync) for f16/bf16
// with D in {64, 128, 256}: a CTA serves 16 query rows (the group's heads x the
// L new tokens), so each cache row is read once per 16 rows; a general f32
// kernel otherwise. kv_cache_write is here too.
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

// A CTA of 4 warps: 16 query rows (row r = l * G + h of the key-value head's
// group) against a piece of the context in tiles of 64 tokens (16 per warp),
// three stages of K and V by cp.async. Each warp keeps its own online softmax
// over its tokens; the four are merged through smem at the end.
template <int D>
struct DecTile {
  static constexpr int kWarps = 4, kThreads = 32 * kWarps;
  static constexpr int kRows = 16, kTokens = 16 * kWarps, kStages = 3;
  static constexpr int kPitch = D + 8;
  static constexpr int kOPitch = D + 4;  // the f32 merge rows
  static constexpr size_t kTiles = size_t(kRows + 2 * kStages * kTokens) * kPitch * 2;
  static constexpr size_t kMerge = size_t(kWarps) * kRows * kOPitch * 4;
  static constexpr size_t kSmem =
      (kTiles > kMerge ? kTiles : kMerge) + (kStages * kTokens + 2 * kWarps * kRows) * 4;
};

template <class E, int D>
__global__ void __launch_bounds__(DecTile<D>::kThreads)
    decode_tc_kernel(const AttnDecodeParams p, DecodeScratch out, int64_t row_tiles) {
  using Tile = DecTile<D>;
  constexpr int kRows = Tile::kRows, kTokens = Tile::kTokens, kStages = Tile::kStages;
  constexpr int P = Tile::kPitch, kThreads = Tile::kThreads, kPieces = D / 8;
  extern __shared__ uint4 smem[];
  E* sQ = reinterpret_cast<E*>(smem);
  E* sK = sQ + kRows * P;                      // kStages x kTokens rows
  E* sV = sK + kStages * kTokens * P;          // kStages x kTokens rows
  float* sO = reinterpret_cast<float*>(smem);  // the merge, after the tiles are done
  int* sValid = reinterpret_cast<int*>(reinterpret_cast<char*>(smem) + Tile::kSmem -
                                       (kStages * kTokens + 2 * Tile::kWarps * kRows) * 4);
  float* sM = reinterpret_cast<float*>(sValid + kStages * kTokens);  // [warp][row]
  float* sL = sM + Tile::kWarps * kRows;

  int64_t x = blockIdx.x;
  const int64_t split = x % p.splits;
  x /= p.splits;
  const int64_t rt = x % row_tiles;
  x /= row_tiles;
  const int64_t kvh = x % p.Hkv, n = x / p.Hkv;
  const int64_t G = p.Hq / p.Hkv, rows = G * p.L;
  const int64_t len = seq_len(p, n);
  const int64_t begin = split * p.chunk, end = min(len, begin + p.chunk);
  const int ntiles = end > begin ? static_cast<int>((end - begin + kTokens - 1) / kTokens) : 0;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  // Q rows (zero past the group's rows).
  for (int idx = tid; idx < kRows * kPieces; idx += kThreads) {
    const int r = idx / kPieces, c = idx % kPieces;
    const int64_t row = rt * kRows + r;
    const bool valid = row < rows;
    const E* src = reinterpret_cast<const E*>(p.q.data) +
                   (valid ? at3(p.q, n, row / G, kvh * G + row % G) + c * 8 : 0);
    cp_async16(sQ + r * P + c * 8, src, valid);
  }
  const auto issue = [&](int t, int st) {
    const int64_t p0 = begin + int64_t{t} * kTokens;
    for (int idx = tid; idx < kTokens * kPieces; idx += kThreads) {
      const int r = idx / kPieces, c = idx % kPieces;
      const int64_t pos = p0 + r;
      const int64_t krow = pos < end ? cache_row(p, p.k_cache, n, kvh, pos) : -1;
      const int64_t vrow = krow >= 0 ? cache_row(p, p.v_cache, n, kvh, pos) : -1;
      const bool valid = krow >= 0;
      const E* kb = reinterpret_cast<const E*>(p.k_cache.data);
      const E* vb = reinterpret_cast<const E*>(p.v_cache.data);
      cp_async16(sK + (st * kTokens + r) * P + c * 8, valid ? kb + krow + c * 8 : kb, valid);
      cp_async16(sV + (st * kTokens + r) * P + c * 8, valid ? vb + vrow + c * 8 : vb, valid);
      if (c == 0) sValid[st * kTokens + r] = valid;
    }
  };
  if (ntiles > 0) issue(0, 0);
  cp_async_commit();
  if (ntiles > 1) issue(1, 1);
  cp_async_commit();

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
  for (int t = 0; t < ntiles; ++t) {
    const int st = t % kStages;
    cp_async_wait<1>();
    __syncthreads();
    if (t + 2 < ntiles) issue(t + 2, (t + 2) % kStages);
    cp_async_commit();
    const int tok = st * kTokens + warp * 16;  // this warp's 16 tokens of the tile
    float sc[2][4] = {};
    mma_rows_rows<E, P, D / 16, 2>(sc, qa, sK + tok * P + b_rows<P>(lane));
    const int64_t p0 = begin + int64_t{t} * kTokens + warp * 16;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = 8 * j + 2 * (lane & 3) + (e & 1);
        const int64_t pos = p0 + col;
        const bool visible = sValid[tok + col] && pos <= last[e >> 1];
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
    mma_regs_trans<E, P, 2, D / 8>(o, sc, sV + tok * P + b_trans<P>(lane));
  }
  cp_async_wait<0>();
  __syncthreads();  // the tiles are done: smem becomes the merge area

  // Each warp's (m, l, o) of rows g, g + 8 to smem; then thread per column sums
  // the warps in order.
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
    for (int w = 0; w < Tile::kWarps; ++w) mx = fmaxf(mx, sM[w * kRows + r]);
    const float base = mx == -INFINITY ? 0.0f : mx;
    float lsum = 0.0f, osum = 0.0f;
#pragma unroll
    for (int w = 0; w < Tile::kWarps; ++w) {
      const float f = ex2(sM[w * kRows + r] - base);
      lsum += f * sL[w * kRows + r];
      osum += f * sO[(w * kRows + r) * Tile::kOPitch + d];
    }
    const int64_t part = ((n * p.L + row / G) * p.Hq + kvh * G + row % G) * p.splits + split;
    out.o[part * D + d] = osum;
    if (d == 0) out.m[part] = mx, out.l[part] = lsum;
  }
}

template <class E, int D>
cudaError_t launch_decode_tc(const AttnDecodeParams& p, const DecodeScratch& s,
                             cudaStream_t stream) {
  using Tile = DecTile<D>;
  const int64_t row_tiles = (p.Hq / p.Hkv * p.L + Tile::kRows - 1) / Tile::kRows;
  const cudaError_t status = cudaFuncSetAttribute(
      decode_tc_kernel<E, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmem);
  if (status != cudaSuccess) return status;
  decode_tc_kernel<E, D><<<static_cast<unsigned>(p.N * p.Hkv * row_tiles * p.splits),
                           Tile::kThreads, Tile::kSmem, stream>>>(p, s, row_tiles);
  return cudaGetLastError();
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

// ---- the merge: a CTA per (sequence, new token, query head) row ------------------------

template <class T>
__global__ void __launch_bounds__(128)
    decode_merge_kernel(const AttnDecodeParams p, DecodeScratch in) {
  const int64_t row = blockIdx.x;  // (n * L + l) * Hq + head
  const int64_t head = row % p.Hq, l_new = (row / p.Hq) % p.L, n = row / (p.Hq * p.L);
  const int64_t first = row * p.splits;
  float mx = -INFINITY;
  for (int64_t s = 0; s < p.splits; ++s) mx = fmaxf(mx, in.m[first + s]);
  const float base = mx == -INFINITY ? 0.0f : mx;
  float lsum = 0.0f;
  for (int64_t s = 0; s < p.splits; ++s) lsum += exp2f(in.m[first + s] - base) * in.l[first + s];
  const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
  T* orow = reinterpret_cast<T*>(p.o.data) + at3(p.o, n, l_new, head);
  for (int64_t d = threadIdx.x; d < p.D; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t s = 0; s < p.splits; ++s)
      acc += exp2f(in.m[first + s] - base) * in.o[(first + s) * p.D + d];
    orow[d * p.o.stride[3]] = from_f<T>(acc * inv);
  }
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

size_t attn_decode_scratch_bytes(const AttnDecodeParams& p) {
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
  } else {
    by_dtype(dtype, [&]<class T>(T) {
      decode_general_kernel<T>
          <<<static_cast<unsigned>(p.N * p.L * p.Hq * p.splits), kGenThreads, 0, stream>>>(p, s);
    });
    status = cudaGetLastError();
  }
  if (status != cudaSuccess) return status;
  by_dtype(dtype, [&]<class T>(T) {
    decode_merge_kernel<T><<<static_cast<unsigned>(p.N * p.L * p.Hq), 128, 0, stream>>>(p, s);
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
