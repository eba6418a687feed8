// The float64 oracle: every hops op written as plain loops, to be read.
//
// Arrays are dense row-major float64 (Array64). Shapes and conventions are the
// ones of docs/OPS.md; the conformance runner converts the provider's tensors
// (any dtype, any strides) to and from Array64.
//
// Every function checks its arguments (shapes, cu_seqlens, slots) and throws
// std::invalid_argument on misuse, and Array64::at is bounds-checked: a wrong
// call is a bug in the test and must fail loudly.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace hops::ref {

struct Array64 {
  std::vector<int64_t> shape;
  std::vector<double> data;

  Array64() = default;
  explicit Array64(std::vector<int64_t> dims, double fill = 0.0);
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
  int64_t dim(int i) const { return shape[i < 0 ? shape.size() + i : i]; }
  // Row-major element access; the number of indices equals the rank.
  double& at(std::initializer_list<int64_t> index);
  double at(std::initializer_list<int64_t> index) const;
};

// One (batch row, token range) per sequence: dense inputs give N=B sequences
// [0,T) of row n; varlen inputs (B=1) give [cu[n], cu[n+1]) of row 0.
struct Sequence {
  int64_t batch, begin, end;
};
std::vector<Sequence> sequences(int64_t B, int64_t T, const std::vector<int64_t>* cu_seqlens);

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
  const Array64* A_log = nullptr;  // fused gating: g holds a, beta holds b (raw)
  const Array64* dt_bias = nullptr;
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

enum class Activation { none = 0, silu = 1 };

// Depthwise causal conv over channels-last x [B,T,D], weight [D,W], bias [D],
// initial state [N,D,L0] (L0 >= W-1) -> y [B,T,D], final state [N,D,final_len]
// (shape [N,D,0] when final_len == 0). Inputs before a sequence's start
// are the last columns of its initial state, or 0 (no state, or further back
// than L0). Final column c is the input at position len - final_len + c of
// the sequence (negative: the initial state's columns, then 0).
struct Conv1dResult {
  Array64 y, final_state;
};
Conv1dResult conv1d_fwd(const Array64& x, const Array64& weight, const Array64* bias,
                        const Array64* initial_state, const std::vector<int64_t>* cu_seqlens,
                        Activation activation, int64_t final_len);

// The gradients of conv1d_fwd given dy [B,T,D] and d_final_state [N,D,L1]
// (null: 0, as if the forward returned no final state): dx [B,T,D],
// dweight [D,W], dbias [D] (the gradient of a bias of 0 when bias is null),
// d_initial_state [N,D,L0] ([N,D,0] when initial_state is null). The
// activation is recomputed from x.
struct Conv1dGrads {
  Array64 dx, dweight, dbias, d_initial_state;
};
Conv1dGrads conv1d_bwd(const Array64& x, const Array64& weight, const Array64* bias,
                       const Array64* initial_state, const std::vector<int64_t>* cu_seqlens,
                       const Array64& dy, const Array64* d_final_state, Activation activation);

// Decode: x [N,L,D], state pool [S,D,state_len] updated in place, slot
// state_indices[n] (n when null, -1 skips: y rows keep their entry values).
// Requires state_len >= W-1; the new state is the last state_len inputs of
// [old state columns, new tokens]. y must be [N,L,D].
void conv1d_update(const Array64& x, Array64& state_pool, const Array64& weight,
                   const Array64* bias, const std::vector<int64_t>* state_indices,
                   Activation activation, Array64& y);

}  // namespace hops::ref
