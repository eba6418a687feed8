// What the two GDN kernels (gdn_chunk.cpp, gdn_recurrent.cpp) share: a
// token's inputs read as fp32 with the l2 norm and the fused gate applied,
// and the f32 state of one (sequence or slot, value head) addressed through
// its K and V steps, whichever layout the tensor has.
#pragma once

#include <cmath>
#include <cstdint>

#include "gdn.hpp"

namespace hops::cpu::gdn {

inline void l2_normalize(float* x, int64_t n) {
  const float inverse_norm = 1.0f / std::sqrt(dot(x, x, n) + 1e-6f);
  for (int64_t i = 0; i < n; ++i) x[i] *= inverse_norm;
}

// The gate of one value head: g as given, or, when the op fuses gdn_gating's
// gate, computed from the raw a (torch softplus: beta 1, threshold 20); beta
// as given or through a sigmoid (times 2 for negative eigenvalues), as
// beta_mode says.
class HeadGate {
 public:
  HeadGate(const GdnProblem& op, int64_t hv) : fused_(op.fused_gating()), beta_mode_(op.beta_mode) {
    if (fused_) {
      rate_ = std::exp(load(op.A_log, hv * op.A_log.stride[0]));
      dt_bias_ = load(op.dt_bias, hv * op.dt_bias.stride[0]);
    }
  }
  float log_decay(float g) const {
    return fused_ ? -rate_ * softplus(g + dt_bias_, 1.0f, 20.0f) : g;
  }
  float write_strength(float beta) const {
    switch (beta_mode_) {
      case BetaMode::sigmoid:
        return sigmoid(beta);
      case BetaMode::double_sigmoid:
        return 2.0f * sigmoid(beta);
      default:
        return beta;
    }
  }

 private:
  bool fused_;
  BetaMode beta_mode_;
  float rate_ = 0.0f, dt_bias_ = 0.0f;  // exp(A_log[hv]), dt_bias[hv]
};

// q and k of token t of batch row `row` and key head h (K floats each),
// l2-normalised when the op asks.
inline void load_query_key(const GdnProblem& op, int64_t row, int64_t t, int64_t h, float* q,
                           float* k) {
  load_run(op.q, op.q.offset(row, t, h, 0), op.q.stride[3], op.K, q);
  load_run(op.k, op.k.offset(row, t, h, 0), op.k.stride[3], op.K, k);
  if (op.use_qk_l2norm) {
    l2_normalize(q, op.K);
    l2_normalize(k, op.K);
  }
}

struct TokenGate {
  float log_decay, beta;
};

// v (V floats) of token t for value head hv, and its gate.
inline TokenGate load_value(const GdnProblem& op, const HeadGate& gate, int64_t row, int64_t t,
                            int64_t hv, float* v) {
  load_run(op.v, op.v.offset(row, t, hv, 0), op.v.stride[3], op.V, v);
  float g = 0.0f, beta = 0.0f;
  load_run(op.g, op.g.offset(row, t, hv), 0, 1, &g);
  load_run(op.beta, op.beta.offset(row, t, hv), 0, 1, &beta);
  return {gate.log_decay(g), gate.write_strength(beta)};
}

// Value head hv reads key head hv / G, as repeat_interleave(G) does.
inline int64_t key_head(const GdnProblem& op, int64_t hv) { return hv / (op.HV / op.H); }

// The K x V state of (index, hv) in a [.., HV, K, V] or [.., HV, V, K] f32
// tensor: element (i, j) is data[i * k_step + j * v_step].
struct StateView {
  float* data;
  int64_t k_step, v_step;
};

inline StateView state_view(const Tensor& state, int64_t index, int64_t hv, bool v_first) {
  return {state.data<float>() + state.offset(index, hv, 0, 0), state.stride[v_first ? 3 : 2],
          state.stride[v_first ? 2 : 3]};
}

// Copies a state into dense rows (K rows of V, `ld` apart) and back.
inline void load_state(const StateView& state, int64_t K, int64_t V, float* __restrict rows,
                       int64_t ld) {
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = 0; j < V; ++j) {
      rows[i * ld + j] = state.data[i * state.k_step + j * state.v_step];
    }
  }
}

inline void store_state(const float* __restrict rows, int64_t ld, int64_t K, int64_t V,
                        const StateView& state) {
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = 0; j < V; ++j) {
      state.data[i * state.k_step + j * state.v_step] = rows[i * ld + j];
    }
  }
}

}  // namespace hops::cpu::gdn
