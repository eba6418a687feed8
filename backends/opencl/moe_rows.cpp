// The MoE ops that move rows (moe.cl): moe_dispatch (the row map in one
// work-group, then the copy), moe_combine and moe_dispatch_bwd (one gather kernel) and
// moe_combine_bwd (claim rows, scatter, zero the rows no slot owns).
#include <algorithm>

#include "checked_math.hpp"
#include "moe.hpp"
#include "rows.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "moe.cl";  // after common.cl

constexpr size_t kMapGroup = 256;                    // work-items of moe_dispatch_map
constexpr size_t kColumnGroup = 64;                  // columns per work-group (portable kernels)
constexpr size_t kRowsGroup = 4;                     // rows per work-group (*_rows kernels)
constexpr size_t kSlotGroup = 256;                   // slots per work-group of moe_claim_rows
constexpr int64_t kLanes = 16;                       // the *_rows kernels' vector width
constexpr int64_t kGatherSlots = 16;                 // GATHER_SLOTS: moe_gather_rows' k
constexpr int64_t kStreamBytes = int64_t{16} << 20;  // rows written past the caches from here

cl_long2 strides2(const Tensor& t) { return {{t.stride[0], t.stride[1]}}; }

// CPU devices take the *_rows kernels where every row has unit column steps
// (and, for the float16 kernels, whole vectors: Hd % 16 == 0).
bool whole_rows(const Call& call, std::initializer_list<const Tensor*> tensors, int64_t Hd,
                bool vectors) {
  if (!call.runtime().cpu_device() || (vectors && Hd % kLanes != 0)) return false;
  return std::all_of(tensors.begin(), tensors.end(),
                     [](const Tensor* t) { return !*t || t->stride[1] == 1 || t->shape[1] <= 1; });
}

// A 2-D launch of work-items (column, row) over `columns` x `rows`.
void run_columns(Launch& launch, Call& call, int64_t columns, int64_t rows) {
  const size_t local = launch.group_size(kColumnGroup);
  const size_t groups[2] = {groups_for(columns, local), static_cast<size_t>(rows)};
  const size_t locals[2] = {local, 1};
  launch.run(call, 2, groups, locals);
}

// A 1-D launch of one work-item per row.
void run_rows(Launch& launch, Call& call, int64_t rows, size_t group) {
  const size_t local = launch.group_size(group);
  const size_t groups = groups_for(rows, local);
  launch.run(call, 1, &groups, &local);
}

// combine and dispatch_bwd: out[t] = sum over the kept slots j of w[t, j]
// rows[row_map[t, j]] (w = 1 without weights).
void gather(Call& call, const Tensor& rows, const MoeIndex& map, const Tensor& weights,
            const Tensor& out, int64_t T, int64_t k, int64_t R, int64_t Hd) {
  const bool per_row = whole_rows(call, {&rows, &out}, Hd, true) && k <= kGatherSlots;
  Launch launch(call.kernel(kProgram, rows.dtype, per_row ? "moe_gather_rows" : "moe_gather"));
  launch.tensor(rows).value(strides2(rows));
  moe_index(launch, map);
  launch.any_float(weights).value(weights ? strides2(weights) : cl_long2{});
  launch.tensor(out).value(strides2(out));
  launch.value(cl_long{T}).value(static_cast<cl_int>(k)).value(cl_long{R}).value(cl_long{Hd});
  if (per_row) {
    run_rows(launch, call, Hd > 0 ? T : 0, kRowsGroup);
  } else {
    run_columns(launch, call, Hd, T);
  }
}

}  // namespace

void moe_dispatch(const ExecContext& exec, const MoeDispatch& op) {
  Call call(exec, {{op.x, "x"},
                   {op.topk_ids, "topk_ids"},
                   {op.rows, "rows"},
                   {op.counts, "counts"},
                   {op.row_map, "row_map"}});
  if (!call.active()) return;
  const MoeIndexInput ids(call, op.topk_ids);
  const MoeIndexOutput counts(call, op.counts);
  const MoeIndexOutput row_map(call, op.row_map);
  const int64_t slots = op.T * op.k, buckets = op.E + 1;
  const auto E = static_cast<cl_int>(op.E), k = static_cast<cl_int>(op.k);
  const cl_mem dest = call.scratch(scratch_bytes(op.kName, slots, sizeof(cl_int)));
  {
    Launch launch(call.kernel(kProgram, op.x.dtype, "moe_dispatch_map"));
    const size_t local = launch.group_size(kMapGroup);
    moe_index(launch, ids.arg);
    moe_index(launch, row_map.arg);
    moe_index(launch, counts.arg);
    launch.value(cl_long{slots}).value(k).value(E);
    launch.value(call.scratch(scratch_bytes(op.kName, local, buckets, sizeof(cl_int))));
    launch.value(call.scratch(scratch_bytes(op.kName, buckets, sizeof(cl_int)))).value(dest);
    launch.local_floats(4 * local);  // 2 * local longs
    const size_t groups = 1;
    launch.run(call, 1, &groups, &local);
  }
  {
    const bool per_row = whole_rows(call, {&op.x, &op.rows}, op.Hd, false);
    Launch launch(call.kernel(kProgram, op.x.dtype,
                              per_row ? "moe_dispatch_copy_rows" : "moe_dispatch_copy"));
    launch.tensor(op.x).value(strides2(op.x));
    launch.tensor(op.rows).value(strides2(op.rows));
    launch.value(dest).value(cl_long{op.T}).value(k).value(cl_long{op.Hd});
    if (per_row) {
      const int64_t bytes = op.rows.numel() * static_cast<int64_t>(dtype_size(op.rows.dtype));
      launch.value(cl_int{bytes >= kStreamBytes});
      run_rows(launch, call, slots > 0 && op.Hd > 0 ? op.T : 0, kRowsGroup);
    } else {
      run_columns(launch, call, op.Hd, slots > 0 ? op.T : 0);
    }
  }
  counts.finish();
  row_map.finish();
  call.complete();
}

void moe_combine(const ExecContext& exec, const MoeCombine& op) {
  Call call(
      exec,
      {{op.rows, "rows"}, {op.row_map, "row_map"}, {op.topk_weights, "topk_weights"}, {op.y, "y"}});
  if (!call.active()) return;
  const MoeIndexInput map(call, op.row_map);
  gather(call, op.rows, map.arg, op.topk_weights, op.y, op.T, op.k, op.R, op.Hd);
  call.complete();
}

void moe_dispatch_bwd(const ExecContext& exec, const MoeDispatchBwd& op) {
  Call call(exec, {{op.d_rows, "d_rows"}, {op.row_map, "row_map"}, {op.dx, "dx"}});
  if (!call.active()) return;
  const MoeIndexInput map(call, op.row_map);
  gather(call, op.d_rows, map.arg, Tensor{}, op.dx, op.T, op.k, op.R, op.Hd);
  call.complete();
}

void moe_combine_bwd(const ExecContext& exec, const MoeCombineBwd& op) {
  Call call(exec, {{op.rows, "rows"},
                   {op.row_map, "row_map"},
                   {op.topk_weights, "topk_weights"},
                   {op.dy, "dy"},
                   {op.d_rows, "d_rows"},
                   {op.d_topk_weights, "d_topk_weights"}});
  if (!call.active()) return;
  const MoeIndexInput map(call, op.row_map);
  const cl_mem owner = call.scratch(scratch_bytes(op.kName, op.R, sizeof(cl_int)));
  const auto k = static_cast<cl_int>(op.k);
  {
    Launch launch(call.kernel(kProgram, op.rows.dtype, "moe_fill_int"));
    launch.value(owner).value(cl_long{op.R}).value(cl_int{-1});  // no owner
    run_rows(launch, call, op.R, kSlotGroup);
  }
  {
    Launch launch(call.kernel(kProgram, op.rows.dtype, "moe_claim_rows"));
    moe_index(launch, map.arg);
    launch.value(cl_long{op.T}).value(k).value(cl_long{op.R}).value(owner);
    run_rows(launch, call, op.T * op.k, kSlotGroup);
  }
  const bool per_row = whole_rows(call, {&op.rows, &op.dy, &op.d_rows}, op.Hd, true);
  {
    Launch launch(
        call.kernel(kProgram, op.rows.dtype, per_row ? "moe_combine_bwd_rows" : "moe_combine_bwd"));
    launch.tensor(op.rows).value(strides2(op.rows));
    moe_index(launch, map.arg);
    launch.any_float(op.topk_weights).value(strides2(op.topk_weights));
    launch.tensor(op.dy).value(strides2(op.dy));
    launch.tensor(op.d_rows).value(strides2(op.d_rows));
    launch.any_float(op.d_topk_weights)
        .value(op.d_topk_weights ? strides2(op.d_topk_weights) : cl_long2{});
    launch.value(owner).value(cl_long{op.T}).value(k).value(cl_long{op.R}).value(cl_long{op.Hd});
    const int64_t tokens = op.k > 0 ? op.T : 0;
    if (per_row) {
      run_rows(launch, call, tokens, kRowsGroup);
    } else {
      const size_t local = launch.group_size(kColumnGroup);
      launch.local_floats(local);
      const auto groups = static_cast<size_t>(tokens);
      launch.run(call, 1, &groups, &local);
    }
  }
  {
    Launch launch(call.kernel(kProgram, op.rows.dtype,
                              per_row ? "moe_zero_unowned_rows" : "moe_zero_unowned"));
    launch.tensor(op.d_rows).value(strides2(op.d_rows));
    launch.value(owner).value(cl_long{op.R}).value(cl_long{op.Hd});
    if (per_row) {
      run_rows(launch, call, op.Hd > 0 ? op.R : 0, kRowsGroup);
    } else {
      run_columns(launch, call, op.Hd, op.R);
    }
  }
  call.complete();
}

}  // namespace hops::opencl
