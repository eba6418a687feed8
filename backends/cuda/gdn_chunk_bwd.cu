// gdn_chunk_bwd: the backward of gdn_chunk_fwd in fp32 on CUDA cores (the
// batched products of steps 1, 2, 5 and 7 on tf32 tensor cores when the
// inputs are 16-bit), the chunked form of backends/cpu/gdn_chunk_bwd.cpp
// (whose header has the math) spread over the GPU. Chunks of C = 64 tokens live in "slots":
// sequence n's chunk c is slot first_slot(n) + c (dense: n * ceil(T/C) + c; varlen: floor(begin/C)
// + n + c, distinct for nondecreasing offsets and below ceil(T/C) + N). Every per-chunk quantity is
// kept, fp32, in scratch indexed by (slot, head); rows past a chunk's length are zero (and g = 0
// there, so that index C-1 holds the chunk's last cumulative decay). With the CPU's notation, per
// (chunk, value head):
//   1. keys       q, k (l2-normalised), then QK = Q K^T, KK = K K^T per key head
//   2. values     G, gamma, e^(G_last - G), A, P, T = (I + A)^-1 (by 16 x 16
//                 blocks), R_w = -beta gamma K, R_v = beta V, K~; W = T R_w, U0 = T R_v
//   3. forward    sequential per (sequence, value head, 32 value columns): the
//      sweep      state S at every chunk start (stored), U = U0 + W S (stored),
//                 S <- gamma_last S + K~^T U (the delta rule is column-separable)
//   4. reverse    the same grid, chunks backwards: dH at every chunk end
//      sweep      (stored), dU = K~ dH + P^T dO (stored),
//                 dH <- gamma_last dH + (diag(s gamma) Q)^T dO + W^T dU; dh0
//   5. batched    dW = dU S^T, dq = dO S^T, dK~ = U dH^T, dP = dO U^T,
//      products   [X | Y] = T^T [dW | dU], Z = X R_w^T + Y R_v^T, dA = -Z T^T
//   6. gradients  per (chunk, value head): dv = beta Y, dbeta, dG -> dg (reverse
//                 cumulative sum), dP o sD, B + B^T, the per-token dq and dk terms
//   7. products   dq += (dP o sD) K, dk += (dP o sD)^T Q + (B + B^T) K
//   8. keys       dq, dk of a key head: the sum over its G value heads in head
//                 order (no atomics: deterministic), then the l2norm backward.
// Scratch is large (about 4 (K + V) + 8 C + 2 K V / C floats per token and
// value head) in exchange for simple, fully parallel steps around the two
// sequential sweeps.
#include "checked_math.hpp"
#include "device_common.cuh"

namespace hops::cuda {

namespace {

constexpr int kC = 64;  // chunk length
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kColumns = 32;               // value columns per CTA of the sweeps
constexpr int kRowsPerWarp = kC / kWarps;  // register tile of the sweeps' products

// A chunk of a sequence; length 0 marks a slot no chunk uses.
struct ChunkEntry {
  int64_t row, begin, length;
};

int64_t chunks_per_row(int64_t T) { return (T + kC - 1) / kC; }

int64_t slot_count(const ChunkBwdParams& p) {
  return p.cu.data ? chunks_per_row(p.T) + p.N : p.N * chunks_per_row(p.T);
}

__device__ int64_t first_slot(const ChunkBwdParams& p, int64_t n, const Span& span) {
  return p.cu.data ? span.begin / kC + n : n * ((p.T + kC - 1) / kC);
}

// The scratch blocks, fp32 unless said; [S, H, C, K] is per slot and key
// head, [S, HV, ..] per slot and value head.
struct Workspace {
  ChunkEntry* table;                   // [S]
  float *q, *k;                        // [S, H, C, K] (normalised with l2norm)
  float *q_norm, *k_norm;              // [S, H, C] 1 / sqrt(|x|^2 + 1e-6), or 1
  float *qk, *kk;                      // [S, H, C, C]
  float *log_decay, *beta, *gamma;     // [S, HV, C] G, beta, e^G
  float* to_end;                       // [S, HV, C] e^(G_last - G)
  float *a, *t, *p, *dp, *z, *da;      // [S, HV, C, C]
  float *dp_scaled, *b_sym;            // [S, HV, C, C] dP o sD, B + B^T
  float *k_decayed, *rw, *w, *dw, *x;  // [S, HV, C, K]
  float *dq, *dk_decayed, *dk;         // [S, HV, C, K] per value head
  float *v, *d_o, *rv, *u, *du, *y;    // [S, HV, C, V]
  float *state, *dh;                   // [S, HV, K, V] at the chunk's start, end
};

// Lays the blocks out from `base` (null: only counts); returns the bytes.
// Each block's size is the product of its dims, overflow-checked (the total
// is at most kMaxScratchBytes, so the kernels' offsets into it fit).
size_t carve(const ChunkBwdParams& p, char* base, Workspace& w) {
  const int64_t S = slot_count(p), C = kC;
  int64_t offset = 0;
  auto take = [&]<class T, class... Dims>(T*& block, Dims... dims) {
    block = base ? reinterpret_cast<T*>(base + offset) : nullptr;
    const int64_t bytes = scratch_size("gdn_chunk_bwd", dims..., sizeof(T));
    offset = scratch_sum("gdn_chunk_bwd", offset, (bytes + 255) / 256 * 256);
  };
  take(w.table, S);
  for (float** block : {&w.q, &w.k}) take(*block, S, p.H, C, p.K);
  for (float** block : {&w.q_norm, &w.k_norm}) take(*block, S, p.H, C);
  for (float** block : {&w.qk, &w.kk}) take(*block, S, p.H, C, C);
  for (float** block : {&w.log_decay, &w.beta, &w.gamma, &w.to_end}) take(*block, S, p.HV, C);
  for (float** block : {&w.a, &w.t, &w.p, &w.dp, &w.z, &w.da, &w.dp_scaled, &w.b_sym})
    take(*block, S, p.HV, C, C);
  for (float** block : {&w.k_decayed, &w.rw, &w.w, &w.dw, &w.x, &w.dq, &w.dk_decayed, &w.dk})
    take(*block, S, p.HV, C, p.K);
  for (float** block : {&w.v, &w.d_o, &w.rv, &w.u, &w.du, &w.y}) take(*block, S, p.HV, C, p.V);
  for (float** block : {&w.state, &w.dh}) take(*block, S, p.HV, p.K, p.V);
  return static_cast<size_t>(offset);
}

__device__ __forceinline__ int64_t at(const Arg& a, int64_t i0, int64_t i1, int64_t i2,
                                      int64_t i3 = 0) {
  return i0 * a.stride[0] + i1 * a.stride[1] + i2 * a.stride[2] + i3 * a.stride[3];
}

// Offset of row 0 of the [C, width] block of (slot, head) among `heads`.
__device__ __forceinline__ int64_t block_at(int64_t slot, int64_t head, int64_t heads,
                                            int64_t width) {
  return (slot * heads + head) * kC * width;
}

// ---- 1. keys ---------------------------------------------------------------------------

// Grid (S, H); a warp per row.
__global__ void __launch_bounds__(kThreads) gather_keys(ChunkBwdParams p, Workspace w) {
  const int64_t slot = blockIdx.x, h = blockIdx.y, K = p.K;
  const ChunkEntry chunk = w.table[slot];
  if (chunk.length == 0) return;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float* q = w.q + block_at(slot, h, p.H, K);
  float* k = w.k + block_at(slot, h, p.H, K);
  for (int i = warp; i < kC; i += kWarps) {
    const bool valid = i < chunk.length;
    const int64_t t = chunk.begin + i;
    float q_sum = 0.0f, k_sum = 0.0f;
    for (int64_t x = lane; x < K; x += 32) {
      const float qv = valid ? ld(p.q.data, p.q.dtype, at(p.q, chunk.row, t, h, x)) : 0.0f;
      const float kv = valid ? ld(p.k.data, p.k.dtype, at(p.k, chunk.row, t, h, x)) : 0.0f;
      q[i * K + x] = qv, k[i * K + x] = kv;
      q_sum += qv * qv, k_sum += kv * kv;
    }
    float q_factor = 1.0f, k_factor = 1.0f;
    if (p.l2norm) {
      q_factor = 1.0f / sqrtf(warp_sum(q_sum) + 1e-6f);
      k_factor = 1.0f / sqrtf(warp_sum(k_sum) + 1e-6f);
      for (int64_t x = lane; x < K; x += 32) q[i * K + x] *= q_factor, k[i * K + x] *= k_factor;
    }
    if (lane == 0) {
      w.q_norm[(slot * p.H + h) * kC + i] = q_factor;
      w.k_norm[(slot * p.H + h) * kC + i] = k_factor;
    }
  }
}

// ---- 2. values -------------------------------------------------------------------------

// Grid (S, HV).
__global__ void __launch_bounds__(kThreads, 2) gather_values(ChunkBwdParams p, Workspace w) {
  __shared__ float log_decay[kC], beta[kC], gamma[kC], to_end[kC];
  __shared__ float a[kC][kC + 1], t[kC][kC + 1];
  __shared__ float partial[kC / 16 - 1][16][17];  // the inversion's P blocks of one diagonal
  const int64_t slot = blockIdx.x, hv = blockIdx.y, h = hv / (p.HV / p.H), K = p.K, V = p.V;
  const ChunkEntry chunk = w.table[slot];
  if (chunk.length == 0) return;
  const int tid = threadIdx.x;
  const int64_t row = (slot * p.HV + hv) * kC;  // of the [S, HV, C] blocks
  if (tid < kC) {
    const bool valid = tid < chunk.length;
    const int64_t token = chunk.begin + tid;
    log_decay[tid] = valid ? ld(p.g.data, p.g.dtype, at(p.g, chunk.row, token, hv)) : 0.0f;
    beta[tid] = valid ? ld(p.beta.data, p.beta.dtype, at(p.beta, chunk.row, token, hv)) : 0.0f;
  }
  __syncthreads();
  if (tid < 32) {  // the in-chunk cumulative sum: a scan over the two halves, then their join
    float low = log_decay[tid], high = log_decay[tid + 32];
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const float low_before = __shfl_up_sync(0xffffffffu, low, offset);
      const float high_before = __shfl_up_sync(0xffffffffu, high, offset);
      if (tid >= offset) low += low_before, high += high_before;
    }
    high += __shfl_sync(0xffffffffu, low, 31);
    log_decay[tid] = low, log_decay[tid + 32] = high;
  }
  __syncthreads();
  if (tid < kC) {
    gamma[tid] = expf(log_decay[tid]);
    to_end[tid] = expf(log_decay[kC - 1] - log_decay[tid]);
    w.log_decay[row + tid] = log_decay[tid], w.beta[row + tid] = beta[tid];
    w.gamma[row + tid] = gamma[tid], w.to_end[row + tid] = to_end[tid];
  }
  __syncthreads();

  const float* k = w.k + block_at(slot, h, p.H, K);
  const int64_t key_block = block_at(slot, hv, p.HV, K);
  const int64_t value_block = block_at(slot, hv, p.HV, V);
  const int lane = tid % 32;
  for (int i = tid / 32; i < kC; i += kWarps) {
    for (int64_t x = lane; x < K; x += 32) {
      const int64_t e = key_block + i * K + x;
      w.k_decayed[e] = to_end[i] * k[i * K + x];
      w.rw[e] = -beta[i] * gamma[i] * k[i * K + x];
    }
    for (int64_t x = lane; x < V; x += 32) {
      float value = 0.0f, d_o = 0.0f;
      if (i < chunk.length) {
        value = ld(p.v.data, p.v.dtype, at(p.v, chunk.row, chunk.begin + i, hv, x));
        d_o = ld(p.d_o.data, p.d_o.dtype, at(p.d_o, chunk.row, chunk.begin + i, hv, x));
      }
      const int64_t e = value_block + i * V + x;
      w.v[e] = value, w.d_o[e] = d_o, w.rv[e] = beta[i] * value;
    }
  }
  // A (j < i) and P (j <= i) from the key head's KK and QK.
  const int64_t square = block_at(slot, hv, p.HV, kC), key_square = block_at(slot, h, p.H, kC);
  for (int e = tid; e < kC * kC; e += kThreads) {
    const int i = e / kC, j = e % kC;
    const float decay = j <= i ? expf(log_decay[i] - log_decay[j]) : 0.0f;
    a[i][j] = j < i ? beta[i] * decay * w.kk[key_square + e] : 0.0f;
    w.a[square + e] = a[i][j];
    w.p[square + e] = p.scale * decay * w.qk[key_square + e];
  }
  __syncthreads();
  // T = (I + A)^-1 by 16 x 16 blocks (a column-per-thread substitution over
  // all 64 rows would be a 2K-step dependent chain on two warps): the
  // diagonal blocks by substitution, a column of one per thread, then the
  // blocks below, one block diagonal d at a time, every thread an element:
  // T_ij = -T_ii P_ij, P_ij = sum_{k=j}^{i-1} A_ik T_kj (block indices).
  constexpr int kBlock = 16, kBlocks = kC / kBlock, kBlockArea = kBlock * kBlock;
  if (tid < kC) {
    const int b = tid / kBlock * kBlock, column = tid % kBlock;
    float x[kBlock];
#pragma unroll
    for (int r = 0; r < kBlock; ++r) {
      float value = r == column ? 1.0f : 0.0f;
#pragma unroll
      for (int m = 0; m < r; ++m) value -= a[b + r][b + m] * x[m];
      x[r] = value;
    }
#pragma unroll
    for (int r = 0; r < kBlock; ++r) t[b + r][b + column] = x[r];
  }
  for (int e = tid; e < kC * kC; e += kThreads) {  // zero above the diagonal blocks
    const int i = e / kC, j = e % kC;
    if (j / kBlock > i / kBlock) t[i][j] = 0.0f;
  }
  __syncthreads();
  for (int d = 1; d < kBlocks; ++d) {
    const int count = (kBlocks - d) * kBlockArea;  // elements of this block diagonal
    for (int e = tid; e < count; e += kThreads) {
      const int j = e / kBlockArea * kBlock, i = j + d * kBlock;
      const int r = e % kBlockArea / kBlock, column = e % kBlock;
      float sum = 0.0f;
      for (int m = j; m < i; ++m) sum += a[i + r][m] * t[m][j + column];
      partial[e / kBlockArea][r][column] = sum;
    }
    __syncthreads();
    for (int e = tid; e < count; e += kThreads) {
      const int j = e / kBlockArea * kBlock, i = j + d * kBlock;
      const int r = e % kBlockArea / kBlock, column = e % kBlock;
      float sum = 0.0f;
#pragma unroll
      for (int m = 0; m < kBlock; ++m) sum += t[i + r][i + m] * partial[e / kBlockArea][m][column];
      t[i + r][j + column] = -sum;
    }
    __syncthreads();
  }
  for (int e = tid; e < kC * kC; e += kThreads) w.t[square + e] = t[e / kC][e % kC];
}

// ---- 3., 4. the sweeps -----------------------------------------------------------------

size_t sweep_smem_bytes(const ChunkBwdParams& p) {
  // state [K][32], three [C][32] blocks, two [C][K+1] matrices, P [C][C+1]
  const int64_t K = p.K;
  return sizeof(float) *
         static_cast<size_t>(K * kColumns + 3 * kC * kColumns + 2 * kC * (K + 1) + kC * (kC + 1));
}

// Copies the [C, K] block `from` into shared [C][K+1], each row scaled by
// factor[i] when given. A thread loads its 8 rows before storing any: the
// sweeps run few warps per SM, and one load in flight at a time would leave
// them waiting on global memory for most of each chunk.
__device__ void stage_rows(const float* from, int64_t K, const float* factor, float* to) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t x = lane; x < K; x += 32) {
    float values[kRowsPerWarp];
#pragma unroll
    for (int m = 0; m < kRowsPerWarp; ++m) values[m] = from[(warp + kWarps * m) * K + x];
#pragma unroll
    for (int m = 0; m < kRowsPerWarp; ++m) {
      const int i = warp + kWarps * m;
      to[i * (K + 1) + x] = factor ? factor[i] * values[m] : values[m];
    }
  }
}

// Grid (ceil(V/32), HV, N): the states at the chunk starts, and U.
__global__ void __launch_bounds__(kThreads, 1) forward_sweep(ChunkBwdParams p, Workspace w) {
  extern __shared__ float smem[];
  const int64_t K = p.K, V = p.V, KP = K + 1;
  float* state = smem;                // [K][32]
  float* u = state + K * kColumns;    // [C][32]
  float* matrix = u + kC * kColumns;  // [C][KP]: W, then K~
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n = blockIdx.z, hv = blockIdx.y, column = int64_t(blockIdx.x) * kColumns + lane;
  const bool in_v = column < V;
  const Span span = sequence_span(p.cu, n, p.T);
  const float* h0 = p.h0.data ? reinterpret_cast<const float*>(p.h0.data) + n * p.h0.stride[0] +
                                    hv * p.h0.stride[1]
                              : nullptr;
  for (int64_t x = warp; x < K; x += kWarps)
    state[x * kColumns + lane] = h0 && in_v ? h0[x * p.h0_k + column * p.h0_v] : 0.0f;
  int64_t slot = first_slot(p, n, span);
  for (int64_t t0 = span.begin; t0 < span.end; t0 += kC, ++slot) {
    __syncthreads();  // the previous chunk is done with the blocks
    float* checkpoint = w.state + (slot * p.HV + hv) * K * V;
    for (int64_t x = warp; x < K; x += kWarps) {
      if (in_v) checkpoint[x * V + column] = state[x * kColumns + lane];
    }
    stage_rows(w.w + block_at(slot, hv, p.HV, K), K, nullptr, matrix);
    __syncthreads();
    // U = U0 + W S
    float* u_out = w.u + block_at(slot, hv, p.HV, V);
    {
      float acc[kRowsPerWarp];
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m)
        acc[m] = in_v ? u_out[(warp + kWarps * m) * V + column] : 0.0f;
      for (int64_t x = 0; x < K; ++x) {
        const float s = state[x * kColumns + lane];
#pragma unroll
        for (int m = 0; m < kRowsPerWarp; ++m) acc[m] += matrix[(warp + kWarps * m) * KP + x] * s;
      }
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m) {
        const int i = warp + kWarps * m;
        u[i * kColumns + lane] = acc[m];
        if (in_v) u_out[i * V + column] = acc[m];
      }
    }
    __syncthreads();
    stage_rows(w.k_decayed + block_at(slot, hv, p.HV, K), K, nullptr, matrix);
    __syncthreads();
    // S = gamma_last S + K~^T U
    const float state_decay = w.gamma[(slot * p.HV + hv) * kC + kC - 1];
    for (int64_t x0 = warp; x0 < K; x0 += kWarps * kRowsPerWarp) {
      float acc[kRowsPerWarp] = {};
      for (int i = 0; i < kC; ++i) {
        const float value = u[i * kColumns + lane];
#pragma unroll
        for (int m = 0; m < kRowsPerWarp; ++m) {
          const int64_t x = x0 + kWarps * m;
          if (x < K) acc[m] += matrix[i * KP + x] * value;
        }
      }
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m) {
        const int64_t x = x0 + kWarps * m;
        if (x < K) state[x * kColumns + lane] = state_decay * state[x * kColumns + lane] + acc[m];
      }
    }
  }
}

// Grid (ceil(V/32), HV, N): dH at the chunk ends, dU, and dh0.
__global__ void __launch_bounds__(kThreads, 1) reverse_sweep(ChunkBwdParams p, Workspace w) {
  extern __shared__ float smem[];
  const int64_t K = p.K, V = p.V, KP = K + 1;
  float* dh = smem;                             // [K][32]
  float* du = dh + K * kColumns;                // [C][32]
  float* d_o = du + kC * kColumns;              // [C][32]
  float* query_scale = d_o + kC * kColumns;     // [C] s gamma (in the third [C][32] block)
  float* matrix = query_scale + kC * kColumns;  // [C][KP]: K~, then W
  float* queries = matrix + kC * KP;            // [C][KP]: diag(s gamma) Q
  float* scores = queries + kC * KP;            // [C][C+1]: P
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n = blockIdx.z, hv = blockIdx.y, h = hv / (p.HV / p.H);
  const int64_t column = int64_t(blockIdx.x) * kColumns + lane;
  const bool in_v = column < V;
  const Span span = sequence_span(p.cu, n, p.T);
  const float* dht = p.dht.data ? reinterpret_cast<const float*>(p.dht.data) + n * p.dht.stride[0] +
                                      hv * p.dht.stride[1]
                                : nullptr;
  for (int64_t x = warp; x < K; x += kWarps)
    dh[x * kColumns + lane] = dht && in_v ? dht[x * p.dht_k + column * p.dht_v] : 0.0f;
  const int64_t chunks = (span.end - span.begin + kC - 1) / kC;
  for (int64_t slot = first_slot(p, n, span) + chunks - 1, c = chunks - 1; c >= 0; --c, --slot) {
    __syncthreads();  // the previous chunk is done with the blocks
    const int64_t row = (slot * p.HV + hv) * kC;
    float* checkpoint = w.dh + (slot * p.HV + hv) * K * V;
    for (int64_t x = warp; x < K; x += kWarps) {
      if (in_v) checkpoint[x * V + column] = dh[x * kColumns + lane];
    }
    const int64_t value_block = block_at(slot, hv, p.HV, V);
    for (int i = warp; i < kC; i += kWarps)
      d_o[i * kColumns + lane] = in_v ? w.d_o[value_block + i * V + column] : 0.0f;
    if (threadIdx.x < kC) query_scale[threadIdx.x] = p.scale * w.gamma[row + threadIdx.x];
    stage_rows(w.k_decayed + block_at(slot, hv, p.HV, K), K, nullptr, matrix);
    const float* p_block = w.p + block_at(slot, hv, p.HV, kC);
    stage_rows(p_block, kC, nullptr, scores);
    __syncthreads();
    stage_rows(w.q + block_at(slot, h, p.H, K), K, query_scale, queries);
    // dU = K~ dH + P^T dO
    {
      float acc[kRowsPerWarp] = {};
      for (int64_t x = 0; x < K; ++x) {
        const float value = dh[x * kColumns + lane];
#pragma unroll
        for (int m = 0; m < kRowsPerWarp; ++m)
          acc[m] += matrix[(warp + kWarps * m) * KP + x] * value;
      }
      for (int j = 0; j < kC; ++j) {
        const float value = d_o[j * kColumns + lane];
#pragma unroll
        for (int m = 0; m < kRowsPerWarp; ++m)
          acc[m] += scores[j * (kC + 1) + warp + kWarps * m] * value;
      }
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m) {
        const int i = warp + kWarps * m;
        du[i * kColumns + lane] = acc[m];
        if (in_v) w.du[value_block + i * V + column] = acc[m];
      }
    }
    __syncthreads();
    stage_rows(w.w + block_at(slot, hv, p.HV, K), K, nullptr, matrix);
    __syncthreads();
    // dH = gamma_last dH + (diag(s gamma) Q)^T dO + W^T dU
    const float state_decay = w.gamma[row + kC - 1];
    for (int64_t x0 = warp; x0 < K; x0 += kWarps * kRowsPerWarp) {
      float acc[kRowsPerWarp] = {};
      for (int i = 0; i < kC; ++i) {
        const float output = d_o[i * kColumns + lane], update = du[i * kColumns + lane];
#pragma unroll
        for (int m = 0; m < kRowsPerWarp; ++m) {
          const int64_t x = x0 + kWarps * m;
          if (x < K) acc[m] += queries[i * KP + x] * output + matrix[i * KP + x] * update;
        }
      }
#pragma unroll
      for (int m = 0; m < kRowsPerWarp; ++m) {
        const int64_t x = x0 + kWarps * m;
        if (x < K) dh[x * kColumns + lane] = state_decay * dh[x * kColumns + lane] + acc[m];
      }
    }
  }
  // Each thread stores the dH elements it updated itself: no barrier needed.
  if (p.dh0.data && in_v) {
    float* dh0 = reinterpret_cast<float*>(p.dh0.data) + n * p.dh0.stride[0] + hv * p.dh0.stride[1];
    for (int64_t x = warp; x < K; x += kWarps)
      dh0[x * p.dh0_k + column * p.dh0_v] = dh[x * kColumns + lane];
  }
}

// ---- 3., 4. the sweeps on tf32 tensor cores (16-bit inputs) -----------------------------
//
// The same two recurrences with every per-chunk product on mma.sync m16n8k8
// tf32 (fp32 accumulation; the state and dH stay fp32 in the accumulators).
// A CTA of 8 warps per (sequence, value head, 32 value columns) as above; the
// state (dH) lives in the registers of the warps that own its 16-row blocks
// (warp w: rows 16 w .. 16 w + 15, all 32 columns) and in shared memory, from
// which the other products read it. A chunk's operand blocks are brought in
// by cp.async one chunk ahead, so the loads of chunk c + 1 run under the
// products of chunk c: the recurrence itself is all that stays sequential.
// K <= 128 and K, V multiples of 4 (16-byte rows); padding rows and columns
// (K up to a multiple of 16, value columns past V) are zero in shared memory.
constexpr int kTcMaxK = 128;
constexpr int kRowPitch = kTcMaxK + 4;  // [C][K] tiles read along rows (A operand)
constexpr int kColPitch = kTcMaxK + 8;  // [C][K] tiles read down columns (transposed A)
constexpr int kNPitch = kColumns + 8;   // [rows][32] tiles (B operand, accumulators)
constexpr int kSquarePitch = kC + 8;    // P, read transposed
// The pitches make every fragment read hit 32 distinct banks: a row-wise A
// read touches bank 4 g + t (pitch = 4 mod 32), the transposed A and B reads
// bank 8 t + g (pitch = 8 mod 32), with g = lane / 4, t = lane % 4.

bool sweeps_on_tensor_cores(const ChunkBwdParams& p, bool tensor_cores) {
  return tensor_cores && p.K <= kTcMaxK && p.K % 4 == 0 && p.V % 4 == 0;
}

// Rows [0, rows) of width floats (a multiple of 4), `from_pitch` apart in
// global memory, into shared rows `pitch` apart; 16-byte cp.async pieces.
__device__ __forceinline__ void copy_rows_async(float* to, int pitch, const float* from,
                                                int64_t from_pitch, int rows, int width) {
  const int pieces = width / 4, count = rows * pieces;
  for (int e = threadIdx.x; e < count; e += kThreads) {
    const int r = e / pieces, c = 4 * (e % pieces);
    cp_async16(to + r * pitch + c, from + r * from_pitch + c, true);
  }
}

// A fragment of rows m0.., depth k0..: a(m, k) = tile[m pitch + k].
__device__ __forceinline__ void fragment_rows(uint32_t (&a)[4], const float* tile, int pitch,
                                              int m0, int k0) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const float* at = tile + (m0 + g) * pitch + k0 + t;
  a[0] = to_tf32(at[0]), a[1] = to_tf32(at[8 * pitch]);
  a[2] = to_tf32(at[4]), a[3] = to_tf32(at[8 * pitch + 4]);
}
// A fragment of the transposed tile: a(m, k) = tile[k pitch + m], with depth
// rows k0 + t scaled by s0 and k0 + t + 4 by s1.
__device__ __forceinline__ void fragment_columns(uint32_t (&a)[4], const float* tile, int pitch,
                                                 int m0, int k0, float s0 = 1.0f, float s1 = 1.0f) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const float* at = tile + (k0 + t) * pitch + m0 + g;
  a[0] = to_tf32(s0 * at[0]), a[1] = to_tf32(s0 * at[8]);
  a[2] = to_tf32(s1 * at[4 * pitch]), a[3] = to_tf32(s1 * at[4 * pitch + 8]);
}
// B fragment at depth k0.., columns n0..: b(k, n) = tile[k pitch + n].
__device__ __forceinline__ void fragment_b(uint32_t (&b)[2], const float* tile, int pitch, int k0,
                                           int n0) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const float* at = tile + (k0 + t) * pitch + n0 + g;
  b[0] = to_tf32(at[0]), b[1] = to_tf32(at[4 * pitch]);
}

// The accumulator tile (rows m0.., columns n0..) to shared [rows][kNPitch].
__device__ __forceinline__ void store_tile(float* tile, int m0, int n0, const float (&d)[4]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  float* at = tile + (m0 + g) * kNPitch + n0 + 2 * t;
  *reinterpret_cast<float2*>(at) = make_float2(d[0], d[1]);
  *reinterpret_cast<float2*>(at + 8 * kNPitch) = make_float2(d[2], d[3]);
}
__device__ __forceinline__ void load_tile(float (&d)[4], const float* tile, int m0, int n0) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const float* at = tile + (m0 + g) * kNPitch + n0 + 2 * t;
  const float2 top = *reinterpret_cast<const float2*>(at);
  const float2 bottom = *reinterpret_cast<const float2*>(at + 8 * kNPitch);
  d[0] = top.x, d[1] = top.y, d[2] = bottom.x, d[3] = bottom.y;
}

// A warp's 16 state rows (m0..) x 32 columns as four accumulator tiles, and
// their elements' (row, column) within the CTA's [K][32] window.
struct StateRows {
  float d[4][4];
  __device__ static int row(int m0, int e) { return m0 + (threadIdx.x % 32) / 4 + 8 * (e / 2); }
  __device__ static int column(int nt, int e) {
    return 8 * nt + 2 * (threadIdx.x % 32 % 4) + e % 2;
  }
};

// f(nt, e, x, column) for each of a warp's state elements d[nt][e] (rows m0..)
// that lies inside K x V: x its key row, column its value column.
template <class F>
__device__ __forceinline__ void for_state_elements(int m0, int64_t column0, int64_t K, int64_t V,
                                                   F&& f) {
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t x = StateRows::row(m0, e), column = column0 + StateRows::column(nt, e);
      if (x < K && column < V) f(nt, e, x, column);
    }
  }
}

struct ForwardStage {
  float w[kC * kRowPitch];  // W, rows
  float k[kC * kColPitch];  // K~, read transposed
  float u0[kC * kNPitch];   // U0's 32 columns
  float gamma[kC];
};
struct ForwardShared {
  float state[kTcMaxK * kNPitch];
  float u[kC * kNPitch];
  ForwardStage stage[2];
};

struct ReverseFirst {  // what dU needs (and dO for dH)
  float k[kC * kRowPitch];
  float p[kC * kSquarePitch];
  float d_o[kC * kNPitch];
  float gamma[kC];
};
struct ReverseSecond {  // what dH needs besides
  float q[kC * kColPitch];
  float w[kC * kColPitch];
};
struct ReverseShared {
  float dh[kTcMaxK * kNPitch];
  float du[kC * kNPitch];
  ReverseFirst first[2];
  ReverseSecond second;
};

// Zeroes the CTA's shared memory (the padding that cp.async never writes).
template <class Shared>
__device__ void zero_shared(Shared& s) {
  auto* words = reinterpret_cast<float4*>(&s);
  for (size_t e = threadIdx.x; e < sizeof(Shared) / 16; e += kThreads)
    words[e] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

// Grid (ceil(V/32), HV, N): the states at the chunk starts, and U.
__global__ void __launch_bounds__(kThreads, 1) forward_sweep_tc(ChunkBwdParams p, Workspace w) {
  extern __shared__ float4 shared_words[];
  ForwardShared& s = *reinterpret_cast<ForwardShared*>(shared_words);
  const int64_t K = p.K, V = p.V, HV = p.HV;
  const int kpad = static_cast<int>((K + 15) / 16 * 16);
  const int warp = threadIdx.x / 32;
  const int64_t n = blockIdx.z, hv = blockIdx.y, column0 = int64_t(blockIdx.x) * kColumns;
  const int width = static_cast<int>(V - column0 < kColumns ? V - column0 : kColumns);
  const Span span = sequence_span(p.cu, n, p.T);
  const int64_t chunks = (span.end - span.begin + kC - 1) / kC, first = first_slot(p, n, span);
  zero_shared(s);
  __syncthreads();
  auto load = [&](int64_t slot, ForwardStage& stage) {
    copy_rows_async(stage.w, kRowPitch, w.w + block_at(slot, hv, HV, K), K, kC,
                    static_cast<int>(K));
    copy_rows_async(stage.k, kColPitch, w.k_decayed + block_at(slot, hv, HV, K), K, kC,
                    static_cast<int>(K));
    copy_rows_async(stage.u0, kNPitch, w.u + block_at(slot, hv, HV, V) + column0, V, kC, width);
    copy_rows_async(stage.gamma, 0, w.gamma + (slot * HV + hv) * kC, 0, 1, kC);
  };
  if (chunks > 0) load(first, s.stage[0]);
  cp_async_commit();

  // The state rows of this warp (none when 16 warp >= kpad), from h0.
  const int m0 = 16 * warp;
  const bool owner = m0 < kpad;
  StateRows state{};
  const float* h0 = p.h0.data ? reinterpret_cast<const float*>(p.h0.data) + n * p.h0.stride[0] +
                                    hv * p.h0.stride[1]
                              : nullptr;
  if (owner) {
    if (h0) {
      for_state_elements(m0, column0, K, V, [&](int nt, int e, int64_t x, int64_t column) {
        state.d[nt][e] = h0[x * p.h0_k + column * p.h0_v];
      });
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) store_tile(s.state, m0, 8 * nt, state.d[nt]);
  }
  // U's tiles of this warp: rows 16 (warp % 4), columns 16 (warp / 4) + 8 j.
  const int um0 = 16 * (warp % 4), un0 = 16 * (warp / 4);
  for (int64_t c = 0, slot = first; c < chunks; ++c, ++slot) {
    if (owner) {
      float* checkpoint = w.state + (slot * HV + hv) * K * V;
      for_state_elements(m0, column0, K, V, [&](int nt, int e, int64_t x, int64_t column) {
        checkpoint[x * V + column] = state.d[nt][e];
      });
    }
    __syncthreads();  // chunk c - 1 is done with the other stage; the state is in shared memory
    if (c + 1 < chunks) load(slot + 1, s.stage[(c + 1) % 2]);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();  // chunk c's stage has arrived, for every thread
    const ForwardStage& stage = s.stage[c % 2];
    // U = U0 + W S
    float u[2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j) load_tile(u[j], stage.u0, um0, un0 + 8 * j);
    for (int k0 = 0; k0 < kpad; k0 += 8) {
      uint32_t a[4];
      fragment_rows(a, stage.w, kRowPitch, um0, k0);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        uint32_t b[2];
        fragment_b(b, s.state, kNPitch, k0, un0 + 8 * j);
        mma_tf32(u[j], a[0], a[1], a[2], a[3], b[0], b[1]);
      }
    }
    float* u_out = w.u + block_at(slot, hv, HV, V);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      store_tile(s.u, um0, un0 + 8 * j, u[j]);
      const int lane = threadIdx.x % 32;
      const int64_t column = column0 + un0 + 8 * j + 2 * (lane % 4), row = um0 + lane / 4;
      if (column < V) {
        *reinterpret_cast<float2*>(u_out + row * V + column) = make_float2(u[j][0], u[j][1]);
        *reinterpret_cast<float2*>(u_out + (row + 8) * V + column) = make_float2(u[j][2], u[j][3]);
      }
    }
    __syncthreads();  // U complete; every warp is done reading the state
    // S = gamma_last S + K~^T U
    if (owner) {
      float acc[4][4] = {};
#pragma unroll
      for (int k0 = 0; k0 < kC; k0 += 8) {
        uint32_t a[4];
        fragment_columns(a, stage.k, kColPitch, m0, k0);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          uint32_t b[2];
          fragment_b(b, s.u, kNPitch, k0, 8 * nt);
          mma_tf32(acc[nt], a[0], a[1], a[2], a[3], b[0], b[1]);
        }
      }
      const float decay = stage.gamma[kC - 1];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) state.d[nt][e] = decay * state.d[nt][e] + acc[nt][e];
        store_tile(s.state, m0, 8 * nt, state.d[nt]);
      }
    }
  }
  cp_async_wait<0>();
}

// Grid (ceil(V/32), HV, N): dH at the chunk ends, dU, and dh0.
__global__ void __launch_bounds__(kThreads, 1) reverse_sweep_tc(ChunkBwdParams p, Workspace w) {
  extern __shared__ float4 shared_words[];
  ReverseShared& s = *reinterpret_cast<ReverseShared*>(shared_words);
  const int64_t K = p.K, V = p.V, HV = p.HV;
  const int kpad = static_cast<int>((K + 15) / 16 * 16);
  const int warp = threadIdx.x / 32;
  const int64_t n = blockIdx.z, hv = blockIdx.y, h = hv / (HV / p.H);
  const int64_t column0 = int64_t(blockIdx.x) * kColumns;
  const int width = static_cast<int>(V - column0 < kColumns ? V - column0 : kColumns);
  const Span span = sequence_span(p.cu, n, p.T);
  const int64_t chunks = (span.end - span.begin + kC - 1) / kC, first = first_slot(p, n, span);
  zero_shared(s);
  __syncthreads();
  auto load_first = [&](int64_t slot, ReverseFirst& f) {
    copy_rows_async(f.k, kRowPitch, w.k_decayed + block_at(slot, hv, HV, K), K, kC,
                    static_cast<int>(K));
    copy_rows_async(f.p, kSquarePitch, w.p + block_at(slot, hv, HV, kC), kC, kC, kC);
    copy_rows_async(f.d_o, kNPitch, w.d_o + block_at(slot, hv, HV, V) + column0, V, kC, width);
    copy_rows_async(f.gamma, 0, w.gamma + (slot * HV + hv) * kC, 0, 1, kC);
  };
  auto load_second = [&](int64_t slot) {
    copy_rows_async(s.second.q, kColPitch, w.q + block_at(slot, h, p.H, K), K, kC,
                    static_cast<int>(K));
    copy_rows_async(s.second.w, kColPitch, w.w + block_at(slot, hv, HV, K), K, kC,
                    static_cast<int>(K));
  };
  if (chunks > 0) load_first(first + chunks - 1, s.first[(chunks - 1) % 2]);
  cp_async_commit();

  const int m0 = 16 * warp;
  const bool owner = m0 < kpad;
  StateRows dh{};
  const float* dht = p.dht.data ? reinterpret_cast<const float*>(p.dht.data) + n * p.dht.stride[0] +
                                      hv * p.dht.stride[1]
                                : nullptr;
  if (owner) {
    if (dht) {
      for_state_elements(m0, column0, K, V, [&](int nt, int e, int64_t x, int64_t column) {
        dh.d[nt][e] = dht[x * p.dht_k + column * p.dht_v];
      });
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) store_tile(s.dh, m0, 8 * nt, dh.d[nt]);
  }
  const int um0 = 16 * (warp % 4), un0 = 16 * (warp / 4);
  for (int64_t c = chunks - 1, slot = first + chunks - 1; c >= 0; --c, --slot) {
    if (owner) {
      float* checkpoint = w.dh + (slot * HV + hv) * K * V;
      for_state_elements(m0, column0, K, V, [&](int nt, int e, int64_t x, int64_t column) {
        checkpoint[x * V + column] = dh.d[nt][e];
      });
    }
    __syncthreads();  // chunk c + 1 is done with `second` and the other `first`
    load_second(slot);
    cp_async_commit();
    if (c > 0) load_first(slot - 1, s.first[(c - 1) % 2]);
    cp_async_commit();
    cp_async_wait<2>();  // this chunk's first group (committed one chunk earlier)
    __syncthreads();
    const ReverseFirst& f = s.first[c % 2];
    // dU = K~ dH + P^T dO
    float du[2][4] = {};
    for (int k0 = 0; k0 < kpad; k0 += 8) {
      uint32_t a[4];
      fragment_rows(a, f.k, kRowPitch, um0, k0);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        uint32_t b[2];
        fragment_b(b, s.dh, kNPitch, k0, un0 + 8 * j);
        mma_tf32(du[j], a[0], a[1], a[2], a[3], b[0], b[1]);
      }
    }
#pragma unroll
    for (int k0 = 0; k0 < kC; k0 += 8) {
      uint32_t a[4];
      fragment_columns(a, f.p, kSquarePitch, um0, k0);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        uint32_t b[2];
        fragment_b(b, f.d_o, kNPitch, k0, un0 + 8 * j);
        mma_tf32(du[j], a[0], a[1], a[2], a[3], b[0], b[1]);
      }
    }
    float* du_out = w.du + block_at(slot, hv, HV, V);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      store_tile(s.du, um0, un0 + 8 * j, du[j]);
      const int lane = threadIdx.x % 32;
      const int64_t column = column0 + un0 + 8 * j + 2 * (lane % 4), row = um0 + lane / 4;
      if (column < V) {
        *reinterpret_cast<float2*>(du_out + row * V + column) = make_float2(du[j][0], du[j][1]);
        *reinterpret_cast<float2*>(du_out + (row + 8) * V + column) =
            make_float2(du[j][2], du[j][3]);
      }
    }
    cp_async_wait<1>();  // this chunk's second group
    __syncthreads();     // dU complete, `second` arrived; every warp is done reading dH
    // dH = gamma_last dH + Q^T diag(s gamma) dO + W^T dU
    if (owner) {
      float query_scale[kC / 8][2];  // s gamma of rows k0 + t and k0 + t + 4
      const int t = threadIdx.x % 32 % 4;
#pragma unroll
      for (int k0 = 0; k0 < kC; k0 += 8) {
        query_scale[k0 / 8][0] = p.scale * f.gamma[k0 + t];
        query_scale[k0 / 8][1] = p.scale * f.gamma[k0 + t + 4];
      }
      float acc[4][4] = {};
#pragma unroll
      for (int k0 = 0; k0 < kC; k0 += 8) {
        uint32_t a[4], b[2];
        fragment_columns(a, s.second.q, kColPitch, m0, k0, query_scale[k0 / 8][0],
                         query_scale[k0 / 8][1]);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          fragment_b(b, f.d_o, kNPitch, k0, 8 * nt);
          mma_tf32(acc[nt], a[0], a[1], a[2], a[3], b[0], b[1]);
        }
        fragment_columns(a, s.second.w, kColPitch, m0, k0);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          fragment_b(b, s.du, kNPitch, k0, 8 * nt);
          mma_tf32(acc[nt], a[0], a[1], a[2], a[3], b[0], b[1]);
        }
      }
      const float decay = f.gamma[kC - 1];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) dh.d[nt][e] = decay * dh.d[nt][e] + acc[nt][e];
        store_tile(s.dh, m0, 8 * nt, dh.d[nt]);
      }
    }
  }
  cp_async_wait<0>();
  if (owner && p.dh0.data) {
    float* dh0 = reinterpret_cast<float*>(p.dh0.data) + n * p.dh0.stride[0] + hv * p.dh0.stride[1];
    for_state_elements(m0, column0, K, V, [&](int nt, int e, int64_t x, int64_t column) {
      dh0[x * p.dh0_k + column * p.dh0_v] = dh.d[nt][e];
    });
  }
}

// ---- 5., 7. batched products -----------------------------------------------------------

// A matrix operand of batch (slot, head): element (r, c) at
// data[slot * slot_step + (head / head_div) * head_step + r * row_step + c * col_step].
struct Operand {
  const float* data;
  int64_t slot_step, head_step;
  int head_div;
  int64_t row_step, col_step;
};

Operand transposed(Operand m) {
  const int64_t row_step = m.row_step;
  m.row_step = m.col_step, m.col_step = row_step;
  return m;
}

// out (+)= alpha a b over batches (slot, head < heads): a [C, depth], b
// [depth, n], out [C, n] with out's steps (its head_div is 1).
struct GemmParams {
  Operand a, b, out;
  int64_t n, depth;
  int heads;
  float alpha;
  int accumulate;
  const ChunkEntry* table;
};

constexpr int kTileN = 64, kTileDepth = 16;

// Grid (S * heads, ceil(n / 64)); a 64 x 64 tile of out per CTA, 4 x 4 per thread.
__global__ void __launch_bounds__(kThreads, 2) batched_gemm(GemmParams g) {
  __shared__ float a_tile[kTileDepth][kC + 4];
  __shared__ float b_tile[kTileDepth][kTileN + 4];
  const int64_t slot = blockIdx.x / g.heads, head = blockIdx.x % g.heads;
  if (g.table[slot].length == 0) return;
  const int64_t n0 = int64_t(blockIdx.y) * kTileN;
  const float* a = g.a.data + slot * g.a.slot_step + head / g.a.head_div * g.a.head_step;
  const float* b = g.b.data + slot * g.b.slot_step + head / g.b.head_div * g.b.head_step;
  const int tid = threadIdx.x, tile_row = tid / 16, tile_col = tid % 16;
  float acc[4][4] = {};
  for (int64_t d0 = 0; d0 < g.depth; d0 += kTileDepth) {
    for (int e = tid; e < kC * kTileDepth; e += kThreads) {
      const int m = e / kTileDepth, d = e % kTileDepth;
      a_tile[d][m] = d0 + d < g.depth ? a[m * g.a.row_step + (d0 + d) * g.a.col_step] : 0.0f;
      const int bd = e / kTileN, bn = e % kTileN;
      b_tile[bd][bn] = d0 + bd < g.depth && n0 + bn < g.n
                           ? b[(d0 + bd) * g.b.row_step + (n0 + bn) * g.b.col_step]
                           : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int d = 0; d < kTileDepth; ++d) {
      float a_values[4], b_values[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        a_values[r] = a_tile[d][tile_row * 4 + r];
        b_values[r] = b_tile[d][tile_col + 16 * r];
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] += a_values[r] * b_values[c];
      }
    }
    __syncthreads();
  }
  float* out = const_cast<float*>(g.out.data) + slot * g.out.slot_step + head * g.out.head_step;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t col = n0 + tile_col + 16 * c;
      if (col >= g.n) continue;
      float& target = out[(tile_row * 4 + r) * g.out.row_step + col * g.out.col_step];
      target = g.alpha * acc[r][c] + (g.accumulate ? target : 0.0f);
    }
  }
}

// The same products on tf32 tensor cores (16-bit inputs): a warp owns a 16 x 32
// block of the tile (rows 16 (warp % 4), columns 32 (warp / 4)) as four m16n8
// accumulators; operands pass through shared memory 32 deep, the next stage's
// global loads in flight (in registers) during the current stage's mma.
constexpr int kTcDepth = 32;
constexpr int kTcLoads = kC * kTcDepth / kThreads;  // per operand and thread

// One operand's stage x(d, m), d < 32 the depth, m < 64 a row of a or a
// column of b. Operands whose depth is contiguous in memory (kDepthMajor) are
// read with the lanes along d and kept m-major ([m][32 + 4]); the others with
// the lanes along m, kept d-major ([d][64 + 8]). Either way the staging
// writes (32 consecutive d, or 32 consecutive m) and the mma fragment reads
// (lanes over d % 4 and 8 consecutive m: bank 4 m + d, resp. 8 d + m) hit 32
// distinct banks.
template <bool kDepthMajor>
struct Stage {
  static constexpr int kD = kDepthMajor ? 1 : kC + 8;        // step of d in the tile
  static constexpr int kM = kDepthMajor ? kTcDepth + 4 : 1;  // step of m
  static constexpr int kFloats = kDepthMajor ? kC * kM : kTcDepth * kD;
  // A thread's elements: i at (d + i kDi, m + i kMi).
  static constexpr int kDi = kDepthMajor ? 0 : kTcDepth / kTcLoads;
  static constexpr int kMi = kDepthMajor ? kWarps : 0;

  const float* ptr;  // element 0 of the next stage in global memory
  int64_t step, stage_step;
  int d, m;

  // x(d, m) = src[m * m_step + d * d_step].
  __device__ Stage(const float* src, int64_t m_step, int64_t d_step) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    d = kDepthMajor ? lane : warp / 2;
    m = kDepthMajor ? warp : 32 * (warp % 2) + lane;
    ptr = src + m * m_step + d * d_step;
    step = kMi * m_step + kDi * d_step;
    stage_step = kTcDepth * d_step;
  }
  // values <- the stage at depth d0 (0 where m >= m_count or d0 + d >= depth).
  __device__ __forceinline__ void fetch(float (&values)[kTcLoads], int64_t m_count, int64_t d0,
                                        int64_t depth) {
#pragma unroll
    for (int i = 0; i < kTcLoads; ++i) {
      const bool valid = m + i * kMi < m_count && d0 + d + i * kDi < depth;
      values[i] = valid ? ptr[i * step] : 0.0f;
    }
    ptr += stage_step;
  }
  __device__ __forceinline__ void store(float* tile, const float (&values)[kTcLoads]) const {
#pragma unroll
    for (int i = 0; i < kTcLoads; ++i) tile[(d + i * kDi) * kD + (m + i * kMi) * kM] = values[i];
  }
};

// Grid as batched_gemm's, read with the column tiles fastest (both tiles of a
// batch run together, so a's block comes from L2 the second time).
// kADepthMajor: a.col_step == 1; kBDepthMajor: b.row_step == 1.
template <bool kADepthMajor, bool kBDepthMajor>
__global__ void __launch_bounds__(kThreads, 4) batched_gemm_tf32(GemmParams g) {
  using AStage = Stage<kADepthMajor>;
  using BStage = Stage<kBDepthMajor>;
  __shared__ float a_tile[AStage::kFloats];  // a(m, d0 + d)
  __shared__ float b_tile[BStage::kFloats];  // b(d0 + d, n0 + m)
  const int64_t tiles = gridDim.y, block = blockIdx.x + int64_t(gridDim.x) * blockIdx.y;
  const int64_t batch = block / tiles, slot = batch / g.heads, head = batch % g.heads;
  if (g.table[slot].length == 0) return;
  const int64_t n0 = block % tiles * kTileN;
  AStage a(g.a.data + slot * g.a.slot_step + head / g.a.head_div * g.a.head_step, g.a.row_step,
           g.a.col_step);
  BStage b(
      g.b.data + slot * g.b.slot_step + head / g.b.head_div * g.b.head_step + n0 * g.b.col_step,
      g.b.col_step, g.b.row_step);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, group = lane / 4, quad = lane % 4;
  const int m0 = 16 * (warp % 4), c0 = 32 * (warp / 4);
  // This thread's fragment elements: a(m0 + group, quad), b(quad, c0 + group).
  const float* a_frag = a_tile + quad * AStage::kD + (m0 + group) * AStage::kM;
  const float* b_frag = b_tile + quad * BStage::kD + (c0 + group) * BStage::kM;
  float acc[4][4] = {};
  float a_next[kTcLoads], b_next[kTcLoads];
  a.fetch(a_next, kC, 0, g.depth);
  b.fetch(b_next, g.n - n0, 0, g.depth);
  for (int64_t d0 = 0; d0 < g.depth; d0 += kTcDepth) {
    a.store(a_tile, a_next);
    b.store(b_tile, b_next);
    __syncthreads();
    if (d0 + kTcDepth < g.depth) {
      a.fetch(a_next, kC, d0 + kTcDepth, g.depth);
      b.fetch(b_next, g.n - n0, d0 + kTcDepth, g.depth);
    }
#pragma unroll
    for (int k0 = 0; k0 < kTcDepth; k0 += 8) {
      const float* ak = a_frag + k0 * AStage::kD;
      const uint32_t a0 = to_tf32(ak[0]), a1 = to_tf32(ak[8 * AStage::kM]);
      const uint32_t a2 = to_tf32(ak[4 * AStage::kD]);
      const uint32_t a3 = to_tf32(ak[4 * AStage::kD + 8 * AStage::kM]);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const float* bk = b_frag + k0 * BStage::kD + 8 * nt * BStage::kM;
        mma_tf32(acc[nt], a0, a1, a2, a3, to_tf32(bk[0]), to_tf32(bk[4 * BStage::kD]));
      }
    }
    __syncthreads();
  }
  float* out = const_cast<float*>(g.out.data) + slot * g.out.slot_step + head * g.out.head_step;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t row = m0 + group + 8 * (e / 2), col = n0 + c0 + 8 * nt + 2 * quad + e % 2;
      if (col >= g.n) continue;
      float& target = out[row * g.out.row_step + col * g.out.col_step];
      target = g.alpha * acc[nt][e] + (g.accumulate ? target : 0.0f);
    }
  }
}

// ---- 6. per-chunk gradients ------------------------------------------------------------

// Grid (S, HV): dv, dbeta, dg; dq (dO S^T) scaled to diag(s gamma) dO S^T,
// dk = diag(e^(G_last - G)) dK~ - diag(beta gamma) X; dP o sD and B + B^T.
__global__ void __launch_bounds__(kThreads) chunk_gradients(ChunkBwdParams p, Workspace w) {
  __shared__ float log_decay[kC], beta[kC], gamma[kC], to_end[kC];
  __shared__ float row_terms[kC], column_terms[kC], d_beta[kC], end_terms[kC];
  __shared__ float partial[kThreads];
  const int64_t slot = blockIdx.x, hv = blockIdx.y, h = hv / (p.HV / p.H), K = p.K, V = p.V;
  const ChunkEntry chunk = w.table[slot];
  if (chunk.length == 0) return;
  const int L = static_cast<int>(chunk.length);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t row = (slot * p.HV + hv) * kC;
  if (tid < kC) {
    log_decay[tid] = w.log_decay[row + tid], beta[tid] = w.beta[row + tid];
    gamma[tid] = w.gamma[row + tid], to_end[tid] = w.to_end[row + tid];
  }
  __syncthreads();
  const int64_t key_block = block_at(slot, hv, p.HV, K), value_block = block_at(slot, hv, p.HV, V);
  const int64_t square = block_at(slot, hv, p.HV, kC), key_square = block_at(slot, h, p.H, kC);
  const float* q = w.q + block_at(slot, h, p.H, K);
  const float* k = w.k + block_at(slot, h, p.H, K);
  // Rows: the per-token terms, and dG's row sums of the P and A terms.
  for (int i = warp; i < kC; i += kWarps) {
    if (i >= L) {
      if (lane == 0) row_terms[i] = 0.0f, d_beta[i] = 0.0f, end_terms[i] = 0.0f;
      continue;
    }
    const float query_scale = p.scale * gamma[i], key_weight = -beta[i] * gamma[i];
    float qdq = 0.0f, kdk = 0.0f, kx = 0.0f, vy = 0.0f;
    for (int64_t x = lane; x < K; x += 32) {
      const int64_t e = key_block + i * K + x;
      const float dq = query_scale * w.dq[e];
      w.dq[e] = dq;
      qdq += q[i * K + x] * dq;
      kdk += k[i * K + x] * w.dk_decayed[e];
      kx += k[i * K + x] * w.x[e];
      w.dk[e] = to_end[i] * w.dk_decayed[e] + key_weight * w.x[e];
    }
    for (int64_t x = lane; x < V; x += 32) {
      const float y = w.y[value_block + i * V + x];
      vy += w.v[value_block + i * V + x] * y;
      st(p.dv.data, p.dv.dtype, at(p.dv, chunk.row, chunk.begin + i, hv, x), beta[i] * y);
    }
    float score_terms = 0.0f, a_beta = 0.0f;
    for (int j = lane; j <= i; j += 32) {
      const int64_t e = square + i * kC + j;
      score_terms += w.dp[e] * w.p[e];
      if (j < i) {
        score_terms += w.da[e] * w.a[e];
        a_beta += w.da[e] * expf(log_decay[i] - log_decay[j]) * w.kk[key_square + i * kC + j];
      }
    }
    qdq = warp_sum(qdq), kdk = warp_sum(kdk), kx = warp_sum(kx), vy = warp_sum(vy);
    score_terms = warp_sum(score_terms), a_beta = warp_sum(a_beta);
    if (lane == 0) {
      end_terms[i] = to_end[i] * kdk;
      row_terms[i] = qdq - end_terms[i] + score_terms + key_weight * kx;
      d_beta[i] = a_beta + vy - gamma[i] * kx;
    }
  }
  // Columns: what the P and A terms take from dG_j.
  if (tid < kC) {
    const int j = tid;
    float sum = 0.0f;
    for (int i = j; i < L; ++i) {
      const int64_t e = square + i * kC + j;
      sum += w.dp[e] * w.p[e];
      if (i > j) sum += w.da[e] * w.a[e];
    }
    column_terms[j] = sum;
  }
  // dP o sD (j <= i) and B + B^T, B = diag(beta) (dA o D) (j < i), zero past L.
  for (int e = tid; e < kC * kC; e += kThreads) {
    const int i = e / kC, j = e % kC;
    const bool valid = i < L && j < L;
    const int hi = i > j ? i : j, lo = i > j ? j : i;
    const float decay = expf(log_decay[hi] - log_decay[lo]);
    w.dp_scaled[square + e] = valid && j <= i ? p.scale * decay * w.dp[square + e] : 0.0f;
    w.b_sym[square + e] = valid && i != j ? beta[hi] * decay * w.da[square + hi * kC + lo] : 0.0f;
  }
  // gamma_last sum(dH o S), summed in a fixed order.
  const float* dh = w.dh + (slot * p.HV + hv) * K * V;
  const float* state = w.state + (slot * p.HV + hv) * K * V;
  float sum = 0.0f;
  for (int64_t e = tid; e < K * V; e += kThreads) sum += dh[e] * state[e];
  partial[tid] = sum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (tid < half) partial[tid] += partial[tid + half];
    __syncthreads();
  }
  if (tid == 0) {
    float to_end_sum = 0.0f;
    for (int i = 0; i < L; ++i) to_end_sum += end_terms[i];
    // dg_t = sum of dG_i over i >= t
    float running = to_end_sum + gamma[L - 1] * partial[0];
    for (int i = L - 1; i >= 0; --i) {
      running += row_terms[i] - column_terms[i];
      const int64_t token = chunk.begin + i;
      st(p.dg.data, p.dg.dtype, at(p.dg, chunk.row, token, hv), running);
      st(p.dbeta.data, p.dbeta.dtype, at(p.dbeta, chunk.row, token, hv), d_beta[i]);
    }
  }
}

// ---- 8. key gradients ------------------------------------------------------------------

constexpr int kKeyPerLane = kMaxHeadDim / 32;

// Grid (S, H); a warp per row: dq, dk summed over the value heads in order,
// through the l2norm's backward r (d - x^ (x^.d)).
__global__ void __launch_bounds__(kThreads) key_gradients(ChunkBwdParams p, Workspace w) {
  const int64_t slot = blockIdx.x, h = blockIdx.y, K = p.K, G = p.HV / p.H;
  const ChunkEntry chunk = w.table[slot];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* q = w.q + block_at(slot, h, p.H, K);
  const float* k = w.k + block_at(slot, h, p.H, K);
  for (int i = warp; i < chunk.length; i += kWarps) {
    float dq[kKeyPerLane] = {}, dk[kKeyPerLane] = {};
    for (int64_t hv = h * G; hv < (h + 1) * G; ++hv) {
      const int64_t base = block_at(slot, hv, p.HV, K) + i * K;
#pragma unroll
      for (int m = 0; m < kKeyPerLane; ++m) {
        const int64_t x = lane + 32 * m;
        if (x < K) dq[m] += w.dq[base + x], dk[m] += w.dk[base + x];
      }
    }
    if (p.l2norm) {
      float q_projection = 0.0f, k_projection = 0.0f;
#pragma unroll
      for (int m = 0; m < kKeyPerLane; ++m) {
        const int64_t x = lane + 32 * m;
        if (x < K) q_projection += q[i * K + x] * dq[m], k_projection += k[i * K + x] * dk[m];
      }
      q_projection = warp_sum(q_projection), k_projection = warp_sum(k_projection);
      const float q_factor = w.q_norm[(slot * p.H + h) * kC + i];
      const float k_factor = w.k_norm[(slot * p.H + h) * kC + i];
#pragma unroll
      for (int m = 0; m < kKeyPerLane; ++m) {
        const int64_t x = lane + 32 * m;
        if (x >= K) continue;
        dq[m] = q_factor * (dq[m] - q[i * K + x] * q_projection);
        dk[m] = k_factor * (dk[m] - k[i * K + x] * k_projection);
      }
    }
    const int64_t token = chunk.begin + i;
#pragma unroll
    for (int m = 0; m < kKeyPerLane; ++m) {
      const int64_t x = lane + 32 * m;
      if (x >= K) continue;
      st(p.dq.data, p.dq.dtype, at(p.dq, chunk.row, token, h, x), dq[m]);
      st(p.dk.data, p.dk.dtype, at(p.dk, chunk.row, token, h, x), dk[m]);
    }
  }
}

// ---- table -----------------------------------------------------------------------------

__global__ void chunk_table(ChunkBwdParams p, ChunkEntry* table) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= p.N) return;
  const Span span = sequence_span(p.cu, n, p.T);
  int64_t slot = first_slot(p, n, span);
  for (int64_t t = span.begin; t < span.end; t += kC, ++slot)
    table[slot] = {span.row, t, span.end - t < kC ? span.end - t : kC};
}

}  // namespace

size_t chunk_bwd_scratch_bytes(const ChunkBwdParams& p) {
  Workspace w{};
  return carve(p, nullptr, w);
}

cudaError_t launch_gdn_chunk_bwd(const ChunkBwdParams& p, void* scratch, cudaStream_t stream) {
  Workspace w{};
  carve(p, static_cast<char*>(scratch), w);
  const int64_t S = slot_count(p), H = p.H, HV = p.HV, K = p.K, V = p.V, C = kC;
  const int G = static_cast<int>(HV / H);
  if (cudaError_t status =
          cudaMemsetAsync(w.table, 0, static_cast<size_t>(S) * sizeof(ChunkEntry), stream))
    return status;
  chunk_table<<<grid_for(p.N, 128), 128, 0, stream>>>(p, w.table);

  // Operands: per (slot, key head) [C, width] (read by value heads with
  // head_div G); per (slot, value head) [C, width]; a state [K, V] per (slot,
  // value head).
  auto key_rows = [&](const float* data, int64_t width, int head_div) {
    return Operand{data, H * C * width, C * width, head_div, width, 1};
  };
  auto value_rows = [&](const float* data, int64_t width) {
    return Operand{data, HV * C * width, C * width, 1, width, 1};
  };
  auto states = [&](const float* data) { return Operand{data, HV * K * V, K * V, 1, V, 1}; };
  // 16-bit inputs take the tf32 tensor-core products (their tolerance is
  // 1e-2); f32 inputs the fp32 CUDA-core ones (1e-4, beyond tf32).
  const bool tensor_cores = p.q.dtype != kF32 && p.k.dtype != kF32 && p.v.dtype != kF32;
  cudaError_t status = cudaSuccess;
  auto gemm = [&](Operand a, Operand b, Operand out, int64_t n, int64_t depth, int64_t heads,
                  float alpha = 1.0f, bool accumulate = false) {
    if (S == 0 || n == 0 || status != cudaSuccess) return;
    const dim3 grid(static_cast<unsigned>(S * heads),
                    static_cast<unsigned>((n + kTileN - 1) / kTileN));
    const GemmParams params{
        a, b, out, n, depth, static_cast<int>(heads), alpha, accumulate ? 1 : 0, w.table};
    if (tensor_cores) {
      const bool a_depth = a.col_step == 1, b_depth = b.row_step == 1;
      auto kernel =
          a_depth ? (b_depth ? batched_gemm_tf32<true, true> : batched_gemm_tf32<true, false>)
                  : (b_depth ? batched_gemm_tf32<false, true> : batched_gemm_tf32<false, false>);
      kernel<<<grid, kThreads, 0, stream>>>(params);
    } else {
      batched_gemm<<<grid, kThreads, 0, stream>>>(params);
    }
    status = cudaGetLastError();
  };
  const dim3 per_key(static_cast<unsigned>(S), static_cast<unsigned>(H));
  const dim3 per_value(static_cast<unsigned>(S), static_cast<unsigned>(HV));

  if (S > 0) {
    gather_keys<<<per_key, kThreads, 0, stream>>>(p, w);
    gemm(key_rows(w.q, K, 1), transposed(key_rows(w.k, K, 1)), key_rows(w.qk, C, 1), C, K, H);
    gemm(key_rows(w.k, K, 1), transposed(key_rows(w.k, K, 1)), key_rows(w.kk, C, 1), C, K, H);
    gather_values<<<per_value, kThreads, 0, stream>>>(p, w);
  }
  gemm(value_rows(w.t, C), value_rows(w.rw, K), value_rows(w.w, K), K, C, HV);
  gemm(value_rows(w.t, C), value_rows(w.rv, V), value_rows(w.u, V), V, C, HV);
  if (status != cudaSuccess) return status;

  // The sweeps run for empty sequences too: their dh0 is d_final_state.
  if (V > 0) {
    const dim3 sweep_grid(static_cast<unsigned>((V + kColumns - 1) / kColumns),
                          static_cast<unsigned>(HV), static_cast<unsigned>(p.N));
    int device = 0, shared_limit = 0;
    if ((status = cudaGetDevice(&device)) != cudaSuccess ||
        (status = cudaDeviceGetAttribute(&shared_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                         device)) != cudaSuccess)
      return status;
    // The tensor-core sweeps need 189 KB and 221 KB of shared memory (Hopper
    // has 227 KB per block; sm_80 163 KB, where the fp32 sweeps run instead).
    const bool tc_sweeps = sweeps_on_tensor_cores(p, tensor_cores) &&
                           sizeof(ReverseShared) <= static_cast<size_t>(shared_limit);
    using Sweep = void (*)(ChunkBwdParams, Workspace);
    const std::pair<Sweep, size_t> sweeps[] = {
        tc_sweeps ? std::pair<Sweep, size_t>{forward_sweep_tc, sizeof(ForwardShared)}
                  : std::pair<Sweep, size_t>{forward_sweep, sweep_smem_bytes(p)},
        tc_sweeps ? std::pair<Sweep, size_t>{reverse_sweep_tc, sizeof(ReverseShared)}
                  : std::pair<Sweep, size_t>{reverse_sweep, sweep_smem_bytes(p)}};
    for (const auto& [kernel, smem] : sweeps) {
      status = allow_smem(kernel, smem);
      if (status != cudaSuccess) return status;
      kernel<<<sweep_grid, kThreads, smem, stream>>>(p, w);
    }
  }
  if (S == 0) return cudaGetLastError();

  const Operand t = value_rows(w.t, C);
  gemm(value_rows(w.du, V), transposed(states(w.state)), value_rows(w.dw, K), K, V, HV);
  gemm(value_rows(w.d_o, V), transposed(states(w.state)), value_rows(w.dq, K), K, V, HV);
  gemm(value_rows(w.u, V), transposed(states(w.dh)), value_rows(w.dk_decayed, K), K, V, HV);
  gemm(value_rows(w.d_o, V), transposed(value_rows(w.u, V)), value_rows(w.dp, C), C, V, HV);
  gemm(transposed(t), value_rows(w.dw, K), value_rows(w.x, K), K, C, HV);
  gemm(transposed(t), value_rows(w.du, V), value_rows(w.y, V), V, C, HV);
  gemm(value_rows(w.x, K), transposed(value_rows(w.rw, K)), value_rows(w.z, C), C, K, HV);
  gemm(value_rows(w.y, V), transposed(value_rows(w.rv, V)), value_rows(w.z, C), C, V, HV, 1.0f,
       true);
  gemm(value_rows(w.z, C), transposed(t), value_rows(w.da, C), C, C, HV, -1.0f);
  if (status != cudaSuccess) return status;
  chunk_gradients<<<per_value, kThreads, 0, stream>>>(p, w);
  gemm(value_rows(w.dp_scaled, C), key_rows(w.k, K, G), value_rows(w.dq, K), K, C, HV, 1.0f, true);
  gemm(transposed(value_rows(w.dp_scaled, C)), key_rows(w.q, K, G), value_rows(w.dk, K), K, C, HV,
       1.0f, true);
  gemm(value_rows(w.b_sym, C), key_rows(w.k, K, G), value_rows(w.dk, K), K, C, HV, 1.0f, true);
  if (status != cudaSuccess) return status;
  key_gradients<<<per_key, kThreads, 0, stream>>>(p, w);
  return cudaGetLastError();
}

}  // namespace hops::cuda
