#include "conv1d.hpp"

#include <utility>

namespace hops {

namespace {

Activation check_activation(const Call& call, int arg) {
  const int64_t code = call.i64(arg);
  if (code != HOPS_ACTIVATION_NONE && code != HOPS_ACTIVATION_SILU) {
    call.fail(arg, "expected 0 (none) or 1 (silu), got {}", code);
  }
  return static_cast<Activation>(code);
}

int64_t check_width(const Call& call, int weight_arg, const Shapes& dims) {
  const int64_t width = dims["W"];
  if (width < 1 || width > kMaxConvWidth) {
    call.fail(weight_arg, "width W expected 1..{}, got {}", kMaxConvWidth, width);
  }
  return width;
}

void check_state_length(const Call& call, int arg, int64_t length, int64_t width) {
  if (call.tensor(arg) && length < width - 1) {
    call.fail(arg, "state length {} is shorter than W-1 = {}", length, width - 1);
  }
}

// A tensor of tokens: [B,T,D], or [B,D,T] with channels_first.
void expect_tokens(Shapes& dims, int arg, bool channels_first) {
  if (channels_first) {
    dims.expect(arg, {"B", "D", "T"});
  } else {
    dims.expect(arg, {"B", "T", "D"});
  }
}

// A gradient output only exists for an input that the call has.
void require_input_for(const Call& call, int gradient_arg, int input_arg) {
  if (call.tensor(gradient_arg) && !call.tensor(input_arg)) {
    call.fail(gradient_arg, "is given but '{}' is not: there is no such input to differentiate",
              call.arg_name(input_arg));
  }
}

// seq_idx [B,T] packs sequences by id (Dao's causal-conv1d): it replaces
// cu_seqlens and states, which it cannot be combined with. Row-major
// contiguous, as Dao's, so kernels read it as one run of B*T ids (the
// returned view).
Tensor check_seq_idx(const Call& call, Shapes& dims, int seq_idx_arg,
                     std::initializer_list<int> excluded) {
  Tensor ids = call.tensor(seq_idx_arg);
  if (!ids) return ids;
  dims.expect(seq_idx_arg, {"B", "T"});
  for (int arg : excluded) {
    if (call.tensor(arg)) {
      call.fail(seq_idx_arg, "cannot be combined with '{}' (sequences are told by their ids)",
                call.arg_name(arg));
    }
  }
  const int64_t B = ids.shape[0], T = ids.shape[1];
  if ((T > 1 && ids.stride[1] != 1) || (B > 1 && ids.stride[0] != T)) {
    call.fail(seq_idx_arg, "must be contiguous (row-major [B,T]), got strides [{},{}]",
              ids.stride[0], ids.stride[1]);
  }
  ids.ndim = 1;
  ids.shape = {B * T};
  ids.stride = {1};
  return ids;
}

// [B,D,T] seen as [B,T,D]: kernels only ever index channels last.
Tensor channels_last(Tensor t) {
  std::swap(t.shape[1], t.shape[2]);
  std::swap(t.stride[1], t.stride[2]);
  return t;
}

// [N,D] seen as [N,1,D].
Tensor with_token_dim(Tensor t) {
  if (t.ndim != 2) return t;
  t.ndim = 3;
  t.shape = {t.shape[0], 1, t.shape[1]};
  t.stride = {t.stride[0], t.stride[1], t.stride[1]};
  return t;
}

}  // namespace

Conv1dFwd Conv1dFwd::check(const Call& call) {
  Conv1dFwd op;
  Shapes dims(call);
  const bool channels_first = call.flag(Arg::channels_first);
  for (int arg : {Arg::x, Arg::y}) expect_tokens(dims, arg, channels_first);
  call.same_dtype(Arg::y, Arg::x);
  dims.expect(Arg::weight, {"D", "W"});
  dims.expect(Arg::bias, {"D"});
  op.B = dims["B"], op.T = dims["T"], op.D = dims["D"];
  op.W = check_width(call, Arg::weight, dims);
  op.sequences = check_sequences(call, Arg::cu_seqlens, op.B, op.T);
  dims.bind("N", op.sequences.count, op.sequences.cu_seqlens ? Arg::cu_seqlens : Arg::x);
  dims.expect(Arg::initial_state, {"N", "D", "L0"});
  dims.expect(Arg::final_state, {"N", "D", "L1"});
  op.initial_state = call.tensor(Arg::initial_state);
  op.final_state = call.tensor(Arg::final_state);
  check_state_length(call, Arg::initial_state, op.initial_state ? op.initial_state.shape[2] : 0,
                     op.W);
  check_state_length(call, Arg::final_state, op.final_state ? op.final_state.shape[2] : 0, op.W);
  op.activation = check_activation(call, Arg::activation);
  op.x = call.tensor(Arg::x), op.y = call.tensor(Arg::y);
  if (channels_first) op.x = channels_last(op.x), op.y = channels_last(op.y);
  op.weight = call.tensor(Arg::weight), op.bias = call.tensor(Arg::bias);
  op.seq_idx = check_seq_idx(call, dims, Arg::seq_idx,
                             {Arg::cu_seqlens, Arg::initial_state, Arg::final_state});
  return op;
}

Conv1dBwd Conv1dBwd::check(const Call& call) {
  Conv1dBwd op;
  Shapes dims(call);
  const bool channels_first = call.flag(Arg::channels_first);
  for (int arg : {Arg::x, Arg::dy, Arg::dx}) {
    expect_tokens(dims, arg, channels_first);
    call.same_dtype(arg, Arg::x);
  }
  dims.expect(Arg::weight, {"D", "W"});
  dims.expect(Arg::dweight, {"D", "W"});
  call.same_dtype(Arg::dweight, Arg::weight);
  require_input_for(call, Arg::dbias, Arg::bias);
  dims.expect(Arg::bias, {"D"});
  dims.expect(Arg::dbias, {"D"});
  call.same_dtype(Arg::dbias, Arg::bias);
  op.B = dims["B"], op.T = dims["T"], op.D = dims["D"];
  op.W = check_width(call, Arg::weight, dims);
  op.sequences = check_sequences(call, Arg::cu_seqlens, op.B, op.T);
  dims.bind("N", op.sequences.count, op.sequences.cu_seqlens ? Arg::cu_seqlens : Arg::x);
  require_input_for(call, Arg::d_initial_state, Arg::initial_state);
  dims.expect(Arg::initial_state, {"N", "D", "L0"});
  dims.expect(Arg::d_initial_state, {"N", "D", "L0"});
  call.same_dtype(Arg::d_initial_state, Arg::initial_state);
  dims.expect(Arg::d_final_state, {"N", "D", "L1"});
  op.initial_state = call.tensor(Arg::initial_state);
  op.d_final_state = call.tensor(Arg::d_final_state);
  check_state_length(call, Arg::initial_state, op.initial_state ? op.initial_state.shape[2] : 0,
                     op.W);
  check_state_length(call, Arg::d_final_state, op.d_final_state ? op.d_final_state.shape[2] : 0,
                     op.W);
  op.activation = check_activation(call, Arg::activation);
  op.x = call.tensor(Arg::x), op.dy = call.tensor(Arg::dy), op.dx = call.tensor(Arg::dx);
  if (channels_first) {
    op.x = channels_last(op.x), op.dy = channels_last(op.dy), op.dx = channels_last(op.dx);
  }
  op.weight = call.tensor(Arg::weight), op.bias = call.tensor(Arg::bias);
  op.dweight = call.tensor(Arg::dweight), op.dbias = call.tensor(Arg::dbias);
  op.d_initial_state = call.tensor(Arg::d_initial_state);
  op.seq_idx = check_seq_idx(call, dims, Arg::seq_idx,
                             {Arg::cu_seqlens, Arg::initial_state, Arg::d_final_state});
  return op;
}

Conv1dUpdate Conv1dUpdate::check(const Call& call) {
  Conv1dUpdate op;
  Shapes dims(call);
  const Tensor& x = call.tensor(Arg::x);
  if (x.ndim == 2) {
    dims.expect(Arg::x, {"N", "D"});
    dims.expect(Arg::y, {"N", "D"});
  } else {
    dims.expect(Arg::x, {"N", "L", "D"});
    dims.expect(Arg::y, {"N", "L", "D"});
  }
  call.same_dtype(Arg::y, Arg::x);
  dims.expect(Arg::weight, {"D", "W"});
  dims.expect(Arg::bias, {"D"});
  dims.expect(Arg::state, {"S", "D", "SL"});
  op.W = check_width(call, Arg::weight, dims);
  check_state_length(call, Arg::state, dims["SL"], op.W);
  op.x = with_token_dim(x), op.y = with_token_dim(call.tensor(Arg::y));
  op.N = op.x.shape[0], op.L = op.x.shape[1], op.D = op.x.shape[2];
  op.slots = check_slots(call, Arg::state_indices, op.N, dims["S"]);
  op.state = call.tensor(Arg::state);
  op.weight = call.tensor(Arg::weight), op.bias = call.tensor(Arg::bias);
  op.activation = check_activation(call, Arg::activation);
  op.zero_skipped = call.flag(Arg::zero_skipped);
  op.cache_seqlens = call.tensor(Arg::cache_seqlens);
  if (op.cache_seqlens) {
    dims.expect(Arg::cache_seqlens, {"N"});
    if (dims["SL"] == 0) call.fail(Arg::cache_seqlens, "needs a state of at least one column");
    // Device-resident counts are not read here: the kernels take them modulo
    // state_len into [0, state_len).
    if (host_accessible(op.cache_seqlens.device)) {
      for (int64_t n = 0; n < op.N; ++n) {
        const int64_t seen = read_index(op.cache_seqlens, n);
        if (seen < 0) call.fail(Arg::cache_seqlens, "entry {} is {}, expected >= 0", n, seen);
      }
    }
  }
  return op;
}

std::span<const OpEntry> conv1d_ops() {
  static const OpEntry ops[] = {
      {4, &op_def<Conv1dFwd>()},
      {5, &op_def<Conv1dUpdate>()},
      {7, &op_def<Conv1dBwd>()},
  };
  return ops;
}

}  // namespace hops
