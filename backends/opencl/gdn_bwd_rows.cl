// gdn_bwd_rows.cl: gdn_chunk_bwd's token scan (the math and checkpoints of
// gdn_bwd.cl's gdn_bwd_scan) for CPU devices: a work-item takes a whole
// (sequence, value head), all V columns of its state and of dS as rows of
// float16 vectors (V a multiple of 16), and walks the tokens alone, without
// barriers; work-groups are one work-item, so PoCL has nothing to vectorise
// across work-items and every state sweep runs at SIMD width. With every
// column in one work-item, its shares are the value head's whole dq^, dk^,
// dg and dbeta (one block for gdn_bwd_reduce).
//
// Each token costs one sweep over a block of COLS vectors of columns: the
// forward walk updates a row and adds it into the next token's S^T k^ in the
// same pass (as gdn_scan_panels), and the backward's row phase, updating dS,
// adds it into the previous token's dS^T k^. Columns evolve apart in both
// directions, so a block walks all the chunk's tokens with those sums in
// registers; only the row sums dq^_i, dk^_i gather over blocks (in the shares).
//
// Per worker, `per_worker` floats of `scratch`: dS [K][V]; q^ and k^ of the
// chunk's tokens ([chunk + 1][K] each: a row past the end is read, never
// used); the tokens' e = v - S'^T k^ ([chunk][V]); the token states
// ([chunk + 1][K][V]: states[j] is the state before token j of the chunk).
// Work-items take the (sequence, value head) pairs `workers` apart.

#define COLS 8  // float16 vectors of a column block: 128 columns

// q^ and k^ of the L tokens from t0 into rows of q_hat and k_hat (qo, ko:
// the offsets of the sequence's row and key head; token t's info at
// info_row + t info_step).
inline void load_chunk_keys(global float* q_hat, global float* k_hat, global const x_t* q, long qo,
                            long4 q_st, global const x_t* k, long ko, long4 k_st,
                            global const float* info_row, long info_step, long t0, int L, int K) {
  for (int j = 0; j < L; ++j) {
    const long t = t0 + j;
    global const float* token = info_row + t * info_step;
    for (int i = 0; i < K; ++i) {
      q_hat[j * K + i] = token[2] * LOAD_X(q, qo + t * q_st.y + i * q_st.w);
      k_hat[j * K + i] = token[3] * LOAD_X(k, ko + t * k_st.y + i * k_st.w);
    }
  }
}

// Tokens j in [0, count) through the columns [c0, c0 + 16 vectors) of the
// state: token j reads the state at from + j step and writes the one after it
// at to + j step (from == to, step 0: in place). With E, e of each token into
// E's row j. Token j's info is at info + j info_step, its v row at vo + j v_tstep.
inline void walk(global const float* from, global float* to, long step, global const float* k_hat,
                 int K, int V, int c0, int vectors, int count, global const float* info,
                 long info_step, global const x_t* v, long vo, long v_tstep, long v_step,
                 global float* E) {
  float16 recalled[COLS];
#pragma unroll
  for (int c = 0; c < COLS; ++c) recalled[c] = (float16)(0.0f);
  for (int i = 0; i < K; ++i) {
    const float key = k_hat[i];
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      if (c < vectors) recalled[c] += key * vload16(0, from + i * V + c0 + 16 * c);
    }
  }
  for (int j = 0; j < count; ++j) {
    global const float* token = info + j * info_step;
    const float decay = token[0], strength = token[1];
    float16 u[COLS];
#pragma unroll
    for (int c = 0; c < COLS; ++c) {
      u[c] = (float16)(0.0f);
      if (c < vectors) {
        const int col = c0 + 16 * c;
        const float16 error =
            load_row16(v, vo + j * v_tstep + col * v_step, v_step) - decay * recalled[c];
        if (E) vstore16(error, 0, E + j * V + col);
        u[c] = strength * error;
      }
      recalled[c] = (float16)(0.0f);
    }
    global const float* source = from + j * step;
    global float* target = to + j * step;
    global const float* key = k_hat + j * K;
    global const float* next_key = key + K;
    for (int i = 0; i < K; ++i) {
#pragma unroll
      for (int c = 0; c < COLS; ++c) {
        if (c < vectors) {
          const long at = i * V + c0 + 16 * c;
          const float16 row = decay * vload16(0, source + at) + key[i] * u[c];
          vstore16(row, 0, target + at);
          recalled[c] += next_key[i] * row;
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
  const long KV = (long)K * V, share_floats = 2 * K + 2, info_step = HV * TOKEN_INFO;
  global float* dS = scratch + worker * per_worker;
  global float* q_hat = dS + KV;  // [chunk + 1][K]
  global float* k_hat = q_hat + (chunk + 1) * K;
  global float* E = k_hat + (chunk + 1) * K;  // [chunk][V]
  global float* states = E + (long)chunk * V;   // [chunk + 1][K][V]
  for (long pair = worker; pair < N * HV; pair += workers) {
    const long n = pair / HV;
    const int hv = (int)(pair % HV), h = hv / (HV / H);
    const Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
    const long b = span.row;
    const long chunks = (span.end - span.begin + chunk - 1) / chunk;
    const long first_slot = n + (b * T + span.begin) / chunk;
    const long v_base = v_off + b * v_st.x + hv * v_st.z;
    global const float* info_row = info + (b * T * HV + hv) * TOKEN_INFO;  // + t info_step

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
      load_chunk_keys(q_hat, k_hat, q, q_off + b * q_st.x + h * q_st.z, q_st, k,
                      k_off + b * k_st.x + h * k_st.z, k_st, info_row, info_step, t0, chunk, K);
      for (int c0 = 0; c0 < V; c0 += 16 * COLS) {
        walk(states, states, 0, k_hat, K, V, c0, min(COLS, (V - c0) / 16), chunk,
             info_row + t0 * info_step, info_step, v, v_base + t0 * v_st.y, v_st.y, v_st.w, 0);
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
      const long t0 = span.begin + ch * chunk;
      const int L = (int)min((long)chunk, span.end - t0);
      // The chunk's token states again (states[j]: before token t0 + j) and their e.
      global const float* checkpoint = checkpoints + ((first_slot + ch) * HV + hv) * KV;
      for (long e = 0; e < KV; e += 16) vstore16(vload16(0, checkpoint + e), 0, states + e);
      load_chunk_keys(q_hat, k_hat, q, q_off + b * q_st.x + h * q_st.z, q_st, k,
                      k_off + b * k_st.x + h * k_st.z, k_st, info_row, info_step, t0, L, K);
      for (int c0 = 0; c0 < V; c0 += 16 * COLS) {
        walk(states, states + KV, KV, k_hat, K, V, c0, min(COLS, (V - c0) / 16), L,
             info_row + t0 * info_step, info_step, v, v_base + t0 * v_st.y, v_st.y, v_st.w, E);
      }
      // Backward through the chunk, a column block at a time, dS^T k^ carried.
      for (int c0 = 0; c0 < V; c0 += 16 * COLS) {
        const int vectors = min(COLS, (V - c0) / 16);
        float16 dS_k[COLS];
#pragma unroll
        for (int c = 0; c < COLS; ++c) dS_k[c] = (float16)(0.0f);
        for (int i = 0; i < K; ++i) {
          const float key = k_hat[(L - 1) * K + i];
#pragma unroll
          for (int c = 0; c < COLS; ++c) {
            if (c < vectors) dS_k[c] += key * vload16(0, dS + i * V + c0 + 16 * c);
          }
        }
        for (int j = L - 1; j >= 0; --j) {
          const long t = t0 + j;
          global const float* token = info_row + t * info_step;
          const float decay = token[0], strength = token[1], key_query = token[4];
          global const float* before = states + j * KV;
          global const float* qj = q_hat + j * K;
          global const float* kj = k_hat + j * K;
          global const float* k_prev = k_hat + max(j - 1, 0) * K;
          global float* share = partial + ((b * T + t) * HV + hv) * share_floats;
          const long doo = do_off + b * do_st.x + t * do_st.y + hv * do_st.z;
          const long dvo = dv_off + b * dv_st.x + t * dv_st.y + hv * dv_st.z;
          // u, du (dS^T k^ after dS += scale q^ do^T), dv and dbeta's share.
          float16 u[COLS], du[COLS], d_out[COLS], dbeta = (float16)(0.0f), dg = (float16)(0.0f);
#pragma unroll
          for (int c = 0; c < COLS; ++c) {
            u[c] = du[c] = d_out[c] = (float16)(0.0f);
            if (c < vectors) {
              const int col = c0 + 16 * c;
              const float16 error = vload16(0, E + j * V + col);
              d_out[c] = load_row16(d_o, doo + col * do_st.w, do_st.w);
              du[c] = dS_k[c] + (scale * key_query) * d_out[c];
              store_row16(dv, dvo + col * dv_st.w, dv_st.w, strength * du[c]);
              u[c] = strength * error;
              dbeta += error * du[c];
            }
            dS_k[c] = (float16)(0.0f);
          }
          // Row phase: dq^_i, dk^_i over the block's columns, dg, dS, and the
          // previous token's dS^T k^.
          for (int i = 0; i < K; ++i) {
            const float qi = qj[i], ki = kj[i], k_before = k_prev[i];
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
                const float16 d_state = decay * d_decayed;
                vstore16(d_state, 0, dS + at);
                dS_k[c] += k_before * d_state;
              }
            }
            const float dq_sum = scale * sum16(dq), dk_sum = sum16(dk);
            share[i] = c0 == 0 ? dq_sum : share[i] + dq_sum;
            share[K + i] = c0 == 0 ? dk_sum : share[K + i] + dk_sum;
          }
          share[2 * K] = (c0 == 0 ? 0.0f : share[2 * K]) + sum16(dg);
          share[2 * K + 1] = (c0 == 0 ? 0.0f : share[2 * K + 1]) + sum16(dbeta);
        }
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
