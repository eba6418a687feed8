// The attention family's host side: attn_prefill (attn_prefill.cu),
// attn_prefill_bwd (attn_bwd.cu), attn_decode and kv_cache_write
// (attn_decode.cu).
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "attn_params.hpp"
#include "cuda_host.hpp"
#include "ops/attn.hpp"

namespace hops::cuda {

namespace {

constexpr int64_t kMaxGrid = (int64_t{1} << 31) - 1;  // launch dims are 32-bit
constexpr int64_t kSmallestBlock = 16;                // tokens per CTA of the general kernels

void check_head_dim(const char* name, int64_t D) {
  if (D > kAttnMaxHeadDim) {
    fail(HOPS_ERR_UNSUPPORTED, "{}: the cuda backend supports head dims D <= {}, got D = {}", name,
         kAttnMaxHeadDim, D);
  }
}

void check_grid(const char* name, std::optional<int64_t> blocks) {
  if (!blocks || *blocks > kMaxGrid) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: the cuda backend's grid would need more than 2^31 - 1 blocks for this call", name);
  }
}

// The prefill kernels' limits (the accepts check: a refused call goes to the
// next backend with nothing written). Their grids count blocks of at least 16
// query or key tokens per head.
template <class Op>
void prefill_limits(const Op& op) {
  check_head_dim(Op::kName, op.D);
  const int64_t T = std::max(op.Tq, op.Tk);
  const std::optional<int64_t> blocks =
      op.sequences.cu_seqlens_q ? try_add(T / kSmallestBlock, op.sequences.count + 1)
                                : try_mul(op.B, (T + kSmallestBlock - 1) / kSmallestBlock);
  check_grid(Op::kName, blocks ? try_mul(*blocks, op.Hq) : std::nullopt);
}

void decode_limits(const AttnDecode& op) {
  check_head_dim(op.kName, op.D);
  // At most one piece per 64 tokens of the table's capacity, per (sequence,
  // new token, query head); the merge takes up to four CTAs per such row.
  const std::optional<int64_t> capacity = try_mul(op.max_blocks, op.block_size);
  const std::optional<int64_t> rows = try_product(INT64_MAX, op.N, op.L, op.Hq);
  check_grid(op.kName, capacity && rows ? try_mul(*rows, std::max<int64_t>(*capacity / 64 + 1, 4))
                                        : std::nullopt);
}

// HOPS_CUDA_ATTN_FWD=mma runs the forward's mma.sync kernel where the sm_90a
// one would run; =wgmma fails the calls the sm_90a kernel cannot take (tests
// and benchmarks compare the two; the default picks per call).
std::string_view forced_forward() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read-only use of the environment
  const char* value = std::getenv("HOPS_CUDA_ATTN_FWD");
  return value ? value : "";
}

// The backward's kernels without HOPS_CUDA_ATTN_BWD: the sm_90a ones
// (attn_bwd_sm90.cu, attn_bwd_dq_sm90.cu) where they can run, else mma.sync.
constexpr BwdPath kDefaultBackward = BwdPath::automatic;

// HOPS_CUDA_ATTN_BWD=mma runs the backward's mma.sync dQ and dK/dV kernels
// where the sm_90a ones would run; =wgmma fails the calls they cannot take;
// =auto takes the sm_90a ones where they can run, else mma.sync.
BwdPath forced_backward() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read-only use of the environment
  const char* value = std::getenv("HOPS_CUDA_ATTN_BWD");
  const std::string_view path = value ? value : "";
  if (path == "mma") return BwdPath::mma;
  if (path == "wgmma") return BwdPath::wgmma;
  if (path == "auto") return BwdPath::automatic;
  return kDefaultBackward;
}

bool tensor_core_dtype(DType t, int64_t D) {
  return (t == DType::f16 || t == DType::bf16) && (D == 64 || D == 128 || D == 256);
}

// block_table as the kernels read it: in place when device-resident (the
// kernels skip blocks outside the cache), else copied as int64 [N, max_blocks]
// to stream-ordered scratch (its values were validated by the op's check).
class StagedTable {
 public:
  StagedTable(const Tensor& t, const DeviceGuard& guard, const char* op) {
    if (!host_accessible(t.device)) {
      table_ = {static_cast<const char*>(t.handle) + t.byte_offset, t.stride[0], t.stride[1],
                t.dtype == DType::i64};
      return;
    }
    const int64_t rows = t.shape[0], cols = t.shape[1];
    std::vector<int64_t> values(static_cast<size_t>(rows * cols));
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        values[static_cast<size_t>(i * cols + j)] = read_index(t, i, j);
    scratch_ =
        std::make_unique<Scratch>(scratch_bytes(op, values.size(), sizeof(int64_t)), guard, op);
    check(cudaMemcpyAsync(scratch_->data(), values.data(), values.size() * sizeof(int64_t),
                          cudaMemcpyHostToDevice, guard.stream()),
          op, "cudaMemcpyAsync (block_table to the device)");
    table_ = {scratch_->data(), cols, 1, 1};
  }
  const Index2& get() const { return table_; }

 private:
  Index2 table_;
  std::unique_ptr<Scratch> scratch_;
};

void attn_prefill(const ExecContext& context, const AttnPrefill& op) {
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu_q(op.sequences.cu_seqlens_q, guard, op.kName);
  const StagedIndex cu_k(op.sequences.cu_seqlens_k, guard, op.kName);
  const AttnFwdParams p{make_arg(op.q),
                        make_arg(op.k),
                        make_arg(op.v),
                        make_arg(op.gate),
                        make_arg(op.o),
                        make_arg(op.lse),
                        cu_q.get(),
                        cu_k.get(),
                        op.B,
                        op.Tq,
                        op.Tk,
                        op.Hq,
                        op.Hkv,
                        op.D,
                        op.sequences.count,
                        static_cast<float>(op.scale),
                        op.causal};
  const bool tensor_cores = tensor_core_dtype(op.q.dtype, op.D) &&
                            vector_rows({&op.q, &op.k, &op.v, &op.o}, 8) &&
                            (!op.gate || vector_rows({&op.gate}, 8));
  const int dtype = code_of(op.q.dtype);
  const std::string_view forced = forced_forward();
  if (tensor_cores && forced != "mma") {
    const cudaError_t status = launch_attn_prefill_sm90(p, dtype, guard.stream());
    if (status != cudaErrorNotSupported) {
      check(status, op.kName, "attention kernel launch (sm_90a)");
      return;
    }
  }
  if (forced == "wgmma") {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: HOPS_CUDA_ATTN_FWD=wgmma, but the sm_90a kernel cannot take this call (it needs a "
         "compute capability 9.0 device, f16/bf16, D in {{64, 128, 256}}, unit-stride 16-byte-"
         "aligned head rows, scale > 0)",
         op.kName);
  }
  check(launch_attn_prefill(p, dtype, tensor_cores, guard.stream()), op.kName,
        "attention kernel launch");
}

void attn_prefill_bwd(const ExecContext& context, const AttnPrefillBwd& op) {
  const DeviceGuard guard(context, op.kName);
  const StagedIndex cu_q(op.sequences.cu_seqlens_q, guard, op.kName);
  const StagedIndex cu_k(op.sequences.cu_seqlens_k, guard, op.kName);
  AttnBwdParams p{make_arg(op.q),
                  make_arg(op.k),
                  make_arg(op.v),
                  make_arg(op.gate),
                  make_arg(op.o),
                  make_arg(op.lse),
                  make_arg(op.d_o),
                  make_arg(op.dq),
                  make_arg(op.dk),
                  make_arg(op.dv),
                  make_arg(op.dgate),
                  cu_q.get(),
                  cu_k.get(),
                  op.B,
                  op.Tq,
                  op.Tk,
                  op.Hq,
                  op.Hkv,
                  op.D,
                  op.sequences.count,
                  static_cast<float>(op.scale),
                  op.causal};
  const int dtype = code_of(op.q.dtype);
  const bool tensor_cores = tensor_core_dtype(op.q.dtype, op.D) &&
                            vector_rows({&op.q, &op.k, &op.v, &op.dq, &op.dk, &op.dv}, 8);
  const BwdPath path = forced_backward();
  if (tensor_cores && path != BwdPath::mma) {
    int sms = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, guard.device()), op.kName,
          "cudaDeviceGetAttribute (multiprocessors)");
    p.dkv_splits = attn_dkv_sm90_splits(p, sms);
  }
  // dO', Delta and the dK/dV partials: scratch_size proves the byte counts
  // fit before the kernels' sizing.
  scratch_size(op.kName, op.B, op.Tq, op.Hq, op.D + 2, sizeof(float));
  scratch_size(op.kName, 2 * p.dkv_splits, op.B * op.Tk, op.Hkv, op.D, sizeof(float));
  const Scratch scratch(attn_bwd_scratch_bytes(p, dtype), guard, op.kName);
  const cudaError_t status =
      launch_attn_prefill_bwd(p, dtype, tensor_cores, path, scratch.data(), guard.stream());
  if (status == cudaErrorNotSupported && path == BwdPath::wgmma) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: HOPS_CUDA_ATTN_BWD=wgmma, but the sm_90a backward kernels cannot take this call "
         "(they need a compute capability 9.0 device, f16/bf16, D in {{64, 128, 256}}, unit-stride "
         "16-byte-aligned head rows)",
         op.kName);
  }
  check(status, op.kName, "attention backward kernels launch");
}

void attn_decode(const ExecContext& context, const AttnDecode& op) {
  const DeviceGuard guard(context, op.kName);
  const StagedIndex seq_lens(op.seq_lens, guard, op.kName);
  const StagedTable table(op.block_table, guard, op.kName);
  AttnDecodeParams p{make_arg(op.q),
                     make_arg(op.k_cache),
                     make_arg(op.v_cache),
                     make_arg(op.o),
                     table.get(),
                     seq_lens.get(),
                     op.N,
                     op.L,
                     op.Hq,
                     op.Hkv,
                     op.D,
                     op.num_blocks,
                     op.block_size,
                     op.max_blocks,
                     1,
                     64,
                     static_cast<float>(op.scale)};
  const bool tensor_cores =
      tensor_core_dtype(op.q.dtype, op.D) && vector_rows({&op.q, &op.k_cache, &op.v_cache}, 8);
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, guard.device()), op.kName,
        "cudaDeviceGetAttribute (multiprocessors)");
  const int dtype = code_of(op.q.dtype);
  check(plan_attn_decode(p, dtype, tensor_cores, sms), op.kName, "decode occupancy query");
  const Scratch scratch(attn_decode_scratch_bytes(p, tensor_cores), guard, op.kName);
  check(launch_attn_decode(p, dtype, tensor_cores, scratch.data(), guard.stream()), op.kName,
        "decode kernels launch");
}

void kv_cache_write(const ExecContext& context, const KvCacheWrite& op) {
  if (op.T * op.Hkv * op.D == 0) return;
  const DeviceGuard guard(context, op.kName);
  const StagedIndex slots(op.slot_mapping, guard, op.kName);
  const KvCacheWriteParams p{
      make_arg(op.k), make_arg(op.v), make_arg(op.k_cache), make_arg(op.v_cache), slots.get(), op.T,
      op.Hkv,         op.D,           op.num_blocks,        op.block_size};
  const bool vector =
      vector_rows({&op.k, &op.v, &op.k_cache, &op.v_cache}, 16 / dtype_size(op.k.dtype));
  check(launch_kv_cache_write(p, code_of(op.k.dtype), vector, guard.stream()), op.kName,
        "kv_cache_write kernel launch");
}

}  // namespace

std::span<const Kernel> attn_kernels() {
  static const Kernel kernels[] = {
      kernel<AttnPrefill, &attn_prefill, &prefill_limits<AttnPrefill>>(kFloats),
      kernel<AttnPrefillBwd, &attn_prefill_bwd, &prefill_limits<AttnPrefillBwd>>(kFloats),
      kernel<AttnDecode, &attn_decode, &decode_limits>(kFloats),
      kernel<KvCacheWrite, &kv_cache_write>(kFloats),
  };
  return kernels;
}

}  // namespace hops::cuda
