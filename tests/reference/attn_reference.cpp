// The attention family's float64 oracle: prefill, its backward, paged decode
// and the cache write, in plain loops (see reference.cpp).
#include "attn_reference.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string>

#include "common.hpp"

namespace hops::ref {

using namespace detail;  // NOLINT(google-build-using-namespace): the shared helpers

namespace {

constexpr double kNoKey = -std::numeric_limits<double>::infinity();  // lse of a row that sees none

// The sizes of one prefill call, checked once.
struct AttnDims {
  int64_t B, Tq, Tk, Hq, Hkv, D;
  int64_t G;  // query heads per key-value head
  double scale;
};

AttnDims attn_dims(const Array64& q, const Array64& k, const Array64& v, const Array64* gate,
                   double scale) {
  require_rank(q, 4, "q");
  require_rank(k, 4, "k");
  AttnDims d{};
  d.B = q.dim(0), d.Tq = q.dim(1), d.Hq = q.dim(2), d.D = q.dim(3);
  d.Tk = k.dim(1), d.Hkv = k.dim(2);
  require_shape(k, {d.B, d.Tk, d.Hkv, d.D}, "k");
  require_shape(v, k.shape, "v");
  if (gate != nullptr) require_shape(*gate, q.shape, "gate");
  require(d.Hkv > 0 && d.Hq % d.Hkv == 0, "Hq (" + std::to_string(d.Hq) +
                                              ") must be a multiple of Hkv (" +
                                              std::to_string(d.Hkv) + ")");
  require(d.D > 0, "D must be positive");
  require(scale >= 0, "scale must be >= 0 (0 means D^-1/2)");
  d.G = d.Hq / d.Hkv;
  d.scale = scale != 0.0 ? scale : 1.0 / std::sqrt(static_cast<double>(d.D));
  return d;
}

// One sequence: its batch row, its queries and its keys.
struct Span {
  int64_t batch, q_begin, q_end, k_begin, k_end;
  int64_t Lq() const { return q_end - q_begin; }
  int64_t Lk() const { return k_end - k_begin; }
};

std::vector<Span> spans(const AttnDims& d, const std::vector<int64_t>* cu_seqlens_q,
                        const std::vector<int64_t>* cu_seqlens_k) {
  require((cu_seqlens_q == nullptr) == (cu_seqlens_k == nullptr),
          "cu_seqlens_q and cu_seqlens_k come together");
  const std::vector<Sequence> queries = sequences(d.B, d.Tq, cu_seqlens_q);
  const std::vector<Sequence> keys = sequences(d.B, d.Tk, cu_seqlens_k);
  require(queries.size() == keys.size(), "cu_seqlens_q and cu_seqlens_k differ in length");
  std::vector<Span> result;
  for (size_t n = 0; n < queries.size(); ++n) {
    result.push_back(
        {queries[n].batch, queries[n].begin, queries[n].end, keys[n].begin, keys[n].end});
  }
  return result;
}

// The last local key query i sees (negative: none): i + Lk - Lq when causal
// (bottom-right alignment), Lk - 1 otherwise.
int64_t last_visible_key(int64_t i, int64_t Lq, int64_t Lk, bool causal) {
  return causal ? i + Lk - Lq : Lk - 1;
}

// One row of D values per token: the queries, keys or values of one head
// of a sequence, gathered once so that the loops below read plain vectors.
using Rows = std::vector<std::vector<double>>;

Rows zero_rows(int64_t count, int64_t D) {
  return Rows(static_cast<size_t>(count), std::vector<double>(static_cast<size_t>(D), 0.0));
}

// array[b, begin..end, head, :].
Rows gather(const Array64& array, int64_t b, int64_t begin, int64_t end, int64_t head) {
  Rows rows = zero_rows(end - begin, array.dim(3));
  for (int64_t t = begin; t < end; ++t) {
    for (int64_t i = 0; i < array.dim(3); ++i) rows[t - begin][i] = array.at({b, t, head, i});
  }
  return rows;
}

// array[b, begin.., head, :] += rows.
void scatter_add(const Rows& rows, Array64& array, int64_t b, int64_t begin, int64_t head) {
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t i = 0; i < rows[r].size(); ++i) {
      array.at({b, begin + static_cast<int64_t>(r), head, static_cast<int64_t>(i)}) += rows[r][i];
    }
  }
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double sum = 0.0;
  for (size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

// ln sum_j exp(s_j), taken around the largest score; -inf for no scores.
double log_sum_exp(const std::vector<double>& s) {
  if (s.empty()) return kNoKey;
  const double largest = *std::max_element(s.begin(), s.end());
  double sum = 0.0;
  for (double s_j : s) sum += std::exp(s_j - largest);
  return largest + std::log(sum);
}

}  // namespace

// ---- attn_prefill ---------------------------------------------------------------

AttnResult attn_prefill(const Array64& q, const Array64& k, const Array64& v, const Array64* gate,
                        const std::vector<int64_t>* cu_seqlens_q,
                        const std::vector<int64_t>* cu_seqlens_k, double scale, bool causal) {
  const AttnDims d = attn_dims(q, k, v, gate, scale);
  AttnResult result{Array64({d.B, d.Tq, d.Hq, d.D}), Array64({d.B, d.Hq, d.Tq})};
  for (const Span& span : spans(d, cu_seqlens_q, cu_seqlens_k)) {
    const int64_t b = span.batch;
    for (int64_t h = 0; h < d.Hq; ++h) {
      const int64_t kv = h / d.G;  // the key-value head of this query head's group
      const Rows queries = gather(q, b, span.q_begin, span.q_end, h);
      const Rows keys = gather(k, b, span.k_begin, span.k_end, kv);
      const Rows values = gather(v, b, span.k_begin, span.k_end, kv);
      for (int64_t i = 0; i < span.Lq(); ++i) {
        const int64_t t = span.q_begin + i;
        const int64_t last = last_visible_key(i, span.Lq(), span.Lk(), causal);

        // s_j = scale <q_i, k_j> over the visible keys; lse = ln sum_j exp(s_j).
        std::vector<double> s(static_cast<size_t>(std::max<int64_t>(last + 1, 0)));
        for (int64_t j = 0; j <= last; ++j) s[j] = d.scale * dot(queries[i], keys[j]);
        const double lse = log_sum_exp(s);
        result.lse.at({b, h, t}) = lse;

        // o = sum_j p_j v_j with p_j = exp(s_j - lse) (0 without keys), then o * sigmoid(gate).
        std::vector<double> o(static_cast<size_t>(d.D), 0.0);
        for (int64_t j = 0; j <= last; ++j) {
          const double p = std::exp(s[j] - lse);
          for (int64_t x = 0; x < d.D; ++x) o[x] += p * values[j][x];
        }
        for (int64_t x = 0; x < d.D; ++x) {
          if (gate != nullptr) o[x] *= sigmoid(gate->at({b, t, h, x}));
          result.o.at({b, t, h, x}) = o[x];
        }
      }
    }
  }
  return result;
}

// ---- attn_prefill_bwd -----------------------------------------------------------

AttnGrads attn_prefill_bwd(const Array64& q, const Array64& k, const Array64& v,
                           const Array64* gate, const Array64& o, const Array64& lse,
                           const Array64& d_o, const std::vector<int64_t>* cu_seqlens_q,
                           const std::vector<int64_t>* cu_seqlens_k, double scale, bool causal) {
  const AttnDims d = attn_dims(q, k, v, gate, scale);
  require_shape(o, q.shape, "o");
  require_shape(d_o, q.shape, "d_o");
  require_shape(lse, {d.B, d.Hq, d.Tq}, "lse");
  AttnGrads grads{Array64(q.shape), Array64(k.shape), Array64(v.shape),
                  gate != nullptr ? Array64(q.shape) : Array64()};
  for (const Span& span : spans(d, cu_seqlens_q, cu_seqlens_k)) {
    const int64_t b = span.batch;
    for (int64_t h = 0; h < d.Hq; ++h) {
      const int64_t kv = h / d.G;
      const Rows queries = gather(q, b, span.q_begin, span.q_end, h);
      const Rows keys = gather(k, b, span.k_begin, span.k_end, kv);
      const Rows values = gather(v, b, span.k_begin, span.k_end, kv);
      // This head's share of the gradients; dk and dv add up over its group below.
      Rows dq = zero_rows(span.Lq(), d.D), dk = zero_rows(span.Lk(), d.D),
           dv = zero_rows(span.Lk(), d.D);
      for (int64_t i = 0; i < span.Lq(); ++i) {
        const int64_t t = span.q_begin + i;

        // g = sigmoid(gate) (1 without); Delta = <do, o> with the gated o;
        // dO = do * g, the gradient of the ungated output;
        // dgate = do * o * (1 - g).
        std::vector<double> dO(d.D);
        double delta = 0.0;
        for (int64_t x = 0; x < d.D; ++x) {
          const double g = gate != nullptr ? sigmoid(gate->at({b, t, h, x})) : 1.0;
          const double do_x = d_o.at({b, t, h, x}), o_x = o.at({b, t, h, x});
          delta += do_x * o_x;
          dO[x] = do_x * g;
          if (gate != nullptr) grads.dgate.at({b, t, h, x}) = do_x * o_x * (1.0 - g);
        }
        const double lse_i = lse.at({b, h, t});
        if (lse_i == kNoKey) continue;  // the row saw no key: p = 0, nothing flows

        const int64_t last = last_visible_key(i, span.Lq(), span.Lk(), causal);
        for (int64_t j = 0; j <= last; ++j) {
          // p = exp(s_ij - lse_i); dv_j += p dO; dp = <dO, v_j>; ds = p (dp - Delta).
          const double p = std::exp(d.scale * dot(queries[i], keys[j]) - lse_i);
          for (int64_t x = 0; x < d.D; ++x) dv[j][x] += p * dO[x];
          const double ds = p * (dot(dO, values[j]) - delta);
          // dq_i += scale ds k_j; dk_j += scale ds q_i.
          for (int64_t x = 0; x < d.D; ++x) {
            dq[i][x] += d.scale * ds * keys[j][x];
            dk[j][x] += d.scale * ds * queries[i][x];
          }
        }
      }
      scatter_add(dq, grads.dq, b, span.q_begin, h);
      scatter_add(dk, grads.dk, b, span.k_begin, kv);
      scatter_add(dv, grads.dv, b, span.k_begin, kv);
    }
  }
  return grads;
}

// ---- attn_decode ----------------------------------------------------------------

Array64 attn_decode(const Array64& q, const Array64& k_cache, const Array64& v_cache,
                    const std::vector<std::vector<int64_t>>& block_table,
                    const std::vector<int64_t>& seq_lens, double scale) {
  require_rank(q, 4, "q");
  require_rank(k_cache, 4, "k_cache");
  const int64_t N = q.dim(0), L = q.dim(1), Hq = q.dim(2), D = q.dim(3);
  const int64_t num_blocks = k_cache.dim(0), block_size = k_cache.dim(1), Hkv = k_cache.dim(2);
  require_shape(k_cache, {num_blocks, block_size, Hkv, D}, "k_cache");
  require_shape(v_cache, k_cache.shape, "v_cache");
  require(Hkv > 0 && Hq % Hkv == 0, "Hq (" + std::to_string(Hq) + ") must be a multiple of Hkv (" +
                                        std::to_string(Hkv) + ")");
  require(D > 0 && block_size > 0, "D and block_size must be positive");
  require(scale >= 0, "scale must be >= 0 (0 means D^-1/2)");
  require(static_cast<int64_t>(block_table.size()) == N, "block_table needs N rows");
  require(static_cast<int64_t>(seq_lens.size()) == N, "seq_lens needs N entries");
  const int64_t max_blocks = N > 0 ? static_cast<int64_t>(block_table[0].size()) : 0;
  const int64_t G = Hq / Hkv;
  const double resolved = scale != 0.0 ? scale : 1.0 / std::sqrt(static_cast<double>(D));

  Array64 o({N, L, Hq, D});
  for (int64_t n = 0; n < N; ++n) {
    require(static_cast<int64_t>(block_table[n].size()) == max_blocks,
            "block_table rows differ in length");
    const int64_t length = seq_lens[n];
    require(
        length >= 0 && length <= max_blocks * block_size,
        "seq_lens[" + std::to_string(n) + "] = " + std::to_string(length) +
            " is outside 0..max_blocks*block_size = " + std::to_string(max_blocks * block_size));
    // Token p of the sequence is row p % block_size of its block.
    for (int64_t p = 0; p < length; p += block_size) {
      const int64_t block = block_table[n][p / block_size];
      require(block >= 0 && block < num_blocks,
              "block_table[" + std::to_string(n) + "][" + std::to_string(p / block_size) + "] = " +
                  std::to_string(block) + " is outside [0, " + std::to_string(num_blocks) + ")");
    }
    for (int64_t kv = 0; kv < Hkv; ++kv) {
      Rows keys = zero_rows(length, D), values = zero_rows(length, D);
      for (int64_t p = 0; p < length; ++p) {
        const int64_t block = block_table[n][p / block_size], row = p % block_size;
        for (int64_t x = 0; x < D; ++x) {
          keys[p][x] = k_cache.at({block, row, kv, x});
          values[p][x] = v_cache.at({block, row, kv, x});
        }
      }
      for (int64_t h = kv * G; h < (kv + 1) * G; ++h) {  // the query heads of this kv head
        const Rows queries = gather(q, n, 0, L, h);
        for (int64_t l = 0; l < L; ++l) {
          const int64_t position = length - L + l;  // sees the tokens 0..position
          std::vector<double> s(static_cast<size_t>(std::max<int64_t>(position + 1, 0)));
          for (int64_t p = 0; p <= position; ++p) s[p] = resolved * dot(queries[l], keys[p]);
          const double lse = log_sum_exp(s);
          std::vector<double> out(static_cast<size_t>(D), 0.0);
          for (int64_t p = 0; p <= position; ++p) {
            const double weight = std::exp(s[p] - lse);
            for (int64_t x = 0; x < D; ++x) out[x] += weight * values[p][x];
          }
          for (int64_t x = 0; x < D; ++x) o.at({n, l, h, x}) = out[x];
        }
      }
    }
  }
  return o;
}

// ---- kv_cache_write -------------------------------------------------------------

void kv_cache_write(const Array64& k, const Array64& v, Array64& k_cache, Array64& v_cache,
                    const std::vector<int64_t>& slot_mapping) {
  require_rank(k, 3, "k");
  require_rank(k_cache, 4, "k_cache");
  const int64_t T = k.dim(0), Hkv = k.dim(1), D = k.dim(2);
  const int64_t num_blocks = k_cache.dim(0), block_size = k_cache.dim(1);
  require_shape(v, k.shape, "v");
  require_shape(k_cache, {num_blocks, block_size, Hkv, D}, "k_cache");
  require_shape(v_cache, k_cache.shape, "v_cache");
  require(static_cast<int64_t>(slot_mapping.size()) == T, "slot_mapping needs T entries");
  // Checked whole before anything is written: a bad call changes nothing.
  std::set<int64_t> used;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = slot_mapping[t];
    require(slot >= -1 && slot < num_blocks * block_size,
            "slot_mapping[" + std::to_string(t) + "] = " + std::to_string(slot) +
                " is outside [-1, " + std::to_string(num_blocks * block_size) + ")");
    if (slot >= 0) {
      require(used.insert(slot).second, "slot " + std::to_string(slot) + " is written twice");
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = slot_mapping[t];
    if (slot < 0) continue;  // -1: skipped
    const int64_t block = slot / block_size, row = slot % block_size;
    for (int64_t h = 0; h < Hkv; ++h) {
      for (int64_t x = 0; x < D; ++x) {
        k_cache.at({block, row, h, x}) = k.at({t, h, x});
        v_cache.at({block, row, h, x}) = v.at({t, h, x});
      }
    }
  }
}

}  // namespace hops::ref
