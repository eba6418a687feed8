// The conv1d family's float64 oracle: the causal depthwise conv forward, its
// backward and the decode update, in plain loops (see reference.cpp).
#include "conv1d_reference.hpp"

#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

namespace hops::ref {

using namespace detail;  // NOLINT(google-build-using-namespace): the shared helpers

namespace {

double activate(Activation activation, double x) {
  return activation == Activation::silu ? silu(x) : x;
}

double activate_derivative(Activation activation, double x) {
  return activation == Activation::silu ? silu_derivative(x) : 1.0;
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

// seq_idx [B,T] (flattened) replaces cu_seqlens and the states.
void check_seq_idx(const std::vector<int64_t>* seq_idx, int64_t B, int64_t T,
                   const Array64* initial_state, const std::vector<int64_t>* cu_seqlens,
                   bool final_state) {
  if (seq_idx == nullptr) return;
  require(static_cast<int64_t>(seq_idx->size()) == B * T, "seq_idx must hold B*T ids");
  require(initial_state == nullptr && cu_seqlens == nullptr && !final_state,
          "seq_idx takes no states and no cu_seqlens");
}

// Whether the tap at position p reaches token t: always without seq_idx, else
// when p is a token of t's id.
bool same_sequence(const std::vector<int64_t>* seq_idx, int64_t row, int64_t T, int64_t p,
                   int64_t t) {
  if (seq_idx == nullptr) return true;
  return p >= 0 && (*seq_idx)[row * T + p] == (*seq_idx)[row * T + t];
}

}  // namespace

// ---- conv1d_fwd -----------------------------------------------------------------

Conv1dResult conv1d_fwd(const Array64& x, const Array64& weight, const Array64* bias,
                        const Array64* initial_state, const std::vector<int64_t>* cu_seqlens,
                        Activation activation, int64_t final_len,
                        const std::vector<int64_t>* seq_idx) {
  require_rank(x, 3, "x");
  const int64_t B = x.dim(0), T = x.dim(1), D = x.dim(2);
  check_filter(weight, bias, D);
  const int64_t W = weight.dim(1);
  const std::vector<Sequence> seqs = sequences(B, T, cu_seqlens);
  const int64_t N = static_cast<int64_t>(seqs.size());
  check_conv_state(initial_state, N, D, "initial_state");
  require(final_len >= 0, "final_len must be >= 0");
  check_seq_idx(seq_idx, B, T, initial_state, cu_seqlens, final_len > 0);

  Conv1dResult result{Array64({B, T, D}), Array64({N, D, final_len})};
  for (int64_t n = 0; n < N; ++n) {
    const Sequence& s = seqs[n];
    const int64_t length = s.end - s.begin;
    for (int64_t d = 0; d < D; ++d) {
      auto input = [&](int64_t p) { return conv_input(x, initial_state, s, n, d, p); };
      for (int64_t t = 0; t < length; ++t) {
        if (seq_idx != nullptr && (*seq_idx)[s.batch * T + t] < 0) {
          result.y.at({s.batch, t, d}) = 0.0;  // padding
          continue;
        }
        std::vector<double> window(W);
        for (int64_t j = 0; j < W; ++j) {
          const int64_t p = t - (W - 1) + j;
          window[j] = same_sequence(seq_idx, s.batch, T, p, t) ? input(p) : 0.0;
        }
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
                       const Array64& dy, const Array64* d_final_state, Activation activation,
                       const std::vector<int64_t>* seq_idx) {
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
  check_seq_idx(seq_idx, B, T, initial_state, cu_seqlens, d_final_state != nullptr);

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
        if (seq_idx != nullptr && (*seq_idx)[s.batch * T + t] < 0) continue;  // y = 0: constant
        // Recompute the pre-activation from x: no saved activations.
        double pre = bias != nullptr ? bias->at({d}) : 0.0;
        auto tap_input = [&](int64_t j) {
          const int64_t p = t - (W - 1) + j;
          return same_sequence(seq_idx, s.batch, T, p, t) ? input(p) : 0.0;
        };
        for (int64_t j = 0; j < W; ++j) pre += weight.at({d, j}) * tap_input(j);
        const double d_pre =
            dy.at({s.batch, s.begin + t, d}) * activate_derivative(activation, pre);
        grads.dbias.at({d}) += d_pre;
        for (int64_t j = 0; j < W; ++j) {
          if (!same_sequence(seq_idx, s.batch, T, t - (W - 1) + j, t)) continue;
          grads.dweight.at({d, j}) += d_pre * tap_input(j);
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
                   Activation activation, Array64& y, const std::vector<int64_t>* cache_seqlens,
                   bool zero_skipped) {
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
  if (cache_seqlens != nullptr) {
    require(static_cast<int64_t>(cache_seqlens->size()) == N, "cache_seqlens must hold N counts");
    require(SL >= 1, "a circular state has at least one column");
    for (int64_t seen : *cache_seqlens) require(seen >= 0, "cache_seqlens must be >= 0");
  }

  for (int64_t n = 0; n < N; ++n) {
    const int64_t slot = slots[n];
    if (slot < 0) {  // skipped: its state stays as it was, its y rows too or 0
      if (zero_skipped) {
        for (int64_t t = 0; t < L; ++t)
          for (int64_t d = 0; d < D; ++d) y.at({n, t, d}) = 0.0;
      }
      continue;
    }
    if (cache_seqlens != nullptr) {
      const int64_t start = (*cache_seqlens)[n] % SL;
      for (int64_t d = 0; d < D; ++d) {
        // The W-1 inputs before the new tokens (oldest first), then the tokens.
        std::vector<double> input(W - 1 + L);
        for (int64_t i = 0; i < W - 1; ++i)
          input[i] = state_pool.at({slot, d, (start - (W - 1) + i + SL) % SL});
        for (int64_t t = 0; t < L; ++t) input[W - 1 + t] = x.at({n, t, d});
        for (int64_t t = 0; t < L; ++t) {
          const std::vector<double> window(input.begin() + t, input.begin() + t + W);
          y.at({n, t, d}) = conv_output(weight, bias, d, window, activation);
        }
        for (int64_t t = 0; t < L; ++t)
          state_pool.at({slot, d, (start + t) % SL}) = x.at({n, t, d});
      }
      continue;
    }
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
