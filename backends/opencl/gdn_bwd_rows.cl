// gdn_bwd_rows.cl: gdn_chunk_bwd's token scan (the math and checkpoints of
// gdn_bwd.cl's gdn_bwd_scan) for CPU devices: a work-item takes a whole
// (sequence, value head), all V columns of its state and of dS as rows of
// float16 vectors (V a multiple of 16), and walks the tokens alone, without
// barriers; work-groups are one work-item, so PoCL has nothing to vectorise
// across work-items and every state sweep runs at SIMD width. Column sums
// (S^T k^, dS^T k^) accumulate COLS vectors in registers; row sums (dq^, dk^)
// are vector sums reduced once per row. With every column in one work-item,
// its shares are the value head's whole dq^, dk^, dg and dbeta (one block for
// gdn_bwd_reduce).
//
// Per worker, `per_worker` floats of `scratch`: dS [K][V], q^ and k^ (K
// each), then the chunk's token states [chunk][K][V]. Work-items take the
// (sequence, value head) pairs `workers` apart.

#define COLS 8  // float16 vectors of a row block: 128 columns

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

// q^ and k^ of token t into keys[0, K) and keys[K, 2K).
inline void load_keys_rows(global float* keys, global const x_t* q, long qo, long q_step,
                           global const x_t* k, long ko, long k_step, global const float* token,
                           int K) {
  for (int i = 0; i < K; ++i) {
    keys[i] = token[2] * LOAD_X(q, qo + i * q_step);
    keys[K + i] = token[3] * LOAD_X(k, ko + i * k_step);
  }
}

// One token through the state ([K][V], rows V apart): `to` = the state after
// it, from `from` (they may be the same).
inline void advance_rows(global const float* from, global float* to, global const float* k_hat,
                         int K, int V, float decay, float strength, global const x_t* v, long vo,
                         long v_step) {
  for (int c0 = 0; c0 < V; c0 += 16 * COLS) {
    const int vectors = min(COLS, (V - c0) / 16);
    float16 u[COLS];
#pragma unroll
    for (int c = 0; c < COLS; ++c) u[c] = (float16)(0.0f);
    for (int i = 0; i < K; ++i) {
      const float key = k_hat[i];
#pragma unroll
      for (int c = 0; c < COLS; ++c) {
        if (c < vectors) u[c] += key * vload16(0, from + i * V + c0 + 16 * c);
      }
    }
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      if (c < vectors) {
        const float16 value = load_row16(v, vo + (c0 + 16 * c) * v_step, v_step);
        u[c] = strength * (value - decay * u[c]);
      }
    }
    for (int i = 0; i < K; ++i) {
      const float key = k_hat[i];
#pragma unroll
      for (int c = 0; c < COLS; ++c) {
        if (c < vectors) {
          const long at = i * V + c0 + 16 * c;
          vstore16(decay * vload16(0, from + at) + key * u[c], 0, to + at);
        }
      }
    }
  }
}

// Work-item w of `workers` (work-groups of one). Shares in
// partial[((b T + t) HV + hv)]: dq^ (K), dk^ (K), dg, dbeta.
kernel void gdn_bwd_rows(global const x_t* q, long q_off, long4 q_st,
                         global const x_t* k, long k_off, long4 k_st,
                         global const x_t* v, long v_off, long4 v_st,
                         global const float* info,
                         global const x_t* d_o, long do_off, long4 do_st,
                         global x_t* dv, long dv_off, long4 dv_st,
                         global const float* init, long init_off, long4 init_st,
                         global const float* dfin, long dfin_off, long4 dfin_st,
                         global float* dh0, long dh0_off, long4 dh0_st,
                         global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                         global float* checkpoints, global float* scratch, long per_worker,
                         global float* partial, long N, long T, int H, int HV, int K, int V,
                         int chunk, float scale) {
  const long worker = get_global_id(0), workers = get_global_size(0);
  const long KV = (long)K * V, share_floats = 2 * K + 2;
  global float* dS = scratch + worker * per_worker;
  global float* keys = dS + KV;
  global float* states = keys + 2 * K;  // [chunk][K][V]
  global const float* q_hat = keys;
  global const float* k_hat = keys + K;
  for (long pair = worker; pair < N * HV; pair += workers) {
    const long n = pair / HV;
    const int hv = (int)(pair % HV), h = hv / (HV / H);
    const Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
    const long b = span.row;
    const long chunks = (span.end - span.begin + chunk - 1) / chunk;
    const long first_slot = n + (b * T + span.begin) / chunk;
    const long qk_base = b * q_st.x + h * q_st.z, kk_base = b * k_st.x + h * k_st.z;
    const long v_base = v_off + b * v_st.x + hv * v_st.z;

    // Forward: the state before each chunk into its checkpoint, running in states[0].
    for (int i = 0; i < K; ++i) {
      for (int c = 0; c < V; ++c) {
        states[i * V + c] =
            init ? init[init_off + n * init_st.x + hv * init_st.y + i * init_st.z + c * init_st.w]
                 : 0.0f;
      }
    }
    for (long ch = 0; ch < chunks; ++ch) {
      global float* checkpoint = checkpoints + ((first_slot + ch) * HV + hv) * KV;
      for (long e = 0; e < KV; e += 16) vstore16(vload16(0, states + e), 0, checkpoint + e);
      if (ch + 1 == chunks) break;
      const long t0 = span.begin + ch * chunk;
      for (long t = t0; t < t0 + chunk; ++t) {
        global const float* token = info + ((b * T + t) * HV + hv) * TOKEN_INFO;
        load_keys_rows(keys, q, q_off + qk_base + t * q_st.y, q_st.w, k,
                       k_off + kk_base + t * k_st.y, k_st.w, token, K);
        advance_rows(states, states, k_hat, K, V, token[0], token[1], v, v_base + t * v_st.y,
                     v_st.w);
      }
    }

    for (int i = 0; i < K; ++i) {
      for (int c = 0; c < V; ++c) {
        dS[i * V + c] =
            dfin ? dfin[dfin_off + n * dfin_st.x + hv * dfin_st.y + i * dfin_st.z + c * dfin_st.w]
                 : 0.0f;
      }
    }
    for (long ch = chunks - 1; ch >= 0; --ch) {
      const long t0 = span.begin + ch * chunk, t1 = min(t0 + chunk, span.end);
      // The chunk's token states again: states[t - t0] is the state before token t.
      global const float* checkpoint = checkpoints + ((first_slot + ch) * HV + hv) * KV;
      for (long e = 0; e < KV; e += 16) vstore16(vload16(0, checkpoint + e), 0, states + e);
      for (long t = t0; t + 1 < t1; ++t) {
        global const float* token = info + ((b * T + t) * HV + hv) * TOKEN_INFO;
        load_keys_rows(keys, q, q_off + qk_base + t * q_st.y, q_st.w, k,
                       k_off + kk_base + t * k_st.y, k_st.w, token, K);
        advance_rows(states + (t - t0) * KV, states + (t - t0 + 1) * KV, k_hat, K, V, token[0],
                     token[1], v, v_base + t * v_st.y, v_st.w);
      }
      for (long t = t1 - 1; t >= t0; --t) {
        global const float* token = info + ((b * T + t) * HV + hv) * TOKEN_INFO;
        const float decay = token[0], strength = token[1], key_query = token[4];
        load_keys_rows(keys, q, q_off + qk_base + t * q_st.y, q_st.w, k,
                       k_off + kk_base + t * k_st.y, k_st.w, token, K);
        global const float* before = states + (t - t0) * KV;
        global float* share = partial + ((b * T + t) * HV + hv) * share_floats;
        const long doo = do_off + b * do_st.x + t * do_st.y + hv * do_st.z;
        const long dvo = dv_off + b * dv_st.x + t * dv_st.y + hv * dv_st.z;
        float16 dg = (float16)(0.0f), dbeta = (float16)(0.0f);
        for (int c0 = 0; c0 < V; c0 += 16 * COLS) {
          const int vectors = min(COLS, (V - c0) / 16);
          // Column phase: u, du (dS^T k^ after dS += scale q^ do^T) and dv.
          float16 u[COLS], du[COLS], d_out[COLS];
#pragma unroll
          for (int c = 0; c < COLS; ++c) u[c] = du[c] = (float16)(0.0f);
          for (int i = 0; i < K; ++i) {
            const float key = k_hat[i];
#pragma unroll
            for (int c = 0; c < COLS; ++c) {
              if (c < vectors) {
                const long at = i * V + c0 + 16 * c;
                u[c] += key * vload16(0, before + at);
                du[c] += key * vload16(0, dS + at);
              }
            }
          }
#pragma unroll
          for (int c = 0; c < COLS; ++c) {
            if (c < vectors) {
              const int col = c0 + 16 * c;
              const float16 error =
                  load_row16(v, v_base + t * v_st.y + col * v_st.w, v_st.w) - decay * u[c];
              d_out[c] = load_row16(d_o, doo + col * do_st.w, do_st.w);
              du[c] += (scale * key_query) * d_out[c];
              store_row16(dv, dvo + col * dv_st.w, dv_st.w, strength * du[c]);
              u[c] = strength * error;
              dbeta += error * du[c];
            }
          }
          // Row phase: dq^_i, dk^_i over this block's columns, dg, and dS.
          for (int i = 0; i < K; ++i) {
            const float qi = q_hat[i], ki = k_hat[i];
            float16 dq = (float16)(0.0f), dk = (float16)(0.0f);
#pragma unroll
            for (int c = 0; c < COLS; ++c) {
              if (c < vectors) {
                const long at = i * V + c0 + 16 * c;
                const float16 decayed = decay * vload16(0, before + at);
                const float16 d_after = vload16(0, dS + at) + (scale * qi) * d_out[c];
                const float16 d_decayed = d_after - (strength * ki) * du[c];
                dq += (decayed + ki * u[c]) * d_out[c];
                dk += d_after * u[c] - strength * decayed * du[c];
                dg += d_decayed * decayed;
                vstore16(decay * d_decayed, 0, dS + at);
              }
            }
            const float dq_sum = scale * hsum16(dq), dk_sum = hsum16(dk);
            share[i] = c0 == 0 ? dq_sum : share[i] + dq_sum;
            share[K + i] = c0 == 0 ? dk_sum : share[K + i] + dk_sum;
          }
        }
        share[2 * K] = hsum16(dg);
        share[2 * K + 1] = hsum16(dbeta);
      }
    }
    if (dh0) {
      for (int i = 0; i < K; ++i) {
        for (int c = 0; c < V; ++c) {
          dh0[dh0_off + n * dh0_st.x + hv * dh0_st.y + i * dh0_st.z + c * dh0_st.w] =
              dS[i * V + c];
        }
      }
    }
  }
}
