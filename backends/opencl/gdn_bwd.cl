// gdn_bwd.cl: backward of gdn_chunk_fwd (docs/OPS.md), token-recurrent like
// gdn.cl. Per token, with S the state before it, S' = e^g S, e = v - S'^T k^,
// u = beta e and dS the gradient of the state after it:
//   dS += scale q^ do^T;  du = dS^T k^;  dv = beta du;  dbeta = du . e
//   dq^ = scale (S' + k^ u^T) do;  dk^ = dS u - beta S' du
//   dS' = dS - beta k^ du^T;  dg = sum(dS' * S');  dS = e^g dS'
// Column j of S and of dS evolves on its own, so a work-group owns `cols`
// neighbouring columns of one (sequence, value head), as in gdn_scan. The
// scan runs forward once, storing the state before every chunk of `chunk`
// tokens (checkpoints); then, chunk by chunk from the last, it recomputes the
// chunk's token states from the checkpoint into `recompute` and walks its
// tokens backwards with dS in local memory. dq^, dk^, dg and dbeta sum over
// columns: each work-group writes its share per token into `partial`, and
// gdn_bwd_reduce adds the shares of all column blocks and of the G value
// heads of a key head in a fixed order (deterministic, no atomics).

// q^ and k^ of a token into local memory, for the whole work-group. The
// barriers also publish the recomputed states that other work-items wrote.
inline void load_keys(local float* q_hat, local float* k_hat, global const x_t* q, long qo,
                      long q_step, global const x_t* k, long ko, long k_step,
                      global const float* token, int K) {
  barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
  for (int i = get_local_id(0); i < K; i += get_local_size(0)) {
    q_hat[i] = token[2] * LOAD_X(q, qo + i * q_step);
    k_hat[i] = token[3] * LOAD_X(k, ko + i * k_step);
  }
  barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
}

inline float sum8(float8 x) {
  const float4 half_sum = x.lo + x.hi;
  const float2 pair = half_sum.lo + half_sum.hi;
  return pair.x + pair.y;
}

// One token through a state column (K rows `step` apart): `to` = the state
// after the token, from `from`, the state before it (they may be the same).
inline void advance(global const float* from, global float* to, long step, local const float* k_hat,
                    int K, float decay, float strength, float value) {
  float recalled = 0.0f;
  for (int i = 0; i < K; ++i) recalled += from[i * step] * k_hat[i];
  const float u = strength * (value - decay * recalled);
  for (int i = 0; i < K; ++i) to[i * step] = decay * from[i * step] + k_hat[i] * u;
}

// Work-group (column block, hv, n) of `cols` work-items. `shared` holds dS
// ([K][cols + 1]: with the padding, the row phase's work-items, a row each,
// read different local memory banks), q^, k^, the per-row dg shares (K
// each), and per column u, du, do and e du. Shares in
// partial[((b T + t) HV + hv) blocks + block]: dq^ (K), dk^ (K), dg, dbeta.
kernel void gdn_bwd_scan(global const x_t* q, long q_off, long4 q_st,
                         global const x_t* k, long k_off, long4 k_st,
                         global const x_t* v, long v_off, long4 v_st,
                         global const float* info,
                         global const x_t* d_o, long do_off, long4 do_st,
                         global x_t* dv, long dv_off, long4 dv_st,
                         global const float* init, long init_off, long4 init_st,
                         global const float* dfin, long dfin_off, long4 dfin_st,
                         global float* dh0, long dh0_off, long4 dh0_st,
                         global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                         global float* checkpoints, global float* recompute,
                         global float* partial,
                         long T, int H, int HV, int K, int V, int chunk, float scale,
                         local float* shared) {
  const int lid = get_local_id(0), cols = get_local_size(0);
  const int block = get_group_id(0), blocks = get_num_groups(0), hv = get_group_id(1);
  const long n = get_group_id(2);
  const int j0 = block * cols, j = j0 + lid, width = min(cols, V - j0), pitch = cols + 1;
  const bool owner = lid < width;
  const Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  const int h = hv / (HV / H);
  const long b = span.row, KV = (long)K * V;
  const long chunks = (span.end - span.begin + chunk - 1) / chunk;
  // The chunks' checkpoints take consecutive slots, disjoint between sequences.
  const long first_slot = n + (b * T + span.begin) / chunk;
  global float* states = recompute + (n * HV + hv) * chunk * KV;  // [chunk][K][V]
  local float* dS = shared;
  local float* q_hat = dS + K * pitch;
  local float* k_hat = q_hat + K;
  local float* dg_rows = k_hat + K;
  local float* u_cols = dg_rows + K;
  local float* du_cols = u_cols + cols;
  local float* do_cols = du_cols + cols;
  local float* e_du = do_cols + cols;
  const long qk_base = b * q_st.x + h * q_st.z, kk_base = b * k_st.x + h * k_st.z;
  const long v_base = v_off + b * v_st.x + hv * v_st.z + (owner ? j : 0) * v_st.w;

  // Forward: the state before each chunk into its checkpoint, running in states[0].
  if (owner) {
    for (int i = 0; i < K; ++i) {
      states[i * V + j] =
          init ? init[init_off + n * init_st.x + hv * init_st.y + i * init_st.z + j * init_st.w]
               : 0.0f;
    }
  }
  for (long c = 0; c < chunks; ++c) {
    global float* checkpoint = checkpoints + ((first_slot + c) * HV + hv) * KV;
    if (owner) {
      for (int i = 0; i < K; ++i) checkpoint[i * V + j] = states[i * V + j];
    }
    if (c + 1 == chunks) break;
    const long t0 = span.begin + c * chunk;
    for (long t = t0; t < t0 + chunk; ++t) {
      global const float* token = info + ((b * T + t) * HV + hv) * TOKEN_INFO;
      load_keys(q_hat, k_hat, q, q_off + qk_base + t * q_st.y, q_st.w, k,
                k_off + kk_base + t * k_st.y, k_st.w, token, K);
      if (owner) {
        advance(states + j, states + j, V, k_hat, K, token[0], token[1],
                LOAD_X(v, v_base + t * v_st.y));
      }
    }
  }

  for (int i = 0; i < K; ++i) {
    dS[i * pitch + lid] =
        owner && dfin ? dfin[dfin_off + n * dfin_st.x + hv * dfin_st.y + i * dfin_st.z +
                             j * dfin_st.w]
                      : 0.0f;
  }
  for (long c = chunks - 1; c >= 0; --c) {
    const long t0 = span.begin + c * chunk, t1 = min(t0 + chunk, span.end);
    // The chunk's token states again: states[t - t0] is the state before token t.
    global const float* checkpoint = checkpoints + ((first_slot + c) * HV + hv) * KV;
    if (owner) {
      for (int i = 0; i < K; ++i) states[i * V + j] = checkpoint[i * V + j];
    }
    for (long t = t0; t + 1 < t1; ++t) {
      global const float* token = info + ((b * T + t) * HV + hv) * TOKEN_INFO;
      load_keys(q_hat, k_hat, q, q_off + qk_base + t * q_st.y, q_st.w, k,
                k_off + kk_base + t * k_st.y, k_st.w, token, K);
      if (owner) {
        advance(states + (t - t0) * KV + j, states + (t - t0 + 1) * KV + j, V, k_hat, K, token[0],
                token[1], LOAD_X(v, v_base + t * v_st.y));
      }
    }
    for (long t = t1 - 1; t >= t0; --t) {
      global const float* token = info + ((b * T + t) * HV + hv) * TOKEN_INFO;
      const float decay = token[0], strength = token[1], key_query = token[4];
      load_keys(q_hat, k_hat, q, q_off + qk_base + t * q_st.y, q_st.w, k,
                k_off + kk_base + t * k_st.y, k_st.w, token, K);
      global const float* before = states + (t - t0) * KV;
      // Column phase: the column's u, du (dS^T k^ after dS += scale q^ do^T) and dv.
      if (owner) {
        float recalled = 0.0f, dS_k = 0.0f;
        for (int i = 0; i < K; ++i) {
          recalled += before[i * V + j] * k_hat[i];
          dS_k += dS[i * pitch + lid] * k_hat[i];
        }
        const float error = LOAD_X(v, v_base + t * v_st.y) - decay * recalled;
        const float d_out = LOAD_X(d_o, do_off + b * do_st.x + t * do_st.y + hv * do_st.z +
                                            j * do_st.w);
        const float du = dS_k + scale * key_query * d_out;
        STORE_X(dv, dv_off + b * dv_st.x + t * dv_st.y + hv * dv_st.z + j * dv_st.w,
                strength * du);
        u_cols[lid] = strength * error;
        du_cols[lid] = du;
        do_cols[lid] = d_out;
        e_du[lid] = error * du;
      }
      barrier(CLK_LOCAL_MEM_FENCE);
      // Row phase: a work-item per state row, over the block's columns.
      global float* share = partial + (((b * T + t) * HV + hv) * blocks + block) * (2 * K + 2);
      for (int i = lid; i < K; i += cols) {
        const float qi = q_hat[i], ki = k_hat[i];
        global const float* before_row = before + i * V + j0;
        local float* dS_row = dS + i * pitch;
        // Eight columns at a time as vectors (explicit SIMD for CPU devices), then the rest.
        float8 dq8 = (float8)(0.0f), dk8 = (float8)(0.0f), dg8 = (float8)(0.0f);
        int c2 = 0;
        for (; c2 + 8 <= width; c2 += 8) {
          const float8 u = vload8(0, u_cols + c2), du = vload8(0, du_cols + c2);
          const float8 d_out = vload8(0, do_cols + c2);
          const float8 decayed = decay * vload8(0, before_row + c2);
          const float8 d_after = vload8(0, dS_row + c2) + (scale * qi) * d_out;
          const float8 d_decayed = d_after - (strength * ki) * du;
          dq8 += (decayed + ki * u) * d_out;
          dk8 += d_after * u - strength * decayed * du;
          dg8 += d_decayed * decayed;
          vstore8(decay * d_decayed, 0, dS_row + c2);
        }
        float dq = sum8(dq8), dk = sum8(dk8), dg = sum8(dg8);
        for (; c2 < width; ++c2) {
          const float decayed = decay * before_row[c2];
          const float d_after = dS_row[c2] + scale * qi * do_cols[c2];
          const float d_decayed = d_after - strength * ki * du_cols[c2];
          dq += (decayed + ki * u_cols[c2]) * do_cols[c2];
          dk += d_after * u_cols[c2] - strength * decayed * du_cols[c2];
          dg += d_decayed * decayed;
          dS_row[c2] = decay * d_decayed;
        }
        share[i] = scale * dq;
        share[K + i] = dk;
        dg_rows[i] = dg;
      }
      barrier(CLK_LOCAL_MEM_FENCE);
      if (lid == 0) {
        float dg = 0.0f, dbeta = 0.0f;
        for (int i = 0; i < K; ++i) dg += dg_rows[i];
        for (int c2 = 0; c2 < width; ++c2) dbeta += e_du[c2];
        share[2 * K] = dg;
        share[2 * K + 1] = dbeta;
      }
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);  // the last row phase's dS
  if (dh0 && owner) {
    for (int i = 0; i < K; ++i) {
      dh0[dh0_off + n * dh0_st.x + hv * dh0_st.y + i * dh0_st.z + j * dh0_st.w] =
          dS[i * pitch + lid];
    }
  }
}

// Work-group (flat token b T + t, key head h): dq and dk of the token from the
// shares of its G value heads' column blocks (consecutive in `partial`), in
// order; with l2norm through the normalisation, dx = r (dx^ - x^ (x^ . dx^)).
// Then dg and dbeta of those value heads. `shared`: dq^ and dk^ (K each), then
// two sums per work-item.
kernel void gdn_bwd_reduce(global const float* partial, global const float* info,
                           global const x_t* q, long q_off, long4 q_st,
                           global const x_t* k, long k_off, long4 k_st,
                           global x_t* dq, long dq_off, long4 dq_st,
                           global x_t* dk, long dk_off, long4 dk_st,
                           global uchar* dg, long dg_off, int dg_dtype, long4 dg_st,
                           global uchar* dbeta, long dbeta_off, int dbeta_dtype, long4 dbeta_st,
                           long T, int H, int HV, int K, int blocks, int l2norm,
                           local float* shared) {
  const long bt = get_group_id(0);
  const int h = get_group_id(1), lid = get_local_id(0), size = get_local_size(0);
  const long b = bt / T, t = bt % T;
  const int G = HV / H;
  const long share_floats = 2 * K + 2;
  global const float* shares = partial + (bt * HV + h * G) * blocks * share_floats;
  global const float* token = info + (bt * HV + h * G) * TOKEN_INFO;
  const float rq = token[2], rk = token[3];
  local float* dq_hat = shared;
  local float* dk_hat = shared + K;
  local float* sums = shared + 2 * K;
  const long qo = q_off + b * q_st.x + t * q_st.y + h * q_st.z;
  const long ko = k_off + b * k_st.x + t * k_st.y + h * k_st.z;
  float q_projection = 0.0f, k_projection = 0.0f;
  for (int i = lid; i < K; i += size) {
    float sum_q = 0.0f, sum_k = 0.0f;
    for (int r = 0; r < G * blocks; ++r) {
      sum_q += shares[r * share_floats + i];
      sum_k += shares[r * share_floats + K + i];
    }
    dq_hat[i] = sum_q;
    dk_hat[i] = sum_k;
    q_projection += rq * LOAD_X(q, qo + i * q_st.w) * sum_q;
    k_projection += rk * LOAD_X(k, ko + i * k_st.w) * sum_k;
  }
  sums[lid] = q_projection;
  sums[size + lid] = k_projection;
  work_group_sum_pairs(sums, lid, size);
  for (int i = lid; i < K; i += size) {
    float grad_q = dq_hat[i], grad_k = dk_hat[i];
    if (l2norm) {
      grad_q = rq * (grad_q - rq * LOAD_X(q, qo + i * q_st.w) * sums[0]);
      grad_k = rk * (grad_k - rk * LOAD_X(k, ko + i * k_st.w) * sums[size]);
    }
    STORE_X(dq, dq_off + b * dq_st.x + t * dq_st.y + h * dq_st.z + i * dq_st.w, grad_q);
    STORE_X(dk, dk_off + b * dk_st.x + t * dk_st.y + h * dk_st.z + i * dk_st.w, grad_k);
  }
  for (int g = lid; g < G; g += size) {
    const int hv = h * G + g;
    float sum_g = 0.0f, sum_beta = 0.0f;
    for (int block = 0; block < blocks; ++block) {
      global const float* share = shares + (g * blocks + block) * share_floats;
      sum_g += share[2 * K];
      sum_beta += share[2 * K + 1];
    }
    store_any(dg, dg_off + b * dg_st.x + t * dg_st.y + hv * dg_st.z, dg_dtype, sum_g);
    store_any(dbeta, dbeta_off + b * dbeta_st.x + t * dbeta_st.y + hv * dbeta_st.z, dbeta_dtype,
              sum_beta);
  }
}
