// attn_prefill on NVIDIA's OpenCL platform: attn_nv.cl's tensor-core kernel
// (inline PTX) where it can take the call, built apart from attn.cl so that a
// compiler that rejects it costs nothing but the portable kernel.
#include <climits>
#include <cstdlib>
#include <string>
#include <string_view>

#include "attn.hpp"
#include "checked_math.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "attn_nv.cl";  // after common.cl
// Tokens past this do not fit the kernel's int row arithmetic.
constexpr int64_t kMaxTokens = INT32_MAX - 65536;

// attn_nv.cl's tile per head dim: NV_WARPS warps of 16 query rows.
int threads_for(int64_t D) { return D == 256 ? 128 : 256; }
size_t local_bytes_for(int64_t D) { return D == 256 ? 49152 : (D == 128 ? 49152 : 24576); }

// Whether NVIDIA's platform takes attn_nv.cl where HOPS_OPENCL_ATTN is unset:
// not until a device run has checked it (docs/OPENCL.md); then this flips.
constexpr bool kNvidiaByDefault = false;

// HOPS_OPENCL_ATTN=portable keeps attn.cl's kernel everywhere; =nv tries
// attn_nv.cl on any platform (on PoCL its build fails: the fallback's test);
// =nv-plain the same with plain local loads instead of ldmatrix (should
// ldmatrix misbehave on a driver).
std::string_view forced() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read-only use of the environment
  const char* value = std::getenv("HOPS_OPENCL_ATTN");
  return value ? value : "";
}

// HOPS_OPENCL_NV_DEFINES: more -D options for attn_nv.cl (tuning on the
// device, e.g. "-DNV_PIPE=1" for D = 256; a define the kernel does not know
// changes nothing).
std::string extra_defines() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read-only use of the environment
  const char* value = std::getenv("HOPS_OPENCL_NV_DEFINES");
  return value && *value ? std::string(" ") + value : std::string();
}

// Head rows of unit channel step starting on 16-byte boundaries (the
// kernel's uint4 loads): offset and batch, token and head strides multiples
// of 8 elements.
bool aligned_rows(const Tensor& t) {
  return t.ndim == 4 && t.stride[3] == 1 && element_offset(t) % 8 == 0 && t.stride[0] % 8 == 0 &&
         t.stride[1] % 8 == 0 && t.stride[2] % 8 == 0;
}

}  // namespace

bool attn_prefill_nv(Call& call, const AttnPrefill& op, const IndexArg& cu_q,
                     const IndexArg& cu_k) {
  Runtime& runtime = call.runtime();
  const bool wanted = forced() == "nv" || forced() == "nv-plain" ||
                      (kNvidiaByDefault && forced() != "portable" && runtime.nvidia_platform());
  if (!wanted) return false;
  if (op.q.dtype != DType::f16 && op.q.dtype != DType::bf16) return false;
  if (op.D != 64 && op.D != 128 && op.D != 256) return false;
  if (!aligned_rows(op.q) || !aligned_rows(op.k) || !aligned_rows(op.v)) return false;
  if (op.Tq > kMaxTokens || op.Tk > kMaxTokens || op.Hq > INT32_MAX) return false;
  const int threads = threads_for(op.D);
  const int64_t rows = threads / 2;  // 16 query rows per warp
  const bool varlen = static_cast<bool>(op.sequences.cu_seqlens_q);
  const int64_t slots =
      varlen ? op.Tq / rows + op.sequences.count + 1 : op.B * ((op.Tq + rows - 1) / rows);
  if (slots > INT32_MAX / op.Hq || slots * op.Hq > UINT32_MAX / threads) return false;
  if (device_value<cl_ulong>(runtime.device(), CL_DEVICE_LOCAL_MEM_SIZE) < local_bytes_for(op.D)) {
    return false;
  }
  const std::string defines =
      fmt::format("-DNV_D={} -DNV_LDSM={}", op.D, forced() == "nv-plain" ? 0 : 1) + extra_defines();
  KernelSlot* slot = runtime.optional_kernel(kProgram, op.q.dtype, defines, "attn_fwd_nv");
  // clang spells inline assembly __asm__ only; NVIDIA's compiler takes asm.
  if (!slot) {
    slot = runtime.optional_kernel(kProgram, op.q.dtype, defines + " -DNV_GNU_ASM", "attn_fwd_nv");
  }
  if (!slot || slot->max_work_group < static_cast<size_t>(threads)) return false;
  if (slots * op.Hq == 0) return true;
  Launch launch(*slot);
  prefill_tensors(launch, op);
  launch.index(cu_q).index(cu_k);
  launch.value(cl_long{op.sequences.count}).value(cl_long{op.Tq}).value(cl_long{op.Tk});
  launch.value(cl_long{slots});
  launch.value(static_cast<cl_int>(op.Hq)).value(static_cast<cl_int>(op.Hkv));
  launch.value(static_cast<cl_float>(op.scale)).value(cl_int{op.causal});
  const size_t groups[1] = {static_cast<size_t>(slots * op.Hq)};
  const size_t locals[1] = {static_cast<size_t>(threads)};
  launch.run(call, 1, groups, locals);
  return true;
}

}  // namespace hops::opencl
