// The MoE family's list of CPU kernels, and moe_route.
#include <algorithm>
#include <cmath>
#include <limits>

#include "checked_math.hpp"
#include "moe.hpp"

namespace hops::cpu {

namespace {

constexpr int64_t kTokensPerTask = 64;

// Whether expert a ranks ahead of expert b: the higher score, the lower id
// among equals. A NaN score (from infinite logits) ranks below every number,
// so that the order stays total whatever the host passes.
struct RanksAhead {
  const double* scores;
  bool operator()(int64_t a, int64_t b) const {
    const double x = rank_score(scores[a]), y = rank_score(scores[b]);
    return x > y || (x == y && a < b);
  }
  static double rank_score(double s) {
    return std::isnan(s) ? -std::numeric_limits<double>::infinity() : s;
  }
};

// The k best of E scores, best first: a heap of the best so far whose top is
// the last of them, so O(E log k) whatever the order of the scores (an
// insertion into a sorted list is O(E k) on ascending scores).
void top_k(const double* scores, int64_t E, int64_t k, int64_t* ids) {
  if (k == 0) return;
  const RanksAhead ahead{scores};
  for (int64_t e = 0; e < k; ++e) ids[e] = e;
  std::make_heap(ids, ids + k, ahead);
  for (int64_t e = k; e < E; ++e) {
    if (!ahead(e, ids[0])) continue;
    std::pop_heap(ids, ids + k, ahead);
    ids[k - 1] = e;
    std::push_heap(ids, ids + k, ahead);
  }
  std::sort_heap(ids, ids + k, ahead);
}

// The scores are computed and ranked in float64, as the contract's oracle does
// (tests/reference/moe_reference.cpp): which scores tie (to the lower id)
// depends on their precision (a sigmoid is 1 from about 37 in float64, from
// about 17 in float32), and the route is a few exponentials per expert.
void route_token(const MoeRoute& op, int64_t t, float* logits, double* scores, int64_t* ids) {
  const int64_t E = op.E, k = op.k;
  load_run(op.logits, op.logits.offset(t, 0), op.logits.stride[1], E, logits);
  if (op.scoring == MoeScoring::softmax) {
    double largest = -std::numeric_limits<double>::infinity(), sum = 0.0;
    for (int64_t e = 0; e < E; ++e) largest = std::max<double>(largest, logits[e]);
    for (int64_t e = 0; e < E; ++e) sum += scores[e] = std::exp(logits[e] - largest);
    for (int64_t e = 0; e < E; ++e) scores[e] /= sum;
  } else {
    for (int64_t e = 0; e < E; ++e) scores[e] = 1.0 / (1.0 + std::exp(-double{logits[e]}));
  }
  top_k(scores, E, k, ids);
  double picked = 0.0;
  for (int64_t j = 0; j < k; ++j) picked += scores[ids[j]];
  const double denominator = op.normalize ? picked : 1.0;
  for (int64_t j = 0; j < k; ++j) {
    store(op.topk_weights, op.topk_weights.offset(t, j),
          static_cast<float>(scores[ids[j]] / denominator));
    moe::store_index(op.topk_ids, op.topk_ids.offset(t, j), ids[j]);
  }
}

}  // namespace

void moe_route(const ExecContext& context, const MoeRoute& op) {
  const std::string_view name = op.kName;
  // Per worker, in floats: the chosen ids [k] (int64), the scores [E]
  // (float64), the logits [E].
  const int64_t per_worker = round_up(scratch_sum(name, 2 * op.k, 3 * op.E), kPadding);
  const auto lease = context.scratch->acquire(
      scratch_bytes(name, scratch_size(name, per_worker, context.max_workers), sizeof(float)));
  context.threads->parallel_for((op.T + kTokensPerTask - 1) / kTokensPerTask, context.max_workers,
                                [&](int64_t task, int worker) {
                                  float* base = lease.as<float>() + worker * per_worker;
                                  auto* ids = reinterpret_cast<int64_t*>(base);
                                  auto* scores = reinterpret_cast<double*>(base + 2 * op.k);
                                  float* logits = base + 2 * op.k + 2 * op.E;
                                  for (int64_t t = task * kTokensPerTask;
                                       t < std::min(op.T, (task + 1) * kTokensPerTask); ++t) {
                                    route_token(op, t, logits, scores, ids);
                                  }
                                });
}

std::span<const Kernel> moe_kernels() {
  static constexpr Kernel kernels[] = {
      kernel<MoeRoute, &moe_route>(HOPS_DTYPE_FLOATS),
      kernel<MoeDispatch, &moe_dispatch>(HOPS_DTYPE_FLOATS),
      kernel<MoeExpertMlp, &moe_expert_mlp>(HOPS_DTYPE_FLOATS),
      kernel<MoeCombine, &moe_combine>(HOPS_DTYPE_FLOATS),
      kernel<MoeDispatchBwd, &moe_dispatch_bwd>(HOPS_DTYPE_FLOATS),
      kernel<MoeExpertMlpBwd, &moe_expert_mlp_bwd>(HOPS_DTYPE_FLOATS),
      kernel<MoeCombineBwd, &moe_combine_bwd>(HOPS_DTYPE_FLOATS),
  };
  return kernels;
}

}  // namespace hops::cpu
