// attn_prefill_bwd (attn.cl): attn_bwd_prep, then attn_bwd_dkdv and
// attn_bwd_dq, each sum in a fixed order.
#include <algorithm>

#include "attn.hpp"
#include "checked_math.hpp"
#include "rows.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "attn.cl";  // after common.cl

constexpr size_t kGroup = 256;     // work-items of attn_bwd_dkdv and attn_bwd_dq
constexpr size_t kPrepGroup = 64;  // rows per work-group of attn_bwd_prep
constexpr int kOwn = 8;            // sums per work-item: OWN in attn.cl
constexpr int kMaxTile = 32;       // rows or keys per tile

// The largest power of two up to kMaxTile whose tile of D-float rows
// leaves each work-item at most kOwn sums.
int owned_tile(size_t group, int64_t D) {
  int tile = kMaxTile;
  while (tile > 1 && tile * D > static_cast<int64_t>(group) * kOwn) tile /= 2;
  if (tile * D > static_cast<int64_t>(group) * kOwn) {
    fail(HOPS_ERR_UNSUPPORTED,
         "opencl: this device's work-groups of {} items hold no row of D = {}", group, D);
  }
  return tile;
}

// The arguments attn_bwd_dkdv and attn_bwd_dq share up to the scratch.
void inputs(Launch& launch, const AttnPrefillBwd& op, const IndexArg& cu_q, const IndexArg& cu_k,
            cl_mem d_out, cl_mem delta) {
  launch.tensor(op.q).value(strides4(op.q));
  launch.tensor(op.k).value(strides4(op.k));
  launch.tensor(op.v).value(strides4(op.v));
  launch.tensor(op.lse).value(strides4(op.lse));
  launch.index(cu_q).index(cu_k).value(d_out).value(delta);
}

void sizes(Launch& launch, const AttnPrefillBwd& op, int64_t items, const Tiles& tiles) {
  launch.value(cl_long{items}).value(cl_long{op.Tq}).value(cl_long{op.Tk});
  launch.value(cl_long{op.sequences.count});
  launch.value(static_cast<cl_int>(op.Hq)).value(static_cast<cl_int>(op.Hkv));
  launch.value(static_cast<cl_int>(op.D)).value(static_cast<cl_float>(op.scale));
  launch.value(cl_int{op.causal}).value(cl_int{tiles.rows}).value(cl_int{tiles.keys});
}

}  // namespace

void attn_prefill_bwd(const ExecContext& exec, const AttnPrefillBwd& op) {
  Call call(exec, {{op.q, "q"},
                   {op.k, "k"},
                   {op.v, "v"},
                   {op.gate, "gate"},
                   {op.o, "o"},
                   {op.lse, "lse"},
                   {op.d_o, "do"},
                   {op.sequences.cu_seqlens_q, "cu_seqlens_q"},
                   {op.sequences.cu_seqlens_k, "cu_seqlens_k"},
                   {op.dq, "dq"},
                   {op.dk, "dk"},
                   {op.dv, "dv"},
                   {op.dgate, "dgate"}});
  if (!call.active()) return;
  const IndexArg cu_q = call.index(op.sequences.cu_seqlens_q);
  const IndexArg cu_k = call.index(op.sequences.cu_seqlens_k);
  const int64_t U = op.B * op.Tq, V = op.B * op.Tk;  // flat query and key tokens
  const int64_t rows = checked_product(op.kName, U, op.Hq);
  const cl_mem d_out = call.scratch(scratch_bytes(op.kName, rows, op.D, sizeof(float)));
  const cl_mem delta = call.scratch(scratch_bytes(op.kName, rows, sizeof(float)));
  {
    Launch launch(call.kernel(kProgram, op.q.dtype, "attn_bwd_prep"));
    launch.tensor(op.gate).value(strides4(op.gate));
    launch.tensor(op.o).value(strides4(op.o));
    launch.tensor(op.d_o).value(strides4(op.d_o));
    launch.tensor(op.dgate).value(strides4(op.dgate));
    launch.value(d_out).value(delta).value(cl_long{U}).value(cl_long{op.Tq});
    launch.value(static_cast<cl_int>(op.Hq)).value(static_cast<cl_int>(op.D));
    const size_t local = launch.group_size(kPrepGroup);
    const size_t groups = groups_for(rows, local);
    launch.run(call, 1, &groups, &local);
  }
  const size_t budget = local_floats_budget(call);
  const auto D = static_cast<size_t>(op.D);
  {
    Launch launch(call.kernel(kProgram, op.q.dtype, "attn_bwd_dkdv"));
    const size_t local = launch.group_size(kGroup);
    const auto floats = [&](int r, int k) {
      return 2 * static_cast<size_t>(r + k) * (D + 1) + static_cast<size_t>(2 * r * k + 2 * r);
    };
    const Tiles tiles = fit_tiles(budget, kMaxTile, owned_tile(local, op.D), floats);
    inputs(launch, op, cu_q, cu_k, d_out, delta);
    launch.tensor(op.dk).value(strides4(op.dk));
    launch.tensor(op.dv).value(strides4(op.dv));
    sizes(launch, op, V, tiles);
    launch.local_floats(floats(tiles.rows, tiles.keys));
    const size_t groups[2] = {groups_for(V, tiles.keys), static_cast<size_t>(op.Hkv)};
    const size_t locals[2] = {local, 1};
    launch.run(call, 2, groups, locals);
  }
  {
    Launch launch(call.kernel(kProgram, op.q.dtype, "attn_bwd_dq"));
    const size_t local = launch.group_size(kGroup);
    const auto floats = [&](int r, int k) {
      return 2 * static_cast<size_t>(r + k) * (D + 1) + static_cast<size_t>(r * k + 2 * r);
    };
    const Tiles tiles = fit_tiles(budget, owned_tile(local, op.D), kMaxTile, floats);
    inputs(launch, op, cu_q, cu_k, d_out, delta);
    launch.tensor(op.dq).value(strides4(op.dq));
    sizes(launch, op, U, tiles);
    launch.local_floats(floats(tiles.rows, tiles.keys));
    const size_t groups[2] = {groups_for(checked_product(op.kName, U, op.group()), tiles.rows),
                              static_cast<size_t>(op.Hkv)};
    const size_t locals[2] = {local, 1};
    launch.run(call, 2, groups, locals);
  }
  call.complete();
}

}  // namespace hops::opencl
