// conv1d_fwd and conv1d_update (conv1d.cl).
#include "conv1d.hpp"
#include "call.hpp"
#include "family.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "conv1d.cl";  // after common.cl

constexpr size_t kChannelGroup = 64;  // channels per work-group
constexpr int kTokensPerItem = 16;    // tokens per work-item in conv1d_fwd
constexpr int64_t kChannels = 16;     // channels per work-item in conv1d_fwd_channels: CHANNELS
constexpr int kVectorTokensPerItem = 64;

size_t groups_for(int64_t items, int64_t group) {
  return static_cast<size_t>((items + group - 1) / group);
}

cl_long stride_or_zero(const Tensor& t, int dim) { return t ? t.stride[dim] : 0; }
cl_long length_or_zero(const Tensor& t) { return t ? t.shape[2] : 0; }

// The filter and bias arguments, shared by both kernels.
void filter_args(Launch& launch, const Tensor& weight, const Tensor& bias) {
  launch.any_float(weight).value(cl_long{weight.stride[0]}).value(cl_long{weight.stride[1]});
  launch.any_float(bias).value(stride_or_zero(bias, 0));
}

}  // namespace

void conv1d_fwd(const ExecContext& exec, const Conv1dFwd& op) {
  Call call(exec, {{op.x, "x"},
                   {op.weight, "weight"},
                   {op.bias, "bias"},
                   {op.initial_state, "initial_state"},
                   {op.sequences.cu_seqlens, "cu_seqlens"},
                   {op.y, "y"},
                   {op.final_state, "final_state"},
                   {op.seq_idx, "seq_idx"}});
  if (!call.active()) return;
  const IndexArg cu_seqlens = call.index(op.sequences.cu_seqlens);
  const auto silu = static_cast<cl_int>(op.activation == Activation::silu);
  {
    // CPU devices take whole float16 runs of contiguous channels (conv1d.cl).
    const bool vector = call.runtime().cpu_device() && op.D % kChannels == 0 &&
                        op.x.stride[2] == 1 && op.y.stride[2] == 1 && !op.seq_idx;
    const int tokens = vector ? kVectorTokensPerItem : kTokensPerItem;
    Launch launch(call.kernel(kProgram, op.x.dtype, vector ? "conv1d_fwd_channels" : "conv1d_fwd"));
    launch.tensor(op.x).value(strides4(op.x));
    filter_args(launch, op.weight, op.bias);
    launch.any_float(op.initial_state)
        .value(strides4(op.initial_state))
        .value(length_or_zero(op.initial_state));
    launch.tensor(op.y).value(strides4(op.y));
    launch.index(cu_seqlens).value(cl_long{op.sequences.count});
    launch.value(cl_long{op.T}).value(cl_long{op.D}).value(static_cast<cl_int>(op.W)).value(silu);
    launch.value(cl_int{tokens});
    if (!vector) launch.index(call.index(op.seq_idx));  // the channels kernel takes no seq_idx
    const int64_t items = vector ? op.D / kChannels : op.D;
    const size_t local = launch.group_size(vector ? 8 : kChannelGroup);
    const size_t groups[3] = {groups_for(items, static_cast<int64_t>(local)),
                              groups_for(op.T, tokens), static_cast<size_t>(op.B)};
    const size_t locals[3] = {local, 1, 1};
    launch.run(call, 3, groups, locals);
  }
  if (op.final_state) {
    Launch launch(call.kernel(kProgram, op.x.dtype, "conv1d_final_state"));
    launch.tensor(op.x).value(strides4(op.x));
    launch.any_float(op.initial_state)
        .value(strides4(op.initial_state))
        .value(length_or_zero(op.initial_state));
    launch.any_float(op.final_state)
        .value(strides4(op.final_state))
        .value(length_or_zero(op.final_state));
    launch.index(cu_seqlens).value(cl_long{op.T}).value(cl_long{op.D});
    const size_t local = launch.group_size(kChannelGroup);
    const size_t groups[3] = {groups_for(op.D, static_cast<int64_t>(local)),
                              static_cast<size_t>(op.final_state.shape[2]),
                              static_cast<size_t>(op.sequences.count)};
    const size_t locals[3] = {local, 1, 1};
    launch.run(call, 3, groups, locals);
  }
  call.complete();
}

void conv1d_update(const ExecContext& exec, const Conv1dUpdate& op) {
  Call call(exec, {{op.x, "x"},
                   {op.state, "state"},
                   {op.weight, "weight"},
                   {op.bias, "bias"},
                   {op.slots.indices, "state_indices"},
                   {op.y, "y"},
                   {op.cache_seqlens, "cache_seqlens"}});
  if (!call.active()) return;
  const IndexArg slots = call.index(op.slots.indices);
  Launch launch(call.kernel(kProgram, op.x.dtype, "conv1d_update"));
  launch.tensor(op.x).value(strides4(op.x));
  launch.any_float(op.state).value(strides4(op.state)).value(cl_long{op.state.shape[2]});
  filter_args(launch, op.weight, op.bias);
  launch.tensor(op.y).value(strides4(op.y));
  launch.index(slots);
  launch.value(cl_long{op.state.shape[0]})
      .value(cl_long{op.N})
      .value(cl_long{op.L})
      .value(cl_long{op.D});
  launch.value(static_cast<cl_int>(op.W))
      .value(static_cast<cl_int>(op.activation == Activation::silu));
  launch.index(call.index(op.cache_seqlens)).value(static_cast<cl_int>(op.zero_skipped));
  const size_t local = launch.group_size(kChannelGroup);
  const size_t groups[2] = {groups_for(op.D, static_cast<int64_t>(local)),
                            static_cast<size_t>(op.N)};
  const size_t locals[2] = {local, 1};
  launch.run(call, 2, groups, locals);
  call.complete();
}

std::span<const Kernel> conv1d_kernels() {
  static constexpr Kernel kernels[] = {
      entry<Conv1dFwd, &conv1d_fwd>(),
      entry<Conv1dUpdate, &conv1d_update>(),
      entry<Conv1dBwd, &conv1d_bwd>(),
  };
  return kernels;
}

}  // namespace hops::opencl
