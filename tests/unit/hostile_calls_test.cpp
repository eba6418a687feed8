// Calls a careless or hostile C host could make (issue 11): each must come
// back INVALID_ARGUMENT (or OUT_OF_MEMORY for scratch beyond the limit) with
// a message naming the op and the argument, leave every output byte as it
// was, and never trip ASan/UBSan. Run in the Release and the sanitized build.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "hops/hops.h"
#include "host_tensor.hpp"

// The largest single operator-new request while `g_watch` is set: shows that
// a call allocates nothing by the size of a state pool it does not touch.
namespace {
std::atomic<bool> g_watch{false};
std::atomic<size_t> g_largest{0};
}  // namespace

void* operator new(size_t bytes) {
  if (g_watch.load(std::memory_order_relaxed)) {
    size_t seen = g_largest.load(std::memory_order_relaxed);
    while (bytes > seen && !g_largest.compare_exchange_weak(seen, bytes)) {
    }
  }
  if (void* p = std::malloc(bytes ? bytes : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace {

const hops_api* api() { return hops_get_api(HOPS_ABI_MAJOR); }

// The call failed with `expected`, naming the op and (when given) the argument.
void expect_failure(hops_status status, hops_status expected, const std::string& op,
                    const std::string& argument = "") {
  const std::string message = api()->last_error();
  EXPECT_EQ(status, expected) << message;
  EXPECT_NE(message.find(op), std::string::npos) << message;
  if (!argument.empty())
    EXPECT_NE(message.find("'" + argument + "'"), std::string::npos) << message;
}

bool untouched(const HostTensor& t) {
  for (float x : t.data) {
    if (x != HostTensor::kFill) return false;
  }
  return true;
}

hops_gdn_chunk_fwd_fn chunk_fwd() {
  return reinterpret_cast<hops_gdn_chunk_fwd_fn>(api()->find_op("gdn_chunk_fwd")->fn);
}

// gdn_chunk_fwd from q, k, v, g, beta, o (no states, defaults elsewhere).
hops_status chunk(HostTensor& q, HostTensor& k, HostTensor& v, HostTensor& g, HostTensor& beta,
                  HostTensor& o, const DLTensor* final_state = nullptr) {
  return chunk_fwd()(nullptr, &q.dl, &k.dl, &v.dl, &g.dl, &beta.dl, nullptr, nullptr, nullptr,
                     nullptr, &o.dl, final_state, 0.0, true, false);
}

constexpr int64_t k2to40 = int64_t{1} << 40;
constexpr int64_t k2to62 = int64_t{1} << 62;

// Issue 11, class 1: HV = 0 passed (0 % H == 0) and the kernel divided by it.
TEST(HostileCalls, ZeroValueHeadsAreRejected) {
  HostTensor q({1, 10, 2, 16}), k({1, 10, 2, 16}), v({1, 10, 0, 16}), g({1, 10, 0}),
      beta({1, 10, 0}), o({1, 10, 0, 16});
  expect_failure(chunk(q, k, v, g, beta, o), HOPS_ERR_INVALID_ARGUMENT, "gdn_chunk_fwd", "v");
}

// Class 2: with T = 0 the element bound did not hold the dims after it.
TEST(HostileCalls, ZeroTokensDoNotLiftTheDimBound) {
  HostTensor q({1, 0, 2, 16}), k({1, 0, 2, 16}), g({1, 0, 2}), beta({1, 0, 2});
  HostTensor v({1, 0, 2, 1}), o({1, 0, 2, 1});
  v.shape[3] = o.shape[3] = int64_t{1} << 60;
  expect_failure(chunk(q, k, v, g, beta, o), HOPS_ERR_INVALID_ARGUMENT, "gdn_chunk_fwd", "v");
  // Within the tensors' bound, but a state [HV,K,V] of 2^52 elements.
  q.shape[3] = k.shape[3] = int64_t{1} << 20;
  v.shape[3] = o.shape[3] = int64_t{1} << 31;
  expect_failure(chunk(q, k, v, g, beta, o), HOPS_ERR_INVALID_ARGUMENT, "gdn_chunk_fwd", "v");
}

// A valid call whose scratch would pass 2^40 bytes fails before any allocator
// and before any write (the final state's buffer holds one element).
TEST(HostileCalls, ScratchPastTheLimitIsOutOfMemory) {
  HostTensor q({1, 0, 2, 16}), k({1, 0, 2, 16}), g({1, 0, 2}), beta({1, 0, 2});
  HostTensor v({1, 0, 2, 1}), o({1, 0, 2, 1}), final_state({1});
  v.shape[3] = o.shape[3] = k2to40;  // states of 2^45 floats
  final_state.shape = {1, 2, 16, k2to40};
  final_state.dl.ndim = 4;
  final_state.dl.shape = final_state.shape.data();
  expect_failure(chunk(q, k, v, g, beta, o, &final_state.dl), HOPS_ERR_OUT_OF_MEMORY,
                 "gdn_chunk_fwd");
  EXPECT_TRUE(untouched(final_state));
}

// A valid call with no output element returns at once, however large its batch or
// head count (the fuzzer's T = 0 calls with B or HV near 2^32 ran for minutes).
TEST(HostileCalls, CallsWithNothingToWriteReturnAtOnce) {
  HostTensor q({1, 0, 2, 16}), k({1, 0, 2, 16}), v({1, 0, 2, 16}), g({1, 0, 2}), beta({1, 0, 2}),
      o({1, 0, 2, 16});
  for (HostTensor* t : {&q, &k, &v, &g, &beta, &o}) t->shape[0] = (int64_t{1} << 31) + 1;
  EXPECT_EQ(chunk(q, k, v, g, beta, o), HOPS_OK) << api()->last_error();
  for (HostTensor* t : {&q, &k, &v, &g, &beta, &o}) t->shape[0] = 1;
  for (HostTensor* t : {&v, &g, &beta, &o}) t->shape[2] = int64_t{1} << 32;
  EXPECT_EQ(chunk(q, k, v, g, beta, o), HOPS_OK) << api()->last_error();
}

// Class 3: stride magnitudes were never bounded, so spans wrapped.
TEST(HostileCalls, HugeStridesAreRejected) {
  HostTensor q({1, 10, 2, 16}), k({1, 10, 2, 16}), v({1, 10, 2, 16}), g({1, 10, 2}),
      beta({1, 10, 2});
  HostTensor o({1, 10, 2, 16}, {320, k2to62, 16, 1});
  expect_failure(chunk(q, k, v, g, beta, o), HOPS_ERR_INVALID_ARGUMENT, "gdn_chunk_fwd", "o");
  EXPECT_TRUE(untouched(o) && untouched(v) && untouched(q));

  HostTensor wide_q({1, 10, 2, 16}, {320, k2to62, 16, 1}), o2({1, 10, 2, 16});
  expect_failure(chunk(wide_q, k, v, g, beta, o2), HOPS_ERR_INVALID_ARGUMENT, "gdn_chunk_fwd", "q");
  EXPECT_TRUE(untouched(o2));
}

// Strides within their bound whose span passes 2^56 bytes.
TEST(HostileCalls, SpansPastTheByteBoundAreRejected) {
  const auto norm = reinterpret_cast<hops_gated_rmsnorm_fn>(api()->find_op("gated_rmsnorm")->fn);
  HostTensor x({2, 8}), z({2000, 8}), w({8}), y({2000, 8});
  x.shape[0] = 2000;
  x.strides = {int64_t{1} << 48, 1};
  x.dl.strides = x.strides.data();
  expect_failure(norm(nullptr, &x.dl, &z.dl, &w.dl, &y.dl, 1e-6), HOPS_ERR_INVALID_ARGUMENT,
                 "gated_rmsnorm", "x");
  EXPECT_TRUE(untouched(y));
}

// [0, 2^40, 2^40]: its compact strides overflowed while the tensor was built.
TEST(HostileCalls, EmptyTensorsWithHugeDimsAreRejected) {
  const auto norm = reinterpret_cast<hops_gated_rmsnorm_fn>(api()->find_op("gated_rmsnorm")->fn);
  HostTensor x({0, 1, 1}), z({0, 1, 1}), w({1}), y({0, 1, 1});
  for (HostTensor* t : {&x, &z, &y}) t->shape[1] = t->shape[2] = k2to40;
  w.shape[0] = k2to40;
  expect_failure(norm(nullptr, &x.dl, &z.dl, &w.dl, &y.dl, 1e-6), HOPS_ERR_INVALID_ARGUMENT,
                 "gated_rmsnorm", "x");
}

// A bool argument holding a byte other than 0 and 1, through both entries.
TEST(HostileCalls, BoolBytesOtherThanZeroOrOneAreRejected) {
  const hops_op_desc* op = api()->find_op("gdn_chunk_fwd");
  HostTensor q({1, 4, 2, 8}), k({1, 4, 2, 8}), v({1, 4, 2, 8}), g({1, 4, 2}), beta({1, 4, 2}),
      o({1, 4, 2, 8});
  std::vector<hops_value> values(static_cast<size_t>(op->num_args));
  const DLTensor* tensors[] = {&q.dl,   &k.dl,   &v.dl,   &g.dl, &beta.dl, nullptr,
                               nullptr, nullptr, nullptr, &o.dl, nullptr};
  for (size_t i = 0; i < std::size(tensors); ++i) values[i].tensor = tensors[i];
  values[11].f64 = 0.0;
  const unsigned char two = 2;
  std::memcpy(&values[12].boolean, &two, 1);  // use_qk_l2norm
  expect_failure(api()->call(op, nullptr, values.data(), op->num_args), HOPS_ERR_INVALID_ARGUMENT,
                 "gdn_chunk_fwd", "use_qk_l2norm");
  EXPECT_TRUE(untouched(o));

  // A C caller of the typed entry that passes an int where the bool goes: the
  // callee sees the low byte, 2.
  using RawBools = hops_status (*)(
      const hops_exec*, const DLTensor*, const DLTensor*, const DLTensor*, const DLTensor*,
      const DLTensor*, const DLTensor*, const DLTensor*, const DLTensor*, const DLTensor*,
      const DLTensor*, const DLTensor*, double, int, int);
  const auto raw = reinterpret_cast<RawBools>(op->fn);
  expect_failure(raw(nullptr, &q.dl, &k.dl, &v.dl, &g.dl, &beta.dl, nullptr, nullptr, nullptr,
                     nullptr, &o.dl, nullptr, 0.0, 1, 2),
                 HOPS_ERR_INVALID_ARGUMENT, "gdn_chunk_fwd", "state_v_first");
  EXPECT_TRUE(untouched(o));
}

// DLDeviceType is an enum: 999 must be read as an integer and rejected.
TEST(HostileCalls, UnknownDeviceTypesAreRejected) {
  HostTensor q({1, 4, 2, 8}), k({1, 4, 2, 8}), v({1, 4, 2, 8}), g({1, 4, 2}), beta({1, 4, 2}),
      o({1, 4, 2, 8});
  const int32_t bad = 999;
  std::memcpy(&k.dl.device.device_type, &bad, sizeof bad);
  expect_failure(chunk(q, k, v, g, beta, o), HOPS_ERR_INVALID_ARGUMENT, "gdn_chunk_fwd", "k");
  std::memcpy(&q.dl.device.device_type, &bad, sizeof bad);  // also the device the call runs on
  expect_failure(chunk(q, k, v, g, beta, o), HOPS_ERR_INVALID_ARGUMENT, "gdn_chunk_fwd", "q");

  HostTensor q2({1, 4, 2, 8}), k2({1, 4, 2, 8});
  hops_exec exec{sizeof(hops_exec), {kDLCPU, 0}, nullptr, 0, 0, nullptr};
  std::memcpy(&exec.device.device_type, &bad, sizeof bad);
  expect_failure(chunk_fwd()(&exec, &q2.dl, &k2.dl, &v.dl, &g.dl, &beta.dl, nullptr, nullptr,
                             nullptr, nullptr, &o.dl, nullptr, 0.0, true, false),
                 HOPS_ERR_INVALID_ARGUMENT, "gdn_chunk_fwd", "exec");
  EXPECT_TRUE(untouched(o));

  DLDevice device{kDLCPU, 0};
  std::memcpy(&device.device_type, &bad, sizeof bad);
  EXPECT_EQ(api()->supports("gdn_chunk_fwd", device, {kDLFloat, 32, 1}), 0);
}

// The duplicate-slot check costs the N slots used, not the pool size S.
TEST(HostileCalls, SlotChecksDoNotScaleWithThePool) {
  const auto update = reinterpret_cast<hops_conv1d_update_fn>(api()->find_op("conv1d_update")->fn);
  HostTensor x({2, 0}), y({2, 0}), weight({0, 4}), state({1, 0, 3});
  state.shape[0] = int64_t{1} << 35;  // an empty pool of 2^35 slots
  std::vector<int64_t> slots = {5, (int64_t{1} << 34) + 1}, slot_shape = {2};
  const DLTensor indices{slots.data(),      {kDLCPU, 0}, 1, {kDLInt, 64, 1},
                         slot_shape.data(), nullptr,     0};
  g_largest = 0;
  g_watch = true;
  const hops_status status =
      update(nullptr, &x.dl, &state.dl, &weight.dl, nullptr, &indices, &y.dl, 0);
  g_watch = false;
  EXPECT_EQ(status, HOPS_OK) << api()->last_error();
  EXPECT_LT(g_largest.load(), size_t{1} << 20) << "a call on an empty pool allocated by its size";

  slots = {7, 7};
  expect_failure(update(nullptr, &x.dl, &state.dl, &weight.dl, nullptr, &indices, &y.dl, 0),
                 HOPS_ERR_INVALID_ARGUMENT, "conv1d_update", "state_indices");
}

// Empty batches stay valid: T = 0 writes the final state (zeros without h0).
TEST(HostileCalls, EmptyBatchesStillSucceed) {
  HostTensor q({1, 0, 2, 8}), k({1, 0, 2, 8}), v({1, 0, 4, 8}), g({1, 0, 4}), beta({1, 0, 4}),
      o({1, 0, 4, 8}), final_state({1, 4, 8, 8});
  ASSERT_EQ(chunk(q, k, v, g, beta, o, &final_state.dl), HOPS_OK) << api()->last_error();
  for (float x : final_state.data) EXPECT_EQ(x, 0.0f);
  HostTensor q0({0, 3, 2, 8}), k0({0, 3, 2, 8}), v0({0, 3, 4, 8}), g0({0, 3, 4}), b0({0, 3, 4}),
      o0({0, 3, 4, 8});
  EXPECT_EQ(chunk(q0, k0, v0, g0, b0, o0), HOPS_OK) << api()->last_error();
}

}  // namespace
