// Gated DeltaNet ops: chunked forward (prefill), recurrent (decode) and the
// gate. Math and conventions: docs/OPS.md.
#pragma once

#include "../op.hpp"

namespace hops {

// What the forwards do to beta before the recurrence (argument beta_mode).
enum class BetaMode : int64_t {
  from_gate = -1,  // sigmoid exactly when A_log is given (ABI 1.0-1.2)
  as_given = 0,
  sigmoid = 1,
  double_sigmoid = 2,  // 2 sigmoid(beta) in (0, 2): negative eigenvalues (FLA's allow_neg_eigval)
};

// The arguments every GDN forward shares, validated.
struct GdnProblem {
  Tensor q, k, v, g, beta, A_log, dt_bias, o;
  Sequences sequences;
  int64_t B = 0, T = 0, H = 0, HV = 0, K = 0, V = 0;
  double scale = 0.0;  // resolved: never 0
  bool use_qk_l2norm = false;
  bool state_v_first = false;               // states [.., V, K]
  BetaMode beta_mode = BetaMode::as_given;  // resolved: never from_gate
  // g is the raw a, gated in the kernel: g = -exp(A_log) softplus(a + dt_bias).
  bool fused_gating() const { return static_cast<bool>(A_log); }
  // Whether beta is treated as before ABI 1.3: sigmoid exactly with the fused gate.
  bool beta_follows_gate() const {
    return beta_mode == (fused_gating() ? BetaMode::sigmoid : BetaMode::as_given);
  }
};

struct GdnChunkFwd : GdnProblem {
  static constexpr const char* kName = "gdn_chunk_fwd";
  static constexpr const char* kDoc =
      "Gated DeltaNet forward over whole sequences with the chunked (WY) algorithm";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 0;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_gdn_chunk_fwd_fn;
  struct Arg {
    enum : int {
      q,
      k,
      v,
      g,
      beta,
      initial_state,
      cu_seqlens,
      A_log,
      dt_bias,
      o,
      final_state,
      scale,
      use_qk_l2norm,
      state_v_first,
      beta_mode
    };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("q", HOPS_DTYPE_FLOATS, "[B,T,H,K]", "queries"),
      input("k", HOPS_DTYPE_FLOATS, "[B,T,H,K]", "keys (dtype of q)"),
      input("v", HOPS_DTYPE_FLOATS, "[B,T,HV,V]", "values (dtype of q); HV % H == 0"),
      input("g", HOPS_DTYPE_FLOATS, "[B,T,HV]",
            "log decay per token and value head (raw a with A_log)"),
      input("beta", HOPS_DTYPE_FLOATS, "[B,T,HV]", "write strength (raw, see beta_mode)"),
      optional_input("initial_state", HOPS_DTYPE_F32, "[N,HV,K,V]",
                     "state before each sequence, f32"),
      optional_input("cu_seqlens", HOPS_DTYPE_INDEX, "[N+1]", "varlen sequence offsets (B == 1)"),
      optional_input("A_log", HOPS_DTYPE_FLOATS, "[HV]",
                     "fused gate: g = -exp(A_log) softplus(g + dt_bias)"),
      optional_input("dt_bias", HOPS_DTYPE_FLOATS, "[HV]", "fused gating bias (with A_log)"),
      output("o", HOPS_DTYPE_FLOATS, "[B,T,HV,V]", "output (dtype of q)"),
      optional_output("final_state", HOPS_DTYPE_F32, "[N,HV,K,V]",
                      "state after each sequence, f32"),
      f64_scalar("scale", 0.0, "query scale; 0 means K^-1/2"),
      bool_scalar("use_qk_l2norm", false, "l2-normalise q and k in the kernel"),
      bool_scalar("state_v_first", false, "states are [N,HV,V,K]"),
      added_in(3, i64_scalar("beta_mode", -1,
                             "-1 sigmoid iff A_log, 0 beta as given, 1 sigmoid(beta), "
                             "2 2*sigmoid(beta)")),
  };

  Tensor initial_state, final_state;
  static GdnChunkFwd check(const Call& call);
};

struct GdnRecurrent : GdnProblem {
  static constexpr const char* kName = "gdn_recurrent";
  static constexpr const char* kDoc =
      "Gated DeltaNet token by token (decode, speculative) on a state pool updated in place";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 0;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_gdn_recurrent_fn;
  struct Arg {
    enum : int {
      q,
      k,
      v,
      g,
      beta,
      state,
      state_indices,
      cu_seqlens,
      A_log,
      dt_bias,
      o,
      scale,
      use_qk_l2norm,
      state_v_first,
      beta_mode
    };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("q", HOPS_DTYPE_FLOATS, "[B,T,H,K]", "queries"),
      input("k", HOPS_DTYPE_FLOATS, "[B,T,H,K]", "keys (dtype of q)"),
      input("v", HOPS_DTYPE_FLOATS, "[B,T,HV,V]", "values (dtype of q); HV % H == 0"),
      input("g", HOPS_DTYPE_FLOATS, "[B,T,HV]", "log decay (raw a with A_log)"),
      input("beta", HOPS_DTYPE_FLOATS, "[B,T,HV]", "write strength (raw, see beta_mode)"),
      in_out("state", HOPS_DTYPE_F32, "[S,HV,K,V]", "state pool, f32, updated in place"),
      optional_input("state_indices", HOPS_DTYPE_INDEX, "[N]",
                     "slot of each sequence, -1 skips it"),
      optional_input("cu_seqlens", HOPS_DTYPE_INDEX, "[N+1]", "varlen sequence offsets (B == 1)"),
      optional_input("A_log", HOPS_DTYPE_FLOATS, "[HV]",
                     "fused gate: g = -exp(A_log) softplus(g + dt_bias)"),
      optional_input("dt_bias", HOPS_DTYPE_FLOATS, "[HV]", "fused gating bias (with A_log)"),
      output("o", HOPS_DTYPE_FLOATS, "[B,T,HV,V]",
             "output (dtype of q); skipped sequences untouched"),
      f64_scalar("scale", 0.0, "query scale; 0 means K^-1/2"),
      bool_scalar("use_qk_l2norm", false, "l2-normalise q and k in the kernel"),
      bool_scalar("state_v_first", false, "states are [S,HV,V,K]"),
      added_in(3, i64_scalar("beta_mode", -1,
                             "-1 sigmoid iff A_log, 0 beta as given, 1 sigmoid(beta), "
                             "2 2*sigmoid(beta)")),
  };

  Tensor state;
  Slots slots;
  static GdnRecurrent check(const Call& call);
};

// The backward of gdn_chunk_fwd. No fused gating (autograd hosts compute g
// and beta with differentiable ops), so A_log, dt_bias and o stay absent.
struct GdnChunkBwd : GdnProblem {
  static constexpr const char* kName = "gdn_chunk_bwd";
  static constexpr const char* kDoc =
      "Gradients of gdn_chunk_fwd (without fused gating) from do and the final state's gradient";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 0;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_gdn_chunk_bwd_fn;
  struct Arg {
    enum : int {
      q,
      k,
      v,
      g,
      beta,
      initial_state,
      cu_seqlens,
      d_o,  // "do", a C keyword
      d_final_state,
      dq,
      dk,
      dv,
      dg,
      dbeta,
      dh0,
      scale,
      use_qk_l2norm,
      state_v_first
    };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("q", HOPS_DTYPE_FLOATS, "[B,T,H,K]", "queries"),
      input("k", HOPS_DTYPE_FLOATS, "[B,T,H,K]", "keys (dtype of q)"),
      input("v", HOPS_DTYPE_FLOATS, "[B,T,HV,V]", "values (dtype of q); HV % H == 0"),
      input("g", HOPS_DTYPE_FLOATS, "[B,T,HV]", "log decay per token and value head"),
      input("beta", HOPS_DTYPE_FLOATS, "[B,T,HV]", "write strength"),
      optional_input("initial_state", HOPS_DTYPE_F32, "[N,HV,K,V]",
                     "state before each sequence, f32"),
      optional_input("cu_seqlens", HOPS_DTYPE_INDEX, "[N+1]", "varlen sequence offsets (B == 1)"),
      input("do", HOPS_DTYPE_FLOATS, "[B,T,HV,V]", "gradient of o (dtype of q)"),
      optional_input("d_final_state", HOPS_DTYPE_F32, "[N,HV,K,V]",
                     "gradient of the final state, f32 (absent: zero)"),
      output("dq", HOPS_DTYPE_FLOATS, "[B,T,H,K]",
             "gradient of q (dtype of q; of the un-normalised q with use_qk_l2norm)"),
      output("dk", HOPS_DTYPE_FLOATS, "[B,T,H,K]", "gradient of k (dtype of q)"),
      output("dv", HOPS_DTYPE_FLOATS, "[B,T,HV,V]", "gradient of v (dtype of q)"),
      output("dg", HOPS_DTYPE_FLOATS, "[B,T,HV]", "gradient of g (dtype of g)"),
      output("dbeta", HOPS_DTYPE_FLOATS, "[B,T,HV]", "gradient of beta (dtype of beta)"),
      optional_output("dh0", HOPS_DTYPE_F32, "[N,HV,K,V]",
                      "gradient of initial_state, f32 (only with initial_state)"),
      f64_scalar("scale", 0.0, "query scale; 0 means K^-1/2"),
      bool_scalar("use_qk_l2norm", false, "q and k were l2-normalised in the forward"),
      bool_scalar("state_v_first", false, "states are [N,HV,V,K]"),
  };

  Tensor initial_state, d_o, d_final_state, dq, dk, dv, dg, dbeta, dh0;
  static GdnChunkBwd check(const Call& call);
};

struct GdnGating {
  static constexpr const char* kName = "gdn_gating";
  static constexpr const char* kDoc = "g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b)";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 0;
  static constexpr int kPrimaryArg = 1;
  using Signature = hops_gdn_gating_fn;
  struct Arg {
    enum : int { A_log, a, b, dt_bias, g, beta, softplus_beta, softplus_threshold };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("A_log", HOPS_DTYPE_FLOATS, "[HV]", "log of the decay rate per value head"),
      input("a", HOPS_DTYPE_FLOATS, "[...,HV]", "gate input"),
      input("b", HOPS_DTYPE_FLOATS, "[...,HV]", "beta input (shape of a)"),
      input("dt_bias", HOPS_DTYPE_FLOATS, "[HV]", "bias added to a"),
      output("g", HOPS_DTYPE_FLOATS, "[...,HV]", "log decay"),
      output("beta", HOPS_DTYPE_FLOATS, "[...,HV]", "write strength"),
      f64_scalar("softplus_beta", 1.0, "softplus(x) = log1p(exp(beta x)) / beta"),
      f64_scalar("softplus_threshold", 20.0, "softplus is linear where beta x > threshold"),
  };

  Tensor A_log, a, b, dt_bias, g, beta;
  int64_t rows = 0, HV = 0;  // a viewed as [rows, HV]
  double softplus_beta = 1.0, softplus_threshold = 20.0;
  static GdnGating check(const Call& call);
};

// The family's ops with their ABI indices (plugin/families.cpp lists the families).
std::span<const OpEntry> gdn_ops();

}  // namespace hops
