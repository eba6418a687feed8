// Expert-parallel dispatch and combine on host memory, over any engine that
// can gather a few bytes from every rank and exchange rows all-to-all (MPI in
// libhops_mpi.so; a lone rank here). The row moves are this file's; the
// grouping and the weighted sum are the single-device moe_dispatch and
// moe_combine, called through the public API, so that the results are
// theirs bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backend.hpp"
#include "ops/moe_ep.hpp"

namespace hops::ep {

// One rank's view of a communicator.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Every rank's `bytes` bytes, in rank order, into `all`. Bounded in time:
  // when a rank does not join, it fails (HOPS_ERR_BACKEND) instead of waiting.
  virtual void allgather(const void* mine, void* all, int64_t bytes, const char* op) = 0;
  // send_rows[d] rows (of row_bytes each) to rank d, from `send` in rank
  // order; recv_rows[s] rows from rank s into `recv`, in rank order.
  virtual void alltoallv(const std::byte* send, const int64_t* send_rows, std::byte* recv,
                         const int64_t* recv_rows, int64_t row_bytes) = 0;
};

// kernel<Op, fn, accepts>() of backend.hpp, the accepts check set after the
// fact: under -fsanitize=undefined GCC cannot fold `accepts != nullptr` there
// (the null check sanitizer keeps function addresses from being known
// non-null), so the sanitized build of the CPU backend and the MPI module
// failed to compile.
template <class Op, void (*fn)(const ExecContext&, const Op&), void (*accepts)(const Op&)>
constexpr Kernel kernel_accepting(uint32_t dtypes) {
  Kernel made = kernel<Op, fn>(dtypes);
  made.accepts = [](const void* args) noexcept {
    return guarded([&] { accepts(*static_cast<const Op*>(args)); });
  };
  return made;
}

// Collective: every rank of the transport calls the same op. A call that any
// rank rejects (its own arguments, or ranks that disagree on E, k, Hd or the
// dtype, or rows too few for what arrives) fails on every rank before any
// row moves; so does a rank whose hops_comm names another rank or size than
// the engine's, or that abstains (op.abstaining: its arguments failed check).
void dispatch(const ExecContext& context, const MoeEpDispatch& op, Transport& transport);
void combine(const ExecContext& context, const MoeEpCombine& op, Transport& transport);

}  // namespace hops::ep
