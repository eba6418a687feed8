// gdn.cl: Gated DeltaNet forward (gdn_chunk_fwd) and decode (gdn_recurrent).
//
// Per sequence and value head, token by token (docs/OPS.md):
//   S = e^g S;  u = beta (v - S^T k);  S += k u^T;  o = scale S^T q
// With a = e^g and the old state S, o = scale (a S^T q + (k.q) u): both
// reductions read the old state, so a token is one read pass and one
// read-write pass over the state. Column j of S (all K rows) feeds only
// u_j and o_j, so a work-item owns one column and work-items never talk,
// except to share the token's q and k through local memory.
//
// gdn_prepare computes what every column of a token needs once per
// (token, value head): the decay (fused gate applied), beta (as beta_mode
// says) and, with key_stats, the l2 norms and q^.k^ (without, rq = rk = 1:
// gdn_chunk_rows.cl computes the norms from the rows it loads anyway). gdn_scan then walks the tokens. This token-recurrent form serves
// both ops (and, in gdn_bwd.cl, the backward); the chunked (WY) form of the
// CPU backend is not done here yet.

kernel void gdn_prepare(global const x_t* q, long q_off, long4 q_st,
                        global const x_t* k, long k_off, long4 k_st,
                        global const uchar* g, long g_off, int g_dtype, long4 g_st,
                        global const uchar* beta, long beta_off, int beta_dtype, long4 beta_st,
                        global const uchar* A_log, long A_log_off, int A_log_dtype, long A_log_st,
                        global const uchar* dt_bias, long dt_off, int dt_dtype, long dt_st,
                        global float* info, long B, long T, int H, int HV, int K, int l2norm,
                        int beta_mode, int key_stats) {
  const long item = get_global_id(0);
  if (item >= B * T * HV) return;
  const int hv = (int)(item % HV);
  const long t = item / HV % T, b = item / HV / T;
  const int h = hv / (HV / H);
  const long qo = q_off + b * q_st.x + t * q_st.y + h * q_st.z;
  const long ko = k_off + b * k_st.x + t * k_st.y + h * k_st.z;
  float qq = 0.0f, kk = 0.0f, kq = 0.0f;
  for (int i = 0; key_stats && i < K; ++i) {
    const float qi = LOAD_X(q, qo + i * q_st.w), ki = LOAD_X(k, ko + i * k_st.w);
    qq += qi * qi;
    kk += ki * ki;
    kq += qi * ki;
  }
  const float rq = l2norm && key_stats ? 1.0f / sqrt(qq + 1e-6f) : 1.0f;
  const float rk = l2norm && key_stats ? 1.0f / sqrt(kk + 1e-6f) : 1.0f;
  float log_decay = load_any(g, g_off + b * g_st.x + t * g_st.y + hv * g_st.z, g_dtype);
  float strength =
      load_any(beta, beta_off + b * beta_st.x + t * beta_st.y + hv * beta_st.z, beta_dtype);
  if (A_log_dtype >= 0) {  // the fused gate: g holds the raw a
    const float rate = exp(load_any(A_log, A_log_off + hv * A_log_st, A_log_dtype));
    const float bias = load_any(dt_bias, dt_off + hv * dt_st, dt_dtype);
    log_decay = -rate * softplus_f(log_decay + bias, 1.0f, 20.0f);
  }
  // beta_mode (resolved by the op): 0 as given, 1 sigmoid, 2 twice the sigmoid.
  if (beta_mode == 1) strength = sigmoid_f(strength);
  if (beta_mode == 2) strength = 2.0f * sigmoid_f(strength);
  global float* out = info + item * TOKEN_INFO;
  out[0] = exp(log_decay);
  out[1] = strength;
  out[2] = rq;
  out[3] = rk;
  out[4] = kq * rq * rk;
  out[5] = log_decay;
}

// Work-group (column tile, hv, n); `state` is the state worked on, with
// strides (index, hv, k step, v step): the pool itself for gdn_recurrent
// (in_place), final_state or scratch for gdn_chunk_fwd, which first copies
// `init` (or zeros) into it.
kernel void gdn_scan(global const x_t* q, long q_off, long4 q_st,
                     global const x_t* k, long k_off, long4 k_st,
                     global const x_t* v, long v_off, long4 v_st,
                     global const float* info,
                     global x_t* o, long o_off, long4 o_st,
                     global const float* init, long init_off, long4 init_st,
                     global float* state, long state_off, long4 state_st,
                     global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                     global const uchar* slots, long slots_off, long slots_stride, int slots_kind,
                     long T, long pool, int H, int HV, int K, int V, float scale, int in_place,
                     local float* shared) {
  const int lid = get_local_id(0), size = get_local_size(0);
  const int j = get_global_id(0), hv = get_group_id(1);
  const long n = get_group_id(2);
  // Uniform over the work-group, so returning keeps the barriers matched.
  const long slot = in_place ? state_slot(slots, slots_off, slots_stride, slots_kind, n, pool) : n;
  if (slot < 0) return;
  const Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  const int h = hv / (HV / H);
  const bool owner = j < V;
  const long k_step = state_st.z;
  global float* s =
      state + state_off + slot * state_st.x + hv * state_st.y + (owner ? j : 0) * state_st.w;
  if (!in_place && owner) {
    if (init) {
      global const float* s0 = init + init_off + n * init_st.x + hv * init_st.y + j * init_st.w;
      for (int i = 0; i < K; ++i) s[i * k_step] = s0[i * init_st.z];
    } else {
      for (int i = 0; i < K; ++i) s[i * k_step] = 0.0f;
    }
  }
  local float* q_hat = shared;
  local float* k_hat = shared + K;
  const long b = span.row;
  for (long t = span.begin; t < span.end; ++t) {
    global const float* token = info + ((b * T + t) * HV + hv) * TOKEN_INFO;
    const float decay = token[0], strength = token[1], key_query = token[4];
    barrier(CLK_LOCAL_MEM_FENCE);  // the previous token's readers are done
    const long qo = q_off + b * q_st.x + t * q_st.y + h * q_st.z;
    const long ko = k_off + b * k_st.x + t * k_st.y + h * k_st.z;
    for (int i = lid; i < K; i += size) {
      q_hat[i] = token[2] * LOAD_X(q, qo + i * q_st.w);
      k_hat[i] = token[3] * LOAD_X(k, ko + i * k_st.w);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (owner) {
      float state_k = 0.0f, state_q = 0.0f;
      for (int i = 0; i < K; ++i) {
        const float x = s[i * k_step];
        state_k += x * k_hat[i];
        state_q += x * q_hat[i];
      }
      const float vj = LOAD_X(v, v_off + b * v_st.x + t * v_st.y + hv * v_st.z + j * v_st.w);
      const float u = strength * (vj - decay * state_k);
      STORE_X(o, o_off + b * o_st.x + t * o_st.y + hv * o_st.z + j * o_st.w,
              scale * (decay * state_q + key_query * u));
      for (int i = 0; i < K; ++i) s[i * k_step] = decay * s[i * k_step] + k_hat[i] * u;
    }
  }
}

// ---- CPU devices ----------------------------------------------------------------
// A work-item owns PANEL neighbouring columns of one head's state as float16
// vectors (the state's v step is 1), so the state math is explicit SIMD,
// and it walks every token of its sequence alone: its K x PANEL panel
// (8 KiB at K=128) stays in the L1 cache from token to token. The state is
// the pool (in_place) or gdn_chunk_fwd's dense scratch, into which `init`
// is copied first and from which `fin` is copied last, in their own layouts.

#define PANEL 16

inline float16 gather_x16(global const x_t* p, long offset, long step) {
  float lanes[PANEL];
  for (int c = 0; c < PANEL; ++c) lanes[c] = LOAD_X(p, offset + c * step);
  return vload16(0, lanes);
}

inline void scatter_x16(global x_t* p, long offset, long step, float16 value) {
  float lanes[PANEL];
  vstore16(value, 0, lanes);
  for (int c = 0; c < PANEL; ++c) STORE_X(p, offset + c * step, lanes[c]);
}

// Row `row` of a panel after a token: decay, then add k_i (rk u)^T; returns it.
inline float16 update_row(global float* row, float decay, float key, float16 key_u) {
  const float16 x = decay * vload16(0, row) + key * key_u;
  vstore16(x, 0, row);
  return x;
}

kernel void gdn_scan_panels(global const x_t* q, long q_off, long4 q_st,
                            global const x_t* k, long k_off, long4 k_st,
                            global const x_t* v, long v_off, long4 v_st,
                            global const float* info,
                            global x_t* o, long o_off, long4 o_st,
                            global const float* init, long init_off, long4 init_st,
                            global float* fin, long fin_off, long4 fin_st,
                            global float* state, long state_off, long4 state_st,
                            global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                            global const uchar* slots, long slots_off, long slots_stride,
                            int slots_kind,
                            long T, long pool, int H, int HV, int K, int V, float scale,
                            int in_place) {
  const int j0 = get_global_id(0) * PANEL, hv = get_global_id(1);
  const long n = get_global_id(2);
  if (j0 >= V) return;
  const long slot = in_place ? state_slot(slots, slots_off, slots_stride, slots_kind, n, pool) : n;
  if (slot < 0) return;
  const Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  const int h = hv / (HV / H);
  const long k_step = state_st.z;
  global float* s = state + state_off + slot * state_st.x + hv * state_st.y + j0;
  if (!in_place) {
    for (int i = 0; i < K; ++i) {
      float16 row = (float16)(0.0f);
      if (init) {
        float lanes[PANEL];
        const long at = init_off + n * init_st.x + hv * init_st.y + i * init_st.z + j0 * init_st.w;
        for (int c = 0; c < PANEL; ++c) lanes[c] = init[at + c * init_st.w];
        row = vload16(0, lanes);
      }
      vstore16(row, 0, s + i * k_step);
    }
  }
  // One sweep over the panel per token: the update of token t fused with
  // the reductions of token t+1 (S^T k, S^T q with the raw k and q; the
  // norms apply after), so each row is loaded and stored once per token.
  const long b = span.row;
  float16 state_k = (float16)(0.0f), state_q = (float16)(0.0f);
  if (span.begin < span.end) {
    const long qo = q_off + b * q_st.x + span.begin * q_st.y + h * q_st.z;
    const long ko = k_off + b * k_st.x + span.begin * k_st.y + h * k_st.z;
    for (int i = 0; i < K; ++i) {
      const float16 x = vload16(0, s + i * k_step);
      state_k += x * LOAD_X(k, ko + i * k_st.w);
      state_q += x * LOAD_X(q, qo + i * q_st.w);
    }
  }
  for (long t = span.begin; t < span.end; ++t) {
    global const float* token = info + ((b * T + t) * HV + hv) * TOKEN_INFO;
    const float decay = token[0], strength = token[1], rq = token[2], rk = token[3];
    const float16 vj =
        gather_x16(v, v_off + b * v_st.x + t * v_st.y + hv * v_st.z + j0 * v_st.w, v_st.w);
    const float16 u = strength * (vj - (decay * rk) * state_k);
    scatter_x16(o, o_off + b * o_st.x + t * o_st.y + hv * o_st.z + j0 * o_st.w, o_st.w,
                scale * ((decay * rq) * state_q + token[4] * u));
    const float16 key_u = rk * u;  // k^ u^T = k (rk u)^T
    const long ko = k_off + b * k_st.x + t * k_st.y + h * k_st.z;
    if (t + 1 < span.end) {
      const long next_qo = q_off + b * q_st.x + (t + 1) * q_st.y + h * q_st.z;
      const long next_ko = k_off + b * k_st.x + (t + 1) * k_st.y + h * k_st.z;
      // Even and odd rows sum apart: two dependency chains per sum, not one.
      float16 odd_k = (float16)(0.0f), odd_q = (float16)(0.0f);
      state_k = (float16)(0.0f);
      state_q = (float16)(0.0f);
      int i = 0;
      for (; i + 1 < K; i += 2) {
        const float16 even = update_row(s + i * k_step, decay, LOAD_X(k, ko + i * k_st.w), key_u);
        const float16 odd =
            update_row(s + (i + 1) * k_step, decay, LOAD_X(k, ko + (i + 1) * k_st.w), key_u);
        state_k += even * LOAD_X(k, next_ko + i * k_st.w);
        state_q += even * LOAD_X(q, next_qo + i * q_st.w);
        odd_k += odd * LOAD_X(k, next_ko + (i + 1) * k_st.w);
        odd_q += odd * LOAD_X(q, next_qo + (i + 1) * q_st.w);
      }
      if (i < K) {
        const float16 even = update_row(s + i * k_step, decay, LOAD_X(k, ko + i * k_st.w), key_u);
        state_k += even * LOAD_X(k, next_ko + i * k_st.w);
        state_q += even * LOAD_X(q, next_qo + i * q_st.w);
      }
      state_k += odd_k;
      state_q += odd_q;
    } else {
      for (int i = 0; i < K; ++i) update_row(s + i * k_step, decay, LOAD_X(k, ko + i * k_st.w), key_u);
    }
  }
  if (fin) {
    for (int i = 0; i < K; ++i) {
      float lanes[PANEL];
      vstore16(vload16(0, s + i * k_step), 0, lanes);
      const long at = fin_off + n * fin_st.x + hv * fin_st.y + i * fin_st.z + j0 * fin_st.w;
      for (int c = 0; c < PANEL; ++c) fin[at + c * fin_st.w] = lanes[c];
    }
  }
}
