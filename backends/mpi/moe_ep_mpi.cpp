// The expert-parallel kernels over MPI: the exchange of moe_ep.hpp with
// MPI_Iallgather (polled against a deadline, so that a rank that never joins
// fails the others instead of hanging them) and MPI_Alltoallv of whole rows.
#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <thread>
#include <vector>

#include "moe_ep.hpp"

namespace hops::mpi {

namespace {

// How long a rank waits for the others to join a collective call:
// HOPS_COMM_TIMEOUT seconds, 60 by default.
std::chrono::duration<double> join_timeout() {
  const char* text = std::getenv("HOPS_COMM_TIMEOUT");
  const double seconds = text ? std::atof(text) : 0.0;
  return std::chrono::duration<double>(seconds > 0 ? seconds : 60.0);
}

int as_int(int64_t value, const char* what) {
  if (value < 0 || value > INT_MAX) {
    fail(HOPS_ERR_UNSUPPORTED, "MPI counts are int: {} is {}, above 2^31 - 1", what, value);
  }
  return static_cast<int>(value);
}

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  fail(HOPS_ERR_BACKEND, "{} failed: {}", call, text);
}

class MpiTransport final : public ep::Transport {
 public:
  explicit MpiTransport(MPI_Comm comm) : comm_(comm) {
    check_mpi(MPI_Comm_rank(comm, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm, &size_), "MPI_Comm_size");
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void allgather(const void* mine, void* all, int64_t bytes, const char* op) override {
    const int count = as_int(bytes, "the gathered record");
    MPI_Request request = MPI_REQUEST_NULL;
    check_mpi(MPI_Iallgather(mine, count, MPI_BYTE, all, count, MPI_BYTE, comm_, &request),
              "MPI_Iallgather");
    const auto timeout = join_timeout();
    const auto start = std::chrono::steady_clock::now();
    for (int polls = 0;; ++polls) {
      int done = 0;
      check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) return;
      if (std::chrono::steady_clock::now() - start > timeout) {
        // The request cannot be cancelled: the communicator is unusable now.
        fail(HOPS_ERR_BACKEND,
             "{}: rank {} of {}: not every rank joined within {} s (HOPS_COMM_TIMEOUT); a rank "
             "failed before it could tell the others, or called another op. The communicator "
             "must not be used for hops again",
             op, rank_, size_, timeout.count());
      }
      if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  void alltoallv(const std::byte* send, const int64_t* send_rows, std::byte* recv,
                 const int64_t* recv_rows, int64_t row_bytes) override {
    std::vector<int> send_counts(size_), send_first(size_), recv_counts(size_), recv_first(size_);
    int64_t sent = 0, received = 0;
    for (int r = 0; r < size_; ++r) {
      send_counts[r] = as_int(send_rows[r], "rows to one rank");
      recv_counts[r] = as_int(recv_rows[r], "rows from one rank");
      send_first[r] = as_int(sent, "rows before one rank's");
      recv_first[r] = as_int(received, "rows before one rank's");
      sent += send_rows[r], received += recv_rows[r];
    }
    // One row is one element: counts stay small as rows grow wide.
    MPI_Datatype row = MPI_DATATYPE_NULL;
    check_mpi(MPI_Type_contiguous(as_int(row_bytes, "a row's bytes"), MPI_BYTE, &row),
              "MPI_Type_contiguous");
    check_mpi(MPI_Type_commit(&row), "MPI_Type_commit");
    const int code = MPI_Alltoallv(send, send_counts.data(), send_first.data(), row, recv,
                                   recv_counts.data(), recv_first.data(), row, comm_);
    MPI_Type_free(&row);
    check_mpi(code, "MPI_Alltoallv");
  }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

template <class Op>
void mpi_only(const Op& op) {
  if (op.comm.kind == HOPS_COMM_MPI) return;
  fail(HOPS_ERR_UNSUPPORTED, "{}: the mpi backend serves HOPS_COMM_MPI communicators only",
       op.kName);
}

// The engine must be running, and the descriptor's communicator real.
template <class Op>
MpiTransport transport_of(const Op& op) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    fail(HOPS_ERR_INVALID_ARGUMENT,
         "{}: argument 'exec': comm is HOPS_COMM_MPI, but MPI is not initialized in this process",
         op.kName);
  }
  return MpiTransport(*static_cast<const MPI_Comm*>(op.comm.handle));
}

void dispatch(const ExecContext& context, const MoeEpDispatch& op) {
  MpiTransport transport = transport_of(op);
  ep::dispatch(context, op, transport);
}
void combine(const ExecContext& context, const MoeEpCombine& op) {
  MpiTransport transport = transport_of(op);
  ep::combine(context, op, transport);
}

}  // namespace

std::span<const Kernel> moe_ep_kernels() {
  static constexpr Kernel kernels[] = {
      ep::kernel_accepting<MoeEpDispatch, &dispatch, &mpi_only<MoeEpDispatch>>(HOPS_DTYPE_FLOATS),
      ep::kernel_accepting<MoeEpCombine, &combine, &mpi_only<MoeEpCombine>>(HOPS_DTYPE_FLOATS),
  };
  return kernels;
}

}  // namespace hops::mpi
