// The MoE family's host side: moe_route (moe_route.cu), moe_dispatch,
// moe_combine, moe_dispatch_bwd and moe_combine_bwd (moe_rows.cu),
// moe_expert_mlp (moe_mlp.cu) and moe_expert_mlp_bwd (moe_mlp_bwd.cu).
#include <climits>
#include <cstdlib>
#include <memory>
#include <string_view>
#include <vector>

#include "cuda_host.hpp"
#include "moe_params.hpp"
#include "ops/moe.hpp"

namespace hops::cuda {

namespace {

MoeIndex in_place(const Tensor& t) {
  return {static_cast<char*>(t.handle) + t.byte_offset, t.ndim > 0 ? t.stride[0] : 0,
          t.ndim > 1 ? t.stride[1] : 0, t.dtype == DType::i64};
}

int64_t index_count(const Tensor& t) { return t.ndim > 1 ? t.shape[0] * t.shape[1] : t.shape[0]; }

// An index input ([E] or [T,k]) as the kernels read it: in place when
// device-resident; a host-resident one (validated by the op's check) is
// copied as contiguous int64 to stream-ordered scratch. From pageable memory
// cudaMemcpyAsync returns once the bytes are staged, so the call does not
// wait for the GPU.
class IndexInput {
 public:
  IndexInput(const Tensor& t, const DeviceGuard& guard, const char* op) {
    if (!host_accessible(t.device)) {
      index_ = in_place(t);
      return;
    }
    const int64_t cols = t.ndim > 1 ? t.shape[1] : 1;
    std::vector<int64_t> values(static_cast<size_t>(index_count(t)));
    for (int64_t i = 0; i < t.shape[0]; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        values[static_cast<size_t>(i * cols + j)] =
            t.ndim > 1 ? read_index(t, i, j) : read_index(t, i);
      }
    }
    scratch_ =
        std::make_unique<Scratch>(scratch_bytes(op, values.size(), sizeof(int64_t)), guard, op);
    if (!values.empty()) {
      check(cudaMemcpyAsync(scratch_->data(), values.data(), values.size() * sizeof(int64_t),
                            cudaMemcpyHostToDevice, guard.stream()),
            op, "cudaMemcpyAsync (index tensor to the device)");
    }
    index_ = {scratch_->data(), cols, 1, 1};
  }
  const MoeIndex& get() const { return index_; }

 private:
  MoeIndex index_;
  std::unique_ptr<Scratch> scratch_;
};

// An index output (topk_ids, counts, row_map): written in place when
// device-resident. A host-resident one is written by the kernels to int64
// scratch and copied to the host by finish(), which waits for the stream:
// the caller asked for the values on the host.
class IndexOutput {
 public:
  IndexOutput(const Tensor& t, const DeviceGuard& guard, const char* op)
      : tensor_(t), stream_(guard.stream()), op_(op) {
    if (!host_accessible(t.device)) {
      index_ = in_place(t);
      return;
    }
    scratch_ =
        std::make_unique<Scratch>(scratch_bytes(op, index_count(t), sizeof(int64_t)), guard, op);
    index_ = {scratch_->data(), t.ndim > 1 ? t.shape[1] : 1, 1, 1};
  }
  const MoeIndex& get() const { return index_; }

  void finish() const {
    if (!scratch_ || index_count(tensor_) == 0) return;
    std::vector<int64_t> values(static_cast<size_t>(index_count(tensor_)));
    check(cudaMemcpyAsync(values.data(), scratch_->data(), values.size() * sizeof(int64_t),
                          cudaMemcpyDeviceToHost, stream_),
          op_, "cudaMemcpyAsync (index output to the host)");
    check(cudaStreamSynchronize(stream_), op_, "cudaStreamSynchronize (index output)");
    const int64_t cols = tensor_.ndim > 1 ? tensor_.shape[1] : 1;
    for (int64_t i = 0; i < tensor_.shape[0]; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t at = i * tensor_.stride[0] + (tensor_.ndim > 1 ? j * tensor_.stride[1] : 0);
        const int64_t v = values[static_cast<size_t>(i * cols + j)];
        if (tensor_.dtype == DType::i32) {
          tensor_.data<int32_t>()[at] = static_cast<int32_t>(v);
        } else {
          tensor_.data<int64_t>()[at] = v;
        }
      }
    }
  }

 private:
  const Tensor& tensor_;
  cudaStream_t stream_;
  const char* op_;
  MoeIndex index_;
  std::unique_ptr<Scratch> scratch_;
};

// The forward's tensor-core path where HOPS_CUDA_MOE_MLP is unset: the sm_90a
// kernels where they take the call, mma.sync elsewhere.
constexpr MoeMlpPath kDefaultMlpPath = MoeMlpPath::any;

// HOPS_CUDA_MOE_MLP=mma runs the forward's tensor-core GEMMs on mma.sync where
// the sm_90a ones would run; =wgmma fails the calls the sm_90a kernels cannot
// take (tests and benchmarks compare the two); =any takes the sm_90a kernels
// where they take the call, mma.sync elsewhere.
MoeMlpPath forced_mlp_path() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read-only use of the environment
  const char* value = std::getenv("HOPS_CUDA_MOE_MLP");
  const std::string_view path = value ? value : "";
  if (path == "any") return MoeMlpPath::any;
  return path == "mma" ? MoeMlpPath::mma : path == "wgmma" ? MoeMlpPath::wgmma : kDefaultMlpPath;
}

// moe_dispatch's bookkeeping: v2 (moe_dispatch_v2.cu) unless
// HOPS_CUDA_MOE_DISPATCH=v1 asks for the one it replaced (moe_rows.cu), =v3
// for v2's kernels chained by programmatic dependent launch with v3's copy
// kernel, =v3-chain for that chain with v2's copy kernel (v3 opt-in until a
// device run has checked and timed it; v3-chain tells the two changes apart).
MoeDispatchVersion dispatch_version() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read-only use of the environment
  const char* value = std::getenv("HOPS_CUDA_MOE_DISPATCH");
  const std::string_view version = value ? value : "";
  if (version == "v1") return MoeDispatchVersion::v1;
  if (version == "v3-chain") return MoeDispatchVersion::v3_chain;
  return version == "v3" ? MoeDispatchVersion::v3 : MoeDispatchVersion::v2;
}

int multiprocessors(const DeviceGuard& guard, const char* op) {
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, guard.device()), op,
        "cudaDeviceGetAttribute (multiprocessors)");
  return sms;
}

bool vector16(std::initializer_list<const Tensor*> tensors) {
  return vector_rows(tensors, 16 / dtype_size((*tensors.begin())->dtype));
}

// The tensor-core GEMMs: f16/bf16, Hd and I multiples of 8 (16-byte pieces
// of every row) and every float tensor unit-stride along its last dim with
// 16-byte aligned rows.
bool tensor_cores(DType dtype, int64_t Hd, int64_t I, std::initializer_list<const Tensor*> all) {
  if (dtype != DType::f16 && dtype != DType::bf16) return false;
  if (Hd % 8 != 0 || I % 8 != 0) return false;
  for (const Tensor* t : all)
    if (*t && !vector_rows({t}, 8)) return false;
  return true;
}

// ---- the accepts checks: limits of the kernels' 32-bit fields ----

void slots_limit(const char* name, int64_t T, int64_t k) {
  const std::optional<int64_t> slots = try_mul(T, k);
  if (!slots || *slots > INT32_MAX) {
    fail(HOPS_ERR_UNSUPPORTED, "{}: the cuda backend supports up to 2^31 - 1 slots T*k", name);
  }
}

void dispatch_limits(const MoeDispatch& op) {
  slots_limit(op.kName, op.T, op.k);
  if (op.E >= INT32_MAX) {  // bucket E counts the dropped slots
    fail(HOPS_ERR_UNSUPPORTED, "{}: the cuda backend supports up to 2^31 - 2 experts", op.kName);
  }
}
void combine_bwd_limits(const MoeCombineBwd& op) { slots_limit(op.kName, op.T, op.k); }

template <class Op>
void expert_limits(const Op& op) {
  if (op.E > INT32_MAX) {
    fail(HOPS_ERR_UNSUPPORTED, "{}: the cuda backend supports up to 2^31 - 1 experts", op.kName);
  }
}

// ---- the ops ----

void moe_route(const ExecContext& context, const MoeRoute& op) {
  if (op.T == 0 || op.k == 0) return;
  const DeviceGuard guard(context, op.kName);
  const IndexOutput ids(op.topk_ids, guard, op.kName);
  const MoeRouteParams p{
      make_arg(op.logits), make_arg(op.topk_weights),        ids.get(), op.T, op.E, op.k,
      op.normalize,        op.scoring == MoeScoring::sigmoid};
  check(launch_moe_route(p, guard.stream()), op.kName, "route kernel launch");
  ids.finish();
}

void moe_dispatch(const ExecContext& context, const MoeDispatch& op) {
  const DeviceGuard guard(context, op.kName);
  const IndexInput ids(op.topk_ids, guard, op.kName);
  const IndexOutput counts(op.counts, guard, op.kName), row_map(op.row_map, guard, op.kName);
  const MoeDispatchParams p{make_arg(op.x),
                            make_arg(op.rows),
                            ids.get(),
                            counts.get(),
                            row_map.get(),
                            op.T,
                            op.k,
                            op.Hd,
                            op.E,
                            vector16({&op.x, &op.rows}),
                            dispatch_version()};
  // The per-chunk counts, the buckets and each slot's row: below T*k + 2E + 2^25 ints.
  scratch_size(op.kName, scratch_sum(op.kName, op.T * op.k, op.E, op.E, int64_t{1} << 25), 4);
  const Scratch scratch(moe_dispatch_scratch_bytes(p), guard, op.kName);
  check(launch_moe_dispatch(p, scratch.data(), guard.stream()), op.kName,
        "dispatch kernels launch");
  counts.finish();
  row_map.finish();
}

void moe_combine(const ExecContext& context, const MoeCombine& op) {
  if (op.T == 0 || op.Hd == 0) return;
  const DeviceGuard guard(context, op.kName);
  const IndexInput row_map(op.row_map, guard, op.kName);
  const MoeGatherParams p{make_arg(op.rows),
                          make_arg(op.topk_weights),
                          make_arg(op.y),
                          row_map.get(),
                          op.R,
                          op.T,
                          op.k,
                          op.Hd,
                          vector16({&op.rows, &op.y})};
  check(launch_moe_gather(p, guard.stream()), op.kName, "combine kernel launch");
}

void moe_dispatch_bwd(const ExecContext& context, const MoeDispatchBwd& op) {
  if (op.T == 0 || op.Hd == 0) return;
  const DeviceGuard guard(context, op.kName);
  const IndexInput row_map(op.row_map, guard, op.kName);
  const MoeGatherParams p{
      make_arg(op.d_rows),           Arg{}, make_arg(op.dx), row_map.get(), op.R, op.T, op.k, op.Hd,
      vector16({&op.d_rows, &op.dx})};
  check(launch_moe_gather(p, guard.stream()), op.kName, "dispatch_bwd kernel launch");
}

void moe_combine_bwd(const ExecContext& context, const MoeCombineBwd& op) {
  const DeviceGuard guard(context, op.kName);
  const IndexInput row_map(op.row_map, guard, op.kName);
  const MoeCombineBwdParams p{make_arg(op.rows),
                              make_arg(op.topk_weights),
                              make_arg(op.dy),
                              make_arg(op.d_rows),
                              make_arg(op.d_topk_weights),
                              row_map.get(),
                              op.R,
                              op.T,
                              op.k,
                              op.Hd,
                              vector16({&op.rows, &op.dy, &op.d_rows})};
  const Scratch scratch(scratch_bytes(op.kName, op.R, 4), guard, op.kName);
  check(launch_moe_combine_bwd(p, scratch.data(), guard.stream()), op.kName,
        "combine_bwd kernels launch");
}

void moe_expert_mlp(const ExecContext& context, const MoeExpertMlp& op) {
  if (op.R == 0 || op.Hd == 0) return;
  const DeviceGuard guard(context, op.kName);
  const IndexInput counts(op.counts, guard, op.kName);
  const MoeMlpParams p{make_arg(op.rows),
                       make_arg(op.gate_up_proj),
                       make_arg(op.down_proj),
                       make_arg(op.out),
                       counts.get(),
                       op.R,
                       op.Hd,
                       op.E,
                       op.I,
                       tensor_cores(op.rows.dtype, op.Hd, op.I,
                                    {&op.rows, &op.out, &op.gate_up_proj, &op.down_proj}),
                       multiprocessors(guard, op.kName),
                       forced_mlp_path()};
  // h [R, I] (f32 at most) and the plan (E + 1 offsets twice, R + E entries).
  scratch_sum(op.kName, scratch_size(op.kName, op.R, op.I, 4),
              scratch_size(op.kName, op.E + op.R + 2, 24));
  const Scratch scratch(moe_expert_mlp_scratch_bytes(p), guard, op.kName);
  const cudaError_t status = launch_moe_expert_mlp(p, scratch.data(), guard.stream());
  if (status == cudaErrorNotSupported && p.path == MoeMlpPath::wgmma) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: HOPS_CUDA_MOE_MLP=wgmma, but the sm_90a kernels cannot take this call (they need a "
         "compute capability 9.0 device, f16/bf16, Hd and I multiples of 8, unit-stride 16-byte-"
         "aligned rows that TMA can describe)",
         op.kName);
  }
  check(status, op.kName, "expert MLP kernels launch");
}

void moe_expert_mlp_bwd(const ExecContext& context, const MoeExpertMlpBwd& op) {
  if (op.Hd == 0) return;  // every output is empty
  const DeviceGuard guard(context, op.kName);
  const IndexInput counts(op.counts, guard, op.kName);
  const MoeMlpBwdParams p{make_arg(op.rows),
                          make_arg(op.gate_up_proj),
                          make_arg(op.down_proj),
                          make_arg(op.d_out),
                          make_arg(op.d_rows),
                          make_arg(op.d_gate_up_proj),
                          make_arg(op.d_down_proj),
                          counts.get(),
                          op.R,
                          op.Hd,
                          op.E,
                          op.I,
                          tensor_cores(op.rows.dtype, op.Hd, op.I,
                                       {&op.rows, &op.gate_up_proj, &op.down_proj, &op.d_out,
                                        &op.d_rows, &op.d_gate_up_proj, &op.d_down_proj}),
                          multiprocessors(guard, op.kName)};
  // h [R, I] and dg | du [R, 2I] (f32 at most) and two plans.
  scratch_sum(op.kName, scratch_size(op.kName, op.R, op.I, 12),
              scratch_size(op.kName, op.E + op.R + 2, 48));
  const Scratch scratch(moe_expert_mlp_bwd_scratch_bytes(p), guard, op.kName);
  check(launch_moe_expert_mlp_bwd(p, scratch.data(), guard.stream()), op.kName,
        "expert MLP backward kernels launch");
}

}  // namespace

std::span<const Kernel> moe_kernels() {
  static const Kernel kernels[] = {
      kernel<MoeRoute, &moe_route>(kFloats),
      kernel<MoeDispatch, &moe_dispatch, &dispatch_limits>(kFloats),
      kernel<MoeExpertMlp, &moe_expert_mlp, &expert_limits<MoeExpertMlp>>(kFloats),
      kernel<MoeCombine, &moe_combine>(kFloats),
      kernel<MoeDispatchBwd, &moe_dispatch_bwd>(kFloats),
      kernel<MoeExpertMlpBwd, &moe_expert_mlp_bwd, &expert_limits<MoeExpertMlpBwd>>(kFloats),
      kernel<MoeCombineBwd, &moe_combine_bwd, &combine_bwd_limits>(kFloats),
  };
  return kernels;
}

}  // namespace hops::cuda
