// gdn_chunk_fwd, gdn_recurrent and gdn_chunk_bwd against ref::gdn_forward,
// ref::gdn_recurrent and ref::gdn_backward.
#include <fmt/format.h>

#include <cmath>
#include <optional>

#include "cases.hpp"
#include "gdn_calls.hpp"
#include "gdn_reference.hpp"
#include "invocation.hpp"

namespace hops::conformance {

namespace {

enum class Layout {
  contiguous,
  packed,   // q,k,v sliced from one [B,T,2*H*K+HV*V] projection, beta,g from [B,T,2*HV] (Qwen3.5)
  padded,   // every tensor, outputs and states too, strided with gaps
  compact,  // contiguous, passed with strides = NULL
};

struct GdnCase {
  int64_t B, T, H, HV, K, V;
  std::vector<int64_t> cu_seqlens = {};             // empty: dense
  bool initial_state = false, final_state = false;  // gdn_chunk_bwd: d_final_state
  bool dh0 = true;  // gdn_chunk_bwd: asks for dh0 when there is an initial state
  bool l2norm = false, v_first = false, gating = false;
  // ABI 1.3 (-1: not passed): 0 beta as given, 1 sigmoid, 2 2*sigmoid, with
  // or without the fused gate (gating); a backend may refuse these.
  int64_t beta_mode = -1;
  double scale = 0;
  Layout layout = Layout::contiguous;
  DType index_dtype = DType::i32;
  int64_t pool = 0;                                // gdn_recurrent: slots S
  std::optional<std::vector<int64_t>> slots = {};  // gdn_recurrent: state_indices
  bool half = false;                               // also run for f16 and bf16
  bool heavy = false;                              // left out by --quick

  int64_t sequences() const {
    return cu_seqlens.empty() ? B : static_cast<int64_t>(cu_seqlens.size()) - 1;
  }
  Shape state_shape(int64_t count) const {
    return v_first ? Shape{count, HV, V, K} : Shape{count, HV, K, V};
  }
  Shape pad(size_t rank) const { return layout == Layout::padded ? gaps(rank) : Shape{}; }
};

std::string case_name(std::string_view op, DType dtype, const GdnCase& c) {
  std::string name = fmt::format("{} {} B={} T={} H={} HV={} K={} V={}", op, name_of(dtype), c.B,
                                 c.T, c.H, c.HV, c.K, c.V);
  if (!c.cu_seqlens.empty()) name += index_arg("cu_seqlens", c.index_dtype, c.cu_seqlens);
  if (c.pool) name += fmt::format(" S={}", c.pool);
  if (c.slots) name += index_arg("state_indices", c.index_dtype, *c.slots);
  if (c.initial_state) name += " h0";
  if (c.final_state) name += op == "gdn_chunk_bwd" ? " d_final" : " final";
  if (op == "gdn_chunk_bwd" && c.initial_state && !c.dh0) name += " no_dh0";
  if (c.l2norm) name += " l2norm";
  if (c.v_first) name += " v_first";
  if (c.gating) name += " gating";
  if (c.beta_mode != -1) name += fmt::format(" beta_mode={}", c.beta_mode);
  if (c.scale != 0) name += fmt::format(" scale={}", c.scale);
  if (c.layout == Layout::packed) name += " packed";
  if (c.layout == Layout::padded) name += " padded";
  if (c.layout == Layout::compact) name += " strides=NULL";
  return name;
}

// The inputs of a case as tensors, and as the rounded values the reference sees.
struct GdnInputs {
  Array64 q, k, v, g, beta, A_log, dt_bias;
  Tensor tq, tk, tv, tg, tbeta, tA_log, tdt_bias;
};

GdnInputs make_inputs(const Context& ctx, Random& random, DType dtype, const GdnCase& c) {
  GdnInputs in;
  in.q = random.uniform({c.B, c.T, c.H, c.K}, -1, 1);
  in.k = random.uniform({c.B, c.T, c.H, c.K}, -1, 1);
  // Without l2norm the delta rule is only stable for |k| <= 1 (the step
  // I - beta k k^T must not expand): scale k as a normalised key would be.
  if (!c.l2norm) {
    for (double& x : in.k.data) x /= std::sqrt(static_cast<double>(c.K));
  }
  in.v = random.uniform({c.B, c.T, c.HV, c.V}, -1, 1);
  // Raw b where the op applies a sigmoid, else a write strength in (0, 1).
  const bool raw_beta = c.beta_mode >= 1 || (c.beta_mode == -1 && c.gating);
  if (c.gating) {  // raw a; the op applies the Qwen3.5 gate
    in.g = random.uniform({c.B, c.T, c.HV}, -1, 1);
    in.beta =
        raw_beta ? random.uniform({c.B, c.T, c.HV}, -2, 2) : random.uniform({c.B, c.T, c.HV}, 0, 1);
    in.A_log = random.uniform({c.HV}, -1, 1);
    in.dt_bias = random.uniform({c.HV}, -1, 1);
    in.tA_log = Tensor::input(ctx.device, dtype, in.A_log);
    in.tdt_bias = Tensor::input(ctx.device, dtype, in.dt_bias);
  } else {  // log decays of a slowly fading memory
    in.g = random.uniform({c.B, c.T, c.HV}, -0.2, -0.01);
    in.beta =
        raw_beta ? random.uniform({c.B, c.T, c.HV}, -2, 2) : random.uniform({c.B, c.T, c.HV}, 0, 1);
  }
  if (c.layout != Layout::packed) {
    in.tq = Tensor::input(ctx.device, dtype, in.q, c.pad(4));
    in.tk = Tensor::input(ctx.device, dtype, in.k, c.pad(4));
    in.tv = Tensor::input(ctx.device, dtype, in.v, c.pad(4));
    in.tg = Tensor::input(ctx.device, dtype, in.g, c.pad(3));
    in.tbeta = Tensor::input(ctx.device, dtype, in.beta, c.pad(3));
    return in;
  }
  const int64_t P = 2 * c.H * c.K + c.HV * c.V;
  const Tensor qkv = Tensor::empty(ctx.device, dtype, {c.B, c.T, P});
  in.tq = assign(qkv.view(0, {c.B, c.T, c.H, c.K}, {c.T * P, P, c.K, 1}), in.q);
  in.tk = assign(qkv.view(c.H * c.K, {c.B, c.T, c.H, c.K}, {c.T * P, P, c.K, 1}), in.k);
  in.tv = assign(qkv.view(2 * c.H * c.K, {c.B, c.T, c.HV, c.V}, {c.T * P, P, c.V, 1}), in.v);
  const Tensor ba = Tensor::empty(ctx.device, dtype, {c.B, c.T, 2 * c.HV});
  in.tbeta = assign(ba.view(0, {c.B, c.T, c.HV}, {c.T * 2 * c.HV, 2 * c.HV, 1}), in.beta);
  in.tg = assign(ba.view(c.HV, {c.B, c.T, c.HV}, {c.T * 2 * c.HV, 2 * c.HV, 1}), in.g);
  return in;
}

void bind_inputs(Invocation& call, const GdnInputs& in, const GdnCase& c) {
  if (c.layout == Layout::compact) call.null_strides();
  call.tensor("q", in.tq).tensor("k", in.tk).tensor("v", in.tv);
  call.tensor("g", in.tg).tensor("beta", in.tbeta);
  if (in.tA_log) call.tensor("A_log", in.tA_log).tensor("dt_bias", in.tdt_bias);
  call.f64("scale", c.scale).flag("use_qk_l2norm", c.l2norm).flag("state_v_first", c.v_first);
  // beta_mode is newer than the typed entry points (runs pass typed_too only without it).
  if (c.beta_mode != -1) call.i64("beta_mode", c.beta_mode).may_be_refused();
}

ref::GdnOptions options(const GdnInputs& in, const GdnCase& c) {
  return {.scale = c.scale,
          .use_qk_l2norm = c.l2norm,
          .state_v_first = c.v_first,
          .A_log = c.gating ? &in.A_log : nullptr,
          .dt_bias = c.gating ? &in.dt_bias : nullptr,
          .beta_mode = static_cast<int>(c.beta_mode)};
}

void chunk_case(const Context& ctx, const hops_op_desc& op, DType dtype, const GdnCase& c,
                bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    GdnInputs in = make_inputs(ctx, random, dtype, c);
    Invocation call(ctx, op);
    bind_inputs(call, in, c);
    const int64_t N = c.sequences();
    Array64 h0 = random.uniform(c.state_shape(N), -1, 1);
    if (c.initial_state)
      call.tensor("initial_state", Tensor::input(ctx.device, DType::f32, h0, c.pad(4)));
    if (!c.cu_seqlens.empty()) {
      call.tensor("cu_seqlens", Tensor::indices(ctx.index_device(), c.index_dtype, c.cu_seqlens));
    }
    const Tensor o = Tensor::padded(ctx.device, dtype, {c.B, c.T, c.HV, c.V}, c.pad(4));
    call.tensor("o", o);
    Tensor final_state;
    if (c.final_state)
      final_state = Tensor::padded(ctx.device, DType::f32, c.state_shape(N), c.pad(4));
    call.tensor("final_state", final_state);
    call.run(typed_too && c.beta_mode == -1);

    const ref::GdnResult want =
        ref::gdn_forward(in.q, in.k, in.v, in.g, in.beta, c.initial_state ? &h0 : nullptr,
                         c.cu_seqlens.empty() ? nullptr : &c.cu_seqlens, options(in, c));
    verdict.expect_close("o", o, want.o, tolerance(dtype, true));
    if (c.final_state) {
      verdict.expect_close("final_state", final_state, want.final_state, tolerance(dtype, true));
    }
    // threads.cpp's num_threads = 1 check on every dtype and shape: its call is
    // f32, and bf16 takes other products (bf16 ones where the CPU has them).
    verdict.expect(call.same_bytes_on_one_thread(
                       "o",
                       [&] {
                         return Tensor::padded(ctx.device, dtype, {c.B, c.T, c.HV, c.V}, c.pad(4));
                       }),
                   "o: the bytes with num_threads=1 differ from those with all threads");
  });
}

void recurrent_case(const Context& ctx, const hops_op_desc& op, DType dtype, const GdnCase& c,
                    bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    GdnInputs in = make_inputs(ctx, random, dtype, c);
    Invocation call(ctx, op);
    bind_inputs(call, in, c);
    Array64 pool = random.uniform(c.state_shape(c.pool), -1, 1);
    const Tensor state = Tensor::input(ctx.device, DType::f32, pool, c.pad(4));
    const std::vector<uint32_t> state_before = state.read_bits();
    call.tensor("state", state);
    if (c.slots)
      call.tensor("state_indices", Tensor::indices(ctx.index_device(), c.index_dtype, *c.slots));
    if (!c.cu_seqlens.empty()) {
      call.tensor("cu_seqlens", Tensor::indices(ctx.index_device(), c.index_dtype, c.cu_seqlens));
    }
    const Tensor o = Tensor::padded(ctx.device, dtype, {c.B, c.T, c.HV, c.V}, c.pad(4));
    call.tensor("o", o);
    call.run(typed_too && c.beta_mode == -1);

    // Skipped sequences keep the poison in o: the reference leaves NaN there.
    Array64 want_o(o.shape(), NAN);
    ref::gdn_recurrent(in.q, in.k, in.v, in.g, in.beta, pool, c.slots ? &*c.slots : nullptr,
                       c.cu_seqlens.empty() ? nullptr : &c.cu_seqlens, options(in, c), want_o);
    verdict.expect_close("o", o, want_o, tolerance(dtype));
    verdict.expect_close("state", state, pool, tolerance(dtype));
    verdict.expect_slots_kept("state", state_before, state,
                              used_slots(c.pool, c.sequences(), c.slots));
  });
}

// The backward has no fused gate: its gating cases pass g and beta as the
// Qwen3.5 gate makes them from the forward's gating inputs (decays down to
// about e^-6 per token).
void gate_inputs(const Context& ctx, DType dtype, const GdnCase& c, GdnInputs& in) {
  ref::Gating gate = ref::gdn_gating(in.A_log, in.g, in.beta, in.dt_bias);
  in.g = std::move(gate.g);
  in.beta = std::move(gate.beta);
  in.tg = Tensor::input(ctx.device, dtype, in.g, c.pad(3));
  in.tbeta = Tensor::input(ctx.device, dtype, in.beta, c.pad(3));
  in.tA_log = in.tdt_bias = Tensor();
}

void chunk_bwd_case(const Context& ctx, const hops_op_desc& op, DType dtype, const GdnCase& c,
                    bool typed_too) {
  run_case(ctx, case_name(op.name, dtype, c), [&](Random& random, Verdict& verdict) {
    GdnInputs in = make_inputs(ctx, random, dtype, c);
    if (c.gating) gate_inputs(ctx, dtype, c, in);
    Invocation call(ctx, op);
    bind_inputs(call, in, c);
    const int64_t N = c.sequences();
    Array64 h0 = random.uniform(c.state_shape(N), -1, 1);
    Array64 d_o = random.uniform({c.B, c.T, c.HV, c.V}, -1, 1);
    Array64 d_final = random.uniform(c.state_shape(N), -1, 1);
    if (c.initial_state)
      call.tensor("initial_state", Tensor::input(ctx.device, DType::f32, h0, c.pad(4)));
    if (!c.cu_seqlens.empty()) {
      call.tensor("cu_seqlens", Tensor::indices(ctx.index_device(), c.index_dtype, c.cu_seqlens));
    }
    call.tensor("do", Tensor::input(ctx.device, dtype, d_o, c.pad(4)));
    if (c.final_state)
      call.tensor("d_final_state", Tensor::input(ctx.device, DType::f32, d_final, c.pad(4)));
    const Tensor dq = Tensor::padded(ctx.device, dtype, {c.B, c.T, c.H, c.K}, c.pad(4));
    const Tensor dk = Tensor::padded(ctx.device, dtype, {c.B, c.T, c.H, c.K}, c.pad(4));
    const Tensor dv = Tensor::padded(ctx.device, dtype, {c.B, c.T, c.HV, c.V}, c.pad(4));
    const Tensor dg = Tensor::padded(ctx.device, dtype, {c.B, c.T, c.HV}, c.pad(3));
    const Tensor dbeta = Tensor::padded(ctx.device, dtype, {c.B, c.T, c.HV}, c.pad(3));
    Tensor dh0;
    if (c.initial_state && c.dh0)
      dh0 = Tensor::padded(ctx.device, DType::f32, c.state_shape(N), c.pad(4));
    call.tensor("dq", dq).tensor("dk", dk).tensor("dv", dv).tensor("dg", dg);
    call.tensor("dbeta", dbeta).tensor("dh0", dh0);
    call.run(typed_too);

    ref::GdnOptions unfused = options(in, c);
    unfused.A_log = unfused.dt_bias = nullptr;
    const ref::GdnGrads want =
        ref::gdn_backward(in.q, in.k, in.v, in.g, in.beta, c.initial_state ? &h0 : nullptr,
                          c.cu_seqlens.empty() ? nullptr : &c.cu_seqlens, d_o,
                          c.final_state ? &d_final : nullptr, unfused);
    const double tol = tolerance(dtype, true);
    verdict.expect_close("dq", dq, want.dq, tol);
    verdict.expect_close("dk", dk, want.dk, tol);
    verdict.expect_close("dv", dv, want.dv, tol);
    verdict.expect_close("dg", dg, want.dg, tol);
    verdict.expect_close("dbeta", dbeta, want.dbeta, tol);
    if (dh0) verdict.expect_close("dh0", dh0, want.dh0, tol);
    // As in chunk_case; dk sums over a key head's value heads.
    for (const std::string_view name : {"dk", "dv"}) {
      verdict.expect(call.same_bytes_on_one_thread(name,
                                                   [&] {
                                                     return Tensor::padded(
                                                         ctx.device, dtype,
                                                         {c.B, c.T, name == "dk" ? c.H : c.HV,
                                                          name == "dk" ? c.K : c.V},
                                                         c.pad(4));
                                                   }),
                     fmt::format("{}: the bytes with num_threads=1 differ from those with all "
                                 "threads",
                                 name));
    }
  });
}

// Few tokens of K=7,V=5 cost nothing; K=V=128 over 1000 tokens costs seconds
// in the float64 reference, so the big shapes are a handful of cases.
std::vector<GdnCase> chunk_sweep() {
  // clang-format off
  return {
      // T around the chunk size, G = 1..4, small odd K and V.
      {.B = 1, .T = 1, .H = 1, .HV = 1, .K = 7, .V = 5,
       .initial_state = true, .final_state = true, .l2norm = true, .half = true},
      {.B = 2, .T = 63, .H = 1, .HV = 2, .K = 7, .V = 5,
       .initial_state = true, .final_state = true, .l2norm = true},
      {.B = 2, .T = 64, .H = 2, .HV = 6, .K = 7, .V = 5, .final_state = true, .l2norm = true},
      {.B = 1, .T = 65, .H = 1, .HV = 4, .K = 7, .V = 5, .initial_state = true, .l2norm = true},
      {.B = 1, .T = 1000, .H = 1, .HV = 1, .K = 7, .V = 5,
       .initial_state = true, .final_state = true, .half = true, .heavy = true},
      {.B = 2, .T = 0, .H = 1, .HV = 2, .K = 8, .V = 4, .initial_state = true, .final_state = true},
      // Odd K with V a multiple of 16 (the SIMD panels of the OpenCL CPU kernel).
      {.B = 1, .T = 40, .H = 1, .HV = 2, .K = 9, .V = 32,
       .initial_state = true, .final_state = true, .l2norm = true, .half = true},
      // K=32, V=48 with each option.
      {.B = 2, .T = 65, .H = 2, .HV = 2, .K = 32, .V = 48,
       .initial_state = true, .final_state = true, .l2norm = true},
      {.B = 2, .T = 65, .H = 2, .HV = 4, .K = 32, .V = 48,
       .initial_state = true, .final_state = true, .l2norm = true, .v_first = true, .half = true},
      {.B = 2, .T = 65, .H = 2, .HV = 6, .K = 32, .V = 48,
       .final_state = true, .l2norm = true, .gating = true, .half = true},
      {.B = 1, .T = 65, .H = 1, .HV = 4, .K = 32, .V = 48, .scale = 0.3},
      {.B = 2, .T = 65, .H = 2, .HV = 4, .K = 32, .V = 48,
       .initial_state = true, .final_state = true, .l2norm = true, .layout = Layout::compact},
      // Varlen with empty and length-1 sequences.
      {.B = 1, .T = 200, .H = 2, .HV = 4, .K = 16, .V = 24, .cu_seqlens = {0, 0, 1, 64, 64, 200},
       .initial_state = true, .final_state = true, .l2norm = true, .half = true},
      {.B = 1, .T = 200, .H = 2, .HV = 4, .K = 16, .V = 24, .cu_seqlens = {0, 0, 1, 64, 64, 200},
       .final_state = true, .l2norm = true, .v_first = true, .gating = true,
       .index_dtype = DType::i64},
      // Strided inputs and outputs.
      {.B = 2, .T = 100, .H = 2, .HV = 6, .K = 32, .V = 32,
       .initial_state = true, .final_state = true, .l2norm = true, .gating = true,
       .layout = Layout::packed, .half = true},
      {.B = 2, .T = 70, .H = 1, .HV = 3, .K = 16, .V = 8,
       .initial_state = true, .final_state = true, .l2norm = true, .v_first = true,
       .layout = Layout::padded, .half = true},
      // Real head sizes.
      {.B = 1, .T = 1000, .H = 2, .HV = 8, .K = 128, .V = 128,
       .initial_state = true, .final_state = true, .l2norm = true, .heavy = true},
      {.B = 1, .T = 300, .H = 4, .HV = 4, .K = 128, .V = 128, .cu_seqlens = {0, 100, 101, 300},
       .initial_state = true, .final_state = true, .l2norm = true, .v_first = true, .heavy = true},
      // Qwen3.5-35B-A3B layer: H=16, HV=32, K=V=128.
      {.B = 1, .T = 80, .H = 16, .HV = 32, .K = 128, .V = 128,
       .initial_state = true, .final_state = true, .l2norm = true, .gating = true,
       .layout = Layout::packed, .heavy = true},
      {.B = 1, .T = 16, .H = 16, .HV = 32, .K = 128, .V = 128,
       .initial_state = true, .final_state = true, .l2norm = true, .gating = true,
       .layout = Layout::packed, .half = true},
      // Qwen3.5-27B layer: G = 3.
      {.B = 1, .T = 100, .H = 16, .HV = 48, .K = 128, .V = 128,
       .initial_state = true, .final_state = true, .l2norm = true, .gating = true,
       .layout = Layout::packed, .heavy = true},
      // beta_mode (ABI 1.3): the gate without the sigmoid, the sigmoid without the
      // gate, 2 sigmoid (beta in (0, 2)) with and without it.
      {.B = 2, .T = 65, .H = 2, .HV = 4, .K = 32, .V = 48, .initial_state = true,
       .final_state = true, .l2norm = true, .gating = true, .beta_mode = 0, .half = true},
      {.B = 2, .T = 65, .H = 2, .HV = 4, .K = 32, .V = 48, .final_state = true, .l2norm = true,
       .beta_mode = 1},
      {.B = 1, .T = 130, .H = 1, .HV = 2, .K = 16, .V = 24, .initial_state = true,
       .final_state = true, .l2norm = true, .v_first = true, .beta_mode = 2},
      {.B = 1, .T = 200, .H = 2, .HV = 4, .K = 16, .V = 24, .cu_seqlens = {0, 0, 1, 64, 64, 200},
       .initial_state = true, .final_state = true, .l2norm = true, .gating = true, .beta_mode = 2,
       .half = true},
      {.B = 1, .T = 16, .H = 16, .HV = 32, .K = 128, .V = 128, .initial_state = true,
       .final_state = true, .l2norm = true, .gating = true, .beta_mode = 1,
       .layout = Layout::packed},
  };
  // clang-format on
}

// The forward's sweep (its gating cases with g and beta computed by the
// gate, see gate_inputs), its long K=V=128 case with 2 value heads instead of
// 8 (the float64 backward costs several forwards), plus an initial state whose
// gradient is not asked for.
std::vector<GdnCase> chunk_bwd_sweep() {
  std::vector<GdnCase> cases = chunk_sweep();
  // The backward takes beta as it is: no beta_mode.
  std::erase_if(cases, [](const GdnCase& c) { return c.beta_mode != -1; });
  for (GdnCase& c : cases) {
    if (c.T == 1000 && c.K == 128) c.HV = 2;
  }
  // clang-format off
  cases.push_back({.B = 1, .T = 130, .H = 1, .HV = 2, .K = 16, .V = 16,
                   .initial_state = true, .dh0 = false, .l2norm = true});
  // clang-format on
  return cases;
}

std::vector<GdnCase> recurrent_sweep() {
  using Slots = std::vector<int64_t>;
  // clang-format off
  return {
      // Decode: one token per sequence, a permuted pool with a skipped sequence.
      {.B = 4, .T = 1, .H = 2, .HV = 4, .K = 16, .V = 8, .l2norm = true, .gating = true,
       .pool = 6, .slots = Slots{5, -1, 0, 2}, .half = true},
      // Speculative: several tokens per sequence.
      {.B = 3, .T = 4, .H = 1, .HV = 3, .K = 7, .V = 5, .v_first = true, .scale = 0.5,
       .index_dtype = DType::i64, .pool = 3, .slots = Slots{1, 2, 0}},
      {.B = 2, .T = 8, .H = 2, .HV = 4, .K = 128, .V = 128, .l2norm = true, .gating = true,
       .pool = 2, .slots = Slots{1, 0}},
      // Varlen with empty and length-1 sequences, two of them skipped.
      {.B = 1, .T = 9, .H = 2, .HV = 4, .K = 8, .V = 8, .cu_seqlens = {0, 0, 1, 4, 4, 9},
       .l2norm = true, .pool = 6, .slots = Slots{3, -1, 0, 5, -1}, .half = true},
      {.B = 1, .T = 9, .H = 1, .HV = 2, .K = 8, .V = 8, .cu_seqlens = {0, 0, 1, 4, 4, 9},
       .l2norm = true, .index_dtype = DType::i64, .pool = 5},
      // Multi-token decoding at the head size: 2, 3, 4 and 6 tokens (two chunks of
      // HOPS_CUDA_RECURRENT=v2), fused gates.
      {.B = 1, .T = 15, .H = 2, .HV = 4, .K = 128, .V = 128, .cu_seqlens = {0, 2, 5, 9, 15},
       .l2norm = true, .gating = true, .pool = 6, .slots = Slots{4, 1, 5, 0}, .half = true},
      // No state_indices: sequence n uses slot n, the slots past N stay as they are.
      {.B = 2, .T = 2, .H = 1, .HV = 2, .K = 8, .V = 8, .l2norm = true, .pool = 4},
      // No tokens at all: the states stay as they are.
      {.B = 2, .T = 0, .H = 1, .HV = 2, .K = 8, .V = 8, .l2norm = true,
       .pool = 3, .slots = Slots{2, 0}},
      // Every sequence skipped: nothing may change.
      {.B = 2, .T = 1, .H = 1, .HV = 2, .K = 8, .V = 8, .l2norm = true,
       .pool = 2, .slots = Slots{-1, -1}},
      // Strided tensors everywhere.
      {.B = 3, .T = 2, .H = 2, .HV = 2, .K = 16, .V = 16, .v_first = true, .gating = true,
       .layout = Layout::padded, .pool = 3, .slots = Slots{-1, 2, 0}, .half = true},
      {.B = 2, .T = 3, .H = 1, .HV = 2, .K = 8, .V = 8, .l2norm = true,
       .layout = Layout::compact, .pool = 3, .slots = Slots{0, 2}},
      // Qwen3.5 decode step.
      {.B = 2, .T = 1, .H = 16, .HV = 32, .K = 128, .V = 128, .l2norm = true, .gating = true,
       .layout = Layout::packed, .pool = 3, .slots = Slots{2, 0}, .half = true},
      // beta_mode (ABI 1.3).
      {.B = 3, .T = 2, .H = 2, .HV = 4, .K = 16, .V = 8, .l2norm = true, .gating = true,
       .beta_mode = 0, .pool = 4, .slots = Slots{3, -1, 0}, .half = true},
      {.B = 1, .T = 9, .H = 1, .HV = 2, .K = 8, .V = 8, .cu_seqlens = {0, 0, 1, 4, 4, 9},
       .l2norm = true, .beta_mode = 1, .pool = 5},
      {.B = 2, .T = 3, .H = 1, .HV = 3, .K = 16, .V = 16, .v_first = true, .gating = true,
       .beta_mode = 2, .pool = 2, .half = true},
      {.B = 2, .T = 1, .H = 16, .HV = 32, .K = 128, .V = 128, .l2norm = true, .beta_mode = 2,
       .layout = Layout::packed, .pool = 3, .slots = Slots{2, 0}},
  };
  // clang-format on
}

}  // namespace

void gdn_chunk_fwd_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, chunk_sweep(), chunk_case);
}

void gdn_recurrent_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, recurrent_sweep(), recurrent_case);
}

void gdn_chunk_bwd_cases(const Context& ctx, const hops_op_desc& op) {
  sweep(ctx, op, chunk_bwd_sweep(), chunk_bwd_case);
}

std::span<const OpSuite> gdn_suites() {
  static const OpSuite suites[] = {
      {"gdn_chunk_fwd",
       gdn_chunk_fwd_cases,
       gdn_chunk_fwd_typed,
       gdn_chunk_base,
       gdn_chunk_bad_calls,
       gdn_chunk_call,
       {"o", "final_state"}},
      {"gdn_recurrent", gdn_recurrent_cases, gdn_recurrent_typed, gdn_recurrent_base,
       gdn_recurrent_bad_calls},
      {"gdn_gating", gdn_gating_cases, gdn_gating_typed, gdn_gating_base, gdn_gating_bad_calls},
      {"gdn_chunk_bwd",
       gdn_chunk_bwd_cases,
       gdn_chunk_bwd_typed,
       gdn_chunk_bwd_base,
       gdn_chunk_bwd_bad_calls,
       gdn_chunk_bwd_call,
       {"dq", "dk", "dv", "dg", "dbeta", "dh0"}},
  };
  return suites;
}

}  // namespace hops::conformance
