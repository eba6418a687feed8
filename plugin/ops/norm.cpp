#include "norm.hpp"

#include <algorithm>

namespace hops {

namespace {

// `arg` has the shape and dtype of `reference`.
void same_shape_and_dtype(const Call& call, int arg, int reference) {
  const Tensor& t = call.tensor(arg);
  const Tensor& ref = call.tensor(reference);
  if (t.ndim != ref.ndim ||
      !std::equal(t.shape.begin(), t.shape.begin() + t.ndim, ref.shape.begin())) {
    call.fail(arg, "shape must equal the shape of '{}'", call.arg_name(reference));
  }
  call.same_dtype(arg, reference);
}

// x [...,D] seen as [rows, D]; weight-like args [D].
struct RowView {
  int64_t rows, D;
};
RowView check_rows(const Call& call, int x_arg, std::initializer_list<int> per_channel_args) {
  const Tensor& x = call.tensor(x_arg);
  if (x.ndim < 1) call.fail(x_arg, "rank expected >= 1 ([...,D]), got 0");
  Shapes dims(call);
  dims.bind("D", x.size(-1), x_arg);
  for (int arg : per_channel_args) dims.expect(arg, {"D"});
  const int64_t D = x.size(-1);
  return {D ? x.numel() / D : 0, D};
}

double check_eps(const Call& call, int arg) {
  const double eps = call.f64(arg);
  if (eps < 0) call.fail(arg, "expected >= 0, got {}", eps);
  return eps;
}

}  // namespace

GatedRmsNorm GatedRmsNorm::check(const Call& call) {
  GatedRmsNorm op;
  op.x = call.tensor(Arg::x), op.z = call.tensor(Arg::z);
  op.weight = call.tensor(Arg::weight), op.y = call.tensor(Arg::y);
  const RowView view = check_rows(call, Arg::x, {Arg::weight});
  for (int arg : {Arg::z, Arg::y}) same_shape_and_dtype(call, arg, Arg::x);
  op.rows = view.rows, op.D = view.D;
  op.eps = check_eps(call, Arg::eps);
  return op;
}

GatedRmsNormBwd GatedRmsNormBwd::check(const Call& call) {
  GatedRmsNormBwd op;
  const RowView view = check_rows(call, Arg::x, {Arg::weight, Arg::dweight});
  for (int arg : {Arg::z, Arg::dy, Arg::dx, Arg::dz}) same_shape_and_dtype(call, arg, Arg::x);
  call.same_dtype(Arg::dweight, Arg::weight);
  op.x = call.tensor(Arg::x), op.z = call.tensor(Arg::z), op.weight = call.tensor(Arg::weight);
  op.dy = call.tensor(Arg::dy), op.dx = call.tensor(Arg::dx), op.dz = call.tensor(Arg::dz);
  op.dweight = call.tensor(Arg::dweight);
  op.rows = view.rows, op.D = view.D;
  op.eps = check_eps(call, Arg::eps);
  return op;
}

std::span<const OpEntry> norm_ops() {
  static const OpEntry ops[] = {
      {3, &op_def<GatedRmsNorm>()},
      {6, &op_def<GatedRmsNormBwd>()},
  };
  return ops;
}

}  // namespace hops
