// common.cl: what every hops program starts with (the host prepends it).
//
// Storage dtypes: fp32, fp16 and bf16, all computed in fp32. fp16 goes
// through vload_half / vstore_half_rte, which OpenCL 1.2 has on every device
// (cl_khr_fp16 is only needed for half arithmetic, which we never do); bf16
// is a ushort converted here. The primary dtype of a program (q/k/v/o, x/y)
// is fixed at build time by HOPS_X; the small tensors (gates, weights,
// states) carry a runtime dtype code instead, so that one program serves
// every mix the ops allow.
//
// Tensors arrive as (pointer, element offset) plus strides in elements.
// Index tensors arrive as (pointer, offset, stride, kind), kind 0 absent,
// 4 int32, 8 int64.

#define HOPS_F32 0
#define HOPS_F16 1
#define HOPS_BF16 2

inline float bf16_to_float(ushort bits) { return as_float((uint)bits << 16); }

// Round to nearest even, as the CPU backend does; NaN stays NaN.
inline ushort float_to_bf16(float x) {
  const uint bits = as_uint(x);
  if (isnan(x)) return (ushort)((bits >> 16) | 0x40u);
  return (ushort)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

inline ushort16 float16_to_bf16(float16 x) {
  const uint16 bits = as_uint16(x);
  const ushort16 rounded = convert_ushort16((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  return select(rounded, convert_ushort16((bits >> 16) | 0x40u), convert_short16(isnan(x)));
}

#if HOPS_X == HOPS_F32
typedef float x_t;
#define LOAD_X(p, i) ((p)[i])
#define STORE_X(p, i, v) ((p)[i] = (v))
#elif HOPS_X == HOPS_F16
typedef half x_t;
#define LOAD_X(p, i) vload_half((i), (p))
#define STORE_X(p, i, v) vstore_half_rte((v), (i), (p))
#else
typedef ushort x_t;
#define LOAD_X(p, i) bf16_to_float((p)[i])
#define STORE_X(p, i, v) ((p)[i] = float_to_bf16(v))
#endif

// 16 contiguous elements from element i, at any alignment, for the kernels
// of CPU devices written with explicit SIMD. 16-bit types go as ushort16
// bits, one vector access where the address is aligned to it (PoCL's vload16
// / vstore16 of ushort went element by element, and its vstore_half16
// faulted on an address not 32-byte aligned).
inline ushort16 load16_bits(global const ushort* p) {
  return ((ulong)p & 31) == 0 ? *(global const ushort16*)p : vload16(0, p);
}
inline void store16_bits(global ushort* p, ushort16 bits) {
  if (((ulong)p & 31) == 0) {
    *(global ushort16*)p = bits;
  } else {
    vstore16(bits, 0, p);
  }
}
#if HOPS_X == HOPS_F32
#define LOAD16_X(p, i) vload16(0, (p) + (i))
#define STORE16_X(p, i, v) vstore16((v), 0, (p) + (i))
#elif HOPS_X == HOPS_F16
inline float16 load16_f16(global const half* p, long i) {
  const ushort16 bits = load16_bits((global const ushort*)p + i);
  return vload_half16(0, (const half*)&bits);
}
inline void store16_f16(global half* p, long i, float16 v) {
  ushort16 bits;
  vstore_half16_rte(v, 0, (half*)&bits);
  store16_bits((global ushort*)p + i, bits);
}
#define LOAD16_X(p, i) load16_f16((p), (i))
#define STORE16_X(p, i, v) store16_f16((p), (i), (v))
#else
#define LOAD16_X(p, i) as_float16(convert_uint16(load16_bits((p) + (i))) << 16)
#define STORE16_X(p, i, v) store16_bits((p) + (i), float16_to_bf16(v))
#endif

// The sum of a float16's lanes, in a fixed tree order.
inline float sum16(float16 x) {
  const float8 a = x.lo + x.hi;
  const float4 b = a.lo + a.hi;
  const float2 c = b.lo + b.hi;
  return c.x + c.y;
}

// 16 elements of x_t from offset, `step` apart, as floats (and back).
inline float16 load_row16(global const x_t* p, long offset, long step) {
  if (step == 1) return LOAD16_X(p, offset);
  float lanes[16];
  for (int c = 0; c < 16; ++c) lanes[c] = LOAD_X(p, offset + c * step);
  return vload16(0, lanes);
}

inline void store_row16(global x_t* p, long offset, long step, float16 value) {
  if (step == 1) {
    STORE16_X(p, offset, value);
    return;
  }
  float lanes[16];
  vstore16(value, 0, lanes);
  for (int c = 0; c < 16; ++c) STORE_X(p, offset + c * step, lanes[c]);
}

// Element i of a float tensor whose dtype is known at run time.
inline float load_any(global const uchar* base, long i, int dtype) {
  if (dtype == HOPS_F32) return ((global const float*)base)[i];
  if (dtype == HOPS_F16) return vload_half(i, (global const half*)base);
  return bf16_to_float(((global const ushort*)base)[i]);
}

inline void store_any(global uchar* base, long i, int dtype, float value) {
  if (dtype == HOPS_F32) {
    ((global float*)base)[i] = value;
  } else if (dtype == HOPS_F16) {
    vstore_half_rte(value, i, (global half*)base);
  } else {
    ((global ushort*)base)[i] = float_to_bf16(value);
  }
}

// 16 elements `step` apart, of a float tensor of runtime dtype.
inline float16 gather_any16(global const uchar* p, long offset, long step, int dtype) {
  if (dtype == HOPS_F32 && step == 1) return vload16(0, (global const float*)p + offset);
  float lanes[16];
  for (int c = 0; c < 16; ++c) lanes[c] = load_any(p, offset + c * step, dtype);
  return vload16(0, lanes);
}

// Entry n of an index tensor.
inline long load_index(global const uchar* base, long offset, long stride, int kind, long n) {
  const long i = offset + n * stride;
  return kind == 8 ? ((global const long*)base)[i] : (long)((global const int*)base)[i];
}

// The tokens of sequence n: batch row n of T tokens, or with cu_seqlens the
// span [cu[n], cu[n+1]) of row 0. Device-resident offsets are not validated
// by the host, so they are clamped: a bad one gives a wrong span, never an
// access outside the tensors.
typedef struct {
  long row, begin, end;
} Span;

inline Span sequence_span(global const uchar* cu, long cu_off, long cu_stride, int cu_kind, long n,
                          long T) {
  Span s;
  if (cu_kind == 0) {
    s.row = n;
    s.begin = 0;
    s.end = T;
  } else {
    s.row = 0;
    s.begin = clamp(load_index(cu, cu_off, cu_stride, cu_kind, n), 0L, T);
    s.end = clamp(load_index(cu, cu_off, cu_stride, cu_kind, n + 1), s.begin, T);
  }
  return s;
}

// The state slot of sequence n: state_indices[n], or n without them; -1 when
// the sequence is skipped or its slot is outside the pool [0, S).
inline long state_slot(global const uchar* slots, long off, long stride, int kind, long n, long S) {
  const long slot = kind == 0 ? n : load_index(slots, off, stride, kind, n);
  return slot >= 0 && slot < S ? slot : -1;
}

// The last sequence whose (clamped) start is at or before token t: the one
// holding t when cu_seqlens are valid.
inline long sequence_of(global const uchar* cu, long cu_off, long cu_stride, int cu_kind, long N,
                        long T, long t) {
  long low = 0, high = N - 1;
  while (low < high) {
    const long middle = (low + high + 1) / 2;
    if (clamp(load_index(cu, cu_off, cu_stride, cu_kind, middle), 0L, T) <= t) {
      low = middle;
    } else {
      high = middle - 1;
    }
  }
  return low;
}

inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp(-x)); }
inline float silu_f(float x) { return x * sigmoid_f(x); }
inline float16 silu_f16(float16 x) { return x / (1.0f + exp(-x)); }

// torch.nn.functional.softplus: linear above the threshold.
inline float softplus_f(float x, float beta, float threshold) {
  return beta * x > threshold ? x : log1p(exp(beta * x)) / beta;
}

// silu'(x) = sigmoid(x) (1 + x (1 - sigmoid(x))).
inline float silu_grad_f(float x) {
  const float gate = sigmoid_f(x);
  return gate * (1.0f + x * (1.0f - gate));
}

// Tree sum over the work-group's `size` items (a power of two) of two values
// per item, sums[lid] and sums[size + lid]: the totals end in sums[0] and
// sums[size], visible to every item on return. The same order on every run.
inline void work_group_sum_pairs(local float* sums, int lid, int size) {
  for (int half_size = size / 2; half_size > 0; half_size /= 2) {
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lid < half_size) {
      sums[lid] += sums[lid + half_size];
      sums[size + lid] += sums[size + lid + half_size];
    }
  }
  barrier(CLK_LOCAL_MEM_FENCE);
}

// Conv1d filters have at most this many taps.
#define MAX_WIDTH 4

// GDN: per (b, t, hv), what gdn_prepare (gdn.cl) leaves in the token info
// buffer: e^g, beta, 1/|q|, 1/|k|, q^.k^, g (the chunked kernels sum the log
// decays: a product of e^g would underflow).
#define TOKEN_INFO 6

// Offset of row `row` of a [..., last] tensor whose leading dims the host
// merged where it could and passed, at most 7 of them, innermost first, in
// long8s (rows.hpp): used by norm.cl and gdn_gating.cl.
#define HOPS_LEAD_DIM(c)                        \
  if (dims > c) {                               \
    offset += (row % shape.s##c) * stride.s##c; \
    row /= shape.s##c;                          \
  }

inline long lead_offset(long row, long8 shape, long8 stride, int dims) {
  long offset = 0;
  HOPS_LEAD_DIM(0)
  HOPS_LEAD_DIM(1)
  HOPS_LEAD_DIM(2)
  HOPS_LEAD_DIM(3)
  HOPS_LEAD_DIM(4)
  HOPS_LEAD_DIM(5)
  HOPS_LEAD_DIM(6)
  return offset;
}
