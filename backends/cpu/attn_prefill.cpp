// attn_prefill: flash attention in fp32. One task per query block (the G query
// heads of a key-value head over a few tokens, attn.hpp) walks the keys it
// sees in blocks of kKeys: S = Q K^T and O += P V are register-tiled GEMMs
// (small_gemm.hpp), and the softmax is online (a running max and sum per row,
// O rescaled when the max grows), so nothing of size Tq x Tk is stored.
// Causal blocks stop at the last key their last query sees.
#include <cstring>
#include <utility>

#include "attn.hpp"
#include "checked_math.hpp"

namespace hops::cpu {

namespace {

using attn::kMinusInf;

constexpr int64_t kKeys = 64;  // keys per block

// A worker's blocks, fp32, row-major; R rows of queries (token-major, the G
// heads of a token together), Dp = D padded.
struct Blocks {
  int64_t Dp;
  float* q;     // [R, Dp] the block's queries, times the scale
  float* kt;    // [Dp, kKeys] keys transposed (columns up to a multiple of kPadding)
  float* v;     // [kKeys, Dp] keys (before kt), then values
  float* s;     // [R, kKeys] scores, then probabilities
  float* acc;   // [R, Dp] sum of p v (not yet divided by the sum of p)
  float* max;   // [R] running max of the scores
  float* sum;   // [R] running sum of e^(s - max)
  float* gate;  // [Dp] a row of the gate

  static int64_t floats(std::string_view op, int64_t R, int64_t Dp) {
    return round_up(scratch_sum(op, scratch_size(op, 2 * R + 2 * kKeys, Dp),
                                scratch_size(op, R, kKeys + 2), Dp),
                    kPadding);
  }
  Blocks(float* base, int64_t R, int64_t Dp_) : Dp(Dp_) {
    auto take = [&](int64_t count) { return std::exchange(base, base + count); };
    q = take(R * Dp), kt = take(Dp * kKeys), v = take(kKeys * Dp), s = take(R * kKeys);
    acc = take(R * Dp), max = take(R), sum = take(R), gate = take(Dp);
  }
};

// Sums and maxima with independent lanes, so that the loops vectorise.
constexpr int kLanes = 16;

// Turns the `visible` scores of a row into e^(s - new max) (zeros from
// there to `width`), updates the running max and sum, and returns the factor
// by which the row's earlier accumulator is to be scaled.
HOPS_VECTOR_CLONES float softmax_row(float* __restrict s, int64_t visible, int64_t width,
                                     float& running_max, float& running_sum) {
  float lanes[kLanes];
  std::fill(lanes, lanes + kLanes, kMinusInf);
  int64_t j = 0;
  for (; j + kLanes <= visible; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = std::max(lanes[l], s[j + l]);
  }
  float block_max = kMinusInf;
  for (; j < visible; ++j) block_max = std::max(block_max, s[j]);
  for (const float lane : lanes) block_max = std::max(block_max, lane);
  const float new_max = std::max(running_max, block_max);
  if (new_max == kMinusInf) {  // no key seen yet: nothing to add, nothing to scale
    std::fill(s, s + width, 0.0f);
    return 1.0f;
  }
  std::fill(lanes, lanes + kLanes, 0.0f);
  j = 0;
  for (; j + kLanes <= visible; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      s[j + l] = exp_approx(s[j + l] - new_max);
      lanes[l] += s[j + l];
    }
  }
  float block_sum = 0.0f;
  for (; j < visible; ++j) {
    s[j] = exp_approx(s[j] - new_max);
    block_sum += s[j];
  }
  for (const float lane : lanes) block_sum += lane;
  std::fill(s + visible, s + width, 0.0f);
  const float factor = exp_approx(running_max - new_max);  // 0 while the max was -inf
  running_max = new_max;
  running_sum = running_sum * factor + block_sum;
  return factor;
}

HOPS_VECTOR_CLONES void scale_row(float* __restrict row, int64_t n, float factor) {
  for (int64_t d = 0; d < n; ++d) row[d] *= factor;
}

HOPS_VECTOR_CLONES void gate_row(float* __restrict row, const float* __restrict gate, int64_t n) {
  for (int64_t d = 0; d < n; ++d) row[d] *= sigmoid(gate[d]);
}

void attend_block(const AttnPrefill& op, const attn::QueryBlock& block, int64_t kv_head,
                  const Blocks& b) {
  const auto span = op.sequences[block.sequence];
  const int64_t G = op.group(), D = op.D, Dp = b.Dp;
  const int64_t Lq = span.q_end - span.q_begin, Lk = span.k_end - span.k_begin;
  const int64_t R = (block.end - block.begin) * G;
  const auto scale = static_cast<float>(op.scale);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = span.q_begin + block.begin + r / G, h = kv_head * G + r % G;
    attn::load_head_row(op.q, span.row, t, h, D, Dp, b.q + r * Dp);
    scale_row(b.q + r * Dp, D, scale);
  }
  std::fill(b.acc, b.acc + R * Dp, 0.0f);
  std::fill(b.max, b.max + R, kMinusInf);
  std::fill(b.sum, b.sum + R, 0.0f);

  for (int64_t first = 0; first < block.keys; first += kKeys) {
    const int64_t keys = std::min(kKeys, block.keys - first), columns = round_up(keys, kPadding);
    for (int64_t j = 0; j < keys; ++j) {
      attn::load_head_row(op.k, span.row, span.k_begin + first + j, kv_head, D, Dp, b.v + j * Dp);
    }
    transpose(b.v, Dp, keys, Dp, b.kt, kKeys);
    for (int64_t c = 0; c < Dp; ++c)
      std::fill(b.kt + c * kKeys + keys, b.kt + c * kKeys + columns, 0.0f);
    gemm({R, columns, Dp, b.q, Dp, b.kt, kKeys, b.s, kKeys, false, Shape::full});
    for (int64_t j = 0; j < keys; ++j) {
      attn::load_head_row(op.v, span.row, span.k_begin + first + j, kv_head, D, Dp, b.v + j * Dp);
    }
    for (int64_t r = 0; r < R; ++r) {
      const int64_t seen = attn::key_end(op, Lq, Lk, block.begin + r / G) - first;
      const float factor = softmax_row(b.s + r * kKeys, std::clamp<int64_t>(seen, 0, keys), keys,
                                       b.max[r], b.sum[r]);
      if (factor != 1.0f) scale_row(b.acc + r * Dp, Dp, factor);
    }
    gemm({R, Dp, keys, b.s, kKeys, b.v, Dp, b.acc, Dp, true, Shape::full});
  }

  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = span.q_begin + block.begin + r / G, h = kv_head * G + r % G;
    float* out = b.acc + r * Dp;
    const float sum = b.sum[r];
    scale_row(out, D, sum > 0.0f ? 1.0f / sum : 0.0f);  // no key seen: o = 0
    if (op.gate) {
      attn::load_head_row(op.gate, span.row, t, h, D, D, b.gate);
      gate_row(out, b.gate, D);
    }
    store_run(op.o, op.o.offset(span.row, t, h, 0), op.o.stride[3], D, out);
    if (op.lse) {
      op.lse.data<float>()[op.lse.offset(span.row, h, t)] =
          sum > 0.0f ? b.max[r] + std::log(sum) : kMinusInf;
    }
  }
}

}  // namespace

void attn_prefill(const ExecContext& context, const AttnPrefill& op) {
  const int64_t tokens = attn::query_block_tokens(op);
  const int64_t Dp = round_up(op.D, kPadding);
  const int64_t per_worker = Blocks::floats(op.kName, tokens * op.group(), Dp);
  const int64_t count = attn::count_query_blocks(op, tokens);
  // The list of blocks, then each worker's blocks.
  const int64_t list_floats =
      round_up(scratch_size(op.kName, count, sizeof(attn::QueryBlock) / sizeof(float)), kPadding);
  const auto lease = context.scratch->acquire(scratch_bytes(
      op.kName,
      scratch_sum(op.kName, list_floats, scratch_size(op.kName, per_worker, context.max_workers)),
      sizeof(float)));
  auto* blocks = lease.as<attn::QueryBlock>();
  attn::list_query_blocks(op, tokens, blocks);
  float* workers = lease.as<float>() + list_floats;
  context.threads->parallel_for(
      checked_product(op.kName, count, op.Hkv), context.max_workers, [&](int64_t task, int worker) {
        const Blocks b(workers + worker * per_worker, tokens * op.group(), Dp);
        attend_block(op, blocks[task / op.Hkv], task % op.Hkv, b);
      });
}

}  // namespace hops::cpu
