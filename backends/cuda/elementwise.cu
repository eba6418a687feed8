// gdn_gating and gated_rmsnorm: memory-bound row ops on [..., HV] / [..., D].
#include "device_common.cuh"

namespace hops::cuda {

namespace {

__global__ void gating_kernel(GatingParams p) {
  const int64_t total = p.rows * p.HV;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / p.HV, h = i % p.HV;
    const float a = ld(p.a.data, p.a.dtype, row_offset(p.a, row) + h * p.a.step);
    const float b = ld(p.b.data, p.b.dtype, row_offset(p.b, row) + h * p.b.step);
    const float A = expf(ld(p.A_log.data, p.A_log.dtype, h * p.A_log.stride[0]));
    const float bias = ld(p.dt_bias.data, p.dt_bias.dtype, h * p.dt_bias.stride[0]);
    st(p.g.data, p.g.dtype, row_offset(p.g, row) + h * p.g.step,
       -A * softplusf_(a + bias, p.softplus_beta, p.softplus_threshold));
    st(p.beta.data, p.beta.dtype, row_offset(p.beta, row) + h * p.beta.step, sigmoidf_(b));
  }
}

// One warp per row; the row is read twice (the second time from L1/L2).
template <class T>
__global__ void rmsnorm_kernel(NormParams p) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.rows) return;
  const T* x = reinterpret_cast<const T*>(p.x.data) + row_offset(p.x, row);
  const T* z = reinterpret_cast<const T*>(p.z.data) + row_offset(p.z, row);
  T* y = reinterpret_cast<T*>(p.y.data) + row_offset(p.y, row);
  float sum = 0.0f;
  for (int64_t d = lane; d < p.D; d += 32) {
    const float v = to_f(x[d * p.x.step]);
    sum += v * v;
  }
  sum = warp_sum(sum);
  const float inv = rsqrtf(sum / static_cast<float>(p.D) + p.eps);
  for (int64_t d = lane; d < p.D; d += 32) {
    const float w = ld(p.weight.data, p.weight.dtype, d * p.weight.stride[0]);
    y[d * p.y.step] = from_f<T>(to_f(x[d * p.x.step]) * inv * w * siluf_(to_f(z[d * p.z.step])));
  }
}

}  // namespace

cudaError_t launch_gdn_gating(const GatingParams& p, cudaStream_t stream) {
  gating_kernel<<<grid_for(p.rows * p.HV, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_gated_rmsnorm(const NormParams& p, int dtype, cudaStream_t stream) {
  constexpr int kWarps = 8;
  const auto blocks = static_cast<unsigned>((p.rows + kWarps - 1) / kWarps);
  by_dtype(dtype, [&]<class T>(T) { rmsnorm_kernel<T><<<blocks, kWarps * 32, 0, stream>>>(p); });
  return cudaGetLastError();
}

}  // namespace hops::cuda
