#include "gdn.hpp"

#include <algorithm>
#include <cmath>

#include "checked_math.hpp"

namespace hops {

namespace {

// Checks the arguments every GDN op shares; `Arg` is the op's index enum.
template <class Arg>
void check_problem(const Call& call, Shapes& dims, GdnProblem& p) {
  dims.expect(Arg::q, {"B", "T", "H", "K"});
  dims.expect(Arg::k, {"B", "T", "H", "K"});
  dims.expect(Arg::v, {"B", "T", "HV", "V"});
  dims.expect(Arg::g, {"B", "T", "HV"});
  dims.expect(Arg::beta, {"B", "T", "HV"});
  call.same_dtype(Arg::k, Arg::q);
  call.same_dtype(Arg::v, Arg::q);
  p.B = dims["B"], p.T = dims["T"], p.H = dims["H"], p.HV = dims["HV"];
  p.K = dims["K"], p.V = dims["V"];
  // The kernels divide by H and by G = HV / H: both are proven positive here.
  if (p.H == 0 || p.HV == 0 || p.HV % p.H != 0) {
    call.fail(Arg::v, "value heads HV = {} must be a positive multiple of the key heads H = {}",
              p.HV, p.H);
  }
  if (p.K == 0 || p.V == 0) call.fail(Arg::v, "K = {} and V = {} must be positive", p.K, p.V);
  // Every sequence has a state [HV,K,V] (in the kernels' scratch when no
  // state tensor is given): it obeys the tensors' element bound, whatever T is.
  if (!try_product(kMaxElements, p.HV, p.K, p.V)) {
    call.fail(Arg::v, "a sequence's state [HV,K,V] = [{},{},{}] would have more than 2^48 elements",
              p.HV, p.K, p.V);
  }
  p.q = call.tensor(Arg::q), p.k = call.tensor(Arg::k), p.v = call.tensor(Arg::v);
  p.g = call.tensor(Arg::g), p.beta = call.tensor(Arg::beta);
  p.sequences = check_sequences(call, Arg::cu_seqlens, p.B, p.T);
  const double scale = call.f64(Arg::scale);
  if (scale < 0) call.fail(Arg::scale, "expected >= 0 (0 means K^-1/2), got {}", scale);
  p.scale = scale == 0 ? 1.0 / std::sqrt(static_cast<double>(p.K)) : scale;
  p.use_qk_l2norm = call.flag(Arg::use_qk_l2norm);
  p.state_v_first = call.flag(Arg::state_v_first);
}

// The forwards' own arguments: the output o and the optional fused gate.
template <class Arg>
void check_forward(const Call& call, Shapes& dims, GdnProblem& p) {
  dims.expect(Arg::A_log, {"HV"});
  dims.expect(Arg::dt_bias, {"HV"});
  dims.expect(Arg::o, {"B", "T", "HV", "V"});
  call.same_dtype(Arg::o, Arg::q);
  if (static_cast<bool>(call.tensor(Arg::A_log)) != static_cast<bool>(call.tensor(Arg::dt_bias))) {
    call.fail(Arg::dt_bias, "A_log and dt_bias are given together or not at all");
  }
  p.o = call.tensor(Arg::o);
  p.A_log = call.tensor(Arg::A_log), p.dt_bias = call.tensor(Arg::dt_bias);
  const int64_t mode = call.i64(Arg::beta_mode);
  if (mode < -1 || mode > 2) {
    call.fail(Arg::beta_mode, "expected -1 (sigmoid iff A_log), 0, 1 or 2, got {}", mode);
  }
  p.beta_mode = static_cast<BetaMode>(mode);
  if (p.beta_mode == BetaMode::from_gate) {
    p.beta_mode = p.fused_gating() ? BetaMode::sigmoid : BetaMode::as_given;
  }
}

// States are [count,HV,K,V], or [count,HV,V,K] when state_v_first.
void expect_state(Shapes& dims, int arg, std::string_view count, bool v_first) {
  if (v_first) {
    dims.expect(arg, {count, "HV", "V", "K"});
  } else {
    dims.expect(arg, {count, "HV", "K", "V"});
  }
}

}  // namespace

GdnChunkFwd GdnChunkFwd::check(const Call& call) {
  GdnChunkFwd op;
  Shapes dims(call);
  check_problem<Arg>(call, dims, op);
  check_forward<Arg>(call, dims, op);
  dims.bind("N", op.sequences.count, op.sequences.cu_seqlens ? Arg::cu_seqlens : Arg::q);
  expect_state(dims, Arg::initial_state, "N", op.state_v_first);
  expect_state(dims, Arg::final_state, "N", op.state_v_first);
  op.initial_state = call.tensor(Arg::initial_state);
  op.final_state = call.tensor(Arg::final_state);
  return op;
}

GdnChunkBwd GdnChunkBwd::check(const Call& call) {
  GdnChunkBwd op;
  Shapes dims(call);
  check_problem<Arg>(call, dims, op);
  dims.expect(Arg::d_o, {"B", "T", "HV", "V"});
  dims.expect(Arg::dq, {"B", "T", "H", "K"});
  dims.expect(Arg::dk, {"B", "T", "H", "K"});
  dims.expect(Arg::dv, {"B", "T", "HV", "V"});
  dims.expect(Arg::dg, {"B", "T", "HV"});
  dims.expect(Arg::dbeta, {"B", "T", "HV"});
  for (int arg : {Arg::d_o, Arg::dq, Arg::dk, Arg::dv}) call.same_dtype(arg, Arg::q);
  call.same_dtype(Arg::dg, Arg::g);
  call.same_dtype(Arg::dbeta, Arg::beta);
  dims.bind("N", op.sequences.count, op.sequences.cu_seqlens ? Arg::cu_seqlens : Arg::q);
  for (int arg : {Arg::initial_state, Arg::d_final_state, Arg::dh0}) {
    expect_state(dims, arg, "N", op.state_v_first);
  }
  op.initial_state = call.tensor(Arg::initial_state);
  op.dh0 = call.tensor(Arg::dh0);
  if (op.dh0 && !op.initial_state) {
    call.fail(Arg::dh0,
              "is given without initial_state: there is no initial state to differentiate");
  }
  op.d_o = call.tensor(Arg::d_o), op.d_final_state = call.tensor(Arg::d_final_state);
  op.dq = call.tensor(Arg::dq), op.dk = call.tensor(Arg::dk), op.dv = call.tensor(Arg::dv);
  op.dg = call.tensor(Arg::dg), op.dbeta = call.tensor(Arg::dbeta);
  return op;
}

GdnRecurrent GdnRecurrent::check(const Call& call) {
  GdnRecurrent op;
  Shapes dims(call);
  check_problem<Arg>(call, dims, op);
  check_forward<Arg>(call, dims, op);
  expect_state(dims, Arg::state, "S", op.state_v_first);
  op.state = call.tensor(Arg::state);
  op.slots = check_slots(call, Arg::state_indices, op.sequences.count, dims["S"]);
  return op;
}

GdnGating GdnGating::check(const Call& call) {
  GdnGating op;
  op.A_log = call.tensor(Arg::A_log), op.a = call.tensor(Arg::a), op.b = call.tensor(Arg::b);
  op.dt_bias = call.tensor(Arg::dt_bias), op.g = call.tensor(Arg::g),
  op.beta = call.tensor(Arg::beta);
  if (op.a.ndim < 1) call.fail(Arg::a, "rank expected >= 1 ([...,HV]), got 0");
  for (int arg : {Arg::b, Arg::g, Arg::beta}) {
    const Tensor& t = call.tensor(arg);
    if (t.ndim != op.a.ndim ||
        !std::equal(t.shape.begin(), t.shape.begin() + t.ndim, op.a.shape.begin())) {
      call.fail(arg, "shape must equal the shape of 'a'");
    }
  }
  Shapes dims(call);
  dims.bind("HV", op.a.size(-1), Arg::a);
  dims.expect(Arg::A_log, {"HV"});
  dims.expect(Arg::dt_bias, {"HV"});
  op.HV = op.a.size(-1);
  op.rows = op.HV ? op.a.numel() / op.HV : 0;
  op.softplus_beta = call.f64(Arg::softplus_beta);
  op.softplus_threshold = call.f64(Arg::softplus_threshold);
  if (op.softplus_beta <= 0)
    call.fail(Arg::softplus_beta, "expected > 0, got {}", op.softplus_beta);
  return op;
}

std::span<const OpEntry> gdn_ops() {
  static const OpEntry ops[] = {
      {0, &op_def<GdnChunkFwd>()},
      {1, &op_def<GdnRecurrent>()},
      {2, &op_def<GdnGating>()},
      {8, &op_def<GdnChunkBwd>()},
  };
  return ops;
}

}  // namespace hops
