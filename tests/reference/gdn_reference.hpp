// The gdn family's float64 oracle (see reference.hpp).
#pragma once

#include <vector>

#include "reference.hpp"

namespace hops::ref {

// g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b); a, b [..., HV].
// softplus(x) = log1p(exp(softplus_beta*x))/softplus_beta, or x where softplus_beta*x > threshold.
struct Gating {
  Array64 g, beta;
};
Gating gdn_gating(const Array64& A_log, const Array64& a, const Array64& b, const Array64& dt_bias,
                  double softplus_beta = 1.0, double softplus_threshold = 20.0);

struct GdnOptions {
  double scale = 0.0;  // 0: K^-1/2
  bool use_qk_l2norm = false;
  bool state_v_first = false;      // states are [.., V, K] instead of [.., K, V]
  const Array64* A_log = nullptr;  // fused gate: g holds a (raw)
  const Array64* dt_bias = nullptr;
  // beta as the ops' beta_mode says: -1 sigmoid exactly when A_log is given,
  // 0 as given, 1 sigmoid(beta), 2 2*sigmoid(beta).
  int beta_mode = -1;
};

// The delta rule, token by token. q,k [B,T,H,K], v [B,T,HV,V], g,beta [B,T,HV],
// h0 [N,HV,K,V] or null -> o [B,T,HV,V], final state [N,HV,K,V].
// With options.state_v_first, h0 and the final state are [N,HV,V,K] instead
// (stored[v][k] = S[k][v]). An empty sequence's final state is its h0 (or 0).
struct GdnResult {
  Array64 o, final_state;
};
GdnResult gdn_forward(const Array64& q, const Array64& k, const Array64& v, const Array64& g,
                      const Array64& beta, const Array64* h0,
                      const std::vector<int64_t>* cu_seqlens, const GdnOptions& options);

// The gradients of gdn_forward, given d_o [B,T,HV,V] (the gradient of o) and
// d_final_state (of the final state; null: 0): token by token in reverse,
// from the states the forward passes through. dq and dk are with respect to
// the un-normalised q and k when options.use_qk_l2norm, and sum over the G
// value heads that read a key head. dh0 (the gradient of h0, or of a zero
// initial state when h0 is null) is laid out like the states. No fused
// gating: options.A_log must be null.
struct GdnGrads {
  Array64 dq, dk, dv, dg, dbeta, dh0;
};
GdnGrads gdn_backward(const Array64& q, const Array64& k, const Array64& v, const Array64& g,
                      const Array64& beta, const Array64* h0,
                      const std::vector<int64_t>* cu_seqlens, const Array64& d_o,
                      const Array64* d_final_state, const GdnOptions& options);

// Decode against a state pool [S,HV,K,V], updated in place. Sequence n uses
// slot state_indices[n] (slot n when null); -1 skips it: its o rows keep the
// values they had on entry (pass o pre-filled with the poison), and its slot
// is untouched. The pool is [S,HV,V,K] with options.state_v_first. o must be
// [B,T,HV,V]; slots must be distinct (else the updates would alias).
void gdn_recurrent(const Array64& q, const Array64& k, const Array64& v, const Array64& g,
                   const Array64& beta, Array64& state_pool,
                   const std::vector<int64_t>* state_indices,
                   const std::vector<int64_t>* cu_seqlens, const GdnOptions& options, Array64& o);

}  // namespace hops::ref
