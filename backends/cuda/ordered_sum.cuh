// Deterministic reductions of per-block partial sums (the backwards' weight
// gradients): partials [P, width] in fp32 scratch, written by the first
// kernel of an op (one row per block or warp, a fixed split of the tokens
// that depends on the problem's shape only), are added here in a fixed order:
// thread (column, slice) sums rows slice, slice + kSlices, ... in order, then
// the kSlices sums are added in slice order. No atomics, so the result is the
// same on every run and for any scheduling.
#pragma once

#include "device_common.cuh"

namespace hops::cuda {

inline constexpr int kSumColumns = 32;  // columns per block (one warp's width)
inline constexpr int kSumSlices = 32;   // partial rows split over the block's 32 rows of threads

// Calls store(column, sum) once per column of the [rows, width] partials.
template <class Store>
__global__ void __launch_bounds__(kSumColumns* kSumSlices)
    ordered_column_sum_kernel(const float* partials, int64_t rows, int64_t width, Store store) {
  __shared__ float sums[kSumSlices][kSumColumns + 1];
  const int lane = threadIdx.x % kSumColumns, slice = threadIdx.x / kSumColumns;
  const int64_t column = blockIdx.x * int64_t(kSumColumns) + lane;
  float sum = 0.0f;
  if (column < width) {
    for (int64_t r = slice; r < rows; r += kSumSlices) sum += partials[r * width + column];
  }
  sums[slice][lane] = sum;
  __syncthreads();
  if (slice == 0 && column < width) {
    float total = 0.0f;
#pragma unroll
    for (int s = 0; s < kSumSlices; ++s) total += sums[s][lane];
    store(column, total);
  }
}

template <class Store>
cudaError_t launch_ordered_column_sum(const float* partials, int64_t rows, int64_t width,
                                      Store store, cudaStream_t stream) {
  if (width <= 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>((width + kSumColumns - 1) / kSumColumns);
  ordered_column_sum_kernel<<<blocks, kSumColumns * kSumSlices, 0, stream>>>(partials, rows, width,
                                                                             store);
  return cudaGetLastError();
}

}  // namespace hops::cuda
