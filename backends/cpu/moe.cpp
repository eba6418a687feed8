// The MoE family's list of CPU kernels, and moe_route.
#include <cmath>

#include "checked_math.hpp"
#include "moe.hpp"

namespace hops::cpu {

namespace {

constexpr int64_t kTokensPerTask = 64;

// The k best of E scores, best first, ties to the lower expert: an insertion
// into the sorted list of the best so far, which only a strictly better score
// enters ahead of another. Scores are compared as logits: softmax and sigmoid
// keep their order, and logits have no rounding of their own.
void top_k(const float* logits, int64_t E, int64_t k, int64_t* ids) {
  int64_t kept = 0;
  for (int64_t e = 0; e < E; ++e) {
    int64_t at = kept;
    while (at > 0 && logits[e] > logits[ids[at - 1]]) --at;
    if (at == k) continue;
    kept = std::min(kept + 1, k);
    for (int64_t i = kept - 1; i > at; --i) ids[i] = ids[i - 1];
    ids[at] = e;
  }
}

void route_token(const MoeRoute& op, int64_t t, float* logits, float* scores, int64_t* ids) {
  const int64_t E = op.E, k = op.k;
  load_run(op.logits, op.logits.offset(t, 0), op.logits.stride[1], E, logits);
  top_k(logits, E, k, ids);
  // softmax: p = e^(l - max) / sum over all experts; the max is the best id's.
  float denominator = 1.0f;
  if (op.scoring == MoeScoring::softmax) {
    const float max = logits[ids[0]];
    float all = 0.0f;
    for (int64_t e = 0; e < E; ++e) all += std::exp(logits[e] - max);
    for (int64_t j = 0; j < k; ++j) scores[j] = std::exp(logits[ids[j]] - max);
    denominator = all;
  } else {
    for (int64_t j = 0; j < k; ++j) scores[j] = 1.0f / (1.0f + std::exp(-logits[ids[j]]));
  }
  if (op.normalize) {
    denominator = 0.0f;
    for (int64_t j = 0; j < k; ++j) denominator += scores[j];
  }
  for (int64_t j = 0; j < k; ++j) {
    store(op.topk_weights, op.topk_weights.offset(t, j), scores[j] / denominator);
    moe::store_index(op.topk_ids, op.topk_ids.offset(t, j), ids[j]);
  }
}

}  // namespace

void moe_route(const ExecContext& context, const MoeRoute& op) {
  const std::string_view name = op.kName;
  // Per worker: the chosen ids [k] (int64), the logits [E] and the scores [k].
  const int64_t per_worker = round_up(scratch_sum(name, 3 * op.k, op.E), kPadding);
  const auto lease = context.scratch->acquire(
      scratch_bytes(name, scratch_size(name, per_worker, context.max_workers), sizeof(float)));
  context.threads->parallel_for((op.T + kTokensPerTask - 1) / kTokensPerTask, context.max_workers,
                                [&](int64_t task, int worker) {
                                  float* base = lease.as<float>() + worker * per_worker;
                                  auto* ids = reinterpret_cast<int64_t*>(base);
                                  float* logits = base + 2 * op.k;
                                  float* scores = logits + op.E;
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
