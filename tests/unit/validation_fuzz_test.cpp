// Fuzzes the validation layer from the descriptors alone: for every op it
// builds a valid call from the symbolic shapes ("[B,T,H,K]"), checks that it
// succeeds, then applies random damage (NULLs, dtypes, devices, shrunken or
// negative dims, bad strides, misalignment, aliasing, bad index values, bad
// scalars, bad exec) and requires every call to either succeed or fail with a
// status and a message naming the op, leaving every output byte untouched.
// Damage never makes a tensor claim memory beyond its buffer, so under ASan
// any read or write out of bounds is the plugin's fault.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "hops/hops.h"

namespace {

// Sizes that satisfy every op's relations (HV % H == 0, W <= 4, states >= W-1,
// Hq % Hkv == 0, cu_seqlens [0, T] fitting Tq and Tk, decode's seq_lens [0]
// within its table, kv_cache_write's slots 0..T-1 within the cache; the MoE
// ops' k <= E, R == T*k, I2 == 2*I, counts 0..E-1 summing to at most R and
// row maps 0..R-1 of distinct rows; the expert-parallel ops on one rank:
// ranks = 1, El = E, C >= T*k).
const std::map<std::string, int64_t> kSymbols = {
    {"B", 1},         {"T", 5},   {"H", 2},          {"HV", 4},         {"K", 4},
    {"V", 3},         {"N", 1},   {"S", 2},          {"W", 3},          {"D", 8},
    {"L0", 3},        {"L1", 4},  {"L", 2},          {"Tq", 5},         {"Tk", 5},
    {"Hq", 4},        {"Hkv", 2}, {"num_blocks", 3}, {"block_size", 4}, {"max_blocks", 2},
    {"state_len", 3}, {"E", 4},   {"k", 2},          {"R", 10},         {"Hd", 6},
    {"I", 3},         {"I2", 6},  {"C", 12},         {"El", 4},         {"ranks", 1}};

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> dims;
  std::string item;
  for (char c : text.substr(1)) {
    if (c != ',' && c != ']') {
      item += c;
      continue;
    }
    if (item == "...") {
      dims.push_back(2);
    } else if (item.ends_with("+1")) {
      dims.push_back(kSymbols.at(item.substr(0, item.size() - 2)) + 1);
    } else {
      dims.push_back(kSymbols.at(item));
    }
    item.clear();
  }
  return dims;
}

struct Buffer {
  std::vector<int64_t> shape, strides;
  std::vector<std::byte> bytes;  // padded so that a one-byte shift stays inside
  DLTensor dl{};
};

class FuzzCall {
 public:
  explicit FuzzCall(const hops_op_desc* op) : op_(op), buffers_(op->num_args) {
    for (int i = 0; i < op->num_args; ++i) {
      const hops_arg_desc* arg = hops_op_arg(op, i);
      if (arg->kind <= HOPS_ARG_TENSOR_INOUT) {
        // conv1d's seq_idx replaces cu_seqlens and the states, which this call passes.
        if (std::string_view(arg->name) != "seq_idx") make_tensor(i, *arg);
      } else if (arg->kind == HOPS_ARG_F64) {
        values_[i].f64 = arg->default_f64;
      } else if (arg->kind == HOPS_ARG_I64) {
        values_[i].i64 = arg->default_i64;
      } else {
        values_[i].boolean = arg->default_i64 != 0;
      }
    }
  }

  hops_value* values() { return values_; }
  Buffer& buffer(int i) { return buffers_[i]; }
  const hops_op_desc* op() const { return op_; }

  std::vector<std::vector<std::byte>> written_bytes() const {
    std::vector<std::vector<std::byte>> copy;
    for (int i = 0; i < op_->num_args; ++i) {
      if (hops_op_arg(op_, i)->kind == HOPS_ARG_TENSOR_OUT ||
          hops_op_arg(op_, i)->kind == HOPS_ARG_TENSOR_INOUT) {
        copy.push_back(buffers_[i].bytes);
      }
    }
    return copy;
  }

 private:
  void make_tensor(int i, const hops_arg_desc& arg) {
    Buffer& b = buffers_[i];
    b.shape = parse_shape(arg.shape);
    int64_t count = 1;
    for (int64_t d : b.shape) count *= d;
    const bool index = (arg.dtypes & HOPS_DTYPE_FLOATS) == 0;
    const int bytes_per = index ? 8 : 4;
    b.bytes.assign(static_cast<size_t>(count * bytes_per + 64), std::byte{0});
    b.strides.assign(b.shape.size(), 0);
    for (int64_t d = static_cast<int64_t>(b.shape.size()) - 1, s = 1; d >= 0; --d) {
      b.strides[d] = s;
      s *= b.shape[d];
    }
    if (index) {
      auto* v = reinterpret_cast<int64_t*>(b.bytes.data());
      // cu_seqlens [N+1] = [0, T]; state_indices [N] = [0]; expert ids below E.
      if (b.shape[0] == kSymbols.at("N") + 1) {
        v[0] = 0, v[1] = kSymbols.at("T");
      } else if (std::string_view(arg.name) == "topk_ids") {
        for (int64_t j = 0; j < count; ++j) v[j] = j % kSymbols.at("E");
      } else {
        for (int64_t j = 0; j < count; ++j) v[j] = j;
      }
    } else {
      auto* v = reinterpret_cast<float*>(b.bytes.data());
      for (int64_t j = 0; j < count; ++j) v[j] = -0.25f + 0.01f * static_cast<float>(j % 37);
    }
    b.dl = {
        b.bytes.data(),
        {kDLCPU, 0},
        static_cast<int>(b.shape.size()),
        {static_cast<uint8_t>(index ? kDLInt : kDLFloat), static_cast<uint8_t>(bytes_per * 8), 1},
        b.shape.data(),
        b.strides.data(),
        0};
    values_[i].tensor = &b.dl;
  }

  const hops_op_desc* op_;
  std::vector<Buffer> buffers_;
  hops_value values_[32]{};
};

// One random piece of damage; never grows a tensor's memory claim.
void damage(FuzzCall& call, hops_exec& exec, int& num_args, std::mt19937_64& rng) {
  const hops_op_desc* op = call.op();
  const int i = static_cast<int>(rng() % op->num_args);
  const hops_arg_desc* arg = hops_op_arg(op, i);
  hops_value& value = call.values()[i];
  auto pick = [&](int64_t n) {  // uniform in [0, n), 0 when the range is empty
    return n > 0 ? static_cast<int64_t>(rng() % static_cast<uint64_t>(n)) : int64_t{0};
  };
  if (arg->kind > HOPS_ARG_TENSOR_INOUT) {
    constexpr double kBadDoubles[] = {std::numeric_limits<double>::quiet_NaN(),
                                      std::numeric_limits<double>::infinity(), -1.0, 0.0, 1e300};
    if (arg->kind == HOPS_ARG_F64) value.f64 = kBadDoubles[pick(5)];
    if (arg->kind == HOPS_ARG_I64) value.i64 = pick(9) - 4;
    if (arg->kind == HOPS_ARG_BOOL) value.boolean = pick(2) != 0;
    return;
  }
  Buffer& b = call.buffer(i);
  if (!value.tensor) return;
  const int ndim = b.dl.ndim;
  switch (pick(12)) {
    case 0:
      value.tensor = nullptr;
      break;
    case 1:
      b.dl.dtype = {static_cast<uint8_t>(pick(6)), static_cast<uint8_t>(8 << pick(4)), 1};
      break;
    case 2:
      b.dl.dtype.lanes = 2;
      break;
    case 3:
      b.dl.device = {static_cast<DLDeviceType>(pick(2) ? kDLCUDA : kDLOpenCL), 0};
      break;
    case 4:
      if (ndim > 0) b.dl.ndim = static_cast<int>(pick(ndim));
      break;
    case 5:
      if (ndim > 0) {
        const int64_t d = pick(ndim);
        b.shape[d] = pick(b.shape[d] + 1);
      }
      break;
    case 6:
      if (ndim > 0) b.shape[pick(ndim)] = -1 - pick(3);
      break;
    case 7:
      if (ndim > 0) b.strides[pick(ndim)] = pick(2) ? 0 : -1;
      break;
    case 8:
      b.dl.data = nullptr;
      break;
    case 9:
      b.dl.byte_offset += 1 + pick(3);
      break;
    case 10: {  // alias another tensor's memory (of at least this size)
      const int j = static_cast<int>(pick(op->num_args));
      if (call.values()[j].tensor && call.buffer(j).bytes.size() >= b.bytes.size()) {
        b.dl.data = call.buffer(j).bytes.data();
      }
      break;
    }
    default:  // index values, or float data left as is
      if ((arg->dtypes & HOPS_DTYPE_FLOATS) == 0) {
        auto* v = reinterpret_cast<int64_t*>(b.bytes.data());
        const auto entries = static_cast<int64_t>((b.bytes.size() - 64) / sizeof(int64_t));
        v[pick(entries)] = pick(12) - 3;
      } else if (pick(4) == 0) {
        exec.struct_size = static_cast<size_t>(pick(static_cast<int64_t>(sizeof exec)));
      } else if (pick(4) == 0) {
        num_args = static_cast<int>(pick(op->num_args + 2));
      }
  }
}

TEST(ValidationFuzz, DamagedCallsFailCleanlyAndWriteNothing) {
  const hops_api* api = hops_get_api(HOPS_ABI_MAJOR);
  ASSERT_NE(api, nullptr);
  std::mt19937_64 rng(20261122);
  for (int o = 0; o < api->op_count(); ++o) {
    const hops_op_desc* op = api->op_at(o);
    {
      FuzzCall valid(op);
      const hops_exec exec{sizeof(hops_exec), {kDLCPU, 0}, nullptr, 0, 0, nullptr};
      ASSERT_EQ(api->call(op, &exec, valid.values(), op->num_args), HOPS_OK)
          << op->name << ": the call built from its descriptor fails: " << api->last_error();
    }
    int rejected = 0;
    for (int iteration = 0; iteration < 10000; ++iteration) {
      FuzzCall call(op);
      hops_exec exec{sizeof(hops_exec), {kDLCPU, 0}, nullptr, 0, 0, nullptr};
      int num_args = op->num_args;
      const int hits = 1 + static_cast<int>(rng() % 3);
      for (int h = 0; h < hits; ++h) damage(call, exec, num_args, rng);
      const auto before = call.written_bytes();
      const hops_status status = api->call(op, &exec, call.values(), num_args);
      if (status == HOPS_OK) continue;
      ++rejected;
      ASSERT_TRUE(status == HOPS_ERR_INVALID_ARGUMENT || status == HOPS_ERR_UNSUPPORTED)
          << op->name << " iteration " << iteration << ": status " << status;
      EXPECT_NE(std::string(api->last_error()).find(op->name), std::string::npos)
          << api->last_error();
      ASSERT_EQ(call.written_bytes(), before)
          << op->name << " iteration " << iteration
          << " wrote an output before failing: " << api->last_error();
    }
    EXPECT_GT(rejected, 3000) << op->name;  // the damage really reaches the validator
  }
}

}  // namespace
