// conv1d_fwd, conv1d_bwd and conv1d_update against ref::conv1d_fwd,
// ref::conv1d_bwd and ref::conv1d_update.
#include <fmt/format.h>

#include <cmath>
#include <optional>

#include "cases.hpp"
#include "conv1d_calls.hpp"
#include "conv1d_reference.hpp"
#include "invocation.hpp"

namespace hops::conformance {

namespace {

enum class Layout {
  channels_last,
  channels_first,  // x, y stored [B,D,T]
  transposed,      // channels_first view of [B,T,D] memory, as x.transpose(1,2) hands it over
  sliced,          // x, y columns of wider [B,T,*] rows, as a fused projection leaves them
  padded,          // every tensor strided with gaps, states too
  compact,         // channels last, passed with strides = NULL
};

constexpr std::string_view layout_name(Layout layout) {
  switch (layout) {
    case Layout::channels_last:
      return "";
    case Layout::channels_first:
      return " channels_first";
    case Layout::transposed:
      return " channels_first(transposed)";
    case Layout::sliced:
      return " sliced";
    case Layout::padded:
      return " padded";
    case Layout::compact:
      return " strides=NULL";
  }
  return "";
}

struct ConvCase {
  int64_t B, T, D, W;
  std::vector<int64_t> cu_seqlens = {};  // empty: dense
  bool bias = false;
  int64_t activation = HOPS_ACTIVATION_SILU;
  int64_t initial_len = -1;  // L0 of the initial state, -1: none
  int64_t final_len = -1;    // L1 of the final state, -1: none
  Layout layout = Layout::channels_last;
  bool f32_params = false;  // weight, bias and states in f32 whatever x is
  DType index_dtype = DType::i32;
  // seq_idx [B,T] row-major (ABI 1.3; empty: none): sequences packed by id.
  std::vector<int64_t> seq_idx = {};
  bool half = false;   // also run for f16 and bf16
  bool heavy = false;  // left out by --quick
  // conv1d_bwd: ask for dbias and d_initial_state when bias and initial_state
  // are given (the gradients of trained parameters and of a carried state).
  bool optional_grads = true;

  int64_t sequences() const {
    return cu_seqlens.empty() ? B : static_cast<int64_t>(cu_seqlens.size()) - 1;
  }
  bool channels_first() const {
    return layout == Layout::channels_first || layout == Layout::transposed;
  }
};

std::string case_name(std::string_view op, DType dtype, const ConvCase& c) {
  std::string name =
      fmt::format("{} {} B={} T={} D={} W={}", op, name_of(dtype), c.B, c.T, c.D, c.W);
  if (!c.cu_seqlens.empty()) name += index_arg("cu_seqlens", c.index_dtype, c.cu_seqlens);
  if (c.bias) name += " bias";
  name += c.activation == HOPS_ACTIVATION_SILU ? " silu" : " none";
  if (c.initial_len >= 0) name += fmt::format(" L0={}", c.initial_len);
  if (c.final_len >= 0) name += fmt::format(" L1={}", c.final_len);
  if (c.f32_params) name += " f32_params";
  if (!c.optional_grads) name += " no_dbias_no_d_initial_state";
  if (!c.seq_idx.empty()) name += index_arg("seq_idx", c.index_dtype, c.seq_idx);
  return name + std::string(layout_name(c.layout));
}

// x (given channels-last, [B,T,D]) as the case's layout wants it.
Tensor x_tensor(Device& device, DType dtype, Array64& x, Layout layout) {
  const int64_t B = x.shape[0], T = x.shape[1], D = x.shape[2];
  switch (layout) {
    case Layout::channels_last:
    case Layout::compact:
      return Tensor::input(device, dtype, x);
    case Layout::padded:
      return Tensor::input(device, dtype, x, gaps(3));
    case Layout::sliced: {
      const int64_t width = D + 5;
      const Tensor wide = Tensor::empty(device, dtype, {B, T, width});
      return assign(wide.view(3, {B, T, D}, {T * width, width, 1}), x);
    }
    case Layout::channels_first: {
      Array64 xt = permute(x, {0, 2, 1});
      Tensor t = Tensor::input(device, dtype, xt);
      x = permute(xt, {0, 2, 1});
      return t;
    }
    case Layout::transposed:
      return Tensor::input(device, dtype, x).permuted({0, 2, 1});
  }
  return {};
}

// An output of x's layout (channels-last logical shape [B,T,D]).
Tensor y_tensor(Device& device, DType dtype, const Shape& shape, Layout layout) {
  const int64_t B = shape[0], T = shape[1], D = shape[2];
  switch (layout) {
    case Layout::channels_last:
    case Layout::compact:
      return Tensor::empty(device, dtype, shape);
    case Layout::padded:
      return Tensor::padded(device, dtype, shape, gaps(3));
    case Layout::sliced: {
      const int64_t width = D + 2;
      return Tensor::empty(device, dtype, {B, T, width}).view(1, shape, {T * width, width, 1});
    }
    case Layout::channels_first:
      return Tensor::empty(device, dtype, {B, D, T});
    case Layout::transposed:
      return Tensor::empty(device, dtype, shape).permuted({0, 2, 1});
  }
  return {};
}

ref::Activation activation(int64_t code) { return static_cast<ref::Activation>(code); }

// seq_idx as the [B,T] index tensor, or nothing.
void bind_seq_idx(const Context& ctx, Invocation& call, const ConvCase& c) {
  if (c.seq_idx.empty()) return;
  call.tensor(
      "seq_idx",
      Tensor::indices(ctx.index_device(), c.index_dtype, c.seq_idx).view(0, {c.B, c.T}, {c.T, 1}));
}

const std::vector<int64_t>* seq_idx_of(const ConvCase& c) {
  return c.seq_idx.empty() ? nullptr : &c.seq_idx;
}

void fwd_case(const Context& ctx, const hops_op_desc& op, DType dtype, const ConvCase& c,
              bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const DType params = c.f32_params ? DType::f32 : dtype;
    const Shape pad = c.layout == Layout::padded ? gaps(3) : Shape{};
    const int64_t N = c.sequences();
    Array64 x = random.uniform({c.B, c.T, c.D}, -1, 1);
    Array64 weight = random.uniform({c.D, c.W}, -1, 1);
    Array64 bias = random.uniform({c.D}, -1, 1);
    Array64 h0 = random.uniform({N, c.D, std::max<int64_t>(c.initial_len, 0)}, -1, 1);
    Invocation call(ctx, op);
    call.tensor("x", x_tensor(ctx.device, dtype, x, c.layout));
    call.tensor("weight", Tensor::input(ctx.device, params, weight, pad.empty() ? pad : gaps(2)));
    if (c.bias) call.tensor("bias", Tensor::input(ctx.device, params, bias));
    if (c.initial_len >= 0)
      call.tensor("initial_state", Tensor::input(ctx.device, params, h0, pad));
    if (!c.cu_seqlens.empty()) {
      call.tensor("cu_seqlens", Tensor::indices(ctx.index_device(), c.index_dtype, c.cu_seqlens));
    }
    const Tensor y = y_tensor(ctx.device, dtype, {c.B, c.T, c.D}, c.layout);
    call.tensor("y", y);
    Tensor final_state;
    if (c.final_len >= 0)
      final_state = Tensor::padded(ctx.device, params, {N, c.D, c.final_len}, pad);
    call.tensor("final_state", final_state);
    call.i64("activation", c.activation).flag("channels_first", c.channels_first());
    bind_seq_idx(ctx, call, c);
    if (c.layout == Layout::compact) call.null_strides();
    call.run(typed_too && c.seq_idx.empty());  // the typed entry has no seq_idx (1.3)

    const ref::Conv1dResult want =
        ref::conv1d_fwd(x, weight, c.bias ? &bias : nullptr, c.initial_len >= 0 ? &h0 : nullptr,
                        c.cu_seqlens.empty() ? nullptr : &c.cu_seqlens, activation(c.activation),
                        std::max<int64_t>(c.final_len, 0), seq_idx_of(c));
    verdict.expect_close("y", y, c.channels_first() ? permute(want.y, {0, 2, 1}) : want.y,
                         tolerance(dtype));
    if (c.final_len >= 0) {
      verdict.expect_close("final_state", final_state, want.final_state, tolerance(dtype));
    }
  });
}

std::vector<ConvCase> fwd_sweep() {
  std::vector<ConvCase> cases;
  // clang-format off
  // Every width, alternating bias and activation.
  for (int64_t W = 1; W <= 4; ++W) {
    cases.push_back({.B = 2, .T = 65, .D = 37, .W = W, .bias = W % 2 == 1, .activation = W % 2,
                     .initial_len = W - 1, .final_len = W - 1, .half = W == 4});
  }
  const std::vector<ConvCase> more = {
      // States longer than W-1, and final states longer than the sequence.
      {.B = 2, .T = 5, .D = 16, .W = 3, .bias = true, .initial_len = 6, .final_len = 8},
      {.B = 2, .T = 1, .D = 16, .W = 4, .initial_len = 3, .final_len = 3, .half = true},
      {.B = 2, .T = 2, .D = 9, .W = 4, .activation = HOPS_ACTIVATION_NONE, .final_len = 5},
      {.B = 2, .T = 0, .D = 8, .W = 4, .initial_len = 3, .final_len = 5},
      {.B = 1, .T = 7, .D = 8, .W = 1, .initial_len = 0, .final_len = 0},
      {.B = 1, .T = 7, .D = 8, .W = 1, .bias = true, .initial_len = 2, .final_len = 1},
      // Varlen with empty and length-1 sequences.
      {.B = 1, .T = 200, .D = 24, .W = 4, .cu_seqlens = {0, 0, 1, 64, 64, 200}, .bias = true,
       .initial_len = 3, .final_len = 5, .half = true},
      {.B = 1, .T = 200, .D = 24, .W = 3, .cu_seqlens = {0, 0, 1, 64, 64, 200},
       .activation = HOPS_ACTIVATION_NONE, .initial_len = 6, .final_len = 2,
       .index_dtype = DType::i64},
      {.B = 1, .T = 100, .D = 16, .W = 4, .cu_seqlens = {0, 50, 50, 100}, .final_len = 3,
       .layout = Layout::channels_first},
      // Layouts.
      {.B = 2, .T = 33, .D = 20, .W = 4, .bias = true, .initial_len = 3, .final_len = 3,
       .layout = Layout::channels_first, .half = true},
      {.B = 2, .T = 50, .D = 24, .W = 4, .initial_len = 3, .final_len = 4,
       .layout = Layout::transposed, .half = true},
      {.B = 2, .T = 40, .D = 48, .W = 4, .bias = true, .layout = Layout::sliced},
      {.B = 2, .T = 40, .D = 48, .W = 4, .bias = true, .initial_len = 3, .final_len = 3,
       .layout = Layout::compact},
      {.B = 2, .T = 30, .D = 10, .W = 3, .bias = true, .initial_len = 4, .final_len = 4,
       .layout = Layout::padded, .half = true},
      // Half x with f32 weight, bias and states.
      {.B = 2, .T = 20, .D = 12, .W = 4, .bias = true, .initial_len = 3, .final_len = 3,
       .f32_params = true, .half = true},
      // Sizes of real layers: Qwen3.5 conv dim 8192, and a long sequence.
      {.B = 1, .T = 64, .D = 8192, .W = 4, .initial_len = 3, .final_len = 3,
       .half = true, .heavy = true},
      {.B = 2, .T = 1000, .D = 64, .W = 4, .bias = true, .heavy = true},
      // seq_idx (Dao's causal-conv1d): runs of one id, padding (-1), an id that
      // comes back after another (taps still compare ids only), every width.
      {.B = 2, .T = 9, .D = 19, .W = 4, .bias = true,
       .seq_idx = {0, 0, 0, 1, 1, -1, 2, 2, 2, 5, -1, -1, 5, 5, 5, 5, 6, 6}, .half = true},
      {.B = 1, .T = 12, .D = 32, .W = 3, .activation = HOPS_ACTIVATION_NONE,
       .index_dtype = DType::i64, .seq_idx = {0, 0, 1, 0, 0, 0, 2, 2, 2, 2, 3, 3}},
      {.B = 2, .T = 7, .D = 40, .W = 2, .bias = true, .layout = Layout::transposed,
       .seq_idx = {1, 1, 1, 1, 2, 2, 2, -1, 0, 0, 0, 0, 0, 0}, .half = true},
      {.B = 1, .T = 70, .D = 16, .W = 4, .bias = true, .layout = Layout::compact,
       .seq_idx = std::vector<int64_t>(70, 3)},
  };
  // clang-format on
  cases.insert(cases.end(), more.begin(), more.end());
  return cases;
}

// seq_idx of B rows of T tokens: runs of 1 to 70 tokens with rising ids,
// every seventh run padding (-1).
std::vector<int64_t> chunked_ids(int64_t B, int64_t T) {
  std::vector<int64_t> ids;
  int64_t run = 0;
  for (int64_t row = 0; row < B; ++row) {
    for (int64_t t = 0; t < T;) {
      const int64_t length = std::min<int64_t>(1 + (run * 37) % 70, T - t);
      ids.insert(ids.end(), static_cast<size_t>(length), run % 7 == 6 ? -1 : run);
      t += length, ++run;
    }
  }
  return ids;
}

// The backward of the forward case: final_len is the length of d_final_state.
void bwd_case(const Context& ctx, const hops_op_desc& op, DType dtype, const ConvCase& c,
              bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const DType params = c.f32_params ? DType::f32 : dtype;
    const Shape pad = c.layout == Layout::padded ? gaps(3) : Shape{};
    const int64_t N = c.sequences();
    const bool with_initial = c.initial_len >= 0, with_final = c.final_len >= 0;
    Array64 x = random.uniform({c.B, c.T, c.D}, -1, 1);
    Array64 weight = random.uniform({c.D, c.W}, -1, 1);
    Array64 bias = random.uniform({c.D}, -1, 1);
    Array64 h0 = random.uniform({N, c.D, std::max<int64_t>(c.initial_len, 0)}, -1, 1);
    Array64 dy = random.uniform({c.B, c.T, c.D}, -1, 1);
    Array64 d_final = random.uniform({N, c.D, std::max<int64_t>(c.final_len, 0)}, -1, 1);
    Invocation call(ctx, op);
    call.tensor("x", x_tensor(ctx.device, dtype, x, c.layout));
    call.tensor("weight", Tensor::input(ctx.device, params, weight, pad.empty() ? pad : gaps(2)));
    if (c.bias) call.tensor("bias", Tensor::input(ctx.device, params, bias));
    if (with_initial) call.tensor("initial_state", Tensor::input(ctx.device, params, h0, pad));
    if (!c.cu_seqlens.empty()) {
      call.tensor("cu_seqlens", Tensor::indices(ctx.index_device(), c.index_dtype, c.cu_seqlens));
    }
    call.tensor("dy", x_tensor(ctx.device, dtype, dy, c.layout));
    if (with_final) call.tensor("d_final_state", Tensor::input(ctx.device, params, d_final, pad));
    const Tensor dx = y_tensor(ctx.device, dtype, {c.B, c.T, c.D}, c.layout);
    const Tensor dweight =
        Tensor::padded(ctx.device, params, {c.D, c.W}, pad.empty() ? pad : gaps(2));
    Tensor dbias, d_initial;
    if (c.bias && c.optional_grads) dbias = Tensor::empty(ctx.device, params, {c.D});
    if (with_initial && c.optional_grads) {
      d_initial = Tensor::padded(ctx.device, params, {N, c.D, c.initial_len}, pad);
    }
    call.tensor("dx", dx).tensor("dweight", dweight);
    call.tensor("dbias", dbias).tensor("d_initial_state", d_initial);
    call.i64("activation", c.activation).flag("channels_first", c.channels_first());
    bind_seq_idx(ctx, call, c);
    if (c.layout == Layout::compact) call.null_strides();
    call.run(typed_too && c.seq_idx.empty());

    const ref::Conv1dGrads want =
        ref::conv1d_bwd(x, weight, c.bias ? &bias : nullptr, with_initial ? &h0 : nullptr,
                        c.cu_seqlens.empty() ? nullptr : &c.cu_seqlens, dy,
                        with_final ? &d_final : nullptr, activation(c.activation), seq_idx_of(c));
    verdict.expect_close("dx", dx, c.channels_first() ? permute(want.dx, {0, 2, 1}) : want.dx,
                         tolerance(dtype));
    verdict.expect_close("dweight", dweight, want.dweight, tolerance(dtype));
    if (dbias) verdict.expect_close("dbias", dbias, want.dbias, tolerance(dtype));
    if (d_initial) {
      verdict.expect_close("d_initial_state", d_initial, want.d_initial_state, tolerance(dtype));
    }
  });
}

// The forward's sweep, plus what the backward's token chunks (64..2048
// tokens, about 64 of them) make interesting: chunk edges inside and between
// sequences, and many chunks.
std::vector<ConvCase> bwd_sweep() {
  std::vector<ConvCase> cases = fwd_sweep();
  // clang-format off
  const std::vector<ConvCase> more = {
      {.B = 1, .T = 63, .D = 40, .W = 4, .bias = true, .initial_len = 3, .final_len = 3,
       .half = true},
      {.B = 3, .T = 64, .D = 40, .W = 3, .bias = true, .activation = HOPS_ACTIVATION_NONE,
       .initial_len = 2, .final_len = 4},
      {.B = 2, .T = 65, .D = 300, .W = 4, .bias = true, .initial_len = 5, .final_len = 3,
       .optional_grads = false},
      {.B = 1, .T = 1000, .D = 24, .W = 4, .cu_seqlens = {0, 1, 1, 130, 131, 700, 1000},
       .bias = true, .initial_len = 3, .final_len = 3, .half = true},
      {.B = 1, .T = 1000, .D = 16, .W = 2, .cu_seqlens = {0, 500, 1000}, .bias = true,
       .initial_len = 4, .final_len = 2, .layout = Layout::channels_first},
      {.B = 4, .T = 3000, .D = 8, .W = 4, .bias = true, .initial_len = 3, .final_len = 3,
       .heavy = true},
      // seq_idx across the backward's token chunks (64 tokens here).
      {.B = 2, .T = 130, .D = 24, .W = 4, .bias = true, .seq_idx = chunked_ids(2, 130)},
  };
  // clang-format on
  cases.insert(cases.end(), more.begin(), more.end());
  return cases;
}

struct UpdateCase {
  int64_t N, L, D, W, SL, pool;  // L = 0: x is [N,D]
  std::optional<std::vector<int64_t>> slots = {};
  bool bias = false;
  int64_t activation = HOPS_ACTIVATION_SILU;
  bool strided = false;  // x, y padded; the pool the last SL columns of [S,D,SL+1]
  bool null_strides = false;
  bool f32_params = false;
  DType index_dtype = DType::i32;
  bool half = false, heavy = false;
  // ABI 1.3: a circular state (Dao's cache_seqlens), and y = 0 for skipped rows.
  std::optional<std::vector<int64_t>> cache_seqlens = {};
  bool zero_skipped = false;
};

std::string case_name(std::string_view op, DType dtype, const UpdateCase& c) {
  std::string name =
      fmt::format("{} {} x=[{}] W={} state=[{},{},{}]", op, name_of(dtype),
                  c.L ? fmt::format("{},{},{}", c.N, c.L, c.D) : fmt::format("{},{}", c.N, c.D),
                  c.W, c.pool, c.D, c.SL);
  if (c.slots) name += index_arg("state_indices", c.index_dtype, *c.slots);
  if (c.bias) name += " bias";
  name += c.activation == HOPS_ACTIVATION_SILU ? " silu" : " none";
  if (c.f32_params) name += " f32_params";
  if (c.strided) name += " strided";
  if (c.null_strides) name += " strides=NULL";
  if (c.cache_seqlens) name += index_arg("cache_seqlens", c.index_dtype, *c.cache_seqlens);
  if (c.zero_skipped) name += " zero_skipped";
  return name;
}

void update_case(const Context& ctx, const hops_op_desc& op, DType dtype, const UpdateCase& c,
                 bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    const DType params = c.f32_params ? DType::f32 : dtype;
    const Shape x_shape = c.L ? Shape{c.N, c.L, c.D} : Shape{c.N, c.D};
    const Shape pad = c.strided ? gaps(x_shape.size()) : Shape{};
    Array64 x = random.uniform(x_shape, -1, 1);
    Array64 weight = random.uniform({c.D, c.W}, -1, 1);
    Array64 bias = random.uniform({c.D}, -1, 1);
    Array64 pool = random.uniform({c.pool, c.D, c.SL}, -1, 1);
    Tensor state;
    if (c.strided) {  // FLA keeps W columns; a causal-conv1d host sees the last W-1
      const Tensor wide = Tensor::empty(ctx.device, params, {c.pool, c.D, c.SL + 1});
      state = assign(wide.view(1, {c.pool, c.D, c.SL}, {c.D * (c.SL + 1), c.SL + 1, 1}), pool);
    } else {
      state = Tensor::input(ctx.device, params, pool);
    }
    const std::vector<uint32_t> state_before = state.read_bits();
    const Tensor y = Tensor::padded(ctx.device, dtype, x_shape, pad);
    Invocation call(ctx, op);
    call.tensor("x", Tensor::input(ctx.device, dtype, x, pad)).tensor("state", state);
    call.tensor("weight", Tensor::input(ctx.device, params, weight));
    if (c.bias) call.tensor("bias", Tensor::input(ctx.device, params, bias));
    if (c.slots)
      call.tensor("state_indices", Tensor::indices(ctx.index_device(), c.index_dtype, *c.slots));
    call.tensor("y", y).i64("activation", c.activation);
    if (c.cache_seqlens) {
      call.tensor("cache_seqlens",
                  Tensor::indices(ctx.index_device(), c.index_dtype, *c.cache_seqlens));
    }
    call.flag("zero_skipped", c.zero_skipped);
    if (c.null_strides) call.null_strides();
    call.run(typed_too && !c.cache_seqlens && !c.zero_skipped);  // typed: no 1.3 arguments

    // The reference takes [N,L,D]; skipped sequences keep their poison (NaN).
    const Shape x3 = {c.N, c.L ? c.L : 1, c.D};
    Array64 x_ref = x;
    x_ref.shape = x3;
    Array64 want_y(x3, NAN);
    ref::conv1d_update(x_ref, pool, weight, c.bias ? &bias : nullptr, c.slots ? &*c.slots : nullptr,
                       activation(c.activation), want_y,
                       c.cache_seqlens ? &*c.cache_seqlens : nullptr, c.zero_skipped);
    want_y.shape = x_shape;
    verdict.expect_close("y", y, want_y, tolerance(dtype));
    verdict.expect_close("state", state, pool, tolerance(dtype));
    verdict.expect_slots_kept("state", state_before, state, used_slots(c.pool, c.N, c.slots));
  });
}

std::vector<UpdateCase> update_sweep() {
  using Slots = std::vector<int64_t>;
  // clang-format off
  return {
      {.N = 3, .L = 0, .D = 37, .W = 4, .SL = 3, .pool = 5, .slots = Slots{4, -1, 1}, .bias = true,
       .half = true},
      {.N = 3, .L = 3, .D = 16, .W = 2, .SL = 6, .pool = 3, .slots = Slots{2, 0, 1},
       .activation = HOPS_ACTIVATION_NONE, .index_dtype = DType::i64},
      {.N = 2, .L = 1, .D = 256, .W = 4, .SL = 3, .pool = 4},
      {.N = 2, .L = 2, .D = 16, .W = 4, .SL = 3, .pool = 3, .slots = Slots{1, 2}, .bias = true,
       .null_strides = true},
      {.N = 2, .L = 5, .D = 8, .W = 3, .SL = 2, .pool = 2, .bias = true},
      {.N = 2, .L = 0, .D = 8, .W = 1, .SL = 0, .pool = 2},
      {.N = 2, .L = 2, .D = 8, .W = 1, .SL = 2, .pool = 3, .slots = Slots{2, 0}, .bias = true},
      {.N = 2, .L = 0, .D = 8, .W = 4, .SL = 3, .pool = 2, .slots = Slots{-1, -1}},
      {.N = 2, .L = 2, .D = 24, .W = 4, .SL = 3, .pool = 3, .slots = Slots{0, 2}, .strided = true,
       .half = true},
      {.N = 3, .L = 2, .D = 12, .W = 4, .SL = 4, .pool = 3, .slots = Slots{1, -1, 0}, .bias = true,
       .f32_params = true, .half = true},
      // Qwen3.5 decode step: conv dim 8192.
      {.N = 4, .L = 0, .D = 8192, .W = 4, .SL = 3, .pool = 8, .slots = Slots{7, 2, -1, 5},
       .half = true, .heavy = true},
      // Circular states (cache_seqlens) and zeroed padding rows (ABI 1.3).
      {.N = 3, .L = 0, .D = 37, .W = 4, .SL = 5, .pool = 4, .slots = Slots{3, -1, 0}, .bias = true,
       .half = true, .cache_seqlens = Slots{0, 9, 13}, .zero_skipped = true},
      {.N = 3, .L = 3, .D = 16, .W = 3, .SL = 4, .pool = 3, .bias = true,
       .cache_seqlens = Slots{2, 3, 1000}},
      {.N = 2, .L = 6, .D = 24, .W = 4, .SL = 4, .pool = 3, .slots = Slots{2, 0}, .strided = true,
       .index_dtype = DType::i64, .half = true, .cache_seqlens = Slots{5, 0}},
      {.N = 2, .L = 2, .D = 8, .W = 1, .SL = 1, .pool = 2, .cache_seqlens = Slots{1, 2}},
      {.N = 3, .L = 2, .D = 256, .W = 4, .SL = 3, .pool = 3, .slots = Slots{-1, 1, -1},
       .zero_skipped = true},
      {.N = 2, .L = 0, .D = 16, .W = 4, .SL = 4, .pool = 2, .slots = Slots{-1, -1},
       .f32_params = true, .half = true, .zero_skipped = true},
  };
  // clang-format on
}

}  // namespace

void conv1d_fwd_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, fwd_sweep(), fwd_case);
}

void conv1d_bwd_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, bwd_sweep(), bwd_case);
}

void conv1d_update_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, update_sweep(), update_case);
}

std::span<const OpSuite> conv1d_suites() {
  static const OpSuite suites[] = {
      {"conv1d_fwd",
       conv1d_fwd_cases,
       conv1d_fwd_typed,
       conv1d_fwd_base,
       conv1d_fwd_bad_calls,
       conv1d_fwd_call,
       {"y", "final_state"}},
      {"conv1d_update", conv1d_update_cases, conv1d_update_typed, conv1d_update_base,
       conv1d_update_bad_calls},
      {"conv1d_bwd",
       conv1d_bwd_cases,
       conv1d_bwd_typed,
       conv1d_bwd_base,
       conv1d_bwd_bad_calls,
       conv1d_bwd_call,
       {"dx", "dweight", "dbias", "d_initial_state"}},
  };
  return suites;
}

}  // namespace hops::conformance
