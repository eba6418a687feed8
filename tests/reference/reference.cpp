// The float64 oracle of every hops op. Plain loops over plain indices, in the
// order the math in docs/OPS.md is written, so that a reader can check each
// line against the spec. Speed does not matter here; being obviously right does.
//
// Misuse (a wrong shape, a bad cu_seqlens, a slot out of range) throws
// std::invalid_argument: in a test, that is a bug in the test.
#include "reference.hpp"

#include <cmath>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

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

double activate(Activation activation, double x) {
  return activation == Activation::silu ? silu(x) : x;
}

double activate_derivative(Activation activation, double x) {
  return activation == Activation::silu ? silu_derivative(x) : 1.0;
}

// The slot of sequence n in a state pool of `pool_size` slots: state_indices[n],
// or n without indices. -1 means "skip". Checks the whole list once: every
// value in [-1, pool_size), no slot named twice (their updates would alias).
std::vector<int64_t> pool_slots(int64_t N, int64_t pool_size,
                                const std::vector<int64_t>* state_indices) {
  std::vector<int64_t> slots(N);
  if (state_indices == nullptr) {
    require(N <= pool_size, "without state_indices, N (" + std::to_string(N) +
                                ") must be <= the pool size (" + std::to_string(pool_size) + ")");
    for (int64_t n = 0; n < N; ++n) slots[n] = n;
    return slots;
  }
  require(static_cast<int64_t>(state_indices->size()) == N,
          "state_indices has " + std::to_string(state_indices->size()) +
              " entries, expected N = " + std::to_string(N));
  std::set<int64_t> used;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t slot = (*state_indices)[n];
    require(slot >= -1 && slot < pool_size,
            "state_indices[" + std::to_string(n) + "] = " + std::to_string(slot) +
                " is outside [-1, " + std::to_string(pool_size) + ")");
    if (slot >= 0) {
      require(used.insert(slot).second,
              "slot " + std::to_string(slot) + " is named by two sequences");
    }
    slots[n] = slot;
  }
  return slots;
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
    // The token's decay and write strength; with fused gating g and beta
    // hold the raw a and b, turned into the gate exactly as gdn_gating does.
    double g_t = g.at({b, t, hv});
    double beta_t = beta.at({b, t, hv});
    if (options.A_log != nullptr) {
      g_t = log_decay(options.A_log->at({hv}), g_t, options.dt_bias->at({hv}), 1.0, 20.0);
      beta_t = sigmoid(beta_t);
    }

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

// ---- conv1d -------------------------------------------------------------------

// Sizes of a depthwise conv: channels D, width W; checks weight and bias.
void check_filter(const Array64& weight, const Array64* bias, int64_t D) {
  require_rank(weight, 2, "weight");
  require(weight.dim(0) == D, "weight has shape " + shape_string(weight.shape) + ", expected [" +
                                  std::to_string(D) + ",W]");
  require(weight.dim(1) >= 1, "weight width W must be >= 1");
  if (bias != nullptr) require_shape(*bias, {D}, "bias");
}

// A conv state [N,D,length] (any length): checked when present.
void check_conv_state(const Array64* state, int64_t N, int64_t D, const std::string& name) {
  if (state == nullptr) return;
  require_rank(*state, 3, name);
  require(state->dim(0) == N && state->dim(1) == D,
          name + " has shape " + shape_string(state->shape) + ", expected [" + std::to_string(N) +
              "," + std::to_string(D) + ",L]");
}

// One output of the depthwise conv at channel d: bias plus the W taps applied
// to the W inputs ending at (and including) the current token, oldest first.
// window[j] is the input at offset j - (W-1) from the current token.
double conv_output(const Array64& weight, const Array64* bias, int64_t d,
                   const std::vector<double>& window, Activation activation) {
  double sum = bias != nullptr ? bias->at({d}) : 0.0;
  for (int64_t j = 0; j < static_cast<int64_t>(window.size()); ++j)
    sum += weight.at({d, j}) * window[j];
  return activate(activation, sum);
}

// The conv's input for sequence n (s) at channel d and position p, counted
// from its first token: the tokens for p >= 0, the initial state's columns
// (newest last) for p < 0, and 0 before those or with no state (the history
// of W-1 zeros).
double conv_input(const Array64& x, const Array64* initial_state, const Sequence& s, int64_t n,
                  int64_t d, int64_t p) {
  if (p >= 0) return x.at({s.batch, s.begin + p, d});
  const int64_t column = initial_state != nullptr ? initial_state->dim(2) + p : -1;
  return column >= 0 ? initial_state->at({n, d, column}) : 0.0;
}

}  // namespace

// ---- Array64 --------------------------------------------------------------------

Array64::Array64(std::vector<int64_t> dims, double fill) : shape(std::move(dims)) {
  int64_t count = 1;
  for (int64_t extent : shape) {
    require(extent >= 0, "negative extent in shape " + shape_string(shape));
    count *= extent;
  }
  data.assign(count, fill);
}

namespace {

// Row-major offset of `index` in `shape`, bounds-checked: a wrong index in the
// oracle must fail loudly, never read a neighbour.
// The messages are built only on failure: this runs for every element the
// oracle touches.
int64_t row_major_offset(const std::vector<int64_t>& shape, std::initializer_list<int64_t> index) {
  if (index.size() != shape.size()) {
    require(false,
            "index of rank " + std::to_string(index.size()) + " into shape " + shape_string(shape));
  }
  int64_t offset = 0;
  size_t axis = 0;
  for (int64_t i : index) {
    if (i < 0 || i >= shape[axis]) {
      require(false, "index " + std::to_string(i) + " out of range on axis " +
                         std::to_string(axis) + " of shape " + shape_string(shape));
    }
    offset = offset * shape[axis] + i;
    ++axis;
  }
  return offset;
}

}  // namespace

double& Array64::at(std::initializer_list<int64_t> index) {
  return data[row_major_offset(shape, index)];
}

double Array64::at(std::initializer_list<int64_t> index) const {
  return data[row_major_offset(shape, index)];
}

// ---- sequences ------------------------------------------------------------------

std::vector<Sequence> sequences(int64_t B, int64_t T, const std::vector<int64_t>* cu_seqlens) {
  std::vector<Sequence> result;
  if (cu_seqlens == nullptr) {
    // Dense: each batch row is one sequence of T tokens.
    for (int64_t n = 0; n < B; ++n) result.push_back({n, 0, T});
    return result;
  }
  // Varlen: the sequences are packed back to back in the single row 0.
  const std::vector<int64_t>& cu = *cu_seqlens;
  require(B == 1, "varlen inputs need B == 1, got B = " + std::to_string(B));
  require(cu.size() >= 2, "cu_seqlens needs N+1 >= 2 entries");
  require(cu.front() == 0, "cu_seqlens[0] must be 0");
  require(cu.back() == T,
          "cu_seqlens[N] = " + std::to_string(cu.back()) + ", expected T = " + std::to_string(T));
  for (size_t n = 0; n + 1 < cu.size(); ++n) {
    require(cu[n] <= cu[n + 1], "cu_seqlens must be nondecreasing");
    result.push_back({0, cu[n], cu[n + 1]});
  }
  return result;
}

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
  require(options.A_log == nullptr, "gdn_backward takes g and beta: no fused gating");
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

// ---- conv1d_fwd -----------------------------------------------------------------

Conv1dResult conv1d_fwd(const Array64& x, const Array64& weight, const Array64* bias,
                        const Array64* initial_state, const std::vector<int64_t>* cu_seqlens,
                        Activation activation, int64_t final_len) {
  require_rank(x, 3, "x");
  const int64_t B = x.dim(0), T = x.dim(1), D = x.dim(2);
  check_filter(weight, bias, D);
  const int64_t W = weight.dim(1);
  const std::vector<Sequence> seqs = sequences(B, T, cu_seqlens);
  const int64_t N = static_cast<int64_t>(seqs.size());
  check_conv_state(initial_state, N, D, "initial_state");
  require(final_len >= 0, "final_len must be >= 0");

  Conv1dResult result{Array64({B, T, D}), Array64({N, D, final_len})};
  for (int64_t n = 0; n < N; ++n) {
    const Sequence& s = seqs[n];
    const int64_t length = s.end - s.begin;
    for (int64_t d = 0; d < D; ++d) {
      auto input = [&](int64_t p) { return conv_input(x, initial_state, s, n, d, p); };
      for (int64_t t = 0; t < length; ++t) {
        std::vector<double> window(W);
        for (int64_t j = 0; j < W; ++j) window[j] = input(t - (W - 1) + j);
        result.y.at({s.batch, s.begin + t, d}) = conv_output(weight, bias, d, window, activation);
      }
      // The final state: the last final_len inputs, oldest first.
      for (int64_t c = 0; c < final_len; ++c)
        result.final_state.at({n, d, c}) = input(length - final_len + c);
    }
  }
  return result;
}

// ---- conv1d_bwd -----------------------------------------------------------------

Conv1dGrads conv1d_bwd(const Array64& x, const Array64& weight, const Array64* bias,
                       const Array64* initial_state, const std::vector<int64_t>* cu_seqlens,
                       const Array64& dy, const Array64* d_final_state, Activation activation) {
  require_rank(x, 3, "x");
  const int64_t B = x.dim(0), T = x.dim(1), D = x.dim(2);
  check_filter(weight, bias, D);
  require_shape(dy, x.shape, "dy");
  const int64_t W = weight.dim(1);
  const std::vector<Sequence> seqs = sequences(B, T, cu_seqlens);
  const int64_t N = static_cast<int64_t>(seqs.size());
  check_conv_state(initial_state, N, D, "initial_state");
  check_conv_state(d_final_state, N, D, "d_final_state");
  const int64_t L0 = initial_state != nullptr ? initial_state->dim(2) : 0;
  const int64_t final_len = d_final_state != nullptr ? d_final_state->dim(2) : 0;

  Conv1dGrads grads{Array64({B, T, D}), Array64({D, W}), Array64({D}), Array64({N, D, L0})};
  for (int64_t n = 0; n < N; ++n) {
    const Sequence& s = seqs[n];
    const int64_t length = s.end - s.begin;
    for (int64_t d = 0; d < D; ++d) {
      auto input = [&](int64_t p) { return conv_input(x, initial_state, s, n, d, p); };
      // The gradient of every input that is a variable: positions -L0 .. length-1
      // (the state's columns, then the tokens). Earlier positions are constant zeros.
      std::vector<double> d_input(L0 + length, 0.0);
      auto add_to_input = [&](int64_t p, double gradient) {
        if (p >= -L0) d_input[p + L0] += gradient;
      };
      for (int64_t t = 0; t < length; ++t) {
        // Recompute the pre-activation from x: no saved activations.
        double pre = bias != nullptr ? bias->at({d}) : 0.0;
        for (int64_t j = 0; j < W; ++j) pre += weight.at({d, j}) * input(t - (W - 1) + j);
        const double d_pre =
            dy.at({s.batch, s.begin + t, d}) * activate_derivative(activation, pre);
        grads.dbias.at({d}) += d_pre;
        for (int64_t j = 0; j < W; ++j) {
          grads.dweight.at({d, j}) += d_pre * input(t - (W - 1) + j);
          add_to_input(t - (W - 1) + j, d_pre * weight.at({d, j}));
        }
      }
      // Final state column c is a copy of the input at position length - final_len + c.
      for (int64_t c = 0; c < final_len; ++c)
        add_to_input(length - final_len + c, d_final_state->at({n, d, c}));
      for (int64_t t = 0; t < length; ++t) grads.dx.at({s.batch, s.begin + t, d}) = d_input[L0 + t];
      for (int64_t c = 0; c < L0; ++c) grads.d_initial_state.at({n, d, c}) = d_input[c];
    }
  }
  return grads;
}

// ---- conv1d_update --------------------------------------------------------------

void conv1d_update(const Array64& x, Array64& state_pool, const Array64& weight,
                   const Array64* bias, const std::vector<int64_t>* state_indices,
                   Activation activation, Array64& y) {
  require_rank(x, 3, "x");
  const int64_t N = x.dim(0), L = x.dim(1), D = x.dim(2);
  check_filter(weight, bias, D);
  const int64_t W = weight.dim(1);
  require_rank(state_pool, 3, "state_pool");
  const int64_t pool_size = state_pool.dim(0), SL = state_pool.dim(2);
  require(state_pool.dim(1) == D, "state_pool has shape " + shape_string(state_pool.shape) +
                                      ", expected [S," + std::to_string(D) + ",SL]");
  require(SL >= W - 1,
          "state_len (" + std::to_string(SL) + ") must be >= W-1 (" + std::to_string(W - 1) + ")");
  require_shape(y, x.shape, "y");
  const std::vector<int64_t> slots = pool_slots(N, pool_size, state_indices);

  for (int64_t n = 0; n < N; ++n) {
    const int64_t slot = slots[n];
    if (slot < 0) continue;  // skipped: its y rows and its state stay as they were
    for (int64_t d = 0; d < D; ++d) {
      // The virtual input: the SL state columns (oldest first), then the L new tokens.
      std::vector<double> input(SL + L);
      for (int64_t c = 0; c < SL; ++c) input[c] = state_pool.at({slot, d, c});
      for (int64_t t = 0; t < L; ++t) input[SL + t] = x.at({n, t, d});

      for (int64_t t = 0; t < L; ++t) {
        std::vector<double> window(W);
        for (int64_t j = 0; j < W; ++j) window[j] = input[SL + t - (W - 1) + j];
        y.at({n, t, d}) = conv_output(weight, bias, d, window, activation);
      }
      // The new state: the last SL inputs.
      for (int64_t c = 0; c < SL; ++c) state_pool.at({slot, d, c}) = input[L + c];
    }
  }
}

}  // namespace hops::ref
