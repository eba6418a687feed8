// The OpenCL kernels of the MoE family: moe.cpp (moe_route and the family's
// list), moe_rows.cpp (dispatch, combine and their backwards; moe.cl) and
// moe_mlp.cpp (the expert MLP and its backward; moe_mlp.cl).
#pragma once

#include <optional>

#include "backend.hpp"
#include "call.hpp"
#include "ops/moe.hpp"

namespace hops::opencl {

void moe_route(const ExecContext& exec, const MoeRoute& op);
void moe_dispatch(const ExecContext& exec, const MoeDispatch& op);
void moe_combine(const ExecContext& exec, const MoeCombine& op);
void moe_dispatch_bwd(const ExecContext& exec, const MoeDispatchBwd& op);
void moe_combine_bwd(const ExecContext& exec, const MoeCombineBwd& op);
void moe_expert_mlp(const ExecContext& exec, const MoeExpertMlp& op);
void moe_expert_mlp_bwd(const ExecContext& exec, const MoeExpertMlpBwd& op);

// An index tensor of the family ([T,k] ids or row map, [E] counts) as the
// kernels read or write it: buffer, element offset, strides (row, column)
// and kind (4 int32, 8 int64).
struct MoeIndex {
  cl_mem buffer = nullptr;
  cl_long offset = 0;
  cl_long2 strides{};
  cl_int kind = 0;
};
inline Launch& moe_index(Launch& launch, const MoeIndex& index) {
  return launch.value(index.buffer).value(index.offset).value(index.strides).value(index.kind);
}

// An index input: read in place when device-resident; a host-resident one
// (validated by the op's check) is copied row-major as int64 into a pooled
// block, asynchronously from the block's own staging copy. Declared after
// the Call: the block stays busy until the call's last command.
class MoeIndexInput {
 public:
  MoeIndexInput(Call& call, const Tensor& t);
  MoeIndexInput(const MoeIndexInput&) = delete;
  MoeIndexInput& operator=(const MoeIndexInput&) = delete;
  ~MoeIndexInput();

  MoeIndex arg;

 private:
  Call& call_;
  std::optional<BufferPool::Lease> lease_;
};

// An index output: written in place when device-resident. A host-resident
// one is written by the kernels as int64 into a pooled block and copied to
// the host by finish(), which waits for the call's work: the caller asked
// for the values on the host.
class MoeIndexOutput {
 public:
  MoeIndexOutput(Call& call, const Tensor& t);
  MoeIndexOutput(const MoeIndexOutput&) = delete;
  MoeIndexOutput& operator=(const MoeIndexOutput&) = delete;
  ~MoeIndexOutput();

  // After the call's last command: the host copy, if there is one.
  void finish() const;

  MoeIndex arg;

 private:
  Call& call_;
  const Tensor& tensor_;
  std::optional<BufferPool::Lease> lease_;
};

}  // namespace hops::opencl
