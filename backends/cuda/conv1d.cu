// conv1d_fwd and conv1d_update: depthwise causal conv, memory-bound.
// conv1d_fwd: a thread owns kVec consecutive channels of kTokens consecutive
// tokens and slides a window of the last W inputs in registers, so each
// input is read about once. Dense inputs with unit channel stride and 16-byte
// rows take conv_fwd_vec_kernel, which streams a thread's rows through shared
// memory by cp.async one tile ahead of the arithmetic, or on Hopper
// conv_fwd_bulk_kernel, which moves whole 4 KB row segments by bulk copies;
// everything else (varlen, strided, misaligned) takes conv_fwd_kernel.
// conv1d_update: with contiguous 16-byte state rows, a thread per (sequence,
// kVec channels) moves its state and tokens as 16-byte vectors
// (conv_update_vec_kernel; conv_decode_vec_kernel for one token per
// sequence); otherwise a thread per (sequence, channel), window in
// registers. The state is updated in place.
#include <cstdlib>
#include <string>
#include <type_traits>

#include "device_common.cuh"
#include "wgmma.cuh"

namespace hops::cuda {

namespace {

constexpr int kTokens = 16;  // tokens per thread (conv1d_fwd)

// One output per channel from the window win[0..3] (oldest first, taps aligned
// to its end): bias + sum_m taps[m] win[m], then `silu` where the op asks.
template <int kVec, class Silu>
__device__ __forceinline__ void conv_outputs(const float (&taps)[4][kVec],
                                             const float (&bias)[kVec], const float (&win)[4][kVec],
                                             bool apply_silu, Silu silu, float (&out)[kVec]) {
#pragma unroll
  for (int c = 0; c < kVec; ++c) {
    float acc = bias[c];
#pragma unroll
    for (int m = 0; m < 4; ++m) acc += taps[m][c] * win[m][c];
    out[c] = apply_silu ? silu(acc) : acc;
  }
}

// Slides the window by one token: win[j] = win[j + 1] for the three older rows.
template <int kVec>
__device__ __forceinline__ void shift_window(float (&win)[4][kVec]) {
#pragma unroll
  for (int j = 0; j < 3; ++j) {
#pragma unroll
    for (int c = 0; c < kVec; ++c) win[j][c] = win[j + 1][c];
  }
}

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
      if (p.ids.data) {  // seq_idx (dense, no states): taps read tokens of t's id only
        const int64_t id = ld_index(p.ids, row * p.T + t);
        float masked[4][kVec];
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const int64_t q = t - 3 + m;
          const bool keep = id >= 0 && q >= 0 && ld_index(p.ids, row * p.T + q) == id;
#pragma unroll
          for (int c = 0; c < kVec; ++c) masked[m][c] = keep ? win[m][c] : 0.0f;
        }
        conv_outputs(taps, bias, masked, p.silu, siluf_, out);
        if (id < 0) {  // padding
#pragma unroll
          for (int c = 0; c < kVec; ++c) out[c] = 0.0f;
        }
      } else {
        conv_outputs(taps, bias, win, p.silu, siluf_, out);
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
      shift_window(win);
    }
  }
}

// silu for a result stored in T: with a 16-bit T the approximate exp and
// division (2 MUFU ops, ~1e-6 relative error, far below the output's
// rounding) take about half the instructions of expf and an IEEE division.
template <class T>
__device__ __forceinline__ float silu_for(float x) {
  if constexpr (sizeof(T) == 2)
    return __fdividef(x, 1.0f + __expf(-x));
  else
    return siluf_(x);
}

template <class T>
constexpr int dtype_code() {
  return sizeof(T) == 4 ? kF32 : (std::is_same_v<T, __half> ? kF16 : kBF16);
}

// Taps aligned to the window's end (taps[m] multiplies the input 3 - m tokens
// back; the first 4 - W are zero) and the bias, for channels d0 .. d0+kVec-1.
// A [D, 4] weight and a bias of the activations' dtype, contiguous and
// 16-byte aligned, are read as 16-byte vectors (the common case; 5 loads
// instead of 40), anything else element by element.
template <class T, int kVec>
__device__ __forceinline__ void load_taps(const Arg& weight, const Arg& bias, int64_t W, int64_t d0,
                                          float (&taps)[4][kVec], float (&b)[kVec]) {
  constexpr int kCode = dtype_code<T>();
  const auto aligned = [](const char* ptr) {
    return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
  };
  if (W == 4 && weight.dtype == kCode && weight.stride[0] == 4 && weight.stride[1] == 1 &&
      aligned(weight.data)) {
    const uint4* w =
        reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(weight.data) + d0 * 4);
#pragma unroll
    for (int i = 0; i < kVec * 4 * int(sizeof(T)) / 16; ++i) {
      Vec16<T> v;
      v.raw = w[i];
#pragma unroll
      for (int e = 0; e < 16 / int(sizeof(T)); ++e) {
        const int flat = i * (16 / int(sizeof(T))) + e;  // channel flat / 4, tap flat % 4
        taps[flat % 4][flat / 4] = to_f(v.e[e]);
      }
    }
  } else {
#pragma unroll
    for (int c = 0; c < kVec; ++c) {
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const int j = m - (4 - static_cast<int>(W));
        taps[m][c] = j >= 0 ? ld(weight.data, weight.dtype,
                                 (d0 + c) * weight.stride[0] + j * weight.stride[1])
                            : 0.0f;
      }
    }
  }
  if (bias.data && bias.dtype == kCode && bias.stride[0] == 1 && aligned(bias.data)) {
    unpack16<T, kVec>(*reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(bias.data) + d0),
                      b);
  } else {
#pragma unroll
    for (int c = 0; c < kVec; ++c)
      b[c] = bias.data ? ld(bias.data, bias.dtype, (d0 + c) * bias.stride[0]) : 0.0f;
  }
}

// Dense conv1d_fwd, 16-byte channel vectors (p.vector, no cu_seqlens). A
// thread owns kVec channels of a run of `run_tokens` tokens and streams the
// run's rows through a private ring of kRing 16-byte shared-memory slots by
// cp.async, one tile of kTile rows ahead of the arithmetic: loads never wait
// for the compute, few registers, each row read once (the window's older rows
// stay in registers). y is written with streaming stores (evict-first).
constexpr int kTile = 8;
constexpr int kRing = 24;        // >= 3 halo + the tile being read + the tile in flight
constexpr int kVecThreads = 64;  // 24 KB of ring per CTA: 8 CTAs (16 warps) per SM
constexpr int kRunTokens = 128;  // 96..256 timed the same (v3d)

template <class T>
__global__ void __launch_bounds__(kVecThreads, 8)
    conv_fwd_vec_kernel(ConvParams p, int run_tokens) {
  constexpr int kVec = 16 / sizeof(T);
  __shared__ uint4 ring[kRing][kVecThreads];  // [slot][thread]: conflict-free accesses
  const int64_t groups = p.D / kVec;
  const int64_t runs = (p.T + run_tokens - 1) / run_tokens;
  const int64_t work = p.B * runs * groups;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < work;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t group = w % groups;
    const int64_t t_begin = (w / groups) % runs * run_tokens;
    const int64_t t_end = t_begin + run_tokens < p.T ? t_begin + run_tokens : p.T;
    const int64_t row = w / (groups * runs);
    const int64_t d0 = group * kVec;
    const T* x = reinterpret_cast<const T*>(p.x.data) + row * p.x.stride[0] + d0;
    T* y = reinterpret_cast<T*>(p.y.data) + row * p.y.stride[0] + d0;
    // Ring position pos holds token t_begin - 3 + pos (pos 0..2: the halo).
    auto issue = [&](int pos_begin, int pos_end) {
      for (int pos = pos_begin; pos < pos_end; ++pos) {
        const int64_t t = t_begin - 3 + pos;
        const bool valid = t >= 0 && t < t_end;
        cp_async16(&ring[pos % kRing][threadIdx.x], valid ? x + t * p.x.stride[1] : x, valid);
      }
      cp_async_commit();
    };
    const int tiles = static_cast<int>((t_end - t_begin + kTile - 1) / kTile);
    issue(0, 3 + kTile);
    float taps[4][kVec], bias[kVec];
    load_taps<T, kVec>(p.weight, p.bias, p.W, d0, taps, bias);
    float win[4][kVec];  // win[0] oldest .. win[3] the current token
    for (int tile = 0; tile < tiles; ++tile) {
      // Always commit a group (empty past the run) so that "all but one" is tile.
      issue(3 + (tile + 1) * kTile, tile + 1 < tiles ? 3 + (tile + 2) * kTile : 0);
      cp_async_wait<1>();
      if (tile == 0) {
#pragma unroll
        for (int j = 0; j < 3; ++j) {
          const int64_t q = t_begin - 3 + j;  // before the sequence: initial state or zero
          if (q < 0 && p.initial_state.data) {
            const Arg& s = p.initial_state;
            const int64_t col = s.shape[2] + q;
            const Floats<kVec> f =
                col < 0
                    ? Floats<kVec>{}
                    : load_strided<kVec>(s.data, s.dtype,
                                         row * s.stride[0] + d0 * s.stride[1] + col * s.stride[2],
                                         s.stride[1]);
#pragma unroll
            for (int c = 0; c < kVec; ++c) win[j][c] = f.v[c];
          } else {
            unpack16<T, kVec>(ring[j][threadIdx.x], win[j]);
          }
        }
      }
      // Not unrolled: unrolled (or by 2), the compiler hoists the tile's shared
      // loads and their unpacked floats and spills; the timing was the same.
#pragma unroll 1
      for (int i = 0; i < kTile; ++i) {
        const int pos = 3 + tile * kTile + i;
        const int64_t t = t_begin - 3 + pos;
        if (t >= t_end) break;
        unpack16<T, kVec>(ring[pos % kRing][threadIdx.x], win[3]);
        float out[kVec];
        conv_outputs(taps, bias, win, p.silu, silu_for<T>, out);
        __stcs(reinterpret_cast<uint4*>(y + t * p.y.stride[1]), pack16<T, kVec>(out));
        shift_window(win);
      }
    }
  }
}

// Dense conv1d_fwd on Hopper (sm_90 code; the conditions of
// conv_fwd_vec_kernel). A CTA of kBulkThreads threads owns a block of
// kBulkThreads * kVec channels (4 KB of each row) of a run of tokens. Thread 0
// brings the run's rows in as one cp.async.bulk per 4 KB row segment, tiles of
// kBulkRows rows into kBulkStages smem stages (completing on an mbarrier per
// stage), up to kBulkStages - 1 tiles ahead; the run's first tile starts 3
// rows before the run (the window's halo). Each thread computes its kVec
// channels of each row, its window in registers, and writes y over the 16
// bytes of x it read (no other thread reads them); thread 0 then writes the
// tile's rows back by bulk stores (evict-first). DRAM sees 4 KB contiguous
// reads and writes, four CTAs side by side cover a 16 KB row, and the threads
// do no address arithmetic for the streams. Runs are sized on the host so
// that the grid is about one wave (one run per CTA, one prologue each).
constexpr int kBulkThreads = 256;
constexpr int kBulkBlocksPerSm = 2;
constexpr int kBulkMinRun = 64;  // the halo re-read stays under 5%
// Tiles of 8 rows in 3 stages: the tile being computed and two in flight,
// 64 KB per CTA (96 KB of smem: two CTAs per SM).
constexpr int kFwdRows = 8, kFwdStages = 3;
template <int kBulkRows, int kBulkStages>
constexpr size_t kBulkSmem = size_t{kBulkStages} * kBulkRows* kBulkThreads * 16 + kBulkStages * 8;

template <class T, int kBulkRows, int kBulkStages>
__global__ void __launch_bounds__(kBulkThreads, kBulkBlocksPerSm)
    conv_fwd_bulk_kernel(ConvParams p, int64_t run_tokens) {
  // cp.async.bulk exists from sm_90; a module built for other targets carries
  // an empty kernel that launch_conv1d_fwd never launches (sm90_code).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using namespace sm90;
  constexpr int kVec = 16 / sizeof(T);
  constexpr int64_t kChannels = int64_t{kBulkThreads} * kVec;
  extern __shared__ uint4 tiles[];  // [stage][row][thread]
  uint64_t* full = reinterpret_cast<uint64_t*>(tiles + kBulkStages * kBulkRows * kBulkThreads);
  const int64_t blocks = (p.D + kChannels - 1) / kChannels;
  const int64_t runs = (p.T + run_tokens - 1) / run_tokens;
  const int64_t block = blockIdx.x % blocks, run = blockIdx.x / blocks % runs;
  const int64_t row = blockIdx.x / (blocks * runs);
  const int64_t t_begin = run * run_tokens;
  const int64_t t_end = t_begin + run_tokens < p.T ? t_begin + run_tokens : p.T;
  const int64_t c0 = block * kChannels;
  const auto row_bytes =
      static_cast<uint32_t>((p.D - c0 < kChannels ? p.D - c0 : kChannels) * sizeof(T));
  // Position k of the run holds token t_begin - 3 + k (0 .. 2: the halo).
  const int positions = static_cast<int>(t_end - t_begin) + 3;
  const int tile_count = (positions + kBulkRows - 1) / kBulkRows;
  const int first_loaded = t_begin >= 3 ? 0 : static_cast<int>(3 - t_begin);  // token 0
  const T* x = reinterpret_cast<const T*>(p.x.data) + row * p.x.stride[0] + c0;
  T* y = reinterpret_cast<T*>(p.y.data) + row * p.y.stride[0] + c0;
  const int tid = threadIdx.x;
  const auto cell = [&](int k) {  // position k's row in its tile's stage
    return tiles + ((k / kBulkRows % kBulkStages) * kBulkRows + k % kBulkRows) * kBulkThreads;
  };
  const auto issue = [&](int tile) {
    const int lo = tile * kBulkRows > first_loaded ? tile * kBulkRows : first_loaded;
    const int hi = (tile + 1) * kBulkRows < positions ? (tile + 1) * kBulkRows : positions;
    uint64_t* bar = &full[tile % kBulkStages];
    mbar_arrive_expect_tx(bar, hi > lo ? (hi - lo) * row_bytes : 0);
    for (int k = lo; k < hi; ++k)
      bulk_load(cell(k), x + (t_begin - 3 + k) * p.x.stride[1], row_bytes, bar);
  };
  if (tid == 0) {
#pragma unroll
    for (int s = 0; s < kBulkStages; ++s) mbar_init(&full[s], 1);
    fence_barrier_init();
  }
  __syncthreads();
  uint64_t policy = 0;
  if (tid == 0) {
    policy = evict_first_policy();
    for (int tile = 0; tile < kBulkStages - 1 && tile < tile_count; ++tile) issue(tile);
  }
  const int64_t d0 = c0 + int64_t{tid} * kVec;
  const bool active = d0 < p.D;
  float taps[4][kVec], bias[kVec], win[4][kVec];
  if (active) load_taps<T, kVec>(p.weight, p.bias, p.W, d0, taps, bias);
  for (int tile = 0; tile < tile_count; ++tile) {
    mbar_wait(&full[tile % kBulkStages], tile / kBulkStages & 1);
    const int k_end = (tile + 1) * kBulkRows < positions ? (tile + 1) * kBulkRows : positions;
    if (active) {
      if (tile == 0) {  // the halo (kBulkRows >= 3: all in tile 0)
#pragma unroll
        for (int j = 0; j < 3; ++j) {
          if (j >= first_loaded) {
            unpack16<T, kVec>(cell(j)[tid], win[j]);
          } else if (p.initial_state.data) {  // before the sequence: initial state or zero
            const Arg& s = p.initial_state;
            const int64_t col = s.shape[2] + t_begin - 3 + j;
            const Floats<kVec> f =
                col < 0
                    ? Floats<kVec>{}
                    : load_strided<kVec>(s.data, s.dtype,
                                         row * s.stride[0] + d0 * s.stride[1] + col * s.stride[2],
                                         s.stride[1]);
#pragma unroll
            for (int c = 0; c < kVec; ++c) win[j][c] = f.v[c];
          } else {
#pragma unroll
            for (int c = 0; c < kVec; ++c) win[j][c] = 0.0f;
          }
        }
      }
#pragma unroll 1
      for (int k = tile == 0 ? 3 : tile * kBulkRows; k < k_end; ++k) {
        uint4& v = cell(k)[tid];
        unpack16<T, kVec>(v, win[3]);
        float out[kVec];
        conv_outputs(taps, bias, win, p.silu, silu_for<T>, out);
        v = pack16<T, kVec>(out);
        shift_window(win);
      }
    }
    fence_proxy_async();  // this thread's y in smem, before thread 0's bulk stores read it
    __syncthreads();
    if (tid == 0) {
      for (int k = tile == 0 ? 3 : tile * kBulkRows; k < k_end; ++k)
        bulk_store(y + (t_begin - 3 + k) * p.y.stride[1], cell(k), row_bytes, policy);
      bulk_commit();
      // The next tile goes into the stage of the previous one, whose stores
      // (all but this tile's group) must have read it.
      if (tile + kBulkStages - 1 < tile_count) {
        bulk_wait_read<1>();
        issue(tile + kBulkStages - 1);
      }
    }
  }
  if (tid == 0) bulk_wait_read<0>();  // the smem must outlive the stores' reads
#endif
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
    T* y = reinterpret_cast<T*>(p.y.data) + n * p.y.stride[0] + d * p.y.stride[2];
    if (slot < 0) {  // skipped: y left, or 0 (Dao's padding rows)
      if (p.zero_skipped) {
        for (int64_t t = 0; t < p.L; ++t) y[t * p.y.stride[1]] = from_f<T>(0.0f);
      }
      continue;
    }
    const Arg& s = p.state;
    const int64_t sbase = slot * s.stride[0] + d * s.stride[1];
    const T* x = reinterpret_cast<const T*>(p.x.data) + n * p.x.stride[0] + d * p.x.stride[2];
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
    // A circular state (cache_seqlens) holds its newest column just before
    // column `start`; device-resident counts are taken into [0, SL) here.
    const int64_t start = p.seen.data ? (ld_index(p.seen, n) % p.SL + p.SL) % p.SL : 0;
    float win[4];
#pragma unroll
    for (int j = 1; j < 4; ++j) {
      if (p.seen.data) {
        win[3 - j] =
            j < p.W ? ld(s.data, s.dtype, sbase + ((start - j) % p.SL + p.SL) % p.SL * s.stride[2])
                    : 0.0f;
      } else {
        win[3 - j] = j <= p.SL ? at(p.SL - j) : 0.0f;
      }
    }
    for (int64_t t = 0; t < p.L; ++t) {
      win[3] = to_f(x[t * p.x.stride[1]]);
      float acc = bias;
#pragma unroll
      for (int m = 0; m < 4; ++m) acc += taps[m] * win[m];
      y[t * p.y.stride[1]] = from_f<T>(p.silu ? siluf_(acc) : acc);
      // Token t goes to column (start + t) % SL; a later token wins.
      if (p.seen.data) st(s.data, s.dtype, sbase + (start + t) % p.SL * s.stride[2], win[3]);
#pragma unroll
      for (int j = 0; j < 3; ++j) win[j] = win[j + 1];
    }
    if (p.seen.data) continue;
    // New column c = window position L + c; in increasing c the old column
    // L + c is read before anything overwrites it.
    for (int64_t c = 0; c < p.SL; ++c) st(s.data, s.dtype, sbase + c * s.stride[2], at(p.L + c));
  }
}

// conv1d_update with a state of kSL columns contiguous per channel ([S, D, kSL]
// with unit strides inside a slot), 16-byte aligned, state dtype = x dtype:
// a thread per (sequence, kVec channels) reads its kVec x kSL state block as
// kSL 16-byte vectors and moves its tokens as 16-byte vectors.
template <class T, int kSL>
__global__ void __launch_bounds__(128, 4) conv_update_vec_kernel(ConvUpdateParams p) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t groups = p.D / kVec;
  const int64_t work = p.N * groups;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < work;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t group = w % groups, n = w / groups;
    const int64_t slot = slot_of(p.slots, n, p.S);
    const int64_t d0 = group * kVec;
    if (slot < 0) {  // skipped: y left, or 0 (Dao's padding rows)
      if (p.zero_skipped) {
        T* y = reinterpret_cast<T*>(p.y.data) + n * p.y.stride[0] + d0;
        for (int64_t t = 0; t < p.L; ++t)
          *reinterpret_cast<uint4*>(y + t * p.y.stride[1]) = make_uint4(0, 0, 0, 0);
      }
      continue;
    }
    uint4* state = reinterpret_cast<uint4*>(reinterpret_cast<T*>(p.state.data) +
                                            slot * p.state.stride[0] + d0 * kSL);
    union {
      uint4 raw[kSL];
      T e[kVec * kSL];  // channel c, column j at c kSL + j
    } old, next;
#pragma unroll
    for (int i = 0; i < kSL; ++i) old.raw[i] = state[i];
    const T* x = reinterpret_cast<const T*>(p.x.data) + n * p.x.stride[0] + d0;
    T* y = reinterpret_cast<T*>(p.y.data) + n * p.y.stride[0] + d0;
    float taps[4][kVec], bias[kVec];
    load_taps<T, kVec>(p.weight, p.bias, p.W, d0, taps, bias);
    float win[4][kVec];
#pragma unroll
    for (int j = 1; j < 4; ++j) {
#pragma unroll
      for (int c = 0; c < kVec; ++c)
        win[3 - j][c] = j <= kSL ? to_f(old.e[c * kSL + kSL - j]) : 0.0f;
    }
    uint4 last = make_uint4(0, 0, 0, 0);  // token L-1, the newest state column when L >= 1
    for (int64_t t = 0; t < p.L; ++t) {
      last = *reinterpret_cast<const uint4*>(x + t * p.x.stride[1]);
      unpack16<T, kVec>(last, win[3]);
      float out[kVec];
      conv_outputs(taps, bias, win, p.silu, silu_for<T>, out);
      *reinterpret_cast<uint4*>(y + t * p.y.stride[1]) = pack16<T, kVec>(out);
      shift_window(win);
    }
    // New column j = window position L + j: an old column while L + j < kSL,
    // else token L + j - kSL (the last one still in registers).
#pragma unroll
    for (int j = 0; j < kSL; ++j) {
      const int64_t from = p.L + j;
      Vec16<T> token;
      if (from >= kSL) {
        token.raw = from - kSL == p.L - 1
                        ? last
                        : *reinterpret_cast<const uint4*>(x + (from - kSL) * p.x.stride[1]);
      }
#pragma unroll
      for (int c = 0; c < kVec; ++c) {
        T value = from >= kSL ? token.e[c] : old.e[c * kSL];
#pragma unroll
        for (int i = 1; i < kSL; ++i) value = from == i ? old.e[c * kSL + i] : value;
        next.e[c * kSL + j] = value;
      }
    }
#pragma unroll
    for (int i = 0; i < kSL; ++i) state[i] = next.raw[i];
  }
}

// conv1d_update with one token per sequence (decode, L = 1), same layout
// conditions as conv_update_vec_kernel: no token loop, so the state block, the
// token and the taps are all loaded before any arithmetic, and the new state
// is the old columns shifted left by one with the token last. Without the
// loop's live ranges it fits 80 registers (6 CTAs of 128 threads per SM),
// where the general instance is capped at 128 with a spill. On sm_90 it is
// launched as a programmatic dependent of the kernel before it: its CTAs
// start while that kernel's last CTAs run and wait (griddepcontrol.wait) for
// its completion before touching memory, which hides most of the ~1-2 us
// launch gap between back-to-back decode steps (the call moves ~40 MB: ~13 us).
template <class T, int kSL>
__global__ void __launch_bounds__(128, 6) conv_decode_vec_kernel(ConvUpdateParams p) {
  constexpr int kVec = 16 / sizeof(T);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  sm90::launch_dependents();  // the next kernel may start once all CTAs got here
  sm90::wait_prerequisites();
#endif
  const int64_t groups = p.D / kVec;
  const int64_t work = p.N * groups;
  for (int64_t w = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; w < work;
       w += int64_t(gridDim.x) * blockDim.x) {
    const int64_t group = w % groups, n = w / groups;
    const int64_t slot = slot_of(p.slots, n, p.S);
    const int64_t d0 = group * kVec;
    T* y = reinterpret_cast<T*>(p.y.data) + n * p.y.stride[0] + d0;
    if (slot < 0) {  // skipped: y left, or 0 (Dao's padding rows)
      if (p.zero_skipped) *reinterpret_cast<uint4*>(y) = make_uint4(0, 0, 0, 0);
      continue;
    }
    uint4* state = reinterpret_cast<uint4*>(reinterpret_cast<T*>(p.state.data) +
                                            slot * p.state.stride[0] + d0 * kSL);
    union {
      uint4 raw[kSL];
      T e[kVec * kSL];  // channel c, column j at c kSL + j
    } old, next;
#pragma unroll
    for (int i = 0; i < kSL; ++i) old.raw[i] = state[i];
    Vec16<T> token;
    token.raw = *reinterpret_cast<const uint4*>(reinterpret_cast<const T*>(p.x.data) +
                                                n * p.x.stride[0] + d0);
    float taps[4][kVec], bias[kVec];
    load_taps<T, kVec>(p.weight, p.bias, p.W, d0, taps, bias);
    float win[4][kVec];
#pragma unroll
    for (int c = 0; c < kVec; ++c) {
#pragma unroll
      for (int j = 1; j < 4; ++j) win[3 - j][c] = to_f(old.e[c * kSL + kSL - j]);
      win[3][c] = to_f(token.e[c]);
    }
    float out[kVec];
    conv_outputs(taps, bias, win, p.silu, silu_for<T>, out);
    *reinterpret_cast<uint4*>(y) = pack16<T, kVec>(out);
#pragma unroll
    for (int c = 0; c < kVec; ++c) {
#pragma unroll
      for (int j = 0; j < kSL; ++j)
        next.e[c * kSL + j] = j + 1 < kSL ? old.e[c * kSL + j + 1] : token.e[c];
    }
#pragma unroll
    for (int i = 0; i < kSL; ++i) state[i] = next.raw[i];
  }
}

// Whether the module runs sm_90 code here: conv_fwd_bulk_kernel's PTX
// version is 90 (a module built for sm_8x only, or run from compute_80 PTX on
// a Hopper, has the empty kernel and no griddepcontrol).
bool sm90_code() {
  static const bool sm90 = [] {
    cudaFuncAttributes attributes{};
    const bool found =
        cudaFuncGetAttributes(
            &attributes, conv_fwd_bulk_kernel<__nv_bfloat16, kFwdRows, kFwdStages>) == cudaSuccess;
    (void)cudaGetLastError();  // not sticky; leave no error for later launches to report
    return found && attributes.ptxVersion >= 90;
  }();
  return sm90;
}

// conv_fwd_bulk_kernel's runs: about one wave of CTAs (kBulkBlocksPerSm per
// SM), at least kBulkMinRun tokens each. Returns cudaErrorNotSupported where
// the kernel cannot run (no sm_90 code, shared memory refused): the caller
// takes conv_fwd_vec_kernel instead.
template <class T, int kRows, int kStages>
cudaError_t launch_conv_fwd_bulk(const ConvParams& p, cudaStream_t stream) {
  if (!conv_v4() || !sm90_code()) return cudaErrorNotSupported;
  constexpr auto kernel = conv_fwd_bulk_kernel<T, kRows, kStages>;
  constexpr size_t kSmem = kBulkSmem<kRows, kStages>;
  int device = 0, sms = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess)
    status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (status == cudaSuccess) status = allow_smem(kernel, kSmem);
  if (status != cudaSuccess) return status;
  const int64_t channels = int64_t{kBulkThreads} * (16 / sizeof(T));
  const int64_t strips = p.B * ((p.D + channels - 1) / channels);  // (row, channel block)
  const int64_t fit = int64_t{sms} * kBulkBlocksPerSm / strips;    // runs per row in one wave
  const int64_t most = (p.T + kBulkMinRun - 1) / kBulkMinRun;
  const int64_t runs = fit < 1 ? 1 : (fit < most ? fit : most);
  const int64_t run_tokens = (p.T + runs - 1) / runs;
  const int64_t grid = strips * ((p.T + run_tokens - 1) / run_tokens);
  if (grid > 0x7fffffff) return cudaErrorNotSupported;
  kernel<<<static_cast<unsigned>(grid), kBulkThreads, kSmem, stream>>>(p, run_tokens);
  return cudaGetLastError();
}

// TEMPORARY (issue 21's device run, removed with its results): HOPS_CONV_FWD
// = 4x3 or 4x5 times other tiles (rows x stages) than the default 8x3.
template <class T>
cudaError_t launch_conv_fwd_bulk(const ConvParams& p, cudaStream_t stream) {
  static const std::string tiles = std::getenv("HOPS_CONV_FWD") ? std::getenv("HOPS_CONV_FWD") : "";
  if (tiles == "4x3") return launch_conv_fwd_bulk<T, 4, 3>(p, stream);
  if (tiles == "4x5") return launch_conv_fwd_bulk<T, 4, 5>(p, stream);
  return launch_conv_fwd_bulk<T, kFwdRows, kFwdStages>(p, stream);
}

// conv_decode_vec_kernel's launch: with sm_90 code, as a programmatic
// dependent of the stream's previous kernel (its griddepcontrol.wait keeps
// the order); else as usual.
cudaError_t launch_decode(void (*kernel)(ConvUpdateParams), const ConvUpdateParams& p, int grid,
                          cudaStream_t stream) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(grid));
  config.blockDim = dim3(128);
  config.stream = stream;
  cudaLaunchAttribute overlap{};
  overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap.val.programmaticStreamSerializationAllowed = 1;
  // TEMPORARY (issue 21's device run): HOPS_CONV_PDL=0 launches it as usual.
  static const bool pdl =
      !std::getenv("HOPS_CONV_PDL") || std::string(std::getenv("HOPS_CONV_PDL")) != "0";
  if (pdl && sm90_code()) config.attrs = &overlap, config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, p);
}

}  // namespace

bool conv_v4() {
  static const bool v4 = [] {
    const char* choice = std::getenv("HOPS_CONV_V4");
    return choice ? std::string(choice) != "0" : kConvV4;
  }();
  return v4;
}

cudaError_t launch_conv1d_fwd(const ConvParams& p, int dtype, cudaStream_t stream) {
  cudaError_t status = cudaSuccess;
  by_dtype(dtype, [&]<class T>(T) {
    constexpr int kVec = 16 / sizeof(T);
    if (p.B * p.T * p.D > 0) {
      const bool dense = p.vector && !p.cu.data && !p.ids.data;
      if (dense) status = launch_conv_fwd_bulk<T>(p, stream);
      if (dense && status == cudaErrorNotSupported) {
        status = cudaSuccess;
        const int64_t work = p.B * ((p.T + kRunTokens - 1) / kRunTokens) * (p.D / kVec);
        conv_fwd_vec_kernel<T>
            <<<grid_for(work, kVecThreads), kVecThreads, 0, stream>>>(p, kRunTokens);
      } else if (!dense) {
        const int64_t work = p.B * ((p.T + kTokens - 1) / kTokens) * ((p.D + kVec - 1) / kVec);
        conv_fwd_kernel<T, kVec><<<grid_for(work, 128), 128, 0, stream>>>(p);
      }
    }
    if (status == cudaSuccess && p.final_state.data) {
      const int64_t count = p.N * p.D * p.final_state.shape[2];
      if (count > 0) conv_final_state_kernel<T><<<grid_for(count, 256), 256, 0, stream>>>(p);
    }
  });
  return status != cudaSuccess ? status : cudaGetLastError();
}

cudaError_t launch_conv1d_update(const ConvUpdateParams& p, int dtype, cudaStream_t stream) {
  cudaError_t status = cudaSuccess;
  by_dtype(dtype, [&]<class T>(T) {
    constexpr int64_t kVec = 16 / sizeof(T);
    const auto aligned = [](const void* ptr) {
      return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
    };
    const Arg &x = p.x, &y = p.y, &s = p.state;
    // (a [N, D] x is viewed as [N, 1, D] with an arbitrary token stride)
    const bool tokens_aligned = p.L <= 1 || (x.stride[1] % kVec == 0 && y.stride[1] % kVec == 0);
    const bool vector = !p.seen.data && p.D % kVec == 0 && x.stride[2] == 1 && y.stride[2] == 1 &&
                        x.stride[0] % kVec == 0 && y.stride[0] % kVec == 0 && tokens_aligned &&
                        aligned(x.data) && aligned(y.data) && s.dtype == dtype &&
                        s.stride[2] == 1 && s.stride[1] == p.SL && s.stride[0] % kVec == 0 &&
                        aligned(s.data);
    const int grid = grid_for(p.N * (p.D / kVec), 128);
    const bool decode = p.L == 1 && conv_v4();
    if (vector && decode && (p.SL == 3 || p.SL == 4))
      status = launch_decode(
          p.SL == 3 ? conv_decode_vec_kernel<T, 3> : conv_decode_vec_kernel<T, 4>, p, grid, stream);
    else if (vector && p.SL == 3)
      conv_update_vec_kernel<T, 3><<<grid, 128, 0, stream>>>(p);
    else if (vector && p.SL == 4)
      conv_update_vec_kernel<T, 4><<<grid, 128, 0, stream>>>(p);
    else
      conv_update_kernel<T><<<grid_for(p.N * p.D, 128), 128, 0, stream>>>(p);
  });
  return status != cudaSuccess ? status : cudaGetLastError();
}

}  // namespace hops::cuda
