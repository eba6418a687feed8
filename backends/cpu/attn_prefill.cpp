// attn_prefill: flash attention in fp32. First the keys and values are packed
// once for all query blocks, each key block of each key-value head into fp32
// column panels (below). Then one task per query block (attn.hpp) walks the
// key blocks it sees: S = Q K^T and O += P V are register-tiled GEMMs
// (small_gemm.hpp), and the softmax is online (a running max and sum per row,
// O rescaled when the max grows), so nothing of size Tq x Tk is stored.
// Causal blocks stop at the last key their last query sees.
#include <bit>
#include <utility>

#include "attn.hpp"
#include "attn_bf16.hpp"
#include "attn_softmax.hpp"
#include "checked_math.hpp"

namespace hops::cpu {

namespace {

using attn::kKeys;
using attn::kMinusInf;
using namespace attn::softmax;  // the vector helpers

// The packed keys and values of the call, one slot per key block and
// key-value head, as the products' b operands: column panels of kPanel
// floats, each panel's rows contiguous. Rows of a wider b lie a power of two
// apart (256 floats for K^T of a 64-key block, 512 for fp32 values of 2
// heads in place), so a panel's rows fell on a few L1 sets and evicted each
// other: Q K^T ran 9% and P V 27% slower. Dp (the head dim padded) is a
// multiple of kPanel here.
using attn::kPanel;

struct PackedKeys {
  float* kt;      // per slot: kKeys / kPanel panels [Dp, kPanel] of K^T, zero past the keys and D
  float* values;  // per slot: Dp / kPanel panels [kKeys, kPanel] of V, zero past D
  int64_t key_blocks, Dp;

  // Head-major: a head's key blocks follow each other, one stream for the prefetchers.
  int64_t slot(int64_t key_block, int64_t kv_head) const {
    return kv_head * key_blocks + key_block;
  }
  // The panel of columns [column, column + kPanel).
  float* keys_of(int64_t slot, int64_t column) const {
    return kt + slot * Dp * kKeys + column * Dp;
  }
  float* values_of(int64_t slot, int64_t column) const {
    return values + slot * kKeys * Dp + column * kKeys;
  }
};

void pack_key_block(const AttnPrefill& op, const attn::KeyBlock& block, int64_t kv_head,
                    const PackedKeys& packed, int64_t slot, float* buffer) {
  const auto span = op.sequences[block.sequence];
  const int64_t D = op.D, Dp = packed.Dp, count = block.count, t = span.k_begin + block.first;
  const attn::Rows k = attn::head_rows(op.k, span.row, t, count, kv_head, D, Dp, false, buffer);
  for (int64_t column = 0; column < kKeys; column += kPanel) {
    float* panel = packed.keys_of(slot, column);
    const int64_t keys = std::clamp<int64_t>(count - column, 0, kPanel);
    transpose(k.data + column * k.ld, k.ld, keys, D, panel, kPanel);
    for (int64_t c = 0; c < Dp; ++c) {
      std::fill(panel + c * kPanel + (c < D ? keys : 0), panel + (c + 1) * kPanel, 0.0f);
    }
  }
  for (int64_t j = 0; j < count; ++j) {
    attn::load_head_row(op.v, span.row, t + j, kv_head, D, Dp, buffer);
    for (int64_t column = 0; column < Dp; column += kPanel) {
      std::copy(buffer + column, buffer + column + kPanel,
                packed.values_of(slot, column) + j * kPanel);
    }
  }
}

// A worker's blocks, fp32, row-major; R rows of queries (token-major, the G
// heads of a token together), Dp = D padded.
struct Blocks {
  float* q;     // [R, Dp] the block's queries, times the scale and log2(e)
  float* s;     // [R, kKeys] scores, then probabilities
  float* acc;   // [R, Dp] sum of p v (not yet divided by the sum of p)
  float* max;   // [R] running max of the scores
  float* sum;   // [R] running sum of 2^(s - max)
  float* gate;  // [Dp] a row of the gate

  static int64_t floats(std::string_view op, int64_t R, int64_t Dp) {
    return round_up(
        scratch_sum(op, scratch_size(op, 2 * R + 1, Dp), scratch_size(op, R, kKeys + 2)), kPadding);
  }
  Blocks(float* base, int64_t R, int64_t Dp) {
    auto take = [&](int64_t count) { return std::exchange(base, base + count); };
    q = take(R * Dp), s = take(R * kKeys), acc = take(R * Dp), max = take(R), sum = take(R);
    gate = take(Dp);
  }
};

// Turns the `visible` scores of a row into 2^(s - new max) (zeros from
// there to `width`), updates the running max and sum, and returns the factor
// by which the row's earlier accumulator is to be scaled. The row holds
// kKeys floats: the last vector past `visible` is padded with -inf.
[[gnu::always_inline]] inline float softmax_row(float* __restrict s, int64_t visible, int64_t width,
                                                float& running_max, float& running_sum) {
  const int64_t vectors = (visible + kLanes - 1) / kLanes;
  std::fill(s + visible, s + vectors * kLanes, kMinusInf);
  Floats lanes = Floats{} + kMinusInf;
  for (int64_t j = 0; j < vectors * kLanes; j += kLanes) lanes = max(lanes, load(s + j));
  const float new_max =
      std::max(running_max, reduce(lanes, [](Floats a, Floats b) { return max(a, b); }));
  if (new_max == kMinusInf) {  // no key seen yet: nothing to add, nothing to scale
    std::fill(s, s + width, 0.0f);
    return 1.0f;
  }
  lanes = Floats{};
  for (int64_t j = 0; j < vectors * kLanes; j += kLanes) {
    const Floats x = load(s + j);
    const Floats weights = x > kMinusInf ? exp2_weights(x - new_max) : 0.0f;  // the padding: 0
    store(s + j, weights);
    lanes += weights;
  }
  std::fill(s + std::min(vectors * kLanes, width), s + width, 0.0f);
  const float block_sum = reduce(lanes, [](Floats a, Floats b) { return a + b; });
  const float factor =
      running_max == kMinusInf ? 0.0f : exp2_weights(Floats{} + (running_max - new_max))[0];
  running_max = new_max;
  running_sum = running_sum * factor + block_sum;
  return factor;
}

// The online softmax step for a block of `keys` keys: s [R, kKeys] becomes
// p, and the rows of acc [R, Dp] are rescaled where their max grew. Causal:
// row r sees seen0 + r / G keys of the block (clamped), else all of them.
HOPS_VECTOR_CLONES void softmax_block(const Blocks& b, int64_t R, int64_t Dp, int64_t keys,
                                      bool causal, int64_t seen0, int64_t G) {
  for (int64_t r = 0; r < R; ++r) {
    const int64_t visible = causal ? std::clamp<int64_t>(seen0 + r / G, 0, keys) : keys;
    const float factor = softmax_row(b.s + r * kKeys, visible, keys, b.max[r], b.sum[r]);
    if (factor != 1.0f) {
      float* __restrict acc = b.acc + r * Dp;
      for (int64_t d = 0; d < Dp; ++d) acc[d] *= factor;
    }
  }
}

HOPS_VECTOR_CLONES void scale_row(float* __restrict row, int64_t n, float factor) {
  for (int64_t d = 0; d < n; ++d) row[d] *= factor;
}

HOPS_VECTOR_CLONES void gate_row(float* __restrict row, const float* __restrict gate, int64_t n) {
  for (int64_t d = 0; d < n; ++d) row[d] *= sigmoid(gate[d]);
}

void attend_block(const AttnPrefill& op, const attn::QueryBlock& block, int64_t kv_head,
                  const PackedKeys& packed, const Blocks& b) {
  const auto span = op.sequences[block.sequence];
  const int64_t G = op.group(), D = op.D, Dp = packed.Dp;
  const int64_t Lq = span.q_end - span.q_begin, Lk = span.k_end - span.k_begin;
  const int64_t R = (block.end - block.begin) * G;
  const auto scale = static_cast<float>(op.scale * kLog2e);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = span.q_begin + block.begin + r / G, h = kv_head * G + r % G;
    attn::load_head_row(op.q, span.row, t, h, D, Dp, b.q + r * Dp);
    scale_row(b.q + r * Dp, D, scale);
  }
  std::fill(b.acc, b.acc + R * Dp, 0.0f);
  std::fill(b.max, b.max + R, kMinusInf);
  std::fill(b.sum, b.sum + R, 0.0f);

  for (int64_t first = 0; first < block.keys; first += kKeys) {
    const int64_t keys = std::min(kKeys, block.keys - first);
    const int64_t slot = packed.slot(block.key_block + first / kKeys, kv_head);
    for (int64_t c = 0; c < keys; c += kPanel) {  // the panels are zero past the keys
      attn::panel_product(b.q, Dp, R, Dp, packed.keys_of(slot, c), b.s + c, kKeys, false);
    }
    // Query i sees keys [0, i + 1 + Lk - Lq) (attn::key_end).
    softmax_block(b, R, Dp, keys, op.causal, block.begin + 1 + Lk - Lq - first, G);
    for (int64_t c = 0; c < Dp; c += kPanel) {
      attn::panel_product(b.s, kKeys, R, keys, packed.values_of(slot, c), b.acc + c, Dp, true);
    }
  }

  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = span.q_begin + block.begin + r / G, h = kv_head * G + r % G;
    attn::finish_query_row(op, span.row, t, h, b.acc + r * Dp, b.max[r], b.sum[r], b.gate);
  }
}

}  // namespace

void attn_prefill(const ExecContext& context, const AttnPrefill& op) {
  if (op.q.dtype == DType::bf16 && attn::bf16_engine() != attn::Bf16Engine::none) {
    return attn::attn_prefill_bf16(context, op);
  }
  const std::string_view name = op.kName;
  const int64_t tokens = attn::query_block_tokens(
      op, 2 * round_up(op.D, kPadding) * sizeof(float));  // the queries and an accumulator
  const int64_t Dp = round_up(op.D, kPanel);
  const int64_t per_worker = scratch_sum(name, Blocks::floats(name, tokens * op.group(), Dp),
                                         scratch_size(name, kKeys, Dp));
  const int64_t query_blocks = attn::count_query_blocks(op, tokens);
  const int64_t key_blocks = attn::count_key_blocks(op, kKeys);
  // The block lists, the packed keys and values, then each worker's blocks.
  const int64_t query_floats = round_up(
      scratch_size(name, query_blocks, sizeof(attn::QueryBlock) / sizeof(float)), kPadding);
  const int64_t key_floats =
      round_up(scratch_size(name, key_blocks, sizeof(attn::KeyBlock) / sizeof(float)), kPadding);
  const int64_t kt_floats = scratch_size(name, key_blocks, op.Hkv, kKeys, Dp);
  const int64_t value_floats = kt_floats;
  const auto lease = context.scratch->acquire(
      scratch_bytes(name,
                    scratch_sum(name, query_floats, key_floats, kt_floats, value_floats,
                                scratch_size(name, per_worker, context.max_workers)),
                    sizeof(float)));
  auto* queries = lease.as<attn::QueryBlock>();
  auto* keys = reinterpret_cast<attn::KeyBlock*>(lease.as<float>() + query_floats);
  float* kt = lease.as<float>() + query_floats + key_floats;
  const PackedKeys packed{kt, kt + kt_floats, key_blocks, Dp};
  float* workers = packed.values + value_floats;
  attn::list_query_blocks(op, tokens, kKeys, queries);
  attn::list_key_blocks(op, kKeys, keys);

  context.threads->parallel_for(checked_product(name, key_blocks, op.Hkv), context.max_workers,
                                [&](int64_t task, int worker) {
                                  const int64_t block = task / op.Hkv, head = task % op.Hkv;
                                  pack_key_block(op, keys[block], head, packed,
                                                 packed.slot(block, head),
                                                 workers + worker * per_worker);
                                });
  context.threads->parallel_for(
      checked_product(name, query_blocks, op.Hkv), context.max_workers,
      [&](int64_t task, int worker) {
        const Blocks b(workers + worker * per_worker, tokens * op.group(), Dp);
        attend_block(op, queries[task / op.Hkv], task % op.Hkv, packed, b);
      });
}

void attn::finish_query_row(const AttnPrefill& op, int64_t row, int64_t t, int64_t h, float* acc,
                            float max, float sum, float* gate) {
  const int64_t D = op.D;
  scale_row(acc, D, sum > 0.0f ? 1.0f / sum : 0.0f);  // no key seen: o = 0
  if (op.gate) {
    attn::load_head_row(op.gate, row, t, h, D, D, gate);
    gate_row(acc, gate, D);
  }
  store_run(op.o, op.o.offset(row, t, h, 0), op.o.stride[3], D, acc);
  if (op.lse) {
    op.lse.data<float>()[op.lse.offset(row, h, t)] =
        sum > 0.0f ? max * kLn2 + std::log(sum) : kMinusInf;
  }
}

}  // namespace hops::cpu
