// The conv1d family's host side: conv1d_fwd and conv1d_update (conv1d.cu),
// conv1d_bwd (conv1d_bwd.cu).
#include "cuda_host.hpp"
#include "ops/conv1d.hpp"

namespace hops::cuda {

namespace {

bool aligned16(const Arg& a) { return (reinterpret_cast<uintptr_t>(a.data) & 15u) == 0; }

void conv1d_fwd(const ExecContext& context, const Conv1dFwd& op) {
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu(op.sequences.cu_seqlens, guard, op.kName);
  const StagedIndex ids(op.seq_idx, guard, op.kName);
  ConvParams p{make_arg(op.x),
               make_arg(op.y),
               make_arg(op.weight),
               make_arg(op.bias),
               make_arg(op.initial_state),
               make_arg(op.final_state),
               cu.get(),
               ids.get(),
               op.B,
               op.T,
               op.D,
               op.sequences.count,
               op.W,
               op.activation == Activation::silu,
               0};
  const int64_t vec = 16 / dtype_size(op.x.dtype);
  p.vector = op.x.stride[2] == 1 && op.y.stride[2] == 1 && op.D % vec == 0 &&
             op.x.stride[1] % vec == 0 && op.y.stride[1] % vec == 0 && op.x.stride[0] % vec == 0 &&
             op.y.stride[0] % vec == 0 && aligned16(p.x) && aligned16(p.y);
  check(launch_conv1d_fwd(p, code_of(op.x.dtype), guard.stream()), op.kName,
        "conv1d kernel launch");
}

void conv1d_update(const ExecContext& context, const Conv1dUpdate& op) {
  if (op.N * op.D == 0) return;
  const DeviceGuard guard(context, op.kName);
  const StagedIndex slots(op.slots.indices, guard, op.kName);
  const StagedIndex seen(op.cache_seqlens, guard, op.kName);
  const ConvUpdateParams p{make_arg(op.x),
                           make_arg(op.y),
                           make_arg(op.state),
                           make_arg(op.weight),
                           make_arg(op.bias),
                           slots.get(),
                           op.N,
                           op.L,
                           op.D,
                           op.W,
                           op.state.shape[0],
                           op.state.shape[2],
                           op.activation == Activation::silu,
                           seen.get(),
                           op.zero_skipped};
  check(launch_conv1d_update(p, code_of(op.x.dtype), guard.stream()), op.kName,
        "conv1d_update kernel launch");
}

void conv1d_bwd(const ExecContext& context, const Conv1dBwd& op) {
  if (op.D == 0) return;
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu(op.sequences.cu_seqlens, guard, op.kName);
  const StagedIndex ids(op.seq_idx, guard, op.kName);
  ConvBwdParams p{make_arg(op.x),
                  make_arg(op.weight),
                  make_arg(op.bias),
                  make_arg(op.initial_state),
                  make_arg(op.dy),
                  make_arg(op.d_final_state),
                  make_arg(op.dx),
                  make_arg(op.dweight),
                  make_arg(op.dbias),
                  make_arg(op.d_initial_state),
                  cu.get(),
                  ids.get(),
                  op.B,
                  op.T,
                  op.D,
                  op.sequences.count,
                  op.W,
                  op.activation == Activation::silu,
                  0};
  // The kernel's channel groups are 4 wide: 16-byte (f32) or 8-byte accesses.
  p.vector = vector_rows({&op.x, &op.dy, &op.dx}, 4);
  const int dtype = code_of(op.x.dtype);
  const Scratch scratch(conv1d_bwd_scratch_bytes(p, dtype), guard, op.kName);
  check(launch_conv1d_bwd(p, dtype, scratch.data(), guard.stream()), op.kName,
        "conv1d_bwd kernels launch");
}

}  // namespace

std::span<const Kernel> conv1d_kernels() {
  static const Kernel kernels[] = {
      kernel<Conv1dFwd, &conv1d_fwd>(kFloats),
      kernel<Conv1dUpdate, &conv1d_update>(kFloats),
      kernel<Conv1dBwd, &conv1d_bwd>(kFloats),
  };
  return kernels;
}

}  // namespace hops::cuda
