// Host helpers of the sm_90a kernels (attn_prefill_sm90.cu, attn_bwd_sm90.cu):
// TMA tensor maps of [B, T, H, D] views and the check that the module holds a
// kernel as sm_90a code.
#pragma once

#include <cuda.h>  // CUtensorMap
#include <cuda_runtime.h>

#include "cuda_params.hpp"

namespace hops::cuda::sm90 {

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// The driver's cuTensorMapEncodeTiled, looked up once (the runtime is linked
// statically; libcuda is reached through the runtime's entry-point query).
inline EncodeTiled encode_tiled() {
  static const EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();  // not sticky; leave no error for later launches to report
      f = nullptr;
    }
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
}

// A rank-4 map [B, T, H, D] (D innermost) with boxes of 64 columns x `rows`
// tokens of one head, 128-byte swizzle, zeros past the tensor's ends. False
// when TMA cannot describe the view (a negative stride, or the driver refuses).
inline bool tensor_map(CUtensorMap& map, EncodeTiled encode, const Arg& a, int dtype, int rows) {
  cuuint64_t dims[4], strides[3];
  for (int d = 0; d < 4; ++d)
    dims[d] = static_cast<cuuint64_t>(a.shape[3 - d] > 0 ? a.shape[3 - d] : 1);
  for (int d = 1; d < 4; ++d) {
    const int64_t st = a.stride[3 - d];
    if (st < 0 && a.shape[3 - d] > 1) return false;
    // A dimension of extent 1 is never stepped: give it the packed stride.
    strides[d - 1] = a.shape[3 - d] > 1 ? static_cast<cuuint64_t>(st) * 2
                                        : (d == 1 ? dims[0] * 2 : strides[d - 2] * dims[d - 1]);
  }
  const cuuint32_t box[4] = {64, 1, static_cast<cuuint32_t>(rows), 1};
  const cuuint32_t unit[4] = {1, 1, 1, 1};
  return encode(&map,
                dtype == kBF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                4, a.data, dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Whether the module holds `kernel` as sm_90a code. A module built for other
// targets (HOPS_CUDA_ARCHITECTURES without 90a: e.g. compute_80 PTX, which a
// Hopper compiles on load) has an empty kernel there; the build refuses a
// plain compute_90 target, so PTX version 90 means sm_90a.
inline bool has_sm90a_code(const void* kernel) {
  cudaFuncAttributes attributes{};
  const bool found = cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess;
  (void)cudaGetLastError();  // not sticky; leave no error for later launches to report
  return found && attributes.ptxVersion >= 90;
}

// A compute capability 9.0 device is current (the sm_90a kernels' first check).
inline cudaError_t hopper_device(bool& hopper) {
  int device = 0, major = 0, minor = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess)
    status = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (status == cudaSuccess)
    status = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  hopper = major == 9 && minor == 0;
  return status;
}

}  // namespace hops::cuda::sm90
