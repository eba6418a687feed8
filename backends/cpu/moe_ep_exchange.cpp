// The expert-parallel exchange (moe_ep.hpp), shared by the CPU backend (a lone
// rank) and libhops_mpi.so, which compiles this file too. Layouts:
// - a rank's send rows are its own moe_dispatch of its tokens: grouped by
//   global expert, so the rows for rank d (experts d*El .. d*El+El-1) are one
//   block, in (token, slot) order within an expert;
// - rank d receives those blocks source by source, and regroups them by local
//   expert, then source: the gathered problem's rows of its experts;
// - combine moves the outputs the way back and sums them with the
//   single-device moe_combine over the sender's row map.
#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "checked_math.hpp"
#include "moe_ep.hpp"

namespace hops::ep {

namespace {

// Grow-only host buffers: steady-state calls neither allocate nor fault pages
// in (an exchange of T = 4096, k = 8, Hd = 2048 f32 moves 256 MiB each way).
class Buffer {
 public:
  std::byte* get(int64_t bytes) {
    if (bytes > size_) {
      data_.reset(new std::byte[static_cast<size_t>(bytes)]);
      size_ = bytes;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<std::byte[]> data_;
  int64_t size_ = 0;
};
thread_local Buffer send_buffer, recv_buffer;

int64_t load_index(const Tensor& t, int64_t offset) {
  return t.dtype == DType::i32 ? t.data<const int32_t>()[offset] : t.data<const int64_t>()[offset];
}
void store_index(const Tensor& t, int64_t offset, int64_t value) {
  if (t.dtype == DType::i32) {
    t.data<int32_t>()[offset] = static_cast<int32_t>(value);
  } else {
    t.data<int64_t>()[offset] = value;
  }
}

// A validated argument as a DLTensor again, for the single-device ops.
DLTensor as_dl(const Tensor& t) {
  return {t.handle,
          t.device,
          t.ndim,
          dtype_to_dl(t.dtype),
          const_cast<int64_t*>(t.shape.data()),
          const_cast<int64_t*>(t.stride.data()),
          t.byte_offset};
}

// Compact host rows [rows, Hd] in `data`.
struct Rows {
  int64_t shape[2], stride[2];
  DLTensor dl;
  Rows(std::byte* data, int64_t rows, int64_t Hd, DType dtype)
      : shape{rows, Hd}, stride{Hd, 1}, dl{data,  {kDLCPU, 0}, 2, dtype_to_dl(dtype),
                                           shape, stride,      0} {}
};

const hops_api& api() {
  static const hops_api* table = hops_get_api(HOPS_ABI_MAJOR);
  return *table;
}

hops_exec local_exec(const ExecContext& context) {
  return {sizeof(hops_exec), {kDLCPU, 0}, nullptr, 0, context.max_workers, nullptr};
}

void check_local(hops_status status, const char* name, const char* local) {
  if (status != HOPS_OK)
    fail(status, "{}: the local {} failed: {}", name, local, api().last_error());
}

// Row r of a [rows, Hd] tensor.
std::byte* row_at(const Tensor& t, int64_t r) {
  return t.data<std::byte>() + r * t.stride[0] * dtype_size(t.dtype);
}

// Copies `count` rows between a compact buffer and rows [first, first+count)
// of `t` (compact within a row, or element by element).
void copy_rows(const std::byte* from, const Tensor& to, int64_t first, int64_t count) {
  const int64_t size = dtype_size(to.dtype), Hd = to.shape[1];
  for (int64_t r = 0; r < count; ++r, from += Hd * size) {
    std::byte* out = row_at(to, first + r);
    if (to.stride[1] == 1) {
      std::memcpy(out, from, Hd * size);
    } else {
      for (int64_t i = 0; i < Hd; ++i)
        std::memcpy(out + i * to.stride[1] * size, from + i * size, size);
    }
  }
}
void copy_rows(const Tensor& from, int64_t first, int64_t count, std::byte* to) {
  const int64_t size = dtype_size(from.dtype), Hd = from.shape[1];
  for (int64_t r = 0; r < count; ++r, to += Hd * size) {
    const std::byte* in = row_at(from, first + r);
    if (from.stride[1] == 1) {
      std::memcpy(to, in, Hd * size);
    } else {
      for (int64_t i = 0; i < Hd; ++i)
        std::memcpy(to + i * size, in + i * from.stride[1] * size, size);
    }
  }
}

// Every rank's record, after checking that all of them accept the call and
// agree on what must be equal.
std::vector<EpAgreement> agree(Transport& transport, EpAgreement mine, const char* name,
                               const std::string& problem) {
  if (!problem.empty()) mine.status = HOPS_ERR_INVALID_ARGUMENT;
  const int W = transport.size();
  std::vector<EpAgreement> all(W);
  transport.allgather(&mine, all.data(), sizeof mine, name);
  if (!problem.empty()) fail(HOPS_ERR_INVALID_ARGUMENT, "{}: {}", name, problem);
  for (int r = 0; r < W; ++r) {
    if (all[r].status != HOPS_OK) {
      fail(HOPS_ERR_INVALID_ARGUMENT,
           "{}: rank {} of {} rejected its arguments (its last_error says why); no rank "
           "exchanged anything",
           name, r, W);
    }
  }
  const EpAgreement& first = all[0];
  for (int r = 1; r < W; ++r) {
    const EpAgreement& other = all[r];
    const auto differ = [&](const char* what, int64_t a, int64_t b) {
      if (a != b) {
        fail(HOPS_ERR_INVALID_ARGUMENT,
             "{}: the ranks disagree on {}: rank 0 has {}, rank {} has {}", name, what, a, r, b);
      }
    };
    differ("the op (1 moe_ep_dispatch, 2 moe_ep_combine)", first.op, other.op);
    differ("the number of ranks", first.size, other.size);
    differ("E (experts)", first.E, other.E);
    differ("k (slots per token)", first.k, other.k);
    differ("Hd (row width)", first.Hd, other.Hd);
    differ("the dtype code of the rows", first.dtype, other.dtype);
  }
  for (int r = 0; r < W; ++r) {
    if (all[r].rank != r) {
      fail(HOPS_ERR_INVALID_ARGUMENT,
           "{}: rank {} of the communicator says it is rank {} in its hops_comm", name, r,
           all[r].rank);
    }
  }
  return all;
}

// Why this rank's descriptor and the engine's view differ, or "".
std::string descriptor_problem(const Comm& comm, const Transport& transport) {
  if (comm.rank != transport.rank() || comm.size != transport.size()) {
    return fmt::format(
        "argument 'exec': comm says rank {} of {}, but the communicator has this process as "
        "rank {} of {}",
        comm.rank, comm.size, transport.rank(), transport.size());
  }
  return "";
}

int64_t sum(const int64_t* first, int64_t n) {
  return std::accumulate(first, first + n, int64_t{0});
}

}  // namespace

void dispatch(const ExecContext& context, const MoeEpDispatch& op, Transport& transport) {
  const char* name = op.kName;
  const std::string why =
      op.abstaining ? "this rank rejected its arguments" : descriptor_problem(op.comm, transport);
  const std::vector<EpAgreement> all = agree(transport, op.agreement(), name, why);
  const int W = transport.size(), me = transport.rank();
  const int64_t E = op.E, El = op.El, Hd = op.Hd, R = op.T * op.k;

  // Slots per expert on every rank: [W][E].
  std::vector<int64_t> mine(E, 0), counts(W * E);
  for (int64_t t = 0; t < op.T; ++t) {
    for (int64_t j = 0; j < op.k; ++j) {
      const int64_t e = load_index(op.topk_ids, op.topk_ids.offset(t, j));
      if (e >= 0) ++mine[e];
    }
  }
  transport.allgather(mine.data(), counts.data(), E * int64_t{sizeof(int64_t)}, name);
  const auto received = [&](int r, int64_t s, int64_t e) { return counts[s * E + r * El + e]; };
  for (int r = 0; r < W; ++r) {
    int64_t arriving = 0;
    for (int s = 0; s < W; ++s) arriving += sum(&counts[s * E + r * El], El);
    if (arriving > all[r].C) {
      fail(HOPS_ERR_INVALID_ARGUMENT,
           "{}: argument 'rows': rank {} receives {} rows, but its rows hold C = {}; no rank "
           "exchanged anything",
           name, r, arriving, all[r].C);
    }
  }

  // This rank's rows grouped by global expert: one block per destination.
  const int64_t row_bytes = checked_product(name, Hd, dtype_size(op.x.dtype));
  std::byte* send = send_buffer.get(scratch_size(name, R, row_bytes));
  {
    Rows rows(send, R, Hd, op.x.dtype);
    DLTensor x = as_dl(op.x), ids = as_dl(op.topk_ids), send_counts = as_dl(op.send_counts),
             row_map = as_dl(op.row_map);
    const hops_exec exec = local_exec(context);
    const auto moe_dispatch =
        reinterpret_cast<hops_moe_dispatch_fn>(api().find_op("moe_dispatch")->fn);
    check_local(moe_dispatch(&exec, &x, &ids, &rows.dl, &send_counts, &row_map), name,
                "moe_dispatch");
  }
  std::vector<int64_t> send_rows(W), recv_rows(W);
  for (int d = 0; d < W; ++d) send_rows[d] = sum(&counts[me * E + d * El], El);
  for (int s = 0; s < W; ++s) recv_rows[s] = sum(&counts[s * E + me * El], El);
  const int64_t total = sum(recv_rows.data(), W);
  std::byte* recv = recv_buffer.get(scratch_size(name, std::max<int64_t>(total, 1), row_bytes));
  transport.alltoallv(send, send_rows.data(), recv, recv_rows.data(), row_bytes);

  // Source-major blocks -> by local expert, then source.
  std::vector<int64_t> expert_first(El + 1, 0);
  for (int64_t e = 0; e < El; ++e) {
    int64_t n = 0;
    for (int s = 0; s < W; ++s) n += received(me, s, e);
    expert_first[e + 1] = expert_first[e] + n;
    store_index(op.counts, e * op.counts.stride[0], n);
  }
  const std::byte* from = recv;
  for (int s = 0; s < W; ++s) {
    for (int64_t e = 0; e < El; ++e) {
      const int64_t n = received(me, s, e);
      int64_t before = 0;  // rows of expert e from ranks before s
      for (int s2 = 0; s2 < s; ++s2) before += received(me, s2, e);
      copy_rows(from, op.rows, expert_first[e] + before, n);
      from += n * row_bytes;
      store_index(op.recv_counts, op.recv_counts.offset(s, e), n);
    }
  }
  // Zero past the rows that arrived, as moe_dispatch does past the kept ones.
  for (int64_t r = total; r < op.C; ++r) {
    std::byte* out = row_at(op.rows, r);
    const int64_t size = dtype_size(op.rows.dtype);
    for (int64_t i = 0; i < Hd; ++i) std::memset(out + i * op.rows.stride[1] * size, 0, size);
  }
}

void combine(const ExecContext& context, const MoeEpCombine& op, Transport& transport) {
  const char* name = op.kName;
  const std::string why =
      op.abstaining ? "this rank rejected its arguments" : descriptor_problem(op.comm, transport);
  agree(transport, op.agreement(), name, why);
  const int W = transport.size(), me = transport.rank();
  const int64_t E = op.E, El = op.El, Hd = op.Hd, R = op.T * op.k;

  // Every rank's handle (send counts [E], receive counts [W, El]): the rows
  // rank s sent to rank d for each expert must be the rows d says it got.
  const int64_t record = E + W * El;
  std::vector<int64_t> mine(record), all(W * record);
  for (int64_t e = 0; e < E; ++e)
    mine[e] = load_index(op.send_counts, e * op.send_counts.stride[0]);
  for (int s = 0; s < W; ++s) {
    for (int64_t e = 0; e < El; ++e) {
      mine[E + s * El + e] = load_index(op.recv_counts, op.recv_counts.offset(s, e));
    }
  }
  transport.allgather(mine.data(), all.data(), record * int64_t{sizeof(int64_t)}, name);
  const auto sent = [&](int s, int64_t e) { return all[s * record + e]; };
  const auto got = [&](int d, int s, int64_t e) { return all[d * record + E + s * El + e]; };
  for (int d = 0; d < W; ++d) {
    for (int s = 0; s < W; ++s) {
      for (int64_t e = 0; e < El; ++e) {
        if (sent(s, d * El + e) != got(d, s, e)) {
          fail(HOPS_ERR_INVALID_ARGUMENT,
               "{}: the handles disagree: rank {} sent {} rows for expert {}, rank {} says it got "
               "{} (recv_counts [{}, {}]); pass each rank's moe_ep_dispatch outputs",
               name, s, sent(s, d * El + e), d * El + e, d, got(d, s, e), s, e);
        }
      }
    }
  }

  // The outputs, by local expert then source -> source-major blocks.
  const int64_t row_bytes = checked_product(name, Hd, dtype_size(op.expert_out.dtype));
  std::vector<int64_t> send_rows(W, 0), recv_rows(W, 0), expert_first(El + 1, 0);
  for (int64_t e = 0; e < El; ++e) {
    int64_t n = 0;
    for (int s = 0; s < W; ++s) n += got(me, s, e);
    expert_first[e + 1] = expert_first[e] + n;
  }
  for (int s = 0; s < W; ++s) {
    for (int64_t e = 0; e < El; ++e) send_rows[s] += got(me, s, e);
  }
  for (int d = 0; d < W; ++d) recv_rows[d] = sum(&mine[d * El], El);
  std::byte* send =
      send_buffer.get(scratch_size(name, std::max<int64_t>(expert_first[El], 1), row_bytes));
  std::byte* to = send;
  for (int s = 0; s < W; ++s) {
    for (int64_t e = 0; e < El; ++e) {
      int64_t before = 0;
      for (int s2 = 0; s2 < s; ++s2) before += got(me, s2, e);
      const int64_t n = got(me, s, e);
      copy_rows(op.expert_out, expert_first[e] + before, n, to);
      to += n * row_bytes;
    }
  }
  std::byte* back = recv_buffer.get(scratch_size(name, std::max<int64_t>(R, 1), row_bytes));
  transport.alltoallv(send, send_rows.data(), back, recv_rows.data(), row_bytes);
  // Rows no slot of a valid handle reads are zero, not stale.
  const int64_t kept = sum(recv_rows.data(), W);
  std::memset(back + kept * row_bytes, 0, (R - kept) * row_bytes);

  Rows rows(back, R, Hd, op.expert_out.dtype);
  DLTensor row_map = as_dl(op.row_map), weights = as_dl(op.topk_weights), y = as_dl(op.y);
  const hops_exec exec = local_exec(context);
  const auto moe_combine = reinterpret_cast<hops_moe_combine_fn>(api().find_op("moe_combine")->fn);
  check_local(moe_combine(&exec, &rows.dl, &row_map, &weights, &y), name, "moe_combine");
}

}  // namespace hops::ep
