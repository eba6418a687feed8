// Self-test of the attention family's float64 oracle: hand-computed cases,
// identities that must hold (one key, equal scores, the gate, GQA mapping,
// varlen = separate runs, bottom-right causal = the suffix of a full run,
// decode = prefill over scattered blocks, cache write then decode = prefill)
// and finite differences for the backward, so that the oracle itself can fail.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <utility>

#include "attn_reference.hpp"
#include "test_support.hpp"

namespace {

using hops::ref::Array64;
using namespace hops::ref::testing;  // NOLINT(google-build-using-namespace)

constexpr double kInf = std::numeric_limits<double>::infinity();
using Offsets = std::vector<int64_t>;

// lse with -inf (no key seen) as a finite stand-in, so that expect_near can
// compare it: equal where both are -inf, far apart where only one is.
Array64 comparable_lse(Array64 lse) {
  for (double& x : lse.data) {
    if (x == -kInf) x = -1e300;
  }
  return lse;
}

// ---- attn_prefill: hand values and identities --------------------------------------

TEST(AttnPrefill, HandValues) {
  // D=2, scale 1. Query 0 scores the keys 0 and ln 3 (weights 1/4, 3/4),
  // query 1 scores both 0 (weights 1/2, 1/2).
  const Array64 q = from_values({1, 2, 1, 2}, {1.0, 0.0, 0.0, 1.0});
  const Array64 k = from_values({1, 2, 1, 2}, {0.0, 0.0, std::log(3.0), 0.0});
  const Array64 v = from_values({1, 2, 1, 2}, {4.0, 0.0, 0.0, 8.0});

  const auto full = hops::ref::attn_prefill(q, k, v, nullptr, nullptr, nullptr, 1.0, false);
  expect_near(full.o, from_values({1, 2, 1, 2}, {1.0, 6.0, 2.0, 4.0}), 1e-14);
  expect_near(full.lse, from_values({1, 1, 2}, {std::log(4.0), std::log(2.0)}), 1e-14);

  // Causal with Lq == Lk: query 0 sees key 0 alone.
  const auto causal = hops::ref::attn_prefill(q, k, v, nullptr, nullptr, nullptr, 1.0, true);
  expect_near(causal.o, from_values({1, 2, 1, 2}, {4.0, 0.0, 2.0, 4.0}), 1e-14);
  expect_near(causal.lse, from_values({1, 1, 2}, {0.0, std::log(2.0)}), 1e-14);

  // scale 2 doubles the scores: query 0's weights become 1/10, 9/10.
  const auto scaled = hops::ref::attn_prefill(q, k, v, nullptr, nullptr, nullptr, 2.0, false);
  EXPECT_NEAR(scaled.o.at({0, 0, 0, 0}), 0.4, 1e-14);
  EXPECT_NEAR(scaled.o.at({0, 0, 0, 1}), 7.2, 1e-14);
  EXPECT_NEAR(scaled.lse.at({0, 0, 0}), std::log(10.0), 1e-14);
}

TEST(AttnPrefill, DefaultScaleIsInverseSqrtD) {
  std::mt19937_64 rng(1);
  const Array64 q = random_array({1, 3, 2, 5}, rng), k = random_array({1, 4, 1, 5}, rng),
                v = random_array({1, 4, 1, 5}, rng);
  const auto by_default = hops::ref::attn_prefill(q, k, v, nullptr, nullptr, nullptr, 0.0, true);
  const auto explicit_scale =
      hops::ref::attn_prefill(q, k, v, nullptr, nullptr, nullptr, 1.0 / std::sqrt(5.0), true);
  expect_near(by_default.o, explicit_scale.o, 0.0);
  expect_near(by_default.lse, explicit_scale.lse, 0.0);
}

TEST(AttnPrefill, OneKeyGivesItsValue) {
  std::mt19937_64 rng(2);
  const int64_t B = 2, Tq = 3, Hq = 4, Hkv = 2, D = 6;
  const Array64 q = random_array({B, Tq, Hq, D}, rng), k = random_array({B, 1, Hkv, D}, rng),
                v = random_array({B, 1, Hkv, D}, rng);
  // Non-causal: every query sees the key; causal: only the last (bottom-right).
  const auto full = hops::ref::attn_prefill(q, k, v, nullptr, nullptr, nullptr, 0.5, false);
  const auto causal = hops::ref::attn_prefill(q, k, v, nullptr, nullptr, nullptr, 0.5, true);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < Tq; ++t) {
      for (int64_t h = 0; h < Hq; ++h) {
        double s = 0.0;
        for (int64_t x = 0; x < D; ++x) s += 0.5 * q.at({b, t, h, x}) * k.at({b, 0, h / 2, x});
        EXPECT_NEAR(full.lse.at({b, h, t}), s, 1e-14);
        EXPECT_EQ(causal.lse.at({b, h, t}), t == Tq - 1 ? full.lse.at({b, h, t}) : -kInf);
        for (int64_t x = 0; x < D; ++x) {
          EXPECT_NEAR(full.o.at({b, t, h, x}), v.at({b, 0, h / 2, x}), 1e-14);
          EXPECT_EQ(causal.o.at({b, t, h, x}), t == Tq - 1 ? full.o.at({b, t, h, x}) : 0.0);
        }
      }
    }
  }
}

TEST(AttnPrefill, EqualScoresGiveTheMeanOfTheValues) {
  std::mt19937_64 rng(3);
  const int64_t Tq = 3, Tk = 5, D = 4;
  const Array64 q({1, Tq, 1, D}, 0.0);  // every score 0
  const Array64 k = random_array({1, Tk, 1, D}, rng), v = random_array({1, Tk, 1, D}, rng);
  const auto full = hops::ref::attn_prefill(q, k, v, nullptr, nullptr, nullptr, 0.0, false);
  const auto causal = hops::ref::attn_prefill(q, k, v, nullptr, nullptr, nullptr, 0.0, true);
  for (int64_t i = 0; i < Tq; ++i) {
    const int64_t seen = i + Tk - Tq + 1;  // causal: keys 0..i + Lk - Lq
    EXPECT_NEAR(full.lse.at({0, 0, i}), std::log(5.0), 1e-14);
    EXPECT_NEAR(causal.lse.at({0, 0, i}), std::log(static_cast<double>(seen)), 1e-14);
    for (int64_t x = 0; x < D; ++x) {
      double all = 0.0, first = 0.0;
      for (int64_t j = 0; j < Tk; ++j) {
        all += v.at({0, j, 0, x});
        if (j < seen) first += v.at({0, j, 0, x});
      }
      EXPECT_NEAR(full.o.at({0, i, 0, x}), all / Tk, 1e-14);
      EXPECT_NEAR(causal.o.at({0, i, 0, x}), first / seen, 1e-14);
    }
  }
}

TEST(AttnPrefill, GateMultipliesBySigmoid) {
  std::mt19937_64 rng(4);
  const Array64 q = random_array({2, 4, 2, 3}, rng), k = random_array({2, 6, 1, 3}, rng),
                v = random_array({2, 6, 1, 3}, rng);
  const auto plain = hops::ref::attn_prefill(q, k, v, nullptr, nullptr, nullptr, 0.0, true);

  const Array64 open_gate(q.shape, 40.0);  // sigmoid(40) = 1 - 4e-18
  const auto open = hops::ref::attn_prefill(q, k, v, &open_gate, nullptr, nullptr, 0.0, true);
  expect_near(open.o, plain.o, 1e-15);
  expect_near(open.lse, plain.lse, 0.0);  // the gate leaves lse alone

  const Array64 half_gate(q.shape, 0.0);  // sigmoid(0) = 1/2
  const auto half = hops::ref::attn_prefill(q, k, v, &half_gate, nullptr, nullptr, 0.0, true);
  Array64 halved = plain.o;
  for (double& x : halved.data) x *= 0.5;
  expect_near(half.o, halved, 1e-15);

  const Array64 gate = random_array(q.shape, rng, -3.0, 3.0);
  const auto gated = hops::ref::attn_prefill(q, k, v, &gate, nullptr, nullptr, 0.0, true);
  for (int64_t i = 0; i < q.numel(); ++i) {
    EXPECT_NEAR(gated.o.data[i], plain.o.data[i] / (1.0 + std::exp(-gate.data[i])), 1e-15);
  }
}

TEST(AttnPrefill, QueryHeadReadsKvHeadHOverG) {
  // Hq=6, Hkv=2: G=3 (not a power of two), so h / G and h % Hkv disagree.
  std::mt19937_64 rng(5);
  const int64_t B = 2, Tq = 4, Tk = 5, Hq = 6, Hkv = 2, D = 3;
  const Array64 q = random_array({B, Tq, Hq, D}, rng), k = random_array({B, Tk, Hkv, D}, rng),
                v = random_array({B, Tk, Hkv, D}, rng), gate = random_array({B, Tq, Hq, D}, rng);
  const auto full = hops::ref::attn_prefill(q, k, v, &gate, nullptr, nullptr, 0.0, true);
  for (int64_t h = 0; h < Hq; ++h) {
    const int64_t kv = h / (Hq / Hkv);
    const Array64 gate_h = select(gate, 2, h);
    const auto single = hops::ref::attn_prefill(select(q, 2, h), select(k, 2, kv), select(v, 2, kv),
                                                &gate_h, nullptr, nullptr, 0.0, true);
    SCOPED_TRACE("h = " + std::to_string(h));
    expect_near(select(full.o, 2, h), single.o, 0.0);
    expect_near(select(full.lse, 1, h), single.lse, 0.0);
  }
}

TEST(AttnPrefill, BottomRightCausalIsTheSuffixOfAFullRun) {
  // Lq=3 queries against Lk=7 keys (a prefix of 4 cached tokens): query i sits
  // at position i + 4, so the result is the last 3 rows of a run of 7 queries.
  std::mt19937_64 rng(6);
  const Array64 q_all = random_array({1, 7, 2, 4}, rng), k = random_array({1, 7, 1, 4}, rng),
                v = random_array({1, 7, 1, 4}, rng);
  const auto all = hops::ref::attn_prefill(q_all, k, v, nullptr, nullptr, nullptr, 0.0, true);
  const auto suffix =
      hops::ref::attn_prefill(slice(q_all, 1, 4, 7), k, v, nullptr, nullptr, nullptr, 0.0, true);
  expect_near(suffix.o, slice(all.o, 1, 4, 7), 0.0);
  expect_near(suffix.lse, slice(all.lse, 2, 4, 7), 0.0);
}

TEST(AttnPrefill, RowsThatSeeNoKey) {
  // Causal with Lk=2 < Lq=5: queries 0..2 sit before the first key.
  std::mt19937_64 rng(7);
  const Array64 q = random_array({1, 5, 2, 3}, rng), k = random_array({1, 2, 2, 3}, rng),
                v = random_array({1, 2, 2, 3}, rng), gate = random_array({1, 5, 2, 3}, rng);
  const auto result = hops::ref::attn_prefill(q, k, v, &gate, nullptr, nullptr, 0.0, true);
  for (int64_t h = 0; h < 2; ++h) {
    for (int64_t i = 0; i < 5; ++i) {
      if (i < 3) {
        EXPECT_EQ(result.lse.at({0, h, i}), -kInf);
      } else {
        EXPECT_TRUE(std::isfinite(result.lse.at({0, h, i})));
      }
    }
  }
  expect_near(slice(result.o, 1, 0, 3), Array64({1, 3, 2, 3}, 0.0), 0.0);
  // The rest is the bottom-right run of the last two queries.
  const Array64 gate_tail = slice(gate, 1, 3, 5);
  const auto tail =
      hops::ref::attn_prefill(slice(q, 1, 3, 5), k, v, &gate_tail, nullptr, nullptr, 0.0, true);
  expect_near(slice(result.o, 1, 3, 5), tail.o, 0.0);

  // No keys at all: every row is empty, causal or not.
  const auto none = hops::ref::attn_prefill(q, Array64({1, 0, 2, 3}), Array64({1, 0, 2, 3}), &gate,
                                            nullptr, nullptr, 0.0, false);
  expect_near(none.o, Array64(q.shape, 0.0), 0.0);
  for (double lse : none.lse.data) EXPECT_EQ(lse, -kInf);
}

TEST(AttnPrefill, VarlenEqualsSeparateRuns) {
  // An empty sequence with keys, a query with no key, one query, Lk > Lq, Lk < Lq.
  const Offsets cu_q = {0, 0, 2, 3, 6, 10}, cu_k = {0, 3, 3, 4, 10, 12};
  std::mt19937_64 rng(8);
  const Array64 q = random_array({1, 10, 4, 3}, rng), k = random_array({1, 12, 2, 3}, rng),
                v = random_array({1, 12, 2, 3}, rng), gate = random_array({1, 10, 4, 3}, rng);
  for (bool causal : {true, false}) {
    const auto packed = hops::ref::attn_prefill(q, k, v, &gate, &cu_q, &cu_k, 0.6, causal);
    for (size_t n = 0; n + 1 < cu_q.size(); ++n) {
      const Array64 gate_n = slice(gate, 1, cu_q[n], cu_q[n + 1]);
      const auto alone = hops::ref::attn_prefill(
          slice(q, 1, cu_q[n], cu_q[n + 1]), slice(k, 1, cu_k[n], cu_k[n + 1]),
          slice(v, 1, cu_k[n], cu_k[n + 1]), &gate_n, nullptr, nullptr, 0.6, causal);
      SCOPED_TRACE("sequence " + std::to_string(n) + (causal ? " causal" : ""));
      expect_near(slice(packed.o, 1, cu_q[n], cu_q[n + 1]), alone.o, 0.0);
      expect_near(comparable_lse(slice(packed.lse, 2, cu_q[n], cu_q[n + 1])),
                  comparable_lse(alone.lse), 0.0);
    }
  }
}

TEST(AttnPrefill, RejectsMisuse) {
  const Array64 q({1, 2, 3, 4}), k({1, 2, 2, 4}), v({1, 2, 2, 4});
  auto prefill = [](const Array64& q, const Array64& k, const Array64& v, const Array64* gate,
                    const Offsets* cu_q, const Offsets* cu_k) {
    hops::ref::attn_prefill(q, k, v, gate, cu_q, cu_k, 0.0, true);
  };
  EXPECT_THROW(prefill(q, k, v, nullptr, nullptr, nullptr), std::invalid_argument);  // 3 % 2
  const Array64 q4({1, 2, 4, 4}), k5({1, 2, 2, 5});
  EXPECT_THROW(prefill(q4, k5, k5, nullptr, nullptr, nullptr), std::invalid_argument);  // D
  EXPECT_THROW(prefill(q4, k, Array64({1, 3, 2, 4}), nullptr, nullptr, nullptr),
               std::invalid_argument);  // v's Tk
  const Array64 gate({1, 2, 4, 3});
  EXPECT_THROW(prefill(q4, k, v, &gate, nullptr, nullptr), std::invalid_argument);
  const Offsets cu = {0, 2}, backwards = {0, 2, 1, 2}, wrong_end = {0, 1};
  EXPECT_THROW(prefill(q4, k, v, nullptr, &cu, nullptr), std::invalid_argument);
  EXPECT_THROW(prefill(q4, k, v, nullptr, nullptr, &cu), std::invalid_argument);
  EXPECT_THROW(prefill(q4, k, v, nullptr, &backwards, &backwards), std::invalid_argument);
  EXPECT_THROW(prefill(q4, k, v, nullptr, &cu, &wrong_end), std::invalid_argument);
  const Offsets three = {0, 1, 2};
  EXPECT_THROW(prefill(q4, k, v, nullptr, &cu, &three), std::invalid_argument);  // N differs
  EXPECT_NO_THROW(prefill(q4, k, v, nullptr, &cu, &cu));
}

// ---- attn_prefill_bwd: against finite differences -----------------------------------

// A prefill small enough to difference every input element.
struct AttnCall64 {
  Array64 q, k, v, gate, d_o;
  Offsets cu_q, cu_k;  // empty: dense
  bool with_gate = true, causal = true;
  double scale = 0.0;

  const Array64* gate_or_null() const { return with_gate ? &gate : nullptr; }
  const Offsets* cu(const Offsets& offsets) const { return offsets.empty() ? nullptr : &offsets; }
  hops::ref::AttnResult forward() const {
    return hops::ref::attn_prefill(q, k, v, gate_or_null(), cu(cu_q), cu(cu_k), scale, causal);
  }
  hops::ref::AttnGrads backward() const {
    const auto result = forward();
    return hops::ref::attn_prefill_bwd(q, k, v, gate_or_null(), result.o, result.lse, d_o, cu(cu_q),
                                       cu(cu_k), scale, causal);
  }
};

AttnCall64 random_attn_call(std::mt19937_64& rng, int64_t B, int64_t Tq, int64_t Tk, int64_t Hq,
                            int64_t Hkv, int64_t D) {
  AttnCall64 call;
  call.q = random_array({B, Tq, Hq, D}, rng);
  call.k = random_array({B, Tk, Hkv, D}, rng);
  call.v = random_array({B, Tk, Hkv, D}, rng);
  call.gate = random_array({B, Tq, Hq, D}, rng, -3.0, 3.0);
  call.d_o = random_array({B, Tq, Hq, D}, rng);
  return call;
}

// L = sum(d_o * o): its gradients are the backward's outputs.
hops::ref::AttnGrads expect_gradients_match_finite_differences(AttnCall64 call) {
  const hops::ref::AttnGrads grads = call.backward();
  auto loss = [&] { return dot(call.d_o, call.forward().o); };
  double worst = expect_finite_differences("q", call.q, grads.dq, loss);
  worst = std::max(worst, expect_finite_differences("k", call.k, grads.dk, loss));
  worst = std::max(worst, expect_finite_differences("v", call.v, grads.dv, loss));
  if (call.with_gate) {
    worst = std::max(worst, expect_finite_differences("gate", call.gate, grads.dgate, loss));
  } else {
    EXPECT_EQ(grads.dgate.numel(), 0);
  }
  std::printf("  max |analytic - finite difference| = %.2e\n", worst);
  return grads;
}

TEST(AttnPrefillBwd, MatchesFiniteDifferencesCausalGated) {
  std::mt19937_64 rng(11);
  expect_gradients_match_finite_differences(random_attn_call(rng, 2, 4, 4, 2, 1, 3));
}

TEST(AttnPrefillBwd, MatchesFiniteDifferencesG3NonCausalWithScale) {
  std::mt19937_64 rng(12);
  AttnCall64 call = random_attn_call(rng, 1, 3, 5, 3, 1, 4);
  call.with_gate = false, call.causal = false, call.scale = 0.7;
  expect_gradients_match_finite_differences(call);
}

TEST(AttnPrefillBwd, MatchesFiniteDifferencesBottomRightPrefix) {
  // Lk=6 > Lq=3, G=2: dk and dv sum the two query heads of each group.
  std::mt19937_64 rng(13);
  expect_gradients_match_finite_differences(random_attn_call(rng, 1, 3, 6, 4, 2, 3));
}

TEST(AttnPrefillBwd, RowsThatSeeNoKeyGetZeroGradients) {
  // Lk=2 < Lq=5, causal: queries 0..2 see no key.
  std::mt19937_64 rng(14);
  const auto grads =
      expect_gradients_match_finite_differences(random_attn_call(rng, 1, 5, 2, 2, 1, 3));
  expect_near(slice(grads.dq, 1, 0, 3), Array64({1, 3, 2, 3}, 0.0), 0.0);
  expect_near(slice(grads.dgate, 1, 0, 3), Array64({1, 3, 2, 3}, 0.0), 0.0);
}

TEST(AttnPrefillBwd, MatchesFiniteDifferencesVarlenEmptySequences) {
  // Keys no query sees (sequence 0), queries with no key (sequence 1), one
  // query, Lk > Lq and Lk < Lq.
  std::mt19937_64 rng(15);
  AttnCall64 call = random_attn_call(rng, 1, 9, 12, 4, 2, 3);
  call.cu_q = {0, 0, 2, 3, 6, 9}, call.cu_k = {0, 3, 3, 4, 10, 12};
  const auto grads = expect_gradients_match_finite_differences(call);
  expect_near(slice(grads.dk, 1, 0, 3), Array64({1, 3, 2, 3}, 0.0), 0.0);
  expect_near(slice(grads.dv, 1, 0, 3), Array64({1, 3, 2, 3}, 0.0), 0.0);
  expect_near(slice(grads.dq, 1, 0, 2), Array64({1, 2, 4, 3}, 0.0), 0.0);
  call.causal = false;
  expect_gradients_match_finite_differences(call);
}

TEST(AttnPrefillBwd, RejectsMisuse) {
  std::mt19937_64 rng(16);
  const AttnCall64 call = random_attn_call(rng, 1, 3, 3, 2, 1, 2);
  const auto result = call.forward();
  EXPECT_THROW(
      hops::ref::attn_prefill_bwd(call.q, call.k, call.v, &call.gate, result.o, Array64({1, 2, 2}),
                                  call.d_o, nullptr, nullptr, 0.0, true),
      std::invalid_argument);
  EXPECT_THROW(hops::ref::attn_prefill_bwd(call.q, call.k, call.v, &call.gate, result.o, result.lse,
                                           Array64({1, 3, 2, 3}), nullptr, nullptr, 0.0, true),
               std::invalid_argument);
}

// ---- attn_decode and kv_cache_write -------------------------------------------------

// Sequences of lengths `lengths` with their keys and values laid out in a
// paged cache of `num_blocks` blocks, block ids shuffled; unused table
// entries hold ids far out of range, which must never be read.
struct PagedCache {
  int64_t block_size;
  std::vector<Array64> k, v;  // per sequence [length, Hkv, D]
  Array64 k_cache, v_cache;
  std::vector<std::vector<int64_t>> block_table;
  std::vector<int64_t> seq_lens;
};

PagedCache paged_cache(std::mt19937_64& rng, const std::vector<int64_t>& lengths,
                       int64_t block_size, int64_t max_blocks, int64_t Hkv, int64_t D) {
  PagedCache c{block_size, {}, {}, {}, {}, {}, lengths};
  int64_t used = 0;
  for (int64_t length : lengths) used += (length + block_size - 1) / block_size;
  const int64_t num_blocks = used + 3;  // spare blocks hold random rows too
  c.k_cache = random_array({num_blocks, block_size, Hkv, D}, rng);
  c.v_cache = random_array({num_blocks, block_size, Hkv, D}, rng);
  std::vector<int64_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next = 0;
  for (int64_t length : lengths) {
    std::vector<int64_t> row(max_blocks, 1000000);  // unused: out of range
    for (int64_t b = 0; b * block_size < length; ++b) row[b] = ids[next++];
    c.block_table.push_back(row);
    c.k.push_back(random_array({length, Hkv, D}, rng));
    c.v.push_back(random_array({length, Hkv, D}, rng));
    for (int64_t p = 0; p < length; ++p) {
      for (int64_t h = 0; h < Hkv; ++h) {
        for (int64_t x = 0; x < D; ++x) {
          const int64_t block = row[p / block_size], r = p % block_size;
          c.k_cache.at({block, r, h, x}) = c.k.back().at({p, h, x});
          c.v_cache.at({block, r, h, x}) = c.v.back().at({p, h, x});
        }
      }
    }
  }
  return c;
}

// [T,H,D] as a batch of one, [1,T,H,D].
Array64 batch_of_one(Array64 a) {
  a.shape.insert(a.shape.begin(), 1);
  return a;
}

TEST(AttnDecode, EqualsPrefillOverScatteredBlocks) {
  std::mt19937_64 rng(21);
  const int64_t L = 3, Hq = 4, Hkv = 2, D = 5, block_size = 4;
  // Lengths across block edges, shorter than L (early queries see nothing) and 0.
  const std::vector<int64_t> lengths = {9, 1, 0, 4, 12, 3};
  const PagedCache c = paged_cache(rng, lengths, block_size, 3, Hkv, D);
  const int64_t N = static_cast<int64_t>(lengths.size());
  const Array64 q = random_array({N, L, Hq, D}, rng);
  for (int64_t l_count : {int64_t{1}, L}) {  // one new token, and L of them
    const Array64 q_l = slice(q, 1, L - l_count, L);
    const Array64 o =
        hops::ref::attn_decode(q_l, c.k_cache, c.v_cache, c.block_table, c.seq_lens, 0.0);
    for (int64_t n = 0; n < N; ++n) {
      const auto want =
          hops::ref::attn_prefill(select(q_l, 0, n), batch_of_one(c.k[n]), batch_of_one(c.v[n]),
                                  nullptr, nullptr, nullptr, 0.0, true);
      SCOPED_TRACE("sequence " + std::to_string(n) + ", L = " + std::to_string(l_count));
      expect_near(select(o, 0, n), want.o, 1e-15);
    }
  }
}

TEST(AttnDecode, RejectsLengthsBeyondTheTableAndBlocksOutOfRange) {
  std::mt19937_64 rng(22);
  PagedCache c = paged_cache(rng, {5, 2}, 4, 2, 2, 2);
  const Array64 q = random_array({2, 1, 4, 2}, rng);
  EXPECT_NO_THROW(hops::ref::attn_decode(q, c.k_cache, c.v_cache, c.block_table, c.seq_lens, 0.0));
  for (int64_t bad : {int64_t{9}, int64_t{-1}}) {  // 9 > max_blocks * block_size = 8
    std::vector<int64_t> lengths = c.seq_lens;
    lengths[1] = bad;
    EXPECT_THROW(hops::ref::attn_decode(q, c.k_cache, c.v_cache, c.block_table, lengths, 0.0),
                 std::invalid_argument);
  }
  std::vector<int64_t> longer = c.seq_lens;
  longer[1] = 5;  // now uses the second entry, out of range
  EXPECT_THROW(hops::ref::attn_decode(q, c.k_cache, c.v_cache, c.block_table, longer, 0.0),
               std::invalid_argument);
  auto table = c.block_table;
  table[0][1] = -1;
  EXPECT_THROW(hops::ref::attn_decode(q, c.k_cache, c.v_cache, table, c.seq_lens, 0.0),
               std::invalid_argument);
  const Array64 q3 = random_array({2, 1, 3, 2}, rng);  // Hq=3, Hkv=2
  EXPECT_THROW(hops::ref::attn_decode(q3, c.k_cache, c.v_cache, c.block_table, c.seq_lens, 0.0),
               std::invalid_argument);
}

TEST(KvCacheWrite, WritesSlotsSkipsMinusOneKeepsTheRest) {
  std::mt19937_64 rng(23);
  const int64_t num_blocks = 3, block_size = 4, Hkv = 2, D = 3;
  const Array64 k = random_array({4, Hkv, D}, rng), v = random_array({4, Hkv, D}, rng);
  const Array64 k_before = random_array({num_blocks, block_size, Hkv, D}, rng);
  const Array64 v_before = random_array({num_blocks, block_size, Hkv, D}, rng);
  const std::vector<int64_t> slots = {9, -1, 0, 7};
  Array64 k_cache = k_before, v_cache = v_before;
  hops::ref::kv_cache_write(k, v, k_cache, v_cache, slots);
  for (int64_t block = 0; block < num_blocks; ++block) {
    for (int64_t row = 0; row < block_size; ++row) {
      const int64_t slot = block * block_size + row;
      const auto t = std::find(slots.begin(), slots.end(), slot) - slots.begin();
      for (int64_t h = 0; h < Hkv; ++h) {
        for (int64_t x = 0; x < D; ++x) {
          const bool written = t < static_cast<int64_t>(slots.size());
          EXPECT_EQ(k_cache.at({block, row, h, x}),
                    written ? k.at({t, h, x}) : k_before.at({block, row, h, x}));
          EXPECT_EQ(v_cache.at({block, row, h, x}),
                    written ? v.at({t, h, x}) : v_before.at({block, row, h, x}));
        }
      }
    }
  }
  // Bad slots throw before anything is written.
  for (const std::vector<int64_t>& bad :
       {std::vector<int64_t>{0, 1, 12, 2}, {0, -2, 1, 2}, {5, 1, 5, -1}}) {
    Array64 k_untouched = k_before, v_untouched = v_before;
    EXPECT_THROW(hops::ref::kv_cache_write(k, v, k_untouched, v_untouched, bad),
                 std::invalid_argument);
    expect_near(k_untouched, k_before, 0.0);
  }
}

TEST(KvCacheWrite, ThenDecodeEqualsVarlenPrefill) {
  // Each sequence's last L tokens are written into a cache that already
  // holds the earlier ones (scattered blocks); decode then equals a varlen
  // causal prefill of the L queries over all the tokens.
  std::mt19937_64 rng(24);
  const int64_t L = 2, Hq = 6, Hkv = 2, D = 4, block_size = 2;
  const std::vector<int64_t> lengths = {5, 2, 1, 8};
  PagedCache c = paged_cache(rng, lengths, block_size, 4, Hkv, D);
  const int64_t N = static_cast<int64_t>(lengths.size());

  // The new rows, with one row the cache write skips; where they go, the
  // cache holds noise first.
  Offsets cu_q = {0}, cu_k = {0};
  std::vector<int64_t> slots;
  std::vector<std::pair<int64_t, int64_t>> rows;  // (sequence, position) of each written row
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t p = std::max<int64_t>(lengths[n] - L, 0); p < lengths[n]; ++p) {
      slots.push_back(c.block_table[n][p / block_size] * block_size + p % block_size);
      rows.emplace_back(n, p);
    }
    cu_q.push_back(cu_q.back() + std::min(L, lengths[n]));
    cu_k.push_back(cu_k.back() + lengths[n]);
  }
  slots.insert(slots.begin() + 1, -1);
  rows.insert(rows.begin() + 1, {-1, -1});
  const int64_t T = static_cast<int64_t>(slots.size());
  const Array64 k_new = random_array({T, Hkv, D}, rng), v_new = random_array({T, Hkv, D}, rng);
  for (int64_t t = 0; t < T; ++t) {
    const auto [n, p] = rows[t];
    if (n < 0) continue;
    for (int64_t h = 0; h < Hkv; ++h) {
      for (int64_t x = 0; x < D; ++x) {
        c.k[n].at({p, h, x}) = k_new.at({t, h, x});
        c.v[n].at({p, h, x}) = v_new.at({t, h, x});
        const int64_t block = c.block_table[n][p / block_size], r = p % block_size;
        c.k_cache.at({block, r, h, x}) = 99.0;  // stale: must be overwritten
        c.v_cache.at({block, r, h, x}) = 99.0;
      }
    }
  }
  hops::ref::kv_cache_write(k_new, v_new, c.k_cache, c.v_cache, slots);

  // Decode with L queries per sequence; sequences shorter than L have no
  // keys for the early queries, the varlen prefill only their real queries.
  const Array64 q = random_array({N, L, Hq, D}, rng);
  const Array64 o = hops::ref::attn_decode(q, c.k_cache, c.v_cache, c.block_table, lengths, 0.0);
  Array64 q_packed({1, cu_q.back(), Hq, D}), k_packed({1, cu_k.back(), Hkv, D});
  Array64 v_packed({1, cu_k.back(), Hkv, D});
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = 0; i < cu_q[n + 1] - cu_q[n]; ++i) {
      const int64_t l = L - (cu_q[n + 1] - cu_q[n]) + i;
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t x = 0; x < D; ++x) q_packed.at({0, cu_q[n] + i, h, x}) = q.at({n, l, h, x});
    }
    for (int64_t p = 0; p < lengths[n]; ++p) {
      for (int64_t h = 0; h < Hkv; ++h) {
        for (int64_t x = 0; x < D; ++x) {
          k_packed.at({0, cu_k[n] + p, h, x}) = c.k[n].at({p, h, x});
          v_packed.at({0, cu_k[n] + p, h, x}) = c.v[n].at({p, h, x});
        }
      }
    }
  }
  const auto want =
      hops::ref::attn_prefill(q_packed, k_packed, v_packed, nullptr, &cu_q, &cu_k, 0.0, true);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t count = cu_q[n + 1] - cu_q[n];
    SCOPED_TRACE("sequence " + std::to_string(n));
    expect_near(slice(select(o, 0, n), 1, L - count, L), slice(want.o, 1, cu_q[n], cu_q[n + 1]),
                1e-15);
    expect_near(slice(select(o, 0, n), 1, 0, L - count), Array64({1, L - count, Hq, D}, 0.0), 0.0);
  }
}

}  // namespace
