// attn.cl: the attention family, one program (its kernels share the
// sequence helpers): the portable kernels (attn_fwd for attn_prefill and
// attn_decode, attn_merge for decode's context splits, kv_cache_write, the
// backward's attn_bwd_*), then the CPU devices' (*_rows, explicit SIMD).
//
// Query rows are packed per key-value head: row f = u * G + g is query
// token u (flat over the batch) of query head hk * G + g, so the G heads
// that share a key-value head share its key tiles. A work-group takes R
// consecutive rows; where they span sequences it walks them one sequence
// (segment) at a time. Keys come in tiles of BK through local memory, with
// the online softmax (running max m, sum l) per row:
//   s = scale <q, k>,  m' = max(m, s),  l = l e^(m - m') + sum e^(s - m'),
//   o = o e^(m - m') + sum e^(s - m') v;  finally o / l, lse = m + ln l.
// Local rows are D + 1 floats apart, so the lanes of a score (one key each)
// hit different banks.

// A sequence as the kernels see it: its query tokens are flat tokens
// [u_begin, u_begin + Lq), at dim-1 index t_begin + i of batch row b; its
// keys are flat tokens [v_begin, v_begin + Lk), at dim-1 index k_begin + j
// of row b (prefill) or in the pages of sequence n (decode).
typedef struct {
  long n, b, u_begin, Lq, t_begin, v_begin, k_begin, Lk;
} Seq;

// The sequence of flat query token u (prefill: dense rows of Tq queries, or
// cu_seqlens_q over row 0; decode: rows of L = Tq new tokens). Device-resident
// offsets and lengths are clamped; a token that no clamped span holds is a
// sequence of its own without keys.
inline Seq query_sequence(long u, long Tq, long Tk, long N,
                          global const uchar* cu_q, long cu_q_off, long cu_q_stride, int cu_q_kind,
                          global const uchar* cu_k, long cu_k_off, long cu_k_stride, int cu_k_kind,
                          global const uchar* lens, long lens_off, long lens_stride, int lens_kind,
                          long max_len) {
  Seq s;
  if (cu_q_kind == 0) {
    s.n = u / Tq;
    s.b = s.n;
    s.u_begin = s.n * Tq;
    s.Lq = Tq;
    s.t_begin = 0;
    s.v_begin = s.n * Tk;
    s.k_begin = 0;
    s.Lk = lens_kind == 0 ? Tk : clamp(load_index(lens, lens_off, lens_stride, lens_kind, s.n), 0L, max_len);
    return s;
  }
  s.n = sequence_of(cu_q, cu_q_off, cu_q_stride, cu_q_kind, N, Tq, u);
  const Span queries = sequence_span(cu_q, cu_q_off, cu_q_stride, cu_q_kind, s.n, Tq);
  const Span keys = sequence_span(cu_k, cu_k_off, cu_k_stride, cu_k_kind, s.n, Tk);
  s.b = 0;
  const bool held = u >= queries.begin && u < queries.end;
  s.u_begin = held ? queries.begin : u;
  s.Lq = held ? queries.end - queries.begin : 1;
  s.t_begin = s.u_begin;
  s.v_begin = s.k_begin = keys.begin;
  s.Lk = held ? keys.end - keys.begin : 0;
  return s;
}

// The sequence of flat key token v (prefill only): dense rows of Tk keys, or
// cu_seqlens_k over row 0. A token that no clamped span holds is a sequence
// of its own without queries.
inline Seq key_sequence(long v, long Tq, long Tk, long N,
                        global const uchar* cu_q, long cu_q_off, long cu_q_stride, int cu_q_kind,
                        global const uchar* cu_k, long cu_k_off, long cu_k_stride, int cu_k_kind) {
  Seq s;
  if (cu_k_kind == 0) {
    s.n = v / Tk;
    s.b = s.n;
    s.u_begin = s.n * Tq;
    s.Lq = Tq;
    s.t_begin = 0;
    s.v_begin = s.n * Tk;
    s.k_begin = 0;
    s.Lk = Tk;
    return s;
  }
  s.n = sequence_of(cu_k, cu_k_off, cu_k_stride, cu_k_kind, N, Tk, v);
  const Span queries = sequence_span(cu_q, cu_q_off, cu_q_stride, cu_q_kind, s.n, Tq);
  const Span keys = sequence_span(cu_k, cu_k_off, cu_k_stride, cu_k_kind, s.n, Tk);
  s.b = 0;
  const bool held = v >= keys.begin && v < keys.end;
  s.u_begin = s.t_begin = queries.begin;
  s.Lq = held ? queries.end - queries.begin : 0;
  s.v_begin = s.k_begin = held ? keys.begin : v;
  s.Lk = held ? keys.end - keys.begin : 1;
  return s;
}

// The last key query i of a sequence sees, plus one (0: none).
inline long visible_keys(long i, long Lq, long Lk, int causal) {
  return causal ? clamp(i + Lk - Lq + 1, 0L, Lk) : Lk;
}

// Where key j of sequence s starts in a k or v tensor (strides st: row or
// block, token or block row, head, channel): dense rows, or the pages of
// block_table (table_kind != 0). -1 for a page outside the cache.
typedef struct {
  global const uchar* table;
  long table_off;
  long2 table_st;
  int table_kind;
  long num_blocks, block_size;
} Pages;

inline long key_offset(const Seq* s, long j, int hk, long off, long4 st, const Pages* pages) {
  if (pages->table_kind == 0) return off + s->b * st.x + (s->k_begin + j) * st.y + hk * st.z;
  const long block = load_index(pages->table, pages->table_off + s->n * pages->table_st.x,
                                pages->table_st.y, pages->table_kind, j / pages->block_size);
  if (block < 0 || block >= pages->num_blocks) return -1;
  return off + block * st.x + (j % pages->block_size) * st.y + hk * st.z;
}

// Work-group (row block, key-value head hk, context split). With splits > 1
// (decode) each split takes its share of every sequence's keys and leaves
// its normalised o and lse in `partial` ([splits][U][Hq][D + 1]) for
// attn_merge; otherwise o (gated) and lse are written here.
// `shared`: qs, os [R][D+1], kv [BK][D+1], sc [R][BK], m, l, alpha [R].
kernel void attn_fwd(global const x_t* q, long q_off, long4 q_st,
                     global const x_t* k, long k_off, long4 k_st,
                     global const x_t* v, long v_off, long4 v_st,
                     global const x_t* gate, long gate_off, long4 gate_st,
                     global x_t* o, long o_off, long4 o_st,
                     global float* lse, long lse_off, long4 lse_st,
                     global const uchar* cu_q, long cu_q_off, long cu_q_stride, int cu_q_kind,
                     global const uchar* cu_k, long cu_k_off, long cu_k_stride, int cu_k_kind,
                     global const uchar* lens, long lens_off, long lens_stride, int lens_kind,
                     global const uchar* table, long table_off, long2 table_st, int table_kind,
                     global float* partial,
                     long U, long Tq, long Tk, long N, long num_blocks, long block_size,
                     long max_len, int Hq, int Hkv, int D, float scale, int causal, int R, int BK,
                     int splits, local float* shared) {
  const int lid = get_local_id(0), size = get_local_size(0);
  const int hk = get_group_id(1), split = get_group_id(2);
  const int G = Hq / Hkv, DP = D + 1;
  local float* qs = shared;
  local float* os = qs + R * DP;
  local float* kv = os + R * DP;
  local float* sc = kv + BK * DP;
  local float* m = sc + R * BK;
  local float* l = m + R;
  local float* alpha = l + R;
  const Pages pages = {table, table_off, table_st, table_kind, num_blocks, block_size};
  const long f0 = (long)get_group_id(0) * R, f_end = min(f0 + R, U * G);
  for (long f = f0; f < f_end;) {
    const Seq s = query_sequence(f / G, Tq, Tk, N, cu_q, cu_q_off, cu_q_stride, cu_q_kind, cu_k,
                                 cu_k_off, cu_k_stride, cu_k_kind, lens, lens_off, lens_stride,
                                 lens_kind, max_len);
    const long seg_end = min(f_end, (s.u_begin + s.Lq) * G);
    const int ra = f - f0, rows = seg_end - f;
    // Row r of the segment: query i = (f + r) / G - u_begin of head hk G + (f + r) % G.
    for (int e = lid; e < rows * D; e += size) {
      const long row = f + e / D;
      const long t = s.t_begin + row / G - s.u_begin;
      const int h = hk * G + row % G, d = e % D;
      const int r = ra + e / D;
      qs[r * DP + d] = scale * LOAD_X(q, q_off + s.b * q_st.x + t * q_st.y + h * q_st.z + d * q_st.w);
      os[r * DP + d] = 0.0f;
    }
    for (int r = ra + lid; r < ra + rows; r += size) {
      m[r] = -INFINITY;
      l[r] = 0.0f;
    }
    // This split's keys, up to the last one the segment's last row sees.
    const long chunk = (s.Lk + splits - 1) / splits;
    const long k_begin = min(s.Lk, split * chunk);
    const long k_end = min(min(s.Lk, k_begin + chunk),
                           visible_keys((seg_end - 1) / G - s.u_begin, s.Lq, s.Lk, causal));
    for (long j0 = k_begin; j0 < k_end; j0 += BK) {
      const int count = min((long)BK, k_end - j0);
      barrier(CLK_LOCAL_MEM_FENCE);
      for (int e = lid; e < count * D; e += size) {
        const int jj = e / D, d = e % D;
        const long at = key_offset(&s, j0 + jj, hk, k_off, k_st, &pages);
        kv[jj * DP + d] = at >= 0 ? LOAD_X(k, at + d * k_st.w) : 0.0f;
      }
      barrier(CLK_LOCAL_MEM_FENCE);
      for (int p = lid; p < rows * BK; p += size) {
        const int r = ra + p / BK, jj = p % BK;
        const long i = (f + p / BK) / G - s.u_begin;
        float score = -INFINITY;
        if (jj < count && j0 + jj < visible_keys(i, s.Lq, s.Lk, causal) &&
            key_offset(&s, j0 + jj, hk, k_off, k_st, &pages) >= 0) {
          score = 0.0f;
          for (int d = 0; d < D; ++d) score += qs[r * DP + d] * kv[jj * DP + d];
        }
        sc[r * BK + jj] = score;
      }
      barrier(CLK_LOCAL_MEM_FENCE);
      // The tile's probabilities per row; meanwhile v replaces k.
      for (int r = ra + lid; r < ra + rows; r += size) {
        float top = m[r];
        for (int jj = 0; jj < count; ++jj) top = fmax(top, sc[r * BK + jj]);
        float sum = 0.0f;
        for (int jj = 0; jj < count; ++jj) {
          const float p = top == -INFINITY ? 0.0f : exp(sc[r * BK + jj] - top);
          sc[r * BK + jj] = p;
          sum += p;
        }
        const float rescale = m[r] == -INFINITY ? 0.0f : exp(m[r] - top);
        alpha[r] = rescale;
        l[r] = l[r] * rescale + sum;
        m[r] = top;
      }
      for (int e = lid; e < count * D; e += size) {
        const int jj = e / D, d = e % D;
        const long at = key_offset(&s, j0 + jj, hk, v_off, v_st, &pages);
        kv[jj * DP + d] = at >= 0 ? LOAD_X(v, at + d * v_st.w) : 0.0f;
      }
      barrier(CLK_LOCAL_MEM_FENCE);
      for (int e = lid; e < rows * D; e += size) {
        const int r = ra + e / D, d = e % D;
        float acc = os[r * DP + d] * alpha[r];
        for (int jj = 0; jj < count; ++jj) acc += sc[r * BK + jj] * kv[jj * DP + d];
        os[r * DP + d] = acc;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int e = lid; e < rows * D; e += size) {
      const long row = f + e / D;
      const long u = row / G, t = s.t_begin + u - s.u_begin;
      const int h = hk * G + row % G, d = e % D;
      const int r = ra + e / D;
      float value = l[r] > 0.0f ? os[r * DP + d] / l[r] : 0.0f;
      if (splits > 1) {
        partial[((split * U + u) * Hq + h) * DP + d] = value;
        continue;
      }
      if (gate) {
        value *= sigmoid_f(
            LOAD_X(gate, gate_off + s.b * gate_st.x + t * gate_st.y + h * gate_st.z + d * gate_st.w));
      }
      STORE_X(o, o_off + s.b * o_st.x + t * o_st.y + h * o_st.z + d * o_st.w, value);
    }
    for (int r = lid; r < rows; r += size) {
      const long row = f + r;
      const long u = row / G, t = s.t_begin + u - s.u_begin;
      const int h = hk * G + row % G;
      const float log_sum = l[ra + r] > 0.0f ? m[ra + r] + log(l[ra + r]) : -INFINITY;
      if (splits > 1) {
        partial[((split * U + u) * Hq + h) * DP + D] = log_sum;
      } else if (lse) {
        lse[lse_off + s.b * lse_st.x + h * lse_st.y + t * lse_st.z] = log_sum;
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);  // the next segment reuses the local arrays
    f = seg_end;
  }
}

// o of attn_decode from the splits' partial results, added in split order:
// o = sum_s e^(lse_s - M) o_s / sum_s e^(lse_s - M), M the largest lse_s.
// Work-item (d, u Hq + h); the rows of u are n = u / L, t = u % L.
kernel void attn_merge(global const float* partial, int splits, long U, int Hq, int D, long L,
                       global x_t* o, long o_off, long4 o_st) {
  const int d = get_global_id(0);
  const long row = get_global_id(1);
  if (d >= D || row >= U * Hq) return;
  const int DP = D + 1;
  const long step = U * Hq * DP;
  global const float* part = partial + row * DP;
  float top = -INFINITY;
  for (int s = 0; s < splits; ++s) top = fmax(top, part[s * step + D]);
  float value = 0.0f, weight = 0.0f;
  if (top != -INFINITY) {
    for (int s = 0; s < splits; ++s) {
      const float w = exp(part[s * step + D] - top);
      weight += w;
      value += w * part[s * step + d];
    }
    value /= weight;
  }
  const long u = row / Hq, n = u / L, t = u % L;
  const int h = row % Hq;
  STORE_X(o, o_off + n * o_st.x + t * o_st.y + h * o_st.z + d * o_st.w, value);
}

// kv_cache_write: work-item (d, t Hkv + h) copies one element of k and of
// v to slot slot_mapping[t]; slots outside [0, slots) (-1 among them) are
// skipped, so bad device-resident slots write nothing.
kernel void kv_cache_write(global const x_t* k, long k_off, long4 k_st,
                           global const x_t* v, long v_off, long4 v_st,
                           global x_t* k_cache, long kc_off, long4 kc_st,
                           global x_t* v_cache, long vc_off, long4 vc_st,
                           global const uchar* slots, long slots_off, long slots_stride,
                           int slots_kind, long T, int Hkv, int D, long block_size, long slot_count) {
  const int d = get_global_id(0);
  const long item = get_global_id(1);
  if (d >= D || item >= T * Hkv) return;
  const long t = item / Hkv;
  const int h = item % Hkv;
  const long slot = load_index(slots, slots_off, slots_stride, slots_kind, t);
  if (slot < 0 || slot >= slot_count) return;
  const long block = slot / block_size, row = slot % block_size;
  STORE_X(k_cache, kc_off + block * kc_st.x + row * kc_st.y + h * kc_st.z + d * kc_st.w,
          LOAD_X(k, k_off + t * k_st.x + h * k_st.y + d * k_st.z));
  STORE_X(v_cache, vc_off + block * vc_st.x + row * vc_st.y + h * vc_st.z + d * vc_st.w,
          LOAD_X(v, v_off + t * v_st.x + h * v_st.y + d * v_st.z));
}

// ---- attn_prefill_bwd ------------------------------------------------------------
// With g = sigmoid(gate) (1 without): Delta = <do, o>, dO = do g, and
// p = e^(s - lse), dp = <dO, v>, ds = p (dp - Delta):
//   dv_j = sum_i p_ij dO_i,  dk_j = scale sum_i ds_ij q_i,  dq_i = scale sum_j ds_ij k_j.
// attn_bwd_prep writes dgate, dO and Delta per (token, head); attn_bwd_dkdv
// sums over queries per key block and attn_bwd_dq over keys per row block,
// each in a fixed order: no atomics, the same bits on every run. Both keep
// their sums in registers, OWN elements per work-item (the host sizes the
// tiles so that a block's elements fit).

#define OWN 8

// Work-item (u Hq + h): dense rows or varlen row 0 both have b = u / Tq, t = u % Tq.
kernel void attn_bwd_prep(global const x_t* gate, long gate_off, long4 gate_st,
                          global const x_t* o, long o_off, long4 o_st,
                          global const x_t* d_o, long do_off, long4 do_st,
                          global x_t* dgate, long dgate_off, long4 dgate_st,
                          global float* dO, global float* delta, long U, long Tq, int Hq, int D) {
  const long item = get_global_id(0);
  if (item >= U * Hq) return;
  const long u = item / Hq, b = u / Tq, t = u % Tq;
  const int h = item % Hq;
  float sum = 0.0f;
  for (int d = 0; d < D; ++d) {
    const float grad = LOAD_X(d_o, do_off + b * do_st.x + t * do_st.y + h * do_st.z + d * do_st.w);
    const float out = LOAD_X(o, o_off + b * o_st.x + t * o_st.y + h * o_st.z + d * o_st.w);
    sum += grad * out;
    float g = 1.0f;
    if (gate) {
      g = sigmoid_f(
          LOAD_X(gate, gate_off + b * gate_st.x + t * gate_st.y + h * gate_st.z + d * gate_st.w));
    }
    if (dgate) {
      STORE_X(dgate, dgate_off + b * dgate_st.x + t * dgate_st.y + h * dgate_st.z + d * dgate_st.w,
              grad * out * (1.0f - g));
    }
    dO[item * D + d] = grad * g;
  }
  delta[item] = sum;
}

// The local rows of a query tile: q scaled, dO, lse and Delta.
#define LOAD_QUERY_ROWS(first, rows, skip)                                                     \
  for (int e = lid; e < (rows) * D; e += size) {                                              \
    const long row = (first) + e / D;                                                         \
    const long u = row / G, t = s.t_begin + u - s.u_begin;                                    \
    const int h = hk * G + row % G, d = e % D, r = (skip) + e / D;                            \
    qs[r * DP + d] =                                                                          \
        scale * LOAD_X(q, q_off + s.b * q_st.x + t * q_st.y + h * q_st.z + d * q_st.w);       \
    dos[r * DP + d] = dO[(u * Hq + h) * D + d];                                               \
  }                                                                                           \
  for (int e = lid; e < (rows); e += size) {                                                  \
    const long row = (first) + e;                                                             \
    const long u = row / G, t = s.t_begin + u - s.u_begin;                                    \
    const int h = hk * G + row % G;                                                           \
    lse_r[(skip) + e] = lse[lse_off + s.b * lse_st.x + h * lse_st.y + t * lse_st.z];          \
    delta_r[(skip) + e] = delta[u * Hq + h];                                                  \
  }

// p and ds of query row r (local) and key jj (local), 0 where j is not visible.
inline float2 probability(local const float* qs, local const float* dos, local const float* ks,
                          local const float* vs, int r, int jj, int DP, int D, float lse_i,
                          float delta_i) {
  if (lse_i == -INFINITY) return (float2)(0.0f);
  float score = 0.0f, dp = 0.0f;
  for (int d = 0; d < D; ++d) {
    score += qs[r * DP + d] * ks[jj * DP + d];
    dp += dos[r * DP + d] * vs[jj * DP + d];
  }
  const float p = exp(score - lse_i);
  return (float2)(p, p * (dp - delta_i));
}

// Work-group (key block of BK flat keys, hk): the block's dk and dv over
// every query row of its sequence that sees it, R packed rows at a time in
// ascending order. `shared`: ks, vs [BK][D+1], qs, dos [R][D+1], pr, ds
// [R][BK], lse_r, delta_r [R].
kernel void attn_bwd_dkdv(global const x_t* q, long q_off, long4 q_st,
                          global const x_t* k, long k_off, long4 k_st,
                          global const x_t* v, long v_off, long4 v_st,
                          global const float* lse, long lse_off, long4 lse_st,
                          global const uchar* cu_q, long cu_q_off, long cu_q_stride, int cu_q_kind,
                          global const uchar* cu_k, long cu_k_off, long cu_k_stride, int cu_k_kind,
                          global const float* dO, global const float* delta,
                          global x_t* dk, long dk_off, long4 dk_st,
                          global x_t* dv, long dv_off, long4 dv_st,
                          long V, long Tq, long Tk, long N, int Hq, int Hkv, int D, float scale,
                          int causal, int R, int BK, local float* shared) {
  const int lid = get_local_id(0), size = get_local_size(0);
  const int hk = get_group_id(1);
  const int G = Hq / Hkv, DP = D + 1;
  local float* ks = shared;
  local float* vs = ks + BK * DP;
  local float* qs = vs + BK * DP;
  local float* dos = qs + R * DP;
  local float* pr = dos + R * DP;
  local float* ds = pr + R * BK;
  local float* lse_r = ds + R * BK;
  local float* delta_r = lse_r + R;
  float dk_acc[OWN], dv_acc[OWN];
  for (int c = 0; c < OWN; ++c) dk_acc[c] = dv_acc[c] = 0.0f;
  const long v0 = (long)get_group_id(0) * BK, v_end = min(v0 + BK, V);
  for (long first = v0; first < v_end;) {
    const Seq s = key_sequence(first, Tq, Tk, N, cu_q, cu_q_off, cu_q_stride, cu_q_kind, cu_k,
                               cu_k_off, cu_k_stride, cu_k_kind);
    const long seg_end = min(v_end, s.v_begin + s.Lk);
    const int ka = first - v0, count = seg_end - first;
    const long j_a = first - s.v_begin;  // the segment's first key in its sequence
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int e = lid; e < count * D; e += size) {
      const int jj = ka + e / D, d = e % D;
      const long j = s.k_begin + j_a + e / D;
      ks[jj * DP + d] = LOAD_X(k, k_off + s.b * k_st.x + j * k_st.y + hk * k_st.z + d * k_st.w);
      vs[jj * DP + d] = LOAD_X(v, v_off + s.b * v_st.x + j * v_st.y + hk * v_st.z + d * v_st.w);
    }
    // The queries that see the segment's first key, in packed rows.
    const long i_first = causal ? clamp(j_a - (s.Lk - s.Lq), 0L, s.Lq) : 0;
    for (long f = (s.u_begin + i_first) * G; f < (s.u_begin + s.Lq) * G; f += R) {
      const int rows = min((long)R, (s.u_begin + s.Lq) * G - f);
      barrier(CLK_LOCAL_MEM_FENCE);
      LOAD_QUERY_ROWS(f, rows, 0)
      barrier(CLK_LOCAL_MEM_FENCE);
      for (int p = lid; p < rows * count; p += size) {
        const int r = p / count, jj = ka + p % count;
        const long i = (f + r) / G - s.u_begin;
        float2 pd = (float2)(0.0f);
        if (j_a + p % count < visible_keys(i, s.Lq, s.Lk, causal)) {
          pd = probability(qs, dos, ks, vs, r, jj, DP, D, lse_r[r], delta_r[r]);
        }
        pr[r * BK + jj] = pd.x;
        ds[r * BK + jj] = pd.y;
      }
      barrier(CLK_LOCAL_MEM_FENCE);
      for (int c = 0; c < OWN; ++c) {
        const int e = lid + c * size, jj = e / D, d = e % D;
        if (jj < ka || jj >= ka + count) continue;
        float dk_sum = dk_acc[c], dv_sum = dv_acc[c];
        for (int r = 0; r < rows; ++r) {
          dv_sum += pr[r * BK + jj] * dos[r * DP + d];
          dk_sum += ds[r * BK + jj] * qs[r * DP + d];
        }
        dk_acc[c] = dk_sum;
        dv_acc[c] = dv_sum;
      }
    }
    for (int c = 0; c < OWN; ++c) {
      const int e = lid + c * size, jj = e / D, d = e % D;
      if (jj < ka || jj >= ka + count) continue;
      const long j = s.k_begin + j_a + (jj - ka);
      STORE_X(dk, dk_off + s.b * dk_st.x + j * dk_st.y + hk * dk_st.z + d * dk_st.w, dk_acc[c]);
      STORE_X(dv, dv_off + s.b * dv_st.x + j * dv_st.y + hk * dv_st.z + d * dv_st.w, dv_acc[c]);
      dk_acc[c] = dv_acc[c] = 0.0f;
    }
    first = seg_end;
  }
}

// Work-group (row block of R packed rows, hk): dq of its rows over the keys
// they see, BK at a time in ascending order. `shared`: ks, vs [BK][D+1],
// qs, dos [R][D+1], ds [R][BK], lse_r, delta_r [R].
kernel void attn_bwd_dq(global const x_t* q, long q_off, long4 q_st,
                        global const x_t* k, long k_off, long4 k_st,
                        global const x_t* v, long v_off, long4 v_st,
                        global const float* lse, long lse_off, long4 lse_st,
                        global const uchar* cu_q, long cu_q_off, long cu_q_stride, int cu_q_kind,
                        global const uchar* cu_k, long cu_k_off, long cu_k_stride, int cu_k_kind,
                        global const float* dO, global const float* delta,
                        global x_t* dq, long dq_off, long4 dq_st,
                        long U, long Tq, long Tk, long N, int Hq, int Hkv, int D, float scale,
                        int causal, int R, int BK, local float* shared) {
  const int lid = get_local_id(0), size = get_local_size(0);
  const int hk = get_group_id(1);
  const int G = Hq / Hkv, DP = D + 1;
  local float* ks = shared;
  local float* vs = ks + BK * DP;
  local float* qs = vs + BK * DP;
  local float* dos = qs + R * DP;
  local float* ds = dos + R * DP;
  local float* lse_r = ds + R * BK;
  local float* delta_r = lse_r + R;
  float dq_acc[OWN];
  for (int c = 0; c < OWN; ++c) dq_acc[c] = 0.0f;
  const long f0 = (long)get_group_id(0) * R, f_end = min(f0 + R, U * G);
  for (long f = f0; f < f_end;) {
    const Seq s = query_sequence(f / G, Tq, Tk, N, cu_q, cu_q_off, cu_q_stride, cu_q_kind, cu_k,
                                 cu_k_off, cu_k_stride, cu_k_kind, 0, 0, 0, 0, 0);
    const long seg_end = min(f_end, (s.u_begin + s.Lq) * G);
    const int ra = f - f0, rows = seg_end - f;
    barrier(CLK_LOCAL_MEM_FENCE);
    LOAD_QUERY_ROWS(f, rows, ra)
    const long k_end = visible_keys((seg_end - 1) / G - s.u_begin, s.Lq, s.Lk, causal);
    for (long j0 = 0; j0 < k_end; j0 += BK) {
      const int count = min((long)BK, k_end - j0);
      barrier(CLK_LOCAL_MEM_FENCE);
      for (int e = lid; e < count * D; e += size) {
        const int jj = e / D, d = e % D;
        const long j = s.k_begin + j0 + jj;
        ks[jj * DP + d] = LOAD_X(k, k_off + s.b * k_st.x + j * k_st.y + hk * k_st.z + d * k_st.w);
        vs[jj * DP + d] = LOAD_X(v, v_off + s.b * v_st.x + j * v_st.y + hk * v_st.z + d * v_st.w);
      }
      barrier(CLK_LOCAL_MEM_FENCE);
      for (int p = lid; p < rows * count; p += size) {
        const int r = ra + p / count, jj = p % count;
        const long i = (f + p / count) / G - s.u_begin;
        float2 pd = (float2)(0.0f);
        if (j0 + jj < visible_keys(i, s.Lq, s.Lk, causal)) {
          pd = probability(qs, dos, ks, vs, r, jj, DP, D, lse_r[r], delta_r[r]);
        }
        ds[r * BK + jj] = pd.y;
      }
      barrier(CLK_LOCAL_MEM_FENCE);
      for (int c = 0; c < OWN; ++c) {
        const int e = lid + c * size, r = e / D, d = e % D;
        if (r < ra || r >= ra + rows) continue;
        float sum = dq_acc[c];
        for (int jj = 0; jj < count; ++jj) sum += ds[r * BK + jj] * ks[jj * DP + d];
        dq_acc[c] = sum;
      }
    }
    for (int c = 0; c < OWN; ++c) {
      const int e = lid + c * size, r = e / D, d = e % D;
      if (r < ra || r >= ra + rows) continue;
      const long row = f0 + r;
      const long t = s.t_begin + row / G - s.u_begin;
      const int h = hk * G + row % G;
      STORE_X(dq, dq_off + s.b * dq_st.x + t * dq_st.y + h * dq_st.z + d * dq_st.w,
              scale * dq_acc[c]);
      dq_acc[c] = 0.0f;
    }
    f = seg_end;
  }
}

// ---- CPU devices -------------------------------------------------------------------
// A work-item owns ROWS packed rows (q and the output sums in private
// arrays, D <= MAX_D, D % 16 == 0, unit channel steps) and walks the key
// tiles of its sequence, LANES keys at a time as float16 (explicit SIMD),
// TILE_ROWS rows at a time: their scores against the tile, the online
// softmax, then the tile's values added (one broadcast probability times 16
// channels per step). A tile is used by all ROWS rows while it is in the
// cache. Prefill reads the keys transposed by attn_pack_keys (one broadcast
// q element times 16 keys per step); decode reads the pages in place (dot
// products over the channels).

#define LANES 16
#define TILE_ROWS 8
#define ROWS 32
#define ITEM_KEYS 32  // attn_bwd_dkdv_rows: keys per work-item, LANES per group
#define MAX_D 256

// kv_cache_write on CPU devices: work-item (t Hkv + h) copies a whole row.
kernel void kv_cache_write_rows(global const x_t* k, long k_off, long4 k_st,
                                global const x_t* v, long v_off, long4 v_st,
                                global x_t* k_cache, long kc_off, long4 kc_st,
                                global x_t* v_cache, long vc_off, long4 vc_st,
                                global const uchar* slots, long slots_off, long slots_stride,
                                int slots_kind, long T, int Hkv, int D, long block_size,
                                long slot_count) {
  const long item = get_global_id(0);
  if (item >= T * Hkv) return;
  const long t = item / Hkv;
  const int h = item % Hkv;
  const long slot = load_index(slots, slots_off, slots_stride, slots_kind, t);
  if (slot < 0 || slot >= slot_count) return;
  const long block = slot / block_size, row = slot % block_size;
  const long kc_at = kc_off + block * kc_st.x + row * kc_st.y + h * kc_st.z;
  const long vc_at = vc_off + block * vc_st.x + row * vc_st.y + h * vc_st.z;
  const long k_at = k_off + t * k_st.x + h * k_st.y, v_at = v_off + t * v_st.x + h * v_st.y;
  for (int d = 0; d < D; ++d) {
    STORE_X(k_cache, kc_at + d * kc_st.w, LOAD_X(k, k_at + d * k_st.z));
    STORE_X(v_cache, vc_at + d * vc_st.w, LOAD_X(v, v_at + d * v_st.z));
  }
}

inline float max16(float16 x) {
  const float8 a = fmax(x.lo, x.hi);
  const float4 b = fmax(a.lo, a.hi);
  const float2 c = fmax(b.lo, b.hi);
  return fmax(c.x, c.y);
}

// Keys of every kv head as tiles of LANES flat keys, transposed and f32:
// kt[((hk tiles + tile) D + d) LANES + lane] (zero past the last key).
// Work-item (tile, hk).
kernel void attn_pack_keys(global const x_t* k, long k_off, long4 k_st, global float* kt,
                           long V, long Tk, long tiles, int D) {
  const long tile = get_global_id(0);
  const int hk = get_global_id(1);
  if (tile >= tiles) return;
  global float* out = kt + (hk * tiles + tile) * D * LANES;
  for (int lane = 0; lane < LANES; ++lane) {
    const long key = tile * LANES + lane, b = key / Tk, j = key % Tk;
    const long at = k_off + b * k_st.x + j * k_st.y + hk * k_st.z;
    for (int d = 0; d < D; ++d) out[d * LANES + lane] = key < V ? LOAD_X(k, at + d * k_st.w) : 0.0f;
  }
}

// The online softmax of one tile's scores s for rows r0.. r0 + TILE_ROWS - 1
// (lane keys `key`; keys outside [0, visible[r]) masked): m and l updated,
// the probabilities into p, the old sums' factors into alpha.
inline void online_softmax(const float16* s, float* m, float* l, const int* visible, int r0,
                           int16 key, float p[TILE_ROWS][LANES], float* alpha) {
#pragma unroll
  for (int r = 0; r < TILE_ROWS; ++r) {
    const float16 score = select((float16)(-INFINITY), s[r],
                                 key >= 0 && key < (int16)(visible[r0 + r]));
    const float top = fmax(m[r0 + r], max16(score));
    const float16 prob = top == -INFINITY ? (float16)(0.0f) : exp(score - top);
    alpha[r] = m[r0 + r] == -INFINITY ? 0.0f : exp(m[r0 + r] - top);
    l[r0 + r] = l[r0 + r] * alpha[r] + sum16(prob);
    m[r0 + r] = top;
    vstore16(prob, 0, p[r]);
  }
}

// sums of rows r0.. <- alpha sums + p values, the values of lanes [lo, hi)
// starting at v_at[lane] (-1: none) in a tensor of `type`, 16 channels read
// by `load16`.
#define ADD_VALUES(name, type, load16)                                                     \
  inline void name(float* sums, int r0, float p[TILE_ROWS][LANES], const float* alpha,    \
                   global const type* v, const long* v_at, int lo, int hi, int D) {        \
    for (int c = 0; c < D; c += LANES) {                                                  \
      float16 acc[TILE_ROWS];                                                             \
      _Pragma("unroll") for (int r = 0; r < TILE_ROWS; ++r) {                             \
        acc[r] = alpha[r] * vload16(0, sums + (r0 + r) * MAX_D + c);                      \
      }                                                                                   \
      for (int lane = lo; lane < hi; ++lane) {                                            \
        if (v_at[lane] < 0) continue;                                                     \
        const float16 value = load16(v, v_at[lane] + c);                                  \
        _Pragma("unroll") for (int r = 0; r < TILE_ROWS; ++r) acc[r] += p[r][lane] * value; \
      }                                                                                   \
      _Pragma("unroll") for (int r = 0; r < TILE_ROWS; ++r) {                             \
        vstore16(acc[r], 0, sums + (r0 + r) * MAX_D + c);                                 \
      }                                                                                   \
    }                                                                                     \
  }

#define LOAD16_F32(p, i) vload16(0, (p) + (i))
ADD_VALUES(add_values, x_t, LOAD16_X)          // decode: the pages in place
ADD_VALUES(add_packed_values, float, LOAD16_F32)  // prefill: attn_pack_values' rows

// Values of every kv head as f32 rows in tiles of LANES flat keys:
// vp[((hk tiles + tile) LANES + lane) D + d] (zero past the last key).
// Work-item (tile, hk).
kernel void attn_pack_values(global const x_t* v, long v_off, long4 v_st, global float* vp,
                             long V, long Tk, long tiles, int D) {
  const long tile = get_global_id(0);
  const int hk = get_global_id(1);
  if (tile >= tiles) return;
  global float* out = vp + (hk * tiles + tile) * LANES * D;
  for (int lane = 0; lane < LANES; ++lane) {
    const long key = tile * LANES + lane, b = key / Tk, j = key % Tk;
    const long at = v_off + b * v_st.x + j * v_st.y + hk * v_st.z;
    for (int d = 0; d < D; ++d) out[lane * D + d] = key < V ? LOAD_X(v, at + d * v_st.w) : 0.0f;
  }
}

// Prefill's scores of rows r0.. against a transposed key tile.
inline void transposed_scores(float16* s, const float* qr, int r0, global const float* kt_tile,
                              int D) {
  float16 acc[TILE_ROWS];  // in registers, unlike s
#pragma unroll
  for (int r = 0; r < TILE_ROWS; ++r) acc[r] = (float16)(0.0f);
  for (int d = 0; d < D; ++d) {
    const float16 keys = vload16(0, kt_tile + d * LANES);
#pragma unroll
    for (int r = 0; r < TILE_ROWS; ++r) acc[r] += qr[(r0 + r) * MAX_D + d] * keys;
  }
#pragma unroll
  for (int r = 0; r < TILE_ROWS; ++r) s[r] = acc[r];
}

// The largest visible[r] of rows r0.. r0 + TILE_ROWS - 1.
inline int most_visible(const int* visible, int r0) {
  int most = 0;
  for (int r = r0; r < r0 + TILE_ROWS; ++r) most = max(most, visible[r]);
  return most;
}

// The ROWS rows of an item from `first` (packed, of head hk's group) that
// are in [begin, end): q scaled into qr, the sums zeroed, visible[r] their
// visible keys (0 for rows outside), up to `cap`. Returns the largest.
inline int load_rows(float* qr, float* sums, float* m, float* l, int* visible, long first,
                     long begin, long end, const Seq* s, int G, int hk, global const x_t* q,
                     long q_off, long4 q_st, float scale, int causal, long cap, int D) {
  int most = 0;
  for (int r = 0; r < ROWS; ++r) {
    const long row = first + r;
    visible[r] = 0;
    m[r] = -INFINITY;
    l[r] = 0.0f;
    for (int d = 0; d < D; d += LANES) vstore16((float16)(0.0f), 0, sums + r * MAX_D + d);
    if (row < begin || row >= end) continue;
    const long t = s->t_begin + row / G - s->u_begin;
    const int h = hk * G + row % G;
    visible[r] = min(visible_keys(row / G - s->u_begin, s->Lq, s->Lk, causal), cap);
    most = max(most, visible[r]);
    const long at = q_off + s->b * q_st.x + t * q_st.y + h * q_st.z;
    for (int d = 0; d < D; d += LANES) vstore16(scale * LOAD16_X(q, at + d), 0, qr + r * MAX_D + d);
  }
  return most;
}

// attn_prefill on CPU devices: work-item (ROWS packed rows, hk).
kernel void attn_fwd_rows(global const x_t* q, long q_off, long4 q_st,
                          global const float* kt, global const float* vp, long tiles,
                          global const x_t* gate, long gate_off, long4 gate_st,
                          global x_t* o, long o_off, long4 o_st,
                          global float* lse, long lse_off, long4 lse_st,
                          global const uchar* cu_q, long cu_q_off, long cu_q_stride, int cu_q_kind,
                          global const uchar* cu_k, long cu_k_off, long cu_k_stride, int cu_k_kind,
                          long U, long Tq, long Tk, long N, int Hq, int Hkv, int D, float scale,
                          int causal) {
  const int G = Hq / Hkv, hk = get_global_id(1);
  const long f0 = get_global_id(0) * ROWS, f_end = min(f0 + ROWS, U * G);
  if (f0 >= f_end) return;
  float qr[ROWS * MAX_D], sums[ROWS * MAX_D], m[ROWS], l[ROWS];
  int visible[ROWS];
  const int16 lanes = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (long f = f0; f < f_end;) {
    const Seq s = query_sequence(f / G, Tq, Tk, N, cu_q, cu_q_off, cu_q_stride, cu_q_kind, cu_k,
                                 cu_k_off, cu_k_stride, cu_k_kind, 0, 0, 0, 0, 0);
    const long seg_end = min(f_end, (s.u_begin + s.Lq) * G);
    const int most = load_rows(qr, sums, m, l, visible, f0, f, seg_end, &s, G, hk, q, q_off, q_st,
                               scale, causal, s.Lk, D);
    // Flat key tiles: lane 0 of a tile is key `base` of the sequence (maybe < 0).
    for (long tile = s.v_begin / LANES; tile * LANES < s.v_begin + most; ++tile) {
      const long base = tile * LANES - s.v_begin;
      const int lo = max(0L, -base);
      long v_at[LANES];
      for (int lane = lo; lane < LANES; ++lane) v_at[lane] = ((hk * tiles + tile) * LANES + lane) * D;
      global const float* kt_tile = kt + (hk * tiles + tile) * D * LANES;
      for (int r0 = 0; r0 < ROWS; r0 += TILE_ROWS) {
        const int hi = min((long)LANES, most_visible(visible, r0) - base);
        if (hi <= lo) continue;
        float16 scores[TILE_ROWS];
        float p[TILE_ROWS][LANES], alpha[TILE_ROWS];
        transposed_scores(scores, qr, r0, kt_tile, D);
        online_softmax(scores, m, l, visible, r0, lanes + (int)base, p, alpha);
        add_packed_values(sums, r0, p, alpha, vp, v_at, lo, hi, D);
      }
    }
    for (long row = f; row < seg_end; ++row) {
      const int r = row - f0, h = hk * G + row % G;
      const long t = s.t_begin + row / G - s.u_begin;
      const float scale_out = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
      const long gate_at = gate_off + s.b * gate_st.x + t * gate_st.y + h * gate_st.z;
      const long o_at = o_off + s.b * o_st.x + t * o_st.y + h * o_st.z;
      for (int d = 0; d < D; d += LANES) {
        float16 value = scale_out * vload16(0, sums + r * MAX_D + d);
        if (gate) value *= 1.0f / (1.0f + exp(-LOAD16_X(gate, gate_at + d)));
        STORE16_X(o, o_at + d, value);
      }
      if (lse) {
        lse[lse_off + s.b * lse_st.x + h * lse_st.y + t * lse_st.z] =
            l[r] > 0.0f ? m[r] + log(l[r]) : -INFINITY;
      }
    }
    f = seg_end;
  }
}

// attn_decode on CPU devices: work-item (ROWS rows of sequence n's L G
// packed rows, hk, context split). Split boundaries fall on tiles; the
// results go to o, or with splits > 1 to `partial` for attn_merge.
kernel void attn_decode_rows(global const x_t* q, long q_off, long4 q_st,
                             global const x_t* k, long k_off, long4 k_st,
                             global const x_t* v, long v_off, long4 v_st,
                             global x_t* o, long o_off, long4 o_st,
                             global const uchar* lens, long lens_off, long lens_stride,
                             int lens_kind,
                             global const uchar* table, long table_off, long2 table_st,
                             int table_kind,
                             global float* partial, long N, long L, long num_blocks,
                             long block_size, long max_len, int Hq, int Hkv, int D, float scale,
                             int splits) {
  const int G = Hq / Hkv, hk = get_global_id(1), split = get_global_id(2);
  const long blocks = (L * G + ROWS - 1) / ROWS;
  const long n = get_global_id(0) / blocks;
  if (n >= N) return;
  const Seq s = query_sequence(n * L, L, 0, N, 0, 0, 0, 0, 0, 0, 0, 0, lens, lens_off, lens_stride,
                               lens_kind, max_len);
  const Pages pages = {table, table_off, table_st, table_kind, num_blocks, block_size};
  // Packed rows of this item, as flat rows u G + g.
  const long first = n * L * G + get_global_id(0) % blocks * ROWS;
  const long end = min(first + ROWS, (n + 1) * L * G);
  const long chunk = ((s.Lk + splits - 1) / splits + LANES - 1) / LANES * LANES;
  const long k_begin = min(s.Lk, split * chunk), k_end = min(s.Lk, k_begin + chunk);
  float qr[ROWS * MAX_D], sums[ROWS * MAX_D], m[ROWS], l[ROWS];
  int visible[ROWS];
  const int most = load_rows(qr, sums, m, l, visible, first, first, end, &s, G, hk, q, q_off,
                             q_st, scale, 1, k_end, D);
  const int16 lanes = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (long j0 = k_begin; j0 < most; j0 += LANES) {
    const int hi = min((long)LANES, most - j0);
    long k_at[LANES], v_at[LANES];
    for (int lane = 0; lane < hi; ++lane) {
      k_at[lane] = key_offset(&s, j0 + lane, hk, k_off, k_st, &pages);
      v_at[lane] = key_offset(&s, j0 + lane, hk, v_off, v_st, &pages);
    }
    for (int r0 = 0; r0 < ROWS; r0 += TILE_ROWS) {
      const int row_hi = min((long)LANES, most_visible(visible, r0) - j0);
      if (row_hi <= 0) continue;
      float score[TILE_ROWS][LANES];
      for (int lane = 0; lane < row_hi; ++lane) {
        float16 acc[TILE_ROWS];
#pragma unroll
        for (int r = 0; r < TILE_ROWS; ++r) acc[r] = (float16)(0.0f);
        if (k_at[lane] >= 0) {
          for (int c = 0; c < D; c += LANES) {
            const float16 key = LOAD16_X(k, k_at[lane] + c);
#pragma unroll
            for (int r = 0; r < TILE_ROWS; ++r) acc[r] += vload16(0, qr + (r0 + r) * MAX_D + c) * key;
          }
        }
#pragma unroll
        for (int r = 0; r < TILE_ROWS; ++r) {
          score[r][lane] = k_at[lane] >= 0 ? sum16(acc[r]) : -INFINITY;
        }
      }
      float16 scores[TILE_ROWS];
#pragma unroll
      for (int r = 0; r < TILE_ROWS; ++r) scores[r] = vload16(0, score[r]);
      float p[TILE_ROWS][LANES], alpha[TILE_ROWS];
      online_softmax(scores, m, l, visible, r0, lanes + (int)j0, p, alpha);
      add_values(sums, r0, p, alpha, v, v_at, 0, row_hi, D);
    }
  }
  for (long row = first; row < end; ++row) {
    const int r = row - first, h = hk * G + row % G;
    const long u = row / G, t = u - n * L;
    const float scale_out = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
    if (splits > 1) {
      global float* out = partial + ((split * N * L + u) * Hq + h) * (D + 1);
      for (int d = 0; d < D; ++d) out[d] = scale_out * sums[r * MAX_D + d];
      out[D] = l[r] > 0.0f ? m[r] + log(l[r]) : -INFINITY;
      continue;
    }
    const long o_at = o_off + n * o_st.x + t * o_st.y + h * o_st.z;
    for (int d = 0; d < D; d += LANES) {
      STORE16_X(o, o_at + d, scale_out * vload16(0, sums + r * MAX_D + d));
    }
  }
}

// ---- attn_prefill_bwd on CPU devices -------------------------------------------------
// After attn_bwd_prep (dO and Delta), attn_bwd_pack_rows lays out the packed
// query rows of each kv head for the key-side kernel: q (scaled) and dO as
// f32 rows, lse and Delta, padded to whole tiles of LANES rows.
// attn_bwd_dkdv_rows: work-item (ITEM_KEYS flat keys, hk) with its keys'
// k, v, dk and dv transposed in private arrays (groups of [D][LANES]: one
// float16 over a group's keys per channel); it walks the row tiles of its
// sequence in order, each tile serving every group while it is cached.
// Per tile, with the 16 rows' s, dp, p and ds as float16 over the keys:
//   s[r] = sum_d q[r][d] kT[d],  dp[r] = sum_d dO[r][d] vT[d],
//   dvT[d] += sum_r dO[r][d] p[r],  dkT[d] += sum_r q[r][d] ds[r]
// (one broadcast row element times 16 keys per step).
// attn_bwd_dq_rows: work-item (ROWS packed rows, hk) as attn_fwd_rows, with
// k and v transposed by attn_pack_keys: dq += ds k.

// Work-item (row tile, hk): qs, dos [hk][tiles LANES][D], lse_p, delta_p
// [hk][tiles LANES]; rows past U G are zero with lse -inf (no key seen).
kernel void attn_bwd_pack_rows(global const x_t* q, long q_off, long4 q_st,
                               global const float* lse, long lse_off, long4 lse_st,
                               global const float* dO, global const float* delta,
                               global float* qs, global float* dos, global float* lse_p,
                               global float* delta_p, long U, long Tq, long tiles, int Hq,
                               int Hkv, int D, float scale) {
  const long tile = get_global_id(0);
  const int hk = get_global_id(1), G = Hq / Hkv;
  if (tile >= tiles) return;
  for (int lane = 0; lane < LANES; ++lane) {
    const long row = tile * LANES + lane, u = row / G, b = u / Tq, t = u % Tq;
    const int h = hk * G + row % G;
    const bool real = u < U;
    const long at = q_off + b * q_st.x + t * q_st.y + h * q_st.z;
    global const float* grad = dO + (u * Hq + h) * D;
    const long packed = hk * tiles * LANES + row;
    for (int d = 0; d < D; ++d) {
      qs[packed * D + d] = real ? scale * LOAD_X(q, at + d * q_st.w) : 0.0f;
      dos[packed * D + d] = real ? grad[d] : 0.0f;
    }
    lse_p[packed] = real ? lse[lse_off + b * lse_st.x + h * lse_st.y + t * lse_st.z] : -INFINITY;
    delta_p[packed] = real ? delta[u * Hq + h] : 0.0f;
  }
}

// s[r] = sum_d rows[r][d] keys[d] for the LANES rows of a tile (row-major,
// D floats apart) against LANES keys transposed ([MAX_D][LANES]).
inline void row_scores(float16* s, global const float* rows, const float* keys, int D) {
  float16 acc[LANES];  // in registers, unlike s
#pragma unroll
  for (int r = 0; r < LANES; ++r) acc[r] = (float16)(0.0f);
  for (int d = 0; d < D; ++d) {
    const float16 key = vload16(0, keys + d * LANES);
#pragma unroll
    for (int r = 0; r < LANES; ++r) acc[r] += rows[r * D + d] * key;
  }
#pragma unroll
  for (int r = 0; r < LANES; ++r) s[r] = acc[r];
}

// sums[d] += sum_r rows[r][d] weights[r] over the channels.
inline void add_rows(float* sums, global const float* rows, const float16* weights, int D) {
  for (int d = 0; d < D; ++d) {
    float16 acc = vload16(0, sums + d * LANES);
#pragma unroll
    for (int r = 0; r < LANES; ++r) acc += rows[r * D + d] * weights[r];
    vstore16(acc, 0, sums + d * LANES);
  }
}

kernel void attn_bwd_dkdv_rows(global const x_t* k, long k_off, long4 k_st,
                               global const x_t* v, long v_off, long4 v_st,
                               global const float* qs, global const float* dos,
                               global const float* lse_p, global const float* delta_p,
                               long row_tiles,
                               global x_t* dk, long dk_off, long4 dk_st,
                               global x_t* dv, long dv_off, long4 dv_st,
                               global const uchar* cu_q, long cu_q_off, long cu_q_stride,
                               int cu_q_kind,
                               global const uchar* cu_k, long cu_k_off, long cu_k_stride,
                               int cu_k_kind,
                               long V, long Tq, long Tk, long N, int Hq, int Hkv, int D,
                               float scale, int causal) {
  const int G = Hq / Hkv, hk = get_global_id(1);
  const long v0 = get_global_id(0) * ITEM_KEYS, v_end = min(v0 + ITEM_KEYS, V);
  if (v0 >= v_end) return;
  // Group g of LANES keys at [g MAX_D LANES]: slot g LANES + lane.
  float kT[ITEM_KEYS * MAX_D], vT[ITEM_KEYS * MAX_D], dkT[ITEM_KEYS * MAX_D],
      dvT[ITEM_KEYS * MAX_D];
  const int16 lanes = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (long first = v0; first < v_end;) {
    const Seq s = key_sequence(first, Tq, Tk, N, cu_q, cu_q_off, cu_q_stride, cu_q_kind, cu_k,
                               cu_k_off, cu_k_stride, cu_k_kind);
    const long seg_end = min(v_end, s.v_begin + s.Lk);
    const int ka = first - v0, count = seg_end - first;
    const long j_a = first - s.v_begin;  // the segment's first key in its sequence
    // The segment's keys in their slots, zeros elsewhere.
    for (int slot = 0; slot < ITEM_KEYS; ++slot) {
      const bool mine = slot >= ka && slot < ka + count;
      const long j = s.k_begin + j_a + slot - ka;
      const long k_at = k_off + s.b * k_st.x + j * k_st.y + hk * k_st.z;
      const long v_at = v_off + s.b * v_st.x + j * v_st.y + hk * v_st.z;
      const int at = slot / LANES * MAX_D * LANES + slot % LANES;
      for (int d = 0; d < D; ++d) {
        kT[at + d * LANES] = mine ? LOAD_X(k, k_at + d * k_st.w) : 0.0f;
        vT[at + d * LANES] = mine ? LOAD_X(v, v_at + d * v_st.w) : 0.0f;
        dkT[at + d * LANES] = dvT[at + d * LANES] = 0.0f;
      }
    }
    // Packed rows [row_begin, row_end): the queries that see key j_a onwards.
    const long i_first = causal ? clamp(j_a - (s.Lk - s.Lq), 0L, s.Lq) : 0;
    const long row_begin = (s.u_begin + i_first) * G, row_end = (s.u_begin + s.Lq) * G;
    for (long tile = row_begin / LANES; tile * LANES < row_end; ++tile) {
      const long row0 = tile * LANES, packed = hk * row_tiles * LANES + row0;
      global const float* q_rows = qs + packed * D;
      global const float* do_rows = dos + packed * D;
      // Keys j < visible[r] are seen by row r (none outside the rows).
      long visible[LANES];
      for (int r = 0; r < LANES; ++r) {
        const long row = row0 + r;
        visible[r] = row >= row_begin && row < row_end && lse_p[packed + r] != -INFINITY
                         ? visible_keys(row / G - s.u_begin, s.Lq, s.Lk, causal)
                         : 0;
      }
      for (int g = 0; g < ITEM_KEYS / LANES; ++g) {
        const int lo = max(ka, g * LANES), hi = min(ka + count, (g + 1) * LANES);
        if (lo >= hi) continue;
        // Each lane's key in its sequence (-1 outside the segment).
        const int16 key = select((int16)(-1), lanes + (int)(g * LANES + j_a - ka),
                                 lanes >= lo - g * LANES && lanes < hi - g * LANES);
        const int base = g * MAX_D * LANES;
        float16 p[LANES], ds[LANES];
        row_scores(p, q_rows, kT + base, D);
        row_scores(ds, do_rows, vT + base, D);
#pragma unroll
        for (int r = 0; r < LANES; ++r) {
          const int16 mask = key >= 0 && key < (int16)(int)visible[r];
          p[r] = select((float16)(0.0f), exp(p[r] - lse_p[packed + r]), mask);
          ds[r] = p[r] * (ds[r] - delta_p[packed + r]);
        }
        add_rows(dvT + base, do_rows, p, D);
        add_rows(dkT + base, q_rows, ds, D);
      }
    }
    for (int slot = ka; slot < ka + count; ++slot) {
      const long j = s.k_begin + j_a + slot - ka;
      const long dk_at = dk_off + s.b * dk_st.x + j * dk_st.y + hk * dk_st.z;
      const long dv_at = dv_off + s.b * dv_st.x + j * dv_st.y + hk * dv_st.z;
      const int at = slot / LANES * MAX_D * LANES + slot % LANES;
      for (int d = 0; d < D; ++d) {
        STORE_X(dk, dk_at + d * dk_st.w, dkT[at + d * LANES]);  // q came scaled
        STORE_X(dv, dv_at + d * dv_st.w, dvT[at + d * LANES]);
      }
    }
    first = seg_end;
  }
}

kernel void attn_bwd_dq_rows(global const x_t* q, long q_off, long4 q_st,
                             global const x_t* k, long k_off, long4 k_st,
                             global const float* kt, global const float* vt, long tiles,
                             global const float* lse, long lse_off, long4 lse_st,
                             global const float* dO, global const float* delta,
                             global x_t* dq, long dq_off, long4 dq_st,
                             global const uchar* cu_q, long cu_q_off, long cu_q_stride,
                             int cu_q_kind,
                             global const uchar* cu_k, long cu_k_off, long cu_k_stride,
                             int cu_k_kind,
                             long U, long Tq, long Tk, long N, int Hq, int Hkv, int D, float scale,
                             int causal) {
  const int G = Hq / Hkv, hk = get_global_id(1);
  const long f0 = get_global_id(0) * ROWS, f_end = min(f0 + ROWS, U * G);
  if (f0 >= f_end) return;
  float qr[ROWS * MAX_D], dor[ROWS * MAX_D], sums[ROWS * MAX_D], m[ROWS], l[ROWS];
  float lse_r[ROWS], delta_r[ROWS];
  int visible[ROWS];
  const int16 lanes = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (long f = f0; f < f_end;) {
    const Seq s = query_sequence(f / G, Tq, Tk, N, cu_q, cu_q_off, cu_q_stride, cu_q_kind, cu_k,
                                 cu_k_off, cu_k_stride, cu_k_kind, 0, 0, 0, 0, 0);
    const long seg_end = min(f_end, (s.u_begin + s.Lq) * G);
    const int most = load_rows(qr, sums, m, l, visible, f0, f, seg_end, &s, G, hk, q, q_off, q_st,
                               scale, causal, s.Lk, D);
    for (int r = 0; r < ROWS; ++r) {
      const long row = f0 + r, u = row / G, t = s.t_begin + u - s.u_begin;
      const int h = hk * G + row % G;
      lse_r[r] = -INFINITY;
      delta_r[r] = 0.0f;
      if (visible[r] == 0) continue;
      lse_r[r] = lse[lse_off + s.b * lse_st.x + h * lse_st.y + t * lse_st.z];
      delta_r[r] = delta[u * Hq + h];
      for (int d = 0; d < D; d += LANES) {
        vstore16(vload16(0, dO + (u * Hq + h) * D + d), 0, dor + r * MAX_D + d);
      }
    }
    for (long tile = s.v_begin / LANES; tile * LANES < s.v_begin + most; ++tile) {
      const long base = tile * LANES - s.v_begin;
      const int lo = max(0L, -base);
      long k_at[LANES];
      for (int lane = lo; lane < LANES; ++lane) {
        k_at[lane] = k_off + s.b * k_st.x + (s.k_begin + base + lane) * k_st.y + hk * k_st.z;
      }
      const int16 key = lanes + (int)base;
      for (int r0 = 0; r0 < ROWS; r0 += TILE_ROWS) {
        const int hi = min((long)LANES, most_visible(visible, r0) - base);
        if (hi <= lo) continue;
        float16 sc[TILE_ROWS], dp[TILE_ROWS];
        transposed_scores(sc, qr, r0, kt + (hk * tiles + tile) * D * LANES, D);
        transposed_scores(dp, dor, r0, vt + (hk * tiles + tile) * D * LANES, D);
        float ds[TILE_ROWS][LANES];
#pragma unroll
        for (int r = 0; r < TILE_ROWS; ++r) {
          const int16 mask = key >= 0 && key < (int16)(visible[r0 + r]) &&
                             (int16)(lse_r[r0 + r] != -INFINITY ? -1 : 0);
          const float16 prob = select((float16)(0.0f), exp(sc[r] - lse_r[r0 + r]), mask);
          vstore16(prob * (dp[r] - delta_r[r0 + r]), 0, ds[r]);
        }
        for (int c = 0; c < D; c += LANES) {
          float16 acc[TILE_ROWS];
#pragma unroll
          for (int r = 0; r < TILE_ROWS; ++r) acc[r] = vload16(0, sums + (r0 + r) * MAX_D + c);
          for (int lane = lo; lane < hi; ++lane) {
            const float16 key_c = LOAD16_X(k, k_at[lane] + c);
#pragma unroll
            for (int r = 0; r < TILE_ROWS; ++r) acc[r] += ds[r][lane] * key_c;
          }
#pragma unroll
          for (int r = 0; r < TILE_ROWS; ++r) vstore16(acc[r], 0, sums + (r0 + r) * MAX_D + c);
        }
      }
    }
    for (long row = f; row < seg_end; ++row) {
      const int r = row - f0, h = hk * G + row % G;
      const long t = s.t_begin + row / G - s.u_begin;
      const long at = dq_off + s.b * dq_st.x + t * dq_st.y + h * dq_st.z;
      for (int d = 0; d < D; ++d) STORE_X(dq, at + d * dq_st.w, scale * sums[r * MAX_D + d]);
    }
    f = seg_end;
  }
}
