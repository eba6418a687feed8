// moe_route: a warp per token. Lane l owns the experts l, l + 32, ...; the k
// picks are k warp-wide argmax reductions over the lanes' best remaining
// expert (ties to the lower id), after each of which only the winning lane
// looks for its next best. Softmax's denominator and the renormalisation sum
// run in a fixed order (lane partials, then a fixed shuffle tree; the picks in
// order), so the weights are the same on every run.
#include "moe_common.cuh"

namespace hops::cuda {

namespace {

using moe::ld_idx;
using moe::st_idx;

constexpr int kWarps = 8;

// Expert (v, e) ranks before (bv, be): a larger logit, or the same and a lower id.
__device__ __forceinline__ bool before(float v, int64_t e, float bv, int64_t be) {
  return v > bv || (v == bv && e < be);
}

__global__ void __launch_bounds__(32 * kWarps) route_kernel(const MoeRouteParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t t = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  if (t >= p.T) return;
  const char* row = p.logits.data;
  const int64_t base = t * p.logits.stride[0], step = p.logits.stride[1];
  const auto logit = [&](int64_t e) { return ld(row, p.logits.dtype, base + e * step); };
  float max = -INFINITY;
  for (int64_t e = lane; e < p.E; e += 32) max = fmaxf(max, logit(e));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) max = fmaxf(max, __shfl_xor_sync(0xffffffffu, max, o));
  float all = 1.0f;  // softmax's denominator: sum over every expert of e^(l - max)
  if (!p.sigmoid) {
    float sum = 0.0f;
    for (int64_t e = lane; e < p.E; e += 32) sum += expf(logit(e) - max);
    all = warp_sum(sum);
  }
  const auto score = [&](float v) { return p.sigmoid ? sigmoidf_(v) : expf(v - max); };
  // This lane's best expert ranking after (after_v, after_e): -1 when none.
  const auto best_after = [&](float after_v, int64_t after_e, float& bv) {
    int64_t be = -1;
    bv = -INFINITY;
    for (int64_t e = lane; e < p.E; e += 32) {
      const float v = logit(e);
      if (before(after_v, after_e, v, e) && (be < 0 || before(v, e, bv, be))) bv = v, be = e;
    }
    return be;
  };
  float bv;
  int64_t be = best_after(INFINITY, -1, bv);
  float picked = 0.0f;  // the sum of the picked scores, in pick order
  for (int64_t j = 0; j < p.k; ++j) {
    float wv = bv;
    int64_t we = be;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, wv, o);
      const int64_t oe = __shfl_xor_sync(0xffffffffu, we, o);
      if (oe >= 0 && (we < 0 || before(ov, oe, wv, we))) wv = ov, we = oe;
    }
    if (lane == 0) st_idx(p.ids, t, j, we);
    if (we < 0) continue;  // no expert left (NaN logits)
    picked += score(wv);
    if (we % 32 == lane) be = best_after(wv, we, bv);
  }
  __syncwarp();  // the ids written by lane 0 are visible to the warp
  const float denominator = p.normalize ? picked : all;
  for (int64_t j = lane; j < p.k; j += 32) {
    const int64_t e = ld_idx(p.ids, t, j);
    const float w = e >= 0 ? score(logit(e)) / denominator : 0.0f;
    st(p.weights.data, p.weights.dtype, t * p.weights.stride[0] + j * p.weights.stride[1], w);
  }
}

}  // namespace

cudaError_t launch_moe_route(const MoeRouteParams& p, cudaStream_t stream) {
  if (p.T == 0 || p.k == 0) return cudaSuccess;
  route_kernel<<<static_cast<unsigned>((p.T + kWarps - 1) / kWarps), 32 * kWarps, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace hops::cuda
