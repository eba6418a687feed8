// conv1d_bwd.cl: backward of conv1d_fwd (docs/OPS.md), channels last like
// conv1d.cl. With u[p] the input at position p of a sequence (a token for
// p >= 0, else its initial state's column L0 + p, else 0) and
// dpre[t] = dy[t] act'(pre[t]):
//   dx[p] = sum_j w[j] dpre[p+(W-1)-j]  (+ d_final_state where u[p] was copied)
//   dweight[j] = sum_t dpre[t] u[t-(W-1)+j],  dbias = sum_t dpre[t]
// Filters are right-aligned into MAX_WIDTH taps (tap m is w[m - (MAX_WIDTH - W)],
// zero before), so every window has the fixed width MAX_WIDTH and the
// windows below stay in registers, indexed by constants.

#define LAST (MAX_WIDTH - 1)

// One channel of one sequence: where its tokens, gradients and states are.
typedef struct {
  long n, begin, length;
  long x_base, x_step;        // x: token p at x_base + (begin + p) * x_step
  long dy_base, dy_step;      // dy: likewise
  long init_base, init_step;  // initial state column c at init_base + c * init_step
  long fin_base, fin_step;    // d_final_state column c
} Channel;

inline Channel channel_of(long n, Span span, long d, long x_off, long4 x_st, long dy_off,
                          long4 dy_st, long init_off, long4 init_st, long fin_off, long4 fin_st) {
  Channel c;
  c.n = n;
  c.begin = span.begin;
  c.length = span.end - span.begin;
  c.x_base = x_off + span.row * x_st.x + d * x_st.z;
  c.x_step = x_st.y;
  c.dy_base = dy_off + span.row * dy_st.x + d * dy_st.z;
  c.dy_step = dy_st.y;
  c.init_base = init_off + n * init_st.x + d * init_st.y;
  c.init_step = init_st.z;
  c.fin_base = fin_off + n * fin_st.x + d * fin_st.y;
  c.fin_step = fin_st.z;
  return c;
}

// u[p]; 0 past the sequence's end (never read for a gradient).
inline float input_at(global const x_t* x, global const uchar* init, int init_dtype, long L0,
                      const Channel* c, long p) {
  if (p >= 0) return p < c->length ? LOAD_X(x, c->x_base + (c->begin + p) * c->x_step) : 0.0f;
  if (init_dtype >= 0 && L0 + p >= 0) {
    return load_any(init, c->init_base + (L0 + p) * c->init_step, init_dtype);
  }
  return 0.0f;
}

// dpre[t] from window[m] = u[t - LAST + m]; 0 past the sequence's end.
inline float dpre_at(global const x_t* dy, const Channel* c, long t, const float* taps, float bias,
                     const float* window, int silu) {
  if (t >= c->length) return 0.0f;
  const float gradient = LOAD_X(dy, c->dy_base + (c->begin + t) * c->dy_step);
  if (!silu) return gradient;
  float pre = bias;
  for (int m = 0; m < MAX_WIDTH; ++m) pre += taps[m] * window[m];
  return gradient * silu_grad_f(pre);
}

// The gradient that d_final_state hands to u[p], if the forward copied u[p] there.
inline float final_state_gradient(global const uchar* fin, int fin_dtype, long L1, const Channel* c,
                                  long p) {
  const long column = p - c->length + L1;
  if (fin_dtype < 0 || column < 0 || column >= L1) return 0.0f;
  return load_any(fin, c->fin_base + column * c->fin_step, fin_dtype);
}

inline void load_right_aligned_taps(float* taps, global const uchar* w, long w_off, int w_dtype,
                                    long w_st0, long w_st1, long d, int W) {
  for (int m = 0; m < MAX_WIDTH; ++m) {
    const int j = m - (MAX_WIDTH - W);
    taps[m] = j >= 0 ? load_any(w, w_off + d * w_st0 + j * w_st1, w_dtype) : 0.0f;
  }
}

// Work-item (channel d, run of `tokens_per_item` tokens, row): dx of the run,
// and the run's share of the filter gradients in
// partial[((row * runs + run) * (MAX_WIDTH + 1) + m) * D + d]: right-aligned
// tap m, then the bias at m = MAX_WIDTH.
kernel void conv1d_bwd_tokens(global const x_t* x, long x_off, long4 x_st,
                              global const uchar* w, long w_off, int w_dtype, long w_st0,
                              long w_st1,
                              global const uchar* bias, long bias_off, int bias_dtype,
                              long bias_st,
                              global const uchar* init, long init_off, int init_dtype,
                              long4 init_st, long L0,
                              global const x_t* dy, long dy_off, long4 dy_st,
                              global const uchar* fin, long fin_off, int fin_dtype, long4 fin_st,
                              long L1,
                              global x_t* dx, long dx_off, long4 dx_st,
                              global float* partial,
                              global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                              long N, long T, long D, int W, int silu, int tokens_per_item) {
  const long d = get_global_id(0), run = get_global_id(1), row = get_global_id(2);
  const long first = run * tokens_per_item;
  if (d >= D || first >= T) return;
  float taps[MAX_WIDTH];
  load_right_aligned_taps(taps, w, w_off, w_dtype, w_st0, w_st1, d, W);
  const float b = bias_dtype >= 0 ? load_any(bias, bias_off + d * bias_st, bias_dtype) : 0.0f;
  // The sequence of token `first` (dense rows are their own: {row, 0, T}).
  long n = cu_kind != 0 ? sequence_of(cu, cu_off, cu_stride, cu_kind, N, T, first) : row;
  Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  // inputs[i] = u[p - LAST + i] and dpre[i] = dpre[p + i] around the token p.
  float inputs[2 * MAX_WIDTH - 1], dpre[MAX_WIDTH];
  float tap_sums[MAX_WIDTH] = {0.0f}, bias_sum = 0.0f;
  Channel c;
  bool fresh = true;  // windows to fill: the run's first token or a new sequence
  const long last = min(first + tokens_per_item, T);
  for (long t = first; t < last; ++t) {
    while (t >= span.end && n + 1 < N) {
      span = sequence_span(cu, cu_off, cu_stride, cu_kind, ++n, T);
      fresh = true;
    }
    const long p = t - span.begin;
    if (fresh) {
      c = channel_of(n, span, d, x_off, x_st, dy_off, dy_st, init_off, init_st, fin_off, fin_st);
      for (int i = 0; i < 2 * MAX_WIDTH - 1; ++i) {
        inputs[i] = input_at(x, init, init_dtype, L0, &c, p - LAST + i);
      }
      for (int i = 0; i < MAX_WIDTH; ++i) {
        dpre[i] = dpre_at(dy, &c, p + i, taps, b, inputs + i, silu);
      }
      fresh = false;
    } else {
      for (int i = 0; i < 2 * MAX_WIDTH - 2; ++i) inputs[i] = inputs[i + 1];
      inputs[2 * MAX_WIDTH - 2] = input_at(x, init, init_dtype, L0, &c, p + LAST);
      for (int i = 0; i < LAST; ++i) dpre[i] = dpre[i + 1];
      dpre[LAST] = dpre_at(dy, &c, p + LAST, taps, b, inputs + LAST, silu);
    }
    float gradient = final_state_gradient(fin, fin_dtype, L1, &c, p);
    for (int m = 0; m < MAX_WIDTH; ++m) gradient += taps[m] * dpre[LAST - m];
    STORE_X(dx, dx_off + row * dx_st.x + t * dx_st.y + d * dx_st.z, gradient);
    for (int m = 0; m < MAX_WIDTH; ++m) tap_sums[m] += dpre[0] * inputs[m];
    bias_sum += dpre[0];
  }
  global float* share = partial + (row * get_global_size(1) + run) * (MAX_WIDTH + 1) * D + d;
  for (int m = 0; m < MAX_WIDTH; ++m) share[m * D] = tap_sums[m];
  share[MAX_WIDTH * D] = bias_sum;
}

// conv1d_bwd_tokens for calls with seq_idx (dense rows, no states): tap m of
// token t reads u[t - LAST + m] only when that token has t's id, and a token
// with a negative id (padding, y = 0) has dpre = 0. Each dpre is recomputed
// where it is needed: a plain path for a rarer layout.
inline bool linked(global const uchar* ids, long ids_off, long ids_stride, int ids_kind, long row,
                   long T, long p, long t) {
  return p >= 0 && p < T &&
         load_index(ids, ids_off, ids_stride, ids_kind, row * T + p) ==
             load_index(ids, ids_off, ids_stride, ids_kind, row * T + t);
}

inline float dpre_linked(global const x_t* x, long xo, long x_step, global const x_t* dy, long dyo,
                         long dy_step, global const uchar* ids, long ids_off, long ids_stride,
                         int ids_kind, long row, long T, long t, const float* taps, float bias,
                         int silu) {
  if (t >= T || load_index(ids, ids_off, ids_stride, ids_kind, row * T + t) < 0) return 0.0f;
  const float gradient = LOAD_X(dy, dyo + t * dy_step);
  if (!silu) return gradient;
  float pre = bias;
  for (int m = 0; m < MAX_WIDTH; ++m) {
    const long p = t - LAST + m;
    if (linked(ids, ids_off, ids_stride, ids_kind, row, T, p, t)) {
      pre += taps[m] * LOAD_X(x, xo + p * x_step);
    }
  }
  return gradient * silu_grad_f(pre);
}

kernel void conv1d_bwd_tokens_ids(global const x_t* x, long x_off, long4 x_st,
                                  global const uchar* w, long w_off, int w_dtype, long w_st0,
                                  long w_st1,
                                  global const uchar* bias, long bias_off, int bias_dtype,
                                  long bias_st,
                                  global const x_t* dy, long dy_off, long4 dy_st,
                                  global x_t* dx, long dx_off, long4 dx_st,
                                  global float* partial,
                                  global const uchar* ids, long ids_off, long ids_stride,
                                  int ids_kind, long T, long D, int W, int silu,
                                  int tokens_per_item) {
  const long d = get_global_id(0), run = get_global_id(1), row = get_global_id(2);
  const long first = run * tokens_per_item;
  if (d >= D || first >= T) return;
  float taps[MAX_WIDTH];
  load_right_aligned_taps(taps, w, w_off, w_dtype, w_st0, w_st1, d, W);
  const float b = bias_dtype >= 0 ? load_any(bias, bias_off + d * bias_st, bias_dtype) : 0.0f;
  const long xo = x_off + row * x_st.x + d * x_st.z, dyo = dy_off + row * dy_st.x + d * dy_st.z;
  float tap_sums[MAX_WIDTH] = {0.0f}, bias_sum = 0.0f;
  const long last = min(first + tokens_per_item, T);
  for (long t = first; t < last; ++t) {
    // dx[t]: the taps of the later tokens of t's sequence that read it.
    float gradient = 0.0f;
    for (int m = 0; m < MAX_WIDTH; ++m) {
      const long s = t + LAST - m;  // the token whose tap m reads u[t]
      if (!linked(ids, ids_off, ids_stride, ids_kind, row, T, s, t)) continue;
      gradient += taps[m] * dpre_linked(x, xo, x_st.y, dy, dyo, dy_st.y, ids, ids_off,
                                        ids_stride, ids_kind, row, T, s, taps, b, silu);
    }
    STORE_X(dx, dx_off + row * dx_st.x + t * dx_st.y + d * dx_st.z, gradient);
    const float own = dpre_linked(x, xo, x_st.y, dy, dyo, dy_st.y, ids, ids_off, ids_stride,
                                  ids_kind, row, T, t, taps, b, silu);
    for (int m = 0; m < MAX_WIDTH; ++m) {
      const long p = t - LAST + m;
      if (linked(ids, ids_off, ids_stride, ids_kind, row, T, p, t)) {
        tap_sums[m] += own * LOAD_X(x, xo + p * x_st.y);
      }
    }
    bias_sum += own;
  }
  global float* share = partial + (row * get_global_size(1) + run) * (MAX_WIDTH + 1) * D + d;
  for (int m = 0; m < MAX_WIDTH; ++m) share[m * D] = tap_sums[m];
  share[MAX_WIDTH * D] = bias_sum;
}

// Work-item (channel d, row m of a share): the runs' shares added in run
// order into dweight (m a tap of the filter) or dbias (m = MAX_WIDTH).
kernel void conv1d_bwd_filter(global const float* partial, long runs, long D, int W,
                              global uchar* dw, long dw_off, int dw_dtype, long dw_st0,
                              long dw_st1,
                              global uchar* db, long db_off, int db_dtype, long db_st) {
  const long d = get_global_id(0);
  const int m = get_global_id(1);
  const int j = m - (MAX_WIDTH - W);
  if (d >= D || j < 0 || (m == MAX_WIDTH && db_dtype < 0)) return;
  float sum = 0.0f;
  for (long run = 0; run < runs; ++run) sum += partial[(run * (MAX_WIDTH + 1) + m) * D + d];
  if (m == MAX_WIDTH) {
    store_any(db, db_off + d * db_st, db_dtype, sum);
  } else {
    store_any(dw, dw_off + d * dw_st0 + j * dw_st1, dw_dtype, sum);
  }
}

// Work-item (channel d, column, sequence n): d_initial_state[n, d, column],
// the gradient of u[p] for p = column - L0 < 0: the taps of the first tokens
// that read it, and the final state's copy of it.
kernel void conv1d_bwd_initial_state(global const x_t* x, long x_off, long4 x_st,
                                     global const uchar* w, long w_off, int w_dtype, long w_st0,
                                     long w_st1,
                                     global const uchar* bias, long bias_off, int bias_dtype,
                                     long bias_st,
                                     global const uchar* init, long init_off, int init_dtype,
                                     long4 init_st, long L0,
                                     global const x_t* dy, long dy_off, long4 dy_st,
                                     global const uchar* fin, long fin_off, int fin_dtype,
                                     long4 fin_st, long L1,
                                     global uchar* dinit, long dinit_off, int dinit_dtype,
                                     long4 dinit_st,
                                     global const uchar* cu, long cu_off, long cu_stride,
                                     int cu_kind, long T, long D, int W, int silu) {
  const long d = get_global_id(0), column = get_global_id(1), n = get_global_id(2);
  if (d >= D || column >= L0) return;
  float taps[MAX_WIDTH];
  load_right_aligned_taps(taps, w, w_off, w_dtype, w_st0, w_st1, d, W);
  const float b = bias_dtype >= 0 ? load_any(bias, bias_off + d * bias_st, bias_dtype) : 0.0f;
  Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  const Channel c =
      channel_of(n, span, d, x_off, x_st, dy_off, dy_st, init_off, init_st, fin_off, fin_st);
  const long p = column - L0;
  float gradient = final_state_gradient(fin, fin_dtype, L1, &c, p);
  for (int m = 0; m < MAX_WIDTH; ++m) {
    const long t = p + LAST - m;  // the token whose tap m reads u[p]
    if (t < 0 || t >= c.length) continue;
    float window[MAX_WIDTH];
    for (int i = 0; i < MAX_WIDTH; ++i) {
      window[i] = input_at(x, init, init_dtype, L0, &c, t - LAST + i);
    }
    gradient += taps[m] * dpre_at(dy, &c, t, taps, b, window, silu);
  }
  store_any(dinit, dinit_off + n * dinit_st.x + d * dinit_st.y + column * dinit_st.z, dinit_dtype,
            gradient);
}

// ---- CPU devices ----------------------------------------------------------------
// conv1d_bwd_tokens with a work-item on LANES neighbouring channels as
// float16 vectors (x, dy and dx have channel stride 1): explicit SIMD.

#define LANES 16

inline float16 input_at16(global const x_t* x, global const uchar* init, int init_dtype, long L0,
                          long init_lane_step, const Channel* c, long p) {
  if (p >= 0) {
    return p < c->length ? LOAD16_X(x, c->x_base + (c->begin + p) * c->x_step) : (float16)(0.0f);
  }
  if (init_dtype >= 0 && L0 + p >= 0) {
    return gather_any16(init, c->init_base + (L0 + p) * c->init_step, init_lane_step, init_dtype);
  }
  return (float16)(0.0f);
}

inline float16 dpre_at16(global const x_t* dy, const Channel* c, long t, const float16* taps,
                         float16 bias, const float16* window, int silu) {
  if (t >= c->length) return (float16)(0.0f);
  const float16 gradient = LOAD16_X(dy, c->dy_base + (c->begin + t) * c->dy_step);
  if (!silu) return gradient;
  float16 pre = bias;
  for (int m = 0; m < MAX_WIDTH; ++m) pre += taps[m] * window[m];
  const float16 gate = 1.0f / (1.0f + exp(-pre));
  return gradient * gate * (1.0f + pre * (1.0f - gate));
}

kernel void conv1d_bwd_tokens_channels(global const x_t* x, long x_off, long4 x_st,
                                       global const uchar* w, long w_off, int w_dtype, long w_st0,
                                       long w_st1,
                                       global const uchar* bias, long bias_off, int bias_dtype,
                                       long bias_st,
                                       global const uchar* init, long init_off, int init_dtype,
                                       long4 init_st, long L0,
                                       global const x_t* dy, long dy_off, long4 dy_st,
                                       global const uchar* fin, long fin_off, int fin_dtype,
                                       long4 fin_st, long L1,
                                       global x_t* dx, long dx_off, long4 dx_st,
                                       global float* partial,
                                       global const uchar* cu, long cu_off, long cu_stride,
                                       int cu_kind, long N, long T, long D, int W, int silu,
                                       int tokens_per_item) {
  const long d0 = get_global_id(0) * LANES, run = get_global_id(1), row = get_global_id(2);
  const long first = run * tokens_per_item;
  if (d0 >= D || first >= T) return;
  float16 taps[MAX_WIDTH];
  for (int m = 0; m < MAX_WIDTH; ++m) {
    const int j = m - (MAX_WIDTH - W);
    taps[m] = j >= 0 ? gather_any16(w, w_off + d0 * w_st0 + j * w_st1, w_st0, w_dtype)
                     : (float16)(0.0f);
  }
  const float16 b = bias_dtype >= 0
                        ? gather_any16(bias, bias_off + d0 * bias_st, bias_st, bias_dtype)
                        : (float16)(0.0f);
  // The sequence of token `first` (dense rows are their own: {row, 0, T}).
  long n = cu_kind != 0 ? sequence_of(cu, cu_off, cu_stride, cu_kind, N, T, first) : row;
  Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  float16 inputs[2 * MAX_WIDTH - 1], dpre[MAX_WIDTH];
  float16 tap_sums[MAX_WIDTH], bias_sum = (float16)(0.0f);
  for (int m = 0; m < MAX_WIDTH; ++m) tap_sums[m] = (float16)(0.0f);
  Channel c;
  bool fresh = true;
  const long last = min(first + tokens_per_item, T);
  for (long t = first; t < last; ++t) {
    while (t >= span.end && n + 1 < N) {
      span = sequence_span(cu, cu_off, cu_stride, cu_kind, ++n, T);
      fresh = true;
    }
    const long p = t - span.begin;
    if (fresh) {
      c = channel_of(n, span, d0, x_off, x_st, dy_off, dy_st, init_off, init_st, fin_off, fin_st);
      for (int i = 0; i < 2 * MAX_WIDTH - 1; ++i) {
        inputs[i] = input_at16(x, init, init_dtype, L0, init_st.y, &c, p - LAST + i);
      }
      for (int i = 0; i < MAX_WIDTH; ++i) {
        dpre[i] = dpre_at16(dy, &c, p + i, taps, b, inputs + i, silu);
      }
      fresh = false;
    } else {
      for (int i = 0; i < 2 * MAX_WIDTH - 2; ++i) inputs[i] = inputs[i + 1];
      inputs[2 * MAX_WIDTH - 2] = input_at16(x, init, init_dtype, L0, init_st.y, &c, p + LAST);
      for (int i = 0; i < LAST; ++i) dpre[i] = dpre[i + 1];
      dpre[LAST] = dpre_at16(dy, &c, p + LAST, taps, b, inputs + LAST, silu);
    }
    float16 gradient = (float16)(0.0f);
    const long column = p - c.length + L1;
    if (fin_dtype >= 0 && column >= 0 && column < L1) {
      gradient = gather_any16(fin, c.fin_base + column * c.fin_step, fin_st.y, fin_dtype);
    }
    for (int m = 0; m < MAX_WIDTH; ++m) gradient += taps[m] * dpre[LAST - m];
    STORE16_X(dx, dx_off + row * dx_st.x + t * dx_st.y + d0, gradient);
    for (int m = 0; m < MAX_WIDTH; ++m) tap_sums[m] += dpre[0] * inputs[m];
    bias_sum += dpre[0];
  }
  global float* share = partial + (row * get_global_size(1) + run) * (MAX_WIDTH + 1) * D + d0;
  for (int m = 0; m < MAX_WIDTH; ++m) vstore16(tap_sums[m], 0, share + m * D);
  vstore16(bias_sum, 0, share + MAX_WIDTH * D);
}
