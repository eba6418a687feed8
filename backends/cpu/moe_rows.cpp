// The MoE ops that move rows: moe_dispatch (copies of the tokens grouped by
// expert), moe_combine and moe_dispatch_bwd (each token gathers its rows, in
// slot order), moe_combine_bwd (each slot scatters its token's gradient to
// its row). The bookkeeping of dispatch is serial (T*k index steps, far
// cheaper than the copies); the copies run in parallel over blocks of tokens,
// each row written by one thread.
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "checked_math.hpp"
#include "moe.hpp"

namespace hops::cpu {

namespace {

constexpr int64_t kTokensPerTask = 32;
constexpr int64_t kRowsPerTask = 256;

int64_t task_count(int64_t items, int64_t per_task) { return (items + per_task - 1) / per_task; }

// The row of slot (t, j), or -1 when it is dropped or outside [0, R).
int64_t slot_row(const Tensor& row_map, int64_t t, int64_t j, int64_t R) {
  const int64_t r = moe::load_index(row_map, row_map.offset(t, j));
  return r >= 0 && r < R ? r : -1;
}

// Copies n elements of the storage type T.
template <class T>
void copy_row(const T* __restrict in, int64_t in_step, T* __restrict out, int64_t out_step,
              int64_t n) {
  if (in_step == 1 && out_step == 1) {
    std::memcpy(out, in, n * sizeof(T));
  } else {
    for (int64_t i = 0; i < n; ++i) out[i * out_step] = in[i * in_step];
  }
}

// Outputs of at least this many bytes are written past the caches (stream_copy).
constexpr int64_t kStreamBytes = int64_t{64} << 20;

// memcpy with non-temporal stores from the first 16-byte aligned byte of out:
// an ordinary store reads the line it writes first, a third of the traffic of
// a copy into memory no cache holds. Weakly ordered: stream_fence() before
// another thread may read out.
void stream_copy(const void* in, void* out, int64_t bytes) {
#if defined(__x86_64__)
  const auto* from = static_cast<const char*>(in);
  auto* to = static_cast<char*>(out);
  const int64_t head = std::min(bytes, static_cast<int64_t>(-reinterpret_cast<uintptr_t>(to) & 15));
  std::memcpy(to, from, head);
  int64_t i = head;
  for (; i + 16 <= bytes; i += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(to + i),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(from + i)));
  }
  std::memcpy(to + i, from + i, bytes - i);
#else
  std::memcpy(out, in, bytes);
#endif
}
void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// Rows [first, last) of a [R, Hd] tensor set to zero.
void zero_row_range(const Tensor& t, int64_t first, int64_t last) {
  if (t.shape[1] == 0) return;  // data may be NULL
  visit_float(t.dtype, [&]<class T>(T) {
    const int64_t n = t.shape[1], step = t.stride[1];
    for (int64_t r = first; r < last; ++r) {
      T* row = t.data<T>() + t.offset(r, 0);
      if (step == 1) {
        std::memset(static_cast<void*>(row), 0, n * sizeof(T));
      } else {
        for (int64_t i = 0; i < n; ++i) row[i * step] = T{};
      }
    }
  });
}

// What combine and dispatch_bwd share: out[t] = sum over the kept slots j,
// in order, of w[t, j] * rows[row_map[t, j]] (w = 1 without weights).
struct Gather {
  const Tensor &rows, &row_map, &weights, &out;
  int64_t R, T, k, Hd;
};

// acc[i] += w * row[i], row of the storage type T with step `step`.
template <class T>
[[gnu::always_inline]] inline void add_scaled(float* __restrict acc, const T* __restrict row,
                                              int64_t step, int64_t n, float w) {
  if (step == 1) {
    for (int64_t i = 0; i < n; ++i) acc[i] += w * to_float(row[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) acc[i] += w * to_float(row[i * step]);
  }
}

template <class T>
[[gnu::always_inline]] inline void gather_tokens(const Gather& g, int64_t first, int64_t last,
                                                 float* __restrict acc) {
  const int64_t Hd = g.Hd, step = g.rows.stride[1];
  for (int64_t t = first; t < last; ++t) {
    std::fill(acc, acc + Hd, 0.0f);
    for (int64_t j = 0; j < g.k; ++j) {
      const int64_t r = slot_row(g.row_map, t, j, g.R);
      if (r < 0) continue;
      const float w = g.weights ? load(g.weights, g.weights.offset(t, j)) : 1.0f;
      add_scaled(acc, g.rows.data<const T>() + g.rows.offset(r, 0), step, Hd, w);
    }
    store_run(g.out, g.out.offset(t, 0), g.out.stride[1], Hd, acc);
  }
}

// One instance per storage dtype, each compiled per ISA level.
HOPS_VECTOR_CLONES void gather_f32(const Gather& g, int64_t first, int64_t last, float* acc) {
  gather_tokens<float>(g, first, last, acc);
}
HOPS_VECTOR_CLONES void gather_bf16(const Gather& g, int64_t first, int64_t last, float* acc) {
  gather_tokens<bf16>(g, first, last, acc);
}
HOPS_VECTOR_CLONES void gather_f16(const Gather& g, int64_t first, int64_t last, float* acc) {
  gather_tokens<f16>(g, first, last, acc);
}

void gather(const ExecContext& context, const Gather& g, std::string_view name) {
  const int64_t per_worker = round_up(g.Hd, kPadding);
  const auto lease = context.scratch->acquire(
      scratch_bytes(name, scratch_size(name, per_worker, context.max_workers), sizeof(float)));
  const auto run = g.rows.dtype == DType::bf16  ? &gather_bf16
                   : g.rows.dtype == DType::f16 ? &gather_f16
                                                : &gather_f32;
  context.threads->parallel_for(task_count(g.T, kTokensPerTask), context.max_workers,
                                [&](int64_t task, int worker) {
                                  const int64_t first = task * kTokensPerTask;
                                  run(g, first, std::min(g.T, first + kTokensPerTask),
                                      lease.as<float>() + worker * per_worker);
                                });
}

// d_rows[row_map[t, j]] = w[t, j] * dy[t]; d_w[t, j] = dy[t] . rows[row_map[t, j]].
HOPS_VECTOR_CLONES void scatter_tokens(const MoeCombineBwd& op, int64_t first, int64_t last,
                                       float* __restrict dy, float* __restrict row,
                                       float* __restrict out) {
  const int64_t Hd = op.Hd;
  for (int64_t t = first; t < last; ++t) {
    load_run(op.dy, op.dy.offset(t, 0), op.dy.stride[1], Hd, dy);
    for (int64_t j = 0; j < op.k; ++j) {
      const int64_t r = slot_row(op.row_map, t, j, op.R);
      if (r >= 0) {
        const float w = load(op.topk_weights, op.topk_weights.offset(t, j));
        for (int64_t i = 0; i < Hd; ++i) out[i] = w * dy[i];
        store_run(op.d_rows, op.d_rows.offset(r, 0), op.d_rows.stride[1], Hd, out);
      }
      if (!op.d_topk_weights) continue;
      float dw = 0.0f;
      if (r >= 0) {
        load_run(op.rows, op.rows.offset(r, 0), op.rows.stride[1], Hd, row);
        dw = dot(dy, row, Hd);
      }
      store(op.d_topk_weights, op.d_topk_weights.offset(t, j), dw);
    }
  }
}

}  // namespace

void moe::zero_rows(const ExecContext& context, const Tensor& t, int64_t first, int64_t last) {
  context.threads->parallel_for(task_count(last - first, kRowsPerTask), context.max_workers,
                                [&](int64_t task, int) {
                                  const int64_t begin = first + task * kRowsPerTask;
                                  zero_row_range(t, begin, std::min(last, begin + kRowsPerTask));
                                });
}

void moe_dispatch(const ExecContext& context, const MoeDispatch& op) {
  const std::string_view name = op.kName;
  const int64_t T = op.T, k = op.k, E = op.E, R = T * k;
  // Per expert: its first row, then the next row to hand out.
  const auto lease =
      context.scratch->acquire(scratch_bytes(name, scratch_sum(name, 2 * E, 1), sizeof(int64_t)));
  int64_t* first = lease.as<int64_t>();
  int64_t* next = first + E + 1;
  std::fill(next, next + E, 0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t id = moe::load_index(op.topk_ids, op.topk_ids.offset(t, j));
      if (id >= 0 && id < E) ++next[id];
    }
  }
  first[0] = 0;
  for (int64_t e = 0; e < E; ++e) {
    moe::store_index(op.counts, e * op.counts.stride[0], next[e]);
    first[e + 1] = first[e] + next[e];
    next[e] = first[e];
  }
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t id = moe::load_index(op.topk_ids, op.topk_ids.offset(t, j));
      moe::store_index(op.row_map, op.row_map.offset(t, j), id >= 0 && id < E ? next[id]++ : -1);
    }
  }
  const int64_t used = first[E];
  // Rows of no elements (Hd = 0): only the tables; x's data may be NULL.
  if (op.Hd > 0) {
    visit_float(op.x.dtype, [&]<class S>(S) {
      const bool stream = op.x.stride[1] == 1 && op.rows.stride[1] == 1 &&
                          R * op.Hd * static_cast<int64_t>(sizeof(S)) >= kStreamBytes;
      context.threads->parallel_for(
          task_count(T, kTokensPerTask), context.max_workers, [&](int64_t task, int) {
            for (int64_t t = task * kTokensPerTask; t < std::min(T, (task + 1) * kTokensPerTask);
                 ++t) {
              const S* in = op.x.data<const S>() + op.x.offset(t, 0);
              for (int64_t j = 0; j < k; ++j) {
                const int64_t r = slot_row(op.row_map, t, j, R);
                if (r < 0) continue;
                S* out = op.rows.data<S>() + op.rows.offset(r, 0);
                if (stream) {
                  stream_copy(in, out, op.Hd * static_cast<int64_t>(sizeof(S)));
                } else {
                  copy_row(in, op.x.stride[1], out, op.rows.stride[1], op.Hd);
                }
              }
            }
            if (stream) stream_fence();
          });
    });
  }
  moe::zero_rows(context, op.rows, used, R);
}

void moe_combine(const ExecContext& context, const MoeCombine& op) {
  gather(context, {op.rows, op.row_map, op.topk_weights, op.y, op.R, op.T, op.k, op.Hd}, op.kName);
}

void moe_dispatch_bwd(const ExecContext& context, const MoeDispatchBwd& op) {
  const Tensor none;
  gather(context, {op.d_rows, op.row_map, none, op.dx, op.R, op.T, op.k, op.Hd}, op.kName);
}

void moe_combine_bwd(const ExecContext& context, const MoeCombineBwd& op) {
  const std::string_view name = op.kName;
  const int64_t Hdp = round_up(op.Hd, kPadding), per_worker = scratch_size(name, 3, Hdp);
  // Which rows a slot writes (one byte each, as floats), then the workers' rows.
  const int64_t mark_floats = round_up(op.R, 4 * kPadding) / 4;
  const auto lease = context.scratch->acquire(scratch_bytes(
      name, scratch_sum(name, mark_floats, scratch_size(name, per_worker, context.max_workers)),
      sizeof(float)));
  auto* written = lease.as<unsigned char>();
  std::fill(written, written + op.R, 0);
  for (int64_t t = 0; t < op.T; ++t) {
    for (int64_t j = 0; j < op.k; ++j) {
      const int64_t r = slot_row(op.row_map, t, j, op.R);
      if (r >= 0) written[r] = 1;
    }
  }
  context.threads->parallel_for(
      task_count(op.T, kTokensPerTask), context.max_workers, [&](int64_t task, int worker) {
        float* buffers = lease.as<float>() + mark_floats + worker * per_worker;
        const int64_t first = task * kTokensPerTask;
        scatter_tokens(op, first, std::min(op.T, first + kTokensPerTask), buffers, buffers + Hdp,
                       buffers + 2 * Hdp);
      });
  // Rows no slot reads get zero gradients (runs of them zeroed together).
  context.threads->parallel_for(task_count(op.R, kRowsPerTask), context.max_workers,
                                [&](int64_t task, int) {
                                  const int64_t end = std::min(op.R, (task + 1) * kRowsPerTask);
                                  for (int64_t r = task * kRowsPerTask; r < end; ++r) {
                                    if (written[r]) continue;
                                    int64_t last = r + 1;
                                    while (last < end && !written[last]) ++last;
                                    zero_row_range(op.d_rows, r, last);
                                    r = last;
                                  }
                                });
}

}  // namespace hops::cpu
