// The CUDA backend module, libhops_cuda.so: the host side of every op (turn
// the validated argument struct into kernel parameters, stage host index
// tensors, launch on the call's stream, map CUDA errors), the scratch pool,
// and the module's entry point. The kernels are in *.cu (cuda_params.hpp is
// the interface). The CUDA runtime is linked statically and reaches the
// driver (libcuda.so.1) only when first asked, so on a machine without one
// the module still loads and reports itself unavailable.
#include <cuda_runtime_api.h>

#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.hpp"
#include "checked_math.hpp"
#include "cuda_params.hpp"
#include "error.hpp"
#include "ops/conv1d.hpp"
#include "ops/gdn.hpp"
#include "ops/norm.hpp"

namespace hops::cuda {

namespace {

// ---- errors, device, scratch ------------------------------------------------------

// HOPS_ERR_BACKEND "<op>: CUDA error <name> (<text>) in <what>".
void check(cudaError_t status, const char* op, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  if (status == cudaErrorMemoryAllocation) {
    fail(HOPS_ERR_OUT_OF_MEMORY, "{}: CUDA out of device memory in {}", op, what);
  }
  fail(HOPS_ERR_BACKEND, "{}: CUDA error {} ({}) in {}", op, cudaGetErrorName(status),
       cudaGetErrorString(status), what);
}

// Makes exec.device current for the call and puts the previous one back.
class DeviceGuard {
 public:
  DeviceGuard(const ExecContext& context, const char* op)
      : device_(context.exec.device.device_id),
        stream_(static_cast<cudaStream_t>(context.exec.stream)),
        allocator_(context.allocator) {
    check(cudaGetDevice(&previous_), op, "cudaGetDevice");
    if (previous_ != device_) check(cudaSetDevice(device_), op, "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ >= 0 && previous_ != device_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  const hops_allocator& allocator() const { return allocator_; }

 private:
  int device_;
  int previous_ = -1;
  cudaStream_t stream_;
  hops_allocator allocator_;  // the host's, or struct_size 0
};

// One memory pool per device that keeps what it was given (release threshold
// unlimited): steady-state calls get scratch without reaching cudaMalloc.
cudaMemPool_t device_pool(int device, const char* op) {
  static std::mutex mutex;
  static std::vector<cudaMemPool_t> pools;
  const std::scoped_lock lock(mutex);
  if (pools.size() <= static_cast<size_t>(device))
    pools.resize(static_cast<size_t>(device) + 1, nullptr);
  cudaMemPool_t& pool = pools[static_cast<size_t>(device)];
  if (!pool) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    check(cudaMemPoolCreate(&pool, &props), op, "cudaMemPoolCreate");
    uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), op,
          "cudaMemPoolSetAttribute");
  }
  return pool;
}

// Stream-ordered scratch: allocated and freed on the call's stream, so it is
// safe to reuse as soon as the kernels queued before the free have run. With
// a host allocator (hops_api::set_allocator: torch's caching allocator
// through the Python shim) the memory comes from the host and goes back to it
// when the call's work is queued, so hops holds nothing between calls; the
// host's free must be stream-ordered too, as cudaFreeAsync and torch's
// caching allocator are. Without one, hops' own pool keeps what it had.
class Scratch {
 public:
  Scratch(size_t bytes, const DeviceGuard& guard, const char* op)
      : bytes_(bytes ? bytes : 16), stream_(guard.stream()), host_(guard.allocator()) {
    if (host_.alloc) {
      data_ = host_.alloc(host_.ctx, DLDevice{kDLCUDA, guard.device()}, bytes_, stream_);
      if (!data_) {
        fail(HOPS_ERR_OUT_OF_MEMORY,
             "{}: the host's allocator returned NULL for {} bytes of scratch", op, bytes_);
      }
      device_ = guard.device();
      return;
    }
    check(cudaMallocFromPoolAsync(&data_, bytes_, device_pool(guard.device(), op), stream_), op,
          "cudaMallocFromPoolAsync (scratch)");
  }
  ~Scratch() {
    if (!data_) return;
    if (host_.free) {
      host_.free(host_.ctx, DLDevice{kDLCUDA, device_}, data_, bytes_, stream_);
    } else {
      cudaFreeAsync(data_, stream_);
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  size_t bytes_;
  cudaStream_t stream_;
  hops_allocator host_;
  int device_ = 0;
};

// ---- arguments ---------------------------------------------------------------------

int code_of(DType t) {
  switch (t) {
    case DType::f16:
      return kF16;
    case DType::bf16:
      return kBF16;
    case DType::i32:
      return kI32;
    case DType::i64:
      return kI64;
    default:
      return kF32;
  }
}

Arg make_arg(const Tensor& t) {
  Arg a;
  if (!t) return a;
  a.data = static_cast<char*>(t.handle) + t.byte_offset;
  a.dtype = code_of(t.dtype);
  a.ndim = t.ndim < 4 ? t.ndim : 4;
  for (int d = 0; d < a.ndim; ++d) a.shape[d] = t.shape[d], a.stride[d] = t.stride[d];
  return a;
}

RowsArg make_rows(const Tensor& t) {
  RowsArg a;
  a.data = static_cast<char*>(t.handle) + t.byte_offset;
  a.dtype = code_of(t.dtype);
  a.lead = t.ndim - 1;
  for (int d = 0; d < a.lead; ++d) a.shape[d] = t.shape[d], a.stride[d] = t.stride[d];
  a.step = t.ndim > 0 ? t.stride[t.ndim - 1] : 1;
  return a;
}

// An index tensor as the kernels read it. A host-resident one (validated by
// the plugin) is copied as int64 to stream-ordered scratch: from pageable
// memory cudaMemcpyAsync returns once the bytes are staged, so the host
// vector may go when this returns (and the call does not wait for the GPU).
// A device-resident one is read in place; the kernels clamp its values.
class StagedIndex {
 public:
  StagedIndex(const Tensor& t, const DeviceGuard& guard, const char* op) {
    if (!t) return;
    const bool host = t.device.device_type == kDLCPU || t.device.device_type == kDLCUDAHost;
    if (!host) {
      index_.data = static_cast<const char*>(t.handle) + t.byte_offset;
      index_.stride = t.stride[0];
      index_.is64 = t.dtype == DType::i64;
      return;
    }
    std::vector<int64_t> values(static_cast<size_t>(t.shape[0]));
    for (int64_t i = 0; i < t.shape[0]; ++i) values[static_cast<size_t>(i)] = read_index(t, i);
    scratch_ =
        std::make_unique<Scratch>(scratch_bytes(op, values.size(), sizeof(int64_t)), guard, op);
    check(cudaMemcpyAsync(scratch_->data(), values.data(), values.size() * sizeof(int64_t),
                          cudaMemcpyHostToDevice, guard.stream()),
          op, "cudaMemcpyAsync (index tensor to the device)");
    index_ = {scratch_->data(), 1, 1};
  }
  const Index& get() const { return index_; }

 private:
  Index index_;
  std::unique_ptr<Scratch> scratch_;
};

int64_t state_step(const Tensor& t, bool v_first, bool k_dim) {
  if (!t) return 0;
  return t.stride[(k_dim != v_first) ? 2 : 3];
}

// The GDN kernels' limits, as the accepts check of their kernels: the plugin
// asks before running (and for supports_call), so a refused call reaches
// the next backend or the host with nothing written.
template <class Op>
void gdn_limits(const Op& op) {
  const char* name = Op::kName;
  if (op.K > kMaxHeadDim) {
    fail(HOPS_ERR_UNSUPPORTED, "{}: the cuda backend supports K <= {}, got K = {}", name,
         kMaxHeadDim, op.K);
  }
  if (op.sequences.count > 65535 || op.HV > 65535) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: the cuda backend supports at most 65535 sequences and value heads, got N = {}, HV = "
         "{}",
         name, op.sequences.count, op.HV);
  }
}

// ---- ops -----------------------------------------------------------------------------

void gdn_gating(const ExecContext& context, const GdnGating& op) {
  if (op.rows * op.HV == 0) return;
  const DeviceGuard guard(context, op.kName);
  const GatingParams p{make_rows(op.a),
                       make_rows(op.b),
                       make_rows(op.g),
                       make_rows(op.beta),
                       make_arg(op.A_log),
                       make_arg(op.dt_bias),
                       op.rows,
                       op.HV,
                       static_cast<float>(op.softplus_beta),
                       static_cast<float>(op.softplus_threshold)};
  check(launch_gdn_gating(p, guard.stream()), op.kName, "gating kernel launch");
}

void gated_rmsnorm(const ExecContext& context, const GatedRmsNorm& op) {
  if (op.rows == 0 || op.D == 0) return;
  const DeviceGuard guard(context, op.kName);
  const NormParams p{make_rows(op.x),           make_rows(op.z), make_rows(op.y),
                     make_arg(op.weight),       op.rows,         op.D,
                     static_cast<float>(op.eps)};
  check(launch_gated_rmsnorm(p, code_of(op.x.dtype), guard.stream()), op.kName,
        "rmsnorm kernel launch");
}

bool aligned16(const Arg& a) { return (reinterpret_cast<uintptr_t>(a.data) & 15u) == 0; }

void conv1d_fwd(const ExecContext& context, const Conv1dFwd& op) {
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu(op.sequences.cu_seqlens, guard, op.kName);
  ConvParams p{make_arg(op.x),
               make_arg(op.y),
               make_arg(op.weight),
               make_arg(op.bias),
               make_arg(op.initial_state),
               make_arg(op.final_state),
               cu.get(),
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
                           op.activation == Activation::silu};
  check(launch_conv1d_update(p, code_of(op.x.dtype), guard.stream()), op.kName,
        "conv1d_update kernel launch");
}

void gdn_recurrent(const ExecContext& context, const GdnRecurrent& op) {
  const int64_t N = op.sequences.count;
  if (N == 0 || op.HV == 0) return;
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu(op.sequences.cu_seqlens, guard, op.kName);
  const StagedIndex slots(op.slots.indices, guard, op.kName);
  const RecurrentParams p{make_arg(op.q),
                          make_arg(op.k),
                          make_arg(op.v),
                          make_arg(op.g),
                          make_arg(op.beta),
                          make_arg(op.A_log),
                          make_arg(op.dt_bias),
                          make_arg(op.o),
                          make_arg(op.state),
                          cu.get(),
                          slots.get(),
                          N,
                          op.T,
                          op.H,
                          op.HV,
                          op.K,
                          op.V,
                          op.state.shape[0],
                          state_step(op.state, op.state_v_first, true),
                          state_step(op.state, op.state_v_first, false),
                          static_cast<float>(op.scale),
                          op.use_qk_l2norm,
                          op.fused_gating()};
  check(launch_gdn_recurrent(p, code_of(op.q.dtype), guard.stream()), op.kName,
        "recurrent kernel launch");
}

void gdn_chunk_fwd(const ExecContext& context, const GdnChunkFwd& op) {
  const int64_t N = op.sequences.count;
  if (N == 0 || op.HV == 0) return;
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu(op.sequences.cu_seqlens, guard, op.kName);
  const bool vf = op.state_v_first;
  const ChunkParams p{make_arg(op.q),
                      make_arg(op.k),
                      make_arg(op.v),
                      make_arg(op.g),
                      make_arg(op.beta),
                      make_arg(op.A_log),
                      make_arg(op.dt_bias),
                      make_arg(op.o),
                      make_arg(op.initial_state),
                      make_arg(op.final_state),
                      cu.get(),
                      N,
                      op.T,
                      op.H,
                      op.HV,
                      op.K,
                      op.V,
                      state_step(op.initial_state, vf, true),
                      state_step(op.initial_state, vf, false),
                      state_step(op.final_state, vf, true),
                      state_step(op.final_state, vf, false),
                      static_cast<float>(op.scale),
                      op.use_qk_l2norm,
                      op.fused_gating()};
  const int dtype = code_of(op.q.dtype);
  if (chunk_tc_supported(p, dtype)) {
    const Scratch scratch(chunk_tc_scratch_bytes(p), guard, op.kName);
    check(launch_gdn_chunk_tc(p, dtype, scratch.data(), guard.stream()), op.kName,
          "tensor-core chunk kernels launch");
  } else {
    check(launch_gdn_chunk_general(p, dtype, guard.stream()), op.kName, "chunk kernel launch");
  }
}

// True when every tensor can be read as vectors of `vec` elements along its
// last dim: unit last stride, a multiple of `vec` long, the other strides
// multiples of `vec` and the data aligned to a vector's bytes.
bool vector_rows(std::initializer_list<const Tensor*> tensors, int64_t vec) {
  for (const Tensor* t : tensors) {
    const int64_t bytes = vec * dtype_size(t->dtype);
    if (t->ndim == 0 || t->stride[t->ndim - 1] != 1 || t->shape[t->ndim - 1] % vec != 0 ||
        (reinterpret_cast<uintptr_t>(static_cast<const char*>(t->handle) + t->byte_offset) %
         static_cast<uintptr_t>(bytes)) != 0)
      return false;
    for (int d = 0; d + 1 < t->ndim; ++d)
      if (t->stride[d] % vec != 0) return false;
  }
  return true;
}

void conv1d_bwd(const ExecContext& context, const Conv1dBwd& op) {
  if (op.D == 0) return;
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu(op.sequences.cu_seqlens, guard, op.kName);
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

void gated_rmsnorm_bwd(const ExecContext& context, const GatedRmsNormBwd& op) {
  if (op.D == 0) return;
  const DeviceGuard guard(context, op.kName);
  const int dtype = code_of(op.x.dtype);
  const NormBwdParams p{
      make_rows(op.x),
      make_rows(op.z),
      make_rows(op.dy),
      make_rows(op.dx),
      make_rows(op.dz),
      make_arg(op.weight),
      make_arg(op.dweight),
      op.rows,
      op.D,
      static_cast<float>(op.eps),
      vector_rows({&op.x, &op.z, &op.dy, &op.dx, &op.dz}, 16 / dtype_size(op.x.dtype))};
  const Scratch scratch(gated_rmsnorm_bwd_scratch_bytes(p, dtype), guard, op.kName);
  check(launch_gated_rmsnorm_bwd(p, dtype, scratch.data(), guard.stream()), op.kName,
        "gated_rmsnorm_bwd kernels launch");
}

void gdn_chunk_bwd(const ExecContext& context, const GdnChunkBwd& op) {
  const int64_t N = op.sequences.count;
  if (N == 0 || op.HV == 0) return;
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu(op.sequences.cu_seqlens, guard, op.kName);
  const bool vf = op.state_v_first;
  const ChunkBwdParams p{make_arg(op.q),
                         make_arg(op.k),
                         make_arg(op.v),
                         make_arg(op.g),
                         make_arg(op.beta),
                         make_arg(op.d_o),
                         make_arg(op.initial_state),
                         make_arg(op.d_final_state),
                         make_arg(op.dq),
                         make_arg(op.dk),
                         make_arg(op.dv),
                         make_arg(op.dg),
                         make_arg(op.dbeta),
                         make_arg(op.dh0),
                         cu.get(),
                         N,
                         op.T,
                         op.H,
                         op.HV,
                         op.K,
                         op.V,
                         state_step(op.initial_state, vf, true),
                         state_step(op.initial_state, vf, false),
                         state_step(op.d_final_state, vf, true),
                         state_step(op.d_final_state, vf, false),
                         state_step(op.dh0, vf, true),
                         state_step(op.dh0, vf, false),
                         static_cast<float>(op.scale),
                         op.use_qk_l2norm};
  const Scratch scratch(chunk_bwd_scratch_bytes(p), guard, op.kName);
  check(launch_gdn_chunk_bwd(p, scratch.data(), guard.stream()), op.kName,
        "backward chunk kernels launch");
}

// ---- module entry ----------------------------------------------------------------------

constexpr uint32_t kFloats = HOPS_DTYPE_FLOATS;

const Kernel kKernels[] = {
    kernel<GdnChunkFwd, &gdn_chunk_fwd, &gdn_limits<GdnChunkFwd>>(kFloats),
    kernel<GdnRecurrent, &gdn_recurrent, &gdn_limits<GdnRecurrent>>(kFloats),
    kernel<GdnGating, &gdn_gating>(kFloats),
    kernel<GatedRmsNorm, &gated_rmsnorm>(kFloats),
    kernel<Conv1dFwd, &conv1d_fwd>(kFloats),
    kernel<Conv1dUpdate, &conv1d_update>(kFloats),
    kernel<Conv1dBwd, &conv1d_bwd>(kFloats),
    kernel<GatedRmsNormBwd, &gated_rmsnorm_bwd>(kFloats),
    kernel<GdnChunkBwd, &gdn_chunk_bwd, &gdn_limits<GdnChunkBwd>>(kFloats),
};

const char* module_last_error() { return hops::last_error(); }

BackendModule make_module() {
  static std::string detail;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  bool available = false;
  if (status != cudaSuccess) {
    detail = fmt::format("no CUDA driver: {} ({})", cudaGetErrorName(status),
                         cudaGetErrorString(status));
    cudaGetLastError();
  } else if (count == 0) {
    detail = "no CUDA device";
  } else {
    int runtime = 0, driver = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    available = prop.major >= 9;
    detail = fmt::format("{} CUDA device(s); device 0: {} (sm_{}{}); runtime {}, driver {}{}",
                         count, prop.name, prop.major, prop.minor, runtime, driver,
                         available ? "" : "; kernels are built for sm_90a only");
  }
  return {sizeof(BackendModule),
          kModuleInterfaceVersion,
          kModuleLayout,
          "cuda",
          kDLCUDA,
          available ? 1 : 0,
          detail.c_str(),
          10,
          kKernels,
          std::size(kKernels),
          &module_last_error};
}

}  // namespace

}  // namespace hops::cuda

extern "C" __attribute__((visibility("default"))) const hops::BackendModule* hops_backend_module() {
  static const hops::BackendModule module = hops::cuda::make_module();
  return &module;
}
