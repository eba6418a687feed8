// The OpenCL kernels of the attention family (attn.cpp, attn_decode.cpp,
// attn_bwd.cpp, with attn.cl and attn_bwd.cl); attn.cpp lists them for
// families.cpp.
#pragma once

#include "backend.hpp"
#include "call.hpp"
#include "ops/attn.hpp"

namespace hops::opencl {

void attn_prefill(const ExecContext& exec, const AttnPrefill& op);
void attn_prefill_bwd(const ExecContext& exec, const AttnPrefillBwd& op);
void attn_decode(const ExecContext& exec, const AttnDecode& op);
void kv_cache_write(const ExecContext& exec, const KvCacheWrite& op);

// The prefill's tensors as attn.cl's attn_fwd and attn_nv.cl's attn_fwd_nv
// take them: q, k, v, gate, o and lse, each followed by its four strides.
void prefill_tensors(Launch& launch, const AttnPrefill& op);

// attn_prefill by attn_nv.cl's tensor-core kernel (attn_nv.cpp): false, with
// nothing enqueued, where it cannot take the call (not asked for: see
// kNvidiaByDefault and HOPS_OPENCL_ATTN; the dtype, D or layout; or the
// program failed to build).
bool attn_prefill_nv(Call& call, const AttnPrefill& op, const IndexArg& cu_q, const IndexArg& cu_k);

// The kernels take head counts and D as int, and the portable kernels keep
// rows of D floats in local memory: HOPS_ERR_UNSUPPORTED beyond these.
constexpr int64_t kMaxHeadDim = 1024;
void check_attn_sizes(const char* name, int64_t Hq, int64_t Hkv, int64_t D);

// block_table as the kernels read it: buffer, element offset, strides
// (row, column) and kind (0 absent, 4 int32, 8 int64).
struct TableArg {
  cl_mem buffer = nullptr;
  cl_long offset = 0;
  cl_long2 strides{};
  cl_int kind = 0;
};
inline Launch& table(Launch& launch, const TableArg& arg) {
  return launch.value(arg.buffer).value(arg.offset).value(arg.strides).value(arg.kind);
}

// The local memory a work-group of the portable kernels may use, in floats.
size_t local_floats_budget(const Call& call);

// Tiles of the portable kernels: `rows` packed query rows and `keys` keys
// per work-group, the largest powers of two up to `max_rows` and `max_keys`
// for which floats(rows, keys) fits the budget.
struct Tiles {
  int rows = 0, keys = 0;
};
template <class Floats>
Tiles fit_tiles(size_t budget, int max_rows, int max_keys, Floats&& floats) {
  Tiles tiles{max_rows, max_keys};
  while (floats(tiles.rows, tiles.keys) > budget) {
    if (tiles.keys > 1 && (tiles.keys >= tiles.rows || tiles.rows == 1)) {
      tiles.keys /= 2;
    } else if (tiles.rows > 1) {
      tiles.rows /= 2;
    } else {
      fail(HOPS_ERR_UNSUPPORTED, "opencl: the device's local memory is too small for one row");
    }
  }
  return tiles;
}

}  // namespace hops::opencl
