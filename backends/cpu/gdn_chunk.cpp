// gdn_chunk_fwd: the chunked (WY / UT-transform) delta rule in fp32, one task
// per sequence and value head (or per sequence and key head, its value heads
// sharing the q/k work), the K x V state carried across chunks of kChunk
// tokens. Within a chunk, with G_i = g_0 + .. + g_i,
// D_ij = exp(G_i - G_j) and S the state at the chunk start, the token
// recurrence of docs/OPS.md unrolls to
//   (I + A) U = diag(beta) V - diag(beta e^G) K S,  A_ij = beta_i D_ij k_i.k_j (j < i)
//   o_i  = scale (e^G_i q_i S + sum_{j <= i} D_ij q_i.k_j u_j)
//   S'   = e^G_last S + sum_j e^(G_last - G_j) k_j u_j^T
// so with T = (I + A)^-1, W = -T diag(beta e^G) K and U0 = T diag(beta) V
// the new values are U = U0 + W S, and all the heavy work is small GEMMs:
// fp32, or for bf16 storage on bf16 operands where the CPU multiplies them
// (gdn_chunk_bf16.hpp); the state and everything else stay fp32.
#include <algorithm>
#include <cstring>
#include <utility>

#include "checked_math.hpp"
#include "gdn_chunk_bf16.hpp"
#include "gdn_chunk_common.hpp"
#include "gdn_common.hpp"
#include "small_gemm.hpp"

namespace hops::cpu {

namespace {

using gdn::fill_decay;
using gdn::invert_unit_lower;
using gdn::kChunk;
using gdn::prefetch_span;

constexpr int64_t kMaxHeadsPerTask = 8;  // value heads per key head that share a task (G)

// ---- one chunk ---------------------------------------------------------------------

// A worker's blocks, fp32, row-major, C = kChunk rows of tokens, feature
// dims padded with zeros to Kp, Vp.
struct ChunkBlocks {
  int64_t Kp, Vp;
  bool bf16;  // the products on bf16 operands (gdn_chunk_bf16.hpp)
  // Shared by the value heads of one key head:
  float* q;   // [C, Kp] queries
  float* k;   // [C, Kp] keys
  float* kt;  // [Kp, C] keys transposed
  float* qk;  // [C, C] q_i.k_j (lower triangle)
  float* kk;  // [C, C] k_i.k_j (lower triangle)
  // One value head at a time:
  float* rhs;         // [C, Kp + Vp] -beta_i e^G_i k_i | beta_i v_i
  float* wu;          // [C, Kp + Vp] W | U0, then W | U
  float* a;           // [C, C] A (strictly lower)
  float* t;           // [C, C] (I + A)^-1
  float* p;           // [C, C] scale D_ij q_i.k_j (lower, diagonal included)
  float* decay;       // [C, C] D_ij (j <= i)
  float* out;         // [C, Vp] the chunk's outputs
  float* kt_decayed;  // [Kp, C] column j of kt scaled by e^(G_last - G_j)
  float* log_decay;   // [C] G
  float* beta;        // [C]
  float* factors;     // [2C] per-row factors
  // Carried across chunks:
  float* states;  // [heads, Kp, Vp]

  static int64_t floats(int64_t Kp, int64_t Vp, int64_t heads) {
    constexpr std::string_view kOp = GdnChunkFwd::kName;
    const int64_t C = kChunk, KV = scratch_size(kOp, Kp, Vp);
    const int64_t shared = scratch_sum(kOp, scratch_size(kOp, 3 * C, Kp), 2 * C * C);
    const int64_t per_head =
        scratch_sum(kOp, scratch_size(kOp, 2 * C, scratch_sum(kOp, Kp, Vp)), 4 * C * C,
                    scratch_size(kOp, C, Vp), scratch_size(kOp, Kp, C), 4 * C);
    // Rounded so that the workers' blocks start on separate cache lines.
    return round_up(scratch_sum(kOp, shared, per_head, scratch_size(kOp, heads, KV)), kPadding);
  }

  ChunkBlocks(float* base, int64_t Kp_, int64_t Vp_, bool bf16_) : Kp(Kp_), Vp(Vp_), bf16(bf16_) {
    auto take = [&](int64_t count) { return std::exchange(base, base + count); };
    q = take(kChunk * Kp), k = take(kChunk * Kp), kt = take(Kp * kChunk);
    qk = take(kChunk * kChunk), kk = take(kChunk * kChunk);
    rhs = take(kChunk * (Kp + Vp)), wu = take(kChunk * (Kp + Vp));
    a = take(kChunk * kChunk), t = take(kChunk * kChunk), p = take(kChunk * kChunk);
    decay = take(kChunk * kChunk), out = take(kChunk * Vp), kt_decayed = take(Kp * kChunk);
    log_decay = take(kChunk), beta = take(kChunk), factors = take(2 * kChunk);
    states = base;
  }
  int64_t ld_rhs() const { return Kp + Vp; }
  float* u() const { return wu + Kp; }  // U (and U0) inside wu
  float* state(int64_t head) const { return states + head * Kp * Vp; }
};

// The heads of one task: value heads [first, first + count), all reading key head `key`.
struct HeadGroup {
  int64_t key, first, count;
};

// Asks for the rows of q, k, v, g, beta and o that a chunk will touch: tokens
// are far apart in memory (a whole [H, K] row each), so the hardware
// prefetchers miss them, and the chunk before runs long enough to hide the
// latency.
void prefetch_chunk(const GdnChunkFwd& op, int64_t row, int64_t begin, int64_t length,
                    const HeadGroup& heads) {
  for (int64_t t = begin; t < begin + length; ++t) {
    prefetch_span<0>(op.q, op.q.offset(row, t, heads.key, 0), op.K, op.q.stride[3]);
    prefetch_span<0>(op.k, op.k.offset(row, t, heads.key, 0), op.K, op.k.stride[3]);
    for (int64_t hv = heads.first; hv < heads.first + heads.count; ++hv) {
      prefetch_span<0>(op.v, op.v.offset(row, t, hv, 0), op.V, op.v.stride[3]);
      prefetch_span<0>(op.g, op.g.offset(row, t, hv), 1, 1);
      prefetch_span<0>(op.beta, op.beta.offset(row, t, hv), 1, 1);
      prefetch_span<1>(op.o, op.o.offset(row, t, hv, 0), op.V, op.o.stride[3]);
    }
  }
}

// q and k of `length` tokens from `begin`, and k transposed (its columns
// zero up to a whole vector past the last token, as the q k^T tiles read).
HOPS_VECTOR_CLONES void pack_keys(const GdnChunkFwd& op, int64_t row, int64_t begin, int64_t length,
                                  int64_t h, const ChunkBlocks& b) {
  for (int64_t i = 0; i < length; ++i) {
    float* q = b.q + i * b.Kp;
    float* k = b.k + i * b.Kp;
    gdn::load_query_key(op, row, begin + i, h, q, k);
    std::fill(q + op.K, q + b.Kp, 0.0f);
    std::fill(k + op.K, k + b.Kp, 0.0f);
  }
  transpose(b.k, b.Kp, length, b.Kp, b.kt, kChunk);
  for (int64_t c = 0; c < b.Kp; ++c) {
    std::fill(b.kt + c * kChunk + length, b.kt + c * kChunk + round_up(length, kPadding), 0.0f);
  }
}

// v, G (cumulative log decay) and beta of value head hv, and
// rhs = [-beta e^G k | beta v].
HOPS_VECTOR_CLONES void pack_values(const GdnChunkFwd& op, const gdn::HeadGate& gate, int64_t row,
                                    int64_t begin, int64_t length, int64_t hv,
                                    const ChunkBlocks& b) {
  const int64_t ld = b.ld_rhs();
  float cumulative = 0.0f;
  for (int64_t i = 0; i < length; ++i) {
    float* w = b.rhs + i * ld;
    float* v = w + b.Kp;
    const auto [log_decay, beta] = gdn::load_value(op, gate, row, begin + i, hv, v);
    std::fill(v + op.V, v + b.Vp, 0.0f);
    cumulative += log_decay;
    b.log_decay[i] = cumulative;
    b.beta[i] = beta;
    const float key_weight = -beta * exp_approx(cumulative);
    const float* k = b.k + i * b.Kp;
    for (int64_t c = 0; c < b.Kp; ++c) w[c] = key_weight * k[c];
    for (int64_t c = 0; c < b.Vp; ++c) v[c] *= beta;
  }
}

// a = beta_i D_ij k_i.k_j (j < i) and p = scale D_ij q_i.k_j (j <= i), with
// p zero above the diagonal up to the padded length, as far as its GEMMs
// read. Whole vectors per row, the triangle selected (fill_decay).
HOPS_VECTOR_CLONES void weight_scores(const ChunkBlocks& b, int64_t length, float scale) {
  const int64_t padded = round_up(length, kPadding);
  for (int64_t i = 0; i < length; ++i) {
    const float* d = b.decay + i * kChunk;
    const float* kk = b.kk + i * kChunk;
    const float* qk = b.qk + i * kChunk;
    float* a = b.a + i * kChunk;
    float* p = b.p + i * kChunk;
    const float beta = b.beta[i];
    const int64_t end = round_up(i + 1, kPadding);
    for (int64_t j = 0; j < end; ++j) {
      // Loads outside the selects: GCC vectorises no conditional load.
      const float weight = beta * d[j] * kk[j], score = scale * d[j] * qk[j];
      a[j] = j < i ? weight : 0.0f;
      p[j] = j <= i ? score : 0.0f;
    }
    std::fill(p + end, p + padded, 0.0f);
  }
}

HOPS_VECTOR_CLONES void scale_rows(float* rows, int64_t count, int64_t width, int64_t ld,
                                   const float* factors) {
  for (int64_t i = 0; i < count; ++i) {
    const float factor = factors[i];
    for (int64_t c = 0; c < width; ++c) rows[i * ld + c] *= factor;
  }
}

// kt_decayed = kt with column j scaled by e^(G_last - G_j); state *= e^G_last.
HOPS_VECTOR_CLONES void decay_to_chunk_end(const ChunkBlocks& b, int64_t length, float* state) {
  const float last = b.log_decay[length - 1];
  float* to_end = b.factors;
  for (int64_t j = 0; j < length; ++j) to_end[j] = exp_approx(last - b.log_decay[j]);
  for (int64_t c = 0; c < b.Kp; ++c) {
    for (int64_t j = 0; j < length; ++j) {
      b.kt_decayed[c * kChunk + j] = b.kt[c * kChunk + j] * to_end[j];
    }
  }
  const float state_decay = exp_approx(last);
  for (int64_t i = 0; i < b.Kp * b.Vp; ++i) state[i] *= state_decay;
}

// The chunk for value head hv, once q, k, qk and kk are in place: writes its
// outputs and advances `state` to the chunk's end.
HOPS_VECTOR_CLONES void forward_value_head(const GdnChunkFwd& op, int64_t row, int64_t begin,
                                           int64_t length, int64_t hv, const ChunkBlocks& b,
                                           float* state) {
  const int64_t Kp = b.Kp, Vp = b.Vp, ld = b.ld_rhs();
  const auto scale = static_cast<float>(op.scale);
  pack_values(op, gdn::HeadGate(op, hv), row, begin, length, hv, b);
  fill_decay(b.log_decay, length, b.factors, b.decay);
  weight_scores(b, length, scale);
  invert_unit_lower(b.a, b.t, length);
  // [W | U0] = T rhs, then U = U0 + W S.
  gdn::multiply(b.bf16,
                {length, Kp + Vp, length, b.t, kChunk, b.rhs, ld, b.wu, ld, false, Shape::lower_a});
  gdn::multiply(b.bf16, {length, Vp, Kp, b.wu, ld, state, Vp, b.u(), ld, true, Shape::full});
  // out = scale e^G (q S) + P U.
  gdn::multiply(b.bf16, {length, Vp, Kp, b.q, Kp, state, Vp, b.out, Vp, false, Shape::full});
  float* query_decay = b.factors;
  for (int64_t i = 0; i < length; ++i) query_decay[i] = scale * exp_approx(b.log_decay[i]);
  scale_rows(b.out, length, Vp, Vp, query_decay);
  gdn::multiply(b.bf16,
                {length, Vp, length, b.p, kChunk, b.u(), ld, b.out, Vp, true, Shape::lower_a});
  for (int64_t i = 0; i < length; ++i) {
    store_run(op.o, op.o.offset(row, begin + i, hv, 0), op.o.stride[3], op.V, b.out + i * Vp);
  }
  // S = e^G_last S + (e^(G_last - G) k)^T U.
  decay_to_chunk_end(b, length, state);
  gdn::multiply(b.bf16,
                {Kp, Vp, length, b.kt_decayed, kChunk, b.u(), ld, state, Vp, true, Shape::full});
}

void forward_chunk(const GdnChunkFwd& op, int64_t row, int64_t begin, int64_t length,
                   const HeadGroup& heads, const ChunkBlocks& b) {
  const int64_t columns = round_up(length, kPadding);
  pack_keys(op, row, begin, length, heads.key, b);
  gdn::multiply(b.bf16, {length, columns, b.Kp, b.k, b.Kp, b.kt, kChunk, b.kk, kChunk, false,
                         Shape::lower_out});
  gdn::multiply(b.bf16, {length, columns, b.Kp, b.q, b.Kp, b.kt, kChunk, b.qk, kChunk, false,
                         Shape::lower_out});
  for (int64_t i = 0; i < heads.count; ++i) {
    forward_value_head(op, row, begin, length, heads.first + i, b, b.state(i));
  }
}

void forward_sequence(const GdnChunkFwd& op, int64_t n, const HeadGroup& heads,
                      const ChunkBlocks& b) {
  const auto [row, begin, end] = op.sequences[n];
  for (int64_t i = 0; i < heads.count; ++i) {
    const int64_t hv = heads.first + i;
    std::fill(b.state(i), b.state(i) + b.Kp * b.Vp, 0.0f);
    if (op.initial_state) {
      gdn::load_state(gdn::state_view(op.initial_state, n, hv, op.state_v_first), op.K, op.V,
                      b.state(i), b.Vp);
    }
  }
  for (int64_t t = begin; t < end; t += kChunk) {
    if (t + kChunk < end) {
      prefetch_chunk(op, row, t + kChunk, std::min(kChunk, end - t - kChunk), heads);
    }
    forward_chunk(op, row, t, std::min(kChunk, end - t), heads, b);
  }
  if (op.final_state) {
    for (int64_t i = 0; i < heads.count; ++i) {
      gdn::store_state(b.state(i), b.Vp, op.K, op.V,
                       gdn::state_view(op.final_state, n, heads.first + i, op.state_v_first));
    }
  }
}

// Value heads of one key head share its q/k work (loads, norms, q k^T, k k^T)
// when they run in one task; that is done when it still leaves a task per worker.
int64_t heads_per_task(const GdnChunkFwd& op, int max_workers) {
  const int64_t group = op.HV / op.H;
  const bool enough_tasks = op.sequences.count * op.H >= max_workers;
  return enough_tasks && group <= kMaxHeadsPerTask ? group : 1;
}

}  // namespace

void gdn_chunk_fwd(const ExecContext& context, const GdnChunkFwd& op) {
  const int64_t Kp = round_up(op.K, kPadding), Vp = round_up(op.V, kPadding);
  const int64_t heads = heads_per_task(op, context.max_workers);
  const int64_t per_worker = ChunkBlocks::floats(Kp, Vp, heads);
  const int64_t groups = op.HV / heads;
  const bool bf16 = gdn::bf16_products(op.q.dtype, op.K, op.V);
  const auto lease = context.scratch->acquire(
      scratch_bytes(op.kName, per_worker, sizeof(float), context.max_workers));
  context.threads->parallel_for(
      checked_product(op.kName, op.sequences.count, groups), context.max_workers,
      [&](int64_t task, int worker) {
        const FlushSubnormals flush;
        const ChunkBlocks blocks(lease.as<float>() + worker * per_worker, Kp, Vp, bf16);
        const int64_t first = task % groups * heads;
        forward_sequence(op, task / groups, {gdn::key_head(op, first), first, heads}, blocks);
      });
}

}  // namespace hops::cpu
