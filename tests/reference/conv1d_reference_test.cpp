// Self-test of the conv1d family's float64 oracle: hand-computed cases and
// identities that must hold (varlen = separate runs, decode = prefill, finite differences), so that
// the oracle itself can fail.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <stdexcept>
#include <utility>

#include "conv1d_reference.hpp"
#include "test_support.hpp"

namespace {

using hops::ref::Activation;
using hops::ref::Array64;
using namespace hops::ref::testing;  // NOLINT(google-build-using-namespace)

// ---- conv1d_fwd ------------------------------------------------------------------

// x [1,4,2]: channel 0 = 1,2,3,4; channel 1 = 5,6,7,8. Width 3.
struct ConvCase {
  Array64 x = from_values({1, 4, 2}, {1.0, 5.0, 2.0, 6.0, 3.0, 7.0, 4.0, 8.0});
  Array64 weight = from_values({2, 3}, {1.0, 10.0, 100.0, 2.0, 0.0, -1.0});
  Array64 bias = from_values({2}, {0.5, -1.0});
};

TEST(Conv1dFwd, DirectSum) {
  const ConvCase c;
  const auto result =
      hops::ref::conv1d_fwd(c.x, c.weight, &c.bias, nullptr, nullptr, Activation::none, 0);
  // channel 0: y[t] = 0.5 + x[t-2] + 10 x[t-1] + 100 x[t]; channel 1: y[t] = -1 + 2 x[t-2] - x[t].
  expect_near(result.y, from_values({1, 4, 2}, {100.5, -6.0, 210.5, -7.0, 321.5, 2.0, 432.5, 3.0}));
  EXPECT_EQ(result.final_state.shape, (std::vector<int64_t>{1, 2, 0}));
}

TEST(Conv1dFwd, InitialStateFeedsTheFirstTokens) {
  const ConvCase c;
  // Channel 0 state 7,8,9 (L0 = 3 > W-1): only the last two columns, 8 and 9, are read.
  const Array64 state = from_values({1, 2, 3}, {7.0, 8.0, 9.0, 0.0, 0.0, 0.0});
  const auto result =
      hops::ref::conv1d_fwd(c.x, c.weight, &c.bias, &state, nullptr, Activation::none, 0);
  EXPECT_NEAR(result.y.at({0, 0, 0}), 0.5 + 8.0 + 10.0 * 9.0 + 100.0 * 1.0, 1e-12);
  EXPECT_NEAR(result.y.at({0, 1, 0}), 0.5 + 9.0 + 10.0 * 1.0 + 100.0 * 2.0, 1e-12);
  EXPECT_NEAR(result.y.at({0, 2, 0}), 321.5, 1e-12);  // past the state: as without it
}

TEST(Conv1dFwd, FinalStateOfAShortSequence) {
  const ConvCase c;
  const Array64 two_tokens = slice(c.x, 1, 0, 2);  // channel 0: 1, 2
  const Array64 state = from_values({1, 2, 3}, {7.0, 8.0, 9.0, 0.0, 0.0, 0.0});
  auto final_channel0 = [&](const Array64* initial, int64_t final_len) {
    const auto result = hops::ref::conv1d_fwd(two_tokens, c.weight, &c.bias, initial, nullptr,
                                              Activation::none, final_len);
    return slice(select(result.final_state, 1, 0), 2, 0, final_len);
  };
  // Virtual input with state: 7 8 9 | 1 2. Without: 0 0 | 1 2.
  expect_near(final_channel0(&state, 4), from_values({1, 1, 4}, {8.0, 9.0, 1.0, 2.0}), 0.0);
  expect_near(final_channel0(&state, 6), from_values({1, 1, 6}, {0.0, 7.0, 8.0, 9.0, 1.0, 2.0}),
              0.0);
  expect_near(final_channel0(nullptr, 4), from_values({1, 1, 4}, {0.0, 0.0, 1.0, 2.0}), 0.0);
  expect_near(final_channel0(&state, 1), from_values({1, 1, 1}, {2.0}), 0.0);

  // A long sequence keeps its own last tokens: 2, 3, 4 for channel 0.
  const auto full =
      hops::ref::conv1d_fwd(c.x, c.weight, &c.bias, &state, nullptr, Activation::none, 3);
  expect_near(full.final_state, from_values({1, 2, 3}, {2.0, 3.0, 4.0, 6.0, 7.0, 8.0}), 0.0);
}

TEST(Conv1dFwd, SiluActivation) {
  const Array64 x = from_values({1, 3, 1}, {-1.0, 0.0, 2.0});
  const Array64 weight = from_values({1, 1}, {1.0});
  const auto result =
      hops::ref::conv1d_fwd(x, weight, nullptr, nullptr, nullptr, Activation::silu, 0);
  EXPECT_NEAR(result.y.at({0, 0, 0}), -1.0 / (1.0 + std::exp(1.0)), 1e-15);
  EXPECT_EQ(result.y.at({0, 1, 0}), 0.0);
  EXPECT_NEAR(result.y.at({0, 2, 0}), 2.0 / (1.0 + std::exp(-2.0)), 1e-15);
}

TEST(Conv1dFwd, VarlenEqualsSeparateRuns) {
  std::mt19937_64 rng(7);
  const std::vector<int64_t> cu = {0, 2, 2, 5, 9};  // includes an empty and a short sequence
  const int64_t N = 4, T = 9, D = 3, W = 4, L0 = 3, final_len = 4;
  const Array64 x = random_array({1, T, D}, rng);
  const Array64 weight = random_array({D, W}, rng);
  const Array64 bias = random_array({D}, rng);
  const Array64 initial = random_array({N, D, L0}, rng);
  const auto packed =
      hops::ref::conv1d_fwd(x, weight, &bias, &initial, &cu, Activation::silu, final_len);

  for (int64_t n = 0; n < N; ++n) {
    const Array64 initial_n = select(initial, 0, n);
    const auto alone = hops::ref::conv1d_fwd(slice(x, 1, cu[n], cu[n + 1]), weight, &bias,
                                             &initial_n, nullptr, Activation::silu, final_len);
    SCOPED_TRACE("sequence " + std::to_string(n));
    expect_near(slice(packed.y, 1, cu[n], cu[n + 1]), alone.y);
    expect_near(select(packed.final_state, 0, n), alone.final_state);
  }
  // The empty sequence: a zero, then its whole initial state.
  for (int64_t d = 0; d < D; ++d) {
    EXPECT_EQ(packed.final_state.at({1, d, 0}), 0.0);
    for (int64_t col = 0; col < L0; ++col)
      EXPECT_EQ(packed.final_state.at({1, d, col + 1}), initial.at({1, d, col}));
  }
}

// seq_idx (Dao's packing by id): runs of one id are separate sequences
// without states, padding (id -1) gives 0; here row 1 packs [2 tokens of 4,
// 1 pad, 3 tokens of 5], row 0 one sequence.
TEST(Conv1dFwd, SeqIdxEqualsSeparateRunsAndZeroPadding) {
  std::mt19937_64 rng(17);
  const int64_t T = 6, D = 3, W = 3;
  const Array64 x = random_array({2, T, D}, rng);
  const Array64 weight = random_array({D, W}, rng);
  const Array64 bias = random_array({D}, rng);
  const std::vector<int64_t> ids = {0, 0, 0, 0, 0, 0, 4, 4, -1, 5, 5, 5};
  const auto packed =
      hops::ref::conv1d_fwd(x, weight, &bias, nullptr, nullptr, Activation::silu, 0, &ids);
  const Array64 wide = select(x, 0, 1);  // [1,T,D]
  auto alone = [&](const Array64& tokens) {
    return hops::ref::conv1d_fwd(tokens, weight, &bias, nullptr, nullptr, Activation::silu, 0).y;
  };
  expect_near(slice(packed.y, 0, 0, 1), alone(slice(x, 0, 0, 1)));
  expect_near(slice(slice(packed.y, 0, 1, 2), 1, 0, 2), alone(slice(wide, 1, 0, 2)));
  expect_near(slice(slice(packed.y, 0, 1, 2), 1, 3, 6), alone(slice(wide, 1, 3, 6)));
  for (int64_t d = 0; d < D; ++d) EXPECT_EQ(packed.y.at({1, 2, d}), 0.0);
  EXPECT_THROW(hops::ref::conv1d_fwd(x, weight, &bias, nullptr, nullptr, Activation::silu, 2, &ids),
               std::invalid_argument);
}

// ---- conv1d_update ---------------------------------------------------------------

// Decode = prefill of the new tokens from the slot's state; the new state is
// the prefill's final state of the same length.
void check_update_matches_forward(int64_t state_len, int64_t L) {
  std::mt19937_64 rng(8 + state_len * 10 + L);
  const int64_t N = 3, D = 3, W = 4, S = 4;
  const Array64 x = random_array({N, L, D}, rng);
  const Array64 weight = random_array({D, W}, rng);
  const Array64 bias = random_array({D}, rng);
  const Array64 pool_before = random_array({S, D, state_len}, rng);
  const std::vector<int64_t> indices = {2, -1, 0};

  Array64 pool = pool_before;
  Array64 y({N, L, D}, 999.0);
  hops::ref::conv1d_update(x, pool, weight, &bias, &indices, Activation::silu, y);

  for (int64_t n : {0, 2}) {
    const int64_t slot = indices[n];
    const Array64 initial = select(pool_before, 0, slot);
    const auto expected = hops::ref::conv1d_fwd(select(x, 0, n), weight, &bias, &initial, nullptr,
                                                Activation::silu, state_len);
    SCOPED_TRACE("state_len " + std::to_string(state_len) + ", L " + std::to_string(L) +
                 ", sequence " + std::to_string(n));
    expect_near(select(y, 0, n), expected.y);
    expect_near(select(pool, 0, slot), expected.final_state);
  }
  expect_near(select(y, 0, 1), Array64({1, L, D}, 999.0), 0.0);
  for (int64_t slot : {1, 3}) expect_near(select(pool, 0, slot), select(pool_before, 0, slot), 0.0);
}

TEST(Conv1dUpdate, EqualsForwardWithInitialState) {
  check_update_matches_forward(3, 1);  // state_len = W-1 (causal-conv1d), one token
  check_update_matches_forward(4, 1);  // state_len = W (FLA, transformers)
  check_update_matches_forward(5, 3);  // longer state, speculative multi-token
}

TEST(Conv1dUpdate, HandValuesWithoutIndices) {
  // One channel, W=2, weight [1, 10], state 7 8 9 (SL=3), new tokens 1 2.
  const Array64 x = from_values({1, 2, 1}, {1.0, 2.0});
  const Array64 weight = from_values({1, 2}, {1.0, 10.0});
  Array64 pool = from_values({1, 1, 3}, {7.0, 8.0, 9.0});
  Array64 y({1, 2, 1});
  hops::ref::conv1d_update(x, pool, weight, nullptr, nullptr, Activation::none, y);
  expect_near(y, from_values({1, 2, 1}, {9.0 + 10.0, 1.0 + 20.0}));
  expect_near(pool, from_values({1, 1, 3}, {9.0, 1.0, 2.0}), 0.0);
}

// A circular state (cache_seqlens) is a plain one rotated: starting at column
// c % SL instead of 0. Both paths see the same history, give the same y, and
// store the same columns, rotated; a skipped row gets 0 with zero_skipped.
TEST(Conv1dUpdate, CircularStateIsARotatedPlainState) {
  std::mt19937_64 rng(19);
  const int64_t N = 3, D = 2, W = 4, SL = 5;
  for (const int64_t L : {1, 2, 7}) {
    const Array64 x = random_array({N, L, D}, rng);
    const Array64 weight = random_array({D, W}, rng);
    const Array64 plain_before = random_array({N, D, SL}, rng);
    const std::vector<int64_t> seen = {0, 3, 12};  // 12 % 5 = 2
    const std::vector<int64_t> slots = {0, -1, 2};
    // Circular slot n holds plain column j at column (start + j) % SL.
    Array64 circular_before({N, D, SL});
    for (int64_t n = 0; n < N; ++n)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t j = 0; j < SL; ++j)
          circular_before.at({n, d, (seen[n] % SL + j) % SL}) = plain_before.at({n, d, j});
    Array64 plain = plain_before, circular = circular_before;
    Array64 y_plain({N, L, D}, 7.0), y_circular({N, L, D}, 7.0);
    hops::ref::conv1d_update(x, plain, weight, nullptr, &slots, Activation::silu, y_plain);
    hops::ref::conv1d_update(x, circular, weight, nullptr, &slots, Activation::silu, y_circular,
                             &seen, true);
    SCOPED_TRACE("L = " + std::to_string(L));
    for (int64_t n : {0, 2}) {
      expect_near(select(y_circular, 0, n), select(y_plain, 0, n));
      // The last min(L, SL) tokens sit at columns start + L - 1 - i, newest last.
      for (int64_t i = 0; i < std::min(L, SL); ++i)
        for (int64_t d = 0; d < D; ++d)
          EXPECT_EQ(circular.at({n, d, (seen[n] + L - 1 - i) % SL}), plain.at({n, d, SL - 1 - i}));
    }
    expect_near(select(y_circular, 0, 1), Array64({1, L, D}, 0.0), 0.0);
    expect_near(select(y_plain, 0, 1), Array64({1, L, D}, 7.0), 0.0);
    expect_near(select(circular, 0, 1), select(circular_before, 0, 1), 0.0);
  }
}

TEST(Conv1dUpdate, RejectsShortState) {
  const Array64 x({1, 1, 1}), weight({1, 4});
  Array64 pool({1, 1, 2}), y({1, 1, 1});
  EXPECT_THROW(hops::ref::conv1d_update(x, pool, weight, nullptr, nullptr, Activation::none, y),
               std::invalid_argument);
}

// ---- conv1d_bwd: against finite differences ----------------------------------------

// A conv1d call small enough to difference every input element. bias is
// always passed to the forward (zeros when the backward gets none: the same
// forward), so that dbias is also checked as the gradient of a zero bias.
struct ConvCall64 {
  Array64 x, weight, bias, initial_state, dy, d_final_state;
  std::vector<int64_t> cu_seqlens;  // empty: dense
  bool pass_bias = true, pass_initial_state = true, pass_d_final_state = true;
  Activation activation = Activation::silu;
  std::vector<int64_t> seq_idx;  // empty: none

  const std::vector<int64_t>* cu() const { return cu_seqlens.empty() ? nullptr : &cu_seqlens; }
  const std::vector<int64_t>* ids() const { return seq_idx.empty() ? nullptr : &seq_idx; }
  // L = sum(dy * y) + sum(d_final_state * final_state).
  double loss() const {
    const auto out =
        hops::ref::conv1d_fwd(x, weight, &bias, pass_initial_state ? &initial_state : nullptr, cu(),
                              activation, pass_d_final_state ? d_final_state.dim(2) : 0, ids());
    return dot(dy, out.y) + (pass_d_final_state ? dot(d_final_state, out.final_state) : 0.0);
  }
};

ConvCall64 random_conv_call(uint64_t seed, int64_t B, int64_t T, int64_t D, int64_t W, int64_t L0,
                            int64_t L1, std::vector<int64_t> cu_seqlens = {}) {
  std::mt19937_64 rng(seed);
  const int64_t N = cu_seqlens.empty() ? B : static_cast<int64_t>(cu_seqlens.size()) - 1;
  ConvCall64 call;
  call.x = random_array({B, T, D}, rng);
  call.weight = random_array({D, W}, rng);
  call.bias = random_array({D}, rng);
  call.initial_state = random_array({N, D, L0}, rng);
  call.dy = random_array({B, T, D}, rng);
  call.d_final_state = random_array({N, D, L1}, rng);
  call.cu_seqlens = std::move(cu_seqlens);
  return call;
}

void expect_conv_gradients_match_finite_differences(ConvCall64 call) {
  if (!call.pass_bias) std::fill(call.bias.data.begin(), call.bias.data.end(), 0.0);
  const auto grads = hops::ref::conv1d_bwd(
      call.x, call.weight, call.pass_bias ? &call.bias : nullptr,
      call.pass_initial_state ? &call.initial_state : nullptr, call.cu(), call.dy,
      call.pass_d_final_state ? &call.d_final_state : nullptr, call.activation, call.ids());
  auto loss = [&] { return call.loss(); };
  double worst = expect_finite_differences("x", call.x, grads.dx, loss);
  worst = std::max(worst, expect_finite_differences("weight", call.weight, grads.dweight, loss));
  worst = std::max(worst, expect_finite_differences("bias", call.bias, grads.dbias, loss));
  if (call.pass_initial_state) {
    worst = std::max(worst, expect_finite_differences("initial_state", call.initial_state,
                                                      grads.d_initial_state, loss));
  } else {
    EXPECT_EQ(grads.d_initial_state.numel(), 0);
  }
  std::printf("  max |analytic - finite difference| = %.2e\n", worst);
}

TEST(Conv1dBwd, MatchesFiniteDifferencesDenseSiluWithStates) {
  expect_conv_gradients_match_finite_differences(random_conv_call(21, 2, 5, 3, 4, 3, 4));
}

TEST(Conv1dBwd, MatchesFiniteDifferencesVarlenEmptyAndSingleToken) {
  // Sequences of 0, 1, 3, 0 and 3 tokens; states longer than the sequences,
  // so the final state copies initial-state columns.
  ConvCall64 call = random_conv_call(22, 1, 7, 2, 3, 5, 6, {0, 0, 1, 4, 4, 7});
  call.activation = Activation::none;
  expect_conv_gradients_match_finite_differences(call);
  call.activation = Activation::silu;
  expect_conv_gradients_match_finite_differences(call);
}

TEST(Conv1dBwd, MatchesFiniteDifferencesWithoutStatesOrBias) {
  for (int64_t W = 1; W <= 4; ++W) {
    ConvCall64 call = random_conv_call(23 + W, 2, 4, 2, W, 0, W - 1);
    call.pass_bias = false;
    call.pass_initial_state = false;
    call.pass_d_final_state = W % 2 == 0;  // the final state's zero columns get no gradient
    SCOPED_TRACE("W = " + std::to_string(W));
    expect_conv_gradients_match_finite_differences(call);
  }
}

TEST(Conv1dBwd, MatchesFiniteDifferencesWithSeqIdx) {
  for (const Activation activation : {Activation::none, Activation::silu}) {
    ConvCall64 call = random_conv_call(31, 2, 6, 2, 4, 0, 0);
    call.pass_initial_state = call.pass_d_final_state = false;
    call.seq_idx = {0, 0, 1, 1, 1, -1, 3, -1, -1, 3, 3, 7};
    call.activation = activation;
    expect_conv_gradients_match_finite_differences(call);
  }
}

TEST(Conv1dBwd, EmptySequencePassesTheStateGradientThrough) {
  // An empty sequence's final state is [zeros, its initial state]: the
  // initial state's gradient is d_final_state's last L0 columns.
  const ConvCall64 call = random_conv_call(27, 1, 0, 2, 4, 3, 5, {0, 0});
  const auto grads =
      hops::ref::conv1d_bwd(call.x, call.weight, &call.bias, &call.initial_state, call.cu(),
                            call.dy, &call.d_final_state, Activation::silu);
  for (int64_t d = 0; d < 2; ++d) {
    for (int64_t c = 0; c < 3; ++c)
      EXPECT_EQ(grads.d_initial_state.at({0, d, c}), call.d_final_state.at({0, d, c + 2}));
    EXPECT_EQ(grads.dbias.at({d}), 0.0);
  }
}

}  // namespace
