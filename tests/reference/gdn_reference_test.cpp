// Self-test of the gdn family's float64 oracle: hand-computed cases and
// identities that must hold (GQA mapping, layouts, varlen = separate runs, decode = prefill), so
// that the oracle itself can fail.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <stdexcept>
#include <utility>

#include "gdn_reference.hpp"
#include "test_support.hpp"

namespace {

using hops::ref::Array64;
using hops::ref::GdnOptions;
using namespace hops::ref::testing;  // NOLINT(google-build-using-namespace)

// ---- gdn_gating ------------------------------------------------------------------

TEST(Gating, HandValues) {
  const Array64 A_log = from_values({2}, {0.0, std::log(2.0)});  // exp(A_log) = 1, 2
  const Array64 dt_bias = from_values({2}, {0.0, 1.0});
  const Array64 a = from_values({2, 2}, {0.0, 0.0, 30.0, -1.0});
  const Array64 b = from_values({2, 2}, {0.0, 2.0, -3.0, 0.0});
  const auto gating = hops::ref::gdn_gating(A_log, a, b, dt_bias);

  EXPECT_NEAR(gating.g.at({0, 0}), -std::log(2.0), 1e-14);  // -1 * softplus(0)
  EXPECT_NEAR(gating.g.at({0, 1}), -2.0 * std::log1p(std::exp(1.0)),
              1e-14);                                             // head 1: -2 * softplus(0 + 1)
  EXPECT_EQ(gating.g.at({1, 0}), -30.0);                          // above the threshold: linear
  EXPECT_NEAR(gating.g.at({1, 1}), -2.0 * std::log(2.0), 1e-14);  // -2 * softplus(-1 + 1)
  EXPECT_EQ(gating.beta.at({0, 0}), 0.5);
  EXPECT_NEAR(gating.beta.at({0, 1}), 1.0 / (1.0 + std::exp(-2.0)), 1e-15);
  EXPECT_NEAR(gating.beta.at({1, 0}), 1.0 / (1.0 + std::exp(3.0)), 1e-15);
  EXPECT_EQ(gating.beta.at({1, 1}), 0.5);
}

TEST(Gating, SoftplusBetaAndThreshold) {
  const Array64 A_log = from_values({1}, {0.0});
  const Array64 dt_bias = from_values({1}, {0.0});
  const Array64 a = from_values({3, 1}, {0.5, 11.0, 15.0});
  const Array64 b = from_values({3, 1}, {0.0, 0.0, 0.0});

  // softplus_beta = 2: log1p(exp(2x)) / 2, linear once 2x > 20.
  const auto sharp = hops::ref::gdn_gating(A_log, a, b, dt_bias, 2.0, 20.0);
  EXPECT_NEAR(sharp.g.at({0, 0}), -std::log1p(std::exp(1.0)) / 2.0, 1e-14);
  EXPECT_EQ(sharp.g.at({1, 0}), -11.0);
  EXPECT_EQ(sharp.g.at({2, 0}), -15.0);

  // softplus_beta = 1: 15 is below the threshold, so not linear (differs by ~3e-7).
  const auto plain = hops::ref::gdn_gating(A_log, a, b, dt_bias);
  EXPECT_NEAR(plain.g.at({2, 0}), -std::log1p(std::exp(15.0)), 1e-12);
  EXPECT_GT(std::abs(plain.g.at({2, 0}) + 15.0), 1e-7);
}

// ---- gdn_forward -----------------------------------------------------------------

TEST(GdnForward, OneTokenFromZeroState) {
  // B=T=H=HV=1, K=2, V=3. From S = 0: S = beta k v^T and o = scale beta (k.q) v.
  const Array64 q = from_values({1, 1, 1, 2}, {1.0, 2.0});
  const Array64 k = from_values({1, 1, 1, 2}, {3.0, -1.0});
  const Array64 v = from_values({1, 1, 1, 3}, {0.5, -2.0, 4.0});
  const Array64 g = from_values({1, 1, 1}, {-0.7});  // decays a zero state: no effect
  const Array64 beta = from_values({1, 1, 1}, {0.25});
  GdnOptions options;
  options.scale = 0.5;

  const auto result = hops::ref::gdn_forward(q, k, v, g, beta, nullptr, nullptr, options);
  // k.q = 3 - 2 = 1, so o = 0.5 * 0.25 * v.
  expect_near(result.o, from_values({1, 1, 1, 3}, {0.0625, -0.25, 0.5}));
  expect_near(result.final_state, from_values({1, 1, 2, 3}, {0.375, -1.5, 3.0, -0.125, 0.5, -1.0}));
}

TEST(GdnForward, OneTokenFromInitialState) {
  // S0 = [[1,2,3],[4,5,6]], decay exp(g) = 1/2, beta = 1/4, k = e0, v = [10,20,30], q = [1,1].
  //   decayed  = [[.5,1,1.5],[2,2.5,3]]
  //   u        = beta (v - S^T k) = 0.25 ([10,20,30] - [.5,1,1.5]) = [2.375, 4.75, 7.125]
  //   S        = decayed + k u^T = [[2.875,5.75,8.625],[2,2.5,3]]
  //   o        = S^T q = [4.875, 8.25, 11.625]
  const Array64 q = from_values({1, 1, 1, 2}, {1.0, 1.0});
  const Array64 k = from_values({1, 1, 1, 2}, {1.0, 0.0});
  const Array64 v = from_values({1, 1, 1, 3}, {10.0, 20.0, 30.0});
  const Array64 g = from_values({1, 1, 1}, {std::log(0.5)});
  const Array64 beta = from_values({1, 1, 1}, {0.25});
  const Array64 h0 = from_values({1, 1, 2, 3}, {1.0, 2.0, 3.0, 4.0, 5.0, 6.0});
  GdnOptions options;
  options.scale = 1.0;

  const Array64 expected_o = from_values({1, 1, 1, 3}, {4.875, 8.25, 11.625});
  const Array64 expected_state = from_values({1, 1, 2, 3}, {2.875, 5.75, 8.625, 2.0, 2.5, 3.0});
  const auto result = hops::ref::gdn_forward(q, k, v, g, beta, &h0, nullptr, options);
  expect_near(result.o, expected_o);
  expect_near(result.final_state, expected_state);

  // The same with value-first states: h0 and the final state are stored [V, K].
  options.state_v_first = true;
  const Array64 h0_v_first = from_values({1, 1, 3, 2}, {1.0, 4.0, 2.0, 5.0, 3.0, 6.0});
  const auto v_first = hops::ref::gdn_forward(q, k, v, g, beta, &h0_v_first, nullptr, options);
  expect_near(v_first.o, expected_o);
  expect_near(v_first.final_state, from_values({1, 1, 3, 2}, {2.875, 2.0, 5.75, 2.5, 8.625, 3.0}));
}

TEST(GdnForward, L2NormAndDefaultScale) {
  // K=2, V=1, S0 = 0, beta = 1: o = K^-1/2 (q^.k^) v with x^ = x / sqrt(|x|^2 + 1e-6).
  const Array64 q = from_values({1, 1, 1, 2}, {3.0, 4.0});
  const Array64 k = from_values({1, 1, 1, 2}, {0.0, 2.0});
  const Array64 v = from_values({1, 1, 1, 1}, {1.0});
  const Array64 g = from_values({1, 1, 1}, {0.0});
  const Array64 beta = from_values({1, 1, 1}, {1.0});
  GdnOptions options;
  options.use_qk_l2norm = true;  // scale stays 0: K^-1/2

  const auto result = hops::ref::gdn_forward(q, k, v, g, beta, nullptr, nullptr, options);
  const double expected = 8.0 / std::sqrt(25.0 + 1e-6) / std::sqrt(4.0 + 1e-6) / std::sqrt(2.0);
  EXPECT_NEAR(result.o.at({0, 0, 0, 0}), expected, 1e-15);
  EXPECT_NEAR(result.final_state.at({0, 0, 1, 0}), 2.0 / std::sqrt(4.0 + 1e-6), 1e-15);
}

TEST(GdnForward, ValueHeadReadsKeyHeadHOverG) {
  // H=2, HV=6: G=3 (not a power of two), so hv / G and hv % H disagree.
  std::mt19937_64 rng(1);
  const int64_t B = 2, T = 4, H = 2, HV = 6, K = 3, V = 2;
  const Array64 q = random_array({B, T, H, K}, rng);
  const Array64 k = random_array({B, T, H, K}, rng);
  const Array64 v = random_array({B, T, HV, V}, rng);
  const Array64 g = random_array({B, T, HV}, rng, -1.0, 0.0);
  const Array64 beta = random_array({B, T, HV}, rng, 0.0, 1.0);
  const Array64 h0 = random_array({B, HV, K, V}, rng);
  GdnOptions options;
  options.use_qk_l2norm = true;
  const auto full = hops::ref::gdn_forward(q, k, v, g, beta, &h0, nullptr, options);

  for (int64_t hv = 0; hv < HV; ++hv) {
    const int64_t h = hv / (HV / H);
    const Array64 h0_head = select(h0, 1, hv);
    const auto single =
        hops::ref::gdn_forward(select(q, 2, h), select(k, 2, h), select(v, 2, hv), select(g, 2, hv),
                               select(beta, 2, hv), &h0_head, nullptr, options);
    SCOPED_TRACE("hv = " + std::to_string(hv));
    expect_near(select(full.o, 2, hv), single.o);
    expect_near(select(full.final_state, 1, hv), single.final_state);
  }
}

TEST(GdnForward, StateVFirstIsTheTranspose) {
  std::mt19937_64 rng(2);
  const int64_t B = 2, T = 3, H = 1, HV = 2, K = 3, V = 2;  // K != V so a wrong transpose shows
  const Array64 q = random_array({B, T, H, K}, rng);
  const Array64 k = random_array({B, T, H, K}, rng);
  const Array64 v = random_array({B, T, HV, V}, rng);
  const Array64 g = random_array({B, T, HV}, rng, -1.0, 0.0);
  const Array64 beta = random_array({B, T, HV}, rng, 0.0, 1.0);
  const Array64 h0 = random_array({B, HV, K, V}, rng);
  GdnOptions options;
  const auto k_first = hops::ref::gdn_forward(q, k, v, g, beta, &h0, nullptr, options);

  options.state_v_first = true;
  const Array64 h0_v_first = transpose_last2(h0);
  const auto v_first = hops::ref::gdn_forward(q, k, v, g, beta, &h0_v_first, nullptr, options);
  expect_near(v_first.o, k_first.o);
  expect_near(v_first.final_state, transpose_last2(k_first.final_state));
}

TEST(GdnForward, FusedGatingEqualsGatingThenForward) {
  std::mt19937_64 rng(3);
  const int64_t B = 1, T = 5, H = 1, HV = 2, K = 4, V = 3;
  const Array64 q = random_array({B, T, H, K}, rng);
  const Array64 k = random_array({B, T, H, K}, rng);
  const Array64 v = random_array({B, T, HV, V}, rng);
  const Array64 a = random_array({B, T, HV}, rng, -3.0, 3.0);
  const Array64 b = random_array({B, T, HV}, rng, -3.0, 3.0);
  const Array64 A_log = random_array({HV}, rng);
  const Array64 dt_bias = random_array({HV}, rng);

  const auto gating = hops::ref::gdn_gating(A_log, a, b, dt_bias);
  GdnOptions options;
  const auto separate =
      hops::ref::gdn_forward(q, k, v, gating.g, gating.beta, nullptr, nullptr, options);
  options.A_log = &A_log;
  options.dt_bias = &dt_bias;
  const auto fused = hops::ref::gdn_forward(q, k, v, a, b, nullptr, nullptr, options);
  expect_near(fused.o, separate.o);
  expect_near(fused.final_state, separate.final_state);
}

// beta_mode: the gate and the beta sigmoid each on their own, and 2 sigmoid(b).
TEST(GdnForward, BetaModesEqualTheirTransformThenForward) {
  std::mt19937_64 rng(9);
  const int64_t B = 1, T = 5, H = 1, HV = 2, K = 4, V = 3;
  const Array64 q = random_array({B, T, H, K}, rng);
  const Array64 k = random_array({B, T, H, K}, rng, -0.5, 0.5);
  const Array64 v = random_array({B, T, HV, V}, rng);
  const Array64 a = random_array({B, T, HV}, rng, -3.0, 3.0);
  const Array64 b = random_array({B, T, HV}, rng, -3.0, 3.0);
  const Array64 A_log = random_array({HV}, rng);
  const Array64 dt_bias = random_array({HV}, rng);
  const auto gating = hops::ref::gdn_gating(A_log, a, b, dt_bias);
  Array64 double_beta = gating.beta;
  for (double& x : double_beta.data) x *= 2;
  Array64 decay = a;  // plain log decays for the calls without the gate
  for (double& x : decay.data) x = -std::abs(x) / 10;

  auto run = [&](const Array64& g, const Array64& beta, const Array64* gate, int mode) {
    GdnOptions options;
    options.A_log = gate;
    options.dt_bias = gate != nullptr ? &dt_bias : nullptr;
    options.beta_mode = mode;
    return hops::ref::gdn_forward(q, k, v, g, beta, nullptr, nullptr, options);
  };
  // The gate without the sigmoid: beta as given.
  expect_near(run(a, gating.beta, &A_log, 0).o, run(gating.g, gating.beta, nullptr, -1).o);
  // The sigmoid without the gate, and doubled (with and without the gate).
  expect_near(run(decay, b, nullptr, 1).o, run(decay, gating.beta, nullptr, 0).o);
  expect_near(run(decay, b, nullptr, 2).o, run(decay, double_beta, nullptr, -1).o);
  expect_near(run(a, b, &A_log, 2).o, run(gating.g, double_beta, nullptr, 0).o);
  // -1 with A_log is 1.
  expect_near(run(a, b, &A_log, -1).final_state, run(a, b, &A_log, 1).final_state);
}

TEST(GdnForward, VarlenEqualsSeparateRuns) {
  std::mt19937_64 rng(4);
  const std::vector<int64_t> cu = {0, 3, 3, 7, 8};  // includes an empty sequence
  const int64_t N = 4, T = 8, H = 1, HV = 2, K = 3, V = 2;
  const Array64 q = random_array({1, T, H, K}, rng);
  const Array64 k = random_array({1, T, H, K}, rng);
  const Array64 v = random_array({1, T, HV, V}, rng);
  const Array64 g = random_array({1, T, HV}, rng, -1.0, 0.0);
  const Array64 beta = random_array({1, T, HV}, rng, 0.0, 1.0);
  const Array64 h0 = random_array({N, HV, K, V}, rng);
  GdnOptions options;
  options.use_qk_l2norm = true;
  const auto packed = hops::ref::gdn_forward(q, k, v, g, beta, &h0, &cu, options);

  for (int64_t n = 0; n < N; ++n) {
    const int64_t begin = cu[n], end = cu[n + 1];
    const Array64 h0_n = select(h0, 0, n);
    const auto alone = hops::ref::gdn_forward(slice(q, 1, begin, end), slice(k, 1, begin, end),
                                              slice(v, 1, begin, end), slice(g, 1, begin, end),
                                              slice(beta, 1, begin, end), &h0_n, nullptr, options);
    SCOPED_TRACE("sequence " + std::to_string(n));
    expect_near(slice(packed.o, 1, begin, end), alone.o);
    expect_near(select(packed.final_state, 0, n), alone.final_state);
  }
  // The empty sequence hands its initial state through.
  expect_near(select(packed.final_state, 0, 1), select(h0, 0, 1), 0.0);
}

// ---- gdn_backward ----------------------------------------------------------------

// A GDN call small enough to difference every input element. h0 is always
// there (zeros when the call passes none: the same forward).
struct GdnCall64 {
  Array64 q, k, v, g, beta, h0, d_o, d_final_state;
  std::vector<int64_t> cu_seqlens;  // empty: dense
  bool pass_h0 = true, pass_d_final_state = true;
  GdnOptions options;

  const std::vector<int64_t>* cu() const { return cu_seqlens.empty() ? nullptr : &cu_seqlens; }
  // sum(d_o * o) + sum(d_final_state * final_state), whose gradient
  // gdn_backward gives for these d_o and d_final_state.
  double loss() const {
    const auto result = hops::ref::gdn_forward(q, k, v, g, beta, &h0, cu(), options);
    double sum = 0.0;
    for (int64_t i = 0; i < d_o.numel(); ++i) sum += d_o.data[i] * result.o.data[i];
    if (pass_d_final_state) {
      for (int64_t i = 0; i < d_final_state.numel(); ++i)
        sum += d_final_state.data[i] * result.final_state.data[i];
    }
    return sum;
  }
};

GdnCall64 random_gdn_call(std::mt19937_64& rng, int64_t B, int64_t T, int64_t H, int64_t HV,
                          int64_t K, int64_t V, std::vector<int64_t> cu_seqlens = {}) {
  const int64_t N = cu_seqlens.empty() ? B : static_cast<int64_t>(cu_seqlens.size()) - 1;
  GdnCall64 call;
  call.q = random_array({B, T, H, K}, rng);
  call.k = random_array({B, T, H, K}, rng);
  call.v = random_array({B, T, HV, V}, rng);
  call.g = random_array({B, T, HV}, rng, -1.0, -0.05);
  call.beta = random_array({B, T, HV}, rng, 0.0, 1.0);
  call.h0 = random_array({N, HV, K, V}, rng);
  call.d_o = random_array({B, T, HV, V}, rng);
  call.d_final_state = random_array({N, HV, K, V}, rng);
  call.cu_seqlens = std::move(cu_seqlens);
  return call;
}

// Every element of every gradient against the central difference of the
// loss (step 1e-6: truncation ~1e-12, rounding ~1e-10 at these sizes).
void expect_gradients_match_finite_differences(GdnCall64 call) {
  if (!call.pass_h0) std::fill(call.h0.data.begin(), call.h0.data.end(), 0.0);
  const auto grads = hops::ref::gdn_backward(
      call.q, call.k, call.v, call.g, call.beta, call.pass_h0 ? &call.h0 : nullptr, call.cu(),
      call.d_o, call.pass_d_final_state ? &call.d_final_state : nullptr, call.options);
  const std::pair<const char*, std::pair<Array64*, const Array64*>> inputs[] = {
      {"q", {&call.q, &grads.dq}},          {"k", {&call.k, &grads.dk}},
      {"v", {&call.v, &grads.dv}},          {"g", {&call.g, &grads.dg}},
      {"beta", {&call.beta, &grads.dbeta}}, {"h0", {&call.h0, &grads.dh0}}};
  constexpr double kStep = 1e-6;
  double worst = 0.0;
  for (const auto& [name, pair] : inputs) {
    const auto [input, gradient] = pair;
    ASSERT_EQ(input->shape, gradient->shape) << name;
    for (int64_t i = 0; i < input->numel(); ++i) {
      const double x = input->data[i];
      input->data[i] = x + kStep;
      const double above = call.loss();
      input->data[i] = x - kStep;
      const double below = call.loss();
      input->data[i] = x;
      const double difference = (above - below) / (2 * kStep);
      const double error = std::abs(gradient->data[i] - difference);
      worst = std::max(worst, error);
      EXPECT_LE(error, 1e-7 * std::max(1.0, std::abs(difference)))
          << "d" << name << " at flat index " << i << ": analytic " << gradient->data[i]
          << ", finite difference " << difference;
    }
  }
  std::printf("  max |analytic - finite difference| = %.2e\n", worst);
}

TEST(GdnBackward, MatchesFiniteDifferencesG1WithScale) {
  std::mt19937_64 rng(11);
  GdnCall64 call = random_gdn_call(rng, 2, 4, 1, 1, 3, 2);
  call.options.scale = 0.7;
  expect_gradients_match_finite_differences(call);
}

TEST(GdnBackward, MatchesFiniteDifferencesG2L2Norm) {
  std::mt19937_64 rng(12);
  GdnCall64 call = random_gdn_call(rng, 1, 5, 2, 4, 3, 2);
  call.options.use_qk_l2norm = true;
  expect_gradients_match_finite_differences(call);
}

TEST(GdnBackward, MatchesFiniteDifferencesG3StateVFirst) {
  std::mt19937_64 rng(13);
  GdnCall64 call = random_gdn_call(rng, 1, 4, 1, 3, 3, 4);
  call.options.use_qk_l2norm = true;
  call.options.state_v_first = true;
  call.h0 = transpose_last2(call.h0);
  call.d_final_state = transpose_last2(call.d_final_state);
  expect_gradients_match_finite_differences(call);
}

TEST(GdnBackward, MatchesFiniteDifferencesVarlenEmptyAndSingleToken) {
  std::mt19937_64 rng(14);
  GdnCall64 call = random_gdn_call(rng, 1, 7, 1, 2, 3, 2, {0, 0, 1, 4, 4, 7});
  call.options.use_qk_l2norm = true;
  expect_gradients_match_finite_differences(call);
}

TEST(GdnBackward, MatchesFiniteDifferencesWithoutStates) {
  std::mt19937_64 rng(15);
  GdnCall64 call = random_gdn_call(rng, 1, 6, 1, 2, 4, 3);
  call.pass_h0 = false;  // dh0 is then the gradient of a zero initial state
  call.pass_d_final_state = false;
  expect_gradients_match_finite_differences(call);
}

TEST(GdnBackward, EmptySequencePassesTheStateGradientThrough) {
  std::mt19937_64 rng(16);
  GdnCall64 call = random_gdn_call(rng, 1, 3, 1, 2, 3, 2, {0, 3, 3});
  const auto grads =
      hops::ref::gdn_backward(call.q, call.k, call.v, call.g, call.beta, &call.h0, call.cu(),
                              call.d_o, &call.d_final_state, call.options);
  expect_near(select(grads.dh0, 0, 1), select(call.d_final_state, 0, 1), 0.0);
}

// ---- gdn_recurrent ---------------------------------------------------------------

TEST(GdnRecurrent, SlotsMatchForwardAndMinusOneSkips) {
  std::mt19937_64 rng(5);
  const int64_t B = 3, T = 2, H = 1, HV = 2, K = 3, V = 2, S = 5;
  const Array64 q = random_array({B, T, H, K}, rng);
  const Array64 k = random_array({B, T, H, K}, rng);
  const Array64 v = random_array({B, T, HV, V}, rng);
  const Array64 g = random_array({B, T, HV}, rng, -1.0, 0.0);
  const Array64 beta = random_array({B, T, HV}, rng, 0.0, 1.0);
  const Array64 pool_before = random_array({S, HV, V, K}, rng);  // value-first pool
  const std::vector<int64_t> indices = {4, -1, 0};
  GdnOptions options;
  options.state_v_first = true;

  Array64 pool = pool_before;
  Array64 o({B, T, HV, V}, 999.0);  // poison: skipped rows must keep it
  hops::ref::gdn_recurrent(q, k, v, g, beta, pool, &indices, nullptr, options, o);

  for (int64_t n : {0, 2}) {
    const int64_t slot = indices[n];
    const Array64 h0 = select(pool_before, 0, slot);
    const auto expected =
        hops::ref::gdn_forward(select(q, 0, n), select(k, 0, n), select(v, 0, n), select(g, 0, n),
                               select(beta, 0, n), &h0, nullptr, options);
    SCOPED_TRACE("sequence " + std::to_string(n));
    expect_near(select(o, 0, n), expected.o);
    expect_near(select(pool, 0, slot), expected.final_state);
  }
  expect_near(select(o, 0, 1), Array64({1, T, HV, V}, 999.0), 0.0);  // skipped sequence
  for (int64_t slot : {1, 2, 3})
    expect_near(select(pool, 0, slot), select(pool_before, 0, slot), 0.0);

  const std::vector<int64_t> duplicate = {0, 0, 1};
  EXPECT_THROW(hops::ref::gdn_recurrent(q, k, v, g, beta, pool, &duplicate, nullptr, options, o),
               std::invalid_argument);
  const std::vector<int64_t> out_of_range = {0, 5, 1};
  EXPECT_THROW(hops::ref::gdn_recurrent(q, k, v, g, beta, pool, &out_of_range, nullptr, options, o),
               std::invalid_argument);
}

TEST(GdnRecurrent, VarlenWithoutIndicesUsesSlotN) {
  std::mt19937_64 rng(6);
  const std::vector<int64_t> cu = {0, 1, 3};
  const int64_t T = 3, H = 2, HV = 4, K = 2, V = 3;
  const Array64 q = random_array({1, T, H, K}, rng);
  const Array64 k = random_array({1, T, H, K}, rng);
  const Array64 v = random_array({1, T, HV, V}, rng);
  const Array64 g = random_array({1, T, HV}, rng, -1.0, 0.0);
  const Array64 beta = random_array({1, T, HV}, rng, 0.0, 1.0);
  const Array64 pool_before = random_array({3, HV, K, V}, rng);
  GdnOptions options;

  Array64 pool = pool_before;
  Array64 o({1, T, HV, V}, 999.0);
  hops::ref::gdn_recurrent(q, k, v, g, beta, pool, nullptr, &cu, options, o);

  const Array64 h0 = slice(pool_before, 0, 0, 2);
  const auto expected = hops::ref::gdn_forward(q, k, v, g, beta, &h0, &cu, options);
  expect_near(o, expected.o);
  expect_near(slice(pool, 0, 0, 2), expected.final_state);
  expect_near(select(pool, 0, 2), select(pool_before, 0, 2), 0.0);
}

TEST(GdnForward, RejectsHvNotMultipleOfH) {
  const Array64 q({1, 1, 2, 2}), k({1, 1, 2, 2}), v({1, 1, 3, 2}), g({1, 1, 3}), beta({1, 1, 3});
  EXPECT_THROW(hops::ref::gdn_forward(q, k, v, g, beta, nullptr, nullptr, GdnOptions{}),
               std::invalid_argument);
}

}  // namespace
