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
