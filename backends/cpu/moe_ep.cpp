// The CPU backend's expert-parallel kernels: the lone rank (exec->comm NULL),
// where the exchange is a copy. Communicators go to their engine's module
// (HOPS_COMM_MPI: libhops_mpi.so; HOPS_COMM_NCCL: the CUDA backend).
#include <cstring>

#include "moe_ep.hpp"

namespace hops::cpu {

namespace {

class LoneRank final : public ep::Transport {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allgather(const void* mine, void* all, int64_t bytes, const char*) override {
    std::memcpy(all, mine, bytes);
  }
  void alltoallv(const std::byte* send, const int64_t* send_rows, std::byte* recv, const int64_t*,
                 int64_t row_bytes) override {
    std::memcpy(recv, send, send_rows[0] * row_bytes);
  }
};

template <class Op>
void lone_rank_only(const Op& op) {
  if (op.comm.kind == 0) return;
  fail(HOPS_ERR_UNSUPPORTED,
       "{}: the cpu backend runs one rank (exec->comm NULL); a {} communicator needs its engine's "
       "module (HOPS_COMM_MPI: libhops_mpi.so, see hops.info())",
       op.kName, op.comm.kind == HOPS_COMM_MPI ? "HOPS_COMM_MPI" : "HOPS_COMM_NCCL");
}

void dispatch(const ExecContext& context, const MoeEpDispatch& op) {
  LoneRank transport;
  ep::dispatch(context, op, transport);
}
void combine(const ExecContext& context, const MoeEpCombine& op) {
  LoneRank transport;
  ep::combine(context, op, transport);
}

}  // namespace

std::span<const Kernel> moe_ep_kernels() {
  static constexpr Kernel kernels[] = {
      ep::kernel_accepting<MoeEpDispatch, &dispatch, &lone_rank_only<MoeEpDispatch>>(
          HOPS_DTYPE_FLOATS),
      ep::kernel_accepting<MoeEpCombine, &combine, &lone_rank_only<MoeEpCombine>>(
          HOPS_DTYPE_FLOATS),
  };
  return kernels;
}

}  // namespace hops::cpu
