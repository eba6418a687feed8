// gated_rmsnorm_bwd (math as in backends/cpu/gated_rmsnorm_bwd.cpp). With
// n = x inv_rms and y = n weight silu(z):
//   dn = dy weight silu(z),  dx = inv_rms (dn - x inv_rms^2 mean(dn x))
//   dz = dy n weight silu'(z),  dweight = sum over rows of dy n silu(z)
// Rows are split into blocks of consecutive rows by the row count only, and
// each warp takes a fixed range of its block's rows. dweight: each block
// writes its share to scratch (a fixed combination of its warps' sums), and a
// second kernel adds the shares in block order (ordered_sum.cuh), so dweight
// does not depend on scheduling. Rows of unit stride, 16-byte aligned, with
// D <= 128 vectors take the vector kernel (the row in registers, 16-byte
// loads and stores, several rows per warp when D is small); the rest the
// general kernel (a warp per row, strided elements, the row read twice).
#include "checked_math.hpp"
#include "ordered_sum.cuh"

namespace hops::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int64_t kMaxBlocks = 1024;  // shares of dweight: at most kMaxBlocks (x8 general) rows
constexpr int64_t kMinRowsPerBlock = 64;
constexpr int kMaxVectorsPerLane = 4;  // the vector kernel holds D <= 128 16-byte vectors

struct RowSplit {
  int64_t blocks, rows_per_block, rows_per_warp;
};

RowSplit split_rows(int64_t rows) {
  int64_t blocks = (rows + kMinRowsPerBlock - 1) / kMinRowsPerBlock;
  blocks = blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks);
  const int64_t per_block = (rows + blocks - 1) / blocks;
  return {blocks, per_block, (per_block + kWarps - 1) / kWarps};
}

// The rows [first, last) of this thread's warp.
__device__ __forceinline__ void warp_rows(const NormBwdParams& p, const RowSplit& split,
                                          int64_t& first, int64_t& last) {
  const int64_t block_end = (blockIdx.x + 1) * split.rows_per_block;
  first = blockIdx.x * split.rows_per_block + threadIdx.x / 32 * split.rows_per_warp;
  last = first + split.rows_per_warp;
  if (last > block_end) last = block_end;
  if (last > p.rows) last = p.rows;
}

// Element offsets of a row in the five tensors (same shape: one decomposition).
struct RowOffsets {
  int64_t x = 0, z = 0, dy = 0, dx = 0, dz = 0;
};

__device__ __forceinline__ RowOffsets offsets_of(const NormBwdParams& p, int64_t row) {
  RowOffsets o;
  for (int d = p.x.lead - 1; d >= 0; --d) {
    const int64_t i = row % p.x.shape[d];
    row /= p.x.shape[d];
    o.x += i * p.x.stride[d], o.z += i * p.z.stride[d], o.dy += i * p.dy.stride[d];
    o.dx += i * p.dx.stride[d], o.dz += i * p.dz.stride[d];
  }
  return o;
}

// sigmoid; with a 16-bit T the approximate exp and division (~1e-6 relative
// error, far below the outputs' rounding).
template <class T>
__device__ __forceinline__ float gate_of(float z) {
  if constexpr (sizeof(T) == 2)
    return __fdividef(1.0f, 1.0f + __expf(-z));
  else
    return sigmoidf_(z);
}

// kLanes lanes span a row (kPerLane 16-byte vectors each; vector v of the row
// on lane v % kLanes), 32 / kLanes rows per warp step.
template <class T, int kLanes, int kPerLane>
__global__ void __launch_bounds__(kWarps * 32)
    norm_bwd_vec_kernel(NormBwdParams p, RowSplit split, float* partials) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kRowsPerStep = 32 / kLanes;
  constexpr int kMaxColumns = kLanes * kPerLane * kVec;
  __shared__ float warp_sums[kWarps][kMaxColumns];
  const int lane = threadIdx.x % 32, sub = lane % kLanes, warp = threadIdx.x / 32;
  const int64_t vectors = p.D / kVec;
  const float inv_D = 1.0f / static_cast<float>(p.D);
  float weight[kPerLane][kVec], dweight[kPerLane][kVec] = {};
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const int64_t d = (sub + i * kLanes) * kVec + e;
      weight[i][e] = d < p.D ? ld(p.weight.data, p.weight.dtype, d * p.weight.stride[0]) : 0.0f;
    }
  }
  int64_t first, last;
  warp_rows(p, split, first, last);
  for (int64_t base = first; base < last; base += kRowsPerStep) {  // uniform over the warp
    const int64_t row = base + lane / kLanes;
    const bool valid = row < last;
    const RowOffsets o = valid ? offsets_of(p, row) : RowOffsets{};
    const T* x = reinterpret_cast<const T*>(p.x.data) + o.x;
    const T* z = reinterpret_cast<const T*>(p.z.data) + o.z;
    const T* dy = reinterpret_cast<const T*>(p.dy.data) + o.dy;
    Vec16<T> xv[kPerLane], zv[kPerLane], gv[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t v = sub + i * kLanes;
      xv[i].raw = zv[i].raw = gv[i].raw = make_uint4(0, 0, 0, 0);
      if (valid && v < vectors) {
        xv[i].raw = reinterpret_cast<const uint4*>(x)[v];
        zv[i].raw = reinterpret_cast<const uint4*>(z)[v];
        gv[i].raw = reinterpret_cast<const uint4*>(dy)[v];
      }
    }
    // dn = dy weight silu(z) (kept in gv's place as floats), sums of x^2 and dn x.
    float dn[kPerLane][kVec], squares = 0.0f, dn_x = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float xe = to_f(xv[i].e[e]), ze = to_f(zv[i].e[e]);
        dn[i][e] = to_f(gv[i].e[e]) * weight[i][e] * ze * gate_of<T>(ze);
        squares += xe * xe;
        dn_x += dn[i][e] * xe;
      }
    }
#pragma unroll
    for (int offset = kLanes / 2; offset > 0; offset /= 2) {
      squares += __shfl_xor_sync(0xffffffffu, squares, offset);
      dn_x += __shfl_xor_sync(0xffffffffu, dn_x, offset);
    }
    const float inv_rms = rsqrtf(squares * inv_D + p.eps);
    const float correction = inv_rms * inv_rms * dn_x * inv_D;
    T* dx = reinterpret_cast<T*>(p.dx.data) + o.dx;
    T* dz = reinterpret_cast<T*>(p.dz.data) + o.dz;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t v = sub + i * kLanes;
      if (!valid || v >= vectors) continue;
      Vec16<T> dxv, dzv;
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float xe = to_f(xv[i].e[e]), ze = to_f(zv[i].e[e]), dye = to_f(gv[i].e[e]);
        const float gate = gate_of<T>(ze), n = xe * inv_rms;
        dxv.e[e] = from_f<T>(inv_rms * (dn[i][e] - xe * correction));
        dzv.e[e] = from_f<T>(dye * n * weight[i][e] * gate * (1.0f + ze * (1.0f - gate)));
        dweight[i][e] += dye * n * ze * gate;
      }
      reinterpret_cast<uint4*>(dx)[v] = dxv.raw;
      reinterpret_cast<uint4*>(dz)[v] = dzv.raw;
    }
  }
  // The warp's rows groups, then the block's warps, added in a fixed order.
#pragma unroll
  for (int offset = kLanes; offset < 32; offset *= 2) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
#pragma unroll
      for (int e = 0; e < kVec; ++e)
        dweight[i][e] += __shfl_xor_sync(0xffffffffu, dweight[i][e], offset);
    }
  }
  if (lane < kLanes) {
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) warp_sums[warp][(sub + i * kLanes) * kVec + e] = dweight[i][e];
    }
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < p.D; d += blockDim.x) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += warp_sums[w][d];
    partials[blockIdx.x * p.D + d] = sum;
  }
}

// A warp per row, any strides and D; each warp sums its rows' dweight into
// its own row of partials (lane-owned columns: no races).
template <class T>
__global__ void __launch_bounds__(kWarps * 32)
    norm_bwd_kernel(NormBwdParams p, RowSplit split, float* partials) {
  const int lane = threadIdx.x % 32;
  float* share = partials + (blockIdx.x * int64_t(kWarps) + threadIdx.x / 32) * p.D;
  for (int64_t d = lane; d < p.D; d += 32) share[d] = 0.0f;
  const float inv_D = 1.0f / static_cast<float>(p.D);
  int64_t first, last;
  warp_rows(p, split, first, last);
  for (int64_t row = first; row < last; ++row) {
    const RowOffsets o = offsets_of(p, row);
    const T* x = reinterpret_cast<const T*>(p.x.data) + o.x;
    const T* z = reinterpret_cast<const T*>(p.z.data) + o.z;
    const T* dy = reinterpret_cast<const T*>(p.dy.data) + o.dy;
    auto weight = [&](int64_t d) {
      return ld(p.weight.data, p.weight.dtype, d * p.weight.stride[0]);
    };
    float squares = 0.0f, dn_x = 0.0f;
    for (int64_t d = lane; d < p.D; d += 32) {
      const float xe = to_f(x[d * p.x.step]), ze = to_f(z[d * p.z.step]);
      squares += xe * xe;
      dn_x += to_f(dy[d * p.dy.step]) * weight(d) * ze * gate_of<T>(ze) * xe;
    }
    const float inv_rms = rsqrtf(warp_sum(squares) * inv_D + p.eps);
    const float correction = inv_rms * inv_rms * warp_sum(dn_x) * inv_D;
    T* dx = reinterpret_cast<T*>(p.dx.data) + o.dx;
    T* dz = reinterpret_cast<T*>(p.dz.data) + o.dz;
    for (int64_t d = lane; d < p.D; d += 32) {
      const float xe = to_f(x[d * p.x.step]), ze = to_f(z[d * p.z.step]);
      const float dye = to_f(dy[d * p.dy.step]), w = weight(d);
      const float gate = gate_of<T>(ze), n = xe * inv_rms;
      dx[d * p.dx.step] = from_f<T>(inv_rms * (dye * w * ze * gate - xe * correction));
      dz[d * p.dz.step] = from_f<T>(dye * n * w * gate * (1.0f + ze * (1.0f - gate)));
      share[d] += dye * n * ze * gate;
    }
  }
}

struct DweightStore {
  Arg dweight;
  __device__ void operator()(int64_t d, float sum) const {
    st(dweight.data, dweight.dtype, d * dweight.stride[0], sum);
  }
};

// 16-byte vectors per row for the vector kernel; 0 when it does not apply.
int64_t row_vectors(const NormBwdParams& p, int dtype) {
  const int64_t vectors = p.D / (dtype == kF32 ? 4 : 8);
  return p.vector && vectors <= 32 * kMaxVectorsPerLane ? vectors : 0;
}

// Partial rows: a block's share (vector kernel) or a warp's (general kernel).
int64_t partial_rows(const NormBwdParams& p, int dtype) {
  return split_rows(p.rows).blocks * (row_vectors(p, dtype) ? 1 : kWarps);
}

template <class T, int kLanes, int kPerLane>
void launch_vec(const NormBwdParams& p, const RowSplit& split, float* partials,
                cudaStream_t stream) {
  norm_bwd_vec_kernel<T, kLanes, kPerLane>
      <<<static_cast<unsigned>(split.blocks), kWarps * 32, 0, stream>>>(p, split, partials);
}

}  // namespace

size_t gated_rmsnorm_bwd_scratch_bytes(const NormBwdParams& p, int dtype) {
  return scratch_bytes("gated_rmsnorm_bwd", partial_rows(p, dtype), p.D, sizeof(float));
}

cudaError_t launch_gated_rmsnorm_bwd(const NormBwdParams& p, int dtype, void* scratch,
                                     cudaStream_t stream) {
  auto* partials = static_cast<float*>(scratch);
  const RowSplit split = split_rows(p.rows);
  const int64_t vectors = row_vectors(p, dtype);
  by_dtype(dtype, [&]<class T>(T) {
    if (vectors == 0)
      norm_bwd_kernel<T>
          <<<static_cast<unsigned>(split.blocks), kWarps * 32, 0, stream>>>(p, split, partials);
    else if (vectors <= 8)
      launch_vec<T, 8, 1>(p, split, partials, stream);
    else if (vectors <= 16)
      launch_vec<T, 16, 1>(p, split, partials, stream);
    else if (vectors <= 32)
      launch_vec<T, 32, 1>(p, split, partials, stream);
    else if (vectors <= 64)
      launch_vec<T, 32, 2>(p, split, partials, stream);
    else
      launch_vec<T, 32, 4>(p, split, partials, stream);
  });
  if (const cudaError_t status = cudaGetLastError(); status != cudaSuccess) return status;
  return launch_ordered_column_sum(partials, partial_rows(p, dtype), p.D, DweightStore{p.dweight},
                                   stream);
}

}  // namespace hops::cuda
