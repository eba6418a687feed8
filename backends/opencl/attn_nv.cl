// attn_nv.cl: attn_prefill's forward on NVIDIA's OpenCL platform only, on
// tensor cores through inline PTX (mma.sync m16n8k16 with f32 accumulators,
// ldmatrix, shfl.sync), following backends/cuda/attn_prefill.cu's mma.sync
// kernel. Built apart from attn.cl (attn.cpp: nv_kernel) with
//   -DNV_D=64|128|256 (head dim), -DNV_LDSM=1|0 (ldmatrix, or plain local
//   loads), -DNV_GNU_ASM (spell inline asm `__asm__`: clang's OpenCL mode),
// and HOPS_X = 1 (f16) or 2 (bf16). Where NVIDIA's compiler rejects it the
// backend keeps attn.cl's portable kernel.
//
// A work-group of NV_WARPS warps (work-item l is lane l % 32 of warp l / 32
// on NVIDIA) owns NV_BR = 16 NV_WARPS query rows of one query head (16 per
// warp) and walks key tiles of NV_BC keys. Local memory (48 KiB at most on
// NVIDIA's platform) holds the Q block and one key tile, K then V of the same
// keys, its rows of D 16-bit elements in 16-byte chunks swizzled (chunk c of
// row r at c ^ (r % 8)) so that ldmatrix and the fragment loads hit 32
// distinct banks. Global loads of the next tile go to registers while the
// current tile is multiplied (no cp.async from OpenCL C).
// Scores are kept in the log2 domain: s = scale log2(e) <q, k>; with the
// running max m and sum l per row, o = sum 2^(s - m) v / l, lse = (m + log2 l) ln 2.

#ifdef NV_GNU_ASM
#define NV_ASM __asm__ volatile
#else
#define NV_ASM asm volatile
#endif

#ifndef NV_LDSM
#define NV_LDSM 1
#endif
// NV_PIPE 1: the next tile's global loads wait in registers while the current
// one is multiplied; 0: loaded straight into local memory (fewer registers).
#ifndef NV_PIPE
#define NV_PIPE (NV_D < 256)
#endif

#if NV_D == 256
#define NV_WARPS 4
#define NV_BC 32
#else
#define NV_WARPS 8
#define NV_BC 64
#endif
#define NV_THREADS (32 * NV_WARPS)
#define NV_BR (16 * NV_WARPS)
#define NV_CHUNKS (NV_D / 8)                             // 16-byte chunks per row
#define NV_PREFETCH (NV_BC * NV_CHUNKS / NV_THREADS)     // chunks per work-item per tile

#define NV_LOG2E 1.4426950408889634f
#define NV_LN2 0.6931471805599453f

// Element offset of (row r, column col) in a swizzled tile.
inline int nv_at(int r, int col) { return r * NV_D + (((col >> 3) ^ (r & 7)) << 3) + (col & 7); }

inline float nv_ex2(float x) {
  float y;
  NV_ASM("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

inline float nv_shfl_xor(float v, int mask) {
  float r;
  NV_ASM("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=f"(r) : "f"(v), "r"(mask));
  return r;
}
inline float nv_quad_max(float v) {
  v = fmax(v, nv_shfl_xor(v, 1));
  return fmax(v, nv_shfl_xor(v, 2));
}
inline float nv_quad_sum(float v) {
  v += nv_shfl_xor(v, 1);
  return v + nv_shfl_xor(v, 2);
}

// Two floats as one register of two 16-bit values (lo in the low half).
inline uint nv_pack(float lo, float hi) {
  uint r;
#if HOPS_X == HOPS_BF16
  NV_ASM("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
  NV_ASM("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
  return r;
}

// d (16 x 8) += a (16 x 16) b (16 x 8). With g = lane / 4, t = lane % 4:
// a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]},
// b = {B[2t..][g], B[2t+8..][g]}, d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
inline void nv_mma(float* d, uint a0, uint a1, uint a2, uint a3, uint b0, uint b1) {
#if HOPS_X == HOPS_BF16
  NV_ASM("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
         "{%8,%9}, {%0,%1,%2,%3};"
         : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
         : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  NV_ASM("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
         "{%8,%9}, {%0,%1,%2,%3};"
         : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
         : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

#if NV_LDSM
// Four 8 x 8 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and
// register i of lane l holds row l / 4, columns 2 (l % 4) + {0, 1} of matrix i
// (.trans: of its transpose). A local pointer is a .shared address on NVIDIA.
inline void nv_ldsm(uint* r, local const ushort* p) {
  const uint at = (uint)(ulong)p;
  NV_ASM("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
         : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
         : "r"(at)
         : "memory");
}
inline void nv_ldsm_trans(uint* r, local const ushort* p) {
  const uint at = (uint)(ulong)p;
  NV_ASM("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
         : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
         : "r"(at)
         : "memory");
}
#endif

// The A operand of rows 0..15 of `tile` (from row0), k-step kk.
inline void nv_frag_a(uint* a, local const ushort* tile, int row0, int kk, int lane) {
#if NV_LDSM
  nv_ldsm(a, tile + nv_at(row0 + (lane & 15), kk * 16 + (lane >> 4) * 8));
#else
  const int g = lane >> 2, c = kk * 16 + 2 * (lane & 3);
  a[0] = *(local const uint*)(tile + nv_at(row0 + g, c));
  a[1] = *(local const uint*)(tile + nv_at(row0 + g + 8, c));
  a[2] = *(local const uint*)(tile + nv_at(row0 + g, c + 8));
  a[3] = *(local const uint*)(tile + nv_at(row0 + g + 8, c + 8));
#endif
}

// B operands of n-tiles (n0, n0 + 8) where B^T's rows (n) are tile rows (K in
// Q K^T), k-step kk: b[0], b[1] for n0, b[2], b[3] for n0 + 8.
inline void nv_frag_b_rows(uint* b, local const ushort* tile, int n0, int kk, int lane) {
#if NV_LDSM
  nv_ldsm(b, tile + nv_at(n0 + (lane & 7) + ((lane >> 4) << 3), kk * 16 + ((lane >> 3) & 1) * 8));
#else
  const int g = lane >> 2, c = kk * 16 + 2 * (lane & 3);
  b[0] = *(local const uint*)(tile + nv_at(n0 + g, c));
  b[1] = *(local const uint*)(tile + nv_at(n0 + g, c + 8));
  b[2] = *(local const uint*)(tile + nv_at(n0 + g + 8, c));
  b[3] = *(local const uint*)(tile + nv_at(n0 + g + 8, c + 8));
#endif
}

// B operands of n-tiles (c0, c0 + 8) where B's rows (k) are tile rows (V in
// P V), keys k0..k0+15.
inline void nv_frag_b_trans(uint* b, local const ushort* tile, int k0, int c0, int lane) {
#if NV_LDSM
  nv_ldsm_trans(b, tile + nv_at(k0 + (lane & 7) + (((lane >> 3) & 1) << 3), c0 + (lane >> 4) * 8));
#else
  const int g = lane >> 2, r = k0 + 2 * (lane & 3);
  #pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = r + (i & 1) * 8, col = c0 + g + (i >> 1) * 8;
    b[i] = (uint)tile[nv_at(row, col)] | ((uint)tile[nv_at(row + 1, col)] << 16);
  }
#endif
}

// This work-item's chunks of a tile of NV_BC rows from row r0 of `base`
// (rows `step` elements apart), zero at or past row `limit`: chunk
// tid % NV_CHUNKS of rows tid / NV_CHUNKS + i NV_ROWS_STEP.
#define NV_ROWS_STEP (NV_THREADS / NV_CHUNKS)
inline void nv_fetch(uint4* regs, global const ushort* base, long step, int r0, int limit,
                     int tid) {
  const int r = tid / NV_CHUNKS;
  global const ushort* p = base + (long)(r0 + r) * step + (tid % NV_CHUNKS) * 8;
  const long jump = NV_ROWS_STEP * step;
#pragma unroll
  for (int i = 0; i < NV_PREFETCH; ++i) {
    regs[i] = r0 + r + i * NV_ROWS_STEP < limit ? *(global const uint4*)(p + i * jump) : (uint4)(0);
  }
}
inline void nv_put(local ushort* tile, const uint4* regs, int tid) {
  const int r = tid / NV_CHUNKS, c = tid % NV_CHUNKS;
#pragma unroll
  for (int i = 0; i < NV_PREFETCH; ++i) {
    *(local uint4*)(tile + nv_at(r + i * NV_ROWS_STEP, c * 8)) = regs[i];
  }
}

// Rows of `rows` per work-group slot, as attn_common.cuh's block_slots: dense,
// ceil(T / rows) per batch row; varlen, block c of sequence n is slot
// floor(cu[n] / rows) + n + c (injective, below T / rows + N + 1).
inline long nv_slot_start(global const uchar* cu, long off, long stride, int kind, long T, long n) {
  const long b = clamp(load_index(cu, off, stride, kind, n), 0L, T);
  return b / NV_BR + n;
}

// Work-group (slot, query head), the longest causal blocks first.
kernel __attribute__((reqd_work_group_size(NV_THREADS, 1, 1))) void attn_fwd_nv(
    global const x_t* q, long q_off, long4 q_st, global const x_t* k, long k_off, long4 k_st,
    global const x_t* v, long v_off, long4 v_st, global const x_t* gate, long gate_off,
    long4 gate_st, global x_t* o, long o_off, long4 o_st, global float* lse, long lse_off,
    long4 lse_st, global const uchar* cu_q, long cu_q_off, long cu_q_stride, int cu_q_kind,
    global const uchar* cu_k, long cu_k_off, long cu_k_stride, int cu_k_kind, long N, long Tq,
    long Tk, long slots, int Hq, int Hkv, float scale, int causal) {
  local ushort sQ[NV_BR * NV_D];
  local ushort sKV[NV_BC * NV_D];
  const int tid = get_local_id(0), lane = tid & 31, warp = tid >> 5;
  const long group = get_group_id(0);
  const int head = group % Hq;
  const long slot = slots - 1 - group / Hq;
  long n, c;
  if (cu_q_kind == 0) {
    const long per = (Tq + NV_BR - 1) / NV_BR;
    n = slot / per;
    c = slot % per;
  } else {
    long lo = 0, hi = N - 1;  // the last sequence whose first slot is <= slot
    while (lo < hi) {
      const long mid = (lo + hi + 1) / 2;
      if (nv_slot_start(cu_q, cu_q_off, cu_q_stride, cu_q_kind, Tq, mid) <= slot) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    n = lo;
    c = slot - nv_slot_start(cu_q, cu_q_off, cu_q_stride, cu_q_kind, Tq, lo);
    if (c < 0) return;
  }
  const Span qs = sequence_span(cu_q, cu_q_off, cu_q_stride, cu_q_kind, n, Tq);
  const Span ks = sequence_span(cu_k, cu_k_off, cu_k_stride, cu_k_kind, n, Tk);
  // Sequence lengths fit int (the host checks Tq, Tk < 2^31 - 2^16).
  const int Lq = (int)(qs.end - qs.begin), Lk = (int)(ks.end - ks.begin);
  if (c * NV_BR >= Lq) return;
  const int m0 = (int)c * NV_BR;
  const int kvh = head / (Hq / Hkv);
  const int shift = Lk - Lq;  // query i sees keys j <= i + shift
  int kend = Lk;
  if (causal) kend = min(kend, m0 + NV_BR + shift);
  const int ntiles = kend > 0 ? (kend + NV_BC - 1) / NV_BC : 0;

  global const ushort* qb =
      (global const ushort*)q + q_off + qs.row * q_st.x + qs.begin * q_st.y + head * q_st.z;
  global const ushort* kb = (global const ushort*)k + k_off + ks.row * k_st.x + ks.begin * k_st.y + kvh * k_st.z;
  global const ushort* vb = (global const ushort*)v + v_off + ks.row * v_st.x + ks.begin * v_st.y + kvh * v_st.z;
  uint4 pf[NV_PREFETCH];
#pragma unroll
  for (int part = 0; part < NV_BR / NV_BC; ++part) {
    nv_fetch(pf, qb, q_st.y, m0 + part * NV_BC, Lq, tid);
    nv_put(sQ + part * NV_BC * NV_D, pf, tid);
  }
  if (NV_PIPE && ntiles > 0) nv_fetch(pf, kb, k_st.y, 0, Lk, tid);

  const float c2 = scale * NV_LOG2E;
  const int w0 = m0 + warp * 16;       // the warp's first row
  const int row_g = w0 + (lane >> 2);  // this lane's rows row_g and row_g + 8
  float acc[NV_D / 8][4];
  #pragma unroll
  for (int d = 0; d < NV_D / 8; ++d) acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float sc[NV_BC / 8][4];
  for (int t = 0; t < ntiles; ++t) {
    const int j0 = t * NV_BC;
    barrier(CLK_LOCAL_MEM_FENCE);  // the last tile's readers are done (and sQ is written)
    if (!NV_PIPE) nv_fetch(pf, kb, k_st.y, j0, Lk, tid);
    nv_put(sKV, pf, tid);
    barrier(CLK_LOCAL_MEM_FENCE);
    if (NV_PIPE) nv_fetch(pf, vb, v_st.y, j0, Lk, tid);  // V of this tile, in flight during Q K^T
    // A warp whose rows see no key of the tile skips it (its p would all be 0).
    const bool active = !causal || j0 <= w0 + 15 + shift;
    if (active) {
      #pragma unroll
      for (int j = 0; j < NV_BC / 8; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.0f;
      #pragma unroll 2
      for (int kk = 0; kk < NV_D / 16; ++kk) {
        uint a[4];
        nv_frag_a(a, sQ, warp * 16, kk, lane);
        #pragma unroll
        for (int np = 0; np < NV_BC / 16; ++np) {
          uint b[4];
          nv_frag_b_rows(b, sKV, np * 16, kk, lane);
          nv_mma(sc[2 * np], a[0], a[1], a[2], a[3], b[0], b[1]);
          nv_mma(sc[2 * np + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
        }
      }
      const bool masked = j0 + NV_BC > Lk || (causal && j0 + NV_BC - 1 > w0 + shift);
      #pragma unroll
      for (int j = 0; j < NV_BC / 8; ++j) {
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = sc[j][e] * c2;
          if (masked) {
            const int key = j0 + 8 * j + 2 * (lane & 3) + (e & 1);
            const int row = row_g + 8 * (e >> 1);
            if (key >= Lk || (causal && key > row + shift)) x = -INFINITY;
          }
          sc[j][e] = x;
        }
      }
      #pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
        #pragma unroll
        for (int j = 0; j < NV_BC / 8; ++j) mx = fmax(mx, fmax(sc[j][2 * r], sc[j][2 * r + 1]));
        const float m_new = fmax(m[r], nv_quad_max(mx));
        const float base = m_new == -INFINITY ? 0.0f : m_new;  // no key yet: keep zeros
        const float alpha = nv_ex2(m[r] - base);
        m[r] = m_new;
        float sum = 0.0f;
        #pragma unroll
        for (int j = 0; j < NV_BC / 8; ++j) {
          sc[j][2 * r] = nv_ex2(sc[j][2 * r] - base);
          sc[j][2 * r + 1] = nv_ex2(sc[j][2 * r + 1] - base);
          sum += sc[j][2 * r] + sc[j][2 * r + 1];
        }
        l[r] = l[r] * alpha + sum;
        #pragma unroll
        for (int d = 0; d < NV_D / 8; ++d) {
          acc[d][2 * r] *= alpha;
          acc[d][2 * r + 1] *= alpha;
        }
      }
    }
    barrier(CLK_LOCAL_MEM_FENCE);  // K's readers are done
    if (!NV_PIPE) nv_fetch(pf, vb, v_st.y, j0, Lk, tid);
    nv_put(sKV, pf, tid);
    barrier(CLK_LOCAL_MEM_FENCE);
    if (NV_PIPE && t + 1 < ntiles) nv_fetch(pf, kb, k_st.y, j0 + NV_BC, Lk, tid);  // in flight during P V
    if (active) {
      #pragma unroll
      for (int ks2 = 0; ks2 < NV_BC / 16; ++ks2) {
        // The C layout of two score n-tiles is the A layout of a 16 x 16 block.
        const uint a0 = nv_pack(sc[2 * ks2][0], sc[2 * ks2][1]);
        const uint a1 = nv_pack(sc[2 * ks2][2], sc[2 * ks2][3]);
        const uint a2 = nv_pack(sc[2 * ks2 + 1][0], sc[2 * ks2 + 1][1]);
        const uint a3 = nv_pack(sc[2 * ks2 + 1][2], sc[2 * ks2 + 1][3]);
        #pragma unroll
        for (int np = 0; np < NV_D / 16; ++np) {
          uint b[4];
          nv_frag_b_trans(b, sKV, ks2 * 16, np * 16, lane);
          nv_mma(acc[2 * np], a0, a1, a2, a3, b[0], b[1]);
          nv_mma(acc[2 * np + 1], a0, a1, a2, a3, b[2], b[3]);
        }
      }
    }
  }

  const float total[2] = {nv_quad_sum(l[0]), nv_quad_sum(l[1])};
  #pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int i = row_g + 8 * r;  // row of the sequence
    if (i >= Lq) continue;
    const float sum = total[r];
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const long t = qs.begin + i;
    if (lse && (lane & 3) == 0) {
      lse[lse_off + qs.row * lse_st.x + head * lse_st.y + t * lse_st.z] =
          sum > 0.0f ? (m[r] + log2(sum)) * NV_LN2 : -INFINITY;
    }
    const long orow = o_off + qs.row * o_st.x + t * o_st.y + head * o_st.z;
    const long grow = gate_off + qs.row * gate_st.x + t * gate_st.y + head * gate_st.z;
    #pragma unroll
    for (int d = 0; d < NV_D / 8; ++d) {
      const int col = 8 * d + 2 * (lane & 3);
      float x0 = acc[d][2 * r] * inv, x1 = acc[d][2 * r + 1] * inv;
      if (gate) {
        x0 *= sigmoid_f(LOAD_X(gate, grow + col * gate_st.w));
        x1 *= sigmoid_f(LOAD_X(gate, grow + (col + 1) * gate_st.w));
      }
      STORE_X(o, orow + col * o_st.w, x0);
      STORE_X(o, orow + (col + 1) * o_st.w, x1);
    }
  }
}
