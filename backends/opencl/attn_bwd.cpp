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
// The *_rows kernels (CPU devices)
constexpr int64_t kLanes = 16;            // keys or rows per transposed tile: LANES
constexpr int64_t kMaxRowsHeadDim = 256;  // MAX_D
constexpr int64_t kItemRows = 32;         // packed rows per work-item of attn_bwd_dq_rows: ROWS
constexpr int64_t kItemKeys = 32;         // keys per work-item of attn_bwd_dkdv_rows: ITEM_KEYS
constexpr size_t kRowsGroup = 4;          // work-items per work-group
constexpr size_t kPackGroup = 16;         // tiles per work-group of the packing kernels

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

// CPU devices: the *_rows kernels (attn.cl) where the rows fit their private
// arrays (D % 16 == 0, D <= 256), their int key and query indices hold the
// tokens, and q and k have unit channel steps.
bool rows_fit(const Call& call, const AttnPrefillBwd& op) {
  return call.runtime().cpu_device() && op.D % kLanes == 0 && op.D <= kMaxRowsHeadDim &&
         op.q.step(-1) == 1 && op.k.step(-1) == 1 && op.Tq < INT32_MAX && op.Tk < INT32_MAX;
}

// k or v as attn_pack_keys lays them out: tiles of kLanes keys, transposed, f32.
cl_mem pack_keys(Call& call, const AttnPrefillBwd& op, const Tensor& keys, int64_t tiles) {
  const cl_mem packed =
      call.scratch(scratch_bytes(op.kName, op.Hkv, tiles, op.D, kLanes, sizeof(float)));
  Launch launch(call.kernel(kProgram, op.q.dtype, "attn_pack_keys"));
  launch.tensor(keys).value(strides4(keys)).value(packed);
  launch.value(cl_long{op.B * op.Tk}).value(cl_long{op.Tk}).value(cl_long{tiles});
  launch.value(static_cast<cl_int>(op.D));
  const size_t local = launch.group_size(kPackGroup);
  const size_t groups[2] = {groups_for(tiles, local), static_cast<size_t>(op.Hkv)};
  const size_t locals[2] = {local, 1};
  launch.run(call, 2, groups, locals);
  return packed;
}

void backward_rows(Call& call, const AttnPrefillBwd& op, const IndexArg& cu_q, const IndexArg& cu_k,
                   cl_mem d_out, cl_mem delta) {
  const int64_t U = op.B * op.Tq, V = op.B * op.Tk;
  const int64_t key_tiles = (V + kLanes - 1) / kLanes;
  const int64_t packed_rows = checked_product(op.kName, U, op.group());
  const int64_t row_tiles = (packed_rows + kLanes - 1) / kLanes;
  const cl_mem kt = pack_keys(call, op, op.k, key_tiles);
  const cl_mem vt = pack_keys(call, op, op.v, key_tiles);
  // The packed rows of each kv head, padded to whole tiles.
  const size_t row_bytes = scratch_bytes(op.kName, op.Hkv, row_tiles, kLanes, sizeof(float));
  const size_t rows_bytes = scratch_bytes(op.kName, row_bytes, op.D);
  const cl_mem qs = call.scratch(rows_bytes);
  const cl_mem dos = call.scratch(rows_bytes);
  const cl_mem lse_p = call.scratch(row_bytes);
  const cl_mem delta_p = call.scratch(row_bytes);
  const auto sizes = [&](Launch& launch) {
    launch.value(static_cast<cl_int>(op.Hq)).value(static_cast<cl_int>(op.Hkv));
    launch.value(static_cast<cl_int>(op.D)).value(static_cast<cl_float>(op.scale));
  };
  {
    Launch launch(call.kernel(kProgram, op.q.dtype, "attn_bwd_pack_rows"));
    launch.tensor(op.q).value(strides4(op.q));
    launch.tensor(op.lse).value(strides4(op.lse));
    launch.value(d_out).value(delta).value(qs).value(dos).value(lse_p).value(delta_p);
    launch.value(cl_long{U}).value(cl_long{op.Tq}).value(cl_long{row_tiles});
    sizes(launch);
    const size_t local = launch.group_size(kPackGroup);
    const size_t groups[2] = {groups_for(row_tiles, local), static_cast<size_t>(op.Hkv)};
    const size_t locals[2] = {local, 1};
    launch.run(call, 2, groups, locals);
  }
  {
    Launch launch(call.kernel(kProgram, op.q.dtype, "attn_bwd_dkdv_rows"));
    launch.tensor(op.k).value(strides4(op.k));
    launch.tensor(op.v).value(strides4(op.v));
    launch.value(qs).value(dos).value(lse_p).value(delta_p).value(cl_long{row_tiles});
    launch.tensor(op.dk).value(strides4(op.dk));
    launch.tensor(op.dv).value(strides4(op.dv));
    launch.index(cu_q).index(cu_k);
    launch.value(cl_long{V}).value(cl_long{op.Tq}).value(cl_long{op.Tk});
    launch.value(cl_long{op.sequences.count});
    sizes(launch);
    launch.value(cl_int{op.causal});
    const size_t local = launch.group_size(kRowsGroup);
    const size_t groups[2] = {groups_for((V + kItemKeys - 1) / kItemKeys, local),
                              static_cast<size_t>(op.Hkv)};
    const size_t locals[2] = {local, 1};
    launch.run(call, 2, groups, locals);
  }
  Launch launch(call.kernel(kProgram, op.q.dtype, "attn_bwd_dq_rows"));
  launch.tensor(op.q).value(strides4(op.q));
  launch.tensor(op.k).value(strides4(op.k));
  launch.value(kt).value(vt).value(cl_long{key_tiles});
  launch.tensor(op.lse).value(strides4(op.lse));
  launch.value(d_out).value(delta);
  launch.tensor(op.dq).value(strides4(op.dq));
  launch.index(cu_q).index(cu_k);
  launch.value(cl_long{U}).value(cl_long{op.Tq}).value(cl_long{op.Tk});
  launch.value(cl_long{op.sequences.count});
  sizes(launch);
  launch.value(cl_int{op.causal});
  const size_t local = launch.group_size(kRowsGroup);
  const size_t groups[2] = {groups_for((packed_rows + kItemRows - 1) / kItemRows, local),
                            static_cast<size_t>(op.Hkv)};
  const size_t locals[2] = {local, 1};
  launch.run(call, 2, groups, locals);
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
  if (rows_fit(call, op)) {
    backward_rows(call, op, cu_q, cu_k, d_out, delta);
    call.complete();
    return;
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
