// Dispatch: the op table's ABI order, kernels that refuse a call and the
// next backend that takes it, supports_call, and callers of an older arity.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "host_tensor.hpp"
#include "ops/moe.hpp"
#include "ops/norm.hpp"
#include "registry.hpp"

namespace hops {
namespace {

const hops_api* api() { return hops_get_api(HOPS_ABI_MAJOR); }

bool mentions(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// ---- the op table ---------------------------------------------------------------

// Op indices are ABI: these nine keep their places whatever families are added.
TEST(OpTable, PinsTheIndicesOfTheFirstNineOps) {
  const char* const expected[] = {"gdn_chunk_fwd",     "gdn_recurrent", "gdn_gating",
                                  "gated_rmsnorm",     "conv1d_fwd",    "conv1d_update",
                                  "gated_rmsnorm_bwd", "conv1d_bwd",    "gdn_chunk_bwd"};
  ASSERT_GE(api()->op_count(), 9);
  for (int32_t i = 0; i < 9; ++i) {
    ASSERT_NE(api()->op_at(i), nullptr);
    EXPECT_STREQ(api()->op_at(i)->name, expected[i]) << "index " << i;
  }
}

TEST(OpTable, OrdersFamiliesByIndex) {
  const OpEntry first[] = {{1, &op_def<GatedRmsNormBwd>()}};
  const OpEntry second[] = {{0, &op_def<GatedRmsNorm>()}};
  const std::vector<const OpDef*> ops = abi_order({first, second});
  ASSERT_EQ(ops.size(), 2u);
  EXPECT_EQ(ops[0], &op_def<GatedRmsNorm>());
  EXPECT_EQ(ops[1], &op_def<GatedRmsNormBwd>());
}

TEST(OpTableDeathTest, RefusesTwoOpsAtOneIndex) {
  const OpEntry first[] = {{0, &op_def<GatedRmsNorm>()}};
  const OpEntry second[] = {{0, &op_def<GatedRmsNormBwd>()}};
  EXPECT_DEATH(abi_order({first, second}), "ABI index 0, expected 1");
}

// ---- refusal and the next backend ---------------------------------------------------

// Two CPU "modules" for gated_rmsnorm: `picky` (tried first) takes only
// D == 8 through its accepts check and refuses D == 4 from inside the
// kernel; `plain` takes everything. Each fills y with its own mark.
thread_local std::string module_error;
const char* test_last_error() { return module_error.c_str(); }

void picky_accepts(const GatedRmsNorm& op) {
  if (op.D != 8 && op.D != 4) fail(HOPS_ERR_UNSUPPORTED, "gated_rmsnorm: picky takes D = 8 only");
}
void picky_run(const ExecContext&, const GatedRmsNorm& op) {
  if (op.D == 4) fail(HOPS_ERR_UNSUPPORTED, "gated_rmsnorm: picky refused D = 4 when run");
  for (int64_t i = 0; i < op.rows * op.D; ++i) op.y.data<float>()[i] = 1.0f;
}
void plain_run(const ExecContext&, const GatedRmsNorm& op) {
  for (int64_t i = 0; i < op.rows * op.D; ++i) op.y.data<float>()[i] = 2.0f;
}
void plain_accepts(const GatedRmsNorm& op) {
  if (op.rows > 100) fail(HOPS_ERR_UNSUPPORTED, "gated_rmsnorm: plain takes 100 rows at most");
}

// hops::last_error of this library is where guarded() leaves kernel messages.
const Kernel kPicky[] = {kernel<GatedRmsNorm, &picky_run, &picky_accepts>(HOPS_DTYPE_F32)};
const Kernel kPlain[] = {kernel<GatedRmsNorm, &plain_run, &plain_accepts>(HOPS_DTYPE_F32)};
const Backend kPickyBackend{"picky", kDLCPU, true, "", 10, kPicky, &last_error};
const Backend kPlainBackend{"plain", kDLCPU, true, "", 0, kPlain, &last_error};
const Backend* const kBoth[] = {&kPickyBackend, &kPlainBackend};

struct NormCall {
  HostTensor x, z, w, y;
  explicit NormCall(int64_t rows, int64_t D)
      : x({rows, D}, 0.5f), z({rows, D}, 0.5f), w({D}, 1.0f), y({rows, D}, -7.0f) {}
  std::vector<hops_value> values() { return {{&x.dl}, {&z.dl}, {&w.dl}, {&y.dl}, {.f64 = 1e-6}}; }
  hops_status run(bool execute) {
    const auto args = values();
    return dispatch_to(op_def<GatedRmsNorm>(), nullptr, args, kBoth, execute);
  }
};

TEST(Dispatch, TheFirstBackendThatAcceptsRuns) {
  NormCall call(2, 8);
  EXPECT_EQ(call.run(true), HOPS_OK) << last_error();
  EXPECT_TRUE(call.y.all(1.0f));
}

TEST(Dispatch, ARefusalByTheAcceptsCheckGoesToTheNextBackend) {
  NormCall call(2, 16);
  EXPECT_EQ(call.run(true), HOPS_OK) << last_error();
  EXPECT_TRUE(call.y.all(2.0f));
}

TEST(Dispatch, ARefusalFromInsideTheKernelGoesToTheNextBackend) {
  NormCall call(2, 4);
  EXPECT_EQ(call.run(true), HOPS_OK) << last_error();
  EXPECT_TRUE(call.y.all(2.0f));
}

TEST(Dispatch, RefusedEverywhereIsUnsupportedWithEveryReason) {
  NormCall call(101, 16);
  EXPECT_EQ(call.run(true), HOPS_ERR_UNSUPPORTED);
  const std::string message = last_error();
  EXPECT_TRUE(mentions(message, "picky takes D = 8 only")) << message;
  EXPECT_TRUE(mentions(message, "plain takes 100 rows at most")) << message;
  EXPECT_TRUE(call.y.all(-7.0f));
}

TEST(Dispatch, AskingRunsNothing) {
  NormCall taken(2, 16), refused(101, 16);
  EXPECT_EQ(taken.run(false), HOPS_OK) << last_error();
  EXPECT_TRUE(taken.y.all(-7.0f));
  EXPECT_EQ(refused.run(false), HOPS_ERR_UNSUPPORTED);
  EXPECT_TRUE(mentions(last_error(), "plain takes 100 rows at most")) << last_error();
  EXPECT_TRUE(refused.y.all(-7.0f));
}

TEST(Dispatch, AskingValidatesAsCallDoes) {
  NormCall call(2, 8);
  HostTensor bad_w({7}, 1.0f);
  auto args = call.values();
  args[2].tensor = &bad_w.dl;
  EXPECT_EQ(dispatch_to(op_def<GatedRmsNorm>(), nullptr, args, kBoth, false),
            HOPS_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions(last_error(), "'weight'")) << last_error();
}

// ---- api->supports_call on the provider itself ---------------------------------------

TEST(SupportsCall, AnswersForTheCallsShapesWithoutWriting) {
  ASSERT_TRUE(HOPS_HAS_FIELD(api(), hops_api, supports_call));
  const hops_op_desc* norm = api()->find_op("gated_rmsnorm");
  NormCall call(3, 8);
  const auto args = call.values();
  EXPECT_EQ(api()->supports_call(norm, nullptr, args.data(), 5), HOPS_OK) << api()->last_error();
  EXPECT_TRUE(call.y.all(-7.0f));
  HostTensor bad_w({7}, 1.0f);
  auto bad = args;
  bad[2].tensor = &bad_w.dl;
  EXPECT_EQ(api()->supports_call(norm, nullptr, bad.data(), 5), HOPS_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(api()->supports_call(nullptr, nullptr, args.data(), 5), HOPS_ERR_NOT_FOUND);
  // No backend serves Vulkan here (the tensors claim to live there; nothing reads them).
  DLTensor on_vulkan[4] = {call.x.dl, call.z.dl, call.w.dl, call.y.dl};
  auto vulkan_args = args;
  for (int i = 0; i < 4; ++i) {
    on_vulkan[i].device = {kDLVulkan, 0};
    vulkan_args[static_cast<size_t>(i)].tensor = &on_vulkan[i];
  }
  EXPECT_EQ(api()->supports_call(norm, nullptr, vulkan_args.data(), 5), HOPS_ERR_UNSUPPORTED);
  EXPECT_TRUE(mentions(api()->last_error(), "no available backend")) << api()->last_error();
}

// ---- aliasing across address spaces ---------------------------------------------------

// An OpenCL tensor's data is a cl_mem handle, not an address: beside a host
// index tensor it cannot overlap, even where the handle's value falls inside
// the host tensor's bytes (here x's "handle" is counts' own address).
TEST(Overlap, AnOpenclHandleNeverOverlapsHostMemory) {
  const Backend opencl{"fake-opencl", kDLOpenCL, true, "", 0, {}, &test_last_error};
  const Backend* const backends[] = {&opencl};
  int64_t x_shape[] = {2, 4}, ids_shape[] = {2, 1}, rows_shape[] = {2, 4}, counts_shape[] = {3};
  int32_t ids[] = {0, 2}, counts[3] = {}, row_map[2] = {};
  int opaque_rows = 0;
  const DLDevice cl = {kDLOpenCL, 0}, cpu = {kDLCPU, 0};
  const DLDataType f32 = {kDLFloat, 32, 1}, i32 = {kDLInt, 32, 1};
  DLTensor x = {counts, cl, 2, f32, x_shape, nullptr, 0};
  DLTensor topk_ids = {ids, cpu, 2, i32, ids_shape, nullptr, 0};
  DLTensor rows = {&opaque_rows, cl, 2, f32, rows_shape, nullptr, 0};
  DLTensor counts_t = {counts, cpu, 1, i32, counts_shape, nullptr, 0};
  DLTensor row_map_t = {row_map, cpu, 2, i32, ids_shape, nullptr, 0};
  const hops_value args[] = {{&x}, {&topk_ids}, {&rows}, {&counts_t}, {&row_map_t}};
  const hops_exec exec{sizeof(hops_exec), cl, nullptr, 0, 0, nullptr};
  const hops_status status = dispatch_to(op_def<MoeDispatch>(), &exec, args, backends, false);
  EXPECT_EQ(status, HOPS_ERR_UNSUPPORTED) << last_error();  // validated; no kernel here
  EXPECT_FALSE(mentions(last_error(), "overlaps")) << last_error();
}

// ---- callers of an older arity -------------------------------------------------------

TEST(OldArity, AMissingTrailingScalarTakesItsDefault) {
  const hops_op_desc* norm = api()->find_op("gated_rmsnorm");
  NormCall full(3, 8), short_call(3, 8);
  for (size_t i = 0; i < full.x.data.size(); ++i) {
    full.x.data[i] = short_call.x.data[i] = 0.1f * static_cast<float>(i % 7) - 0.3f;
  }
  const auto full_args = full.values();  // eps = 1e-6, the descriptor's default
  ASSERT_EQ(hops_op_arg(norm, 4)->default_f64, 1e-6);
  ASSERT_EQ(api()->call(norm, nullptr, full_args.data(), 5), HOPS_OK) << api()->last_error();
  const auto short_args = short_call.values();
  ASSERT_EQ(api()->call(norm, nullptr, short_args.data(), 4), HOPS_OK) << api()->last_error();
  EXPECT_EQ(std::memcmp(full.y.data.data(), short_call.y.data.data(), full.y.data.size() * 4), 0);
}

TEST(OldArity, AMissingRequiredTensorIsNamed) {
  const hops_op_desc* norm = api()->find_op("gated_rmsnorm");
  NormCall call(3, 8);
  const auto args = call.values();
  EXPECT_EQ(api()->call(norm, nullptr, args.data(), 3), HOPS_ERR_INVALID_ARGUMENT);
  const std::string message = api()->last_error();
  EXPECT_TRUE(mentions(message, "gated_rmsnorm: argument 'y'")) << message;
  EXPECT_TRUE(call.y.all(-7.0f));
  std::vector<hops_value> extra = args;
  extra.push_back({.f64 = 0});
  EXPECT_EQ(api()->call(norm, nullptr, extra.data(), 6), HOPS_ERR_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions(api()->last_error(), "at most 5 arguments")) << api()->last_error();
}

// An op of ABI 1.0 that grew two trailing arguments in 1.1: y = x * factor (+ bias).
using ScaleFn = hops_status (*)(const hops_exec*, const DLTensor*, const DLTensor*);
struct Scale {
  static constexpr const char* kName = "test_scale";
  static constexpr const char* kDoc = "y = x * factor + bias";
  static constexpr uint32_t kSinceMajor = 1, kSinceMinor = 0;
  static constexpr int kPrimaryArg = 0;
  using Signature = ScaleFn;  // the 1.0 arity
  static constexpr hops_arg_desc kArgs[] = {
      input("x", HOPS_DTYPE_F32, "[N]", "input"),
      output("y", HOPS_DTYPE_F32, "[N]", "output"),
      added_in(1, f64_scalar("factor", 2.0, "scale")),
      added_in(1, optional_input("bias", HOPS_DTYPE_F32, "[N]", "added")),
  };
  Tensor x, y, bias;
  double factor = 0;
  static Scale check(const Call& call) {
    Shapes dims(call);
    dims.expect(0, {"N"});
    dims.expect(1, {"N"});
    dims.expect(3, {"N"});
    return {call.tensor(0), call.tensor(1), call.tensor(3), call.f64(2)};
  }
};
static_assert(first_arity<Scale>() == 2);

void scale_run(const ExecContext&, const Scale& op) {
  for (int64_t i = 0; i < op.x.shape[0]; ++i) {
    op.y.data<float>()[i] = op.x.data<const float>()[i] * static_cast<float>(op.factor) +
                            (op.bias ? op.bias.data<const float>()[i] : 0.0f);
  }
}
const Kernel kScale[] = {kernel<Scale, &scale_run>(HOPS_DTYPE_F32)};
const Backend kScaleBackend{"scale", kDLCPU, true, "", 0, kScale, &last_error};
const Backend* const kScaleOnly[] = {&kScaleBackend};

TEST(OldArity, AnOpThatGrewTakesTheOldArity) {
  const hops_op_desc& desc = op_def<Scale>().desc;
  EXPECT_EQ(desc.num_args, 4);
  EXPECT_EQ(hops_op_arg(&desc, 1)->since_minor, 0u);
  EXPECT_EQ(hops_op_arg(&desc, 2)->since_minor, 1u);
  EXPECT_EQ(hops_op_arg(&desc, 3)->since_minor, 1u);
  HostTensor x({3}, 1.5f), y({3}, 0.0f), bias({3}, 1.0f);
  // The 1.0 caller: x and y only (what the typed entry passes).
  const hops_value old_args[] = {{&x.dl}, {&y.dl}};
  ASSERT_EQ(dispatch_to(op_def<Scale>(), nullptr, old_args, kScaleOnly, true), HOPS_OK)
      << last_error();
  EXPECT_TRUE(y.all(3.0f));
  // The 1.1 caller: every argument.
  const hops_value new_args[] = {{&x.dl}, {&y.dl}, {.f64 = 4.0}, {&bias.dl}};
  ASSERT_EQ(dispatch_to(op_def<Scale>(), nullptr, new_args, kScaleOnly, true), HOPS_OK)
      << last_error();
  EXPECT_TRUE(y.all(7.0f));
  // In between: factor given, bias left out.
  const hops_value some_args[] = {{&x.dl}, {&y.dl}, {.f64 = 1.0}};
  ASSERT_EQ(dispatch_to(op_def<Scale>(), nullptr, some_args, kScaleOnly, true), HOPS_OK)
      << last_error();
  EXPECT_TRUE(y.all(1.5f));
}

}  // namespace
}  // namespace hops
