// The mixture-of-experts family's float64 oracle: route, dispatch, the
// grouped SwiGLU expert MLP, combine and their backwards, in plain loops in
// the order docs/OPS.md (Mixture of experts) writes the math.
#include "moe_reference.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <span>
#include <string>
#include <utility>

#include "common.hpp"

namespace hops::ref {

using namespace detail;  // NOLINT(google-build-using-namespace): the shared helpers

// ---- SlotTable ------------------------------------------------------------------

SlotTable::SlotTable(int64_t tokens, int64_t slots, int64_t fill) : T(tokens), k(slots) {
  require(T >= 0 && k >= 0, "a slot table needs T, k >= 0");
  data.assign(static_cast<size_t>(T * k), fill);
}

SlotTable SlotTable::from_rows(const std::vector<std::vector<int64_t>>& rows, int64_t k) {
  SlotTable table(static_cast<int64_t>(rows.size()), k);
  for (int64_t t = 0; t < table.T; ++t) {
    require(static_cast<int64_t>(rows[t].size()) == k,
            "slot table row " + std::to_string(t) + " has " + std::to_string(rows[t].size()) +
                " entries, expected k = " + std::to_string(k));
    for (int64_t j = 0; j < k; ++j) table.at(t, j) = rows[t][j];
  }
  return table;
}

size_t SlotTable::offset(int64_t t, int64_t j) const {
  if (t < 0 || t >= T || j < 0 || j >= k) {
    require(false, "slot (" + std::to_string(t) + ", " + std::to_string(j) +
                       ") outside a table of [" + std::to_string(T) + "," + std::to_string(k) +
                       "]");
  }
  return static_cast<size_t>(t * k + j);
}

int64_t& SlotTable::at(int64_t t, int64_t j) { return data[offset(t, j)]; }

int64_t SlotTable::at(int64_t t, int64_t j) const { return data[offset(t, j)]; }

namespace {

// Row i of a row-major array [N, width] (rank 2), or row (e, i) of one
// [E, N, width] (rank 3): its `width` values. Bounds-checked.
// The messages are built only on failure: these run for every row the loops touch.
std::span<const double> row(const Array64& a, int64_t i) {
  if (a.shape.size() != 2 || i < 0 || i >= a.dim(0)) {
    require(false, "row " + std::to_string(i) + " of an array of shape " + shape_string(a.shape));
  }
  return {a.data.data() + i * a.dim(1), static_cast<size_t>(a.dim(1))};
}

std::span<double> row(Array64& a, int64_t i) {
  const std::span<const double> r = row(std::as_const(a), i);
  return {const_cast<double*>(r.data()), r.size()};
}

std::span<const double> row(const Array64& a, int64_t e, int64_t i) {
  if (a.shape.size() != 3 || e < 0 || e >= a.dim(0) || i < 0 || i >= a.dim(1)) {
    require(false, "row (" + std::to_string(e) + ", " + std::to_string(i) +
                       ") of an array of shape " + shape_string(a.shape));
  }
  return {a.data.data() + (e * a.dim(1) + i) * a.dim(2), static_cast<size_t>(a.dim(2))};
}

std::span<double> row(Array64& a, int64_t e, int64_t i) {
  const std::span<const double> r = row(std::as_const(a), e, i);
  return {const_cast<double*>(r.data()), r.size()};
}

double dot(std::span<const double> a, std::span<const double> b) {
  double sum = 0.0;
  for (size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

// Every entry of `map` in [-1, limit); with `distinct`, no entry >= 0 twice.
void check_map(const SlotTable& map, int64_t limit, const std::string& name, bool distinct) {
  require(static_cast<int64_t>(map.data.size()) == map.T * map.k,
          name + " holds " + std::to_string(map.data.size()) + " entries, expected T*k");
  std::set<int64_t> used;
  for (int64_t t = 0; t < map.T; ++t) {
    for (int64_t j = 0; j < map.k; ++j) {
      const int64_t value = map.at(t, j);
      if (value < -1 || value >= limit) {
        require(false, name + "[" + std::to_string(t) + "][" + std::to_string(j) +
                           "] = " + std::to_string(value) + " is outside [-1, " +
                           std::to_string(limit) + ")");
      }
      if (distinct && value >= 0 && !used.insert(value).second) {
        require(false, name + " names row " + std::to_string(value) + " twice");
      }
    }
  }
}

// The first row of each expert, sum(counts[<e]); counts are >= 0 and sum to
// at most R.
std::vector<int64_t> row_offsets(const std::vector<int64_t>& counts, int64_t R) {
  std::vector<int64_t> offsets;
  int64_t total = 0;
  for (size_t e = 0; e < counts.size(); ++e) {
    if (counts[e] < 0) {
      require(false,
              "counts[" + std::to_string(e) + "] = " + std::to_string(counts[e]) + " is negative");
    }
    offsets.push_back(total);
    total += counts[e];
    if (total > R) require(false, "counts sum to more than the " + std::to_string(R) + " rows");
  }
  return offsets;
}

// The sizes of an expert MLP call, checked once.
struct ExpertDims {
  int64_t R, Hd, E, I;
};

ExpertDims expert_dims(const Array64& rows, const std::vector<int64_t>& counts,
                       const Array64& gate_up_proj, const Array64& down_proj) {
  require_rank(rows, 2, "rows");
  require_rank(gate_up_proj, 3, "gate_up_proj");
  ExpertDims d{rows.dim(0), rows.dim(1), static_cast<int64_t>(counts.size()), 0};
  require(gate_up_proj.dim(1) % 2 == 0, "gate_up_proj dim 1 must be 2I (gate rows, then up rows)");
  d.I = gate_up_proj.dim(1) / 2;
  require_shape(gate_up_proj, {d.E, 2 * d.I, d.Hd}, "gate_up_proj");
  require_shape(down_proj, {d.E, d.Hd, d.I}, "down_proj");
  return d;
}

// One row's forward through expert e: g = r Wg^T, u = r Wu^T, h = silu(g) * u.
struct Hidden {
  std::vector<double> g, u, h;
};

Hidden hidden(std::span<const double> r, const Array64& gate_up_proj, int64_t e, int64_t I) {
  Hidden z{std::vector<double>(I), std::vector<double>(I), std::vector<double>(I)};
  for (int64_t i = 0; i < I; ++i) {
    z.g[i] = dot(r, row(gate_up_proj, e, i));
    z.u[i] = dot(r, row(gate_up_proj, e, I + i));
    z.h[i] = silu(z.g[i]) * z.u[i];
  }
  return z;
}

}  // namespace

// ---- moe_route ------------------------------------------------------------------

MoeRouteResult moe_route(const Array64& logits, int64_t k, bool normalize, MoeScoring scoring) {
  require_rank(logits, 2, "logits");
  const int64_t T = logits.dim(0), E = logits.dim(1);
  require(k >= 0 && k <= E, "k = " + std::to_string(k) + " is outside 0..E = " + std::to_string(E));
  require(scoring == MoeScoring::softmax || scoring == MoeScoring::sigmoid,
          "scoring must be softmax (0) or sigmoid (1)");
  MoeRouteResult result{Array64({T, k}), SlotTable(T, k)};
  for (int64_t t = 0; t < T; ++t) {
    const std::span<const double> l = row(logits, t);

    // p = softmax(l) over the experts (around the largest logit), or sigmoid(l).
    std::vector<double> p(static_cast<size_t>(E));
    if (scoring == MoeScoring::softmax) {
      double largest = -std::numeric_limits<double>::infinity(), sum = 0.0;
      for (double value : l) largest = std::max(largest, value);
      for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(l[e] - largest);
      for (double& value : p) value /= sum;
    } else {
      for (int64_t e = 0; e < E; ++e) p[e] = sigmoid(l[e]);
    }

    // The k best, best first: each pick is the largest p not yet taken, the
    // lowest id among equals (a strict > over ascending ids); a NaN p (from
    // infinite logits) counts as -inf.
    auto rank = [&](int64_t e) {
      return std::isnan(p[e]) ? -std::numeric_limits<double>::infinity() : p[e];
    };
    std::vector<bool> taken(static_cast<size_t>(E), false);
    double picked_sum = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        if (!taken[e] && (best < 0 || rank(e) > rank(best))) best = e;
      }
      taken[best] = true;
      result.topk_ids.at(t, j) = best;
      result.topk_weights.at({t, j}) = p[best];
      picked_sum += p[best];
    }
    if (normalize) {
      for (int64_t j = 0; j < k; ++j) result.topk_weights.at({t, j}) /= picked_sum;
    }
  }
  return result;
}

// ---- moe_dispatch ---------------------------------------------------------------

MoeDispatchResult moe_dispatch(const Array64& x, const SlotTable& topk_ids, int64_t num_experts) {
  require_rank(x, 2, "x");
  const int64_t T = x.dim(0), Hd = x.dim(1), k = topk_ids.k, E = num_experts;
  require(topk_ids.T == T,
          "topk_ids has " + std::to_string(topk_ids.T) + " tokens, x has T = " + std::to_string(T));
  require(E >= 0, "num_experts must be >= 0");
  check_map(topk_ids, E, "topk_ids", false);
  MoeDispatchResult result{Array64({T * k, Hd}), std::vector<int64_t>(E, 0), SlotTable(T, k)};

  // counts[e] = the slots with id e; expert e's rows start at sum(counts[<e]).
  for (int64_t id : topk_ids.data) {
    if (id >= 0) ++result.counts[id];
  }
  std::vector<int64_t> next = row_offsets(result.counts, T * k);

  // Slots in (t, j) order: each takes its expert's next row, a copy of x[t].
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = topk_ids.at(t, j);
      if (e < 0) continue;  // dropped: row_map stays -1
      const int64_t r = next[e]++;
      result.row_map.at(t, j) = r;
      const std::span<const double> source = row(x, t);
      std::copy(source.begin(), source.end(), row(result.rows, r).begin());
    }
  }
  return result;  // the rows past the kept ones are still zero
}

// ---- moe_expert_mlp -------------------------------------------------------------

Array64 moe_expert_mlp(const Array64& rows, const std::vector<int64_t>& counts,
                       const Array64& gate_up_proj, const Array64& down_proj) {
  const ExpertDims d = expert_dims(rows, counts, gate_up_proj, down_proj);
  const std::vector<int64_t> offsets = row_offsets(counts, d.R);
  Array64 out({d.R, d.Hd});  // zero past sum(counts)
  for (int64_t e = 0; e < d.E; ++e) {
    for (int64_t r = offsets[e]; r < offsets[e] + counts[e]; ++r) {
      // h = silu(r Wg^T) * (r Wu^T); out = h Wd^T.
      const Hidden z = hidden(row(rows, r), gate_up_proj, e, d.I);
      const std::span<double> y = row(out, r);
      for (int64_t x = 0; x < d.Hd; ++x) y[x] = dot(z.h, row(down_proj, e, x));
    }
  }
  return out;
}

// ---- moe_combine ----------------------------------------------------------------

Array64 moe_combine(const Array64& rows, const SlotTable& row_map, const Array64& topk_weights) {
  require_rank(rows, 2, "rows");
  const int64_t R = rows.dim(0), Hd = rows.dim(1), T = row_map.T, k = row_map.k;
  check_map(row_map, R, "row_map", false);
  require_shape(topk_weights, {T, k}, "topk_weights");
  Array64 y({T, Hd});
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {  // slot order
      const int64_t r = row_map.at(t, j);
      if (r < 0) continue;  // dropped
      const double w = topk_weights.at({t, j});
      const std::span<const double> source = row(rows, r);
      const std::span<double> target = row(y, t);
      for (int64_t x = 0; x < Hd; ++x) target[x] += w * source[x];
    }
  }
  return y;
}

// ---- moe_dispatch_bwd -----------------------------------------------------------

Array64 moe_dispatch_bwd(const Array64& d_rows, const SlotTable& row_map) {
  require_rank(d_rows, 2, "d_rows");
  const int64_t R = d_rows.dim(0), Hd = d_rows.dim(1), T = row_map.T, k = row_map.k;
  check_map(row_map, R, "row_map", false);
  Array64 dx({T, Hd});
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = row_map.at(t, j);
      if (r < 0) continue;
      const std::span<const double> source = row(d_rows, r);
      const std::span<double> target = row(dx, t);
      for (int64_t x = 0; x < Hd; ++x) target[x] += source[x];
    }
  }
  return dx;
}

// ---- moe_expert_mlp_bwd ---------------------------------------------------------

MoeExpertMlpGrads moe_expert_mlp_bwd(const Array64& rows, const std::vector<int64_t>& counts,
                                     const Array64& gate_up_proj, const Array64& down_proj,
                                     const Array64& d_out) {
  const ExpertDims d = expert_dims(rows, counts, gate_up_proj, down_proj);
  require_shape(d_out, rows.shape, "d_out");
  const std::vector<int64_t> offsets = row_offsets(counts, d.R);
  MoeExpertMlpGrads grads{Array64(rows.shape), Array64(gate_up_proj.shape),
                          Array64(down_proj.shape)};
  for (int64_t e = 0; e < d.E; ++e) {
    for (int64_t r = offsets[e]; r < offsets[e] + counts[e]; ++r) {  // row order
      const std::span<const double> x = row(rows, r), dout = row(d_out, r);
      const Hidden z = hidden(x, gate_up_proj, e, d.I);
      // dh = d_out Wd; d_down[e] += d_out^T h.
      std::vector<double> dh(static_cast<size_t>(d.I), 0.0);
      for (int64_t o = 0; o < d.Hd; ++o) {
        const std::span<const double> wd = row(down_proj, e, o);
        const std::span<double> d_wd = row(grads.d_down_proj, e, o);
        for (int64_t i = 0; i < d.I; ++i) {
          dh[i] += dout[o] * wd[i];
          d_wd[i] += dout[o] * z.h[i];
        }
      }
      for (int64_t i = 0; i < d.I; ++i) {
        // du = dh * silu(g); dg = dh * u * silu'(g).
        const double du = dh[i] * silu(z.g[i]);
        const double dg = dh[i] * z.u[i] * silu_derivative(z.g[i]);
        // d_rows += dg Wg + du Wu; d_gate_up[e] += [dg^T r ; du^T r].
        const std::span<const double> wg = row(gate_up_proj, e, i);
        const std::span<const double> wu = row(gate_up_proj, e, d.I + i);
        const std::span<double> dx = row(grads.d_rows, r);
        const std::span<double> d_wg = row(grads.d_gate_up_proj, e, i);
        const std::span<double> d_wu = row(grads.d_gate_up_proj, e, d.I + i);
        for (int64_t h = 0; h < d.Hd; ++h) {
          dx[h] += dg * wg[h] + du * wu[h];
          d_wg[h] += dg * x[h];
          d_wu[h] += du * x[h];
        }
      }
    }
  }
  return grads;
}

// ---- moe_combine_bwd ------------------------------------------------------------

MoeCombineGrads moe_combine_bwd(const Array64& rows, const SlotTable& row_map,
                                const Array64& topk_weights, const Array64& dy) {
  require_rank(rows, 2, "rows");
  const int64_t R = rows.dim(0), Hd = rows.dim(1), T = row_map.T, k = row_map.k;
  check_map(row_map, R, "row_map", true);  // one slot per row: d_rows is a copy, not a sum
  require_shape(topk_weights, {T, k}, "topk_weights");
  require_shape(dy, {T, Hd}, "dy");
  MoeCombineGrads grads{Array64(rows.shape), Array64({T, k})};  // zero where no slot reads
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = row_map.at(t, j);
      if (r < 0) continue;  // dropped: d_w = 0
      // d_rows[r] = w dy[t]; d_w = <dy[t], rows[r]>.
      const double w = topk_weights.at({t, j});
      const std::span<const double> dy_t = row(dy, t);
      const std::span<double> target = row(grads.d_rows, r);
      for (int64_t x = 0; x < Hd; ++x) target[x] = w * dy_t[x];
      grads.d_topk_weights.at({t, j}) = dot(row(dy, t), row(rows, r));
    }
  }
  return grads;
}

}  // namespace hops::ref
