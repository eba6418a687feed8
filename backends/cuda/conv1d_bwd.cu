// conv1d_bwd: the backward of the depthwise causal conv (math as in
// backends/cpu/conv1d_bwd.cpp). With u[p] the input at position p of a
// sequence (a token, else its initial state's column L0 + p, else 0),
// pre[t] = bias + sum_m taps[m] u[t-3+m] (taps right-aligned into 4) and
// dpre[t] = dy[t] act'(pre[t]) (pre recomputed from x):
//   dx[s]   = sum_m taps[m] dpre[s+3-m]  (+ d_final_state where u[s] was copied)
//   dweight = sum_t dpre[t] u[t-3+m],  dbias = sum_t dpre[t]
// The flat tokens (B*T) are cut into runs of kRunTokens; a thread owns kVec
// channels of a run, slides its windows of inputs and dpre in registers, and
// writes dx plus its run's share of dweight/dbias to scratch. A second kernel
// adds the shares in run order (ordered_sum.cuh): deterministic. A third
// writes d_initial_state, a thread per (sequence, channel, column).
// Dense 16-byte-aligned inputs take conv_bwd_vec_kernel instead of the first
// kernel (8 channels of 16-bit or 4 of f32 per thread, rows streamed through a
// cp.async ring, runs of 128 tokens cut per row), or on Hopper with a 16-bit
// dtype conv_bwd_bulk_kernel (row segments moved by bulk copies, shares per
// 256-token segment); the rest stays as described.
#include <cstdlib>
#include <string>
#include <type_traits>

#include "checked_math.hpp"
#include "ordered_sum.cuh"
#include "wgmma.cuh"

namespace hops::cuda {

namespace {

constexpr int kVec = 4;          // channels per thread: 16-byte f32 / 8-byte 16-bit accesses
constexpr int kRunTokens = 256;  // fixes the split of the shares: halo 3/256
constexpr int kTile = 4;         // tokens whose loads are issued before the previous tile's math
constexpr int kThreads = 128;
constexpr int kShareRows = 5;  // the 4 right-aligned taps, then the bias

// kVec channels of one token as one raw vector (16 or 8 bytes) or as elements.
template <class T>
union Group {
  std::conditional_t<sizeof(T) == 4, uint4, uint2> raw;
  T e[kVec];
};

template <class T, bool kVector>
__device__ __forceinline__ Group<T> load_group(const T* p, int64_t step, int count) {
  Group<T> g;
  if constexpr (kVector) {
    g.raw = *reinterpret_cast<const decltype(g.raw)*>(p);
  } else {
#pragma unroll
    for (int c = 0; c < kVec; ++c) g.e[c] = c < count ? p[c * step] : from_f<T>(0.0f);
  }
  return g;
}

template <class T, bool kVector>
__device__ __forceinline__ void store_group(T* p, int64_t step, int count, const float (&v)[kVec]) {
  Group<T> g;
#pragma unroll
  for (int c = 0; c < kVec; ++c) g.e[c] = from_f<T>(v[c]);
  if constexpr (kVector) {
    *reinterpret_cast<decltype(g.raw)*>(p) = g.raw;
  } else {
#pragma unroll
    for (int c = 0; c < kVec; ++c)
      if (c < count) p[c * step] = g.e[c];
  }
}

template <class T>
__device__ __forceinline__ void unpack(const Group<T>& g, float (&out)[kVec]) {
#pragma unroll
  for (int c = 0; c < kVec; ++c) out[c] = to_f(g.e[c]);
}

// silu'(pre); with a 16-bit T the approximate exp and division (~1e-6
// relative error, far below the gradient's rounding), as the forward does.
template <class T>
__device__ __forceinline__ float silu_grad(float pre) {
  const float gate = sizeof(T) == 2 ? __fdividef(1.0f, 1.0f + __expf(-pre)) : sigmoidf_(pre);
  return gate * (1.0f + pre * (1.0f - gate));
}

// Sequence n: its row of x and its flat tokens [first, end) (dense: row n).
struct Sequence {
  int64_t n, row, first, end;
};

__device__ __forceinline__ Sequence sequence_at(const ConvBwdParams& p, int64_t flat) {
  if (!p.cu.data) {
    const int64_t n = flat / p.T;
    return {n, n, n * p.T, (n + 1) * p.T};
  }
  int64_t lo = 0, hi = p.N - 1;  // the last n with (clamped) cu[n] <= flat
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (sequence_span(p.cu, mid, p.T).begin <= flat)
      lo = mid;
    else
      hi = mid - 1;
  }
  const Span s = sequence_span(p.cu, lo, p.T);
  return {lo, 0, s.begin, s.end};
}

// Channel d (any dtype, any strides) of a state [N, D, L] at (n, column).
__device__ __forceinline__ float state_at(const Arg& s, int64_t n, int64_t d, int64_t column) {
  return ld(s.data, s.dtype, n * s.stride[0] + d * s.stride[1] + column * s.stride[2]);
}

// Taps right-aligned (taps[m] = w[m - (4 - W)], zero before) and the bias of
// channels d0 ..; channels past `count` repeat the last one (never stored).
__device__ __forceinline__ void load_filter(const ConvBwdParams& p, int64_t d0, int count,
                                            float (&taps)[4][kVec], float (&bias)[kVec]) {
#pragma unroll
  for (int c = 0; c < kVec; ++c) {
    const int64_t d = d0 + (c < count ? c : count - 1);
    bias[c] = p.bias.data ? ld(p.bias.data, p.bias.dtype, d * p.bias.stride[0]) : 0.0f;
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int64_t j = m - (4 - p.W);
      taps[m][c] = j >= 0 ? ld(p.weight.data, p.weight.dtype,
                               d * p.weight.stride[0] + j * p.weight.stride[1])
                          : 0.0f;
    }
  }
}

// u at sequence position q < 0: the initial state's column L0 + q, else 0.
__device__ __forceinline__ void load_before(const ConvBwdParams& p, const Sequence& s, int64_t q,
                                            int64_t d0, int count, float (&out)[kVec]) {
  const int64_t column = p.initial_state.data ? p.initial_state.shape[2] + q : -1;
#pragma unroll
  for (int c = 0; c < kVec; ++c)
    out[c] = column >= 0 ? state_at(p.initial_state, s.n, d0 + (c < count ? c : 0), column) : 0.0f;
}

// Flat tokens [a, b) of sequence s for channels d0 ..: dx, and their share.
template <class T, bool kVector>
__device__ __forceinline__ void backward_piece(const ConvBwdParams& p, const Sequence& s, int64_t a,
                                               int64_t b, int64_t d0, int count,
                                               const float (&taps)[4][kVec],
                                               const float (&bias)[kVec],
                                               float (&share)[kShareRows][kVec]) {
  const int64_t xs = p.x.stride[2], gs = p.dy.stride[2], ds = p.dx.stride[2];
  const int64_t t_base = s.row * p.T;  // flat token f is time index f - t_base of the row
  const T* x = reinterpret_cast<const T*>(p.x.data) + s.row * p.x.stride[0] + d0 * xs;
  const T* dy = reinterpret_cast<const T*>(p.dy.data) + s.row * p.dy.stride[0] + d0 * gs;
  T* dx = reinterpret_cast<T*>(p.dx.data) + s.row * p.dx.stride[0] + d0 * ds;
  const int64_t length = s.end - s.first;
  // win[m] = u[t-3+m] and ring[k] = dpre[t-3+k] around the token t; before
  // the first token, win[1..3] hold u[a-3 .. a-1] (shifted in the loop).
  float win[4][kVec], ring[4][kVec] = {};
#pragma unroll
  for (int j = 0; j < 3; ++j) {
    const int64_t f = a - 3 + j;
    if (f >= s.first)
      unpack(load_group<T, kVector>(x + (f - t_base) * p.x.stride[1], xs, count), win[j + 1]);
    else
      load_before(p, s, f - s.first, d0, count, win[j + 1]);
  }
  // dpre runs 3 tokens ahead of dx: tokens up to b + 2 are read (the halo).
  const int64_t loaded_end = b + 3 < s.end ? b + 3 : s.end;
  Group<T> tile_x[kTile], tile_dy[kTile];
  auto load_tile = [&](int64_t t0, Group<T>(&tx)[kTile], Group<T>(&tg)[kTile]) {
#pragma unroll
    for (int i = 0; i < kTile; ++i) {
      const int64_t t = t0 + i - t_base;
      if (t0 + i < loaded_end) {
        tx[i] = load_group<T, kVector>(x + t * p.x.stride[1], xs, count);
        tg[i] = load_group<T, kVector>(dy + t * p.dy.stride[1], gs, count);
      }
    }
  };
  load_tile(a, tile_x, tile_dy);
  for (int64_t t0 = a; t0 < b + 3; t0 += kTile) {
    Group<T> next_x[kTile], next_dy[kTile];
    if (t0 + kTile < loaded_end) load_tile(t0 + kTile, next_x, next_dy);
#pragma unroll
    for (int i = 0; i < kTile; ++i) {
      const int64_t t = t0 + i;
      if (t >= b + 3) break;
#pragma unroll
      for (int c = 0; c < kVec; ++c) {
#pragma unroll
        for (int k = 0; k < 3; ++k) win[k][c] = win[k + 1][c], ring[k][c] = ring[k + 1][c];
      }
      if (t < loaded_end) {
        float gradient[kVec];
        unpack(tile_x[i], win[3]);
        unpack(tile_dy[i], gradient);
#pragma unroll
        for (int c = 0; c < kVec; ++c) {
          float pre = bias[c];
#pragma unroll
          for (int m = 0; m < 4; ++m) pre += taps[m][c] * win[m][c];
          ring[3][c] = p.silu ? gradient[c] * silu_grad<T>(pre) : gradient[c];
        }
      } else {
#pragma unroll
        for (int c = 0; c < kVec; ++c) ring[3][c] = 0.0f;  // past the sequence's end
      }
      if (t < b) {
#pragma unroll
        for (int c = 0; c < kVec; ++c) {
#pragma unroll
          for (int m = 0; m < 4; ++m) share[m][c] += ring[3][c] * win[m][c];
          share[4][c] += ring[3][c];
        }
      }
      const int64_t f = t - 3;  // the token whose dx is complete
      if (f < a) continue;
      float out[kVec];
#pragma unroll
      for (int c = 0; c < kVec; ++c) {
        out[c] = 0.0f;
#pragma unroll
        for (int m = 0; m < 4; ++m) out[c] += taps[m][c] * ring[3 - m][c];
      }
      if (p.d_final_state.data) {
        const int64_t column = (f - s.first) - length + p.d_final_state.shape[2];
        if (column >= 0) {
#pragma unroll
          for (int c = 0; c < kVec; ++c)
            out[c] += state_at(p.d_final_state, s.n, d0 + (c < count ? c : 0), column);
        }
      }
      store_group<T, kVector>(dx + (f - t_base) * p.dx.stride[1], ds, count, out);
    }
#pragma unroll
    for (int i = 0; i < kTile; ++i) tile_x[i] = next_x[i], tile_dy[i] = next_dy[i];
  }
}

// Work item (run, group of kVec channels): dx of the run's tokens, and the
// run's share in partials[run][m][D] (m: right-aligned tap, 4: bias).
template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads)
    conv_bwd_tokens_kernel(ConvBwdParams p, float* partials) {
  const int64_t groups = (p.D + kVec - 1) / kVec;
  const int64_t tokens = p.B * p.T;
  const int64_t work = (tokens + kRunTokens - 1) / kRunTokens * groups;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < work;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t group = w % groups, run = w / groups;
    const int64_t d0 = group * kVec;
    const int count = static_cast<int>(p.D - d0 < kVec ? p.D - d0 : kVec);
    float taps[4][kVec], bias[kVec], share[kShareRows][kVec] = {};
    load_filter(p, d0, count, taps, bias);
    const int64_t run_end = (run + 1) * kRunTokens < tokens ? (run + 1) * kRunTokens : tokens;
    for (int64_t f = run * kRunTokens; f < run_end;) {
      const Sequence s = sequence_at(p, f);
      if (f >= s.end) {  // in no sequence (device-resident offsets that skip it): dx = 0
        const float zero[kVec] = {};
        store_group<T, false>(
            reinterpret_cast<T*>(p.dx.data) + f * p.dx.stride[1] + d0 * p.dx.stride[2],
            p.dx.stride[2], count, zero);
        ++f;
        continue;
      }
      const int64_t piece_end = run_end < s.end ? run_end : s.end;
      backward_piece<T, kVector>(p, s, f, piece_end, d0, count, taps, bias, share);
      f = piece_end;
    }
    float* out = partials + run * kShareRows * p.D + d0;
#pragma unroll
    for (int m = 0; m < kShareRows; ++m) {
      if constexpr (kVector) {
        *reinterpret_cast<float4*>(out + m * p.D) =
            make_float4(share[m][0], share[m][1], share[m][2], share[m][3]);
      } else {
#pragma unroll
        for (int c = 0; c < kVec; ++c)
          if (c < count) out[m * p.D + c] = share[m][c];
      }
    }
  }
}

// ---- seq_idx ----------------------------------------------------------------------
// conv_bwd_ids_kernel: calls with seq_idx (dense rows, no states). Tap m of
// token t reads u[t-3+m] only when that token has t's id; a token with a
// negative id (padding, y = 0) has dpre = 0. A thread per (run of kRunTokens
// flat tokens, channel) writes dx and the run's share in the layout of
// conv_bwd_tokens_kernel, recomputing each dpre where it is needed: a plain
// path for a rarer layout.
__device__ __forceinline__ bool linked(const ConvBwdParams& p, int64_t row, int64_t q, int64_t t) {
  return q >= 0 && q < p.T && ld_index(p.ids, row * p.T + q) == ld_index(p.ids, row * p.T + t);
}

template <class T>
__device__ float dpre_linked(const ConvBwdParams& p, int64_t row, int64_t t, int64_t d,
                             const float (&taps)[4], float bias) {
  if (t >= p.T || ld_index(p.ids, row * p.T + t) < 0) return 0.0f;
  const T* x = reinterpret_cast<const T*>(p.x.data) + row * p.x.stride[0] + d * p.x.stride[2];
  const float gradient = to_f(reinterpret_cast<const T*>(
      p.dy.data)[row * p.dy.stride[0] + t * p.dy.stride[1] + d * p.dy.stride[2]]);
  if (!p.silu) return gradient;
  float pre = bias;
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    const int64_t q = t - 3 + m;
    if (linked(p, row, q, t)) pre += taps[m] * to_f(x[q * p.x.stride[1]]);
  }
  return gradient * silu_grad<T>(pre);
}

template <class T>
__global__ void __launch_bounds__(kThreads) conv_bwd_ids_kernel(ConvBwdParams p, float* partials) {
  const int64_t tokens = p.B * p.T;
  const int64_t work = (tokens + kRunTokens - 1) / kRunTokens * p.D;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < work;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = w % p.D, run = w / p.D;
    float taps[4];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int64_t j = m - (4 - p.W);
      taps[m] = j >= 0 ? ld(p.weight.data, p.weight.dtype,
                            d * p.weight.stride[0] + j * p.weight.stride[1])
                       : 0.0f;
    }
    const float bias = p.bias.data ? ld(p.bias.data, p.bias.dtype, d * p.bias.stride[0]) : 0.0f;
    float share[kShareRows] = {};
    const int64_t run_end = (run + 1) * kRunTokens < tokens ? (run + 1) * kRunTokens : tokens;
    for (int64_t f = run * kRunTokens; f < run_end; ++f) {
      const int64_t row = f / p.T, t = f % p.T;
      const T* x = reinterpret_cast<const T*>(p.x.data) + row * p.x.stride[0] + d * p.x.stride[2];
      float gradient = 0.0f;  // dx[t]: the taps of later tokens of t's sequence that read it
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const int64_t reader = t + 3 - m;
        if (linked(p, row, reader, t))
          gradient += taps[m] * dpre_linked<T>(p, row, reader, d, taps, bias);
      }
      reinterpret_cast<T*>(
          p.dx.data)[row * p.dx.stride[0] + t * p.dx.stride[1] + d * p.dx.stride[2]] =
          from_f<T>(gradient);
      const float own = dpre_linked<T>(p, row, t, d, taps, bias);
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const int64_t q = t - 3 + m;
        if (linked(p, row, q, t)) share[m] += own * to_f(x[q * p.x.stride[1]]);
      }
      share[4] += own;
    }
    float* out = partials + run * kShareRows * p.D + d;
#pragma unroll
    for (int m = 0; m < kShareRows; ++m) out[m * p.D] = share[m];
  }
}

// ---- The dense fast path -----------------------------------------------------
// conv_bwd_vec_kernel: dense x, dy, dx (no cu_seqlens) with unit channel
// stride, D and the other strides multiples of kV = 16 / sizeof(T) and 16-byte
// aligned data (checked on the host: vector_path). A thread owns kV channels
// (8 for 16-bit, 4 for f32) of a run of kVecRunTokens tokens of one row and
// streams its x and dy rows through private cp.async rings in shared memory,
// two tiles of kVecTile tokens ahead of the arithmetic: each row is read once
// (the 3 x rows before the run and the 3 x / dy rows after it are read again
// by the neighbouring runs), the windows of u and dpre stay in registers and
// dx goes out by 16-byte streaming stores. Runs are cut per row, so the
// shares are partials[row * runs_per_row + run] (a split fixed by the shape).
// The 16-bit instance needs ~210 registers (8 channels: taps, bias, two
// windows and 5 share rows are ~140 of them), so 8 warps per SM (4 CTAs of
// 64 threads, 255 registers each; at 10 or 12 warps ptxas caps it at 168 and
// spills); the 48 KB of rings per CTA keep up to 24 tokens (768 bytes) per
// thread in flight.
constexpr int kVecThreads = 64;
constexpr int kVecBlocksPerSm = 4;
constexpr int kVecTile = 8;
constexpr int kRingTiles = 3;  // the tile being read and the two in flight
constexpr int kRing = kRingTiles * kVecTile;
constexpr int kVecRunTokens = 128;

// load_filter with the dtype switches outside the loops, so that a thread's
// 4 kV tap loads and kV bias loads are issued together.
template <class S, int kV>
__device__ __forceinline__ void load_taps_as(const Arg& weight, int64_t W, int64_t d0,
                                             float (&taps)[4][kV]) {
  const S* w = reinterpret_cast<const S*>(weight.data);
#pragma unroll
  for (int c = 0; c < kV; ++c) {
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const int64_t j = m - (4 - W);
      taps[m][c] = j >= 0 ? to_f(w[(d0 + c) * weight.stride[0] + j * weight.stride[1]]) : 0.0f;
    }
  }
}
template <class S, int kV>
__device__ __forceinline__ void load_bias_as(const Arg& bias, int64_t d0, float (&out)[kV]) {
  const S* b = reinterpret_cast<const S*>(bias.data);
#pragma unroll
  for (int c = 0; c < kV; ++c) out[c] = to_f(b[(d0 + c) * bias.stride[0]]);
}
template <int kV>
__device__ __forceinline__ void load_filter_vec(const ConvBwdParams& p, int64_t d0,
                                                float (&taps)[4][kV], float (&bias)[kV]) {
  switch (p.weight.dtype) {
    case kF16:
      load_taps_as<__half, kV>(p.weight, p.W, d0, taps);
      break;
    case kBF16:
      load_taps_as<__nv_bfloat16, kV>(p.weight, p.W, d0, taps);
      break;
    default:
      load_taps_as<float, kV>(p.weight, p.W, d0, taps);
  }
  if (!p.bias.data) {
#pragma unroll
    for (int c = 0; c < kV; ++c) bias[c] = 0.0f;
    return;
  }
  switch (p.bias.dtype) {
    case kF16:
      load_bias_as<__half, kV>(p.bias, d0, bias);
      break;
    case kBF16:
      load_bias_as<__nv_bfloat16, kV>(p.bias, d0, bias);
      break;
    default:
      load_bias_as<float, kV>(p.bias, d0, bias);
  }
}

template <class T>
__global__ void __launch_bounds__(kVecThreads, kVecBlocksPerSm)
    conv_bwd_vec_kernel(ConvBwdParams p, float* partials) {
  constexpr int kV = 16 / sizeof(T);
  // [slot][thread]: conflict-free 16-byte accesses. Step k of a run (token
  // a + k, of tile k / kVecTile) has its x and dy rows in slot k % kRing.
  __shared__ uint4 xring[kRing][kVecThreads];
  __shared__ uint4 gring[kRing][kVecThreads];
  const int lane = threadIdx.x;
  const int64_t groups = p.D / kV;
  const int64_t runs = (p.T + kVecRunTokens - 1) / kVecRunTokens;  // per row
  const int64_t work = p.B * runs * groups;
  const int64_t L1 = p.d_final_state.data ? p.d_final_state.shape[2] : 0;
  const int64_t xs = p.x.stride[1], gs = p.dy.stride[1], ds = p.dx.stride[1];
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < work;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t group = w % groups, run = w / groups;  // run = row * runs + run of the row
    const int64_t row = run / runs;
    const int64_t a = run % runs * kVecRunTokens;  // the run: tokens [a, b) of the row
    const int64_t b = a + kVecRunTokens < p.T ? a + kVecRunTokens : p.T;
    const int64_t e = b + 3 < p.T ? b + 3 : p.T;  // dpre runs 3 tokens ahead: [a, e) is read
    const int64_t d0 = group * kV;
    const T* x = reinterpret_cast<const T*>(p.x.data) + row * p.x.stride[0] + d0;
    const T* dy = reinterpret_cast<const T*>(p.dy.data) + row * p.dy.stride[0] + d0;
    T* dx = reinterpret_cast<T*>(p.dx.data) + row * p.dx.stride[0] + d0;
    // Step k: dpre of token a + k (0 past the row's end), dx of token a + k - 3.
    const int steps = static_cast<int>(b + 3 - a);
    const int tiles = (steps + kVecTile - 1) / kVecTile;
    // Issues tile `tile`'s rows and commits a group (empty past the run, so
    // that "all but two" is always the tile about to be read).
    auto issue = [&](int tile) {
      if (tile < tiles) {
        const int slot = tile % kRingTiles * kVecTile;
#pragma unroll
        for (int i = 0; i < kVecTile; ++i) {
          const int k = tile * kVecTile + i;
          const int64_t t = a + k;
          const bool valid = t < e;  // zero-filled past the row's end
          if (k < steps) {
            cp_async16(&xring[slot + i][lane], valid ? x + t * xs : x, valid);
            cp_async16(&gring[slot + i][lane], valid ? dy + t * gs : dy, valid);
          }
        }
      }
      cp_async_commit();
    };
    issue(0);
    issue(1);
    // The halo: u at tokens a-3 .. a-1 (plain loads, consumed after the first wait).
    uint4 halo[3];
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const int64_t t = a - 3 + j;
      halo[j] = t >= 0 ? *reinterpret_cast<const uint4*>(x + t * xs) : make_uint4(0, 0, 0, 0);
    }
    float taps[4][kV], bias[kV];
    load_filter_vec<kV>(p, d0, taps, bias);
    // win[m] = u[t-3+m] and dp[m] = dpre[t-3+m] around the step's token t.
    float win[4][kV] = {}, dp[4][kV] = {}, share[kShareRows][kV] = {};
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const int64_t q = a - 3 + j;  // before the sequence: initial state or zero
      if (q < 0 && p.initial_state.data) {
        const Arg& s = p.initial_state;
        const int64_t column = s.shape[2] + q;
        const Floats<kV> f =
            column < 0
                ? Floats<kV>{}
                : load_strided<kV>(s.data, s.dtype,
                                   row * s.stride[0] + d0 * s.stride[1] + column * s.stride[2],
                                   s.stride[1]);
#pragma unroll
        for (int c = 0; c < kV; ++c) win[j + 1][c] = f.v[c];
      } else {
        unpack16<T, kV>(halo[j], win[j + 1]);
      }
    }
    auto step = [&](auto edge, int k, int slot) {
      constexpr bool kEdge = decltype(edge)::value;
      if (kEdge && k >= steps) return;
      const int64_t t = a + k;
#pragma unroll
      for (int j = 0; j < 3; ++j) {
#pragma unroll
        for (int c = 0; c < kV; ++c) win[j][c] = win[j + 1][c], dp[j][c] = dp[j + 1][c];
      }
      float gradient[kV];
      unpack16<T, kV>(xring[slot][lane], win[3]);
      unpack16<T, kV>(gring[slot][lane], gradient);
#pragma unroll
      for (int c = 0; c < kV; ++c) {
        float pre = bias[c];
#pragma unroll
        for (int m = 0; m < 4; ++m) pre += taps[m][c] * win[m][c];
        dp[3][c] = p.silu ? gradient[c] * silu_grad<T>(pre) : gradient[c];
        if (kEdge && t >= e) dp[3][c] = 0.0f;  // past the row's end
      }
      if (!kEdge || t < b) {
#pragma unroll
        for (int c = 0; c < kV; ++c) {
#pragma unroll
          for (int m = 0; m < 4; ++m) share[m][c] += dp[3][c] * win[m][c];
          share[4][c] += dp[3][c];
        }
      }
      if (kEdge && t - 3 < a) return;  // dx of tokens before the run: the previous run's
      float out[kV];
#pragma unroll
      for (int c = 0; c < kV; ++c) {
        out[c] = 0.0f;
#pragma unroll
        for (int m = 0; m < 4; ++m) out[c] += taps[m][c] * dp[3 - m][c];
      }
      if (kEdge && L1 > 0) {
        const int64_t column = t - 3 - p.T + L1;  // u[t-3] was copied to the final state
        if (column >= 0) {
          const Arg& s = p.d_final_state;
          const Floats<kV> f = load_strided<kV>(
              s.data, s.dtype, row * s.stride[0] + d0 * s.stride[1] + column * s.stride[2],
              s.stride[1]);
#pragma unroll
          for (int c = 0; c < kV; ++c) out[c] += f.v[c];
        }
      }
      __stcs(reinterpret_cast<uint4*>(dx + (t - 3) * ds), pack16<T, kV>(out));
    };
    for (int tile = 0; tile < tiles; ++tile) {
      issue(tile + 2);
      cp_async_wait<2>();
      const int k0 = tile * kVecTile, slot = tile % kRingTiles * kVecTile;
      // No guards needed: past the first tile (dx of the run's tokens only),
      // inside the run (shares, rows read), before d_final_state's columns.
      const bool interior =
          tile > 0 && a + k0 + kVecTile <= b && (L1 == 0 || a + k0 + kVecTile - 3 <= p.T - L1);
      if (interior) {
#pragma unroll 4
        for (int i = 0; i < kVecTile; ++i) step(std::false_type{}, k0 + i, slot + i);
      } else {
#pragma unroll 1
        for (int i = 0; i < kVecTile; ++i) step(std::true_type{}, k0 + i, slot + i);
      }
    }
    float* out = partials + run * kShareRows * p.D + d0;
#pragma unroll
    for (int m = 0; m < kShareRows; ++m) {
#pragma unroll
      for (int c = 0; c < kV; c += 4)
        *reinterpret_cast<float4*>(out + m * p.D + c) =
            make_float4(share[m][c], share[m][c + 1], share[m][c + 2], share[m][c + 3]);
    }
  }
}

// ---- The dense path on Hopper ------------------------------------------------
// conv_bwd_bulk_kernel: 16-bit x, dy, dx on vector_path, sm_90 code. A CTA of
// kBulkThreads threads owns a block of kBulkThreads * 4 channels (2 KB of
// each row) of a run of a row's tokens. Thread 0 brings the run's x and dy
// row segments in by cp.async.bulk, tiles of kBulkRows rows into kBulkStages
// smem stages (an mbarrier each), kBulkStages - 2 tiles ahead; the run's
// first tile starts 3 rows before the run (x only: u's halo) and its last
// ends 3 rows after it (dpre's halo). Each thread owns 4 channels (8-byte
// smem accesses: the bulk copies, not the thread's vector width, make the
// DRAM accesses long), so ~100 registers and 16 warps per SM where
// conv_bwd_vec_kernel's 8 channels need ~200 and get 8 warps. The steps are
// conv_bwd_vec_kernel's (same arithmetic in the same order: dx bitwise
// equal); dx of a token is written over its dy in smem (only its own thread
// reads that dy), complete 3 steps later, so a tile's dx rows go out by bulk
// stores (evict-first) after the next tile's steps, and the stage is reused
// once those stores have read it. The shares are flushed per segment of
// kSegTokens tokens (partials[row * segments + segment]: a split fixed by the
// shape, whatever the run length, which the host sizes to about one wave).
constexpr int kBulkThreads = 256;
constexpr int kBulkBlocksPerSm = 2;
constexpr int kBulkVec = 4;
constexpr int kSegTokens = 256;
constexpr int64_t kBulkChannels = int64_t{kBulkThreads} * kBulkVec;
// Tiles of 4 rows (>= 3: a tile's dx rows are complete after the next tile)
// in 6 stages: computing, storing, 4 tiles (64 KB) in flight.
constexpr int kBwdRows = 4, kBwdStages = 6;
// x and dy rows of a stage, 2-byte elements; then the stages' mbarriers.
template <int kBulkRows>
constexpr size_t kBulkStageBytes = size_t{2} * kBulkRows* kBulkChannels * 2;
template <int kBulkRows, int kBulkStages>
constexpr size_t kBulkSmem = kBulkStages* kBulkStageBytes<kBulkRows> + kBulkStages * 8;

// Four 16-bit values as one 8-byte vector (packed as pack16 does: bitwise the
// same rounding).
template <class T>
union Vec8 {
  uint2 raw;
  T e[4];
};
template <class T>
__device__ __forceinline__ void unpack4(uint2 raw, float (&out)[4]) {
  Vec8<T> v;
  v.raw = raw;
#pragma unroll
  for (int c = 0; c < 4; ++c) out[c] = to_f(v.e[c]);
}
template <class T>
__device__ __forceinline__ uint2 pack4(const float (&in)[4]) {
  Vec8<T> v;
#pragma unroll
  for (int c = 0; c < 4; c += 2) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>)
      reinterpret_cast<__nv_bfloat162*>(v.e)[c / 2] = __floats2bfloat162_rn(in[c], in[c + 1]);
    else
      reinterpret_cast<__half2*>(v.e)[c / 2] = __floats2half2_rn(in[c], in[c + 1]);
  }
  return v.raw;
}

template <class T, int kBulkRows, int kBulkStages>
__global__ void __launch_bounds__(kBulkThreads, kBulkBlocksPerSm)
    conv_bwd_bulk_kernel(ConvBwdParams p, int64_t run_tokens, float* partials) {
  // cp.async.bulk exists from sm_90; a module built for other targets carries
  // an empty kernel that launch_conv1d_bwd never launches (bulk_path).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace sm90;
  static_assert(sizeof(T) == 2);
  constexpr int kV = kBulkVec;
  extern __shared__ uint2 stages[];  // [stage][x rows, dy rows][row][thread]
  uint64_t* full =
      reinterpret_cast<uint64_t*>(stages + kBulkStages * kBulkStageBytes<kBulkRows> / 8);
  const int64_t blocks = (p.D + kBulkChannels - 1) / kBulkChannels;
  const int64_t runs = (p.T + run_tokens - 1) / run_tokens;
  const int64_t block = blockIdx.x % blocks, run = blockIdx.x / blocks % runs;
  const int64_t row = blockIdx.x / (blocks * runs);
  const int64_t a = run * run_tokens;  // the run: tokens [a, b) of the row
  const int64_t b = a + run_tokens < p.T ? a + run_tokens : p.T;
  const int64_t e = b + 3 < p.T ? b + 3 : p.T;  // rows read: [a - 3, e)
  const int64_t c0 = block * kBulkChannels;
  const auto row_bytes =
      static_cast<uint32_t>((p.D - c0 < kBulkChannels ? p.D - c0 : kBulkChannels) * sizeof(T));
  // Position k holds token a - 3 + k; steps k = 3 .. positions - 1.
  const int positions = static_cast<int>(b - a) + 6;
  const int tile_count = (positions + kBulkRows - 1) / kBulkRows;
  const int first_loaded = a >= 3 ? 0 : static_cast<int>(3 - a);  // token 0
  const int end_loaded = static_cast<int>(e - a) + 3;
  const T* x = reinterpret_cast<const T*>(p.x.data) + row * p.x.stride[0] + c0;
  const T* dy = reinterpret_cast<const T*>(p.dy.data) + row * p.dy.stride[0] + c0;
  T* dx = reinterpret_cast<T*>(p.dx.data) + row * p.dx.stride[0] + c0;
  const int tid = threadIdx.x;
  // Position k's x row (dy row: + kBulkRows rows) in its tile's stage.
  const auto xrow = [&](int k) {
    return stages +
           ((k / kBulkRows % kBulkStages) * 2 * kBulkRows + k % kBulkRows) * (kBulkChannels / kV);
  };
  const auto gradient_row = [&](int k) { return xrow(k) + kBulkRows * (kBulkChannels / kV); };
  const auto issue = [&](int tile) {
    const int lo = tile * kBulkRows > first_loaded ? tile * kBulkRows : first_loaded;
    const int hi = (tile + 1) * kBulkRows < end_loaded ? (tile + 1) * kBulkRows : end_loaded;
    int rows = 0;
    for (int k = lo; k < hi; ++k) rows += k >= 3 ? 2 : 1;  // no dy before the run
    uint64_t* bar = &full[tile % kBulkStages];
    mbar_arrive_expect_tx(bar, rows * row_bytes);
    for (int k = lo; k < hi; ++k) {
      const int64_t t = a - 3 + k;
      bulk_load(xrow(k), x + t * p.x.stride[1], row_bytes, bar);
      if (k >= 3) bulk_load(gradient_row(k), dy + t * p.dy.stride[1], row_bytes, bar);
    }
  };
  // dx rows of tile `tile` (positions 3 .. b - a + 2: tokens a .. b - 1).
  uint64_t policy = 0;
  const auto store = [&](int tile) {
    const int lo = tile * kBulkRows > 3 ? tile * kBulkRows : 3;
    const int hi = (tile + 1) * kBulkRows < positions - 3 ? (tile + 1) * kBulkRows : positions - 3;
    for (int k = lo; k < hi; ++k)
      bulk_store(dx + (a - 3 + k) * p.dx.stride[1], gradient_row(k), row_bytes, policy);
  };
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < kBulkStages; ++s) mbar_init(&full[s], 1);
    fence_barrier_init();
  }
  __syncthreads();
  if (tid == 0) {
    policy = evict_first_policy();
    for (int tile = 0; tile < kBulkStages - 2 && tile < tile_count; ++tile) issue(tile);
  }
  const int64_t d0 = c0 + int64_t{tid} * kV;
  const bool active = d0 < p.D;
  const int64_t L1 = p.d_final_state.data ? p.d_final_state.shape[2] : 0;
  const int64_t segments = (p.T + kSegTokens - 1) / kSegTokens;
  float taps[4][kV], bias[kV];
  // win[m] = u[t-3+m] and dp[m] = dpre[t-3+m] around the step's token t.
  float win[4][kV] = {}, dp[4][kV] = {}, share[kShareRows][kV] = {};
  if (active) load_filter_vec<kV>(p, d0, taps, bias);
  const auto flush = [&](int64_t segment) {
    float* out = partials + (row * segments + segment) * kShareRows * p.D + d0;
#pragma unroll
    for (int m = 0; m < kShareRows; ++m) {
      *reinterpret_cast<float4*>(out + m * p.D) =
          make_float4(share[m][0], share[m][1], share[m][2], share[m][3]);
#pragma unroll
      for (int c = 0; c < kV; ++c) share[m][c] = 0.0f;
    }
  };
  const auto step = [&](auto edge, int k) {
    constexpr bool kEdge = decltype(edge)::value;
    const int64_t t = a - 3 + k;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
#pragma unroll
      for (int c = 0; c < kV; ++c) win[j][c] = win[j + 1][c], dp[j][c] = dp[j + 1][c];
    }
    if (kEdge && t >= e) {  // past the row's end
#pragma unroll
      for (int c = 0; c < kV; ++c) win[3][c] = 0.0f, dp[3][c] = 0.0f;
    } else {
      float gradient[kV];
      unpack4<T>(xrow(k)[tid], win[3]);
      unpack4<T>(gradient_row(k)[tid], gradient);
#pragma unroll
      for (int c = 0; c < kV; ++c) {
        float pre = bias[c];
#pragma unroll
        for (int m = 0; m < 4; ++m) pre += taps[m][c] * win[m][c];
        dp[3][c] = p.silu ? gradient[c] * silu_grad<T>(pre) : gradient[c];
      }
    }
    if (!kEdge || t < b) {
      if (t > a && t % kSegTokens == 0) flush(t / kSegTokens - 1);
#pragma unroll
      for (int c = 0; c < kV; ++c) {
#pragma unroll
        for (int m = 0; m < 4; ++m) share[m][c] += dp[3][c] * win[m][c];
        share[4][c] += dp[3][c];
      }
    }
    if (kEdge && t - 3 < a) return;  // dx of tokens before the run: the previous run's
    float out[kV];
#pragma unroll
    for (int c = 0; c < kV; ++c) {
      out[c] = 0.0f;
#pragma unroll
      for (int m = 0; m < 4; ++m) out[c] += taps[m][c] * dp[3 - m][c];
    }
    if (kEdge && L1 > 0) {
      const int64_t column = t - 3 - p.T + L1;  // u[t-3] was copied to the final state
      if (column >= 0) {
        const Arg& s = p.d_final_state;
        const Floats<kV> f = load_strided<kV>(
            s.data, s.dtype, row * s.stride[0] + d0 * s.stride[1] + column * s.stride[2],
            s.stride[1]);
#pragma unroll
        for (int c = 0; c < kV; ++c) out[c] += f.v[c];
      }
    }
    gradient_row(k - 3)[tid] = pack4<T>(out);
  };
  for (int tile = 0; tile < tile_count; ++tile) {
    mbar_wait(&full[tile % kBulkStages], tile / kBulkStages & 1);
    if (active) {
      if (tile == 0) {  // u's halo (kBulkRows >= 3: all in tile 0), into win[1..3]
#pragma unroll
        for (int j = 0; j < 3; ++j) {
          if (j >= first_loaded) {
            unpack4<T>(xrow(j)[tid], win[j + 1]);
          } else if (p.initial_state.data) {  // before the sequence: initial state or zero
            const Arg& s = p.initial_state;
            const int64_t column = s.shape[2] + a - 3 + j;
            const Floats<kV> f =
                column < 0
                    ? Floats<kV>{}
                    : load_strided<kV>(s.data, s.dtype,
                                       row * s.stride[0] + d0 * s.stride[1] + column * s.stride[2],
                                       s.stride[1]);
#pragma unroll
            for (int c = 0; c < kV; ++c) win[j + 1][c] = f.v[c];
          }
        }
      }
      const int k0 = tile * kBulkRows;
      const int k_end = k0 + kBulkRows < positions ? k0 + kBulkRows : positions;
      // No guards needed: dx of the run's tokens only, shares inside the run,
      // rows read, before d_final_state's columns.
      const bool interior =
          k0 >= 6 && a - 3 + k0 + kBulkRows <= b && (L1 == 0 || a - 6 + k0 + kBulkRows <= p.T - L1);
      if (interior) {
#pragma unroll
        for (int i = 0; i < kBulkRows; ++i) step(std::false_type{}, k0 + i);
      } else {
#pragma unroll 1
        for (int k = k0 > 3 ? k0 : 3; k < k_end; ++k) step(std::true_type{}, k);
      }
    }
    fence_proxy_async();  // this thread's dx in smem, before thread 0's bulk stores read it
    __syncthreads();
    if (tid == 0) {
      if (tile > 0) store(tile - 1);
      if (tile == tile_count - 1) store(tile);
      bulk_commit();
      // The next tile goes into the stage of tile - 2, whose stores (all but
      // this tile's group) must have read it.
      if (tile + kBulkStages - 2 < tile_count) {
        bulk_wait_read<1>();
        issue(tile + kBulkStages - 2);
      }
    }
  }
  if (active) flush((b - 1) / kSegTokens);
  if (tid == 0) bulk_wait_read<0>();  // the smem must outlive the stores' reads
#endif
}

// dpre at sequence position t (0 <= t < length), recomputed from scratch.
template <class T>
__device__ float dpre_at(const ConvBwdParams& p, const Sequence& s, int64_t d, int64_t t,
                         const float (&taps)[4], float bias) {
  const T* x = reinterpret_cast<const T*>(p.x.data);
  const int64_t tb = s.first - s.row * p.T;  // time index of position 0
  const float gradient = to_f(reinterpret_cast<const T*>(
      p.dy.data)[s.row * p.dy.stride[0] + (tb + t) * p.dy.stride[1] + d * p.dy.stride[2]]);
  if (!p.silu) return gradient;
  float pre = bias;
  for (int m = 0; m < 4; ++m) {
    const int64_t q = t - 3 + m;
    float u = 0.0f;
    if (q >= 0) {
      u = to_f(x[s.row * p.x.stride[0] + (tb + q) * p.x.stride[1] + d * p.x.stride[2]]);
    } else if (p.initial_state.data && p.initial_state.shape[2] + q >= 0) {
      u = state_at(p.initial_state, s.n, d, p.initial_state.shape[2] + q);
    }
    pre += taps[m] * u;
  }
  return gradient * silu_grad<T>(pre);
}

// d_initial_state[n, d, column]: the gradient of u[q], q = column - L0 < 0:
// the taps of the first tokens that read it, and d_final_state's copy of it.
template <class T>
__global__ void conv_bwd_initial_state_kernel(ConvBwdParams p) {
  const Arg& out = p.d_initial_state;
  const int64_t L0 = out.shape[2];
  const int64_t work = p.N * p.D * L0;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < work;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t column = w % L0, d = (w / L0) % p.D, n = w / (L0 * p.D);
    Sequence s{n, n, n * p.T, (n + 1) * p.T};
    if (p.cu.data) {
      const Span span = sequence_span(p.cu, n, p.T);
      s = {n, 0, span.begin, span.end};
    }
    const int64_t length = s.end - s.first, q = column - L0;
    float taps[4];
    for (int m = 0; m < 4; ++m) {
      const int64_t j = m - (4 - p.W);
      taps[m] = j >= 0 ? ld(p.weight.data, p.weight.dtype,
                            d * p.weight.stride[0] + j * p.weight.stride[1])
                       : 0.0f;
    }
    const float bias = p.bias.data ? ld(p.bias.data, p.bias.dtype, d * p.bias.stride[0]) : 0.0f;
    float gradient = 0.0f;
    if (p.d_final_state.data) {
      const int64_t copy = q - length + p.d_final_state.shape[2];
      if (copy >= 0) gradient = state_at(p.d_final_state, n, d, copy);
    }
    for (int m = 0; m < 4; ++m) {
      const int64_t t = q + 3 - m;  // the token whose tap m reads u[q]
      if (t >= 0 && t < length) gradient += taps[m] * dpre_at<T>(p, s, d, t, taps, bias);
    }
    st(out.data, out.dtype, n * out.stride[0] + d * out.stride[1] + column * out.stride[2],
       gradient);
  }
}

// Writes the summed column c of partials [runs, 5, D] to dweight or dbias.
struct FilterGradientStore {
  Arg dweight, dbias;
  int64_t D, W;
  __device__ void operator()(int64_t c, float sum) const {
    const int64_t m = c / D, d = c % D;
    if (m == 4) {
      if (dbias.data) st(dbias.data, dbias.dtype, d * dbias.stride[0], sum);
    } else if (m >= 4 - W) {
      st(dweight.data, dweight.dtype, d * dweight.stride[0] + (m - (4 - W)) * dweight.stride[1],
         sum);
    }
  }
};

// The fast path's conditions (dense, 16-byte channel vectors of x, dy, dx).
bool vector_path(const ConvBwdParams& p, int dtype) {
  const int64_t vec = dtype == kF32 ? 4 : 8;
  const auto rows = [&](const Arg& a) {
    return a.stride[2] == 1 && a.stride[1] % vec == 0 && a.stride[0] % vec == 0 &&
           reinterpret_cast<uintptr_t>(a.data) % 16 == 0;
  };
  return !p.cu.data && !p.ids.data && p.D % vec == 0 && rows(p.x) && rows(p.dy) && rows(p.dx);
}

// Whether the module holds conv_bwd_bulk_kernel as sm_90 code (PTX version
// 90: a module built for sm_8x only, or run from compute_80 PTX on a Hopper,
// has the empty kernel).
bool bulk_code() {
  static const bool sm90 = [] {
    cudaFuncAttributes attributes{};
    const bool found =
        cudaFuncGetAttributes(
            &attributes, conv_bwd_bulk_kernel<__nv_bfloat16, kBwdRows, kBwdStages>) == cudaSuccess;
    (void)cudaGetLastError();  // not sticky; leave no error for later launches to report
    return found && attributes.ptxVersion >= 90;
  }();
  return sm90;
}

// The bulk kernel's instance and its smem bytes. TEMPORARY (issue 21's device
// run, removed with its results): HOPS_CONV_BWD=4x4 takes other tiles (rows x
// stages) than the default 4x6.
struct BulkInstance {
  void (*kernel)(ConvBwdParams, int64_t, float*);
  size_t smem;
};
template <class T>
BulkInstance bulk_instance() {
  static const std::string tiles = std::getenv("HOPS_CONV_BWD") ? std::getenv("HOPS_CONV_BWD") : "";
  if (tiles == "4x4") return {conv_bwd_bulk_kernel<T, 4, 4>, kBulkSmem<4, 4>};
  return {conv_bwd_bulk_kernel<T, kBwdRows, kBwdStages>, kBulkSmem<kBwdRows, kBwdStages>};
}

// The Hopper path's conditions: vector_path with a 16-bit dtype, sm_90 code
// and its shared memory granted (else the call takes conv_bwd_vec_kernel).
bool bulk_path(const ConvBwdParams& p, int dtype) {
  if (!conv_v4() || dtype == kF32 || !vector_path(p, dtype) || !bulk_code()) return false;
  const BulkInstance bulk =
      dtype == kBF16 ? bulk_instance<__nv_bfloat16>() : bulk_instance<__half>();
  const cudaError_t status = allow_smem(bulk.kernel, bulk.smem);
  (void)cudaGetLastError();  // a refusal only means the other path
  return status == cudaSuccess;
}

// Rows of partials: per row segments of kSegTokens on the Hopper path, runs
// of kVecRunTokens on the other fast path, else runs of kRunTokens flat tokens.
int64_t runs_of(const ConvBwdParams& p, int dtype) {
  if (bulk_path(p, dtype)) return p.B * ((p.T + kSegTokens - 1) / kSegTokens);
  if (vector_path(p, dtype)) return p.B * ((p.T + kVecRunTokens - 1) / kVecRunTokens);
  return (p.B * p.T + kRunTokens - 1) / kRunTokens;
}

// conv_bwd_bulk_kernel's runs: whole segments, about one wave of CTAs
// (kBulkBlocksPerSm per SM), and its launch.
template <class T>
cudaError_t launch_conv_bwd_bulk(const ConvBwdParams& p, float* partials, cudaStream_t stream) {
  int device = 0, sms = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess)
    status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (status != cudaSuccess) return status;
  const int64_t strips = p.B * ((p.D + kBulkChannels - 1) / kBulkChannels);  // (row, block)
  const int64_t segments = (p.T + kSegTokens - 1) / kSegTokens;
  const int64_t fit = int64_t{sms} * kBulkBlocksPerSm / strips;  // runs per row in one wave
  const int64_t runs = fit < 1 ? 1 : (fit < segments ? fit : segments);
  const int64_t run_tokens = (segments + runs - 1) / runs * kSegTokens;
  const int64_t grid = strips * ((p.T + run_tokens - 1) / run_tokens);
  if (grid > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const BulkInstance bulk = bulk_instance<T>();
  bulk.kernel<<<static_cast<unsigned>(grid), kBulkThreads, bulk.smem, stream>>>(p, run_tokens,
                                                                                partials);
  return cudaGetLastError();
}

}  // namespace

size_t conv1d_bwd_scratch_bytes(const ConvBwdParams& p, int dtype) {
  return scratch_bytes("conv1d_bwd", runs_of(p, dtype), kShareRows, p.D, sizeof(float));
}

cudaError_t launch_conv1d_bwd(const ConvBwdParams& p, int dtype, void* scratch,
                              cudaStream_t stream) {
  auto* partials = static_cast<float*>(scratch);
  const int64_t runs = runs_of(p, dtype);
  const bool bulk = bulk_path(p, dtype);
  const bool fast = vector_path(p, dtype);
  cudaError_t status = cudaSuccess;
  by_dtype(dtype, [&]<class T>(T) {
    const int grid = grid_for(runs * ((p.D + kVec - 1) / kVec), kThreads);
    if (runs > 0 && p.D > 0) {
      if (bulk) {
        if constexpr (sizeof(T) == 2) status = launch_conv_bwd_bulk<T>(p, partials, stream);
      } else if (p.ids.data)
        conv_bwd_ids_kernel<T>
            <<<grid_for(runs * p.D, kThreads), kThreads, 0, stream>>>(p, partials);
      else if (fast)
        conv_bwd_vec_kernel<T>
            <<<grid_for(runs * (p.D / (16 / sizeof(T))), kVecThreads), kVecThreads, 0, stream>>>(
                p, partials);
      else if (p.vector)
        conv_bwd_tokens_kernel<T, true><<<grid, kThreads, 0, stream>>>(p, partials);
      else
        conv_bwd_tokens_kernel<T, false><<<grid, kThreads, 0, stream>>>(p, partials);
    }
    if (p.d_initial_state.data) {
      const int64_t count = p.N * p.D * p.d_initial_state.shape[2];
      if (count > 0) conv_bwd_initial_state_kernel<T><<<grid_for(count, 256), 256, 0, stream>>>(p);
    }
  });
  if (status != cudaSuccess) return status;
  if (status = cudaGetLastError(); status != cudaSuccess) return status;
  // With no tokens (runs == 0) this writes zeros: sums over nothing.
  return launch_ordered_column_sum(partials, runs, kShareRows * p.D,
                                   FilterGradientStore{p.dweight, p.dbias, p.D, p.W}, stream);
}

}  // namespace hops::cuda
