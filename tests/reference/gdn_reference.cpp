// The gdn family's float64 oracle: the gate, the delta rule forward (whole
// sequences and decode against a state pool) and its backward, in plain
// loops (see reference.cpp).
#include "gdn_reference.hpp"

#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

namespace hops::ref {

using namespace detail;  // NOLINT(google-build-using-namespace): the shared helpers

namespace {

// The Qwen3.5 log decay of one head: g = -exp(A_log) * softplus(a + dt_bias).
double log_decay(double A_log, double a, double dt_bias, double softplus_beta,
                 double softplus_threshold) {
  return -std::exp(A_log) * softplus(a + dt_bias, softplus_beta, softplus_threshold);
}

// x / sqrt(sum x^2 + 1e-6): the epsilon sits inside the root, as in FLA.
std::vector<double> l2normalized(const std::vector<double>& x) {
  double sum_squares = 0.0;
  for (double value : x) sum_squares += value * value;
  const double inverse_norm = 1.0 / std::sqrt(sum_squares + 1e-6);
  std::vector<double> result(x.size());
  for (size_t i = 0; i < x.size(); ++i) result[i] = x[i] * inverse_norm;
  return result;
}

// ---- GDN ----------------------------------------------------------------------

// The sizes of one GDN call, checked once.
struct GdnDims {
  int64_t B, T, H, HV, K, V;
  int64_t G;  // value heads per key head
};

GdnDims gdn_dims(const Array64& q, const Array64& k, const Array64& v, const Array64& g,
                 const Array64& beta, const GdnOptions& options) {
  require_rank(q, 4, "q");
  require_rank(v, 4, "v");
  GdnDims d{};
  d.B = q.dim(0);
  d.T = q.dim(1);
  d.H = q.dim(2);
  d.K = q.dim(3);
  d.HV = v.dim(2);
  d.V = v.dim(3);
  require_shape(k, q.shape, "k");
  require_shape(v, {d.B, d.T, d.HV, d.V}, "v");
  require_shape(g, {d.B, d.T, d.HV}, "g");
  require_shape(beta, {d.B, d.T, d.HV}, "beta");
  require(
      d.H > 0 && d.HV % d.H == 0,
      "HV (" + std::to_string(d.HV) + ") must be a multiple of H (" + std::to_string(d.H) + ")");
  d.G = d.HV / d.H;
  require((options.A_log == nullptr) == (options.dt_bias == nullptr),
          "A_log and dt_bias come together");
  if (options.A_log != nullptr) {
    require_shape(*options.A_log, {d.HV}, "A_log");
    require_shape(*options.dt_bias, {d.HV}, "dt_bias");
  }
  return d;
}

// Shape of `count` GDN states: [count, HV, K, V], or [count, HV, V, K] when
// the states are stored value-first.
std::vector<int64_t> state_shape(int64_t count, const GdnDims& d, bool state_v_first) {
  if (state_v_first) return {count, d.HV, d.V, d.K};
  return {count, d.HV, d.K, d.V};
}

// The state of one (sequence, value head) as a K x V matrix: S[i][j], i over
// K, j over V, whatever the stored layout.
using Matrix = std::vector<std::vector<double>>;

Matrix zero_state(const GdnDims& d) { return Matrix(d.K, std::vector<double>(d.V, 0.0)); }

Matrix load_state(const Array64& states, int64_t index, int64_t hv, const GdnDims& d,
                  bool state_v_first) {
  Matrix S = zero_state(d);
  for (int64_t i = 0; i < d.K; ++i) {
    for (int64_t j = 0; j < d.V; ++j) {
      // Value-first storage holds the transpose: stored[j][i] = S[i][j].
      S[i][j] = state_v_first ? states.at({index, hv, j, i}) : states.at({index, hv, i, j});
    }
  }
  return S;
}

void store_state(const Matrix& S, Array64& states, int64_t index, int64_t hv, const GdnDims& d,
                 bool state_v_first) {
  for (int64_t i = 0; i < d.K; ++i) {
    for (int64_t j = 0; j < d.V; ++j) {
      if (state_v_first) {
        states.at({index, hv, j, i}) = S[i][j];
      } else {
        states.at({index, hv, i, j}) = S[i][j];
      }
    }
  }
}

// Runs the delta rule over the tokens of one sequence for value head hv,
// starting from S and leaving the final state in S; writes the o rows of
// those tokens for that head.
void delta_rule(const GdnDims& d, const Array64& q, const Array64& k, const Array64& v,
                const Array64& g, const Array64& beta, const GdnOptions& options,
                const Sequence& sequence, int64_t hv, Matrix& S, Array64& o) {
  const int64_t h = hv / d.G;  // the key head this value head reads (repeat_interleave(G))
  const double scale =
      options.scale != 0.0 ? options.scale : 1.0 / std::sqrt(static_cast<double>(d.K));
  const int64_t b = sequence.batch;

  for (int64_t t = sequence.begin; t < sequence.end; ++t) {
    // The token's decay and write strength; with the fused gate g holds the
    // raw a, turned into the decay exactly as gdn_gating does; beta as
    // beta_mode says.
    double g_t = g.at({b, t, hv});
    double beta_t = beta.at({b, t, hv});
    if (options.A_log != nullptr) {
      g_t = log_decay(options.A_log->at({hv}), g_t, options.dt_bias->at({hv}), 1.0, 20.0);
    }
    const int beta_mode =
        options.beta_mode >= 0 ? options.beta_mode : (options.A_log != nullptr ? 1 : 0);
    if (beta_mode >= 1) beta_t = beta_mode * sigmoid(beta_t);

    std::vector<double> q_t(d.K), k_t(d.K), v_t(d.V);
    for (int64_t i = 0; i < d.K; ++i) {
      q_t[i] = q.at({b, t, h, i});
      k_t[i] = k.at({b, t, h, i});
    }
    for (int64_t j = 0; j < d.V; ++j) v_t[j] = v.at({b, t, hv, j});
    if (options.use_qk_l2norm) {
      q_t = l2normalized(q_t);
      k_t = l2normalized(k_t);
    }

    // S = exp(g_t) S: the memory fades.
    const double decay = std::exp(g_t);
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.V; ++j) S[i][j] *= decay;
    }

    // u = beta_t (v_t - S^T k_t): how far what S recalls for k_t is from v_t.
    std::vector<double> u(d.V);
    for (int64_t j = 0; j < d.V; ++j) {
      double recalled = 0.0;
      for (int64_t i = 0; i < d.K; ++i) recalled += S[i][j] * k_t[i];
      u[j] = beta_t * (v_t[j] - recalled);
    }

    // S = S + k_t u^T: write the correction under key k_t.
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.V; ++j) S[i][j] += k_t[i] * u[j];
    }

    // o_t = S^T (scale q_t): read with the query, after this token's write.
    for (int64_t j = 0; j < d.V; ++j) {
      double out = 0.0;
      for (int64_t i = 0; i < d.K; ++i) out += S[i][j] * (scale * q_t[i]);
      o.at({b, t, hv, j}) = out;
    }
  }
}

// The gradient with respect to x of l2normalized(x), given the gradient d_hat
// with respect to x^ = x r, r = 1 / sqrt(|x|^2 + 1e-6): r (d_hat - x^ (x^.d_hat)).
std::vector<double> l2normalized_backward(const std::vector<double>& x,
                                          const std::vector<double>& d_hat) {
  const std::vector<double> x_hat = l2normalized(x);
  double sum_squares = 0.0, projection = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    sum_squares += x[i] * x[i];
    projection += x_hat[i] * d_hat[i];
  }
  const double inverse_norm = 1.0 / std::sqrt(sum_squares + 1e-6);
  std::vector<double> dx(x.size());
  for (size_t i = 0; i < x.size(); ++i) dx[i] = inverse_norm * (d_hat[i] - x_hat[i] * projection);
  return dx;
}

// The gradients of delta_rule for one sequence and value head hv started from
// S0. On entry dS is the gradient of the final state, on return that of S0.
// Adds the gradients with respect to the (normalised) q and k of the tokens
// into grads.dq and grads.dk, summing over the value heads of a key head;
// writes the dv, dg and dbeta rows of the tokens.
void delta_rule_backward(const GdnDims& d, const Array64& q, const Array64& k, const Array64& v,
                         const Array64& g, const Array64& beta, const GdnOptions& options,
                         const Sequence& sequence, int64_t hv, const Matrix& S0, const Array64& d_o,
                         Matrix& dS, GdnGrads& grads) {
  const int64_t h = hv / d.G;
  const double scale =
      options.scale != 0.0 ? options.scale : 1.0 / std::sqrt(static_cast<double>(d.K));
  const int64_t b = sequence.batch;
  auto key_row = [&](const Array64& x, int64_t t) {
    std::vector<double> row(d.K);
    for (int64_t i = 0; i < d.K; ++i) row[i] = x.at({b, t, h, i});
    return options.use_qk_l2norm ? l2normalized(row) : row;
  };
  auto value_row = [&](const Array64& x, int64_t t) {
    std::vector<double> row(d.V);
    for (int64_t j = 0; j < d.V; ++j) row[j] = x.at({b, t, hv, j});
    return row;
  };

  // The forward again, keeping the state before each token.
  std::vector<Matrix> before;
  Matrix S = S0;
  for (int64_t t = sequence.begin; t < sequence.end; ++t) {
    before.push_back(S);
    const std::vector<double> k_t = key_row(k, t), v_t = value_row(v, t);
    const double decay = std::exp(g.at({b, t, hv}));
    const double beta_t = beta.at({b, t, hv});
    for (int64_t j = 0; j < d.V; ++j) {
      double recalled = 0.0;
      for (int64_t i = 0; i < d.K; ++i) recalled += decay * S[i][j] * k_t[i];
      const double u = beta_t * (v_t[j] - recalled);
      for (int64_t i = 0; i < d.K; ++i) S[i][j] = decay * S[i][j] + k_t[i] * u;
    }
  }

  // Backwards through the tokens; dS is the gradient of the state after token t.
  for (int64_t t = sequence.end - 1; t >= sequence.begin; --t) {
    const std::vector<double> q_t = key_row(q, t), k_t = key_row(k, t);
    const std::vector<double> v_t = value_row(v, t), do_t = value_row(d_o, t);
    const double decay = std::exp(g.at({b, t, hv}));
    const double beta_t = beta.at({b, t, hv});
    const Matrix& S_before = before[t - sequence.begin];

    // The token's forward quantities: S' = exp(g_t) S_before, e = v_t - S'^T k_t,
    // u = beta_t e and the state after the token, S' + k_t u^T.
    Matrix decayed = zero_state(d), after = zero_state(d);
    std::vector<double> error(d.V), u(d.V);
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.V; ++j) decayed[i][j] = decay * S_before[i][j];
    }
    for (int64_t j = 0; j < d.V; ++j) {
      double recalled = 0.0;
      for (int64_t i = 0; i < d.K; ++i) recalled += decayed[i][j] * k_t[i];
      error[j] = v_t[j] - recalled;
      u[j] = beta_t * error[j];
    }
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.V; ++j) after[i][j] = decayed[i][j] + k_t[i] * u[j];
    }

    // o_t = after^T (scale q_t).
    std::vector<double> dq(d.K, 0.0), dk(d.K, 0.0);
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.V; ++j) {
        dq[i] += scale * after[i][j] * do_t[j];
        dS[i][j] += scale * q_t[i] * do_t[j];
      }
    }

    // after = S' + k_t u^T.
    std::vector<double> du(d.V, 0.0);
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.V; ++j) {
        du[j] += dS[i][j] * k_t[i];
        dk[i] += dS[i][j] * u[j];
      }
    }

    // u = beta_t (v_t - S'^T k_t).
    double dbeta = 0.0;
    for (int64_t j = 0; j < d.V; ++j) {
      grads.dv.at({b, t, hv, j}) = beta_t * du[j];
      dbeta += du[j] * error[j];
    }
    grads.dbeta.at({b, t, hv}) = dbeta;
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.V; ++j) {
        dk[i] -= beta_t * decayed[i][j] * du[j];
        dS[i][j] -= beta_t * k_t[i] * du[j];  // now the gradient of S'
      }
    }
    for (int64_t i = 0; i < d.K; ++i) {
      grads.dq.at({b, t, h, i}) += dq[i];
      grads.dk.at({b, t, h, i}) += dk[i];
    }

    // S' = exp(g_t) S_before: dg_t = sum(dS' * S'), and dS_before = exp(g_t) dS'.
    double dg = 0.0;
    for (int64_t i = 0; i < d.K; ++i) {
      for (int64_t j = 0; j < d.V; ++j) {
        dg += dS[i][j] * decayed[i][j];
        dS[i][j] *= decay;
      }
    }
    grads.dg.at({b, t, hv}) = dg;
  }
}

}  // namespace

// ---- gdn_gating -----------------------------------------------------------------

Gating gdn_gating(const Array64& A_log, const Array64& a, const Array64& b, const Array64& dt_bias,
                  double softplus_beta, double softplus_threshold) {
  require(!a.shape.empty(), "a must have rank >= 1 ([..., HV])");
  const int64_t HV = a.dim(-1);
  require_shape(b, a.shape, "b");
  require_shape(A_log, {HV}, "A_log");
  require_shape(dt_bias, {HV}, "dt_bias");

  Gating result{Array64(a.shape), Array64(a.shape)};
  // Row-major: the head is the index along the last dim.
  for (int64_t i = 0; i < a.numel(); ++i) {
    const int64_t h = i % HV;
    result.g.data[i] =
        log_decay(A_log.data[h], a.data[i], dt_bias.data[h], softplus_beta, softplus_threshold);
    result.beta.data[i] = sigmoid(b.data[i]);
  }
  return result;
}

// ---- gdn_forward / gdn_recurrent ---------------------------------------------------

GdnResult gdn_forward(const Array64& q, const Array64& k, const Array64& v, const Array64& g,
                      const Array64& beta, const Array64* h0,
                      const std::vector<int64_t>* cu_seqlens, const GdnOptions& options) {
  const GdnDims d = gdn_dims(q, k, v, g, beta, options);
  const std::vector<Sequence> seqs = sequences(d.B, d.T, cu_seqlens);
  const int64_t N = static_cast<int64_t>(seqs.size());
  if (h0 != nullptr) require_shape(*h0, state_shape(N, d, options.state_v_first), "h0");

  // Every token belongs to exactly one sequence, so every o row gets written.
  GdnResult result{Array64({d.B, d.T, d.HV, d.V}),
                   Array64(state_shape(N, d, options.state_v_first))};
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t hv = 0; hv < d.HV; ++hv) {
      Matrix S = h0 != nullptr ? load_state(*h0, n, hv, d, options.state_v_first) : zero_state(d);
      delta_rule(d, q, k, v, g, beta, options, seqs[n], hv, S, result.o);
      store_state(S, result.final_state, n, hv, d, options.state_v_first);
    }
  }
  return result;
}

void gdn_recurrent(const Array64& q, const Array64& k, const Array64& v, const Array64& g,
                   const Array64& beta, Array64& state_pool,
                   const std::vector<int64_t>* state_indices,
                   const std::vector<int64_t>* cu_seqlens, const GdnOptions& options, Array64& o) {
  const GdnDims d = gdn_dims(q, k, v, g, beta, options);
  const std::vector<Sequence> seqs = sequences(d.B, d.T, cu_seqlens);
  const int64_t N = static_cast<int64_t>(seqs.size());
  require_rank(state_pool, 4, "state_pool");
  const int64_t pool_size = state_pool.dim(0);
  require_shape(state_pool, state_shape(pool_size, d, options.state_v_first), "state_pool");
  require_shape(o, {d.B, d.T, d.HV, d.V}, "o");
  const std::vector<int64_t> slots = pool_slots(N, pool_size, state_indices);

  for (int64_t n = 0; n < N; ++n) {
    if (slots[n] < 0) continue;  // skipped: its o rows and its state stay as they were
    for (int64_t hv = 0; hv < d.HV; ++hv) {
      Matrix S = load_state(state_pool, slots[n], hv, d, options.state_v_first);
      delta_rule(d, q, k, v, g, beta, options, seqs[n], hv, S, o);
      store_state(S, state_pool, slots[n], hv, d, options.state_v_first);
    }
  }
}

GdnGrads gdn_backward(const Array64& q, const Array64& k, const Array64& v, const Array64& g,
                      const Array64& beta, const Array64* h0,
                      const std::vector<int64_t>* cu_seqlens, const Array64& d_o,
                      const Array64* d_final_state, const GdnOptions& options) {
  const GdnDims d = gdn_dims(q, k, v, g, beta, options);
  require(options.A_log == nullptr && options.beta_mode <= 0,
          "gdn_backward takes g and beta as they are: no fused gate, no beta_mode");
  const std::vector<Sequence> seqs = sequences(d.B, d.T, cu_seqlens);
  const int64_t N = static_cast<int64_t>(seqs.size());
  const std::vector<int64_t> states = state_shape(N, d, options.state_v_first);
  if (h0 != nullptr) require_shape(*h0, states, "h0");
  require_shape(d_o, {d.B, d.T, d.HV, d.V}, "d_o");
  if (d_final_state != nullptr) require_shape(*d_final_state, states, "d_final_state");

  // dq and dk hold the gradients of the normalised q and k until the end.
  GdnGrads grads{Array64(q.shape), Array64(k.shape),    Array64(v.shape),
                 Array64(g.shape), Array64(beta.shape), Array64(states)};
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t hv = 0; hv < d.HV; ++hv) {
      const Matrix S0 =
          h0 != nullptr ? load_state(*h0, n, hv, d, options.state_v_first) : zero_state(d);
      Matrix dS = d_final_state != nullptr
                      ? load_state(*d_final_state, n, hv, d, options.state_v_first)
                      : zero_state(d);
      delta_rule_backward(d, q, k, v, g, beta, options, seqs[n], hv, S0, d_o, dS, grads);
      store_state(dS, grads.dh0, n, hv, d, options.state_v_first);
    }
  }
  if (options.use_qk_l2norm) {
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t t = 0; t < d.T; ++t) {
        for (int64_t h = 0; h < d.H; ++h) {
          for (auto [x, dx] : {std::pair{&q, &grads.dq}, std::pair{&k, &grads.dk}}) {
            std::vector<double> row(d.K), d_hat(d.K);
            for (int64_t i = 0; i < d.K; ++i) {
              row[i] = x->at({b, t, h, i});
              d_hat[i] = dx->at({b, t, h, i});
            }
            const std::vector<double> d_row = l2normalized_backward(row, d_hat);
            for (int64_t i = 0; i < d.K; ++i) dx->at({b, t, h, i}) = d_row[i];
          }
        }
      }
    }
  }
  return grads;
}

}  // namespace hops::ref
