// gdn_recurrent: the delta rule token by token on a state pool updated in
// place (decode, and a few tokens per sequence for speculative decoding), one
// task per (sequence, value head). With a = e^g and u = beta (v - a S^T k),
// the output of the updated state is o = scale (a S^T q + (k.q) u): both
// reductions read the old state, so a token is one sweep over the state, each
// element read from memory and written back once.
#include <algorithm>

#include "checked_math.hpp"
#include "gdn_common.hpp"

namespace hops::cpu {

namespace {

// One token of one value head, fp32.
struct Token {
  const float* q;  // [K], l2-normalised when asked
  const float* k;  // [K]
  const float* v;  // [V]
  float decay;     // e^g
  float beta;
  float scale;
  float key_query;  // k.q
};

// Columns per panel: a K x kPanel panel stays in L1 between its two passes.
constexpr int64_t kPanel = 64;

// One panel of the [K, V] layout, `width` <= kPanel columns from c0: a read
// pass accumulates S^T k and S^T q down the rows, then a read-write pass
// decays the panel and adds k u^T while it is still in L1. Full panels have
// a constant width, which keeps the accumulators in registers.
template <bool kFull>
[[gnu::always_inline]] inline void step_panel(float* state, int64_t row_step, int64_t K, int64_t c0,
                                              int64_t width, const Token& x, float* o) {
  const int64_t columns = kFull ? kPanel : width;
  float state_k[kPanel] = {}, state_q[kPanel] = {}, u[kPanel];
  for (int64_t i = 0; i < K; ++i) {
    const float* __restrict s = state + i * row_step + c0;
    const float k_i = x.k[i], q_i = x.q[i];
    for (int64_t c = 0; c < columns; ++c) {
      state_k[c] += k_i * s[c];
      state_q[c] += q_i * s[c];
    }
  }
  for (int64_t c = 0; c < columns; ++c) {
    u[c] = x.beta * (x.v[c0 + c] - x.decay * state_k[c]);
    o[c0 + c] = x.scale * (x.decay * state_q[c] + x.key_query * u[c]);
  }
  for (int64_t i = 0; i < K; ++i) {
    float* __restrict s = state + i * row_step + c0;
    const float k_i = x.k[i];
    for (int64_t c = 0; c < columns; ++c) s[c] = x.decay * s[c] + k_i * u[c];
  }
}

// The [K, V] layout (v contiguous, rows `row_step` apart), panel by panel.
HOPS_VECTOR_CLONES void step_k_rows(float* state, int64_t row_step, int64_t K, int64_t V,
                                    const Token& x, float* o) {
  int64_t c0 = 0;
  for (; c0 + kPanel <= V; c0 += kPanel) step_panel<true>(state, row_step, K, c0, kPanel, x, o);
  if (c0 < V) step_panel<false>(state, row_step, K, c0, V - c0, x, o);
}

// The [V, K] layout (k contiguous, rows `row_step` apart): each row j holds
// what output j needs, so the dot products and the update stay in the row.
HOPS_VECTOR_CLONES void step_v_rows(float* state, int64_t row_step, int64_t K, int64_t V,
                                    const Token& x, float* o) {
  for (int64_t j = 0; j < V; ++j) {
    float* __restrict s = state + j * row_step;
    const float state_k = dot(s, x.k, K), state_q = dot(s, x.q, K);
    const float u = x.beta * (x.v[j] - x.decay * state_k);
    o[j] = x.scale * (x.decay * state_q + x.key_query * u);
    for (int64_t c = 0; c < K; ++c) s[c] = x.decay * s[c] + u * x.k[c];
  }
}

// A worker's fp32 buffers.
struct DecodeBuffers {
  float* q;      // [K]
  float* k;      // [K]
  float* v;      // [V]
  float* o;      // [V]
  float* dense;  // [K, V] a state with no contiguous dim, copied

  static int64_t floats(int64_t K, int64_t V) {
    constexpr std::string_view kOp = GdnRecurrent::kName;
    constexpr int64_t kCacheLineFloats = 16;
    const int64_t floats = scratch_sum(kOp, scratch_size(kOp, 2, K), scratch_size(kOp, 2, V),
                                       scratch_size(kOp, K, V), kCacheLineFloats - 1);
    return floats / kCacheLineFloats * kCacheLineFloats;
  }
  DecodeBuffers(float* base, int64_t K, int64_t V)
      : q(base), k(q + K), v(k + K), o(v + V), dense(o + V) {}
};

void decode_head(const GdnRecurrent& op, int64_t n, int64_t hv, const DecodeBuffers& buffers) {
  const int64_t slot = op.slots(n);
  const auto [row, begin, end] = op.sequences[n];
  if (slot < 0 || begin == end) return;
  const int64_t K = op.K, V = op.V;
  const gdn::StateView state = gdn::state_view(op.state, slot, hv, op.state_v_first);
  const bool copied = state.v_step != 1 && state.k_step != 1;
  if (copied) gdn::load_state(state, K, V, buffers.dense, V);
  const gdn::StateView work = copied ? gdn::StateView{buffers.dense, V, 1} : state;
  const gdn::HeadGate gate(op, hv);
  for (int64_t t = begin; t < end; ++t) {
    gdn::load_query_key(op, row, t, gdn::key_head(op, hv), buffers.q, buffers.k);
    const auto [log_decay, beta] = gdn::load_value(op, gate, row, t, hv, buffers.v);
    const Token token{buffers.q,
                      buffers.k,
                      buffers.v,
                      std::exp(log_decay),
                      beta,
                      static_cast<float>(op.scale),
                      dot(buffers.k, buffers.q, K)};
    if (work.v_step == 1) {
      step_k_rows(work.data, work.k_step, K, V, token, buffers.o);
    } else {
      step_v_rows(work.data, work.v_step, K, V, token, buffers.o);
    }
    store_run(op.o, op.o.offset(row, t, hv, 0), op.o.stride[3], V, buffers.o);
  }
  if (copied) gdn::store_state(buffers.dense, V, K, V, state);
}

}  // namespace

void gdn_recurrent(const ExecContext& context, const GdnRecurrent& op) {
  const int64_t per_worker = DecodeBuffers::floats(op.K, op.V);
  const auto lease = context.scratch->acquire(
      scratch_bytes(op.kName, per_worker, sizeof(float), context.max_workers));
  context.threads->parallel_for(checked_product(op.kName, op.sequences.count, op.HV),
                                context.max_workers, [&](int64_t task, int worker) {
                                  const DecodeBuffers buffers(
                                      lease.as<float>() + worker * per_worker, op.K, op.V);
                                  decode_head(op, task / op.HV, task % op.HV, buffers);
                                });
}

}  // namespace hops::cpu
