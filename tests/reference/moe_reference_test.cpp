// Self-test of the mixture-of-experts family's float64 oracle: hand-computed
// routes (softmax and sigmoid, normalized or not, ties to the lower id) and
// dispatches, identities that must hold (dispatch's grouping order, dispatch
// then combine of identity experts, one expert = a dense SwiGLU, the
// backwards of dispatch and combine as adjoints) and finite differences for
// the expert MLP's and combine's backwards, so that the oracle itself can fail.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <vector>

#include "moe_reference.hpp"
#include "test_support.hpp"

namespace {

using hops::ref::Array64;
using hops::ref::MoeScoring;
using hops::ref::SlotTable;
using namespace hops::ref::testing;  // NOLINT(google-build-using-namespace)

using Rows = std::vector<std::vector<int64_t>>;

// topk_ids of T tokens with k slots over E experts: uniform ids, every
// `drop_every`-th slot dropped (0: none).
SlotTable random_ids(std::mt19937_64& rng, int64_t T, int64_t k, int64_t E, int64_t drop_every) {
  SlotTable ids(T, k);
  std::uniform_int_distribution<int64_t> expert(0, E - 1);
  for (int64_t s = 0; s < T * k; ++s) {
    const bool dropped = drop_every > 0 && s % drop_every == drop_every - 1;
    ids.data[s] = dropped ? -1 : expert(rng);
  }
  return ids;
}

// A row map of T tokens x k slots onto distinct rows of R (R >= T*k),
// shuffled, with every `drop_every`-th slot dropped (0: none).
SlotTable distinct_rows(std::mt19937_64& rng, int64_t T, int64_t k, int64_t R, int64_t drop_every) {
  std::vector<int64_t> order(static_cast<size_t>(R));
  for (int64_t r = 0; r < R; ++r) order[r] = r;
  std::shuffle(order.begin(), order.end(), rng);
  SlotTable map(T, k);
  for (int64_t s = 0; s < T * k; ++s) {
    const bool dropped = drop_every > 0 && s % drop_every == drop_every - 1;
    map.data[s] = dropped ? -1 : order[s];
  }
  return map;
}

// ---- moe_route ----------------------------------------------------------------------

TEST(MoeRoute, HandValues) {
  // Token 0: logits ln 2, 0, ln 2, ln 4: softmax p = (2, 1, 2, 4) / 9, sigmoid
  // p = (2/3, 1/2, 2/3, 4/5). The top 3 are 3, then 0 and 2 (tied, lower id
  // first). Token 1: all equal, so ids 0, 1, 2.
  const double l2 = std::log(2.0), l4 = std::log(4.0);
  const Array64 logits = from_values({2, 4}, {l2, 0.0, l2, l4, 0.5, 0.5, 0.5, 0.5});
  const SlotTable want_ids = SlotTable::from_rows({{3, 0, 2}, {0, 1, 2}}, 3);

  const auto softmax = hops::ref::moe_route(logits, 3, false, MoeScoring::softmax);
  EXPECT_EQ(softmax.topk_ids.data, want_ids.data);
  expect_near(softmax.topk_weights,
              from_values({2, 3}, {4.0 / 9, 2.0 / 9, 2.0 / 9, 0.25, 0.25, 0.25}), 1e-15);

  const auto softmax_normalized = hops::ref::moe_route(logits, 3, true, MoeScoring::softmax);
  EXPECT_EQ(softmax_normalized.topk_ids.data, want_ids.data);
  expect_near(softmax_normalized.topk_weights,
              from_values({2, 3}, {0.5, 0.25, 0.25, 1.0 / 3, 1.0 / 3, 1.0 / 3}), 1e-15);

  const double s = 1.0 / (1.0 + std::exp(-0.5));
  const auto sigmoid = hops::ref::moe_route(logits, 3, false, MoeScoring::sigmoid);
  EXPECT_EQ(sigmoid.topk_ids.data, want_ids.data);
  expect_near(sigmoid.topk_weights, from_values({2, 3}, {0.8, 2.0 / 3, 2.0 / 3, s, s, s}), 1e-15);

  // Normalized sigmoid: 0.8 + 4/3 = 32/15.
  const auto sigmoid_normalized = hops::ref::moe_route(logits, 3, true, MoeScoring::sigmoid);
  expect_near(sigmoid_normalized.topk_weights,
              from_values({2, 3}, {0.375, 0.3125, 0.3125, 1.0 / 3, 1.0 / 3, 1.0 / 3}), 1e-15);
}

TEST(MoeRoute, SoftmaxAndSigmoidPickTheSameIdsButWeighDifferently) {
  // Both scorings are increasing in the logit: the same ids, best first.
  std::mt19937_64 rng(1);
  const Array64 logits = random_array({6, 7}, rng, -3.0, 3.0);
  const auto softmax = hops::ref::moe_route(logits, 4, false, MoeScoring::softmax);
  const auto sigmoid = hops::ref::moe_route(logits, 4, false, MoeScoring::sigmoid);
  EXPECT_EQ(softmax.topk_ids.data, sigmoid.topk_ids.data);
  for (int64_t t = 0; t < 6; ++t) {
    double sum = 0.0;
    for (int64_t e = 0; e < 7; ++e) sum += std::exp(logits.at({t, e}));
    for (int64_t j = 0; j < 4; ++j) {
      const double l = logits.at({t, softmax.topk_ids.at(t, j)});
      EXPECT_NEAR(softmax.topk_weights.at({t, j}), std::exp(l) / sum, 1e-15);
      EXPECT_NEAR(sigmoid.topk_weights.at({t, j}), 1.0 / (1.0 + std::exp(-l)), 1e-15);
      if (j > 0) {  // best first
        EXPECT_GE(softmax.topk_weights.at({t, j - 1}), softmax.topk_weights.at({t, j}));
      }
    }
  }
}

TEST(MoeRoute, KEqualToEListsEveryExpertAndNormalizedSoftmaxSumsToOne) {
  std::mt19937_64 rng(2);
  const Array64 logits = random_array({3, 5}, rng, -2.0, 2.0);
  const auto all = hops::ref::moe_route(logits, 5, true, MoeScoring::softmax);
  const auto plain = hops::ref::moe_route(logits, 5, false, MoeScoring::softmax);
  expect_near(all.topk_weights, plain.topk_weights, 1e-15);  // the k p's already sum to 1
  for (int64_t t = 0; t < 3; ++t) {
    std::vector<bool> seen(5, false);
    for (int64_t j = 0; j < 5; ++j) seen[all.topk_ids.at(t, j)] = true;
    EXPECT_EQ(seen, std::vector<bool>(5, true));
  }
}

TEST(MoeRoute, TiesGoToTheLowerId) {
  // Experts 1, 4 and 6 tie for the best logit, 0 and 5 for the next.
  const Array64 logits = from_values({1, 7}, {1.0, 2.0, -1.0, 0.0, 2.0, 1.0, 2.0});
  const auto route = hops::ref::moe_route(logits, 5, true, MoeScoring::sigmoid);
  EXPECT_EQ(route.topk_ids.data, (std::vector<int64_t>{1, 4, 6, 0, 5}));
  // T = 0 and k = 0 are empty, not errors.
  EXPECT_EQ(hops::ref::moe_route(Array64({0, 4}), 2, true, MoeScoring::softmax).topk_weights.shape,
            (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(hops::ref::moe_route(logits, 0, true, MoeScoring::softmax).topk_ids.data.size(), 0u);
}

TEST(MoeRoute, RejectsMisuse) {
  const Array64 logits({2, 3});
  EXPECT_THROW(hops::ref::moe_route(logits, 4, true, MoeScoring::softmax), std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_route(logits, -1, true, MoeScoring::softmax), std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_route(Array64({6}), 1, true, MoeScoring::softmax),
               std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_route(logits, 1, true, static_cast<MoeScoring>(2)),
               std::invalid_argument);
  EXPECT_NO_THROW(hops::ref::moe_route(logits, 3, true, MoeScoring::sigmoid));
}

// ---- moe_dispatch -------------------------------------------------------------------

TEST(MoeDispatch, HandValues) {
  // T=3, k=2, E=4: expert 0 gets slots (0,1), (1,0); expert 1 none; expert 2
  // gets (0,0), (2,0); expert 3 gets (2,1); slot (1,1) is dropped.
  const Array64 x = from_values({3, 2}, {1.0, 2.0, 3.0, 4.0, 5.0, 6.0});
  const SlotTable ids = SlotTable::from_rows({{2, 0}, {0, -1}, {2, 3}}, 2);
  const auto d = hops::ref::moe_dispatch(x, ids, 4);
  EXPECT_EQ(d.counts, (std::vector<int64_t>{2, 0, 2, 1}));
  EXPECT_EQ(d.row_map.data, (std::vector<int64_t>{2, 0, 1, -1, 3, 4}));
  expect_near(d.rows,
              from_values({6, 2}, {1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 5.0, 6.0, 5.0, 6.0, 0.0, 0.0}),
              0.0);
}

TEST(MoeDispatch, RowsGroupedByExpertInTokenSlotOrder) {
  std::mt19937_64 rng(3);
  const int64_t T = 9, k = 3, E = 7, Hd = 4;
  const Array64 x = random_array({T, Hd}, rng);
  const SlotTable ids = random_ids(rng, T, k, E, 5);
  const auto d = hops::ref::moe_dispatch(x, ids, E);
  // Walking the slots in (t, j) order per expert gives its rows consecutively
  // from sum(counts[<e]); each row is its token's copy.
  int64_t offset = 0, kept = 0;
  for (int64_t e = 0; e < E; ++e) {
    int64_t next = offset;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t j = 0; j < k; ++j) {
        if (ids.at(t, j) != e) continue;
        EXPECT_EQ(d.row_map.at(t, j), next) << "slot (" << t << ", " << j << ")";
        expect_near(select(d.rows, 0, next), select(x, 0, t), 0.0);
        ++next;
      }
    }
    EXPECT_EQ(d.counts[e], next - offset) << "expert " << e;
    kept += d.counts[e];
    offset = next;
  }
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      if (ids.at(t, j) < 0) {
        EXPECT_EQ(d.row_map.at(t, j), -1);
      }
    }
  }
  EXPECT_LT(kept, T * k);  // some slots were dropped
  expect_near(slice(d.rows, 0, kept, T * k), Array64({T * k - kept, Hd}, 0.0), 0.0);
}

TEST(MoeDispatch, ThenCombineOfIdentityExpertsWithUnitWeightsCountsTheKeptSlots) {
  // Identity experts and weights 1: y[t] = (kept slots of t) * x[t], k * x[t]
  // without drops.
  std::mt19937_64 rng(4);
  const int64_t T = 8, k = 4, E = 7, Hd = 5;
  const Array64 x = random_array({T, Hd}, rng);
  for (int64_t drop_every : {int64_t{0}, int64_t{3}}) {
    const SlotTable ids = random_ids(rng, T, k, E, drop_every);
    const auto d = hops::ref::moe_dispatch(x, ids, E);
    const Array64 y = hops::ref::moe_combine(d.rows, d.row_map, Array64({T, k}, 1.0));
    Array64 want = x;
    for (int64_t t = 0; t < T; ++t) {
      int64_t kept = 0;
      for (int64_t j = 0; j < k; ++j) kept += ids.at(t, j) >= 0;
      if (drop_every == 0) {
        EXPECT_EQ(kept, k);
      }
      for (int64_t h = 0; h < Hd; ++h) want.at({t, h}) *= static_cast<double>(kept);
    }
    expect_near(y, want, 1e-15);
  }
}

TEST(MoeDispatch, EveryTokenToOneExpertAndEmptyCases) {
  std::mt19937_64 rng(5);
  const Array64 x = random_array({4, 3}, rng);
  // k = 1, all tokens to expert 2 of 3: rows are x in order.
  const auto one = hops::ref::moe_dispatch(x, SlotTable(4, 1, 2), 3);
  EXPECT_EQ(one.counts, (std::vector<int64_t>{0, 0, 4}));
  EXPECT_EQ(one.row_map.data, (std::vector<int64_t>{0, 1, 2, 3}));
  expect_near(one.rows, x, 0.0);
  // Every slot dropped: zero rows, zero counts.
  const auto none = hops::ref::moe_dispatch(x, SlotTable(4, 2, -1), 3);
  EXPECT_EQ(none.counts, (std::vector<int64_t>{0, 0, 0}));
  expect_near(none.rows, Array64({8, 3}, 0.0), 0.0);
  // No tokens.
  const auto empty = hops::ref::moe_dispatch(Array64({0, 3}), SlotTable(0, 2), 3);
  EXPECT_EQ(empty.rows.shape, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(empty.counts, (std::vector<int64_t>{0, 0, 0}));
}

TEST(MoeDispatch, RejectsMisuse) {
  const Array64 x({2, 3});
  EXPECT_THROW(hops::ref::moe_dispatch(x, SlotTable::from_rows({{0}, {3}}, 1), 3),
               std::invalid_argument);  // id 3 = E
  EXPECT_THROW(hops::ref::moe_dispatch(x, SlotTable::from_rows({{0}, {-2}}, 1), 3),
               std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_dispatch(x, SlotTable(3, 1, 0), 3), std::invalid_argument);  // T
  EXPECT_THROW(hops::ref::moe_dispatch(Array64({6}), SlotTable(6, 1, 0), 3), std::invalid_argument);
  EXPECT_NO_THROW(hops::ref::moe_dispatch(x, SlotTable::from_rows({{0}, {-1}}, 1), 3));
}

// ---- moe_dispatch_bwd and moe_combine: adjoints -------------------------------------

TEST(MoeDispatchBwd, IsTheAdjointOfDispatch) {
  // <dispatch(x), r> = <x, dispatch_bwd(r)> for any x and r (rows past the
  // kept ones are zero whatever r holds there).
  std::mt19937_64 rng(6);
  const int64_t T = 7, k = 3, E = 5, Hd = 4;
  const SlotTable ids = random_ids(rng, T, k, E, 4);
  const Array64 x = random_array({T, Hd}, rng), r = random_array({T * k, Hd}, rng);
  const auto d = hops::ref::moe_dispatch(x, ids, E);
  const Array64 dx = hops::ref::moe_dispatch_bwd(r, d.row_map);
  EXPECT_NEAR(dot(d.rows, r), dot(x, dx), 1e-13);
  // By hand: dx[t] sums the rows of t's kept slots.
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < Hd; ++h) {
      double want = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        if (d.row_map.at(t, j) >= 0) want += r.at({d.row_map.at(t, j), h});
      }
      EXPECT_EQ(dx.at({t, h}), want);
    }
  }
}

TEST(MoeDispatchBwd, RejectsMisuse) {
  const Array64 d_rows({4, 2});
  EXPECT_THROW(hops::ref::moe_dispatch_bwd(d_rows, SlotTable::from_rows({{0, 4}}, 2)),
               std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_dispatch_bwd(Array64({4}), SlotTable(1, 2, 0)),
               std::invalid_argument);
  // Rows read twice are fine here (dispatch_bwd sums).
  EXPECT_NO_THROW(hops::ref::moe_dispatch_bwd(d_rows, SlotTable::from_rows({{1, 1}}, 2)));
}

TEST(MoeCombine, HandValues) {
  // y[0] = 2 rows[1] - rows[0]; y[1] = 0.5 rows[1] (slot (1,0) dropped).
  const Array64 rows = from_values({3, 2}, {1.0, 2.0, 3.0, 4.0, 5.0, 6.0});
  const SlotTable map = SlotTable::from_rows({{1, 0}, {-1, 1}}, 2);
  const Array64 w = from_values({2, 2}, {2.0, -1.0, 7.0, 0.5});
  expect_near(hops::ref::moe_combine(rows, map, w), from_values({2, 2}, {5.0, 6.0, 1.5, 2.0}), 0.0);
}

TEST(MoeCombineBwd, IsTheAdjointOfCombine) {
  // Combine is linear in the rows (d_rows is its adjoint) and in the weights
  // (d_topk_weights): <combine(rows, w), dy> = <rows, d_rows> = <w, d_w>.
  std::mt19937_64 rng(7);
  const int64_t T = 6, k = 3, R = 20, Hd = 5;
  const SlotTable map = distinct_rows(rng, T, k, R, 4);
  const Array64 rows = random_array({R, Hd}, rng), w = random_array({T, k}, rng),
                dy = random_array({T, Hd}, rng);
  const Array64 y = hops::ref::moe_combine(rows, map, w);
  const auto grads = hops::ref::moe_combine_bwd(rows, map, w, dy);
  EXPECT_NEAR(dot(y, dy), dot(rows, grads.d_rows), 1e-13);
  EXPECT_NEAR(dot(y, dy), dot(w, grads.d_topk_weights), 1e-13);
  // Rows no slot reads, and the weights of dropped slots, get exact zeros.
  std::vector<bool> read(R, false);
  for (int64_t r : map.data) {
    if (r >= 0) read[r] = true;
  }
  for (int64_t r = 0; r < R; ++r) {
    if (!read[r]) expect_near(select(grads.d_rows, 0, r), Array64({1, Hd}, 0.0), 0.0);
  }
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      if (map.at(t, j) < 0) {
        EXPECT_EQ(grads.d_topk_weights.at({t, j}), 0.0);
      }
    }
  }
}

TEST(MoeCombineBwd, MatchesFiniteDifferences) {
  std::mt19937_64 rng(8);
  const int64_t T = 4, k = 3, R = 14, Hd = 3;
  const SlotTable map = distinct_rows(rng, T, k, R, 5);
  Array64 rows = random_array({R, Hd}, rng), w = random_array({T, k}, rng);
  const Array64 dy = random_array({T, Hd}, rng);
  const auto grads = hops::ref::moe_combine_bwd(rows, map, w, dy);
  auto loss = [&] { return dot(dy, hops::ref::moe_combine(rows, map, w)); };
  double worst = expect_finite_differences("rows", rows, grads.d_rows, loss);
  worst = std::max(worst, expect_finite_differences("topk_weights", w, grads.d_topk_weights, loss));
  std::printf("  max |analytic - finite difference| = %.2e\n", worst);
}

TEST(MoeCombine, RejectsMisuse) {
  const Array64 rows({4, 2}), w({1, 2}), dy({1, 2});
  const SlotTable twice = SlotTable::from_rows({{3, 3}}, 2);
  EXPECT_NO_THROW(hops::ref::moe_combine(rows, twice, w));  // combine may read a row twice
  EXPECT_THROW(hops::ref::moe_combine_bwd(rows, twice, w, dy), std::invalid_argument);
  const SlotTable map = SlotTable::from_rows({{3, -1}}, 2);
  EXPECT_THROW(hops::ref::moe_combine(rows, SlotTable::from_rows({{4, 0}}, 2), w),
               std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_combine(rows, map, Array64({1, 3})), std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_combine(rows, map, Array64({2, 2})), std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_combine_bwd(rows, map, w, Array64({1, 3})), std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_combine_bwd(rows, map, Array64({2, 1}), dy), std::invalid_argument);
  EXPECT_NO_THROW(hops::ref::moe_combine_bwd(rows, map, w, dy));
}

// ---- moe_expert_mlp -----------------------------------------------------------------

// (silu(x Wg^T) * (x Wu^T)) Wd^T for x [N,Hd], Wg, Wu [I,Hd], Wd [Hd,I],
// written as matrix products, independently of the oracle's row loop.
Array64 dense_swiglu(const Array64& x, const Array64& wg, const Array64& wu, const Array64& wd) {
  auto times_transposed = [](const Array64& a, const Array64& b) {  // a b^T
    Array64 c({a.dim(0), b.dim(0)});
    for (int64_t n = 0; n < a.dim(0); ++n)
      for (int64_t m = 0; m < b.dim(0); ++m)
        for (int64_t i = 0; i < a.dim(1); ++i) c.at({n, m}) += a.at({n, i}) * b.at({m, i});
    return c;
  };
  Array64 h = times_transposed(x, wg);
  const Array64 u = times_transposed(x, wu);
  for (int64_t i = 0; i < h.numel(); ++i) {
    h.data[i] = h.data[i] / (1.0 + std::exp(-h.data[i])) * u.data[i];
  }
  return times_transposed(h, wd);
}

// gate_up_proj [E,2I,Hd] and down_proj [E,Hd,I] as the matrices of expert e.
Array64 matrix(const Array64& weights, int64_t e, int64_t begin, int64_t end) {
  Array64 m = slice(select(weights, 0, e), 1, begin, end);
  m.shape.erase(m.shape.begin());
  return m;
}

TEST(MoeExpertMlp, OneExpertIsADenseSwiGlu) {
  std::mt19937_64 rng(9);
  const int64_t R = 6, Hd = 5, I = 4;
  const Array64 rows = random_array({R, Hd}, rng), gate_up = random_array({1, 2 * I, Hd}, rng),
                down = random_array({1, Hd, I}, rng);
  const Array64 want = dense_swiglu(rows, matrix(gate_up, 0, 0, I), matrix(gate_up, 0, I, 2 * I),
                                    matrix(down, 0, 0, Hd));
  expect_near(hops::ref::moe_expert_mlp(rows, {R}, gate_up, down), want, 1e-14);
  // With 4 of the 6 rows counted, the last 2 are zero.
  const Array64 partial = hops::ref::moe_expert_mlp(rows, {4}, gate_up, down);
  expect_near(slice(partial, 0, 0, 4), slice(want, 0, 0, 4), 1e-14);
  expect_near(slice(partial, 0, 4, 6), Array64({2, Hd}, 0.0), 0.0);
}

TEST(MoeExpertMlp, EachExpertTransformsOnlyItsRows) {
  // counts {2, 0, 3, 1} over R = 8 rows: rows 0-1 expert 0, 2-4 expert 2,
  // 5 expert 3, 6-7 nobody's.
  std::mt19937_64 rng(10);
  const int64_t R = 8, Hd = 3, I = 2, E = 4;
  const std::vector<int64_t> counts = {2, 0, 3, 1};
  const Array64 rows = random_array({R, Hd}, rng), gate_up = random_array({E, 2 * I, Hd}, rng),
                down = random_array({E, Hd, I}, rng);
  const Array64 out = hops::ref::moe_expert_mlp(rows, counts, gate_up, down);
  int64_t begin = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t end = begin + counts[e];
    const Array64 want = dense_swiglu(slice(rows, 0, begin, end), matrix(gate_up, e, 0, I),
                                      matrix(gate_up, e, I, 2 * I), matrix(down, e, 0, Hd));
    SCOPED_TRACE("expert " + std::to_string(e));
    expect_near(slice(out, 0, begin, end), want, 1e-14);
    begin = end;
  }
  expect_near(slice(out, 0, 6, 8), Array64({2, Hd}, 0.0), 0.0);
}

TEST(MoeExpertMlp, RejectsMisuse) {
  const Array64 rows({4, 3}), gate_up({2, 4, 3}), down({2, 3, 2});
  EXPECT_NO_THROW(hops::ref::moe_expert_mlp(rows, {1, 3}, gate_up, down));
  EXPECT_THROW(hops::ref::moe_expert_mlp(rows, {2, 3}, gate_up, down),
               std::invalid_argument);  // 5 > R
  EXPECT_THROW(hops::ref::moe_expert_mlp(rows, {-1, 3}, gate_up, down), std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_expert_mlp(rows, {1, 1, 1}, gate_up, down),
               std::invalid_argument);  // E
  EXPECT_THROW(hops::ref::moe_expert_mlp(rows, {1, 3}, Array64({2, 3, 3}), down),
               std::invalid_argument);  // dim 1 odd
  EXPECT_THROW(hops::ref::moe_expert_mlp(rows, {1, 3}, Array64({2, 6, 3}), down),
               std::invalid_argument);  // 2I = 6, down has I = 2
  EXPECT_THROW(hops::ref::moe_expert_mlp(rows, {1, 3}, gate_up, Array64({2, 2, 2})),
               std::invalid_argument);  // Hd
  EXPECT_THROW(hops::ref::moe_expert_mlp(Array64({1, 4, 3}), {1, 3}, gate_up, down),
               std::invalid_argument);  // rows of rank 3
}

// ---- moe_expert_mlp_bwd -------------------------------------------------------------

TEST(MoeExpertMlpBwd, MatchesFiniteDifferences) {
  // counts {2, 0, 3} over R = 7: expert 1 has no rows, rows 5-6 are nobody's.
  std::mt19937_64 rng(11);
  const int64_t R = 7, Hd = 3, I = 2, E = 3;
  const std::vector<int64_t> counts = {2, 0, 3};
  Array64 rows = random_array({R, Hd}, rng), gate_up = random_array({E, 2 * I, Hd}, rng, -2, 2),
          down = random_array({E, Hd, I}, rng);
  const Array64 d_out = random_array({R, Hd}, rng);
  const auto grads = hops::ref::moe_expert_mlp_bwd(rows, counts, gate_up, down, d_out);
  auto loss = [&] { return dot(d_out, hops::ref::moe_expert_mlp(rows, counts, gate_up, down)); };
  double worst = expect_finite_differences("rows", rows, grads.d_rows, loss);
  worst = std::max(worst,
                   expect_finite_differences("gate_up_proj", gate_up, grads.d_gate_up_proj, loss));
  worst = std::max(worst, expect_finite_differences("down_proj", down, grads.d_down_proj, loss));
  std::printf("  max |analytic - finite difference| = %.2e\n", worst);
  // Exact zeros where nothing flows.
  expect_near(select(grads.d_gate_up_proj, 0, 1), Array64({1, 2 * I, Hd}, 0.0), 0.0);
  expect_near(select(grads.d_down_proj, 0, 1), Array64({1, Hd, I}, 0.0), 0.0);
  expect_near(slice(grads.d_rows, 0, 5, 7), Array64({2, Hd}, 0.0), 0.0);
}

TEST(MoeExpertMlpBwd, RejectsMisuse) {
  const Array64 rows({4, 3}), gate_up({2, 4, 3}), down({2, 3, 2});
  EXPECT_NO_THROW(hops::ref::moe_expert_mlp_bwd(rows, {1, 3}, gate_up, down, Array64({4, 3})));
  EXPECT_THROW(hops::ref::moe_expert_mlp_bwd(rows, {1, 3}, gate_up, down, Array64({3, 3})),
               std::invalid_argument);
  EXPECT_THROW(hops::ref::moe_expert_mlp_bwd(rows, {4, 1}, gate_up, down, Array64({4, 3})),
               std::invalid_argument);
}

}  // namespace
