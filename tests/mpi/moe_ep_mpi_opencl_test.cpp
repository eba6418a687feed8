// moe_ep_dispatch / moe_ep_combine on OpenCL tensors across MPI ranks (ctest
// runs it under mpirun -np 2 and -np 4 on PoCL, HOPS_OPENCL_DEVICE=pocl).
// Every rank builds the whole problem from one seed, runs the gathered
// problem through the single-device OpenCL moe_dispatch / moe_combine and its
// own share through the expert-parallel ops with cl_mem tensors, and compares
// bit for bit (f32 also against the CPU backend's gathered ops). Then wrong
// calls: each must fail on every rank, within a bounded time.
//
//   HOPS_OPENCL_DEVICE=pocl mpirun -np 4 moe_ep_mpi_opencl_test path/to/libhops.so
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>

#include <cctype>
#include <cstdlib>
#include <cstring>

#include "ep_test_common.hpp"

namespace {

using namespace ep_test;

cl_context context = nullptr;
cl_command_queue queue = nullptr;

void cl_check(cl_int status, const char* what) {
  if (status == CL_SUCCESS) return;
  std::fprintf(stderr, "rank %d: %s failed (%d)\n", rank, what, status);
  MPI_Abort(MPI_COMM_WORLD, 2);
}

// A host tensor [n, m] whose rows are `pitch` elements apart (compact: pitch
// m), poisoned, with the same view on an OpenCL buffer (upload / download).
struct Tensor {
  int64_t shape[2], stride[2];
  DLDataType dtype;
  std::vector<unsigned char> bytes;
  DLTensor dl{};      // host
  DLTensor device{};  // cl_mem
  cl_mem buffer = nullptr;

  Tensor(int64_t n, int64_t m, DLDataType type, int64_t pitch = -1, int64_t ndim = 2)
      : shape{n, m}, stride{pitch < 0 ? m : pitch, 1}, dtype(type) {
    if (ndim == 1) stride[0] = 1;
    bytes.assign(static_cast<size_t>(span()) + 8, 0xAB);
    dl = {bytes.data(), {kDLCPU, 0}, static_cast<int32_t>(ndim), dtype, shape, stride, 0};
    cl_int status = CL_SUCCESS;
    buffer = clCreateBuffer(context, CL_MEM_READ_WRITE, bytes.size(), nullptr, &status);
    cl_check(status, "clCreateBuffer");
    device = dl;
    device.data = buffer, device.device = {kDLOpenCL, 0};
    upload();
  }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;
  ~Tensor() { clReleaseMemObject(buffer); }

  int64_t element() const { return dtype.bits / 8; }
  int64_t span() const {
    return shape[0] * shape[1] == 0 ? 0 : ((shape[0] - 1) * stride[0] + shape[1]) * element();
  }
  void upload() {
    cl_check(clEnqueueWriteBuffer(queue, buffer, CL_TRUE, 0, bytes.size(), bytes.data(), 0, nullptr,
                                  nullptr),
             "clEnqueueWriteBuffer");
  }
  void download() {
    cl_check(clEnqueueReadBuffer(queue, buffer, CL_TRUE, 0, bytes.size(), bytes.data(), 0, nullptr,
                                 nullptr),
             "clEnqueueReadBuffer");
  }
  int64_t at(int64_t i, int64_t j) const { return i * stride[0] + j; }
  int64_t index(int64_t i, int64_t j = 0) const {
    return dtype.bits == 32 ? reinterpret_cast<const int32_t*>(bytes.data())[at(i, j)]
                            : reinterpret_cast<const int64_t*>(bytes.data())[at(i, j)];
  }
  void set_index(int64_t i, int64_t j, int64_t v) {
    if (dtype.bits == 32) {
      reinterpret_cast<int32_t*>(bytes.data())[at(i, j)] = static_cast<int32_t>(v);
    } else {
      reinterpret_cast<int64_t*>(bytes.data())[at(i, j)] = v;
    }
  }
  float value(int64_t i, int64_t j) const {
    if (dtype.bits == 32) return reinterpret_cast<const float*>(bytes.data())[at(i, j)];
    uint32_t bits = uint32_t{reinterpret_cast<const uint16_t*>(bytes.data())[at(i, j)]} << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  void set_value(int64_t i, int64_t j, float f) {
    if (dtype.bits == 32) {
      reinterpret_cast<float*>(bytes.data())[at(i, j)] = f;
      return;
    }
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits += 0x7fffu + ((bits >> 16) & 1u);  // to nearest even (finite values here)
    reinterpret_cast<uint16_t*>(bytes.data())[at(i, j)] = static_cast<uint16_t>(bits >> 16);
  }
  // Row i of `this` equals row r of `other`, element bits compared.
  bool same_row(int64_t i, const Tensor& other, int64_t r) const {
    return std::memcmp(bytes.data() + at(i, 0) * element(),
                       other.bytes.data() + other.at(r, 0) * element(), shape[1] * element()) == 0;
  }
  // The gaps between padded rows still hold the poison.
  bool gaps_kept() const {
    for (int64_t i = 0; i + 1 < shape[0]; ++i) {
      for (int64_t b = (at(i, 0) + shape[1]) * element(); b < at(i + 1, 0) * element(); ++b) {
        if (bytes[b] != 0xAB) return false;
      }
    }
    return true;
  }
};

// The shared case, on OpenCL tensors.
struct OpenclCase : Case {
  bool host_indices;  // index tensors in host memory (else cl_mem)
  int64_t pad;        // elements between the rows of x, rows, expert_out and y
};

hops_exec opencl_exec(const hops_comm* comm) {
  return {sizeof(hops_exec), {kDLOpenCL, 0}, queue, 0, 0, comm};
}

const DLTensor* pick(const Tensor& t, bool host) { return host ? &t.dl : &t.device; }

void run_case(const OpenclCase& c, uint64_t seed) {
  const Gathered g(c, seed);
  const int64_t E = g.E, El = g.El, Tall = g.Tall, k = c.k, Hd = c.Hd;
  Tensor x(Tall, Hd, c.dtype), ids(Tall, k, c.ids), weights(Tall, k, kF32);
  for (int64_t t = 0; t < Tall; ++t) {
    for (int64_t i = 0; i < Hd; ++i) x.set_value(t, i, g.x[t * Hd + i]);
    for (int64_t j = 0; j < k; ++j) {
      ids.set_index(t, j, g.ids[t * k + j]), weights.set_value(t, j, g.weights[t * k + j]);
    }
  }
  x.upload(), ids.upload(), weights.upload();

  // The single-device OpenCL ops on the gathered problem (index tensors on
  // the device), and the CPU backend's for f32.
  const hops_exec device_exec = opencl_exec(nullptr);
  Tensor rows_all(Tall * k, Hd, c.dtype), counts_all(E, 1, c.ids, -1, 1), map_all(Tall, k, c.ids);
  check(op<hops_moe_dispatch_fn>("moe_dispatch")(&device_exec, &x.device, &ids.device,
                                                 &rows_all.device, &counts_all.device,
                                                 &map_all.device) == HOPS_OK,
        c.name + ": gathered opencl moe_dispatch");
  rows_all.download(), counts_all.download(), map_all.download();
  Tensor out_all(Tall * k, Hd, c.dtype);
  apply_experts(rows_all, counts_all, E, 0, out_all);
  out_all.upload();
  Tensor y_all(Tall, Hd, c.dtype), y_cpu(Tall, Hd, c.dtype);
  check(op<hops_moe_combine_fn>("moe_combine")(&device_exec, &out_all.device, &map_all.device,
                                               &weights.device, &y_all.device) == HOPS_OK,
        c.name + ": gathered opencl moe_combine");
  y_all.download();
  check(op<hops_moe_combine_fn>("moe_combine")(nullptr, &out_all.dl, &map_all.dl, &weights.dl,
                                               &y_cpu.dl) == HOPS_OK,
        c.name + ": gathered cpu moe_combine");

  // This rank's share, with padded rows where the case has them.
  const int64_t Tm = g.T[rank], t0 = g.first[rank];
  Tensor xm(Tm, Hd, c.dtype, Hd + c.pad), idsm(Tm, k, c.ids), wm(Tm, k, kF32);
  for (int64_t t = 0; t < Tm; ++t) {
    std::memcpy(&xm.bytes[xm.at(t, 0) * xm.element()], &x.bytes[x.at(t0 + t, 0) * x.element()],
                Hd * x.element());
    for (int64_t j = 0; j < k; ++j) {
      idsm.set_index(t, j, ids.index(t0 + t, j));
      wm.set_value(t, j, weights.value(t0 + t, j));
    }
  }
  xm.upload(), idsm.upload(), wm.upload();
  int64_t expert_first, arriving;
  g.arrivals(counts_all, expert_first, arriving);
  const int64_t C = arriving + c.spare;
  Tensor rows(C, Hd, c.dtype, Hd + c.pad), counts(El, 1, c.ids, -1, 1), map(Tm, k, c.ids),
      sent(E, 1, c.ids, -1, 1), got(world, El, c.ids);
  hops_comm comm{sizeof(hops_comm), HOPS_COMM_MPI, rank, world, nullptr};
  MPI_Comm handle = MPI_COMM_WORLD;
  comm.handle = &handle;
  const hops_exec exec = opencl_exec(&comm);
  const bool h = c.host_indices;
  hops_status status = op<hops_moe_ep_dispatch_fn>("moe_ep_dispatch")(
      &exec, &xm.device, pick(idsm, h), &rows.device, pick(counts, h), pick(map, h), pick(sent, h),
      pick(got, h));
  check(status == HOPS_OK, c.name + ": moe_ep_dispatch: " + (status ? api->last_error() : ""));
  if (status != HOPS_OK) return;
  rows.download();
  if (!h) counts.download(), map.download(), sent.download(), got.download();
  bool same = true;
  for (int64_t e = 0; e < El; ++e) same &= counts.index(e) == counts_all.index(rank * El + e);
  check(same, c.name + ": counts differ from the gathered dispatch's");
  same = true;
  for (int64_t r = 0; r < arriving; ++r) same &= rows.same_row(r, rows_all, expert_first + r);
  check(same, c.name + ": rows differ from the gathered dispatch's (bitwise)");
  bool zero = true;
  for (int64_t r = arriving; r < C; ++r) {
    for (int64_t i = 0; i < Hd; ++i) zero &= rows.value(r, i) == 0.0f;
  }
  check(zero, c.name + ": rows past the arrived ones are not zero");
  check(rows.gaps_kept(), c.name + ": the gaps between rows' padded rows were written");

  Tensor out(C, Hd, c.dtype, Hd + c.pad);
  std::copy(rows.bytes.begin(), rows.bytes.end(), out.bytes.begin());
  apply_experts(rows, counts, El, rank * El, out);
  out.upload();
  Tensor y(Tm, Hd, c.dtype, Hd + c.pad);
  status = op<hops_moe_ep_combine_fn>("moe_ep_combine")(
      &exec, &out.device, pick(map, h), &wm.device, pick(sent, h), pick(got, h), &y.device);
  check(status == HOPS_OK, c.name + ": moe_ep_combine: " + (status ? api->last_error() : ""));
  y.download();
  same = true;
  bool same_cpu = true;
  for (int64_t t = 0; t < Tm; ++t) {
    same &= y.same_row(t, y_all, t0 + t);
    same_cpu &= y.same_row(t, y_cpu, t0 + t);
  }
  check(same, c.name + ": y differs from the gathered opencl combine's (bitwise)");
  check(y.gaps_kept(), c.name + ": the gaps between y's padded rows were written");
  if (c.dtype.code == kDLFloat) check(same_cpu, c.name + ": f32 y differs from the cpu backend's");
}

// A wrong call on OpenCL tensors: `spoil` changes this rank's call; every
// rank must fail, in bounded time.
struct Problem : WrongCall {
  bool foreign_x = false;        // x's cl_mem belongs to another context
  bool bad_recv_counts = false;  // combine: a spoilt handle (device-resident)
  bool bad_row_map = false;      // combine: a row out of range (device-resident)
};

void expect_failure(const std::string& what, const std::function<void(Problem&)>& spoil,
                    double bound_s, bool combine = false) {
  MPI_Comm handle = MPI_COMM_WORLD;
  hops_comm comm{sizeof(hops_comm), HOPS_COMM_MPI, rank, world, &handle};
  Problem p;
  spoil(p);
  const int64_t El = std::max<int64_t>(p.E / world, 1);
  Tensor x(p.T, p.Hd, p.x_dtype), ids(p.T, p.k, kI64), rows(p.C, p.Hd, kF32),
      counts(El, 1, kI64, -1, 1), map(p.T, p.k, kI64), sent(p.E, 1, kI64, -1, 1),
      got(world, El, kI64);
  for (int64_t i = 0; i < p.T * p.Hd; ++i) x.set_value(i / p.Hd, i % p.Hd, 0.5f);
  for (int64_t i = 0; i < p.T * p.k; ++i) ids.set_index(i / p.k, i % p.k, (i * 7 + rank) % p.E);
  x.upload(), ids.upload();
  cl_context other = nullptr;
  cl_mem foreign = nullptr;
  DLTensor x_dl = x.device;
  if (p.foreign_x) {
    cl_device_id device = nullptr;
    cl_check(clGetCommandQueueInfo(queue, CL_QUEUE_DEVICE, sizeof device, &device, nullptr),
             "clGetCommandQueueInfo");
    cl_int status = CL_SUCCESS;
    other = clCreateContext(nullptr, 1, &device, nullptr, nullptr, &status);
    cl_check(status, "clCreateContext");
    foreign = clCreateBuffer(other, CL_MEM_READ_WRITE, x.bytes.size(), nullptr, &status);
    cl_check(status, "clCreateBuffer");
    x_dl.data = foreign;
  }
  const hops_exec exec = opencl_exec(&comm);
  expect_failure_within(what, bound_s, [&] {
    const hops_status status = op<hops_moe_ep_dispatch_fn>("moe_ep_dispatch")(
        &exec, &x_dl, &ids.device, &rows.device, &counts.device, &map.device, &sent.device,
        &got.device);
    if (!combine) return status;
    check(status == HOPS_OK, what + ": the valid dispatch before it failed");
    if (p.bad_recv_counts || p.bad_row_map) {
      got.download(), map.download();
      if (p.bad_recv_counts) got.set_index(0, 0, got.index(0, 0) + 1);
      if (p.bad_row_map) map.set_index(0, 0, p.T * p.k + 3);
      got.upload(), map.upload();
    }
    Tensor w(p.T, p.k, kF32), y(p.T, p.Hd, kF32);
    return op<hops_moe_ep_combine_fn>("moe_ep_combine")(&exec, &rows.device, &map.device, &w.device,
                                                        &sent.device, &got.device, &y.device);
  });
  if (foreign) clReleaseMemObject(foreign), clReleaseContext(other);
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return text;
}

// The device whose platform name contains HOPS_OPENCL_DEVICE (the plugin's
// choice for its own queue; "pocl" in CI), else the first one.
cl_device_id choose_device() {
  const char* env = std::getenv("HOPS_OPENCL_DEVICE");
  const std::string wanted = lower(env ? env : "");
  cl_uint count = 0;
  cl_check(clGetPlatformIDs(0, nullptr, &count), "clGetPlatformIDs");
  std::vector<cl_platform_id> platforms(count);
  cl_check(clGetPlatformIDs(count, platforms.data(), nullptr), "clGetPlatformIDs");
  cl_device_id chosen = nullptr;
  for (cl_platform_id platform : platforms) {
    char name[256] = {};
    clGetPlatformInfo(platform, CL_PLATFORM_NAME, sizeof name - 1, name, nullptr);
    cl_device_id device = nullptr;
    if (clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, nullptr) != CL_SUCCESS) continue;
    if (!chosen || (!wanted.empty() && lower(name).find(wanted) != std::string::npos)) {
      chosen = device;
      if (!wanted.empty() && lower(name).find(wanted) != std::string::npos) break;
    }
  }
  if (!chosen) {
    std::fprintf(stderr, "rank %d: no OpenCL device\n", rank);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  return chosen;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  load_api(argc, argv);
  bool opencl = false;
  for (int32_t i = 0; i < api->backend_count(); ++i) {
    const hops_backend_info* b = api->backend_at(i);
    opencl |= std::strcmp(b->name, "opencl") == 0 && b->available;
    if (rank == 0) std::printf("backend %s: %s\n", b->name, b->detail);
  }
  if (!opencl) {  // a test that cannot run fails: CI has PoCL
    if (rank == 0) std::fprintf(stderr, "no available opencl backend\n");
    MPI_Finalize();
    return 1;
  }
  cl_device_id device = choose_device();
  cl_int status = CL_SUCCESS;
  context = clCreateContext(nullptr, 1, &device, nullptr, nullptr, &status);
  cl_check(status, "clCreateContext");
  queue = clCreateCommandQueue(context, device, 0, &status);
  cl_check(status, "clCreateCommandQueue");

  const std::vector<OpenclCase> cases = {
      {{"uneven T, drops, f32, int64 ids", [](int r) { return 5 + 3 * r; }, 2, 2, 8, kF32, kI64,
        0.2, false, 0},
       false,
       0},
      {{"a rank without tokens, k=1, int32 host ids", [](int r) { return r == 1 ? 0 : 7; }, 1, 1,
        16, kF32, kI32, 0.0, false, 2},
       true,
       0},
      {{"all to rank 0 (others receive nothing), bf16", [](int r) { return 4 + r; }, 4, 3, 32,
        kBF16, kI32, 0.1, true, 0},
       false,
       0},
      {{"odd Hd, half dropped, spare, padded rows", [](int r) { return 9 + r * r; }, 3, 4, 33, kF32,
        kI32, 0.5, false, 5},
       false,
       3},
      {{"every slot dropped, host int64 ids", [](int) { return 3; }, 2, 2, 8, kF32, kI64, 1.0,
        false, 1},
       true,
       0},
      {{"k > E/ranks, T=200, f32", [](int r) { return 200 - 17 * r; }, 2, 6, 64, kF32, kI64, 0.05,
        false, 0},
       false,
       0},
      {{"bf16, T=64, Hd=128, int64 ids, padded", [](int) { return 64; }, 8, 8, 128, kBF16, kI64,
        0.0, false, 0},
       false,
       16},
  };
  uint64_t seed = 4321;
  for (const OpenclCase& c : cases) {
    run_case(c, seed++);
    if (rank == 0) std::printf("case %-46s done\n", c.name.c_str());
  }

  if (rank == 0) std::printf("wrong calls on opencl tensors (every rank must fail):\n");
  const double bound = 10.0;  // no timeout involved: the ranks tell each other
  expect_failure(
      "E % ranks != 0", [](Problem& p) { p.E = 2 * world + 1; }, bound);
  expect_failure(
      "ranks disagree on k",
      [](Problem& p) {
        if (rank == world - 1) p.k = 3;
      },
      bound);
  expect_failure(
      "a bad tensor on one rank (x int dtype)",
      [](Problem& p) {
        if (rank == 1) p.x_dtype = kI32;
      },
      bound);
  expect_failure(
      "x in another cl_context on one rank", [](Problem& p) { p.foreign_x = rank == 1; }, bound);
  expect_failure(
      "rows too few on one rank",
      [](Problem& p) {
        if (rank == 0) p.C = 1;
      },
      bound);
  expect_failure(
      "combine, a spoilt device handle on one rank",
      [](Problem& p) { p.bad_recv_counts = rank == 1; }, bound, true);
  expect_failure(
      "combine, a device row_map out of range, one rank",
      [](Problem& p) { p.bad_row_map = rank == 0; }, bound, true);

  const int total = report("moe_ep on opencl tensors", cases.size());
  clReleaseCommandQueue(queue);
  clReleaseContext(context);
  MPI_Finalize();
  return total ? 1 : 0;
}
