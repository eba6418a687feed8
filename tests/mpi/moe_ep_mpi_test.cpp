// moe_ep_dispatch / moe_ep_combine across MPI ranks (ctest runs it under
// mpirun -np 2 and -np 4). Every rank builds the whole problem from one seed,
// runs its share through the expert-parallel ops, and compares bit for bit
// with the single-device moe_dispatch / moe_combine on the gathered problem.
// Then wrong calls: each must fail on every rank, within a bounded time.
//
//   mpirun -np 4 moe_ep_mpi_test path/to/libhops.so
#include <cstdlib>
#include <cstring>

#include "ep_test_common.hpp"

namespace {

using namespace ep_test;

// A compact host tensor.
struct Tensor {
  std::vector<int64_t> shape, stride;
  std::vector<unsigned char> bytes;
  DLTensor dl{};
  Tensor() = default;
  Tensor(std::vector<int64_t> dims, DLDataType dtype) : shape(std::move(dims)) {
    int64_t n = 1;
    stride.assign(shape.size(), 1);
    for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
      stride[d] = n;
      n *= shape[d];
    }
    bytes.assign(static_cast<size_t>(n * dtype.bits / 8) + 8, 0xAB);  // poisoned
    dl = {bytes.data(),
          {kDLCPU, 0},
          static_cast<int32_t>(shape.size()),
          dtype,
          shape.data(),
          stride.data(),
          0};
  }
  Tensor(const Tensor& other) : shape(other.shape), stride(other.stride), bytes(other.bytes) {
    dl = other.dl;
    dl.data = bytes.data(), dl.shape = shape.data(), dl.strides = stride.data();
  }
  Tensor& operator=(const Tensor& other) {
    if (this != &other) {
      Tensor copy(other);
      std::swap(shape, copy.shape), std::swap(stride, copy.stride), std::swap(bytes, copy.bytes);
      dl = copy.dl;
      dl.data = bytes.data(), dl.shape = shape.data(), dl.strides = stride.data();
    }
    return *this;
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t row_bytes() const { return numel() / std::max<int64_t>(shape[0], 1) * dl.dtype.bits / 8; }
  int64_t index(int64_t i) const {
    return dl.dtype.bits == 32 ? reinterpret_cast<const int32_t*>(bytes.data())[i]
                               : reinterpret_cast<const int64_t*>(bytes.data())[i];
  }
  void set_index(int64_t i, int64_t v) {
    if (dl.dtype.bits == 32) {
      reinterpret_cast<int32_t*>(bytes.data())[i] = static_cast<int32_t>(v);
    } else {
      reinterpret_cast<int64_t*>(bytes.data())[i] = v;
    }
  }
  float value(int64_t i) const {
    if (dl.dtype.bits == 32) return reinterpret_cast<const float*>(bytes.data())[i];
    uint32_t bits = uint32_t{reinterpret_cast<const uint16_t*>(bytes.data())[i]} << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  void set_value(int64_t i, float f) {
    if (dl.dtype.bits == 32) {
      reinterpret_cast<float*>(bytes.data())[i] = f;
      return;
    }
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits += 0x7fffu + ((bits >> 16) & 1u);  // to nearest even (finite values here)
    reinterpret_cast<uint16_t*>(bytes.data())[i] = static_cast<uint16_t>(bits >> 16);
  }
  float value(int64_t r, int64_t i) const { return value(r * shape[1] + i); }
  void set_value(int64_t r, int64_t i, float f) { set_value(r * shape[1] + i, f); }
  const unsigned char* row(int64_t r) const { return bytes.data() + r * row_bytes(); }
};

void run_case(const Case& c, uint64_t seed) {
  const Gathered g(c, seed);
  const int64_t E = g.E, El = g.El, Tall = g.Tall, k = c.k, Hd = c.Hd;
  Tensor x({Tall, Hd}, c.dtype), ids({Tall, k}, c.ids), weights({Tall, k}, kF32);
  for (int64_t i = 0; i < Tall * Hd; ++i) x.set_value(i, g.x[i]);
  for (int64_t i = 0; i < Tall * k; ++i)
    ids.set_index(i, g.ids[i]), weights.set_value(i, g.weights[i]);

  // The single-device result on the gathered problem.
  Tensor rows_all({Tall * k, Hd}, c.dtype), counts_all({E}, c.ids), map_all({Tall, k}, c.ids);
  check(op<hops_moe_dispatch_fn>("moe_dispatch")(nullptr, &x.dl, &ids.dl, &rows_all.dl,
                                                 &counts_all.dl, &map_all.dl) == HOPS_OK,
        c.name + ": gathered moe_dispatch");
  Tensor out_all = rows_all;
  apply_experts(rows_all, counts_all, E, 0, out_all);
  Tensor y_all({Tall, Hd}, c.dtype);
  check(op<hops_moe_combine_fn>("moe_combine")(nullptr, &out_all.dl, &map_all.dl, &weights.dl,
                                               &y_all.dl) == HOPS_OK,
        c.name + ": gathered moe_combine");

  // This rank's share.
  const int64_t Tm = g.T[rank], t0 = g.first[rank];
  Tensor xm({Tm, Hd}, c.dtype), idsm({Tm, k}, c.ids), wm({Tm, k}, kF32);
  if (Tm > 0) {
    std::memcpy(xm.bytes.data(), x.row(t0), Tm * x.row_bytes());
    std::memcpy(idsm.bytes.data(), ids.row(t0), Tm * ids.row_bytes());
    std::memcpy(wm.bytes.data(), weights.row(t0), Tm * weights.row_bytes());
  }
  int64_t expert_first, arriving;
  g.arrivals(counts_all, expert_first, arriving);
  const int64_t C = arriving + c.spare;
  Tensor rows({C, Hd}, c.dtype), counts({El}, c.ids), map({Tm, k}, c.ids), sent({E}, c.ids),
      got({world, El}, c.ids);
  hops_comm comm{sizeof(hops_comm), HOPS_COMM_MPI, rank, world, nullptr};
  MPI_Comm handle = MPI_COMM_WORLD;
  comm.handle = &handle;
  const hops_exec exec{sizeof(hops_exec), {kDLCPU, 0}, nullptr, 0, 0, &comm};
  hops_status status = op<hops_moe_ep_dispatch_fn>("moe_ep_dispatch")(
      &exec, &xm.dl, &idsm.dl, &rows.dl, &counts.dl, &map.dl, &sent.dl, &got.dl);
  check(status == HOPS_OK, c.name + ": moe_ep_dispatch: " + (status ? api->last_error() : ""));
  if (status != HOPS_OK) return;
  bool same = true;
  for (int64_t e = 0; e < El; ++e) same &= counts.index(e) == counts_all.index(rank * El + e);
  check(same, c.name + ": counts differ from the gathered dispatch's");
  check(arriving == 0 ||
            std::memcmp(rows.row(0), rows_all.row(expert_first), arriving * rows.row_bytes()) == 0,
        c.name + ": rows differ from the gathered dispatch's");
  bool zero = true;
  for (int64_t i = arriving * rows.row_bytes(); i < C * rows.row_bytes(); ++i) {
    zero &= rows.bytes[i] == 0;
  }
  check(zero, c.name + ": rows past the arrived ones are not zero");

  Tensor out = rows;
  apply_experts(rows, counts, El, rank * El, out);
  Tensor y({Tm, Hd}, c.dtype);
  status = op<hops_moe_ep_combine_fn>("moe_ep_combine")(&exec, &out.dl, &map.dl, &wm.dl, &sent.dl,
                                                        &got.dl, &y.dl);
  check(status == HOPS_OK, c.name + ": moe_ep_combine: " + (status ? api->last_error() : ""));
  check(Tm == 0 || std::memcmp(y.bytes.data(), y_all.row(t0), Tm * y.row_bytes()) == 0,
        c.name + ": y differs from the gathered combine's (bitwise)");
}

// A wrong call: `spoil` changes this rank's call; every rank must fail, in
// bounded time.
struct Problem : WrongCall {
  hops_comm comm{sizeof(hops_comm), HOPS_COMM_MPI, rank, world, nullptr};
  bool wrong_recv_counts = false;
};

void expect_failure(const std::string& what, const std::function<void(Problem&)>& spoil,
                    double bound_s, bool combine = false) {
  MPI_Comm handle = MPI_COMM_WORLD;
  Problem p;
  p.comm.handle = &handle;
  Problem good = p;
  spoil(p);
  const int64_t El = std::max<int64_t>(p.E / world, 1);
  Tensor x({p.T, p.Hd}, p.x_dtype), ids({p.T, p.k}, kI64), rows({p.C, p.Hd}, kF32),
      counts({El}, kI64), map({p.T, p.k}, kI64), sent({p.E}, kI64), got({world, El}, kI64);
  for (int64_t i = 0; i < p.T * p.Hd; ++i) x.set_value(i, 0.5f);
  for (int64_t i = 0; i < p.T * p.k; ++i) ids.set_index(i, (i * 7 + rank) % p.E);
  expect_failure_within(what, bound_s, [&] {
    if (!combine) {
      const hops_exec exec{sizeof(hops_exec), {kDLCPU, 0}, nullptr, 0, 0, &p.comm};
      return op<hops_moe_ep_dispatch_fn>("moe_ep_dispatch")(&exec, &x.dl, &ids.dl, &rows.dl,
                                                            &counts.dl, &map.dl, &sent.dl, &got.dl);
    }
    // A valid dispatch first, then a combine with the spoilt handle.
    const hops_exec exec{sizeof(hops_exec), {kDLCPU, 0}, nullptr, 0, 0, &good.comm};
    const hops_status status = op<hops_moe_ep_dispatch_fn>("moe_ep_dispatch")(
        &exec, &x.dl, &ids.dl, &rows.dl, &counts.dl, &map.dl, &sent.dl, &got.dl);
    check(status == HOPS_OK, what + ": the valid dispatch before it failed");
    if (p.wrong_recv_counts) got.set_index(0, got.index(0) + 1);
    Tensor w({p.T, p.k}, kF32), y({p.T, p.Hd}, kF32);
    return op<hops_moe_ep_combine_fn>("moe_ep_combine")(&exec, &rows.dl, &map.dl, &w.dl, &sent.dl,
                                                        &got.dl, &y.dl);
  });
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  load_api(argc, argv);
  if (rank == 0) {
    for (int32_t i = 0; i < api->backend_count(); ++i) {
      const hops_backend_info* b = api->backend_at(i);
      std::printf("backend %s: %s\n", b->name, b->detail);
    }
  }

  const std::vector<Case> cases = {
      {"uneven T, drops, f32, int64 ids", [](int r) { return 5 + 3 * r; }, 2, 2, 8, kF32, kI64, 0.2,
       false, 0},
      {"a rank without tokens, k=1, int32 ids", [](int r) { return r == 1 ? 0 : 7; }, 1, 1, 16,
       kF32, kI32, 0.0, false, 2},
      {"all to rank 0 (others receive nothing), bf16", [](int r) { return 4 + r; }, 4, 3, 32, kBF16,
       kI32, 0.1, true, 0},
      {"odd Hd, half dropped, spare rows, int32 ids", [](int r) { return 9 + r * r; }, 3, 4, 33,
       kF32, kI32, 0.5, false, 5},
      {"every slot dropped", [](int) { return 3; }, 2, 2, 8, kF32, kI64, 1.0, false, 1},
      {"k > E/ranks, T=200, f32", [](int r) { return 200 - 17 * r; }, 2, 6, 64, kF32, kI64, 0.05,
       false, 0},
      {"bf16, T=64, Hd=128, int64 ids", [](int) { return 64; }, 8, 8, 128, kBF16, kI64, 0.0, false,
       0},
  };
  uint64_t seed = 1234;
  for (const Case& c : cases) {
    run_case(c, seed++);
    if (rank == 0) std::printf("case %-46s done\n", c.name.c_str());
  }

  if (rank == 0) std::printf("wrong calls (every rank must fail):\n");
  const double bound = 10.0;  // no timeout involved: the ranks tell each other
  expect_failure(
      "E % ranks != 0", [](Problem& p) { p.E = 2 * world + 1; }, bound);
  expect_failure(
      "ranks disagree on E",
      [](Problem& p) {
        if (rank == 0) p.E = 4 * world;
      },
      bound);
  expect_failure(
      "ranks disagree on k",
      [](Problem& p) {
        if (rank == world - 1) p.k = 3;
      },
      bound);
  expect_failure(
      "ranks disagree on Hd",
      [](Problem& p) {
        if (rank == 0) p.Hd = 5;
      },
      bound);
  expect_failure(
      "rank out of range on one rank",
      [](Problem& p) {
        if (rank == 1) p.comm.rank = world;
      },
      bound);
  expect_failure(
      "descriptor names another rank", [](Problem& p) { p.comm.rank = (rank + 1) % world; }, bound);
  expect_failure(
      "descriptor size != communicator's",
      [](Problem& p) {
        if (rank == 0) p.comm.size = world + 1, p.comm.rank = 0;
      },
      bound);
  expect_failure(
      "a bad tensor on one rank (x int dtype)",
      [](Problem& p) {
        if (rank == 1) p.x_dtype = kI32;
      },
      bound);
  expect_failure(
      "rows too few on one rank",
      [](Problem& p) {
        if (rank == 0) p.C = 1;
      },
      bound);
  expect_failure(
      "combine with a spoilt handle on one rank",
      [](Problem& p) { p.wrong_recv_counts = rank == 1; }, bound, true);
  // Last: a rank that never joins (no handle, so it cannot tell the others)
  // leaves them waiting until HOPS_COMM_TIMEOUT (the test sets 3 s); its
  // communicator is then unusable, so it is a duplicate.
  {
    MPI_Comm spare;
    MPI_Comm_dup(MPI_COMM_WORLD, &spare);
    setenv("HOPS_COMM_TIMEOUT", "3", 1);
    const WrongCall p;
    hops_comm comm{sizeof(hops_comm), HOPS_COMM_MPI, rank, world, rank == 1 ? nullptr : &spare};
    Tensor x({p.T, p.Hd}, kF32), ids({p.T, p.k}, kI64), rows({p.C, p.Hd}, kF32),
        counts({p.E / world}, kI64), map({p.T, p.k}, kI64), sent({p.E}, kI64),
        got({world, p.E / world}, kI64);
    for (int64_t i = 0; i < p.T * p.k; ++i) ids.set_index(i, i % p.E);
    const hops_exec exec{sizeof(hops_exec), {kDLCPU, 0}, nullptr, 0, 0, &comm};
    expect_failure_within("a rank that never joins (timeout 3 s)", 3.0 + 5.0, [&] {
      return op<hops_moe_ep_dispatch_fn>("moe_ep_dispatch")(&exec, &x.dl, &ids.dl, &rows.dl,
                                                            &counts.dl, &map.dl, &sent.dl, &got.dl);
    });
  }

  const int total = report("moe_ep", cases.size());
  MPI_Finalize();
  return total ? 1 : 0;
}
