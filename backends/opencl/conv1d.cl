// conv1d.cl: depthwise causal conv1d, channels last ([B,T,D] views; the
// host passes [B,D,T] tensors with their dims swapped). A work-item owns one
// channel of a run of `tokens_per_item` tokens: neighbouring work-items read
// neighbouring channels, which GPUs coalesce and CPU devices vectorise.
//
// y[t,d] = act(bias[d] + sum_j w[d,j] x[t-(W-1)+j, d]); positions before a
// sequence's start come from its initial state (column L0 + p for p < 0),
// else zero. With seq_idx (ids of the B*T tokens, dense rows, no states) a
// tap reads x[p] only when p holds t's id, and a negative id gives y = 0.

// The filter of channel d, zero past W.
#define LOAD_TAPS(taps, w, w_off, w_dtype, w_st0, w_st1, d, W)                    \
  for (int j = 0; j < MAX_WIDTH; ++j) {                                           \
    taps[j] = j < W ? load_any(w, w_off + d * w_st0 + j * w_st1, w_dtype) : 0.0f; \
  }

kernel void conv1d_fwd(global const x_t* x, long x_off, long4 x_st,
                       global const uchar* w, long w_off, int w_dtype, long w_st0, long w_st1,
                       global const uchar* bias, long bias_off, int bias_dtype, long bias_st,
                       global const uchar* init, long init_off, int init_dtype, long4 init_st,
                       long L0,
                       global x_t* y, long y_off, long4 y_st,
                       global const uchar* cu, long cu_off, long cu_stride, int cu_kind, long N,
                       long T, long D, int W, int silu, int tokens_per_item,
                       global const uchar* ids, long ids_off, long ids_stride, int ids_kind) {
  const long d = get_global_id(0), row = get_global_id(2);
  const long first = get_global_id(1) * tokens_per_item;
  if (d >= D || first >= T) return;
  float taps[MAX_WIDTH];
  LOAD_TAPS(taps, w, w_off, w_dtype, w_st0, w_st1, d, W);
  const float b = bias_dtype >= 0 ? load_any(bias, bias_off + d * bias_st, bias_dtype) : 0.0f;
  // The sequence of token `first` (dense rows are their own: {row, 0, T}).
  long n = cu_kind != 0 ? sequence_of(cu, cu_off, cu_stride, cu_kind, N, T, first) : row;
  Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  const long last = min(first + tokens_per_item, T);
  for (long t = first; t < last; ++t) {
    while (t >= span.end && n + 1 < N) span = sequence_span(cu, cu_off, cu_stride, cu_kind, ++n, T);
    const long id = ids_kind != 0 ? load_index(ids, ids_off, ids_stride, ids_kind, row * T + t) : 0;
    if (id < 0) {
      STORE_X(y, y_off + row * y_st.x + t * y_st.y + d * y_st.z, 0.0f);
      continue;
    }
    float acc = b;
    for (int j = 0; j < W; ++j) {
      const long p = t - (W - 1) + j;  // a token of this row; before span.begin: the state
      float input = 0.0f;
      if (ids_kind != 0 && (p < 0 || load_index(ids, ids_off, ids_stride, ids_kind, row * T + p) != id)) {
        continue;  // another sequence's token
      } else if (p >= span.begin) {
        input = LOAD_X(x, x_off + row * x_st.x + p * x_st.y + d * x_st.z);
      } else if (init_dtype >= 0 && L0 + (p - span.begin) >= 0) {
        const long column = L0 + p - span.begin;
        input = load_any(init, init_off + n * init_st.x + d * init_st.y + column * init_st.z,
                         init_dtype);
      }
      acc += taps[j] * input;
    }
    STORE_X(y, y_off + row * y_st.x + t * y_st.y + d * y_st.z, silu ? silu_f(acc) : acc);
  }
}

// Final state column c of sequence n holds position len - L1 + c: a token,
// an initial-state column, or zero for a sequence shorter than L1.
kernel void conv1d_final_state(global const x_t* x, long x_off, long4 x_st,
                               global const uchar* init, long init_off, int init_dtype,
                               long4 init_st,
                               long L0,
                               global uchar* fin, long fin_off, int fin_dtype, long4 fin_st,
                               long L1,
                               global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                               long T, long D) {
  const long d = get_global_id(0), c = get_global_id(1), n = get_global_id(2);
  if (d >= D || c >= L1) return;
  Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  const long p = span.end - span.begin - L1 + c;
  float value = 0.0f;
  if (p >= 0) {
    value = LOAD_X(x, x_off + span.row * x_st.x + (span.begin + p) * x_st.y + d * x_st.z);
  } else if (init_dtype >= 0 && L0 + p >= 0) {
    const long column = L0 + p;
    value =
        load_any(init, init_off + n * init_st.x + d * init_st.y + column * init_st.z, init_dtype);
  }
  store_any(fin, fin_off + n * fin_st.x + d * fin_st.y + c * fin_st.z, fin_dtype, value);
}

// Decode: work-item (d, n) runs sequence n's L tokens through channel d of
// its state slot, then shifts the slot in place by L; or, with cache_seqlens
// (`seen`), reads the W-1 columns before column seen[n] % SL of the circular
// slot and writes token t to column (seen[n] + t) % SL. A skipped sequence's
// y is left, or 0 with zero_skipped.
kernel void conv1d_update(global const x_t* x, long x_off, long4 x_st,
                          global uchar* state, long state_off, int state_dtype, long4 state_st,
                          long SL,
                          global const uchar* w, long w_off, int w_dtype, long w_st0, long w_st1,
                          global const uchar* bias, long bias_off, int bias_dtype, long bias_st,
                          global x_t* y, long y_off, long4 y_st,
                          global const uchar* slots, long slots_off, long slots_stride,
                          int slots_kind,
                          long S, long N, long L, long D, int W, int silu,
                          global const uchar* seen, long seen_off, long seen_stride,
                          int seen_kind, int zero_skipped) {
  const long d = get_global_id(0), n = get_global_id(1);
  if (d >= D || n >= N) return;
  const long slot = state_slot(slots, slots_off, slots_stride, slots_kind, n, S);
  if (slot < 0) {
    if (zero_skipped) {
      for (long t = 0; t < L; ++t) STORE_X(y, y_off + n * y_st.x + t * y_st.y + d * y_st.z, 0.0f);
    }
    return;
  }
  float taps[MAX_WIDTH];
  LOAD_TAPS(taps, w, w_off, w_dtype, w_st0, w_st1, d, W);
  const float b = bias_dtype >= 0 ? load_any(bias, bias_off + d * bias_st, bias_dtype) : 0.0f;
  const long base = state_off + slot * state_st.x + d * state_st.y;
  const long xo = x_off + n * x_st.x + d * x_st.z;
  if (seen_kind != 0) {
    // Device-resident counts are not validated: taken into [0, SL) here.
    const long start = (load_index(seen, seen_off, seen_stride, seen_kind, n) % SL + SL) % SL;
    float window[MAX_WIDTH];  // the last W inputs, oldest first
    for (int i = 0; i < W - 1; ++i) {
      window[i] = load_any(state, base + ((start - (W - 1) + i + SL) % SL) * state_st.z, state_dtype);
    }
    for (long t = 0; t < L; ++t) {
      const float token = LOAD_X(x, xo + t * x_st.y);
      window[W - 1] = token;
      float acc = b;
      for (int j = 0; j < W; ++j) acc += taps[j] * window[j];
      STORE_X(y, y_off + n * y_st.x + t * y_st.y + d * y_st.z, silu ? silu_f(acc) : acc);
      for (int j = 0; j + 1 < W; ++j) window[j] = window[j + 1];
      store_any(state, base + ((start + t) % SL) * state_st.z, state_dtype, token);
    }
    return;
  }
  // Window position p: state column p for p < SL, else token p - SL.
#define WINDOW(p)                                                  \
  ((p) < SL ? load_any(state, base + (p) * state_st.z, state_dtype) \
            : LOAD_X(x, xo + ((p) - SL) * x_st.y))
  for (long t = 0; t < L; ++t) {
    float acc = b;
    for (int j = 0; j < W; ++j) acc += taps[j] * WINDOW(SL + t - (W - 1) + j);
    STORE_X(y, y_off + n * y_st.x + t * y_st.y + d * y_st.z, silu ? silu_f(acc) : acc);
  }
  // Ascending, each column reads one at or to its right that is not yet overwritten.
  for (long c = 0; c < SL; ++c) store_any(state, base + c * state_st.z, state_dtype, WINDOW(L + c));
#undef WINDOW
}

// ---- CPU devices ----------------------------------------------------------------
// conv1d_fwd with a work-item on CHANNELS neighbouring channels as float16
// vectors (x and y have channel stride 1): explicit SIMD, as a CPU wants it.

#define CHANNELS 16

kernel void conv1d_fwd_channels(global const x_t* x, long x_off, long4 x_st,
                                global const uchar* w, long w_off, int w_dtype, long w_st0,
                                long w_st1,
                                global const uchar* bias, long bias_off, int bias_dtype,
                                long bias_st,
                                global const uchar* init, long init_off, int init_dtype,
                                long4 init_st,
                                long L0,
                                global x_t* y, long y_off, long4 y_st,
                                global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                                long N,
                                long T, long D, int W, int silu, int tokens_per_item) {
  const long d0 = get_global_id(0) * CHANNELS, row = get_global_id(2);
  const long first = get_global_id(1) * tokens_per_item;
  if (d0 >= D || first >= T) return;
  float16 taps[MAX_WIDTH];
  for (int j = 0; j < MAX_WIDTH; ++j) {
    taps[j] = j < W ? gather_any16(w, w_off + d0 * w_st0 + j * w_st1, w_st0, w_dtype)
                    : (float16)(0.0f);
  }
  const float16 b = bias_dtype >= 0
                        ? gather_any16(bias, bias_off + d0 * bias_st, bias_st, bias_dtype)
                        : (float16)(0.0f);
  // The sequence of token `first` (dense rows are their own: {row, 0, T}).
  long n = cu_kind != 0 ? sequence_of(cu, cu_off, cu_stride, cu_kind, N, T, first) : row;
  Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
  const long x_row = x_off + row * x_st.x + d0, y_row = y_off + row * y_st.x + d0;
  const long last = min(first + tokens_per_item, T);
  for (long t = first; t < last; ++t) {
    while (t >= span.end && n + 1 < N) span = sequence_span(cu, cu_off, cu_stride, cu_kind, ++n, T);
    float16 acc = b;
    for (int j = 0; j < W; ++j) {
      const long p = t - (W - 1) + j;
      float16 input = (float16)(0.0f);
      if (p >= span.begin) {
        input = LOAD16_X(x, x_row + p * x_st.y);
      } else if (init_dtype >= 0 && L0 + (p - span.begin) >= 0) {
        const long column = L0 + p - span.begin;
        input = gather_any16(init, init_off + n * init_st.x + d0 * init_st.y + column * init_st.z,
                             init_st.y, init_dtype);
      }
      acc += taps[j] * input;
    }
    STORE16_X(y, y_row + t * y_st.y, silu ? silu_f16(acc) : acc);
  }
}
