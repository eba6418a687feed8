// gdn_chunk_rows.cl: gdn_chunk_fwd in the chunked (WY) form for CPU devices.
//
// The math of gdn_chunk.cl (and of backends/cpu/gdn_chunk.cpp): per chunk of
// RC tokens, with G the cumulative log decay, gamma = e^G, D_ij = e^(G_i - G_j),
//   A_ij = beta_i D_ij k^_i.k^_j (j < i),  T = (I + A)^-1
//   [W | U0] = T [-diag(beta gamma) K^ | diag(beta) V],  U = U0 + W S
//   O = diag(scale gamma) Q^ S + P U,  P_ij = scale D_ij q^_i.k^_j (j <= i)
//   S <- gamma_last S + sum_j e^(G_last - G_j) k^_j u_j^T
// but laid out for a CPU: a work-item takes a whole (sequence, value head)
// and walks its chunks alone, as the CPU backend's tasks do, every product
// a loop over rows whose columns are explicit float16 vectors (K and V are
// multiples of 16), with up to ROW_BLOCK vectors of one row accumulated in
// registers. PoCL then has nothing to vectorise across work-items (its
// work-groups here are one work-item) and runs each product at SIMD width
// from the L1/L2-resident blocks of the work-item's scratch.
//
// A work-item's scratch (floats, `per_worker` apart): S [K][V], Q^ and K^
// [RC][K] each, R = [-beta gamma k^ | beta v] and WU = [W | U] ([RC][K + V]
// each), O' [RC][V], T (in place of A) and P ([RC][RC] each). Work-items
// take (sequence, value head) pairs `workers` apart, so the scratch is
// bounded whatever the number of sequences.

#define RC 64        // tokens per chunk: RC_TOKENS in gdn_chunk.cpp
#define ROW_BLOCK 8  // float16 vectors of a row accumulated at once

inline float hsum16(float16 x) {
  const float8 a = x.lo + x.hi;
  const float4 b = a.lo + a.hi;
  const float2 c = b.lo + b.hi;
  return c.x + c.y;
}

inline float16 load_row16(global const x_t* p, long offset, long step) {
  if (step == 1) return LOAD16_X(p, offset);
  float lanes[16];
  for (int c = 0; c < 16; ++c) lanes[c] = LOAD_X(p, offset + c * step);
  return vload16(0, lanes);
}

inline void store_row16(global x_t* p, long offset, long step, float16 value) {
  if (step == 1) {
    STORE16_X(p, offset, value);
    return;
  }
  float lanes[16];
  vstore16(value, 0, lanes);
  for (int c = 0; c < 16; ++c) STORE_X(p, offset + c * step, lanes[c]);
}

inline float dot16(global const float* a, global const float* b, int n) {
  float16 sum = (float16)(0.0f);
  for (int x = 0; x < n; x += 16) sum += vload16(0, a + x) * vload16(0, b + x);
  return hsum16(sum);
}

// out[0, width) = init[0, width) (or 0) + sum_{m < count} weights[m * weight_step] rows[m * ld + ..]:
// one row of a small GEMM, ROW_BLOCK vectors at a time in registers.
inline void row_times(global float* out, global const float* init, int width,
                      global const float* weights, int weight_step, global const float* rows,
                      int ld, int count) {
  for (int c0 = 0; c0 < width; c0 += 16 * ROW_BLOCK) {
    const int vectors = min(ROW_BLOCK, (width - c0) / 16);
    float16 acc[ROW_BLOCK];
#pragma unroll
    for (int b = 0; b < ROW_BLOCK; ++b) {
      acc[b] = init && b < vectors ? vload16(0, init + c0 + 16 * b) : (float16)(0.0f);
    }
    for (int m = 0; m < count; ++m) {
      const float w = weights[m * weight_step];
      global const float* row = rows + (long)m * ld + c0;
#pragma unroll
      for (int b = 0; b < ROW_BLOCK; ++b) {
        if (b < vectors) acc[b] += w * vload16(0, row + 16 * b);
      }
    }
#pragma unroll
    for (int b = 0; b < ROW_BLOCK; ++b) {
      if (b < vectors) vstore16(acc[b], 0, out + c0 + 16 * b);
    }
  }
}

// Work-item w of `workers` (work-groups of one): the pairs (n, hv) = w,
// w + workers, ... of N * HV.
kernel void gdn_chunk_fwd_rows(global const x_t* q, long q_off, long4 q_st,
                               global const x_t* k, long k_off, long4 k_st,
                               global const x_t* v, long v_off, long4 v_st,
                               global const float* info, global x_t* o, long o_off, long4 o_st,
                               global const float* init, long init_off, long4 init_st,
                               global float* fin, long fin_off, long4 fin_st,
                               global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                               long N, long T, int H, int HV, int K, int V, float scale,
                               global float* scratch, long per_worker) {
  const long worker = get_global_id(0), workers = get_global_size(0);
  const int KV = K + V;
  global float* S = scratch + worker * per_worker;
  global float* Qc = S + (long)K * V;
  global float* Kc = Qc + RC * K;
  global float* R = Kc + RC * K;
  global float* WU = R + RC * KV;
  global float* Out = WU + RC * KV;
  global float* Tm = Out + RC * V;  // A, then T in place
  global float* P = Tm + RC * RC;
  float G[RC], beta[RC], gamma[RC], to_end[RC];
  for (long pair = worker; pair < N * HV; pair += workers) {
    const long n = pair / HV;
    const int hv = (int)(pair % HV), h = hv / (HV / H);
    const Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
    const long b = span.row;
    for (int x = 0; x < K; ++x) {
      for (int c = 0; c < V; c += 16) {
        float16 row = (float16)(0.0f);
        if (init) {
          float lanes[16];
          const long at = init_off + n * init_st.x + hv * init_st.y + x * init_st.z + c * init_st.w;
          for (int l = 0; l < 16; ++l) lanes[l] = init[at + l * init_st.w];
          row = vload16(0, lanes);
        }
        vstore16(row, 0, S + x * V + c);
      }
    }
    for (long t0 = span.begin; t0 < span.end; t0 += RC) {
      const int L = (int)min((long)RC, span.end - t0);
      // q^, k^, G, beta and R = [-beta gamma k^ | beta v].
      float cumulative = 0.0f;
      for (int i = 0; i < L; ++i) {
        const long t = t0 + i;
        global const float* token = info + ((b * T + t) * HV + hv) * TOKEN_INFO;
        cumulative += token[5];
        G[i] = cumulative;
        beta[i] = token[1];
        gamma[i] = exp(cumulative);
        const float key_weight = -beta[i] * gamma[i];
        const long qo = q_off + b * q_st.x + t * q_st.y + h * q_st.z;
        const long ko = k_off + b * k_st.x + t * k_st.y + h * k_st.z;
        const long vo = v_off + b * v_st.x + t * v_st.y + hv * v_st.z;
        for (int x = 0; x < K; x += 16) {
          const float16 key = token[3] * load_row16(k, ko + x * k_st.w, k_st.w);
          vstore16(token[2] * load_row16(q, qo + x * q_st.w, q_st.w), 0, Qc + i * K + x);
          vstore16(key, 0, Kc + i * K + x);
          vstore16(key_weight * key, 0, R + i * KV + x);
        }
        for (int c = 0; c < V; c += 16) {
          vstore16(beta[i] * load_row16(v, vo + c * v_st.w, v_st.w), 0, R + i * KV + K + c);
        }
      }
      for (int i = 0; i < L; ++i) to_end[i] = exp(G[L - 1] - G[i]);
      // A (strictly lower) and P (lower, diagonal included).
      for (int i = 0; i < L; ++i) {
        for (int j = 0; j <= i; ++j) {
          const float decay = exp(G[i] - G[j]);
          P[i * RC + j] = scale * decay * dot16(Qc + i * K, Kc + j * K, K);
          if (j < i) Tm[i * RC + j] = beta[i] * decay * dot16(Kc + i * K, Kc + j * K, K);
        }
      }
      // T = (I + A)^-1 by forward substitution, row i replacing A's row i
      // once computed (rows of T are zero right of the diagonal).
      for (int i = 0; i < L; ++i) {
        float16 row[RC / 16];
#pragma unroll
        for (int c = 0; c < RC / 16; ++c) row[c] = (float16)(0.0f);
        for (int m = 0; m < i; ++m) {
          const float a = Tm[i * RC + m];
#pragma unroll
          for (int c = 0; c < RC / 16; ++c) row[c] -= a * vload16(c, Tm + m * RC);
        }
#pragma unroll
        for (int c = 0; c < RC / 16; ++c) vstore16(row[c], c, Tm + i * RC);
        Tm[i * RC + i] = 1.0f;
      }
      // [W | U0] = T R.
      for (int i = 0; i < L; ++i) row_times(WU + i * KV, 0, KV, Tm + i * RC, 1, R, KV, i + 1);
      // U = U0 + W S and O' = diag(scale gamma) Q^ S, sharing each load of S.
      for (int i = 0; i < L; ++i) {
        global float* u_row = WU + i * KV + K;
        const float query_weight = scale * gamma[i];
        for (int c0 = 0; c0 < V; c0 += 16 * ROW_BLOCK) {
          const int vectors = min(ROW_BLOCK, (V - c0) / 16);
          float16 u[ROW_BLOCK], qs[ROW_BLOCK];
#pragma unroll
          for (int c = 0; c < ROW_BLOCK; ++c) {
            u[c] = c < vectors ? vload16(0, u_row + c0 + 16 * c) : (float16)(0.0f);
            qs[c] = (float16)(0.0f);
          }
          for (int x = 0; x < K; ++x) {
            const float w = WU[i * KV + x], query = Qc[i * K + x];
            global const float* s_row = S + x * V + c0;
#pragma unroll
            for (int c = 0; c < ROW_BLOCK; ++c) {
              if (c < vectors) {
                const float16 s = vload16(c, s_row);
                u[c] += w * s;
                qs[c] += query * s;
              }
            }
          }
#pragma unroll
          for (int c = 0; c < ROW_BLOCK; ++c) {
            if (c < vectors) {
              vstore16(u[c], 0, u_row + c0 + 16 * c);
              vstore16(query_weight * qs[c], 0, Out + i * V + c0 + 16 * c);
            }
          }
        }
      }
      // O = O' + P U, into o.
      for (int i = 0; i < L; ++i) {
        row_times(Out + i * V, Out + i * V, V, P + i * RC, 1, WU + K, KV, i + 1);
        const long oo = o_off + b * o_st.x + (t0 + i) * o_st.y + hv * o_st.z;
        for (int c = 0; c < V; c += 16) {
          store_row16(o, oo + c * o_st.w, o_st.w, vload16(0, Out + i * V + c));
        }
      }
      // S <- gamma_last S + sum_j e^(G_last - G_j) k^_j u_j^T: the decayed keys
      // in R's key columns (R is done with), read down a column as weights.
      const float state_decay = gamma[L - 1];
      for (int j = 0; j < L; ++j) {
        for (int x = 0; x < K; x += 16) {
          vstore16(to_end[j] * vload16(0, Kc + j * K + x), 0, R + j * KV + x);
        }
      }
      for (int x = 0; x < K; ++x) {
        global float* s_row = S + x * V;
        for (int c = 0; c < V; c += 16) vstore16(state_decay * vload16(0, s_row + c), 0, s_row + c);
        row_times(s_row, s_row, V, R + x, KV, WU + K, KV, L);
      }
    }
    if (fin) {
      for (int x = 0; x < K; ++x) {
        for (int c = 0; c < V; c += 16) {
          float lanes[16];
          vstore16(vload16(0, S + x * V + c), 0, lanes);
          const long at = fin_off + n * fin_st.x + hv * fin_st.y + x * fin_st.z + c * fin_st.w;
          for (int l = 0; l < 16; ++l) fin[at + l * fin_st.w] = lanes[l];
        }
      }
    }
  }
}
