// attn_prefill (attn.cl: attn_fwd) and the family's list of kernels.
#include "attn.hpp"

#include <algorithm>
#include <tuple>

#include "checked_math.hpp"
#include "family.hpp"
#include "rows.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "attn.cl";  // after common.cl

constexpr size_t kGroup = 256;  // work-items of attn_fwd
constexpr int kMaxRows = 32;    // packed query rows per work-group
constexpr int kMaxKeys = 32;    // keys per tile
// attn_fwd_rows and attn_pack_keys (CPU devices)
constexpr int64_t kLanes = 16;            // keys per tile: LANES
constexpr int64_t kMaxRowsHeadDim = 256;  // MAX_D
constexpr int64_t kItemRows = 32;         // packed rows per work-item: ROWS
constexpr size_t kRowsGroup = 4;          // work-items per work-group
constexpr size_t kPackGroup = 16;         // key tiles per work-group of attn_pack_keys

// The size checks that supports_call asks. Plain functions, not a template:
// GCC with -fsanitize=undefined rejects a function template's address in the
// constant expression of kernel<>() (backend.hpp).
void accepts(const AttnPrefill& op) { check_attn_sizes(op.kName, op.Hq, op.Hkv, op.D); }
void accepts(const AttnPrefillBwd& op) { check_attn_sizes(op.kName, op.Hq, op.Hkv, op.D); }
void accepts(const AttnDecode& op) { check_attn_sizes(op.kName, op.Hq, op.Hkv, op.D); }

// entry() (family.hpp) with its size check.
template <class Op, void (*fn)(const ExecContext&, const Op&)>
constexpr Kernel checked_entry() {
  return kernel<Op, &named<Op, fn>, static_cast<void (*)(const Op&)>(&accepts)>(HOPS_DTYPE_FLOATS);
}

// CPU devices: attn_fwd_rows (attn.cl) where the rows fit its private
// arrays (D % 16 == 0, D <= 256), its int key and query indices hold the
// tokens, and q, o and gate have unit channel steps.
bool rows_fit(const Call& call, const AttnPrefill& op) {
  const auto unit = [](const Tensor& t) { return !t || t.step(-1) == 1; };
  return call.runtime().cpu_device() && op.D % kLanes == 0 && op.D <= kMaxRowsHeadDim &&
         unit(op.q) && unit(op.o) && unit(op.gate) && op.Tq < INT32_MAX && op.Tk < INT32_MAX;
}

void prefill_rows(Call& call, const AttnPrefill& op, const IndexArg& cu_q, const IndexArg& cu_k) {
  const int64_t V = op.B * op.Tk;  // flat keys
  const int64_t tiles = (V + kLanes - 1) / kLanes;
  // k transposed and v as rows, both f32 in tiles of kLanes keys.
  const size_t bytes = scratch_bytes(op.kName, op.Hkv, tiles, op.D, kLanes, sizeof(float));
  const cl_mem kt = call.scratch(bytes);
  const cl_mem vp = call.scratch(bytes);
  for (const auto& [kernel, source, packed] :
       {std::tuple{"attn_pack_keys", &op.k, kt}, std::tuple{"attn_pack_values", &op.v, vp}}) {
    Launch launch(call.kernel(kProgram, op.q.dtype, kernel));
    launch.tensor(*source).value(strides4(*source)).value(packed);
    launch.value(cl_long{V}).value(cl_long{op.Tk}).value(cl_long{tiles});
    launch.value(static_cast<cl_int>(op.D));
    const size_t local = launch.group_size(kPackGroup);
    const size_t groups[2] = {groups_for(tiles, local), static_cast<size_t>(op.Hkv)};
    const size_t locals[2] = {local, 1};
    launch.run(call, 2, groups, locals);
  }
  Launch launch(call.kernel(kProgram, op.q.dtype, "attn_fwd_rows"));
  launch.tensor(op.q).value(strides4(op.q));
  launch.value(kt).value(vp).value(cl_long{tiles});
  launch.tensor(op.gate).value(strides4(op.gate));
  launch.tensor(op.o).value(strides4(op.o));
  launch.tensor(op.lse).value(strides4(op.lse));
  launch.index(cu_q).index(cu_k);
  launch.value(cl_long{op.B * op.Tq}).value(cl_long{op.Tq}).value(cl_long{op.Tk});
  launch.value(cl_long{op.sequences.count});
  launch.value(static_cast<cl_int>(op.Hq)).value(static_cast<cl_int>(op.Hkv));
  launch.value(static_cast<cl_int>(op.D)).value(static_cast<cl_float>(op.scale));
  launch.value(cl_int{op.causal});
  const size_t local = launch.group_size(kRowsGroup);
  const int64_t items =
      (checked_product(op.kName, op.B, op.Tq, op.group()) + kItemRows - 1) / kItemRows;
  const size_t groups[2] = {groups_for(items, local), static_cast<size_t>(op.Hkv)};
  const size_t locals[2] = {local, 1};
  launch.run(call, 2, groups, locals);
}

}  // namespace

void prefill_tensors(Launch& launch, const AttnPrefill& op) {
  launch.tensor(op.q).value(strides4(op.q));
  launch.tensor(op.k).value(strides4(op.k));
  launch.tensor(op.v).value(strides4(op.v));
  launch.tensor(op.gate).value(strides4(op.gate));
  launch.tensor(op.o).value(strides4(op.o));
  launch.tensor(op.lse).value(strides4(op.lse));
}

void check_attn_sizes(const char* name, int64_t Hq, int64_t Hkv, int64_t D) {
  if (D > kMaxHeadDim || Hq > INT32_MAX || Hkv > INT32_MAX) {
    fail(HOPS_ERR_UNSUPPORTED,
         "{}: the opencl backend takes head dims up to {} and head counts below 2^31, got D = {}, "
         "Hq = {}, Hkv = {}",
         name, kMaxHeadDim, D, Hq, Hkv);
  }
}

size_t local_floats_budget(const Call& call) {
  // At most 48 KiB: what GPUs give one work-group and still run several.
  const auto bytes = device_value<cl_ulong>(call.runtime().device(), CL_DEVICE_LOCAL_MEM_SIZE);
  return static_cast<size_t>(std::min<cl_ulong>(bytes, 48 * 1024) / sizeof(float));
}

void attn_prefill(const ExecContext& exec, const AttnPrefill& op) {
  Call call(exec, {{op.q, "q"},
                   {op.k, "k"},
                   {op.v, "v"},
                   {op.gate, "gate"},
                   {op.sequences.cu_seqlens_q, "cu_seqlens_q"},
                   {op.sequences.cu_seqlens_k, "cu_seqlens_k"},
                   {op.o, "o"},
                   {op.lse, "lse"}});
  if (!call.active()) return;
  const IndexArg cu_q = call.index(op.sequences.cu_seqlens_q);
  const IndexArg cu_k = call.index(op.sequences.cu_seqlens_k);
  if (attn_prefill_nv(call, op, cu_q, cu_k)) {
    call.complete();
    return;
  }
  if (rows_fit(call, op)) {
    prefill_rows(call, op, cu_q, cu_k);
    call.complete();
    return;
  }
  const int64_t U = op.B * op.Tq;  // flat query tokens
  const auto D = static_cast<size_t>(op.D);
  const Tiles tiles = fit_tiles(local_floats_budget(call), kMaxRows, kMaxKeys, [&](int r, int k) {
    return (2 * r + k) * (D + 1) + static_cast<size_t>(r * k + 3 * r);
  });
  Launch launch(call.kernel(kProgram, op.q.dtype, "attn_fwd"));
  prefill_tensors(launch, op);
  launch.index(cu_q).index(cu_k).index({});  // no seq_lens
  table(launch, {});                         // no pages
  launch.value(cl_mem{nullptr});             // no splits, no partial results
  launch.value(cl_long{U}).value(cl_long{op.Tq}).value(cl_long{op.Tk});
  launch.value(cl_long{op.sequences.count}).value(cl_long{0}).value(cl_long{1}).value(cl_long{0});
  launch.value(static_cast<cl_int>(op.Hq)).value(static_cast<cl_int>(op.Hkv));
  launch.value(static_cast<cl_int>(op.D)).value(static_cast<cl_float>(op.scale));
  launch.value(cl_int{op.causal}).value(cl_int{tiles.rows}).value(cl_int{tiles.keys});
  launch.value(cl_int{1});
  launch.local_floats((2 * tiles.rows + tiles.keys) * (D + 1) +
                      static_cast<size_t>(tiles.rows * tiles.keys + 3 * tiles.rows));
  const size_t local = launch.group_size(kGroup);
  const size_t groups[3] = {groups_for(checked_product(op.kName, U, op.group()), tiles.rows),
                            static_cast<size_t>(op.Hkv), 1};
  const size_t locals[3] = {local, 1, 1};
  launch.run(call, 3, groups, locals);
  call.complete();
}

std::span<const Kernel> attn_kernels() {
  static constexpr Kernel kernels[] = {
      checked_entry<AttnPrefill, &attn_prefill>(),
      checked_entry<AttnPrefillBwd, &attn_prefill_bwd>(),
      checked_entry<AttnDecode, &attn_decode>(),
      entry<KvCacheWrite, &kv_cache_write>(),
  };
  return kernels;
}

}  // namespace hops::opencl
