#include "norm.hpp"

#include <algorithm>

namespace hops {

GatedRmsNorm GatedRmsNorm::check(const Call& call) {
  GatedRmsNorm op;
  op.x = call.tensor(Arg::x), op.z = call.tensor(Arg::z);
  op.weight = call.tensor(Arg::weight), op.y = call.tensor(Arg::y);
  if (op.x.ndim < 1) call.fail(Arg::x, "rank expected >= 1 ([...,D]), got 0");
  for (int arg : {Arg::z, Arg::y}) {
    const Tensor& t = call.tensor(arg);
    if (t.ndim != op.x.ndim ||
        !std::equal(t.shape.begin(), t.shape.begin() + t.ndim, op.x.shape.begin())) {
      call.fail(arg, "shape must equal the shape of 'x'");
    }
    call.same_dtype(arg, Arg::x);
  }
  Shapes dims(call);
  dims.bind("D", op.x.size(-1), Arg::x);
  dims.expect(Arg::weight, {"D"});
  op.D = op.x.size(-1);
  op.rows = op.D ? op.x.numel() / op.D : 0;
  op.eps = call.f64(Arg::eps);
  if (op.eps < 0) call.fail(Arg::eps, "expected >= 0, got {}", op.eps);
  return op;
}

}  // namespace hops
