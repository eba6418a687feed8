// Helpers every kernel file shares: dtype-generic loads and stores in fp32
// registers, index reads (clamped), the gate's functions; on the host, the
// opt-in to a kernel's dynamic shared memory.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda_params.hpp"

namespace hops::cuda {

// Opts `kernel` into `bytes` of dynamic shared memory on the current device,
// or cudaErrorNotSupported where the device's per-block limit is smaller
// (227 KB on sm_90, 163 KB on sm_80, 99 KB on sm_86 / sm_89): the call is
// then refused (HOPS_ERR_UNSUPPORTED) rather than launched to fail.
template <class Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  int device = 0, limit = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess)
    status = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (status != cudaSuccess) return status;
  if (bytes > static_cast<size_t>(limit)) return cudaErrorNotSupported;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

__device__ __forceinline__ float ld(const char* base, int dtype, int64_t i) {
  switch (dtype) {
    case kF16:
      return __half2float(reinterpret_cast<const __half*>(base)[i]);
    case kBF16:
      return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[i]);
    default:
      return reinterpret_cast<const float*>(base)[i];
  }
}
__device__ __forceinline__ void st(char* base, int dtype, int64_t i, float v) {
  switch (dtype) {
    case kF16:
      reinterpret_cast<__half*>(base)[i] = __float2half_rn(v);
      break;
    case kBF16:
      reinterpret_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
      break;
    default:
      reinterpret_cast<float*>(base)[i] = v;
  }
}

template <class T>
__device__ __forceinline__ float to_f(T x);
template <>
__device__ __forceinline__ float to_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ float to_f<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <class T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_f<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ int64_t ld_index(const Index& x, int64_t i) {
  return x.is64 ? reinterpret_cast<const int64_t*>(x.data)[i * x.stride]
                : reinterpret_cast<const int32_t*>(x.data)[i * x.stride];
}

// Sequence n's tokens: row n, [0, T) when dense; else row 0, cu[n]..cu[n+1]
// clamped to [0, T] and made nondecreasing, so that device-resident offsets
// can never send a kernel out of bounds.
struct Span {
  int64_t row, begin, end;
};
__device__ __forceinline__ Span sequence_span(const Index& cu, int64_t n, int64_t T) {
  if (!cu.data) return {n, 0, T};
  int64_t b = ld_index(cu, n), e = ld_index(cu, n + 1);
  b = b < 0 ? 0 : (b > T ? T : b);
  e = e < b ? b : (e > T ? T : e);
  return {0, b, e};
}

// Slot of sequence n; -1 (skip) when state_indices says so or is out of range.
__device__ __forceinline__ int64_t slot_of(const Index& idx, int64_t n, int64_t pool) {
  if (!idx.data) return n;
  const int64_t s = ld_index(idx, n);
  return (s >= 0 && s < pool) ? s : -1;
}

__device__ __forceinline__ int64_t row_offset(const RowsArg& a, int64_t row) {
  int64_t off = 0;
  for (int d = a.lead - 1; d >= 0; --d) {
    off += (row % a.shape[d]) * a.stride[d];
    row /= a.shape[d];
  }
  return off;
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float siluf_(float x) { return x * sigmoidf_(x); }
// torch's softplus: linear above the threshold.
__device__ __forceinline__ float softplusf_(float x, float beta, float threshold) {
  return beta * x > threshold ? x : log1pf(expf(beta * x)) / beta;
}

// What the GDN forwards fuse for value head hv (p.fused, kFuse* bits): the
// gate from the raw a with A_log and dt_bias, g = -exp(A_log)
// softplus(a + dt_bias) (torch's softplus: beta 1, threshold 20), and beta =
// sigmoid(b), doubled with kFuseDoubleBeta. The kernels test p.fused at the
// use (a param read) rather than keep it in a register.
struct FusedGate {
  __device__ FusedGate(int fused, const Arg& A_log, const Arg& dt_bias, int64_t hv) : mode(fused) {
    if (fused & kFuseGate) {
      rate = expf(ld(A_log.data, A_log.dtype, hv * A_log.stride[0]));
      bias = ld(dt_bias.data, dt_bias.dtype, hv * dt_bias.stride[0]);
    }
  }
  __device__ void apply(float& g, float& beta) const {
    if (mode & kFuseGate) g = -rate * softplusf_(g + bias, 1.0f, 20.0f);
    if (mode & kFuseSigmoid) beta = (mode & kFuseDoubleBeta ? 2.0f : 1.0f) * sigmoidf_(beta);
  }
  int mode;
  float rate = 0.0f, bias = 0.0f;  // exp(A_log[hv]), dt_bias[hv]
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Inclusive prefix sum of v over the warp's lanes.
__device__ __forceinline__ float warp_inclusive_scan(float v, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += y;
  }
  return v;
}

// Tensor cores, fp32 operands rounded to tf32 (round to nearest, ties away).
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
// d (16 x 8, f32) += a (16 x 8) b (8 x 8), tf32 operands (PTX ISA, mma.m16n8k8
// .tf32), with g = lane / 4, t = lane % 4:
//   a = {A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]}, b = {B[t][g], B[t+4][g]},
//   d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
__device__ __forceinline__ void mma_tf32(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// kV elements of any dtype `step` apart, out of line: the conv kernels' initial-
// state halo and d_final_state, kept off their hot loops' registers.
template <int kV>
struct Floats {
  float v[kV];
};

template <int kV>
__device__ __noinline__ Floats<kV> load_strided(const char* base, int dtype, int64_t offset,
                                                int64_t step) {
  Floats<kV> f;
  for (int c = 0; c < kV; ++c) f.v[c] = ld(base, dtype, offset + c * step);
  return f;
}

// ---- 16-byte vectors and cp.async (the streaming kernels) ------------------------

// 16 bytes of T as one raw vector (a 16-byte load/store) or as elements.
template <class T>
union Vec16 {
  uint4 raw;
  T e[16 / sizeof(T)];
};

template <class T, int kV>
__device__ __forceinline__ void unpack16(uint4 raw, float (&out)[kV]) {
  static_assert(kV * sizeof(T) == 16);
  Vec16<T> v;
  v.raw = raw;
#pragma unroll
  for (int c = 0; c < kV; ++c) out[c] = to_f(v.e[c]);
}

// kV floats rounded to T and packed (two per instruction for 16-bit T).
template <class T, int kV>
__device__ __forceinline__ uint4 pack16(const float (&in)[kV]) {
  static_assert(kV * sizeof(T) == 16);
  Vec16<T> v;
#pragma unroll
  for (int c = 0; c < kV; c += 2) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>)
      reinterpret_cast<__nv_bfloat162*>(v.e)[c / 2] = __floats2bfloat162_rn(in[c], in[c + 1]);
    else if constexpr (std::is_same_v<T, __half>)
      reinterpret_cast<__half2*>(v.e)[c / 2] = __floats2half2_rn(in[c], in[c + 1]);
    else
      v.e[c] = in[c], v.e[c + 1] = in[c + 1];
  }
  return v.raw;
}

// 16 bytes global -> shared, zero-filled when !valid (src must still be mapped).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const auto shared = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most kPending of this thread's committed groups are in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

inline int grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  constexpr int64_t kMax = 65535 * 16;
  return static_cast<int>(blocks < 1 ? 1 : (blocks < kMax ? blocks : kMax));
}

// Calls body(T{}) with T the storage type of an activation dtype code.
template <class Body>
void by_dtype(int dtype, Body&& body) {
  switch (dtype) {
    case kF16:
      body(__half{});
      break;
    case kBF16:
      body(__nv_bfloat16{});
      break;
    default:
      body(float{});
  }
}

}  // namespace hops::cuda
