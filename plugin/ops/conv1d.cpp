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
  for (int arg : {Arg::x, Arg::y}) {
    if (channels_first) {
      dims.expect(arg, {"B", "D", "T"});
    } else {
      dims.expect(arg, {"B", "T", "D"});
    }
  }
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
  return op;
}

}  // namespace hops
