// moe.cl: moe_route, moe_dispatch, moe_combine / moe_dispatch_bwd (one
// gather kernel) and moe_combine_bwd. Index tables ([T,k] ids and row maps,
// [E] counts) arrive as (pointer, element offset, strides (row, column),
// kind 4 int32 / 8 int64). Device-resident tables are not validated: an id
// or row outside its range is a dropped slot. Sums go in a fixed order and
// no float is ever summed by atomics: results are the same bits every run.
//
// The portable kernels give a work-item one column of a row (what a GPU
// coalesces); on CPU devices the *_rows kernels take whole rows per
// work-item with 16-wide vectors where the rows have unit column steps.

// Rows are copied as raw bits (exact, NaN payloads included).
#if HOPS_X == HOPS_F32
typedef uint raw_t;
typedef uint16 raw16_t;
#else
typedef ushort raw_t;
typedef ushort16 raw16_t;
#endif

inline long slot_index(global const uchar* p, long off, long2 st, int kind, long t, long j) {
  const long i = off + t * st.x + j * st.y;
  return kind == 8 ? ((global const long*)p)[i] : (long)((global const int*)p)[i];
}

inline void store_slot_index(global uchar* p, long off, long2 st, int kind, long t, long j,
                             long value) {
  const long i = off + t * st.x + j * st.y;
  if (kind == 8) {
    ((global long*)p)[i] = value;
  } else {
    ((global int*)p)[i] = (int)value;
  }
}

// The row of slot (t, j), or -1 when it is dropped or outside [0, R).
inline long slot_row(global const uchar* map, long off, long2 st, int kind, long t, long j,
                     long R) {
  const long r = slot_index(map, off, st, kind, t, j);
  return r >= 0 && r < R ? r : -1;
}

// ---- moe_route ---------------------------------------------------------------------
// Work-item per token. The experts are ranked by their score p (softmax
// over the experts: e^(l - top) / sum, top the largest logit; or sigmoid),
// best first, ties to the lower id. Where the device has float64 the scores
// are float64, as the oracle's and the CPU backend's: which scores tie
// depends on their precision (a sigmoid is 1 from about 37 in float64, from
// about 17 in float32). Without it the logit itself is the key: the same
// order but for float64's ties. Up to ROUTE_K picks: one pass inserting
// each expert into the sorted list of the best so far, which only a
// strictly better key enters ahead of another; more: k passes, pick j the
// best expert ranked below pick j - 1. The ids go to `ids`, which the
// weights then read.
#define ROUTE_K 16
#define ROUTE_E 64  // experts whose scores a work-item keeps (private); more: recomputed

#ifdef cl_khr_fp64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double score_t;
#define KEY_IS_SCORE 1
#else
typedef float score_t;
#define KEY_IS_SCORE 0
#endif

kernel void moe_route(global const x_t* logits, long l_off, long2 l_st,
                      global uchar* w, long w_off, int w_dtype, long2 w_st,
                      global uchar* ids, long ids_off, long2 ids_st, int ids_kind,
                      long T, int E, int k, int normalize, int sigmoid) {
  const long t = get_global_id(0);
  if (t >= T || k == 0) return;
  const long row = l_off + t * l_st.x;
#define LOGIT(e) LOAD_X(logits, row + (e) * l_st.y)
#define SIGMOID(e) (1 / (1 + exp(-(score_t)LOGIT(e))))
#define EXP(e) exp((score_t)LOGIT(e) - top)
  // The scores: kept in `p` up to ROUTE_E experts, else recomputed.
  score_t top = 0, sum = 1, p[ROUTE_E];
  const bool kept_p = E <= ROUTE_E;
  if (!sigmoid) {
    float largest = -INFINITY;
    for (int e = 0; e < E; ++e) largest = fmax(largest, LOGIT(e));
    top = largest;
    sum = 0;
    for (int e = 0; e < E; ++e) {
      const score_t x = EXP(e);
      if (kept_p) p[e] = x;
      sum += x;
    }
    if (kept_p) {
      for (int e = 0; e < E; ++e) p[e] /= sum;
    }
  } else if (kept_p) {
    for (int e = 0; e < E; ++e) p[e] = SIGMOID(e);
  }
#define SCORE(e) (kept_p ? p[e] : sigmoid ? SIGMOID(e) : EXP(e) / sum)
#define KEY(e) (KEY_IS_SCORE ? SCORE(e) : (score_t)LOGIT(e))
  if (k <= ROUTE_K) {
    score_t best[ROUTE_K];
    int best_e[ROUTE_K], kept = 0;
    for (int e = 0; e < E; ++e) {
      const score_t key = KEY(e);
      int at = kept;
      while (at > 0 && key > best[at - 1]) --at;
      if (at == k) continue;
      kept = min(kept + 1, k);
      for (int i = kept - 1; i > at; --i) {
        best[i] = best[i - 1];
        best_e[i] = best_e[i - 1];
      }
      best[at] = key;
      best_e[at] = e;
    }
    for (int j = 0; j < k; ++j) store_slot_index(ids, ids_off, ids_st, ids_kind, t, j, best_e[j]);
  } else {
    score_t prev = INFINITY;
    int prev_e = -1;
    for (int j = 0; j < k; ++j) {
      score_t best = -INFINITY;
      int best_e = -1;
      for (int e = 0; e < E; ++e) {
        const score_t key = KEY(e);
        const bool below = key < prev || (key == prev && e > prev_e);
        if (below && (best_e < 0 || key > best)) {
          best = key;
          best_e = e;
        }
      }
      store_slot_index(ids, ids_off, ids_st, ids_kind, t, j, best_e);
      prev = best;
      prev_e = best_e;
    }
  }
#define PICKED(j) SCORE(slot_index(ids, ids_off, ids_st, ids_kind, t, j))
  score_t denominator = 1;
  if (normalize) {
    denominator = 0;
    for (int j = 0; j < k; ++j) denominator += PICKED(j);
  }
  for (int j = 0; j < k; ++j) {
    store_any(w, w_off + t * w_st.x + j * w_st.y, w_dtype, (float)(PICKED(j) / denominator));
  }
#undef PICKED
#undef KEY
#undef SCORE
#undef EXP
#undef SIGMOID
#undef LOGIT
}

// ---- moe_dispatch ------------------------------------------------------------------
// moe_dispatch_map, one work-group: item c takes the c-th of `size` runs of
// the T*k slots in (token, slot) order. Bucket b of a slot is its expert,
// or E when it is dropped (or its id is outside [0, E)). Each item counts
// its run's slots per bucket into hist[c][b]; the counts become the first
// row of run c's slots of bucket b (buckets in order, runs in order within
// one: experts ascending, then the dropped slots, which own the rows past
// the kept ones) and counts[e]; then each item walks its run in order,
// giving each slot the next row of its bucket: row_map, and dest[s] = row
// (kept) or ~row (dropped: that row is zeroed). The copy then writes every
// row of `rows` exactly once.

inline int slot_bucket(global const uchar* ids, long off, long2 st, int kind, long s, int k,
                       int E) {
  const long id = slot_index(ids, off, st, kind, s / k, s % k);
  return id >= 0 && id < E ? (int)id : E;
}

// Exclusive prefix sums of one value per work-item through `sums` (2 *
// size longs), in a fixed order; the total in *all.
inline long work_group_exclusive_scan(long value, local long* sums, int lid, int size,
                                      long* all) {
  sums[lid] = value;
  int in = 0;
  for (int step = 1; step < size; step *= 2) {
    barrier(CLK_LOCAL_MEM_FENCE);
    const long add = lid >= step ? sums[in * size + lid - step] : 0;
    sums[(1 - in) * size + lid] = sums[in * size + lid] + add;
    in = 1 - in;
  }
  barrier(CLK_LOCAL_MEM_FENCE);
  const long inclusive = sums[in * size + lid];
  *all = sums[in * size + size - 1];
  barrier(CLK_LOCAL_MEM_FENCE);
  return inclusive - value;
}

// hist [size][E + 1] and total [E + 1] scratch, dest [T*k], `sums` 2 * size longs.
kernel void moe_dispatch_map(global const uchar* ids, long ids_off, long2 ids_st, int ids_kind,
                             global uchar* map, long map_off, long2 map_st, int map_kind,
                             global uchar* counts, long counts_off, long2 counts_st,
                             int counts_kind, long slots, int k, int E, global int* hist,
                             global int* total, global int* dest, local long* sums) {
  const int lid = get_local_id(0), size = get_local_size(0), buckets = E + 1;
  const long run = (slots + size - 1) / size, begin = min(slots, lid * run);
  const long end = min(slots, begin + run);
  global int* h = hist + lid * buckets;
  for (int b = 0; b < buckets; ++b) h[b] = 0;
  for (long s = begin; s < end; ++s) ++h[slot_bucket(ids, ids_off, ids_st, ids_kind, s, k, E)];
  barrier(CLK_GLOBAL_MEM_FENCE);
  for (int b = lid; b < buckets; b += size) {
    int before = 0;
    for (int c = 0; c < size; ++c) {
      const int n = hist[c * buckets + b];
      hist[c * buckets + b] = before;
      before += n;
    }
    total[b] = before;
  }
  barrier(CLK_GLOBAL_MEM_FENCE);
  // Each item takes a run of `per` buckets; the runs' sums are scanned.
  const int per = (buckets + size - 1) / size;
  const int b0 = min(buckets, lid * per), b1 = min(buckets, b0 + per);
  long sum = 0;
  for (int b = b0; b < b1; ++b) sum += total[b];
  long all;
  long first = work_group_exclusive_scan(sum, sums, lid, size, &all);
  for (int b = b0; b < b1; ++b) {
    const int n = total[b];
    if (b < E) store_slot_index(counts, counts_off, counts_st, counts_kind, b, 0, n);
    total[b] = (int)first;
    first += n;
  }
  barrier(CLK_GLOBAL_MEM_FENCE);
  for (int b = 0; b < buckets; ++b) h[b] += total[b];
  for (long s = begin; s < end; ++s) {
    const int b = slot_bucket(ids, ids_off, ids_st, ids_kind, s, k, E);
    const int row = h[b]++;
    store_slot_index(map, map_off, map_st, map_kind, s / k, s % k, b < E ? row : -1);
    dest[s] = b < E ? row : ~row;
  }
}

// Work-item (column i, token t): x[t, i] to the rows of t's kept slots, 0
// to its dropped slots' rows.
kernel void moe_dispatch_copy(global const raw_t* x, long x_off, long2 x_st,
                              global raw_t* rows, long r_off, long2 r_st, global const int* dest,
                              long T, int k, long Hd) {
  const long i = get_global_id(0), t = get_global_id(1);
  if (i >= Hd || t >= T) return;
  const raw_t value = x[x_off + t * x_st.x + i * x_st.y];
  for (int j = 0; j < k; ++j) {
    const int r = dest[t * k + j];
    rows[r_off + (r >= 0 ? r : ~r) * r_st.x + i * r_st.y] = r >= 0 ? value : (raw_t)0;
  }
}

// A store past the caches where the compiler has one (clang's, PoCL's): a
// plain store first reads the line it writes, a third more traffic for rows
// no cache holds. The pointer must be aligned to the vector.
#if defined(__has_builtin)
#if __has_builtin(__builtin_nontemporal_store)
#define STREAM_STORE(value, pointer) __builtin_nontemporal_store(value, pointer)
#endif
#endif
#ifndef STREAM_STORE
#define STREAM_STORE(value, pointer) (*(pointer) = (value))
#endif

// CPU devices: work-item per token, whole rows (unit column steps); with
// `stream` (large outputs) aligned vectors of rows are written past the caches.
// The 16-element vectors of a row copy, element i.
#define COPY_VALUE(i)                                  \
  (r < 0        ? (raw16_t)(0)                         \
   : in_aligned ? *(global const raw16_t*)(in + (i))   \
                : vload16(0, in + (i)))

kernel void moe_dispatch_copy_rows(global const raw_t* x, long x_off, long2 x_st,
                                   global raw_t* rows, long r_off, long2 r_st,
                                   global const int* dest, long T, int k, long Hd, int stream) {
  const long t = get_global_id(0);
  if (t >= T) return;
  global const raw_t* in = x + x_off + t * x_st.x;
  const long body = Hd / 16 * 16;
  // Whole vectors where the addresses allow (PoCL's vload16 / vstore16 of
  // integers went element by element). One loop per kind of store: the
  // compiler merged a streaming and a plain store of the same value in one
  // loop, dropping the streaming.
  const bool in_aligned = ((ulong)in & (sizeof(raw16_t) - 1)) == 0;
  for (int j = 0; j < k; ++j) {
    const int r = dest[t * k + j];
    global raw_t* out = rows + r_off + (r >= 0 ? r : ~r) * r_st.x;
    if (((ulong)out & (sizeof(raw16_t) - 1)) != 0) {
      for (long i = 0; i < body; i += 16) vstore16(COPY_VALUE(i), 0, out + i);
    } else if (stream) {
      for (long i = 0; i < body; i += 16) {
        STREAM_STORE(COPY_VALUE(i), (global raw16_t*)(out + i));
      }
    } else {
      for (long i = 0; i < body; i += 16) *(global raw16_t*)(out + i) = COPY_VALUE(i);
    }
    for (long i = body; i < Hd; ++i) out[i] = r >= 0 ? in[i] : 0;
  }
}
#undef COPY_VALUE

// ---- moe_combine and moe_dispatch_bwd -------------------------------------------------
// out[t] = sum over the kept slots j, in order, of w[t, j] rows[row_map[t, j]]
// (w = 1 without weights: dispatch_bwd). Work-item (column i, token t).
kernel void moe_gather(global const x_t* rows, long r_off, long2 r_st,
                       global const uchar* map, long map_off, long2 map_st, int map_kind,
                       global const uchar* w, long w_off, int w_dtype, long2 w_st,
                       global x_t* out, long o_off, long2 o_st, long T, int k, long R, long Hd) {
  const long i = get_global_id(0), t = get_global_id(1);
  if (i >= Hd || t >= T) return;
  float acc = 0.0f;
  for (int j = 0; j < k; ++j) {
    const long r = slot_row(map, map_off, map_st, map_kind, t, j, R);
    if (r < 0) continue;
    const float weight = w ? load_any(w, w_off + t * w_st.x + j * w_st.y, w_dtype) : 1.0f;
    acc += weight * LOAD_X(rows, r_off + r * r_st.x + i * r_st.y);
  }
  STORE_X(out, o_off + t * o_st.x + i * o_st.y, acc);
}

// CPU devices: work-item per token, 16 columns at a time (unit column
// steps, Hd % 16 == 0, k <= GATHER_SLOTS), the same order of sums as
// moe_gather; the kept slots' rows and weights are read once per token.
#define GATHER_SLOTS 16

kernel void moe_gather_rows(global const x_t* rows, long r_off, long2 r_st,
                            global const uchar* map, long map_off, long2 map_st, int map_kind,
                            global const uchar* w, long w_off, int w_dtype, long2 w_st,
                            global x_t* out, long o_off, long2 o_st, long T, int k, long R,
                            long Hd) {
  const long t = get_global_id(0);
  if (t >= T) return;
  long at[GATHER_SLOTS];
  float weight[GATHER_SLOTS];
  int kept = 0;
  for (int j = 0; j < k; ++j) {
    const long r = slot_row(map, map_off, map_st, map_kind, t, j, R);
    if (r < 0) continue;
    at[kept] = r_off + r * r_st.x;
    weight[kept++] = w ? load_any(w, w_off + t * w_st.x + j * w_st.y, w_dtype) : 1.0f;
  }
  for (long i = 0; i < Hd; i += 16) {
    float16 acc = (float16)(0.0f);
    for (int j = 0; j < kept; ++j) acc += weight[j] * LOAD16_X(rows, at[j] + i);
    STORE16_X(out, o_off + t * o_st.x + i, acc);
  }
}

// ---- moe_combine_bwd ---------------------------------------------------------------
// d_rows[r] = w[t, j] dy[t] for the slot (t, j) that owns row r: the last
// slot in (token, slot) order naming it, found by an integer max (the same
// whatever the order of the work-items; a host-resident map names no row
// twice, a device-resident one may); rows no slot names get zeros.
// d_w[t, j] = <dy[t], rows[row_map[t, j]]>, 0 for a dropped slot.

kernel void moe_fill_int(global int* p, long n, int value) {
  const long i = get_global_id(0);
  if (i < n) p[i] = value;
}

kernel void moe_claim_rows(global const uchar* map, long map_off, long2 map_st, int map_kind,
                           long T, int k, long R, global int* owner) {
  const long s = get_global_id(0);
  if (s >= T * k) return;
  const long r = slot_row(map, map_off, map_st, map_kind, s / k, s % k, R);
  if (r >= 0) atomic_max(owner + r, (int)s);
}

// Work-group per token, its items over the columns; the dot products of
// d_w summed per item, then by a tree in `partial` (local size floats).
kernel void moe_combine_bwd(global const x_t* rows, long r_off, long2 r_st,
                            global const uchar* map, long map_off, long2 map_st, int map_kind,
                            global const uchar* w, long w_off, int w_dtype, long2 w_st,
                            global const x_t* dy, long dy_off, long2 dy_st,
                            global x_t* d_rows, long dr_off, long2 dr_st,
                            global uchar* dw, long dw_off, int dw_dtype, long2 dw_st,
                            global const int* owner, long T, int k, long R, long Hd,
                            local float* partial) {
  const long t = get_group_id(0);
  const int lid = get_local_id(0), size = get_local_size(0);
  for (int j = 0; j < k; ++j) {
    const long r = slot_row(map, map_off, map_st, map_kind, t, j, R);
    const bool owns = r >= 0 && owner[r] == (int)(t * k + j);
    const bool dot = dw && r >= 0;
    const float weight = r >= 0 ? load_any(w, w_off + t * w_st.x + j * w_st.y, w_dtype) : 0.0f;
    float sum = 0.0f;
    if (owns || dot) {
      for (long i = lid; i < Hd; i += size) {
        const float g = LOAD_X(dy, dy_off + t * dy_st.x + i * dy_st.y);
        if (dot) sum += g * LOAD_X(rows, r_off + r * r_st.x + i * r_st.y);
        if (owns) STORE_X(d_rows, dr_off + r * dr_st.x + i * dr_st.y, weight * g);
      }
    }
    if (!dw) continue;
    partial[lid] = sum;
    for (int half_size = size / 2; half_size > 0; half_size /= 2) {
      barrier(CLK_LOCAL_MEM_FENCE);
      if (lid < half_size) partial[lid] += partial[lid + half_size];
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid == 0) store_any(dw, dw_off + t * dw_st.x + j * dw_st.y, dw_dtype, partial[0]);
    barrier(CLK_LOCAL_MEM_FENCE);
  }
}

// Work-item (column i, row r): zero where no slot owns row r.
kernel void moe_zero_unowned(global x_t* d_rows, long dr_off, long2 dr_st,
                             global const int* owner, long R, long Hd) {
  const long i = get_global_id(0), r = get_global_id(1);
  if (i >= Hd || r >= R || owner[r] >= 0) return;
  STORE_X(d_rows, dr_off + r * dr_st.x + i * dr_st.y, 0.0f);
}

// CPU devices: work-item per token (unit column steps, Hd % 16 == 0); d_w
// as 16 lane sums added by a fixed tree.
kernel void moe_combine_bwd_rows(global const x_t* rows, long r_off, long2 r_st,
                                 global const uchar* map, long map_off, long2 map_st, int map_kind,
                                 global const uchar* w, long w_off, int w_dtype, long2 w_st,
                                 global const x_t* dy, long dy_off, long2 dy_st,
                                 global x_t* d_rows, long dr_off, long2 dr_st,
                                 global uchar* dw, long dw_off, int dw_dtype, long2 dw_st,
                                 global const int* owner, long T, int k, long R, long Hd) {
  const long t = get_global_id(0);
  if (t >= T) return;
  const long dy_at = dy_off + t * dy_st.x;
  for (int j = 0; j < k; ++j) {
    const long r = slot_row(map, map_off, map_st, map_kind, t, j, R);
    const bool owns = r >= 0 && owner[r] == (int)(t * k + j);
    const bool dot = dw && r >= 0;
    float16 sum = (float16)(0.0f);
    if (owns || dot) {
      const float weight = load_any(w, w_off + t * w_st.x + j * w_st.y, w_dtype);
      for (long i = 0; i < Hd; i += 16) {
        const float16 g = LOAD16_X(dy, dy_at + i);
        if (dot) sum += g * LOAD16_X(rows, r_off + r * r_st.x + i);
        if (owns) STORE16_X(d_rows, dr_off + r * dr_st.x + i, weight * g);
      }
    }
    if (!dw) continue;
    const float8 s8 = sum.lo + sum.hi;
    const float4 s4 = s8.lo + s8.hi;
    const float2 s2 = s4.lo + s4.hi;
    store_any(dw, dw_off + t * dw_st.x + j * dw_st.y, dw_dtype, s2.x + s2.y);
  }
}

// CPU devices: work-item per row.
kernel void moe_zero_unowned_rows(global x_t* d_rows, long dr_off, long2 dr_st,
                                  global const int* owner, long R, long Hd) {
  const long r = get_global_id(0);
  if (r >= R || owner[r] >= 0) return;
  for (long i = 0; i < Hd; i += 16) {
    STORE16_X(d_rows, dr_off + r * dr_st.x + i, (float16)(0.0f));
  }
}

// ---- the experts' rows (moe_mlp.cl's kernels read them) --------------------------------
// One work-group. first[e] = the first row of expert e (e = 0..E; first[E]:
// the rows in use), the running sum of the counts clamped to [0, R] (each
// count to [0, R] first: device-resident counts are not validated);
// tiles[e] = the row tiles of `tile` rows before expert e.
kernel void moe_expert_offsets(global const uchar* counts, long counts_off, long2 counts_st,
                               int counts_kind, int E, long R, int tile, global int* first,
                               global int* tiles, local long* sums) {
  const int lid = get_local_id(0), size = get_local_size(0);
  const int per = (E + size - 1) / size;
  const int e0 = min(E, lid * per), e1 = min(E, e0 + per);
  long sum = 0;
  for (int e = e0; e < e1; ++e) {
    sum += clamp(slot_index(counts, counts_off, counts_st, counts_kind, e, 0), 0L, R);
  }
  long all;
  long row = work_group_exclusive_scan(sum, sums, lid, size, &all);
  long run_tiles = 0;
  for (int e = e0; e < e1; ++e) {
    const long begin = min(row, R);
    row += clamp(slot_index(counts, counts_off, counts_st, counts_kind, e, 0), 0L, R);
    run_tiles += (min(row, R) - begin + tile - 1) / tile;
  }
  long tile_first = work_group_exclusive_scan(run_tiles, sums, lid, size, &all);
  row -= sum;  // back to the run's first row
  for (int e = e0; e < e1; ++e) {
    first[e] = (int)min(row, R);
    tiles[e] = (int)tile_first;
    const long begin = min(row, R);
    row += clamp(slot_index(counts, counts_off, counts_st, counts_kind, e, 0), 0L, R);
    tile_first += (min(row, R) - begin + tile - 1) / tile;
  }
  if (lid == size - 1) {
    first[E] = (int)min(row, R);
    tiles[E] = (int)tile_first;
  }
}
