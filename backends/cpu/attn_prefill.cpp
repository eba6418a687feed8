// attn_prefill: flash attention in fp32. First the keys and values are packed
// once for all query blocks, each key block of each key-value head into fp32
// column panels (below). Then one task per query block (attn.hpp) walks the
// key blocks it sees: S = Q K^T and O += P V are register-tiled GEMMs
// (small_gemm.hpp), and the softmax is online (a running max and sum per row,
// O rescaled when the max grows), so nothing of size Tq x Tk is stored.
// Causal blocks stop at the last key their last query sees.
#include <utility>

#include "attn.hpp"
#include "checked_math.hpp"

namespace hops::cpu {

namespace {

using attn::kKeys;
using attn::kMinusInf;

// The packed keys and values of the call, one slot per key block and
// key-value head, as the GEMMs' b operands: column panels of kPanel floats,
// each panel's rows contiguous. Rows of a wider b lie a power of two apart
// (256 floats for K^T of a 64-key block, 512 for fp32 values of 2 heads in
// place), so a panel's rows fell on a few L1 sets and evicted each other:
// Q K^T ran 9% and P V 27% slower.
constexpr int64_t kPanel = 32;  // small_gemm's AVX-512 tile width

struct PackedKeys {
  float* kt;      // per slot: kKeys / kPanel panels [Dp, kPanel] of K^T, zero past the keys and D
  float* values;  // per slot: Dp / kPanel panels (rounded up) [kKeys, kPanel] of V, zero past D
  int64_t key_blocks, Dp;

  int64_t values_width() const { return round_up(Dp, kPanel); }
  // Head-major: a head's key blocks follow each other, one stream for the prefetchers.
  int64_t slot(int64_t key_block, int64_t kv_head) const {
    return kv_head * key_blocks + key_block;
  }
  // The panel of columns [column, column + kPanel).
  float* keys_of(int64_t slot, int64_t column) const {
    return kt + slot * Dp * kKeys + column * Dp;
  }
  float* values_of(int64_t slot, int64_t column) const {
    return values + slot * kKeys * values_width() + column * kKeys;
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
    attn::load_head_row(op.v, span.row, t + j, kv_head, D, packed.values_width(), buffer);
    for (int64_t column = 0; column < Dp; column += kPanel) {
      std::copy(buffer + column, buffer + column + kPanel,
                packed.values_of(slot, column) + j * kPanel);
    }
  }
}

// A worker's blocks, fp32, row-major; R rows of queries (token-major, the G
// heads of a token together), Dp = D padded.
struct Blocks {
  float* q;     // [R, Dp] the block's queries, times the scale
  float* s;     // [R, kKeys] scores, then probabilities
  float* acc;   // [R, Dp] sum of p v (not yet divided by the sum of p)
  float* max;   // [R] running max of the scores
  float* sum;   // [R] running sum of e^(s - max)
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

// Sums and maxima with independent lanes, so that the loops vectorise.
constexpr int kLanes = 16;

// Turns the `visible` scores of a row into e^(s - new max) (zeros from
// there to `width`), updates the running max and sum, and returns the factor
// by which the row's earlier accumulator is to be scaled.
[[gnu::always_inline]] inline float softmax_row(float* __restrict s, int64_t visible, int64_t width,
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
    const int64_t slot = packed.slot(block.key_block + first / kKeys, kv_head);
    for (int64_t c = 0; c < columns; c += kPanel) {
      gemm({R, std::min(kPanel, columns - c), Dp, b.q, Dp, packed.keys_of(slot, c), kPanel, b.s + c,
            kKeys, false, Shape::full});
    }
    // Query i sees keys [0, i + 1 + Lk - Lq) (attn::key_end).
    softmax_block(b, R, Dp, keys, op.causal, block.begin + 1 + Lk - Lq - first, G);
    for (int64_t c = 0; c < Dp; c += kPanel) {
      gemm({R, std::min(kPanel, Dp - c), keys, b.s, kKeys, packed.values_of(slot, c), kPanel,
            b.acc + c, Dp, true, Shape::full});
    }
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
  const std::string_view name = op.kName;
  const int64_t tokens = attn::query_block_tokens(op);
  const int64_t Dp = round_up(op.D, kPadding);
  const int64_t per_worker = scratch_sum(name, Blocks::floats(name, tokens * op.group(), Dp),
                                         scratch_size(name, kKeys, Dp));
  const int64_t query_blocks = attn::count_query_blocks(op, tokens);
  const int64_t key_blocks = attn::count_key_blocks(op);
  // The block lists, the packed keys and values, then each worker's blocks.
  const int64_t query_floats = round_up(
      scratch_size(name, query_blocks, sizeof(attn::QueryBlock) / sizeof(float)), kPadding);
  const int64_t key_floats =
      round_up(scratch_size(name, key_blocks, sizeof(attn::KeyBlock) / sizeof(float)), kPadding);
  const int64_t kt_floats = scratch_size(name, key_blocks, op.Hkv, kKeys, Dp);
  const int64_t value_floats = scratch_size(name, key_blocks, op.Hkv, kKeys, round_up(Dp, kPanel));
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
  attn::list_query_blocks(op, tokens, queries);
  attn::list_key_blocks(op, keys);

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

}  // namespace hops::cpu
