// conv1d_bwd (conv1d_bwd.cl): dx and per-run shares of the filter gradients,
// the shares added up in a fixed order (deterministic, no atomics), then
// d_initial_state.
#include "call.hpp"
#include "checked_math.hpp"
#include "conv1d.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "conv1d_bwd.cl";  // after common.cl

constexpr size_t kChannelGroup = 64;           // channels per work-group
constexpr int kTokensPerItem = 16;             // tokens per work-item, each run a share of the sums
constexpr int64_t kMaxWidth = 4;               // MAX_WIDTH in common.cl
constexpr int64_t kShareRows = kMaxWidth + 1;  // right-aligned taps, then the bias
constexpr int64_t kLanes = 16;  // channels per work-item of conv1d_bwd_tokens_channels

size_t groups_for(int64_t items, int64_t group) {
  return static_cast<size_t>((items + group - 1) / group);
}

cl_long stride_or_zero(const Tensor& t, int dim) { return t ? t.stride[dim] : 0; }
cl_long length_or_zero(const Tensor& t) { return t ? t.shape[2] : 0; }

// The arguments conv1d_bwd_tokens and conv1d_bwd_initial_state share.
void forward_args(Launch& launch, const Conv1dBwd& op) {
  launch.tensor(op.x).value(strides4(op.x));
  launch.any_float(op.weight)
      .value(cl_long{op.weight.stride[0]})
      .value(cl_long{op.weight.stride[1]});
  launch.any_float(op.bias).value(stride_or_zero(op.bias, 0));
  launch.any_float(op.initial_state)
      .value(strides4(op.initial_state))
      .value(length_or_zero(op.initial_state));
  launch.tensor(op.dy).value(strides4(op.dy));
  launch.any_float(op.d_final_state)
      .value(strides4(op.d_final_state))
      .value(length_or_zero(op.d_final_state));
}

}  // namespace

void conv1d_bwd(const ExecContext& exec, const Conv1dBwd& op) {
  Call call(exec, {{op.x, "x"},
                   {op.weight, "weight"},
                   {op.bias, "bias"},
                   {op.initial_state, "initial_state"},
                   {op.sequences.cu_seqlens, "cu_seqlens"},
                   {op.dy, "dy"},
                   {op.d_final_state, "d_final_state"},
                   {op.dx, "dx"},
                   {op.dweight, "dweight"},
                   {op.dbias, "dbias"},
                   {op.d_initial_state, "d_initial_state"},
                   {op.seq_idx, "seq_idx"}});
  if (!call.active()) return;
  const IndexArg cu_seqlens = call.index(op.sequences.cu_seqlens);
  const auto silu = static_cast<cl_int>(op.activation == Activation::silu);
  const int64_t runs =
      checked_product(op.kName, op.B, static_cast<int64_t>(groups_for(op.T, kTokensPerItem)));
  const cl_mem partial =
      call.scratch(scratch_bytes(op.kName, runs, kShareRows, op.D, sizeof(float)));
  if (op.seq_idx) {  // sequences told by ids: dense rows, no states
    Launch launch(call.kernel(kProgram, op.x.dtype, "conv1d_bwd_tokens_ids"));
    launch.tensor(op.x).value(strides4(op.x));
    launch.any_float(op.weight)
        .value(cl_long{op.weight.stride[0]})
        .value(cl_long{op.weight.stride[1]});
    launch.any_float(op.bias).value(stride_or_zero(op.bias, 0));
    launch.tensor(op.dy).value(strides4(op.dy));
    launch.tensor(op.dx).value(strides4(op.dx)).value(partial);
    launch.index(call.index(op.seq_idx));
    launch.value(cl_long{op.T}).value(cl_long{op.D}).value(static_cast<cl_int>(op.W)).value(silu);
    launch.value(cl_int{kTokensPerItem});
    const size_t local = launch.group_size(kChannelGroup);
    const size_t groups[3] = {groups_for(op.D, static_cast<int64_t>(local)),
                              groups_for(op.T, kTokensPerItem), static_cast<size_t>(op.B)};
    const size_t locals[3] = {local, 1, 1};
    launch.run(call, 3, groups, locals);
  } else {
    // CPU devices take 16 contiguous channels as float16 (conv1d_bwd.cl).
    const bool vector = call.runtime().cpu_device() && op.D % kLanes == 0 && op.x.stride[2] == 1 &&
                        op.dy.stride[2] == 1 && op.dx.stride[2] == 1;
    Launch launch(call.kernel(kProgram, op.x.dtype,
                              vector ? "conv1d_bwd_tokens_channels" : "conv1d_bwd_tokens"));
    forward_args(launch, op);
    launch.tensor(op.dx).value(strides4(op.dx)).value(partial);
    launch.index(cu_seqlens).value(cl_long{op.sequences.count});
    launch.value(cl_long{op.T}).value(cl_long{op.D}).value(static_cast<cl_int>(op.W)).value(silu);
    launch.value(cl_int{kTokensPerItem});
    const size_t local = launch.group_size(vector ? 8 : kChannelGroup);
    const int64_t items = vector ? op.D / kLanes : op.D;
    const size_t groups[3] = {groups_for(items, static_cast<int64_t>(local)),
                              groups_for(op.T, kTokensPerItem), static_cast<size_t>(op.B)};
    const size_t locals[3] = {local, 1, 1};
    launch.run(call, 3, groups, locals);
  }
  {
    // With no tokens this writes zeros: dweight (and dbias) are always written.
    Launch launch(call.kernel(kProgram, op.x.dtype, "conv1d_bwd_filter"));
    launch.value(partial)
        .value(cl_long{runs})
        .value(cl_long{op.D})
        .value(static_cast<cl_int>(op.W));
    launch.any_float(op.dweight)
        .value(cl_long{op.dweight.stride[0]})
        .value(cl_long{op.dweight.stride[1]});
    launch.any_float(op.dbias).value(stride_or_zero(op.dbias, 0));
    const size_t local = launch.group_size(kChannelGroup);
    const size_t groups[2] = {groups_for(op.D, static_cast<int64_t>(local)),
                              static_cast<size_t>(kShareRows)};
    const size_t locals[2] = {local, 1};
    launch.run(call, 2, groups, locals);
  }
  if (op.d_initial_state) {
    Launch launch(call.kernel(kProgram, op.x.dtype, "conv1d_bwd_initial_state"));
    forward_args(launch, op);
    launch.any_float(op.d_initial_state).value(strides4(op.d_initial_state));
    launch.index(cu_seqlens).value(cl_long{op.T}).value(cl_long{op.D});
    launch.value(static_cast<cl_int>(op.W)).value(silu);
    const size_t local = launch.group_size(kChannelGroup);
    const size_t groups[3] = {groups_for(op.D, static_cast<int64_t>(local)),
                              static_cast<size_t>(op.d_initial_state.shape[2]),
                              static_cast<size_t>(op.sequences.count)};
    const size_t locals[3] = {local, 1, 1};
    launch.run(call, 3, groups, locals);
  }
  call.complete();
}

}  // namespace hops::opencl
