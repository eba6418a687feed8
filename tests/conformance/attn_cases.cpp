// attn_prefill, attn_prefill_bwd, attn_decode and kv_cache_write against
// ref::attn_prefill, ref::attn_prefill_bwd, ref::attn_decode and
// ref::kv_cache_write.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "attn_calls.hpp"
#include "attn_reference.hpp"
#include "cases.hpp"
#include "invocation.hpp"

namespace hops::conformance {

namespace {

enum class Layout {
  contiguous,
  packed,   // inputs as views of fused projections (see each op's tensors)
  padded,   // every tensor strided with gaps, outputs and index tensors too
  compact,  // contiguous, passed with strides = NULL
  // the float tensors stored with their last two dims swapped ([.., D, H]),
  // so that the channels have a step of H
  transposed,
};

std::string_view layout_name(Layout layout) {
  switch (layout) {
    case Layout::contiguous:
      return "";
    case Layout::packed:
      return " packed";
    case Layout::padded:
      return " padded";
    case Layout::compact:
      return " strides=NULL";
    case Layout::transposed:
      return " transposed";
  }
  return "";
}

Shape pad_for(Layout layout, size_t rank) {
  return layout == Layout::padded ? gaps(rank) : Shape{};
}

// The last two dims swapped: Tensor::permuted's and permute()'s order.
std::vector<int> swap_last2(size_t rank) {
  std::vector<int> perm(rank);
  for (size_t d = 0; d < rank; ++d) perm[d] = static_cast<int>(d);
  std::swap(perm[rank - 1], perm[rank - 2]);
  return perm;
}

// An input (or in-out) tensor holding `values` as the layout stores it
// (packed inputs are built by each op); `values` is then what it holds.
Tensor input_tensor(Device& device, DType dtype, Array64& values, Layout layout) {
  if (layout != Layout::transposed) {
    return Tensor::input(device, dtype, values, pad_for(layout, values.shape.size()));
  }
  const std::vector<int> perm = swap_last2(values.shape.size());
  Array64 stored = permute(values, perm);
  const Tensor t = Tensor::input(device, dtype, stored);
  values = permute(stored, perm);
  return t.permuted(perm);
}

// An output of logical shape `shape` as the layout stores it.
Tensor output_tensor(Device& device, DType dtype, const Shape& shape, Layout layout) {
  if (layout != Layout::transposed)
    return Tensor::padded(device, dtype, shape, pad_for(layout, shape.size()));
  const std::vector<int> perm = swap_last2(shape.size());
  Shape stored = shape;
  std::swap(stored[shape.size() - 1], stored[shape.size() - 2]);
  return Tensor::empty(device, dtype, stored).permuted(perm);
}

// A random permutation of 0..count-1 (Fisher-Yates on the case's Random).
std::vector<int64_t> shuffled(Random& random, int64_t count) {
  std::vector<int64_t> ids(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) ids[i] = i;
  for (int64_t i = count - 1; i > 0; --i) {
    const auto j = std::min(static_cast<int64_t>(random.uniform(0, static_cast<double>(i + 1))), i);
    std::swap(ids[i], ids[j]);
  }
  return ids;
}

// ---- attn_prefill and attn_prefill_bwd ----------------------------------------------

struct PrefillCase {
  int64_t B, Tq, Tk, Hq, Hkv, D;
  std::vector<int64_t> cu_q = {}, cu_k = {};  // empty: dense
  bool causal = true, gate = false, lse = true;
  bool dgate = true;  // attn_prefill_bwd: asks for dgate when there is a gate
  double scale = 0;
  // packed: q and gate interleaved per head in [B,Tq,Hq,2D] (Qwen3.5's
  // q_proj), k and v side by side in [B,Tk,2*Hkv*D].
  Layout layout = Layout::contiguous;
  DType index_dtype = DType::i32;
  bool half = false;   // also run for f16 and bf16
  bool heavy = false;  // left out by --quick

  const std::vector<int64_t>* cu(const std::vector<int64_t>& offsets) const {
    return offsets.empty() ? nullptr : &offsets;
  }
};

std::string case_name(std::string_view op, DType dtype, const PrefillCase& c) {
  std::string name = fmt::format("{} {} B={} Tq={} Tk={} Hq={} Hkv={} D={}", op, name_of(dtype),
                                 c.B, c.Tq, c.Tk, c.Hq, c.Hkv, c.D);
  if (!c.cu_q.empty()) {
    name += index_arg("cu_seqlens_q", c.index_dtype, c.cu_q);
    name += index_arg("cu_seqlens_k", c.index_dtype, c.cu_k);
  }
  name += c.causal ? " causal" : " non-causal";
  if (c.gate) name += op == "attn_prefill_bwd" && !c.dgate ? " gate(no dgate)" : " gate";
  if (op == "attn_prefill" && !c.lse) name += " no_lse";
  if (c.scale != 0) name += fmt::format(" scale={}", c.scale);
  return name + std::string(layout_name(c.layout));
}

// The inputs of a case as tensors, and as the rounded values the reference sees.
struct PrefillInputs {
  Array64 q, k, v, gate;
  Tensor tq, tk, tv, tgate;
};

PrefillInputs make_inputs(const Context& ctx, Random& random, DType dtype, const PrefillCase& c) {
  PrefillInputs in;
  // q wider than k: scores of about unit spread whatever D, so that the
  // softmax weights differ (a wrong mask or key shows).
  in.q = random.uniform({c.B, c.Tq, c.Hq, c.D}, -3, 3);
  in.k = random.uniform({c.B, c.Tk, c.Hkv, c.D}, -1, 1);
  in.v = random.uniform({c.B, c.Tk, c.Hkv, c.D}, -1, 1);
  in.gate = random.uniform({c.B, c.Tq, c.Hq, c.D}, -3, 3);
  if (c.layout != Layout::packed) {
    in.tq = input_tensor(ctx.device, dtype, in.q, c.layout);
    in.tk = input_tensor(ctx.device, dtype, in.k, c.layout);
    in.tv = input_tensor(ctx.device, dtype, in.v, c.layout);
    if (c.gate) in.tgate = input_tensor(ctx.device, dtype, in.gate, c.layout);
    return in;
  }
  const Tensor q_gate = Tensor::empty(ctx.device, dtype, {c.B, c.Tq, c.Hq, 2 * c.D});
  const Shape q_strides = {c.Tq * c.Hq * 2 * c.D, c.Hq * 2 * c.D, 2 * c.D, 1};
  in.tq = assign(q_gate.view(0, in.q.shape, q_strides), in.q);
  if (c.gate) in.tgate = assign(q_gate.view(c.D, in.gate.shape, q_strides), in.gate);
  const int64_t width = 2 * c.Hkv * c.D;
  const Tensor kv = Tensor::empty(ctx.device, dtype, {c.B, c.Tk, width});
  const Shape kv_strides = {c.Tk * width, width, c.D, 1};
  in.tk = assign(kv.view(0, in.k.shape, kv_strides), in.k);
  in.tv = assign(kv.view(c.Hkv * c.D, in.v.shape, kv_strides), in.v);
  return in;
}

void bind_inputs(const Context& ctx, Invocation& call, const PrefillInputs& in,
                 const PrefillCase& c) {
  if (c.layout == Layout::compact) call.null_strides();
  call.tensor("q", in.tq).tensor("k", in.tk).tensor("v", in.tv).tensor("gate", in.tgate);
  if (!c.cu_q.empty()) {
    call.tensor("cu_seqlens_q", Tensor::indices(ctx.index_device(), c.index_dtype, c.cu_q));
    call.tensor("cu_seqlens_k", Tensor::indices(ctx.index_device(), c.index_dtype, c.cu_k));
  }
  call.f64("scale", c.scale).flag("causal", c.causal);
}

ref::AttnResult reference_forward(const PrefillInputs& in, const PrefillCase& c) {
  return ref::attn_prefill(in.q, in.k, in.v, c.gate ? &in.gate : nullptr, c.cu(c.cu_q),
                           c.cu(c.cu_k), c.scale, c.causal);
}

// lse is -inf exactly where a row sees no key; elsewhere within `tolerance`.
void expect_lse(const Context& ctx, Verdict& verdict, const Tensor& lse, const Array64& want,
                double tolerance) {
  constexpr double kNoKey = -std::numeric_limits<double>::infinity();
  Array64 got = lse.read(), finite = want;
  int64_t wrong = 0;
  for (size_t i = 0; i < got.data.size(); ++i) {
    if (want.data[i] != kNoKey) continue;
    wrong += got.data[i] != kNoKey;
    got.data[i] = finite.data[i] = 0;  // compared above
  }
  verdict.expect(wrong == 0, fmt::format("lse: {} rows that see no key are not -inf", wrong));
  verdict.expect_close("lse", Tensor::input(*ctx.host, DType::f32, got), finite, tolerance);
}

void prefill_case(const Context& ctx, const hops_op_desc& op, DType dtype, const PrefillCase& c,
                  bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const PrefillInputs in = make_inputs(ctx, random, dtype, c);
    Invocation call(ctx, op);
    bind_inputs(ctx, call, in, c);
    const Tensor o = output_tensor(ctx.device, dtype, {c.B, c.Tq, c.Hq, c.D}, c.layout);
    Tensor lse;
    if (c.lse) lse = output_tensor(ctx.device, DType::f32, {c.B, c.Hq, c.Tq}, c.layout);
    call.tensor("o", o).tensor("lse", lse);
    call.run(typed_too);

    const ref::AttnResult want = reference_forward(in, c);
    verdict.expect_close("o", o, want.o, tolerance(dtype));
    if (lse) expect_lse(ctx, verdict, lse, want.lse, tolerance(dtype));
    // threads.cpp's num_threads = 1 check on every dtype and shape here: its
    // call is f32, and bf16 takes other kernels (bf16 dot products where the
    // CPU has them).
    verdict.expect(call.same_bytes_on_one_thread(
                       "o",
                       [&] {
                         return output_tensor(ctx.device, dtype, {c.B, c.Tq, c.Hq, c.D}, c.layout);
                       }),
                   "o: the bytes with num_threads=1 differ from those with all threads");
  });
}

// The backward gets the reference forward's o (rounded to the dtype) and lse
// (rounded to f32), and the reference backward the same rounded values.
void prefill_bwd_case(const Context& ctx, const hops_op_desc& op, DType dtype, const PrefillCase& c,
                      bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const PrefillInputs in = make_inputs(ctx, random, dtype, c);
    ref::AttnResult forward = reference_forward(in, c);
    Array64 d_o = random.uniform(in.q.shape, -1, 1);
    Invocation call(ctx, op);
    bind_inputs(ctx, call, in, c);
    // packed: o, lse, do and the gradients contiguous.
    const Layout layout = c.layout == Layout::packed ? Layout::contiguous : c.layout;
    call.tensor("o", input_tensor(ctx.device, dtype, forward.o, layout));
    call.tensor("lse", input_tensor(ctx.device, DType::f32, forward.lse, layout));
    call.tensor("do", input_tensor(ctx.device, dtype, d_o, layout));
    const Tensor dq = output_tensor(ctx.device, dtype, in.q.shape, layout);
    const Tensor dk = output_tensor(ctx.device, dtype, in.k.shape, layout);
    const Tensor dv = output_tensor(ctx.device, dtype, in.v.shape, layout);
    Tensor dgate;
    if (c.gate && c.dgate) dgate = output_tensor(ctx.device, dtype, in.q.shape, layout);
    call.tensor("dq", dq).tensor("dk", dk).tensor("dv", dv).tensor("dgate", dgate);
    call.run(typed_too);

    const ref::AttnGrads want =
        ref::attn_prefill_bwd(in.q, in.k, in.v, c.gate ? &in.gate : nullptr, forward.o, forward.lse,
                              d_o, c.cu(c.cu_q), c.cu(c.cu_k), c.scale, c.causal);
    verdict.expect_close("dq", dq, want.dq, tolerance(dtype));
    verdict.expect_close("dk", dk, want.dk, tolerance(dtype));
    verdict.expect_close("dv", dv, want.dv, tolerance(dtype));
    if (dgate) verdict.expect_close("dgate", dgate, want.dgate, tolerance(dtype));
  });
}

// Lengths around the kernels' tiles (1, 17, 63, 65, 130), the Qwen3.5 head
// layouts (16/2 and 24/4 at D=256) and 3/1, keys longer and shorter than
// the queries. The float64 reference costs Hq x (query-key pairs) x D, so
// the long ones are few.
std::vector<PrefillCase> prefill_sweep() {
  using Cu = std::vector<int64_t>;
  // clang-format off
  return {
      {.B = 1, .Tq = 1, .Tk = 1, .Hq = 1, .Hkv = 1, .D = 64, .gate = true, .half = true},
      {.B = 2, .Tq = 17, .Tk = 17, .Hq = 3, .Hkv = 1, .D = 64, .gate = true, .half = true},
      {.B = 1, .Tq = 63, .Tk = 63, .Hq = 16, .Hkv = 2, .D = 64, .causal = false},
      {.B = 1, .Tq = 65, .Tk = 65, .Hq = 2, .Hkv = 2, .D = 128, .gate = true},
      {.B = 2, .Tq = 130, .Tk = 130, .Hq = 4, .Hkv = 2, .D = 64, .half = true},
      {.B = 1, .Tq = 130, .Tk = 130, .Hq = 3, .Hkv = 1, .D = 128, .causal = false, .scale = 0.3},
      // scale 1 at D=128: scores up to ~100, a softmax kept finite only by its running maximum.
      {.B = 1, .Tq = 65, .Tk = 80, .Hq = 4, .Hkv = 2, .D = 128, .gate = true, .scale = 1.0,
       .half = true},
      // Qwen3.5-35B-A3B and -27B full-attention layers.
      {.B = 1, .Tq = 65, .Tk = 65, .Hq = 16, .Hkv = 2, .D = 256, .gate = true, .half = true},
      {.B = 1, .Tq = 33, .Tk = 33, .Hq = 24, .Hkv = 4, .D = 256, .gate = true, .lse = false,
       .half = true},
      // Keys longer than queries (a cached prefix), and shorter (rows that see no key).
      {.B = 2, .Tq = 17, .Tk = 65, .Hq = 16, .Hkv = 2, .D = 64, .gate = true, .half = true},
      {.B = 1, .Tq = 5, .Tk = 33, .Hq = 24, .Hkv = 4, .D = 128, .causal = false},
      {.B = 1, .Tq = 20, .Tk = 7, .Hq = 3, .Hkv = 1, .D = 64, .gate = true, .half = true},
      {.B = 2, .Tq = 3, .Tk = 0, .Hq = 4, .Hkv = 2, .D = 64, .gate = true},
      {.B = 2, .Tq = 0, .Tk = 5, .Hq = 4, .Hkv = 2, .D = 64},
      // Varlen: keys without queries, length 1, equal lengths, an empty
      // sequence, a prefix; then queries without keys and Lk > Lq.
      {.B = 1, .Tq = 83, .Tk = 96, .Hq = 16, .Hkv = 2, .D = 64,
       .cu_q = Cu{0, 0, 1, 18, 18, 83}, .cu_k = Cu{0, 5, 6, 23, 23, 96}, .gate = true,
       .half = true},
      {.B = 1, .Tq = 83, .Tk = 96, .Hq = 16, .Hkv = 2, .D = 64,
       .cu_q = Cu{0, 0, 1, 18, 18, 83}, .cu_k = Cu{0, 5, 6, 23, 23, 96}, .causal = false,
       .index_dtype = DType::i64},
      {.B = 1, .Tq = 26, .Tk = 40, .Hq = 3, .Hkv = 1, .D = 128, .cu_q = Cu{0, 3, 4, 26},
       .cu_k = Cu{0, 0, 10, 40}, .gate = true, .index_dtype = DType::i64, .half = true},
      // Strided views.
      {.B = 2, .Tq = 33, .Tk = 40, .Hq = 16, .Hkv = 2, .D = 128, .gate = true,
       .layout = Layout::packed, .half = true},
      {.B = 1, .Tq = 20, .Tk = 30, .Hq = 3, .Hkv = 1, .D = 64, .gate = true,
       .layout = Layout::padded, .half = true},
      {.B = 1, .Tq = 26, .Tk = 40, .Hq = 4, .Hkv = 2, .D = 64, .cu_q = Cu{0, 3, 4, 26},
       .cu_k = Cu{0, 0, 10, 40}, .gate = true, .layout = Layout::padded},
      {.B = 2, .Tq = 16, .Tk = 16, .Hq = 4, .Hkv = 2, .D = 64, .gate = true,
       .layout = Layout::compact},
      {.B = 1, .Tq = 40, .Tk = 50, .Hq = 6, .Hkv = 2, .D = 40, .gate = true,
       .layout = Layout::transposed, .half = true},
      // Head dims off the tensor-core sizes.
      {.B = 2, .Tq = 9, .Tk = 12, .Hq = 2, .Hkv = 1, .D = 8, .gate = true, .half = true},
      {.B = 1, .Tq = 33, .Tk = 33, .Hq = 4, .Hkv = 2, .D = 96, .causal = false},
      // Long sequences.
      {.B = 1, .Tq = 300, .Tk = 330, .Hq = 16, .Hkv = 2, .D = 128, .cu_q = Cu{0, 100, 101, 300},
       .cu_k = Cu{0, 120, 121, 330}, .gate = true, .heavy = true},
      {.B = 1, .Tq = 200, .Tk = 200, .Hq = 16, .Hkv = 2, .D = 256, .gate = true, .half = true,
       .heavy = true},
  };
  // clang-format on
}

// The forward's sweep with two keys for its one query (one query against
// one key has dq = dk = 0 exactly: p = 1 and dp = Delta, so that the
// relative error would be one of rounding noise), and a gate whose gradient
// is not asked for.
std::vector<PrefillCase> prefill_bwd_sweep() {
  std::vector<PrefillCase> cases = prefill_sweep();
  for (PrefillCase& c : cases) {
    if (c.Tq == 1 && c.Tk == 1) c.Tk = 2;
  }
  cases.push_back({.B = 1,
                   .Tq = 17,
                   .Tk = 30,
                   .Hq = 4,
                   .Hkv = 2,
                   .D = 64,
                   .gate = true,
                   .dgate = false,
                   .half = true});
  return cases;
}

// ---- attn_decode --------------------------------------------------------------------

struct DecodeCase {
  int64_t L, Hq, Hkv, D, block_size;
  std::vector<int64_t> seq_lens;  // one per sequence, the L new tokens included
  bool scattered = true;          // block ids shuffled, else in order
  double scale = 0;
  // packed: k_cache and v_cache the two halves of one [num_blocks,2,block_size,Hkv,D]
  // cache; padded: q, o, caches, block_table and seq_lens with gaps.
  Layout layout = Layout::contiguous;
  DType index_dtype = DType::i32;
  bool half = false, heavy = false;
};

std::string case_name(std::string_view op, DType dtype, const DecodeCase& c) {
  std::string name =
      fmt::format("{} {} N={} L={} Hq={} Hkv={} D={} block_size={}", op, name_of(dtype),
                  c.seq_lens.size(), c.L, c.Hq, c.Hkv, c.D, c.block_size);
  name += index_arg("seq_lens", c.index_dtype, c.seq_lens);
  if (!c.scattered) name += " blocks_in_order";
  if (c.scale != 0) name += fmt::format(" scale={}", c.scale);
  return name + std::string(layout_name(c.layout));
}

// An index tensor of `values` shaped `shape`; with gaps, a view that skips
// every other column of a wider table filled with junk ids.
Tensor index_tensor(Device& device, DType dtype, const std::vector<int64_t>& values, Shape shape,
                    bool with_gaps) {
  if (!with_gaps) {
    Tensor t = Tensor::empty(device, dtype, shape);
    Array64 a(shape);
    for (size_t i = 0; i < values.size(); ++i) a.data[i] = static_cast<double>(values[i]);
    t.write(a);
    return t;
  }
  Shape wide = shape;
  wide.back() *= 2;
  std::vector<int64_t> junk(static_cast<size_t>(product(wide)), -12345);
  for (size_t i = 0; i < values.size(); ++i) junk[2 * i] = values[i];
  Tensor t = index_tensor(device, dtype, junk, wide, false);
  Shape strides = contiguous_strides(wide);
  strides.back() = 2;
  return t.view(0, shape, strides);
}

void decode_case(const Context& ctx, const hops_op_desc& op, DType dtype, const DecodeCase& c,
                 bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const auto N = static_cast<int64_t>(c.seq_lens.size());
    const bool padded = c.layout == Layout::padded;
    auto blocks_of = [&](int64_t length) { return (length + c.block_size - 1) / c.block_size; };
    int64_t used = 0, longest = 0;
    for (int64_t length : c.seq_lens) {
      used += blocks_of(length);
      longest = std::max(longest, length);
    }
    const int64_t num_blocks = used + 2;  // two blocks no sequence uses
    const int64_t max_blocks = blocks_of(longest) + 1;

    // Each sequence's blocks, shuffled over the cache; the entries past a
    // sequence's length hold ids no kernel may use.
    const std::vector<int64_t> ids = c.scattered ? shuffled(random, num_blocks) : [&] {
      std::vector<int64_t> in_order(static_cast<size_t>(num_blocks));
      for (int64_t i = 0; i < num_blocks; ++i) in_order[i] = i;
      return in_order;
    }();
    std::vector<std::vector<int64_t>> table(static_cast<size_t>(N));
    std::vector<int64_t> flat_table;
    size_t next = 0;
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t b = 0; b < max_blocks; ++b) {
        const bool in_use = b < blocks_of(c.seq_lens[n]);
        table[n].push_back(in_use ? ids[next++] : (b % 2 ? -1 : num_blocks + 3));
        flat_table.push_back(table[n].back());
      }
    }

    Array64 q = random.uniform({N, c.L, c.Hq, c.D}, -3, 3);
    const Shape cache_shape = {num_blocks, c.block_size, c.Hkv, c.D};
    Array64 k_cache = random.uniform(cache_shape, -1, 1);
    Array64 v_cache = random.uniform(cache_shape, -1, 1);
    Invocation call(ctx, op);
    call.tensor("q", input_tensor(ctx.device, dtype, q, c.layout));
    if (c.layout == Layout::packed) {
      const Tensor both =
          Tensor::empty(ctx.device, dtype, {num_blocks, 2, c.block_size, c.Hkv, c.D});
      const Shape strides = {2 * c.block_size * c.Hkv * c.D, c.Hkv * c.D, c.D, 1};
      call.tensor("k_cache", assign(both.view(0, cache_shape, strides), k_cache));
      call.tensor("v_cache",
                  assign(both.view(c.block_size * c.Hkv * c.D, cache_shape, strides), v_cache));
    } else {
      call.tensor("k_cache", input_tensor(ctx.device, dtype, k_cache, c.layout));
      call.tensor("v_cache", input_tensor(ctx.device, dtype, v_cache, c.layout));
    }
    call.tensor("block_table", index_tensor(ctx.index_device(), c.index_dtype, flat_table,
                                            {N, max_blocks}, padded));
    call.tensor("seq_lens",
                index_tensor(ctx.index_device(), c.index_dtype, c.seq_lens, {N}, padded));
    const Tensor o = output_tensor(ctx.device, dtype, q.shape, c.layout);
    call.tensor("o", o).f64("scale", c.scale);
    if (c.layout == Layout::compact) call.null_strides();
    call.run(typed_too);

    verdict.expect_close("o", o, ref::attn_decode(q, k_cache, v_cache, table, c.seq_lens, c.scale),
                         tolerance(dtype));
  });
}

std::vector<DecodeCase> decode_sweep() {
  using Lens = std::vector<int64_t>;
  // clang-format off
  return {
      {.L = 1, .Hq = 16, .Hkv = 2, .D = 256, .block_size = 16, .seq_lens = Lens{37}, .half = true},
      {.L = 1, .Hq = 3, .Hkv = 1, .D = 64, .block_size = 16, .seq_lens = Lens{1, 16, 17, 0}},
      // L new tokens, sequences shorter than L and empty.
      {.L = 4, .Hq = 24, .Hkv = 4, .D = 128, .block_size = 32, .seq_lens = Lens{70, 3, 0, 4},
       .half = true},
      {.L = 2, .Hq = 16, .Hkv = 2, .D = 64, .block_size = 64, .seq_lens = Lens{130, 65},
       .index_dtype = DType::i64},
      {.L = 2, .Hq = 4, .Hkv = 2, .D = 64, .block_size = 16, .seq_lens = Lens{0, 0}},
      {.L = 1, .Hq = 4, .Hkv = 2, .D = 128, .block_size = 16, .seq_lens = Lens{50},
       .scattered = false, .scale = 0.3},
      // Strided views.
      {.L = 1, .Hq = 4, .Hkv = 4, .D = 128, .block_size = 16, .seq_lens = Lens{33, 48},
       .layout = Layout::packed, .half = true},
      {.L = 3, .Hq = 16, .Hkv = 2, .D = 64, .block_size = 32, .seq_lens = Lens{40, 2, 95},
       .layout = Layout::padded, .index_dtype = DType::i64, .half = true},
      {.L = 1, .Hq = 8, .Hkv = 2, .D = 64, .block_size = 16, .seq_lens = Lens{20, 5},
       .layout = Layout::compact},
      {.L = 2, .Hq = 6, .Hkv = 2, .D = 40, .block_size = 16, .seq_lens = Lens{30, 1},
       .layout = Layout::transposed, .half = true},
      // Long contexts (split over the context).
      {.L = 1, .Hq = 16, .Hkv = 2, .D = 128, .block_size = 64, .seq_lens = Lens{2000, 1},
       .index_dtype = DType::i64},
      {.L = 2, .Hq = 4, .Hkv = 2, .D = 128, .block_size = 32, .seq_lens = Lens{1500, 600},
       .scale = 1.0, .half = true},
      {.L = 4, .Hq = 16, .Hkv = 2, .D = 256, .block_size = 16, .seq_lens = Lens{1000, 2},
       .half = true},
      {.L = 1, .Hq = 16, .Hkv = 2, .D = 256, .block_size = 16,
       .seq_lens = Lens{2048, 1000, 17, 1, 700, 64}, .half = true, .heavy = true},
  };
  // clang-format on
}

// ---- kv_cache_write -----------------------------------------------------------------

struct WriteCase {
  int64_t T, Hkv, D, num_blocks, block_size;
  std::vector<int64_t> slots = {};  // empty: scattered over the cache, every 4th row skipped
  // packed: k and v views of a [T, 4*Hkv*D] qkv projection; padded: k, v,
  // the caches and slot_mapping with gaps.
  Layout layout = Layout::contiguous;
  DType index_dtype = DType::i32;
  bool half = false, heavy = false;
};

std::string case_name(std::string_view op, DType dtype, const WriteCase& c) {
  std::string name = fmt::format("{} {} T={} Hkv={} D={} num_blocks={} block_size={}", op,
                                 name_of(dtype), c.T, c.Hkv, c.D, c.num_blocks, c.block_size);
  name += c.slots.empty() ? fmt::format(" slot_mapping({})=scattered", name_of(c.index_dtype))
                          : index_arg("slot_mapping", c.index_dtype, c.slots);
  return name + std::string(layout_name(c.layout));
}

void write_case(const Context& ctx, const hops_op_desc& op, DType dtype, const WriteCase& c,
                bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    std::vector<int64_t> slots = c.slots;
    if (slots.empty()) {
      slots = shuffled(random, c.num_blocks * c.block_size);
      slots.resize(static_cast<size_t>(c.T));
      for (int64_t t = 1; t < c.T; t += 4) slots[t] = -1;
    }
    Array64 k = random.uniform({c.T, c.Hkv, c.D}, -1, 1);
    Array64 v = random.uniform({c.T, c.Hkv, c.D}, -1, 1);
    const Shape cache_shape = {c.num_blocks, c.block_size, c.Hkv, c.D};
    Array64 k_cache = random.uniform(cache_shape, -1, 1);
    Array64 v_cache = random.uniform(cache_shape, -1, 1);
    Invocation call(ctx, op);
    if (c.layout == Layout::packed) {
      const int64_t width = 4 * c.Hkv * c.D;  // q (2 Hkv heads), k, v
      const Tensor qkv = Tensor::empty(ctx.device, dtype, {c.T, width});
      const Shape strides = {width, c.D, 1};
      call.tensor("k", assign(qkv.view(2 * c.Hkv * c.D, k.shape, strides), k));
      call.tensor("v", assign(qkv.view(3 * c.Hkv * c.D, v.shape, strides), v));
    } else {
      call.tensor("k", input_tensor(ctx.device, dtype, k, c.layout));
      call.tensor("v", input_tensor(ctx.device, dtype, v, c.layout));
    }
    const Tensor tk_cache = input_tensor(ctx.device, dtype, k_cache, c.layout);
    const Tensor tv_cache = input_tensor(ctx.device, dtype, v_cache, c.layout);
    const std::vector<uint32_t> k_before = tk_cache.read_bits(), v_before = tv_cache.read_bits();
    call.tensor("k_cache", tk_cache).tensor("v_cache", tv_cache);
    call.tensor("slot_mapping", index_tensor(ctx.index_device(), c.index_dtype, slots, {c.T},
                                             c.layout == Layout::padded));
    if (c.layout == Layout::compact) call.null_strides();
    call.run(typed_too);

    // A copy: the written rows exact, every other row of the caches bit for bit as it was.
    ref::kv_cache_write(k, v, k_cache, v_cache, slots);
    verdict.expect_close("k_cache", tk_cache, k_cache, 0.0);
    verdict.expect_close("v_cache", tv_cache, v_cache, 0.0);
    std::vector<bool> written(static_cast<size_t>(c.num_blocks * c.block_size), false);
    for (int64_t slot : slots) {
      if (slot >= 0) written[static_cast<size_t>(slot)] = true;
    }
    verdict.expect_slots_kept("k_cache", k_before, tk_cache, written);
    verdict.expect_slots_kept("v_cache", v_before, tv_cache, written);
  });
}

std::vector<WriteCase> write_sweep() {
  using Slots = std::vector<int64_t>;
  // clang-format off
  return {
      {.T = 1, .Hkv = 2, .D = 256, .num_blocks = 4, .block_size = 16, .slots = Slots{37},
       .half = true},
      {.T = 7, .Hkv = 1, .D = 64, .num_blocks = 3, .block_size = 16,
       .slots = Slots{-1, 5, 47, 16, -1, 0, 31}, .index_dtype = DType::i64},
      {.T = 40, .Hkv = 4, .D = 128, .num_blocks = 8, .block_size = 32, .half = true},
      {.T = 3, .Hkv = 2, .D = 64, .num_blocks = 2, .block_size = 16, .slots = Slots{-1, -1, -1}},
      {.T = 0, .Hkv = 2, .D = 64, .num_blocks = 2, .block_size = 16},
      {.T = 30, .Hkv = 2, .D = 64, .num_blocks = 4, .block_size = 64, .layout = Layout::packed,
       .half = true},
      {.T = 20, .Hkv = 2, .D = 64, .num_blocks = 2, .block_size = 16, .layout = Layout::padded,
       .index_dtype = DType::i64, .half = true},
      {.T = 9, .Hkv = 3, .D = 64, .num_blocks = 1, .block_size = 16, .layout = Layout::compact},
      {.T = 12, .Hkv = 2, .D = 40, .num_blocks = 2, .block_size = 16,
       .layout = Layout::transposed, .half = true},
      {.T = 500, .Hkv = 8, .D = 128, .num_blocks = 64, .block_size = 16, .half = true,
       .heavy = true},
  };
  // clang-format on
}

}  // namespace

void attn_prefill_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, prefill_sweep(), prefill_case);
}

void attn_prefill_bwd_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, prefill_bwd_sweep(), prefill_bwd_case);
}

void attn_decode_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, decode_sweep(), decode_case);
}

void kv_cache_write_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, write_sweep(), write_case);
}

std::span<const OpSuite> attn_suites() {
  static const OpSuite suites[] = {
      {"attn_prefill",
       attn_prefill_cases,
       attn_prefill_typed,
       attn_prefill_base,
       attn_prefill_bad_calls,
       attn_prefill_call,
       {"o", "lse"}},
      {"attn_prefill_bwd",
       attn_prefill_bwd_cases,
       attn_prefill_bwd_typed,
       attn_prefill_bwd_base,
       attn_prefill_bwd_bad_calls,
       attn_prefill_bwd_call,
       {"dq", "dk", "dv", "dgate"}},
      {"attn_decode",
       attn_decode_cases,
       attn_decode_typed,
       attn_decode_base,
       attn_decode_bad_calls,
       attn_decode_call,
       {"o"}},
      {"kv_cache_write",
       kv_cache_write_cases,
       kv_cache_write_typed,
       kv_cache_write_base,
       kv_cache_write_bad_calls,
       kv_cache_write_call,
       {"k_cache", "v_cache"}},
  };
  return suites;
}

}  // namespace hops::conformance
