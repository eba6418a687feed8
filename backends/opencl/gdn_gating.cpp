// gdn_gating of the gdn family (gdn_gating.cl): one work-item per element.
#include "call.hpp"
#include "gdn.hpp"
#include "rows.hpp"

namespace hops::opencl {

namespace {

constexpr std::string_view kProgram = "gdn_gating.cl";  // after common.cl
constexpr size_t kGatingGroup = 64;

}  // namespace

void gdn_gating(const ExecContext& exec, const GdnGating& op) {
  Call call(exec, {{op.A_log, "A_log"},
                   {op.a, "a"},
                   {op.b, "b"},
                   {op.dt_bias, "dt_bias"},
                   {op.g, "g"},
                   {op.beta, "beta"}});
  if (!call.active()) return;
  const Rows rows = leading_rows({&op.a, &op.b, &op.g, &op.beta});
  Launch launch(call.kernel(kProgram, op.a.dtype, "gdn_gating"));
  launch.any_float(op.A_log).value(cl_long{op.A_log.stride[0]});
  launch.tensor(op.a).value(rows.strides[0]).value(cl_long{op.a.step(-1)});
  launch.any_float(op.b).value(rows.strides[1]).value(cl_long{op.b.step(-1)});
  launch.any_float(op.dt_bias).value(cl_long{op.dt_bias.stride[0]});
  launch.any_float(op.g).value(rows.strides[2]).value(cl_long{op.g.step(-1)});
  launch.any_float(op.beta).value(rows.strides[3]).value(cl_long{op.beta.step(-1)});
  launch.value(rows.shape).value(rows.dims).value(cl_long{op.rows}).value(cl_long{op.HV});
  launch.value(static_cast<cl_float>(op.softplus_beta))
      .value(static_cast<cl_float>(op.softplus_threshold));
  const size_t local = launch.group_size(kGatingGroup);
  const size_t groups = groups_for(op.rows * op.HV, local);
  launch.run(call, 1, &groups, &local);
  call.complete();
}

}  // namespace hops::opencl
