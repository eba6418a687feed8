// gdn_chunk.cl: the chunked (WY / UT-transform) Gated DeltaNet, forward
// (gdn_chunk_fwd) and backward (gdn_chunk_bwd), as the CPU backend computes
// it (backends/cpu/gdn_chunk.cpp, gdn_chunk_bwd.cpp), split into kernels so
// that everything but the state sweeps runs in parallel over chunks.
//
// A sequence is cut into chunks of C tokens (C from the device's limits, see
// gdn_chunk.cpp). With G_i = g_0 + .. + g_i inside a chunk, gamma_i = e^G_i,
// D_ij = e^(G_i - G_j), k^, q^ the (l2-normalised) keys and queries and S the
// state at the chunk's start:
//   A_ij = beta_i D_ij k^_i.k^_j (j < i),  T = (I + A)^-1
//   W = -T diag(beta gamma) K^,  U0 = T diag(beta) V,  U = U0 + W S
//   P_ij = scale D_ij q^_i.k^_j (j <= i)
//   O = diag(scale gamma) Q^ S + P U
//   S_next = gamma_last S + K~^T U,  K~_j = e^(G_last - G_j) k^_j
// Kernels: gdn_chunk_pack (q^, k^ of every chunk as f32 rows), gdn_chunk_wy
// (per chunk and value head: G, A, T by substitution in local memory, W, U0,
// P), gdn_chunk_states (per sequence, value head and tile of value columns:
// the sweep over the chunks, keeping each chunk's starting state and U),
// gdn_chunk_output (per chunk: O). The backward adds gdn_chunk_dstates (the
// reverse sweep of dH, the gradient of the state at a chunk's end, and dU)
// and gdn_chunk_grads (per chunk and value head: every other gradient, as
// shares that gdn_bwd_reduce in gdn_bwd.cl sums over the value heads of a key
// head and takes through the l2norm).
//
// Chunks get slots in the scratch buffers: chunk c of sequence n is slot
// n + floor((row T + begin) / C) + c, disjoint between sequences, fewer than
// N + ceil(B T / C) in all. Kernels parallel over chunks take a work-group per
// slot and find its sequence by bisection; device-resident cu_seqlens are
// clamped as everywhere (common.cl), so bad ones give wrong results, never an
// access outside the buffers.
//
// Work-items own columns (of K or V) and walk rows in uniform loops: loads of
// a row are contiguous across work-items, the other operand is the same for
// every work-item (a broadcast), which is what both a GPU and PoCL's
// vectoriser (work-items as SIMD lanes) want.

#define SLICE 16  // K (or V) columns staged per step in gdn_chunk_wy and gdn_chunk_grads

typedef struct {
  long row, t0, n;
  int length;
} ChunkPos;

inline long first_slot(Span s, long T, int C, long n) { return n + (s.row * T + s.begin) / C; }

// The chunk held by `slot`; 0 when no chunk has it.
inline int chunk_at(global const uchar* cu, long cu_off, long cu_stride, int cu_kind, long N,
                    long T, int C, long slot, ChunkPos* pos) {
  long low = 0, high = N - 1;
  while (low < high) {
    const long middle = (low + high + 1) / 2;
    const Span s = sequence_span(cu, cu_off, cu_stride, cu_kind, middle, T);
    if (first_slot(s, T, C, middle) <= slot) {
      low = middle;
    } else {
      high = middle - 1;
    }
  }
  const Span s = sequence_span(cu, cu_off, cu_stride, cu_kind, low, T);
  const long c = slot - first_slot(s, T, C, low);
  const long t0 = s.begin + c * C;
  if (c < 0 || t0 >= s.end) return 0;
  pos->row = s.row;
  pos->t0 = t0;
  pos->n = low;
  pos->length = (int)min((long)C, s.end - t0);
  return 1;
}

// Work-group (slot, key head): q^ and k^ of the chunk's tokens into Qs, Ks
// ([C][K] per slot and key head, zero rows past the chunk's end).
kernel void gdn_chunk_pack(global const x_t* q, long q_off, long4 q_st, global const x_t* k,
                           long k_off, long4 k_st, global const float* info, global const uchar* cu,
                           long cu_off, long cu_stride, int cu_kind, long N, long T, int H, int HV,
                           int K, int C, global float* Qs, global float* Ks) {
  const long slot = get_group_id(0);
  const int h = get_group_id(1), lid = get_local_id(0), size = get_local_size(0);
  ChunkPos pos;
  if (!chunk_at(cu, cu_off, cu_stride, cu_kind, N, T, C, slot, &pos)) return;
  const long base = (slot * H + h) * C * K;
  for (int i = 0; i < C; ++i) {
    const long t = pos.t0 + i;
    global const float* token = info + ((pos.row * T + t) * HV + h * (HV / H)) * TOKEN_INFO;
    const long qo = q_off + pos.row * q_st.x + t * q_st.y + h * q_st.z;
    const long ko = k_off + pos.row * k_st.x + t * k_st.y + h * k_st.z;
    for (int x0 = 0; x0 < K; x0 += size) {
      const int x = x0 + lid;
      if (x < K) {
        const bool in = i < pos.length;
        Qs[base + i * K + x] = in ? token[2] * LOAD_X(q, qo + x * q_st.w) : 0.0f;
        Ks[base + i * K + x] = in ? token[3] * LOAD_X(k, ko + x * k_st.w) : 0.0f;
      }
    }
  }
}

// Work-group (slot, value head) of C work-items. Writes G (Gs, [C]), W (Ws,
// [C][K]), U0 (Us, [C][V]), P (Ps, [C][C], zero above the diagonal) and for
// the backward T (Ts) and D_ij k^_i.k^_j (DKs, j < i). `shared`: G, beta,
// beta gamma (C each), A and T ([C][C + 1] each), two [SLICE][C] slices.
kernel void gdn_chunk_wy(global const x_t* v, long v_off, long4 v_st, global const float* info,
                         global const float* Qs, global const float* Ks, global const uchar* cu,
                         long cu_off, long cu_stride, int cu_kind, long N, long T, int H, int HV,
                         int K, int V, int C, float scale, global float* Gs, global float* Ws,
                         global float* Us, global float* Ps, global float* Ts, global float* DKs,
                         local float* shared) {
  const long slot = get_group_id(0);
  const int hv = get_group_id(1), j = get_local_id(0);  // C work-items: column j
  ChunkPos pos;
  if (!chunk_at(cu, cu_off, cu_stride, cu_kind, N, T, C, slot, &pos)) return;
  const int L = pos.length, h = hv / (HV / H), p = C + 1;
  local float* G = shared;
  local float* beta = G + C;
  local float* bg = beta + C;
  local float* a = bg + C;
  local float* t = a + C * p;
  local float* kT = t + C * p;
  local float* qT = kT + SLICE * C;
  const long sh = slot * HV + hv;
  global const float* Kc = Ks + (slot * H + h) * C * K;
  global const float* Qc = Qs + (slot * H + h) * C * K;
  global const float* token = info + ((pos.row * T + pos.t0) * HV + hv) * TOKEN_INFO;
  if (j < L) {
    float sum = 0.0f;
    for (int m = 0; m < L; ++m) sum += m <= j ? token[m * HV * TOKEN_INFO + 5] : 0.0f;
    G[j] = sum;
    beta[j] = token[j * HV * TOKEN_INFO + 1];
    bg[j] = beta[j] * exp(sum);
    Gs[sh * C + j] = sum;
  }
  // k^_i.k^_j into a, q^_i.k^_j into t (column j each), K in slices.
  for (int i = 0; i < C; ++i) a[i * p + j] = t[i * p + j] = 0.0f;
  for (int x0 = 0; x0 < K; x0 += SLICE) {
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int xx = 0; xx < SLICE; ++xx) {
      const bool in = x0 + xx < K;
      kT[xx * C + j] = in ? Kc[j * K + x0 + xx] : 0.0f;
      qT[xx * C + j] = in ? Qc[j * K + x0 + xx] : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i = 0; i < L; ++i) {
      float kk = 0.0f, qk = 0.0f;
      for (int xx = 0; xx < SLICE; ++xx) {
        const float kj = kT[xx * C + j];
        kk += kT[xx * C + i] * kj;
        qk += qT[xx * C + i] * kj;
      }
      a[i * p + j] += kk;
      t[i * p + j] += qk;
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  for (int i = 0; i < L; ++i) {
    const float decay = j <= i ? exp(G[i] - G[j]) : 0.0f;
    const float kk = a[i * p + j];
    Ps[(sh * C + i) * C + j] = scale * decay * t[i * p + j];
    if (DKs) DKs[(sh * C + i) * C + j] = j < i ? decay * kk : 0.0f;
    a[i * p + j] = j < i ? beta[i] * decay * kk : 0.0f;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  // T = (I + A)^-1 by forward substitution, a column per work-item.
  for (int i = 0; i < L; ++i) {
    float x = i == j ? 1.0f : 0.0f;
    for (int m = 0; m < i; ++m) x -= a[i * p + m] * t[m * p + j];
    t[i * p + j] = x;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  if (Ts) {
    for (int i = 0; i < L; ++i) Ts[(sh * C + i) * C + j] = t[i * p + j];
  }
  // W = -T diag(beta gamma) K^ and U0 = T diag(beta) V, a column each: every
  // k or v element is loaded once and spread over the rows below it, which
  // accumulate in a's column of the work-item.
  // (Loops over columns are uniform, with the columns past K or V idle: PoCL
  // miscompiled this phase with per-work-item loop bounds.)
  for (int x0 = 0; x0 < K; x0 += C) {
    const int x = x0 + j;
    const bool in = x < K;
    for (int i = 0; i < L; ++i) a[i * p + j] = 0.0f;
    for (int m = 0; m < L; ++m) {
      const float km = in ? bg[m] * Kc[m * K + x] : 0.0f;
      for (int i = m; i < L; ++i) a[i * p + j] -= t[i * p + m] * km;
    }
    if (in) {
      for (int i = 0; i < L; ++i) Ws[(sh * C + i) * K + x] = a[i * p + j];
    }
  }
  const long vo = v_off + pos.row * v_st.x + pos.t0 * v_st.y + hv * v_st.z;
  for (int c0 = 0; c0 < V; c0 += C) {
    const int c = c0 + j;
    const bool in = c < V;
    for (int i = 0; i < L; ++i) a[i * p + j] = 0.0f;
    for (int m = 0; m < L; ++m) {
      const float vm = in ? beta[m] * LOAD_X(v, vo + m * v_st.y + c * v_st.w) : 0.0f;
      for (int i = m; i < L; ++i) a[i * p + j] += t[i * p + m] * vm;
    }
    if (in) {
      for (int i = 0; i < L; ++i) Us[(sh * C + i) * V + c] = a[i * p + j];
    }
  }
}

// Work-group (tile of `tile` value columns, value head, sequence), tile * R
// work-items, 2-D: column c (dim 0, what PoCL vectorises), row phase r. Walks the
// sequence's chunks with the K x tile slice of S in local memory: stores S
// (the state at each chunk's start, [K][V], or [V][K] when `transposed`) into
// Ss, turns U0 into U in place, and writes the final state. `shared`: S
// ([K][tile]), U ([C][tile]), e^(G_last - G) (C).
kernel void gdn_chunk_states(global const float* Ks, global const uchar* cu, long cu_off,
                             long cu_stride, int cu_kind, long T, int H, int HV, int K, int V,
                             int C, int tile, global const float* init, long init_off,
                             long4 init_st, global float* fin, long fin_off, long4 fin_st,
                             global const float* Gs, global const float* Ws, global float* Us,
                             global float* Ss, int transposed, local float* shared) {
  const int c = get_local_id(0), r = get_local_id(1), lid = r * tile + c;
  const int R = get_local_size(1), hv = get_group_id(1), h = hv / (HV / H);
  const long n = get_group_id(2);
  const int col = get_group_id(0) * tile + c;
  const bool owner = col < V;
  const Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  const long first = first_slot(span, T, C, n);
  const long chunks = (span.end - span.begin + C - 1) / C;
  const long KV = (long)K * V;
  local float* S = shared;
  local float* U = S + K * tile;
  local float* to_end = U + C * tile;
  for (int x0 = 0; x0 < K; x0 += R) {
    const int x = x0 + r;
    if (x < K) {
      S[x * tile + c] =
          owner && init
              ? init[init_off + n * init_st.x + hv * init_st.y + x * init_st.z + col * init_st.w]
              : 0.0f;
    }
  }
  for (long ch = 0; ch < chunks; ++ch) {
    const long slot = first + ch, sh = slot * HV + hv;
    const int L = (int)min((long)C, span.end - span.begin - ch * C);
    global const float* Kc = Ks + (slot * H + h) * C * K;
    global const float* Gc = Gs + sh * C;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (owner) {
      for (int x0 = 0; x0 < K; x0 += R) {
        const int x = x0 + r;
        if (x < K) {
          Ss[sh * KV + (transposed ? (long)col * K + x : (long)x * V + col)] = S[x * tile + c];
        }
      }
    }
    for (int i0 = 0; i0 < L; i0 += tile * R) {
      const int i = i0 + lid;
      if (i < L) to_end[i] = exp(Gc[L - 1] - Gc[i]);
    }
    // U = U0 + W S
    for (int i0 = 0; i0 < L; i0 += R) {
      const int i = i0 + r;
      if (i < L) {
        global const float* w = Ws + (sh * C + i) * K;
        global float* u_row = Us + (sh * C + i) * V;
        float u = owner ? u_row[col] : 0.0f;
        for (int x = 0; x < K; ++x) u += w[x] * S[x * tile + c];
        U[i * tile + c] = u;
        if (owner) u_row[col] = u;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    // S = gamma_last S + K~^T U
    const float state_decay = exp(Gc[L - 1]);
    for (int x0 = 0; x0 < K; x0 += R) {
      const int x = x0 + r;
      if (x < K) {
        float s = state_decay * S[x * tile + c];
        for (int i = 0; i < L; ++i) s += to_end[i] * Kc[i * K + x] * U[i * tile + c];
        S[x * tile + c] = s;
      }
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  if (fin && owner) {
    for (int x0 = 0; x0 < K; x0 += R) {
      const int x = x0 + r;
      if (x < K) {
        fin[fin_off + n * fin_st.x + hv * fin_st.y + x * fin_st.z + col * fin_st.w] =
            S[x * tile + c];
      }
    }
  }
}

// Work-group (tile of value columns, slot, value head), tile * R work-items:
// o_i = scale gamma_i q^_i S + sum_{j <= i} P_ij U_j for the tile's columns.
kernel void gdn_chunk_output(global x_t* o, long o_off, long4 o_st, global const float* Qs,
                             global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                             long N, long T, int H, int HV, int K, int V, int C, int tile,
                             float scale, global const float* Gs, global const float* Us,
                             global const float* Ps, global const float* Ss) {
  const int c = get_local_id(0), r = get_local_id(1), lid = r * tile + c;
  const int R = get_local_size(1), hv = get_group_id(2), h = hv / (HV / H);
  const long slot = get_group_id(1), sh = slot * HV + hv;
  const int col = get_group_id(0) * tile + c;
  ChunkPos pos;
  if (!chunk_at(cu, cu_off, cu_stride, cu_kind, N, T, C, slot, &pos)) return;
  const bool owner = col < V;
  global const float* Qc = Qs + (slot * H + h) * C * K;
  global const float* S = Ss + sh * K * V + (owner ? col : 0);
  global const float* U = Us + sh * C * V + (owner ? col : 0);
  for (int i0 = 0; i0 < pos.length; i0 += R) {
    const int i = i0 + r;
    if (i < pos.length && owner) {
      float qs = 0.0f, pu = 0.0f;
      for (int x = 0; x < K; ++x) qs += Qc[i * K + x] * S[(long)x * V];
      global const float* p_row = Ps + (sh * C + i) * C;
      for (int m = 0; m < pos.length; ++m) pu += m <= i ? p_row[m] * U[(long)m * V] : 0.0f;
      const long t = pos.t0 + i;
      STORE_X(o, o_off + pos.row * o_st.x + t * o_st.y + hv * o_st.z + col * o_st.w,
              scale * exp(Gs[sh * C + i]) * qs + pu);
    }
  }
}

// The reverse sweep, laid out as gdn_chunk_states: from dH = d_final_state
// (or 0), chunk by chunk from the last, stores dH (the gradient of the state
// at the chunk's end, [V][K]) into dHs, and
//   dU = K~ dH + P^T dO   (into dUs)
//   dH <- gamma_last dH + Q^T diag(scale gamma) dO + W^T dU
// and writes dh0. `shared`: dH ([K][tile]), dU and dO ([C][tile] each),
// e^(G_last - G) and scale gamma (C each).
kernel void gdn_chunk_dstates(global const x_t* d_o, long do_off, long4 do_st,
                              global const float* Qs, global const float* Ks,
                              global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                              long T, int H, int HV, int K, int V, int C, int tile, float scale,
                              global const float* dfin, long dfin_off, long4 dfin_st,
                              global float* dh0, long dh0_off, long4 dh0_st, global const float* Gs,
                              global const float* Ws, global const float* Ps, global float* dUs,
                              global float* dHs, local float* shared) {
  const int c = get_local_id(0), r = get_local_id(1), lid = r * tile + c;
  const int R = get_local_size(1), hv = get_group_id(1), h = hv / (HV / H);
  const long n = get_group_id(2);
  const int col = get_group_id(0) * tile + c;
  const bool owner = col < V;
  const Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  const long first = first_slot(span, T, C, n);
  const long chunks = (span.end - span.begin + C - 1) / C;
  const long KV = (long)K * V;
  local float* dH = shared;
  local float* dU = dH + K * tile;
  local float* dO = dU + C * tile;
  local float* to_end = dO + C * tile;
  local float* q_weight = to_end + C;
  for (int x0 = 0; x0 < K; x0 += R) {
    const int x = x0 + r;
    if (x < K) {
      dH[x * tile + c] =
          owner && dfin
              ? dfin[dfin_off + n * dfin_st.x + hv * dfin_st.y + x * dfin_st.z + col * dfin_st.w]
              : 0.0f;
    }
  }
  for (long ch = chunks - 1; ch >= 0; --ch) {
    const long slot = first + ch, sh = slot * HV + hv, t0 = span.begin + ch * C;
    const int L = (int)min((long)C, span.end - t0);
    global const float* Kc = Ks + (slot * H + h) * C * K;
    global const float* Qc = Qs + (slot * H + h) * C * K;
    global const float* Gc = Gs + sh * C;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (owner) {
      for (int x0 = 0; x0 < K; x0 += R) {
        const int x = x0 + r;
        if (x < K) dHs[sh * KV + (long)col * K + x] = dH[x * tile + c];
      }
    }
    for (int i0 = 0; i0 < L; i0 += tile * R) {
      const int i = i0 + lid;
      if (i < L) {
        to_end[i] = exp(Gc[L - 1] - Gc[i]);
        q_weight[i] = scale * exp(Gc[i]);
      }
    }
    for (int i0 = 0; i0 < L; i0 += R) {
      const int i = i0 + r;
      if (i < L) {
        dO[i * tile + c] = owner ? LOAD_X(d_o, do_off + span.row * do_st.x + (t0 + i) * do_st.y +
                                                   hv * do_st.z + col * do_st.w)
                                 : 0.0f;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int i0 = 0; i0 < L; i0 += R) {
      const int i = i0 + r;
      if (i < L) {
        float kd = 0.0f, pd = 0.0f;
        for (int x = 0; x < K; ++x) kd += Kc[i * K + x] * dH[x * tile + c];
        for (int m = 0; m < L; ++m)
          pd += m >= i ? Ps[(sh * C + m) * C + i] * dO[m * tile + c] : 0.0f;
        const float du = to_end[i] * kd + pd;
        dU[i * tile + c] = du;
        if (owner) dUs[(sh * C + i) * V + col] = du;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const float state_decay = exp(Gc[L - 1]);
    for (int x0 = 0; x0 < K; x0 += R) {
      const int x = x0 + r;
      if (x < K) {
        float d = state_decay * dH[x * tile + c];
        for (int i = 0; i < L; ++i) {
          d += q_weight[i] * Qc[i * K + x] * dO[i * tile + c] +
               Ws[(sh * C + i) * K + x] * dU[i * tile + c];
        }
        dH[x * tile + c] = d;
      }
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  if (dh0 && owner) {
    for (int x0 = 0; x0 < K; x0 += R) {
      const int x = x0 + r;
      if (x < K) {
        dh0[dh0_off + n * dh0_st.x + hv * dh0_st.y + x * dh0_st.z + col * dh0_st.w] =
            dH[x * tile + c];
      }
    }
  }
}

// Work-group (slot, value head) of C work-items: the chunk's gradients (the
// notation of backends/cpu/gdn_chunk_bwd.cpp), given S^T (Ss, [V][K]), dH^T at
// the chunk's end (dHs), U, dU, W, T, P and D k^k^T:
//   dW = dU S^T (in place of W)      dq^ = diag(scale gamma) dO S^T + (dP o sD) K^
//   dP = dO U^T (j <= i)             [X | Y] = T^T [dW | dU] (in place)
//   dA = -(X R_w^T + Y R_v^T) T^T (j < i),  R_w = -diag(beta gamma) K^, R_v = diag(beta) V
//   dk^ = diag(e^(G_last - G)) U dH^T + (dP o sD)^T Q^ + (B + B^T) K^ - diag(beta gamma) X,
//         B = diag(beta) (dA o D)
//   dv = diag(beta) Y,  dbeta_i = v_i.Y_i - gamma_i k^_i.X_i + sum_j dA_ij D_ij k^_i.k^_j
// and dg, the reverse sum within the chunk of dG, the gradient of every e^(+-G)
// factor times its value. Writes dv, and per token the share
// [dq^ (K) | dk^ (K) | dg | dbeta] of this value head in `partial`.
// `shared`: dP and dA/B ([C][C + 1] each), G, beta, gamma, e^(G_last - G), dG,
// dbeta and two scratch vectors (C each), a [SLICE][C] slice.
kernel void gdn_chunk_grads(global const x_t* v, long v_off, long4 v_st, global const x_t* d_o,
                            long do_off, long4 do_st, global x_t* dv, long dv_off, long4 dv_st,
                            global const float* info, global const float* Qs,
                            global const float* Ks, global const uchar* cu, long cu_off,
                            long cu_stride, int cu_kind, long N, long T, int H, int HV, int K,
                            int V, int C, float scale, global const float* Gs, global float* Ws,
                            global const float* Us, global float* dUs, global const float* Ts,
                            global const float* Ps, global const float* DKs, global const float* Ss,
                            global const float* dHs, global float* partial, local float* shared) {
  const long slot = get_group_id(0);
  const int hv = get_group_id(1), lid = get_local_id(0);  // C work-items
  ChunkPos pos;
  if (!chunk_at(cu, cu_off, cu_stride, cu_kind, N, T, C, slot, &pos)) return;
  const int L = pos.length, h = hv / (HV / H), p = C + 1;
  const long sh = slot * HV + hv, KV = (long)K * V, share_floats = 2 * K + 2;
  local float* dP = shared;
  local float* dA = dP + C * p;
  local float* G = dA + C * p;
  local float* beta = G + C;
  local float* gamma = beta + C;
  local float* to_end = gamma + C;
  local float* dG = to_end + C;
  local float* d_beta = dG + C;
  local float* sums = d_beta + C;
  local float* terms = sums + C;
  local float* slice = terms + C;
  global const float* Kc = Ks + (slot * H + h) * C * K;
  global const float* Qc = Qs + (slot * H + h) * C * K;
  global const float* S_t = Ss + sh * KV;
  global const float* dH_t = dHs + sh * KV;
  global float* X = Ws + sh * C * K;   // dW, then X
  global float* Y = dUs + sh * C * V;  // dU, then Y
  global const float* U = Us + sh * C * V;
  global const float* Tc = Ts + sh * C * C;
  global const float* Pc = Ps + sh * C * C;
  global const float* DK = DKs + sh * C * C;
  global float* shares = partial + ((pos.row * T + pos.t0) * HV + hv) * share_floats;
  const long token_step = HV * share_floats;
  const long vo = v_off + pos.row * v_st.x + pos.t0 * v_st.y + hv * v_st.z;
  const long doo = do_off + pos.row * do_st.x + pos.t0 * do_st.y + hv * do_st.z;
  if (lid < L) {
    G[lid] = Gs[sh * C + lid];
    beta[lid] = info[((pos.row * T + pos.t0 + lid) * HV + hv) * TOKEN_INFO + 1];
    gamma[lid] = exp(G[lid]);
    dG[lid] = 0.0f;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  if (lid < L) to_end[lid] = exp(G[L - 1] - G[lid]);
  barrier(CLK_LOCAL_MEM_FENCE);

  // dW = dU S^T, dq^ = diag(scale gamma) dO S^T, dk^ = diag(e^(G_last - G)) U dH^T;
  // each work-item also sums its columns of dH o S.
  float dh_s = 0.0f;
  for (int x0 = 0; x0 < K; x0 += C) {
    const int x = x0 + lid;
    if (x < K) {
      for (int c = 0; c < V; ++c) dh_s += dH_t[(long)c * K + x] * S_t[(long)c * K + x];
      for (int i = 0; i < L; ++i) {
        float dw = 0.0f, dq = 0.0f, dk = 0.0f;
        for (int c = 0; c < V; ++c) {
          const float s = S_t[(long)c * K + x];
          dw += Y[i * V + c] * s;
          dq += LOAD_X(d_o, doo + i * do_st.y + c * do_st.w) * s;
          dk += U[i * V + c] * dH_t[(long)c * K + x];
        }
        X[i * K + x] = dw;
        shares[i * token_step + x] = scale * gamma[i] * dq;
        shares[i * token_step + K + x] = to_end[i] * dk;
      }
    }
  }
  sums[lid] = dh_s;
  barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
  // Their dG: q^_i.dq^_i - k^_i.dk^_i, and at the last token the k^.dk^ of every
  // token and gamma_last sum(dH o S).
  if (lid < L) {
    float qdq = 0.0f, kdk = 0.0f;
    for (int x = 0; x < K; ++x) {
      qdq += Qc[lid * K + x] * shares[lid * token_step + x];
      kdk += Kc[lid * K + x] * shares[lid * token_step + K + x];
    }
    dG[lid] = qdq - kdk;
    terms[lid] = kdk;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  if (lid == 0) {
    float total = 0.0f, dot = 0.0f;
    for (int i = 0; i < L; ++i) total += terms[i];
    for (int w = 0; w < C; ++w) dot += sums[w];
    dG[L - 1] += total + gamma[L - 1] * dot;
  }

  // dP = dO U^T (column j = lid, j <= i), U^T staged in slices.
  for (int i = 0; i < C; ++i) dP[i * p + lid] = dA[i * p + lid] = 0.0f;
  for (int c0 = 0; c0 < V; c0 += SLICE) {
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int cc = 0; cc < SLICE; ++cc) {
      slice[cc * C + lid] = lid < L && c0 + cc < V ? U[lid * V + c0 + cc] : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int width = min(SLICE, V - c0);
    for (int i = 0; i < L; ++i) {
      float sum = 0.0f;
      for (int cc = 0; cc < width; ++cc) {
        sum += LOAD_X(d_o, doo + i * do_st.y + (c0 + cc) * do_st.w) * slice[cc * C + lid];
      }
      dP[i * p + lid] += sum;
    }
  }

  // [X | Y] = T^T [dW | dU], in place, a column per work-item (rows ascending).
  for (int x0 = 0; x0 < K; x0 += C) {
    const int x = x0 + lid;
    if (x < K) {
      for (int i = 0; i < L; ++i) {
        float sum = 0.0f;
        for (int m = i; m < L; ++m) sum += Tc[m * C + i] * X[m * K + x];
        X[i * K + x] = sum;
      }
    }
  }
  for (int c0 = 0; c0 < V; c0 += C) {
    const int c = c0 + lid;
    if (c < V) {
      for (int i = 0; i < L; ++i) {
        float sum = 0.0f;
        for (int m = i; m < L; ++m) sum += Tc[m * C + i] * Y[m * V + c];
        Y[i * V + c] = sum;
      }
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);

  // Z = X R_w^T + Y R_v^T into dA (column j = lid), R staged in slices.
  const float key_weight = lid < L ? -beta[lid] * gamma[lid] : 0.0f;
  for (int x0 = 0; x0 < K; x0 += SLICE) {
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int xx = 0; xx < SLICE; ++xx) {
      slice[xx * C + lid] = x0 + xx < K ? key_weight * Kc[lid * K + x0 + xx] : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int width = min(SLICE, K - x0);
    for (int i = 0; i < L; ++i) {
      float sum = 0.0f;
      for (int xx = 0; xx < width; ++xx) sum += X[i * K + x0 + xx] * slice[xx * C + lid];
      dA[i * p + lid] += sum;
    }
  }
  for (int c0 = 0; c0 < V; c0 += SLICE) {
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int cc = 0; cc < SLICE; ++cc) {
      slice[cc * C + lid] = lid < L && c0 + cc < V
                                ? beta[lid] * LOAD_X(v, vo + lid * v_st.y + (c0 + cc) * v_st.w)
                                : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int width = min(SLICE, V - c0);
    for (int i = 0; i < L; ++i) {
      float sum = 0.0f;
      for (int cc = 0; cc < width; ++cc) sum += Y[i * V + c0 + cc] * slice[cc * C + lid];
      dA[i * p + lid] += sum;
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  // dA = -Z T^T below the diagonal, a row per work-item, in place from the right.
  // (Every loop here has the same bounds on every work-item, masked instead:
  // PoCL miscompiled loops whose bounds depend on the work-item.)
  for (int j = C - 1; j >= 0; --j) {
    float sum = 0.0f;
    for (int m = 0; m < L; ++m) sum += m <= j ? dA[lid * p + m] * Tc[j * C + m] : 0.0f;
    dA[lid * p + j] = j < lid && lid < L ? -sum : 0.0f;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  // dG and dbeta through P and A: an entry holding D_ij adds dE_ij E_ij to dG_i
  // and takes it from dG_j (row lid and column lid of each).
  if (lid < L) {
    float row_sum = 0.0f, column_sum = 0.0f, db = 0.0f;
    for (int m = 0; m < L; ++m) {
      const float dk = m < lid ? dA[lid * p + m] * DK[lid * C + m] : 0.0f;
      row_sum += (m <= lid ? dP[lid * p + m] * Pc[lid * C + m] : 0.0f) + beta[lid] * dk;
      db += dk;
      column_sum += m >= lid ? dP[m * p + lid] * Pc[m * C + lid] : 0.0f;
      column_sum += m > lid ? beta[m] * dA[m * p + lid] * DK[m * C + lid] : 0.0f;
    }
    dG[lid] += row_sum - column_sum;
    d_beta[lid] = db;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  // dP o sD in place (column lid); dA into B + B^T (row i > lid gives both entries).
  for (int i = 0; i < L; ++i) {
    const float decay = lid <= i ? exp(G[i] - G[lid]) : 0.0f;
    dP[i * p + lid] *= scale * decay;
    if (lid < i) {
      const float b = beta[i] * decay * dA[i * p + lid];
      dA[i * p + lid] = b;
      dA[lid * p + i] = b;
    } else if (lid == i) {
      dA[i * p + i] = 0.0f;
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  // dq^ += (dP o sD) K^;  dk^ += (dP o sD)^T Q^ + (B + B^T) K^ - diag(beta gamma) X.
  for (int x0 = 0; x0 < K; x0 += C) {
    const int x = x0 + lid;
    if (x < K) {
      for (int i = 0; i < L; ++i) {
        float dq = 0.0f, dk = 0.0f;
        for (int m = 0; m <= i; ++m) dq += dP[i * p + m] * Kc[m * K + x];
        for (int m = i; m < L; ++m) dk += dP[m * p + i] * Qc[m * K + x];
        for (int m = 0; m < L; ++m) dk += dA[i * p + m] * Kc[m * K + x];
        shares[i * token_step + x] += dq;
        shares[i * token_step + K + x] += dk - beta[i] * gamma[i] * X[i * K + x];
      }
    }
  }
  // dv = diag(beta) Y.
  const long dvo = dv_off + pos.row * dv_st.x + pos.t0 * dv_st.y + hv * dv_st.z;
  for (int c0 = 0; c0 < V; c0 += C) {
    const int c = c0 + lid;
    if (c < V) {
      for (int i = 0; i < L; ++i)
        STORE_X(dv, dvo + i * dv_st.y + c * dv_st.w, beta[i] * Y[i * V + c]);
    }
  }
  // The per-token terms of W and U0: dbeta += v.Y - gamma k^.X, dG += -beta gamma k^.X.
  if (lid < L) {
    float kx = 0.0f, vy = 0.0f;
    for (int x = 0; x < K; ++x) kx += Kc[lid * K + x] * X[lid * K + x];
    for (int c = 0; c < V; ++c) vy += LOAD_X(v, vo + lid * v_st.y + c * v_st.w) * Y[lid * V + c];
    d_beta[lid] += vy - gamma[lid] * kx;
    dG[lid] -= beta[lid] * gamma[lid] * kx;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  if (lid == 0) {
    float dg = 0.0f;
    for (int i = L - 1; i >= 0; --i) {
      dg += dG[i];
      shares[i * token_step + 2 * K] = dg;
      shares[i * token_step + 2 * K + 1] = d_beta[i];
    }
  }
}
