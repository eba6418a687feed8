// conv1d_fwd and conv1d_update: depthwise causal conv, memory-bound.
// conv1d_fwd: a thread owns kVec consecutive channels of kTokens consecutive
// tokens and slides a window of the last W inputs in registers, so each
// input is read about once; with unit channel stride and 16-byte alignment
// the channel loads and stores are 16-byte vectors. conv1d_update: a thread
// per (sequence, channel), its window (state columns, then the new tokens)
// in registers up to kMaxWindow, state updated in place.
#include "device_common.cuh"

namespace hops::cuda {

namespace {

constexpr int kTokens = 16;  // tokens per thread (conv1d_fwd)

// kVec channels of storage type T from `p` (elements `step` apart).
// Channels past `count` (the last, partial group) read as 0, never from memory.
template <class T, int kVec>
__device__ __forceinline__ void load_vec(const T* p, int64_t step, bool vector, int count,
                                         float (&out)[kVec]) {
  if constexpr (kVec * sizeof(T) == 16) {
    if (vector) {
      union {
        uint4 raw;
        T e[kVec];
      } v;
      v.raw = *reinterpret_cast<const uint4*>(p);
#pragma unroll
      for (int i = 0; i < kVec; ++i) out[i] = to_f(v.e[i]);
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) out[i] = i < count ? to_f(p[i * step]) : 0.0f;
}

template <class T, int kVec>
__device__ __forceinline__ void store_vec(T* p, int64_t step, bool vector,
                                          const float (&in)[kVec]) {
  if constexpr (kVec * sizeof(T) == 16) {
    if (vector) {
      union {
        uint4 raw;
        T e[kVec];
      } v;
#pragma unroll
      for (int i = 0; i < kVec; ++i) v.e[i] = from_f<T>(in[i]);
      *reinterpret_cast<uint4*>(p) = v.raw;
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) p[i * step] = from_f<T>(in[i]);
}

// The sequence that token t of row `row` belongs to: n, and its start.
__device__ __forceinline__ void find_sequence(const ConvParams& p, int64_t row, int64_t t,
                                              int64_t& n, int64_t& begin) {
  if (!p.cu.data) {
    n = row, begin = 0;
    return;
  }
  // Last n with clamped cu[n] <= t (upper bound over N+1 offsets).
  int64_t lo = 0, hi = p.N;  // answer in [0, N-1]
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (sequence_span(p.cu, mid, p.T).begin <= t)
      lo = mid;
    else
      hi = mid - 1;
  }
  n = lo;
  begin = sequence_span(p.cu, lo, p.T).begin;
}

template <class T, int kVec>
__global__ void conv_fwd_kernel(ConvParams p) {
  const int64_t groups = (p.D + kVec - 1) / kVec;
  const int64_t blocks_t = (p.T + kTokens - 1) / kTokens;
  const int64_t work = p.B * blocks_t * groups;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < work;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t group = w % groups;
    const int64_t tb = (w / groups) % blocks_t;
    const int64_t row = w / (groups * blocks_t);
    const int64_t d0 = group * kVec;
    const int count = static_cast<int>(p.D - d0 < kVec ? p.D - d0 : kVec);
    const bool vec = p.vector && count == kVec;
    float taps[4][kVec], bias[kVec];
#pragma unroll
    for (int c = 0; c < kVec; ++c) {
      const int64_t d = d0 + (c < count ? c : 0);
      bias[c] = p.bias.data ? ld(p.bias.data, p.bias.dtype, d * p.bias.stride[0]) : 0.0f;
      // Aligned to the window's end: taps[m] multiplies win[m] (win[3] newest).
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const int j = m - (4 - static_cast<int>(p.W));
        taps[m][c] = j >= 0 ? ld(p.weight.data, p.weight.dtype,
                                 d * p.weight.stride[0] + j * p.weight.stride[1])
                            : 0.0f;
      }
    }
    const T* x = reinterpret_cast<const T*>(p.x.data);
    T* y = reinterpret_cast<T*>(p.y.data);
    const int64_t xs = p.x.stride[2], ys = p.y.stride[2];
    // The last 4 inputs, win[0] oldest .. win[3] the current token.
    float win[4][kVec];
    int64_t n = -1, begin = 0, next_begin = 0;
    const int64_t t0 = tb * kTokens;
    const int64_t t1 = t0 + kTokens < p.T ? t0 + kTokens : p.T;
    // Input at sequence position q (< 0: initial state or zero) of sequence n.
    auto load_position = [&](int64_t q, int64_t seq, int64_t start, float(&out)[kVec]) {
      if (q >= 0) {
        load_vec<T, kVec>(x + row * p.x.stride[0] + (start + q) * p.x.stride[1] + d0 * xs, xs, vec,
                          count, out);
      } else if (p.initial_state.data && p.initial_state.shape[2] + q >= 0) {
        const Arg& s = p.initial_state;
#pragma unroll
        for (int c = 0; c < kVec; ++c) {
          const int64_t d = d0 + (c < count ? c : 0);
          out[c] = ld(s.data, s.dtype,
                      seq * s.stride[0] + d * s.stride[1] + (s.shape[2] + q) * s.stride[2]);
        }
      } else {
#pragma unroll
        for (int c = 0; c < kVec; ++c) out[c] = 0.0f;
      }
    };
    for (int64_t t = t0; t < t1; ++t) {
      if (n < 0 || (p.cu.data && t >= next_begin)) {
        find_sequence(p, row, t, n, begin);
        next_begin = p.cu.data ? sequence_span(p.cu, n, p.T).end : p.T;
        if (next_begin <= t) next_begin = t + 1;  // defensive: never loop on a bad span
          // Fill the window with the W-1 positions before t.
#pragma unroll
        for (int j = 1; j < 4; ++j) load_position(t - begin - j, n, begin, win[3 - j]);
      }
      load_position(t - begin, n, begin, win[3]);
      float out[kVec];
#pragma unroll
      for (int c = 0; c < kVec; ++c) {
        float acc = bias[c];
#pragma unroll
        for (int m = 0; m < 4; ++m) acc += taps[m][c] * win[m][c];
        out[c] = p.silu ? siluf_(acc) : acc;
      }
      if (count == kVec) {
        store_vec<T, kVec>(y + row * p.y.stride[0] + t * p.y.stride[1] + d0 * ys, ys, vec, out);
      } else {
#pragma unroll
        for (int c = 0; c < kVec; ++c) {
          if (c < count)
            y[row * p.y.stride[0] + t * p.y.stride[1] + (d0 + c) * ys] = from_f<T>(out[c]);
        }
      }
#pragma unroll
      for (int j = 0; j < 3; ++j) {
#pragma unroll
        for (int c = 0; c < kVec; ++c) win[j][c] = win[j + 1][c];
      }
    }
  }
}

// final_state[n, d, c] = position length - L1 + c of sequence n.
template <class T>
__global__ void conv_final_state_kernel(ConvParams p) {
  const Arg& f = p.final_state;
  const int64_t L1 = f.shape[2];
  const int64_t work = p.N * p.D * L1;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < work;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = w % L1, d = (w / L1) % p.D, n = w / (L1 * p.D);
    const Span s = sequence_span(p.cu, n, p.T);
    const int64_t q = (s.end - s.begin) - L1 + c;
    float value = 0.0f;
    if (q >= 0) {
      value = to_f(reinterpret_cast<const T*>(
          p.x.data)[s.row * p.x.stride[0] + (s.begin + q) * p.x.stride[1] + d * p.x.stride[2]]);
    } else if (p.initial_state.data && p.initial_state.shape[2] + q >= 0) {
      const Arg& i = p.initial_state;
      value =
          ld(i.data, i.dtype, n * i.stride[0] + d * i.stride[1] + (i.shape[2] + q) * i.stride[2]);
    }
    st(f.data, f.dtype, n * f.stride[0] + d * f.stride[1] + c * f.stride[2], value);
  }
}

// ---- conv1d_update -------------------------------------------------------------

template <class T>
__global__ void conv_update_kernel(ConvUpdateParams p) {
  const int64_t work = p.N * p.D;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < work;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = w % p.D, n = w / p.D;
    const int64_t slot = slot_of(p.slots, n, p.S);
    if (slot < 0) continue;
    const Arg& s = p.state;
    const int64_t sbase = slot * s.stride[0] + d * s.stride[1];
    const T* x = reinterpret_cast<const T*>(p.x.data) + n * p.x.stride[0] + d * p.x.stride[2];
    T* y = reinterpret_cast<T*>(p.y.data) + n * p.y.stride[0] + d * p.y.stride[2];
    float taps[4];
#pragma unroll
    for (int m = 0; m < 4; ++m) {  // aligned to the window's end, as in conv_fwd_kernel
      const int j = m - (4 - static_cast<int>(p.W));
      taps[m] = j >= 0 ? ld(p.weight.data, p.weight.dtype,
                            d * p.weight.stride[0] + j * p.weight.stride[1])
                       : 0.0f;
    }
    const float bias = p.bias.data ? ld(p.bias.data, p.bias.dtype, d * p.bias.stride[0]) : 0.0f;
    // Window position i: state column i (i < SL), else token i - SL.
    auto at = [&](int64_t i) {
      return i < p.SL ? ld(s.data, s.dtype, sbase + i * s.stride[2])
                      : to_f(x[(i - p.SL) * p.x.stride[1]]);
    };
    float win[4];
#pragma unroll
    for (int j = 1; j < 4; ++j) win[3 - j] = j <= p.SL ? at(p.SL - j) : 0.0f;
    for (int64_t t = 0; t < p.L; ++t) {
      win[3] = to_f(x[t * p.x.stride[1]]);
      float acc = bias;
#pragma unroll
      for (int m = 0; m < 4; ++m) acc += taps[m] * win[m];
      y[t * p.y.stride[1]] = from_f<T>(p.silu ? siluf_(acc) : acc);
#pragma unroll
      for (int j = 0; j < 3; ++j) win[j] = win[j + 1];
    }
    // New column c = window position L + c; in increasing c the old column
    // L + c is read before anything overwrites it.
    for (int64_t c = 0; c < p.SL; ++c) st(s.data, s.dtype, sbase + c * s.stride[2], at(p.L + c));
  }
}

}  // namespace

cudaError_t launch_conv1d_fwd(const ConvParams& p, int dtype, cudaStream_t stream) {
  by_dtype(dtype, [&]<class T>(T) {
    constexpr int kVec = 16 / sizeof(T);
    if (p.B * p.T * p.D > 0) {
      const int64_t work = p.B * ((p.T + kTokens - 1) / kTokens) * ((p.D + kVec - 1) / kVec);
      conv_fwd_kernel<T, kVec><<<grid_for(work, 128), 128, 0, stream>>>(p);
    }
    if (p.final_state.data) {
      const int64_t count = p.N * p.D * p.final_state.shape[2];
      if (count > 0) conv_final_state_kernel<T><<<grid_for(count, 256), 256, 0, stream>>>(p);
    }
  });
  return cudaGetLastError();
}

cudaError_t launch_conv1d_update(const ConvUpdateParams& p, int dtype, cudaStream_t stream) {
  by_dtype(dtype, [&]<class T>(T) {
    conv_update_kernel<T><<<grid_for(p.N * p.D, 128), 128, 0, stream>>>(p);
  });
  return cudaGetLastError();
}

}  // namespace hops::cuda
