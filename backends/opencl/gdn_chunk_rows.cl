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
// in register tiles of 8 rows x 32 columns (two float16 vectors; K and V are
// multiples of 16), column tiles outermost so that the right operand's tile
// stays in L1. PoCL then has nothing to vectorise across work-items (its
// work-groups here are one work-item) and runs each product at SIMD width
// from the L1/L2-resident blocks of the work-item's scratch.
//
// A work-item's scratch (floats, `per_worker` apart): the states of its
// value heads ([group][K][V]), Q^ and K^ ([RC][K] each), K^ transposed
// ([K][RC]), Q^K^T and K^K^T ([RC][RC] each), R = [-beta gamma k^ | beta v]
// and WU = [W | U] ([RC][K + V] each), O' ([RC][V]), T (in place of A) and P
// ([RC][RC] each). Work-items take their items `workers` apart, so the
// scratch is bounded whatever the number of sequences.

#define RC 64  // tokens per chunk: kRowsChunk in gdn_chunk.cpp

// A tile of a small GEMM: rows [0, rows) (at most TILE_ROWS) of
//   out = init_scale init + A B,  A_rm = a[r a_row + m a_col] (m < count)
// for the columns [c0, c0 + 32) of B (rows ldb apart), the second vector only
// where width allows; init_scale[r] scales row r of init (absent: 0). The
// caller walks column tiles outermost, so B's count x 32 tile stays in L1
// across the row tiles. Whole tiles take a loop without guards.
#define TILE_ROWS 8
inline void tile(global float* out, int ldo, global const float* init, int ldi,
                 const float* init_scale, global const float* a, int a_row, int a_col, int rows,
                 int count, global const float* b, int ldb, int c0, int width) {
  const bool two = c0 + 16 < width;
  float16 acc[TILE_ROWS][2];
#pragma unroll
  for (int r = 0; r < TILE_ROWS; ++r) {
    const bool in = init && r < rows;
    acc[r][0] = in ? init_scale[r] * vload16(0, init + r * ldi + c0) : (float16)(0.0f);
    acc[r][1] = in && two ? init_scale[r] * vload16(0, init + r * ldi + c0 + 16) : (float16)(0.0f);
  }
  if (rows == TILE_ROWS && two) {
    for (int m = 0; m < count; ++m) {
      global const float* row = b + (long)m * ldb + c0;
      const float16 b0 = vload16(0, row), b1 = vload16(0, row + 16);
      global const float* column = a + m * a_col;
#pragma unroll
      for (int r = 0; r < TILE_ROWS; ++r) {
        const float w = column[r * a_row];
        acc[r][0] += w * b0;
        acc[r][1] += w * b1;
      }
    }
  } else {
    for (int m = 0; m < count; ++m) {
      global const float* row = b + (long)m * ldb + c0;
      const float16 b0 = vload16(0, row);
      const float16 b1 = two ? vload16(0, row + 16) : (float16)(0.0f);
#pragma unroll
      for (int r = 0; r < TILE_ROWS; ++r) {
        const float w = r < rows ? a[r * a_row + m * a_col] : 0.0f;
        acc[r][0] += w * b0;
        acc[r][1] += w * b1;
      }
    }
  }
#pragma unroll
  for (int r = 0; r < TILE_ROWS; ++r) {
    if (r < rows) {
      vstore16(acc[r][0], 0, out + r * ldo + c0);
      if (two) vstore16(acc[r][1], 0, out + r * ldo + c0 + 16);
    }
  }
}

// Work-item w of `workers` (work-groups of one): the items w, w + workers,
// ... of N * H * (G / group), an item being `group` value heads of one key
// head and sequence: the keys' work (q^, k^, q^k^T, k^k^T) is done once for them.
kernel void gdn_chunk_fwd_rows(global const x_t* q, long q_off, long4 q_st,
                               global const x_t* k, long k_off, long4 k_st,
                               global const x_t* v, long v_off, long4 v_st,
                               global const float* info, global x_t* o, long o_off, long4 o_st,
                               global const float* init, long init_off, long4 init_st,
                               global float* fin, long fin_off, long4 fin_st,
                               global const uchar* cu, long cu_off, long cu_stride, int cu_kind,
                               long N, long T, int H, int HV, int K, int V, float scale,
                               int l2norm, int group, global float* scratch, long per_worker) {
  const long worker = get_global_id(0), workers = get_global_size(0);
  const int KV = K + V, groups = HV / H / group;
  global float* states = scratch + worker * per_worker;  // [group][K][V]
  global float* Qc = states + (long)group * K * V;
  global float* Kc = Qc + RC * K;
  global float* Kt = Kc + RC * K;
  global float* QK = Kt + K * RC;
  global float* KK = QK + RC * RC;
  global float* R = KK + RC * RC;
  global float* WU = R + RC * KV;
  global float* Out = WU + RC * KV;
  global float* Tm = Out + RC * V;  // A, then T in place
  global float* P = Tm + RC * RC;
  float G[RC], beta[RC], gamma[RC], ones[TILE_ROWS];
  for (int r = 0; r < TILE_ROWS; ++r) ones[r] = 1.0f;
  const float16 lane = (float16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (long item = worker; item < N * H * groups; item += workers) {
    const long n = item / (H * groups);
    const int h = (int)(item / groups % H), first = h * (HV / H) + (int)(item % groups) * group;
    const Span span = sequence_span(cu, cu_off, cu_stride, cu_kind, n, T);
    const long b = span.row;
    for (int g = 0; g < group; ++g) {
      for (int x = 0; x < K; ++x) {
        for (int c = 0; c < V; c += 16) {
          float16 row = (float16)(0.0f);
          if (init) {
            float lanes[16];
            const long at =
                init_off + n * init_st.x + (first + g) * init_st.y + x * init_st.z + c * init_st.w;
            for (int l = 0; l < 16; ++l) lanes[l] = init[at + l * init_st.w];
            row = vload16(0, lanes);
          }
          vstore16(row, 0, states + ((long)g * K + x) * V + c);
        }
      }
    }
    for (long t0 = span.begin; t0 < span.end; t0 += RC) {
      const int L = (int)min((long)RC, span.end - t0);
      // q^ and k^ (q and k loaded into Qc and Kc, then through the l2norm there),
      // k^ transposed.
      for (int i = 0; i < L; ++i) {
        const long t = t0 + i;
        const long qo = q_off + b * q_st.x + t * q_st.y + h * q_st.z;
        const long ko = k_off + b * k_st.x + t * k_st.y + h * k_st.z;
        float16 qq = (float16)(0.0f), kk = (float16)(0.0f);
        for (int x = 0; x < K; x += 16) {
          const float16 query = load_row16(q, qo + x * q_st.w, q_st.w);
          const float16 key = load_row16(k, ko + x * k_st.w, k_st.w);
          qq += query * query;
          kk += key * key;
          vstore16(query, 0, Qc + i * K + x);
          vstore16(key, 0, Kc + i * K + x);
        }
        const float rq = l2norm ? 1.0f / sqrt(sum16(qq) + 1e-6f) : 1.0f;
        const float rk = l2norm ? 1.0f / sqrt(sum16(kk) + 1e-6f) : 1.0f;
        for (int x = 0; x < K; x += 16) {
          const float16 key = rk * vload16(0, Kc + i * K + x);
          vstore16(rq * vload16(0, Qc + i * K + x), 0, Qc + i * K + x);
          vstore16(key, 0, Kc + i * K + x);
          float lanes[16];
          vstore16(key, 0, lanes);
          for (int l = 0; l < 16; ++l) Kt[(x + l) * RC + i] = lanes[l];
        }
      }
      // q^_i.k^_j and k^_i.k^_j (j <= i: a column tile right of a row tile's
      // diagonal is skipped; what lies right of it is masked below).
      for (int c0 = 0; c0 < RC; c0 += 32) {
        for (int i = c0 < TILE_ROWS ? 0 : c0 - TILE_ROWS + 1; i < L; i += TILE_ROWS) {
          const int rows = min(TILE_ROWS, L - i);
          tile(QK + i * RC, RC, 0, 0, ones, Qc + i * K, K, 1, rows, K, Kt, RC, c0, RC);
          tile(KK + i * RC, RC, 0, 0, ones, Kc + i * K, K, 1, rows, K, Kt, RC, c0, RC);
        }
      }
      for (int g = 0; g < group; ++g) {
        const int hv = first + g;
        global float* S = states + (long)g * K * V;
        // G, beta and R = [-beta gamma k^ | beta v].
        float cumulative = 0.0f;
        for (int i = 0; i < L; ++i) {
          const long t = t0 + i;
          global const float* token = info + ((b * T + t) * HV + hv) * TOKEN_INFO;
          cumulative += token[5];
          G[i] = cumulative;
          beta[i] = token[1];
          gamma[i] = exp(cumulative);
          const float key_weight = -beta[i] * gamma[i];
          for (int x = 0; x < K; x += 16) {
            vstore16(key_weight * vload16(0, Kc + i * K + x), 0, R + i * KV + x);
          }
          const long vo = v_off + b * v_st.x + t * v_st.y + hv * v_st.z;
          for (int c = 0; c < V; c += 16) {
            vstore16(beta[i] * load_row16(v, vo + c * v_st.w, v_st.w), 0, R + i * KV + K + c);
          }
        }
        // P_ij = scale D_ij q^_i.k^_j (j <= i) and A_ij = beta_i D_ij k^_i.k^_j
        // (j < i), 0 elsewhere (select: the entries past the chunk may hold anything).
        for (int i = 0; i < L; ++i) {
#pragma unroll
          for (int c = 0; c < RC / 16; ++c) {
            const float16 j = lane + (float)(16 * c);
            const float16 decay = exp(G[i] - vload16(c, G));
            const float16 qk = vload16(c, QK + i * RC), kk = vload16(c, KK + i * RC);
            vstore16(select((float16)(0.0f), scale * decay * qk, islessequal(j, (float16)(i))), c,
                     P + i * RC);
            vstore16(select((float16)(0.0f), beta[i] * decay * kk, isless(j, (float16)(i))), c,
                     Tm + i * RC);
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
        // [W | U0] = T R (T lower: a row tile needs R's rows up to its last).
        for (int c0 = 0; c0 < KV; c0 += 32) {
          for (int i = 0; i < L; i += TILE_ROWS) {
            tile(WU + i * KV, KV, 0, 0, ones, Tm + i * RC, RC, 1, min(TILE_ROWS, L - i),
                 min(i + TILE_ROWS, L), R, KV, c0, KV);
          }
        }
        // U = U0 + W S and O' = Q^ S.
        for (int c0 = 0; c0 < V; c0 += 32) {
          for (int i = 0; i < L; i += TILE_ROWS) {
            global float* u_rows = WU + i * KV + K;
            const int rows = min(TILE_ROWS, L - i);
            tile(u_rows, KV, u_rows, KV, ones, WU + i * KV, KV, 1, rows, K, S, V, c0, V);
            tile(Out + i * V, V, 0, 0, ones, Qc + i * K, K, 1, rows, K, S, V, c0, V);
          }
        }
        // O = diag(scale gamma) O' + P U, then into o.
        float query_weight[RC];
        for (int i = 0; i < L; ++i) query_weight[i] = scale * gamma[i];
        for (int c0 = 0; c0 < V; c0 += 32) {
          for (int i = 0; i < L; i += TILE_ROWS) {
            tile(Out + i * V, V, Out + i * V, V, query_weight + i, P + i * RC, RC, 1,
                 min(TILE_ROWS, L - i), min(i + TILE_ROWS, L), WU + K, KV, c0, V);
          }
        }
        for (int i = 0; i < L; ++i) {
          const long oo = o_off + b * o_st.x + (t0 + i) * o_st.y + hv * o_st.z;
          for (int c = 0; c < V; c += 16) {
            store_row16(o, oo + c * o_st.w, o_st.w, vload16(0, Out + i * V + c));
          }
        }
        // S <- gamma_last S + sum_j e^(G_last - G_j) k^_j u_j^T: the decayed keys
        // in R's key columns (R is done with), read down a column as weights.
        for (int j = 0; j < L; ++j) {
          const float to_end = exp(G[L - 1] - G[j]);
          for (int x = 0; x < K; x += 16) {
            vstore16(to_end * vload16(0, Kc + j * K + x), 0, R + j * KV + x);
          }
        }
        float state_decay[TILE_ROWS];
        for (int r = 0; r < TILE_ROWS; ++r) state_decay[r] = gamma[L - 1];
        for (int c0 = 0; c0 < V; c0 += 32) {
          for (int x = 0; x < K; x += TILE_ROWS) {
            tile(S + x * V, V, S + x * V, V, state_decay, R + x, 1, KV, min(TILE_ROWS, K - x), L,
                 WU + K, KV, c0, V);
          }
        }
      }
    }
    for (int g = 0; fin && g < group; ++g) {
      for (int x = 0; x < K; ++x) {
        for (int c = 0; c < V; c += 16) {
          float lanes[16];
          vstore16(vload16(0, states + ((long)g * K + x) * V + c), 0, lanes);
          const long at =
              fin_off + n * fin_st.x + (first + g) * fin_st.y + x * fin_st.z + c * fin_st.w;
          for (int l = 0; l < 16; ++l) fin[at + l * fin_st.w] = lanes[l];
        }
      }
    }
  }
}
