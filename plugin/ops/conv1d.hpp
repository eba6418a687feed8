// Depthwise causal conv1d: prefill over whole sequences, and decode steps on
// a state pool. Math and conventions: docs/OPS.md.
#pragma once

#include "../op.hpp"

namespace hops {

inline constexpr int64_t kMaxConvWidth = 4;

enum class Activation : int64_t { none = HOPS_ACTIVATION_NONE, silu = HOPS_ACTIVATION_SILU };

struct Conv1dFwd {
  static constexpr const char* kName = "conv1d_fwd";
  static constexpr const char* kDoc =
      "depthwise causal conv1d over whole sequences with optional bias, silu and states";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 0;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_conv1d_fwd_fn;
  struct Arg {
    enum : int {
      x,
      weight,
      bias,
      initial_state,
      cu_seqlens,
      y,
      final_state,
      activation,
      channels_first,
      seq_idx
    };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("x", HOPS_DTYPE_FLOATS, "[B,T,D]",
            "input, channels last ([B,D,T] with channels_first)"),
      input("weight", HOPS_DTYPE_FLOATS, "[D,W]", "filter, width W <= 4"),
      optional_input("bias", HOPS_DTYPE_FLOATS, "[D]", "added before the activation"),
      optional_input("initial_state", HOPS_DTYPE_FLOATS, "[N,D,L0]",
                     "inputs before each sequence, L0 >= W-1"),
      optional_input("cu_seqlens", HOPS_DTYPE_INDEX, "[N+1]", "varlen sequence offsets (B == 1)"),
      output("y", HOPS_DTYPE_FLOATS, "[B,T,D]", "output (shape, layout and dtype of x)"),
      optional_output("final_state", HOPS_DTYPE_FLOATS, "[N,D,L1]",
                      "last L1 inputs of each sequence, L1 >= W-1"),
      i64_scalar("activation", HOPS_ACTIVATION_SILU, "0 none, 1 silu"),
      bool_scalar("channels_first", false, "x and y are [B,D,T]"),
      added_in(3, optional_input("seq_idx", HOPS_DTYPE_INDEX, "[B,T]",
                                 "sequence id per token: taps read only tokens of the same id, "
                                 "an id < 0 gives y = 0 (no states, no cu_seqlens)")),
  };

  Tensor x, weight, bias, initial_state, y, final_state;  // x, y viewed as [B,T,D]
  Tensor seq_idx;  // when given: [B,T] viewed as one run of B*T ids
  Sequences sequences;
  int64_t B = 0, T = 0, D = 0, W = 0;
  Activation activation = Activation::silu;
  static Conv1dFwd check(const Call& call);
};

// Backward of conv1d_fwd, with its argument conventions; the activation is
// recomputed from x (no saved activations), as autograd hosts call it.
struct Conv1dBwd {
  static constexpr const char* kName = "conv1d_bwd";
  static constexpr const char* kDoc =
      "backward of conv1d_fwd: dx, dweight, dbias and d_initial_state from dy and d_final_state";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 0;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_conv1d_bwd_fn;
  struct Arg {
    enum : int {
      x,
      weight,
      bias,
      initial_state,
      cu_seqlens,
      dy,
      d_final_state,
      dx,
      dweight,
      dbias,
      d_initial_state,
      activation,
      channels_first,
      seq_idx
    };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("x", HOPS_DTYPE_FLOATS, "[B,T,D]",
            "forward input, channels last ([B,D,T] with channels_first)"),
      input("weight", HOPS_DTYPE_FLOATS, "[D,W]", "filter, width W <= 4"),
      optional_input("bias", HOPS_DTYPE_FLOATS, "[D]", "forward bias"),
      optional_input("initial_state", HOPS_DTYPE_FLOATS, "[N,D,L0]",
                     "forward initial state, L0 >= W-1"),
      optional_input("cu_seqlens", HOPS_DTYPE_INDEX, "[N+1]", "varlen sequence offsets (B == 1)"),
      input("dy", HOPS_DTYPE_FLOATS, "[B,T,D]", "gradient of y (shape, layout and dtype of x)"),
      optional_input("d_final_state", HOPS_DTYPE_FLOATS, "[N,D,L1]",
                     "gradient of the forward's final state, L1 >= W-1"),
      output("dx", HOPS_DTYPE_FLOATS, "[B,T,D]", "gradient of x (shape, layout and dtype of x)"),
      output("dweight", HOPS_DTYPE_FLOATS, "[D,W]", "gradient of weight (dtype of weight)"),
      optional_output("dbias", HOPS_DTYPE_FLOATS, "[D]",
                      "gradient of bias (dtype of bias); only with bias"),
      optional_output("d_initial_state", HOPS_DTYPE_FLOATS, "[N,D,L0]",
                      "gradient of initial_state (its dtype); only with initial_state"),
      i64_scalar("activation", HOPS_ACTIVATION_SILU, "0 none, 1 silu, as in the forward"),
      bool_scalar("channels_first", false, "x, dy and dx are [B,D,T]"),
      added_in(3, optional_input("seq_idx", HOPS_DTYPE_INDEX, "[B,T]",
                                 "the forward's sequence ids (no states, no cu_seqlens)")),
  };

  // x, dy, dx viewed as [B,T,D]
  Tensor x, weight, bias, initial_state, dy, d_final_state, dx, dweight, dbias, d_initial_state;
  Tensor seq_idx;  // when given: [B,T] viewed as one run of B*T ids
  Sequences sequences;
  int64_t B = 0, T = 0, D = 0, W = 0;
  Activation activation = Activation::silu;
  static Conv1dBwd check(const Call& call);
};

struct Conv1dUpdate {
  static constexpr const char* kName = "conv1d_update";
  static constexpr const char* kDoc =
      "causal conv1d decode steps on a state pool [S,D,state_len] updated in place";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 0;
  static constexpr int kPrimaryArg = 0;
  using Signature = hops_conv1d_update_fn;
  struct Arg {
    enum : int {
      x,
      state,
      weight,
      bias,
      state_indices,
      y,
      activation,
      cache_seqlens,
      zero_skipped
    };
  };
  static constexpr hops_arg_desc kArgs[] = {
      input("x", HOPS_DTYPE_FLOATS, "[N,L,D]", "new tokens ([N,D] for one)"),
      in_out("state", HOPS_DTYPE_FLOATS, "[S,D,state_len]", "state pool, state_len >= W-1"),
      input("weight", HOPS_DTYPE_FLOATS, "[D,W]", "filter, width W <= 4"),
      optional_input("bias", HOPS_DTYPE_FLOATS, "[D]", "added before the activation"),
      optional_input("state_indices", HOPS_DTYPE_INDEX, "[N]",
                     "slot of each sequence, -1 skips it"),
      output("y", HOPS_DTYPE_FLOATS, "[N,L,D]", "output (shape and dtype of x)"),
      i64_scalar("activation", HOPS_ACTIVATION_SILU, "0 none, 1 silu"),
      added_in(3, optional_input("cache_seqlens", HOPS_DTYPE_INDEX, "[N]",
                                 "tokens seen per sequence: the state is a circular buffer, "
                                 "written from column cache_seqlens % state_len")),
      added_in(3, bool_scalar("zero_skipped", false,
                              "y rows of skipped sequences (state_indices -1) are written 0")),
  };

  Tensor x, state, weight, bias, y;  // x, y viewed as [N,L,D]
  Tensor cache_seqlens;              // [N] when the state is circular
  bool zero_skipped = false;
  Slots slots;
  int64_t N = 0, L = 0, D = 0, W = 0;
  Activation activation = Activation::silu;
  static Conv1dUpdate check(const Call& call);
};

// The family's ops with their ABI indices (plugin/families.cpp lists the families).
std::span<const OpEntry> conv1d_ops();

}  // namespace hops
