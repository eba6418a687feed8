// attn_prefill for bf16 q, k, v on bf16 dot products (attn_bf16.hpp says
// when): attn_prefill.cpp's flow (the keys and values packed once, then one
// task per query block walking the key blocks it sees with an online
// softmax) with bf16 operands, in the layouts that AMX tiles and vdpbf16ps
// both read. The queries stay as they are (bf16, unscaled): the scale is
// applied to the fp32 scores, so Q K^T rounds nothing before its sums. The
// probabilities are rounded to bf16 for P V (relative error 2^-9 each, as
// flash attention on GPUs); their running sum is kept in fp32 from the
// unrounded values.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>

#include "attn_bf16.hpp"
#include "checked_math.hpp"

#if HOPS_AMX_BUILD
#include <immintrin.h>

// Everything below is compiled for AVX-512 with BF16 (attn_prefill calls it
// only where bf16_engine() found them), the softmax helpers included too.
// GCC 12's own intrinsics (_mm512_unpacklo_ps, ...) start from an "undefined"
// register that its flow analysis then reports (as in amx.hpp's regions).
// clang-format off
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// clang-format on
#include "attn_softmax.hpp"

namespace hops::cpu::attn {

namespace {

using namespace softmax;  // the vector helpers

constexpr int64_t kGroup = 16;  // columns of a group of b (attn_bf16.hpp)
// Keys per block: 4x the fp32 path's. Per row and block the softmax has a
// fixed cost (two reductions across lanes, the rescaling factor) and P V
// reads and writes the accumulator, which the bf16 products made a larger
// share of the time.
constexpr int64_t kBlockKeys = 256;
constexpr int64_t kDepthStep = 32;

// Per slot (key block, key-value head), as bf16_product's b operands: K^T
// in kBlockKeys / 16 groups of 16 keys, [Dp / 2][16] pairs along the head dim
// each, zero past the keys and D; V in Dp / 16 groups of 16 columns,
// [kBlockKeys / 2][16] pairs of keys each, zero past the keys.
struct Packed {
  uint32_t* keys;
  uint32_t* values;
  int64_t key_blocks, Dp;

  // Head-major: a head's key blocks follow each other, one stream for the prefetchers.
  int64_t slot(int64_t key_block, int64_t kv_head) const {
    return kv_head * key_blocks + key_block;
  }
  uint32_t* keys_of(int64_t slot) const { return keys + slot * kBlockKeys * Dp / 2; }
  uint32_t* values_of(int64_t slot) const { return values + slot * kBlockKeys * Dp / 2; }
};

// Elements [row, t, h, 0 .. D) of a bf16 tensor as bf16 bits at out, then
// zeros up to Dp.
void copy_row(const Tensor& x, int64_t row, int64_t t, int64_t h, int64_t D, int64_t Dp,
              uint16_t* out) {
  const bf16* in = x.data<const bf16>() + x.offset(row, t, h, 0);
  const int64_t step = x.stride[3];
  if (step == 1) {
    std::memcpy(out, in, D * sizeof(uint16_t));
  } else {
    for (int64_t d = 0; d < D; ++d) out[d] = in[d * step].bits;
  }
  std::fill(out + D, out + Dp, uint16_t{0});
}

// The block's rows of k and v gathered into `rows` [kBlockKeys][Dp] (zero past
// the keys), then packed: K by 32-bit transposes of 16 keys x 16 pairs, V by
// interleaving the halves of two keys' rows.
void pack_key_block(const AttnPrefill& op, const KeyBlock& block, int64_t kv_head,
                    const Packed& packed, int64_t slot, uint16_t* rows) {
  const auto span = op.sequences[block.sequence];
  const int64_t D = op.D, Dp = packed.Dp, t = span.k_begin + block.first;
  auto gather = [&](const Tensor& x) {
    for (int64_t j = 0; j < kBlockKeys; ++j) {
      if (j < block.count) {
        copy_row(x, span.row, t + j, kv_head, D, Dp, rows + j * Dp);
      } else {
        std::fill(rows + j * Dp, rows + (j + 1) * Dp, uint16_t{0});
      }
    }
  };
  gather(op.k);
  uint32_t* keys = packed.keys_of(slot);
  for (int64_t g = 0; g < kBlockKeys / kGroup; ++g) {
    for (int64_t p0 = 0; p0 < Dp / 2; p0 += kGroup) {
      __m512 columns[16];
      amx::transpose16(rows + g * kGroup * Dp + 2 * p0, Dp * 2, columns);
      for (int64_t j = 0; j < kGroup; ++j) {
        _mm512_storeu_ps(keys + (g * Dp / 2 + p0 + j) * kGroup, columns[j]);
      }
    }
  }
  gather(op.v);
  uint32_t* values = packed.values_of(slot);
  for (int64_t pair = 0; pair < kBlockKeys / 2; ++pair) {
    const uint16_t* even = rows + 2 * pair * Dp;
    const uint16_t* odd = even + Dp;
    for (int64_t g = 0; g < Dp / kGroup; ++g) {
      const __m512i low = _mm512_cvtepu16_epi32(_mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(even + g * kGroup)));  // NOLINT(*-reinterpret-cast)
      const __m512i high = _mm512_cvtepu16_epi32(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(odd + g * kGroup)));
      _mm512_storeu_si512(values + (g * kBlockKeys / 2 + pair) * kGroup,
                          _mm512_or_si512(low, _mm512_slli_epi32(high, 16)));
    }
  }
}

// A worker's blocks; Rp = the block's rows rounded up to 16, Dp = D rounded
// up to 32. Every part starts on a 64-byte line.
struct Work {
  uint16_t* q;     // [Rp, Dp] the block's queries (bf16, zero rows past R)
  float* s;        // [Rp, kBlockKeys] scores
  uint16_t* p;     // [Rp, kBlockKeys] probabilities, bf16 (zero rows past R)
  float* acc;      // [Rp, Dp] sum of p v (not yet divided by the sum of p)
  float* max;      // [Rp] running max of the scaled scores, base 2
  float* sum;      // [Rp] running sum of 2^(s - max)
  float* gate;     // [Dp] a row of the gate
  uint16_t* rows;  // [kBlockKeys, Dp] a key block's rows, for the packing

  static int64_t parts(std::string_view op, int64_t Rp, int64_t Dp, int64_t* sizes) {
    auto lines = [](int64_t floats) { return round_up(floats, kGroup); };
    sizes[0] = lines(scratch_size(op, Rp, Dp / 2));
    sizes[1] = lines(scratch_size(op, Rp, kBlockKeys));
    sizes[2] = lines(scratch_size(op, Rp, kBlockKeys / 2));
    sizes[3] = lines(scratch_size(op, Rp, Dp));
    sizes[4] = sizes[5] = lines(Rp);
    sizes[6] = lines(Dp);
    sizes[7] = lines(scratch_size(op, kBlockKeys, Dp / 2));
    return scratch_sum(op, sizes[0], sizes[1], sizes[2], sizes[3], sizes[4], sizes[5], sizes[6],
                       sizes[7]);
  }
  Work(std::string_view op, float* base, int64_t Rp, int64_t Dp) {
    int64_t sizes[8];
    parts(op, Rp, Dp, sizes);
    auto take = [&](int64_t part) { return std::exchange(base, base + sizes[part]); };
    q = reinterpret_cast<uint16_t*>(take(0));
    s = take(1);
    p = reinterpret_cast<uint16_t*>(take(2));
    acc = take(3), max = take(4), sum = take(5), gate = take(6);
    rows = reinterpret_cast<uint16_t*>(take(7));
  }
};

// The online softmax step of one row: its kBlockKeys scores (the first `visible`
// seen) times `scale` become 2^(x - new max) in bf16 at p (zeros past
// `visible`); updates the running max and sum and returns the factor by
// which the row's earlier accumulator is to be scaled.
float softmax_row(const float* s, int64_t visible, float scale, float& max_, float& sum_,
                  uint16_t* p) {
  constexpr int64_t kVectors = kBlockKeys / kLanes;
  static_assert(kVectors % 2 == 0, "bf16 rows are written two vectors at a time");
  Floats x[kVectors];
  Floats lanes = Floats{} + kMinusInf;
  for (int64_t v = 0; v < kVectors; ++v) {
    const int64_t seen = std::clamp<int64_t>(visible - v * kLanes, 0, kLanes);
    const auto mask = static_cast<__mmask16>((1u << seen) - 1);
    x[v] = _mm512_mask_mul_ps(_mm512_set1_ps(kMinusInf), mask, load(s + v * kLanes),
                              _mm512_set1_ps(scale));
    lanes = max(lanes, x[v]);
  }
  const float new_max = std::max(max_, reduce(lanes, [](Floats a, Floats b) { return max(a, b); }));
  if (new_max == kMinusInf) {  // no key seen yet: nothing to add, nothing to scale
    std::fill(p, p + kBlockKeys, uint16_t{0});
    return 1.0f;
  }
  Floats sums{};
  for (int64_t v = 0; v < kVectors; v += 2) {
    Floats weights[2];
    for (int64_t i = 0; i < 2; ++i) {
      weights[i] = x[v + i] > kMinusInf ? exp2_weights(x[v + i] - new_max) : 0.0f;
      sums += weights[i];
    }
    _mm512_storeu_si512(p + v * kLanes, (__m512i)_mm512_cvtne2ps_pbh(weights[1], weights[0]));
  }
  const float factor = max_ == kMinusInf ? 0.0f : exp2_weights(Floats{} + (max_ - new_max))[0];
  max_ = new_max;
  sum_ = sum_ * factor + reduce(sums, [](Floats a, Floats b) { return a + b; });
  return factor;
}

void attend_block(const AttnPrefill& op, const QueryBlock& block, int64_t kv_head,
                  const Packed& packed, const Work& w) {
  const auto span = op.sequences[block.sequence];
  const int64_t G = op.group(), D = op.D, Dp = packed.Dp;
  const int64_t Lq = span.q_end - span.q_begin, Lk = span.k_end - span.k_begin;
  const int64_t R = (block.end - block.begin) * G, Rp = round_up(R, amx::kTileRows);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = span.q_begin + block.begin + r / G, h = kv_head * G + r % G;
    copy_row(op.q, span.row, t, h, D, Dp, w.q + r * Dp);
  }
  std::fill(w.q + R * Dp, w.q + Rp * Dp, uint16_t{0});
  std::fill(w.p + R * kBlockKeys, w.p + Rp * kBlockKeys, uint16_t{0});
  std::fill(w.acc, w.acc + Rp * Dp, 0.0f);
  std::fill(w.max, w.max + R, kMinusInf);
  std::fill(w.sum, w.sum + R, 0.0f);
  const auto scale = static_cast<float>(op.scale * kLog2e);

  for (int64_t first = 0; first < block.keys; first += kBlockKeys) {
    const int64_t keys = std::min(kBlockKeys, block.keys - first);
    const int64_t slot = packed.slot(block.key_block + first / kBlockKeys, kv_head);
    bf16_product({w.q, Dp, Rp, Dp, packed.keys_of(slot), (keys + kGroup - 1) / kGroup,
                  Dp / 2 * kGroup, w.s, kBlockKeys, false});
    // Query i sees keys [0, i + 1 + Lk - Lq) (attn::key_end).
    const int64_t seen0 = block.begin + 1 + Lk - Lq - first;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t visible = op.causal ? std::clamp<int64_t>(seen0 + r / G, 0, keys) : keys;
      const float factor = softmax_row(w.s + r * kBlockKeys, visible, scale, w.max[r], w.sum[r],
                                       w.p + r * kBlockKeys);
      if (factor != 1.0f) {
        float* acc = w.acc + r * Dp;
        for (int64_t d = 0; d < Dp; ++d) acc[d] *= factor;
      }
    }
    bf16_product({w.p, kBlockKeys, Rp, round_up(keys, kDepthStep), packed.values_of(slot),
                  Dp / kGroup, kBlockKeys / 2 * kGroup, w.acc, Dp, true});
  }

  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = span.q_begin + block.begin + r / G, h = kv_head * G + r % G;
    finish_query_row(op, span.row, t, h, w.acc + r * Dp, w.max[r], w.sum[r], w.gate);
  }
}

}  // namespace

void attn_prefill_bf16(const ExecContext& context, const AttnPrefill& op) {
  const std::string_view name = op.kName;
  const int64_t Dp = round_up(op.D, kDepthStep);
  // A row's queries, accumulator, scores and probabilities.
  const int64_t tokens = query_block_tokens(op, 6 * (Dp + kBlockKeys));
  const int64_t Rp = round_up(tokens * op.group(), amx::kTileRows);
  int64_t sizes[8];
  // + kGroup: the lease aligned up to a 64-byte line.
  const int64_t per_worker = scratch_sum(name, Work::parts(name, Rp, Dp, sizes), kGroup);
  const int64_t query_blocks = count_query_blocks(op, tokens);
  const int64_t key_blocks = count_key_blocks(op, kBlockKeys);
  // The block lists, the packed keys and values, then each worker's blocks.
  const int64_t query_floats =
      round_up(scratch_size(name, query_blocks, sizeof(QueryBlock) / sizeof(float)), kGroup);
  const int64_t key_floats =
      round_up(scratch_size(name, key_blocks, sizeof(KeyBlock) / sizeof(float)), kGroup);
  const int64_t packed_floats = scratch_size(name, key_blocks, op.Hkv, kBlockKeys, Dp / 2);
  const auto lease = context.scratch->acquire(
      scratch_bytes(name,
                    scratch_sum(name, query_floats, key_floats, packed_floats, packed_floats,
                                scratch_size(name, per_worker, context.max_workers), kGroup),
                    sizeof(float)));
  const auto misaligned = reinterpret_cast<uintptr_t>(lease.as<float>()) % 64;
  float* base = lease.as<float>() + (misaligned ? (64 - misaligned) / sizeof(float) : 0);
  auto* queries = reinterpret_cast<QueryBlock*>(base);
  auto* keys = reinterpret_cast<KeyBlock*>(base + query_floats);
  auto* packed_base = reinterpret_cast<uint32_t*>(base + query_floats + key_floats);
  const Packed packed{packed_base, packed_base + packed_floats, key_blocks, Dp};
  float* workers = base + query_floats + key_floats + 2 * packed_floats;
  list_query_blocks(op, tokens, kBlockKeys, queries);
  list_key_blocks(op, kBlockKeys, keys);

  context.threads->parallel_for(checked_product(name, key_blocks, op.Hkv), context.max_workers,
                                [&](int64_t task, int worker) {
                                  const int64_t block = task / op.Hkv, head = task % op.Hkv;
                                  const Work w(name, workers + worker * per_worker, Rp, Dp);
                                  pack_key_block(op, keys[block], head, packed,
                                                 packed.slot(block, head), w.rows);
                                });
  context.threads->parallel_for(checked_product(name, query_blocks, op.Hkv), context.max_workers,
                                [&](int64_t task, int worker) {
                                  const Work w(name, workers + worker * per_worker, Rp, Dp);
                                  attend_block(op, queries[task / op.Hkv], task % op.Hkv, packed,
                                               w);
                                });
}
}  // namespace hops::cpu::attn

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#else
namespace hops::cpu::attn {
void attn_prefill_bf16(const ExecContext&, const AttnPrefill&) {}  // bf16_engine() is none
}  // namespace hops::cpu::attn
#endif
