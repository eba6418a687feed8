// moe_mlp.cl: the GEMMs of moe_expert_mlp and its backward. Expert e owns
// rows [first[e], first[e + 1]) (moe_expert_offsets in moe.cl, clamped to R)
// and tiles[e] is the number of row tiles before it.
//
// Operands are any float tensor (the op's dtype, or f32 scratch), element
// (i, j) at off + i st.x + j st.y; B of expert e starts e b_se further.
// moe_gemm_rows: C[r, n] = sum_k A[r, k] B_e[k, n] over the rows r of each
// expert (the expert MLP's products over its rows); moe_gemm_weights:
// C_e[m, n] = sum over the rows r of expert e, in order, of A[m, r] B[r, n]
// (the weight gradients; zero for experts without rows). Every sum runs
// over k (or r) in ascending order: the same bits on every run.
//
// The portable kernels: work-group of 16 x 16 items per 64 x 64 tile of C,
// TK-deep slices of A and B through local memory, 4 x 4 outputs per item.

#define TM 64
#define TN 64
#define TK 16
#define WI 16
#define PER 4

// Epilogues of moe_gemm_rows.
#define PLAIN 0
#define SWIGLU 1      // two B (gate, up): C = silu(A Bg) * (A Bu)
// SWIGLU_BWD: C holds [g | u] (f32, [R, 2I]); with dh = A B, C := [dg | du], h := silu(g) u
#define SWIGLU_BWD 2

// acc (and acc2 against B2 when dual) += the product of A rows [m0, m_end)
// and B columns [n0, n_end) over k in [k0, k_end); item (tx, ty) owns rows
// m0 + ty + WI a and columns n0 + tx + WI b.
inline void gemm_tile(global const uchar* A, long a_off, long2 a_st, int a_dtype, long m0,
                      long m_end, global const uchar* B, long b_off, long b2_off, long2 b_st,
                      int b_dtype, int dual, long n0, long n_end, long k0, long k_end,
                      local float* as, local float* bs, local float* bs2, float acc[PER][PER],
                      float acc2[PER][PER]) {
  const int tx = get_local_id(0), ty = get_local_id(1), lid = ty * WI + tx;
  for (long kb = k0; kb < k_end; kb += TK) {
    for (int e = lid; e < TM * TK; e += WI * WI) {
      const int kk = e % TK, m = e / TK;
      const long gm = m0 + m, gk = kb + kk;
      as[kk * (TM + 1) + m] =
          gm < m_end && gk < k_end ? load_any(A, a_off + gm * a_st.x + gk * a_st.y, a_dtype) : 0.0f;
    }
    for (int e = lid; e < TK * TN; e += WI * WI) {
      const int n = e % TN, kk = e / TN;
      const long gn = n0 + n, gk = kb + kk;
      const bool inside = gn < n_end && gk < k_end;
      const long at = gk * b_st.x + gn * b_st.y;
      bs[kk * TN + n] = inside ? load_any(B, b_off + at, b_dtype) : 0.0f;
      if (dual) bs2[kk * TN + n] = inside ? load_any(B, b2_off + at, b_dtype) : 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int kk = 0; kk < TK; ++kk) {
      float a[PER], b[PER];
      for (int i = 0; i < PER; ++i) a[i] = as[kk * (TM + 1) + ty + WI * i];
      for (int j = 0; j < PER; ++j) b[j] = bs[kk * TN + tx + WI * j];
      for (int i = 0; i < PER; ++i)
        for (int j = 0; j < PER; ++j) acc[i][j] += a[i] * b[j];
      if (dual) {
        for (int j = 0; j < PER; ++j) b[j] = bs2[kk * TN + tx + WI * j];
        for (int i = 0; i < PER; ++i)
          for (int j = 0; j < PER; ++j) acc2[i][j] += a[i] * b[j];
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
  }
}

// The expert of global row tile g (tiles[e] <= g < tiles[e + 1]), -1 past the last.
inline int tile_expert(global const int* tiles, int E, long g) {
  if (g >= tiles[E]) return -1;
  int low = 0, high = E - 1;
  while (low < high) {
    const int middle = (low + high + 1) / 2;
    if (tiles[middle] <= g) {
      low = middle;
    } else {
      high = middle - 1;
    }
  }
  return low;
}

// Work-group (row tile g over all experts, column tile). N columns of C;
// K deep; `h` (SWIGLU_BWD only) [R, I] f32 with I = N.
kernel void moe_gemm_rows(global const uchar* A, long a_off, long2 a_st, int a_dtype,
                          global const uchar* B, long b_off, long b_se, long b2_shift, long2 b_st,
                          int b_dtype, global uchar* C, long c_off, long2 c_st, int c_dtype,
                          global float* h, long N, long K, int E, int epilogue,
                          global const int* first, global const int* tiles) {
  local float as[TK * (TM + 1)], bs[TK * TN], bs2[TK * TN];
  const long g = get_group_id(0), n0 = get_group_id(1) * TN;
  const int e = tile_expert(tiles, E, g);
  if (e < 0) return;
  const long m0 = first[e] + (g - tiles[e]) * TM, m_end = first[e + 1];
  const long be = b_off + e * b_se;
  float acc[PER][PER] = {{0.0f}}, acc2[PER][PER] = {{0.0f}};
  gemm_tile(A, a_off, a_st, a_dtype, m0, m_end, B, be, be + b2_shift, b_st, b_dtype,
            epilogue == SWIGLU, n0, N, 0, K, as, bs, bs2, acc, acc2);
  const int tx = get_local_id(0), ty = get_local_id(1);
  for (int i = 0; i < PER; ++i) {
    const long m = m0 + ty + WI * i;
    if (m >= m_end) continue;
    for (int j = 0; j < PER; ++j) {
      const long n = n0 + tx + WI * j;
      if (n >= N) continue;
      const long at = c_off + m * c_st.x + n * c_st.y;
      if (epilogue == PLAIN) {
        store_any(C, at, c_dtype, acc[i][j]);
      } else if (epilogue == SWIGLU) {
        store_any(C, at, c_dtype, silu_f(acc[i][j]) * acc2[i][j]);
      } else {
        global float* gu = (global float*)C;
        const float gate = gu[at], up = gu[at + N * c_st.y], dh = acc[i][j];
        gu[at] = dh * up * silu_grad_f(gate);
        gu[at + N * c_st.y] = dh * silu_f(gate);
        h[m * N + n] = silu_f(gate) * up;
      }
    }
  }
}

// Work-group (column tile, row tile of C_e, expert e): M x N per expert.
kernel void moe_gemm_weights(global const uchar* A, long a_off, long2 a_st, int a_dtype,
                             global const uchar* B, long b_off, long2 b_st, int b_dtype,
                             global uchar* C, long c_off, long c_se, long2 c_st, int c_dtype,
                             long M, long N, global const int* first) {
  local float as[TK * (TM + 1)], bs[TK * TN], bs2[1];
  const long n0 = get_group_id(0) * TN, m0 = get_group_id(1) * TM;
  const int e = get_group_id(2);
  float acc[PER][PER] = {{0.0f}}, acc2[PER][PER];
  gemm_tile(A, a_off, a_st, a_dtype, m0, M, B, b_off, b_off, b_st, b_dtype, 0, n0, N, first[e],
            first[e + 1], as, bs, bs2, acc, acc2);
  const int tx = get_local_id(0), ty = get_local_id(1);
  for (int i = 0; i < PER; ++i) {
    const long m = m0 + ty + WI * i;
    if (m >= M) continue;
    for (int j = 0; j < PER; ++j) {
      const long n = n0 + tx + WI * j;
      if (n < N) store_any(C, c_off + e * c_se + m * c_st.x + n * c_st.y, c_dtype, acc[i][j]);
    }
  }
}

// Work-item (column i, row r): zero for the rows past the counted ones.
kernel void moe_zero_tail(global uchar* out, long o_off, int o_dtype, long2 o_st,
                          global const int* first, int E, long R, long Hd) {
  const long i = get_global_id(0), r = get_global_id(1);
  if (i < Hd && r < R && r >= first[E]) {
    store_any(out, o_off + r * o_st.x + i * o_st.y, o_dtype, 0.0f);
  }
}


// ---- CPU devices ---------------------------------------------------------------------
// Explicit SIMD, no local memory or barriers. The rows of each expert are
// packed in panels of PANEL = 32 rows (moe_pack_rows: panel g = tiles[e] + j
// holds rows first[e] + 32 j + lane, f32 [K][32], zeros past the expert's
// rows). The register tile is one panel against MR rows of a weight: two
// float16 accumulators per weight row; per depth step the panel's 32 values
// (two vector loads) times one broadcast weight value per row, fma in
// ascending depth order. MR is 12 where vectors hold 16 floats (24 of
// AVX-512's 32 registers), else 4. Accumulators are indexed by constants
// only (REPEAT), so that they stay in registers.
//
// moe_mm_rows: a work-item takes one expert and NB blocks of MR weight rows;
// depth goes in slices of `slice`, each slice of the block's weight rows (in
// L1) serving every panel of the expert (in L2) before the next. Between slices
// the accumulators wait in `partial` ([g][weight row][32] f32), which keeps
// each sum's order: one fma chain over the whole depth.
// moe_mm_weights: a work-item takes one expert and NB blocks of MR rows of
// the gradient, column panel by column panel (the panel of V in L1 serving
// the NB blocks).


#define PANEL 32
#define NB 8
#define REPEAT_4(X) X(0) X(1) X(2) X(3)
#define REPEAT_12(X) REPEAT_4(X) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

// Panel g of rows of x ([R, K], any strides) as f32 [K][32]. Work-item (16
// steps of k, g).
kernel void moe_pack_rows(global const x_t* x, long x_off, long2 x_st, global float* packed,
                          long K, int E, global const int* first, global const int* tiles) {
  const long k0 = get_global_id(0) * 16, g = get_global_id(1);
  const int e = tile_expert(tiles, E, g);
  if (k0 >= K || e < 0) return;
  const long r0 = first[e] + (g - tiles[e]) * PANEL, k_end = min(k0 + 16, K);
  const int lanes = min((long)PANEL, first[e + 1] - r0);
  global float* out = packed + g * K * PANEL;
  float t[16 * PANEL];
  for (int lane = 0; lane < PANEL; ++lane) {
    const long at = x_off + (r0 + lane) * x_st.x;
    if (lane < lanes && k_end - k0 == 16 && x_st.y == 1) {
      const float16 v = LOAD16_X(x, at + k0);
      t[0 * PANEL + lane] = v.s0, t[1 * PANEL + lane] = v.s1, t[2 * PANEL + lane] = v.s2;
      t[3 * PANEL + lane] = v.s3, t[4 * PANEL + lane] = v.s4, t[5 * PANEL + lane] = v.s5;
      t[6 * PANEL + lane] = v.s6, t[7 * PANEL + lane] = v.s7, t[8 * PANEL + lane] = v.s8;
      t[9 * PANEL + lane] = v.s9, t[10 * PANEL + lane] = v.sa, t[11 * PANEL + lane] = v.sb;
      t[12 * PANEL + lane] = v.sc, t[13 * PANEL + lane] = v.sd, t[14 * PANEL + lane] = v.se;
      t[15 * PANEL + lane] = v.sf;
    } else {
      for (long k = k0; k < k_end; ++k) {
        t[(k - k0) * PANEL + lane] = lane < lanes ? LOAD_X(x, at + k * x_st.y) : 0.0f;
      }
    }
  }
  for (long k = k0; k < k_end; ++k) {
    vstore16(vload16(0, t + (k - k0) * PANEL), 0, out + k * PANEL);
    vstore16(vload16(0, t + (k - k0) * PANEL + 16), 0, out + k * PANEL + 16);
  }
}

// moe_mm_rows_<MR>: acc[m] = sum_k W_e(n(m), k) panel(k, 0..31), W_e(n, k)
// at w_off + e w_se + n w_st.x + k w_st.y. Plain: block j holds weight rows
// n(m) = j MR + m (< N); with `halves` (gate_up_proj) m < MR/2 are the gate
// rows j MR/2 + m and the others the up rows I further (j MR/2 + m < N = I).
// Epilogues, for the panel's rows:
//   PLAIN: C[r, n] (x_t, element at c_off + r c_st.x + n c_st.y) := acc;
//   SWIGLU: h packed [g][I][32] := silu(gate) up;
//   SPLIT: [g | u] packed [g][2I][32] := gate, up;
//   SWIGLU_BWD: with dh = acc (n < I) and [g | u] packed in C:
//     C := [dg | du] in place, h[r, n] := silu(g) u (f32 rows of h_row).
#define SPLIT 3

// The weight row of accumulator m (clamped into the weight), and whether
// it is one of the block's real rows.
#define MM_ROW(m) \
  (halves ? min(n0 + (m) % (MR / 2), N - 1) + (m) / (MR / 2) * I : min(n0 + (m), N - 1))
#define MM_REAL(m) (n0 + (halves ? (m) % (MR / 2) : (m)) < N)

#define MM_ROWS_INIT(m) w_row[m] = w_off + e * w_se + MM_ROW(m) * w_st.x;
#define MM_ROWS_LOAD(m)                                                                   \
  if (kb == 0 || !MM_REAL(m)) {                                                           \
    acc[m][0] = acc[m][1] = (float16)(0.0f);                                              \
  } else {                                                                                \
    acc[m][0] = vload16(0, partial + (g * rows_total + MM_ROW(m)) * PANEL);               \
    acc[m][1] = vload16(0, partial + (g * rows_total + MM_ROW(m)) * PANEL + 16);          \
  }
#define MM_ROWS_SAVE(m)                                                                   \
  if (MM_REAL(m)) {                                                                       \
    vstore16(acc[m][0], 0, partial + (g * rows_total + MM_ROW(m)) * PANEL);               \
    vstore16(acc[m][1], 0, partial + (g * rows_total + MM_ROW(m)) * PANEL + 16);          \
  }
#define MM_ROWS_STEP(m)                                                                   \
  {                                                                                       \
    const float16 a = (float16)(LOAD_X(w, w_row[m] + k * w_st.y));                        \
    acc[m][0] = fma(a, b0, acc[m][0]);                                                    \
    acc[m][1] = fma(a, b1, acc[m][1]);                                                    \
  }
#define MM_ROWS_STORE(m)                                                                  \
  if (MM_REAL(m)) {                                                                       \
    const long n = n0 + (halves ? (m) % (MR / 2) : (m));                                  \
    if (epilogue == PLAIN) {                                                              \
      float t[PANEL];                                                                     \
      vstore16(acc[m][0], 0, t);                                                          \
      vstore16(acc[m][1], 0, t + 16);                                                     \
      global x_t* out = (global x_t*)C + c_off + r0 * c_st.x + n * c_st.y;                \
      for (int lane = 0; lane < lanes; ++lane) STORE_X(out, lane * c_st.x, t[lane]);      \
    } else if (epilogue == SWIGLU) {                                                      \
      if ((m) < MR / 2) {                                                                 \
        global float* out = h + (g * I + n) * PANEL;                                      \
        const int up = ((m) + MR / 2) % MR;                                               \
        vstore16(silu_f16(acc[m][0]) * acc[up][0], 0, out);                               \
        vstore16(silu_f16(acc[m][1]) * acc[up][1], 0, out + 16);                          \
      }                                                                                   \
    } else if (epilogue == SPLIT) {                                                       \
      global float* out = (global float*)C + (g * 2 * I + MM_ROW(m)) * PANEL;             \
      vstore16(acc[m][0], 0, out);                                                        \
      vstore16(acc[m][1], 0, out + 16);                                                   \
    } else {                                                                              \
      global float* gu = (global float*)C + (g * 2 * I + n) * PANEL;                      \
      float t[PANEL];                                                                     \
      for (int q = 0; q < 2; ++q) {                                                       \
        const float16 gate = vload16(q, gu), up = vload16(q, gu + I * PANEL);             \
        const float16 sig = 1.0f / (1.0f + exp(-gate)), dh = acc[m][q];                   \
        vstore16(dh * up * sig * (1.0f + gate * (1.0f - sig)), q, gu);                    \
        vstore16(dh * gate * sig, q, gu + I * PANEL);                                     \
        vstore16(gate * sig * up, q, t);                                                  \
      }                                                                                   \
      for (int lane = 0; lane < lanes; ++lane) h[(r0 + lane) * h_row + n] = t[lane];      \
    }                                                                                     \
  }

#define DEFINE_MM_ROWS(ROWS)                                                                  \
  kernel void moe_mm_rows_##ROWS(global const float* panels, long K, global const x_t* w,    \
                                 long w_off, long w_se, long2 w_st, long N, int halves,      \
                                 long I, global uchar* C, long c_off, long2 c_st,            \
                                 global float* h, long h_row, global float* partial,         \
                                 long slice,                                                 \
                                 long blocks, int E, int epilogue, global const int* first,  \
                                 global const int* tiles) {                                  \
    const long j0 = get_global_id(0) * NB, j1 = min(blocks, j0 + NB);                        \
    const int e = get_global_id(1);                                                          \
    if (j0 >= blocks) return;                                                                \
    const long rows_total = halves ? 2 * I : N;                                              \
    for (long kb = 0; kb < max(K, 1L); kb += slice) { /* once at K = 0: zeros */           \
      const long k_end = min(K, kb + slice);                                                 \
      for (long j = j0; j < j1; ++j) {                                                       \
        const long n0 = j * (halves ? MR / 2 : MR);                                          \
        long w_row[MR];                                                                      \
        REPEAT_##ROWS(MM_ROWS_INIT)                                                          \
        for (long g = tiles[e]; g < tiles[e + 1]; ++g) {                                     \
          const long r0 = first[e] + (g - tiles[e]) * PANEL;                                 \
          const int lanes = min((long)PANEL, first[e + 1] - r0);                             \
          float16 acc[MR][2];                                                                \
          REPEAT_##ROWS(MM_ROWS_LOAD)                                                        \
          global const float* pk = panels + g * K * PANEL;                                   \
          for (long k = kb; k < k_end; ++k) {                                                \
            const float16 b0 = vload16(0, pk + k * PANEL);                                   \
            const float16 b1 = vload16(0, pk + k * PANEL + 16);                              \
            REPEAT_##ROWS(MM_ROWS_STEP)                                                      \
          }                                                                                  \
          if (k_end < K) {                                                                   \
            REPEAT_##ROWS(MM_ROWS_SAVE)                                                      \
          } else {                                                                           \
            REPEAT_##ROWS(MM_ROWS_STORE)                                                     \
          }                                                                                  \
        }                                                                                    \
      }                                                                                      \
    }                                                                                        \
  }

// moe_mm_weights_<v>_<MR>: C_e[m, c] = sum over the expert's rows r, in
// order, of S(r, m) V[r, c] for the `cols` columns c; V in place (x_t, or f32
// for v = f; unit column steps, rows readable to a whole panel of 32), S
// packed [g][M][32]; C_e (x_t) element at c_off + e c_se + m c_st.x + c c_st.y.
// Work-item (NB blocks of MR rows m, expert e), column panel by column panel.
#define MM_WEIGHTS_INIT(m)                              \
  {                                                     \
    s_col[m] = min(m0 + (m), M - 1) * PANEL;            \
    acc[m][0] = acc[m][1] = (float16)(0.0f);            \
  }
#define MM_WEIGHTS_STEP(m)                              \
  {                                                     \
    const float16 a = (float16)(pg[s_col[m] + lane]);   \
    acc[m][0] = fma(a, b0, acc[m][0]);                  \
    acc[m][1] = fma(a, b1, acc[m][1]);                  \
  }
#define MM_WEIGHTS_STORE(m)                                                               \
  if (m0 + (m) < M) {                                                                     \
    global x_t* out = C + c_off + e * c_se + (m0 + (m)) * c_st.x + p * PANEL * c_st.y;    \
    if (c_st.y == 1 && width == PANEL) {                                                  \
      STORE16_X(out, 0, acc[m][0]);                                                   \
      STORE16_X(out, 16, acc[m][1]);                                                  \
    } else {                                                                              \
      float t[PANEL];                                                                     \
      vstore16(acc[m][0], 0, t);                                                          \
      vstore16(acc[m][1], 0, t + 16);                                                     \
      for (int col = 0; col < width; ++col) STORE_X(out, col * c_st.y, t[col]);           \
    }                                                                                     \
  }

#define DEFINE_MM_WEIGHTS(NAME, ROWS, v_t, LOAD16_V)                                          \
  kernel void NAME(global const v_t* V, long v_off, long v_row, global const float* S,       \
                   long M, global x_t* C, long c_off, long c_se, long2 c_st, long cols,      \
                   int E, global const int* first, global const int* tiles) {                \
    const long t0 = get_global_id(0) * NB;                                                   \
    const int e = get_global_id(1);                                                          \
    const long t1 = min((M + MR - 1) / MR, t0 + NB);                                         \
    for (long p = 0; p * PANEL < cols; ++p) {                                                \
      const int width = min((long)PANEL, cols - p * PANEL);                                  \
      for (long tile = t0; tile < t1; ++tile) {                                              \
        const long m0 = tile * MR;                                                           \
        long s_col[MR];                                                                      \
        float16 acc[MR][2];                                                                  \
        REPEAT_##ROWS(MM_WEIGHTS_INIT)                                                       \
        for (long g = tiles[e]; g < tiles[e + 1]; ++g) {                                     \
          const long r0 = first[e] + (g - tiles[e]) * PANEL;                                 \
          const int lanes = min((long)PANEL, first[e + 1] - r0);                             \
          global const float* pg = S + g * M * PANEL;                                        \
          for (int lane = 0; lane < lanes; ++lane) {                                         \
            const long at = v_off + (r0 + lane) * v_row + p * PANEL;                         \
            const float16 b0 = LOAD16_V(V, at), b1 = LOAD16_V(V, at + 16);                   \
            REPEAT_##ROWS(MM_WEIGHTS_STEP)                                                   \
          }                                                                                  \
        }                                                                                    \
        REPEAT_##ROWS(MM_WEIGHTS_STORE)                                                      \
      }                                                                                      \
    }                                                                                        \
  }

#define LOAD16_F32(p, i) vload16(0, (p) + (i))

// MR (the macros' bodies read it) as each kernel's ROWS.
#define MR 12
DEFINE_MM_ROWS(12)
DEFINE_MM_WEIGHTS(moe_mm_weights_x_12, 12, x_t, LOAD16_X)
DEFINE_MM_WEIGHTS(moe_mm_weights_f_12, 12, float, LOAD16_F32)
#undef MR
#define MR 4
DEFINE_MM_ROWS(4)
DEFINE_MM_WEIGHTS(moe_mm_weights_x_4, 4, x_t, LOAD16_X)
DEFINE_MM_WEIGHTS(moe_mm_weights_f_4, 4, float, LOAD16_F32)
#undef MR

// Rows [first[E], R) of out set to zero; work-item per row (unit column
// steps, Hd % 16 == 0).
kernel void moe_zero_tail_rows(global x_t* out, long o_off, long o_row, global const int* first,
                               int E, long R, long Hd) {
  const long r = get_global_id(0);
  if (r >= R || r < first[E]) return;
  for (long i = 0; i < Hd; i += 16) {
    STORE16_X(out, o_off + r * o_row + i, (float16)(0.0f));
  }
}
