// The norm family: gated_rmsnorm and gated_rmsnorm_bwd (norm.cl).
#include <algorithm>
#include <vector>

#include "call.hpp"
#include "checked_math.hpp"
#include "family.hpp"
#include "ops/norm.hpp"
#include "rows.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "norm.cl";  // after common.cl

constexpr size_t kNormGroup = 64;     // gated_rmsnorm: work-items per row
constexpr size_t kChannelGroup = 64;  // gated_rmsnorm_bwd_dweight: one item per channel
constexpr size_t kRowGroup = 16;      // gated_rmsnorm_rows: rows per work-group
constexpr int64_t kLanes = 16;        // gated_rmsnorm_rows: channels per step
// gated_rmsnorm_bwd: about this many row blocks (each a work-group with its
// own dweight share), of at least kMinBlockRows rows.
constexpr int64_t kRowBlocks = 1024;
constexpr int64_t kMinBlockRows = 8;

}  // namespace

void gated_rmsnorm(const ExecContext& exec, const GatedRmsNorm& op) {
  Call call(exec, {{op.x, "x"}, {op.z, "z"}, {op.weight, "weight"}, {op.y, "y"}});
  if (!call.active()) return;
  const Rows rows = leading_rows({&op.x, &op.z, &op.y});
  // CPU devices: a work-item per row with float16 SIMD where the rows allow it (norm.cl).
  const bool per_row = call.runtime().cpu_device() && op.D % kLanes == 0 && op.x.step(-1) == 1 &&
                       op.z.step(-1) == 1 && op.y.step(-1) == 1;
  Launch launch(
      call.kernel(kProgram, op.x.dtype, per_row ? "gated_rmsnorm_rows" : "gated_rmsnorm"));
  launch.tensor(op.x).value(rows.strides[0]).value(cl_long{op.x.step(-1)});
  launch.tensor(op.z).value(rows.strides[1]).value(cl_long{op.z.step(-1)});
  launch.any_float(op.weight).value(cl_long{op.weight.stride[0]});
  launch.tensor(op.y).value(rows.strides[2]).value(cl_long{op.y.step(-1)});
  launch.value(rows.shape).value(rows.dims);
  launch.value(cl_long{op.D}).value(static_cast<cl_float>(op.eps));
  const auto row_count = static_cast<size_t>(op.D > 0 ? op.rows : 0);
  if (per_row) {
    launch.value(cl_long{op.rows});
    const size_t local = launch.group_size(kRowGroup);
    const size_t groups = groups_for(static_cast<int64_t>(row_count), local);
    launch.run(call, 1, &groups, &local);
  } else {
    const size_t local = launch.group_size(kNormGroup);
    launch.local_floats(local);
    launch.run(call, 1, &row_count, &local);
  }
  call.complete();
}

void gated_rmsnorm_bwd(const ExecContext& exec, const GatedRmsNormBwd& op) {
  Call call(exec, {{op.x, "x"},
                   {op.z, "z"},
                   {op.weight, "weight"},
                   {op.dy, "dy"},
                   {op.dx, "dx"},
                   {op.dz, "dz"},
                   {op.dweight, "dweight"}});
  if (!call.active()) return;
  const Rows rows = leading_rows({&op.x, &op.z, &op.dy, &op.dx, &op.dz});
  const int64_t row_count = op.D > 0 ? op.rows : 0;
  const int64_t block_rows = std::max(kMinBlockRows, (row_count + kRowBlocks - 1) / kRowBlocks);
  const int64_t blocks = (row_count + block_rows - 1) / block_rows;
  const cl_mem partial = call.scratch(scratch_bytes(op.kName, blocks, op.D, sizeof(float)));
  {
    // CPU devices: a work-item per row block with float16 SIMD where the rows allow it (norm.cl).
    const bool per_block = call.runtime().cpu_device() && op.D % kLanes == 0 &&
                           op.x.step(-1) == 1 && op.z.step(-1) == 1 && op.dy.step(-1) == 1 &&
                           op.dx.step(-1) == 1 && op.dz.step(-1) == 1;
    Launch launch(call.kernel(kProgram, op.x.dtype,
                              per_block ? "gated_rmsnorm_bwd_rows" : "gated_rmsnorm_bwd"));
    launch.tensor(op.x).value(rows.strides[0]).value(cl_long{op.x.step(-1)});
    launch.tensor(op.z).value(rows.strides[1]).value(cl_long{op.z.step(-1)});
    launch.any_float(op.weight).value(cl_long{op.weight.stride[0]});
    launch.tensor(op.dy).value(rows.strides[2]).value(cl_long{op.dy.step(-1)});
    launch.tensor(op.dx).value(rows.strides[3]).value(cl_long{op.dx.step(-1)});
    launch.tensor(op.dz).value(rows.strides[4]).value(cl_long{op.dz.step(-1)});
    launch.value(rows.shape).value(rows.dims);
    launch.value(cl_long{op.D}).value(static_cast<cl_float>(op.eps));
    launch.value(cl_long{row_count}).value(cl_long{block_rows}).value(partial);
    if (per_block) {
      launch.value(cl_long{blocks});
      const size_t local = launch.group_size(kRowGroup);
      const size_t groups = groups_for(blocks, local);
      launch.run(call, 1, &groups, &local);
    } else {
      const size_t local = launch.group_size(kNormGroup);
      launch.local_floats(2 * local);
      const auto groups = static_cast<size_t>(blocks);
      launch.run(call, 1, &groups, &local);
    }
  }
  {
    // With no rows at all this writes zeros: dweight is always written.
    Launch launch(call.kernel(kProgram, op.x.dtype, "gated_rmsnorm_bwd_dweight"));
    launch.value(partial).value(cl_long{blocks}).value(cl_long{op.D});
    launch.any_float(op.dweight).value(cl_long{op.dweight.stride[0]});
    const size_t local = launch.group_size(kChannelGroup);
    const size_t groups = groups_for(op.D, local);
    launch.run(call, 1, &groups, &local);
  }
  call.complete();
}

std::span<const Kernel> norm_kernels() {
  static constexpr Kernel kernels[] = {
      entry<GatedRmsNorm, &gated_rmsnorm>(),
      entry<GatedRmsNormBwd, &gated_rmsnorm_bwd>(),
  };
  return kernels;
}

}  // namespace hops::opencl
