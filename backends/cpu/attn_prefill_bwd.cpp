// attn_prefill_bwd: flash attention's backward in fp32, from the forward's lse
// (P is recomputed, never stored). Three passes, each output element written
// by one task in a fixed order of operations, so that the result is the same
// bitwise whatever the threads:
//   1. per query row: Delta = do . o, and dgate;
//   2. per key block of kKeys keys and key-value head: dv = P^T dO and
//      dk = scale dS^T Q, summed over the query blocks that see the keys
//      in ascending order (rows token by token, the G heads of a token in
//      ascending order);
//   3. per query block (as the forward's) and key-value head: dq = scale dS K.
// with dO = do sigmoid(gate), P = e^(S - lse), dS = P (dO V^T - Delta). All
// products are register-tiled GEMMs (small_gemm.hpp).
#include <utility>

#include "attn.hpp"
#include "checked_math.hpp"

namespace hops::cpu {

namespace {

using attn::kKeys;
using attn::kMinusInf;

constexpr int64_t kRowsPerTask = 64;

// A worker's blocks, fp32, row-major; R query rows (token-major, the G heads
// of a token together), Dp = D padded.
struct Blocks {
  int64_t Dp;
  float* q;      // [R, Dp] queries
  float* d_o;    // [R, Dp] do * sigmoid(gate)
  float* k;      // [kKeys, Dp] keys
  float* kt;     // [Dp, kKeys] keys transposed, times the scale
  float* vt;     // [Dp, kKeys] values transposed
  float* rows;   // [kKeys, Dp] rows on their way to being transposed
  float* p;      // [R, kKeys] probabilities
  float* ds;     // [R, kKeys] do . v, then dS
  float* acc;    // [max(R, kKeys), Dp] dk or dq
  float* dv;     // [kKeys, Dp]
  float* lse;    // [R]
  float* delta;  // [R]
  float* gate;   // [Dp] a row of the gate

  static int64_t floats(std::string_view op, int64_t R, int64_t Dp) {
    const int64_t acc_rows = std::max(R, kKeys);
    return round_up(scratch_sum(op, scratch_size(op, 2 * R + 6 * kKeys + acc_rows + 1, Dp),
                                scratch_size(op, R, 2 * kKeys + 2)),
                    kPadding);
  }
  Blocks(float* base, int64_t R, int64_t Dp_) : Dp(Dp_) {
    auto take = [&](int64_t count) { return std::exchange(base, base + count); };
    q = take(R * Dp), d_o = take(R * Dp), k = take(kKeys * Dp), kt = take(Dp * kKeys);
    vt = take(Dp * kKeys), rows = take(kKeys * Dp), p = take(R * kKeys), ds = take(R * kKeys);
    acc = take(std::max(R, kKeys) * Dp), dv = take(kKeys * Dp), lse = take(R), delta = take(R);
    gate = take(Dp);
  }
};

// Delta of each query row ([B, Hq, Tq], as lse) lives in scratch.
struct Deltas {
  float* data;
  int64_t Hq, Tq;
  float& operator()(int64_t row, int64_t h, int64_t t) const {
    return data[(row * Hq + h) * Tq + t];
  }
};

// gate = do o (1 - sigmoid(gate)), in place: the gradient of the gate.
HOPS_VECTOR_CLONES void gate_gradient(float* __restrict gate, const float* __restrict d_o,
                                      const float* __restrict o, int64_t n) {
  for (int64_t d = 0; d < n; ++d) gate[d] = d_o[d] * o[d] * (1.0f - sigmoid(gate[d]));
}

HOPS_VECTOR_CLONES void times_sigmoid(float* __restrict row, const float* __restrict gate,
                                      int64_t n) {
  for (int64_t d = 0; d < n; ++d) row[d] *= sigmoid(gate[d]);
}

HOPS_VECTOR_CLONES void scale_rows(float* __restrict rows, int64_t n, float factor) {
  for (int64_t i = 0; i < n; ++i) rows[i] *= factor;
}

// s = e^(s - lse) in place for the `visible` keys of a row, 0 past them and
// in rows that see no key (lse = -inf).
HOPS_VECTOR_CLONES void probabilities(float* __restrict p, int64_t visible, int64_t width,
                                      float lse) {
  if (lse == kMinusInf) visible = 0;
  for (int64_t j = 0; j < visible; ++j) p[j] = exp_approx(p[j] - lse);
  std::fill(p + visible, p + width, 0.0f);
}

// ds = p (ds - delta), in place (ds holds dO . v).
HOPS_VECTOR_CLONES void score_gradient(float* __restrict ds, const float* __restrict p,
                                       int64_t width, float delta) {
  for (int64_t j = 0; j < width; ++j) ds[j] = p[j] * (ds[j] - delta);
}

// Pass 1: Delta and dgate for rows [first, last) of [B * Tq * Hq].
void prepare_rows(const AttnPrefillBwd& op, const Deltas& deltas, int64_t first, int64_t last,
                  float* d_o, float* o, float* gate) {
  const int64_t D = op.D;
  for (int64_t index = first; index < last; ++index) {
    const int64_t h = index % op.Hq, t = index / op.Hq % op.Tq, row = index / op.Hq / op.Tq;
    attn::load_head_row(op.d_o, row, t, h, D, D, d_o);
    attn::load_head_row(op.o, row, t, h, D, D, o);
    deltas(row, h, t) = dot(d_o, o, D);
    if (op.dgate) {
      attn::load_head_row(op.gate, row, t, h, D, D, gate);
      gate_gradient(gate, d_o, o, D);
      store_run(op.dgate, op.dgate.offset(row, t, h, 0), op.dgate.stride[3], D, gate);
    }
  }
}

// Keys [first, first + count) of a sequence: k, kt (times the scale) and vt,
// the transposes with zero columns up to a multiple of kPadding.
void pack_keys(const AttnPrefillBwd& op, const AttnSequences::Span& span, int64_t first,
               int64_t count, int64_t kv_head, const Blocks& b) {
  const int64_t D = op.D, Dp = b.Dp, columns = round_up(count, kPadding);
  for (int64_t j = 0; j < count; ++j) {
    attn::load_head_row(op.k, span.row, span.k_begin + first + j, kv_head, D, Dp, b.k + j * Dp);
  }
  transpose(b.k, Dp, count, Dp, b.kt, kKeys);
  for (int64_t j = 0; j < count; ++j) {
    attn::load_head_row(op.v, span.row, span.k_begin + first + j, kv_head, D, Dp, b.rows + j * Dp);
  }
  transpose(b.rows, Dp, count, Dp, b.vt, kKeys);
  const auto scale = static_cast<float>(op.scale);
  for (int64_t c = 0; c < Dp; ++c) {
    scale_rows(b.kt + c * kKeys, count, scale);
    std::fill(b.kt + c * kKeys + count, b.kt + c * kKeys + columns, 0.0f);
    std::fill(b.vt + c * kKeys + count, b.vt + c * kKeys + columns, 0.0f);
  }
}

// Queries [begin, end) of a sequence, all G heads of kv_head: q, dO, lse, Delta.
int64_t pack_queries(const AttnPrefillBwd& op, const AttnSequences::Span& span,
                     const Deltas& deltas, int64_t begin, int64_t end, int64_t kv_head,
                     const Blocks& b) {
  const int64_t G = op.group(), D = op.D, Dp = b.Dp, R = (end - begin) * G;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = span.q_begin + begin + r / G, h = kv_head * G + r % G;
    attn::load_head_row(op.q, span.row, t, h, D, Dp, b.q + r * Dp);
    attn::load_head_row(op.d_o, span.row, t, h, D, Dp, b.d_o + r * Dp);
    if (op.gate) {
      attn::load_head_row(op.gate, span.row, t, h, D, D, b.gate);
      times_sigmoid(b.d_o + r * Dp, b.gate, D);
    }
    b.lse[r] = op.lse.data<const float>()[op.lse.offset(span.row, h, t)];
    b.delta[r] = deltas(span.row, h, t);
  }
  return R;
}

// For the packed queries (R rows from query `begin`) and keys (count from
// `first`): b.p = P and b.ds = dS.
void score_gradients(const AttnPrefillBwd& op, const AttnSequences::Span& span, int64_t begin,
                     int64_t R, int64_t first, int64_t count, const Blocks& b) {
  const int64_t G = op.group(), Dp = b.Dp, columns = round_up(count, kPadding);
  const int64_t Lq = span.q_end - span.q_begin, Lk = span.k_end - span.k_begin;
  gemm({R, columns, Dp, b.q, Dp, b.kt, kKeys, b.p, kKeys, false, Shape::full});
  for (int64_t r = 0; r < R; ++r) {
    const int64_t seen = attn::key_end(op, Lq, Lk, begin + r / G) - first;
    probabilities(b.p + r * kKeys, std::clamp<int64_t>(seen, 0, count), kKeys, b.lse[r]);
  }
  gemm({R, columns, Dp, b.d_o, Dp, b.vt, kKeys, b.ds, kKeys, false, Shape::full});
  for (int64_t r = 0; r < R; ++r)
    score_gradient(b.ds + r * kKeys, b.p + r * kKeys, kKeys, b.delta[r]);
}

// The key blocks, largest work (the queries that see them) first.
void sort_key_blocks(const AttnProblem& p, attn::KeyBlock* blocks, int64_t count) {
  const auto work = [&](const attn::KeyBlock& block) {
    const auto span = p.sequences[block.sequence];
    return span.q_end - span.q_begin - block.queries;
  };
  std::stable_sort(blocks, blocks + count, [&](const attn::KeyBlock& a, const attn::KeyBlock& b) {
    return work(a) > work(b);
  });
}

// Pass 2: dk and dv of one key block and key-value head.
void key_block_gradients(const AttnPrefillBwd& op, const Deltas& deltas,
                         const attn::KeyBlock& block, int64_t kv_head, int64_t tokens,
                         const Blocks& b) {
  const auto span = op.sequences[block.sequence];
  const int64_t Dp = b.Dp, Lq = span.q_end - span.q_begin, count = block.count;
  pack_keys(op, span, block.first, count, kv_head, b);
  std::fill(b.acc, b.acc + count * Dp, 0.0f);
  std::fill(b.dv, b.dv + count * Dp, 0.0f);
  for (int64_t begin = block.queries; begin < Lq; begin += tokens) {
    const int64_t end = std::min(Lq, begin + tokens);
    const int64_t R = pack_queries(op, span, deltas, begin, end, kv_head, b);
    score_gradients(op, span, begin, R, block.first, count, b);
    gemm({count, Dp, R, b.p, kKeys, b.d_o, Dp, b.dv, Dp, true, Shape::full, true});
    gemm({count, Dp, R, b.ds, kKeys, b.q, Dp, b.acc, Dp, true, Shape::full, true});
  }
  const auto scale = static_cast<float>(op.scale);
  for (int64_t j = 0; j < count; ++j) {
    const int64_t t = span.k_begin + block.first + j;
    scale_rows(b.acc + j * Dp, op.D, scale);
    store_run(op.dk, op.dk.offset(span.row, t, kv_head, 0), op.dk.stride[3], op.D, b.acc + j * Dp);
    store_run(op.dv, op.dv.offset(span.row, t, kv_head, 0), op.dv.stride[3], op.D, b.dv + j * Dp);
  }
}

// Pass 3: dq of one query block and key-value head.
void query_block_gradients(const AttnPrefillBwd& op, const Deltas& deltas,
                           const attn::QueryBlock& block, int64_t kv_head, const Blocks& b) {
  const auto span = op.sequences[block.sequence];
  const int64_t G = op.group(), Dp = b.Dp;
  const int64_t R = pack_queries(op, span, deltas, block.begin, block.end, kv_head, b);
  std::fill(b.acc, b.acc + R * Dp, 0.0f);
  for (int64_t first = 0; first < block.keys; first += kKeys) {
    const int64_t count = std::min(kKeys, block.keys - first);
    pack_keys(op, span, first, count, kv_head, b);
    score_gradients(op, span, block.begin, R, first, count, b);
    gemm({R, Dp, count, b.ds, kKeys, b.k, Dp, b.acc, Dp, true, Shape::full});
  }
  const auto scale = static_cast<float>(op.scale);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t t = span.q_begin + block.begin + r / G, h = kv_head * G + r % G;
    scale_rows(b.acc + r * Dp, op.D, scale);
    store_run(op.dq, op.dq.offset(span.row, t, h, 0), op.dq.stride[3], op.D, b.acc + r * Dp);
  }
}

}  // namespace

void attn_prefill_bwd(const ExecContext& context, const AttnPrefillBwd& op) {
  const int64_t tokens = attn::query_block_tokens(
      op, 2 * round_up(op.D, kPadding) * sizeof(float));  // the queries and an accumulator
  const int64_t R = tokens * op.group(), Dp = round_up(op.D, kPadding);
  const int64_t per_worker = Blocks::floats(op.kName, R, Dp);
  const int64_t query_blocks = attn::count_query_blocks(op, tokens);
  const int64_t key_blocks = attn::count_key_blocks(op, kKeys);
  // The two block lists, Delta [B, Hq, Tq], then each worker's blocks.
  const int64_t query_floats = round_up(
      scratch_size(op.kName, query_blocks, sizeof(attn::QueryBlock) / sizeof(float)), kPadding);
  const int64_t key_floats = round_up(
      scratch_size(op.kName, key_blocks, sizeof(attn::KeyBlock) / sizeof(float)), kPadding);
  const int64_t delta_floats = round_up(scratch_size(op.kName, op.B, op.Hq, op.Tq), kPadding);
  const auto lease = context.scratch->acquire(
      scratch_bytes(op.kName,
                    scratch_sum(op.kName, query_floats, key_floats, delta_floats,
                                scratch_size(op.kName, per_worker, context.max_workers)),
                    sizeof(float)));
  auto* queries = lease.as<attn::QueryBlock>();
  auto* keys = reinterpret_cast<attn::KeyBlock*>(lease.as<float>() + query_floats);
  const Deltas deltas{lease.as<float>() + query_floats + key_floats, op.Hq, op.Tq};
  float* workers = deltas.data + delta_floats;
  attn::list_query_blocks(op, tokens, kKeys, queries);
  attn::list_key_blocks(op, kKeys, keys);
  sort_key_blocks(op, keys, key_blocks);

  const int64_t rows = checked_product(op.kName, op.B, op.Tq, op.Hq);
  context.threads->parallel_for(
      (rows + kRowsPerTask - 1) / kRowsPerTask, context.max_workers, [&](int64_t task, int worker) {
        float* buffers = workers + worker * per_worker;
        prepare_rows(op, deltas, task * kRowsPerTask, std::min(rows, (task + 1) * kRowsPerTask),
                     buffers, buffers + op.D, buffers + 2 * op.D);
      });
  context.threads->parallel_for(checked_product(op.kName, key_blocks, op.Hkv), context.max_workers,
                                [&](int64_t task, int worker) {
                                  const Blocks b(workers + worker * per_worker, R, Dp);
                                  key_block_gradients(op, deltas, keys[task / op.Hkv],
                                                      task % op.Hkv, tokens, b);
                                });
  context.threads->parallel_for(checked_product(op.kName, query_blocks, op.Hkv),
                                context.max_workers, [&](int64_t task, int worker) {
                                  const Blocks b(workers + worker * per_worker, R, Dp);
                                  query_block_gradients(op, deltas, queries[task / op.Hkv],
                                                        task % op.Hkv, b);
                                });
}

}  // namespace hops::cpu
